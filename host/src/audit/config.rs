//! `wopbox serve` flags for the audit log.

/// Checkpoint cadence. The profile recommends every 1000 entries or 5 minutes.
#[derive(clap::Args, Debug, Clone)]
pub struct AuditArgs {
    /// Mint a signed audit checkpoint after this many new entries.
    #[arg(long = "audit-checkpoint-entries", env = "WOPBOX_AUDIT_CHECKPOINT_ENTRIES", default_value_t = 1000,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub checkpoint_entries: u32,
    /// Mint a checkpoint at least this often (seconds) while new entries exist.
    #[arg(long = "audit-checkpoint-seconds", env = "WOPBOX_AUDIT_CHECKPOINT_SECONDS", default_value_t = 300,
          value_parser = clap::value_parser!(u32).range(1..=86_400))]
    pub checkpoint_seconds: u32,
}

impl Default for AuditArgs {
    fn default() -> Self {
        AuditArgs {
            checkpoint_entries: 1000,
            checkpoint_seconds: 300,
        }
    }
}
