//! `openwop:node/node-pack` world glue for `wasm32-wasip2` through
//! wit-bindgen. The `Guest` impl is generated in the pack's crate by
//! [`crate::export_pack!`] and calls into here.

wit_bindgen::generate!({
    path: "../wit",
    world: "node-pack",
    pub_export_macro: true,
    export_macro_name: "__export_node_pack",
    default_bindings_module: "wopbox_pdk::component",
});

pub use exports::openwop::node::node::Guest;
pub use openwop::node::types::{NodeContext, NodeError as WitNodeError, NodeInfo};

use crate::{Context, NodeError, Pack};

pub fn log(level: crate::log::Level, message: &str) {
    use openwop::node::host::LogLevel;
    let level = match level {
        crate::log::Level::Trace => LogLevel::Trace,
        crate::log::Level::Debug => LogLevel::Debug,
        crate::log::Level::Info => LogLevel::Info,
        crate::log::Level::Warn => LogLevel::Warn,
        crate::log::Level::Error => LogLevel::Error,
    };
    openwop::node::host::log(level, message);
}

pub fn nodes(pack: &Pack) -> Vec<NodeInfo> {
    pack.type_ids()
        .map(|t| NodeInfo {
            type_id: t.to_string(),
            version: pack.version().to_string(),
        })
        .collect()
}

fn to_wit(e: NodeError) -> WitNodeError {
    WitNodeError {
        code: e.code,
        message: e.message,
        details_json: e.details.map(|d| d.to_string()),
    }
}

pub fn invoke(
    pack: &Pack,
    type_id: &str,
    ctx: NodeContext,
    input_json: &str,
) -> Result<String, WitNodeError> {
    install_panic_hook();
    let configurable = serde_json::from_str(&ctx.configurable_json)
        .map_err(|e| to_wit(NodeError::validation(format!("node configuration: {e}"))))?;
    let ctx = Context {
        run_id: ctx.run_id,
        node_id: ctx.node_id,
        tenant_id: ctx.tenant_id,
        attempt: ctx.attempt,
        configurable,
    };
    pack.invoke_json(type_id, &ctx, input_json).map_err(to_wit)
}

fn install_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            crate::log::error(&format!("panic: {info}"));
        }))
    });
}
