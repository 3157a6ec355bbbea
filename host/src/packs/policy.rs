//! The operator's grants policy: what each pack may touch.
//!
//! Declaring is not granting. A pack's manifest may *ask* for runtime
//! primitives (`runtime.requires`); only this policy, written by the operator
//! in a TOML file (`wopbox serve --policy FILE`), grants anything. Everything
//! not granted is denied, and a pack whose declared needs exceed its grants is
//! refused at install with `pack_runtime_requirement_unmet`.
//!
//! ```toml
//! [defaults]                      # every pack, unless overridden below
//! host-calls = []                 # RFC 0035 allowedHostCalls
//! memory-limit-bytes = 67108864
//! wall-clock-limit-ms = 10000
//!
//! [packs."vendor.example.files"]  # one pack, field by field over defaults
//! preopens = [{ host = "/srv/reports", guest = "/data", mode = "ro" }]
//! env = { REPORT_TITLE = "Weekly" }
//! outbound-hosts = ["https://api.example.com"]
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::manifest::RUNTIME_PRIMITIVES;

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read policy file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("policy file {path} is invalid: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// Directory access mode for a preopen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DirMode {
    Ro,
    Rw,
}

/// A host directory made visible to the guest at `guest`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Preopen {
    pub host: PathBuf,
    pub guest: String,
    pub mode: DirMode,
}

/// One layer of grants; `None` means "inherit from the layer below".
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct GrantLayer {
    pub host_calls: Option<Vec<String>>,
    pub runtime: Option<Vec<String>>,
    pub preopens: Option<Vec<Preopen>>,
    pub env: Option<BTreeMap<String, String>>,
    pub outbound_hosts: Option<Vec<String>>,
    pub memory_limit_bytes: Option<u64>,
    pub wall_clock_limit_ms: Option<u64>,
    pub fuel: Option<u64>,
}

/// The policy file as written.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    #[serde(default)]
    pub defaults: GrantLayer,
    #[serde(default)]
    pub packs: BTreeMap<String, GrantLayer>,
}

/// What one pack is actually granted, every field resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EffectiveGrants {
    pub host_calls: Vec<String>,
    /// Runtime primitives granted (explicit plus those implied by the
    /// filesystem/env/network grants).
    pub runtime: Vec<String>,
    pub preopens: Vec<Preopen>,
    pub env: BTreeMap<String, String>,
    pub outbound_hosts: Vec<String>,
    pub memory_limit_bytes: Option<u64>,
    pub wall_clock_limit_ms: Option<u64>,
    pub fuel: Option<u64>,
}

impl Policy {
    /// Reads and checks a policy file; a bad policy stops the server at boot
    /// rather than granting something by accident.
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            path: path.into(),
            source,
        })?;
        Policy::parse(&text).map_err(|message| PolicyError::Invalid {
            path: path.into(),
            message,
        })
    }

    pub fn parse(text: &str) -> Result<Policy, String> {
        let policy: Policy = toml::from_str(text).map_err(|e| e.to_string())?;
        for (name, layer) in std::iter::once(("defaults", &policy.defaults))
            .chain(policy.packs.iter().map(|(k, v)| (k.as_str(), v)))
        {
            for p in layer.runtime.iter().flatten() {
                if !RUNTIME_PRIMITIVES.contains(&p.as_str()) {
                    return Err(format!("[{name}] unknown runtime primitive `{p}`"));
                }
                if p == "subprocess" {
                    return Err(format!(
                        "[{name}] `subprocess` can never be granted to a WebAssembly pack"
                    ));
                }
            }
            for o in layer.preopens.iter().flatten() {
                if !o.host.is_absolute() {
                    return Err(format!(
                        "[{name}] preopen host path `{}` must be absolute",
                        o.host.display()
                    ));
                }
                if !o.guest.starts_with('/') {
                    return Err(format!(
                        "[{name}] preopen guest path `{}` must start with `/`",
                        o.guest
                    ));
                }
            }
        }
        Ok(policy)
    }

    /// The grants for `pack`: its own layer over the defaults, field by field.
    pub fn grants_for(&self, pack: &str) -> EffectiveGrants {
        let d = &self.defaults;
        let p = self.packs.get(pack);
        let pick = |f: fn(&GrantLayer) -> Option<&Vec<String>>| -> Vec<String> {
            p.and_then(f).or_else(|| f(d)).cloned().unwrap_or_default()
        };
        let host_calls = pick(|l| l.host_calls.as_ref());
        let outbound_hosts = pick(|l| l.outbound_hosts.as_ref());
        let preopens = p
            .and_then(|l| l.preopens.clone())
            .or_else(|| d.preopens.clone())
            .unwrap_or_default();
        let env = p
            .and_then(|l| l.env.clone())
            .or_else(|| d.env.clone())
            .unwrap_or_default();
        // WASI preview 2 always gives clocks and random numbers, so saying
        // they are granted is the honest answer.
        let mut runtime: Vec<String> = vec!["clock".into(), "crypto".into()];
        runtime.extend(pick(|l| l.runtime.as_ref()));
        if !preopens.is_empty() {
            runtime.push("fs.read".into());
        }
        if preopens.iter().any(|o| o.mode == DirMode::Rw) {
            runtime.push("fs.write".into());
        }
        if !env.is_empty() {
            runtime.push("env.read".into());
        }
        if !outbound_hosts.is_empty() {
            runtime.extend(["net.outbound".to_string(), "net.dns".to_string()]);
        }
        runtime.sort();
        runtime.dedup();
        let num = |f: fn(&GrantLayer) -> Option<u64>| p.and_then(f).or_else(|| f(d));
        EffectiveGrants {
            host_calls,
            runtime,
            preopens,
            env,
            outbound_hosts,
            memory_limit_bytes: num(|l| l.memory_limit_bytes),
            wall_clock_limit_ms: num(|l| l.wall_clock_limit_ms),
            fuel: num(|l| l.fuel),
        }
    }
}

impl EffectiveGrants {
    /// The declared primitives this grant set does not cover.
    pub fn unmet(&self, requires: &[String]) -> Vec<String> {
        requires
            .iter()
            .filter(|r| !self.runtime.contains(r))
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"
        [defaults]
        host-calls = ["fetch"]
        memory-limit-bytes = 1048576

        [packs."vendor.x.files"]
        preopens = [{ host = "/srv", guest = "/data", mode = "ro" }]
        host-calls = []
    "#;

    #[test]
    fn layers_resolve_field_by_field() {
        let p = Policy::parse(TEXT).unwrap();
        let files = p.grants_for("vendor.x.files");
        assert!(files.host_calls.is_empty());
        assert_eq!(files.memory_limit_bytes, Some(1048576));
        assert!(files.runtime.contains(&"fs.read".to_string()));
        assert!(!files.runtime.contains(&"fs.write".to_string()));
        let other = p.grants_for("vendor.x.other");
        assert_eq!(other.host_calls, vec!["fetch"]);
        assert!(other.preopens.is_empty());
        assert_eq!(
            other.unmet(&["fs.read".into(), "clock".into()]),
            vec!["fs.read"]
        );
    }

    #[test]
    fn refuses_dangerous_or_malformed_policies() {
        assert!(Policy::parse("[defaults]\nruntime = [\"subprocess\"]").is_err());
        assert!(Policy::parse("[defaults]\nruntime = [\"teleport\"]").is_err());
        assert!(Policy::parse("[defaults]\nhostcalls = []").is_err());
        assert!(Policy::parse(
            "[packs.\"a.b.c\"]\npreopens = [{ host = \"rel\", guest = \"/d\", mode = \"ro\" }]"
        )
        .is_err());
        assert!(Policy::parse(
            "[defaults]\npreopens = [{ host = \"/a\", guest = \"/d\", mode = \"rwx\" }]"
        )
        .is_err());
    }

    #[test]
    fn empty_policy_grants_nothing_but_clock_and_crypto() {
        let g = Policy::default().grants_for("vendor.a.b");
        assert!(
            g.host_calls.is_empty()
                && g.preopens.is_empty()
                && g.env.is_empty()
                && g.outbound_hosts.is_empty()
        );
        assert_eq!(g.runtime, vec!["clock", "crypto"]);
    }
}
