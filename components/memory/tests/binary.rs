//! Runs the real `plugd-memory` binary as a child process on a temporary
//! socket folder and talks to it over gRPC, the way a host does.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use plugd_component_sdk::INSTANCE_HEADER;
use plugd_component_sdk::proto::pub_sub_client::PubSubClient;
use plugd_component_sdk::proto::state_store_client::StateStoreClient;
use plugd_component_sdk::proto::transactional_state_store_client::TransactionalStateStoreClient;
use plugd_component_sdk::proto::{self as pb};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Request, Streaming};
use tonic_types::StatusExt;

/// Bound on every wait in these tests.
const LIMIT: Duration = Duration::from_secs(10);

async fn within<F: std::future::IntoFuture>(what: &str, future: F) -> F::Output {
    tokio::time::timeout(LIMIT, future)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

struct Component {
    child: Child,
    socket: PathBuf,
}

impl Component {
    async fn start(folder: &Path) -> Self {
        let child = Command::new(env!("CARGO_BIN_EXE_plugd-memory"))
            .arg("--socket-folder")
            .arg(folder)
            // Far longer than LIMIT: a prompt exit shows that open streams
            // are ended at shutdown rather than waited for.
            .args(["--shutdown-grace", "60s"])
            .env("PLUGD_MEMORY_LOG_LEVEL", "warn")
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn plugd-memory");
        let socket = folder.join("memory.sock");
        let deadline = Instant::now() + LIMIT;
        while !socket.exists() {
            assert!(Instant::now() < deadline, "socket never appeared");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Self { child, socket }
    }

    async fn channel(&self) -> Channel {
        plugd_component_sdk::client::connect(&self.socket)
            .await
            .expect("connect")
    }

    /// A pub/sub client for instance `pubsub`, initialised with `properties`.
    async fn pubsub(&self, properties: &[(&str, &str)]) -> PubSubClient<Channel> {
        let mut client = PubSubClient::new(self.channel().await);
        let properties = properties
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        client
            .init(named(pb::PubSubInitRequest {
                metadata: Some(pb::MetadataRequest { properties }),
            }))
            .await
            .expect("pubsub init");
        client
    }

    /// SIGTERM, then wait (bounded) for a clean exit.
    async fn terminate(mut self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
        let deadline = Instant::now() + LIMIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                assert!(status.success(), "exit status {status}");
                break;
            }
            assert!(Instant::now() < deadline, "did not exit after SIGTERM");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!self.socket.exists(), "socket left behind");
    }
}

impl Drop for Component {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn named<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert(INSTANCE_HEADER, "pubsub".parse().expect("ascii"));
    request
}

fn named_store<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert(INSTANCE_HEADER, "statestore".parse().expect("ascii"));
    request
}

async fn publish(client: &mut PubSubClient<Channel>, topic: &str, data: &str) {
    client
        .publish(named(pb::PublishRequest {
            data: data.as_bytes().to_vec(),
            pubsub_name: "pubsub".into(),
            topic: topic.into(),
            metadata: HashMap::from([("traceid".to_owned(), format!("t-{data}"))]),
            content_type: "text/plain".into(),
        }))
        .await
        .expect("publish");
}

/// The host side of one PullMessages stream.
struct Stream {
    requests: mpsc::Sender<pb::PullMessagesRequest>,
    responses: Streaming<pb::PullMessagesResponse>,
}

impl Stream {
    /// Subscribes to `topic`, with `consumerID` in the subscription metadata
    /// when `group` is given.
    async fn open(client: &mut PubSubClient<Channel>, topic: &str, group: Option<&str>) -> Self {
        let (requests, receiver) = mpsc::channel(64);
        let metadata = group
            .map(|group| HashMap::from([("consumerID".to_owned(), group.to_owned())]))
            .unwrap_or_default();
        requests
            .send(pb::PullMessagesRequest {
                topic: Some(pb::Topic {
                    name: topic.to_owned(),
                    metadata,
                }),
                ..Default::default()
            })
            .await
            .expect("queue the topic");
        let responses = within(
            "the stream to open",
            client.pull_messages(named(ReceiverStream::new(receiver))),
        )
        .await
        .expect("open the stream")
        .into_inner();
        Self {
            requests,
            responses,
        }
    }

    async fn next(&mut self) -> pb::PullMessagesResponse {
        within("a message", self.responses.message())
            .await
            .expect("stream healthy")
            .expect("a message, not the end")
    }

    /// The next message if one comes within `wait`.
    async fn try_next(&mut self, wait: Duration) -> Option<pb::PullMessagesResponse> {
        tokio::time::timeout(wait, self.responses.message())
            .await
            .ok()
            .map(|next| {
                next.expect("stream healthy")
                    .expect("a message, not the end")
            })
    }

    /// Half-closes the host side (daprd's CloseSend) and waits for the
    /// component to end the stream: every answer sent before has been read.
    async fn close(self) {
        let Self {
            requests,
            mut responses,
        } = self;
        drop(requests);
        let end = within("the end of the stream", responses.message()).await;
        assert!(matches!(end, Ok(None)), "{end:?}");
    }

    async fn ack(&self, message: &pb::PullMessagesResponse) {
        self.answer(message, None).await;
    }

    async fn nack(&self, message: &pb::PullMessagesResponse, error: &str) {
        self.answer(message, Some(error)).await;
    }

    async fn answer(&self, message: &pb::PullMessagesResponse, error: Option<&str>) {
        self.requests
            .send(pb::PullMessagesRequest {
                topic: None,
                ack_message_id: message.id.clone(),
                ack_error: error.map(|message| pb::AckMessageError {
                    message: message.to_owned(),
                }),
            })
            .await
            .expect("answer");
    }
}

fn text(message: &pb::PullMessagesResponse) -> &str {
    std::str::from_utf8(&message.data).expect("utf-8 payload")
}

#[tokio::test]
async fn publish_pull_ack_and_features() {
    let dir = tempfile::tempdir().expect("tempdir");
    let component = Component::start(dir.path()).await;
    let mut client = component.pubsub(&[]).await;
    client.ping(named(pb::PingRequest {})).await.expect("ping");
    let features = client
        .features(named(pb::FeaturesRequest {}))
        .await
        .expect("features")
        .into_inner()
        .features;
    assert_eq!(features, ["BULK_PUBSUB"]);

    // Published before anyone subscribed: held for the first subscriber.
    publish(&mut client, "orders", "early").await;
    let mut stream = Stream::open(&mut client, "orders", None).await;
    let early = stream.next().await;
    assert_eq!(text(&early), "early");
    assert_eq!(early.topic_name, "orders");
    assert_eq!(early.content_type, "text/plain");
    assert_eq!(early.metadata["traceid"], "t-early");
    assert!(!early.id.is_empty());
    stream.ack(&early).await;

    // An acknowledged message is gone: the next one is the next published.
    publish(&mut client, "orders", "second").await;
    let second = stream.next().await;
    assert_eq!(text(&second), "second");
    assert_ne!(second.id, early.id);
    stream.ack(&second).await;

    // Bulk publish: every entry, in order, with merged metadata.
    let entry = |id: &str| pb::BulkMessageEntry {
        entry_id: id.to_owned(),
        event: format!("bulk-{id}").into_bytes(),
        content_type: "application/json".into(),
        metadata: HashMap::from([("entry".to_owned(), id.to_owned())]),
    };
    let response = client
        .bulk_publish(named(pb::BulkPublishRequest {
            entries: vec![entry("1"), entry("2"), entry("3")],
            pubsub_name: "pubsub".into(),
            topic: "orders".into(),
            metadata: HashMap::from([("batch".to_owned(), "b".to_owned())]),
        }))
        .await
        .expect("bulk publish")
        .into_inner();
    assert!(response.failed_entries.is_empty());
    let mut got = Vec::new();
    for _ in 0..3 {
        let message = stream.next().await;
        assert_eq!(message.metadata["batch"], "b");
        assert_eq!(message.content_type, "application/json");
        got.push(text(&message).to_owned());
        stream.ack(&message).await;
    }
    got.sort();
    assert_eq!(got, ["bulk-1", "bulk-2", "bulk-3"]);

    // A subscription of another topic sees none of this.
    publish(&mut client, "audit", "a1").await;
    let mut audit = Stream::open(&mut client, "audit", None).await;
    assert_eq!(text(&audit.next().await), "a1");

    component.terminate().await;
}

#[tokio::test]
async fn rejected_messages_come_back_first_and_order_is_kept() {
    let dir = tempfile::tempdir().expect("tempdir");
    let component = Component::start(dir.path()).await;
    let delay = Duration::from_millis(200);
    let mut client = component
        .pubsub(&[("maxInFlight", "1"), ("redeliveryDelay", "200ms")])
        .await;
    for n in 1..=4 {
        publish(&mut client, "orders", &format!("m{n}")).await;
    }
    let mut stream = Stream::open(&mut client, "orders", None).await;

    let m1 = stream.next().await;
    assert_eq!(text(&m1), "m1");
    stream.ack(&m1).await;

    let m2 = stream.next().await;
    assert_eq!(text(&m2), "m2");
    let rejected_at = Instant::now();
    stream.nack(&m2, "the app failed").await;
    let again = stream.next().await;
    assert_eq!(
        text(&again),
        "m2",
        "the rejected message is delivered first"
    );
    assert_ne!(again.id, m2.id, "a new delivery has a new id");
    assert!(
        rejected_at.elapsed() >= delay,
        "redelivered after {:?}, before the redeliveryDelay",
        rejected_at.elapsed()
    );
    stream.ack(&again).await;

    for expected in ["m3", "m4"] {
        let message = stream.next().await;
        assert_eq!(text(&message), expected);
        stream.ack(&message).await;
    }
    component.terminate().await;
}

#[tokio::test]
async fn unanswered_messages_go_to_the_next_stream() {
    let dir = tempfile::tempdir().expect("tempdir");
    let component = Component::start(dir.path()).await;
    let mut client = component.pubsub(&[("consumerID", "app")]).await;
    publish(&mut client, "orders", "m1").await;
    publish(&mut client, "orders", "m2").await;

    // The host cancels the stream without answering.
    let mut first = Stream::open(&mut client, "orders", None).await;
    let a = first.next().await;
    let b = first.next().await;
    assert_eq!((text(&a), text(&b)), ("m1", "m2"));
    drop(first);

    // The host half-closes (CloseSend) after acking only m1.
    let mut second = Stream::open(&mut client, "orders", None).await;
    let mut got = [second.next().await, second.next().await];
    got.sort_by(|x, y| x.data.cmp(&y.data));
    assert_eq!((text(&got[0]), text(&got[1])), ("m1", "m2"));
    second.ack(&got[0]).await;
    second.close().await;

    let mut third = Stream::open(&mut client, "orders", None).await;
    let m2 = third.next().await;
    assert_eq!(
        text(&m2),
        "m2",
        "only the unacknowledged message comes back"
    );
    third.ack(&m2).await;
    publish(&mut client, "orders", "m3").await;
    assert_eq!(text(&third.next().await), "m3");

    component.terminate().await;
}

#[tokio::test]
async fn streams_of_one_consumer_group_share_the_messages() {
    let dir = tempfile::tempdir().expect("tempdir");
    let component = Component::start(dir.path()).await;
    let mut client = component
        .pubsub(&[("consumerID", "app"), ("maxInFlight", "1")])
        .await;
    let mut a = Stream::open(&mut client, "orders", None).await;
    let mut b = Stream::open(&mut client, "orders", None).await;
    publish(&mut client, "orders", "m1").await;
    publish(&mut client, "orders", "m2").await;

    // Each stream has room for one message, so each gets one of the two.
    let from_a = a.next().await;
    let from_b = b.next().await;
    let mut got = vec![text(&from_a).to_owned(), text(&from_b).to_owned()];
    got.sort();
    assert_eq!(got, ["m1", "m2"]);
    a.ack(&from_a).await;
    b.ack(&from_b).await;

    // Many messages over both streams: each delivered to exactly one.
    let total = 20;
    for n in 0..total {
        publish(&mut client, "orders", &format!("n{n:02}")).await;
    }
    let mut seen = HashSet::new();
    let mut per_stream = [0, 0];
    while seen.len() < total {
        tokio::select! {
            message = a.next() => {
                assert!(seen.insert(text(&message).to_owned()), "duplicate {}", text(&message));
                per_stream[0] += 1;
                a.ack(&message).await;
            }
            message = b.next() => {
                assert!(seen.insert(text(&message).to_owned()), "duplicate {}", text(&message));
                per_stream[1] += 1;
                b.ack(&message).await;
            }
        }
    }
    assert_eq!(per_stream[0] + per_stream[1], total);

    // Nothing is left over: a new stream's first message is the next published.
    a.close().await;
    b.close().await;
    let mut c = Stream::open(&mut client, "orders", None).await;
    publish(&mut client, "orders", "last").await;
    assert_eq!(text(&c.next().await), "last");

    component.terminate().await;
}

#[tokio::test]
async fn every_consumer_group_gets_every_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let component = Component::start(dir.path()).await;
    let mut client = component.pubsub(&[("consumerID", "default")]).await;

    // g1 is the topic's first group, so the warm-up message reaches it even
    // if it is published before g1's subscription is set up.
    let mut g1 = Stream::open(&mut client, "orders", Some("g1")).await;
    publish(&mut client, "orders", "warm-up").await;
    let warm = g1.next().await;
    assert_eq!(text(&warm), "warm-up");
    g1.ack(&warm).await;

    // g2 only gets what is published after it subscribed: publish warm-ups
    // until one reaches it (bounded).
    let mut g2 = Stream::open(&mut client, "orders", Some("g2")).await;
    let deadline = Instant::now() + LIMIT;
    loop {
        assert!(Instant::now() < deadline, "g2 never received a message");
        publish(&mut client, "orders", "warm-up").await;
        if let Some(message) = g2.try_next(Duration::from_millis(100)).await {
            assert_eq!(text(&message), "warm-up");
            g2.ack(&message).await;
            break;
        }
    }

    for data in ["m1", "m2", "m3"] {
        publish(&mut client, "orders", data).await;
    }
    for stream in [&mut g1, &mut g2] {
        let mut got = Vec::new();
        while got.len() < 3 {
            let message = stream.next().await;
            stream.ack(&message).await;
            if text(&message) != "warm-up" {
                got.push(text(&message).to_owned());
            }
        }
        got.sort();
        assert_eq!(got, ["m1", "m2", "m3"]);
    }
    component.terminate().await;
}

#[tokio::test]
async fn shutdown_ends_open_streams_promptly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let component = Component::start(dir.path()).await;
    let mut client = component.pubsub(&[]).await;
    publish(&mut client, "orders", "unanswered").await;
    let mut stream = Stream::open(&mut client, "orders", None).await;
    assert_eq!(text(&stream.next().await), "unanswered");

    // The grace is 60 s; terminate() allows 10 s, so the open stream must
    // be ended by the component rather than waited for.
    let terminated = tokio::spawn(component.terminate());
    let end = within("the end of the stream", stream.responses.message()).await;
    assert!(matches!(end, Ok(None)), "{end:?}");
    within("the exit", terminated).await.expect("terminate");
}

#[tokio::test]
async fn state_store_with_etags_and_transactions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let component = Component::start(dir.path()).await;
    let channel = component.channel().await;
    let mut client = StateStoreClient::new(channel.clone());

    let status = client
        .get(named_store(pb::GetRequest {
            key: "k".into(),
            ..Default::default()
        }))
        .await
        .expect_err("not initialised");
    assert_eq!(status.code(), Code::FailedPrecondition);

    client
        .init(named_store(pb::InitRequest { metadata: None }))
        .await
        .expect("init");
    let mut features = client
        .features(named_store(pb::FeaturesRequest {}))
        .await
        .expect("features")
        .into_inner()
        .features;
    features.sort();
    assert_eq!(features, ["ETAG", "QUERY_API", "TRANSACTIONAL", "TTL"]);

    let set = |key: &str, value: &str, etag: Option<&str>| pb::SetRequest {
        key: key.to_owned(),
        value: value.as_bytes().to_vec(),
        etag: etag.map(|value| pb::Etag {
            value: value.to_owned(),
        }),
        ..Default::default()
    };
    let get = |key: &str| pb::GetRequest {
        key: key.to_owned(),
        ..Default::default()
    };

    let missing = client
        .get(named_store(get("k")))
        .await
        .expect("get")
        .into_inner();
    assert!(missing.data.is_empty() && missing.etag.is_none());

    client
        .set(named_store(set("k", "v1", None)))
        .await
        .expect("set");
    let got = client
        .get(named_store(get("k")))
        .await
        .expect("get")
        .into_inner();
    assert_eq!(got.data, b"v1");
    let etag = got.etag.expect("etag").value;

    client
        .set(named_store(set("k", "v2", Some(&etag))))
        .await
        .expect("matching etag");
    for stale in [etag.as_str(), "not-an-etag-of-ours"] {
        let status = client
            .set(named_store(set("k", "v3", Some(stale))))
            .await
            .expect_err("stale etag");
        assert_eq!(status.code(), Code::FailedPrecondition);
        let violations = status
            .get_details_bad_request()
            .expect("BadRequest detail")
            .field_violations;
        assert_eq!(violations.len(), 1);
        assert_eq!(violations[0].field, "etag");
    }

    // Instances are separate.
    let mut other = Request::new(get("k"));
    other
        .metadata_mut()
        .insert(INSTANCE_HEADER, "other".parse().expect("ascii"));
    client
        .init({
            let mut init = Request::new(pb::InitRequest { metadata: None });
            init.metadata_mut()
                .insert(INSTANCE_HEADER, "other".parse().expect("ascii"));
            init
        })
        .await
        .expect("init other");
    assert!(
        client
            .get(other)
            .await
            .expect("get")
            .into_inner()
            .data
            .is_empty()
    );

    // Transactions: all or nothing.
    let mut tx = TransactionalStateStoreClient::new(channel);
    let op_set = |key: &str, value: &str, etag: Option<&str>| pb::TransactionalStateOperation {
        request: Some(pb::transactional_state_operation::Request::Set(set(
            key, value, etag,
        ))),
    };
    let status = tx
        .transact(named_store(pb::TransactionalStateRequest {
            operations: vec![
                op_set("a", "1", None),
                op_set("k", "v4", Some(&etag)), // stale
            ],
            metadata: HashMap::new(),
        }))
        .await
        .expect_err("stale etag rolls the transaction back");
    assert_eq!(status.code(), Code::FailedPrecondition);
    let a = client
        .get(named_store(get("a")))
        .await
        .expect("get")
        .into_inner();
    assert!(a.data.is_empty(), "a was written by a failed transaction");

    tx.transact(named_store(pb::TransactionalStateRequest {
        operations: vec![
            op_set("a", "1", None),
            pb::TransactionalStateOperation {
                request: Some(pb::transactional_state_operation::Request::Delete(
                    pb::DeleteRequest {
                        key: "k".into(),
                        ..Default::default()
                    },
                )),
            },
        ],
        metadata: HashMap::new(),
    }))
    .await
    .expect("transaction");
    let a = client
        .get(named_store(get("a")))
        .await
        .expect("get")
        .into_inner();
    assert_eq!(a.data, b"1");
    let k = client
        .get(named_store(get("k")))
        .await
        .expect("get")
        .into_inner();
    assert!(k.etag.is_none(), "k was deleted");

    // TTL: the expiry time is reported.
    let mut with_ttl = set("t", "v", None);
    with_ttl
        .metadata
        .insert("ttlInSeconds".into(), "100".into());
    client
        .set(named_store(with_ttl))
        .await
        .expect("set with ttl");
    let t = client
        .get(named_store(get("t")))
        .await
        .expect("get")
        .into_inner();
    assert!(t.metadata.contains_key("ttlExpireTime"), "{:?}", t.metadata);

    component.terminate().await;
}
