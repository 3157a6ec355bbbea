//! `wopbox pack test DIR --input JSON`: run one node of a local pack in the
//! real sandbox, under the limits and grants the server would give it.
//!
//! Nothing here has its own idea of a pack: the manifest goes through the
//! server's validator, the grants through the operator's policy (`--policy`,
//! the same TOML file `wopbox serve` reads, plus `--grant` flags layered on
//! the pack's entry), the limits through the `--sandbox-*` defaults of
//! `wopbox serve`, and the entry through the registry's own load path
//! ([`crate::packs::registry::load_entry`]). So a pack that passes here is
//! refused or accepted by a server for the same reasons.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;
use serde_json::{json, Value};
use wopbox_sandbox::{
    GuestResult, InvokeOutcome, InvokeRequest, Limits, LogEntry, NodeContext, Sandbox,
    SandboxConfig, SandboxError,
};

use crate::packs::boot::SandboxLimitArgs;
use crate::packs::error::PackError;
use crate::packs::manifest::{validate_manifest, PackManifest};
use crate::packs::policy::{DirMode, EffectiveGrants, Policy, Preopen};
use crate::packs::registry::{granted, limits_for, load_entry};

/// Flags of `wopbox pack test`.
#[derive(clap::Args, Debug, Clone)]
pub struct PackTestArgs {
    /// The pack directory (its `pack.json` and the `runtime.entry` it names).
    pub dir: PathBuf,
    /// The node's inputs, a JSON object (`@FILE` reads it from FILE).
    #[arg(long)]
    pub input: String,
    /// Node typeId to run; may be omitted when the pack has exactly one node.
    #[arg(long)]
    pub node: Option<String>,
    /// The node's configuration (`nodeContext.configurable`), a JSON object.
    #[arg(long)]
    pub config: Option<String>,
    /// The operator policy file (TOML) the server would run the pack under.
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// Grant one more thing on top of the policy, like an operator would:
    /// `host-call=NAME`, `runtime=PRIMITIVE`, `preopen=HOST:GUEST[:ro|rw]`,
    /// `env=KEY=VALUE`, `outbound=https://host`. Repeatable.
    #[arg(long = "grant", value_name = "GRANT")]
    pub grants: Vec<String>,
    #[command(flatten)]
    pub limits: SandboxLimitArgs,
    /// Run the node this many times, each in a fresh instance as the server
    /// does, and report the duration of every run (the first output is shown).
    #[arg(long, default_value_t = 1)]
    pub repeat: u32,
    /// Print one JSON object instead of the human-readable report.
    #[arg(long)]
    pub json: bool,
}

/// Why `pack test` could not produce a node result.
#[derive(Debug, thiserror::Error)]
pub enum PackTestError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what} is not valid JSON: {source}")]
    Json {
        what: String,
        source: serde_json::Error,
    },
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Pack(#[from] PackError),
    #[error("the sandbox could not start: {0}")]
    Sandbox(SandboxError),
}

impl PackTestError {
    /// The spec's error code, as the server's error envelope would carry it.
    pub fn code(&self) -> &'static str {
        match self {
            PackTestError::Read { .. } | PackTestError::Usage(_) => "validation_error",
            PackTestError::Json { .. } => "validation_error",
            PackTestError::Pack(e) => e.code(),
            PackTestError::Sandbox(e) => e.code(),
        }
    }

    fn details(&self) -> Option<Value> {
        match self {
            PackTestError::Pack(e) => e.details(),
            PackTestError::Sandbox(e) => Some(e.details()),
            _ => None,
        }
    }

    /// `{error, message, details?}`.
    pub fn envelope(&self) -> Value {
        let mut v = json!({"error": self.code(), "message": self.to_string()});
        if let Some(d) = self.details() {
            v["details"] = d;
        }
        v
    }
}

/// What one `pack test` run found out.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PackTestReport {
    pub pack: String,
    pub version: String,
    pub runtime: &'static str,
    pub node: String,
    /// `completed`, `failed` (the guest failed on purpose, or the sandbox
    /// stopped it) or `suspended`.
    pub outcome: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    /// On failure: the error envelope a run's `node.failed` would carry.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interrupt: Option<Value>,
    pub logs: Vec<LogEntry>,
    pub logs_dropped: u64,
    pub stdout: String,
    pub stderr: String,
    pub metrics: ReportMetrics,
    pub grants: EffectiveGrants,
    pub limits: Value,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReportMetrics {
    /// `None` when the sandbox stopped the node (a breach or a trap reports
    /// no metrics), as on the server.
    pub fuel_consumed: Option<u64>,
    pub peak_memory_bytes: Option<u64>,
    /// Fresh instance + call, in ms (the sandbox's own measure).
    pub duration_ms: Option<f64>,
    /// With `--repeat`: every run's duration, in ms.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub durations_ms: Vec<f64>,
    /// Validating, compiling and handshaking the pack, in ms.
    pub load_ms: f64,
    pub entry_bytes: u64,
}

impl PackTestReport {
    /// Exit status: 0 only when the node completed.
    pub fn succeeded(&self) -> bool {
        self.outcome == "completed"
    }
}

fn read(path: &Path) -> Result<Vec<u8>, PackTestError> {
    std::fs::read(path).map_err(|source| PackTestError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// `--input`/`--config`: inline JSON, or `@FILE`.
fn json_arg(what: &str, text: &str) -> Result<Value, PackTestError> {
    let bytes = match text.strip_prefix('@') {
        Some(file) => read(Path::new(file))?,
        None => text.as_bytes().to_vec(),
    };
    serde_json::from_slice(&bytes).map_err(|source| PackTestError::Json {
        what: what.to_string(),
        source,
    })
}

/// Layers `--grant` flags over the pack's own policy entry (or the
/// defaults, field by field) and re-validates the result with the server's
/// policy parser, so a flag cannot grant what a policy file could not.
fn policy_with_grants(base: Policy, pack: &str, flags: &[String]) -> Result<Policy, PackTestError> {
    let mut layer = base.packs.get(pack).cloned().unwrap_or_default();
    let d = base.defaults.clone();
    fn push<T: Clone>(field: &mut Option<Vec<T>>, default: &Option<Vec<T>>, v: T) {
        field
            .get_or_insert_with(|| default.clone().unwrap_or_default())
            .push(v);
    }
    for flag in flags {
        let (kind, value) = flag.split_once('=').ok_or_else(|| {
            PackTestError::Usage(format!("--grant `{flag}` must look like KIND=VALUE"))
        })?;
        match kind {
            "host-call" => push(&mut layer.host_calls, &d.host_calls, value.to_string()),
            "runtime" => push(&mut layer.runtime, &d.runtime, value.to_string()),
            "outbound" => push(&mut layer.outbound_hosts, &d.outbound_hosts, value.to_string()),
            "env" => {
                let (k, v) = value.split_once('=').ok_or_else(|| {
                    PackTestError::Usage(format!("--grant `{flag}`: expected env=KEY=VALUE"))
                })?;
                layer
                    .env
                    .get_or_insert_with(|| d.env.clone().unwrap_or_default())
                    .insert(k.to_string(), v.to_string());
            }
            "preopen" => {
                let parts: Vec<&str> = value.split(':').collect();
                let (host, guest, mode) = match parts.as_slice() {
                    [h, g] => (*h, *g, DirMode::Ro),
                    [h, g, "ro"] => (*h, *g, DirMode::Ro),
                    [h, g, "rw"] => (*h, *g, DirMode::Rw),
                    _ => {
                        return Err(PackTestError::Usage(format!(
                            "--grant `{flag}`: expected preopen=HOST:GUEST[:ro|rw]"
                        )))
                    }
                };
                let host = std::path::absolute(host).map_err(|source| PackTestError::Read {
                    path: host.into(),
                    source,
                })?;
                push(
                    &mut layer.preopens,
                    &d.preopens,
                    Preopen {
                        host,
                        guest: guest.to_string(),
                        mode,
                    },
                );
            }
            other => {
                return Err(PackTestError::Usage(format!(
                    "--grant `{flag}`: unknown kind `{other}` (host-call, runtime, preopen, env, outbound)"
                )))
            }
        }
    }
    let mut policy = base;
    policy.packs.insert(pack.to_string(), layer);
    let text = toml::to_string(&policy)
        .map_err(|e| PackTestError::Usage(format!("cannot express the grants: {e}")))?;
    Policy::parse(&text).map_err(|m| PackTestError::Usage(format!("grants: {m}")))
}

fn pick_node(manifest: &PackManifest, asked: Option<&str>) -> Result<String, PackTestError> {
    let ids: Vec<&str> = manifest.nodes.iter().map(|n| n.type_id.as_str()).collect();
    match asked {
        Some(id) if ids.contains(&id) => Ok(id.to_string()),
        Some(id) => Err(PackTestError::Usage(format!(
            "the pack has no node `{id}`; it has: {}",
            ids.join(", ")
        ))),
        None if ids.len() == 1 => Ok(ids[0].to_string()),
        None => Err(PackTestError::Usage(format!(
            "the pack has {} nodes; choose one with --node ({})",
            ids.len(),
            ids.join(", ")
        ))),
    }
}

fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Runs `args` and returns the report (a node failure is a report too;
/// only a pack that cannot be run at all is an error).
pub async fn run(args: &PackTestArgs) -> Result<PackTestReport, PackTestError> {
    if args.repeat == 0 {
        return Err(PackTestError::Usage("--repeat must be at least 1".into()));
    }
    let manifest_path = args.dir.join("pack.json");
    let raw: Value =
        serde_json::from_slice(&read(&manifest_path)?).map_err(|source| PackTestError::Json {
            what: manifest_path.display().to_string(),
            source,
        })?;
    let manifest = validate_manifest(&raw)?;
    let input = json_arg("--input", &args.input)?;
    if !input.is_object() {
        return Err(PackTestError::Usage(
            "--input must be a JSON object (the node's inputs)".into(),
        ));
    }
    let configurable = match &args.config {
        Some(c) => json_arg("--config", c)?,
        None => json!({}),
    };
    let node = pick_node(&manifest, args.node.as_deref())?;
    let base = match &args.policy {
        Some(p) => Policy::load(p).map_err(|e| PackTestError::Usage(e.to_string()))?,
        None => Policy::default(),
    };
    let policy = policy_with_grants(base, &manifest.name, &args.grants)?;
    let grants = granted(&policy, &manifest)?;
    let defaults = args.limits.limits();
    let limits = limits_for(&defaults, &grants);

    let entry = read(&args.dir.join(&manifest.entry))?;
    let entry_bytes = entry.len() as u64;
    let mut cfg = SandboxConfig::default();
    cfg.default_limits = defaults;
    let sandbox = Sandbox::new(cfg).map_err(PackTestError::Sandbox)?;
    let started = Instant::now();
    let loaded = load_entry(&sandbox, &manifest, entry, &grants, &limits).await?;
    let load_ms = ms(started.elapsed());

    let context = NodeContext {
        run_id: "pack-test".into(),
        node_id: "pack-test".into(),
        tenant_id: crate::api::auth::DEFAULT_TENANT.into(),
        attempt: 0,
        configurable,
        ..NodeContext::default()
    };
    let mut first: Option<Result<InvokeOutcome, SandboxError>> = None;
    let mut durations = Vec::new();
    for _ in 0..args.repeat {
        let req = InvokeRequest::new(node.clone(), input.clone()).context(context.clone());
        let out = sandbox.invoke(&loaded, req).await;
        if let Ok(o) = &out {
            durations.push(ms(o.metrics.duration));
        }
        let failed = out.is_err();
        if first.is_none() {
            first = Some(out);
        }
        if failed {
            break;
        }
    }
    let Some(first) = first else {
        return Err(PackTestError::Usage("no run happened".into()));
    };
    let mut report = PackTestReport {
        pack: manifest.name.clone(),
        version: manifest.version.clone(),
        runtime: manifest.runtime.as_str(),
        node,
        outcome: "completed",
        output: None,
        error: None,
        interrupt: None,
        logs: Vec::new(),
        logs_dropped: 0,
        stdout: String::new(),
        stderr: String::new(),
        metrics: ReportMetrics {
            fuel_consumed: None,
            peak_memory_bytes: None,
            duration_ms: None,
            durations_ms: if args.repeat > 1 {
                durations
            } else {
                Vec::new()
            },
            load_ms,
            entry_bytes,
        },
        grants,
        limits: limits_json(&limits),
    };
    match first {
        Err(e) => {
            report.outcome = "failed";
            report.error =
                Some(json!({"error": e.code(), "message": e.to_string(), "details": e.details()}));
        }
        Ok(out) => {
            report.metrics.fuel_consumed = Some(out.metrics.fuel_consumed);
            report.metrics.peak_memory_bytes = Some(out.metrics.peak_memory_bytes);
            report.metrics.duration_ms = Some(ms(out.metrics.duration));
            report.logs = out.logs;
            report.logs_dropped = out.logs_dropped;
            report.stdout = out.stdout;
            report.stderr = out.stderr;
            match out.result {
                GuestResult::Completed(v) => report.output = Some(v),
                GuestResult::Failed {
                    code,
                    message,
                    details,
                } => {
                    report.outcome = "failed";
                    let mut e = json!({"error": code, "message": message});
                    if let Some(d) = details {
                        e["details"] = d;
                    }
                    report.error = Some(e);
                }
                GuestResult::Suspended(p) => {
                    // The server does not resume pack interrupts yet, so a
                    // run would fail here; say so rather than pass.
                    report.outcome = "suspended";
                    report.interrupt = Some(p);
                }
            }
        }
    }
    Ok(report)
}

fn limits_json(l: &Limits) -> Value {
    json!({
        "memoryLimitBytes": l.memory_bytes,
        "wallClockLimitMs": l.wall_clock.as_millis() as u64,
        "fuel": l.fuel,
        "maxOutputBytes": l.max_output_bytes,
    })
}

/// The human-readable report.
pub fn render(r: &PackTestReport) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let pretty = |v: &Value| serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string());
    let _ = writeln!(s, "pack      {} {} ({})", r.pack, r.version, r.runtime);
    let _ = writeln!(s, "node      {}", r.node);
    let _ = writeln!(s, "outcome   {}", r.outcome);
    if let Some(o) = &r.output {
        let _ = writeln!(s, "output    {}", pretty(o).replace('\n', "\n          "));
    }
    if let Some(e) = &r.error {
        let _ = writeln!(s, "error     {}", pretty(e).replace('\n', "\n          "));
    }
    if let Some(i) = &r.interrupt {
        let _ = writeln!(s, "interrupt {}", pretty(i).replace('\n', "\n          "));
    }
    for l in &r.logs {
        let level = serde_json::to_value(l.level).unwrap_or_default();
        let _ = writeln!(
            s,
            "log       [{}] {}",
            level.as_str().unwrap_or("?"),
            l.message
        );
    }
    if r.logs_dropped > 0 {
        let _ = writeln!(
            s,
            "log       ({} more dropped over the cap)",
            r.logs_dropped
        );
    }
    for (name, text) in [("stdout", &r.stdout), ("stderr", &r.stderr)] {
        if !text.is_empty() {
            let _ = writeln!(
                s,
                "{name:<9} {}",
                text.trim_end().replace('\n', "\n          ")
            );
        }
    }
    let m = &r.metrics;
    match (m.fuel_consumed, m.peak_memory_bytes, m.duration_ms) {
        (Some(fuel), Some(mem), Some(d)) => {
            let _ = writeln!(s, "fuel      {fuel}");
            let _ = writeln!(s, "memory    {mem} bytes peak");
            let _ = writeln!(s, "duration  {d:.3} ms (fresh instance + call)");
        }
        _ => {
            let _ = writeln!(s, "metrics   none: the sandbox stopped the node");
        }
    }
    if !m.durations_ms.is_empty() {
        let mut d = m.durations_ms.clone();
        d.sort_by(f64::total_cmp);
        let _ = writeln!(
            s,
            "runs      {} runs: min {:.3} ms, median {:.3} ms, max {:.3} ms",
            d.len(),
            d[0],
            d[d.len() / 2],
            d[d.len() - 1]
        );
    }
    let _ = writeln!(
        s,
        "load      {:.1} ms (validate, compile, handshake; {} bytes)",
        m.load_ms, m.entry_bytes
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grant_flags_layer_over_the_pack_entry_and_the_defaults() {
        let base = Policy::parse(
            "[defaults]\nhost-calls = [\"fetch\"]\n[packs.\"vendor.a.b\"]\nenv = { A = \"1\" }\n",
        )
        .unwrap();
        let p = policy_with_grants(
            base,
            "vendor.a.b",
            &[
                "host-call=kv".into(),
                "env=B=2".into(),
                "preopen=/srv/data:/data:rw".into(),
                "outbound=https://api.example.com".into(),
            ],
        )
        .unwrap();
        let g = p.grants_for("vendor.a.b");
        assert_eq!(g.host_calls, vec!["fetch", "kv"]);
        assert_eq!(g.env.get("A").map(String::as_str), Some("1"));
        assert_eq!(g.env.get("B").map(String::as_str), Some("2"));
        assert_eq!(g.preopens[0].guest, "/data");
        assert_eq!(g.preopens[0].mode, DirMode::Rw);
        assert!(g.runtime.contains(&"fs.write".to_string()));
        assert!(g.runtime.contains(&"net.outbound".to_string()));
    }

    #[test]
    fn grant_flags_cannot_grant_what_a_policy_file_could_not() {
        for bad in [
            "runtime=subprocess",
            "runtime=teleport",
            "preopen=/a:relative",
            "preopen=/a:/b:rwx",
            "env=NOVALUE",
            "host-call",
            "sudo=yes",
        ] {
            assert!(
                policy_with_grants(Policy::default(), "vendor.a.b", &[bad.to_string()]).is_err(),
                "{bad} was accepted"
            );
        }
    }
}
