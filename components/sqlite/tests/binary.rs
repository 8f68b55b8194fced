//! Runs the real `plugd-sqlite` binary as a child process on a temporary
//! socket folder and talks to it over gRPC.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use plugd_component_sdk::INSTANCE_HEADER;
use plugd_component_sdk::proto::state_store_client::StateStoreClient;
use plugd_component_sdk::proto::transactional_state_store_client::TransactionalStateStoreClient;
use plugd_component_sdk::proto::{self as pb};
use tonic::transport::Channel;
use tonic::{Code, Request};
use tonic_types::StatusExt;

struct Component {
    child: Child,
    socket: PathBuf,
}

impl Component {
    async fn start(folder: &Path) -> Self {
        let child = Command::new(env!("CARGO_BIN_EXE_plugd-sqlite"))
            .arg("--socket-folder")
            .arg(folder)
            .env("PLUGD_SQLITE_LOG_LEVEL", "warn")
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn plugd-sqlite");
        let socket = folder.join("sqlite.sock");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            assert!(Instant::now() < deadline, "socket never appeared");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Self { child, socket }
    }

    /// SIGTERM, then wait for a clean exit. Async, so that the client's
    /// connection task keeps running and can close on the server's GOAWAY.
    async fn terminate(mut self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(10);
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

async fn dial(socket: &Path) -> Channel {
    plugd_component_sdk::client::connect(socket)
        .await
        .expect("connect")
}

fn named<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert(INSTANCE_HEADER, "statestore".parse().expect("ascii"));
    request
}

fn init_request(db: &Path) -> pb::InitRequest {
    let properties = HashMap::from([(
        "connectionString".to_owned(),
        db.to_string_lossy().into_owned(),
    )]);
    pb::InitRequest {
        metadata: Some(pb::MetadataRequest { properties }),
    }
}

fn set(key: &str, value: &str, etag: Option<&str>) -> pb::SetRequest {
    pb::SetRequest {
        key: key.to_owned(),
        value: value.as_bytes().to_vec(),
        etag: etag.map(|value| pb::Etag {
            value: value.to_owned(),
        }),
        ..Default::default()
    }
}

fn get(key: &str) -> pb::GetRequest {
    pb::GetRequest {
        key: key.to_owned(),
        ..Default::default()
    }
}

#[tokio::test]
async fn serves_state_over_the_socket_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("state.db");
    let sockets = dir.path().join("sockets");
    let component = Component::start(&sockets).await;
    let channel = dial(&component.socket).await;
    let mut client = StateStoreClient::new(channel.clone());

    let status = client
        .ping(named(pb::PingRequest {}))
        .await
        .expect_err("not initialised");
    assert_eq!(status.code(), Code::FailedPrecondition);

    client.init(named(init_request(&db))).await.expect("init");
    client.ping(named(pb::PingRequest {})).await.expect("ping");
    let mut features = client
        .features(named(pb::FeaturesRequest {}))
        .await
        .expect("features")
        .into_inner()
        .features;
    features.sort();
    assert_eq!(features, ["ETAG", "TRANSACTIONAL", "TTL"]);

    let missing = client.get(named(get("k"))).await.expect("get").into_inner();
    assert!(missing.data.is_empty() && missing.etag.is_none());

    client.set(named(set("k", "v1", None))).await.expect("set");
    let got = client.get(named(get("k"))).await.expect("get").into_inner();
    assert_eq!(got.data, b"v1");
    let etag = got.etag.expect("etag").value;

    client
        .set(named(set("k", "v2", Some(&etag))))
        .await
        .expect("matching etag");
    let status = client
        .set(named(set("k", "v3", Some(&etag))))
        .await
        .expect_err("stale etag");
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(status.get_error_details_vec().len(), 1);
    let violations = status
        .get_details_bad_request()
        .expect("BadRequest")
        .field_violations;
    assert_eq!(violations.len(), 1);
    assert_eq!(violations[0].field, "etag");

    let status = client
        .set(named(set("k", "v3", Some("7"))))
        .await
        .expect_err("foreign etag");
    // An etag this store never issued cannot match: a mismatch, as Dapr's stores answer.
    assert_eq!(status.code(), Code::FailedPrecondition);
    let violations = status
        .get_details_bad_request()
        .expect("BadRequest")
        .field_violations;
    assert_eq!(violations[0].field, "etag");

    let op = |key: &str, etag: Option<&str>| pb::TransactionalStateOperation {
        request: Some(pb::transactional_state_operation::Request::Set(set(
            key, "tx", etag,
        ))),
    };
    let status = TransactionalStateStoreClient::new(channel)
        .transact(named(pb::TransactionalStateRequest {
            operations: vec![op("t1", None), op("k", Some(&etag))],
            ..Default::default()
        }))
        .await
        .expect_err("stale etag in the transaction");
    assert_eq!(status.code(), Code::FailedPrecondition);
    let t1 = client
        .get(named(get("t1")))
        .await
        .expect("get")
        .into_inner();
    assert!(t1.etag.is_none(), "transaction was not rolled back");

    component.terminate().await;

    // The data is durable: a new process on the same file sees it.
    let component = Component::start(&sockets).await;
    let mut client = StateStoreClient::new(dial(&component.socket).await);
    client.init(named(init_request(&db))).await.expect("init");
    let got = client.get(named(get("k"))).await.expect("get").into_inner();
    assert_eq!(got.data, b"v2");
    component.terminate().await;
}
