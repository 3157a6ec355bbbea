//! Component-model packs (`runtime.language: "wasm-component"`,
//! `wit/node-pack.wit`). Owned by the component engineer; this is the
//! placeholder the dispatch in `abi/mod.rs` calls.
//!
//! Contract with the rest of the crate:
//! * `load` gets the raw bytes (already size-checked), the load options
//!   (grants for WASI preopens/env/outbound hosts) and the pack's default
//!   limits; compile with `engine.component(bytes)` (cached), gate imports
//!   before instantiating, and return a [`Loaded`] with `PackKind::Component`.
//! * `invoke` must create a fresh `Store` per call and call
//!   `crate::limits::prepare_store` on it before instantiating (fuel, epoch
//!   deadline, limiter), then map wasmtime errors with
//!   `crate::limits::classify`.

use crate::abi::{Loaded, PackKind};
use crate::engine::SandboxEngine;
use crate::error::SandboxError;
use crate::grants::Grants;
use crate::limits::{LoadLimits, Limits};
use crate::{InvokeOutcome, InvokeRequest, LoadOptions, LoadedPack};

/// A compiled component pack.
pub struct ComponentPack {
    _private: (),
}

pub(crate) fn load(
    _engine: &SandboxEngine,
    _ll: &LoadLimits,
    _bytes: &[u8],
    _opts: &LoadOptions,
    _limits: &Limits,
) -> Result<Loaded, SandboxError> {
    let _ = PackKind::Component(ComponentPack { _private: () });
    Err(SandboxError::UnsupportedFormat { message: "component-model packs are not supported yet".into() })
}

pub(crate) fn invoke(
    _engine: &SandboxEngine,
    _pack: &LoadedPack,
    _c: &ComponentPack,
    _req: &InvokeRequest,
    _limits: &Limits,
    _grants: &Grants,
) -> Result<InvokeOutcome, SandboxError> {
    Err(SandboxError::UnsupportedFormat { message: "component-model packs are not supported yet".into() })
}
