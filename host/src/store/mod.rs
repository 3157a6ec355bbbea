//! Persistence seam. Everything the host keeps across restarts goes through the [`Store`]
//! trait, implemented by `sqlite.rs` (embedded, one process) and `postgres.rs` (several
//! processes sharing one database; see docs/postgres.md). The engine and the API do not know
//! which one they talk to.

pub mod audit;
#[cfg(test)]
mod contract;
pub mod interrupts;
pub mod live;
pub mod packs;
pub mod postgres;
pub mod retention;
pub(crate) mod rows;
pub mod shared;
pub mod sqlite;
pub mod webhooks;

use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Map, Value};

/// Event types that end a run. Exactly one of them is ever appended per run, and it is last.
pub const TERMINAL_EVENT_TYPES: [&str; 3] = ["run.completed", "run.failed", "run.cancelled"];

pub fn is_terminal_event(event_type: &str) -> bool {
    TERMINAL_EVENT_TYPES.contains(&event_type)
}

pub fn is_terminal_status(status: &str) -> bool {
    matches!(status, "completed" | "failed" | "cancelled")
}

/// RFC 3339 with millisecond precision, always UTC (`2026-01-01T00:00:00.000Z`).
pub fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("run not found")]
    RunNotFound,
    /// The run already has its terminal event; nothing more may be appended.
    #[error("run is already terminal")]
    RunTerminal,
    /// Another live process holds this run's execution lease (shared store only): the caller
    /// is not the run's executor any more and must stop driving it.
    #[error("run is executed by another process")]
    LeaseLost,
    #[error("storage error: {0}")]
    Backend(String),
}

/// A batch may end with the terminal event but never continue after it.
pub(crate) fn terminal_is_last(events: &[NewEvent]) -> StoreResult<()> {
    match events.iter().position(|e| is_terminal_event(&e.event_type)) {
        Some(pos) if pos + 1 != events.len() => Err(StoreError::Backend(
            "event appended after the terminal event".into(),
        )),
        _ => Ok(()),
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        StoreError::Backend(e.to_string())
    }
}

impl From<serde_json::Error> for StoreError {
    fn from(e: serde_json::Error) -> Self {
        StoreError::Backend(format!("corrupt json: {e}"))
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// The tenant of operator-provided workflow definitions (`--workflows`, `--fixtures`): every
/// tenant sees them, and a tenant's own definition of the same id takes precedence for it.
pub const SHARED_TENANT: &str = "";

/// A registered workflow definition (already validated by the engine).
#[derive(Debug, Clone)]
pub struct StoredWorkflow {
    /// Owning tenant; [`SHARED_TENANT`] for the operator's definitions, visible to all.
    pub tenant_id: String,
    pub id: String,
    pub version: String,
    /// sha256 of the canonical definition JSON; runs pin this.
    pub digest: String,
    pub definition: Value,
    /// Where it came from: `api`, `workflows-dir`, `fixtures`.
    pub source: String,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Clone)]
pub struct RunRecord {
    pub run_id: String,
    pub workflow_id: String,
    pub definition_digest: String,
    pub tenant_id: String,
    pub principal_id: String,
    pub status: String,
    pub inputs: Value,
    pub variables: Value,
    /// Request options echoed on the snapshot: tags, metadata, scopeId, callbackUrl, configurable.
    pub options: Value,
    pub current_node_id: Option<String>,
    pub error: Option<Value>,
    pub outputs: Option<Value>,
    pub created_at: String,
    pub started_at: Option<String>,
    pub completed_at: Option<String>,
    pub updated_at: String,
    /// Set on child runs started by `core.subWorkflow`: the dispatching run and node.
    pub parent_run_id: Option<String>,
    pub parent_node_id: Option<String>,
}

impl RunRecord {
    pub fn is_terminal(&self) -> bool {
        is_terminal_status(&self.status)
    }

    /// The RunSnapshot wire shape (schemas/run-snapshot.schema.json).
    pub fn snapshot(&self) -> Value {
        let mut m = Map::new();
        m.insert("runId".into(), json!(self.run_id));
        m.insert("workflowId".into(), json!(self.workflow_id));
        m.insert("status".into(), json!(self.status));
        m.insert(
            "owner".into(),
            json!({"tenant": self.tenant_id, "principal": self.principal_id}),
        );
        if let Some(n) = &self.current_node_id {
            m.insert("currentNodeId".into(), json!(n));
        }
        m.insert("inputs".into(), self.inputs.clone());
        m.insert("variables".into(), self.variables.clone());
        m.insert("createdAt".into(), json!(self.created_at));
        m.insert("startedAt".into(), json!(self.started_at));
        m.insert("completedAt".into(), json!(self.completed_at));
        m.insert("updatedAt".into(), json!(self.updated_at));
        if let Some(e) = &self.error {
            m.insert("error".into(), e.clone());
        }
        if let Some(o) = &self.outputs {
            m.insert("outputs".into(), o.clone());
        }
        if let (Some(p), Some(n)) = (&self.parent_run_id, &self.parent_node_id) {
            m.insert("parentRunId".into(), json!(p));
            m.insert("parentNodeId".into(), json!(n));
        }
        if let Value::Object(opts) = &self.options {
            for (k, v) in opts {
                m.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
        Value::Object(m)
    }
}

/// An event as produced by the engine, before the store assigns its sequence.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub event_id: String,
    pub event_type: String,
    pub node_id: Option<String>,
    pub causation_id: Option<String>,
    pub payload: Value,
    pub timestamp: String,
}

impl NewEvent {
    pub fn new(event_type: impl Into<String>, payload: Value) -> Self {
        NewEvent {
            event_id: format!("evt_{}", uuid::Uuid::now_v7().simple()),
            event_type: event_type.into(),
            node_id: None,
            causation_id: None,
            payload,
            timestamp: ts(Utc::now()),
        }
    }
    pub fn node(mut self, node_id: impl Into<String>) -> Self {
        self.node_id = Some(node_id.into());
        self
    }
    pub fn caused_by(mut self, event_id: Option<&str>) -> Self {
        self.causation_id = event_id.map(str::to_string);
        self
    }
    /// The record this event becomes once committed at `sequence`.
    pub(crate) fn committed(self, run_id: &str, sequence: i64) -> EventRecord {
        EventRecord {
            run_id: run_id.to_string(),
            sequence,
            event_id: self.event_id,
            event_type: self.event_type,
            node_id: self.node_id,
            causation_id: self.causation_id,
            payload: self.payload,
            timestamp: self.timestamp,
        }
    }
}

/// A committed event (RunEventDoc).
#[derive(Debug, Clone)]
pub struct EventRecord {
    pub run_id: String,
    pub sequence: i64,
    pub event_id: String,
    pub event_type: String,
    pub node_id: Option<String>,
    pub causation_id: Option<String>,
    pub payload: Value,
    pub timestamp: String,
}

impl EventRecord {
    pub fn is_terminal(&self) -> bool {
        is_terminal_event(&self.event_type)
    }

    /// RunEventDoc (schemas/run-event.schema.json, closed): only the schema's keys.
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("eventId".into(), json!(self.event_id));
        m.insert("runId".into(), json!(self.run_id));
        m.insert("sequence".into(), json!(self.sequence));
        m.insert("type".into(), json!(self.event_type));
        m.insert("payload".into(), self.payload.clone());
        m.insert("timestamp".into(), json!(self.timestamp));
        if let Some(n) = &self.node_id {
            m.insert("nodeId".into(), json!(n));
        }
        if let Some(c) = &self.causation_id {
            m.insert("causationId".into(), json!(c));
        }
        m.insert("schemaVersion".into(), json!(1));
        m.insert("engineVersion".into(), json!(crate::ENGINE_VERSION));
        Value::Object(m)
    }
}

/// Run-row changes committed in the same transaction as a batch of events.
#[derive(Debug, Clone, Default)]
pub struct RunUpdate {
    pub status: Option<String>,
    /// `Some(None)` clears the current node.
    pub current_node_id: Option<Option<String>>,
    pub error: Option<Value>,
    pub outputs: Option<Value>,
    pub started_at: Option<String>,
    pub completed_at: Option<String>,
    /// Replaces the run's variable bag (e.g. a `core.subWorkflow` outputMapping), committed
    /// with the event that explains the change.
    pub variables: Option<Value>,
}

impl RunUpdate {
    pub fn status(s: &str) -> Self {
        RunUpdate {
            status: Some(s.to_string()),
            ..Default::default()
        }
    }
}

/// A run started by `core.subWorkflow`, as listed on its parent (`RunSnapshot.childRuns`).
#[derive(Debug, Clone)]
pub struct ChildRun {
    pub run_id: String,
    pub workflow_id: String,
    pub parent_node_id: String,
    pub status: String,
}

impl ChildRun {
    pub fn to_json(&self) -> Value {
        json!({
            "runId": self.run_id,
            "workflowId": self.workflow_id,
            "parentNodeId": self.parent_node_id,
            "status": self.status,
        })
    }
}

/// Idempotency claim stored atomically with a new run.
#[derive(Debug, Clone)]
pub struct IdempotencyClaim {
    pub scope_key: String,
    pub request_digest: String,
    pub response_status: u16,
    pub response_body: Value,
}

#[derive(Debug, Clone)]
pub enum CreateRunOutcome {
    Created,
    /// Same key, same request: the cached final response.
    Replay {
        status: u16,
        body: Value,
    },
    /// Same key, different request.
    Mismatch,
}

#[async_trait]
pub trait Store:
    webhooks::WebhookStore
    + audit::AuditStore
    + packs::PackStore
    + interrupts::InterruptStore
    + retention::RetentionStore
    + Send
    + Sync
    + 'static
{
    async fn put_workflow(&self, wf: &StoredWorkflow) -> StoreResult<()>;
    /// `id` as `tenant` sees it: its own definition, else the shared one.
    async fn get_workflow(&self, tenant: &str, id: &str) -> StoreResult<Option<StoredWorkflow>>;
    /// Every definition `tenant` sees (its own, and the shared ones it does not shadow), by id.
    async fn list_workflows(&self, tenant: &str) -> StoreResult<Vec<StoredWorkflow>>;
    /// A pinned definition by digest (what a run executes).
    async fn get_definition(&self, digest: &str) -> StoreResult<Option<Value>>;

    /// Insert a new run (status `pending`, no events). With an idempotency claim, the check and
    /// the insert are one atomic step: concurrent duplicates create exactly one run.
    async fn create_run(
        &self,
        run: &RunRecord,
        idem: Option<&IdempotencyClaim>,
    ) -> StoreResult<CreateRunOutcome>;
    /// [`Store::create_run`] and, only if the run was created, its first events (`run.started`)
    /// with `update`: what every new run does first. The default is the two calls in turn (a
    /// crash between them leaves a run without events, which recovery starts); a backend with a
    /// group-committing writer does both in one transaction, saving a commit per run.
    async fn create_started_run(
        &self,
        run: &RunRecord,
        idem: Option<&IdempotencyClaim>,
        events: Vec<NewEvent>,
        update: RunUpdate,
    ) -> StoreResult<(CreateRunOutcome, Vec<EventRecord>)> {
        let outcome = self.create_run(run, idem).await?;
        if !matches!(outcome, CreateRunOutcome::Created) {
            return Ok((outcome, Vec::new()));
        }
        let records = self
            .append_events(&run.run_id, events, Some(update))
            .await?;
        Ok((outcome, records))
    }
    async fn get_run(&self, run_id: &str) -> StoreResult<Option<RunRecord>>;
    /// Runs without a terminal event that this process should resume now (after a restart).
    /// On a shared store these are the runs whose execution lease was free or expired, and the
    /// call claims them for this process.
    async fn list_unfinished_runs(&self) -> StoreResult<Vec<RunRecord>>;
    /// Change a non-terminal run's status without an event (e.g. `cancelling`).
    /// Returns false when the run is already terminal or unknown.
    async fn set_run_status(&self, run_id: &str, status: &str) -> StoreResult<bool>;

    /// Child runs whose `parent_run_id` is `parent_run_id`, oldest first.
    async fn list_child_runs(&self, parent_run_id: &str) -> StoreResult<Vec<ChildRun>>;

    /// Append events (assigning gap-free sequences) and apply `update`, in one transaction.
    /// Refuses with [`StoreError::RunTerminal`] once the terminal event is in the log.
    async fn append_events(
        &self,
        run_id: &str,
        events: Vec<NewEvent>,
        update: Option<RunUpdate>,
    ) -> StoreResult<Vec<EventRecord>>;
    /// Events with `sequence > after`, ascending, at most `limit`.
    async fn list_events(
        &self,
        run_id: &str,
        after: i64,
        limit: i64,
    ) -> StoreResult<Vec<EventRecord>>;
}
