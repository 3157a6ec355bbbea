//! SQLite backend: WAL journal, `synchronous=NORMAL`, one writer connection and a bounded pool
//! of readers.
//!
//! Durability trade-off (documented in docs/durability.md): in WAL mode with
//! `synchronous=NORMAL` a commit is appended to the WAL without an fsync; the WAL is fsynced at
//! checkpoints. A committed transaction survives a process crash (`kill -9`) — the WAL is in the
//! OS page cache — but the last few commits can be lost on power failure / kernel crash. Set
//! `WOPBOX_SQLITE_SYNC=FULL` to fsync every commit when that matters more than throughput.
//!
//! All writes go through a single connection, so SQLite never sees two writers (no
//! `SQLITE_BUSY` storms) and transactions such as "check idempotency key, insert run" are
//! serialised without any lock in the engine. Event appends are group-committed by a writer
//! task (see [`append_loop`]).

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use serde_json::Value;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::SqlitePool;
use tokio::sync::{mpsc, oneshot};

use super::*;
use crate::store::rows;

mod packs;

mod audit;
mod interrupts;
mod webhooks;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("src/store/migrations");

pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
    /// Appends go to the group-commit writer task.
    appends: mpsc::Sender<AppendOp>,
}

/// Most appends committed in one transaction.
const MAX_BATCH: usize = 256;

struct AppendOp {
    run_id: String,
    events: Vec<NewEvent>,
    update: Option<RunUpdate>,
    reply: oneshot::Sender<StoreResult<Vec<EventRecord>>>,
}

/// Group commit: appends queued while a transaction is in flight are committed together in the
/// next one (up to `MAX_BATCH`). Each caller is answered only after its commit, so
/// "committed before acknowledged" holds; concurrent runs share one commit instead of paying
/// one each. A batch that hits a database error is retried op by op, so one bad append cannot
/// fail its neighbours.
async fn append_loop(writer: SqlitePool, mut rx: mpsc::Receiver<AppendOp>) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        let inputs: Vec<_> = batch
            .iter()
            .map(|op| (op.run_id.clone(), op.events.clone(), op.update.clone()))
            .collect();
        match commit_batch(&writer, inputs).await {
            Ok(results) => {
                for (op, r) in batch.into_iter().zip(results) {
                    let _ = op.reply.send(r);
                }
            }
            Err(e) if batch.len() == 1 => {
                let op = batch.pop().unwrap();
                let _ = op.reply.send(Err(e.into()));
            }
            Err(_) => {
                for op in batch {
                    let r = match commit_batch(
                        &writer,
                        vec![(op.run_id.clone(), op.events, op.update)],
                    )
                    .await
                    {
                        Ok(mut v) => v.pop().unwrap(),
                        Err(e) => Err(e.into()),
                    };
                    let _ = op.reply.send(r);
                }
            }
        }
    }
}

type AppendInput = (String, Vec<NewEvent>, Option<RunUpdate>);

/// One transaction for a batch of appends. The outer error aborts the whole batch (database
/// failure); inner errors are per-append refusals that wrote nothing.
async fn commit_batch(
    writer: &SqlitePool,
    batch: Vec<AppendInput>,
) -> Result<Vec<StoreResult<Vec<EventRecord>>>, sqlx::Error> {
    let mut tx = writer.begin().await?;
    let mut results = Vec::with_capacity(batch.len());
    for (run_id, events, update) in batch {
        results.push(append_in_tx(&mut tx, &run_id, events, update).await?);
    }
    tx.commit().await?;
    Ok(results)
}

async fn append_in_tx(
    tx: &mut sqlx::SqliteConnection,
    run_id: &str,
    events: Vec<NewEvent>,
    update: Option<RunUpdate>,
) -> Result<StoreResult<Vec<EventRecord>>, sqlx::Error> {
    // Refusals are decided before anything is written.
    if let Err(e) = terminal_is_last(&events) {
        return Ok(Err(e));
    }
    let row: Option<(i64, i64)> =
        sqlx::query_as("SELECT next_sequence, terminal FROM runs WHERE run_id = ?")
            .bind(run_id)
            .fetch_optional(&mut *tx)
            .await?;
    let Some((mut seq, terminal)) = row else {
        return Ok(Err(StoreError::RunNotFound));
    };
    if terminal != 0 {
        return Ok(Err(StoreError::RunTerminal));
    }
    let becomes_terminal = events
        .last()
        .map(|e| is_terminal_event(&e.event_type))
        .unwrap_or(false);
    let mut out = Vec::with_capacity(events.len());
    for ev in events {
        sqlx::query(
            "INSERT INTO run_events (run_id, sequence, event_id, type, node_id, causation_id, payload, timestamp)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(run_id)
        .bind(seq)
        .bind(&ev.event_id)
        .bind(&ev.event_type)
        .bind(&ev.node_id)
        .bind(&ev.causation_id)
        .bind(ev.payload.to_string())
        .bind(&ev.timestamp)
        .execute(&mut *tx)
        .await?;
        out.push(ev.committed(run_id, seq));
        seq += 1;
    }
    let u = update.unwrap_or_default();
    let (set_node, node) = match u.current_node_id {
        Some(n) => (1i64, n),
        None => (0i64, None),
    };
    sqlx::query(
        "UPDATE runs SET next_sequence = ?, terminal = ?, status = COALESCE(?, status),
           current_node_id = CASE WHEN ? = 1 THEN ? ELSE current_node_id END,
           error = COALESCE(?, error), outputs = COALESCE(?, outputs),
           started_at = COALESCE(?, started_at), completed_at = COALESCE(?, completed_at), updated_at = ?
         WHERE run_id = ?",
    )
    .bind(seq)
    .bind(becomes_terminal as i64)
    .bind(u.status)
    .bind(set_node)
    .bind(node)
    .bind(u.error.map(|v| v.to_string()))
    .bind(u.outputs.map(|v| v.to_string()))
    .bind(u.started_at)
    .bind(u.completed_at)
    .bind(ts(Utc::now()))
    .bind(run_id)
    .execute(&mut *tx)
    .await?;
    Ok(Ok(out))
}

impl SqliteStore {
    pub async fn open(data_dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(data_dir)?;
        let path = data_dir.join("wopbox.db");
        let sync = match std::env::var("WOPBOX_SQLITE_SYNC").ok().as_deref() {
            Some("FULL") | Some("full") => SqliteSynchronous::Full,
            _ => SqliteSynchronous::Normal,
        };
        let base = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(sync)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true)
            .pragma("temp_store", "memory")
            .pragma("cache_size", "-16000");
        // No ping before each acquire: on SQLite it is a round trip to the connection's worker
        // thread (two wake-ups) that can only fail if that thread died, which the next
        // statement reports anyway.
        let writer = SqlitePoolOptions::new()
            .test_before_acquire(false)
            .max_connections(1)
            .min_connections(1)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(base.clone())
            .await?;
        MIGRATOR.run(&writer).await?;
        let readers = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
            .clamp(2, 8);
        let reader = SqlitePoolOptions::new()
            .test_before_acquire(false)
            .max_connections(readers as u32)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(base)
            .await?;
        let (appends, rx) = mpsc::channel(4096);
        tokio::spawn(append_loop(writer.clone(), rx));
        Ok(SqliteStore {
            writer,
            reader,
            appends,
        })
    }
}

const WORKFLOW_COLS: &str =
    "w.tenant_id, w.id, w.version, w.digest, w.source, w.created_at, w.updated_at, v.definition";

#[async_trait]
impl Store for SqliteStore {
    async fn put_workflow(&self, wf: &StoredWorkflow) -> StoreResult<()> {
        let mut tx = self.writer.begin().await?;
        sqlx::query(
            "INSERT OR IGNORE INTO workflow_versions (digest, workflow_id, definition, created_at) VALUES (?, ?, ?, ?)",
        )
        .bind(&wf.digest)
        .bind(&wf.id)
        .bind(wf.definition.to_string())
        .bind(&wf.updated_at)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO workflows (tenant_id, id, version, digest, source, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)
             ON CONFLICT(tenant_id, id) DO UPDATE SET version = excluded.version, digest = excluded.digest,
               source = excluded.source, updated_at = excluded.updated_at",
        )
        .bind(&wf.tenant_id)
        .bind(&wf.id)
        .bind(&wf.version)
        .bind(&wf.digest)
        .bind(&wf.source)
        .bind(&wf.created_at)
        .bind(&wf.updated_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn get_workflow(&self, tenant: &str, id: &str) -> StoreResult<Option<StoredWorkflow>> {
        let row = sqlx::query(&format!(
            "SELECT {WORKFLOW_COLS} FROM workflows w JOIN workflow_versions v ON v.digest = w.digest WHERE w.id = ? AND w.tenant_id IN (?, '')
             ORDER BY w.tenant_id = '' LIMIT 1"
        ))
        .bind(id)
        .bind(tenant)
        .fetch_optional(&self.reader)
        .await?;
        row.as_ref().map(rows::workflow).transpose()
    }

    async fn list_workflows(&self, tenant: &str) -> StoreResult<Vec<StoredWorkflow>> {
        let rows = sqlx::query(&format!(
            "SELECT {WORKFLOW_COLS} FROM workflows w JOIN workflow_versions v ON v.digest = w.digest
             WHERE w.tenant_id IN (?, '') ORDER BY w.id, w.tenant_id = ''"
        ))
        .bind(tenant)
        .fetch_all(&self.reader)
        .await?;
        let all = rows
            .iter()
            .map(rows::workflow)
            .collect::<StoreResult<Vec<_>>>()?;
        Ok(rows::visible_workflows(all))
    }

    async fn get_definition(&self, digest: &str) -> StoreResult<Option<Value>> {
        let row: Option<(String,)> =
            sqlx::query_as("SELECT definition FROM workflow_versions WHERE digest = ?")
                .bind(digest)
                .fetch_optional(&self.reader)
                .await?;
        Ok(match row {
            Some((s,)) => Some(serde_json::from_str(&s)?),
            None => None,
        })
    }

    async fn create_run(
        &self,
        run: &RunRecord,
        idem: Option<&IdempotencyClaim>,
    ) -> StoreResult<CreateRunOutcome> {
        let mut tx = self.writer.begin().await?;
        if let Some(claim) = idem {
            if let Some(outcome) = claimed_before(&mut tx, claim).await? {
                tx.rollback().await?;
                return Ok(outcome);
            }
        }
        sqlx::query(
            "INSERT INTO runs (run_id, workflow_id, definition_digest, tenant_id, principal_id, status, terminal,
               inputs, variables, options, current_node_id, error, outputs, next_sequence, created_at, started_at,
               completed_at, updated_at)
             VALUES (?, ?, ?, ?, ?, ?, 0, ?, ?, ?, NULL, NULL, NULL, 0, ?, NULL, NULL, ?)",
        )
        .bind(&run.run_id)
        .bind(&run.workflow_id)
        .bind(&run.definition_digest)
        .bind(&run.tenant_id)
        .bind(&run.principal_id)
        .bind(&run.status)
        .bind(run.inputs.to_string())
        .bind(run.variables.to_string())
        .bind(run.options.to_string())
        .bind(&run.created_at)
        .bind(&run.updated_at)
        .execute(&mut *tx)
        .await?;
        if let Some(claim) = idem {
            record_claim(&mut tx, claim, &run.created_at).await?;
        }
        tx.commit().await?;
        Ok(CreateRunOutcome::Created)
    }

    async fn get_run(&self, run_id: &str) -> StoreResult<Option<RunRecord>> {
        let row = sqlx::query("SELECT * FROM runs WHERE run_id = ?")
            .bind(run_id)
            .fetch_optional(&self.reader)
            .await?;
        row.as_ref().map(rows::run).transpose()
    }

    async fn list_unfinished_runs(&self) -> StoreResult<Vec<RunRecord>> {
        let rows = sqlx::query("SELECT * FROM runs WHERE terminal = 0 ORDER BY created_at")
            .fetch_all(&self.writer)
            .await?;
        rows.iter().map(rows::run).collect()
    }

    async fn set_run_status(&self, run_id: &str, status: &str) -> StoreResult<bool> {
        let r = sqlx::query(
            "UPDATE runs SET status = ?, updated_at = ? WHERE run_id = ? AND terminal = 0",
        )
        .bind(status)
        .bind(ts(Utc::now()))
        .bind(run_id)
        .execute(&self.writer)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    async fn append_events(
        &self,
        run_id: &str,
        events: Vec<NewEvent>,
        update: Option<RunUpdate>,
    ) -> StoreResult<Vec<EventRecord>> {
        let (reply, rx) = oneshot::channel();
        let op = AppendOp {
            run_id: run_id.to_string(),
            events,
            update,
            reply,
        };
        self.appends
            .send(op)
            .await
            .map_err(|_| StoreError::Backend("event writer stopped".into()))?;
        rx.await
            .map_err(|_| StoreError::Backend("event writer stopped".into()))?
    }

    async fn list_events(
        &self,
        run_id: &str,
        after: i64,
        limit: i64,
    ) -> StoreResult<Vec<EventRecord>> {
        let rows = sqlx::query(
            "SELECT * FROM run_events WHERE run_id = ? AND sequence > ? ORDER BY sequence LIMIT ?",
        )
        .bind(run_id)
        .bind(after)
        .bind(limit)
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(rows::event).collect()
    }
}

/// Layer-1 idempotency, shared by every endpoint that takes an `Idempotency-Key` (runs,
/// webhooks): the outcome of an earlier request under the same scope key, if there was one —
/// a replay of its response for the same body, a mismatch for a different one.
pub(super) async fn claimed_before(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    claim: &IdempotencyClaim,
) -> StoreResult<Option<CreateRunOutcome>> {
    let existing: Option<(String, i64, String)> = sqlx::query_as(
        "SELECT request_digest, response_status, response_body FROM idempotency_keys WHERE scope_key = ?",
    )
    .bind(&claim.scope_key)
    .fetch_optional(&mut **tx)
    .await?;
    let Some((digest, status, body)) = existing else {
        return Ok(None);
    };
    Ok(Some(if digest == claim.request_digest {
        CreateRunOutcome::Replay {
            status: status as u16,
            body: serde_json::from_str(&body)?,
        }
    } else {
        CreateRunOutcome::Mismatch
    }))
}

/// Stores `claim` in the same transaction as the resource it created.
pub(super) async fn record_claim(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    claim: &IdempotencyClaim,
    created_at: &str,
) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO idempotency_keys (scope_key, request_digest, response_status, response_body, created_at)
         VALUES (?, ?, ?, ?, ?)",
    )
    .bind(&claim.scope_key)
    .bind(&claim.request_digest)
    .bind(i64::from(claim.response_status))
    .bind(claim.response_body.to_string())
    .bind(created_at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
