use std::collections::HashSet;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::harness::*;

async fn post_idem(
    h: &Host,
    key_header: &str,
    body: &Value,
    bearer: &str,
) -> (StatusCode, Option<String>, Value) {
    let resp = h
        .anon(Method::POST, "/v1/runs")
        .bearer_auth(bearer)
        .header("idempotency-key", key_header)
        .json(body)
        .send()
        .await
        .unwrap();
    let replay = resp
        .headers()
        .get("openwop-idempotent-replay")
        .map(|v| v.to_str().unwrap().to_string());
    let (s, b) = read(resp).await;
    (s, replay, b)
}

#[tokio::test]
async fn same_key_same_body_replays_different_body_conflicts() {
    let h = Host::start().await;
    let body = json!({"workflowId": "conformance-idempotent", "inputs": {"nonce": "n-1"}});
    let (s1, r1, b1) = post_idem(&h, "key-1", &body, KEY).await;
    assert_eq!(s1, StatusCode::CREATED);
    assert!(r1.is_none());
    // Key order in the body does not matter (canonical digest).
    let reordered = json!({"inputs": {"nonce": "n-1"}, "workflowId": "conformance-idempotent"});
    let (s2, r2, b2) = post_idem(&h, "key-1", &reordered, KEY).await;
    assert_eq!(s2, StatusCode::CREATED);
    assert_eq!(r2.as_deref(), Some("true"));
    assert_eq!(b1, b2, "the cached response, same runId");

    let other = json!({"workflowId": "conformance-idempotent", "inputs": {"nonce": "n-2"}});
    let (s3, _, b3) = post_idem(&h, "key-1", &other, KEY).await;
    assert_eq!(s3, StatusCode::CONFLICT);
    assert_envelope(&b3, "idempotency_key_mismatch");
    assert!(b3.get("runId").is_none() && !b3.to_string().contains(b1["runId"].as_str().unwrap()));

    // Invalid key header.
    let (s4, _, b4) = post_idem(&h, &"k".repeat(300), &body, KEY).await;
    assert_eq!(s4, StatusCode::BAD_REQUEST);
    assert_envelope(&b4, "validation_error");
}

#[tokio::test]
async fn concurrent_duplicates_create_one_run() {
    let h = Host::start().await;
    let body = json!({"workflowId": "conformance-idempotent", "inputs": {"nonce": "burst"}});
    let futs = (0..10).map(|_| post_idem(&h, "burst-key", &body, KEY));
    let results = futures::future::join_all(futs).await;
    let ids: HashSet<String> = results
        .iter()
        .map(|(s, _, b)| {
            assert_eq!(*s, StatusCode::CREATED, "{b}");
            b["runId"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(ids.len(), 1, "one run for ten concurrent duplicates");
    let originals = results.iter().filter(|(_, r, _)| r.is_none()).count();
    assert_eq!(originals, 1, "exactly one non-replayed response");
}

#[tokio::test]
async fn keys_are_scoped_per_credential() {
    let h = Host::start_with(Options {
        keys: vec![KEY.into(), "other-key".into()],
        ..Default::default()
    })
    .await;
    let body = json!({"workflowId": "conformance-idempotent", "inputs": {"nonce": "shared"}});
    let (s1, _, b1) = post_idem(&h, "same-key", &body, KEY).await;
    let (s2, r2, b2) = post_idem(&h, "same-key", &body, "other-key").await;
    assert_eq!((s1, s2), (StatusCode::CREATED, StatusCode::CREATED));
    assert!(r2.is_none());
    assert_ne!(b1["runId"], b2["runId"]);
}
