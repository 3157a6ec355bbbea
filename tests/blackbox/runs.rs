use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use crate::harness::*;

#[tokio::test]
async fn noop_run_lifecycle() {
    let h = Host::start().await;
    let (status, body) = h
        .post(
            "/v1/runs",
            json!({"workflowId": "conformance-noop", "inputs": {}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let run_id = body["runId"].as_str().unwrap().to_string();
    assert_eq!(body["status"], "pending");
    assert_eq!(body["workflowId"], "conformance-noop");
    let snap = h.wait_terminal(&run_id, Duration::from_secs(5)).await;
    assert_eq!(snap["status"], "completed");
    assert_eq!(snap["runId"], json!(run_id));
    assert_eq!(snap["workflowId"], "conformance-noop");
    assert!(snap["startedAt"].is_string() && snap["completedAt"].is_string());
    assert!(snap.get("error").is_none());
    let events = h.events(&run_id).await;
    assert_event_log(&run_id, &events);
    assert_eq!(
        Host::event_types(&events),
        [
            "run.started",
            "node.started",
            "node.completed",
            "run.completed"
        ]
    );
    assert_eq!(events[1]["nodeId"], "noop");
    assert_eq!(events[1]["payload"]["typeId"], "core.noop");
}

/// The 201 is sent once the run row *and* its `run.started` are committed (one commit): the
/// first read after it already finds the run started. A node that ends at once commits its
/// start with its end, keeping the start's own timestamp and the causation chain.
#[tokio::test]
async fn a_created_run_is_already_started_when_the_201_arrives() {
    let h = Host::start().await;
    for _ in 0..5 {
        let run_id = h.create_run("conformance-noop", json!({})).await;
        let snap = h.snapshot(&run_id).await;
        assert_ne!(snap["status"], "pending", "{snap}");
        assert!(snap["startedAt"].is_string(), "{snap}");
        let (status, body) = h
            .get(&format!("/v1/runs/{run_id}/events/poll?lastSequence=-1"))
            .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["events"][0]["type"], "run.started", "{body}");
        assert_eq!(body["events"][0]["sequence"], 0);
        h.wait_terminal(&run_id, Duration::from_secs(5)).await;
        let events = h.events(&run_id).await;
        assert_event_log(&run_id, &events);
        let at = |i: usize| {
            chrono::DateTime::parse_from_rfc3339(events[i]["timestamp"].as_str().unwrap()).unwrap()
        };
        assert!(at(0) <= at(1) && at(1) <= at(2) && at(2) <= at(3));
        assert_eq!(events[1]["causationId"], events[0]["eventId"]);
        assert_eq!(events[2]["causationId"], events[1]["eventId"]);
        assert_eq!(events[3]["causationId"], events[2]["eventId"]);
    }
}

#[tokio::test]
async fn failure_run_surfaces_error() {
    let h = Host::start().await;
    let run_id = h.create_run("conformance-failure", json!({})).await;
    let snap = h.wait_terminal(&run_id, Duration::from_secs(5)).await;
    assert_eq!(snap["status"], "failed");
    assert!(!snap["error"]["code"].as_str().unwrap().is_empty());
    assert!(!snap["error"]["message"].as_str().unwrap().is_empty());
    let events = h.events(&run_id).await;
    assert_event_log(&run_id, &events);
    assert_eq!(
        Host::event_types(&events),
        ["run.started", "node.started", "node.failed", "run.failed"]
    );
    assert_eq!(events[2]["payload"]["nodeId"], "fail");
    assert_eq!(events[2]["payload"]["error"]["code"], snap["error"]["code"]);
    assert_eq!(events[3]["payload"]["error"]["code"], snap["error"]["code"]);
    assert_eq!(
        events[3]["payload"]["error"]["message"],
        snap["error"]["message"]
    );
    assert_eq!(
        events[3]["causationId"], events[2]["eventId"],
        "run.failed is caused by node.failed"
    );
}

#[tokio::test]
async fn multi_node_runs_in_edge_order() {
    let h = Host::start().await;
    let run_id = h.create_run("conformance-multi-node", json!({})).await;
    assert_eq!(
        h.wait_terminal(&run_id, Duration::from_secs(5)).await["status"],
        "completed"
    );
    let events = h.events(&run_id).await;
    assert_event_log(&run_id, &events);
    let completed: Vec<_> = events
        .iter()
        .filter(|e| e["type"] == "node.completed")
        .map(|e| e["nodeId"].as_str().unwrap())
        .collect();
    assert_eq!(completed, ["a", "b", "c"]);
    let started_b = events
        .iter()
        .find(|e| e["type"] == "node.started" && e["nodeId"] == "b")
        .unwrap();
    let completed_a = events
        .iter()
        .find(|e| e["type"] == "node.completed" && e["nodeId"] == "a")
        .unwrap();
    assert_eq!(started_b["causationId"], completed_a["eventId"]);
}

#[tokio::test]
async fn delay_run_is_visibly_running_then_completes() {
    let h = Host::start().await;
    let run_id = h
        .create_run("conformance-delay", json!({"delayMs": 600}))
        .await;
    let snap = h
        .wait_status(&run_id, &["running"], Duration::from_secs(2))
        .await;
    // node.started commits once the node outlives its 10 ms grace: wait for it to become current.
    let mut snap = snap;
    for _ in 0..100 {
        if snap["currentNodeId"] == "wait" || snap["status"] != "running" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        snap = h.snapshot(&run_id).await;
    }
    assert_eq!(snap["currentNodeId"], "wait");
    let snap = h.wait_terminal(&run_id, Duration::from_secs(5)).await;
    assert_eq!(snap["status"], "completed");
    let events = h.events(&run_id).await;
    assert_event_log(&run_id, &events);
    let t0 =
        chrono::DateTime::parse_from_rfc3339(events[1]["timestamp"].as_str().unwrap()).unwrap();
    let t1 =
        chrono::DateTime::parse_from_rfc3339(events[2]["timestamp"].as_str().unwrap()).unwrap();
    assert!(
        (t1 - t0).num_milliseconds() >= 590,
        "the delay really waited"
    );
    assert_eq!(snap["variables"]["delayMs"], 600);

    // Default variable value (1000) when no input is given.
    let run_id = h.create_run("conformance-delay", json!({})).await;
    let snap = h.wait_terminal(&run_id, Duration::from_secs(5)).await;
    assert_eq!(snap["variables"]["delayMs"], 1000);
    assert_eq!(snap["outputs"]["delayedMs"], 1000);
}

#[tokio::test]
async fn cancellable_run_cancels_promptly() {
    let h = Host::start().await;
    let run_id = h.create_run("conformance-cancellable", json!({})).await;
    h.wait_status(&run_id, &["running"], Duration::from_secs(2))
        .await;
    let (status, body) = h
        .post(
            &format!("/v1/runs/{run_id}/cancel"),
            json!({"reason": "test"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(["cancelling", "cancelled"].contains(&body["status"].as_str().unwrap()));
    let snap = h.wait_terminal(&run_id, Duration::from_secs(5)).await;
    assert_eq!(snap["status"], "cancelled");
    let events = h.events(&run_id).await;
    assert_event_log(&run_id, &events);
    let types = Host::event_types(&events);
    assert_eq!(types.last().unwrap(), "run.cancelled");
    assert!(types.contains(&"node.cancelled".to_string()));
    assert_eq!(events.last().unwrap()["payload"]["reason"], "test");

    // Cancel is idempotent; an empty body is fine.
    let resp = h
        .req(reqwest::Method::POST, &format!("/v1/runs/{run_id}/cancel"))
        .send()
        .await
        .unwrap();
    let (status, body) = read(resp).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "cancelled");
    assert_eq!(body["alreadyTerminal"], true);
    assert_eq!(
        h.events(&run_id).await.len(),
        events.len(),
        "no second terminal event"
    );

    let (status, body) = h.post("/v1/runs/run-nope/cancel", json!({})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_envelope(&body, "not_found");
}

#[tokio::test]
async fn identity_echoes_payload() {
    let h = Host::start().await;
    let payload = json!({"greeting": "hello", "n": [1, 2, {"deep": true}]});
    let run_id = h
        .create_run("conformance-identity", json!({"payload": payload}))
        .await;
    let snap = h.wait_terminal(&run_id, Duration::from_secs(5)).await;
    assert_eq!(snap["status"], "completed");
    assert_eq!(snap["outputs"]["payload"], payload);
    let events = h.events(&run_id).await;
    let done = events
        .iter()
        .find(|e| e["type"] == "node.completed")
        .unwrap();
    assert_eq!(done["payload"]["outputs"]["payload"], payload);
    assert_eq!(
        events.last().unwrap()["payload"]["outputs"]["payload"],
        payload
    );
}

#[tokio::test]
async fn idempotent_fixture_and_input_validation() {
    let h = Host::start().await;
    let run_id = h
        .create_run("conformance-idempotent", json!({"nonce": "abc"}))
        .await;
    assert_eq!(
        h.wait_terminal(&run_id, Duration::from_secs(5)).await["status"],
        "completed"
    );

    // Required variable missing / wrong type: precise 400s.
    let (s, b) = h
        .post(
            "/v1/runs",
            json!({"workflowId": "conformance-idempotent", "inputs": {}}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_envelope(&b, "validation_error");
    assert_eq!(b["details"]["errors"][0]["path"], "/inputs/nonce");
    let (s, b) = h
        .post(
            "/v1/runs",
            json!({"workflowId": "conformance-identity", "inputs": {"payload": "not-an-object"}}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(b["details"]["errors"][0]["code"], "invalid_type");

    // Unknown workflow.
    let (s, b) = h
        .post("/v1/runs", json!({"workflowId": "no-such-workflow"}))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_envelope(&b, "validation_error");
    assert_eq!(b["details"]["workflowId"], "no-such-workflow");
}
