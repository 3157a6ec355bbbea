//! Errors of the pack registry, each with the spec's code and HTTP status.

use serde_json::{json, Value};

#[derive(Debug, thiserror::Error)]
pub enum PackError {
    #[error("invalid manifest at `{path}`: {message}")]
    InvalidManifest { path: String, message: String },
    #[error("{0}")]
    KindInvalid(String),
    #[error("{0}")]
    InvalidScope(String),
    #[error(
        "runtime `{0}` is not supported by this host (it runs `wasm` and `wasm-component` packs)"
    )]
    UnsupportedRuntime(String),
    #[error("pack archive is invalid: {0}")]
    InvalidArchive(String),
    #[error("pack is too large: {0}")]
    TooLarge(String),
    #[error("the uploaded bytes hash to {computed}, not the asserted {asserted}")]
    IntegrityFailure { asserted: String, computed: String },
    #[error("pack needs runtime primitives the operator does not grant: {}", unmet.join(", "))]
    RequirementUnmet { unmet: Vec<String> },
    #[error("the URL names `{url}` but pack.json says `{manifest}`")]
    ManifestMismatch { url: String, manifest: String },
    #[error("{name}@{version} is already published; versions are immutable")]
    VersionConflict { name: String, version: String },
    #[error("pack not found: {0}")]
    NotFound(String),
    #[error("typeId `{type_id}` is already provided by pack `{owner}`")]
    TypeIdTaken { type_id: String, owner: String },
    #[error("pack `{0}` was installed by the operator and cannot be removed over HTTP")]
    OperatorOwned(String),
    #[error("pack storage failed: {0}")]
    Storage(String),
    #[error("the sandbox refused the pack: {message}")]
    LoadFailure {
        code: String,
        message: String,
        details: Value,
    },
}

impl PackError {
    /// The spec's error code for the envelope's `error` field.
    pub fn code(&self) -> &'static str {
        match self {
            PackError::InvalidManifest { .. } => "invalid_manifest",
            PackError::KindInvalid(_) => "pack_kind_invalid",
            PackError::InvalidScope(_) => "invalid_pack_scope",
            PackError::UnsupportedRuntime(_) => "unsupported_runtime",
            PackError::InvalidArchive(_) => "invalid_pack_archive",
            PackError::TooLarge(_) => "payload_too_large",
            PackError::IntegrityFailure { .. } => "pack_integrity_failure",
            PackError::RequirementUnmet { .. } => "pack_runtime_requirement_unmet",
            PackError::ManifestMismatch { .. } => "manifest_mismatch",
            PackError::VersionConflict { .. } => "version_conflict",
            PackError::NotFound(_) => "not_found",
            PackError::TypeIdTaken { .. } => "type_id_conflict",
            PackError::LoadFailure { .. } => "pack_load_failure",
            PackError::OperatorOwned(_) => "forbidden",
            PackError::Storage(_) => "internal_error",
        }
    }

    pub fn status(&self) -> u16 {
        match self {
            PackError::TooLarge(_) => 413,
            PackError::VersionConflict { .. } | PackError::TypeIdTaken { .. } => 409,
            PackError::NotFound(_) => 404,
            PackError::OperatorOwned(_) => 403,
            PackError::Storage(_) => 500,
            _ => 400,
        }
    }

    pub fn details(&self) -> Option<Value> {
        match self {
            PackError::InvalidManifest { path, .. } => Some(json!({ "path": path })),
            PackError::IntegrityFailure { asserted, computed } => {
                Some(json!({ "asserted": asserted, "computed": computed }))
            }
            PackError::RequirementUnmet { unmet } => Some(json!({ "unmet": unmet })),
            PackError::TypeIdTaken { type_id, owner } => {
                Some(json!({ "typeId": type_id, "pack": owner }))
            }
            PackError::LoadFailure { code, details, .. } => {
                Some(json!({ "sandboxError": code, "sandboxDetails": details }))
            }
            _ => None,
        }
    }
}
