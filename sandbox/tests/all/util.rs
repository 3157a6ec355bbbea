//! Shared helpers: a sandbox per test, fixture and pack loading.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use wopbox_sandbox::*;

/// One shared sandbox for tests that need no special configuration.
pub fn sandbox() -> &'static Sandbox {
    static S: OnceLock<Sandbox> = OnceLock::new();
    S.get_or_init(|| Sandbox::new(test_config()).expect("sandbox"))
}

/// Small pool and quick load-time limits, so tests are fast and light.
pub fn test_config() -> SandboxConfig {
    let mut c = SandboxConfig::default();
    c.engine.pool.total_memories = 64;
    c.engine.pool.total_tables = 64;
    c.engine.pool.total_core_instances = 128;
    c.engine.pool.total_component_instances = 32;
    c.engine.pool.total_stacks = 16;
    c.max_concurrent = 4;
    c.load_limits.handshake.wall_clock = Duration::from_millis(500);
    c
}

/// RFC 0035 §6 BASE limits: 2 MiB, 1000 ms.
pub fn base_limits() -> Limits {
    Limits::default()
        .with_memory_bytes(2 << 20)
        .with_wall_clock(Duration::from_millis(1000))
}

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The protocol's public probe fixtures, which live in `shared/probes/` beside the repository
/// (they are read in place, never copied into the project).
pub fn shared_probes() -> PathBuf {
    repo().join("../shared/probes")
}

/// `rfc0035/<file>` → `shared/probes/rfc0035-sandbox/<file>`;
/// `rfc0008/<pack>.wat` → `shared/probes/rfc0008-packs/<pack>/module.wat`.
pub fn fixture_path(rel: &str) -> PathBuf {
    if let Some(f) = rel.strip_prefix("rfc0035/") {
        return shared_probes().join("rfc0035-sandbox").join(f);
    }
    if let Some(f) = rel.strip_prefix("rfc0008/") {
        return shared_probes()
            .join("rfc0008-packs")
            .join(f.trim_end_matches(".wat"))
            .join("module.wat");
    }
    panic!("unknown fixture {rel}")
}

pub fn fixture(rel: &str) -> Vec<u8> {
    let p = fixture_path(rel);
    let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    if rel.ends_with(".wat") {
        wat::parse_bytes(&bytes).expect("wat").into_owned()
    } else {
        bytes
    }
}

pub fn pack_file(rel: &str) -> Vec<u8> {
    let p = repo().join("packs").join(rel);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

pub fn wat(src: &str) -> Vec<u8> {
    wat::parse_str(src).expect("valid wat")
}

pub async fn load(bytes: Vec<u8>, format: PackFormat) -> Result<Arc<LoadedPack>, SandboxError> {
    sandbox().load(bytes, LoadOptions::new(format)).await
}

pub async fn load_probe(rel: &str) -> Result<Arc<LoadedPack>, SandboxError> {
    load(fixture(rel), PackFormat::Probe).await
}

pub async fn load_core(bytes: Vec<u8>) -> Arc<LoadedPack> {
    load(bytes, PackFormat::CoreModule).await.expect("load")
}

/// RFC 0008 core module with the standard exports around `body`, which is
/// spliced inside the module and must define `$invoke` with type
/// (param i32 i32 i32) (result i64). Heap starts at 4096; 1 page memory.
pub fn core_module(imports: &str, body: &str) -> Vec<u8> {
    wat(&core_src(imports, body))
}

/// The WAT text of [`core_module`].
pub fn core_src(imports: &str, body: &str) -> String {
    format!(
        r#"(module
  {imports}
  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 4096))
  (data (i32.const 16) "test.pack")
  (data (i32.const 32) "test.node")
  (func $pack (param $p i32) (param $l i32) (result i64)
    (i64.or (i64.shl (i64.extend_i32_u (local.get $l)) (i64.const 32)) (i64.extend_i32_u (local.get $p))))
  (func (export "openwop_abi_version") (result i32) (i32.const 1))
  (func (export "openwop_pack_name") (result i64) (call $pack (i32.const 16) (i32.const 9)))
  (func (export "openwop_node_count") (result i32) (i32.const 1))
  (func (export "openwop_node_id_at") (param i32) (result i64) (call $pack (i32.const 32) (i32.const 9)))
  (func $alloc (export "openwop_alloc") (param $size i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.add (local.get $p) (i32.and (i32.add (local.get $size) (i32.const 15)) (i32.const -16))))
    (local.get $p))
  (func (export "openwop_free") (param i32 i32))
  (func (export "openwop_node_invoke") (param i32 i32 i32) (result i64)
    (call $invoke (local.get 0) (local.get 1) (local.get 2)))
  {body}
)"#
    )
}

/// `(func $invoke ...)` that returns the constant JSON `json`, stored at 512.
pub fn const_response(json: &str) -> String {
    let escaped = json.replace('\\', "\\\\").replace('"', "\\\"");
    format!(
        r#"(data (i32.const 512) "{escaped}")
  (func $invoke (param i32 i32 i32) (result i64) (call $pack (i32.const 512) (i32.const {})))"#,
        json.len()
    )
}
