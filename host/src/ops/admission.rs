//! Admission control: bounded work in front of execution, with per-tenant shares.
//!
//! Two resources are bounded separately because they cost different things:
//!
//! * **Runs in flight** (admitted, not yet terminal; parked ones included) cost memory and a
//!   driver task each. `POST /v1/runs` is refused with `503` when the global or the tenant's
//!   count is at its limit.
//! * **Executing nodes** cost CPU and sandbox slots. A node takes an execution slot (first its
//!   tenant's, then a global one) for as long as it computes; one that waits on a timer or a
//!   human ([`park`]) gives its slots back, so thousands of parked runs cost no execution
//!   capacity. Nodes that find no free slot wait in a queue; when that queue is longer than
//!   its limit, new runs are refused with `503` until it drains.
//!
//! A tenant's limits are a fraction of the global ones, so one tenant saturating its share
//! cannot take the slots other tenants need. Everything is in-process: the limits are per host.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Admission limits (flags in [`AdmissionArgs`]; defaults in docs/operations.md).
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_runs_in_flight: usize,
    pub tenant_max_runs_in_flight: usize,
    pub max_executing: usize,
    pub tenant_max_executing: usize,
    pub max_queued: usize,
    /// Seconds a refused client is told to wait (`Retry-After`, `details.retryAfter`).
    pub retry_after_secs: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_runs_in_flight: 20_000,
            tenant_max_runs_in_flight: 5_000,
            max_executing: 256,
            tenant_max_executing: 64,
            max_queued: 4_096,
            retry_after_secs: 2,
        }
    }
}

#[derive(clap::Args, Debug, Clone)]
pub struct AdmissionArgs {
    /// Most runs admitted and not yet terminal (parked runs included); more get 503.
    #[arg(long, env = "WOPBOX_MAX_RUNS_IN_FLIGHT", default_value_t = Limits::default().max_runs_in_flight)]
    pub max_runs_in_flight: usize,
    /// Most runs in flight per tenant; that tenant's further runs get 503.
    #[arg(long, env = "WOPBOX_TENANT_MAX_RUNS_IN_FLIGHT", default_value_t = Limits::default().tenant_max_runs_in_flight)]
    pub tenant_max_runs_in_flight: usize,
    /// Most nodes computing at once (parked nodes excluded).
    #[arg(long, env = "WOPBOX_MAX_EXECUTING", default_value_t = Limits::default().max_executing)]
    pub max_executing: usize,
    /// Most nodes computing at once per tenant.
    #[arg(long, env = "WOPBOX_TENANT_MAX_EXECUTING", default_value_t = Limits::default().tenant_max_executing)]
    pub tenant_max_executing: usize,
    /// Most nodes waiting for an execution slot before new runs get 503.
    #[arg(long, env = "WOPBOX_MAX_QUEUED", default_value_t = Limits::default().max_queued)]
    pub max_queued: usize,
    /// `Retry-After` seconds sent with a capacity 503 (0..=86400).
    #[arg(long, env = "WOPBOX_RETRY_AFTER_SECS", default_value_t = Limits::default().retry_after_secs)]
    pub retry_after_secs: u64,
}

impl AdmissionArgs {
    pub fn limits(&self) -> Limits {
        let max_executing = self.max_executing.max(1);
        Limits {
            max_runs_in_flight: self.max_runs_in_flight.max(1),
            tenant_max_runs_in_flight: self.tenant_max_runs_in_flight.max(1),
            max_executing,
            tenant_max_executing: self.tenant_max_executing.clamp(1, max_executing),
            max_queued: self.max_queued,
            // The spec bounds an advertised retry hint to a day.
            retry_after_secs: self.retry_after_secs.min(86_400),
        }
    }
}

/// Why a run was refused. All map to `503 service_unavailable` with `Retry-After`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("the host has {0} runs in flight, its limit")]
    RunsInFlight(usize),
    #[error("this tenant has {0} runs in flight, its limit")]
    TenantRunsInFlight(usize),
    #[error("{0} node executions are waiting for a slot, the queue limit")]
    QueueFull(usize),
    #[error("the host is shutting down")]
    Draining,
}

impl Rejection {
    /// Stable machine-readable reason (`details.reason`, metric label).
    pub fn reason(&self) -> &'static str {
        match self {
            Rejection::RunsInFlight(_) => "runs_in_flight",
            Rejection::TenantRunsInFlight(_) => "tenant_runs_in_flight",
            Rejection::QueueFull(_) => "queue_full",
            Rejection::Draining => "draining",
        }
    }
}

struct Tenant {
    runs: usize,
    queued: usize,
    exec: Arc<Semaphore>,
}

#[derive(Default)]
struct Counts {
    runs: usize,
    tenants: HashMap<String, Tenant>,
}

pub struct Admission {
    limits: Limits,
    exec: Arc<Semaphore>,
    counts: Mutex<Counts>,
    queued: AtomicUsize,
    executing: AtomicUsize,
    draining: AtomicBool,
    /// Admitted and refused runs, for `/metrics` (counted where the decision is made).
    pub counters: super::metrics::AdmissionCounters,
}

/// One tenant's point-in-time figures (`/metrics`).
#[derive(Debug, Clone)]
pub struct TenantFigures {
    pub tenant: String,
    pub runs: usize,
    pub queued: usize,
}

/// Point-in-time figures for `/metrics` and the docs.
#[derive(Debug, Clone, Copy)]
pub struct Snapshot {
    pub runs_in_flight: usize,
    pub executing: usize,
    pub queued: usize,
}

impl Admission {
    pub fn new(limits: Limits) -> Arc<Self> {
        Arc::new(Admission {
            exec: Arc::new(Semaphore::new(limits.max_executing)),
            limits,
            counts: Mutex::new(Counts::default()),
            queued: AtomicUsize::new(0),
            executing: AtomicUsize::new(0),
            draining: AtomicBool::new(false),
            counters: Default::default(),
        })
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Refuse every new run from now on (graceful shutdown).
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Per-tenant figures of every tenant with a run in flight or a node queued (idle tenants
    /// are forgotten, so this is as small as the set of active ones).
    pub fn tenant_figures(&self) -> Vec<TenantFigures> {
        self.counts()
            .tenants
            .iter()
            .map(|(t, c)| TenantFigures {
                tenant: t.clone(),
                runs: c.runs,
                queued: c.queued,
            })
            .collect()
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            runs_in_flight: self.counts.lock().unwrap_or_else(|p| p.into_inner()).runs,
            executing: self.executing.load(Ordering::Relaxed),
            queued: self.queued.load(Ordering::Relaxed),
        }
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        // The counters stay consistent even if a holder panicked: every update is one step.
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn tenant_entry<'a>(&self, counts: &'a mut Counts, tenant: &str) -> &'a mut Tenant {
        counts
            .tenants
            .entry(tenant.to_string())
            .or_insert_with(|| Tenant {
                runs: 0,
                queued: 0,
                exec: Arc::new(Semaphore::new(self.limits.tenant_max_executing)),
            })
    }

    /// Admit a new run for `tenant`, or say why not. The slot is held until the run's driver
    /// ends (terminal, or the process stops).
    pub fn try_admit(self: &Arc<Self>, tenant: &str) -> Result<RunSlot, Rejection> {
        let decision = self.decide(tenant);
        if let Err(r) = &decision {
            self.counters.rejected(r.reason());
        }
        decision
    }

    fn decide(self: &Arc<Self>, tenant: &str) -> Result<RunSlot, Rejection> {
        if self.is_draining() {
            return Err(Rejection::Draining);
        }
        let queued = self.queued.load(Ordering::Relaxed);
        if queued >= self.limits.max_queued {
            return Err(Rejection::QueueFull(queued));
        }
        let mut counts = self.counts();
        if counts.runs >= self.limits.max_runs_in_flight {
            return Err(Rejection::RunsInFlight(counts.runs));
        }
        let limit = self.limits.tenant_max_runs_in_flight;
        let t = self.tenant_entry(&mut counts, tenant);
        if t.runs >= limit {
            return Err(Rejection::TenantRunsInFlight(t.runs));
        }
        t.runs += 1;
        counts.runs += 1;
        Ok(RunSlot {
            admission: self.clone(),
            tenant: tenant.to_string(),
        })
    }

    /// A slot for a run that is already durable and must continue (restart recovery): counted,
    /// never refused.
    pub fn force_admit(self: &Arc<Self>, tenant: &str) -> RunSlot {
        let mut counts = self.counts();
        self.tenant_entry(&mut counts, tenant).runs += 1;
        counts.runs += 1;
        RunSlot {
            admission: self.clone(),
            tenant: tenant.to_string(),
        }
    }

    fn release_run(&self, tenant: &str) {
        let mut counts = self.counts();
        counts.runs = counts.runs.saturating_sub(1);
        let idle = match counts.tenants.get_mut(tenant) {
            Some(t) => {
                t.runs = t.runs.saturating_sub(1);
                t.runs == 0 && t.queued == 0
            }
            None => false,
        };
        // Forget idle tenants so the map stays as small as the set of active ones. A tenant
        // with nodes still computing keeps its semaphore through the permits they hold.
        if idle {
            counts.tenants.remove(tenant);
        }
    }

    /// Wait for an execution slot (tenant share first, then global). Cancel-safe: dropping the
    /// future leaves the queue.
    pub async fn acquire(self: &Arc<Self>, tenant: &str) -> ExecPermit {
        let tenant_sem = {
            let mut counts = self.counts();
            let t = self.tenant_entry(&mut counts, tenant);
            t.queued += 1;
            t.exec.clone()
        };
        self.queued.fetch_add(1, Ordering::Relaxed);
        let _waiting = Waiting {
            admission: self,
            tenant,
        };
        // Semaphores here are never closed, so acquisition cannot fail.
        let t = tenant_sem.acquire_owned().await.ok();
        let g = self.exec.clone().acquire_owned().await.ok();
        if self.is_draining() {
            // Shutting down: no node starts (or resumes) computing in this process. The wait
            // ends when the process exits; the node is dispatched again on the next start.
            drop((t, g));
            return std::future::pending().await;
        }
        self.executing.fetch_add(1, Ordering::Relaxed);
        ExecPermit {
            admission: self.clone(),
            _tenant: t,
            _global: g,
        }
    }

    /// Run `fut` (one node execution) holding an execution slot; inside it, [`park`] gives the
    /// slot back while waiting. The slot comes back with the output: the caller keeps it until
    /// the node's result is committed, so a graceful shutdown (which waits for slots to be
    /// returned) never exits between a computed result and its event.
    pub async fn gated<F: Future>(
        self: &Arc<Self>,
        tenant: &str,
        fut: F,
    ) -> (F::Output, Option<ExecPermit>) {
        let permit = self.acquire(tenant).await;
        let cell = Arc::new(SlotCell {
            admission: self.clone(),
            tenant: tenant.to_string(),
            permit: Mutex::new(Some(permit)),
        });
        let out = CURRENT.scope(cell.clone(), fut).await;
        let permit = cell.permit.lock().unwrap_or_else(|p| p.into_inner()).take();
        (out, permit)
    }
}

/// Leaves the queue counters when acquisition finishes or is cancelled.
struct Waiting<'a> {
    admission: &'a Admission,
    tenant: &'a str,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.admission.queued.fetch_sub(1, Ordering::Relaxed);
        let mut counts = self.admission.counts();
        if let Some(t) = counts.tenants.get_mut(self.tenant) {
            t.queued = t.queued.saturating_sub(1);
        }
    }
}

/// A run's place in the in-flight count; released on drop.
pub struct RunSlot {
    admission: Arc<Admission>,
    tenant: String,
}

impl Drop for RunSlot {
    fn drop(&mut self) {
        self.admission.release_run(&self.tenant);
    }
}

/// An execution slot; released on drop.
pub struct ExecPermit {
    admission: Arc<Admission>,
    _tenant: Option<OwnedSemaphorePermit>,
    _global: Option<OwnedSemaphorePermit>,
}

impl Drop for ExecPermit {
    fn drop(&mut self) {
        self.admission.executing.fetch_sub(1, Ordering::Relaxed);
    }
}

struct SlotCell {
    admission: Arc<Admission>,
    tenant: String,
    permit: Mutex<Option<ExecPermit>>,
}

tokio::task_local! {
    static CURRENT: Arc<SlotCell>;
}

/// Await `fut` without holding an execution slot: for node executors that wait on a timer, a
/// human or another run. The slot is taken back (queueing if needed) before returning. Outside
/// a gated execution this is just `fut.await`.
pub async fn park<F: Future>(fut: F) -> F::Output {
    let Ok(cell) = CURRENT.try_with(|c| c.clone()) else {
        return fut.await;
    };
    let released = cell.permit.lock().unwrap_or_else(|p| p.into_inner()).take();
    let was_holding = released.is_some();
    drop(released);
    let out = fut.await;
    if was_holding {
        let permit = cell.admission.acquire(&cell.tenant).await;
        *cell.permit.lock().unwrap_or_else(|p| p.into_inner()) = Some(permit);
    }
    out
}

/// `503 service_unavailable` in the canonical envelope, `Retry-After` equal to
/// `details.retryAfter` (seconds).
pub fn refusal(rejection: Rejection, retry_after_secs: u64) -> crate::api::error::ApiError {
    use axum::http::{header, HeaderValue, StatusCode};
    let message = match rejection {
        Rejection::Draining => format!("{rejection}; retry after {retry_after_secs}s"),
        _ => format!("server at capacity: {rejection}; retry after {retry_after_secs}s"),
    };
    crate::api::error::ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "service_unavailable",
        message,
    )
    .details(serde_json::json!({
        "retryAfter": retry_after_secs,
        "reason": rejection.reason(),
    }))
    .header(header::RETRY_AFTER, HeaderValue::from(retry_after_secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(runs: usize, tenant_runs: usize, exec: usize, tenant_exec: usize) -> Limits {
        Limits {
            max_runs_in_flight: runs,
            tenant_max_runs_in_flight: tenant_runs,
            max_executing: exec,
            tenant_max_executing: tenant_exec,
            max_queued: 100,
            retry_after_secs: 1,
        }
    }

    #[test]
    fn tenant_limit_refuses_only_that_tenant() {
        let a = Admission::new(limits(10, 2, 4, 2));
        let _s1 = a.try_admit("a").unwrap();
        let _s2 = a.try_admit("a").unwrap();
        assert_eq!(
            a.try_admit("a").err(),
            Some(Rejection::TenantRunsInFlight(2))
        );
        assert!(a.try_admit("b").is_ok());
    }

    #[test]
    fn global_limit_and_release() {
        let a = Admission::new(limits(2, 2, 4, 2));
        let s1 = a.try_admit("a").unwrap();
        let _s2 = a.try_admit("b").unwrap();
        assert_eq!(a.try_admit("c").err(), Some(Rejection::RunsInFlight(2)));
        drop(s1);
        assert!(a.try_admit("c").is_ok());
    }

    #[test]
    fn draining_refuses_everyone() {
        let a = Admission::new(limits(10, 10, 4, 2));
        a.start_draining();
        assert_eq!(a.try_admit("a").err(), Some(Rejection::Draining));
    }

    #[tokio::test]
    async fn parked_work_frees_its_slot() {
        let a = Admission::new(limits(10, 10, 1, 1));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let a2 = a.clone();
        let parked = tokio::spawn(async move {
            a2.gated("a", async move {
                park(rx).await.ok();
            })
            .await
        });
        // The parked execution holds no slot, so another one can compute to completion.
        let (seven, _) =
            tokio::time::timeout(std::time::Duration::from_secs(5), a.gated("a", async { 7 }))
                .await
                .expect("slot was not released by park");
        assert_eq!(seven, 7);
        tx.send(()).unwrap();
        parked.await.unwrap();
        assert_eq!(a.snapshot().executing, 0);
        assert_eq!(a.snapshot().queued, 0);
    }

    #[tokio::test]
    async fn draining_lets_computing_work_finish_and_starts_none() {
        let a = Admission::new(limits(10, 10, 4, 4));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let a2 = a.clone();
        let running =
            tokio::spawn(async move { a2.gated("a", async move { rx.await.ok() }).await });
        while a.snapshot().executing == 0 {
            tokio::task::yield_now().await;
        }
        a.start_draining();
        // Work already computing finishes and hands its slot back with the result...
        tx.send(()).unwrap();
        let (out, slot) = running.await.unwrap();
        assert!(out.is_some() && slot.is_some());
        assert_eq!(a.snapshot().executing, 1, "held until the caller commits");
        drop(slot);
        assert_eq!(a.snapshot().executing, 0);
        // ...and nothing new starts while draining, even with free slots.
        let blocked = tokio::time::timeout(
            std::time::Duration::from_millis(100),
            a.gated("b", async {}),
        )
        .await;
        assert!(blocked.is_err(), "a node started computing while draining");
    }

    #[tokio::test]
    async fn busy_tenant_does_not_block_another() {
        let a = Admission::new(limits(10, 10, 2, 1));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let a2 = a.clone();
        let hog = tokio::spawn(async move { a2.gated("a", async move { rx.await.ok() }).await });
        while a.snapshot().executing == 0 {
            tokio::task::yield_now().await;
        }
        // Tenant "a" holds its whole share; tenant "b" still gets the remaining global slot.
        tokio::time::timeout(std::time::Duration::from_secs(5), a.gated("b", async {}))
            .await
            .expect("tenant b starved by tenant a");
        tx.send(()).unwrap();
        hog.await.unwrap();
    }
}
