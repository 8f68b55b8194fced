//! Topic subscriptions: declared by the app (gRPC `ListTopicSubscriptions`, HTTP
//! `GET /dapr/subscribe`) or in `Subscription` resources (v1alpha1, v2alpha1), and the routing
//! rules that pick the path an event is delivered to.
//!
//! # Routing rules
//!
//! Dapr writes rule matches in CEL. plugd evaluates this subset, and refuses anything else
//! with an error naming the expression:
//!
//! - `event.<attribute> == "text"`: a top-level CloudEvent attribute (`type`, `source`,
//!   `subject`, `id`, `topic`, any extension) equals a string;
//! - `event.data.<field>[.<field>…] == <literal>`: a field of the JSON `data` equals a string,
//!   number, `true`, `false` or `null`;
//! - `!=` in place of `==`;
//! - several such comparisons joined by `&&`;
//! - string literals in double or single quotes (`\"` and `\\` escapes).
//!
//! An empty match always matches. Rules are tried in order; the first match wins.

use std::{collections::HashMap, path::PathBuf};

use serde::Deserialize;
use serde_yaml::Value;

use super::cloudevents::Event;
use crate::{
    config::manifest::{Problem, SourceDocument, check_name, scalar_to_string},
    proto::runtime as rt,
};

/// Where a subscription came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The app's answer to `ListTopicSubscriptions` / `GET /dapr/subscribe`.
    App,
    /// A `Subscription` resource.
    Declarative { file: PathBuf, name: String },
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::App => f.write_str("the app"),
            Self::Declarative { file, name } => {
                write!(f, "Subscription {name} in {}", file.display())
            }
        }
    }
}

/// One topic subscription.
#[derive(Debug, Clone, PartialEq)]
pub struct Subscription {
    pub pubsub: String,
    pub topic: String,
    /// Sent to the component with the topic (for example `rawPayload`).
    pub metadata: HashMap<String, String>,
    pub rules: Vec<Rule>,
    pub dead_letter_topic: Option<String>,
    /// The app asked for bulk delivery (not supported: events are delivered one by one).
    pub bulk: bool,
    pub origin: Origin,
}

impl Subscription {
    /// `DECLARATIVE` or `PROGRAMMATIC`, as the metadata API names them.
    pub fn kind_name(&self) -> &'static str {
        match self.origin {
            Origin::App => "PROGRAMMATIC",
            Origin::Declarative { .. } => "DECLARATIVE",
        }
    }

    /// The rules as the metadata API shows them: `(match, path)`.
    pub fn rule_list(&self) -> Vec<(String, String)> {
        self.rules
            .iter()
            .map(|r| {
                (
                    r.matcher
                        .as_ref()
                        .map(|m| m.source.clone())
                        .unwrap_or_default(),
                    r.path.clone(),
                )
            })
            .collect()
    }

    /// Whether the component sends raw payloads (no CloudEvent envelope).
    pub fn raw_payload(&self) -> bool {
        self.metadata
            .get("rawPayload")
            .is_some_and(|v| v.trim_matches('"').eq_ignore_ascii_case("true"))
    }

    /// The path of the first rule the event matches; `None` = no rule matches (skipped).
    pub fn route(&self, event: &Event) -> Option<&str> {
        self.rules
            .iter()
            .find(|r| r.matcher.as_ref().is_none_or(|m| m.matches(event)))
            .map(|r| r.path.as_str())
    }
}

/// A routing rule: a match (`None` = always) and the path it delivers to.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub matcher: Option<Matcher>,
    pub path: String,
}

/// A parsed rule match: every comparison must hold.
#[derive(Debug, Clone, PartialEq)]
pub struct Matcher {
    pub source: String,
    comparisons: Vec<Comparison>,
}

#[derive(Debug, Clone, PartialEq)]
struct Comparison {
    field: Field,
    equal: bool,
    value: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq)]
enum Field {
    Attribute(String),
    Data(Vec<String>),
}

impl Matcher {
    /// Parses the supported subset (see the module docs).
    pub fn parse(source: &str) -> Result<Self, String> {
        let mut comparisons = Vec::new();
        for clause in split_and(source)? {
            comparisons.push(parse_comparison(clause.trim(), source)?);
        }
        Ok(Self {
            source: source.to_string(),
            comparisons,
        })
    }

    pub fn matches(&self, event: &Event) -> bool {
        let data = if self
            .comparisons
            .iter()
            .any(|c| matches!(c.field, Field::Data(_)))
        {
            event.data_json()
        } else {
            None
        };
        self.comparisons.iter().all(|c| {
            let actual = match &c.field {
                Field::Attribute(name) => event
                    .envelope
                    .get(name)
                    .and_then(|v| serde_json::from_str::<serde_json::Value>(v.get()).ok()),
                Field::Data(path) => path
                    .iter()
                    .try_fold(data.as_ref(), |v, key| v.map(|v| v.get(key)))
                    .flatten()
                    .cloned(),
            };
            let same = actual.as_ref().is_some_and(|a| json_equal(a, &c.value));
            same == c.equal
        })
    }
}

fn json_equal(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

/// Splits on `&&` outside string literals.
fn split_and(source: &str) -> Result<Vec<&str>, String> {
    let mut parts = Vec::new();
    let mut quote: Option<char> = None;
    let mut escaped = false;
    let mut start = 0;
    let mut chars = source.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match quote {
            Some(q) => {
                if escaped {
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if c == q {
                    quote = None;
                }
            }
            None => match c {
                '"' | '\'' => quote = Some(c),
                '|' => return Err(unsupported(source, "`||` is not supported")),
                '&' if chars.peek().is_some_and(|(_, n)| *n == '&') => {
                    parts.push(&source[start..i]);
                    chars.next();
                    start = i + 2;
                }
                _ => {}
            },
        }
    }
    if quote.is_some() {
        return Err(unsupported(source, "unterminated string literal"));
    }
    parts.push(&source[start..]);
    Ok(parts)
}

fn unsupported(source: &str, why: &str) -> String {
    format!(
        "unsupported match expression {source:?}: {why} (plugd supports event.<attribute> == \"text\", event.data.<field> == <literal>, != and &&)"
    )
}

fn parse_comparison(clause: &str, source: &str) -> Result<Comparison, String> {
    let (lhs, rhs, equal) = if let Some((l, r)) = clause.split_once("==") {
        (l, r, true)
    } else if let Some((l, r)) = clause.split_once("!=") {
        (l, r, false)
    } else {
        return Err(unsupported(source, "expected a == or != comparison"));
    };
    let path = lhs.trim();
    let Some(rest) = path.strip_prefix("event.") else {
        return Err(unsupported(
            source,
            "the left side must start with `event.`",
        ));
    };
    let parts: Vec<&str> = rest.split('.').collect();
    if parts
        .iter()
        .any(|p| p.is_empty() || !p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
    {
        return Err(unsupported(source, "bad field name"));
    }
    let field = match parts.as_slice() {
        ["data", fields @ ..] if !fields.is_empty() => {
            Field::Data(fields.iter().map(|s| s.to_string()).collect())
        }
        [attribute] => Field::Attribute(attribute.to_string()),
        _ => {
            return Err(unsupported(
                source,
                "only event.<attribute> and event.data.<field…>",
            ));
        }
    };
    let value = parse_literal(rhs.trim()).ok_or_else(|| unsupported(source, "bad literal"))?;
    Ok(Comparison {
        field,
        equal,
        value,
    })
}

fn parse_literal(text: &str) -> Option<serde_json::Value> {
    if let Some(inner) = text
        .strip_prefix('\'')
        .and_then(|t| t.strip_suffix('\''))
        .filter(|_| text.len() >= 2)
    {
        let mut out = String::new();
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => out.push(chars.next()?),
                '\'' => return None,
                c => out.push(c),
            }
        }
        return Some(serde_json::Value::String(out));
    }
    if text.starts_with('"') {
        return serde_json::from_str::<String>(text)
            .ok()
            .map(serde_json::Value::String);
    }
    match serde_json::from_str::<serde_json::Value>(text).ok()? {
        v @ (serde_json::Value::Number(_)
        | serde_json::Value::Bool(_)
        | serde_json::Value::Null) => Some(v),
        _ => None,
    }
}

fn rule(matcher: &str, path: &str) -> Result<Rule, String> {
    Ok(Rule {
        matcher: if matcher.trim().is_empty() {
            None
        } else {
            Some(Matcher::parse(matcher)?)
        },
        path: path.to_string(),
    })
}

/// From a gRPC app's `TopicSubscription`: the rules, then `default`; no rule at all → one
/// always-rule with path `""` (what the Python `App` expects).
pub fn from_grpc(s: rt::TopicSubscription) -> Result<Subscription, String> {
    let mut rules = Vec::new();
    if let Some(routes) = &s.routes {
        for r in &routes.rules {
            rules.push(rule(&r.r#match, &r.path)?);
        }
        if !routes.default.is_empty() {
            rules.push(rule("", &routes.default)?);
        }
    }
    if rules.is_empty() {
        rules.push(rule("", "")?);
    }
    Ok(Subscription {
        pubsub: s.pubsub_name,
        topic: s.topic,
        metadata: s.metadata,
        rules,
        dead_letter_topic: Some(s.dead_letter_topic).filter(|t| !t.is_empty()),
        bulk: s.bulk_subscribe.is_some_and(|b| b.enabled),
        origin: Origin::App,
    })
}

/// One item of an HTTP app's `GET /dapr/subscribe` answer.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpSubscription {
    #[serde(alias = "pubsubName", rename = "pubsubname")]
    pub pubsubname: String,
    pub topic: String,
    #[serde(default)]
    pub route: Option<String>,
    #[serde(default)]
    pub routes: Option<HttpRoutes>,
    #[serde(default, deserialize_with = "string_map")]
    pub metadata: HashMap<String, String>,
    #[serde(default)]
    pub dead_letter_topic: Option<String>,
    #[serde(default)]
    pub bulk_subscribe: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize, Default)]
pub struct HttpRoutes {
    #[serde(default)]
    pub rules: Vec<HttpRule>,
    #[serde(default)]
    pub default: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct HttpRule {
    #[serde(default, rename = "match")]
    pub matcher: String,
    pub path: String,
}

/// Metadata values of any JSON type become strings (Node sends JSON-stringified values).
fn string_map<'de, D: serde::Deserializer<'de>>(d: D) -> Result<HashMap<String, String>, D::Error> {
    let raw: Option<HashMap<String, serde_json::Value>> = Option::deserialize(d)?;
    Ok(raw
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| {
            let s = match v {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            };
            (k, s)
        })
        .collect())
}

/// From an HTTP app's item: `routes.rules`, then `routes.default` (else `route`); no rule at
/// all → `Ok(None)` (discarded, as daprd does).
pub fn from_http(s: HttpSubscription) -> Result<Option<Subscription>, String> {
    let mut rules = Vec::new();
    let routes = s.routes.unwrap_or_default();
    for r in &routes.rules {
        rules.push(rule(&r.matcher, &r.path)?);
    }
    if let Some(default) = routes.default.or(s.route).filter(|d| !d.is_empty()) {
        rules.push(rule("", &default)?);
    }
    if rules.is_empty() {
        return Ok(None);
    }
    let bulk = s
        .bulk_subscribe
        .as_ref()
        .and_then(|b| b.get("enabled"))
        .and_then(serde_json::Value::as_bool)
        .unwrap_or(false);
    Ok(Some(Subscription {
        pubsub: s.pubsubname,
        topic: s.topic,
        metadata: s.metadata,
        rules,
        dead_letter_topic: s.dead_letter_topic.filter(|t| !t.is_empty()),
        bulk,
        origin: Origin::App,
    }))
}

/// The API versions of `Subscription` resources plugd reads.
pub const SUBSCRIPTION_API: &str = "dapr.io/v1alpha1";
pub const SUBSCRIPTION_API_V2: &str = "dapr.io/v2alpha1";

/// Reads every `Subscription` document that applies to `app_id` (by `scopes`). Reports every
/// problem together, naming file, subscription and field.
pub fn declarative(
    docs: &[SourceDocument],
    app_id: &str,
) -> Result<Vec<Subscription>, Vec<Problem>> {
    let mut subs = Vec::new();
    let mut problems = Vec::new();
    for doc in docs {
        if doc.value.get("kind").and_then(Value::as_str) != Some("Subscription") {
            continue;
        }
        let name = doc
            .value
            .get("metadata")
            .and_then(|m| m.get("name"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let label = if name.is_empty() {
            format!("#{} (unnamed)", doc.index)
        } else {
            name.clone()
        };
        let mut problem = |field: &str, message: String| {
            problems.push(Problem {
                file: doc.file.clone(),
                component: label.clone(),
                field: field.to_string(),
                message,
            })
        };
        let api = doc
            .value
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let v2 = match api {
            SUBSCRIPTION_API => false,
            SUBSCRIPTION_API_V2 => true,
            other => {
                problem(
                    "apiVersion",
                    format!(
                        "must be {SUBSCRIPTION_API:?} or {SUBSCRIPTION_API_V2:?}, found {other:?}"
                    ),
                );
                continue;
            }
        };
        if let Err(e) = check_name(&name) {
            problem("metadata.name", e);
        }
        let scopes: Vec<String> = doc
            .value
            .get("scopes")
            .and_then(Value::as_sequence)
            .map(|s| s.iter().map(scalar_to_string).collect())
            .unwrap_or_default();
        let Some(spec) = doc.value.get("spec").filter(|s| s.is_mapping()) else {
            problem("spec", "is required".into());
            continue;
        };
        let text = |key: &str| {
            spec.get(key)
                .map(scalar_to_string)
                .filter(|s| !s.is_empty())
        };
        let Some(pubsub) = text("pubsubname") else {
            problem("spec.pubsubname", "is required".into());
            continue;
        };
        let Some(topic) = text("topic") else {
            problem("spec.topic", "is required".into());
            continue;
        };
        let mut rules = Vec::new();
        let mut bad = false;
        if v2 {
            let routes = spec.get("routes");
            if let Some(list) = routes.and_then(|r| r.get("rules")) {
                let Some(list) = list.as_sequence() else {
                    problem("spec.routes.rules", "must be a list".into());
                    continue;
                };
                for (i, r) in list.iter().enumerate() {
                    let matcher = r.get("match").map(scalar_to_string).unwrap_or_default();
                    let path = r.get("path").map(scalar_to_string).unwrap_or_default();
                    if path.is_empty() {
                        problem(
                            &format!("spec.routes.rules[{i}].path"),
                            "is required".into(),
                        );
                        bad = true;
                        continue;
                    }
                    match rule(&matcher, &path) {
                        Ok(r) => rules.push(r),
                        Err(e) => {
                            problem(&format!("spec.routes.rules[{i}].match"), e);
                            bad = true;
                        }
                    }
                }
            }
            if let Some(default) = routes
                .and_then(|r| r.get("default"))
                .map(scalar_to_string)
                .filter(|d| !d.is_empty())
            {
                rules.push(Rule {
                    matcher: None,
                    path: default,
                });
            }
        } else if let Some(route) = text("route") {
            rules.push(Rule {
                matcher: None,
                path: route,
            });
        }
        if bad {
            continue;
        }
        if rules.is_empty() {
            let field = if v2 { "spec.routes" } else { "spec.route" };
            problem(
                field,
                "no route: give a route (v1alpha1) or routes.default / routes.rules (v2alpha1)"
                    .into(),
            );
            continue;
        }
        let metadata = match spec.get("metadata") {
            None | Some(Value::Null) => HashMap::new(),
            Some(Value::Mapping(m)) => m
                .iter()
                .map(|(k, v)| (scalar_to_string(k), scalar_to_string(v)))
                .collect(),
            Some(_) => {
                problem("spec.metadata", "must be a map of strings".into());
                continue;
            }
        };
        let bulk = spec
            .get("bulkSubscribe")
            .and_then(|b| b.get("enabled"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
        if !scopes.is_empty() && !scopes.iter().any(|s| s == app_id) {
            tracing::info!(subscription = %label, file = %doc.file.display(),
                "subscription skipped: not in scopes {scopes:?} for app id {app_id:?}");
            continue;
        }
        subs.push(Subscription {
            pubsub,
            topic,
            metadata,
            rules,
            dead_letter_topic: text("deadLetterTopic"),
            bulk,
            origin: Origin::Declarative {
                file: doc.file.clone(),
                name,
            },
        });
    }
    if problems.is_empty() {
        Ok(subs)
    } else {
        Err(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::manifest::parse_documents;

    fn event(json: &str) -> Event {
        Event::read(json.as_bytes(), false, "t", "p", &HashMap::new()).expect("event")
    }

    #[test]
    fn matcher_subset() {
        let ev = event(
            r#"{"id":"1","type":"order.created","data":{"kind":"book","n":3,"a":{"b":true}}}"#,
        );
        let yes = [
            r#"event.type == "order.created""#,
            r#"event.type == 'order.created' && event.data.kind == "book""#,
            r#"event.data.n == 3"#,
            r#"event.data.a.b == true"#,
            r#"event.type != "other""#,
            r#"event.data.missing != "x""#,
        ];
        for m in yes {
            assert!(Matcher::parse(m).expect(m).matches(&ev), "{m}");
        }
        let no = [
            r#"event.type == "order.deleted""#,
            r#"event.type == "order.created" && event.data.kind == "car""#,
            r#"event.data.missing == "x""#,
        ];
        for m in no {
            assert!(!Matcher::parse(m).expect(m).matches(&ev), "{m}");
        }
        for bad in [
            r#"event.type == "a" || event.type == "b""#,
            r#"has(event.data.x)"#,
            r#"event.type.startsWith("a")"#,
            r#"type == "a""#,
            r#"event.type == "unterminated"#,
            r#"event.type == [1]"#,
        ] {
            let e = Matcher::parse(bad).expect_err(bad);
            assert!(e.contains("unsupported match expression"), "{e}");
        }
        // `&&` inside a literal is not a separator.
        let m = Matcher::parse(r#"event.type == "a && b""#).expect("literal");
        assert!(m.matches(&event(r#"{"type":"a && b"}"#)));
    }

    #[test]
    fn grpc_routes_follow_dapr() {
        let plain = rt::TopicSubscription {
            pubsub_name: "p".into(),
            topic: "t".into(),
            routes: Some(rt::TopicRoutes::default()),
            ..Default::default()
        };
        let s = from_grpc(plain).expect("plain");
        assert_eq!(s.route(&event("{}")), Some(""));

        let ruled = rt::TopicSubscription {
            pubsub_name: "p".into(),
            topic: "t".into(),
            routes: Some(rt::TopicRoutes {
                rules: vec![rt::TopicRule {
                    r#match: r#"event.type == "a""#.into(),
                    path: "handle_a".into(),
                }],
                default: String::new(),
            }),
            dead_letter_topic: "dlq".into(),
            ..Default::default()
        };
        let s = from_grpc(ruled).expect("ruled");
        assert_eq!(s.route(&event(r#"{"type":"a"}"#)), Some("handle_a"));
        assert_eq!(s.route(&event(r#"{"type":"b"}"#)), None);
        assert_eq!(s.dead_letter_topic.as_deref(), Some("dlq"));
    }

    #[test]
    fn http_items_follow_dapr() {
        let items: Vec<HttpSubscription> = serde_json::from_str(
            r#"[
              {"pubsubname":"p","topic":"a","route":"/a","metadata":{"rawPayload":"\"true\""}},
              {"pubsubname":"p","topic":"b","routes":{"rules":[{"match":"event.type == \"x\"","path":"/x"}],"default":"/b"},"deadLetterTopic":"dead"},
              {"pubsubname":"p","topic":"c"}
            ]"#,
        )
        .expect("items");
        let subs: Vec<Option<Subscription>> = items
            .into_iter()
            .map(|i| from_http(i).expect("valid"))
            .collect();
        let a = subs[0].as_ref().expect("a");
        assert_eq!(a.route(&event("{}")), Some("/a"));
        assert!(a.raw_payload(), "Node JSON-stringifies metadata values");
        let b = subs[1].as_ref().expect("b");
        assert_eq!(b.route(&event(r#"{"type":"x"}"#)), Some("/x"));
        assert_eq!(b.route(&event(r#"{"type":"y"}"#)), Some("/b"));
        assert!(subs[2].is_none(), "no route at all: discarded");
    }

    fn docs(text: &str) -> Vec<SourceDocument> {
        let mut docs = Vec::new();
        let mut problems = Vec::new();
        parse_documents(
            std::path::Path::new("subs.yaml"),
            text,
            &mut docs,
            &mut problems,
        );
        assert!(problems.is_empty(), "{problems:?}");
        docs
    }

    #[test]
    fn declarative_v1_and_v2_with_scopes() {
        let d = docs(
            r#"
apiVersion: dapr.io/v1alpha1
kind: Subscription
metadata: {name: s1}
spec: {pubsubname: p, topic: orders, route: /orders, deadLetterTopic: dead}
scopes: [app1]
---
apiVersion: dapr.io/v2alpha1
kind: Subscription
metadata: {name: s2}
spec:
  pubsubname: p
  topic: items
  routes:
    rules:
      - match: event.data.kind == "book"
        path: /books
    default: /items
  metadata: {rawPayload: "true"}
---
apiVersion: dapr.io/v1alpha1
kind: Subscription
metadata: {name: other}
spec: {pubsubname: p, topic: x, route: /x}
scopes: [someone-else]
---
apiVersion: dapr.io/v1alpha1
kind: Component
metadata: {name: c}
spec: {type: state.x, version: v1}
"#,
        );
        let subs = declarative(&d, "app1").expect("valid");
        assert_eq!(subs.len(), 2);
        assert_eq!(subs[0].topic, "orders");
        assert_eq!(subs[0].dead_letter_topic.as_deref(), Some("dead"));
        assert_eq!(
            subs[1].route(&event(r#"{"data":{"kind":"book"}}"#)),
            Some("/books")
        );
        assert_eq!(
            subs[1].route(&event(r#"{"data":{"kind":"pen"}}"#)),
            Some("/items")
        );
        assert!(subs[1].raw_payload());
    }

    #[test]
    fn declarative_problems_are_all_reported() {
        let d = docs(
            r#"
apiVersion: dapr.io/v1alpha1
kind: Subscription
metadata: {name: a}
spec: {topic: t, route: /r}
---
apiVersion: dapr.io/v2alpha1
kind: Subscription
metadata: {name: b}
spec:
  pubsubname: p
  topic: t
  routes:
    rules:
      - match: event.type == "x" || event.type == "y"
        path: /r
---
apiVersion: dapr.io/v9
kind: Subscription
metadata: {name: c}
spec: {pubsubname: p, topic: t, route: /r}
"#,
        );
        let problems = declarative(&d, "app1").expect_err("invalid");
        let text: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        assert_eq!(problems.len(), 3, "{text:#?}");
        assert!(text[0].contains("spec.pubsubname"), "{}", text[0]);
        assert!(
            text[1].contains("spec.routes.rules[0].match"),
            "{}",
            text[1]
        );
        assert!(text[2].contains("apiVersion"), "{}", text[2]);
    }
}
