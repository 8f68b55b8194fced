//! Secret stores: the [`SecretStore`] trait, its errors, and the gRPC adapter
//! that serves `dapr.proto.components.v1.SecretStore`.
//!
//! A secret has a name (the key the app asks for) and one or more key/value
//! pairs. Stores that hold a single value per secret usually answer with one
//! pair whose key is the secret's name; stores that always hold several set
//! [`SecretStore::MULTIPLE_KEY_VALUES_PER_SECRET`] so that the host knows, and
//! stores for which it depends on their settings name the feature in
//! [`SecretStore::features`] per instance.
//!
//! # Example
//!
//! Secrets from the process environment, one value per secret:
//!
//! ```no_run
//! use std::collections::HashMap;
//!
//! use plugd_component_sdk::ComponentServer;
//! use plugd_component_sdk::secretstore::{
//!     Metadata, Properties, Secret, SecretStore, SecretStoreError,
//! };
//!
//! struct Environment;
//!
//! impl SecretStore for Environment {
//!     async fn init(&self, _properties: Properties) -> Result<(), SecretStoreError> {
//!         Ok(())
//!     }
//!
//!     async fn get(&self, key: String, _metadata: Metadata) -> Result<Secret, SecretStoreError> {
//!         match std::env::var(&key) {
//!             Ok(value) => Ok(Secret::from([(key, value)])),
//!             Err(_) => Err(SecretStoreError::NotFound(key)),
//!         }
//!     }
//!
//!     async fn bulk_get(
//!         &self,
//!         _metadata: Metadata,
//!     ) -> Result<HashMap<String, Secret>, SecretStoreError> {
//!         Ok(std::env::vars()
//!             .map(|(key, value)| (key.clone(), Secret::from([(key, value)])))
//!             .collect())
//!     }
//! }
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     // Served as env.sock: `type: secretstores.env` in a Component YAML.
//!     ComponentServer::new("env")
//!         .secret_store(|_instance| Environment)
//!         .serve()
//!         .await?;
//!     Ok(())
//! }
//! ```

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;

use crate::common::{self, KindError, error_chain, properties};
use crate::multiplex::Multiplexer;
use crate::server::ComponentServer;
use pb::secret_store_server::SecretStoreServer;
use plugd_proto::components as pb;
use tonic::server::NamedService;
use tonic::{Request, Response, Status};

/// Feature strings a secret store can report (see [`SecretStore::features`]).
pub mod feature {
    /// A secret may hold several key/value pairs; reported by the SDK when
    /// [`SecretStore::MULTIPLE_KEY_VALUES_PER_SECRET`](super::SecretStore::MULTIPLE_KEY_VALUES_PER_SECRET)
    /// is true.
    pub const MULTIPLE_KEY_VALUES_PER_SECRET: &str = "MULTIPLE_KEY_VALUES_PER_SECRET";
}

/// Init properties: the Component's `spec.metadata`, every value a string.
pub type Properties = HashMap<String, String>;

/// Per-request metadata (for example a namespace or version).
pub type Metadata = HashMap<String, String>;

/// The key/value pairs of one secret.
pub type Secret = HashMap<String, String>;

/// Errors a secret store returns; the SDK turns each into a gRPC status.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SecretStoreError {
    /// No secret has this name: `NOT_FOUND`.
    #[error("secret {0:?} not found")]
    NotFound(String),
    /// A bad request or bad Init properties: `INVALID_ARGUMENT`.
    #[error("{0}")]
    InvalidArgument(String),
    /// The store refuses to hand out this secret: `PERMISSION_DENIED`.
    #[error("{0}")]
    PermissionDenied(String),
    /// A call came before a successful Init: `FAILED_PRECONDITION`.
    #[error("the secret store is not initialised")]
    NotInitialized,
    /// The operation is not supported: `UNIMPLEMENTED`.
    #[error("not implemented: {0}")]
    Unimplemented(String),
    /// The backend cannot be reached right now: `UNAVAILABLE`.
    #[error("{0}")]
    Unavailable(String),
    /// Any other failure: `INTERNAL`.
    #[error("{0}")]
    Internal(String),
    /// A status built by the store itself, passed through unchanged.
    #[error(transparent)]
    Status(#[from] Status),
}

impl SecretStoreError {
    /// A [`SecretStoreError::Internal`] from any error, with its source chain.
    pub fn internal(err: impl std::error::Error) -> Self {
        Self::Internal(error_chain(&err))
    }
}

impl From<SecretStoreError> for Status {
    fn from(err: SecretStoreError) -> Self {
        let message = err.to_string();
        match err {
            SecretStoreError::NotFound(_) => Status::not_found(message),
            SecretStoreError::InvalidArgument(_) => Status::invalid_argument(message),
            SecretStoreError::PermissionDenied(_) => Status::permission_denied(message),
            SecretStoreError::NotInitialized => Status::failed_precondition(message),
            SecretStoreError::Unimplemented(_) => Status::unimplemented(message),
            SecretStoreError::Unavailable(_) => Status::unavailable(message),
            SecretStoreError::Internal(_) => Status::internal(message),
            SecretStoreError::Status(status) => status,
        }
    }
}

impl KindError for SecretStoreError {
    fn is_internal(&self) -> bool {
        matches!(self, Self::Internal(_))
    }
}

/// A secret store component. Implement it, then serve it with
/// [`ComponentServer::secret_store`].
///
/// One value is created per component instance (per `x-component-instance`),
/// so the methods take `&self`: use interior mutability for what `init` sets
/// up. daprd may call `init` again on the same instance after a hot reload.
///
/// Methods are written as `async fn` in the implementation; their futures must
/// be `Send`.
pub trait SecretStore: Send + Sync + 'static {
    /// Whether every instance's secrets may hold several key/value pairs. When
    /// true the SDK always reports [`feature::MULTIPLE_KEY_VALUES_PER_SECRET`];
    /// when false it is reported only for instances whose
    /// [`features`](Self::features) name it (a store where it depends on the
    /// Component's metadata).
    const MULTIPLE_KEY_VALUES_PER_SECRET: bool = false;

    /// Sets the instance up from the Component's metadata.
    fn init(
        &self,
        properties: Properties,
    ) -> impl Future<Output = Result<(), SecretStoreError>> + Send;

    /// Features this instance supports (asked after `init`). Duplicates are
    /// removed; `MULTIPLE_KEY_VALUES_PER_SECRET` is added when
    /// [`Self::MULTIPLE_KEY_VALUES_PER_SECRET`] is true.
    fn features(&self) -> Vec<String> {
        Vec::new()
    }

    /// Reads the secret called `key`. A missing secret is
    /// [`SecretStoreError::NotFound`]. The SDK refuses an empty `key` with
    /// `INVALID_ARGUMENT` before calling this.
    fn get(
        &self,
        key: String,
        metadata: Metadata,
    ) -> impl Future<Output = Result<Secret, SecretStoreError>> + Send;

    /// Reads every secret the store holds, by name. The default answers
    /// `UNIMPLEMENTED`.
    fn bulk_get(
        &self,
        metadata: Metadata,
    ) -> impl Future<Output = Result<HashMap<String, Secret>, SecretStoreError>> + Send {
        let _ = metadata;
        async { Err(SecretStoreError::Unimplemented("bulk get".to_owned())) }
    }

    /// The Ping hook. The host calls `Ping` after Init and then periodically
    /// (plugd: every `--component-health-interval`); an `Err` answers the
    /// Ping with that error, and a component that fails
    /// `--component-health-failures` Pings in a row is marked unhealthy until
    /// a Ping succeeds again. Check cheaply what the store needs to serve (a
    /// connection, a file); the default is always `Ok`.
    fn ping(&self) -> impl Future<Output = Result<(), SecretStoreError>> + Send {
        async { Ok(()) }
    }
}

impl ComponentServer {
    /// Serves a secret store. `factory` makes one store per component
    /// instance, given the instance name (the `x-component-instance` header,
    /// or [`DEFAULT_INSTANCE`](crate::DEFAULT_INSTANCE)).
    pub fn secret_store<S, F>(mut self, factory: F) -> Self
    where
        S: SecretStore,
        F: Fn(&str) -> S + Send + Sync + 'static,
    {
        let service = SecretStoreService {
            mux: Arc::new(Multiplexer::new(factory)),
        };
        self.routes_mut().add_service(
            SecretStoreServer::new(service)
                .max_decoding_message_size(crate::server::MAX_MESSAGE_SIZE),
        );
        self.advertise(<SecretStoreServer<SecretStoreService<S>> as NamedService>::NAME);
        self
    }
}

/// The gRPC side of a [`SecretStore`]: finds the instance, converts the
/// messages, maps the errors.
struct SecretStoreService<S> {
    mux: Arc<Multiplexer<S>>,
}

impl<S> Clone for SecretStoreService<S> {
    fn clone(&self) -> Self {
        Self {
            mux: Arc::clone(&self.mux),
        }
    }
}

impl<S> fmt::Debug for SecretStoreService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretStoreService")
            .field("mux", &self.mux)
            .finish()
    }
}

impl<S: SecretStore> SecretStoreService<S> {
    /// Runs `call` on the request's instance inside a span, mapping errors.
    async fn call<T, R, Fut>(
        &self,
        method: &'static str,
        request: Request<T>,
        call: impl FnOnce(Arc<S>, T) -> Fut,
    ) -> Result<Response<R>, Status>
    where
        Fut: Future<Output = Result<R, SecretStoreError>>,
    {
        common::call(
            &self.mux,
            request,
            |instance| tracing::debug_span!("secretstore", %instance, method),
            call,
        )
        .await
    }
}

fn features_of<S: SecretStore>(store: &S) -> Vec<String> {
    let mut features: Vec<String> = Vec::new();
    for feature in store.features() {
        if !features.contains(&feature) {
            features.push(feature);
        }
    }
    let multi = feature::MULTIPLE_KEY_VALUES_PER_SECRET;
    if S::MULTIPLE_KEY_VALUES_PER_SECRET && !features.iter().any(|f| f == multi) {
        features.push(multi.to_owned());
    }
    features
}

#[tonic::async_trait]
impl<S: SecretStore> pb::secret_store_server::SecretStore for SecretStoreService<S> {
    async fn init(
        &self,
        request: Request<pb::SecretStoreInitRequest>,
    ) -> Result<Response<pb::SecretStoreInitResponse>, Status> {
        self.call("Init", request, |store, req| async move {
            store.init(properties(req.metadata)).await?;
            Ok(pb::SecretStoreInitResponse {})
        })
        .await
    }

    async fn features(
        &self,
        request: Request<pb::FeaturesRequest>,
    ) -> Result<Response<pb::FeaturesResponse>, Status> {
        self.call("Features", request, |store, _| async move {
            Ok(pb::FeaturesResponse {
                features: features_of(&*store),
            })
        })
        .await
    }

    async fn get(
        &self,
        request: Request<pb::GetSecretRequest>,
    ) -> Result<Response<pb::GetSecretResponse>, Status> {
        self.call("Get", request, |store, req| async move {
            if req.key.is_empty() {
                return Err(SecretStoreError::InvalidArgument(
                    "the secret key is empty".to_owned(),
                ));
            }
            let data = store.get(req.key, req.metadata).await?;
            Ok(pb::GetSecretResponse { data })
        })
        .await
    }

    async fn bulk_get(
        &self,
        request: Request<pb::BulkGetSecretRequest>,
    ) -> Result<Response<pb::BulkGetSecretResponse>, Status> {
        self.call("BulkGet", request, |store, req| async move {
            let secrets = store.bulk_get(req.metadata).await?;
            Ok(pb::BulkGetSecretResponse {
                data: secrets
                    .into_iter()
                    .map(|(name, secrets)| (name, pb::SecretResponse { secrets }))
                    .collect(),
            })
        })
        .await
    }

    async fn ping(
        &self,
        request: Request<pb::PingRequest>,
    ) -> Result<Response<pb::PingResponse>, Status> {
        self.call("Ping", request, |store, _| async move {
            store.ping().await?;
            Ok(pb::PingResponse {})
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn errors_map_to_statuses() {
        let cases = [
            (SecretStoreError::NotFound("db".into()), Code::NotFound),
            (
                SecretStoreError::InvalidArgument("x".into()),
                Code::InvalidArgument,
            ),
            (
                SecretStoreError::PermissionDenied("no".into()),
                Code::PermissionDenied,
            ),
            (SecretStoreError::NotInitialized, Code::FailedPrecondition),
            (
                SecretStoreError::Unimplemented("bulk get".into()),
                Code::Unimplemented,
            ),
            (
                SecretStoreError::Unavailable("down".into()),
                Code::Unavailable,
            ),
            (SecretStoreError::Internal("boom".into()), Code::Internal),
            (
                SecretStoreError::Status(Status::aborted("mine")),
                Code::Aborted,
            ),
        ];
        for (err, code) in cases {
            assert_eq!(Status::from(err).code(), code);
        }
        let status = Status::from(SecretStoreError::NotFound("db-password".into()));
        assert_eq!(status.message(), "secret \"db-password\" not found");
    }

    #[test]
    fn internal_keeps_the_source_chain() {
        #[derive(Debug, thiserror::Error)]
        #[error("reading the vault")]
        struct Outer(#[source] std::io::Error);
        let err = SecretStoreError::internal(Outer(std::io::Error::other("denied")));
        assert_eq!(err.to_string(), "reading the vault: denied");
    }

    /// `MULTI`: the const; `NAMED`: whether `features()` names the feature.
    struct Store<const MULTI: bool, const NAMED: bool = false>;

    impl<const MULTI: bool, const NAMED: bool> SecretStore for Store<MULTI, NAMED> {
        const MULTIPLE_KEY_VALUES_PER_SECRET: bool = MULTI;

        async fn init(&self, _properties: Properties) -> Result<(), SecretStoreError> {
            Ok(())
        }

        fn features(&self) -> Vec<String> {
            let mut f = vec!["OTHER".to_owned(), "OTHER".to_owned()];
            if NAMED {
                f.push(feature::MULTIPLE_KEY_VALUES_PER_SECRET.to_owned());
            }
            f
        }

        async fn get(&self, key: String, _metadata: Metadata) -> Result<Secret, SecretStoreError> {
            Err(SecretStoreError::NotFound(key))
        }
    }

    #[test]
    fn multiple_values_feature_follows_the_const_or_the_instance() {
        assert_eq!(features_of(&Store::<false>), ["OTHER"]);
        assert_eq!(
            features_of(&Store::<true>),
            ["OTHER", "MULTIPLE_KEY_VALUES_PER_SECRET"]
        );
        // Per instance: named by features() without the const.
        assert_eq!(
            features_of(&Store::<false, true>),
            ["OTHER", "MULTIPLE_KEY_VALUES_PER_SECRET"]
        );
        assert_eq!(
            features_of(&Store::<true, true>),
            ["OTHER", "MULTIPLE_KEY_VALUES_PER_SECRET"]
        );
    }

    #[tokio::test]
    async fn default_bulk_get_is_unimplemented() {
        let result = Store::<false>.bulk_get(Metadata::new()).await;
        assert!(matches!(result, Err(SecretStoreError::Unimplemented(_))));
    }
}
