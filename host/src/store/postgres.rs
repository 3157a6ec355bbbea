//! PostgreSQL backend: several wopbox processes can share one database (docs/postgres.md).
//!
//! Differences from the SQLite backend that a user can rely on:
//! - every commit is durable as configured on the server (`synchronous_commit`);
//! - runs carry an execution lease (see [`super::shared`]): the creating process owns a new
//!   run, renews its leases while it lives, and a run whose lease expired is claimed by another
//!   process (`FOR UPDATE SKIP LOCKED`) and resumed from its log;
//! - appends lock the run row (`FOR UPDATE`), so per-run sequences stay gap-free across
//!   processes, and `(run_id, sequence)` is the primary key besides; they are fenced on the
//!   lease, so a process that lost a run cannot write into it;
//! - idempotency claims and audit appends are serialised with transaction-scoped advisory
//!   locks; commits notify the other processes (`LISTEN`/`NOTIFY`).

mod audit;
mod interrupts;
mod listen;
mod packs;
mod retention;
mod webhooks;

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use serde_json::Value;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres, Transaction};

use super::rows;
use super::shared::{Notice, SharedStore};
use super::*;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("src/store/pg_migrations");

/// Notification channels. Payloads are small text records (NOTIFY allows < 8000 bytes).
pub(crate) const CH_EVENTS: &str = "wopbox_events";
pub(crate) const CH_CANCEL: &str = "wopbox_cancel";
pub(crate) const CH_CHANGES: &str = "wopbox_changes";

/// Advisory-lock key serialising audit-chain appends across processes.
const AUDIT_LOCK: i64 = 0x776f_7062_6f78_0001;
/// Advisory-lock key held by the one process sweeping expired data (store/retention.rs).
pub(crate) const RETENTION_LOCK: i64 = 0x776f_7062_6f78_0002;

#[derive(Debug, Clone)]
pub struct PgSettings {
    pub url: String,
    pub max_connections: u32,
    pub lease_ttl: Duration,
}

pub struct PgStore {
    pool: PgPool,
    /// This process's lease-owner id.
    me: String,
    lease_ttl: Duration,
}

/// True when `url` names a Postgres database (`postgres://` or `postgresql://`).
pub fn is_postgres_url(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

impl PgStore {
    pub async fn open(settings: &PgSettings) -> anyhow::Result<Self> {
        let opts = PgConnectOptions::from_str(&settings.url)?.application_name("wopbox");
        let pool = PgPoolOptions::new()
            .max_connections(settings.max_connections.max(2))
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(opts)
            .await?;
        // Migrations take their own advisory lock, so processes starting together are safe.
        MIGRATOR.run(&pool).await?;
        let me = format!(
            "proc_{}_{}",
            std::process::id(),
            uuid::Uuid::now_v7().simple()
        );
        Ok(PgStore {
            pool,
            me,
            lease_ttl: settings.lease_ttl,
        })
    }

    fn ttl_ms(&self) -> i64 {
        self.lease_ttl.as_millis().min(i64::MAX as u128) as i64
    }

    /// Append inside `tx` (row-locked, gap-free sequences, NOTIFY on commit). `fenced`: refuse
    /// unless this process is the run's lease owner — every engine append; an interrupt
    /// resolution is instead guarded by its own row and may come through any process.
    pub(crate) async fn append_in_tx(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        run_id: &str,
        events: Vec<NewEvent>,
        update: Option<RunUpdate>,
        fenced: bool,
    ) -> StoreResult<Vec<EventRecord>> {
        terminal_is_last(&events)?;
        // The row lock serialises appends to one run across every process.
        let row: Option<(i64, i64, Option<String>)> = sqlx::query_as(
            "SELECT next_sequence, terminal, lease_owner FROM runs WHERE run_id = $1 FOR UPDATE",
        )
        .bind(run_id)
        .fetch_optional(&mut **tx)
        .await?;
        let Some((first, terminal, owner)) = row else {
            return Err(StoreError::RunNotFound);
        };
        if terminal != 0 {
            return Err(StoreError::RunTerminal);
        }
        // Only the lease owner writes, even once its lease expired: a stalled process whose run
        // was claimed (or is about to be) must not write into a log it no longer folds.
        if fenced && owner.as_deref().is_some_and(|o| o != self.me) {
            return Err(StoreError::LeaseLost);
        }
        let becomes_terminal = events
            .last()
            .map(|e| is_terminal_event(&e.event_type))
            .unwrap_or(false);
        let mut seq = first;
        let mut out = Vec::with_capacity(events.len());
        for ev in events {
            sqlx::query(
                "INSERT INTO run_events (run_id, sequence, event_id, type, node_id, causation_id, payload, timestamp)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .bind(run_id)
            .bind(seq)
            .bind(&ev.event_id)
            .bind(&ev.event_type)
            .bind(&ev.node_id)
            .bind(&ev.causation_id)
            .bind(ev.payload.to_string())
            .bind(&ev.timestamp)
            .execute(&mut **tx)
            .await?;
            out.push(ev.committed(run_id, seq));
            seq += 1;
        }
        let u = update.unwrap_or_default();
        let (set_node, node) = match u.current_node_id {
            Some(n) => (true, n),
            None => (false, None),
        };
        sqlx::query(
            "UPDATE runs SET next_sequence = $1, terminal = $2, status = COALESCE($3, status),
               current_node_id = CASE WHEN $4 THEN $5 ELSE current_node_id END,
               error = COALESCE($6, error), outputs = COALESCE($7, outputs),
               started_at = COALESCE($8, started_at), completed_at = COALESCE($9, completed_at), updated_at = $10,
               variables = COALESCE($12, variables)
             WHERE run_id = $11",
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
        .bind(u.variables.map(|v| v.to_string()))
        .execute(&mut **tx)
        .await?;
        if seq > first {
            let payload = format!("{} {} {} {}", self.me, run_id, first, seq - 1);
            notify(tx, CH_EVENTS, &payload).await?;
        }
        Ok(out)
    }
}

/// `NOTIFY channel, payload` inside `tx`: delivered to listeners only if `tx` commits.
pub(crate) async fn notify(
    tx: &mut Transaction<'_, Postgres>,
    channel: &str,
    payload: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(channel)
        .bind(payload)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

const WORKFLOW_COLS: &str =
    "w.tenant_id, w.id, w.version, w.digest, w.source, w.created_at, w.updated_at, v.definition";

#[async_trait]
impl Store for PgStore {
    async fn put_workflow(&self, wf: &StoredWorkflow) -> StoreResult<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO workflow_versions (digest, workflow_id, definition, created_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (digest) DO NOTHING",
        )
        .bind(&wf.digest)
        .bind(&wf.id)
        .bind(wf.definition.to_string())
        .bind(&wf.updated_at)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO workflows (tenant_id, id, version, digest, source, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (tenant_id, id) DO UPDATE SET version = excluded.version, digest = excluded.digest,
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
            "SELECT {WORKFLOW_COLS} FROM workflows w JOIN workflow_versions v ON v.digest = w.digest WHERE w.id = $1 AND w.tenant_id IN ($2, '')
             ORDER BY w.tenant_id = '' LIMIT 1"
        ))
        .bind(id)
        .bind(tenant)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(rows::workflow).transpose()
    }

    async fn list_workflows(&self, tenant: &str) -> StoreResult<Vec<StoredWorkflow>> {
        let rows = sqlx::query(&format!(
            "SELECT {WORKFLOW_COLS} FROM workflows w JOIN workflow_versions v ON v.digest = w.digest
             WHERE w.tenant_id IN ($1, '') ORDER BY w.id, w.tenant_id = ''"
        ))
        .bind(tenant)
        .fetch_all(&self.pool)
        .await?;
        let all = rows
            .iter()
            .map(rows::workflow)
            .collect::<StoreResult<Vec<_>>>()?;
        Ok(rows::visible_workflows(all))
    }

    async fn get_definition(&self, digest: &str) -> StoreResult<Option<Value>> {
        let row: Option<(String,)> =
            sqlx::query_as("SELECT definition FROM workflow_versions WHERE digest = $1")
                .bind(digest)
                .fetch_optional(&self.pool)
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
        let mut tx = self.pool.begin().await?;
        if let Some(claim) = idem {
            if let Some(outcome) = claimed_before(&mut tx, claim).await? {
                tx.rollback().await?;
                return Ok(outcome);
            }
        }
        // The accepting process executes the run: it holds the lease from the start.
        sqlx::query(
            "INSERT INTO runs (run_id, workflow_id, definition_digest, tenant_id, principal_id, status, terminal,
               inputs, variables, options, next_sequence, created_at, updated_at, lease_owner, lease_until,
               parent_run_id, parent_node_id)
             VALUES ($1, $2, $3, $4, $5, $6, 0, $7, $8, $9, 0, $10, $11, $12,
               clock_timestamp() + make_interval(secs => $13::double precision / 1000), $14, $15)",
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
        .bind(&self.me)
        .bind(self.ttl_ms())
        .bind(&run.parent_run_id)
        .bind(&run.parent_node_id)
        .execute(&mut *tx)
        .await?;
        if let Some(claim) = idem {
            record_claim(&mut tx, claim, &run.created_at).await?;
        }
        tx.commit().await?;
        Ok(CreateRunOutcome::Created)
    }

    async fn get_run(&self, run_id: &str) -> StoreResult<Option<RunRecord>> {
        let row = sqlx::query("SELECT * FROM runs WHERE run_id = $1")
            .bind(run_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(rows::run).transpose()
    }

    async fn list_unfinished_runs(&self) -> StoreResult<Vec<RunRecord>> {
        // Claim: lock free or expired leases that no other claimer holds right now, take them.
        let rows = sqlx::query(
            "WITH free AS (
               SELECT run_id FROM runs
                WHERE terminal = 0 AND (lease_owner IS NULL OR lease_until IS NULL OR lease_until < clock_timestamp())
                ORDER BY created_at LIMIT 256
                FOR UPDATE SKIP LOCKED)
             UPDATE runs r SET lease_owner = $1,
                    lease_until = clock_timestamp() + make_interval(secs => $2::double precision / 1000)
               FROM free WHERE r.run_id = free.run_id
             RETURNING r.*",
        )
        .bind(&self.me)
        .bind(self.ttl_ms())
        .fetch_all(&self.pool)
        .await?;
        let mut runs = rows
            .iter()
            .map(rows::run)
            .collect::<StoreResult<Vec<_>>>()?;
        runs.sort_by(|a, b| a.created_at.cmp(&b.created_at));
        Ok(runs)
    }

    async fn set_run_status(&self, run_id: &str, status: &str) -> StoreResult<bool> {
        let r = sqlx::query(
            "UPDATE runs SET status = $1, updated_at = $2 WHERE run_id = $3 AND terminal = 0",
        )
        .bind(status)
        .bind(ts(Utc::now()))
        .bind(run_id)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    async fn list_child_runs(&self, parent_run_id: &str) -> StoreResult<Vec<ChildRun>> {
        let rows = sqlx::query(
            "SELECT run_id, workflow_id, parent_node_id, status FROM runs
             WHERE parent_run_id = $1 ORDER BY created_at, run_id",
        )
        .bind(parent_run_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(rows::child_run).collect()
    }

    async fn append_events(
        &self,
        run_id: &str,
        events: Vec<NewEvent>,
        update: Option<RunUpdate>,
    ) -> StoreResult<Vec<EventRecord>> {
        let mut tx = self.pool.begin().await?;
        let out = self
            .append_in_tx(&mut tx, run_id, events, update, true)
            .await?;
        tx.commit().await?;
        Ok(out)
    }

    async fn list_events(
        &self,
        run_id: &str,
        after: i64,
        limit: i64,
    ) -> StoreResult<Vec<EventRecord>> {
        let rows = sqlx::query(
            "SELECT * FROM run_events WHERE run_id = $1 AND sequence > $2 ORDER BY sequence LIMIT $3",
        )
        .bind(run_id)
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(rows::event).collect()
    }
}

#[async_trait]
impl SharedStore for PgStore {
    fn process_id(&self) -> &str {
        &self.me
    }

    fn lease_ttl(&self) -> Duration {
        self.lease_ttl
    }

    async fn renew_leases(&self) -> StoreResult<u64> {
        let r = sqlx::query(
            "UPDATE runs SET lease_until = clock_timestamp() + make_interval(secs => $2::double precision / 1000)
              WHERE lease_owner = $1 AND terminal = 0",
        )
        .bind(&self.me)
        .bind(self.ttl_ms())
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected())
    }

    async fn release_leases(&self) -> StoreResult<u64> {
        let r = sqlx::query(
            "UPDATE runs SET lease_until = clock_timestamp() - interval '1 millisecond'
              WHERE lease_owner = $1 AND terminal = 0",
        )
        .bind(&self.me)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected())
    }

    async fn request_cancel(&self, run_id: &str, reason: &str) -> StoreResult<bool> {
        let mut tx = self.pool.begin().await?;
        let r = sqlx::query(
            "UPDATE runs SET status = 'cancelling', updated_at = $1 WHERE run_id = $2 AND terminal = 0",
        )
        .bind(ts(Utc::now()))
        .bind(run_id)
        .execute(&mut *tx)
        .await?;
        if r.rows_affected() != 1 {
            tx.rollback().await?;
            return Ok(false);
        }
        // Keep the payload well under NOTIFY's 8000-byte limit.
        let reason: String = reason.chars().take(1000).collect();
        notify(&mut tx, CH_CANCEL, &format!("{run_id} {reason}")).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn listen(&self) -> StoreResult<tokio::sync::mpsc::Receiver<Notice>> {
        listen::spawn(&self.pool, self.me.clone()).await
    }
}

/// Layer-1 idempotency (see the SQLite twin): the key is locked for the rest of the transaction
/// first, so two processes racing on one key serialise and exactly one creates the resource.
pub(super) async fn claimed_before(
    tx: &mut Transaction<'_, Postgres>,
    claim: &IdempotencyClaim,
) -> StoreResult<Option<CreateRunOutcome>> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(&claim.scope_key)
        .execute(&mut **tx)
        .await?;
    let existing: Option<(String, i64, String)> = sqlx::query_as(
        "SELECT request_digest, response_status, response_body FROM idempotency_keys WHERE scope_key = $1",
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

pub(super) async fn record_claim(
    tx: &mut Transaction<'_, Postgres>,
    claim: &IdempotencyClaim,
    created_at: &str,
) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO idempotency_keys (scope_key, request_digest, response_status, response_body, created_at)
         VALUES ($1, $2, $3, $4, $5)",
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

/// Test support: a fresh, empty database on the server `admin_url` points at, for one test or
/// one benchmark (isolation without a cluster per test). Returns its URL.
#[doc(hidden)]
pub async fn scratch_database(admin_url: &str) -> anyhow::Result<String> {
    use sqlx::ConnectOptions;
    let opts = PgConnectOptions::from_str(admin_url)?;
    let mut conn = opts.connect().await?;
    let name = format!("wopbox_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await?;
    let mut url = url::Url::parse(admin_url)?;
    url.set_path(&format!("/{name}"));
    Ok(url.to_string())
}
