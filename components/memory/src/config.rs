//! Component metadata of the pub/sub broker (`spec.metadata` of the Component
//! YAML), validated.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

/// Deliveries per subscription stream when `maxInFlight` is not given.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 64;
/// Largest accepted `maxInFlight`.
pub const MAX_MAX_IN_FLIGHT: usize = 10_000;
/// Longest accepted `redeliveryDelay`.
pub const MAX_REDELIVERY_DELAY: Duration = Duration::from_secs(3600);

/// Metadata keys (matched without regard to case, as Dapr does).
pub mod keys {
    /// The consumer group: subscriptions with the same one share the messages.
    /// A subscription's own metadata may set it too, and then wins.
    pub const CONSUMER_ID: &str = "consumerID";
    /// How many messages one subscription stream has out at once.
    pub const MAX_IN_FLIGHT: &str = "maxInFlight";
    /// How long a rejected message waits before it is delivered again.
    pub const REDELIVERY_DELAY: &str = "redeliveryDelay";
}

/// Validated settings of one broker instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PubSubConfig {
    /// Consumer group of the instance's subscriptions (empty: the default group).
    pub consumer_id: String,
    /// Deliveries running at once per subscription stream (at least 1).
    pub max_in_flight: usize,
    /// Pause before a rejected message is delivered again.
    pub redelivery_delay: Duration,
}

impl Default for PubSubConfig {
    fn default() -> Self {
        Self {
            consumer_id: String::new(),
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            redelivery_delay: Duration::ZERO,
        }
    }
}

/// Every problem found in the metadata, reported together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub Vec<String>);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid metadata: {}", self.0.join("; "))
    }
}

impl std::error::Error for ConfigError {}

/// The value of `key` in `properties`, matched without regard to case and
/// trimmed; empty values count as absent.
pub fn property<'a>(properties: &'a HashMap<String, String>, key: &str) -> Option<&'a str> {
    properties
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(key))
        .map(|(_, value)| value.trim())
        .filter(|value| !value.is_empty())
}

impl PubSubConfig {
    /// Reads the Init properties. Unknown keys are ignored (daprd passes its
    /// own keys through).
    pub fn from_properties(properties: &HashMap<String, String>) -> Result<Self, ConfigError> {
        let mut problems = Vec::new();
        let mut config = Self::default();
        if let Some(consumer_id) = property(properties, keys::CONSUMER_ID) {
            consumer_id.clone_into(&mut config.consumer_id);
        }
        if let Some(value) = property(properties, keys::MAX_IN_FLIGHT) {
            match value.parse::<usize>() {
                Ok(n) if (1..=MAX_MAX_IN_FLIGHT).contains(&n) => config.max_in_flight = n,
                _ => problems.push(format!(
                    "{} must be a whole number from 1 to {MAX_MAX_IN_FLIGHT}, not {value:?}",
                    keys::MAX_IN_FLIGHT
                )),
            }
        }
        if let Some(value) = property(properties, keys::REDELIVERY_DELAY) {
            match parse_go_duration(value) {
                Ok(delay) if delay <= MAX_REDELIVERY_DELAY => config.redelivery_delay = delay,
                Ok(_) => problems.push(format!(
                    "{} must be at most {}",
                    keys::REDELIVERY_DELAY,
                    humantime::format_duration(MAX_REDELIVERY_DELAY)
                )),
                Err(problem) => problems.push(format!("{}: {problem}", keys::REDELIVERY_DELAY)),
            }
        }
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError(problems))
        }
    }
}

/// Parses a non-negative duration written the way Go's `time.ParseDuration`
/// reads it: a sequence of decimal numbers, each with a unit (`ns`, `us`,
/// `µs`, `ms`, `s`, `m`, `h`), such as `100ms`, `1.5s` or `1h30m`; `0` alone
/// is allowed. A leading `+` is accepted; negative durations are refused.
pub fn parse_go_duration(text: &str) -> Result<Duration, String> {
    let invalid = || format!("{text:?} is not a duration such as \"100ms\", \"1.5s\" or \"1h30m\"");
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
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, after) = rest.split_at(number_len);
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let unit_nanos: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60 * 1_000_000_000,
            "h" => 3600 * 1_000_000_000,
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
        // Fractions below a nanosecond are dropped, as Go does.
        let mut scale = unit_nanos;
        for digit in fraction.bytes().take(20) {
            scale /= 10;
            part += u128::from(digit - b'0') * scale;
        }
        total_nanos = total_nanos.checked_add(part).ok_or_else(invalid)?;
        rest = after;
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
    fn defaults_and_all_keys() {
        assert_eq!(
            PubSubConfig::from_properties(&props(&[("keyPrefix", "x")])).expect("valid"),
            PubSubConfig::default()
        );
        let config = PubSubConfig::from_properties(&props(&[
            ("consumerid", " app1 "),
            ("maxInFlight", "1"),
            ("RedeliveryDelay", "250ms"),
        ]))
        .expect("valid");
        assert_eq!(
            config,
            PubSubConfig {
                consumer_id: "app1".into(),
                max_in_flight: 1,
                redelivery_delay: Duration::from_millis(250),
            }
        );
    }

    #[test]
    fn every_problem_is_reported() {
        let err = PubSubConfig::from_properties(&props(&[
            ("maxInFlight", "0"),
            ("redeliveryDelay", "soon"),
        ]))
        .expect_err("invalid");
        assert_eq!(err.0.len(), 2, "{err}");
        let err = PubSubConfig::from_properties(&props(&[
            ("maxInFlight", "10001"),
            ("redeliveryDelay", "2h"),
        ]))
        .expect_err("out of range");
        assert_eq!(err.0.len(), 2, "{err}");
    }

    #[test]
    fn go_durations() {
        let ok = [
            ("0", Duration::ZERO),
            ("0s", Duration::ZERO),
            ("+5s", Duration::from_secs(5)),
            ("100ms", Duration::from_millis(100)),
            ("1.5s", Duration::from_millis(1500)),
            (".5m", Duration::from_secs(30)),
            ("1h30m", Duration::from_secs(5400)),
            ("2m3.25s", Duration::from_millis(123_250)),
            ("10us", Duration::from_micros(10)),
            ("10µs", Duration::from_micros(10)),
            ("7ns", Duration::from_nanos(7)),
            ("1.0000000009s", Duration::from_secs(1)),
        ];
        for (text, expected) in ok {
            assert_eq!(parse_go_duration(text), Ok(expected), "{text}");
        }
        for bad in [
            "", "5", "s", "-1s", "1.s.", "1..5s", "1d", "1 s", "ms", "1e3s",
        ] {
            assert!(parse_go_duration(bad).is_err(), "{bad:?} accepted");
        }
    }
}
