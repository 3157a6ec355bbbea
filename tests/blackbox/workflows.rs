use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::harness::*;

fn noop(id: &str) -> Value {
    node(id, "core.noop", json!({}), json!({}))
}

#[tokio::test]
async fn register_read_update_and_run() {
    let h = Host::start().await;
    let wf = workflow(
        "my-flow",
        json!([noop("a"), noop("b")]),
        json!([edge("ab", "a", "b")]),
        json!([]),
    );
    let (s, b) = h.post("/v1/workflows", wf.clone()).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    assert_eq!(b["workflowId"], "my-flow");
    let (s, got) = h.get("/v1/workflows/my-flow").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(got, wf);

    // PUT replaces (200), path id wins, mismatches are rejected.
    let mut v2 = wf.clone();
    v2["version"] = json!("2.0");
    let (s, b) = h.put("/v1/workflows/my-flow", v2.clone()).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(h.get("/v1/workflows/my-flow").await.1["version"], "2.0");
    let (s, b) = h.put("/v1/workflows/other-id", v2).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_envelope(&b, "validation_error");

    let (s, list) = h.get("/v1/workflows").await;
    assert_eq!(s, StatusCode::OK);
    assert!(list["workflows"]
        .as_array()
        .unwrap()
        .iter()
        .any(|w| w["workflowId"] == "my-flow"));
    let (s, b) = h.get("/v1/workflows/absent").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_envelope(&b, "not_found");

    // Fixtures are readable too.
    let (s, fx) = h.get("/v1/workflows/conformance-noop").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(fx["nodes"][0]["typeId"], "core.noop");

    let run_id = h.create_run("my-flow", json!({})).await;
    let snap = h
        .wait_terminal(&run_id, std::time::Duration::from_secs(5))
        .await;
    assert_eq!(snap["status"], "completed");
}

async fn rejected(h: &Host, wf: Value) -> Vec<Value> {
    let (s, b) = h.post("/v1/workflows", wf).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
    assert_envelope(&b, "validation_error");
    b["details"]["errors"].as_array().unwrap().clone()
}

fn has(errors: &[Value], code: &str, path: &str, needle: &str) -> bool {
    errors.iter().any(|e| {
        e["code"] == code && e["path"] == path && e["message"].as_str().unwrap().contains(needle)
    })
}

#[tokio::test]
async fn invalid_definitions_are_rejected_precisely() {
    let h = Host::start().await;

    let errs = rejected(
        &h,
        workflow(
            "w",
            json!([
                noop("a"),
                node("b", "vendor.acme.nope", json!({}), json!({}))
            ]),
            json!([]),
            json!([]),
        ),
    )
    .await;
    assert!(
        has(
            &errs,
            "unknown_type_id",
            "/nodes/1/typeId",
            "vendor.acme.nope"
        ),
        "{errs:?}"
    );

    let errs = rejected(
        &h,
        workflow(
            "w",
            json!([noop("a")]),
            json!([edge("e1", "a", "ghost")]),
            json!([]),
        ),
    )
    .await;
    assert!(
        has(&errs, "dangling_edge", "/edges/0/targetNodeId", "ghost"),
        "{errs:?}"
    );

    let errs = rejected(
        &h,
        workflow(
            "w",
            json!([noop("a"), noop("b"), noop("c")]),
            json!([
                edge("ab", "a", "b"),
                edge("bc", "b", "c"),
                edge("ca", "c", "a")
            ]),
            json!([]),
        ),
    )
    .await;
    assert!(
        errs.iter()
            .any(|e| e["code"] == "cycle"
                && e["message"].as_str().unwrap().contains("a → b → c → a")),
        "{errs:?}"
    );

    let errs = rejected(
        &h,
        workflow(
            "w",
            json!([noop("a")]),
            json!([edge("aa", "a", "a")]),
            json!([]),
        ),
    )
    .await;
    assert!(errs.iter().any(|e| e["code"] == "cycle"), "{errs:?}");

    let errs = rejected(
        &h,
        workflow("w", json!([noop("a"), noop("a")]), json!([]), json!([])),
    )
    .await;
    assert!(has(&errs, "duplicate", "/nodes/1/id", "a"), "{errs:?}");

    let errs = rejected(
        &h,
        workflow(
            "w",
            json!([node(
                "a",
                "core.identity",
                json!({}),
                json!({"x": {"type": "expression", "expression": "1 +"}})
            )]),
            json!([]),
            json!([]),
        ),
    )
    .await;
    assert!(
        has(
            &errs,
            "invalid_expression",
            "/nodes/0/inputs/x/expression",
            ""
        ),
        "{errs:?}"
    );

    let errs = rejected(
        &h,
        workflow(
            "w",
            json!([node(
                "a",
                "core.identity",
                json!({}),
                json!({"x": {"type": "connection", "nodeId": "zz", "outputKey": "k"}})
            )]),
            json!([]),
            json!([]),
        ),
    )
    .await;
    assert!(
        has(&errs, "unknown_node", "/nodes/0/inputs/x/nodeId", "zz"),
        "{errs:?}"
    );

    let mut bad_rule = edge("ab", "a", "b");
    bad_rule["triggerRule"] = json!("sometimes");
    let errs = rejected(
        &h,
        workflow(
            "w",
            json!([noop("a"), noop("b")]),
            json!([bad_rule]),
            json!([]),
        ),
    )
    .await;
    assert!(
        has(
            &errs,
            "invalid_value",
            "/edges/0/triggerRule",
            "triggerRule"
        ),
        "{errs:?}"
    );

    let mut wf = workflow("Bad Id", json!([noop("a")]), json!([]), json!([]));
    wf["surprise"] = json!(1);
    wf.as_object_mut().unwrap().remove("triggers");
    let errs = rejected(&h, wf).await;
    assert!(has(&errs, "invalid_value", "/id", ""), "{errs:?}");
    assert!(has(&errs, "unknown_property", "/surprise", ""), "{errs:?}");
    assert!(has(&errs, "required", "/triggers", ""), "{errs:?}");

    let errs = rejected(
        &h,
        workflow(
            "w",
            json!([]),
            json!([]),
            json!([{"name": "v", "type": "number", "defaultValue": "x"}]),
        ),
    )
    .await;
    assert!(has(&errs, "invalid_value", "/nodes", ""), "{errs:?}");
    assert!(
        has(&errs, "invalid_type", "/variables/0/defaultValue", ""),
        "{errs:?}"
    );
}

#[tokio::test]
async fn workflows_dir_is_loaded_at_boot() {
    let dir = tempfile::tempdir().unwrap();
    let good = workflow("from-disk", json!([noop("a")]), json!([]), json!([]));
    let bad = workflow(
        "broken",
        json!([node("a", "core.missing", json!({}), json!({}))]),
        json!([]),
        json!([]),
    );
    std::fs::write(dir.path().join("good.json"), good.to_string()).unwrap();
    std::fs::write(dir.path().join("bad.json"), bad.to_string()).unwrap();
    std::fs::write(dir.path().join("junk.json"), "{nope").unwrap();
    let h = Host::start_with(Options {
        extra_args: vec!["--workflows".into(), dir.path().display().to_string()],
        ..Default::default()
    })
    .await;
    assert_eq!(h.get("/v1/workflows/from-disk").await.0, StatusCode::OK);
    assert_eq!(h.get("/v1/workflows/broken").await.0, StatusCode::NOT_FOUND);
    let run_id = h.create_run("from-disk", json!({})).await;
    assert_eq!(
        h.wait_terminal(&run_id, std::time::Duration::from_secs(5))
            .await["status"],
        "completed"
    );
}
