//! The environment-variable secret store ([`EnvSecretStore`]), Dapr's
//! `secretstores.local.env`, served by the `plugd-env` binary.
//!
//! | key | meaning | default |
//! |---|---|---|
//! | `prefix` | only variables whose names start with it (case-sensitive) are visible, and it is removed from the names in answers | none: every variable |
//!
//! - **Get `k`** reads the variable `<prefix>k` and answers `{k: value}`. A
//!   variable that is not set (or whose value is not UTF-8) answers
//!   `{k: ""}`, not an error, as Dapr does.
//! - **Bulk get** answers every visible variable as a secret holding one
//!   pair, `{name: {name: value}}`, names without the prefix. With a prefix,
//!   a variable is visible when its name is longer than the prefix and starts
//!   with it.
//! - **Never visible**, whatever the prefix: `APP_API_TOKEN` and every name
//!   starting with `DAPR_` (both compared without regard to case, after the
//!   prefix is added). A Get of such a name answers an empty value and logs a
//!   warning naming the key.
//! - The variables are those of the `plugd-env` process (plugd passes its
//!   own environment on when it starts it), read at each call.
//! - Values are never logged. No features (one value per secret).

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

use plugd_component_sdk::metadata::{raw_property, warn_unknown};
use plugd_component_sdk::secretstore::{
    Metadata, Properties, Secret, SecretStore, SecretStoreError,
};

/// Socket name when none is given: `local.env.sock`, type
/// `secretstores.local.env`.
pub const DEFAULT_SOCKET_NAME: &str = "local.env";

/// Component metadata keys (matched without regard to case, as Dapr does).
pub mod keys {
    /// Only variables starting with it are visible; it is removed from the
    /// names in answers. Taken as given (not trimmed).
    pub const PREFIX: &str = "prefix";

    /// Every key the store reads.
    pub const ALL: [&str; 1] = [PREFIX];
}

/// Where the variables come from.
#[derive(Debug, Clone)]
pub enum Environment {
    /// The process environment, read at each call.
    Process,
    /// A fixed set (for tests and embedding).
    Fixed(Arc<HashMap<String, String>>),
}

impl Environment {
    fn get(&self, name: &str) -> Option<String> {
        match self {
            Self::Process => std::env::var(name).ok(),
            Self::Fixed(vars) => vars.get(name).cloned(),
        }
    }

    /// Every variable whose name and value are UTF-8.
    fn all(&self) -> Vec<(String, String)> {
        match self {
            Self::Process => std::env::vars_os()
                .filter_map(|(name, value)| {
                    Some((name.into_string().ok()?, value.into_string().ok()?))
                })
                .collect(),
            Self::Fixed(vars) => vars
                .iter()
                .map(|(name, value)| (name.clone(), value.clone()))
                .collect(),
        }
    }
}

/// Whether Dapr lets the store read variable `name` at all.
pub fn is_allowed(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    upper != "APP_API_TOKEN" && !upper.starts_with("DAPR_")
}

/// A secret store over environment variables. One per component instance.
#[derive(Debug)]
pub struct EnvSecretStore {
    instance: String,
    component_type: String,
    environment: Environment,
    /// The prefix once initialised (`Some("")` without one).
    prefix: RwLock<Option<String>>,
}

impl EnvSecretStore {
    /// An uninitialised store over the process environment.
    pub fn new(instance: &str) -> Self {
        Self::with_environment(instance, Environment::Process)
    }

    /// An uninitialised store over `environment`.
    pub fn with_environment(instance: &str, environment: Environment) -> Self {
        Self {
            instance: instance.to_owned(),
            component_type: format!("secretstores.{DEFAULT_SOCKET_NAME}"),
            environment,
            prefix: RwLock::new(None),
        }
    }

    /// Sets the type name used in log lines (`secretstores.<socket name>`).
    #[must_use]
    pub fn component_type(mut self, component_type: impl Into<String>) -> Self {
        self.component_type = component_type.into();
        self
    }

    fn prefix(&self) -> Result<String, SecretStoreError> {
        self.prefix
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or(SecretStoreError::NotInitialized)
    }
}

impl SecretStore for EnvSecretStore {
    async fn init(&self, properties: Properties) -> Result<(), SecretStoreError> {
        let prefix = raw_property(&properties, keys::PREFIX)
            .unwrap_or_default()
            .to_owned();
        warn_unknown(
            &self.component_type,
            &self.instance,
            &properties,
            &keys::ALL,
        );
        tracing::info!(instance = %self.instance, prefix = %prefix, "environment secret store ready");
        *self.prefix.write().unwrap_or_else(PoisonError::into_inner) = Some(prefix);
        Ok(())
    }

    async fn get(&self, key: String, _metadata: Metadata) -> Result<Secret, SecretStoreError> {
        let name = format!("{}{key}", self.prefix()?);
        let value = if is_allowed(&name) {
            self.environment.get(&name).unwrap_or_default()
        } else {
            tracing::warn!(instance = %self.instance, key = %key, "access to this environment variable is forbidden");
            String::new()
        };
        Ok(Secret::from([(key, value)]))
    }

    async fn bulk_get(
        &self,
        _metadata: Metadata,
    ) -> Result<HashMap<String, Secret>, SecretStoreError> {
        let prefix = self.prefix()?;
        Ok(self
            .environment
            .all()
            .into_iter()
            .filter(|(name, _)| is_allowed(name))
            .filter_map(|(name, value)| {
                let short = name.strip_prefix(prefix.as_str())?;
                // With a prefix, the bare prefix itself is not a secret.
                if short.is_empty() && !prefix.is_empty() {
                    return None;
                }
                Some((short.to_owned(), Secret::from([(short.to_owned(), value)])))
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(vars: &[(&str, &str)]) -> EnvSecretStore {
        let vars = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        EnvSecretStore::with_environment("env", Environment::Fixed(Arc::new(vars)))
    }

    fn props(pairs: &[(&str, &str)]) -> Properties {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    const VARS: [(&str, &str); 7] = [
        ("MYAPP_DB", "pw"),
        ("MYAPP_", "bare prefix"),
        ("myapp_lower", "other case"),
        ("HOME", "/home/x"),
        ("DAPR_API_TOKEN", "t"),
        ("MYAPP_DAPR_X", "allowed: the full name starts with MYAPP_"),
        ("app_api_token", "t2"),
    ];

    fn secret(pairs: &[(&str, &str)]) -> Secret {
        props(pairs)
    }

    #[tokio::test]
    async fn calls_before_init_fail() {
        let store = store(&VARS);
        assert!(matches!(
            store.get("HOME".into(), Metadata::new()).await,
            Err(SecretStoreError::NotInitialized)
        ));
    }

    #[tokio::test]
    async fn without_a_prefix_every_allowed_variable() {
        let store = store(&VARS);
        store.init(Properties::new()).await.expect("init");
        let get = |key: &str| store.get(key.to_owned(), Metadata::new());
        assert_eq!(
            get("HOME").await.expect("get"),
            secret(&[("HOME", "/home/x")])
        );
        assert_eq!(
            get("MISSING").await.expect("get"),
            secret(&[("MISSING", "")])
        );
        assert_eq!(
            get("DAPR_API_TOKEN").await.expect("get"),
            secret(&[("DAPR_API_TOKEN", "")])
        );
        assert_eq!(
            get("APP_API_TOKEN").await.expect("get"),
            secret(&[("APP_API_TOKEN", "")])
        );
        assert_eq!(
            get("app_api_token").await.expect("get"),
            secret(&[("app_api_token", "")])
        );
        let all = store.bulk_get(Metadata::new()).await.expect("bulk");
        let mut names: Vec<&str> = all.keys().map(String::as_str).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            ["HOME", "MYAPP_", "MYAPP_DAPR_X", "MYAPP_DB", "myapp_lower"]
        );
        assert_eq!(all["HOME"], secret(&[("HOME", "/home/x")]));
    }

    #[tokio::test]
    async fn a_prefix_limits_and_is_stripped() {
        let store = store(&VARS);
        store
            .init(props(&[("Prefix", "MYAPP_")]))
            .await
            .expect("init");
        let get = |key: &str| store.get(key.to_owned(), Metadata::new());
        assert_eq!(get("DB").await.expect("get"), secret(&[("DB", "pw")]));
        assert_eq!(get("HOME").await.expect("get"), secret(&[("HOME", "")]));
        assert_eq!(get("lower").await.expect("get"), secret(&[("lower", "")]));
        assert_eq!(
            get("DAPR_X").await.expect("get"),
            secret(&[("DAPR_X", "allowed: the full name starts with MYAPP_")])
        );
        let all = store.bulk_get(Metadata::new()).await.expect("bulk");
        let expected: HashMap<String, Secret> = [
            ("DB".to_owned(), secret(&[("DB", "pw")])),
            (
                "DAPR_X".to_owned(),
                secret(&[("DAPR_X", "allowed: the full name starts with MYAPP_")]),
            ),
        ]
        .into();
        assert_eq!(all, expected);
    }

    #[tokio::test]
    async fn a_prefix_cannot_reach_forbidden_names() {
        let store = store(&[("DAPR_API_TOKEN", "t"), ("DAPR_X", "x")]);
        store
            .init(props(&[("prefix", "DAPR_")]))
            .await
            .expect("init");
        assert_eq!(
            store
                .get("API_TOKEN".into(), Metadata::new())
                .await
                .expect("get"),
            secret(&[("API_TOKEN", "")])
        );
        assert!(
            store
                .bulk_get(Metadata::new())
                .await
                .expect("bulk")
                .is_empty()
        );
    }

    #[tokio::test]
    async fn re_init_replaces_the_prefix() {
        let store = store(&VARS);
        store
            .init(props(&[("prefix", "MYAPP_")]))
            .await
            .expect("init");
        store.init(Properties::new()).await.expect("re-init");
        assert_eq!(
            store
                .get("HOME".into(), Metadata::new())
                .await
                .expect("get"),
            secret(&[("HOME", "/home/x")])
        );
    }
}
