//! SQLite implementation of [`InterruptStore`]: parking and closing run on the writer thread
//! (`writer.rs`), the row change and the event append in one savepoint of its transaction.

use super::{SqliteStore, WriteOp};
use crate::store::interrupts::{
    CloseOutcome, InterruptClose, InterruptRecord, InterruptStore, PlanVote, VoteOutcome,
    VoteRecord,
};
use crate::store::rows;
use crate::store::{EventRecord, NewEvent, RunUpdate, StoreResult};
use async_trait::async_trait;
use serde_json::Value;

#[async_trait]
impl InterruptStore for SqliteStore {
    async fn park_interrupt(
        &self,
        rec: &InterruptRecord,
        events: Vec<NewEvent>,
        update: RunUpdate,
    ) -> StoreResult<Vec<EventRecord>> {
        let payloads = events.iter().map(|e| e.payload.to_string()).collect();
        let rec = Box::new(rec.clone());
        self.hot
            .call(|reply| WriteOp::ParkInterrupt {
                rec,
                events,
                payloads,
                update,
                reply,
            })
            .await
    }

    async fn get_interrupt(&self, interrupt_id: &str) -> StoreResult<Option<InterruptRecord>> {
        let row = sqlx::query("SELECT * FROM interrupts WHERE interrupt_id = ?")
            .bind(interrupt_id)
            .fetch_optional(&self.reader)
            .await?;
        row.as_ref().map(rows::interrupt).transpose()
    }

    async fn interrupt_by_key(
        &self,
        run_id: &str,
        key: &str,
    ) -> StoreResult<Option<InterruptRecord>> {
        let row = sqlx::query("SELECT * FROM interrupts WHERE run_id = ? AND interrupt_key = ?")
            .bind(run_id)
            .bind(key)
            .fetch_optional(&self.writer)
            .await?;
        row.as_ref().map(rows::interrupt).transpose()
    }

    async fn run_interrupts(&self, run_id: &str) -> StoreResult<Vec<InterruptRecord>> {
        let found = sqlx::query(
            "SELECT * FROM interrupts WHERE run_id = ? ORDER BY requested_at, interrupt_id",
        )
        .bind(run_id)
        .fetch_all(&self.reader)
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
        let payloads = events.iter().map(|e| e.payload.to_string()).collect();
        let (interrupt_id, close) = (interrupt_id.to_string(), close.clone());
        self.hot
            .call(|reply| WriteOp::CloseInterrupt {
                interrupt_id,
                close,
                events,
                payloads,
                update,
                reply,
            })
            .await
    }

    async fn cast_vote(
        &self,
        interrupt_id: &str,
        vote: &VoteRecord,
        plan: PlanVote,
    ) -> StoreResult<VoteOutcome> {
        let (interrupt_id, vote) = (interrupt_id.to_string(), Box::new(vote.clone()));
        self.hot
            .call(|reply| WriteOp::CastVote {
                interrupt_id,
                vote,
                plan: Some(plan),
                reply,
            })
            .await
    }

    async fn interrupt_votes(&self, interrupt_id: &str) -> StoreResult<Vec<VoteRecord>> {
        // The writer connection: a vote just answered is visible (the reader may lag a commit).
        let found =
            sqlx::query("SELECT * FROM interrupt_votes WHERE interrupt_id = ? ORDER BY seq")
                .bind(interrupt_id)
                .fetch_all(&self.writer)
                .await?;
        found.iter().map(rows::vote).collect()
    }

    async fn cancel_interrupts(&self, run_id: &str, cause: Option<&Value>) -> StoreResult<u64> {
        let r = sqlx::query(
            "UPDATE interrupts SET status = 'cancelled', resolution = COALESCE(?, resolution)
             WHERE run_id = ? AND status = 'pending'",
        )
        .bind(cause.map(Value::to_string))
        .bind(run_id)
        .execute(&self.writer)
        .await?;
        Ok(r.rows_affected())
    }
}
