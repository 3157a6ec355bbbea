use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::harness::*;

#[tokio::test]
async fn bad_requests_get_the_canonical_envelope() {
    let h = Host::start_with(Options {
        extra_args: vec!["--max-body-bytes".into(), "4096".into()],
        ..Default::default()
    })
    .await;

    // Malformed JSON.
    let r = h
        .req(Method::POST, "/v1/runs")
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    let (s, b) = read(r).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_envelope(&b, "validation_error");

    // Wrong content type.
    let r = h
        .req(Method::POST, "/v1/runs")
        .header("content-type", "text/plain")
        .body(r#"{"workflowId":"conformance-noop"}"#)
        .send()
        .await
        .unwrap();
    let (s, b) = read(r).await;
    assert_eq!(s, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_envelope(&b, "unsupported_media_type");

    // Missing content type / empty body.
    let r = h.req(Method::POST, "/v1/runs").send().await.unwrap();
    let (s, b) = read(r).await;
    assert_eq!(s, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_envelope(&b, "unsupported_media_type");

    // Oversized body (declared length and streamed).
    let big = json!({"workflowId": "conformance-noop", "inputs": {"pad": "x".repeat(10_000)}});
    let r = h
        .req(Method::POST, "/v1/runs")
        .json(&big)
        .send()
        .await
        .unwrap();
    let (s, b) = read(r).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    assert_envelope(&b, "payload_too_large");
    let chunks = futures::stream::iter((0..10).map(|_| Ok::<_, std::io::Error>(vec![b' '; 1000])));
    let r = h
        .req(Method::POST, "/v1/runs")
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    let (s, b) = read(r).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    assert_envelope(&b, "payload_too_large");

    // Structurally wrong bodies.
    for body in [
        json!([1, 2]),
        json!({}),
        json!({"workflowId": 42}),
        json!({"workflowId": ""}),
        json!({"workflowId": "conformance-noop", "inputs": [1]}),
        json!({"workflowId": "conformance-noop", "tags": "x"}),
    ] {
        let (s, b) = h.post("/v1/runs", body.clone()).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
        assert_envelope(&b, "validation_error");
    }

    // Unknown routes, unversioned paths and wrong methods.
    let (s, b) = h.get("/v1/nothing-here").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_envelope(&b, "not_found");
    let (s, b) = h.get("/runs").await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_envelope(&b, "validation_error");
    let (s, b) = read(h.req(Method::DELETE, "/v1/runs").send().await.unwrap()).await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
    assert_envelope(&b, "method_not_allowed");
    let (s, b) = read(
        h.req(Method::PATCH, "/v1/runs/x/events/poll")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
    assert_envelope(&b, "method_not_allowed");

    // Unknown run.
    let (s, b) = h.get("/v1/runs/run-unknown").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_envelope(&b, "not_found");
}
