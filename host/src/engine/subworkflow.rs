//! `core.subWorkflow` (node-packs.md §"`core.subWorkflow` contract", RFC 0022 §B): start a
//! child run of another workflow, wait for its terminal event, map variables in and out, and
//! cascade cancellation from parent to child (interrupt-profiles.md, cascade-cancel).
//!
//! Waiting costs no thread and no sandbox slot: the node's future sleeps on the child's event
//! broadcast. The child is found again by (parent run, node) after a restart, so a resumed
//! parent re-attaches to the child it already started instead of starting another.

use std::sync::{Arc, Weak};

use async_trait::async_trait;
use serde_json::{json, Map, Value};
use tokio::sync::broadcast::error::RecvError;

use super::dag::Graph;
use super::registry::{NodeExecutor, NodeInvocation, NodeOutcome, NodeResult};
use super::{CancelSignal, Engine, EngineError};
use crate::store::{is_terminal_status, RunRecord, StoreError};
use crate::telemetry::trace::TRACE_CONTEXT;

pub const TYPE_ID: &str = "core.subWorkflow";

/// The interrupt profile this module implements (advertised in `extensions.interrupts`).
pub const CASCADE_CANCEL_PROFILE: &str = "openwop-interrupt-cascade-cancel";

/// Deepest parent → child nesting; a workflow that (indirectly) calls itself stops here.
pub const MAX_DEPTH: usize = 16;

/// What `run.cancelled.reason` says on a child whose parent ended in `parent_status`.
pub fn cascade_reason(parent_status: &str) -> &'static str {
    match parent_status {
        "failed" => "parent-failed",
        _ => "parent-cancelled",
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum OnChildFailure {
    FailParent,
    Absorb,
}

/// A validated node config.
#[derive(Debug, Clone)]
struct Config {
    workflow_id: String,
    on_child_failure: OnChildFailure,
    /// child variable ← parent variable
    input_mapping: Vec<(String, String)>,
    /// parent variable ← child variable
    output_mapping: Vec<(String, String)>,
}

fn mapping(config: &Value, key: &str) -> Result<Vec<(String, String)>, String> {
    match config.get(key) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Object(m)) => m
            .iter()
            .map(|(k, v)| match v.as_str() {
                Some(s) if !k.is_empty() && !s.is_empty() => Ok((k.clone(), s.to_string())),
                _ => Err(format!(
                    "config.{key} must map non-empty names to non-empty variable names"
                )),
            })
            .collect(),
        Some(_) => Err(format!("config.{key} must be an object of strings")),
    }
}

fn parse(config: &Value) -> Result<Config, String> {
    let workflow_id = match config.get("workflowId") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        _ => return Err("config.workflowId must be a non-empty string".into()),
    };
    match config.get("waitForCompletion") {
        None | Some(Value::Bool(true)) => {}
        Some(Value::Bool(false)) => {
            return Err("config.waitForCompletion: false (asynchronous dispatch) is not supported; the parent always waits".into())
        }
        Some(_) => return Err("config.waitForCompletion must be a boolean".into()),
    }
    let on_child_failure = match config.get("onChildFailure") {
        None => OnChildFailure::FailParent,
        Some(v) if v == "fail-parent" => OnChildFailure::FailParent,
        Some(v) if v == "absorb" => OnChildFailure::Absorb,
        Some(_) => {
            return Err("config.onChildFailure must be \"fail-parent\" or \"absorb\"".into())
        }
    };
    if let Some(v) = config.get("propagateCancellation") {
        if !v.is_boolean() {
            return Err("config.propagateCancellation must be a boolean".into());
        }
    }
    Ok(Config {
        workflow_id,
        on_child_failure,
        input_mapping: mapping(config, "inputMapping")?,
        output_mapping: mapping(config, "outputMapping")?,
    })
}

/// Whether the node that started a child cascades cancellation to it (default yes).
fn propagates(graph: &Graph, node_id: &str) -> bool {
    graph
        .index
        .get(node_id)
        .and_then(|&i| graph.nodes[i].config.get("propagateCancellation"))
        .and_then(Value::as_bool)
        .unwrap_or(true)
}

pub struct SubWorkflow {
    engine: Weak<Engine>,
}

impl SubWorkflow {
    /// Registers the executor; it holds the engine weakly (the engine owns the registry).
    pub fn register(engine: &Arc<Engine>) {
        engine.registry().register(
            TYPE_ID,
            Arc::new(SubWorkflow {
                engine: Arc::downgrade(engine),
            }),
        );
    }
}

fn failed(code: &str, message: String, details: Value) -> NodeResult {
    NodeOutcome::Failed {
        code: code.into(),
        message,
        details: Some(details),
        retryable: false,
    }
    .into()
}

/// Failures of the dispatch step itself, before a child exists.
enum DispatchError {
    Node(NodeResult),
    Store(StoreError),
}

impl From<StoreError> for DispatchError {
    fn from(e: StoreError) -> Self {
        DispatchError::Store(e)
    }
}

#[async_trait]
impl NodeExecutor for SubWorkflow {
    async fn execute(&self, inv: NodeInvocation) -> NodeResult {
        let config = match parse(&inv.config) {
            Ok(c) => c,
            Err(msg) => return failed("validation_error", msg, json!({"typeId": TYPE_ID})),
        };
        let Some(engine) = self.engine.upgrade() else {
            return NodeResult::failed("internal_error", "the engine is shutting down");
        };
        let storage = |e: StoreError| {
            failed(
                "storage_error",
                format!("sub-workflow bookkeeping failed: {e}"),
                json!({}),
            )
        };
        let child_id = match find_or_start_child(&engine, &inv, &config).await {
            Ok(id) => id,
            Err(DispatchError::Node(r)) => return r,
            Err(DispatchError::Store(e)) => return storage(e),
        };
        // Waiting on the child computes nothing: give the execution slot back (the child
        // needs one), or a wide fan-out would hold every slot and starve its own children.
        let waited =
            crate::ops::admission::park(wait_for_terminal(&engine, &inv.ctx.run_id, &child_id));
        let child = match waited.await {
            Ok(c) => c,
            Err(e) => return storage(e),
        };
        finish(&config, child)
    }

    fn validate_config(&self, _type_id: &str, config: &Value) -> Result<(), String> {
        parse(config).map(|_| ())
    }
}

/// The child this node already started (a resumed parent), else a new one.
async fn find_or_start_child(
    engine: &Arc<Engine>,
    inv: &NodeInvocation,
    config: &Config,
) -> Result<String, DispatchError> {
    let store = engine.store();
    let parent_id = &inv.ctx.run_id;
    if let Some(c) = store
        .list_child_runs(parent_id)
        .await?
        .into_iter()
        .find(|c| c.parent_node_id == inv.ctx.node_id)
    {
        return Ok(c.run_id);
    }
    let parent = store
        .get_run(parent_id)
        .await?
        .ok_or(StoreError::RunNotFound)?;
    let depth = depth_of(engine, &parent).await?;
    if depth >= MAX_DEPTH {
        return Err(DispatchError::Node(failed(
            "subworkflow_depth_exceeded",
            format!("sub-workflows nest at most {MAX_DEPTH} deep"),
            json!({"maxDepth": MAX_DEPTH, "workflowId": config.workflow_id}),
        )));
    }

    // RFC 0022 §B: child defaults first, then the parent's projections (a one-shot fold).
    // An unset parent variable leaves the child variable unset — not null, and not the
    // child's default either.
    let mut inputs = Map::new();
    let mut unset = Vec::new();
    for (child_key, parent_key) in &config.input_mapping {
        match inv.ctx.variables.get(parent_key).filter(|v| !v.is_null()) {
            Some(v) => {
                inputs.insert(child_key.clone(), v.clone());
            }
            None => unset.push(child_key.clone()),
        }
    }
    // The child workflow is resolved as the parent's tenant sees it (its own definitions
    // first, then the operator's shared ones).
    let prepared = match engine
        .prepare_run(&parent.tenant_id, &config.workflow_id, &inputs)
        .await
    {
        Ok(p) => p,
        Err(EngineError::WorkflowNotFound(id)) => {
            return Err(DispatchError::Node(failed(
                "unknown_child_workflow",
                format!("core.subWorkflow references unknown workflow '{id}'"),
                json!({"workflowId": id}),
            )))
        }
        Err(EngineError::Invalid(problems)) => {
            let errors: Vec<Value> = problems
                .iter()
                .map(|p| json!({"path": p.path, "code": p.code, "message": p.message}))
                .collect();
            return Err(DispatchError::Node(failed(
                "child_input_invalid",
                format!(
                    "the mapped inputs do not satisfy workflow '{}'",
                    config.workflow_id
                ),
                json!({"workflowId": config.workflow_id, "errors": errors}),
            )));
        }
        Err(EngineError::Store(e)) => return Err(e.into()),
    };
    let mut prepared = prepared;
    if let Value::Object(m) = &mut prepared.variables {
        for k in &unset {
            m.remove(k);
        }
    }
    // A child belongs to its parent's tenant and acts for the parent's principal. Its run
    // span is a child of this invoke node's span, in the parent's trace (observability.md
    // §"Sub-workflow attributes").
    let options = match &inv.ctx.trace {
        Some(t) => json!({TRACE_CONTEXT: t.child().to_json(Some(&t.span_id))}),
        None => json!({}),
    };
    let mut child = prepared.into_record(
        parent.tenant_id.clone(),
        parent.principal_id.clone(),
        Value::Object(inputs),
        options,
    );
    child.parent_run_id = Some(parent.run_id.clone());
    child.parent_node_id = Some(inv.ctx.node_id.clone());
    store.create_run(&child, None).await?;
    let id = child.run_id.clone();
    engine.start(child);
    Ok(id)
}

/// How many ancestors `run` has (bounded by [`MAX_DEPTH`]).
async fn depth_of(engine: &Engine, run: &RunRecord) -> Result<usize, StoreError> {
    let mut depth = 0;
    let mut parent = run.parent_run_id.clone();
    while let Some(p) = parent {
        depth += 1;
        if depth >= MAX_DEPTH {
            break;
        }
        parent = engine
            .store()
            .get_run(&p)
            .await?
            .and_then(|r| r.parent_run_id);
    }
    Ok(depth)
}

/// Sleep on the child's event stream until its terminal event is committed. While the child
/// waits on a human or an external event, the parent shows the same `waiting-*` status (the
/// run as a whole is waiting on it).
async fn wait_for_terminal(
    engine: &Engine,
    parent_id: &str,
    child_id: &str,
) -> Result<RunRecord, StoreError> {
    let store = engine.store();
    let mut mirrored = false;
    loop {
        // Subscribe before reading, so an event between the two is not missed.
        let mut rx = engine.events.subscribe(child_id);
        loop {
            let child = store
                .get_run(child_id)
                .await?
                .ok_or(StoreError::RunNotFound)?;
            if child.is_terminal() {
                if mirrored {
                    store.set_run_status(parent_id, "running").await?;
                }
                return Ok(child);
            }
            let waiting = child.status.starts_with("waiting-");
            if waiting || mirrored {
                let parent_status = store.get_run(parent_id).await?.map(|r| r.status);
                let ours = matches!(parent_status.as_deref(), Some(s) if s == "running" || s.starts_with("waiting-"));
                if ours {
                    let want = if waiting {
                        child.status.as_str()
                    } else {
                        "running"
                    };
                    if parent_status.as_deref() != Some(want) {
                        store.set_run_status(parent_id, want).await?;
                    }
                    mirrored = waiting;
                }
            }
            match rx.recv().await {
                Ok(_) | Err(RecvError::Lagged(_)) => continue,
                // The child's live channel closed (it ended): read the final state.
                Err(RecvError::Closed) => break,
            }
        }
    }
}

/// The node's result from the child's terminal state.
fn finish(config: &Config, child: RunRecord) -> NodeResult {
    let mut output = json!({
        "childRunId": child.run_id,
        "childStatus": child.status,
        "childWorkflowId": child.workflow_id,
    });
    match child.status.as_str() {
        "completed" => {
            if let Some(o) = &child.outputs {
                output["childOutputs"] = o.clone();
            }
            // A child variable that is unset leaves the parent variable untouched.
            let writes: Map<String, Value> = config
                .output_mapping
                .iter()
                .filter_map(|(parent_key, child_key)| {
                    child
                        .variables
                        .get(child_key)
                        .map(|v| (parent_key.clone(), v.clone()))
                })
                .collect();
            NodeResult::completed(output).with_variables(writes)
        }
        _ if config.on_child_failure == OnChildFailure::Absorb => {
            if let Some(e) = &child.error {
                output["childError"] = e.clone();
            }
            NodeResult::completed(output)
        }
        status => {
            let code = if status == "cancelled" {
                "child_cancelled"
            } else {
                "child_failed"
            };
            let mut details = output;
            if let Some(e) = &child.error {
                details["childError"] = e.clone();
            }
            failed(
                code,
                format!("sub-workflow run '{}' ended {status}", child.run_id),
                details,
            )
        }
    }
}

impl Engine {
    /// Cancel `parent`'s unfinished children that cascade (propagateCancellation, default true),
    /// each with `run.cancelled{reason, parentRunId}`; their own drivers cascade further down.
    pub(crate) async fn cancel_children(
        &self,
        parent: &RunRecord,
        graph: Option<&Graph>,
        reason: &str,
    ) -> Result<(), StoreError> {
        let children = self.store.list_child_runs(&parent.run_id).await?;
        if children.iter().all(|c| is_terminal_status(&c.status)) {
            return Ok(());
        }
        let loaded;
        let graph = match graph {
            Some(g) => Some(g),
            None => {
                loaded = self.graph_for(&parent.definition_digest).await.ok();
                loaded.as_deref()
            }
        };
        for c in children {
            if is_terminal_status(&c.status) {
                continue;
            }
            if !graph
                .map(|g| propagates(g, &c.parent_node_id))
                .unwrap_or(true)
            {
                continue;
            }
            self.cascade_into(&c.run_id, &parent.run_id, reason).await?;
        }
        Ok(())
    }

    /// Cancel `child` because `parent_run_id` ended (`reason`): its open interrupts are
    /// invalidated first (a later resolve answers "gone"), then the run is cancelled with
    /// `run.cancelled{reason, parentRunId, parentNodeId}`.
    pub(crate) async fn cascade_into(
        &self,
        child: &str,
        parent_run_id: &str,
        reason: &str,
    ) -> Result<(), StoreError> {
        self.interrupts
            .invalidate_for_parent(child, parent_run_id, reason)
            .await?;
        let signal = CancelSignal {
            reason: reason.to_string(),
            parent_run_id: Some(parent_run_id.to_string()),
        };
        self.cancel_with(child, signal).await?;
        Ok(())
    }

    /// Child runs of `run_id` as listed on its snapshot (`childRuns`).
    pub async fn child_runs(&self, run_id: &str) -> Result<Vec<Value>, StoreError> {
        Ok(self
            .store
            .list_child_runs(run_id)
            .await?
            .iter()
            .map(|c| c.to_json())
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_is_checked_at_registration() {
        assert!(parse(&json!({"workflowId": "child"})).is_ok());
        assert!(parse(&json!({})).is_err());
        assert!(parse(&json!({"workflowId": ""})).is_err());
        assert!(parse(&json!({"workflowId": "c", "waitForCompletion": false})).is_err());
        assert!(parse(&json!({"workflowId": "c", "onChildFailure": "ignore"})).is_err());
        assert!(parse(&json!({"workflowId": "c", "inputMapping": {"a": 1}})).is_err());
        assert!(parse(&json!({"workflowId": "c", "outputMapping": "x"})).is_err());
        assert!(parse(&json!({"workflowId": "c", "propagateCancellation": "yes"})).is_err());
        let c = parse(&json!({"workflowId": "c", "onChildFailure": "absorb",
            "inputMapping": {"childVar": "parentVar"}}))
        .unwrap();
        assert_eq!(c.on_child_failure, OnChildFailure::Absorb);
        assert_eq!(c.input_mapping, [("childVar".into(), "parentVar".into())]);
    }
}
