//! Recording fakes for the tracing tests: a pub/sub and an input/output binding component (raw
//! tonic servers on temp Unix sockets, so the gRPC metadata of every call can be seen), and a
//! gRPC app that handles input-binding events and names an output binding in its reply.

use std::{
    collections::HashMap,
    path::Path,
    sync::{Arc, Mutex},
};

use plugd::proto::{
    common,
    components::{
        self as pb, input_binding_server::InputBindingServer,
        output_binding_server::OutputBindingServer, pub_sub_server::PubSubServer,
    },
    runtime::{self as rt, app_callback_server::AppCallbackServer},
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming, metadata::MetadataMap};

type Reply<T> = Result<Response<T>, Status>;

/// The `traceparent` / `tracestate` metadata of one call.
pub type TraceMetadata = HashMap<String, String>;

/// What a fake recorded, in order.
type Log<T> = Arc<Mutex<Vec<T>>>;

/// An ack: the message id and the error, if any.
pub type Ack = (String, Option<String>);

/// A reply to an input-binding event: the message id, the data and the error, if any.
pub type BindingReply = (String, Vec<u8>, Option<String>);

fn trace_metadata(md: &MetadataMap) -> TraceMetadata {
    ["traceparent", "tracestate"]
        .into_iter()
        .filter_map(|k| {
            let v = md.get(k)?.to_str().ok()?;
            Some((k.to_string(), v.to_string()))
        })
        .collect()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Serves `router` on `socket` with v1alpha reflection listing `services`, so plugd discovers
/// it.
fn serve(socket: &Path, services: &[&str], router: tonic::transport::server::Router) {
    let listener = tokio::net::UnixListener::bind(socket).expect("bind the component's socket");
    let mut reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(plugd::proto::FILE_DESCRIPTOR_SET);
    for s in services {
        reflection = reflection.with_service_name(*s);
    }
    let reflection = reflection.build_v1alpha().expect("reflection");
    tokio::spawn(
        router
            .add_service(reflection)
            .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener)),
    );
}

// ---------------------------------------------------------------------------------------------
// Pub/sub.

/// A pub/sub that sends its `messages` of a topic on every `PullMessages` stream opened for
/// that topic and records what plugd sends it.
#[derive(Clone, Default)]
pub struct RecordingPubSub {
    messages: Log<pb::PullMessagesResponse>,
    /// `(topic, trace metadata)` of every `PullMessages` stream opened.
    pulls: Log<(String, TraceMetadata)>,
    /// `(topic, trace metadata)` of every `Publish`.
    publishes: Log<(String, TraceMetadata)>,
    /// `(message id, error)` of every ack.
    acks: Log<Ack>,
}

impl RecordingPubSub {
    pub fn with_messages(messages: Vec<pb::PullMessagesResponse>) -> Self {
        Self {
            messages: Arc::new(Mutex::new(messages)),
            ..Default::default()
        }
    }

    pub fn pulls(&self) -> Vec<(String, TraceMetadata)> {
        lock(&self.pulls).clone()
    }

    pub fn publishes(&self) -> Vec<(String, TraceMetadata)> {
        lock(&self.publishes).clone()
    }

    pub fn acks(&self) -> Vec<Ack> {
        lock(&self.acks).clone()
    }

    /// Serves it on `socket` (type `pubsub.<socket file stem>`).
    pub fn serve(&self, socket: &Path) {
        serve(
            socket,
            &["dapr.proto.components.v1.PubSub"],
            tonic::transport::Server::builder().add_service(PubSubServer::new(self.clone())),
        );
    }
}

#[tonic::async_trait]
impl pb::pub_sub_server::PubSub for RecordingPubSub {
    async fn init(&self, _: Request<pb::PubSubInitRequest>) -> Reply<pb::PubSubInitResponse> {
        Ok(Response::new(pb::PubSubInitResponse {}))
    }

    async fn features(&self, _: Request<pb::FeaturesRequest>) -> Reply<pb::FeaturesResponse> {
        Ok(Response::new(pb::FeaturesResponse::default()))
    }

    async fn publish(&self, req: Request<pb::PublishRequest>) -> Reply<pb::PublishResponse> {
        let md = trace_metadata(req.metadata());
        let topic = req.into_inner().topic;
        lock(&self.publishes).push((topic, md));
        Ok(Response::new(pb::PublishResponse {}))
    }

    async fn bulk_publish(
        &self,
        _: Request<pb::BulkPublishRequest>,
    ) -> Reply<pb::BulkPublishResponse> {
        Err(Status::unimplemented("no bulk publish"))
    }

    type PullMessagesStream = ReceiverStream<Result<pb::PullMessagesResponse, Status>>;

    async fn pull_messages(
        &self,
        req: Request<Streaming<pb::PullMessagesRequest>>,
    ) -> Reply<Self::PullMessagesStream> {
        let md = trace_metadata(req.metadata());
        let mut inbound = req.into_inner();
        let topic = inbound
            .message()
            .await?
            .and_then(|r| r.topic)
            .map(|t| t.name)
            .ok_or_else(|| Status::invalid_argument("the first request names no topic"))?;
        lock(&self.pulls).push((topic.clone(), md));
        let messages: Vec<_> = lock(&self.messages)
            .iter()
            .filter(|m| m.topic_name == topic)
            .cloned()
            .collect();
        let (tx, rx) = mpsc::channel(messages.len().max(1));
        for m in messages {
            tx.send(Ok(m))
                .await
                .map_err(|_| Status::internal("closed"))?;
        }
        let acks = self.acks.clone();
        tokio::spawn(async move {
            // Holds the sender until plugd closes its side.
            let _tx = tx;
            while let Ok(Some(r)) = inbound.message().await {
                lock(&acks).push((r.ack_message_id, r.ack_error.map(|e| e.message)));
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn pause(&self, _: Request<pb::PauseRequest>) -> Reply<pb::PauseResponse> {
        Err(Status::unimplemented("no pause"))
    }

    async fn resume(&self, _: Request<pb::ResumeRequest>) -> Reply<pb::ResumeResponse> {
        Err(Status::unimplemented("no resume"))
    }

    async fn ping(&self, _: Request<pb::PingRequest>) -> Reply<pb::PingResponse> {
        Ok(Response::new(pb::PingResponse {}))
    }
}

// ---------------------------------------------------------------------------------------------
// Bindings.

/// An input and output binding: sends its `events` on every `Read` stream and records the
/// replies, and records every `Invoke`.
#[derive(Clone, Default)]
pub struct RecordingBinding {
    events: Log<pb::ReadResponse>,
    /// The trace metadata of every `Read` stream opened.
    reads: Log<TraceMetadata>,
    /// `(message id, data, error)` of every reply to an event.
    replies: Log<BindingReply>,
    /// `(operation, trace metadata)` of every `Invoke`.
    invokes: Log<(String, TraceMetadata)>,
}

impl RecordingBinding {
    pub fn with_events(events: Vec<pb::ReadResponse>) -> Self {
        Self {
            events: Arc::new(Mutex::new(events)),
            ..Default::default()
        }
    }

    pub fn reads(&self) -> Vec<TraceMetadata> {
        lock(&self.reads).clone()
    }

    pub fn replies(&self) -> Vec<BindingReply> {
        lock(&self.replies).clone()
    }

    pub fn invokes(&self) -> Vec<(String, TraceMetadata)> {
        lock(&self.invokes).clone()
    }

    /// Serves both sides on `socket` (type `bindings.<socket file stem>`).
    pub fn serve(&self, socket: &Path) {
        serve(
            socket,
            &[
                "dapr.proto.components.v1.InputBinding",
                "dapr.proto.components.v1.OutputBinding",
            ],
            tonic::transport::Server::builder()
                .add_service(InputBindingServer::new(self.clone()))
                .add_service(OutputBindingServer::new(self.clone())),
        );
    }
}

#[tonic::async_trait]
impl pb::input_binding_server::InputBinding for RecordingBinding {
    async fn init(
        &self,
        _: Request<pb::InputBindingInitRequest>,
    ) -> Reply<pb::InputBindingInitResponse> {
        Ok(Response::new(pb::InputBindingInitResponse {}))
    }

    type ReadStream = ReceiverStream<Result<pb::ReadResponse, Status>>;

    async fn read(&self, req: Request<Streaming<pb::ReadRequest>>) -> Reply<Self::ReadStream> {
        lock(&self.reads).push(trace_metadata(req.metadata()));
        let mut inbound = req.into_inner();
        let events = lock(&self.events).clone();
        let (tx, rx) = mpsc::channel(events.len().max(1));
        for e in events {
            tx.send(Ok(e))
                .await
                .map_err(|_| Status::internal("closed"))?;
        }
        let replies = self.replies.clone();
        tokio::spawn(async move {
            let _tx = tx;
            while let Ok(Some(r)) = inbound.message().await {
                lock(&replies).push((
                    r.message_id,
                    r.response_data,
                    r.response_error.map(|e| e.message),
                ));
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn ping(&self, _: Request<pb::PingRequest>) -> Reply<pb::PingResponse> {
        Ok(Response::new(pb::PingResponse {}))
    }
}

#[tonic::async_trait]
impl pb::output_binding_server::OutputBinding for RecordingBinding {
    async fn init(
        &self,
        _: Request<pb::OutputBindingInitRequest>,
    ) -> Reply<pb::OutputBindingInitResponse> {
        Ok(Response::new(pb::OutputBindingInitResponse {}))
    }

    async fn invoke(&self, req: Request<pb::InvokeRequest>) -> Reply<pb::InvokeResponse> {
        let md = trace_metadata(req.metadata());
        let operation = req.into_inner().operation;
        lock(&self.invokes).push((operation, md));
        Ok(Response::new(pb::InvokeResponse::default()))
    }

    async fn list_operations(
        &self,
        _: Request<pb::ListOperationsRequest>,
    ) -> Reply<pb::ListOperationsResponse> {
        Ok(Response::new(pb::ListOperationsResponse {
            operations: vec!["create".into()],
        }))
    }

    async fn ping(&self, _: Request<pb::PingRequest>) -> Reply<pb::PingResponse> {
        Ok(Response::new(pb::PingResponse {}))
    }
}

// ---------------------------------------------------------------------------------------------
// A gRPC app for input-binding events.

/// Handles input binding `binding`: records the trace metadata of each event and answers with
/// `{"forwarded":true}` for output binding `to`.
#[derive(Clone)]
pub struct ForwardingApp {
    binding: String,
    to: String,
    /// The trace metadata of every `OnBindingEvent`.
    events: Log<TraceMetadata>,
}

impl ForwardingApp {
    pub fn events(&self) -> Vec<TraceMetadata> {
        lock(&self.events).clone()
    }
}

/// Starts a [`ForwardingApp`] on a loopback port; its port, the app, and a guard that stops it.
pub async fn forwarding_app(
    binding: &str,
    to: &str,
) -> (u16, ForwardingApp, tokio_util::sync::DropGuard) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind app");
    let port = listener.local_addr().expect("app addr").port();
    let app = ForwardingApp {
        binding: binding.into(),
        to: to.into(),
        events: Arc::default(),
    };
    let stop = tokio_util::sync::CancellationToken::new();
    let signal = stop.clone().cancelled_owned();
    let service = AppCallbackServer::new(app.clone());
    tokio::spawn(async move {
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        let _ = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, signal)
            .await;
    });
    (port, app, stop.drop_guard())
}

#[tonic::async_trait]
impl rt::app_callback_server::AppCallback for ForwardingApp {
    async fn on_invoke(&self, _: Request<common::InvokeRequest>) -> Reply<common::InvokeResponse> {
        Err(Status::unimplemented("no invoke"))
    }

    async fn list_topic_subscriptions(
        &self,
        _: Request<()>,
    ) -> Reply<rt::ListTopicSubscriptionsResponse> {
        Ok(Response::new(rt::ListTopicSubscriptionsResponse::default()))
    }

    async fn on_topic_event(
        &self,
        _: Request<rt::TopicEventRequest>,
    ) -> Reply<rt::TopicEventResponse> {
        Err(Status::unimplemented("no topics"))
    }

    async fn list_input_bindings(&self, _: Request<()>) -> Reply<rt::ListInputBindingsResponse> {
        Ok(Response::new(rt::ListInputBindingsResponse {
            bindings: vec![self.binding.clone()],
        }))
    }

    async fn on_binding_event(
        &self,
        req: Request<rt::BindingEventRequest>,
    ) -> Reply<rt::BindingEventResponse> {
        lock(&self.events).push(trace_metadata(req.metadata()));
        Ok(Response::new(rt::BindingEventResponse {
            data: br#"{"forwarded":true}"#.to_vec(),
            to: vec![self.to.clone()],
            ..Default::default()
        }))
    }

    async fn on_bulk_topic_event(
        &self,
        _: Request<rt::TopicEventBulkRequest>,
    ) -> Reply<rt::TopicEventBulkResponse> {
        Err(Status::unimplemented("no bulk"))
    }

    async fn on_job_event(&self, _: Request<rt::JobEventRequest>) -> Reply<rt::JobEventResponse> {
        Err(Status::unimplemented("no jobs"))
    }
}
