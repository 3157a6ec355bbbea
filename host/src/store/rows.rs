//! Row → record mapping shared by both SQL backends. Both keep JSON as TEXT and integers as
//! 64-bit, so one mapper per record serves SQLite and Postgres rows alike.

use serde_json::Value;
use sqlx::Row;

use super::audit::{AuditEntry, Checkpoint};
use super::packs::PackRecord;
use super::webhooks::{Delivery, Subscription};
use super::{ChildRun, EventRecord, RunRecord, StoreResult, StoredWorkflow};

/// Typed column access over a backend's row type.
pub(crate) trait Cols {
    fn text(&self, col: &str) -> StoreResult<String>;
    fn opt_text(&self, col: &str) -> StoreResult<Option<String>>;
    fn int(&self, col: &str) -> StoreResult<i64>;
    fn opt_int(&self, col: &str) -> StoreResult<Option<i64>>;

    fn json(&self, col: &str) -> StoreResult<Value> {
        Ok(serde_json::from_str(&self.text(col)?)?)
    }
    fn opt_json(&self, col: &str) -> StoreResult<Option<Value>> {
        Ok(match self.opt_text(col)? {
            Some(s) => Some(serde_json::from_str(&s)?),
            None => None,
        })
    }
}

macro_rules! impl_cols {
    ($row:ty) => {
        impl Cols for $row {
            fn text(&self, col: &str) -> StoreResult<String> {
                Ok(self.try_get(col)?)
            }
            fn opt_text(&self, col: &str) -> StoreResult<Option<String>> {
                Ok(self.try_get(col)?)
            }
            fn int(&self, col: &str) -> StoreResult<i64> {
                Ok(self.try_get(col)?)
            }
            fn opt_int(&self, col: &str) -> StoreResult<Option<i64>> {
                Ok(self.try_get(col)?)
            }
        }
    };
}
impl_cols!(sqlx::sqlite::SqliteRow);
impl_cols!(sqlx::postgres::PgRow);

pub(crate) fn run<R: Cols>(r: &R) -> StoreResult<RunRecord> {
    Ok(RunRecord {
        run_id: r.text("run_id")?,
        workflow_id: r.text("workflow_id")?,
        definition_digest: r.text("definition_digest")?,
        tenant_id: r.text("tenant_id")?,
        principal_id: r.text("principal_id")?,
        status: r.text("status")?,
        inputs: r.json("inputs")?,
        variables: r.json("variables")?,
        options: r.json("options")?,
        current_node_id: r.opt_text("current_node_id")?,
        error: r.opt_json("error")?,
        outputs: r.opt_json("outputs")?,
        created_at: r.text("created_at")?,
        started_at: r.opt_text("started_at")?,
        completed_at: r.opt_text("completed_at")?,
        updated_at: r.text("updated_at")?,
        parent_run_id: r.opt_text("parent_run_id")?,
        parent_node_id: r.opt_text("parent_node_id")?,
    })
}

pub(crate) fn child_run<R: Cols>(r: &R) -> StoreResult<ChildRun> {
    Ok(ChildRun {
        run_id: r.text("run_id")?,
        workflow_id: r.text("workflow_id")?,
        parent_node_id: r.opt_text("parent_node_id")?.unwrap_or_default(),
        status: r.text("status")?,
    })
}

pub(crate) fn event<R: Cols>(r: &R) -> StoreResult<EventRecord> {
    Ok(EventRecord {
        run_id: r.text("run_id")?,
        sequence: r.int("sequence")?,
        event_id: r.text("event_id")?,
        event_type: r.text("type")?,
        node_id: r.opt_text("node_id")?,
        causation_id: r.opt_text("causation_id")?,
        payload: r.json("payload")?,
        timestamp: r.text("timestamp")?,
    })
}

/// Rows ordered by id with a tenant's own definition before the shared one: keep the first
/// per id (the tenant's own shadows the shared one).
pub(crate) fn visible_workflows(rows: Vec<StoredWorkflow>) -> Vec<StoredWorkflow> {
    let mut out: Vec<StoredWorkflow> = Vec::with_capacity(rows.len());
    for wf in rows {
        if out.last().map(|l| l.id != wf.id).unwrap_or(true) {
            out.push(wf);
        }
    }
    out
}

pub(crate) fn workflow<R: Cols>(r: &R) -> StoreResult<StoredWorkflow> {
    Ok(StoredWorkflow {
        tenant_id: r.text("tenant_id")?,
        id: r.text("id")?,
        version: r.text("version")?,
        digest: r.text("digest")?,
        definition: r.json("definition")?,
        source: r.text("source")?,
        created_at: r.text("created_at")?,
        updated_at: r.text("updated_at")?,
    })
}

pub(crate) fn subscription<R: Cols>(r: &R) -> StoreResult<Subscription> {
    Ok(Subscription {
        webhook_id: r.text("webhook_id")?,
        tenant_id: r.text("tenant_id")?,
        principal_id: r.text("principal_id")?,
        url: r.text("url")?,
        events: serde_json::from_value(r.json("events")?)?,
        tags: r
            .opt_json("tags")?
            .map(serde_json::from_value)
            .transpose()?,
        secret: r.text("secret")?,
        secret_fingerprint: r.text("secret_fingerprint")?,
        status: r.text("status")?,
        created_at: r.text("created_at")?,
    })
}

pub(crate) fn delivery<R: Cols>(r: &R) -> StoreResult<Delivery> {
    Ok(Delivery {
        delivery_id: r.text("delivery_id")?,
        webhook_id: r.text("webhook_id")?,
        run_id: r.text("run_id")?,
        event_id: r.text("event_id")?,
        event_type: r.text("event_type")?,
        sequence: r.int("sequence")?,
        body: r.text("body")?,
        status: r.text("status")?,
        attempts: r.int("attempts")?,
        next_attempt_ms: r.int("next_attempt_ms")?,
        last_status: r.opt_int("last_status")?,
        last_error: r.opt_text("last_error")?,
        created_at: r.text("created_at")?,
        finished_at: r.opt_text("finished_at")?,
    })
}

pub(crate) fn audit_entry<R: Cols>(r: &R) -> StoreResult<AuditEntry> {
    Ok(AuditEntry {
        seq: r.int("seq")?,
        occurred_at: r.text("occurred_at")?,
        actor: r.text("actor")?,
        action: r.text("action")?,
        target: r.text("target")?,
        details: r.json("details")?,
        prev_hash: r.opt_text("prev_hash")?,
        entry_hash: r.text("entry_hash")?,
    })
}

pub(crate) fn checkpoint<R: Cols>(r: &R) -> StoreResult<Checkpoint> {
    Ok(Checkpoint {
        checkpoint_id: r.text("checkpoint_id")?,
        at_sequence: r.int("at_sequence")?,
        merkle_root: r.text("merkle_root")?,
        signature: r.text("signature")?,
        created_at: r.text("created_at")?,
    })
}

pub(crate) fn pack<R: Cols>(r: &R) -> StoreResult<PackRecord> {
    Ok(PackRecord {
        tenant_id: r.text("tenant_id")?,
        name: r.text("name")?,
        version: r.text("version")?,
        runtime: r.text("runtime")?,
        manifest: r.json("manifest")?,
        entry_sha256: r.text("entry_sha256")?,
        tarball_sha256: r.opt_text("tarball_sha256")?,
        type_ids: serde_json::from_value(r.json("type_ids")?)?,
        published_by: r.text("published_by")?,
        created_at: r.text("created_at")?,
    })
}

pub(crate) fn interrupt<R: Cols>(r: &R) -> StoreResult<super::interrupts::InterruptRecord> {
    Ok(super::interrupts::InterruptRecord {
        interrupt_id: r.text("interrupt_id")?,
        run_id: r.text("run_id")?,
        node_id: r.text("node_id")?,
        key: r.text("interrupt_key")?,
        kind: r.text("kind")?,
        status: r.text("status")?,
        data: r.json("data")?,
        timeout_ms: r.opt_int("timeout_ms")?,
        token_kid: r.text("token_kid")?,
        token_hash: r.text("token_hash")?,
        inspect_token_hash: r.text("inspect_token_hash")?,
        requested_event_id: r.text("requested_event_id")?,
        requested_at: r.text("requested_at")?,
        token_expires_at: r.text("token_expires_at")?,
        deadline_at: r.opt_text("deadline_at")?,
        resolution: r.opt_json("resolution")?,
        resolved_by: r.opt_text("resolved_by")?,
        resolved_at: r.opt_text("resolved_at")?,
        resumed_event_id: r.opt_text("resumed_event_id")?,
    })
}

pub(crate) fn vote<R: Cols>(r: &R) -> StoreResult<super::interrupts::VoteRecord> {
    Ok(super::interrupts::VoteRecord {
        voter: r.text("voter")?,
        action: r.text("action")?,
        decided_at: r.text("decided_at")?,
        submitted_by: r.text("submitted_by")?,
        detail: r.json("detail")?,
        event_id: r.text("event_id")?,
    })
}
