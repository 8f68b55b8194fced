//! The gRPC runtime API (`dapr.proto.runtime.v1.Dapr`).

use std::{pin::Pin, sync::Arc};

use futures::Stream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use super::{
    ApiError,
    bindings::BindingsApi,
    pubsub::{self as publish, BulkEntry, PubSubApi},
    secrets::SecretsApi,
    state::{StateApi, TxOp},
};
use crate::{
    proto::{common, runtime as rt},
    registry::Registry,
};

/// Serves `dapr.proto.runtime.v1.Dapr`.
#[derive(Clone)]
pub struct DaprApi {
    state: StateApi,
    pubsub: PubSubApi,
    bindings: BindingsApi,
    secrets: SecretsApi,
    registry: Arc<Registry>,
    app_id: String,
    shutdown: CancellationToken,
}

impl DaprApi {
    pub fn new(registry: Arc<Registry>, app_id: String, shutdown: CancellationToken) -> Self {
        Self {
            state: StateApi::new(registry.clone(), app_id.clone()),
            pubsub: PubSubApi::new(registry.clone(), app_id.clone()),
            bindings: BindingsApi::new(registry.clone()),
            secrets: SecretsApi::new(registry.clone()),
            registry,
            app_id,
            shutdown,
        }
    }

    pub fn into_server(self) -> rt::dapr_server::DaprServer<Self> {
        rt::dapr_server::DaprServer::new(self)
    }
}

impl DaprApi {
    async fn bulk_publish(
        &self,
        req: Request<rt::BulkPublishRequest>,
    ) -> Reply<rt::BulkPublishResponse> {
        let trace = crate::telemetry::trace::current();
        let r = req.into_inner();
        let entries = r
            .entries
            .into_iter()
            .map(|e| BulkEntry {
                entry_id: e.entry_id,
                message: publish::Message {
                    data: e.event,
                    content_type: e.content_type,
                    metadata: e.metadata,
                },
            })
            .collect();
        let failed = self
            .pubsub
            .bulk_publish(&r.pubsub_name, &r.topic, entries, r.metadata, &trace)
            .await?;
        Ok(Response::new(rt::BulkPublishResponse {
            failed_entries: failed
                .into_iter()
                .map(|f| rt::BulkPublishResponseFailedEntry {
                    entry_id: f.entry_id,
                    error: f.error,
                })
                .collect(),
        }))
    }
}

fn unserved(method: &str) -> Status {
    let what = format!("dapr.proto.runtime.v1.Dapr/{method}");
    Status::unimplemented(super::gate::unserved_message(
        super::gate::api_of_method(method),
        &what,
    ))
}

type Reply<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl rt::dapr_server::Dapr for DaprApi {
    async fn invoke_service(
        &self,
        _: Request<rt::InvokeServiceRequest>,
    ) -> Reply<common::InvokeResponse> {
        Err(unserved("InvokeService"))
    }

    async fn get_state(&self, req: Request<rt::GetStateRequest>) -> Reply<rt::GetStateResponse> {
        let r = req.into_inner();
        let got = self
            .state
            .get(&r.store_name, &r.key, r.consistency, r.metadata)
            .await?;
        Ok(Response::new(rt::GetStateResponse {
            data: got.data,
            etag: got.etag.unwrap_or_default(),
            metadata: got.metadata,
        }))
    }

    async fn get_bulk_state(
        &self,
        req: Request<rt::GetBulkStateRequest>,
    ) -> Reply<rt::GetBulkStateResponse> {
        let r = req.into_inner();
        let items = self
            .state
            .get_bulk(&r.store_name, r.keys, i64::from(r.parallelism), r.metadata)
            .await?;
        Ok(Response::new(rt::GetBulkStateResponse { items }))
    }

    async fn save_state(&self, req: Request<rt::SaveStateRequest>) -> Reply<()> {
        let r = req.into_inner();
        self.state.check_store(&r.store_name)?;
        if r.states.iter().any(|s| s.key.is_empty()) {
            return Err(ApiError::basic(
                tonic::Code::InvalidArgument,
                400,
                "ERR_STATE_SAVE",
                "state key cannot be empty",
            )
            .into());
        }
        self.state.save(&r.store_name, r.states).await?;
        Ok(Response::new(()))
    }

    async fn query_state_alpha1(
        &self,
        req: Request<rt::QueryStateRequest>,
    ) -> Reply<rt::QueryStateResponse> {
        let r = req.into_inner();
        Ok(Response::new(
            self.state
                .query(&r.store_name, &r.query, r.metadata)
                .await?,
        ))
    }

    async fn delete_state(&self, req: Request<rt::DeleteStateRequest>) -> Reply<()> {
        let r = req.into_inner();
        let item = common::StateItem {
            key: r.key,
            value: Vec::new(),
            etag: r.etag,
            metadata: r.metadata,
            options: r.options,
        };
        self.state.delete(&r.store_name, item).await?;
        Ok(Response::new(()))
    }

    async fn delete_bulk_state(&self, req: Request<rt::DeleteBulkStateRequest>) -> Reply<()> {
        let r = req.into_inner();
        self.state.delete_bulk(&r.store_name, r.states).await?;
        Ok(Response::new(()))
    }

    async fn execute_state_transaction(
        &self,
        req: Request<rt::ExecuteStateTransactionRequest>,
    ) -> Reply<()> {
        let r = req.into_inner();
        let ops = r
            .operations
            .into_iter()
            .map(|op| TxOp {
                operation: op.operation_type,
                item: op.request.unwrap_or_default(),
            })
            .collect();
        self.state.transact(&r.store_name, ops, r.metadata).await?;
        Ok(Response::new(()))
    }

    async fn publish_event(&self, req: Request<rt::PublishEventRequest>) -> Reply<()> {
        let trace = crate::telemetry::trace::current();
        let r = req.into_inner();
        let message = publish::Message {
            data: r.data,
            content_type: r.data_content_type,
            metadata: r.metadata,
        };
        self.pubsub
            .publish(&r.pubsub_name, &r.topic, message, &trace)
            .await?;
        Ok(Response::new(()))
    }

    async fn bulk_publish_event(
        &self,
        req: Request<rt::BulkPublishRequest>,
    ) -> Reply<rt::BulkPublishResponse> {
        self.bulk_publish(req).await
    }

    async fn bulk_publish_event_alpha1(
        &self,
        req: Request<rt::BulkPublishRequest>,
    ) -> Reply<rt::BulkPublishResponse> {
        self.bulk_publish(req).await
    }

    type SubscribeTopicEventsAlpha1Stream =
        Pin<Box<dyn Stream<Item = Result<rt::SubscribeTopicEventsResponseAlpha1, Status>> + Send>>;

    async fn subscribe_topic_events_alpha1(
        &self,
        _: Request<tonic::Streaming<rt::SubscribeTopicEventsRequestAlpha1>>,
    ) -> Reply<Self::SubscribeTopicEventsAlpha1Stream> {
        Err(unserved("SubscribeTopicEventsAlpha1"))
    }

    async fn invoke_binding(
        &self,
        req: Request<rt::InvokeBindingRequest>,
    ) -> Reply<rt::InvokeBindingResponse> {
        let r = req.into_inner();
        let out = self
            .bindings
            .invoke(&r.name, &r.operation, r.data, r.metadata)
            .await?;
        Ok(Response::new(rt::InvokeBindingResponse {
            data: out.data,
            metadata: out.metadata,
        }))
    }

    async fn get_secret(&self, req: Request<rt::GetSecretRequest>) -> Reply<rt::GetSecretResponse> {
        let r = req.into_inner();
        let data = self.secrets.get(&r.store_name, &r.key, r.metadata).await?;
        Ok(Response::new(rt::GetSecretResponse { data }))
    }

    async fn get_bulk_secret(
        &self,
        req: Request<rt::GetBulkSecretRequest>,
    ) -> Reply<rt::GetBulkSecretResponse> {
        let r = req.into_inner();
        let all = self.secrets.bulk_get(&r.store_name, r.metadata).await?;
        Ok(Response::new(rt::GetBulkSecretResponse {
            data: all
                .into_iter()
                .map(|(name, secrets)| (name, rt::SecretResponse { secrets }))
                .collect(),
        }))
    }

    async fn get_metadata(
        &self,
        _: Request<rt::GetMetadataRequest>,
    ) -> Reply<rt::GetMetadataResponse> {
        let snapshot = self.registry.snapshot();
        let mut extended: std::collections::HashMap<String, String> =
            self.registry.extended().into_iter().collect();
        extended.insert("daprRuntimeVersion".into(), crate::VERSION.into());
        Ok(Response::new(rt::GetMetadataResponse {
            id: self.app_id.clone(),
            registered_components: snapshot
                .components
                .values()
                .map(|c| rt::RegisteredComponents {
                    name: c.name.clone(),
                    r#type: c.type_name.clone(),
                    version: c.version.clone(),
                    capabilities: c.features.clone(),
                })
                .collect(),
            extended_metadata: extended,
            subscriptions: self
                .registry
                .subscriptions()
                .iter()
                .map(|s| rt::PubsubSubscription {
                    pubsub_name: s.pubsub.clone(),
                    topic: s.topic.clone(),
                    metadata: s.metadata.clone(),
                    rules: Some(rt::PubsubSubscriptionRules {
                        rules: s
                            .rule_list()
                            .into_iter()
                            .map(|(r#match, path)| rt::PubsubSubscriptionRule { r#match, path })
                            .collect(),
                    }),
                    dead_letter_topic: s.dead_letter_topic.clone().unwrap_or_default(),
                    r#type: match s.origin {
                        crate::pubsub::subscription::Origin::App => {
                            rt::PubsubSubscriptionType::Programmatic as i32
                        }
                        crate::pubsub::subscription::Origin::Declarative { .. } => {
                            rt::PubsubSubscriptionType::Declarative as i32
                        }
                    },
                })
                .collect(),
            runtime_version: crate::VERSION.into(),
            ..Default::default()
        }))
    }

    async fn set_metadata(&self, req: Request<rt::SetMetadataRequest>) -> Reply<()> {
        let r = req.into_inner();
        if !r.key.is_empty() {
            self.registry.set_extended(r.key, r.value);
        }
        Ok(Response::new(()))
    }

    async fn shutdown(&self, _: Request<rt::ShutdownRequest>) -> Reply<()> {
        tracing::info!("shutdown requested through the API");
        self.shutdown.cancel();
        Ok(Response::new(()))
    }
}
