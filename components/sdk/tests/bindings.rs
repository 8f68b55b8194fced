//! The output and input binding adapters on a real server over a temporary
//! Unix socket, driven by the generated tonic clients the way a host drives
//! them.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use plugd_component_sdk::bindings::{
    BindingError, Event, EventError, EventSink, InputBinding, InvokeRequest, InvokeResponse,
    Metadata, OutputBinding, Properties, operation,
};
use plugd_component_sdk::proto::input_binding_client::InputBindingClient;
use plugd_component_sdk::proto::output_binding_client::OutputBindingClient;
use plugd_component_sdk::proto::{self as pb};
use plugd_component_sdk::{BoundServer, ComponentServer, DEFAULT_INSTANCE, ServeError};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic::{Code, Request, Streaming};

/// Bound on every wait in these tests.
const LIMIT: Duration = Duration::from_secs(10);

async fn within<F: std::future::IntoFuture>(what: &str, future: F) -> F::Output {
    tokio::time::timeout(LIMIT, future)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

// ---- output binding ----

/// Files in memory, named by the `fileName` metadata. Counts invocations.
struct Files {
    instance: String,
    files: Mutex<HashMap<String, Vec<u8>>>,
    invocations: Arc<AtomicUsize>,
}

impl Files {
    fn files(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<u8>>> {
        self.files.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl OutputBinding for Files {
    async fn init(&self, properties: Properties) -> Result<(), BindingError> {
        match properties.get("fail") {
            Some(reason) => Err(BindingError::InvalidArgument(reason.clone())),
            None => Ok(()),
        }
    }

    fn operations(&self) -> Vec<String> {
        [operation::CREATE, operation::GET, operation::DELETE]
            .map(str::to_owned)
            .into()
    }

    async fn invoke(&self, request: InvokeRequest) -> Result<InvokeResponse, BindingError> {
        self.invocations.fetch_add(1, Ordering::SeqCst);
        let name = request
            .metadata
            .get("fileName")
            .cloned()
            .ok_or_else(|| BindingError::InvalidArgument("fileName is required".to_owned()))?;
        let metadata = Metadata::from([("instance".to_owned(), self.instance.clone())]);
        match request.operation.as_str() {
            operation::CREATE => {
                self.files().insert(name, request.data);
                Ok(InvokeResponse {
                    metadata,
                    ..InvokeResponse::default()
                })
            }
            operation::GET => match self.files().get(&name) {
                Some(data) => Ok(InvokeResponse {
                    data: data.clone(),
                    metadata,
                    content_type: Some("text/plain".to_owned()),
                }),
                None => Err(BindingError::NotFound(format!("no file {name}"))),
            },
            operation::DELETE => {
                self.files().remove(&name);
                Ok(InvokeResponse::default())
            }
            other => Err(BindingError::Internal(format!(
                "the SDK let {other:?} through"
            ))),
        }
    }
}

fn files(invocations: &Arc<AtomicUsize>) -> impl Fn(&str) -> Files + Send + Sync + 'static {
    let invocations = Arc::clone(invocations);
    move |instance: &str| Files {
        instance: instance.to_owned(),
        files: Mutex::new(HashMap::new()),
        invocations: Arc::clone(&invocations),
    }
}

// ---- input binding ----

/// What the test source reports to the test.
#[derive(Debug)]
enum Report {
    /// `read` started on a stream.
    Reading(EventSink),
    /// `read` returned for this instance.
    Ended(String),
}

/// A source that hands each stream's sink to the test and reports when its
/// `read` ends. Instance `fail` makes `read` fail at once; `finish` makes it
/// return `Ok` at once.
struct Source {
    reports: mpsc::UnboundedSender<Report>,
}

impl InputBinding for Source {
    async fn init(&self, properties: Properties) -> Result<(), BindingError> {
        match properties.get("fail") {
            Some(reason) => Err(BindingError::InvalidArgument(reason.clone())),
            None => Ok(()),
        }
    }

    async fn read(&self, events: EventSink) -> Result<(), BindingError> {
        let instance = events.instance().to_owned();
        match instance.as_str() {
            "fail" => return Err(BindingError::Unavailable("source down".to_owned())),
            "finish" => return Ok(()),
            _ => {}
        }
        let _ = self.reports.send(Report::Reading(events.clone()));
        events.closed().await;
        let _ = self.reports.send(Report::Ended(instance));
        Ok(())
    }
}

// ---- server and host side ----

struct Running {
    socket: PathBuf,
    stop: CancellationToken,
    task: JoinHandle<Result<(), ServeError>>,
    reports: mpsc::UnboundedReceiver<Report>,
    _dir: tempfile::TempDir,
}

impl Running {
    async fn channel(&self) -> Channel {
        within(
            "the connection",
            plugd_component_sdk::client::connect(&self.socket),
        )
        .await
        .expect("connect over UDS")
    }

    async fn next_report(&mut self) -> Report {
        within("a source report", self.reports.recv())
            .await
            .expect("the source is alive")
    }

    async fn reading(&mut self) -> EventSink {
        match self.next_report().await {
            Report::Reading(sink) => sink,
            other => panic!("expected a read to start, got {other:?}"),
        }
    }

    async fn ended(&mut self) -> String {
        match self.next_report().await {
            Report::Ended(instance) => instance,
            other => panic!("expected a read to end, got {other:?}"),
        }
    }

    async fn shutdown(self) {
        self.stop.cancel();
        within("the server to stop", self.task)
            .await
            .expect("server task")
            .expect("server stopped cleanly");
        assert!(!self.socket.exists(), "socket not removed on shutdown");
    }
}

/// Binds first (so the socket exists), then spawns a server with both an
/// output binding (`Files`) and an input binding (`Source`).
fn start(invocations: &Arc<AtomicUsize>, grace: Duration) -> Running {
    let dir = tempfile::tempdir().expect("tempdir");
    let (reports, receiver) = mpsc::unbounded_channel();
    let bound: BoundServer = ComponentServer::new("bindings")
        .socket_folder(dir.path())
        .shutdown_grace(grace)
        .output_binding(files(invocations))
        .input_binding(move |_instance: &str| Source {
            reports: reports.clone(),
        })
        .bind()
        .expect("bind");
    let socket = bound.socket_path().to_owned();
    let stop = CancellationToken::new();
    let task = tokio::spawn(bound.serve_with_shutdown(stop.clone().cancelled_owned()));
    Running {
        socket,
        stop,
        task,
        reports: receiver,
        _dir: dir,
    }
}

fn start_default() -> Running {
    start(&Arc::new(AtomicUsize::new(0)), Duration::from_secs(2))
}

fn for_instance<T>(instance: Option<&str>, message: T) -> Request<T> {
    match instance {
        Some(instance) => {
            plugd_component_sdk::client::for_instance(instance, message).expect("ascii")
        }
        None => Request::new(message),
    }
}

/// The host side of one Read stream.
struct ReadStream {
    requests: mpsc::Sender<pb::ReadRequest>,
    responses: Streaming<pb::ReadResponse>,
}

impl ReadStream {
    async fn open(channel: &Channel, instance: Option<&str>) -> Result<Self, tonic::Status> {
        let (requests, receiver) = mpsc::channel(16);
        let mut client = InputBindingClient::new(channel.clone());
        let responses = within(
            "the stream to open",
            client.read(for_instance(instance, ReceiverStream::new(receiver))),
        )
        .await?
        .into_inner();
        Ok(Self {
            requests,
            responses,
        })
    }

    async fn next(&mut self) -> pb::ReadResponse {
        within("an event", self.responses.message())
            .await
            .expect("stream healthy")
            .expect("an event, not the end")
    }

    async fn reply(&self, id: &str, data: &[u8]) {
        self.send(pb::ReadRequest {
            response_data: data.to_vec(),
            message_id: id.to_owned(),
            response_error: None,
        })
        .await;
    }

    async fn fail(&self, id: &str, error: &str) {
        self.send(pb::ReadRequest {
            response_data: Vec::new(),
            message_id: id.to_owned(),
            response_error: Some(pb::AckResponseError {
                message: error.to_owned(),
            }),
        })
        .await;
    }

    async fn send(&self, request: pb::ReadRequest) {
        self.requests.send(request).await.expect("send to server");
    }
}

fn event(data: &str) -> Event {
    Event {
        data: data.as_bytes().to_vec(),
        metadata: Metadata::from([("schedule".to_owned(), "@every 1s".to_owned())]),
        content_type: Some("text/plain".to_owned()),
    }
}

fn send(sink: &EventSink, data: &str) -> JoinHandle<Result<Vec<u8>, EventError>> {
    let sink = sink.clone();
    let event = event(data);
    tokio::spawn(async move { sink.send(event).await })
}

async fn list_services(channel: Channel) -> Vec<String> {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = within(
        "reflection",
        ServerReflectionClient::new(channel).server_reflection_info(tokio_stream::iter([request])),
    )
    .await
    .expect("v1 reflection")
    .into_inner();
    let response = within("the reflection answer", stream.message())
        .await
        .expect("v1 response")
        .expect("one message");
    match response.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => {
            let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
            names.sort();
            names
        }
        other => panic!("unexpected v1 response {other:?}"),
    }
}

// ---- output binding tests ----

fn invoke(operation: &str, file: &str, data: &str) -> pb::InvokeRequest {
    pb::InvokeRequest {
        data: data.as_bytes().to_vec(),
        metadata: HashMap::from([("fileName".to_owned(), file.to_owned())]),
        operation: operation.to_owned(),
    }
}

#[tokio::test]
async fn both_binding_services_are_listed() {
    let running = start_default();
    assert_eq!(
        list_services(running.channel().await).await,
        [
            "dapr.proto.components.v1.InputBinding",
            "dapr.proto.components.v1.OutputBinding"
        ]
    );
    running.shutdown().await;
}

#[tokio::test]
async fn output_invoke_list_operations_and_errors() {
    let invocations = Arc::new(AtomicUsize::new(0));
    let running = start(&invocations, Duration::from_secs(2));
    let mut client = OutputBindingClient::new(running.channel().await);

    let operations = client
        .list_operations(pb::ListOperationsRequest {})
        .await
        .expect("list operations")
        .into_inner()
        .operations;
    assert_eq!(operations, ["create", "get", "delete"]);

    let init = |properties: &[(&str, &str)]| pb::OutputBindingInitRequest {
        metadata: Some(pb::MetadataRequest {
            properties: properties
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }),
    };
    client.init(init(&[])).await.expect("init");
    let status = client
        .init(init(&[("fail", "rootPath is required")]))
        .await
        .expect_err("init refused");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(status.message(), "rootPath is required");
    client.ping(pb::PingRequest {}).await.expect("ping");

    let created = client
        .invoke(invoke("create", "a.txt", "hello"))
        .await
        .expect("create")
        .into_inner();
    assert!(created.data.is_empty());
    assert_eq!(created.content_type, "");
    assert_eq!(created.metadata["instance"], DEFAULT_INSTANCE);

    let read = client
        .invoke(invoke("get", "a.txt", ""))
        .await
        .expect("get")
        .into_inner();
    assert_eq!(read.data, b"hello");
    assert_eq!(read.content_type, "text/plain");

    let status = client
        .invoke(invoke("get", "missing.txt", ""))
        .await
        .expect_err("missing file");
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(status.message(), "no file missing.txt");
    assert_eq!(invocations.load(Ordering::SeqCst), 3);

    // Operations not listed are refused before the binding sees them.
    for unknown in ["drop", "", "CREATE"] {
        let status = client
            .invoke(invoke(unknown, "a.txt", ""))
            .await
            .expect_err("unknown operation");
        assert_eq!(status.code(), Code::InvalidArgument, "{unknown:?}");
        assert_eq!(
            status.message(),
            format!("unsupported operation {unknown:?}; supported: create, get, delete")
        );
    }
    assert_eq!(invocations.load(Ordering::SeqCst), 3);

    running.shutdown().await;
}

#[tokio::test]
async fn output_instances_are_independent_per_header() {
    let running = start_default();
    let mut client = OutputBindingClient::new(running.channel().await);
    client
        .invoke(for_instance(Some("left"), invoke("create", "f", "L")))
        .await
        .expect("create on left");

    let on_left = client
        .invoke(for_instance(Some("left"), invoke("get", "f", "")))
        .await
        .expect("get on left")
        .into_inner();
    assert_eq!(on_left.data, b"L");
    assert_eq!(on_left.metadata["instance"], "left");

    let status = client
        .invoke(for_instance(Some("right"), invoke("get", "f", "")))
        .await
        .expect_err("right has its own files");
    assert_eq!(status.code(), Code::NotFound);

    running.shutdown().await;
}

// ---- input binding tests ----

#[tokio::test]
async fn events_are_delivered_and_replies_routed_by_id() {
    let mut running = start_default();
    let channel = running.channel().await;
    let mut client = InputBindingClient::new(channel.clone());
    client
        .init(pb::InputBindingInitRequest::default())
        .await
        .expect("init");
    client.ping(pb::PingRequest {}).await.expect("ping");

    let mut stream = ReadStream::open(&channel, None).await.expect("open");
    let sink = running.reading().await;
    assert_eq!(sink.instance(), DEFAULT_INSTANCE);

    // Three events in flight at once.
    let a = send(&sink, "a");
    let b = send(&sink, "b");
    let c = send(&sink, "c");
    let mut ids = HashMap::new();
    for _ in 0..3 {
        let sent = stream.next().await;
        assert_eq!(sent.content_type, "text/plain");
        assert_eq!(sent.metadata["schedule"], "@every 1s");
        assert!(
            uuid::Uuid::try_parse(&sent.message_id).is_ok(),
            "id {:?}",
            sent.message_id
        );
        let data = String::from_utf8(sent.data).expect("utf-8");
        ids.insert(data, sent.message_id);
    }
    assert_eq!(ids.len(), 3);
    let mut unique: Vec<&String> = ids.values().collect();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 3, "message ids are unique");

    // Replies out of order, one failed, with noise in between.
    stream.reply("not-an-id-of-ours", b"ignored").await;
    stream.reply(&ids["c"], b"reply to c").await;
    stream.fail(&ids["a"], "the app returned 500").await;
    stream.reply("", b"ignored").await;
    stream.reply(&ids["b"], b"").await;
    assert_eq!(
        within("c", c).await.expect("task"),
        Ok(b"reply to c".to_vec())
    );
    assert_eq!(
        within("a", a).await.expect("task"),
        Err(EventError::Failed("the app returned 500".to_owned()))
    );
    assert_eq!(within("b", b).await.expect("task"), Ok(Vec::new()));
    assert!(!sink.is_closed());

    // A reply after the one already routed changes nothing.
    stream.reply(&ids["c"], b"again").await;
    let d = send(&sink, "d");
    let sent = stream.next().await;
    stream.reply(&sent.message_id, b"reply to d").await;
    assert_eq!(
        within("d", d).await.expect("task"),
        Ok(b"reply to d".to_vec())
    );

    drop(stream);
    assert_eq!(running.ended().await, DEFAULT_INSTANCE);
    running.shutdown().await;
}

#[tokio::test]
async fn host_close_resolves_pending_sends_and_a_new_read_starts_afresh() {
    let mut running = start_default();
    let channel = running.channel().await;
    let mut stream = ReadStream::open(&channel, Some("cron"))
        .await
        .expect("open");
    let sink = running.reading().await;
    assert_eq!(sink.instance(), "cron");

    let first = send(&sink, "one");
    let second = send(&sink, "two");
    let _ = stream.next().await;
    let _ = stream.next().await;

    // The host half-closes without replying.
    let ReadStream {
        requests,
        mut responses,
    } = stream;
    drop(requests);
    assert_eq!(
        within("first", first).await.expect("task"),
        Err(EventError::Closed)
    );
    assert_eq!(
        within("second", second).await.expect("task"),
        Err(EventError::Closed)
    );
    within("closed()", sink.closed()).await;
    assert_eq!(running.ended().await, "cron");
    let end = within("the end of the stream", responses.message()).await;
    assert!(matches!(end, Ok(None)), "{end:?}");
    assert_eq!(sink.send(event("late")).await, Err(EventError::Closed));

    // The host reconnects: a new read with a new sink.
    let mut stream = ReadStream::open(&channel, Some("cron"))
        .await
        .expect("reopen");
    let fresh = running.reading().await;
    assert!(!fresh.is_closed());
    let third = send(&fresh, "three");
    let sent = stream.next().await;
    assert_eq!(sent.data, b"three");
    stream.reply(&sent.message_id, b"ok").await;
    assert_eq!(
        within("third", third).await.expect("task"),
        Ok(b"ok".to_vec())
    );

    // The host cancels the call (both directions at once).
    let pending = send(&fresh, "four");
    let _ = stream.next().await;
    drop(stream);
    assert_eq!(
        within("pending", pending).await.expect("task"),
        Err(EventError::Closed)
    );
    assert_eq!(running.ended().await, "cron");

    running.shutdown().await;
}

#[tokio::test]
async fn a_second_read_replaces_the_first() {
    let mut running = start_default();
    let channel = running.channel().await;
    let mut old = ReadStream::open(&channel, Some("cron"))
        .await
        .expect("open");
    let old_sink = running.reading().await;
    let pending = send(&old_sink, "unanswered");
    let sent = old.next().await;

    let mut new = ReadStream::open(&channel, Some("cron"))
        .await
        .expect("open again");
    assert_eq!(
        within("the old send", pending).await.expect("task"),
        Err(EventError::Closed)
    );
    // The old read ends before the new one starts.
    assert_eq!(running.ended().await, "cron");
    let new_sink = running.reading().await;
    assert!(old_sink.is_closed());
    assert!(!new_sink.is_closed());

    let status = within("the end of the old stream", old.responses.message())
        .await
        .expect_err("the old stream is aborted");
    assert_eq!(status.code(), Code::Aborted, "{status:?}");
    // A reply to the old stream's event is not taken by the new stream.
    new.reply(&sent.message_id, b"late").await;

    let event = send(&new_sink, "fresh");
    let sent = new.next().await;
    assert_eq!(sent.data, b"fresh");
    new.reply(&sent.message_id, b"ok").await;
    assert_eq!(
        within("the new send", event).await.expect("task"),
        Ok(b"ok".to_vec())
    );

    drop(new);
    assert_eq!(running.ended().await, "cron");
    running.shutdown().await;
}

#[tokio::test]
async fn read_instances_are_independent_per_header() {
    let mut running = start_default();
    let channel = running.channel().await;
    let mut left = ReadStream::open(&channel, Some("left"))
        .await
        .expect("open");
    let first = running.reading().await;
    let mut right = ReadStream::open(&channel, Some("right"))
        .await
        .expect("open");
    let second = running.reading().await;
    let (left_sink, right_sink) = if first.instance() == "left" {
        (first, second)
    } else {
        (second, first)
    };
    assert_eq!(left_sink.instance(), "left");
    assert_eq!(right_sink.instance(), "right");

    let to_left = send(&left_sink, "l");
    let to_right = send(&right_sink, "r");
    let l = left.next().await;
    let r = right.next().await;
    assert_eq!(
        (l.data.as_slice(), r.data.as_slice()),
        (&b"l"[..], &b"r"[..])
    );

    // A reply on the wrong stream does not resolve the other stream's event.
    right.reply(&l.message_id, b"wrong stream").await;
    right.reply(&r.message_id, b"right").await;
    assert_eq!(
        within("right", to_right).await.expect("task"),
        Ok(b"right".to_vec())
    );
    drop(left);
    assert_eq!(
        within("left", to_left).await.expect("task"),
        Err(EventError::Closed)
    );
    assert_eq!(running.ended().await, "left");
    assert!(!right_sink.is_closed());

    drop(right);
    assert_eq!(running.ended().await, "right");
    running.shutdown().await;
}

#[tokio::test]
async fn read_returning_ends_the_stream() {
    let running = start_default();
    let channel = running.channel().await;

    let mut stream = ReadStream::open(&channel, Some("finish"))
        .await
        .expect("open");
    let end = within("the end of the stream", stream.responses.message()).await;
    assert!(matches!(end, Ok(None)), "{end:?}");

    let mut stream = ReadStream::open(&channel, Some("fail"))
        .await
        .expect("open");
    let status = within("the end of the stream", stream.responses.message())
        .await
        .expect_err("read failed");
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(status.message(), "source down");

    running.shutdown().await;
}

#[tokio::test]
async fn server_shutdown_closes_open_reads_at_once() {
    // A grace far longer than the test's limit: the server only stops in time
    // if the open stream is closed by the shutdown itself.
    let mut running = start(&Arc::new(AtomicUsize::new(0)), Duration::from_secs(3600));
    let channel = running.channel().await;
    let mut stream = ReadStream::open(&channel, None).await.expect("open");
    let sink = running.reading().await;
    let pending = send(&sink, "in flight");
    assert_eq!(stream.next().await.data, b"in flight");

    running.stop.cancel();
    assert_eq!(
        within("the send", pending).await.expect("task"),
        Err(EventError::Closed)
    );
    assert_eq!(running.ended().await, DEFAULT_INSTANCE);
    within("the server to stop", running.task)
        .await
        .expect("server task")
        .expect("server stopped cleanly");
}

#[tokio::test]
async fn init_errors_map_to_statuses() {
    let running = start_default();
    let mut client = InputBindingClient::new(running.channel().await);
    let status = client
        .init(for_instance(
            Some("cron"),
            pb::InputBindingInitRequest {
                metadata: Some(pb::MetadataRequest {
                    properties: HashMap::from([("fail".to_owned(), "bad schedule".to_owned())]),
                }),
            },
        ))
        .await
        .expect_err("init refused");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(status.message(), "bad schedule");
    running.shutdown().await;
}
