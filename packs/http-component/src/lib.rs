//! `vendor.wopbox.http`: an example component node pack doing outbound HTTP
//! through `wasi:http/outgoing-handler` (WASI 0.2). The host links
//! `wasi:http` only when the pack is granted outbound hosts, and its
//! `send_request` hook refuses every host not on the allowlist; the guest
//! then sees `error-code.HTTP-request-denied` and reports the typed error
//! `http_request_denied`.

wit_bindgen::generate!({
    path: "../../wit",
    world: "node-pack",
});

use exports::openwop::node::node::{Guest, NodeContext, NodeError, NodeInfo};
use openwop::node::host::{log, LogLevel};
use serde_json::{json, Value};
use wasip2::http::outgoing_handler;
use wasip2::http::types::{ErrorCode, Fields, Method, OutgoingRequest, Scheme};

const PACK: &str = "vendor.wopbox.http";
const NODE_GET: &str = "vendor.wopbox.http.get";
/// Response bodies larger than this are cut (and flagged).
const MAX_BODY: usize = 64 * 1024;

struct Pack;

fn err(code: &str, message: impl Into<String>, details: Option<Value>) -> NodeError {
    NodeError { code: code.into(), message: message.into(), details_json: details.map(|d| d.to_string()) }
}

fn http_err(e: ErrorCode) -> NodeError {
    match e {
        ErrorCode::HttpRequestDenied => err("http_request_denied", "the host denied this request", None),
        other => err("http_error", format!("{other:?}"), Some(json!({ "errorCode": format!("{other:?}") }))),
    }
}

/// Split `scheme://authority/path?query`.
fn split_url(url: &str) -> Result<(Scheme, &str, &str), NodeError> {
    let (scheme, rest) = if let Some(r) = url.strip_prefix("https://") {
        (Scheme::Https, r)
    } else if let Some(r) = url.strip_prefix("http://") {
        (Scheme::Http, r)
    } else {
        return Err(err("validation_error", "url must start with http:// or https://", None));
    };
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    Ok((scheme, authority, if path.starts_with('?') { path } else { path }))
}

fn get(url: &str) -> Result<Value, NodeError> {
    let (scheme, authority, path) = split_url(url)?;
    let req = OutgoingRequest::new(Fields::new());
    req.set_method(&Method::Get).map_err(|_| err("http_error", "bad method", None))?;
    req.set_scheme(Some(&scheme)).map_err(|_| err("validation_error", "bad scheme", None))?;
    req.set_authority(Some(authority)).map_err(|_| err("validation_error", "bad authority", None))?;
    req.set_path_with_query(Some(path)).map_err(|_| err("validation_error", "bad path", None))?;
    let pending = outgoing_handler::handle(req, None).map_err(http_err)?;
    pending.subscribe().block();
    let resp = pending
        .get()
        .ok_or_else(|| err("http_error", "response not ready", None))?
        .map_err(|_| err("http_error", "response already taken", None))?
        .map_err(http_err)?;
    let status = resp.status();
    let body = resp.consume().map_err(|_| err("http_error", "body already taken", None))?;
    let stream = body.stream().map_err(|_| err("http_error", "body stream already taken", None))?;
    let mut bytes = Vec::new();
    let mut truncated = false;
    loop {
        match stream.blocking_read(16 * 1024) {
            Ok(chunk) => {
                if bytes.len() + chunk.len() > MAX_BODY {
                    truncated = true;
                    break;
                }
                bytes.extend_from_slice(&chunk);
            }
            Err(wasip2::io::streams::StreamError::Closed) => break,
            Err(e) => return Err(err("http_error", format!("reading body: {e:?}"), None)),
        }
    }
    drop(stream);
    Ok(json!({
        "status": status,
        "body": String::from_utf8_lossy(&bytes),
        "truncated": truncated,
    }))
}

impl Guest for Pack {
    fn pack_name() -> String {
        PACK.to_string()
    }

    fn nodes() -> Vec<NodeInfo> {
        vec![NodeInfo { type_id: NODE_GET.to_string(), version: env!("CARGO_PKG_VERSION").to_string() }]
    }

    fn invoke(type_id: String, _ctx: NodeContext, input_json: String) -> Result<String, NodeError> {
        if type_id != NODE_GET {
            return Err(err("unsupported_node_type", format!("{PACK} has no node type `{type_id}`"), None));
        }
        let input: Value =
            serde_json::from_str(&input_json).map_err(|e| err("validation_error", format!("input is not JSON: {e}"), None))?;
        let url = input
            .get("url")
            .and_then(Value::as_str)
            .ok_or_else(|| err("validation_error", "input `url` must be a string", None))?;
        log(LogLevel::Info, &format!("GET {url}"));
        get(url).map(|v| v.to_string())
    }
}

export!(Pack);
