//! The Prometheus endpoint (`GET /metrics` on `--metrics-port`).
//!
//! Two sources feed it. State is read from the registry when scraped:
//!
//! | name | type | labels |
//! |---|---|---|
//! | `plugd_build_info` | gauge (1) | `version` |
//! | `plugd_component_status` | gauge (1 for the current status) | `component`, `type`, `status` |
//! | `plugd_component_ready` | gauge (0/1) | `component`, `type` |
//! | `plugd_sockets_discovered` | gauge | |
//! | `plugd_sockets_unusable` | gauge | |
//! | `plugd_managed_component_restarts_total` | counter | `socket` |
//!
//! Events are recorded as they happen through the `metrics` facade (a no-op until [`install`]
//! runs, so `--enable-metrics=false` costs nothing):
//!
//! | name | type | labels |
//! |---|---|---|
//! | `plugd_component_calls_total` | counter | `component`, `method`, `code` |
//! | `plugd_component_call_errors_total` | counter | `component`, `method`, `code` |
//! | `plugd_component_call_duration_seconds` | histogram | `component`, `method` |
//! | `plugd_pubsub_published_total` | counter | `component`, `topic`, `outcome` |
//! | `plugd_pubsub_delivered_total` | counter | `component`, `topic` |
//! | `plugd_pubsub_acked_total` | counter | `component`, `topic` |
//! | `plugd_pubsub_nacked_total` | counter | `component`, `topic` |
//! | `plugd_pubsub_redelivered_total` | counter | `component`, `topic` |
//! | `plugd_pubsub_dead_lettered_total` | counter | `component`, `topic` |
//! | `plugd_pubsub_dropped_total` | counter | `component`, `topic` |
//! | `plugd_pubsub_delivery_duration_seconds` | histogram | `component`, `topic` |
//! | `plugd_input_binding_events_total` | counter | `component`, `outcome` |
//! | `plugd_input_binding_event_duration_seconds` | histogram | `component` |
//! | `plugd_discovery_events_total` | counter | `event` |
//! | `plugd_http_requests_total` | counter | `method`, `route`, `status` |
//! | `plugd_http_request_duration_seconds` | histogram | `method`, `route` |
//! | `plugd_grpc_requests_total` | counter | `method`, `code` |
//! | `plugd_grpc_request_duration_seconds` | histogram | `method` |

use std::{
    collections::HashSet,
    fmt::Write,
    net::SocketAddr,
    sync::{Arc, OnceLock},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use axum::{Router, extract::State, http::header, response::IntoResponse, routing::get};
use futures::future::BoxFuture;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{discovery::Discovery, managed::Managed, registry::Registry};

#[derive(Clone)]
struct Sources {
    registry: Arc<Registry>,
    managed: Arc<Managed>,
    recorded: Option<PrometheusHandle>,
}

/// Histogram buckets, in seconds: 50 µs to 10 s.
const BUCKETS: [f64; 17] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
];

static RECORDER: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Whether a recorder is installed: until then recording returns at once, building no labels.
static ENABLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn enabled() -> bool {
    ENABLED.load(std::sync::atomic::Ordering::Relaxed)
}

/// Installs the process-wide recorder once and returns its handle; `None` if another recorder
/// was installed first (metrics recorded through it then do not show here).
pub fn install() -> Option<PrometheusHandle> {
    RECORDER
        .get_or_init(|| {
            let recorder = match PrometheusBuilder::new().set_buckets(&BUCKETS) {
                Ok(b) => b.build_recorder(),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot set up the metrics recorder");
                    return None;
                }
            };
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("another metrics recorder is installed; plugd's metrics are off");
                return None;
            }
            describe();
            ENABLED.store(true, std::sync::atomic::Ordering::Relaxed);
            // Histograms keep raw samples until drained: drain them whether or not anyone
            // scrapes (and whether or not the port could be bound).
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                let upkeep = handle.clone();
                runtime.spawn(async move {
                    let mut tick = tokio::time::interval(Duration::from_secs(5));
                    loop {
                        tick.tick().await;
                        upkeep.run_upkeep();
                    }
                });
            }
            Some(handle)
        })
        .clone()
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_histogram};
    describe_counter!(
        COMPONENT_CALLS,
        "Calls plugd made to components, by gRPC code."
    );
    describe_counter!(
        COMPONENT_ERRORS,
        "Component calls that failed, by gRPC code."
    );
    describe_histogram!(COMPONENT_DURATION, Unit::Seconds, "Component call latency.");
    describe_counter!(PUBLISHED, "Messages published through plugd, by outcome.");
    describe_counter!(DELIVERED, "Pub/sub messages handed to the app.");
    describe_counter!(ACKED, "Pub/sub messages acknowledged to the component.");
    describe_counter!(
        NACKED,
        "Pub/sub messages refused so that the component redelivers them."
    );
    describe_counter!(
        REDELIVERED,
        "Pub/sub messages received again after a refusal."
    );
    describe_counter!(
        DEAD_LETTERED,
        "Pub/sub messages sent to the dead-letter topic."
    );
    describe_counter!(DROPPED, "Pub/sub messages dropped (no dead-letter topic).");
    describe_histogram!(
        DELIVERY_DURATION,
        Unit::Seconds,
        "Time the app took per message."
    );
    describe_counter!(
        BINDING_EVENTS,
        "Input binding events handed to the app, by outcome."
    );
    describe_histogram!(
        BINDING_DURATION,
        Unit::Seconds,
        "Time the app took per binding event."
    );
    describe_counter!(
        DISCOVERY_EVENTS,
        "Sockets added, removed or found unusable."
    );
    describe_counter!(HTTP_REQUESTS, "HTTP API requests, by route and status.");
    describe_histogram!(HTTP_DURATION, Unit::Seconds, "HTTP API request latency.");
    describe_counter!(GRPC_REQUESTS, "gRPC API requests, by method and code.");
    describe_histogram!(GRPC_DURATION, Unit::Seconds, "gRPC API request latency.");
}

const COMPONENT_CALLS: &str = "plugd_component_calls_total";
const COMPONENT_ERRORS: &str = "plugd_component_call_errors_total";
const COMPONENT_DURATION: &str = "plugd_component_call_duration_seconds";
const PUBLISHED: &str = "plugd_pubsub_published_total";
const DELIVERED: &str = "plugd_pubsub_delivered_total";
const ACKED: &str = "plugd_pubsub_acked_total";
const NACKED: &str = "plugd_pubsub_nacked_total";
const REDELIVERED: &str = "plugd_pubsub_redelivered_total";
const DEAD_LETTERED: &str = "plugd_pubsub_dead_lettered_total";
const DROPPED: &str = "plugd_pubsub_dropped_total";
const DELIVERY_DURATION: &str = "plugd_pubsub_delivery_duration_seconds";
const BINDING_EVENTS: &str = "plugd_input_binding_events_total";
const BINDING_DURATION: &str = "plugd_input_binding_event_duration_seconds";
const DISCOVERY_EVENTS: &str = "plugd_discovery_events_total";
const HTTP_REQUESTS: &str = "plugd_http_requests_total";
const HTTP_DURATION: &str = "plugd_http_request_duration_seconds";
const GRPC_REQUESTS: &str = "plugd_grpc_requests_total";
const GRPC_DURATION: &str = "plugd_grpc_request_duration_seconds";

/// One finished call to a component. `code` is the gRPC code's name (`Ok` on success).
pub fn component_call(component: &str, method: &'static str, elapsed: Duration, code: tonic::Code) {
    if !enabled() {
        return;
    }
    let component = metrics::SharedString::from(Arc::<str>::from(component));
    metrics::histogram!(COMPONENT_DURATION, "component" => component.clone(), "method" => method)
        .record(elapsed.as_secs_f64());
    let failed = code != tonic::Code::Ok;
    let code = code_name(code);
    if failed {
        metrics::counter!(COMPONENT_ERRORS, "component" => component.clone(), "method" => method, "code" => code)
            .increment(1);
    }
    metrics::counter!(COMPONENT_CALLS, "component" => component, "method" => method, "code" => code)
        .increment(1);
}

/// One component's call metrics, with the handles of successful calls kept per method after
/// first use: a call then records without building label sets or looking them up in the
/// registry (failures, rarer, take the general path).
pub struct ComponentCalls {
    component: String,
    by_method: std::sync::Mutex<Vec<(&'static str, metrics::Histogram, metrics::Counter)>>,
}

impl std::fmt::Debug for ComponentCalls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ComponentCalls")
            .field("component", &self.component)
            .finish_non_exhaustive()
    }
}

impl ComponentCalls {
    pub fn new(component: &str) -> Self {
        Self {
            component: component.to_string(),
            by_method: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// As [`component_call`].
    pub fn record(&self, method: &'static str, elapsed: Duration, code: tonic::Code) {
        if !enabled() {
            return;
        }
        let cache = self.by_method.lock();
        let (tonic::Code::Ok, Ok(mut cache)) = (code, cache) else {
            return component_call(&self.component, method, elapsed, code);
        };
        if let Some((_, duration, calls)) = cache.iter().find(|(m, ..)| *m == method) {
            duration.record(elapsed.as_secs_f64());
            calls.increment(1);
            return;
        }
        let component = metrics::SharedString::from(Arc::<str>::from(self.component.as_str()));
        let duration = metrics::histogram!(COMPONENT_DURATION, "component" => component.clone(), "method" => method);
        let calls = metrics::counter!(COMPONENT_CALLS, "component" => component, "method" => method, "code" => code_name(code));
        duration.record(elapsed.as_secs_f64());
        calls.increment(1);
        cache.push((method, duration, calls));
    }
}

/// What happened to a pub/sub message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PubSubEvent {
    Delivered,
    Acked,
    Nacked,
    Redelivered,
    DeadLettered,
    Dropped,
}

pub fn pubsub(event: PubSubEvent, component: &str, topic: &str) {
    if !enabled() {
        return;
    }
    let name = match event {
        PubSubEvent::Delivered => DELIVERED,
        PubSubEvent::Acked => ACKED,
        PubSubEvent::Nacked => NACKED,
        PubSubEvent::Redelivered => REDELIVERED,
        PubSubEvent::DeadLettered => DEAD_LETTERED,
        PubSubEvent::Dropped => DROPPED,
    };
    metrics::counter!(name, "component" => component.to_owned(), "topic" => topic.to_owned())
        .increment(1);
}

/// The time the app took to handle one message.
pub fn pubsub_delivery_time(component: &str, topic: &str, elapsed: Duration) {
    if !enabled() {
        return;
    }
    metrics::histogram!(DELIVERY_DURATION, "component" => component.to_owned(), "topic" => topic.to_owned())
        .record(elapsed.as_secs_f64());
}

/// Messages published by the app (`outcome` is `ok` or `error`). The app chooses topic names,
/// so only the first [`TOPIC_LABELS`] (pubsub, topic) pairs get their own label; later ones are
/// counted under `topic="other"`.
pub fn published(component: &str, topic: &str, ok: bool, count: u64) {
    if !enabled() || count == 0 {
        return;
    }
    let outcome = if ok { "ok" } else { "error" };
    let topic = topic_label(component, topic);
    metrics::counter!(PUBLISHED, "component" => component.to_owned(), "topic" => topic, "outcome" => outcome)
        .increment(count);
}

/// How many distinct (pubsub, topic) pairs published to get their own label.
pub const TOPIC_LABELS: usize = 1000;

fn topic_label(component: &str, topic: &str) -> metrics::SharedString {
    static SEEN: OnceLock<std::sync::Mutex<HashSet<(String, String)>>> = OnceLock::new();
    let seen = SEEN.get_or_init(Default::default);
    let Ok(mut seen) = seen.lock() else {
        return "other".into();
    };
    let key = (component.to_owned(), topic.to_owned());
    if seen.contains(&key) || seen.len() < TOPIC_LABELS {
        seen.insert(key);
        topic.to_owned().into()
    } else {
        "other".into()
    }
}

/// One input binding event handed to the app.
pub fn binding_event(component: &str, ok: bool, elapsed: Duration) {
    if !enabled() {
        return;
    }
    let outcome = if ok { "ok" } else { "error" };
    metrics::histogram!(BINDING_DURATION, "component" => component.to_owned())
        .record(elapsed.as_secs_f64());
    metrics::counter!(BINDING_EVENTS, "component" => component.to_owned(), "outcome" => outcome)
        .increment(1);
}

/// Counts the sockets that appeared, went away, or became (or stayed newly) unusable between
/// two scans of the socket folder.
pub fn discovery_changed(before: Option<&Discovery>, after: &Discovery) {
    if !enabled() {
        return;
    }
    let usable = |d: Option<&Discovery>| -> HashSet<std::path::PathBuf> {
        d.map(|d| d.sockets.iter().map(|s| s.path.clone()).collect())
            .unwrap_or_default()
    };
    let unusable = |d: Option<&Discovery>| -> HashSet<std::path::PathBuf> {
        d.map(|d| d.failures.iter().map(|f| f.path.clone()).collect())
            .unwrap_or_default()
    };
    let (old_ok, new_ok) = (usable(before), usable(Some(after)));
    let (old_bad, new_bad) = (unusable(before), unusable(Some(after)));
    let count = |event: &'static str, n: usize| {
        if n > 0 {
            metrics::counter!(DISCOVERY_EVENTS, "event" => event).increment(n as u64);
        }
    };
    count("added", new_ok.difference(&old_ok).count());
    count("removed", old_ok.difference(&new_ok).count());
    count("unusable", new_bad.difference(&old_bad).count());
}

/// A gRPC code's name, as go-grpc-prometheus spells it in its `grpc_code` label.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "Canceled",
        Unknown => "Unknown",
        InvalidArgument => "InvalidArgument",
        DeadlineExceeded => "DeadlineExceeded",
        NotFound => "NotFound",
        AlreadyExists => "AlreadyExists",
        PermissionDenied => "PermissionDenied",
        ResourceExhausted => "ResourceExhausted",
        FailedPrecondition => "FailedPrecondition",
        Aborted => "Aborted",
        OutOfRange => "OutOfRange",
        Unimplemented => "Unimplemented",
        Internal => "Internal",
        Unavailable => "Unavailable",
        DataLoss => "DataLoss",
        Unauthenticated => "Unauthenticated",
    }
}

/// Axum middleware (innermost, on matched routes): passes the route template outwards.
pub async fn route_template(
    path: axum::extract::MatchedPath,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let mut response = next.run(request).await;
    response.extensions_mut().insert(path);
    response
}

/// Axum middleware (outermost): counts each HTTP API request by method, route template and
/// status. Paths no route matched are counted under `route="unmatched"`, so a client cannot
/// make the label set grow.
pub async fn http_requests(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    if !enabled() {
        return next.run(request).await;
    }
    let method = match *request.method() {
        http::Method::GET => "GET",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::DELETE => "DELETE",
        http::Method::OPTIONS => "OPTIONS",
        http::Method::HEAD => "HEAD",
        http::Method::PATCH => "PATCH",
        _ => "other",
    };
    let started = Instant::now();
    let response = next.run(request).await;
    let route: metrics::SharedString = response
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(
            || "unmatched".into(),
            |p| Arc::<str>::from(p.as_str()).into(),
        );
    let status: metrics::SharedString = match response.status().as_u16() {
        200 => "200".into(),
        204 => "204".into(),
        400 => "400".into(),
        404 => "404".into(),
        500 => "500".into(),
        other => other.to_string().into(),
    };
    metrics::histogram!(HTTP_DURATION, "method" => method, "route" => route.clone())
        .record(started.elapsed().as_secs_f64());
    metrics::counter!(HTTP_REQUESTS, "method" => method, "route" => route, "status" => status)
        .increment(1);
    response
}

/// The gRPC methods a client may be counted under; anything else is `unknown`.
fn known_grpc_methods() -> &'static HashSet<Arc<str>> {
    static KNOWN: OnceLock<HashSet<Arc<str>>> = OnceLock::new();
    KNOWN.get_or_init(|| {
        let mut known: HashSet<Arc<str>> = [
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        ]
        .into_iter()
        .map(Arc::from)
        .collect();
        if let Ok(set) = <prost_types::FileDescriptorSet as prost::Message>::decode(
            plugd_proto::FILE_DESCRIPTOR_SET,
        ) {
            for file in &set.file {
                for service in &file.service {
                    for method in &service.method {
                        known.insert(Arc::from(format!(
                            "/{}.{}/{}",
                            file.package(),
                            service.name(),
                            method.name()
                        )));
                    }
                }
            }
        }
        known
    })
}

/// A tower layer for the gRPC API server: counts requests by method and code, and times them.
/// The code is read from the response headers (where tonic puts it for a failed unary call);
/// a response whose status comes only in its trailers counts as `OK`.
#[derive(Clone, Copy, Default)]
pub struct GrpcMetricsLayer;

impl<S> tower::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetrics { inner }
    }
}

/// See [`GrpcMetricsLayer`].
#[derive(Clone)]
pub struct GrpcMetrics<S> {
    inner: S,
}

impl<S, B, R> tower::Service<http::Request<B>> for GrpcMetrics<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>> + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
    R: Send + 'static,
{
    type Response = http::Response<R>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if !enabled() {
            return Box::pin(self.inner.call(request));
        }
        let method: metrics::SharedString = known_grpc_methods()
            .get(request.uri().path())
            .map_or_else(|| "unknown".into(), |m| m.clone().into());
        let started = Instant::now();
        let call = self.inner.call(request);
        Box::pin(async move {
            let result = call.await;
            let code = match &result {
                Ok(response) => response
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i32>().ok())
                    .map_or(tonic::Code::Ok, tonic::Code::from_i32),
                Err(_) => tonic::Code::Internal,
            };
            metrics::histogram!(GRPC_DURATION, "method" => method.clone())
                .record(started.elapsed().as_secs_f64());
            metrics::counter!(GRPC_REQUESTS, "method" => method, "code" => code_name(code))
                .increment(1);
            result
        })
    }
}

/// Binds the metrics port and serves until `stop`. A port that cannot be bound is logged and
/// metrics are off: it does not stop plugd.
pub async fn serve(
    addr: SocketAddr,
    registry: Arc<Registry>,
    managed: Arc<Managed>,
    stop: CancellationToken,
) -> Option<SocketAddr> {
    let recorded = install();
    let listener = match TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(%addr, error = %e, "cannot listen for metrics; metrics are off");
            return None;
        }
    };
    let bound = listener.local_addr().ok();
    let app = Router::new()
        .route("/metrics", get(render))
        .route("/", get(render))
        .with_state(Sources {
            registry,
            managed,
            recorded: recorded.clone(),
        });
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await
        {
            tracing::warn!(error = %e, "metrics server stopped");
        }
    });
    if let Some(a) = bound {
        tracing::info!(addr = %a, "metrics served at /metrics");
    }
    bound
}

async fn render(State(s): State<Sources>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], {
        let mut text = exposition(&s.registry, &s.managed);
        if let Some(handle) = &s.recorded {
            text.push_str(&handle.render());
        }
        text
    })
}

fn exposition(registry: &Registry, managed: &Managed) -> String {
    let snapshot = registry.snapshot();
    let mut out = String::new();
    let _ = writeln!(out, "# HELP plugd_build_info plugd's version.");
    let _ = writeln!(out, "# TYPE plugd_build_info gauge");
    let _ = writeln!(
        out,
        "plugd_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
    let _ = writeln!(
        out,
        "# HELP plugd_component_status 1 for each component's current status."
    );
    let _ = writeln!(out, "# TYPE plugd_component_status gauge");
    for c in snapshot.components.values() {
        let _ = writeln!(
            out,
            "plugd_component_status{{component=\"{}\",type=\"{}\",status=\"{}\"}} 1",
            escape(&c.name),
            escape(&c.type_name),
            c.status.name()
        );
    }
    let _ = writeln!(
        out,
        "# HELP plugd_component_ready Whether the component is serving."
    );
    let _ = writeln!(out, "# TYPE plugd_component_ready gauge");
    for c in snapshot.components.values() {
        let ready = u8::from(c.status == crate::registry::ComponentStatus::Ready);
        let _ = writeln!(
            out,
            "plugd_component_ready{{component=\"{}\",type=\"{}\"}} {ready}",
            escape(&c.name),
            escape(&c.type_name)
        );
    }
    let d = &snapshot.discovery;
    let _ = writeln!(
        out,
        "# HELP plugd_sockets_discovered Component sockets found and usable."
    );
    let _ = writeln!(out, "# TYPE plugd_sockets_discovered gauge");
    let _ = writeln!(out, "plugd_sockets_discovered {}", d.sockets.len());
    let _ = writeln!(
        out,
        "# HELP plugd_sockets_unusable Sockets in the folder that could not be used."
    );
    let _ = writeln!(out, "# TYPE plugd_sockets_unusable gauge");
    let _ = writeln!(out, "plugd_sockets_unusable {}", d.failures.len());
    let _ = writeln!(
        out,
        "# HELP plugd_managed_component_restarts_total Restarts of managed components after they exited."
    );
    let _ = writeln!(out, "# TYPE plugd_managed_component_restarts_total counter");
    let restarts = managed.restarts();
    for (name, _) in managed.list() {
        let n = restarts.get(&name).copied().unwrap_or(0);
        let _ = writeln!(
            out,
            "plugd_managed_component_restarts_total{{socket=\"{}\"}} {n}",
            escape(&name)
        );
    }
    out
}

/// Escapes a Prometheus label value.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_topics_get_a_bounded_set_of_labels() {
        assert_eq!(&*topic_label("cap-test", "first"), "first");
        for i in 0..TOPIC_LABELS {
            topic_label("cap-test", &format!("t{i}"));
        }
        assert_eq!(&*topic_label("cap-test", "one-too-many"), "other");
        assert_eq!(
            &*topic_label("cap-test", "first"),
            "first",
            "known pairs keep theirs"
        );
    }

    #[test]
    fn only_known_grpc_methods_get_their_own_label() {
        let known = known_grpc_methods();
        assert!(known.contains("/dapr.proto.runtime.v1.Dapr/GetState"));
        assert!(known.contains("/dapr.proto.runtime.v1.Dapr/PublishEvent"));
        assert!(known.contains("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"));
        assert!(!known.contains("/dapr.proto.runtime.v1.Dapr/MadeUp"));
        assert!(!known.contains("/x/y"));
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn empty_registry_renders_valid_lines() {
        let registry = Registry::default();
        let managed = Managed::new(crate::managed::Settings::disabled("/nonexistent".into()));
        let text = exposition(&registry, &managed);
        assert!(text.contains("plugd_build_info{version=\""));
        assert!(text.contains("plugd_sockets_discovered 0"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let value = line.rsplit(' ').next().unwrap_or_default();
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }
}
