//! The DAG engine: parallel branches, trigger rules, conditions, port resolution, retries,
//! timeouts.

use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::*;

async fn run_to_end(h: &Host, wf: &str, inputs: Value) -> (Value, Vec<Value>) {
    let run_id = h.create_run(wf, inputs).await;
    let snap = h.wait_terminal(&run_id, Duration::from_secs(10)).await;
    let events = h.events(&run_id).await;
    assert_event_log(&run_id, &events);
    (snap, events)
}

fn of_type<'a>(events: &'a [Value], t: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["type"] == t).collect()
}

fn seq_of(events: &[Value], t: &str, node: &str) -> i64 {
    events
        .iter()
        .find(|e| e["type"] == t && e["nodeId"] == node)
        .unwrap_or_else(|| panic!("no {t} for {node}"))["sequence"]
        .as_i64()
        .unwrap()
}

#[tokio::test]
async fn parallel_branches_run_concurrently_and_join() {
    let h = Host::start().await;
    let delay = |id: &str| node(id, "core.delay", json!({"delayMs": 400}), json!({}));
    h.register(workflow(
        "diamond",
        json!([
            node("a", "core.noop", json!({}), json!({})),
            delay("b"),
            delay("c"),
            node("d", "core.noop", json!({}), json!({}))
        ]),
        json!([
            edge("ab", "a", "b"),
            edge("ac", "a", "c"),
            edge("bd", "b", "d"),
            edge("cd", "c", "d")
        ]),
        json!([]),
    ))
    .await;
    let t = std::time::Instant::now();
    let (snap, events) = run_to_end(&h, "diamond", json!({})).await;
    assert_eq!(snap["status"], "completed");
    assert!(t.elapsed() < Duration::from_millis(1500), "b and c overlap");
    // Both branches start before either finishes; the join waits for both.
    let first_done =
        seq_of(&events, "node.completed", "b").min(seq_of(&events, "node.completed", "c"));
    assert!(
        seq_of(&events, "node.started", "b") < first_done
            && seq_of(&events, "node.started", "c") < first_done
    );
    let d = seq_of(&events, "node.started", "d");
    assert!(
        d > seq_of(&events, "node.completed", "b") && d > seq_of(&events, "node.completed", "c")
    );
}

#[tokio::test]
async fn trigger_rules_route_failures() {
    let h = Host::start().await;
    let rule = |id: &str, from: &str, to: &str, r: &str| json!({"id": id, "sourceNodeId": from, "targetNodeId": to, "triggerRule": r});
    h.register(workflow(
        "rules",
        json!([
            node(
                "boom",
                "core.fail",
                json!({"code": "boom", "message": "kaboom"}),
                json!({})
            ),
            node("on_fail", "core.noop", json!({}), json!({})),
            node("on_success", "core.noop", json!({}), json!({})),
            node("always", "core.noop", json!({}), json!({})),
            node("ok", "core.noop", json!({}), json!({})),
            node("none_failed", "core.noop", json!({}), json!({})),
        ]),
        json!([
            rule("e1", "boom", "on_fail", "any_failed"),
            rule("e2", "boom", "on_success", "all_success"),
            rule("e3", "boom", "always", "all_complete"),
            rule("e4", "ok", "none_failed", "none_failed"),
        ]),
        json!([]),
    ))
    .await;
    let (snap, events) = run_to_end(&h, "rules", json!({})).await;
    assert_eq!(
        snap["status"], "completed",
        "the failure is handled by any_failed/all_complete successors"
    );
    let done: Vec<_> = of_type(&events, "node.completed")
        .iter()
        .map(|e| e["nodeId"].as_str().unwrap().to_string())
        .collect();
    for n in ["on_fail", "always", "ok", "none_failed"] {
        assert!(done.contains(&n.to_string()), "{n} should run: {done:?}");
    }
    let skipped: Vec<_> = of_type(&events, "node.skipped")
        .iter()
        .map(|e| e["nodeId"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(skipped, ["on_success"]);

    // An unhandled failure fails the run and cancels the parallel branch.
    h.register(workflow(
        "fail-fast",
        json!([
            node("boom", "core.fail", json!({}), json!({})),
            node("slow", "core.delay", json!({"delayMs": 5000}), json!({}))
        ]),
        json!([]),
        json!([]),
    ))
    .await;
    let t = std::time::Instant::now();
    let (snap, events) = run_to_end(&h, "fail-fast", json!({})).await;
    assert_eq!(snap["status"], "failed");
    assert!(t.elapsed() < Duration::from_secs(3));
    assert_eq!(of_type(&events, "node.cancelled")[0]["nodeId"], "slow");
    assert_eq!(events.last().unwrap()["payload"]["failedNodeId"], "boom");
}

#[tokio::test]
async fn edge_conditions_and_input_resolution() {
    let h = Host::start().await;
    let cond = |id: &str, to: &str, c: Value| json!({"id": id, "sourceNodeId": "src", "targetNodeId": to, "condition": c});
    h.register(workflow(
        "wiring",
        json!([
            node("src", "core.identity", json!({}), json!({
                "kind": {"type": "variable", "variableName": "kind"},
                "count": {"type": "static", "value": 2},
                "label": {"type": "expression", "expression": "'n=' + (variables.n * 10)"},
            })),
            node("when_x", "core.identity", json!({}), json!({
                "fromConn": {"type": "connection", "nodeId": "src", "outputKey": "kind"},
                "doubled": {"type": "expression", "expression": "{{ nodes.src.count * 2 }}"},
                "missing": {"type": "connection", "nodeId": "src", "outputKey": "nope", "optional": true},
            })),
            node("when_not_x", "core.noop", json!({}), json!({})),
            node("by_expr", "core.noop", json!({}), json!({})),
            node("by_regex", "core.noop", json!({}), json!({})),
            node("by_truthy", "core.noop", json!({}), json!({})),
            node("piped", "core.identity", json!({}), json!({})),
        ]),
        json!([
            cond("c1", "when_x", json!({"type": "equals", "left": "kind", "right": "x"})),
            cond("c2", "when_not_x", json!({"type": "notEquals", "left": "output.kind", "right": "x"})),
            cond("c3", "by_expr", json!({"type": "expression", "expression": "nodes.src.count >= 2 && variables.n == 3"})),
            cond("c4", "by_regex", json!({"type": "regex", "left": "label", "right": "^n=\\d+$"})),
            cond("c5", "by_truthy", json!({"type": "falsy", "left": "kind"})),
            {"id": "c6", "sourceNodeId": "src", "targetNodeId": "piped", "sourceOutput": "label", "targetInput": "text"},
        ]),
        json!([{"name": "kind", "type": "string", "defaultValue": "y"}, {"name": "n", "type": "number", "defaultValue": 3}]),
    ))
    .await;
    let (snap, events) = run_to_end(&h, "wiring", json!({"kind": "x"})).await;
    assert_eq!(snap["status"], "completed");
    let outputs = |n: &str| {
        of_type(&events, "node.completed")
            .into_iter()
            .find(|e| e["nodeId"] == n)
            .map(|e| e["payload"]["outputs"].clone())
    };
    assert_eq!(
        outputs("src").unwrap(),
        json!({"kind": "x", "count": 2, "label": "n=30"})
    );
    assert_eq!(
        outputs("when_x").unwrap(),
        json!({"fromConn": "x", "doubled": 4})
    );
    assert_eq!(outputs("piped").unwrap(), json!({"text": "n=30"}));
    assert!(outputs("by_expr").is_some() && outputs("by_regex").is_some());
    let skipped: Vec<_> = of_type(&events, "node.skipped")
        .iter()
        .map(|e| e["nodeId"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(skipped.len(), 2);
    assert!(
        skipped.contains(&"when_not_x".to_string()) && skipped.contains(&"by_truthy".to_string())
    );
    // Run outputs: several leaves → keyed by node id.
    assert_eq!(snap["outputs"]["piped"], json!({"text": "n=30"}));

    // Defaults apply when inputs are absent; an unresolved required port fails the node.
    let (snap, events) = run_to_end(&h, "wiring", json!({})).await;
    assert_eq!(snap["status"], "completed");
    assert!(of_type(&events, "node.skipped")
        .iter()
        .any(|e| e["nodeId"] == "when_x"));

    h.register(workflow(
        "unresolved",
        json!([node(
            "a",
            "core.identity",
            json!({}),
            json!({"v": {"type": "variable", "variableName": "absent"}})
        )]),
        json!([]),
        json!([]),
    ))
    .await;
    let (snap, _) = run_to_end(&h, "unresolved", json!({})).await;
    assert_eq!(snap["status"], "failed");
    assert_eq!(snap["error"]["code"], "input_resolution_failed");
}

#[tokio::test]
async fn retries_with_backoff_and_timeouts() {
    let h = Host::start().await;
    let mut flaky = node(
        "flaky",
        "core.fail",
        json!({"failAttempts": 2, "retryable": true, "code": "flaky"}),
        json!({}),
    );
    flaky["settings"] = json!({"maxRetries": 3, "retryDelayMs": 50});
    let mut hopeless = node(
        "hopeless",
        "core.fail",
        json!({"failAttempts": 9, "retryable": true}),
        json!({}),
    );
    hopeless["settings"] = json!({"maxRetries": 1, "retryDelayMs": 10});
    let mut slow = node("slow", "core.delay", json!({"delayMs": 3000}), json!({}));
    slow["settings"] = json!({"timeout": 100});
    h.register(workflow("flaky", json!([flaky]), json!([]), json!([])))
        .await;
    h.register(workflow(
        "hopeless",
        json!([hopeless]),
        json!([]),
        json!([]),
    ))
    .await;
    h.register(workflow("slow", json!([slow]), json!([]), json!([])))
        .await;

    let (snap, events) = run_to_end(&h, "flaky", json!({})).await;
    assert_eq!(snap["status"], "completed");
    let attempts: Vec<_> = of_type(&events, "node.started")
        .iter()
        .map(|e| e["payload"]["attempt"].as_u64().unwrap())
        .collect();
    assert_eq!(attempts, [1, 2, 3]);
    let retried = of_type(&events, "node.retried");
    assert_eq!(retried.len(), 2);
    assert_eq!(retried[0]["payload"]["delayMs"], 50);
    assert_eq!(retried[1]["payload"]["delayMs"], 100, "exponential backoff");

    let (snap, events) = run_to_end(&h, "hopeless", json!({})).await;
    assert_eq!(snap["status"], "failed");
    assert_eq!(of_type(&events, "node.started").len(), 2);
    assert_eq!(of_type(&events, "node.failed")[0]["payload"]["attempts"], 2);

    let (snap, _) = run_to_end(&h, "slow", json!({})).await;
    assert_eq!(snap["status"], "failed");
    assert_eq!(snap["error"]["code"], "node_timeout");

    // Non-retryable failures are not retried even with a budget.
    let mut once = node("once", "core.fail", json!({}), json!({}));
    once["settings"] = json!({"maxRetries": 5});
    h.register(workflow("once", json!([once]), json!([]), json!([])))
        .await;
    let (_, events) = run_to_end(&h, "once", json!({})).await;
    assert_eq!(of_type(&events, "node.started").len(), 1);
}

#[tokio::test]
async fn run_timeout_fails_the_run() {
    let h = Host::start().await;
    let mut wf = workflow(
        "bounded",
        json!([node("w", "core.delay", json!({"delayMs": 5000}), json!({}))]),
        json!([]),
        json!([]),
    );
    wf["settings"]["timeout"] = json!(200);
    h.register(wf).await;
    let (snap, events) = run_to_end(&h, "bounded", json!({})).await;
    assert_eq!(snap["status"], "failed");
    assert_eq!(snap["error"]["code"], "run_timeout");
    assert_eq!(of_type(&events, "node.cancelled").len(), 1);
}
