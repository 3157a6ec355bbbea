//! Several wopbox processes on one shared store (Postgres): the background work that makes
//! them behave as one host. Each process
//! - renews the leases of the runs it executes (every third of the lease TTL);
//! - claims runs whose lease expired — their process died — and resumes them from the log;
//! - listens for notifications: events committed elsewhere go to its SSE/long-poll clients,
//!   cancel requests reach the run's executor, webhook subscriptions and packs are reloaded.

use std::sync::Arc;
use std::time::Duration;

use crate::engine::Engine;
use crate::events::EventLog;
use crate::store::shared::{Notice, SharedStore};
use crate::webhooks::WebhookService;

/// Reloads installed packs when another process changed them.
#[async_trait::async_trait]
pub trait PackSync: Send + Sync {
    async fn sync_from_store(&self);
}

pub struct Cluster {
    pub shared: Arc<dyn SharedStore>,
    pub engine: Arc<Engine>,
    pub events: Arc<EventLog>,
    pub webhooks: Arc<WebhookService>,
    pub packs: std::sync::OnceLock<Arc<dyn PackSync>>,
}

impl Cluster {
    /// Start the lease, takeover and notification tasks.
    pub async fn start(self: &Arc<Self>) -> anyhow::Result<()> {
        let ttl = self.shared.lease_ttl();
        let mut notices = self.shared.listen().await?;

        let shared = self.shared.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(ttl / 3);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if let Err(e) = shared.renew_leases().await {
                    tracing::warn!(error = %e, "could not renew run leases");
                }
            }
        });

        let engine = self.engine.clone();
        tokio::spawn(async move {
            // Poll for expired leases a few times per TTL: a dead process's runs resume within
            // about one TTL plus this period.
            let period = (ttl / 4).clamp(Duration::from_millis(100), Duration::from_secs(2));
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                match engine.recover().await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(runs = n, "took over runs with expired leases"),
                    Err(e) => tracing::warn!(error = %e, "could not claim expired runs"),
                }
            }
        });

        let this = self.clone();
        tokio::spawn(async move {
            while let Some(notice) = notices.recv().await {
                this.handle(notice).await;
            }
            tracing::error!("postgres notification listener stopped");
        });
        Ok(())
    }

    async fn handle(&self, notice: Notice) {
        match notice {
            Notice::Events {
                run_id,
                first,
                last,
            } => self.events.forward_remote(&run_id, first, last).await,
            Notice::Cancel { run_id, reason } => {
                self.engine.cancel_local(&run_id, &reason);
            }
            Notice::Webhooks => {
                if let Err(e) = self.webhooks.reload_subscriptions().await {
                    tracing::warn!(error = %e, "could not reload webhook subscriptions");
                }
            }
            Notice::Packs => {
                if let Some(p) = self.packs.get() {
                    p.sync_from_store().await;
                }
            }
            Notice::Resync => {
                self.events.resync_remote().await;
                if let Err(e) = self.webhooks.reload_subscriptions().await {
                    tracing::warn!(error = %e, "could not reload webhook subscriptions");
                }
                if let Some(p) = self.packs.get() {
                    p.sync_from_store().await;
                }
            }
        }
    }

    /// Graceful shutdown: hand this process's runs to the others right away.
    pub async fn release(&self) {
        match self.shared.release_leases().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(runs = n, "released run leases for takeover"),
            Err(e) => tracing::warn!(error = %e, "could not release run leases"),
        }
    }
}
