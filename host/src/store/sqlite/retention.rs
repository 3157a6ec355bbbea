//! SQLite side of retention. The deletes run as one op of the writer thread (`writer.rs`), so
//! they share its group commit with the hot path instead of competing with it for the single
//! writer connection, and the live-run cache forgets an expired run before the op is answered.

use async_trait::async_trait;
use rusqlite::params;

use super::SqliteStore;
use crate::store::retention::{runs_per_batch, Cutoffs, ExpiredRun, Purged, RetentionStore};
use crate::store::StoreResult;

use super::writer::WriteOp;

#[async_trait]
impl RetentionStore for SqliteStore {
    async fn purge_batch(&self, cut: &Cutoffs, limit: u32) -> StoreResult<Option<Purged>> {
        let cut = cut.clone();
        self.hot
            .call(|reply| WriteOp::Purge { cut, limit, reply })
            .await
            .map(Some)
    }

    async fn expired_run(&self, run_id: &str) -> StoreResult<Option<ExpiredRun>> {
        let row: Option<(String, String, String, String)> = sqlx::query_as(
            "SELECT run_id, tenant_id, completed_at, expired_at FROM expired_runs WHERE run_id = ?",
        )
        .bind(run_id)
        .fetch_optional(&self.reader)
        .await?;
        Ok(row.map(ExpiredRun::from))
    }
}

/// One batch, inside the writer's transaction (and this op's savepoint). Returns what was
/// deleted and the ids of the runs that expired.
pub(super) fn purge(
    db: &rusqlite::Connection,
    cut: &Cutoffs,
    limit: u32,
) -> rusqlite::Result<(Purged, Vec<String>)> {
    let mut purged = Purged::default();
    let limit = i64::from(limit.max(1));

    // 1. Finished runs past the cutoff: the row goes, a tombstone takes its place. A finished
    //    child of an unfinished parent stays: the parent reads it (childRuns, re-attach).
    let runs: Vec<(String, String, String, i64)> = db
        .prepare_cached(
            "SELECT run_id, tenant_id, completed_at, next_sequence FROM runs r
             WHERE terminal = 1 AND completed_at < ?1
               AND NOT EXISTS (SELECT 1 FROM runs p WHERE p.run_id = r.parent_run_id AND p.terminal = 0)
             ORDER BY completed_at LIMIT ?2",
        )?
        .query_map(
            params![cut.runs_before, runs_per_batch(limit as u32)],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )?
        .collect::<rusqlite::Result<_>>()?;
    for (run_id, tenant_id, completed_at, event_count) in &runs {
        db.prepare_cached("DELETE FROM interrupts WHERE run_id = ?1")?
            .execute(params![run_id])?;
        db.prepare_cached("DELETE FROM webhook_fanout WHERE run_id = ?1")?
            .execute(params![run_id])?;
        db.prepare_cached(
            "INSERT INTO expired_runs (run_id, tenant_id, completed_at, expired_at, event_count, purged_below)
             VALUES (?1, ?2, ?3, ?4, ?5, 0)",
        )?
        .execute(params![run_id, tenant_id, completed_at, cut.now, event_count])?;
        db.prepare_cached("DELETE FROM runs WHERE run_id = ?1")?
            .execute(params![run_id])?;
    }
    purged.runs = runs.len() as u64;

    // 2. Their event logs, by primary-key range, at most `limit` rows per batch.
    let logs: Vec<(String, i64, i64)> = db
        .prepare_cached(
            "SELECT run_id, purged_below, event_count FROM expired_runs
             WHERE purged_below < event_count LIMIT ?1",
        )?
        .query_map(params![limit], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let mut budget = limit;
    for (run_id, from, count) in logs {
        if budget <= 0 {
            break;
        }
        let to = count.min(from + budget);
        let n = db
            .prepare_cached(
                "DELETE FROM run_events WHERE run_id = ?1 AND sequence >= ?2 AND sequence < ?3",
            )?
            .execute(params![run_id, from, to])?;
        db.prepare_cached("UPDATE expired_runs SET purged_below = ?1 WHERE run_id = ?2")?
            .execute(params![to, run_id])?;
        purged.events += n as u64;
        budget -= to - from;
    }

    // 3. Idempotency records past their window.
    purged.idempotency = db
        .prepare_cached(
            "DELETE FROM idempotency_keys WHERE scope_key IN
               (SELECT scope_key FROM idempotency_keys WHERE created_at < ?1 ORDER BY created_at LIMIT ?2)",
        )?
        .execute(params![cut.idempotency_before, limit])? as u64;

    // 4. Old tombstones whose log is gone.
    purged.tombstones = db
        .prepare_cached(
            "DELETE FROM expired_runs WHERE run_id IN
               (SELECT run_id FROM expired_runs WHERE expired_at < ?1 AND purged_below >= event_count
                ORDER BY expired_at LIMIT ?2)",
        )?
        .execute(params![cut.tombstones_before, limit])? as u64;

    Ok((purged, runs.into_iter().map(|r| r.0).collect()))
}
