//! JSON request bodies with enveloped rejections: 415 for a non-JSON content type, 413 over the
//! configured size limit, 400 for malformed JSON.

use axum::extract::{FromRequest, Request};
use axum::http::{header, StatusCode};
use serde_json::Value;

use super::error::ApiError;
use super::AppState;

pub struct JsonBody(pub Value);

/// Like [`JsonBody`] but an empty body (no content) is allowed.
pub struct OptionalJsonBody(pub Option<Value>);

fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!("request body exceeds {limit} bytes"),
    )
    .details(serde_json::json!({"maxRequestBodyBytes": limit}))
}

async fn read(req: Request, limit: usize, optional: bool) -> Result<Option<Value>, ApiError> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.map(|n| n > limit as u64).unwrap_or(false) {
        return Err(too_large(limit));
    }
    let ctype = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_ascii_lowercase);
    let bytes = axum::body::to_bytes(req.into_body(), limit)
        .await
        .map_err(|_| too_large(limit))?;
    if bytes.is_empty() && optional {
        return Ok(None);
    }
    let is_json = ctype
        .as_deref()
        .map(|c| {
            let mime = c.split(';').next().unwrap_or("").trim();
            mime == "application/json"
                || (mime.starts_with("application/") && mime.ends_with("+json"))
        })
        .unwrap_or(false);
    if !is_json {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "request body must be JSON (Content-Type: application/json)",
        ));
    }
    if bytes.is_empty() {
        return Err(ApiError::validation(
            "request body is empty; a JSON object is required",
        ));
    }
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| ApiError::validation(format!("malformed JSON body: {e}")))
}

impl FromRequest<AppState> for JsonBody {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        Ok(JsonBody(
            read(req, state.max_body_bytes, false)
                .await?
                .unwrap_or(Value::Null),
        ))
    }
}

impl FromRequest<AppState> for OptionalJsonBody {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        Ok(OptionalJsonBody(
            read(req, state.max_body_bytes, true).await?,
        ))
    }
}
