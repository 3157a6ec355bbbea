//! The RFC 0035 conformance seam (host-sample-test-seams.md §8):
//! `POST /v1/host/sample/test/sandbox-invoke` and `.../sandbox-load`.
//!
//! Mounted only with `wopbox serve --enable-test-seams`; without it the paths
//! are ordinary unknown routes (404). Every synthetic typeId is a real module
//! from `packs/conformance-sandbox/`, compiled into the binary and run through
//! the same sandbox as uploaded packs — escapes are refused at load, budgets
//! are enforced by the executor, and no answer is canned.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::routing::post;
use axum::{Extension, Json, Router};
use serde_json::{json, Value};
use wopbox_sandbox::{
    Grants, GuestResult, InvokeRequest, LoadOptions, LoadedPack, PackFormat, Sandbox, SandboxError,
};

use super::body::JsonBody;
use super::error::ApiError;
use super::AppState;
use crate::packs::PackService;

/// The seam's misbehaving-pack registry id (RFC 0035 names this scope).
pub const SEAM_PACK_ID: &str = "vendor.openwop.misbehaving-sandbox";

macro_rules! probe {
    ($file:literal) => {
        include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../packs/conformance-sandbox/",
            $file
        ))
        .as_slice()
    };
}

/// typeId → (module bytes, format, entry to call).
fn catalogue() -> Vec<(&'static str, &'static [u8], PackFormat, &'static str)> {
    let json_pack = probe!("conformance-sandbox.wasm");
    vec![
        (
            "misbehave.fs-escape-read",
            probe!("probes/fs-escape-read.wasm"),
            PackFormat::Probe,
            "invoke",
        ),
        (
            "misbehave.fs-escape-write",
            probe!("probes/fs-escape-write.wasm"),
            PackFormat::Probe,
            "invoke",
        ),
        (
            "misbehave.env-leak",
            probe!("probes/env-leak.wasm"),
            PackFormat::Probe,
            "invoke",
        ),
        (
            "misbehave.network-escape",
            probe!("probes/network-escape.wasm"),
            PackFormat::Probe,
            "invoke",
        ),
        (
            "misbehave.process-escape",
            probe!("probes/process-escape.wasm"),
            PackFormat::Probe,
            "invoke",
        ),
        (
            "misbehave.timeout",
            probe!("probes/timeout.wasm"),
            PackFormat::Probe,
            "invoke",
        ),
        (
            "misbehave.memory-bomb",
            probe!("probes/memory-bomb.wasm"),
            PackFormat::Probe,
            "invoke",
        ),
        (
            "misbehave.capability-gate-violation",
            probe!("probes/capability-gate-violation.wasm"),
            PackFormat::Probe,
            "invoke",
        ),
        (
            "well-behaved.host-fetch",
            probe!("probes/host-fetch.wasm"),
            PackFormat::Probe,
            "invoke",
        ),
        (
            "well-behaved.echo",
            json_pack,
            PackFormat::CoreModule,
            "well-behaved.echo",
        ),
        (
            "misbehave.cross-pack-mutate",
            json_pack,
            PackFormat::CoreModule,
            "misbehave.cross-pack-mutate",
        ),
    ]
}

struct SeamEntry {
    /// The loaded module, or the sandbox's refusal at load (escape imports
    /// never get past loading).
    pack: Result<Arc<LoadedPack>, Value>,
    entry: &'static str,
    format: PackFormat,
}

pub struct Seams {
    sandbox: Sandbox,
    packs: Arc<PackService>,
    entries: BTreeMap<&'static str, SeamEntry>,
}

fn seam_error(e: &SandboxError) -> Value {
    let mut details = e.details();
    if !details.is_object() {
        details = json!({});
    }
    details["message"] = json!(e.to_string());
    json!({"code": e.code(), "details": details})
}

impl Seams {
    /// Loads every seam module once (escape probes are refused here, before
    /// any of their code could run).
    pub async fn load(sandbox: Sandbox, packs: Arc<PackService>) -> Arc<Seams> {
        let mut entries = BTreeMap::new();
        for (type_id, bytes, format, entry) in catalogue() {
            // The JSON probes are a real RFC 0008 pack whose module names itself.
            let name = if format == PackFormat::CoreModule {
                "vendor.wopbox.conformance-sandbox"
            } else {
                SEAM_PACK_ID
            };
            let opts = LoadOptions::new(format).name(name);
            let pack = sandbox
                .load(bytes.to_vec(), opts)
                .await
                .map_err(|e| seam_error(&e));
            entries.insert(
                type_id,
                SeamEntry {
                    pack,
                    entry,
                    format,
                },
            );
        }
        Arc::new(Seams {
            sandbox,
            packs,
            entries,
        })
    }
}

pub fn router(seams: Arc<Seams>) -> Router<AppState> {
    Router::new()
        .route("/v1/host/sample/test/sandbox-invoke", post(invoke))
        .route("/v1/host/sample/test/sandbox-load", post(load))
        .layer(Extension(seams))
}

fn string_list(v: Option<&Value>, field: &str) -> Result<Vec<String>, ApiError> {
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| {
                x.as_str().map(str::to_string).ok_or_else(|| {
                    ApiError::validation(format!("`{field}` must be an array of strings"))
                })
            })
            .collect(),
        Some(_) => Err(ApiError::validation(format!(
            "`{field}` must be an array of strings"
        ))),
    }
}

async fn invoke(
    Extension(seams): Extension<Arc<Seams>>,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    let type_id = body
        .get("typeId")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::validation("`typeId` (string) is required"))?;
    let args = body.get("args").cloned().unwrap_or_else(|| json!({}));
    if !args.is_object() {
        return Err(ApiError::validation("`args` must be an object"));
    }
    // The invocation's own grant; absent means none (it overrides, never
    // unions with, the advertised list).
    let allowed = string_list(body.get("allowedHostCalls"), "allowedHostCalls")?;
    let Some(entry) = seams.entries.get(type_id) else {
        return Err(ApiError::new(
            axum::http::StatusCode::NOT_FOUND,
            "sandbox_pack_not_found",
            format!("no sandbox probe with typeId `{type_id}`"),
        )
        .details(json!({"typeId": type_id, "known": seams.entries.keys().collect::<Vec<_>>()})));
    };
    let pack = match &entry.pack {
        Ok(p) => p,
        Err(refusal) => return Ok(Json(json!({ "error": refusal }))),
    };
    let input = match entry.format {
        // The probe ABI takes one i32; pass `args.value` when given.
        PackFormat::Probe => args
            .get("value")
            .and_then(Value::as_i64)
            .map(Value::from)
            .unwrap_or(Value::Null),
        _ => args.clone(),
    };
    let req = InvokeRequest::new(entry.entry, input).grants(Grants::host_calls(allowed));
    match seams.sandbox.invoke(pack, req).await {
        Err(e) => Ok(Json(json!({ "error": seam_error(&e) }))),
        Ok(out) => Ok(Json(match out.result {
            GuestResult::Completed(v) => match entry.format {
                PackFormat::Probe => json!({"result": {"value": v}}),
                _ => json!({ "result": v }),
            },
            GuestResult::Failed {
                code,
                message,
                details,
            } => {
                let mut d = details.unwrap_or_else(|| json!({}));
                if d.is_object() {
                    d["message"] = json!(message);
                }
                json!({"error": {"code": code, "details": d}})
            }
            GuestResult::Suspended(p) => json!({"result": {"suspended": p}}),
        })),
    }
}

async fn load(
    Extension(seams): Extension<Arc<Seams>>,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    let pack_id = body
        .get("packId")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::validation("`packId` (string) is required"))?;
    let known = pack_id == SEAM_PACK_ID
        || seams.entries.contains_key(pack_id)
        || !seams
            .packs
            .list(crate::api::auth::DEFAULT_TENANT)
            .iter()
            .all(|p| p.record.name != pack_id);
    if !known {
        return Err(ApiError::new(
            axum::http::StatusCode::NOT_FOUND,
            "sandbox_pack_not_found",
            format!("no pack `{pack_id}` is loaded"),
        ));
    }
    Ok(Json(json!({"ok": true, "packId": pack_id})))
}
