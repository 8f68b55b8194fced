//! Bringing component instances up: socket → kind check → properties → dial → Init →
//! Features → Ping, the whole of it bounded by the component's `initTimeout`.

use std::{collections::HashMap, path::PathBuf, sync::Arc, time::Duration};

use async_trait::async_trait;
use tracing::Instrument;

use crate::{
    component::{
        ComponentError, ComponentKind, Connection, dial,
        state::{GrpcStateStore, KEY_PREFIX, KeyPrefix, StateStore},
    },
    config::{
        Config,
        manifest::{Category, ComponentManifest, MetadataValue},
    },
    discovery::Discovery,
    registry::{ComponentInfo, ComponentStatus, Snapshot, StateEntry},
};

/// Why one component could not be brought up.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error(
        "no component socket for type {type_name:?}: expected a socket named {expected} (any extension) in {folder}"
    )]
    NoSocket {
        type_name: String,
        expected: String,
        folder: PathBuf,
    },
    #[error("socket {} for type {type_name:?} is unusable: {reason}", .socket.display())]
    BadSocket {
        type_name: String,
        socket: PathBuf,
        reason: String,
    },
    #[error("socket {} serves {served}, not {wanted}", .socket.display())]
    WrongKind {
        socket: PathBuf,
        served: String,
        wanted: String,
    },
    #[error("metadata {field}: {reason}")]
    Metadata { field: String, reason: String },
    #[error("init did not finish within initTimeout {0:?}; abandoned")]
    Timeout(Duration),
    #[error("{0}")]
    Component(#[from] ComponentError),
}

/// Resolves `secretKeyRef` values from a secret store.
#[async_trait]
pub trait SecretSource: Send + Sync {
    async fn secret(&self, store: &str, name: &str, key: Option<&str>) -> Result<String, String>;
}

/// The secret source while plugd serves no secret stores: every reference fails clearly.
pub struct NoSecretStores;

#[async_trait]
impl SecretSource for NoSecretStores {
    async fn secret(&self, store: &str, _name: &str, _key: Option<&str>) -> Result<String, String> {
        Err(format!(
            "secret store {store:?} is not available: this plugd version does not serve secret stores yet"
        ))
    }
}

/// Values used by metadata templates (`{uuid}`, `{appID}`, `{namespace}`, `{podName}`).
#[derive(Debug, Clone)]
pub struct TemplateContext {
    pub app_id: String,
    pub namespace: Option<String>,
    pub pod_name: Option<String>,
}

/// Turns a manifest's metadata into the `properties` sent with Init.
pub async fn resolve_properties(
    m: &ComponentManifest,
    ctx: &TemplateContext,
    secrets: &dyn SecretSource,
    env: &(dyn Fn(&str) -> Option<String> + Sync),
) -> Result<HashMap<String, String>, InitError> {
    let mut props = HashMap::new();
    for item in &m.metadata {
        let value = match &item.value {
            MetadataValue::Plain(v) => {
                apply_templates(v, ctx).map_err(|reason| InitError::Metadata {
                    field: item.name.clone(),
                    reason,
                })?
            }
            MetadataValue::EnvRef(var) => {
                env_value(var, env).map_err(|reason| InitError::Metadata {
                    field: item.name.clone(),
                    reason,
                })?
            }
            MetadataValue::SecretKeyRef { name, key } => {
                let store = m.secret_store.as_deref().unwrap_or("");
                if store.is_empty() {
                    return Err(InitError::Metadata {
                        field: item.name.clone(),
                        reason: format!("secretKeyRef {name:?} needs auth.secretStore"),
                    });
                }
                secrets
                    .secret(store, name, key.as_deref())
                    .await
                    .map_err(|reason| InitError::Metadata {
                        field: item.name.clone(),
                        reason: format!("secretKeyRef {name:?}: {reason}"),
                    })?
            }
        };
        props.insert(item.name.clone(), value);
    }
    Ok(props)
}

fn env_value(var: &str, env: &(dyn Fn(&str) -> Option<String> + Sync)) -> Result<String, String> {
    let upper = var.to_ascii_uppercase();
    if upper.starts_with("DAPR_") || upper == "APP_API_TOKEN" {
        return Err(format!(
            "envRef {var:?} is not allowed (DAPR_* and APP_API_TOKEN are reserved)"
        ));
    }
    if let Some(allow) = env("DAPR_ENV_KEYS").filter(|s| !s.trim().is_empty())
        && !allow.split([',', ' ']).any(|k| k == var)
    {
        return Err(format!("envRef {var:?} is not listed in DAPR_ENV_KEYS"));
    }
    match env(var) {
        Some(v) => Ok(v),
        None => {
            tracing::warn!(
                variable = var,
                "envRef names an unset environment variable; using an empty value"
            );
            Ok(String::new())
        }
    }
}

fn apply_templates(value: &str, ctx: &TemplateContext) -> Result<String, String> {
    if !value.contains('{') {
        return Ok(value.to_string());
    }
    let mut out = value.to_string();
    while out.contains("{uuid}") {
        out = out.replacen("{uuid}", &uuid::Uuid::new_v4().to_string(), 1);
    }
    if out.contains("{podName}") {
        let pod = ctx
            .pod_name
            .as_deref()
            .ok_or("{podName} is used but POD_NAME is not set")?;
        out = out.replace("{podName}", pod);
    }
    if out.contains("{namespace}") {
        let ns = ctx.namespace.as_deref().unwrap_or("default");
        out = out.replace("{namespace}", &format!("{ns}.{}", ctx.app_id));
    }
    Ok(out.replace("{appID}", &ctx.app_id))
}

/// The outcome of bringing up every component.
pub struct Started {
    pub snapshot: Snapshot,
    /// Failures of components without `ignoreErrors`: plugd must not serve.
    pub fatal: Vec<(String, InitError)>,
}

/// Brings up every component concurrently, each bounded by its own `initTimeout`.
pub async fn start_all(
    manifests: Vec<ComponentManifest>,
    discovery: Discovery,
    config: &Config,
) -> Started {
    let ctx = TemplateContext {
        app_id: config.app_id.clone(),
        namespace: config.namespace.clone(),
        pod_name: std::env::var("POD_NAME").ok(),
    };
    let env = |k: &str| std::env::var(k).ok();
    let tasks = manifests.iter().map(|m| {
        let span = tracing::info_span!("component", name = %m.name, r#type = %m.type_name());
        start_one(m, &discovery, config, &ctx, &env).instrument(span)
    });
    let results = futures::future::join_all(tasks).await;

    let mut snapshot = Snapshot::default();
    let mut fatal = Vec::new();
    for (m, result) in manifests.iter().zip(results) {
        let socket = discovery.socket(&m.socket_name).map(|s| s.path.clone());
        let mut info = ComponentInfo {
            name: m.name.clone(),
            type_name: m.type_name(),
            version: if m.version.is_empty() {
                "v1".into()
            } else {
                m.version.clone()
            },
            kinds: m.category.kinds().to_vec(),
            socket,
            file: m.file.clone(),
            features: Vec::new(),
            status: ComponentStatus::Ready,
        };
        match result {
            Ok(Instance::State {
                store,
                features,
                key_prefix,
            }) => {
                info.features = features;
                let info = Arc::new(info);
                tracing::info!(component = %m.name, r#type = %info.type_name, features = ?info.features, "component ready");
                snapshot.state.insert(
                    m.name.clone(),
                    Arc::new(StateEntry {
                        info: info.clone(),
                        store,
                        key_prefix,
                    }),
                );
                snapshot.components.push(info);
            }
            Ok(Instance::NotServed(reason)) => {
                tracing::warn!(component = %m.name, r#type = %info.type_name, "{reason}");
                info.status = ComponentStatus::NotServed { reason };
                snapshot.components.push(Arc::new(info));
            }
            Err(e) => {
                let error = e.to_string();
                if m.ignore_errors {
                    tracing::warn!(component = %m.name, r#type = %info.type_name, %error, "component failed; ignored (ignoreErrors)");
                } else {
                    tracing::error!(component = %m.name, r#type = %info.type_name, %error, "component failed");
                    fatal.push((m.name.clone(), e));
                }
                info.status = ComponentStatus::Failed {
                    error,
                    ignored: m.ignore_errors,
                };
                snapshot.components.push(Arc::new(info));
            }
        }
    }
    snapshot.discovery = discovery;
    Started { snapshot, fatal }
}

enum Instance {
    State {
        store: Arc<dyn StateStore>,
        features: Vec<String>,
        key_prefix: KeyPrefix,
    },
    NotServed(String),
}

async fn start_one(
    m: &ComponentManifest,
    discovery: &Discovery,
    config: &Config,
    ctx: &TemplateContext,
    env: &(dyn Fn(&str) -> Option<String> + Sync),
) -> Result<Instance, InitError> {
    let socket = match discovery.socket(&m.socket_name) {
        Some(s) => s,
        None => {
            return Err(match discovery.failure(&m.socket_name) {
                Some(f) => InitError::BadSocket {
                    type_name: m.type_name(),
                    socket: f.path.clone(),
                    reason: f.reason.clone(),
                },
                None => InitError::NoSocket {
                    type_name: m.type_name(),
                    expected: format!("{}.sock", m.socket_name),
                    folder: discovery.folder.clone(),
                },
            });
        }
    };
    let wanted = m.category.kinds();
    if !wanted.iter().any(|k| socket.kinds.contains(k)) {
        return Err(InitError::WrongKind {
            socket: socket.path.clone(),
            served: join_kinds(&socket.kinds),
            wanted: join_kinds(wanted),
        });
    }
    if m.category != Category::State {
        return Ok(Instance::NotServed(format!(
            "{} components are discovered but not served by this plugd version yet",
            m.category.prefix()
        )));
    }
    let properties = resolve_properties(m, ctx, &NoSecretStores, env).await?;
    let key_prefix = KeyPrefix::from_metadata(
        properties.get(KEY_PREFIX).map(String::as_str),
        &config.app_id,
        &m.name,
        config.namespace.as_deref(),
    )
    .map_err(|reason| InitError::Metadata {
        field: KEY_PREFIX.into(),
        reason,
    })?;
    let timeout = m.init_timeout;
    let path = socket.path.clone();
    let deadline = tokio::time::Instant::now() + timeout;
    let init = async {
        let channel = dial(&path, timeout).await?;
        let conn = Connection::new(channel, &m.name, path.clone(), config.call_timeout)?;
        let (store, features) = GrpcStateStore::init(conn, properties, deadline).await?;
        store.ping().await?;
        Ok::<_, ComponentError>((store, features))
    };
    match tokio::time::timeout_at(deadline, init).await {
        Ok(Ok((store, features))) => Ok(Instance::State {
            store: Arc::new(store),
            features,
            key_prefix,
        }),
        // A call cut short by the init deadline is the init timing out.
        Ok(Err(ComponentError::Timeout { .. })) if tokio::time::Instant::now() >= deadline => {
            Err(InitError::Timeout(timeout))
        }
        Err(_) => Err(InitError::Timeout(timeout)),
        Ok(Err(e)) => Err(e.into()),
    }
}

fn join_kinds(kinds: &[ComponentKind]) -> String {
    if kinds.is_empty() {
        return "no component service".into();
    }
    kinds
        .iter()
        .map(|k| k.as_str())
        .collect::<Vec<_>>()
        .join(" and ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> TemplateContext {
        TemplateContext {
            app_id: "app1".into(),
            namespace: Some("prod".into()),
            pod_name: None,
        }
    }

    #[test]
    fn templates() {
        assert_eq!(apply_templates("x-{appID}", &ctx()), Ok("x-app1".into()));
        assert_eq!(
            apply_templates("{namespace}", &ctx()),
            Ok("prod.app1".into())
        );
        let u = apply_templates("{uuid}", &ctx()).expect("uuid");
        assert_eq!(u.len(), 36);
        assert!(apply_templates("{podName}", &ctx()).is_err());
    }

    #[test]
    fn env_refs_are_guarded() {
        let env = |k: &str| match k {
            "TOKEN" => Some("t".to_string()),
            "DAPR_ENV_KEYS" => None,
            _ => None,
        };
        assert_eq!(env_value("TOKEN", &env), Ok("t".into()));
        assert!(env_value("DAPR_API_TOKEN", &env).is_err());
        assert!(env_value("APP_API_TOKEN", &env).is_err());
        let allow = |k: &str| match k {
            "DAPR_ENV_KEYS" => Some("OTHER".to_string()),
            "TOKEN" => Some("t".to_string()),
            _ => None,
        };
        assert!(env_value("TOKEN", &allow).is_err());
    }
}
