//! `GET /healthz` (liveness: the process answers) and `GET /readyz` (readiness: the store
//! answers a query and the host is not draining). Both are unauthenticated so orchestrators
//! can probe them without a credential, and both reveal nothing about runs or tenants.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::json;

use super::Ops;
use crate::api::error::ApiError;

/// A readiness probe that waits longer than this on the store reports it unreachable: a
/// wedged database must make the host unready, not make the probe hang.
const STORE_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

pub fn router(ops: Arc<Ops>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(ops)
}

async fn healthz() -> Response {
    axum::Json(json!({"status": "ok"})).into_response()
}

async fn readyz(State(ops): State<Arc<Ops>>) -> Response {
    // Any cheap real query proves the store answers; an unknown run id is one on every backend.
    let store = match tokio::time::timeout(STORE_PROBE_TIMEOUT, ops.store().get_run("readyz-probe"))
        .await
    {
        Ok(Ok(_)) => "ok",
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readiness: store query failed");
            "unreachable"
        }
        Err(_) => "timeout",
    };
    let draining = ops.is_draining();
    let checks = json!({"store": store, "draining": draining});
    if store == "ok" && !draining {
        return axum::Json(json!({"status": "ready", "checks": checks})).into_response();
    }
    let message = if draining {
        "the host is shutting down and admits no new work"
    } else {
        "the store is not answering"
    };
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "service_unavailable",
        message,
    )
    .details(json!({"checks": checks}))
    .into_response()
}
