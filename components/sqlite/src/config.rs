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
    /// Dapr's older name of [`TIMEOUT`] (a number of seconds).
    pub const TIMEOUT_IN_SECONDS: &str = "timeoutInSeconds";
    /// How long a statement waits for a lock held by another connection;
    /// when absent, [`TIMEOUT`] is that wait.
    pub const BUSY_TIMEOUT: &str = "busyTimeout";
    /// `true`: no write-ahead log (SQLite's default rollback journal).
    pub const DISABLE_WAL: &str = "disableWAL";
    /// Dapr's table of component metadata (migration levels); accepted and
    /// unused, this store keeps none.
    pub const METADATA_TABLE_NAME: &str = "metadataTableName";

    /// Every key the store reads or accepts.
    pub const ALL: [&str; 9] = [
        CONNECTION_STRING,
        DATABASE_PATH,
        TABLE_NAME,
        TIMEOUT,
        TIMEOUT_IN_SECONDS,
        BUSY_TIMEOUT,
        DISABLE_WAL,
        METADATA_TABLE_NAME,
        CLEANUP_INTERVAL,
    ];
}

/// Validated settings of one store instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// What SQLite opens: a path, a `file:` URI or `:memory:` (the
    /// `connectionString` with the Go driver's `_`-parameters removed).
    pub connection_string: String,
    /// The state table (a plain identifier).
    pub table_name: String,
    /// SQLite busy timeout.
    pub timeout: Duration,
    /// Period of the expired-row cleanup; `None` disables it.
    pub cleanup_interval: Option<Duration>,
    /// No write-ahead log (`disableWAL`, or a `journal_mode` pragma).
    pub disable_wal: bool,
    /// `_pragma=name(value)` parameters of a `file:` connection string, in
    /// order, checked to be plain words; applied after opening.
    pub pragmas: Vec<(String, String)>,
}

/// The parts of a `connectionString` SQLite itself does not read.
#[derive(Debug, Default, PartialEq, Eq)]
struct GoDriverOptions {
    /// What SQLite opens.
    uri: String,
    pragmas: Vec<(String, String)>,
}

/// Splits the Go SQLite drivers' parameters off a `file:` URI: every query
/// parameter whose name starts with `_` is removed (`_txlock`,
/// `_time_format`, ...); `_pragma=name(value)` ones are kept as pragmas to
/// apply. Anything else (plain paths, `:memory:`, SQLite's own URI
/// parameters such as `mode=memory` or `cache=shared`) is left to SQLite.
fn go_driver_options(connection_string: &str) -> Result<GoDriverOptions, String> {
    let Some((base, query)) = connection_string
        .strip_prefix("file:")
        .and_then(|_| connection_string.split_once('?'))
    else {
        return Ok(GoDriverOptions {
            uri: connection_string.to_owned(),
            pragmas: Vec::new(),
        });
    };
    let mut kept = Vec::new();
    let mut pragmas = Vec::new();
    for parameter in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = parameter.split_once('=').unwrap_or((parameter, ""));
        if name == "_pragma" {
            let value = percent_decode(value)?;
            let pragma = value
                .strip_suffix(')')
                .and_then(|inner| inner.split_once('('))
                .filter(|(name, value)| is_word(name) && is_word(value))
                .ok_or_else(|| format!("_pragma {value:?} must be name(value) with plain words"))?;
            pragmas.push((pragma.0.to_ascii_lowercase(), pragma.1.to_owned()));
        } else if !name.starts_with('_') {
            kept.push(parameter);
        }
    }
    let uri = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok(GoDriverOptions { uri, pragmas })
}

fn is_word(text: &str) -> bool {
    !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

fn percent_decode(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&byte) = bytes.get(i) {
        if byte == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|hex| std::str::from_utf8(hex).ok())
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
                .ok_or_else(|| format!("{text:?} has a bad %-escape"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(byte);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("{text:?} is not UTF-8"))
}

impl Config {
    /// A config for `connection_string` with every other setting defaulted.
    pub fn new(connection_string: impl Into<String>) -> Self {
        Self {
            connection_string: connection_string.into(),
            table_name: DEFAULT_TABLE_NAME.to_owned(),
            timeout: DEFAULT_TIMEOUT,
            cleanup_interval: Some(DEFAULT_CLEANUP_INTERVAL),
            disable_wal: false,
            pragmas: Vec::new(),
        }
    }

    /// Reads the Init properties. Unknown keys are ignored here; the store
    /// logs them at Init (one warning, names only).
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

        let mut read_timeout = |key: &str| match get(key).map(parse_duration) {
            None => None,
            Some(Ok(Some(timeout))) if !timeout.is_zero() && timeout <= MAX_TIMEOUT => {
                Some(timeout)
            }
            Some(Ok(_)) => {
                problems.push(format!(
                    "{key} must be positive and at most {}",
                    humantime::format_duration(MAX_TIMEOUT)
                ));
                None
            }
            Some(Err(problem)) => {
                problems.push(format!("{key}: {problem}"));
                None
            }
        };
        let timeout =
            read_timeout(keys::TIMEOUT).or_else(|| read_timeout(keys::TIMEOUT_IN_SECONDS));
        // The lock wait: busyTimeout when given, else the operation timeout.
        let timeout = read_timeout(keys::BUSY_TIMEOUT)
            .or(timeout)
            .unwrap_or(DEFAULT_TIMEOUT);

        let disable_wal = match get(keys::DISABLE_WAL).map(|v| v.to_ascii_lowercase()) {
            None => false,
            Some(v) if matches!(v.as_str(), "true" | "1" | "yes" | "on") => true,
            Some(v) if matches!(v.as_str(), "false" | "0" | "no" | "off") => false,
            Some(v) => {
                problems.push(format!(
                    "{} must be true or false, not {v:?}",
                    keys::DISABLE_WAL
                ));
                false
            }
        };

        if let Some(name) = get(keys::METADATA_TABLE_NAME)
            && let Err(problem) = validate_table_name(name)
        {
            problems.push(problem.replace(keys::TABLE_NAME, keys::METADATA_TABLE_NAME));
        }

        let GoDriverOptions { uri, pragmas } = go_driver_options(&connection_string)
            .unwrap_or_else(|problem| {
                problems.push(format!("{}: {problem}", keys::CONNECTION_STRING));
                GoDriverOptions::default()
            });
        // A journal_mode pragma decides the journal; WAL is then not forced.
        let disable_wal = disable_wal || pragmas.iter().any(|(name, _)| name == "journal_mode");

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
                connection_string: uri,
                table_name,
                timeout,
                cleanup_interval,
                disable_wal,
                pragmas,
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
    fn dapr_keys() {
        let config = Config::from_properties(&props(&[
            ("connectionString", "data.db"),
            ("timeout", "30"),
            ("busyTimeout", "2s"),
            ("disableWAL", "TRUE"),
            ("metadataTableName", "dapr_metadata"),
        ]))
        .expect("valid");
        assert_eq!(config.connection_string, "data.db");
        assert_eq!(config.timeout, Duration::from_secs(2));
        assert!(config.disable_wal);
        let config = Config::from_properties(&props(&[
            ("connectionString", "data.db"),
            ("timeoutInSeconds", "7"),
        ]))
        .expect("valid");
        assert_eq!(config.timeout, Duration::from_secs(7));
        assert!(!config.disable_wal);
        let err = Config::from_properties(&props(&[
            ("connectionString", "data.db"),
            ("busyTimeout", "soon"),
            ("disableWAL", "maybe"),
            ("metadataTableName", "no good"),
        ]))
        .expect_err("invalid");
        assert_eq!(err.0.len(), 3, "{err}");
        assert!(
            err.to_string().contains("metadataTableName \"no good\""),
            "{err}"
        );
    }

    #[test]
    fn go_driver_parameters_are_split_off() {
        let config = Config::from_properties(&props(&[(
            "connectionString",
            "file:data.db?_pragma=busy_timeout(2000)&_txlock=immediate&cache=shared&_pragma=journal_mode%28DELETE%29",
        )]))
        .expect("valid");
        assert_eq!(config.connection_string, "file:data.db?cache=shared");
        assert_eq!(
            config.pragmas,
            [
                ("busy_timeout".to_owned(), "2000".to_owned()),
                ("journal_mode".to_owned(), "DELETE".to_owned())
            ]
        );
        assert!(
            config.disable_wal,
            "a journal_mode pragma decides the journal"
        );
        for plain in [
            ":memory:",
            "data.db",
            "file::memory:?cache=shared",
            "file:x.db",
        ] {
            let config =
                Config::from_properties(&props(&[("connectionString", plain)])).expect(plain);
            assert_eq!(config.connection_string, plain);
            assert!(config.pragmas.is_empty());
        }
        let config = Config::from_properties(&props(&[(
            "connectionString",
            "file:data.db?_txlock=immediate",
        )]))
        .expect("valid");
        assert_eq!(config.connection_string, "file:data.db");
        for bad in [
            "file:x.db?_pragma=busy_timeout",
            "file:x.db?_pragma=a(1);drop",
            "file:x.db?_pragma=a(1%2",
        ] {
            let err = Config::from_properties(&props(&[("connectionString", bad)])).expect_err(bad);
            assert!(
                err.to_string().contains("_pragma") || err.to_string().contains("escape"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn reserved_and_long_table_names_are_refused() {
        assert!(validate_table_name("sqlite_master").is_err());
        assert!(validate_table_name(&"a".repeat(65)).is_err());
        assert!(validate_table_name("1abc").is_err());
        assert!(validate_table_name("_ok_1").is_ok());
    }
}
