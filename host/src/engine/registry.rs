//! The node-executor seam: a [`NodeExecutor`] executes one node invocation (built-in `core.*`
//! today, sandboxed pack nodes later); the [`NodeRegistry`] maps typeIds to executors and
//! accepts registrations at runtime.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use serde_json::{json, Map, Value};

/// Who and where: identifies the invocation to the executor.
#[derive(Debug, Clone)]
pub struct NodeContext {
    pub run_id: String,
    pub workflow_id: String,
    pub node_id: String,
    pub tenant_id: String,
    /// 1-based attempt number (retries and post-restart re-dispatch increment it).
    pub attempt: u32,
    /// The run's variables (definition defaults overlaid by the request's inputs).
    pub variables: Value,
    /// The node's `openwop.node.<typeId>` span in the run's trace: a node that starts other
    /// work (a sub-workflow) continues the trace from here.
    pub trace: Option<crate::telemetry::TraceContext>,
}

/// One node invocation.
#[derive(Debug, Clone)]
pub struct NodeInvocation {
    pub type_id: String,
    /// Resolved input ports (object keyed by port name).
    pub inputs: Value,
    /// The node's `config` (pre-execution constants).
    pub config: Value,
    /// The node's `settings` (timeout, retries, ...), as authored.
    pub settings: Value,
    pub ctx: NodeContext,
}

/// An event an executor asks the engine to append before the node's terminal event
/// (e.g. `cap.breached`). The engine sets runId, nodeId, sequence and causation.
#[derive(Debug, Clone)]
pub struct EmittedEvent {
    pub event_type: String,
    pub payload: Value,
}

#[derive(Debug, Clone)]
pub enum NodeOutcome {
    Completed {
        output: Value,
        metrics: Option<Value>,
    },
    Failed {
        code: String,
        message: String,
        details: Option<Value>,
        retryable: bool,
    },
    /// Park the run until the interrupt is resolved (see `crate::interrupts`).
    Interrupt(crate::interrupts::InterruptRequest),
}

/// What an executor returns: the outcome plus any extra events to log before it.
#[derive(Debug, Clone)]
pub struct NodeResult {
    pub outcome: NodeOutcome,
    pub events: Vec<EmittedEvent>,
    /// Run-variable writes to commit with a completed node (e.g. a sub-workflow's
    /// `outputMapping`); ignored when the node fails.
    pub variables: Map<String, Value>,
}

impl NodeResult {
    pub fn completed(output: Value) -> Self {
        NodeOutcome::Completed {
            output,
            metrics: None,
        }
        .into()
    }
    pub fn failed(code: impl Into<String>, message: impl Into<String>) -> Self {
        NodeOutcome::Failed {
            code: code.into(),
            message: message.into(),
            details: None,
            retryable: false,
        }
        .into()
    }
    pub fn with_variables(mut self, writes: Map<String, Value>) -> Self {
        self.variables.extend(writes);
        self
    }
    pub fn with_event(mut self, event_type: impl Into<String>, payload: Value) -> Self {
        self.events.push(EmittedEvent {
            event_type: event_type.into(),
            payload,
        });
        self
    }
}

impl From<NodeOutcome> for NodeResult {
    fn from(outcome: NodeOutcome) -> Self {
        NodeResult {
            outcome,
            events: Vec::new(),
            variables: Map::new(),
        }
    }
}

impl NodeOutcome {
    pub fn error_json(&self) -> Option<Value> {
        match self {
            NodeOutcome::Failed {
                code,
                message,
                details,
                retryable,
            } => {
                let mut e = json!({"code": code, "message": message, "retryable": retryable});
                if let Some(d) = details {
                    e["details"] = d.clone();
                }
                Some(e)
            }
            NodeOutcome::Completed { .. } | NodeOutcome::Interrupt(_) => None,
        }
    }
}

/// Executes nodes. Implementations must be cancel-safe: the engine drops the future when the run
/// is cancelled or the node times out.
#[async_trait]
pub trait NodeExecutor: Send + Sync + 'static {
    async fn execute(&self, invocation: NodeInvocation) -> NodeResult;

    /// Static validation of a node's config when a workflow is registered. Return a message to
    /// reject the definition.
    fn validate_config(&self, _type_id: &str, _config: &Value) -> Result<(), String> {
        Ok(())
    }
}

#[derive(Default)]
pub struct NodeRegistry {
    executors: RwLock<HashMap<String, Arc<dyn NodeExecutor>>>,
}

impl NodeRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Register (or replace) the executor for `type_id`. Safe at any time, including while runs
    /// execute: in-flight runs keep the executor they resolved.
    pub fn register(&self, type_id: impl Into<String>, executor: Arc<dyn NodeExecutor>) {
        self.executors
            .write()
            .unwrap()
            .insert(type_id.into(), executor);
    }

    pub fn unregister(&self, type_id: &str) -> bool {
        self.executors.write().unwrap().remove(type_id).is_some()
    }

    pub fn get(&self, type_id: &str) -> Option<Arc<dyn NodeExecutor>> {
        self.executors.read().unwrap().get(type_id).cloned()
    }

    pub fn contains(&self, type_id: &str) -> bool {
        self.executors.read().unwrap().contains_key(type_id)
    }

    pub fn type_ids(&self) -> Vec<String> {
        let mut v: Vec<String> = self.executors.read().unwrap().keys().cloned().collect();
        v.sort();
        v
    }
}
