//! The Prometheus endpoint (`GET /metrics` on `--metrics-port`).
//!
//! Metrics are read from the registry when scraped:
//!
//! | name | type | labels |
//! |---|---|---|
//! | `plugd_build_info` | gauge (1) | `version` |
//! | `plugd_component_status` | gauge (1 for the current status) | `component`, `type`, `status` |
//! | `plugd_component_ready` | gauge (0/1) | `component`, `type` |
//! | `plugd_sockets_discovered` | gauge | |
//! | `plugd_sockets_unusable` | gauge | |
//! | `plugd_managed_component_restarts_total` | counter | `socket` |

use std::{fmt::Write, net::SocketAddr, sync::Arc};

use axum::{Router, extract::State, http::header, response::IntoResponse, routing::get};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{managed::Managed, registry::Registry};

#[derive(Clone)]
struct Sources {
    registry: Arc<Registry>,
    managed: Arc<Managed>,
}

/// Binds the metrics port and serves until `stop`. A port that cannot be bound is logged and
/// metrics are off: it does not stop plugd.
pub async fn serve(
    addr: SocketAddr,
    registry: Arc<Registry>,
    managed: Arc<Managed>,
    stop: CancellationToken,
) -> Option<SocketAddr> {
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
        .with_state(Sources { registry, managed });
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
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        exposition(&s.registry, &s.managed),
    )
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
