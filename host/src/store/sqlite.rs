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
//! serialised without any lock in the engine. Run creation, event appends, run status changes
//! and audit appends are group-committed by the writer thread (`sqlite/writer.rs`), which runs
//! them on that same connection; the rows of the runs this process created are cached
//! (`store/live.rs`), so **change `runs` rows only through those writer ops**, never with SQL of
//! your own on `self.writer`.

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::SqlitePool;

use super::live::LiveRuns;
use super::*;
use crate::store::rows;

mod packs;
mod writer;
use writer::{WriteOp, Writer};

mod audit;
mod interrupts;
mod retention;
mod webhooks;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("src/store/migrations");

pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
    /// Run creation, appends, status changes and audit appends: group-committed off sqlx's
    /// per-statement hand-offs (see `writer.rs`).
    hot: Writer,
    /// Rows and short logs of the runs this process created (see `store/live.rs`).
    live: Arc<LiveRuns>,
    /// `get_workflow` results by (tenant asking, id). Only `put_workflow` changes workflows;
    /// it invalidates this after its commit.
    workflows: RwLock<WorkflowCache>,
    /// Held (an exclusive lock on `<data>/wopbox.lock`) for as long as the store is open.
    _lock: std::fs::File,
}

#[derive(Default)]
struct WorkflowCache {
    /// Bumped by every `put_workflow`, so a lookup that raced one does not cache its result.
    generation: u64,
    map: HashMap<(String, String), StoredWorkflow>,
}

impl SqliteStore {
    pub async fn open(data_dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(data_dir)?;
        let lock = lock_data_dir(data_dir)?;
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
            // 4 MiB of page cache per connection (writer + readers). The cache fills with every
            // page a connection touches and keeps it until the limit, so the old 16 MiB × 3
            // connections grew the host by ~12 MiB while 1,000 runs parked (bench memory
            // scenario); the hot pages of appends and snapshot reads fit in 4 MiB, and a miss is
            // served from the kernel's page cache (the replay scenario did not slow down).
            .pragma("cache_size", "-4000");
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
        let live = Arc::new(LiveRuns::new());
        let hot = Writer::start(writer.clone(), live.clone())?;
        Ok(SqliteStore {
            writer,
            reader,
            hot,
            live,
            workflows: RwLock::default(),
            _lock: lock,
        })
    }
}

/// One process per SQLite data directory. SQLite runs have no leases: a second process on the
/// same database would resume the same unfinished runs and both would drive them, so it is
/// refused at start. The kernel drops the lock when the process exits, however it exits, so
/// a restart after a crash never finds it held.
fn lock_data_dir(data_dir: &Path) -> anyhow::Result<std::fs::File> {
    let path = data_dir.join("wopbox.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
            "{} is in use by another wopbox process (one process per SQLite data directory; \
             several processes share a Postgres database instead, see docs/postgres.md)",
            data_dir.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(anyhow::anyhow!("cannot lock {}: {e}", path.display()))
        }
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
        // Which tenants' lookups this changes depends on fallback to the shared tenant: drop
        // every cached lookup of this id.
        let mut cache = self.workflows.write().unwrap_or_else(|p| p.into_inner());
        cache.generation += 1;
        cache.map.retain(|(_, id), _| id != &wf.id);
        Ok(())
    }

    async fn get_workflow(&self, tenant: &str, id: &str) -> StoreResult<Option<StoredWorkflow>> {
        let key = (tenant.to_string(), id.to_string());
        let generation = {
            let cache = self.workflows.read().unwrap_or_else(|p| p.into_inner());
            if let Some(wf) = cache.map.get(&key) {
                return Ok(Some(wf.clone()));
            }
            cache.generation
        };
        let row = sqlx::query(&format!(
            "SELECT {WORKFLOW_COLS} FROM workflows w JOIN workflow_versions v ON v.digest = w.digest WHERE w.id = ? AND w.tenant_id IN (?, '')
             ORDER BY w.tenant_id = '' LIMIT 1"
        ))
        .bind(id)
        .bind(tenant)
        .fetch_optional(&self.reader)
        .await?;
        let wf = row.as_ref().map(rows::workflow).transpose()?;
        if let Some(wf) = &wf {
            let mut cache = self.workflows.write().unwrap_or_else(|p| p.into_inner());
            // A `put_workflow` that committed after our read may have made `wf` stale.
            if cache.generation == generation {
                cache.map.insert(key, wf.clone());
            }
        }
        Ok(wf)
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
        let (run, idem) = (run.clone(), idem.cloned());
        self.hot
            .call(|reply| WriteOp::CreateRun {
                run,
                idem,
                events: Vec::new(),
                payloads: Vec::new(),
                update: RunUpdate::default(),
                reply,
            })
            .await
            .map(|(outcome, _)| outcome)
    }

    /// One writer op (one savepoint of one group commit) instead of two.
    async fn create_started_run(
        &self,
        run: &RunRecord,
        idem: Option<&IdempotencyClaim>,
        events: Vec<NewEvent>,
        update: RunUpdate,
    ) -> StoreResult<(CreateRunOutcome, Vec<EventRecord>)> {
        let (run, idem) = (run.clone(), idem.cloned());
        let payloads = events.iter().map(|e| e.payload.to_string()).collect();
        self.hot
            .call(|reply| WriteOp::CreateRun {
                run,
                idem,
                events,
                payloads,
                update,
                reply,
            })
            .await
    }

    async fn get_run(&self, run_id: &str) -> StoreResult<Option<RunRecord>> {
        if let Some(run) = self.live.get(run_id) {
            return Ok(Some(run));
        }
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
        let (run_id, status) = (run_id.to_string(), status.to_string());
        self.hot
            .call(|reply| WriteOp::SetStatus {
                run_id,
                status,
                reply,
            })
            .await
    }

    async fn list_child_runs(&self, parent_run_id: &str) -> StoreResult<Vec<ChildRun>> {
        let rows = sqlx::query(
            "SELECT run_id, workflow_id, parent_node_id, status FROM runs
             WHERE parent_run_id = ? ORDER BY created_at, run_id",
        )
        .bind(parent_run_id)
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(rows::child_run).collect()
    }

    async fn append_events(
        &self,
        run_id: &str,
        events: Vec<NewEvent>,
        update: Option<RunUpdate>,
    ) -> StoreResult<Vec<EventRecord>> {
        let payloads = events.iter().map(|e| e.payload.to_string()).collect();
        let run_id = run_id.to_string();
        self.hot
            .call(|reply| WriteOp::Append {
                run_id,
                events,
                payloads,
                update: update.unwrap_or_default(),
                reply,
            })
            .await
    }

    async fn list_events(
        &self,
        run_id: &str,
        after: i64,
        limit: i64,
    ) -> StoreResult<Vec<EventRecord>> {
        if let Some(events) = self.live.events(run_id, after, limit) {
            return Ok(events);
        }
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
