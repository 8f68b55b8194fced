//! The [`PubSub`] implementation: the SDK's calls mapped onto [`Streams`].

use std::sync::{Arc, PoisonError, RwLock};

use plugd_component_sdk::pubsub::{
    BulkPublishFailure, BulkPublishRequest, DeliveryError, Message, Properties, PubSub,
    PubSubError, PublishRequest, Subscriber, feature,
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::{self, Settings, known};
use crate::connection::describe;
use crate::streams::{Delivery, Entry, Handler, Outcome, Streams, StreamsError};
use plugd_component_sdk::metadata::warn_unknown;

/// One pub/sub component instance (one per Component resource).
#[derive(Debug)]
pub struct RedisPubSub {
    instance: String,
    streams: RwLock<Option<Streams>>,
    /// `true` between Pause and Resume (or the next Init).
    paused: watch::Sender<bool>,
}

impl RedisPubSub {
    /// An instance named `instance`, not initialised.
    pub fn new(instance: &str) -> Self {
        Self {
            instance: instance.to_owned(),
            streams: RwLock::new(None),
            paused: watch::Sender::new(false),
        }
    }

    fn streams(&self) -> Result<Streams, PubSubError> {
        self.streams
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or(PubSubError::NotInitialized)
    }
}

fn to_pubsub_error(err: StreamsError) -> PubSubError {
    match &err {
        StreamsError::Connect(connect) if connect.is_refused_settings() => {
            PubSubError::InvalidArgument(describe(&err))
        }
        _ if err.is_unavailable() => PubSubError::Unavailable(describe(&err)),
        _ => PubSubError::Internal(describe(&err)),
    }
}

fn require_topic(topic: &str) -> Result<(), PubSubError> {
    if topic.is_empty() {
        Err(PubSubError::InvalidArgument("topic is required".to_owned()))
    } else {
        Ok(())
    }
}

impl PubSub for RedisPubSub {
    const BULK_PUBLISH: bool = true;

    async fn init(&self, properties: Properties) -> Result<(), PubSubError> {
        let settings = Settings::from_properties(&properties)
            .map_err(|err| PubSubError::InvalidArgument(err.to_string()))?;
        warn_unknown(
            "pubsub.redis",
            &self.instance,
            &properties,
            &known(&config::keys::ALL),
        );
        tracing::debug!(instance = %self.instance, ?settings, "connecting");
        let streams = Streams::connect(settings).await.map_err(to_pubsub_error)?;
        tracing::info!(
            instance = %self.instance,
            redis = %streams.settings().address(),
            group = %streams.settings().consumer_group,
            "initialised"
        );
        *self.streams.write().unwrap_or_else(PoisonError::into_inner) = Some(streams);
        // A new Init comes from a (re)started host: a pause of the old one is over.
        self.paused.send_replace(false);
        Ok(())
    }

    fn features(&self) -> Vec<String> {
        // Messages are handed over as soon as they are read, so a bulk
        // subscriber should not wait for batches. BULK_PUBSUB is added by the
        // SDK (BULK_PUBLISH). No MESSAGE_TTL: entries do not expire.
        vec![feature::BULK_SUBSCRIBE_IMMEDIATE.to_owned()]
    }

    async fn publish(&self, request: PublishRequest) -> Result<(), PubSubError> {
        let streams = self.streams()?;
        require_topic(&request.topic)?;
        let entry = Entry {
            data: request.data,
            content_type: request.content_type,
            metadata: request.metadata,
        };
        streams
            .publish(&request.topic, &entry)
            .await
            .map_err(to_pubsub_error)?;
        Ok(())
    }

    async fn bulk_publish(
        &self,
        request: BulkPublishRequest,
    ) -> Result<Vec<BulkPublishFailure>, PubSubError> {
        let streams = self.streams()?;
        require_topic(&request.topic)?;
        let (ids, entries): (Vec<String>, Vec<Entry>) = request
            .entries
            .into_iter()
            .map(|entry| {
                let mut metadata = request.metadata.clone();
                metadata.extend(entry.metadata);
                (
                    entry.entry_id,
                    Entry {
                        data: entry.event,
                        content_type: entry.content_type,
                        metadata,
                    },
                )
            })
            .unzip();
        let results = streams
            .publish_batch(&request.topic, &entries)
            .await
            .map_err(to_pubsub_error)?;
        Ok(ids
            .into_iter()
            .zip(results)
            .filter_map(|(entry_id, result)| {
                result
                    .err()
                    .map(|error| BulkPublishFailure { entry_id, error })
            })
            .collect())
    }

    async fn subscribe(&self, subscriber: Subscriber) -> Result<(), PubSubError> {
        let streams = self.streams()?;
        let topic = subscriber.topic().name.clone();
        require_topic(&topic)?;
        let stop = CancellationToken::new();
        let handler = Arc::new(Deliverer(subscriber.clone()));
        let span = tracing::info_span!("subscribe", instance = %self.instance);
        let run = streams
            .subscribe(&topic, handler, stop.clone(), self.paused.subscribe())
            .instrument(span);
        let mut run = std::pin::pin!(run);
        tokio::select! {
            result = &mut run => return result.map_err(to_pubsub_error),
            () = subscriber.closed() => stop.cancel(),
        }
        run.await.map_err(to_pubsub_error)
    }

    async fn ping(&self) -> Result<(), PubSubError> {
        self.streams()?.ping().await.map_err(to_pubsub_error)
    }

    async fn pause(&self) -> Result<(), PubSubError> {
        if !self.paused.send_replace(true) {
            tracing::info!(instance = %self.instance, "paused: no new messages are read");
        }
        Ok(())
    }

    async fn resume(&self) -> Result<(), PubSubError> {
        if self.paused.send_replace(false) {
            tracing::info!(instance = %self.instance, "resumed");
        }
        Ok(())
    }
}

/// Hands stream entries to the host through the subscription stream.
struct Deliverer(Subscriber);

impl Handler for Deliverer {
    async fn handle(&self, delivery: &Delivery) -> Outcome {
        let message = Message {
            data: delivery.entry.data.clone(),
            topic: delivery.topic.clone(),
            metadata: delivery.entry.metadata.clone(),
            content_type: delivery.entry.content_type.clone(),
        };
        match self.0.deliver(message).await {
            Ok(()) => Outcome::Ack,
            Err(DeliveryError::Nacked(reason)) => Outcome::Nack(reason),
            Err(DeliveryError::Closed) => Outcome::Closed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn calls_before_init_are_refused() {
        let pubsub = RedisPubSub::new("p");
        assert!(matches!(
            pubsub.ping().await,
            Err(PubSubError::NotInitialized)
        ));
        assert!(matches!(
            pubsub.publish(PublishRequest::default()).await,
            Err(PubSubError::NotInitialized)
        ));
    }

    #[tokio::test]
    async fn bad_metadata_is_an_invalid_argument_naming_the_field() {
        let pubsub = RedisPubSub::new("p");
        let properties = Properties::from([
            ("consumerID".to_owned(), "g".to_owned()),
            ("concurrency".to_owned(), "lots".to_owned()),
        ]);
        match pubsub.init(properties).await {
            Err(PubSubError::InvalidArgument(message)) => {
                assert!(message.contains("concurrency"), "{message}");
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
