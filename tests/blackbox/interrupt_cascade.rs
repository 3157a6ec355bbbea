//! `openwop-interrupt-cascade-cancel` (interrupt-profiles.md) on the fixture pair
//! `conformance-interrupt-parent-child-cancel(-child)`: the parent mirrors its child's
//! `waiting-approval`, cancelling the parent cancels the child with `reason: parent-cancelled`
//! and `parentRunId`, and the child's open interrupt is invalidated (`410 interrupt_gone` on the
//! run-scoped route, `409 interrupt_already_resolved` for its signed token). Also
//! `conformance-subworkflow-mid-run-mutation`: a seeded child keeps its dispatch-time inputs
//! while its parent's variables change. The scenarios are shared with the Postgres module.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::harness::*;

const T: Duration = Duration::from_secs(20);
pub const PARENT: &str = "conformance-interrupt-parent-child-cancel";
pub const CHILD: &str = "conformance-interrupt-parent-child-cancel-child";
pub const PROFILE: &str = "openwop-interrupt-cascade-cancel";

/// The parent's first listed child, once it has one.
async fn first_child(h: &Host, parent: &str) -> String {
    let deadline = std::time::Instant::now() + T;
    loop {
        let snap = h.snapshot(parent).await;
        if let Some(id) = snap["childRuns"][0]["runId"].as_str() {
            return id.to_string();
        }
        assert!(std::time::Instant::now() < deadline, "no child: {snap}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The node both fixtures' children park on.
const CHILD_GATE: &str = "child-gate";

/// The whole cascade scenario against `h` (SQLite or Postgres).
pub async fn parent_cancel_invalidates_the_childs_interrupt(h: &Host) {
    let parent = h.create_run(PARENT, json!({})).await;
    // The parent shows the status of the child it waits on.
    h.wait_status(&parent, &["waiting-approval"], T).await;
    let child = first_child(h, &parent).await;
    let snap = h.wait_status(&child, &["waiting-approval"], T).await;
    assert_eq!(snap["parentRunId"], json!(parent), "{snap}");
    assert_eq!(snap["parentNodeId"], "spawn-child", "{snap}");
    let token = snap["interrupt"]["interruptToken"]
        .as_str()
        .unwrap_or_else(|| panic!("no token on {snap}"))
        .to_string();

    let (status, body) = h
        .post(
            &format!("/v1/runs/{parent}/cancel"),
            json!({"reason": "conformance-test-cascade"}),
        )
        .await;
    assert!(status.is_success(), "{status} {body}");
    assert_eq!(h.wait_terminal(&parent, T).await["status"], "cancelled");
    let parent_events = h.events(&parent).await;
    assert_event_log(&parent, &parent_events);
    let direct = parent_events.last().unwrap();
    assert_eq!(direct["type"], "run.cancelled");
    assert_eq!(direct["payload"]["reason"], "conformance-test-cascade");
    assert!(direct["payload"].get("parentRunId").is_none(), "{direct}");

    let snap = h.wait_terminal(&child, T).await;
    assert_eq!(snap["status"], "cancelled", "{snap}");
    assert!(
        snap.get("interrupt").is_none(),
        "no open interrupt left: {snap}"
    );
    let events = h.events(&child).await;
    assert_event_log(&child, &events);
    let types = Host::event_types(&events);
    assert!(types.contains(&"node.cancelled".to_string()), "{types:?}");
    let last = events.last().unwrap();
    assert_eq!(last["type"], "run.cancelled");
    assert_eq!(last["payload"]["reason"], "parent-cancelled", "{last}");
    assert_eq!(last["payload"]["parentRunId"], json!(parent), "{last}");
    assert_eq!(last["payload"]["parentNodeId"], "spawn-child", "{last}");
    // The parent lists the child as cancelled.
    let psnap = h.snapshot(&parent).await;
    assert_eq!(psnap["childRuns"][0]["status"], "cancelled", "{psnap}");

    // The child's interrupt is gone on the run-scoped route ...
    let (status, body) = h.accept(&child, CHILD_GATE).await;
    assert_eq!(status, StatusCode::GONE, "{body}");
    assert_envelope(&body, "interrupt_gone");
    // ... and its signed token is invalidated (RFC 0093: 409).
    let (status, body) = read(
        h.anon(Method::POST, &format!("/v1/interrupts/{token}"))
            .json(&json!({"resumeValue": {"action": "accept"}}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_envelope(&body, "interrupt_already_resolved");
    // Nothing was resolved after the cascade.
    let after = h.events(&child).await;
    assert_eq!(after.len(), events.len());
    assert!(!Host::event_types(&after).contains(&"interrupt.resolved".to_string()));

    // Cancelling again is idempotent on both runs.
    for run in [&parent, &child] {
        let (status, body) = h.post(&format!("/v1/runs/{run}/cancel"), json!({})).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["status"], "cancelled");
    }
}

/// The RFC 0022 §B one-shot fold on the real fixture pair: mutate the parent while its child
/// waits on an approval, then resolve the child.
pub async fn a_waiting_child_keeps_its_dispatch_time_inputs(h: &Host) {
    let parent = h
        .create_run("conformance-subworkflow-mid-run-mutation", json!({}))
        .await;
    h.wait_status(&parent, &["waiting-approval"], T).await;
    let child = first_child(h, &parent).await;
    h.wait_status(&child, &["waiting-approval"], T).await;
    let (status, body) = h
        .seam_set_variables(&parent, json!({"currentPrdId": "mutated-id"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = h.accept(&child, CHILD_GATE).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let c = h.wait_terminal(&child, T).await;
    assert_eq!(c["status"], "completed", "{c}");
    assert_eq!(c["variables"]["receivedPrdId"], "seeded-id", "{c}");
    let p = h.wait_terminal(&parent, T).await;
    assert_eq!(p["status"], "completed", "{p}");
    assert_eq!(p["variables"]["currentPrdId"], "mutated-id", "{p}");
}

fn seams() -> Options {
    Options {
        extra_args: vec!["--enable-test-seams".into()],
        ..Default::default()
    }
}

#[tokio::test]
async fn cascade_cancel_fixture_pair_on_sqlite() {
    let h = Host::start().await;
    let (_, doc) = h.get("/.well-known/openwop").await;
    let fixtures = doc["fixtures"].as_array().unwrap();
    for f in [PARENT, CHILD] {
        assert!(fixtures.contains(&json!(f)), "{f} advertised: {fixtures:?}");
    }
    let profiles = &doc["extensions"]["interrupts"]["profiles"];
    assert!(
        profiles.as_array().unwrap().contains(&json!(PROFILE)),
        "{profiles}"
    );
    parent_cancel_invalidates_the_childs_interrupt(&h).await;
}

#[tokio::test]
async fn a_directly_cancelled_run_keeps_the_interrupt_cancelled_answer() {
    // Only a cascade makes an interrupt "gone"; a run cancelled by its own client keeps the
    // interrupt.md answer (422 on the run route, 409 for the token).
    let h = Host::start().await;
    let run = h.create_run(CHILD, json!({})).await;
    h.wait_status(&run, &["waiting-approval"], T).await;
    let (status, _) = h.post(&format!("/v1/runs/{run}/cancel"), json!({})).await;
    assert_eq!(status, StatusCode::OK);
    h.wait_terminal(&run, T).await;
    let last = h.events(&run).await.pop().unwrap();
    assert!(last["payload"].get("parentRunId").is_none(), "{last}");
    let (status, body) = h.accept(&run, CHILD_GATE).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_envelope(&body, "interrupt_cancelled");
}

#[tokio::test]
async fn mid_run_mutation_fixture_on_sqlite() {
    let h = Host::start_with(seams()).await;
    let (_, doc) = h.get("/.well-known/openwop").await;
    let fixtures = doc["fixtures"].as_array().unwrap();
    for f in [
        "conformance-subworkflow-mid-run-mutation",
        "conformance-subworkflow-mid-run-mutation-child",
    ] {
        assert!(fixtures.contains(&json!(f)), "{f} advertised: {fixtures:?}");
    }
    a_waiting_child_keeps_its_dispatch_time_inputs(&h).await;
}
