//! Hot cache of the runs this process created: their run rows and (while short) their event
//! logs, so the API's per-request reads (`GET /v1/runs/{id}`, the SSE/poll backlog of a run that
//! just started) cost a hash lookup instead of a database round trip.
//!
//! Coherence rests on one rule: every change to a cached run's row or log goes through the
//! backend's single writer, which calls [`LiveRuns::created`], [`LiveRuns::appended`] or
//! [`LiveRuns::status_set`] after the change has committed and before it acknowledges it. A
//! reader therefore sees either the state before a commit or after it, never one that a restart
//! could forget. Runs the process did not create (resumed after a restart) are simply not cached;
//! readers fall back to the database.
//!
//! Bounded: an event log is cached only up to [`MAX_EVENTS`] events (then that run's events are
//! read from the database), and only the [`KEEP_FINISHED`] most recently finished runs stay.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use super::{EventRecord, RunRecord, RunUpdate};

/// Events kept per run; a longer log is served from the database.
pub const MAX_EVENTS: usize = 256;
/// Terminal runs kept (most recent first to go is the oldest).
pub const KEEP_FINISHED: usize = 1024;

struct Entry {
    run: RunRecord,
    /// The complete log from sequence 0, or `None` once it outgrew [`MAX_EVENTS`].
    events: Option<Vec<EventRecord>>,
    /// The terminal event is in the log (the row's `terminal` flag).
    terminal: bool,
}

#[derive(Default)]
struct Inner {
    runs: HashMap<String, Entry>,
    finished: VecDeque<String>,
}

#[derive(Default)]
pub struct LiveRuns {
    inner: Mutex<Inner>,
}

impl LiveRuns {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave an entry half-updated in a way that
        // matters more than losing the cache; keep serving.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A run row was inserted (no events yet).
    pub fn created(&self, run: &RunRecord) {
        self.lock().runs.insert(
            run.run_id.clone(),
            Entry {
                run: run.clone(),
                events: Some(Vec::new()),
                terminal: false,
            },
        );
    }

    /// `records` were committed for `run_id` together with `update` (applied the way the
    /// backend applies it to the row), at `now`.
    pub fn appended(&self, run_id: &str, records: &[EventRecord], update: &RunUpdate, now: &str) {
        let mut inner = self.lock();
        let Some(e) = inner.runs.get_mut(run_id) else {
            return;
        };
        apply_update(&mut e.run, update, now);
        if let Some(log) = &mut e.events {
            if log.len() + records.len() > MAX_EVENTS {
                e.events = None;
            } else {
                log.extend_from_slice(records);
            }
        }
        if records.iter().any(EventRecord::is_terminal) {
            e.terminal = true;
            inner.finished.push_back(run_id.to_string());
            while inner.finished.len() > KEEP_FINISHED {
                if let Some(old) = inner.finished.pop_front() {
                    inner.runs.remove(&old);
                }
            }
        }
    }

    /// A non-terminal run's status changed without an event (`cancelling`).
    pub fn status_set(&self, run_id: &str, status: &str, now: &str) {
        if let Some(e) = self.lock().runs.get_mut(run_id) {
            if !e.terminal {
                e.run.status = status.to_string();
                e.run.updated_at = now.to_string();
            }
        }
    }

    /// Retention deleted these runs: readers must fall through to the store (and its
    /// tombstones) from now on.
    pub fn forget(&self, run_ids: &[String]) {
        if run_ids.is_empty() {
            return;
        }
        let mut inner = self.lock();
        for id in run_ids {
            inner.runs.remove(id);
        }
        inner.finished.retain(|id| !run_ids.contains(id));
    }

    pub fn get(&self, run_id: &str) -> Option<RunRecord> {
        self.lock().runs.get(run_id).map(|e| e.run.clone())
    }

    /// Events with `sequence > after`, at most `limit`, if this run's whole log is cached.
    pub fn events(&self, run_id: &str, after: i64, limit: i64) -> Option<Vec<EventRecord>> {
        let inner = self.lock();
        let log = inner.runs.get(run_id)?.events.as_ref()?;
        // Sequences are gap-free from 0, so `after + 1` is the index of the first one wanted.
        let start = usize::try_from(after.saturating_add(1)).unwrap_or(0);
        let take = usize::try_from(limit).unwrap_or(0);
        Some(log.iter().skip(start).take(take).cloned().collect())
    }
}

/// The same column rules as the backend's `UPDATE runs ... COALESCE(...)`.
pub fn apply_update(run: &mut RunRecord, u: &RunUpdate, now: &str) {
    if let Some(s) = &u.status {
        run.status = s.clone();
    }
    if let Some(n) = &u.current_node_id {
        run.current_node_id = n.clone();
    }
    if let Some(e) = &u.error {
        run.error = Some(e.clone());
    }
    if let Some(o) = &u.outputs {
        run.outputs = Some(o.clone());
    }
    if let Some(t) = &u.started_at {
        run.started_at = Some(t.clone());
    }
    if let Some(t) = &u.completed_at {
        run.completed_at = Some(t.clone());
    }
    if let Some(v) = &u.variables {
        run.variables = v.clone();
    }
    run.updated_at = now.to_string();
}

/// A pending run of workflow `wf` pinned to `digest` (test fixture shared by the store tests).
#[cfg(test)]
pub(crate) fn sample_run(id: &str, digest: &str) -> RunRecord {
    RunRecord {
        run_id: id.into(),
        workflow_id: "wf".into(),
        definition_digest: digest.into(),
        tenant_id: "t".into(),
        principal_id: "p".into(),
        status: "pending".into(),
        inputs: serde_json::json!({"n": 1}),
        variables: serde_json::json!({}),
        options: serde_json::json!({}),
        current_node_id: None,
        error: None,
        outputs: None,
        created_at: "c".into(),
        started_at: None,
        completed_at: None,
        updated_at: "c".into(),
        parent_run_id: None,
        parent_node_id: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(id: &str) -> RunRecord {
        sample_run(id, "d")
    }

    fn ev(run_id: &str, seq: i64, t: &str) -> EventRecord {
        EventRecord {
            run_id: run_id.into(),
            sequence: seq,
            event_id: format!("e{seq}"),
            event_type: t.into(),
            node_id: None,
            causation_id: None,
            payload: json!({}),
            timestamp: "t".into(),
        }
    }

    #[test]
    fn follows_updates_and_serves_the_log_from_a_cursor() {
        let live = LiveRuns::new();
        live.created(&run("r"));
        let started = RunUpdate {
            status: Some("running".into()),
            started_at: Some("s".into()),
            ..Default::default()
        };
        live.appended("r", &[ev("r", 0, "run.started")], &started, "u1");
        live.appended(
            "r",
            &[ev("r", 1, "node.started"), ev("r", 2, "node.completed")],
            &RunUpdate::default(),
            "u2",
        );
        let got = live.get("r").expect("cached");
        assert_eq!(got.status, "running");
        assert_eq!(got.started_at.as_deref(), Some("s"));
        assert_eq!(got.updated_at, "u2");
        let seqs = |v: Vec<EventRecord>| v.iter().map(|e| e.sequence).collect::<Vec<_>>();
        assert_eq!(seqs(live.events("r", -1, 100).unwrap()), vec![0, 1, 2]);
        assert_eq!(seqs(live.events("r", 0, 1).unwrap()), vec![1]);
        assert!(live.events("r", 2, 100).unwrap().is_empty());
        assert!(live.get("other").is_none() && live.events("other", -1, 1).is_none());
    }

    #[test]
    fn a_long_log_falls_back_to_the_database_but_the_row_stays_cached() {
        let live = LiveRuns::new();
        live.created(&run("r"));
        let batch: Vec<_> = (0..MAX_EVENTS as i64 + 1)
            .map(|i| ev("r", i, "log.appended"))
            .collect();
        live.appended("r", &batch, &RunUpdate::status("running"), "u");
        assert!(live.events("r", -1, 10).is_none());
        assert_eq!(live.get("r").unwrap().status, "running");
    }

    #[test]
    fn only_the_most_recent_finished_runs_are_kept() {
        let live = LiveRuns::new();
        for i in 0..KEEP_FINISHED + 1 {
            let id = format!("r{i}");
            live.created(&run(&id));
            live.appended(
                &id,
                &[ev(&id, 0, "run.completed")],
                &RunUpdate::status("completed"),
                "u",
            );
        }
        assert!(live.get("r0").is_none(), "oldest finished run evicted");
        assert_eq!(
            live.get(&format!("r{KEEP_FINISHED}")).unwrap().status,
            "completed"
        );
    }

    #[test]
    fn status_set_does_not_resurrect_a_terminal_run() {
        let live = LiveRuns::new();
        live.created(&run("r"));
        live.appended(
            "r",
            &[ev("r", 0, "run.cancelled")],
            &RunUpdate::status("cancelled"),
            "u",
        );
        live.status_set("r", "cancelling", "later");
        assert_eq!(live.get("r").unwrap().status, "cancelled");
    }
}
