//! Component metadata of the pub/sub broker (`spec.metadata` of the Component
//! YAML), validated.

use std::collections::HashMap;
use std::time::Duration;

#[doc(no_inline)]
pub use plugd_component_sdk::metadata::{ConfigError, parse_go_duration, property};

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

    /// Every key the broker reads.
    pub const ALL: [&str; 3] = [CONSUMER_ID, MAX_IN_FLIGHT, REDELIVERY_DELAY];
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

impl PubSubConfig {
    /// Reads the Init properties. Unknown keys are ignored here; the broker
    /// logs them at Init (one warning, names only).
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
}
