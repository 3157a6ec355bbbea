//! Operations surface: probes, admission (503 + Retry-After), per-tenant isolation, graceful
//! shutdown, metrics, structured logs, trace propagation, retention.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::harness::{edge, node, workflow, Host, Options, KEY};
use crate::scopes::{config_path, host_with_config_and, mint};

async fn json_of(resp: reqwest::Response) -> (StatusCode, Value) {
    let status = resp.status();
    let body = resp.json::<Value>().await.unwrap_or(Value::Null);
    (status, body)
}

#[tokio::test]
async fn healthz_and_readyz_answer_without_credentials() {
    let host = Host::start().await;
    let (status, body) = json_of(host.anon(Method::GET, "/healthz").send().await.unwrap()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "ok");
    let (status, body) = json_of(host.anon(Method::GET, "/readyz").send().await.unwrap()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "ready");
    assert_eq!(body["checks"]["store"], "ok");
    assert_eq!(body["checks"]["draining"], false);
}

const KEY_B: &str = "test-key-tenant-b";

fn with_args(args: &[&str]) -> Options {
    Options {
        keys: vec![KEY.to_string(), KEY_B.to_string()],
        extra_args: args.iter().map(|s| s.to_string()).collect(),
        ..Options::default()
    }
}

/// A host with a single execution slot, host-wide and per tenant.
async fn one_slot_host() -> Host {
    Host::start_with(with_args(&[
        "--max-executing",
        "1",
        "--tenant-max-executing",
        "1",
    ]))
    .await
}

/// `POST /v1/runs` for a run that parks for a minute (until cancelled).
async fn post_parked(host: &Host, key: &str) -> reqwest::Response {
    host.client
        .post(host.url("/v1/runs"))
        .bearer_auth(key)
        .json(&json!({"workflowId": "conformance-cancellable", "inputs": {"delayMs": 60000}}))
        .send()
        .await
        .unwrap()
}

fn assert_capacity_503(
    status: StatusCode,
    retry_after: Option<String>,
    body: &Value,
    reason: &str,
) {
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"], "service_unavailable", "{body}");
    assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
    assert_eq!(body["details"]["reason"], reason, "{body}");
    let header: u64 = retry_after
        .expect("Retry-After header")
        .parse()
        .expect("Retry-After is whole seconds");
    assert_eq!(
        Some(header),
        body["details"]["retryAfter"].as_u64(),
        "{body}"
    );
}

async fn parts(resp: reqwest::Response) -> (StatusCode, Option<String>, Value) {
    let retry = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    let (status, body) = json_of(resp).await;
    (status, retry, body)
}

#[tokio::test]
async fn at_capacity_post_runs_gets_503_with_retry_after_equal_to_details() {
    let host = Host::start_with(with_args(&[
        "--max-runs-in-flight",
        "2",
        "--retry-after-secs",
        "7",
    ]))
    .await;
    let mut runs = Vec::new();
    for key in [KEY, KEY_B] {
        let (status, body) = json_of(post_parked(&host, key).await).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        runs.push(body["runId"].as_str().unwrap().to_string());
    }
    let (status, retry, body) = parts(post_parked(&host, KEY).await).await;
    assert_capacity_503(status, retry, &body, "runs_in_flight");
    assert_eq!(body["details"]["retryAfter"], 7);

    // A finished run gives its slot back: after cancelling one, a new run is admitted.
    let (status, _) = host
        .post(&format!("/v1/runs/{}/cancel", runs[0]), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    host.wait_terminal(&runs[0], Duration::from_secs(20)).await;
    let mut admitted = false;
    for _ in 0..200 {
        let resp = post_parked(&host, KEY).await;
        if resp.status() == StatusCode::CREATED {
            admitted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(admitted, "the cancelled run's slot was never released");
}

#[tokio::test]
async fn one_tenant_at_its_limit_does_not_block_another() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_path(&dir);
    let (_, acme) = mint(&config, "acme", &["*"]);
    let (_, globex) = mint(&config, "globex", &["*"]);
    let host = host_with_config_and(&config, &["--tenant-max-runs-in-flight", "2"]).await;
    for _ in 0..2 {
        let (status, body) = json_of(post_parked(&host, &acme).await).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let (status, retry, body) = parts(post_parked(&host, &acme).await).await;
    assert_capacity_503(status, retry, &body, "tenant_runs_in_flight");
    // Other tenants (the legacy key is tenant `default`) are unaffected.
    for key in [globex.as_str(), KEY] {
        let (status, body) = json_of(post_parked(&host, key).await).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
}

#[tokio::test]
async fn parked_runs_hold_no_execution_slot() {
    // One execution slot for the whole host: if a sleeping run held it, nothing else could run.
    let host = Host::start_with(with_args(&["--max-executing", "1"])).await;
    let mut parked = Vec::new();
    for _ in 0..3 {
        let (status, body) = json_of(post_parked(&host, KEY).await).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        parked.push(body["runId"].as_str().unwrap().to_string());
    }
    for run in &parked {
        host.wait_status(run, &["running"], Duration::from_secs(20))
            .await;
    }
    let quick = host.create_run("conformance-noop", json!({})).await;
    let snap = host.wait_terminal(&quick, Duration::from_secs(30)).await;
    assert_eq!(snap["status"], "completed", "{snap}");
    for run in &parked {
        assert_eq!(host.snapshot(run).await["status"], "running");
    }
}

#[tokio::test]
async fn runs_parked_on_interrupt_gates_hold_no_execution_slot() {
    // One slot host-wide and per tenant: a gate that kept its slot while waiting for a human
    // or an external event would leave the quick run below queued forever.
    let host = one_slot_host().await;
    let mut parked = Vec::new();
    for (workflow, status) in [
        ("conformance-approval", "waiting-approval"),
        ("conformance-clarification", "waiting-input"),
        ("conformance-interrupt-external-event", "waiting-external"),
    ] {
        let run = host.create_run(workflow, json!({})).await;
        host.wait_status(&run, &[status], Duration::from_secs(20))
            .await;
        parked.push((run, status));
    }
    let quick = host.create_run("conformance-noop", json!({})).await;
    let snap = host.wait_terminal(&quick, Duration::from_secs(30)).await;
    assert_eq!(snap["status"], "completed", "{snap}");
    for (run, status) in &parked {
        assert_eq!(host.snapshot(run).await["status"], *status);
    }
    // A resolved gate takes a slot again and finishes.
    let (approval, _) = &parked[0];
    let (s, b) = host.accept(&approval, "gate").await;
    assert!(s.is_success(), "{b}");
    let snap = host.wait_terminal(approval, Duration::from_secs(30)).await;
    assert_eq!(snap["status"], "completed", "{snap}");
}

/// A sandboxed node that computes for a while (a counted loop, no host calls) and completes.
async fn install_spinner(host: &Host, iterations: u64) {
    let body = format!(
        "(local $i i64) (loop $l (local.set $i (i64.add (local.get $i) (i64.const 1))) \
         (br_if $l (i64.lt_u (local.get $i) (i64.const {iterations})))) (call $ok)"
    );
    host.install_rfc0008("vendor.ops.spin", "1.0.0", "vendor.ops.spin.n", &body)
        .await;
}

fn nodes_of<'a>(events: &'a [Value], ty: &str, node: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| e["type"] == ty && e["payload"]["nodeId"] == node)
        .collect()
}

#[tokio::test]
async fn sigterm_mid_run_drains_flushes_webhooks_exits_0_and_the_run_completes_after_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let mut opts = crate::webhooks::loopback_host(&[
        "--shutdown-delay-ms",
        "500",
        // Generous: the spin below must finish within it even on a loaded machine.
        "--drain-timeout-ms",
        "110000",
        "--sandbox-fuel",
        "0",
        "--sandbox-wall-clock-ms",
        "120000",
    ]);
    opts.data_dir = Some(tmp.path().to_path_buf());
    let mut host = Host::start_with(opts.clone()).await;
    install_spinner(&host, SPIN_ITERATIONS).await;
    let receiver = crate::webhooks::Receiver::start(&[], 200, Duration::ZERO).await;
    crate::webhooks::register(
        &host,
        &receiver.url(),
        &["node.started", "node.completed", "run.completed"],
    )
    .await;
    // spin (computing when SIGTERM arrives) -> pause (a timer) -> done.
    host.register(workflow(
        "wf-drain",
        json!([
            node("spin", "vendor.ops.spin.n", json!({}), json!({})),
            node("pause", "core.delay", json!({"delayMs": 300}), json!({})),
            node("done", "core.noop", json!({}), json!({}))
        ]),
        json!([edge("e1", "spin", "pause"), edge("e2", "pause", "done")]),
        json!([]),
    ))
    .await;
    let run = host.create_run("wf-drain", json!({})).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let events = host.events(&run).await;
        assert!(
            nodes_of(&events, "node.completed", "spin").is_empty(),
            "spin finished before SIGTERM could be sent: raise SPIN_ITERATIONS"
        );
        if !nodes_of(&events, "node.started", "spin").is_empty() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "spin never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    host.sigterm();

    // Draining: not ready, new runs refused with a retry hint, reads still served.
    let mut refused = None;
    for _ in 0..100 {
        let (status, _) = json_of(host.anon(Method::GET, "/readyz").send().await.unwrap()).await;
        if status == StatusCode::SERVICE_UNAVAILABLE {
            refused = Some(parts(post_parked(&host, KEY).await).await);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (status, retry, body) = refused.expect("readyz never turned 503 after SIGTERM");
    assert_capacity_503(status, retry, &body, "draining");
    assert_eq!(host.snapshot(&run).await["status"], "running");

    let exit = host
        .exited(Duration::from_secs(120))
        .await
        .expect("wopbox exits after draining");
    assert!(exit.success(), "exit status {exit:?}");

    // The node computing at SIGTERM finished in this process, and its event reached the
    // webhook receiver before the exit (the outbox was flushed).
    let hits = receiver.hits();
    assert!(
        hits.iter().any(|h| {
            let b = h.json();
            b["runId"] == json!(run)
                && b["type"] == "node.completed"
                && b["event"]["payload"]["nodeId"] == "spin"
        }),
        "spin's node.completed was not delivered before exit"
    );

    let host = Host::start_with(opts).await;
    let snap = host.wait_terminal(&run, Duration::from_secs(30)).await;
    assert_eq!(snap["status"], "completed", "{snap}");
    let events = host.events(&run).await;
    crate::harness::assert_event_log(&run, &events);
    // Finished, not re-run: spin started and completed exactly once across both processes.
    assert_eq!(nodes_of(&events, "node.started", "spin").len(), 1);
    assert_eq!(nodes_of(&events, "node.completed", "spin").len(), 1);
    for n in ["pause", "done"] {
        assert_eq!(nodes_of(&events, "node.completed", n).len(), 1, "{n}");
    }
    receiver
        .wait_for(
            "run.completed after restart",
            Duration::from_secs(15),
            |hs| {
                hs.iter()
                    .any(|h| h.json()["runId"] == json!(run) && h.json()["type"] == "run.completed")
            },
        )
        .await;
}

/// 2-5 s of computing on the 2-core reference machine (spin's `durationMs` was 4849 under
/// parallel load): long enough to be mid-computation when SIGTERM is sent.
const SPIN_ITERATIONS: u64 = 2_000_000_000;

#[tokio::test]
async fn a_parent_waiting_on_its_sub_workflow_holds_no_execution_slot() {
    // One slot: a core.subWorkflow node that kept it while waiting would starve its own child.
    let host = one_slot_host().await;
    host.register(workflow(
        "ops-child",
        json!([node("n", "core.noop", json!({}), json!({}))]),
        json!([]),
        json!([]),
    ))
    .await;
    host.register(workflow(
        "ops-parent",
        json!([
            node(
                "a",
                "core.subWorkflow",
                json!({"workflowId": "ops-child"}),
                json!({})
            ),
            node(
                "b",
                "core.subWorkflow",
                json!({"workflowId": "ops-child"}),
                json!({})
            )
        ]),
        json!([]),
        json!([]),
    ))
    .await;
    let run = host.create_run("ops-parent", json!({})).await;
    let snap = host.wait_terminal(&run, Duration::from_secs(30)).await;
    assert_eq!(snap["status"], "completed", "{snap}");
    assert_eq!(
        snap["childRuns"].as_array().map(Vec::len),
        Some(2),
        "{snap}"
    );
}
