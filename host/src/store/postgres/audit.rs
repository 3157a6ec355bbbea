//! Postgres implementation of [`AuditStore`]. Every append takes one transaction-scoped
//! advisory lock first, so appends from all processes are serialised and the chain cannot fork
//! (the primary key on `seq` would refuse a fork anyway).

use async_trait::async_trait;

use super::{PgStore, AUDIT_LOCK};
use crate::store::audit::{AuditEntry, AuditStore, Checkpoint, NewAuditEntry};
use crate::store::{rows, StoreResult};

#[async_trait]
impl AuditStore for PgStore {
    async fn audit_append(
        &self,
        e: NewAuditEntry,
        hash: for<'h> fn(&'h AuditEntry) -> String,
    ) -> StoreResult<AuditEntry> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(AUDIT_LOCK)
            .execute(&mut *tx)
            .await?;
        let head: Option<(i64, String)> =
            sqlx::query_as("SELECT seq, entry_hash FROM audit_log ORDER BY seq DESC LIMIT 1")
                .fetch_optional(&mut *tx)
                .await?;
        let entry = e.chained(head, hash);
        sqlx::query(
            "INSERT INTO audit_log (seq, occurred_at, actor, action, target, details, prev_hash, entry_hash)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(entry.seq)
        .bind(&entry.occurred_at)
        .bind(&entry.actor)
        .bind(&entry.action)
        .bind(&entry.target)
        .bind(entry.details.to_string())
        .bind(&entry.prev_hash)
        .bind(&entry.entry_hash)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(entry)
    }

    async fn audit_head(&self) -> StoreResult<i64> {
        let row: (Option<i64>,) = sqlx::query_as("SELECT MAX(seq) FROM audit_log")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.0.unwrap_or(0))
    }

    async fn audit_entries(&self, from: i64, to: i64) -> StoreResult<Vec<AuditEntry>> {
        let rows =
            sqlx::query("SELECT * FROM audit_log WHERE seq >= $1 AND seq <= $2 ORDER BY seq")
                .bind(from)
                .bind(to)
                .fetch_all(&self.pool)
                .await?;
        rows.iter().map(rows::audit_entry).collect()
    }

    async fn audit_checkpoints(&self, from: i64, to: i64) -> StoreResult<Vec<Checkpoint>> {
        let rows = sqlx::query(
            "SELECT * FROM audit_checkpoints WHERE at_sequence >= $1 AND at_sequence <= $2 ORDER BY at_sequence",
        )
        .bind(from)
        .bind(to)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(rows::checkpoint).collect()
    }

    async fn audit_last_checkpoint(&self) -> StoreResult<Option<Checkpoint>> {
        let row = sqlx::query("SELECT * FROM audit_checkpoints ORDER BY at_sequence DESC LIMIT 1")
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(rows::checkpoint).transpose()
    }

    async fn audit_put_checkpoint(&self, cp: &Checkpoint, covers_after: i64) -> StoreResult<bool> {
        // Two processes may mint at once, from the same last checkpoint but different heads
        // (one on its timer, one on its count): under the chain's lock, only the first stands.
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(AUDIT_LOCK)
            .execute(&mut *tx)
            .await?;
        let r = sqlx::query(
            "INSERT INTO audit_checkpoints (checkpoint_id, at_sequence, merkle_root, signature, created_at)
             SELECT $1, $2, $3, $4, $5
             WHERE (SELECT COALESCE(MAX(at_sequence), 0) FROM audit_checkpoints) = $6
             ON CONFLICT DO NOTHING",
        )
        .bind(&cp.checkpoint_id)
        .bind(cp.at_sequence)
        .bind(&cp.merkle_root)
        .bind(&cp.signature)
        .bind(&cp.created_at)
        .bind(covers_after)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(r.rows_affected() == 1)
    }
}
