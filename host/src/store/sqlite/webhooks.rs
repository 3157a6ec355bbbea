//! SQLite implementation of [`WebhookStore`] (subscriptions, fan-out watermark, outbox).

use async_trait::async_trait;
use sqlx::Row;

use super::SqliteStore;
use crate::store::webhooks::{AttemptOutcome, Delivery, NewDelivery, Subscription, WebhookStore};
use crate::store::{CreateRunOutcome, IdempotencyClaim, StoreResult};

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
        row.as_ref().map(row_to_subscription).transpose()
    }

    async fn list_active_subscriptions(&self) -> StoreResult<Vec<Subscription>> {
        let rows = sqlx::query(
            "SELECT * FROM webhook_subscriptions WHERE status = 'active' ORDER BY created_at",
        )
        .fetch_all(&self.reader)
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
        rows.iter().map(row_to_delivery).collect()
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
        rows.iter().map(row_to_delivery).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::webhooks::NewDelivery;

    fn sub(id: &str) -> Subscription {
        Subscription {
            webhook_id: id.into(),
            tenant_id: "t".into(),
            principal_id: "p".into(),
            url: "https://example.com/".into(),
            events: vec!["run.completed".into()],
            tags: Some(vec!["prod".into()]),
            secret: "s".into(),
            secret_fingerprint: "f".into(),
            status: "active".into(),
            created_at: "2026-01-01T00:00:00.000Z".into(),
        }
    }

    fn delivery(id: &str, wh: &str, seq: i64, due: i64) -> NewDelivery {
        NewDelivery {
            delivery_id: id.into(),
            webhook_id: wh.into(),
            run_id: "run-1".into(),
            event_id: format!("evt-{seq}"),
            event_type: "run.completed".into(),
            sequence: seq,
            body: "{}".into(),
            next_attempt_ms: due,
            created_at: "2026-01-01T00:00:00.000Z".into(),
        }
    }

    #[tokio::test]
    async fn outbox_lifecycle_in_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).await.unwrap();
        store.insert_subscription(&sub("wh_a"), None).await.unwrap();
        store.insert_subscription(&sub("wh_b"), None).await.unwrap();
        assert_eq!(
            store.get_subscription("wh_a").await.unwrap().unwrap().tags,
            Some(vec!["prod".to_string()])
        );

        assert_eq!(store.fanout_watermark("run-1").await.unwrap(), 0);
        let rows = [
            delivery("d1", "wh_a", 1, 100),
            delivery("d2", "wh_a", 2, 50),
            delivery("d3", "wh_b", 1, 10),
        ];
        store.commit_fanout("run-1", 3, &rows).await.unwrap();
        // Re-running the same fan-out (after a crash) neither duplicates rows nor moves back.
        store
            .commit_fanout("run-1", 2, &[delivery("d9", "wh_a", 1, 100)])
            .await
            .unwrap();
        assert_eq!(store.fanout_watermark("run-1").await.unwrap(), 3);

        let due: Vec<String> = store
            .due_deliveries("wh_a", 100, 10)
            .await
            .unwrap()
            .into_iter()
            .map(|d| d.delivery_id)
            .collect();
        assert_eq!(
            due,
            ["d2", "d1"],
            "per subscription, earliest due first; the duplicate was ignored"
        );
        assert!(store
            .due_deliveries("wh_a", 49, 10)
            .await
            .unwrap()
            .is_empty());
        assert_eq!(store.next_due_ms().await.unwrap(), Some(10));

        let now = "2026-01-02T00:00:00.000Z";
        store
            .record_attempt(
                "d1",
                1,
                &AttemptOutcome::Retry {
                    http_status: Some(500),
                    error: "x".into(),
                    next_attempt_ms: 500,
                },
                now,
            )
            .await
            .unwrap();
        store
            .record_attempt(
                "d2",
                1,
                &AttemptOutcome::Delivered { http_status: 204 },
                now,
            )
            .await
            .unwrap();
        store
            .record_attempt(
                "d3",
                3,
                &AttemptOutcome::Dead {
                    http_status: None,
                    error: "down".into(),
                },
                now,
            )
            .await
            .unwrap();
        let d1 = store.get_delivery("d1").await.unwrap().unwrap();
        assert_eq!(
            (
                d1.status.as_str(),
                d1.attempts,
                d1.next_attempt_ms,
                d1.last_status
            ),
            ("pending", 1, 500, Some(500))
        );
        assert_eq!(
            store.get_delivery("d2").await.unwrap().unwrap().status,
            "delivered"
        );
        let dead = store.dead_letters("wh_b", 10, None).await.unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].last_error.as_deref(), Some("down"));

        // Deleting a subscription cancels what is pending, and a late attempt cannot revive it.
        assert!(store.delete_subscription("wh_a", now).await.unwrap());
        assert!(!store.delete_subscription("wh_a", now).await.unwrap());
        assert_eq!(
            store.get_delivery("d1").await.unwrap().unwrap().status,
            "cancelled"
        );
        store
            .record_attempt(
                "d1",
                2,
                &AttemptOutcome::Delivered { http_status: 200 },
                now,
            )
            .await
            .unwrap();
        assert_eq!(
            store.get_delivery("d1").await.unwrap().unwrap().status,
            "cancelled"
        );
        assert_eq!(store.list_active_subscriptions().await.unwrap().len(), 1);

        // Purge: settled rows before the first cutoff, dead letters only before the second.
        assert_eq!(
            store
                .purge_deliveries("2026-01-03T00:00:00.000Z", "2026-01-01T00:00:00.000Z")
                .await
                .unwrap(),
            2
        );
        assert!(store.get_delivery("d3").await.unwrap().is_some());
        assert_eq!(
            store
                .purge_deliveries("2026-01-03T00:00:00.000Z", "2026-01-03T00:00:00.000Z")
                .await
                .unwrap(),
            1
        );
        assert!(store.get_delivery("d3").await.unwrap().is_none());
    }
}
