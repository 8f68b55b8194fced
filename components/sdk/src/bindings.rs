//! Bindings: [`OutputBinding`] (the app calls out to a system) and
//! [`InputBinding`] (a system sends events to the app), their request and
//! event types, [`BindingError`], and the gRPC adapters that serve
//! `dapr.proto.components.v1.OutputBinding` and
//! `dapr.proto.components.v1.InputBinding`.
//!
//! One component can be both: serve the same type (or two types) with
//! [`ComponentServer::output_binding`](crate::ComponentServer::output_binding)
//! and [`ComponentServer::input_binding`](crate::ComponentServer::input_binding)
//! on one socket. Each kind has its own instances, so an instance name used by
//! both gets two values.
//!
//! # Output bindings
//!
//! [`OutputBinding::operations`] names the operations the binding performs
//! (served by `ListOperations`); [`OutputBinding::invoke`] performs one. The
//! SDK refuses an operation that is not in the list with `INVALID_ARGUMENT`
//! (naming the supported ones) without calling `invoke`.
//!
//! # Input bindings and the `Read` stream
//!
//! The host opens one `Read` stream per component instance and sends nothing
//! on it until the component has sent an event. The SDK then calls
//! [`InputBinding::read`] in a task of its own with an [`EventSink`] for that
//! stream, and keeps it running for as long as the stream lives:
//!
//! - [`EventSink::send`] sends one [`Event`] under a fresh message id (a UUID)
//!   and waits for the host's reply to that id: `Ok(data)` with the app's
//!   response body, or [`EventError::Failed`] with the host's error text.
//!   Sends may run concurrently (clone the sink, or join several sends); the
//!   host handles the events of a stream concurrently and replies in any
//!   order, and each reply goes to the send that sent its id.
//! - When the host closes the stream (or the stream breaks, or the server
//!   shuts down), every send still waiting resolves to [`EventError::Closed`],
//!   later sends fail the same way at once, and [`EventSink::closed`]
//!   completes. `read` should then return; it is given a grace of a few
//!   seconds and then dropped.
//! - If `read` returns `Ok` while the host is still connected, the stream is
//!   ended cleanly; an `Err` ends it with the error's status.
//! - **One stream per instance.** When the host opens a new `Read` stream for
//!   an instance that already has one (after a restart the host reconnects,
//!   and the old stream may not have been noticed as gone yet), the new stream
//!   replaces the old one: the old one is closed as above and ends with
//!   `ABORTED`, and `read` is called for the new stream only once the old
//!   `read` has returned (or been dropped). So at most one `read` runs per
//!   instance at a time.
//!
//! The SDK keeps no events: an event whose send ended in
//! [`EventError::Closed`] may or may not have reached the app, and it is up to
//! the component to send it again on the next stream or drop it.
//!
//! # Example
//!
//! An output binding that echoes, and an input binding that sends a tick
//! every second, on one socket:
//!
//! ```no_run
//! use std::time::Duration;
//!
//! use plugd_component_sdk::ComponentServer;
//! use plugd_component_sdk::bindings::{
//!     BindingError, Event, EventError, EventSink, InputBinding, InvokeRequest, InvokeResponse,
//!     OutputBinding, Properties,
//! };
//!
//! struct Echo;
//!
//! impl OutputBinding for Echo {
//!     async fn init(&self, _properties: Properties) -> Result<(), BindingError> {
//!         Ok(())
//!     }
//!
//!     fn operations(&self) -> Vec<String> {
//!         vec!["echo".to_owned()]
//!     }
//!
//!     async fn invoke(&self, request: InvokeRequest) -> Result<InvokeResponse, BindingError> {
//!         Ok(InvokeResponse {
//!             data: request.data,
//!             metadata: request.metadata,
//!             content_type: Some("application/octet-stream".to_owned()),
//!         })
//!     }
//! }
//!
//! struct Ticker;
//!
//! impl InputBinding for Ticker {
//!     async fn init(&self, _properties: Properties) -> Result<(), BindingError> {
//!         Ok(())
//!     }
//!
//!     async fn read(&self, events: EventSink) -> Result<(), BindingError> {
//!         let mut interval = tokio::time::interval(Duration::from_secs(1));
//!         loop {
//!             tokio::select! {
//!                 _ = interval.tick() => {}
//!                 () = events.closed() => return Ok(()),
//!             }
//!             let event = Event {
//!                 data: b"tick".to_vec(),
//!                 ..Event::default()
//!             };
//!             match events.send(event).await {
//!                 Ok(reply) => tracing::debug!(bytes = reply.len(), "the app handled the tick"),
//!                 Err(EventError::Failed(error)) => tracing::warn!(%error, "the app failed"),
//!                 Err(EventError::Closed) => return Ok(()),
//!             }
//!         }
//!     }
//! }
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     // Served as demo.sock: `type: bindings.demo` in a Component YAML.
//!     ComponentServer::new("demo")
//!         .output_binding(|_instance| Echo)
//!         .input_binding(|_instance| Ticker)
//!         .serve()
//!         .await?;
//!     Ok(())
//! }
//! ```

use std::collections::HashMap;

use tonic::Status;

use crate::common::{KindError, error_chain};

mod input;
mod output;

pub use input::{Event, EventError, EventSink, InputBinding};
pub use output::{InvokeRequest, InvokeResponse, OutputBinding, operation};

/// Init properties: the Component's `spec.metadata`, every value a string.
pub type Properties = HashMap<String, String>;

/// Per-request or per-event metadata.
pub type Metadata = HashMap<String, String>;

/// Errors a binding returns; the SDK turns each into a gRPC status.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BindingError {
    /// A bad request or bad Init properties: `INVALID_ARGUMENT`.
    #[error("{0}")]
    InvalidArgument(String),
    /// The operation is not one the binding performs: `INVALID_ARGUMENT`,
    /// naming the supported ones. The SDK returns it itself for operations
    /// missing from [`OutputBinding::operations`].
    #[error("unsupported operation {operation:?}; supported: {}", operation_list(.supported))]
    UnsupportedOperation {
        /// The operation asked for.
        operation: String,
        /// The operations the binding performs.
        supported: Vec<String>,
    },
    /// What the request names does not exist: `NOT_FOUND`.
    #[error("{0}")]
    NotFound(String),
    /// The binding refuses the request: `PERMISSION_DENIED`.
    #[error("{0}")]
    PermissionDenied(String),
    /// A call came before a successful Init: `FAILED_PRECONDITION`.
    #[error("the binding is not initialised")]
    NotInitialized,
    /// The operation is not supported: `UNIMPLEMENTED`.
    #[error("not implemented: {0}")]
    Unimplemented(String),
    /// The outside system cannot be reached right now: `UNAVAILABLE`.
    #[error("{0}")]
    Unavailable(String),
    /// Any other failure: `INTERNAL`.
    #[error("{0}")]
    Internal(String),
    /// A status built by the binding itself, passed through unchanged.
    #[error(transparent)]
    Status(#[from] Status),
}

fn operation_list(operations: &[String]) -> String {
    if operations.is_empty() {
        "none".to_owned()
    } else {
        operations.join(", ")
    }
}

impl BindingError {
    /// A [`BindingError::Internal`] from any error, with its source chain.
    pub fn internal(err: impl std::error::Error) -> Self {
        Self::Internal(error_chain(&err))
    }
}

impl From<BindingError> for Status {
    fn from(err: BindingError) -> Self {
        let message = err.to_string();
        match err {
            BindingError::InvalidArgument(_) | BindingError::UnsupportedOperation { .. } => {
                Status::invalid_argument(message)
            }
            BindingError::NotFound(_) => Status::not_found(message),
            BindingError::PermissionDenied(_) => Status::permission_denied(message),
            BindingError::NotInitialized => Status::failed_precondition(message),
            BindingError::Unimplemented(_) => Status::unimplemented(message),
            BindingError::Unavailable(_) => Status::unavailable(message),
            BindingError::Internal(_) => Status::internal(message),
            BindingError::Status(status) => status,
        }
    }
}

impl KindError for BindingError {
    fn is_internal(&self) -> bool {
        matches!(self, Self::Internal(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn errors_map_to_statuses() {
        let cases = [
            (
                BindingError::InvalidArgument("x".into()),
                Code::InvalidArgument,
            ),
            (
                BindingError::UnsupportedOperation {
                    operation: "drop".into(),
                    supported: vec!["get".into()],
                },
                Code::InvalidArgument,
            ),
            (BindingError::NotFound("f".into()), Code::NotFound),
            (
                BindingError::PermissionDenied("no".into()),
                Code::PermissionDenied,
            ),
            (BindingError::NotInitialized, Code::FailedPrecondition),
            (BindingError::Unimplemented("x".into()), Code::Unimplemented),
            (BindingError::Unavailable("down".into()), Code::Unavailable),
            (BindingError::Internal("boom".into()), Code::Internal),
            (BindingError::Status(Status::aborted("mine")), Code::Aborted),
        ];
        for (err, code) in cases {
            assert_eq!(Status::from(err).code(), code);
        }
    }

    #[test]
    fn unsupported_operation_names_the_supported_ones() {
        let err = BindingError::UnsupportedOperation {
            operation: "drop".into(),
            supported: vec!["create".into(), "get".into()],
        };
        assert_eq!(
            err.to_string(),
            "unsupported operation \"drop\"; supported: create, get"
        );
        let err = BindingError::UnsupportedOperation {
            operation: "drop".into(),
            supported: Vec::new(),
        };
        assert_eq!(
            err.to_string(),
            "unsupported operation \"drop\"; supported: none"
        );
    }

    #[test]
    fn internal_keeps_the_source_chain() {
        #[derive(Debug, thiserror::Error)]
        #[error("writing")]
        struct Outer(#[source] std::io::Error);
        let err = BindingError::internal(Outer(std::io::Error::other("disk full")));
        assert_eq!(err.to_string(), "writing: disk full");
    }
}
