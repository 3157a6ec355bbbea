//! `POST /v1/webhooks`, `DELETE /v1/webhooks/{webhookId}`,
//! `GET /v1/webhooks/{webhookId}/dead-letters` (RFC 0188 shape; host extension in v1).

use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Extension, Router};
use base64::Engine as _;
use serde_json::{json, Value};

use super::auth::Auth;
use super::body::JsonBody;
use super::error::ApiError;
use super::runs::{idempotency_key, idempotency_scope, REPLAY_HEADER};
use super::AppState;
use crate::engine::{canonical_json, sha256_hex};
use crate::webhooks::ssrf::Rejection;
use crate::webhooks::{IdempotencyScope, Registered, Registration, WebhookError, WebhookService};

const MAX_EVENT_TYPES: usize = 64;
const MAX_TAGS: usize = 64;

pub fn router(service: Arc<WebhookService>) -> Router<AppState> {
    Router::new()
        .route("/v1/webhooks", post(register))
        .route("/v1/webhooks/{webhook_id}", delete(unregister))
        .route("/v1/webhooks/{webhook_id}/dead-letters", get(dead_letters))
        .layer(Extension(service))
}

fn tenant_forbidden() -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "tenant_membership_required",
        "the credential is not a member of the requested tenant",
    )
}

fn not_found(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "subscription_not_found",
        format!("webhook subscription '{id}' not found"),
    )
    .details(json!({"webhookId": id}))
}

fn field_error(path: &str, message: &str) -> ApiError {
    ApiError::validation(message.to_string())
        .details(json!({"errors": [{"path": path, "code": "invalid_value", "message": message}]}))
}

/// A non-empty list of distinct non-empty strings (at most `max`, each at most 128 chars).
fn string_list(v: &Value, path: &str, max: usize) -> Result<Vec<String>, ApiError> {
    let items = v
        .as_array()
        .ok_or_else(|| field_error(path, &format!("{} must be an array of strings", &path[1..])))?;
    if items.is_empty() {
        return Err(field_error(
            path,
            &format!("{} must not be empty", &path[1..]),
        ));
    }
    if items.len() > max {
        return Err(field_error(
            path,
            &format!("{} accepts at most {max} entries", &path[1..]),
        ));
    }
    let mut out: Vec<String> = Vec::new();
    for it in items {
        match it.as_str() {
            Some(s) if !s.is_empty() && s.len() <= 128 => {
                if !out.iter().any(|o| o == s) {
                    out.push(s.to_string());
                }
            }
            _ => {
                return Err(field_error(
                    path,
                    &format!(
                        "{} entries must be non-empty strings (<= 128 chars)",
                        &path[1..]
                    ),
                ))
            }
        }
    }
    Ok(out)
}

async fn register(
    State(_st): State<AppState>,
    Extension(svc): Extension<Arc<WebhookService>>,
    Auth(principal): Auth,
    headers: HeaderMap,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let idem_key = idempotency_key(&headers)?;
    let obj = body
        .as_object()
        .ok_or_else(|| ApiError::validation("request body must be a JSON object"))?;
    let url = match obj.get("url") {
        Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
        Some(_) => return Err(field_error("/url", "url must be a non-empty string")),
        None => return Err(field_error("/url", "url is required")),
    };
    // Syntax and SSRF first: a probe with a forbidden URL must see `webhook_url_rejected`.
    if let Err(rejection) = crate::webhooks::ssrf::check_url(&url, svc.policy()) {
        return Err(url_error(rejection));
    }
    // `events` is the spec's name; `eventTypes` (reference hosts, SDKs) is accepted as an alias.
    let events = match (obj.get("events"), obj.get("eventTypes")) {
        (Some(v), _) if !v.is_null() => string_list(v, "/events", MAX_EVENT_TYPES)?,
        (_, Some(v)) if !v.is_null() => string_list(v, "/eventTypes", MAX_EVENT_TYPES)?,
        _ => {
            return Err(field_error(
                "/events",
                "events is required (a non-empty array of event types)",
            ))
        }
    };
    let tags = match obj.get("tags") {
        None | Some(Value::Null) => None,
        Some(v) => Some(string_list(v, "/tags", MAX_TAGS)?),
    };
    if obj.get("secret").is_some_and(|s| !s.is_null()) {
        return Err(field_error(
            "/secret",
            "caller-supplied secrets are not supported; the host generates one",
        ));
    }
    // Default to the caller's own tenant; naming another one is refused.
    let tenant_id = match obj.get("tenantId") {
        None | Some(Value::Null) => principal.tenant.clone(),
        Some(Value::String(t)) if *t == principal.tenant => t.clone(),
        Some(Value::String(_)) => return Err(tenant_forbidden()),
        Some(_) => return Err(field_error("/tenantId", "tenantId must be a string")),
    };
    let reg = Registration {
        url,
        events,
        tags,
        tenant_id,
        principal_id: principal.id.clone(),
    };
    // Validation errors are never cached: the claim is made only for a well-formed request.
    let idem = idem_key.map(|k| IdempotencyScope {
        scope_key: idempotency_scope(&principal, "POST /v1/webhooks", &k),
        request_digest: sha256_hex(canonical_json(&body).as_bytes()),
    });
    match svc.register(reg, idem).await {
        Ok(Registered::Created { body, .. }) => {
            Ok((StatusCode::CREATED, axum::Json(body)).into_response())
        }
        Ok(Registered::Replay { status, body }) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::CREATED);
            let mut resp = (status, axum::Json(body)).into_response();
            resp.headers_mut().insert(
                HeaderName::from_static(REPLAY_HEADER),
                HeaderValue::from_static("true"),
            );
            Ok(resp)
        }
        Ok(Registered::KeyMismatch) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "idempotency_key_mismatch",
            "this Idempotency-Key was already used with a different request body",
        )),
        Err(WebhookError::Url(r)) => Err(url_error(r)),
        Err(WebhookError::Store(e)) => Err(e.into()),
    }
}

fn url_error(r: Rejection) -> ApiError {
    match r {
        Rejection::InvalidUrl(msg) => {
            field_error("/url", &format!("url is not a valid absolute URL: {msg}"))
        }
        Rejection::Denied { reason } => ApiError::new(
            StatusCode::BAD_REQUEST,
            "webhook_url_rejected",
            format!("webhook url rejected ({reason}): only public https endpoints are allowed"),
        )
        .details(json!({"reason": reason})),
    }
}

/// `tenantId` from the query string, if given.
fn query_param(q: &Option<String>, name: &str) -> Option<String> {
    let q = q.as_deref()?;
    url::form_urlencoded::parse(q.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

async fn unregister(
    Extension(svc): Extension<Arc<WebhookService>>,
    Auth(principal): Auth,
    Path(webhook_id): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    // Membership is checked before the lookup, so a foreign tenant learns nothing.
    if let Some(t) = query_param(&q, "tenantId") {
        if t != principal.tenant {
            return Err(tenant_forbidden());
        }
    }
    if svc
        .unregister(&webhook_id, &principal.tenant, &principal.id)
        .await?
    {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(not_found(&webhook_id))
    }
}

async fn dead_letters(
    Extension(svc): Extension<Arc<WebhookService>>,
    Auth(principal): Auth,
    Path(webhook_id): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    if svc.get(&webhook_id, &principal.tenant).await?.is_none() {
        return Err(not_found(&webhook_id));
    }
    let limit = match query_param(&q, "limit") {
        None => 50,
        Some(s) => match s.parse::<i64>() {
            Ok(n) if (1..=500).contains(&n) => n,
            _ => return Err(field_error("/limit", "limit must be an integer in 1..=500")),
        },
    };
    let before = match query_param(&q, "cursor") {
        None => None,
        Some(c) => {
            Some(decode_cursor(&c).ok_or_else(|| field_error("/cursor", "cursor is not valid"))?)
        }
    };
    let page = svc.dead_letters(&webhook_id, limit + 1, before).await?;
    let more = page.len() as i64 > limit;
    let page: Vec<_> = page.into_iter().take(limit as usize).collect();
    let next = if more {
        page.last().and_then(|d| {
            d.finished_at
                .as_ref()
                .map(|f| encode_cursor(f, &d.delivery_id))
        })
    } else {
        None
    };
    let retention = svc.dead_letter_retention();
    let deliveries: Vec<Value> = page
        .iter()
        .map(|d| {
            let at = d.finished_at.clone().unwrap_or_default();
            let expires = chrono::DateTime::parse_from_rfc3339(&at)
                .map(|t| crate::store::ts(t.with_timezone(&chrono::Utc) + retention))
                .unwrap_or_default();
            json!({
                "deliveryId": d.delivery_id,
                "webhookId": d.webhook_id,
                "runId": d.run_id,
                "eventId": d.event_id,
                "eventType": d.event_type,
                "sequence": d.sequence,
                "attempts": d.attempts,
                "deadLetteredAt": at,
                "expiresAt": expires,
                "reason": "retries_exhausted",
                "lastStatus": d.last_status,
                "lastError": d.last_error,
            })
        })
        .collect();
    Ok(axum::Json(json!({"deliveries": deliveries, "nextCursor": next})).into_response())
}

fn encode_cursor(at: &str, id: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{at}\n{id}"))
}

fn decode_cursor(c: &str) -> Option<(String, String)> {
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(c)
        .ok()?;
    let s = String::from_utf8(raw).ok()?;
    let (at, id) = s.split_once('\n')?;
    Some((at.to_string(), id.to_string()))
}
