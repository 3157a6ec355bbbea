//! RFC 0008 ABI v1 glue for `wasm32-unknown-unknown`: the allocator
//! protocol, (ptr, len) packing, and the request/response envelopes. The
//! `openwop_*` exports themselves are generated in the pack's crate by
//! [`crate::export_pack!`] and call into here.
//!
//! Ownership (RFC 0008 §E): the host allocates the request with
//! `openwop_alloc` and frees it, and the response, with `openwop_free`;
//! values the host returns from `openwop_channel_read` & co. are allocated
//! through our `openwop_alloc` and are ours to free ([`take`]).

use std::alloc::{alloc as raw_alloc, dealloc, Layout};

use crate::Pack;

pub const ABI_VERSION: i32 = 1;

/// The baseline imports (RFC 0008 §C), (ptr, len) results packed in an i64.
pub(crate) mod abi {
    #[link(wasm_import_module = "openwop")]
    extern "C" {
        pub fn openwop_log(level: i32, ptr: i32, len: i32);
        pub fn openwop_now_ms() -> i64;
        pub fn openwop_random(ptr: i32, len: i32);
        pub fn openwop_channel_read(ptr: i32, len: i32) -> i64;
        pub fn openwop_channel_write(np: i32, nl: i32, vp: i32, vl: i32) -> i32;
        pub fn openwop_variable_get(ptr: i32, len: i32) -> i64;
        pub fn openwop_variable_set(np: i32, nl: i32, vp: i32, vl: i32) -> i32;
        pub fn openwop_interrupt(ptr: i32, len: i32) -> i64;
    }
}

fn pack_pair(ptr: usize, len: usize) -> i64 {
    (((len as u64) << 32) | ptr as u64) as i64
}

// Zero-length blocks are allocated as one byte, so every (ptr, len) pair we
// hand out is a real allocation that `free` can release with the same layout.
fn layout(len: usize) -> Option<Layout> {
    Layout::from_size_align(len.max(1), 1).ok()
}

pub fn alloc(len: i32) -> i32 {
    let Some(l) = layout(len.max(0) as usize) else {
        return 0;
    };
    // SAFETY: `l` has a non-zero size.
    unsafe { raw_alloc(l) as i32 }
}

/// # Safety
/// `(ptr, len)` must come from [`alloc`] (or a response) and not be freed yet.
pub unsafe fn free(ptr: i32, len: i32) {
    if ptr == 0 {
        return;
    }
    if let Some(l) = layout(len.max(0) as usize) {
        // SAFETY: per the contract, allocated by `alloc` with this layout.
        unsafe { dealloc(ptr as *mut u8, l) }
    }
}

/// Hand `bytes` to the host as a freshly allocated (ptr, len).
fn give(bytes: &[u8]) -> i64 {
    let ptr = alloc(bytes.len() as i32);
    if ptr == 0 {
        // Out of memory: an empty pair, which the host reports as an ABI error.
        return 0;
    }
    // SAFETY: `ptr` points to at least `bytes.len()` fresh bytes.
    unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), ptr as *mut u8, bytes.len()) };
    pack_pair(ptr as usize, bytes.len())
}

/// Copy out and free a (ptr, len) the host returned; `None` for (0, 0).
///
/// # Safety
/// `packed` must be a pair the host allocated through `openwop_alloc`.
pub unsafe fn take(packed: i64) -> Option<Vec<u8>> {
    let (ptr, len) = (packed as u64 as u32, ((packed as u64) >> 32) as u32);
    if ptr == 0 && len == 0 {
        return None;
    }
    // SAFETY: per the contract.
    let bytes = unsafe { std::slice::from_raw_parts(ptr as *const u8, len as usize) }.to_vec();
    unsafe { free(ptr as i32, len as i32) };
    Some(bytes)
}

// Static strings are returned in place: the host copies them out and never
// frees what `openwop_pack_name` / `openwop_node_id_at` return.
pub fn pack_name(pack: &Pack) -> i64 {
    let name = pack.name();
    pack_pair(name.as_ptr() as usize, name.len())
}

pub fn node_count(pack: &Pack) -> i32 {
    pack.type_ids().count() as i32
}

pub fn node_id_at(pack: &Pack, index: i32) -> i64 {
    match pack.type_ids().nth(index.max(0) as usize) {
        Some(id) if index >= 0 => pack_pair(id.as_ptr() as usize, id.len()),
        _ => 0,
    }
}

/// # Safety
/// `(ptr, len)` must be the request the host wrote into memory from `alloc`.
pub unsafe fn invoke(pack: &Pack, index: i32, ptr: i32, len: i32) -> i64 {
    install_panic_hook();
    // SAFETY: per the contract; the host frees the request afterwards.
    let request = unsafe { std::slice::from_raw_parts(ptr as *const u8, len.max(0) as usize) };
    let response = pack.handle_envelope(index.max(0) as usize, request);
    give(&response)
}

/// A panic aborts the instance (a trap the host reports as
/// `sandbox_invocation_error`); log its message first so the run shows why.
fn install_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            crate::log::error(&format!("panic: {info}"));
        }))
    });
}
