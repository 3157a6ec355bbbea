//! Operations: liveness/readiness probes, admission control, graceful drain, metrics and
//! retention. Everything an operator runs the host *with*, kept apart from the engine and the
//! API so those stay about the protocol.

pub mod admission;
pub mod health;
pub mod metrics;
pub mod production;
pub mod shutdown;

use std::sync::Arc;

use admission::Admission;

use crate::store::Store;

/// Every operational flag of `wopbox serve` (flattened into its arguments).
#[derive(clap::Args, Debug, Clone)]
pub struct OpsArgs {
    #[command(flatten)]
    pub admission: admission::AdmissionArgs,
    #[command(flatten)]
    pub shutdown: shutdown::ShutdownArgs,
}

/// Process-wide operational state shared by the probes, the admission gate and shutdown.
pub struct Ops {
    store: Arc<dyn Store>,
    admission: Arc<Admission>,
}

impl Ops {
    pub fn new(store: Arc<dyn Store>, admission: Arc<Admission>) -> Arc<Self> {
        Arc::new(Ops { store, admission })
    }

    /// Stop admitting new work (SIGTERM): `/readyz` turns 503 and `POST /v1/runs` gets 503.
    pub fn start_draining(&self) {
        self.admission.start_draining();
    }

    pub fn is_draining(&self) -> bool {
        self.admission.is_draining()
    }

    pub fn admission(&self) -> &Arc<Admission> {
        &self.admission
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }
}
