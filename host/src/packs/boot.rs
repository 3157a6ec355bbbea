//! `wopbox serve` flags for packs and the sandbox, and the boot sequence that
//! attaches the pack registry (and, when asked, the RFC 0035 test seam) to a
//! [`Host`] before it starts serving.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use wopbox_sandbox::{Limits, Sandbox, SandboxConfig};

use super::policy::Policy;
use super::registry::{PackService, PackSettings};
use super::remote::ExecutorChoice;
use super::tarball::ArchiveLimits;
use crate::api::packs::DEFAULT_MAX_PACK_BYTES;
use crate::Host;

/// Fixtures whose semantics need the WASM packs of `packs/` (advertised only
/// when their node types actually loaded, like every fixture).
pub const WASM_FIXTURES: [&str; 2] = [
    "conformance-wasm-pack-roundtrip",
    "conformance-wasm-pack-memory-cap-breach",
];

#[derive(clap::Args, Debug, Clone)]
pub struct PackArgs {
    /// Directory of operator-installed pack directories (each with `pack.json`
    /// and its entry module), loaded on every boot for all tenants.
    #[arg(long)]
    pub packs: Option<PathBuf>,
    /// Grants policy (TOML): host calls, preopened directories, environment,
    /// outbound hosts and limits per pack. Without it, packs get pure compute.
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// Mount the RFC 0035 conformance seam under /v1/host/sample/test/ (never in production).
    #[arg(long)]
    pub enable_test_seams: bool,
    /// Largest pack tarball accepted, in bytes (larger uploads get 413).
    #[arg(long, default_value_t = DEFAULT_MAX_PACK_BYTES)]
    pub max_pack_bytes: usize,
    #[command(flatten)]
    pub limits: SandboxLimitArgs,
    /// Sandboxed invocations running at once (default: number of CPUs).
    #[arg(long)]
    pub sandbox_concurrency: Option<usize>,
    /// Where pack nodes execute: `local` (this process's sandbox) or
    /// `remote:URL` (another wopbox's `POST /v1/x-wopbox/execute`; packs must
    /// be installed on both, see docs/embedding.md).
    #[arg(long, default_value = "local")]
    pub executor: String,
    /// Bearer key this host presents to the `--executor remote:URL` tier.
    #[arg(long, env = "WOPBOX_EXECUTOR_KEY", hide_env_values = true)]
    pub executor_key: Option<String>,
}

/// The per-invocation defaults of `wopbox serve`, also taken by `wopbox pack
/// test` (same flags, same defaults), so a local test meets the server's caps.
#[derive(clap::Args, Debug, Clone)]
pub struct SandboxLimitArgs {
    /// Default wall-clock cap per sandboxed node invocation, in ms (advertised as
    /// `sandbox.wallClockLimitMs`; the policy may set it per pack).
    #[arg(long, default_value_t = 1000)]
    pub sandbox_wall_clock_ms: u64,
    /// Default linear-memory cap per invocation, in bytes (`sandbox.memoryLimitBytes`).
    #[arg(long, default_value_t = 64 << 20)]
    pub sandbox_memory_bytes: u64,
    /// Default fuel (deterministic CPU budget) per invocation; 0 disables metering.
    #[arg(long, default_value_t = 2_000_000_000)]
    pub sandbox_fuel: u64,
}

impl SandboxLimitArgs {
    pub fn limits(&self) -> Limits {
        let mut l = Limits::default();
        l.wall_clock = Duration::from_millis(self.sandbox_wall_clock_ms.max(1));
        l.memory_bytes = self.sandbox_memory_bytes.max(1 << 20);
        l.fuel = (self.sandbox_fuel > 0).then_some(self.sandbox_fuel);
        l
    }
}

impl PackArgs {
    pub fn default_limits(&self) -> Limits {
        self.limits.limits()
    }
}

/// Builds the sandbox and the pack registry, reloads stored packs, installs
/// `--packs`, advertises `sandbox`/`nodePackRuntimes`, and mounts the routes.
pub async fn attach(host: &mut Host, args: &PackArgs) -> anyhow::Result<Arc<PackService>> {
    let policy = match &args.policy {
        Some(p) => Policy::load(p)?,
        None => Policy::default(),
    };
    let default_limits = args.default_limits();
    let mut cfg = SandboxConfig::default();
    cfg.default_limits = default_limits.clone();
    cfg.engine.cache_dir = Some(host.config.data_dir.join("wasm-cache"));
    if let Some(n) = args.sandbox_concurrency {
        cfg.max_concurrent = n.max(1);
    }
    let sandbox =
        Sandbox::new(cfg).map_err(|e| anyhow::anyhow!("cannot start the sandbox: {e}"))?;
    let service = PackService::new(
        sandbox.clone(),
        host.store.clone(),
        policy,
        host.registry.clone(),
        host.discovery.clone(),
        PackSettings {
            default_limits,
            archive: ArchiveLimits::default(),
            executor: ExecutorChoice::parse(&args.executor, args.executor_key.clone())?,
            sandbox_metrics: host.sandbox_metrics.clone(),
        },
    );
    service.advertise();
    let reloaded = service.reload_from_store().await?;
    if reloaded > 0 {
        tracing::info!(reloaded, "uploaded packs reloaded");
    }
    if let Some(dir) = &args.packs {
        service.install_dir(dir).await?;
    }
    if let Some(cluster) = &host.cluster {
        let sync: Arc<dyn crate::cluster::PackSync> = service.clone();
        let _ = cluster.packs.set(sync);
    }
    host.support_fixtures(WASM_FIXTURES);
    host.routers.push(crate::api::packs::router(
        service.clone(),
        args.max_pack_bytes,
    ));
    host.routers
        .push(crate::api::execute::router(service.clone()));
    if args.enable_test_seams {
        tracing::warn!(
            "RFC 0035 test seams are mounted under /v1/host/sample/test/ (--enable-test-seams)"
        );
        let seams = crate::api::seams::Seams::load(sandbox, service.clone()).await;
        host.routers.push(crate::api::seams::router(seams));
        host.routers.push(crate::api::run_seams::router());
        // The span recorder exists only when the binary installed it for the seams.
        if crate::telemetry::SpanRecorder::installed() {
            host.routers.push(crate::api::otel_seam::router());
            host.discovery.set_block(
                "observability",
                serde_json::json!({"testSeams": {"otelScrape": true}}),
                true,
            );
        }
    }
    Ok(service)
}
