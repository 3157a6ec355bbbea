//! The event log: append (commit first), then broadcast to live subscribers.
//!
//! Nothing is ever streamed or acknowledged before the store has committed it, so a client can
//! never have seen an event that a restart forgets. Live fan-out is per run: a run without
//! subscribers costs one hash lookup per append.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use tokio::sync::broadcast;

use crate::store::{EventRecord, NewEvent, RunUpdate, Store, StoreResult};

const CHANNEL_CAPACITY: usize = 256;

/// A post-commit listener (webhook fan-out, metrics, ...). Called synchronously after every
/// committed append, so implementations must only enqueue work, never block.
pub trait EventSink: Send + Sync + 'static {
    fn committed(&self, run_id: &str, records: &[EventRecord]);
}

/// A run's live channel and the highest sequence published on it (-1: none yet).
struct Live {
    tx: broadcast::Sender<Arc<EventRecord>>,
    last: i64,
}

pub struct EventLog {
    store: Arc<dyn Store>,
    live: RwLock<HashMap<String, Live>>,
    sinks: RwLock<Vec<Arc<dyn EventSink>>>,
}

impl EventLog {
    pub fn new(store: Arc<dyn Store>) -> Self {
        EventLog {
            store,
            live: RwLock::new(HashMap::new()),
            sinks: RwLock::new(Vec::new()),
        }
    }

    /// Register a post-commit listener.
    pub fn add_sink(&self, sink: Arc<dyn EventSink>) {
        self.sinks.write().unwrap().push(sink);
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Commit `events` (and the run update) atomically, then publish them.
    pub async fn append(
        &self,
        run_id: &str,
        events: Vec<NewEvent>,
        update: Option<RunUpdate>,
    ) -> StoreResult<Vec<EventRecord>> {
        let records = self.store.append_events(run_id, events, update).await?;
        self.announce(run_id, &records);
        Ok(records)
    }

    /// Publish records another store transaction already committed (e.g. an interrupt
    /// resolution, which writes its row and its events together) to subscribers and sinks.
    pub fn announce(&self, run_id: &str, records: &[EventRecord]) {
        self.publish(run_id, records);
        for sink in self.sinks.read().unwrap().iter() {
            sink.committed(run_id, records);
        }
    }

    fn publish(&self, run_id: &str, records: &[EventRecord]) {
        if !self.live.read().unwrap().contains_key(run_id) {
            return;
        }
        let terminal = records.iter().any(EventRecord::is_terminal);
        {
            let mut live = self.live.write().unwrap();
            let Some(l) = live.get_mut(run_id) else {
                return;
            };
            for r in records {
                let _ = l.tx.send(Arc::new(r.clone()));
                l.last = l.last.max(r.sequence);
            }
            if terminal {
                // Subscribers keep their receivers (and the buffered terminal event); later
                // subscribers read the finished log from the store.
                live.remove(run_id);
            }
        }
    }

    /// Push events `first..=last` that another process committed (shared store) to this
    /// process's live subscribers of the run; nothing to do without subscribers.
    pub async fn forward_remote(&self, run_id: &str, first: i64, last: i64) {
        let Some(seen) = self.live.read().unwrap().get(run_id).map(|l| l.last) else {
            return;
        };
        let after = (first - 1).max(seen);
        if after >= last {
            return;
        }
        match self.store.list_events(run_id, after, last - after).await {
            Ok(records) => self.publish(run_id, &records),
            Err(e) => {
                tracing::warn!(run_id, error = %e, "could not read events committed elsewhere")
            }
        }
    }

    /// Notifications may have been missed (the listener reconnected): publish whatever the
    /// store has beyond what each live run's subscribers were sent.
    pub async fn resync_remote(&self) {
        let runs: Vec<(String, i64)> = self
            .live
            .read()
            .unwrap()
            .iter()
            .map(|(id, l)| (id.clone(), l.last))
            .collect();
        for (run_id, seen) in runs {
            if let Ok(records) = self.store.list_events(&run_id, seen, 1000).await {
                self.publish(&run_id, &records);
            }
        }
    }

    /// Subscribe to events appended from now on. Callers read the backlog from the store *after*
    /// subscribing and de-duplicate by sequence, so nothing falls between the two.
    pub fn subscribe(&self, run_id: &str) -> broadcast::Receiver<Arc<EventRecord>> {
        let mut live = self.live.write().unwrap();
        live.retain(|_, l| l.tx.receiver_count() > 0);
        live.entry(run_id.to_string())
            .or_insert_with(|| Live {
                tx: broadcast::channel(CHANNEL_CAPACITY).0,
                last: -1,
            })
            .tx
            .subscribe()
    }
}
