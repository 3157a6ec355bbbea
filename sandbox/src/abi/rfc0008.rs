//! RFC 0008 ABI v1 core modules.
use crate::abi::Loaded;
use crate::engine::SandboxEngine;
use crate::error::SandboxError;
use crate::grants::Grants;
use crate::limits::{LoadLimits, Limits};
use crate::{InvokeOutcome, InvokeRequest, LoadOptions, LoadedPack};

/// A compiled RFC 0008 module.
pub struct CorePack {}

pub(crate) fn load(_e: &SandboxEngine, _ll: &LoadLimits, _b: &[u8], _o: &LoadOptions, _l: &Limits) -> Result<Loaded, SandboxError> {
    Err(SandboxError::internal("todo"))
}

pub(crate) fn invoke(_e: &SandboxEngine, _pack: &LoadedPack, _p: &CorePack, _r: &InvokeRequest, _l: &Limits, _g: &Grants) -> Result<InvokeOutcome, SandboxError> {
    Err(SandboxError::internal("todo"))
}
