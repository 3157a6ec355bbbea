//! Storage seam for the append-only audit log and its signed checkpoints.

use async_trait::async_trait;
use serde_json::Value;

use super::StoreResult;

/// An audit entry before the store assigns its sequence and chain hashes.
#[derive(Debug, Clone)]
pub struct NewAuditEntry {
    pub occurred_at: String,
    /// Opaque principal id (`key-…`), or `anonymous` / `system`.
    pub actor: String,
    /// e.g. `run.create`, `run.cancel`, `webhook.register`, `auth.failure`.
    pub action: String,
    /// What the action was about (a run id, a webhook id, a request path).
    pub target: String,
    pub details: Value,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AuditEntry {
    pub seq: i64,
    pub occurred_at: String,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub details: Value,
    /// `None` only for the genesis entry.
    pub prev_hash: Option<String>,
    /// Cached SHA-256 of this entry's canonical JSON, as computed at append time.
    pub entry_hash: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    pub checkpoint_id: String,
    pub at_sequence: i64,
    pub merkle_root: String,
    /// Base64 Ed25519 signature over the 32 bytes of `merkle_root`.
    pub signature: String,
    pub created_at: String,
}

impl NewAuditEntry {
    /// The entry appended after `head` (its seq and hash; `None` for an empty log), with its
    /// own hash computed by `hash`.
    pub(crate) fn chained(
        self,
        head: Option<(i64, String)>,
        hash: for<'h> fn(&'h AuditEntry) -> String,
    ) -> AuditEntry {
        let (seq, prev_hash) = match head {
            Some((s, h)) => (s + 1, Some(h)),
            None => (1, None),
        };
        let mut entry = AuditEntry {
            seq,
            occurred_at: self.occurred_at,
            actor: self.actor,
            action: self.action,
            target: self.target,
            details: self.details,
            prev_hash,
            entry_hash: String::new(),
        };
        entry.entry_hash = hash(&entry);
        entry
    }
}

#[async_trait]
pub trait AuditStore: Send + Sync {
    /// Append one entry at the head of the chain: the store assigns `seq`, links `prev_hash` to
    /// the current head's hash and stores `entry_hash` computed by `hash` over the final entry —
    /// all in one transaction, so concurrent appends cannot fork the chain.
    async fn audit_append(
        &self,
        entry: NewAuditEntry,
        hash: for<'h> fn(&'h AuditEntry) -> String,
    ) -> StoreResult<AuditEntry>;
    /// Highest sequence in the log (0 when empty).
    async fn audit_head(&self) -> StoreResult<i64>;
    /// Entries with `from <= seq <= to`, ascending.
    async fn audit_entries(&self, from: i64, to: i64) -> StoreResult<Vec<AuditEntry>>;
    /// Checkpoints with `from <= at_sequence <= to`, ascending.
    async fn audit_checkpoints(&self, from: i64, to: i64) -> StoreResult<Vec<Checkpoint>>;
    async fn audit_last_checkpoint(&self) -> StoreResult<Option<Checkpoint>>;
    /// Store `cp`, which covers the entries after `covers_after` (the previous checkpoint's
    /// `at_sequence`, 0 for the first), only if that is still the last checkpoint; false when
    /// another minter got there first. Verification reads each checkpoint as covering
    /// (previous, at], so a checkpoint minted from a stale "last" must never be stored.
    async fn audit_put_checkpoint(&self, cp: &Checkpoint, covers_after: i64) -> StoreResult<bool>;
}
