//! The registry: component name → `Arc<dyn Trait>` per kind, plus what the metadata and health
//! APIs report. Readers take a cheap snapshot; writers swap a whole new one.

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    sync::{Arc, RwLock},
};

use arc_swap::ArcSwap;

use crate::{
    component::{
        ComponentKind,
        state::{KeyPrefix, StateStore},
    },
    discovery::Discovery,
};

/// Where a component instance stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ComponentStatus {
    Ready,
    /// Init failed; `ignored` when the component has `ignoreErrors: true`.
    Failed {
        error: String,
        ignored: bool,
    },
    /// Valid, but of a kind this plugd does not serve yet.
    NotServed {
        reason: String,
    },
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
}

impl ComponentInfo {
    /// Whether this component keeps plugd from being ready.
    pub fn blocks_readiness(&self) -> bool {
        matches!(self.status, ComponentStatus::Failed { ignored: false, .. })
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

/// One consistent view of every component.
#[derive(Default)]
pub struct Snapshot {
    pub state: HashMap<String, Arc<StateEntry>>,
    pub components: Vec<Arc<ComponentInfo>>,
    pub discovery: Discovery,
}

impl Snapshot {
    pub fn ready(&self) -> bool {
        !self.components.iter().any(|c| c.blocks_readiness())
    }

    /// The components that keep plugd from being ready, for `/v1.0/healthz`.
    pub fn not_ready(&self) -> Vec<String> {
        self.components
            .iter()
            .filter(|c| c.blocks_readiness())
            .map(|c| c.name.clone())
            .collect()
    }
}

/// Shared by every API handler.
pub struct Registry {
    current: ArcSwap<Snapshot>,
    extended: RwLock<BTreeMap<String, String>>,
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
            extended: RwLock::new(BTreeMap::new()),
        }
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
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
