//! `GET /v1/audit/verify?fromSeq=&toSeq=` (openwop-audit-log-integrity §4).

use std::sync::Arc;

use axum::extract::RawQuery;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use serde_json::json;

use super::auth::Auth;
use super::error::ApiError;
use super::AppState;
use crate::audit::AuditLog;

pub fn router(audit: Arc<AuditLog>) -> Router<AppState> {
    Router::new()
        .route("/v1/audit/verify", get(verify))
        .layer(Extension(audit))
}

/// A non-negative integer query parameter; absent = `None`.
fn seq_param(q: &Option<String>, name: &str) -> Result<Option<i64>, ApiError> {
    let Some(q) = q.as_deref() else {
        return Ok(None);
    };
    let Some((_, v)) = url::form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == name) else {
        return Ok(None);
    };
    match v.trim().parse::<i64>() {
        Ok(n) if n >= 0 => Ok(Some(n)),
        _ => Err(ApiError::validation(format!("{name} must be a non-negative integer"))
            .details(json!({"errors": [{"path": format!("?{name}"), "code": "invalid_value", "message": "must be a non-negative integer"}]}))),
    }
}

async fn verify(
    Extension(audit): Extension<Arc<AuditLog>>,
    Auth(_principal): Auth,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let from = seq_param(&q, "fromSeq")?.unwrap_or(0);
    let to = match seq_param(&q, "toSeq")? {
        Some(t) => t,
        None => audit.store().audit_head().await?.max(from),
    };
    if to < from {
        return Err(ApiError::validation("toSeq must be >= fromSeq")
            .details(json!({"fromSeq": from, "toSeq": to})));
    }
    let report = audit.verify(from, to).await?;
    Ok(axum::Json(report.to_json()).into_response())
}
