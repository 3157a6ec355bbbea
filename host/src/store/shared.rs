//! Coordination between several processes sharing one store (the Postgres backend).
//!
//! Each process has an id. A run is executed by the process holding its *lease* (a row lock on
//! claim, then an owner id and an expiry on the run row, renewed while the process lives).
//! Appends are fenced on the lease, so a process that lost its lease cannot write into a run
//! another process took over. Committed changes are announced with notifications so that other
//! processes can push events to their SSE clients and refresh what they cache.

use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::mpsc;

use super::StoreResult;

/// Something another process committed.
#[derive(Debug, Clone, PartialEq)]
pub enum Notice {
    /// Events `first..=last` of `run_id` were committed by another process.
    Events {
        run_id: String,
        first: i64,
        last: i64,
    },
    /// A client asked (on another process) to cancel a run this process may be executing.
    Cancel { run_id: String, reason: String },
    /// Webhook subscriptions changed.
    Webhooks,
    /// Installed packs changed.
    Packs,
    /// The notification connection was re-established; notices may have been missed, so
    /// receivers catch up from the store.
    Resync,
}

#[async_trait]
pub trait SharedStore: Send + Sync + 'static {
    /// This process's id (the lease owner it writes).
    fn process_id(&self) -> &str;
    /// How long a lease lasts without renewal.
    fn lease_ttl(&self) -> Duration;
    /// Extend every lease this process holds on an unfinished run; returns how many.
    async fn renew_leases(&self) -> StoreResult<u64>;
    /// Expire this process's leases now (graceful shutdown), so others take over at once.
    async fn release_leases(&self) -> StoreResult<u64>;
    /// Mark the run `cancelling` and tell its executor, in one transaction. False if the run is
    /// terminal or unknown.
    async fn request_cancel(&self, run_id: &str, reason: &str) -> StoreResult<bool>;
    /// Start receiving notices committed by other processes.
    async fn listen(&self) -> StoreResult<mpsc::Receiver<Notice>>;
}
