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

/// How much of an over-limit body is still read (and thrown away) before answering 413. A client
/// that is still sending when the server answers and closes gets a connection reset instead of
/// the 413; draining a bounded amount lets it finish and read the envelope. Bigger bodies are cut
/// off once this much has been discarded.
pub const DRAIN_SLACK_BYTES: u64 = 8 * 1024 * 1024;

/// Why [`read_bounded`] gave up.
#[derive(Debug)]
pub enum BodyError {
    TooLarge,
    Broken,
}

/// Reads at most `limit` bytes of `body`. Over the limit (declared or actual) the rest is drained
/// up to [`DRAIN_SLACK_BYTES`] so the caller's 413 reaches the client, then `TooLarge`.
pub async fn read_bounded(
    body: axum::body::Body,
    declared: Option<u64>,
    limit: usize,
) -> Result<axum::body::Bytes, BodyError> {
    use futures::StreamExt;
    let limit = limit as u64;
    let mut stream = body.into_data_stream();
    if declared.is_some_and(|n| n > limit) {
        if declared.is_some_and(|n| n <= limit + DRAIN_SLACK_BYTES) {
            let mut seen = 0u64;
            while let Some(Ok(chunk)) = stream.next().await {
                seen += chunk.len() as u64;
                if seen > limit + DRAIN_SLACK_BYTES {
                    break;
                }
            }
        }
        return Err(BodyError::TooLarge);
    }
    let mut buf = Vec::with_capacity(declared.unwrap_or(0).min(limit) as usize);
    let mut seen = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|_| BodyError::Broken)?;
        seen += chunk.len() as u64;
        if seen > limit {
            if seen > limit + DRAIN_SLACK_BYTES {
                return Err(BodyError::TooLarge);
            }
            continue; // keep draining; the answer is already decided
        }
        buf.extend_from_slice(&chunk);
    }
    if seen > limit {
        return Err(BodyError::TooLarge);
    }
    Ok(buf.into())
}

async fn read(req: Request, limit: usize, optional: bool) -> Result<Option<Value>, ApiError> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let ctype = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_ascii_lowercase);
    let bytes = match read_bounded(req.into_body(), declared, limit).await {
        Ok(b) => b,
        Err(BodyError::TooLarge) => return Err(too_large(limit)),
        Err(BodyError::Broken) => {
            return Err(ApiError::validation("the request body could not be read"))
        }
    };
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
