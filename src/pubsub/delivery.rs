//! Delivering messages to the app: one `PullMessages` stream per subscription (component instance
//! and topic), re-established whenever it breaks, with every message acknowledged only after the
//! app has answered.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{
    cloudevents::{CLOUDEVENTS_JSON, Event},
    subscription::Subscription,
};
use crate::{
    appchannel::{self, AppChannel, Outcome, TopicDelivery},
    component::pubsub::{Acker, MessageStream},
    proto::components as pb,
    registry::{ComponentStatus, PubSubEntry, Registry},
    telemetry::trace,
};

/// How long `Pause` may take at shutdown.
const PAUSE_TIMEOUT: Duration = Duration::from_secs(5);

/// What the delivery tasks share.
pub struct Deliverer {
    pub registry: Arc<Registry>,
    pub app: Arc<dyn AppChannel>,
    /// Bounds calls to the app across all subscriptions (`--app-max-concurrency`).
    pub app_limit: Option<Arc<Semaphore>>,
    /// Messages of one subscription handled at once, unless its metadata says otherwise.
    pub concurrency: usize,
    pub stop: CancellationToken,
}

/// Waits for the app, reads its subscriptions, merges the declarative ones and starts one
/// delivery task per subscription. Runs in the background; returns at once.
pub fn start(
    deliverer: Arc<Deliverer>,
    address: std::net::SocketAddr,
    declarative: Vec<Subscription>,
    known_pubsubs: HashSet<String>,
) {
    tokio::spawn(async move {
        if !appchannel::wait_for_app(address, &deliverer.stop).await {
            return;
        }
        let programmatic = match deliverer.app.subscriptions().await {
            Ok(subs) => subs,
            Err(e) => {
                tracing::error!(app = %deliverer.app.address(), "cannot read the app's subscriptions: {e}");
                Vec::new()
            }
        };
        let mut seen = HashSet::new();
        for sub in declarative.into_iter().chain(programmatic) {
            if !seen.insert((sub.pubsub.clone(), sub.topic.clone())) {
                tracing::warn!(pubsub = %sub.pubsub, topic = %sub.topic, origin = %sub.origin,
                    "duplicate subscription ignored (the first one for this pubsub and topic is kept)");
                continue;
            }
            if !known_pubsubs.contains(&sub.pubsub) {
                tracing::warn!(pubsub = %sub.pubsub, topic = %sub.topic, origin = %sub.origin,
                    "subscription to a pubsub component that is not configured: it starts if one is added");
            }
            if sub.bulk {
                tracing::warn!(pubsub = %sub.pubsub, topic = %sub.topic,
                    "bulkSubscribe is not supported by plugd: events are delivered one at a time");
            }
            let span =
                tracing::info_span!("subscription", pubsub = %sub.pubsub, topic = %sub.topic);
            let sub = Arc::new(sub);
            // Listed by the metadata API from now on.
            deliverer.registry.add_subscription(sub.clone());
            tokio::spawn(run(deliverer.clone(), sub).instrument(span));
        }
    });
}

/// The CloudEvent ids of messages the app refused lately, so that their redelivery can be counted
/// (`plugd_pubsub_redelivered_total`). Bounded: the oldest ids are forgotten first.
#[derive(Default)]
struct Refused {
    ids: Mutex<(HashSet<String>, VecDeque<String>)>,
}

impl Refused {
    const CAPACITY: usize = 4096;

    fn insert(&self, id: &str) {
        let Ok(mut guard) = self.ids.lock() else {
            return;
        };
        let (set, order) = &mut *guard;
        if set.insert(id.to_owned()) {
            order.push_back(id.to_owned());
        }
        // `order` may hold ids already taken (they are skipped here, not searched for there).
        while order.len() > Self::CAPACITY {
            if let Some(old) = order.pop_front() {
                set.remove(&old);
            }
        }
    }

    /// Whether `id` was refused before (and forgets it).
    fn take(&self, id: &str) -> bool {
        match self.ids.lock() {
            Ok(mut guard) if !guard.0.is_empty() => guard.0.remove(id),
            _ => false,
        }
    }
}

/// What one subscription's streams share: how many messages may be in flight at once, and the
/// messages refused lately.
struct Flow {
    concurrency: usize,
    refused: Arc<Refused>,
}

/// Why a stream ended.
enum Ended {
    Stop,
    Broken(String),
}

/// Keeps one subscription's stream open until plugd stops.
async fn run(d: Arc<Deliverer>, sub: Arc<Subscription>) {
    let mut changes = d.registry.changes();
    let mut backoff = Duration::from_millis(50);
    let mut refused_scope = false;
    let concurrency = sub
        .metadata
        .get("concurrency")
        .and_then(|c| c.parse::<usize>().ok())
        .filter(|c| *c > 0)
        .unwrap_or(d.concurrency);
    let flow = Flow {
        concurrency,
        refused: Arc::new(Refused::default()),
    };
    loop {
        // Wait for a ready instance of the component.
        let entry = loop {
            changes.borrow_and_update();
            let found = d.registry.snapshot().pubsub.get(&sub.pubsub).cloned();
            if let Some(e) = found.filter(|e| {
                e.info.status == ComponentStatus::Ready && !e.pubsub.connection().is_lost()
            }) {
                break e;
            }
            tokio::select! {
                _ = d.stop.cancelled() => return,
                r = changes.changed() => if r.is_err() { return },
            }
        };
        if !entry.scopes.may_subscribe(&sub.topic) {
            if !refused_scope {
                tracing::error!(
                    "the pubsub component's scopes do not allow this app to subscribe to the topic"
                );
                refused_scope = true;
            }
            tokio::select! {
                _ = d.stop.cancelled() => return,
                r = changes.changed() => if r.is_err() { return },
            }
            continue;
        }
        let topic = pb::Topic {
            name: sub.topic.clone(),
            metadata: sub.metadata.clone(),
        };
        let ended = match entry.pubsub.pull(topic).await {
            Ok(stream) => {
                tracing::info!(socket = %entry.pubsub.connection().socket().display(), concurrency, "subscribed");
                consume(&d, &sub, &entry, stream, &flow, &mut backoff, &mut changes).await
            }
            Err(e) => Ended::Broken(e.to_string()),
        };
        match ended {
            Ended::Stop => {
                pause(&entry).await;
                return;
            }
            Ended::Broken(reason) => {
                let delay = backoff.mul_f64(rand::random_range(0.5..1.5));
                tracing::warn!(%reason, retry_in = ?delay, "subscription stream ended; subscribing again");
                backoff = (backoff * 2).min(Duration::from_secs(2));
                tokio::select! {
                    _ = d.stop.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

/// At shutdown: ask the component to stop delivering. `UNIMPLEMENTED` is the usual answer.
async fn pause(entry: &PubSubEntry) {
    match entry.pubsub.pause(PAUSE_TIMEOUT).await {
        Ok(()) => tracing::debug!("component paused"),
        Err(e)
            if e.status()
                .is_some_and(|s| s.code() == tonic::Code::Unimplemented) => {}
        Err(e) => tracing::debug!(error = %e, "pause failed"),
    }
}

/// Reads messages until the stream ends or plugd stops; at most `flow.concurrency` in flight.
async fn consume(
    d: &Arc<Deliverer>,
    sub: &Arc<Subscription>,
    entry: &Arc<PubSubEntry>,
    mut stream: MessageStream,
    flow: &Flow,
    backoff: &mut Duration,
    changes: &mut tokio::sync::watch::Receiver<u64>,
) -> Ended {
    let slots = Arc::new(Semaphore::new(flow.concurrency));
    let mut registry_open = true;
    loop {
        let next = tokio::select! {
            biased;
            _ = d.stop.cancelled() => return Ended::Stop,
            r = changes.changed(), if registry_open => {
                if r.is_err() {
                    registry_open = false;
                    continue;
                }
                // A new instance of the component (re-initialised, or changed by a hot
                // reload) takes over: subscribe on it.
                let current = d.registry.snapshot().pubsub.get(&sub.pubsub).cloned();
                match current {
                    Some(c) if Arc::ptr_eq(&c.pubsub, &entry.pubsub) => continue,
                    _ => return Ended::Broken("the component instance was replaced".into()),
                }
            }
            m = stream.messages.recv() => m,
        };
        let message = match next {
            Some(Ok(m)) => m,
            Some(Err(status)) => {
                return Ended::Broken(format!("{:?}: {}", status.code(), status.message()));
            }
            None => return Ended::Broken("the component closed the stream".into()),
        };
        *backoff = Duration::from_millis(50);
        let permit = tokio::select! {
            biased;
            _ = d.stop.cancelled() => return Ended::Stop,
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return Ended::Stop,
            },
        };
        let (d, sub, entry, acks) = (d.clone(), sub.clone(), entry.clone(), stream.acks.clone());
        let refused = flow.refused.clone();
        tokio::spawn(
            async move {
                handle(&d, &sub, &entry, &acks, &refused, message).await;
                drop(permit);
            }
            .in_current_span(),
        );
    }
}

/// Delivers one message and acknowledges it (or not) by what the app answered, all in the
/// message's delivery: the app and a dead-letter publish get the event's trace.
async fn handle(
    d: &Deliverer,
    sub: &Subscription,
    entry: &PubSubEntry,
    acks: &Acker,
    refused: &Refused,
    message: pb::PullMessagesResponse,
) {
    let incoming = Incoming::read(sub, &message);
    let delivery = match &incoming {
        Ok(i) => trace::Delivery::new(
            "pubsub_delivery",
            i.event.str(trace::TRACEPARENT).as_deref(),
            i.event.str(trace::TRACESTATE).as_deref(),
        ),
        Err(_) => trace::Delivery::new("pubsub_delivery", None, None),
    };
    let message = Message {
        raw: &message,
        incoming,
        trace: &delivery,
    };
    delivery
        .run(settle(d, sub, entry, acks, refused, message))
        .await;
}

/// One message from the component, as [`handle`] sees it.
struct Message<'m> {
    raw: &'m pb::PullMessagesResponse,
    /// The message read as a CloudEvent, or why it is not one.
    incoming: Result<Incoming<'m>, String>,
    /// Its delivery's trace context.
    trace: &'m trace::Delivery,
}

/// A message read as a CloudEvent, with what the app receives beside it.
struct Incoming<'m> {
    event: Event,
    /// The broker metadata plus `content-type` and `pubsubName`.
    metadata: HashMap<String, String>,
    /// The topic the message came from.
    topic: &'m str,
}

impl<'m> Incoming<'m> {
    /// `Err` says why the message is not a CloudEvent.
    fn read(sub: &'m Subscription, message: &'m pb::PullMessagesResponse) -> Result<Self, String> {
        let mut metadata: HashMap<String, String> = message.metadata.clone();
        metadata.insert("content-type".into(), message.content_type.clone());
        metadata.insert("pubsubName".into(), sub.pubsub.clone());
        let topic = if message.topic_name.is_empty() {
            &sub.topic
        } else {
            &message.topic_name
        };
        let event = Event::read(
            &message.data,
            sub.raw_payload(),
            topic,
            &sub.pubsub,
            &metadata,
        )
        .map_err(|e| e.to_string())?;
        Ok(Self {
            event,
            metadata,
            topic,
        })
    }
}

/// The body of [`handle`], inside the delivery.
async fn settle(
    d: &Deliverer,
    sub: &Subscription,
    entry: &PubSubEntry,
    acks: &Acker,
    refused: &Refused,
    message: Message<'_>,
) {
    use crate::metrics::{PubSubEvent, pubsub as count};
    let id = message.raw.id.clone();
    let (pubsub, topic) = (sub.pubsub.as_str(), sub.topic.as_str());
    let (outcome, event_id) = deliver(d, sub, refused, message.incoming, message.trace).await;
    // Shutting down: neither ack nor nack, so the component redelivers it (as daprd).
    if d.stop.is_cancelled() {
        return;
    }
    let error = match outcome {
        Outcome::Success => None,
        Outcome::Retry(why) => {
            tracing::debug!(message_id = %id, "event not processed; the component will redeliver it: {why}");
            Some(why)
        }
        Outcome::Drop(why) => match &sub.dead_letter_topic {
            Some(dlq) => match dead_letter(entry, dlq, message.raw).await {
                Ok(()) => {
                    tracing::warn!(message_id = %id, dead_letter_topic = %dlq, "event dropped to the dead-letter topic: {why}");
                    count(PubSubEvent::DeadLettered, pubsub, topic);
                    None
                }
                Err(e) => {
                    tracing::error!(message_id = %id, dead_letter_topic = %dlq, "cannot publish to the dead-letter topic ({e}); the event will be redelivered");
                    Some(format!("dead-letter publish failed: {e}"))
                }
            },
            None => {
                tracing::warn!(message_id = %id, "event dropped: {why}");
                count(PubSubEvent::Dropped, pubsub, topic);
                None
            }
        },
    };
    let nack = error.is_some();
    if nack && let Some(event_id) = &event_id {
        refused.insert(event_id);
    }
    if acks.ack(id, error).await {
        count(
            if nack {
                PubSubEvent::Nacked
            } else {
                PubSubEvent::Acked
            },
            pubsub,
            topic,
        );
    } else {
        tracing::debug!("the stream ended before the ack could be sent; the component redelivers");
    }
}

async fn dead_letter(
    entry: &PubSubEntry,
    topic: &str,
    message: &pb::PullMessagesResponse,
) -> Result<(), String> {
    let content_type = if message.content_type.is_empty() {
        CLOUDEVENTS_JSON.to_string()
    } else {
        message.content_type.clone()
    };
    entry
        .pubsub
        .publish(pb::PublishRequest {
            data: message.data.clone(),
            pubsub_name: entry.info.name.clone(),
            topic: topic.to_string(),
            metadata: message.metadata.clone(),
            content_type,
        })
        .await
        .map_err(|e| e.to_string())
}

/// Hands one message to the app; also returns the CloudEvent's id, when it has one.
async fn deliver(
    d: &Deliverer,
    sub: &Subscription,
    refused: &Refused,
    incoming: Result<Incoming<'_>, String>,
    trace: &trace::Delivery,
) -> (Outcome, Option<String>) {
    let Incoming {
        event,
        metadata,
        topic,
    } = match incoming {
        Ok(i) => i,
        // Retrying cannot make it readable: drop it (to the dead-letter topic, if any).
        Err(e) => {
            return (
                Outcome::Drop(format!("the message is not a CloudEvent: {e}")),
                None,
            );
        }
    };
    // The CloudEvent id stays the same across redeliveries (the stream's message id does not).
    let event_id = event.str("id").filter(|i| !i.is_empty());
    if event_id.as_deref().is_some_and(|i| refused.take(i)) {
        crate::metrics::pubsub(
            crate::metrics::PubSubEvent::Redelivered,
            &sub.pubsub,
            &sub.topic,
        );
    }
    if event.expired(SystemTime::now()) {
        return (Outcome::Drop("the event has expired".into()), event_id);
    }
    let Some(path) = sub.route(&event) else {
        tracing::debug!(event_id = ?event.str("id"), "no routing rule matches; event skipped");
        return (Outcome::Success, event_id);
    };
    let _global = match &d.app_limit {
        Some(limit) => match limit.clone().acquire_owned().await {
            Ok(p) => Some(p),
            Err(_) => return (Outcome::Retry("plugd is stopping".into()), event_id),
        },
        None => None,
    };
    crate::metrics::pubsub(
        crate::metrics::PubSubEvent::Delivered,
        &sub.pubsub,
        &sub.topic,
    );
    let started = Instant::now();
    let outcome = d
        .app
        .topic_event(TopicDelivery {
            event: &event,
            pubsub: &sub.pubsub,
            topic,
            path,
            metadata: &metadata,
            trace,
        })
        .await;
    crate::metrics::pubsub_delivery_time(&sub.pubsub, &sub.topic, started.elapsed());
    (outcome, event_id)
}

#[cfg(test)]
mod tests {
    use super::Refused;

    #[test]
    fn refused_ids_are_taken_once_and_bounded() {
        let refused = Refused::default();
        refused.insert("a");
        refused.insert("a");
        assert!(refused.take("a"));
        assert!(!refused.take("a"), "taken once");
        for i in 0..Refused::CAPACITY + 10 {
            refused.insert(&i.to_string());
        }
        assert!(!refused.take("0"), "the oldest ids are forgotten");
        assert!(refused.take(&(Refused::CAPACITY + 9).to_string()));
        for i in 0..3 * Refused::CAPACITY {
            refused.insert(&i.to_string());
            refused.take(&i.to_string());
        }
        let guard = refused.ids.lock().expect("lock");
        assert!(guard.0.len() <= Refused::CAPACITY && guard.1.len() <= Refused::CAPACITY);
    }
}
