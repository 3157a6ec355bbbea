//! Validation, declared-size bounds and import gating, before anything runs.
//!
//! Order for a core module: byte size (in `Sandbox::load_blocking`) →
//! [`check_declared`] (a single parse pass, no compilation) → compile
//! (cached) → [`gate_imports`] → only then may anything be instantiated.

use wasmtime::wasmparser::{Encoding, Parser, Payload, TypeRef};
use wasmtime::{ExternType, FuncType, Module, ValType};

use crate::engine::PoolConfig;
use crate::error::{EscapeKind, SandboxError};
use crate::grants::Grants;
use crate::limits::LoadLimits;
use crate::PackFormat;

/// The RFC 0008 §C baseline imports: always linkable, never gated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Baseline {
    /// `openwop_log(level, ptr, len)`
    Log,
    /// `openwop_now_ms() -> i64`
    NowMs,
    /// `openwop_random(ptr, len)`
    Random,
    /// `openwop_channel_read(name_ptr, name_len) -> (ptr, len)`
    ChannelRead,
    /// `openwop_channel_write(name_ptr, name_len, val_ptr, val_len) -> i32`
    ChannelWrite,
    /// `openwop_variable_get(key_ptr, key_len) -> (ptr, len)`
    VariableGet,
    /// `openwop_variable_set(key_ptr, key_len, val_ptr, val_len) -> i32`
    VariableSet,
    /// `openwop_interrupt(ptr, len) -> (ptr, len)`
    Interrupt,
}

impl Baseline {
    /// By import name.
    pub fn from_name(name: &str) -> Option<Baseline> {
        Some(match name {
            "openwop_log" => Baseline::Log,
            "openwop_now_ms" => Baseline::NowMs,
            "openwop_random" => Baseline::Random,
            "openwop_channel_read" => Baseline::ChannelRead,
            "openwop_channel_write" => Baseline::ChannelWrite,
            "openwop_variable_get" => Baseline::VariableGet,
            "openwop_variable_set" => Baseline::VariableSet,
            "openwop_interrupt" => Baseline::Interrupt,
            _ => return None,
        })
    }
}

/// How a (ptr, len) pair is returned: multi-value `(i32, i32)` or packed
/// `i64` with `len << 32 | ptr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PairEncoding {
    /// `(result i32 i32)`
    MultiValue,
    /// `(result i64)`
    Packed,
}

/// What an import is used for, once it passed the gate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImportUse {
    /// `env.memory` (probe ABI only): the host supplies a capped memory.
    EnvMemory,
    /// An RFC 0008 baseline function; for the (ptr, len)-returning ones,
    /// the encoding the module declared.
    Baseline(Baseline, Option<PairEncoding>),
    /// `openwop.<name>`: a host capability that needs a grant.
    Capability(String),
}

/// One import that passed the static gate.
#[derive(Debug, Clone)]
pub struct GatedImport {
    /// Import module.
    pub module: String,
    /// Import name.
    pub name: String,
    /// Declared type.
    pub ty: ExternType,
    /// Classification.
    pub use_: ImportUse,
}

/// Parse the module once (no compilation) and refuse it if it declares more
/// than `ll` allows: memories, tables, initial sizes, functions, exports,
/// imports, globals, segments, function body size, locals. A declared
/// initial memory over the cap is [`SandboxError::MemoryExceeded`]; other
/// violations are [`SandboxError::InvalidModule`].
pub fn check_declared(
    bytes: &[u8],
    ll: &LoadLimits,
    pool: &PoolConfig,
    memory_cap: u64,
) -> Result<(), SandboxError> {
    let bad = |m: String| SandboxError::invalid(m);
    let over = |what: &str, n: u64, max: u64| -> Result<(), SandboxError> {
        if n > max {
            Err(SandboxError::invalid(format!(
                "module declares {n} {what}, the limit is {max}"
            )))
        } else {
            Ok(())
        }
    };
    let mem_cap = ll
        .max_initial_memory_bytes
        .min(pool.max_memory_bytes)
        .min(memory_cap);
    let table_cap = ll
        .max_initial_table_elements
        .min(pool.max_table_elements as u64);
    let check_mem = |m: &wasmtime::wasmparser::MemoryType| -> Result<(), SandboxError> {
        if m.memory64 || m.shared {
            return Err(SandboxError::invalid(
                "64-bit and shared memories are not supported",
            ));
        }
        let page = 1u64 << m.page_size_log2();
        let initial = m.initial.saturating_mul(page);
        if initial > mem_cap {
            return Err(SandboxError::MemoryExceeded {
                limit_bytes: mem_cap,
                requested_bytes: Some(initial),
                message: format!(
                    "module declares an initial memory of {initial} bytes, the cap is {mem_cap}"
                ),
            });
        }
        Ok(())
    };
    let check_table = |t: &wasmtime::wasmparser::TableType| -> Result<(), SandboxError> {
        if t.initial > table_cap {
            return Err(SandboxError::invalid(format!(
                "module declares a table of {} elements, the limit is {table_cap}",
                t.initial
            )));
        }
        Ok(())
    };

    let (mut funcs, mut memories, mut tables, mut globals, mut exports, mut imports, mut segments) =
        (0u64, 0u64, 0u64, 0u64, 0u64, 0u64, 0u64);
    for payload in Parser::new(0).parse_all(bytes) {
        let payload = payload.map_err(|e| bad(format!("malformed module: {e}")))?;
        match payload {
            Payload::Version {
                encoding: Encoding::Component,
                ..
            } => return Err(bad("this is a component, not a core module".into())),
            Payload::ImportSection(r) => {
                for imp in r.into_imports() {
                    let imp = imp.map_err(|e| bad(format!("malformed import: {e}")))?;
                    imports += 1;
                    match imp.ty {
                        TypeRef::Func(_) | TypeRef::FuncExact(_) => funcs += 1,
                        TypeRef::Memory(m) => {
                            memories += 1;
                            check_mem(&m)?;
                        }
                        TypeRef::Table(t) => {
                            tables += 1;
                            check_table(&t)?;
                        }
                        TypeRef::Global(_) => globals += 1,
                        TypeRef::Tag(_) => {}
                    }
                    over("imports", imports, ll.max_imports as u64)?;
                }
            }
            Payload::FunctionSection(r) => funcs += r.count() as u64,
            Payload::TableSection(r) => {
                for t in r {
                    let t = t.map_err(|e| bad(format!("malformed table: {e}")))?;
                    tables += 1;
                    check_table(&t.ty)?;
                }
            }
            Payload::MemorySection(r) => {
                for m in r {
                    let m = m.map_err(|e| bad(format!("malformed memory: {e}")))?;
                    memories += 1;
                    check_mem(&m)?;
                }
            }
            Payload::GlobalSection(r) => globals += r.count() as u64,
            Payload::ExportSection(r) => exports += r.count() as u64,
            Payload::ElementSection(r) => segments += r.count() as u64,
            Payload::DataSection(r) => segments += r.count() as u64,
            Payload::CodeSectionEntry(body) => {
                let size = body.range().len() as u64;
                over(
                    "bytes in one function body",
                    size,
                    ll.max_function_body_bytes as u64,
                )?;
                let mut locals = 0u64;
                let mut rd = body
                    .get_locals_reader()
                    .map_err(|e| bad(format!("malformed locals: {e}")))?;
                for _ in 0..rd.get_count() {
                    let (n, _) = rd
                        .read()
                        .map_err(|e| bad(format!("malformed locals: {e}")))?;
                    locals = locals.saturating_add(n as u64);
                    over("locals in one function", locals, ll.max_locals as u64)?;
                }
            }
            _ => {}
        }
        over("functions", funcs, ll.max_functions as u64)?;
        over("memories", memories, ll.max_memories as u64)?;
        over("tables", tables, ll.max_tables as u64)?;
        over("globals", globals, ll.max_globals as u64)?;
        over("exports", exports, ll.max_exports as u64)?;
        over(
            "data and element segments",
            segments,
            ll.max_segments as u64,
        )?;
    }
    Ok(())
}

fn is_pair(results: &[ValType]) -> Option<PairEncoding> {
    match results {
        [ValType::I32, ValType::I32] => Some(PairEncoding::MultiValue),
        [ValType::I64] => Some(PairEncoding::Packed),
        _ => None,
    }
}

fn params_are(ty: &FuncType, want: &[ValType]) -> bool {
    let p: Vec<ValType> = ty.params().collect();
    p.len() == want.len() && p.iter().zip(want).all(|(a, b)| ValType::eq(a, b))
}

fn results_are(ty: &FuncType, want: &[ValType]) -> bool {
    let r: Vec<ValType> = ty.results().collect();
    r.len() == want.len() && r.iter().zip(want).all(|(a, b)| ValType::eq(a, b))
}

/// The declared (ptr, len) encoding of a function's results, if it has one.
pub fn pair_encoding(ty: &FuncType) -> Option<PairEncoding> {
    let r: Vec<ValType> = ty.results().collect();
    is_pair(&r)
}

fn baseline_signature(b: Baseline, ty: &FuncType) -> Result<Option<PairEncoding>, String> {
    use ValType::{I32, I64};
    let ok = |params: &[ValType], results: &[ValType]| {
        params_are(ty, params) && results_are(ty, results)
    };
    let pair = |params: &[ValType]| -> Result<Option<PairEncoding>, String> {
        if !params_are(ty, params) {
            return Err(format!("expected params {params:?}"));
        }
        match pair_encoding(ty) {
            Some(e) => Ok(Some(e)),
            None => Err("expected results (i32 i32) or (i64)".into()),
        }
    };
    match b {
        Baseline::Log => ok(&[I32, I32, I32], &[])
            .then_some(None)
            .ok_or_else(|| "expected (i32 i32 i32) -> ()".into()),
        Baseline::NowMs => ok(&[], &[I64])
            .then_some(None)
            .ok_or_else(|| "expected () -> i64".into()),
        Baseline::Random => ok(&[I32, I32], &[])
            .then_some(None)
            .ok_or_else(|| "expected (i32 i32) -> ()".into()),
        Baseline::ChannelWrite | Baseline::VariableSet => ok(&[I32, I32, I32, I32], &[I32])
            .then_some(None)
            .ok_or_else(|| "expected (i32 i32 i32 i32) -> i32".into()),
        Baseline::ChannelRead | Baseline::VariableGet | Baseline::Interrupt => pair(&[I32, I32]),
    }
}

/// Classify every import of `module`, in declaration order, and refuse the
/// first offending one:
///
/// * `env.memory` (probe ABI only) → [`ImportUse::EnvMemory`];
/// * `openwop.<baseline>` (RFC 0008 §C names; any format) → baseline, type-checked;
/// * other `openwop.<name>` functions → capability; when `grants` is given,
///   an ungranted one is [`SandboxError::CapabilityDenied`] with
///   `requestedCapability` = `<name>` exactly;
/// * everything else (`wasi_snapshot_preview1.*`, `env.*`, …) →
///   [`SandboxError::EscapeAttempt`] classified by the import name.
pub fn gate_imports(
    module: &Module,
    format: PackFormat,
    grants: Option<&Grants>,
) -> Result<Vec<GatedImport>, SandboxError> {
    let mut out = Vec::new();
    for imp in module.imports() {
        let (m, n, ty) = (imp.module(), imp.name(), imp.ty());
        let use_ = if m == "env"
            && n == "memory"
            && format == PackFormat::Probe
            && matches!(ty, ExternType::Memory(_))
        {
            ImportUse::EnvMemory
        } else if m == "openwop" {
            let ExternType::Func(fty) = &ty else {
                return Err(SandboxError::invalid(format!(
                    "import `openwop.{n}` must be a function"
                )));
            };
            match Baseline::from_name(n) {
                Some(b) => {
                    let enc = baseline_signature(b, fty).map_err(|e| {
                        SandboxError::invalid(format!(
                            "import `openwop.{n}` has the wrong type: {e}"
                        ))
                    })?;
                    ImportUse::Baseline(b, enc)
                }
                None => {
                    if let Some(g) = grants {
                        if !g.allows_host_call(n) {
                            return Err(SandboxError::CapabilityDenied {
                                capability: n.to_string(),
                            });
                        }
                    }
                    ImportUse::Capability(n.to_string())
                }
            }
        } else {
            return Err(SandboxError::EscapeAttempt {
                kind: EscapeKind::classify(n),
                module: m.to_string(),
                name: n.to_string(),
            });
        };
        out.push(GatedImport {
            module: m.to_string(),
            name: n.to_string(),
            ty,
            use_,
        });
    }
    Ok(out)
}

/// Refuse the first capability import not in `grants` (invocation-time
/// check for the probe ABI, where each invocation carries its own grant).
pub fn check_capabilities(imports: &[GatedImport], grants: &Grants) -> Result<(), SandboxError> {
    for i in imports {
        if let ImportUse::Capability(name) = &i.use_ {
            if !grants.allows_host_call(name) {
                return Err(SandboxError::CapabilityDenied {
                    capability: name.clone(),
                });
            }
        }
    }
    Ok(())
}
