//! The secret store: secrets read from a JSON file ([`FilesSecretStore`]).
//!
//! The file is read at Init and checked again on every Get and BulkGet: when
//! its size, modification or change time, or inode differ from the copy in
//! memory (one `fstat`), it is read and parsed again, so secrets can be added
//! or changed without restarting or re-initialising. A file that cannot be
//! read or parsed at that point fails the call with `UNAVAILABLE` naming the
//! path and the problem (the previous contents are not served); the next call
//! tries again.
//!
//! Secret values are never logged; keys are logged at debug level only.

use std::collections::HashMap;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use plugd_component_sdk::metadata::{ConfigError, warn_unknown};
use plugd_component_sdk::secretstore::{
    Metadata, Properties, Secret, SecretStore, SecretStoreError, feature,
};
use serde_json::Value;

use crate::props::{bool_property, property, raw_property};

/// Metadata keys (matched without regard to case, as Dapr does).
pub mod keys {
    /// Path of the JSON file (required). Relative paths are relative to the
    /// working directory of the process.
    pub const SECRETS_FILE: &str = "secretsFile";
    /// Joins the keys of nested objects (default [`super::DEFAULT_NESTED_SEPARATOR`]).
    pub const NESTED_SEPARATOR: &str = "nestedSeparator";
    /// Whether each top-level key is one secret holding several pairs.
    pub const MULTI_VALUED: &str = "multiValued";

    /// Every key the store reads.
    pub const ALL: [&str; 3] = [SECRETS_FILE, NESTED_SEPARATOR, MULTI_VALUED];
}

/// Separator of flattened keys when `nestedSeparator` is not given.
pub const DEFAULT_NESTED_SEPARATOR: &str = ":";

/// Validated settings of one secret store instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretsConfig {
    /// The secrets file, made absolute against the working directory.
    pub path: PathBuf,
    /// Joins nested keys (never empty).
    pub separator: String,
    /// Each top-level key is one secret with several pairs.
    pub multi_valued: bool,
}

impl SecretsConfig {
    /// Reads the Init properties; unknown keys are ignored here (the store
    /// logs them at Init). Every problem is reported together.
    pub fn from_properties(properties: &Properties) -> Result<Self, String> {
        let mut problems = Vec::new();
        let path = match property(properties, keys::SECRETS_FILE) {
            None => {
                problems.push(format!("{} is required", keys::SECRETS_FILE));
                PathBuf::new()
            }
            Some(path) => match std::path::absolute(path) {
                Ok(path) => path,
                Err(err) => {
                    problems.push(format!("{} {path:?}: {err}", keys::SECRETS_FILE));
                    PathBuf::new()
                }
            },
        };
        let separator = raw_property(properties, keys::NESTED_SEPARATOR)
            .unwrap_or(DEFAULT_NESTED_SEPARATOR)
            .to_owned();
        let multi_valued =
            bool_property(properties, keys::MULTI_VALUED, false).unwrap_or_else(|problem| {
                problems.push(problem);
                false
            });
        if problems.is_empty() {
            Ok(Self {
                path,
                separator,
                multi_valued,
            })
        } else {
            Err(ConfigError(problems).to_string())
        }
    }
}

/// Secrets by name.
pub type Secrets = HashMap<String, Secret>;

/// Turns the text of a secrets file into secrets (see the crate docs for the
/// rules). Errors never quote values from the file.
pub fn parse_secrets(text: &[u8], separator: &str, multi_valued: bool) -> Result<Secrets, String> {
    let value: Value =
        serde_json::from_slice(text).map_err(|err| format!("is not valid JSON: {err}"))?;
    let Value::Object(top) = value else {
        return Err(format!("must hold a JSON object, not {}", kind_of(&value)));
    };
    let mut secrets = Secrets::new();
    if multi_valued {
        for (name, value) in &top {
            let mut pairs = Secret::new();
            match value {
                Value::Null => continue,
                Value::Object(_) | Value::Array(_) => {
                    flatten(None, value, separator, &mut pairs)?;
                }
                scalar => {
                    flatten(Some(name), scalar, separator, &mut pairs)?;
                }
            }
            secrets.insert(name.clone(), pairs);
        }
    } else {
        let mut flat = Secret::new();
        flatten(None, &Value::Object(top), separator, &mut flat)?;
        secrets = flat
            .into_iter()
            .map(|(key, value)| (key.clone(), Secret::from([(key, value)])))
            .collect();
    }
    Ok(secrets)
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Adds the leaves of `value` to `out` under `prefix`: object members and
/// array elements (by index) below it joined with `separator`, strings as
/// they are, numbers and booleans as their JSON text; nulls are left out.
fn flatten(
    prefix: Option<&str>,
    value: &Value,
    separator: &str,
    out: &mut Secret,
) -> Result<(), String> {
    let child = |key: &str| match prefix {
        Some(prefix) => format!("{prefix}{separator}{key}"),
        None => key.to_owned(),
    };
    match value {
        Value::Object(members) => {
            for (key, value) in members {
                flatten(Some(&child(key)), value, separator, out)?;
            }
        }
        Value::Array(elements) => {
            for (index, value) in elements.iter().enumerate() {
                flatten(Some(&child(&index.to_string())), value, separator, out)?;
            }
        }
        Value::Null => {}
        leaf => {
            let key = prefix.unwrap_or_default().to_owned();
            let text = match leaf {
                Value::String(text) => text.clone(),
                other => other.to_string(),
            };
            if out.insert(key.clone(), text).is_some() {
                return Err(format!(
                    "key {key:?} appears more than once after flattening with separator {separator:?}"
                ));
            }
        }
    }
    Ok(())
}

/// What identifies one version of the file: a change to the contents changes
/// at least one of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    fn of(metadata: &std::fs::Metadata) -> Self {
        Self {
            dev: metadata.dev(),
            ino: metadata.ino(),
            len: metadata.len(),
            mtime: (metadata.mtime(), metadata.mtime_nsec()),
            ctime: (metadata.ctime(), metadata.ctime_nsec()),
        }
    }
}

/// Why the file could not be loaded (the message names the path).
#[derive(Debug)]
enum LoadError {
    Missing(String),
    Unreadable(String),
    Invalid(String),
}

impl LoadError {
    fn message(self) -> String {
        match self {
            Self::Missing(message) | Self::Unreadable(message) | Self::Invalid(message) => message,
        }
    }
}

/// The file's stamp, when it differs from `known`.
fn stamp_if_changed(path: &Path, known: Stamp) -> Result<Option<Stamp>, LoadError> {
    let metadata = std::fs::metadata(path).map_err(|err| io_problem(path, &err))?;
    let stamp = Stamp::of(&metadata);
    Ok((stamp != known).then_some(stamp))
}

/// Reads and parses the file; the stamp is taken from the open file.
fn load(config: &SecretsConfig) -> Result<(Stamp, Secrets), LoadError> {
    let path = &config.path;
    let mut file = std::fs::File::open(path).map_err(|err| io_problem(path, &err))?;
    let metadata = file.metadata().map_err(|err| io_problem(path, &err))?;
    if metadata.is_dir() {
        return Err(LoadError::Invalid(format!(
            "secrets file {path:?} is a folder"
        )));
    }
    let mut text = Vec::new();
    file.read_to_end(&mut text)
        .map_err(|err| io_problem(path, &err))?;
    let secrets = parse_secrets(&text, &config.separator, config.multi_valued)
        .map_err(|problem| LoadError::Invalid(format!("secrets file {path:?} {problem}")))?;
    Ok((Stamp::of(&metadata), secrets))
}

fn io_problem(path: &Path, err: &std::io::Error) -> LoadError {
    if err.kind() == std::io::ErrorKind::NotFound {
        LoadError::Missing(format!("secrets file {path:?} does not exist"))
    } else {
        LoadError::Unreadable(format!("secrets file {path:?} cannot be read: {err}"))
    }
}

/// One successful Init and what was last read.
#[derive(Debug, Clone)]
struct Loaded {
    /// Counts Inits, so that a re-read finishing after a re-Init is dropped.
    generation: u64,
    config: Arc<SecretsConfig>,
    stamp: Stamp,
    secrets: Arc<Secrets>,
}

/// A secret store reading a JSON file. One per component instance.
#[derive(Debug)]
pub struct FilesSecretStore {
    instance: String,
    component_type: String,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    inits: u64,
    loaded: Option<Loaded>,
}

impl FilesSecretStore {
    /// An uninitialised store for component instance `instance`.
    pub fn new(instance: &str) -> Self {
        Self {
            instance: instance.to_owned(),
            component_type: "secretstores.files".to_owned(),
            state: Mutex::new(State::default()),
        }
    }

    /// Sets the type name used in log lines (`secretstores.<socket name>`).
    #[must_use]
    pub fn component_type(mut self, component_type: impl Into<String>) -> Self {
        self.component_type = component_type.into();
        self
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether the instance was initialised with `multiValued: true`; `None`
    /// before a successful Init.
    pub fn multi_valued(&self) -> Option<bool> {
        self.state()
            .loaded
            .as_ref()
            .map(|loaded| loaded.config.multi_valued)
    }

    /// The secrets, re-read first if the file changed.
    async fn current(&self) -> Result<Arc<Secrets>, SecretStoreError> {
        let loaded = self
            .state()
            .loaded
            .clone()
            .ok_or(SecretStoreError::NotInitialized)?;
        let config = Arc::clone(&loaded.config);
        let fresh = tokio::task::spawn_blocking(move || {
            match stamp_if_changed(&config.path, loaded.stamp)? {
                None => Ok(None),
                Some(_) => load(&config).map(Some),
            }
        })
        .await
        .map_err(SecretStoreError::internal)?
        .map_err(|err| SecretStoreError::Unavailable(err.message()))?;
        let Some((stamp, secrets)) = fresh else {
            return Ok(loaded.secrets);
        };
        let secrets = Arc::new(secrets);
        tracing::info!(
            instance = %self.instance,
            path = %loaded.config.path.display(),
            secrets = secrets.len(),
            "secrets file changed; re-read it"
        );
        let mut state = self.state();
        if let Some(current) = state.loaded.as_mut()
            && current.generation == loaded.generation
        {
            current.stamp = stamp;
            current.secrets = Arc::clone(&secrets);
        }
        Ok(secrets)
    }
}

impl SecretStore for FilesSecretStore {
    // Not for every instance: `features` names MULTIPLE_KEY_VALUES_PER_SECRET
    // for the instances whose `multiValued` is true.
    const MULTIPLE_KEY_VALUES_PER_SECRET: bool = false;

    async fn init(&self, properties: Properties) -> Result<(), SecretStoreError> {
        let generation = {
            let mut state = self.state();
            state.inits += 1;
            state.loaded = None;
            state.inits
        };
        let config = Arc::new(
            SecretsConfig::from_properties(&properties)
                .map_err(SecretStoreError::InvalidArgument)?,
        );
        warn_unknown(
            &self.component_type,
            &self.instance,
            &properties,
            &keys::ALL,
        );
        let to_load = Arc::clone(&config);
        let (stamp, secrets) = tokio::task::spawn_blocking(move || load(&to_load))
            .await
            .map_err(SecretStoreError::internal)?
            .map_err(|err| SecretStoreError::InvalidArgument(err.message()))?;
        tracing::info!(
            instance = %self.instance,
            path = %config.path.display(),
            separator = %config.separator,
            multi_valued = config.multi_valued,
            secrets = secrets.len(),
            "secret store ready"
        );
        let mut state = self.state();
        if state.inits == generation {
            state.loaded = Some(Loaded {
                generation,
                config,
                stamp,
                secrets: Arc::new(secrets),
            });
        }
        Ok(())
    }

    fn features(&self) -> Vec<String> {
        if self.multi_valued() == Some(true) {
            vec![feature::MULTIPLE_KEY_VALUES_PER_SECRET.to_owned()]
        } else {
            Vec::new()
        }
    }

    async fn get(&self, key: String, _metadata: Metadata) -> Result<Secret, SecretStoreError> {
        tracing::debug!(instance = %self.instance, %key, "get secret");
        let secrets = self.current().await?;
        secrets
            .get(&key)
            .cloned()
            .ok_or(SecretStoreError::NotFound(key))
    }

    async fn bulk_get(&self, _metadata: Metadata) -> Result<Secrets, SecretStoreError> {
        let secrets = self.current().await?;
        tracing::debug!(instance = %self.instance, secrets = secrets.len(), "bulk get secrets");
        Ok(Secrets::clone(&secrets))
    }

    async fn ping(&self) -> Result<(), SecretStoreError> {
        let path = self
            .state()
            .loaded
            .as_ref()
            .map(|loaded| loaded.config.path.clone());
        match path {
            None => Ok(()),
            Some(path) => tokio::fs::metadata(&path)
                .await
                .map(drop)
                .map_err(|err| SecretStoreError::Unavailable(io_problem(&path, &err).message())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(pairs: &[(&str, &str)]) -> Secret {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    const NESTED: &str = r#"{
        "api": "token",
        "db": {"user": "admin", "password": "hunter2", "port": 5432, "tls": true,
               "conn": {"host": "h"}},
        "list": ["a", {"b": 1}],
        "nothing": null,
        "empty": {}
    }"#;

    #[test]
    fn single_valued_flattens_everything() {
        let secrets = parse_secrets(NESTED.as_bytes(), ":", false).expect("valid");
        let expected: Secrets = [
            ("api", "token"),
            ("db:user", "admin"),
            ("db:password", "hunter2"),
            ("db:port", "5432"),
            ("db:tls", "true"),
            ("db:conn:host", "h"),
            ("list:0", "a"),
            ("list:1:b", "1"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), secret(&[(k, v)])))
        .collect();
        assert_eq!(secrets, expected);
    }

    #[test]
    fn other_separators() {
        let secrets = parse_secrets(br#"{"a":{"b":{"c":"x"}}}"#, "__", false).expect("valid");
        assert_eq!(secrets["a__b__c"], secret(&[("a__b__c", "x")]));
    }

    #[test]
    fn multi_valued_keeps_top_level_keys() {
        let secrets = parse_secrets(NESTED.as_bytes(), ":", true).expect("valid");
        assert_eq!(secrets["api"], secret(&[("api", "token")]));
        assert_eq!(
            secrets["db"],
            secret(&[
                ("user", "admin"),
                ("password", "hunter2"),
                ("port", "5432"),
                ("tls", "true"),
                ("conn:host", "h"),
            ])
        );
        assert_eq!(secrets["list"], secret(&[("0", "a"), ("1:b", "1")]));
        assert_eq!(secrets["empty"], Secret::new());
        assert!(!secrets.contains_key("nothing"));
        assert_eq!(secrets.len(), 4);
    }

    #[test]
    fn bad_files_are_refused_without_quoting_values() {
        let err = parse_secrets(b"{\"a\": \"hunter2\"", ":", false).expect_err("truncated");
        assert!(err.starts_with("is not valid JSON"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
        let err = parse_secrets(b"[\"hunter2\"]", ":", false).expect_err("array");
        assert_eq!(err, "must hold a JSON object, not an array");
        let err = parse_secrets(b"\"hunter2\"", ":", false).expect_err("string");
        assert_eq!(err, "must hold a JSON object, not a string");
        let err = parse_secrets(br#"{"a:b": "hunter2", "a": {"b": "x"}}"#, ":", false)
            .expect_err("collision");
        assert_eq!(
            err,
            "key \"a:b\" appears more than once after flattening with separator \":\""
        );
        assert!(!err.contains("hunter2"));
    }

    fn props(pairs: &[(&str, &str)]) -> Properties {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn config_defaults_and_problems() {
        let config =
            SecretsConfig::from_properties(&props(&[("secretsfile", "s.json")])).expect("valid");
        assert!(config.path.is_absolute());
        assert!(config.path.ends_with("s.json"));
        assert_eq!(config.separator, ":");
        assert!(!config.multi_valued);

        let config = SecretsConfig::from_properties(&props(&[
            ("secretsFile", "/x/s.json"),
            ("NestedSeparator", "."),
            ("multiValued", "true"),
        ]))
        .expect("valid");
        assert_eq!(config.path, Path::new("/x/s.json"));
        assert_eq!(config.separator, ".");
        assert!(config.multi_valued);

        let err = SecretsConfig::from_properties(&props(&[("multiValued", "perhaps")]))
            .expect_err("invalid");
        assert_eq!(
            err,
            "invalid metadata: secretsFile is required; multiValued must be true or false, not \"perhaps\""
        );
    }
}
