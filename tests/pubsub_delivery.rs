//! Pub/sub end to end: the app publishes through plugd (gRPC and HTTP), `plugd-memory` holds
//! the messages, and plugd delivers them to a real gRPC or HTTP app, acking by its answers.

mod support;

use std::{collections::HashMap, time::Duration};

use plugd::{
    config::{AppConfig, AppProtocol, Config},
    proto::runtime as rt,
};
use support::{
    ChildGuard, RunningPlugd, TestDirs,
    apps::{self, Answer, TestApp},
    spawn_component, start_plugd,
};

const WAIT: Duration = Duration::from_secs(20);

fn pubsub_yaml(name: &str, socket: &str, extra: &str) -> String {
    format!(
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: {name}\nspec:\n  type: pubsub.{socket}\n  version: v1\n  metadata:\n  - name: maxInFlight\n    value: \"1\"\n{extra}"
    )
}

struct Setup {
    dirs: TestDirs,
    _component: ChildGuard,
    plugd: RunningPlugd,
    app: TestApp,
}

async fn setup(app: TestApp, protocol: AppProtocol, extra_resources: &[(&str, String)]) -> Setup {
    let dirs = TestDirs::new();
    let component = spawn_component("plugd-memory", &dirs.sockets, "memory", &[]);
    dirs.write_resource("pubsub.yaml", &pubsub_yaml("pubsub", "memory", ""));
    for (file, yaml) in extra_resources {
        dirs.write_resource(file, yaml);
    }
    let mut config = Config::for_tests(dirs.sockets.clone(), vec![dirs.resources.clone()]);
    config.app = Some(AppConfig {
        address: ([127, 0, 0, 1], app.port).into(),
        protocol,
        token: None,
        max_concurrency: None,
        call_timeout: Duration::from_secs(10),
    });
    let plugd = start_plugd(config).await.expect("plugd starts");
    Setup {
        dirs,
        _component: component,
        plugd,
        app,
    }
}

async fn publish(plugd: &RunningPlugd, topic: &str, data: &[u8], content_type: &str) {
    let mut client = plugd.grpc_client().await;
    client
        .publish_event(rt::PublishEventRequest {
            pubsub_name: "pubsub".into(),
            topic: topic.into(),
            data: data.to_vec(),
            data_content_type: content_type.into(),
            metadata: HashMap::new(),
        })
        .await
        .expect("publish");
}

#[tokio::test]
async fn grpc_app_receives_cloudevents_with_extensions() {
    let app = apps::grpc_app(
        vec![apps::grpc_subscription("pubsub", "orders")],
        apps::always(Answer::Success),
    )
    .await;
    let s = setup(app, AppProtocol::Grpc, &[]).await;
    publish(&s.plugd, "orders", br#"{"n": 1}"#, "application/json").await;
    let events = s
        .app
        .recorder
        .wait_for(WAIT, "one event", |e| !e.is_empty())
        .await;
    let e = &events[0];
    assert_eq!(e.topic, "orders");
    assert_eq!(e.pubsub, "pubsub");
    assert_eq!(e.path, "");
    assert_eq!(e.content_type, "application/json");
    let data: serde_json::Value = serde_json::from_slice(&e.data).expect("json data");
    assert_eq!(data, serde_json::json!({"n": 1}));
    assert_eq!(e.envelope["topic"], "orders");
    assert_eq!(e.envelope["pubsubname"], "pubsub");
    assert!(e.envelope.get("time").is_some());
    assert_eq!(
        e.headers.get("pubsubname").map(String::as_str),
        Some("pubsub")
    );
    assert_eq!(e.id.len(), 36, "a UUID id");
    s.plugd.stop().await;
}

#[tokio::test]
async fn retry_redelivers_until_success_and_order_is_kept() {
    // The first delivery of every event is answered RETRY, the second SUCCESS.
    let policy: apps::Policy = std::sync::Arc::new(|_, seen| {
        if seen == 0 {
            Answer::Retry
        } else {
            Answer::Success
        }
    });
    let app = apps::grpc_app(vec![apps::grpc_subscription("pubsub", "jobs")], policy).await;
    let s = setup(app, AppProtocol::Grpc, &[]).await;
    for i in 0..5 {
        publish(
            &s.plugd,
            "jobs",
            format!("job-{i}").as_bytes(),
            "text/plain",
        )
        .await;
    }
    let events = s
        .app
        .recorder
        .wait_for(WAIT, "every job delivered twice", |e| e.len() >= 10)
        .await;
    for i in 0..5 {
        let text = format!("job-{i}");
        let n = events.iter().filter(|e| e.data == text.as_bytes()).count();
        assert_eq!(n, 2, "{text} delivered {n} times");
    }
    // One at a time (subscription concurrency 1, maxInFlight 1): RETRY, then SUCCESS, per job,
    // in publish order.
    let order: Vec<String> = events
        .iter()
        .map(|e| String::from_utf8_lossy(&e.data).into_owned())
        .collect();
    let expected: Vec<String> = (0..5)
        .flat_map(|i| [format!("job-{i}"), format!("job-{i}")])
        .collect();
    assert_eq!(order, expected);
    s.plugd.stop().await;
}

#[tokio::test]
async fn drop_goes_to_the_dead_letter_topic() {
    let mut sub = apps::grpc_subscription("pubsub", "payments");
    sub.dead_letter_topic = "payments-dead".into();
    let policy: apps::Policy = std::sync::Arc::new(|r, _| {
        if r.topic == "payments" {
            Answer::Drop
        } else {
            Answer::Success
        }
    });
    let app = apps::grpc_app(
        vec![sub, apps::grpc_subscription("pubsub", "payments-dead")],
        policy,
    )
    .await;
    let s = setup(app, AppProtocol::Grpc, &[]).await;
    publish(&s.plugd, "payments", b"pay-1", "text/plain").await;
    let events = s
        .app
        .recorder
        .wait_for(WAIT, "the dead-lettered event", |e| {
            e.iter().any(|e| e.topic == "payments-dead")
        })
        .await;
    let original = events
        .iter()
        .find(|e| e.topic == "payments")
        .expect("original delivery");
    let dead = events
        .iter()
        .find(|e| e.topic == "payments-dead")
        .expect("dead letter");
    assert_eq!(dead.id, original.id, "the same CloudEvent");
    assert_eq!(dead.data, b"pay-1");
    s.plugd.stop().await;
}

#[tokio::test]
async fn http_app_routes_rules_and_status_handling() {
    let subscribe = serde_json::json!([
        {"pubsubname": "pubsub", "topic": "a", "route": "/on-a"},
        {"pubsubname": "pubsub", "topic": "b",
         "routes": {"rules": [{"match": "event.data.kind == \"book\"", "path": "/books"}],
                    "default": "/other"}},
        {"pubsubname": "pubsub", "topic": "gone", "route": "/gone"}
    ]);
    let policy: apps::Policy = std::sync::Arc::new(|r, _| {
        if r.path == "/gone" {
            Answer::NotFound
        } else {
            Answer::Success
        }
    });
    let app = apps::http_app(subscribe, policy).await;
    let s = setup(app, AppProtocol::Http, &[]).await;
    publish(&s.plugd, "a", b"hello", "text/plain").await;
    publish(&s.plugd, "b", br#"{"kind":"book"}"#, "application/json").await;
    publish(&s.plugd, "b", br#"{"kind":"pen"}"#, "application/json").await;
    publish(&s.plugd, "gone", b"x", "text/plain").await;
    let events = s
        .app
        .recorder
        .wait_for(WAIT, "four deliveries", |e| e.len() >= 4)
        .await;
    let paths: std::collections::BTreeSet<&str> = events.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        ["/books", "/gone", "/on-a", "/other"].into_iter().collect()
    );
    let a = events.iter().find(|e| e.path == "/on-a").expect("a");
    assert_eq!(a.data, b"hello");
    assert_eq!(
        a.headers.get("content-type").map(String::as_str),
        Some("application/cloudevents+json")
    );
    assert_eq!(
        a.headers.get("pubsubname").map(String::as_str),
        Some("pubsub")
    );
    // 404 drops: the event is not redelivered.
    publish(&s.plugd, "a", b"after", "text/plain").await;
    let events = s
        .app
        .recorder
        .wait_for(WAIT, "the next event", |e| {
            e.iter().any(|e| e.data == b"after")
        })
        .await;
    assert_eq!(events.iter().filter(|e| e.path == "/gone").count(), 1);
    s.plugd.stop().await;
}

#[tokio::test]
async fn declarative_subscription_with_rules() {
    let yaml = "apiVersion: dapr.io/v2alpha1\nkind: Subscription\nmetadata:\n  name: orders-sub\nspec:\n  pubsubname: pubsub\n  topic: orders\n  routes:\n    rules:\n    - match: event.type == \"big\"\n      path: /big\n    default: /orders\nscopes:\n- testapp\n";
    let app = apps::http_app(serde_json::json!([]), apps::always(Answer::Success)).await;
    let s = setup(
        app,
        AppProtocol::Http,
        &[("subscription.yaml", yaml.to_string())],
    )
    .await;
    let http = reqwest::Client::new();
    let url = format!("http://{}/v1.0/publish/pubsub/orders", s.plugd.http);
    let resp = http
        .post(&url)
        .query(&[("metadata.cloudevent.type", "big")])
        .header("content-type", "application/json")
        .body(r#"{"size": 10}"#)
        .send()
        .await
        .expect("publish");
    assert_eq!(resp.status(), 204);
    let resp = http
        .post(&url)
        .header("content-type", "application/json")
        .body(r#"{"size": 1}"#)
        .send()
        .await
        .expect("publish");
    assert_eq!(resp.status(), 204);
    let events = s
        .app
        .recorder
        .wait_for(WAIT, "two deliveries", |e| e.len() >= 2)
        .await;
    let big = events.iter().find(|e| e.path == "/big").expect("big");
    assert_eq!(big.envelope["type"], "big");
    assert_eq!(big.envelope["data"]["size"], 10);
    let small = events
        .iter()
        .find(|e| e.path == "/orders")
        .expect("default");
    assert_eq!(small.envelope["type"], "com.dapr.event.sent");
    let _ = &s.dirs;
    s.plugd.stop().await;
}

#[tokio::test]
async fn publish_errors_follow_dapr() {
    let app = apps::http_app(serde_json::json!([]), apps::always(Answer::Success)).await;
    let scoped = pubsub_yaml(
        "scoped",
        "memory",
        "  - name: publishingScopes\n    value: \"testapp=allowed\"\n",
    );
    let s = setup(app, AppProtocol::Http, &[("scoped.yaml", scoped)]).await;
    let http = reqwest::Client::new();
    let base = format!("http://{}/v1.0", s.plugd.http);
    let check = |resp: reqwest::Response, status: u16, code: &'static str| async move {
        assert_eq!(resp.status(), status);
        let body: serde_json::Value = resp.json().await.expect("error body");
        assert_eq!(body["errorCode"], code, "{body}");
    };
    let r = http
        .post(format!("{base}/publish/nope/t"))
        .body("x")
        .send()
        .await
        .expect("send");
    check(r, 404, "ERR_PUBSUB_NOT_FOUND").await;
    let r = http
        .post(format!("{base}/publish/pubsub/t?metadata.rawPayload=maybe"))
        .body("x")
        .send()
        .await
        .expect("send");
    check(r, 400, "ERR_PUBSUB_REQUEST_METADATA").await;
    let r = http
        .post(format!("{base}/publish/scoped/other"))
        .body("x")
        .send()
        .await
        .expect("send");
    check(r, 403, "ERR_PUBSUB_FORBIDDEN").await;
    let r = http
        .post(format!("{base}/publish/scoped/allowed"))
        .body("x")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 204);
    // An app CloudEvent that is not a JSON object.
    let r = http
        .post(format!("{base}/publish/pubsub/t"))
        .header("content-type", "application/cloudevents+json")
        .body("[1,2]")
        .send()
        .await
        .expect("send");
    check(r, 400, "ERR_PUBSUB_CLOUD_EVENTS_SER").await;

    // gRPC: unknown pubsub is INVALID_ARGUMENT with DAPR_PUBSUB_NOT_FOUND.
    let mut client = s.plugd.grpc_client().await;
    let err = client
        .publish_event(rt::PublishEventRequest {
            pubsub_name: "nope".into(),
            topic: "t".into(),
            ..Default::default()
        })
        .await
        .expect_err("unknown pubsub");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("pubsub nope is not found"));
    s.plugd.stop().await;
}

#[tokio::test]
async fn bulk_publish_over_grpc_and_http() {
    let app = apps::grpc_app(
        vec![apps::grpc_subscription("pubsub", "bulk")],
        apps::always(Answer::Success),
    )
    .await;
    let s = setup(app, AppProtocol::Grpc, &[]).await;
    let mut client = s.plugd.grpc_client().await;
    let entries = (0..3)
        .map(|i| rt::BulkPublishRequestEntry {
            entry_id: format!("e{i}"),
            event: format!("grpc-{i}").into_bytes(),
            content_type: "text/plain".into(),
            metadata: HashMap::new(),
        })
        .collect();
    let resp = client
        .bulk_publish_event_alpha1(rt::BulkPublishRequest {
            pubsub_name: "pubsub".into(),
            topic: "bulk".into(),
            entries,
            metadata: HashMap::new(),
        })
        .await
        .expect("bulk publish")
        .into_inner();
    assert!(resp.failed_entries.is_empty(), "{resp:?}");
    // Duplicate entry ids are refused.
    let dup = vec![
        rt::BulkPublishRequestEntry {
            entry_id: "x".into(),
            ..Default::default()
        };
        2
    ];
    let err = client
        .bulk_publish_event(rt::BulkPublishRequest {
            pubsub_name: "pubsub".into(),
            topic: "bulk".into(),
            entries: dup,
            metadata: HashMap::new(),
        })
        .await
        .expect_err("duplicate ids");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);

    // HTTP, with Node's `entryID` spelling.
    let resp = reqwest::Client::new()
        .post(format!(
            "http://{}/v1.0-alpha1/publish/bulk/pubsub/bulk",
            s.plugd.http
        ))
        .json(&serde_json::json!([
            {"entryID": "h1", "event": {"a": 1}, "contentType": "application/json"},
            {"entryId": "h2", "event": "plain", "contentType": "text/plain"}
        ]))
        .send()
        .await
        .expect("http bulk");
    assert_eq!(resp.status(), 204);
    let events = s
        .app
        .recorder
        .wait_for(WAIT, "five deliveries", |e| e.len() >= 5)
        .await;
    assert!(events.iter().any(|e| e.data == b"plain"));
    assert!(events.iter().any(|e| e.data == b"grpc-2"));
    s.plugd.stop().await;
}
