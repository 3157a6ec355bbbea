//! Workflow definitions: `GET /v1/workflows/{workflowId}` (spec) plus the host-extension
//! registration routes `POST /v1/workflows` and `PUT /v1/workflows/{workflowId}`, and a list.
//! Definitions registered here belong to the caller's tenant; the operator's are shared.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::auth::{Auth, Principal};
use super::body::JsonBody;
use super::error::ApiError;
use super::AppState;
use crate::engine::EngineError;
use crate::store::StoredWorkflow;

fn summary(wf: &StoredWorkflow) -> Value {
    json!({
        "workflowId": wf.id,
        "name": wf.definition.get("name"),
        "version": wf.version,
        "digest": wf.digest,
        "source": wf.source,
        "shared": wf.tenant_id == crate::store::SHARED_TENANT,
        "createdAt": wf.created_at,
        "updatedAt": wf.updated_at,
    })
}

/// Registers `def` for the caller's tenant. 200 when the caller already saw a definition of
/// that id (its own, or a shared one it now shadows), 201 otherwise.
async fn register(st: &AppState, principal: &Principal, def: Value) -> Result<Response, ApiError> {
    let existed = match def.get("id").and_then(Value::as_str) {
        Some(id) => st
            .engine
            .store()
            .get_workflow(&principal.tenant, id)
            .await?
            .is_some(),
        None => false,
    };
    match st
        .engine
        .register_workflow(&principal.tenant, def, "api")
        .await
    {
        Ok(wf) => {
            let status = if existed {
                StatusCode::OK
            } else {
                StatusCode::CREATED
            };
            Ok((status, axum::Json(summary(&wf))).into_response())
        }
        Err(EngineError::Invalid(problems)) => {
            Err(ApiError::problems("invalid workflow definition", &problems))
        }
        Err(EngineError::WorkflowNotFound(id)) => {
            Err(ApiError::not_found(format!("workflow '{id}' not found")))
        }
        Err(EngineError::Store(e)) => Err(e.into()),
    }
}

pub async fn create(
    State(st): State<AppState>,
    Auth(principal): Auth,
    JsonBody(def): JsonBody,
) -> Result<Response, ApiError> {
    register(&st, &principal, def).await
}

pub async fn put(
    State(st): State<AppState>,
    Auth(principal): Auth,
    Path(workflow_id): Path<String>,
    JsonBody(mut def): JsonBody,
) -> Result<Response, ApiError> {
    if let Value::Object(m) = &mut def {
        match m.get("id") {
            None => {
                m.insert("id".into(), json!(workflow_id));
            }
            Some(Value::String(id)) if *id == workflow_id => {}
            Some(_) => {
                return Err(ApiError::validation(format!(
                    "body id must equal the path workflowId '{workflow_id}'"
                )))
            }
        }
    }
    register(&st, &principal, def).await
}

pub async fn get(
    State(st): State<AppState>,
    Auth(principal): Auth,
    Path(workflow_id): Path<String>,
) -> Result<Response, ApiError> {
    match st
        .engine
        .store()
        .get_workflow(&principal.tenant, &workflow_id)
        .await?
    {
        Some(wf) => Ok(axum::Json(wf.definition).into_response()),
        None => Err(ApiError::not_found(format!(
            "workflow '{workflow_id}' not found"
        ))),
    }
}

pub async fn list(State(st): State<AppState>, Auth(principal): Auth) -> Result<Response, ApiError> {
    let all = st.engine.store().list_workflows(&principal.tenant).await?;
    Ok(
        axum::Json(json!({"workflows": all.iter().map(summary).collect::<Vec<_>>()}))
            .into_response(),
    )
}
