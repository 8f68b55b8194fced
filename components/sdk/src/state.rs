//! State stores: the [`StateStore`] trait, its request types and errors, and
//! the gRPC adapter that serves `dapr.proto.components.v1.StateStore` (and
//! `TransactionalStateStore` and `QueriableStateStore` when the store
//! implements transactions and queries).
//!
//! # Features follow what is implemented
//!
//! | You implement | You set | The SDK serves | Features reports |
//! |---|---|---|---|
//! | `get`, `set`, `delete` (+ optional `bulk_*`) | – | `StateStore` | what [`StateStore::features`] names (`ETAG`, `TTL`, …) |
//! | [`StateStore::transact`] | `const TRANSACTIONAL: bool = true` | + `TransactionalStateStore` | + `TRANSACTIONAL` |
//! | [`StateStore::query`] | `const QUERY_API: bool = true` | + `QueriableStateStore` | + `QUERY_API` |
//!
//! `TRANSACTIONAL` and `QUERY_API` named in `features()` are ignored: a store
//! cannot claim a capability whose method it left at its default.
//!
//! # Example
//!
//! JSON documents in memory with etags, all-or-nothing transactions and
//! queries (served as `docs.sock`: `type: state.docs` in a Component YAML).
//! Queries use the evaluation helpers of [`query`].
//!
//! ```no_run
//! use std::collections::HashMap;
//! use std::sync::{Mutex, MutexGuard, PoisonError};
//!
//! use plugd_component_sdk::ComponentServer;
//! use plugd_component_sdk::state::query::Value;
//! use plugd_component_sdk::state::{
//!     DeleteRequest, GetRequest, GetResponse, Operation, Properties, QueryItem, QueryRequest,
//!     QueryResponse, SetRequest, StateError, StateStore, TransactionRequest, feature,
//! };
//!
//! /// key → (value, etag)
//! type Map = HashMap<String, (Vec<u8>, u64)>;
//!
//! #[derive(Default)]
//! struct Docs {
//!     map: Mutex<Map>,
//!     version: std::sync::atomic::AtomicU64,
//! }
//!
//! impl Docs {
//!     fn map(&self) -> MutexGuard<'_, Map> {
//!         self.map.lock().unwrap_or_else(PoisonError::into_inner)
//!     }
//!
//!     /// Checks and applies one operation to `map`.
//!     fn apply(&self, map: &mut Map, operation: Operation) -> Result<(), StateError> {
//!         let (key, etag) = match &operation {
//!             Operation::Set(set) => (&set.key, &set.etag),
//!             Operation::Delete(delete) => (&delete.key, &delete.etag),
//!         };
//!         let current = map.get(key).map(|(_, etag)| etag.to_string());
//!         if etag.is_some() && *etag != current {
//!             return Err(StateError::EtagMismatch(format!("stale etag for {key}")));
//!         }
//!         match operation {
//!             Operation::Set(set) => {
//!                 let etag = self.version.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
//!                 map.insert(set.key, (set.value, etag));
//!             }
//!             Operation::Delete(delete) => {
//!                 map.remove(&delete.key);
//!             }
//!         }
//!         Ok(())
//!     }
//! }
//!
//! impl StateStore for Docs {
//!     const TRANSACTIONAL: bool = true;
//!     const QUERY_API: bool = true;
//!
//!     async fn init(&self, _properties: Properties) -> Result<(), StateError> {
//!         Ok(())
//!     }
//!
//!     fn features(&self) -> Vec<String> {
//!         vec![feature::ETAG.to_owned()] // + TRANSACTIONAL and QUERY_API from the consts
//!     }
//!
//!     async fn get(&self, request: GetRequest) -> Result<GetResponse, StateError> {
//!         Ok(match self.map().get(&request.key) {
//!             Some((data, etag)) => GetResponse {
//!                 data: data.clone(),
//!                 etag: Some(etag.to_string()),
//!                 ..GetResponse::default()
//!             },
//!             None => GetResponse::default(),
//!         })
//!     }
//!
//!     async fn set(&self, request: SetRequest) -> Result<(), StateError> {
//!         self.apply(&mut self.map(), Operation::Set(request))
//!     }
//!
//!     async fn delete(&self, request: DeleteRequest) -> Result<(), StateError> {
//!         self.apply(&mut self.map(), Operation::Delete(request))
//!     }
//!
//!     async fn transact(&self, request: TransactionRequest) -> Result<(), StateError> {
//!         // All or nothing: apply to a copy, keep it only if every operation passed.
//!         let mut map = self.map();
//!         let mut staged = map.clone();
//!         for operation in request.operations {
//!             self.apply(&mut staged, operation)?;
//!         }
//!         *map = staged;
//!         Ok(())
//!     }
//!
//!     async fn query(&self, request: QueryRequest) -> Result<QueryResponse, StateError> {
//!         let map = self.map();
//!         let mut rows: Vec<(&String, &(Vec<u8>, u64), Value)> = map
//!             .iter()
//!             .filter_map(|(key, entry)| {
//!                 let document: Value = serde_json::from_slice(&entry.0).ok()?;
//!                 let wanted = request.filter.as_ref().is_none_or(|f| f.matches(&document));
//!                 wanted.then_some((key, entry, document))
//!             })
//!             .collect();
//!         rows.sort_by(|(ka, _, a), (kb, _, b)| request.compare(a, b).then_with(|| ka.cmp(kb)));
//!         let (offset, total) = (request.page.offset()?, rows.len());
//!         let items: Vec<QueryItem> = rows
//!             .into_iter()
//!             .skip(offset)
//!             .take(request.page.limit.unwrap_or(usize::MAX))
//!             .map(|(key, (data, etag), _)| QueryItem {
//!                 key: key.clone(),
//!                 data: data.clone(),
//!                 etag: Some(etag.to_string()),
//!                 ..QueryItem::default()
//!             })
//!             .collect();
//!         Ok(QueryResponse {
//!             token: request.page.next_token(offset, items.len(), total),
//!             items,
//!             ..QueryResponse::default()
//!         })
//!     }
//! }
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     ComponentServer::new("docs")
//!         .state_store(|_instance| Docs::default())
//!         .serve()
//!         .await?;
//!     Ok(())
//! }
//! ```

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::common::{self, KindError, error_chain, properties};
use crate::multiplex::Multiplexer;
use crate::server::ComponentServer;
use pb::queriable_state_store_server::QueriableStateStoreServer;
use pb::state_store_server::StateStoreServer;
use pb::transactional_state_store_server::TransactionalStateStoreServer;
use plugd_proto::components as pb;
use tonic::server::NamedService;
use tonic::{Code, Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// Feature strings a state store can report (see [`StateStore::features`]).
pub mod feature {
    /// Writes carry etags and honour them (optimistic concurrency).
    pub const ETAG: &str = "ETAG";
    /// Multi-operation transactions; reported by the SDK when
    /// [`StateStore::TRANSACTIONAL`](super::StateStore::TRANSACTIONAL) is true.
    pub const TRANSACTIONAL: &str = "TRANSACTIONAL";
    /// The query API; reported by the SDK when
    /// [`StateStore::QUERY_API`](super::StateStore::QUERY_API) is true.
    pub const QUERY_API: &str = "QUERY_API";
    /// `ttlInSeconds` on writes.
    pub const TTL: &str = "TTL";
    /// Deleting every key with a prefix.
    pub const DELETE_WITH_PREFIX: &str = "DELETE_WITH_PREFIX";
    /// Partition keys.
    pub const PARTITION_KEY: &str = "PARTITION_KEY";
    /// Key listing with patterns.
    pub const KEYS_LIKE: &str = "KEYS_LIKE";
}

pub mod query;

pub use query::{QueryItem, QueryRequest, QueryResponse};

/// Init properties: the Component's `spec.metadata`, every value a string.
pub type Properties = HashMap<String, String>;

/// Per-request metadata.
pub type Metadata = HashMap<String, String>;

/// Request metadata key holding a write's time to live in seconds.
pub const TTL_METADATA_KEY: &str = "ttlInSeconds";

/// Response metadata key that stores with TTL use for the expiry time (RFC 3339).
pub const TTL_EXPIRE_TIME_METADATA_KEY: &str = "ttlExpireTime";

/// The requested concurrency mode of a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Concurrency {
    /// Not given; stores treat it as last-write.
    #[default]
    Unspecified,
    /// The write must not overwrite another: with an etag it must match; with
    /// no etag the key must not exist.
    FirstWrite,
    /// The write wins, unless an etag is given and does not match.
    LastWrite,
}

/// The requested consistency of a read or write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Consistency {
    /// Not given.
    #[default]
    Unspecified,
    /// Eventual consistency.
    Eventual,
    /// Strong consistency.
    Strong,
}

/// Options of a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StateOptions {
    /// Concurrency mode.
    pub concurrency: Concurrency,
    /// Consistency mode.
    pub consistency: Consistency,
}

/// Reads one key.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GetRequest {
    /// The key, already prefixed by daprd.
    pub key: String,
    /// Request metadata.
    pub metadata: Metadata,
    /// Requested consistency.
    pub consistency: Consistency,
}

/// The result of a read. For a missing key, return `GetResponse::default()`:
/// empty data and no etag.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GetResponse {
    /// The stored value.
    pub data: Vec<u8>,
    /// The current etag; `None` when the key does not exist.
    pub etag: Option<String>,
    /// Response metadata (for example [`TTL_EXPIRE_TIME_METADATA_KEY`]).
    pub metadata: Metadata,
    /// Content type of the value, if known.
    pub content_type: Option<String>,
}

/// Writes one key.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SetRequest {
    /// The key.
    pub key: String,
    /// The new value.
    pub value: Vec<u8>,
    /// If present, the write happens only if the stored etag equals this one.
    /// An empty etag on the wire is treated as absent.
    pub etag: Option<String>,
    /// Request metadata, for example [`TTL_METADATA_KEY`].
    pub metadata: Metadata,
    /// Concurrency and consistency.
    pub options: StateOptions,
    /// Content type of the value, if given.
    pub content_type: Option<String>,
}

impl SetRequest {
    /// The time to live from [`TTL_METADATA_KEY`]: `None` when absent or `-1`
    /// (no expiry), otherwise a positive number of seconds. Anything else
    /// (`0`, other negatives, not an integer) is [`StateError::InvalidArgument`].
    pub fn ttl(&self) -> Result<Option<Duration>, StateError> {
        parse_ttl(self.metadata.get(TTL_METADATA_KEY).map(String::as_str))
    }

    /// Whether this is a first-write without an etag, which may only create
    /// the key.
    pub fn is_insert_only(&self) -> bool {
        self.etag.is_none() && self.options.concurrency == Concurrency::FirstWrite
    }
}

/// Parses a `ttlInSeconds` value; see [`SetRequest::ttl`].
pub fn parse_ttl(value: Option<&str>) -> Result<Option<Duration>, StateError> {
    let Some(value) = value.map(str::trim) else {
        return Ok(None);
    };
    match value.parse::<i64>() {
        Ok(-1) => Ok(None),
        Ok(seconds) if seconds > 0 => Ok(Some(Duration::from_secs(seconds.unsigned_abs()))),
        Ok(_) => Err(StateError::InvalidArgument(format!(
            "{TTL_METADATA_KEY} must be a positive number of seconds or -1, not {value}"
        ))),
        Err(_) => Err(StateError::InvalidArgument(format!(
            "{TTL_METADATA_KEY} must be an integer, not {value:?}"
        ))),
    }
}

/// Deletes one key.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeleteRequest {
    /// The key.
    pub key: String,
    /// If present, the delete happens only if the stored etag equals this one.
    pub etag: Option<String>,
    /// Request metadata.
    pub metadata: Metadata,
    /// Concurrency and consistency.
    pub options: StateOptions,
}

/// One key's result in a bulk read: the value, or an error for that key only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BulkGetItem {
    /// The key read.
    pub key: String,
    /// Its value (default for a missing key), or why it could not be read.
    pub result: Result<GetResponse, String>,
}

/// One operation of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operation {
    /// Write a key.
    Set(SetRequest),
    /// Delete a key.
    Delete(DeleteRequest),
}

/// Operations to apply all or nothing.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TransactionRequest {
    /// The operations, in order.
    pub operations: Vec<Operation>,
    /// Request metadata.
    pub metadata: Metadata,
}

/// Errors a state store returns; the SDK turns each into the gRPC status
/// daprd expects.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// The etag given does not match the stored one (or the key is missing).
    /// Sent as `FAILED_PRECONDITION` with one `BadRequest` violation on
    /// field `etag`; daprd reports an etag mismatch (HTTP 409).
    #[error("etag mismatch: {0}")]
    EtagMismatch(String),
    /// The etag given is malformed. Sent as `INVALID_ARGUMENT` with one
    /// `BadRequest` violation on field `etag`.
    #[error("invalid etag: {0}")]
    InvalidEtag(String),
    /// A bad request or bad Init properties: `INVALID_ARGUMENT`.
    #[error("{0}")]
    InvalidArgument(String),
    /// A call came before a successful Init: `FAILED_PRECONDITION`.
    #[error("the state store is not initialised")]
    NotInitialized,
    /// The operation is not supported: `UNIMPLEMENTED`.
    #[error("not implemented: {0}")]
    Unimplemented(String),
    /// A bulk delete removed fewer rows than asked. Sent as `INTERNAL` with one
    /// `ErrorInfo` carrying `expected` and `affected`.
    #[error("bulk delete affected {affected} rows, expected {expected}")]
    BulkDeleteRowMismatch {
        /// Rows that should have been deleted.
        expected: u64,
        /// Rows actually deleted.
        affected: u64,
    },
    /// Any other failure: `INTERNAL`.
    #[error("{0}")]
    Internal(String),
    /// A status built by the store itself, passed through unchanged.
    #[error(transparent)]
    Status(#[from] Status),
}

impl StateError {
    /// An [`StateError::Internal`] from any error, with its source chain.
    pub fn internal(err: impl std::error::Error) -> Self {
        Self::Internal(error_chain(&err))
    }
}

/// Domain used in the `ErrorInfo` of a bulk-delete row mismatch.
const ERROR_DOMAIN: &str = "plugd.components";

impl From<StateError> for Status {
    fn from(err: StateError) -> Self {
        let message = err.to_string();
        match err {
            StateError::EtagMismatch(description) => Status::with_error_details(
                Code::FailedPrecondition,
                message,
                ErrorDetails::with_bad_request_violation("etag", description),
            ),
            StateError::InvalidEtag(description) => Status::with_error_details(
                Code::InvalidArgument,
                message,
                ErrorDetails::with_bad_request_violation("etag", description),
            ),
            StateError::BulkDeleteRowMismatch { expected, affected } => Status::with_error_details(
                Code::Internal,
                message,
                ErrorDetails::with_error_info(
                    "BULK_DELETE_ROW_MISMATCH",
                    ERROR_DOMAIN,
                    HashMap::from([
                        ("expected".to_owned(), expected.to_string()),
                        ("affected".to_owned(), affected.to_string()),
                    ]),
                ),
            ),
            StateError::InvalidArgument(_) => Status::invalid_argument(message),
            StateError::NotInitialized => Status::failed_precondition(message),
            StateError::Unimplemented(_) => Status::unimplemented(message),
            StateError::Internal(_) => Status::internal(message),
            StateError::Status(status) => status,
        }
    }
}

impl KindError for StateError {
    fn is_internal(&self) -> bool {
        matches!(self, Self::Internal(_))
    }
}

/// A state store component. Implement it, then serve it with
/// [`ComponentServer::state_store`].
///
/// One value is created per component instance (per `x-component-instance`),
/// so the methods take `&self`: use interior mutability for what `init` sets
/// up. daprd may call `init` again on the same instance after a hot reload.
///
/// Methods are written as `async fn` in the implementation; their futures must
/// be `Send`.
pub trait StateStore: Send + Sync + 'static {
    /// Whether [`transact`](Self::transact) is implemented. When true the
    /// `TransactionalStateStore` service is served and `TRANSACTIONAL` is
    /// reported in the features.
    const TRANSACTIONAL: bool = false;

    /// Whether [`query`](Self::query) is implemented. When true the
    /// `QueriableStateStore` service is served and `QUERY_API` is reported in
    /// the features, so the host forwards the runtime API's
    /// `QueryStateAlpha1`; otherwise neither is (a host asking anyway gets
    /// `UNIMPLEMENTED`).
    const QUERY_API: bool = false;

    /// Sets the instance up from the Component's metadata.
    fn init(&self, properties: Properties) -> impl Future<Output = Result<(), StateError>> + Send;

    /// Features the store supports, such as [`feature::ETAG`] and
    /// [`feature::TTL`]. `TRANSACTIONAL` and `QUERY_API` are added (or
    /// removed) by the SDK to match [`Self::TRANSACTIONAL`] and
    /// [`Self::QUERY_API`]; duplicates are removed. Name only what the store
    /// really does: `ETAG` promises that a stale etag fails, `TTL` that keys
    /// expire (`plugd conformance` checks both).
    fn features(&self) -> Vec<String> {
        Vec::new()
    }

    /// Reads a key. A missing key is `Ok(GetResponse::default())`, not an error.
    fn get(
        &self,
        request: GetRequest,
    ) -> impl Future<Output = Result<GetResponse, StateError>> + Send;

    /// Writes a key, honouring the etag and [`SetRequest::is_insert_only`].
    fn set(&self, request: SetRequest) -> impl Future<Output = Result<(), StateError>> + Send;

    /// Deletes a key; deleting a missing key without an etag is not an error.
    fn delete(&self, request: DeleteRequest)
    -> impl Future<Output = Result<(), StateError>> + Send;

    /// Reads several keys. The default calls [`get`](Self::get) for each key
    /// and reports each failure on its item.
    fn bulk_get(
        &self,
        requests: Vec<GetRequest>,
    ) -> impl Future<Output = Result<Vec<BulkGetItem>, StateError>> + Send {
        async move {
            let mut items = Vec::with_capacity(requests.len());
            for request in requests {
                let key = request.key.clone();
                let result = self.get(request).await.map_err(|err| err.to_string());
                items.push(BulkGetItem { key, result });
            }
            Ok(items)
        }
    }

    /// Writes several keys. The default calls [`set`](Self::set) for each and
    /// stops at the first error, so it is **not** atomic; override it when the
    /// backend can do better.
    fn bulk_set(
        &self,
        requests: Vec<SetRequest>,
    ) -> impl Future<Output = Result<(), StateError>> + Send {
        async move {
            for request in requests {
                self.set(request).await?;
            }
            Ok(())
        }
    }

    /// Deletes several keys. The default calls [`delete`](Self::delete) for
    /// each and stops at the first error (not atomic).
    fn bulk_delete(
        &self,
        requests: Vec<DeleteRequest>,
    ) -> impl Future<Output = Result<(), StateError>> + Send {
        async move {
            for request in requests {
                self.delete(request).await?;
            }
            Ok(())
        }
    }

    /// Applies all operations or none. Only called when
    /// [`Self::TRANSACTIONAL`] is true.
    fn transact(
        &self,
        request: TransactionRequest,
    ) -> impl Future<Output = Result<(), StateError>> + Send {
        let _ = request;
        async { Err(StateError::Unimplemented("transactions".to_owned())) }
    }

    /// Runs a query (see [`query`] for the filter rules and evaluation
    /// helpers). Only called when [`Self::QUERY_API`] is true; the SDK has
    /// already refused malformed filters with `INVALID_ARGUMENT`. Return the
    /// keys as stored; the host strips its app prefix. The default answers
    /// `UNIMPLEMENTED`.
    fn query(
        &self,
        request: QueryRequest,
    ) -> impl Future<Output = Result<QueryResponse, StateError>> + Send {
        let _ = request;
        async { Err(StateError::Unimplemented("queries".to_owned())) }
    }

    /// The Ping hook. The host calls `Ping` after Init and then periodically
    /// (plugd: every `--component-health-interval`); an `Err` answers the
    /// Ping with that error, and a component that fails
    /// `--component-health-failures` Pings in a row is marked unhealthy until
    /// a Ping succeeds again. Check cheaply what the store needs to serve (a
    /// connection, a file); the default is always `Ok`.
    fn ping(&self) -> impl Future<Output = Result<(), StateError>> + Send {
        async { Ok(()) }
    }
}

impl ComponentServer {
    /// Serves a state store. `factory` makes one store per component instance,
    /// given the instance name (the `x-component-instance` header, or
    /// [`DEFAULT_INSTANCE`](crate::DEFAULT_INSTANCE)).
    pub fn state_store<S, F>(mut self, factory: F) -> Self
    where
        S: StateStore,
        F: Fn(&str) -> S + Send + Sync + 'static,
    {
        let service = StateService {
            mux: Arc::new(Multiplexer::new(factory)),
        };
        if S::TRANSACTIONAL {
            self.routes_mut().add_service(
                TransactionalStateStoreServer::new(service.clone())
                    .max_decoding_message_size(crate::server::MAX_MESSAGE_SIZE),
            );
            self.advertise(<TransactionalStateStoreServer<StateService<S>> as NamedService>::NAME);
        }
        if S::QUERY_API {
            self.routes_mut().add_service(
                QueriableStateStoreServer::new(service.clone())
                    .max_decoding_message_size(crate::server::MAX_MESSAGE_SIZE),
            );
            self.advertise(<QueriableStateStoreServer<StateService<S>> as NamedService>::NAME);
        }
        self.routes_mut().add_service(
            StateStoreServer::new(service)
                .max_decoding_message_size(crate::server::MAX_MESSAGE_SIZE),
        );
        self.advertise(<StateStoreServer<StateService<S>> as NamedService>::NAME);
        self
    }
}

/// The gRPC side of a [`StateStore`]: finds the instance, converts the
/// messages, maps the errors.
struct StateService<S> {
    mux: Arc<Multiplexer<S>>,
}

impl<S> Clone for StateService<S> {
    fn clone(&self) -> Self {
        Self {
            mux: Arc::clone(&self.mux),
        }
    }
}

impl<S> fmt::Debug for StateService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StateService")
            .field("mux", &self.mux)
            .finish()
    }
}

impl<S: StateStore> StateService<S> {
    /// Runs `call` on the request's instance inside a span, mapping errors.
    async fn call<T, R, Fut>(
        &self,
        method: &'static str,
        request: Request<T>,
        call: impl FnOnce(Arc<S>, T) -> Fut,
    ) -> Result<Response<R>, Status>
    where
        Fut: Future<Output = Result<R, StateError>>,
    {
        common::call(
            &self.mux,
            request,
            |instance| tracing::debug_span!("state", %instance, method),
            call,
        )
        .await
    }
}

fn features_of<S: StateStore>(store: &S) -> Vec<String> {
    let mut features: Vec<String> = Vec::new();
    for feature in store.features() {
        let derived = feature == feature::TRANSACTIONAL || feature == feature::QUERY_API;
        if !derived && !features.contains(&feature) {
            features.push(feature);
        }
    }
    if S::TRANSACTIONAL {
        features.push(feature::TRANSACTIONAL.to_owned());
    }
    if S::QUERY_API {
        features.push(feature::QUERY_API.to_owned());
    }
    features
}

#[tonic::async_trait]
impl<S: StateStore> pb::state_store_server::StateStore for StateService<S> {
    async fn init(
        &self,
        request: Request<pb::InitRequest>,
    ) -> Result<Response<pb::InitResponse>, Status> {
        self.call("Init", request, |store, req| async move {
            store.init(properties(req.metadata)).await?;
            Ok(pb::InitResponse {})
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

    async fn delete(
        &self,
        request: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        self.call("Delete", request, |store, req| async move {
            store.delete(req.into()).await?;
            Ok(pb::DeleteResponse {})
        })
        .await
    }

    async fn get(
        &self,
        request: Request<pb::GetRequest>,
    ) -> Result<Response<pb::GetResponse>, Status> {
        self.call("Get", request, |store, req| async move {
            Ok(store.get(req.into()).await?.into())
        })
        .await
    }

    async fn set(
        &self,
        request: Request<pb::SetRequest>,
    ) -> Result<Response<pb::SetResponse>, Status> {
        self.call("Set", request, |store, req| async move {
            store.set(req.into()).await?;
            Ok(pb::SetResponse {})
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

    async fn bulk_delete(
        &self,
        request: Request<pb::BulkDeleteRequest>,
    ) -> Result<Response<pb::BulkDeleteResponse>, Status> {
        self.call("BulkDelete", request, |store, req| async move {
            let items = req.items.into_iter().map(Into::into).collect();
            store.bulk_delete(items).await?;
            Ok(pb::BulkDeleteResponse {})
        })
        .await
    }

    async fn bulk_get(
        &self,
        request: Request<pb::BulkGetRequest>,
    ) -> Result<Response<pb::BulkGetResponse>, Status> {
        self.call("BulkGet", request, |store, req| async move {
            let items = req.items.into_iter().map(Into::into).collect();
            let items = store.bulk_get(items).await?;
            Ok(pb::BulkGetResponse {
                items: items.into_iter().map(Into::into).collect(),
            })
        })
        .await
    }

    async fn bulk_set(
        &self,
        request: Request<pb::BulkSetRequest>,
    ) -> Result<Response<pb::BulkSetResponse>, Status> {
        self.call("BulkSet", request, |store, req| async move {
            let items = req.items.into_iter().map(Into::into).collect();
            store.bulk_set(items).await?;
            Ok(pb::BulkSetResponse {})
        })
        .await
    }
}

#[tonic::async_trait]
impl<S: StateStore> pb::transactional_state_store_server::TransactionalStateStore
    for StateService<S>
{
    async fn transact(
        &self,
        request: Request<pb::TransactionalStateRequest>,
    ) -> Result<Response<pb::TransactionalStateResponse>, Status> {
        self.call("Transact", request, |store, req| async move {
            let request = TransactionRequest::try_from(req)?;
            store.transact(request).await?;
            Ok(pb::TransactionalStateResponse {})
        })
        .await
    }
}

#[tonic::async_trait]
impl<S: StateStore> pb::queriable_state_store_server::QueriableStateStore for StateService<S> {
    async fn query(
        &self,
        request: Request<pb::QueryRequest>,
    ) -> Result<Response<pb::QueryResponse>, Status> {
        self.call("Query", request, |store, req| async move {
            let request = QueryRequest::try_from(req)?;
            Ok(store.query(request).await?.into())
        })
        .await
    }
}

// ---- wire conversions ----

fn etag_from_wire(etag: Option<pb::Etag>) -> Option<String> {
    etag.map(|etag| etag.value)
        .filter(|value| !value.is_empty())
}

fn non_empty(value: String) -> Option<String> {
    (!value.is_empty()).then_some(value)
}

impl From<pb::state_options::StateConsistency> for Consistency {
    fn from(value: pb::state_options::StateConsistency) -> Self {
        use pb::state_options::StateConsistency as Wire;
        match value {
            Wire::ConsistencyUnspecified => Self::Unspecified,
            Wire::ConsistencyEventual => Self::Eventual,
            Wire::ConsistencyStrong => Self::Strong,
        }
    }
}

impl From<pb::state_options::StateConcurrency> for Concurrency {
    fn from(value: pb::state_options::StateConcurrency) -> Self {
        use pb::state_options::StateConcurrency as Wire;
        match value {
            Wire::ConcurrencyUnspecified => Self::Unspecified,
            Wire::ConcurrencyFirstWrite => Self::FirstWrite,
            Wire::ConcurrencyLastWrite => Self::LastWrite,
        }
    }
}

impl From<Option<pb::StateOptions>> for StateOptions {
    fn from(options: Option<pb::StateOptions>) -> Self {
        options.map_or_else(Self::default, |options| Self {
            concurrency: options.concurrency().into(),
            consistency: options.consistency().into(),
        })
    }
}

impl From<pb::GetRequest> for GetRequest {
    fn from(req: pb::GetRequest) -> Self {
        Self {
            consistency: req.consistency().into(),
            key: req.key,
            metadata: req.metadata,
        }
    }
}

impl From<GetResponse> for pb::GetResponse {
    fn from(resp: GetResponse) -> Self {
        Self {
            data: resp.data,
            etag: resp.etag.map(|value| pb::Etag { value }),
            metadata: resp.metadata,
            content_type: resp.content_type.unwrap_or_default(),
        }
    }
}

impl From<pb::SetRequest> for SetRequest {
    fn from(req: pb::SetRequest) -> Self {
        Self {
            key: req.key,
            value: req.value,
            etag: etag_from_wire(req.etag),
            metadata: req.metadata,
            options: req.options.into(),
            content_type: non_empty(req.content_type),
        }
    }
}

impl From<pb::DeleteRequest> for DeleteRequest {
    fn from(req: pb::DeleteRequest) -> Self {
        Self {
            key: req.key,
            etag: etag_from_wire(req.etag),
            metadata: req.metadata,
            options: req.options.into(),
        }
    }
}

impl From<BulkGetItem> for pb::BulkStateItem {
    fn from(item: BulkGetItem) -> Self {
        match item.result {
            Ok(resp) => Self {
                key: item.key,
                data: resp.data,
                etag: resp.etag.map(|value| pb::Etag { value }),
                error: String::new(),
                metadata: resp.metadata,
                content_type: resp.content_type.unwrap_or_default(),
            },
            Err(error) => Self {
                key: item.key,
                error,
                ..Self::default()
            },
        }
    }
}

impl TryFrom<pb::TransactionalStateRequest> for TransactionRequest {
    type Error = StateError;

    fn try_from(req: pb::TransactionalStateRequest) -> Result<Self, StateError> {
        use pb::transactional_state_operation::Request as Op;
        let operations = req
            .operations
            .into_iter()
            .enumerate()
            .map(|(index, op)| match op.request {
                Some(Op::Set(set)) => Ok(Operation::Set(set.into())),
                Some(Op::Delete(delete)) => Ok(Operation::Delete(delete.into())),
                None => Err(StateError::InvalidArgument(format!(
                    "transaction operation {index} is neither set nor delete"
                ))),
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            operations,
            metadata: req.metadata,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_values() {
        assert_eq!(parse_ttl(None).expect("absent"), None);
        assert_eq!(parse_ttl(Some("-1")).expect("-1"), None);
        assert_eq!(
            parse_ttl(Some(" 30 ")).expect("30"),
            Some(Duration::from_secs(30))
        );
        for bad in ["0", "-2", "abc", "1.5", ""] {
            assert!(
                matches!(parse_ttl(Some(bad)), Err(StateError::InvalidArgument(_))),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn etag_mismatch_has_one_bad_request_detail() {
        let status = Status::from(StateError::EtagMismatch("stale".into()));
        assert_eq!(status.code(), Code::FailedPrecondition);
        let details = status.get_error_details();
        let bad_request = details.bad_request().expect("BadRequest detail");
        assert_eq!(bad_request.field_violations.len(), 1);
        assert_eq!(bad_request.field_violations[0].field, "etag");
        assert_eq!(status.get_error_details_vec().len(), 1);
    }

    #[test]
    fn invalid_etag_is_invalid_argument_with_detail() {
        let status = Status::from(StateError::InvalidEtag("not a uuid".into()));
        assert_eq!(status.code(), Code::InvalidArgument);
        let details = status.get_error_details_vec();
        assert_eq!(details.len(), 1);
        let bad_request = status.get_details_bad_request().expect("BadRequest detail");
        assert_eq!(bad_request.field_violations[0].field, "etag");
        assert_eq!(bad_request.field_violations[0].description, "not a uuid");
    }

    #[test]
    fn empty_wire_etag_is_absent() {
        let req = SetRequest::from(pb::SetRequest {
            key: "k".into(),
            etag: Some(pb::Etag {
                value: String::new(),
            }),
            ..Default::default()
        });
        assert_eq!(req.etag, None);
    }

    #[test]
    fn missing_key_response_has_no_etag() {
        let wire = pb::GetResponse::from(GetResponse::default());
        assert!(wire.etag.is_none());
        assert!(wire.data.is_empty());
    }
}
