//! Reading Component metadata (`spec.metadata`) and request metadata.

use std::collections::HashMap;

#[doc(no_inline)]
pub use plugd_component_sdk::metadata::{property, raw_property};

/// Parses a boolean option: `true`/`false`, `1`/`0`, `yes`/`no`, `on`/`off`
/// (any case, surrounding spaces ignored). Anything else is an error naming
/// `key` and the value.
pub fn parse_bool(key: &str, value: &str) -> Result<bool, String> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(format!("{key} must be true or false, not {value:?}")),
    }
}

/// The boolean option `key` in the Component metadata, `default` when absent.
pub fn bool_property(
    properties: &HashMap<String, String>,
    key: &str,
    default: bool,
) -> Result<bool, String> {
    property(properties, key).map_or(Ok(default), |value| parse_bool(key, value))
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
    fn booleans() {
        for yes in ["true", "TRUE", " 1 ", "yes", "On"] {
            assert_eq!(parse_bool("k", yes), Ok(true), "{yes}");
        }
        for no in ["false", "False", "0", "no", "OFF"] {
            assert_eq!(parse_bool("k", no), Ok(false), "{no}");
        }
        let err = parse_bool("multiValued", "maybe").expect_err("not a boolean");
        assert_eq!(err, "multiValued must be true or false, not \"maybe\"");
        let p = props(&[("multiValued", "true")]);
        assert_eq!(bool_property(&p, "multivalued", false), Ok(true));
        assert_eq!(bool_property(&p, "other", true), Ok(true));
    }
}
