//! Storage seam for retention (docs/operations.md "Retention"): deleting what has outlived its
//! retention window, in small batches, and remembering which runs expired so reads of them can
//! answer `410 Gone` instead of a `404` that would look like a mistyped id.
//!
//! What a batch does, each step bounded by the batch size:
//! 1. terminal runs that completed before the events cutoff lose their run row, interrupts and
//!    webhook fan-out watermark; a tombstone (`expired_runs`) takes the row's place, in the same
//!    transaction, so a reader sees either the run or its tombstone;
//! 2. the event logs of tombstoned runs are deleted by sequence range (a long log takes several
//!    batches; nobody can read it meanwhile, the tombstone answers first);
//! 3. idempotency records created before the idempotency cutoff are deleted (a later request
//!    with that key is then a fresh request, as idempotency.md rule 4 allows);
//! 4. tombstones older than the tombstone cutoff are dropped (such runs then answer 404).
//!
//! A run without its terminal event is never touched, however old.

use async_trait::async_trait;

use super::StoreResult;

/// What is old enough to go (RFC 3339 timestamps, compared as text like every stored time).
#[derive(Debug, Clone)]
pub struct Cutoffs {
    /// Terminal runs completed before this expire.
    pub runs_before: String,
    /// Idempotency records created before this are deleted.
    pub idempotency_before: String,
    /// Tombstones of runs that expired before this are deleted.
    pub tombstones_before: String,
    /// Stamped on new tombstones as `expiredAt`.
    pub now: String,
}

/// Rows deleted by one batch (or a whole sweep).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Purged {
    pub runs: u64,
    pub events: u64,
    pub idempotency: u64,
    pub tombstones: u64,
}

impl Purged {
    pub fn is_empty(&self) -> bool {
        *self == Purged::default()
    }
    pub fn add(&mut self, o: Purged) {
        self.runs += o.runs;
        self.events += o.events;
        self.idempotency += o.idempotency;
        self.tombstones += o.tombstones;
    }
}

/// A run whose data retention removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpiredRun {
    pub run_id: String,
    pub tenant_id: String,
    pub completed_at: String,
    pub expired_at: String,
}

impl From<(String, String, String, String)> for ExpiredRun {
    /// A `SELECT run_id, tenant_id, completed_at, expired_at FROM expired_runs` row.
    fn from(
        (run_id, tenant_id, completed_at, expired_at): (String, String, String, String),
    ) -> Self {
        ExpiredRun {
            run_id,
            tenant_id,
            completed_at,
            expired_at,
        }
    }
}

/// How many runs a batch tombstones out of a batch size of `limit` rows (each costs ~4 rows).
pub fn runs_per_batch(limit: u32) -> u32 {
    (limit / 4).max(1)
}

#[async_trait]
pub trait RetentionStore: Send + Sync {
    /// One small batch of cleanup (each step at most ~`limit` rows), in one transaction.
    /// `None` when another process sharing the store is sweeping right now (Postgres).
    async fn purge_batch(&self, cut: &Cutoffs, limit: u32) -> StoreResult<Option<Purged>>;
    /// The tombstone of an expired run, if it has one.
    async fn expired_run(&self, run_id: &str) -> StoreResult<Option<ExpiredRun>>;
}
