//! The production profile's testable requirements (spec/v1/production-profile.md, RFC 0009)
//! on both backends: the `capabilities.production` block, the backpressure envelope at the
//! advertised `inflightCap` with discovery exempt from it, and a client retrying a refused
//! request with the same `Idempotency-Key` getting exactly one run over twenty retries.
//! The rest of the checklist lives with its area (durability, retention, observability); see
//! docs/operations.md "Production profile".

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::harness::*;

const CAP: usize = 2;
const RETRY_AFTER: u64 = 3;

fn options(database: Option<String>) -> Options {
    Options {
        database,
        extra_args: vec![
            "--tenant-max-runs-in-flight".into(),
            CAP.to_string(),
            "--retry-after-secs".into(),
            RETRY_AFTER.to_string(),
        ],
        ..Options::default()
    }
}

async fn post_noop(h: &Host, key: &str) -> reqwest::Response {
    h.req(Method::POST, "/v1/runs")
        .header("idempotency-key", key)
        .json(&json!({"workflowId": "conformance-noop"}))
        .send()
        .await
        .unwrap()
}

/// `openwop_run_created_total` of the legacy key's tenant, from `GET /metrics`.
async fn runs_created(h: &Host) -> f64 {
    let resp = h.req(Method::GET, "/metrics").send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let text = resp.text().await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("openwop_run_created_total{openwop_tenant_id=\"default\"} "))
        .map(|v| v.parse().unwrap())
        .unwrap_or(0.0)
}

async fn backpressure_and_retries(database: Option<String>) {
    let h = Host::start_with(options(database)).await;

    // The block: the profile is not claimed; backpressure and retention are advertised with
    // the values in force (the suite saturates `inflightCap` and compares `retryAfterSeconds`).
    let doc = h.discovery().await;
    let prod = &doc["capabilities"]["production"];
    assert_eq!(prod["supported"], false, "{prod}");
    assert_eq!(
        prod["backpressure"],
        json!({"supported": true, "inflightCap": CAP, "retryAfterSeconds": RETRY_AFTER})
    );
    assert_eq!(prod["retention"]["supported"], true, "{prod}");
    assert_eq!(prod["retention"]["minWindowSeconds"], 604_800, "{prod}");
    assert_eq!(doc["production"], *prod, "root block and its mirror agree");

    // `inflightCap` long-running runs hold every slot...
    let mut holders = Vec::new();
    for _ in 0..CAP {
        holders.push(
            h.create_run("conformance-cancellable", json!({"delayMs": 60000}))
                .await,
        );
    }
    // ...so the next one is refused with the canonical envelope and matching hints.
    let resp = post_noop(&h, "retry-key").await;
    let header = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let (status, body) = read(resp).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_envelope(&body, "service_unavailable");
    assert_eq!(header.as_deref(), Some(RETRY_AFTER.to_string().as_str()));
    assert_eq!(body["details"]["retryAfter"], RETRY_AFTER, "{body}");

    // Discovery answers under saturation, to many callers at once.
    let probes = futures::future::join_all(
        (0..CAP + 4).map(|_| h.anon(Method::GET, "/.well-known/openwop").send()),
    )
    .await;
    for p in probes {
        assert_eq!(p.unwrap().status(), StatusCode::OK);
    }

    // Capacity comes back; the client retries the refused request with the same key and body
    // until it is admitted, then keeps retrying back to back (the profile's floor is five
    // retries, the high-throughput tier's twenty): one run, one body.
    for run in &holders {
        let (s, b) = h.post(&format!("/v1/runs/{run}/cancel"), json!({})).await;
        assert_eq!(s, StatusCode::OK, "{b}");
        h.wait_terminal(run, Duration::from_secs(20)).await;
    }
    let mut first = None;
    for _ in 0..200 {
        let resp = post_noop(&h, "retry-key").await;
        if resp.status() == StatusCode::CREATED {
            assert!(resp.headers().get("openwop-idempotent-replay").is_none());
            first = Some(read(resp).await.1);
            break;
        }
        // Slots return when the cancelled runs' drivers end, just after their terminal event.
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let first = first.expect("the retry was never admitted");
    for _ in 0..20 {
        let resp = post_noop(&h, "retry-key").await;
        assert_eq!(resp.status(), StatusCode::CREATED);
        assert_eq!(
            resp.headers()
                .get("openwop-idempotent-replay")
                .and_then(|v| v.to_str().ok()),
            Some("true")
        );
        assert_eq!(read(resp).await.1, first, "the cached response");
    }
    let run = first["runId"].as_str().unwrap();
    assert_eq!(
        h.wait_terminal(run, Duration::from_secs(20)).await["status"],
        "completed"
    );
    // Runs created in all: the two holders and that one run.
    assert_eq!(runs_created(&h).await, (CAP + 1) as f64);
}

#[tokio::test]
async fn sqlite_backpressure_envelope_discovery_exemption_and_retries_make_one_run() {
    backpressure_and_retries(None).await;
}

#[tokio::test]
async fn postgres_backpressure_envelope_discovery_exemption_and_retries_make_one_run() {
    let Some(db) = pg_database().await else {
        return;
    };
    backpressure_and_retries(Some(db)).await;
}
