//! The whole state path: the app-facing gRPC and HTTP APIs of an in-process plugd, over a real
//! `plugd-sqlite` child process on a Unix socket.

mod support;

use std::{collections::HashMap, time::Duration};

use plugd::proto::{
    common::{Etag, StateItem},
    components as pb,
    runtime::{
        DeleteBulkStateRequest, DeleteStateRequest, ExecuteStateTransactionRequest,
        GetBulkStateRequest, GetStateRequest, SaveStateRequest, TransactionalStateOperation,
        dapr_client::DaprClient,
    },
};
use prost::Message;
use reqwest::StatusCode;
use serde_json::{Value, json};
use support::{ChildGuard, RunningPlugd, TestDirs};
use tonic::{Code, transport::Channel};
use tonic_types::StatusExt;

const STORE: &str = "statestore";

/// A sqlite child serving `sqlite.sock` and plugd in-process with the components written so far.
struct Env {
    dirs: TestDirs,
    sqlite: ChildGuard,
    plugd: RunningPlugd,
}

impl Env {
    /// `statestore` (default key prefix) plus whatever `extra` writes into the resources.
    async fn start(extra: impl FnOnce(&TestDirs)) -> Self {
        let dirs = TestDirs::new();
        dirs.state_component(STORE, "sqlite", "");
        extra(&dirs);
        let sqlite = support::spawn_sqlite(&dirs.sockets, "sqlite");
        let plugd = start(&dirs).await;
        Self {
            dirs,
            sqlite,
            plugd,
        }
    }

    async fn grpc(&self) -> DaprClient<Channel> {
        self.plugd.grpc_client().await
    }
}

async fn start(dirs: &TestDirs) -> RunningPlugd {
    let config =
        plugd::config::Config::for_tests(dirs.sockets.clone(), vec![dirs.resources.clone()]);
    support::start_plugd(config)
        .await
        .unwrap_or_else(|e| panic!("plugd did not start: {e}"))
}

fn item(key: &str, value: &[u8], etag: Option<&str>) -> StateItem {
    StateItem {
        key: key.into(),
        value: value.to_vec(),
        etag: etag.map(|e| Etag { value: e.into() }),
        metadata: HashMap::new(),
        options: None,
    }
}

async fn save(
    c: &mut DaprClient<Channel>,
    store: &str,
    items: Vec<StateItem>,
) -> Result<(), tonic::Status> {
    c.save_state(SaveStateRequest {
        store_name: store.into(),
        states: items,
    })
    .await
    .map(|_| ())
}

/// (data, etag) of one key.
async fn get(
    c: &mut DaprClient<Channel>,
    store: &str,
    key: &str,
) -> Result<(Vec<u8>, String), tonic::Status> {
    let r = c
        .get_state(GetStateRequest {
            store_name: store.into(),
            key: key.into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    Ok((r.data, r.etag))
}

async fn etag_of(c: &mut DaprClient<Channel>, key: &str) -> String {
    let (data, etag) = get(c, STORE, key).await.expect("get");
    assert!(!data.is_empty(), "{key} is missing");
    assert!(!etag.is_empty(), "{key} has no etag");
    etag
}

/// Asserts the code and `ErrorInfo.reason`, and that the `google.rpc.Status` in
/// `grpc-status-details-bin` agrees with the status (the Python SDK raises otherwise).
fn assert_rich(status: &tonic::Status, code: Code, reason: &str) {
    assert_eq!(status.code(), code, "unexpected status {status:?}");
    let info = status
        .get_details_error_info()
        .unwrap_or_else(|| panic!("no ErrorInfo in {status:?}"));
    assert_eq!(info.reason, reason);
    assert_eq!(info.domain, "dapr.io");
    let inner = tonic_types::pb::Status::decode(status.details()).expect("details decode");
    assert_eq!(
        inner.code, code as i32,
        "details trailer code differs from status"
    );
    assert_eq!(
        inner.message,
        status.message(),
        "details trailer message differs from status"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_state_round_trips_and_errors() {
    let env = Env::start(|_| {}).await;
    let mut c = env.grpc().await;

    // Bytes round-trip, etag returned.
    let bytes = [0u8, 1, 2, 0xff, b'x'];
    save(&mut c, STORE, vec![item("k1", &bytes, None)])
        .await
        .expect("save k1");
    let (data, etag1) = get(&mut c, STORE, "k1").await.expect("get k1");
    assert_eq!(data, bytes);
    assert!(!etag1.is_empty(), "no etag returned");

    // Missing key: empty data and etag, no error.
    assert_eq!(
        get(&mut c, STORE, "nope").await.expect("get missing"),
        (Vec::new(), String::new())
    );

    // A matching etag writes and changes the etag; the old one is then stale.
    save(&mut c, STORE, vec![item("k1", b"v2", Some(&etag1))])
        .await
        .expect("save with current etag");
    let (data, etag2) = get(&mut c, STORE, "k1").await.expect("get k1");
    assert_eq!(data, b"v2");
    assert_ne!(etag2, etag1);
    let err = save(&mut c, STORE, vec![item("k1", b"v3", Some(&etag1))])
        .await
        .expect_err("stale etag accepted");
    assert_rich(&err, Code::Aborted, "ERR_STATE_SAVE");
    assert!(
        err.message().contains("possible etag mismatch"),
        "{}",
        err.message()
    );
    assert_eq!(get(&mut c, STORE, "k1").await.expect("get").0, b"v2");

    // An etag the store never issued is a mismatch too (what the Python SDK's examples expect).
    let err = save(&mut c, STORE, vec![item("k1", b"v3", Some("9999"))])
        .await
        .expect_err("foreign etag accepted");
    assert_rich(&err, Code::Aborted, "ERR_STATE_SAVE");

    // Delete with a stale etag: ABORTED, value kept; with the current one: gone.
    let err = c
        .delete_state(DeleteStateRequest {
            store_name: STORE.into(),
            key: "k1".into(),
            etag: Some(Etag {
                value: etag1.clone(),
            }),
            ..Default::default()
        })
        .await
        .expect_err("delete with stale etag accepted");
    assert_rich(&err, Code::Aborted, "ERR_STATE_DELETE");
    assert_eq!(get(&mut c, STORE, "k1").await.expect("get").0, b"v2");
    c.delete_state(DeleteStateRequest {
        store_name: STORE.into(),
        key: "k1".into(),
        etag: Some(Etag { value: etag2 }),
        ..Default::default()
    })
    .await
    .expect("delete with current etag");
    assert_eq!(get(&mut c, STORE, "k1").await.expect("get").0, b"");

    // Empty key.
    let err = save(&mut c, STORE, vec![item("", b"v", None)])
        .await
        .expect_err("empty key accepted");
    assert_rich(&err, Code::InvalidArgument, "ERR_STATE_SAVE");

    // Unknown store and illegal keys.
    let err = get(&mut c, "nosuchstore", "k")
        .await
        .expect_err("unknown store");
    assert_rich(&err, Code::InvalidArgument, "DAPR_STATE_NOT_FOUND");
    assert_eq!(err.message(), "state store nosuchstore is not found");
    let err = save(&mut c, "nosuchstore", vec![item("k", b"v", None)])
        .await
        .expect_err("unknown store");
    assert_rich(&err, Code::InvalidArgument, "DAPR_STATE_NOT_FOUND");
    let err = get(&mut c, STORE, "a||b").await.expect_err("illegal key");
    assert_rich(&err, Code::InvalidArgument, "DAPR_STATE_ILLEGAL_KEY");
    let err = save(&mut c, STORE, vec![item("a||b", b"v", None)])
        .await
        .expect_err("illegal key");
    assert_rich(&err, Code::InvalidArgument, "DAPR_STATE_ILLEGAL_KEY");

    env.plugd.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_bulk_and_transactions() {
    let env = Env::start(|_| {}).await;
    let mut c = env.grpc().await;

    // Bulk save (BulkSet), then GetBulkState: keys un-prefixed, missing key empty.
    save(
        &mut c,
        STORE,
        vec![
            item("a", b"A", None),
            item("b", b"B", None),
            item("c", b"C", None),
        ],
    )
    .await
    .expect("bulk save");
    let items = c
        .get_bulk_state(GetBulkStateRequest {
            store_name: STORE.into(),
            keys: vec!["a".into(), "b".into(), "missing".into()],
            parallelism: 1,
            metadata: HashMap::new(),
        })
        .await
        .expect("bulk get")
        .into_inner()
        .items;
    assert_eq!(items.len(), 3, "{items:?}");
    let by_key: HashMap<_, _> = items.iter().map(|i| (i.key.as_str(), i)).collect();
    assert_eq!(by_key["a"].data, b"A");
    assert_eq!(by_key["b"].data, b"B");
    assert!(!by_key["a"].etag.is_empty());
    assert!(by_key["missing"].data.is_empty());
    assert!(by_key["missing"].etag.is_empty());
    assert!(items.iter().all(|i| i.error.is_empty()), "{items:?}");

    // DeleteBulkState (BulkDelete).
    c.delete_bulk_state(DeleteBulkStateRequest {
        store_name: STORE.into(),
        states: vec![item("a", b"", None), item("b", b"", None)],
    })
    .await
    .expect("bulk delete");
    assert_eq!(get(&mut c, STORE, "a").await.expect("get").0, b"");
    assert_eq!(get(&mut c, STORE, "b").await.expect("get").0, b"");
    assert_eq!(get(&mut c, STORE, "c").await.expect("get").0, b"C");

    // A transaction: upsert + delete, applied together.
    let tx = |ops: Vec<(&str, StateItem)>| ExecuteStateTransactionRequest {
        store_name: STORE.into(),
        operations: ops
            .into_iter()
            .map(|(op, request)| TransactionalStateOperation {
                operation_type: op.into(),
                request: Some(request),
            })
            .collect(),
        metadata: HashMap::new(),
    };
    c.execute_state_transaction(tx(vec![
        ("upsert", item("t1", b"T1", None)),
        ("delete", item("c", b"", None)),
    ]))
    .await
    .expect("transaction");
    assert_eq!(get(&mut c, STORE, "t1").await.expect("get").0, b"T1");
    assert_eq!(get(&mut c, STORE, "c").await.expect("get").0, b"");

    // A transaction with a stale etag changes nothing and is INTERNAL, as in Dapr.
    let old = etag_of(&mut c, "t1").await;
    save(&mut c, STORE, vec![item("t1", b"T1b", None)])
        .await
        .expect("save t1");
    let err = c
        .execute_state_transaction(tx(vec![
            ("upsert", item("t2", b"T2", None)),
            ("upsert", item("t1", b"T1c", Some(&old))),
        ]))
        .await
        .expect_err("stale etag in transaction accepted");
    assert_rich(&err, Code::Internal, "ERR_STATE_TRANSACTION");
    assert!(err.message().contains("etag mismatch"), "{}", err.message());
    assert_eq!(
        get(&mut c, STORE, "t2").await.expect("get").0,
        b"",
        "transaction half applied"
    );
    assert_eq!(get(&mut c, STORE, "t1").await.expect("get").0, b"T1b");

    // Unknown operation type.
    let err = c
        .execute_state_transaction(tx(vec![("merge", item("t1", b"x", None))]))
        .await
        .expect_err("unknown operation accepted");
    assert_eq!(err.code(), Code::Unimplemented);
    let err = c
        .execute_state_transaction(ExecuteStateTransactionRequest {
            store_name: "nosuchstore".into(),
            ..Default::default()
        })
        .await
        .expect_err("unknown store");
    assert_rich(&err, Code::InvalidArgument, "DAPR_STATE_NOT_FOUND");

    env.plugd.stop().await;
}

/// Reads a key straight from the component, as instance `instance` (bypassing plugd's prefixing).
async fn component_get(env: &Env, instance: &str, key: &str) -> Vec<u8> {
    let channel = plugd::component::dial(
        &env.dirs.sockets.join("sqlite.sock"),
        Duration::from_secs(5),
    )
    .await
    .expect("dial sqlite");
    let conn = plugd::component::Connection::new(
        channel,
        instance,
        env.dirs.sockets.join("sqlite.sock"),
        Duration::from_secs(5),
    )
    .expect("connection");
    let req = conn.request(
        pb::GetRequest {
            key: key.into(),
            ..Default::default()
        },
        Duration::from_secs(5),
    );
    pb::state_store_client::StateStoreClient::new(conn.channel())
        .get(req)
        .await
        .expect("component get")
        .into_inner()
        .data
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_prefix_is_what_the_component_stores() {
    let env = Env::start(|dirs| {
        dirs.state_component("byname", "sqlite", "");
        dirs.state_component("raw", "sqlite", "");
        // keyPrefix metadata items appended to the generated YAMLs.
        for (name, strategy) in [("byname", "name"), ("raw", "none")] {
            let path = dirs.resources.join(format!("{name}.yaml"));
            let mut yaml = std::fs::read_to_string(&path).expect("read yaml");
            yaml.push_str(&format!("  - name: keyPrefix\n    value: {strategy}\n"));
            std::fs::write(&path, yaml).expect("write yaml");
        }
    })
    .await;
    let mut c = env.grpc().await;
    for store in [STORE, "byname", "raw"] {
        save(&mut c, store, vec![item("k", store.as_bytes(), None)])
            .await
            .expect("save");
        assert_eq!(
            get(&mut c, store, "k").await.expect("get").0,
            store.as_bytes()
        );
    }
    assert_eq!(
        component_get(&env, STORE, "testapp||k").await,
        b"statestore"
    );
    assert_eq!(component_get(&env, STORE, "k").await, b"");
    assert_eq!(component_get(&env, "byname", "byname||k").await, b"byname");
    assert_eq!(component_get(&env, "raw", "k").await, b"raw");
    env.plugd.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_expires_values() {
    let env = Env::start(|_| {}).await;
    let mut c = env.grpc().await;
    let mut it = item("ttl", b"short-lived", None);
    it.metadata.insert("ttlInSeconds".into(), "1".into());
    save(&mut c, STORE, vec![it]).await.expect("save with ttl");
    let r = c
        .get_state(GetStateRequest {
            store_name: STORE.into(),
            key: "ttl".into(),
            ..Default::default()
        })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(r.data, b"short-lived");
    assert!(r.metadata.contains_key("ttlExpireTime"), "{:?}", r.metadata);
    support::eventually(Duration::from_secs(10), "the ttl value to expire", || {
        let mut c = c.clone();
        async move {
            let (data, etag) = get(&mut c, STORE, "ttl").await.expect("get");
            (data.is_empty() && etag.is_empty()).then_some(())
        }
    })
    .await;
    env.plugd.stop().await;
}

async fn error_body(resp: reqwest::Response, status: StatusCode, code: &str) -> Value {
    assert_eq!(
        resp.status(),
        status,
        "unexpected status for {}",
        resp.url()
    );
    let body: Value = resp.json().await.expect("JSON error body");
    assert_eq!(body["errorCode"], code, "{body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_state_api() {
    let env = Env::start(|_| {}).await;
    let http = reqwest::Client::new();
    let url = |p: &str| env.plugd.http_url(p);

    // Save: a JSON string is stored JSON-encoded, with its quotes.
    let r = http
        .post(url("/v1.0/state/statestore"))
        .json(&json!([{"key": "h1", "value": "abc"}, {"key": "h2", "value": {"n": 1}}]))
        .send()
        .await
        .expect("save");
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = http
        .get(url("/v1.0/state/statestore/h1"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), StatusCode::OK);
    let etag1 = r
        .headers()
        .get("etag")
        .and_then(|v| v.to_str().ok())
        .expect("ETag header")
        .to_string();
    assert_eq!(r.text().await.expect("body"), "\"abc\"");
    // gRPC sees the same stored bytes.
    let mut c = env.grpc().await;
    assert_eq!(get(&mut c, STORE, "h1").await.expect("get").0, b"\"abc\"");

    // Missing key: 204.
    let r = http
        .get(url("/v1.0/state/statestore/missing"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), StatusCode::NO_CONTENT);

    // Stale etag: 409.
    let r = http
        .post(url("/v1.0/state/statestore"))
        .json(&json!([{"key": "h1", "value": "abc2", "etag": etag1}]))
        .send()
        .await
        .expect("save");
    assert_eq!(r.status(), StatusCode::NO_CONTENT, "current etag refused");
    let r = http
        .post(url("/v1.0/state/statestore"))
        .json(&json!([{"key": "h1", "value": "abc3", "etag": etag1}]))
        .send()
        .await
        .expect("save");
    error_body(r, StatusCode::CONFLICT, "ERR_STATE_SAVE").await;
    let r = http
        .delete(url("/v1.0/state/statestore/h1"))
        .header("If-Match", &etag1)
        .send()
        .await
        .expect("delete");
    error_body(r, StatusCode::CONFLICT, "ERR_STATE_DELETE").await;
    let etag2 = etag_of(&mut c, "h1").await;

    // Bulk: `data` embedded as JSON.
    let r = http
        .post(url("/v1.0/state/statestore/bulk"))
        .json(&json!({"keys": ["h1", "h2", "missing"]}))
        .send()
        .await
        .expect("bulk");
    assert_eq!(r.status(), StatusCode::OK);
    let items: Vec<Value> = r.json().await.expect("bulk JSON");
    assert_eq!(items.len(), 3, "{items:?}");
    let find = |k: &str| {
        items
            .iter()
            .find(|i| i["key"] == k)
            .cloned()
            .unwrap_or_else(|| panic!("no {k} in {items:?}"))
    };
    assert_eq!(find("h1")["data"], json!("abc2"));
    assert_eq!(find("h1")["etag"], json!(etag2));
    assert_eq!(find("h2")["data"], json!({"n": 1}));
    assert!(find("missing").get("data").is_none(), "{items:?}");

    // Transaction as the Node SDK sends it: null metadata, object-form etag.
    let r = http
        .post(url("/v1.0/state/statestore/transaction"))
        .json(&json!({
            "operations": [
                {"operation": "upsert", "request": {"key": "h1", "value": "tx", "etag": {"value": etag2}, "options": {}}},
                {"operation": "delete", "request": {"key": "h2", "options": {}}},
            ],
            "metadata": null,
        }))
        .send()
        .await
        .expect("transaction");
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = http
        .get(url("/v1.0/state/statestore/h1"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.text().await.expect("body"), "\"tx\"");
    let r = http
        .get(url("/v1.0/state/statestore/h2"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    // A stale etag inside a transaction is a 500, as in Dapr.
    let r = http
        .post(url("/v1.0/state/statestore/transaction"))
        .json(&json!({"operations": [{"operation": "upsert", "request": {"key": "h1", "value": "x", "etag": etag2}}]}))
        .send()
        .await
        .expect("transaction");
    error_body(
        r,
        StatusCode::INTERNAL_SERVER_ERROR,
        "ERR_STATE_TRANSACTION",
    )
    .await;

    // Delete without If-Match.
    let r = http
        .delete(url("/v1.0/state/statestore/h1"))
        .send()
        .await
        .expect("delete");
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = http
        .get(url("/v1.0/state/statestore/h1"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), StatusCode::NO_CONTENT);

    // Errors.
    let r = http
        .get(url("/v1.0/state/nosuchstore/k"))
        .send()
        .await
        .expect("get");
    let body = error_body(r, StatusCode::BAD_REQUEST, "ERR_STATE_STORE_NOT_FOUND").await;
    assert_eq!(body["message"], "state store nosuchstore is not found");
    let r = http
        .post(url("/v1.0/state/nosuchstore"))
        .json(&json!([{"key": "k", "value": 1}]))
        .send()
        .await
        .expect("save");
    error_body(r, StatusCode::BAD_REQUEST, "ERR_STATE_STORE_NOT_FOUND").await;
    let r = http
        .post(url("/v1.0/state/statestore"))
        .header("content-type", "application/json")
        .body("[{\"key\": ")
        .send()
        .await
        .expect("save");
    error_body(r, StatusCode::BAD_REQUEST, "ERR_MALFORMED_REQUEST").await;
    let r = http
        .post(url("/v1.0/state/statestore"))
        .json(&json!([{"value": 1}]))
        .send()
        .await
        .expect("save");
    error_body(r, StatusCode::BAD_REQUEST, "ERR_MALFORMED_REQUEST").await;
    let r = http
        .post(url("/v1.0/state/statestore"))
        .json(&json!([{"key": "a||b", "value": 1}]))
        .send()
        .await
        .expect("save");
    error_body(r, StatusCode::BAD_REQUEST, "ERR_MALFORMED_REQUEST").await;

    // An unknown store is reported before the body is looked at.
    let r = http
        .post(url("/v1.0/state/nosuchstore/transaction"))
        .body("not json")
        .send()
        .await
        .expect("transaction");
    error_body(r, StatusCode::BAD_REQUEST, "ERR_STATE_STORE_NOT_FOUND").await;

    // Keys named like the sub-resources are ordinary keys for GET, DELETE and saves.
    let r = http
        .post(url("/v1.0/state/statestore"))
        .json(&json!([{"key": "bulk", "value": "b"}, {"key": "transaction", "value": "t"}]))
        .send()
        .await
        .expect("save");
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    for (key, value) in [("bulk", "\"b\""), ("transaction", "\"t\"")] {
        let r = http
            .get(url(&format!("/v1.0/state/statestore/{key}")))
            .send()
            .await
            .expect("get");
        assert_eq!(r.status(), StatusCode::OK, "{key}");
        assert_eq!(r.text().await.expect("body"), value);
        let r = http
            .delete(url(&format!("/v1.0/state/statestore/{key}")))
            .send()
            .await
            .expect("delete");
        assert_eq!(r.status(), StatusCode::NO_CONTENT, "{key}");
    }
    let r = http
        .post(url("/v1.0/state/statestore/other"))
        .body("{}")
        .send()
        .await
        .expect("post");
    error_body(r, StatusCode::NOT_FOUND, "ERR_NOT_FOUND").await;

    // Health and metadata, with and without a trailing slash.
    for path in [
        "/v1.0/healthz",
        "/v1.0/healthz/",
        "/v1.0/healthz/outbound",
        "/v1.0/healthz/outbound/",
    ] {
        let r = http.get(url(path)).send().await.expect("healthz");
        assert_eq!(r.status(), StatusCode::NO_CONTENT, "{path}");
    }
    for path in ["/v1.0/metadata", "/v1.0/metadata/"] {
        let r = http.get(url(path)).send().await.expect("metadata");
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        let m: Value = r.json().await.expect("metadata JSON");
        assert_eq!(m["id"], "testapp");
        let components = m["components"].as_array().expect("components");
        assert_eq!(components.len(), 1, "{m}");
        let comp = &components[0];
        assert_eq!(comp["name"], STORE);
        assert_eq!(comp["type"], "state.sqlite");
        assert_eq!(comp["version"], "v1");
        let caps: Vec<&str> = comp["capabilities"]
            .as_array()
            .expect("capabilities")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert!(
            caps.contains(&"ETAG") && caps.contains(&"TRANSACTIONAL"),
            "{caps:?}"
        );
    }
    let r = http
        .post(url("/v1.0/state/statestore/"))
        .json(&json!([{"key": "slash", "value": 7}]))
        .send()
        .await
        .expect("save");
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = http
        .get(url("/v1.0/state/statestore/slash/"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.text().await.expect("body"), "7");

    env.plugd.stop().await;
}

/// Kills the component (SIGKILL: the socket file is left behind) and starts a new one on the
/// same socket name and database.
fn restart_sqlite(dirs: &TestDirs, sqlite: &mut ChildGuard) {
    sqlite.child.kill().expect("kill plugd-sqlite");
    sqlite.child.wait().expect("reap plugd-sqlite");
    *sqlite = support::spawn_sqlite(&dirs.sockets, "sqlite");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_survives_a_component_restart() {
    let Env {
        dirs,
        mut sqlite,
        plugd,
    } = Env::start(|_| {}).await;
    let mut c = plugd.grpc_client().await;
    save(&mut c, STORE, vec![item("durable", b"kept", None)])
        .await
        .expect("save");
    plugd.stop().await;

    restart_sqlite(&dirs, &mut sqlite);
    // A fresh plugd initialises the new component process and reads the old value.
    let plugd = start(&dirs).await;
    let mut c = plugd.grpc_client().await;
    assert_eq!(
        get(&mut c, STORE, "durable")
            .await
            .expect("get after restart")
            .0,
        b"kept"
    );
    plugd.stop().await;
}

/// A plugd that keeps running while its component restarts should serve again once the new
/// process listens. It does not: plugd never re-runs Init on the new process, whose instance
/// is uninitialised, so every call fails (see the report: lifecycle has no re-init).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_plugd_recovers_after_a_component_restart() {
    let mut env = Env::start(|_| {}).await;
    let mut c = env.grpc().await;
    save(&mut c, STORE, vec![item("durable", b"kept", None)])
        .await
        .expect("save");

    restart_sqlite(&env.dirs, &mut env.sqlite);
    // plugd sees the connection go, dials the new process and runs Init again; poll (bounded)
    // until a read succeeds.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut last = String::new();
    while tokio::time::Instant::now() < deadline {
        match get(&mut c, STORE, "durable").await {
            Ok((data, _)) if data == b"kept" => {
                env.plugd.stop().await;
                return;
            }
            Ok((data, _)) => last = format!("read {:?}", String::from_utf8_lossy(&data)),
            Err(e) => last = format!("{:?}: {}", e.code(), e.message()),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("plugd never read through the restarted component; last result: {last}");
}
