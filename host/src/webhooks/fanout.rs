//! Which subscriptions an event goes to, and the exact body they receive.

use serde_json::{json, Value};

use crate::store::webhooks::Subscription;
use crate::store::{EventRecord, RunRecord};

/// Whether `sub` should receive `event` of `run`: same tenant (never cross-tenant), event type
/// subscribed, tag filter overlapping the run's tags, and the event not older than the
/// subscription (a new subscription does not receive history).
pub fn matches(sub: &Subscription, run: &RunRecord, event: &EventRecord) -> bool {
    if sub.status != "active" || sub.tenant_id != run.tenant_id {
        return false;
    }
    if !sub.events.iter().any(|t| t == &event.event_type) {
        return false;
    }
    if event.timestamp < sub.created_at {
        return false;
    }
    match &sub.tags {
        None => true,
        Some(wanted) => run
            .options
            .get("tags")
            .and_then(Value::as_array)
            .map(|have| {
                have.iter()
                    .filter_map(Value::as_str)
                    .any(|t| wanted.iter().any(|w| w == t))
            })
            .unwrap_or(false),
    }
}

/// Delivery body: the spec's wrapper `{runId, workspaceId, event}` plus `type` and `sequence`
/// copied to the top level (the conformance suite's signed-delivery scenario reads them there).
pub fn body(run: &RunRecord, event: &EventRecord) -> String {
    json!({
        "runId": run.run_id,
        "workspaceId": run.tenant_id,
        "type": event.event_type,
        "sequence": event.sequence,
        "event": event.to_json(),
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(events: &[&str], tags: Option<&[&str]>) -> Subscription {
        Subscription {
            webhook_id: "wh_1".into(),
            tenant_id: "t1".into(),
            principal_id: "p".into(),
            url: "https://example.com".into(),
            events: events.iter().map(|s| s.to_string()).collect(),
            tags: tags.map(|t| t.iter().map(|s| s.to_string()).collect()),
            secret: "s".into(),
            secret_fingerprint: "f".into(),
            status: "active".into(),
            created_at: "2026-01-01T00:00:00.000Z".into(),
        }
    }

    fn run(tenant: &str, tags: Value) -> RunRecord {
        RunRecord {
            run_id: "run-1".into(),
            workflow_id: "wf".into(),
            definition_digest: "d".into(),
            tenant_id: tenant.into(),
            principal_id: "p".into(),
            status: "running".into(),
            inputs: json!({}),
            variables: json!({}),
            options: json!({"tags": tags}),
            current_node_id: None,
            error: None,
            outputs: None,
            created_at: "2026-01-01T00:00:00.000Z".into(),
            started_at: None,
            completed_at: None,
            updated_at: "2026-01-01T00:00:00.000Z".into(),
            parent_run_id: None,
            parent_node_id: None,
        }
    }

    fn event(ty: &str, at: &str) -> EventRecord {
        EventRecord {
            run_id: "run-1".into(),
            sequence: 3,
            event_id: "evt-3".into(),
            event_type: ty.into(),
            node_id: None,
            causation_id: None,
            payload: json!({}),
            timestamp: at.into(),
        }
    }

    #[test]
    fn filters_by_tenant_type_tags_and_age() {
        let now = "2026-01-02T00:00:00.000Z";
        let s = sub(&["run.completed"], None);
        assert!(matches(
            &s,
            &run("t1", json!([])),
            &event("run.completed", now)
        ));
        assert!(
            !matches(&s, &run("t2", json!([])), &event("run.completed", now)),
            "cross-tenant"
        );
        assert!(!matches(
            &s,
            &run("t1", json!([])),
            &event("run.failed", now)
        ));
        assert!(!matches(
            &s,
            &run("t1", json!([])),
            &event("run.completed", "2025-12-31T00:00:00.000Z")
        ));
        let tagged = sub(&["run.completed"], Some(&["prod"]));
        assert!(matches(
            &tagged,
            &run("t1", json!(["dev", "prod"])),
            &event("run.completed", now)
        ));
        assert!(!matches(
            &tagged,
            &run("t1", json!(["dev"])),
            &event("run.completed", now)
        ));
        let mut deleted = s.clone();
        deleted.status = "deleted".into();
        assert!(!matches(
            &deleted,
            &run("t1", json!([])),
            &event("run.completed", now)
        ));
    }

    #[test]
    fn body_wraps_the_event_and_lifts_type_and_sequence() {
        let b: Value =
            serde_json::from_str(&body(&run("t1", json!([])), &event("run.completed", "x")))
                .unwrap();
        assert_eq!(b["runId"], "run-1");
        assert_eq!(b["workspaceId"], "t1");
        assert_eq!(b["type"], "run.completed");
        assert_eq!(b["sequence"], 3);
        assert_eq!(b["event"]["eventId"], "evt-3");
        assert_eq!(b["event"]["type"], "run.completed");
    }
}
