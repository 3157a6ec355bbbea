//! # wopbox-sandbox
//!
//! An embeddable wasmtime executor for untrusted OpenWOP node packs. It has
//! no HTTP and no storage: a host loads pack bytes once and then invokes
//! nodes, each invocation in a fresh, isolated instance.
//!
//! ```no_run
//! # async fn demo(bytes: Vec<u8>) -> Result<(), wopbox_sandbox::SandboxError> {
//! use wopbox_sandbox::*;
//! let sandbox = Sandbox::new(SandboxConfig::default())?;
//! let pack = sandbox.load(bytes, LoadOptions::new(PackFormat::CoreModule)).await?;
//! let out = sandbox
//!     .invoke(&pack, InvokeRequest::new("vendor.wopbox.greet.hello", serde_json::json!({"name": "Ada"})))
//!     .await?;
//! if let GuestResult::Completed(v) = &out.result { println!("{v}"); }
//! # Ok(()) }
//! ```
//!
//! ## Formats ([`PackFormat`])
//! * [`PackFormat::Probe`]: the RFC 0035 probe ABI (`invoke(i32) -> i32`,
//!   `bump`/`read`, optional `env.memory`, `openwop.<capability>` imports).
//!   Input is a JSON integer (or null), output a JSON integer.
//! * [`PackFormat::CoreModule`]: RFC 0008 ABI v1 core modules (`openwop_*`
//!   exports, JSON envelopes through guest memory).
//! * [`PackFormat::Component`]: component-model packs (`wit/node-pack.wit`).
//!
//! ## Guarantees
//! * Loading never runs guest code before every import has been checked:
//!   escape attempts ([`SandboxError::EscapeAttempt`]) and un-granted
//!   capabilities ([`SandboxError::CapabilityDenied`]) are refused before
//!   instantiation; declared sizes are bounded ([`LoadLimits`]).
//! * Every invocation gets a fresh `Store` and instance (from an
//!   `InstancePre`), with fuel, an epoch wall-clock deadline, and memory and
//!   table caps ([`Limits`]). Each breach has its own error.
//! * At most [`SandboxConfig::max_concurrent`] invocations run guest code at
//!   a time; the rest wait in a bounded queue ([`SandboxConfig::max_queued`]).
//!   Core-module invocations run on the calling task and yield to the
//!   executor at every epoch tick (a hostile loop cannot hold a worker
//!   thread for longer than about one tick); components run on Tokio's
//!   blocking pool under an async backstop.

#![warn(missing_docs)]

pub mod abi;
pub mod engine;
pub mod error;
pub mod grants;
pub mod limits;
pub mod load;
pub mod wasi;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::Semaphore;

pub use engine::{CacheStatus, EngineConfig, PoolConfig, SandboxEngine};
pub use error::{CapBreach, CapKind, EscapeKind, SandboxError};
pub use grants::{DirAccess, Grants, PreopenDir};
pub use limits::{Limits, LoadLimits};

/// RFC 0008 ABI versions this sandbox speaks (`nodePackRuntimes.wasm.abiVersions`).
pub const SUPPORTED_ABI_VERSIONS: &[u32] = &[1];

/// The wasmtime version embedded (for `nodePackRuntimes.wasm.engineVersion`).
pub const WASMTIME_VERSION: &str = "48.0.8";

/// Settings for a [`Sandbox`].
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// Engine, pool, epoch and cache settings.
    pub engine: EngineConfig,
    /// Invocations running guest code at once.
    /// Default: the number of CPUs (at least 2).
    pub max_concurrent: usize,
    /// Invocations allowed to wait for a slot; more are refused with
    /// [`SandboxError::Overloaded`]. Default 4096.
    pub max_queued: usize,
    /// Limits used when neither the request nor the pack sets any.
    pub default_limits: Limits,
    /// Bounds on what a module may declare, and on load-time guest code.
    pub load_limits: LoadLimits,
    /// Extra time the async backstop waits beyond the wall-clock cap before
    /// reporting a timeout itself (epoch interruption normally fires first).
    pub backstop_grace: Duration,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
            .max(2);
        SandboxConfig {
            engine: EngineConfig::default(),
            max_concurrent: cpus,
            max_queued: 4096,
            default_limits: Limits::default(),
            load_limits: LoadLimits::default(),
            backstop_grace: Duration::from_millis(500),
        }
    }
}

/// The binary format / ABI of a pack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PackFormat {
    /// RFC 0035 probe ABI (conformance fixtures).
    Probe,
    /// RFC 0008 ABI v1 core module (`runtime.language: "wasm"`).
    CoreModule,
    /// Component model (`runtime.language: "wasm-component"`).
    Component,
}

impl PackFormat {
    /// Guess the format from the bytes: a component header means
    /// `Component`; a core module exporting `openwop_abi_version` means
    /// `CoreModule`; any other core module is `Probe`. Returns `None` for
    /// bytes that are not wasm at all.
    pub fn detect(bytes: &[u8]) -> Option<PackFormat> {
        use wasmtime::wasmparser::{Parser, Payload};
        if Parser::is_component(bytes) {
            return Some(PackFormat::Component);
        }
        if !Parser::is_core_wasm(bytes) {
            return None;
        }
        for payload in Parser::new(0).parse_all(bytes) {
            match payload {
                Ok(Payload::ExportSection(r)) => {
                    for e in r.into_iter().flatten() {
                        if e.name == "openwop_abi_version" {
                            return Some(PackFormat::CoreModule);
                        }
                    }
                    return Some(PackFormat::Probe);
                }
                Ok(Payload::CodeSectionStart { .. }) | Err(_) => break,
                _ => {}
            }
        }
        Some(PackFormat::Probe)
    }

    /// The manifest spelling (`runtime.language`): `wasm`, `wasm-component`,
    /// or `probe`.
    pub fn as_str(self) -> &'static str {
        match self {
            PackFormat::Probe => "probe",
            PackFormat::CoreModule => "wasm",
            PackFormat::Component => "wasm-component",
        }
    }
}

/// How to load a pack.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// The pack's format (use [`PackFormat::detect`] if unknown).
    pub format: PackFormat,
    /// What the pack is granted (checked against its imports at load).
    /// For the probe ABI, an invocation's own grants override these.
    pub grants: Grants,
    /// Expected pack name (manifest `name`). For RFC 0008 modules a
    /// mismatch with `openwop_pack_name()` is refused; for probe modules,
    /// which have no name of their own, this *is* the name.
    pub name: Option<String>,
    /// Manifest `runtime.wasm.abiVersion`, cross-checked when present.
    pub manifest_abi_version: Option<i64>,
    /// Manifest `runtime.wasm.memoryPagesMax` (a request, clamped to the
    /// host cap): lowers the pack's default memory cap.
    pub memory_pages_max: Option<u64>,
    /// Default limits for this pack's invocations (else the sandbox's).
    pub limits: Option<Limits>,
}

impl LoadOptions {
    /// Defaults for `format`: no grants, no name, no manifest hints.
    pub fn new(format: PackFormat) -> Self {
        LoadOptions {
            format,
            grants: Grants::none(),
            name: None,
            manifest_abi_version: None,
            memory_pages_max: None,
            limits: None,
        }
    }
    /// Builder-style: set the grants.
    pub fn grants(mut self, grants: Grants) -> Self {
        self.grants = grants;
        self
    }
    /// Builder-style: set the (expected) pack name.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }
    /// Builder-style: set the default limits for this pack.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = Some(limits);
        self
    }
}

/// A validated, compiled pack, ready to invoke. Cheap to share (`Arc`).
pub struct LoadedPack {
    pub(crate) name: String,
    pub(crate) format: PackFormat,
    pub(crate) nodes: Vec<String>,
    pub(crate) abi_version: Option<u32>,
    pub(crate) sha256: String,
    pub(crate) cache: CacheStatus,
    pub(crate) grants: Grants,
    pub(crate) limits: Limits,
    pub(crate) kind: abi::PackKind,
}

impl std::fmt::Debug for LoadedPack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedPack")
            .field("name", &self.name)
            .field("format", &self.format)
            .field("nodes", &self.nodes)
            .field("abi_version", &self.abi_version)
            .field("sha256", &self.sha256)
            .finish_non_exhaustive()
    }
}

impl LoadedPack {
    /// Pack name (`openwop_pack_name()`, the component's `pack-name`, or
    /// [`LoadOptions::name`] for probe modules).
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Format.
    pub fn format(&self) -> PackFormat {
        self.format
    }
    /// Node typeIds (RFC 0008 / component) or invocable exports (probe).
    pub fn node_type_ids(&self) -> &[String] {
        &self.nodes
    }
    /// The ABI version the module reported (RFC 0008 only).
    pub fn abi_version(&self) -> Option<u32> {
        self.abi_version
    }
    /// Hex SHA-256 of the pack's bytes.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }
    /// Where the compiled code came from at load.
    pub fn cache_status(&self) -> CacheStatus {
        self.cache
    }
    /// Grants given at load.
    pub fn grants(&self) -> &Grants {
        &self.grants
    }
    /// Default limits for this pack's invocations.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }
}

/// RFC 0008 `nodeContext`, plus host-side inputs the guest can reach through
/// the baseline imports.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NodeContext {
    /// Run id.
    pub run_id: String,
    /// Node id within the workflow.
    pub node_id: String,
    /// Tenant.
    pub tenant_id: String,
    /// Attempt number (0 first).
    pub attempt: u32,
    /// Per-node configuration.
    #[serde(default)]
    pub configurable: Value,
    /// Agent context, if any.
    #[serde(default)]
    pub agent: Value,
    /// `openwop_now_ms()` answer (replay-cached by the host). `None` = the
    /// current time.
    #[serde(skip)]
    pub now_ms: Option<i64>,
    /// Channel values `openwop_channel_read` can see.
    #[serde(skip)]
    pub channels: BTreeMap<String, Value>,
    /// Variables `openwop_variable_get` can see.
    #[serde(skip)]
    pub variables: BTreeMap<String, Value>,
    /// On a resumed invocation: the value `openwop_interrupt` returns.
    #[serde(skip)]
    pub resume_value: Option<Value>,
}

/// One invocation.
#[derive(Debug, Clone)]
pub struct InvokeRequest {
    /// Node typeId (RFC 0008 / component) or export name (probe: `invoke`,
    /// `bump`, `read`).
    pub type_id: String,
    /// Node inputs (probe: a JSON integer or null).
    pub input: Value,
    /// Node context.
    pub context: NodeContext,
    /// Limits for this call (else the pack's, else the sandbox's).
    pub limits: Option<Limits>,
    /// Grants for this call. Probe ABI: RFC 0035 `allowedHostCalls` for
    /// this invocation, overriding the load-time grants. RFC 0008: checked
    /// against the pack's capability imports before instantiation, so they
    /// can narrow (never widen) what was granted at load.
    pub grants: Option<Grants>,
}

impl InvokeRequest {
    /// A request with an empty context and the pack's limits and grants.
    pub fn new(type_id: impl Into<String>, input: Value) -> Self {
        InvokeRequest {
            type_id: type_id.into(),
            input,
            context: NodeContext::default(),
            limits: None,
            grants: None,
        }
    }
    /// Builder-style: set the context.
    pub fn context(mut self, context: NodeContext) -> Self {
        self.context = context;
        self
    }
    /// Builder-style: set the limits.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = Some(limits);
        self
    }
    /// Builder-style: set the grants.
    pub fn grants(mut self, grants: Grants) -> Self {
        self.grants = Some(grants);
        self
    }
}

/// What the guest answered.
#[derive(Debug, Clone, PartialEq)]
pub enum GuestResult {
    /// `{"outcome":"completed","output":…}` (probe: the i32 result).
    Completed(Value),
    /// `{"outcome":"failed","error":{code,message,details}}`: the node
    /// failed on purpose.
    Failed {
        /// Guest's error code.
        code: String,
        /// Guest's message.
        message: String,
        /// Guest's details object, if any.
        details: Option<Value>,
    },
    /// `{"outcome":"suspended","interrupt":…}`, or a call to
    /// `openwop_interrupt` without a resume value: the interrupt payload.
    Suspended(Value),
}

/// Guest log level (`openwop_log` levels 0–4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// 0
    Trace,
    /// 1
    Debug,
    /// 2
    Info,
    /// 3
    Warn,
    /// 4 (and anything above)
    Error,
}

impl LogLevel {
    /// From the ABI's integer level.
    pub fn from_i32(l: i32) -> Self {
        match l {
            i32::MIN..=0 => LogLevel::Trace,
            1 => LogLevel::Debug,
            2 => LogLevel::Info,
            3 => LogLevel::Warn,
            _ => LogLevel::Error,
        }
    }
}

/// One captured guest log line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    /// Level.
    pub level: LogLevel,
    /// Message (truncated to [`Limits::max_log_message_bytes`]).
    pub message: String,
}

/// Resource use of one invocation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Metrics {
    /// Fuel consumed (instantiation, start function and the call).
    pub fuel_consumed: u64,
    /// Largest linear memory size reached, in bytes.
    pub peak_memory_bytes: u64,
    /// Time from Store creation to the end of the call (queueing excluded).
    pub duration: Duration,
    /// Time spent waiting for a free slot.
    pub queued: Duration,
}

/// The result of a successful invocation (the guest ran to completion and
/// answered; its answer may still be a failure or a suspension).
#[derive(Debug, Clone, PartialEq)]
pub struct InvokeOutcome {
    /// The guest's answer.
    pub result: GuestResult,
    /// Resource use.
    pub metrics: Metrics,
    /// Captured logs (bounded by [`Limits::max_log_entries`]).
    pub logs: Vec<LogEntry>,
    /// Log entries dropped over the cap.
    pub logs_dropped: u64,
    /// `openwop_channel_write` calls, in order.
    pub channel_writes: Vec<(String, Value)>,
    /// `openwop_variable_set` calls, in order.
    pub variable_writes: Vec<(String, Value)>,
    /// Captured guest stdout (component packs; WASI), at most
    /// [`Limits::max_output_bytes`].
    pub stdout: String,
    /// Captured guest stderr (component packs; WASI), at most
    /// [`Limits::max_output_bytes`].
    pub stderr: String,
    /// stdout + stderr bytes dropped over the cap.
    pub output_dropped_bytes: u64,
}

impl InvokeOutcome {
    pub(crate) fn new(result: GuestResult) -> Self {
        InvokeOutcome {
            result,
            metrics: Metrics::default(),
            logs: Vec::new(),
            logs_dropped: 0,
            channel_writes: Vec::new(),
            variable_writes: Vec::new(),
            stdout: String::new(),
            stderr: String::new(),
            output_dropped_bytes: 0,
        }
    }
}

/// The sandbox: one wasmtime engine, a compile cache, and a bounded number
/// of invocation slots. Clone it freely (it is an `Arc`).
#[derive(Clone, Debug)]
pub struct Sandbox {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    engine: Arc<SandboxEngine>,
    config: SandboxConfig,
    permits: Arc<Semaphore>,
    queued: AtomicUsize,
}

/// Decrements the queue counter even if the waiting future is dropped.
struct QueueSlot<'a>(&'a AtomicUsize);

impl Drop for QueueSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Sandbox {
    /// Build the engine (pooling allocator reserved up front) and start the
    /// epoch ticker.
    pub fn new(config: SandboxConfig) -> Result<Self, SandboxError> {
        let engine = SandboxEngine::new(config.engine.clone())?;
        let permits = Arc::new(Semaphore::new(config.max_concurrent.max(1)));
        Ok(Sandbox {
            inner: Arc::new(Inner {
                engine,
                config,
                permits,
                queued: AtomicUsize::new(0),
            }),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &SandboxConfig {
        &self.inner.config
    }

    /// The engine (for the component module and tools).
    pub fn engine(&self) -> &Arc<SandboxEngine> {
        &self.inner.engine
    }

    /// Validate, gate, compile (or fetch from cache) and, for RFC 0008
    /// modules, run the ABI handshake (version, pack name, node typeIds —
    /// no node is invoked). Runs on the blocking pool.
    pub async fn load(
        &self,
        bytes: Vec<u8>,
        opts: LoadOptions,
    ) -> Result<Arc<LoadedPack>, SandboxError> {
        let this = self.clone();
        let _slot = self.enter_queue()?;
        let permit = self
            .inner
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(SandboxError::internal)?;
        drop(_slot);
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            this.load_blocking(&bytes, opts)
        })
        .await
        .map_err(|e| SandboxError::internal(format!("load worker: {e}")))?
    }

    /// [`Sandbox::load`] on the calling thread. Do not call this from an
    /// async executor thread: it compiles and may run guest start code.
    pub fn load_blocking(
        &self,
        bytes: &[u8],
        opts: LoadOptions,
    ) -> Result<Arc<LoadedPack>, SandboxError> {
        let ll = &self.inner.config.load_limits;
        if bytes.len() > ll.max_module_bytes {
            return Err(SandboxError::invalid(format!(
                "module is {} bytes, the limit is {}",
                bytes.len(),
                ll.max_module_bytes
            )));
        }
        let mut limits = opts
            .limits
            .clone()
            .unwrap_or_else(|| self.inner.config.default_limits.clone());
        if let Some(pages) = opts.memory_pages_max {
            limits.memory_bytes = limits.memory_bytes.min(pages.saturating_mul(limits::PAGE));
        }
        limits.memory_bytes = limits
            .memory_bytes
            .min(self.inner.engine.config().pool.max_memory_bytes);
        abi::load(&self.inner.engine, ll, bytes, &opts, limits)
    }

    /// Invoke one node in a fresh instance. Waits for a free slot (bounded
    /// queue), then runs the guest: core modules (probe, RFC 0008) on the
    /// calling task, yielding at every epoch tick; components on Tokio's
    /// blocking pool under an async backstop. Safe to call from many tasks
    /// at once. Must be called inside a Tokio runtime with the time driver
    /// enabled (`enable_time`/`enable_all`).
    ///
    /// `Ok` means the guest answered (completed, failed on purpose, or
    /// suspended); every sandbox-enforced failure is an `Err`. Dropping the
    /// future abandons the invocation (its fiber is unwound).
    pub async fn invoke(
        &self,
        pack: &Arc<LoadedPack>,
        req: InvokeRequest,
    ) -> Result<InvokeOutcome, SandboxError> {
        let queued_at = std::time::Instant::now();
        let slot = self.enter_queue()?;
        let permit = self
            .inner
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(SandboxError::internal)?;
        drop(slot);
        let queued = queued_at.elapsed();
        let with_queued = |mut o: InvokeOutcome| {
            o.metrics.queued = queued;
            o
        };
        if abi::runs_inline(pack) {
            // A panic in the sandbox (never in guest code: wasm traps are
            // errors) must not take down the caller's task.
            let run = std::panic::AssertUnwindSafe(abi::invoke(&self.inner.engine, pack, &req));
            let r = futures::FutureExt::catch_unwind(run).await;
            drop(permit);
            return match r {
                Ok(r) => r.map(with_queued),
                Err(_) => Err(SandboxError::internal("the invocation panicked")),
            };
        }
        let wall = req.limits.as_ref().unwrap_or(&pack.limits).wall_clock;
        let this = self.clone();
        let pack = pack.clone();
        let handle = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            this.invoke_blocking(&pack, &req)
        });
        let backstop = wall + self.inner.config.backstop_grace;
        match tokio::time::timeout(backstop, handle).await {
            Ok(Ok(r)) => r.map(with_queued),
            Ok(Err(e)) => Err(SandboxError::internal(format!("invocation worker: {e}"))),
            Err(_) => Err(SandboxError::Timeout {
                limit_ms: wall.as_millis() as u64,
                elapsed_ms: backstop.as_millis() as u64,
            }),
        }
    }

    /// [`Sandbox::invoke`] on the calling thread, without queueing. Do not
    /// call this from an async executor thread (it blocks until the guest
    /// is done). Hosts that manage their own worker threads can use it
    /// directly.
    pub fn invoke_blocking(
        &self,
        pack: &LoadedPack,
        req: &InvokeRequest,
    ) -> Result<InvokeOutcome, SandboxError> {
        wasmtime_wasi::runtime::in_tokio(abi::invoke(&self.inner.engine, pack, req))
    }

    /// Probe-ABI convenience: call export `entry` (`invoke`, `bump`,
    /// `read`) with `arg`, granting exactly `allowed_host_calls` (RFC 0035:
    /// the invocation's grant overrides the advertised list).
    pub async fn invoke_probe(
        &self,
        pack: &Arc<LoadedPack>,
        entry: &str,
        arg: Option<i32>,
        allowed_host_calls: &[&str],
        limits: Option<Limits>,
    ) -> Result<i32, SandboxError> {
        let mut req = InvokeRequest::new(entry, arg.map_or(Value::Null, Value::from))
            .grants(Grants::host_calls(allowed_host_calls.iter().copied()));
        req.limits = limits;
        let out = self.invoke(pack, req).await?;
        match out.result {
            GuestResult::Completed(v) => v
                .as_i64()
                .map(|v| v as i32)
                .ok_or_else(|| SandboxError::internal("probe result is not an integer")),
            other => Err(SandboxError::internal(format!(
                "unexpected probe result {other:?}"
            ))),
        }
    }

    /// Invocations currently waiting for a slot.
    pub fn queued(&self) -> usize {
        self.inner.queued.load(Ordering::Acquire)
    }

    fn enter_queue(&self) -> Result<QueueSlot<'_>, SandboxError> {
        let q = self.inner.queued.fetch_add(1, Ordering::AcqRel);
        let slot = QueueSlot(&self.inner.queued);
        if q >= self.inner.config.max_queued {
            return Err(SandboxError::Overloaded { queued: q });
        }
        Ok(slot)
    }
}
