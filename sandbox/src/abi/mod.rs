//! The executors, one per [`PackFormat`], and the single dispatch point
//! (`load` / `invoke`, crate-private) that picks between them.
//!
//! Adding a format means: a variant in `PackKind`, one arm in `load`,
//! one arm in `invoke`. Nothing else in the crate matches on formats.

pub mod component;
pub(crate) mod host;
pub mod probe;
pub mod rfc0008;

use sha2::{Digest, Sha256};

use crate::engine::SandboxEngine;
use crate::error::SandboxError;
use crate::limits::{Limits, LoadLimits};
use crate::{InvokeOutcome, InvokeRequest, LoadOptions, LoadedPack, PackFormat};

/// What one format's loader hands back.
pub(crate) struct Loaded {
    pub name: String,
    pub nodes: Vec<String>,
    pub abi_version: Option<u32>,
    pub cache: crate::CacheStatus,
    pub kind: PackKind,
}

/// The compiled, ready-to-instantiate form of a pack, per format.
pub(crate) enum PackKind {
    Probe(probe::ProbePack),
    Core(rfc0008::CorePack),
    Component(component::ComponentPack),
}

/// Load dispatch: the one place that matches on [`PackFormat`] at load.
pub(crate) fn load(
    engine: &SandboxEngine,
    ll: &LoadLimits,
    bytes: &[u8],
    opts: &LoadOptions,
    limits: Limits,
) -> Result<std::sync::Arc<LoadedPack>, SandboxError> {
    let loaded = match opts.format {
        PackFormat::Probe => probe::load(engine, ll, bytes, opts, &limits)?,
        PackFormat::CoreModule => rfc0008::load(engine, ll, bytes, opts, &limits)?,
        PackFormat::Component => component::load(engine, ll, bytes, opts, &limits)?,
    };
    Ok(std::sync::Arc::new(LoadedPack {
        name: loaded.name,
        format: opts.format,
        nodes: loaded.nodes,
        abi_version: loaded.abi_version,
        sha256: hex::encode(Sha256::digest(bytes)),
        cache: loaded.cache,
        grants: opts.grants.clone(),
        limits,
        kind: loaded.kind,
    }))
}

/// Whether invocations of `pack` may run on the caller's async worker.
///
/// Core modules (probe and RFC 0008) have host functions that never block
/// and a Store that yields at every epoch tick (`limits::prepare_store`),
/// so a hostile loop holds the worker for about one tick at a time. Their
/// invocation is a few microseconds of work, and a round trip through the
/// blocking pool cost more than the guest itself. Components link WASI,
/// whose blocking interfaces (files, sleeps, wasi-http) are tokio futures
/// that may still do blocking work on the polling thread, so they stay on
/// the blocking pool.
pub(crate) fn runs_inline(pack: &LoadedPack) -> bool {
    !matches!(pack.kind, PackKind::Component(_))
}

/// Invoke dispatch: the one place that matches on the pack kind at invoke.
pub(crate) async fn invoke(
    engine: &SandboxEngine,
    pack: &LoadedPack,
    req: &InvokeRequest,
) -> Result<InvokeOutcome, SandboxError> {
    let limits = req.limits.as_ref().unwrap_or(&pack.limits);
    let grants = req.grants.as_ref().unwrap_or(&pack.grants);
    match &pack.kind {
        PackKind::Probe(p) => probe::invoke(engine, pack, p, req, limits, grants).await,
        PackKind::Core(c) => rfc0008::invoke(engine, pack, c, req, limits, grants).await,
        PackKind::Component(c) => component::invoke(engine, pack, c, req, limits, grants).await,
    }
}
