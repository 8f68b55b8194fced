//! Component metadata (`spec.metadata` of the Component YAML), validated.
//!
//! [`Settings`] are a pub/sub instance's; [`Connection`] is the part shared
//! with the state store (which reads nothing else).
//!
//! Keys are matched without regard to case, as Dapr does. Keys this component
//! does not know are ignored, and logged at Init in one warning (names only);
//! the keys Dapr defines at runtime level (`keyPrefix`, `actorStateStore`,
//! `consumerID`, `ttlInSeconds`, the `outbox*` keys, ...) are never reported. A few keys of other
//! Redis pub/sub implementations select features this component does not have
//! (cluster mode, Sentinel failover); setting them is an error rather than
//! being silently ignored.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

#[doc(no_inline)]
pub use plugd_component_sdk::metadata::ConfigError;
use plugd_component_sdk::metadata::{property, raw_property, unknown_keys};

/// Redis address used when `redisHost` is not given.
pub const DEFAULT_HOST: &str = "localhost";
/// Redis port used when `redisHost` has no port.
pub const DEFAULT_PORT: u16 = 6379;
/// Default `processingTimeout`.
pub const DEFAULT_PROCESSING_TIMEOUT: Duration = Duration::from_secs(60);
/// Default `redeliverInterval`.
pub const DEFAULT_REDELIVER_INTERVAL: Duration = Duration::from_secs(2);
/// Default `concurrency`.
pub const DEFAULT_CONCURRENCY: usize = 16;
/// Largest accepted `concurrency`.
pub const MAX_CONCURRENCY: usize = 10_000;
/// Default `poolSize`.
pub const DEFAULT_POOL_SIZE: usize = 1;
/// Largest accepted `poolSize`.
pub const MAX_POOL_SIZE: usize = 256;
/// Longest accepted `processingTimeout` / `redeliverInterval`.
pub const MAX_DURATION: Duration = Duration::from_secs(7 * 24 * 3600);

/// Metadata keys.
pub mod keys {
    /// `host:port` of the Redis server.
    pub const REDIS_HOST: &str = "redisHost";
    /// Password (`AUTH`).
    pub const REDIS_PASSWORD: &str = "redisPassword";
    /// ACL user name (`AUTH <user> <password>`).
    pub const REDIS_USERNAME: &str = "redisUsername";
    /// Database number (`SELECT`).
    pub const REDIS_DB: &str = "redisDB";
    /// Connect with TLS.
    pub const ENABLE_TLS: &str = "enableTLS";
    /// Consumer group name; daprd sets it to the app id unless the YAML does.
    pub const CONSUMER_ID: &str = "consumerID";
    /// `XADD ... MAXLEN ~ <n>`.
    pub const MAX_LEN_APPROX: &str = "maxLenApprox";
    /// How long a pending entry may stay unacknowledged before it is reclaimed.
    pub const PROCESSING_TIMEOUT: &str = "processingTimeout";
    /// How often pending entries are looked for.
    pub const REDELIVER_INTERVAL: &str = "redeliverInterval";
    /// Deliveries in flight per subscription.
    pub const CONCURRENCY: &str = "concurrency";
    /// Number of shared connections.
    pub const POOL_SIZE: &str = "poolSize";

    /// Keys of other Redis pub/sub implementations that select features this
    /// component does not have, with the only value accepted for each.
    pub const UNSUPPORTED: [(&str, &str); 3] = [
        ("redisType", "node"),
        ("failover", "false"),
        ("useEntraID", "false"),
    ];

    /// Every key read by [`Connection::from_properties`](super::Connection::from_properties)
    /// (the state store's keys).
    pub const CONNECTION: [&str; 6] = [
        REDIS_HOST,
        REDIS_PASSWORD,
        REDIS_USERNAME,
        REDIS_DB,
        ENABLE_TLS,
        POOL_SIZE,
    ];

    /// Every key read by [`Settings::from_properties`](super::Settings::from_properties).
    pub const ALL: [&str; 11] = [
        REDIS_HOST,
        REDIS_PASSWORD,
        REDIS_USERNAME,
        REDIS_DB,
        ENABLE_TLS,
        CONSUMER_ID,
        MAX_LEN_APPROX,
        PROCESSING_TIMEOUT,
        REDELIVER_INTERVAL,
        CONCURRENCY,
        POOL_SIZE,
    ];
}

/// Validated settings of one pub/sub instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// How to reach Redis (shared with the state store); its `Debug` never
    /// prints the password.
    pub connection: Connection,
    /// The consumer group every subscription of this instance joins.
    pub consumer_group: String,
    /// Approximate stream length cap applied on every publish.
    pub max_len_approx: Option<usize>,
    /// Idle time after which another consumer takes a pending entry over;
    /// `None` disables reclaiming.
    pub processing_timeout: Option<Duration>,
    /// Period of the reclaim scan; `None` disables reclaiming.
    pub redeliver_interval: Option<Duration>,
    /// Deliveries in flight per subscription.
    pub concurrency: usize,
}

/// How to reach Redis: the settings the pub/sub and the state store share.
#[derive(Clone, PartialEq, Eq)]
pub struct Connection {
    /// Redis host name or address (IPv6 without brackets).
    pub host: String,
    /// Redis port.
    pub port: u16,
    /// ACL user name.
    pub username: Option<String>,
    /// Password; never printed by `Debug`.
    pub password: Option<String>,
    /// Database number.
    pub db: i64,
    /// Connect with TLS (rustls, the platform's root certificates).
    pub tls: bool,
    /// Shared (multiplexed) connections.
    pub pool_size: usize,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("db", &self.db)
            .field("tls", &self.tls)
            .field("pool_size", &self.pool_size)
            .finish()
    }
}

impl Connection {
    /// A server at `host:port`, database 0, no credentials, no TLS.
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        Self {
            host: host.into(),
            port,
            username: None,
            password: None,
            db: 0,
            tls: false,
            pool_size: DEFAULT_POOL_SIZE,
        }
    }

    /// `host:port` as given to Redis, for messages.
    pub fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// Reads the connection keys ([`keys::CONNECTION`]) and refuses the
    /// [`keys::UNSUPPORTED`] values; other keys are not looked at. Each
    /// problem reported starts with the name of the key it is about.
    pub fn from_properties(properties: &HashMap<String, String>) -> Result<Self, ConfigError> {
        let mut problems = Vec::new();
        let connection = Self::parse(properties, &mut problems);
        check_unsupported(properties, &mut problems);
        if problems.is_empty() {
            Ok(connection)
        } else {
            Err(ConfigError(problems))
        }
    }

    /// The connection keys, problems appended to `problems`.
    fn parse(properties: &HashMap<String, String>, problems: &mut Vec<String>) -> Self {
        let get = |key: &str| property(properties, key);
        let (host, port) = match get(keys::REDIS_HOST) {
            None => (DEFAULT_HOST.to_owned(), DEFAULT_PORT),
            Some(value) => parse_host(value).unwrap_or_else(|problem| {
                problems.push(format!("{}: {problem}", keys::REDIS_HOST));
                (String::new(), DEFAULT_PORT)
            }),
        };
        // Passwords may legitimately have surrounding spaces: take them as given.
        let password = raw_property(properties, keys::REDIS_PASSWORD).map(str::to_owned);
        let username = get(keys::REDIS_USERNAME).map(str::to_owned);

        let db = match get(keys::REDIS_DB).map(str::parse::<i64>) {
            None => 0,
            Some(Ok(db)) if db >= 0 => db,
            Some(_) => {
                problems.push(format!(
                    "{}: must be a database number (0 or more)",
                    keys::REDIS_DB
                ));
                0
            }
        };

        let tls = match get(keys::ENABLE_TLS).map(parse_bool) {
            None => false,
            Some(Some(tls)) => tls,
            Some(None) => {
                problems.push(format!("{}: must be true or false", keys::ENABLE_TLS));
                false
            }
        };

        let pool_size = match get(keys::POOL_SIZE).map(str::parse::<usize>) {
            None => DEFAULT_POOL_SIZE,
            Some(Ok(n)) if (1..=MAX_POOL_SIZE).contains(&n) => n,
            Some(_) => {
                problems.push(format!(
                    "{}: must be a whole number from 1 to {MAX_POOL_SIZE}",
                    keys::POOL_SIZE
                ));
                DEFAULT_POOL_SIZE
            }
        };

        Self {
            host,
            port,
            username,
            password,
            db,
            tls,
            pool_size,
        }
    }
}

/// Refuses the [`keys::UNSUPPORTED`] values.
fn check_unsupported(properties: &HashMap<String, String>, problems: &mut Vec<String>) {
    for (key, accepted) in keys::UNSUPPORTED {
        let acceptable = |value: &str| match parse_bool(accepted) {
            Some(flag) => parse_bool(value) == Some(flag),
            None => value.eq_ignore_ascii_case(accepted),
        };
        if let Some(value) = property(properties, key)
            && !acceptable(value)
        {
            problems.push(format!(
                "{key}: {value:?} is not supported by this component (only a single Redis server; leave {key} unset or {accepted:?})"
            ));
        }
    }
}

impl Settings {
    /// Settings for a server at `host:port` and a consumer group, everything
    /// else defaulted.
    pub fn new(host: impl Into<String>, port: u16, consumer_group: impl Into<String>) -> Self {
        Self {
            connection: Connection::new(host, port),
            consumer_group: consumer_group.into(),
            max_len_approx: None,
            processing_timeout: Some(DEFAULT_PROCESSING_TIMEOUT),
            redeliver_interval: Some(DEFAULT_REDELIVER_INTERVAL),
            concurrency: DEFAULT_CONCURRENCY,
        }
    }

    /// `host:port` as given to Redis, for messages.
    pub fn address(&self) -> String {
        self.connection.address()
    }

    /// Whether pending entries are reclaimed at all.
    pub fn reclaim(&self) -> Option<(Duration, Duration)> {
        self.processing_timeout.zip(self.redeliver_interval)
    }

    /// Reads the Init properties. Each problem reported starts with the name
    /// of the key it is about.
    pub fn from_properties(properties: &HashMap<String, String>) -> Result<Self, ConfigError> {
        let get = |key: &str| property(properties, key);
        let mut problems = Vec::new();
        // Reported in key order: the connection keys, then the others, then
        // the unsupported ones.
        let connection = Connection::parse(properties, &mut problems);

        let consumer_group = match get(keys::CONSUMER_ID) {
            Some(group) => group.to_owned(),
            None => {
                problems.push(format!(
                    "{}: is required (daprd sets it to the app id; set it in the component metadata otherwise)",
                    keys::CONSUMER_ID
                ));
                String::new()
            }
        };

        let max_len_approx = match get(keys::MAX_LEN_APPROX).map(str::parse::<u64>) {
            None | Some(Ok(0)) => None,
            Some(Ok(len)) => match usize::try_from(len) {
                Ok(len) => Some(len),
                Err(_) => {
                    problems.push(format!("{}: too large", keys::MAX_LEN_APPROX));
                    None
                }
            },
            Some(Err(_)) => {
                problems.push(format!(
                    "{}: must be a whole number of entries (0 for no limit)",
                    keys::MAX_LEN_APPROX
                ));
                None
            }
        };

        let mut duration = |key: &str, default: Duration| match get(key) {
            None => Some(default),
            Some(value) => match parse_go_duration(value) {
                Ok(Some(duration)) if duration > MAX_DURATION => {
                    problems.push(format!(
                        "{key}: must be at most {}",
                        humantime::format_duration(MAX_DURATION)
                    ));
                    Some(default)
                }
                Ok(duration) => duration.filter(|duration| !duration.is_zero()),
                Err(problem) => {
                    problems.push(format!("{key}: {problem}"));
                    Some(default)
                }
            },
        };
        let processing_timeout = duration(keys::PROCESSING_TIMEOUT, DEFAULT_PROCESSING_TIMEOUT);
        let redeliver_interval = duration(keys::REDELIVER_INTERVAL, DEFAULT_REDELIVER_INTERVAL);

        let concurrency = match get(keys::CONCURRENCY).map(str::parse::<usize>) {
            None => DEFAULT_CONCURRENCY,
            Some(Ok(n)) if (1..=MAX_CONCURRENCY).contains(&n) => n,
            Some(_) => {
                problems.push(format!(
                    "{}: must be a whole number from 1 to {MAX_CONCURRENCY}",
                    keys::CONCURRENCY
                ));
                DEFAULT_CONCURRENCY
            }
        };
        check_unsupported(properties, &mut problems);

        if problems.is_empty() {
            Ok(Self {
                connection,
                consumer_group,
                max_len_approx,
                processing_timeout,
                redeliver_interval,
                concurrency,
            })
        } else {
            Err(ConfigError(problems))
        }
    }
}

/// The keys of `properties` that the pub/sub does not read (sorted), leaving
/// out the keys Dapr defines at runtime level
/// ([`RUNTIME_KEYS`](plugd_component_sdk::metadata::RUNTIME_KEYS)).
pub fn unrecognised_keys(properties: &HashMap<String, String>) -> Vec<&str> {
    unknown_keys(properties, &known(&keys::ALL))
}

/// The keys of `properties` that the state store does not read (sorted),
/// leaving out the runtime-level keys (`ttlInSeconds` among them, which the
/// state store reads too).
pub fn unrecognised_state_keys(properties: &HashMap<String, String>) -> Vec<&str> {
    unknown_keys(properties, &known(&keys::CONNECTION))
}

/// `read` and the names of [`keys::UNSUPPORTED`].
pub fn known(read: &[&'static str]) -> Vec<&'static str> {
    read.iter()
        .copied()
        .chain(keys::UNSUPPORTED.iter().map(|(key, _)| *key))
        .collect()
}

/// `host`, `host:port`, `[v6]:port` or `[v6]`.
fn parse_host(value: &str) -> Result<(String, u16), String> {
    if value.contains("://") {
        return Err(format!(
            "{value:?} must be host:port, not a URL (use enableTLS for TLS)"
        ));
    }
    if value.contains(',') {
        return Err(format!(
            "{value:?} lists several hosts; only a single Redis server is supported"
        ));
    }
    let port = |text: &str| {
        text.parse::<u16>()
            .ok()
            .filter(|port| *port != 0)
            .ok_or_else(|| format!("{value:?} has an invalid port {text:?}"))
    };
    let (host, port) = if let Some(rest) = value.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("{value:?} has an unclosed '['"))?;
        match after.strip_prefix(':') {
            Some(text) => (host, port(text)?),
            None if after.is_empty() => (host, DEFAULT_PORT),
            None => return Err(format!("{value:?} must be host:port")),
        }
    } else {
        match value.rsplit_once(':') {
            Some((host, _)) if host.contains(':') => {
                return Err(format!(
                    "{value:?}: write IPv6 addresses in brackets, as [addr]:port"
                ));
            }
            Some((host, text)) => (host, port(text)?),
            None => (value, DEFAULT_PORT),
        }
    };
    if host.is_empty() || host.chars().any(char::is_whitespace) {
        return Err(format!("{value:?} has no valid host name"));
    }
    Ok((host.to_owned(), port))
}

/// Booleans as Dapr's metadata parser reads them.
fn parse_bool(value: &str) -> Option<bool> {
    match value.to_ascii_lowercase().as_str() {
        "true" | "1" | "t" | "y" | "yes" | "on" => Some(true),
        "false" | "0" | "f" | "n" | "no" | "off" => Some(false),
        _ => None,
    }
}

/// A Go duration (`1h30m`, `1.5s`, `250ms`, `0`) or a bare number of seconds.
/// Negative values give `None` (disabled).
pub fn parse_go_duration(value: &str) -> Result<Option<Duration>, String> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<i64>() {
        return Ok(u64::try_from(seconds).ok().map(Duration::from_secs));
    }
    let invalid = || format!("{value:?} is not a duration (for example 60s, 1m30s, 500ms)");
    let (negative, mut rest) = match value.as_bytes().first() {
        Some(b'-') => (true, &value[1..]),
        Some(b'+') => (false, &value[1..]),
        _ => (false, value),
    };
    if rest.is_empty() {
        return Err(invalid());
    }
    let mut total_nanos: f64 = 0.0;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(invalid)?;
        let (number, after) = rest.split_at(number_len);
        if number.is_empty() || number == "." || number.matches('.').count() > 1 {
            return Err(invalid());
        }
        let number: f64 = number.parse().map_err(|_| invalid())?;
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let nanos_per_unit = match unit {
            "ns" => 1.0,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return Err(invalid()),
        };
        total_nanos += number * nanos_per_unit;
        rest = after;
    }
    if negative && total_nanos > 0.0 {
        return Ok(None);
    }
    if !total_nanos.is_finite() || total_nanos > u64::MAX as f64 {
        return Err(format!("{value:?} is too long"));
    }
    // Rounded to whole nanoseconds, as Go keeps them.
    Ok(Some(Duration::from_nanos(total_nanos.round() as u64)))
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
        let settings = Settings::from_properties(&props(&[("consumerID", "app")])).expect("valid");
        assert_eq!(settings, Settings::new("localhost", 6379, "app"));
        assert_eq!(
            settings.reclaim(),
            Some((Duration::from_secs(60), Duration::from_secs(2)))
        );
    }

    #[test]
    fn every_key() {
        let settings = Settings::from_properties(&props(&[
            ("RedisHost", "redis.example:6380"),
            ("redisPassword", " secret "),
            ("redisUsername", "me"),
            ("redisDB", "3"),
            ("enableTLS", "true"),
            ("consumerID", "group-a"),
            ("maxLenApprox", "1000"),
            ("processingTimeout", "1m30s"),
            ("redeliverInterval", "500ms"),
            ("concurrency", "4"),
            ("poolSize", "8"),
            ("redisType", "node"),
            ("failover", "0"),
            ("keyPrefix", "appid"),
        ]))
        .expect("valid");
        assert_eq!(settings.connection.host, "redis.example");
        assert_eq!(settings.connection.port, 6380);
        assert_eq!(settings.connection.password.as_deref(), Some(" secret "));
        assert_eq!(settings.connection.username.as_deref(), Some("me"));
        assert_eq!(settings.connection.db, 3);
        assert!(settings.connection.tls);
        assert_eq!(settings.consumer_group, "group-a");
        assert_eq!(settings.max_len_approx, Some(1000));
        assert_eq!(settings.processing_timeout, Some(Duration::from_secs(90)));
        assert_eq!(
            settings.redeliver_interval,
            Some(Duration::from_millis(500))
        );
        assert_eq!(settings.concurrency, 4);
        assert_eq!(settings.connection.pool_size, 8);
        assert!(!format!("{settings:?}").contains("secret"));
    }

    #[test]
    fn reclaiming_can_be_disabled() {
        let settings =
            Settings::from_properties(&props(&[("consumerID", "g"), ("processingTimeout", "0")]))
                .expect("valid");
        assert_eq!(settings.processing_timeout, None);
        assert_eq!(settings.reclaim(), None);
    }

    #[test]
    fn every_problem_is_reported_naming_its_key() {
        let err = Settings::from_properties(&props(&[
            ("redisHost", "redis://x:1"),
            ("redisDB", "-1"),
            ("enableTLS", "maybe"),
            ("maxLenApprox", "many"),
            ("processingTimeout", "soon"),
            ("redeliverInterval", "1000000h"),
            ("concurrency", "0"),
            ("poolSize", "x"),
            ("redisType", "cluster"),
        ]))
        .expect_err("invalid");
        let expected = [
            "redisHost",
            "redisDB",
            "enableTLS",
            "poolSize",
            "consumerID",
            "maxLenApprox",
            "processingTimeout",
            "redeliverInterval",
            "concurrency",
            "redisType",
        ];
        assert_eq!(err.0.len(), expected.len(), "{err}");
        for (problem, key) in err.0.iter().zip(expected) {
            assert!(problem.starts_with(key), "{problem:?} should name {key}");
        }
    }

    #[test]
    fn hosts() {
        assert_eq!(parse_host("h"), Ok(("h".to_owned(), 6379)));
        assert_eq!(parse_host("h:1"), Ok(("h".to_owned(), 1)));
        assert_eq!(parse_host("[::1]:7"), Ok(("::1".to_owned(), 7)));
        assert_eq!(parse_host("[::1]"), Ok(("::1".to_owned(), 6379)));
        for bad in ["::1", "h:0", "h:x", ":1", "a:1,b:2", "[::1", "[::1]x"] {
            assert!(parse_host(bad).is_err(), "{bad:?} accepted");
        }
        let settings = Settings::new("::1", 7, "g");
        assert_eq!(settings.address(), "[::1]:7");
    }

    #[test]
    fn go_durations() {
        let ok = |text: &str| parse_go_duration(text).expect(text);
        assert_eq!(ok("60s"), Some(Duration::from_secs(60)));
        assert_eq!(ok("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(ok("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(ok("200ms"), Some(Duration::from_millis(200)));
        assert_eq!(ok("3us"), Some(Duration::from_micros(3)));
        assert_eq!(ok("10"), Some(Duration::from_secs(10)));
        assert_eq!(ok("0"), Some(Duration::ZERO));
        assert_eq!(ok("-5s"), None);
        assert_eq!(ok("-1"), None);
        for bad in ["", "s", "5x", "1..5s", ".s", "1h 30m", "-", "5s5"] {
            assert!(parse_go_duration(bad).is_err(), "{bad:?} accepted");
        }
    }

    /// The documents of `component.yaml` with their metadata as properties.
    fn sample_components() -> Vec<(String, HashMap<String, String>)> {
        include_str!("../component.yaml")
            .split("\n---\n")
            .map(|document| {
                let yaml: serde_yaml::Value = serde_yaml::from_str(document).expect("YAML");
                let kind = yaml["spec"]["type"].as_str().expect("type").to_owned();
                let items = yaml["spec"]["metadata"].as_sequence().expect("metadata");
                let properties = items
                    .iter()
                    .map(|item| {
                        let name = item["name"].as_str().expect("name").to_owned();
                        let value = item["value"].as_str().expect("string value").to_owned();
                        (name, value)
                    })
                    .collect();
                (kind, properties)
            })
            .collect()
    }

    #[test]
    fn the_sample_component_yaml_is_valid() {
        let samples = sample_components();
        let kinds: Vec<&str> = samples.iter().map(|(kind, _)| kind.as_str()).collect();
        assert_eq!(kinds, ["pubsub.redis", "state.redis"]);

        let mut properties = samples[0].1.clone();
        assert!(unrecognised_keys(&properties).is_empty());
        // daprd adds the consumer group.
        properties.insert("consumerID".into(), "app".into());
        let settings = Settings::from_properties(&properties).expect("valid");
        assert_eq!(settings, Settings::new("localhost", 6379, "app"));

        let properties = &samples[1].1;
        assert!(unrecognised_state_keys(properties).is_empty());
        let connection = Connection::from_properties(properties).expect("valid");
        let mut expected = Connection::new("localhost", 6379);
        expected.db = 1;
        assert_eq!(connection, expected);
    }

    #[test]
    fn connection_keys_only() {
        let connection = Connection::from_properties(&props(&[
            ("redisHost", "[::1]:7000"),
            ("redisPassword", "pw"),
            ("poolSize", "4"),
            ("consumerID", "not needed"),
        ]))
        .expect("valid");
        assert_eq!(connection.address(), "[::1]:7000");
        assert_eq!(connection.pool_size, 4);
        assert!(!format!("{connection:?}").contains("pw"));
        assert_eq!(
            unrecognised_state_keys(&props(&[
                ("consumerID", "g"),
                ("redisDB", "1"),
                ("queryIndexes", "[]")
            ])),
            ["queryIndexes"]
        );
        let err = Connection::from_properties(&props(&[
            ("redisDB", "x"),
            ("poolSize", "1000"),
            ("failover", "true"),
        ]))
        .expect_err("invalid");
        assert_eq!(err.0.len(), 3, "{err}");
    }

    #[test]
    fn unrecognised_keys_are_listed() {
        let properties = props(&[
            ("consumerID", "g"),
            ("REDISHOST", "h"),
            ("failover", "false"),
            ("queueDepth", "100"),
            ("dialTimeout", "5s"),
            ("keyPrefix", "none"),
            ("ttlInSeconds", "60"),
        ]);
        assert_eq!(
            unrecognised_keys(&properties),
            ["dialTimeout", "queueDepth"]
        );
    }
}
