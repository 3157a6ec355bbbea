//! Postgres implementation of [`InterruptStore`]. Parking is fenced on the run's lease like every
//! engine append; a resolution may arrive at any process, so it is guarded by the interrupt row
//! (`FOR UPDATE`, status must be `pending`) instead, and its NOTIFY wakes the executing process.

use super::PgStore;
use crate::store::interrupts::{
    CloseOutcome, InterruptClose, InterruptRecord, InterruptStore, PlanVote, VoteOutcome,
    VoteRecord,
};
use crate::store::rows;
use crate::store::{EventRecord, NewEvent, RunUpdate, StoreError, StoreResult};
use async_trait::async_trait;
use serde_json::Value;

/// Lock an interrupt's row for the transaction: `(run_id, status)`. Every close and vote of
/// one interrupt takes this lock first, so they are serialised across processes.
async fn lock_interrupt(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    interrupt_id: &str,
) -> StoreResult<Option<(String, String)>> {
    Ok(
        sqlx::query_as("SELECT run_id, status FROM interrupts WHERE interrupt_id = $1 FOR UPDATE")
            .bind(interrupt_id)
            .fetch_optional(&mut **tx)
            .await?,
    )
}

/// Move a pending interrupt to `close.status` (inside the caller's transaction).
async fn mark_closed(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    interrupt_id: &str,
    close: &InterruptClose,
) -> StoreResult<()> {
    sqlx::query(
        "UPDATE interrupts SET status = $1, resolution = $2, resolved_by = $3, resolved_at = $4,
           resumed_event_id = $5 WHERE interrupt_id = $6 AND status = 'pending'",
    )
    .bind(&close.status)
    .bind(close.resolution.to_string())
    .bind(&close.resolved_by)
    .bind(&close.resolved_at)
    .bind(&close.resumed_event_id)
    .bind(interrupt_id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

#[async_trait]
impl InterruptStore for PgStore {
    async fn park_interrupt(
        &self,
        rec: &InterruptRecord,
        events: Vec<NewEvent>,
        update: RunUpdate,
    ) -> StoreResult<Vec<EventRecord>> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO interrupts (interrupt_id, run_id, node_id, interrupt_key, kind, status, data,
               timeout_ms, token_kid, token_hash, inspect_token_hash, requested_event_id,
               requested_at, token_expires_at, deadline_at)
             VALUES ($1, $2, $3, $4, $5, 'pending', $6, $7, $8, $9, $10, $11, $12, $13, $14)",
        )
        .bind(&rec.interrupt_id)
        .bind(&rec.run_id)
        .bind(&rec.node_id)
        .bind(&rec.key)
        .bind(&rec.kind)
        .bind(rec.data.to_string())
        .bind(rec.timeout_ms)
        .bind(&rec.token_kid)
        .bind(&rec.token_hash)
        .bind(&rec.inspect_token_hash)
        .bind(&rec.requested_event_id)
        .bind(&rec.requested_at)
        .bind(&rec.token_expires_at)
        .bind(&rec.deadline_at)
        .execute(&mut *tx)
        .await?;
        let records = self
            .append_in_tx(&mut tx, &rec.run_id, events, Some(update), true)
            .await?;
        tx.commit().await?;
        Ok(records)
    }

    async fn get_interrupt(&self, interrupt_id: &str) -> StoreResult<Option<InterruptRecord>> {
        let row = sqlx::query("SELECT * FROM interrupts WHERE interrupt_id = $1")
            .bind(interrupt_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(rows::interrupt).transpose()
    }

    async fn interrupt_by_key(
        &self,
        run_id: &str,
        key: &str,
    ) -> StoreResult<Option<InterruptRecord>> {
        let row = sqlx::query("SELECT * FROM interrupts WHERE run_id = $1 AND interrupt_key = $2")
            .bind(run_id)
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(rows::interrupt).transpose()
    }

    async fn run_interrupts(&self, run_id: &str) -> StoreResult<Vec<InterruptRecord>> {
        let found = sqlx::query(
            "SELECT * FROM interrupts WHERE run_id = $1 ORDER BY requested_at, interrupt_id",
        )
        .bind(run_id)
        .fetch_all(&self.pool)
        .await?;
        found.iter().map(rows::interrupt).collect()
    }

    async fn close_interrupt(
        &self,
        interrupt_id: &str,
        close: &InterruptClose,
        events: Vec<NewEvent>,
        update: RunUpdate,
    ) -> StoreResult<CloseOutcome> {
        let mut tx = self.pool.begin().await?;
        let row = lock_interrupt(&mut tx, interrupt_id).await?;
        let Some((run_id, status)) = row else {
            return Ok(CloseOutcome::NotFound);
        };
        if status != "pending" {
            return Ok(CloseOutcome::NotPending(status));
        }
        mark_closed(&mut tx, interrupt_id, close).await?;
        match self
            .append_in_tx(&mut tx, &run_id, events, Some(update), false)
            .await
        {
            Ok(records) => {
                tx.commit().await?;
                Ok(CloseOutcome::Closed(records))
            }
            // Dropping the transaction rolls the row change back.
            Err(StoreError::RunTerminal) => Ok(CloseOutcome::RunTerminal),
            Err(e) => Err(e),
        }
    }

    async fn cast_vote(
        &self,
        interrupt_id: &str,
        vote: &VoteRecord,
        plan: PlanVote,
    ) -> StoreResult<VoteOutcome> {
        let mut tx = self.pool.begin().await?;
        // The interrupt row's lock serialises every vote and close of this interrupt across
        // processes; READ COMMITTED re-reads the votes after the lock is granted.
        let row = lock_interrupt(&mut tx, interrupt_id).await?;
        let Some((run_id, status)) = row else {
            return Ok(VoteOutcome::NotFound);
        };
        let before: Vec<VoteRecord> =
            sqlx::query("SELECT * FROM interrupt_votes WHERE interrupt_id = $1 ORDER BY seq")
                .bind(interrupt_id)
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(rows::vote)
                .collect::<StoreResult<_>>()?;
        if let Some(prior) = before.iter().find(|v| v.voter == vote.voter).cloned() {
            return Ok(VoteOutcome::Duplicate {
                prior,
                votes: before,
                status,
            });
        }
        if status != "pending" {
            return Ok(VoteOutcome::NotPending(status));
        }
        sqlx::query(
            "INSERT INTO interrupt_votes (interrupt_id, voter, seq, action, decided_at, submitted_by,
               detail, event_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(interrupt_id)
        .bind(&vote.voter)
        .bind(before.len() as i64 + 1)
        .bind(&vote.action)
        .bind(&vote.decided_at)
        .bind(&vote.submitted_by)
        .bind(vote.detail.to_string())
        .bind(&vote.event_id)
        .execute(&mut *tx)
        .await?;
        let mut all = before;
        all.push(vote.clone());
        let plan = plan(&all);
        let closed = plan.close.is_some();
        if let Some(close) = &plan.close {
            mark_closed(&mut tx, interrupt_id, close).await?;
        }
        match self
            .append_in_tx(&mut tx, &run_id, plan.events, Some(plan.update), false)
            .await
        {
            Ok(records) => {
                tx.commit().await?;
                Ok(VoteOutcome::Counted {
                    votes: all,
                    closed,
                    records,
                })
            }
            Err(StoreError::RunTerminal) => Ok(VoteOutcome::RunTerminal),
            Err(e) => Err(e),
        }
    }

    async fn interrupt_votes(&self, interrupt_id: &str) -> StoreResult<Vec<VoteRecord>> {
        let found =
            sqlx::query("SELECT * FROM interrupt_votes WHERE interrupt_id = $1 ORDER BY seq")
                .bind(interrupt_id)
                .fetch_all(&self.pool)
                .await?;
        found.iter().map(rows::vote).collect()
    }

    async fn cancel_interrupts(&self, run_id: &str, cause: Option<&Value>) -> StoreResult<u64> {
        let r = sqlx::query(
            "UPDATE interrupts SET status = 'cancelled', resolution = COALESCE($2, resolution)
             WHERE run_id = $1 AND status = 'pending'",
        )
        .bind(run_id)
        .bind(cause.map(Value::to_string))
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected())
    }
}
