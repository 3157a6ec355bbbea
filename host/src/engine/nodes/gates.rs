//! Interrupt node types: `core.approvalGate`, `core.clarificationGate` and `core.interrupt`.
//! Each returns [`NodeOutcome::Interrupt`]; the scheduler parks the run and the resolution
//! becomes the node's output (see `crate::interrupts`).

use async_trait::async_trait;
use serde_json::{json, Value};

use crate::engine::registry::{NodeExecutor, NodeInvocation, NodeOutcome, NodeResult};
use crate::interrupts::quorum::{QuorumRule, RejectionPolicy, MAX_REQUIRED_APPROVALS};
use crate::interrupts::{InterruptRequest, Kind};

/// Longest interrupt deadline accepted (`timeoutMs`): 30 days.
pub const MAX_INTERRUPT_TIMEOUT_MS: u64 = 30 * 24 * 3600 * 1000;
const APPROVAL_ACTIONS: [&str; 5] = ["accept", "reject", "refine", "edit", "ask"];

fn timeout_ms(config: &Value) -> Result<Option<u64>, String> {
    match config.get("timeoutMs") {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_u64() {
            Some(0) => Ok(None),
            Some(t) if t <= MAX_INTERRUPT_TIMEOUT_MS => Ok(Some(t)),
            _ => Err(format!(
                "config.timeoutMs must be an integer between 0 and {MAX_INTERRUPT_TIMEOUT_MS}"
            )),
        },
    }
}

fn opt_string(config: &Value, key: &str) -> Result<(), String> {
    match config.get(key) {
        None | Some(Value::Null) | Some(Value::String(_)) => Ok(()),
        Some(_) => Err(format!("config.{key} must be a string")),
    }
}

fn interrupt(req: Result<InterruptRequest, String>) -> NodeResult {
    match req {
        Ok(r) => NodeOutcome::Interrupt(r).into(),
        // Registration validates configs, so this only happens for definitions stored before a
        // rule tightened.
        Err(msg) => NodeResult::failed("invalid_config", msg),
    }
}

/// `core.approvalGate`: config `{title, description?, actions?, artifactId?, artifactType?,
/// artifactData?, timeoutMs?, approversList?, approverRoleRefs?, approverGroupRefs?, profile?}`;
/// input `artifactData` overrides the config's. Who may resolve is enforced by the HTTP layer
/// (`api::approvers`, `api::interrupts`).
pub struct ApprovalGate;

impl ApprovalGate {
    fn check(config: &Value) -> Result<(), String> {
        for k in [
            "title",
            "description",
            "artifactId",
            "artifactType",
            "profile",
        ] {
            opt_string(config, k)?;
        }
        for k in ["approversList", "approverRoleRefs", "approverGroupRefs"] {
            match config.get(k) {
                None | Some(Value::Null) => {}
                Some(Value::Array(a)) if a.iter().all(Value::is_string) => {}
                Some(_) => return Err(format!("config.{k} must be an array of strings")),
            }
        }
        match config.get("profile").and_then(Value::as_str) {
            None | Some(crate::api::approvers::AUTH_REQUIRED_PROFILE) => {}
            Some(p) => {
                return Err(format!(
                    "config.profile '{p}' is not an interrupt profile this host implements"
                ))
            }
        }
        if let Some(a) = config.get("actions") {
            let arr = a
                .as_array()
                .filter(|a| !a.is_empty())
                .ok_or("config.actions must be a non-empty array")?;
            for x in arr {
                match x.as_str() {
                    Some(s) if APPROVAL_ACTIONS.contains(&s) => {}
                    _ => {
                        return Err(format!(
                            "config.actions entries must be one of {APPROVAL_ACTIONS:?}"
                        ))
                    }
                }
            }
        }
        Self::check_quorum(config)?;
        timeout_ms(config).map(|_| ())
    }

    /// `requiredApprovals` / `rejectionPolicy` (interrupts::quorum). A quorum gate takes only
    /// accept/reject votes (a refine or edit by one of N approvers has no defined tally), and
    /// must be satisfiable by the approvers it names.
    fn check_quorum(config: &Value) -> Result<(), String> {
        let required = match config.get("requiredApprovals") {
            None | Some(Value::Null) => 1,
            Some(v) => match v.as_u64() {
                Some(n) if (1..=MAX_REQUIRED_APPROVALS).contains(&n) => n,
                _ => {
                    return Err(format!(
                        "config.requiredApprovals must be an integer between 1 and {MAX_REQUIRED_APPROVALS}"
                    ))
                }
            },
        };
        match config.get("rejectionPolicy") {
            None | Some(Value::Null) => {}
            Some(Value::String(p)) if RejectionPolicy::parse(p).is_some() => {}
            Some(_) => {
                return Err("config.rejectionPolicy must be 'single-veto' or 'majority'".into())
            }
        }
        if required == 1 {
            return Ok(());
        }
        if let Some(Value::Array(actions)) = config.get("actions") {
            if let Some(a) = actions
                .iter()
                .filter_map(Value::as_str)
                .find(|a| !["accept", "reject"].contains(a))
            {
                return Err(format!(
                    "config.actions: '{a}' is not available on a quorum gate (requiredApprovals > 1 takes accept/reject votes only)"
                ));
            }
        }
        let named = |k: &str| config.get(k).and_then(Value::as_array).map_or(0, Vec::len);
        let listed = named("approversList");
        if listed > 0
            && named("approverRoleRefs") == 0
            && named("approverGroupRefs") == 0
            && (listed as u64) < required
        {
            return Err(format!(
                "config.approversList names {listed} approvers but requiredApprovals is {required}: the quorum could never be reached"
            ));
        }
        Ok(())
    }

    fn request(inv: &NodeInvocation) -> Result<InterruptRequest, String> {
        let c = &inv.config;
        Self::check(c)?;
        let artifact = inv
            .inputs
            .get("artifactData")
            .or_else(|| c.get("artifactData"))
            .cloned()
            .unwrap_or(Value::Null);
        let mut data = json!({
            "artifactId": c.get("artifactId").cloned().unwrap_or_else(|| json!(format!("{}:{}", inv.ctx.run_id, inv.ctx.node_id))),
            "artifactType": c.get("artifactType").cloned().unwrap_or(json!("generic")),
            "title": c.get("title").cloned().unwrap_or_else(|| json!(inv.ctx.node_id)),
            "artifactData": artifact,
            "actions": c.get("actions").cloned().unwrap_or(json!(["accept", "reject"])),
        });
        for k in [
            "description",
            "approversList",
            "approverRoleRefs",
            "approverGroupRefs",
            "profile",
            "rejectionPolicy",
            "requiredApprovals",
        ] {
            if let Some(v) = c.get(k) {
                data[k] = v.clone();
            }
        }
        // A quorum gate's payload documents its whole rule (interrupt-profiles.md), defaults
        // included.
        if let Some(rule) = QuorumRule::from_data(&data) {
            data["rejectionPolicy"] = json!(rule.policy.as_str());
            data["rejectAt"] = json!(rule.reject_at());
        }
        Ok(InterruptRequest {
            kind: Kind::Approval,
            data,
            timeout_ms: timeout_ms(c)?,
        })
    }
}

#[async_trait]
impl NodeExecutor for ApprovalGate {
    async fn execute(&self, inv: NodeInvocation) -> NodeResult {
        interrupt(Self::request(&inv))
    }
    fn validate_config(&self, _type_id: &str, config: &Value) -> Result<(), String> {
        Self::check(config)
    }
}

/// `core.clarificationGate`: config `{questions: [{id, question, schema?}], contextType?,
/// timeoutMs?}`.
pub struct ClarificationGate;

impl ClarificationGate {
    fn check(config: &Value) -> Result<(), String> {
        let qs = config
            .get("questions")
            .and_then(Value::as_array)
            .filter(|q| !q.is_empty())
            .ok_or("config.questions must be a non-empty array")?;
        let mut seen = std::collections::HashSet::new();
        for (i, q) in qs.iter().enumerate() {
            let id = q
                .get("id")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .ok_or(format!(
                    "config.questions[{i}].id must be a non-empty string"
                ))?;
            if q.get("question").and_then(Value::as_str).is_none() {
                return Err(format!("config.questions[{i}].question must be a string"));
            }
            if !seen.insert(id) {
                return Err(format!(
                    "config.questions ids must be unique ('{id}' repeats)"
                ));
            }
        }
        opt_string(config, "contextType")?;
        timeout_ms(config).map(|_| ())
    }
}

#[async_trait]
impl NodeExecutor for ClarificationGate {
    async fn execute(&self, inv: NodeInvocation) -> NodeResult {
        interrupt(Self::check(&inv.config).and_then(|_| {
            let mut data = json!({"questions": inv.config["questions"]});
            if let Some(c) = inv.config.get("contextType") {
                data["contextType"] = c.clone();
            }
            Ok(InterruptRequest {
                kind: Kind::Clarification,
                data,
                timeout_ms: timeout_ms(&inv.config)?,
            })
        }))
    }
    fn validate_config(&self, _type_id: &str, config: &Value) -> Result<(), String> {
        Self::check(config)
    }
}

/// `core.interrupt` with `config.kind: "external-event"` and
/// `config.data: {eventType, correlation}` (+ `timeoutMs`, `redact: [key names]`).
pub struct ExternalEvent;

impl ExternalEvent {
    fn check(config: &Value) -> Result<(), String> {
        match config.get("kind").and_then(Value::as_str) {
            Some("external-event") => {}
            other => {
                return Err(format!(
                    "core.interrupt supports config.kind 'external-event' only (got {other:?}); use core.approvalGate / core.clarificationGate for the other kinds"
                ))
            }
        }
        let data = config.get("data").ok_or("config.data is required")?;
        if data.get("eventType").and_then(Value::as_str).is_none() {
            return Err("config.data.eventType must be a string".into());
        }
        match data.get("correlation") {
            None | Some(Value::Object(_)) => {}
            Some(_) => return Err("config.data.correlation must be an object".into()),
        }
        crate::interrupts::external::check_redact_config(config)?;
        timeout_ms(config).map(|_| ())
    }
}

#[async_trait]
impl NodeExecutor for ExternalEvent {
    async fn execute(&self, inv: NodeInvocation) -> NodeResult {
        interrupt(Self::check(&inv.config).and_then(|_| {
            let d = &inv.config["data"];
            // `correlationId` is added when the interrupt is raised (it derives from its id).
            let mut data = json!({"eventType": d["eventType"], "correlation": d.get("correlation").cloned().unwrap_or(json!({}))});
            if let Some(r) = inv.config.get("redact") {
                data["redact"] = r.clone();
            }
            Ok(InterruptRequest {
                kind: Kind::ExternalEvent,
                data,
                timeout_ms: timeout_ms(&inv.config)?,
            })
        }))
    }
    fn validate_config(&self, _type_id: &str, config: &Value) -> Result<(), String> {
        Self::check(config)
    }
}
