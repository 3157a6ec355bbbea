//! Operator settings for interrupts.

/// Default lifetime of a signed interrupt token (interrupt.md: SHOULD be 30 minutes).
pub const DEFAULT_TOKEN_TTL_MS: u64 = 30 * 60 * 1000;

#[derive(clap::Args, Debug, Clone)]
pub struct InterruptArgs {
    /// Lifetime of signed interrupt tokens in ms (capped by an interrupt's own timeoutMs).
    #[arg(long = "interrupt-token-ttl-ms", env = "WOPBOX_INTERRUPT_TOKEN_TTL_MS", default_value_t = DEFAULT_TOKEN_TTL_MS)]
    pub token_ttl_ms: u64,
}

impl Default for InterruptArgs {
    fn default() -> Self {
        InterruptArgs {
            token_ttl_ms: DEFAULT_TOKEN_TTL_MS,
        }
    }
}
