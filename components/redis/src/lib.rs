//! `plugd-redis`: a Dapr pub/sub on Redis Streams and a Dapr state store on
//! Redis hashes, served as one pluggable component.
//!
//! - [`config`]: the component metadata, validated.
//! - [`connection`]: connecting to Redis (shared by both).
//! - [`streams`]: the Redis Streams logic (stream layout, consumer groups,
//!   delivery, acknowledgement and redelivery), independent of gRPC.
//! - [`pubsub`]: [`RedisPubSub`], the SDK's `PubSub` trait on top of
//!   [`streams`].
//! - [`state`]: [`RedisStateStore`], the SDK's `StateStore` trait (etags,
//!   transactions and TTLs done by Lua scripts).

pub mod config;
pub mod connection;
pub mod pubsub;
pub mod state;
pub mod streams;

pub use config::{Connection, Settings};
pub use pubsub::RedisPubSub;
pub use state::RedisStateStore;
pub use streams::Streams;
