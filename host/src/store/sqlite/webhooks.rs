//! SQLite implementation of [`WebhookStore`] (subscriptions, fan-out watermark, outbox).

use async_trait::async_trait;
use sqlx::Row;

use super::SqliteStore;
use crate::store::webhooks::{AttemptOutcome, Delivery, NewDelivery, Subscription, WebhookStore};
use crate::store::StoreResult;

fn row_to_subscription(r: &sqlx::sqlite::SqliteRow) -> StoreResult<Subscription> {
    let tags: Option<String> = r.try_get("tags")?;
    Ok(Subscription {
        webhook_id: r.try_get("webhook_id")?,
        tenant_id: r.try_get("tenant_id")?,
        principal_id: r.try_get("principal_id")?,
        url: r.try_get("url")?,
        events: serde_json::from_str(r.try_get::<&str, _>("events")?)?,
        tags: tags.map(|t| serde_json::from_str(&t)).transpose()?,
        secret: r.try_get("secret")?,
        secret_fingerprint: r.try_get("secret_fingerprint")?,
        status: r.try_get("status")?,
        created_at: r.try_get("created_at")?,
    })
}

fn row_to_delivery(r: &sqlx::sqlite::SqliteRow) -> StoreResult<Delivery> {
    Ok(Delivery {
        delivery_id: r.try_get("delivery_id")?,
        webhook_id: r.try_get("webhook_id")?,
        run_id: r.try_get("run_id")?,
        event_id: r.try_get("event_id")?,
        event_type: r.try_get("event_type")?,
        sequence: r.try_get("sequence")?,
        body: r.try_get("body")?,
        status: r.try_get("status")?,
        attempts: r.try_get("attempts")?,
        next_attempt_ms: r.try_get("next_attempt_ms")?,
        last_status: r.try_get("last_status")?,
        last_error: r.try_get("last_error")?,
        created_at: r.try_get("created_at")?,
        finished_at: r.try_get("finished_at")?,
    })
}

#[async_trait]
impl WebhookStore for SqliteStore {
    async fn insert_subscription(&self, s: &Subscription) -> StoreResult<()> {
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
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn get_subscription(&self, webhook_id: &str) -> StoreResult<Option<Subscription>> {
        let row = sqlx::query("SELECT * FROM webhook_subscriptions WHERE webhook_id = ?")
            .bind(webhook_id)
            .fetch_optional(&self.reader)
            .await?;
        row.as_ref().map(row_to_subscription).transpose()
    }

    async fn list_active_subscriptions(&self) -> StoreResult<Vec<Subscription>> {
        let rows = sqlx::query(
            "SELECT * FROM webhook_subscriptions WHERE status = 'active' ORDER BY created_at",
        )
        .fetch_all(&self.writer)
        .await?;
        rows.iter().map(row_to_subscription).collect()
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
                .fetch_optional(&self.writer)
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
        .fetch_all(&self.writer)
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
        .fetch_all(&self.writer)
        .await?;
        rows.iter().map(row_to_delivery).collect()
    }

    async fn next_due_ms(&self) -> StoreResult<Option<i64>> {
        let row: (Option<i64>,) = sqlx::query_as(
            "SELECT MIN(next_attempt_ms) FROM webhook_deliveries WHERE status = 'pending'",
        )
        .fetch_one(&self.writer)
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
        let (status, http, error, next, finished) = match outcome {
            AttemptOutcome::Delivered { http_status } => {
                ("delivered", Some(*http_status), None, None, Some(now))
            }
            AttemptOutcome::Retry {
                http_status,
                error,
                next_attempt_ms,
            } => (
                "pending",
                *http_status,
                Some(error.as_str()),
                Some(*next_attempt_ms),
                None,
            ),
            AttemptOutcome::Dead { http_status, error } => {
                ("dead", *http_status, Some(error.as_str()), None, Some(now))
            }
        };
        // `status = 'pending'` guards against resurrecting a delivery cancelled meanwhile.
        sqlx::query(
            "UPDATE webhook_deliveries SET status = ?, attempts = ?, last_status = ?, last_error = ?,
               next_attempt_ms = COALESCE(?, next_attempt_ms), finished_at = ?
             WHERE delivery_id = ? AND status = 'pending'",
        )
        .bind(status)
        .bind(attempts)
        .bind(http.map(i64::from))
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
        row.as_ref().map(row_to_delivery).transpose()
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
        rows.iter().map(row_to_delivery).collect()
    }
}
