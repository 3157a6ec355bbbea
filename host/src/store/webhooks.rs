//! Storage seam for webhook subscriptions and the durable delivery outbox.
//!
//! Delivery is at-least-once: a fan-out step writes one outbox row per (subscription, event) in
//! the same transaction that advances the run's fan-out watermark, and a dispatcher drains due
//! rows, retrying with backoff until delivery succeeds or the row is dead-lettered.

use async_trait::async_trait;

use super::{CreateRunOutcome, IdempotencyClaim, StoreResult};

#[derive(Debug, Clone)]
pub struct Subscription {
    pub webhook_id: String,
    pub tenant_id: String,
    pub principal_id: String,
    pub url: String,
    pub events: Vec<String>,
    /// `None` = no tag filter; otherwise the run's tags must overlap.
    pub tags: Option<Vec<String>>,
    pub secret: String,
    pub secret_fingerprint: String,
    /// `active` or `deleted`.
    pub status: String,
    pub created_at: String,
}

/// An outbox row about to be written by the fan-out step.
#[derive(Debug, Clone)]
pub struct NewDelivery {
    pub delivery_id: String,
    pub webhook_id: String,
    pub run_id: String,
    pub event_id: String,
    pub event_type: String,
    pub sequence: i64,
    /// The exact JSON bytes every attempt sends.
    pub body: String,
    pub next_attempt_ms: i64,
    pub created_at: String,
}

#[derive(Debug, Clone)]
pub struct Delivery {
    pub delivery_id: String,
    pub webhook_id: String,
    pub run_id: String,
    pub event_id: String,
    pub event_type: String,
    pub sequence: i64,
    pub body: String,
    /// `pending`, `delivered`, `dead` or `cancelled`.
    pub status: String,
    pub attempts: i64,
    pub next_attempt_ms: i64,
    pub last_status: Option<i64>,
    pub last_error: Option<String>,
    pub created_at: String,
    pub finished_at: Option<String>,
}

/// Outcome of one delivery attempt, as recorded on the outbox row.
#[derive(Debug, Clone)]
pub enum AttemptOutcome {
    Delivered {
        http_status: u16,
    },
    /// Try again at `next_attempt_ms`.
    Retry {
        http_status: Option<u16>,
        error: String,
        next_attempt_ms: i64,
    },
    /// Attempts exhausted: the row becomes a dead letter.
    Dead {
        http_status: Option<u16>,
        error: String,
    },
}

impl AttemptOutcome {
    /// The outbox columns an attempt sets: (status, last_status, last_error, next_attempt_ms,
    /// finished_at).
    pub(crate) fn columns<'a>(
        &'a self,
        now: &'a str,
    ) -> (
        &'static str,
        Option<i64>,
        Option<&'a str>,
        Option<i64>,
        Option<&'a str>,
    ) {
        match self {
            AttemptOutcome::Delivered { http_status } => (
                "delivered",
                Some(i64::from(*http_status)),
                None,
                None,
                Some(now),
            ),
            AttemptOutcome::Retry {
                http_status,
                error,
                next_attempt_ms,
            } => (
                "pending",
                http_status.map(i64::from),
                Some(error.as_str()),
                Some(*next_attempt_ms),
                None,
            ),
            AttemptOutcome::Dead { http_status, error } => (
                "dead",
                http_status.map(i64::from),
                Some(error.as_str()),
                None,
                Some(now),
            ),
        }
    }
}

#[async_trait]
pub trait WebhookStore: Send + Sync {
    /// Insert a subscription. With an idempotency claim, the key check and the insert are one
    /// transaction: a replayed key returns the cached response instead (`Created` otherwise).
    async fn insert_subscription(
        &self,
        sub: &Subscription,
        idem: Option<&IdempotencyClaim>,
    ) -> StoreResult<CreateRunOutcome>;
    async fn get_subscription(&self, webhook_id: &str) -> StoreResult<Option<Subscription>>;
    async fn list_active_subscriptions(&self) -> StoreResult<Vec<Subscription>>;
    /// Mark a subscription deleted and cancel its pending deliveries. False if it was not active.
    async fn delete_subscription(&self, webhook_id: &str, deleted_at: &str) -> StoreResult<bool>;

    /// The first event sequence of `run_id` not yet fanned out (0 when never fanned out).
    async fn fanout_watermark(&self, run_id: &str) -> StoreResult<i64>;
    /// Write `deliveries` (duplicates ignored) and move the watermark to `next_sequence`,
    /// atomically.
    async fn commit_fanout(
        &self,
        run_id: &str,
        next_sequence: i64,
        deliveries: &[NewDelivery],
    ) -> StoreResult<()>;
    /// Runs updated at or after `since` whose events are not all fanned out (crash recovery).
    async fn fanout_backlog(&self, since: &str) -> StoreResult<Vec<String>>;

    /// Pending deliveries of one subscription due at `now_ms`, oldest first. A shared store
    /// reserves them for this process until attempted (or released).
    async fn due_deliveries(
        &self,
        webhook_id: &str,
        now_ms: i64,
        limit: i64,
    ) -> StoreResult<Vec<Delivery>>;
    /// Give back due rows that [`due_deliveries`](Self::due_deliveries) returned but the caller
    /// will not attempt now. Only a shared store reserves rows for the caller (so that one
    /// process sends each attempt); the embedded store has nothing to give back.
    async fn release_deliveries(&self, _delivery_ids: &[String]) -> StoreResult<()> {
        Ok(())
    }
    /// The earliest `next_attempt_ms` of any pending delivery.
    async fn next_due_ms(&self) -> StoreResult<Option<i64>>;
    async fn record_attempt(
        &self,
        delivery_id: &str,
        attempts: i64,
        outcome: &AttemptOutcome,
        now: &str,
    ) -> StoreResult<()>;
    async fn get_delivery(&self, delivery_id: &str) -> StoreResult<Option<Delivery>>;
    /// Drop finished rows: delivered/cancelled ones finished before `settled_before`, dead
    /// letters finished before `dead_before`. Returns how many rows went.
    async fn purge_deliveries(&self, settled_before: &str, dead_before: &str) -> StoreResult<u64>;
    /// Dead letters of a subscription, newest first; `before` is an exclusive
    /// (finished_at, delivery_id) cursor.
    async fn dead_letters(
        &self,
        webhook_id: &str,
        limit: i64,
        before: Option<(String, String)>,
    ) -> StoreResult<Vec<Delivery>>;
}
