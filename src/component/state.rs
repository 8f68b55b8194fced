//! State stores: the trait the API layer calls, and its gRPC adapter.

use std::collections::HashMap;

use async_trait::async_trait;
use tokio::sync::OnceCell;

use super::{ComponentError, Connection, Limited};
use crate::proto::components::{
    self as pb, queriable_state_store_client::QueriableStateStoreClient,
    state_store_client::StateStoreClient,
    transactional_state_store_client::TransactionalStateStoreClient,
    transactional_store_multi_max_size_client::TransactionalStoreMultiMaxSizeClient,
};

/// What plugd needs from a state store. Keys arrive already prefixed.
#[async_trait]
pub trait StateStore: Send + Sync {
    async fn get(&self, req: pb::GetRequest) -> Result<pb::GetResponse, ComponentError>;
    async fn set(&self, req: pb::SetRequest) -> Result<(), ComponentError>;
    async fn delete(&self, req: pb::DeleteRequest) -> Result<(), ComponentError>;
    async fn bulk_get(
        &self,
        req: pb::BulkGetRequest,
    ) -> Result<pb::BulkGetResponse, ComponentError>;
    async fn bulk_set(&self, req: pb::BulkSetRequest) -> Result<(), ComponentError>;
    async fn bulk_delete(&self, req: pb::BulkDeleteRequest) -> Result<(), ComponentError>;
    async fn transact(&self, req: pb::TransactionalStateRequest) -> Result<(), ComponentError>;
    /// The most operations one transaction may hold; `None` = no limit.
    async fn max_transaction_ops(&self) -> Option<i64>;
    async fn query(&self, req: pb::QueryRequest) -> Result<pb::QueryResponse, ComponentError>;
    async fn ping(&self) -> Result<(), ComponentError>;
}

/// A state store served by a pluggable component over gRPC.
pub struct GrpcStateStore {
    conn: Connection,
    max_ops: OnceCell<Option<i64>>,
}

impl GrpcStateStore {
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// Calls `Init` with `properties` and then `Features`, both done by `deadline`.
    /// Returns the store and its features.
    pub async fn init(
        conn: Connection,
        properties: HashMap<String, String>,
        deadline: tokio::time::Instant,
    ) -> Result<(Self, Vec<String>), ComponentError> {
        let left = || deadline.saturating_duration_since(tokio::time::Instant::now());
        let req = pb::InitRequest {
            metadata: Some(pb::MetadataRequest { properties }),
        };
        conn.call_with_timeout("Init", left(), req, |ch, r| async move {
            StateStoreClient::new(ch).limited(&r).init(r).await
        })
        .await?;
        let features = conn
            .call_with_timeout(
                "Features",
                left(),
                pb::FeaturesRequest {},
                |ch, r| async move { StateStoreClient::new(ch).limited(&r).features(r).await },
            )
            .await?
            .features;
        Ok((
            Self {
                conn,
                max_ops: OnceCell::new(),
            },
            features,
        ))
    }
}

#[async_trait]
impl StateStore for GrpcStateStore {
    async fn get(&self, req: pb::GetRequest) -> Result<pb::GetResponse, ComponentError> {
        self.conn
            .call("Get", req, |ch, r| async move {
                StateStoreClient::new(ch).limited(&r).get(r).await
            })
            .await
    }

    async fn set(&self, req: pb::SetRequest) -> Result<(), ComponentError> {
        self.conn
            .call("Set", req, |ch, r| async move {
                StateStoreClient::new(ch).limited(&r).set(r).await
            })
            .await?;
        Ok(())
    }

    async fn delete(&self, req: pb::DeleteRequest) -> Result<(), ComponentError> {
        self.conn
            .call("Delete", req, |ch, r| async move {
                StateStoreClient::new(ch).limited(&r).delete(r).await
            })
            .await?;
        Ok(())
    }

    async fn bulk_get(
        &self,
        req: pb::BulkGetRequest,
    ) -> Result<pb::BulkGetResponse, ComponentError> {
        self.conn
            .call("BulkGet", req, |ch, r| async move {
                StateStoreClient::new(ch).limited(&r).bulk_get(r).await
            })
            .await
    }

    async fn bulk_set(&self, req: pb::BulkSetRequest) -> Result<(), ComponentError> {
        self.conn
            .call("BulkSet", req, |ch, r| async move {
                StateStoreClient::new(ch).limited(&r).bulk_set(r).await
            })
            .await?;
        Ok(())
    }

    async fn bulk_delete(&self, req: pb::BulkDeleteRequest) -> Result<(), ComponentError> {
        self.conn
            .call("BulkDelete", req, |ch, r| async move {
                StateStoreClient::new(ch).limited(&r).bulk_delete(r).await
            })
            .await?;
        Ok(())
    }

    async fn transact(&self, req: pb::TransactionalStateRequest) -> Result<(), ComponentError> {
        self.conn
            .call("Transact", req, |ch, r| async move {
                TransactionalStateStoreClient::new(ch)
                    .limited(&r)
                    .transact(r)
                    .await
            })
            .await?;
        Ok(())
    }

    async fn max_transaction_ops(&self) -> Option<i64> {
        *self
            .max_ops
            .get_or_init(|| async {
                // Asked once, lazily; any error (e.g. Unimplemented) means "no limit", as in Dapr.
                let limit = std::time::Duration::from_secs(5).min(self.conn.call_timeout());
                match self
                    .conn
                    .call_with_timeout("MultiMaxSize", limit, pb::MultiMaxSizeRequest {}, |ch, r| async move {
                        TransactionalStoreMultiMaxSizeClient::new(ch).limited(&r).multi_max_size(r).await
                    })
                    .await
                {
                    Ok(resp) if resp.max_size > 0 => Some(resp.max_size),
                    Ok(_) => None,
                    Err(e) => {
                        tracing::debug!(component = self.conn.instance(), error = %e, "no transaction size limit");
                        None
                    }
                }
            })
            .await
    }

    async fn query(&self, req: pb::QueryRequest) -> Result<pb::QueryResponse, ComponentError> {
        self.conn
            .call("Query", req, |ch, r| async move {
                QueriableStateStoreClient::new(ch)
                    .limited(&r)
                    .query(r)
                    .await
            })
            .await
    }

    async fn ping(&self) -> Result<(), ComponentError> {
        self.conn
            .call("Ping", pb::PingRequest {}, |ch, r| async move {
                StateStoreClient::new(ch).limited(&r).ping(r).await
            })
            .await?;
        Ok(())
    }
}

/// How a state store's keys are prefixed (Dapr's `keyPrefix` metadata).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyPrefix {
    /// No prefix.
    None,
    /// `<prefix>||<key>`.
    Prefix(String),
}

/// The separator between prefix and key.
pub const KEY_SEPARATOR: &str = "||";

/// The metadata item that chooses the key prefix strategy.
pub const KEY_PREFIX: &str = "keyPrefix";

impl KeyPrefix {
    /// Dapr's strategies, from the `keyPrefix` metadata value (lower-cased as Dapr does):
    /// `appid` (default), `name`, `namespace`, `none`, or a custom prefix.
    pub fn from_metadata(
        strategy: Option<&str>,
        app_id: &str,
        component: &str,
        namespace: Option<&str>,
    ) -> Result<Self, String> {
        let strategy = strategy.unwrap_or("appid").to_lowercase();
        let prefix = match strategy.as_str() {
            "" | "appid" => app_id.to_string(),
            "name" => component.to_string(),
            "none" => String::new(),
            "namespace" => match namespace {
                Some(ns) if !app_id.is_empty() => format!("{ns}.{app_id}"),
                _ => app_id.to_string(),
            },
            custom if custom.contains(KEY_SEPARATOR) => {
                return Err(format!(
                    "the key prefix {custom:?} must not contain {KEY_SEPARATOR:?}"
                ));
            }
            custom => custom.to_string(),
        };
        Ok(if prefix.is_empty() {
            Self::None
        } else {
            Self::Prefix(prefix)
        })
    }

    /// The key the component sees.
    pub fn apply(&self, key: &str) -> String {
        match self {
            Self::None => key.to_string(),
            Self::Prefix(p) => format!("{p}{KEY_SEPARATOR}{key}"),
        }
    }

    /// The key the app sees, from the component's key.
    pub fn strip<'a>(&self, key: &'a str) -> &'a str {
        match self {
            Self::None => key,
            Self::Prefix(p) => key
                .strip_prefix(p.as_str())
                .and_then(|k| k.strip_prefix(KEY_SEPARATOR))
                .unwrap_or(key),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_prefix_strategies() {
        let p = |s: Option<&str>, ns: Option<&str>| {
            KeyPrefix::from_metadata(s, "app1", "store", ns).expect("valid prefix")
        };
        assert_eq!(p(None, None).apply("k"), "app1||k");
        assert_eq!(p(None, None).strip("app1||k"), "k");
        assert_eq!(p(Some("name"), None).apply("k"), "store||k");
        assert_eq!(p(Some("NONE"), None).apply("k"), "k");
        assert_eq!(p(Some("MyPrefix"), None).apply("k"), "myprefix||k");
        assert_eq!(
            p(Some("namespace"), Some("prod")).apply("k"),
            "prod.app1||k"
        );
        assert_eq!(
            KeyPrefix::from_metadata(None, "", "store", None),
            Ok(KeyPrefix::None)
        );
        assert!(KeyPrefix::from_metadata(Some("a||b"), "app1", "store", None).is_err());
    }
}
