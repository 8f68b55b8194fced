//! A real server on a temporary Unix socket, dialled with a tonic UDS channel.

mod common;

use common::{Running, list_v1, list_v1alpha, sorted, start};
use std::collections::HashMap;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use plugd_component_sdk::proto::state_store_client::StateStoreClient;
use plugd_component_sdk::proto::transactional_state_store_client::TransactionalStateStoreClient;
use plugd_component_sdk::proto::{self as pb};
use plugd_component_sdk::state::{
    DeleteRequest, GetRequest, GetResponse, Properties, SetRequest, StateError, StateStore,
    TransactionRequest, feature,
};
use plugd_component_sdk::{ComponentServer, ServeError};
use tonic::transport::Channel;
use tonic::{Code, Request};
use tonic_types::StatusExt;

const STATE_STORE: &str = "dapr.proto.components.v1.StateStore";
const TRANSACTIONAL: &str = "dapr.proto.components.v1.TransactionalStateStore";

/// A map store that reports its instance name and how often it was initialised.
struct Mem<const TX: bool> {
    instance: String,
    inits: AtomicUsize,
    label: Mutex<String>,
    data: Mutex<HashMap<String, Vec<u8>>>,
}

impl<const TX: bool> Mem<TX> {
    fn new(instance: &str) -> Self {
        Self {
            instance: instance.to_owned(),
            inits: AtomicUsize::new(0),
            label: Mutex::new(String::new()),
            data: Mutex::new(HashMap::new()),
        }
    }
}

impl<const TX: bool> StateStore for Mem<TX> {
    const TRANSACTIONAL: bool = TX;

    async fn init(&self, properties: Properties) -> Result<(), StateError> {
        self.inits.fetch_add(1, Ordering::SeqCst);
        *self.label.lock().expect("lock") = properties.get("label").cloned().unwrap_or_default();
        Ok(())
    }

    fn features(&self) -> Vec<String> {
        // TRANSACTIONAL here is overridden by the SDK from `Self::TRANSACTIONAL`.
        vec![feature::ETAG.to_owned(), feature::TRANSACTIONAL.to_owned()]
    }

    async fn get(&self, request: GetRequest) -> Result<GetResponse, StateError> {
        if request.key == "hang" {
            std::future::pending::<()>().await;
        }
        let mut response = match self.data.lock().expect("lock").get(&request.key) {
            Some(data) => GetResponse {
                data: data.clone(),
                etag: Some("1".to_owned()),
                ..GetResponse::default()
            },
            None => GetResponse::default(),
        };
        response
            .metadata
            .insert("instance".to_owned(), self.instance.clone());
        response
            .metadata
            .insert("label".to_owned(), self.label.lock().expect("lock").clone());
        response.metadata.insert(
            "inits".to_owned(),
            self.inits.load(Ordering::SeqCst).to_string(),
        );
        Ok(response)
    }

    async fn set(&self, request: SetRequest) -> Result<(), StateError> {
        match request.etag.as_deref() {
            None => {}
            Some("1") => return Err(StateError::EtagMismatch("stale etag".to_owned())),
            Some(_) => return Err(StateError::InvalidEtag("bad etag".to_owned())),
        }
        request.ttl()?;
        self.data
            .lock()
            .expect("lock")
            .insert(request.key, request.value);
        Ok(())
    }

    async fn delete(&self, request: DeleteRequest) -> Result<(), StateError> {
        self.data.lock().expect("lock").remove(&request.key);
        Ok(())
    }

    async fn transact(&self, request: TransactionRequest) -> Result<(), StateError> {
        Err(StateError::Internal(format!(
            "{} operations refused",
            request.operations.len()
        )))
    }
}

/// Stops the server and checks that its socket is gone.
async fn shutdown(running: Running) {
    let socket = running.shutdown().await;
    assert!(!socket.exists(), "socket not removed on shutdown");
}

async fn dial(socket: &Path) -> Channel {
    plugd_component_sdk::client::connect(socket)
        .await
        .expect("connect over UDS")
}

fn for_instance<T>(instance: &str, message: T) -> Request<T> {
    plugd_component_sdk::client::for_instance(instance, message).expect("ascii")
}

fn init(label: &str) -> pb::InitRequest {
    pb::InitRequest {
        metadata: Some(pb::MetadataRequest {
            properties: HashMap::from([("label".to_owned(), label.to_owned())]),
        }),
    }
}

fn get(key: &str) -> pb::GetRequest {
    pb::GetRequest {
        key: key.to_owned(),
        ..Default::default()
    }
}

fn set(key: &str, value: &str) -> pb::SetRequest {
    pb::SetRequest {
        key: key.to_owned(),
        value: value.as_bytes().to_vec(),
        ..Default::default()
    }
}

#[tokio::test]
async fn reflection_lists_only_the_served_component_services() {
    let running = start(|dir| {
        ComponentServer::new("memstore")
            .socket_folder(dir)
            .state_store(Mem::<false>::new)
    });
    let meta = std::fs::metadata(&running.socket).expect("socket exists");
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert_eq!(
        running.socket.file_name().and_then(|n| n.to_str()),
        Some("memstore.sock")
    );

    let channel = dial(&running.socket).await;
    assert_eq!(
        sorted(list_v1alpha(channel.clone(), "*").await),
        [STATE_STORE]
    );
    assert_eq!(sorted(list_v1(channel.clone(), "").await), [STATE_STORE]);

    // Not transactional: TRANSACTIONAL is dropped from the features and the
    // service is not served.
    let mut client = StateStoreClient::new(channel.clone());
    let features = client
        .features(pb::FeaturesRequest {})
        .await
        .expect("features")
        .into_inner()
        .features;
    assert_eq!(features, [feature::ETAG]);
    let status = TransactionalStateStoreClient::new(channel)
        .transact(pb::TransactionalStateRequest::default())
        .await
        .expect_err("not served");
    assert_eq!(status.code(), Code::Unimplemented);

    shutdown(running).await;
}

#[tokio::test]
async fn transactional_stores_serve_and_list_transact() {
    let running = start(|dir| {
        ComponentServer::new("txstore")
            .socket_folder(dir)
            .state_store(Mem::<true>::new)
    });
    let channel = dial(&running.socket).await;
    assert_eq!(
        sorted(list_v1alpha(channel.clone(), "*").await),
        [STATE_STORE, TRANSACTIONAL]
    );
    assert_eq!(
        sorted(list_v1(channel.clone(), "").await),
        [STATE_STORE, TRANSACTIONAL]
    );

    let features = StateStoreClient::new(channel.clone())
        .features(pb::FeaturesRequest {})
        .await
        .expect("features")
        .into_inner()
        .features;
    assert_eq!(features, [feature::ETAG, feature::TRANSACTIONAL]);

    let op = pb::TransactionalStateOperation {
        request: Some(pb::transactional_state_operation::Request::Set(set(
            "k", "v",
        ))),
    };
    let status = TransactionalStateStoreClient::new(channel.clone())
        .transact(pb::TransactionalStateRequest {
            operations: vec![op.clone(), op],
            ..Default::default()
        })
        .await
        .expect_err("store refuses");
    assert_eq!(status.code(), Code::Internal);
    assert_eq!(status.message(), "2 operations refused");

    let status = TransactionalStateStoreClient::new(channel)
        .transact(pb::TransactionalStateRequest {
            operations: vec![pb::TransactionalStateOperation { request: None }],
            ..Default::default()
        })
        .await
        .expect_err("empty operation");
    assert_eq!(status.code(), Code::InvalidArgument);

    shutdown(running).await;
}

#[tokio::test]
async fn instances_are_independent_per_header() {
    let running = start(|dir| {
        ComponentServer::new("multi")
            .socket_folder(dir)
            .state_store(Mem::<false>::new)
    });
    let mut client = StateStoreClient::new(dial(&running.socket).await);

    client
        .init(for_instance("a", init("A")))
        .await
        .expect("init a");
    client
        .init(for_instance("b", init("B")))
        .await
        .expect("init b");
    client
        .set(for_instance("a", set("k", "only in a")))
        .await
        .expect("set in a");

    let in_a = client
        .get(for_instance("a", get("k")))
        .await
        .expect("get a")
        .into_inner();
    assert_eq!(in_a.data, b"only in a");
    assert_eq!(in_a.etag.map(|e| e.value).as_deref(), Some("1"));
    assert_eq!(in_a.metadata["instance"], "a");
    assert_eq!(in_a.metadata["label"], "A");

    let in_b = client
        .get(for_instance("b", get("k")))
        .await
        .expect("get b")
        .into_inner();
    assert!(in_b.data.is_empty());
    assert!(in_b.etag.is_none(), "missing key must carry no etag");
    assert_eq!(in_b.metadata["instance"], "b");
    assert_eq!(in_b.metadata["label"], "B");

    // No header: the default instance, created on first use without Init.
    let default = client.get(get("k")).await.expect("get").into_inner();
    assert_eq!(
        default.metadata["instance"],
        plugd_component_sdk::DEFAULT_INSTANCE
    );
    assert_eq!(default.metadata["inits"], "0");

    // Re-Init reaches the same instance again.
    client
        .init(for_instance("a", init("A2")))
        .await
        .expect("re-init a");
    let again = client
        .get(for_instance("a", get("k")))
        .await
        .expect("get a")
        .into_inner();
    assert_eq!(again.data, b"only in a");
    assert_eq!(again.metadata["label"], "A2");
    assert_eq!(again.metadata["inits"], "2");

    shutdown(running).await;
}

#[tokio::test]
async fn errors_carry_the_detail_daprd_expects() {
    let running = start(|dir| {
        ComponentServer::new("errors")
            .socket_folder(dir)
            .state_store(Mem::<false>::new)
    });
    let mut client = StateStoreClient::new(dial(&running.socket).await);

    let mut stale = set("k", "v");
    stale.etag = Some(pb::Etag {
        value: "1".to_owned(),
    });
    let status = client.set(stale).await.expect_err("mismatch");
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(status.get_error_details_vec().len(), 1);
    let bad_request = status.get_details_bad_request().expect("BadRequest");
    assert_eq!(bad_request.field_violations.len(), 1);
    assert_eq!(bad_request.field_violations[0].field, "etag");
    assert_eq!(bad_request.field_violations[0].description, "stale etag");

    let mut invalid = set("k", "v");
    invalid.etag = Some(pb::Etag {
        value: "x".to_owned(),
    });
    let status = client.set(invalid).await.expect_err("invalid etag");
    assert_eq!(status.code(), Code::InvalidArgument);
    let bad_request = status.get_details_bad_request().expect("BadRequest");
    assert_eq!(bad_request.field_violations[0].field, "etag");

    // An empty etag on the wire counts as no etag.
    let mut empty = set("k", "v");
    empty.etag = Some(pb::Etag::default());
    client.set(empty).await.expect("empty etag is no etag");

    let mut bad_ttl = set("k", "v");
    bad_ttl
        .metadata
        .insert("ttlInSeconds".to_owned(), "soon".to_owned());
    let status = client.set(bad_ttl).await.expect_err("bad ttl");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.get_error_details_vec().is_empty());

    shutdown(running).await;
}

#[tokio::test]
async fn a_live_socket_is_not_stolen_and_a_stale_one_is_replaced() {
    let running = start(|dir| {
        ComponentServer::new("owned")
            .socket_folder(dir)
            .state_store(Mem::<false>::new)
    });
    let folder = running.socket.parent().expect("folder").to_owned();
    let second = ComponentServer::new("owned")
        .socket_folder(&folder)
        .state_store(Mem::<false>::new)
        .bind();
    assert!(
        matches!(second, Err(ServeError::InUse { .. })),
        "{second:?}"
    );
    shutdown(running).await;

    // A socket left behind by a dead listener is replaced.
    let dir = tempfile::tempdir().expect("tempdir");
    let folder = dir.path();
    let stale = folder.join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).expect("bind"));
    assert!(stale.exists());
    let bound = ComponentServer::new("stale")
        .socket_folder(folder)
        .state_store(Mem::<false>::new)
        .bind()
        .expect("stale socket replaced");
    drop(bound);
    assert!(
        !stale.exists(),
        "dropping a bound server removes its socket"
    );
}

#[tokio::test]
async fn missing_folder_is_created() {
    let dir = tempfile::tempdir().expect("tempdir");
    let folder = dir.path().join("nested").join("sockets");
    let bound = ComponentServer::new("x")
        .socket_folder(&folder)
        .state_store(Mem::<false>::new)
        .bind()
        .expect("bind");
    assert_eq!(bound.socket_path(), folder.join("x.sock"));
    assert!(bound.socket_path().exists());
}

#[tokio::test]
async fn shutdown_is_bounded_by_the_grace_period() {
    let running = start(|dir| {
        ComponentServer::new("hang")
            .socket_folder(dir)
            .shutdown_grace(std::time::Duration::from_millis(100))
            .state_store(Mem::<false>::new)
    });
    let mut client = StateStoreClient::new(dial(&running.socket).await);
    let call = tokio::spawn(async move { client.get(get("hang")).await });
    // Make sure the call reached the server before shutting down.
    let mut probe = StateStoreClient::new(dial(&running.socket).await);
    probe.get(get("k")).await.expect("server answers");

    tokio::time::timeout(std::time::Duration::from_secs(5), shutdown(running))
        .await
        .expect("shutdown did not wait for the hanging call");
    call.abort();
}
