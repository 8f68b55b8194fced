//! Bringing component instances up: socket → kind check → properties → dial → Init →
//! Features → Ping, the whole of it bounded by the component's `initTimeout`.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::Arc,
    time::{Duration, SystemTime},
};

use async_trait::async_trait;
use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::{
    component::{
        ComponentError, ComponentKind, Connection,
        bindings::{GrpcBinding, InputBinding, OutputBinding},
        dial_watched,
        pubsub::{GrpcPubSub, PubSub},
        secretstore::{GrpcSecretStore, SecretStore},
        state::{GrpcStateStore, KEY_PREFIX, KeyPrefix, StateStore},
    },
    config::{
        Config,
        manifest::{Category, ComponentManifest, MetadataValue},
    },
    discovery::{DiscoveredSocket, Discovery, Identity},
    registry::{BindingLive, ComponentInfo, ComponentStatus, Live, Publish, Registry, TopicScopes},
    secret::{ExposeSecret, InitProperties, SecretData, SecretString},
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
    #[error("metadata {field}: waiting for {reference}: {reason}")]
    SecretNotReady {
        field: String,
        reference: String,
        reason: String,
    },
    #[error("metadata {field}: {reference}: {reason}")]
    Secret {
        field: String,
        reference: String,
        reason: String,
    },
    #[error("init did not finish within initTimeout {0:?}; abandoned")]
    Timeout(Duration),
    #[error("{0}")]
    Component(#[from] ComponentError),
}

/// Why a `secretKeyRef` could not be resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretError {
    /// The secret store is not ready (not loaded yet, initialising, or down): wait for it.
    NotReady(String),
    /// The store answered, but not with the value (unknown secret or key, store error).
    Failed(String),
}

/// Resolves `secretKeyRef` values from a secret store.
#[async_trait]
pub trait SecretSource: Send + Sync {
    /// Secret `name` of `store`: the value under `key`, or under `name` when no key is given.
    async fn secret(
        &self,
        store: &str,
        name: &str,
        key: Option<&str>,
    ) -> Result<SecretString, SecretError>;
}

/// Resolves references through the secret stores in the registry. Each secret is fetched once
/// per resolver, as daprd caches them while it processes one resource.
pub struct RegistrySecrets {
    registry: Arc<Registry>,
    namespace: Option<String>,
    cache: tokio::sync::Mutex<HashMap<(String, String), SecretData>>,
}

impl RegistrySecrets {
    pub fn new(registry: Arc<Registry>, namespace: Option<String>) -> Self {
        Self {
            registry,
            namespace,
            cache: tokio::sync::Mutex::new(HashMap::new()),
        }
    }
}

#[async_trait]
impl SecretSource for RegistrySecrets {
    async fn secret(
        &self,
        store: &str,
        name: &str,
        key: Option<&str>,
    ) -> Result<SecretString, SecretError> {
        let mut cache = self.cache.lock().await;
        let cache_key = (store.to_string(), name.to_string());
        if !cache.contains_key(&cache_key) {
            let snapshot = self.registry.snapshot();
            let entry = match (snapshot.component(store), snapshot.secret_stores.get(store)) {
                (None, _) => {
                    return Err(SecretError::NotReady(format!(
                        "secret store {store:?} is not loaded (no Component of that name)"
                    )));
                }
                (Some(info), _) if !info.kinds.contains(&ComponentKind::SecretStore) => {
                    return Err(SecretError::Failed(format!(
                        "component {store:?} named by auth.secretStore is a {}, not a secret store",
                        info.type_name
                    )));
                }
                (Some(info), Some(entry)) if info.status == ComponentStatus::Ready => entry.clone(),
                (Some(info), _) => {
                    return Err(SecretError::NotReady(format!(
                        "secret store {store:?} is not ready ({})",
                        info.status.reason().unwrap_or(info.status.name())
                    )));
                }
            };
            // As daprd: the component's namespace, empty when there is none.
            let metadata = HashMap::from([(
                "namespace".to_string(),
                self.namespace.clone().unwrap_or_default(),
            )]);
            let data = entry
                .store
                .get(name.to_string(), metadata)
                .await
                .map_err(|e| {
                    if e.is_connection_failure() {
                        SecretError::NotReady(format!("secret store {store:?}: {}", e.detail()))
                    } else {
                        SecretError::Failed(format!(
                            "secret store {store:?} could not give secret {name:?}: {}",
                            e.detail()
                        ))
                    }
                })?;
            cache.insert(cache_key.clone(), data);
        }
        let wanted = key.unwrap_or(name);
        let value = cache.get(&cache_key).and_then(|data| data.get(wanted));
        value.cloned().ok_or_else(|| {
            SecretError::Failed(format!(
                "secret {name:?} in secret store {store:?} has no key {wanted:?}"
            ))
        })
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
) -> Result<InitProperties, InitError> {
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
                let reference = || match key {
                    Some(k) => {
                        format!("secretKeyRef {name:?} key {k:?} from secret store {store:?}")
                    }
                    None => format!("secretKeyRef {name:?} from secret store {store:?}"),
                };
                match secrets.secret(store, name, key.as_deref()).await {
                    // Passed on to Init; held as InitProperties from here.
                    Ok(value) => value.expose_secret().to_string(),
                    Err(SecretError::NotReady(reason)) => {
                        return Err(InitError::SecretNotReady {
                            field: item.name.clone(),
                            reference: reference(),
                            reason,
                        });
                    }
                    Err(SecretError::Failed(reason)) => {
                        return Err(InitError::Secret {
                            field: item.name.clone(),
                            reference: reference(),
                            reason,
                        });
                    }
                }
            }
        };
        props.insert(item.name.clone(), value);
    }
    Ok(props.into())
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

/// Settings every supervisor shares.
#[derive(Debug, Clone)]
pub struct Settings {
    pub app_id: String,
    pub namespace: Option<String>,
    pub call_timeout: Duration,
    pub health_interval: Duration,
    pub health_failures: u32,
    /// How long a component waits for its socket before it is reported failed; `None` = its
    /// own `initTimeout`. It keeps waiting (and starts when the socket appears) either way.
    pub component_wait: Option<Duration>,
    pub pod_name: Option<String>,
    /// Largest message exchanged with a component (from `--max-body-size`).
    pub message_limit: usize,
    /// Uids allowed to serve component sockets (`--allowed-component-uids`; empty: any),
    /// checked on every connection plugd dials to a component.
    pub allowed_component_uids: Arc<[u32]>,
}

impl Settings {
    pub fn from_config(config: &Config) -> Self {
        Self {
            app_id: config.app_id.clone(),
            namespace: config.namespace.clone(),
            call_timeout: config.call_timeout,
            health_interval: config.health_interval,
            health_failures: config.health_failures.max(1),
            component_wait: config.component_wait,
            pod_name: std::env::var("POD_NAME").ok(),
            message_limit: crate::limits::component_message_limit(config.max_body_size),
            allowed_component_uids: Arc::from(config.allowed_component_uids.as_slice()),
        }
    }

    fn templates(&self) -> TemplateContext {
        TemplateContext {
            app_id: self.app_id.clone(),
            namespace: self.namespace.clone(),
            pod_name: self.pod_name.clone(),
        }
    }
}

/// Owns one supervisor per component: starts them, and applies hot-reloaded resources.
pub struct Manager {
    registry: Arc<Registry>,
    settings: Arc<Settings>,
    discovery: watch::Receiver<Arc<Discovery>>,
    stop: CancellationToken,
    running: HashMap<String, Running>,
    next_generation: u64,
}

struct Running {
    manifest: ComponentManifest,
    generation: u64,
    stop: CancellationToken,
}

impl Manager {
    pub fn new(
        registry: Arc<Registry>,
        settings: Settings,
        discovery: watch::Receiver<Arc<Discovery>>,
        stop: CancellationToken,
    ) -> Self {
        Self {
            registry,
            settings: Arc::new(settings),
            discovery,
            stop,
            running: HashMap::new(),
            next_generation: 1,
        }
    }

    fn spawn(&mut self, m: ComponentManifest, ready: Option<oneshot::Sender<Publish>>) -> Running {
        let generation = self.next_generation;
        self.next_generation += 1;
        let stop = self.stop.child_token();
        let supervisor = Supervisor {
            info: initial_info(&m, generation),
            m: m.clone(),
            registry: self.registry.clone(),
            discovery: self.discovery.clone(),
            settings: self.settings.clone(),
            stop: stop.clone(),
            shadow: ready,
        };
        if supervisor.shadow.is_none() {
            self.registry
                .publish(Publish::Info(supervisor.info.clone()));
        }
        // `socket` is filled in once the component's socket is found.
        let span = tracing::info_span!("component", component = %m.name, r#type = %m.type_name(),
            socket = tracing::field::Empty);
        tokio::spawn(supervisor.run().instrument(span));
        Running {
            manifest: m,
            generation,
            stop,
        }
    }

    /// Starts a supervisor for each component.
    pub fn start(&mut self, manifests: Vec<ComponentManifest>) {
        for m in manifests {
            let running = self.spawn(m.clone(), None);
            self.running.insert(m.name.clone(), running);
        }
    }

    /// Waits (bounded) until no component is still on its first Init attempt.
    pub async fn settled(&self, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        while tokio::time::Instant::now() < deadline {
            let snapshot = self.registry.snapshot();
            if !snapshot
                .components
                .values()
                .any(|c| c.status == ComponentStatus::Initializing)
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Applies a new, valid set of components: new ones start, removed ones stop, changed ones
    /// get a new instance that replaces the old one once it is ready (the old one keeps serving
    /// until then, and if the new one fails to come up within its `initTimeout`).
    pub async fn apply(&mut self, manifests: Vec<ComponentManifest>) {
        let wanted: HashMap<String, ComponentManifest> =
            manifests.into_iter().map(|m| (m.name.clone(), m)).collect();
        let removed: Vec<String> = self
            .running
            .keys()
            .filter(|n| !wanted.contains_key(*n))
            .cloned()
            .collect();
        for name in removed {
            if let Some(old) = self.running.remove(&name) {
                tracing::info!(component = %name, "component removed from the resources; closing it");
                old.stop.cancel();
                self.registry.remove(&name, old.generation);
            }
        }
        // Added components start first: a changed one may wait for one of them (a secret store
        // added in the same edit) while its new instance comes up.
        let (added, others): (Vec<_>, Vec<_>) = wanted
            .into_iter()
            .partition(|(name, _)| !self.running.contains_key(name));
        for (name, m) in added.into_iter().chain(others) {
            match self.running.get(&name) {
                Some(old) if old.manifest == m => {}
                Some(old) => {
                    let old_ready = self.registry.snapshot().component(&name).is_some_and(|c| {
                        c.generation == old.generation && c.status == ComponentStatus::Ready
                    });
                    if !old_ready {
                        // Nothing good to keep: replace at once.
                        tracing::info!(component = %name, "component changed; replacing it");
                        let new = self.spawn(m, None);
                        if let Some(old) = self.running.insert(name.clone(), new) {
                            old.stop.cancel();
                        }
                        continue;
                    }
                    tracing::info!(component = %name, "component changed; starting a new instance");
                    let (tx, mut rx) = oneshot::channel();
                    let limit =
                        m.init_timeout + self.settings.component_wait.unwrap_or(Duration::ZERO);
                    let new = self.spawn(m, Some(tx));
                    let handed = match tokio::time::timeout(limit, &mut rx).await {
                        Ok(Ok(change)) => Some(change),
                        Ok(Err(_)) => None,
                        Err(_) => {
                            // Close first, then look once more: a handover that raced the
                            // timeout is not lost.
                            rx.close();
                            rx.try_recv().ok()
                        }
                    };
                    match handed {
                        Some(change) => {
                            self.registry.publish(change);
                            if let Some(old) = self.running.insert(name.clone(), new) {
                                old.stop.cancel();
                            }
                            tracing::info!(component = %name, "new instance serving; old instance closed");
                        }
                        None => {
                            new.stop.cancel();
                            tracing::error!(component = %name,
                                "the changed component did not become ready within {limit:?}; the old instance keeps serving");
                        }
                    }
                }
                None => {
                    tracing::info!(component = %name, "component added");
                    let running = self.spawn(m, None);
                    self.running.insert(name, running);
                }
            }
        }
    }
}

fn initial_info(m: &ComponentManifest, generation: u64) -> ComponentInfo {
    ComponentInfo {
        name: m.name.clone(),
        type_name: m.type_name(),
        version: if m.version.is_empty() {
            "v1".into()
        } else {
            m.version.clone()
        },
        kinds: m.category.kinds().to_vec(),
        socket: None,
        file: m.file.clone(),
        features: Vec::new(),
        status: ComponentStatus::Initializing,
        since: SystemTime::now(),
        last_error: None,
        ignore_errors: m.ignore_errors,
        generation,
    }
}

/// Keeps one component instance alive: waits for its socket, initialises it, pings it, and
/// initialises it again whenever the process behind the socket may have changed.
struct Supervisor {
    m: ComponentManifest,
    info: ComponentInfo,
    registry: Arc<Registry>,
    discovery: watch::Receiver<Arc<Discovery>>,
    settings: Arc<Settings>,
    stop: CancellationToken,
    /// Set for a hot-reloaded instance: publish nothing; hand the first ready state to the
    /// manager instead.
    shadow: Option<oneshot::Sender<Publish>>,
}

enum Exit {
    Stop,
    Reinit(String),
}

impl Supervisor {
    fn set(&mut self, status: ComponentStatus, live: Option<Live>) {
        if let Some(error) = status.reason() {
            self.info.last_error = Some((error.to_string(), SystemTime::now()));
        }
        if self.info.status.name() != status.name() {
            self.info.since = SystemTime::now();
            match &status {
                ComponentStatus::Ready => {
                    tracing::info!(features = ?self.info.features, "component ready")
                }
                ComponentStatus::Failed { error } if !self.info.ignore_errors => {
                    tracing::error!(%error, "component failed")
                }
                other => tracing::warn!(
                    status = other.name(),
                    reason = other.reason().unwrap_or(""),
                    "component status"
                ),
            }
        }
        self.info.status = status;
        let change = match live {
            Some(live) => Publish::Live(self.info.clone(), live),
            None => Publish::Info(self.info.clone()),
        };
        match self.shadow.take() {
            // A hot-reloaded instance hands its first good state to the manager, which swaps it
            // in (or has given up, and stops this instance).
            Some(handover) if self.info.status == ComponentStatus::Ready => {
                let _ = handover.send(change);
            }
            Some(handover) => self.shadow = Some(handover),
            None => self.registry.publish(change),
        }
    }

    /// Sets a status that is not ready, unless it is already the current one (so waiting on
    /// registry changes does not wake itself up).
    fn set_if_changed(&mut self, status: ComponentStatus) {
        if self.info.status != status {
            self.set(status, None);
        }
    }

    /// The Init properties, once every `secretKeyRef` resolves: waits for the secret stores
    /// they name (reported failed after `initTimeout`, still waiting), and retries stores that
    /// answered without the value. `None` if stopped first, or on an error no wait can mend.
    async fn properties(&mut self) -> Option<InitProperties> {
        let templates = self.settings.templates();
        let env = |k: &str| std::env::var(k).ok();
        let started = tokio::time::Instant::now();
        let limit = self.m.init_timeout;
        let mut changes = self.registry.changes();
        let mut retry = Duration::from_millis(250);
        loop {
            changes.borrow_and_update();
            let secrets =
                RegistrySecrets::new(self.registry.clone(), self.settings.namespace.clone());
            let error = match resolve_properties(&self.m, &templates, &secrets, &env).await {
                Ok(p) => return Some(p),
                Err(e) => e,
            };
            let wait = match &error {
                InitError::SecretNotReady { .. } => {
                    let left = limit.saturating_sub(started.elapsed());
                    if left.is_zero() {
                        self.set_if_changed(ComponentStatus::Failed {
                            error: format!("{error} (waited initTimeout {limit:?}; still waiting)"),
                        });
                        None
                    } else {
                        self.set_if_changed(ComponentStatus::Waiting {
                            reason: error.to_string(),
                        });
                        Some(left)
                    }
                }
                InitError::Secret { .. } => {
                    self.set_if_changed(ComponentStatus::Failed {
                        error: format!("{error} (retrying)"),
                    });
                    let wait = retry.mul_f64(rand::random_range(0.75..1.25));
                    retry = (retry * 2).min(Duration::from_secs(10));
                    // Only time mends this one: do not wake on registry changes.
                    tokio::select! {
                        _ = self.stop.cancelled() => return None,
                        _ = tokio::time::sleep(wait) => {}
                    }
                    continue;
                }
                _ => {
                    self.set(
                        ComponentStatus::Failed {
                            error: error.to_string(),
                        },
                        None,
                    );
                    return None;
                }
            };
            let timer = async {
                match wait {
                    Some(d) => tokio::time::sleep(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = self.stop.cancelled() => return None,
                r = changes.changed() => if r.is_err() { return None },
                _ = timer => {}
            }
        }
    }

    async fn run(mut self) {
        let Some(mut properties) = self.properties().await else {
            return self.stop.cancelled().await;
        };
        let topic_scopes = if self.m.category == Category::PubSub {
            // As daprd: the consumer group defaults to the app id.
            let consumer = properties.entry(CONSUMER_ID.to_string()).or_default();
            if consumer.is_empty() {
                consumer.clone_from(&self.settings.app_id);
            }
            topic_scopes(&properties, &self.settings.app_id)
        } else {
            TopicScopes::default()
        };
        let key_prefix = match KeyPrefix::from_metadata(
            properties.get(KEY_PREFIX).map(String::as_str),
            &self.settings.app_id,
            &self.m.name,
            self.settings.namespace.as_deref(),
        ) {
            Ok(p) => p,
            Err(reason) => {
                let e = InitError::Metadata {
                    field: KEY_PREFIX.into(),
                    reason,
                };
                return self.fail_until_stopped(e.to_string()).await;
            }
        };
        let mut waiting_since = tokio::time::Instant::now();
        let mut backoff = Backoff::default();
        loop {
            if self.stop.is_cancelled() {
                return;
            }
            let discovery = self.discovery.borrow_and_update().clone();
            let socket = match find_socket(&self.m, &discovery) {
                Ok(socket) => socket.clone(),
                Err(e) => {
                    let limit = self.settings.component_wait.unwrap_or(self.m.init_timeout);
                    let overdue = waiting_since.elapsed() >= limit;
                    let status = if overdue {
                        ComponentStatus::Failed {
                            error: format!("{e} (waited {limit:?}; still waiting)"),
                        }
                    } else {
                        ComponentStatus::Waiting {
                            reason: e.to_string(),
                        }
                    };
                    self.info.socket = None;
                    self.set(status, None);
                    self.registry.drop_live(&self.m.name, self.info.generation);
                    let left = limit.saturating_sub(waiting_since.elapsed());
                    tokio::select! {
                        _ = self.stop.cancelled() => return,
                        r = self.discovery.changed() => if r.is_err() { return self.stop.cancelled().await },
                        _ = tokio::time::sleep(left), if !overdue => {}
                    }
                    continue;
                }
            };
            let sides = match binding_sides(&self.m, &properties, &socket) {
                Ok(sides) => sides,
                Err(e) => {
                    self.info.socket = Some(socket.path.clone());
                    self.set(
                        ComponentStatus::Failed {
                            error: e.to_string(),
                        },
                        None,
                    );
                    tokio::select! {
                        _ = self.stop.cancelled() => return,
                        r = self.discovery.changed() => if r.is_err() { return self.stop.cancelled().await },
                    }
                    continue;
                }
            };
            self.info.socket = Some(socket.path.clone());
            tracing::Span::current()
                .record("socket", tracing::field::display(socket.path.display()));
            let init = tokio::select! {
                _ = self.stop.cancelled() => return,
                r = init_component(&self.m, &socket, properties.clone(), sides, &self.settings) => r,
            };
            match init {
                Ok((component, features)) => {
                    backoff = Backoff::default();
                    self.info.features = features;
                    let live =
                        match &component {
                            Initialized::State(store) => {
                                Live::State(store.clone(), key_prefix.clone())
                            }
                            Initialized::PubSub(pubsub) => {
                                Live::PubSub(pubsub.clone(), topic_scopes.clone())
                            }
                            Initialized::Binding(binding, operations) => Live::Binding(
                                binding_live(&self.m, &properties, binding, operations, sides),
                            ),
                            Initialized::SecretStore(store) => Live::SecretStore(store.clone()),
                        };
                    self.set(ComponentStatus::Ready, Some(live));
                    match self.serve(&component, socket.identity).await {
                        Exit::Stop => return,
                        Exit::Reinit(reason) => {
                            tracing::warn!(%reason, "re-initialising the component");
                            self.set(ComponentStatus::Unhealthy { error: reason }, None);
                            waiting_since = tokio::time::Instant::now();
                        }
                    }
                }
                Err(e) => {
                    self.set(
                        ComponentStatus::Failed {
                            error: e.to_string(),
                        },
                        None,
                    );
                    tokio::select! {
                        _ = self.stop.cancelled() => return,
                        r = self.discovery.changed() => if r.is_err() { return self.stop.cancelled().await },
                        _ = tokio::time::sleep(backoff.next()) => {}
                    }
                }
            }
        }
    }

    async fn fail_until_stopped(mut self, error: String) {
        self.set(ComponentStatus::Failed { error }, None);
        self.stop.cancelled().await;
    }

    /// Pings on a jittered schedule while the connection and the socket stay the same.
    async fn serve(&mut self, component: &Initialized, identity: Identity) -> Exit {
        let conn = component.connection().clone();
        let mut failures = 0u32;
        let mut discovery_open = true;
        loop {
            let jitter = rand::random_range(0.8..1.2);
            let tick = self.settings.health_interval.mul_f64(jitter);
            tokio::select! {
                _ = self.stop.cancelled() => return Exit::Stop,
                _ = conn.lost() => {
                    return Exit::Reinit(format!("the connection to {} was lost", conn.socket().display()));
                }
                r = self.discovery.changed(), if discovery_open => {
                    if r.is_err() {
                        discovery_open = false;
                        continue;
                    }
                    let discovery = self.discovery.borrow_and_update().clone();
                    match discovery.socket(&self.m.socket_name) {
                        Some(s) if s.identity == identity => {}
                        Some(s) => return Exit::Reinit(format!("socket {} was recreated", s.path.display())),
                        None => return Exit::Reinit(format!("socket {} was removed", conn.socket().display())),
                    }
                }
                _ = tokio::time::sleep(tick) => match ping(component, &self.stop).await {
                    None => return Exit::Stop,
                    Some(Ok(())) => {
                        failures = 0;
                        if self.info.status != ComponentStatus::Ready {
                            self.set(ComponentStatus::Ready, None);
                        }
                    }
                    Some(Err(_)) if conn.is_lost() => {
                        return Exit::Reinit(format!("the connection to {} was lost", conn.socket().display()));
                    }
                    Some(Err(e)) => {
                        failures += 1;
                        self.info.last_error = Some((e.to_string(), SystemTime::now()));
                        if failures >= self.settings.health_failures {
                            self.set(ComponentStatus::Unhealthy { error: format!("{failures} pings failed: {e}") }, None);
                        } else {
                            tracing::warn!(error = %e, failures, "ping failed");
                        }
                    }
                },
            }
        }
    }
}

/// One Ping, unless the supervisor is stopped first (`None`). A component without Ping
/// (`UNIMPLEMENTED`) counts as healthy while its calls succeed.
async fn ping(
    component: &Initialized,
    stop: &CancellationToken,
) -> Option<Result<(), ComponentError>> {
    tokio::select! {
        _ = stop.cancelled() => None,
        r = component.ping() => Some(match r {
            Err(e) if e.status().is_some_and(|s| s.code() == tonic::Code::Unimplemented) => Ok(()),
            other => other,
        }),
    }
}

/// Retry delays: 100 ms doubling to 2 s, jittered.
struct Backoff(Duration);

impl Default for Backoff {
    fn default() -> Self {
        Self(Duration::from_millis(100))
    }
}

impl Backoff {
    fn next(&mut self) -> Duration {
        let d = self.0;
        self.0 = (self.0 * 2).min(Duration::from_secs(2));
        d.mul_f64(rand::random_range(0.75..1.25))
    }
}

fn find_socket<'a>(
    m: &ComponentManifest,
    discovery: &'a Discovery,
) -> Result<&'a DiscoveredSocket, InitError> {
    let Some(socket) = discovery.socket(&m.socket_name) else {
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
    };
    let wanted = m.category.kinds();
    if !wanted.iter().any(|k| socket.kinds.contains(k)) {
        return Err(InitError::WrongKind {
            socket: socket.path.clone(),
            served: join_kinds(&socket.kinds),
            wanted: join_kinds(wanted),
        });
    }
    Ok(socket)
}

/// An initialised component instance, by kind.
enum Initialized {
    State(Arc<GrpcStateStore>),
    PubSub(Arc<GrpcPubSub>),
    /// The binding and its output operations.
    Binding(Arc<GrpcBinding>, Vec<String>),
    SecretStore(Arc<GrpcSecretStore>),
}

impl Initialized {
    fn connection(&self) -> &Connection {
        match self {
            Self::State(s) => s.connection(),
            Self::PubSub(p) => p.connection(),
            Self::Binding(b, _) => b.connection(),
            Self::SecretStore(s) => s.connection(),
        }
    }

    async fn ping(&self) -> Result<(), ComponentError> {
        match self {
            Self::State(s) => s.ping().await,
            Self::PubSub(p) => p.ping().await,
            Self::Binding(b, _) => b.ping_all().await,
            Self::SecretStore(s) => s.ping().await,
        }
    }
}

/// The binding metadata naming the sides to initialise.
pub const DIRECTION: &str = "direction";
/// The binding metadata naming the app route of input events.
pub const ROUTE: &str = "route";

/// Which sides of a binding to initialise: those `direction` names (which the socket must
/// serve), else every side the socket serves. Other categories: none.
fn binding_sides(
    m: &ComponentManifest,
    properties: &HashMap<String, String>,
    socket: &DiscoveredSocket,
) -> Result<Sides, InitError> {
    if m.category != Category::Bindings {
        return Ok(Sides::default());
    }
    let serves_input = socket.kinds.contains(&ComponentKind::InputBinding);
    let serves_output = socket.kinds.contains(&ComponentKind::OutputBinding);
    let Some(direction) = properties.get(DIRECTION).filter(|d| !d.trim().is_empty()) else {
        return Ok(Sides {
            input: serves_input,
            output: serves_output,
            input_declared: false,
        });
    };
    let mut sides = Sides::default();
    for word in direction
        .split(',')
        .map(str::trim)
        .filter(|w| !w.is_empty())
    {
        if word.eq_ignore_ascii_case("input") {
            sides.input = true;
            sides.input_declared = true;
        } else if word.eq_ignore_ascii_case("output") {
            sides.output = true;
        } else {
            return Err(InitError::Metadata {
                field: DIRECTION.into(),
                reason: format!("{word:?} is not a direction; use input, output or input,output"),
            });
        }
    }
    for (wanted, served, kind) in [
        (sides.input, serves_input, ComponentKind::InputBinding),
        (sides.output, serves_output, ComponentKind::OutputBinding),
    ] {
        if wanted && !served {
            return Err(InitError::WrongKind {
                socket: socket.path.clone(),
                served: join_kinds(&socket.kinds),
                wanted: format!("{kind} (direction: {direction})"),
            });
        }
    }
    Ok(sides)
}

/// The sides of a binding to initialise.
#[derive(Debug, Clone, Copy, Default)]
struct Sides {
    input: bool,
    output: bool,
    /// `direction` names `input`: events go to the app without asking it first.
    input_declared: bool,
}

fn binding_live(
    m: &ComponentManifest,
    properties: &HashMap<String, String>,
    binding: &Arc<GrpcBinding>,
    operations: &[String],
    sides: Sides,
) -> BindingLive {
    let route = match properties
        .get(ROUTE)
        .map(|r| r.trim())
        .filter(|r| !r.is_empty())
    {
        Some(r) if r.starts_with('/') => r.to_string(),
        Some(r) => format!("/{r}"),
        None => format!("/{}", m.name),
    };
    BindingLive {
        input: sides
            .input
            .then(|| binding.clone() as Arc<dyn InputBinding>),
        output: sides
            .output
            .then(|| binding.clone() as Arc<dyn OutputBinding>),
        operations: operations.to_vec(),
        route,
        input_declared: sides.input_declared,
    }
}

/// The Init property naming a pub/sub component's consumer group.
pub const CONSUMER_ID: &str = "consumerID";

/// The topic restrictions of a pub/sub component's metadata, for `app_id`: `allowedTopics`
/// (`a,b`), `publishingScopes` / `subscriptionScopes` (`app1=a,b;app2=c`), `protectedTopics`.
pub fn topic_scopes(props: &HashMap<String, String>, app_id: &str) -> TopicScopes {
    let list = |v: &str| -> Vec<String> {
        v.split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_string)
            .collect()
    };
    let for_app = |key: &str| -> Option<Vec<String>> {
        let value = props.get(key)?;
        value.split(';').find_map(|part| {
            let (app, topics) = part.split_once('=')?;
            (app.trim() == app_id).then(|| list(topics))
        })
    };
    let allowed = props
        .get("allowedTopics")
        .filter(|v| !v.trim().is_empty())
        .map(|v| list(v));
    let protected = props
        .get("protectedTopics")
        .map(|v| list(v))
        .unwrap_or_default();
    TopicScopes {
        allowed,
        protected,
        publish: for_app("publishingScopes"),
        subscribe: for_app("subscriptionScopes"),
    }
}

/// Dial → Init → Features → Ping, all of it bounded by `initTimeout`.
async fn init_component(
    m: &ComponentManifest,
    socket: &DiscoveredSocket,
    properties: InitProperties,
    sides: Sides,
    settings: &Settings,
) -> Result<(Initialized, Vec<String>), InitError> {
    let timeout = m.init_timeout;
    let deadline = tokio::time::Instant::now() + timeout;
    let init = async {
        let (channel, closed) =
            dial_watched(&socket.path, timeout, &settings.allowed_component_uids).await?;
        let conn = Connection::watched(
            channel,
            closed,
            &m.name,
            socket.path.clone(),
            settings.call_timeout,
        )?
        .with_message_limit(settings.message_limit);
        let (component, features) = match m.category {
            Category::PubSub => {
                let (p, f) = GrpcPubSub::init(conn, properties.into_inner(), deadline).await?;
                (Initialized::PubSub(Arc::new(p)), f)
            }
            Category::State => {
                let (s, f) = GrpcStateStore::init(conn, properties.into_inner(), deadline).await?;
                (Initialized::State(Arc::new(s)), f)
            }
            Category::Bindings => {
                let init = GrpcBinding::init(
                    conn,
                    properties.into_inner(),
                    sides.input,
                    sides.output,
                    deadline,
                )
                .await?;
                // daprd's metadata API lists a binding's sides as its capabilities.
                let mut sides_served = Vec::new();
                if sides.input {
                    sides_served.push("INPUT_BINDING".to_string());
                }
                if sides.output {
                    sides_served.push("OUTPUT_BINDING".to_string());
                }
                (
                    Initialized::Binding(Arc::new(init.binding), init.operations),
                    sides_served,
                )
            }
            Category::SecretStores => {
                let (s, f) = GrpcSecretStore::init(conn, properties.into_inner(), deadline).await?;
                (Initialized::SecretStore(Arc::new(s)), f)
            }
        };
        match component.ping().await {
            // A component without Ping is healthy while its calls succeed.
            Err(e)
                if e.status()
                    .is_some_and(|s| s.code() == tonic::Code::Unimplemented) => {}
            other => other?,
        }
        Ok::<_, ComponentError>((component, features))
    };
    match tokio::time::timeout_at(deadline, init).await {
        Ok(Ok(ready)) => Ok(ready),
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
