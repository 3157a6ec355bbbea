//! `vendor.wopbox.conformance-sandbox`: the RFC 0035 seam's JSON-returning
//! probes as a real RFC 0008 pack, so the seam runs them through the same
//! executor as any uploaded pack.
//!
//! * `well-behaved.echo`: `{input}` → `{echoed: input}`.
//! * `misbehave.cross-pack-mutate`: bumps a module-global counter and returns
//!   `{shared: counter}`. With a fresh instance per invocation the answer is
//!   always 1; any leak of state between invocations makes it grow.

use core::sync::atomic::{AtomicI64, Ordering};

use serde_json::{json, Value};

static NODES: [&str; 2] = ["well-behaved.echo", "misbehave.cross-pack-mutate"];
static PACK_NAME: &str = "vendor.wopbox.conformance-sandbox";
static SHARED: AtomicI64 = AtomicI64::new(0);

fn pack(ptr: *const u8, len: usize) -> i64 {
    ((len as i64) << 32) | (ptr as usize as i64 & 0xffff_ffff)
}

/// Hands a buffer to the host; the host frees it with `openwop_free`.
fn leak(bytes: Vec<u8>) -> i64 {
    let mut b = bytes.into_boxed_slice();
    let (ptr, len) = (b.as_mut_ptr(), b.len());
    core::mem::forget(b);
    pack(ptr, len)
}

#[no_mangle]
pub extern "C" fn openwop_abi_version() -> i32 {
    1
}

#[no_mangle]
pub extern "C" fn openwop_pack_name() -> i64 {
    pack(PACK_NAME.as_ptr(), PACK_NAME.len())
}

#[no_mangle]
pub extern "C" fn openwop_node_count() -> i32 {
    NODES.len() as i32
}

#[no_mangle]
pub extern "C" fn openwop_node_id_at(index: i32) -> i64 {
    match NODES.get(index as usize) {
        Some(id) => pack(id.as_ptr(), id.len()),
        None => 0,
    }
}

#[no_mangle]
pub extern "C" fn openwop_alloc(size: i32) -> i32 {
    let b = vec![0u8; size.max(0) as usize].into_boxed_slice();
    Box::into_raw(b) as *mut u8 as usize as i32
}

#[no_mangle]
pub unsafe extern "C" fn openwop_free(ptr: i32, size: i32) {
    if ptr != 0 && size > 0 {
        let slice = core::ptr::slice_from_raw_parts_mut(ptr as usize as *mut u8, size as usize);
        drop(Box::from_raw(slice));
    }
}

#[no_mangle]
pub unsafe extern "C" fn openwop_node_invoke(index: i32, ptr: i32, len: i32) -> i64 {
    let request = core::slice::from_raw_parts(ptr as usize as *const u8, len as usize);
    let response = match serde_json::from_slice::<Value>(request) {
        Err(e) => json!({"outcome": "failed", "error": {"code": "validation_error", "message": e.to_string()}}),
        Ok(req) => match index {
            0 => {
                let input = req.pointer("/inputs/input").cloned().unwrap_or(Value::Null);
                json!({"outcome": "completed", "output": {"echoed": input}})
            }
            1 => {
                let shared = SHARED.fetch_add(1, Ordering::Relaxed) + 1;
                json!({"outcome": "completed", "output": {"shared": shared}})
            }
            _ => json!({"outcome": "failed", "error": {"code": "wasm_pack_unknown_node_index", "message": "no such node"}}),
        },
    };
    leak(serde_json::to_vec(&response).unwrap_or_default())
}
