//! Store data and host functions shared by the core-module ABIs (probe and
//! RFC 0008): the baseline `openwop.openwop_*` imports and capability stubs.
//!
//! Every (ptr, len) coming from the guest is bounds-checked against the
//! memory's current size and copied out before the host calls back into the
//! guest. A bad pointer is a trap carrying [`SandboxError::AbiViolation`],
//! never a host panic.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;
use sha2::{Digest, Sha256};
use wasmtime::{Caller, Extern, ExternType, Linker, Memory, Val, ValType};

use crate::error::SandboxError;
use crate::limits::{HasLimiter, Limiter, Limits};
use crate::load::{Baseline, GatedImport, ImportUse, PairEncoding};
use crate::{LogEntry, LogLevel, NodeContext};

/// Longest channel/variable name accepted from the guest.
const MAX_NAME_BYTES: usize = 4096;
/// Most channel/variable writes recorded per invocation.
const MAX_WRITES: usize = 1024;
/// Largest `openwop_random` request.
const MAX_RANDOM_BYTES: usize = 1 << 20;

/// The guest asked to suspend (`openwop_interrupt` with no resume value).
#[derive(Debug)]
pub(crate) struct Suspend(pub Value);

impl std::fmt::Display for Suspend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("guest suspended through openwop_interrupt")
    }
}
impl std::error::Error for Suspend {}

/// Host-side inputs and outputs of the RFC 0008 baseline imports. Only
/// allocated for modules that import one of them.
#[derive(Debug, Default)]
pub(crate) struct HostIo {
    pub now_ms: Option<i64>,
    pub channels: BTreeMap<String, Value>,
    pub variables: BTreeMap<String, Value>,
    pub resume_value: Option<Value>,
    pub channel_writes: Vec<(String, Value)>,
    pub variable_writes: Vec<(String, Value)>,
    seed: [u8; 32],
    counter: u64,
}

impl HostIo {
    pub fn from_context(ctx: &NodeContext) -> Self {
        let seed = Sha256::new()
            .chain_update(b"openwop_random\0")
            .chain_update(ctx.run_id.as_bytes())
            .chain_update([0])
            .chain_update(ctx.node_id.as_bytes())
            .chain_update([0])
            .chain_update(ctx.attempt.to_le_bytes())
            .finalize()
            .into();
        HostIo {
            now_ms: ctx.now_ms,
            channels: ctx.channels.clone(),
            variables: ctx.variables.clone(),
            resume_value: ctx.resume_value.clone(),
            channel_writes: Vec::new(),
            variable_writes: Vec::new(),
            seed,
            counter: 0,
        }
    }

    /// Deterministic bytes per (runId, nodeId, attempt): SHA-256 in counter mode.
    fn fill_random(&mut self, out: &mut [u8]) {
        for chunk in out.chunks_mut(32) {
            let block = Sha256::new()
                .chain_update(self.seed)
                .chain_update(self.counter.to_le_bytes())
                .finalize();
            self.counter += 1;
            chunk.copy_from_slice(&block[..chunk.len()]);
        }
    }
}

/// Store data for core-module invocations.
pub(crate) struct HostState {
    pub limiter: Limiter,
    pub logs: Vec<LogEntry>,
    pub logs_dropped: u64,
    pub max_log_entries: usize,
    pub max_log_message_bytes: usize,
    pub max_output_bytes: u64,
    pub io: Option<Box<HostIo>>,
}

impl HostState {
    pub fn new(limits: &Limits, io: Option<Box<HostIo>>) -> Self {
        HostState {
            limiter: Limiter::new(limits),
            logs: Vec::new(),
            logs_dropped: 0,
            max_log_entries: limits.max_log_entries,
            max_log_message_bytes: limits.max_log_message_bytes,
            max_output_bytes: limits.max_output_bytes,
            io,
        }
    }
}

impl HasLimiter for HostState {
    fn limiter(&mut self) -> &mut Limiter {
        &mut self.limiter
    }
}

type Res<T> = wasmtime::Result<T>;

fn violation(msg: impl std::fmt::Display) -> wasmtime::Error {
    wasmtime::Error::new(SandboxError::abi(msg))
}

fn memory(caller: &mut Caller<'_, HostState>) -> Res<Memory> {
    match caller.get_export("memory") {
        Some(Extern::Memory(m)) => Ok(m),
        _ => Err(violation(
            "the module calls a host function but exports no `memory`",
        )),
    }
}

/// Bounds-check `(ptr, len)` against `data` and return the range.
pub(crate) fn guest_range(data_len: usize, ptr: u32, len: u32) -> Option<std::ops::Range<usize>> {
    let start = ptr as usize;
    let end = start.checked_add(len as usize)?;
    (end <= data_len).then_some(start..end)
}

/// Copy `(ptr, len)` out of guest memory, refusing lengths over `cap`.
fn read_guest(
    caller: &mut Caller<'_, HostState>,
    ptr: i32,
    len: i32,
    cap: usize,
    what: &str,
) -> Res<Vec<u8>> {
    let (ptr, len) = (ptr as u32, len as u32);
    if len as usize > cap {
        return Err(violation(format!(
            "{what}: {len} bytes exceeds the cap of {cap}"
        )));
    }
    let mem = memory(caller)?;
    let data = mem.data(&*caller);
    let r = guest_range(data.len(), ptr, len).ok_or_else(|| {
        violation(format!(
            "{what}: ({ptr}, {len}) is outside guest memory ({} bytes)",
            data.len()
        ))
    })?;
    Ok(data[r].to_vec())
}

/// Allocate with the guest's `openwop_alloc` and copy `bytes` in.
///
/// Async because it calls back into the guest: the outer call is a
/// `call_async`, and wasmtime refuses a synchronous call nested in it.
async fn write_guest(caller: &mut Caller<'_, HostState>, bytes: &[u8]) -> Res<(u32, u32)> {
    if bytes.is_empty() {
        return Ok((0, 0));
    }
    let alloc = match caller.get_export("openwop_alloc") {
        Some(Extern::Func(f)) => f
            .typed::<i32, i32>(&*caller)
            .map_err(|_| violation("`openwop_alloc` must be (i32) -> i32"))?,
        _ => return Err(violation("the module exports no `openwop_alloc`")),
    };
    let len = u32::try_from(bytes.len()).map_err(|_| violation("value too large"))?;
    let ptr = alloc.call_async(&mut *caller, len as i32).await? as u32;
    let mem = memory(caller)?;
    let data = mem.data_mut(&mut *caller);
    let r = guest_range(data.len(), ptr, len).ok_or_else(|| {
        violation(format!(
            "openwop_alloc({len}) returned {ptr}, outside guest memory"
        ))
    })?;
    data[r].copy_from_slice(bytes);
    Ok((ptr, len))
}

fn pack_pair(ptr: u32, len: u32) -> i64 {
    (((len as u64) << 32) | ptr as u64) as i64
}

fn io<'a>(caller: &'a mut Caller<'_, HostState>) -> &'a mut HostIo {
    caller.data_mut().io.get_or_insert_with(Default::default)
}

fn read_name(caller: &mut Caller<'_, HostState>, ptr: i32, len: i32) -> Res<String> {
    let b = read_guest(caller, ptr, len, MAX_NAME_BYTES, "name")?;
    String::from_utf8(b).map_err(|_| violation("name is not UTF-8"))
}

fn host_log(mut caller: Caller<'_, HostState>, level: i32, ptr: i32, len: i32) -> Res<()> {
    let (p, l) = (ptr as u32, len as u32);
    let cap = caller.data().max_log_message_bytes;
    let mem = memory(&mut caller)?;
    let data = mem.data(&caller);
    let r = guest_range(data.len(), p, l).ok_or_else(|| {
        violation(format!(
            "openwop_log: ({p}, {l}) is outside guest memory ({} bytes)",
            data.len()
        ))
    })?;
    let bytes = &data[r.start..r.end.min(r.start + cap)];
    let message = String::from_utf8_lossy(bytes).into_owned();
    let st = caller.data_mut();
    if st.logs.len() >= st.max_log_entries {
        st.logs_dropped += 1;
    } else {
        st.logs.push(LogEntry {
            level: LogLevel::from_i32(level),
            message,
        });
    }
    Ok(())
}

fn host_now_ms(mut caller: Caller<'_, HostState>) -> i64 {
    if let Some(t) = caller.data().io.as_ref().and_then(|io| io.now_ms) {
        return t;
    }
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    // Replay determinism within one invocation: the first answer sticks.
    io(&mut caller).now_ms = Some(t);
    t
}

fn host_random(mut caller: Caller<'_, HostState>, ptr: i32, len: i32) -> Res<()> {
    let (p, l) = (ptr as u32, len as u32);
    if l as usize > MAX_RANDOM_BYTES {
        return Err(violation(format!(
            "openwop_random: {l} bytes exceeds the cap of {MAX_RANDOM_BYTES}"
        )));
    }
    let mut buf = vec![0u8; l as usize];
    io(&mut caller).fill_random(&mut buf);
    let mem = memory(&mut caller)?;
    let data = mem.data_mut(&mut caller);
    let r = guest_range(data.len(), p, l)
        .ok_or_else(|| violation("openwop_random: buffer outside guest memory"))?;
    data[r].copy_from_slice(&buf);
    Ok(())
}

enum Store2 {
    Channels,
    Variables,
}

async fn host_read(
    caller: &mut Caller<'_, HostState>,
    which: Store2,
    ptr: i32,
    len: i32,
) -> Res<(u32, u32)> {
    let name = read_name(caller, ptr, len)?;
    let io = io(caller);
    let map = match which {
        Store2::Channels => &io.channels,
        Store2::Variables => &io.variables,
    };
    match map.get(&name) {
        Some(v) => {
            let bytes = serde_json::to_vec(v).map_err(violation)?;
            write_guest(caller, &bytes).await
        }
        None => Ok((0, 0)),
    }
}

fn host_write(
    mut caller: Caller<'_, HostState>,
    which: Store2,
    np: i32,
    nl: i32,
    vp: i32,
    vl: i32,
) -> Res<i32> {
    let name = read_name(&mut caller, np, nl)?;
    let cap = caller.data().max_output_bytes as usize;
    let raw = read_guest(&mut caller, vp, vl, cap, "value")?;
    let Ok(value) = serde_json::from_slice::<Value>(&raw) else {
        return Ok(10); // validation_error
    };
    let io = io(&mut caller);
    let list = match which {
        Store2::Channels => &mut io.channel_writes,
        Store2::Variables => &mut io.variable_writes,
    };
    if list.len() >= MAX_WRITES {
        return Ok(20); // capability_breach
    }
    match which {
        Store2::Channels => {
            io.channels.insert(name.clone(), value.clone());
        }
        Store2::Variables => {
            io.variables.insert(name.clone(), value.clone());
        }
    }
    let list = match which {
        Store2::Channels => &mut io.channel_writes,
        Store2::Variables => &mut io.variable_writes,
    };
    list.push((name, value));
    Ok(0)
}

async fn host_interrupt(caller: &mut Caller<'_, HostState>, ptr: i32, len: i32) -> Res<(u32, u32)> {
    let cap = caller.data().max_output_bytes as usize;
    let raw = read_guest(caller, ptr, len, cap, "interrupt payload")?;
    if let Some(v) = io(caller).resume_value.take() {
        let bytes = serde_json::to_vec(&v).map_err(violation)?;
        return write_guest(caller, &bytes).await;
    }
    let payload: Value = serde_json::from_slice(&raw)
        .map_err(|e| violation(format!("interrupt payload is not JSON: {e}")))?;
    Err(wasmtime::Error::new(Suspend(payload)))
}

/// Link a host function that returns a (ptr, len) pair, in the pair
/// encoding the module's import expects. These are async host functions
/// because they may call back into the guest (`openwop_alloc`).
macro_rules! wrap_pair {
    ($linker:expr, $name:expr, $enc:expr, |$c:ident, $a:ident, $b:ident| $body:expr) => {
        match $enc {
            PairEncoding::Packed => $linker.func_wrap_async(
                "openwop",
                $name,
                move |mut caller: Caller<'_, HostState>, ($a, $b): (i32, i32)| {
                    Box::new(async move {
                        let $c = &mut caller;
                        let (p, l) = $body.await?;
                        Res::<i64>::Ok(pack_pair(p, l))
                    })
                },
            ),
            PairEncoding::MultiValue => $linker.func_wrap_async(
                "openwop",
                $name,
                move |mut caller: Caller<'_, HostState>, ($a, $b): (i32, i32)| {
                    Box::new(async move {
                        let $c = &mut caller;
                        let (p, l) = $body.await?;
                        Res::<(i32, i32)>::Ok((p as i32, l as i32))
                    })
                },
            ),
        }
    };
}

/// Define every gated import in `linker` (all but `env.memory`, which is
/// per-Store). Returns whether the module imports `env.memory`.
pub(crate) fn define_imports(
    linker: &mut Linker<HostState>,
    imports: &[GatedImport],
) -> Result<bool, SandboxError> {
    let mut env_memory = false;
    for imp in imports {
        let name = imp.name.as_str();
        let r = match &imp.use_ {
            ImportUse::EnvMemory => {
                env_memory = true;
                continue;
            }
            ImportUse::Baseline(b, enc) => {
                let enc = enc.unwrap_or(PairEncoding::Packed);
                match b {
                    Baseline::Log => linker.func_wrap("openwop", name, host_log),
                    Baseline::NowMs => linker.func_wrap("openwop", name, host_now_ms),
                    Baseline::Random => linker.func_wrap("openwop", name, host_random),
                    Baseline::ChannelRead => wrap_pair!(linker, name, enc, |c, p, l| host_read(
                        c,
                        Store2::Channels,
                        p,
                        l
                    )),
                    Baseline::VariableGet => wrap_pair!(linker, name, enc, |c, p, l| host_read(
                        c,
                        Store2::Variables,
                        p,
                        l
                    )),
                    Baseline::Interrupt => {
                        wrap_pair!(linker, name, enc, |c, p, l| host_interrupt(c, p, l))
                    }
                    Baseline::ChannelWrite => linker.func_wrap(
                        "openwop",
                        name,
                        |c: Caller<'_, HostState>, np: i32, nl: i32, vp: i32, vl: i32| {
                            host_write(c, Store2::Channels, np, nl, vp, vl)
                        },
                    ),
                    Baseline::VariableSet => linker.func_wrap(
                        "openwop",
                        name,
                        |c: Caller<'_, HostState>, np: i32, nl: i32, vp: i32, vl: i32| {
                            host_write(c, Store2::Variables, np, nl, vp, vl)
                        },
                    ),
                }
            }
            ImportUse::Capability(cap) => {
                let ExternType::Func(fty) = &imp.ty else {
                    return Err(SandboxError::invalid(format!(
                        "capability import `openwop.{cap}` is not a function"
                    )));
                };
                let params: Vec<ValType> = fty.params().collect();
                let results: Vec<ValType> = fty.results().collect();
                if matches!(params.as_slice(), [ValType::I32])
                    && matches!(results.as_slice(), [ValType::I32])
                {
                    // The RFC 0035 probe stub: a granted capability echoes its argument.
                    linker.func_wrap("openwop", name, |x: i32| x)
                } else {
                    let cap = cap.clone();
                    linker.func_new("openwop", name, fty.clone(), move |_c, _args: &[Val], _res: &mut [Val]| {
                        Err(wasmtime::Error::new(SandboxError::abi(format!(
                            "capability `{cap}` is granted but this host has no implementation for its signature"
                        ))))
                    })
                }
            }
        };
        r.map_err(|e| {
            SandboxError::internal(format!("linking `{}.{}`: {e:#}", imp.module, imp.name))
        })?;
    }
    Ok(env_memory)
}

/// Does any import need [`HostIo`]?
pub(crate) fn needs_io(imports: &[GatedImport]) -> bool {
    imports
        .iter()
        .any(|i| matches!(i.use_, ImportUse::Baseline(b, _) if b != Baseline::Log))
}
