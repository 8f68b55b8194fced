//! The Redis Streams logic against a real redis-server.

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use plugd_redis::connection::ConnectError;
use plugd_redis::streams::{Delivery, Entry, Handler, Outcome, StreamsError};
use plugd_redis::{Settings, Streams};
use support::{RedisServer, WAIT, group_ready, no_pending};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

/// Hands every delivery to the test, which answers through the oneshot;
/// dropping the oneshot means the subscriber went away.
struct Channel(mpsc::UnboundedSender<(Delivery, oneshot::Sender<Outcome>)>);

impl Handler for Channel {
    async fn handle(&self, delivery: &Delivery) -> Outcome {
        let (reply, outcome) = oneshot::channel();
        if self.0.send((delivery.clone(), reply)).is_err() {
            return Outcome::Closed;
        }
        outcome.await.unwrap_or(Outcome::Closed)
    }
}

struct Running {
    stop: CancellationToken,
    paused: watch::Sender<bool>,
    deliveries: mpsc::UnboundedReceiver<(Delivery, oneshot::Sender<Outcome>)>,
    task: tokio::task::JoinHandle<Result<(), StreamsError>>,
}

impl Running {
    async fn next(&mut self) -> (Delivery, oneshot::Sender<Outcome>) {
        tokio::time::timeout(WAIT, self.deliveries.recv())
            .await
            .expect("a delivery in time")
            .expect("subscription running")
    }

    async fn end(self) {
        self.stop.cancel();
        drop(self.deliveries);
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("subscription ends in time")
            .expect("no panic")
            .expect("subscription ok");
    }
}

fn subscribe(streams: &Streams, topic: &str) -> Running {
    let (tx, deliveries) = mpsc::unbounded_channel();
    let stop = CancellationToken::new();
    let (paused, paused_rx) = watch::channel(false);
    let task = tokio::spawn({
        let streams = streams.clone();
        let topic = topic.to_owned();
        let stop = stop.clone();
        async move {
            streams
                .subscribe(&topic, Arc::new(Channel(tx)), stop, paused_rx)
                .await
        }
    });
    Running {
        stop,
        paused,
        deliveries,
        task,
    }
}

fn settings(redis: &RedisServer) -> Settings {
    let mut settings = Settings::new("127.0.0.1", redis.port, "group");
    settings.processing_timeout = Some(Duration::from_millis(200));
    settings.redeliver_interval = Some(Duration::from_millis(50));
    settings
}

/// Connects with [`settings`] and subscribes to `topic`, once its consumer
/// group is ready.
async fn subscribed(redis: &RedisServer, topic: &str) -> (Streams, Running) {
    let streams = Streams::connect(settings(redis)).await.expect("connect");
    let sub = subscribe(&streams, topic);
    group_ready(&streams, topic).await;
    (streams, sub)
}

fn entry(data: &str) -> Entry {
    Entry {
        data: data.as_bytes().to_vec(),
        ..Default::default()
    }
}

#[tokio::test]
async fn publish_deliver_ack() {
    let redis = RedisServer::start();
    let (streams, mut sub) = subscribed(&redis, "orders").await;
    streams.ping().await.expect("ping");

    let sent = Entry {
        data: vec![0, 1, 2, 255],
        content_type: Some("application/octet-stream".into()),
        metadata: HashMap::from([
            ("k".into(), "v".into()),
            ("rawPayload".into(), "true".into()),
        ]),
    };
    let id = streams.publish("orders", &sent).await.expect("publish");
    let (delivery, reply) = sub.next().await;
    assert_eq!(delivery.id, id);
    assert_eq!(delivery.topic, "orders");
    assert_eq!(delivery.entry, sent);
    assert_eq!(streams.pending("orders").await.expect("pending").len(), 1);
    reply.send(Outcome::Ack).expect("reply");
    no_pending(&streams, "orders").await;
    sub.end().await;
}

#[tokio::test]
async fn a_nacked_message_is_redelivered_soon() {
    let redis = RedisServer::start();
    let (streams, mut sub) = subscribed(&redis, "t").await;
    streams.publish("t", &entry("m")).await.expect("publish");

    let (first, reply) = sub.next().await;
    reply
        .send(Outcome::Nack("try later".into()))
        .expect("reply");
    let (second, reply) = sub.next().await;
    assert_eq!(first, second);
    reply.send(Outcome::Nack("again".into())).expect("reply");
    let (third, reply) = sub.next().await;
    assert_eq!(first, third);
    reply.send(Outcome::Ack).expect("reply");
    no_pending(&streams, "t").await;
    sub.end().await;
}

#[tokio::test]
async fn a_message_refused_past_the_quick_retries_comes_back_after_the_processing_timeout() {
    let redis = RedisServer::start();
    let (streams, mut sub) = subscribed(&redis, "t").await;
    streams.publish("t", &entry("m")).await.expect("publish");
    // The first delivery and the three quick retries.
    for _ in 0..4 {
        let (delivery, reply) = sub.next().await;
        assert_eq!(delivery.entry.data, b"m");
        reply.send(Outcome::Nack("no".into())).expect("reply");
    }
    // Then it stays pending and is reclaimed.
    let (delivery, reply) = sub.next().await;
    assert_eq!(delivery.entry.data, b"m");
    reply.send(Outcome::Ack).expect("reply");
    no_pending(&streams, "t").await;
    sub.end().await;
}

#[tokio::test]
async fn a_message_left_by_a_closed_subscriber_goes_to_another() {
    let redis = RedisServer::start();
    let (streams, mut first) = subscribed(&redis, "t").await;
    let id = streams.publish("t", &entry("m")).await.expect("publish");
    let (delivery, reply) = first.next().await;
    assert_eq!(delivery.id, id);
    drop(reply); // the subscriber went away without an answer
    first.end().await;
    let pending = streams.pending("t").await.expect("pending");
    assert_eq!(pending.len(), 1, "left pending, not acknowledged");

    let mut second = subscribe(&streams, "t");
    let (delivery, reply) = second.next().await;
    assert_eq!(delivery.id, id);
    reply.send(Outcome::Ack).expect("reply");
    no_pending(&streams, "t").await;
    second.end().await;
}

#[tokio::test]
async fn an_entry_in_flight_is_not_taken_over_by_another_subscriber() {
    let redis = RedisServer::start();
    let mut settings = settings(&redis);
    // Renewed every 200 ms: a wide margin for a busy test machine.
    settings.processing_timeout = Some(Duration::from_millis(600));
    let streams = Streams::connect(settings).await.expect("connect");
    let mut slow = subscribe(&streams, "t");
    group_ready(&streams, "t").await;
    let mut other = subscribe(&streams, "t");
    let id = streams.publish("t", &entry("m")).await.expect("publish");
    let (delivery, reply) = tokio::select! {
        got = slow.next() => got,
        got = other.next() => got,
    };
    assert_eq!(delivery.id, id);
    // Hold it for three processing timeouts: its claim is renewed, so the
    // other subscriber's reclaim scans leave it alone.
    let owner = streams.pending("t").await.expect("pending")[0].1.clone();
    let until = tokio::time::Instant::now() + Duration::from_millis(1800);
    while tokio::time::Instant::now() < until {
        let pending = streams.pending("t").await.expect("pending");
        assert_eq!(pending, [(id.clone(), owner.clone())], "taken over");
        assert!(slow.deliveries.try_recv().is_err() && other.deliveries.try_recv().is_err());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    reply.send(Outcome::Ack).expect("reply");
    no_pending(&streams, "t").await;
    // Nothing else arrives.
    assert!(slow.deliveries.try_recv().is_err() && other.deliveries.try_recv().is_err());
    slow.end().await;
    other.end().await;
}

#[tokio::test]
async fn deleted_pending_entries_are_acknowledged() {
    let redis = RedisServer::start();
    let (streams, mut first) = subscribed(&redis, "t").await;
    let id = streams.publish("t", &entry("gone")).await.expect("publish");
    let (_, reply) = first.next().await;
    drop(reply);
    first.end().await;

    let mut conn = redis.inspect(0).await;
    let deleted: i64 = redis::cmd("XDEL")
        .arg("t")
        .arg(&id)
        .query_async(&mut conn)
        .await
        .expect("XDEL");
    assert_eq!(deleted, 1);

    let mut second = subscribe(&streams, "t");
    no_pending(&streams, "t").await;
    let after = streams.publish("t", &entry("next")).await.expect("publish");
    let (delivery, reply) = second.next().await;
    assert_eq!(delivery.id, after, "the deleted entry is not delivered");
    reply.send(Outcome::Ack).expect("reply");
    second.end().await;
}

#[tokio::test]
async fn foreign_entries_are_skipped() {
    let redis = RedisServer::start();
    let (streams, mut sub) = subscribed(&redis, "t").await;
    let mut conn = redis.inspect(0).await;
    let _: String = redis::cmd("XADD")
        .arg("t")
        .arg("*")
        .arg("payload")
        .arg("x")
        .query_async(&mut conn)
        .await
        .expect("XADD");
    let id = streams.publish("t", &entry("ours")).await.expect("publish");
    let (delivery, reply) = sub.next().await;
    assert_eq!(delivery.id, id);
    reply.send(Outcome::Ack).expect("reply");
    no_pending(&streams, "t").await;
    sub.end().await;
}

#[tokio::test]
async fn concurrency_bounds_deliveries_in_flight() {
    let redis = RedisServer::start();
    let mut settings = settings(&redis);
    settings.concurrency = 3;
    let streams = Streams::connect(settings).await.expect("connect");
    let mut sub = subscribe(&streams, "t");
    group_ready(&streams, "t").await;
    let batch: Vec<Entry> = (0..10).map(|i| entry(&i.to_string())).collect();
    let results = streams.publish_batch("t", &batch).await.expect("batch");
    assert!(results.iter().all(Result::is_ok), "{results:?}");

    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(sub.next().await);
    }
    // With three unanswered, no fourth is handed out.
    let more = tokio::time::timeout(Duration::from_millis(300), sub.deliveries.recv()).await;
    assert!(
        more.is_err(),
        "a fourth delivery while three were in flight"
    );
    let mut seen: Vec<Vec<u8>> = Vec::new();
    for (delivery, reply) in held {
        seen.push(delivery.entry.data);
        reply.send(Outcome::Ack).expect("reply");
    }
    while seen.len() < 10 {
        let (delivery, reply) = sub.next().await;
        seen.push(delivery.entry.data);
        reply.send(Outcome::Ack).expect("reply");
    }
    seen.sort();
    let mut expected: Vec<Vec<u8>> = (0..10).map(|i: i32| i.to_string().into_bytes()).collect();
    expected.sort();
    assert_eq!(seen, expected);
    no_pending(&streams, "t").await;
    sub.end().await;
}

#[tokio::test]
async fn pause_stops_reading_and_resume_carries_on() {
    let redis = RedisServer::start();
    let (streams, mut sub) = subscribed(&redis, "t").await;
    sub.paused.send_replace(true);
    // A read already blocking may still return one entry; wait for the
    // reader to have observed the pause by publishing until a full read
    // cycle passed (the block is one second).
    let first = streams.publish("t", &entry("a")).await.expect("publish");
    let maybe = tokio::time::timeout(Duration::from_millis(1500), sub.deliveries.recv()).await;
    if let Ok(Some((delivery, reply))) = maybe {
        assert_eq!(delivery.id, first);
        reply.send(Outcome::Ack).expect("reply");
    }
    let second = streams.publish("t", &entry("b")).await.expect("publish");
    let nothing = tokio::time::timeout(Duration::from_millis(1500), sub.deliveries.recv()).await;
    assert!(nothing.is_err(), "delivered while paused");
    sub.paused.send_replace(false);
    let (delivery, reply) = sub.next().await;
    assert!(delivery.id == second || delivery.id == first);
    reply.send(Outcome::Ack).expect("reply");
    sub.end().await;
}

#[tokio::test]
async fn bulk_publish_reports_each_entry() {
    let redis = RedisServer::start();
    let mut settings = settings(&redis);
    settings.max_len_approx = Some(5);
    let streams = Streams::connect(settings).await.expect("connect");
    let batch: Vec<Entry> = (0..3).map(|i| entry(&i.to_string())).collect();
    let results = streams.publish_batch("s", &batch).await.expect("batch");
    assert_eq!(results.len(), 3);
    assert!(results.iter().all(Result::is_ok), "{results:?}");

    let mut conn = redis.inspect(0).await;
    let _: () = redis::cmd("SET")
        .arg("not-a-stream")
        .arg("x")
        .query_async(&mut conn)
        .await
        .expect("SET");
    let results = streams
        .publish_batch("not-a-stream", &batch)
        .await
        .expect("batch");
    assert_eq!(results.len(), 3);
    for result in &results {
        let error = result.as_ref().expect_err("WRONGTYPE");
        assert!(error.contains("WRONGTYPE"), "{error}");
    }
    let error = streams
        .publish("not-a-stream", &entry("x"))
        .await
        .expect_err("WRONGTYPE");
    assert!(!error.is_unavailable());

    // maxLenApprox trims (whole stream nodes of 100 entries at a time).
    for _ in 0..10 {
        let batch: Vec<Entry> = (0..100).map(|i| entry(&i.to_string())).collect();
        streams.publish_batch("s", &batch).await.expect("batch");
    }
    let len: usize = redis::cmd("XLEN")
        .arg("s")
        .query_async(&mut conn)
        .await
        .expect("XLEN");
    assert!(len <= 5 + 100, "{len} entries kept");
}

#[tokio::test]
async fn unreachable_redis_fails_at_once_with_a_clear_error() {
    let port = support::free_port();
    let settings = Settings::new("127.0.0.1", port, "g");
    let started = std::time::Instant::now();
    let error = Streams::connect(settings)
        .await
        .expect_err("nothing listens");
    assert!(error.is_unavailable());
    assert!(
        error.to_string().contains(&format!("127.0.0.1:{port}")),
        "{error}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn a_wrong_password_is_reported_as_such() {
    let redis = RedisServer::start();
    let mut settings = settings(&redis);
    settings.connection.password = Some("wrong".into());
    let error = Streams::connect(settings)
        .await
        .expect_err("no password set");
    assert!(
        matches!(
            error,
            StreamsError::Connect(ConnectError::Authentication { .. })
        ),
        "{error:?}"
    );
}

#[tokio::test]
async fn subscriptions_survive_a_redis_restart() {
    let mut redis = RedisServer::start();
    let (streams, mut sub) = subscribed(&redis, "t").await;
    redis.kill();
    redis.restart();
    // The restarted server is empty (no persistence): the reader finds the
    // group missing and creates it again.
    group_ready(&streams, "t").await;
    let id = streams
        .publish("t", &entry("after"))
        .await
        .expect("publish");
    let (delivery, reply) = sub.next().await;
    assert_eq!(delivery.id, id);
    reply.send(Outcome::Ack).expect("reply");
    no_pending(&streams, "t").await;
    sub.end().await;
}

#[tokio::test]
async fn many_messages_flow_through() {
    let redis = RedisServer::start();
    let (streams, mut sub) = subscribed(&redis, "t").await;
    let total = 2000;
    let publisher = tokio::spawn({
        let streams = streams.clone();
        async move {
            for chunk in 0..(total / 100) {
                let batch: Vec<Entry> = (0..100).map(|i| entry(&format!("{chunk}-{i}"))).collect();
                let results = streams.publish_batch("t", &batch).await.expect("batch");
                assert!(results.iter().all(Result::is_ok));
            }
        }
    });
    let mut seen = std::collections::HashSet::new();
    while seen.len() < total {
        let (delivery, reply) = sub.next().await;
        seen.insert(delivery.id);
        reply.send(Outcome::Ack).expect("reply");
    }
    publisher.await.expect("publisher");
    no_pending(&streams, "t").await;
    sub.end().await;
}
