//! Dapr's JSON log schema: one object per line with `time` (RFC 3339), `level` (`debug`, `info`,
//! `warning`, `error`), `type` (`log`), `msg`, `scope` (the dotted target, e.g.
//! `plugd.component`), `app_id`, `instance` (the host name) and `ver` (the plugd version), plus
//! the fields of the event and of the spans it happened in (`component`, `socket`,
//! `trace_id`, …) as further keys.

use std::fmt;

use serde_json::{Map, Value};
use tracing::{Event, Level, Subscriber, field::Field};
use tracing_subscriber::{
    fmt::{
        FmtContext, FormatEvent, FormattedFields,
        format::{JsonFields, Writer},
    },
    registry::LookupSpan,
};

/// The keys of the schema; event and span fields never replace them.
const SCHEMA_KEYS: [&str; 8] = [
    "time", "level", "type", "msg", "scope", "app_id", "instance", "ver",
];

/// Formats events in Dapr's schema (use with [`JsonFields`] as the field formatter, so span
/// fields are stored as JSON).
#[derive(Debug, Clone)]
pub struct DaprJson {
    app_id: String,
    instance: String,
}

impl DaprJson {
    pub fn new(app_id: &str) -> Self {
        Self {
            app_id: app_id.to_string(),
            instance: gethostname::gethostname().to_string_lossy().into_owned(),
        }
    }
}

/// The level as Dapr (logrus) writes it.
pub fn level_name(level: &Level) -> &'static str {
    match *level {
        Level::ERROR => "error",
        Level::WARN => "warning",
        Level::INFO => "info",
        Level::DEBUG | Level::TRACE => "debug",
    }
}

/// `plugd::component::state` → `plugd.component.state`.
pub fn scope_of(target: &str) -> String {
    target.replace("::", ".")
}

impl<S> FormatEvent<S, JsonFields> for DaprJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, JsonFields>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut fields = Map::new();
        // Outer spans first, so an inner span's field wins over an outer one of the same name.
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let ext = span.extensions();
                if let Some(stored) = ext.get::<FormattedFields<JsonFields>>()
                    && let Ok(Value::Object(map)) = serde_json::from_str::<Value>(stored)
                {
                    fields.extend(map.into_iter().filter(|(k, _)| !k.starts_with("otel.")));
                }
            }
        }
        let mut visitor = Visitor {
            fields: &mut fields,
            msg: String::new(),
        };
        event.record(&mut visitor);
        let msg = std::mem::take(&mut visitor.msg);
        // Inside an API request or a delivery whose trace context is kept in a task-local, not
        // a span; the event's own fields of the same name win.
        if !fields.contains_key("trace_id") {
            crate::telemetry::trace::log_context(|key, route, trace_id| {
                fields
                    .entry(key)
                    .or_insert_with(|| Value::String(route.to_string()));
                fields.insert("trace_id".into(), Value::String(trace_id.to_string()));
            });
        }
        for key in SCHEMA_KEYS {
            fields.remove(key);
        }
        fields.insert(
            "time".into(),
            Value::String(jiff::Timestamp::now().to_string()),
        );
        fields.insert(
            "level".into(),
            Value::String(level_name(meta.level()).into()),
        );
        fields.insert("type".into(), Value::String("log".into()));
        fields.insert("msg".into(), Value::String(msg));
        fields.insert("scope".into(), Value::String(scope_of(meta.target())));
        fields.insert("app_id".into(), Value::String(self.app_id.clone()));
        fields.insert("instance".into(), Value::String(self.instance.clone()));
        fields.insert(
            "ver".into(),
            Value::String(env!("CARGO_PKG_VERSION").into()),
        );
        let line = serde_json::to_string(&Value::Object(fields)).map_err(|_| fmt::Error)?;
        writeln!(writer, "{line}")
    }
}

/// Collects an event's fields; `message` becomes `msg`.
struct Visitor<'a> {
    fields: &'a mut Map<String, Value>,
    msg: String,
}

impl tracing::field::Visit for Visitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.msg = value.to_string();
        } else {
            self.fields
                .insert(field.name().into(), Value::String(value.into()));
        }
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.fields.insert(field.name().into(), Value::Bool(value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.fields.insert(field.name().into(), value.into());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.fields.insert(field.name().into(), value.into());
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.fields.insert(field.name().into(), value.into());
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.fields
            .insert(field.name().into(), Value::String(value.to_string()));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let text = format!("{value:?}");
        if field.name() == "message" {
            self.msg = text;
        } else {
            self.fields.insert(field.name().into(), Value::String(text));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_and_scopes_as_dapr_writes_them() {
        assert_eq!(level_name(&Level::WARN), "warning");
        assert_eq!(level_name(&Level::TRACE), "debug");
        assert_eq!(level_name(&Level::ERROR), "error");
        assert_eq!(scope_of("plugd::component::state"), "plugd.component.state");
        assert_eq!(scope_of("plugd"), "plugd");
    }
}
