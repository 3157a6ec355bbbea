//! `wopbox run WORKFLOW --watch`: follow a run's SSE stream to its end.
//!
//! The stream is `GET /v1/runs/{id}/events?streamMode=debug` (debug mode, so `node.started`
//! shows a node as running). A stream that drops — the host restarting, a proxy timing out —
//! is reopened with `Last-Event-ID` set to the last frame seen, so nothing is shown twice or
//! missed; a run that parks on an interrupt is watched on, with a hint saying how to resolve
//! it (the watcher cannot answer for the user, and exiting would lose the outcome).

use std::io::Write;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::Value;

use super::progress::{resolve_hint, Outcome, Progress};
use super::sse::Parser;
use super::{Client, ClientError};

/// Consecutive failed (re)connections before giving up; with the back-off below that is
/// about half a minute of the host being unreachable.
const MAX_RECONNECTS: u32 = 8;
const BACKOFF_START: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// No byte for this long (the host sends keepalive comments at most 60 s apart) means the
/// connection is dead even if TCP has not noticed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// How often a terminal redraw refreshes the elapsed time.
const TICK: Duration = Duration::from_millis(250);

/// Where the progress goes: one line per event, or a block redrawn in place on a terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Display {
    Plain,
    Live,
}

struct Screen {
    display: Display,
    started: Instant,
    /// Lines of the live block currently on screen (to move back over when redrawing).
    drawn: usize,
}

impl Screen {
    fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// A line that stays: in plain mode with its timestamp, in live mode printed above the
    /// block (which is then drawn again below it).
    fn say(&mut self, progress: &Progress, text: &str) {
        let mut out = std::io::stdout().lock();
        match self.display {
            Display::Plain => {
                let _ = writeln!(out, "{}", Progress::plain(self.elapsed(), text));
            }
            Display::Live => {
                self.clear(&mut out);
                let _ = writeln!(out, "{text}");
                self.draw(&mut out, progress);
            }
        }
        let _ = out.flush();
    }

    /// The last line, under the final block (which stays on screen as it is).
    fn footer(&mut self, progress: &Progress, text: &str) {
        let mut out = std::io::stdout().lock();
        self.clear(&mut out);
        self.draw(&mut out, progress);
        let _ = writeln!(out, "{text}");
        self.drawn = 0;
        let _ = out.flush();
    }

    fn event(&mut self, progress: &Progress, line: Option<&str>) {
        match (self.display, line) {
            (Display::Plain, Some(l)) => self.say(progress, l),
            (Display::Plain, None) => {}
            (Display::Live, _) => self.redraw(progress),
        }
    }

    fn redraw(&mut self, progress: &Progress) {
        if self.display != Display::Live {
            return;
        }
        let mut out = std::io::stdout().lock();
        self.clear(&mut out);
        self.draw(&mut out, progress);
        let _ = out.flush();
    }

    fn clear(&mut self, out: &mut impl Write) {
        if self.drawn > 0 {
            // Cursor to the start of the block's first line, then erase to the end of screen.
            let _ = write!(out, "\x1b[{}F\x1b[J", self.drawn);
            self.drawn = 0;
        }
    }

    fn draw(&mut self, out: &mut impl Write, progress: &Progress) {
        let block = progress.block(self.elapsed());
        // A line wider than the terminal wraps and the redraw would then move up too few
        // lines; cut each to the width (`COLUMNS` when the shell exports it, else 80).
        let width = std::env::var("COLUMNS")
            .ok()
            .and_then(|c| c.parse::<usize>().ok())
            .filter(|w| *w > 10)
            .unwrap_or(80);
        for l in &block {
            let cut: String = l.chars().take(width - 1).collect();
            let _ = writeln!(out, "{cut}");
        }
        self.drawn = block.len();
    }
}

/// Why a connection ended without the run's terminal event.
enum Ended {
    /// Worth reconnecting: network error, stream closed early, 5xx / 429.
    Transient(String),
    /// Not going to get better: 4xx (run gone, key revoked, …).
    Fatal(ClientError),
}

impl Client {
    /// Watch `run_id` to its end, showing progress as `display`; `started` is when the run
    /// was created (elapsed times count from it).
    pub async fn watch(
        &self,
        run_id: &str,
        display: Display,
        started: Instant,
    ) -> Result<Outcome, ClientError> {
        let mut progress = Progress::new(run_id);
        let mut screen = Screen {
            display,
            started,
            drawn: 0,
        };
        match display {
            Display::Plain => screen.say(&progress, &format!("watching run {run_id}")),
            Display::Live => screen.redraw(&progress),
        }
        let mut last_id: Option<String> = None;
        let mut failures = 0u32;
        loop {
            let before = last_id.clone();
            match self.follow(&mut progress, &mut screen, &mut last_id).await {
                Ok(outcome) => {
                    if display == Display::Live {
                        let text = match progress.error() {
                            Some(e) => format!("run {run_id}: {} ({e})", outcome.as_str()),
                            None => format!("run {run_id}: {}", outcome.as_str()),
                        };
                        screen.footer(&progress, &text);
                    }
                    return Ok(outcome);
                }
                Err(Ended::Fatal(e)) => return Err(e),
                Err(Ended::Transient(why)) => {
                    // Frames arrived on that connection: the host was reachable, start over.
                    if last_id != before {
                        failures = 0;
                    }
                    failures += 1;
                    if failures > MAX_RECONNECTS {
                        return Err(ClientError::Stream(format!(
                            "gave up on the event stream of run {run_id} after {MAX_RECONNECTS} attempts: {why}"
                        )));
                    }
                    let from = last_id.as_deref().unwrap_or("the start");
                    screen.say(
                        &progress,
                        &format!("event stream dropped ({why}); reconnecting from event {from}"),
                    );
                    let backoff = BACKOFF_START
                        .saturating_mul(1 << (failures - 1).min(5))
                        .min(BACKOFF_MAX);
                    tokio::time::sleep(backoff).await;
                }
            }
        }
    }

    /// One connection: read frames until the terminal event (`Ok`) or until it ends.
    async fn follow(
        &self,
        progress: &mut Progress,
        screen: &mut Screen,
        last_id: &mut Option<String>,
    ) -> Result<Outcome, Ended> {
        let url = format!(
            "{}/v1/runs/{}/events?streamMode=debug",
            self.base, progress.run_id
        );
        let mut req = self.http.get(&url).header("accept", "text/event-stream");
        if let Some(id) = last_id.as_deref() {
            req = req.header("last-event-id", id);
        }
        if let Some(k) = &self.api_key {
            req = req.bearer_auth(k);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| Ended::Transient(e.to_string()))?;
        let status = resp.status();
        if !status.is_success() {
            let text = resp.text().await.unwrap_or_default();
            let err = super::server_error(status.as_u16(), &text);
            return Err(if status.is_server_error() || status.as_u16() == 429 {
                Ended::Transient(err.to_string())
            } else {
                Ended::Fatal(err)
            });
        }
        let mut body = resp.bytes_stream();
        let mut parser = Parser::default();
        let mut tick = tokio::time::interval(TICK);
        let mut idle_since = Instant::now();
        loop {
            let chunk = tokio::select! {
                c = body.next() => c,
                _ = tick.tick() => {
                    if idle_since.elapsed() > IDLE_TIMEOUT {
                        return Err(Ended::Transient("no data or keepalive for 90 s".into()));
                    }
                    screen.redraw(progress);
                    continue;
                }
            };
            let bytes = match chunk {
                None => return Err(Ended::Transient("the stream ended early".into())),
                Some(Err(e)) => return Err(Ended::Transient(e.to_string())),
                Some(Ok(b)) => b,
            };
            idle_since = Instant::now();
            let frames = parser
                .push(&bytes)
                .map_err(|e| Ended::Fatal(ClientError::Stream(e.to_string())))?;
            for f in frames {
                if let Some(id) = f.id {
                    *last_id = Some(id);
                }
                // A frame that is not JSON is not an event we know; skip it.
                let Ok(ev) = serde_json::from_str::<Value>(&f.data) else {
                    continue;
                };
                let (line, parked) = progress.apply(&ev);
                screen.event(progress, line.as_deref());
                if let Some(p) = parked {
                    for l in resolve_hint(&self.base, &progress.run_id, &p) {
                        screen.say(progress, &l);
                    }
                }
                if let Some(outcome) = progress.outcome() {
                    return Ok(outcome);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderMap;
    use axum::response::IntoResponse;
    use std::sync::{Arc, Mutex};

    fn frame(seq: u64, ty: &str, node: Option<&str>) -> String {
        let mut e = serde_json::json!({"type": ty, "sequence": seq, "payload": {}});
        if let Some(n) = node {
            e["nodeId"] = n.into();
        }
        format!("id: {seq}\nevent: {ty}\ndata: {e}\n\n")
    }

    /// A stream that drops after its first frames is reopened from the last id seen, and the
    /// events after it are applied exactly once.
    #[tokio::test]
    async fn a_dropped_stream_resumes_from_the_last_event_id() {
        let seen: Arc<Mutex<Vec<Option<String>>>> = Arc::default();
        let log = seen.clone();
        let app = axum::Router::new().route(
            "/v1/runs/{id}/events",
            axum::routing::get(move |headers: HeaderMap| {
                let log = log.clone();
                async move {
                    let last = headers
                        .get("last-event-id")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string);
                    log.lock().unwrap().push(last.clone());
                    // First connection: two frames, then the connection closes mid-run.
                    let body = match last.as_deref() {
                        None => {
                            frame(0, "run.started", None) + &frame(1, "node.started", Some("a"))
                        }
                        Some("1") => {
                            frame(2, "node.completed", Some("a")) + &frame(3, "run.completed", None)
                        }
                        Some(other) => panic!("resumed from {other}"),
                    };
                    ([("content-type", "text/event-stream")], body).into_response()
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let client = Client::new(&format!("http://{addr}"), None);
        let outcome = client
            .watch("run_x", Display::Plain, Instant::now())
            .await
            .unwrap();
        assert_eq!(outcome, Outcome::Completed);
        assert_eq!(*seen.lock().unwrap(), vec![None, Some("1".to_string())]);
    }

    #[tokio::test]
    async fn a_missing_run_is_an_error_not_a_retry_loop() {
        let app = axum::Router::new().route(
            "/v1/runs/{id}/events",
            axum::routing::get(|| async {
                (
                    axum::http::StatusCode::NOT_FOUND,
                    axum::Json(serde_json::json!({"error": "not_found", "message": "no such run"})),
                )
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let client = Client::new(&format!("http://{addr}"), None);
        let err = client
            .watch("run_x", Display::Plain, Instant::now())
            .await
            .unwrap_err();
        assert!(
            matches!(&err, ClientError::Server { status: 404, code, .. } if code == "not_found"),
            "{err}"
        );
    }
}
