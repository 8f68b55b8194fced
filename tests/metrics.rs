//! Prometheus metrics recorded as plugd works: component calls (count, latency, errors), API
//! requests by route and status, pub/sub outcomes (delivered, acked, nacked, redelivered,
//! dead-lettered), input binding events and discovery events, read from `/metrics` of a plugd
//! running in this process against real reference components and a real HTTP app.

mod support;

use std::{collections::HashMap, time::Duration};

use plugd::{
    config::{AppConfig, AppProtocol, Config},
    proto::runtime as rt,
};
use support::{
    TestDirs,
    apps::{self, Answer},
    eventually, spawn_component,
};

const WAIT: Duration = Duration::from_secs(20);

/// One sample line: `name{k="v",...} value`.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: HashMap<String, String>,
    value: f64,
}

fn parse(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let value = value.parse::<f64>().ok()?;
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, rest.strip_suffix('}')?),
                None => (series, ""),
            };
            let labels = labels
                .split("\",")
                .filter(|p| !p.is_empty())
                .filter_map(|p| {
                    let (k, v) = p.split_once("=\"")?;
                    Some((k.to_string(), v.trim_end_matches('"').to_string()))
                })
                .collect();
            Some(Sample {
                name: name.to_string(),
                labels,
                value,
            })
        })
        .collect()
}

/// The sum of the samples of `name` whose labels include all of `labels`.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .sum()
}

async fn scrape(addr: std::net::SocketAddr) -> Vec<Sample> {
    let text = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .expect("scrape")
        .text()
        .await
        .expect("metrics text");
    parse(&text)
}

#[tokio::test]
async fn work_shows_up_in_the_metrics() {
    let dirs = TestDirs::new();
    let _memory = spawn_component("plugd-memory", &dirs.sockets, "memory", &[]);
    let _cron = spawn_component("plugd-cron", &dirs.sockets, "cron", &[]);
    // A socket file nobody serves: an unusable-socket discovery event.
    drop(std::os::unix::net::UnixListener::bind(dirs.sockets.join("ghost.sock")).expect("bind"));
    dirs.write_resource(
        "store.yaml",
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: store\nspec:\n  type: state.memory\n  version: v1\n",
    );
    dirs.write_resource(
        "pubsub.yaml",
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: bus\nspec:\n  type: pubsub.memory\n  version: v1\n",
    );
    dirs.write_resource(
        "cron.yaml",
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: ticks\nspec:\n  type: bindings.cron\n  version: v1\n  metadata:\n  - name: schedule\n    value: \"@every 100ms\"\n  - name: route\n    value: /ticks\n",
    );
    // `orders`: refused once, then taken. `bad`: dropped, to a dead-letter topic.
    let app = apps::http_app(
        serde_json::json!([
            {"pubsubname": "bus", "topic": "orders", "route": "/orders"},
            {"pubsubname": "bus", "topic": "bad", "route": "/bad", "deadLetterTopic": "bad-dead"},
        ]),
        std::sync::Arc::new(|r: &apps::Received, seen: usize| match r.path.as_str() {
            "/orders" if seen == 0 => Answer::Retry,
            "/bad" => Answer::Drop,
            _ => Answer::Success,
        }),
    )
    .await;
    let mut config = Config::for_tests(dirs.sockets.clone(), vec![dirs.resources.clone()]);
    config.metrics_addr = Some(([127, 0, 0, 1], 0).into());
    config.app = Some(AppConfig {
        address: ([127, 0, 0, 1], app.port).into(),
        protocol: AppProtocol::Http,
        token: None,
        max_concurrency: None,
        call_timeout: Duration::from_secs(10),
    });
    let shutdown = tokio_util::sync::CancellationToken::new();
    let built = plugd::App::build(config, shutdown.clone())
        .await
        .expect("plugd starts");
    let metrics = built.metrics_addr().expect("metrics served");
    let (grpc, http) = (
        built.grpc_addr().expect("grpc"),
        built.http_addr().expect("http"),
    );
    let task = tokio::spawn(built.run());

    // HTTP: a save, a read, an unknown store and a path no route matches.
    let web = reqwest::Client::new();
    let base = format!("http://{http}/v1.0");
    let saved = web
        .post(format!("{base}/state/store"))
        .json(&serde_json::json!([{"key": "k", "value": "v"}]))
        .send()
        .await
        .expect("save");
    assert_eq!(saved.status(), 204);
    let read = web
        .get(format!("{base}/state/store/k"))
        .send()
        .await
        .expect("get");
    assert_eq!(read.status(), 200);
    let unknown = web
        .get(format!("{base}/state/nope/k"))
        .send()
        .await
        .expect("get unknown");
    assert_eq!(unknown.status(), 400);
    let unmatched = web
        .get(format!("http://{http}/no/such/api"))
        .send()
        .await
        .expect("unmatched");
    assert_eq!(unmatched.status(), 404);

    // gRPC: a read, a save the component refuses (stale etag), publishes.
    let mut client = rt::dapr_client::DaprClient::connect(format!("http://{grpc}"))
        .await
        .expect("connect");
    client
        .get_state(rt::GetStateRequest {
            store_name: "store".into(),
            key: "k".into(),
            ..Default::default()
        })
        .await
        .expect("grpc get");
    let refused = client
        .save_state(rt::SaveStateRequest {
            store_name: "store".into(),
            states: vec![plugd::proto::common::StateItem {
                key: "k".into(),
                value: b"w".to_vec(),
                etag: Some(plugd::proto::common::Etag {
                    value: "999999".into(),
                }),
                ..Default::default()
            }],
        })
        .await
        .expect_err("a stale etag is refused");
    let unknown_store = client
        .get_state(rt::GetStateRequest {
            store_name: "nope".into(),
            key: "k".into(),
            ..Default::default()
        })
        .await
        .expect_err("unknown store");
    for topic in ["orders", "bad"] {
        client
            .publish_event(rt::PublishEventRequest {
                pubsub_name: "bus".into(),
                topic: topic.into(),
                data: br#"{"n":1}"#.to_vec(),
                data_content_type: "application/json".into(),
                metadata: HashMap::new(),
            })
            .await
            .expect("publish");
    }

    let samples = eventually(
        WAIT,
        "pub/sub and binding outcomes in the metrics",
        || async {
            let s = scrape(metrics).await;
            let orders = [("component", "bus"), ("topic", "orders")];
            let done = value(&s, "plugd_pubsub_acked_total", &orders) >= 1.0
                && value(&s, "plugd_pubsub_redelivered_total", &orders) >= 1.0
                && value(&s, "plugd_pubsub_dead_lettered_total", &[("topic", "bad")]) >= 1.0
                && value(
                    &s,
                    "plugd_input_binding_events_total",
                    &[("component", "ticks")],
                ) >= 1.0;
            done.then_some(s)
        },
    )
    .await;
    let s = &samples;
    let has = |name: &str, labels: &[(&str, &str)]| value(s, name, labels);

    // Component calls: counted by method and code, timed, errors apart.
    let set_ok = [("component", "store"), ("method", "Set"), ("code", "OK")];
    assert!(has("plugd_component_calls_total", &set_ok) >= 1.0, "{s:#?}");
    let get = [("component", "store"), ("method", "Get")];
    assert!(has("plugd_component_calls_total", &get) >= 2.0);
    assert!(has("plugd_component_call_duration_seconds_count", &get) >= 2.0);
    assert!(
        s.iter()
            .any(|x| x.name == "plugd_component_call_duration_seconds_bucket"
                && x.labels.get("le").map(String::as_str) == Some("+Inf")
                && x.labels.get("method").map(String::as_str) == Some("Get")),
        "histogram buckets are exported"
    );
    // A stale etag: the component answers FAILED_PRECONDITION (the API answers ABORTED).
    let set_refused = [
        ("component", "store"),
        ("method", "Set"),
        ("code", "FailedPrecondition"),
    ];
    let errors: Vec<_> = s
        .iter()
        .filter(|x| x.name == "plugd_component_call_errors_total")
        .collect();
    assert_eq!(
        has("plugd_component_call_errors_total", &set_refused),
        1.0,
        "{errors:?}"
    );
    assert_eq!(has("plugd_component_calls_total", &set_refused), 1.0);
    assert_eq!(
        has(
            "plugd_component_call_errors_total",
            &[("component", "store"), ("code", "OK")]
        ),
        0.0,
        "successes are not errors"
    );
    assert!(has("plugd_component_calls_total", &[("method", "Ping")]) >= 1.0);
    assert!(
        has(
            "plugd_component_calls_total",
            &[("component", "bus"), ("method", "Publish")]
        ) >= 2.0
    );

    // API requests by route and status.
    let route = "/v1.0/state/{store}/{key}";
    assert_eq!(
        has(
            "plugd_http_requests_total",
            &[("method", "GET"), ("route", route), ("status", "200")]
        ),
        1.0
    );
    assert_eq!(
        has(
            "plugd_http_requests_total",
            &[("method", "GET"), ("route", route), ("status", "400")]
        ),
        1.0
    );
    assert_eq!(
        has(
            "plugd_http_requests_total",
            &[("route", "/v1.0/state/{store}"), ("status", "204")]
        ),
        1.0
    );
    assert_eq!(
        has(
            "plugd_http_requests_total",
            &[("route", "unmatched"), ("status", "404")]
        ),
        1.0
    );
    assert!(
        has(
            "plugd_http_request_duration_seconds_count",
            &[("route", route)]
        ) >= 2.0
    );
    let get_state = "/dapr.proto.runtime.v1.Dapr/GetState";
    assert_eq!(
        has(
            "plugd_grpc_requests_total",
            &[("method", get_state), ("code", "OK")]
        ),
        1.0
    );
    let unknown_code = plugd::metrics::code_name(unknown_store.code());
    assert_eq!(
        has(
            "plugd_grpc_requests_total",
            &[("method", get_state), ("code", unknown_code)]
        ),
        1.0
    );
    assert_eq!(
        has(
            "plugd_grpc_requests_total",
            &[
                ("method", "/dapr.proto.runtime.v1.Dapr/SaveState"),
                ("code", plugd::metrics::code_name(refused.code()))
            ]
        ),
        1.0
    );

    // Pub/sub outcomes.
    let orders = [("component", "bus"), ("topic", "orders")];
    assert_eq!(
        has(
            "plugd_pubsub_published_total",
            &[("topic", "orders"), ("outcome", "ok")]
        ),
        1.0
    );
    assert!(has("plugd_pubsub_delivered_total", &orders) >= 2.0);
    assert_eq!(has("plugd_pubsub_nacked_total", &orders), 1.0);
    assert_eq!(has("plugd_pubsub_redelivered_total", &orders), 1.0);
    assert_eq!(has("plugd_pubsub_acked_total", &orders), 1.0);
    let bad = [("component", "bus"), ("topic", "bad")];
    assert_eq!(has("plugd_pubsub_dead_lettered_total", &bad), 1.0);
    assert_eq!(has("plugd_pubsub_dropped_total", &bad), 0.0);
    assert!(has("plugd_pubsub_delivery_duration_seconds_count", &orders) >= 2.0);

    // Input binding events and discovery.
    assert!(
        has(
            "plugd_input_binding_events_total",
            &[("component", "ticks"), ("outcome", "ok")]
        ) >= 1.0
    );
    assert!(has("plugd_discovery_events_total", &[("event", "added")]) >= 2.0);
    assert!(has("plugd_discovery_events_total", &[("event", "unusable")]) >= 1.0);

    // The registry's gauges are still there.
    assert_eq!(has("plugd_component_ready", &[("component", "store")]), 1.0);

    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
}
