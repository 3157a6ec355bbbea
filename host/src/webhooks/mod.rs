//! Webhook subscriptions with signed, durable delivery.
//!
//! Flow: the event log calls [`WebhookService`] (as an [`EventSink`]) after every commit; that
//! only queues the run id, so a run never waits on webhooks. The fan-out task matches the run's
//! new events against the subscriptions and writes outbox rows together with the run's fan-out
//! watermark; the dispatcher drains due rows with bounded concurrency (in total and per
//! subscription), retrying with exponential backoff until the receiver answers 2xx or the
//! attempts are exhausted and the row becomes a dead letter. Everything survives a restart:
//! the outbox is drained again and runs whose events were committed but not yet fanned out are
//! found through the watermark.

pub mod config;
pub mod dispatch;
mod drain;
pub mod fanout;
pub mod signing;
pub mod ssrf;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use chrono::Utc;
use serde_json::{json, Value};
use tokio::sync::{mpsc, Notify};
use tracing::Instrument;

use crate::audit::AuditLog;
use crate::events::EventSink;
use crate::store::webhooks::{Delivery, NewDelivery, Subscription};
use crate::store::{
    ts, CreateRunOutcome, EventRecord, IdempotencyClaim, Store, StoreError, StoreResult,
};
use crate::telemetry::TraceContext;
use config::WebhookArgs;
use ssrf::EgressPolicy;

/// Events read per fan-out step.
const FANOUT_PAGE: i64 = 500;
/// How often settled outbox rows are purged, and how long delivered rows are kept.
const PURGE_EVERY: Duration = Duration::from_secs(600);
const KEEP_SETTLED: chrono::Duration = chrono::Duration::days(1);

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error(transparent)]
    Url(#[from] ssrf::Rejection),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a registration produced.
#[derive(Debug, Clone)]
pub enum Registered {
    /// A new subscription; the body is the 201 response (it carries the secret).
    Created { webhook_id: String, body: Value },
    /// Same Idempotency-Key, same request: the original 201 response.
    Replay { status: u16, body: Value },
    /// Same Idempotency-Key, different request.
    KeyMismatch,
}

/// An Idempotency-Key claim for a registration: storage scope key and request digest.
#[derive(Debug, Clone)]
pub struct IdempotencyScope {
    pub scope_key: String,
    pub request_digest: String,
}

/// The 201 body: the spec's fields plus the aliases SDKs read (`subscriptionId`, `eventTypes`).
pub fn registration_body(sub: &Subscription) -> Value {
    let mut body = json!({
        "webhookId": sub.webhook_id,
        "subscriptionId": sub.webhook_id,
        "secret": sub.secret,
        "secretFingerprint": sub.secret_fingerprint,
        "url": sub.url,
        "events": sub.events,
        "eventTypes": sub.events,
        "tenantId": sub.tenant_id,
        "createdAt": sub.created_at,
        "signatureAlgorithm": signing::ALGORITHM,
        "status": "active",
    });
    if let Some(t) = &sub.tags {
        body["tags"] = json!(t);
    }
    body
}

/// A validated registration request.
#[derive(Debug, Clone)]
pub struct Registration {
    pub url: String,
    pub events: Vec<String>,
    pub tags: Option<Vec<String>>,
    pub tenant_id: String,
    pub principal_id: String,
}

pub struct WebhookService {
    store: Arc<dyn Store>,
    settings: WebhookArgs,
    policy: EgressPolicy,
    client: reqwest::Client,
    audit: Option<Arc<AuditLog>>,
    /// Active subscriptions (source of truth is the store; this is read on every event).
    subs: RwLock<Vec<Subscription>>,
    /// In-memory fan-out positions of live runs (the stored watermark may lag behind: it only
    /// moves with outbox rows, see `fanout_run`).
    marks: Mutex<HashMap<String, i64>>,
    /// Run ids queued for fan-out, so a burst of appends queues each run once.
    queued: Mutex<HashSet<String>>,
    fanout_tx: mpsc::UnboundedSender<String>,
    fanout_rx: Mutex<Option<mpsc::UnboundedReceiver<String>>>,
    /// Wakes the dispatcher: new outbox rows or a finished attempt.
    wake: Notify,
    /// Delivery ids with an attempt in flight, and the per-subscription count.
    inflight: Mutex<(HashSet<String>, HashMap<String, u32>)>,
    /// Runs the fan-out worker has taken off `queued` and not yet finished (drain.rs).
    fanning: AtomicUsize,
}

impl WebhookService {
    pub fn new(
        store: Arc<dyn Store>,
        settings: WebhookArgs,
        audit: Option<Arc<AuditLog>>,
    ) -> anyhow::Result<Arc<Self>> {
        let policy = EgressPolicy {
            allow_loopback: settings.allow_loopback,
        };
        let client = dispatch::client(&settings, policy)?;
        let (fanout_tx, fanout_rx) = mpsc::unbounded_channel();
        Ok(Arc::new(WebhookService {
            store,
            settings,
            policy,
            client,
            audit,
            subs: RwLock::new(Vec::new()),
            marks: Mutex::new(HashMap::new()),
            queued: Mutex::new(HashSet::new()),
            fanout_tx,
            fanout_rx: Mutex::new(Some(fanout_rx)),
            wake: Notify::new(),
            inflight: Mutex::new((HashSet::new(), HashMap::new())),
            fanning: AtomicUsize::new(0),
        }))
    }

    pub fn policy(&self) -> EgressPolicy {
        self.policy
    }

    /// Discovery block (`webhooks`). Delivery retries are a host extension on top of the
    /// best-effort baseline; `durable` (RFC 0083 trigger-bridge semantics) is not claimed.
    pub fn discovery_block(&self) -> Value {
        json!({"supported": true, "signatureAlgorithms": [signing::ALGORITHM]})
    }

    /// Load subscriptions, queue runs left un-fanned-out by a crash, and start the workers.
    pub async fn start(self: &Arc<Self>) -> StoreResult<()> {
        let active = self.store.list_active_subscriptions().await?;
        let oldest = active.iter().map(|s| s.created_at.clone()).min();
        *self.subs.write().unwrap_or_else(|e| e.into_inner()) = active;
        if let Some(since) = oldest {
            for run_id in self.store.fanout_backlog(&since).await? {
                self.queue(&run_id);
            }
        }
        let rx = self
            .fanout_rx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(rx) = rx {
            tokio::spawn(self.clone().fanout_loop(rx));
            tokio::spawn(self.clone().dispatch_loop());
        }
        Ok(())
    }

    /// Re-read the active subscriptions (another process sharing the store changed them).
    /// Events this process committed between the registration and this reload are fanned out
    /// to the new subscriptions too (backlog since the oldest new one).
    pub async fn reload_subscriptions(&self) -> StoreResult<()> {
        let active = self.store.list_active_subscriptions().await?;
        let since = {
            let mut subs = self.subs.write().unwrap_or_else(|e| e.into_inner());
            let since = active
                .iter()
                .filter(|a| !subs.iter().any(|s| s.webhook_id == a.webhook_id))
                .map(|a| a.created_at.clone())
                .min();
            *subs = active;
            since
        };
        if let Some(since) = since {
            for run_id in self.store.fanout_backlog(&since).await? {
                self.queue(&run_id);
            }
        }
        self.wake.notify_one();
        Ok(())
    }

    fn queue(&self, run_id: &str) {
        let fresh = self
            .queued
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(run_id.to_string());
        if fresh {
            let _ = self.fanout_tx.send(run_id.to_string());
        }
    }

    fn has_subscriptions(&self) -> bool {
        !self
            .subs
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
    }

    // ── registration ────────────────────────────────────────────────────────────────────

    /// Validate the URL (statically and by its current DNS answer), store the subscription and
    /// return it with its secret — the only time the secret leaves the host.
    pub async fn register(
        &self,
        reg: Registration,
        idem: Option<IdempotencyScope>,
    ) -> Result<Registered, WebhookError> {
        let url = ssrf::check_url(&reg.url, self.policy)?;
        ssrf::check_resolved(&url, self.policy, Duration::from_secs(2)).await?;
        let secret = signing::generate_secret();
        let sub = Subscription {
            webhook_id: format!("wh_{}", uuid::Uuid::new_v4().simple()),
            tenant_id: reg.tenant_id,
            principal_id: reg.principal_id.clone(),
            url: url.to_string(),
            events: reg.events,
            tags: reg.tags,
            secret_fingerprint: signing::fingerprint(&secret),
            secret,
            status: "active".into(),
            created_at: ts(Utc::now()),
        };
        let body = registration_body(&sub);
        let claim = idem.map(|i| IdempotencyClaim {
            scope_key: i.scope_key,
            request_digest: i.request_digest,
            response_status: 201,
            response_body: body.clone(),
        });
        match self.store.insert_subscription(&sub, claim.as_ref()).await? {
            CreateRunOutcome::Created => {}
            CreateRunOutcome::Replay { status, body } => {
                return Ok(Registered::Replay { status, body })
            }
            CreateRunOutcome::Mismatch => return Ok(Registered::KeyMismatch),
        }
        self.subs
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(sub.clone());
        tracing::info!(webhook = %sub.webhook_id, fingerprint = %sub.secret_fingerprint, "webhook registered");
        if let Some(a) = &self.audit {
            a.record_or_log(
                &reg.principal_id,
                "webhook.register",
                &sub.webhook_id,
                json!({"host": url.host_str().unwrap_or(""), "events": sub.events, "secretFingerprint": sub.secret_fingerprint}),
            )
            .await;
        }
        Ok(Registered::Created {
            webhook_id: sub.webhook_id,
            body,
        })
    }

    /// The subscription if it is active and belongs to `tenant` (otherwise it does not exist
    /// as far as the caller can tell).
    pub async fn get(&self, webhook_id: &str, tenant: &str) -> StoreResult<Option<Subscription>> {
        Ok(self
            .store
            .get_subscription(webhook_id)
            .await?
            .filter(|s| s.status == "active" && s.tenant_id == tenant))
    }

    /// Delete an active subscription of `tenant`; pending deliveries stop at once.
    pub async fn unregister(
        &self,
        webhook_id: &str,
        tenant: &str,
        actor: &str,
    ) -> StoreResult<bool> {
        if self.get(webhook_id, tenant).await?.is_none() {
            return Ok(false);
        }
        let deleted = self
            .store
            .delete_subscription(webhook_id, &ts(Utc::now()))
            .await?;
        self.subs
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|s| s.webhook_id != webhook_id);
        if deleted {
            if let Some(a) = &self.audit {
                a.record_or_log(actor, "webhook.delete", webhook_id, json!({}))
                    .await;
            }
        }
        Ok(deleted)
    }

    /// Dead letters of a subscription, newest first.
    pub async fn dead_letters(
        &self,
        webhook_id: &str,
        limit: i64,
        before: Option<(String, String)>,
    ) -> StoreResult<Vec<Delivery>> {
        self.store.dead_letters(webhook_id, limit, before).await
    }

    pub fn dead_letter_retention(&self) -> chrono::Duration {
        chrono::Duration::days(i64::from(self.settings.dead_letter_retention_days))
    }

    // ── fan-out ─────────────────────────────────────────────────────────────────────────

    async fn fanout_loop(self: Arc<Self>, mut rx: mpsc::UnboundedReceiver<String>) {
        while let Some(run_id) = rx.recv().await {
            // Counted busy before it leaves `queued`, so a flush never sees neither.
            self.fanning.fetch_add(1, Ordering::SeqCst);
            // Unmark first: events committed while this run is processed queue it again.
            self.queued
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&run_id);
            if let Err(e) = self.fanout_run(&run_id).await {
                tracing::error!(run = %run_id, error = %e, "webhook fan-out failed; retrying shortly");
                let this = self.clone();
                // Still busy until re-queued: a flush must not pass over the retry.
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    this.queue(&run_id);
                    this.fanning.fetch_sub(1, Ordering::SeqCst);
                });
            } else {
                self.fanning.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }

    async fn fanout_run(&self, run_id: &str) -> StoreResult<()> {
        if !self.has_subscriptions() {
            return Ok(());
        }
        let Some(run) = self.store.get_run(run_id).await? else {
            return Ok(());
        };
        let cached = self
            .marks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(run_id)
            .copied();
        let mut next = match cached {
            Some(n) => n,
            None => self.store.fanout_watermark(run_id).await?,
        };
        loop {
            let events = self
                .store
                .list_events(run_id, next - 1, FANOUT_PAGE)
                .await?;
            let Some(last) = events.last().map(|e| e.sequence) else {
                return Ok(());
            };
            let deliveries = self.deliveries_for(&run, &events);
            // The watermark only needs to move with new outbox rows (and once at the end of the
            // run): re-reading a batch without matches after a crash is harmless, and skipping
            // the write keeps the shared writer connection free for the runs themselves.
            let terminal = events.iter().any(EventRecord::is_terminal);
            if !deliveries.is_empty() || terminal {
                self.store
                    .commit_fanout(run_id, last + 1, &deliveries)
                    .await?;
                if !deliveries.is_empty() {
                    self.wake.notify_one();
                }
            }
            next = last + 1;
            {
                let mut marks = self.marks.lock().unwrap_or_else(|e| e.into_inner());
                if terminal {
                    marks.remove(run_id);
                } else {
                    marks.insert(run_id.to_string(), next);
                }
            }
            if (events.len() as i64) < FANOUT_PAGE {
                return Ok(());
            }
        }
    }

    fn deliveries_for(
        &self,
        run: &crate::store::RunRecord,
        events: &[EventRecord],
    ) -> Vec<NewDelivery> {
        let subs = self.subs.read().unwrap_or_else(|e| e.into_inner());
        let now_ms = Utc::now().timestamp_millis();
        let created_at = ts(Utc::now());
        let mut out = Vec::new();
        for ev in events {
            let mut body: Option<String> = None;
            for sub in subs.iter().filter(|s| fanout::matches(s, run, ev)) {
                let body = body.get_or_insert_with(|| fanout::body(run, ev)).clone();
                out.push(NewDelivery {
                    delivery_id: format!("dlv_{}", uuid::Uuid::now_v7().simple()),
                    webhook_id: sub.webhook_id.clone(),
                    run_id: run.run_id.clone(),
                    event_id: ev.event_id.clone(),
                    event_type: ev.event_type.clone(),
                    sequence: ev.sequence,
                    body,
                    next_attempt_ms: now_ms,
                    created_at: created_at.clone(),
                });
            }
        }
        out
    }

    // ── dispatch ────────────────────────────────────────────────────────────────────────

    async fn dispatch_loop(self: Arc<Self>) {
        let mut last_purge: Option<std::time::Instant> = None;
        loop {
            if last_purge.is_none_or(|t| t.elapsed() >= PURGE_EVERY) {
                last_purge = Some(std::time::Instant::now());
                self.purge().await;
            }
            let spawned = match self.dispatch_due().await {
                Ok(n) => n,
                Err(e) => {
                    tracing::error!(error = %e, "webhook dispatcher could not read the outbox");
                    0
                }
            };
            if spawned > 0 {
                continue;
            }
            // Sleep until the next retry is due, new rows arrive, or an attempt finishes.
            let now = Utc::now().timestamp_millis();
            let wait = match self.store.next_due_ms().await {
                Ok(Some(t)) if t > now => (t - now).min(1000) as u64,
                _ => 1000,
            };
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(wait.max(5))) => {}
            }
        }
    }

    /// Keep the outbox bounded: delivered/cancelled rows go after a day, dead letters after
    /// their advertised retention.
    async fn purge(&self) {
        let now = Utc::now();
        match self
            .store
            .purge_deliveries(
                &ts(now - KEEP_SETTLED),
                &ts(now - self.dead_letter_retention()),
            )
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::info!(rows = n, "purged settled webhook deliveries"),
            Err(e) => tracing::warn!(error = %e, "webhook outbox purge failed"),
        }
    }

    /// Start attempts for due rows, respecting both concurrency limits. Returns how many started.
    async fn dispatch_due(self: &Arc<Self>) -> StoreResult<usize> {
        let subs: Vec<Subscription> = self.subs.read().unwrap_or_else(|e| e.into_inner()).clone();
        let now = Utc::now().timestamp_millis();
        let mut started = 0;
        for sub in subs {
            let (total, mine) = {
                let g = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
                (
                    g.0.len() as u32,
                    g.1.get(&sub.webhook_id).copied().unwrap_or(0),
                )
            };
            let free = self.settings.concurrency.saturating_sub(total).min(
                self.settings
                    .per_subscription_concurrency
                    .saturating_sub(mine),
            );
            if free == 0 {
                continue;
            }
            // Rows already in flight are still `pending` in the store; over-fetch to skip them.
            let due = self
                .store
                .due_deliveries(&sub.webhook_id, now, i64::from(free + mine))
                .await?;
            let mut unstarted = Vec::new();
            for d in due {
                let claimed = {
                    let mut g = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
                    let count = g.1.get(&sub.webhook_id).copied().unwrap_or(0);
                    if (g.0.len() as u32) >= self.settings.concurrency
                        || count >= self.settings.per_subscription_concurrency
                        || !g.0.insert(d.delivery_id.clone())
                    {
                        false
                    } else {
                        g.1.insert(sub.webhook_id.clone(), count + 1);
                        true
                    }
                };
                if claimed {
                    started += 1;
                    tokio::spawn(self.clone().deliver(sub.clone(), d));
                } else {
                    unstarted.push(d.delivery_id);
                }
            }
            self.store.release_deliveries(&unstarted).await?;
        }
        Ok(started)
    }

    async fn deliver(self: Arc<Self>, sub: Subscription, d: Delivery) {
        // The due list may have been read before a previous attempt on this row was recorded:
        // only the attempt that finds the row exactly as listed goes ahead (no double sends).
        let current = self.store.get_delivery(&d.delivery_id).await;
        if !matches!(&current, Ok(Some(c)) if c.status == "pending" && c.attempts == d.attempts) {
            self.release(&sub.webhook_id, &d.delivery_id);
            return;
        }
        let attempts = u32::try_from(d.attempts)
            .unwrap_or(u32::MAX)
            .saturating_add(1);
        // The delivery is an `openwop.activity.webhook` span in the run's trace.
        let call = match self.store.get_run(&d.run_id).await {
            Ok(Some(run)) => Some(crate::telemetry::trace::run_trace(&run).0),
            _ => None,
        };
        let span_ctx = call.as_ref().map(TraceContext::child);
        let span = tracing::info_span!(
            "openwop.activity",
            otel.name = "openwop.activity.webhook",
            openwop.run_id = %d.run_id,
            webhook = %sub.webhook_id,
            delivery = %d.delivery_id,
            trace_id = span_ctx.as_ref().map(|c| c.trace_id.as_str()),
            span_id = span_ctx.as_ref().map(|c| c.span_id.as_str()),
            parent_span_id = call.as_ref().map(|c| c.span_id.as_str()),
        );
        let result = dispatch::attempt(&self.client, self.policy, &sub, &d, span_ctx.as_ref())
            .instrument(span)
            .await;
        let outcome = dispatch::outcome(
            &self.settings,
            attempts,
            result,
            Utc::now().timestamp_millis(),
        );
        if let crate::store::webhooks::AttemptOutcome::Dead { error, .. } = &outcome {
            tracing::warn!(webhook = %sub.webhook_id, fingerprint = %sub.secret_fingerprint, delivery = %d.delivery_id,
                attempts, error = %error, "webhook delivery dead-lettered");
        }
        if let Err(e) = self
            .store
            .record_attempt(
                &d.delivery_id,
                i64::from(attempts),
                &outcome,
                &ts(Utc::now()),
            )
            .await
        {
            tracing::error!(delivery = %d.delivery_id, error = %e, "could not record webhook attempt");
        }
        self.release(&sub.webhook_id, &d.delivery_id);
    }

    fn release(&self, webhook_id: &str, delivery_id: &str) {
        {
            let mut g = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
            g.0.remove(delivery_id);
            if let Some(c) = g.1.get_mut(webhook_id) {
                *c = c.saturating_sub(1);
            }
        }
        self.wake.notify_one();
    }
}

impl EventSink for WebhookService {
    fn committed(&self, run_id: &str, _records: &[EventRecord]) {
        if self.has_subscriptions() {
            self.queue(run_id);
        }
    }
}
