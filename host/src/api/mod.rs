//! HTTP surface (axum). One file per resource; `error.rs` is the envelope, `auth.rs` the bearer
//! middleware/extractor, `body.rs` the JSON body extractor.

pub mod approvers;
pub mod audit;
pub mod auth;
pub mod body;
pub mod discovery;
pub mod error;
pub mod events;
pub mod execute;
pub mod interrupts;
pub mod otel_seam;
pub mod packs;
pub mod request_trace;
pub mod run_seams;
pub mod runs;
pub mod scopes;
pub mod seams;
pub mod webhooks;
pub mod workflows;

use std::sync::Arc;

use axum::extract::Request;
use axum::http::{header, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

use crate::engine::Engine;
use crate::events::EventLog;
use auth::KeyRing;
use discovery::Discovery;
use error::ApiError;

#[derive(Clone)]
pub struct AppState {
    pub engine: Arc<Engine>,
    pub events: Arc<EventLog>,
    pub keys: Arc<KeyRing>,
    pub discovery: Arc<Discovery>,
    pub max_body_bytes: usize,
    /// Interval between SSE keep-alive comments.
    pub sse_keepalive: std::time::Duration,
}

/// The full router. `extra` lets later subsystems add resource routers (they are merged before
/// the auth and envelope layers, so they get both for free).
pub fn router(state: AppState, extra: Vec<Router<AppState>>) -> Router {
    let mut r = Router::new()
        .route("/.well-known/openwop", get(discovery::well_known))
        .route("/v1/openapi.json", get(discovery::openapi))
        .route("/v1/runs", post(runs::create))
        .route("/v1/runs/{run_id}", get(runs::get))
        .route("/v1/runs/{run_id}/cancel", post(runs::cancel))
        .route("/v1/runs/{run_id}/events", get(events::sse))
        .route("/v1/runs/{run_id}/events/poll", get(events::poll))
        .route(
            "/v1/workflows",
            get(workflows::list).post(workflows::create),
        )
        .route(
            "/v1/workflows/{workflow_id}",
            get(workflows::get).put(workflows::put),
        );
    for e in extra {
        r = r.merge(e);
    }
    r.fallback(fallback)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_auth,
        ))
        .layer(middleware::from_fn(envelope_guard))
        // Outermost: the request span encloses auth and every handler, and a 5xx envelope
        // gains its correlation id after the guard has made it an envelope.
        .layer(middleware::from_fn(request_trace::trace_request))
        .with_state(state)
}

async fn fallback(method: Method, uri: Uri) -> ApiError {
    let path = uri.path();
    if path == "/v1" || path.starts_with("/v1/") {
        ApiError::not_found(format!("no route for {method} {path}"))
    } else {
        ApiError::validation(format!("unversioned path {path}: the API lives under /v1/"))
            .details(serde_json::json!({"supportedVersions": ["v1"]}))
    }
}

/// Last line of defence: any error response that is not already a JSON envelope (framework
/// rejections, 405s, ...) is replaced by one.
async fn envelope_guard(req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    let status = resp.status();
    if status.as_u16() < 400 {
        return resp;
    }
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.starts_with("application/json"))
        .unwrap_or(false);
    if is_json {
        return resp;
    }
    let mut err = ApiError::for_status(status);
    if status == StatusCode::METHOD_NOT_ALLOWED {
        if let Some(allow) = resp.headers().get(header::ALLOW).cloned() {
            err = err.header(header::ALLOW, allow);
        }
    }
    err.into_response()
}
