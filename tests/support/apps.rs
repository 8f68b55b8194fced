//! Test apps that receive pub/sub events from plugd: a gRPC AppCallback server and an HTTP
//! server, each on a loopback port bound before plugd starts, recording every delivery.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use plugd::proto::{
    common,
    runtime::{
        self as rt,
        app_callback_server::{AppCallback, AppCallbackServer},
        topic_event_response::TopicEventResponseStatus,
    },
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

/// One event as the app saw it.
#[derive(Debug, Clone)]
pub struct Received {
    pub id: String,
    pub topic: String,
    pub pubsub: String,
    pub path: String,
    pub data: Vec<u8>,
    pub content_type: String,
    /// gRPC metadata or HTTP headers (lower-case keys).
    pub headers: HashMap<String, String>,
    /// The JSON CloudEvent (HTTP) or the extensions (gRPC).
    pub envelope: serde_json::Value,
    /// The request body as sent (HTTP; empty for gRPC).
    pub body: Vec<u8>,
}

/// What the app answers for an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Success,
    Retry,
    Drop,
    /// gRPC: an error status (UNKNOWN) / HTTP: 500.
    Fail,
    /// HTTP only: 404.
    NotFound,
}

/// Decides the answer for each event: `(event, how many times this id was seen before)`.
pub type Policy = Arc<dyn Fn(&Received, usize) -> Answer + Send + Sync>;

pub fn always(answer: Answer) -> Policy {
    Arc::new(move |_, _| answer)
}

/// What both apps share: the recorded events and the answer policy.
#[derive(Clone)]
pub struct Recorder {
    pub events: Arc<Mutex<Vec<Received>>>,
    policy: Arc<Mutex<Policy>>,
    notify: Arc<tokio::sync::Notify>,
}

impl Recorder {
    fn new(policy: Policy) -> Self {
        Self {
            events: Arc::default(),
            policy: Arc::new(Mutex::new(policy)),
            notify: Arc::default(),
        }
    }

    pub fn set_policy(&self, policy: Policy) {
        *self.policy.lock().expect("policy lock") = policy;
    }

    fn record(&self, r: Received) -> Answer {
        let mut events = self.events.lock().expect("events lock");
        let seen = events.iter().filter(|e| e.id == r.id).count();
        let policy = self.policy.lock().expect("policy lock").clone();
        let answer = policy(&r, seen);
        events.push(r);
        drop(events);
        self.notify.notify_waiters();
        answer
    }

    /// How many events have been received.
    pub fn len(&self) -> usize {
        self.events.lock().expect("events lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Waits (bounded) until at least `n` events have been received, without copying them.
    pub async fn wait_for_count(&self, within: Duration, n: usize) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let notified = self.notify.notified();
            if self.len() >= n {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() && self.len() < n {
                panic!(
                    "timed out after {within:?}: {} of {n} events received",
                    self.len()
                );
            }
        }
    }

    pub fn snapshot(&self) -> Vec<Received> {
        self.events.lock().expect("events lock").clone()
    }

    /// Waits (bounded) until `check` holds over the recorded events.
    pub async fn wait_for<F>(&self, within: Duration, what: &str, check: F) -> Vec<Received>
    where
        F: Fn(&[Received]) -> bool,
    {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let notified = self.notify.notified();
            let events = self.snapshot();
            if check(&events) {
                return events;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                let events = self.snapshot();
                if check(&events) {
                    return events;
                }
                panic!(
                    "timed out after {within:?} waiting for {what}; {} events received: {:?}",
                    events.len(),
                    events
                        .iter()
                        .map(|e| (&e.topic, &e.id, String::from_utf8_lossy(&e.data)))
                        .collect::<Vec<_>>()
                );
            }
        }
    }
}

/// A running test app.
pub struct TestApp {
    pub port: u16,
    pub recorder: Recorder,
    stop: CancellationToken,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[derive(Clone)]
struct GrpcApp {
    recorder: Recorder,
    subscriptions: Vec<rt::TopicSubscription>,
}

#[tonic::async_trait]
impl AppCallback for GrpcApp {
    async fn on_invoke(
        &self,
        _: Request<common::InvokeRequest>,
    ) -> Result<Response<common::InvokeResponse>, Status> {
        Err(Status::unimplemented("no invoke"))
    }

    async fn list_topic_subscriptions(
        &self,
        _: Request<()>,
    ) -> Result<Response<rt::ListTopicSubscriptionsResponse>, Status> {
        Ok(Response::new(rt::ListTopicSubscriptionsResponse {
            subscriptions: self.subscriptions.clone(),
        }))
    }

    async fn on_topic_event(
        &self,
        req: Request<rt::TopicEventRequest>,
    ) -> Result<Response<rt::TopicEventResponse>, Status> {
        let headers = req
            .metadata()
            .iter()
            .filter_map(|kv| match kv {
                tonic::metadata::KeyAndValueRef::Ascii(k, v) => {
                    Some((k.to_string(), v.to_str().ok()?.to_string()))
                }
                _ => None,
            })
            .collect();
        let r = req.into_inner();
        let envelope = r
            .extensions
            .as_ref()
            .map(|s| {
                serde_json::Value::Object(
                    s.fields
                        .iter()
                        .map(|(k, v)| (k.clone(), prost_to_json(v)))
                        .collect(),
                )
            })
            .unwrap_or_default();
        let answer = self.recorder.record(Received {
            id: r.id,
            topic: r.topic,
            pubsub: r.pubsub_name,
            path: r.path,
            data: r.data,
            content_type: r.data_content_type,
            headers,
            envelope,
            body: Vec::new(),
        });
        let status = match answer {
            Answer::Success => TopicEventResponseStatus::Success,
            Answer::Retry => TopicEventResponseStatus::Retry,
            Answer::Drop | Answer::NotFound => TopicEventResponseStatus::Drop,
            Answer::Fail => return Err(Status::unknown("handler failed")),
        };
        Ok(Response::new(rt::TopicEventResponse {
            status: status as i32,
        }))
    }

    async fn list_input_bindings(
        &self,
        _: Request<()>,
    ) -> Result<Response<rt::ListInputBindingsResponse>, Status> {
        Ok(Response::new(rt::ListInputBindingsResponse::default()))
    }

    async fn on_binding_event(
        &self,
        _: Request<rt::BindingEventRequest>,
    ) -> Result<Response<rt::BindingEventResponse>, Status> {
        Err(Status::unimplemented("no bindings"))
    }

    async fn on_bulk_topic_event(
        &self,
        _: Request<rt::TopicEventBulkRequest>,
    ) -> Result<Response<rt::TopicEventBulkResponse>, Status> {
        Err(Status::unimplemented("no bulk"))
    }

    async fn on_job_event(
        &self,
        _: Request<rt::JobEventRequest>,
    ) -> Result<Response<rt::JobEventResponse>, Status> {
        Err(Status::unimplemented("no jobs"))
    }
}

fn prost_to_json(v: &prost_types::Value) -> serde_json::Value {
    use prost_types::value::Kind;
    match &v.kind {
        Some(Kind::StringValue(s)) => serde_json::Value::String(s.clone()),
        Some(Kind::BoolValue(b)) => serde_json::Value::Bool(*b),
        Some(Kind::NumberValue(n)) => serde_json::json!(n),
        Some(Kind::StructValue(s)) => serde_json::Value::Object(
            s.fields
                .iter()
                .map(|(k, v)| (k.clone(), prost_to_json(v)))
                .collect(),
        ),
        Some(Kind::ListValue(l)) => {
            serde_json::Value::Array(l.values.iter().map(prost_to_json).collect())
        }
        Some(Kind::NullValue(_)) | None => serde_json::Value::Null,
    }
}

/// A subscription as a gRPC app declares it (plain: `routes` present and empty).
pub fn grpc_subscription(pubsub: &str, topic: &str) -> rt::TopicSubscription {
    rt::TopicSubscription {
        pubsub_name: pubsub.into(),
        topic: topic.into(),
        routes: Some(rt::TopicRoutes::default()),
        ..Default::default()
    }
}

/// Starts a gRPC app serving `subscriptions`, answering by `policy`.
pub async fn grpc_app(subscriptions: Vec<rt::TopicSubscription>, policy: Policy) -> TestApp {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind app");
    let port = listener.local_addr().expect("app addr").port();
    let recorder = Recorder::new(policy);
    let app = GrpcApp {
        recorder: recorder.clone(),
        subscriptions,
    };
    let stop = CancellationToken::new();
    let signal = stop.clone().cancelled_owned();
    tokio::spawn(async move {
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        let _ = tonic::transport::Server::builder()
            .add_service(AppCallbackServer::new(app))
            .serve_with_incoming_shutdown(incoming, signal)
            .await;
    });
    TestApp {
        port,
        recorder,
        stop,
    }
}

/// Starts an HTTP app whose `GET /dapr/subscribe` answers `subscribe` (a JSON array), recording
/// every `POST` and answering by `policy`.
pub async fn http_app(subscribe: serde_json::Value, policy: Policy) -> TestApp {
    use axum::{
        Router,
        body::Bytes,
        extract::State,
        http::{HeaderMap, StatusCode, Uri},
        routing::get,
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind app");
    let port = listener.local_addr().expect("app addr").port();
    let recorder = Recorder::new(policy);
    let state = (recorder.clone(), subscribe);
    async fn subscribe_handler(
        State((_, subs)): State<(Recorder, serde_json::Value)>,
    ) -> axum::Json<serde_json::Value> {
        axum::Json(subs)
    }
    async fn event_handler(
        State((recorder, _)): State<(Recorder, serde_json::Value)>,
        method: axum::http::Method,
        uri: Uri,
        headers: HeaderMap,
        body: Bytes,
    ) -> (StatusCode, String) {
        // plugd's probe of an input-binding route: handled, not recorded.
        if method == axum::http::Method::OPTIONS {
            return (StatusCode::OK, String::new());
        }
        let envelope: serde_json::Value =
            serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
        let text = |k: &str| envelope[k].as_str().unwrap_or_default().to_string();
        let data = match envelope.get("data") {
            Some(serde_json::Value::String(s)) => s.clone().into_bytes(),
            Some(other) => other.to_string().into_bytes(),
            None => Vec::new(),
        };
        let answer = recorder.record(Received {
            id: text("id"),
            topic: text("topic"),
            pubsub: text("pubsubname"),
            path: uri.path().to_string(),
            data,
            content_type: text("datacontenttype"),
            headers: headers
                .iter()
                .filter_map(|(k, v)| Some((k.to_string(), v.to_str().ok()?.to_string())))
                .collect(),
            envelope: envelope.clone(),
            body: body.to_vec(),
        });
        match answer {
            Answer::Success => (StatusCode::OK, r#"{"status":"SUCCESS"}"#.into()),
            Answer::Retry => (StatusCode::OK, r#"{"status":"RETRY"}"#.into()),
            Answer::Drop => (StatusCode::OK, r#"{"status":"DROP"}"#.into()),
            Answer::Fail => (StatusCode::INTERNAL_SERVER_ERROR, "boom".into()),
            Answer::NotFound => (StatusCode::NOT_FOUND, String::new()),
        }
    }
    let router = Router::new()
        .route("/dapr/subscribe", get(subscribe_handler))
        .fallback(event_handler)
        .with_state(state);
    let stop = CancellationToken::new();
    let signal = stop.clone().cancelled_owned();
    tokio::spawn(async move {
        let _ = axum::serve(listener, router)
            .with_graceful_shutdown(signal)
            .await;
    });
    TestApp {
        port,
        recorder,
        stop,
    }
}
