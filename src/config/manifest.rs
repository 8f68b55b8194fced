//! Dapr `Component` YAML: reading, validation (every problem at once, without I/O) and the
//! typed manifest the lifecycle builds from.

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    path::{Path, PathBuf},
    time::Duration,
};

use serde_yaml::Value;

use super::duration::parse_go_duration;
use crate::component::ComponentKind;

/// `initTimeout` when none (or a non-positive one) is given, as in Dapr.
pub const DEFAULT_INIT_TIMEOUT: Duration = Duration::from_secs(5);

const API_VERSION: &str = "dapr.io/v1alpha1";

/// The component categories plugd can host, i.e. those Dapr allows as pluggable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Category {
    State,
    PubSub,
    Bindings,
    SecretStores,
}

impl Category {
    pub fn prefix(self) -> &'static str {
        match self {
            Self::State => "state",
            Self::PubSub => "pubsub",
            Self::Bindings => "bindings",
            Self::SecretStores => "secretstores",
        }
    }

    /// The component kinds a component of this category may be served by.
    pub fn kinds(self) -> &'static [ComponentKind] {
        match self {
            Self::State => &[ComponentKind::State],
            Self::PubSub => &[ComponentKind::PubSub],
            Self::Bindings => &[ComponentKind::InputBinding, ComponentKind::OutputBinding],
            Self::SecretStores => &[ComponentKind::SecretStore],
        }
    }
}

/// Dapr categories that exist but cannot be pluggable: such components are skipped.
const NON_PLUGGABLE_CATEGORIES: [&str; 8] = [
    "workflow",
    "workflowbackend",
    "middleware",
    "configuration",
    "crypto",
    "lock",
    "nameresolution",
    "conversation",
];

/// How one metadata item gets its value.
#[derive(Clone, PartialEq, Eq)]
pub enum MetadataValue {
    /// A literal, already stringified as Dapr does.
    Plain(String),
    /// `secretKeyRef`: resolved from `auth.secretStore` before Init.
    SecretKeyRef { name: String, key: Option<String> },
    /// `envRef`: read from plugd's environment.
    EnvRef(String),
}

impl fmt::Debug for MetadataValue {
    // Literal values may be secrets written inline: never print them.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Plain(_) => f.write_str("Plain(<redacted>)"),
            Self::SecretKeyRef { name, key } => f
                .debug_struct("SecretKeyRef")
                .field("name", name)
                .field("key", key)
                .finish(),
            Self::EnvRef(var) => f.debug_tuple("EnvRef").field(var).finish(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetadataItem {
    pub name: String,
    pub value: MetadataValue,
}

/// A validated Component resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentManifest {
    pub file: PathBuf,
    pub name: String,
    pub namespace: Option<String>,
    pub category: Category,
    /// The socket (type) name: `spec.type` without the category, lower-cased.
    pub socket_name: String,
    pub version: String,
    pub ignore_errors: bool,
    pub init_timeout: Duration,
    pub metadata: Vec<MetadataItem>,
    pub secret_store: Option<String>,
    pub scopes: Vec<String>,
}

impl ComponentManifest {
    /// `spec.type` as plugd reports it, e.g. `state.sqlite`.
    pub fn type_name(&self) -> String {
        format!("{}.{}", self.category.prefix(), self.socket_name)
    }

    /// The value of a plain metadata item, if present.
    pub fn plain_metadata(&self, name: &str) -> Option<&str> {
        self.metadata.iter().find_map(|m| match &m.value {
            MetadataValue::Plain(v) if m.name == name => Some(v.as_str()),
            _ => None,
        })
    }

    /// Whether this component is loaded for `app_id` (`scopes` empty = every app).
    pub fn in_scope(&self, app_id: &str) -> bool {
        self.scopes.is_empty() || self.scopes.iter().any(|s| s == app_id)
    }
}

/// One YAML document, as read from disk.
#[derive(Debug, Clone)]
pub struct SourceDocument {
    pub file: PathBuf,
    /// 1-based position of the document in its file.
    pub index: usize,
    pub value: Value,
}

/// One problem found in the resources, naming where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: PathBuf,
    pub component: String,
    pub field: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: component {}", self.file.display(), self.component)?;
        if !self.field.is_empty() {
            write!(f, ": field {}", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Every problem found, reported together.
#[derive(Debug, Clone, thiserror::Error)]
pub struct Problems(pub Vec<Problem>);

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} problem(s) in component resources:", self.0.len())?;
        for p in &self.0 {
            write!(f, "\n  - {p}")?;
        }
        Ok(())
    }
}

/// What validation produced.
#[derive(Debug, Default)]
pub struct Loaded {
    pub components: Vec<ComponentManifest>,
    /// Resources that are valid but not for plugd or not for this app: (file, name, why).
    pub skipped: Vec<(PathBuf, String, String)>,
}

/// Reads every `*.yaml` / `*.yml` file (non-recursively) of each folder and splits documents.
/// Unreadable paths and YAML syntax errors are problems too.
pub fn read_documents(paths: &[PathBuf]) -> (Vec<SourceDocument>, Vec<Problem>) {
    let mut docs = Vec::new();
    let mut problems = Vec::new();
    for dir in paths {
        let mut files = Vec::new();
        match std::fs::read_dir(dir) {
            Ok(entries) => {
                for entry in entries.flatten() {
                    let path = entry.path();
                    let is_yaml = path.extension().and_then(|e| e.to_str()).is_some_and(|e| {
                        e.eq_ignore_ascii_case("yaml") || e.eq_ignore_ascii_case("yml")
                    });
                    if path.is_file() && is_yaml {
                        files.push(path);
                    } else if path.is_file() {
                        tracing::debug!(path = %path.display(), "not a YAML file; ignored");
                    }
                }
            }
            Err(e) => {
                problems.push(Problem {
                    file: dir.clone(),
                    component: "-".into(),
                    field: String::new(),
                    message: format!("cannot read resources folder: {e}"),
                });
                continue;
            }
        }
        files.sort();
        for file in files {
            match read_text(&file) {
                Ok(text) => parse_documents(&file, &text, &mut docs, &mut problems),
                Err(message) => problems.push(Problem {
                    file: file.clone(),
                    component: "-".into(),
                    field: String::new(),
                    message,
                }),
            }
        }
    }
    (docs, problems)
}

/// The largest resource file plugd reads. Kubernetes keeps a resource under about 1.5 MiB; a
/// file far larger than that is a mistake (a log or a dump in the resources folder), and
/// reading it whole would cost that much memory.
pub const MAX_RESOURCE_FILE: u64 = 16 * 1024 * 1024;

/// A resource file's text, or why it cannot be read: unreadable, over
/// [`MAX_RESOURCE_FILE`], or not UTF-8 (naming the line of the first bad byte).
fn read_text(file: &Path) -> Result<String, String> {
    use std::io::Read;
    let f = std::fs::File::open(file).map_err(|e| format!("cannot read file: {e}"))?;
    let mut bytes = Vec::new();
    // Read one byte past the limit, so a file that grows while it is read is caught too.
    f.take(MAX_RESOURCE_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read file: {e}"))?;
    if bytes.len() as u64 > MAX_RESOURCE_FILE {
        return Err(format!(
            "file is larger than {} MiB, the limit for a resource file",
            MAX_RESOURCE_FILE / (1024 * 1024)
        ));
    }
    String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        let line = e.as_bytes()[..at].iter().filter(|b| **b == b'\n').count() + 1;
        format!("file is not valid UTF-8: invalid byte at line {line} (byte offset {at})")
    })
}

/// Splits one file's text into YAML documents.
pub fn parse_documents(
    file: &Path,
    text: &str,
    docs: &mut Vec<SourceDocument>,
    problems: &mut Vec<Problem>,
) {
    for (i, de) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let index = i + 1;
        match serde::Deserialize::deserialize(de) {
            Ok(Value::Null) => {}
            Ok(value) => docs.push(SourceDocument {
                file: file.to_path_buf(),
                index,
                value,
            }),
            Err(e) => {
                problems.push(Problem {
                    file: file.to_path_buf(),
                    component: format!("#{index}"),
                    field: String::new(),
                    message: format!("invalid YAML: {e}"),
                });
                // The deserializer cannot continue past a syntax error.
                break;
            }
        }
    }
}

/// Validates every Component document; reports all problems together.
/// `app_id` and `namespace` decide scoping (skips, not problems).
pub fn validate(
    docs: &[SourceDocument],
    app_id: &str,
    namespace: Option<&str>,
) -> Result<Loaded, Problems> {
    let mut problems = Vec::new();
    let mut loaded = Loaded::default();
    let mut seen: HashMap<String, PathBuf> = HashMap::new();
    for doc in docs {
        let kind = doc
            .value
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if kind != "Component" {
            tracing::debug!(file = %doc.file.display(), kind, "not a Component resource; ignored here");
            continue;
        }
        let api = doc
            .value
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let label = doc_label(doc);
        if api != API_VERSION {
            problems.push(problem(
                doc,
                &label,
                "apiVersion",
                format!("must be {API_VERSION:?}, found {api:?}"),
            ));
            continue;
        }
        let before = problems.len();
        let parsed = validate_component(doc, &label, &mut problems);
        if let Some(name) = doc
            .value
            .get("metadata")
            .and_then(|m| m.get("name"))
            .and_then(Value::as_str)
        {
            if let Some(first) = seen.get(name) {
                problems.push(problem(
                    doc,
                    &label,
                    "metadata.name",
                    format!(
                        "duplicate component name {name:?} (first defined in {})",
                        first.display()
                    ),
                ));
                continue;
            }
            seen.insert(name.to_string(), doc.file.clone());
        }
        match parsed {
            Some(Parsed::Component(c)) if problems.len() == before => {
                if !c.in_scope(app_id) {
                    loaded.skipped.push((
                        c.file.clone(),
                        c.name.clone(),
                        format!("not in scopes {:?} for app id {app_id:?}", c.scopes),
                    ));
                } else if let (Some(want), Some(have)) = (namespace, c.namespace.as_deref()) {
                    if want != have {
                        loaded.skipped.push((
                            c.file.clone(),
                            c.name.clone(),
                            format!("namespace {have:?} is not {want:?}"),
                        ));
                    } else {
                        loaded.components.push(c);
                    }
                } else {
                    loaded.components.push(c);
                }
            }
            Some(Parsed::Unsupported { name, reason }) if problems.len() == before => {
                loaded.skipped.push((doc.file.clone(), name, reason));
            }
            _ => {}
        }
    }
    check_secret_references(&loaded.components, &mut problems);
    if problems.is_empty() {
        Ok(loaded)
    } else {
        Err(Problems(problems))
    }
}

/// `auth.secretStore` of a component using `secretKeyRef` must not name a loaded component
/// that is not a secret store, nor close a cycle of secret stores waiting for each other (each
/// would wait for the other forever). A store that is not loaded may come later (hot reload,
/// another resources path): the component waits for it.
fn check_secret_references(components: &[ComponentManifest], problems: &mut Vec<Problem>) {
    let by_name: HashMap<&str, &ComponentManifest> =
        components.iter().map(|c| (c.name.as_str(), c)).collect();
    fn store_of(c: &ComponentManifest) -> Option<&str> {
        let uses_secrets = c
            .metadata
            .iter()
            .any(|m| matches!(m.value, MetadataValue::SecretKeyRef { .. }));
        c.secret_store
            .as_deref()
            .filter(|s| !s.is_empty() && uses_secrets)
    }
    for c in components {
        let Some(store) = store_of(c) else { continue };
        let push = |problems: &mut Vec<Problem>, message: String| {
            problems.push(Problem {
                file: c.file.clone(),
                component: c.name.clone(),
                field: "auth.secretStore".into(),
                message,
            })
        };
        match by_name.get(store) {
            Some(target) if target.category != Category::SecretStores => push(
                problems,
                format!(
                    "{store:?} is a {} component, not a secret store",
                    target.type_name()
                ),
            ),
            Some(_) => {
                // Follow the chain of stores; coming back to `c` is a cycle.
                let mut path = vec![c.name.as_str()];
                let mut next = Some(store);
                while let Some(name) = next {
                    if name == c.name {
                        path.push(name);
                        push(
                            problems,
                            format!(
                                "secret stores refer to each other in a cycle ({}); none could start",
                                path.join(" -> ")
                            ),
                        );
                        break;
                    }
                    if path.contains(&name) {
                        break;
                    }
                    path.push(name);
                    next = by_name.get(name).and_then(|t| store_of(t));
                }
            }
            None => {}
        }
    }
}

enum Parsed {
    Component(ComponentManifest),
    Unsupported { name: String, reason: String },
}

fn doc_label(doc: &SourceDocument) -> String {
    match doc
        .value
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
    {
        Some(name) if !name.is_empty() => name.to_string(),
        _ => format!("#{} (unnamed)", doc.index),
    }
}

fn problem(doc: &SourceDocument, label: &str, field: &str, message: String) -> Problem {
    Problem {
        file: doc.file.clone(),
        component: label.to_string(),
        field: field.to_string(),
        message,
    }
}

/// A component name must be usable as a URL path segment and a gRPC header value.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("is required".into());
    }
    if name == "." || name == ".." {
        return Err(format!("{name:?} is not a valid name"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| *c == '/' || *c == '%' || !c.is_ascii_graphic())
    {
        return Err(format!(
            "{name:?} contains {c:?}; use letters, digits, '-', '_' or '.'"
        ));
    }
    Ok(())
}

fn validate_component(
    doc: &SourceDocument,
    label: &str,
    problems: &mut Vec<Problem>,
) -> Option<Parsed> {
    let v = &doc.value;
    let meta = v.get("metadata");
    let name = match meta.and_then(|m| m.get("name")) {
        None => {
            problems.push(problem(doc, label, "metadata.name", "is required".into()));
            None
        }
        Some(Value::String(s)) => match check_name(s) {
            Ok(()) => Some(s.clone()),
            Err(e) => {
                problems.push(problem(doc, label, "metadata.name", e));
                None
            }
        },
        Some(_) => {
            problems.push(problem(
                doc,
                label,
                "metadata.name",
                "must be a string".into(),
            ));
            None
        }
    };
    let namespace = meta
        .and_then(|m| m.get("namespace"))
        .and_then(Value::as_str)
        .map(str::to_string);
    let spec = match v.get("spec") {
        None | Some(Value::Null) => {
            problems.push(problem(doc, label, "spec", "is required".into()));
            return None;
        }
        Some(spec @ Value::Mapping(_)) => spec,
        Some(other) => {
            problems.push(problem(
                doc,
                label,
                "spec",
                format!(
                    "must be a mapping with type, version and metadata, found {}",
                    type_of(other)
                ),
            ));
            return None;
        }
    };
    warn_unknown_fields(doc, label, v, spec);

    let ty = match spec.get("type") {
        Some(Value::String(s)) if !s.trim().is_empty() => Some(s.trim().to_ascii_lowercase()),
        Some(Value::String(_)) | None => {
            problems.push(problem(
                doc,
                label,
                "spec.type",
                "is required (e.g. state.sqlite)".into(),
            ));
            None
        }
        Some(_) => {
            problems.push(problem(doc, label, "spec.type", "must be a string".into()));
            None
        }
    };
    let mut category = None;
    let mut socket_name = String::new();
    if let Some(ty) = &ty {
        let (prefix, rest) = ty.split_once('.').unwrap_or((ty.as_str(), ""));
        category = match prefix {
            "state" => Some(Category::State),
            "pubsub" => Some(Category::PubSub),
            "bindings" => Some(Category::Bindings),
            "secretstores" => Some(Category::SecretStores),
            p if NON_PLUGGABLE_CATEGORIES.contains(&p) => {
                return name.map(|name| Parsed::Unsupported {
                    name,
                    reason: format!("category {p:?} cannot be a pluggable component; plugd serves state, pubsub, bindings and secretstores"),
                });
            }
            p => {
                problems.push(problem(
                    doc,
                    label,
                    "spec.type",
                    format!("unknown category {p:?} in {ty:?}; expected one of state., pubsub., bindings., secretstores."),
                ));
                None
            }
        };
        if category.is_some() {
            if rest.is_empty() {
                problems.push(problem(
                    doc,
                    label,
                    "spec.type",
                    format!("{ty:?} names no component after the category"),
                ));
            }
            socket_name = rest.to_string();
        }
    }

    let version = match spec.get("version") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => scalar_to_string(other),
    };
    if !matches!(version.as_str(), "" | "v0" | "v1") {
        problems.push(problem(
            doc,
            label,
            "spec.version",
            format!("{version:?} is not served by pluggable components (use \"v1\", \"v0\" or leave it empty)"),
        ));
    }

    let ignore_errors = match spec.get("ignoreErrors") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) if s.eq_ignore_ascii_case("true") => true,
        Some(Value::String(s)) if s.eq_ignore_ascii_case("false") => false,
        Some(other) => {
            problems.push(problem(
                doc,
                label,
                "spec.ignoreErrors",
                format!("must be true or false, found {}", scalar_to_string(other)),
            ));
            false
        }
    };

    let init_timeout = match spec.get("initTimeout") {
        None | Some(Value::Null) => DEFAULT_INIT_TIMEOUT,
        Some(Value::String(s)) => match parse_go_duration(s) {
            Ok(d) if d.is_zero() => DEFAULT_INIT_TIMEOUT,
            Ok(d) => d,
            Err(e) => {
                problems.push(problem(
                    doc,
                    label,
                    "spec.initTimeout",
                    format!("{e} (use Go duration syntax such as 20s or 1m)"),
                ));
                DEFAULT_INIT_TIMEOUT
            }
        },
        Some(other) => {
            problems.push(problem(
                doc,
                label,
                "spec.initTimeout",
                format!(
                    "must be a duration string such as \"20s\", found {}",
                    scalar_to_string(other)
                ),
            ));
            DEFAULT_INIT_TIMEOUT
        }
    };

    let metadata = parse_metadata(doc, label, spec.get("metadata"), problems);

    let secret_store = match v.get("auth").and_then(|a| a.get("secretStore")) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        Some(_) => {
            problems.push(problem(
                doc,
                label,
                "auth.secretStore",
                "must be a non-empty string".into(),
            ));
            None
        }
    };

    let scopes = match v.get("scopes") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Sequence(items)) => items
            .iter()
            .enumerate()
            .filter_map(|(i, s)| match s {
                Value::String(s) => Some(s.trim().to_string()),
                _ => {
                    problems.push(problem(
                        doc,
                        label,
                        &format!("scopes[{i}]"),
                        "must be an app id string".into(),
                    ));
                    None
                }
            })
            .collect(),
        Some(_) => {
            problems.push(problem(
                doc,
                label,
                "scopes",
                "must be a list of app ids".into(),
            ));
            Vec::new()
        }
    };

    Some(Parsed::Component(ComponentManifest {
        file: doc.file.clone(),
        name: name?,
        namespace,
        category: category?,
        socket_name,
        version,
        ignore_errors,
        init_timeout,
        metadata,
        secret_store,
        scopes,
    }))
}

/// The fields of a Component plugd reads or knows to be harmless, per level.
const KNOWN_TOP_LEVEL: [&str; 7] = [
    "apiVersion",
    "kind",
    "metadata",
    "spec",
    "auth",
    "scopes",
    "status",
];
const KNOWN_SPEC: [&str; 5] = ["type", "version", "ignoreErrors", "initTimeout", "metadata"];
const KNOWN_METADATA_ITEM: [&str; 4] = ["name", "value", "secretKeyRef", "envRef"];

/// Fields plugd does not know are ignored, as Dapr ignores them, but a misspelt one (say
/// `spec.metdata`) silently changes what a component gets: each is named in a warning.
fn warn_unknown_fields(doc: &SourceDocument, label: &str, v: &Value, spec: &Value) {
    let unknown = |map: &Value, known: &[&str], prefix: &str| -> Vec<String> {
        map.as_mapping()
            .map(|m| {
                m.keys()
                    .map(scalar_to_string)
                    .filter(|k| !known.contains(&k.as_str()))
                    .map(|k| format!("{prefix}{k}"))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut fields = unknown(v, &KNOWN_TOP_LEVEL, "");
    fields.extend(unknown(spec, &KNOWN_SPEC, "spec."));
    if let Some(items) = spec.get("metadata").and_then(Value::as_sequence) {
        for (i, item) in items.iter().enumerate() {
            let at = match item.get("name").and_then(Value::as_str) {
                Some(name) if !name.is_empty() => name.to_string(),
                _ => i.to_string(),
            };
            fields.extend(unknown(
                item,
                &KNOWN_METADATA_ITEM,
                &format!("spec.metadata[{at}]."),
            ));
        }
    }
    for field in fields {
        tracing::warn!(
            file = %doc.file.display(),
            component = label,
            field = %field,
            "unknown field {field} in component {label} ({}); it is ignored",
            doc.file.display()
        );
    }
}

/// What kind of YAML value `v` is, for messages.
fn type_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

fn parse_metadata(
    doc: &SourceDocument,
    label: &str,
    value: Option<&Value>,
    problems: &mut Vec<Problem>,
) -> Vec<MetadataItem> {
    let items = match value {
        None | Some(Value::Null) => return Vec::new(),
        Some(Value::Sequence(items)) => items,
        Some(_) => {
            problems.push(problem(
                doc,
                label,
                "spec.metadata",
                "must be a list of {name, value} items".into(),
            ));
            return Vec::new();
        }
    };
    let mut out: Vec<MetadataItem> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let field = format!("spec.metadata[{i}]");
        let Some(name) = item
            .get("name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
        else {
            problems.push(problem(
                doc,
                label,
                &format!("{field}.name"),
                "is required".into(),
            ));
            continue;
        };
        let field = format!("spec.metadata[{name}]");
        let secret = item.get("secretKeyRef");
        let value = match secret {
            Some(r) if !r.is_null() => {
                let sname = r.get("name").and_then(Value::as_str).unwrap_or_default();
                if sname.is_empty() {
                    problems.push(problem(
                        doc,
                        label,
                        &format!("{field}.secretKeyRef.name"),
                        "is required".into(),
                    ));
                    continue;
                }
                let key = r
                    .get("key")
                    .and_then(Value::as_str)
                    .filter(|k| !k.is_empty())
                    .map(str::to_string);
                MetadataValue::SecretKeyRef {
                    name: sname.to_string(),
                    key,
                }
            }
            _ => match item.get("value") {
                Some(v) if !v.is_null() => MetadataValue::Plain(scalar_to_string(v)),
                _ => match item.get("envRef") {
                    Some(Value::String(var)) if !var.is_empty() => {
                        MetadataValue::EnvRef(var.clone())
                    }
                    Some(Value::Null) | None => MetadataValue::Plain(String::new()),
                    Some(_) => {
                        problems.push(problem(
                            doc,
                            label,
                            &format!("{field}.envRef"),
                            "must be an environment variable name".into(),
                        ));
                        continue;
                    }
                },
            },
        };
        // Duplicate names: the last one wins, as in Dapr.
        out.retain(|m| m.name != name);
        out.push(MetadataItem {
            name: name.to_string(),
            value,
        });
    }
    out
}

/// Stringifies a YAML value the way Dapr stringifies metadata values: strings as they are,
/// numbers and booleans as their literal text, lists and maps as JSON text.
pub fn scalar_to_string(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        Value::Tagged(t) => scalar_to_string(&t.value),
        Value::Sequence(_) | Value::Mapping(_) => {
            serde_json::to_string(&yaml_to_json(v)).unwrap_or_default()
        }
    }
}

fn yaml_to_json(v: &Value) -> serde_json::Value {
    match v {
        Value::Null => serde_json::Value::Null,
        Value::Bool(b) => serde_json::Value::Bool(*b),
        Value::Number(n) => serde_json::to_value(n).unwrap_or(serde_json::Value::Null),
        Value::String(s) => serde_json::Value::String(s.clone()),
        Value::Sequence(items) => {
            serde_json::Value::Array(items.iter().map(yaml_to_json).collect())
        }
        Value::Mapping(m) => serde_json::Value::Object(
            m.iter()
                .map(|(k, v)| (scalar_to_string(k), yaml_to_json(v)))
                .collect::<BTreeMap<_, _>>()
                .into_iter()
                .collect(),
        ),
        Value::Tagged(t) => yaml_to_json(&t.value),
    }
}

#[cfg(test)]
mod tests;
