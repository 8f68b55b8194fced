//! Trace context in and out: W3C `traceparent` / `tracestate` (HTTP headers, gRPC metadata) and
//! OpenCensus `grpc-trace-bin` on the way in; `traceparent` / `tracestate` on every call to a
//! component and every delivery to the app on the way out. A value that does not parse is
//! ignored and the span starts a new trace.
//!
//! The spans are ordinary `tracing` spans marked with [`TRACE_MARKER`](super::TRACE_MARKER) and
//! an empty `trace_id` field that [`start`] fills in, so log lines inside them carry the trace id.

use std::{
    sync::atomic::{AtomicBool, Ordering},
    task::{Context as TaskContext, Poll},
};

use base64::Engine as _;
use opentelemetry::{
    Context,
    propagation::{Extractor, Injector, TextMapPropagator as _},
    trace::{SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState},
};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tonic::metadata::{AsciiMetadataValue, MetadataMap};
use tracing::{Instrument as _, Span, instrument::Instrumented};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::{Registry, registry::LookupSpan as _};

use crate::pubsub::cloudevents::Trace;

pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";
pub const GRPC_TRACE_BIN: &str = "grpc-trace-bin";

/// The trace context a request's headers carry: `traceparent` (+ `tracestate`) when valid,
/// else `grpc-trace-bin` when `grpc` and valid, else none.
pub fn extract_headers(headers: &http::HeaderMap, grpc: bool) -> Context {
    let cx = TraceContextPropagator::new().extract(&HeaderCarrier(headers));
    if cx.span().span_context().is_valid() || !grpc {
        return cx;
    }
    headers
        .get(GRPC_TRACE_BIN)
        .and_then(|v| decode_base64(v.as_bytes()))
        .and_then(|bytes| parse_grpc_trace_bin(&bytes))
        .map(|sc| Context::new().with_remote_span_context(sc))
        .unwrap_or_default()
}

/// The trace context of W3C `traceparent` / `tracestate` strings (none when invalid).
pub fn extract_w3c(traceparent: Option<&str>, tracestate: Option<&str>) -> Context {
    let carrier = PairCarrier {
        traceparent,
        tracestate,
    };
    TraceContextPropagator::new().extract(&carrier)
}

/// gRPC binary metadata values are base64, with or without padding.
fn decode_base64(value: &[u8]) -> Option<Vec<u8>> {
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    LENIENT.decode(value).ok()
}

/// OpenCensus binary trace context: version 0, then fields by id — 0: 16-byte trace id,
/// 1: 8-byte span id, 2: 1-byte options (bit 0: sampled). Trace and span id are required.
pub fn parse_grpc_trace_bin(bytes: &[u8]) -> Option<SpanContext> {
    let (&version, mut rest) = bytes.split_first()?;
    if version != 0 {
        return None;
    }
    let (mut trace, mut span, mut options) = (None, None, 0u8);
    while let Some((&field, tail)) = rest.split_first() {
        match field {
            0 => {
                let (id, tail) = tail.split_first_chunk::<16>()?;
                trace = Some(TraceId::from_bytes(*id));
                rest = tail;
            }
            1 => {
                let (id, tail) = tail.split_first_chunk::<8>()?;
                span = Some(SpanId::from_bytes(*id));
                rest = tail;
            }
            2 => {
                let (&opts, tail) = tail.split_first()?;
                options = opts;
                rest = tail;
            }
            // An unknown field ends what this version can read.
            _ => break,
        }
    }
    let sc = SpanContext::new(
        trace?,
        span?,
        TraceFlags::new(options & 1),
        true,
        TraceState::default(),
    );
    sc.is_valid().then_some(sc)
}

/// Whether spans go through OpenTelemetry (OTLP export on). Without export, a span's context is
/// a [`Light`] value in its extensions: same ids and propagation, a fraction of the cost.
static EXPORTING: AtomicBool = AtomicBool::new(false);

pub(super) fn set_exporting(on: bool) {
    EXPORTING.store(on, Ordering::Relaxed);
}

fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// The W3C context of a trace span when OpenTelemetry is not installed.
#[derive(Debug, Clone)]
struct Light {
    trace_id: TraceId,
    span_id: SpanId,
    flags: TraceFlags,
    state: TraceState,
}

impl Light {
    /// A new span in the trace of `parent` (a caller's context or an enclosing span's).
    fn child_of(trace_id: TraceId, flags: TraceFlags, state: TraceState) -> Self {
        Self {
            trace_id,
            span_id: new_span_id(),
            flags,
            state,
        }
    }

    /// A new span in the trace of `parent` when its span context is valid, else the root of
    /// a new trace.
    fn from_parent(parent: &Context) -> Self {
        let span = parent.span();
        let sc = span.span_context();
        if sc.is_valid() {
            Self::child_of(sc.trace_id(), sc.trace_flags(), sc.trace_state().clone())
        } else {
            Self::root()
        }
    }

    /// The first span of a new, sampled trace.
    fn root() -> Self {
        let trace_id = loop {
            let id = rand::random::<u128>();
            if id != 0 {
                break TraceId::from(id);
            }
        };
        Self::child_of(trace_id, TraceFlags::SAMPLED, TraceState::default())
    }

    fn headers(&self) -> Trace {
        Trace {
            traceparent: format!(
                "00-{}-{}-{:02x}",
                self.trace_id,
                self.span_id,
                self.flags.to_u8()
            ),
            tracestate: self.state.header(),
        }
    }
}

fn new_span_id() -> SpanId {
    loop {
        let id = rand::random::<u64>();
        if id != 0 {
            return SpanId::from(id);
        }
    }
}

/// Without export, the trace context of the API request a task is serving lives in a
/// task-local instead of a span: a span costs tens of µs per request in the subscriber's
/// registry (creation, an enter and exit on every poll, the close), a task-local almost
/// nothing. Log lines written inside the request still get its `route` and `trace_id` (the
/// formatters ask [`log_context`]), and component calls name it as their parent.
#[derive(Debug, Clone)]
pub struct RequestTrace {
    light: Light,
    route: Route,
}

/// The name of a request (or delivery) for its log lines, kept without copying it.
#[derive(Debug, Clone)]
enum Route {
    Template(axum::extract::MatchedPath),
    Path(http::Uri),
    Unmatched,
    /// An event's delivery (`pubsub_delivery`, `binding_event`).
    Call(&'static str),
}

impl Route {
    /// The log field it goes in: `route` for a request, `call` for a delivery.
    fn key(&self) -> &'static str {
        match self {
            Route::Call(_) => "call",
            _ => "route",
        }
    }

    fn as_str(&self) -> &str {
        match self {
            Route::Template(m) => m.as_str(),
            Route::Path(uri) => uri.path(),
            Route::Unmatched => "unmatched",
            Route::Call(name) => name,
        }
    }
}

tokio::task_local! {
    static REQUEST: RequestTrace;
}

/// The `route` (`call` for a delivery) and `trace_id` of the request the current task serves,
/// for a log line, when its context is kept in the task-local (see [`RequestTrace`]): `f` gets
/// the field name, its value and the trace id.
pub fn log_context<T>(f: impl FnOnce(&'static str, &str, TraceId) -> T) -> Option<T> {
    REQUEST
        .try_with(|r| f(r.route.key(), r.route.as_str(), r.light.trace_id))
        .ok()
}

/// The W3C headers naming the current request as the parent, when its context is in the
/// task-local.
fn request_headers() -> Option<Trace> {
    REQUEST.try_with(|r| r.light.headers()).ok()
}

/// The W3C headers of a new client span in the current request's trace (a call to a
/// component has its own span id, as when spans are exported), when its context is in the
/// task-local.
fn call_headers() -> Option<Trace> {
    REQUEST
        .try_with(|r| {
            let l = &r.light;
            Light::child_of(l.trace_id, l.flags, l.state.clone()).headers()
        })
        .ok()
}

/// The trace context for a call to a component made by the current task: a new span id in
/// the request's trace (in the task-local) or, when there is none, a new span's from
/// `make_span`. The span (when one
/// was made) is what the call should run in.
pub fn for_call(metadata: &mut MetadataMap, make_span: impl FnOnce() -> Span) -> Option<Span> {
    if let Some(trace) = call_headers() {
        insert_ascii(metadata, TRACEPARENT, trace.traceparent);
        insert_ascii(metadata, TRACESTATE, trace.tracestate);
        return None;
    }
    let span = make_span();
    inject_grpc(&span, metadata);
    Some(span)
}

/// Runs `f` on the registry data of `span` (none when the span is disabled or the subscriber
/// is not plugd's).
fn with_data<T>(
    span: &Span,
    f: impl FnOnce(tracing_subscriber::registry::SpanRef<'_, Registry>) -> Option<T>,
) -> Option<T> {
    span.with_subscriber(|(id, dispatch)| {
        let registry = dispatch.downcast_ref::<Registry>()?;
        f(registry.span(id)?)
    })
    .flatten()
}

/// Gives `span` its parent — `parent` when it has a valid span context, else the enclosing
/// trace span, else none (a new trace) — and records its trace id in its `trace_id` field when
/// no enclosing span shows it already. `name` and `kind` (`server`, `client`) are the
/// OpenTelemetry span's name and kind, recorded only when spans are exported (the span must
/// declare `otel.name`, `otel.kind` and `trace_id` as empty fields): a log line then pays for
/// no field it does not show.
pub fn start(span: &Span, parent: Context, name: &str, kind: &'static str) {
    if span.is_disabled() {
        return;
    }
    let remote = parent.span().span_context().clone();
    let trace_id = if exporting() {
        span.record("otel.name", name);
        span.record(super::TRACE_MARKER, kind);
        if remote.is_valid() {
            let _ = span.set_parent(parent);
        }
        let cx = span.context();
        let sc = cx.span().span_context().clone();
        sc.is_valid().then(|| sc.trace_id())
    } else {
        with_data(span, |data| {
            let (light, shown) = if remote.is_valid() {
                let light = Light::child_of(
                    remote.trace_id(),
                    remote.trace_flags(),
                    remote.trace_state().clone(),
                );
                (light, false)
            } else {
                match data
                    .scope()
                    .skip(1)
                    .find_map(|s| s.extensions().get::<Light>().cloned())
                {
                    Some(p) => (Light::child_of(p.trace_id, p.flags, p.state), true),
                    None => (Light::root(), false),
                }
            };
            let trace_id = light.trace_id;
            data.extensions_mut().replace(light);
            (!shown).then_some(trace_id)
        })
    };
    if let Some(trace_id) = trace_id {
        span.record("trace_id", tracing::field::display(trace_id));
    }
}

/// The W3C headers naming `span` as the parent (empty strings when `span` has no context).
pub fn headers_of(span: &Span) -> Trace {
    if !exporting() {
        return with_data(span, |data| {
            data.extensions().get::<Light>().map(Light::headers)
        })
        .unwrap_or_default();
    }
    let mut out = Trace::default();
    let cx = span.context();
    if cx.span().span_context().is_valid() {
        TraceContextPropagator::new().inject_context(&cx, &mut TraceInjector(&mut out));
    }
    out
}

/// The W3C context of the current span, for a CloudEvent's `traceparent` / `tracestate`.
pub fn current() -> Trace {
    request_headers().unwrap_or_else(|| headers_of(&Span::current()))
}

/// Adds `traceparent` (and `tracestate` when there is one) naming `span` as the parent.
pub fn inject_grpc(span: &Span, metadata: &mut MetadataMap) {
    let trace = headers_of(span);
    insert_ascii(metadata, TRACEPARENT, trace.traceparent);
    insert_ascii(metadata, TRACESTATE, trace.tracestate);
}

fn insert_ascii(metadata: &mut MetadataMap, key: &'static str, value: String) {
    if value.is_empty() {
        return;
    }
    if let Ok(v) = AsciiMetadataValue::try_from(value) {
        metadata.insert(key, v);
    }
}

/// The trace context of one event's handling (`pubsub_delivery`, `binding_event`): the
/// delivery to the app and every component call that follows from it (a dead-letter publish,
/// the output bindings a gRPC app names) run inside it ([`Delivery::run`]), so they share the
/// event's trace. Child of the event's own trace context when it has a valid one, else the root
/// of a new trace. A span when spans are exported; otherwise the task-local context API
/// requests use, which costs next to nothing per message.
pub struct Delivery {
    inner: DeliveryTrace,
}

enum DeliveryTrace {
    Span(Span),
    Local(RequestTrace),
}

impl Delivery {
    pub fn new(name: &'static str, traceparent: Option<&str>, tracestate: Option<&str>) -> Self {
        let parent = extract_w3c(traceparent, tracestate);
        if !exporting() {
            let light = Light::from_parent(&parent);
            return Self {
                inner: DeliveryTrace::Local(RequestTrace {
                    light,
                    route: Route::Call(name),
                }),
            };
        }
        let span = tracing::error_span!(
            "delivery",
            otel.name = tracing::field::Empty,
            otel.kind = tracing::field::Empty,
            call = name,
            trace_id = tracing::field::Empty,
        );
        start(&span, parent, name, "consumer");
        Self {
            inner: DeliveryTrace::Span(span),
        }
    }

    /// The W3C headers naming this delivery as the parent (of the app's handling).
    pub fn headers(&self) -> Trace {
        match &self.inner {
            DeliveryTrace::Span(span) => headers_of(span),
            DeliveryTrace::Local(local) => local.light.headers(),
        }
    }

    /// Adds `traceparent` (and `tracestate`) naming this delivery as the parent.
    pub fn inject_grpc(&self, metadata: &mut MetadataMap) {
        let trace = self.headers();
        insert_ascii(metadata, TRACEPARENT, trace.traceparent);
        insert_ascii(metadata, TRACESTATE, trace.tracestate);
    }

    /// Runs `future` inside the delivery: log lines and component calls get its trace.
    pub fn run<F: std::future::Future>(
        &self,
        future: F,
    ) -> futures::future::Either<
        Instrumented<F>,
        tokio::task::futures::TaskLocalFuture<RequestTrace, F>,
    > {
        match &self.inner {
            DeliveryTrace::Span(span) => {
                futures::future::Either::Left(future.instrument(span.clone()))
            }
            DeliveryTrace::Local(local) => {
                futures::future::Either::Right(REQUEST.scope(local.clone(), future))
            }
        }
    }
}

struct HeaderCarrier<'a>(&'a http::HeaderMap);

impl Extractor for HeaderCarrier<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

struct PairCarrier<'a> {
    traceparent: Option<&'a str>,
    tracestate: Option<&'a str>,
}

impl Extractor for PairCarrier<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            TRACEPARENT => self.traceparent,
            TRACESTATE => self.tracestate,
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        vec![TRACEPARENT, TRACESTATE]
    }
}

struct TraceInjector<'a>(&'a mut Trace);

impl Injector for TraceInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        match key {
            TRACEPARENT => self.0.traceparent = value,
            TRACESTATE => self.0.tracestate = value,
            _ => {}
        }
    }
}

/// A tower layer giving every API request a server span: its name is the HTTP route template
/// (axum's `MatchedPath`, so use it as a route layer) or the gRPC method path, its parent the
/// caller's trace context.
#[derive(Debug, Clone, Copy)]
pub struct ApiTraceLayer {
    grpc: bool,
}

impl ApiTraceLayer {
    pub fn http() -> Self {
        Self { grpc: false }
    }

    pub fn grpc() -> Self {
        Self { grpc: true }
    }
}

impl<S> tower::Layer<S> for ApiTraceLayer {
    type Service = ApiTrace<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ApiTrace {
            inner,
            grpc: self.grpc,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ApiTrace<S> {
    inner: S,
    grpc: bool,
}

impl<S, B> tower::Service<http::Request<B>> for ApiTrace<S>
where
    S: tower::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures::future::Either<
        Instrumented<S::Future>,
        tokio::task::futures::TaskLocalFuture<RequestTrace, S::Future>,
    >;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let parent = extract_headers(req.headers(), self.grpc);
        if !exporting() {
            let light = Light::from_parent(&parent);
            let route = if self.grpc {
                Route::Path(req.uri().clone())
            } else {
                req.extensions()
                    .get::<axum::extract::MatchedPath>()
                    .cloned()
                    .map_or(Route::Unmatched, Route::Template)
            };
            let trace = RequestTrace { light, route };
            let inner = &mut self.inner;
            let future = REQUEST.sync_scope(trace.clone(), || {
                tracing::debug!("api request");
                inner.call(req)
            });
            return futures::future::Either::Right(REQUEST.scope(trace, future));
        }
        let span = {
            let route = if self.grpc {
                req.uri().path()
            } else {
                req.extensions()
                    .get::<axum::extract::MatchedPath>()
                    .map(|m| m.as_str())
                    .unwrap_or("unmatched")
            };
            // Error level: the span (and the trace id of the lines inside it) is there at
            // every log level; spans themselves print nothing.
            let span = tracing::error_span!(
                "api",
                otel.name = tracing::field::Empty,
                otel.kind = tracing::field::Empty,
                route,
                trace_id = tracing::field::Empty,
            );
            start(&span, parent, route, "server");
            tracing::debug!(parent: &span, "api request");
            span
        };
        futures::future::Either::Left(self.inner.call(req).instrument(span))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `MakeWriter` into a shared buffer.
    #[derive(Clone, Default)]
    struct Buffer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Buffer {
        fn text(&self) -> String {
            String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|e| e.into_inner())).into()
        }
    }

    /// Without export, a request's context is in the task-local: lines written inside it still
    /// name its route and trace id, in both log formats; lines outside do not.
    #[test]
    fn lines_inside_a_request_carry_its_route_and_trace_id() {
        let _turn = super::super::SUBSCRIBER_TESTS
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        use tracing_subscriber::{fmt, layer::SubscriberExt as _};
        let request = RequestTrace {
            light: Light::root(),
            route: Route::Path("/dapr.proto.runtime.v1.Dapr/GetState".parse().expect("uri")),
        };
        let trace_id = request.light.trace_id.to_string();
        let plain = Buffer::default();
        let json = Buffer::default();
        let (p, j) = (plain.clone(), json.clone());
        let subscriber = tracing_subscriber::registry()
            .with(fmt::layer().with_writer(move || p.clone()).event_format(
                super::super::PlainWithRequest(fmt::format().with_ansi(false)),
            ))
            .with(
                fmt::layer()
                    .with_writer(move || j.clone())
                    .fmt_fields(fmt::format::JsonFields::new())
                    .event_format(super::super::json::DaprJson::new("app")),
            );
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!("outside");
            REQUEST.sync_scope(request.clone(), || tracing::info!("inside"));
        });
        let plain = plain.text();
        let inside = plain
            .lines()
            .find(|l| l.contains("inside"))
            .expect("inside line");
        assert!(
            inside.ends_with(&format!(
                " route=/dapr.proto.runtime.v1.Dapr/GetState trace_id={trace_id}"
            )),
            "{inside}"
        );
        let outside = plain
            .lines()
            .find(|l| l.contains("outside"))
            .expect("outside line");
        assert!(!outside.contains("trace_id"), "{outside}");
        let lines: Vec<serde_json::Value> = json
            .text()
            .lines()
            .map(|l| serde_json::from_str(l).expect("JSON line"))
            .collect();
        assert_eq!(lines[0]["msg"], "outside");
        assert!(lines[0].get("trace_id").is_none(), "{}", lines[0]);
        assert_eq!(lines[1]["msg"], "inside");
        assert_eq!(lines[1]["trace_id"], trace_id.as_str());
        assert_eq!(lines[1]["route"], "/dapr.proto.runtime.v1.Dapr/GetState");
    }

    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const SPAN: &str = "00f067aa0ba902b7";

    /// Without export, an event's delivery keeps the event's trace in the task-local: the app
    /// gets a new parent in that trace, a component call inside another one, and log lines the
    /// delivery's `call` and `trace_id`.
    #[test]
    fn a_delivery_continues_the_events_trace() {
        use tracing_subscriber::{fmt, layer::SubscriberExt as _};
        let _turn = super::super::SUBSCRIBER_TESTS
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let tp = format!("00-{TRACE}-{SPAN}-01");
        let delivery = Delivery::new("pubsub_delivery", Some(&tp), Some("k=v"));
        let to_app = delivery.headers();
        assert!(to_app.traceparent.starts_with(&format!("00-{TRACE}-")));
        assert!(!to_app.traceparent.contains(SPAN), "{}", to_app.traceparent);
        assert_eq!(to_app.tracestate, "k=v");
        let json = Buffer::default();
        let j = json.clone();
        let subscriber = tracing_subscriber::registry().with(
            fmt::layer()
                .with_writer(move || j.clone())
                .fmt_fields(fmt::format::JsonFields::new())
                .event_format(super::super::json::DaprJson::new("app")),
        );
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let mut metadata = MetadataMap::new();
        tracing::subscriber::with_default(subscriber, || {
            runtime.block_on(delivery.run(async {
                tracing::info!("delivered");
                for_call(&mut metadata, || {
                    panic!("no span is made inside a delivery")
                });
            }));
        });
        let to_component = metadata
            .get(TRACEPARENT)
            .and_then(|v| v.to_str().ok())
            .expect("traceparent");
        assert!(to_component.starts_with(&format!("00-{TRACE}-")));
        assert_ne!(to_component, to_app.traceparent);
        let line: serde_json::Value =
            serde_json::from_str(json.text().trim()).expect("one JSON line");
        assert_eq!(line["call"], "pubsub_delivery");
        assert_eq!(line["trace_id"], TRACE);
    }

    #[test]
    fn w3c_headers_parse_and_bad_ones_are_ignored() {
        let tp = format!("00-{TRACE}-{SPAN}-01");
        let cx = extract_w3c(Some(&tp), Some("k=v"));
        let sc = cx.span().span_context().clone();
        assert_eq!(sc.trace_id().to_string(), TRACE);
        assert_eq!(sc.span_id().to_string(), SPAN);
        assert!(sc.is_sampled());
        assert_eq!(sc.trace_state().header(), "k=v");
        for bad in [
            "",
            "garbage",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01x",
            "zz-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            let cx = extract_w3c(Some(bad), None);
            assert!(!cx.span().span_context().is_valid(), "{bad:?}");
        }
    }

    fn trace_bin(trace: [u8; 16], span: [u8; 8], options: u8) -> Vec<u8> {
        let mut out = vec![0u8, 0];
        out.extend_from_slice(&trace);
        out.push(1);
        out.extend_from_slice(&span);
        out.extend_from_slice(&[2, options]);
        out
    }

    #[test]
    fn grpc_trace_bin_parses_and_bad_ones_are_ignored() {
        let bytes = trace_bin([7; 16], [9; 8], 1);
        let sc = parse_grpc_trace_bin(&bytes).expect("valid");
        assert_eq!(sc.trace_id(), TraceId::from_bytes([7; 16]));
        assert_eq!(sc.span_id(), SpanId::from_bytes([9; 8]));
        assert!(sc.is_sampled());
        // Options are optional.
        assert!(parse_grpc_trace_bin(&bytes[..bytes.len() - 2]).is_some());
        assert!(parse_grpc_trace_bin(&[]).is_none());
        assert!(parse_grpc_trace_bin(&bytes[..10]).is_none());
        let mut v1 = bytes.clone();
        v1[0] = 1;
        assert!(parse_grpc_trace_bin(&v1).is_none());
        assert!(parse_grpc_trace_bin(&trace_bin([0; 16], [9; 8], 1)).is_none());
        assert!(parse_grpc_trace_bin(&trace_bin([7; 16], [0; 8], 1)).is_none());

        let mut headers = http::HeaderMap::new();
        let encoded = base64::engine::general_purpose::STANDARD_NO_PAD.encode(&bytes);
        headers.insert(GRPC_TRACE_BIN, encoded.parse().expect("header"));
        let cx = extract_headers(&headers, true);
        assert_eq!(
            cx.span().span_context().trace_id(),
            TraceId::from_bytes([7; 16])
        );
        assert!(
            !extract_headers(&headers, false)
                .span()
                .span_context()
                .is_valid()
        );
        headers.insert(GRPC_TRACE_BIN, "!!!".parse().expect("header"));
        assert!(
            !extract_headers(&headers, true)
                .span()
                .span_context()
                .is_valid()
        );
    }
}
