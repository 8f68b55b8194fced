//! The secret store adapter on a real server over a temporary Unix socket,
//! driven by the generated tonic client the way a host drives it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use plugd_component_sdk::proto::secret_store_client::SecretStoreClient;
use plugd_component_sdk::proto::{self as pb};
use plugd_component_sdk::secretstore::{
    Metadata, Properties, Secret, SecretStore, SecretStoreError,
};
use plugd_component_sdk::{BoundServer, ComponentServer, ServeError};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic::{Code, Request};

const SECRET_STORE: &str = "dapr.proto.components.v1.SecretStore";

/// Bound on every wait in these tests.
const LIMIT: Duration = Duration::from_secs(10);

async fn within<F: std::future::IntoFuture>(what: &str, future: F) -> F::Output {
    tokio::time::timeout(LIMIT, future)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// A store with two secrets whose values name the instance and the `prefix`
/// set by Init. `db` has two pairs; `locked` is refused; everything else is
/// missing. A `version` in the request metadata is echoed as a pair.
struct Vault<const MULTI: bool> {
    instance: String,
    prefix: Mutex<String>,
}

impl<const MULTI: bool> Vault<MULTI> {
    fn new(instance: &str) -> Self {
        Self {
            instance: instance.to_owned(),
            prefix: Mutex::new(String::new()),
        }
    }

    fn secrets(&self) -> HashMap<String, Secret> {
        let prefix = self
            .prefix
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let value = |name: &str| format!("{prefix}{name}@{}", self.instance);
        HashMap::from([
            (
                "db".to_owned(),
                Secret::from([
                    ("user".to_owned(), value("admin")),
                    ("password".to_owned(), value("hunter2")),
                ]),
            ),
            (
                "api".to_owned(),
                Secret::from([("api".to_owned(), value("token"))]),
            ),
        ])
    }
}

impl<const MULTI: bool> SecretStore for Vault<MULTI> {
    const MULTIPLE_KEY_VALUES_PER_SECRET: bool = MULTI;

    async fn init(&self, properties: Properties) -> Result<(), SecretStoreError> {
        if let Some(reason) = properties.get("fail") {
            return Err(SecretStoreError::InvalidArgument(reason.clone()));
        }
        *self.prefix.lock().unwrap_or_else(PoisonError::into_inner) =
            properties.get("prefix").cloned().unwrap_or_default();
        Ok(())
    }

    fn features(&self) -> Vec<String> {
        // The SDK adds MULTIPLE_KEY_VALUES_PER_SECRET when the const says so.
        Vec::new()
    }

    async fn get(&self, key: String, metadata: Metadata) -> Result<Secret, SecretStoreError> {
        if key == "locked" {
            return Err(SecretStoreError::PermissionDenied(format!(
                "{key} is locked"
            )));
        }
        let mut secret = self
            .secrets()
            .remove(&key)
            .ok_or(SecretStoreError::NotFound(key))?;
        if let Some(version) = metadata.get("version") {
            secret.insert("version".to_owned(), version.clone());
        }
        Ok(secret)
    }

    async fn bulk_get(
        &self,
        metadata: Metadata,
    ) -> Result<HashMap<String, Secret>, SecretStoreError> {
        if metadata.contains_key("down") {
            return Err(SecretStoreError::Unavailable("vault sealed".to_owned()));
        }
        Ok(self.secrets())
    }
}

/// A store that implements only the required methods.
struct Minimal;

impl SecretStore for Minimal {
    async fn init(&self, _properties: Properties) -> Result<(), SecretStoreError> {
        Ok(())
    }

    async fn get(&self, key: String, _metadata: Metadata) -> Result<Secret, SecretStoreError> {
        Ok(Secret::from([(key, "v".to_owned())]))
    }
}

struct Running {
    socket: PathBuf,
    stop: CancellationToken,
    task: JoinHandle<Result<(), ServeError>>,
    _dir: tempfile::TempDir,
}

impl Running {
    async fn client(&self) -> SecretStoreClient<Channel> {
        SecretStoreClient::new(dial(&self.socket).await)
    }

    async fn shutdown(self) {
        self.stop.cancel();
        within("the server to stop", self.task)
            .await
            .expect("server task")
            .expect("server stopped cleanly");
        assert!(!self.socket.exists(), "socket not removed on shutdown");
    }
}

/// Binds first (so the socket exists), then spawns the server.
fn start(server: impl FnOnce(ComponentServer) -> ComponentServer) -> Running {
    let dir = tempfile::tempdir().expect("tempdir");
    let bound: BoundServer = server(ComponentServer::new("vault").socket_folder(dir.path()))
        .bind()
        .expect("bind");
    let socket = bound.socket_path().to_owned();
    let stop = CancellationToken::new();
    let task = tokio::spawn(bound.serve_with_shutdown(stop.clone().cancelled_owned()));
    Running {
        socket,
        stop,
        task,
        _dir: dir,
    }
}

async fn dial(socket: &std::path::Path) -> Channel {
    within(
        "the connection",
        plugd_component_sdk::client::connect(socket),
    )
    .await
    .expect("connect over UDS")
}

fn for_instance<T>(instance: &str, message: T) -> Request<T> {
    plugd_component_sdk::client::for_instance(instance, message).expect("ascii")
}

fn get(key: &str) -> pb::GetSecretRequest {
    pb::GetSecretRequest {
        key: key.to_owned(),
        metadata: HashMap::new(),
    }
}

fn init(properties: &[(&str, &str)]) -> pb::SecretStoreInitRequest {
    pb::SecretStoreInitRequest {
        metadata: Some(pb::MetadataRequest {
            properties: properties
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }),
    }
}

async fn list_services(channel: Channel) -> Vec<String> {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = within(
        "reflection",
        ServerReflectionClient::new(channel).server_reflection_info(tokio_stream::iter([request])),
    )
    .await
    .expect("v1 reflection")
    .into_inner();
    let response = within("the reflection answer", stream.message())
        .await
        .expect("v1 response")
        .expect("one message");
    match response.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => {
            let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
            names.sort();
            names
        }
        other => panic!("unexpected v1 response {other:?}"),
    }
}

#[tokio::test]
async fn get_reads_one_secret_and_maps_errors() {
    let running = start(|server| server.secret_store(Vault::<true>::new));
    let mut client = running.client().await;

    let secret = client
        .get(get("db"))
        .await
        .expect("get db")
        .into_inner()
        .data;
    assert_eq!(
        secret,
        HashMap::from([
            ("user".to_owned(), "admin@#default__instance#".to_owned()),
            (
                "password".to_owned(),
                "hunter2@#default__instance#".to_owned()
            ),
        ])
    );

    // Request metadata reaches the store.
    let mut request = get("api");
    request
        .metadata
        .insert("version".to_owned(), "3".to_owned());
    let secret = client
        .get(request)
        .await
        .expect("get api")
        .into_inner()
        .data;
    assert_eq!(secret["version"], "3");
    assert_eq!(secret["api"], "token@#default__instance#");

    let status = client.get(get("nope")).await.expect_err("missing secret");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert_eq!(status.message(), "secret \"nope\" not found");

    let status = client.get(get("locked")).await.expect_err("refused");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");

    let status = client.get(get("")).await.expect_err("empty key");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");

    running.shutdown().await;
}

#[tokio::test]
async fn bulk_get_returns_every_secret_by_name() {
    let running = start(|server| server.secret_store(Vault::<true>::new));
    let mut client = running.client().await;

    let data = client
        .bulk_get(pb::BulkGetSecretRequest::default())
        .await
        .expect("bulk get")
        .into_inner()
        .data;
    let mut names: Vec<&str> = data.keys().map(String::as_str).collect();
    names.sort_unstable();
    assert_eq!(names, ["api", "db"]);
    assert_eq!(data["db"].secrets["user"], "admin@#default__instance#");
    assert_eq!(data["api"].secrets.len(), 1);

    let status = client
        .bulk_get(pb::BulkGetSecretRequest {
            metadata: HashMap::from([("down".to_owned(), String::new())]),
        })
        .await
        .expect_err("store down");
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(status.message(), "vault sealed");

    running.shutdown().await;
}

#[tokio::test]
async fn features_init_ping_and_defaults() {
    async fn features(running: &Running) -> Vec<String> {
        running
            .client()
            .await
            .features(pb::FeaturesRequest {})
            .await
            .expect("features")
            .into_inner()
            .features
    }

    let running = start(|server| server.secret_store(Vault::<true>::new));
    assert_eq!(features(&running).await, ["MULTIPLE_KEY_VALUES_PER_SECRET"]);
    let mut client = running.client().await;
    client.init(init(&[])).await.expect("init");
    let status = client
        .init(init(&[("fail", "missing vaultAddr")]))
        .await
        .expect_err("init refused");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(status.message(), "missing vaultAddr");
    client.ping(pb::PingRequest {}).await.expect("ping");
    running.shutdown().await;

    let running = start(|server| server.secret_store(Vault::<false>::new));
    assert!(features(&running).await.is_empty());
    running.shutdown().await;

    // Only init and get implemented: no features, bulk get unimplemented, ping ok.
    let running = start(|server| server.secret_store(|_: &str| Minimal));
    assert!(features(&running).await.is_empty());
    let mut client = running.client().await;
    let status = client
        .bulk_get(pb::BulkGetSecretRequest::default())
        .await
        .expect_err("no bulk get");
    assert_eq!(status.code(), Code::Unimplemented);
    client.ping(pb::PingRequest {}).await.expect("ping");
    running.shutdown().await;
}

#[tokio::test]
async fn instances_are_independent_per_header() {
    let running = start(|server| server.secret_store(Vault::<true>::new));
    let channel = dial(&running.socket).await;
    assert_eq!(list_services(channel.clone()).await, [SECRET_STORE]);
    let mut client = SecretStoreClient::new(channel);

    client
        .init(for_instance("prod", init(&[("prefix", "p-")])))
        .await
        .expect("init prod");
    client
        .init(for_instance("test", init(&[])))
        .await
        .expect("init test");

    let user = |data: HashMap<String, String>| data["user"].clone();
    let prod = client
        .get(for_instance("prod", get("db")))
        .await
        .expect("prod")
        .into_inner()
        .data;
    let test = client
        .get(for_instance("test", get("db")))
        .await
        .expect("test")
        .into_inner()
        .data;
    assert_eq!(user(prod), "p-admin@prod");
    assert_eq!(user(test), "admin@test");

    let bulk = client
        .bulk_get(for_instance("prod", pb::BulkGetSecretRequest::default()))
        .await
        .expect("bulk prod")
        .into_inner()
        .data;
    assert_eq!(bulk["api"].secrets["api"], "p-token@prod");

    running.shutdown().await;
}
