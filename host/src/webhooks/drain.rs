//! Outbox state for graceful shutdown and `/metrics`.

use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::Utc;
use tokio::time::Instant;

use super::WebhookService;

impl WebhookService {
    /// Wait until every committed event has been fanned out to the outbox and every delivery
    /// due now has had its attempt (successful or rescheduled). Returns false if `deadline`
    /// came first; whatever is left stays durable in the outbox for the next start.
    pub async fn flush(&self, deadline: Instant) -> bool {
        loop {
            if self.is_flushed().await {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            self.wake.notify_one();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn is_flushed(&self) -> bool {
        let queued = !self
            .queued
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty();
        let attempting = !self
            .inflight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .is_empty();
        if queued || attempting || self.fanning.load(Ordering::SeqCst) > 0 {
            return false;
        }
        // With no subscription nothing can be due that this process would send.
        if !self.has_subscriptions() {
            return true;
        }
        let now = Utc::now().timestamp_millis();
        match self.store.next_due_ms().await {
            Ok(None) => true,
            Ok(Some(due)) => due > now,
            Err(_) => false,
        }
    }

    /// How overdue the most overdue pending delivery is, in milliseconds (0 when nothing is due).
    pub async fn outbox_lag_ms(&self) -> crate::store::StoreResult<i64> {
        let now = Utc::now().timestamp_millis();
        Ok(match self.store.next_due_ms().await? {
            Some(due) if due <= now => now - due,
            _ => 0,
        })
    }
}
