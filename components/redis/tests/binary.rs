//! Runs the real `plugd-redis` binary against a real redis-server and drives
//! it over its Unix socket with the generated gRPC client, as a host would.

mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use plugd_component_sdk::INSTANCE_HEADER;
use plugd_proto::components::pub_sub_client::PubSubClient;
use plugd_proto::components::{self as pb};
use plugd_redis::{Settings, Streams};
use support::{RedisServer, WAIT, group_ready, no_pending};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Request, Streaming};

const GROUP: &str = "app";

struct Component {
    child: Child,
    socket: PathBuf,
}

impl Component {
    async fn start(folder: &Path) -> Self {
        Self::start_with_env(folder, &[]).await
    }

    async fn start_with_env(folder: &Path, env: &[(&str, &Path)]) -> Self {
        let child = Command::new(env!("CARGO_BIN_EXE_plugd-redis"))
            .arg("--socket-name")
            .arg("redis")
            .arg("--socket-folder")
            .arg(folder)
            .env("PLUGD_REDIS_LOG_LEVEL", "warn")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn plugd-redis");
        let socket = folder.join("redis.sock");
        support::socket_accepting(&socket).await;
        Self { child, socket }
    }

    /// SIGKILL: no chance to clean up (the socket file stays behind).
    fn kill9(mut self) {
        self.child.kill().expect("kill -9");
        self.child.wait().expect("wait");
    }

    /// SIGTERM, then a clean exit within the deadline.
    async fn terminate(mut self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
        let deadline = Instant::now() + WAIT;
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

fn properties(redis: &RedisServer, extra: &[(&str, &str)]) -> HashMap<String, String> {
    let mut properties = HashMap::from([
        ("redisHost".to_owned(), redis.address()),
        ("consumerID".to_owned(), GROUP.to_owned()),
        ("processingTimeout".to_owned(), "200ms".to_owned()),
        ("redeliverInterval".to_owned(), "50ms".to_owned()),
    ]);
    for (key, value) in extra {
        properties.insert((*key).to_owned(), (*value).to_owned());
    }
    properties
}

fn init_request(properties: HashMap<String, String>) -> pb::PubSubInitRequest {
    pb::PubSubInitRequest {
        metadata: Some(pb::MetadataRequest { properties }),
    }
}

async fn client(component: &Component) -> PubSubClient<Channel> {
    let channel = plugd_component_sdk::client::connect(&component.socket)
        .await
        .expect("connect");
    PubSubClient::new(channel)
}

/// A started and initialised component with a client.
async fn ready(redis: &RedisServer, folder: &Path) -> (Component, PubSubClient<Channel>) {
    let component = Component::start(folder).await;
    let mut client = client(&component).await;
    client
        .init(named(init_request(properties(redis, &[]))))
        .await
        .expect("init");
    (component, client)
}

/// Direct access to the group's pending entries.
async fn observer(redis: &RedisServer) -> Streams {
    Streams::connect(Settings::new("127.0.0.1", redis.port, GROUP))
        .await
        .expect("observer connection")
}

/// One PullMessages stream, as the host drives it.
struct Stream {
    requests: mpsc::Sender<pb::PullMessagesRequest>,
    responses: Streaming<pb::PullMessagesResponse>,
}

impl Stream {
    async fn open(client: &mut PubSubClient<Channel>, topic: &str) -> Self {
        let (requests, rx) = mpsc::channel(16);
        requests
            .send(pb::PullMessagesRequest {
                topic: Some(pb::Topic {
                    name: topic.to_owned(),
                    metadata: HashMap::new(),
                }),
                ..Default::default()
            })
            .await
            .expect("send topic");
        let responses = client
            .pull_messages(named(ReceiverStream::new(rx)))
            .await
            .expect("pull messages")
            .into_inner();
        Self {
            requests,
            responses,
        }
    }

    async fn next(&mut self) -> pb::PullMessagesResponse {
        tokio::time::timeout(WAIT, self.responses.message())
            .await
            .expect("a message in time")
            .expect("stream healthy")
            .expect("stream open")
    }

    async fn ack(&self, id: &str) {
        self.answer(id, None).await;
    }

    async fn nack(&self, id: &str, error: &str) {
        self.answer(id, Some(error)).await;
    }

    async fn answer(&self, id: &str, error: Option<&str>) {
        self.requests
            .send(pb::PullMessagesRequest {
                ack_message_id: id.to_owned(),
                ack_error: error.map(|message| pb::AckMessageError {
                    message: message.to_owned(),
                }),
                ..Default::default()
            })
            .await
            .expect("send answer");
    }
}

async fn publish(client: &mut PubSubClient<Channel>, topic: &str, data: &str) {
    client
        .publish(named(pb::PublishRequest {
            data: data.as_bytes().to_vec(),
            pubsub_name: "pubsub".into(),
            topic: topic.into(),
            metadata: HashMap::new(),
            content_type: String::new(),
        }))
        .await
        .expect("publish");
}

#[tokio::test]
async fn init_features_ping_and_errors() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let component = Component::start(dir.path()).await;
    let mut client = client(&component).await;

    let status = client
        .ping(named(pb::PingRequest {}))
        .await
        .expect_err("not initialised");
    assert_eq!(status.code(), Code::FailedPrecondition);

    let mut missing = properties(&redis, &[]);
    missing.remove("consumerID");
    let status = client
        .init(named(init_request(missing)))
        .await
        .expect_err("consumerID is required");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("consumerID"), "{status:?}");

    let status = client
        .init(named(init_request(properties(
            &redis,
            &[("processingTimeout", "a while"), ("enableTLS", "maybe")],
        ))))
        .await
        .expect_err("invalid values");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("processingTimeout") && status.message().contains("enableTLS"),
        "{status:?}"
    );

    let nowhere = format!("127.0.0.1:{}", support::free_port());
    let status = client
        .init(named(init_request(properties(
            &redis,
            &[("redisHost", &nowhere)],
        ))))
        .await
        .expect_err("nothing listens there");
    assert_eq!(status.code(), Code::Unavailable);
    assert!(status.message().contains(&nowhere), "{status:?}");

    let status = client
        .init(named(init_request(properties(
            &redis,
            &[("enableTLS", "true")],
        ))))
        .await
        .expect_err("TLS to a plain-text server");
    assert_eq!(status.code(), Code::Unavailable);
    assert!(status.message().contains("TLS"), "{status:?}");

    client
        .init(named(init_request(properties(&redis, &[]))))
        .await
        .expect("init");
    client.ping(named(pb::PingRequest {})).await.expect("ping");
    let mut features = client
        .features(named(pb::FeaturesRequest {}))
        .await
        .expect("features")
        .into_inner()
        .features;
    features.sort();
    assert_eq!(features, ["BULK_PUBSUB", "BULK_SUBSCRIBE_IMMEDIATE"]);
    client
        .pause(named(pb::PauseRequest {}))
        .await
        .expect("pause");
    client
        .pause(named(pb::PauseRequest {}))
        .await
        .expect("pause is idempotent");
    client
        .resume(named(pb::ResumeRequest {}))
        .await
        .expect("resume");

    // Ping follows Redis.
    drop(redis);
    let status = client
        .ping(named(pb::PingRequest {}))
        .await
        .expect_err("redis is gone");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");

    component.terminate().await;
}

#[tokio::test]
async fn publish_pull_ack_nack_and_bulk() {
    let redis = RedisServer::start();
    let observer = observer(&redis).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (component, mut client) = ready(&redis, dir.path()).await;
    let mut stream = Stream::open(&mut client, "orders").await;
    group_ready(&observer, "orders").await;

    client
        .publish(named(pb::PublishRequest {
            data: b"{\"n\":1}".to_vec(),
            pubsub_name: "pubsub".into(),
            topic: "orders".into(),
            metadata: HashMap::from([("traceid".into(), "abc".into())]),
            content_type: "application/json".into(),
        }))
        .await
        .expect("publish");
    let message = stream.next().await;
    assert_eq!(message.data, b"{\"n\":1}");
    assert_eq!(message.topic_name, "orders");
    assert_eq!(message.content_type, "application/json");
    assert_eq!(
        message.metadata,
        HashMap::from([("traceid".to_owned(), "abc".to_owned())])
    );
    assert_eq!(observer.pending("orders").await.expect("pending").len(), 1);
    stream.ack(&message.id).await;
    no_pending(&observer, "orders").await;

    // A nack is redelivered soon, on the same stream.
    publish(&mut client, "orders", "retry me").await;
    let first = stream.next().await;
    stream.nack(&first.id, "app failed").await;
    let again = stream.next().await;
    assert_eq!(again.data, b"retry me");
    assert_ne!(
        again.id, first.id,
        "every delivery has its own transient id"
    );
    stream.ack(&again.id).await;
    no_pending(&observer, "orders").await;

    // Bulk publish: one pipeline, every entry delivered.
    let failed = client
        .bulk_publish(named(pb::BulkPublishRequest {
            entries: (0..3)
                .map(|i| pb::BulkMessageEntry {
                    entry_id: format!("e{i}"),
                    event: format!("bulk {i}").into_bytes(),
                    content_type: "text/plain".into(),
                    metadata: HashMap::from([("i".into(), i.to_string())]),
                })
                .collect(),
            pubsub_name: "pubsub".into(),
            topic: "orders".into(),
            metadata: HashMap::from([("common".into(), "yes".into())]),
        }))
        .await
        .expect("bulk publish")
        .into_inner()
        .failed_entries;
    assert!(failed.is_empty(), "{failed:?}");
    let mut seen = Vec::new();
    for _ in 0..3 {
        let message = stream.next().await;
        assert_eq!(message.content_type, "text/plain");
        assert_eq!(
            message.metadata.get("common").map(String::as_str),
            Some("yes")
        );
        seen.push(String::from_utf8(message.data).expect("utf-8"));
        stream.ack(&message.id).await;
    }
    seen.sort();
    assert_eq!(seen, ["bulk 0", "bulk 1", "bulk 2"]);
    no_pending(&observer, "orders").await;

    // Bulk publish to a key that is not a stream: each entry fails.
    let mut conn = redis.inspect(0).await;
    let _: () = redis::cmd("SET")
        .arg("plain")
        .arg("x")
        .query_async(&mut conn)
        .await
        .expect("SET");
    let failed = client
        .bulk_publish(named(pb::BulkPublishRequest {
            entries: vec![pb::BulkMessageEntry {
                entry_id: "only".into(),
                event: b"x".to_vec(),
                ..Default::default()
            }],
            pubsub_name: "pubsub".into(),
            topic: "plain".into(),
            metadata: HashMap::new(),
        }))
        .await
        .expect("bulk publish")
        .into_inner()
        .failed_entries;
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].entry_id, "only");
    assert!(failed[0].error.contains("WRONGTYPE"), "{failed:?}");

    drop(stream);
    component.terminate().await;
}

#[tokio::test]
async fn a_message_unanswered_on_a_dropped_stream_goes_to_the_next_stream() {
    let redis = RedisServer::start();
    let observer = observer(&redis).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (_component, mut client) = ready(&redis, dir.path()).await;
    let mut stream = Stream::open(&mut client, "t").await;
    group_ready(&observer, "t").await;
    publish(&mut client, "t", "unanswered").await;
    let message = stream.next().await;
    assert_eq!(message.data, b"unanswered");
    drop(stream); // the host goes away without answering

    // Left pending, not acknowledged.
    assert_eq!(observer.pending("t").await.expect("pending").len(), 1);

    let mut stream = Stream::open(&mut client, "t").await;
    let message = stream.next().await;
    assert_eq!(message.data, b"unanswered");
    stream.ack(&message.id).await;
    no_pending(&observer, "t").await;
}

#[tokio::test]
async fn a_host_connection_lost_mid_delivery_loses_nothing() {
    let redis = RedisServer::start();
    let observer = observer(&redis).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (_component, mut client) = ready(&redis, dir.path()).await;
    let mut stream = Stream::open(&mut client, "t").await;
    group_ready(&observer, "t").await;
    for i in 0..5 {
        publish(&mut client, "t", &format!("m{i}")).await;
    }
    let first = stream.next().await;
    stream.ack(&first.id).await;
    let _unanswered = stream.next().await;
    // The whole connection goes, as when the host is killed.
    drop(stream);
    drop(client);

    let component_socket = dir.path().join("redis.sock");
    let channel = plugd_component_sdk::client::connect(&component_socket)
        .await
        .expect("connect");
    let mut client = PubSubClient::new(channel);
    client
        .init(named(init_request(properties(&redis, &[]))))
        .await
        .expect("re-init");
    let mut stream = Stream::open(&mut client, "t").await;
    let mut seen = vec![String::from_utf8(first.data).expect("utf-8")];
    while seen.len() < 5 {
        let message = stream.next().await;
        let text = String::from_utf8(message.data).expect("utf-8");
        stream.ack(&message.id).await;
        if !seen.contains(&text) {
            seen.push(text);
        }
    }
    seen.sort();
    assert_eq!(seen, ["m0", "m1", "m2", "m3", "m4"]);
    // The ack of `m0` was queued just before the connection went and may have been lost with
    // it; then `m0` is delivered again. Answer whatever still comes until nothing is pending.
    loop {
        tokio::select! {
            message = stream.next() => {
                let text = String::from_utf8(message.data).expect("utf-8");
                assert!(seen.contains(&text), "unexpected message {text:?}");
                stream.ack(&message.id).await;
            }
            () = no_pending(&observer, "t") => break,
        }
    }
}

#[tokio::test]
async fn messages_survive_a_kill_9_of_the_component() {
    let redis = RedisServer::start();
    let observer = observer(&redis).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (component, mut client) = ready(&redis, dir.path()).await;
    let mut stream = Stream::open(&mut client, "t").await;
    group_ready(&observer, "t").await;
    for i in 0..5 {
        publish(&mut client, "t", &format!("m{i}")).await;
    }
    // Two delivered and unanswered, the rest read or waiting.
    let _ = stream.next().await;
    let _ = stream.next().await;
    component.kill9();
    drop(stream);
    drop(client);
    // Published while the component is down: kept in the stream.
    let mut conn = redis.inspect(0).await;
    let _: String = redis::cmd("XADD")
        .arg("t")
        .arg("*")
        .arg("data")
        .arg("m5")
        .query_async(&mut conn)
        .await
        .expect("XADD");

    let (_component, mut client) = ready(&redis, dir.path()).await;
    let mut stream = Stream::open(&mut client, "t").await;
    let mut seen = Vec::new();
    while seen.len() < 6 {
        let message = stream.next().await;
        let text = String::from_utf8(message.data).expect("utf-8");
        stream.ack(&message.id).await;
        if !seen.contains(&text) {
            seen.push(text);
        }
    }
    seen.sort();
    assert_eq!(seen, ["m0", "m1", "m2", "m3", "m4", "m5"]);
    no_pending(&observer, "t").await;
}

#[tokio::test]
async fn sigterm_with_a_stream_open_leaves_unanswered_messages_for_the_next_process() {
    let redis = RedisServer::start();
    let observer = observer(&redis).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (component, mut client) = ready(&redis, dir.path()).await;
    let mut stream = Stream::open(&mut client, "t").await;
    group_ready(&observer, "t").await;
    publish(&mut client, "t", "in flight at shutdown").await;
    let message = stream.next().await;
    assert_eq!(message.data, b"in flight at shutdown");
    component.terminate().await;
    drop(stream);
    assert_eq!(observer.pending("t").await.expect("pending").len(), 1);

    let (_component, mut client) = ready(&redis, dir.path()).await;
    let mut stream = Stream::open(&mut client, "t").await;
    let message = stream.next().await;
    assert_eq!(message.data, b"in flight at shutdown");
    stream.ack(&message.id).await;
    no_pending(&observer, "t").await;
}

#[tokio::test]
async fn tls() {
    let redis = RedisServer::start_tls();
    let ca_file = redis.tls().expect("TLS server").ca_file.clone();
    let dir = tempfile::tempdir().expect("tempdir");
    // The component trusts the test CA through rustls-native-certs' SSL_CERT_FILE.
    let component =
        Component::start_with_env(dir.path(), &[("SSL_CERT_FILE", ca_file.as_path())]).await;
    let mut client = client(&component).await;
    let address = format!("localhost:{}", redis.port);

    let status = client
        .init(named(init_request(properties(
            &redis,
            &[("redisHost", &address)],
        ))))
        .await
        .expect_err("plain text to a TLS port");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");

    client
        .init(named(init_request(properties(
            &redis,
            &[("redisHost", &address), ("enableTLS", "true")],
        ))))
        .await
        .expect("init over TLS");
    client.ping(named(pb::PingRequest {})).await.expect("ping");
    let mut stream = Stream::open(&mut client, "secure").await;
    // Publish until the subscription sees a message, within a deadline.
    let deadline = Instant::now() + WAIT;
    let message = loop {
        publish(&mut client, "secure", "over tls").await;
        let next =
            tokio::time::timeout(Duration::from_millis(200), stream.responses.message()).await;
        if let Ok(next) = next {
            break next.expect("stream healthy").expect("stream open");
        }
        assert!(Instant::now() < deadline, "no delivery over TLS");
    };
    assert_eq!(message.data, b"over tls");
    stream.ack(&message.id).await;
    drop(stream);
    component.terminate().await;
}

/// Publish → deliver → ack rate through the binary, one stream, against a
/// local Redis. `cargo test --release -p plugd-redis --test binary -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a check"]
async fn throughput() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let (_component, mut client) = ready(&redis, dir.path()).await;
    let observer = observer(&redis).await;
    let mut stream = Stream::open(&mut client, "bench").await;
    group_ready(&observer, "bench").await;
    let total: usize = 20_000;
    let batch = 100;
    let started = Instant::now();
    let publisher = tokio::spawn({
        let mut client = client.clone();
        async move {
            for chunk in 0..total / batch {
                let failed = client
                    .bulk_publish(named(pb::BulkPublishRequest {
                        entries: (0..batch)
                            .map(|i| pb::BulkMessageEntry {
                                entry_id: i.to_string(),
                                event: format!("{{\"chunk\":{chunk},\"i\":{i}}}").into_bytes(),
                                content_type: "application/json".into(),
                                metadata: HashMap::new(),
                            })
                            .collect(),
                        pubsub_name: "pubsub".into(),
                        topic: "bench".into(),
                        metadata: HashMap::new(),
                    }))
                    .await
                    .expect("bulk publish")
                    .into_inner()
                    .failed_entries;
                assert!(failed.is_empty());
            }
        }
    });
    for _ in 0..total {
        let message = stream.next().await;
        stream.ack(&message.id).await;
    }
    let elapsed = started.elapsed();
    publisher.await.expect("publisher");
    no_pending(&observer, "bench").await;
    println!(
        "{total} messages published (bulk {batch}), delivered and acked in {elapsed:?}: {:.0} msg/s",
        total as f64 / elapsed.as_secs_f64()
    );

    // Single publishes, one at a time, as daprd sends them without BULK_PUBSUB.
    let total = 5_000;
    let started = Instant::now();
    let publisher = tokio::spawn({
        let mut client = client.clone();
        async move {
            for i in 0..total {
                publish(&mut client, "bench", &i.to_string()).await;
            }
        }
    });
    for _ in 0..total {
        let message = stream.next().await;
        stream.ack(&message.id).await;
    }
    let elapsed = started.elapsed();
    publisher.await.expect("publisher");
    println!(
        "{total} messages published one by one, delivered and acked in {elapsed:?}: {:.0} msg/s",
        total as f64 / elapsed.as_secs_f64()
    );
}
