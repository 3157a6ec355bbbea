//! SQLite implementation of [`WebhookStore`] (subscriptions, fan-out watermark, outbox).

use async_trait::async_trait;

use super::SqliteStore;
use crate::store::webhooks::{AttemptOutcome, Delivery, NewDelivery, Subscription, WebhookStore};
use crate::store::{CreateRunOutcome, IdempotencyClaim, StoreResult};

#[async_trait]
impl WebhookStore for SqliteStore {
    async fn insert_subscription(
        &self,
        s: &Subscription,
        idem: Option<&IdempotencyClaim>,
    ) -> StoreResult<CreateRunOutcome> {
        let mut tx = self.writer.begin().await?;
        if let Some(claim) = idem {
            // The same Layer-1 record table as POST /v1/runs; scope keys include the endpoint.
            if let Some(outcome) = super::claimed_before(&mut tx, claim).await? {
                tx.rollback().await?;
                return Ok(outcome);
            }
        }
        sqlx::query(
            "INSERT INTO webhook_subscriptions (webhook_id, tenant_id, principal_id, url, events, tags, secret,
               secret_fingerprint, status, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&s.webhook_id)
        .bind(&s.tenant_id)
        .bind(&s.principal_id)
        .bind(&s.url)
        .bind(serde_json::to_string(&s.events)?)
        .bind(s.tags.as_ref().map(serde_json::to_string).transpose()?)
        .bind(&s.secret)
        .bind(&s.secret_fingerprint)
        .bind(&s.status)
        .bind(&s.created_at)
        .execute(&mut *tx)
        .await?;
        if let Some(claim) = idem {
            super::record_claim(&mut tx, claim, &s.created_at).await?;
        }
        tx.commit().await?;
        Ok(CreateRunOutcome::Created)
    }

    async fn get_subscription(&self, webhook_id: &str) -> StoreResult<Option<Subscription>> {
        let row = sqlx::query("SELECT * FROM webhook_subscriptions WHERE webhook_id = ?")
            .bind(webhook_id)
            .fetch_optional(&self.reader)
            .await?;
        row.as_ref()
            .map(crate::store::rows::subscription)
            .transpose()
    }

    async fn list_active_subscriptions(&self) -> StoreResult<Vec<Subscription>> {
        let rows = sqlx::query(
            "SELECT * FROM webhook_subscriptions WHERE status = 'active' ORDER BY created_at",
        )
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(crate::store::rows::subscription).collect()
    }

    async fn delete_subscription(&self, webhook_id: &str, deleted_at: &str) -> StoreResult<bool> {
        let mut tx = self.writer.begin().await?;
        let r = sqlx::query(
            "UPDATE webhook_subscriptions SET status = 'deleted', deleted_at = ? WHERE webhook_id = ? AND status = 'active'",
        )
        .bind(deleted_at)
        .bind(webhook_id)
        .execute(&mut *tx)
        .await?;
        if r.rows_affected() == 1 {
            sqlx::query(
                "UPDATE webhook_deliveries SET status = 'cancelled', finished_at = ? WHERE webhook_id = ? AND status = 'pending'",
            )
            .bind(deleted_at)
            .bind(webhook_id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(r.rows_affected() == 1)
    }

    async fn fanout_watermark(&self, run_id: &str) -> StoreResult<i64> {
        let row: Option<(i64,)> =
            sqlx::query_as("SELECT next_sequence FROM webhook_fanout WHERE run_id = ?")
                .bind(run_id)
                .fetch_optional(&self.reader)
                .await?;
        Ok(row.map(|r| r.0).unwrap_or(0))
    }

    async fn commit_fanout(
        &self,
        run_id: &str,
        next_sequence: i64,
        deliveries: &[NewDelivery],
    ) -> StoreResult<()> {
        let mut tx = self.writer.begin().await?;
        for d in deliveries {
            sqlx::query(
                "INSERT OR IGNORE INTO webhook_deliveries (delivery_id, webhook_id, run_id, event_id, event_type, sequence,
                   body, status, attempts, next_attempt_ms, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, 'pending', 0, ?, ?)",
            )
            .bind(&d.delivery_id)
            .bind(&d.webhook_id)
            .bind(&d.run_id)
            .bind(&d.event_id)
            .bind(&d.event_type)
            .bind(d.sequence)
            .bind(&d.body)
            .bind(d.next_attempt_ms)
            .bind(&d.created_at)
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query(
            "INSERT INTO webhook_fanout (run_id, next_sequence) VALUES (?, ?)
             ON CONFLICT(run_id) DO UPDATE SET next_sequence = MAX(next_sequence, excluded.next_sequence)",
        )
        .bind(run_id)
        .bind(next_sequence)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn fanout_backlog(&self, since: &str) -> StoreResult<Vec<String>> {
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT r.run_id FROM runs r LEFT JOIN webhook_fanout f ON f.run_id = r.run_id
             WHERE r.updated_at >= ? AND r.next_sequence > COALESCE(f.next_sequence, 0) ORDER BY r.updated_at",
        )
        .bind(since)
        .fetch_all(&self.reader)
        .await?;
        Ok(rows.into_iter().map(|r| r.0).collect())
    }

    async fn due_deliveries(
        &self,
        webhook_id: &str,
        now_ms: i64,
        limit: i64,
    ) -> StoreResult<Vec<Delivery>> {
        let rows = sqlx::query(
            "SELECT * FROM webhook_deliveries WHERE status = 'pending' AND webhook_id = ? AND next_attempt_ms <= ?
             ORDER BY next_attempt_ms, sequence LIMIT ?",
        )
        .bind(webhook_id)
        .bind(now_ms)
        .bind(limit)
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(crate::store::rows::delivery).collect()
    }

    async fn next_due_ms(&self) -> StoreResult<Option<i64>> {
        let row: (Option<i64>,) = sqlx::query_as(
            "SELECT MIN(next_attempt_ms) FROM webhook_deliveries WHERE status = 'pending'",
        )
        .fetch_one(&self.reader)
        .await?;
        Ok(row.0)
    }

    async fn record_attempt(
        &self,
        delivery_id: &str,
        attempts: i64,
        outcome: &AttemptOutcome,
        now: &str,
    ) -> StoreResult<()> {
        let (status, http, error, next, finished) = outcome.columns(now);
        // `status = 'pending'` guards against resurrecting a delivery cancelled meanwhile.
        sqlx::query(
            "UPDATE webhook_deliveries SET status = ?, attempts = ?, last_status = ?, last_error = ?,
               next_attempt_ms = COALESCE(?, next_attempt_ms), finished_at = ?
             WHERE delivery_id = ? AND status = 'pending'",
        )
        .bind(status)
        .bind(attempts)
        .bind(http)
        .bind(error)
        .bind(next)
        .bind(finished)
        .bind(delivery_id)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn get_delivery(&self, delivery_id: &str) -> StoreResult<Option<Delivery>> {
        let row = sqlx::query("SELECT * FROM webhook_deliveries WHERE delivery_id = ?")
            .bind(delivery_id)
            .fetch_optional(&self.reader)
            .await?;
        row.as_ref().map(crate::store::rows::delivery).transpose()
    }

    async fn purge_deliveries(&self, settled_before: &str, dead_before: &str) -> StoreResult<u64> {
        let r = sqlx::query(
            "DELETE FROM webhook_deliveries WHERE
               (status IN ('delivered', 'cancelled') AND finished_at < ?) OR (status = 'dead' AND finished_at < ?)",
        )
        .bind(settled_before)
        .bind(dead_before)
        .execute(&self.writer)
        .await?;
        Ok(r.rows_affected())
    }

    async fn dead_letters(
        &self,
        webhook_id: &str,
        limit: i64,
        before: Option<(String, String)>,
    ) -> StoreResult<Vec<Delivery>> {
        let (at, id) = before.unwrap_or_else(|| ("\u{10FFFF}".to_string(), String::new()));
        let rows = sqlx::query(
            "SELECT * FROM webhook_deliveries WHERE webhook_id = ? AND status = 'dead'
               AND (finished_at < ? OR (finished_at = ? AND delivery_id < ?))
             ORDER BY finished_at DESC, delivery_id DESC LIMIT ?",
        )
        .bind(webhook_id)
        .bind(&at)
        .bind(&at)
        .bind(&id)
        .bind(limit)
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(crate::store::rows::delivery).collect()
    }
}
