//! The demo: builds the workspace, starts `plugd-sqlite`, `plugd-memory`, `plugd-files`,
//! `plugd-cron` and `plugd` as real processes in a temp folder, and does real work through
//! plugd's gRPC and HTTP APIs (state in a store whose database path comes from a secret, publish
//! and subscribe with a small HTTP app, secrets, an output binding writing files, cron events
//! reaching the app), printing each step.
//!
//! Run with `cargo run --example demo`.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::Duration;

use plugd::proto::{common, runtime as rt};
use support::TestDirs;

fn item(key: &str, value: &str, etag: Option<&str>) -> common::StateItem {
    common::StateItem {
        key: key.into(),
        value: value.as_bytes().to_vec(),
        etag: etag.map(|e| common::Etag { value: e.into() }),
        ..Default::default()
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dirs = TestDirs::new();
    // Secrets first: plugd-files serves a secret store (a JSON file) and an output binding
    // (a folder). The state store's database path is a secret, resolved by plugd before Init.
    let secrets_file = dirs.root.path().join("secrets.json");
    let db = dirs.root.path().join("statestore.db");
    std::fs::write(
        &secrets_file,
        serde_json::json!({"sqlite": {"path": db}, "api": {"token": "demo-token"}}).to_string(),
    )?;
    let files_root = dirs.root.path().join("files");
    let _files = support::spawn_component("plugd-files", &dirs.sockets, "files", &[]);
    dirs.write_resource(
        "files.yaml",
        &format!(
            "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: secrets\nspec:\n  type: secretstores.files\n  version: v1\n  metadata:\n  - name: secretsFile\n    value: {}\n  - name: multiValued\n    value: \"true\"\n---\napiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: files\nspec:\n  type: bindings.files\n  version: v1\n  metadata:\n  - name: rootPath\n    value: {}\n",
            secrets_file.display(),
            files_root.display()
        ),
    );
    println!(
        "== plugd-files listens on {} (secretstores.files `secrets` over {}, bindings.files `files` on {})",
        dirs.sockets.join("files.sock").display(),
        secrets_file.display(),
        files_root.display()
    );

    let mut sqlite = support::spawn_sqlite(&dirs.sockets, "sqlite");
    println!(
        "== plugd-sqlite listens on {}",
        dirs.sockets.join("sqlite.sock").display()
    );
    let yaml = dirs.write_resource(
        "statestore.yaml",
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: statestore\nspec:\n  type: state.sqlite\n  version: v1\n  metadata:\n  - name: connectionString\n    secretKeyRef:\n      name: sqlite\n      key: path\nauth:\n  secretStore: secrets\n",
    );
    println!(
        "== component resource {}:\n{}",
        yaml.display(),
        std::fs::read_to_string(&yaml)?
    );

    // An input binding: plugd-cron fires every 500 ms; plugd delivers to the app's /tick.
    let _cron = support::spawn_component("plugd-cron", &dirs.sockets, "cron", &[]);
    dirs.write_resource(
        "cron.yaml",
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: tick\nspec:\n  type: bindings.cron\n  version: v1\n  metadata:\n  - name: schedule\n    value: \"@every 500ms\"\n  - name: route\n    value: /tick\n",
    );
    println!(
        "== plugd-cron listens on {}",
        dirs.sockets.join("cron.sock").display()
    );

    let _memory = support::spawn_component("plugd-memory", &dirs.sockets, "memory", &[]);
    let pubsub_yaml = dirs.write_resource(
        "pubsub.yaml",
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: pubsub\nspec:\n  type: pubsub.memory\n  version: v1\n  metadata: []\n",
    );
    println!(
        "== plugd-memory listens on {}; component resource {}",
        dirs.sockets.join("memory.sock").display(),
        pubsub_yaml.display()
    );
    // The app plugd delivers to: an HTTP server that subscribes to `orders` at /orders.
    let app = support::apps::http_app(
        serde_json::json!([{"pubsubname": "pubsub", "topic": "orders", "route": "/orders"}]),
        support::apps::always(support::apps::Answer::Success),
    )
    .await;
    let app_port = app.port.to_string();
    println!(
        "== the demo app listens on :{app_port} (GET /dapr/subscribe -> orders at /orders; cron ticks at /tick)"
    );

    let mut plugd = support::PlugdProcess::spawn_with(
        &support::binary("plugd"),
        &dirs,
        "demo",
        "info",
        &["--app-port", &app_port, "--app-protocol", "http"],
    );
    let (grpc_port, http_port, base) = (plugd.grpc_port, plugd.http_port, plugd.base());
    plugd.wait_healthy(Duration::from_secs(30)).await;
    let http = reqwest::Client::new();
    println!("== plugd is healthy (gRPC :{grpc_port}, HTTP :{http_port})\n");

    let mut client =
        rt::dapr_client::DaprClient::connect(format!("http://127.0.0.1:{grpc_port}")).await?;
    let store = "statestore".to_string();

    client
        .save_state(rt::SaveStateRequest {
            store_name: store.clone(),
            states: vec![item("order-1", "{\"qty\":1}", None)],
        })
        .await?;
    println!("gRPC SaveState order-1 = {{\"qty\":1}}");
    let got = client
        .get_state(rt::GetStateRequest {
            store_name: store.clone(),
            key: "order-1".into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    println!(
        "gRPC GetState order-1 -> {} (etag {})",
        String::from_utf8_lossy(&got.data),
        got.etag
    );

    client
        .save_state(rt::SaveStateRequest {
            store_name: store.clone(),
            states: vec![item("order-1", "{\"qty\":2}", Some(&got.etag))],
        })
        .await?;
    println!(
        "gRPC SaveState order-1 = {{\"qty\":2}} with etag {} -> ok",
        got.etag
    );
    match client
        .save_state(rt::SaveStateRequest {
            store_name: store.clone(),
            states: vec![item("order-1", "{\"qty\":3}", Some(&got.etag))],
        })
        .await
    {
        Err(status) => println!(
            "gRPC SaveState order-1 with the stale etag {} -> {:?}: {}",
            got.etag,
            status.code(),
            status.message()
        ),
        Ok(_) => anyhow::bail!("a stale etag was accepted"),
    }

    client
        .execute_state_transaction(rt::ExecuteStateTransactionRequest {
            store_name: store.clone(),
            operations: vec![
                rt::TransactionalStateOperation {
                    operation_type: "upsert".into(),
                    request: Some(item("order-2", "{\"qty\":5}", None)),
                },
                rt::TransactionalStateOperation {
                    operation_type: "delete".into(),
                    request: Some(item("order-1", "", None)),
                },
            ],
            metadata: Default::default(),
        })
        .await?;
    println!("gRPC ExecuteStateTransaction: upsert order-2, delete order-1 -> ok");

    let bulk = client
        .get_bulk_state(rt::GetBulkStateRequest {
            store_name: store.clone(),
            keys: vec!["order-1".into(), "order-2".into()],
            ..Default::default()
        })
        .await?
        .into_inner();
    for i in bulk.items {
        let value = if i.data.is_empty() {
            "<absent>".into()
        } else {
            String::from_utf8_lossy(&i.data).into_owned()
        };
        println!("gRPC GetBulkState {} -> {value}", i.key);
    }

    let resp = http
        .post(format!("{base}/state/statestore"))
        .json(&serde_json::json!([{"key": "greeting", "value": "hello from HTTP"}]))
        .send()
        .await?;
    println!(
        "HTTP POST /v1.0/state/statestore greeting -> {}",
        resp.status()
    );
    let resp = http
        .get(format!("{base}/state/statestore/greeting"))
        .send()
        .await?;
    let etag = resp
        .headers()
        .get("etag")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    println!(
        "HTTP GET  /v1.0/state/statestore/greeting -> {} {} (ETag {etag})",
        resp.status(),
        resp.text().await?
    );
    let resp = http
        .post(format!("{base}/state/statestore"))
        .json(&serde_json::json!([{"key": "greeting", "value": "hello again", "etag": etag}]))
        .send()
        .await?;
    println!("HTTP POST greeting with ETag {etag} -> {}", resp.status());
    let resp = http
        .delete(format!("{base}/state/statestore/greeting"))
        .header("If-Match", &etag)
        .send()
        .await?;
    println!(
        "HTTP DELETE greeting with the now stale If-Match {etag} -> {} {}",
        resp.status(),
        resp.text().await?
    );
    let meta: serde_json::Value = http
        .get(format!("{base}/metadata"))
        .send()
        .await?
        .json()
        .await?;
    println!(
        "HTTP GET  /v1.0/metadata -> components {}",
        meta["components"]
    );

    // Pub/sub: publish through plugd; plugd delivers to the app and acks when it answers.
    client
        .publish_event(rt::PublishEventRequest {
            pubsub_name: "pubsub".into(),
            topic: "orders".into(),
            data: br#"{"order":1,"qty":5}"#.to_vec(),
            data_content_type: "application/json".into(),
            metadata: Default::default(),
        })
        .await?;
    println!("\ngRPC PublishEvent pubsub/orders {{\"order\":1,\"qty\":5}} -> ok");
    let resp = http
        .post(format!("{base}/publish/pubsub/orders"))
        .header("content-type", "text/plain")
        .body("order 2, by HTTP")
        .send()
        .await?;
    println!(
        "HTTP POST /v1.0/publish/pubsub/orders \"order 2, by HTTP\" -> {}",
        resp.status()
    );
    let events = app
        .recorder
        .wait_for(Duration::from_secs(10), "two events at the app", |e| {
            e.iter().filter(|e| e.path == "/orders").count() >= 2
        })
        .await;
    for e in events.iter().filter(|e| e.path == "/orders") {
        println!(
            "app received POST {} CloudEvent id {} type {} source {}: data {}",
            e.path, e.id, e.envelope["type"], e.envelope["source"], e.envelope["data"]
        );
    }

    // Secrets, an output binding, an input binding.
    let secret = client
        .get_secret(rt::GetSecretRequest {
            store_name: "secrets".into(),
            key: "api".into(),
            metadata: Default::default(),
        })
        .await?
        .into_inner();
    println!(
        "\ngRPC GetSecret secrets/api -> keys {:?} (and statestore's connectionString came from secrets/sqlite)",
        secret.data.keys().collect::<Vec<_>>()
    );
    client
        .invoke_binding(rt::InvokeBindingRequest {
            name: "files".into(),
            data: b"first order\n".to_vec(),
            metadata: [("fileName".to_string(), "orders/1.txt".to_string())].into(),
            operation: "create".into(),
        })
        .await?;
    println!(
        "gRPC InvokeBinding files create orders/1.txt -> wrote {}",
        files_root.join("orders/1.txt").display()
    );
    let listed = http
        .post(format!("{base}/bindings/files"))
        .json(&serde_json::json!({"operation": "list"}))
        .send()
        .await?
        .text()
        .await?;
    println!("HTTP POST /v1.0/bindings/files list -> {listed}");
    let refused = http
        .post(format!("{base}/bindings/files"))
        .json(&serde_json::json!({"operation": "create", "data": "x", "metadata": {"fileName": "../outside.txt"}}))
        .send()
        .await?;
    let status = refused.status();
    let body: serde_json::Value = refused.json().await?;
    println!(
        "HTTP POST /v1.0/bindings/files create ../outside.txt -> {status}: {}",
        body["message"]
    );
    let ticks = app
        .recorder
        .wait_for(Duration::from_secs(10), "two cron ticks at the app", |e| {
            e.iter().filter(|e| e.path == "/tick").count() >= 2
        })
        .await;
    for e in ticks.iter().filter(|e| e.path == "/tick").take(2) {
        println!(
            "app received POST /tick from the cron input binding: {}",
            String::from_utf8_lossy(&e.body)
        );
    }

    // plugd keeps up with the component: kill it, see calls fail fast, restart it, see them work.
    let _ = sqlite.child.kill();
    let _ = sqlite.child.wait();
    println!("\n== plugd-sqlite killed with SIGKILL");
    let t = std::time::Instant::now();
    let resp = http
        .get(format!("{base}/state/statestore/order-2"))
        .send()
        .await?;
    let (status, elapsed) = (resp.status(), t.elapsed());
    let body: serde_json::Value = resp.json().await?;
    println!(
        "HTTP GET  order-2 -> {status} in {elapsed:?}: {} {}",
        body["errorCode"], body["message"]
    );
    sqlite = support::spawn_sqlite(&dirs.sockets, "sqlite");
    let restarted = std::time::Instant::now();
    println!("== plugd-sqlite restarted on the same socket and database");
    let value = support::eventually(
        Duration::from_secs(10),
        "the restarted component to serve",
        || {
            let req = http.get(format!("{base}/state/statestore/order-2"));
            async move {
                let resp = req.send().await.ok().filter(|r| r.status() == 200)?;
                resp.text().await.ok()
            }
        },
    )
    .await;
    println!(
        "HTTP GET  order-2 -> 200 {value} again, {:?} after the restart (plugd ran Init on the new process first)",
        restarted.elapsed()
    );

    let resp = http.post(format!("{base}/shutdown")).send().await?;
    println!("\n== HTTP POST /v1.0/shutdown -> {}", resp.status());
    let status = plugd.guard.terminate();
    println!("== plugd exited: {status:?}");
    sqlite.terminate();
    Ok(())
}
