//! Secret stores, shared by the gRPC and HTTP APIs, with Dapr's (plain, detail-less) errors.

use std::{collections::HashMap, sync::Arc};

use tonic::Code;

use super::{ApiError, state::unavailable};
use crate::{
    component::ComponentKind,
    registry::{ComponentStatus, Registry, SecretStoreEntry},
};

/// The secrets API over the registry.
#[derive(Clone)]
pub struct SecretsApi {
    registry: Arc<Registry>,
}

/// Secret name → its key/value pairs.
pub type Secrets = HashMap<String, HashMap<String, String>>;

impl SecretsApi {
    pub fn new(registry: Arc<Registry>) -> Self {
        Self { registry }
    }

    /// The ready secret store `name`, after Dapr's checks.
    fn store(&self, name: &str) -> Result<Arc<SecretStoreEntry>, ApiError> {
        let snapshot = self.registry.snapshot();
        let is_store =
            |c: &crate::registry::ComponentInfo| c.kinds.contains(&ComponentKind::SecretStore);
        if !snapshot.components.values().any(|c| is_store(c)) {
            return Err(ApiError::plain(
                Code::FailedPrecondition,
                500,
                "ERR_SECRET_STORES_NOT_CONFIGURED",
                "secret store is not configured",
            ));
        }
        let Some(info) = snapshot.component(name).filter(|c| is_store(c)) else {
            return Err(ApiError::plain(
                Code::InvalidArgument,
                401,
                "ERR_SECRET_STORE_NOT_FOUND",
                format!("failed finding secret store with key {name}"),
            ));
        };
        match snapshot.secret_stores.get(name) {
            Some(e) if info.status == ComponentStatus::Ready => Ok(e.clone()),
            _ => Err(unavailable(
                info,
                info.status.reason().unwrap_or("it is still initialising"),
            )),
        }
    }

    /// Secret `key` of store `store`: its key/value pairs.
    pub async fn get(
        &self,
        store: &str,
        key: &str,
        metadata: HashMap<String, String>,
    ) -> Result<HashMap<String, String>, ApiError> {
        let entry = self.store(store)?;
        match entry.store.get(key.to_string(), metadata).await {
            // Exposed here only to be sent to the app.
            Ok(data) => Ok(crate::secret::expose(&data)),
            Err(e) if e.is_connection_failure() => Err(unavailable(&entry.info, &e.detail())),
            Err(e) => Err(ApiError::plain(
                Code::Internal,
                500,
                "ERR_SECRET_GET",
                format!(
                    "failed getting secret with key {key} from secret store {store}: {}",
                    e.detail()
                ),
            )),
        }
    }

    /// Every secret of store `store`.
    pub async fn bulk_get(
        &self,
        store: &str,
        metadata: HashMap<String, String>,
    ) -> Result<Secrets, ApiError> {
        let entry = self.store(store)?;
        match entry.store.bulk_get(metadata).await {
            Ok(data) => Ok(data
                .iter()
                .map(|(name, values)| (name.clone(), crate::secret::expose(values)))
                .collect()),
            Err(e) if e.is_connection_failure() => Err(unavailable(&entry.info, &e.detail())),
            Err(e) => Err(ApiError::plain(
                Code::Internal,
                500,
                "ERR_SECRET_GET",
                format!(
                    "failed getting secrets from secret store {store}: {}",
                    e.detail()
                ),
            )),
        }
    }
}
