//! Property tests for the two parsers that take input from outside: the Component /
//! Subscription YAML loader and HTTP request handling. Each runs a fixed number of cases
//! (`PROPTEST_CASES` overrides it), so it takes seconds in a debug build.
//!
//! - YAML: arbitrary bytes and arbitrary YAML structures never panic and every problem names its
//!   file and component; valid generated Components load as exactly what was written.
//! - HTTP: arbitrary methods, paths, query strings, headers and bodies sent to plugd's router
//!   (with the layers plugd puts in front of it) over real components never panic, never hang,
//!   and always get a success or a well-formed Dapr JSON error.

mod support;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Duration,
};

use plugd::config::manifest::{
    self, Category, ComponentManifest, DEFAULT_INIT_TIMEOUT, MetadataItem, MetadataValue,
    SourceDocument,
};
use proptest::{
    prelude::*,
    test_runner::{Config as ProptestConfig, TestCaseError, TestError, TestRunner},
};
use serde_yaml::Value as Yaml;

/// Cases per property: `PROPTEST_CASES` when set, else `default`.
fn runner(default: u32) -> TestRunner {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    TestRunner::new(ProptestConfig {
        cases,
        // The minimal failing input is in the failure message; nothing is written to disk.
        failure_persistence: None,
        ..ProptestConfig::default()
    })
}

/// Runs `test` over `strategy`; a failure names the minimal input found.
fn check<S: Strategy>(
    name: &str,
    mut runner: TestRunner,
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) where
    S::Value: std::fmt::Debug,
{
    match runner.run(&strategy, test) {
        Ok(()) => {}
        Err(TestError::Fail(why, input)) => {
            panic!("{name}: {why}\nminimal failing input: {input:#?}")
        }
        Err(TestError::Abort(why)) => panic!("{name}: aborted: {why}"),
    }
}

// =============================================================================================
// The YAML loader

/// Words the loader looks for, so generated input reaches deep into validation.
const YAML_WORDS: &[&str] = &[
    "apiVersion",
    "kind",
    "metadata",
    "name",
    "namespace",
    "spec",
    "type",
    "version",
    "ignoreErrors",
    "initTimeout",
    "value",
    "secretKeyRef",
    "envRef",
    "key",
    "auth",
    "secretStore",
    "scopes",
    "Component",
    "Subscription",
    "dapr.io/v1alpha1",
    "dapr.io/v2alpha1",
    "state.sqlite",
    "pubsub.in-memory",
    "bindings.",
    "lock.redis",
    "v1",
    "v2",
    "20s",
    "-1h",
    "pubsubname",
    "topic",
    "route",
    "routes",
    "rules",
    "default",
    "match",
    "path",
    "event.type == \"x\"",
    "event.data.a.b != 1 && event.id == 'q'",
    "deadLetterTopic",
    "bulkSubscribe",
    "||",
    "",
];

/// Loads `docs` the way plugd does (Components, then Subscriptions) and checks every problem
/// names a file and a component.
fn load_all(docs: &[SourceDocument], problems: &[manifest::Problem], file: &Path) {
    let mut all = problems.to_vec();
    if let Err(manifest::Problems(more)) = manifest::validate(docs, "app1", Some("default")) {
        all.extend(more);
    }
    if let Err(more) = plugd::pubsub::subscription::declarative(docs, "app1") {
        all.extend(more);
    }
    for p in &all {
        assert!(p.file.starts_with(file), "problem names another file: {p}");
        assert!(!p.component.is_empty(), "problem names no component: {p}");
        assert!(!p.message.is_empty(), "problem says nothing: {p}");
        // Display never fails and names the file.
        assert!(p.to_string().contains(&file.display().to_string()));
    }
}

/// Text made of YAML's punctuation and the loader's words: mostly not YAML, sometimes nearly.
fn yamlish_text() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        4 => proptest::sample::select(YAML_WORDS).prop_map(str::to_string),
        3 => proptest::sample::select(&[
            ": ", "\n", "\n  ", "\n    ", "- ", "---\n", "[", "]", "{", "}", ", ", "&a ", "*a",
            "!!binary ", "!tag ", "\t", "'", "\"", "#", "|\n  ", ">-\n  ", "? ", "%YAML 1.2\n",
            "~", "null", "true", "0x1F", "1e400", "<<: *a\n",
        ][..]).prop_map(str::to_string),
        2 => "\\PC{0,12}",
    ];
    proptest::collection::vec(piece, 0..80).prop_map(|p| p.concat())
}

/// Arbitrary bytes and YAML-ish text, read from a real file as plugd reads it: never a panic.
#[test]
fn yaml_loader_never_panics_on_arbitrary_input() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("input.yaml");
    let input = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..1024),
        yamlish_text().prop_map(String::into_bytes),
        // Valid Component text with bytes overwritten at random places.
        (
            proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
            Just(VALID_COMPONENT.as_bytes().to_vec()),
        )
            .prop_map(|(edits, mut bytes)| {
                for (at, b) in edits {
                    let i = at.index(bytes.len());
                    bytes[i] = b;
                }
                bytes
            }),
    ];
    check("arbitrary bytes", runner(800), input, |bytes| {
        std::fs::write(&file, &bytes).expect("write input");
        let (docs, problems) = manifest::read_documents(&[dir.path().to_path_buf()]);
        load_all(&docs, &problems, &file);
        Ok(())
    });
}

const VALID_COMPONENT: &str = "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: statestore\nspec:\n  type: state.sqlite\n  version: v1\n  initTimeout: 20s\n  metadata:\n  - name: connectionString\n    value: /tmp/x.db\n  - name: password\n    secretKeyRef: {name: s, key: k}\nauth:\n  secretStore: vault\nscopes: [app1]\n---\napiVersion: dapr.io/v2alpha1\nkind: Subscription\nmetadata:\n  name: orders\nspec:\n  pubsubname: pubsub\n  topic: orders\n  routes:\n    rules:\n    - match: event.type == \"order\"\n      path: /orders\n    default: /all\n";

fn yaml_leaf() -> impl Strategy<Value = Yaml> {
    prop_oneof![
        Just(Yaml::Null),
        any::<bool>().prop_map(Yaml::Bool),
        any::<i64>().prop_map(|n| Yaml::Number(n.into())),
        any::<f64>().prop_map(|n| Yaml::Number(n.into())),
        proptest::sample::select(YAML_WORDS).prop_map(|s| Yaml::String(s.to_string())),
        "\\PC{0,16}".prop_map(Yaml::String),
    ]
}

fn yaml_value() -> impl Strategy<Value = Yaml> {
    yaml_leaf().prop_recursive(4, 48, 6, |inner| {
        let key = prop_oneof![
            4 => proptest::sample::select(YAML_WORDS).prop_map(|s| Yaml::String(s.to_string())),
            1 => yaml_leaf(),
        ];
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..5).prop_map(Yaml::Sequence),
            proptest::collection::vec((key, inner.clone()), 0..6)
                .prop_map(|kv| Yaml::Mapping(kv.into_iter().collect())),
            ("[a-z!]{1,6}", inner).prop_map(|(tag, value)| {
                Yaml::Tagged(Box::new(serde_yaml::value::TaggedValue {
                    tag: serde_yaml::value::Tag::new(tag),
                    value,
                }))
            }),
        ]
    })
}

/// A document shaped like a resource: the top-level fields plugd reads, each any YAML at all.
fn resource_document() -> impl Strategy<Value = Yaml> {
    let api = prop_oneof![
        Just(Yaml::String("dapr.io/v1alpha1".into())),
        Just(Yaml::String("dapr.io/v2alpha1".into())),
        yaml_leaf(),
    ];
    let kind = prop_oneof![
        Just(Yaml::String("Component".into())),
        Just(Yaml::String("Subscription".into())),
        yaml_leaf(),
    ];
    (
        api,
        kind,
        yaml_value(),
        yaml_value(),
        yaml_value(),
        yaml_value(),
    )
        .prop_map(|(api, kind, metadata, spec, auth, scopes)| {
            let mut m = serde_yaml::Mapping::new();
            m.insert("apiVersion".into(), api);
            m.insert("kind".into(), kind);
            m.insert("metadata".into(), metadata);
            m.insert("spec".into(), spec);
            m.insert("auth".into(), auth);
            m.insert("scopes".into(), scopes);
            Yaml::Mapping(m)
        })
}

/// Arbitrary YAML structures, validated as they are and after a trip through YAML text: never
/// a panic, and every problem names the file and the component.
#[test]
fn yaml_loader_never_panics_on_arbitrary_structures() {
    let file = PathBuf::from("/resources/generated.yaml");
    let docs = proptest::collection::vec(
        prop_oneof![3 => resource_document(), 1 => yaml_value()],
        1..4,
    );
    check("arbitrary structures", runner(600), docs, |values| {
        let docs: Vec<SourceDocument> = values
            .iter()
            .enumerate()
            .map(|(i, value)| SourceDocument {
                file: file.clone(),
                index: i + 1,
                value: value.clone(),
            })
            .collect();
        load_all(&docs, &[], &file);
        // The same through text, as plugd reads it.
        let text: String = values
            .iter()
            .filter_map(|v| serde_yaml::to_string(v).ok())
            .map(|t| format!("---\n{t}"))
            .collect();
        let (mut docs, mut problems) = (Vec::new(), Vec::new());
        manifest::parse_documents(&file, &text, &mut docs, &mut problems);
        load_all(&docs, &problems, &file);
        Ok(())
    });
}

/// How a generated metadata item is written.
#[derive(Debug, Clone)]
enum Meta {
    Text(String),
    Int(i64),
    Bool(bool),
    Secret(String, Option<String>),
    Env(String),
}

/// A valid Component as the generator wrote it.
#[derive(Debug, Clone)]
struct Generated {
    name: String,
    category: Category,
    socket: String,
    version: Option<String>,
    ignore_errors: Option<Yaml>,
    init_timeout: Option<(String, Duration)>,
    metadata: BTreeMap<String, Meta>,
    scopes: Vec<String>,
    namespace: Option<String>,
}

impl Generated {
    fn yaml(&self) -> String {
        let mut meta = serde_yaml::Mapping::new();
        meta.insert("name".into(), self.name.clone().into());
        if let Some(ns) = &self.namespace {
            meta.insert("namespace".into(), ns.clone().into());
        }
        let mut spec = serde_yaml::Mapping::new();
        spec.insert(
            "type".into(),
            format!("{}.{}", self.category.prefix(), self.socket).into(),
        );
        if let Some(v) = &self.version {
            spec.insert("version".into(), v.clone().into());
        }
        if let Some(v) = &self.ignore_errors {
            spec.insert("ignoreErrors".into(), v.clone());
        }
        if let Some((text, _)) = &self.init_timeout {
            spec.insert("initTimeout".into(), text.clone().into());
        }
        let items: Vec<Yaml> = self
            .metadata
            .iter()
            .map(|(name, m)| {
                let mut item = serde_yaml::Mapping::new();
                item.insert("name".into(), name.clone().into());
                match m {
                    Meta::Text(s) => {
                        item.insert("value".into(), s.clone().into());
                    }
                    Meta::Int(n) => {
                        item.insert("value".into(), (*n).into());
                    }
                    Meta::Bool(b) => {
                        item.insert("value".into(), (*b).into());
                    }
                    Meta::Secret(secret, key) => {
                        let mut r = serde_yaml::Mapping::new();
                        r.insert("name".into(), secret.clone().into());
                        if let Some(k) = key {
                            r.insert("key".into(), k.clone().into());
                        }
                        item.insert("secretKeyRef".into(), Yaml::Mapping(r));
                    }
                    Meta::Env(var) => {
                        item.insert("envRef".into(), var.clone().into());
                    }
                }
                Yaml::Mapping(item)
            })
            .collect();
        spec.insert("metadata".into(), Yaml::Sequence(items));
        let mut doc = serde_yaml::Mapping::new();
        doc.insert("apiVersion".into(), "dapr.io/v1alpha1".into());
        doc.insert("kind".into(), "Component".into());
        doc.insert("metadata".into(), Yaml::Mapping(meta));
        doc.insert("spec".into(), Yaml::Mapping(spec));
        if self
            .metadata
            .values()
            .any(|m| matches!(m, Meta::Secret(..)))
        {
            let mut auth = serde_yaml::Mapping::new();
            auth.insert("secretStore".into(), "vault".into());
            doc.insert("auth".into(), Yaml::Mapping(auth));
        }
        if !self.scopes.is_empty() {
            doc.insert(
                "scopes".into(),
                Yaml::Sequence(self.scopes.iter().map(|s| s.clone().into()).collect()),
            );
        }
        serde_yaml::to_string(&Yaml::Mapping(doc)).expect("serialize")
    }

    /// What plugd must load from it.
    fn expected(&self, file: &Path) -> ComponentManifest {
        let ignore_errors = match &self.ignore_errors {
            Some(Yaml::Bool(b)) => *b,
            Some(Yaml::String(s)) => s.eq_ignore_ascii_case("true"),
            _ => false,
        };
        let uses_secrets = self
            .metadata
            .values()
            .any(|m| matches!(m, Meta::Secret(..)));
        ComponentManifest {
            file: file.to_path_buf(),
            name: self.name.clone(),
            namespace: self.namespace.clone(),
            category: self.category,
            socket_name: self.socket.to_ascii_lowercase(),
            version: self.version.clone().unwrap_or_default(),
            ignore_errors,
            init_timeout: self
                .init_timeout
                .as_ref()
                .map_or(DEFAULT_INIT_TIMEOUT, |(_, d)| *d),
            metadata: self
                .metadata
                .iter()
                .map(|(name, m)| MetadataItem {
                    name: name.clone(),
                    value: match m {
                        Meta::Text(s) => MetadataValue::Plain(s.clone()),
                        Meta::Int(n) => MetadataValue::Plain(n.to_string()),
                        Meta::Bool(b) => MetadataValue::Plain(b.to_string()),
                        Meta::Secret(name, key) => MetadataValue::SecretKeyRef {
                            name: name.clone(),
                            key: key.clone(),
                        },
                        Meta::Env(var) => MetadataValue::EnvRef(var.clone()),
                    },
                })
                .collect(),
            secret_store: uses_secrets.then(|| "vault".to_string()),
            scopes: self.scopes.clone(),
        }
    }
}

fn generated_component() -> impl Strategy<Value = Generated> {
    let category = proptest::sample::select(
        &[
            Category::State,
            Category::PubSub,
            Category::Bindings,
            Category::SecretStores,
        ][..],
    );
    let meta = prop_oneof![
        4 => "\\PC{0,40}".prop_map(Meta::Text),
        1 => any::<i64>().prop_map(Meta::Int),
        1 => any::<bool>().prop_map(Meta::Bool),
        1 => ("[a-zA-Z0-9_.-]{1,12}", proptest::option::of("[a-zA-Z0-9_.-]{1,12}"))
            .prop_map(|(n, k)| Meta::Secret(n, k)),
        1 => "[A-Z][A-Z0-9_]{0,12}"
            .prop_filter("not reserved", |v| !v.starts_with("DAPR_"))
            .prop_map(Meta::Env),
    ];
    let timeout = prop_oneof![
        (1u64..3600).prop_map(|s| (format!("{s}s"), Duration::from_secs(s))),
        (1u64..120).prop_map(|m| (format!("{m}m"), Duration::from_secs(m * 60))),
        (1u64..100_000).prop_map(|ms| (format!("{ms}ms"), Duration::from_millis(ms))),
        (1u64..5, 1u64..59)
            .prop_map(|(h, m)| (format!("{h}h{m}m"), Duration::from_secs(h * 3600 + m * 60))),
    ];
    let ignore = prop_oneof![
        any::<bool>().prop_map(Yaml::Bool),
        proptest::sample::select(&["true", "false", "TRUE", "False"][..])
            .prop_map(|s| Yaml::String(s.into())),
    ];
    let scopes = prop_oneof![
        Just(Vec::new()),
        proptest::collection::vec("[a-z][a-z0-9-]{0,10}", 0..3).prop_map(|mut s| {
            s.push("app1".into());
            s
        }),
    ];
    (
        "[a-zA-Z0-9_][a-zA-Z0-9_.-]{0,30}",
        category,
        "[a-zA-Z][a-zA-Z0-9-]{0,12}(\\.[a-z0-9]{1,6})?",
        proptest::option::of(
            proptest::sample::select(&["", "v0", "v1"][..]).prop_map(String::from),
        ),
        proptest::option::of(ignore),
        proptest::option::of(timeout),
        proptest::collection::btree_map("[a-zA-Z][a-zA-Z0-9_.-]{0,15}", meta, 0..6),
        scopes,
        proptest::option::of(Just("default".to_string())),
    )
        .prop_map(
            |(
                name,
                category,
                socket,
                version,
                ignore_errors,
                init_timeout,
                metadata,
                scopes,
                namespace,
            )| {
                Generated {
                    name,
                    category,
                    socket,
                    version,
                    ignore_errors,
                    init_timeout,
                    metadata,
                    scopes,
                    namespace,
                }
            },
        )
}

/// Valid generated Components, written as YAML text and loaded: exactly what was written, with
/// metadata stringified as Dapr does.
#[test]
fn valid_components_round_trip() {
    let file = PathBuf::from("/resources/generated.yaml");
    check("round trip", runner(800), generated_component(), |g| {
        let text = g.yaml();
        let (mut docs, mut problems) = (Vec::new(), Vec::new());
        manifest::parse_documents(&file, &text, &mut docs, &mut problems);
        prop_assert!(problems.is_empty(), "{problems:?}\n{text}");
        let loaded = manifest::validate(&docs, "app1", Some("default"))
            .map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
        prop_assert_eq!(loaded.components.len(), 1, "{}", text);
        prop_assert_eq!(&loaded.components[0], &g.expected(&file), "{}", text);
        Ok(())
    });
}

/// Routing-rule `match` expressions (Subscription resources, `ListTopicSubscriptions`) made of
/// the subset's tokens and anything else: parsing never panics, and a parsed rule evaluated
/// against an arbitrary broker message (read as plugd reads one) never panics either.
#[test]
fn match_expressions_never_panic() {
    use plugd::pubsub::{cloudevents::Event, subscription::Matcher};
    let token = prop_oneof![
        3 => proptest::sample::select(&[
            "event.", "event.type", "event.data.", "data", "a", "b.c", "id", "source", " == ",
            " != ", " && ", "||", "\"", "'", "\\", "\"x\"", "'y'", "1", "-2.5e3", "true", "null",
            "(", ")", "!", "has(", "ü", " ", ".", "==", "&", "=",
        ][..]).prop_map(str::to_string),
        1 => "\\PC{0,6}",
    ];
    let expression = proptest::collection::vec(token, 0..12).prop_map(|t| t.concat());
    let message = prop_oneof![
        json_value().prop_map(|v| serde_json::to_vec(&v).unwrap_or_default()),
        json_value().prop_map(|data| {
            serde_json::to_vec(&serde_json::json!({
                "id": "1", "specversion": "1.0", "type": "t", "source": "s", "data": data,
            }))
            .unwrap_or_default()
        }),
        proptest::collection::vec(any::<u8>(), 0..64),
    ];
    check(
        "match expressions",
        runner(800),
        (expression, message, any::<bool>()),
        |(expression, message, raw)| {
            if let (Ok(m), Ok(event)) = (
                Matcher::parse(&expression),
                Event::read(&message, raw, "orders", "pubsub", &Default::default()),
            ) {
                let _ = m.matches(&event);
            }
            Ok(())
        },
    );
}

// =============================================================================================
// HTTP request handling

use axum::body::Body;
use http::{HeaderName, HeaderValue, Method, Request};
use tower::{Layer, ServiceExt};

const PATH_WORDS: &[&str] = &[
    "v1.0",
    "v1.0-alpha1",
    "state",
    "statestore",
    "nostore",
    "publish",
    "bulk",
    "pubsub",
    "orders",
    "bindings",
    "files",
    "secrets",
    "token",
    "metadata",
    "healthz",
    "outbound",
    "transaction",
    "query",
    "actors",
    "invoke",
    "subscribe",
    "k1",
    "",
    ".",
    "..",
    "||",
    "a||b",
    "%",
    "%zz",
    "%FF",
    "%00",
    "%2F",
    "%C3%28",
];

/// Paths: mostly plugd's own routes with odd segments after them, sometimes anything.
fn path() -> impl Strategy<Value = String> {
    let prefix = proptest::sample::select(
        &[
            "/v1.0/state/statestore",
            "/v1.0/state/nostore",
            "/v1.0/state",
            "/v1.0-alpha1/state/statestore/query",
            "/v1.0/publish/pubsub",
            "/v1.0-alpha1/publish/bulk/pubsub",
            "/v1.0/publish/bulk/nopubsub",
            "/v1.0/bindings",
            "/v1.0/secrets/secrets",
            "/v1.0/metadata",
            "/v1.0/healthz",
            "/v1.0",
            "",
        ][..],
    );
    let segment = prop_oneof![
        3 => proptest::sample::select(PATH_WORDS).prop_map(str::to_string),
        1 => proptest::collection::vec(any::<u8>(), 0..8).prop_map(|b| percent_encode(&b)),
        1 => "[a-zA-Z0-9._~!$&'()*+,;=:@-]{0,8}",
    ];
    (
        prefix,
        proptest::collection::vec(segment, 0..4),
        any::<bool>(),
    )
        .prop_map(|(prefix, segments, trailing)| {
            let mut p = prefix.to_string();
            for s in segments {
                p.push('/');
                p.push_str(&s);
            }
            if trailing || p.is_empty() {
                p.push('/');
            }
            p
        })
}

fn percent_encode(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(b) {
                (*b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn query() -> impl Strategy<Value = Option<String>> {
    let key = prop_oneof![
        proptest::sample::select(
            &[
                "metadata.x",
                "metadata.rawPayload",
                "metadata.ttlInSeconds",
                "consistency",
                "concurrency",
                "appid",
                "metadata.",
                "metadata.contentType",
                "",
            ][..]
        )
        .prop_map(str::to_string),
        proptest::collection::vec(any::<u8>(), 0..6).prop_map(|b| percent_encode(&b)),
    ];
    let value = prop_oneof![
        proptest::sample::select(
            &[
                "true",
                "nope",
                "-1",
                "strong",
                "first-write",
                "%FF",
                "%",
                "a=b",
                ""
            ][..]
        )
        .prop_map(str::to_string),
        proptest::collection::vec(any::<u8>(), 0..6).prop_map(|b| percent_encode(&b)),
    ];
    proptest::option::of(
        proptest::collection::vec((key, value), 0..4).prop_map(|kv| {
            kv.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("&")
        }),
    )
}

fn headers() -> impl Strategy<Value = Vec<(String, Vec<u8>)>> {
    let name = proptest::sample::select(
        &[
            "content-type",
            "if-match",
            "traceparent",
            "tracestate",
            "grpc-trace-bin",
            "dapr-api-token",
            "metadata.x",
            "accept",
            "content-encoding",
        ][..],
    );
    let value = prop_oneof![
        proptest::sample::select(
            &[
                "application/json",
                "application/cloudevents+json",
                "application/octet-stream",
                "text/plain; charset=utf-8",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                "gzip",
                "*",
                "",
            ][..]
        )
        .prop_map(|s| s.as_bytes().to_vec()),
        proptest::collection::vec(any::<u8>(), 0..24),
    ];
    proptest::collection::vec((name.prop_map(str::to_string), value), 0..4)
}

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value as J;
    let leaf = prop_oneof![
        Just(J::Null),
        any::<bool>().prop_map(J::Bool),
        any::<i64>().prop_map(J::from),
        any::<f64>().prop_map(J::from),
        proptest::sample::select(
            &[
                "k1",
                "",
                "a||b",
                "upsert",
                "delete",
                "merge",
                "create",
                "get",
                "list",
                "explode",
                "first-write",
                "text/plain",
                "application/octet-stream",
            ][..]
        )
        .prop_map(|s| J::String(s.into())),
        "\\PC{0,12}".prop_map(J::String),
    ];
    leaf.prop_recursive(3, 32, 5, |inner| {
        let key = prop_oneof![
            3 => proptest::sample::select(&[
                "key", "value", "etag", "metadata", "options", "keys", "operations", "operation",
                "request", "data", "entryId", "event", "contentType", "parallelism", "filter",
                "concurrency", "consistency", "fileName", "KEY", "Value",
            ][..]).prop_map(str::to_string),
            1 => "\\PC{0,8}",
        ];
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(J::Array),
            proptest::collection::vec((key, inner), 0..5)
                .prop_map(|kv| J::Object(kv.into_iter().collect())),
        ]
    })
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        1 => Just(Vec::new()),
        2 => proptest::collection::vec(any::<u8>(), 0..256),
        4 => json_value().prop_map(|v| serde_json::to_vec(&v).unwrap_or_default()),
        // Truncated JSON.
        1 => (json_value(), any::<prop::sample::Index>()).prop_map(|(v, at)| {
            let bytes = serde_json::to_vec(&v).unwrap_or_default();
            let cut = at.index(bytes.len() + 1);
            bytes[..cut].to_vec()
        }),
    ]
}

#[derive(Debug, Clone)]
struct HttpInput {
    method: String,
    path: String,
    query: Option<String>,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
}

fn http_input() -> impl Strategy<Value = HttpInput> {
    prop_oneof![random_input(), structured_input()]
}

fn random_input() -> impl Strategy<Value = HttpInput> {
    let method = prop_oneof![
        4 => proptest::sample::select(&["GET", "POST", "PUT", "DELETE"][..]).prop_map(str::to_string),
        1 => proptest::sample::select(&["PATCH", "HEAD", "OPTIONS", "TRACE"][..]).prop_map(str::to_string),
        1 => "[A-Z]{1,8}",
    ];
    (method, path(), query(), headers(), body()).prop_map(|(method, path, query, headers, body)| {
        HttpInput {
            method,
            path,
            query,
            headers,
            body,
        }
    })
}

/// A key: a usual one, or anything that fits a path segment once encoded.
fn key_text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => proptest::sample::select(&["k1", "k2", "a||b", "", "bulk", "transaction", "x y", "ü"][..])
            .prop_map(str::to_string),
        1 => "\\PC{0,10}",
    ]
}

/// Requests shaped like the ones each route takes, with odd values inside: they reach the
/// components, where random bytes mostly stop at the first check.
fn structured_input() -> impl Strategy<Value = HttpInput> {
    use serde_json::{Value as J, json};
    let item = (
        key_text(),
        json_value(),
        proptest::option::of(json_value()),
        proptest::option::of(json_value()),
    )
        .prop_map(|(key, value, etag, metadata)| {
            let mut o = json!({"key": key, "value": value});
            if let Some(e) = etag {
                o["etag"] = e;
            }
            if let Some(m) = metadata {
                o["metadata"] = m;
            }
            o
        })
        .boxed();
    let op = proptest::sample::select(&["create", "get", "list", "delete", "explode", ""][..]);
    let tx_op = proptest::sample::select(&["upsert", "delete", "merge"][..]);
    let request = |method: &str, path: String, body: J| HttpInput {
        method: method.into(),
        path,
        query: None,
        headers: Vec::new(),
        body: serde_json::to_vec(&body).unwrap_or_default(),
    };
    prop_oneof![
        proptest::collection::vec(item.clone(), 0..4).prop_map(move |items| request(
            "POST",
            "/v1.0/state/statestore".into(),
            J::Array(items)
        )),
        key_text().prop_map(move |k| request(
            "GET",
            format!("/v1.0/state/statestore/{}", percent_encode(k.as_bytes())),
            J::Null
        )),
        (key_text(), proptest::option::of("\\PC{0,8}")).prop_map(move |(k, etag)| {
            let mut r = request(
                "DELETE",
                format!("/v1.0/state/statestore/{}", percent_encode(k.as_bytes())),
                J::Null,
            );
            r.body.clear();
            if let Some(e) = etag {
                r.headers.push(("if-match".into(), e.into_bytes()));
            }
            r
        }),
        proptest::collection::vec(key_text(), 0..4).prop_map(move |keys| request(
            "POST",
            "/v1.0/state/statestore/bulk".into(),
            json!({"keys": keys})
        )),
        proptest::collection::vec((tx_op, item), 0..4).prop_map(move |ops| {
            let ops: Vec<J> = ops
                .into_iter()
                .map(|(o, r)| json!({"operation": o, "request": r}))
                .collect();
            request(
                "POST",
                "/v1.0/state/statestore/transaction".into(),
                json!({"operations": ops}),
            )
        }),
        (
            key_text(),
            proptest::collection::vec(any::<u8>(), 0..64),
            proptest::option::of(proptest::sample::select(
                &[
                    "application/json",
                    "application/cloudevents+json",
                    "application/octet-stream",
                    "text/plain",
                ][..]
            ))
        )
            .prop_map(move |(topic, body, ct)| HttpInput {
                method: "POST".into(),
                path: format!("/v1.0/publish/pubsub/{}", percent_encode(topic.as_bytes())),
                query: Some("metadata.rawPayload=true".into()).filter(|_| body.len() % 2 == 0),
                headers: ct
                    .map(|c| ("content-type".to_string(), c.as_bytes().to_vec()))
                    .into_iter()
                    .collect(),
                body,
            }),
        proptest::collection::vec(
            (
                key_text(),
                json_value(),
                proptest::option::of("[a-z/+-]{0,24}")
            ),
            0..4
        )
        .prop_map(move |entries| {
            let entries: Vec<J> = entries
                .into_iter()
                .map(|(id, event, ct)| json!({"entryId": id, "event": event, "contentType": ct}))
                .collect();
            request(
                "POST",
                "/v1.0-alpha1/publish/bulk/pubsub/orders".into(),
                J::Array(entries),
            )
        }),
        (op, json_value(), key_text()).prop_map(move |(op, data, file)| {
            request(
                "POST",
                "/v1.0/bindings/files".into(),
                json!({"operation": op, "data": data, "metadata": {"fileName": file}}),
            )
        }),
        key_text().prop_map(move |k| request(
            "GET",
            format!("/v1.0/secrets/secrets/{}", percent_encode(k.as_bytes())),
            J::Null
        )),
    ]
    .prop_map(|mut r| {
        if r.method == "GET" {
            r.body.clear();
        }
        r
    })
}

impl HttpInput {
    /// The request, or `None` when the parts cannot form one (the HTTP server would refuse
    /// such bytes before plugd sees them).
    fn request(&self) -> Option<Request<Body>> {
        let uri = match &self.query {
            Some(q) => format!("{}?{q}", self.path),
            None => self.path.clone(),
        };
        let mut builder = Request::builder()
            .method(Method::from_bytes(self.method.as_bytes()).ok()?)
            .uri(http::Uri::try_from(uri).ok()?);
        for (name, value) in &self.headers {
            builder = builder.header(
                HeaderName::try_from(name.as_str()).ok()?,
                HeaderValue::from_bytes(value).ok()?,
            );
        }
        builder.body(Body::from(self.body.clone())).ok()
    }
}

/// plugd's router as plugd serves it (slashes collapsed, trailing slash trimmed), over the
/// registry of an in-process plugd with real components: `plugd-memory` (state store and
/// pub/sub) and `plugd-files` (output binding and secret store).
#[test]
fn http_requests_always_get_success_or_a_dapr_error() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let dirs = support::TestDirs::new();
    let data = dirs.root.path().join("data");
    std::fs::create_dir_all(&data).expect("data dir");
    let secrets = dirs.root.path().join("secrets.json");
    std::fs::write(&secrets, r#"{"token": "t0ken"}"#).expect("secrets");
    for (name, ty, meta) in [
        ("statestore", "state.in-memory", String::from("    []\n")),
        ("pubsub", "pubsub.in-memory", String::from("    []\n")),
        (
            "files",
            "bindings.files",
            format!("    - {{name: rootPath, value: {:?}}}\n", data.display()),
        ),
        (
            "secrets",
            "secretstores.files",
            format!(
                "    - {{name: secretsFile, value: {:?}}}\n",
                secrets.display()
            ),
        ),
    ] {
        dirs.write_resource(
            &format!("{name}.yaml"),
            &format!("apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: {name}\nspec:\n  type: {ty}\n  version: v1\n  metadata:\n{meta}"),
        );
    }
    let _memory = support::spawn_component("plugd-memory", &dirs.sockets, "in-memory", &[]);
    let _files = support::spawn_component("plugd-files", &dirs.sockets, "files", &[]);
    let plugd = rt.block_on(async {
        let config =
            plugd::config::Config::for_tests(dirs.sockets.clone(), vec![dirs.resources.clone()]);
        let plugd = support::start_plugd(config).await.expect("plugd starts");
        let registry = plugd.registry.clone();
        support::eventually(Duration::from_secs(30), "every component ready", || {
            let ready = registry.snapshot().ready();
            async move { ready.then_some(()) }
        })
        .await;
        plugd
    });
    // Its own shutdown token: a generated `POST /v1.0/shutdown` must not stop the components.
    let router = plugd::api::http::router(
        plugd.registry.clone(),
        "testapp".into(),
        tokio_util::sync::CancellationToken::new(),
        None,
        plugd::limits::DEFAULT_MAX_BODY_SIZE,
    );
    let service = tower::util::MapRequestLayer::new(plugd::api::gate::collapse_slashes)
        .layer(tower_http::normalize_path::NormalizePathLayer::trim_trailing_slash().layer(router));

    // How many generated inputs formed a request, and how many of those succeeded: a generator
    // that never reaches the handlers would pass without testing anything.
    let formed = std::sync::atomic::AtomicUsize::new(0);
    let succeeded = std::sync::atomic::AtomicUsize::new(0);
    let runner = runner(1000);
    let cases = runner.config().cases as usize;
    check("HTTP requests", runner, http_input(), |input| {
        let Some(request) = input.request() else {
            return Ok(());
        };
        formed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let head = input.method == "HEAD";
        let (status, content_type, body) = rt.block_on(async {
            let response =
                tokio::time::timeout(Duration::from_secs(10), service.clone().oneshot(request))
                    .await
                    .map_err(|_| TestCaseError::fail("no answer within 10 s (hung)"))?
                    .map_err(|e| TestCaseError::fail(format!("service error: {e}")))?;
            let status = response.status();
            let content_type = response
                .headers()
                .get(http::header::CONTENT_TYPE)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
            let body = axum::body::to_bytes(response.into_body(), usize::MAX)
                .await
                .map_err(|e| TestCaseError::fail(format!("body: {e}")))?;
            Ok::<_, TestCaseError>((status, content_type, body))
        })?;
        if status.is_success() {
            succeeded.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if status == http::StatusCode::NO_CONTENT {
                prop_assert!(body.is_empty(), "204 with a body: {body:?}");
            }
            return Ok(());
        }
        prop_assert!(
            content_type
                .as_deref()
                .is_some_and(|c| c.starts_with("application/json")),
            "{status} without a JSON error: content type {content_type:?}, body {:?}",
            String::from_utf8_lossy(&body)
        );
        if head {
            return Ok(());
        }
        let json: serde_json::Value = serde_json::from_slice(&body).map_err(|e| {
            TestCaseError::fail(format!(
                "{status}: body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&body)
            ))
        })?;
        let code = json["errorCode"].as_str().unwrap_or_default();
        prop_assert!(
            code.starts_with("ERR_") || code.starts_with("DAPR_"),
            "{status}: no Dapr errorCode: {json}"
        );
        let message = json["message"].as_str().unwrap_or_default();
        // Bulk publish's partial failure lists the failed entries instead of a message.
        prop_assert!(
            !message.is_empty() || json["failedEntries"].is_array(),
            "{status}: no message: {json}"
        );
        Ok(())
    });

    let (formed, succeeded) = (formed.into_inner(), succeeded.into_inner());
    eprintln!("{cases} cases: {formed} formed a request, {succeeded} of them succeeded");
    if cases >= 100 {
        assert!(
            formed * 2 >= cases && succeeded > 0,
            "the generator hardly reaches plugd: {formed} requests of {cases} cases, {succeeded} successes"
        );
    }

    // Still serving after all of it.
    rt.block_on(async {
        let http = reqwest::Client::new();
        let r = http
            .post(plugd.http_url("/v1.0/state/statestore"))
            .body(r#"[{"key":"after-fuzz","value":1}]"#)
            .send()
            .await
            .expect("save");
        assert_eq!(r.status(), 204);
        plugd.stop().await;
    });
}
