//! Secret stores: the trait the API and the secret-reference resolver call, and its gRPC
//! adapter.

use std::collections::HashMap;

use async_trait::async_trait;

use super::{ComponentError, Connection, Limited};
use crate::proto::components::{self as pb, secret_store_client::SecretStoreClient};
use crate::secret::{SecretData, wrap};

/// The feature a secret store reports when one secret may hold several key/value pairs.
pub const FEATURE_MULTIPLE_KEY_VALUES: &str = "MULTIPLE_KEY_VALUES_PER_SECRET";

/// What plugd needs from a secret store.
#[async_trait]
pub trait SecretStore: Send + Sync {
    /// The key/value pairs of secret `key` (values wrapped: never in logs).
    async fn get(
        &self,
        key: String,
        metadata: HashMap<String, String>,
    ) -> Result<SecretData, ComponentError>;
    /// Every secret: name → its key/value pairs.
    async fn bulk_get(
        &self,
        metadata: HashMap<String, String>,
    ) -> Result<HashMap<String, SecretData>, ComponentError>;
    async fn ping(&self) -> Result<(), ComponentError>;
    fn connection(&self) -> &Connection;
}

/// A secret store served over gRPC.
pub struct GrpcSecretStore {
    conn: Connection,
}

impl GrpcSecretStore {
    /// Calls `Init` with `properties` and then `Features`, both done by `deadline`.
    pub async fn init(
        conn: Connection,
        properties: HashMap<String, String>,
        deadline: tokio::time::Instant,
    ) -> Result<(Self, Vec<String>), ComponentError> {
        let left = || deadline.saturating_duration_since(tokio::time::Instant::now());
        let req = pb::SecretStoreInitRequest {
            metadata: Some(pb::MetadataRequest { properties }),
        };
        conn.call_with_timeout("Init", left(), req, |ch, r| async move {
            SecretStoreClient::new(ch).limited(&r).init(r).await
        })
        .await?;
        let features = conn
            .call_with_timeout(
                "Features",
                left(),
                pb::FeaturesRequest {},
                |ch, r| async move { SecretStoreClient::new(ch).limited(&r).features(r).await },
            )
            .await?
            .features;
        Ok((Self { conn }, features))
    }
}

#[async_trait]
impl SecretStore for GrpcSecretStore {
    async fn get(
        &self,
        key: String,
        metadata: HashMap<String, String>,
    ) -> Result<SecretData, ComponentError> {
        let req = pb::GetSecretRequest { key, metadata };
        Ok(wrap(
            self.conn
                .call("Get", req, |ch, r| async move {
                    SecretStoreClient::new(ch).limited(&r).get(r).await
                })
                .await?
                .data,
        ))
    }

    async fn bulk_get(
        &self,
        metadata: HashMap<String, String>,
    ) -> Result<HashMap<String, SecretData>, ComponentError> {
        let req = pb::BulkGetSecretRequest { metadata };
        Ok(self
            .conn
            .call("BulkGet", req, |ch, r| async move {
                SecretStoreClient::new(ch).limited(&r).bulk_get(r).await
            })
            .await?
            .data
            .into_iter()
            .map(|(name, s)| (name, wrap(s.secrets)))
            .collect())
    }

    async fn ping(&self) -> Result<(), ComponentError> {
        self.conn
            .call("Ping", pb::PingRequest {}, |ch, r| async move {
                SecretStoreClient::new(ch).limited(&r).ping(r).await
            })
            .await?;
        Ok(())
    }

    fn connection(&self) -> &Connection {
        &self.conn
    }
}
