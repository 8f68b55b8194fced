//! Logs, trace context and optional OTLP export.
//!
//! Logs are plain text or, with `--log-as-json`, one JSON object per line in Dapr's schema
//! ([`json`]), filtered by `--log-level` or `RUST_LOG`. Every API request and every component
//! call runs in a span whose OpenTelemetry context comes from the caller's `traceparent` (or
//! `grpc-trace-bin`) and travels on to components and the app ([`trace`]). With an OTLP
//! endpoint the spans are exported over OTLP/gRPC; without one they are dropped when they end.

pub mod json;
pub mod trace;

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::{
    Resource,
    trace::{Sampler, SdkTracerProvider},
};
use tracing_subscriber::{
    EnvFilter, Layer as _, filter::filter_fn, fmt, layer::SubscriberExt as _,
};

/// How logs and traces are set up.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// A daprd level name (`debug`, `info`, `warn`, `error`, `fatal`) or any `tracing` filter
    /// directive; `RUST_LOG` wins when it is set.
    pub level: String,
    /// Dapr's JSON log schema instead of plain text.
    pub json: bool,
    /// `app_id` on JSON log lines and the OTLP `service.name`.
    pub app_id: String,
    /// Where to export spans (OTLP/gRPC without TLS, `http://host:4317` or `host:4317`);
    /// none: no export.
    pub otlp_endpoint: Option<String>,
}

/// Keeps the tracer provider; [`Telemetry::shutdown`] flushes the spans not yet exported.
#[derive(Debug)]
pub struct Telemetry {
    provider: SdkTracerProvider,
    exporting: bool,
}

impl Telemetry {
    /// Exports what is left (bounded), then stops exporting.
    pub fn shutdown(self) {
        if self.exporting
            && let Err(e) = self.provider.shutdown_with_timeout(Duration::from_secs(5))
        {
            tracing::warn!(error = %e, "the last spans could not be exported");
        }
    }
}

/// The field that marks a span as a trace span (exported, carrying a trace context). Its value
/// is the OpenTelemetry span kind (`server`, `client`, `consumer`, `producer`).
pub const TRACE_MARKER: &str = "otel.kind";

/// Installs the global subscriber. Call it inside a Tokio runtime when `otlp_endpoint` is set
/// (the exporter's channel needs one).
pub fn init(settings: &Settings) -> anyhow::Result<Telemetry> {
    let (provider, exporting) = tracer_provider(settings)?;
    trace::set_exporting(exporting);
    let subscriber = subscriber(settings, exporting.then_some(&provider))?;
    tracing::subscriber::set_global_default(subscriber)
        .map_err(|e| anyhow::anyhow!("cannot install the log subscriber: {e}"))?;
    Ok(Telemetry {
        provider,
        exporting,
    })
}

/// The subscriber [`init`] installs: the log layer, and the OpenTelemetry layer when `export`
/// gives a provider.
fn subscriber(
    settings: &Settings,
    export: Option<&SdkTracerProvider>,
) -> anyhow::Result<Box<dyn tracing::Subscriber + Send + Sync>> {
    let filter = env_filter(&settings.level)?;
    // With export, the spans that carry a trace context go to OpenTelemetry, at any log level
    // (context activation on every poll is not needed: the context is read from the span).
    // Without, `trace` keeps their context itself, at a fraction of the cost.
    let otel = export.map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("plugd"))
            .with_context_activation(false)
            .with_tracked_inactivity(false)
            .with_location(false)
            .with_threads(false)
            .with_level(false)
            .with_target(false)
            .with_filter(filter_fn(|meta| {
                meta.is_span() && meta.fields().field(TRACE_MARKER).is_some()
            }))
    });
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let logs = if settings.json {
        fmt::layer()
            .with_writer(std::io::stderr)
            .fmt_fields(fmt::format::JsonFields::new())
            .event_format(json::DaprJson::new(&settings.app_id))
            .with_filter(filter)
            .boxed()
    } else {
        fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(ansi)
            .event_format(PlainWithRequest(fmt::format().with_ansi(ansi)))
            .with_filter(filter)
            .boxed()
    };
    // Trace spans exist whatever the log filter says, so their context always travels on.
    let keep_trace_spans =
        tracing_subscriber::layer::Identity::new().with_filter(filter_fn(|meta| {
            meta.is_span() && meta.fields().field(TRACE_MARKER).is_some()
        }));
    // No `Option` layer: a `None` layer answers "always" for every callsite, so the registry
    // would create every span of every crate (h2's trace-level ones included) and check every
    // event, whatever the filters say. That cost ~30 µs per forwarded request.
    let registry = tracing_subscriber::registry()
        .with(logs)
        .with(keep_trace_spans);
    Ok(match otel {
        Some(otel) => Box::new(registry.with(otel)),
        None => Box::new(registry),
    })
}

/// The plain format, plus ` route=… trace_id=…` (` call=… trace_id=…` for an event's
/// delivery) on the lines written inside an API request or a delivery whose trace context is
/// kept in a task-local rather than a span ([`trace::RequestTrace`]).
struct PlainWithRequest(fmt::format::Format);

impl<S, N> fmt::FormatEvent<S, N> for PlainWithRequest
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &fmt::FmtContext<'_, S, N>,
        mut writer: fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let Some((key, route, trace_id)) =
            trace::log_context(|key, route, trace_id| (key, route.to_string(), trace_id))
        else {
            return self.0.format_event(ctx, writer, event);
        };
        let mut line = String::new();
        self.0
            .format_event(ctx, fmt::format::Writer::new(&mut line), event)?;
        let line = line.strip_suffix('\n').unwrap_or(&line);
        writeln!(writer, "{line} {key}={route} trace_id={trace_id}")
    }
}

/// Plain logs only, no trace context: for the `plugd conformance` / `plugd inspect` tools.
pub fn init_plain(level: &str) -> anyhow::Result<()> {
    fmt()
        .with_env_filter(env_filter(level)?)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init()
        .map_err(|e| anyhow::anyhow!("cannot install the log subscriber: {e}"))
}

fn env_filter(level: &str) -> anyhow::Result<EnvFilter> {
    let directive = match level.to_ascii_lowercase().as_str() {
        "fatal" => "error".to_string(),
        "warning" => "warn".to_string(),
        other => other.to_string(),
    };
    Ok(match std::env::var("RUST_LOG") {
        Ok(env) if !env.is_empty() => EnvFilter::try_new(&env)
            .map_err(|e| anyhow::anyhow!("invalid RUST_LOG {env:?}: {e}"))?,
        _ => EnvFilter::try_new(&directive)
            .map_err(|e| anyhow::anyhow!("invalid --log-level {level:?}: {e}"))?,
    })
}

/// The provider every trace span goes through. The sampler follows the caller's sampled flag
/// and samples new traces, so the flag the caller chose travels on unchanged. Without an
/// exporter it has no processor: ended spans are dropped.
fn tracer_provider(settings: &Settings) -> anyhow::Result<(SdkTracerProvider, bool)> {
    let builder = SdkTracerProvider::builder()
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::AlwaysOn)))
        .with_resource(
            Resource::builder()
                .with_service_name(if settings.app_id.is_empty() {
                    "plugd".to_string()
                } else {
                    settings.app_id.clone()
                })
                .build(),
        );
    match settings.otlp_endpoint.as_deref().filter(|e| !e.is_empty()) {
        None => Ok((builder.build(), false)),
        Some(endpoint) => {
            // `host:port` as Dapr's OpenTelemetry settings take it: plain (no TLS) gRPC.
            let url = if endpoint.contains("://") {
                endpoint.to_string()
            } else {
                format!("http://{endpoint}")
            };
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(url)
                .with_timeout(Duration::from_secs(10))
                .build()
                .map_err(|e| anyhow::anyhow!("invalid --otlp-endpoint {endpoint:?}: {e}"))?;
            Ok((builder.with_batch_exporter(exporter).build(), true))
        }
    }
}

/// Tests that install a subscriber take turns: callsite interest is shared by every live
/// subscriber in the process.
#[cfg(test)]
static SUBSCRIBER_TESTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[cfg(test)]
mod tests {
    use super::*;
    use tracing::Level;

    fn settings(level: &str) -> Settings {
        Settings {
            level: level.into(),
            ..Default::default()
        }
    }

    /// Without export, a span the filters leave out is not created at all: no per-request
    /// cost for the trace-level spans of h2 and hyper. (A layer stack with an `Option` layer
    /// set to `None` enabled every callsite.)
    #[test]
    fn spans_the_filters_leave_out_are_never_created() {
        let _turn = SUBSCRIBER_TESTS.lock().unwrap_or_else(|e| e.into_inner());
        for json in [false, true] {
            let settings = Settings {
                json,
                ..settings("info")
            };
            let subscriber = subscriber(&settings, None).expect("subscriber");
            tracing::subscriber::with_default(subscriber, || {
                assert!(!tracing::span_enabled!(target: "h2::proto", Level::TRACE));
                assert!(!tracing::span_enabled!(target: "plugd::api", Level::DEBUG));
                assert!(!tracing::event_enabled!(target: "hyper", Level::DEBUG));
                assert!(tracing::event_enabled!(target: "plugd::api", Level::INFO));
                // A trace span is kept at any level (it carries the trace context).
                let marked = tracing::error_span!("api", otel.kind = tracing::field::Empty);
                assert!(!marked.is_disabled());
            });
        }
    }
}
