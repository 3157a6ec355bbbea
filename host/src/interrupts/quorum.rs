//! Quorum approvals (interrupt-profiles.md `openwop-interrupt-quorum`): an approval gate with
//! `requiredApprovals: N > 1` resolves only after N distinct voters accept, or rejects once
//! enough voters reject. The engine composes the quorum (interrupt.md §"Multi-approver quorum
//! composition", model 2): each vote is its own `approval.received` with `quorumProgress`; the
//! vote that settles the gate also commits `interrupt.resolved` and `node.resumed`.
//!
//! Rejection is deterministic and documented (the profile requires it): `single-veto` (the
//! default, interrupt.md) rejects on the first reject; `majority` rejects once more than half
//! of `requiredApprovals` have rejected (2 of 3, 3 of 4). Acceptance needs `requiredApprovals`
//! accepts under both policies. A voter who already voted is never counted again: repeating the
//! same decision is idempotent (answered with the recorded vote, audited), a different decision
//! is refused (`409 conflict`, `details.reason: "vote_already_cast"`).

use serde_json::{json, Value};

/// The profile this module implements (claimed in discovery).
pub const PROFILE: &str = "openwop-interrupt-quorum";

/// Largest `requiredApprovals` accepted at registration (bounds votes per interrupt to 2N).
pub const MAX_REQUIRED_APPROVALS: u64 = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectionPolicy {
    SingleVeto,
    Majority,
}

impl RejectionPolicy {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "single-veto" => Some(RejectionPolicy::SingleVeto),
            "majority" => Some(RejectionPolicy::Majority),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            RejectionPolicy::SingleVeto => "single-veto",
            RejectionPolicy::Majority => "majority",
        }
    }
}

/// Where a quorum stands after a vote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Open,
    Accepted,
    Rejected,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Open => "open",
            State::Accepted => "accepted",
            State::Rejected => "rejected",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuorumRule {
    pub required: u32,
    pub policy: RejectionPolicy,
}

impl QuorumRule {
    /// The rule of an approval interrupt's `data`; `None` for a single-approver gate.
    /// (Registration has validated both fields.)
    pub fn from_data(data: &Value) -> Option<Self> {
        let required = data.get("requiredApprovals").and_then(Value::as_u64)?;
        if required <= 1 {
            return None;
        }
        let policy = data
            .get("rejectionPolicy")
            .and_then(Value::as_str)
            .and_then(RejectionPolicy::parse)
            .unwrap_or(RejectionPolicy::SingleVeto);
        Some(QuorumRule {
            required: required.min(MAX_REQUIRED_APPROVALS) as u32,
            policy,
        })
    }

    /// Rejects that settle the gate as rejected.
    pub fn reject_at(&self) -> u32 {
        match self.policy {
            RejectionPolicy::SingleVeto => 1,
            RejectionPolicy::Majority => self.required / 2 + 1,
        }
    }

    /// Each vote adds one accept or one reject and is judged right after, so at most one
    /// threshold is crossed by any vote.
    pub fn decide(&self, accepts: u32, rejects: u32) -> State {
        if rejects >= self.reject_at() {
            State::Rejected
        } else if accepts >= self.required {
            State::Accepted
        } else {
            State::Open
        }
    }

    /// `quorumProgress` of events and responses.
    pub fn progress(&self, accepts: u32, rejects: u32) -> Value {
        json!({
            "required": self.required, "rejectionPolicy": self.policy.as_str(),
            "rejectAt": self.reject_at(), "accepts": accepts, "rejects": rejects,
            "state": self.decide(accepts, rejects).as_str(),
        })
    }
}

/// Accept and reject counts of votes given as actions.
pub fn tally<'a>(actions: impl IntoIterator<Item = &'a str>) -> (u32, u32) {
    actions
        .into_iter()
        .fold((0, 0), |(a, r), action| match action {
            "accept" => (a + 1, r),
            _ => (a, r + 1),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(n: u64, policy: &str) -> QuorumRule {
        QuorumRule::from_data(&json!({"requiredApprovals": n, "rejectionPolicy": policy})).unwrap()
    }

    #[test]
    fn single_approver_gates_are_not_quorums() {
        assert_eq!(
            QuorumRule::from_data(&json!({"requiredApprovals": 1})),
            None
        );
        assert_eq!(QuorumRule::from_data(&json!({})), None);
    }

    #[test]
    fn majority_thresholds() {
        let r = rule(3, "majority");
        assert_eq!(r.reject_at(), 2);
        assert_eq!(r.decide(2, 1), State::Open);
        assert_eq!(r.decide(3, 1), State::Accepted);
        assert_eq!(r.decide(1, 2), State::Rejected);
        assert_eq!(rule(4, "majority").reject_at(), 3);
        assert_eq!(rule(2, "majority").reject_at(), 2);
    }

    #[test]
    fn single_veto_is_the_default() {
        let r = QuorumRule::from_data(&json!({"requiredApprovals": 3})).unwrap();
        assert_eq!(r.policy, RejectionPolicy::SingleVeto);
        assert_eq!(r.decide(2, 1), State::Rejected);
        assert_eq!(r.decide(2, 0), State::Open);
    }

    #[test]
    fn tally_counts_each_vote_once() {
        assert_eq!(tally(["accept", "reject", "accept"]), (2, 1));
    }
}
