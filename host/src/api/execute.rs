//! `POST /v1/x-wopbox/execute` (host extension): execute one pack node for
//! the caller's tenant and return its outcome — the API an orchestrating
//! OpenWOP host (another wopbox with `--executor remote:URL`, or a host in
//! any language) calls to run untrusted packs in this host's sandbox.
//!
//! The wire types and the execution live in [`crate::packs::remote`]; this
//! file is the HTTP glue: body size limit (`--max-body-bytes`, as every JSON
//! route), auth and tenant from the bearer, and status mapping:
//!
//! * 200 — the node ran: `outcome` is `completed`, `failed` (a sandbox code
//!   such as `sandbox_memory_exceeded`, or the guest's own) or `suspended`.
//! * 400 — malformed request or limits; 404 — unknown pack or typeId.
//! * 503 `sandbox_overloaded` + `Retry-After` — the sandbox queue is full.

use std::sync::Arc;

use axum::http::{header, HeaderValue, StatusCode};
use axum::routing::post;
use axum::{Extension, Json, Router};
use serde_json::json;

use super::auth::Auth;
use super::body::JsonBody;
use super::error::ApiError;
use super::AppState;
use crate::packs::remote::{
    execute_for_tenant, ExecuteError, ExecuteRequest, ExecuteResponse, EXECUTE_PATH,
};
use crate::packs::PackService;

/// Seconds a client is told to wait after an overload.
const RETRY_AFTER_SECS: &str = "1";

impl From<ExecuteError> for ApiError {
    fn from(e: ExecuteError) -> Self {
        match &e {
            ExecuteError::Invalid(_) => ApiError::validation(e.to_string()),
            ExecuteError::UnknownPack(p) => {
                ApiError::not_found(e.to_string()).details(json!({"pack": p}))
            }
            ExecuteError::UnknownNodeType { pack, type_id } => ApiError::new(
                StatusCode::NOT_FOUND,
                "unsupported_node_type",
                e.to_string(),
            )
            .details(json!({"pack": pack, "typeId": type_id})),
            ExecuteError::Overloaded { queued } => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "sandbox_overloaded",
                e.to_string(),
            )
            .details(json!({"queued": queued}))
            .header(
                header::RETRY_AFTER,
                HeaderValue::from_static(RETRY_AFTER_SECS),
            ),
        }
    }
}

/// The execution route, sharing the pack registry (and so its sandbox,
/// grants policy, limits and concurrency bounds) with local runs.
pub fn router(service: Arc<PackService>) -> Router<AppState> {
    Router::new()
        .route(EXECUTE_PATH, post(execute))
        .layer(Extension(service))
}

async fn execute(
    Auth(principal): Auth,
    Extension(service): Extension<Arc<PackService>>,
    JsonBody(body): JsonBody,
) -> Result<Json<ExecuteResponse>, ApiError> {
    let req: ExecuteRequest = serde_json::from_value(body)
        .map_err(|e| ApiError::validation(format!("invalid execution request: {e}")))?;
    Ok(Json(
        execute_for_tenant(&service, &principal.tenant, req).await?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::response::IntoResponse;

    #[test]
    fn refusals_map_to_statuses_and_an_overload_says_when_to_retry() {
        let overloaded: ApiError = ExecuteError::Overloaded { queued: 9 }.into();
        let resp = overloaded.into_response();
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(resp.headers().get(header::RETRY_AFTER).unwrap(), "1");
        let unknown: ApiError = ExecuteError::UnknownNodeType {
            pack: "p@1".into(),
            type_id: "t".into(),
        }
        .into();
        assert_eq!(
            (unknown.status, unknown.code.as_str()),
            (StatusCode::NOT_FOUND, "unsupported_node_type")
        );
        let missing: ApiError = ExecuteError::UnknownPack("p@1".into()).into();
        assert_eq!(missing.status, StatusCode::NOT_FOUND);
        let bad: ApiError = ExecuteError::Invalid("x".into()).into();
        assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    }
}
