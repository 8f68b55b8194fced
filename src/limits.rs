//! Request size limits (`--max-body-size`): parsing the flag's value, and answering a request
//! over the limit on both APIs with Dapr-style errors (HTTP 413 `ERR_BODY_TOO_LARGE`, gRPC
//! `RESOURCE_EXHAUSTED`), each naming the limit in bytes and the flag.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use axum::{
    extract::{Request, State},
    http::{StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};

use crate::api::ApiError;

/// Dapr's default: 4 MiB.
pub const DEFAULT_MAX_BODY_SIZE: usize = 4 << 20;

/// How much larger than the body limit a message to or from a component may be: room for the
/// key, metadata and framing around a value the API accepted.
const COMPONENT_MESSAGE_MARGIN: usize = 1 << 20;

/// The largest message plugd exchanges with a component when the API accepts bodies of
/// `max_body` bytes: never below tonic's 4 MiB default, and twice the body limit plus a
/// margin, so a value the API accepted can be stored and read back, and a binary payload
/// still fits once base64-encoded into its CloudEvent (4/3 of its size, plus the envelope).
pub fn component_message_limit(max_body: usize) -> usize {
    max_body
        .saturating_mul(2)
        .saturating_add(COMPONENT_MESSAGE_MARGIN)
        .max(DEFAULT_MAX_BODY_SIZE)
}

/// Parses a size as daprd's `--max-body-size` takes it: plain bytes (`4194304`) or a resource
/// quantity with a binary (`Ki`, `Mi`, `Gi`, `Ti`) or decimal (`k`, `M`, `G`, `T`) suffix,
/// optionally with a fraction (`1.5Mi`).
pub fn parse_size(text: &str) -> Result<usize, String> {
    let t = text.trim();
    if t.is_empty() {
        return Err("empty size".into());
    }
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, suffix) = t.split_at(split);
    let multiplier: u64 = match suffix {
        "" => 1,
        "k" | "K" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        other => {
            return Err(format!(
                "unknown unit {other:?} (use bytes, or a suffix Ki, Mi, Gi, Ti, k, M, G, T)"
            ));
        }
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() {
        return Err(format!("{t:?} has no number"));
    }
    let parse = |s: &str| -> Result<u64, String> {
        if s.is_empty() {
            Ok(0)
        } else {
            s.parse::<u64>().map_err(|e| format!("{t:?}: {e}"))
        }
    };
    let too_large = || format!("{t:?} is too large");
    let mut bytes = parse(whole)?
        .checked_mul(multiplier)
        .ok_or_else(too_large)?;
    if !fraction.is_empty() {
        if fraction.contains('.') || fraction.len() > 9 {
            return Err(format!("{t:?} is not a number"));
        }
        let scale = 10u64.pow(fraction.len() as u32);
        let part = u128::from(parse(fraction)?) * u128::from(multiplier) / u128::from(scale);
        bytes = bytes
            .checked_add(u64::try_from(part).map_err(|_| too_large())?)
            .ok_or_else(too_large)?;
    }
    if bytes == 0 {
        return Err("must be more than 0 bytes".into());
    }
    usize::try_from(bytes).map_err(|_| too_large())
}

/// The error for a request body or message over the limit (`found`: its size, when known).
pub fn too_large(limit: usize, found: Option<usize>) -> ApiError {
    let found = found.map(|n| format!(" ({n} bytes)")).unwrap_or_default();
    ApiError::plain(
        tonic::Code::ResourceExhausted,
        413,
        "ERR_BODY_TOO_LARGE",
        format!(
            "the request body{found} is larger than the limit of {limit} bytes (--max-body-size)"
        ),
    )
}

/// HTTP middleware: a request whose `Content-Length` exceeds `limit` is refused before its
/// body is read; a body found too large while reading it (axum's `DefaultBodyLimit`, set to the
/// same limit) is answered with the same JSON error instead of axum's plain text.
pub async fn http_body_limit(State(limit): State<usize>, request: Request, next: Next) -> Response {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(n) = declared
        && n > limit as u64
    {
        return too_large(limit, usize::try_from(n).ok()).into_response();
    }
    let response = next.run(request).await;
    if response.status() == StatusCode::PAYLOAD_TOO_LARGE
        && response
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"text/plain"))
    {
        return too_large(limit, None).into_response();
    }
    response
}

/// gRPC: turns tonic's "decoded message length too large" (`OUT_OF_RANGE`, produced by the
/// server's `max_decoding_message_size`) into `RESOURCE_EXHAUSTED` naming the limit and the
/// flag, as daprd answers.
#[derive(Clone, Copy)]
pub struct GrpcBodyLimitLayer {
    limit: usize,
}

impl GrpcBodyLimitLayer {
    pub fn new(limit: usize) -> Self {
        Self { limit }
    }
}

impl<S> tower::Layer<S> for GrpcBodyLimitLayer {
    type Service = GrpcBodyLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcBodyLimit {
            inner,
            limit: self.limit,
        }
    }
}

/// See [`GrpcBodyLimitLayer`].
#[derive(Clone)]
pub struct GrpcBodyLimit<S> {
    inner: S,
    limit: usize,
}

impl<S, B> tower::Service<http::Request<B>> for GrpcBodyLimit<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = GrpcBodyLimitFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        GrpcBodyLimitFuture {
            inner: self.inner.call(request),
            limit: self.limit,
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`GrpcBodyLimit`].
    pub struct GrpcBodyLimitFuture<F> {
        #[pin]
        inner: F,
        limit: usize,
    }
}

impl<F, E> Future for GrpcBodyLimitFuture<F>
where
    F: Future<Output = Result<http::Response<tonic::body::Body>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let limit = *this.limit;
        match this.inner.poll(cx) {
            Poll::Ready(Ok(response)) => Poll::Ready(Ok(rewrite_too_large(response, limit))),
            other => other,
        }
    }
}

/// The text tonic puts in the status of a request message over the decoding limit.
const TONIC_TOO_LARGE: &str = "decoded message length too large";

/// A trailers-only response carrying tonic's "too large" status becomes ours.
fn rewrite_too_large(
    response: http::Response<tonic::body::Body>,
    limit: usize,
) -> http::Response<tonic::body::Body> {
    let headers = response.headers();
    let out_of_range = headers
        .get("grpc-status")
        .is_some_and(|v| v.as_bytes() == b"11");
    if !out_of_range {
        return response;
    }
    let Some(message) = tonic::Status::from_header_map(headers) else {
        return response;
    };
    if !message.message().contains(TONIC_TOO_LARGE) {
        return response;
    }
    // "... found N bytes, the limit is: M bytes"
    let found = message
        .message()
        .split("found ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok());
    too_large(limit, found).to_status().into_http()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_as_daprd_takes_them() {
        for (text, want) in [
            ("4194304", 4 << 20),
            ("4Mi", 4 << 20),
            ("16Mi", 16 << 20),
            ("1Gi", 1 << 30),
            ("512Ki", 512 << 10),
            ("2M", 2_000_000),
            ("1k", 1000),
            ("1.5Mi", 3 << 19),
            (" 10 ", 10),
        ] {
            assert_eq!(parse_size(text), Ok(want), "{text}");
        }
        for bad in ["", "Mi", "4MB", "4 Mi", "-1", "0", "1.2.3Mi", "x"] {
            let err = parse_size(bad).expect_err(bad);
            assert!(!err.is_empty());
        }
        assert!(
            parse_size("99999999Ti")
                .expect_err("overflows")
                .contains("too large")
        );
    }

    #[test]
    fn component_limit_covers_the_body_limit() {
        assert!(component_message_limit(1) >= DEFAULT_MAX_BODY_SIZE);
        assert!(component_message_limit(64 << 20) > (64 << 20) * 4 / 3);
        assert_eq!(component_message_limit(usize::MAX), usize::MAX);
    }

    #[test]
    fn too_large_names_limit_and_flag() {
        let e = too_large(4194304, Some(5000000));
        assert_eq!(e.http_status(), 413);
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
        let body = e.to_json();
        assert_eq!(body["errorCode"], "ERR_BODY_TOO_LARGE");
        let message = body["message"].as_str().expect("message");
        assert!(message.contains("4194304") && message.contains("--max-body-size"));
        assert!(message.contains("5000000"));
    }

    #[test]
    fn tonic_status_is_rewritten() {
        let status = tonic::Status::out_of_range(
            "Error, decoded message length too large: found 5000 bytes, the limit is: 100 bytes",
        );
        let response = rewrite_too_large(status.into_http(), 100);
        let status = tonic::Status::from_header_map(response.headers()).expect("status");
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert!(status.message().contains("limit of 100 bytes"));
        assert!(status.message().contains("5000 bytes"));
        // Anything else passes untouched.
        let other = tonic::Status::out_of_range("something else").into_http();
        let kept = rewrite_too_large(other, 100);
        let kept = tonic::Status::from_header_map(kept.headers()).expect("status");
        assert_eq!(kept.code(), tonic::Code::OutOfRange);
    }
}
