//! Configuration for `wopbox serve`: flags, environment, and the data directory.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Default request-body limit (advertised as `limits.maxRequestBodyBytes`).
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;

#[derive(clap::Args, Debug, Clone)]
pub struct ServeArgs {
    /// Address to listen on (`127.0.0.1:0` picks a free port).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Data directory (SQLite database, generated API key).
    #[arg(long, default_value = "./wopbox-data")]
    pub data: PathBuf,
    /// Database URL. Empty (default): embedded SQLite in the data directory. `postgres://…`:
    /// PostgreSQL, which several wopbox processes may share (docs/postgres.md).
    #[arg(
        long,
        env = "WOPBOX_DATABASE_URL",
        default_value = "",
        hide_env_values = true
    )]
    pub database: String,
    /// Postgres connection pool size per process.
    #[arg(long, default_value_t = 16)]
    pub database_max_connections: u32,
    /// Postgres: how long a run's execution lease lasts without renewal (milliseconds). A run
    /// of a process that died is taken over by another process after at most this long.
    #[arg(long, default_value_t = 10_000)]
    pub lease_ttl_ms: u64,
    /// Accepted bearer API key (repeatable). Also `WOPBOX_API_KEYS` (comma-separated).
    #[arg(
        long = "api-key",
        env = "WOPBOX_API_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub api_keys: Vec<String>,
    /// Operator config file (TOML): scoped, tenant-bound API keys in `[[keys]]` (see
    /// `wopbox keys mint`). Re-read while serving, so revocations apply without a restart.
    #[arg(long, env = "WOPBOX_CONFIG")]
    pub config: Option<PathBuf>,
    /// Directory of workflow definitions (`*.json`) to register at boot.
    #[arg(long)]
    pub workflows: Option<PathBuf>,
    /// Directory of conformance fixtures (`conformance-*.json`) to register and advertise.
    #[arg(long)]
    pub fixtures: Option<PathBuf>,
    /// Maximum request body size in bytes (larger bodies get 413).
    #[arg(long, default_value_t = DEFAULT_MAX_BODY_BYTES)]
    pub max_body_bytes: usize,
    /// Interval between SSE keep-alive comments, in milliseconds.
    #[arg(long, default_value_t = 15_000, hide = true)]
    pub sse_keepalive_ms: u64,
    /// Webhook delivery: loopback opt-in, timeouts, retries.
    #[command(flatten)]
    pub webhooks: crate::webhooks::config::WebhookArgs,
    /// Audit checkpoint cadence.
    #[command(flatten)]
    pub audit: crate::audit::config::AuditArgs,
    /// Packs, grants policy and sandbox limits.
    #[command(flatten)]
    pub packs: crate::packs::PackArgs,
    /// Interrupt token lifetime.
    #[command(flatten)]
    pub interrupts: crate::interrupts::config::InterruptArgs,
    /// How long finished runs and idempotency records are kept (docs/operations.md).
    #[command(flatten)]
    pub retention: crate::retention::RetentionArgs,
    /// Admission limits, graceful shutdown and metrics (docs/operations.md).
    #[command(flatten)]
    pub ops: crate::ops::OpsArgs,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// `None`: embedded SQLite in `data_dir`.
    pub postgres: Option<crate::store::postgres::PgSettings>,
    pub api_keys: Vec<String>,
    pub config_file: Option<PathBuf>,
    pub workflows_dir: Option<PathBuf>,
    pub fixtures_dir: Option<PathBuf>,
    pub max_body_bytes: usize,
    pub sse_keepalive_ms: u64,
    pub webhooks: crate::webhooks::config::WebhookArgs,
    pub audit: crate::audit::config::AuditArgs,
    pub packs: crate::packs::PackArgs,
    pub interrupts: crate::interrupts::config::InterruptArgs,
    pub retention: crate::retention::RetentionSettings,
    pub ops: crate::ops::OpsArgs,
}

pub const KEY_FILE: &str = "api-key";

impl Config {
    /// Resolve the configuration. With no key configured (no `--api-key`, and no `[[keys]]` in
    /// the config file), the first start generates one, stores it in `<data>/api-key` (mode
    /// 0600) and prints it once; later starts reuse it.
    pub fn from_args(args: ServeArgs) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&args.data)?;
        let mut keys: Vec<String> = args
            .api_keys
            .iter()
            .map(|k| k.trim().to_string())
            .filter(|k| !k.is_empty())
            .collect();
        let file_has_keys = match &args.config {
            Some(path) => !crate::keys::file::load(path)?.is_empty(),
            None => false,
        };
        if keys.is_empty() && !file_has_keys {
            keys.push(load_or_generate_key(&args.data)?);
        }
        let database = args.database.trim();
        let postgres = if database.is_empty() {
            None
        } else if crate::store::postgres::is_postgres_url(database) {
            Some(crate::store::postgres::PgSettings {
                url: database.to_string(),
                max_connections: args.database_max_connections,
                lease_ttl: std::time::Duration::from_millis(args.lease_ttl_ms.clamp(500, 600_000)),
            })
        } else {
            anyhow::bail!(
                "--database must be a postgres:// or postgresql:// URL (leave it empty for SQLite)"
            );
        };
        let retention =
            crate::retention::RetentionSettings::resolve(&args.retention, args.config.as_deref())?;
        Ok(Config {
            retention,
            listen: args.listen,
            data_dir: args.data,
            postgres,
            api_keys: keys,
            config_file: args.config,
            workflows_dir: args.workflows,
            fixtures_dir: args.fixtures,
            max_body_bytes: args.max_body_bytes.max(1024),
            sse_keepalive_ms: args.sse_keepalive_ms.clamp(50, 60_000),
            webhooks: args.webhooks,
            audit: args.audit,
            packs: args.packs,
            interrupts: args.interrupts,
            ops: args.ops,
        })
    }
}

fn load_or_generate_key(data: &Path) -> anyhow::Result<String> {
    let path = data.join(KEY_FILE);
    if let Ok(existing) = std::fs::read_to_string(&path) {
        let k = existing.trim().to_string();
        if !k.is_empty() {
            return Ok(k);
        }
    }
    let key = crate::keys::new_secret();
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(&path)?;
    writeln!(f, "{key}")?;
    f.sync_all()?;
    println!(
        "wopbox generated an API key (stored in {}): {key}",
        path.display()
    );
    Ok(key)
}
