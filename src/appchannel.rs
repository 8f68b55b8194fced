//! The app channel: how plugd calls the app (`--app-port`, `--app-protocol`), to ask for its
//! subscriptions and to deliver events to it.

use std::{collections::HashMap, net::SocketAddr, time::Duration};

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;
use tonic::{
    Code,
    metadata::{AsciiMetadataKey, AsciiMetadataValue},
    transport::{Channel, Endpoint},
};

use crate::{
    config::AppProtocol,
    proto::runtime::{
        BindingEventRequest, TopicEventRequest, app_callback_client::AppCallbackClient,
        binding_event_response::BindingEventConcurrency,
        topic_event_response::TopicEventResponseStatus,
    },
    pubsub::{
        cloudevents::{CLOUDEVENTS_JSON, Event},
        subscription::{self, Subscription},
    },
    telemetry::trace,
};

/// The header carrying the app token (`APP_API_TOKEN`) on every call to the app.
pub const API_TOKEN_HEADER: &str = "dapr-api-token";

/// What the app decided about one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Processed: acknowledge it.
    Success,
    /// Not processed: the component redelivers it.
    Retry(String),
    /// Not wanted: acknowledge it (after the dead-letter topic, if any).
    Drop(String),
}

/// An event on its way to the app.
pub struct TopicDelivery<'a> {
    pub event: &'a Event,
    pub pubsub: &'a str,
    pub topic: &'a str,
    pub path: &'a str,
    /// The broker message metadata (becomes headers / gRPC metadata).
    pub metadata: &'a HashMap<String, String>,
    /// The event's delivery ([`trace::Delivery`]): the app gets it as its parent.
    pub trace: &'a trace::Delivery,
}

/// An input-binding event on its way to the app.
pub struct BindingDelivery<'a> {
    /// The binding (component) name.
    pub name: &'a str,
    /// Where an HTTP app receives it (`/<route>`).
    pub route: &'a str,
    pub data: &'a [u8],
    /// The event metadata (becomes headers / gRPC metadata).
    pub metadata: &'a HashMap<String, String>,
    /// The event's delivery ([`trace::Delivery`]): the app gets it as its parent.
    pub trace: &'a trace::Delivery,
}

/// What the app answered to an input-binding event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BindingReply {
    /// Handed back to the binding component as its reply.
    pub data: Vec<u8>,
    /// Output bindings the app asked to send `data` to (gRPC apps only).
    pub to: Vec<String>,
    /// Whether those output bindings are called at once rather than one after another.
    pub parallel: bool,
}

/// Calls into the app.
#[async_trait]
pub trait AppChannel: Send + Sync {
    /// Where the app is, for logs.
    fn address(&self) -> String;
    /// The app's programmatic subscriptions; an app without any answers with none.
    async fn subscriptions(&self) -> Result<Vec<Subscription>, String>;
    async fn topic_event(&self, delivery: TopicDelivery<'_>) -> Outcome;
    /// Whether the app handles input binding `name`: a gRPC app lists it in
    /// `ListInputBindings` (asked once); an HTTP app answers `OPTIONS <route>` with 2xx or 405.
    async fn wants_binding(&self, name: &str, route: &str) -> bool;
    /// Delivers one input-binding event; `Err` says why the app did not take it.
    async fn binding_event(&self, delivery: BindingDelivery<'_>) -> Result<BindingReply, String>;
}

/// Settings of the app channel.
#[derive(Debug, Clone)]
pub struct AppSettings {
    pub address: SocketAddr,
    pub protocol: AppProtocol,
    pub token: Option<String>,
    /// Bound on each call to the app.
    pub call_timeout: Duration,
}

/// Builds the channel for `settings`.
pub fn connect(settings: AppSettings) -> Result<Box<dyn AppChannel>, String> {
    Ok(match settings.protocol {
        AppProtocol::Grpc => Box::new(GrpcApp::new(settings)?),
        AppProtocol::Http => Box::new(HttpApp::new(settings)?),
    })
}

/// Waits until the app's port accepts connections; logs while it does not. Returns false if
/// stopped first.
pub async fn wait_for_app(address: SocketAddr, stop: &CancellationToken) -> bool {
    let started = tokio::time::Instant::now();
    // Logged after 2 s, then at doubling intervals up to a minute.
    let mut log_every = Duration::from_secs(2);
    let mut next_log = log_every;
    let mut delay = Duration::from_millis(20);
    loop {
        let attempt = tokio::time::timeout(
            Duration::from_secs(1),
            tokio::net::TcpStream::connect(address),
        );
        tokio::select! {
            _ = stop.cancelled() => return false,
            r = attempt => if let Ok(Ok(_)) = r {
                tracing::info!(app = %address, waited = ?started.elapsed(), "app is listening");
                return true;
            },
        }
        if started.elapsed() >= next_log {
            tracing::warn!(app = %address, waited = ?started.elapsed(),
                "waiting for the app to listen before subscribing");
            log_every = (log_every * 2).min(Duration::from_secs(60));
            next_log = started.elapsed() + log_every;
        }
        tokio::select! {
            _ = stop.cancelled() => return false,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_millis(500));
    }
}

struct GrpcApp {
    settings: AppSettings,
    channel: Channel,
    /// The app's answer to `ListInputBindings`, asked once.
    input_bindings: tokio::sync::OnceCell<Vec<String>>,
}

impl GrpcApp {
    fn new(settings: AppSettings) -> Result<Self, String> {
        let endpoint = Endpoint::from_shared(format!("http://{}", settings.address))
            .map_err(|e| e.to_string())?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true);
        Ok(Self {
            channel: endpoint.connect_lazy(),
            settings,
            input_bindings: tokio::sync::OnceCell::new(),
        })
    }

    /// Adds string metadata to a request as gRPC metadata (what is not a valid header is
    /// skipped; `content-type` and `content-length` belong to the call itself).
    fn add_metadata<T>(req: &mut tonic::Request<T>, metadata: &HashMap<String, String>) {
        for (k, v) in metadata {
            let key = k.to_ascii_lowercase();
            if matches!(key.as_str(), "content-type" | "content-length") {
                continue;
            }
            if let (Ok(key), Ok(value)) = (
                AsciiMetadataKey::from_bytes(key.as_bytes()),
                AsciiMetadataValue::try_from(v.as_str()),
            ) {
                req.metadata_mut().insert(key, value);
            }
        }
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(message);
        req.set_timeout(self.settings.call_timeout);
        if let Some(token) = self
            .settings
            .token
            .as_deref()
            .and_then(|t| AsciiMetadataValue::try_from(t).ok())
        {
            req.metadata_mut().insert(API_TOKEN_HEADER, token);
        }
        req
    }
}

#[async_trait]
impl AppChannel for GrpcApp {
    fn address(&self) -> String {
        format!("grpc://{}", self.settings.address)
    }

    async fn subscriptions(&self) -> Result<Vec<Subscription>, String> {
        let mut client = AppCallbackClient::new(self.channel.clone());
        match client.list_topic_subscriptions(self.request(())).await {
            Ok(resp) => {
                let mut subs = Vec::new();
                for s in resp.into_inner().subscriptions {
                    let label = format!("{}/{}", s.pubsub_name, s.topic);
                    match subscription::from_grpc(s) {
                        Ok(sub) => subs.push(sub),
                        Err(e) => {
                            tracing::error!(subscription = %label, "subscription ignored: {e}")
                        }
                    }
                }
                Ok(subs)
            }
            Err(status) if status.code() == Code::Unimplemented => Ok(Vec::new()),
            Err(status) => Err(format!(
                "ListTopicSubscriptions failed: {:?}: {}",
                status.code(),
                status.message()
            )),
        }
    }

    async fn topic_event(&self, d: TopicDelivery<'_>) -> Outcome {
        let message: TopicEventRequest = match d.event.to_topic_event(d.topic, d.pubsub, d.path) {
            Ok(m) => m,
            Err(e) => return Outcome::Retry(e),
        };
        let mut req = self.request(message);
        Self::add_metadata(&mut req, d.metadata);
        d.trace.inject_grpc(req.metadata_mut());
        let mut client = AppCallbackClient::new(self.channel.clone());
        match client.on_topic_event(req).await {
            Ok(resp) => match TopicEventResponseStatus::try_from(resp.into_inner().status) {
                Ok(TopicEventResponseStatus::Success) => Outcome::Success,
                Ok(TopicEventResponseStatus::Retry) => {
                    Outcome::Retry("the app answered RETRY".into())
                }
                Ok(TopicEventResponseStatus::Drop) => Outcome::Drop("the app answered DROP".into()),
                Err(_) => Outcome::Retry("the app answered an unknown status".into()),
            },
            Err(status) if status.code() == Code::Unimplemented => Outcome::Drop(format!(
                "the app does not handle this event: {}",
                status.message()
            )),
            Err(status) => Outcome::Retry(format!(
                "OnTopicEvent failed: {:?}: {}",
                status.code(),
                status.message()
            )),
        }
    }

    async fn wants_binding(&self, name: &str, _route: &str) -> bool {
        let names = self
            .input_bindings
            .get_or_init(|| async {
                let mut client = AppCallbackClient::new(self.channel.clone());
                match client.list_input_bindings(self.request(())).await {
                    Ok(resp) => resp.into_inner().bindings,
                    Err(status) => {
                        if status.code() != Code::Unimplemented {
                            tracing::warn!(code = ?status.code(), error = status.message(),
                                "ListInputBindings failed; no input binding is delivered to the app");
                        }
                        Vec::new()
                    }
                }
            })
            .await;
        names.iter().any(|n| n == name)
    }

    async fn binding_event(&self, d: BindingDelivery<'_>) -> Result<BindingReply, String> {
        let mut req = self.request(BindingEventRequest {
            name: d.name.to_string(),
            data: d.data.to_vec(),
            metadata: d.metadata.clone(),
        });
        // The event's own metadata travels in the message; only the trace context goes as
        // call metadata too: the delivery's, which continues the event's context.
        d.trace.inject_grpc(req.metadata_mut());
        let mut client = AppCallbackClient::new(self.channel.clone());
        match client.on_binding_event(req).await {
            Ok(resp) => {
                let r = resp.into_inner();
                Ok(BindingReply {
                    data: r.data,
                    to: r.to,
                    parallel: r.concurrency == BindingEventConcurrency::Parallel as i32,
                })
            }
            Err(status) => Err(format!(
                "OnBindingEvent failed: {:?}: {}",
                status.code(),
                status.message()
            )),
        }
    }
}

struct HttpApp {
    settings: AppSettings,
    client: reqwest::Client,
    base: String,
}

impl HttpApp {
    fn new(settings: AppSettings) -> Result<Self, String> {
        let client = reqwest::Client::builder()
            .timeout(settings.call_timeout)
            .tcp_nodelay(true)
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Self {
            base: format!("http://{}", settings.address),
            settings,
            client,
        })
    }

    fn url(&self, path: &str) -> String {
        if path.starts_with('/') {
            format!("{}{path}", self.base)
        } else {
            format!("{}/{path}", self.base)
        }
    }

    fn with_token(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.settings.token {
            Some(t) => req.header(API_TOKEN_HEADER, t),
            None => req,
        }
    }
}

#[async_trait]
impl AppChannel for HttpApp {
    fn address(&self) -> String {
        self.base.clone()
    }

    async fn subscriptions(&self) -> Result<Vec<Subscription>, String> {
        let resp = self
            .with_token(self.client.get(self.url("/dapr/subscribe")))
            .send()
            .await
            .map_err(|e| format!("GET /dapr/subscribe failed: {e}"))?;
        let status = resp.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Ok(Vec::new());
        }
        if !status.is_success() {
            return Err(format!("GET /dapr/subscribe answered {status}"));
        }
        let body = resp
            .bytes()
            .await
            .map_err(|e| format!("GET /dapr/subscribe: reading the body: {e}"))?;
        let items: Vec<serde_json::Value> = serde_json::from_slice(&body)
            .map_err(|e| format!("GET /dapr/subscribe: the body is not a JSON array: {e}"))?;
        let mut subs = Vec::new();
        for item in items {
            let parsed = serde_json::from_value::<subscription::HttpSubscription>(item.clone())
                .map_err(|e| e.to_string())
                .and_then(subscription::from_http);
            match parsed {
                Ok(Some(sub)) => subs.push(sub),
                Ok(None) => tracing::warn!(%item, "subscription without a route ignored"),
                Err(e) => tracing::error!(%item, "subscription ignored: {e}"),
            }
        }
        Ok(subs)
    }

    async fn topic_event(&self, d: TopicDelivery<'_>) -> Outcome {
        let mut req = self
            .client
            .post(self.url(d.path))
            .header(http::header::CONTENT_TYPE, CLOUDEVENTS_JSON);
        req = with_headers(req, d.metadata);
        req = with_trace(req, d.trace);
        let resp = match self
            .with_token(req)
            .body(d.event.bytes.clone())
            .send()
            .await
        {
            Ok(r) => r,
            Err(e) => return Outcome::Retry(format!("POST {} failed: {e}", d.path)),
        };
        let status = resp.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Outcome::Drop(format!("POST {} answered 404", d.path));
        }
        if !status.is_success() {
            return Outcome::Retry(format!("POST {} answered {status}", d.path));
        }
        let body = resp.bytes().await.unwrap_or_default();
        let verdict = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("status").and_then(|s| s.as_str().map(str::to_string)));
        match verdict.as_deref() {
            None | Some("") | Some("SUCCESS") => Outcome::Success,
            Some("DROP") => Outcome::Drop("the app answered DROP".into()),
            Some("RETRY") => Outcome::Retry("the app answered RETRY".into()),
            Some(other) => Outcome::Retry(format!("the app answered an unknown status {other:?}")),
        }
    }

    async fn wants_binding(&self, name: &str, route: &str) -> bool {
        match self.options_answer(route).await {
            Ok(status)
                if status.is_success() || status == reqwest::StatusCode::METHOD_NOT_ALLOWED =>
            {
                true
            }
            Ok(status) => {
                tracing::info!(binding = name, %route, %status,
                    "the app does not handle this input binding (OPTIONS answered {status})");
                false
            }
            Err(e) => {
                tracing::warn!(binding = name, %route, "OPTIONS to the app failed ({e}); the input binding is not delivered");
                false
            }
        }
    }

    async fn binding_event(&self, d: BindingDelivery<'_>) -> Result<BindingReply, String> {
        let mut req = self
            .client
            .post(self.url(d.route))
            .header(http::header::CONTENT_TYPE, "application/json");
        req = with_headers(req, d.metadata);
        req = with_trace(req, d.trace);
        let resp = self
            .with_token(req)
            .body(d.data.to_vec())
            .send()
            .await
            .map_err(|e| format!("POST {} failed: {e}", d.route))?;
        let status = resp.status();
        let body = resp
            .bytes()
            .await
            .map_err(|e| format!("POST {}: reading the answer: {e}", d.route))?;
        if !status.is_success() {
            return Err(format!("POST {} answered {status}", d.route));
        }
        Ok(BindingReply {
            data: body.to_vec(),
            ..Default::default()
        })
    }
}

impl HttpApp {
    async fn options_answer(&self, route: &str) -> Result<reqwest::StatusCode, String> {
        let req = self
            .client
            .request(reqwest::Method::OPTIONS, self.url(route))
            .timeout(BINDING_PROBE_TIMEOUT);
        self.with_token(req)
            .send()
            .await
            .map(|r| r.status())
            .map_err(|e| e.to_string())
    }
}

/// Sets `traceparent` (and `tracestate` when there is one) naming the delivery as the parent,
/// replacing what the metadata put there.
fn with_trace(req: reqwest::RequestBuilder, delivery: &trace::Delivery) -> reqwest::RequestBuilder {
    let headers = delivery.headers();
    let mut map = http::HeaderMap::new();
    for (name, value) in [
        (trace::TRACEPARENT, headers.traceparent),
        (trace::TRACESTATE, headers.tracestate),
    ] {
        if let Ok(value) = http::HeaderValue::try_from(value)
            && !value.is_empty()
        {
            map.insert(name, value);
        }
    }
    if map.is_empty() {
        req
    } else {
        req.headers(map)
    }
}

/// Adds string metadata as HTTP headers (what is not a valid header is skipped;
/// `content-type` and `content-length` belong to the request itself).
fn with_headers(
    mut req: reqwest::RequestBuilder,
    metadata: &HashMap<String, String>,
) -> reqwest::RequestBuilder {
    for (k, v) in metadata {
        if k.eq_ignore_ascii_case("content-length") || k.eq_ignore_ascii_case("content-type") {
            continue;
        }
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(k.as_bytes()),
            http::HeaderValue::from_str(v),
        ) {
            req = req.header(name, value);
        }
    }
    req
}

/// Bound on the `OPTIONS` probe of an HTTP app's input-binding route.
const BINDING_PROBE_TIMEOUT: Duration = Duration::from_secs(5);
