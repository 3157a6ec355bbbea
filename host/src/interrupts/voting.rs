//! Casting a vote on a quorum approval ([`super::quorum`] has the rule). The tally is taken
//! inside the store's transaction ([`crate::store::interrupts::InterruptStore::cast_vote`]), so
//! concurrent votes, on one process or several sharing a database, are each counted once.

use chrono::Utc;
use serde_json::{json, Value};

use super::quorum::{tally, QuorumRule, State};
use super::resume::{self, Resolution};
use super::{Interrupts, Kind, ResolveError};
use crate::store::interrupts::{
    InterruptClose, InterruptRecord, VoteOutcome, VotePlan, VoteRecord,
};
use crate::store::{ts, NewEvent, RunUpdate, StoreError};

/// Who a vote counts for, decided by the HTTP layer (`api::approvers::voter`).
#[derive(Debug, Clone)]
pub struct Voter {
    /// The principal the vote counts for (one vote each).
    pub id: String,
    /// The authenticated key that cast it.
    pub submitted_by: String,
    /// Why the voter is eligible (recorded with the vote, never re-resolved).
    pub eligible_by: Value,
}

fn vote_view(v: &VoteRecord) -> Value {
    let mut out = json!({"voter": v.voter, "action": v.action, "decidedAt": v.decided_at});
    if v.submitted_by != v.voter {
        out["submittedBy"] = json!(v.submitted_by);
    }
    out
}

/// What the vote that ends `votes` writes (runs inside the store's transaction).
fn plan(
    rec: &InterruptRecord,
    rule: QuorumRule,
    votes: &[VoteRecord],
    closed_status: &str,
) -> VotePlan {
    let Some(new) = votes.last() else {
        return VotePlan {
            events: vec![],
            close: None,
            update: RunUpdate::default(),
        };
    };
    let (accepts, rejects) = tally(votes.iter().map(|v| v.action.as_str()));
    let progress = rule.progress(accepts, rejects);
    let mut received = vote_view(new);
    received["nodeId"] = json!(rec.node_id);
    received["interruptId"] = json!(rec.interrupt_id);
    received["decidedBy"] = json!(new.voter);
    received["quorumProgress"] = progress.clone();
    if let Some(f) = new.detail.get("feedback") {
        received["feedback"] = f.clone();
    }
    let received = NewEvent {
        event_id: new.event_id.clone(),
        ..NewEvent::new("approval.received", received)
    }
    .node(&rec.node_id);
    let state = rule.decide(accepts, rejects);
    if state == State::Open {
        return VotePlan {
            events: vec![received.caused_by(Some(&rec.requested_event_id))],
            close: None,
            update: RunUpdate::default(),
        };
    }
    let action = if state == State::Accepted {
        "accept"
    } else {
        "reject"
    };
    // The node's output: the closing voter decided (interrupt.md: the final decision carries
    // whoever closed the quorum), with every vote that led there.
    let output = json!({
        "action": action, "decidedBy": new.voter, "decidedAt": new.decided_at,
        "quorum": progress, "votes": votes.iter().map(vote_view).collect::<Vec<_>>(),
    });
    let resolved = NewEvent::new(
        "interrupt.resolved",
        json!({"runId": rec.run_id, "nodeId": rec.node_id, "interruptId": rec.interrupt_id,
               "kind": rec.kind, "resumeValue": output, "resolvedAt": new.decided_at,
               "resolvedBy": new.voter}),
    )
    .node(&rec.node_id)
    .caused_by(Some(&rec.requested_event_id));
    let resumed = NewEvent::new(
        "node.resumed",
        json!({"nodeId": rec.node_id, "interruptId": rec.interrupt_id, "resumeValue": output}),
    )
    .node(&rec.node_id)
    .caused_by(Some(&resolved.event_id));
    let close = InterruptClose {
        status: "resolved".into(),
        resolution: output,
        resolved_by: new.voter.clone(),
        resolved_at: new.decided_at.clone(),
        resumed_event_id: Some(resumed.event_id.clone()),
    };
    let received = received.caused_by(Some(&resolved.event_id));
    VotePlan {
        events: vec![resolved, received, resumed],
        close: Some(close),
        update: RunUpdate::status(closed_status),
    }
}

impl Interrupts {
    /// Cast `voter`'s vote on the quorum approval `rec` (the run-scoped surface only: a vote
    /// needs an identity). Returns the response body.
    pub async fn vote(
        &self,
        rec: &InterruptRecord,
        rule: QuorumRule,
        body: &Value,
        voter: &Voter,
    ) -> Result<Value, ResolveError> {
        match self.store.get_run(&rec.run_id).await? {
            Some(run) if run.status == "cancelled" || run.status == "cancelling" => {
                return Err(ResolveError::Cancelled)
            }
            Some(_) => {}
            None => return Err(ResolveError::NotFound),
        }
        let at = ts(Utc::now());
        let Resolution { output, .. } = resume::validate(
            Kind::Approval,
            &rec.data,
            &resume::resume_value(body),
            &rec.node_id,
            &rec.interrupt_id,
            &voter.id,
            &at,
        )?;
        let action = output
            .get("action")
            .and_then(Value::as_str)
            .unwrap_or("reject")
            .to_string();
        let mut detail = json!({"eligibleBy": voter.eligible_by});
        if let Some(f) = output.get("feedback") {
            detail["feedback"] = f.clone();
        }
        let vote = VoteRecord {
            voter: voter.id.clone(),
            action,
            decided_at: at,
            submitted_by: voter.submitted_by.clone(),
            detail,
            event_id: NewEvent::new("approval.received", Value::Null).event_id,
        };
        let closed_status = self.status_after(&rec.run_id, &rec.interrupt_id).await?;
        let for_plan = rec.clone();
        let outcome = self
            .store
            .cast_vote(
                &rec.interrupt_id,
                &vote,
                Box::new(move |votes: &[VoteRecord]| plan(&for_plan, rule, votes, &closed_status)),
            )
            .await?;
        let (votes, closed, duplicate) = match outcome {
            VoteOutcome::Counted {
                votes,
                closed,
                records,
            } => {
                self.events.announce(&rec.run_id, &records);
                if closed {
                    self.wake(&rec.interrupt_id);
                }
                (votes, closed, false)
            }
            VoteOutcome::Duplicate { prior, .. } if prior.action != vote.action => {
                return Err(ResolveError::VoteConflict {
                    voter: prior.voter,
                    prior_action: prior.action,
                })
            }
            VoteOutcome::Duplicate { votes, status, .. } => (votes, status != "pending", true),
            VoteOutcome::NotPending(s) if s == "expired" => return Err(ResolveError::Expired),
            VoteOutcome::NotPending(s) if s == "cancelled" => return Err(ResolveError::Cancelled),
            VoteOutcome::NotPending(_) => return Err(ResolveError::AlreadyResolved),
            VoteOutcome::RunTerminal => return Err(ResolveError::Cancelled),
            VoteOutcome::NotFound => return Err(ResolveError::NotFound),
        };
        let (accepts, rejects) = tally(votes.iter().map(|v| v.action.as_str()));
        let progress = rule.progress(accepts, rejects);
        let state = rule.decide(accepts, rejects);
        let outcome = match (duplicate, state) {
            (true, _) => "duplicate-vote",
            (false, State::Open) => "vote-recorded",
            (false, State::Accepted) => "accepted",
            (false, State::Rejected) => "rejected",
        };
        let mine = votes
            .iter()
            .find(|v| v.voter == voter.id)
            .map(vote_view)
            .unwrap_or(Value::Null);
        if let Some(audit) = &self.audit {
            let details = json!({"interruptId": rec.interrupt_id, "nodeId": rec.node_id,
                                 "vote": mine, "quorumProgress": progress});
            let what = if duplicate {
                "interrupt.vote.duplicate"
            } else {
                "interrupt.vote"
            };
            audit
                .record_or_log(&voter.submitted_by, what, &rec.run_id, details)
                .await;
            if closed && !duplicate {
                let details = json!({"interruptId": rec.interrupt_id, "nodeId": rec.node_id,
                                     "kind": rec.kind, "outcome": state.as_str(),
                                     "action": if state == State::Accepted { "accept" } else { "reject" },
                                     "via": "run", "votes": votes.len()});
                audit
                    .record_or_log(
                        &voter.submitted_by,
                        "interrupt.resolve",
                        &rec.run_id,
                        details,
                    )
                    .await;
            }
        }
        let status = if closed {
            "running"
        } else {
            Kind::Approval.waiting_status()
        };
        Ok(json!({
            "runId": rec.run_id, "nodeId": rec.node_id, "interruptId": rec.interrupt_id,
            "status": status,
            "interrupt": {"kind": rec.kind, "nodeId": rec.node_id, "interruptId": rec.interrupt_id,
                          "outcome": outcome, "duplicate": duplicate, "vote": mine,
                          "quorumProgress": progress},
        }))
    }

    /// The votes of an interrupt, for snapshots.
    pub async fn votes(&self, interrupt_id: &str) -> Result<Vec<Value>, StoreError> {
        Ok(self
            .store
            .interrupt_votes(interrupt_id)
            .await?
            .iter()
            .map(vote_view)
            .collect())
    }
}
