//! [`Grants`]: what a pack may reach outside its sandbox. Deny by default:
//! `Grants::default()` is pure compute.

use std::path::PathBuf;

/// Access mode of a preopened directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DirAccess {
    /// Files can be read, nothing can be created, written or removed.
    #[default]
    ReadOnly,
    /// Read and write inside the directory (never above it: `..` cannot escape).
    ReadWrite,
}

/// A host directory exposed to a component pack through WASI preopens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreopenDir {
    /// Directory on the host.
    pub host_path: PathBuf,
    /// Path the guest sees, e.g. `/data`.
    pub guest_path: String,
    /// Read-only or read-write.
    pub access: DirAccess,
}

/// What a pack (or one invocation) is allowed to use beyond pure compute.
///
/// * `allowed_host_calls`: `openwop.<name>` capability imports (RFC 0035
///   `allowedHostCalls`). Both spellings are accepted: `"fetch"` and
///   `"host.fetch"` grant the import `openwop.fetch`. The RFC 0008 baseline
///   imports (`openwop_log`, `openwop_now_ms`, `openwop_random`, channel,
///   variable, interrupt) are always linked and need no grant.
/// * `preopened_dirs`, `env`, `outbound_hosts`: WASI preview 2 grants for
///   component packs (see `wasi.rs`). Core-module packs never get WASI: a
///   `wasi_snapshot_preview1.*` import is always an escape attempt.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants {
    /// Capability names (`fetch` or `host.fetch`).
    pub allowed_host_calls: Vec<String>,
    /// Directories a component pack may open.
    pub preopened_dirs: Vec<PreopenDir>,
    /// Environment variables (name, value) a component pack may read; the
    /// host decides the values, nothing is inherited.
    pub env: Vec<(String, String)>,
    /// Link `wasi:cli/environment` for a component pack even when `env` is
    /// empty (the guest then sees an empty environment). Rust's std makes
    /// every `wasm32-wasip2` component import that interface, so an
    /// operator granting `env.read` with no variables sets this. A non-empty
    /// `env` implies it. Without either, the import is refused as
    /// `host-env-leak`.
    pub env_read: bool,
    /// Outbound HTTP hosts a component pack may call (allowlist entries such
    /// as `api.example.com`, `https://api.example.com:443`, `*.example.com`).
    pub outbound_hosts: Vec<String>,
}

impl Grants {
    /// Pure compute: nothing granted.
    pub fn none() -> Self {
        Self::default()
    }

    /// Grants exactly these host calls (`fetch`/`host.fetch` spellings).
    pub fn host_calls<I, S>(calls: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Grants {
            allowed_host_calls: calls.into_iter().map(Into::into).collect(),
            ..Self::default()
        }
    }

    /// Is the capability imported as `openwop.<name>` granted?
    pub fn allows_host_call(&self, name: &str) -> bool {
        self.allowed_host_calls.iter().any(|g| {
            let g = g.as_str();
            g == name
                || g.strip_prefix("host.") == Some(name)
                || name.strip_prefix("host.") == Some(g)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_spellings() {
        assert!(Grants::host_calls(["fetch"]).allows_host_call("fetch"));
        assert!(Grants::host_calls(["host.fetch"]).allows_host_call("fetch"));
        assert!(!Grants::host_calls(["host.fetch"]).allows_host_call("privileged"));
        assert!(!Grants::none().allows_host_call("fetch"));
        assert!(!Grants::host_calls(["fetchx"]).allows_host_call("fetch"));
    }
}
