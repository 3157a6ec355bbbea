//! Operations surface: probes, admission (503 + Retry-After), per-tenant isolation, graceful
//! shutdown, metrics, structured logs, trace propagation, retention.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::harness::{Host, Options, KEY};
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
    let host = Host::start_with(with_args(&[
        "--max-executing",
        "1",
        "--tenant-max-executing",
        "1",
    ]))
    .await;
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
    let (s, b) = host
        .post(
            &format!("/v1/runs/{approval}/interrupts/gate"),
            json!({"resumeValue": {"action": "accept"}}),
        )
        .await;
    assert!(s.is_success(), "{b}");
    let snap = host.wait_terminal(approval, Duration::from_secs(30)).await;
    assert_eq!(snap["status"], "completed", "{snap}");
}
