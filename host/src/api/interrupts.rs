//! Interrupt resolution surfaces (interrupt.md §"Resolution endpoints"):
//! - `POST /v1/runs/{runId}/interrupts/{nodeId}` — bearer-authenticated, run-scoped;
//! - `GET|POST /v1/interrupts/{token}` — the signed token is the credential (no bearer);
//! - `POST /v1/x-wopbox/external-events` — an external event delivered by its `correlationId`
//!   (bearer with `approvals:respond`, the run's tenant).
//!
//! Both end in [`Interrupts::resolve`](crate::interrupts::Interrupts::resolve); these handlers
//! only locate the interrupt and map errors to the canonical envelope.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use serde_json::{json, Value};

use super::approvers;
use super::auth::Auth;
use super::body::{JsonBody, OptionalJsonBody};
use super::error::ApiError;
use super::runs::load_run;
use super::AppState;
use crate::interrupts::quorum::QuorumRule;
use crate::interrupts::resume::ResumeError;
use crate::interrupts::token::{digest, Intent};
use crate::interrupts::{ResolveError, Via};

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/v1/runs/{run_id}/interrupts/{node_id}",
            post(resolve_by_node),
        )
        .route(
            "/v1/interrupts/{token}",
            post(resolve_by_token).get(inspect),
        )
        .route("/v1/x-wopbox/external-events", post(deliver_by_correlation))
}

/// Map a resolve failure to the envelope. The run-scoped surface reports a cancelled run as
/// `422 interrupt_cancelled`; for a token it is an invalidated token, `409`.
pub fn api_error(e: ResolveError, via: Via) -> ApiError {
    let new = ApiError::new;
    match e {
        ResolveError::Malformed => ApiError::validation("the interrupt token is malformed"),
        ResolveError::NotFound => new(
            StatusCode::NOT_FOUND,
            "interrupt_not_found",
            "no interrupt matches",
        ),
        ResolveError::Expired => new(
            StatusCode::GONE,
            "interrupt_expired",
            "the interrupt token has expired",
        ),
        ResolveError::AlreadyResolved => new(
            StatusCode::CONFLICT,
            "interrupt_already_resolved",
            "the interrupt is no longer pending",
        ),
        ResolveError::Cancelled if via == Via::Run => new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "interrupt_cancelled",
            "the run was cancelled while the interrupt was pending",
        ),
        ResolveError::Cancelled => new(
            StatusCode::CONFLICT,
            "interrupt_already_resolved",
            "the token was invalidated when its run ended",
        ),
        // interrupt-profiles.md (cascade-cancel): 410 on the run-scoped route; a token keeps
        // RFC 0093's 409 for "invalidated by run cancel", which the profile also accepts.
        ResolveError::Gone if via == Via::Run => new(
            StatusCode::GONE,
            "interrupt_gone",
            "the interrupt was invalidated when the parent run cancelled this run",
        ),
        ResolveError::Gone => new(
            StatusCode::CONFLICT,
            "interrupt_already_resolved",
            "the token was invalidated when the parent run cancelled this run",
        ),
        ResolveError::InspectOnly => new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this token may only inspect the interrupt, not resolve it",
        ),
        ResolveError::VoteConflict {
            voter,
            prior_action,
        } => ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!("{voter} already voted '{prior_action}' on this interrupt; a vote cannot be changed"),
        )
        .details(json!({"reason": "vote_already_cast", "voter": voter, "priorAction": prior_action})),
        ResolveError::Resume(ResumeError::Invalid { message, details }) => {
            ApiError::validation(message).details(details)
        }
        ResolveError::Resume(ResumeError::CorrelationMismatch { fields }) => new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "correlation_mismatch",
            "the event does not match the interrupt's correlation; the run keeps waiting",
        )
        .details(json!({"fields": fields})),
        ResolveError::Store(e) => ApiError::internal(e),
    }
}

fn body_or_empty(body: Option<Value>) -> Value {
    body.unwrap_or_else(|| json!({}))
}

pub async fn resolve_by_node(
    State(st): State<AppState>,
    Auth(principal): Auth,
    Path((run_id, node_id)): Path<(String, String)>,
    OptionalJsonBody(body): OptionalJsonBody,
) -> Result<Response, ApiError> {
    load_run(&st, &principal, &run_id).await?;
    let interrupts = st.engine.interrupts();
    let rec = interrupts
        .for_node(&run_id, &node_id)
        .await
        .map_err(|e| api_error(e, Via::Run))?;
    // The host's resolution layer decides who may answer (interrupt.md §"Host-side
    // enforcement boundary"), before the engine sees the resume.
    let body = body_or_empty(body);
    if rec.kind == "approval" {
        // A quorum approval counts one vote per principal (interrupt-profiles.md
        // `openwop-interrupt-quorum`).
        if let Some(rule) = QuorumRule::from_data(&rec.data) {
            let voter = approvers::voter(&rec.data, &principal, &body)?;
            let out = interrupts
                .vote(&rec, rule, &body, &voter)
                .await
                .map_err(|e| api_error(e, Via::Run))?;
            return Ok(axum::Json(out).into_response());
        }
        approvers::check_bearer(&rec.data, &principal)?;
    }
    let out = interrupts
        .resolve(&rec, &body, &principal.id, Via::Run)
        .await
        .map_err(|e| api_error(e, Via::Run))?;
    Ok(axum::Json(out).into_response())
}

/// Deliver an external event to the interrupt its `correlationId` names
/// (`openwop-interrupt-external-event`): body `{correlationId, eventId?, eventPayload}`.
pub async fn deliver_by_correlation(
    State(st): State<AppState>,
    Auth(principal): Auth,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let Some(correlation) = body.get("correlationId").and_then(Value::as_str) else {
        return Err(ApiError::validation("correlationId (a string) is required")
            .details(json!({"path": "/correlationId"})));
    };
    let interrupts = st.engine.interrupts();
    let rec = interrupts
        .by_correlation(correlation)
        .await
        .map_err(|e| api_error(e, Via::Run))?;
    // Another tenant's interrupt is as unknown as a made-up correlation id.
    match st.engine.store().get_run(&rec.run_id).await? {
        Some(run) if run.tenant_id == principal.tenant => {}
        _ => return Err(api_error(ResolveError::NotFound, Via::Run)),
    }
    let out = interrupts
        .resolve(&rec, &body, &principal.id, Via::Run)
        .await
        .map_err(|e| api_error(e, Via::Run))?;
    Ok(axum::Json(out).into_response())
}

/// Who resolved through a token: an opaque id of the token (never the token).
fn token_actor(token: &str) -> String {
    format!("token:{}", &digest(token)[..16])
}

pub async fn resolve_by_token(
    State(st): State<AppState>,
    Path(token): Path<String>,
    body: Result<OptionalJsonBody, ApiError>,
) -> Result<Response, ApiError> {
    let interrupts = st.engine.interrupts();
    // The token is checked before the body, so an unknown token is a 404 whatever was posted.
    let (rec, intent) = interrupts
        .by_token(&token)
        .await
        .map_err(|e| api_error(e, Via::Token))?;
    if intent != Intent::Resolve {
        return Err(api_error(ResolveError::InspectOnly, Via::Token));
    }
    approvers::check_token(&rec.data)?;
    let OptionalJsonBody(body) = body?;
    let out = interrupts
        .resolve(&rec, &body_or_empty(body), &token_actor(&token), Via::Token)
        .await
        .map_err(|e| api_error(e, Via::Token))?;
    Ok(axum::Json(out).into_response())
}

pub async fn inspect(
    State(st): State<AppState>,
    Path(token): Path<String>,
) -> Result<Response, ApiError> {
    let interrupts = st.engine.interrupts();
    let (rec, intent) = interrupts
        .by_token(&token)
        .await
        .map_err(|e| api_error(e, Via::Token))?;
    // A token is invalidated once its interrupt is resolved or its run ends.
    interrupts
        .check_open(&rec)
        .await
        .map_err(|e| api_error(e, Via::Token))?;
    let mut v = json!({
        "runId": rec.run_id, "nodeId": rec.node_id, "interruptId": rec.interrupt_id,
        "kind": rec.kind, "key": rec.key, "status": rec.status, "data": rec.data,
        "requestedAt": rec.requested_at, "expiresAt": rec.token_expires_at,
        "intent": match intent { Intent::Resolve => "resolve", Intent::Inspect => "inspect" },
    });
    if let Some(t) = rec.timeout_ms {
        v["timeoutMs"] = json!(t);
    }
    Ok(axum::Json(v).into_response())
}
