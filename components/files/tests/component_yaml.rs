//! The sample Components in `component.yaml` use this component's types and
//! only metadata it knows, with valid values.

use std::collections::HashMap;

use plugd_files::binding::keys as binding_keys;
use plugd_files::secrets::{SecretsConfig, keys as secret_keys};
use serde_yaml::Value;

fn metadata(doc: &Value) -> HashMap<String, String> {
    doc["spec"]["metadata"]
        .as_sequence()
        .expect("spec.metadata")
        .iter()
        .map(|item| {
            (
                item["name"].as_str().expect("name").to_owned(),
                item["value"].as_str().expect("string value").to_owned(),
            )
        })
        .collect()
}

#[test]
fn sample_components_are_valid() {
    let docs: Vec<Value> = include_str!("../component.yaml")
        .split("\n---\n")
        .map(|doc| serde_yaml::from_str(doc).expect("YAML document"))
        .collect();
    let types: Vec<&str> = docs
        .iter()
        .map(|doc| doc["spec"]["type"].as_str().expect("spec.type"))
        .collect();
    assert_eq!(types, ["secretstores.local.file", "bindings.localstorage"]);

    let secrets = metadata(&docs[0]);
    for key in secrets.keys() {
        assert!(
            secret_keys::ALL.contains(&key.as_str()),
            "unknown secret store metadata {key}"
        );
    }
    SecretsConfig::from_properties(&secrets).expect("valid secret store metadata");

    let binding = metadata(&docs[1]);
    for key in binding.keys() {
        assert!(
            binding_keys::ALL.contains(&key.as_str()),
            "unknown binding metadata {key}"
        );
    }
    for key in [binding_keys::DECODE_BASE64, binding_keys::ENCODE_BASE64] {
        plugd_files::props::parse_bool(key, &binding[key]).expect("a boolean");
    }
}
