//! The demo: builds the workspace and runs `plugd --resources-path examples/resources` as a real
//! process, with nothing else started by hand: plugd launches the reference components the
//! folder names under Dapr's type names (`state.sqlite`, `pubsub.in-memory`,
//! `secretstores.local.file`, `bindings.localstorage`, `bindings.cron`) and supervises them. The
//! demo then does real work through plugd's gRPC and HTTP APIs (state with etags and a
//! transaction, publish and subscribe with a small HTTP app, a secret, files written through the
//! binding, cron events reaching the app), kills a managed component with SIGKILL and shows
//! plugd restarting it, printing each step.
//!
//! Run with `cargo run --example demo`.

#[path = "../tests/support/mod.rs"]
mod support;

use std::{path::Path, process::Command, time::Duration};

use plugd::proto::{common, runtime as rt};

fn item(key: &str, value: &str, etag: Option<&str>) -> common::StateItem {
    common::StateItem {
        key: key.into(),
        value: value.as_bytes().to_vec(),
        etag: etag.map(|e| common::Etag { value: e.into() }),
        ..Default::default()
    }
}

/// The pid of `parent`'s child process named `name`, from /proc.
fn child_pid(parent: u32, name: &str) -> Option<u32> {
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            // pid (comm) state ppid ...
            let (comm, rest) = stat.split_once(" (")?.1.rsplit_once(") ")?;
            let ppid: u32 = rest.split_whitespace().nth(1)?.parse().ok()?;
            (ppid == parent && comm == name).then_some(pid)
        })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let resources = repo.join("examples/resources");
    let sockets = tempfile::tempdir()?;
    for entry in std::fs::read_dir(&resources)? {
        let path = entry?.path();
        println!(
            "== {}:\n{}",
            path.strip_prefix(repo).unwrap_or(&path).display(),
            std::fs::read_to_string(&path)?
        );
    }

    // The app plugd delivers to: an HTTP server that subscribes to `orders` at /orders and gets
    // the cron binding's events at /tick.
    let app = support::apps::http_app(
        serde_json::json!([{"pubsubname": "pubsub", "topic": "orders", "route": "/orders"}]),
        support::apps::always(support::apps::Answer::Success),
    )
    .await;
    let app_port = app.port.to_string();
    println!(
        "== the demo app listens on :{app_port} (GET /dapr/subscribe -> orders at /orders; cron ticks at /tick)"
    );

    let plugd_bin = support::binary("plugd");
    let (grpc_port, http_port) = (support::free_port(), support::free_port());
    let metrics_port = support::free_port();
    let (grpc, http_p, metrics_p) = (
        grpc_port.to_string(),
        http_port.to_string(),
        metrics_port.to_string(),
    );
    let args = [
        "--resources-path",
        "examples/resources",
        "--app-id",
        "demo",
        "--app-port",
        &app_port,
        "--dapr-grpc-port",
        &grpc,
        "--dapr-http-port",
        &http_p,
        "--metrics-port",
        &metrics_p,
    ];
    println!(
        "== running (in {}): plugd {} --sockets-folder {}",
        repo.display(),
        args.join(" "),
        sockets.path().display()
    );
    let mut plugd = support::PlugdProcess {
        guard: support::ChildGuard::spawn(
            "plugd",
            Command::new(&plugd_bin)
                .current_dir(repo)
                .args(args)
                .arg("--sockets-folder")
                .arg(sockets.path()),
        ),
        grpc_port,
        http_port,
    };
    let base = plugd.base();
    plugd.wait_healthy(Duration::from_secs(30)).await;
    let http = reqwest::Client::new();
    println!("== plugd is healthy (gRPC :{grpc_port}, HTTP :{http_port})");
    let mut launched: Vec<String> = std::fs::read_dir(sockets.path())?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    launched.sort();
    println!(
        "== sockets of the components plugd launched: {}\n",
        launched.join(", ")
    );

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
            store_name: "localsecrets".into(),
            key: "api:token".into(),
            metadata: Default::default(),
        })
        .await?
        .into_inner();
    println!(
        "\ngRPC GetSecret localsecrets/api:token -> keys {:?} (nested JSON, joined with \":\")",
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
        repo.join("examples/data/files/orders/1.txt").display()
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

    // plugd supervises what it launched: kill plugd-sqlite, see calls fail fast, see plugd start it
    // again and the calls work.
    let plugd_pid = plugd.guard.child.id();
    let sqlite = child_pid(plugd_pid, "plugd-sqlite")
        .ok_or_else(|| anyhow::anyhow!("plugd-sqlite is not a child of plugd"))?;
    let killed = std::time::Instant::now();
    let _ = Command::new("kill")
        .args(["-9", &sqlite.to_string()])
        .status();
    println!("\n== plugd-sqlite (pid {sqlite}, launched by plugd) killed with SIGKILL");
    let resp = http
        .get(format!("{base}/state/statestore/order-2"))
        .send()
        .await?;
    let status = resp.status();
    let body = resp.text().await?;
    println!("HTTP GET  order-2 right after -> {status} {body}");
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
    let again = child_pid(plugd_pid, "plugd-sqlite").unwrap_or_default();
    println!(
        "HTTP GET  order-2 -> 200 {value} again, {:?} after the kill (plugd restarted plugd-sqlite as pid {again} and ran Init on it)",
        killed.elapsed()
    );
    let metrics = http
        .get(format!("http://127.0.0.1:{metrics_port}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    for line in metrics
        .lines()
        .filter(|l| l.starts_with("plugd_managed_component_restarts_total"))
    {
        println!("GET :{metrics_port}/metrics -> {line}");
    }

    let resp = http.post(format!("{base}/shutdown")).send().await?;
    println!("\n== HTTP POST /v1.0/shutdown -> {}", resp.status());
    let status = plugd.guard.terminate();
    println!("== plugd exited: {status:?}");
    let left: Vec<_> = std::fs::read_dir(sockets.path())?.flatten().collect();
    println!(
        "== plugd stopped its components: {} socket files left, plugd-sqlite running: {}",
        left.len(),
        child_pid(plugd_pid, "plugd-sqlite").is_some()
    );
    Ok(())
}
