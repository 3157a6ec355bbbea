//! Remote execution of pack nodes: the wire contract of
//! `POST /v1/x-wopbox/execute`, the isolation-tier side that runs one node
//! for a tenant ([`execute_for_tenant`]), and the orchestrator side that
//! delegates every pack node to another wopbox ([`RemoteNodeExecutor`],
//! chosen with `wopbox serve --executor remote:URL`).
//!
//! Both sides speak the same types, so a remote sandbox failure turns into
//! exactly the node error (and `cap.breached` event) a local run produces.
//! Failures of the remote tier itself — connection refused, timeouts, 5xx,
//! 429, a garbled answer — become the retryable node error
//! [`RUNNER_UNAVAILABLE`], the code the spec's self-hosted runner channel
//! (RFC 0122 §Behavior 5) uses for a dispatch target that went away, so runs
//! fail or retry instead of hanging.

use std::sync::Weak;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use wopbox_sandbox::{GuestResult, InvokeRequest, Limits, NodeContext as GuestContext};

use super::executor::{failed, guest_context, guest_inputs, resolve_pack};
use super::registry::{InstalledPack, PackService};
use crate::engine::registry::{NodeExecutor, NodeInvocation, NodeOutcome, NodeResult};

/// Host-extension path of the execution API.
pub const EXECUTE_PATH: &str = "/v1/x-wopbox/execute";
/// Node error for an unreachable, slow, overloaded or misbehaving remote tier
/// (retryable).
pub const RUNNER_UNAVAILABLE: &str = "runner_unavailable";
/// Node error for a remote tier that answered but refused the request for a
/// reason retrying will not fix (unknown pack, bad credential, ...).
pub const RUNNER_REJECTED: &str = "runner_rejected";
/// Largest execution answer the orchestrator reads (the remote is untrusted
/// transport: outputs, logs and stdio are each capped by its limits, but the
/// orchestrator does not rely on that).
pub const MAX_RESPONSE_BYTES: usize = 8 << 20;
/// Time for the TCP (and TLS) connection to the remote tier.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Allowance on top of the node's wall clock for queueing at the remote
/// sandbox, its backstop and the HTTP round trip.
const TRANSPORT_GRACE: Duration = Duration::from_secs(3);

// ---------------------------------------------------------------- wire types

/// Which pack to run: `"name@version"` or `{"sha256": "<hex of the entry module>"}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum PackRef {
    /// `name@version` (the name may itself start with `@`).
    Spec(String),
    /// Content hash of the pack's entry module (hex SHA-256).
    Hash {
        /// Hex SHA-256 of the entry module bytes.
        sha256: String,
    },
}

/// The RFC 0008 node context the caller supplies (`tenantId` comes from the
/// credential, never the body).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WireContext {
    #[serde(default)]
    pub run_id: String,
    #[serde(default)]
    pub node_id: String,
    /// RFC 0008 attempt (0 = first).
    #[serde(default)]
    pub attempt: u32,
    #[serde(default)]
    pub configurable: Value,
    /// What `openwop_variable_get` can see.
    #[serde(default)]
    pub variables: Map<String, Value>,
}

/// Optional caps for this call; each can only lower the pack's own limit.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WireLimits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wall_clock_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fuel: Option<u64>,
}

/// Body of `POST /v1/x-wopbox/execute`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExecuteRequest {
    pub pack: PackRef,
    pub type_id: String,
    #[serde(default)]
    pub inputs: Value,
    #[serde(default)]
    pub context: WireContext,
    #[serde(default)]
    pub limits: WireLimits,
}

/// Why a node failed, as the API reports it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WireError {
    pub code: String,
    pub message: String,
    #[serde(default)]
    pub details: Value,
    #[serde(default)]
    pub retryable: bool,
    /// `"sandbox"` (the host stopped the guest) or `"guest"` (the node
    /// answered with a failure).
    pub source: String,
}

/// Resource use of the call. Fuel and memory are only known when the guest
/// ran to its end (answered); a sandbox failure reports the duration only.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WireMetrics {
    pub fuel_consumed: Option<u64>,
    pub peak_memory_bytes: Option<u64>,
    pub duration_ms: f64,
    #[serde(default)]
    pub queued_ms: f64,
}

/// The pack that ran.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WirePack {
    pub name: String,
    pub version: String,
    pub sha256: String,
}

/// `200` answer of `POST /v1/x-wopbox/execute`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecuteResponse {
    /// `completed`, `failed` or `suspended`.
    pub outcome: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<WireError>,
    /// Suspension payload (the guest called `openwop_interrupt`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interrupt: Option<Value>,
    /// RFC 0008 `cap.breached` data (`kind`, `limit`, `observed`) when a
    /// resource cap stopped the guest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cap_breach: Option<Value>,
    pub metrics: WireMetrics,
    pub pack: WirePack,
    #[serde(default)]
    pub logs: Vec<Value>,
    #[serde(default)]
    pub logs_dropped: u64,
    #[serde(default)]
    pub stdout: String,
    #[serde(default)]
    pub stderr: String,
}

// ------------------------------------------------------ isolation-tier side

/// Refusals of an execution request before any guest code runs.
#[derive(Debug, thiserror::Error)]
pub enum ExecuteError {
    #[error("invalid execution request: {0}")]
    Invalid(String),
    #[error("no pack {0} is installed for this tenant")]
    UnknownPack(String),
    #[error("pack {pack} has no node type '{type_id}'")]
    UnknownNodeType { pack: String, type_id: String },
    #[error("the sandbox is at capacity ({queued} invocations queued); retry shortly")]
    Overloaded { queued: usize },
}

/// Finds the pack a request names among those visible to `tenant`.
fn find_pack(
    service: &PackService,
    tenant: &str,
    pack: &PackRef,
) -> Result<std::sync::Arc<InstalledPack>, ExecuteError> {
    match pack {
        PackRef::Spec(spec) => {
            // rsplit: scoped names (`@vendor/x@1.0.0`) keep their leading `@`.
            let (name, version) = spec
                .rsplit_once('@')
                .filter(|(n, v)| !n.is_empty() && !v.is_empty())
                .ok_or_else(|| {
                    ExecuteError::Invalid(format!(
                        "pack `{spec}` must be \"name@version\" or {{\"sha256\": \"<hex>\"}}"
                    ))
                })?;
            service
                .get(tenant, name, version)
                .ok_or_else(|| ExecuteError::UnknownPack(spec.clone()))
        }
        PackRef::Hash { sha256 } => {
            let wanted = sha256.trim().to_ascii_lowercase();
            if wanted.len() != 64 || !wanted.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(ExecuteError::Invalid(
                    "pack.sha256 must be 64 hex digits (SHA-256 of the entry module)".into(),
                ));
            }
            service
                .list(tenant)
                .into_iter()
                .find(|p| p.record.entry_sha256 == wanted)
                .ok_or_else(|| ExecuteError::UnknownPack(format!("sha256:{wanted}")))
        }
    }
}

/// The pack's limits, lowered (never raised) by the request's.
pub fn tightened(pack: &Limits, req: &WireLimits) -> Result<Limits, ExecuteError> {
    let mut l = pack.clone();
    if let Some(ms) = req.wall_clock_ms {
        if ms == 0 {
            return Err(ExecuteError::Invalid(
                "limits.wallClockMs must be > 0".into(),
            ));
        }
        l.wall_clock = l.wall_clock.min(Duration::from_millis(ms));
    }
    if let Some(b) = req.memory_bytes {
        if b == 0 {
            return Err(ExecuteError::Invalid(
                "limits.memoryBytes must be > 0".into(),
            ));
        }
        l.memory_bytes = l.memory_bytes.min(b);
    }
    if let Some(f) = req.fuel {
        if f == 0 {
            return Err(ExecuteError::Invalid("limits.fuel must be > 0".into()));
        }
        // An unmetered pack becomes metered: a finite budget is tighter.
        l.fuel = Some(l.fuel.map_or(f, |p| p.min(f)));
    }
    Ok(l)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Runs one node of a pack visible to `tenant` under that pack's grants and
/// (tightened) limits, through the same bounded sandbox as local runs.
pub async fn execute_for_tenant(
    service: &PackService,
    tenant: &str,
    req: ExecuteRequest,
) -> Result<ExecuteResponse, ExecuteError> {
    let pack = find_pack(service, tenant, &req.pack)?;
    if !pack
        .loaded
        .node_type_ids()
        .iter()
        .any(|t| t == &req.type_id)
    {
        return Err(ExecuteError::UnknownNodeType {
            pack: format!("{}@{}", pack.record.name, pack.record.version),
            type_id: req.type_id,
        });
    }
    let limits = tightened(&pack.limits, &req.limits)?;
    let context = GuestContext {
        run_id: req.context.run_id,
        node_id: req.context.node_id,
        tenant_id: tenant.to_string(),
        attempt: req.context.attempt,
        configurable: req.context.configurable,
        variables: req.context.variables.into_iter().collect(),
        ..GuestContext::default()
    };
    let invoke = InvokeRequest::new(req.type_id, req.inputs)
        .context(context)
        .limits(limits);
    let wire_pack = WirePack {
        name: pack.record.name.clone(),
        version: pack.record.version.clone(),
        sha256: pack.record.entry_sha256.clone(),
    };
    let started = Instant::now();
    let out = match service.invoke(&pack, invoke).await {
        Ok(out) => out,
        Err(wopbox_sandbox::SandboxError::Overloaded { queued }) => {
            return Err(ExecuteError::Overloaded { queued })
        }
        Err(e) => {
            return Ok(ExecuteResponse {
                outcome: "failed".into(),
                output: None,
                cap_breach: e.cap_breach().map(|b| b.to_json()),
                error: Some(WireError {
                    code: e.code().to_string(),
                    message: e.to_string(),
                    details: e.details(),
                    retryable: false,
                    source: "sandbox".into(),
                }),
                interrupt: None,
                metrics: WireMetrics {
                    fuel_consumed: None,
                    peak_memory_bytes: None,
                    duration_ms: ms(started.elapsed()),
                    queued_ms: 0.0,
                },
                pack: wire_pack,
                logs: Vec::new(),
                logs_dropped: 0,
                stdout: String::new(),
                stderr: String::new(),
            })
        }
    };
    let mut resp = ExecuteResponse {
        outcome: String::new(),
        output: None,
        error: None,
        interrupt: None,
        cap_breach: None,
        metrics: WireMetrics {
            fuel_consumed: Some(out.metrics.fuel_consumed),
            peak_memory_bytes: Some(out.metrics.peak_memory_bytes),
            duration_ms: ms(out.metrics.duration),
            queued_ms: ms(out.metrics.queued),
        },
        pack: wire_pack,
        logs: out
            .logs
            .iter()
            .filter_map(|l| serde_json::to_value(l).ok())
            .collect(),
        logs_dropped: out.logs_dropped,
        stdout: out.stdout,
        stderr: out.stderr,
    };
    match out.result {
        GuestResult::Completed(v) => {
            resp.outcome = "completed".into();
            resp.output = Some(v);
        }
        GuestResult::Failed {
            code,
            message,
            details,
        } => {
            resp.outcome = "failed".into();
            resp.error = Some(WireError {
                code,
                message,
                details: details.unwrap_or(Value::Null),
                retryable: false,
                source: "guest".into(),
            });
        }
        GuestResult::Suspended(payload) => {
            resp.outcome = "suspended".into();
            resp.interrupt = Some(payload);
        }
    }
    Ok(resp)
}

// -------------------------------------------------------- orchestrator side

/// Which executor runs pack nodes (`--executor local | remote:URL`).
#[derive(Debug, Clone, Default)]
pub enum ExecutorChoice {
    /// This process's sandbox.
    #[default]
    Local,
    /// Another wopbox's execution API.
    Remote(RemoteTarget),
}

/// Where (and as whom) pack nodes are delegated.
#[derive(Clone)]
pub struct RemoteTarget {
    /// `…/v1/x-wopbox/execute` on the isolation tier.
    pub execute_url: url::Url,
    api_key: Option<String>,
    client: reqwest::Client,
}

impl std::fmt::Debug for RemoteTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the bearer.
        f.debug_struct("RemoteTarget")
            .field("execute_url", &self.execute_url.as_str())
            .field("api_key", &self.api_key.as_ref().map(|_| "<set>"))
            .finish()
    }
}

/// Why `--executor` could not be used.
#[derive(Debug, thiserror::Error)]
pub enum RemoteConfigError {
    #[error("--executor must be `local` or `remote:<http(s) URL>`, not `{0}`")]
    BadChoice(String),
    #[error("--executor remote URL `{url}`: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("cannot build the HTTP client for the remote executor: {0}")]
    Client(String),
}

impl ExecutorChoice {
    /// Parses `local` or `remote:URL` (URL = base of the isolation tier,
    /// e.g. `http://10.0.0.5:8080`).
    pub fn parse(spec: &str, api_key: Option<String>) -> Result<Self, RemoteConfigError> {
        let spec = spec.trim();
        if spec.is_empty() || spec == "local" {
            return Ok(ExecutorChoice::Local);
        }
        let Some(base) = spec.strip_prefix("remote:") else {
            return Err(RemoteConfigError::BadChoice(spec.to_string()));
        };
        let bad = |reason: &str| RemoteConfigError::BadUrl {
            url: base.to_string(),
            reason: reason.to_string(),
        };
        let mut url = url::Url::parse(base).map_err(|e| bad(&e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(bad("must be an http:// or https:// URL with a host"));
        }
        let path = format!("{}{}", url.path().trim_end_matches('/'), EXECUTE_PATH);
        url.set_path(&path);
        let client = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            // Run outputs must not follow redirects to somewhere else.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| RemoteConfigError::Client(e.to_string()))?;
        Ok(ExecutorChoice::Remote(RemoteTarget {
            execute_url: url,
            api_key: api_key.filter(|k| !k.is_empty()),
            client,
        }))
    }
}

/// Executes pack nodes on another wopbox. The pack must be installed (and
/// loaded, so its typeIds are known and validated) here too; the remote is
/// asked for the same entry module by content hash, so both tiers agree on
/// exactly which code runs.
pub struct RemoteNodeExecutor {
    service: Weak<PackService>,
    target: RemoteTarget,
}

impl RemoteNodeExecutor {
    pub(super) fn new(service: Weak<PackService>, target: RemoteTarget) -> Self {
        RemoteNodeExecutor { service, target }
    }
}

fn unavailable(target: &RemoteTarget, reason: impl Into<String>) -> NodeResult {
    let reason = reason.into();
    failed(
        RUNNER_UNAVAILABLE,
        format!("the remote executor is unavailable: {reason}"),
        json!({"executor": target.execute_url.as_str(), "reason": reason}),
        true,
    )
}

/// Reads at most [`MAX_RESPONSE_BYTES`] of the answer.
async fn read_capped(mut resp: reqwest::Response) -> Result<Vec<u8>, String> {
    let mut buf = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| e.to_string())? {
        if buf.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err(format!("answer larger than {MAX_RESPONSE_BYTES} bytes"));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf)
}

/// Turns the remote's answer into the node result a local run would give.
/// `round_trip` is the orchestrator's view of the call (request sent to
/// answer read), reported next to the tier's own figures.
fn to_node_result(
    resp: ExecuteResponse,
    node_id: &str,
    target: &RemoteTarget,
    round_trip: Duration,
) -> NodeResult {
    let metrics = json!({
        "pack": resp.pack.name,
        "packVersion": resp.pack.version,
        "fuelConsumed": resp.metrics.fuel_consumed,
        "peakMemoryBytes": resp.metrics.peak_memory_bytes,
        "durationMs": resp.metrics.duration_ms,
        "queuedMs": resp.metrics.queued_ms,
        "logs": resp.logs,
        "logsDropped": resp.logs_dropped,
        "stdout": resp.stdout,
        "stderr": resp.stderr,
        "executor": "remote",
        "roundTripMs": ms(round_trip),
    });
    match resp.outcome.as_str() {
        "completed" => NodeOutcome::Completed {
            output: resp.output.unwrap_or(Value::Null),
            metrics: Some(metrics),
        }
        .into(),
        "failed" => {
            let Some(e) = resp.error else {
                return unavailable(target, "a failed outcome without an error");
            };
            if e.source == "guest" {
                return NodeOutcome::Failed {
                    code: e.code,
                    message: e.message,
                    details: Some(json!({"guestDetails": e.details, "metrics": metrics})),
                    retryable: false,
                }
                .into();
            }
            let mut r = failed(&e.code, e.message, e.details, e.retryable);
            if let Some(mut b) = resp.cap_breach.filter(Value::is_object) {
                b["nodeId"] = json!(node_id);
                r = r.with_event("cap.breached", b);
            }
            r
        }
        "suspended" => failed(
            "wasm_suspend_not_implemented",
            "the pack asked to suspend the run; interrupts from packs are not supported yet".into(),
            json!({"interrupt": resp.interrupt}),
            false,
        ),
        other => unavailable(target, format!("unknown outcome `{other}`")),
    }
}

#[async_trait]
impl NodeExecutor for RemoteNodeExecutor {
    async fn execute(&self, inv: NodeInvocation) -> NodeResult {
        let (_service, pack) = match resolve_pack(&self.service, &inv) {
            Ok(found) => found,
            Err(refusal) => return refusal,
        };
        let ctx = guest_context(&inv);
        let body = ExecuteRequest {
            pack: PackRef::Hash {
                sha256: pack.record.entry_sha256.clone(),
            },
            type_id: inv.type_id.clone(),
            inputs: guest_inputs(&inv.ctx.variables, &inv.inputs),
            context: WireContext {
                run_id: ctx.run_id,
                node_id: ctx.node_id,
                attempt: ctx.attempt,
                configurable: ctx.configurable,
                variables: ctx.variables.into_iter().collect(),
            },
            // This tier's limits for the pack travel along, so the tighter
            // of both tiers' policies applies.
            limits: WireLimits {
                wall_clock_ms: Some(pack.limits.wall_clock.as_millis().max(1) as u64),
                memory_bytes: Some(pack.limits.memory_bytes),
                fuel: pack.limits.fuel,
            },
        };
        let t = &self.target;
        let mut rb = t
            .client
            .post(t.execute_url.clone())
            .timeout(pack.limits.wall_clock + TRANSPORT_GRACE)
            .json(&body);
        if let Some(k) = &t.api_key {
            rb = rb.bearer_auth(k);
        }
        let sent = Instant::now();
        let resp = match rb.send().await {
            Ok(r) => r,
            Err(e) if e.is_timeout() => {
                return unavailable(
                    t,
                    format!(
                        "no answer within {} ms",
                        (pack.limits.wall_clock + TRANSPORT_GRACE).as_millis()
                    ),
                )
            }
            Err(e) => return unavailable(t, format!("request failed: {e}")),
        };
        let status = resp.status();
        let bytes = match read_capped(resp).await {
            Ok(b) => b,
            Err(e) => return unavailable(t, format!("reading the answer: {e}")),
        };
        if status.is_success() {
            return match serde_json::from_slice::<ExecuteResponse>(&bytes) {
                Ok(r) if r.pack.sha256 != pack.record.entry_sha256 => unavailable(
                    t,
                    format!(
                        "ran module {} instead of {}",
                        r.pack.sha256, pack.record.entry_sha256
                    ),
                ),
                Ok(r) => to_node_result(r, &inv.ctx.node_id, t, sent.elapsed()),
                Err(e) => unavailable(t, format!("malformed answer: {e}")),
            };
        }
        let envelope: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let remote_code = envelope["error"].as_str().unwrap_or("").to_string();
        let remote_message = envelope["message"].as_str().unwrap_or("").to_string();
        if remote_code == "sandbox_overloaded" {
            // Same code and retryability as a local overload.
            return failed(
                "sandbox_overloaded",
                format!("the remote sandbox is at capacity: {remote_message}"),
                envelope["details"].clone(),
                true,
            );
        }
        if status.is_server_error() || status.as_u16() == 429 {
            return unavailable(t, format!("HTTP {status} {remote_code} {remote_message}"));
        }
        failed(
            RUNNER_REJECTED,
            format!("the remote executor refused the node: HTTP {status} {remote_code}: {remote_message}"),
            json!({"executor": t.execute_url.as_str(), "status": status.as_u16(), "remoteError": envelope}),
            false,
        )
    }
}

/// The OpenAPI 3.1 description of `POST /v1/x-wopbox/execute` (merged into
/// `/v1/openapi.json`; `err` is the error-envelope response object).
pub fn openapi_path(err: &Value) -> Value {
    let limits = json!({"type": "object", "additionalProperties": false, "properties": {
        "wallClockMs": {"type": "integer", "minimum": 1},
        "memoryBytes": {"type": "integer", "minimum": 1},
        "fuel": {"type": "integer", "minimum": 1}}});
    let request = json!({"type": "object", "additionalProperties": false, "required": ["pack", "typeId"],
        "properties": {
            "pack": {"oneOf": [
                {"type": "string", "description": "name@version"},
                {"type": "object", "additionalProperties": false, "required": ["sha256"],
                 "properties": {"sha256": {"type": "string", "pattern": "^[0-9a-fA-F]{64}$",
                    "description": "SHA-256 of the pack's entry module"}}}]},
            "typeId": {"type": "string"},
            "inputs": {"description": "RFC 0008 node inputs"},
            "context": {"type": "object", "additionalProperties": false, "properties": {
                "runId": {"type": "string"}, "nodeId": {"type": "string"},
                "attempt": {"type": "integer", "minimum": 0, "description": "RFC 0008 attempt, 0 = first"},
                "configurable": {}, "variables": {"type": "object"}}},
            "limits": limits}});
    let response = json!({"type": "object", "required": ["outcome", "metrics", "pack"], "properties": {
        "outcome": {"enum": ["completed", "failed", "suspended"]},
        "output": {},
        "error": {"type": "object", "required": ["code", "message", "source"], "properties": {
            "code": {"type": "string"}, "message": {"type": "string"}, "details": {},
            "retryable": {"type": "boolean"}, "source": {"enum": ["sandbox", "guest"]}}},
        "interrupt": {},
        "capBreach": {"type": "object", "properties": {
            "kind": {"enum": ["wasm-memory", "wasm-execution-time", "wasm-fuel"]},
            "limit": {}, "observed": {}}},
        "metrics": {"type": "object", "properties": {
            "fuelConsumed": {"type": ["integer", "null"]}, "peakMemoryBytes": {"type": ["integer", "null"]},
            "durationMs": {"type": "number"}, "queuedMs": {"type": "number"}}},
        "pack": {"type": "object", "properties": {"name": {"type": "string"}, "version": {"type": "string"}, "sha256": {"type": "string"}}},
        "logs": {"type": "array"}, "logsDropped": {"type": "integer"},
        "stdout": {"type": "string"}, "stderr": {"type": "string"}}});
    json!({"post": {
        "summary": "Execute one pack node in this host's sandbox (host extension x-wopbox; see docs/embedding.md)",
        "requestBody": {"required": true, "content": {"application/json": {"schema": request}}},
        "responses": {
            "200": {"description": "The node ran (completed, failed or suspended)",
                    "content": {"application/json": {"schema": response}}},
            "400": err, "401": err, "404": err, "413": err, "415": err,
            "503": {"description": "sandbox_overloaded; retry after the Retry-After header",
                    "headers": {"Retry-After": {"schema": {"type": "integer"}}},
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}}}})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> RemoteTarget {
        match ExecutorChoice::parse("remote:http://127.0.0.1:9/", Some("k".into())) {
            Ok(ExecutorChoice::Remote(t)) => t,
            other => panic!("{other:?}"),
        }
    }

    fn response(outcome: &str) -> ExecuteResponse {
        ExecuteResponse {
            outcome: outcome.into(),
            output: None,
            error: None,
            interrupt: None,
            cap_breach: None,
            metrics: WireMetrics::default(),
            pack: WirePack {
                name: "p".into(),
                version: "1.0.0".into(),
                sha256: "00".repeat(32),
            },
            logs: vec![],
            logs_dropped: 0,
            stdout: String::new(),
            stderr: String::new(),
        }
    }

    #[test]
    fn executor_choice_parses_local_and_remote_and_refuses_the_rest() {
        assert!(matches!(
            ExecutorChoice::parse("local", None),
            Ok(ExecutorChoice::Local)
        ));
        let t = target();
        assert_eq!(
            t.execute_url.as_str(),
            "http://127.0.0.1:9/v1/x-wopbox/execute"
        );
        assert!(
            !format!("{t:?}").contains("\"k\""),
            "the key is never printed"
        );
        let prefixed = match ExecutorChoice::parse("remote:https://tier.example/base/", None) {
            Ok(ExecutorChoice::Remote(t)) => t.execute_url.to_string(),
            other => panic!("{other:?}"),
        };
        assert_eq!(prefixed, "https://tier.example/base/v1/x-wopbox/execute");
        for bad in [
            "remote",
            "remote:",
            "remote:ftp://x",
            "remote:not a url",
            "wasm",
        ] {
            assert!(ExecutorChoice::parse(bad, None).is_err(), "{bad}");
        }
    }

    #[test]
    fn request_limits_only_tighten() {
        let pack = Limits::default()
            .with_wall_clock(Duration::from_millis(1000))
            .with_memory_bytes(64 << 20)
            .with_fuel(Some(1_000));
        let l = tightened(
            &pack,
            &WireLimits {
                wall_clock_ms: Some(50),
                memory_bytes: Some(1 << 40),
                fuel: Some(u64::MAX),
            },
        )
        .unwrap();
        assert_eq!(l.wall_clock, Duration::from_millis(50));
        assert_eq!(l.memory_bytes, 64 << 20);
        assert_eq!(l.fuel, Some(1_000));
        let unmetered = pack.clone().with_fuel(None);
        let l = tightened(
            &unmetered,
            &WireLimits {
                fuel: Some(7),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(l.fuel, Some(7));
        assert!(tightened(
            &pack,
            &WireLimits {
                wall_clock_ms: Some(0),
                ..Default::default()
            }
        )
        .is_err());
    }

    #[test]
    fn pack_refs_and_unknown_fields() {
        let r: ExecuteRequest =
            serde_json::from_value(json!({"pack": "@v/x@1.0.0", "typeId": "t"})).unwrap();
        assert_eq!(r.pack, PackRef::Spec("@v/x@1.0.0".into()));
        let r: ExecuteRequest =
            serde_json::from_value(json!({"pack": {"sha256": "ab"}, "typeId": "t"})).unwrap();
        assert_eq!(
            r.pack,
            PackRef::Hash {
                sha256: "ab".into()
            }
        );
        assert!(serde_json::from_value::<ExecuteRequest>(
            json!({"pack": "x@1", "typeId": "t", "tenantId": "other"})
        )
        .is_err());
    }

    #[test]
    fn remote_answers_become_the_node_results_a_local_run_gives() {
        let t = target();
        let mut r = response("failed");
        r.error = Some(WireError {
            code: "sandbox_memory_exceeded".into(),
            message: "m".into(),
            details: json!({"limitBytes": 8}),
            retryable: false,
            source: "sandbox".into(),
        });
        r.cap_breach = Some(json!({"kind": "wasm-memory", "limit": 8, "observed": 16}));
        let res = to_node_result(r, "bomb", &t, Duration::ZERO);
        assert_eq!(res.events.len(), 1);
        assert_eq!(res.events[0].event_type, "cap.breached");
        assert_eq!(res.events[0].payload["nodeId"], "bomb");
        assert_eq!(res.events[0].payload["kind"], "wasm-memory");
        let e = res.outcome.error_json().unwrap();
        assert_eq!(e["code"], "sandbox_memory_exceeded");
        assert_eq!(e["details"]["limitBytes"], 8);

        let mut g = response("failed");
        g.error = Some(WireError {
            code: "bad_input".into(),
            message: "no".into(),
            details: json!({"field": "x"}),
            retryable: true,
            source: "guest".into(),
        });
        let e = to_node_result(g, "n", &t, Duration::ZERO)
            .outcome
            .error_json()
            .unwrap();
        assert_eq!(
            (e["code"].clone(), e["retryable"].clone()),
            (json!("bad_input"), json!(false))
        );
        assert_eq!(e["details"]["guestDetails"]["field"], "x");

        let e = to_node_result(response("suspended"), "n", &t, Duration::ZERO)
            .outcome
            .error_json()
            .unwrap();
        assert_eq!(e["code"], "wasm_suspend_not_implemented");
        for garbled in [response("exploded"), response("failed")] {
            let e = to_node_result(garbled, "n", &t, Duration::ZERO)
                .outcome
                .error_json()
                .unwrap();
            assert_eq!(
                (e["code"].clone(), e["retryable"].clone()),
                (json!(RUNNER_UNAVAILABLE), json!(true))
            );
        }
        let mut ok = response("completed");
        ok.output = Some(json!({"a": 1}));
        match to_node_result(ok, "n", &t, Duration::from_millis(2)).outcome {
            NodeOutcome::Completed { output, metrics } => {
                assert_eq!(output, json!({"a": 1}));
                let m = metrics.unwrap();
                assert_eq!(m["executor"], "remote");
                assert_eq!(m["roundTripMs"], 2.0);
            }
            other => panic!("{other:?}"),
        }
    }
}
