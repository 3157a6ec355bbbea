//! RFC 0035 probe ABI (layer C): exports `invoke(i32) -> i32` (or
//! `bump`/`read`: `() -> i32`), optional import `env.memory`, capability
//! imports `openwop.<cap>: (i32) -> i32`.
//!
//! * Escape imports are refused at load. Capability imports are checked at
//!   *invocation* against that invocation's grants (RFC 0035: the grant sent
//!   with the call overrides the advertised list), still before anything is
//!   instantiated. A granted capability is the reference stub: it echoes
//!   its argument.
//! * `env.memory` is supplied per invocation: `initial` = the declared
//!   minimum, `maximum` = ceil(memory cap / 64 KiB).
//! * Input: a JSON integer (or null = 0). Output: `Completed(<i32>)`.

use wasmtime::{
    Extern, InstancePre, Linker, Memory, MemoryType, Module, ModuleExport, Store, ValType,
};

use crate::abi::host::{define_imports, HostState};
use crate::abi::{Loaded, PackKind};
use crate::engine::SandboxEngine;
use crate::error::SandboxError;
use crate::grants::Grants;
use crate::limits::{classify, prepare_store, Limits, LoadLimits};
use crate::load::{check_capabilities, check_declared, gate_imports, GatedImport, ImportUse};
use crate::{
    GuestResult, InvokeOutcome, InvokeRequest, LoadOptions, LoadedPack, Metrics, PackFormat,
};

/// A compiled probe module.
pub struct ProbePack {
    module: Module,
    imports: Vec<GatedImport>,
    linker: Linker<HostState>,
    pre: Option<InstancePre<HostState>>,
    /// Declared (minimum, maximum) pages of an `env.memory` import.
    env_memory: Option<(u64, Option<u64>)>,
    exports: Vec<(String, ModuleExport, bool)>,
}

pub(crate) fn load(
    engine: &SandboxEngine,
    ll: &LoadLimits,
    bytes: &[u8],
    opts: &LoadOptions,
    limits: &Limits,
) -> Result<Loaded, SandboxError> {
    check_declared(bytes, ll, &engine.config().pool, limits.memory_bytes)?;
    let (module, cache) = engine.module(bytes)?;
    let imports = gate_imports(&module, PackFormat::Probe, None)?;
    let mut linker = Linker::new(engine.engine());
    let env_memory = define_imports(&mut linker, &imports)?;
    let env_memory_ty = imports.iter().find_map(|i| match (&i.use_, &i.ty) {
        (ImportUse::EnvMemory, wasmtime::ExternType::Memory(m)) => Some((m.minimum(), m.maximum())),
        _ => None,
    });
    let pre = if env_memory {
        None
    } else {
        Some(
            linker
                .instantiate_pre(&module)
                .map_err(|e| SandboxError::invalid(format!("{e:#}")))?,
        )
    };
    let mut exports = Vec::new();
    for e in module.exports() {
        if let wasmtime::ExternType::Func(f) = e.ty() {
            let params: Vec<ValType> = f.params().collect();
            let results: Vec<ValType> = f.results().collect();
            if !matches!(results.as_slice(), [ValType::I32]) {
                continue;
            }
            let unary = match params.as_slice() {
                [ValType::I32] => true,
                [] => false,
                _ => continue,
            };
            if let Some(idx) = module.get_export_index(e.name()) {
                exports.push((e.name().to_string(), idx, unary));
            }
        }
    }
    if exports.is_empty() {
        return Err(SandboxError::invalid(
            "probe module exports no `(i32) -> i32` or `() -> i32` function",
        ));
    }
    let name = opts.name.clone().unwrap_or_else(|| "probe".to_string());
    let nodes = exports.iter().map(|(n, _, _)| n.clone()).collect();
    Ok(Loaded {
        name,
        nodes,
        abi_version: None,
        cache,
        kind: PackKind::Probe(ProbePack {
            module,
            imports,
            linker,
            pre,
            env_memory: env_memory_ty,
            exports,
        }),
    })
}

pub(crate) async fn invoke(
    engine: &SandboxEngine,
    pack: &LoadedPack,
    p: &ProbePack,
    req: &InvokeRequest,
    limits: &Limits,
    grants: &Grants,
) -> Result<InvokeOutcome, SandboxError> {
    let Some((_, export, unary)) = p.exports.iter().find(|(n, _, _)| *n == req.type_id) else {
        return Err(SandboxError::UnknownNode {
            pack: pack.name.clone(),
            type_id: req.type_id.clone(),
        });
    };
    // Capability gate for this invocation's grants: before instantiation.
    check_capabilities(&p.imports, grants)?;
    let arg = match &req.input {
        serde_json::Value::Null => 0,
        v => v
            .as_i64()
            .ok_or_else(|| SandboxError::abi("probe input must be an integer"))?
            as i32,
    };

    let mut store = Store::new(engine.engine(), HostState::new(limits, None));
    let budget = prepare_store(&mut store, limits);
    let instance = match &p.pre {
        Some(pre) => pre.instantiate_async(&mut store).await,
        None => {
            // initial = the declared minimum; maximum = the cap in pages, or
            // the declared maximum if that is lower (else the import would
            // not type-check). A minimum over the cap fails in the limiter.
            let (min, declared_max) = p.env_memory.unwrap_or((1, None));
            let min = min.max(1);
            let max = declared_max
                .map_or(limits.memory_pages(), |d| d.min(limits.memory_pages()))
                .max(min);
            let mut linker = p.linker.clone();
            match Memory::new(&mut store, MemoryType::new(min as u32, Some(max as u32)))
                .and_then(|mem| linker.define(&store, "env", "memory", mem).map(|_| ()))
            {
                Ok(()) => linker.instantiate_async(&mut store, &p.module).await,
                Err(e) => Err(e),
            }
        }
    }
    .map_err(|e| classify(e, &store.data().limiter, &budget))?;

    let Some(Extern::Func(f)) = instance.get_module_export(&mut store, export) else {
        return Err(SandboxError::internal("probe export vanished"));
    };
    let r = if *unary {
        match f.typed::<i32, i32>(&store) {
            Ok(t) => t.call_async(&mut store, arg).await,
            Err(e) => Err(e),
        }
    } else {
        match f.typed::<(), i32>(&store) {
            Ok(t) => t.call_async(&mut store, ()).await,
            Err(e) => Err(e),
        }
    };
    let v = r.map_err(|e| classify(e, &store.data().limiter, &budget))?;

    let mut out = InvokeOutcome::new(GuestResult::Completed(v.into()));
    out.metrics = Metrics {
        fuel_consumed: budget.fuel_consumed(&store),
        peak_memory_bytes: store.data().limiter.peak_memory,
        duration: budget.started.elapsed(),
        queued: Default::default(),
    };
    let st = store.into_data();
    out.logs = st.logs;
    out.logs_dropped = st.logs_dropped;
    Ok(out)
}
