//! The registry: component name → `Arc<dyn Trait>` per kind, plus what the metadata and health
//! APIs report. Readers take a cheap snapshot; each component's supervisor publishes changes.

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    sync::{Arc, RwLock},
    time::SystemTime,
};

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::{
    component::{
        ComponentKind,
        bindings::{InputBinding, OutputBinding},
        pubsub::PubSub,
        secretstore::SecretStore,
        state::{KeyPrefix, StateStore},
    },
    discovery::Discovery,
    pubsub::subscription::Subscription,
};

/// Where a component instance stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ComponentStatus {
    /// Being initialised for the first time.
    Initializing,
    /// Waiting for its socket (not there yet, gone, or unusable).
    Waiting { reason: String },
    /// Serving.
    Ready,
    /// Pings failed, or the connection was lost: calls fail fast until it recovers.
    Unhealthy { error: String },
    /// Init failed; retried in the background.
    Failed { error: String },
}

impl ComponentStatus {
    /// The short name shown by the metadata API.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Initializing => "INITIALIZING",
            Self::Waiting { .. } => "WAITING",
            Self::Ready => "READY",
            Self::Unhealthy { .. } => "UNHEALTHY",
            Self::Failed { .. } => "FAILED",
        }
    }

    /// Why it is not ready, if it is not.
    pub fn reason(&self) -> Option<&str> {
        match self {
            Self::Waiting { reason } => Some(reason),
            Self::Unhealthy { error } | Self::Failed { error } => Some(error),
            Self::Initializing | Self::Ready => None,
        }
    }
}

/// What plugd knows of one component instance.
#[derive(Debug, Clone)]
pub struct ComponentInfo {
    pub name: String,
    pub type_name: String,
    pub version: String,
    pub kinds: Vec<ComponentKind>,
    pub socket: Option<PathBuf>,
    pub file: PathBuf,
    pub features: Vec<String>,
    pub status: ComponentStatus,
    /// When `status` last changed.
    pub since: SystemTime,
    /// The last error seen, and when.
    pub last_error: Option<(String, SystemTime)>,
    pub ignore_errors: bool,
    /// Which supervisor published this; a newer one (hot reload) wins.
    pub generation: u64,
}

impl ComponentInfo {
    /// Whether this component keeps plugd from being ready.
    pub fn blocks_readiness(&self) -> bool {
        !self.ignore_errors
            && matches!(
                self.status,
                ComponentStatus::Initializing
                    | ComponentStatus::Waiting { .. }
                    | ComponentStatus::Unhealthy { .. }
                    | ComponentStatus::Failed { .. }
            )
    }
}

/// A state store as the API layer uses it.
pub struct StateEntry {
    pub info: Arc<ComponentInfo>,
    pub store: Arc<dyn StateStore>,
    pub key_prefix: KeyPrefix,
}

impl StateEntry {
    pub fn has_feature(&self, feature: &str) -> bool {
        self.info.features.iter().any(|f| f == feature)
    }
}

/// A pub/sub component as the API and subscription layers use it.
pub struct PubSubEntry {
    pub info: Arc<ComponentInfo>,
    pub pubsub: Arc<dyn PubSub>,
    /// Topics the app may publish to / subscribe to (`publishingScopes`, `subscriptionScopes`,
    /// `allowedTopics`, `protectedTopics` of the component); `None` = any.
    pub scopes: TopicScopes,
}

impl PubSubEntry {
    pub fn has_feature(&self, feature: &str) -> bool {
        self.info.features.iter().any(|f| f == feature)
    }
}

/// A binding component as the API and input-delivery layers use it: either side or both.
pub struct BindingEntry {
    pub info: Arc<ComponentInfo>,
    pub binding: BindingLive,
}

/// The live sides of a binding and what plugd needs to use them.
#[derive(Clone)]
pub struct BindingLive {
    pub input: Option<Arc<dyn InputBinding>>,
    pub output: Option<Arc<dyn OutputBinding>>,
    /// The output side's operations, from `ListOperations` at Init.
    pub operations: Vec<String>,
    /// Where an HTTP app receives input events (`route` metadata, else `/<name>`).
    pub route: String,
    /// Whether the `direction` metadata names `input`: deliver without asking the app first.
    pub input_declared: bool,
}

/// A secret store as the API and the secret-reference resolver use it.
pub struct SecretStoreEntry {
    pub info: Arc<ComponentInfo>,
    pub store: Arc<dyn SecretStore>,
}

/// The topic restrictions of one pub/sub component for this app.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TopicScopes {
    /// `allowedTopics`: `None` = any topic.
    pub allowed: Option<Vec<String>>,
    /// `protectedTopics`: only usable when listed in this app's scope.
    pub protected: Vec<String>,
    /// This app's `publishingScopes` entry, if it has one.
    pub publish: Option<Vec<String>>,
    /// This app's `subscriptionScopes` entry, if it has one.
    pub subscribe: Option<Vec<String>>,
}

impl TopicScopes {
    fn may(&self, scope: Option<&Vec<String>>, topic: &str) -> bool {
        let listed = |l: &Vec<String>| l.iter().any(|x| x == topic);
        if self.allowed.as_ref().is_some_and(|a| !listed(a)) {
            return false;
        }
        match scope {
            Some(s) => listed(s),
            None => !self.protected.iter().any(|x| x == topic),
        }
    }

    pub fn may_publish(&self, topic: &str) -> bool {
        self.may(self.publish.as_ref(), topic)
    }

    pub fn may_subscribe(&self, topic: &str) -> bool {
        self.may(self.subscribe.as_ref(), topic)
    }
}

/// A live component object, by kind.
#[derive(Clone)]
pub enum Live {
    State(Arc<dyn StateStore>, KeyPrefix),
    PubSub(Arc<dyn PubSub>, TopicScopes),
    Binding(BindingLive),
    SecretStore(Arc<dyn SecretStore>),
}

/// One consistent view of every component.
#[derive(Default, Clone)]
pub struct Snapshot {
    /// The newest generation removed per name: publishes from it or older ones are ignored, so a
    /// removed component never comes back through a late publish.
    pub retired: HashMap<String, u64>,
    /// State stores that have been initialised (check `info.status` before use).
    pub state: HashMap<String, Arc<StateEntry>>,
    /// Pub/sub components that have been initialised (check `info.status` before use).
    pub pubsub: HashMap<String, Arc<PubSubEntry>>,
    /// Bindings that have been initialised (check `info.status` before use).
    pub bindings: HashMap<String, Arc<BindingEntry>>,
    /// Secret stores that have been initialised (check `info.status` before use).
    pub secret_stores: HashMap<String, Arc<SecretStoreEntry>>,
    pub components: BTreeMap<String, Arc<ComponentInfo>>,
    pub discovery: Arc<Discovery>,
}

impl Snapshot {
    pub fn ready(&self) -> bool {
        !self.components.values().any(|c| c.blocks_readiness())
    }

    /// The components that keep plugd from being ready, for `/v1.0/healthz`.
    pub fn not_ready(&self) -> Vec<String> {
        self.components
            .values()
            .filter(|c| c.blocks_readiness())
            .map(|c| {
                format!(
                    "{} ({})",
                    c.name,
                    c.status.reason().unwrap_or(c.status.name())
                )
            })
            .collect()
    }

    /// The component's status as the API layer needs it: the info of a known component.
    pub fn component(&self, name: &str) -> Option<&Arc<ComponentInfo>> {
        self.components.get(name)
    }

    /// The live object of component `name`, whatever its kind.
    fn live(&self, name: &str) -> Option<Live> {
        if let Some(e) = self.state.get(name) {
            return Some(Live::State(e.store.clone(), e.key_prefix.clone()));
        }
        if let Some(e) = self.pubsub.get(name) {
            return Some(Live::PubSub(e.pubsub.clone(), e.scopes.clone()));
        }
        if let Some(e) = self.bindings.get(name) {
            return Some(Live::Binding(e.binding.clone()));
        }
        self.secret_stores
            .get(name)
            .map(|e| Live::SecretStore(e.store.clone()))
    }

    fn insert_live(&mut self, info: Arc<ComponentInfo>, live: Live) {
        let name = info.name.clone();
        match live {
            Live::State(store, key_prefix) => {
                let entry = StateEntry {
                    info,
                    store,
                    key_prefix,
                };
                self.state.insert(name, Arc::new(entry));
            }
            Live::PubSub(pubsub, scopes) => {
                let entry = PubSubEntry {
                    info,
                    pubsub,
                    scopes,
                };
                self.pubsub.insert(name, Arc::new(entry));
            }
            Live::Binding(binding) => {
                self.bindings
                    .insert(name, Arc::new(BindingEntry { info, binding }));
            }
            Live::SecretStore(store) => {
                self.secret_stores
                    .insert(name, Arc::new(SecretStoreEntry { info, store }));
            }
        }
    }

    /// Drops the live object of `name` (only the one of `generation`, when given).
    fn remove_live(&mut self, name: &str, generation: Option<u64>) {
        let owned = |info: &ComponentInfo| generation.is_none_or(|g| info.generation == g);
        if self.state.get(name).is_some_and(|e| owned(&e.info)) {
            self.state.remove(name);
        }
        if self.pubsub.get(name).is_some_and(|e| owned(&e.info)) {
            self.pubsub.remove(name);
        }
        if self.bindings.get(name).is_some_and(|e| owned(&e.info)) {
            self.bindings.remove(name);
        }
        if self.secret_stores.get(name).is_some_and(|e| owned(&e.info)) {
            self.secret_stores.remove(name);
        }
    }
}

/// A change a supervisor publishes for its component.
pub enum Publish {
    /// New info; the live state store, when there is one, stays.
    Info(ComponentInfo),
    /// New info and a (new) live component object.
    Live(ComponentInfo, Live),
}

/// Shared by every API handler and supervisor.
pub struct Registry {
    current: ArcSwap<Snapshot>,
    changed: watch::Sender<u64>,
    extended: RwLock<BTreeMap<String, String>>,
    subscriptions: RwLock<Vec<Arc<Subscription>>>,
}

impl Default for Registry {
    fn default() -> Self {
        Self::new(Snapshot::default())
    }
}

impl Registry {
    pub fn new(snapshot: Snapshot) -> Self {
        Self {
            current: ArcSwap::from_pointee(snapshot),
            changed: watch::Sender::new(0),
            extended: RwLock::new(BTreeMap::new()),
            subscriptions: RwLock::new(Vec::new()),
        }
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Publishes a component's new state, unless a newer generation already owns the name.
    pub fn publish(&self, change: Publish) {
        let (info, live) = match change {
            Publish::Info(info) => (Arc::new(info), None),
            Publish::Live(info, live) => (Arc::new(info), Some(live)),
        };
        self.current.rcu(|old| {
            let mut next = Snapshot::clone(old);
            let superseded = next
                .components
                .get(&info.name)
                .is_some_and(|c| c.generation > info.generation);
            let retired = next
                .retired
                .get(&info.name)
                .is_some_and(|g| *g >= info.generation);
            if superseded || retired {
                return next;
            }
            next.components.insert(info.name.clone(), info.clone());
            // Without a new live object, the current one (if any) stays, with the new info.
            if let Some(live) = live.clone().or_else(|| next.live(&info.name)) {
                next.insert_live(info.clone(), live);
            }
            next
        });
        self.changed.send_modify(|n| *n += 1);
    }

    /// Resolves after the next change published to the registry.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Removes a component, if `generation` still owns it.
    pub fn remove(&self, name: &str, generation: u64) {
        self.current.rcu(|old| {
            let mut next = Snapshot::clone(old);
            if next
                .components
                .get(name)
                .is_some_and(|c| c.generation <= generation)
            {
                next.components.remove(name);
                next.remove_live(name, None);
            }
            let retired = next.retired.entry(name.to_string()).or_insert(0);
            *retired = (*retired).max(generation);
            next
        });
        self.changed.send_modify(|n| *n += 1);
    }

    /// Drops the live object of a component (its connection closes with it).
    pub fn drop_live(&self, name: &str, generation: u64) {
        self.current.rcu(|old| {
            let mut next = Snapshot::clone(old);
            next.remove_live(name, Some(generation));
            next
        });
        self.changed.send_modify(|n| *n += 1);
    }

    pub fn set_discovery(&self, discovery: Arc<Discovery>) {
        self.current.rcu(|old| {
            let mut next = Snapshot::clone(old);
            next.discovery = discovery.clone();
            next
        });
    }

    /// The active topic subscriptions, for the metadata API.
    pub fn subscriptions(&self) -> Vec<Arc<Subscription>> {
        self.subscriptions
            .read()
            .map(|s| s.clone())
            .unwrap_or_default()
    }

    pub fn add_subscription(&self, sub: Arc<Subscription>) {
        if let Ok(mut s) = self.subscriptions.write() {
            s.push(sub);
        }
    }

    /// Attributes set by the app through `SetMetadata`.
    pub fn extended(&self) -> BTreeMap<String, String> {
        self.extended.read().map(|m| m.clone()).unwrap_or_default()
    }

    pub fn set_extended(&self, key: String, value: String) {
        if let Ok(mut m) = self.extended.write() {
            m.insert(key, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(name: &str, generation: u64, status: ComponentStatus) -> ComponentInfo {
        ComponentInfo {
            name: name.into(),
            type_name: "state.x".into(),
            version: "v1".into(),
            kinds: vec![ComponentKind::State],
            socket: None,
            file: PathBuf::from("x.yaml"),
            features: Vec::new(),
            status,
            since: SystemTime::now(),
            last_error: None,
            ignore_errors: false,
            generation,
        }
    }

    #[test]
    fn newer_generations_win_and_removed_ones_stay_removed() {
        let r = Registry::default();
        r.publish(Publish::Info(info("a", 2, ComponentStatus::Ready)));
        // An older supervisor's late publish does not replace the newer one.
        r.publish(Publish::Info(info(
            "a",
            1,
            ComponentStatus::Waiting {
                reason: "old".into(),
            },
        )));
        assert_eq!(r.snapshot().components["a"].generation, 2);
        // Removed: a late publish from the removed generation does not bring it back...
        r.remove("a", 2);
        r.publish(Publish::Info(info("a", 2, ComponentStatus::Ready)));
        assert!(r.snapshot().components.is_empty());
        // ...but the component added again (a newer generation) is served.
        r.publish(Publish::Info(info("a", 3, ComponentStatus::Ready)));
        assert_eq!(r.snapshot().components["a"].generation, 3);
        assert!(r.snapshot().ready());
        r.publish(Publish::Info(info(
            "a",
            3,
            ComponentStatus::Failed { error: "x".into() },
        )));
        assert_eq!(r.snapshot().not_ready(), ["a (x)"]);
    }
}
