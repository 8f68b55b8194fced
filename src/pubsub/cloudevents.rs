//! CloudEvents 1.0 envelopes: built as daprd builds them when an app publishes, read back when a
//! message is delivered to an app.
//!
//! Values are kept as raw JSON text (`RawValue`), so a published JSON payload reaches the
//! subscriber with its numbers exactly as written.

use std::{
    collections::{BTreeMap, HashMap},
    time::{Duration, SystemTime},
};

use base64::{Engine, engine::general_purpose::STANDARD as BASE64};
use serde_json::value::RawValue;

use crate::proto::runtime::TopicEventRequest;

/// An envelope: its attributes by name, each as raw JSON. Serialises with sorted keys.
pub type Envelope = BTreeMap<String, Box<RawValue>>;

pub const CLOUDEVENTS_JSON: &str = "application/cloudevents+json";
pub const DEFAULT_TYPE: &str = "com.dapr.event.sent";
pub const SPEC_VERSION: &str = "1.0";

/// The W3C trace context of the publish request (`""` when there is none).
#[derive(Debug, Clone, Default)]
pub struct Trace {
    pub traceparent: String,
    pub tracestate: String,
}

/// Why an envelope could not be built or read.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    #[error("the body is not a JSON CloudEvent object: {0}")]
    NotCloudEvent(String),
    #[error("cannot encode the CloudEvent: {0}")]
    Encode(String),
}

/// What an app's publish request gives the envelope.
pub struct Publish<'a> {
    pub pubsub: &'a str,
    pub topic: &'a str,
    /// The publisher's app id; the default `source`.
    pub app_id: &'a str,
    pub data: &'a [u8],
    /// The payload's content type; empty = `text/plain`.
    pub content_type: &'a str,
    /// Request metadata: `cloudevent.*` keys override envelope attributes.
    pub metadata: &'a HashMap<String, String>,
    pub trace: &'a Trace,
    /// Set when the message has a TTL the component does not enforce itself.
    pub ttl: Option<Duration>,
}

/// The media type of a content type, lower-cased, without parameters.
pub fn media_type(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

pub fn is_cloudevent(content_type: &str) -> bool {
    media_type(content_type) == CLOUDEVENTS_JSON
}

/// `application/json` and every `application/*+json`.
pub fn is_json(content_type: &str) -> bool {
    let m = media_type(content_type);
    m == "application/json" || (m.starts_with("application/") && m.ends_with("+json"))
}

/// Content types whose payload goes into `data_base64`.
pub fn is_binary(content_type: &str) -> bool {
    matches!(
        media_type(content_type).as_str(),
        "application/octet-stream" | "application/cloudevents+protobuf"
    )
}

fn is_text(content_type: &str) -> bool {
    let m = media_type(content_type);
    m.starts_with("text/") || m == "application/xml"
}

fn raw_string(s: &str) -> Result<Box<RawValue>, EnvelopeError> {
    serde_json::to_string(s)
        .and_then(RawValue::from_string)
        .map_err(|e| EnvelopeError::Encode(e.to_string()))
}

fn now_rfc3339(at: SystemTime) -> String {
    humantime::format_rfc3339_seconds(at).to_string()
}

/// A `cloudevent.<name>` override from the metadata, matched case-insensitively.
fn override_of<'m>(metadata: &'m HashMap<String, String>, name: &str) -> Option<&'m str> {
    const PREFIX: &str = "cloudevent.";
    metadata.iter().find_map(|(k, v)| {
        let prefix = k.get(..PREFIX.len())?;
        let rest = k.get(PREFIX.len()..)?;
        (prefix.eq_ignore_ascii_case(PREFIX) && rest.eq_ignore_ascii_case(name))
            .then_some(v.as_str())
    })
}

/// Builds the envelope bytes the component receives.
pub fn build(p: &Publish<'_>) -> Result<Vec<u8>, EnvelopeError> {
    let now = SystemTime::now();
    let mut env = if is_cloudevent(p.content_type) {
        from_app_cloudevent(p, now)?
    } else {
        new_envelope(p, now)?
    };
    if let Some(ttl) = p.ttl
        && !env.contains_key("expiration")
    {
        env.insert("expiration".into(), raw_string(&now_rfc3339(now + ttl))?);
    }
    serde_json::to_vec(&env).map_err(|e| EnvelopeError::Encode(e.to_string()))
}

fn new_envelope(p: &Publish<'_>, now: SystemTime) -> Result<Envelope, EnvelopeError> {
    let ov = |name| override_of(p.metadata, name).filter(|v| !v.is_empty());
    let mut env = Envelope::new();
    let id = ov("id")
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let source = ov("source").unwrap_or(if p.app_id.is_empty() {
        "Dapr"
    } else {
        p.app_id
    });
    let content_type = if p.content_type.is_empty() {
        "text/plain"
    } else {
        p.content_type
    };
    env.insert("id".into(), raw_string(&id)?);
    env.insert("source".into(), raw_string(source)?);
    env.insert(
        "type".into(),
        raw_string(ov("type").unwrap_or(DEFAULT_TYPE))?,
    );
    env.insert("specversion".into(), raw_string(SPEC_VERSION)?);
    env.insert("datacontenttype".into(), raw_string(content_type)?);
    if is_binary(content_type) {
        env.insert("data_base64".into(), raw_string(&BASE64.encode(p.data))?);
    } else if is_json(content_type) {
        let parsed = std::str::from_utf8(p.data)
            .ok()
            .and_then(|text| serde_json::from_str::<Box<RawValue>>(text).ok());
        let value = match parsed {
            Some(v) => v,
            // Not valid JSON: kept as a string, as daprd does.
            None => raw_string(&String::from_utf8_lossy(p.data))?,
        };
        env.insert("data".into(), value);
    } else {
        env.insert("data".into(), raw_string(&String::from_utf8_lossy(p.data))?);
    }
    env.insert("topic".into(), raw_string(p.topic)?);
    env.insert("pubsubname".into(), raw_string(p.pubsub)?);
    let traceparent = ov("traceparent")
        .or_else(|| ov("traceid"))
        .unwrap_or(&p.trace.traceparent);
    env.insert("traceid".into(), raw_string(traceparent)?);
    env.insert("traceparent".into(), raw_string(traceparent)?);
    env.insert(
        "tracestate".into(),
        raw_string(ov("tracestate").unwrap_or(&p.trace.tracestate))?,
    );
    env.insert("time".into(), raw_string(&now_rfc3339(now))?);
    if let Some(subject) = ov("subject") {
        env.insert("subject".into(), raw_string(subject)?);
    }
    Ok(env)
}

/// An app-supplied CloudEvent is completed, not wrapped again.
fn from_app_cloudevent(p: &Publish<'_>, now: SystemTime) -> Result<Envelope, EnvelopeError> {
    let mut env: Envelope =
        serde_json::from_slice(p.data).map_err(|e| EnvelopeError::NotCloudEvent(e.to_string()))?;
    let missing = |env: &Envelope, key: &str| {
        env.get(key)
            .is_none_or(|v| v.get() == "null" || v.get() == "\"\"")
    };
    if missing(&env, "id") {
        env.insert("id".into(), raw_string(&uuid::Uuid::new_v4().to_string())?);
    }
    if missing(&env, "source") {
        let source = if p.app_id.is_empty() {
            "Dapr"
        } else {
            p.app_id
        };
        env.insert("source".into(), raw_string(source)?);
    }
    if missing(&env, "type") {
        env.insert("type".into(), raw_string(DEFAULT_TYPE)?);
    }
    if missing(&env, "specversion") {
        env.insert("specversion".into(), raw_string(SPEC_VERSION)?);
    }
    env.insert("topic".into(), raw_string(p.topic)?);
    env.insert("pubsubname".into(), raw_string(p.pubsub)?);
    if !env.contains_key("traceid") {
        env.insert("traceid".into(), raw_string(&p.trace.traceparent)?);
        env.insert("traceparent".into(), raw_string(&p.trace.traceparent)?);
    }
    if !env.contains_key("tracestate") {
        env.insert("tracestate".into(), raw_string(&p.trace.tracestate)?);
    }
    if missing(&env, "time") {
        env.insert("time".into(), raw_string(&now_rfc3339(now))?);
    }
    Ok(env)
}

/// A delivered message, read as a CloudEvent.
#[derive(Debug)]
pub struct Event {
    pub envelope: Envelope,
    /// The bytes sent to HTTP apps.
    pub bytes: Vec<u8>,
}

impl Event {
    /// Reads a message from a component. `raw_payload` subscriptions wrap the bytes in a
    /// synthesised envelope.
    pub fn read(
        data: &[u8],
        raw_payload: bool,
        topic: &str,
        pubsub: &str,
        metadata: &HashMap<String, String>,
    ) -> Result<Self, EnvelopeError> {
        let envelope = if raw_payload {
            let mut env = Envelope::new();
            env.insert("id".into(), raw_string(&uuid::Uuid::new_v4().to_string())?);
            env.insert("specversion".into(), raw_string(SPEC_VERSION)?);
            env.insert(
                "datacontenttype".into(),
                raw_string("application/octet-stream")?,
            );
            env.insert("source".into(), raw_string("Dapr")?);
            env.insert("type".into(), raw_string(DEFAULT_TYPE)?);
            env.insert("topic".into(), raw_string(topic)?);
            env.insert("pubsubname".into(), raw_string(pubsub)?);
            env.insert("data_base64".into(), raw_string(&BASE64.encode(data))?);
            for key in ["traceparent", "tracestate"] {
                if let Some(v) = metadata.get(key) {
                    env.insert(key.into(), raw_string(v)?);
                }
            }
            env
        } else {
            let env: Envelope = serde_json::from_slice(data)
                .map_err(|e| EnvelopeError::NotCloudEvent(e.to_string()))?;
            env
        };
        let bytes = if raw_payload {
            serde_json::to_vec(&envelope).map_err(|e| EnvelopeError::Encode(e.to_string()))?
        } else {
            data.to_vec()
        };
        Ok(Self { envelope, bytes })
    }

    /// A string attribute; `None` when absent or not a string.
    pub fn str(&self, key: &str) -> Option<String> {
        self.envelope
            .get(key)
            .and_then(|v| serde_json::from_str::<String>(v.get()).ok())
    }

    /// Whether the event carries an `expiration` that has passed.
    pub fn expired(&self, now: SystemTime) -> bool {
        self.str("expiration")
            .and_then(|e| humantime::parse_rfc3339_weak(&e).ok())
            .is_some_and(|at| at < now)
    }

    /// The `data` attribute as JSON (for routing rules), if present and valid.
    pub fn data_json(&self) -> Option<serde_json::Value> {
        self.envelope
            .get("data")
            .and_then(|v| serde_json::from_str(v.get()).ok())
    }

    /// The request an AppCallback `OnTopicEvent` receives.
    pub fn to_topic_event(
        &self,
        topic: &str,
        pubsub: &str,
        path: &str,
    ) -> Result<TopicEventRequest, String> {
        let content_type = self.str("datacontenttype").unwrap_or_default();
        let data = if let Some(b64) = self.str("data_base64") {
            BASE64
                .decode(b64.as_bytes())
                .map_err(|e| format!("data_base64 is not valid base64: {e}"))?
        } else if let Some(raw) = self.envelope.get("data") {
            match serde_json::from_str::<String>(raw.get()) {
                Ok(text) if is_text(&content_type) || !is_json(&content_type) => text.into_bytes(),
                _ if is_json(&content_type) || is_cloudevent(&content_type) => {
                    raw.get().as_bytes().to_vec()
                }
                _ => Vec::new(),
            }
        } else {
            Vec::new()
        };
        let mut fields = BTreeMap::new();
        for (k, v) in &self.envelope {
            if matches!(
                k.as_str(),
                "id" | "source"
                    | "datacontenttype"
                    | "type"
                    | "specversion"
                    | "data"
                    | "data_base64"
            ) {
                continue;
            }
            if let Ok(json) = serde_json::from_str::<serde_json::Value>(v.get()) {
                fields.insert(k.clone(), json_to_prost(json));
            }
        }
        Ok(TopicEventRequest {
            id: self.str("id").unwrap_or_default(),
            source: self.str("source").unwrap_or_default(),
            r#type: self.str("type").unwrap_or_default(),
            spec_version: self.str("specversion").unwrap_or_default(),
            data_content_type: content_type,
            data,
            topic: topic.to_string(),
            pubsub_name: pubsub.to_string(),
            path: path.to_string(),
            extensions: Some(prost_types::Struct { fields }),
        })
    }
}

fn json_to_prost(v: serde_json::Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match v {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        serde_json::Value::String(s) => Kind::StringValue(s),
        serde_json::Value::Array(a) => Kind::ListValue(prost_types::ListValue {
            values: a.into_iter().map(json_to_prost).collect(),
        }),
        serde_json::Value::Object(o) => Kind::StructValue(prost_types::Struct {
            fields: o.into_iter().map(|(k, v)| (k, json_to_prost(v))).collect(),
        }),
    };
    prost_types::Value { kind: Some(kind) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publish<'a>(
        data: &'a [u8],
        content_type: &'a str,
        metadata: &'a HashMap<String, String>,
        trace: &'a Trace,
    ) -> Publish<'a> {
        Publish {
            pubsub: "pubsub",
            topic: "orders",
            app_id: "app1",
            data,
            content_type,
            metadata,
            trace,
            ttl: None,
        }
    }

    fn json(bytes: &[u8]) -> serde_json::Value {
        serde_json::from_slice(bytes).expect("envelope is JSON")
    }

    #[test]
    fn json_payload_is_embedded_with_exact_numbers() {
        let md = HashMap::new();
        let trace = Trace::default();
        let body = br#"{"n": 12345678901234567890, "s": "x"}"#;
        let out = build(&publish(body, "application/json", &md, &trace)).expect("envelope");
        let text = String::from_utf8(out.clone()).expect("utf8");
        assert!(text.contains("12345678901234567890"), "{text}");
        let v = json(&out);
        assert_eq!(v["source"], "app1");
        assert_eq!(v["type"], DEFAULT_TYPE);
        assert_eq!(v["specversion"], "1.0");
        assert_eq!(v["datacontenttype"], "application/json");
        assert_eq!(v["topic"], "orders");
        assert_eq!(v["pubsubname"], "pubsub");
        assert_eq!(v["traceid"], "");
        assert_eq!(v["data"]["s"], "x");
        assert_eq!(v["id"].as_str().map(str::len), Some(36));
        assert!(v.get("time").is_some());
    }

    #[test]
    fn text_binary_and_invalid_json() {
        let md = HashMap::new();
        let trace = Trace::default();
        let v = json(&build(&publish(b"hello", "", &md, &trace)).expect("text"));
        assert_eq!(v["data"], "hello");
        assert_eq!(v["datacontenttype"], "text/plain");
        let v = json(
            &build(&publish(
                &[0, 1, 2],
                "application/octet-stream",
                &md,
                &trace,
            ))
            .expect("bin"),
        );
        assert_eq!(v["data_base64"], "AAEC");
        assert!(v.get("data").is_none());
        let v = json(&build(&publish(b"{nope", "application/json", &md, &trace)).expect("bad"));
        assert_eq!(v["data"], "{nope");
    }

    #[test]
    fn overrides_and_trace() {
        let md = HashMap::from([
            ("CloudEvent.Id".to_string(), "my-id".to_string()),
            ("cloudevent.type".to_string(), "t".to_string()),
            ("cloudevent.subject".to_string(), "subj".to_string()),
        ]);
        let trace = Trace {
            traceparent: "00-abc-def-01".into(),
            tracestate: "k=v".into(),
        };
        let v = json(&build(&publish(b"x", "text/plain", &md, &trace)).expect("envelope"));
        assert_eq!(v["id"], "my-id");
        assert_eq!(v["type"], "t");
        assert_eq!(v["subject"], "subj");
        assert_eq!(v["traceparent"], "00-abc-def-01");
        assert_eq!(v["traceid"], "00-abc-def-01");
        assert_eq!(v["tracestate"], "k=v");
    }

    #[test]
    fn app_cloudevent_is_completed_not_wrapped() {
        let md = HashMap::new();
        let trace = Trace::default();
        let body = br#"{"id":"e1","source":"mine","specversion":"1.0","type":"my.type","data":{"a":1},"traceid":"keep"}"#;
        let v = json(&build(&publish(body, CLOUDEVENTS_JSON, &md, &trace)).expect("ce"));
        assert_eq!(v["id"], "e1");
        assert_eq!(v["source"], "mine");
        assert_eq!(v["type"], "my.type");
        assert_eq!(v["data"]["a"], 1);
        assert_eq!(v["traceid"], "keep");
        assert_eq!(v["topic"], "orders");
        assert_eq!(v["pubsubname"], "pubsub");
        assert!(v.get("time").is_some());
        assert!(build(&publish(b"[1]", CLOUDEVENTS_JSON, &md, &trace)).is_err());
    }

    #[test]
    fn ttl_sets_expiration_and_delivery_sees_it() {
        let md = HashMap::new();
        let trace = Trace::default();
        let mut p = publish(b"x", "", &md, &trace);
        p.ttl = Some(Duration::from_secs(60));
        let out = build(&p).expect("envelope");
        let ev = Event::read(&out, false, "orders", "pubsub", &HashMap::new()).expect("read");
        assert!(!ev.expired(SystemTime::now()));
        assert!(ev.expired(SystemTime::now() + Duration::from_secs(120)));
    }

    #[test]
    fn topic_event_request_from_envelope() {
        let md = HashMap::new();
        let trace = Trace::default();
        let out = build(&publish(
            br#"{"b":2,"a":1}"#,
            "application/json",
            &md,
            &trace,
        ))
        .expect("envelope");
        let ev = Event::read(&out, false, "orders", "pubsub", &HashMap::new()).expect("read");
        let req = ev
            .to_topic_event("orders", "pubsub", "/r")
            .expect("request");
        assert_eq!(req.data_content_type, "application/json");
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&req.data).expect("json"),
            serde_json::json!({"a": 1, "b": 2})
        );
        assert_eq!(req.path, "/r");
        let ext = req.extensions.expect("extensions");
        assert!(ext.fields.contains_key("topic"));
        assert!(ext.fields.contains_key("traceparent"));
        assert!(!ext.fields.contains_key("id"));
        assert!(!ext.fields.contains_key("data"));

        let text = build(&publish(b"hi", "text/plain", &md, &trace)).expect("text");
        let ev = Event::read(&text, false, "orders", "pubsub", &HashMap::new()).expect("read");
        assert_eq!(ev.to_topic_event("o", "p", "").expect("req").data, b"hi");

        let raw = Event::read(b"\x00\x01", true, "orders", "pubsub", &HashMap::new())
            .expect("raw payload");
        let req = raw.to_topic_event("orders", "pubsub", "").expect("req");
        assert_eq!(req.data, [0, 1]);
        assert_eq!(req.data_content_type, "application/octet-stream");
    }
}
