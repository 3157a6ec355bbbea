//! SQLite implementation of [`AuditStore`]. Appends go through the single writer connection
//! (the group-commit writer thread, `writer.rs`), each in its own savepoint, so the chain can
//! never fork.

use async_trait::async_trait;

use super::SqliteStore;
use crate::store::audit::{AuditEntry, AuditStore, Checkpoint, NewAuditEntry};
use crate::store::StoreResult;

#[async_trait]
impl AuditStore for SqliteStore {
    async fn audit_append(
        &self,
        e: NewAuditEntry,
        hash: for<'h> fn(&'h AuditEntry) -> String,
    ) -> StoreResult<AuditEntry> {
        // On the hot writer thread: every run creation records an entry.
        self.hot
            .call(|reply| super::WriteOp::Audit {
                entry: e,
                hash,
                reply,
            })
            .await
    }

    async fn audit_head(&self) -> StoreResult<i64> {
        let row: (Option<i64>,) = sqlx::query_as("SELECT MAX(seq) FROM audit_log")
            .fetch_one(&self.reader)
            .await?;
        Ok(row.0.unwrap_or(0))
    }

    async fn audit_entries(&self, from: i64, to: i64) -> StoreResult<Vec<AuditEntry>> {
        let rows = sqlx::query("SELECT * FROM audit_log WHERE seq >= ? AND seq <= ? ORDER BY seq")
            .bind(from)
            .bind(to)
            .fetch_all(&self.reader)
            .await?;
        rows.iter().map(crate::store::rows::audit_entry).collect()
    }

    async fn audit_checkpoints(&self, from: i64, to: i64) -> StoreResult<Vec<Checkpoint>> {
        let rows = sqlx::query(
            "SELECT * FROM audit_checkpoints WHERE at_sequence >= ? AND at_sequence <= ? ORDER BY at_sequence",
        )
        .bind(from)
        .bind(to)
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(crate::store::rows::checkpoint).collect()
    }

    async fn audit_last_checkpoint(&self) -> StoreResult<Option<Checkpoint>> {
        let row = sqlx::query("SELECT * FROM audit_checkpoints ORDER BY at_sequence DESC LIMIT 1")
            .fetch_optional(&self.reader)
            .await?;
        row.as_ref().map(crate::store::rows::checkpoint).transpose()
    }

    async fn audit_put_checkpoint(&self, cp: &Checkpoint, covers_after: i64) -> StoreResult<bool> {
        let r = sqlx::query(
            "INSERT INTO audit_checkpoints (checkpoint_id, at_sequence, merkle_root, signature, created_at)
             SELECT ?, ?, ?, ?, ?
             WHERE (SELECT COALESCE(MAX(at_sequence), 0) FROM audit_checkpoints) = ?",
        )
        .bind(&cp.checkpoint_id)
        .bind(cp.at_sequence)
        .bind(&cp.merkle_root)
        .bind(&cp.signature)
        .bind(&cp.created_at)
        .bind(covers_after)
        .execute(&self.writer)
        .await?;
        Ok(r.rows_affected() == 1)
    }
}
