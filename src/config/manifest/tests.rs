use super::*;

fn docs(text: &str) -> (Vec<SourceDocument>, Vec<Problem>) {
    let mut docs = Vec::new();
    let mut problems = Vec::new();
    parse_documents(Path::new("res/a.yaml"), text, &mut docs, &mut problems);
    (docs, problems)
}

fn load(text: &str) -> Result<Loaded, Problems> {
    let (d, p) = docs(text);
    assert!(p.is_empty(), "{p:?}");
    validate(&d, "app1", None)
}

#[test]
fn parses_a_full_component() {
    let loaded = load(
        r#"
apiVersion: dapr.io/v1alpha1
kind: Component
metadata:
  name: statestore
spec:
  type: state.SQLite
  version: v1
  initTimeout: 20s
  ignoreErrors: true
  metadata:
  - name: connectionString
    value: /tmp/x.db
  - name: port
    value: 6379
  - name: enabled
    value: true
  - name: obj
    value: {b: 1, a: [x, 2]}
  - name: password
    secretKeyRef: {name: redis, key: pw}
  - name: token
    envRef: MY_TOKEN
auth:
  secretStore: vault
scopes: [app1, app2]
"#,
    )
    .expect("valid");
    let c = &loaded.components[0];
    assert_eq!(c.name, "statestore");
    assert_eq!(c.type_name(), "state.sqlite");
    assert_eq!(c.socket_name, "sqlite");
    assert_eq!(c.init_timeout, Duration::from_secs(20));
    assert!(c.ignore_errors);
    assert_eq!(c.plain_metadata("port"), Some("6379"));
    assert_eq!(c.plain_metadata("enabled"), Some("true"));
    assert_eq!(c.plain_metadata("obj"), Some(r#"{"a":["x",2],"b":1}"#));
    assert_eq!(
        c.metadata[4].value,
        MetadataValue::SecretKeyRef {
            name: "redis".into(),
            key: Some("pw".into())
        }
    );
    assert_eq!(
        c.metadata[5].value,
        MetadataValue::EnvRef("MY_TOKEN".into())
    );
    assert_eq!(c.secret_store.as_deref(), Some("vault"));
}

#[test]
fn reports_every_problem_with_file_component_and_field() {
    let err = load(
        r#"
apiVersion: dapr.io/v1alpha1
kind: Component
metadata:
  name: one
spec:
  type: foo.bar
  version: v2
  initTimeout: soon
---
apiVersion: dapr.io/v1alpha1
kind: Component
metadata: {}
spec:
  type: state.x
---
apiVersion: dapr.io/v1alpha1
kind: Component
metadata:
  name: one
spec:
  type: state.y
  ignoreErrors: maybe
  metadata:
  - value: nameless
"#,
    )
    .expect_err("invalid");
    let text = err.to_string();
    let p = &err.0;
    assert!(
        p.iter().any(|p| p.component == "one"
            && p.field == "spec.type"
            && p.message.contains("unknown category \"foo\"")),
        "{text}"
    );
    assert!(
        p.iter()
            .any(|p| p.field == "spec.version" && p.message.contains("v2")),
        "{text}"
    );
    assert!(p.iter().any(|p| p.field == "spec.initTimeout"), "{text}");
    assert!(
        p.iter()
            .any(|p| p.component == "#2 (unnamed)" && p.field == "metadata.name"),
        "{text}"
    );
    assert!(
        p.iter()
            .any(|p| p.field == "metadata.name" && p.message.contains("duplicate")),
        "{text}"
    );
    assert!(text.contains("res/a.yaml"), "{text}");
    assert_eq!(p.len(), 7, "{text}");
}

#[test]
fn field_errors_in_a_unique_component_are_all_reported() {
    let err = load(
        r#"
apiVersion: dapr.io/v1alpha1
kind: Component
metadata: {name: "bad/name"}
spec:
  type: state.y
  ignoreErrors: maybe
  metadata:
  - value: nameless
  - name: s
    secretKeyRef: {key: k}
"#,
    )
    .expect_err("invalid");
    let fields: Vec<_> = err.0.iter().map(|p| p.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "metadata.name",
            "spec.ignoreErrors",
            "spec.metadata[0].name",
            "spec.metadata[s].secretKeyRef.name"
        ]
    );
}

#[test]
fn scopes_namespace_and_non_pluggable_categories_are_skipped() {
    let text = r#"
apiVersion: dapr.io/v1alpha1
kind: Component
metadata: {name: a, namespace: prod}
spec: {type: state.x}
scopes: [other]
---
apiVersion: dapr.io/v1alpha1
kind: Component
metadata: {name: b}
spec: {type: lock.redis}
---
apiVersion: dapr.io/v1alpha1
kind: Subscription
metadata: {name: s}
---
apiVersion: dapr.io/v1alpha1
kind: Component
metadata: {name: c, namespace: dev}
spec: {type: state.x}
"#;
    let (d, _) = docs(text);
    let loaded = validate(&d, "app1", Some("prod")).expect("valid");
    assert!(loaded.components.is_empty());
    let names: Vec<_> = loaded.skipped.iter().map(|s| s.1.as_str()).collect();
    assert_eq!(names, ["a", "b", "c"]);
    let loaded = validate(&d, "other", None).expect("valid");
    assert_eq!(loaded.components.len(), 2);
}

#[test]
fn defaults_and_duplicate_metadata() {
    let loaded = load(
        r#"
apiVersion: dapr.io/v1alpha1
kind: Component
metadata: {name: s}
spec:
  type: state.x
  initTimeout: 0s
  metadata:
  - {name: a, value: "1"}
  - {name: a, value: "2"}
  - {name: empty}
"#,
    )
    .expect("valid");
    let c = &loaded.components[0];
    assert_eq!(c.init_timeout, DEFAULT_INIT_TIMEOUT);
    assert_eq!(c.version, "");
    assert_eq!(c.plain_metadata("a"), Some("2"));
    assert_eq!(c.plain_metadata("empty"), Some(""));
    assert_eq!(c.metadata.len(), 2);
}

#[test]
fn yaml_syntax_errors_are_problems() {
    let (_, p) = docs("apiVersion: [unclosed\n");
    assert_eq!(p.len(), 1);
    assert!(p[0].message.contains("invalid YAML"));
}

#[test]
fn plain_values_are_redacted_in_debug() {
    let v = MetadataValue::Plain("hunter2".into());
    assert!(!format!("{v:?}").contains("hunter2"));
}

#[test]
fn secret_references_must_name_a_store_and_not_cycle() {
    let text = r#"
apiVersion: dapr.io/v1alpha1
kind: Component
metadata: {name: db}
spec:
  type: state.x
  metadata:
  - name: password
    secretKeyRef: {name: dbpass}
auth: {secretStore: cache}
---
apiVersion: dapr.io/v1alpha1
kind: Component
metadata: {name: cache}
spec: {type: state.y}
---
apiVersion: dapr.io/v1alpha1
kind: Component
metadata: {name: s1}
spec:
  type: secretstores.a
  metadata:
  - name: token
    secretKeyRef: {name: t, key: k}
auth: {secretStore: s2}
---
apiVersion: dapr.io/v1alpha1
kind: Component
metadata: {name: s2}
spec:
  type: secretstores.b
  metadata:
  - name: token
    secretKeyRef: {name: t}
auth: {secretStore: s1}
---
apiVersion: dapr.io/v1alpha1
kind: Component
metadata: {name: ok}
spec:
  type: state.z
  metadata:
  - name: password
    secretKeyRef: {name: p}
auth: {secretStore: not-loaded-yet}
"#;
    let (d, p) = docs(text);
    assert!(p.is_empty());
    let problems = validate(&d, "app1", None).expect_err("invalid").0;
    let texts: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
    assert_eq!(problems.len(), 3, "{texts:#?}");
    assert!(texts[0].contains("component db") && texts[0].contains("auth.secretStore"));
    assert!(texts[0].contains("\"cache\" is a state.y component, not a secret store"));
    assert!(texts[1].contains("component s1") && texts[1].contains("s1 -> s2 -> s1"));
    assert!(texts[2].contains("component s2") && texts[2].contains("s2 -> s1 -> s2"));
}
