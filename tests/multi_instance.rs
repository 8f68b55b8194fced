//! Several plugd instances on one Redis, as real processes: each instance is a `plugd` with its
//! own `plugd-redis` and its own app, as in one Pod per replica. Instances with the same app id
//! share state and one consumer group; another app id gets its own copy of every message; an
//! instance killed with -9 loses nothing (its pending messages are reclaimed by the others).

mod support;

use std::{collections::HashSet, time::Duration};

use support::{
    ChildGuard, PlugdProcess, RedisServer, TestDirs,
    apps::{self, Answer, TestApp},
    binary, spawn_component,
};

const WAIT: Duration = Duration::from_secs(40);

/// One replica: plugd + plugd-redis + an HTTP app subscribed to `orders`.
struct Instance {
    _dirs: TestDirs,
    component: ChildGuard,
    plugd: PlugdProcess,
    app: TestApp,
}

impl Instance {
    /// `pubsub_extra`: more metadata lines for the pub/sub component; `state`: also a
    /// `state.redis` store.
    async fn start(
        redis: &RedisServer,
        app_id: &str,
        answer: Answer,
        pubsub_extra: &str,
        state: bool,
    ) -> Self {
        let dirs = TestDirs::new();
        let component = spawn_component("plugd-redis", &dirs.sockets, "redis", &[]);
        let host = redis.address();
        dirs.write_resource(
            "pubsub.yaml",
            &format!(
                "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: pubsub\nspec:\n  type: pubsub.redis\n  version: v1\n  metadata:\n  - name: redisHost\n    value: \"{host}\"\n{pubsub_extra}"
            ),
        );
        if state {
            dirs.write_resource(
                "state.yaml",
                &format!(
                    "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: statestore\nspec:\n  type: state.redis\n  version: v1\n  metadata:\n  - name: redisHost\n    value: \"{host}\"\n"
                ),
            );
        }
        let app = apps::http_app(
            serde_json::json!([{"pubsubname": "pubsub", "topic": "orders", "route": "/orders"}]),
            apps::always(answer),
        )
        .await;
        let plugd = PlugdProcess::spawn_with(
            &binary("plugd"),
            &dirs,
            app_id,
            "warn",
            &[
                "--app-port",
                &app.port.to_string(),
                "--app-protocol",
                "http",
            ],
        );
        plugd.wait_healthy(WAIT).await;
        Self {
            _dirs: dirs,
            component,
            plugd,
            app,
        }
    }

    /// The ids (the `n` of `{"n": ...}`) of the events this instance's app took.
    fn received(&self) -> Vec<u64> {
        self.app
            .recorder
            .snapshot()
            .iter()
            .filter(|e| e.path == "/orders")
            .filter_map(|e| e.envelope["data"]["n"].as_u64())
            .collect()
    }

    fn kill9(&mut self) {
        for guard in [&mut self.plugd.guard, &mut self.component] {
            let _ = guard.child.kill();
            let _ = guard.child.wait();
        }
    }
}

async fn publish(http: &reqwest::Client, via: &Instance, n: u64) {
    let resp = http
        .post(format!("{}/publish/pubsub/orders", via.plugd.base()))
        .json(&serde_json::json!({ "n": n }))
        .send()
        .await
        .expect("publish");
    assert_eq!(resp.status(), 204, "publish {n}");
}

/// Waits (bounded) until `check` holds, polling the apps' records.
async fn until(what: &str, check: impl Fn() -> bool) {
    support::eventually(WAIT, what, || {
        let ok = check();
        async move { ok.then_some(()) }
    })
    .await;
}

#[tokio::test]
async fn one_copy_per_app_id_and_one_consumer_per_message_within_an_app_id() {
    let redis = RedisServer::start();
    let a1 = Instance::start(&redis, "orders", Answer::Success, "", false).await;
    let a2 = Instance::start(&redis, "orders", Answer::Success, "", false).await;
    let audit = Instance::start(&redis, "audit", Answer::Success, "", false).await;
    let http = reqwest::Client::new();
    const N: u64 = 60;
    for n in 0..N {
        // Published through either replica: it is one app.
        publish(&http, if n % 2 == 0 { &a1 } else { &a2 }, n).await;
    }
    let all: HashSet<u64> = (0..N).collect();
    until("every message at one of the two orders replicas", || {
        let got: HashSet<u64> = a1.received().into_iter().chain(a2.received()).collect();
        got == all
    })
    .await;
    until("every message at the audit app", || {
        audit.received().into_iter().collect::<HashSet<_>>() == all
    })
    .await;
    // Within the app id, each message went to exactly one replica, once.
    let (r1, r2) = (a1.received(), a2.received());
    // (How they share depends on when each replica's stream opened; not asserted.)
    assert_eq!(r1.len() + r2.len(), N as usize, "a1 {r1:?}, a2 {r2:?}");
    println!(
        "consumer group: {} messages split {} / {} between two replicas; the other app id got all {}",
        N,
        r1.len(),
        r2.len(),
        audit.received().len()
    );
}

#[tokio::test]
async fn a_replica_killed_with_its_messages_pending_loses_none() {
    let redis = RedisServer::start();
    // Pending messages of a dead consumer are claimed by the others after 1 s.
    let quick = "  - name: processingTimeout\n    value: 1s\n  - name: redeliverInterval\n    value: 200ms\n";
    // a1's app never succeeds, so everything it is given stays pending on its consumer.
    let mut a1 = Instance::start(&redis, "orders", Answer::Fail, quick, false).await;
    let a2 = Instance::start(&redis, "orders", Answer::Success, quick, false).await;
    let http = reqwest::Client::new();
    const N: u64 = 40;
    for n in 0..N {
        publish(&http, &a2, n).await;
    }
    until("a1 to have been handed some messages", || {
        !a1.received().is_empty()
    })
    .await;
    let handed_to_a1: HashSet<u64> = a1.received().into_iter().collect();
    a1.kill9();
    let killed = std::time::Instant::now();
    let all: HashSet<u64> = (0..N).collect();
    until("every message at the surviving replica", || {
        a2.received().into_iter().collect::<HashSet<_>>() == all
    })
    .await;
    println!(
        "replica killed with {} messages handed to it and unacked: all {N} reached the survivor {:?} after the kill",
        handed_to_a1.len(),
        killed.elapsed()
    );
}

#[tokio::test]
async fn replicas_share_state_and_see_each_others_etag_conflicts() {
    let redis = RedisServer::start();
    let a1 = Instance::start(&redis, "orders", Answer::Success, "", true).await;
    let a2 = Instance::start(&redis, "orders", Answer::Success, "", true).await;
    let other = Instance::start(&redis, "billing", Answer::Success, "", true).await;
    let http = reqwest::Client::new();
    let url = |i: &Instance, path: &str| format!("{}/state/statestore{path}", i.plugd.base());

    // Written through one replica, read through the other.
    let resp = http
        .post(url(&a1, ""))
        .json(&serde_json::json!([{"key": "cart", "value": {"items": 1}}]))
        .send()
        .await
        .expect("save");
    assert_eq!(resp.status(), 204);
    let resp = http.get(url(&a2, "/cart")).send().await.expect("get");
    assert_eq!(resp.status(), 200);
    let etag = resp.headers()["etag"].to_str().expect("etag").to_string();
    assert_eq!(
        resp.json::<serde_json::Value>().await.expect("json"),
        serde_json::json!({"items": 1})
    );
    // Another app id has its own keys (`<app-id>||cart`).
    let resp = http.get(url(&other, "/cart")).send().await.expect("get");
    assert_eq!(resp.status(), 204, "billing does not see orders' cart");

    // Both replicas hold the same etag; the first write wins, the second is a conflict.
    let save = |i: &Instance, items: u32| {
        http.post(url(i, ""))
            .json(&serde_json::json!([{"key": "cart", "value": {"items": items}, "etag": etag}]))
            .send()
    };
    assert_eq!(save(&a2, 2).await.expect("save").status(), 204);
    let resp = save(&a1, 3).await.expect("save");
    assert_eq!(resp.status(), 409);
    let body: serde_json::Value = resp.json().await.expect("json");
    assert_eq!(body["errorCode"], "ERR_STATE_SAVE");
    let resp = http.get(url(&a1, "/cart")).send().await.expect("get");
    assert_eq!(
        resp.json::<serde_json::Value>().await.expect("json"),
        serde_json::json!({"items": 2})
    );
}
