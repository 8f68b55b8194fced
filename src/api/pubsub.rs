//! Publishing, shared by the gRPC and HTTP APIs: the CloudEvent envelope, bulk publish with
//! per-entry failures, and Dapr's error mapping.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use futures::{StreamExt, stream};
use tonic::Code;

use super::{ApiError, state::unavailable};
use crate::{
    component::{
        ComponentError, ComponentKind,
        pubsub::{FEATURE_BULK_PUBSUB, FEATURE_MESSAGE_TTL},
    },
    proto::components as pb,
    pubsub::cloudevents::{self, CLOUDEVENTS_JSON, Trace},
    registry::{ComponentStatus, PubSubEntry, Registry},
};

/// How many single publishes run at once when a bulk publish is split up.
const SPLIT_PARALLELISM: usize = 16;

/// One message to publish.
#[derive(Debug, Clone, Default)]
pub struct Message {
    pub data: Vec<u8>,
    /// The payload's content type as the app gave it (may be empty).
    pub content_type: String,
    pub metadata: HashMap<String, String>,
}

/// One entry of a bulk publish.
#[derive(Debug, Clone, Default)]
pub struct BulkEntry {
    pub entry_id: String,
    pub message: Message,
}

/// An entry that could not be published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedEntry {
    pub entry_id: String,
    pub error: String,
}

/// The publish API over the registry.
#[derive(Clone)]
pub struct PubSubApi {
    registry: Arc<Registry>,
    app_id: String,
}

impl PubSubApi {
    pub fn new(registry: Arc<Registry>, app_id: String) -> Self {
        Self { registry, app_id }
    }

    /// The ready pub/sub component `name`, after Dapr's checks of the name and topic.
    fn entry(
        &self,
        name: &str,
        topic: &str,
        metadata: &HashMap<String, String>,
    ) -> Result<Arc<PubSubEntry>, ApiError> {
        let snapshot = self.registry.snapshot();
        let is_pubsub =
            |c: &crate::registry::ComponentInfo| c.kinds.contains(&ComponentKind::PubSub);
        if !snapshot.components.values().any(|c| is_pubsub(c)) {
            return Err(ApiError::named(
                Code::FailedPrecondition,
                400,
                "ERR_PUBSUB_NOT_CONFIGURED",
                "DAPR_PUBSUB_NOT_CONFIGURED",
                format!("pubsub {name} is not configured"),
            )
            .with_metadata("appID", &self.app_id));
        }
        if name.is_empty() {
            let mut e = ApiError::named(
                Code::InvalidArgument,
                404,
                "ERR_PUBSUB_EMPTY",
                "DAPR_PUBSUB_NAME_EMPTY",
                "pubsub name is empty",
            )
            .with_resource("pubsub", name);
            e.0.info_metadata.clone_from(metadata);
            return Err(e);
        }
        let Some(info) = snapshot.component(name).filter(|c| is_pubsub(c)) else {
            let mut e = ApiError::named(
                Code::InvalidArgument,
                404,
                "ERR_PUBSUB_NOT_FOUND",
                "DAPR_PUBSUB_NOT_FOUND",
                format!("pubsub {name} is not found"),
            );
            e.0.info_metadata.clone_from(metadata);
            return Err(e);
        };
        if topic.is_empty() {
            let mut e = ApiError::named(
                Code::InvalidArgument,
                404,
                "ERR_TOPIC_NAME_EMPTY",
                "DAPR_PUBSUB_TOPIC_NAME_EMPTY",
                format!("topic is empty in pubsub {name}"),
            )
            .with_resource("pubsub", name);
            e.0.info_metadata.clone_from(metadata);
            return Err(e);
        }
        let entry = match snapshot.pubsub.get(name) {
            Some(entry) if info.status == ComponentStatus::Ready => entry.clone(),
            _ => {
                return Err(unavailable(
                    info,
                    info.status.reason().unwrap_or(info.status.name()),
                ));
            }
        };
        if !entry.scopes.may_publish(topic) {
            let error = format!("topic {topic} is not allowed for app id {}", self.app_id);
            return Err(ApiError::named(
                Code::PermissionDenied,
                403,
                "ERR_PUBSUB_FORBIDDEN",
                "DAPR_PUBSUB_FORBIDDEN",
                error.clone(),
            )
            .with_metadata("topic", topic)
            .with_metadata("error", error));
        }
        Ok(entry)
    }

    /// Publishes one message (wrapped in a CloudEvent unless `rawPayload=true`).
    pub async fn publish(
        &self,
        pubsub: &str,
        topic: &str,
        message: Message,
        trace: &Trace,
    ) -> Result<(), ApiError> {
        let entry = self.entry(pubsub, topic, &message.metadata)?;
        let raw = raw_payload(&message.metadata)?;
        let req = self.component_request(&entry, topic, message, raw, trace)?;
        let result = entry.pubsub.publish(req).await;
        crate::metrics::published(pubsub, topic, result.is_ok(), 1);
        result.map_err(|e| publish_error(&entry, pubsub, topic, &e))
    }

    /// Publishes several messages; entries that fail are returned (the call itself succeeds).
    pub async fn bulk_publish(
        &self,
        pubsub: &str,
        topic: &str,
        entries: Vec<BulkEntry>,
        metadata: HashMap<String, String>,
        trace: &Trace,
    ) -> Result<Vec<FailedEntry>, ApiError> {
        let entry = self.entry(pubsub, topic, &metadata)?;
        let mut ids = HashSet::new();
        if entries
            .iter()
            .any(|e| e.entry_id.is_empty() || !ids.insert(e.entry_id.as_str()))
        {
            let error = "entryId is duplicated or not present for entry";
            return Err(ApiError::named(
                Code::InvalidArgument,
                400,
                "ERR_PUBSUB_EVENTS_SER",
                "DAPR_PUBSUB_MARSHAL_EVENTS",
                format!("error marshaling events to bytes for topic {topic} pubsub {pubsub}. error: {error}"),
            )
            .with_metadata("appID", &self.app_id)
            .with_metadata("error", error));
        }
        let raw = raw_payload(&metadata)?;
        let mut requests = Vec::with_capacity(entries.len());
        for e in entries {
            let mut message = e.message;
            // Entry metadata wins over the request's.
            let mut merged = metadata.clone();
            merged.extend(message.metadata);
            message.metadata = merged;
            let entry_raw = match message.metadata.get("rawPayload") {
                Some(_) => raw_payload(&message.metadata)?,
                None => raw,
            };
            let req = self.component_request(&entry, topic, message, entry_raw, trace)?;
            requests.push((e.entry_id, req));
        }
        if entry.has_feature(FEATURE_BULK_PUBSUB) {
            let req = pb::BulkPublishRequest {
                entries: requests
                    .into_iter()
                    .map(|(entry_id, r)| pb::BulkMessageEntry {
                        entry_id,
                        event: r.data,
                        content_type: r.content_type,
                        metadata: r.metadata,
                    })
                    .collect(),
                pubsub_name: pubsub.to_string(),
                topic: topic.to_string(),
                metadata: metadata.clone(),
            };
            let total = req.entries.len() as u64;
            let resp = match entry.pubsub.bulk_publish(req).await {
                Ok(resp) => resp,
                Err(e) => {
                    crate::metrics::published(pubsub, topic, false, total);
                    return Err(publish_error(&entry, pubsub, topic, &e));
                }
            };
            let failed = resp.failed_entries.len() as u64;
            crate::metrics::published(pubsub, topic, true, total.saturating_sub(failed));
            crate::metrics::published(pubsub, topic, false, failed);
            return Ok(resp
                .failed_entries
                .into_iter()
                .map(|f| FailedEntry {
                    entry_id: f.entry_id,
                    error: f.error,
                })
                .collect());
        }
        // No BULK_PUBSUB: one Publish per entry, each failure reported on its entry.
        let results: Vec<Option<FailedEntry>> = stream::iter(requests)
            .map(|(entry_id, req)| {
                let entry = entry.clone();
                async move {
                    match entry.pubsub.publish(req).await {
                        Ok(()) => None,
                        Err(e) => Some(FailedEntry {
                            entry_id,
                            error: e.to_string(),
                        }),
                    }
                }
            })
            .buffered(SPLIT_PARALLELISM)
            .collect()
            .await;
        let failed = results.iter().filter(|r| r.is_some()).count() as u64;
        crate::metrics::published(pubsub, topic, true, results.len() as u64 - failed);
        crate::metrics::published(pubsub, topic, false, failed);
        Ok(results.into_iter().flatten().collect())
    }

    fn component_request(
        &self,
        entry: &PubSubEntry,
        topic: &str,
        message: Message,
        raw: bool,
        trace: &Trace,
    ) -> Result<pb::PublishRequest, ApiError> {
        let pubsub = entry.info.name.as_str();
        let (data, content_type) = if raw {
            (message.data, message.content_type)
        } else {
            let ttl = ttl(&message.metadata)?.filter(|_| !entry.has_feature(FEATURE_MESSAGE_TTL));
            let envelope = cloudevents::build(&cloudevents::Publish {
                pubsub,
                topic,
                app_id: &self.app_id,
                data: &message.data,
                content_type: &message.content_type,
                metadata: &message.metadata,
                trace,
                ttl,
            })
            .map_err(|e| {
                let (code, http, error_code, reason) = match e {
                    cloudevents::EnvelopeError::NotCloudEvent(_) => (
                        Code::InvalidArgument,
                        400,
                        "ERR_PUBSUB_CLOUD_EVENTS_SER",
                        "DAPR_PUBSUB_CLOUD_EVENT_CREATION",
                    ),
                    cloudevents::EnvelopeError::Encode(_) => (
                        Code::Internal,
                        500,
                        "ERR_PUBSUB_EVENTS_SER",
                        "DAPR_PUBSUB_MARSHAL_ENVELOPE",
                    ),
                };
                ApiError::named(
                    code,
                    http,
                    error_code,
                    reason,
                    format!(
                        "cannot create the CloudEvent for topic {topic} in pubsub {pubsub}: {e}"
                    ),
                )
                .with_metadata("appID", &self.app_id)
            })?;
            (envelope, CLOUDEVENTS_JSON.to_string())
        };
        Ok(pb::PublishRequest {
            data,
            pubsub_name: pubsub.to_string(),
            topic: topic.to_string(),
            metadata: message.metadata,
            content_type,
        })
    }
}

/// Go's `strconv.ParseBool`, as daprd reads `rawPayload`.
fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

fn raw_payload(metadata: &HashMap<String, String>) -> Result<bool, ApiError> {
    match metadata.get("rawPayload") {
        None => Ok(false),
        Some(v) => parse_bool(v).ok_or_else(|| {
            ApiError::named(
                Code::InvalidArgument,
                400,
                "ERR_PUBSUB_REQUEST_METADATA",
                "DAPR_PUBSUB_METADATA_DESERIALIZATION",
                format!(
                    "failed deserializing metadata. Error: rawPayload must be a boolean, not {v:?}"
                ),
            )
        }),
    }
}

fn ttl(metadata: &HashMap<String, String>) -> Result<Option<Duration>, ApiError> {
    match metadata.get("ttlInSeconds") {
        None => Ok(None),
        Some(v) => match v.trim().parse::<u64>() {
            Ok(0) => Ok(None),
            Ok(secs) => Ok(Some(Duration::from_secs(secs))),
            Err(_) => Err(ApiError::named(
                Code::InvalidArgument,
                400,
                "ERR_PUBSUB_REQUEST_METADATA",
                "DAPR_PUBSUB_METADATA_DESERIALIZATION",
                format!(
                    "failed deserializing metadata. Error: ttlInSeconds must be a non-negative integer, not {v:?}"
                ),
            )),
        },
    }
}

fn publish_error(entry: &PubSubEntry, pubsub: &str, topic: &str, e: &ComponentError) -> ApiError {
    if e.is_connection_failure() {
        return unavailable(&entry.info, &e.detail());
    }
    let error = e.detail();
    ApiError::named(
        Code::Internal,
        500,
        "ERR_PUBSUB_PUBLISH_MESSAGE",
        "DAPR_PUBSUB_PUBLISH_MESSAGE",
        format!("error when publishing to topic {topic} in pubsub {pubsub}: {error}"),
    )
    .with_metadata("topic", topic)
    .with_metadata("error", error)
    .with_resource("pubsub", pubsub)
}
