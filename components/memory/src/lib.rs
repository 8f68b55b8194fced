//! An in-memory pub/sub broker and state store for Dapr, served together as
//! one pluggable component. **For demos and tests:** everything lives in the
//! process and is lost when it exits.
//!
//! Run the `plugd-memory` binary; it listens on `<sockets folder>/memory.sock`
//! and serves both kinds there, so Components use `type: pubsub.memory` and
//! `type: state.memory`; with `--socket-name in-memory` (as plugd starts it)
//! it serves Dapr's built-in `pubsub.in-memory` and `state.in-memory` (see
//! `component.yaml` beside this crate). Unknown metadata keys are ignored and
//! logged once per Init (names only); Dapr's runtime-level keys are accepted
//! silently. Each
//! Component (each `x-component-instance`) gets its own broker and its own map.
//! A re-Init of an instance (a hot reload) keeps its messages and data.
//!
//! # Pub/sub ([`MemoryPubSub`])
//!
//! | key | meaning | default |
//! |---|---|---|
//! | `consumerID` | consumer group of the instance's subscriptions; a subscription's own `consumerID` metadata wins | `""` (one default group) |
//! | `maxInFlight` | messages out for delivery at once per subscription stream, 1 to 10000 | `64` |
//! | `redeliveryDelay` | Go duration (`100ms`, `1.5s`) a rejected message waits before it is delivered again, at most `1h` | `0` |
//!
//! Features: `BULK_PUBSUB` (a bulk publish appends all its entries at once).
//! Pause and Resume are not implemented (see below).
//!
//! - **Queues.** Messages are kept per (topic, consumer group). Every
//!   subscription stream of a topic with the same consumer group takes
//!   messages from the same queue (competing consumers: each message goes to
//!   one of them); each consumer group gets every message. A group exists
//!   from its first subscription on and keeps receiving messages while it has
//!   no stream open. Messages published to a topic that has no group yet are
//!   held and given to the first group that subscribes; a group that appears
//!   later receives only what is published after it first subscribed.
//! - **At least once.** A message stays pending until the host acknowledges
//!   it. When the host rejects it, or its stream closes before the answer, it
//!   goes back to the **front** of its queue and is delivered again, to the
//!   next stream of the group that has room (after `redeliveryDelay` for a
//!   rejection). A host that processed a message but closed the stream before
//!   acknowledging it therefore sees it again.
//! - **Order.** Queues are first-in first-out, and a delayed message at the
//!   front holds back those behind it. With `maxInFlight: 1` and one stream
//!   per group, messages are processed in publish order, redeliveries
//!   included.
//! - **Consumer groups and instances.** Instances are named by the Component,
//!   so two daprd processes using Components of the same name on one
//!   `plugd-memory` share an instance, and the last Init sets its
//!   `consumerID`. Give such apps different Component names, or set
//!   `consumerID` in the subscription metadata.
//! - **Pause** is not implemented: daprd then closes the streams at shutdown,
//!   and the messages out for delivery are requeued. Pausing is per instance
//!   and never undone by daprd, so one app shutting down would stall the
//!   other apps sharing the instance.
//! - **Shutdown.** On SIGTERM/SIGINT every subscription is ended (its
//!   unacknowledged messages requeued, then lost with the process), so the
//!   server does not wait for the hosts to close their streams.
//!
//! # State store ([`MemoryStore`])
//!
//! No metadata. Features: `ETAG`, `TRANSACTIONAL`, `TTL`, `QUERY_API`.
//!
//! - **Etags** are UUIDs (v4), new on every write. A Set or Delete with an
//!   etag succeeds only if it equals the current one; otherwise (also for a
//!   missing key, or an etag this store never issued) it fails as an etag
//!   mismatch. First-write concurrency without an etag only creates the key.
//! - **TTL**: `ttlInSeconds` on Set: a positive number of seconds, or `-1`
//!   for never; anything else is `INVALID_ARGUMENT`. Expired keys are
//!   invisible at once (reads and etag checks) and dropped from memory by a
//!   sweep during writes, at most once a minute. Gets of keys with a TTL
//!   return `ttlExpireTime` (RFC 3339).
//! - **Atomicity**: Transact, BulkSet and BulkDelete apply all operations or
//!   none, each checked against the state the earlier ones left. BulkGet
//!   reads one snapshot.
//! - **Query** (`QueryStateAlpha1`, Dapr's state query API): `EQ`, `NEQ`,
//!   `GT`, `GTE`, `LT`, `LTE`, `IN`, `AND`, `OR` over values stored as JSON,
//!   keys as dotted paths (`person.org`); values that are not JSON match no
//!   filter. Comparisons need the same type (numbers by value, strings by
//!   code point). `sort` by several keys (a missing field sorts last in
//!   ascending order), then by state key. `page.limit` cuts the results and
//!   the answer's `token` (an offset) continues after them; it is returned
//!   only when more results remain. One snapshot per page: writes between
//!   pages can shift items across pages. Every key of the instance is
//!   searched, whichever app wrote it.

pub mod broker;
pub mod config;
pub mod state;

pub use broker::MemoryPubSub;
pub use config::PubSubConfig;
pub use state::MemoryStore;
