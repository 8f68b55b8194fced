//! The app-facing runtime API. One error type, [`ApiError`], becomes a `tonic::Status` (with
//! `google.rpc` details that agree with the status) or Dapr's HTTP JSON error, here and only here.

pub mod bindings;
pub mod gate;
pub mod grpc;
pub mod http;
pub mod pubsub;
pub mod secrets;
pub mod state;

use std::collections::HashMap;

use axum::response::{IntoResponse, Response};
use tonic::Code;
use tonic_types::{
    BadRequest, ErrorDetail, ErrorInfo, FieldViolation, Help, HelpLink, ResourceInfo, StatusExt,
};

use crate::component::ComponentError;

/// Dapr's ErrorInfo domain.
pub const DOMAIN: &str = "dapr.io";

/// An API failure, carrying what both transports need (boxed: it travels in every `Result`).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}: {}", .0.error_code, .0.message)]
pub struct ApiError(pub Box<ErrorBody>);

/// The parts of an [`ApiError`].
#[derive(Debug, Clone)]
pub struct ErrorBody {
    pub grpc: Code,
    pub http: u16,
    /// Dapr's `errorCode` in HTTP bodies (an `ERR_*` code).
    pub error_code: String,
    pub message: String,
    /// `ErrorInfo.reason` on gRPC; `None` sends a plain status without details.
    pub reason: Option<String>,
    /// `ErrorInfo.domain`: `dapr.io`, or a component's own domain for its rich errors.
    pub domain: String,
    pub info_metadata: HashMap<String, String>,
    pub resource: Option<(String, String)>,
    pub bad_request: Option<(String, String)>,
    pub help: Option<(String, String)>,
    /// Whether HTTP bodies carry `details` (Dapr's "rich" errors only).
    pub http_details: bool,
}

impl ApiError {
    /// An error with an `ErrorInfo` whose reason is the `ERR_*` code (Dapr's "basic" errors).
    pub fn basic(grpc: Code, http: u16, error_code: &str, message: impl Into<String>) -> Self {
        Self(Box::new(ErrorBody {
            grpc,
            http,
            error_code: error_code.to_string(),
            message: message.into(),
            reason: Some(error_code.to_string()),
            domain: DOMAIN.to_string(),
            info_metadata: HashMap::new(),
            resource: None,
            bad_request: None,
            help: None,
            http_details: false,
        }))
    }

    /// An error whose `ErrorInfo.reason` is a `DAPR_*` reason (Dapr's "named" errors).
    pub fn named(
        grpc: Code,
        http: u16,
        error_code: &str,
        reason: &str,
        message: impl Into<String>,
    ) -> Self {
        let mut e = Self::basic(grpc, http, error_code, message);
        e.0.reason = Some(reason.to_string());
        e.0.http_details = true;
        e
    }

    /// A plain status with no details.
    pub fn plain(grpc: Code, http: u16, error_code: &str, message: impl Into<String>) -> Self {
        let mut e = Self::basic(grpc, http, error_code, message);
        e.0.reason = None;
        e
    }

    pub fn with_metadata(mut self, key: &str, value: impl Into<String>) -> Self {
        self.0.info_metadata.insert(key.to_string(), value.into());
        self
    }

    pub fn with_resource(mut self, kind: &str, name: &str) -> Self {
        self.0.resource = Some((kind.to_string(), name.to_string()));
        self
    }

    pub fn with_bad_request(mut self, field: &str, description: impl Into<String>) -> Self {
        self.0.bad_request = Some((field.to_string(), description.into()));
        self
    }

    pub fn with_help(mut self, description: &str, url: &str) -> Self {
        self.0.help = Some((description.to_string(), url.to_string()));
        self
    }

    /// A malformed request (400 / INVALID_ARGUMENT).
    pub fn malformed(message: impl Into<String>) -> Self {
        Self::plain(Code::InvalidArgument, 400, "ERR_MALFORMED_REQUEST", message)
    }

    /// The gRPC code.
    pub fn code(&self) -> Code {
        self.0.grpc
    }

    /// The HTTP status.
    pub fn http_status(&self) -> u16 {
        self.0.http
    }

    fn details(&self) -> Vec<ErrorDetail> {
        let b = &*self.0;
        let mut details = Vec::new();
        if let Some(reason) = &b.reason {
            details.push(ErrorDetail::ErrorInfo(ErrorInfo::new(
                reason.clone(),
                b.domain.clone(),
                b.info_metadata.clone(),
            )));
        }
        if let Some((kind, name)) = &b.resource {
            details.push(ErrorDetail::ResourceInfo(ResourceInfo::new(
                kind.clone(),
                name.clone(),
                "",
                b.message.clone(),
            )));
        }
        if let Some((field, description)) = &b.bad_request {
            details.push(ErrorDetail::BadRequest(BadRequest::new(vec![
                FieldViolation::new(field.clone(), description.clone()),
            ])));
        }
        if let Some((description, url)) = &b.help {
            details.push(ErrorDetail::Help(Help::new(vec![HelpLink::new(
                description.clone(),
                url.clone(),
            )])));
        }
        details
    }

    /// The gRPC status. Built with tonic-types so the details trailer carries the same code and
    /// message as the status itself (the Python SDK rejects a mismatch).
    pub fn to_status(&self) -> tonic::Status {
        let b = &*self.0;
        if b.reason.is_none() {
            return tonic::Status::new(b.grpc, b.message.clone());
        }
        tonic::Status::with_error_details_vec(b.grpc, b.message.clone(), self.details())
    }

    /// Dapr's HTTP error body.
    pub fn to_json(&self) -> serde_json::Value {
        let b = &*self.0;
        let mut body = serde_json::json!({ "errorCode": b.error_code, "message": b.message });
        if b.http_details {
            let details: Vec<serde_json::Value> = self.details().iter().map(detail_json).collect();
            if !details.is_empty() {
                body["details"] = serde_json::Value::Array(details);
            }
        }
        body
    }
}

fn detail_json(d: &ErrorDetail) -> serde_json::Value {
    use serde_json::json;
    match d {
        ErrorDetail::ErrorInfo(i) => json!({
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": i.reason, "domain": i.domain, "metadata": i.metadata,
        }),
        ErrorDetail::ResourceInfo(r) => json!({
            "@type": "type.googleapis.com/google.rpc.ResourceInfo",
            "resource_type": r.resource_type, "resource_name": r.resource_name,
            "owner": r.owner, "description": r.description,
        }),
        ErrorDetail::BadRequest(b) => json!({
            "@type": "type.googleapis.com/google.rpc.BadRequest",
            "field_violations": b.field_violations.iter()
                .map(|v| json!({"field": v.field, "description": v.description})).collect::<Vec<_>>(),
        }),
        ErrorDetail::Help(h) => json!({
            "@type": "type.googleapis.com/google.rpc.Help",
            "links": h.links.iter().map(|l| json!({"description": l.description, "url": l.url})).collect::<Vec<_>>(),
        }),
        _ => json!({}),
    }
}

impl From<ApiError> for tonic::Status {
    fn from(e: ApiError) -> Self {
        e.to_status()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = axum::http::StatusCode::from_u16(self.0.http)
            .unwrap_or(axum::http::StatusCode::INTERNAL_SERVER_ERROR);
        (status, axum::Json(self.to_json())).into_response()
    }
}

/// What a component's error status means, by the pluggable error conventions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ComponentFailure {
    /// FAILED_PRECONDITION with one BadRequest violation on `etag`.
    EtagMismatch(String),
    /// INVALID_ARGUMENT with one BadRequest violation on `etag`.
    EtagInvalid(String),
    /// A rich "kit" error: ErrorInfo with `kit_error`, `http_code` and `tag`.
    Kit {
        code: Code,
        http: u16,
        tag: String,
        reason: String,
        domain: String,
        message: String,
    },
    /// Anything else.
    Other,
}

impl ComponentFailure {
    pub fn classify(err: &ComponentError) -> Self {
        let Some(status) = err.status() else {
            return Self::Other;
        };
        let details = status.get_error_details_vec();
        if let [only] = details.as_slice() {
            match only {
                ErrorDetail::BadRequest(b)
                    if b.field_violations.len() == 1 && b.field_violations[0].field == "etag" =>
                {
                    let description = b.field_violations[0].description.clone();
                    match status.code() {
                        Code::FailedPrecondition => return Self::EtagMismatch(description),
                        Code::InvalidArgument => return Self::EtagInvalid(description),
                        _ => {}
                    }
                }
                ErrorDetail::ErrorInfo(info)
                    if info.metadata.get("kit_error").is_some_and(|v| v == "true") =>
                {
                    let http = info
                        .metadata
                        .get("http_code")
                        .and_then(|c| c.parse().ok())
                        .unwrap_or(500);
                    let tag = info.metadata.get("tag").cloned().unwrap_or_default();
                    return Self::Kit {
                        code: status.code(),
                        http,
                        tag,
                        reason: info.reason.clone(),
                        domain: info.domain.clone(),
                        message: status.message().to_string(),
                    };
                }
                _ => {}
            }
        }
        Self::Other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_details_agree_with_status() {
        let e = ApiError::named(
            Code::InvalidArgument,
            400,
            "ERR_STATE_STORE_NOT_FOUND",
            "DAPR_STATE_NOT_FOUND",
            "state store x is not found",
        );
        let status = e.to_status();
        assert_eq!(status.code(), Code::InvalidArgument);
        let decoded =
            <tonic_types::pb::Status as prost::Message>::decode(status.details()).expect("details");
        assert_eq!(decoded.code, Code::InvalidArgument as i32);
        assert_eq!(decoded.message, "state store x is not found");
        let info = status.get_details_error_info().expect("error info");
        assert_eq!(info.reason, "DAPR_STATE_NOT_FOUND");
        assert_eq!(info.domain, DOMAIN);
        let body = e.to_json();
        assert_eq!(body["errorCode"], "ERR_STATE_STORE_NOT_FOUND");
        assert_eq!(body["details"][0]["reason"], "DAPR_STATE_NOT_FOUND");
    }

    #[test]
    fn classifies_component_etag_errors() {
        let status = tonic::Status::with_error_details(
            Code::FailedPrecondition,
            "mismatch",
            tonic_types::ErrorDetails::with_bad_request_violation("etag", "etag 3 is stale"),
        );
        let err = ComponentError::Status {
            component: "c".into(),
            method: "Set",
            status,
        };
        assert_eq!(
            ComponentFailure::classify(&err),
            ComponentFailure::EtagMismatch("etag 3 is stale".into())
        );
        let status = tonic::Status::new(Code::FailedPrecondition, "no details");
        let err = ComponentError::Status {
            component: "c".into(),
            method: "Set",
            status,
        };
        assert!(matches!(
            ComponentFailure::classify(&err),
            ComponentFailure::Other
        ));
    }
}
