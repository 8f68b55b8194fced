//! The reference components of bindings and secret stores, as real processes behind plugd:
//! `plugd-files` (secret store + output binding), `plugd-cron` (input binding) and
//! `plugd-redis` whose password comes from a `secretKeyRef` into `plugd-files`.

mod support;

use std::{collections::HashMap, time::Duration};

use plugd::{
    config::{AppConfig, AppProtocol, Config},
    proto::runtime as rt,
};
use support::{RedisServer, TestDirs, apps, eventually, spawn_component, start_plugd};

const WAIT: Duration = Duration::from_secs(20);
const REDIS_PASSWORD: &str = "pw-from-the-secret-store-7Hq2";

fn yaml(name: &str, ty: &str, metadata: &[(&str, &str)], extra: &str) -> String {
    let mut y = format!(
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: {name}\nspec:\n  type: {ty}\n  version: v1\n  metadata:\n"
    );
    for (k, v) in metadata {
        y.push_str(&format!("  - name: {k}\n    value: \"{v}\"\n"));
    }
    y.push_str(extra);
    y
}

#[tokio::test]
async fn files_secrets_and_binding_and_a_redis_password_from_a_secret_ref() {
    let dirs = TestDirs::new();
    let redis = RedisServer::start_with(&["--requirepass", REDIS_PASSWORD]);
    let secrets_file = dirs.root.path().join("secrets.json");
    std::fs::write(
        &secrets_file,
        format!(r#"{{"redis": {{"password": "{REDIS_PASSWORD}"}}, "api": {{"key": "k1", "list": ["a", "b"]}}}}"#),
    )
    .expect("secrets file");
    let root = dirs.root.path().join("files");
    let _files = spawn_component("plugd-files", &dirs.sockets, "files", &[]);
    let _redis_component = spawn_component("plugd-redis", &dirs.sockets, "redis", &[]);
    let secrets_path = secrets_file.display().to_string();
    let root_path = root.display().to_string();
    dirs.write_resource(
        "secrets.yaml",
        &yaml(
            "vault",
            "secretstores.files",
            &[("secretsFile", &secrets_path), ("multiValued", "true")],
            "",
        ),
    );
    dirs.write_resource(
        "flat.yaml",
        &yaml(
            "flat",
            "secretstores.files",
            &[("secretsFile", &secrets_path)],
            "",
        ),
    );
    dirs.write_resource(
        "files.yaml",
        &yaml("files", "bindings.files", &[("rootPath", &root_path)], ""),
    );
    // Redis refuses every command without the password: this component is READY only if
    // plugd resolved the secretKeyRef and sent the value in Init.
    dirs.write_resource(
        "pubsub.yaml",
        &yaml(
            "pubsub",
            "pubsub.redis",
            &[("redisHost", &redis.address())],
            "  - name: redisPassword\n    secretKeyRef:\n      name: redis\n      key: password\nauth:\n  secretStore: vault\n",
        ),
    );
    let plugd = start_plugd(Config::for_tests(
        dirs.sockets.clone(),
        vec![dirs.resources.clone()],
    ))
    .await
    .expect("plugd");
    eventually(WAIT, "every component ready", || {
        let ready = plugd.registry.snapshot().ready();
        async move { ready.then_some(()) }
    })
    .await;
    let snapshot = plugd.registry.snapshot();
    assert_eq!(
        snapshot.component("vault").expect("vault").features,
        ["MULTIPLE_KEY_VALUES_PER_SECRET"]
    );
    assert!(
        snapshot
            .component("flat")
            .expect("flat")
            .features
            .is_empty()
    );

    let mut client = plugd.grpc_client().await;
    // The pub/sub component authenticated with the resolved password.
    client
        .publish_event(rt::PublishEventRequest {
            pubsub_name: "pubsub".into(),
            topic: "t".into(),
            data: b"{}".to_vec(),
            data_content_type: "application/json".into(),
            metadata: HashMap::new(),
        })
        .await
        .expect("publish through the password-protected Redis");

    // Secrets: a multi-valued secret, and the flattened keys of the other instance.
    let got = client
        .get_secret(rt::GetSecretRequest {
            store_name: "vault".into(),
            key: "api".into(),
            metadata: HashMap::new(),
        })
        .await
        .expect("secret")
        .into_inner()
        .data;
    assert_eq!(
        got,
        HashMap::from([
            ("key".to_string(), "k1".to_string()),
            ("list:0".to_string(), "a".to_string()),
            ("list:1".to_string(), "b".to_string()),
        ])
    );
    let flat = client
        .get_bulk_secret(rt::GetBulkSecretRequest {
            store_name: "flat".into(),
            metadata: HashMap::new(),
        })
        .await
        .expect("bulk")
        .into_inner()
        .data;
    assert_eq!(flat["api:key"].secrets["api:key"], "k1");
    assert_eq!(
        flat["redis:password"].secrets["redis:password"],
        REDIS_PASSWORD
    );

    // The files binding: create, get, list, delete through plugd's HTTP API.
    let http = reqwest::Client::new();
    let url = plugd.http_url("/v1.0/bindings/files");
    let invoke = |body: serde_json::Value| http.post(&url).json(&body).send();
    let resp = invoke(serde_json::json!({
        "operation": "create", "data": {"order": 1}, "metadata": {"fileName": "orders/1.json"}
    }))
    .await
    .expect("create");
    assert_eq!(resp.status(), 200);
    assert_eq!(
        std::fs::read_to_string(root.join("orders/1.json")).expect("written"),
        r#"{"order":1}"#
    );
    let resp =
        invoke(serde_json::json!({"operation": "get", "metadata": {"fileName": "orders/1.json"}}))
            .await
            .expect("get");
    assert_eq!(resp.text().await.expect("body"), r#"{"order":1}"#);
    let resp = invoke(serde_json::json!({"operation": "list"}))
        .await
        .expect("list");
    let names: serde_json::Value = resp.json().await.expect("json");
    assert_eq!(names, serde_json::json!(["orders/1.json"]));

    // Names that leave the folder are refused; nothing is written outside it.
    for name in [
        "../escape.json",
        "/tmp/escape.json",
        "orders/../../escape.json",
    ] {
        let resp = invoke(serde_json::json!({
            "operation": "create", "data": "x", "metadata": {"fileName": name}
        }))
        .await
        .expect("create");
        assert_eq!(resp.status(), 500, "{name} must be refused");
        let body: serde_json::Value = resp.json().await.expect("json");
        assert_eq!(body["errorCode"], "ERR_INVOKE_OUTPUT_BINDING");
        assert!(
            body["message"].as_str().is_some_and(|m| m.contains(name)),
            "the error names {name}: {body}"
        );
    }
    assert!(!dirs.root.path().join("escape.json").exists());
    assert!(!std::path::Path::new("/tmp/escape.json").exists());

    // An operation the component does not list is refused by plugd.
    let resp = invoke(serde_json::json!({"operation": "truncate"}))
        .await
        .expect("truncate");
    let body: serde_json::Value = resp.json().await.expect("json");
    let message = body["message"].as_str().unwrap_or_default();
    let valid = message
        .split_once("valid operations: ")
        .map(|(_, ops)| {
            let mut ops: Vec<&str> = ops.split(", ").collect();
            ops.sort_unstable();
            ops
        })
        .unwrap_or_default();
    assert_eq!(valid, ["create", "delete", "get", "list"], "{body}");
    let resp = invoke(
        serde_json::json!({"operation": "delete", "metadata": {"fileName": "orders/1.json"}}),
    )
    .await
    .expect("delete");
    // No data back: 204, as Dapr documents for bindings.
    assert_eq!(resp.status(), 204);
    assert!(!root.join("orders/1.json").exists());
    plugd.stop().await;
}

#[tokio::test]
async fn cron_events_reach_the_app_and_resume_after_the_component_is_killed() {
    let dirs = TestDirs::new();
    let mut cron = spawn_component("plugd-cron", &dirs.sockets, "cron", &[]);
    dirs.write_resource(
        "cron.yaml",
        &yaml(
            "tick",
            "bindings.cron",
            &[("schedule", "@every 50ms"), ("route", "/ticks")],
            "",
        ),
    );
    // The app answers every POST (and the OPTIONS probe) with 200.
    let app = apps::http_app(serde_json::json!([]), apps::always(apps::Answer::Success)).await;
    let mut config = Config::for_tests(dirs.sockets.clone(), vec![dirs.resources.clone()]);
    config.app = Some(AppConfig {
        address: ([127, 0, 0, 1], app.port).into(),
        protocol: AppProtocol::Http,
        token: None,
        max_concurrency: None,
        call_timeout: Duration::from_secs(10),
    });
    let plugd = start_plugd(config).await.expect("plugd");
    let ticks = |events: &[apps::Received]| {
        events
            .iter()
            .filter(|e| e.path == "/ticks" && !e.body.is_empty())
            .count()
    };
    let events = app
        .recorder
        .wait_for(WAIT, "three ticks", |e| ticks(e) >= 3)
        .await;
    // The event data is the fire time, a JSON string, in order.
    let times: Vec<String> = events
        .iter()
        .filter(|e| e.path == "/ticks")
        .filter_map(|e| serde_json::from_slice::<String>(&e.body).ok())
        .collect();
    assert!(times.len() >= 3, "{times:?}");
    assert!(times.windows(2).all(|w| w[0] < w[1]), "{times:?}");
    assert!(
        times[0].ends_with('Z') && times[0].contains('T'),
        "{times:?}"
    );

    // kill -9 and restart: events resume on a re-opened stream.
    let _ = cron.child.kill();
    let _ = cron.child.wait();
    let _ = std::fs::remove_file(dirs.sockets.join("cron.sock"));
    let before = ticks(&app.recorder.snapshot());
    let restarted = std::time::Instant::now();
    let _cron = spawn_component("plugd-cron", &dirs.sockets, "cron", &[]);
    app.recorder
        .wait_for(WAIT, "a tick after the restart", |e| ticks(e) > before)
        .await;
    println!(
        "input binding resumed: first event {:?} after the component was restarted (schedule @every 50ms)",
        restarted.elapsed()
    );
    app.recorder
        .wait_for(WAIT, "more ticks after the restart", |e| {
            ticks(e) >= before + 3
        })
        .await;
    plugd.stop().await;
}
