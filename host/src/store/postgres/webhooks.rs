//! Postgres implementation of [`WebhookStore`]. Several processes drain one outbox: a due row
//! is *claimed* (`FOR UPDATE SKIP LOCKED`, then a claim expiry on the row) by the process that
//! will attempt it, so each attempt is sent by exactly one process; recording the attempt
//! clears the claim, and a crashed sender's claim simply expires.

use async_trait::async_trait;

use super::{notify, PgStore, CH_CHANGES};
use crate::store::rows;
use crate::store::webhooks::{AttemptOutcome, Delivery, NewDelivery, Subscription, WebhookStore};
use crate::store::{CreateRunOutcome, IdempotencyClaim, StoreResult};

/// How long a claimed delivery stays reserved for its sender. Longer than any attempt's HTTP
/// timeout, so a slow attempt is never sent twice; a crashed sender delays a retry this long.
const CLAIM_MS: i64 = 120_000;

#[async_trait]
impl WebhookStore for PgStore {
    async fn insert_subscription(
        &self,
        s: &Subscription,
        idem: Option<&IdempotencyClaim>,
    ) -> StoreResult<CreateRunOutcome> {
        let mut tx = self.pool.begin().await?;
        if let Some(claim) = idem {
            if let Some(outcome) = super::claimed_before(&mut tx, claim).await? {
                tx.rollback().await?;
                return Ok(outcome);
            }
        }
        sqlx::query(
            "INSERT INTO webhook_subscriptions (webhook_id, tenant_id, principal_id, url, events, tags, secret,
               secret_fingerprint, status, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
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
        notify(&mut tx, CH_CHANGES, "webhooks").await?;
        tx.commit().await?;
        Ok(CreateRunOutcome::Created)
    }

    async fn get_subscription(&self, webhook_id: &str) -> StoreResult<Option<Subscription>> {
        let row = sqlx::query("SELECT * FROM webhook_subscriptions WHERE webhook_id = $1")
            .bind(webhook_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(rows::subscription).transpose()
    }

    async fn list_active_subscriptions(&self) -> StoreResult<Vec<Subscription>> {
        let rows = sqlx::query(
            "SELECT * FROM webhook_subscriptions WHERE status = 'active' ORDER BY created_at",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(rows::subscription).collect()
    }

    async fn delete_subscription(&self, webhook_id: &str, deleted_at: &str) -> StoreResult<bool> {
        let mut tx = self.pool.begin().await?;
        let r = sqlx::query(
            "UPDATE webhook_subscriptions SET status = 'deleted', deleted_at = $1 WHERE webhook_id = $2 AND status = 'active'",
        )
        .bind(deleted_at)
        .bind(webhook_id)
        .execute(&mut *tx)
        .await?;
        if r.rows_affected() == 1 {
            sqlx::query(
                "UPDATE webhook_deliveries SET status = 'cancelled', finished_at = $1 WHERE webhook_id = $2 AND status = 'pending'",
            )
            .bind(deleted_at)
            .bind(webhook_id)
            .execute(&mut *tx)
            .await?;
            notify(&mut tx, CH_CHANGES, "webhooks").await?;
        }
        tx.commit().await?;
        Ok(r.rows_affected() == 1)
    }

    async fn fanout_watermark(&self, run_id: &str) -> StoreResult<i64> {
        let row: Option<(i64,)> =
            sqlx::query_as("SELECT next_sequence FROM webhook_fanout WHERE run_id = $1")
                .bind(run_id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.map(|r| r.0).unwrap_or(0))
    }

    async fn commit_fanout(
        &self,
        run_id: &str,
        next_sequence: i64,
        deliveries: &[NewDelivery],
    ) -> StoreResult<()> {
        let mut tx = self.pool.begin().await?;
        for d in deliveries {
            // (webhook_id, event_id) is unique: two processes fanning out the same events
            // write each delivery once.
            sqlx::query(
                "INSERT INTO webhook_deliveries (delivery_id, webhook_id, run_id, event_id, event_type, sequence,
                   body, status, attempts, next_attempt_ms, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, 'pending', 0, $8, $9)
                 ON CONFLICT DO NOTHING",
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
            "INSERT INTO webhook_fanout (run_id, next_sequence) VALUES ($1, $2)
             ON CONFLICT (run_id) DO UPDATE SET next_sequence = GREATEST(webhook_fanout.next_sequence, excluded.next_sequence)",
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
             WHERE r.updated_at >= $1 AND r.next_sequence > COALESCE(f.next_sequence, 0) ORDER BY r.updated_at",
        )
        .bind(since)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|r| r.0).collect())
    }

    async fn due_deliveries(
        &self,
        webhook_id: &str,
        now_ms: i64,
        limit: i64,
    ) -> StoreResult<Vec<Delivery>> {
        let mut rows = sqlx::query(
            "WITH due AS (
               SELECT delivery_id FROM webhook_deliveries
                WHERE status = 'pending' AND webhook_id = $1 AND next_attempt_ms <= $2
                  AND COALESCE(claimed_until_ms, 0) <= $2
                ORDER BY next_attempt_ms, sequence LIMIT $3
                FOR UPDATE SKIP LOCKED)
             UPDATE webhook_deliveries d SET claimed_until_ms = $2 + $4
               FROM due WHERE d.delivery_id = due.delivery_id
             RETURNING d.*",
        )
        .bind(webhook_id)
        .bind(now_ms)
        .bind(limit)
        .bind(CLAIM_MS)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(rows::delivery)
        .collect::<StoreResult<Vec<_>>>()?;
        rows.sort_by_key(|d| (d.next_attempt_ms, d.sequence));
        Ok(rows)
    }

    async fn release_deliveries(&self, delivery_ids: &[String]) -> StoreResult<()> {
        if delivery_ids.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "UPDATE webhook_deliveries SET claimed_until_ms = NULL WHERE delivery_id = ANY($1) AND status = 'pending'",
        )
        .bind(delivery_ids)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn next_due_ms(&self) -> StoreResult<Option<i64>> {
        let row: (Option<i64>,) = sqlx::query_as(
            "SELECT MIN(GREATEST(next_attempt_ms, COALESCE(claimed_until_ms, 0)))
               FROM webhook_deliveries WHERE status = 'pending'",
        )
        .fetch_one(&self.pool)
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
        sqlx::query(
            "UPDATE webhook_deliveries SET status = $1, attempts = $2, last_status = $3, last_error = $4,
               next_attempt_ms = COALESCE($5, next_attempt_ms), finished_at = $6, claimed_until_ms = NULL
             WHERE delivery_id = $7 AND status = 'pending'",
        )
        .bind(status)
        .bind(attempts)
        .bind(http)
        .bind(error)
        .bind(next)
        .bind(finished)
        .bind(delivery_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn get_delivery(&self, delivery_id: &str) -> StoreResult<Option<Delivery>> {
        let row = sqlx::query("SELECT * FROM webhook_deliveries WHERE delivery_id = $1")
            .bind(delivery_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(rows::delivery).transpose()
    }

    async fn purge_deliveries(&self, settled_before: &str, dead_before: &str) -> StoreResult<u64> {
        let r = sqlx::query(
            "DELETE FROM webhook_deliveries WHERE
               (status IN ('delivered', 'cancelled') AND finished_at < $1) OR (status = 'dead' AND finished_at < $2)",
        )
        .bind(settled_before)
        .bind(dead_before)
        .execute(&self.pool)
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
            "SELECT * FROM webhook_deliveries WHERE webhook_id = $1 AND status = 'dead'
               AND (finished_at < $2 OR (finished_at = $2 AND delivery_id < $3))
             ORDER BY finished_at DESC, delivery_id DESC LIMIT $4",
        )
        .bind(webhook_id)
        .bind(&at)
        .bind(&id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(rows::delivery).collect()
    }
}
