//! Pub/sub under faults, against both reference brokers: the component killed with -9 and
//! restarted mid-stream, and plugd itself killed with -9 and restarted. Published and received
//! messages are counted: nothing the broker accepted is lost (duplicates are allowed and
//! reported). `plugd-memory` keeps messages in its own process memory, so messages it held when
//! *it* was killed are gone with it; its component-restart test checks that the subscription
//! resumes and that everything published afterwards arrives.

mod support;

use std::{
    collections::{BTreeMap, HashMap},
    time::{Duration, Instant},
};

use plugd::{
    config::{AppConfig, AppProtocol, Config},
    proto::runtime::{self as rt, dapr_client::DaprClient},
};
use support::{
    ChildGuard, PlugdProcess, RedisServer, TestDirs,
    apps::{self, Answer},
    binary, spawn_component, start_plugd,
};

const WAIT: Duration = Duration::from_secs(30);

enum Broker {
    Memory,
    Redis(RedisServer),
}

impl Broker {
    fn redis() -> Self {
        Self::Redis(RedisServer::start())
    }

    fn socket(&self) -> &'static str {
        match self {
            Self::Memory => "memory",
            Self::Redis(_) => "redis",
        }
    }

    fn spawn(&self, dirs: &TestDirs) -> ChildGuard {
        let bin = format!("plugd-{}", self.socket());
        spawn_component(&bin, &dirs.sockets, self.socket(), &[])
    }

    fn component_yaml(&self) -> String {
        let metadata = match self {
            Self::Memory => "  - name: maxInFlight\n    value: \"8\"\n".to_string(),
            Self::Redis(server) => format!(
                "  - name: redisHost\n    value: \"{}\"\n  - name: processingTimeout\n    value: 1s\n  - name: redeliverInterval\n    value: 200ms\n",
                server.address()
            ),
        };
        format!(
            "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: pubsub\nspec:\n  type: pubsub.{}\n  version: v1\n  metadata:\n{metadata}",
            self.socket()
        )
    }

    /// Whether the broker keeps messages when its own process dies.
    fn durable(&self) -> bool {
        matches!(self, Self::Redis(_))
    }
}

fn kill9(guard: &mut ChildGuard) {
    let _ = guard.child.kill();
    let _ = guard.child.wait();
}

/// Publishes `data` through plugd, retrying (bounded) while the component is unavailable.
async fn publish_until_accepted(
    client: &mut DaprClient<tonic::transport::Channel>,
    topic: &str,
    data: &str,
) {
    let deadline = Instant::now() + WAIT;
    loop {
        let r = client
            .publish_event(rt::PublishEventRequest {
                pubsub_name: "pubsub".into(),
                topic: topic.into(),
                data: data.as_bytes().to_vec(),
                data_content_type: "text/plain".into(),
                metadata: HashMap::new(),
            })
            .await;
        match r {
            Ok(_) => return,
            Err(e) if Instant::now() < deadline => {
                assert!(
                    matches!(e.code(), tonic::Code::Unavailable | tonic::Code::Internal),
                    "unexpected publish error: {e:?}"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(e) => panic!("publish of {data} not accepted within {WAIT:?}: {e:?}"),
        }
    }
}

/// How many times each payload was received.
fn counts(events: &[apps::Received]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for e in events {
        *m.entry(String::from_utf8_lossy(&e.data).into_owned())
            .or_insert(0) += 1;
    }
    m
}

fn all_received(events: &[apps::Received], prefix: &str, n: usize) -> bool {
    let c = counts(events);
    (0..n).all(|i| c.contains_key(&format!("{prefix}-{i}")))
}

fn report(what: &str, events: &[apps::Received], published: usize) {
    let c = counts(events);
    let duplicates: usize = c.values().map(|n| n - 1).sum();
    println!(
        "{what}: published {published}, received {} distinct, {duplicates} duplicates",
        c.len()
    );
}

async fn component_restart(broker: Broker) {
    let dirs = TestDirs::new();
    let mut component = broker.spawn(&dirs);
    dirs.write_resource("pubsub.yaml", &broker.component_yaml());
    let app = apps::grpc_app(
        vec![apps::grpc_subscription("pubsub", "orders")],
        apps::always(Answer::Success),
    )
    .await;
    let mut config = Config::for_tests(dirs.sockets.clone(), vec![dirs.resources.clone()]);
    config.app = Some(AppConfig {
        address: ([127, 0, 0, 1], app.port).into(),
        protocol: AppProtocol::Grpc,
        token: None,
        max_concurrency: None,
        call_timeout: Duration::from_secs(10),
    });
    let plugd = start_plugd(config).await.expect("plugd starts");
    let mut client = plugd.grpc_client().await;

    for i in 0..20 {
        publish_until_accepted(&mut client, "orders", &format!("a-{i}")).await;
    }
    app.recorder
        .wait_for(WAIT, "the first batch", |e| all_received(e, "a", 20))
        .await;

    // Mid-stream: messages the app has not accepted yet are pending in the broker.
    let mut pending = 0;
    if broker.durable() {
        app.recorder.set_policy(apps::always(Answer::Retry));
        pending = 20;
        for i in 0..pending {
            publish_until_accepted(&mut client, "orders", &format!("b-{i}")).await;
        }
        app.recorder
            .wait_for(WAIT, "a rejected delivery", |e| {
                e.iter().any(|e| e.data.starts_with(b"b-"))
            })
            .await;
    }
    kill9(&mut component);
    app.recorder.set_policy(apps::always(Answer::Success));
    let restarted = Instant::now();
    let _component = broker.spawn(&dirs);
    publish_until_accepted(&mut client, "orders", "c-0").await;
    app.recorder
        .wait_for(WAIT, "the first message after the restart", |e| {
            e.iter().any(|e| e.data == b"c-0")
        })
        .await;
    println!(
        "{}: subscription resumed {:?} after the component restarted",
        broker.socket(),
        restarted.elapsed()
    );
    for i in 1..20 {
        publish_until_accepted(&mut client, "orders", &format!("c-{i}")).await;
    }
    let events = app
        .recorder
        .wait_for(WAIT, "everything accepted by the broker", |e| {
            all_received(e, "c", 20) && all_received(e, "b", pending)
        })
        .await;
    report(broker.socket(), &events, 40 + pending);
    plugd.stop().await;
}

async fn plugd_restart(broker: Broker) {
    let dirs = TestDirs::new();
    let _component = broker.spawn(&dirs);
    dirs.write_resource("pubsub.yaml", &broker.component_yaml());
    // Everything is rejected until plugd has been killed: all of it is unacked at the kill.
    let app = apps::grpc_app(
        vec![apps::grpc_subscription("pubsub", "orders")],
        apps::always(Answer::Retry),
    )
    .await;
    let port = app.port.to_string();
    let flags = ["--app-port", port.as_str(), "--app-protocol", "grpc"];
    let bin = binary("plugd");
    let mut first = PlugdProcess::spawn_with(&bin, &dirs, "faultapp", "warn", &flags);
    first.wait_healthy(WAIT).await;
    let mut client = DaprClient::connect(format!("http://127.0.0.1:{}", first.grpc_port))
        .await
        .expect("connect to plugd");
    let n = 30;
    for i in 0..n {
        publish_until_accepted(&mut client, "orders", &format!("m-{i}")).await;
    }
    app.recorder
        .wait_for(WAIT, "deliveries before the kill", |e| e.len() >= 5)
        .await;
    kill9(&mut first.guard);
    app.recorder.set_policy(apps::always(Answer::Success));
    let restarted = Instant::now();
    let second = PlugdProcess::spawn_with(&bin, &dirs, "faultapp", "warn", &flags);
    second.wait_healthy(WAIT).await;
    let events = app
        .recorder
        .wait_for(WAIT, "every message after plugd restarted", |e| {
            all_received(e, "m", n)
        })
        .await;
    println!(
        "{}: all {n} messages delivered {:?} after plugd was restarted",
        broker.socket(),
        restarted.elapsed()
    );
    report(broker.socket(), &events, n);
    drop(second);
}

#[tokio::test]
async fn memory_component_killed_and_restarted() {
    component_restart(Broker::Memory).await;
}

#[tokio::test]
async fn redis_component_killed_mid_stream_loses_nothing() {
    component_restart(Broker::redis()).await;
}

#[tokio::test]
async fn plugd_killed_with_memory_loses_nothing() {
    plugd_restart(Broker::Memory).await;
}

#[tokio::test]
async fn plugd_killed_with_redis_loses_nothing() {
    plugd_restart(Broker::redis()).await;
}
