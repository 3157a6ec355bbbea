//! `POST /v1/runs`, `GET /v1/runs/{runId}`, `POST /v1/runs/{runId}/cancel`.

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use serde_json::{json, Map, Value};

use super::auth::{Auth, Principal};
use super::body::{JsonBody, OptionalJsonBody};
use super::error::ApiError;
use super::request_trace::{set_trace_headers, RequestTrace};
use super::AppState;
use crate::engine::{canonical_json, sha256_hex, CancelOutcome, EngineError};
use crate::store::{CreateRunOutcome, IdempotencyClaim, RunRecord};
use crate::telemetry::trace::{run_trace, TRACE_CONTEXT};
use crate::telemetry::TraceContext;

pub const REPLAY_HEADER: &str = "openwop-idempotent-replay";

fn field_error(path: &str, message: &str) -> ApiError {
    ApiError::validation(message.to_string())
        .details(json!({"errors": [{"path": path, "code": "invalid_value", "message": message}]}))
}

/// Validate an `Idempotency-Key` header value (1..=255 visible ASCII characters).
pub fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let s = v
        .to_str()
        .map_err(|_| ApiError::validation("Idempotency-Key must be visible ASCII"))?;
    if s.is_empty() || s.len() > 255 || !s.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        return Err(ApiError::validation(
            "Idempotency-Key must be 1-255 visible ASCII characters",
        ));
    }
    Ok(Some(s.to_string()))
}

/// Storage key for a Layer-1 idempotency record: scoped per credential and endpoint.
pub fn idempotency_scope(principal: &Principal, endpoint: &str, key: &str) -> String {
    sha256_hex(format!("{}\u{0}{}\u{0}{}", principal.id, endpoint, key).as_bytes())
}

pub async fn create(
    State(st): State<AppState>,
    Auth(principal): Auth,
    trace: Option<Extension<RequestTrace>>,
    headers: HeaderMap,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let idem_key = idempotency_key(&headers)?;
    let obj = body
        .as_object()
        .ok_or_else(|| ApiError::validation("request body must be a JSON object"))?;
    let workflow_id = match obj.get("workflowId") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(_) => {
            return Err(field_error(
                "/workflowId",
                "workflowId must be a non-empty string",
            ))
        }
        None => return Err(field_error("/workflowId", "workflowId is required")),
    };
    let inputs: Map<String, Value> = match obj.get("inputs") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(_) => return Err(field_error("/inputs", "inputs must be an object")),
    };
    if let Some(t) = obj.get("tenantId") {
        match t.as_str() {
            Some(t) if t == principal.tenant => {}
            Some(_) => {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "tenant_membership_required",
                    "the credential is not a member of the requested tenant",
                ))
            }
            None => return Err(field_error("/tenantId", "tenantId must be a string")),
        }
    }
    let mut options = Map::new();
    for (key, ok) in [
        (
            "tags",
            obj.get("tags").map(|v| {
                v.as_array()
                    .map(|a| a.iter().all(Value::is_string))
                    .unwrap_or(false)
            }),
        ),
        ("metadata", obj.get("metadata").map(Value::is_object)),
        (
            "configurable",
            obj.get("configurable").map(Value::is_object),
        ),
        ("scopeId", obj.get("scopeId").map(Value::is_string)),
        ("callbackUrl", obj.get("callbackUrl").map(Value::is_string)),
    ] {
        match ok {
            Some(true) => {
                options.insert(key.to_string(), obj[key].clone());
            }
            Some(false) if obj[key].is_null() => {}
            Some(false) => {
                return Err(field_error(
                    &format!("/{key}"),
                    &format!("{key} has the wrong type"),
                ))
            }
            None => {}
        }
    }

    // Admission before any work: a refused request leaves nothing behind.
    let admission = st.engine.admission();
    let slot = admission
        .try_admit(&principal.tenant)
        .map_err(|r| crate::ops::admission::refusal(r, admission.limits().retry_after_secs))?;
    let prepared = match st
        .engine
        .prepare_run(&principal.tenant, &workflow_id, &inputs)
        .await
    {
        Ok(p) => p,
        Err(EngineError::WorkflowNotFound(id)) => {
            return Err(ApiError::validation(format!("unknown workflowId '{id}'"))
                .details(json!({"workflowId": id, "reason": "workflow_not_found"})))
        }
        Err(EngineError::Invalid(p)) => return Err(ApiError::problems("invalid run inputs", &p)),
        Err(EngineError::Store(e)) => return Err(e.into()),
    };

    // The run continues the caller's trace (a valid incoming `traceparent`) in a span of its
    // own; persisted with the run so whichever process drives it stays in the same trace.
    let (run_trace, parent_span) = match &trace {
        Some(Extension(t)) => t.for_run(),
        None => (TraceContext::new_root(), None),
    };
    options.insert(
        TRACE_CONTEXT.into(),
        run_trace.to_json(parent_span.as_deref()),
    );
    let run = prepared.into_record(
        principal.tenant.clone(),
        principal.id.clone(),
        Value::Object(inputs),
        Value::Object(options),
    );
    let (run_id, now) = (run.run_id.clone(), run.created_at.clone());
    let response = json!({
        "runId": run_id,
        "status": "pending",
        "workflowId": workflow_id,
        "createdAt": now,
        "statusUrl": format!("/v1/runs/{run_id}"),
        "eventsUrl": format!("/v1/runs/{run_id}/events"),
        "pollUrl": format!("/v1/runs/{run_id}/events/poll"),
    });
    let claim = idem_key.map(|k| IdempotencyClaim {
        scope_key: idempotency_scope(&principal, "POST /v1/runs", &k),
        request_digest: sha256_hex(canonical_json(&body).as_bytes()),
        response_status: 201,
        response_body: response.clone(),
    });
    let tenant_id = run.tenant_id.clone();
    match st
        .engine
        .create_and_start(run, claim.as_ref(), slot)
        .await?
    {
        CreateRunOutcome::Created => {
            tracing::info!(
                metricKind = "openwop.run.created",
                runId = %run_id,
                workflowId = %workflow_id,
                tenantId = %principal.tenant,
                "run created"
            );
            st.engine.admission().counters.created(&tenant_id);
            let location = HeaderValue::from_str(&format!("/v1/runs/{run_id}")).unwrap();
            let mut resp = (
                StatusCode::CREATED,
                [(header::LOCATION, location)],
                axum::Json(response),
            )
                .into_response();
            set_trace_headers(resp.headers_mut(), &run_trace);
            Ok(resp)
        }
        CreateRunOutcome::Replay { status, body } => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::CREATED);
            let mut resp = (status, axum::Json(body.clone())).into_response();
            resp.headers_mut().insert(
                HeaderName::from_static(REPLAY_HEADER),
                HeaderValue::from_static("true"),
            );
            if let Some(id) = body.get("runId").and_then(Value::as_str) {
                if let Ok(v) = HeaderValue::from_str(&format!("/v1/runs/{id}")) {
                    resp.headers_mut().insert(header::LOCATION, v);
                }
            }
            Ok(resp)
        }
        CreateRunOutcome::Mismatch => Err(ApiError::new(
            StatusCode::CONFLICT,
            "idempotency_key_mismatch",
            "this Idempotency-Key was already used with a different request body",
        )),
    }
}

/// Load a run visible to `principal` (other tenants' runs are indistinguishable from absent).
pub async fn load_run(
    st: &AppState,
    principal: &Principal,
    run_id: &str,
) -> Result<RunRecord, ApiError> {
    let not_found = || ApiError::not_found(format!("run '{run_id}' not found"));
    match st.engine.store().get_run(run_id).await? {
        Some(r) if r.tenant_id == principal.tenant => Ok(r),
        Some(_) => Err(not_found()),
        // Retention deleted it (production-profile.md §"Event retention": 410 when expiry is
        // known and intentional). Another tenant's expired run stays indistinguishable.
        None => match st.engine.store().expired_run(run_id).await? {
            Some(x) if x.tenant_id == principal.tenant => Err(ApiError::new(
                StatusCode::GONE,
                "run_expired",
                format!(
                    "run '{run_id}' finished at {} and its snapshot and events were deleted after the retention window",
                    x.completed_at
                ),
            )
            .details(json!({"runId": run_id, "completedAt": x.completed_at, "expiredAt": x.expired_at}))),
            _ => Err(not_found()),
        },
    }
}

pub async fn get(
    State(st): State<AppState>,
    Auth(principal): Auth,
    Path(run_id): Path<String>,
) -> Result<Response, ApiError> {
    let run = load_run(&st, &principal, &run_id).await?;
    let mut snap = run.snapshot();
    let trace = run_trace(&run).0;
    if !run.is_terminal() {
        // A parked run surfaces its interrupt (and the tokens that resolve / inspect it).
        let pending = st.engine.interrupts().pending_views(&run_id).await?;
        if let Some(first) = pending.first() {
            snap["interrupt"] = first.clone();
            snap["interrupts"] = Value::Array(pending);
        }
    }
    let children = st.engine.child_runs(&run.run_id).await?;
    if !children.is_empty() {
        snap["childRuns"] = Value::Array(children);
    }
    let mut resp = axum::Json(snap).into_response();
    set_trace_headers(resp.headers_mut(), &trace);
    Ok(resp)
}

pub async fn cancel(
    State(st): State<AppState>,
    Auth(principal): Auth,
    Path(run_id): Path<String>,
    OptionalJsonBody(body): OptionalJsonBody,
) -> Result<Response, ApiError> {
    load_run(&st, &principal, &run_id).await?;
    let reason = match body.as_ref().and_then(|b| b.get("reason")) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(field_error("/reason", "reason must be a string")),
    };
    let body = match st.engine.cancel(&run_id, reason).await? {
        CancelOutcome::Cancelling => json!({"runId": run_id, "status": "cancelling"}),
        CancelOutcome::Cancelled => json!({"runId": run_id, "status": "cancelled"}),
        CancelOutcome::AlreadyTerminal(status) => {
            json!({"runId": run_id, "status": status, "alreadyTerminal": true})
        }
        CancelOutcome::NotFound => {
            return Err(ApiError::not_found(format!("run '{run_id}' not found")))
        }
    };
    Ok(axum::Json(body).into_response())
}
