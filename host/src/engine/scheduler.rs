//! Drives one run: schedules ready nodes in parallel, applies trigger rules and edge
//! conditions, retries with backoff, enforces timeouts, handles cancellation, and appends every
//! state change to the event log before acting on it. After a restart the same driver folds the
//! run's event log back into node states and carries on (`resume`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use serde_json::{json, Map, Value};
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::dag::{self, Graph, TriggerRule};
use super::registry::{NodeContext, NodeInvocation, NodeOutcome, NodeResult};
use super::{CancelSignal, Engine};
use crate::store::{ts, EventRecord, NewEvent, RunRecord, RunUpdate, StoreError};
use crate::telemetry::trace::{new_span_id, run_trace};
use crate::telemetry::TraceContext;
use tracing::Instrument;

#[derive(Debug, Clone)]
enum NodeState {
    Pending,
    Running,
    Done { output: Value, event_id: String },
    Failed { event_id: String },
    Skipped,
    Cancelled,
}

impl NodeState {
    fn decided(&self) -> bool {
        !matches!(self, NodeState::Pending | NodeState::Running)
    }
}

/// What a node task reports back to the driver.
enum NodeEnd {
    /// `held`: the node's events, not committed yet, for the driver to commit with the run's
    /// terminal event (see [`Entry::last`]); `event_id` is then the id they will have.
    Done {
        output: Value,
        event_id: String,
        held: Option<Held>,
    },
    Failed {
        error: Value,
        event_id: String,
    },
    Cancelled,
}

enum Stop {
    Cancel(CancelSignal),
    Fail {
        error: Value,
        node_id: Option<String>,
        event_id: Option<String>,
    },
}

#[derive(Clone, Copy, PartialEq)]
enum EdgeState {
    Success,
    Failed,
    Skipped,
}

struct RunCtx {
    engine: Arc<Engine>,
    run: RunRecord,
    graph: Arc<Graph>,
    /// The run's current variables (`run.variables` is the bag at start). Writers hold the
    /// lock across the store commit so concurrent writes cannot lose each other.
    variables: Arc<tokio::sync::Mutex<Value>>,
    /// The run's `openwop.run` span position (parent of its node spans).
    trace: TraceContext,
}

/// How a node task enters its node: the attempt number, the event it was parked at before a
/// restart (if any), and the span id of its `openwop.node.<typeId>` span.
struct Entry {
    first_attempt: u32,
    parked_at: Option<String>,
    span_id: String,
    /// Every other node is decided: if this one completes, the run completes. Its completion
    /// events are then handed to the driver uncommitted and committed with `run.completed`,
    /// one commit instead of two.
    last: bool,
}

/// A completed node's events and row update, and the execution slot held until they commit.
struct Held {
    events: Vec<NewEvent>,
    update: Option<RunUpdate>,
    _slot: Option<crate::ops::admission::ExecPermit>,
}

/// The `openwop.node.<typeId>` span. Span names are static in `tracing`, so the per-type name
/// is carried in `otel.name` (the convention OTel bridges read); the attempt is zero-based as
/// observability.md asks and re-recorded on each retry.
fn node_span(ctx: &RunCtx, node: &dag::Node, first_attempt: u32, span_id: &str) -> tracing::Span {
    tracing::info_span!(
        "openwop.node",
        otel.name = %format!("openwop.node.{}", node.type_id),
        openwop.node_id = %node.id,
        openwop.node_type = %node.type_id,
        openwop.node_attempt = first_attempt.saturating_sub(1),
        trace_id = %ctx.trace.trace_id,
        span_id = %span_id,
        parent_span_id = %ctx.trace.span_id,
    )
}

/// The `openwop.run.completed` log record (observability.md §"Structured-log metric
/// records"); a failure is logged at `error`, the default severity of `run.failed`.
fn log_terminal(run_id: &str, status: &str, error: Option<&Value>, duration_ms: u64) {
    if status == "failed" {
        let field = |k: &str| error.and_then(|e| e.get(k)).and_then(Value::as_str);
        tracing::error!(
            metricKind = "openwop.run.completed",
            runId = %run_id,
            status,
            errorCode = field("code"),
            error = field("message"),
            durationMs = duration_ms,
            "run failed"
        );
    } else {
        tracing::info!(
            metricKind = "openwop.run.completed",
            runId = %run_id,
            status,
            durationMs = duration_ms,
            "run {status}"
        );
    }
}

/// The `openwop.node.completed` log record (observability.md §"Structured-log metric
/// records"): `debug` when the node completed, `warn` with the error's code and message when
/// it failed (`error` is `Some`).
fn log_node_end(
    run_id: &str,
    node: &dag::Node,
    error: Option<&Value>,
    duration_ms: u64,
    attempt: u32,
) {
    match error {
        None => tracing::debug!(
            metricKind = "openwop.node.completed",
            runId = %run_id,
            nodeId = %node.id,
            nodeType = %node.type_id,
            status = "completed",
            durationMs = duration_ms,
            attempt,
            "node completed"
        ),
        Some(error) => tracing::warn!(
            metricKind = "openwop.node.completed",
            runId = %run_id,
            nodeId = %node.id,
            nodeType = %node.type_id,
            status = "failed",
            errorCode = error["code"].as_str(),
            error = error["message"].as_str(),
            durationMs = duration_ms,
            attempt,
            "node failed"
        ),
    }
}

impl RunCtx {
    async fn append(
        &self,
        events: Vec<NewEvent>,
        update: Option<RunUpdate>,
    ) -> Result<Vec<EventRecord>, StoreError> {
        self.engine
            .events
            .append(&self.run.run_id, events, update)
            .await
    }
}

/// How long a node may run before its `node.started` is committed on its own. Within it the
/// event (stamped when the node started) is committed with the node's outcome instead: the log
/// is the same, a live observer just sees the start of a short node when it ends. A crash in
/// between loses only that uncommitted start; the restarted run dispatches the node again with
/// the same attempt number (execution is at-least-once either way).
const INSTANT_NODE_GRACE: Duration = Duration::from_millis(10);

/// The commit of a deferred `node.started`, in flight.
type StartCommit<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), StoreError>> + Send + 'a>>;

/// A node's `node.started` while it is not committed yet.
enum Deferred {
    None,
    Started(NewEvent),
}

impl Deferred {
    fn is_pending(&self) -> bool {
        matches!(self, Deferred::Started(_))
    }

    /// Commit the deferred start on its own (with the row's `currentNodeId`).
    async fn commit(&mut self, ctx: &RunCtx, node_id: &str) -> Result<(), StoreError> {
        match self.commit_later(ctx, node_id) {
            Some(c) => c.await,
            None => Ok(()),
        }
    }

    /// The same commit as a future to drive alongside the node.
    fn commit_later<'a>(&mut self, ctx: &'a RunCtx, node_id: &str) -> Option<StartCommit<'a>> {
        let Deferred::Started(ev) = std::mem::replace(self, Deferred::None) else {
            return None;
        };
        let update = started_update(node_id);
        Some(Box::pin(async move {
            ctx.append(vec![ev], Some(update)).await.map(|_| ())
        }))
    }

    /// `events` (and `update`) with the deferred start in front, as one append.
    fn prepend(
        &mut self,
        node_id: &str,
        events: Vec<NewEvent>,
        update: Option<RunUpdate>,
    ) -> (Vec<NewEvent>, Option<RunUpdate>) {
        match std::mem::replace(self, Deferred::None) {
            Deferred::None => (events, update),
            Deferred::Started(ev) => {
                let mut all = Vec::with_capacity(events.len() + 1);
                all.push(ev);
                all.extend(events);
                let update = RunUpdate {
                    current_node_id: Some(Some(node_id.to_string())),
                    ..update.unwrap_or_default()
                };
                (all, Some(update))
            }
        }
    }
}

fn started_update(node_id: &str) -> RunUpdate {
    RunUpdate {
        current_node_id: Some(Some(node_id.to_string())),
        ..Default::default()
    }
}

/// Retry budget: node `settings.maxRetries` (alias `retries`), else the workflow's
/// `settings.maxRetries`, else 0.
fn max_retries(graph: &Graph, settings: &Value) -> u64 {
    ["maxRetries", "retries"]
        .iter()
        .find_map(|k| settings.get(*k).and_then(Value::as_u64))
        .or_else(|| graph.settings.get("maxRetries").and_then(Value::as_u64))
        .unwrap_or(0)
}

/// How the driver enters its run.
pub(super) enum Begin {
    /// A new run without events: append `run.started` first.
    Fresh,
    /// After a restart: fold the log back into node states.
    Resume,
    /// `run.started` (this event id) was committed with the run row.
    Started(String),
}

pub(super) async fn drive(
    engine: Arc<Engine>,
    run: RunRecord,
    begin: Begin,
    mut cancel_rx: watch::Receiver<Option<CancelSignal>>,
    variables: Arc<tokio::sync::Mutex<Value>>,
) -> Result<(), StoreError> {
    let started = Instant::now();
    let graph = match engine.graph_for(&run.definition_digest).await {
        Ok(g) => g,
        Err(msg) => {
            // The definition no longer validates (e.g. a node type vanished): fail clearly.
            let mut events = Vec::new();
            let needs_start = match begin {
                Begin::Fresh => true,
                Begin::Started(_) => false,
                Begin::Resume => engine
                    .store
                    .list_events(&run.run_id, -1, 1)
                    .await?
                    .is_empty(),
            };
            if needs_start {
                events.push(NewEvent::new(
                    "run.started",
                    json!({"workflowId": run.workflow_id}),
                ));
            }
            let error = json!({"code": "workflow_invalid", "message": msg});
            events.push(NewEvent::new("run.failed", json!({"error": error})));
            let update = RunUpdate {
                status: Some("failed".into()),
                error: Some(error),
                completed_at: Some(ts(Utc::now())),
                started_at: Some(ts(Utc::now())),
                ..Default::default()
            };
            return ignore_terminal(
                engine
                    .events
                    .append(&run.run_id, events, Some(update))
                    .await
                    .map(|_| ()),
            );
        }
    };
    let ctx = Arc::new(RunCtx {
        engine: engine.clone(),
        trace: run_trace(&run).0,
        run,
        graph: graph.clone(),
        variables,
    });
    let n = graph.nodes.len();
    let mut states = vec![NodeState::Pending; n];
    let mut attempts = vec![0u32; n];
    // Nodes parked on an interrupt when the previous process stopped: the event that parked
    // (or resumed) them. They are re-entered without a new `node.started`.
    let mut parked: Vec<Option<String>> = vec![None; n];
    let mut last_event: Option<String>;

    match begin {
        Begin::Started(id) => last_event = Some(id),
        Begin::Resume => {
            let mut log = Vec::new();
            let mut after = -1;
            loop {
                let page = engine
                    .store
                    .list_events(&ctx.run.run_id, after, 1000)
                    .await?;
                let Some(last) = page.last() else { break };
                after = last.sequence;
                log.extend(page);
            }
            if log.is_empty() {
                last_event = start_run(&ctx).await?;
            } else {
                fold(&graph, &log, &mut states, &mut attempts, &mut parked);
                let prev = log.last().map(|e| e.event_id.clone());
                let ev = NewEvent::new(
                "run.resumed",
                json!({"reason": "host-restart", "resumedFromSequence": log.last().map(|e| e.sequence)}),
            )
            .caused_by(prev.as_deref());
                let recs = match ctx.append(vec![ev], Some(RunUpdate::default())).await {
                    Err(StoreError::RunTerminal) => return Ok(()),
                    r => r?,
                };
                last_event = recs.last().map(|r| r.event_id.clone());
            }
        }
        Begin::Fresh => {
            last_event = match start_run(&ctx).await {
                Err(StoreError::RunTerminal) => return Ok(()),
                r => r?,
            };
        }
    }

    let deadline = graph
        .settings
        .get("timeout")
        .and_then(Value::as_u64)
        .filter(|t| *t > 0)
        .map(|t| {
            // A resumed run keeps its original budget, measured from its start.
            let elapsed = ctx
                .run
                .started_at
                .as_deref()
                .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
                .map(|t0| {
                    (Utc::now() - t0.with_timezone(&Utc))
                        .num_milliseconds()
                        .max(0) as u64
                })
                .unwrap_or(0);
            tokio::time::Instant::now() + Duration::from_millis(t.saturating_sub(elapsed))
        });

    let (node_cancel_tx, node_cancel_rx) = watch::channel::<Option<String>>(None);
    // The last node's uncommitted completion (see [`Entry::last`]).
    let mut held: Option<Held> = None;
    let mut tasks: JoinSet<(usize, Result<NodeEnd, StoreError>)> = JoinSet::new();
    let mut stop: Option<Stop> = cancel_rx.borrow().clone().map(Stop::Cancel);

    loop {
        if stop.is_none() {
            // Schedule everything that is ready; skipping can make more nodes ready.
            loop {
                let mut progressed = false;
                // Built at most once per pass: outputs only change when tasks finish.
                let mut outputs_ctx: Option<Value> = None;
                let variables = ctx.variables.lock().await.clone();
                for i in 0..n {
                    if !matches!(states[i], NodeState::Pending) {
                        continue;
                    }
                    let inc = &graph.incoming[i];
                    if !inc.iter().all(|&e| states[graph.edges[e].source].decided()) {
                        continue;
                    }
                    progressed = true;
                    let scope: &Value =
                        outputs_ctx.get_or_insert_with(|| expr_context(&ctx, &variables, &states));
                    let mut edge_states = Vec::with_capacity(inc.len());
                    let mut edge_inputs = Map::new();
                    let mut skip_note: Option<String> = None;
                    let mut cause = last_event.clone();
                    for &e in inc {
                        let edge = &graph.edges[e];
                        let st = match &states[edge.source] {
                            NodeState::Done { output, event_id } => {
                                cause = Some(event_id.clone());
                                let holds = match &edge.condition {
                                    None => Ok(true),
                                    Some(c) => dag::edge_condition_holds(c, output, scope),
                                };
                                match holds {
                                    Ok(true) => {
                                        if let Some(port) = &edge.target_input {
                                            let key =
                                                edge.source_output.as_deref().unwrap_or("output");
                                            if let Some(v) = dag::output_port(output, key) {
                                                edge_inputs.insert(port.clone(), v.clone());
                                            }
                                        }
                                        EdgeState::Success
                                    }
                                    Ok(false) => EdgeState::Skipped,
                                    Err(msg) => {
                                        skip_note = Some(format!(
                                            "condition on edge '{}' failed: {msg}",
                                            edge.id
                                        ));
                                        EdgeState::Skipped
                                    }
                                }
                            }
                            NodeState::Failed { event_id, .. } => {
                                cause = Some(event_id.clone());
                                EdgeState::Failed
                            }
                            _ => EdgeState::Skipped,
                        };
                        edge_states.push(st);
                    }
                    let node = &graph.nodes[i];
                    let runs = !node.disabled && rule_allows(graph.rules[i], &edge_states);
                    if !runs {
                        let reason = if node.disabled {
                            "disabled".to_string()
                        } else {
                            skip_note.unwrap_or_else(|| {
                                format!("trigger rule {:?} not satisfied", graph.rules[i])
                            })
                        };
                        let ev = NewEvent::new(
                            "node.skipped",
                            json!({"nodeId": node.id, "reason": reason}),
                        )
                        .node(&node.id)
                        .caused_by(cause.as_deref());
                        match ctx.append(vec![ev], None).await {
                            Err(StoreError::RunTerminal) => return Ok(()),
                            r => r?,
                        };
                        states[i] = NodeState::Skipped;
                        continue;
                    }
                    let inputs = dag::resolve_inputs(node, scope, edge_inputs);
                    states[i] = NodeState::Running;
                    let last = stop.is_none()
                        && tasks.is_empty()
                        && states
                            .iter()
                            .enumerate()
                            .all(|(j, st)| j == i || st.decided());
                    let task_ctx = ctx.clone();
                    let cancel = node_cancel_rx.clone();
                    let parked_at = parked[i].take();
                    let entry = Entry {
                        first_attempt: attempts[i] + u32::from(parked_at.is_none()),
                        parked_at,
                        span_id: new_span_id(),
                        last,
                    };
                    let span = node_span(&ctx, node, entry.first_attempt, &entry.span_id);
                    tasks.spawn(
                        async move {
                            let r = run_node(task_ctx, i, inputs, cause, cancel, entry).await;
                            (i, r)
                        }
                        .instrument(span),
                    );
                }
                if !progressed {
                    break;
                }
            }
        }
        if tasks.is_empty() {
            break;
        }
        tokio::select! {
            joined = tasks.join_next() => {
                let Some(joined) = joined else { continue };
                let (i, result) = match joined {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::error!(error = %e, "node task panicked");
                        stop.get_or_insert(Stop::Fail {
                            error: json!({"code": "internal_error", "message": "node task panicked"}),
                            node_id: None, event_id: None,
                        });
                        let _ = node_cancel_tx.send(Some("run-failed".into()));
                        continue;
                    }
                };
                match result {
                    Err(StoreError::RunTerminal) => {
                        // Someone else (a cancel racing us) already finished the run.
                        node_cancel_tx.send_replace(Some("run-terminal".into()));
                        while tasks.join_next().await.is_some() {}
                        return Ok(());
                    }
                    Err(e) => return Err(e),
                    Ok(NodeEnd::Done { output, event_id, held: h }) => {
                        last_event = Some(event_id.clone());
                        states[i] = NodeState::Done { output, event_id };
                        if let Some(h) = h {
                            let ends_run = tasks.is_empty() && states.iter().all(NodeState::decided);
                            if ends_run {
                                held = Some(h);
                            } else {
                                // Something else still runs: the events cannot wait for the end.
                                match ctx.append(h.events, h.update).await {
                                    Err(StoreError::RunTerminal) => return Ok(()),
                                    r => r?,
                                };
                            }
                        }
                    }
                    Ok(NodeEnd::Failed { error, event_id }) => {
                        last_event = Some(event_id.clone());
                        let handled = graph.outgoing[i].iter().any(|&e| graph.rules[graph.edges[e].target].handles_failure());
                        if !handled && stop.is_none() {
                            stop = Some(Stop::Fail {
                                error: error.clone(),
                                node_id: Some(graph.nodes[i].id.clone()),
                                event_id: Some(event_id.clone()),
                            });
                            let _ = node_cancel_tx.send(Some("run-failed".into()));
                        }
                        states[i] = NodeState::Failed { event_id };
                    }
                    Ok(NodeEnd::Cancelled) => states[i] = NodeState::Cancelled,
                }
            }
            changed = cancel_rx.changed(), if stop.is_none() => {
                if changed.is_ok() {
                    if let Some(signal) = cancel_rx.borrow().clone() {
                        let _ = node_cancel_tx.send(Some(signal.reason.clone()));
                        stop = Some(Stop::Cancel(signal));
                    }
                }
            }
            _ = sleep_until_opt(deadline), if stop.is_none() && deadline.is_some() => {
                let limit = graph.settings.get("timeout").and_then(Value::as_u64).unwrap_or(0);
                stop = Some(Stop::Fail {
                    error: json!({"code": "run_timeout", "message": format!("run exceeded its {limit} ms timeout")}),
                    node_id: None, event_id: None,
                });
                let _ = node_cancel_tx.send(Some("run-timeout".into()));
            }
        }
    }

    // Children of a run that ends early are cancelled before it ends (cascade-cancel).
    if let Some(stop) = &stop {
        let reason = match stop {
            Stop::Cancel(_) => "parent-cancelled",
            Stop::Fail { .. } => "parent-failed",
        };
        // Boxed: this large future exists only while the run ends, but inline it would size
        // the driver of every parked run (docs/performance.md, "Memory").
        Box::pin(engine.cancel_children(&ctx.run, Some(&graph), reason)).await?;
    }
    let duration_ms = started.elapsed().as_millis() as u64;
    let now = ts(Utc::now());
    let (status, error) = match &stop {
        Some(Stop::Cancel(_)) => ("cancelled", None),
        Some(Stop::Fail { error, .. }) => ("failed", Some(error.clone())),
        None => ("completed", None),
    };
    let (event, update) = match stop {
        Some(Stop::Cancel(signal)) => (
            NewEvent::new("run.cancelled", signal.payload(&ctx.run))
                .caused_by(last_event.as_deref()),
            RunUpdate {
                status: Some("cancelled".into()),
                ..Default::default()
            },
        ),
        Some(Stop::Fail {
            error,
            node_id,
            event_id,
        }) => {
            let mut payload = json!({"error": error, "durationMs": duration_ms});
            if let Some(nid) = &node_id {
                payload["failedNodeId"] = json!(nid);
            }
            let cause = event_id.or(last_event.clone());
            (
                NewEvent::new("run.failed", payload).caused_by(cause.as_deref()),
                RunUpdate {
                    status: Some("failed".into()),
                    error: Some(strip_error(&error)),
                    ..Default::default()
                },
            )
        }
        None => {
            let outputs = run_outputs(&graph, &states);
            (
                NewEvent::new(
                    "run.completed",
                    json!({"outputs": outputs, "durationMs": duration_ms}),
                )
                .caused_by(last_event.as_deref()),
                RunUpdate {
                    status: Some("completed".into()),
                    outputs: Some(outputs),
                    ..Default::default()
                },
            )
        }
    };
    let update = RunUpdate {
        current_node_id: Some(None),
        completed_at: Some(now),
        ..update
    };
    // The held node's slot (`_slot`) is released only after this commit, as for any node.
    let (events, _slot) = match held {
        Some(h) => {
            let mut events = h.events;
            events.push(event);
            (events, h._slot)
        }
        None => (vec![event], None),
    };
    let appended = ctx.append(events, Some(update)).await.map(|_| ());
    if appended.is_ok() {
        log_terminal(&ctx.run.run_id, status, error.as_ref(), duration_ms);
    }
    ignore_terminal(appended)
}

fn ignore_terminal(r: Result<(), StoreError>) -> Result<(), StoreError> {
    match r {
        Err(StoreError::RunTerminal) => Ok(()),
        other => other,
    }
}

async fn start_run(ctx: &RunCtx) -> Result<Option<String>, StoreError> {
    let (event, update) = started_event(&ctx.run);
    let recs = ctx.append(vec![event], Some(update)).await?;
    Ok(recs.last().map(|r| r.event_id.clone()))
}

/// A run's `run.started` event and the row update that goes with it.
pub(super) fn started_event(run: &RunRecord) -> (NewEvent, RunUpdate) {
    let mut payload = json!({
        "workflowId": run.workflow_id,
        "inputs": run.inputs,
        "transport": "rest",
        "engineVersion": crate::ENGINE_VERSION,
        "owner": {"tenant": run.tenant_id, "principal": run.principal_id},
    });
    for k in ["tags", "metadata"] {
        if let Some(v) = run.options.get(k) {
            payload[k] = v.clone();
        }
    }
    let update = RunUpdate {
        status: Some("running".into()),
        started_at: Some(ts(Utc::now())),
        ..Default::default()
    };
    (NewEvent::new("run.started", payload), update)
}

/// Rebuild node states from a run's event log (restart recovery). Nodes that were started but
/// never finished go back to `Pending` and are dispatched again with the next attempt number.
fn fold(
    graph: &Graph,
    log: &[EventRecord],
    states: &mut [NodeState],
    attempts: &mut [u32],
    parked: &mut [Option<String>],
) {
    for ev in log {
        let Some(i) = ev
            .node_id
            .as_ref()
            .and_then(|id| graph.index.get(id))
            .copied()
        else {
            continue;
        };
        match ev.event_type.as_str() {
            "node.started" => {
                attempts[i] += 1;
                parked[i] = None;
            }
            "node.suspended" | "node.resumed" => parked[i] = Some(ev.event_id.clone()),
            "node.completed" => {
                states[i] = NodeState::Done {
                    output: ev.payload.get("outputs").cloned().unwrap_or(json!({})),
                    event_id: ev.event_id.clone(),
                }
            }
            "node.failed" => {
                states[i] = NodeState::Failed {
                    event_id: ev.event_id.clone(),
                }
            }
            "node.skipped" => states[i] = NodeState::Skipped,
            _ => {}
        }
    }
}

fn rule_allows(rule: TriggerRule, edges: &[EdgeState]) -> bool {
    if edges.is_empty() {
        return true;
    }
    let any = |s: EdgeState| edges.contains(&s);
    match rule {
        TriggerRule::AllSuccess => edges.iter().all(|e| *e == EdgeState::Success),
        TriggerRule::AnySuccess => any(EdgeState::Success),
        TriggerRule::AllComplete => !edges.iter().all(|e| *e == EdgeState::Skipped),
        TriggerRule::NoneFailed => !any(EdgeState::Failed) && any(EdgeState::Success),
        TriggerRule::AnyFailed => any(EdgeState::Failed),
    }
}

/// The evaluation context for expressions: variables, upstream outputs, run facts.
fn expr_context(ctx: &RunCtx, variables: &Value, states: &[NodeState]) -> Value {
    let mut nodes = Map::new();
    for (i, st) in states.iter().enumerate() {
        if let NodeState::Done { output, .. } = st {
            nodes.insert(ctx.graph.nodes[i].id.clone(), output.clone());
        }
    }
    json!({
        "variables": variables,
        "inputs": variables,
        "nodes": nodes,
        "run": {"id": ctx.run.run_id, "runId": ctx.run.run_id, "workflowId": ctx.run.workflow_id, "tenantId": ctx.run.tenant_id},
    })
}

/// Run outputs: the outputs of the executed "leaf" nodes (no executed successor). One leaf →
/// its output object; several → keyed by node id.
fn run_outputs(graph: &Graph, states: &[NodeState]) -> Value {
    let mut leaves: Vec<(usize, &Value)> = Vec::new();
    for (i, st) in states.iter().enumerate() {
        if let NodeState::Done { output, .. } = st {
            let has_done_successor = graph.outgoing[i]
                .iter()
                .any(|&e| matches!(states[graph.edges[e].target], NodeState::Done { .. }));
            if !has_done_successor {
                leaves.push((i, output));
            }
        }
    }
    match leaves.as_slice() {
        [(_, only)] => (*only).clone(),
        many => Value::Object(
            many.iter()
                .map(|(i, o)| (graph.nodes[*i].id.clone(), (*o).clone()))
                .collect(),
        ),
    }
}

/// The snapshot `error` is `{code, message, details?}`.
fn strip_error(e: &Value) -> Value {
    let mut out = json!({
        "code": e.get("code").cloned().unwrap_or(json!("node_failed")),
        "message": e.get("message").cloned().unwrap_or(json!("node failed")),
    });
    if let Some(d) = e.get("details") {
        out["details"] = d.clone();
    }
    out
}

async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// A node's `timeoutMs` deadline. While the host drains for shutdown no node can take a slot,
/// so a deadline passing then says nothing about the node: it does not fire, and the node is
/// dispatched again after the restart instead of failing.
async fn node_deadline(
    deadline: Option<tokio::time::Instant>,
    admission: &crate::ops::admission::Admission,
) {
    sleep_until_opt(deadline).await;
    if admission.is_draining() {
        std::future::pending::<()>().await;
    }
}

async fn cancelled(rx: &mut watch::Receiver<Option<String>>) -> String {
    loop {
        if let Some(r) = rx.borrow_and_update().clone() {
            return r;
        }
        if rx.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}

/// Backoff before retry `attempt + 1`: `retryDelayMs|backoffMs` (default 100) times
/// `backoffMultiplier` (default 2) per attempt, capped by `maxBackoffMs` (default 30 s).
fn backoff_ms(settings: &Value, attempt: u32) -> u64 {
    let base = settings
        .get("retryDelayMs")
        .or_else(|| settings.get("backoffMs"))
        .and_then(Value::as_u64)
        .unwrap_or(100);
    let mult = settings
        .get("backoffMultiplier")
        .and_then(Value::as_f64)
        .unwrap_or(2.0)
        .max(1.0);
    let cap = settings
        .get("maxBackoffMs")
        .and_then(Value::as_u64)
        .unwrap_or(30_000);
    let d = base as f64 * mult.powi(attempt.saturating_sub(1) as i32);
    (d.min(cap as f64)) as u64
}

async fn run_node(
    ctx: Arc<RunCtx>,
    i: usize,
    inputs: Result<Value, String>,
    cause: Option<String>,
    mut cancel: watch::Receiver<Option<String>>,
    entry: Entry,
) -> Result<NodeEnd, StoreError> {
    let Entry {
        first_attempt,
        mut parked_at,
        span_id,
        last,
    } = entry;
    let graph = &ctx.graph;
    let node = &graph.nodes[i];
    let max_retries = max_retries(graph, &node.settings);
    let timeout_ms = node
        .settings
        .get("timeoutMs")
        .or_else(|| node.settings.get("timeout"))
        .and_then(Value::as_u64)
        .filter(|t| *t > 0);
    let mut attempt = first_attempt;
    let mut attempts_here = 0u64;
    let mut cause = cause;
    let started_at = Instant::now();
    loop {
        attempts_here += 1;
        if attempt != first_attempt {
            tracing::Span::current().record("openwop.node_attempt", attempt.saturating_sub(1));
        }
        // `node.started` is stamped now but committed with the node's next events when the
        // node ends within [`INSTANT_NODE_GRACE`] (one commit instead of two for a noop or a
        // quick sandboxed call), else on its own once the grace has passed.
        let mut deferred = Deferred::None;
        let started_id = match parked_at.take() {
            // Re-entering a node that was parked before a restart: it did start already.
            Some(id) => id,
            None => {
                let started = NewEvent::new(
                    "node.started",
                    json!({"nodeId": node.id, "typeId": node.type_id, "attempt": attempt}),
                )
                .node(&node.id)
                .caused_by(cause.as_deref());
                let id = started.event_id.clone();
                deferred = Deferred::Started(started);
                id
            }
        };

        let t0 = Instant::now();
        // The execution slot of a computed result, held until that result is committed.
        let mut slot: Option<crate::ops::admission::ExecPermit> = None;
        let result: Option<NodeResult> = match &inputs {
            Err(msg) => Some(
                NodeOutcome::Failed {
                    code: "input_resolution_failed".into(),
                    message: msg.clone(),
                    details: None,
                    retryable: false,
                }
                .into(),
            ),
            Ok(resolved) => match ctx.engine.registry.get(&node.type_id) {
                None => Some(
                    NodeOutcome::Failed {
                        code: "unsupported_node_type".into(),
                        message: format!(
                            "no executor is registered for node type '{}'",
                            node.type_id
                        ),
                        details: Some(json!({"typeId": node.type_id})),
                        retryable: false,
                    }
                    .into(),
                ),
                Some(exec) => {
                    let inv = NodeInvocation {
                        type_id: node.type_id.clone(),
                        inputs: resolved.clone(),
                        config: node.config.clone(),
                        settings: node.settings.clone(),
                        ctx: NodeContext {
                            run_id: ctx.run.run_id.clone(),
                            workflow_id: ctx.run.workflow_id.clone(),
                            node_id: node.id.clone(),
                            tenant_id: ctx.run.tenant_id.clone(),
                            attempt,
                            variables: ctx.variables.lock().await.clone(),
                            trace: Some(TraceContext {
                                span_id: span_id.clone(),
                                ..ctx.trace.clone()
                            }),
                        },
                    };
                    // Computing needs an execution slot; parked waits inside give it back.
                    let fut = ctx
                        .engine
                        .admission
                        .gated(&ctx.run.tenant_id, exec.execute(inv));
                    let admission = ctx.engine.admission.clone();
                    let deadline =
                        timeout_ms.map(|t| tokio::time::Instant::now() + Duration::from_millis(t));
                    tokio::pin!(fut);
                    let grace = tokio::time::sleep(INSTANT_NODE_GRACE);
                    tokio::pin!(grace);
                    // The commit of a start that outlived the grace runs *beside* the node, never
                    // pausing it: a paused node may hold a database connection the commit needs.
                    let mut committing: Option<StartCommit<'_>> = None;
                    let outcome = loop {
                        tokio::select! {
                            (r, held) = &mut fut => {
                                slot = held;
                                break Some(r);
                            }
                            _ = node_deadline(deadline, &admission) => {
                                break Some(NodeOutcome::Failed {
                                    code: "node_timeout".into(),
                                    message: format!("node '{}' exceeded its {} ms timeout", node.id, timeout_ms.unwrap_or(0)),
                                    details: Some(json!({"timeoutMs": timeout_ms})),
                                    retryable: true,
                                }.into());
                            }
                            _ = cancelled(&mut cancel) => break None,
                            _ = &mut grace, if deferred.is_pending() => {
                                // Not an instant node: observers see it start now.
                                committing = deferred.commit_later(&ctx, &node.id);
                            }
                            r = async { committing.as_mut().expect("guarded").await }, if committing.is_some() => {
                                committing = None;
                                r?;
                            }
                        }
                    };
                    // Its events follow `node.started`: that commit ends first.
                    if let Some(c) = committing {
                        c.await?;
                    }
                    outcome
                }
            },
        };
        // An interrupt parks the node here until it is resolved; the resolution (or its
        // rejection / timeout) becomes the node's outcome, caused by the resume event.
        let (result, started_id) = match result {
            Some(NodeResult {
                outcome: NodeOutcome::Interrupt(req),
                events,
                variables,
            }) => match {
                // The interrupt's events are caused by `node.started`: commit it first.
                deferred.commit(&ctx, &node.id).await?;
                park_and_wait(
                    &ctx,
                    node,
                    attempt,
                    &req,
                    &started_id,
                    slot.take(),
                    &span_id,
                    &mut cancel,
                )
                .await?
            } {
                Some((outcome, cause_id)) => (
                    Some(NodeResult {
                        outcome,
                        events,
                        variables,
                    }),
                    cause_id,
                ),
                None => (None, started_id),
            },
            other => (other, started_id),
        };
        let Some(result) = result else {
            let reason = cancel.borrow().clone().unwrap_or_default();
            let ev = NewEvent::new(
                "node.cancelled",
                json!({"nodeId": node.id, "reason": reason}),
            )
            .node(&node.id)
            .caused_by(Some(&started_id));
            let (events, update) = deferred.prepend(&node.id, vec![ev], None);
            ctx.append(events, update).await?;
            return Ok(NodeEnd::Cancelled);
        };
        let mut events: Vec<NewEvent> = result
            .events
            .into_iter()
            .map(|e| {
                NewEvent::new(e.event_type, e.payload)
                    .node(&node.id)
                    .caused_by(Some(&started_id))
            })
            .collect();
        let duration_ms = t0.elapsed().as_millis() as u64;
        match result.outcome {
            NodeOutcome::Completed { output, metrics } => {
                let mut payload = json!({"nodeId": node.id, "outputs": output, "durationMs": duration_ms, "attempt": attempt});
                if let Some(m) = metrics {
                    payload["metrics"] = m;
                }
                events.push(
                    NewEvent::new("node.completed", payload)
                        .node(&node.id)
                        .caused_by(Some(&started_id)),
                );
                let recs = if result.variables.is_empty() {
                    let (events, update) = deferred.prepend(&node.id, events, None);
                    if last {
                        log_node_end(&ctx.run.run_id, node, None, duration_ms, attempt);
                        let event_id = events
                            .last()
                            .map(|e| e.event_id.clone())
                            .unwrap_or_default();
                        return Ok(NodeEnd::Done {
                            output,
                            event_id,
                            held: Some(Held {
                                events,
                                update,
                                _slot: slot.take(),
                            }),
                        });
                    }
                    ctx.append(events, update).await?
                } else {
                    commit_variable_writes(
                        &ctx,
                        &node.id,
                        &started_id,
                        result.variables,
                        events,
                        deferred,
                    )
                    .await?
                };
                log_node_end(&ctx.run.run_id, node, None, duration_ms, attempt);
                return Ok(NodeEnd::Done {
                    output,
                    event_id: recs.last().unwrap().event_id.clone(),
                    held: None,
                });
            }
            NodeOutcome::Interrupt(_) => unreachable!("interrupts are resolved above"),
            outcome @ NodeOutcome::Failed { .. } => {
                let error = outcome.error_json().unwrap();
                let retryable = error["retryable"].as_bool().unwrap_or(false);
                if retryable && attempts_here <= max_retries {
                    let delay = backoff_ms(&node.settings, attempts_here as u32);
                    events.push(
                        NewEvent::new(
                            "node.retried",
                            json!({"nodeId": node.id, "attempt": attempt, "nextAttempt": attempt + 1, "delayMs": delay, "error": error}),
                        )
                        .node(&node.id)
                        .caused_by(Some(&started_id)),
                    );
                    let (events, update) = deferred.prepend(&node.id, events, None);
                    let recs = ctx.append(events, update).await?;
                    tracing::info!(
                        runId = %ctx.run.run_id,
                        nodeId = %node.id,
                        status = "retrying",
                        errorCode = error["code"].as_str(),
                        error = error["message"].as_str(),
                        attempt,
                        delayMs = delay,
                        "node attempt failed; retrying"
                    );
                    cause = recs.last().map(|r| r.event_id.clone());
                    // The failure is recorded: the back-off wait holds no slot.
                    drop(slot.take());
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(delay)) => {}
                        reason = cancelled(&mut cancel) => {
                            let ev = NewEvent::new("node.cancelled", json!({"nodeId": node.id, "reason": reason}))
                                .node(&node.id)
                                .caused_by(cause.as_deref());
                            ctx.append(vec![ev], None).await?;
                            return Ok(NodeEnd::Cancelled);
                        }
                    }
                    attempt += 1;
                    continue;
                }
                events.push(
                    NewEvent::new(
                        "node.failed",
                        json!({"nodeId": node.id, "error": error, "attempts": attempts_here,
                               "durationMs": started_at.elapsed().as_millis() as u64}),
                    )
                    .node(&node.id)
                    .caused_by(Some(&started_id)),
                );
                let (events, update) = deferred.prepend(&node.id, events, None);
                let recs = ctx.append(events, update).await?;
                log_node_end(
                    &ctx.run.run_id,
                    node,
                    Some(&error),
                    started_at.elapsed().as_millis() as u64,
                    attempt,
                );
                return Ok(NodeEnd::Failed {
                    error,
                    event_id: recs.last().unwrap().event_id.clone(),
                });
            }
        }
    }
}

/// Park the node on its interrupt and wait. `None` = the run was cancelled meanwhile;
/// otherwise the node's outcome and the event id that caused it.
async fn park_and_wait(
    ctx: &RunCtx,
    node: &dag::Node,
    attempt: u32,
    req: &crate::interrupts::InterruptRequest,
    started_id: &str,
    slot: Option<crate::ops::admission::ExecPermit>,
    node_span_id: &str,
    cancel: &mut watch::Receiver<Option<String>>,
) -> Result<Option<(NodeOutcome, String)>, StoreError> {
    use crate::interrupts::WaitEnd;
    let interrupts = ctx.engine.interrupts.clone();
    let key = format!("{}:{}:{}", ctx.run.run_id, node.id, attempt);
    // Boxed: raising the interrupt is over before the long wait, so it must not size the
    // parked node task (docs/performance.md, "Memory").
    let rec = Box::pin(interrupts.park(&ctx.run.run_id, &node.id, &key, req, started_id)).await?;
    // Parked durably: waiting for the resolution holds no execution slot.
    drop(slot);
    // `openwop.interrupt`: open while the node waits (observability.md §"Span naming").
    let span = tracing::info_span!(
        "openwop.interrupt",
        openwop.interrupt_kind = %rec.kind,
        openwop.interrupt_id = %rec.interrupt_id,
        trace_id = %ctx.trace.trace_id,
        span_id = %new_span_id(),
        parent_span_id = %node_span_id,
    );
    let waiting = crate::interrupts::Kind::parse(&rec.kind)
        .map(crate::interrupts::Kind::waiting_status)
        .unwrap_or("waiting");
    // Logged inside the span (not `parent:`): the JSON formatter lists the *current* spans.
    span.in_scope(|| {
        tracing::info!(
        metricKind = "openwop.interrupt.requested",
        runId = %ctx.run.run_id,
        nodeId = %node.id,
        nodeType = %node.type_id,
        interruptKind = %rec.kind,
        interruptId = %rec.interrupt_id,
        status = waiting,
        "run parked on an interrupt"
        )
    });
    let parked_at = Instant::now();
    let end = interrupts
        .wait(&rec, cancelled(cancel))
        .instrument(span.clone())
        .await?;
    // How the wait ended (observability.md `openwop.interrupt.duration`: resolved | timeout |
    // cancelled), with the error code the node now fails with, if any.
    let (how, error_code) = match &end {
        WaitEnd::Resolved(done) => {
            let rejected = done.kind == "approval"
                && done
                    .resolution
                    .as_ref()
                    .and_then(|r| r.get("action"))
                    .and_then(Value::as_str)
                    == Some("reject");
            ("resolved", rejected.then_some("interrupt_rejected"))
        }
        WaitEnd::TimedOut(_) => ("timeout", Some("interrupt_timeout")),
        WaitEnd::Cancelled(_) => ("cancelled", None),
    };
    span.in_scope(|| {
        tracing::info!(
        runId = %ctx.run.run_id,
        nodeId = %node.id,
        interruptKind = %rec.kind,
        interruptId = %rec.interrupt_id,
        status = how,
        errorCode = error_code,
        durationMs = parked_at.elapsed().as_millis() as u64,
        "interrupt wait ended"
        )
    });
    Ok(match end {
        WaitEnd::Cancelled(_) => None,
        WaitEnd::Resolved(done) => {
            let output = done.resolution.clone().unwrap_or(json!({}));
            let cause = done
                .resumed_event_id
                .clone()
                .unwrap_or(done.requested_event_id.clone());
            let rejected = done.kind == "approval"
                && output.get("action").and_then(Value::as_str) == Some("reject");
            let outcome = if rejected {
                NodeOutcome::Failed {
                    code: "interrupt_rejected".into(),
                    message: format!("approval at node '{}' was rejected", node.id),
                    details: Some(output),
                    retryable: false,
                }
            } else {
                NodeOutcome::Completed {
                    output,
                    metrics: None,
                }
            };
            Some((outcome, cause))
        }
        WaitEnd::TimedOut(done) => Some((
            NodeOutcome::Failed {
                code: "interrupt_timeout".into(),
                message: format!(
                    "interrupt at node '{}' was not resolved within {} ms",
                    node.id,
                    done.timeout_ms.unwrap_or(0)
                ),
                details: Some(
                    json!({"interruptId": done.interrupt_id, "timeoutMs": done.timeout_ms}),
                ),
                retryable: false,
            },
            done.requested_event_id.clone(),
        )),
    })
}

/// Commit a completed node's variable writes with its events: one `variable.changed` per key
/// before `node.completed`, and the new bag on the run row in the same transaction, so a
/// restarted run resumes with exactly the variables its log explains.
async fn commit_variable_writes(
    ctx: &RunCtx,
    node_id: &str,
    started_id: &str,
    writes: Map<String, Value>,
    mut events: Vec<NewEvent>,
    mut deferred: Deferred,
) -> Result<Vec<EventRecord>, StoreError> {
    let mut vars = ctx.variables.lock().await;
    let mut next = match &*vars {
        Value::Object(m) => m.clone(),
        _ => Map::new(),
    };
    let completed = events.pop();
    for (name, value) in writes {
        events.push(
            NewEvent::new(
                "variable.changed",
                json!({"name": name, "value": value, "nodeId": node_id}),
            )
            .node(node_id)
            .caused_by(Some(started_id)),
        );
        next.insert(name, value);
    }
    events.extend(completed);
    let next = Value::Object(next);
    let update = RunUpdate {
        variables: Some(next.clone()),
        ..Default::default()
    };
    let (events, update) = deferred.prepend(node_id, events, Some(update));
    let recs = ctx.append(events, update).await?;
    *vars = next;
    Ok(recs)
}
