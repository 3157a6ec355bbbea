//! The canonical error envelope (schemas/error-envelope.schema.json): exactly
//! `{error, message, details?}` on every error response.

use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: String,
    pub message: String,
    pub details: Option<Value>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code: code.to_string(),
            message: message.into(),
            details: None,
            headers: Vec::new(),
        }
    }
    pub fn details(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }
    pub fn header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }
    pub fn unauthenticated() -> Self {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "a valid bearer API key is required",
        )
        .header(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"))
    }
    /// `403 forbidden` for a valid key that lacks `scope` (auth.md); the scope is named under
    /// `details.scopeRequired` because the envelope allows no other top-level keys.
    pub fn forbidden_scope(scope: &str) -> Self {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("this API key lacks the scope '{scope}' required here"),
        )
        .details(json!({"scopeRequired": scope}))
    }
    pub fn validation(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "validation_error", message)
    }
    /// `400 validation_error` listing every problem under `details.errors`; the message names
    /// the first one.
    pub fn problems(context: &str, problems: &[crate::engine::dag::Problem]) -> Self {
        let first = problems
            .first()
            .map(|p| format!("{}: {}", p.path, p.message))
            .unwrap_or_default();
        let more = match problems.len() {
            0 | 1 => String::new(),
            n => format!(" (and {} more)", n - 1),
        };
        ApiError::validation(format!("{context}: {first}{more}"))
            .details(json!({"errors": problems.iter().map(|p| p.to_json()).collect::<Vec<_>>()}))
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }
    pub fn internal(err: impl std::fmt::Display) -> Self {
        tracing::error!(error = %err, "internal error");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "internal error",
        )
    }
    /// Envelope for a bare status (used by the catch-all guard).
    pub fn for_status(status: StatusCode) -> Self {
        let (code, msg) = match status.as_u16() {
            400 => ("validation_error", "the request is invalid"),
            401 => ("unauthenticated", "a valid bearer API key is required"),
            403 => ("forbidden", "forbidden"),
            404 => ("not_found", "not found"),
            405 => ("method_not_allowed", "method not allowed for this route"),
            406 => ("not_acceptable", "not acceptable"),
            408 => ("request_timeout", "request timed out"),
            409 => ("conflict", "conflict"),
            413 => ("payload_too_large", "request body too large"),
            415 => ("unsupported_media_type", "unsupported content type"),
            422 => ("validation_error", "the request is invalid"),
            429 => ("rate_limited", "too many requests"),
            503 => ("service_unavailable", "service unavailable"),
            s if s >= 500 => ("internal_error", "internal error"),
            _ => ("error", "request failed"),
        };
        ApiError::new(status, code, msg)
    }
    pub fn body(&self) -> Value {
        let mut b = json!({"error": self.code, "message": self.message});
        if let Some(d) = &self.details {
            b["details"] = d.clone();
        }
        b
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, axum::Json(self.body())).into_response();
        for (k, v) in self.headers {
            resp.headers_mut().insert(k, v);
        }
        resp
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        ApiError::internal(e)
    }
}
