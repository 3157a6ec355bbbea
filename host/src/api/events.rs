//! Event streams: `GET /v1/runs/{runId}/events/poll` and SSE `GET /v1/runs/{runId}/events`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde_json::json;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;

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

    // Subscribe before reading the backlog; de-duplicate by sequence.
    let live = st.events.subscribe(&run_id);
    let (tx, rx) = mpsc::channel::<Event>(64);
    let store = st.engine.store().clone();
    tokio::spawn(async move {
        let _ = pump(store, run_id, after, live, tx, debug).await;
    });
    let stream = ReceiverStream::new(rx).map(Ok::<_, Infallible>);
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

/// Feed one SSE connection: committed backlog, then live events, until the terminal event.
/// Returns Err when the client went away.
async fn pump(
    store: Arc<dyn crate::store::Store>,
    run_id: String,
    mut last: i64,
    mut live: broadcast::Receiver<Arc<EventRecord>>,
    tx: mpsc::Sender<Event>,
    debug: bool,
) -> Result<(), ()> {
    // Send everything committed after `last`; true once the terminal event went out.
    async fn catch_up(
        store: &Arc<dyn crate::store::Store>,
        run_id: &str,
        last: &mut i64,
        tx: &mpsc::Sender<Event>,
        debug: bool,
    ) -> Result<bool, ()> {
        loop {
            let page = store
                .list_events(run_id, *last, PAGE)
                .await
                .map_err(|_| ())?;
            let full = page.len() as i64 == PAGE;
            for e in &page {
                *last = e.sequence;
                if debug || !hidden_in_updates(&e.event_type) {
                    tx.send(frame(e)).await.map_err(|_| ())?;
                }
                if e.is_terminal() {
                    return Ok(true);
                }
            }
            if !full {
                return Ok(false);
            }
        }
    }
    if catch_up(&store, &run_id, &mut last, &tx, debug).await? {
        return Ok(());
    }
    loop {
        let next = tokio::select! {
            r = live.recv() => r,
            _ = tx.closed() => return Err(()),
        };
        match next {
            Ok(e) => {
                if e.sequence <= last {
                    continue;
                }
                if e.sequence > last + 1 {
                    if catch_up(&store, &run_id, &mut last, &tx, debug).await? {
                        return Ok(());
                    }
                    continue;
                }
                last = e.sequence;
                if debug || !hidden_in_updates(&e.event_type) {
                    tx.send(frame(&e)).await.map_err(|_| ())?;
                }
                if e.is_terminal() {
                    return Ok(());
                }
            }
            Err(broadcast::error::RecvError::Lagged(_)) => {
                if catch_up(&store, &run_id, &mut last, &tx, debug).await? {
                    return Ok(());
                }
            }
            Err(broadcast::error::RecvError::Closed) => {
                // The run finished (publisher dropped the channel): flush what is committed.
                catch_up(&store, &run_id, &mut last, &tx, debug).await?;
                return Ok(());
            }
        }
    }
}
