//! `plugd inspect`: what component sockets serve, seen as plugd sees them.
//!
//! For each socket: whether it can be dialled (and why not), the services its gRPC reflection
//! lists (v1alpha, else v1), the component kinds those make, and per kind the `Features` answer
//! and the `Ping` round-trip time. Nothing is initialised: `Features` and `Ping` are asked of a
//! fresh instance (`x-component-instance: plugd-inspect`), so a component that refuses them
//! before Init shows that refusal.
//!
//! Kinds are named as `plugd conformance --kind` spells them (`state`, `pubsub`,
//! `input-binding`, `output-binding`, `secretstore`), statuses as `CODE: message`
//! (`FAILED_PRECONDITION: …`, the component's text made safe to print), like conformance.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use serde::Serialize;
use tonic::{metadata::MetadataValue, transport::Channel};

use crate::{
    component::{ComponentKind, dial},
    discovery,
    proto::components as pb,
};

/// The instance name inspect's calls carry.
pub const INSTANCE: &str = "plugd-inspect";

/// What one socket serves.
#[derive(Debug, Clone, Serialize)]
pub struct SocketReport {
    pub socket: PathBuf,
    /// The component type name the socket gives (`<kind>.<stem>`'s stem).
    pub stem: String,
    pub reachable: bool,
    /// Why it is not usable, when it is not.
    pub error: Option<String>,
    /// `v1alpha` or `v1`.
    pub reflection: Option<&'static str>,
    pub services: Vec<String>,
    pub kinds: Vec<KindReport>,
}

/// One kind a socket serves.
#[derive(Debug, Clone, Serialize)]
pub struct KindReport {
    /// `state`, `pubsub`, `input-binding`, `output-binding` or `secretstore`.
    pub kind: &'static str,
    /// The features reported (bindings have none).
    pub features: Vec<String>,
    /// An output binding's operations (`ListOperations`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub operations: Option<Vec<String>>,
    /// Why the features (or operations) could not be read.
    pub features_error: Option<String>,
    /// Ping's round trip in milliseconds (rounded to 3 decimals), when the component answered
    /// (even with an error status, such as "not initialised").
    pub ping_ms: Option<f64>,
    /// The error status Ping answered with, or why it got no answer.
    pub ping_error: Option<String>,
}

/// Inspects one socket.
pub async fn socket(path: &Path, timeout: Duration) -> SocketReport {
    let mut report = SocketReport {
        socket: path.to_path_buf(),
        stem: discovery::type_name(path),
        reachable: false,
        error: None,
        reflection: None,
        services: Vec::new(),
        kinds: Vec::new(),
    };
    let (services, reflection) = match discovery::probe(path, timeout).await {
        Ok(found) => found,
        Err(e) => {
            report.error = Some(crate::conformance::sanitize(&e, 300));
            return report;
        }
    };
    report.reachable = true;
    report.reflection = Some(reflection);
    report.services = services
        .iter()
        .map(|s| crate::conformance::sanitize(s, 200))
        .collect();
    let kinds: Vec<ComponentKind> = ComponentKind::ALL
        .into_iter()
        .filter(|k| report.services.iter().any(|s| s == k.service_name()))
        .collect();
    if kinds.is_empty() {
        report.error = Some("no dapr.proto.components.v1 service is listed".into());
        return report;
    }
    let channel = match dial(path, timeout).await {
        Ok(c) => c,
        Err(e) => {
            report.error = Some(crate::conformance::sanitize(&e.detail(), 300));
            return report;
        }
    };
    for kind in kinds {
        let (listed, features_error) = match bounded(timeout, features(channel.clone(), kind)).await
        {
            Ok(Ok(f)) => (
                f.iter()
                    .map(|f| crate::conformance::sanitize(f, 100))
                    .collect(),
                None,
            ),
            Ok(Err(status)) => (Vec::new(), Some(describe(&status))),
            Err(e) => (Vec::new(), Some(e)),
        };
        let (features, operations) = match kind {
            ComponentKind::OutputBinding => (Vec::new(), Some(listed)),
            _ => (listed, None),
        };
        let started = Instant::now();
        let (ping_ms, ping_error) = match bounded(timeout, ping(channel.clone(), kind)).await {
            Ok(answered) => (
                Some((started.elapsed().as_secs_f64() * 1_000_000.0).round() / 1000.0),
                answered.err().map(|s| describe(&s)),
            ),
            Err(e) => (None, Some(e)),
        };
        report.kinds.push(KindReport {
            kind: crate::conformance::kind_label(kind),
            features,
            operations,
            features_error,
            ping_ms,
            ping_error,
        });
    }
    report
}

/// Inspects every socket in `folder` (files that are sockets, or symlinks to them).
pub async fn folder(folder: &Path, timeout: Duration) -> Result<Vec<SocketReport>, String> {
    if let Err(e) = std::fs::read_dir(folder) {
        return Err(e.to_string());
    }
    let listing = discovery::list_sockets(folder);
    let mut paths: Vec<PathBuf> = listing.sockets.into_iter().map(|(p, _)| p).collect();
    paths.sort();
    let mut reports = Vec::with_capacity(paths.len());
    for path in paths {
        reports.push(socket(&path, timeout).await);
    }
    Ok(reports)
}

/// A table: one line per kind a socket serves (or one line for a socket that cannot be used).
pub fn table(reports: &[SocketReport]) -> String {
    let mut rows = vec![[
        "SOCKET".to_string(),
        "STATUS".into(),
        "KIND".into(),
        "FEATURES".into(),
        "PING".into(),
    ]];
    for r in reports {
        let name = r.socket.display().to_string();
        if !r.reachable || r.kinds.is_empty() {
            let status = if r.reachable {
                "no components"
            } else {
                "unreachable"
            };
            rows.push([
                name,
                status.into(),
                "-".into(),
                r.error.clone().unwrap_or_default(),
                "-".into(),
            ]);
            continue;
        }
        for k in &r.kinds {
            let features = match (&k.features_error, &k.operations, k.features.is_empty()) {
                (Some(e), _, _) => format!("error: {e}"),
                (None, Some(ops), _) => format!("operations: {}", ops.join(" ")),
                (None, None, true) => "(none)".to_string(),
                (None, None, false) => k.features.join(","),
            };
            let ping = match (k.ping_ms, &k.ping_error) {
                (Some(ms), None) => format!("{ms:.2} ms"),
                (Some(ms), Some(e)) => format!("{ms:.2} ms, answered {e}"),
                (None, Some(e)) => format!("error: {e}"),
                (None, None) => "-".to_string(),
            };
            rows.push([
                name.clone(),
                format!("ok ({})", r.reflection.unwrap_or("?")),
                k.kind.to_string(),
                features,
                ping,
            ]);
        }
    }
    let widths: Vec<usize> = (0..5)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

fn request<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("x-component-instance", MetadataValue::from_static(INSTANCE));
    request
}

/// The call's own result, or why it got no answer in time.
async fn bounded<T>(
    timeout: Duration,
    fut: impl std::future::Future<Output = Result<T, tonic::Status>>,
) -> Result<Result<T, tonic::Status>, String> {
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| format!("no answer within {timeout:?}"))
}

fn describe(status: &tonic::Status) -> String {
    crate::conformance::describe_status(status)
}

async fn features(channel: Channel, kind: ComponentKind) -> Result<Vec<String>, tonic::Status> {
    let req = pb::FeaturesRequest {};
    let features = match kind {
        ComponentKind::State => {
            pb::state_store_client::StateStoreClient::new(channel)
                .features(request(req))
                .await?
        }
        ComponentKind::PubSub => {
            pb::pub_sub_client::PubSubClient::new(channel)
                .features(request(req))
                .await?
        }
        // Bindings have no Features call: an input binding has none to show, an output binding
        // lists its operations instead.
        ComponentKind::InputBinding => return Ok(Vec::new()),
        ComponentKind::OutputBinding => {
            return Ok(pb::output_binding_client::OutputBindingClient::new(channel)
                .list_operations(request(pb::ListOperationsRequest {}))
                .await?
                .into_inner()
                .operations);
        }
        ComponentKind::SecretStore => {
            pb::secret_store_client::SecretStoreClient::new(channel)
                .features(request(req))
                .await?
        }
    };
    Ok(features.into_inner().features)
}

async fn ping(channel: Channel, kind: ComponentKind) -> Result<(), tonic::Status> {
    let req = pb::PingRequest {};
    match kind {
        ComponentKind::State => {
            pb::state_store_client::StateStoreClient::new(channel)
                .ping(request(req))
                .await?;
        }
        ComponentKind::PubSub => {
            pb::pub_sub_client::PubSubClient::new(channel)
                .ping(request(req))
                .await?;
        }
        ComponentKind::InputBinding => {
            pb::input_binding_client::InputBindingClient::new(channel)
                .ping(request(req))
                .await?;
        }
        ComponentKind::OutputBinding => {
            pb::output_binding_client::OutputBindingClient::new(channel)
                .ping(request(req))
                .await?;
        }
        ComponentKind::SecretStore => {
            pb::secret_store_client::SecretStoreClient::new(channel)
                .ping(request(req))
                .await?;
        }
    }
    Ok(())
}
