//! `plugd-redis`: a Dapr pub/sub on Redis Streams, served as a pluggable
//! component.
//!
//! - [`config`]: the component metadata, validated.
//! - [`streams`]: the Redis Streams logic (stream layout, consumer groups,
//!   delivery, acknowledgement and redelivery), independent of gRPC.
//! - [`pubsub`]: [`RedisPubSub`], the SDK's `PubSub` trait on top of
//!   [`streams`].

pub mod config;
pub mod pubsub;
pub mod streams;

pub use config::Settings;
pub use pubsub::RedisPubSub;
pub use streams::Streams;
