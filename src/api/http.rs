//! The HTTP runtime API (Dapr's `/v1.0/...` routes).
//!
//! Request bodies are decoded leniently, as the official SDKs send them: field names match
//! case-insensitively, `null` maps are empty, and an etag may be a string, a number or
//! `{"value": ...}`.

use std::{collections::HashMap, sync::Arc};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{DefaultBodyLimit, FromRequestParts, State},
    http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header, request::Parts},
    response::{IntoResponse, Response},
    routing::{get, post, put},
};
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;
use tonic::Code;

use super::{
    ApiError,
    bindings::BindingsApi,
    pubsub::{self as publish, BulkEntry, PubSubApi},
    secrets::SecretsApi,
    state::{StateApi, TxOp},
};
use crate::{
    proto::common::{
        self,
        state_options::{StateConcurrency, StateConsistency},
    },
    registry::Registry,
};

/// What every handler needs; behind one `Arc`, so the clone axum makes per request is a
/// reference-count increment, not three `String`s and a cancellation token.
#[derive(Clone)]
struct Ctx(Arc<CtxInner>);

impl std::ops::Deref for Ctx {
    type Target = CtxInner;

    fn deref(&self) -> &CtxInner {
        &self.0
    }
}

struct CtxInner {
    state: StateApi,
    pubsub: PubSubApi,
    bindings: BindingsApi,
    secrets: SecretsApi,
    registry: Arc<Registry>,
    app_id: String,
    shutdown: CancellationToken,
}

type Params = Query<Vec<(String, String)>>;

/// axum's `Path`, refusing as Dapr does: a path parameter that cannot be decoded (not UTF-8
/// once percent-decoded) is a 400 `ERR_MALFORMED_REQUEST` JSON error, not axum's plain text.
struct Path<T>(T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned + Send> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(Self(v)),
            Err(e) => Err(ApiError::malformed(format!(
                "invalid request path {}: {}",
                parts.uri.path(),
                e.body_text()
            ))),
        }
    }
}

/// axum's `Query`, with its rejection as a 400 `ERR_MALFORMED_REQUEST` JSON error.
struct Query<T>(T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(Self(v)),
            Err(e) => Err(ApiError::malformed(format!(
                "invalid query string: {}",
                e.body_text()
            ))),
        }
    }
}

impl<T> std::ops::Deref for Query<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

/// The HTTP API router.
pub fn router(
    registry: Arc<Registry>,
    app_id: String,
    shutdown: CancellationToken,
    api_token: Option<Arc<str>>,
    max_body: usize,
) -> Router {
    let ctx = Ctx(Arc::new(CtxInner {
        state: StateApi::new(registry.clone(), app_id.clone()),
        pubsub: PubSubApi::new(registry.clone(), app_id.clone()),
        bindings: BindingsApi::new(registry.clone()),
        secrets: SecretsApi::new(registry.clone()),
        registry,
        app_id,
        shutdown,
    }));
    Router::new()
        .route("/v1.0/healthz", get(healthz))
        .route("/v1.0/healthz/outbound", get(healthz_outbound))
        .route("/v1.0/metadata", get(metadata))
        .route("/v1.0/metadata/{key}", put(set_metadata))
        .route("/v1.0/shutdown", post(request_shutdown))
        .route("/v1.0/state/{store}", post(save_state).put(save_state))
        // `bulk` and `transaction` are POST/PUT sub-resources; GET and DELETE take any key,
        // those two names included, as in Dapr.
        .route(
            "/v1.0/state/{store}/{key}",
            get(get_state)
                .delete(delete_state)
                .post(state_sub_resource)
                .put(state_sub_resource),
        )
        .route(
            "/v1.0-alpha1/state/{store}/query",
            post(query_state).put(query_state),
        )
        // Topics may contain `/`.
        .route(
            "/v1.0/publish/{pubsub}/{*topic}",
            post(publish_event).put(publish_event),
        )
        .route(
            "/v1.0-alpha1/publish/bulk/{pubsub}/{*topic}",
            post(bulk_publish).put(bulk_publish),
        )
        .route(
            "/v1.0/publish/bulk/{pubsub}/{*topic}",
            post(bulk_publish).put(bulk_publish),
        )
        .route(
            "/v1.0/bindings/{name}",
            post(invoke_binding).put(invoke_binding),
        )
        // `bulk` is a sub-resource; a secret named "bulk" is reachable over gRPC only, as in
        // Dapr.
        .route("/v1.0/secrets/{store}/{key}", get(get_secret))
        .route_layer(axum::middleware::from_fn(crate::metrics::route_template))
        .route_layer(crate::telemetry::trace::ApiTraceLayer::http())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::from_fn_with_state(
            max_body,
            crate::limits::http_body_limit,
        ))
        .layer(axum::middleware::from_fn_with_state(
            api_token,
            super::gate::http_token,
        ))
        .layer(axum::middleware::from_fn(crate::metrics::http_requests))
        .with_state(ctx)
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    super::gate::http_unserved(uri.path()).unwrap_or_else(|| not_found_path(uri.path()))
}

/// A known path with a method it does not take: Dapr's JSON error rather than an empty 405.
async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::plain(
        Code::Unimplemented,
        405,
        "ERR_METHOD_NOT_ALLOWED",
        format!("method {method} is not allowed for {}", uri.path()),
    )
}

fn not_found_path(path: &str) -> ApiError {
    ApiError::plain(
        Code::NotFound,
        404,
        "ERR_NOT_FOUND",
        format!("no API at {path}"),
    )
}

/// `metadata.<key>` query parameters, prefix stripped, first value wins.
fn query_metadata(params: &[(String, String)]) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for (k, v) in params {
        if let Some(name) = k.strip_prefix("metadata.") {
            out.entry(name.to_string()).or_insert_with(|| v.clone());
        }
    }
    out
}

fn query_param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// A field of a JSON object, matched case-insensitively.
fn field<'a>(obj: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    obj.get(name).or_else(|| {
        obj.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    })
}

fn parse_json(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::malformed(format!("failed deserializing HTTP body: {e}")))
}

fn string_map(v: Option<&Value>, what: &str) -> Result<HashMap<String, String>, ApiError> {
    match v {
        None | Some(Value::Null) => Ok(HashMap::new()),
        Some(Value::Object(m)) => Ok(m
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    match v {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    },
                )
            })
            .collect()),
        Some(_) => Err(ApiError::malformed(format!(
            "{what} must be an object of strings"
        ))),
    }
}

fn etag_of(v: Option<&Value>) -> Result<Option<common::Etag>, ApiError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(common::Etag { value: s.clone() })),
        Some(Value::Number(n)) => Ok(Some(common::Etag {
            value: n.to_string(),
        })),
        Some(Value::Object(m)) => match field(m, "value") {
            Some(Value::String(s)) => Ok(Some(common::Etag { value: s.clone() })),
            Some(Value::Number(n)) => Ok(Some(common::Etag {
                value: n.to_string(),
            })),
            _ => Err(ApiError::malformed("etag must be a string")),
        },
        Some(_) => Err(ApiError::malformed("etag must be a string")),
    }
}

fn concurrency(s: Option<&str>) -> i32 {
    match s {
        Some("first-write") => StateConcurrency::ConcurrencyFirstWrite as i32,
        Some("last-write") => StateConcurrency::ConcurrencyLastWrite as i32,
        _ => StateConcurrency::ConcurrencyUnspecified as i32,
    }
}

fn consistency(s: Option<&str>) -> i32 {
    match s {
        Some("eventual") => StateConsistency::ConsistencyEventual as i32,
        Some("strong") => StateConsistency::ConsistencyStrong as i32,
        _ => StateConsistency::ConsistencyUnspecified as i32,
    }
}

fn options_of(v: Option<&Value>) -> Option<common::StateOptions> {
    let m = v?.as_object()?;
    Some(common::StateOptions {
        concurrency: concurrency(field(m, "concurrency").and_then(Value::as_str)),
        consistency: consistency(field(m, "consistency").and_then(Value::as_str)),
    })
}

/// One state item of a save or transaction body. The value is stored JSON-encoded, as in Dapr.
fn state_item(
    v: &Value,
    query_meta: &HashMap<String, String>,
) -> Result<common::StateItem, ApiError> {
    let obj = v
        .as_object()
        .ok_or_else(|| ApiError::malformed("each state item must be a JSON object"))?;
    let key = match field(obj, "key") {
        Some(Value::String(k)) if !k.is_empty() => k.clone(),
        _ => return Err(ApiError::malformed("\"key\" is a required field")),
    };
    let value = match field(obj, "value") {
        None => Vec::new(),
        Some(v) => serde_json::to_vec(v).map_err(|e| ApiError::malformed(e.to_string()))?,
    };
    let mut metadata = string_map(field(obj, "metadata"), "metadata")?;
    for (k, v) in query_meta {
        metadata.entry(k.clone()).or_insert_with(|| v.clone());
    }
    Ok(common::StateItem {
        key,
        value,
        etag: etag_of(field(obj, "etag"))?,
        metadata,
        options: options_of(field(obj, "options")),
    })
}

async fn healthz(State(ctx): State<Ctx>, params: Params) -> Response {
    if query_param(&params, "appid").is_some_and(|id| id != ctx.app_id) {
        return ApiError::plain(
            Code::Internal,
            500,
            "ERR_HEALTH_APPID_NOT_MATCH",
            "dapr app-id does not match",
        )
        .into_response();
    }
    let snapshot = ctx.registry.snapshot();
    if snapshot.ready() {
        StatusCode::NO_CONTENT.into_response()
    } else {
        ApiError::plain(
            Code::Unavailable,
            500,
            "ERR_HEALTH_NOT_READY",
            format!(
                "dapr is not ready: components not ready: {}",
                snapshot.not_ready().join(", ")
            ),
        )
        .into_response()
    }
}

async fn healthz_outbound() -> StatusCode {
    StatusCode::NO_CONTENT
}

async fn metadata(State(ctx): State<Ctx>) -> Json<Value> {
    let snapshot = ctx.registry.snapshot();
    // Dapr's four fields, plus plugd's health: status, why, since when, and the last error.
    let components: Vec<Value> = snapshot
        .components
        .values()
        .map(|c| {
            let mut o = serde_json::json!({
                "name": c.name, "type": c.type_name, "version": c.version, "capabilities": c.features,
                "status": c.status.name(),
                "since": rfc3339(c.since),
            });
            if let Some(reason) = c.status.reason() {
                o["reason"] = Value::String(reason.to_string());
            }
            if let Some(socket) = &c.socket {
                o["socket"] = Value::String(socket.display().to_string());
            }
            if let Some((error, at)) = &c.last_error {
                o["lastError"] = serde_json::json!({"message": error, "time": rfc3339(*at)});
            }
            o
        })
        .collect();
    let subscriptions: Vec<Value> = ctx
        .registry
        .subscriptions()
        .iter()
        .map(|s| {
            let rules: Vec<Value> = s
                .rule_list()
                .into_iter()
                .map(|(m, p)| serde_json::json!({"match": m, "path": p}))
                .collect();
            let mut o = serde_json::json!({
                "pubsubname": s.pubsub, "topic": s.topic, "metadata": s.metadata,
                "rules": rules, "type": s.kind_name(),
            });
            if let Some(d) = &s.dead_letter_topic {
                o["deadLetterTopic"] = Value::String(d.clone());
            }
            o
        })
        .collect();
    let mut extended: Map<String, Value> = ctx
        .registry
        .extended()
        .into_iter()
        .map(|(k, v)| (k, Value::String(v)))
        .collect();
    extended.insert(
        "daprRuntimeVersion".into(),
        Value::String(crate::VERSION.into()),
    );
    Json(serde_json::json!({
        "id": ctx.app_id,
        "runtimeVersion": crate::VERSION,
        "enabledFeatures": [],
        "actors": [],
        "components": components,
        "extended": extended,
        "subscriptions": subscriptions,
        "httpEndpoints": [],
        "actorRuntime": { "runtimeStatus": "DISABLED", "hostReady": false },
    }))
}

fn rfc3339(t: std::time::SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

async fn set_metadata(State(ctx): State<Ctx>, Path(key): Path<String>, body: Bytes) -> StatusCode {
    ctx.registry
        .set_extended(key, String::from_utf8_lossy(&body).into_owned());
    StatusCode::NO_CONTENT
}

async fn request_shutdown(State(ctx): State<Ctx>) -> StatusCode {
    tracing::info!("shutdown requested through the API");
    ctx.shutdown.cancel();
    StatusCode::NO_CONTENT
}

fn metadata_headers(headers: &mut HeaderMap, metadata: &HashMap<String, String>) {
    for (k, v) in metadata {
        if let (Ok(name), Ok(value)) = (
            HeaderName::try_from(format!("metadata.{k}")),
            HeaderValue::try_from(v.as_str()),
        ) {
            headers.insert(name, value);
        }
    }
}

async fn get_state(
    State(ctx): State<Ctx>,
    Path((store, key)): Path<(String, String)>,
    params: Params,
) -> Result<Response, ApiError> {
    let got = ctx
        .state
        .get(
            &store,
            &key,
            consistency(query_param(&params, "consistency")),
            query_metadata(&params),
        )
        .await?;
    if got.data.is_empty() {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let mut resp = got.data.into_response();
    let headers = resp.headers_mut();
    let content_type = if got.content_type.is_empty() {
        "application/json"
    } else {
        got.content_type.as_str()
    };
    if let Ok(v) = HeaderValue::try_from(content_type) {
        headers.insert(header::CONTENT_TYPE, v);
    }
    if let Some(etag) = got.etag.and_then(|e| HeaderValue::try_from(e).ok()) {
        headers.insert(header::ETAG, etag);
    }
    metadata_headers(headers, &got.metadata);
    Ok(resp)
}

async fn save_state(
    State(ctx): State<Ctx>,
    Path(store): Path<String>,
    params: Params,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    ctx.state.check_store(&store)?;
    let doc = parse_json(&body)?;
    let arr = doc.as_array().ok_or_else(|| {
        ApiError::malformed("failed deserializing HTTP body: expected a JSON array of state items")
    })?;
    let meta = query_metadata(&params);
    let items = arr
        .iter()
        .map(|v| state_item(v, &meta))
        .collect::<Result<Vec<_>, _>>()?;
    ctx.state.save(&store, items).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn delete_state(
    State(ctx): State<Ctx>,
    Path((store, key)): Path<(String, String)>,
    params: Params,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let etag = headers.get(header::IF_MATCH).map(|v| common::Etag {
        value: String::from_utf8_lossy(v.as_bytes()).into_owned(),
    });
    let item = common::StateItem {
        key,
        value: Vec::new(),
        etag,
        metadata: query_metadata(&params),
        options: Some(common::StateOptions {
            concurrency: concurrency(query_param(&params, "concurrency")),
            consistency: consistency(query_param(&params, "consistency")),
        }),
    };
    ctx.state.delete(&store, item).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn state_sub_resource(
    State(ctx): State<Ctx>,
    Path((store, sub)): Path<(String, String)>,
    params: Params,
    body: Bytes,
) -> Result<Response, ApiError> {
    match sub.as_str() {
        "bulk" => Ok(bulk_get(ctx, store, params, body).await?.into_response()),
        "transaction" => Ok(transaction(ctx, store, params, body).await?.into_response()),
        _ => Err(not_found_path(&format!("/v1.0/state/{store}/{sub}"))),
    }
}

async fn bulk_get(
    ctx: Ctx,
    store: String,
    params: Params,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    ctx.state.check_store(&store)?;
    let doc = parse_json(&body)?;
    let obj = doc.as_object().ok_or_else(|| {
        ApiError::malformed("failed deserializing HTTP body: expected an object with \"keys\"")
    })?;
    let keys: Vec<String> = match field(obj, "keys") {
        Some(Value::Array(keys)) => keys
            .iter()
            .map(|k| {
                k.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| ApiError::malformed("keys must be strings"))
            })
            .collect::<Result<_, _>>()?,
        None | Some(Value::Null) => Vec::new(),
        Some(_) => return Err(ApiError::malformed("keys must be an array of strings")),
    };
    let parallelism = field(obj, "parallelism")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    let mut metadata = string_map(field(obj, "metadata"), "metadata")?;
    metadata.extend(query_metadata(&params));
    let items = ctx
        .state
        .get_bulk(&store, keys, parallelism, metadata)
        .await?;
    let out: Vec<Value> = items
        .into_iter()
        .map(|i| {
            let mut o = Map::new();
            o.insert("key".into(), Value::String(i.key));
            if !i.data.is_empty() {
                o.insert("data".into(), embed_json(&i.data));
            }
            if !i.etag.is_empty() {
                o.insert("etag".into(), Value::String(i.etag));
            }
            if !i.metadata.is_empty() {
                o.insert(
                    "metadata".into(),
                    serde_json::to_value(i.metadata).unwrap_or(Value::Null),
                );
            }
            if !i.error.is_empty() {
                o.insert("error".into(), Value::String(i.error));
            }
            Value::Object(o)
        })
        .collect();
    Ok(Json(Value::Array(out)))
}

/// Stored bytes embedded in a JSON reply: raw when they are JSON, else as a string.
fn embed_json(data: &[u8]) -> Value {
    serde_json::from_slice(data)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(data).into_owned()))
}

async fn transaction(
    ctx: Ctx,
    store: String,
    params: Params,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    ctx.state.check_store(&store)?;
    let doc = parse_json(&body)?;
    let obj = doc.as_object().ok_or_else(|| {
        ApiError::malformed(
            "failed deserializing HTTP body: expected an object with \"operations\"",
        )
    })?;
    let mut metadata = string_map(field(obj, "metadata"), "metadata")?;
    metadata.extend(query_metadata(&params));
    let ops = match field(obj, "operations") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(ops)) => ops
            .iter()
            .map(|op| {
                let o = op
                    .as_object()
                    .ok_or_else(|| ApiError::malformed("each operation must be an object"))?;
                let operation = field(o, "operation")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                let request = field(o, "request")
                    .ok_or_else(|| ApiError::malformed("operation has no \"request\""))?;
                Ok(TxOp {
                    operation,
                    item: state_item(request, &HashMap::new())?,
                })
            })
            .collect::<Result<Vec<_>, ApiError>>()?,
        Some(_) => return Err(ApiError::malformed("operations must be an array")),
    };
    ctx.state.transact(&store, ops, metadata).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn query_state(
    State(ctx): State<Ctx>,
    Path(store): Path<String>,
    params: Params,
    body: Bytes,
) -> Result<Response, ApiError> {
    let text = String::from_utf8_lossy(&body);
    let resp = ctx
        .state
        .query(&store, &text, query_metadata(&params))
        .await?;
    if resp.results.is_empty() {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let results: Vec<Value> = resp
        .results
        .into_iter()
        .map(|r| {
            let mut o = Map::new();
            o.insert("key".into(), Value::String(r.key));
            o.insert("data".into(), embed_json(&r.data));
            if !r.etag.is_empty() {
                o.insert("etag".into(), Value::String(r.etag));
            }
            if !r.error.is_empty() {
                o.insert("error".into(), Value::String(r.error));
            }
            Value::Object(o)
        })
        .collect();
    let mut body = serde_json::json!({ "results": results });
    if !resp.token.is_empty() {
        body["token"] = Value::String(resp.token);
    }
    if !resp.metadata.is_empty() {
        body["metadata"] = serde_json::to_value(resp.metadata).unwrap_or(Value::Null);
    }
    Ok(Json(body).into_response())
}

/// `POST /v1.0/publish/{pubsub}/{topic}`: the body is the payload, `Content-Type` its type.
async fn publish_event(
    State(ctx): State<Ctx>,
    Path((pubsub, topic)): Path<(String, String)>,
    Query(params): Params,
    headers: HeaderMap,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let message = publish::Message {
        data: body.to_vec(),
        content_type,
        metadata: query_metadata(&params),
    };
    ctx.pubsub
        .publish(
            &pubsub,
            &topic,
            message,
            &crate::telemetry::trace::current(),
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

fn events_error(pubsub: &str, topic: &str, error: String) -> ApiError {
    ApiError::named(
        Code::InvalidArgument,
        400,
        "ERR_PUBSUB_EVENTS_SER",
        "DAPR_PUBSUB_UNMARSHAL_EVENTS",
        format!("error when unmarshaling the request for topic {topic} pubsub {pubsub}: {error}"),
    )
}

/// A bulk entry's `event` as bytes, by its content type.
fn bulk_event(event: &Value, content_type: &str) -> Result<(Vec<u8>, String), String> {
    use crate::pubsub::cloudevents::{is_binary, is_cloudevent, is_json, media_type};
    let ct = if content_type.is_empty() {
        match event {
            Value::String(_) => "text/plain",
            _ => "application/json",
        }
    } else {
        content_type
    };
    let m = media_type(ct);
    let bytes = if is_binary(ct) {
        let Value::String(b64) = event else {
            return Err(format!("an {m} event must be a base64 string"));
        };
        use base64::Engine;
        base64::engine::general_purpose::STANDARD
            .decode(b64.as_bytes())
            .map_err(|e| format!("the event is not valid base64: {e}"))?
    } else if m.starts_with("text/") || m == "application/xml" {
        match event {
            Value::String(s) => s.clone().into_bytes(),
            _ => return Err(format!("a {m} event must be a string")),
        }
    } else if is_json(ct) || is_cloudevent(ct) {
        serde_json::to_vec(event).map_err(|e| e.to_string())?
    } else {
        return Err(format!(
            "content type {ct:?} is not supported in bulk publish"
        ));
    };
    Ok((bytes, ct.to_string()))
}

/// `POST /v1.0-alpha1/publish/bulk/{pubsub}/{topic}`: a JSON array of entries.
async fn bulk_publish(
    State(ctx): State<Ctx>,
    Path((pubsub, topic)): Path<(String, String)>,
    Query(params): Params,
    body: Bytes,
) -> Result<Response, ApiError> {
    let Ok(Value::Array(items)) = serde_json::from_slice::<Value>(&body) else {
        return Err(events_error(
            &pubsub,
            &topic,
            "the body must be a JSON array of entries".into(),
        ));
    };
    let mut entries = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let Value::Object(obj) = item else {
            return Err(events_error(
                &pubsub,
                &topic,
                format!("entry {i} is not an object"),
            ));
        };
        let entry_id = match field(obj, "entryId") {
            Some(Value::String(s)) => s.clone(),
            None | Some(Value::Null) => String::new(),
            Some(other) => other.to_string(),
        };
        let content_type = match field(obj, "contentType") {
            Some(Value::String(s)) => s.clone(),
            _ => String::new(),
        };
        let event = field(obj, "event").unwrap_or(&Value::Null);
        let (data, content_type) = bulk_event(event, &content_type).map_err(|e| {
            ApiError::named(
                Code::InvalidArgument,
                400,
                "ERR_PUBSUB_EVENTS_SER",
                "DAPR_PUBSUB_MARSHAL_EVENTS",
                format!("error marshaling events to bytes for topic {topic} pubsub {pubsub}. error: entry {entry_id:?}: {e}"),
            )
        })?;
        let metadata = string_map(field(obj, "metadata"), "metadata")?;
        entries.push(BulkEntry {
            entry_id,
            message: publish::Message {
                data,
                content_type,
                metadata,
            },
        });
    }
    let failed = ctx
        .pubsub
        .bulk_publish(
            &pubsub,
            &topic,
            entries,
            query_metadata(&params),
            &crate::telemetry::trace::current(),
        )
        .await?;
    if failed.is_empty() {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let failed_json: Vec<Value> = failed
        .iter()
        .map(|f| serde_json::json!({"entryId": f.entry_id, "error": f.error}))
        .collect();
    let body = serde_json::json!({
        "failedEntries": failed_json,
        "errorCode": "ERR_PUBSUB_PUBLISH_MESSAGE",
    });
    let mut resp = (StatusCode::INTERNAL_SERVER_ERROR, Json(body.clone())).into_response();
    if let Ok(v) = HeaderValue::from_str(&body["failedEntries"].to_string()) {
        resp.headers_mut()
            .insert(HeaderName::from_static("metadata.responsedata"), v);
    }
    if let Ok(v) = HeaderValue::from_str(&format!("{} entries failed", failed.len())) {
        resp.headers_mut()
            .insert(HeaderName::from_static("metadata.error"), v);
    }
    Ok(resp)
}

/// `POST /v1.0/bindings/{name}` with `{"data", "metadata", "operation"}`. As in Dapr, `data`
/// reaches the component re-encoded as JSON (a JSON string keeps its quotes; none is `null`).
async fn invoke_binding(
    State(ctx): State<Ctx>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let value = parse_json(&body)?;
    let Value::Object(obj) = &value else {
        return Err(ApiError::malformed(
            "the request body must be a JSON object with data, metadata and operation",
        ));
    };
    let data = serde_json::to_vec(field(obj, "data").unwrap_or(&Value::Null))
        .map_err(|e| ApiError::malformed(format!("data: {e}")))?;
    let metadata = string_map(field(obj, "metadata"), "metadata")?;
    let operation = match field(obj, "operation") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => {
            return Err(ApiError::malformed(format!(
                "operation must be a string, not {other}"
            )));
        }
    };
    let out = ctx
        .bindings
        .invoke(&name, &operation, data, metadata)
        .await?;
    let mut headers = HeaderMap::new();
    metadata_headers(&mut headers, &out.metadata);
    if let Ok(ct) = HeaderValue::try_from(out.content_type.as_str())
        && !out.content_type.is_empty()
    {
        headers.insert(header::CONTENT_TYPE, ct);
    }
    // As Dapr documents for its bindings (localstorage `delete`): a reply with neither data nor
    // metadata is 204 No Content.
    let status = if out.data.is_empty() && out.metadata.is_empty() {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::OK
    };
    Ok((status, headers, out.data).into_response())
}

/// `GET /v1.0/secrets/{store}/{key}` and `GET /v1.0/secrets/{store}/bulk`, with
/// `metadata.<k>=<v>` query parameters.
async fn get_secret(
    State(ctx): State<Ctx>,
    Path((store, key)): Path<(String, String)>,
    params: Params,
) -> Result<Json<Value>, ApiError> {
    let metadata = query_metadata(&params);
    if key == "bulk" {
        let all = ctx.secrets.bulk_get(&store, metadata).await?;
        return Ok(Json(serde_json::to_value(all).unwrap_or(Value::Null)));
    }
    let data = ctx.secrets.get(&store, &key, metadata).await?;
    Ok(Json(serde_json::to_value(data).unwrap_or(Value::Null)))
}
