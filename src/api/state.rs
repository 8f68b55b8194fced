//! State operations shared by the gRPC and HTTP APIs: key prefixes, the RPC chosen for each
//! call, and Dapr's error mapping.

use std::{collections::HashMap, sync::Arc};

use tonic::Code;

use super::{ApiError, ComponentFailure};
use crate::{
    component::ComponentKind,
    component::{ComponentError, state::KEY_SEPARATOR},
    proto::{common, components as pb, runtime},
    registry::{ComponentInfo, ComponentStatus, Registry, StateEntry},
};

/// Feature a store must report for transactions.
pub const TRANSACTIONAL: &str = "TRANSACTIONAL";

/// The result of a read of one key.
#[derive(Debug, Clone, Default)]
pub struct Got {
    pub data: Vec<u8>,
    pub etag: Option<String>,
    pub metadata: HashMap<String, String>,
    pub content_type: String,
}

/// One transaction operation.
#[derive(Debug, Clone)]
pub struct TxOp {
    pub operation: String,
    pub item: common::StateItem,
}

/// The state API over the registry.
#[derive(Clone)]
pub struct StateApi {
    registry: Arc<Registry>,
    app_id: String,
}

impl StateApi {
    pub fn new(registry: Arc<Registry>, app_id: String) -> Self {
        Self { registry, app_id }
    }

    /// Fails as Dapr does when `name` is not a configured state store; handlers call it before
    /// they look at the request body, so an unknown store is reported first.
    pub fn check_store(&self, name: &str) -> Result<(), ApiError> {
        self.store(name).map(|_| ())
    }

    fn store(&self, name: &str) -> Result<Arc<StateEntry>, ApiError> {
        let snapshot = self.registry.snapshot();
        let is_state = |c: &ComponentInfo| c.kinds.contains(&ComponentKind::State);
        let Some(info) = snapshot.component(name).filter(|c| is_state(c)) else {
            if !snapshot.components.values().any(|c| is_state(c)) {
                return Err(ApiError::named(
                    Code::FailedPrecondition,
                    500,
                    "ERR_STATE_STORE_NOT_CONFIGURED",
                    "DAPR_STATE_NOT_CONFIGURED",
                    format!("state store {name} is not configured"),
                )
                .with_metadata("appID", &self.app_id));
            }
            return Err(ApiError::named(
                Code::InvalidArgument,
                400,
                "ERR_STATE_STORE_NOT_FOUND",
                "DAPR_STATE_NOT_FOUND",
                format!("state store {name} is not found"),
            )
            .with_metadata("appID", &self.app_id));
        };
        // Not ready (waiting for its socket, unhealthy, being re-initialised): fail fast.
        match snapshot.state.get(name) {
            Some(entry) if info.status == ComponentStatus::Ready => Ok(entry.clone()),
            _ => Err(unavailable(
                info,
                info.status.reason().unwrap_or(info.status.name()),
            )),
        }
    }

    fn key(entry: &StateEntry, key: &str) -> Result<String, ApiError> {
        if key.contains(KEY_SEPARATOR) {
            return Err(ApiError::named(
                Code::InvalidArgument,
                400,
                "ERR_MALFORMED_REQUEST",
                "DAPR_STATE_ILLEGAL_KEY",
                format!("input key/keyPrefix '{key}' can't contain '||'"),
            )
            .with_bad_request(
                "key",
                format!("input key/keyPrefix '{key}' can't contain '||'"),
            )
            .with_resource("state", &entry.info.name));
        }
        Ok(entry.key_prefix.apply(key))
    }

    /// The key of a write: as [`Self::key`], and never empty (a write to the empty key would
    /// land on the bare prefix, `<app id>||`).
    fn write_key(entry: &StateEntry, key: &str) -> Result<String, ApiError> {
        if key.is_empty() {
            return Err(ApiError::malformed("state key cannot be empty"));
        }
        Self::key(entry, key)
    }

    pub async fn get(
        &self,
        store: &str,
        key: &str,
        consistency: i32,
        metadata: HashMap<String, String>,
    ) -> Result<Got, ApiError> {
        let entry = self.store(store)?;
        let req = pb::GetRequest {
            key: Self::key(&entry, key)?,
            metadata,
            consistency,
        };
        let resp = entry.store.get(req).await.map_err(|e| {
            call_error(
                &entry,
                &e,
                "ERR_STATE_GET",
                format!("fail to get {key} from state store {store}"),
                false,
            )
        })?;
        Ok(Got {
            data: resp.data,
            etag: resp.etag.map(|e| e.value),
            metadata: resp.metadata,
            content_type: resp.content_type,
        })
    }

    pub async fn get_bulk(
        &self,
        store: &str,
        keys: Vec<String>,
        parallelism: i64,
        metadata: HashMap<String, String>,
    ) -> Result<Vec<runtime::BulkStateItem>, ApiError> {
        let entry = self.store(store)?;
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let items = keys
            .iter()
            .map(|k| {
                Ok(pb::GetRequest {
                    key: Self::key(&entry, k)?,
                    metadata: metadata.clone(),
                    consistency: 0,
                })
            })
            .collect::<Result<Vec<_>, ApiError>>()?;
        let req = pb::BulkGetRequest {
            items,
            options: Some(pb::BulkGetRequestOptions { parallelism }),
        };
        let resp = entry.store.bulk_get(req).await.map_err(|e| {
            call_error(
                &entry,
                &e,
                "ERR_STATE_BULK_GET",
                format!("failed getting state in state store {store}"),
                false,
            )
        })?;
        Ok(resp
            .items
            .into_iter()
            .map(|i| runtime::BulkStateItem {
                key: entry.key_prefix.strip(&i.key).to_string(),
                data: i.data,
                etag: i.etag.map(|e| e.value).unwrap_or_default(),
                error: i.error,
                metadata: i.metadata,
            })
            .collect())
    }

    fn set_request(
        entry: &StateEntry,
        item: common::StateItem,
    ) -> Result<pb::SetRequest, ApiError> {
        let content_type = item
            .metadata
            .get("contentType")
            .cloned()
            .unwrap_or_default();
        Ok(pb::SetRequest {
            key: Self::write_key(entry, &item.key)?,
            value: item.value,
            etag: item.etag.map(|e| pb::Etag { value: e.value }),
            metadata: item.metadata,
            options: Some(options(item.options)),
            content_type,
        })
    }

    fn delete_request(
        entry: &StateEntry,
        item: common::StateItem,
    ) -> Result<pb::DeleteRequest, ApiError> {
        Ok(pb::DeleteRequest {
            key: Self::write_key(entry, &item.key)?,
            etag: item.etag.map(|e| pb::Etag { value: e.value }),
            metadata: item.metadata,
            options: Some(options(item.options)),
        })
    }

    /// SaveState: one item → `Set`, several → `BulkSet`, none → nothing.
    /// An item without a key is rejected by the caller (the message differs per transport).
    pub async fn save(&self, store: &str, items: Vec<common::StateItem>) -> Result<(), ApiError> {
        let entry = self.store(store)?;
        let mut reqs = items
            .into_iter()
            .map(|i| Self::set_request(&entry, i))
            .collect::<Result<Vec<_>, _>>()?;
        let result = match reqs.len() {
            0 => return Ok(()),
            1 => entry.store.set(reqs.remove(0)).await,
            _ => {
                entry
                    .store
                    .bulk_set(pb::BulkSetRequest {
                        items: reqs,
                        options: Some(pb::BulkSetRequestOptions { parallelism: 0 }),
                    })
                    .await
            }
        };
        result.map_err(|e| {
            call_error(
                &entry,
                &e,
                "ERR_STATE_SAVE",
                format!("failed saving state in state store {store}"),
                true,
            )
        })
    }

    pub async fn delete(&self, store: &str, item: common::StateItem) -> Result<(), ApiError> {
        let entry = self.store(store)?;
        let key = item.key.clone();
        let req = Self::delete_request(&entry, item)?;
        entry.store.delete(req).await.map_err(|e| {
            call_error(
                &entry,
                &e,
                "ERR_STATE_DELETE",
                format!("failed deleting state with key {key}"),
                true,
            )
        })
    }

    /// DeleteBulkState: one item → `Delete`, several → `BulkDelete`.
    pub async fn delete_bulk(
        &self,
        store: &str,
        items: Vec<common::StateItem>,
    ) -> Result<(), ApiError> {
        let entry = self.store(store)?;
        let mut reqs = items
            .into_iter()
            .map(|i| Self::delete_request(&entry, i))
            .collect::<Result<Vec<_>, _>>()?;
        let result = match reqs.len() {
            0 => return Ok(()),
            1 => entry.store.delete(reqs.remove(0)).await,
            _ => {
                entry
                    .store
                    .bulk_delete(pb::BulkDeleteRequest {
                        items: reqs,
                        options: Some(pb::BulkDeleteRequestOptions { parallelism: 0 }),
                    })
                    .await
            }
        };
        result.map_err(|e| {
            call_error(
                &entry,
                &e,
                "ERR_STATE_BULK_DELETE",
                format!("failed deleting state in state store {store}"),
                true,
            )
        })
    }

    /// ExecuteStateTransaction: only for stores that report `TRANSACTIONAL`.
    pub async fn transact(
        &self,
        store: &str,
        ops: Vec<TxOp>,
        metadata: HashMap<String, String>,
    ) -> Result<(), ApiError> {
        let entry = self.store(store)?;
        if !entry.has_feature(TRANSACTIONAL) {
            return Err(ApiError::named(
                Code::Unimplemented,
                500,
                "ERR_STATE_STORE_NOT_SUPPORTED",
                "DAPR_STATE_TRANSACTIONS_NOT_SUPPORTED",
                format!("state store {store} doesn't support transactions"),
            )
            .with_resource("state", store)
            .with_help(
                "Check the list of state stores and the features they support",
                "https://docs.dapr.io/reference/components-reference/supported-state-stores/",
            ));
        }
        let mut operations = Vec::with_capacity(ops.len());
        for op in ops {
            let request = match op.operation.as_str() {
                "upsert" => pb::transactional_state_operation::Request::Set(Self::set_request(
                    &entry, op.item,
                )?),
                "delete" => pb::transactional_state_operation::Request::Delete(
                    Self::delete_request(&entry, op.item)?,
                ),
                other => {
                    return Err(ApiError::basic(
                        Code::Unimplemented,
                        400,
                        "ERR_NOT_SUPPORTED_STATE_OPERATION",
                        format!("operation type {other} not supported"),
                    ));
                }
            };
            operations.push(pb::TransactionalStateOperation {
                request: Some(request),
            });
        }
        if operations.is_empty() {
            return Ok(());
        }
        if let Some(max) = entry.store.max_transaction_ops().await
            && operations.len() as i64 > max
        {
            {
                return Err(ApiError::named(
                    Code::InvalidArgument,
                    400,
                    "ERR_STATE_STORE_TOO_MANY_TRANSACTIONS",
                    "DAPR_STATE_TOO_MANY_TRANSACTIONS",
                    format!(
                        "the transaction contains {} operations, which is more than what the state store supports: {max}",
                        operations.len()
                    ),
                )
                .with_metadata("currentOpsTransaction", operations.len().to_string())
                .with_metadata("maxOpsPerTransaction", max.to_string())
                .with_resource("state", store));
            }
        }
        entry
            .store
            .transact(pb::TransactionalStateRequest {
                operations,
                metadata,
            })
            .await
            .map_err(|e| {
                if e.is_connection_failure() {
                    return unavailable(&entry.info, &e.detail());
                }
                // As in Dapr, a failed transaction (an etag conflict included) is INTERNAL / 500.
                let detail = match ComponentFailure::classify(&e) {
                    ComponentFailure::EtagMismatch(d) => {
                        format!("possible etag mismatch. error from state store: {d}")
                    }
                    ComponentFailure::EtagInvalid(d) => format!("invalid etag value: {d}"),
                    _ => e.detail(),
                };
                ApiError::basic(
                    Code::Internal,
                    500,
                    "ERR_STATE_TRANSACTION",
                    format!("error while executing state transaction: {detail}"),
                )
            })
    }

    /// QueryStateAlpha1: the JSON query is split into Dapr's component query form.
    pub async fn query(
        &self,
        store: &str,
        query_json: &str,
        metadata: HashMap<String, String>,
    ) -> Result<runtime::QueryStateResponse, ApiError> {
        let entry = self.store(store)?;
        let query_failed = |detail: String| {
            ApiError::named(
                Code::Internal,
                500,
                "ERR_STATE_QUERY",
                "DAPR_STATE_QUERY_FAILED",
                format!("state store {store} query failed: {detail}"),
            )
            .with_resource("state", store)
        };
        let query = parse_query(query_json).map_err(query_failed)?;
        let resp = entry
            .store
            .query(pb::QueryRequest {
                query: Some(query),
                metadata,
            })
            .await
            .map_err(|e| {
                if e.is_connection_failure() {
                    unavailable(&entry.info, &e.detail())
                } else if e.status().is_some_and(|s| s.code() == Code::Unimplemented) {
                    ApiError::named(
                        Code::Internal,
                        500,
                        "ERR_STATE_STORE_NOT_SUPPORTED",
                        "DAPR_STATE_QUERYING_NOT_SUPPORTED",
                        "state store does not support querying",
                    )
                    .with_resource("state", store)
                } else {
                    query_failed(e.detail())
                }
            })?;
        Ok(runtime::QueryStateResponse {
            results: resp
                .items
                .into_iter()
                .map(|i| runtime::QueryStateItem {
                    key: entry.key_prefix.strip(&i.key).to_string(),
                    data: i.data,
                    etag: i.etag.map(|e| e.value).unwrap_or_default(),
                    error: i.error,
                })
                .collect(),
            token: resp.token,
            metadata: resp.metadata,
        })
    }
}

/// The error for a component that cannot take calls now: gRPC UNAVAILABLE / HTTP 503, naming the
/// component and its socket.
pub fn unavailable(info: &ComponentInfo, why: &str) -> ApiError {
    let socket = info
        .socket
        .as_ref()
        .map(|s| format!(" (socket {})", s.display()))
        .unwrap_or_default();
    ApiError::named(
        Code::Unavailable,
        503,
        "ERR_COMPONENT_UNAVAILABLE",
        "PLUGD_COMPONENT_UNAVAILABLE",
        format!("component {}{socket} is not available: {why}", info.name),
    )
    .with_resource(&info.type_name, &info.name)
}

fn options(o: Option<common::StateOptions>) -> pb::StateOptions {
    let o = o.unwrap_or_default();
    pb::StateOptions {
        concurrency: o.concurrency,
        consistency: o.consistency,
    }
}

/// A failed call: a component that could not be reached is unavailable (503, naming it and its
/// socket); otherwise [`op_error`].
fn call_error(
    entry: &StateEntry,
    e: &ComponentError,
    code: &str,
    prefix: String,
    etag_aware: bool,
) -> ApiError {
    if e.is_connection_failure() {
        return unavailable(&entry.info, &e.detail());
    }
    op_error(e, code, prefix, etag_aware)
}

/// Maps a failed write or read to Dapr's error, applying the etag conventions when `etag_aware`.
fn op_error(e: &ComponentError, code: &str, prefix: String, etag_aware: bool) -> ApiError {
    match ComponentFailure::classify(e) {
        ComponentFailure::EtagMismatch(d) if etag_aware => ApiError::basic(
            Code::Aborted,
            409,
            code,
            format!("{prefix}: possible etag mismatch. error from state store: {d}"),
        ),
        ComponentFailure::EtagInvalid(d) if etag_aware => ApiError::basic(
            Code::InvalidArgument,
            400,
            code,
            format!("{prefix}: invalid etag value: {d}"),
        ),
        // A component's rich error keeps its code, HTTP status, tag, reason and domain.
        ComponentFailure::Kit {
            code: grpc,
            http,
            tag,
            reason,
            domain,
            message,
        } => {
            let mut err = ApiError::basic(grpc, http, code, format!("{prefix}: {message}"));
            if !tag.is_empty() {
                err.0.error_code = tag;
            }
            if !reason.is_empty() {
                err.0.reason = Some(reason);
            }
            if !domain.is_empty() {
                err.0.domain = domain;
            }
            err
        }
        _ => ApiError::basic(
            Code::Internal,
            500,
            code,
            format!("{prefix}: {}", e.detail()),
        ),
    }
}

/// Splits a Dapr query document into the component's `Query`: one filter entry per top-level
/// key (an `Any` with an empty type URL holding the operand's JSON), sort, pagination.
pub fn parse_query(text: &str) -> Result<pb::Query, String> {
    let doc: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("invalid query JSON: {e}"))?;
    let obj = doc.as_object().ok_or("the query must be a JSON object")?;
    let mut query = pb::Query::default();
    if let Some(filter) = obj.get("filter") {
        let filter = filter.as_object().ok_or("\"filter\" must be an object")?;
        for (op, operand) in filter {
            let value = serde_json::to_vec(operand).map_err(|e| e.to_string())?;
            query.filter.insert(
                op.clone(),
                prost_types::Any {
                    type_url: String::new(),
                    value,
                },
            );
        }
    }
    if let Some(sort) = obj.get("sort") {
        let sort = sort.as_array().ok_or("\"sort\" must be an array")?;
        for s in sort {
            let key = s
                .get("key")
                .and_then(|k| k.as_str())
                .ok_or("each sort entry needs a \"key\"")?;
            let order = match s.get("order").and_then(|o| o.as_str()) {
                Some(o) if o.eq_ignore_ascii_case("DESC") => pb::sorting::Order::Desc,
                _ => pb::sorting::Order::Asc,
            };
            query.sort.push(pb::Sorting {
                key: key.to_string(),
                order: order as i32,
            });
        }
    }
    if let Some(page) = obj.get("page") {
        let limit = page.get("limit").and_then(|l| l.as_i64()).unwrap_or(0);
        let token = page
            .get("token")
            .and_then(|t| t.as_str())
            .unwrap_or_default()
            .to_string();
        query.pagination = Some(pb::Pagination { limit, token });
    }
    Ok(query)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn component_error(code: Code) -> ComponentError {
        use tonic_types::StatusExt;
        let status = tonic::Status::with_error_details(
            code,
            "etag problem",
            tonic_types::ErrorDetails::with_bad_request_violation("etag", "bad etag"),
        );
        ComponentError::Status {
            component: "c".into(),
            method: "Set",
            status,
        }
    }

    #[test]
    fn etag_errors_map_to_dapr_codes() {
        use tonic_types::StatusExt;
        let e = op_error(
            &component_error(Code::FailedPrecondition),
            "ERR_STATE_SAVE",
            "failed saving".into(),
            true,
        );
        assert_eq!((e.code(), e.http_status()), (Code::Aborted, 409));
        assert_eq!(
            e.to_status().get_details_error_info().map(|i| i.reason),
            Some("ERR_STATE_SAVE".into())
        );
        let e = op_error(
            &component_error(Code::InvalidArgument),
            "ERR_STATE_SAVE",
            "failed saving".into(),
            true,
        );
        assert_eq!((e.code(), e.http_status()), (Code::InvalidArgument, 400));
        assert!(
            e.0.message.contains("invalid etag value: bad etag"),
            "{}",
            e.0.message
        );
        // A rich component error keeps its status, tag, reason and domain.
        let status = tonic::Status::with_error_details(
            Code::NotFound,
            "no such table",
            tonic_types::ErrorDetails::with_error_info(
                "TABLE_MISSING",
                "example.com",
                std::collections::HashMap::from([
                    ("kit_error".to_string(), "true".to_string()),
                    ("http_code".to_string(), "404".to_string()),
                    ("tag".to_string(), "ERR_TABLE".to_string()),
                ]),
            ),
        );
        let kit = ComponentError::Status {
            component: "c".into(),
            method: "Get",
            status,
        };
        let e = op_error(&kit, "ERR_STATE_GET", "fail to get k".into(), false);
        assert_eq!((e.code(), e.http_status()), (Code::NotFound, 404));
        assert_eq!(e.to_json()["errorCode"], "ERR_TABLE");
        let info = e.to_status().get_details_error_info().expect("error info");
        assert_eq!(
            (info.reason.as_str(), info.domain.as_str()),
            ("TABLE_MISSING", "example.com")
        );
        // Reads are not etag-mapped.
        let e = op_error(
            &component_error(Code::FailedPrecondition),
            "ERR_STATE_GET",
            "fail to get".into(),
            false,
        );
        assert_eq!((e.code(), e.http_status()), (Code::Internal, 500));
    }

    #[test]
    fn query_split_into_component_form() {
        let q = parse_query(r#"{"filter":{"EQ":{"state":"CA"}},"sort":[{"key":"id","order":"DESC"}],"page":{"limit":2,"token":"t"}}"#)
            .expect("query");
        assert_eq!(q.filter["EQ"].type_url, "");
        assert_eq!(q.filter["EQ"].value, br#"{"state":"CA"}"#);
        assert_eq!(q.sort[0].order, pb::sorting::Order::Desc as i32);
        assert_eq!(q.pagination.as_ref().map(|p| p.limit), Some(2));
        assert!(parse_query("[1]").is_err());
        assert!(parse_query("{").is_err());
    }
}
