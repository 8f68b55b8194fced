//! Quick figures (not the rigorous benchmark): plugd start-up time with 1 and 20 sockets,
//! sequential state `Get` latency straight to the component vs through plugd (gRPC and HTTP),
//! measured in alternating rounds in one run, and pub/sub messages per second end to end
//! (publish through plugd → component → plugd → gRPC app → ack) with plugd-memory and
//! plugd-redis (when `redis-server` is installed).
//!
//! Run with `cargo run --release --example quick_measure`.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use plugd::proto::{common, components as pb, runtime as rt};
use support::TestDirs;

async fn startup(n: usize) -> anyhow::Result<Duration> {
    let dirs = TestDirs::new();
    let mut children = Vec::new();
    for i in 0..n {
        children.push(support::spawn_sqlite(&dirs.sockets, &format!("s{i}")));
        dirs.state_component(&format!("store{i}"), &format!("s{i}"), "");
    }
    let config =
        plugd::config::Config::for_tests(dirs.sockets.clone(), vec![dirs.resources.clone()]);
    let started = Instant::now();
    let plugd = support::start_plugd(config).await?;
    let elapsed = started.elapsed();
    plugd.stop().await;
    Ok(elapsed)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p) as usize]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    for n in [1, 20] {
        // One warm-up, then the median of three.
        startup(n).await?;
        let mut runs = [startup(n).await?, startup(n).await?, startup(n).await?];
        runs.sort();
        println!(
            "start-up (discovery + Init/Features/Ping of every component) with {n:2} socket(s): {:?}",
            runs[1]
        );
    }

    let dirs = TestDirs::new();
    let _sqlite = support::spawn_sqlite(&dirs.sockets, "sqlite");
    dirs.state_component("statestore", "sqlite", "");
    let config =
        plugd::config::Config::for_tests(dirs.sockets.clone(), vec![dirs.resources.clone()]);
    let plugd = support::start_plugd(config).await?;
    let mut api = plugd.grpc_client().await;
    let value = vec![b'x'; 1024];
    api.save_state(rt::SaveStateRequest {
        store_name: "statestore".into(),
        states: vec![common::StateItem {
            key: "k".into(),
            value,
            ..Default::default()
        }],
    })
    .await?;

    let channel =
        plugd::component::dial(&dirs.sockets.join("sqlite.sock"), Duration::from_secs(2)).await?;
    let conn = plugd::component::Connection::new(
        channel,
        "statestore",
        dirs.sockets.join("sqlite.sock"),
        Duration::from_secs(5),
    )?;
    let http = reqwest::Client::new();
    let url = plugd.http_url("/v1.0/state/statestore/k");

    let (mut direct, mut via_grpc, mut via_http) = (Vec::new(), Vec::new(), Vec::new());
    for _round in 0..10 {
        for _ in 0..200 {
            let t = Instant::now();
            conn.call(
                "Get",
                pb::GetRequest {
                    key: "testapp||k".into(),
                    ..Default::default()
                },
                |ch, r| async move {
                    pb::state_store_client::StateStoreClient::new(ch)
                        .get(r)
                        .await
                },
            )
            .await?;
            direct.push(t.elapsed());
        }
        for _ in 0..200 {
            let t = Instant::now();
            api.get_state(rt::GetStateRequest {
                store_name: "statestore".into(),
                key: "k".into(),
                ..Default::default()
            })
            .await?;
            via_grpc.push(t.elapsed());
        }
        for _ in 0..200 {
            let t = Instant::now();
            http.get(&url).send().await?.bytes().await?;
            via_http.push(t.elapsed());
        }
    }
    for v in [&mut direct, &mut via_grpc, &mut via_http] {
        v.sort();
    }
    let p50 = |v: &[Duration]| percentile(v, 0.5);
    println!("state Get, 1 KiB value, 1 in flight, 2000 calls each (p50 / p90):");
    println!(
        "  direct to component over UDS: {:?} / {:?}",
        p50(&direct),
        percentile(&direct, 0.9)
    );
    println!(
        "  through plugd gRPC:           {:?} / {:?}",
        p50(&via_grpc),
        percentile(&via_grpc, 0.9)
    );
    println!(
        "  through plugd HTTP:           {:?} / {:?}",
        p50(&via_http),
        percentile(&via_http, 0.9)
    );
    println!(
        "  p50 ratio gRPC/direct {:.2}, HTTP/direct {:.2}",
        p50(&via_grpc).as_secs_f64() / p50(&direct).as_secs_f64(),
        p50(&via_http).as_secs_f64() / p50(&direct).as_secs_f64()
    );
    plugd.stop().await;

    println!("pub/sub end to end, 5000 messages published in bulk calls of 100, gRPC app:");
    println!("  plugd-memory: {:.0} messages/s", pubsub_rate(None).await?);
    if std::process::Command::new("redis-server")
        .arg("--version")
        .output()
        .is_ok()
    {
        let redis = support::RedisServer::start();
        println!(
            "  plugd-redis:  {:.0} messages/s",
            pubsub_rate(Some(&redis)).await?
        );
    }
    Ok(())
}

/// Messages per second from the first publish until the app has received all of them, with
/// plugd's default subscription concurrency (1: in order).
async fn pubsub_rate(redis: Option<&support::RedisServer>) -> anyhow::Result<f64> {
    use support::apps;
    let dirs = TestDirs::new();
    let (bin, socket, metadata) = match redis {
        None => ("plugd-memory", "memory", String::new()),
        Some(r) => (
            "plugd-redis",
            "redis",
            format!("  - name: redisHost\n    value: \"{}\"\n", r.address()),
        ),
    };
    let _component = support::spawn_component(bin, &dirs.sockets, socket, &[]);
    dirs.write_resource(
        "pubsub.yaml",
        &format!("apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: pubsub\nspec:\n  type: pubsub.{socket}\n  version: v1\n  metadata:\n{metadata}"),
    );
    let app = apps::grpc_app(
        vec![apps::grpc_subscription("pubsub", "rate")],
        apps::always(apps::Answer::Success),
    )
    .await;
    let mut config =
        plugd::config::Config::for_tests(dirs.sockets.clone(), vec![dirs.resources.clone()]);
    config.app = Some(plugd::config::AppConfig {
        address: ([127, 0, 0, 1], app.port).into(),
        protocol: plugd::config::AppProtocol::Grpc,
        token: None,
        max_concurrency: None,
        call_timeout: Duration::from_secs(10),
    });
    let plugd = support::start_plugd(config).await?;
    let mut client = plugd.grpc_client().await;
    let n = 5000;
    let started = Instant::now();
    for batch in 0..n / 100 {
        let entries = (0..100)
            .map(|i| rt::BulkPublishRequestEntry {
                entry_id: format!("{i}"),
                event: format!("m-{batch}-{i}").into_bytes(),
                content_type: "text/plain".into(),
                metadata: Default::default(),
            })
            .collect();
        let failed = client
            .bulk_publish_event_alpha1(rt::BulkPublishRequest {
                pubsub_name: "pubsub".into(),
                topic: "rate".into(),
                entries,
                metadata: Default::default(),
            })
            .await?
            .into_inner()
            .failed_entries;
        anyhow::ensure!(failed.is_empty(), "failed entries: {failed:?}");
    }
    app.recorder
        .wait_for_count(Duration::from_secs(120), n)
        .await;
    let rate = n as f64 / started.elapsed().as_secs_f64();
    plugd.stop().await;
    Ok(rate)
}
