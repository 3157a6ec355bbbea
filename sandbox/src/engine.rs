//! The shared wasmtime [`Engine`]: pooling allocator, fuel, epoch
//! interruption with one ticker thread, and the compile cache.
//!
//! One `SandboxEngine` per [`crate::Sandbox`]. Compiled code is cached in
//! memory (per content hash) and, when a cache directory is configured, on
//! disk as `<sha256(bytes)>-<kind>-<engine compatibility hash>.cwasm`. Each
//! artifact is sealed with an HMAC-SHA256 under a host key kept in the cache
//! directory (`host.key`, mode 0600), and only artifacts whose seal verifies
//! are ever passed to wasmtime's (unsafe) `deserialize`: a file someone
//! else dropped there, or a truncated one, is ignored and recompiled.

use std::collections::HashMap;
use std::hash::Hasher;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::{Config, Engine, InstanceAllocationStrategy, Module, PoolingAllocationConfig};

use crate::error::SandboxError;

/// Sizing of wasmtime's pooling allocator (all slots are reserved up front
/// as virtual memory; only touched pages cost RAM).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolConfig {
    /// Concurrent core instances (each component counts its inner ones).
    pub total_core_instances: u32,
    /// Concurrent component instances.
    pub total_component_instances: u32,
    /// Concurrent linear memories.
    pub total_memories: u32,
    /// Concurrent tables.
    pub total_tables: u32,
    /// Concurrent fiber stacks: every invocation runs on one (guest code is
    /// always called through wasmtime's async entry points).
    pub total_stacks: u32,
    /// Hard cap on any one linear memory, whatever the per-invocation
    /// limits say. Default 1 GiB.
    pub max_memory_bytes: u64,
    /// Hard cap on table elements.
    pub max_table_elements: u32,
    /// Max size of a core instance's runtime metadata (VMContext).
    pub max_core_instance_size: usize,
    /// Max size of a component instance's metadata (all core instances inside).
    pub max_component_instance_size: usize,
    /// Defined memories per core module.
    pub max_memories_per_module: u32,
    /// Defined tables per core module.
    pub max_tables_per_module: u32,
    /// Core instances inside one component.
    pub max_core_instances_per_component: u32,
    /// Memories inside one component (transitively).
    pub max_memories_per_component: u32,
    /// Tables inside one component (transitively).
    pub max_tables_per_component: u32,
    /// Bytes of each memory slot kept resident (zeroed with memset instead
    /// of madvise) when a slot is reused. Makes small instances cheaper.
    pub linear_memory_keep_resident: usize,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            total_core_instances: 512,
            total_component_instances: 128,
            total_memories: 256,
            total_tables: 256,
            total_stacks: 256,
            max_memory_bytes: 1 << 30,
            max_table_elements: 20_000,
            max_core_instance_size: 1 << 20,
            max_component_instance_size: 1 << 20,
            max_memories_per_module: 1,
            max_tables_per_module: 2,
            // componentize-py (CPython) components hold ~40 core instances,
            // componentize-js (StarlingMonkey) ones a few dozen too; Rust ones 2-10.
            max_core_instances_per_component: 64,
            max_memories_per_component: 8,
            max_tables_per_component: 16,
            linear_memory_keep_resident: 64 << 10,
        }
    }
}

/// Engine-level settings (part of [`crate::SandboxConfig`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineConfig {
    /// Pooling allocator sizing.
    pub pool: PoolConfig,
    /// Epoch ticker period: the wall-clock cap is enforced to within about
    /// one tick. Default 1 ms.
    pub epoch_tick: Duration,
    /// Max wasm stack per invocation (deep recursion traps with "call stack
    /// exhausted"). Default 512 KiB.
    pub max_wasm_stack: usize,
    /// Directory for compiled artifacts; `None` = memory-only cache.
    pub cache_dir: Option<PathBuf>,
    /// How many compiled artifacts to keep in memory. Default 256.
    pub memory_cache_entries: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            pool: PoolConfig::default(),
            epoch_tick: Duration::from_millis(1),
            max_wasm_stack: 512 << 10,
            cache_dir: None,
            memory_cache_entries: 256,
        }
    }
}

/// Where a compiled artifact came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    /// Compiled from the bytes now.
    Compiled,
    /// Deserialized from a sealed artifact in the cache directory.
    Disk,
    /// Already in memory.
    Memory,
}

#[derive(Clone)]
enum Artifact {
    Module(Module),
    Component(Component),
}

/// The wasmtime Engine plus its ticker and cache.
pub struct SandboxEngine {
    engine: Engine,
    config: EngineConfig,
    compat: String,
    host_key: Option<[u8; 32]>,
    memo: Mutex<HashMap<(String, &'static str), Artifact>>,
    stop: Arc<AtomicBool>,
}

impl std::fmt::Debug for SandboxEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SandboxEngine")
            .field("config", &self.config)
            .field("compat", &self.compat)
            .finish()
    }
}

impl Drop for SandboxEngine {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The wasmtime `Config` the sandbox uses (exposed so tests and tools can
/// see exactly what is enabled).
pub fn wasmtime_config(cfg: &EngineConfig) -> Config {
    let p = &cfg.pool;
    let mut pool = PoolingAllocationConfig::new();
    pool.total_core_instances(p.total_core_instances)
        .total_component_instances(p.total_component_instances)
        .total_memories(p.total_memories)
        .total_tables(p.total_tables)
        .total_stacks(p.total_stacks)
        .max_memory_size(p.max_memory_bytes as usize)
        .table_elements(p.max_table_elements as usize)
        .max_core_instance_size(p.max_core_instance_size)
        .max_component_instance_size(p.max_component_instance_size)
        .max_memories_per_module(p.max_memories_per_module)
        .max_tables_per_module(p.max_tables_per_module)
        .max_core_instances_per_component(p.max_core_instances_per_component)
        .max_memories_per_component(p.max_memories_per_component)
        .max_tables_per_component(p.max_tables_per_component)
        .linear_memory_keep_resident(p.linear_memory_keep_resident)
        .table_keep_resident(16 << 10);

    let mut c = Config::new();
    c.allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
        .consume_fuel(true)
        .epoch_interruption(true)
        .max_wasm_stack(cfg.max_wasm_stack)
        .wasm_component_model(true)
        .wasm_multi_value(true)
        .wasm_threads(false)
        .shared_memory(false)
        .wasm_memory64(false)
        .wasm_custom_page_sizes(false)
        .wasm_stack_switching(false)
        .memory_init_cow(true)
        .cranelift_opt_level(wasmtime::OptLevel::Speed);
    c
}

impl SandboxEngine {
    /// Build the engine and start the epoch ticker thread.
    pub fn new(config: EngineConfig) -> Result<Arc<Self>, SandboxError> {
        let engine = Engine::new(&wasmtime_config(&config))
            .map_err(|e| SandboxError::internal(format!("engine: {e:#}")))?;
        let mut h = ShaHasher(Sha256::new());
        std::hash::Hash::hash(&engine.precompile_compatibility_hash(), &mut h);
        let compat = hex::encode(&h.0.finalize()[..16]);
        let host_key = match &config.cache_dir {
            Some(dir) => Some(host_key(dir).map_err(|e| {
                SandboxError::internal(format!("cache dir {}: {e}", dir.display()))
            })?),
            None => None,
        };
        let stop = Arc::new(AtomicBool::new(false));
        spawn_ticker(engine.weak(), config.epoch_tick, stop.clone());
        Ok(Arc::new(SandboxEngine {
            engine,
            config,
            compat,
            host_key,
            memo: Mutex::new(HashMap::new()),
            stop,
        }))
    }

    /// The wasmtime engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Engine settings.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// The epoch ticker period.
    pub fn epoch_tick(&self) -> Duration {
        self.config.epoch_tick
    }

    /// Hex digest of the engine's precompile compatibility hash (part of
    /// every cache key).
    pub fn compatibility_hash(&self) -> &str {
        &self.compat
    }

    /// Compile (or fetch from cache) a core module.
    pub fn module(&self, bytes: &[u8]) -> Result<(Module, CacheStatus), SandboxError> {
        let (a, s) = self.cached(bytes, "module")?;
        match a {
            Artifact::Module(m) => Ok((m, s)),
            Artifact::Component(_) => Err(SandboxError::invalid(
                "expected a core module, got a component",
            )),
        }
    }

    /// Compile (or fetch from cache) a component.
    pub fn component(&self, bytes: &[u8]) -> Result<(Component, CacheStatus), SandboxError> {
        let (a, s) = self.cached(bytes, "component")?;
        match a {
            Artifact::Component(c) => Ok((c, s)),
            Artifact::Module(_) => Err(SandboxError::invalid(
                "expected a component, got a core module",
            )),
        }
    }

    fn cached(
        &self,
        bytes: &[u8],
        kind: &'static str,
    ) -> Result<(Artifact, CacheStatus), SandboxError> {
        let sha = hex::encode(Sha256::digest(bytes));
        let key = (sha.clone(), kind);
        if let Some(a) = self
            .memo
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return Ok((a.clone(), CacheStatus::Memory));
        }
        let path = self
            .config
            .cache_dir
            .as_ref()
            .map(|d| d.join(format!("{sha}-{kind}-{}.cwasm", self.compat)));
        let mut status = CacheStatus::Compiled;
        let mut artifact = None;
        if let (Some(path), Some(key)) = (&path, &self.host_key) {
            if let Some(payload) = read_sealed(path, key) {
                // SAFETY: `payload` was produced by `serialize` in this
                // process or an earlier run of this host (the seal proves it
                // was written with our host key), for an engine with the same
                // compatibility hash (part of the file name).
                let r = unsafe {
                    match kind {
                        "module" => {
                            Module::deserialize(&self.engine, &payload).map(Artifact::Module)
                        }
                        _ => {
                            Component::deserialize(&self.engine, &payload).map(Artifact::Component)
                        }
                    }
                };
                if let Ok(a) = r {
                    artifact = Some(a);
                    status = CacheStatus::Disk;
                }
            }
        }
        let artifact = match artifact {
            Some(a) => a,
            None => {
                let a = match kind {
                    "module" => Module::from_binary(&self.engine, bytes).map(Artifact::Module),
                    _ => Component::from_binary(&self.engine, bytes).map(Artifact::Component),
                }
                .map_err(|e| SandboxError::invalid(format!("{e:#}")))?;
                if let (Some(path), Some(key)) = (&path, &self.host_key) {
                    let ser = match &a {
                        Artifact::Module(m) => m.serialize(),
                        Artifact::Component(c) => c.serialize(),
                    };
                    if let Ok(ser) = ser {
                        if let Err(e) = write_sealed(path, key, &ser) {
                            tracing::warn!(path = %path.display(), error = %e, "could not write compile cache entry");
                        }
                    }
                }
                a
            }
        };
        let mut memo = self.memo.lock().unwrap_or_else(|p| p.into_inner());
        if memo.len() >= self.config.memory_cache_entries.max(1) {
            if let Some(k) = memo.keys().next().cloned() {
                memo.remove(&k);
            }
        }
        memo.insert(key, artifact.clone());
        Ok((artifact, status))
    }
}

/// Adapts `std::hash::Hash` output into SHA-256 so the compatibility hash is
/// stable across processes (unlike `DefaultHasher`).
struct ShaHasher(Sha256);

impl Hasher for ShaHasher {
    fn finish(&self) -> u64 {
        0
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

fn spawn_ticker(engine: wasmtime::EngineWeak, tick: Duration, stop: Arc<AtomicBool>) {
    let tick = tick.max(Duration::from_micros(100));
    let _ = std::thread::Builder::new()
        .name("wopbox-epoch".into())
        .spawn(move || {
            // Tick on a fixed schedule (start + n * tick) rather than sleeping a
            // fixed amount, so the epoch tracks real time even when sleeps
            // overshoot; late ticks are caught up at once.
            let start = Instant::now();
            let mut n: u32 = 1;
            loop {
                let target = start + tick * n;
                let now = Instant::now();
                if target > now {
                    std::thread::sleep(target - now);
                }
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                match engine.upgrade() {
                    Some(e) => e.increment_epoch(),
                    None => return,
                }
                n = n.wrapping_add(1);
                if n == 0 {
                    return spawn_ticker(engine, tick, stop);
                }
            }
        });
}

const SEAL_MAGIC: &[u8; 8] = b"WOPBXC01";

fn hmac_sha256(key: &[u8; 32], data: &[u8]) -> [u8; 32] {
    let mut k = [0u8; 64];
    k[..32].copy_from_slice(key);
    let mut ipad = [0x36u8; 64];
    let mut opad = [0x5cu8; 64];
    for i in 0..64 {
        ipad[i] ^= k[i];
        opad[i] ^= k[i];
    }
    let inner = Sha256::new()
        .chain_update(ipad)
        .chain_update(data)
        .finalize();
    Sha256::new()
        .chain_update(opad)
        .chain_update(inner)
        .finalize()
        .into()
}

fn read_sealed(path: &Path, key: &[u8; 32]) -> Option<Vec<u8>> {
    let data = std::fs::read(path).ok()?;
    if data.len() < 40 || &data[..8] != SEAL_MAGIC {
        return None;
    }
    let (mac, payload) = data[8..].split_at(32);
    let want = hmac_sha256(key, payload);
    // Constant-time compare.
    let diff = mac
        .iter()
        .zip(want.iter())
        .fold(0u8, |a, (x, y)| a | (x ^ y));
    if diff != 0 {
        tracing::warn!(path = %path.display(), "ignoring compile cache entry with a bad seal");
        return None;
    }
    Some(payload.to_vec())
}

fn write_sealed(path: &Path, key: &[u8; 32], payload: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".tmp-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let mut out = Vec::with_capacity(payload.len() + 40);
    out.extend_from_slice(SEAL_MAGIC);
    out.extend_from_slice(&hmac_sha256(key, payload));
    out.extend_from_slice(payload);
    std::fs::write(&tmp, &out)?;
    std::fs::rename(&tmp, path)
}

fn host_key(dir: &Path) -> std::io::Result<[u8; 32]> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join("host.key");
    if let Ok(k) = std::fs::read(&path) {
        if k.len() == 32 {
            let mut key = [0u8; 32];
            key.copy_from_slice(&k);
            return Ok(key);
        }
    }
    let mut key = [0u8; 32];
    {
        use std::io::Read;
        std::fs::File::open("/dev/urandom")?.read_exact(&mut key)?;
    }
    let tmp = dir.join(format!(".host.key.{}", std::process::id()));
    {
        use std::io::Write;
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(&tmp)?;
        f.write_all(&key)?;
        f.sync_all()?;
    }
    // Another process may have raced us; whoever renamed last wins, and we
    // re-read so every process uses the same key.
    std::fs::rename(&tmp, &path)?;
    let k = std::fs::read(&path)?;
    if k.len() == 32 {
        key.copy_from_slice(&k);
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_known_answer() {
        // RFC 4231 test case 2 uses a short key; check the construction with
        // a 32-byte key against a value computed independently (python hmac).
        let key = [0x0bu8; 32];
        let mac = hmac_sha256(&key, b"Hi There");
        assert_eq!(
            hex::encode(mac),
            "198a607eb44bfbc69903a0f1cf2bbdc5ba0aa3f3d9ae3c1c7a3b1696a0b68cf7"
        );
    }
}
