//! `core.subWorkflow`: child runs with input/output mapping, parent linkage on both snapshots,
//! failure propagation, restart while a parent waits, wide fan-out, and cascade cancel.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::harness::*;

const T: Duration = Duration::from_secs(20);

fn sub(id: &str, config: Value) -> Value {
    node(id, "core.subWorkflow", config, json!({}))
}

fn var(name: &str, ty: &str, default: Option<Value>) -> Value {
    match default {
        Some(d) => json!({"name": name, "type": ty, "defaultValue": d}),
        None => json!({"name": name, "type": ty}),
    }
}

/// The `node.completed` payload outputs of `node_id`.
fn node_outputs(events: &[Value], node_id: &str) -> Value {
    events
        .iter()
        .find(|e| e["type"] == "node.completed" && e["nodeId"] == node_id)
        .unwrap_or_else(|| panic!("no node.completed for {node_id}: {events:?}"))["payload"]
        ["outputs"]
        .clone()
}

fn child_id_of(events: &[Value], node_id: &str) -> String {
    node_outputs(events, node_id)["childRunId"]
        .as_str()
        .expect("childRunId")
        .to_string()
}

/// Wait until the parent lists a child for `node_id`; returns its runId.
async fn wait_child(h: &Host, parent: &str, node_id: &str) -> String {
    let deadline = std::time::Instant::now() + T;
    loop {
        let snap = h.snapshot(parent).await;
        if let Some(c) = snap["childRuns"]
            .as_array()
            .and_then(|a| a.iter().find(|c| c["parentNodeId"] == node_id))
        {
            return c["runId"].as_str().unwrap().to_string();
        }
        assert!(std::time::Instant::now() < deadline, "no child: {snap}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn parent_fixture_runs_child_maps_outputs_and_links_both_ways() {
    let h = Host::start().await;
    let (_, disc) = h.get("/.well-known/openwop").await;
    let fixtures = disc["fixtures"].as_array().unwrap();
    for f in [
        "conformance-subworkflow-parent",
        "conformance-subworkflow-child",
        "conformance-subworkflow-input-mapping",
        "conformance-subworkflow-input-mapping-child",
        "conformance-subworkflow-input-mapping-no-default",
    ] {
        assert!(fixtures.contains(&json!(f)), "{f} advertised: {disc}");
    }
    assert_eq!(disc["capabilities"]["subWorkflow"]["inputMapping"], true);
    parent_fixture_maps_outputs_and_links_both_ways(&h).await;
}

/// `conformance-subworkflow-parent`: the child's outcome is mapped back, both snapshots link
/// (shared with the Postgres module).
pub async fn parent_fixture_maps_outputs_and_links_both_ways(h: &Host) {
    let parent = h
        .create_run("conformance-subworkflow-parent", json!({}))
        .await;
    let snap = h.wait_terminal(&parent, T).await;
    assert_eq!(snap["status"], "completed", "{snap}");
    assert_eq!(snap["variables"]["childOutcome"], "child-completed");
    let events = h.events(&parent).await;
    assert_event_log(&parent, &events);
    let types = Host::event_types(&events);
    assert!(types.contains(&"variable.changed".to_string()), "{types:?}");
    let out = node_outputs(&events, "subwf-call");
    assert_eq!(out["childStatus"], "completed");
    let child = child_id_of(&events, "subwf-call");

    let c = h.snapshot(&child).await;
    assert_eq!(c["status"], "completed");
    assert_eq!(c["workflowId"], "conformance-subworkflow-child");
    assert_eq!(c["parentRunId"], json!(parent));
    assert_eq!(c["parentNodeId"], "subwf-call");
    assert_eq!(
        c["owner"], snap["owner"],
        "the child runs in the parent's tenant"
    );
    assert_event_log(&child, &h.events(&child).await);
    assert_eq!(
        snap["childRuns"],
        json!([{"runId": child, "workflowId": "conformance-subworkflow-child",
                 "parentNodeId": "subwf-call", "status": "completed"}])
    );
    // A top-level run has no linkage and no children.
    assert!(snap.get("parentRunId").is_none(), "{snap}");
    assert!(c.get("childRuns").is_none(), "{c}");
    // The parent's end follows the child's end: parent-end ran after the sub-workflow node.
    let seq = |t: &str, n: &str| {
        events
            .iter()
            .find(|e| e["type"] == t && e["nodeId"] == n)
            .unwrap()["sequence"]
            .as_i64()
            .unwrap()
    };
    assert!(seq("node.completed", "subwf-call") < seq("node.started", "parent-end"));
}

#[tokio::test]
async fn input_mapping_overrides_child_defaults_and_unset_stays_unset() {
    let h = Host::start().await;
    let parent = h
        .create_run("conformance-subworkflow-input-mapping", json!({}))
        .await;
    assert_eq!(h.wait_terminal(&parent, T).await["status"], "completed");
    let child = child_id_of(&h.events(&parent).await, "subwf-call");
    let c = h.snapshot(&child).await;
    assert_eq!(c["variables"]["receivedPrdId"], "prd-1", "{c}");

    // A caller-supplied parent value is what gets projected.
    let parent = h
        .create_run(
            "conformance-subworkflow-input-mapping",
            json!({"currentPrdId": "from-caller"}),
        )
        .await;
    h.wait_terminal(&parent, T).await;
    let child = child_id_of(&h.events(&parent).await, "subwf-call");
    assert_eq!(
        h.snapshot(&child).await["variables"]["receivedPrdId"],
        "from-caller"
    );

    // Parent variable declared without a default: the child variable is unset — not null and
    // not the child's own default.
    let parent = h
        .create_run(
            "conformance-subworkflow-input-mapping-no-default",
            json!({}),
        )
        .await;
    assert_eq!(h.wait_terminal(&parent, T).await["status"], "completed");
    let child = child_id_of(&h.events(&parent).await, "subwf-call");
    let c = h.snapshot(&child).await;
    assert_eq!(c["status"], "completed");
    assert!(
        c["variables"].get("receivedPrdId").is_none(),
        "unset parent variable must leave the child variable unset: {c}"
    );
}

#[tokio::test]
async fn mapping_errors_fail_the_parent_node_with_clear_codes() {
    let h = Host::start().await;
    h.register(workflow(
        "strict-child",
        json!([node("n", "core.noop", json!({}), json!({}))]),
        json!([]),
        json!([{"name": "needed", "type": "string", "required": true},
               {"name": "count", "type": "number", "defaultValue": 1}]),
    ))
    .await;
    // The parent variable feeding a required child variable has no value.
    h.register(workflow(
        "maps-unset",
        json!([sub(
            "call",
            json!({"workflowId": "strict-child", "inputMapping": {"needed": "missing"}})
        )]),
        json!([]),
        json!([var("missing", "string", None)]),
    ))
    .await;
    let run = h.create_run("maps-unset", json!({})).await;
    let snap = h.wait_terminal(&run, T).await;
    assert_eq!(snap["status"], "failed");
    assert_eq!(snap["error"]["code"], "child_input_invalid", "{snap}");
    let events = h.events(&run).await;
    let failed = events.iter().find(|e| e["type"] == "node.failed").unwrap();
    assert_eq!(
        failed["payload"]["error"]["details"]["errors"][0]["path"],
        "/inputs/needed"
    );
    assert!(
        snap.get("childRuns").is_none(),
        "no child was started: {snap}"
    );

    // A projected value of the wrong type is refused the same way.
    h.register(workflow(
        "maps-wrong-type",
        json!([sub(
            "call",
            json!({"workflowId": "strict-child",
            "inputMapping": {"needed": "s", "count": "s"}})
        )]),
        json!([]),
        json!([var("s", "string", Some(json!("text")))]),
    ))
    .await;
    let run = h.create_run("maps-wrong-type", json!({})).await;
    let snap = h.wait_terminal(&run, T).await;
    assert_eq!(snap["error"]["code"], "child_input_invalid", "{snap}");

    // Unknown child workflow.
    h.register(workflow(
        "calls-nothing",
        json!([sub("call", json!({"workflowId": "no-such-workflow"}))]),
        json!([]),
        json!([]),
    ))
    .await;
    let run = h.create_run("calls-nothing", json!({})).await;
    let snap = h.wait_terminal(&run, T).await;
    assert_eq!(snap["status"], "failed");
    assert_eq!(snap["error"]["code"], "unknown_child_workflow", "{snap}");

    // Malformed configs are refused at registration, with the node named.
    for (config, what) in [
        (json!({}), "no workflowId"),
        (
            json!({"workflowId": "strict-child", "waitForCompletion": false}),
            "async",
        ),
        (
            json!({"workflowId": "strict-child", "onChildFailure": "shrug"}),
            "enum",
        ),
        (
            json!({"workflowId": "strict-child", "inputMapping": {"a": 3}}),
            "mapping",
        ),
        (
            json!({"workflowId": "strict-child", "outputMapping": ["a"]}),
            "mapping",
        ),
    ] {
        let (status, body) = h
            .post(
                "/v1/workflows",
                workflow(
                    "bad-sub",
                    json!([sub("call", config)]),
                    json!([]),
                    json!([]),
                ),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{what}: {body}");
        assert_envelope(&body, "validation_error");
    }
}

#[tokio::test]
async fn child_failure_fails_the_parent_or_is_absorbed() {
    let h = Host::start().await;
    h.register(workflow(
        "failing-child",
        json!([node(
            "boom",
            "core.fail",
            json!({"code": "kaput", "message": "child broke"}),
            json!({})
        )]),
        json!([]),
        json!([{"name": "result", "type": "string", "defaultValue": "never-mapped"}]),
    ))
    .await;
    for (id, policy) in [("fails-parent", "fail-parent"), ("absorbs", "absorb")] {
        h.register(workflow(
            id,
            json!([
                sub(
                    "call",
                    json!({"workflowId": "failing-child", "onChildFailure": policy,
                    "outputMapping": {"got": "result"}})
                ),
                node("after", "core.noop", json!({}), json!({}))
            ]),
            json!([edge("e", "call", "after")]),
            json!([]),
        ))
        .await;
    }
    let run = h.create_run("fails-parent", json!({})).await;
    let snap = h.wait_terminal(&run, T).await;
    assert_eq!(snap["status"], "failed");
    assert_eq!(snap["error"]["code"], "child_failed", "{snap}");
    let events = h.events(&run).await;
    assert_event_log(&run, &events);
    let failed = events.iter().find(|e| e["type"] == "node.failed").unwrap();
    let details = &failed["payload"]["error"]["details"];
    assert_eq!(details["childStatus"], "failed");
    assert_eq!(details["childError"]["code"], "kaput", "{failed}");
    let child = details["childRunId"].as_str().unwrap();
    assert_eq!(h.snapshot(child).await["status"], "failed");
    let done = events.iter().find(|e| e["type"] == "run.failed").unwrap();
    assert_eq!(done["payload"]["failedNodeId"], "call");
    assert!(!Host::event_types(&events).contains(&"variable.changed".to_string()));
    assert!(
        snap["variables"].get("got").is_none(),
        "no outputMapping from a failed child"
    );

    let run = h.create_run("absorbs", json!({})).await;
    let snap = h.wait_terminal(&run, T).await;
    assert_eq!(snap["status"], "completed", "{snap}");
    let out = node_outputs(&h.events(&run).await, "call");
    assert_eq!(out["childStatus"], "failed");
    assert_eq!(out["childError"]["code"], "kaput");
    assert!(snap["variables"].get("got").is_none(), "{snap}");
}

#[tokio::test]
async fn a_workflow_that_calls_itself_stops_at_the_depth_limit() {
    let h = Host::start().await;
    h.register(workflow(
        "recursive",
        json!([sub("again", json!({"workflowId": "recursive"}))]),
        json!([]),
        json!([]),
    ))
    .await;
    let root = h.create_run("recursive", json!({})).await;
    let snap = h.wait_terminal(&root, Duration::from_secs(60)).await;
    assert_eq!(snap["status"], "failed", "{snap}");
    assert_eq!(snap["error"]["code"], "child_failed");
    // Walk down to the deepest run: it failed on the limit itself.
    let mut run = root.clone();
    let mut depth = 0;
    loop {
        let s = h.snapshot(&run).await;
        match s["childRuns"].as_array() {
            Some(c) => {
                assert_eq!(c.len(), 1);
                run = c[0]["runId"].as_str().unwrap().to_string();
                depth += 1;
            }
            None => {
                assert_eq!(s["error"]["code"], "subworkflow_depth_exceeded", "{s}");
                break;
            }
        }
    }
    assert_eq!(depth, 16, "nesting stops at 16 levels below the root");
}

#[tokio::test]
async fn a_hundred_parallel_children_each_map_their_own_values() {
    hundred_children_each_map_their_own_values(&Host::start().await).await;
}

/// One parent, 100 `core.subWorkflow` nodes in parallel, each child mapping its own value in
/// and out (shared with the Postgres module).
pub async fn hundred_children_each_map_their_own_values(h: &Host) {
    h.register(workflow(
        "echo-child",
        json!([node("n", "core.noop", json!({}), json!({}))]),
        json!([]),
        json!([{"name": "n", "type": "number", "defaultValue": -1}]),
    ))
    .await;
    const N: usize = 100;
    let nodes: Vec<Value> = (0..N)
        .map(|i| {
            sub(
                &format!("call{i}"),
                json!({"workflowId": "echo-child",
                       "inputMapping": {"n": format!("in{i}")},
                       "outputMapping": {format!("out{i}"): "n"}}),
            )
        })
        .collect();
    let vars: Vec<Value> = (0..N)
        .map(|i| var(&format!("in{i}"), "number", Some(json!(i * 10))))
        .collect();
    h.register(workflow("fan-out", json!(nodes), json!([]), json!(vars)))
        .await;
    let run = h.create_run("fan-out", json!({})).await;
    let snap = h.wait_terminal(&run, Duration::from_secs(120)).await;
    assert_eq!(snap["status"], "completed", "{snap}");
    for i in 0..N {
        assert_eq!(
            snap["variables"][format!("out{i}")],
            json!(i * 10),
            "out{i}"
        );
    }
    let children = snap["childRuns"].as_array().unwrap();
    assert_eq!(children.len(), N);
    let mut ids: Vec<&str> = children
        .iter()
        .map(|c| c["runId"].as_str().unwrap())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), N, "one distinct child per node");
    assert!(children.iter().all(|c| c["status"] == "completed"));
    let events = h.events(&run).await;
    assert_event_log(&run, &events);
    let changed = events
        .iter()
        .filter(|e| e["type"] == "variable.changed")
        .count();
    assert_eq!(changed, N);
}

#[tokio::test]
async fn a_parent_waiting_on_a_child_survives_kill9() {
    let mut h = Host::start().await;
    let dir = h.data_dir.clone();
    let _tmp = h.take_tmp();
    h.register(workflow(
        "slow-child",
        json!([node(
            "wait",
            "core.delay",
            json!({"delayMs": 1500}),
            json!({})
        )]),
        json!([]),
        json!([{"name": "result", "type": "string", "defaultValue": "slow-done"}]),
    ))
    .await;
    h.register(workflow(
        "waits-on-slow",
        json!([sub(
            "call",
            json!({"workflowId": "slow-child", "outputMapping": {"r": "result"}})
        )]),
        json!([]),
        json!([]),
    ))
    .await;
    let parent = h.create_run("waits-on-slow", json!({})).await;
    let child = wait_child(&h, &parent, "call").await;
    h.wait_status(&child, &["running"], T).await;
    h.kill9();

    let h = Host::start_with(Options {
        data_dir: Some(dir),
        ..Default::default()
    })
    .await;
    let snap = h.wait_terminal(&parent, T).await;
    assert_eq!(snap["status"], "completed", "{snap}");
    assert_eq!(snap["variables"]["r"], "slow-done");
    // The resumed parent re-attached to the child it had started; no second child.
    let children = snap["childRuns"].as_array().unwrap();
    assert_eq!(children.len(), 1, "{snap}");
    assert_eq!(children[0]["runId"], json!(child));
    assert_eq!(h.snapshot(&child).await["status"], "completed");
    let events = h.events(&parent).await;
    assert_event_log(&parent, &events);
    assert!(Host::event_types(&events).contains(&"run.resumed".to_string()));
    assert_eq!(child_id_of(&events, "call"), child);
}

async fn register_cascade(h: &Host) {
    h.register(workflow(
        "sleepy-child",
        json!([node(
            "wait",
            "core.delay",
            json!({"delayMs": 600000}),
            json!({})
        )]),
        json!([]),
        json!([]),
    ))
    .await;
    // Two levels, so the cascade must travel parent → child → grandchild.
    h.register(workflow(
        "middle",
        json!([sub("down", json!({"workflowId": "sleepy-child"}))]),
        json!([]),
        json!([]),
    ))
    .await;
    h.register(workflow(
        "top",
        json!([
            sub("spawn", json!({"workflowId": "middle"})),
            sub(
                "detached",
                json!({"workflowId": "sleepy-child", "propagateCancellation": false})
            )
        ]),
        json!([]),
        json!([]),
    ))
    .await;
}

#[tokio::test]
async fn cancelling_a_parent_cascades_to_waiting_children() {
    let h = Host::start().await;
    register_cascade(&h).await;
    let top = h.create_run("top", json!({})).await;
    let middle = wait_child(&h, &top, "spawn").await;
    let leaf = wait_child(&h, &middle, "down").await;
    let detached = wait_child(&h, &top, "detached").await;
    h.wait_status(&leaf, &["running"], T).await;

    let (status, body) = h
        .post(
            &format!("/v1/runs/{top}/cancel"),
            json!({"reason": "operator"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(h.wait_terminal(&top, T).await["status"], "cancelled");
    let top_events = h.events(&top).await;
    assert_event_log(&top, &top_events);
    let direct = top_events.last().unwrap();
    assert_eq!(direct["payload"]["reason"], "operator");
    assert!(
        direct["payload"].get("parentRunId").is_none(),
        "direct: {direct}"
    );

    for (run, parent) in [(&middle, &top), (&leaf, &middle)] {
        let snap = h.wait_terminal(run, T).await;
        assert_eq!(snap["status"], "cancelled", "{snap}");
        let events = h.events(run).await;
        assert_event_log(run, &events);
        let last = events.last().unwrap();
        assert_eq!(last["type"], "run.cancelled");
        assert_eq!(last["payload"]["reason"], "parent-cancelled", "{last}");
        assert_eq!(last["payload"]["parentRunId"], json!(parent), "{last}");
    }
    // propagateCancellation: false detaches the child: it keeps running.
    assert_eq!(h.snapshot(&detached).await["status"], "running");
    let (status, _) = h
        .post(&format!("/v1/runs/{detached}/cancel"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    h.wait_terminal(&detached, T).await;
    let events = h.events(&detached).await;
    assert!(events.last().unwrap()["payload"]
        .get("parentRunId")
        .is_none());

    // Cancelling again is idempotent and terminal-state safe.
    let (status, body) = h.post(&format!("/v1/runs/{top}/cancel"), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "cancelled");
}

#[tokio::test]
async fn cancelling_a_child_fails_its_parent_deterministically() {
    let h = Host::start().await;
    register_cascade(&h).await;
    let middle = h.create_run("middle", json!({})).await;
    let leaf = wait_child(&h, &middle, "down").await;
    h.wait_status(&leaf, &["running"], T).await;
    let (status, _) = h.post(&format!("/v1/runs/{leaf}/cancel"), json!({})).await;
    assert_eq!(status, StatusCode::OK);
    let snap = h.wait_terminal(&middle, T).await;
    assert_eq!(snap["status"], "failed", "{snap}");
    assert_eq!(snap["error"]["code"], "child_cancelled");
    assert_eq!(snap["childRuns"][0]["status"], "cancelled");
}

#[tokio::test]
async fn a_failing_parent_cancels_its_other_children() {
    let h = Host::start().await;
    register_cascade(&h).await;
    h.register(workflow(
        "fails-while-child-waits",
        json!([
            sub("waiting", json!({"workflowId": "sleepy-child"})),
            node("d", "core.delay", json!({"delayMs": 300}), json!({})),
            node("boom", "core.fail", json!({}), json!({}))
        ]),
        json!([edge("e", "d", "boom")]),
        json!([]),
    ))
    .await;
    let run = h.create_run("fails-while-child-waits", json!({})).await;
    let child = wait_child(&h, &run, "waiting").await;
    assert_eq!(h.wait_terminal(&run, T).await["status"], "failed");
    let snap = h.wait_terminal(&child, T).await;
    assert_eq!(
        snap["status"], "cancelled",
        "no orphan is left waiting: {snap}"
    );
    let last = h.events(&child).await.pop().unwrap();
    assert_eq!(last["payload"]["reason"], "parent-failed");
    assert_eq!(last["payload"]["parentRunId"], json!(run));
}

#[tokio::test]
async fn a_started_child_keeps_its_dispatch_time_inputs() {
    let h = Host::start_with(Options {
        extra_args: vec!["--enable-test-seams".into()],
        ..Default::default()
    })
    .await;
    h.register(workflow(
        "slow-seeded-child",
        json!([node(
            "wait",
            "core.delay",
            json!({"delayMs": 2000}),
            json!({})
        )]),
        json!([]),
        json!([var("receivedPrdId", "string", Some(json!("baked-in")))]),
    ))
    .await;
    h.register(workflow(
        "seeds-slow-child",
        json!([sub(
            "subwf-call",
            json!({"workflowId": "slow-seeded-child",
            "inputMapping": {"receivedPrdId": "currentPrdId"}})
        )]),
        json!([]),
        json!([var("currentPrdId", "string", Some(json!("seeded-id")))]),
    ))
    .await;
    let parent = h.create_run("seeds-slow-child", json!({})).await;
    let child = wait_child(&h, &parent, "subwf-call").await;
    let (status, body) = h
        .seam_set_variables(&parent, json!({"currentPrdId": "mutated-id"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["variables"]["currentPrdId"], "mutated-id");
    assert_eq!(
        h.snapshot(&parent).await["variables"]["currentPrdId"],
        "mutated-id"
    );
    assert_eq!(h.wait_terminal(&parent, T).await["status"], "completed");
    let c = h.snapshot(&child).await;
    assert_eq!(c["status"], "completed");
    assert_eq!(c["variables"]["receivedPrdId"], "seeded-id", "{c}");
    // The seam refuses malformed bodies and finished runs.
    let (status, body) = h.seam_set_variables(&parent, json!(1)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_envelope(&body, "validation_error");
    let (status, body) = h.seam_set_variables(&parent, json!({"x": 1})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_envelope(&body, "run_terminal");
}
