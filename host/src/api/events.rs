//! Event streams: `GET /v1/runs/{runId}/events/poll` and SSE `GET /v1/runs/{runId}/events`.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tokio::sync::broadcast;

use super::auth::{Auth, Principal};
use super::error::ApiError;
use super::request_trace::set_trace_headers;
use super::runs::load_run;
use super::AppState;
use crate::store::{is_terminal_status, EventRecord};
use crate::telemetry::trace::run_trace;
use crate::telemetry::TraceContext;

const PAGE: i64 = 1000;

fn parse_cursor(raw: Option<&String>, name: &str) -> Result<i64, ApiError> {
    match raw {
        None => Ok(-1),
        Some(s) if s.is_empty() => Ok(-1),
        Some(s) => match s.parse::<i64>() {
            Ok(n) if n >= -1 => Ok(n),
            _ => Err(
                ApiError::validation(format!("{name} must be an integer >= -1"))
                    .details(json!({"parameter": name, "value": s})),
            ),
        },
    }
}

pub async fn poll(
    State(st): State<AppState>,
    Auth(principal): Auth,
    Path(run_id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let (name, raw) = match q.get("lastSequence") {
        Some(v) => ("lastSequence", Some(v)),
        None => ("since", q.get("since")),
    };
    let cursor = parse_cursor(raw, name)?;
    let limit = match q.get("limit") {
        None => PAGE,
        Some(s) => match s.parse::<i64>() {
            Ok(n) if (1..=PAGE).contains(&n) => n,
            _ => {
                return Err(ApiError::validation(format!(
                    "limit must be an integer between 1 and {PAGE}"
                )))
            }
        },
    };
    let wait_ms = match q.get("waitMs") {
        None => 0,
        Some(s) => match s.parse::<u64>() {
            Ok(n) if n <= 30_000 => n,
            _ => {
                return Err(ApiError::validation(
                    "waitMs must be an integer between 0 and 30000",
                ))
            }
        },
    };
    let (page, trace) = poll_page(&st, &principal, &run_id, cursor, limit, wait_ms).await?;
    let mut resp = axum::Json(page).into_response();
    set_trace_headers(resp.headers_mut(), &trace);
    Ok(resp)
}

/// One page of committed events after `cursor` (the poll response shape), and the run's
/// trace context for the response's `traceparent`.
async fn poll_page(
    st: &AppState,
    principal: &Principal,
    run_id: &str,
    cursor: i64,
    limit: i64,
    wait_ms: u64,
) -> Result<(serde_json::Value, TraceContext), ApiError> {
    let mut run = load_run(st, principal, run_id).await?;
    let store = st.engine.store();
    let mut events = store.list_events(run_id, cursor, limit).await?;
    if events.is_empty() && wait_ms > 0 && !run.is_terminal() {
        // Long-poll: wait for the next append (or the deadline), then re-read committed events.
        let mut rx = st.events.subscribe(run_id);
        events = store.list_events(run_id, cursor, limit).await?;
        if events.is_empty() {
            let _ = tokio::time::timeout(Duration::from_millis(wait_ms), rx.recv()).await;
            events = store.list_events(run_id, cursor, limit).await?;
        }
        run = load_run(st, principal, run_id).await?;
    }
    let last = events.last().map(|e| e.sequence).unwrap_or(cursor);
    let has_more = events.len() as i64 == limit;
    let terminal = is_terminal_status(&run.status);
    let trace = run_trace(&run).0;
    let page = json!({
        "runId": run_id,
        "events": events.iter().map(EventRecord::to_json).collect::<Vec<_>>(),
        "lastEventSeq": last,
        "nextCursor": last,
        "hasMore": has_more,
        "runStatus": run.status,
        "isTerminal": terminal,
        "isComplete": terminal && !has_more,
    });
    Ok((page, trace))
}

/// Event types hidden by the default `updates` stream mode (stream-modes.md).
fn hidden_in_updates(t: &str) -> bool {
    matches!(
        t,
        "node.started" | "variable.changed" | "log.appended" | "version.pinned" | "node.retried"
    ) || t.starts_with("lease.")
}

const STREAM_MODES: [&str; 2] = ["updates", "debug"];

pub async fn sse(
    State(st): State<AppState>,
    Auth(principal): Auth,
    Path(run_id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let mode = q.get("streamMode").map(String::as_str).unwrap_or("updates");
    let modes: Vec<&str> = mode
        .split(',')
        .map(str::trim)
        .filter(|m| !m.is_empty())
        .collect();
    if modes.is_empty() || modes.iter().any(|m| !STREAM_MODES.contains(m)) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "unsupported_stream_mode",
            format!("unsupported streamMode '{mode}'"),
        )
        .details(json!({"supported": STREAM_MODES})));
    }
    let debug = modes.contains(&"debug");
    let resume_raw = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(|s| s.trim().to_string())
        .or_else(|| q.get("lastSequence").cloned());
    let after = parse_cursor(resume_raw.as_ref(), "Last-Event-ID")?;
    let trace = run_trace(&load_run(&st, &principal, &run_id).await?).0;

    // Content negotiation: a client that asks for JSON only gets the poll shape.
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if accept.contains("application/json") && !accept.contains("text/event-stream") {
        let (page, trace) = poll_page(&st, &principal, &run_id, after, PAGE, 0).await?;
        let mut resp = axum::Json(page).into_response();
        set_trace_headers(resp.headers_mut(), &trace);
        return Ok(resp);
    }

    // Subscribe before reading the backlog; de-duplicate by sequence. The stream is polled by
    // the connection's own task (no pump task or channel per connection: one wake-up per
    // event instead of two) and dropped when the client goes away.
    let live = st.events.subscribe(&run_id);
    let pump = Pump {
        store: st.engine.store().clone(),
        run_id,
        last: after,
        live,
        debug,
        queue: VecDeque::new(),
        catching_up: true,
        closed: false,
        done: false,
    };
    let stream = futures::stream::unfold(pump, |mut p| async move {
        p.next().await.map(|ev| (Ok::<_, Infallible>(ev), p))
    });
    let mut resp = Sse::new(stream)
        .keep_alive(
            KeepAlive::new()
                .interval(st.sse_keepalive)
                .text("keepalive"),
        )
        .into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp.headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    set_trace_headers(resp.headers_mut(), &trace);
    Ok(resp)
}

fn frame(e: &EventRecord) -> Event {
    Event::default()
        .id(e.sequence.to_string())
        .event(e.event_type.clone())
        .data(e.to_json().to_string())
}

/// One SSE connection's source: the committed backlog after `last` (a page at a time), then
/// live events, until the terminal event. A gap in the live feed (lagged receiver, missed
/// sequence, closed channel) goes back to the store for what is committed.
struct Pump {
    store: Arc<dyn crate::store::Store>,
    run_id: String,
    last: i64,
    live: broadcast::Receiver<Arc<EventRecord>>,
    debug: bool,
    /// Frames ready to send (at most one store page).
    queue: VecDeque<Event>,
    /// The next frames come from the store, not the live feed.
    catching_up: bool,
    /// The live channel closed (the run finished): end once caught up.
    closed: bool,
    /// The terminal event is queued, or the store failed: nothing more after the queue.
    done: bool,
}

impl Pump {
    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(ev) = self.queue.pop_front() {
                return Some(ev);
            }
            if self.done {
                return None;
            }
            self.fill().await;
        }
    }

    /// Queue `e` if this stream shows it; true when it is the terminal event.
    fn push(&mut self, e: &EventRecord) -> bool {
        self.last = e.sequence;
        if self.debug || !hidden_in_updates(&e.event_type) {
            self.queue.push_back(frame(e));
        }
        e.is_terminal()
    }

    async fn fill(&mut self) {
        if self.catching_up {
            let page = match self.store.list_events(&self.run_id, self.last, PAGE).await {
                Ok(p) => p,
                Err(_) => {
                    self.done = true;
                    return;
                }
            };
            let full = page.len() as i64 == PAGE;
            for e in &page {
                if self.push(e) {
                    self.done = true;
                    return;
                }
            }
            if !full {
                self.catching_up = false;
                self.done = self.closed;
            }
            return;
        }
        match self.live.recv().await {
            Ok(e) if e.sequence <= self.last => {}
            Ok(e) if e.sequence > self.last + 1 => self.catching_up = true,
            Ok(e) => self.done = self.push(&e),
            Err(broadcast::error::RecvError::Lagged(_)) => self.catching_up = true,
            Err(broadcast::error::RecvError::Closed) => {
                self.catching_up = true;
                self.closed = true;
            }
        }
    }
}
