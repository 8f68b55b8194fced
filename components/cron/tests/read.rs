//! The cron binding on a real server over a temporary Unix socket, driven by
//! the generated tonic `InputBinding` client the way a host drives it. No
//! test sleeps: each waits (bounded) for events, using a second instance's
//! events as a clock where time has to pass.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use futures::FutureExt;
use jiff::{SignedDuration, Timestamp};
use plugd_component_sdk::proto::input_binding_client::InputBindingClient;
use plugd_component_sdk::proto::{self as pb};
use plugd_component_sdk::{ComponentServer, ServeError};
use plugd_cron::CronBinding;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic::{Code, Request, Status, Streaming};

/// Bound on every wait in these tests.
const LIMIT: Duration = Duration::from_secs(10);

async fn within<F: std::future::IntoFuture>(what: &str, future: F) -> F::Output {
    tokio::time::timeout(LIMIT, future)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

struct Running {
    socket: PathBuf,
    stop: CancellationToken,
    task: JoinHandle<Result<(), ServeError>>,
    _dir: tempfile::TempDir,
}

impl Running {
    /// Binds first (so the socket exists), then serves in a task.
    fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let bound = ComponentServer::new("cron")
            .socket_folder(dir.path())
            .shutdown_grace(Duration::from_secs(2))
            .input_binding(CronBinding::new)
            .bind()
            .expect("bind");
        let socket = bound.socket_path().to_owned();
        let stop = CancellationToken::new();
        let task = tokio::spawn(bound.serve_with_shutdown(stop.clone().cancelled_owned()));
        Self {
            socket,
            stop,
            task,
            _dir: dir,
        }
    }

    async fn client(&self) -> InputBindingClient<Channel> {
        let channel = within(
            "the connection",
            plugd_component_sdk::client::connect(&self.socket),
        )
        .await
        .expect("connect over UDS");
        InputBindingClient::new(channel)
    }

    /// Inits `instance` with `properties`.
    async fn init(&self, instance: &str, properties: &[(&str, &str)]) -> Result<(), Status> {
        let properties = properties
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let request = pb::InputBindingInitRequest {
            metadata: Some(pb::MetadataRequest { properties }),
        };
        within("Init", self.client().await.init(named(instance, request)))
            .await
            .map(drop)
    }

    /// Inits `instance` with `schedule`, which must be accepted.
    async fn schedule(&self, instance: &str, schedule: &str) {
        self.init(instance, &[("schedule", schedule)])
            .await
            .unwrap_or_else(|status| panic!("Init with {schedule:?}: {status:?}"));
    }

    async fn read(&self, instance: &str) -> ReadStream {
        ReadStream::open(self.client().await, instance).await
    }

    async fn shutdown(self) {
        self.stop.cancel();
        within("the server to stop", self.task)
            .await
            .expect("server task")
            .expect("server stopped cleanly");
    }
}

fn named<T>(instance: &str, message: T) -> Request<T> {
    plugd_component_sdk::client::for_instance(instance, message).expect("ascii")
}

/// One event as the host sees it.
#[derive(Debug)]
struct Fire {
    id: String,
    time: Timestamp,
    metadata: HashMap<String, String>,
}

/// The host side of one Read stream.
struct ReadStream {
    requests: mpsc::Sender<pb::ReadRequest>,
    responses: Streaming<pb::ReadResponse>,
}

impl ReadStream {
    async fn open(mut client: InputBindingClient<Channel>, instance: &str) -> Self {
        let (requests, receiver) = mpsc::channel(16);
        let responses = within(
            "the stream to open",
            client.read(named(instance, ReceiverStream::new(receiver))),
        )
        .await
        .expect("open the stream")
        .into_inner();
        Self {
            requests,
            responses,
        }
    }

    async fn next_response(&mut self) -> Result<Option<pb::ReadResponse>, Status> {
        within("an event", self.responses.message()).await
    }

    /// The next event, checked for shape.
    async fn next(&mut self) -> Fire {
        let event = self
            .next_response()
            .await
            .expect("stream healthy")
            .expect("an event, not the end");
        assert_eq!(event.content_type, "application/json");
        let text: String = serde_json::from_slice(&event.data)
            .unwrap_or_else(|err| panic!("data {:?} is not a JSON string: {err}", event.data));
        let time: Timestamp = text
            .parse()
            .unwrap_or_else(|err| panic!("{text:?} is not RFC 3339: {err}"));
        assert!(text.ends_with('Z'), "{text} is not in UTC");
        assert_eq!(text.len(), "2026-11-24T10:00:00.000Z".len(), "{text}");
        assert_eq!(event.metadata.get("fireTime"), Some(&text));
        assert!(!event.message_id.is_empty());
        Fire {
            id: event.message_id,
            time,
            metadata: event.metadata,
        }
    }

    /// Whether an event is waiting right now (without waiting for one).
    fn has_event(&mut self) -> bool {
        self.responses.message().now_or_never().is_some()
    }

    async fn ack(&self, fire: &Fire) {
        self.send(pb::ReadRequest {
            response_data: b"ok".to_vec(),
            message_id: fire.id.clone(),
            response_error: None,
        })
        .await;
    }

    async fn fail(&self, fire: &Fire, error: &str) {
        self.send(pb::ReadRequest {
            response_data: Vec::new(),
            message_id: fire.id.clone(),
            response_error: Some(pb::AckResponseError {
                message: error.to_owned(),
            }),
        })
        .await;
    }

    async fn send(&self, request: pb::ReadRequest) {
        self.requests.send(request).await.expect("send to server");
    }

    /// Receives and acknowledges `count` events.
    async fn take(&mut self, count: usize) -> Vec<Fire> {
        let mut fires = Vec::with_capacity(count);
        for _ in 0..count {
            let fire = self.next().await;
            self.ack(&fire).await;
            fires.push(fire);
        }
        fires
    }

    /// Half-closes the host side (daprd's CloseSend) and waits for the end.
    async fn close(self) {
        let Self {
            requests,
            mut responses,
        } = self;
        drop(requests);
        loop {
            match within("the end of the stream", responses.message()).await {
                // An event sent before the close was seen.
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(status) => panic!("the stream ended with {status:?}"),
            }
        }
    }
}

/// Asserts `fires` are in increasing order, each a whole number of `period`s
/// after the one before (the grid does not drift).
fn assert_on_grid(fires: &[Fire], period: SignedDuration) {
    for pair in fires.windows(2) {
        let gap = pair[1].time.duration_since(pair[0].time);
        assert!(
            gap.is_positive() && gap.as_nanos() % period.as_nanos() == 0,
            "{} then {}: not a positive multiple of {period}",
            pair[0].time,
            pair[1].time
        );
    }
}

#[tokio::test]
async fn every_delivers_increasing_fire_times() {
    let server = Running::start();
    server.schedule("ticks", "@every 50ms").await;
    let opened = Timestamp::now();
    let mut stream = server.read("ticks").await;
    let fires = stream.take(4).await;
    assert!(
        fires[0].time > opened,
        "the first fire is one period after the stream opened"
    );
    assert_on_grid(&fires, SignedDuration::from_millis(50));
    for fire in &fires {
        assert_eq!(fire.metadata["schedule"], "@every 50ms");
        assert_eq!(fire.metadata["timeZone"], "UTC");
    }
    stream.close().await;
    server.shutdown().await;
}

#[tokio::test]
async fn a_cron_expression_with_seconds_fires() {
    let server = Running::start();
    server.schedule("cron", "* * * * * *").await;
    let mut stream = server.read("cron").await;
    let fires = stream.take(2).await;
    for fire in &fires {
        assert_eq!(
            fire.time.subsec_nanosecond(),
            0,
            "{} is not a whole second",
            fire.time
        );
        assert_eq!(fire.metadata["schedule"], "* * * * * *");
    }
    assert_on_grid(&fires, SignedDuration::from_secs(1));
    stream.close().await;
    server.shutdown().await;
}

#[tokio::test]
async fn invalid_schedules_are_refused_at_init() {
    let server = Running::start();
    // (Init properties, what the error message must mention)
    type Case<'a> = (&'a [(&'a str, &'a str)], &'a [&'a str]);
    let cases: [Case; 8] = [
        (&[("schedule", "@every 0s")], &["\"@every 0s\"", "positive"]),
        (
            &[("schedule", "@every -5s")],
            &["\"@every -5s\"", "negative"],
        ),
        (
            &[("schedule", "@every nonsense")],
            &["\"@every nonsense\"", "not a duration"],
        ),
        (
            &[("schedule", "61 * * * *")],
            &["\"61 * * * *\"", "minute field"],
        ),
        (&[("schedule", "* * * *")], &["\"* * * *\"", "5 fields"]),
        (
            &[("schedule", "@reboot")],
            &["\"@reboot\"", "unknown descriptor"],
        ),
        (&[("route", "/cron")], &["schedule is required"]),
        (
            &[("schedule", "@hourly"), ("timeZone", "Nowhere/Atlantis")],
            &["\"Nowhere/Atlantis\"", "time zone"],
        ),
    ];
    for (properties, expected) in cases {
        let status = server
            .init("bad", properties)
            .await
            .expect_err("Init should fail");
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "{properties:?}: {status:?}"
        );
        for part in expected {
            assert!(
                status.message().contains(part),
                "{properties:?}: {:?} does not mention {part:?}",
                status.message()
            );
        }
    }
    // A bad re-Init leaves the instance's schedule as it was.
    server.schedule("bad", "@every 20ms").await;
    assert!(
        server
            .init("bad", &[("schedule", "@every 0s")])
            .await
            .is_err()
    );
    let mut stream = server.read("bad").await;
    let fire = stream.next().await;
    assert_eq!(fire.metadata["schedule"], "@every 20ms");
    stream.close().await;
    server.shutdown().await;
}

#[tokio::test]
async fn read_before_init_fails() {
    let server = Running::start();
    let (_requests, receiver) = mpsc::channel::<pb::ReadRequest>(1);
    let opened = within(
        "the stream to open",
        server
            .client()
            .await
            .read(named("fresh", ReceiverStream::new(receiver))),
    )
    .await;
    // The status may come at once or as the stream's end.
    let status = match opened {
        Err(status) => status,
        Ok(response) => within("the end of the stream", response.into_inner().message())
            .await
            .expect_err("no schedule yet"),
    };
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    server.shutdown().await;
}

#[tokio::test]
async fn ping_is_healthy() {
    let server = Running::start();
    within(
        "Ping",
        server.client().await.ping(named("any", pb::PingRequest {})),
    )
    .await
    .expect("healthy");
    server.shutdown().await;
}

#[tokio::test]
async fn nothing_fires_without_a_stream_and_firing_resumes_on_reconnect() {
    let server = Running::start();
    server.schedule("job", "@every 20ms").await;
    server.schedule("clock", "@every 20ms").await;

    let mut job = server.read("job").await;
    let before = job.take(2).await;
    job.close().await;

    // Let several periods pass with no stream open for `job`.
    let mut clock = server.read("clock").await;
    clock.take(6).await;
    clock.close().await;

    let reopened = Timestamp::now();
    let mut job = server.read("job").await;
    let after = job.take(3).await;
    // Nothing queued while no stream was open is delivered now.
    assert!(
        after[0].time > reopened,
        "fire {} is from before the stream reopened at {reopened}",
        after[0].time
    );
    assert!(after[0].time > before[1].time);
    assert_on_grid(&after, SignedDuration::from_millis(20));
    job.close().await;
    server.shutdown().await;
}

#[tokio::test]
async fn error_replies_do_not_stop_the_stream() {
    let server = Running::start();
    server.schedule("flaky", "@every 30ms").await;
    let mut stream = server.read("flaky").await;
    let first = stream.next().await;
    stream.fail(&first, "the app is down").await;
    let second = stream.next().await;
    stream.fail(&second, "input binding is closed").await;
    let third = stream.next().await;
    stream.ack(&third).await;
    let fourth = stream.next().await;
    stream.ack(&fourth).await;
    assert_on_grid(
        &[first, second, third, fourth],
        SignedDuration::from_millis(30),
    );
    stream.close().await;
    server.shutdown().await;
}

#[tokio::test]
async fn fires_are_skipped_while_the_app_has_not_answered() {
    let server = Running::start();
    server.schedule("slow", "@every 20ms").await;
    server.schedule("clock", "@every 20ms").await;

    let mut slow = server.read("slow").await;
    let first = slow.next().await;
    let unanswered_at = Timestamp::now();

    // Several periods pass while the first event is unanswered...
    let mut clock = server.read("clock").await;
    clock.take(6).await;
    // ...and no further event was sent meanwhile.
    assert!(
        !slow.has_event(),
        "an event was sent while one was unanswered"
    );

    let answered_at = Timestamp::now();
    slow.ack(&first).await;
    let next = slow.next().await;
    // The skipped fires are not replayed: the next one is on the grid, after
    // the answer.
    assert!(
        next.time > unanswered_at && next.time.duration_since(first.time).as_millis() >= 100,
        "first {}, next {}, answered at {answered_at}",
        first.time,
        next.time
    );
    assert_on_grid(&[first, next], SignedDuration::from_millis(20));
    clock.close().await;
    slow.close().await;
    server.shutdown().await;
}

#[tokio::test]
async fn instances_have_their_own_schedules() {
    let server = Running::start();
    server.schedule("fast", "@every 30ms").await;
    server.schedule("slower", "@every 70ms").await;
    let mut fast = server.read("fast").await;
    let mut slower = server.read("slower").await;
    let (fast_fires, slower_fires) = tokio::join!(fast.take(3), slower.take(3));
    for fire in &fast_fires {
        assert_eq!(fire.metadata["schedule"], "@every 30ms");
    }
    for fire in &slower_fires {
        assert_eq!(fire.metadata["schedule"], "@every 70ms");
    }
    assert_on_grid(&fast_fires, SignedDuration::from_millis(30));
    assert_on_grid(&slower_fires, SignedDuration::from_millis(70));
    fast.close().await;
    slower.close().await;
    server.shutdown().await;
}

#[tokio::test]
async fn a_re_init_changes_the_schedule_of_an_open_stream() {
    let server = Running::start();
    server.schedule("reloaded", "@every 1h").await;
    let mut stream = server.read("reloaded").await;
    server
        .init(
            "reloaded",
            &[("schedule", "@every 25ms"), ("timeZone", "Europe/Berlin")],
        )
        .await
        .expect("re-Init");
    let fires = stream.take(2).await;
    for fire in &fires {
        assert_eq!(fire.metadata["schedule"], "@every 25ms");
        assert_eq!(fire.metadata["timeZone"], "Europe/Berlin");
    }
    assert_on_grid(&fires, SignedDuration::from_millis(25));
    stream.close().await;
    server.shutdown().await;
}
