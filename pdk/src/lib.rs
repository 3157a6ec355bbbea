//! # wopbox-pdk
//!
//! Write a wopbox node pack as plain Rust functions (or [`Node`] impls) over
//! serde types. The same source builds two ways:
//!
//! * `--target wasm32-unknown-unknown`: an RFC 0008 ABI v1 core module
//!   (`runtime.language: "wasm"`); the PDK generates the `openwop_*` exports,
//!   owns the allocator protocol and the JSON envelopes;
//! * `--target wasm32-wasip2`: a component implementing the
//!   `openwop:node/node-pack` world of `wit/node-pack.wit`
//!   (`runtime.language: "wasm-component"`), through wit-bindgen.
//!
//! On any other target (your machine) nothing is exported, and
//! [`Pack::invoke_json`] runs a node in-process, so unit tests need no wasm
//! toolchain.
//!
//! ```
//! use serde::{Deserialize, Serialize};
//! use wopbox_pdk::{Context, NodeError, Pack};
//!
//! #[derive(Deserialize)]
//! struct Input { name: String }
//! #[derive(Serialize)]
//! struct Output { greeting: String }
//!
//! fn hello(_ctx: &Context, input: Input) -> Result<Output, NodeError> {
//!     if input.name.is_empty() {
//!         return Err(NodeError::validation("name must not be empty"));
//!     }
//!     wopbox_pdk::log::info(&format!("greeting {}", input.name));
//!     Ok(Output { greeting: format!("Hello, {}!", input.name) })
//! }
//!
//! fn pack() -> Pack {
//!     Pack::new("vendor.example.hello", "0.1.0").func("vendor.example.hello.greet", hello)
//! }
//! wopbox_pdk::export_pack!(pack);
//!
//! let out = pack().invoke_json("vendor.example.hello.greet", &Context::default(), r#"{"name":"Ada"}"#);
//! assert_eq!(out.unwrap(), r#"{"greeting":"Hello, Ada!"}"#);
//! ```
//!
//! Errors are typed: a node returns `Result<O, E>` with `E: Into<NodeError>`,
//! and the host sees `{code, message, details}` (a run's `node.failed`).
//! Inputs that do not deserialize into the node's input type fail with
//! `validation_error` before the node runs. A panic is logged at `error`
//! level (so it shows in the run's logs) and then aborts the instance, which
//! the host reports as `sandbox_invocation_error`.

mod error;
mod pack;

pub mod host;
pub mod log;

#[doc(hidden)]
#[cfg(all(target_arch = "wasm32", not(target_os = "wasi")))]
pub mod core;

#[doc(hidden)]
#[cfg(all(target_arch = "wasm32", target_os = "wasi"))]
pub mod component;

pub use error::NodeError;
pub use pack::{Context, Node, Pack};

/// Re-exported so generated code and pack authors use the same versions.
pub use serde;
pub use serde_json;

/// Export the pack built by `$build` (a `fn() -> Pack`) from this crate: on
/// `wasm32-unknown-unknown` as the RFC 0008 `openwop_*` functions, on
/// `wasm32-wasip2` as the `openwop:node/node` interface. Use it once, in
/// the crate that is built as a `cdylib`.
#[macro_export]
macro_rules! export_pack {
    ($build:path) => {
        #[doc(hidden)]
        #[allow(dead_code)]
        fn __wopbox_pdk_pack() -> &'static $crate::Pack {
            static PACK: ::std::sync::OnceLock<$crate::Pack> = ::std::sync::OnceLock::new();
            PACK.get_or_init($build)
        }
        $crate::__export_target!(__wopbox_pdk_pack);
    };
}

#[doc(hidden)]
#[cfg(all(target_arch = "wasm32", not(target_os = "wasi")))]
#[macro_export]
macro_rules! __export_target {
    ($pack:ident) => {
        #[no_mangle]
        pub extern "C" fn openwop_abi_version() -> i32 {
            $crate::core::ABI_VERSION
        }
        #[no_mangle]
        pub extern "C" fn openwop_pack_name() -> i64 {
            $crate::core::pack_name($pack())
        }
        #[no_mangle]
        pub extern "C" fn openwop_node_count() -> i32 {
            $crate::core::node_count($pack())
        }
        #[no_mangle]
        pub extern "C" fn openwop_node_id_at(index: i32) -> i64 {
            $crate::core::node_id_at($pack(), index)
        }
        #[no_mangle]
        pub extern "C" fn openwop_alloc(len: i32) -> i32 {
            $crate::core::alloc(len)
        }
        #[no_mangle]
        pub unsafe extern "C" fn openwop_free(ptr: i32, len: i32) {
            // SAFETY: the host only frees (ptr, len) pairs this module
            // handed out through `openwop_alloc` or a response.
            unsafe { $crate::core::free(ptr, len) }
        }
        #[no_mangle]
        pub unsafe extern "C" fn openwop_node_invoke(index: i32, ptr: i32, len: i32) -> i64 {
            // SAFETY: (ptr, len) is the request the host wrote into memory
            // it got from `openwop_alloc`.
            unsafe { $crate::core::invoke($pack(), index, ptr, len) }
        }
    };
}

#[doc(hidden)]
#[cfg(all(target_arch = "wasm32", target_os = "wasi"))]
#[macro_export]
macro_rules! __export_target {
    ($pack:ident) => {
        #[doc(hidden)]
        struct __WopboxPdkComponent;
        impl $crate::component::Guest for __WopboxPdkComponent {
            fn pack_name() -> String {
                $pack().name().to_string()
            }
            fn nodes() -> Vec<$crate::component::NodeInfo> {
                $crate::component::nodes($pack())
            }
            fn invoke(
                type_id: String,
                ctx: $crate::component::NodeContext,
                input_json: String,
            ) -> Result<String, $crate::component::WitNodeError> {
                $crate::component::invoke($pack(), &type_id, ctx, &input_json)
            }
        }
        $crate::component::__export_node_pack!(__WopboxPdkComponent);
    };
}

#[doc(hidden)]
#[cfg(not(target_arch = "wasm32"))]
#[macro_export]
macro_rules! __export_target {
    ($pack:ident) => {};
}
