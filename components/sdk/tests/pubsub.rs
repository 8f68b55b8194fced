//! The pub/sub adapter on a real server over a temporary Unix socket, driven
//! by the generated tonic client the way a host drives it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use plugd_component_sdk::proto::pub_sub_client::PubSubClient;
use plugd_component_sdk::proto::{self as pb};
use plugd_component_sdk::pubsub::{
    DeliveryError, Message, Metadata, Properties, PubSub, PubSubError, PublishRequest, Subscriber,
};
use plugd_component_sdk::{BoundServer, ComponentServer, INSTANCE_HEADER, ServeError};
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

/// What the test broker reports to the test.
#[derive(Debug)]
enum Event {
    Published(PublishRequest),
    Subscribed(Subscriber),
    /// `subscribe` returned for this topic.
    Ended(String),
}

/// A broker that hands each subscription to the test and reports what happens.
/// Topic `fail` makes `subscribe` fail at once; topic `finish` makes it return
/// `Ok` at once.
struct Broker<const BULK: bool> {
    instance: String,
    events: mpsc::UnboundedSender<Event>,
}

impl<const BULK: bool> PubSub for Broker<BULK> {
    const BULK_PUBLISH: bool = BULK;

    async fn init(&self, properties: Properties) -> Result<(), PubSubError> {
        match properties.get("fail") {
            Some(reason) => Err(PubSubError::InvalidArgument(reason.clone())),
            None => Ok(()),
        }
    }

    async fn publish(&self, mut request: PublishRequest) -> Result<(), PubSubError> {
        request
            .metadata
            .insert("instance".to_owned(), self.instance.clone());
        let _ = self.events.send(Event::Published(request));
        Ok(())
    }

    async fn subscribe(&self, subscriber: Subscriber) -> Result<(), PubSubError> {
        let topic = subscriber.topic().name.clone();
        match topic.as_str() {
            "fail" => return Err(PubSubError::Unavailable("broker down".to_owned())),
            "finish" => return Ok(()),
            _ => {}
        }
        let _ = self.events.send(Event::Subscribed(subscriber.clone()));
        subscriber.closed().await;
        let _ = self.events.send(Event::Ended(topic));
        Ok(())
    }
}

struct Running {
    socket: PathBuf,
    stop: CancellationToken,
    task: JoinHandle<Result<(), ServeError>>,
    events: mpsc::UnboundedReceiver<Event>,
    _dir: tempfile::TempDir,
}

impl Running {
    async fn next_event(&mut self) -> Event {
        within("a broker event", self.events.recv())
            .await
            .expect("the broker is alive")
    }

    async fn subscribed(&mut self) -> Subscriber {
        match self.next_event().await {
            Event::Subscribed(subscriber) => subscriber,
            other => panic!("expected a subscription, got {other:?}"),
        }
    }

    async fn ended(&mut self) -> String {
        match self.next_event().await {
            Event::Ended(topic) => topic,
            other => panic!("expected the end of a subscription, got {other:?}"),
        }
    }

    async fn client(&self) -> PubSubClient<Channel> {
        PubSubClient::new(dial(&self.socket).await)
    }

    async fn shutdown(self) {
        self.stop.cancel();
        within("the server to stop", self.task)
            .await
            .expect("server task")
            .expect("server stopped cleanly");
    }
}

/// Binds first (so the socket exists), then spawns the server.
fn start<const BULK: bool>() -> Running {
    start_with_grace::<BULK>(Duration::from_secs(2))
}

fn start_with_grace<const BULK: bool>(grace: Duration) -> Running {
    let dir = tempfile::tempdir().expect("tempdir");
    let (events, receiver) = mpsc::unbounded_channel();
    let bound: BoundServer = ComponentServer::new("broker")
        .socket_folder(dir.path())
        .shutdown_grace(grace)
        .pubsub(move |instance: &str| Broker::<BULK> {
            instance: instance.to_owned(),
            events: events.clone(),
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
        events: receiver,
        _dir: dir,
    }
}

async fn dial(socket: &Path) -> Channel {
    plugd_component_sdk::client::connect(socket)
        .await
        .expect("connect over UDS")
}

fn topic(name: &str) -> pb::PullMessagesRequest {
    pb::PullMessagesRequest {
        topic: Some(pb::Topic {
            name: name.to_owned(),
            metadata: [("rawPayload".to_owned(), "true".to_owned())].into(),
        }),
        ..Default::default()
    }
}

fn ack(id: &str) -> pb::PullMessagesRequest {
    pb::PullMessagesRequest {
        ack_message_id: id.to_owned(),
        ..Default::default()
    }
}

fn nack(id: &str, error: &str) -> pb::PullMessagesRequest {
    pb::PullMessagesRequest {
        ack_message_id: id.to_owned(),
        ack_error: Some(pb::AckMessageError {
            message: error.to_owned(),
        }),
        ..Default::default()
    }
}

/// The host side of one PullMessages stream.
struct Stream {
    requests: mpsc::Sender<pb::PullMessagesRequest>,
    responses: Streaming<pb::PullMessagesResponse>,
}

impl Stream {
    /// Opens a stream and sends `first`.
    async fn open(
        client: &mut PubSubClient<Channel>,
        first: pb::PullMessagesRequest,
    ) -> Result<Self, tonic::Status> {
        let (requests, receiver) = mpsc::channel(16);
        requests.send(first).await.expect("queue the first request");
        let responses = within(
            "the stream to open",
            client.pull_messages(ReceiverStream::new(receiver)),
        )
        .await?
        .into_inner();
        Ok(Self {
            requests,
            responses,
        })
    }

    async fn send(&self, request: pb::PullMessagesRequest) {
        self.requests.send(request).await.expect("send to server");
    }

    async fn next(&mut self) -> pb::PullMessagesResponse {
        within("a message", self.responses.message())
            .await
            .expect("stream healthy")
            .expect("a message, not the end")
    }
}

fn message(data: &str) -> Message {
    Message {
        data: data.as_bytes().to_vec(),
        topic: String::new(),
        metadata: Metadata::from([("m".to_owned(), "1".to_owned())]),
        content_type: Some("text/plain".to_owned()),
    }
}

fn deliver(subscriber: &Subscriber, data: &str) -> JoinHandle<Result<(), DeliveryError>> {
    let subscriber = subscriber.clone();
    let message = message(data);
    tokio::spawn(async move { subscriber.deliver(message).await })
}

#[tokio::test]
async fn the_first_message_must_name_the_topic() {
    let running = start::<false>();
    let mut client = running.client().await;

    let status = Stream::open(&mut client, ack("x"))
        .await
        .err()
        .expect("refused without a topic");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");

    let status = Stream::open(&mut client, topic(""))
        .await
        .err()
        .expect("refused with an empty topic name");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");

    // A stream that ends before its first message.
    let (requests, receiver) = mpsc::channel::<pb::PullMessagesRequest>(1);
    drop(requests);
    let status = within(
        "the refusal",
        client.pull_messages(ReceiverStream::new(receiver)),
    )
    .await
    .expect_err("refused without any message");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");

    running.shutdown().await;
}

#[tokio::test]
async fn acks_and_nacks_resolve_the_matching_delivery() {
    let mut running = start::<false>();
    let mut client = running.client().await;
    let mut stream = Stream::open(&mut client, topic("orders"))
        .await
        .expect("open");
    let subscriber = running.subscribed().await;
    assert_eq!(subscriber.topic().name, "orders");
    assert_eq!(subscriber.topic().metadata["rawPayload"], "true");

    // Ack.
    let delivery = deliver(&subscriber, "one");
    let sent = stream.next().await;
    assert_eq!(sent.data, b"one");
    assert_eq!(sent.topic_name, "orders");
    assert_eq!(sent.content_type, "text/plain");
    assert_eq!(sent.metadata["m"], "1");
    assert!(uuid::Uuid::try_parse(&sent.id).is_ok(), "id {:?}", sent.id);
    stream.send(ack(&sent.id)).await;
    within("the delivery", delivery)
        .await
        .expect("task")
        .expect("acked");

    // Nack, with an unknown id answered first (ignored).
    let delivery = deliver(&subscriber, "two");
    let sent = stream.next().await;
    stream.send(ack("not-a-message-of-ours")).await;
    stream.send(nack(&sent.id, "the app returned 500")).await;
    match within("the delivery", delivery).await.expect("task") {
        Err(DeliveryError::Nacked(text)) => assert_eq!(text, "the app returned 500"),
        other => panic!("expected a nack, got {other:?}"),
    }

    // Several in flight, answered out of order.
    let first = deliver(&subscriber, "a");
    let a = stream.next().await;
    let second = deliver(&subscriber, "b");
    let b = stream.next().await;
    stream.send(nack(&b.id, "")).await;
    stream.send(ack(&a.id)).await;
    within("delivery a", first)
        .await
        .expect("task")
        .expect("a acked");
    assert!(matches!(
        within("delivery b", second).await.expect("task"),
        Err(DeliveryError::Nacked(text)) if text.is_empty()
    ));
    assert!(!subscriber.is_closed());

    drop(stream);
    assert_eq!(running.ended().await, "orders");
    running.shutdown().await;
}

#[tokio::test]
async fn closing_the_host_side_resolves_pending_deliveries_to_closed() {
    let mut running = start::<false>();
    let mut client = running.client().await;
    let mut stream = Stream::open(&mut client, topic("orders"))
        .await
        .expect("open");
    let subscriber = running.subscribed().await;

    let delivery = deliver(&subscriber, "unanswered");
    let sent = stream.next().await;
    assert_eq!(sent.data, b"unanswered");

    // The host half-closes without answering (daprd's CloseSend).
    let Stream {
        requests,
        mut responses,
    } = stream;
    drop(requests);
    assert!(matches!(
        within("the delivery", delivery).await.expect("task"),
        Err(DeliveryError::Closed)
    ));
    within("closed()", subscriber.closed()).await;
    assert!(subscriber.is_closed());
    assert_eq!(running.ended().await, "orders");
    // The component's side ends cleanly too.
    let end = within("the end of the stream", responses.message()).await;
    assert!(matches!(end, Ok(None)), "{end:?}");
    // Later deliveries fail at once.
    assert!(matches!(
        subscriber.deliver(message("late")).await,
        Err(DeliveryError::Closed)
    ));

    running.shutdown().await;
}

#[tokio::test]
async fn a_dropped_stream_closes_the_subscription() {
    let mut running = start::<false>();
    let mut client = running.client().await;
    let mut stream = Stream::open(&mut client, topic("orders"))
        .await
        .expect("open");
    let subscriber = running.subscribed().await;
    let delivery = deliver(&subscriber, "unanswered");
    let _ = stream.next().await;

    // The host cancels the call (both directions at once).
    drop(stream);
    assert!(matches!(
        within("the delivery", delivery).await.expect("task"),
        Err(DeliveryError::Closed)
    ));
    assert_eq!(running.ended().await, "orders");
    running.shutdown().await;
}

#[tokio::test]
async fn subscribe_returning_ends_the_stream() {
    let running = start::<false>();
    let mut client = running.client().await;

    let mut stream = Stream::open(&mut client, topic("finish"))
        .await
        .expect("open");
    let end = within("the end of the stream", stream.responses.message()).await;
    assert!(matches!(end, Ok(None)), "{end:?}");

    let mut stream = Stream::open(&mut client, topic("fail"))
        .await
        .expect("open");
    let status = within("the end of the stream", stream.responses.message())
        .await
        .expect_err("the subscription failed");
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(status.message(), "broker down");

    running.shutdown().await;
}

#[tokio::test]
async fn several_streams_are_independent() {
    let mut running = start::<false>();
    let mut client = running.client().await;
    let mut orders = Stream::open(&mut client, topic("orders"))
        .await
        .expect("open");
    let orders_sub = running.subscribed().await;
    let mut audit = Stream::open(&mut client, topic("audit"))
        .await
        .expect("open");
    let audit_sub = running.subscribed().await;
    assert_eq!(audit_sub.topic().name, "audit");

    let to_orders = deliver(&orders_sub, "o");
    let to_audit = deliver(&audit_sub, "a");
    let o = orders.next().await;
    let a = audit.next().await;
    assert_eq!(
        (o.data.as_slice(), a.data.as_slice()),
        (&b"o"[..], &b"a"[..])
    );
    // An answer on the wrong stream does not resolve the other stream's delivery.
    audit.send(ack(&o.id)).await;
    audit.send(ack(&a.id)).await;
    within("audit delivery", to_audit)
        .await
        .expect("task")
        .expect("acked");
    drop(orders);
    assert!(matches!(
        within("orders delivery", to_orders).await.expect("task"),
        Err(DeliveryError::Closed)
    ));
    assert_eq!(running.ended().await, "orders");
    assert!(!audit_sub.is_closed());

    drop(audit);
    assert_eq!(running.ended().await, "audit");
    running.shutdown().await;
}

#[tokio::test]
async fn unary_calls_features_and_errors() {
    async fn features<const BULK: bool>() -> Vec<String> {
        let running = start::<BULK>();
        let mut client = running.client().await;
        let features = client
            .features(pb::FeaturesRequest {})
            .await
            .expect("features")
            .into_inner()
            .features;
        running.shutdown().await;
        features
    }
    assert!(features::<false>().await.is_empty());
    assert_eq!(features::<true>().await, ["BULK_PUBSUB"]);

    let mut running = start::<true>();
    let mut client = running.client().await;
    let init = |properties: &[(&str, &str)]| pb::PubSubInitRequest {
        metadata: Some(pb::MetadataRequest {
            properties: properties
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }),
    };
    client.init(init(&[])).await.expect("init");
    let status = client
        .init(init(&[("fail", "bad metadata")]))
        .await
        .expect_err("init refused");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(status.message(), "bad metadata");

    client.ping(pb::PingRequest {}).await.expect("ping");
    let status = client
        .pause(pb::PauseRequest {})
        .await
        .expect_err("pause is not implemented");
    assert_eq!(status.code(), Code::Unimplemented);
    let status = client
        .resume(pb::ResumeRequest {})
        .await
        .expect_err("resume is not implemented");
    assert_eq!(status.code(), Code::Unimplemented);

    let mut publish = Request::new(pb::PublishRequest {
        data: b"hello".to_vec(),
        pubsub_name: "pubsub".into(),
        topic: "orders".into(),
        metadata: Metadata::new(),
        content_type: String::new(),
    });
    publish
        .metadata_mut()
        .insert(INSTANCE_HEADER, "mypubsub".parse().expect("ascii"));
    client.publish(publish).await.expect("publish");
    match running.next_event().await {
        Event::Published(request) => {
            assert_eq!(request.data, b"hello");
            assert_eq!(request.pubsub_name, "pubsub");
            assert_eq!(request.topic, "orders");
            assert_eq!(request.content_type, None);
            assert_eq!(request.metadata["instance"], "mypubsub");
        }
        other => panic!("expected a publish, got {other:?}"),
    }

    // The default bulk publish goes through publish, entry by entry.
    let response = client
        .bulk_publish(pb::BulkPublishRequest {
            entries: vec![pb::BulkMessageEntry {
                entry_id: "e1".into(),
                event: b"bulk".to_vec(),
                content_type: "application/json".into(),
                metadata: Metadata::new(),
            }],
            pubsub_name: "pubsub".into(),
            topic: "orders".into(),
            metadata: Metadata::new(),
        })
        .await
        .expect("bulk publish")
        .into_inner();
    assert!(response.failed_entries.is_empty());
    match running.next_event().await {
        Event::Published(request) => {
            assert_eq!(request.data, b"bulk");
            assert_eq!(request.content_type.as_deref(), Some("application/json"));
        }
        other => panic!("expected a publish, got {other:?}"),
    }

    running.shutdown().await;
}

#[tokio::test]
async fn server_shutdown_closes_open_subscriptions_at_once() {
    // A grace far longer than the test's limit: the server only stops in time if the open
    // stream is closed by the shutdown itself.
    let mut running = start_with_grace::<false>(Duration::from_secs(3600));
    let mut client = running.client().await;
    let mut stream = Stream::open(&mut client, topic("orders"))
        .await
        .expect("open");
    let subscriber = running.subscribed().await;
    let delivery = deliver(&subscriber, "in flight");
    assert_eq!(stream.next().await.data, b"in flight");

    running.stop.cancel();
    assert!(matches!(
        within("the delivery", delivery).await.expect("task"),
        Err(DeliveryError::Closed)
    ));
    assert_eq!(running.ended().await, "orders");
    within("the server to stop", running.task)
        .await
        .expect("server task")
        .expect("server stopped cleanly");
}
