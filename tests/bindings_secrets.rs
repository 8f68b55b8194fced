//! Bindings and secret stores end to end, against components served in this process with the
//! component SDK (so the test sees what reaches them: Init properties, invocations, each `Read`
//! stream and the replies to every event) and real gRPC / HTTP apps.

mod support;

use std::{
    collections::HashMap,
    path::Path,
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use plugd::{
    config::{AppConfig, AppProtocol, Config},
    proto::{common, runtime as rt},
    registry::ComponentStatus,
};
use plugd_component_sdk::{
    ComponentServer,
    bindings::{
        self, BindingError, Event, EventError, EventSink, InputBinding, InvokeRequest,
        InvokeResponse, OutputBinding,
    },
    secretstore::{self, Secret, SecretStore, SecretStoreError},
    state::{self, DeleteRequest, GetRequest, GetResponse, SetRequest, StateError, StateStore},
};
use tokio::{net::TcpListener, sync::mpsc, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use support::{RunningPlugd, TestDirs, eventually, start_plugd};

const WAIT: Duration = Duration::from_secs(20);
/// The secret the state component's password resolves to; it must never show in logs.
const SECRET_VALUE: &str = "s3cr3t-Zq8vX1-never-logged";

// ---------------------------------------------------------------------------------------------
// Logs: everything plugd logs in this test binary, at debug level, to check for secrets.

#[derive(Clone, Default)]
struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut b) = self.0.lock() {
            b.extend_from_slice(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn logs() -> &'static LogBuffer {
    static LOGS: OnceLock<LogBuffer> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buffer = LogBuffer::default();
        let writer = buffer.clone();
        let _ = tracing_subscriber::fmt()
            .with_env_filter("debug,h2=info,hyper=info,tower=info,tonic=info")
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .try_init();
        buffer
    })
}

fn log_text() -> String {
    String::from_utf8_lossy(&logs().0.lock().expect("log lock")).into_owned()
}

// ---------------------------------------------------------------------------------------------
// Components served in this process.

/// Init properties received, by instance, in order.
type Inits = Arc<Mutex<Vec<(String, HashMap<String, String>)>>>;

/// What the test sees of the components.
#[derive(Clone, Default)]
struct Probe {
    inits: Inits,
    invokes: Arc<Mutex<Vec<InvokeRequest>>>,
    reads: Arc<AtomicUsize>,
    sinks: Arc<Mutex<Option<mpsc::UnboundedSender<EventSink>>>>,
}

impl Probe {
    fn with_sinks() -> (Self, mpsc::UnboundedReceiver<EventSink>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let probe = Self::default();
        *probe.sinks.lock().expect("sinks") = Some(tx);
        (probe, rx)
    }

    fn init_of(&self, instance: &str) -> Option<HashMap<String, String>> {
        let inits = self.inits.lock().expect("inits");
        inits
            .iter()
            .rev()
            .find(|(i, _)| i == instance)
            .map(|(_, p)| p.clone())
    }

    fn invoke_count(&self) -> usize {
        self.invokes.lock().expect("invokes").len()
    }
}

struct TestBinding {
    instance: String,
    probe: Probe,
}

impl OutputBinding for TestBinding {
    async fn init(&self, properties: bindings::Properties) -> Result<(), BindingError> {
        let mut inits = self.probe.inits.lock().expect("inits");
        inits.push((self.instance.clone(), properties));
        Ok(())
    }

    fn operations(&self) -> Vec<String> {
        vec!["create".into(), "echo".into()]
    }

    async fn invoke(&self, request: InvokeRequest) -> Result<InvokeResponse, BindingError> {
        let mut metadata = request.metadata.clone();
        metadata.insert("operation".into(), request.operation.clone());
        let data = [b"echo:".as_slice(), &request.data].concat();
        self.probe.invokes.lock().expect("invokes").push(request);
        Ok(InvokeResponse {
            data,
            metadata,
            content_type: Some("text/plain".into()),
        })
    }
}

impl InputBinding for TestBinding {
    async fn init(&self, properties: bindings::Properties) -> Result<(), BindingError> {
        let mut inits = self.probe.inits.lock().expect("inits");
        inits.push((format!("{}/input", self.instance), properties));
        Ok(())
    }

    async fn read(&self, events: EventSink) -> Result<(), BindingError> {
        self.probe.reads.fetch_add(1, Ordering::SeqCst);
        let tx = self.probe.sinks.lock().expect("sinks").clone();
        if let Some(tx) = tx {
            let _ = tx.send(events.clone());
        }
        events.closed().await;
        Ok(())
    }
}

struct TestSecrets;

impl SecretStore for TestSecrets {
    const MULTIPLE_KEY_VALUES_PER_SECRET: bool = true;

    async fn init(&self, _: secretstore::Properties) -> Result<(), SecretStoreError> {
        Ok(())
    }

    async fn get(
        &self,
        key: String,
        metadata: secretstore::Metadata,
    ) -> Result<Secret, SecretStoreError> {
        match key.as_str() {
            "dbpass" => Ok(HashMap::from([
                ("password".to_string(), SECRET_VALUE.to_string()),
                ("user".to_string(), "app".to_string()),
            ])),
            // Shows what metadata reached the store.
            "echo" => Ok(metadata),
            _ => Err(SecretStoreError::NotFound(key)),
        }
    }

    async fn bulk_get(
        &self,
        _: secretstore::Metadata,
    ) -> Result<HashMap<String, Secret>, SecretStoreError> {
        Ok(HashMap::from([
            (
                "dbpass".to_string(),
                HashMap::from([("password".to_string(), SECRET_VALUE.to_string())]),
            ),
            (
                "api".to_string(),
                HashMap::from([("api".to_string(), "k".to_string())]),
            ),
        ]))
    }
}

struct TestState {
    instance: String,
    probe: Probe,
}

impl StateStore for TestState {
    async fn init(&self, properties: state::Properties) -> Result<(), StateError> {
        let mut inits = self.probe.inits.lock().expect("inits");
        inits.push((self.instance.clone(), properties));
        Ok(())
    }
    async fn get(&self, _: GetRequest) -> Result<GetResponse, StateError> {
        Ok(GetResponse::default())
    }
    async fn set(&self, _: SetRequest) -> Result<(), StateError> {
        Ok(())
    }
    async fn delete(&self, _: DeleteRequest) -> Result<(), StateError> {
        Ok(())
    }
}

/// Serves `server` on its socket until the returned token is cancelled (bound before return).
fn serve(server: ComponentServer) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let bound = server.bind().expect("bind component socket");
    let stop = CancellationToken::new();
    let signal = stop.clone().cancelled_owned();
    let task = tokio::spawn(async move {
        bound
            .serve_with_shutdown(signal)
            .await
            .expect("component serves");
    });
    (stop, task)
}

fn binding_server(sockets: &Path, probe: &Probe) -> ComponentServer {
    let (out_probe, in_probe) = (probe.clone(), probe.clone());
    ComponentServer::new("testbind")
        .socket_folder(sockets)
        .output_binding(move |instance| TestBinding {
            instance: instance.to_string(),
            probe: out_probe.clone(),
        })
        .input_binding(move |instance| TestBinding {
            instance: instance.to_string(),
            probe: in_probe.clone(),
        })
}

fn component(name: &str, ty: &str, metadata: &[(&str, &str)], extra: &str) -> String {
    let mut yaml = format!(
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: {name}\nspec:\n  type: {ty}\n  version: v1\n  initTimeout: 2s\n  metadata:{}\n",
        if metadata.is_empty() { " []" } else { "" }
    );
    for (k, v) in metadata {
        yaml.push_str(&format!("  - name: {k}\n    value: \"{v}\"\n"));
    }
    yaml.push_str(extra);
    yaml
}

// ---------------------------------------------------------------------------------------------
// Apps that receive input-binding events.

/// One event as the app saw it.
#[derive(Debug, Clone)]
struct Delivered {
    name: String,
    path: String,
    data: Vec<u8>,
    metadata: HashMap<String, String>,
}

#[derive(Clone, Default)]
struct AppLog {
    events: Arc<Mutex<Vec<Delivered>>>,
    /// Events whose data is `hold` wait until this is cancelled.
    release: CancellationToken,
    probes: Arc<Mutex<Vec<String>>>,
}

impl AppLog {
    fn record(&self, d: Delivered) {
        self.events.lock().expect("events").push(d);
    }
    fn events(&self) -> Vec<Delivered> {
        self.events.lock().expect("events").clone()
    }
}

struct BindingApp {
    port: u16,
    log: AppLog,
    _stop: tokio_util::sync::DropGuard,
}

#[derive(Clone)]
struct GrpcBindingApp {
    log: AppLog,
    bindings: Vec<String>,
}

/// What the app answers for an event, by its data.
enum Reply {
    Data(Vec<u8>),
    Fail,
    /// gRPC: reply `{"forwarded":true}` and ask plugd to send it to output binding `to`.
    Forward(String),
}

async fn reply_for(log: &AppLog, data: &[u8]) -> Reply {
    match data {
        b"fail" => Reply::Fail,
        b"hold" => {
            log.release.cancelled().await;
            Reply::Data(b"released".to_vec())
        }
        d if d.starts_with(b"forward:") => {
            Reply::Forward(String::from_utf8_lossy(&d[8..]).into_owned())
        }
        d => Reply::Data([b"reply:".as_slice(), d].concat()),
    }
}

#[tonic::async_trait]
impl rt::app_callback_server::AppCallback for GrpcBindingApp {
    async fn on_invoke(
        &self,
        _: Request<common::InvokeRequest>,
    ) -> Result<Response<common::InvokeResponse>, Status> {
        Err(Status::unimplemented("no invoke"))
    }
    async fn list_topic_subscriptions(
        &self,
        _: Request<()>,
    ) -> Result<Response<rt::ListTopicSubscriptionsResponse>, Status> {
        Ok(Response::new(rt::ListTopicSubscriptionsResponse::default()))
    }
    async fn on_topic_event(
        &self,
        _: Request<rt::TopicEventRequest>,
    ) -> Result<Response<rt::TopicEventResponse>, Status> {
        Err(Status::unimplemented("no topics"))
    }
    async fn list_input_bindings(
        &self,
        _: Request<()>,
    ) -> Result<Response<rt::ListInputBindingsResponse>, Status> {
        self.log.probes.lock().expect("probes").push("list".into());
        Ok(Response::new(rt::ListInputBindingsResponse {
            bindings: self.bindings.clone(),
        }))
    }
    async fn on_binding_event(
        &self,
        req: Request<rt::BindingEventRequest>,
    ) -> Result<Response<rt::BindingEventResponse>, Status> {
        let r = req.into_inner();
        self.log.record(Delivered {
            name: r.name.clone(),
            path: String::new(),
            data: r.data.clone(),
            metadata: r.metadata.clone(),
        });
        match reply_for(&self.log, &r.data).await {
            Reply::Data(data) => Ok(Response::new(rt::BindingEventResponse {
                data,
                ..Default::default()
            })),
            Reply::Fail => Err(Status::internal("handler failed")),
            Reply::Forward(to) => Ok(Response::new(rt::BindingEventResponse {
                data: br#"{"forwarded":true}"#.to_vec(),
                to: vec![to],
                ..Default::default()
            })),
        }
    }
    async fn on_bulk_topic_event(
        &self,
        _: Request<rt::TopicEventBulkRequest>,
    ) -> Result<Response<rt::TopicEventBulkResponse>, Status> {
        Err(Status::unimplemented("no bulk"))
    }
    async fn on_job_event(
        &self,
        _: Request<rt::JobEventRequest>,
    ) -> Result<Response<rt::JobEventResponse>, Status> {
        Err(Status::unimplemented("no jobs"))
    }
}

async fn grpc_binding_app(bindings: &[&str]) -> BindingApp {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind app");
    let port = listener.local_addr().expect("addr").port();
    let log = AppLog::default();
    let app = GrpcBindingApp {
        log: log.clone(),
        bindings: bindings.iter().map(|s| s.to_string()).collect(),
    };
    let stop = CancellationToken::new();
    let signal = stop.clone().cancelled_owned();
    tokio::spawn(async move {
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        let _ = tonic::transport::Server::builder()
            .add_service(rt::app_callback_server::AppCallbackServer::new(app))
            .serve_with_incoming_shutdown(incoming, signal)
            .await;
    });
    BindingApp {
        port,
        log,
        _stop: stop.drop_guard(),
    }
}

/// An HTTP app answering `OPTIONS` on `routes` (404 elsewhere) and recording every `POST`.
async fn http_binding_app(routes: &[&str]) -> BindingApp {
    use axum::{
        Router,
        body::Bytes,
        extract::State,
        http::{HeaderMap, Method, StatusCode, Uri},
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind app");
    let port = listener.local_addr().expect("addr").port();
    let log = AppLog::default();
    let routes: Vec<String> = routes.iter().map(|s| s.to_string()).collect();
    async fn handler(
        State((log, routes)): State<(AppLog, Vec<String>)>,
        method: Method,
        uri: Uri,
        headers: HeaderMap,
        body: Bytes,
    ) -> (StatusCode, Vec<u8>) {
        let path = uri.path().to_string();
        if method == Method::GET {
            // `/dapr/subscribe`: no topic subscriptions.
            return (StatusCode::OK, b"[]".to_vec());
        }
        if method == Method::OPTIONS {
            log.probes.lock().expect("probes").push(path.clone());
            return if routes.contains(&path) {
                (StatusCode::OK, Vec::new())
            } else {
                (StatusCode::NOT_FOUND, Vec::new())
            };
        }
        log.record(Delivered {
            name: String::new(),
            path,
            data: body.to_vec(),
            metadata: headers
                .iter()
                .filter_map(|(k, v)| Some((k.to_string(), v.to_str().ok()?.to_string())))
                .collect(),
        });
        match reply_for(&log, &body).await {
            Reply::Data(d) => (StatusCode::OK, d),
            Reply::Fail | Reply::Forward(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, b"boom".to_vec())
            }
        }
    }
    let router = Router::new()
        .fallback(handler)
        .with_state((log.clone(), routes));
    let stop = CancellationToken::new();
    let signal = stop.clone().cancelled_owned();
    tokio::spawn(async move {
        let _ = axum::serve(listener, router)
            .with_graceful_shutdown(signal)
            .await;
    });
    BindingApp {
        port,
        log,
        _stop: stop.drop_guard(),
    }
}

fn config(dirs: &TestDirs, app: Option<(&BindingApp, AppProtocol)>) -> Config {
    let mut config = Config::for_tests(dirs.sockets.clone(), vec![dirs.resources.clone()]);
    config.app = app.map(|(app, protocol)| AppConfig {
        address: ([127, 0, 0, 1], app.port).into(),
        protocol,
        token: None,
        max_concurrency: None,
        call_timeout: Duration::from_secs(10),
    });
    config
}

async fn wait_status(plugd: &RunningPlugd, name: &str, status: &str) -> String {
    eventually(WAIT, &format!("{name} to be {status}"), || {
        let snapshot = plugd.registry.snapshot();
        let found = snapshot
            .component(name)
            .filter(|c| c.status.name() == status)
            .map(|c| c.status.reason().unwrap_or_default().to_string());
        async move { found }
    })
    .await
}

async fn next_sink(sinks: &mut mpsc::UnboundedReceiver<EventSink>) -> EventSink {
    tokio::time::timeout(WAIT, sinks.recv())
        .await
        .expect("plugd opens a Read stream in time")
        .expect("sink")
}

async fn send(sink: &EventSink, data: &[u8]) -> Result<Vec<u8>, EventError> {
    let event = Event {
        data: data.to_vec(),
        metadata: HashMap::from([("source".to_string(), "test".to_string())]),
        content_type: None,
    };
    tokio::time::timeout(WAIT, sink.send(event))
        .await
        .expect("a reply in time")
}

/// Sends an event the app holds until `release` is cancelled; returns once the app has it.
async fn hold(app: &BindingApp, sink: &EventSink) -> JoinHandle<Result<Vec<u8>, EventError>> {
    let task = {
        let sink = sink.clone();
        tokio::spawn(async move { send(&sink, b"hold").await })
    };
    eventually(WAIT, "the held event at the app", || {
        let held = app.log.events().iter().any(|e| e.data == b"hold");
        async move { held.then_some(()) }
    })
    .await;
    task
}

/// Sends an event that must be refused as plugd's closed binding refuses it.
async fn expect_closed(sink: &EventSink) {
    match send(sink, b"late").await {
        Err(EventError::Failed(message)) => assert_eq!(message, "input binding is closed"),
        other => panic!("expected 'input binding is closed', got {other:?}"),
    }
}

/// Checks an HTTP error answer: its status and Dapr's `errorCode`; returns the body.
async fn expect_error(resp: reqwest::Response, status: u16, code: &str) -> serde_json::Value {
    assert_eq!(resp.status(), status);
    let body: serde_json::Value = resp.json().await.expect("json");
    assert_eq!(body["errorCode"], code, "{body}");
    body
}

// ---------------------------------------------------------------------------------------------
// Output bindings.

#[tokio::test]
async fn output_binding_over_grpc_and_http_checks_operations_first() {
    logs();
    let dirs = TestDirs::new();
    let probe = Probe::default();
    let (stop, _task) = serve(binding_server(&dirs.sockets, &probe));
    dirs.write_resource(
        "out.yaml",
        &component("out", "bindings.testbind", &[("direction", "output")], ""),
    );
    let plugd = start_plugd(config(&dirs, None)).await.expect("plugd");
    wait_status(&plugd, "out", "READY").await;
    let info = plugd
        .registry
        .snapshot()
        .component("out")
        .cloned()
        .expect("out");
    assert_eq!(info.features, ["OUTPUT_BINDING"]);

    // gRPC: data and metadata through, response data and metadata back.
    let mut client = plugd.grpc_client().await;
    let resp = client
        .invoke_binding(rt::InvokeBindingRequest {
            name: "out".into(),
            data: b"hi".to_vec(),
            metadata: HashMap::from([("k".to_string(), "v".to_string())]),
            operation: "echo".into(),
        })
        .await
        .expect("invoke")
        .into_inner();
    assert_eq!(resp.data, b"echo:hi");
    assert_eq!(resp.metadata["k"], "v");
    assert_eq!(resp.metadata["operation"], "echo");

    // HTTP: `data` reaches the component as JSON (a string keeps its quotes), metadata comes
    // back as `metadata.<k>` headers.
    let http = reqwest::Client::new();
    let resp = http
        .post(plugd.http_url("/v1.0/bindings/out"))
        .json(&serde_json::json!({"data": "abc", "metadata": {"m": "1"}, "operation": "create"}))
        .send()
        .await
        .expect("http invoke");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["metadata.m"], "1");
    assert_eq!(resp.headers()["metadata.operation"], "create");
    assert_eq!(resp.headers()["content-type"], "text/plain");
    assert_eq!(resp.bytes().await.expect("body").as_ref(), b"echo:\"abc\"");
    let resp = http
        .post(plugd.http_url("/v1.0/bindings/out"))
        .json(&serde_json::json!({"data": {"n": 1}, "metadata": null, "operation": "create"}))
        .send()
        .await
        .expect("http invoke");
    assert_eq!(
        resp.bytes().await.expect("body").as_ref(),
        br#"echo:{"n":1}"#
    );
    assert_eq!(probe.invoke_count(), 3);

    // An unknown or missing operation is refused by plugd, naming the valid ones; the
    // component is not called.
    let err = client
        .invoke_binding(rt::InvokeBindingRequest {
            name: "out".into(),
            operation: "destroy".into(),
            ..Default::default()
        })
        .await
        .expect_err("unknown operation");
    assert_eq!(err.code(), tonic::Code::Internal);
    assert!(
        err.message().contains(
            "error invoking output binding out: binding out does not support operation \"destroy\"; valid operations: create, echo"
        ),
        "{}",
        err.message()
    );
    let resp = http
        .post(plugd.http_url("/v1.0/bindings/out"))
        .json(&serde_json::json!({"data": 1}))
        .send()
        .await
        .expect("http");
    let body = expect_error(resp, 500, "ERR_INVOKE_OUTPUT_BINDING").await;
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("operation field is missing from request"))
    );
    assert_eq!(
        probe.invoke_count(),
        3,
        "refused operations never reach the component"
    );

    // Unknown binding, malformed body.
    let err = client
        .invoke_binding(rt::InvokeBindingRequest {
            name: "nope".into(),
            operation: "create".into(),
            ..Default::default()
        })
        .await
        .expect_err("unknown binding");
    assert!(err.message().contains("couldn't find output binding nope"));
    let resp = http
        .post(plugd.http_url("/v1.0/bindings/out"))
        .body("{not json")
        .send()
        .await
        .expect("http");
    expect_error(resp, 400, "ERR_MALFORMED_REQUEST").await;

    plugd.stop().await;
    stop.cancel();
}

// ---------------------------------------------------------------------------------------------
// Input bindings.

#[tokio::test]
async fn input_binding_events_reach_a_grpc_app_and_replies_go_back_by_id() {
    logs();
    let dirs = TestDirs::new();
    let (probe, mut sinks) = Probe::with_sinks();
    let (stop, _task) = serve(binding_server(&dirs.sockets, &probe));
    // `in` is listed by the app; `unwanted` is not, and has no `direction`.
    dirs.write_resource("in.yaml", &component("in", "bindings.testbind", &[], ""));
    dirs.write_resource(
        "unwanted.yaml",
        &component("unwanted", "bindings.testbind", &[], ""),
    );
    dirs.write_resource(
        "out.yaml",
        &component("out", "bindings.testbind", &[("direction", "output")], ""),
    );
    let app = grpc_binding_app(&["in"]).await;
    let plugd = start_plugd(config(&dirs, Some((&app, AppProtocol::Grpc))))
        .await
        .expect("plugd");
    let sink = next_sink(&mut sinks).await;
    assert_eq!(sink.instance(), "in");

    // One event: data and metadata reach the app; its reply reaches the component.
    assert_eq!(send(&sink, b"one").await.expect("reply"), b"reply:one");
    let got = app.log.events();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].name, "in");
    assert_eq!(got[0].data, b"one");
    assert_eq!(got[0].metadata["source"], "test");

    // A failing app: the component gets the error, and the stream goes on.
    match send(&sink, b"fail").await {
        Err(EventError::Failed(message)) => {
            assert!(message.contains("handler failed"), "{message}")
        }
        other => panic!("expected a failure reply, got {other:?}"),
    }

    // Concurrent events, answered out of order: each reply goes to its own event.
    let held = hold(&app, &sink).await;
    assert_eq!(send(&sink, b"two").await.expect("reply"), b"reply:two");
    app.log.release.cancel();
    assert_eq!(held.await.expect("join").expect("held reply"), b"released");

    // `to` in a gRPC reply: plugd sends the data to that output binding (operation create).
    assert_eq!(
        send(&sink, b"forward:out").await.expect("reply"),
        br#"{"forwarded":true}"#
    );
    let forwarded = probe.invokes.lock().expect("invokes").clone();
    assert_eq!(forwarded.len(), 1);
    assert_eq!(forwarded[0].operation, "create");
    assert_eq!(forwarded[0].data, br#"{"forwarded":true}"#);

    // The app was asked once; the binding it does not list was never read.
    assert_eq!(*app.log.probes.lock().expect("probes"), ["list"]);
    assert_eq!(probe.reads.load(Ordering::SeqCst), 1);
    plugd.stop().await;
    stop.cancel();
}

#[tokio::test]
async fn input_binding_events_reach_an_http_app_on_its_route() {
    logs();
    let dirs = TestDirs::new();
    let (probe, mut sinks) = Probe::with_sinks();
    let (stop, _task) = serve(binding_server(&dirs.sockets, &probe));
    dirs.write_resource(
        "in.yaml",
        &component("in", "bindings.testbind", &[("route", "/events/in")], ""),
    );
    // Declared as input: delivered without asking the app (which would say no).
    dirs.write_resource(
        "declared.yaml",
        &component(
            "declared",
            "bindings.testbind",
            &[("direction", "input"), ("route", "declared-route")],
            "",
        ),
    );
    let app = http_binding_app(&["/events/in"]).await;
    let plugd = start_plugd(config(&dirs, Some((&app, AppProtocol::Http))))
        .await
        .expect("plugd");
    let mut by_instance = HashMap::new();
    for _ in 0..2 {
        let sink = next_sink(&mut sinks).await;
        by_instance.insert(sink.instance().to_string(), sink);
    }
    let sink = &by_instance["in"];
    assert_eq!(
        send(sink, b"{\"a\":1}").await.expect("reply"),
        b"reply:{\"a\":1}"
    );
    let got = app.log.events();
    assert_eq!(got[0].path, "/events/in");
    assert_eq!(got[0].data, b"{\"a\":1}");
    assert_eq!(got[0].metadata["source"], "test");
    assert_eq!(got[0].metadata["content-type"], "application/json");
    match send(sink, b"fail").await {
        Err(EventError::Failed(message)) => assert!(message.contains("500"), "{message}"),
        other => panic!("expected a failure reply, got {other:?}"),
    }
    let declared = &by_instance["declared"];
    assert_eq!(send(declared, b"x").await.expect("reply"), b"reply:x");
    assert_eq!(
        app.log.events().last().expect("event").path,
        "/declared-route"
    );
    // Only the undeclared binding was probed.
    assert_eq!(*app.log.probes.lock().expect("probes"), ["/events/in"]);
    plugd.stop().await;
    stop.cancel();
}

#[tokio::test]
async fn input_binding_is_read_again_after_a_component_restart() {
    logs();
    let dirs = TestDirs::new();
    let (probe, mut sinks) = Probe::with_sinks();
    let (stop, task) = serve(binding_server(&dirs.sockets, &probe));
    dirs.write_resource("in.yaml", &component("in", "bindings.testbind", &[], ""));
    let app = grpc_binding_app(&["in"]).await;
    let plugd = start_plugd(config(&dirs, Some((&app, AppProtocol::Grpc))))
        .await
        .expect("plugd");
    let sink = next_sink(&mut sinks).await;
    assert_eq!(
        send(&sink, b"before").await.expect("reply"),
        b"reply:before"
    );

    // The component stops (its socket goes) and comes back.
    stop.cancel();
    task.await.expect("component stopped");
    assert!(
        matches!(send(&sink, b"late").await, Err(EventError::Closed)),
        "a stopped component's stream is closed"
    );
    let (stop, _task) = serve(binding_server(&dirs.sockets, &probe));
    let sink = next_sink(&mut sinks).await;
    assert_eq!(send(&sink, b"after").await.expect("reply"), b"reply:after");
    assert_eq!(probe.reads.load(Ordering::SeqCst), 2);
    let inits = probe.inits.lock().expect("inits").len();
    assert!(
        inits >= 2,
        "re-initialised after the restart ({inits} inits)"
    );
    plugd.stop().await;
    stop.cancel();
}

#[tokio::test]
async fn a_removed_binding_answers_late_events_as_closed_while_in_flight_ones_finish() {
    logs();
    let dirs = TestDirs::new();
    let (probe, mut sinks) = Probe::with_sinks();
    let (stop, _task) = serve(binding_server(&dirs.sockets, &probe));
    let file = dirs.write_resource("in.yaml", &component("in", "bindings.testbind", &[], ""));
    let app = grpc_binding_app(&["in"]).await;
    let plugd = start_plugd(config(&dirs, Some((&app, AppProtocol::Grpc))))
        .await
        .expect("plugd");
    let sink = next_sink(&mut sinks).await;
    let held = hold(&app, &sink).await;

    // Hot reload removes the binding while an event is with the app.
    std::fs::remove_file(&file).expect("remove the resource");
    eventually(WAIT, "the binding to be removed", || {
        let gone = plugd.registry.snapshot().component("in").is_none();
        async move { gone.then_some(()) }
    })
    .await;
    expect_closed(&sink).await;
    assert_eq!(
        app.log.events().len(),
        1,
        "the late event never reached the app"
    );
    // The in-flight event still completes, then the stream closes.
    app.log.release.cancel();
    assert_eq!(held.await.expect("join").expect("held reply"), b"released");
    tokio::time::timeout(WAIT, sink.closed())
        .await
        .expect("the stream closes after the in-flight event");
    plugd.stop().await;
    stop.cancel();
}

// ---------------------------------------------------------------------------------------------
// Secret stores and secret references.

fn state_with_secret_ref(name: &str, store: &str, key: &str) -> String {
    format!(
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: {name}\nspec:\n  type: state.teststate\n  version: v1\n  initTimeout: 1s\n  metadata:\n  - name: password\n    secretKeyRef:\n      name: dbpass\n      key: {key}\n  - name: plain\n    value: visible\nauth:\n  secretStore: {store}\n"
    )
}

fn state_server(sockets: &Path, probe: &Probe) -> ComponentServer {
    let probe = probe.clone();
    ComponentServer::new("teststate")
        .socket_folder(sockets)
        .state_store(move |instance| TestState {
            instance: instance.to_string(),
            probe: probe.clone(),
        })
}

fn secrets_server(sockets: &Path) -> ComponentServer {
    ComponentServer::new("testsecrets")
        .socket_folder(sockets)
        .secret_store(|_| TestSecrets)
}

#[tokio::test]
async fn secret_refs_wait_for_their_store_and_reach_init_resolved() {
    logs();
    let dirs = TestDirs::new();
    let probe = Probe::default();
    let (state_stop, _t1) = serve(state_server(&dirs.sockets, &probe));
    dirs.write_resource(
        "vault.yaml",
        &component("vault", "secretstores.testsecrets", &[], ""),
    );
    dirs.write_resource("db.yaml", &state_with_secret_ref("db", "vault", "password"));
    dirs.write_resource(
        "broken.yaml",
        &state_with_secret_ref("broken", "vault", "no-such-key"),
    );
    // The secret store's process is not running yet.
    let plugd = start_plugd(config(&dirs, None)).await.expect("plugd");
    // Waiting (or, on a slow machine, already past its initTimeout): the reason names the
    // reference and the store.
    let waiting = eventually(WAIT, "db waiting for its secret store", || {
        let snapshot = plugd.registry.snapshot();
        let reason = snapshot
            .component("db")
            .filter(|c| matches!(c.status.name(), "WAITING" | "FAILED"))
            .and_then(|c| c.status.reason().map(str::to_string));
        async move { reason }
    })
    .await;
    assert!(
        waiting.contains("secretKeyRef \"dbpass\" key \"password\" from secret store \"vault\""),
        "{waiting}"
    );
    // After its initTimeout (1s) it is reported failed, naming the store and the key.
    let failed = wait_status(&plugd, "db", "FAILED").await;
    assert!(
        failed.contains("metadata password: waiting for secretKeyRef \"dbpass\" key \"password\" from secret store \"vault\"")
            && failed.contains("still waiting"),
        "{failed}"
    );
    assert!(
        probe.init_of("db").is_none(),
        "no Init before the secret resolves"
    );

    // The store comes up: the component initialises with the resolved value.
    let (secrets_stop, _t2) = serve(secrets_server(&dirs.sockets));
    wait_status(&plugd, "db", "READY").await;
    let props = probe.init_of("db").expect("db initialised");
    assert_eq!(props["password"], SECRET_VALUE);
    assert_eq!(props["plain"], "visible");

    // A key the secret does not have: failed, naming it, never initialised.
    // (It was already FAILED while it waited for the store: wait for the new reason.)
    eventually(WAIT, "broken to fail on the missing key", || {
        let snapshot = plugd.registry.snapshot();
        let found = snapshot.component("broken").is_some_and(|c| {
            c.status.name() == "FAILED"
                && c.status.reason().is_some_and(|r| {
                    r.contains(
                        "secret \"dbpass\" in secret store \"vault\" has no key \"no-such-key\"",
                    )
                })
        });
        async move { found.then_some(()) }
    })
    .await;
    assert!(probe.init_of("broken").is_none());

    // The value shows nowhere: not in the metadata API, not in the logs.
    let metadata = reqwest::get(plugd.http_url("/v1.0/metadata"))
        .await
        .expect("metadata")
        .text()
        .await
        .expect("body");
    assert!(metadata.contains("\"db\""));
    assert!(!metadata.contains(SECRET_VALUE));
    let logged = log_text();
    assert!(logged.contains("component ready"), "logs are captured");
    assert!(!logged.contains(SECRET_VALUE), "a secret value was logged");

    plugd.stop().await;
    state_stop.cancel();
    secrets_stop.cancel();
}

#[tokio::test]
async fn secrets_api_over_grpc_and_http() {
    logs();
    let dirs = TestDirs::new();
    let (stop, _task) = serve(secrets_server(&dirs.sockets));
    dirs.write_resource(
        "vault.yaml",
        &component("vault", "secretstores.testsecrets", &[], ""),
    );
    let plugd = start_plugd(config(&dirs, None)).await.expect("plugd");
    wait_status(&plugd, "vault", "READY").await;
    let info = plugd
        .registry
        .snapshot()
        .component("vault")
        .cloned()
        .expect("vault");
    assert_eq!(info.features, ["MULTIPLE_KEY_VALUES_PER_SECRET"]);
    assert_eq!(info.status, ComponentStatus::Ready);

    let mut client = plugd.grpc_client().await;
    let got = client
        .get_secret(rt::GetSecretRequest {
            store_name: "vault".into(),
            key: "dbpass".into(),
            metadata: HashMap::new(),
        })
        .await
        .expect("get secret")
        .into_inner();
    assert_eq!(got.data["password"], SECRET_VALUE);
    assert_eq!(got.data["user"], "app");
    // Request metadata reaches the store.
    let echo = client
        .get_secret(rt::GetSecretRequest {
            store_name: "vault".into(),
            key: "echo".into(),
            metadata: HashMap::from([("version".to_string(), "2".to_string())]),
        })
        .await
        .expect("echo")
        .into_inner();
    assert_eq!(echo.data["version"], "2");
    let bulk = client
        .get_bulk_secret(rt::GetBulkSecretRequest {
            store_name: "vault".into(),
            metadata: HashMap::new(),
        })
        .await
        .expect("bulk")
        .into_inner();
    assert_eq!(bulk.data["api"].secrets["api"], "k");
    assert_eq!(bulk.data["dbpass"].secrets["password"], SECRET_VALUE);

    let err = client
        .get_secret(rt::GetSecretRequest {
            store_name: "nope".into(),
            key: "x".into(),
            metadata: HashMap::new(),
        })
        .await
        .expect_err("unknown store");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert_eq!(err.message(), "failed finding secret store with key nope");
    let err = client
        .get_secret(rt::GetSecretRequest {
            store_name: "vault".into(),
            key: "missing".into(),
            metadata: HashMap::new(),
        })
        .await
        .expect_err("unknown key");
    assert_eq!(err.code(), tonic::Code::Internal);
    assert!(
        err.message()
            .starts_with("failed getting secret with key missing from secret store vault:"),
        "{}",
        err.message()
    );

    let http = reqwest::Client::new();
    let body: serde_json::Value = http
        .get(plugd.http_url("/v1.0/secrets/vault/echo?metadata.version=3&other=x"))
        .send()
        .await
        .expect("http get")
        .json()
        .await
        .expect("json");
    assert_eq!(body, serde_json::json!({"version": "3"}));
    let body: serde_json::Value = http
        .get(plugd.http_url("/v1.0/secrets/vault/bulk"))
        .send()
        .await
        .expect("http bulk")
        .json()
        .await
        .expect("json");
    assert_eq!(body["api"]["api"], "k");
    let resp = http
        .get(plugd.http_url("/v1.0/secrets/nope/x"))
        .send()
        .await
        .expect("http");
    expect_error(resp, 401, "ERR_SECRET_STORE_NOT_FOUND").await;
    let resp = http
        .get(plugd.http_url("/v1.0/secrets/vault/missing"))
        .send()
        .await
        .expect("http");
    expect_error(resp, 500, "ERR_SECRET_GET").await;

    plugd.stop().await;
    stop.cancel();
}

#[tokio::test]
async fn a_binding_removed_and_added_again_is_read_again() {
    logs();
    let dirs = TestDirs::new();
    let (probe, mut sinks) = Probe::with_sinks();
    let (stop, _task) = serve(binding_server(&dirs.sockets, &probe));
    let yaml = component("in", "bindings.testbind", &[], "");
    let file = dirs.write_resource("in.yaml", &yaml);
    let app = grpc_binding_app(&["in"]).await;
    let plugd = start_plugd(config(&dirs, Some((&app, AppProtocol::Grpc))))
        .await
        .expect("plugd");
    let sink = next_sink(&mut sinks).await;
    assert_eq!(send(&sink, b"first").await.expect("reply"), b"reply:first");
    // An event stays with the app, so the removed binding's stream stays open (closing) ...
    let held = hold(&app, &sink).await;
    std::fs::remove_file(&file).expect("remove the resource");
    eventually(WAIT, "the binding to be removed", || {
        let gone = plugd.registry.snapshot().component("in").is_none();
        async move { gone.then_some(()) }
    })
    .await;
    // ... while the binding is added again.
    dirs.write_resource("in.yaml", &yaml);
    wait_status(&plugd, "in", "READY").await;
    assert!(!sink.is_closed(), "the old stream is still closing");
    app.log.release.cancel();
    assert_eq!(held.await.expect("join").expect("held reply"), b"released");
    // The old reader ends, and a new one reads the binding added again.
    let sink = next_sink(&mut sinks).await;
    assert_eq!(send(&sink, b"again").await.expect("reply"), b"reply:again");
    assert_eq!(probe.reads.load(Ordering::SeqCst), 2);
    plugd.stop().await;
    stop.cancel();
}

#[tokio::test]
async fn at_shutdown_late_events_are_refused_and_in_flight_ones_finish() {
    logs();
    let dirs = TestDirs::new();
    let (probe, mut sinks) = Probe::with_sinks();
    let (stop, _task) = serve(binding_server(&dirs.sockets, &probe));
    dirs.write_resource("in.yaml", &component("in", "bindings.testbind", &[], ""));
    let app = grpc_binding_app(&["in"]).await;
    let plugd = start_plugd(config(&dirs, Some((&app, AppProtocol::Grpc))))
        .await
        .expect("plugd");
    let sink = next_sink(&mut sinks).await;
    let held = hold(&app, &sink).await;
    plugd.shutdown.cancel();
    expect_closed(&sink).await;
    app.log.release.cancel();
    assert_eq!(held.await.expect("join").expect("held reply"), b"released");
    tokio::time::timeout(WAIT, sink.closed())
        .await
        .expect("the stream closes once the in-flight event is answered");
    plugd.stop().await;
    stop.cancel();
}
