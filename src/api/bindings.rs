//! Output bindings, shared by the gRPC and HTTP APIs: the operation check against what the
//! component listed at Init, and Dapr's error mapping.

use std::{collections::HashMap, sync::Arc};

use tonic::Code;

use super::{ApiError, state::unavailable};
use crate::{
    component::ComponentKind,
    proto::components as pb,
    registry::{ComponentStatus, Registry},
};

/// Dapr's error code for every output-binding failure.
const ERR_INVOKE: &str = "ERR_INVOKE_OUTPUT_BINDING";

/// The output-binding API over the registry.
#[derive(Clone)]
pub struct BindingsApi {
    registry: Arc<Registry>,
}

/// What an output binding answered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Invoked {
    pub data: Vec<u8>,
    pub metadata: HashMap<String, String>,
    /// The component's content type; empty when it gave none.
    pub content_type: String,
}

fn invoke_error(name: &str, why: impl std::fmt::Display) -> ApiError {
    ApiError::basic(
        Code::Internal,
        500,
        ERR_INVOKE,
        format!("error invoking output binding {name}: {why}"),
    )
}

impl BindingsApi {
    pub fn new(registry: Arc<Registry>) -> Self {
        Self { registry }
    }

    /// Invokes `operation` on output binding `name`. The operation is checked against the
    /// component's `ListOperations` before any call reaches it.
    pub async fn invoke(
        &self,
        name: &str,
        operation: &str,
        data: Vec<u8>,
        metadata: HashMap<String, String>,
    ) -> Result<Invoked, ApiError> {
        let snapshot = self.registry.snapshot();
        let Some(info) = snapshot
            .component(name)
            .filter(|c| c.kinds.contains(&ComponentKind::OutputBinding))
        else {
            return Err(invoke_error(
                name,
                format!("couldn't find output binding {name}"),
            ));
        };
        let entry = match snapshot.bindings.get(name) {
            Some(e) if info.status == ComponentStatus::Ready => e.clone(),
            _ => {
                return Err(unavailable(
                    info,
                    info.status.reason().unwrap_or("it is still initialising"),
                ));
            }
        };
        let Some(output) = entry.binding.output.clone() else {
            return Err(invoke_error(
                name,
                format!(
                    "couldn't find output binding {name}: the component serves only the input side (direction metadata)"
                ),
            ));
        };
        if operation.is_empty() {
            return Err(invoke_error(
                name,
                "operation field is missing from request",
            ));
        }
        let operations = &entry.binding.operations;
        if !operations.iter().any(|o| o == operation) {
            let valid = if operations.is_empty() {
                "the component lists none".to_string()
            } else {
                format!("valid operations: {}", operations.join(", "))
            };
            return Err(invoke_error(
                name,
                format!("binding {name} does not support operation {operation:?}; {valid}"),
            ));
        }
        let req = pb::InvokeRequest {
            data,
            metadata,
            operation: operation.to_string(),
        };
        match output.invoke(req).await {
            Ok(resp) => Ok(Invoked {
                data: resp.data,
                metadata: resp.metadata,
                content_type: resp.content_type,
            }),
            Err(e) if e.is_connection_failure() => Err(unavailable(&entry.info, &e.detail())),
            Err(e) => Err(invoke_error(name, e.detail())),
        }
    }
}
