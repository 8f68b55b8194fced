//! What every API request passes before a handler: the API token (`DAPR_API_TOKEN`), and, for
//! APIs plugd does not serve, an immediate "not implemented" that names the API (gRPC
//! `UNIMPLEMENTED`, HTTP 501) instead of a bare status or a 404.

use std::{
    sync::Arc,
    task::{Context, Poll},
};

use axum::{
    extract::{Request, State},
    http::{HeaderMap, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use futures::future::BoxFuture;
use tonic::Code;

use super::ApiError;

/// The header (HTTP) and metadata key (gRPC) carrying the API token.
pub const TOKEN_HEADER: &str = "dapr-api-token";

/// The gRPC service plugd implements (in part).
const DAPR_SERVICE: &str = "/dapr.proto.runtime.v1.Dapr/";

/// The `Dapr` methods plugd serves (or answers itself, for the two it does not).
const SERVED_METHODS: [&str; 18] = [
    "InvokeService",
    "GetState",
    "GetBulkState",
    "SaveState",
    "QueryStateAlpha1",
    "DeleteState",
    "DeleteBulkState",
    "ExecuteStateTransaction",
    "PublishEvent",
    "BulkPublishEvent",
    "BulkPublishEventAlpha1",
    "SubscribeTopicEventsAlpha1",
    "InvokeBinding",
    "GetSecret",
    "GetBulkSecret",
    "GetMetadata",
    "SetMetadata",
    "Shutdown",
];

/// The Dapr API a runtime method belongs to, by its name, for "not served" messages.
pub fn api_of_method(method: &str) -> &'static str {
    let m = method.to_ascii_lowercase();
    let has = |s: &str| m.contains(s);
    if has("actor") || has("reminder") || has("timer") {
        "actors"
    } else if has("workflow") {
        "workflows"
    } else if has("configuration") {
        "configuration"
    } else if has("lock") {
        "distributed lock"
    } else if has("crypt") || has("key") {
        "cryptography"
    } else if has("job") {
        "jobs"
    } else if has("converse") || has("conversation") {
        "conversation"
    } else if has("invoke") {
        "service invocation"
    } else if has("subscribe") {
        "streaming subscriptions"
    } else if has("health") {
        "health"
    } else {
        "requested"
    }
}

/// Collapses repeated `/` in the request path (`/v1.0//state` → `/v1.0/state`).
pub fn collapse_slashes(mut request: Request) -> Request {
    let uri = request.uri();
    if !uri.path().contains("//") {
        return request;
    }
    let mut path = String::with_capacity(uri.path().len());
    for c in uri.path().chars() {
        if !(c == '/' && path.ends_with('/')) {
            path.push(c);
        }
    }
    let path_and_query = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path,
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = http::uri::PathAndQuery::try_from(path_and_query).ok();
    if parts.path_and_query.is_some()
        && let Ok(new) = http::Uri::from_parts(parts)
    {
        *request.uri_mut() = new;
    }
    request
}

/// The message of an API plugd does not serve.
pub fn unserved_message(api: &str, what: &str) -> String {
    format!("the {api} API is not served by plugd ({what})")
}

/// Whether `given` is the token, compared in time independent of where they differ.
fn token_matches(expected: &str, given: &[u8]) -> bool {
    let expected = expected.as_bytes();
    if expected.len() != given.len() {
        return false;
    }
    expected
        .iter()
        .zip(given)
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        == 0
}

/// Why a request carrying `headers` is refused for `token`, if it is.
fn token_refusal(token: &str, headers: &HeaderMap) -> Option<&'static str> {
    match headers.get(TOKEN_HEADER) {
        None => Some("missing api token in request metadata"),
        Some(v) if token_matches(token, v.as_bytes()) => None,
        Some(_) => Some("authentication error: api token mismatch"),
    }
}

/// HTTP: every route but the two health endpoints needs the token; 401 with Dapr's plain-text
/// body otherwise.
pub async fn http_token(
    State(token): State<Option<Arc<str>>>,
    request: Request,
    next: Next,
) -> Response {
    if let Some(token) = token {
        let path = request.uri().path();
        let exempt = matches!(path, "/v1.0/healthz" | "/v1.0/healthz/outbound");
        if !exempt && token_refusal(&token, request.headers()).is_some() {
            return (
                StatusCode::UNAUTHORIZED,
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                "invalid api token",
            )
                .into_response();
        }
    }
    next.run(request).await
}

/// The HTTP routes of Dapr APIs plugd does not serve, by path prefix (after the version).
const UNSERVED_HTTP: [(&str, &str); 10] = [
    ("actors", "actors"),
    ("invoke", "service invocation"),
    ("configuration", "configuration"),
    ("lock", "distributed lock"),
    ("unlock", "distributed lock"),
    ("crypto", "cryptography"),
    ("jobs", "jobs"),
    ("workflows", "workflows"),
    ("conversation", "conversation"),
    ("subscribe", "streaming subscriptions"),
];

/// HTTP: a request to a Dapr API plugd does not serve, answered 501 naming it; `None` for
/// any other path.
pub fn http_unserved(path: &str) -> Option<ApiError> {
    let mut parts = path.trim_start_matches('/').split('/');
    let version = parts.next()?;
    if version != "v1.0" && !version.starts_with("v1.0-") {
        return None;
    }
    let first = parts.next()?;
    let api = UNSERVED_HTTP
        .iter()
        .find(|(prefix, _)| *prefix == first)
        .map(|(_, api)| *api)?;
    Some(ApiError::plain(
        Code::Unimplemented,
        501,
        "ERR_NOT_IMPLEMENTED",
        unserved_message(api, path),
    ))
}

/// gRPC: a tower layer checking the API token and answering methods plugd does not serve.
#[derive(Clone)]
pub struct GrpcGateLayer {
    token: Option<Arc<str>>,
}

impl GrpcGateLayer {
    pub fn new(token: Option<Arc<str>>) -> Self {
        Self { token }
    }
}

impl<S> tower::Layer<S> for GrpcGateLayer {
    type Service = GrpcGate<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcGate {
            inner,
            token: self.token.clone(),
        }
    }
}

/// See [`GrpcGateLayer`].
#[derive(Clone)]
pub struct GrpcGate<S> {
    inner: S,
    token: Option<Arc<str>>,
}

impl<S> GrpcGate<S> {
    fn refusal(&self, path: &str, headers: &HeaderMap) -> Option<tonic::Status> {
        // Reflection stays open, so that tools can list the API without the token.
        let reflection = path.starts_with("/grpc.reflection.");
        if let Some(token) = self.token.as_deref()
            && !reflection
            && let Some(why) = token_refusal(token, headers)
        {
            let e = ApiError::basic(Code::Unauthenticated, 401, "Unauthorized", "Unauthorized")
                .with_metadata("http.code", "401")
                .with_metadata("http.error_message", why);
            return Some(e.to_status());
        }
        let method = path.strip_prefix(DAPR_SERVICE)?;
        if SERVED_METHODS.contains(&method) {
            return None;
        }
        let what = format!("dapr.proto.runtime.v1.Dapr/{method}");
        Some(tonic::Status::unimplemented(unserved_message(
            api_of_method(method),
            &what,
        )))
    }
}

impl<S, B> tower::Service<http::Request<B>> for GrpcGate<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if let Some(status) = self.refusal(request.uri().path(), request.headers()) {
            return Box::pin(async move { Ok(status.into_http()) });
        }
        Box::pin(self.inner.call(request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole() {
        assert!(token_matches("abc", b"abc"));
        assert!(!token_matches("abc", b"abd"));
        assert!(!token_matches("abc", b"ab"));
        assert!(!token_matches("abc", b""));
    }

    #[test]
    fn unserved_http_apis_are_named() {
        let e = http_unserved("/v1.0/actors/a/b/method/m").expect("actors");
        assert_eq!(e.http_status(), 501);
        assert!(
            e.0.message
                .contains("the actors API is not served by plugd")
        );
        assert!(http_unserved("/v1.0-alpha1/jobs/j").is_some());
        assert!(http_unserved("/v1.0-beta1/workflows/dapr/x/start").is_some());
        assert!(http_unserved("/v1.0/state/s").is_none());
        assert!(http_unserved("/nope").is_none());
        assert!(http_unserved("/v1.0x/actors/a").is_none());
    }

    #[test]
    fn repeated_slashes_collapse() {
        let req = Request::builder()
            .uri("/v1.0//state///s/k?metadata.a=1")
            .body(axum::body::Body::empty())
            .expect("request");
        let req = collapse_slashes(req);
        assert_eq!(req.uri(), "/v1.0/state/s/k?metadata.a=1");
    }

    #[test]
    fn unserved_grpc_methods_name_their_api() {
        assert_eq!(api_of_method("RegisterActorTimer"), "actors");
        assert_eq!(api_of_method("GetConfigurationAlpha1"), "configuration");
        assert_eq!(api_of_method("TryLockAlpha1"), "distributed lock");
        assert_eq!(api_of_method("EncryptAlpha1"), "cryptography");
        assert_eq!(api_of_method("ScheduleJobAlpha1"), "jobs");
        assert_eq!(api_of_method("StartWorkflowBeta1"), "workflows");
        assert_eq!(api_of_method("ConverseAlpha2"), "conversation");
    }
}
