//! Retention: the background cleanup that deletes finished runs' data and idempotency records
//! once they have outlived their windows (docs/operations.md "Retention").
//!
//! Off the hot path by construction: a sweep is a series of small batches (each one short
//! transaction, see `store/retention.rs`) with a pause between them, so appends and run
//! creations interleave with it instead of waiting for it. On SQLite each batch is one op of
//! the writer thread; on Postgres one process sweeps at a time (advisory lock) and the others
//! skip. Runs without their terminal event are never touched.

pub mod config;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

pub use config::{RetentionArgs, RetentionSettings};

use crate::store::retention::{Cutoffs, Purged};
use crate::store::{ts, Store, StoreResult};

/// Between two batches of one sweep: lets queued writes through first.
const PAUSE: Duration = Duration::from_millis(5);

pub struct Retention {
    store: Arc<dyn Store>,
    settings: RetentionSettings,
}

fn before(now: DateTime<Utc>, window: Duration) -> String {
    let window = chrono::Duration::from_std(window).unwrap_or(chrono::Duration::MAX);
    ts(now
        .checked_sub_signed(window)
        .unwrap_or(DateTime::<Utc>::MIN_UTC))
}

impl Retention {
    pub fn new(store: Arc<dyn Store>, settings: RetentionSettings) -> Arc<Self> {
        if settings.below_floor() {
            tracing::warn!(
                events = ?settings.events,
                idempotency = ?settings.idempotency,
                "retention is below the production profile's floors (events 7d, idempotency 24h): development only"
            );
        }
        Arc::new(Retention { store, settings })
    }

    pub fn settings(&self) -> &RetentionSettings {
        &self.settings
    }

    /// What is old enough to go at `now`. A tombstone outlives its run's data by one more
    /// events window; after that the run id answers 404.
    pub fn cutoffs(&self, now: DateTime<Utc>) -> Cutoffs {
        Cutoffs {
            runs_before: before(now, self.settings.events),
            idempotency_before: before(now, self.settings.idempotency),
            tombstones_before: before(now, self.settings.events),
            now: ts(now),
        }
    }

    /// One sweep: batches until nothing is left below the cutoffs taken at its start, or until
    /// another process turns out to be sweeping.
    pub async fn sweep(&self) -> StoreResult<Purged> {
        let cut = self.cutoffs(Utc::now());
        let mut total = Purged::default();
        loop {
            match self.store.purge_batch(&cut, self.settings.batch).await? {
                Some(p) if !p.is_empty() => total.add(p),
                _ => return Ok(total),
            }
            tokio::time::sleep(PAUSE).await;
        }
    }

    /// Sweep every `sweep_interval` for as long as the process runs.
    pub fn spawn(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(this.settings.sweep_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                match this.sweep().await {
                    Ok(p) if !p.is_empty() => tracing::info!(
                        runs = p.runs,
                        events = p.events,
                        idempotency_records = p.idempotency,
                        tombstones = p.tombstones,
                        "retention sweep deleted expired data"
                    ),
                    Ok(_) => {}
                    Err(e) => {
                        tracing::error!(error = %e, "retention sweep failed; retrying next interval")
                    }
                }
            }
        })
    }

    /// `capabilities.production.retention` (RFC 0009; the conformance suite reads
    /// `minWindowSeconds`). Expiry is only ever by age here: no force-expire hook. The schema
    /// puts `minWindowSeconds` at 7 days or more, so a shorter (development) window is not
    /// advertised at all: the sub-block then says `supported: false`.
    pub fn discovery_block(&self) -> Value {
        if self.settings.events < config::EVENTS_FLOOR {
            return json!({"retention": {"supported": false, "testForceExpire": false}});
        }
        json!({"retention": {
            "supported": true,
            "minWindowSeconds": self.settings.events.as_secs(),
            "testForceExpire": false,
        }})
    }
}
