//! RFC 0008 ABI v1 core modules (`runtime.language: "wasm"`).
//!
//! Load (no node is invoked): declared-size check → compile (cached) →
//! import gate (load grants) → `InstancePre` → handshake in a throwaway
//! Store under [`LoadLimits::handshake`]: `openwop_abi_version()` first (a
//! version this host does not speak is refused with
//! `unsupported_abi_version`), then the required exports and their types,
//! `openwop_pack_name()`, `openwop_node_count()`, `openwop_node_id_at(i)`.
//!
//! Invoke: fresh Store + instance from the `InstancePre`; the request
//! envelope `{abiVersion, nodeContext, inputs}` goes into memory from
//! `openwop_alloc`; `openwop_node_invoke(index, ptr, len)` returns
//! `(ptr, len)` (multi-value or packed i64, detected per export); the host
//! bounds-checks it, refuses outputs over [`Limits::max_output_bytes`],
//! copies it out, then calls `openwop_free` on the response and on the
//! request.

use serde::Serialize;
use serde_json::Value;
use wasmtime::{
    Extern, Func, InstancePre, Linker, Memory, Module, ModuleExport, Store, TypedFunc, ValType,
    WasmParams,
};

use crate::abi::host::{define_imports, guest_range, needs_io, HostIo, HostState, Suspend};
use crate::abi::{Loaded, PackKind};
use crate::engine::SandboxEngine;
use crate::error::SandboxError;
use crate::grants::Grants;
use crate::limits::{classify, prepare_store, Budget, Limits, LoadLimits};
use crate::load::{
    check_capabilities, check_declared, gate_imports, pair_encoding, GatedImport, ImportUse,
    PairEncoding,
};
use crate::{
    GuestResult, InvokeOutcome, InvokeRequest, LoadOptions, LoadedPack, Metrics, NodeContext,
    PackFormat, SUPPORTED_ABI_VERSIONS,
};

/// Longest pack name / typeId accepted.
const MAX_ID_BYTES: u32 = 1024;

/// A compiled RFC 0008 module.
pub struct CorePack {
    pre: InstancePre<HostState>,
    /// Capability imports (already granted at load).
    capabilities: Vec<GatedImport>,
    needs_io: bool,
    memory: ModuleExport,
    alloc: ModuleExport,
    free: ModuleExport,
    node_invoke: ModuleExport,
    invoke_enc: PairEncoding,
}

fn export_fn(
    module: &Module,
    name: &str,
    params: &[ValType],
    results: Option<&[ValType]>,
) -> Result<ModuleExport, SandboxError> {
    let ty = module
        .get_export(name)
        .ok_or_else(|| SandboxError::abi(format!("missing required export `{name}`")))?;
    let wasmtime::ExternType::Func(f) = ty else {
        return Err(SandboxError::abi(format!(
            "export `{name}` is not a function"
        )));
    };
    let p: Vec<ValType> = f.params().collect();
    let r: Vec<ValType> = f.results().collect();
    let same = |a: &[ValType], b: &[ValType]| {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| ValType::eq(x, y))
    };
    let results_ok = match results {
        Some(want) => same(&r, want),
        None => pair_encoding(&f).is_some(),
    };
    if !same(&p, params) || !results_ok {
        return Err(SandboxError::abi(format!(
            "export `{name}` has the wrong type {f}"
        )));
    }
    module
        .get_export_index(name)
        .ok_or_else(|| SandboxError::abi(format!("missing required export `{name}`")))
}

fn enc_of(module: &Module, name: &str) -> PairEncoding {
    match module.get_export(name) {
        Some(wasmtime::ExternType::Func(f)) => pair_encoding(&f).unwrap_or(PairEncoding::Packed),
        _ => PairEncoding::Packed,
    }
}

fn func(
    store: &mut Store<HostState>,
    inst: &wasmtime::Instance,
    e: &ModuleExport,
) -> Result<Func, SandboxError> {
    match inst.get_module_export(&mut *store, e) {
        Some(Extern::Func(f)) => Ok(f),
        _ => Err(SandboxError::internal("export vanished")),
    }
}

async fn call_pair<P: WasmParams + Send + Sync>(
    store: &mut Store<HostState>,
    f: &Func,
    enc: PairEncoding,
    args: P,
) -> wasmtime::Result<(u32, u32)> {
    match enc {
        PairEncoding::Packed => {
            let t = f.typed::<P, i64>(&*store)?;
            let v = t.call_async(&mut *store, args).await? as u64;
            Ok((v as u32, (v >> 32) as u32))
        }
        PairEncoding::MultiValue => {
            let t = f.typed::<P, (i32, i32)>(&*store)?;
            let (p, l) = t.call_async(&mut *store, args).await?;
            Ok((p as u32, l as u32))
        }
    }
}

/// Call a `() -> i32` export.
async fn call_i32(store: &mut Store<HostState>, f: &Func) -> wasmtime::Result<i32> {
    let t = f.typed::<(), i32>(&*store)?;
    t.call_async(&mut *store, ()).await
}

fn read_out(
    store: &Store<HostState>,
    mem: &Memory,
    ptr: u32,
    len: u32,
    cap: u64,
    what: &str,
) -> Result<Vec<u8>, SandboxError> {
    if len as u64 > cap {
        return Err(SandboxError::abi(format!(
            "{what} is {len} bytes, over the cap of {cap}"
        )));
    }
    let data = mem.data(store);
    let r = guest_range(data.len(), ptr, len).ok_or_else(|| {
        SandboxError::abi(format!(
            "{what}: ({ptr}, {len}) is outside guest memory ({} bytes)",
            data.len()
        ))
    })?;
    Ok(data[r].to_vec())
}

fn read_id(
    store: &Store<HostState>,
    mem: &Memory,
    (ptr, len): (u32, u32),
    what: &str,
) -> Result<String, SandboxError> {
    let b = read_out(store, mem, ptr, len, MAX_ID_BYTES as u64, what)?;
    let s = String::from_utf8(b).map_err(|_| SandboxError::abi(format!("{what} is not UTF-8")))?;
    if s.is_empty() {
        return Err(SandboxError::abi(format!("{what} is empty")));
    }
    Ok(s)
}

pub(crate) fn load(
    engine: &SandboxEngine,
    ll: &LoadLimits,
    bytes: &[u8],
    opts: &LoadOptions,
    limits: &Limits,
) -> Result<Loaded, SandboxError> {
    // Loading runs on a blocking thread (Sandbox::load); the handshake is
    // async only because every Store yields at epoch ticks.
    futures::executor::block_on(load_async(engine, ll, bytes, opts, limits))
}

async fn load_async(
    engine: &SandboxEngine,
    ll: &LoadLimits,
    bytes: &[u8],
    opts: &LoadOptions,
    limits: &Limits,
) -> Result<Loaded, SandboxError> {
    check_declared(bytes, ll, &engine.config().pool, limits.memory_bytes)?;
    let (module, cache) = engine.module(bytes)?;
    let imports = gate_imports(&module, PackFormat::CoreModule, Some(&opts.grants))?;
    let mut linker = Linker::new(engine.engine());
    define_imports(&mut linker, &imports)?;
    let pre = linker
        .instantiate_pre(&module)
        .map_err(|e| SandboxError::invalid(format!("{e:#}")))?;

    // Manifest hint first (no guest code needed to refuse it).
    if let Some(v) = opts.manifest_abi_version {
        if !SUPPORTED_ABI_VERSIONS.iter().any(|s| *s as i64 == v) {
            return Err(SandboxError::UnsupportedAbiVersion {
                found: v,
                supported: SUPPORTED_ABI_VERSIONS.to_vec(),
            });
        }
    }
    let abi_version = export_fn(&module, "openwop_abi_version", &[], Some(&[ValType::I32]))?;

    // Handshake in a throwaway, fully limited Store.
    let mut hs = ll.handshake.clone();
    hs.memory_bytes = limits.memory_bytes;
    let io = needs_io(&imports).then(|| Box::new(HostIo::from_context(&NodeContext::default())));
    let mut store = Store::new(engine.engine(), HostState::new(&hs, io));
    let budget = prepare_store(&mut store, &hs);
    let fail = |store: &Store<HostState>, budget: &Budget, e: wasmtime::Error| {
        classify(e, &store.data().limiter, budget)
    };
    let inst = pre
        .instantiate_async(&mut store)
        .await
        .map_err(|e| fail(&store, &budget, e))?;

    // 1. The ABI version, before any other export is touched.
    let f = func(&mut store, &inst, &abi_version)?;
    let version = call_i32(&mut store, &f)
        .await
        .map_err(|e| fail(&store, &budget, e))?;
    if !SUPPORTED_ABI_VERSIONS
        .iter()
        .any(|s| *s as i64 == version as i64)
    {
        return Err(SandboxError::UnsupportedAbiVersion {
            found: version as i64,
            supported: SUPPORTED_ABI_VERSIONS.to_vec(),
        });
    }
    if let Some(v) = opts.manifest_abi_version {
        if v != version as i64 {
            return Err(SandboxError::abi(format!(
                "manifest says abiVersion {v}, the module says {version}"
            )));
        }
    }

    // 2. Required exports and their types.
    use ValType::{I32, I64};
    let _ = I64;
    let pack_name = export_fn(&module, "openwop_pack_name", &[], None)?;
    let node_count = export_fn(&module, "openwop_node_count", &[], Some(&[I32]))?;
    let node_id_at = export_fn(&module, "openwop_node_id_at", &[I32], None)?;
    let alloc = export_fn(&module, "openwop_alloc", &[I32], Some(&[I32]))?;
    let free = export_fn(&module, "openwop_free", &[I32, I32], Some(&[]))?;
    let node_invoke = export_fn(&module, "openwop_node_invoke", &[I32, I32, I32], None)?;
    let memory = match module.get_export("memory") {
        Some(wasmtime::ExternType::Memory(_)) => {
            module.get_export_index("memory").expect("export exists")
        }
        _ => return Err(SandboxError::abi("missing required export `memory`")),
    };
    let Some(Extern::Memory(mem)) = inst.get_module_export(&mut store, &memory) else {
        return Err(SandboxError::internal("memory export vanished"));
    };

    // 3. Pack name and node typeIds.
    let f = func(&mut store, &inst, &pack_name)?;
    let pair = call_pair(&mut store, &f, enc_of(&module, "openwop_pack_name"), ())
        .await
        .map_err(|e| fail(&store, &budget, e))?;
    let name = read_id(&store, &mem, pair, "openwop_pack_name()")?;
    if let Some(want) = &opts.name {
        if *want != name {
            return Err(SandboxError::abi(format!(
                "the manifest names the pack `{want}` but the module says `{name}`"
            )));
        }
    }
    let f = func(&mut store, &inst, &node_count)?;
    let count = call_i32(&mut store, &f)
        .await
        .map_err(|e| fail(&store, &budget, e))?;
    if count < 0 || count as u32 > ll.max_nodes {
        return Err(SandboxError::abi(format!(
            "openwop_node_count() = {count}, must be 0..={}",
            ll.max_nodes
        )));
    }
    let f = func(&mut store, &inst, &node_id_at)?;
    let enc = enc_of(&module, "openwop_node_id_at");
    let mut nodes: Vec<String> = Vec::with_capacity(count as usize);
    for i in 0..count {
        let pair = call_pair(&mut store, &f, enc, i)
            .await
            .map_err(|e| fail(&store, &budget, e))?;
        let id = read_id(&store, &mem, pair, &format!("openwop_node_id_at({i})"))?;
        if nodes.contains(&id) {
            return Err(SandboxError::abi(format!(
                "node typeId `{id}` is listed twice"
            )));
        }
        nodes.push(id);
    }
    let invoke_enc = enc_of(&module, "openwop_node_invoke");
    let capabilities = imports
        .iter()
        .filter(|i| matches!(i.use_, ImportUse::Capability(_)))
        .cloned()
        .collect();
    Ok(Loaded {
        name,
        nodes,
        abi_version: Some(version as u32),
        cache,
        kind: PackKind::Core(CorePack {
            pre,
            capabilities,
            needs_io: needs_io(&imports),
            memory,
            alloc,
            free,
            node_invoke,
            invoke_enc,
        }),
    })
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Request<'a> {
    abi_version: u32,
    node_context: &'a NodeContext,
    inputs: &'a Value,
}

pub(crate) async fn invoke(
    engine: &SandboxEngine,
    pack: &LoadedPack,
    c: &CorePack,
    req: &InvokeRequest,
    limits: &Limits,
    grants: &Grants,
) -> Result<InvokeOutcome, SandboxError> {
    // Capabilities were gated against the load grants and the InstancePre
    // links only what passed; an invocation's own grants can narrow that
    // (never widen it), checked here before instantiation.
    if req.grants.is_some() {
        check_capabilities(&c.capabilities, grants)?;
    }
    let Some(index) = pack.nodes.iter().position(|n| *n == req.type_id) else {
        return Err(SandboxError::UnknownNode {
            pack: pack.name.clone(),
            type_id: req.type_id.clone(),
        });
    };
    let request = serde_json::to_vec(&Request {
        abi_version: 1,
        node_context: &req.context,
        inputs: &req.input,
    })
    .map_err(SandboxError::internal)?;

    let io = c
        .needs_io
        .then(|| Box::new(HostIo::from_context(&req.context)));
    let mut store = Store::new(engine.engine(), HostState::new(limits, io));
    let budget = prepare_store(&mut store, limits);

    let run = async {
        let inst = c.pre.instantiate_async(&mut store).await?;
        let Some(Extern::Memory(mem)) = inst.get_module_export(&mut store, &c.memory) else {
            return Err(SandboxError::internal("memory export vanished").into());
        };
        let alloc: TypedFunc<i32, i32> = func(&mut store, &inst, &c.alloc)?.typed(&store)?;
        let free: TypedFunc<(i32, i32), ()> = func(&mut store, &inst, &c.free)?.typed(&store)?;
        let node_invoke = func(&mut store, &inst, &c.node_invoke)?;

        let len =
            u32::try_from(request.len()).map_err(|_| SandboxError::abi("request too large"))?;
        let ptr = alloc.call_async(&mut store, len as i32).await? as u32;
        {
            let data = mem.data_mut(&mut store);
            let r = guest_range(data.len(), ptr, len).ok_or_else(|| {
                SandboxError::abi(format!(
                    "openwop_alloc({len}) returned {ptr}, outside guest memory ({} bytes)",
                    data.len()
                ))
            })?;
            data[r].copy_from_slice(&request);
        }
        let (rptr, rlen) = call_pair(
            &mut store,
            &node_invoke,
            c.invoke_enc,
            (index as i32, ptr as i32, len as i32),
        )
        .await?;
        let response = read_out(
            &store,
            &mem,
            rptr,
            rlen,
            limits.max_output_bytes,
            "openwop_node_invoke response",
        )?;
        // Ownership (RFC 0008 §E): the host frees the response it read and
        // the request it allocated.
        free.call_async(&mut store, (rptr as i32, rlen as i32))
            .await?;
        free.call_async(&mut store, (ptr as i32, len as i32))
            .await?;
        wasmtime::Result::<Vec<u8>>::Ok(response)
    }
    .await;

    let result = match run {
        Ok(bytes) => parse_response(&bytes)?,
        Err(e) => match e.downcast::<Suspend>() {
            Ok(Suspend(payload)) => GuestResult::Suspended(payload),
            Err(e) => return Err(classify(e, &store.data().limiter, &budget)),
        },
    };

    let mut out = InvokeOutcome::new(result);
    out.metrics = Metrics {
        fuel_consumed: budget.fuel_consumed(&store),
        peak_memory_bytes: store.data().limiter.peak_memory,
        duration: budget.started.elapsed(),
        queued: Default::default(),
    };
    let st = store.into_data();
    out.logs = st.logs;
    out.logs_dropped = st.logs_dropped;
    if let Some(io) = st.io {
        out.channel_writes = io.channel_writes;
        out.variable_writes = io.variable_writes;
    }
    Ok(out)
}

/// Parse the guest's response envelope (§D).
fn parse_response(bytes: &[u8]) -> Result<GuestResult, SandboxError> {
    let v: Value = serde_json::from_slice(bytes)
        .map_err(|e| SandboxError::abi(format!("response is not JSON: {e}")))?;
    let Value::Object(mut o) = v else {
        return Err(SandboxError::abi("response is not a JSON object"));
    };
    match o.get("outcome").and_then(Value::as_str) {
        Some("completed") => Ok(GuestResult::Completed(
            o.remove("output").unwrap_or(Value::Null),
        )),
        Some("suspended") => Ok(GuestResult::Suspended(
            o.remove("interrupt").unwrap_or(Value::Null),
        )),
        Some("failed") => {
            let err = o.remove("error").unwrap_or(Value::Null);
            let code = err
                .get("code")
                .and_then(Value::as_str)
                .unwrap_or("wasm_invocation_failed")
                .to_string();
            let message = err
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            let details = err.get("details").cloned();
            Ok(GuestResult::Failed {
                code,
                message,
                details,
            })
        }
        Some(other) => Err(SandboxError::abi(format!("unknown outcome `{other}`"))),
        None => Err(SandboxError::abi("response has no `outcome`")),
    }
}
