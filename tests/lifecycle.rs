//! The live lifecycle of components under a running plugd: sockets that appear late, processes
//! killed under load and restarted, stale and replaced sockets, flapping, a burst of 100
//! sockets, hot-reloaded YAML under traffic, and Ping-driven health.
//!
//! The tests run one at a time (see [`serial`]): several of them assert latencies, and the
//! machine is small.

mod support;

use std::{
    collections::HashMap,
    fmt::Write as _,
    path::Path,
    process::Command,
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use plugd::{
    config::Config,
    proto::{
        common::StateItem,
        runtime::{
            GetBulkStateRequest, GetStateRequest, SaveStateRequest, dapr_client::DaprClient,
        },
    },
    registry::{ComponentStatus, Registry},
};
use plugd_component_sdk::{
    ComponentServer,
    state::{
        DeleteRequest, GetRequest, GetResponse, Properties, SetRequest, StateError, StateStore,
    },
};
use reqwest::StatusCode;
use serde_json::Value;
use support::{ChildGuard, RunningPlugd, TestDirs};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::UnixListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::{Code, transport::Channel};

const STORE: &str = "statestore";
/// How fast a call to a component that is not ready must fail.
const FAIL_FAST: Duration = Duration::from_millis(500);

// ---------------------------------------------------------------------------------------------
// Test plumbing: one test at a time, captured logs, recorded host panics.
// ---------------------------------------------------------------------------------------------

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Runs the tests one at a time and installs the log capture and the panic recorder.
async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    observe();
    SERIAL.lock().await
}

/// Log lines (INFO and above) emitted by plugd, for tests that need to see that something
/// was decided (a rejected hot reload leaves no other trace).
static LOGS: Mutex<Vec<String>> = Mutex::new(Vec::new());
/// Panics raised by host code (plugd or the SDK), wherever they ran.
static HOST_PANICS: Mutex<Vec<String>> = Mutex::new(Vec::new());

struct Capture;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Capture {
    fn on_event(
        &self,
        event: &tracing::Event<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        struct Line(String);
        impl tracing::field::Visit for Line {
            fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
                let _ = write!(self.0, " {}={value}", field.name());
            }
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                if field.name() == "message" {
                    let _ = write!(self.0, " {value:?}");
                } else {
                    let _ = write!(self.0, " {}={value:?}", field.name());
                }
            }
        }
        let mut line = Line(event.metadata().level().to_string());
        event.record(&mut line);
        LOGS.lock().expect("logs lock").push(line.0);
    }
}

fn observe() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        use tracing_subscriber::{Layer, layer::SubscriberExt, util::SubscriberInitExt};
        let capture = Capture.with_filter(tracing_subscriber::filter::filter_fn(|m| {
            m.target().starts_with("plugd") && *m.level() <= tracing::Level::INFO
        }));
        // RUST_LOG=... shows plugd's logs while debugging a test.
        let show = std::env::var("RUST_LOG").ok().map(|_| {
            tracing_subscriber::fmt::layer()
                .with_test_writer()
                .with_filter(tracing_subscriber::EnvFilter::from_default_env())
        });
        let _ = tracing_subscriber::registry()
            .with(capture)
            .with(show)
            .try_init();
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if let Some(at) = info.location() {
                let file = at.file();
                if file.starts_with("src/") || file.starts_with("components/") {
                    let message = info
                        .payload()
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| info.payload().downcast_ref::<String>().cloned())
                        .unwrap_or_default();
                    if let Ok(mut p) = HOST_PANICS.lock() {
                        p.push(format!("{at}: {message}"));
                    }
                }
            }
            previous(info);
        }));
    });
}

fn assert_no_host_panics() {
    let panics = HOST_PANICS.lock().expect("panics lock").clone();
    assert!(panics.is_empty(), "host code panicked: {panics:#?}");
}

fn logged(pred: impl Fn(&str) -> bool) -> Option<String> {
    LOGS.lock()
        .expect("logs lock")
        .iter()
        .find(|l| pred(l))
        .cloned()
}

// ---------------------------------------------------------------------------------------------
// plugd, components and calls.
// ---------------------------------------------------------------------------------------------

async fn start(dirs: &TestDirs) -> RunningPlugd {
    let config = Config::for_tests(dirs.sockets.clone(), vec![dirs.resources.clone()]);
    support::start_plugd(config)
        .await
        .unwrap_or_else(|e| panic!("plugd did not start: {e}"))
}

/// A Component YAML for a state store on `sqlite.sock` using database `db`.
fn sqlite_yaml(name: &str, db: &Path, extra_metadata: &str) -> String {
    format!(
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: {name}\nspec:\n  type: state.sqlite\n  version: v1\n  metadata:\n  - name: connectionString\n    value: {}\n{extra_metadata}",
        db.display()
    )
}

/// A Component YAML without metadata (for the in-memory fakes).
fn plain_yaml(name: &str, socket: &str) -> String {
    format!(
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: {name}\nspec:\n  type: state.{socket}\n  version: v1\n"
    )
}

/// Starts `plugd-sqlite` on `<sockets>/<name>.sock`; returns when the socket accepts, with the
/// moment it first did.
async fn start_sqlite(sockets: &Path, name: &str) -> (ChildGuard, Instant) {
    let bin = tokio::task::spawn_blocking(|| support::binary("plugd-sqlite"))
        .await
        .expect("build plugd-sqlite");
    let guard = ChildGuard::spawn(
        "plugd-sqlite",
        Command::new(bin)
            .arg("--socket-name")
            .arg(name)
            .arg("--socket-folder")
            .arg(sockets)
            .arg("--shutdown-grace")
            .arg("300ms")
            .env("RUST_LOG", "error"),
    );
    let path = sockets.join(format!("{name}.sock"));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if tokio::net::UnixStream::connect(&path).await.is_ok() {
            return (guard, Instant::now());
        }
        assert!(
            Instant::now() < deadline,
            "{} did not accept within 20s",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// SIGKILL: the socket file stays behind.
fn kill9(child: &mut ChildGuard) {
    child.child.kill().expect("kill -9 plugd-sqlite");
    child.child.wait().expect("reap plugd-sqlite");
}

/// SIGTERM and wait for the exit (the component removes its socket).
async fn terminate(mut child: ChildGuard) {
    let status = tokio::task::spawn_blocking(move || child.terminate())
        .await
        .expect("terminate");
    assert!(status.is_some(), "plugd-sqlite did not exit on SIGTERM");
}

fn item(key: &str, value: &[u8]) -> StateItem {
    StateItem {
        key: key.into(),
        value: value.to_vec(),
        ..Default::default()
    }
}

async fn save(
    c: &mut DaprClient<Channel>,
    store: &str,
    key: &str,
    value: &[u8],
) -> Result<(), tonic::Status> {
    c.save_state(SaveStateRequest {
        store_name: store.into(),
        states: vec![item(key, value)],
    })
    .await
    .map(|_| ())
}

async fn get(
    c: &mut DaprClient<Channel>,
    store: &str,
    key: &str,
) -> Result<Vec<u8>, tonic::Status> {
    Ok(c.get_state(GetStateRequest {
        store_name: store.into(),
        key: key.into(),
        ..Default::default()
    })
    .await?
    .into_inner()
    .data)
}

/// Save then read back a fresh key: the store serves.
async fn round_trip(c: &mut DaprClient<Channel>, store: &str, key: &str) {
    let value = format!("value of {key}");
    save(c, store, key, value.as_bytes())
        .await
        .unwrap_or_else(|e| panic!("save {key} to {store}: {e:?}"));
    let got = get(c, store, key)
        .await
        .unwrap_or_else(|e| panic!("get {key} from {store}: {e:?}"));
    assert_eq!(got, value.as_bytes(), "{store} returned another value");
}

async fn metadata(plugd: &RunningPlugd) -> Value {
    reqwest::get(plugd.http_url("/v1.0/metadata"))
        .await
        .expect("metadata")
        .json()
        .await
        .expect("metadata JSON")
}

/// A component's entry in `/v1.0/metadata`, if listed.
async fn component(plugd: &RunningPlugd, name: &str) -> Option<Value> {
    metadata(plugd).await["components"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == name).cloned())
}

async fn status(plugd: &RunningPlugd, name: &str) -> String {
    component(plugd, name)
        .await
        .and_then(|c| c["status"].as_str().map(str::to_string))
        .unwrap_or_else(|| "<not listed>".into())
}

/// Polls `/v1.0/metadata` until `name` has one of `statuses` and `check` accepts its entry.
async fn wait_for(
    plugd: &RunningPlugd,
    name: &str,
    statuses: &[&str],
    within: Duration,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + within;
    let mut last = Value::Null;
    loop {
        if let Some(c) = component(plugd, name).await {
            if statuses.iter().any(|s| c["status"] == *s) && check(&c) {
                return c;
            }
            last = c;
        }
        assert!(
            Instant::now() < deadline,
            "{name} did not reach {statuses:?} within {within:?}; last seen: {last}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn reason(c: &Value) -> &str {
    c["reason"].as_str().unwrap_or_default()
}

fn generation(registry: &Registry, name: &str) -> Option<u64> {
    registry
        .snapshot()
        .components
        .get(name)
        .map(|c| c.generation)
}

async fn healthz(http: &reqwest::Client, plugd: &RunningPlugd) -> (StatusCode, Value) {
    let r = http
        .get(plugd.http_url("/v1.0/healthz"))
        .send()
        .await
        .expect("healthz");
    let status = r.status();
    let body = r.json().await.unwrap_or(Value::Null);
    (status, body)
}

/// An HTTP state read: (status, JSON body or Null, how long it took).
async fn http_get(
    http: &reqwest::Client,
    plugd: &RunningPlugd,
    store: &str,
    key: &str,
) -> (StatusCode, Value, Duration) {
    let started = Instant::now();
    let r = http
        .get(plugd.http_url(&format!("/v1.0/state/{store}/{key}")))
        .send()
        .await
        .expect("state get");
    let status = r.status();
    let body = r.json().await.unwrap_or(Value::Null);
    (status, body, started.elapsed())
}

// ---------------------------------------------------------------------------------------------
// Continuous traffic.
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Call {
    op: &'static str,
    key: String,
    started: Instant,
    ended: Instant,
    outcome: Result<Vec<u8>, (Code, String)>,
    /// For a read of a key whose save succeeded: the value it must return.
    expect: Option<Vec<u8>>,
}

impl Call {
    fn took(&self) -> Duration {
        self.ended - self.started
    }

    fn failed(&self) -> bool {
        self.outcome.is_err()
    }
}

/// A task saving a fresh key and reading it back, over and over, recording every call.
struct Traffic {
    calls: Arc<Mutex<Vec<Call>>>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Traffic {
    fn start(mut client: DaprClient<Channel>, store: &str, prefix: &str) -> Self {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let (log, token, store, prefix) = (
            calls.clone(),
            stop.clone(),
            store.to_string(),
            prefix.to_string(),
        );
        let task = tokio::spawn(async move {
            let mut i = 0u64;
            while !token.is_cancelled() {
                i += 1;
                let key = format!("{prefix}-{i}");
                let value = format!("{prefix} value {i}").into_bytes();
                let started = Instant::now();
                let saved = save(&mut client, &store, &key, &value).await;
                let ended = Instant::now();
                let ok = saved.is_ok();
                log.lock().expect("calls lock").push(Call {
                    op: "save",
                    key: key.clone(),
                    started,
                    ended,
                    outcome: saved
                        .map(|()| Vec::new())
                        .map_err(|s| (s.code(), s.message().to_string())),
                    expect: None,
                });
                let started = Instant::now();
                let got = get(&mut client, &store, &key).await;
                let ended = Instant::now();
                log.lock().expect("calls lock").push(Call {
                    op: "get",
                    key,
                    started,
                    ended,
                    outcome: got.map_err(|s| (s.code(), s.message().to_string())),
                    expect: ok.then_some(value),
                });
                // Pacing, so the load does not starve the rest of a 2-core machine.
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
        });
        Self { calls, stop, task }
    }

    fn count(&self, pred: impl Fn(&Call) -> bool) -> usize {
        self.calls
            .lock()
            .expect("calls lock")
            .iter()
            .filter(|c| pred(c))
            .count()
    }

    fn first(&self, pred: impl Fn(&Call) -> bool) -> Option<Call> {
        self.calls
            .lock()
            .expect("calls lock")
            .iter()
            .find(|c| pred(c))
            .cloned()
    }

    /// Waits until `n` more calls succeeded after `after`.
    async fn successes_after(&self, after: Instant, n: usize, within: Duration, what: &str) {
        support::eventually(within, what, || {
            let ok = self.count(|c| c.started >= after && !c.failed()) >= n;
            async move { ok.then_some(()) }
        })
        .await;
    }

    async fn finish(self) -> Vec<Call> {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(15), self.task)
            .await
            .expect("traffic task stops")
            .expect("traffic task did not panic");
        let calls = self.calls.lock().expect("calls lock").clone();
        assert!(!calls.is_empty(), "no traffic ran");
        calls
    }
}

/// Reads that returned another value than the one saved just before.
fn wrong_reads(calls: &[Call]) -> Vec<String> {
    calls
        .iter()
        .filter_map(|c| match (&c.expect, &c.outcome) {
            (Some(want), Ok(got)) if want != got => Some(format!(
                "{} read {:?}, expected {:?}",
                c.key,
                String::from_utf8_lossy(got),
                String::from_utf8_lossy(want)
            )),
            _ => None,
        })
        .collect()
}

fn describe(c: &Call) -> String {
    match &c.outcome {
        Ok(_) => format!("{} {} ok in {:?}", c.op, c.key, c.took()),
        Err((code, msg)) => format!("{} {} -> {code:?} in {:?}: {msg}", c.op, c.key, c.took()),
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

// ---------------------------------------------------------------------------------------------
// An in-memory fake component.
// ---------------------------------------------------------------------------------------------

/// How a fake answers Ping.
#[derive(Default)]
struct PingControl {
    /// Ping fails with INTERNAL while false (when `unimplemented` is off).
    fail: AtomicBool,
    /// Ping answers UNIMPLEMENTED.
    unimplemented: bool,
    calls: AtomicUsize,
    failed: AtomicUsize,
}

/// A state store in memory; every call before Init fails as the SDK's stores do.
struct MemStore {
    initialised: AtomicBool,
    data: Mutex<HashMap<String, Vec<u8>>>,
    ping: Arc<PingControl>,
}

impl MemStore {
    fn new(ping: Arc<PingControl>) -> Self {
        Self {
            initialised: AtomicBool::new(false),
            data: Mutex::new(HashMap::new()),
            ping,
        }
    }

    fn ready(&self) -> Result<(), StateError> {
        if self.initialised.load(Ordering::SeqCst) {
            Ok(())
        } else {
            Err(StateError::NotInitialized)
        }
    }
}

impl StateStore for MemStore {
    async fn init(&self, _properties: Properties) -> Result<(), StateError> {
        self.initialised.store(true, Ordering::SeqCst);
        Ok(())
    }

    async fn get(&self, request: GetRequest) -> Result<GetResponse, StateError> {
        self.ready()?;
        let data = self
            .data
            .lock()
            .expect("data lock")
            .get(&request.key)
            .cloned();
        Ok(match data {
            Some(data) => GetResponse {
                data,
                etag: Some("1".into()),
                ..Default::default()
            },
            None => GetResponse::default(),
        })
    }

    async fn set(&self, request: SetRequest) -> Result<(), StateError> {
        self.ready()?;
        self.data
            .lock()
            .expect("data lock")
            .insert(request.key, request.value);
        Ok(())
    }

    async fn delete(&self, request: DeleteRequest) -> Result<(), StateError> {
        self.ready()?;
        self.data.lock().expect("data lock").remove(&request.key);
        Ok(())
    }

    async fn ping(&self) -> Result<(), StateError> {
        self.ping.calls.fetch_add(1, Ordering::SeqCst);
        if self.ping.unimplemented {
            return Err(StateError::Unimplemented("ping".into()));
        }
        if self.ping.fail.load(Ordering::SeqCst) {
            self.ping.failed.fetch_add(1, Ordering::SeqCst);
            return Err(StateError::Internal("ping refused by the test".into()));
        }
        Ok(())
    }
}

/// A fake state store served in-process on `<folder>/<name>.sock` until `stop`.
struct Fake {
    stop: CancellationToken,
    task: JoinHandle<Result<(), plugd_component_sdk::ServeError>>,
}

impl Fake {
    /// Binds at once (the socket accepts from here on), serves in a task.
    fn start(folder: &Path, name: &str, ping: Arc<PingControl>) -> Self {
        let bound = ComponentServer::new(name)
            .socket_folder(folder)
            .shutdown_grace(Duration::from_millis(300))
            .state_store(move |_| MemStore::new(ping.clone()))
            .bind()
            .unwrap_or_else(|e| panic!("bind fake {name}: {e}"));
        let stop = CancellationToken::new();
        let task = tokio::spawn(bound.serve_with_shutdown(stop.clone().cancelled_owned()));
        Self { stop, task }
    }

    /// Stops serving; the SDK removes the socket file.
    async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .expect("fake stops within 5s")
            .expect("fake task")
            .expect("fake served cleanly");
    }
}

/// A gRPC server with reflection listing only the runtime API: no component service.
struct Unrelated {
    stop: CancellationToken,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl Unrelated {
    fn start(path: &Path) -> Self {
        let listener = tokio::net::UnixListener::bind(path)
            .unwrap_or_else(|e| panic!("bind {}: {e}", path.display()));
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(plugd::proto::FILE_DESCRIPTOR_SET)
                .with_service_name("dapr.proto.runtime.v1.Dapr")
        };
        let runtime = plugd::api::grpc::DaprApi::new(
            Arc::new(Registry::default()),
            "unrelated".into(),
            CancellationToken::new(),
        )
        .into_server();
        let stop = CancellationToken::new();
        let task = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(runtime)
                .add_service(reflection().build_v1alpha().expect("reflection v1alpha"))
                .add_service(reflection().build_v1().expect("reflection v1"))
                .serve_with_incoming_shutdown(
                    UnixListenerStream::new(listener),
                    stop.clone().cancelled_owned(),
                ),
        );
        Self { stop, task }
    }

    /// Stops serving and removes the socket file (tonic leaves it).
    async fn stop(self, path: &Path) {
        self.stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.task).await;
        let _ = std::fs::remove_file(path);
    }
}

// ---------------------------------------------------------------------------------------------
// The tests.
// ---------------------------------------------------------------------------------------------

/// (1) A component whose socket is not there yet waits, fails fast, and starts serving when
/// the socket appears, without restarting plugd.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_socket_is_served_without_restart() {
    let _serial = serial().await;
    let dirs = TestDirs::new();
    dirs.state_component(STORE, "late", "");
    let expected_socket = dirs.sockets.join("late.sock");
    let folder = dirs.sockets.display().to_string();
    let plugd = start(&dirs).await;
    let http = reqwest::Client::new();

    let c = component(&plugd, STORE).await.expect("statestore listed");
    assert_eq!(c["status"], "WAITING", "{c}");
    assert!(
        reason(&c).contains("late.sock") && reason(&c).contains(&folder),
        "the reason names the expected socket: {c}"
    );

    let (code, body) = healthz(&http, &plugd).await;
    assert_eq!(code, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert_eq!(body["errorCode"], "ERR_HEALTH_NOT_READY", "{body}");
    assert!(
        body["message"].as_str().is_some_and(|m| m.contains(STORE)),
        "{body}"
    );
    let r = http
        .get(plugd.http_url("/v1.0/healthz/outbound"))
        .send()
        .await
        .expect("outbound");
    assert_eq!(r.status(), StatusCode::NO_CONTENT);

    // A state call fails fast, naming the component and the socket it waits for.
    let (code, body, took) = http_get(&http, &plugd, STORE, "k").await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(
        took < FAIL_FAST,
        "HTTP call to a waiting store took {took:?}"
    );
    assert_eq!(body["errorCode"], "ERR_COMPONENT_UNAVAILABLE", "{body}");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(STORE) && message.contains("late.sock"),
        "{body}"
    );
    let mut grpc = plugd.grpc_client().await;
    let started = Instant::now();
    let err = get(&mut grpc, STORE, "k")
        .await
        .expect_err("read from a waiting store");
    let took = started.elapsed();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(
        took < FAIL_FAST,
        "gRPC call to a waiting store took {took:?}"
    );
    assert!(
        err.message().contains(STORE) && err.message().contains("late.sock"),
        "{err:?}"
    );

    // The component starts late; plugd picks it up by itself.
    let (_sqlite, accepted) = start_sqlite(&dirs.sockets, "late").await;
    let saved = support::eventually(Duration::from_secs(10), "a first successful save", || {
        let mut grpc = grpc.clone();
        async move {
            save(&mut grpc, STORE, "late-key", b"late value")
                .await
                .ok()
                .map(|()| Instant::now())
        }
    })
    .await;
    let took = saved.saturating_duration_since(accepted);
    eprintln!("late socket: first successful save {took:?} after the socket accepted");
    assert!(
        took < Duration::from_secs(3),
        "first save came {took:?} after the socket accepted"
    );
    assert_eq!(
        get(&mut grpc, STORE, "late-key").await.expect("get"),
        b"late value"
    );

    let c = component(&plugd, STORE).await.expect("statestore listed");
    assert_eq!(c["status"], "READY", "{c}");
    assert_eq!(c["socket"], expected_socket.display().to_string(), "{c}");
    let (code, body) = healthz(&http, &plugd).await;
    assert_eq!(code, StatusCode::NO_CONTENT, "{body}");
    assert!(!plugd.task.is_finished(), "plugd stopped");
    plugd.stop().await;
    assert_no_host_panics();
}

/// (2) + (3) kill -9 under continuous load, three times: calls fail fast with UNAVAILABLE during
/// each outage, traffic resumes within 2 s of the new process accepting, data written before
/// the kill is still there, and no call ever reaches an instance plugd did not initialise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_recovers_fast() {
    let _serial = serial().await;
    let dirs = TestDirs::new();
    dirs.state_component(STORE, "sqlite", "");
    let (mut sqlite, _) = start_sqlite(&dirs.sockets, "sqlite").await;
    let plugd = start(&dirs).await;
    let mut grpc = plugd.grpc_client().await;
    save(&mut grpc, STORE, "durable", b"written before any kill")
        .await
        .expect("save durable");

    let traffic = Traffic::start(plugd.grpc_client().await, STORE, "load");
    traffic
        .successes_after(
            Instant::now(),
            20,
            Duration::from_secs(10),
            "traffic to flow",
        )
        .await;

    let mut recoveries = Vec::new();
    let mut outages = Vec::new();
    for cycle in 1..=3 {
        let killed = Instant::now();
        kill9(&mut sqlite);
        // The outage is seen: calls made after the kill fail.
        support::eventually(
            Duration::from_secs(5),
            "calls failing after the kill",
            || {
                let n = traffic.count(|c| c.started >= killed && c.failed());
                async move { (n >= 3).then_some(()) }
            },
        )
        .await;
        let (restarted, accepted) = start_sqlite(&dirs.sockets, "sqlite").await;
        sqlite = restarted;
        let first =
            support::eventually(Duration::from_secs(15), "traffic to succeed again", || {
                let ok = traffic.first(|c| c.started >= killed && !c.failed());
                async move { ok }
            })
            .await;
        let recovery = first.ended.saturating_duration_since(accepted);
        eprintln!(
            "kill -9 cycle {cycle}: outage {:?}, traffic succeeded {recovery:?} after the new socket accepted",
            first.ended - killed
        );
        recoveries.push(recovery);
        outages.push((killed, accepted));
        traffic
            .successes_after(
                first.ended,
                20,
                Duration::from_secs(10),
                "traffic to keep flowing",
            )
            .await;
        assert_eq!(
            get(&mut grpc, STORE, "durable").await.expect("get durable"),
            b"written before any kill",
            "data written before the kill is lost (cycle {cycle})"
        );
    }
    let calls = traffic.finish().await;
    eprintln!(
        "kill -9 recovery times {recoveries:?}, median {:?}",
        median(recoveries.clone())
    );

    // Every call that found the component gone failed fast with UNAVAILABLE; none succeeded
    // while no component ran (one ending just before the new socket was seen accepting may
    // already have reached it).
    const SLACK: Duration = Duration::from_millis(20);
    let failures: Vec<&Call> = calls.iter().filter(|c| c.failed()).collect();
    for (cycle, (killed, accepted)) in outages.iter().enumerate() {
        let during = failures
            .iter()
            .filter(|c| c.started >= *killed && c.ended <= *accepted)
            .count();
        assert!(during > 0, "no failed call seen in outage {}", cycle + 1);
        let succeeded: Vec<String> = calls
            .iter()
            .filter(|c| !c.failed() && c.started >= *killed && c.ended + SLACK <= *accepted)
            .map(describe)
            .collect();
        assert!(
            succeeded.is_empty(),
            "calls succeeded while no component ran: {succeeded:#?}"
        );
    }
    let wrong_code: Vec<String> = failures
        .iter()
        .filter(|c| !matches!(&c.outcome, Err((Code::Unavailable, _))))
        .map(|c| describe(c))
        .collect();
    assert!(
        wrong_code.is_empty(),
        "failures other than UNAVAILABLE: {wrong_code:#?}"
    );
    let slow: Vec<String> = failures
        .iter()
        .filter(|c| c.took() >= FAIL_FAST)
        .map(|c| describe(c))
        .collect();
    assert!(
        slow.is_empty(),
        "failing calls slower than {FAIL_FAST:?}: {slow:#?}"
    );
    let unnamed: Vec<String> = failures
        .iter()
        .filter(|c| !matches!(&c.outcome, Err((_, m)) if m.contains(STORE)))
        .map(|c| describe(c))
        .collect();
    assert!(
        unnamed.is_empty(),
        "errors not naming the component: {unnamed:#?}"
    );

    // (3) No call reached a component instance that plugd had not initialised.
    let uninitialised: Vec<String> = calls
        .iter()
        .filter(|c| {
            matches!(&c.outcome, Err((_, m)) if {
                let m = m.to_lowercase();
                m.contains("not initialised") || m.contains("not initialized")
            })
        })
        .map(describe)
        .collect();
    assert!(
        uninitialised.is_empty(),
        "calls reached an uninitialised instance: {uninitialised:#?}"
    );
    let wrong = wrong_reads(&calls);
    assert!(wrong.is_empty(), "{wrong:#?}");

    // Every save that succeeded is still there after the three kills.
    let saved: HashMap<String, Vec<u8>> = calls
        .iter()
        .filter_map(|c| c.expect.clone().map(|v| (c.key.clone(), v)))
        .collect();
    let items = grpc
        .get_bulk_state(GetBulkStateRequest {
            store_name: STORE.into(),
            keys: saved.keys().cloned().collect(),
            ..Default::default()
        })
        .await
        .expect("bulk get")
        .into_inner()
        .items;
    let lost: Vec<&str> = items
        .iter()
        .filter(|i| saved.get(&i.key) != Some(&i.data))
        .map(|i| i.key.as_str())
        .collect();
    assert!(lost.is_empty(), "acknowledged saves lost: {lost:?}");
    assert_eq!(items.len(), saved.len());

    for (cycle, recovery) in recoveries.iter().enumerate() {
        assert!(
            *recovery < Duration::from_secs(2),
            "cycle {}: traffic resumed {recovery:?} after the new socket accepted",
            cycle + 1
        );
    }
    assert_eq!(status(&plugd, STORE).await, "READY");
    assert!(!plugd.task.is_finished(), "plugd stopped");
    plugd.stop().await;
    assert_no_host_panics();
}

/// (2b) After a long outage plugd's Init retries are spaced by its backoff (up to 2 s); the
/// restarted component's socket must still be noticed at once (the folder is watched), not at
/// the next retry. The restart is made right after a retry, when the backoff is at its cap, so
/// the next retry is 1.5-2.5 s away; a socket that appears is otherwise picked up in tens of
/// milliseconds (see the late-socket test), so 1 s tells the two apart with a wide margin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_after_a_long_outage_is_noticed_at_once() {
    let _serial = serial().await;
    let dirs = TestDirs::new();
    dirs.state_component(STORE, "sqlite", "");
    let (mut sqlite, _) = start_sqlite(&dirs.sockets, "sqlite").await;
    let plugd = start(&dirs).await;
    let mut grpc = plugd.grpc_client().await;
    save(&mut grpc, STORE, "durable", b"kept")
        .await
        .expect("save");

    let inode = || {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(dirs.sockets.join("sqlite.sock"))
            .map(|m| m.ino())
            .ok()
    };
    let old_inode = inode();
    kill9(&mut sqlite);
    let killed = Instant::now();
    // Each failed Init attempt re-publishes FAILED with a new lastError time.
    let mut attempts = 0;
    let mut last = None;
    while attempts < 6 {
        let info = plugd.registry.snapshot().components.get(STORE).cloned();
        if let Some(info) = info
            && matches!(info.status, ComponentStatus::Failed { .. })
        {
            let at = info.last_error.as_ref().map(|(_, at)| *at);
            if at != last {
                attempts += 1;
                last = at;
            }
        }
        assert!(
            killed.elapsed() < Duration::from_secs(15),
            "only {attempts} Init attempts in 15s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (_restarted, accepted) = start_sqlite(&dirs.sockets, "sqlite").await;
    let served = support::eventually(Duration::from_secs(10), "a read after the restart", || {
        let mut grpc = grpc.clone();
        async move {
            get(&mut grpc, STORE, "durable")
                .await
                .ok()
                .filter(|v| v == b"kept")
                .map(|_| Instant::now())
        }
    })
    .await;
    let recovery = served.saturating_duration_since(accepted);
    eprintln!(
        "long outage ({:?}, {attempts} Init attempts): served {recovery:?} after the new socket accepted (socket inode reused: {})",
        accepted - killed,
        inode() == old_inode
    );
    assert!(
        recovery < Duration::from_secs(1),
        "served {recovery:?} after the restarted component accepted: plugd waited for its next Init retry"
    );
    plugd.stop().await;
    assert_no_host_panics();
}

/// (4) A stale socket file appearing next to a live component is reported by discovery with its
/// path, and the live component keeps serving throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_socket_appearing_is_reported_and_harmless() {
    let _serial = serial().await;
    let dirs = TestDirs::new();
    dirs.state_component(STORE, "sqlite", "");
    let (_sqlite, _) = start_sqlite(&dirs.sockets, "sqlite").await;
    let plugd = start(&dirs).await;
    let traffic = Traffic::start(plugd.grpc_client().await, STORE, "k");
    traffic
        .successes_after(
            Instant::now(),
            10,
            Duration::from_secs(10),
            "traffic to flow",
        )
        .await;

    let stale = dirs.sockets.join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).expect("bind stale"));
    assert!(stale.exists(), "the stale socket file stays");
    let appeared = Instant::now();
    let failure = support::eventually(
        Duration::from_secs(5),
        "the stale socket to be reported",
        || {
            let found = plugd
                .registry
                .snapshot()
                .discovery
                .failures
                .iter()
                .find(|f| f.path == stale)
                .cloned();
            async move { found }
        },
    )
    .await;
    eprintln!("stale socket reported after {:?}", appeared.elapsed());
    assert_eq!(failure.name, "stale");
    let why = failure.reason.to_lowercase();
    assert!(why.contains("refused") && why.contains("stale"), "{why}");
    let snapshot = plugd.registry.snapshot();
    assert!(
        snapshot.discovery.socket("sqlite").is_some(),
        "the live component is still discovered: {:?}",
        snapshot.discovery
    );

    // Keep serving for a while after the report (a few rescans of the stale socket).
    traffic
        .successes_after(
            Instant::now(),
            50,
            Duration::from_secs(10),
            "traffic after the report",
        )
        .await;
    let calls = traffic.finish().await;
    let failed: Vec<String> = calls.iter().filter(|c| c.failed()).map(describe).collect();
    assert!(failed.is_empty(), "calls failed: {failed:#?}");
    assert!(wrong_reads(&calls).is_empty());
    assert_eq!(status(&plugd, STORE).await, "READY");
    let (code, body) = healthz(&reqwest::Client::new(), &plugd).await;
    assert_eq!(
        code,
        StatusCode::NO_CONTENT,
        "a stale socket nobody uses: {body}"
    );
    plugd.stop().await;
    assert_no_host_panics();
}

/// (5) A socket taken over by a server with no state store: the component stops being ready
/// and says why; a state store back on the socket makes it ready again. First with a pause
/// between the two servers, then replaced at once, as a restarting process would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_replaced_by_other_services() {
    let _serial = serial().await;
    let dirs = TestDirs::new();
    let path = dirs.sockets.join("swap.sock");
    dirs.write_resource("swapper.yaml", &plain_yaml("swapper", "swap"));
    let fake = Fake::start(&dirs.sockets, "swap", Arc::default());
    let plugd = start(&dirs).await;
    let http = reqwest::Client::new();
    let mut grpc = plugd.grpc_client().await;
    wait_for(
        &plugd,
        "swapper",
        &["READY"],
        Duration::from_secs(5),
        |_| true,
    )
    .await;
    round_trip(&mut grpc, "swapper", "a").await;

    let no_state_store = |c: &Value| {
        let r = reason(c);
        r.contains("no component service") && r.contains(&path.display().to_string())
    };

    // Phase A: the state store goes away, then an unrelated server takes the socket.
    fake.stop().await;
    let c = wait_for(
        &plugd,
        "swapper",
        &["WAITING", "FAILED"],
        Duration::from_secs(5),
        |c| reason(c).contains("swap.sock"),
    )
    .await;
    eprintln!("socket removed: {} ({})", c["status"], reason(&c));
    let unrelated = Unrelated::start(&path);
    let c = wait_for(
        &plugd,
        "swapper",
        &["WAITING", "FAILED"],
        Duration::from_secs(5),
        no_state_store,
    )
    .await;
    eprintln!("unrelated server: {} ({})", c["status"], reason(&c));
    let (code, body, took) = http_get(&http, &plugd, "swapper", "a").await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(took < FAIL_FAST, "{took:?}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("swapper") && m.contains("no component service")),
        "{body}"
    );
    unrelated.stop(&path).await;
    let fake = Fake::start(&dirs.sockets, "swap", Arc::default());
    wait_for(
        &plugd,
        "swapper",
        &["READY"],
        Duration::from_secs(5),
        |_| true,
    )
    .await;
    round_trip(&mut grpc, "swapper", "b").await;

    // Phase B: the same, with the unrelated server binding right after the state store left.
    fake.stop().await;
    let unrelated = Unrelated::start(&path);
    let replaced = Instant::now();
    let c = wait_for(
        &plugd,
        "swapper",
        &["WAITING", "FAILED"],
        Duration::from_secs(5),
        no_state_store,
    )
    .await;
    eprintln!(
        "socket replaced at once: {} after {:?} ({})",
        c["status"],
        replaced.elapsed(),
        reason(&c)
    );
    unrelated.stop(&path).await;
    let _fake = Fake::start(&dirs.sockets, "swap", Arc::default());
    wait_for(
        &plugd,
        "swapper",
        &["READY"],
        Duration::from_secs(5),
        |_| true,
    )
    .await;
    round_trip(&mut grpc, "swapper", "c").await;
    assert!(!plugd.task.is_finished(), "plugd stopped");
    plugd.stop().await;
    assert_no_host_panics();
}

/// (6) A component flapping (started and stopped five times in quick succession, by SIGKILL
/// and SIGTERM in turn) ends up READY and serving; plugd keeps running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flapping_component_settles_ready() {
    let _serial = serial().await;
    let dirs = TestDirs::new();
    dirs.state_component(STORE, "sqlite", "");
    let (first, _) = start_sqlite(&dirs.sockets, "sqlite").await;
    let plugd = start(&dirs).await;
    let mut grpc = plugd.grpc_client().await;
    save(&mut grpc, STORE, "flap", b"before the flapping")
        .await
        .expect("save");
    let traffic = Traffic::start(plugd.grpc_client().await, STORE, "flap");

    let mut sqlite = first;
    for round in 0..5 {
        if round % 2 == 0 {
            kill9(&mut sqlite);
        } else {
            terminate(sqlite).await;
        }
        sqlite = start_sqlite(&dirs.sockets, "sqlite").await.0;
    }
    // The last one stays up; the four before it were stopped right after accepting.
    let settled = Instant::now();
    wait_for(&plugd, STORE, &["READY"], Duration::from_secs(10), |_| true).await;
    traffic
        .successes_after(
            Instant::now(),
            20,
            Duration::from_secs(10),
            "traffic after flapping",
        )
        .await;
    eprintln!(
        "flapping: READY and serving {:?} after the last start",
        settled.elapsed()
    );
    let calls = traffic.finish().await;

    assert_eq!(
        get(&mut grpc, STORE, "flap").await.expect("get"),
        b"before the flapping"
    );
    round_trip(&mut grpc, STORE, "after-flap").await;
    let bad: Vec<String> = calls
        .iter()
        .filter(|c| match &c.outcome {
            Err((code, m)) => {
                *code != Code::Unavailable
                    || c.took() >= FAIL_FAST
                    || m.to_lowercase().contains("not initiali")
            }
            Ok(_) => false,
        })
        .map(describe)
        .collect();
    assert!(
        bad.is_empty(),
        "unexpected failures while flapping: {bad:#?}"
    );
    assert!(wrong_reads(&calls).is_empty());
    assert!(!plugd.task.is_finished(), "plugd's task ended");
    let (code, body) = healthz(&reqwest::Client::new(), &plugd).await;
    assert_eq!(code, StatusCode::NO_CONTENT, "{body}");
    plugd.stop().await;
    assert_no_host_panics();
}

/// (7) 100 component sockets and 100 Component YAMLs appear at once under a running plugd: all
/// become READY within a bound, and they serve.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_sockets_at_once() {
    const N: usize = 100;
    let _serial = serial().await;
    let dirs = TestDirs::new();
    let plugd = start(&dirs).await;
    let staging = dirs.root.path().join("staging");
    std::fs::create_dir_all(&staging).expect("staging dir");

    let burst = Instant::now();
    let stop = CancellationToken::new();
    let bound: Vec<_> = (0..N)
        .map(|i| {
            ComponentServer::new(format!("m{i:03}"))
                .socket_folder(&dirs.sockets)
                .state_store(|_| MemStore::new(Arc::default()))
                .bind()
                .unwrap_or_else(|e| panic!("bind m{i:03}: {e}"))
        })
        .collect();
    let servers: Vec<_> = bound
        .into_iter()
        .map(|b| tokio::spawn(b.serve_with_shutdown(stop.clone().cancelled_owned())))
        .collect();
    for i in 0..N {
        // Written aside and renamed in, so the reload never reads a half-written file.
        let file = format!("m{i:03}.yaml");
        std::fs::write(
            staging.join(&file),
            plain_yaml(&format!("m{i:03}"), &format!("m{i:03}")),
        )
        .expect("write yaml");
        std::fs::rename(staging.join(&file), dirs.resources.join(&file)).expect("rename yaml");
    }

    let ready = |registry: &Registry| {
        registry
            .snapshot()
            .components
            .values()
            .filter(|c| c.status == ComponentStatus::Ready)
            .count()
    };
    let deadline = burst + Duration::from_secs(20);
    while ready(&plugd.registry) < N {
        assert!(
            Instant::now() < deadline,
            "only {} of {N} components READY after 20s: {:?}",
            ready(&plugd.registry),
            plugd
                .registry
                .snapshot()
                .components
                .values()
                .filter(|c| c.status != ComponentStatus::Ready)
                .map(|c| format!("{} {}", c.name, c.status.name()))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let took = burst.elapsed();
    eprintln!("{N} sockets: all READY {took:?} after the burst began");

    let m = metadata(&plugd).await;
    let listed = m["components"].as_array().expect("components");
    assert_eq!(listed.len(), N, "{m}");
    assert!(listed.iter().all(|c| c["status"] == "READY"), "{m}");
    assert_eq!(plugd.registry.snapshot().discovery.sockets.len(), N);
    let mut grpc = plugd.grpc_client().await;
    round_trip(&mut grpc, "m042", "x").await;
    round_trip(&mut grpc, "m099", "y").await;
    // Each component is its own store.
    assert_eq!(get(&mut grpc, "m000", "x").await.expect("get"), b"");
    let (code, body) = healthz(&reqwest::Client::new(), &plugd).await;
    assert_eq!(code, StatusCode::NO_CONTENT, "{body}");

    plugd.stop().await;
    stop.cancel();
    for s in servers {
        let _ = tokio::time::timeout(Duration::from_secs(5), s).await;
    }
    assert_no_host_panics();
}

/// (8) Editing a Component YAML while traffic flows: a valid edit re-initialises the store with
/// no failed request; an invalid edit is rejected and the old instance keeps serving; removing
/// the file makes the store unknown; adding it back serves it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn yaml_edits_under_traffic() {
    let _serial = serial().await;
    let dirs = TestDirs::new();
    let db_a = dirs.root.path().join("a.db");
    let db_b = dirs.root.path().join("b.db");
    let db_c = dirs.root.path().join("c.db");
    let yaml = dirs.write_resource("statestore.yaml", &sqlite_yaml(STORE, &db_a, ""));
    // A second state store, so that a removed one is "not found" rather than "not configured".
    dirs.state_component("other", "sqlite", "");
    let (_sqlite, _) = start_sqlite(&dirs.sockets, "sqlite").await;
    let plugd = start(&dirs).await;
    let http = reqwest::Client::new();
    let mut grpc = plugd.grpc_client().await;
    save(&mut grpc, STORE, "origin", b"a").await.expect("save");

    // Applies `edit` under traffic; returns the calls, and when the new instance took over.
    let edit_under_traffic = |label: &'static str, new_yaml: String| {
        let (plugd, yaml) = (&plugd, &yaml);
        async move {
            let before = component(plugd, STORE).await.expect("listed");
            assert_eq!(before["status"], "READY", "{before}");
            let old = generation(&plugd.registry, STORE).expect("generation");
            let traffic = Traffic::start(plugd.grpc_client().await, STORE, label);
            traffic
                .successes_after(
                    Instant::now(),
                    10,
                    Duration::from_secs(10),
                    "traffic to flow",
                )
                .await;
            let edited = Instant::now();
            std::fs::write(yaml, new_yaml).expect("edit yaml");
            let switched =
                support::eventually(Duration::from_secs(10), "the edit to apply", || {
                    let g = generation(&plugd.registry, STORE);
                    async move { g.filter(|g| *g != old).map(|_| Instant::now()) }
                })
                .await;
            eprintln!("{label}: applied {:?} after the write", switched - edited);
            traffic
                .successes_after(
                    switched,
                    20,
                    Duration::from_secs(10),
                    "traffic after the edit",
                )
                .await;
            let calls = traffic.finish().await;
            let failed: Vec<String> = calls.iter().filter(|c| c.failed()).map(describe).collect();
            assert!(
                failed.is_empty(),
                "{label}: {} of {} calls failed during the edit: {failed:#?}",
                failed.len(),
                calls.len()
            );
            assert!(
                calls.iter().any(|c| c.ended < edited)
                    && calls.iter().any(|c| c.started > switched),
                "{label}: the traffic did not span the edit"
            );
            let after = component(plugd, STORE).await.expect("listed");
            assert_eq!(after["status"], "READY", "{after}");
            assert_ne!(
                after["since"], before["since"],
                "{label}: since did not change: {after}"
            );
            calls
        }
    };

    // A valid edit to the same database (one more metadata item): every read sees its write.
    let calls = edit_under_traffic(
        "metadata edit",
        sqlite_yaml(STORE, &db_a, "  - name: timeout\n    value: 10s\n"),
    )
    .await;
    let wrong = wrong_reads(&calls);
    assert!(wrong.is_empty(), "reads lost their writes: {wrong:#?}");
    assert_eq!(get(&mut grpc, STORE, "origin").await.expect("get"), b"a");

    // A valid edit to another database file: from then on the data comes from the new file. (A
    // write just before the switch may land in the old file, so its read may come back empty;
    // it must never come back with another value.)
    let calls = edit_under_traffic("database edit", sqlite_yaml(STORE, &db_b, "")).await;
    let wrong = wrong_reads(&calls);
    eprintln!(
        "database edit: {} of {} reads straddled the switch and found no value",
        wrong.len(),
        calls.len() / 2
    );
    assert!(
        calls.iter().all(|c| c.expect.is_none()
            || matches!(&c.outcome, Ok(v) if v.is_empty() || Some(v) == c.expect.as_ref())),
        "reads returned another value: {wrong:#?}"
    );
    assert_eq!(
        get(&mut grpc, STORE, "origin").await.expect("get"),
        b"",
        "still reading the old database"
    );
    save(&mut grpc, STORE, "origin", b"b").await.expect("save");

    // An invalid edit (and a new database, which must not be used): rejected, old instance stays.
    let gen_b = generation(&plugd.registry, STORE).expect("generation");
    let traffic = Traffic::start(plugd.grpc_client().await, STORE, "bad");
    std::fs::write(
        &yaml,
        sqlite_yaml(STORE, &db_c, "")
            .replace("  metadata:\n", "  initTimeout: soon\n  metadata:\n"),
    )
    .expect("invalid edit");
    let file = yaml.display().to_string();
    let line = support::eventually(
        Duration::from_secs(10),
        "the invalid edit to be rejected",
        || {
            let l =
                logged(|l| l.contains("invalid") && l.contains(&file) && l.contains("initTimeout"));
            async move { l }
        },
    )
    .await;
    eprintln!("invalid edit rejected: {line}");
    traffic
        .successes_after(
            Instant::now(),
            20,
            Duration::from_secs(10),
            "traffic after the invalid edit",
        )
        .await;
    let calls = traffic.finish().await;
    let failed: Vec<String> = calls.iter().filter(|c| c.failed()).map(describe).collect();
    assert!(
        failed.is_empty(),
        "calls failed after an invalid edit: {failed:#?}"
    );
    let wrong = wrong_reads(&calls);
    assert!(wrong.is_empty(), "{wrong:#?}");
    assert_eq!(
        generation(&plugd.registry, STORE),
        Some(gen_b),
        "the invalid edit was applied"
    );
    assert_eq!(status(&plugd, STORE).await, "READY");
    assert_eq!(get(&mut grpc, STORE, "origin").await.expect("get"), b"b");
    assert!(!db_c.exists(), "the invalid edit's database was opened");

    // Removing the file: the store is unknown.
    std::fs::remove_file(&yaml).expect("remove yaml");
    let removed = Instant::now();
    let body = support::eventually(Duration::from_secs(10), "the store to be unknown", || {
        let (http, plugd) = (&http, &plugd);
        async move {
            let (code, body, _) = http_get(http, plugd, STORE, "origin").await;
            (code == StatusCode::BAD_REQUEST).then_some(body)
        }
    })
    .await;
    eprintln!("removed store unknown after {:?}", removed.elapsed());
    assert!(
        removed.elapsed() < Duration::from_secs(5),
        "{:?}",
        removed.elapsed()
    );
    assert_eq!(body["errorCode"], "ERR_STATE_STORE_NOT_FOUND", "{body}");
    assert!(component(&plugd, STORE).await.is_none(), "still listed");
    round_trip(&mut grpc, "other", "still-here").await;

    // Adding it back.
    std::fs::write(&yaml, sqlite_yaml(STORE, &db_b, "")).expect("add yaml back");
    wait_for(&plugd, STORE, &["READY"], Duration::from_secs(10), |_| true).await;
    assert_eq!(get(&mut grpc, STORE, "origin").await.expect("get"), b"b");
    round_trip(&mut grpc, STORE, "back").await;
    plugd.stop().await;
    assert_no_host_panics();
}

/// (9a) Failing pings make a component UNHEALTHY after `health_failures` of them; calls then
/// fail fast; it recovers by itself when pings succeed again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_pings_make_a_component_unhealthy_until_they_pass() {
    let _serial = serial().await;
    let dirs = TestDirs::new();
    dirs.write_resource("flaky.yaml", &plain_yaml("flaky", "flaky"));
    let ping = Arc::new(PingControl::default());
    let _fake = Fake::start(&dirs.sockets, "flaky", ping.clone());
    let plugd = start(&dirs).await;
    let http = reqwest::Client::new();
    let mut grpc = plugd.grpc_client().await;
    wait_for(&plugd, "flaky", &["READY"], Duration::from_secs(5), |_| {
        true
    })
    .await;
    round_trip(&mut grpc, "flaky", "k").await;

    let failing = Instant::now();
    ping.fail.store(true, Ordering::SeqCst);
    let c = wait_for(
        &plugd,
        "flaky",
        &["UNHEALTHY"],
        Duration::from_secs(5),
        |_| true,
    )
    .await;
    let took = failing.elapsed();
    let failed_pings = ping.failed.load(Ordering::SeqCst);
    eprintln!("UNHEALTHY {took:?} after pings began failing ({failed_pings} failed pings)");
    assert!(
        failed_pings >= 2,
        "UNHEALTHY after {failed_pings} failed ping(s); health_failures is 2"
    );
    assert!(took < Duration::from_secs(3), "{took:?}");
    assert!(reason(&c).contains("ping refused by the test"), "{c}");
    assert!(
        c["lastError"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("ping refused by the test")),
        "{c}"
    );
    assert!(c["lastError"]["time"].is_string(), "{c}");

    let (code, body, took) = http_get(&http, &plugd, "flaky", "k").await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(took < FAIL_FAST, "{took:?}");
    assert_eq!(body["errorCode"], "ERR_COMPONENT_UNAVAILABLE", "{body}");
    let started = Instant::now();
    let err = get(&mut grpc, "flaky", "k").await.expect_err("unhealthy");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(started.elapsed() < FAIL_FAST);
    let (code, body) = healthz(&http, &plugd).await;
    assert_eq!(code, StatusCode::INTERNAL_SERVER_ERROR, "{body}");

    let passing = Instant::now();
    ping.fail.store(false, Ordering::SeqCst);
    wait_for(&plugd, "flaky", &["READY"], Duration::from_secs(5), |_| {
        true
    })
    .await;
    eprintln!("READY again {:?} after pings passed", passing.elapsed());
    assert_eq!(
        get(&mut grpc, "flaky", "k").await.expect("get"),
        b"value of k"
    );
    let (code, body) = healthz(&http, &plugd).await;
    assert_eq!(code, StatusCode::NO_CONTENT, "{body}");
    plugd.stop().await;
    assert_no_host_panics();
}

/// (9b) A component that does not implement Ping is healthy while it serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unimplemented_ping_stays_ready() {
    let _serial = serial().await;
    let dirs = TestDirs::new();
    dirs.write_resource("noping.yaml", &plain_yaml("noping", "noping"));
    let ping = Arc::new(PingControl {
        unimplemented: true,
        ..Default::default()
    });
    let _fake = Fake::start(&dirs.sockets, "noping", ping.clone());
    let plugd = start(&dirs).await;
    let mut grpc = plugd.grpc_client().await;

    // Watch it through several health checks: READY every time.
    let deadline = Instant::now() + Duration::from_secs(10);
    let seen = ping.calls.load(Ordering::SeqCst);
    loop {
        let c = component(&plugd, "noping").await.expect("listed");
        assert_eq!(
            c["status"], "READY",
            "a component without Ping is not READY: {c}"
        );
        if ping.calls.load(Ordering::SeqCst) >= seen + 3 {
            break;
        }
        assert!(Instant::now() < deadline, "plugd did not ping within 10s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    round_trip(&mut grpc, "noping", "k").await;
    let (code, body) = healthz(&reqwest::Client::new(), &plugd).await;
    assert_eq!(code, StatusCode::NO_CONTENT, "{body}");
    plugd.stop().await;
    assert_no_host_panics();
}
