//! Output bindings: the [`OutputBinding`] trait and its adapter.

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use super::{BindingError, Metadata, Properties};
use crate::common::{self, properties};
use crate::multiplex::Multiplexer;
use crate::server::ComponentServer;
use pb::output_binding_server::OutputBindingServer;
use plugd_proto::components as pb;
use tonic::server::NamedService;
use tonic::{Request, Response, Status};

/// The operation names Dapr bindings conventionally use. Any other name is
/// allowed too.
pub mod operation {
    /// Create or write something.
    pub const CREATE: &str = "create";
    /// Read something.
    pub const GET: &str = "get";
    /// Delete something.
    pub const DELETE: &str = "delete";
    /// List things.
    pub const LIST: &str = "list";
}

/// One invocation of an output binding.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct InvokeRequest {
    /// The payload.
    pub data: Vec<u8>,
    /// Request metadata (binding-specific parameters, such as a file name).
    pub metadata: Metadata,
    /// The operation; always one of [`OutputBinding::operations`].
    pub operation: String,
}

/// The result of an invocation.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct InvokeResponse {
    /// The payload returned to the app.
    pub data: Vec<u8>,
    /// Response metadata.
    pub metadata: Metadata,
    /// Content type of the payload; `None` is sent as an empty string.
    pub content_type: Option<String>,
}

/// An output binding component. Implement it, then serve it with
/// [`ComponentServer::output_binding`].
///
/// One value is created per component instance (per `x-component-instance`),
/// so the methods take `&self`: use interior mutability for what `init` sets
/// up. daprd may call `init` again on the same instance after a hot reload.
///
/// Methods are written as `async fn` in the implementation; their futures must
/// be `Send`.
pub trait OutputBinding: Send + Sync + 'static {
    /// Sets the instance up from the Component's metadata.
    fn init(&self, properties: Properties)
    -> impl Future<Output = Result<(), BindingError>> + Send;

    /// The operations [`invoke`](Self::invoke) performs, such as
    /// [`operation::CREATE`]. Served by `ListOperations` (duplicates removed);
    /// an invocation of any other operation is refused by the SDK with
    /// [`BindingError::UnsupportedOperation`], so an empty list refuses all.
    /// Called on every invocation: keep it cheap.
    fn operations(&self) -> Vec<String>;

    /// Performs one operation. `request.operation` is one of
    /// [`operations`](Self::operations).
    fn invoke(
        &self,
        request: InvokeRequest,
    ) -> impl Future<Output = Result<InvokeResponse, BindingError>> + Send;

    /// The Ping hook. The host calls `Ping` after Init and then periodically
    /// (plugd: every `--component-health-interval`); an `Err` answers the
    /// Ping with that error, and a component that fails
    /// `--component-health-failures` Pings in a row is marked unhealthy until
    /// a Ping succeeds again. Check cheaply what the binding needs to serve (a
    /// connection, a file); the default is always `Ok`.
    fn ping(&self) -> impl Future<Output = Result<(), BindingError>> + Send {
        async { Ok(()) }
    }
}

impl ComponentServer {
    /// Serves an output binding. `factory` makes one value per component
    /// instance, given the instance name (the `x-component-instance` header,
    /// or [`DEFAULT_INSTANCE`](crate::DEFAULT_INSTANCE)).
    pub fn output_binding<B, F>(mut self, factory: F) -> Self
    where
        B: OutputBinding,
        F: Fn(&str) -> B + Send + Sync + 'static,
    {
        let service = OutputService {
            mux: Arc::new(Multiplexer::new(factory)),
        };
        self.routes_mut().add_service(
            OutputBindingServer::new(service)
                .max_decoding_message_size(crate::server::MAX_MESSAGE_SIZE),
        );
        self.advertise(<OutputBindingServer<OutputService<B>> as NamedService>::NAME);
        self
    }
}

/// The gRPC side of an [`OutputBinding`]: finds the instance, checks the
/// operation, converts the messages, maps the errors.
struct OutputService<B> {
    mux: Arc<Multiplexer<B>>,
}

impl<B> Clone for OutputService<B> {
    fn clone(&self) -> Self {
        Self {
            mux: Arc::clone(&self.mux),
        }
    }
}

impl<B> fmt::Debug for OutputService<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutputService")
            .field("mux", &self.mux)
            .finish()
    }
}

impl<B: OutputBinding> OutputService<B> {
    /// Runs `call` on the request's instance inside a span, mapping errors.
    async fn call<T, R, Fut>(
        &self,
        method: &'static str,
        request: Request<T>,
        call: impl FnOnce(Arc<B>, T) -> Fut,
    ) -> Result<Response<R>, Status>
    where
        Fut: Future<Output = Result<R, BindingError>>,
    {
        common::call(
            &self.mux,
            request,
            |instance| tracing::debug_span!("output_binding", %instance, method),
            call,
        )
        .await
    }
}

/// The binding's operations, in order, without duplicates.
fn operations_of<B: OutputBinding>(binding: &B) -> Vec<String> {
    let mut operations: Vec<String> = Vec::new();
    for operation in binding.operations() {
        if !operations.contains(&operation) {
            operations.push(operation);
        }
    }
    operations
}

#[tonic::async_trait]
impl<B: OutputBinding> pb::output_binding_server::OutputBinding for OutputService<B> {
    async fn init(
        &self,
        request: Request<pb::OutputBindingInitRequest>,
    ) -> Result<Response<pb::OutputBindingInitResponse>, Status> {
        self.call("Init", request, |binding, req| async move {
            binding.init(properties(req.metadata)).await?;
            Ok(pb::OutputBindingInitResponse {})
        })
        .await
    }

    async fn invoke(
        &self,
        request: Request<pb::InvokeRequest>,
    ) -> Result<Response<pb::InvokeResponse>, Status> {
        self.call("Invoke", request, |binding, req| async move {
            let supported = operations_of(&*binding);
            if !supported.contains(&req.operation) {
                return Err(BindingError::UnsupportedOperation {
                    operation: req.operation,
                    supported,
                });
            }
            let response = binding
                .invoke(InvokeRequest {
                    data: req.data,
                    metadata: req.metadata,
                    operation: req.operation,
                })
                .await?;
            Ok(pb::InvokeResponse {
                data: response.data,
                metadata: response.metadata,
                content_type: response.content_type.unwrap_or_default(),
            })
        })
        .await
    }

    async fn list_operations(
        &self,
        request: Request<pb::ListOperationsRequest>,
    ) -> Result<Response<pb::ListOperationsResponse>, Status> {
        self.call("ListOperations", request, |binding, _| async move {
            Ok(pb::ListOperationsResponse {
                operations: operations_of(&*binding),
            })
        })
        .await
    }

    async fn ping(
        &self,
        request: Request<pb::PingRequest>,
    ) -> Result<Response<pb::PingResponse>, Status> {
        self.call("Ping", request, |binding, _| async move {
            binding.ping().await?;
            Ok(pb::PingResponse {})
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Files;

    impl OutputBinding for Files {
        async fn init(&self, _properties: Properties) -> Result<(), BindingError> {
            Ok(())
        }

        fn operations(&self) -> Vec<String> {
            [operation::CREATE, operation::GET, operation::CREATE]
                .map(str::to_owned)
                .into()
        }

        async fn invoke(&self, _request: InvokeRequest) -> Result<InvokeResponse, BindingError> {
            Ok(InvokeResponse::default())
        }
    }

    #[test]
    fn operations_are_listed_once_in_order() {
        assert_eq!(operations_of(&Files), ["create", "get"]);
    }
}
