//! Redis Streams: publishing, consumer groups, delivery and redelivery.
//!
//! This module knows nothing of gRPC or Dapr; [`crate::pubsub`] adapts it to
//! the SDK. A subscription hands each stream entry to a [`Handler`] and acts
//! on its [`Outcome`].
//!
//! # Stream layout
//!
//! One stream per topic; the stream key is the topic name. Each published
//! message is one entry (`XADD <topic> [MAXLEN ~ n] * ...`) with the fields:
//!
//! | field | value |
//! |---|---|
//! | `data` | the payload, as given (binary safe) |
//! | `contentType` | the content type, when the publisher gave one |
//! | `meta:<key>` | one field per metadata entry, the value as given |
//!
//! Entries without a `data` field were not written by this component; they
//! are acknowledged and skipped with a warning. Other fields are ignored.
//!
//! # Consumers and redelivery
//!
//! Every subscription joins the consumer group named by `consumerID` (created
//! at `0` with `MKSTREAM` on first use, so a new group also receives what the
//! stream already holds) under a consumer name of its own,
//! `<consumerID>-<uuid>`. It reads with `XREADGROUP ... BLOCK 1000`, so a
//! closed subscription is noticed within a second, fetching only as many
//! entries as it has free delivery slots, and hands at most `concurrency`
//! entries to the handler at a time.
//!
//! - **Ack** → `XACK`.
//! - **Nack** → delivered again from memory after 100 ms, 500 ms and 2 s
//!   (three quick retries); if the handler still refuses it, the entry is left
//!   pending and the reclaim scan redelivers it once it has been idle for
//!   `processingTimeout`, with three quick retries again, and so on: a message
//!   is never dropped for being refused.
//! - **Closed** (the subscriber went away) → left pending, not acknowledged;
//!   the reclaim scan of a live subscription takes it over.
//! - **Reclaim**: every `redeliverInterval` (and at once when a subscription
//!   starts), `XAUTOCLAIM <topic> <group> <consumer> <processingTimeout>`
//!   takes over the entries pending longer than `processingTimeout` in any
//!   consumer of the group (a killed component or host leaves its entries
//!   pending under its consumer name) and delivers them again. Entries deleted
//!   from the stream meanwhile (trimmed by `MAXLEN`) are acknowledged.
//! - **Renewal**: while an entry is being delivered (including its quick
//!   retries), the subscription renews its claim (`XCLAIM ... JUSTID`, which
//!   resets the idle time) three times per `processingTimeout`, so a slow but
//!   live subscriber does not get its entries taken over. `processingTimeout`
//!   is therefore how long a message waits after its consumer stopped, not a
//!   limit on processing time.
//! - A subscription first reads its own pending entries (`XREADGROUP ... 0`),
//!   then new ones (`>`). When it ends, its consumer is removed from the group
//!   if it has nothing pending.
//!
//! Delivery is at least once: an entry is acknowledged only after the handler
//! accepted it, so a message can be delivered twice (a crash between the
//! handler's acceptance and `XACK`), but not lost.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::{RedisError, Value};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::config::Settings;
use crate::connection::{ConnectError, Pool, is_connection_error, manager_config};

/// Field names of a stream entry.
pub mod field {
    /// The payload.
    pub const DATA: &str = "data";
    /// The content type, when given.
    pub const CONTENT_TYPE: &str = "contentType";
    /// Prefix of the metadata fields: `meta:<key>`.
    pub const METADATA_PREFIX: &str = "meta:";
}

/// How long `XREADGROUP` blocks; bounds how late a closed subscription is noticed.
pub const READ_BLOCK: Duration = Duration::from_secs(1);
/// Delays before the quick redeliveries of a refused (nacked) message.
pub const NACK_RETRY_DELAYS: [Duration; 3] = [
    Duration::from_millis(100),
    Duration::from_millis(500),
    Duration::from_secs(2),
];
/// Attempts at `XACK` before the entry is left to the reclaim scan.
const ACK_ATTEMPTS: u32 = 3;
/// Largest back-off between failed reads.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// A message as stored in a stream entry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Entry {
    /// The payload.
    pub data: Vec<u8>,
    /// Its content type.
    pub content_type: Option<String>,
    /// Its metadata.
    pub metadata: HashMap<String, String>,
}

/// An entry handed to a [`Handler`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The stream entry ID.
    pub id: String,
    /// The topic (stream key).
    pub topic: String,
    /// The message.
    pub entry: Entry,
}

/// What became of a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Processed: acknowledge it.
    Ack,
    /// Refused with a reason: deliver it again.
    Nack(String),
    /// The subscriber is gone: leave it pending for another subscriber.
    Closed,
}

/// Receives the entries of a subscription.
pub trait Handler: Send + Sync + 'static {
    /// Delivers one entry; may be called again for the same entry.
    fn handle(&self, delivery: &Delivery) -> impl Future<Output = Outcome> + Send;
}

/// Errors talking to Redis.
#[derive(Debug, thiserror::Error)]
pub enum StreamsError {
    /// No connection could be made (its message is the [`ConnectError`]'s).
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// A command failed.
    #[error("Redis: {0}")]
    Redis(#[from] RedisError),
    /// A reply had an unexpected shape.
    #[error("unexpected reply from Redis to {command}: {reply}")]
    Reply {
        /// The command.
        command: &'static str,
        /// What was received.
        reply: String,
    },
}

impl StreamsError {
    /// Whether the error is about reaching Redis rather than about the request.
    pub fn is_unavailable(&self) -> bool {
        match self {
            Self::Connect(ConnectError::Unreachable { .. }) => true,
            Self::Connect(ConnectError::Redis(err)) | Self::Redis(err) => is_connection_error(err),
            _ => false,
        }
    }
}

/// A connected Redis: shared connections plus the settings.
#[derive(Clone)]
pub struct Streams {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool,
    settings: Settings,
}

impl std::fmt::Debug for Streams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Streams")
            .field("settings", &self.inner.settings)
            .finish_non_exhaustive()
    }
}

impl Streams {
    /// Connects and checks the connection with `PING`.
    pub async fn connect(settings: Settings) -> Result<Self, StreamsError> {
        let pool = Pool::connect(&settings.connection).await?;
        // Settings built in code may hold zeros; Init refuses them.
        let mut settings = settings;
        settings.connection.pool_size = settings.connection.pool_size.max(1);
        settings.concurrency = settings.concurrency.max(1);
        Ok(Self {
            inner: Arc::new(Inner { pool, settings }),
        })
    }

    /// The settings this connection was made with.
    pub fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    /// A shared connection (round robin over `poolSize`).
    fn conn(&self) -> ConnectionManager {
        self.inner.pool.conn()
    }

    /// `PING`.
    pub async fn ping(&self) -> Result<(), StreamsError> {
        Ok(self.inner.pool.ping().await?)
    }

    fn xadd(&self, topic: &str, entry: &Entry) -> redis::Cmd {
        let mut cmd = redis::cmd("XADD");
        cmd.arg(topic);
        if let Some(max_len) = self.inner.settings.max_len_approx {
            cmd.arg("MAXLEN").arg("~").arg(max_len);
        }
        cmd.arg("*").arg(field::DATA).arg(&entry.data);
        if let Some(content_type) = entry.content_type.as_deref().filter(|ct| !ct.is_empty()) {
            cmd.arg(field::CONTENT_TYPE).arg(content_type);
        }
        let mut metadata: Vec<_> = entry.metadata.iter().collect();
        metadata.sort_unstable();
        for (key, value) in metadata {
            cmd.arg(format!("{}{key}", field::METADATA_PREFIX))
                .arg(value);
        }
        cmd
    }

    /// Appends `entry` to the stream `topic`; returns the entry ID.
    pub async fn publish(&self, topic: &str, entry: &Entry) -> Result<String, StreamsError> {
        Ok(self
            .xadd(topic, entry)
            .query_async(&mut self.conn())
            .await?)
    }

    /// Appends every entry in one pipeline (not a transaction). Returns, per
    /// entry and in order, its ID or why Redis refused it. An error means the
    /// pipeline as a whole failed; some entries may have been written.
    pub async fn publish_batch(
        &self,
        topic: &str,
        entries: &[Entry],
    ) -> Result<Vec<Result<String, String>>, StreamsError> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for entry in entries {
            pipe.add_command(self.xadd(topic, entry));
        }
        let replies: Vec<redis::RedisResult<String>> = pipe.query_async(&mut self.conn()).await?;
        if replies.len() != entries.len() {
            return Err(StreamsError::Reply {
                command: "XADD pipeline",
                reply: format!("{} replies for {} entries", replies.len(), entries.len()),
            });
        }
        Ok(replies
            .into_iter()
            .map(|reply| reply.map_err(|err| err.to_string()))
            .collect())
    }

    /// `XGROUP CREATE <topic> <group> 0 MKSTREAM`; an existing group is fine.
    /// Starting at `0`, a new group receives every entry the stream holds, so
    /// messages published before the first subscription are not lost.
    pub async fn ensure_group(&self, topic: &str) -> Result<(), StreamsError> {
        let result: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(topic)
            .arg(&self.inner.settings.consumer_group)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut self.conn())
            .await;
        match result {
            Err(err) if err.code() == Some("BUSYGROUP") => Ok(()),
            other => Ok(other?),
        }
    }

    /// Runs one subscription to `topic` until `stop` is cancelled, handing
    /// entries to `handler`. While `paused` holds `true` nothing new is read
    /// (deliveries in flight carry on). Fails only if the consumer group
    /// cannot be set up; later Redis errors are logged and retried.
    pub async fn subscribe<H: Handler>(
        &self,
        topic: &str,
        handler: Arc<H>,
        stop: CancellationToken,
        paused: watch::Receiver<bool>,
    ) -> Result<(), StreamsError> {
        self.ensure_group(topic).await?;
        let settings = &self.inner.settings;
        let consumer = format!("{}-{}", settings.consumer_group, uuid::Uuid::new_v4());
        let span = tracing::info_span!("subscription", topic, consumer = %consumer);
        let subscription = Arc::new(Subscription {
            streams: self.clone(),
            topic: topic.to_owned(),
            group: settings.consumer_group.clone(),
            consumer,
            handler,
            permits: Arc::new(Semaphore::new(settings.concurrency)),
            inflight: Mutex::new(HashSet::new()),
            stop,
            paused,
            deliveries: TaskTracker::new(),
            span: span.clone(),
        });
        async {
            tracing::debug!("subscribed");
            tokio::join!(
                subscription.read_loop(),
                subscription.reclaim_loop(),
                subscription.renew_loop(),
            );
            subscription.deliveries.close();
            subscription.deliveries.wait().await;
            subscription.remove_consumer_if_idle().await;
            tracing::debug!("subscription ended");
        }
        .instrument(span)
        .await;
        Ok(())
    }

    /// The entries pending in `topic`'s group: (entry ID, consumer) pairs.
    /// For tests and tools.
    pub async fn pending(&self, topic: &str) -> Result<Vec<(String, String)>, StreamsError> {
        let reply: Value = redis::cmd("XPENDING")
            .arg(topic)
            .arg(&self.inner.settings.consumer_group)
            .arg("-")
            .arg("+")
            .arg(10_000)
            .query_async(&mut self.conn())
            .await?;
        let bad = || StreamsError::Reply {
            command: "XPENDING",
            reply: format!("{reply:?}"),
        };
        let Value::Array(rows) = &reply else {
            return Err(bad());
        };
        rows.iter()
            .map(|row| match row {
                Value::Array(cols) if cols.len() >= 2 => Ok((
                    text(&cols[0]).ok_or_else(bad)?,
                    text(&cols[1]).ok_or_else(bad)?,
                )),
                _ => Err(bad()),
            })
            .collect()
    }
}

/// A stream entry as read: `fields` is `None` for an entry deleted from the
/// stream while it was pending.
#[derive(Debug)]
struct RawEntry {
    id: String,
    fields: Option<Vec<(Vec<u8>, Vec<u8>)>>,
}

impl RawEntry {
    /// The message, or `None` if this entry has no `data` field.
    fn decode(self) -> Option<Entry> {
        let mut entry = Entry::default();
        let mut has_data = false;
        for (name, value) in self.fields? {
            if name == field::DATA.as_bytes() {
                entry.data = value;
                has_data = true;
            } else if name == field::CONTENT_TYPE.as_bytes() {
                entry.content_type = Some(String::from_utf8_lossy(&value).into_owned());
            } else if let Some(key) = name.strip_prefix(field::METADATA_PREFIX.as_bytes()) {
                entry.metadata.insert(
                    String::from_utf8_lossy(key).into_owned(),
                    String::from_utf8_lossy(&value).into_owned(),
                );
            }
        }
        has_data.then_some(entry)
    }
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(text) => Some(text.clone()),
        _ => None,
    }
}

fn bytes(value: &Value) -> Option<Vec<u8>> {
    match value {
        Value::BulkString(bytes) => Some(bytes.clone()),
        Value::SimpleString(text) => Some(text.clone().into_bytes()),
        _ => None,
    }
}

/// `[id, [field, value, ...] | nil]`; `None` for other shapes (including a
/// bare nil, which Redis 6.2's XAUTOCLAIM returns for deleted entries).
fn parse_entry(value: &Value) -> Option<RawEntry> {
    let Value::Array(parts) = value else {
        return None;
    };
    let id = text(parts.first()?)?;
    let fields = match parts.get(1) {
        None | Some(Value::Nil) => None,
        Some(Value::Array(flat)) => Some(
            flat.chunks(2)
                .filter_map(|pair| Some((bytes(pair.first()?)?, bytes(pair.get(1)?)?)))
                .collect(),
        ),
        Some(Value::Map(pairs)) => Some(
            pairs
                .iter()
                .filter_map(|(k, v)| Some((bytes(k)?, bytes(v)?)))
                .collect(),
        ),
        Some(_) => return None,
    };
    Some(RawEntry { id, fields })
}

fn parse_entries(value: &Value) -> Vec<RawEntry> {
    match value {
        Value::Array(items) => items.iter().filter_map(parse_entry).collect(),
        _ => Vec::new(),
    }
}

/// The entries of an `XREADGROUP` reply for one stream (nil → none).
fn parse_read_reply(reply: &Value) -> Result<Vec<RawEntry>, StreamsError> {
    let streams = match reply {
        Value::Nil => return Ok(Vec::new()),
        Value::Array(streams) => streams
            .iter()
            .filter_map(|stream| match stream {
                Value::Array(pair) if pair.len() == 2 => Some(&pair[1]),
                _ => None,
            })
            .collect::<Vec<_>>(),
        Value::Map(pairs) => pairs.iter().map(|(_, entries)| entries).collect(),
        _ => {
            return Err(StreamsError::Reply {
                command: "XREADGROUP",
                reply: format!("{reply:?}"),
            });
        }
    };
    Ok(streams.into_iter().flat_map(parse_entries).collect())
}

/// `XAUTOCLAIM` reply: (next cursor, claimed entries, deleted IDs).
fn parse_autoclaim_reply(
    reply: &Value,
) -> Result<(String, Vec<RawEntry>, Vec<String>), StreamsError> {
    let bad = || StreamsError::Reply {
        command: "XAUTOCLAIM",
        reply: format!("{reply:?}"),
    };
    let Value::Array(parts) = reply else {
        return Err(bad());
    };
    let cursor = parts.first().and_then(text).ok_or_else(bad)?;
    let claimed = parts.get(1).map(parse_entries).unwrap_or_default();
    let deleted = match parts.get(2) {
        Some(Value::Array(ids)) => ids.iter().filter_map(text).collect(),
        _ => Vec::new(),
    };
    Ok((cursor, claimed, deleted))
}

/// Exponential back-off for retrying failed reads.
struct Backoff(Duration);

impl Backoff {
    const START: Duration = Duration::from_millis(100);

    fn new() -> Self {
        Self(Self::START)
    }

    fn reset(&mut self) {
        self.0 = Self::START;
    }

    fn next(&mut self) -> Duration {
        let delay = self.0;
        self.0 = (self.0 * 2).min(MAX_BACKOFF);
        delay
    }
}

struct Subscription<H> {
    streams: Streams,
    topic: String,
    group: String,
    consumer: String,
    handler: Arc<H>,
    /// One permit per delivery in flight (`concurrency`).
    permits: Arc<Semaphore>,
    /// IDs being delivered by this subscription (including quick retries).
    inflight: Mutex<HashSet<String>>,
    stop: CancellationToken,
    paused: watch::Receiver<bool>,
    deliveries: TaskTracker,
    span: tracing::Span,
}

impl<H: Handler> Subscription<H> {
    fn inflight(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.inflight.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sleeps for `delay`; `false` if the subscription stopped meanwhile.
    async fn sleep(&self, delay: Duration) -> bool {
        tokio::select! {
            () = tokio::time::sleep(delay) => true,
            () = self.stop.cancelled() => false,
        }
    }

    /// Waits while paused; `false` once the subscription has stopped.
    async fn running(&self, paused: &mut watch::Receiver<bool>) -> bool {
        loop {
            if self.stop.is_cancelled() {
                return false;
            }
            if !*paused.borrow_and_update() {
                return true;
            }
            tokio::select! {
                changed = paused.changed() => {
                    if changed.is_err() {
                        // Nobody can resume any more; carry on as resumed.
                        return !self.stop.is_cancelled();
                    }
                }
                () = self.stop.cancelled() => return false,
            }
        }
    }

    /// Waits for a free delivery slot and takes it; with it, how many
    /// entries to fetch (that one plus the slots free now). Only this one
    /// slot is held while fetching, so a blocking read does not keep the
    /// reclaim scan from delivering. `None` once the subscription has stopped.
    async fn reserve(&self) -> Option<(OwnedSemaphorePermit, usize)> {
        // The semaphore is fair: this waits behind fetched entries still
        // waiting for a slot, so fetching never runs far ahead of delivery.
        let permit = tokio::select! {
            permit = Arc::clone(&self.permits).acquire_owned() => permit.ok()?,
            () = self.stop.cancelled() => return None,
        };
        Some((permit, 1 + self.permits.available_permits()))
    }

    async fn read_loop(self: &Arc<Self>) {
        let mut conn = match ConnectionManager::new_lazy_with_config(
            self.streams.inner.pool.client().clone(),
            manager_config(Some(READ_BLOCK)),
        ) {
            Ok(conn) => conn,
            Err(err) => {
                tracing::error!(error = %err, "cannot create the reading connection");
                return;
            }
        };
        let mut paused = self.paused.clone();
        let mut backoff = Backoff::new();
        // This consumer's own pending entries first (a new consumer name has
        // none), then new entries.
        let mut cursor = "0".to_owned();
        loop {
            if !self.running(&mut paused).await {
                return;
            }
            let Some((permit, count)) = self.reserve().await else {
                return;
            };
            let history = cursor != ">";
            let mut cmd = redis::cmd("XREADGROUP");
            cmd.arg("GROUP")
                .arg(&self.group)
                .arg(&self.consumer)
                .arg("COUNT")
                .arg(count);
            if !history {
                cmd.arg("BLOCK").arg(READ_BLOCK.as_millis() as u64);
            }
            cmd.arg("STREAMS").arg(&self.topic).arg(&cursor);
            let result = cmd
                .query_async::<Value>(&mut conn)
                .await
                .map_err(StreamsError::from)
                .and_then(|reply| parse_read_reply(&reply));
            match result {
                Ok(entries) => {
                    backoff.reset();
                    if history {
                        match entries.last() {
                            Some(last) => cursor.clone_from(&last.id),
                            None => cursor = ">".to_owned(),
                        }
                    }
                    if self.stop.is_cancelled() {
                        // Read but not delivered: pending, so reclaimed later.
                        return;
                    }
                    let mut permit = Some(permit);
                    for entry in entries {
                        self.spawn_delivery(entry, permit.take());
                    }
                }
                Err(err) => {
                    drop(permit);
                    if let StreamsError::Redis(err) = &err
                        && err.code() == Some("NOGROUP")
                    {
                        tracing::warn!(
                            "the stream or its consumer group was deleted; creating it again"
                        );
                        match self.streams.ensure_group(&self.topic).await {
                            Ok(()) => continue,
                            Err(err) => {
                                tracing::warn!(error = %err, "cannot create the consumer group")
                            }
                        }
                    } else {
                        tracing::warn!(error = %err, "reading the stream failed; retrying");
                    }
                    if !self.sleep(backoff.next()).await {
                        return;
                    }
                }
            }
        }
    }

    async fn reclaim_loop(self: &Arc<Self>) {
        let Some((min_idle, interval)) = self.streams.settings().reclaim() else {
            return;
        };
        let mut paused = self.paused.clone();
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                () = self.stop.cancelled() => return,
            }
            if !self.running(&mut paused).await {
                return;
            }
            if let Err(err) = self.reclaim_once(min_idle, &mut paused).await {
                tracing::warn!(error = %err, "reclaiming pending entries failed; retrying in {interval:?}");
            }
        }
    }

    /// One `XAUTOCLAIM` scan over the group's pending entries.
    async fn reclaim_once(
        self: &Arc<Self>,
        min_idle: Duration,
        paused: &mut watch::Receiver<bool>,
    ) -> Result<(), StreamsError> {
        let mut cursor = "0-0".to_owned();
        loop {
            if !self.running(paused).await {
                return Ok(());
            }
            let Some((permit, count)) = self.reserve().await else {
                return Ok(());
            };
            let mut permit = Some(permit);
            let reply: Value = redis::cmd("XAUTOCLAIM")
                .arg(&self.topic)
                .arg(&self.group)
                .arg(&self.consumer)
                .arg(u64::try_from(min_idle.as_millis()).unwrap_or(u64::MAX))
                .arg(&cursor)
                .arg("COUNT")
                .arg(count)
                .query_async(&mut self.streams.conn())
                .await
                .or_else(|err| {
                    if err.code() == Some("NOGROUP") {
                        // The reader recreates the group.
                        Ok(Value::Array(vec![Value::SimpleString("0-0".into())]))
                    } else {
                        Err(err)
                    }
                })?;
            let (next, claimed, deleted) = parse_autoclaim_reply(&reply)?;
            if !deleted.is_empty() {
                tracing::debug!(ids = ?deleted, "pending entries were deleted from the stream");
                self.ack(&deleted).await;
            }
            for entry in claimed {
                if self.inflight().contains(&entry.id) {
                    continue;
                }
                tracing::debug!(id = %entry.id, "reclaimed a pending entry");
                self.spawn_delivery(entry, permit.take());
            }
            if next == "0-0" || self.stop.is_cancelled() {
                return Ok(());
            }
            cursor = next;
        }
    }

    /// Renews the claim on the entries in flight so that other consumers do
    /// not take them over while they are being delivered.
    async fn renew_loop(self: &Arc<Self>) {
        let Some((min_idle, _)) = self.streams.settings().reclaim() else {
            return;
        };
        let period = (min_idle / 3).max(Duration::from_millis(10));
        let mut ticker = tokio::time::interval(period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                () = self.stop.cancelled() => return,
            }
            let ids: Vec<String> = self.inflight().iter().cloned().collect();
            for chunk in ids.chunks(1000) {
                let result: redis::RedisResult<Value> = redis::cmd("XCLAIM")
                    .arg(&self.topic)
                    .arg(&self.group)
                    .arg(&self.consumer)
                    .arg(0)
                    .arg(chunk)
                    .arg("JUSTID")
                    .query_async(&mut self.streams.conn())
                    .await;
                if let Err(err) = result {
                    tracing::debug!(error = %err, "renewing in-flight entries failed");
                }
            }
        }
    }

    /// Delivers `entry` in a task of its own, in the slot given or in the
    /// next free one. From now until it is delivered, the entry is in flight:
    /// its claim is renewed and the reclaim scan skips it.
    fn spawn_delivery(self: &Arc<Self>, entry: RawEntry, permit: Option<OwnedSemaphorePermit>) {
        if !self.inflight().insert(entry.id.clone()) {
            return;
        }
        let subscription = Arc::clone(self);
        self.deliveries.spawn(
            async move {
                let id = entry.id.clone();
                let permit = match permit {
                    Some(permit) => Some(permit),
                    None => tokio::select! {
                        permit = Arc::clone(&subscription.permits).acquire_owned() => permit.ok(),
                        // Stopped: the entry stays pending for the reclaim scan.
                        () = subscription.stop.cancelled() => None,
                    },
                };
                if permit.is_some() {
                    subscription.deliver(entry).await;
                }
                subscription.inflight().remove(&id);
                drop(permit);
            }
            .instrument(self.span.clone()),
        );
    }

    async fn deliver(&self, raw: RawEntry) {
        let id = raw.id.clone();
        let Some(entry) = raw.decode() else {
            tracing::warn!(id = %id, "entry has no {:?} field (deleted, or not written by this component); acknowledged without delivery", field::DATA);
            self.ack(std::slice::from_ref(&id)).await;
            return;
        };
        let delivery = Delivery {
            id,
            topic: self.topic.clone(),
            entry,
        };
        let mut retries = NACK_RETRY_DELAYS.iter();
        loop {
            match self.handler.handle(&delivery).await {
                Outcome::Ack => {
                    self.ack(std::slice::from_ref(&delivery.id)).await;
                    return;
                }
                Outcome::Closed => {
                    tracing::debug!(id = %delivery.id, "subscriber closed; entry left pending");
                    return;
                }
                Outcome::Nack(reason) => match retries.next() {
                    Some(delay) => {
                        tracing::debug!(id = %delivery.id, %reason, ?delay, "delivery refused; redelivering");
                        if !self.sleep(*delay).await {
                            return;
                        }
                    }
                    None => {
                        tracing::info!(id = %delivery.id, %reason, "delivery refused again; left pending until processingTimeout");
                        return;
                    }
                },
            }
        }
    }

    /// `XACK`, retried briefly; an entry that cannot be acknowledged stays
    /// pending and is delivered again later.
    async fn ack(&self, ids: &[String]) {
        for attempt in 1..=ACK_ATTEMPTS {
            let result: redis::RedisResult<i64> = redis::cmd("XACK")
                .arg(&self.topic)
                .arg(&self.group)
                .arg(ids)
                .query_async(&mut self.streams.conn())
                .await;
            match result {
                Ok(_) => return,
                Err(err) if attempt == ACK_ATTEMPTS => {
                    tracing::warn!(?ids, error = %err, "cannot acknowledge; the entries will be delivered again");
                }
                Err(err) => {
                    tracing::debug!(?ids, error = %err, "acknowledging failed; retrying");
                    tokio::time::sleep(Duration::from_millis(100) * attempt).await;
                }
            }
        }
    }

    /// Removes this subscription's consumer from the group if nothing is
    /// pending for it (otherwise the entries stay where reclaim finds them).
    async fn remove_consumer_if_idle(&self) {
        let mut conn = self.streams.conn();
        let pending: redis::RedisResult<Value> = redis::cmd("XPENDING")
            .arg(&self.topic)
            .arg(&self.group)
            .arg("-")
            .arg("+")
            .arg(1)
            .arg(&self.consumer)
            .query_async(&mut conn)
            .await;
        match pending {
            Ok(Value::Array(rows)) if rows.is_empty() => {
                let result: redis::RedisResult<i64> = redis::cmd("XGROUP")
                    .arg("DELCONSUMER")
                    .arg(&self.topic)
                    .arg(&self.group)
                    .arg(&self.consumer)
                    .query_async(&mut conn)
                    .await;
                if let Err(err) = result {
                    tracing::debug!(error = %err, "cannot remove the consumer");
                }
            }
            Ok(_) => tracing::debug!("consumer kept: entries are pending for it"),
            Err(err) => tracing::debug!(error = %err, "cannot list the consumer's pending entries"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(text: &str) -> Value {
        Value::BulkString(text.as_bytes().to_vec())
    }

    #[test]
    fn entries_decode() {
        let raw = parse_entry(&Value::Array(vec![
            bulk("1-0"),
            Value::Array(vec![
                bulk("data"),
                Value::BulkString(vec![0, 159, 146, 150]),
                bulk("contentType"),
                bulk("application/json"),
                bulk("meta:k"),
                bulk("v"),
                bulk("other"),
                bulk("x"),
            ]),
        ]))
        .expect("entry");
        assert_eq!(raw.id, "1-0");
        let entry = raw.decode().expect("has data");
        assert_eq!(entry.data, [0, 159, 146, 150]);
        assert_eq!(entry.content_type.as_deref(), Some("application/json"));
        assert_eq!(entry.metadata, HashMap::from([("k".into(), "v".into())]));

        let deleted = parse_entry(&Value::Array(vec![bulk("2-0"), Value::Nil])).expect("entry");
        assert!(deleted.fields.is_none());
        assert!(deleted.decode().is_none());
        let foreign = parse_entry(&Value::Array(vec![
            bulk("3-0"),
            Value::Array(vec![bulk("x"), bulk("y")]),
        ]))
        .expect("entry");
        assert!(foreign.decode().is_none());
    }

    #[test]
    fn replies_parse() {
        assert!(parse_read_reply(&Value::Nil).expect("nil").is_empty());
        let reply = Value::Array(vec![Value::Array(vec![
            bulk("topic"),
            Value::Array(vec![Value::Array(vec![
                bulk("1-0"),
                Value::Array(vec![bulk("data"), bulk("d")]),
            ])]),
        ])]);
        let entries = parse_read_reply(&reply).expect("parsed");
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].id, "1-0");

        let reply = Value::Array(vec![
            bulk("5-0"),
            Value::Array(vec![
                Value::Array(vec![
                    bulk("1-0"),
                    Value::Array(vec![bulk("data"), bulk("d")]),
                ]),
                Value::Nil,
            ]),
            Value::Array(vec![bulk("2-0")]),
        ]);
        let (cursor, claimed, deleted) = parse_autoclaim_reply(&reply).expect("parsed");
        assert_eq!(cursor, "5-0");
        assert_eq!(claimed.len(), 1);
        assert_eq!(deleted, ["2-0"]);
        assert!(parse_autoclaim_reply(&Value::Int(1)).is_err());
    }

    #[test]
    fn backoff_grows_to_a_bound() {
        let mut backoff = Backoff::new();
        let delays: Vec<_> = (0..8).map(|_| backoff.next()).collect();
        assert_eq!(delays[0], Duration::from_millis(100));
        assert_eq!(delays[1], Duration::from_millis(200));
        assert_eq!(delays[7], MAX_BACKOFF);
        backoff.reset();
        assert_eq!(backoff.next(), Duration::from_millis(100));
    }
}
