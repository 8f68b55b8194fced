//! Pub/sub components: the trait the API and subscription layers call, and its gRPC adapter.

use std::{collections::HashMap, time::Duration};

use async_trait::async_trait;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::{ComponentError, Connection, Limited, forward_stream};
use crate::proto::components::{self as pb, pub_sub_client::PubSubClient};

/// The feature a pub/sub component reports when it implements `BulkPublish`.
pub const FEATURE_BULK_PUBSUB: &str = "BULK_PUBSUB";
/// The feature a pub/sub component reports when it honours `ttlInSeconds` itself.
pub const FEATURE_MESSAGE_TTL: &str = "MESSAGE_TTL";

/// How many acks may wait to be written to one stream.
const ACK_QUEUE: usize = 256;

/// What plugd needs from a pub/sub component.
#[async_trait]
pub trait PubSub: Send + Sync {
    async fn publish(&self, req: pb::PublishRequest) -> Result<(), ComponentError>;
    async fn bulk_publish(
        &self,
        req: pb::BulkPublishRequest,
    ) -> Result<pb::BulkPublishResponse, ComponentError>;
    /// Opens a `PullMessages` stream for `topic`: the first message (the topic) is queued at
    /// once; messages arrive on the returned stream. Dropping it closes the stream.
    async fn pull(&self, topic: pb::Topic) -> Result<MessageStream, ComponentError>;
    async fn pause(&self, timeout: Duration) -> Result<(), ComponentError>;
    async fn ping(&self) -> Result<(), ComponentError>;
    /// The connection the component is reached by (to notice that it closed).
    fn connection(&self) -> &Connection;
}

/// One open `PullMessages` stream: messages in, acks out.
/// Dropping it closes the stream (the component redelivers what was not acked).
pub struct MessageStream {
    /// Messages in order; an `Err` or the end of the channel ends the stream.
    pub messages: mpsc::Receiver<Result<pb::PullMessagesResponse, tonic::Status>>,
    pub acks: Acker,
}

/// Sends acks on one stream; cheap to clone. Sends are serialised by the channel, and each is
/// bounded by the component call timeout: a component that stops reading its acks cannot
/// hold plugd's delivery tasks.
#[derive(Clone)]
pub struct Acker {
    tx: mpsc::Sender<pb::PullMessagesRequest>,
    timeout: std::time::Duration,
}

impl Acker {
    pub fn new(tx: mpsc::Sender<pb::PullMessagesRequest>, timeout: std::time::Duration) -> Self {
        Self { tx, timeout }
    }

    /// Acknowledges a message (`error` = `None`) or rejects it so the component redelivers it.
    /// Returns false when the stream has ended or the ack could not be queued in time (the
    /// component will redeliver anyway).
    pub async fn ack(&self, id: String, error: Option<String>) -> bool {
        let req = pb::PullMessagesRequest {
            topic: None,
            ack_message_id: id,
            ack_error: error.map(|message| pb::AckMessageError { message }),
        };
        matches!(
            tokio::time::timeout(self.timeout, self.tx.send(req)).await,
            Ok(Ok(()))
        )
    }
}

/// A pub/sub component served over gRPC.
pub struct GrpcPubSub {
    conn: Connection,
}

impl GrpcPubSub {
    /// Calls `Init` with `properties` and then `Features`, both done by `deadline`.
    pub async fn init(
        conn: Connection,
        properties: HashMap<String, String>,
        deadline: tokio::time::Instant,
    ) -> Result<(Self, Vec<String>), ComponentError> {
        let left = || deadline.saturating_duration_since(tokio::time::Instant::now());
        let req = pb::PubSubInitRequest {
            metadata: Some(pb::MetadataRequest { properties }),
        };
        conn.call_with_timeout("Init", left(), req, |ch, r| async move {
            PubSubClient::new(ch).limited(&r).init(r).await
        })
        .await?;
        let features = conn
            .call_with_timeout(
                "Features",
                left(),
                pb::FeaturesRequest {},
                |ch, r| async move { PubSubClient::new(ch).limited(&r).features(r).await },
            )
            .await?
            .features;
        Ok((Self { conn }, features))
    }
}

#[async_trait]
impl PubSub for GrpcPubSub {
    async fn publish(&self, req: pb::PublishRequest) -> Result<(), ComponentError> {
        self.conn
            .call("Publish", req, |ch, r| async move {
                PubSubClient::new(ch).limited(&r).publish(r).await
            })
            .await?;
        Ok(())
    }

    async fn bulk_publish(
        &self,
        req: pb::BulkPublishRequest,
    ) -> Result<pb::BulkPublishResponse, ComponentError> {
        self.conn
            .call("BulkPublish", req, |ch, r| async move {
                PubSubClient::new(ch).limited(&r).bulk_publish(r).await
            })
            .await
    }

    async fn pull(&self, topic: pb::Topic) -> Result<MessageStream, ComponentError> {
        let (tx, rx) = mpsc::channel(ACK_QUEUE);
        let first = pb::PullMessagesRequest {
            topic: Some(topic),
            ack_message_id: String::new(),
            ack_error: None,
        };
        // Queued before the call starts, so the component has the topic as soon as the stream
        // opens (the channel is empty, so there is room).
        if tx.try_send(first).is_err() {
            return Err(ComponentError::Status {
                component: self.conn.instance().to_string(),
                method: "PullMessages",
                status: tonic::Status::internal("could not queue the subscription request"),
            });
        }
        let req = self
            .conn
            .stream_request("PullMessages", ReceiverStream::new(rx));
        let mut client = PubSubClient::new(self.conn.channel()).limited(&req);
        // The stream is open as far as plugd is concerned once the first request is queued, as
        // in daprd.
        let messages = forward_stream(async move { client.pull_messages(req).await });
        Ok(MessageStream {
            messages,
            acks: Acker::new(tx, self.conn.call_timeout()),
        })
    }

    async fn pause(&self, timeout: Duration) -> Result<(), ComponentError> {
        self.conn
            .call_with_timeout("Pause", timeout, pb::PauseRequest {}, |ch, r| async move {
                PubSubClient::new(ch).limited(&r).pause(r).await
            })
            .await?;
        Ok(())
    }

    async fn ping(&self) -> Result<(), ComponentError> {
        self.conn
            .call("Ping", pb::PingRequest {}, |ch, r| async move {
                PubSubClient::new(ch).limited(&r).ping(r).await
            })
            .await?;
        Ok(())
    }

    fn connection(&self) -> &Connection {
        &self.conn
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A component that stops reading its acks: once the queue is full, an ack gives up after
    /// the call timeout instead of waiting for ever.
    #[tokio::test]
    async fn acks_to_a_component_that_stops_reading_give_up() {
        let (tx, mut rx) = mpsc::channel(1);
        let acker = Acker::new(tx, std::time::Duration::from_millis(50));
        assert!(acker.ack("1".into(), None).await, "room for one");
        assert!(
            !acker.ack("2".into(), None).await,
            "full: bounded, then false"
        );
        assert_eq!(rx.recv().await.map(|r| r.ack_message_id), Some("1".into()));
        assert!(acker.ack("3".into(), Some("retry".into())).await);
        drop(rx);
        assert!(!acker.ack("4".into(), None).await, "stream ended");
    }
}
