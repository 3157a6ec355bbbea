//! Tamper-evident audit log (`openwop-audit-log-integrity`): an append-only hash chain over
//! security-relevant actions, periodically anchored by Ed25519-signed Merkle checkpoints.
//!
//! Other parts record actions through [`AuditLog::record`]; `http.rs` records the ones visible
//! at the HTTP edge (run create/cancel, interrupt resolves, auth failures). `GET /v1/audit/verify`
//! re-walks the chain from the stored rows via [`AuditLog::verify`].

pub mod chain;
pub mod config;
pub mod http;
pub mod jcs;
pub mod signing;
pub mod verify;

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use serde_json::{json, Value};
use tokio::sync::{Mutex, Notify};

use crate::store::audit::{AuditEntry, Checkpoint, NewAuditEntry};
use crate::store::{ts, Store, StoreResult};
use config::AuditArgs;
use signing::CheckpointSigner;

pub const PROFILE: &str = "openwop-audit-log-integrity";

pub struct AuditLog {
    store: Arc<dyn Store>,
    signer: CheckpointSigner,
    settings: AuditArgs,
    /// Wakes the checkpointer after appends.
    appended: Notify,
    /// The entry sequence from which a checkpoint is due by count (last checkpoint + interval,
    /// as of the checkpointer's last look). Appends below it do not wake the checkpointer:
    /// waking it costs two database reads, once per run creation otherwise.
    next_due: AtomicI64,
    /// Serialises checkpoint minting (the timer and the entry counter may race).
    minting: Mutex<()>,
}

impl AuditLog {
    pub fn new(
        store: Arc<dyn Store>,
        data_dir: &std::path::Path,
        settings: AuditArgs,
    ) -> anyhow::Result<Arc<Self>> {
        let signer = CheckpointSigner::load_or_generate(data_dir)?;
        Ok(Arc::new(AuditLog {
            store,
            signer,
            settings,
            appended: Notify::new(),
            next_due: AtomicI64::new(0),
            minting: Mutex::new(()),
        }))
    }

    /// Append one entry. `actor` is an opaque principal id (never key material).
    pub async fn record(
        &self,
        actor: &str,
        action: &str,
        target: &str,
        details: Value,
    ) -> StoreResult<AuditEntry> {
        let entry = NewAuditEntry {
            occurred_at: ts(Utc::now()),
            actor: actor.to_string(),
            action: action.to_string(),
            target: target.to_string(),
            details,
        };
        let e = self.store.audit_append(entry, chain::entry_hash).await?;
        if e.seq >= self.next_due.load(Ordering::Relaxed) {
            self.appended.notify_one();
        }
        Ok(e)
    }

    /// Like [`record`](Self::record) but only logs a failure: for callers that must not fail
    /// the user's request because the audit write failed (the action already happened).
    pub async fn record_or_log(&self, actor: &str, action: &str, target: &str, details: Value) {
        if let Err(e) = self.record(actor, action, target, details).await {
            tracing::error!(error = %e, action, "audit append failed");
        }
    }

    /// The `auth` discovery block advertising the profile.
    pub fn discovery_block(&self) -> Value {
        json!({
            "profiles": [PROFILE],
            "auditLogIntegrity": {
                "hashChain": true,
                "checkpointSignatureAlgorithm": "ed25519",
                "checkpointPublicKey": self.signer.public_key_spki_b64(),
                "checkpointIntervalEntries": self.settings.checkpoint_entries,
                "checkpointIntervalSeconds": self.settings.checkpoint_seconds,
            }
        })
    }

    /// Mint a checkpoint over the entries since the last one, if there are any and either the
    /// entry threshold is reached or `force` (the timer) is set.
    pub async fn checkpoint_if_due(&self, force: bool) -> StoreResult<Option<Checkpoint>> {
        let _guard = self.minting.lock().await;
        // Another process sharing the store may checkpoint between our read and our write; its
        // checkpoint then stands and we start over from it.
        loop {
            let head = self.store.audit_head().await?;
            let last = self
                .store
                .audit_last_checkpoint()
                .await?
                .map(|c| c.at_sequence)
                .unwrap_or(0);
            let interval = i64::from(self.settings.checkpoint_entries);
            self.next_due.store(last + interval, Ordering::Relaxed);
            let pending = head - last;
            if pending <= 0 || (!force && pending < i64::from(self.settings.checkpoint_entries)) {
                return Ok(None);
            }
            // Never exceed the advertised interval: cut at last + interval even if more are pending.
            let at = head.min(last + i64::from(self.settings.checkpoint_entries));
            let mut leaves = Vec::with_capacity((at - last) as usize);
            for e in self.store.audit_entries(last + 1, at).await? {
                leaves.push(chain::entry_hash(&e));
            }
            if leaves.len() as i64 != at - last {
                return Err(crate::store::StoreError::Backend(format!(
                    "audit log has gaps in ({last}, {at}]; refusing to checkpoint a broken chain"
                )));
            }
            let Some(root) = chain::merkle_root(&leaves) else {
                return Ok(None);
            };
            let Some(signature) = self.signer.sign_root(&root) else {
                return Ok(None);
            };
            let cp = Checkpoint {
                checkpoint_id: format!("cp-{at}"),
                at_sequence: at,
                merkle_root: root,
                signature,
                created_at: ts(Utc::now()),
            };
            if self.store.audit_put_checkpoint(&cp, last).await? {
                self.next_due.store(at + interval, Ordering::Relaxed);
                return Ok(Some(cp));
            }
        }
    }

    /// Background task: checkpoint when enough entries accumulated, and on every interval tick
    /// when any entry is uncovered.
    pub fn spawn_checkpointer(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let period = Duration::from_secs(u64::from(this.settings.checkpoint_seconds));
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                let force = tokio::select! {
                    _ = tick.tick() => true,
                    _ = this.appended.notified() => false,
                };
                loop {
                    match this.checkpoint_if_due(force).await {
                        // A large backlog is cut into interval-sized checkpoints.
                        Ok(Some(_)) => continue,
                        Ok(None) => break,
                        Err(e) => {
                            tracing::error!(error = %e, "audit checkpoint failed");
                            break;
                        }
                    }
                }
            }
        })
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn signer(&self) -> &CheckpointSigner {
        &self.signer
    }
}
