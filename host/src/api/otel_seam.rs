//! The OTel collector test seam (observability.md §"OTel collector test seam", RFC 0034):
//! `GET /v1/host/sample/test/otel/spans?runId=<id>` → `{spans: [{name, attributes, events,
//! traceId, spanId, parentSpanId, ended}]}`, every `openwop.*` span the host opened for the
//! run. Mounted (and advertised as `capabilities.observability.testSeams.otelScrape`) only
//! with `wopbox serve --enable-test-seams`, which is also what installs the recorder.

use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use super::auth::Auth;
use super::error::ApiError;
use super::runs::load_run;
use super::AppState;
use crate::telemetry::SpanRecorder;

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/host/sample/test/otel/spans", get(spans))
}

async fn spans(
    State(st): State<AppState>,
    Auth(principal): Auth,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let run_id = q
        .get("runId")
        .filter(|r| !r.is_empty())
        .ok_or_else(|| ApiError::validation("query parameter `runId` is required"))?;
    // Spans are tenant data like the run itself: another tenant's run is not found.
    load_run(&st, &principal, run_id).await?;
    Ok(Json(json!({"spans": SpanRecorder::global().spans(run_id)})))
}
