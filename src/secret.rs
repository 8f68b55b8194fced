//! Secret values held by plugd: resolved `secretKeyRef` values, secret-store answers and the
//! Init metadata they end up in. Their `Debug` never shows a value; the plain text is taken
//! out ([`ExposeSecret`]) only where it is passed on (Init metadata, the app's secret API
//! response).

use std::{
    collections::HashMap,
    fmt,
    ops::{Deref, DerefMut},
};

pub use secrecy::{ExposeSecret, SecretString};

/// A secret's key/value pairs, values wrapped.
pub type SecretData = HashMap<String, SecretString>;

/// Wraps every value of a plain map.
pub fn wrap(data: HashMap<String, String>) -> SecretData {
    data.into_iter()
        .map(|(k, v)| (k, SecretString::from(v)))
        .collect()
}

/// The plain map, for passing it on.
pub fn expose(data: &SecretData) -> HashMap<String, String> {
    data.iter()
        .map(|(k, v)| (k.clone(), v.expose_secret().to_string()))
        .collect()
}

/// A component's Init metadata once `secretKeyRef`s are resolved: it may hold secret values,
/// so its `Debug` lists the names only.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct InitProperties(HashMap<String, String>);

impl InitProperties {
    /// The plain map, to send with Init.
    pub fn into_inner(self) -> HashMap<String, String> {
        self.0
    }
}

impl From<HashMap<String, String>> for InitProperties {
    fn from(map: HashMap<String, String>) -> Self {
        Self(map)
    }
}

impl Deref for InitProperties {
    type Target = HashMap<String, String>;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl DerefMut for InitProperties {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl fmt::Debug for InitProperties {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<&String> = self.0.keys().collect();
        names.sort();
        f.debug_map()
            .entries(names.into_iter().map(|k| (k, "[redacted]")))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_values() {
        let value = "s3cr3t-Value-91";
        let secret = SecretString::from(value);
        assert!(!format!("{secret:?}").contains(value));
        let data = wrap(HashMap::from([("password".to_string(), value.to_string())]));
        let shown = format!("{data:?}");
        assert!(
            shown.contains("password") && !shown.contains(value),
            "{shown}"
        );
        assert_eq!(expose(&data)["password"], value);
        let props = InitProperties::from(HashMap::from([("password".to_string(), value.into())]));
        let shown = format!("{props:?} {props:#?}");
        assert!(
            shown.contains("password") && !shown.contains(value),
            "{shown}"
        );
        assert_eq!(props.into_inner()["password"], value);
    }
}
