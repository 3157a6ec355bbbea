//! Operations: liveness/readiness probes, admission control, graceful drain, metrics and
//! retention. Everything an operator runs the host *with*, kept apart from the engine and the
//! API so those stay about the protocol.

pub mod health;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::store::Store;

/// Process-wide operational state shared by the probes, the admission gate and shutdown.
pub struct Ops {
    store: Arc<dyn Store>,
    draining: AtomicBool,
}

impl Ops {
    pub fn new(store: Arc<dyn Store>) -> Arc<Self> {
        Arc::new(Ops {
            store,
            draining: AtomicBool::new(false),
        })
    }

    /// Stop admitting new work (SIGTERM): `/readyz` turns 503 and `POST /v1/runs` gets 503.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }
}
