//! The Redis state store (`state.redis`): the real `plugd-redis` binary
//! against a real redis-server, driven over its Unix socket with the
//! generated gRPC clients as a host would, and the data checked in Redis.

mod support;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime};

use pb::state_options::StateConcurrency;
use pb::transactional_state_operation::Request as Op;
use plugd_component_sdk::client::for_instance;
use plugd_proto::components::pub_sub_client::PubSubClient;
use plugd_proto::components::state_store_client::StateStoreClient;
use plugd_proto::components::transactional_state_store_client::TransactionalStateStoreClient;
use plugd_proto::components::{self as pb};
use support::{RedisServer, WAIT, eventually};
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

/// The component process, killed on drop.
struct Component {
    child: Child,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Component {
    async fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let child = Command::new(env!("CARGO_BIN_EXE_plugd-redis"))
            .arg("--socket-folder")
            .arg(dir.path())
            .env("PLUGD_REDIS_LOG_LEVEL", "warn")
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn plugd-redis");
        let socket = dir.path().join("redis.sock");
        support::socket_accepting(&socket).await;
        Self {
            child,
            socket,
            _dir: dir,
        }
    }

    /// A client of the component instance `instance`, on a connection of its own.
    async fn store(&self, instance: &str) -> Store {
        let channel = plugd_component_sdk::client::connect(&self.socket)
            .await
            .expect("connect");
        Store {
            state: StateStoreClient::new(channel.clone()),
            tx: TransactionalStateStoreClient::new(channel),
            instance: instance.to_owned(),
        }
    }
}

impl Drop for Component {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One instance's state store, as the host calls it.
#[derive(Clone)]
struct Store {
    state: StateStoreClient<Channel>,
    tx: TransactionalStateStoreClient<Channel>,
    instance: String,
}

fn props(redis: &RedisServer, extra: &[(&str, &str)]) -> HashMap<String, String> {
    let mut properties = HashMap::from([("redisHost".to_owned(), redis.address())]);
    for (key, value) in extra {
        properties.insert((*key).to_owned(), (*value).to_owned());
    }
    properties
}

fn set_req(key: &str, value: &str) -> pb::SetRequest {
    pb::SetRequest {
        key: key.to_owned(),
        value: value.as_bytes().to_vec(),
        ..Default::default()
    }
}

fn with_etag(mut request: pb::SetRequest, etag: &str) -> pb::SetRequest {
    request.etag = Some(pb::Etag {
        value: etag.to_owned(),
    });
    request
}

fn with_ttl(mut request: pb::SetRequest, ttl: &str) -> pb::SetRequest {
    request
        .metadata
        .insert("ttlInSeconds".to_owned(), ttl.to_owned());
    request
}

fn first_write(mut request: pb::SetRequest) -> pb::SetRequest {
    request.options = Some(pb::StateOptions {
        concurrency: StateConcurrency::ConcurrencyFirstWrite as i32,
        consistency: 0,
    });
    request
}

fn del_req(key: &str, etag: Option<&str>) -> pb::DeleteRequest {
    pb::DeleteRequest {
        key: key.to_owned(),
        etag: etag.map(|value| pb::Etag {
            value: value.to_owned(),
        }),
        ..Default::default()
    }
}

fn op_set(request: pb::SetRequest) -> pb::TransactionalStateOperation {
    pb::TransactionalStateOperation {
        request: Some(Op::Set(request)),
    }
}

fn op_del(request: pb::DeleteRequest) -> pb::TransactionalStateOperation {
    pb::TransactionalStateOperation {
        request: Some(Op::Delete(request)),
    }
}

impl Store {
    fn req<T>(&self, message: T) -> Request<T> {
        for_instance(&self.instance, message).expect("instance name")
    }

    async fn init(&mut self, properties: HashMap<String, String>) -> Result<(), Status> {
        let request = self.req(pb::InitRequest {
            metadata: Some(pb::MetadataRequest { properties }),
        });
        self.state.init(request).await.map(drop)
    }

    async fn get(&mut self, key: &str) -> pb::GetResponse {
        let request = self.req(pb::GetRequest {
            key: key.to_owned(),
            ..Default::default()
        });
        self.state.get(request).await.expect("get").into_inner()
    }

    async fn etag(&mut self, key: &str) -> String {
        self.get(key).await.etag.expect("the key has an etag").value
    }

    async fn data(&mut self, key: &str) -> String {
        String::from_utf8(self.get(key).await.data).expect("utf-8")
    }

    async fn set(&mut self, request: pb::SetRequest) -> Result<(), Status> {
        let request = self.req(request);
        self.state.set(request).await.map(drop)
    }

    async fn delete(&mut self, request: pb::DeleteRequest) -> Result<(), Status> {
        let request = self.req(request);
        self.state.delete(request).await.map(drop)
    }

    async fn transact(
        &mut self,
        operations: Vec<pb::TransactionalStateOperation>,
    ) -> Result<(), Status> {
        let request = self.req(pb::TransactionalStateRequest {
            operations,
            metadata: HashMap::new(),
        });
        self.tx.transact(request).await.map(drop)
    }
}

/// Whether `result` failed with `code`; shows the result otherwise.
fn failed<T: std::fmt::Debug>(result: Result<T, Status>, code: Code) -> Status {
    match result {
        Err(status) if status.code() == code => status,
        other => panic!("expected {code:?}, got {other:?}"),
    }
}

fn is_mismatch<T: std::fmt::Debug>(result: Result<T, Status>) {
    failed(result, Code::FailedPrecondition);
}

async fn pttl(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> i64 {
    redis::cmd("PTTL")
        .arg(key)
        .query_async(conn)
        .await
        .expect("PTTL")
}

#[tokio::test]
async fn init_features_ping_and_errors() {
    let redis = RedisServer::start();
    let component = Component::start().await;
    let mut store = component.store("statestore").await;

    let ping = store.req(pb::PingRequest {});
    failed(store.state.ping(ping).await, Code::FailedPrecondition);

    let status = failed(
        store
            .init(props(&redis, &[("redisDB", "-1"), ("poolSize", "0")]))
            .await,
        Code::InvalidArgument,
    );
    assert!(
        status.message().contains("redisDB") && status.message().contains("poolSize"),
        "{status:?}"
    );

    let closed = support::free_port();
    let status = failed(
        store
            .init(HashMap::from([(
                "redisHost".to_owned(),
                format!("127.0.0.1:{closed}"),
            )]))
            .await,
        Code::Unavailable,
    );
    assert!(
        status.message().contains(&format!("127.0.0.1:{closed}")),
        "{status:?}"
    );

    // No consumerID needed (that is the pub/sub's); unknown keys are ignored.
    store
        .init(props(
            &redis,
            &[("actorStateStore", "true"), ("poolSize", "2")],
        ))
        .await
        .expect("init");
    let ping = store.req(pb::PingRequest {});
    store.state.ping(ping).await.expect("ping");

    let features = store.req(pb::FeaturesRequest {});
    let features = store.state.features(features).await.expect("features");
    assert_eq!(
        features.into_inner().features,
        ["ETAG", "TTL", "TRANSACTIONAL"]
    );

    // The pub/sub is still served on the same socket.
    let channel = plugd_component_sdk::client::connect(&component.socket)
        .await
        .expect("connect");
    let mut pubsub = PubSubClient::new(channel);
    let request = for_instance(
        "pubsub",
        pb::PubSubInitRequest {
            metadata: Some(pb::MetadataRequest {
                properties: props(&redis, &[("consumerID", "app")]),
            }),
        },
    )
    .expect("instance");
    pubsub.init(request).await.expect("pub/sub init");
}

#[tokio::test]
async fn crud_etags_and_first_write() {
    let redis = RedisServer::start();
    let component = Component::start().await;
    let mut store = component.store("statestore").await;
    store.init(props(&redis, &[])).await.expect("init");
    let mut redis_conn = redis.inspect(0).await;

    // Missing key: no data, no etag.
    let missing = store.get("app||nope").await;
    assert!(missing.data.is_empty() && missing.etag.is_none());

    let mut request = set_req("app||k", "v1");
    request.content_type = "text/plain".to_owned();
    store.set(request).await.expect("set");
    let got = store.get("app||k").await;
    assert_eq!(got.data, b"v1");
    assert_eq!(got.content_type, "text/plain");
    assert!(got.metadata.is_empty(), "no ttl: {:?}", got.metadata);
    let etag1 = got.etag.expect("etag").value;
    assert!(uuid::Uuid::try_parse(&etag1).is_ok(), "{etag1}");

    // The layout: a hash {data, version, contentType} under the key as given.
    let fields: HashMap<String, Vec<u8>> = redis::cmd("HGETALL")
        .arg("app||k")
        .query_async(&mut redis_conn)
        .await
        .expect("HGETALL");
    assert_eq!(fields["data"], b"v1");
    assert_eq!(fields["version"], etag1.as_bytes());
    assert_eq!(fields["contentType"], b"text/plain");
    assert_eq!(fields.len(), 3);

    // Set with the current etag: a new etag; the content type goes with the value.
    store
        .set(with_etag(set_req("app||k", "v2"), &etag1))
        .await
        .expect("matching etag");
    let got = store.get("app||k").await;
    assert_eq!(got.data, b"v2");
    assert!(got.content_type.is_empty());
    let etag2 = got.etag.expect("etag").value;
    assert_ne!(etag1, etag2);

    // Stale etag: FAILED_PRECONDITION, nothing written.
    let status = failed(
        store.set(with_etag(set_req("app||k", "v3"), &etag1)).await,
        Code::FailedPrecondition,
    );
    assert!(status.message().contains("etag"), "{status:?}");
    assert_eq!(store.data("app||k").await, "v2");
    // Etags compare as UUIDs, not as text.
    store
        .set(with_etag(set_req("app||k", "v3"), &etag2.to_uppercase()))
        .await
        .expect("same uuid in upper case");
    let etag3 = store.etag("app||k").await;

    // Not a version of this store: INVALID_ARGUMENT.
    for bad in ["17", "not-an-etag"] {
        let status = failed(
            store.set(with_etag(set_req("app||k", "x"), bad)).await,
            Code::InvalidArgument,
        );
        assert!(status.message().contains("etag"), "{status:?}");
        failed(
            store.delete(del_req("app||k", Some(bad))).await,
            Code::InvalidArgument,
        );
    }
    assert_eq!(store.data("app||k").await, "v3");

    // An etag for a missing key is a mismatch.
    is_mismatch(
        store
            .set(with_etag(set_req("app||other", "x"), &etag3))
            .await,
    );
    assert!(store.get("app||other").await.etag.is_none());

    // First-write without etag: only creates.
    is_mismatch(store.set(first_write(set_req("app||k", "fw"))).await);
    assert_eq!(store.data("app||k").await, "v3");
    store
        .set(first_write(set_req("app||fresh", "fw")))
        .await
        .expect("first write of a new key");
    assert_eq!(store.data("app||fresh").await, "fw");
    // First-write with an etag: the etag decides.
    store
        .set(first_write(with_etag(set_req("app||k", "v4"), &etag3)))
        .await
        .expect("first-write with the current etag");
    is_mismatch(
        store
            .set(first_write(with_etag(set_req("app||k", "v5"), &etag3)))
            .await,
    );
    // Last-write without etag overwrites.
    store.set(set_req("app||k", "v6")).await.expect("overwrite");
    let etag6 = store.etag("app||k").await;

    // Delete honours the etag.
    is_mismatch(store.delete(del_req("app||k", Some(&etag3))).await);
    assert_eq!(store.data("app||k").await, "v6");
    store
        .delete(del_req("app||k", Some(&etag6)))
        .await
        .expect("delete with etag");
    let gone = store.get("app||k").await;
    assert!(gone.data.is_empty() && gone.etag.is_none());
    is_mismatch(store.delete(del_req("app||k", Some(&etag6))).await);
    store
        .delete(del_req("app||k", None))
        .await
        .expect("deleting a missing key is fine");

    // Written again after the delete: the old etag does not come back.
    store.set(set_req("app||k", "again")).await.expect("set");
    is_mismatch(store.set(with_etag(set_req("app||k", "x"), &etag6)).await);

    // Values and keys are opaque bytes.
    let key = "app||weird key\n'\"{}";
    let value = vec![0, 159, 146, 150, 255];
    store
        .set(pb::SetRequest {
            key: key.to_owned(),
            value: value.clone(),
            ..Default::default()
        })
        .await
        .expect("binary set");
    assert_eq!(store.get(key).await.data, value);

    // A key that is not a hash (here a stream) is not state: refused, untouched.
    let _: String = redis::cmd("XADD")
        .arg("orders")
        .arg("*")
        .arg("data")
        .arg("x")
        .query_async(&mut redis_conn)
        .await
        .expect("XADD");
    let request = store.req(pb::GetRequest {
        key: "orders".to_owned(),
        ..Default::default()
    });
    let status = failed(store.state.get(request).await, Code::FailedPrecondition);
    assert!(status.message().contains("stream"), "{status:?}");
    failed(
        store.set(set_req("orders", "x")).await,
        Code::FailedPrecondition,
    );
    failed(
        store.delete(del_req("orders", None)).await,
        Code::FailedPrecondition,
    );
    let length: i64 = redis::cmd("XLEN")
        .arg("orders")
        .query_async(&mut redis_conn)
        .await
        .expect("XLEN");
    assert_eq!(length, 1);

    // The scripts are loaded at Init; after a SCRIPT FLUSH (or a Redis
    // restart) they are sent again.
    let _: String = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut redis_conn)
        .await
        .expect("SCRIPT FLUSH");
    store
        .set(set_req("app||k", "after flush"))
        .await
        .expect("set");
    assert_eq!(store.data("app||k").await, "after flush");
}

#[tokio::test]
async fn bulk_get_set_and_delete() {
    let redis = RedisServer::start();
    let component = Component::start().await;
    let mut store = component.store("statestore").await;
    store.init(props(&redis, &[])).await.expect("init");

    let bulk_set = |items: Vec<pb::SetRequest>| pb::BulkSetRequest {
        items,
        options: None,
    };
    let request = store.req(bulk_set(vec![
        set_req("a", "1"),
        set_req("b", "2"),
        with_ttl(set_req("c", "3"), "100"),
    ]));
    store.state.bulk_set(request).await.expect("bulk set");

    let request = store.req(pb::BulkGetRequest {
        items: ["a", "missing", "b", "c"]
            .iter()
            .map(|key| pb::GetRequest {
                key: (*key).to_owned(),
                ..Default::default()
            })
            .collect(),
        options: None,
    });
    let items = store
        .state
        .bulk_get(request)
        .await
        .expect("bulk get")
        .into_inner()
        .items;
    let keys: Vec<&str> = items.iter().map(|item| item.key.as_str()).collect();
    assert_eq!(keys, ["a", "missing", "b", "c"]);
    assert_eq!(items[0].data, b"1");
    assert!(items[0].etag.is_some() && items[0].error.is_empty());
    assert!(items[1].data.is_empty() && items[1].etag.is_none() && items[1].error.is_empty());
    assert_eq!(items[2].data, b"2");
    assert!(items[3].metadata.contains_key("ttlExpireTime"));
    let etag_a = items[0].etag.clone().expect("etag").value;
    let etag_b = items[2].etag.clone().expect("etag").value;

    // A stale etag anywhere: nothing of the bulk set is written.
    let request = store.req(bulk_set(vec![
        set_req("a", "10"),
        with_etag(set_req("b", "20"), &uuid::Uuid::new_v4().to_string()),
        set_req("d", "40"),
    ]));
    is_mismatch(store.state.bulk_set(request).await);
    assert_eq!(store.data("a").await, "1");
    assert_eq!(store.etag("a").await, etag_a);
    assert!(store.get("d").await.etag.is_none());

    // The same for a bulk delete.
    let request = store.req(pb::BulkDeleteRequest {
        items: vec![
            del_req("a", None),
            del_req("b", Some(&uuid::Uuid::new_v4().to_string())),
        ],
        options: None,
    });
    is_mismatch(store.state.bulk_delete(request).await);
    assert_eq!(store.data("a").await, "1");

    let request = store.req(pb::BulkDeleteRequest {
        items: vec![
            del_req("a", Some(&etag_a)),
            del_req("b", Some(&etag_b)),
            del_req("never", None),
        ],
        options: None,
    });
    store.state.bulk_delete(request).await.expect("bulk delete");
    assert!(store.get("a").await.etag.is_none());
    assert!(store.get("b").await.etag.is_none());
    assert_eq!(store.data("c").await, "3");
}

#[tokio::test]
async fn transactions_are_all_or_nothing() {
    let redis = RedisServer::start();
    let component = Component::start().await;
    let mut store = component.store("statestore").await;
    store.init(props(&redis, &[])).await.expect("init");
    let mut redis_conn = redis.inspect(0).await;

    store.set(set_req("a", "a0")).await.expect("set");
    store.set(set_req("b", "b0")).await.expect("set");
    let etag_a = store.etag("a").await;
    let etag_b = store.etag("b").await;
    let stale = uuid::Uuid::new_v4().to_string();

    // A stale etag in the middle: nothing before or after it is applied.
    let status = failed(
        store
            .transact(vec![
                op_set(set_req("c", "c1")),
                op_del(del_req("a", None)),
                op_set(with_etag(set_req("b", "b1"), &stale)),
                op_set(with_ttl(set_req("d", "d1"), "60")),
            ])
            .await,
        Code::FailedPrecondition,
    );
    assert!(status.message().contains("operation 2"), "{status:?}");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut redis_conn)
        .await
        .expect("KEYS");
    let mut keys = keys;
    keys.sort();
    assert_eq!(keys, ["a", "b"]);
    assert_eq!(store.etag("a").await, etag_a);
    assert_eq!(store.etag("b").await, etag_b);
    assert_eq!(store.data("b").await, "b0");

    // An invalid etag or TTL anywhere: INVALID_ARGUMENT, nothing applied.
    failed(
        store
            .transact(vec![
                op_set(set_req("c", "c1")),
                op_del(del_req("a", Some("1"))),
            ])
            .await,
        Code::InvalidArgument,
    );
    failed(
        store
            .transact(vec![
                op_set(set_req("c", "c1")),
                op_set(with_ttl(set_req("d", "d1"), "0")),
            ])
            .await,
        Code::InvalidArgument,
    );
    assert!(store.get("c").await.etag.is_none());

    // Operations see the earlier ones: a first-write of a key the transaction
    // just created fails, and so does the whole transaction.
    is_mismatch(
        store
            .transact(vec![
                op_set(set_req("c", "c1")),
                op_set(first_write(set_req("c", "c2"))),
            ])
            .await,
    );
    assert!(store.get("c").await.etag.is_none());

    // All checks pass: everything is applied, in order.
    store
        .transact(vec![
            op_set(with_etag(set_req("b", "b1"), &etag_b)),
            op_del(del_req("a", Some(&etag_a))),
            op_set(with_ttl(set_req("c", "c1"), "60")),
            op_set(set_req("e", "e1")),
            op_del(del_req("e", None)),
            op_set(first_write(set_req("f", "f1"))),
        ])
        .await
        .expect("commit");
    assert_eq!(store.data("b").await, "b1");
    assert!(store.get("a").await.etag.is_none());
    let c = store.get("c").await;
    assert_eq!(c.data, b"c1");
    assert!(c.metadata.contains_key("ttlExpireTime"));
    assert!(store.get("e").await.etag.is_none());
    assert_eq!(store.data("f").await, "f1");

    // An empty transaction is fine; one over the limit is refused.
    store.transact(Vec::new()).await.expect("empty");
    let too_many = (0..=plugd_redis::state::MAX_OPERATIONS)
        .map(|i| op_set(set_req(&format!("many{i}"), "x")))
        .collect();
    failed(store.transact(too_many).await, Code::InvalidArgument);
    assert!(store.get("many0").await.etag.is_none());
}

#[tokio::test]
async fn ttl_expiry_and_expire_time() {
    let redis = RedisServer::start();
    let component = Component::start().await;
    let mut store = component.store("statestore").await;
    store.init(props(&redis, &[])).await.expect("init");
    let mut redis_conn = redis.inspect(0).await;

    // Invalid TTLs are refused and write nothing.
    for bad in ["0", "-2", "ten", "1.5"] {
        failed(
            store.set(with_ttl(set_req("bad", "v"), bad)).await,
            Code::InvalidArgument,
        );
    }
    assert!(store.get("bad").await.etag.is_none());

    // A TTL: a Redis expiry, and ttlExpireTime on reads.
    let before = SystemTime::now();
    store
        .set(with_ttl(set_req("k", "v"), "100"))
        .await
        .expect("set with ttl");
    let remaining = pttl(&mut redis_conn, "k").await;
    assert!((90_000..=100_000).contains(&remaining), "{remaining}");
    let got = store.get("k").await;
    let at = humantime::parse_rfc3339(&got.metadata["ttlExpireTime"]).expect("RFC 3339");
    let lower = before + Duration::from_secs(98);
    let upper = SystemTime::now() + Duration::from_secs(101);
    assert!(at >= lower && at <= upper, "{:?}", got.metadata);

    // A write without a TTL leaves the expiry as it was (as Dapr's Redis store); -1 removes it.
    store.set(set_req("k", "v2")).await.expect("set");
    let kept = pttl(&mut redis_conn, "k").await;
    assert!((80_000..=100_000).contains(&kept), "{kept}");
    assert!(store.get("k").await.metadata.contains_key("ttlExpireTime"));
    store
        .set(with_ttl(set_req("k", "v4"), "-1"))
        .await
        .expect("set");
    assert_eq!(pttl(&mut redis_conn, "k").await, -1);
    assert!(store.get("k").await.metadata.is_empty());

    // The component's own ttlInSeconds applies to writes without one; invalid ones fail Init.
    let mut defaulted = component.store("defaulted").await;
    failed(
        defaulted
            .init(props(&redis, &[("ttlInSeconds", "0")]))
            .await,
        Code::InvalidArgument,
    );
    defaulted
        .init(props(&redis, &[("ttlInSeconds", "50")]))
        .await
        .expect("init with a default TTL");
    defaulted.set(set_req("d", "v")).await.expect("set");
    let remaining = pttl(&mut redis_conn, "d").await;
    assert!((40_000..=50_000).contains(&remaining), "{remaining}");
    defaulted
        .set(with_ttl(set_req("d", "v"), "-1"))
        .await
        .expect("set without expiry");
    assert_eq!(pttl(&mut redis_conn, "d").await, -1);

    // A TTL beyond year 9999: kept, without ttlExpireTime.
    store
        .set(with_ttl(set_req("long", "v"), &i64::MAX.to_string()))
        .await
        .expect("huge ttl");
    assert!(pttl(&mut redis_conn, "long").await > 0);
    let got = store.get("long").await;
    assert_eq!(got.data, b"v");
    assert!(got.metadata.is_empty(), "{:?}", got.metadata);

    // Expiry: a short TTL, then a bounded poll until the key is gone.
    store
        .set(with_ttl(set_req("short", "v"), "1"))
        .await
        .expect("set");
    let etag = store.etag("short").await;
    let reader = store.clone();
    eventually(WAIT, "the key to expire", || {
        let mut reader = reader.clone();
        async move {
            match reader.get("short").await.etag {
                None => Ok(()),
                Some(etag) => Err(etag),
            }
        }
    })
    .await;
    // Expired: its etag is stale and first-write may create it again.
    is_mismatch(store.set(with_etag(set_req("short", "w"), &etag)).await);
    store
        .set(first_write(set_req("short", "new")))
        .await
        .expect("first-write after expiry");
    assert_eq!(store.data("short").await, "new");
    assert_eq!(pttl(&mut redis_conn, "short").await, -1);
}

#[tokio::test]
async fn instances_are_isolated_by_database() {
    let redis = RedisServer::start();
    let component = Component::start().await;
    let mut one = component.store("store-one").await;
    let mut two = component.store("store-two").await;
    one.init(props(&redis, &[("redisDB", "1")]))
        .await
        .expect("init one");
    two.init(props(&redis, &[("redisDB", "2")]))
        .await
        .expect("init two");

    one.set(set_req("app||k", "from one")).await.expect("set");
    assert!(two.get("app||k").await.etag.is_none());
    two.set(set_req("app||k", "from two")).await.expect("set");
    assert_eq!(one.data("app||k").await, "from one");
    assert_eq!(two.data("app||k").await, "from two");

    let mut db1 = redis.inspect(1).await;
    let data: Vec<u8> = redis::cmd("HGET")
        .arg("app||k")
        .arg("data")
        .query_async(&mut db1)
        .await
        .expect("HGET");
    assert_eq!(data, b"from one");
    let mut db0 = redis.inspect(0).await;
    let size: i64 = redis::cmd("DBSIZE")
        .query_async(&mut db0)
        .await
        .expect("DBSIZE");
    assert_eq!(size, 0);

    // Re-Init moves an instance: two now sees one's database.
    two.init(props(&redis, &[("redisDB", "1")]))
        .await
        .expect("re-init two");
    assert_eq!(two.data("app||k").await, "from one");
}

#[tokio::test]
async fn racing_compare_and_set_has_exactly_one_winner() {
    let redis = RedisServer::start();
    let component = Component::start().await;
    // Two instances on the same database: each has its own Redis connection,
    // and each client its own socket connection.
    let mut left = component.store("left").await;
    let mut right = component.store("right").await;
    left.init(props(&redis, &[])).await.expect("init");
    right.init(props(&redis, &[])).await.expect("init");

    left.set(set_req("race", "start")).await.expect("set");
    for round in 0..25 {
        let etag = left.etag("race").await;
        let (a, b) = tokio::join!(
            left.set(with_etag(set_req("race", &format!("left {round}")), &etag)),
            right.set(with_etag(set_req("race", &format!("right {round}")), &etag)),
        );
        let winner = match (a, b) {
            (Ok(()), Err(status)) if status.code() == Code::FailedPrecondition => "left",
            (Err(status), Ok(())) if status.code() == Code::FailedPrecondition => "right",
            other => panic!("round {round}: not exactly one winner: {other:?}"),
        };
        assert_eq!(right.data("race").await, format!("{winner} {round}"));
    }

    // Read-modify-write increments with retries lose no update.
    left.set(set_req("counter", "0")).await.expect("set");
    let increment = |mut store: Store| async move {
        let mut retries = 0;
        for _ in 0..20 {
            loop {
                let got = store.get("counter").await;
                let etag = got.etag.expect("etag").value;
                let value: u64 = String::from_utf8(got.data)
                    .expect("utf-8")
                    .parse()
                    .expect("number");
                match store
                    .set(with_etag(
                        set_req("counter", &(value + 1).to_string()),
                        &etag,
                    ))
                    .await
                {
                    Ok(()) => break,
                    Err(status) if status.code() == Code::FailedPrecondition => retries += 1,
                    Err(status) => panic!("{status:?}"),
                }
                assert!(retries < 10_000, "livelock");
            }
        }
        retries
    };
    let (_, _) = tokio::join!(increment(left.clone()), increment(right.clone()));
    assert_eq!(left.data("counter").await, "40");
}
