//! Runs pack node types through the sandbox as ordinary workflow nodes.
//!
//! Sandbox refusals become `node.failed` with the spec's `sandbox_*` code and
//! details; RFC 0008 resource breaches are also reported as a `cap.breached`
//! event (`wasm-memory`, `wasm-execution-time`, `wasm-fuel`) logged just before
//! the failure. A successful node reports the fuel it consumed, its peak
//! memory and its duration in the completion payload's `metrics`.

use std::sync::{Arc, Weak};

use async_trait::async_trait;
use serde_json::{json, Map, Value};
use wopbox_sandbox::{GuestResult, InvokeRequest, NodeContext as GuestContext, SandboxError};

use super::registry::{InstalledPack, PackService};
use crate::engine::registry::{NodeExecutor, NodeInvocation, NodeOutcome, NodeResult};

pub struct PackNodeExecutor {
    service: Weak<PackService>,
}

impl PackNodeExecutor {
    pub(super) fn new(service: Weak<PackService>) -> Self {
        PackNodeExecutor { service }
    }

    /// Is `e` this executor? (Deleting a pack only unregisters typeIds that
    /// pack executors own, never a built-in.)
    pub fn is(&self, e: &Arc<dyn NodeExecutor>) -> bool {
        std::ptr::addr_eq(Arc::as_ptr(e), self as *const Self)
    }
}

/// The RFC 0008 request's `inputs`: run variables overlaid with the node's
/// resolved input ports, so a pack node sees the run's inputs (as the
/// `conformance-wasm-pack-roundtrip` fixture expects) and explicit wiring wins.
pub(super) fn guest_inputs(variables: &Value, inputs: &Value) -> Value {
    let mut m: Map<String, Value> = variables.as_object().cloned().unwrap_or_default();
    if let Some(i) = inputs.as_object() {
        for (k, v) in i {
            m.insert(k.clone(), v.clone());
        }
    }
    Value::Object(m)
}

/// The RFC 0008 `nodeContext` of an invocation (shared with the remote
/// executor, so both tiers hand the guest the same context).
pub(super) fn guest_context(inv: &NodeInvocation) -> GuestContext {
    GuestContext {
        run_id: inv.ctx.run_id.clone(),
        node_id: inv.ctx.node_id.clone(),
        tenant_id: inv.ctx.tenant_id.clone(),
        // RFC 0008 attempts are 0-based; the engine counts from 1.
        attempt: inv.ctx.attempt.saturating_sub(1),
        configurable: inv.config.clone(),
        variables: inv
            .ctx
            .variables
            .as_object()
            .map(|m| m.clone().into_iter().collect())
            .unwrap_or_default(),
        ..GuestContext::default()
    }
}

pub(super) fn failed(code: &str, message: String, details: Value, retryable: bool) -> NodeResult {
    NodeOutcome::Failed {
        code: code.to_string(),
        message,
        details: Some(details),
        retryable,
    }
    .into()
}

fn sandbox_failure(e: SandboxError, node_id: &str) -> NodeResult {
    let retryable = matches!(e, SandboxError::Overloaded { .. });
    let breach = e.cap_breach();
    let mut r = failed(e.code(), e.to_string(), e.details(), retryable);
    if let Some(b) = breach {
        let mut payload = b.to_json();
        payload["nodeId"] = json!(node_id);
        r = r.with_event("cap.breached", payload);
    }
    r
}

/// The registry and the active pack that provides `inv.type_id` to the run's tenant, or the
/// node failure to report (shared by the local and the remote executor).
pub(super) fn resolve_pack(
    service: &Weak<PackService>,
    inv: &NodeInvocation,
) -> Result<(Arc<PackService>, Arc<InstalledPack>), NodeResult> {
    let Some(service) = service.upgrade() else {
        return Err(NodeResult::failed(
            "internal_error",
            "the pack registry is shutting down",
        ));
    };
    let Some(pack) = service.resolve(&inv.ctx.tenant_id, &inv.type_id) else {
        return Err(failed(
            "unsupported_node_type",
            format!(
                "no installed pack provides node type '{}' to this tenant",
                inv.type_id
            ),
            json!({"typeId": inv.type_id}),
            false,
        ));
    };
    Ok((service, pack))
}

#[async_trait]
impl NodeExecutor for PackNodeExecutor {
    async fn execute(&self, inv: NodeInvocation) -> NodeResult {
        let (service, pack) = match resolve_pack(&self.service, &inv) {
            Ok(found) => found,
            Err(refusal) => return refusal,
        };
        let context = guest_context(&inv);
        let req = InvokeRequest::new(
            inv.type_id.clone(),
            guest_inputs(&inv.ctx.variables, &inv.inputs),
        )
        .context(context);
        let node_id = inv.ctx.node_id.clone();
        match service.invoke(&pack, req).await {
            Err(e) => sandbox_failure(e, &node_id),
            Ok(out) => {
                let metrics = json!({
                    "pack": pack.record.name,
                    "packVersion": pack.record.version,
                    "fuelConsumed": out.metrics.fuel_consumed,
                    "peakMemoryBytes": out.metrics.peak_memory_bytes,
                    "durationMs": out.metrics.duration.as_secs_f64() * 1000.0,
                    "queuedMs": out.metrics.queued.as_secs_f64() * 1000.0,
                    "logs": out.logs,
                    "logsDropped": out.logs_dropped,
                    "stdout": out.stdout,
                    "stderr": out.stderr,
                });
                match out.result {
                    GuestResult::Completed(output) => NodeOutcome::Completed { output, metrics: Some(metrics) }.into(),
                    GuestResult::Failed { code, message, details } => NodeOutcome::Failed {
                        code,
                        message,
                        details: Some(json!({"guestDetails": details, "metrics": metrics})),
                        retryable: false,
                    }
                    .into(),
                    GuestResult::Suspended(payload) => failed(
                        "wasm_suspend_not_implemented",
                        "the pack asked to suspend the run; interrupts from packs are not supported yet".into(),
                        json!({"interrupt": payload}),
                        false,
                    ),
                }
            }
        }
    }
}
