//! The in-memory [`PubSub`]: per instance, one queue per (topic, consumer
//! group), at-least-once delivery.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::Duration;

use plugd_component_sdk::pubsub::{
    BulkPublishFailure, BulkPublishRequest, DeliveryError, Message, Properties, PubSub,
    PubSubError, PublishRequest, Subscriber,
};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::{PubSubConfig, keys, property};

/// An in-memory broker instance. Created uninitialised; `init` reads the
/// Component metadata. Messages live in this value, so they survive a
/// re-Init but not the process.
#[derive(Debug)]
pub struct MemoryPubSub {
    instance: String,
    config: RwLock<Option<PubSubConfig>>,
    topics: Mutex<HashMap<String, Topic>>,
    stop: CancellationToken,
}

/// One topic: its consumer groups, and what was published before the first.
#[derive(Debug, Default)]
struct Topic {
    /// Messages published while the topic had no consumer group; the first
    /// group to subscribe takes them.
    held: VecDeque<Message>,
    groups: HashMap<String, Arc<Group>>,
}

/// The queue of one consumer group of one topic, shared by every
/// subscription stream of the group (competing consumers).
#[derive(Debug, Default)]
struct Group {
    queue: Mutex<VecDeque<Queued>>,
    /// Signalled whenever a message is added.
    added: Notify,
}

#[derive(Debug)]
struct Queued {
    message: Message,
    /// Not to be delivered before this (a rejected message's delay).
    not_before: Option<Instant>,
}

impl Group {
    fn queue(&self) -> MutexGuard<'_, VecDeque<Queued>> {
        // Only whole pushes and pops happen under the lock.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn push_back(&self, message: Message) {
        self.queue().push_back(Queued {
            message,
            not_before: None,
        });
        self.added.notify_waiters();
    }

    fn push_front(&self, message: Message, not_before: Option<Instant>) {
        self.queue().push_front(Queued {
            message,
            not_before,
        });
        self.added.notify_waiters();
    }

    /// Takes the message at the front as soon as it may be delivered, or
    /// `None` once `subscriber` is closed. A delayed message at the front
    /// holds back the ones behind it, so order is kept.
    async fn next(self: &Arc<Self>, subscriber: &Subscriber) -> Option<Lease> {
        loop {
            if subscriber.is_closed() {
                return None;
            }
            // Created before looking: `notify_waiters` reaches it from here on.
            let added = self.added.notified();
            let wait_until = {
                let mut queue = self.queue();
                match queue.front() {
                    None => None,
                    Some(front) => match front.not_before {
                        Some(at) if at > Instant::now() => Some(at),
                        _ => {
                            return queue.pop_front().map(|queued| Lease {
                                group: Arc::clone(self),
                                message: Some(queued.message),
                            });
                        }
                    },
                }
            };
            let delayed = async {
                match wait_until {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = added => {}
                () = delayed => {}
                () = subscriber.closed() => return None,
            }
        }
    }
}

/// A message taken from a group's queue. Unless [`Lease::processed`] is
/// called, the message goes back to the front of the queue, also when the
/// lease is dropped because its subscription was dropped.
#[derive(Debug)]
struct Lease {
    group: Arc<Group>,
    message: Option<Message>,
}

impl Lease {
    fn message(&self) -> Option<&Message> {
        self.message.as_ref()
    }

    /// The host acknowledged the message: forget it.
    fn processed(mut self) {
        self.message = None;
    }

    /// Puts the message back at the front, to be delivered again after `delay`.
    fn release(mut self, delay: Duration) {
        if let Some(message) = self.message.take() {
            let not_before = (!delay.is_zero()).then(|| Instant::now() + delay);
            self.group.push_front(message, not_before);
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(message) = self.message.take() {
            self.group.push_front(message, None);
        }
    }
}

/// One delivery slot of a subscription stream: takes a message, delivers it,
/// forgets it when acknowledged and requeues it otherwise.
async fn deliver_loop(group: &Arc<Group>, subscriber: &Subscriber, delay: Duration) {
    while let Some(lease) = group.next(subscriber).await {
        let Some(message) = lease.message().cloned() else {
            continue;
        };
        match subscriber.deliver(message).await {
            Ok(()) => lease.processed(),
            Err(DeliveryError::Nacked(reason)) => {
                tracing::debug!(%reason, ?delay, "message rejected; it will be delivered again");
                lease.release(delay);
            }
            Err(err) => {
                tracing::debug!(error = %err, "message not answered; it will be delivered again");
                lease.release(Duration::ZERO);
            }
        }
    }
}

impl MemoryPubSub {
    /// A broker for the component instance `instance` (used in logs).
    pub fn new(instance: &str) -> Self {
        Self::with_shutdown(instance, CancellationToken::new())
    }

    /// Like [`new`](Self::new), and every subscription of the instance ends
    /// (cleanly, its unacknowledged messages requeued) when `stop` is
    /// cancelled, so that the server's shutdown does not wait on open streams.
    pub fn with_shutdown(instance: &str, stop: CancellationToken) -> Self {
        Self {
            instance: instance.to_owned(),
            config: RwLock::new(None),
            topics: Mutex::new(HashMap::new()),
            stop,
        }
    }

    /// The current config, if initialised.
    pub fn config(&self) -> Option<PubSubConfig> {
        self.config
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn current(&self) -> Result<PubSubConfig, PubSubError> {
        self.config().ok_or(PubSubError::NotInitialized)
    }

    fn topics(&self) -> MutexGuard<'_, HashMap<String, Topic>> {
        self.topics.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Messages waiting in `topic` for consumer group `group` (for tests and
    /// diagnostics); messages out for delivery are not counted.
    pub fn queued(&self, topic: &str, group: &str) -> usize {
        self.topics()
            .get(topic)
            .and_then(|topic| topic.groups.get(group))
            .map_or(0, |group| group.queue().len())
    }

    /// Appends `messages` to every consumer group of `topic`, in order, all
    /// under one lock (or holds them when the topic has no group yet).
    fn append(&self, topic: &str, messages: Vec<Message>) -> Result<(), PubSubError> {
        self.current()?;
        if topic.is_empty() {
            return Err(PubSubError::InvalidArgument(
                "the topic name is empty".to_owned(),
            ));
        }
        let mut topics = self.topics();
        let topic = topics.entry(topic.to_owned()).or_default();
        if topic.groups.is_empty() {
            topic.held.extend(messages);
            return Ok(());
        }
        for group in topic.groups.values() {
            for message in &messages {
                group.push_back(message.clone());
            }
        }
        Ok(())
    }

    /// The queue of `group` in `topic`, created on first use; the first group
    /// of a topic takes the messages held for it.
    fn group(&self, topic: &str, group: &str) -> Arc<Group> {
        let mut topics = self.topics();
        let topic = topics.entry(topic.to_owned()).or_default();
        if let Some(existing) = topic.groups.get(group) {
            return Arc::clone(existing);
        }
        let created = Arc::new(Group::default());
        created
            .queue()
            .extend(topic.held.drain(..).map(|message| Queued {
                message,
                not_before: None,
            }));
        topic.groups.insert(group.to_owned(), Arc::clone(&created));
        created
    }
}

impl PubSub for MemoryPubSub {
    const BULK_PUBLISH: bool = true;

    async fn init(&self, properties: Properties) -> Result<(), PubSubError> {
        let config = PubSubConfig::from_properties(&properties);
        let mut slot = self.config.write().unwrap_or_else(PoisonError::into_inner);
        match config {
            Ok(config) => {
                plugd_component_sdk::metadata::warn_unknown(
                    "in-memory pub/sub",
                    &self.instance,
                    &properties,
                    &crate::config::keys::ALL,
                );
                tracing::info!(
                    instance = %self.instance,
                    consumer_id = %config.consumer_id,
                    max_in_flight = config.max_in_flight,
                    redelivery_delay = ?config.redelivery_delay,
                    "in-memory pub/sub initialised"
                );
                *slot = Some(config);
                Ok(())
            }
            Err(err) => {
                // A failed (re-)init leaves the instance uninitialised; its
                // messages are kept.
                *slot = None;
                Err(PubSubError::InvalidArgument(err.to_string()))
            }
        }
    }

    async fn publish(&self, request: PublishRequest) -> Result<(), PubSubError> {
        let message = Message {
            data: request.data,
            topic: request.topic.clone(),
            metadata: request.metadata,
            content_type: request.content_type,
        };
        self.append(&request.topic, vec![message])
    }

    async fn bulk_publish(
        &self,
        request: BulkPublishRequest,
    ) -> Result<Vec<BulkPublishFailure>, PubSubError> {
        let messages = request
            .entries
            .into_iter()
            .map(|entry| {
                let mut metadata = request.metadata.clone();
                metadata.extend(entry.metadata);
                Message {
                    data: entry.event,
                    topic: request.topic.clone(),
                    metadata,
                    content_type: entry.content_type,
                }
            })
            .collect();
        // All entries are appended at once or (on error) none: no per-entry failures.
        self.append(&request.topic, messages)?;
        Ok(Vec::new())
    }

    async fn subscribe(&self, subscriber: Subscriber) -> Result<(), PubSubError> {
        let config = self.current()?;
        let topic = subscriber.topic();
        let group_name = property(&topic.metadata, keys::CONSUMER_ID)
            .unwrap_or(&config.consumer_id)
            .to_owned();
        let group = self.group(&topic.name, &group_name);
        tracing::debug!(
            instance = %self.instance,
            topic = %topic.name,
            group = %group_name,
            max_in_flight = config.max_in_flight,
            "subscribed"
        );
        let slots = (0..config.max_in_flight)
            .map(|_| deliver_loop(&group, &subscriber, config.redelivery_delay));
        tokio::select! {
            _ = futures::future::join_all(slots) => {}
            // Dropping the slots requeues every message they hold.
            () = self.stop.cancelled() => {
                tracing::debug!(topic = %topic.name, "shutting down; ending the subscription");
            }
        }
        Ok(())
    }

    async fn ping(&self) -> Result<(), PubSubError> {
        self.current().map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(data: &str) -> Message {
        Message {
            data: data.as_bytes().to_vec(),
            topic: "t".to_owned(),
            ..Message::default()
        }
    }

    #[tokio::test]
    async fn calls_before_init_fail_cleanly() {
        let broker = MemoryPubSub::new("p");
        assert!(matches!(
            broker.ping().await,
            Err(PubSubError::NotInitialized)
        ));
        assert!(matches!(
            broker
                .publish(PublishRequest {
                    topic: "t".into(),
                    ..PublishRequest::default()
                })
                .await,
            Err(PubSubError::NotInitialized)
        ));
        let err = broker
            .init(Properties::from([("maxInFlight".into(), "none".into())]))
            .await
            .expect_err("bad metadata");
        assert!(matches!(err, PubSubError::InvalidArgument(_)), "{err:?}");
        broker.init(Properties::new()).await.expect("init");
        broker.ping().await.expect("ping");
    }

    #[tokio::test]
    async fn held_messages_go_to_the_first_group_only() {
        let broker = MemoryPubSub::new("p");
        broker.init(Properties::new()).await.expect("init");
        broker
            .append("t", vec![message("early-1"), message("early-2")])
            .expect("publish");
        let first = broker.group("t", "a");
        assert_eq!(broker.queued("t", "a"), 2);
        let second = broker.group("t", "b");
        assert!(Arc::ptr_eq(&first, &broker.group("t", "a")));
        assert_eq!(broker.queued("t", "b"), 0);
        broker.append("t", vec![message("late")]).expect("publish");
        assert_eq!((broker.queued("t", "a"), broker.queued("t", "b")), (3, 1));
        assert_eq!(second.queue()[0].message.data, b"late");
        assert!(matches!(
            broker.append("", vec![message("x")]),
            Err(PubSubError::InvalidArgument(_))
        ));
    }

    #[test]
    fn a_dropped_lease_requeues_at_the_front() {
        let group = Arc::new(Group::default());
        group.push_back(message("second"));
        let lease = Lease {
            group: Arc::clone(&group),
            message: Some(message("first")),
        };
        drop(lease);
        let order: Vec<_> = group
            .queue()
            .iter()
            .map(|q| q.message.data.clone())
            .collect();
        assert_eq!(order, [b"first".to_vec(), b"second".to_vec()]);

        let lease = Lease {
            group: Arc::clone(&group),
            message: Some(message("done")),
        };
        lease.processed();
        assert_eq!(group.queue().len(), 2);
    }
}
