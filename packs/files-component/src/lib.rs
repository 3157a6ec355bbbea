//! `vendor.wopbox.files`: an example component node pack for wopbox.
//!
//! It implements the `openwop:node/node-pack` world (`wit/node-pack.wit`) and
//! touches the host only through what the operator granted: WASI preview 2
//! preopened directories (`fs.read` / `fs.write`) and, for the `env` node, the
//! environment allowlist. Paths in inputs are relative to the preopen the host
//! mounts at `/data`; the guest never gets a handle to anything above it.

wit_bindgen::generate!({
    path: "../../wit",
    world: "node-pack",
});

use exports::openwop::node::node::{Guest, NodeContext, NodeError, NodeInfo};
use openwop::node::host::{log, LogLevel};
use serde_json::{json, Value};

const PACK: &str = "vendor.wopbox.files";
const NODE_READ: &str = "vendor.wopbox.files.read";
const NODE_WRITE: &str = "vendor.wopbox.files.write";
const NODE_LIST: &str = "vendor.wopbox.files.list";
const NODE_ENV: &str = "vendor.wopbox.files.env";
const NODE_PRINT: &str = "vendor.wopbox.files.print";

/// Where the host mounts the pack's data directory.
const ROOT: &str = "/data";

struct Pack;

fn err(code: &str, message: impl Into<String>, details: Option<Value>) -> NodeError {
    NodeError {
        code: code.to_string(),
        message: message.into(),
        details_json: details.map(|d| d.to_string()),
    }
}

fn io_err(path: &str, e: std::io::Error) -> NodeError {
    use std::io::ErrorKind as K;
    let code = match e.kind() {
        K::NotFound => "not_found",
        K::PermissionDenied | K::ReadOnlyFilesystem => "permission_denied",
        _ => "io_error",
    };
    err(code, format!("{path}: {e}"), Some(json!({ "path": path, "kind": format!("{:?}", e.kind()) })))
}

fn input_str<'a>(input: &'a Value, key: &str) -> Result<&'a str, NodeError> {
    input
        .get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| err("validation_error", format!("input `{key}` must be a string"), None))
}

fn full_path(rel: &str) -> String {
    // Deliberately no sanitising here: containment is the host's job (the
    // preopen), and the tests try `..` through this very path.
    format!("{ROOT}/{}", rel.trim_start_matches('/'))
}

impl Guest for Pack {
    fn pack_name() -> String {
        PACK.to_string()
    }

    fn nodes() -> Vec<NodeInfo> {
        [NODE_READ, NODE_WRITE, NODE_LIST, NODE_ENV, NODE_PRINT]
            .into_iter()
            .map(|t| NodeInfo { type_id: t.to_string(), version: env!("CARGO_PKG_VERSION").to_string() })
            .collect()
    }

    fn invoke(type_id: String, ctx: NodeContext, input_json: String) -> Result<String, NodeError> {
        let input: Value = serde_json::from_str(&input_json)
            .map_err(|e| err("validation_error", format!("input is not JSON: {e}"), None))?;
        log(LogLevel::Debug, &format!("{} invoke {type_id} (node {})", PACK, ctx.node_id));
        let out = match type_id.as_str() {
            NODE_READ => {
                let rel = input_str(&input, "path")?;
                let path = full_path(rel);
                let content = std::fs::read_to_string(&path).map_err(|e| io_err(rel, e))?;
                json!({ "path": rel, "content": content, "bytes": content.len() })
            }
            NODE_WRITE => {
                let rel = input_str(&input, "path")?;
                let content = input_str(&input, "content")?;
                std::fs::write(full_path(rel), content).map_err(|e| io_err(rel, e))?;
                json!({ "path": rel, "written": content.len() })
            }
            NODE_LIST => {
                let rel = input.get("path").and_then(Value::as_str).unwrap_or("");
                let mut names = Vec::new();
                for entry in std::fs::read_dir(full_path(rel)).map_err(|e| io_err(rel, e))? {
                    let entry = entry.map_err(|e| io_err(rel, e))?;
                    names.push(entry.file_name().to_string_lossy().into_owned());
                }
                names.sort();
                json!({ "path": rel, "entries": names })
            }
            NODE_ENV => {
                let vars: serde_json::Map<String, Value> =
                    std::env::vars().map(|(k, v)| (k, Value::String(v))).collect();
                json!({ "env": vars })
            }
            NODE_PRINT => {
                // Writes `repeat` copies of `text` to stdout and stderr: used to
                // show the host caps captured output.
                let text = input_str(&input, "text")?;
                let n = input.get("repeat").and_then(Value::as_u64).unwrap_or(1);
                for _ in 0..n {
                    println!("{text}");
                    eprintln!("{text}");
                }
                json!({ "printed": n })
            }
            other => {
                return Err(err(
                    "unsupported_node_type",
                    format!("{PACK} has no node type `{other}`"),
                    Some(json!({ "typeId": other })),
                ))
            }
        };
        Ok(out.to_string())
    }
}

export!(Pack);
