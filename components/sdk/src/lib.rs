//! Write [Dapr pluggable components] in Rust.
//!
//! A pluggable component is a gRPC server on a Unix socket that daprd (or
//! plugd) finds in its sockets folder. This crate provides that server:
//!
//! - **Socket.** `<folder>/<name>.sock`, where the folder is the first set of
//!   `DAPR_COMPONENTS_SOCKETS_FOLDER`, `DAPR_COMPONENT_SOCKETS_FOLDER`,
//!   `DAPR_COMPONENT_SOCKET_FOLDER`, else `/tmp/dapr-components-sockets`
//!   ([`ComponentServer::socket_folder`] overrides it). The folder is created
//!   if missing, a stale socket left by a dead process is removed (a live one,
//!   or a file that is not a socket, is an error), the socket is made `0o660`,
//!   and it is removed again on shutdown.
//! - **Reflection.** `grpc.reflection.v1alpha` (what daprd asks) and
//!   `grpc.reflection.v1`, both listing only the component services served.
//! - **Instances.** daprd names the Component resource a call is for in the
//!   `x-component-instance` header. One value of your type is created per name
//!   by the factory you give, on first use; calls without the header use a
//!   default instance (see [`multiplex`]). Re-Init goes to the same value.
//! - **Shutdown.** [`ComponentServer::serve`] stops on SIGTERM or SIGINT;
//!   [`ComponentServer::serve_with_shutdown`] on any future (for a
//!   `CancellationToken`, `token.cancelled_owned()`). In-flight calls get a
//!   bounded grace ([`ComponentServer::shutdown_grace`]).
//! - **Errors.** [`state::StateError`], [`pubsub::PubSubError`],
//!   [`secretstore::SecretStoreError`] and [`bindings::BindingError`] variants
//!   become the statuses and `google.rpc` error details daprd understands
//!   (etag mismatch → `FAILED_PRECONDITION` with one `BadRequest` violation on
//!   `etag`, missing secret → `NOT_FOUND`, …).
//! - **Metadata.** [`metadata`] reads Init properties as Dapr components do
//!   (names matched without regard to case, blank values absent, Go
//!   durations), collects every problem into one [`metadata::ConfigError`],
//!   and [`metadata::warn_unknown`] logs the keys a component does not read
//!   (one `warn` line, names only), leaving alone the keys Dapr defines at
//!   runtime level ([`metadata::RUNTIME_KEYS`]).
//!
//! Kinds live in one module each, all of the same shape (a trait, a
//! `ComponentServer::<kind>(factory)` method, an adapter):
//!
//! | Kind | Trait | Method | Service |
//! |------|-------|--------|---------|
//! | State store | [`state::StateStore`] | [`ComponentServer::state_store`] | `StateStore` (+ `TransactionalStateStore`) |
//! | Pub/sub | [`pubsub::PubSub`] | [`ComponentServer::pubsub`] | `PubSub` |
//! | Secret store | [`secretstore::SecretStore`] | [`ComponentServer::secret_store`] | `SecretStore` |
//! | Output binding | [`bindings::OutputBinding`] | [`ComponentServer::output_binding`] | `OutputBinding` |
//! | Input binding | [`bindings::InputBinding`] | [`ComponentServer::input_binding`] | `InputBinding` |
//!
//! (services in `dapr.proto.components.v1`). One server can serve several
//! kinds on the same socket (`.state_store(..).pubsub(..)`,
//! `.secret_store(..).output_binding(..)`). Streams (pub/sub subscriptions,
//! input-binding reads) pair each message the component sends with the
//! host's answer to it by id, and close at once when the server shuts down.
//!
//! # Clients that send the socket path as `:authority`
//!
//! Python `grpcio` dialling `unix:///tmp/x/c.sock` sends the percent-encoded
//! path (`tmp%2Fx%2Fc.sock`) as the HTTP/2 `:authority`. The `h2` crate under
//! tonic parses every `:authority` as a URI authority, where `%` is only
//! allowed in the user-info part, so it resets the stream with
//! `PROTOCOL_ERROR` before any tonic code runs (the client sees `INTERNAL:
//! Received RST_STREAM with error code 1`). There is no server option to relax
//! this, so this server cannot accept such calls. Checked with grpcio 1.85.1
//! against `plugd-sqlite`: without options the call is reset; with the channel
//! option `grpc.default_authority=localhost` it works. Python (grpcio) clients
//! of a Rust component must set that option. daprd and tonic clients send
//! `localhost` and are unaffected.
//!
//! # What the author implements, and what follows from it
//!
//! - **Features are derived, not claimed.** Optional capabilities are
//!   associated constants next to the method they need:
//!   [`state::StateStore::TRANSACTIONAL`] (`transact`, served as
//!   `TransactionalStateStore`, reported as `TRANSACTIONAL`),
//!   [`state::StateStore::QUERY_API`] (`query`, `QueriableStateStore`,
//!   `QUERY_API`), [`pubsub::PubSub::BULK_PUBLISH`] (`bulk_publish`,
//!   `BULK_PUBSUB`) and
//!   [`secretstore::SecretStore::MULTIPLE_KEY_VALUES_PER_SECRET`]. The SDK
//!   serves the extra service and reports the feature exactly when the
//!   constant is true, whatever `features()` says. Other features (`ETAG`,
//!   `TTL`, …) are named by `features()`; `plugd conformance` checks that
//!   they hold. Output bindings list their operations in
//!   [`bindings::OutputBinding::operations`], and the SDK refuses others.
//! - **Ping hook.** Every kind's trait has `ping`, called for each `Ping`
//!   of the instance; return an error when the backend cannot serve, and the
//!   host marks the component unhealthy after repeated failures. The default
//!   answers `Ok`.
//! - **Bulk calls** default to loops over the single calls (state bulk
//!   get/set/delete, bulk publish); override them when the backend does
//!   better.
//!
//! Each kind's module has a complete example: [`state`] (etags,
//! transactions, queries), [`pubsub`] (subscriptions, acks, [`pubsub::Redelivery`]),
//! [`bindings`] (an output binding, and an input binding reading the app's
//! replies), [`secretstore`]. The guide `docs/writing-a-component-rust.md`
//! walks through them, and through testing a component with `plugd inspect`
//! and `plugd conformance`.
//!
//! # Quick start
//!
//! Add `plugd-component-sdk` and `tokio` (with `macros` and
//! `rt-multi-thread`) to a binary crate. This is an in-memory state store
//! without etags, served as `memory.sock` (`type: state.memory` in a
//! Component YAML); [`run`] adds flag parsing and logging for a real binary:
//!
//! ```no_run
//! use std::collections::HashMap;
//! use std::sync::Mutex;
//!
//! use plugd_component_sdk::ComponentServer;
//! use plugd_component_sdk::state::{
//!     DeleteRequest, GetRequest, GetResponse, Properties, SetRequest, StateError, StateStore,
//! };
//!
//! #[derive(Default)]
//! struct Memory(Mutex<HashMap<String, Vec<u8>>>);
//!
//! impl Memory {
//!     fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<u8>>> {
//!         self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
//!     }
//! }
//!
//! impl StateStore for Memory {
//!     async fn init(&self, _properties: Properties) -> Result<(), StateError> {
//!         Ok(())
//!     }
//!
//!     async fn get(&self, request: GetRequest) -> Result<GetResponse, StateError> {
//!         Ok(match self.map().get(&request.key) {
//!             Some(data) => GetResponse { data: data.clone(), ..Default::default() },
//!             None => GetResponse::default(),
//!         })
//!     }
//!
//!     async fn set(&self, request: SetRequest) -> Result<(), StateError> {
//!         if request.etag.is_some() {
//!             return Err(StateError::EtagMismatch("this store has no etags".into()));
//!         }
//!         self.map().insert(request.key, request.value);
//!         Ok(())
//!     }
//!
//!     async fn delete(&self, request: DeleteRequest) -> Result<(), StateError> {
//!         self.map().remove(&request.key);
//!         Ok(())
//!     }
//! }
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     ComponentServer::new("memory")
//!         .state_store(|_instance| Memory::default())
//!         .serve()
//!         .await?;
//!     Ok(())
//! }
//! ```
//!
//! [Dapr pluggable components]: https://docs.dapr.io/developing-applications/develop-components/pluggable-components/

pub mod bindings;
pub mod client;
mod common;
pub mod metadata;
pub mod multiplex;
pub mod pubsub;
pub mod run;
pub mod secretstore;
pub mod server;
pub mod state;

pub use multiplex::{DEFAULT_INSTANCE, INSTANCE_HEADER};
pub use server::{
    BoundServer, ComponentServer, ServeError, shutdown_signal, socket_folder_from_env,
};

/// The generated protobuf types of `dapr.proto.components.v1`.
pub use plugd_proto::components as proto;
