//! Storage seam for interrupts (parked nodes awaiting a resolution).
//!
//! Parking and resolving are each ONE transaction that writes the interrupt row and appends the
//! run's events together, so the log and the lookup table can never disagree (a resolve that
//! loses a race writes nothing; a crash leaves either both or neither).

use async_trait::async_trait;
use serde_json::Value;

use super::{EventRecord, NewEvent, RunUpdate, StoreResult};

#[derive(Debug, Clone, PartialEq)]
pub struct InterruptRecord {
    pub interrupt_id: String,
    pub run_id: String,
    pub node_id: String,
    pub key: String,
    /// `approval`, `clarification` or `external-event`.
    pub kind: String,
    /// `pending`, `resolved`, `cancelled` or `expired`.
    pub status: String,
    pub data: Value,
    pub timeout_ms: Option<i64>,
    pub token_kid: String,
    pub token_hash: String,
    pub inspect_token_hash: String,
    pub requested_event_id: String,
    pub requested_at: String,
    pub token_expires_at: String,
    pub deadline_at: Option<String>,
    /// The node's output once resolved.
    pub resolution: Option<Value>,
    pub resolved_by: Option<String>,
    pub resolved_at: Option<String>,
    /// `node.resumed` of the resolution (causation for the node's completion).
    pub resumed_event_id: Option<String>,
}

/// A resolution (or a timeout) about to be committed.
#[derive(Debug, Clone)]
pub struct InterruptClose {
    /// `resolved` or `expired`.
    pub status: String,
    pub resolution: Value,
    pub resolved_by: String,
    pub resolved_at: String,
    pub resumed_event_id: Option<String>,
}

#[derive(Debug, Clone)]
pub enum CloseOutcome {
    Closed(Vec<EventRecord>),
    /// The interrupt was no longer pending (someone else won); nothing was written.
    NotPending(String),
    /// The run is terminal (cancelled, failed); nothing was written.
    RunTerminal,
    NotFound,
}

/// One approver's vote on a quorum approval (interrupt-profiles.md `openwop-interrupt-quorum`).
#[derive(Debug, Clone, PartialEq)]
pub struct VoteRecord {
    /// The principal the vote counts for (one vote per voter and interrupt).
    pub voter: String,
    /// `accept` or `reject`.
    pub action: String,
    pub decided_at: String,
    /// The authenticated key that cast it (differs from `voter` for an on-behalf vote).
    pub submitted_by: String,
    /// JSON: `feedback?`, `eligibleBy`.
    pub detail: Value,
    /// The vote's `approval.received` event.
    pub event_id: String,
}

/// What a counted vote writes, decided from every vote so far (the new one last) inside the
/// store's transaction, so two concurrent votes can never both see the same tally.
pub struct VotePlan {
    pub events: Vec<NewEvent>,
    /// `Some` when this vote settles the quorum.
    pub close: Option<InterruptClose>,
    pub update: RunUpdate,
}

pub type PlanVote = Box<dyn FnOnce(&[VoteRecord]) -> VotePlan + Send>;

#[derive(Debug, Clone)]
pub enum VoteOutcome {
    /// Recorded; `votes` are all votes in order (this one last); `closed` when it settled the
    /// quorum.
    Counted {
        votes: Vec<VoteRecord>,
        closed: bool,
        records: Vec<EventRecord>,
    },
    /// The voter had already voted: nothing was written. `status` is the interrupt's.
    Duplicate {
        prior: VoteRecord,
        votes: Vec<VoteRecord>,
        status: String,
    },
    NotPending(String),
    RunTerminal,
    NotFound,
}

#[async_trait]
pub trait InterruptStore: Send + Sync {
    /// Insert a pending interrupt and append `events` (+ `update`) in one transaction.
    async fn park_interrupt(
        &self,
        rec: &InterruptRecord,
        events: Vec<NewEvent>,
        update: RunUpdate,
    ) -> StoreResult<Vec<EventRecord>>;
    async fn get_interrupt(&self, interrupt_id: &str) -> StoreResult<Option<InterruptRecord>>;
    /// The interrupt a run raised under `key` (replay short-circuit), whatever its status.
    async fn interrupt_by_key(
        &self,
        run_id: &str,
        key: &str,
    ) -> StoreResult<Option<InterruptRecord>>;
    /// Every interrupt of a run, oldest first.
    async fn run_interrupts(&self, run_id: &str) -> StoreResult<Vec<InterruptRecord>>;
    /// Move a pending interrupt to `close.status` and append `events` (+ `update`) atomically.
    async fn close_interrupt(
        &self,
        interrupt_id: &str,
        close: &InterruptClose,
        events: Vec<NewEvent>,
        update: RunUpdate,
    ) -> StoreResult<CloseOutcome>;
    /// Record `vote` on a pending interrupt, serialized with every other vote and close of it
    /// (SQLite: the single writer; Postgres: the interrupt row's lock): a voter who already
    /// voted gets `Duplicate` (even once closed); otherwise the vote row, `plan`'s events and its
    /// optional close commit together.
    async fn cast_vote(
        &self,
        interrupt_id: &str,
        vote: &VoteRecord,
        plan: PlanVote,
    ) -> StoreResult<VoteOutcome>;
    /// The votes cast on an interrupt, in order.
    async fn interrupt_votes(&self, interrupt_id: &str) -> StoreResult<Vec<VoteRecord>>;
    /// Mark a run's pending interrupts `cancelled` (their tokens become invalid). `cause`, when
    /// given, is kept as the row's `resolution` so a later resolve can say why (a cascade from
    /// a parent run makes the interrupt gone rather than merely cancelled).
    async fn cancel_interrupts(&self, run_id: &str, cause: Option<&Value>) -> StoreResult<u64>;
}
