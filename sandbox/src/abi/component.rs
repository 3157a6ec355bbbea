//! Component-model packs (`runtime.language: "wasm-component"`), implementing
//! the `openwop:node/node-pack` world in `wit/node-pack.wit`.
//!
//! Load:
//! 1. compile (cached) with `engine.component(bytes)`;
//! 2. **gate every import** against the pack's grants
//!    ([`crate::wasi::classify_import`]) — an un-granted WASI interface is an
//!    escape attempt, an unknown host interface a denied capability — before
//!    a linker or store exists;
//! 3. build a linker holding *only* what the gate let through (baseline WASI,
//!    plus filesystem / environment / wasi-http only when granted, plus our
//!    `openwop:node/host` log) and pre-instantiate the component against it
//!    (`NodePackPre`): type-checking and import resolution happen once;
//! 4. handshake: one throwaway instance (load-time limits, an empty WASI
//!    context — no preopens, no env, no network) answers `pack-name` and
//!    `nodes`.
//!
//! Invoke: a fresh `Store` (limiter, fuel, epoch deadline set by
//! [`crate::limits::prepare_store`] *before* instantiation, so the component's
//! start code is covered), a fresh WASI context built from the effective
//! grants, a fresh instance from the template, one call to `invoke`.
//! Instantiation and calls are async (`instantiate_async`/`call_async`, WASI
//! and wasi-http linked in their async flavour; [`crate::Sandbox`] drives
//! component invocations on a blocking thread) under a tokio timeout at
//! the same wall-clock deadline: epochs stop running wasm (the Store also
//! yields at every epoch tick), the timeout abandons a guest parked in a host call (a WASI
//! sleep, a slow HTTP peer) so its worker thread and slot are released on
//! time. If the invocation carries its own grants the gate runs again
//! against them, so a narrower per-call grant is refused, never silently
//! widened. When an invocation fails (trap, limit), whatever the guest wrote
//! to stderr is logged through `tracing` (`pack`, `node`, first 1 KiB).
//!
//! `wasi:cli/exit` is linked (Rust's std imports it); calling it unwinds the
//! guest's own instance only and is reported as
//! [`SandboxError::Trap`] with `trap: "exit(<code>)"`.

use std::collections::BTreeSet;
use std::time::Instant;

use serde_json::Value;
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::Store;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::abi::{Loaded, PackKind};
use crate::engine::SandboxEngine;
use crate::error::SandboxError;
use crate::grants::Grants;
use crate::limits::{classify, prepare_store, HasLimiter, Limiter, Limits, LoadLimits};
use crate::wasi::{self, CapturedOutput, HttpAllowlist, Linked, OutboundHttpHooks};
use crate::{
    GuestResult, InvokeOutcome, InvokeRequest, LoadOptions, LoadedPack, LogEntry, LogLevel, Metrics,
};

/// Bindings generated from `wit/node-pack.wit`.
#[allow(missing_docs)]
pub mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "node-pack",
        // Exports are called with `call_async` so that an invocation can be
        // abandoned while the guest waits inside a host call (a WASI sleep,
        // a slow HTTP peer): epochs only interrupt running wasm.
        exports: { default: async },
    });
}

use bindings::openwop::node::host as wit_host;
use bindings::openwop::node::types as wit_types;

/// Store data of one component invocation.
pub struct ComponentState {
    limiter: Limiter,
    wasi: WasiCtx,
    table: ResourceTable,
    http: WasiHttpCtx,
    hooks: OutboundHttpHooks,
    logs: Vec<LogEntry>,
    logs_dropped: u64,
    max_log_entries: usize,
    max_log_message_bytes: usize,
}

impl ComponentState {
    fn new(limits: &Limits, wasi: WasiCtx, allowlist: HttpAllowlist) -> Self {
        ComponentState {
            limiter: Limiter::new(limits),
            wasi,
            table: ResourceTable::new(),
            http: WasiHttpCtx::new(),
            hooks: OutboundHttpHooks::new(allowlist),
            logs: Vec::new(),
            logs_dropped: 0,
            max_log_entries: limits.max_log_entries,
            max_log_message_bytes: limits.max_log_message_bytes,
        }
    }
}

impl HasLimiter for ComponentState {
    fn limiter(&mut self) -> &mut Limiter {
        &mut self.limiter
    }
}

impl WasiView for ComponentState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for ComponentState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

impl wit_types::Host for ComponentState {}

impl wit_host::Host for ComponentState {
    fn log(&mut self, level: wit_host::LogLevel, message: String) {
        if self.logs.len() >= self.max_log_entries {
            self.logs_dropped += 1;
            return;
        }
        let level = match level {
            wit_host::LogLevel::Trace => LogLevel::Trace,
            wit_host::LogLevel::Debug => LogLevel::Debug,
            wit_host::LogLevel::Info => LogLevel::Info,
            wit_host::LogLevel::Warn => LogLevel::Warn,
            wit_host::LogLevel::Error => LogLevel::Error,
        };
        self.logs.push(LogEntry {
            level,
            message: truncate(message, self.max_log_message_bytes),
        });
    }
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

/// A compiled, gated, pre-instantiated component pack.
pub struct ComponentPack {
    pre: bindings::NodePackPre<ComponentState>,
    /// Import names in declaration order (re-gated for per-call grants).
    imports: Vec<String>,
    /// What the load-time gate linked.
    linked: BTreeSet<Linked>,
}

impl ComponentPack {
    /// The component's import names, in declaration order.
    pub fn imports(&self) -> &[String] {
        &self.imports
    }
}

/// Build a linker with exactly the interface groups in `linked`.
fn linker(
    engine: &wasmtime::Engine,
    linked: &BTreeSet<Linked>,
) -> wasmtime::Result<Linker<ComponentState>> {
    use wasmtime_wasi::cli::{WasiCli, WasiCliView};
    use wasmtime_wasi::clocks::{WasiClocks, WasiClocksView};
    use wasmtime_wasi::filesystem::{WasiFilesystem, WasiFilesystemView};
    // The async flavours of the blocking interfaces (poll, streams,
    // filesystem, http), so a wait inside the host can be abandoned.
    use wasmtime_wasi::p2::bindings::{cli, clocks, filesystem, io, random};
    use wasmtime_wasi::random::WasiRandom;

    struct HasIo;
    impl wasmtime::component::HasData for HasIo {
        type Data<'a> = &'a mut ResourceTable;
    }

    let mut l = Linker::<ComponentState>::new(engine);
    bindings::NodePack::add_to_linker::<ComponentState, HasSelf<ComponentState>>(&mut l, |s| s)?;

    // Baseline WASI: cannot reach anything on the host. Always linked (the
    // gate only lets these through when they appear; linking extra
    // interfaces a component does not import is harmless).
    wasmtime_wasi::p2::bindings::io::error::add_to_linker::<ComponentState, HasIo>(&mut l, |t| {
        &mut t.table
    })?;
    io::poll::add_to_linker::<ComponentState, HasIo>(&mut l, |t| &mut t.table)?;
    io::streams::add_to_linker::<ComponentState, HasIo>(&mut l, |t| &mut t.table)?;
    clocks::wall_clock::add_to_linker::<ComponentState, WasiClocks>(&mut l, |t| t.clocks())?;
    clocks::monotonic_clock::add_to_linker::<ComponentState, WasiClocks>(&mut l, |t| t.clocks())?;
    random::random::add_to_linker::<ComponentState, WasiRandom>(&mut l, |t| t.wasi.random())?;
    random::insecure::add_to_linker::<ComponentState, WasiRandom>(&mut l, |t| t.wasi.random())?;
    random::insecure_seed::add_to_linker::<ComponentState, WasiRandom>(&mut l, |t| {
        t.wasi.random()
    })?;
    cli::exit::add_to_linker::<ComponentState, WasiCli>(&mut l, |t| t.cli())?;
    cli::stdin::add_to_linker::<ComponentState, WasiCli>(&mut l, |t| t.cli())?;
    cli::stdout::add_to_linker::<ComponentState, WasiCli>(&mut l, |t| t.cli())?;
    cli::stderr::add_to_linker::<ComponentState, WasiCli>(&mut l, |t| t.cli())?;
    cli::terminal_input::add_to_linker::<ComponentState, WasiCli>(&mut l, |t| t.cli())?;
    cli::terminal_output::add_to_linker::<ComponentState, WasiCli>(&mut l, |t| t.cli())?;
    cli::terminal_stdin::add_to_linker::<ComponentState, WasiCli>(&mut l, |t| t.cli())?;
    cli::terminal_stdout::add_to_linker::<ComponentState, WasiCli>(&mut l, |t| t.cli())?;
    cli::terminal_stderr::add_to_linker::<ComponentState, WasiCli>(&mut l, |t| t.cli())?;

    // Granted groups only. Never linked at all: wasi:sockets/*.
    if linked.contains(&Linked::Environment) {
        cli::environment::add_to_linker::<ComponentState, WasiCli>(&mut l, |t| t.cli())?;
    }
    if linked.contains(&Linked::Filesystem) {
        filesystem::preopens::add_to_linker::<ComponentState, WasiFilesystem>(&mut l, |t| {
            t.filesystem()
        })?;
        filesystem::types::add_to_linker::<ComponentState, WasiFilesystem>(&mut l, |t| {
            t.filesystem()
        })?;
    }
    if linked.contains(&Linked::Http) {
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut l)?;
    }
    Ok(l)
}

pub(crate) fn load(
    engine: &SandboxEngine,
    ll: &LoadLimits,
    bytes: &[u8],
    opts: &LoadOptions,
    limits: &Limits,
) -> Result<Loaded, SandboxError> {
    check_declared(
        bytes,
        ll,
        engine
            .config()
            .pool
            .max_memory_bytes
            .min(limits.memory_bytes),
    )?;
    let (component, cache) = engine.component(bytes)?;
    let pack = prepare(engine.engine(), &component, &opts.grants)?;

    // Handshake in a throwaway instance: load-time caps, nothing granted.
    let hs = &ll.handshake;
    let mut store = Store::new(
        engine.engine(),
        ComponentState::new(hs, WasiCtx::builder().build(), HttpAllowlist::default()),
    );
    let budget = prepare_store(&mut store, hs);
    let pre = &pack.pre;
    // Loading runs on a blocking thread (Sandbox::load): drive the
    // handshake to completion here.
    let answer =
        wasmtime_wasi::runtime::in_tokio(run_with_deadline(hs, &budget, &mut store, |store| {
            Box::pin(async move {
                let inst = pre.instantiate_async(&mut *store).await?;
                let node = inst.openwop_node_node();
                let name = node.call_pack_name(&mut *store).await?;
                let nodes = node.call_nodes(&mut *store).await?;
                Ok((name, nodes))
            })
        }));
    let (name, nodes) = match answer {
        Ok(v) => v,
        Err(Stopped::Deadline(e)) => return Err(e),
        Err(Stopped::Error(e)) => return Err(classify(e, &store.data().limiter, &budget)),
    };
    if name.is_empty() || name.len() > 256 {
        return Err(SandboxError::abi(format!(
            "component pack-name must be 1..=256 bytes, got {}",
            name.len()
        )));
    }
    if let Some(expected) = &opts.name {
        if *expected != name {
            return Err(SandboxError::abi(format!(
                "component calls itself `{name}`, the manifest says `{expected}`"
            )));
        }
    }
    if nodes.len() > ll.max_nodes as usize {
        return Err(SandboxError::abi(format!(
            "component declares {} nodes, the limit is {}",
            nodes.len(),
            ll.max_nodes
        )));
    }
    let nodes: Vec<String> = nodes.into_iter().map(|n| n.type_id).collect();
    Ok(Loaded {
        name,
        nodes,
        abi_version: None,
        cache,
        kind: PackKind::Component(pack),
    })
}

/// Parse the component once (no compilation) and bound what its core
/// modules declare: at most `ll.max_memories` *defined* linear memories in
/// the whole component (so the per-memory byte cap is a per-instance cap —
/// a Rust/wit-component pack defines exactly one), no 64-bit or shared
/// memories, initial memory within the cap, initial tables, function body
/// size and locals within the load limits.
fn check_declared(bytes: &[u8], ll: &LoadLimits, memory_cap: u64) -> Result<(), SandboxError> {
    use wasmtime::wasmparser::{Parser, Payload};
    let bad = |m: String| SandboxError::invalid(m);
    let mem_cap = ll.max_initial_memory_bytes.min(memory_cap);
    let mut memories = 0u64;
    for payload in Parser::new(0).parse_all(bytes) {
        match payload.map_err(|e| bad(format!("malformed component: {e}")))? {
            Payload::MemorySection(r) => {
                for m in r {
                    let m = m.map_err(|e| bad(format!("malformed memory: {e}")))?;
                    memories += 1;
                    if memories > ll.max_memories as u64 {
                        return Err(bad(format!(
                            "component defines {memories} linear memories, the limit is {}",
                            ll.max_memories
                        )));
                    }
                    if m.memory64 || m.shared {
                        return Err(bad("64-bit and shared memories are not supported".into()));
                    }
                    let initial = m.initial.saturating_mul(1u64 << m.page_size_log2());
                    if initial > mem_cap {
                        return Err(SandboxError::MemoryExceeded {
                            limit_bytes: mem_cap,
                            requested_bytes: Some(initial),
                            message: format!("component declares an initial memory of {initial} bytes, the cap is {mem_cap}"),
                        });
                    }
                }
            }
            Payload::TableSection(r) => {
                for t in r {
                    let t = t.map_err(|e| bad(format!("malformed table: {e}")))?;
                    if t.ty.initial > ll.max_initial_table_elements {
                        return Err(bad(format!(
                            "component declares a table of {} elements, the limit is {}",
                            t.ty.initial, ll.max_initial_table_elements
                        )));
                    }
                }
            }
            Payload::CodeSectionEntry(body) => {
                let size = body.range().len() as u64;
                if size > ll.max_function_body_bytes as u64 {
                    return Err(bad(format!(
                        "a function body is {size} bytes, the limit is {}",
                        ll.max_function_body_bytes
                    )));
                }
                let mut locals = 0u64;
                let mut rd = body
                    .get_locals_reader()
                    .map_err(|e| bad(format!("malformed locals: {e}")))?;
                for _ in 0..rd.get_count() {
                    let (n, _) = rd
                        .read()
                        .map_err(|e| bad(format!("malformed locals: {e}")))?;
                    locals = locals.saturating_add(n as u64);
                    if locals > ll.max_locals as u64 {
                        return Err(bad(format!(
                            "a function declares over {} locals",
                            ll.max_locals
                        )));
                    }
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// Gate, link and pre-instantiate (no guest code runs).
fn prepare(
    engine: &wasmtime::Engine,
    component: &Component,
    grants: &Grants,
) -> Result<ComponentPack, SandboxError> {
    let ty = component.component_type();
    let imports: Vec<String> = ty.imports(engine).map(|(n, _)| n.to_string()).collect();
    let linked = wasi::classify_imports(imports.iter().map(String::as_str), grants)?;
    HttpAllowlist::parse(&grants.outbound_hosts)
        .map_err(|e| SandboxError::internal(format!("outbound host grant: {e}")))?;
    let l = linker(engine, &linked)
        .map_err(|e| SandboxError::internal(format!("component linker: {e:#}")))?;
    let pre = l.instantiate_pre(component).map_err(|e| {
        SandboxError::invalid(format!(
            "component does not match the node-pack world: {e:#}"
        ))
    })?;
    let pre = bindings::NodePackPre::new(pre).map_err(|e| {
        SandboxError::invalid(format!(
            "component does not export openwop:node/node: {e:#}"
        ))
    })?;
    Ok(ComponentPack {
        pre,
        imports,
        linked,
    })
}

pub(crate) async fn invoke(
    engine: &SandboxEngine,
    pack: &LoadedPack,
    c: &ComponentPack,
    req: &InvokeRequest,
    limits: &Limits,
    grants: &Grants,
) -> Result<InvokeOutcome, SandboxError> {
    if !pack.nodes.contains(&req.type_id) {
        return Err(SandboxError::UnknownNode {
            pack: pack.name.clone(),
            type_id: req.type_id.clone(),
        });
    }
    // A per-call grant must still cover every import; it can narrow the
    // load-time grant, never widen what was linked.
    if req.grants.is_some() {
        let linked = wasi::classify_imports(c.imports.iter().map(String::as_str), grants)?;
        if let Some(extra) = linked.difference(&c.linked).next() {
            return Err(SandboxError::internal(format!(
                "per-call grant needs {extra:?}, which was not linked at load"
            )));
        }
    }
    let allowlist = HttpAllowlist::parse(&grants.outbound_hosts)
        .map_err(|e| SandboxError::internal(format!("outbound host grant: {e}")))?;
    let output_cap = usize::try_from(limits.max_output_bytes).unwrap_or(usize::MAX);
    let (ctx, captured) = wasi::build_ctx(grants, output_cap)?;

    let started = Instant::now();
    let mut store = Store::new(engine.engine(), ComponentState::new(limits, ctx, allowlist));
    let budget = prepare_store(&mut store, limits);

    let node_ctx = wit_types::NodeContext {
        run_id: req.context.run_id.clone(),
        node_id: req.context.node_id.clone(),
        tenant_id: req.context.tenant_id.clone(),
        attempt: req.context.attempt,
        configurable_json: if req.context.configurable.is_null() {
            "{}".to_string()
        } else {
            req.context.configurable.to_string()
        },
    };
    let input = req.input.to_string();
    let pre = &c.pre;
    let type_id = req.type_id.as_str();
    let call = run_with_deadline(limits, &budget, &mut store, |store| {
        Box::pin(async move {
            let inst = pre.instantiate_async(&mut *store).await?;
            inst.openwop_node_node()
                .call_invoke(&mut *store, type_id, &node_ctx, &input)
                .await
        })
    })
    .await;

    let fuel_consumed = budget.fuel_consumed(&store);
    let result = match call {
        Ok(Ok(json)) => {
            if json.len() as u64 > limits.max_output_bytes {
                return Err(SandboxError::abi(format!(
                    "output is {} bytes, the limit is {}",
                    json.len(),
                    limits.max_output_bytes
                )));
            }
            let v: Value = serde_json::from_str(&json)
                .map_err(|e| SandboxError::abi(format!("output is not JSON: {e}")))?;
            GuestResult::Completed(v)
        }
        Ok(Err(e)) => GuestResult::Failed {
            code: e.code,
            message: e.message,
            details: e.details_json.and_then(|d| serde_json::from_str(&d).ok()),
        },
        Err(Stopped::Deadline(e)) => return Err(log_failure(pack, req, &captured, e)),
        Err(Stopped::Error(e)) => {
            if let Some(exit) = e.downcast_ref::<wasmtime_wasi::I32Exit>() {
                let e = SandboxError::Trap {
                    message: format!("guest called wasi:cli/exit with status {}", exit.0),
                    trap: Some(format!("exit({})", exit.0)),
                };
                return Err(log_failure(pack, req, &captured, e));
            }
            let e = classify(e, &store.data().limiter, &budget);
            return Err(log_failure(pack, req, &captured, e));
        }
    };

    let state = store.data_mut();
    let mut out = InvokeOutcome::new(result);
    out.logs = std::mem::take(&mut state.logs);
    out.logs_dropped = state.logs_dropped;
    out.metrics = Metrics {
        fuel_consumed,
        peak_memory_bytes: state.limiter.peak_memory,
        duration: started.elapsed(),
        queued: Default::default(),
    };
    attach_output(&mut out, &captured);
    Ok(out)
}

/// Why a guest run ended without an answer.
enum Stopped {
    /// The wall clock ran out while the guest was blocked in a host call
    /// (a WASI sleep, a slow HTTP peer…): the run was abandoned.
    Deadline(SandboxError),
    /// Wasmtime error (trap, epoch interrupt, fuel, link error…).
    Error(wasmtime::Error),
}

type GuestFuture<'a, R> =
    std::pin::Pin<Box<dyn std::future::Future<Output = wasmtime::Result<R>> + Send + 'a>>;

/// Run guest code (instantiation and calls) to completion, or abandon it at
/// the wall-clock deadline.
///
/// Wasm that is *running* is stopped by the epoch deadline (a trap, mapped
/// by [`classify`]); this covers the other case — the guest parked inside a
/// host call, where epochs cannot reach. Dropping the future unwinds the
/// guest's fiber, so the worker thread is free again at the deadline rather
/// than when the host call would have finished.
async fn run_with_deadline<'s, R>(
    limits: &Limits,
    budget: &crate::limits::Budget,
    store: &'s mut Store<ComponentState>,
    f: impl FnOnce(&'s mut Store<ComponentState>) -> GuestFuture<'s, R>,
) -> Result<R, Stopped> {
    let remaining = limits.wall_clock.saturating_sub(budget.started.elapsed());
    // Let the epoch trap (it knows whether wasm or the host was running)
    // win the race when the guest is computing; the host-side timer is a
    // little later.
    let grace = std::time::Duration::from_millis(20);
    match tokio::time::timeout(remaining + grace, f(store)).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(Stopped::Error(e)),
        Err(_) => Err(Stopped::Deadline(SandboxError::Timeout {
            limit_ms: limits.wall_clock.as_millis() as u64,
            elapsed_ms: budget.started.elapsed().as_millis() as u64,
        })),
    }
}

/// Log a failed invocation with the guest's stderr (its last words are
/// often the only explanation of a trap), then hand the error back.
fn log_failure(
    pack: &LoadedPack,
    req: &InvokeRequest,
    captured: &CapturedOutput,
    e: SandboxError,
) -> SandboxError {
    let stderr = captured.stderr.contents();
    let head = String::from_utf8_lossy(&stderr[..stderr.len().min(1024)]);
    tracing::warn!(pack = %pack.name, node = %req.type_id, code = e.code(), error = %e, stderr = %head, "component invocation failed");
    e
}

/// Put captured stdout/stderr on the outcome.
fn attach_output(out: &mut InvokeOutcome, captured: &CapturedOutput) {
    out.stdout = String::from_utf8_lossy(&captured.stdout.contents()).into_owned();
    out.stderr = String::from_utf8_lossy(&captured.stderr.contents()).into_owned();
    out.output_dropped_bytes = captured.stdout.dropped() + captured.stderr.dropped();
}
