//! Built-in `core.*` node types.

pub mod gates;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{json, Value};

use super::registry::{NodeExecutor, NodeInvocation, NodeOutcome, NodeRegistry, NodeResult};

/// Upper bound for `core.delay` (ms).
pub const MAX_DELAY_MS: u64 = 3_600_000;

pub fn register_core(registry: &NodeRegistry) {
    registry.register("core.noop", Arc::new(Noop));
    registry.register("core.fail", Arc::new(Fail));
    registry.register("core.delay", Arc::new(Delay));
    registry.register("core.identity", Arc::new(Identity));
    registry.register("core.approvalGate", Arc::new(gates::ApprovalGate));
    registry.register("core.clarificationGate", Arc::new(gates::ClarificationGate));
    registry.register("core.interrupt", Arc::new(gates::ExternalEvent));
}

/// Completes immediately with an empty output.
pub struct Noop;

#[async_trait]
impl NodeExecutor for Noop {
    async fn execute(&self, _inv: NodeInvocation) -> NodeResult {
        NodeResult::completed(json!({}))
    }
}

/// Always fails. `config.code` / `config.message` / `config.retryable` / `config.details` shape
/// the error (also accepted as inputs); `config.failAttempts: N` fails only the first N attempts
/// (handy for exercising retries).
pub struct Fail;

#[async_trait]
impl NodeExecutor for Fail {
    async fn execute(&self, inv: NodeInvocation) -> NodeResult {
        let get = |k: &str| inv.inputs.get(k).or_else(|| inv.config.get(k)).cloned();
        if let Some(n) = get("failAttempts").and_then(|v| v.as_u64()) {
            if u64::from(inv.ctx.attempt) > n {
                return NodeResult::completed(json!({"attempt": inv.ctx.attempt}));
            }
        }
        let code = get("code").and_then(|v| v.as_str().map(str::to_string));
        let message = get("message").and_then(|v| v.as_str().map(str::to_string));
        NodeOutcome::Failed {
            code: code.unwrap_or_else(|| "node_failed".into()),
            message: message
                .unwrap_or_else(|| format!("node '{}' failed (core.fail)", inv.ctx.node_id)),
            details: get("details"),
            retryable: get("retryable").and_then(|v| v.as_bool()).unwrap_or(false),
        }
        .into()
    }

    fn validate_config(&self, _type_id: &str, config: &Value) -> Result<(), String> {
        for k in ["code", "message"] {
            if let Some(v) = config.get(k) {
                if !v.is_string() {
                    return Err(format!("config.{k} must be a string"));
                }
            }
        }
        Ok(())
    }
}

/// Sleeps `delayMs` (input, else config, default 1000), bounded `0..=MAX_DELAY_MS`.
pub struct Delay;

#[async_trait]
impl NodeExecutor for Delay {
    async fn execute(&self, inv: NodeInvocation) -> NodeResult {
        let raw = inv
            .inputs
            .get("delayMs")
            .filter(|v| !v.is_null())
            .or_else(|| inv.config.get("delayMs"))
            .cloned()
            .unwrap_or(json!(1000));
        let ms = match raw.as_f64() {
            Some(f) if f >= 0.0 && f <= MAX_DELAY_MS as f64 => f as u64,
            _ => {
                return NodeOutcome::Failed {
                    code: "validation_error".into(),
                    message: format!("delayMs must be a number between 0 and {MAX_DELAY_MS}"),
                    details: Some(json!({"delayMs": raw})),
                    retryable: false,
                }
                .into()
            }
        };
        // A sleeping run computes nothing: it must not hold an execution slot.
        crate::ops::admission::park(tokio::time::sleep(Duration::from_millis(ms))).await;
        NodeResult::completed(json!({"delayedMs": ms}))
    }
}

/// Echoes its resolved inputs as its output (`inputs.payload` → `output.payload`).
pub struct Identity;

#[async_trait]
impl NodeExecutor for Identity {
    async fn execute(&self, inv: NodeInvocation) -> NodeResult {
        NodeResult::completed(inv.inputs)
    }
}
