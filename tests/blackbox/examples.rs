//! The example packs of `packs/examples/` (one per authoring route) through the production
//! path: `wopbox pack push` uploads the committed binary, a workflow runs its nodes over HTTP,
//! and typed failures reach `node.failed` with the guest's own code. The binaries are the
//! committed ones: these tests never need a wasm toolchain (`packs/build.sh` rebuilds them).

use std::time::Duration;

use serde_json::{json, Value};

use crate::authoring::pack_test;
use crate::harness::{node, workflow, Host, KEY};
use crate::packs::{packs_dir, static_ports, wopbox};

/// `packs/examples/<name>` as a string path.
pub fn example(name: &str) -> String {
    packs_dir()
        .join("examples")
        .join(name)
        .display()
        .to_string()
}

/// `wopbox pack push` of an example; returns what the server answered.
async fn push(h: &Host, name: &str) -> Value {
    push_dir(h, &example(name))
}

/// `wopbox pack push DIR` to `h`; returns what the server answered.
pub fn push_dir(h: &Host, dir: &str) -> Value {
    let out = wopbox(&["pack", "push", dir, "--url", &h.base, "--api-key", KEY]);
    assert!(
        out.status.success(),
        "pack push {dir} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("pack push prints JSON")
}

/// One run of a one-node workflow: (status, the node's terminal event payload).
pub async fn run_node(
    h: &Host,
    wf: &str,
    type_id: &str,
    config: Value,
    inputs: Value,
) -> (String, Value) {
    h.register(workflow(
        wf,
        json!([node("n", type_id, config, static_ports(&inputs))]),
        json!([]),
        json!([]),
    ))
    .await;
    let run = h.create_run(wf, json!({})).await;
    let snap = h.wait_terminal(&run, Duration::from_secs(60)).await;
    let events = h.events(&run).await;
    let done = events
        .iter()
        .find(|e| e["type"] == "node.completed" || e["type"] == "node.failed")
        .unwrap_or_else(|| panic!("no terminal node event in {events:#?}"))
        .clone();
    (
        snap["status"].as_str().unwrap_or("").to_string(),
        done["payload"].clone(),
    )
}

#[tokio::test]
async fn rust_pdk_example_uploads_and_runs_both_nodes_with_typed_failures() {
    let h = Host::start().await;
    let pushed = push(&h, "rust-text").await;
    assert_eq!(pushed["name"], "vendor.wopbox.text");
    assert_eq!(
        pushed["typeIds"],
        json!(["vendor.wopbox.text.slugify", "vendor.wopbox.text.stats"])
    );

    // A plain function node.
    let (status, p) = run_node(
        &h,
        "rt-slug",
        "vendor.wopbox.text.slugify",
        json!({}),
        json!({"text": "Hello, Wasm World!"}),
    )
    .await;
    assert_eq!(status, "completed", "{p}");
    assert_eq!(p["outputs"]["slug"], "hello-wasm-world");
    assert_eq!(p["metrics"]["pack"], "vendor.wopbox.text");

    // A trait node reading its configuration.
    let (status, p) = run_node(
        &h,
        "rt-stats",
        "vendor.wopbox.text.stats",
        json!({"top": 1}),
        json!({"text": "b a b\nc"}),
    )
    .await;
    assert_eq!(status, "completed", "{p}");
    assert_eq!(
        p["outputs"],
        json!({"words": 4, "lines": 2, "chars": 7, "top": [["b", 2]]})
    );

    // The pack's own error type keeps its code and details on the wire.
    let long = "x".repeat(64 * 1024 + 1);
    let (status, p) = run_node(
        &h,
        "rt-long",
        "vendor.wopbox.text.slugify",
        json!({}),
        json!({"text": long}),
    )
    .await;
    assert_eq!(status, "failed");
    assert_eq!(p["error"]["code"], "text_too_long", "{p}");
    // The host keeps the guest's details apart from its own (metrics, logs).
    assert_eq!(
        p["error"]["details"]["guestDetails"],
        json!({"len": 65537, "max": 65536})
    );

    // Inputs that do not fit the node's serde type fail before the node runs.
    let (status, p) = run_node(
        &h,
        "rt-bad",
        "vendor.wopbox.text.slugify",
        json!({}),
        json!({"text": 7}),
    )
    .await;
    assert_eq!(status, "failed");
    assert_eq!(p["error"]["code"], "validation_error", "{p}");
    assert!(
        p["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("inputs:"),
        "{p}"
    );
    // ... and so does configuration of the wrong shape.
    let (status, p) = run_node(
        &h,
        "rt-cfg",
        "vendor.wopbox.text.stats",
        json!({"top": "many"}),
        json!({"text": "a"}),
    )
    .await;
    assert_eq!(status, "failed");
    assert_eq!(p["error"]["code"], "validation_error", "{p}");
}

#[test]
fn rust_pdk_example_logs_through_the_host_in_pack_test() {
    let (code, r, stderr) = pack_test(
        &example("rust-text"),
        &[
            "--node",
            "vendor.wopbox.text.slugify",
            "--input",
            r#"{"text":"Grüße aus Wasm"}"#,
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(r["output"], json!({"slug": "gr-e-aus-wasm"}));
    assert_eq!(
        r["logs"],
        json!([{"level": "info", "message": "slugified 16 bytes"}])
    );
    // A blank text is the pack's validation error, exit 1 with the code.
    let (code, r, stderr) = pack_test(
        &example("rust-text"),
        &[
            "--node",
            "vendor.wopbox.text.slugify",
            "--input",
            r#"{"text":" "}"#,
        ],
    );
    assert_eq!(code, 1);
    assert_eq!(r["error"]["error"], "validation_error", "{r}");
    assert!(
        stderr.contains("error: validation_error: text must not be empty"),
        "{stderr}"
    );
}

#[tokio::test]
async fn python_example_uploads_and_runs_with_typed_failures() {
    let h = Host::start().await;
    let pushed = push(&h, "python-stats").await;
    assert_eq!(pushed["typeIds"], json!(["vendor.wopbox.pystats.summary"]));

    let (status, p) = run_node(
        &h,
        "py-ok",
        "vendor.wopbox.pystats.summary",
        json!({"places": 1}),
        json!({"numbers": [1, 2, 3, 4.5]}),
    )
    .await;
    assert_eq!(status, "completed", "{p}");
    assert_eq!(
        p["outputs"],
        json!({"count": 4, "mean": 2.6, "median": 2.5, "min": 1, "max": 4.5, "stdev": 1.5})
    );
    // `host.log` from Python lands in the node's captured logs.
    assert_eq!(
        p["metrics"]["logs"][0]["message"], "summarising 4 numbers",
        "{p}"
    );

    let (status, p) = run_node(
        &h,
        "py-bad",
        "vendor.wopbox.pystats.summary",
        json!({}),
        json!({"numbers": [1, "x", true]}),
    )
    .await;
    assert_eq!(status, "failed");
    assert_eq!(p["error"]["code"], "validation_error", "{p}");
    assert_eq!(
        p["error"]["details"]["guestDetails"],
        json!({"indexes": [1, 2]})
    );
}

#[tokio::test]
async fn js_example_uploads_and_runs_with_typed_failures() {
    let h = Host::start().await;
    let pushed = push(&h, "js-render").await;
    assert_eq!(pushed["typeIds"], json!(["vendor.wopbox.jsrender.render"]));

    let (status, p) = run_node(
        &h,
        "js-ok",
        "vendor.wopbox.jsrender.render",
        json!({}),
        json!({"template": "Hi {{ user.name }}, you have {{n}} jobs", "values": {"user": {"name": "Ada"}, "n": 3}}),
    )
    .await;
    assert_eq!(status, "completed", "{p}");
    assert_eq!(
        p["outputs"],
        json!({"text": "Hi Ada, you have 3 jobs", "placeholders": 0})
    );
    assert_eq!(
        p["metrics"]["logs"][0]["message"], "rendered 23 characters",
        "{p}"
    );

    // A thrown node-error keeps its code and details.
    let (status, p) = run_node(
        &h,
        "js-missing",
        "vendor.wopbox.jsrender.render",
        json!({}),
        json!({"template": "{{a}} and {{b.c}}", "values": {"a": 1}}),
    )
    .await;
    assert_eq!(status, "failed");
    assert_eq!(p["error"]["code"], "missing_value", "{p}");
    assert_eq!(
        p["error"]["details"]["guestDetails"],
        json!({"missing": ["b.c"]})
    );
    // Configuration changes the behaviour: missing values render empty.
    let (status, p) = run_node(
        &h,
        "js-empty",
        "vendor.wopbox.jsrender.render",
        json!({"missing": "empty"}),
        json!({"template": "[{{a}}]"}),
    )
    .await;
    assert_eq!(status, "completed", "{p}");
    assert_eq!(p["outputs"], json!({"text": "[]", "placeholders": 1}));
}
