//! Component metadata (`spec.metadata` of the Component YAML), validated.

use std::collections::HashMap;
use std::time::Duration;

#[doc(no_inline)]
pub use plugd_component_sdk::metadata::ConfigError;
use plugd_component_sdk::metadata::property;

/// Table used when `tableName` is not given.
pub const DEFAULT_TABLE_NAME: &str = "state";
/// Busy timeout used when `timeout` is not given.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(20);
/// Period of the expired-row cleanup when `cleanupInterval` is not given.
pub const DEFAULT_CLEANUP_INTERVAL: Duration = Duration::from_secs(3600);
/// Longest accepted `timeout` (SQLite keeps it as a 32-bit count of ms).
pub const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// Longest accepted `cleanupInterval`.
pub const MAX_CLEANUP_INTERVAL: Duration = Duration::from_secs(365 * 24 * 3600);

/// Metadata keys (matched without regard to case, as Dapr does).
pub mod keys {
    /// Path of the database file, or a `file:` URI, or `:memory:`.
    pub const CONNECTION_STRING: &str = "connectionString";
    /// Alias of [`CONNECTION_STRING`].
    pub const DATABASE_PATH: &str = "databasePath";
    /// Name of the table holding the state.
    pub const TABLE_NAME: &str = "tableName";
    /// How long a statement waits for a lock held by another connection.
    pub const TIMEOUT: &str = "timeout";
    /// Period of the expired-row cleanup; `0` or negative disables it.
    pub const CLEANUP_INTERVAL: &str = "cleanupInterval";
}

/// Validated settings of one store instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// What SQLite opens: a path, a `file:` URI or `:memory:`.
    pub connection_string: String,
    /// The state table (a plain identifier).
    pub table_name: String,
    /// SQLite busy timeout.
    pub timeout: Duration,
    /// Period of the expired-row cleanup; `None` disables it.
    pub cleanup_interval: Option<Duration>,
}

impl Config {
    /// A config for `connection_string` with every other setting defaulted.
    pub fn new(connection_string: impl Into<String>) -> Self {
        Self {
            connection_string: connection_string.into(),
            table_name: DEFAULT_TABLE_NAME.to_owned(),
            timeout: DEFAULT_TIMEOUT,
            cleanup_interval: Some(DEFAULT_CLEANUP_INTERVAL),
        }
    }

    /// Reads the Init properties. Unknown keys are ignored (daprd passes its
    /// own keys such as `keyPrefix` through).
    pub fn from_properties(properties: &HashMap<String, String>) -> Result<Self, ConfigError> {
        let get = |key: &str| property(properties, key);
        let mut problems = Vec::new();

        let connection_string = match (get(keys::CONNECTION_STRING), get(keys::DATABASE_PATH)) {
            (Some(a), Some(b)) if a != b => {
                problems.push(format!(
                    "{} and {} are both set and differ; set one",
                    keys::CONNECTION_STRING,
                    keys::DATABASE_PATH
                ));
                String::new()
            }
            (Some(value), _) | (None, Some(value)) => value.to_owned(),
            (None, None) => {
                problems.push(format!("{} is required", keys::CONNECTION_STRING));
                String::new()
            }
        };

        let table_name = get(keys::TABLE_NAME)
            .unwrap_or(DEFAULT_TABLE_NAME)
            .to_owned();
        if let Err(problem) = validate_table_name(&table_name) {
            problems.push(problem);
        }

        let timeout = match get(keys::TIMEOUT).map(parse_duration) {
            None => DEFAULT_TIMEOUT,
            Some(Ok(Some(timeout))) if !timeout.is_zero() && timeout <= MAX_TIMEOUT => timeout,
            Some(Ok(_)) => {
                problems.push(format!(
                    "{} must be positive and at most {}",
                    keys::TIMEOUT,
                    humantime::format_duration(MAX_TIMEOUT)
                ));
                DEFAULT_TIMEOUT
            }
            Some(Err(problem)) => {
                problems.push(format!("{}: {problem}", keys::TIMEOUT));
                DEFAULT_TIMEOUT
            }
        };

        let cleanup_interval = match get(keys::CLEANUP_INTERVAL).map(parse_duration) {
            None => Some(DEFAULT_CLEANUP_INTERVAL),
            Some(Ok(Some(interval))) if interval > MAX_CLEANUP_INTERVAL => {
                problems.push(format!(
                    "{} must be at most {}",
                    keys::CLEANUP_INTERVAL,
                    humantime::format_duration(MAX_CLEANUP_INTERVAL)
                ));
                None
            }
            Some(Ok(interval)) => interval.filter(|interval| !interval.is_zero()),
            Some(Err(problem)) => {
                problems.push(format!("{}: {problem}", keys::CLEANUP_INTERVAL));
                None
            }
        };

        if problems.is_empty() {
            Ok(Self {
                connection_string,
                table_name,
                timeout,
                cleanup_interval,
            })
        } else {
            Err(ConfigError(problems))
        }
    }
}

/// A duration as `10s`, `1h30m`, `250ms` or a bare number of seconds.
/// Negative numbers give `None` (meaning "disabled" where that is allowed).
fn parse_duration(value: &str) -> Result<Option<Duration>, String> {
    if let Ok(seconds) = value.parse::<i64>() {
        return Ok(u64::try_from(seconds).ok().map(Duration::from_secs));
    }
    humantime::parse_duration(value)
        .map(Some)
        .map_err(|err| format!("{value:?} is not a duration ({err})"))
}

fn validate_table_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let starts_well = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !starts_well || !rest_ok || name.len() > 64 {
        Err(format!(
            "{} {name:?} must be a letter or '_' followed by letters, digits or '_' (at most 64)",
            keys::TABLE_NAME
        ))
    } else if name.to_ascii_lowercase().starts_with("sqlite_") {
        Err(format!(
            "{} {name:?} uses SQLite's reserved prefix",
            keys::TABLE_NAME
        ))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn defaults() {
        let config =
            Config::from_properties(&props(&[("connectionString", "/tmp/x.db")])).expect("valid");
        assert_eq!(config, Config::new("/tmp/x.db"));
    }

    #[test]
    fn all_keys_and_aliases() {
        let config = Config::from_properties(&props(&[
            ("DatabasePath", "data.db"),
            ("tableName", "my_state"),
            ("timeout", "5s"),
            ("cleanupInterval", "10"),
            ("keyPrefix", "appid"),
        ]))
        .expect("valid");
        assert_eq!(config.connection_string, "data.db");
        assert_eq!(config.table_name, "my_state");
        assert_eq!(config.timeout, Duration::from_secs(5));
        assert_eq!(config.cleanup_interval, Some(Duration::from_secs(10)));
    }

    #[test]
    fn cleanup_can_be_disabled() {
        for value in ["0", "-1", "0s"] {
            let config = Config::from_properties(&props(&[
                ("connectionString", ":memory:"),
                ("cleanupInterval", value),
            ]))
            .expect("valid");
            assert_eq!(config.cleanup_interval, None, "{value}");
        }
    }

    #[test]
    fn every_problem_is_reported() {
        let err = Config::from_properties(&props(&[
            ("tableName", "bad-name; DROP TABLE x"),
            ("timeout", "soon"),
            ("cleanupInterval", "often"),
        ]))
        .expect_err("invalid");
        assert_eq!(err.0.len(), 4, "{err}");
        assert!(err.to_string().contains("connectionString is required"));
    }

    #[test]
    fn out_of_range_durations_are_refused() {
        let err = Config::from_properties(&props(&[
            ("connectionString", ":memory:"),
            ("timeout", "100000000000000s"),
            ("cleanupInterval", "100000000000000000s"),
        ]))
        .expect_err("too long");
        assert_eq!(err.0.len(), 2, "{err}");
        let err = Config::from_properties(&props(&[
            ("connectionString", ":memory:"),
            ("timeout", "0"),
        ]))
        .expect_err("zero timeout");
        assert_eq!(err.0.len(), 1, "{err}");
    }

    #[test]
    fn reserved_and_long_table_names_are_refused() {
        assert!(validate_table_name("sqlite_master").is_err());
        assert!(validate_table_name(&"a".repeat(65)).is_err());
        assert!(validate_table_name("1abc").is_err());
        assert!(validate_table_name("_ok_1").is_ok());
    }
}
