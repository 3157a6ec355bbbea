use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::harness::*;

#[tokio::test]
async fn well_known_is_public_and_complete() {
    let h = Host::start().await;
    let resp = h
        .anon(Method::GET, "/.well-known/openwop")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        resp.headers().get("cache-control").is_some(),
        "Cache-Control required"
    );
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    let etag = resp
        .headers()
        .get("etag")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let doc: Value = resp.json().await.unwrap();

    // openwop-core: every required root field.
    assert!(doc["protocolVersion"].as_str().unwrap().starts_with("1."));
    assert!(doc["supportedEnvelopes"].is_array());
    assert!(doc["schemaVersions"].is_object());
    for k in ["clarificationRounds", "schemaRounds", "envelopesPerTurn"] {
        assert!(doc["limits"][k].as_u64().is_some(), "limits.{k}");
    }
    // Stream claims: REST transport (SSE + poll).
    assert!(doc["supportedTransports"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t == "rest"));
    // openwop-interrupts: clarification.request is served by core.clarificationGate.
    assert!(doc["supportedEnvelopes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e == "clarification.request"));
    assert_eq!(
        doc["extensions"]["interrupts"]["signedCallbackTokens"],
        true
    );
    assert!(doc["limits"]["maxRequestBodyBytes"].as_u64().unwrap() > 0);

    // Fixtures: unique, non-empty, and exactly the ones that run here.
    let fixtures: Vec<String> = doc["fixtures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap().to_string())
        .collect();
    let mut dedup = fixtures.clone();
    dedup.sort();
    dedup.dedup();
    assert_eq!(dedup.len(), fixtures.len());
    for f in CORE_FIXTURES {
        assert!(
            fixtures.contains(&f.to_string()),
            "fixture {f} must be advertised: {fixtures:?}"
        );
    }
    for f in [
        "conformance-approval",
        "conformance-clarification",
        "conformance-interrupt-external-event",
        "conformance-interrupt-auth-required",
        "conformance-interrupt-parent-child-cancel",
        "conformance-interrupt-parent-child-cancel-child",
        "conformance-subworkflow-mid-run-mutation",
        "conformance-subworkflow-mid-run-mutation-child",
        "conformance-interrupt-quorum",
    ] {
        assert!(
            fixtures.contains(&f.to_string()),
            "interrupt fixture {f}: {fixtures:?}"
        );
    }
    // Unimplemented semantics (recursion limit, run-duration cap, agents) must not be
    // advertised, even when the node types are all core.*.
    for f in [
        "conformance-cap-breach",
        "conformance-run-duration-breach",
        "conformance-agent-identity",
    ] {
        assert!(
            !fixtures.contains(&f.to_string()),
            "fixture {f} must not be advertised"
        );
        let (status, _) = h.get(&format!("/v1/workflows/{f}")).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{f} is not loaded either");
    }
    // Every advertised fixture only uses registered core node types.
    for f in &fixtures {
        let def: Value = serde_json::from_str(
            &std::fs::read_to_string(fixtures_dir().join(format!("{f}.json"))).unwrap(),
        )
        .unwrap();
        for n in def["nodes"].as_array().unwrap() {
            let t = n["typeId"].as_str().unwrap();
            assert!(
                [
                    "core.noop",
                    "core.fail",
                    "core.delay",
                    "core.identity",
                    "core.approvalGate",
                    "core.clarificationGate",
                    "core.interrupt",
                    "core.subWorkflow"
                ]
                .contains(&t),
                "{f} uses {t}"
            );
        }
    }

    // Conditional GET.
    let resp = h
        .anon(Method::GET, "/.well-known/openwop")
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_MODIFIED);
}

#[tokio::test]
async fn no_fixtures_flag_means_no_fixtures_advertised() {
    let h = Host::start_with(Options {
        fixtures: false,
        ..Default::default()
    })
    .await;
    let doc = h.discovery().await;
    assert_eq!(doc["fixtures"], serde_json::json!([]));
    let (status, body) = h
        .post(
            "/v1/runs",
            serde_json::json!({"workflowId": "conformance-noop"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_envelope(&body, "validation_error");
}

#[tokio::test]
async fn openapi_is_public() {
    let h = Host::start().await;
    let (status, doc) = crate::harness::read(
        h.anon(Method::GET, "/v1/openapi.json")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    assert!(doc["info"].is_object());
    assert!(doc["paths"]["/v1/runs"].is_object());
}
