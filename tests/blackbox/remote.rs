//! wopbox as the isolation tier behind another host: `POST /v1/x-wopbox/execute` on its own,
//! and two processes — an orchestrator (`--executor remote:URL`) and an isolation tier —
//! running honest and hostile pack nodes; plus a remote tier that is down or silent.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::harness::{assert_envelope, edge, node, read, workflow, Host, Options, KEY};
use crate::packs::{manifest, packs_dir, rfc0008_module, static_ports};

const GREET: &str = "vendor.wopbox.greet.hello";
const BOMB: &str = "vendor.openwop.misbehaving.memory-bomb";
const SPIN_PACK: &str = "vendor.test.spin";
const SPIN: &str = "vendor.test.spin.forever";

/// A host with the repository's packs installed by the operator, plus `extra` flags.
async fn host(extra: &[String]) -> Host {
    let mut extra_args = vec!["--packs".to_string(), packs_dir().display().to_string()];
    extra_args.extend(extra.iter().cloned());
    Host::start_with(Options {
        extra_args,
        fixtures: false,
        ..Options::default()
    })
    .await
}

/// An orchestrator delegating every pack node to `remote` (the same packs are installed here,
/// which is how the orchestrator knows their typeIds).
async fn orchestrator(remote: &str, extra: &[&str]) -> Host {
    let mut args = vec![
        "--executor".to_string(),
        format!("remote:{remote}"),
        "--executor-key".to_string(),
        KEY.to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    host(&args).await
}

/// A pack whose node loops forever (stopped by fuel or the wall clock).
fn spin_module() -> Vec<u8> {
    rfc0008_module(SPIN_PACK, SPIN, "", "(loop $l (br $l)) (i64.const 0)")
}

async fn execute(h: &Host, body: Value) -> (StatusCode, Value) {
    read(
        h.req(Method::POST, "/v1/x-wopbox/execute")
            .json(&body)
            .send()
            .await
            .unwrap(),
    )
    .await
}

fn find<'a>(events: &'a [Value], ty: &str, node_id: &str) -> &'a Value {
    events
        .iter()
        .find(|e| e["type"] == ty && (e["nodeId"] == node_id || e["payload"]["nodeId"] == node_id))
        .unwrap_or_else(|| panic!("no {ty} for {node_id} in {events:#?}"))
}

#[tokio::test]
async fn execute_api_runs_one_node_with_metrics_tightened_limits_and_typed_refusals() {
    let h = host(&[]).await;
    let (s, b) = h
        .publish_module(
            &manifest(SPIN_PACK, "1.0.0", SPIN, json!({})),
            &spin_module(),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");

    // Honest node by name@version: output plus resource use.
    let (s, b) = execute(
        &h,
        json!({"pack": "vendor.wopbox.greet@1.0.0", "typeId": GREET,
        "inputs": {"name": "tier"}, "context": {"runId": "r1", "nodeId": "n1", "attempt": 0}}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["outcome"], "completed", "{b}");
    assert_eq!(b["output"]["greeting"], "Hello, tier!", "{b}");
    assert!(b["metrics"]["fuelConsumed"].as_u64().unwrap() > 0, "{b}");
    assert!(
        b["metrics"]["peakMemoryBytes"].as_u64().unwrap() >= 2 * 65536,
        "{b}"
    );
    assert!(b["metrics"]["durationMs"].as_f64().unwrap() > 0.0, "{b}");
    let sha = b["pack"]["sha256"].as_str().unwrap().to_string();
    let on_disk = std::fs::read(packs_dir().join("greet/greet.wasm")).unwrap();
    assert_eq!(
        sha,
        hex_sha256(&on_disk),
        "pack.sha256 is the entry module's hash"
    );

    // The same pack by content hash.
    let (s, b) = execute(
        &h,
        json!({"pack": {"sha256": sha}, "typeId": GREET, "inputs": {}}),
    )
    .await;
    assert_eq!(
        (s, b["output"]["greeting"].clone()),
        (StatusCode::OK, json!("Hello, world!")),
        "{b}"
    );

    // Hostile: the memory bomb hits a cap the request lowered to 8 MiB.
    let (s, b) = execute(
        &h,
        json!({"pack": "vendor.openwop.misbehaving@1.0.0", "typeId": BOMB,
        "limits": {"memoryBytes": 8 << 20}}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["outcome"], "failed", "{b}");
    assert_eq!(b["error"]["code"], "sandbox_memory_exceeded", "{b}");
    assert_eq!(b["error"]["source"], "sandbox", "{b}");
    assert_eq!(b["capBreach"]["kind"], "wasm-memory", "{b}");
    assert_eq!(b["capBreach"]["limit"], 8 << 20, "{b}");

    // Hostile: an endless loop under a request fuel budget far below the pack's.
    let (s, b) = execute(
        &h,
        json!({"pack": format!("{SPIN_PACK}@1.0.0"), "typeId": SPIN,
        "limits": {"fuel": 100_000}}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["error"]["code"], "sandbox_timeout", "{b}");
    assert_eq!(b["capBreach"]["kind"], "wasm-fuel", "{b}");
    assert_eq!(b["capBreach"]["limit"], 100_000, "{b}");
    // A request cannot raise the pack's limits: asking for 1 TiB leaves the 64 MiB cap.
    let (_, b) = execute(
        &h,
        json!({"pack": "vendor.openwop.misbehaving@1.0.0", "typeId": BOMB,
        "limits": {"memoryBytes": 1u64 << 40, "wallClockMs": 60_000}}),
    )
    .await;
    assert_eq!(b["capBreach"]["kind"], "wasm-memory", "{b}");
    assert_eq!(b["capBreach"]["limit"], 64u64 << 20, "{b}");

    // Refusals, before any guest code runs.
    let (s, b) = execute(&h, json!({"pack": "vendor.nope@1.0.0", "typeId": GREET})).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{b}");
    assert_envelope(&b, "not_found");
    let (s, b) = execute(
        &h,
        json!({"pack": {"sha256": "ab".repeat(32)}, "typeId": GREET}),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{b}");
    let (s, b) = execute(
        &h,
        json!({"pack": "vendor.wopbox.greet@1.0.0", "typeId": "vendor.wopbox.greet.nope"}),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{b}");
    assert_envelope(&b, "unsupported_node_type");
    for bad in [
        json!({"typeId": GREET}),
        json!({"pack": "nover", "typeId": GREET}),
        json!({"pack": "vendor.wopbox.greet@1.0.0", "typeId": GREET, "limits": {"fuel": 0}}),
        json!({"pack": "vendor.wopbox.greet@1.0.0", "typeId": GREET, "surprise": 1}),
    ] {
        let (s, b) = execute(&h, bad.clone()).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad} → {b}");
        assert_envelope(&b, "validation_error");
    }
    let resp = h
        .anon(Method::POST, "/v1/x-wopbox/execute")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let (_, api) = h.get("/v1/openapi.json").await;
    assert!(
        api["paths"]["/v1/x-wopbox/execute"]["post"]["responses"]["200"].is_object(),
        "{api}"
    );

    // The request body cap applies as on every JSON route (own connection: the host answers
    // 413 without reading the rest, which breaks a pooled connection).
    let huge = "x".repeat(2 << 20);
    let resp = reqwest::Client::new()
        .post(h.url("/v1/x-wopbox/execute"))
        .bearer_auth(KEY)
        .json(&json!({"pack": "vendor.wopbox.greet@1.0.0", "typeId": GREET, "inputs": {"name": huge}}))
        .send()
        .await;
    if let Ok(resp) = resp {
        assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    }
}

#[tokio::test]
async fn orchestrator_delegates_honest_and_hostile_pack_nodes_to_the_isolation_tier() {
    // Unmetered on both tiers, so only wall clocks stop the spinner: the tier's (300 ms) is
    // tighter than the orchestrator's (1 s) and must win.
    let tier = host(&[
        "--sandbox-wall-clock-ms".into(),
        "300".into(),
        "--sandbox-fuel".into(),
        "0".into(),
    ])
    .await;
    let orch = orchestrator(&tier.base, &["--sandbox-fuel", "0"]).await;
    for h in [&tier, &orch] {
        let (s, b) = h
            .publish_module(
                &manifest(SPIN_PACK, "1.0.0", SPIN, json!({})),
                &spin_module(),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{b}");
    }
    let wf = workflow(
        "remote-mix",
        json!([
            node(
                "greet",
                GREET,
                json!({}),
                static_ports(&json!({"name": "orchestrator"}))
            ),
            node("bomb", BOMB, json!({}), json!({})),
        ]),
        // In sequence: a run fails at its first failed node and cancels the rest.
        json!([edge("e1", "greet", "bomb")]),
        json!([]),
    );
    orch.register(wf).await;
    let run = orch.create_run("remote-mix", json!({})).await;
    let snap = orch.wait_terminal(&run, Duration::from_secs(30)).await;
    assert_eq!(snap["status"], "failed", "{snap}");
    let events = orch.events(&run).await;

    // The honest node ran on the tier: output, and the tier's resource figures.
    let done = find(&events, "node.completed", "greet");
    let payload = &done["payload"];
    assert_eq!(
        payload["outputs"]["greeting"], "Hello, orchestrator!",
        "{done}"
    );
    let m = payload.get("metrics").unwrap_or(&Value::Null);
    assert_eq!(m["executor"], "remote", "{done}");
    assert!(m["fuelConsumed"].as_u64().unwrap() > 0, "{done}");

    // The hostile node: the same cap.breached + node.failed a local run logs.
    let breach = find(&events, "cap.breached", "bomb");
    assert_eq!(breach["payload"]["kind"], "wasm-memory", "{breach}");
    let failed = find(&events, "node.failed", "bomb");
    assert_eq!(
        failed["payload"]["error"]["code"], "sandbox_memory_exceeded",
        "{failed}"
    );
    let seq = |e: &Value| e["sequence"].as_i64().unwrap();
    assert!(
        seq(breach) < seq(failed),
        "cap.breached precedes node.failed"
    );

    // A run fails at its first failed node, so the spinner gets a run of its own.
    let (snap, events) = orch.run_single("remote-spin", SPIN, json!({})).await;
    assert_eq!(snap["status"], "failed", "{snap}");
    let breach = find(&events, "cap.breached", "n");
    assert_eq!(breach["payload"]["kind"], "wasm-execution-time", "{breach}");
    assert_eq!(
        breach["payload"]["limit"], 300,
        "the tighter (tier) wall clock applies: {breach}"
    );
    let failed = find(&events, "node.failed", "n");
    assert_eq!(
        failed["payload"]["error"]["code"], "sandbox_timeout",
        "{failed}"
    );
    assert!(
        seq(breach) < seq(failed),
        "cap.breached precedes node.failed"
    );

    // With the tier gone, the orchestrator cannot run pack nodes itself: it reports the
    // retryable runner_unavailable (proving the nodes above ran remotely) instead of hanging.
    let mut tier = tier;
    tier.kill9();
    let started = Instant::now();
    let (snap, events) = orch
        .run_single("remote-down", GREET, json!({"name": "x"}))
        .await;
    assert_eq!(snap["status"], "failed", "{snap}");
    let err = &find(&events, "node.failed", "n")["payload"]["error"];
    assert_eq!(err["code"], "runner_unavailable", "{err}");
    assert_eq!(err["retryable"], true, "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_silent_remote_tier_times_out_as_a_retryable_node_error() {
    // Accepts connections and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((sock, _)) = listener.accept().await {
            open.push(sock);
        }
    });
    let orch = orchestrator(
        &format!("http://{addr}"),
        &["--sandbox-wall-clock-ms", "300"],
    )
    .await;
    let started = Instant::now();
    let (snap, events) = orch
        .run_single("remote-silent", GREET, json!({"name": "x"}))
        .await;
    let took = started.elapsed();
    assert_eq!(snap["status"], "failed", "{snap}");
    let err = &find(&events, "node.failed", "n")["payload"]["error"];
    assert_eq!(err["code"], "runner_unavailable", "{err}");
    assert_eq!(err["retryable"], true, "{err}");
    assert!(
        err["details"]["reason"]
            .as_str()
            .unwrap()
            .contains("no answer"),
        "{err}"
    );
    assert!(took < Duration::from_secs(20), "took {took:?}");
    hold.abort();
}

#[tokio::test]
async fn the_python_client_example_calls_the_execution_api() {
    let h = host(&[]).await;
    let script = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/python/execute_node.py");
    let run = |args: &[&str]| {
        std::process::Command::new("python3")
            .arg(&script)
            .args(args)
            .env("WOPBOX_URL", &h.base)
            .env("WOPBOX_API_KEY", KEY)
            .output()
    };
    let Ok(out) = run(&[
        "vendor.wopbox.greet@1.0.0",
        GREET,
        r#"{"name": "python"}"#,
        "--fuel",
        "5000000",
    ]) else {
        eprintln!("python3 is not installed; skipping the Python client example");
        return;
    };
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let b: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(b["output"]["greeting"], "Hello, python!", "{b}");
    assert!(
        b["metrics"]["fuelConsumed"].as_u64().unwrap() <= 5_000_000,
        "{b}"
    );

    let out = run(&["vendor.openwop.misbehaving@1.0.0", BOMB, "{}"]).unwrap();
    assert_eq!(out.status.code(), Some(1));
    let b: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(b["capBreach"]["kind"], "wasm-memory", "{b}");

    let out = run(&["vendor.nope@1.0.0", GREET, "{}"]).unwrap();
    assert_eq!(out.status.code(), Some(2));
    let b: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(b["clientError"], "TierRefused", "{b}");
}

fn hex_sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}
