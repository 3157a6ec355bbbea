//! What `wopbox run --watch` knows about a run, built from its event stream alone, and the two
//! ways it is shown: one plain line per event (a pipe, a CI log) or a block redrawn in place
//! (a terminal).
//!
//! Event payloads come from the server and are read defensively: a field missing or of the
//! wrong type shows as absent, never as an error, and unknown event types are skipped
//! (observability.md: clients treat unknown events as opaque).

use std::fmt::Write as _;
use std::time::Duration;

use serde_json::Value;

/// How a watched run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Completed,
    Failed,
    Cancelled,
}

impl Outcome {
    /// The CLI's exit code for this outcome (docs/operations.md "Running a workflow from the
    /// command line"): 0, then codes distinct from 1 (client error) and 2 (usage error).
    pub fn exit_code(self) -> u8 {
        match self {
            Outcome::Completed => 0,
            Outcome::Failed => 3,
            Outcome::Cancelled => 4,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Completed => "completed",
            Outcome::Failed => "failed",
            Outcome::Cancelled => "cancelled",
        }
    }
}

/// One node as the stream has shown it so far.
#[derive(Debug, Clone)]
struct NodeRow {
    id: String,
    state: String,
    detail: Option<String>,
}

/// An interrupt the run is parked on, with what a user needs to resolve it.
#[derive(Debug, Clone, PartialEq)]
pub struct Parked {
    pub node_id: String,
    pub kind: String,
    pub interrupt_id: String,
    /// The run status while parked (`waiting-approval`, …).
    pub status: String,
    /// A resume value that fits the request (first approval action, each question id, the
    /// correlation keys), for the hint.
    pub example: Value,
}

pub struct Progress {
    pub run_id: String,
    status: String,
    nodes: Vec<NodeRow>,
    outcome: Option<Outcome>,
    error: Option<String>,
    parked: Vec<Parked>,
}

fn s<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

/// `code: message` of an error object, as far as it is present.
fn error_text(e: &Value) -> Option<String> {
    match (s(e, "code"), s(e, "message")) {
        (Some(c), Some(m)) => Some(format!("{c}: {m}")),
        (Some(c), None) => Some(c.to_string()),
        (None, Some(m)) => Some(m.to_string()),
        (None, None) => None,
    }
}

/// The run status an interrupt of `kind` parks the run in (interrupt.md).
fn waiting_status(kind: &str) -> String {
    match kind {
        "approval" => "waiting-approval".into(),
        "clarification" => "waiting-input".into(),
        "external-event" => "waiting-external".into(),
        other => format!("waiting-{other}"),
    }
}

/// A resume value that satisfies the request's shape, shown in the hint.
fn example_resume(kind: &str, data: &Value) -> Value {
    match kind {
        "approval" => {
            let action = data
                .get("actions")
                .and_then(Value::as_array)
                .and_then(|a| a.first())
                .and_then(Value::as_str)
                .unwrap_or("accept");
            serde_json::json!({"action": action})
        }
        "clarification" => {
            let mut answers = serde_json::Map::new();
            for q in data
                .get("questions")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if let Some(id) = s(q, "id") {
                    answers.insert(id.to_string(), Value::String("…".into()));
                }
            }
            serde_json::json!({"answers": answers})
        }
        "external-event" => {
            serde_json::json!({"eventPayload": data.get("correlation").cloned().unwrap_or(serde_json::json!({}))})
        }
        _ => serde_json::json!({}),
    }
}

fn elapsed_text(d: Duration) -> String {
    format!("{:>6.1}s", d.as_secs_f64())
}

impl Progress {
    pub fn new(run_id: &str) -> Progress {
        Progress {
            run_id: run_id.to_string(),
            status: "pending".into(),
            nodes: Vec::new(),
            outcome: None,
            error: None,
            parked: Vec::new(),
        }
    }

    pub fn status(&self) -> &str {
        &self.status
    }

    pub fn outcome(&self) -> Option<Outcome> {
        self.outcome
    }

    /// The terminal error's `code: message`, for a failed run.
    pub fn error(&self) -> Option<&str> {
        self.error.as_deref()
    }

    fn node(&mut self, id: &str) -> &mut NodeRow {
        let i = match self.nodes.iter().position(|n| n.id == id) {
            Some(i) => i,
            None => {
                self.nodes.push(NodeRow {
                    id: id.to_string(),
                    state: "pending".into(),
                    detail: None,
                });
                self.nodes.len() - 1
            }
        };
        &mut self.nodes[i]
    }

    fn set_node(&mut self, id: &str, state: &str, detail: Option<String>) -> String {
        let row = self.node(id);
        row.state = state.to_string();
        row.detail = detail;
        match &row.detail {
            Some(d) => format!("node {id}: {state} ({d})"),
            None => format!("node {id}: {state}"),
        }
    }

    /// Apply one event (the JSON of an SSE frame's data). Returns the plain-mode line for it,
    /// or `None` for an event that changes nothing shown. A newly parked interrupt is also
    /// returned, so the caller can print how to resolve it.
    pub fn apply(&mut self, ev: &Value) -> (Option<String>, Option<Parked>) {
        let ty = s(ev, "type").unwrap_or("");
        let p = ev.get("payload").cloned().unwrap_or(Value::Null);
        let node_id = s(ev, "nodeId")
            .or_else(|| s(&p, "nodeId"))
            .map(str::to_string);
        let ms = |p: &Value| p.get("durationMs").and_then(Value::as_u64);
        let line = match (ty, node_id.as_deref()) {
            ("run.started", _) => {
                self.status = "running".into();
                Some(format!("run {}: running", self.run_id))
            }
            // A host restart: a run parked before it stays parked (its interrupt is not asked
            // again), so the status only changes for a run that was computing.
            ("run.resumed", _) => {
                if self.parked.is_empty() {
                    self.status = "running".into();
                }
                Some(format!("run {}: resumed by the host", self.run_id))
            }
            ("node.started", Some(n)) => {
                let attempt = p.get("attempt").and_then(Value::as_u64).unwrap_or(1);
                let detail = (attempt > 1).then(|| format!("attempt {attempt}"));
                Some(self.set_node(n, "running", detail))
            }
            ("node.completed", Some(n)) => {
                let detail = ms(&p).map(|d| format!("{d} ms"));
                Some(self.set_node(n, "completed", detail))
            }
            ("node.failed", Some(n)) => {
                let detail = p.get("error").and_then(error_text);
                Some(self.set_node(n, "failed", detail))
            }
            ("node.retried", Some(n)) => {
                let next = p.get("nextAttempt").and_then(Value::as_u64);
                let delay = p.get("delayMs").and_then(Value::as_u64);
                let why = p.get("error").and_then(error_text);
                let mut d = String::new();
                if let Some(n) = next {
                    let _ = write!(d, "attempt {n}");
                }
                if let Some(ms) = delay {
                    let _ = write!(d, " in {ms} ms");
                }
                if let Some(w) = why {
                    let _ = write!(d, " after {w}");
                }
                let d = d.trim().to_string();
                Some(self.set_node(n, "retrying", (!d.is_empty()).then_some(d)))
            }
            ("node.skipped", Some(n)) => Some(self.set_node(n, "skipped", None)),
            ("node.cancelled", Some(n)) => Some(self.set_node(n, "cancelled", None)),
            ("interrupt.requested", Some(n)) => {
                let kind = s(&p, "kind").unwrap_or("interrupt").to_string();
                let status = waiting_status(&kind);
                self.status = status.clone();
                let parked = Parked {
                    node_id: n.to_string(),
                    interrupt_id: s(&p, "interruptId").unwrap_or("").to_string(),
                    example: example_resume(&kind, p.get("data").unwrap_or(&Value::Null)),
                    kind,
                    status: status.clone(),
                };
                self.parked.retain(|x| x.node_id != n);
                self.parked.push(parked.clone());
                let line = self.set_node(n, &status, None);
                return (Some(line), Some(parked));
            }
            ("interrupt.resolved", Some(n)) => {
                self.parked.retain(|x| x.node_id != n);
                if self.parked.is_empty() && self.outcome.is_none() {
                    self.status = "running".into();
                }
                Some(self.set_node(n, "resumed", None))
            }
            ("run.completed", _) => self.finish(Outcome::Completed, None),
            ("run.failed", _) => {
                let e = p.get("error").and_then(error_text);
                self.finish(Outcome::Failed, e)
            }
            ("run.cancelled", _) => {
                let why = s(&p, "reason").map(str::to_string);
                self.finish(Outcome::Cancelled, why)
            }
            _ => None,
        };
        (line, None)
    }

    fn finish(&mut self, outcome: Outcome, detail: Option<String>) -> Option<String> {
        self.outcome = Some(outcome);
        self.status = outcome.as_str().into();
        self.parked.clear();
        if outcome == Outcome::Failed {
            self.error = detail.clone();
        }
        Some(match detail {
            Some(d) => format!("run {}: {} ({d})", self.run_id, outcome.as_str()),
            None => format!("run {}: {}", self.run_id, outcome.as_str()),
        })
    }

    /// A plain-mode line: elapsed time, then the text.
    pub fn plain(elapsed: Duration, text: &str) -> String {
        format!("{} {text}", elapsed_text(elapsed))
    }

    /// The block a terminal shows (and redraws): a status line, then one line per node.
    pub fn block(&self, elapsed: Duration) -> Vec<String> {
        let mut lines = vec![format!(
            "run {}  {}  {}",
            self.run_id,
            self.status,
            elapsed_text(elapsed).trim_start()
        )];
        for n in &self.nodes {
            let mark = match n.state.as_str() {
                "completed" => "✓",
                "failed" => "✗",
                "running" | "retrying" | "resumed" => "▸",
                "skipped" | "cancelled" => "-",
                s if s.starts_with("waiting-") => "…",
                _ => " ",
            };
            let mut l = format!("  {mark} {:<24} {}", n.id, n.state);
            if let Some(d) = &n.detail {
                let _ = write!(l, "  {d}");
            }
            lines.push(l);
        }
        lines
    }
}

/// How to resolve a parked interrupt, for the user watching (one line per item).
pub fn resolve_hint(base_url: &str, run_id: &str, p: &Parked) -> Vec<String> {
    let body = serde_json::json!({ "resumeValue": p.example });
    vec![
        format!(
            "run {run_id} is {} at node '{}' (interrupt {}); still watching. Resolve it from another shell:",
            p.status, p.node_id, p.interrupt_id
        ),
        format!(
            "  curl -X POST {base_url}/v1/runs/{run_id}/interrupts/{} -H \"authorization: Bearer $WOPBOX_API_KEY\" -H 'content-type: application/json' -d '{body}'",
            p.node_id
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ev(ty: &str, node: Option<&str>, payload: Value) -> Value {
        let mut e = json!({"type": ty, "payload": payload});
        if let Some(n) = node {
            e["nodeId"] = json!(n);
        }
        e
    }

    #[test]
    fn a_failing_run_reads_as_it_happened() {
        let mut p = Progress::new("run_1");
        let lines: Vec<String> = [
            ev("run.started", None, json!({})),
            ev("node.started", Some("a"), json!({"attempt": 1})),
            ev("node.completed", Some("a"), json!({"durationMs": 4})),
            ev("variable.changed", Some("a"), json!({})),
            ev("node.started", Some("b"), json!({"attempt": 1})),
            ev(
                "node.retried",
                Some("b"),
                json!({"nextAttempt": 2, "delayMs": 10, "error": {"code": "flaky"}}),
            ),
            ev("node.started", Some("b"), json!({"attempt": 2})),
            ev(
                "node.failed",
                Some("b"),
                json!({"error": {"code": "boom", "message": "no"}}),
            ),
            ev(
                "run.failed",
                None,
                json!({"error": {"code": "boom", "message": "no"}}),
            ),
        ]
        .iter()
        .filter_map(|e| p.apply(e).0)
        .collect();
        assert_eq!(
            lines,
            [
                "run run_1: running",
                "node a: running",
                "node a: completed (4 ms)",
                "node b: running",
                "node b: retrying (attempt 2 in 10 ms after flaky)",
                "node b: running (attempt 2)",
                "node b: failed (boom: no)",
                "run run_1: failed (boom: no)",
            ]
        );
        assert_eq!(p.outcome(), Some(Outcome::Failed));
        assert_eq!(p.error(), Some("boom: no"));
        let block = p.block(Duration::from_millis(1500));
        assert_eq!(block[0], "run run_1  failed  1.5s");
        assert!(block[1].contains("✓ a") && block[1].contains("completed  4 ms"));
        assert!(block[2].contains("✗ b") && block[2].contains("boom: no"));
    }

    #[test]
    fn a_parked_run_says_how_to_resume() {
        let mut p = Progress::new("run_2");
        let (line, parked) = p.apply(&ev(
            "interrupt.requested",
            Some("gate"),
            json!({"kind": "approval", "interruptId": "int_9", "data": {"actions": ["approve", "deny"]}}),
        ));
        assert_eq!(line.as_deref(), Some("node gate: waiting-approval"));
        let parked = parked.unwrap();
        assert_eq!(p.status(), "waiting-approval");
        assert_eq!(parked.example, json!({"action": "approve"}));
        let hint = resolve_hint("http://h:1", "run_2", &parked);
        assert!(hint[0].contains("waiting-approval at node 'gate' (interrupt int_9)"));
        assert!(hint[1].contains("http://h:1/v1/runs/run_2/interrupts/gate"));
        assert!(hint[1].contains(r#"{"resumeValue":{"action":"approve"}}"#));
        p.apply(&ev("interrupt.resolved", Some("gate"), json!({})));
        assert_eq!(p.status(), "running");
        p.apply(&ev("run.completed", None, json!({})));
        assert_eq!(p.outcome(), Some(Outcome::Completed));
    }

    #[test]
    fn malformed_payloads_are_shown_as_absent() {
        let mut p = Progress::new("r");
        assert_eq!(p.apply(&json!("not an object")).0, None);
        assert_eq!(
            p.apply(&ev("node.failed", Some("x"), json!({"error": 5})))
                .0,
            Some("node x: failed".into())
        );
        let (_, parked) = p.apply(&ev("interrupt.requested", Some("q"), json!(null)));
        assert_eq!(parked.unwrap().status, "waiting-interrupt");
    }
}
