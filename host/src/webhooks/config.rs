//! `wopbox serve` flags for webhook delivery.

#[derive(clap::Args, Debug, Clone)]
pub struct WebhookArgs {
    /// Allow webhook URLs on loopback (127.0.0.0/8, ::1, localhost), also over plain http.
    /// For local testing only: every other private, link-local and metadata address stays
    /// rejected, and without this flag loopback is rejected too.
    #[arg(
        long = "webhook-allow-loopback",
        env = "WOPBOX_WEBHOOK_ALLOW_LOOPBACK",
        default_value_t = false
    )]
    pub allow_loopback: bool,
    /// Per-attempt delivery timeout (the spec's 5 s).
    #[arg(long = "webhook-timeout-ms", env = "WOPBOX_WEBHOOK_TIMEOUT_MS", default_value_t = 5000,
          value_parser = clap::value_parser!(u64).range(10..=60_000))]
    pub timeout_ms: u64,
    /// Attempts per delivery before it is dead-lettered.
    #[arg(long = "webhook-max-attempts", env = "WOPBOX_WEBHOOK_MAX_ATTEMPTS", default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(1..=100))]
    pub max_attempts: u32,
    /// First retry delay; doubles per attempt (with ±20 % jitter) up to `--webhook-retry-max-ms`.
    #[arg(long = "webhook-retry-base-ms", env = "WOPBOX_WEBHOOK_RETRY_BASE_MS", default_value_t = 2000,
          value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub retry_base_ms: u64,
    #[arg(long = "webhook-retry-max-ms", env = "WOPBOX_WEBHOOK_RETRY_MAX_MS", default_value_t = 900_000,
          value_parser = clap::value_parser!(u64).range(1..=86_400_000))]
    pub retry_max_ms: u64,
    /// Concurrent delivery attempts, in total and per subscription.
    #[arg(long = "webhook-concurrency", env = "WOPBOX_WEBHOOK_CONCURRENCY", default_value_t = 16,
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub concurrency: u32,
    #[arg(long = "webhook-per-subscription-concurrency", default_value_t = 4,
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub per_subscription_concurrency: u32,
    /// How long dead letters are advertised as inspectable (`expiresAt`).
    #[arg(long = "webhook-dead-letter-retention-days", default_value_t = 7,
          value_parser = clap::value_parser!(u32).range(1..=365))]
    pub dead_letter_retention_days: u32,
}

impl Default for WebhookArgs {
    fn default() -> Self {
        WebhookArgs {
            allow_loopback: false,
            timeout_ms: 5000,
            max_attempts: 10,
            retry_base_ms: 2000,
            retry_max_ms: 900_000,
            concurrency: 16,
            per_subscription_concurrency: 4,
            dead_letter_retention_days: 7,
        }
    }
}
