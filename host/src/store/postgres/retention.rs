//! Postgres side of retention. Every batch first takes a transaction-scoped advisory lock with
//! `pg_try_advisory_xact_lock`: while one process sweeps, the others skip their sweep instead
//! of queueing behind it (or deleting the same rows). Candidate runs are locked `FOR UPDATE SKIP
//! LOCKED`, so a row some other transaction holds is left for the next sweep.

use async_trait::async_trait;

use super::{PgStore, RETENTION_LOCK};
use crate::store::retention::{runs_per_batch, Cutoffs, ExpiredRun, Purged, RetentionStore};
use crate::store::StoreResult;

#[async_trait]
impl RetentionStore for PgStore {
    async fn purge_batch(&self, cut: &Cutoffs, limit: u32) -> StoreResult<Option<Purged>> {
        let limit = i64::from(limit.max(1));
        let mut tx = self.pool.begin().await?;
        let (ours,): (bool,) = sqlx::query_as("SELECT pg_try_advisory_xact_lock($1)")
            .bind(RETENTION_LOCK)
            .fetch_one(&mut *tx)
            .await?;
        if !ours {
            return Ok(None);
        }
        let mut purged = Purged::default();

        // 1. Finished runs past the cutoff: the row goes, a tombstone takes its place. A
        //    finished child of an unfinished parent stays: the parent reads it (childRuns,
        //    re-attach after a takeover).
        let ids: Vec<(String,)> = sqlx::query_as(
            "SELECT run_id FROM runs r WHERE terminal = 1 AND completed_at < $1
               AND NOT EXISTS (SELECT 1 FROM runs p WHERE p.run_id = r.parent_run_id AND p.terminal = 0)
             ORDER BY completed_at LIMIT $2 FOR UPDATE OF r SKIP LOCKED",
        )
        .bind(&cut.runs_before)
        .bind(i64::from(runs_per_batch(limit as u32)))
        .fetch_all(&mut *tx)
        .await?;
        let ids: Vec<String> = ids.into_iter().map(|r| r.0).collect();
        if !ids.is_empty() {
            for table in ["interrupts", "webhook_fanout"] {
                sqlx::query(&format!("DELETE FROM {table} WHERE run_id = ANY($1)"))
                    .bind(&ids)
                    .execute(&mut *tx)
                    .await?;
            }
            sqlx::query(
                "INSERT INTO expired_runs (run_id, tenant_id, completed_at, expired_at, event_count, purged_below)
                 SELECT run_id, tenant_id, completed_at, $2, next_sequence, 0 FROM runs WHERE run_id = ANY($1)",
            )
            .bind(&ids)
            .bind(&cut.now)
            .execute(&mut *tx)
            .await?;
            purged.runs = sqlx::query("DELETE FROM runs WHERE run_id = ANY($1)")
                .bind(&ids)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        }

        // 2. Their event logs, by primary-key range, at most `limit` rows per batch.
        let logs: Vec<(String, i64, i64)> = sqlx::query_as(
            "SELECT run_id, purged_below, event_count FROM expired_runs
             WHERE purged_below < event_count LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
        let mut budget = limit;
        for (run_id, from, count) in logs {
            if budget <= 0 {
                break;
            }
            let to = count.min(from + budget);
            purged.events += sqlx::query(
                "DELETE FROM run_events WHERE run_id = $1 AND sequence >= $2 AND sequence < $3",
            )
            .bind(&run_id)
            .bind(from)
            .bind(to)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            sqlx::query("UPDATE expired_runs SET purged_below = $1 WHERE run_id = $2")
                .bind(to)
                .bind(&run_id)
                .execute(&mut *tx)
                .await?;
            budget -= to - from;
        }

        // 3. Idempotency records past their window.
        purged.idempotency = sqlx::query(
            "DELETE FROM idempotency_keys WHERE scope_key IN
               (SELECT scope_key FROM idempotency_keys WHERE created_at < $1 ORDER BY created_at LIMIT $2)",
        )
        .bind(&cut.idempotency_before)
        .bind(limit)
        .execute(&mut *tx)
        .await?
        .rows_affected();

        // 4. Old tombstones whose log is gone.
        purged.tombstones = sqlx::query(
            "DELETE FROM expired_runs WHERE run_id IN
               (SELECT run_id FROM expired_runs WHERE expired_at < $1 AND purged_below >= event_count
                ORDER BY expired_at LIMIT $2)",
        )
        .bind(&cut.tombstones_before)
        .bind(limit)
        .execute(&mut *tx)
        .await?
        .rows_affected();

        tx.commit().await?;
        Ok(Some(purged))
    }

    async fn expired_run(&self, run_id: &str) -> StoreResult<Option<ExpiredRun>> {
        let row: Option<(String, String, String, String)> = sqlx::query_as(
            "SELECT run_id, tenant_id, completed_at, expired_at FROM expired_runs WHERE run_id = $1",
        )
        .bind(run_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(ExpiredRun::from))
    }
}
