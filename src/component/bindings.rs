//! Binding components: the traits the API and input-delivery layers call, and their gRPC
//! adapters. One socket may serve either side or both.

use std::collections::HashMap;

use async_trait::async_trait;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::{ComponentError, Connection, Limited, forward_stream};
use crate::proto::components::{
    self as pb, input_binding_client::InputBindingClient,
    output_binding_client::OutputBindingClient,
};

/// How many replies may wait to be written to one `Read` stream.
const REPLY_QUEUE: usize = 256;

/// What plugd needs from an output binding.
#[async_trait]
pub trait OutputBinding: Send + Sync {
    async fn invoke(&self, req: pb::InvokeRequest) -> Result<pb::InvokeResponse, ComponentError>;
    async fn ping(&self) -> Result<(), ComponentError>;
    fn connection(&self) -> &Connection;
}

/// What plugd needs from an input binding.
#[async_trait]
pub trait InputBinding: Send + Sync {
    /// Opens a `Read` stream: events arrive on the returned stream, replies go back through
    /// its [`Replier`]. Dropping it closes the stream.
    async fn read(&self) -> Result<EventStream, ComponentError>;
    async fn ping(&self) -> Result<(), ComponentError>;
    fn connection(&self) -> &Connection;
}

/// One open `Read` stream: events in, replies out.
pub struct EventStream {
    /// Events in order; an `Err` or the end of the channel ends the stream.
    pub events: mpsc::Receiver<Result<pb::ReadResponse, tonic::Status>>,
    pub replies: Replier,
}

/// Sends replies on one stream; cheap to clone. Sends are serialised by the channel, and each
/// is bounded by the component call timeout (a component that stops reading its requests
/// cannot hold plugd's handlers).
#[derive(Clone)]
pub struct Replier {
    tx: mpsc::Sender<pb::ReadRequest>,
    timeout: std::time::Duration,
}

impl Replier {
    /// Answers event `message_id` with the app's response data, or with an error message.
    /// Returns false when the stream has ended or the reply could not be queued in time.
    pub async fn reply(&self, message_id: String, reply: Result<Vec<u8>, String>) -> bool {
        let req = match reply {
            Ok(data) => pb::ReadRequest {
                response_data: data,
                message_id,
                response_error: None,
            },
            Err(message) => pb::ReadRequest {
                response_data: Vec::new(),
                message_id,
                response_error: Some(pb::AckResponseError { message }),
            },
        };
        matches!(
            tokio::time::timeout(self.timeout, self.tx.send(req)).await,
            Ok(Ok(()))
        )
    }
}

/// A binding served over gRPC: the output side, the input side, or both, on one connection.
pub struct GrpcBinding {
    conn: Connection,
    input: bool,
    output: bool,
}

/// What Init of a binding found.
pub struct BindingInit {
    pub binding: GrpcBinding,
    /// The output side's operations (`ListOperations`), when the output side was initialised.
    pub operations: Vec<String>,
}

impl GrpcBinding {
    /// Initialises the sides asked for (input first, as daprd), then lists the output
    /// operations; everything done by `deadline`.
    pub async fn init(
        conn: Connection,
        properties: HashMap<String, String>,
        input: bool,
        output: bool,
        deadline: tokio::time::Instant,
    ) -> Result<BindingInit, ComponentError> {
        let left = || deadline.saturating_duration_since(tokio::time::Instant::now());
        if input {
            let req = pb::InputBindingInitRequest {
                metadata: Some(pb::MetadataRequest {
                    properties: properties.clone(),
                }),
            };
            conn.call_with_timeout("InputBinding/Init", left(), req, |ch, r| async move {
                InputBindingClient::new(ch).limited(&r).init(r).await
            })
            .await?;
        }
        let mut operations = Vec::new();
        if output {
            let req = pb::OutputBindingInitRequest {
                metadata: Some(pb::MetadataRequest { properties }),
            };
            conn.call_with_timeout("OutputBinding/Init", left(), req, |ch, r| async move {
                OutputBindingClient::new(ch).limited(&r).init(r).await
            })
            .await?;
            operations = conn
                .call_with_timeout(
                    "ListOperations",
                    left(),
                    pb::ListOperationsRequest {},
                    |ch, r| async move {
                        OutputBindingClient::new(ch)
                            .limited(&r)
                            .list_operations(r)
                            .await
                    },
                )
                .await?
                .operations;
        }
        Ok(BindingInit {
            binding: Self {
                conn,
                input,
                output,
            },
            operations,
        })
    }

    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// Pings every side that was initialised.
    pub async fn ping_all(&self) -> Result<(), ComponentError> {
        if self.input {
            InputBinding::ping(self).await?;
        }
        if self.output {
            OutputBinding::ping(self).await?;
        }
        Ok(())
    }
}

#[async_trait]
impl OutputBinding for GrpcBinding {
    async fn invoke(&self, req: pb::InvokeRequest) -> Result<pb::InvokeResponse, ComponentError> {
        self.conn
            .call("Invoke", req, |ch, r| async move {
                OutputBindingClient::new(ch).limited(&r).invoke(r).await
            })
            .await
    }

    async fn ping(&self) -> Result<(), ComponentError> {
        self.conn
            .call(
                "OutputBinding/Ping",
                pb::PingRequest {},
                |ch, r| async move { OutputBindingClient::new(ch).limited(&r).ping(r).await },
            )
            .await?;
        Ok(())
    }

    fn connection(&self) -> &Connection {
        &self.conn
    }
}

#[async_trait]
impl InputBinding for GrpcBinding {
    async fn read(&self) -> Result<EventStream, ComponentError> {
        let (tx, rx) = mpsc::channel(REPLY_QUEUE);
        let req = self.conn.stream_request("Read", ReceiverStream::new(rx));
        let mut client = InputBindingClient::new(self.conn.channel()).limited(&req);
        // As for pub/sub: plugd sends nothing first and waits.
        let events = forward_stream(async move { client.read(req).await });
        Ok(EventStream {
            events,
            replies: Replier {
                tx,
                timeout: self.conn.call_timeout(),
            },
        })
    }

    async fn ping(&self) -> Result<(), ComponentError> {
        self.conn
            .call(
                "InputBinding/Ping",
                pb::PingRequest {},
                |ch, r| async move { InputBindingClient::new(ch).limited(&r).ping(r).await },
            )
            .await?;
        Ok(())
    }

    fn connection(&self) -> &Connection {
        &self.conn
    }
}
