//! Reading a Component's metadata (`spec.metadata`, the Init properties).
//!
//! Dapr matches metadata names without regard to case, and components
//! usually treat an empty value like a missing one. [`property`] reads a value
//! that way; [`ConfigError`] collects every problem found so that they can
//! be reported together; [`parse_go_duration`] reads durations written the
//! way Dapr's (Go) components expect them; [`warn_unknown`] logs, once per
//! Init, the keys a component does not read.
//!
//! ```
//! use std::collections::HashMap;
//!
//! use plugd_component_sdk::metadata::{ConfigError, parse_go_duration, property};
//!
//! let properties: HashMap<String, String> = [
//!     ("Table".to_owned(), " state ".to_owned()),
//!     ("interval".to_owned(), "soon".to_owned()),
//! ]
//! .into();
//! assert_eq!(property(&properties, "table"), Some("state"));
//!
//! let mut problems = Vec::new();
//! if let Some(value) = property(&properties, "interval")
//!     && let Err(problem) = parse_go_duration(value)
//! {
//!     problems.push(format!("interval: {problem}"));
//! }
//! let err = ConfigError(problems);
//! assert!(err.to_string().starts_with("invalid metadata: interval: \"soon\""));
//! ```

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

/// Every problem found in a Component's metadata, reported together.
///
/// Displayed as `invalid metadata: ` followed by the problems joined by
/// `"; "`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub Vec<String>);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid metadata: {}", self.0.join("; "))
    }
}

impl std::error::Error for ConfigError {}

/// The value of `key` in `properties`, matched without regard to case (as
/// Dapr matches metadata names) and trimmed; empty or blank values count as
/// absent.
pub fn property<'a>(properties: &'a HashMap<String, String>, key: &str) -> Option<&'a str> {
    raw_property(properties, key)
        .map(str::trim)
        .filter(|value| !value.is_empty())
}

/// Like [`property`], but the value is returned as given, not trimmed (for
/// passwords or separators, where spaces may be meant); only an empty value
/// counts as absent.
pub fn raw_property<'a>(properties: &'a HashMap<String, String>, key: &str) -> Option<&'a str> {
    properties
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(key))
        .map(|(_, value)| value.as_str())
        .filter(|value| !value.is_empty())
}

/// Metadata names that Dapr defines at runtime level, or that the host
/// (daprd or plugd) reads or adds itself, so that any component may be given
/// them: [`warn_unknown`] never warns about these. `consumerID` is added by
/// the host to every pub/sub; `direction` and `route` belong to bindings;
/// `keyPrefix`, `actorStateStore`, `ttlInSeconds` and the `outbox*` keys to
/// state stores.
pub const RUNTIME_KEYS: &[&str] = &[
    "keyPrefix",
    "actorStateStore",
    "consumerID",
    "direction",
    "route",
    "ttlInSeconds",
    "outboxPublishPubsub",
    "outboxPublishTopic",
    "outboxPubsub",
    "outboxDiscardWhenMissingState",
];

/// The names in `properties` that are neither in `known` nor in
/// [`RUNTIME_KEYS`] (compared without regard to case), sorted.
pub fn unknown_keys<'a>(properties: &'a HashMap<String, String>, known: &[&str]) -> Vec<&'a str> {
    let mut unknown: Vec<&str> = properties
        .keys()
        .map(String::as_str)
        .filter(|key| {
            !known
                .iter()
                .chain(RUNTIME_KEYS)
                .any(|name| name.eq_ignore_ascii_case(key))
        })
        .collect();
    unknown.sort_unstable();
    unknown
}

/// Logs one `warn` line naming the keys of `properties` that `component`
/// (for example `bindings.localstorage`) does not read, for instance
/// `instance`, and returns them; nothing is logged when there are none.
/// Only names are logged, never values. Keys in [`RUNTIME_KEYS`] are never
/// reported. Call it once per Init, after the metadata was read: unknown
/// keys are ignored, not an error, as in Dapr.
pub fn warn_unknown<'a>(
    component: &str,
    instance: &str,
    properties: &'a HashMap<String, String>,
    known: &[&str],
) -> Vec<&'a str> {
    let unknown = unknown_keys(properties, known);
    if !unknown.is_empty() {
        tracing::warn!(
            component,
            instance,
            unknown = %unknown.join(", "),
            "ignoring metadata keys this component does not know"
        );
    }
    unknown
}

/// The longest duration Go can represent (an `int64` of nanoseconds, about
/// 292 years), written as Go prints it.
const MAX_GO_DURATION: &str = "2562047h47m16.854775807s";

/// Parses a non-negative duration the way Go's `time.ParseDuration` reads it:
/// a sequence of decimal numbers, each followed by a unit (`ns`, `us`, `µs`,
/// `ms`, `s`, `m`, `h`), such as `100ms`, `1.5s` or `1h30m`; `0` alone is
/// allowed, and so is a leading `+`.
///
/// Refused, with a message that quotes `text`: negative durations (`… is
/// negative`), durations longer than Go's limit of about 292 years (`… is
/// too long`), and anything else that is not such a duration, including a
/// bare number other than `0`, spaces, and an empty text. Digits below a
/// nanosecond are dropped, as Go does.
pub fn parse_go_duration(text: &str) -> Result<Duration, String> {
    let invalid =
        || format!("{text:?} is not a duration such as \"100ms\", \"1.5s\", \"1m30s\" or \"1h\"");
    let mut rest = text.strip_prefix('+').unwrap_or(text);
    if rest.starts_with('-') {
        return Err(format!("{text:?} is negative"));
    }
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        return Err(invalid());
    }
    let mut total_nanos: u128 = 0;
    while !rest.is_empty() {
        // The number: digits, optionally with a fraction.
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, after) = rest.split_at(number_len);
        // The unit: everything up to the next digit or dot.
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let unit_nanos: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return Err(invalid()),
        };
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        if (whole.is_empty() && fraction.is_empty())
            || !whole.bytes().all(|b| b.is_ascii_digit())
            || !fraction.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(invalid());
        }
        let whole: u128 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| invalid())?
        };
        let mut part = whole.checked_mul(unit_nanos).ok_or_else(invalid)?;
        let mut scale = unit_nanos;
        for digit in fraction.bytes() {
            scale /= 10;
            if scale == 0 {
                break;
            }
            part += u128::from(digit - b'0') * scale;
        }
        total_nanos = total_nanos.checked_add(part).ok_or_else(invalid)?;
        rest = after;
    }
    if total_nanos > i64::MAX as u128 {
        return Err(format!("{text:?} is too long: at most {MAX_GO_DURATION}"));
    }
    let secs = u64::try_from(total_nanos / 1_000_000_000).map_err(|_| invalid())?;
    let nanos = u32::try_from(total_nanos % 1_000_000_000).map_err(|_| invalid())?;
    Ok(Duration::new(secs, nanos))
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
    fn keys_match_without_case_and_empty_is_absent() {
        let p = props(&[
            ("SecretsFile", " a.json "),
            ("nestedSeparator", " "),
            ("x", ""),
        ]);
        assert_eq!(property(&p, "secretsFile"), Some("a.json"));
        assert_eq!(property(&p, "SECRETSFILE"), Some("a.json"));
        assert_eq!(raw_property(&p, "secretsfile"), Some(" a.json "));
        assert_eq!(property(&p, "nestedseparator"), None);
        assert_eq!(raw_property(&p, "nestedSeparator"), Some(" "));
        assert_eq!(property(&p, "x"), None);
        assert_eq!(raw_property(&p, "x"), None);
        assert_eq!(property(&p, "missing"), None);
        assert_eq!(raw_property(&p, "missing"), None);
    }

    #[test]
    fn unknown_keys_skip_known_and_runtime_keys() {
        let p = props(&[
            ("RootPath", "/data"),
            ("KEYPREFIX", "none"),
            ("direction", "output"),
            ("outboxPubsub", "p"),
            ("zeta", "secret value"),
            ("alpha", ""),
        ]);
        assert_eq!(unknown_keys(&p, &["rootPath"]), ["alpha", "zeta"]);
        assert!(unknown_keys(&p, &["rootpath", "ALPHA", "Zeta"]).is_empty());
        assert!(unknown_keys(&HashMap::new(), &[]).is_empty());
    }

    /// A writer collecting what the subscriber prints.
    #[derive(Clone, Default)]
    struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn warn_unknown_logs_one_line_with_names_only() {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::TRACE)
            .finish();
        let p = props(&[
            ("rootPath", "/data"),
            ("route", "/in"),
            ("colour", "hunter2"),
            ("Bogus", "s3cret"),
        ]);
        let reported = tracing::subscriber::with_default(subscriber, || {
            let reported = warn_unknown("bindings.localstorage", "files", &p, &["rootPath"]);
            // Nothing unknown: nothing logged.
            assert!(
                warn_unknown(
                    "bindings.localstorage",
                    "files",
                    &p,
                    &["rootPath", "colour", "bogus"]
                )
                .is_empty()
            );
            reported
        });
        assert_eq!(reported, ["Bogus", "colour"]);
        let bytes = captured.0.lock().expect("log").clone();
        let text = String::from_utf8(bytes).expect("utf-8 log");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1, "{text}");
        let line = lines[0];
        assert!(line.contains("WARN"), "{line}");
        assert!(line.contains("unknown=Bogus, colour"), "{line}");
        assert!(
            line.contains("component=\"bindings.localstorage\""),
            "{line}"
        );
        assert!(line.contains("instance=\"files\""), "{line}");
        for secret in ["hunter2", "s3cret", "/data", "/in", "route", "rootPath"] {
            assert!(!line.contains(secret), "{secret} in {line}");
        }
    }

    #[test]
    fn config_errors_list_every_problem() {
        let err = ConfigError(vec!["a is required".into(), "b: bad".into()]);
        assert_eq!(err.to_string(), "invalid metadata: a is required; b: bad");
        let err: Box<dyn std::error::Error> = Box::new(err);
        assert!(err.source().is_none());
    }

    #[test]
    fn go_durations() {
        let ok = [
            ("0", Duration::ZERO),
            ("0s", Duration::ZERO),
            ("+2s", Duration::from_secs(2)),
            ("100ms", Duration::from_millis(100)),
            ("1.5s", Duration::from_millis(1500)),
            ("1.s", Duration::from_secs(1)),
            (".5m", Duration::from_secs(30)),
            ("1h30m", Duration::from_secs(5400)),
            ("2m3.25s", Duration::from_millis(123_250)),
            ("10us", Duration::from_micros(10)),
            ("10µs", Duration::from_micros(10)),
            ("10μs", Duration::from_micros(10)),
            ("7ns", Duration::from_nanos(7)),
            ("1.0000000009s", Duration::from_secs(1)),
            ("0.1234567891234567891234h", Duration::new(444, 444_440_841)),
            (
                "2562047h47m16.854775807s",
                Duration::new(9_223_372_036, 854_775_807),
            ),
        ];
        for (text, expected) in ok {
            assert_eq!(parse_go_duration(text), Ok(expected), "{text}");
        }
        for bad in [
            "", "+", "5", "s", ".s", "1.s.", "1..5s", "1.5.5s", "1d", "1 s", " 1s", "ms", "1e3s",
            "1h 30m", "５s",
        ] {
            let err = parse_go_duration(bad).expect_err(bad);
            assert!(err.contains("is not a duration such as"), "{bad:?}: {err}");
        }
        assert_eq!(
            parse_go_duration("-1s"),
            Err("\"-1s\" is negative".to_owned())
        );
        assert_eq!(
            parse_go_duration("+-1s"),
            Err("\"+-1s\" is negative".to_owned())
        );
        let err = parse_go_duration("2562047h47m16.854775808s").expect_err("too long");
        assert!(
            err.ends_with("is too long: at most 2562047h47m16.854775807s"),
            "{err}"
        );
        let err =
            parse_go_duration("99999999999999999999999999999999999999999h").expect_err("overflow");
        assert!(err.contains("is not a duration"), "{err}");
    }
}
