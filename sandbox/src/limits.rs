//! Per-invocation limits ([`Limits`]), load-time bounds ([`LoadLimits`]),
//! the resource limiter every Store gets, and the mapping of wasmtime
//! errors to [`SandboxError`].
//!
//! Every Store the sandbox creates (core or component) goes through
//! [`prepare_store`]: fuel, epoch deadline and the [`Limiter`] are set
//! before any guest code (including start functions) runs.
//!
//! Guest code is always driven through wasmtime's async entry points, and
//! the epoch deadline is one tick: at every tick the guest yields to the
//! executor, and once the wall clock is spent the next tick traps. So a
//! guest in a tight loop holds its thread for at most about one tick at a
//! time, which is what lets [`crate::Sandbox::invoke`] run core-module
//! invocations on the caller's async worker instead of a blocking thread.

use std::time::{Duration, Instant};

use wasmtime::{ResourceLimiter, Store, Trap, UpdateDeadline};

use crate::error::SandboxError;

/// Wasm page size.
pub const PAGE: u64 = 65536;

/// Caps on one invocation. `Limits::default()` gives sane defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Deterministic CPU budget (wasmtime fuel units, roughly one per wasm
    /// operator). `None` = unmetered (the wall clock still applies).
    pub fuel: Option<u64>,
    /// Wall-clock cap, enforced by epoch interruption; it covers
    /// instantiation and start functions too. Default 10 s.
    pub wall_clock: Duration,
    /// Linear memory cap in bytes (per instance: one memory only). Clamped
    /// to [`crate::PoolConfig::max_memory_bytes`]. Default 64 MiB.
    pub memory_bytes: u64,
    /// Cap on table elements. Default 10 000.
    pub table_elements: u64,
    /// Largest response the host reads out of the guest. Default 1 MiB.
    pub max_output_bytes: u64,
    /// At most this many log entries are kept (the rest are counted as
    /// dropped). Default 256.
    pub max_log_entries: usize,
    /// Each log message is truncated to this many bytes. Default 4 KiB.
    pub max_log_message_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            fuel: Some(2_000_000_000),
            wall_clock: Duration::from_secs(10),
            memory_bytes: 64 << 20,
            table_elements: 10_000,
            max_output_bytes: 1 << 20,
            max_log_entries: 256,
            max_log_message_bytes: 4096,
        }
    }
}

impl Limits {
    /// Builder-style: set the wall clock.
    pub fn with_wall_clock(mut self, d: Duration) -> Self {
        self.wall_clock = d;
        self
    }
    /// Builder-style: set the memory cap in bytes.
    pub fn with_memory_bytes(mut self, bytes: u64) -> Self {
        self.memory_bytes = bytes;
        self
    }
    /// Builder-style: set the fuel budget.
    pub fn with_fuel(mut self, fuel: Option<u64>) -> Self {
        self.fuel = fuel;
        self
    }
    /// Builder-style: set the output cap.
    pub fn with_max_output_bytes(mut self, bytes: u64) -> Self {
        self.max_output_bytes = bytes;
        self
    }
    /// Memory cap in wasm pages (rounded up, at least 1).
    pub fn memory_pages(&self) -> u64 {
        self.memory_bytes.div_ceil(PAGE).max(1)
    }
}

/// What a module may *declare*, checked by parsing before anything is
/// compiled, so loading a hostile module cannot exhaust the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadLimits {
    /// Largest module/component binary accepted. Default 32 MiB.
    pub max_module_bytes: usize,
    /// Memories (defined + imported) per core module. Default 1.
    pub max_memories: u32,
    /// Declared minimum memory, in bytes. Default 256 MiB (also clamped to
    /// the pool's per-memory cap).
    pub max_initial_memory_bytes: u64,
    /// Tables (defined + imported) per core module. Default 2.
    pub max_tables: u32,
    /// Declared minimum table elements. Default 10 000.
    pub max_initial_table_elements: u64,
    /// Functions (defined + imported) per core module. Default 100 000.
    pub max_functions: u32,
    /// Exports per module. Default 10 000.
    pub max_exports: u32,
    /// Imports per module. Default 1 000.
    pub max_imports: u32,
    /// Globals per module. Default 10 000.
    pub max_globals: u32,
    /// Data segments + element segments per module. Default 100 000.
    pub max_segments: u32,
    /// Largest single function body in bytes. Default 1 MiB.
    pub max_function_body_bytes: u32,
    /// Largest number of locals in one function. Default 50 000.
    pub max_locals: u32,
    /// RFC 0008 `openwop_node_count()` upper bound. Default 1 024.
    pub max_nodes: u32,
    /// Caps applied to the guest code that runs during load (start
    /// function and the RFC 0008 handshake). Default: 1 s, 1e8 fuel.
    pub handshake: Limits,
}

impl Default for LoadLimits {
    fn default() -> Self {
        LoadLimits {
            max_module_bytes: 32 << 20,
            max_memories: 1,
            max_initial_memory_bytes: 256 << 20,
            max_tables: 2,
            max_initial_table_elements: 10_000,
            max_functions: 100_000,
            max_exports: 10_000,
            max_imports: 1_000,
            max_globals: 10_000,
            max_segments: 100_000,
            max_function_body_bytes: 1 << 20,
            max_locals: 50_000,
            max_nodes: 1024,
            handshake: Limits {
                fuel: Some(100_000_000),
                wall_clock: Duration::from_secs(1),
                ..Limits::default()
            },
        }
    }
}

/// Resource limiter installed in every Store: caps memory and tables,
/// refuses (does not trap on) a grow over the cap so the guest sees -1,
/// and records what it refused and the peak size for reporting.
///
/// The memory cap is on the *sum* of all linear memories in the Store
/// (wasmtime's own `StoreLimits::memory_size` is per memory, so two
/// memories would get twice the cap).
#[derive(Debug, Clone)]
pub struct Limiter {
    memory_cap: u64,
    table_cap: u64,
    /// Bytes of linear memory currently allocated in the Store (all memories).
    pub total_memory: u64,
    /// The last growth granted, undone if the grow then fails.
    last_grant: u64,
    /// Largest total linear memory seen (bytes).
    pub peak_memory: u64,
    /// The largest refused memory request (bytes), if any was refused.
    pub memory_denied: Option<u64>,
    /// The largest refused table request (elements), if any was refused.
    pub table_denied: Option<u64>,
}

impl Limiter {
    /// A limiter for these limits.
    pub fn new(limits: &Limits) -> Self {
        Limiter {
            memory_cap: limits.memory_bytes,
            table_cap: limits.table_elements,
            total_memory: 0,
            last_grant: 0,
            peak_memory: 0,
            memory_denied: None,
            table_denied: None,
        }
    }

    /// The memory cap in bytes.
    pub fn memory_cap(&self) -> u64 {
        self.memory_cap
    }
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let delta = (desired as u64).saturating_sub(current as u64);
        let total = self.total_memory.saturating_add(delta);
        let over_max = matches!(maximum, Some(m) if desired > m);
        if total > self.memory_cap || over_max {
            self.memory_denied = Some(self.memory_denied.map_or(total, |d| d.max(total)));
            return Ok(false);
        }
        self.total_memory = total;
        self.last_grant = delta;
        self.peak_memory = self.peak_memory.max(total);
        Ok(true)
    }

    fn memory_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        // The OS refused (or the pool's per-slot cap did): the guest sees -1.
        self.total_memory = self.total_memory.saturating_sub(self.last_grant);
        let wanted = self.total_memory.saturating_add(self.last_grant);
        self.memory_denied = Some(self.memory_denied.map_or(wanted, |d| d.max(wanted)));
        Ok(())
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let desired = desired as u64;
        let over_max = matches!(maximum, Some(m) if desired > m as u64);
        if desired > self.table_cap || over_max {
            self.table_denied = Some(desired);
            return Ok(false);
        }
        Ok(true)
    }

    fn instances(&self) -> usize {
        // Core modules: 1. Components instantiate several core instances;
        // the pooling allocator's per-component caps bound those.
        64
    }

    fn tables(&self) -> usize {
        64
    }

    fn memories(&self) -> usize {
        16
    }
}

/// Implemented by every Store data type the sandbox uses, so the generic
/// helpers here can reach the limiter and the clock.
pub trait HasLimiter {
    /// The Store's limiter.
    fn limiter(&mut self) -> &mut Limiter;
}

/// Per-invocation accounting that goes with a Store: when it started and
/// what it was given.
#[derive(Debug, Clone)]
pub struct Budget {
    /// When the invocation (instantiation included) started.
    pub started: Instant,
    /// Fuel granted (what `set_fuel` got).
    pub fuel_granted: u64,
    /// The limits in force.
    pub limits: Limits,
}

impl Budget {
    /// Fuel consumed so far in `store`.
    pub fn fuel_consumed<T>(&self, store: &Store<T>) -> u64 {
        self.fuel_granted
            .saturating_sub(store.get_fuel().unwrap_or(0))
    }
}

/// Set up a fresh Store: limiter, fuel, and the epoch deadline.
///
/// The deadline fires at every epoch tick: until `limits.wall_clock` has
/// passed since this call the guest yields to the async executor and goes
/// on (`UpdateDeadline::Yield`), after it the guest traps with
/// `Trap::Interrupt` (classified as [`SandboxError::Timeout`]). Guest code
/// in such a Store must be called with the `*_async` entry points (a
/// synchronous call would trap at the first tick). Call this before
/// instantiating anything in `store`, so start functions are covered.
pub fn prepare_store<T: HasLimiter + 'static>(store: &mut Store<T>, limits: &Limits) -> Budget {
    store.limiter(|d| d.limiter() as &mut dyn ResourceLimiter);
    let fuel = limits.fuel.unwrap_or(u64::MAX);
    // consume_fuel is on for the engine; set_fuel cannot fail then.
    let _ = store.set_fuel(fuel);
    let started = Instant::now();
    let deadline = started.checked_add(limits.wall_clock);
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(move |_| {
        Ok(match deadline {
            Some(d) if Instant::now() >= d => UpdateDeadline::Interrupt,
            _ => UpdateDeadline::Yield(1),
        })
    });
    Budget {
        started,
        fuel_granted: fuel,
        limits: limits.clone(),
    }
}

/// Turn a wasmtime error from instantiation or a guest call into a
/// [`SandboxError`], using what the limiter saw.
///
/// * `Trap::Interrupt` → [`SandboxError::Timeout`]
/// * `Trap::OutOfFuel` → [`SandboxError::FuelExhausted`]
/// * `Trap::MemoryOutOfBounds`, or any trap/failure after a refused
///   memory grow (e.g. `unreachable` from an allocator abort, or a declared
///   minimum over the cap at instantiation) → [`SandboxError::MemoryExceeded`]
/// * other traps → [`SandboxError::Trap`] with the trap message
/// * a [`SandboxError`] raised by a host function passes through unchanged.
pub fn classify(err: wasmtime::Error, limiter: &Limiter, budget: &Budget) -> SandboxError {
    let err = match err.downcast::<SandboxError>() {
        Ok(e) => return e,
        Err(e) => e,
    };
    let trap = err.downcast_ref::<Trap>().copied();
    match trap {
        Some(Trap::Interrupt) => {
            return SandboxError::Timeout {
                limit_ms: budget.limits.wall_clock.as_millis() as u64,
                elapsed_ms: budget.started.elapsed().as_millis() as u64,
            }
        }
        Some(Trap::OutOfFuel) => {
            return SandboxError::FuelExhausted {
                limit: budget.fuel_granted,
            }
        }
        _ => {}
    }
    if trap == Some(Trap::MemoryOutOfBounds) || limiter.memory_denied.is_some() {
        let what = match trap {
            Some(t) => t.to_string(),
            None => format!("{err:#}"),
        };
        return SandboxError::MemoryExceeded {
            limit_bytes: limiter.memory_cap,
            requested_bytes: limiter.memory_denied,
            message: match limiter.memory_denied {
                Some(req) => format!(
                    "a grow to {req} bytes was refused (cap {}), then: {what}",
                    limiter.memory_cap
                ),
                None => format!("{what} (cap {} bytes)", limiter.memory_cap),
            },
        };
    }
    if let Some(req) = limiter.table_denied {
        if trap.is_some() {
            return SandboxError::MemoryExceeded {
                limit_bytes: limiter.memory_cap,
                requested_bytes: None,
                message: format!(
                    "a table grow to {req} elements was refused (cap {}), then: {err}",
                    limiter.table_cap
                ),
            };
        }
    }
    match trap {
        Some(t) => SandboxError::Trap {
            message: format!("{err:#}"),
            trap: Some(format!("{t:?}")),
        },
        None => SandboxError::Trap {
            message: format!("{err:#}"),
            trap: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_refuses_over_cap() {
        let mut l = Limiter::new(&Limits::default().with_memory_bytes(2 * PAGE));
        assert!(l.memory_growing(0, PAGE as usize, None).unwrap());
        assert!(l
            .memory_growing(PAGE as usize, 2 * PAGE as usize, None)
            .unwrap());
        assert!(!l
            .memory_growing(2 * PAGE as usize, 3 * PAGE as usize, None)
            .unwrap());
        assert_eq!(l.peak_memory, 2 * PAGE);
        assert_eq!(l.memory_denied, Some(3 * PAGE));
    }

    #[test]
    fn limiter_caps_the_sum_of_memories() {
        let mut l = Limiter::new(&Limits::default().with_memory_bytes(3 * PAGE));
        assert!(l.memory_growing(0, 2 * PAGE as usize, None).unwrap());
        // A second memory of 2 pages would make 4 > 3.
        assert!(!l.memory_growing(0, 2 * PAGE as usize, None).unwrap());
        assert!(l.memory_growing(0, PAGE as usize, None).unwrap());
        assert_eq!(l.peak_memory, 3 * PAGE);
    }
}
