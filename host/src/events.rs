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

pub struct EventLog {
    store: Arc<dyn Store>,
    live: RwLock<HashMap<String, broadcast::Sender<Arc<EventRecord>>>>,
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
        self.publish(run_id, &records);
        for sink in self.sinks.read().unwrap().iter() {
            sink.committed(run_id, &records);
        }
        Ok(records)
    }

    fn publish(&self, run_id: &str, records: &[EventRecord]) {
        let terminal = records.iter().any(EventRecord::is_terminal);
        {
            let live = self.live.read().unwrap();
            if let Some(tx) = live.get(run_id) {
                for r in records {
                    let _ = tx.send(Arc::new(r.clone()));
                }
            } else {
                return;
            }
        }
        if terminal {
            // Subscribers keep their receivers (and the buffered terminal event); later
            // subscribers read the finished log from the store.
            self.live.write().unwrap().remove(run_id);
        }
    }

    /// Subscribe to events appended from now on. Callers read the backlog from the store *after*
    /// subscribing and de-duplicate by sequence, so nothing falls between the two.
    pub fn subscribe(&self, run_id: &str) -> broadcast::Receiver<Arc<EventRecord>> {
        let mut live = self.live.write().unwrap();
        live.retain(|_, tx| tx.receiver_count() > 0);
        live.entry(run_id.to_string())
            .or_insert_with(|| broadcast::channel(CHANNEL_CAPACITY).0)
            .subscribe()
    }
}
