//! Per-request trace context and span (observability.md §"Trace context propagation").
//!
//! Every request gets an `http.request` span whose `correlation_id` is the W3C trace id: the
//! caller's when it sent a valid `traceparent`, a fresh one otherwise (a malformed header is
//! ignored, never an error). The response carries `traceparent` back — the run's own for run
//! endpoints that set it, else the server span's — and a 5xx envelope names the trace id in
//! `details.correlationId` so a caller can quote it.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tracing::Instrument;

use crate::telemetry::TraceContext;

/// What handlers see (request extension): the caller's context, if valid, and the server
/// span's.
#[derive(Clone, Debug)]
pub struct RequestTrace {
    pub incoming: Option<TraceContext>,
    pub server: TraceContext,
}

impl RequestTrace {
    /// Trace context for a run created by this request: same trace, a new span (the
    /// `openwop.run` span) whose parent is the caller's span.
    pub fn for_run(&self) -> (TraceContext, Option<String>) {
        let base = self.incoming.as_ref().unwrap_or(&self.server);
        (
            base.child(),
            self.incoming.as_ref().map(|c| c.span_id.clone()),
        )
    }
}

pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// Set `traceparent` (and `tracestate`) on a response for `ctx`.
pub fn set_trace_headers(headers: &mut HeaderMap, ctx: &TraceContext) {
    if let Ok(v) = HeaderValue::from_str(&ctx.traceparent()) {
        headers.insert(TRACEPARENT, v);
    }
    if let Some(ts) = ctx.tracestate.as_deref() {
        if let Ok(v) = HeaderValue::from_str(ts) {
            headers.insert(TRACESTATE, v);
        }
    }
}

/// The path as logged: signed interrupt tokens in the path are credentials, so they are
/// replaced by the route's placeholder.
fn loggable_path(path: &str) -> &str {
    if path.starts_with("/v1/interrupts/") {
        "/v1/interrupts/{token}"
    } else {
        path
    }
}

/// Largest 5xx body rewritten to add `details.correlationId` (envelopes are tiny).
const MAX_ENVELOPE: usize = 64 * 1024;

pub async fn trace_request(mut req: Request, next: Next) -> Response {
    let incoming = TraceContext::from_headers(req.headers());
    let server = match &incoming {
        Some(c) => c.child(),
        None => TraceContext::new_root(),
    };
    let span = tracing::info_span!(
        "http.request",
        http.request.method = %req.method(),
        url.path = loggable_path(req.uri().path()),
        correlation_id = %server.trace_id,
        trace_id = %server.trace_id,
        span_id = %server.span_id,
        parent_span_id = incoming.as_ref().map(|c| c.span_id.as_str()),
    );
    req.extensions_mut().insert(RequestTrace {
        incoming,
        server: server.clone(),
    });
    let mut resp = next.run(req).instrument(span).await;
    if !resp.headers().contains_key(TRACEPARENT) {
        set_trace_headers(resp.headers_mut(), &server);
    }
    if resp.status().is_server_error() {
        resp = with_correlation_id(resp, &server.trace_id).await;
    }
    resp
}

/// Add `details.correlationId` to a JSON error envelope (rest-endpoints.md §"details.
/// correlationId convention"); anything else passes through unchanged.
async fn with_correlation_id(resp: Response, trace_id: &str) -> Response {
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !is_json {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_ENVELOPE).await else {
        // Too large to be an envelope; the body is gone, so say what we can.
        return crate::api::error::ApiError::for_status(parts.status)
            .details(serde_json::json!({"correlationId": trace_id}))
            .into_response();
    };
    let mut v: serde_json::Value = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(_) => return Response::from_parts(parts, Body::from(bytes)),
    };
    let Some(obj) = v.as_object_mut() else {
        return Response::from_parts(parts, Body::from(bytes));
    };
    let details = obj
        .entry("details")
        .or_insert_with(|| serde_json::json!({}));
    if let Some(d) = details.as_object_mut() {
        d.entry("correlationId")
            .or_insert_with(|| serde_json::json!(trace_id));
    }
    let out = serde_json::to_vec(&v).unwrap_or_else(|_| bytes.to_vec());
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(out))
}
