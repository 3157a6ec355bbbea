//! Interrupts: a node parks the run until someone outside the engine resolves it
//! (spec/v1/interrupt.md). Kinds: `approval` (`core.approvalGate`), `clarification`
//! (`core.clarificationGate`) and `external-event` (`core.interrupt`).
//!
//! Lifecycle:
//! 1. The node's executor returns [`NodeOutcome::Interrupt`](crate::engine::NodeOutcome); the
//!    scheduler calls [`Interrupts::park`], which writes the interrupt row and appends
//!    `interrupt.requested` (+ `approval.requested` / `clarification.requested`) and
//!    `node.suspended` in one transaction, and sets the run to `waiting-*`.
//! 2. The node task waits in [`Interrupts::wait`] (cancel, timeout, or a resolution).
//! 3. Both resolve surfaces call [`Interrupts::resolve`], the one place that checks state,
//!    validates the resume value and commits `interrupt.resolved` (+ `approval.received` /
//!    `clarification.resolved`) and `node.resumed` together with the row change.
//! 4. The waiting node completes with the resolution as its output (`node.completed`), or
//!    fails with `interrupt_rejected` / `interrupt_timeout`.
//!
//! After a restart the node is dispatched again in "parked" mode; the interrupt `key`
//! (`${runId}:${nodeId}:${attempt}`) finds the stored interrupt, so nothing is requested twice.

pub mod config;
pub mod external;
pub mod quorum;
pub mod resume;
pub mod token;
pub mod voting;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Duration as ChronoDuration, Utc};
use serde_json::{json, Value};
use tokio::sync::Notify;

use crate::audit::AuditLog;
use crate::events::EventLog;
use crate::store::interrupts::{CloseOutcome, InterruptClose, InterruptRecord};
use crate::store::{ts, NewEvent, RunUpdate, Store, StoreError};
use resume::{Resolution, ResumeError};
use token::{Intent, TokenClaims, TokenError, TokenKeys};

/// Conformance fixtures whose semantics this module implements (advertised via
/// `Host::supported_fixtures`).
pub const FIXTURES: [&str; 5] = [
    "conformance-approval",
    "conformance-clarification",
    "conformance-interrupt-external-event",
    // Its gate's `profile` is enforced by `api::approvers` (bearer with approvals:respond only).
    "conformance-interrupt-auth-required",
    // `requiredApprovals: 3`, `rejectionPolicy: majority`: see `quorum`.
    "conformance-interrupt-quorum",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Approval,
    Clarification,
    ExternalEvent,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Approval => "approval",
            Kind::Clarification => "clarification",
            Kind::ExternalEvent => "external-event",
        }
    }
    pub fn parse(s: &str) -> Option<Kind> {
        match s {
            "approval" => Some(Kind::Approval),
            "clarification" => Some(Kind::Clarification),
            "external-event" => Some(Kind::ExternalEvent),
            _ => None,
        }
    }
    /// The run status while parked on this kind.
    pub fn waiting_status(self) -> &'static str {
        match self {
            Kind::Approval => "waiting-approval",
            Kind::Clarification => "waiting-input",
            Kind::ExternalEvent => "waiting-external",
        }
    }
}

/// What a node asks for when it suspends.
#[derive(Debug, Clone, PartialEq)]
pub struct InterruptRequest {
    pub kind: Kind,
    /// The per-kind payload data (interrupt.md §"Per-kind payloads").
    pub data: Value,
    pub timeout_ms: Option<u64>,
}

/// How a parked node's wait ended.
#[derive(Debug)]
pub enum WaitEnd {
    Resolved(InterruptRecord),
    TimedOut(InterruptRecord),
    /// The run was cancelled (reason).
    Cancelled(String),
}

/// Which surface a resolution came through (errors differ slightly, interrupt.md §Errors).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Run,
    Token,
}

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("the interrupt token is malformed")]
    Malformed,
    #[error("no pending interrupt matches")]
    NotFound,
    #[error("the interrupt token has expired")]
    Expired,
    #[error("the interrupt was already resolved")]
    AlreadyResolved,
    #[error("the run was cancelled while the interrupt was pending")]
    Cancelled,
    /// Invalidated by a cascade: the run's parent was cancelled (or failed) and took this run
    /// down with it (interrupt-profiles.md, `openwop-interrupt-cascade-cancel`).
    #[error("the interrupt was invalidated when the parent run cancelled this run")]
    Gone,
    #[error("this token may only inspect the interrupt")]
    InspectOnly,
    /// A quorum voter who already voted sent a different decision.
    #[error("{voter} already voted '{prior_action}' on this interrupt")]
    VoteConflict { voter: String, prior_action: String },
    #[error(transparent)]
    Resume(#[from] ResumeError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub struct Interrupts {
    store: Arc<dyn Store>,
    events: Arc<EventLog>,
    keys: TokenKeys,
    token_ttl_ms: u64,
    audit: Option<Arc<AuditLog>>,
    /// Parked node tasks, by interrupt id (woken after a resolution commits).
    waiters: Mutex<HashMap<String, Arc<Notify>>>,
    /// The store is shared with other processes (Postgres), so a resolution may commit
    /// elsewhere; see [`Interrupts::wait`].
    shared: std::sync::atomic::AtomicBool,
}

fn parse_ts(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

impl Interrupts {
    pub fn new(
        store: Arc<dyn Store>,
        events: Arc<EventLog>,
        keys: TokenKeys,
        settings: &config::InterruptArgs,
        audit: Option<Arc<AuditLog>>,
    ) -> Arc<Self> {
        Arc::new(Interrupts {
            store,
            events,
            keys,
            token_ttl_ms: settings.token_ttl_ms.max(1),
            audit,
            waiters: Mutex::new(HashMap::new()),
            shared: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Declare the store shared with other processes: parked waits then also watch their run's
    /// live channel for resolutions committed elsewhere.
    pub fn set_shared(&self) {
        self.shared
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    fn waiter(&self, interrupt_id: &str) -> Arc<Notify> {
        self.waiters
            .lock()
            .unwrap()
            .entry(interrupt_id.to_string())
            .or_default()
            .clone()
    }

    fn wake(&self, interrupt_id: &str) {
        // notify_one stores a permit if the waiter is between checks, so no wake-up is lost.
        self.waiter(interrupt_id).notify_one();
    }

    /// Park `node_id` on `req` (or find the interrupt a previous attempt of this process or an
    /// earlier process already raised under `key`).
    pub async fn park(
        &self,
        run_id: &str,
        node_id: &str,
        key: &str,
        req: &InterruptRequest,
        cause: &str,
    ) -> Result<InterruptRecord, StoreError> {
        if let Some(existing) = self.store.interrupt_by_key(run_id, key).await? {
            if existing.status == "pending" {
                // Restart: the run is still parked here.
                self.store
                    .set_run_status(run_id, req.kind.waiting_status())
                    .await?;
            }
            return Ok(existing);
        }
        let now = Utc::now();
        let interrupt_id = format!("int_{}", uuid::Uuid::new_v4().simple());
        let mut data = req.data.clone();
        if req.kind == Kind::ExternalEvent {
            // Stored with the row, so it is the same in every view and after any restart.
            data["correlationId"] = json!(external::correlation_id(&interrupt_id));
        }
        let mut ttl = self.token_ttl_ms;
        if let Some(t) = req.timeout_ms {
            // A token never outlives the interrupt it resolves.
            ttl = ttl.min(t);
        }
        let token_expires_at = ts(now + ChronoDuration::milliseconds(ttl as i64));
        let deadline_at = req
            .timeout_ms
            .map(|t| ts(now + ChronoDuration::milliseconds(t as i64)));
        let requested = NewEvent::new("interrupt.requested", Value::Null);
        let mut rec = InterruptRecord {
            interrupt_id: interrupt_id.clone(),
            run_id: run_id.to_string(),
            node_id: node_id.to_string(),
            key: key.to_string(),
            kind: req.kind.as_str().to_string(),
            status: "pending".into(),
            data: data.clone(),
            timeout_ms: req.timeout_ms.map(|t| t as i64),
            token_kid: self.keys.signing_kid().to_string(),
            token_hash: String::new(),
            inspect_token_hash: String::new(),
            requested_event_id: requested.event_id.clone(),
            requested_at: ts(now),
            token_expires_at,
            deadline_at,
            resolution: None,
            resolved_by: None,
            resolved_at: None,
            resumed_event_id: None,
        };
        rec.token_hash = token::digest(&self.token_for(&rec, Intent::Resolve).unwrap_or_default());
        rec.inspect_token_hash =
            token::digest(&self.token_for(&rec, Intent::Inspect).unwrap_or_default());

        let mut requested_payload = json!({
            "runId": run_id, "nodeId": node_id, "interruptId": interrupt_id,
            "kind": rec.kind, "key": key, "data": data, "requestedAt": rec.requested_at,
        });
        if let Some(t) = req.timeout_ms {
            requested_payload["timeoutMs"] = json!(t);
        }
        let requested_id = requested.event_id.clone();
        let mut events = vec![NewEvent {
            payload: requested_payload,
            ..requested
        }
        .node(node_id)
        .caused_by(Some(cause))];
        let d = &data;
        match req.kind {
            Kind::Approval => events.push(
                NewEvent::new(
                    "approval.requested",
                    json!({
                        "nodeId": node_id, "interruptId": interrupt_id,
                        "artifactId": d.get("artifactId"), "artifactType": d.get("artifactType"),
                        "actions": d.get("actions"), "title": d.get("title"),
                        "description": d.get("description"),
                        "requiredApprovals": d.get("requiredApprovals"),
                    }),
                )
                .node(node_id)
                .caused_by(Some(&requested_id)),
            ),
            Kind::Clarification => events.push(
                NewEvent::new(
                    "clarification.requested",
                    json!({"nodeId": node_id, "interruptId": interrupt_id, "questions": d.get("questions")}),
                )
                .node(node_id)
                .caused_by(Some(&requested_id)),
            ),
            Kind::ExternalEvent => {}
        }
        // Tokens are credentials: they appear on the run snapshot, never in events (which are
        // also delivered to webhook receivers).
        events.push(
            NewEvent::new(
                "node.suspended",
                json!({"nodeId": node_id, "interruptId": interrupt_id, "kind": rec.kind, "key": key,
                       "callbackUrl": "/v1/interrupts/{token}", "runStatus": req.kind.waiting_status()}),
            )
            .node(node_id)
            .caused_by(Some(&requested_id)),
        );
        let update = RunUpdate {
            status: Some(req.kind.waiting_status().into()),
            current_node_id: Some(Some(node_id.to_string())),
            ..Default::default()
        };
        let records = self.store.park_interrupt(&rec, events, update).await?;
        self.events.announce(run_id, &records);
        Ok(rec)
    }

    /// Wait until the interrupt is resolved, times out, or `cancel` fires.
    pub async fn wait(
        &self,
        rec: &InterruptRecord,
        cancel: impl Future<Output = String>,
    ) -> Result<WaitEnd, StoreError> {
        let notify = self.waiter(&rec.interrupt_id);
        // With a shared store the resolution may commit in another process: its events reach
        // this process's live channel of the run, which wakes us to re-read the row. A store of
        // this process alone needs no such channel: every resolution, vote and expiry commits
        // here and wakes `notify`. (A subscription pins the run's 256-slot broadcast buffer for
        // as long as the run is parked, ~15 KiB per parked run; docs/performance.md.)
        let mut remote = self
            .shared
            .load(std::sync::atomic::Ordering::Relaxed)
            .then(|| self.events.subscribe(&rec.run_id));
        tokio::pin!(cancel);
        let end = loop {
            let cur = self
                .store
                .get_interrupt(&rec.interrupt_id)
                .await?
                .ok_or_else(|| StoreError::Backend("interrupt row vanished".into()))?;
            match cur.status.as_str() {
                "resolved" => break WaitEnd::Resolved(cur),
                "expired" => break WaitEnd::TimedOut(cur),
                "cancelled" => break WaitEnd::Cancelled("interrupt cancelled".into()),
                _ => {}
            }
            let deadline = cur.deadline_at.as_deref().and_then(parse_ts).map(|d| {
                let left = (d - Utc::now()).to_std().unwrap_or_default();
                tokio::time::Instant::now() + left
            });
            tokio::select! {
                _ = notify.notified() => {}
                r = recv_opt(&mut remote) => {
                    if matches!(r, Err(tokio::sync::broadcast::error::RecvError::Closed)) {
                        remote = None;
                    }
                }
                reason = &mut cancel => {
                    self.store.cancel_interrupts(&rec.run_id, None).await?;
                    break WaitEnd::Cancelled(reason);
                }
                // Boxed: rare, and inline it would size every parked wait.
                _ = sleep_until_opt(deadline) => Box::pin(self.expire(&cur)).await?,
            }
        };
        self.waiters.lock().unwrap().remove(&rec.interrupt_id);
        Ok(end)
    }

    /// The interrupt's own deadline passed: close it as `expired` (an approval records the
    /// `timeout` action). A resolution that won the race is kept.
    async fn expire(&self, rec: &InterruptRecord) -> Result<(), StoreError> {
        let at = ts(Utc::now());
        let mut events = Vec::new();
        if rec.kind == "approval" {
            events.push(
                NewEvent::new(
                    "approval.received",
                    json!({"nodeId": rec.node_id, "interruptId": rec.interrupt_id, "action": "timeout",
                           "decidedBy": "system:timeout", "decidedAt": at}),
                )
                .node(&rec.node_id)
                .caused_by(Some(&rec.requested_event_id)),
            );
        }
        if rec.kind == "external-event" {
            // No event arrived in time: the log says so (RFC 0093's `outcome` / `reason` on
            // `interrupt.resolved`) before the node fails with `interrupt_timeout`.
            events.push(
                NewEvent::new(
                    "interrupt.resolved",
                    json!({"runId": rec.run_id, "nodeId": rec.node_id, "interruptId": rec.interrupt_id,
                           "kind": rec.kind, "outcome": "timeout", "reason": "timeout",
                           "resumeValue": null, "resolvedAt": at, "resolvedBy": "system:timeout",
                           "correlationId": rec.data.get("correlationId")}),
                )
                .node(&rec.node_id)
                .caused_by(Some(&rec.requested_event_id)),
            );
        }
        let close = InterruptClose {
            status: "expired".into(),
            resolution: json!({"action": "timeout"}),
            resolved_by: "system:timeout".into(),
            resolved_at: at,
            resumed_event_id: None,
        };
        let update = RunUpdate::status(&self.status_after(&rec.run_id, &rec.interrupt_id).await?);
        if let CloseOutcome::Closed(records) = self
            .store
            .close_interrupt(&rec.interrupt_id, &close, events, update)
            .await?
        {
            self.events.announce(&rec.run_id, &records);
        }
        Ok(())
    }

    /// Run status once `except` is closed: still waiting if another interrupt is pending.
    async fn status_after(&self, run_id: &str, except: &str) -> Result<String, StoreError> {
        let others = self.store.run_interrupts(run_id).await?;
        Ok(others
            .iter()
            .filter(|r| r.status == "pending" && r.interrupt_id != except)
            .find_map(|r| Kind::parse(&r.kind))
            .map(|k| k.waiting_status().to_string())
            .unwrap_or_else(|| "running".into()))
    }

    /// The token of `intent` for an interrupt (re-derived, never stored).
    pub fn token_for(&self, rec: &InterruptRecord, intent: Intent) -> Option<String> {
        self.keys.mint(&TokenClaims {
            v: 1,
            kid: rec.token_kid.clone(),
            run_id: rec.run_id.clone(),
            node_id: rec.node_id.clone(),
            interrupt_id: rec.interrupt_id.clone(),
            expires_at: rec.token_expires_at.clone(),
            intent,
        })
    }

    /// The `interrupt` object of a run snapshot (with the tokens).
    pub fn view(&self, rec: &InterruptRecord) -> Value {
        let mut v = json!({
            "interruptId": rec.interrupt_id, "nodeId": rec.node_id, "kind": rec.kind,
            "key": rec.key, "status": rec.status, "payload": rec.data, "data": rec.data,
            "requestedAt": rec.requested_at, "expiresAt": rec.token_expires_at,
        });
        if let Some(t) = rec.timeout_ms {
            v["timeoutMs"] = json!(t);
        }
        if rec.status == "pending" {
            if let Some(t) = self.token_for(rec, Intent::Resolve) {
                v["callbackUrl"] = json!(format!("/v1/interrupts/{t}"));
                v["interruptToken"] = json!(t);
            }
            if let Some(t) = self.token_for(rec, Intent::Inspect) {
                v["inspectUrl"] = json!(format!("/v1/interrupts/{t}"));
                v["inspectToken"] = json!(t);
            }
        }
        v
    }

    /// Pending interrupts of a run, as snapshot views (a quorum approval with its votes).
    pub async fn pending_views(&self, run_id: &str) -> Result<Vec<Value>, StoreError> {
        let mut out = Vec::new();
        for r in self.store.run_interrupts(run_id).await? {
            if r.status != "pending" {
                continue;
            }
            let mut v = self.view(&r);
            if let Some(rule) =
                quorum::QuorumRule::from_data(&r.data).filter(|_| r.kind == "approval")
            {
                let votes = self.votes(&r.interrupt_id).await?;
                let (a, rj) = quorum::tally(votes.iter().filter_map(|v| v["action"].as_str()));
                v["quorumProgress"] = rule.progress(a, rj);
                v["votes"] = json!(votes);
            }
            out.push(v);
        }
        Ok(out)
    }

    /// The interrupt a run raised at `node_id`: the pending one, else the latest.
    pub async fn for_node(
        &self,
        run_id: &str,
        node_id: &str,
    ) -> Result<InterruptRecord, ResolveError> {
        let all = self.store.run_interrupts(run_id).await?;
        let mut at_node: Vec<InterruptRecord> =
            all.into_iter().filter(|r| r.node_id == node_id).collect();
        if let Some(i) = at_node.iter().position(|r| r.status == "pending") {
            return Ok(at_node.swap_remove(i));
        }
        at_node.pop().ok_or(ResolveError::NotFound)
    }

    /// Authenticate a signed token: returns the interrupt it names and its intent. Forged,
    /// unknown or cross-run tokens are all `NotFound`; an expired one is `Expired`.
    pub async fn by_token(&self, tok: &str) -> Result<(InterruptRecord, Intent), ResolveError> {
        let claims = self.keys.verify(tok).map_err(|e| match e {
            TokenError::Malformed => ResolveError::Malformed,
            TokenError::Unknown => ResolveError::NotFound,
        })?;
        let rec = self
            .store
            .get_interrupt(&claims.interrupt_id)
            .await?
            .ok_or(ResolveError::NotFound)?;
        let stored = match claims.intent {
            Intent::Resolve => &rec.token_hash,
            Intent::Inspect => &rec.inspect_token_hash,
        };
        if rec.run_id != claims.run_id
            || rec.node_id != claims.node_id
            || !token::digest_matches(tok, stored)
        {
            return Err(ResolveError::NotFound);
        }
        let expired = parse_ts(&claims.expires_at)
            .map(|t| Utc::now() >= t)
            .unwrap_or(true);
        if expired || rec.status == "expired" {
            return Err(ResolveError::Expired);
        }
        Ok((rec, claims.intent))
    }

    /// Invalidate `run_id`'s open interrupts because `parent_run_id` is cascading its end into
    /// it. Done before the run is signalled, so from this commit on a resolve of them is
    /// refused as [`ResolveError::Gone`] (the run's own cancel then finds nothing pending).
    pub async fn invalidate_for_parent(
        &self,
        run_id: &str,
        parent_run_id: &str,
        reason: &str,
    ) -> Result<u64, StoreError> {
        let cause = json!({"invalidatedBy": reason, "parentRunId": parent_run_id});
        self.store.cancel_interrupts(run_id, Some(&cause)).await
    }

    /// Why a cancelled interrupt is closed: gone (a parent cascade) or plainly cancelled.
    fn cancelled_error(rec: &InterruptRecord) -> ResolveError {
        let by_parent = rec
            .resolution
            .as_ref()
            .and_then(|r| r.get("parentRunId"))
            .is_some();
        if by_parent {
            ResolveError::Gone
        } else {
            ResolveError::Cancelled
        }
    }

    /// Refuse a resolution of an interrupt that is no longer open.
    pub async fn check_open(&self, rec: &InterruptRecord) -> Result<(), ResolveError> {
        match rec.status.as_str() {
            "resolved" => return Err(ResolveError::AlreadyResolved),
            "expired" => return Err(ResolveError::Expired),
            "cancelled" => return Err(Self::cancelled_error(rec)),
            _ => {}
        }
        match self.store.get_run(&rec.run_id).await? {
            Some(run) if run.status == "cancelled" || run.status == "cancelling" => {
                Err(ResolveError::Cancelled)
            }
            Some(run) if run.is_terminal() => Err(ResolveError::AlreadyResolved),
            Some(_) => Ok(()),
            None => Err(ResolveError::NotFound),
        }
    }

    /// THE resolve path (both surfaces): check state, validate the resume value, commit the
    /// resolution and its events atomically, wake the parked node, audit. `actor` is the
    /// opaque principal recorded as `resolvedBy` / `decidedBy`.
    pub async fn resolve(
        &self,
        rec: &InterruptRecord,
        body: &Value,
        actor: &str,
        via: Via,
    ) -> Result<Value, ResolveError> {
        let event_id = external::delivery_id(rec, body)?;
        // The same external event delivered again: answered, nothing changes.
        if let Some(again) = self.redelivery(rec, event_id.as_deref()).await? {
            return Ok(again);
        }
        if let Err(e) = self.check_open(rec).await {
            // `rec` may predate a concurrent delivery of this same event that has since closed
            // the interrupt (and maybe finished the run).
            if let Some(again) = self.redelivery_now(rec, event_id.as_deref()).await? {
                return Ok(again);
            }
            return Err(e);
        }
        let kind = Kind::parse(&rec.kind)
            .ok_or_else(|| StoreError::Backend(format!("unknown interrupt kind {}", rec.kind)))?;
        let at = ts(Utc::now());
        let resume = resume::resume_value(body);
        let Resolution {
            mut output,
            mut resume_value,
            kind_event,
            ..
        } = resume::validate(
            kind,
            &rec.data,
            &resume,
            &rec.node_id,
            &rec.interrupt_id,
            actor,
            &at,
        )?;
        if let Some(id) = &event_id {
            // Recorded with the resolution: the key a re-delivery is recognised by.
            output["eventId"] = json!(id);
            resume_value["eventId"] = json!(id);
        }
        let resolved = NewEvent::new(
            "interrupt.resolved",
            json!({"runId": rec.run_id, "nodeId": rec.node_id, "interruptId": rec.interrupt_id,
                   "kind": rec.kind, "resumeValue": resume_value, "resolvedAt": at, "resolvedBy": actor}),
        )
        .node(&rec.node_id)
        .caused_by(Some(&rec.requested_event_id));
        let resolved_id = resolved.event_id.clone();
        let mut events = vec![resolved];
        if let Some((ty, payload)) = kind_event {
            events.push(
                NewEvent::new(ty, payload)
                    .node(&rec.node_id)
                    .caused_by(Some(&resolved_id)),
            );
        }
        let resumed = NewEvent::new(
            "node.resumed",
            json!({"nodeId": rec.node_id, "interruptId": rec.interrupt_id, "resumeValue": resume_value}),
        )
        .node(&rec.node_id)
        .caused_by(Some(&resolved_id));
        let close = InterruptClose {
            status: "resolved".into(),
            resolution: output.clone(),
            resolved_by: actor.to_string(),
            resolved_at: at.clone(),
            resumed_event_id: Some(resumed.event_id.clone()),
        };
        events.push(resumed);
        let update = RunUpdate::status(&self.status_after(&rec.run_id, &rec.interrupt_id).await?);
        match self
            .store
            .close_interrupt(&rec.interrupt_id, &close, events, update)
            .await?
        {
            CloseOutcome::Closed(records) => {
                self.events.announce(&rec.run_id, &records);
                self.wake(&rec.interrupt_id);
            }
            CloseOutcome::NotPending(s) if s == "expired" => return Err(ResolveError::Expired),
            CloseOutcome::NotPending(s) if s == "cancelled" => {
                // Cancelled between the check and the close: re-read to say why.
                let now = self.store.get_interrupt(&rec.interrupt_id).await?;
                return Err(now
                    .as_ref()
                    .map(Self::cancelled_error)
                    .unwrap_or(ResolveError::Cancelled));
            }
            CloseOutcome::NotPending(_) => {
                // Lost the race, maybe to a concurrent delivery of this same event.
                if let Some(again) = self.redelivery_now(rec, event_id.as_deref()).await? {
                    return Ok(again);
                }
                return Err(ResolveError::AlreadyResolved);
            }
            CloseOutcome::RunTerminal => return Err(ResolveError::Cancelled),
            CloseOutcome::NotFound => return Err(ResolveError::NotFound),
        }
        let outcome = match output.get("action").and_then(Value::as_str) {
            Some("accept") => "accepted",
            Some("reject") => "rejected",
            Some("refine") => "refined",
            Some("edit-accept") => "edit-accepted",
            _ => "resolved",
        };
        if let Some(audit) = &self.audit {
            let mut details = json!({"interruptId": rec.interrupt_id, "nodeId": rec.node_id,
                                     "kind": rec.kind, "outcome": outcome,
                                     "via": match via { Via::Run => "run", Via::Token => "token" }});
            if let Some(a) = output.get("action") {
                details["action"] = a.clone();
            }
            audit
                .record_or_log(actor, "interrupt.resolve", &rec.run_id, details)
                .await;
        }
        let mut answer = json!({
            "runId": rec.run_id, "nodeId": rec.node_id, "interruptId": rec.interrupt_id,
            "status": "running",
            "interrupt": {"kind": rec.kind, "nodeId": rec.node_id, "interruptId": rec.interrupt_id, "outcome": outcome},
        });
        if kind == Kind::ExternalEvent {
            external::describe_delivery(&mut answer["interrupt"], rec, event_id.as_deref(), false);
        }
        Ok(answer)
    }
}

async fn recv_opt(
    rx: &mut Option<tokio::sync::broadcast::Receiver<Arc<crate::store::EventRecord>>>,
) -> Result<Arc<crate::store::EventRecord>, tokio::sync::broadcast::error::RecvError> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
