//! Graceful shutdown on SIGTERM / Ctrl-C.
//!
//! 1. Stop admitting: `/readyz` and `POST /v1/runs` answer 503 (`draining`); everything else,
//!    SSE streams, reads, cancels and interrupt resolutions included, keeps working.
//! 2. Keep serving for `--shutdown-delay-ms`, so load balancers that poll `/readyz` stop
//!    routing here before the listener closes.
//! 3. Let computing nodes finish and commit their result (bounded by `--drain-timeout-ms`).
//!    No node starts or resumes computing; parked nodes stay parked. Everything unfinished
//!    resumes from the event log on the next start.
//! 4. Flush the webhook outbox: fan out every committed event and make the attempts that are
//!    due now (same deadline). Undelivered rows stay durable for the next start.
//! 5. Close the listener (open SSE streams get [`STREAM_GRACE`]) and exit 0.
//!
//! A second signal skips what is left of steps 2–4.

use std::time::Duration;

use tokio::time::Instant;

use super::Ops;
use crate::webhooks::WebhookService;

#[derive(clap::Args, Debug, Clone)]
pub struct ShutdownArgs {
    /// After SIGTERM, keep serving (readyz 503, new runs 503) at least this long, so load
    /// balancers notice before the listener closes.
    #[arg(long, env = "WOPBOX_SHUTDOWN_DELAY_MS", default_value_t = 0)]
    pub shutdown_delay_ms: u64,
    /// Longest wait after SIGTERM (and the delay) for computing nodes and the webhook outbox.
    #[arg(long, env = "WOPBOX_DRAIN_TIMEOUT_MS", default_value_t = 30_000)]
    pub drain_timeout_ms: u64,
}

/// Open requests (SSE streams of runs that keep running) get this long once the listener
/// closes; the host then exits regardless.
pub const STREAM_GRACE: Duration = Duration::from_secs(5);

/// How often the drain re-checks its conditions.
const POLL: Duration = Duration::from_millis(20);

/// Steps 1–4 above; returns when the host may close its listener.
pub async fn drain(ops: &Ops, webhooks: &WebhookService, args: &ShutdownArgs) {
    ops.start_draining();
    let started = Instant::now();
    tracing::info!(
        delay_ms = args.shutdown_delay_ms,
        "shutdown requested: admitting no new runs"
    );
    tokio::time::sleep(Duration::from_millis(args.shutdown_delay_ms)).await;
    let deadline = Instant::now() + Duration::from_millis(args.drain_timeout_ms);
    let admission = ops.admission();
    while admission.snapshot().executing > 0 && Instant::now() < deadline {
        tokio::time::sleep(POLL).await;
    }
    let still = admission.snapshot().executing;
    if still > 0 {
        tracing::warn!(
            executing = still,
            "drain timeout: nodes still computing run again after the restart"
        );
    }
    if !webhooks.flush(deadline).await {
        tracing::warn!("drain timeout: undelivered webhooks stay in the outbox for the next start");
    }
    tracing::info!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        "drained; closing the listener"
    );
}
