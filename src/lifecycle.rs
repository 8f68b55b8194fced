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
        ComponentError, ComponentKind, Connection, dial_watched,
        pubsub::{GrpcPubSub, PubSub},
        state::{GrpcStateStore, KEY_PREFIX, KeyPrefix, StateStore},
    },
    config::{
        Config,
        manifest::{Category, ComponentManifest, MetadataValue},
    },
    discovery::{DiscoveredSocket, Discovery, Identity},
    registry::{ComponentInfo, ComponentStatus, Live, Publish, Registry, TopicScopes},
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
        let span = tracing::info_span!("component", name = %m.name, r#type = %m.type_name());
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
        for (name, m) in wanted {
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
        if let Some(error) = status
            .reason()
            .filter(|_| !matches!(status, ComponentStatus::NotServed { .. }))
        {
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
            Some(handover)
                if matches!(
                    self.info.status,
                    ComponentStatus::Ready | ComponentStatus::NotServed { .. }
                ) =>
            {
                let _ = handover.send(change);
            }
            Some(handover) => self.shadow = Some(handover),
            None => self.registry.publish(change),
        }
    }

    async fn run(mut self) {
        let templates = self.settings.templates();
        let env = |k: &str| std::env::var(k).ok();
        let mut properties =
            match resolve_properties(&self.m, &templates, &NoSecretStores, &env).await {
                Ok(p) => p,
                Err(e) => return self.fail_until_stopped(e.to_string()).await,
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
                    self.registry.drop_store(&self.m.name, self.info.generation);
                    let left = limit.saturating_sub(waiting_since.elapsed());
                    tokio::select! {
                        _ = self.stop.cancelled() => return,
                        r = self.discovery.changed() => if r.is_err() { return self.stop.cancelled().await },
                        _ = tokio::time::sleep(left), if !overdue => {}
                    }
                    continue;
                }
            };
            if !matches!(self.m.category, Category::State | Category::PubSub) {
                self.info.socket = Some(socket.path.clone());
                self.set(
                    ComponentStatus::NotServed {
                        reason: format!(
                            "{} components are discovered but not served by this plugd version yet",
                            self.m.category.prefix()
                        ),
                    },
                    None,
                );
                return self.stop.cancelled().await;
            }
            self.info.socket = Some(socket.path.clone());
            let init = tokio::select! {
                _ = self.stop.cancelled() => return,
                r = init_component(&self.m, &socket, properties.clone(), &self.settings) => r,
            };
            match init {
                Ok((component, features)) => {
                    backoff = Backoff::default();
                    self.info.features = features;
                    let live = match &component {
                        Initialized::State(store) => Live::State(store.clone(), key_prefix.clone()),
                        Initialized::PubSub(pubsub) => {
                            Live::PubSub(pubsub.clone(), topic_scopes.clone())
                        }
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
}

impl Initialized {
    fn connection(&self) -> &Connection {
        match self {
            Self::State(s) => s.connection(),
            Self::PubSub(p) => p.connection(),
        }
    }

    async fn ping(&self) -> Result<(), ComponentError> {
        match self {
            Self::State(s) => s.ping().await,
            Self::PubSub(p) => p.ping().await,
        }
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
    properties: HashMap<String, String>,
    settings: &Settings,
) -> Result<(Initialized, Vec<String>), InitError> {
    let timeout = m.init_timeout;
    let deadline = tokio::time::Instant::now() + timeout;
    let init = async {
        let (channel, closed) = dial_watched(&socket.path, timeout).await?;
        let conn = Connection::watched(
            channel,
            closed,
            &m.name,
            socket.path.clone(),
            settings.call_timeout,
        )?;
        let (component, features) = match m.category {
            Category::PubSub => {
                let (p, f) = GrpcPubSub::init(conn, properties, deadline).await?;
                (Initialized::PubSub(Arc::new(p)), f)
            }
            _ => {
                let (s, f) = GrpcStateStore::init(conn, properties, deadline).await?;
                (Initialized::State(Arc::new(s)), f)
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
