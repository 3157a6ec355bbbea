//! Run-state test seam (host-sample-test-seams.md): `POST /v1/host/sample/test/runs/{runId}/variables`
//! overwrites variables of a live run, so conformance can show that a started child run does
//! not see its parent's later mutations (`conformance-subworkflow-mid-run-mutation`).
//!
//! Mounted only with `wopbox serve --enable-test-seams`; otherwise the path is a 404.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};

use super::auth::Auth;
use super::body::JsonBody;
use super::error::ApiError;
use super::runs::load_run;
use super::AppState;
use crate::store::StoreError;

pub fn router() -> Router<AppState> {
    Router::new().route(
        "/v1/host/sample/test/runs/{run_id}/variables",
        post(set_variables),
    )
}

async fn set_variables(
    State(st): State<AppState>,
    Auth(principal): Auth,
    Path(run_id): Path<String>,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    load_run(&st, &principal, &run_id).await?;
    let writes = match body.get("variables") {
        Some(Value::Object(m)) => m.clone(),
        _ => return Err(ApiError::validation("`variables` must be an object")),
    };
    match st.engine.set_variables(&run_id, writes).await {
        Ok(variables) => Ok(Json(json!({"runId": run_id, "variables": variables}))),
        Err(StoreError::RunTerminal) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "run_terminal",
            format!("run '{run_id}' has ended; its variables are final"),
        )),
        Err(e) => Err(e.into()),
    }
}
