//! Pub/sub: CloudEvent envelopes, subscriptions and their routing rules, and delivery to the app.

pub mod cloudevents;
pub mod delivery;
pub mod subscription;
