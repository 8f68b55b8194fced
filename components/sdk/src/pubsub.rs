//! Pub/sub brokers: the [`PubSub`] trait, its request types and errors, the
//! [`Subscriber`] a component delivers messages through, and the gRPC adapter
//! that serves `dapr.proto.components.v1.PubSub`.
//!
//! # Subscriptions
//!
//! The host (daprd or plugd) subscribes to a topic by opening one
//! `PullMessages` stream and sending the topic first. The SDK then calls
//! [`PubSub::subscribe`] in a task of its own with a [`Subscriber`] for that
//! stream, and keeps it running for as long as the stream lives:
//!
//! - [`Subscriber::deliver`] sends one message to the host, under a fresh
//!   UUID, and waits for the host's answer to that id. `Ok(())` means the host
//!   acknowledged it: the message is processed and may be forgotten. Nothing
//!   else means that.
//! - The host answers a failed delivery with an error text:
//!   [`DeliveryError::Nacked`].
//! - When the host closes the stream, the stream breaks, or the subscription
//!   ends otherwise, every delivery still waiting resolves to
//!   [`DeliveryError::Closed`] and [`Subscriber::closed`] completes.
//!   [`subscribe`](PubSub::subscribe) should then return; it is given a grace
//!   of a few seconds and then dropped.
//! - If `subscribe` returns `Ok` while the host is still connected, the stream
//!   is ended cleanly; an `Err` ends it with the error's status.
//! - **Server shutdown**: when the shutdown signal fires, every subscription
//!   is closed at once (pending delivers resolve to
//!   [`DeliveryError::Closed`], [`Subscriber::closed`] completes), before the
//!   server's grace period for other calls. Deliveries still unanswered are
//!   never acked, so the component must keep them for redelivery, as after a
//!   crash.
//!
//! ## Redelivery is the component's job
//!
//! The SDK never keeps or resends a message. After [`DeliveryError::Nacked`]
//! or [`DeliveryError::Closed`] the message was **not** processed, and the
//! component must make it available again: put it back in its queue (for any
//! subscriber of the same consumer group), leave it unacknowledged in the
//! broker so that the broker redelivers it, or try again on the same stream.
//! Clone a message before delivering it if you need it afterwards.
//! [`Redelivery`] does the "try again on this stream" part and hands the
//! message back when the stream is gone.
//!
//! daprd handles the messages of one stream one at a time, so deliveries
//! beyond the first wait in the host's or the socket's buffers; several
//! concurrent delivers per stream are allowed and useful to keep the host busy.
//!
//! # Example
//!
//! A broker that keeps one queue per topic in memory. Every subscription of a
//! topic takes messages from the same queue (competing consumers). A message
//! the host rejects is redelivered on the same stream by [`Redelivery`]
//! (backing off, at most five times); one that still was not acknowledged,
//! or whose stream closed, goes back to the front of the queue.
//!
//! ```no_run
//! use std::collections::{HashMap, VecDeque};
//! use std::sync::{Mutex, MutexGuard, PoisonError};
//!
//! use plugd_component_sdk::ComponentServer;
//! use plugd_component_sdk::pubsub::{
//!     Message, Properties, PubSub, PubSubError, PublishRequest, Redelivery, Subscriber,
//! };
//! use tokio::sync::Notify;
//!
//! #[derive(Default)]
//! struct Queues {
//!     topics: Mutex<HashMap<String, VecDeque<Message>>>,
//!     published: Notify,
//! }
//!
//! impl Queues {
//!     fn topics(&self) -> MutexGuard<'_, HashMap<String, VecDeque<Message>>> {
//!         self.topics.lock().unwrap_or_else(PoisonError::into_inner)
//!     }
//! }
//!
//! impl PubSub for Queues {
//!     async fn init(&self, _properties: Properties) -> Result<(), PubSubError> {
//!         Ok(())
//!     }
//!
//!     async fn publish(&self, request: PublishRequest) -> Result<(), PubSubError> {
//!         let message = Message {
//!             data: request.data,
//!             topic: request.topic.clone(),
//!             metadata: request.metadata,
//!             content_type: request.content_type,
//!         };
//!         self.topics().entry(request.topic).or_default().push_back(message);
//!         self.published.notify_waiters();
//!         Ok(())
//!     }
//!
//!     async fn subscribe(&self, subscriber: Subscriber) -> Result<(), PubSubError> {
//!         let topic = subscriber.topic().name.clone();
//!         let redelivery = Redelivery::new(
//!             std::time::Duration::from_millis(100),
//!             std::time::Duration::from_secs(5),
//!         )
//!         .max_attempts(5);
//!         while !subscriber.is_closed() {
//!             // Created before looking, so a publish in between is not missed.
//!             let published = self.published.notified();
//!             let next = self.topics().get_mut(&topic).and_then(VecDeque::pop_front);
//!             let Some(message) = next else {
//!                 tokio::select! {
//!                     () = published => continue,
//!                     () = subscriber.closed() => break,
//!                 }
//!             };
//!             if let Err(undelivered) = redelivery.deliver(&subscriber, message).await {
//!                 // Not acknowledged (nacked five times, or the stream closed):
//!                 // not processed, so it must be delivered again.
//!                 tracing::debug!(error = %undelivered.error, "requeueing");
//!                 let message = undelivered.message;
//!                 self.topics().entry(topic.clone()).or_default().push_front(message);
//!                 self.published.notify_waiters();
//!             }
//!         }
//!         Ok(())
//!     }
//! }
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     // Served as queues.sock: `type: pubsub.queues` in a Component YAML.
//!     ComponentServer::new("queues")
//!         .pubsub(|_instance| Queues::default())
//!         .serve()
//!         .await?;
//!     Ok(())
//! }
//! ```

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use pb::pub_sub_server::PubSubServer;
use plugd_proto::components as pb;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tonic::server::NamedService;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use crate::common::{self, Closeable, KindError, Waiters, error_chain, properties};
use crate::multiplex::Multiplexer;
use crate::server::ComponentServer;

/// Feature strings a pub/sub component can report (see [`PubSub::features`]).
pub mod feature {
    /// `BulkPublish` is implemented; reported by the SDK when
    /// [`PubSub::BULK_PUBLISH`](super::PubSub::BULK_PUBLISH) is true. daprd
    /// calls `BulkPublish` only when this is reported, and otherwise publishes
    /// the entries one by one.
    pub const BULK_PUBSUB: &str = "BULK_PUBSUB";
    /// The broker honours a message time to live (`ttlInSeconds`).
    pub const MESSAGE_TTL: &str = "MESSAGE_TTL";
    /// Topic names in subscriptions may contain wildcards.
    pub const SUBSCRIBE_WILDCARDS: &str = "SUBSCRIBE_WILDCARDS";
    /// Bulk subscriptions should hand over messages at once instead of
    /// waiting for batches to fill (daprd handles one message per stream at a
    /// time, so batches never form).
    pub const BULK_SUBSCRIBE_IMMEDIATE: &str = "BULK_SUBSCRIBE_IMMEDIATE";
}

/// Init properties: the Component's `spec.metadata`, every value a string.
pub type Properties = HashMap<String, String>;

/// Per-request or per-message metadata.
pub type Metadata = HashMap<String, String>;

/// How many messages may wait in one stream's outbound buffer; further
/// delivers wait for room.
const OUTBOUND_BUFFER: usize = 32;

/// How long [`PubSub::subscribe`] may run on after its stream has closed
/// before it is dropped.
const SUBSCRIBE_GRACE: Duration = Duration::from_secs(5);

/// Publishes one message.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PublishRequest {
    /// The payload (usually a CloudEvent as JSON).
    pub data: Vec<u8>,
    /// Name of the pub/sub Component.
    pub pubsub_name: String,
    /// Destination topic (daprd may have prefixed it with a namespace).
    pub topic: String,
    /// Request metadata.
    pub metadata: Metadata,
    /// Content type of the payload; an empty string on the wire is `None`
    /// (daprd currently never sets it).
    pub content_type: Option<String>,
}

/// One message of a [`BulkPublishRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BulkPublishEntry {
    /// Id of the entry, unique within the request; failures name it.
    pub entry_id: String,
    /// The payload.
    pub event: Vec<u8>,
    /// Content type of the payload; empty on the wire is `None`.
    pub content_type: Option<String>,
    /// Entry metadata.
    pub metadata: Metadata,
}

/// Publishes several messages to one topic.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BulkPublishRequest {
    /// The messages, in order.
    pub entries: Vec<BulkPublishEntry>,
    /// Name of the pub/sub Component.
    pub pubsub_name: String,
    /// Destination topic.
    pub topic: String,
    /// Request metadata, common to every entry.
    pub metadata: Metadata,
}

/// An entry of a bulk publish that was not published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BulkPublishFailure {
    /// The entry's [`BulkPublishEntry::entry_id`].
    pub entry_id: String,
    /// Why it failed.
    pub error: String,
}

/// A subscription's topic, as the host sent it first on the stream.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Topic {
    /// The topic name (daprd may have prefixed it with a namespace).
    pub name: String,
    /// Subscription metadata (for example `rawPayload`).
    pub metadata: Metadata,
}

/// A message to deliver to the host.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Message {
    /// The payload.
    pub data: Vec<u8>,
    /// The topic it was published to; empty means the subscription's topic.
    pub topic: String,
    /// Message metadata.
    pub metadata: Metadata,
    /// Content type of the payload; `None` is sent as an empty string.
    pub content_type: Option<String>,
}

/// Errors a pub/sub component returns; the SDK turns each into a gRPC status.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PubSubError {
    /// A bad request or bad Init properties: `INVALID_ARGUMENT`.
    #[error("{0}")]
    InvalidArgument(String),
    /// A call came before a successful Init: `FAILED_PRECONDITION`.
    #[error("the pub/sub component is not initialised")]
    NotInitialized,
    /// The operation is not supported: `UNIMPLEMENTED`.
    #[error("not implemented: {0}")]
    Unimplemented(String),
    /// The broker cannot be reached right now: `UNAVAILABLE`.
    #[error("{0}")]
    Unavailable(String),
    /// Any other failure: `INTERNAL`.
    #[error("{0}")]
    Internal(String),
    /// A status built by the component itself, passed through unchanged.
    #[error(transparent)]
    Status(#[from] Status),
}

impl PubSubError {
    /// A [`PubSubError::Internal`] from any error, with its source chain.
    pub fn internal(err: impl std::error::Error) -> Self {
        Self::Internal(error_chain(&err))
    }
}

impl From<PubSubError> for Status {
    fn from(err: PubSubError) -> Self {
        let message = err.to_string();
        match err {
            PubSubError::InvalidArgument(_) => Status::invalid_argument(message),
            PubSubError::NotInitialized => Status::failed_precondition(message),
            PubSubError::Unimplemented(_) => Status::unimplemented(message),
            PubSubError::Unavailable(_) => Status::unavailable(message),
            PubSubError::Internal(_) => Status::internal(message),
            PubSubError::Status(status) => status,
        }
    }
}

impl KindError for PubSubError {
    fn is_internal(&self) -> bool {
        matches!(self, Self::Internal(_))
    }
}

/// Why a [`Subscriber::deliver`] did not end in an acknowledgement. Either
/// way the message was not processed and must be delivered again later.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// The host answered with an error (the text of its `ack_error`).
    #[error("the host did not process the message: {0}")]
    Nacked(String),
    /// The stream ended before the host answered.
    #[error("the subscription is closed")]
    Closed,
}

/// The host's answer to one delivery: `None` = acknowledged, `Some(text)` =
/// rejected with that text.
type Answer = Option<String>;

/// The state one stream shares between its [`Subscriber`]s, its outbound
/// stream and its supervising task.
struct Shared {
    topic: Topic,
    instance: String,
    outbound: mpsc::Sender<pb::PullMessagesResponse>,
    /// Deliveries waiting for the host's answer.
    waiters: Waiters<Answer>,
}

impl Shared {
    /// Ends the subscription: every waiting delivery resolves to `Closed`,
    /// later ones fail at once, and `closed()` completes. Idempotent.
    fn close(&self) {
        self.waiters.close(|unanswered| {
            if unanswered > 0 {
                tracing::debug!(unanswered, "subscription closed with deliveries unanswered");
            }
        });
    }

    /// Handles one request from the host after the first: an answer to a
    /// delivered message.
    fn answer(&self, request: pb::PullMessagesRequest) {
        if request.topic.is_some() {
            tracing::debug!("ignoring a topic sent after the first message");
        }
        if request.ack_message_id.is_empty() {
            tracing::debug!("ignoring a request without ack_message_id");
            return;
        }
        let answer = request.ack_error.map(|error| error.message);
        if !self.waiters.answer(&request.ack_message_id, answer) {
            tracing::warn!(
                id = %request.ack_message_id,
                "answer for a message that is not waiting (unknown id, or its deliver was cancelled)"
            );
        }
    }
}

impl Closeable for Shared {
    fn close(&self) {
        Shared::close(self);
    }
}

/// The component's handle on one subscription stream: deliver messages
/// through it. Cheap to clone; every clone is the same subscription.
#[derive(Clone)]
pub struct Subscriber {
    inner: Arc<Shared>,
}

impl fmt::Debug for Subscriber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscriber")
            .field("instance", &self.inner.instance)
            .field("topic", &self.inner.topic.name)
            .field("closed", &self.is_closed())
            .finish_non_exhaustive()
    }
}

impl Subscriber {
    /// The topic subscribed to, with the subscription's metadata.
    pub fn topic(&self) -> &Topic {
        &self.inner.topic
    }

    /// Sends `message` to the host under a fresh UUID and waits for the
    /// host's answer to it.
    ///
    /// - `Ok(())`: the host acknowledged it; it is processed.
    /// - `Err(Nacked(text))`: the host rejected it with `text`.
    /// - `Err(Closed)`: the stream ended before an answer came (or had ended
    ///   already).
    ///
    /// After an error the message was not processed: the component must make
    /// it available again (see the [module docs](self)). A message whose
    /// `topic` is empty is sent with the subscription's topic. Delivers may
    /// run concurrently; each waits for room in the stream's outbound buffer
    /// first. If the future is dropped before it completes, the outcome is
    /// unknown: treat the message as not processed.
    pub async fn deliver(&self, message: Message) -> Result<(), DeliveryError> {
        let shared = &*self.inner;
        let topic_name = if message.topic.is_empty() {
            shared.topic.name.clone()
        } else {
            message.topic
        };
        let answer = shared
            .waiters
            .send(&shared.outbound, |id| pb::PullMessagesResponse {
                data: message.data,
                topic_name,
                metadata: message.metadata,
                content_type: message.content_type.unwrap_or_default(),
                id,
            })
            .await;
        match answer {
            Some(None) => Ok(()),
            Some(Some(text)) => Err(DeliveryError::Nacked(text)),
            None => Err(DeliveryError::Closed),
        }
    }

    /// Whether the subscription has ended (no deliver can succeed any more).
    pub fn is_closed(&self) -> bool {
        self.inner.waiters.is_closed()
    }

    /// Completes when the subscription ends: the host closed the stream, the
    /// stream broke, or [`PubSub::subscribe`] returned.
    pub async fn closed(&self) {
        self.inner.waiters.closed().await;
    }
}

/// Redelivers a message on one subscription until the host acknowledges it,
/// with a growing pause after each rejection; hands the message back when the
/// subscription is gone (or the attempts are used up) so that the component
/// can put it back in its queue for another subscriber.
///
/// There is no ack timeout: the host answers every message (plugd rejects it
/// when the app does not answer within `--app-call-timeout`) or the stream
/// closes, and either ends the wait. A component that wants its own bound can
/// wrap [`Subscriber::deliver`] in `tokio::time::timeout`: a deliver dropped
/// before its answer counts as not processed.
///
/// ```no_run
/// # use plugd_component_sdk::pubsub::{Message, Redelivery, Subscriber};
/// # async fn requeue(_message: Message) {}
/// # async fn example(subscriber: Subscriber, message: Message) {
/// let redelivery = Redelivery::default();
/// if let Err(undelivered) = redelivery.deliver(&subscriber, message).await {
///     // Not processed: make it available again.
///     requeue(undelivered.message).await;
/// }
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redelivery {
    delay: Duration,
    max_delay: Duration,
    max_attempts: Option<u32>,
}

impl Default for Redelivery {
    /// 100 ms after the first rejection, doubling up to 10 s, without limit on
    /// the attempts.
    fn default() -> Self {
        Self {
            delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(10),
            max_attempts: None,
        }
    }
}

/// A message that [`Redelivery::deliver`] could not get acknowledged.
#[derive(Debug)]
pub struct Undelivered {
    /// The message, to be made available again.
    pub message: Message,
    /// How many times it was sent.
    pub attempts: u32,
    /// The last delivery's error.
    pub error: DeliveryError,
}

impl Redelivery {
    /// A policy that waits `delay` after the first rejection, doubling each
    /// time up to `max_delay`.
    pub fn new(delay: Duration, max_delay: Duration) -> Self {
        Self {
            delay,
            max_delay: max_delay.max(delay),
            max_attempts: None,
        }
    }

    /// Give up (and hand the message back) after `attempts` deliveries.
    #[must_use]
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = Some(attempts.max(1));
        self
    }

    /// Delivers `message` on `subscriber`, again after each rejection, until
    /// the host acknowledges it (`Ok` with the number of attempts). Returns
    /// the message in [`Undelivered`] as soon as the subscription is closed or
    /// the attempts are used up.
    pub async fn deliver(
        &self,
        subscriber: &Subscriber,
        message: Message,
    ) -> Result<u32, Undelivered> {
        let mut delay = self.delay;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let error = match subscriber.deliver(message.clone()).await {
                Ok(()) => return Ok(attempts),
                Err(error) => error,
            };
            let exhausted = self.max_attempts.is_some_and(|max| attempts >= max);
            if matches!(error, DeliveryError::Closed) || exhausted {
                return Err(Undelivered {
                    message,
                    attempts,
                    error,
                });
            }
            tracing::debug!(%error, attempts, ?delay, "redelivering after a rejection");
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = subscriber.closed() => {
                    return Err(Undelivered { message, attempts, error: DeliveryError::Closed });
                }
            }
            delay = delay.saturating_mul(2).min(self.max_delay);
        }
    }
}

/// A pub/sub component. Implement it, then serve it with
/// [`ComponentServer::pubsub`].
///
/// One value is created per component instance (per `x-component-instance`),
/// so the methods take `&self`: use interior mutability for what `init` sets
/// up. daprd may call `init` again on the same instance after a hot reload.
///
/// Methods are written as `async fn` in the implementation; their futures must
/// be `Send`.
pub trait PubSub: Send + Sync + 'static {
    /// Whether [`bulk_publish`](Self::bulk_publish) is implemented natively.
    /// When true the SDK reports [`feature::BULK_PUBSUB`], and daprd sends
    /// bulk publishes as one call; otherwise the feature is removed and daprd
    /// publishes entry by entry.
    const BULK_PUBLISH: bool = false;

    /// Sets the instance up from the Component's metadata.
    fn init(&self, properties: Properties) -> impl Future<Output = Result<(), PubSubError>> + Send;

    /// Features the component supports, from [`feature`]. `BULK_PUBSUB` is
    /// added (or removed) by the SDK to match [`Self::BULK_PUBLISH`].
    fn features(&self) -> Vec<String> {
        Vec::new()
    }

    /// Publishes one message.
    fn publish(
        &self,
        request: PublishRequest,
    ) -> impl Future<Output = Result<(), PubSubError>> + Send;

    /// Publishes several messages and reports the entries that failed (an
    /// empty list: all published). `Err` fails the whole request.
    ///
    /// The default publishes the entries one by one with
    /// [`publish`](Self::publish), each with the request's metadata overlaid
    /// by the entry's, and reports each failure on its entry.
    fn bulk_publish(
        &self,
        request: BulkPublishRequest,
    ) -> impl Future<Output = Result<Vec<BulkPublishFailure>, PubSubError>> + Send {
        async move {
            let BulkPublishRequest {
                entries,
                pubsub_name,
                topic,
                metadata,
            } = request;
            let mut failures = Vec::new();
            for entry in entries {
                let mut entry_metadata = metadata.clone();
                entry_metadata.extend(entry.metadata);
                let publish = PublishRequest {
                    data: entry.event,
                    pubsub_name: pubsub_name.clone(),
                    topic: topic.clone(),
                    metadata: entry_metadata,
                    content_type: entry.content_type,
                };
                if let Err(err) = self.publish(publish).await {
                    failures.push(BulkPublishFailure {
                        entry_id: entry.entry_id,
                        error: err.to_string(),
                    });
                }
            }
            Ok(failures)
        }
    }

    /// Runs for the life of one `PullMessages` stream: deliver the topic's
    /// messages through `subscriber` until [`Subscriber::closed`] completes,
    /// then return. `Err` ends the stream with that status.
    ///
    /// Every message that does not end in `Ok` from
    /// [`Subscriber::deliver`] must be made available again (see the
    /// [module docs](self)).
    fn subscribe(
        &self,
        subscriber: Subscriber,
    ) -> impl Future<Output = Result<(), PubSubError>> + Send;

    /// The Ping hook. The host calls `Ping` after Init and then periodically
    /// (plugd: every `--component-health-interval`); an `Err` answers the
    /// Ping with that error, and a component that fails
    /// `--component-health-failures` Pings in a row is marked unhealthy until
    /// a Ping succeeds again. Check cheaply what the component needs to serve (a
    /// connection, a file); the default is always `Ok`.
    fn ping(&self) -> impl Future<Output = Result<(), PubSubError>> + Send {
        async { Ok(()) }
    }

    /// Stops handing out messages on every subscription of this instance
    /// (daprd calls it before a graceful shutdown; it must be idempotent).
    /// The default answers `UNIMPLEMENTED`, which daprd accepts.
    fn pause(&self) -> impl Future<Output = Result<(), PubSubError>> + Send {
        async { Err(PubSubError::Unimplemented("pause".to_owned())) }
    }

    /// Undoes [`pause`](Self::pause). daprd never calls it. The default
    /// answers `UNIMPLEMENTED`.
    fn resume(&self) -> impl Future<Output = Result<(), PubSubError>> + Send {
        async { Err(PubSubError::Unimplemented("resume".to_owned())) }
    }
}

impl ComponentServer {
    /// Serves a pub/sub component. `factory` makes one value per component
    /// instance, given the instance name (the `x-component-instance` header,
    /// or [`DEFAULT_INSTANCE`](crate::DEFAULT_INSTANCE)).
    pub fn pubsub<P, F>(mut self, factory: F) -> Self
    where
        P: PubSub,
        F: Fn(&str) -> P + Send + Sync + 'static,
    {
        let service = PubSubService {
            mux: Arc::new(Multiplexer::new(factory)),
            stopping: self.stopping(),
        };
        self.routes_mut().add_service(
            PubSubServer::new(service).max_decoding_message_size(crate::server::MAX_MESSAGE_SIZE),
        );
        self.advertise(<PubSubServer<PubSubService<P>> as NamedService>::NAME);
        self
    }
}

/// The gRPC side of a [`PubSub`]: finds the instance, converts the messages,
/// maps the errors, runs the subscription streams.
struct PubSubService<P> {
    mux: Arc<Multiplexer<P>>,
    stopping: CancellationToken,
}

impl<P> Clone for PubSubService<P> {
    fn clone(&self) -> Self {
        Self {
            mux: Arc::clone(&self.mux),
            stopping: self.stopping.clone(),
        }
    }
}

impl<P> fmt::Debug for PubSubService<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PubSubService")
            .field("mux", &self.mux)
            .finish()
    }
}

impl<P: PubSub> PubSubService<P> {
    /// Runs `call` on the request's instance inside a span, mapping errors.
    async fn call<T, R, Fut>(
        &self,
        method: &'static str,
        request: Request<T>,
        call: impl FnOnce(Arc<P>, T) -> Fut,
    ) -> Result<Response<R>, Status>
    where
        Fut: Future<Output = Result<R, PubSubError>>,
    {
        common::call(
            &self.mux,
            request,
            |instance| tracing::debug_span!("pubsub", %instance, method),
            call,
        )
        .await
    }
}

fn features_of<P: PubSub>(pubsub: &P) -> Vec<String> {
    let mut features: Vec<String> = Vec::new();
    for feature in pubsub.features() {
        if feature != feature::BULK_PUBSUB && !features.contains(&feature) {
            features.push(feature);
        }
    }
    if P::BULK_PUBLISH {
        features.push(feature::BULK_PUBSUB.to_owned());
    }
    features
}

#[tonic::async_trait]
impl<P: PubSub> pb::pub_sub_server::PubSub for PubSubService<P> {
    async fn init(
        &self,
        request: Request<pb::PubSubInitRequest>,
    ) -> Result<Response<pb::PubSubInitResponse>, Status> {
        self.call("Init", request, |pubsub, req| async move {
            pubsub.init(properties(req.metadata)).await?;
            Ok(pb::PubSubInitResponse {})
        })
        .await
    }

    async fn features(
        &self,
        request: Request<pb::FeaturesRequest>,
    ) -> Result<Response<pb::FeaturesResponse>, Status> {
        self.call("Features", request, |pubsub, _| async move {
            Ok(pb::FeaturesResponse {
                features: features_of(&*pubsub),
            })
        })
        .await
    }

    async fn publish(
        &self,
        request: Request<pb::PublishRequest>,
    ) -> Result<Response<pb::PublishResponse>, Status> {
        self.call("Publish", request, |pubsub, req| async move {
            pubsub.publish(req.into()).await?;
            Ok(pb::PublishResponse {})
        })
        .await
    }

    async fn bulk_publish(
        &self,
        request: Request<pb::BulkPublishRequest>,
    ) -> Result<Response<pb::BulkPublishResponse>, Status> {
        self.call("BulkPublish", request, |pubsub, req| async move {
            let failures = pubsub.bulk_publish(req.into()).await?;
            Ok(pb::BulkPublishResponse {
                failed_entries: failures
                    .into_iter()
                    .map(|failure| pb::BulkPublishResponseFailedEntry {
                        entry_id: failure.entry_id,
                        error: failure.error,
                    })
                    .collect(),
            })
        })
        .await
    }

    type PullMessagesStream = Outbound;

    async fn pull_messages(
        &self,
        request: Request<Streaming<pb::PullMessagesRequest>>,
    ) -> Result<Response<Self::PullMessagesStream>, Status> {
        let (instance, pubsub) = self.mux.for_request(request.metadata())?;
        let mut inbound = request.into_inner();
        let first = inbound.message().await?.ok_or_else(|| {
            Status::invalid_argument(
                "the PullMessages stream ended before its first message, which names the topic",
            )
        })?;
        let topic = match first.topic {
            Some(topic) if !topic.name.is_empty() => Topic {
                name: topic.name,
                metadata: topic.metadata,
            },
            _ => {
                return Err(Status::invalid_argument(
                    "the first PullMessagesRequest must carry the topic",
                ));
            }
        };
        if !first.ack_message_id.is_empty() {
            tracing::debug!("ignoring an ack in the first PullMessagesRequest");
        }

        let (outbound, messages) = mpsc::channel(OUTBOUND_BUFFER);
        let (end_sender, end) = oneshot::channel();
        let span = tracing::debug_span!("subscription", %instance, topic = %topic.name);
        let shared = Arc::new(Shared {
            topic,
            instance,
            outbound,
            waiters: Waiters::new(),
        });
        let subscriber = Subscriber {
            inner: Arc::clone(&shared),
        };
        let stopping = self.stopping.clone();
        tokio::spawn(
            run_subscription(pubsub, subscriber, inbound, end_sender, stopping).instrument(span),
        );
        Ok(Response::new(Outbound::new(messages, end, shared)))
    }

    async fn pause(
        &self,
        request: Request<pb::PauseRequest>,
    ) -> Result<Response<pb::PauseResponse>, Status> {
        self.call("Pause", request, |pubsub, _| async move {
            pubsub.pause().await?;
            Ok(pb::PauseResponse {})
        })
        .await
    }

    async fn resume(
        &self,
        request: Request<pb::ResumeRequest>,
    ) -> Result<Response<pb::ResumeResponse>, Status> {
        self.call("Resume", request, |pubsub, _| async move {
            pubsub.resume().await?;
            Ok(pb::ResumeResponse {})
        })
        .await
    }

    async fn ping(
        &self,
        request: Request<pb::PingRequest>,
    ) -> Result<Response<pb::PingResponse>, Status> {
        self.call("Ping", request, |pubsub, _| async move {
            pubsub.ping().await?;
            Ok(pb::PingResponse {})
        })
        .await
    }
}

/// Supervises one stream: runs `subscribe`, reads the host's answers, and
/// ends everything when either side is done.
async fn run_subscription<P: PubSub>(
    pubsub: Arc<P>,
    subscriber: Subscriber,
    mut inbound: Streaming<pb::PullMessagesRequest>,
    end: oneshot::Sender<Result<(), Status>>,
    stopping: CancellationToken,
) {
    let shared = Arc::clone(&subscriber.inner);
    let subscribe = async move { pubsub.subscribe(subscriber).await };
    let mut subscribe = std::pin::pin!(subscribe);
    let returned = tokio::select! {
        result = &mut subscribe => Some(result),
        () = read_answers(&shared, &mut inbound) => None,
        // The server is shutting down: unanswered messages count as not delivered.
        () = stopping.cancelled() => None,
    };
    shared.close();
    drop(inbound);
    match returned {
        Some(result) => {
            let result = result.map_err(|err| {
                tracing::debug!(error = %err, "subscribe failed");
                Status::from(err)
            });
            if result.is_ok() {
                tracing::debug!("subscribe returned; ending the stream");
            }
            // The outbound stream may be gone already; then there is no one to tell.
            let _ = end.send(result);
        }
        None => {
            // The host is gone: end the outbound side, then let subscribe wind down.
            drop(end);
            match tokio::time::timeout(SUBSCRIBE_GRACE, subscribe).await {
                Ok(Ok(())) => tracing::debug!("subscription ended"),
                Ok(Err(err)) => {
                    tracing::debug!(error = %err, "subscribe failed after the stream closed");
                }
                Err(_) => tracing::warn!(
                    grace = ?SUBSCRIBE_GRACE,
                    "subscribe did not return after its stream closed; dropping it"
                ),
            }
        }
    }
}

/// Resolves the host's answers until the host ends its side of the stream,
/// the stream breaks, or the outbound stream is dropped.
async fn read_answers(shared: &Shared, inbound: &mut Streaming<pb::PullMessagesRequest>) {
    loop {
        tokio::select! {
            () = shared.waiters.closed() => return,
            next = inbound.message() => match next {
                Ok(Some(request)) => shared.answer(request),
                Ok(None) => {
                    tracing::debug!("the host closed the stream");
                    return;
                }
                Err(status) => {
                    tracing::debug!(%status, "the stream broke");
                    return;
                }
            }
        }
    }
}

/// The component → host side of one `PullMessages` stream; dropping it
/// closes the subscription.
type Outbound = common::Outbound<pb::PullMessagesResponse, Shared>;

// ---- wire conversions ----

fn non_empty(value: String) -> Option<String> {
    (!value.is_empty()).then_some(value)
}

impl From<pb::PublishRequest> for PublishRequest {
    fn from(req: pb::PublishRequest) -> Self {
        Self {
            data: req.data,
            pubsub_name: req.pubsub_name,
            topic: req.topic,
            metadata: req.metadata,
            content_type: non_empty(req.content_type),
        }
    }
}

impl From<pb::BulkMessageEntry> for BulkPublishEntry {
    fn from(entry: pb::BulkMessageEntry) -> Self {
        Self {
            entry_id: entry.entry_id,
            event: entry.event,
            content_type: non_empty(entry.content_type),
            metadata: entry.metadata,
        }
    }
}

impl From<pb::BulkPublishRequest> for BulkPublishRequest {
    fn from(req: pb::BulkPublishRequest) -> Self {
        Self {
            entries: req.entries.into_iter().map(Into::into).collect(),
            pubsub_name: req.pubsub_name,
            topic: req.topic,
            metadata: req.metadata,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn errors_map_to_statuses() {
        let cases = [
            (
                PubSubError::InvalidArgument("x".into()),
                Code::InvalidArgument,
            ),
            (PubSubError::NotInitialized, Code::FailedPrecondition),
            (
                PubSubError::Unimplemented("pause".into()),
                Code::Unimplemented,
            ),
            (PubSubError::Unavailable("down".into()), Code::Unavailable),
            (PubSubError::Internal("boom".into()), Code::Internal),
            (PubSubError::Status(Status::aborted("mine")), Code::Aborted),
        ];
        for (err, code) in cases {
            assert_eq!(Status::from(err).code(), code);
        }
    }

    #[test]
    fn internal_keeps_the_source_chain() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] std::io::Error);
        let err = PubSubError::internal(Outer(std::io::Error::other("inner")));
        assert_eq!(err.to_string(), "outer: inner");
    }

    #[test]
    fn empty_wire_content_type_is_none() {
        let req = PublishRequest::from(pb::PublishRequest {
            topic: "t".into(),
            ..Default::default()
        });
        assert_eq!(req.content_type, None);
        let req = PublishRequest::from(pb::PublishRequest {
            content_type: "text/plain".into(),
            ..Default::default()
        });
        assert_eq!(req.content_type.as_deref(), Some("text/plain"));
    }

    fn subscriber() -> (Subscriber, mpsc::Receiver<pb::PullMessagesResponse>) {
        let (outbound, messages) = mpsc::channel(4);
        let shared = Arc::new(Shared {
            topic: Topic {
                name: "orders".into(),
                metadata: Metadata::new(),
            },
            instance: "test".into(),
            outbound,
            waiters: Waiters::new(),
        });
        (Subscriber { inner: shared }, messages)
    }

    fn ack(id: &str, error: Option<&str>) -> pb::PullMessagesRequest {
        pb::PullMessagesRequest {
            topic: None,
            ack_message_id: id.to_owned(),
            ack_error: error.map(|message| pb::AckMessageError {
                message: message.to_owned(),
            }),
        }
    }

    #[tokio::test]
    async fn answers_resolve_the_matching_delivery() {
        let (subscriber, mut messages) = subscriber();
        let first = tokio::spawn({
            let subscriber = subscriber.clone();
            async move { subscriber.deliver(Message::default()).await }
        });
        let second = tokio::spawn({
            let subscriber = subscriber.clone();
            async move { subscriber.deliver(Message::default()).await }
        });
        let a = messages.recv().await.expect("first message");
        let b = messages.recv().await.expect("second message");
        assert_eq!(a.topic_name, "orders", "empty topic filled in");
        assert_ne!(a.id, b.id);
        assert!(uuid::Uuid::try_parse(&a.id).is_ok());

        subscriber.inner.answer(ack("unknown", None));
        subscriber.inner.answer(ack(&b.id, Some("app said no")));
        subscriber.inner.answer(ack(&a.id, None));
        let results = [first.await.expect("task"), second.await.expect("task")];
        // Which spawned deliver sent which message is not fixed; match by outcome.
        let acked = results.iter().filter(|r| r.is_ok()).count();
        let nacked: Vec<_> = results
            .iter()
            .filter_map(|r| match r {
                Err(DeliveryError::Nacked(text)) => Some(text.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(acked, 1);
        assert_eq!(nacked, ["app said no"]);
        assert_eq!(subscriber.inner.waiters.waiting(), 0);
    }

    #[tokio::test]
    async fn close_resolves_waiting_and_later_deliveries() {
        let (subscriber, mut messages) = subscriber();
        let waiting = tokio::spawn({
            let subscriber = subscriber.clone();
            async move { subscriber.deliver(Message::default()).await }
        });
        let sent = messages.recv().await.expect("message");
        subscriber.inner.close();
        assert!(matches!(
            waiting.await.expect("task"),
            Err(DeliveryError::Closed)
        ));
        assert!(subscriber.is_closed());
        subscriber.closed().await;
        assert!(matches!(
            subscriber.deliver(Message::default()).await,
            Err(DeliveryError::Closed)
        ));
        // A late answer is ignored.
        subscriber.inner.answer(ack(&sent.id, None));
    }

    #[tokio::test]
    async fn a_dropped_delivery_leaves_nothing_waiting() {
        let (subscriber, mut messages) = subscriber();
        let delivery = tokio::spawn({
            let subscriber = subscriber.clone();
            async move { subscriber.deliver(Message::default()).await }
        });
        let _sent = messages.recv().await.expect("message");
        delivery.abort();
        assert!(delivery.await.is_err_and(|err| err.is_cancelled()));
        assert_eq!(subscriber.inner.waiters.waiting(), 0);
    }

    #[tokio::test]
    async fn redelivery_retries_nacks_and_hands_back_on_close() {
        let (subscriber, mut messages) = subscriber();
        let policy = Redelivery::new(Duration::from_millis(1), Duration::from_millis(2));
        let run = tokio::spawn({
            let subscriber = subscriber.clone();
            async move {
                let message = Message {
                    data: b"x".to_vec(),
                    ..Message::default()
                };
                policy.deliver(&subscriber, message).await
            }
        });
        let first = messages.recv().await.expect("attempt 1");
        subscriber.inner.answer(ack(&first.id, Some("retry")));
        let second = messages.recv().await.expect("attempt 2");
        assert_eq!(second.data, b"x");
        subscriber.inner.answer(ack(&second.id, None));
        assert_eq!(run.await.expect("task").expect("acked"), 2);

        let limited = Redelivery::default().max_attempts(1);
        let run = tokio::spawn({
            let subscriber = subscriber.clone();
            async move { limited.deliver(&subscriber, Message::default()).await }
        });
        let only = messages.recv().await.expect("attempt");
        subscriber.inner.answer(ack(&only.id, Some("no")));
        let undelivered = run.await.expect("task").expect_err("attempts used up");
        assert_eq!(undelivered.attempts, 1);
        assert!(matches!(undelivered.error, DeliveryError::Nacked(_)));

        let run = tokio::spawn({
            let subscriber = subscriber.clone();
            async move {
                Redelivery::default()
                    .deliver(&subscriber, Message::default())
                    .await
            }
        });
        let _ = messages.recv().await.expect("attempt");
        subscriber.inner.close();
        let undelivered = run.await.expect("task").expect_err("closed");
        assert!(matches!(undelivered.error, DeliveryError::Closed));
    }

    struct Bulk<const NATIVE: bool>;

    impl<const NATIVE: bool> PubSub for Bulk<NATIVE> {
        const BULK_PUBLISH: bool = NATIVE;

        async fn init(&self, _properties: Properties) -> Result<(), PubSubError> {
            Ok(())
        }

        fn features(&self) -> Vec<String> {
            vec![
                feature::BULK_PUBSUB.to_owned(),
                feature::MESSAGE_TTL.to_owned(),
                feature::MESSAGE_TTL.to_owned(),
            ]
        }

        async fn publish(&self, request: PublishRequest) -> Result<(), PubSubError> {
            if request.data == b"bad" {
                return Err(PubSubError::InvalidArgument(format!(
                    "refused with {:?}",
                    request.metadata.get("k")
                )));
            }
            Ok(())
        }

        async fn subscribe(&self, _subscriber: Subscriber) -> Result<(), PubSubError> {
            Ok(())
        }
    }

    #[test]
    fn bulk_feature_follows_the_const() {
        assert_eq!(features_of(&Bulk::<false>), ["MESSAGE_TTL"]);
        assert_eq!(features_of(&Bulk::<true>), ["MESSAGE_TTL", "BULK_PUBSUB"]);
    }

    #[tokio::test]
    async fn default_bulk_publish_reports_each_failure() {
        let entry = |id: &str, data: &[u8]| BulkPublishEntry {
            entry_id: id.to_owned(),
            event: data.to_vec(),
            metadata: Metadata::from([("k".to_owned(), format!("entry {id}"))]),
            ..BulkPublishEntry::default()
        };
        let failures = Bulk::<false>
            .bulk_publish(BulkPublishRequest {
                entries: vec![entry("1", b"ok"), entry("2", b"bad"), entry("3", b"ok")],
                topic: "t".into(),
                metadata: Metadata::from([("k".to_owned(), "request".to_owned())]),
                ..BulkPublishRequest::default()
            })
            .await
            .expect("bulk publish");
        assert_eq!(
            failures,
            [BulkPublishFailure {
                entry_id: "2".into(),
                error: "refused with Some(\"entry 2\")".into(),
            }]
        );
    }
}
