//! A zoo of faulty sockets next to a real `plugd-sqlite`: discovery must report each bad
//! socket with its path and reason, bounded in time, and start-up must honour `initTimeout`
//! and `ignoreErrors`.

mod support;

use std::{
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use plugd::{component::ComponentKind, config::Config, registry::Registry};
use plugd_component_sdk::{
    ComponentServer,
    state::{
        DeleteRequest, GetRequest, GetResponse, Properties, SetRequest, StateError, StateStore,
    },
};
use reqwest::StatusCode;
use serde_json::{Value, json};
use support::{ChildGuard, TestDirs};
use tokio::{io::AsyncWriteExt, net::UnixListener};
use tokio_stream::wrappers::UnixListenerStream;
use tokio_util::sync::CancellationToken;

const DISCOVERY_TIMEOUT: Duration = Duration::from_millis(500);
const STATE_STORE_SERVICE: &str = "dapr.proto.components.v1.StateStore";

/// A state store whose Init never returns.
struct HangingInit;

impl StateStore for HangingInit {
    async fn init(&self, _properties: Properties) -> Result<(), StateError> {
        std::future::pending().await
    }

    async fn get(&self, _request: GetRequest) -> Result<GetResponse, StateError> {
        Ok(GetResponse::default())
    }

    async fn set(&self, _request: SetRequest) -> Result<(), StateError> {
        Ok(())
    }

    async fn delete(&self, _request: DeleteRequest) -> Result<(), StateError> {
        Ok(())
    }
}

/// The socket folder with every fake bound (and served) plus a real plugd-sqlite.
struct Zoo {
    dirs: TestDirs,
    _sqlite: ChildGuard,
    stop: CancellationToken,
}

impl Drop for Zoo {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A runtime API server (a real gRPC service that is no component), without reflection.
fn dapr_runtime_service()
-> plugd::proto::runtime::dapr_server::DaprServer<plugd::api::grpc::DaprApi> {
    plugd::api::grpc::DaprApi::new(
        Arc::new(Registry::default()),
        "fake".into(),
        CancellationToken::new(),
    )
    .into_server()
}

fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(plugd::proto::FILE_DESCRIPTOR_SET)
}

impl Zoo {
    /// Binds every fake before anything dials, then serves them in tasks.
    async fn start() -> Self {
        let dirs = TestDirs::new();
        let s = dirs.sockets.clone();
        let stop = CancellationToken::new();

        // (a) A stale socket file: bound once, nobody listens any more.
        drop(std::os::unix::net::UnixListener::bind(s.join("stale.sock")).expect("bind stale"));

        // (b) Accepts and holds connections, never says a word.
        let silent = UnixListener::bind(s.join("silent.sock")).expect("bind silent");
        tokio::spawn(stop.clone().run_until_cancelled_owned(async move {
            let mut held = Vec::new();
            while let Ok((conn, _)) = silent.accept().await {
                held.push(conn);
            }
        }));

        // (c) Accepts, writes bytes that are not HTTP/2, closes.
        let garbage = UnixListener::bind(s.join("garbage.sock")).expect("bind garbage");
        tokio::spawn(stop.clone().run_until_cancelled_owned(async move {
            while let Ok((mut conn, _)) = garbage.accept().await {
                let _ = conn
                    .write_all(b"HTTP/1.1 418 I'm a teapot\r\n\r\n\x00\xffgarbage")
                    .await;
                let _ = conn.shutdown().await;
            }
        }));

        // (d) A real gRPC server without reflection.
        let noreflect = UnixListener::bind(s.join("noreflect.sock")).expect("bind noreflect");
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(dapr_runtime_service())
                .serve_with_incoming_shutdown(
                    UnixListenerStream::new(noreflect),
                    stop.clone().cancelled_owned(),
                ),
        );

        // (e) Reflection, but only an unrelated service.
        let unrelated = UnixListener::bind(s.join("unrelated.sock")).expect("bind unrelated");
        let only_runtime = || reflection().with_service_name("dapr.proto.runtime.v1.Dapr");
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(dapr_runtime_service())
                .add_service(only_runtime().build_v1alpha().expect("reflection v1alpha"))
                .add_service(only_runtime().build_v1().expect("reflection v1"))
                .serve_with_incoming_shutdown(
                    UnixListenerStream::new(unrelated),
                    stop.clone().cancelled_owned(),
                ),
        );

        // (f) A component whose Init hangs forever.
        let hang = ComponentServer::new("hang")
            .socket_folder(&s)
            .state_store(|_| HangingInit)
            .bind()
            .expect("bind hang");
        tokio::spawn(hang.serve_with_shutdown(stop.clone().cancelled_owned()));

        // (g) A regular file and a sub-folder.
        std::fs::write(s.join("notes.txt"), "not a socket").expect("write file");
        std::fs::create_dir(s.join("subdir.sock")).expect("create sub-folder");

        // (h) A state store advertised by v1 reflection only.
        let v1only = UnixListener::bind(s.join("v1only.sock")).expect("bind v1only");
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(
                    reflection()
                        .with_service_name(STATE_STORE_SERVICE)
                        .build_v1()
                        .expect("reflection v1"),
                )
                .serve_with_incoming_shutdown(
                    UnixListenerStream::new(v1only),
                    stop.clone().cancelled_owned(),
                ),
        );

        // The real component.
        let sqlite = support::spawn_sqlite(&s, "sqlite");
        Self {
            dirs,
            _sqlite: sqlite,
            stop,
        }
    }

    fn socket(&self, name: &str) -> PathBuf {
        self.dirs.sockets.join(name)
    }

    fn config(&self) -> Config {
        let mut config =
            Config::for_tests(self.dirs.sockets.clone(), vec![self.dirs.resources.clone()]);
        config.discovery_timeout = DISCOVERY_TIMEOUT;
        config
    }

    /// `hung` on the hanging socket, with the given extra spec lines.
    fn write_hung(&self, extra_spec: &str) {
        self.dirs.write_resource(
            "hung.yaml",
            &format!(
                "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: hung\nspec:\n  type: state.hang\n  version: v1\n{extra_spec}"
            ),
        );
    }
}

/// Builds plugd, measuring how long it took.
async fn timed_start(config: Config) -> (support::RunningPlugd, Duration) {
    let started = Instant::now();
    let plugd = support::start_plugd(config)
        .await
        .unwrap_or_else(|e| panic!("plugd did not start: {e}"));
    (plugd, started.elapsed())
}

/// A component's status and reason from `/v1.0/metadata`.
async fn component_status(plugd: &support::RunningPlugd, name: &str) -> (String, String) {
    let m: Value = reqwest::get(plugd.http_url("/v1.0/metadata"))
        .await
        .expect("metadata")
        .json()
        .await
        .expect("JSON");
    let c = m["components"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("{name} not in {m}"));
    (
        c["status"].as_str().unwrap_or_default().to_string(),
        c["reason"].as_str().unwrap_or_default().to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scan_reports_every_bad_socket_within_a_bound() {
    let zoo = Zoo::start().await;
    let started = Instant::now();
    let found = plugd::discovery::scan(&zoo.dirs.sockets, DISCOVERY_TIMEOUT).await;
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(3), "scan took {elapsed:?}");

    let names: Vec<&str> = found.sockets.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["hang", "sqlite", "v1only"], "{found:#?}");
    let sqlite = found.socket("sqlite").expect("sqlite discovered");
    assert_eq!(sqlite.path, zoo.socket("sqlite.sock"));
    assert_eq!(sqlite.kinds, [ComponentKind::State]);
    assert_eq!(sqlite.reflection, "v1alpha");
    assert!(
        sqlite.services.iter().any(|s| s == STATE_STORE_SERVICE),
        "{sqlite:?}"
    );
    assert_eq!(
        found.socket("hang").expect("hang").kinds,
        [ComponentKind::State]
    );
    let v1only = found.socket("v1only").expect("v1only discovered");
    assert_eq!(v1only.reflection, "v1");
    assert_eq!(v1only.kinds, [ComponentKind::State]);

    let reason = |name: &str| {
        let f = found
            .failures
            .iter()
            .find(|f| f.name == name)
            .unwrap_or_else(|| panic!("no failure reported for {name}: {found:#?}"));
        assert_eq!(f.path, zoo.socket(&format!("{name}.sock")));
        f.reason.to_lowercase()
    };
    let stale = reason("stale");
    assert!(
        stale.contains("refused") && stale.contains("stale"),
        "stale: {stale}"
    );
    let silent = reason("silent");
    assert!(
        silent.contains("within") && (silent.contains("handshake") || silent.contains("grpc")),
        "silent: {silent}"
    );
    let garbage = reason("garbage");
    // A transport-level failure (the HTTP/2 handshake cannot complete), not a gRPC answer.
    assert!(garbage.contains("grpc"), "garbage: {garbage}");
    let noreflect = reason("noreflect");
    assert!(
        noreflect.contains("no grpc reflection"),
        "noreflect: {noreflect}"
    );
    let unrelated = reason("unrelated");
    assert!(
        unrelated.contains("no component service")
            && unrelated.contains("dapr.proto.runtime.v1.dapr"),
        "unrelated: {unrelated}"
    );
    assert_eq!(found.failures.len(), 5, "{found:#?}");
    // The regular file and the sub-folder are neither components nor failures.
    for f in &found.failures {
        assert!(!f.path.ends_with("notes.txt") && !f.path.ends_with("subdir.sock"));
    }
}

/// A hung Init is abandoned at its initTimeout; plugd serves everything else meanwhile. With
/// `ignoreErrors` it does not make plugd unready; without, `/v1.0/healthz` says which one is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_init_is_abandoned_and_the_rest_is_served() {
    for ignore in [true, false] {
        let zoo = Zoo::start().await;
        zoo.dirs.state_component("statestore", "sqlite", "");
        zoo.write_hung(if ignore {
            "  initTimeout: 1s\n  ignoreErrors: true\n"
        } else {
            "  initTimeout: 1s\n"
        });

        let (plugd, elapsed) = timed_start(zoo.config()).await;
        assert!(elapsed < Duration::from_secs(5), "start took {elapsed:?}");
        assert!(
            elapsed >= Duration::from_secs(1),
            "initTimeout not waited for: {elapsed:?}"
        );

        let (status, reason) = component_status(&plugd, "hung").await;
        assert_eq!(status, "FAILED", "{reason}");
        assert!(
            reason.contains("initTimeout 1s") && reason.contains("abandoned"),
            "{reason}"
        );
        assert_eq!(component_status(&plugd, "statestore").await.0, "READY");

        let http = reqwest::Client::new();
        let r = http
            .post(plugd.http_url("/v1.0/state/statestore"))
            .json(&json!([{"key": "k", "value": "v"}]))
            .send()
            .await
            .expect("save");
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
        let r = http
            .get(plugd.http_url("/v1.0/state/statestore/k"))
            .send()
            .await
            .expect("get");
        assert_eq!(r.text().await.expect("body"), "\"v\"");

        // The hung store fails fast, naming itself and its socket.
        let started = Instant::now();
        let r = http
            .get(plugd.http_url("/v1.0/state/hung/k"))
            .send()
            .await
            .expect("get");
        assert!(started.elapsed() < Duration::from_millis(500));
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body: Value = r.json().await.expect("JSON");
        let message = body["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("hung") && message.contains("hang.sock"),
            "{body}"
        );

        let r = http
            .get(plugd.http_url("/v1.0/healthz"))
            .send()
            .await
            .expect("healthz");
        if ignore {
            assert_eq!(
                r.status(),
                StatusCode::NO_CONTENT,
                "an ignored failure must not make plugd unready"
            );
        } else {
            assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
            let body: Value = r.json().await.expect("JSON");
            assert_eq!(body["errorCode"], "ERR_HEALTH_NOT_READY");
            assert!(
                body["message"].as_str().is_some_and(|m| m.contains("hung")),
                "{body}"
            );
        }
        let r = http
            .get(plugd.http_url("/v1.0/healthz/outbound"))
            .send()
            .await
            .expect("outbound");
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
        plugd.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_and_unusable_sockets_are_named() {
    let zoo = Zoo::start().await;
    zoo.dirs.state_component("statestore", "sqlite", "");
    zoo.dirs.write_resource(
        "absent.yaml",
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: nowhere\nspec:\n  type: state.absent\n  version: v1\n",
    );
    zoo.dirs.write_resource(
        "stale.yaml",
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: dead\nspec:\n  type: state.stale\n  version: v1\n",
    );

    let (plugd, elapsed) = timed_start(zoo.config()).await;
    assert!(elapsed < Duration::from_secs(5), "start took {elapsed:?}");
    let folder = zoo.dirs.sockets.display().to_string();
    let (status, absent) = component_status(&plugd, "nowhere").await;
    assert_eq!(status, "WAITING", "{absent}");
    assert!(
        absent.contains("absent.sock") && absent.contains(&folder),
        "{absent}"
    );
    let (status, stale) = component_status(&plugd, "dead").await;
    assert_eq!(status, "WAITING", "{stale}");
    assert!(
        stale.contains(&zoo.socket("stale.sock").display().to_string()),
        "{stale}"
    );
    assert!(stale.to_lowercase().contains("refused"), "{stale}");
    let r = reqwest::get(plugd.http_url("/v1.0/healthz"))
        .await
        .expect("healthz");
    assert_eq!(
        r.status(),
        StatusCode::INTERNAL_SERVER_ERROR,
        "waiting components make plugd unready"
    );
    plugd.stop().await;

    // Under ignoreErrors both are skipped and plugd serves.
    for (file, name, ty) in [
        ("absent.yaml", "nowhere", "absent"),
        ("stale.yaml", "dead", "stale"),
    ] {
        zoo.dirs.write_resource(
            file,
            &format!("apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: {name}\nspec:\n  type: state.{ty}\n  version: v1\n  ignoreErrors: true\n"),
        );
    }
    let (plugd, _) = timed_start(zoo.config()).await;
    let http = reqwest::Client::new();
    let r = http
        .get(plugd.http_url("/v1.0/healthz"))
        .send()
        .await
        .expect("healthz");
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = http
        .post(plugd.http_url("/v1.0/state/statestore"))
        .json(&json!([{"key": "k", "value": 1}]))
        .send()
        .await
        .expect("save");
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = http
        .get(plugd.http_url("/v1.0/state/statestore/k"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.text().await.expect("body"), "1");
    plugd.stop().await;
}
