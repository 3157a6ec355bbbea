//! RFC 0035 probe ABI (layer C): `invoke(i32) -> i32`, `bump`/`read`.
use crate::abi::Loaded;
use crate::engine::SandboxEngine;
use crate::error::SandboxError;
use crate::grants::Grants;
use crate::limits::{LoadLimits, Limits};
use crate::{InvokeOutcome, InvokeRequest, LoadOptions, LoadedPack};

/// A compiled probe module.
pub struct ProbePack {}

pub(crate) fn load(_e: &SandboxEngine, _ll: &LoadLimits, _b: &[u8], _o: &LoadOptions, _l: &Limits) -> Result<Loaded, SandboxError> {
    Err(SandboxError::internal("todo"))
}

pub(crate) fn invoke(_e: &SandboxEngine, _pack: &LoadedPack, _p: &ProbePack, _r: &InvokeRequest, _l: &Limits, _g: &Grants) -> Result<InvokeOutcome, SandboxError> {
    Err(SandboxError::internal("todo"))
}
