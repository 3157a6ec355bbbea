//! The run engine: workflow registration, run preparation, and the scheduler that drives each
//! run as a DAG (see `scheduler.rs`). The engine knows nothing about HTTP.

pub mod dag;
pub mod expr;
pub mod nodes;
pub mod registry;
mod scheduler;
pub mod subworkflow;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use chrono::Utc;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tracing::Instrument;

use crate::events::EventLog;
use crate::ops::admission::{Admission, Limits, RunSlot};
use crate::store::shared::SharedStore;
use crate::store::{
    ts, CreateRunOutcome, IdempotencyClaim, NewEvent, RunRecord, RunUpdate, Store, StoreError,
    StoredWorkflow,
};
use dag::{Graph, Problem};
pub use registry::{
    EmittedEvent, NodeContext, NodeExecutor, NodeInvocation, NodeOutcome, NodeRegistry, NodeResult,
};

/// Canonical JSON (object keys sorted recursively, no whitespace) — for digests.
pub fn canonical_json(v: &Value) -> String {
    fn canon(v: &Value) -> Value {
        match v {
            Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                let mut out = Map::new();
                for k in keys {
                    out.insert(k.clone(), canon(&m[k]));
                }
                Value::Object(out)
            }
            Value::Array(a) => Value::Array(a.iter().map(canon).collect()),
            other => other.clone(),
        }
    }
    canon(v).to_string()
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

#[derive(Debug)]
pub enum EngineError {
    Invalid(Vec<Problem>),
    WorkflowNotFound(String),
    Store(StoreError),
}

impl From<StoreError> for EngineError {
    fn from(e: StoreError) -> Self {
        EngineError::Store(e)
    }
}

/// The `openwop.run` span (observability.md §"Span attributes"): every log line written while
/// the run executes carries its run id, workflow, tenant and correlation id (the W3C trace id,
/// persisted with the run, so a restart or another process continues the same trace).
/// Started from a request, it nests under that request's span.
fn run_span(run: &RunRecord) -> tracing::Span {
    let (trace, parent) = crate::telemetry::trace::run_trace(run);
    tracing::info_span!(
        "openwop.run",
        openwop.run_id = %run.run_id,
        openwop.workflow_id = %run.workflow_id,
        openwop.tenant_id = %run.tenant_id,
        openwop.scope_id = run.options.get("scopeId").and_then(serde_json::Value::as_str),
        openwop.protocol_version = crate::PROTOCOL_VERSION,
        openwop.parent.run_id = run.parent_run_id.as_deref(),
        openwop.parent.node_id = run.parent_node_id.as_deref(),
        correlation_id = %trace.trace_id,
        trace_id = %trace.trace_id,
        span_id = %trace.span_id,
        parent_span_id = parent.as_deref(),
    )
}

/// What `POST /v1/runs` needs from the engine before it stores the run.
pub struct PreparedRun {
    pub workflow: StoredWorkflow,
    pub variables: Value,
}

impl PreparedRun {
    /// The new run's record: a fresh id, status `pending`, no parent.
    pub fn into_record(
        self,
        tenant_id: String,
        principal_id: String,
        inputs: Value,
        options: Value,
    ) -> RunRecord {
        let now = ts(Utc::now());
        RunRecord {
            run_id: format!("run-{}", uuid::Uuid::now_v7()),
            workflow_id: self.workflow.id,
            definition_digest: self.workflow.digest,
            tenant_id,
            principal_id,
            status: "pending".into(),
            inputs,
            variables: self.variables,
            options,
            current_node_id: None,
            error: None,
            outputs: None,
            created_at: now.clone(),
            started_at: None,
            completed_at: None,
            updated_at: now,
            parent_run_id: None,
            parent_node_id: None,
        }
    }
}

/// Why a run is being cancelled. A cascade from a parent run (`core.subWorkflow`) carries the
/// parent's id so `run.cancelled` can say so (interrupt-profiles.md, cascade-cancel profile);
/// direct cancellations never set it.
#[derive(Debug, Clone)]
pub struct CancelSignal {
    pub reason: String,
    pub parent_run_id: Option<String>,
}

impl CancelSignal {
    pub fn direct(reason: impl Into<String>) -> Self {
        CancelSignal {
            reason: reason.into(),
            parent_run_id: None,
        }
    }

    /// One string for the cross-process cancel notice: a cascade appends `\u{1f}parentRunId`;
    /// a direct reason has that separator blanked so it can never pose as a cascade.
    pub fn to_wire(&self) -> String {
        match &self.parent_run_id {
            None => self.reason.replace(WIRE_SEP, " "),
            Some(p) => format!("{}{WIRE_SEP}{p}", self.reason),
        }
    }

    pub fn from_wire(s: &str) -> Self {
        match s.split_once(WIRE_SEP) {
            Some((reason, parent)) => CancelSignal {
                reason: reason.to_string(),
                parent_run_id: Some(parent.to_string()),
            },
            None => CancelSignal::direct(s),
        }
    }

    /// The `run.cancelled` payload of `run`. A cascade names the parent run and the parent's
    /// node that started this run (the cascade-cancel profile keeps that linkage on the event).
    pub fn payload(&self, run: &RunRecord) -> Value {
        match &self.parent_run_id {
            None => json!({"reason": self.reason, "cancelledBy": "client"}),
            Some(p) => {
                let mut v =
                    json!({"reason": self.reason, "cancelledBy": "parent", "parentRunId": p});
                if let Some(n) = &run.parent_node_id {
                    v["parentNodeId"] = json!(n);
                }
                v
            }
        }
    }
}

const WIRE_SEP: char = '\u{1f}';

/// A run executing in this process: its cancel signal and its live variable bag (the one the
/// driver evaluates expressions against; writes go through the store first).
struct LiveRun {
    cancel: watch::Sender<Option<CancelSignal>>,
    variables: Arc<tokio::sync::Mutex<Value>>,
}

pub enum CancelOutcome {
    /// Signalled a live run; it will append `run.cancelled` shortly.
    Cancelling,
    /// The run was not executing here; `run.cancelled` has been appended.
    Cancelled,
    AlreadyTerminal(String),
    NotFound,
}

pub struct Engine {
    store: Arc<dyn Store>,
    events: Arc<EventLog>,
    registry: Arc<NodeRegistry>,
    interrupts: Arc<crate::interrupts::Interrupts>,
    graphs: RwLock<HashMap<String, Arc<Graph>>>,
    /// Live runs → their cancel signal and variables. Held only for O(1) inserts/lookups.
    active: Mutex<HashMap<String, LiveRun>>,
    /// Set when the store is shared with other processes (Postgres): cancels of runs another
    /// process executes are routed to it.
    shared: std::sync::OnceLock<Arc<dyn SharedStore>>,
    /// Run slots and node execution slots (ops/admission.rs).
    admission: Arc<Admission>,
}

impl Engine {
    pub fn new(
        store: Arc<dyn Store>,
        events: Arc<EventLog>,
        registry: Arc<NodeRegistry>,
        interrupts: Arc<crate::interrupts::Interrupts>,
    ) -> Arc<Self> {
        Self::with_admission(
            store,
            events,
            registry,
            interrupts,
            Admission::new(Limits::default()),
        )
    }

    /// An engine whose runs and node executions are bounded by `admission`.
    pub fn with_admission(
        store: Arc<dyn Store>,
        events: Arc<EventLog>,
        registry: Arc<NodeRegistry>,
        interrupts: Arc<crate::interrupts::Interrupts>,
        admission: Arc<Admission>,
    ) -> Arc<Self> {
        Arc::new(Engine {
            store,
            events,
            registry,
            interrupts,
            graphs: RwLock::new(HashMap::new()),
            active: Mutex::new(HashMap::new()),
            shared: std::sync::OnceLock::new(),
            admission,
        })
    }

    /// Declare the store shared with other processes (see [`crate::cluster`]).
    pub fn set_shared(&self, shared: Arc<dyn SharedStore>) {
        self.interrupts.set_shared();
        let _ = self.shared.set(shared);
    }

    /// Whether this process is executing `run_id` right now.
    pub fn is_active(&self, run_id: &str) -> bool {
        self.active.lock().unwrap().contains_key(run_id)
    }

    pub fn admission(&self) -> &Arc<Admission> {
        &self.admission
    }

    pub fn registry(&self) -> &Arc<NodeRegistry> {
        &self.registry
    }

    pub fn interrupts(&self) -> &Arc<crate::interrupts::Interrupts> {
        &self.interrupts
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Validate a definition against the schema and the node registry.
    pub fn validate(&self, def: &Value) -> Result<Graph, Vec<Problem>> {
        dag::build(def, &self.registry)
    }

    /// Validate and store a definition (new version of `def.id` for `tenant`;
    /// [`crate::store::SHARED_TENANT`] for the operator's definitions).
    pub async fn register_workflow(
        &self,
        tenant: &str,
        def: Value,
        source: &str,
    ) -> Result<StoredWorkflow, EngineError> {
        let graph = self.validate(&def).map_err(EngineError::Invalid)?;
        let digest = sha256_hex(canonical_json(&def).as_bytes());
        let now = ts(Utc::now());
        let created_at = match self.store.get_workflow(tenant, &graph.id).await? {
            Some(existing) if existing.tenant_id == tenant => existing.created_at,
            _ => now.clone(),
        };
        let wf = StoredWorkflow {
            tenant_id: tenant.to_string(),
            id: graph.id.clone(),
            version: def
                .get("version")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            digest: digest.clone(),
            definition: def,
            source: source.to_string(),
            created_at,
            updated_at: now,
        };
        self.store.put_workflow(&wf).await?;
        self.graphs.write().unwrap().insert(digest, Arc::new(graph));
        Ok(wf)
    }

    /// Resolve the workflow (as `tenant` sees it) and the run variables for a new run.
    pub async fn prepare_run(
        &self,
        tenant: &str,
        workflow_id: &str,
        inputs: &Map<String, Value>,
    ) -> Result<PreparedRun, EngineError> {
        let wf = self
            .store
            .get_workflow(tenant, workflow_id)
            .await?
            .ok_or_else(|| EngineError::WorkflowNotFound(workflow_id.to_string()))?;
        let graph = self.graph_for(&wf.digest).await.map_err(|e| {
            EngineError::Invalid(vec![Problem {
                path: "/workflowId".into(),
                code: "workflow_invalid",
                message: e,
            }])
        })?;
        let variables = dag::resolve_variables(&graph, inputs).map_err(EngineError::Invalid)?;
        Ok(PreparedRun {
            workflow: wf,
            variables,
        })
    }

    /// The validated graph for a pinned definition (cached by digest).
    async fn graph_for(&self, digest: &str) -> Result<Arc<Graph>, String> {
        if let Some(g) = self.graphs.read().unwrap().get(digest) {
            return Ok(g.clone());
        }
        let def = self
            .store
            .get_definition(digest)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("workflow definition {digest} is missing"))?;
        let graph = dag::build(&def, &self.registry).map_err(|problems| {
            problems
                .iter()
                .map(|p| format!("{}: {}", p.path, p.message))
                .collect::<Vec<_>>()
                .join("; ")
        })?;
        let graph = Arc::new(graph);
        self.graphs
            .write()
            .unwrap()
            .insert(digest.to_string(), graph.clone());
        Ok(graph)
    }

    /// Start executing a freshly created run in the background. It is counted in flight
    /// without an admission check (client requests go through [`Engine::create_and_start`]).
    pub fn start(self: &Arc<Self>, run: RunRecord) {
        self.spawn(run, scheduler::Begin::Fresh, None);
    }

    /// Create a run that passed admission and start it: the run row and its `run.started`
    /// event are committed together (one store round trip instead of two), announced to
    /// subscribers and sinks, and the driver carries on from there. `slot` is held until the
    /// driver ends; a replayed or mismatched idempotent request starts nothing.
    pub async fn create_and_start(
        self: &Arc<Self>,
        mut run: RunRecord,
        claim: Option<&IdempotencyClaim>,
        slot: RunSlot,
    ) -> Result<CreateRunOutcome, StoreError> {
        let (event, update) = scheduler::started_event(&run);
        let (outcome, records) = self
            .store
            .create_started_run(&run, claim, vec![event], update.clone())
            .await?;
        if matches!(outcome, CreateRunOutcome::Created) {
            self.events.announce(&run.run_id, &records);
            let now = records
                .last()
                .map(|r| r.timestamp.clone())
                .unwrap_or_default();
            crate::store::live::apply_update(&mut run, &update, &now);
            match records.last() {
                Some(r) => {
                    let begin = scheduler::Begin::Started(r.event_id.clone());
                    self.spawn(run, begin, Some(slot))
                }
                None => self.spawn(run, scheduler::Begin::Fresh, Some(slot)),
            }
        }
        Ok(outcome)
    }

    fn spawn(self: &Arc<Self>, run: RunRecord, begin: scheduler::Begin, slot: Option<RunSlot>) {
        let slot = slot.unwrap_or_else(|| self.admission.force_admit(&run.tenant_id));
        let initial = if run.status == "cancelling" {
            Some(CancelSignal::direct("cancel requested before restart"))
        } else {
            None
        };
        let (tx, rx) = watch::channel(initial);
        let variables = Arc::new(tokio::sync::Mutex::new(run.variables.clone()));
        self.active.lock().unwrap().insert(
            run.run_id.clone(),
            LiveRun {
                cancel: tx,
                variables: variables.clone(),
            },
        );
        let engine = self.clone();
        let span = run_span(&run);
        tokio::spawn(async move {
            let run_id = run.run_id.clone();
            match scheduler::drive(engine.clone(), run, begin, rx, variables).await {
                Ok(()) => {}
                // Another process took the run over (our lease had expired): it finishes it.
                Err(StoreError::LeaseLost) => {
                    tracing::warn!(run_id = %run_id, "run taken over by another process; stopped driving it")
                }
                Err(e) => {
                    tracing::error!(run_id = %run_id, error = %e, "run driver failed; failing the run");
                    engine
                        .fail_run(
                            &run_id,
                            "internal_error",
                            &format!("the run could not continue: {e}"),
                        )
                        .await;
                }
            }
            engine.active.lock().unwrap().remove(&run_id);
            drop(slot);
        }.instrument(span));
    }

    /// Best-effort terminal failure for a run whose driver could not continue (storage errors),
    /// so it is never left hanging; retried briefly, and recovery covers a crash in between.
    async fn fail_run(&self, run_id: &str, code: &str, message: &str) {
        for attempt in 0..5u64 {
            let ev = NewEvent::new(
                "run.failed",
                json!({"error": {"code": code, "message": message}}),
            );
            let update = RunUpdate {
                status: Some("failed".into()),
                error: Some(json!({"code": code, "message": message})),
                current_node_id: Some(None),
                completed_at: Some(ts(Utc::now())),
                ..Default::default()
            };
            match self.events.append(run_id, vec![ev], Some(update)).await {
                Ok(_)
                | Err(StoreError::RunTerminal)
                | Err(StoreError::RunNotFound)
                | Err(StoreError::LeaseLost) => return,
                Err(e) => {
                    tracing::warn!(run_id, error = %e, "could not record run failure; retrying");
                    tokio::time::sleep(std::time::Duration::from_millis(100 << attempt)).await;
                }
            }
        }
    }

    /// Resume (or fail) every run that a previous process left unfinished. On a shared store
    /// these are the runs whose lease expired (their process died); this is called periodically
    /// to take them over.
    pub async fn recover(self: &Arc<Self>) -> anyhow::Result<usize> {
        let runs = self.store.list_unfinished_runs().await?;
        let mut n = 0;
        let mut orphans = Vec::new();
        for run in runs {
            // Our own lease may have lapsed (e.g. the database was unreachable for a while)
            // while the driver kept going: never start a second driver for the same run.
            if self.is_active(&run.run_id) {
                continue;
            }
            tracing::info!(run_id = %run.run_id, status = %run.status, "resuming unfinished run");
            if let Some(parent) = &run.parent_run_id {
                orphans.push((run.run_id.clone(), parent.clone()));
            }
            self.spawn(run, scheduler::Begin::Resume, None);
            n += 1;
        }
        // A crash between a parent's end and its cascade leaves children running: finish the
        // cascade now (a parent still running keeps its children).
        for (child, parent) in orphans {
            if let Some(p) = self.store.get_run(&parent).await? {
                if p.is_terminal() {
                    self.cascade_into(&child, &parent, subworkflow::cascade_reason(&p.status))
                        .await?;
                }
            }
        }
        Ok(n)
    }

    /// Signal a run executing here to cancel (a request that arrived on another process;
    /// `wire_reason` is [`CancelSignal::to_wire`]).
    pub fn cancel_local(&self, run_id: &str, wire_reason: &str) -> bool {
        match self.active.lock().unwrap().get(run_id) {
            Some(live) => {
                live.cancel
                    .send_replace(Some(CancelSignal::from_wire(wire_reason)));
                true
            }
            None => false,
        }
    }

    /// Overwrite some of a run's variables now (the `runs/{id}/variables` test seam; a live
    /// run's expressions see the new values from its next scheduling pass). Each write is
    /// logged as `variable.changed`. Refuses a terminal run with [`StoreError::RunTerminal`].
    pub async fn set_variables(
        &self,
        run_id: &str,
        writes: Map<String, Value>,
    ) -> Result<Value, StoreError> {
        let live = self
            .active
            .lock()
            .unwrap()
            .get(run_id)
            .map(|l| l.variables.clone());
        match live {
            Some(vars) => {
                let mut current = vars.lock().await;
                let next = self.write_variables(run_id, &current, writes).await?;
                *current = next.clone();
                Ok(next)
            }
            None => {
                let run = self
                    .store
                    .get_run(run_id)
                    .await?
                    .ok_or(StoreError::RunNotFound)?;
                self.write_variables(run_id, &run.variables, writes).await
            }
        }
    }

    async fn write_variables(
        &self,
        run_id: &str,
        current: &Value,
        writes: Map<String, Value>,
    ) -> Result<Value, StoreError> {
        let mut next = current.as_object().cloned().unwrap_or_default();
        let mut events = Vec::with_capacity(writes.len());
        for (name, value) in writes {
            events.push(NewEvent::new(
                "variable.changed",
                json!({"name": name, "value": value, "source": "test-seam"}),
            ));
            next.insert(name, value);
        }
        let next = Value::Object(next);
        let update = RunUpdate {
            variables: Some(next.clone()),
            ..Default::default()
        };
        self.events.append(run_id, events, Some(update)).await?;
        Ok(next)
    }

    pub async fn cancel(
        &self,
        run_id: &str,
        reason: Option<String>,
    ) -> Result<CancelOutcome, StoreError> {
        let reason = reason.unwrap_or_else(|| "cancelled by client".to_string());
        self.cancel_with(run_id, CancelSignal::direct(reason)).await
    }

    /// Cancel a run for `signal`. A live run is signalled (its driver cascades to its children
    /// and appends `run.cancelled`); an idle one is finished here, children included.
    pub async fn cancel_with(
        &self,
        run_id: &str,
        signal: CancelSignal,
    ) -> Result<CancelOutcome, StoreError> {
        let signalled = {
            let active = self.active.lock().unwrap();
            match active.get(run_id) {
                Some(live) => {
                    live.cancel.send_replace(Some(signal.clone()));
                    true
                }
                None => false,
            }
        };
        if signalled {
            self.store.set_run_status(run_id, "cancelling").await?;
            return Ok(CancelOutcome::Cancelling);
        }
        let Some(run) = self.store.get_run(run_id).await? else {
            return Ok(CancelOutcome::NotFound);
        };
        if run.is_terminal() {
            return Ok(CancelOutcome::AlreadyTerminal(run.status));
        }
        // Shared store, executed elsewhere: only the run's lease owner writes its log, so mark
        // it `cancelling` and tell the owner, which appends `run.cancelled` — or, if the owner
        // died, the process that takes the run over does (it resumes a `cancelling` run as
        // cancelled).
        if let Some(shared) = self.shared.get() {
            return Ok(if shared.request_cancel(run_id, &signal.to_wire()).await? {
                CancelOutcome::Cancelling
            } else {
                let status = self.store.get_run(run_id).await?.map(|r| r.status);
                CancelOutcome::AlreadyTerminal(status.unwrap_or_default())
            });
        }
        Box::pin(self.cancel_children(&run, None, "parent-cancelled")).await?;
        let ev = NewEvent::new("run.cancelled", signal.payload(&run));
        let update = RunUpdate {
            status: Some("cancelled".into()),
            current_node_id: Some(None),
            completed_at: Some(ts(Utc::now())),
            ..Default::default()
        };
        match self.events.append(run_id, vec![ev], Some(update)).await {
            Ok(_) => Ok(CancelOutcome::Cancelled),
            Err(StoreError::RunTerminal) => {
                let status = self
                    .store
                    .get_run(run_id)
                    .await?
                    .map(|r| r.status)
                    .unwrap_or_default();
                Ok(CancelOutcome::AlreadyTerminal(status))
            }
            Err(e) => Err(e),
        }
    }
}
