//! Limits and security, with real processes: `--max-body-size` on both APIs (413 /
//! RESOURCE_EXHAUSTED naming the limit, large values stored and read back under a raised limit),
//! `--allowed-component-uids` (peer credentials of each socket), the socket-folder permission
//! warning, secret values never in plugd's logs, loopback-only default listeners, and
//! backpressure from a slow app (deliveries in flight never exceed the bound, none lost).
//!
//! plugd runs as a child process on port 0 with JSON logs; the ports are read from its log.
//! Every wait is a bounded poll.

mod support;

use std::{
    collections::{BTreeMap, HashMap},
    process::{Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use plugd::proto::{common, runtime as rt};
use serde_json::{Value, json};
use support::{ChildGuard, Logs, TestDirs, binary, eventually, spawn_component};

const WAIT: Duration = Duration::from_secs(30);

struct Plugd {
    guard: ChildGuard,
    logs: Logs,
    grpc: String,
    http: String,
    client: reqwest::Client,
}

impl Plugd {
    /// Starts plugd on `dirs` (ports 0, JSON logs, no managed components) with `args`, and
    /// waits until it serves.
    async fn start(dirs: &TestDirs, args: &[&str]) -> Self {
        let mut cmd = Command::new(binary("plugd"));
        cmd.args(["--app-id", "limits", "--log-as-json"])
            .arg("--resources-path")
            .arg(&dirs.resources)
            .arg("--sockets-folder")
            .arg(&dirs.sockets)
            .args(["--dapr-grpc-port", "0", "--dapr-http-port", "0"])
            .arg("--managed-components=false")
            .args(args)
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if !args.iter().any(|a| a.starts_with("--metrics-port")) {
            cmd.arg("--enable-metrics=false");
        }
        if !args.iter().any(|a| a.starts_with("--log-level")) {
            cmd.args(["--log-level", "info"]);
        }
        let mut guard = ChildGuard::spawn("plugd", &mut cmd);
        let logs = Logs::default();
        logs.keep(guard.child.stderr.take().expect("stderr"));
        logs.keep(guard.child.stdout.take().expect("stdout"));
        let watched = logs.clone();
        let (grpc, http) = eventually(WAIT, "plugd to log the ports it serves on", || {
            let logs = watched.clone();
            async move {
                assert!(
                    !logs.text().contains("could not start"),
                    "plugd could not start:\n{}",
                    logs.tail()
                );
                logs.json()
                    .iter()
                    .find(|l| l["msg"] == "plugd is serving the runtime API")
                    .and_then(|l| {
                        Some((
                            l["grpc"].as_str()?.to_string(),
                            l["http"].as_str()?.to_string(),
                        ))
                    })
            }
        })
        .await;
        Self {
            guard,
            logs,
            grpc,
            http,
            client: reqwest::Client::new(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    async fn grpc_client(&self) -> rt::dapr_client::DaprClient<tonic::transport::Channel> {
        rt::dapr_client::DaprClient::connect(format!("http://{}", self.grpc))
            .await
            .expect("connect to plugd's gRPC API")
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20)
    }

    async fn statuses(&self) -> BTreeMap<String, (String, String)> {
        let meta: Value = self
            .client
            .get(self.url("/v1.0/metadata"))
            .send()
            .await
            .expect("metadata")
            .json()
            .await
            .expect("metadata JSON");
        meta["components"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| {
                Some((
                    c["name"].as_str()?.to_string(),
                    (
                        c["status"].as_str()?.to_string(),
                        format!(
                            "{} {}",
                            c["reason"].as_str().unwrap_or_default(),
                            c["lastError"].as_str().unwrap_or_default()
                        ),
                    ),
                ))
            })
            .collect()
    }

    async fn wait_ready(&self, name: &str) {
        let name = name.to_string();
        eventually(WAIT, &format!("{name} to be READY"), || {
            let name = name.clone();
            async move {
                let statuses = self.statuses().await;
                statuses
                    .get(&name)
                    .filter(|(s, _)| s == "READY")
                    .map(|_| ())
            }
        })
        .await;
    }

    /// SIGTERM and a clean exit; the logs.
    async fn stop(mut self) -> Logs {
        let logs = self.logs.clone();
        let status = tokio::task::spawn_blocking(move || self.guard.terminate())
            .await
            .expect("join");
        assert_eq!(
            status.and_then(|s| s.code()),
            Some(0),
            "plugd's exit\n{}",
            logs.tail()
        );
        logs
    }
}

fn state_component(dirs: &TestDirs, name: &str) {
    let db = dirs.root.path().join(format!("{name}.db"));
    dirs.write_resource(
        &format!("{name}.yaml"),
        &format!(
            "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: {name}\nspec:\n  type: state.sqlite\n  version: v1\n  metadata:\n  - name: connectionString\n    value: {}\n",
            db.display()
        ),
    );
}

fn own_uid() -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").expect("/proc/self").uid()
}

// ---------------------------------------------------------------------------------------------
// --max-body-size

async fn grpc_save(plugd: &Plugd, key: &str, value: Vec<u8>) -> Result<(), tonic::Status> {
    plugd
        .grpc_client()
        .await
        .save_state(rt::SaveStateRequest {
            store_name: "store".into(),
            states: vec![common::StateItem {
                key: key.into(),
                value,
                ..Default::default()
            }],
        })
        .await
        .map(|_| ())
}

/// POSTs `body` with `Transfer-Encoding: chunked` (no length announced); status and body.
async fn chunked_post(addr: &str, path: &str, body: &[u8]) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    tcp.write_all(head.as_bytes()).await.expect("write head");
    // plugd may answer (and stop reading) before the whole body is sent.
    for chunk in body.chunks(8192) {
        let mut frame = format!("{:x}\r\n", chunk.len()).into_bytes();
        frame.extend_from_slice(chunk);
        frame.extend_from_slice(b"\r\n");
        if tcp.write_all(&frame).await.is_err() {
            break;
        }
    }
    let _ = tcp.write_all(b"0\r\n\r\n").await;
    let mut response = Vec::new();
    let _ = tokio::time::timeout(WAIT, tcp.read_to_end(&mut response)).await;
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {text:?}"));
    let (headers, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    // A chunked response body: keep the JSON between the chunk sizes.
    let body = if headers
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body.split("\r\n").filter(|l| l.starts_with('{')).collect()
    } else {
        body.to_string()
    };
    (status, body)
}

#[tokio::test]
async fn requests_over_the_body_limit_are_refused_naming_it() {
    let dirs = TestDirs::new();
    let _sqlite = spawn_component("plugd-sqlite", &dirs.sockets, "sqlite", &[]);
    state_component(&dirs, "store");
    let plugd = Plugd::start(&dirs, &["--max-body-size", "64Ki"]).await;
    plugd.wait_ready("store").await;
    let url = plugd.url("/v1.0/state/store");

    // Declared length over the limit.
    let big = json!([{"key": "k", "value": "x".repeat(100_000)}]).to_string();
    let resp = plugd
        .client
        .post(&url)
        .body(big.clone())
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status(), 413);
    let body: Value = resp.json().await.expect("JSON error body");
    assert_eq!(body["errorCode"], "ERR_BODY_TOO_LARGE", "{body}");
    let message = body["message"].as_str().expect("message");
    assert!(
        message.contains("65536") && message.contains("--max-body-size"),
        "{message}"
    );

    // No declared length (chunked): found while reading, same answer.
    let (status, body) = chunked_post(&plugd.http, "/v1.0/state/store", big.as_bytes()).await;
    assert_eq!(status, 413, "{body}");
    let body: Value = serde_json::from_str(&body).expect("JSON error body");
    assert_eq!(body["errorCode"], "ERR_BODY_TOO_LARGE", "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("65536"))
    );

    // Under the limit: served.
    let small = json!([{"key": "k", "value": "x".repeat(60_000)}]).to_string();
    let resp = plugd
        .client
        .post(&url)
        .body(small)
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status(), 204);

    // gRPC: RESOURCE_EXHAUSTED naming the limit; a smaller message is served.
    let err = grpc_save(&plugd, "g", vec![b'y'; 100_000])
        .await
        .expect_err("over the limit");
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message().contains("65536") && err.message().contains("--max-body-size"),
        "{}",
        err.message()
    );
    grpc_save(&plugd, "g", vec![b'y'; 60_000])
        .await
        .expect("under the limit");
    plugd.stop().await;
}

#[tokio::test]
async fn a_raised_limit_stores_and_reads_back_large_values() {
    let dirs = TestDirs::new();
    let _sqlite = spawn_component("plugd-sqlite", &dirs.sockets, "sqlite", &[]);
    state_component(&dirs, "store");

    // The default (4 MiB) refuses 5 MiB, naming 4194304.
    let plugd = Plugd::start(&dirs, &[]).await;
    plugd.wait_ready("store").await;
    let err = grpc_save(&plugd, "big", vec![b'a'; 5 << 20])
        .await
        .expect_err("over the default limit");
    assert_eq!(err.code(), tonic::Code::ResourceExhausted);
    assert!(err.message().contains("4194304"), "{}", err.message());
    plugd.stop().await;

    // 12 MiB allows 6 MiB values (over tonic's 4 MiB default between plugd and the
    // component), in and out, over both APIs.
    let plugd = Plugd::start(&dirs, &["--max-body-size", "12Mi"]).await;
    plugd.wait_ready("store").await;
    let value: Vec<u8> = (0..6 << 20).map(|i| b'a' + (i % 26) as u8).collect();
    grpc_save(&plugd, "big", value.clone())
        .await
        .expect("6 MiB saved over gRPC");
    let got = plugd
        .grpc_client()
        .await
        .get_state(rt::GetStateRequest {
            store_name: "store".into(),
            key: "big".into(),
            ..Default::default()
        })
        .await
        .expect("6 MiB read over gRPC")
        .into_inner();
    assert!(got.data == value, "the value read back differs");
    let text = String::from_utf8(value).expect("ascii");
    let resp = plugd
        .client
        .post(plugd.url("/v1.0/state/store"))
        .json(&json!([{"key": "big-http", "value": text}]))
        .send()
        .await
        .expect("post");
    assert_eq!(
        resp.status(),
        204,
        "{}",
        resp.text().await.unwrap_or_default()
    );
    let resp = plugd
        .client
        .get(plugd.url("/v1.0/state/store/big-http"))
        .send()
        .await
        .expect("get");
    assert_eq!(resp.status(), 200);
    let back: Value = resp.json().await.expect("JSON");
    assert!(
        back.as_str() == Some(text.as_str()),
        "the value read back differs"
    );
    plugd.stop().await;
}

/// A 6 MiB binary event (8 MiB once base64-encoded into its CloudEvent) goes through the
/// component and reaches the app whole under a 12 MiB limit.
#[tokio::test]
async fn a_large_event_is_delivered_under_a_raised_limit() {
    use axum::{Router, extract::DefaultBodyLimit, routing::get, routing::post};
    use base64::Engine;
    let dirs = TestDirs::new();
    let _memory = spawn_component("plugd-memory", &dirs.sockets, "memory", &[]);
    dirs.write_resource(
        "pubsub.yaml",
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: pubsub\nspec:\n  type: pubsub.memory\n  version: v1\n",
    );
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind app");
    let port = listener.local_addr().expect("addr").port();
    let router = Router::new()
        .route(
            "/dapr/subscribe",
            get(|| async {
                axum::Json(json!([{"pubsubname": "pubsub", "topic": "big", "route": "/big"}]))
            }),
        )
        .route(
            "/big",
            post(move |body: axum::body::Bytes| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send(body.to_vec()).await;
                    axum::Json(json!({"status": "SUCCESS"}))
                }
            }),
        )
        .layer(DefaultBodyLimit::disable());
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    let plugd = Plugd::start(
        &dirs,
        &["--app-port", &port.to_string(), "--max-body-size", "12Mi"],
    )
    .await;
    plugd.wait_ready("pubsub").await;
    eventually(WAIT, "the subscription to be listed", || async {
        let meta: Value = plugd
            .client
            .get(plugd.url("/v1.0/metadata"))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        meta["subscriptions"]
            .as_array()
            .filter(|s| !s.is_empty())
            .map(|_| ())
    })
    .await;
    let payload: Vec<u8> = (0..6u32 << 20).map(|i| (i % 251) as u8).collect();
    plugd
        .grpc_client()
        .await
        .publish_event(rt::PublishEventRequest {
            pubsub_name: "pubsub".into(),
            topic: "big".into(),
            data: payload.clone(),
            data_content_type: "application/octet-stream".into(),
            metadata: HashMap::new(),
        })
        .await
        .expect("publish 6 MiB");
    let body = tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("the event within the wait")
        .expect("the event");
    let event: Value = serde_json::from_slice(&body).expect("CloudEvent JSON");
    let data = base64::engine::general_purpose::STANDARD
        .decode(event["data_base64"].as_str().expect("data_base64"))
        .expect("base64");
    assert!(data == payload, "the payload arrived changed");
    plugd.stop().await;
}

// ---------------------------------------------------------------------------------------------
// --allowed-component-uids, socket folder, listeners

#[tokio::test]
async fn sockets_served_by_unexpected_uids_are_refused() {
    let me = own_uid();
    let other = if me == 4242 { 4243 } else { 4242 };
    let dirs = TestDirs::new();
    let _sqlite = spawn_component("plugd-sqlite", &dirs.sockets, "sqlite", &[]);
    state_component(&dirs, "store");
    let socket = dirs.sockets.join("sqlite.sock");

    let plugd = Plugd::start(
        &dirs,
        &[
            "--allowed-component-uids",
            &other.to_string(),
            "--metrics-port",
            "0",
        ],
    )
    .await;
    // Refused, and said so naming the socket and the uid.
    let logs = plugd.logs.clone();
    let warning = eventually(WAIT, "the refusal warning", || {
        let logs = logs.clone();
        let socket = socket.display().to_string();
        async move {
            logs.json().into_iter().find(|l| {
                l["level"] == "warning"
                    && l["socket"] == socket.as_str()
                    && l["reason"]
                        .as_str()
                        .is_some_and(|r| r.contains(&format!("uid {me}")))
            })
        }
    })
    .await;
    assert!(
        warning["reason"]
            .as_str()
            .is_some_and(|r| r.contains("--allowed-component-uids")),
        "{warning}"
    );
    // Never dialled for the component: it is not ready, and its error names the refusal.
    let statuses = plugd.statuses().await;
    let (status, error) = &statuses["store"];
    assert_ne!(status, "READY");
    assert!(error.contains(&format!("uid {me}")), "{statuses:?}");
    let resp = plugd
        .client
        .get(plugd.url("/v1.0/state/store/k"))
        .send()
        .await
        .expect("get");
    assert_eq!(resp.status(), 503);
    // Counted as unusable.
    let metrics_port: u16 = plugd
        .logs
        .json()
        .iter()
        .find(|l| l["msg"] == "metrics served at /metrics")
        .and_then(|l| l["addr"].as_str()?.rsplit(':').next()?.parse().ok())
        .expect("metrics port in the log");
    let text = plugd
        .client
        .get(format!("http://127.0.0.1:{metrics_port}/metrics"))
        .send()
        .await
        .expect("scrape")
        .text()
        .await
        .expect("metrics text");
    assert!(
        text.lines().any(|l| l == "plugd_sockets_unusable 1"),
        "{text}"
    );
    plugd.stop().await;

    // Our own uid listed: accepted and served.
    let allowed = format!("{other},{me}");
    let plugd = Plugd::start(&dirs, &["--allowed-component-uids", &allowed]).await;
    plugd.wait_ready("store").await;
    let resp = plugd
        .client
        .post(plugd.url("/v1.0/state/store"))
        .json(&json!([{"key": "k", "value": 1}]))
        .send()
        .await
        .expect("save");
    assert_eq!(resp.status(), 204);
    plugd.stop().await;
}

/// A component really running as another user (only root can start one): refused when that
/// uid is not allowed, used when it is.
#[tokio::test]
async fn a_component_running_as_another_user_is_refused() {
    use std::os::unix::{fs::PermissionsExt, process::CommandExt};
    let me = own_uid();
    if me != 0 {
        // CI runs as root: there, a skip would hide that the check is not exercised.
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set but the tests run as uid {me}, not root: this test needs root to start \
             a component as another uid, and must not be skipped in CI"
        );
        eprintln!("skipped: starting a component as another uid needs root");
        return;
    }
    let other = 4242;
    let dirs = TestDirs::new();
    // The other user must reach the socket folder and write its socket and database there.
    std::fs::set_permissions(dirs.root.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod root");
    std::fs::set_permissions(&dirs.sockets, std::fs::Permissions::from_mode(0o1777))
        .expect("chmod sockets");
    let _sqlite = ChildGuard::spawn(
        "plugd-sqlite as 4242",
        Command::new(binary("plugd-sqlite"))
            .arg("--socket-name")
            .arg("sqlite")
            .arg("--socket-folder")
            .arg(&dirs.sockets)
            .env("RUST_LOG", "warn")
            .uid(other)
            .gid(other),
    );
    support::wait_for_socket(&dirs.sockets.join("sqlite.sock"), WAIT);
    let db = dirs.sockets.join("store.db");
    dirs.write_resource(
        "store.yaml",
        &format!(
            "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: store\nspec:\n  type: state.sqlite\n  version: v1\n  metadata:\n  - name: connectionString\n    value: {}\n",
            db.display()
        ),
    );

    let plugd = Plugd::start(&dirs, &["--allowed-component-uids", "0"]).await;
    let statuses = eventually(WAIT, "the refusal to be reported", || async {
        let statuses = plugd.statuses().await;
        statuses
            .get("store")
            .filter(|(_, error)| error.contains(&format!("uid {other}")))
            .map(|_| statuses.clone())
    })
    .await;
    assert_ne!(statuses["store"].0, "READY");
    plugd.stop().await;

    let plugd = Plugd::start(&dirs, &["--allowed-component-uids", &format!("0,{other}")]).await;
    plugd.wait_ready("store").await;
    plugd.stop().await;
}

#[tokio::test]
async fn an_insecure_socket_folder_is_warned_about() {
    use std::os::unix::fs::PermissionsExt;
    let dirs = TestDirs::new();
    let folder = dirs.sockets.display().to_string();

    // Private folder: no warning.
    std::fs::set_permissions(&dirs.sockets, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let plugd = Plugd::start(&dirs, &[]).await;
    let logs = plugd.stop().await;
    assert!(
        !logs.text().contains("insecure socket folder"),
        "{}",
        logs.tail()
    );

    // World-writable without the sticky bit: one warning naming the folder and the problem.
    std::fs::set_permissions(&dirs.sockets, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let plugd = Plugd::start(&dirs, &[]).await;
    let logs = plugd.stop().await;
    let warnings: Vec<Value> = logs
        .json()
        .into_iter()
        .filter(|l| {
            l["level"] == "warning"
                && l["folder"] == folder.as_str()
                && l["msg"]
                    .as_str()
                    .is_some_and(|m| m.contains("world-writable"))
        })
        .collect();
    assert_eq!(warnings.len(), 1, "{}", logs.tail());

    // With the sticky bit (as /tmp): no warning.
    std::fs::set_permissions(&dirs.sockets, std::fs::Permissions::from_mode(0o1777))
        .expect("chmod");
    let plugd = Plugd::start(&dirs, &[]).await;
    let logs = plugd.stop().await;
    assert!(!logs.text().contains("insecure socket folder"));

    // Recreated while plugd runs, world-writable: warned about at the next scan.
    std::fs::set_permissions(&dirs.sockets, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let plugd = Plugd::start(&dirs, &["--component-health-interval", "100ms"]).await;
    std::fs::remove_dir(&dirs.sockets).expect("remove the socket folder");
    std::fs::create_dir(&dirs.sockets).expect("recreate it");
    std::fs::set_permissions(&dirs.sockets, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let logs = plugd.logs.clone();
    eventually(WAIT, "the warning about the recreated folder", || {
        let logs = logs.clone();
        let folder = folder.clone();
        async move {
            logs.json()
                .iter()
                .any(|l| {
                    l["folder"] == folder.as_str()
                        && l["msg"]
                            .as_str()
                            .is_some_and(|m| m.contains("world-writable"))
                })
                .then_some(())
        }
    })
    .await;
    plugd.stop().await;

    // Owned by another user (only root can arrange that).
    if own_uid() == 0 {
        std::fs::set_permissions(&dirs.sockets, std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        std::os::unix::fs::chown(&dirs.sockets, Some(4242), None).expect("chown");
        let plugd = Plugd::start(&dirs, &[]).await;
        let logs = plugd.stop().await;
        assert!(
            logs.json().iter().any(|l| l["folder"] == folder.as_str()
                && l["msg"]
                    .as_str()
                    .is_some_and(|m| m.contains("owned by uid 4242"))),
            "{}",
            logs.tail()
        );
    }
}

#[tokio::test]
async fn apis_and_metrics_bind_loopback_by_default() {
    let dirs = TestDirs::new();
    let plugd = Plugd::start(&dirs, &["--metrics-port", "0"]).await;
    assert!(plugd.grpc.starts_with("127.0.0.1:"), "{}", plugd.grpc);
    assert!(plugd.http.starts_with("127.0.0.1:"), "{}", plugd.http);
    let metrics = plugd
        .logs
        .json()
        .iter()
        .find(|l| l["msg"] == "metrics served at /metrics")
        .and_then(|l| l["addr"].as_str().map(str::to_string))
        .expect("metrics line");
    assert!(metrics.starts_with("127.0.0.1:"), "{metrics}");
    // The API answers on loopback (and only the loopback address was bound).
    let resp = plugd
        .client
        .get(plugd.url("/v1.0/healthz/outbound"))
        .send()
        .await
        .expect("healthz");
    assert_eq!(resp.status(), 204);
    plugd.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Secrets never in logs

#[tokio::test]
async fn secret_values_never_reach_plugds_logs() {
    const SECRET: &str = "Zq7-very-distinctive-s3cret-value-8841";
    for level in ["debug", "trace"] {
        let dirs = TestDirs::new();
        let _files = spawn_component("plugd-files", &dirs.sockets, "localfile", &[]);
        let _sqlite = spawn_component("plugd-sqlite", &dirs.sockets, "sqlite", &[]);
        let secrets = dirs.root.path().join("secrets.json");
        std::fs::write(
            &secrets,
            json!({"apikey": SECRET, "db": dirs.root.path().join("s.db").display().to_string()})
                .to_string(),
        )
        .expect("secrets file");
        dirs.write_resource(
            "secrets.yaml",
            &format!(
                "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: vault\nspec:\n  type: secretstores.localfile\n  version: v1\n  metadata:\n  - name: secretsFile\n    value: {}\n",
                secrets.display()
            ),
        );
        // The store's connection string and an extra field come from the secret store.
        dirs.write_resource(
            "store.yaml",
            "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: store\nspec:\n  type: state.sqlite\n  version: v1\n  metadata:\n  - name: connectionString\n    secretKeyRef:\n      name: db\n  - name: apiKey\n    secretKeyRef:\n      name: apikey\n      key: apikey\nauth:\n  secretStore: vault\n",
        );
        let plugd = Plugd::start(&dirs, &["--log-level", level]).await;
        plugd.wait_ready("vault").await;
        plugd.wait_ready("store").await;
        // Exercise it: the store (initialised with the secrets) and the secrets API.
        let resp = plugd
            .client
            .post(plugd.url("/v1.0/state/store"))
            .json(&json!([{"key": "k", "value": "v"}]))
            .send()
            .await
            .expect("save");
        assert_eq!(resp.status(), 204);
        let got: HashMap<String, String> = plugd
            .client
            .get(plugd.url("/v1.0/secrets/vault/apikey"))
            .send()
            .await
            .expect("get secret")
            .json()
            .await
            .expect("secret JSON");
        assert_eq!(got.get("apikey").map(String::as_str), Some(SECRET));
        let bulk = plugd
            .client
            .get(plugd.url("/v1.0/secrets/vault/bulk"))
            .send()
            .await
            .expect("bulk")
            .text()
            .await
            .expect("bulk text");
        assert!(bulk.contains(SECRET));
        let logs = plugd.stop().await;
        let text = logs.text();
        assert!(
            text.lines().count() > 20,
            "plugd logged at {level}:\n{text}"
        );
        assert!(
            !text.contains(SECRET),
            "the secret value is in plugd's {level} log:\n{}",
            text.lines()
                .filter(|l| l.contains(SECRET))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Backpressure from a slow app

/// An HTTP app that holds every delivery until released, counting what is in flight.
#[derive(Clone)]
struct SlowApp {
    in_flight: Arc<AtomicUsize>,
    most: Arc<AtomicUsize>,
    received: Arc<Mutex<Vec<String>>>,
    released: Arc<tokio::sync::watch::Sender<bool>>,
}

impl SlowApp {
    fn new() -> Self {
        Self {
            in_flight: Arc::default(),
            most: Arc::default(),
            received: Arc::default(),
            released: Arc::new(tokio::sync::watch::channel(false).0),
        }
    }

    async fn serve(self) -> u16 {
        use axum::{Json, Router, routing::get, routing::post};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind app");
        let port = listener.local_addr().expect("addr").port();
        let app = self.clone();
        let router = Router::new()
            .route(
                "/dapr/subscribe",
                get(|| async {
                    Json(json!([{"pubsubname": "pubsub", "topic": "work", "route": "/work"}]))
                }),
            )
            .route(
                "/work",
                post(move |Json(event): Json<Value>| {
                    let app = app.clone();
                    async move {
                        let now = app.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                        app.most.fetch_max(now, Ordering::SeqCst);
                        let mut released = app.released.subscribe();
                        let _ = released.wait_for(|r| *r).await;
                        if let Some(n) = event["data"]["n"].as_u64() {
                            app.received
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .push(n.to_string());
                        }
                        app.in_flight.fetch_sub(1, Ordering::SeqCst);
                        Json(json!({"status": "SUCCESS"}))
                    }
                }),
            );
        tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        port
    }
}

#[tokio::test]
async fn a_slow_app_gets_at_most_the_bound_in_flight_and_loses_nothing() {
    const MESSAGES: u64 = 200;
    const BOUND: usize = 4;
    let dirs = TestDirs::new();
    let _memory = spawn_component("plugd-memory", &dirs.sockets, "memory", &[]);
    // The broker would hand out up to 1000 at once: plugd must hold back.
    dirs.write_resource(
        "pubsub.yaml",
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: pubsub\nspec:\n  type: pubsub.memory\n  version: v1\n  metadata:\n  - name: maxInFlight\n    value: \"1000\"\n",
    );
    let app = SlowApp::new();
    let port = app.clone().serve().await;
    let plugd = Plugd::start(
        &dirs,
        &[
            "--app-port",
            &port.to_string(),
            "--subscription-concurrency",
            &BOUND.to_string(),
            "--app-call-timeout",
            "5m",
        ],
    )
    .await;
    plugd.wait_ready("pubsub").await;
    // Wait until plugd subscribed (the app was asked for its subscriptions).
    let logs = plugd.logs.clone();
    eventually(WAIT, "the subscription to be listed", || {
        let url = plugd.url("/v1.0/metadata");
        let client = plugd.client.clone();
        async move {
            let meta: Value = client.get(url).send().await.ok()?.json().await.ok()?;
            meta["subscriptions"]
                .as_array()
                .filter(|s| !s.is_empty())
                .map(|_| ())
        }
    })
    .await;
    let mut client = plugd.grpc_client().await;
    for n in 0..MESSAGES {
        client
            .publish_event(rt::PublishEventRequest {
                pubsub_name: "pubsub".into(),
                topic: "work".into(),
                data: json!({"n": n}).to_string().into_bytes(),
                data_content_type: "application/json".into(),
                metadata: HashMap::new(),
            })
            .await
            .expect("publish");
    }
    // The app holds everything: plugd fills the bound and stops there.
    eventually(WAIT, "the bound to be reached", || {
        let n = app.in_flight.load(Ordering::SeqCst);
        async move { (n == BOUND).then_some(()) }
    })
    .await;
    // The broker keeps offering; plugd does not take more while the app is busy. Poll the
    // metadata API a few times (plugd keeps serving) and check the bound each time.
    for _ in 0..20 {
        let resp = plugd
            .client
            .get(plugd.url("/v1.0/healthz/outbound"))
            .send()
            .await
            .expect("plugd answers while the app is stuck");
        assert_eq!(resp.status(), 204);
        assert!(app.most.load(Ordering::SeqCst) <= BOUND);
    }
    assert_eq!(app.received.lock().map(|r| r.len()).unwrap_or(0), 0);
    // Release: every message arrives (once or more), never more than the bound at once.
    app.released.send_replace(true);
    let received = app.received.clone();
    eventually(Duration::from_secs(60), "every message delivered", || {
        let got: std::collections::BTreeSet<String> = received
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect();
        async move { (got.len() as u64 == MESSAGES).then_some(()) }
    })
    .await;
    assert_eq!(
        app.most.load(Ordering::SeqCst),
        BOUND,
        "deliveries in flight at the app exceeded the bound\n{}",
        logs.tail()
    );
    plugd.stop().await;
}
