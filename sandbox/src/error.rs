//! [`SandboxError`]: every way loading or invoking a pack can fail, with the
//! OpenWOP wire code (`code()`) and a JSON `details()` object.
//!
//! Code choices (RFC 0035 §C and RFC 0008 §K; see the spec note's gap 4):
//!
//! | variant | `code()` | RFC 0008 `cap.breached` kind |
//! |---|---|---|
//! | [`SandboxError::EscapeAttempt`] | `sandbox_escape_attempt` (+ `details.escapeKind`) | — |
//! | [`SandboxError::CapabilityDenied`] | `sandbox_capability_denied` (+ `details.requestedCapability`) | — |
//! | [`SandboxError::MemoryExceeded`] | `sandbox_memory_exceeded` (+ `limitBytes`, `requestedBytes`) | `wasm-memory` |
//! | [`SandboxError::Timeout`] | `sandbox_timeout` (+ `elapsedMs`) | `wasm-execution-time` |
//! | [`SandboxError::FuelExhausted`] | `sandbox_timeout` with `details.reason: "fuel"` | `wasm-fuel` |
//! | [`SandboxError::Trap`] and the rest | `sandbox_invocation_error` (non-normative fallback) | — |
//!
//! Fuel exhaustion has no code of its own in RFC 0035, so it is reported as
//! the closest normative code, `sandbox_timeout` (a CPU budget ran out), with
//! `details.reason = "fuel"` so a caller can tell it from a wall-clock
//! timeout; RFC 0008 hosts emit `cap.breached{kind:"wasm-fuel"}` for it.
//!
//! Every `details()` object carries a human-readable `message` (the seam
//! document lists `details.message` as required).

use serde_json::{json, Map, Value};

/// The escape class of a refused import (RFC 0035 `details.escapeKind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EscapeKind {
    /// Filesystem access outside the sandbox (`fd_*`, `path_*`, `wasi:filesystem`).
    HostFs,
    /// Reading the host environment (`environ_*`, `wasi:cli/environment`).
    HostEnv,
    /// Raw network access (`sock_*`, `wasi:sockets`, un-granted `wasi:http`).
    Network,
    /// Process control (`proc_*`, `sched_*`, anything with fork/exec) and the
    /// default for any other unknown import.
    HostProcess,
}

impl EscapeKind {
    /// The wire spelling, e.g. `"host-fs-escape"`.
    pub fn as_str(self) -> &'static str {
        match self {
            EscapeKind::HostFs => "host-fs-escape",
            EscapeKind::HostEnv => "host-env-leak",
            EscapeKind::Network => "network-escape",
            EscapeKind::HostProcess => "host-process-escape",
        }
    }

    /// Classify a (non-granted) import by its name, as the RFC 0035 reference
    /// gate does: `fd_`/`path_` → fs, `environ_` → env, `sock_` → network,
    /// `proc_`/`sched_`/`fork`/`exec` → process, anything else → process.
    pub fn classify(import_name: &str) -> EscapeKind {
        let n = import_name;
        if n.starts_with("fd_") || n.starts_with("path_") {
            EscapeKind::HostFs
        } else if n.starts_with("environ_") {
            EscapeKind::HostEnv
        } else if n.starts_with("sock_") {
            EscapeKind::Network
        } else {
            EscapeKind::HostProcess
        }
    }
}

impl std::fmt::Display for EscapeKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// RFC 0008 `cap.breached` kinds a sandbox can report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CapKind {
    /// Linear memory cap (`wasm-memory`).
    WasmMemory,
    /// Wall-clock cap (`wasm-execution-time`).
    WasmExecutionTime,
    /// Fuel (deterministic CPU budget) cap (`wasm-fuel`).
    WasmFuel,
}

impl CapKind {
    /// The wire spelling, e.g. `"wasm-memory"`.
    pub fn as_str(self) -> &'static str {
        match self {
            CapKind::WasmMemory => "wasm-memory",
            CapKind::WasmExecutionTime => "wasm-execution-time",
            CapKind::WasmFuel => "wasm-fuel",
        }
    }
}

/// Data for an RFC 0008 `cap.breached` event: `{kind, limit, observed}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapBreach {
    /// Which cap.
    pub kind: CapKind,
    /// The cap (bytes, milliseconds or fuel units).
    pub limit: u64,
    /// What was observed (requested bytes, elapsed ms, fuel consumed).
    pub observed: u64,
}

impl CapBreach {
    /// `{"kind":…, "limit":…, "observed":…}` (add `nodeId` yourself).
    pub fn to_json(&self) -> Value {
        json!({"kind": self.kind.as_str(), "limit": self.limit, "observed": self.observed})
    }
}

/// Every failure of [`crate::Sandbox::load`] and [`crate::Sandbox::invoke`].
///
/// Guest misbehaviour is always an `Err` value, never a panic or a hang.
/// A guest that *reports* a failure on purpose (`{"outcome":"failed",…}`) is
/// not an error: it is [`crate::GuestResult::Failed`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SandboxError {
    /// The module imports something that would reach outside the sandbox
    /// (WASI fs/env/sockets/process, or any unknown import). Refused before
    /// instantiation.
    #[error("sandbox escape attempt ({kind}): module imports `{module}{}{name}`", if name.is_empty() { "" } else { "." })]
    EscapeAttempt {
        /// Escape class.
        kind: EscapeKind,
        /// Import module, e.g. `wasi_snapshot_preview1`; for components the
        /// whole interface, e.g. `wasi:filesystem/types@0.2.6`.
        module: String,
        /// Import name, e.g. `fd_read`; empty for component interfaces.
        name: String,
    },

    /// The module imports a host capability that was not granted.
    #[error("capability `{capability}` is not granted to this pack")]
    CapabilityDenied {
        /// Exactly as imported (`openwop.fetch` → `fetch`).
        capability: String,
    },

    /// Linear memory (or table) would exceed its cap, or the guest faulted
    /// on memory (out-of-bounds access, trap after a refused grow).
    #[error("memory limit exceeded: {message}")]
    MemoryExceeded {
        /// The cap in bytes.
        limit_bytes: u64,
        /// The size the guest asked for, when known.
        requested_bytes: Option<u64>,
        /// What happened.
        message: String,
    },

    /// Wall-clock limit reached (epoch interruption or the async backstop).
    #[error("wall-clock limit of {limit_ms} ms exceeded after {elapsed_ms} ms")]
    Timeout {
        /// The cap in ms.
        limit_ms: u64,
        /// Time from the start of the invocation until it was stopped.
        elapsed_ms: u64,
    },

    /// The fuel budget ran out (deterministic CPU cap).
    #[error("fuel budget of {limit} units exhausted")]
    FuelExhausted {
        /// Fuel granted to the invocation.
        limit: u64,
    },

    /// The guest trapped for another reason (unreachable, stack overflow,
    /// division by zero, …).
    #[error("guest trapped: {message}")]
    Trap {
        /// The trap message (wasmtime's description plus backtrace summary).
        message: String,
        /// The wasmtime trap code, when it was a wasm trap.
        trap: Option<String>,
    },

    /// The module reported an ABI version this host does not speak
    /// (RFC 0008 §H: the pack must not be registered).
    #[error(
        "unsupported_abi_version: module reports ABI version {found}, host supports {supported:?}"
    )]
    UnsupportedAbiVersion {
        /// What `openwop_abi_version()` (or the manifest) returned.
        found: i64,
        /// What this host accepts.
        supported: Vec<u32>,
    },

    /// The module broke the ABI contract: missing/mistyped export, bad
    /// pointer, invalid UTF-8 or JSON, oversized output, …
    #[error("ABI violation: {message}")]
    AbiViolation {
        /// What was wrong.
        message: String,
    },

    /// The bytes are not a valid module for this engine, or declare more
    /// than the load limits allow.
    #[error("invalid module: {message}")]
    InvalidModule {
        /// Why.
        message: String,
    },

    /// The pack has no node (or probe export) with this id.
    #[error("unknown node type `{type_id}` in pack `{pack}`")]
    UnknownNode {
        /// Pack name.
        pack: String,
        /// Requested typeId / entry.
        type_id: String,
    },

    /// The pack's format cannot be run by this sandbox build.
    #[error("unsupported pack format: {message}")]
    UnsupportedFormat {
        /// Why.
        message: String,
    },

    /// Too many invocations are already queued.
    #[error("sandbox overloaded: {queued} invocations already waiting")]
    Overloaded {
        /// Queue length when refused.
        queued: usize,
    },

    /// Host-side failure (I/O on the cache, a panicked worker, …).
    #[error("sandbox internal error: {message}")]
    Internal {
        /// Why.
        message: String,
    },
}

impl SandboxError {
    /// The OpenWOP error code for `node.failed.error.code` / the seam.
    pub fn code(&self) -> &'static str {
        match self {
            SandboxError::EscapeAttempt { .. } => "sandbox_escape_attempt",
            SandboxError::CapabilityDenied { .. } => "sandbox_capability_denied",
            SandboxError::MemoryExceeded { .. } => "sandbox_memory_exceeded",
            SandboxError::Timeout { .. } | SandboxError::FuelExhausted { .. } => "sandbox_timeout",
            SandboxError::UnsupportedAbiVersion { .. } => "unsupported_abi_version",
            SandboxError::UnknownNode { .. } => "wasm_pack_unknown_type",
            SandboxError::UnsupportedFormat { .. } => "unsupported_runtime",
            SandboxError::Overloaded { .. } => "sandbox_overloaded",
            SandboxError::Trap { .. }
            | SandboxError::AbiViolation { .. }
            | SandboxError::InvalidModule { .. }
            | SandboxError::Internal { .. } => "sandbox_invocation_error",
        }
    }

    /// The `details` object: always has `message`; plus `escapeKind`,
    /// `requestedCapability`, `limitBytes`/`requestedBytes`, `elapsedMs`/
    /// `limitMs`, `reason` depending on the variant.
    pub fn details(&self) -> Value {
        let mut d = Map::new();
        d.insert("message".into(), Value::String(self.to_string()));
        match self {
            SandboxError::EscapeAttempt { kind, module, name } => {
                d.insert("escapeKind".into(), kind.as_str().into());
                // Component imports are whole interfaces (`wasi:filesystem/types@0.2.6`): no `.name`.
                let import = if name.is_empty() {
                    module.clone()
                } else {
                    format!("{module}.{name}")
                };
                d.insert("import".into(), import.into());
            }
            SandboxError::CapabilityDenied { capability } => {
                d.insert("requestedCapability".into(), capability.clone().into());
            }
            SandboxError::MemoryExceeded {
                limit_bytes,
                requested_bytes,
                ..
            } => {
                d.insert("limitBytes".into(), (*limit_bytes).into());
                if let Some(r) = requested_bytes {
                    d.insert("requestedBytes".into(), (*r).into());
                }
            }
            SandboxError::Timeout {
                limit_ms,
                elapsed_ms,
            } => {
                d.insert("reason".into(), "wall-clock".into());
                d.insert("limitMs".into(), (*limit_ms).into());
                d.insert("elapsedMs".into(), (*elapsed_ms).into());
            }
            SandboxError::FuelExhausted { limit } => {
                d.insert("reason".into(), "fuel".into());
                d.insert("fuelLimit".into(), (*limit).into());
            }
            SandboxError::Trap { trap, .. } => {
                d.insert("reason".into(), "trap".into());
                if let Some(t) = trap {
                    d.insert("trap".into(), t.clone().into());
                }
            }
            SandboxError::UnsupportedAbiVersion { found, supported } => {
                d.insert("abiVersion".into(), (*found).into());
                d.insert("supportedAbiVersions".into(), json!(supported));
            }
            SandboxError::AbiViolation { .. } => {
                d.insert("reason".into(), "abi-violation".into());
            }
            SandboxError::InvalidModule { .. } => {
                d.insert("reason".into(), "invalid-module".into());
            }
            SandboxError::UnknownNode { pack, type_id } => {
                d.insert("pack".into(), pack.clone().into());
                d.insert("typeId".into(), type_id.clone().into());
            }
            SandboxError::Overloaded { queued } => {
                d.insert("queued".into(), (*queued).into());
            }
            SandboxError::UnsupportedFormat { .. } | SandboxError::Internal { .. } => {}
        }
        Value::Object(d)
    }

    /// The RFC 0008 `cap.breached` data for cap breaches (memory, wall
    /// clock, fuel); `None` for every other error.
    pub fn cap_breach(&self) -> Option<CapBreach> {
        match self {
            SandboxError::MemoryExceeded {
                limit_bytes,
                requested_bytes,
                ..
            } => Some(CapBreach {
                kind: CapKind::WasmMemory,
                limit: *limit_bytes,
                observed: requested_bytes.unwrap_or(*limit_bytes),
            }),
            SandboxError::Timeout {
                limit_ms,
                elapsed_ms,
            } => Some(CapBreach {
                kind: CapKind::WasmExecutionTime,
                limit: *limit_ms,
                observed: *elapsed_ms,
            }),
            SandboxError::FuelExhausted { limit } => Some(CapBreach {
                kind: CapKind::WasmFuel,
                limit: *limit,
                observed: *limit,
            }),
            _ => None,
        }
    }

    /// `{"code":…, "message":…, "details":{…}}`, the shape of
    /// `node.failed.error` and of the RFC 0035 seam's `error` member.
    pub fn to_json(&self) -> Value {
        json!({"code": self.code(), "message": self.to_string(), "details": self.details()})
    }

    pub(crate) fn internal(message: impl std::fmt::Display) -> Self {
        SandboxError::Internal {
            message: message.to_string(),
        }
    }

    pub(crate) fn invalid(message: impl std::fmt::Display) -> Self {
        SandboxError::InvalidModule {
            message: message.to_string(),
        }
    }

    pub(crate) fn abi(message: impl std::fmt::Display) -> Self {
        SandboxError::AbiViolation {
            message: message.to_string(),
        }
    }
}
