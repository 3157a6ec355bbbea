//! The RFC 0035 conformance seam: off by default, and with `--enable-test-seams` every synthetic
//! typeId gets the outcome host-sample-test-seams.md §8 names, from a real module.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::harness::{assert_envelope, Host, Options};

const INVOKE: &str = "/v1/host/sample/test/sandbox-invoke";

async fn seam_host() -> Host {
    Host::start_with(Options {
        extra_args: vec!["--enable-test-seams".into()],
        ..Options::default()
    })
    .await
}

async fn invoke(h: &Host, body: Value) -> Value {
    let (s, b) = h.post(INVOKE, body).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    b
}

#[tokio::test]
async fn seam_is_not_mounted_by_default() {
    let h = Host::start().await;
    let (s, b) = h.post(INVOKE, json!({"typeId": "well-behaved.echo"})).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_envelope(&b, "not_found");
}

#[tokio::test]
async fn every_synthetic_type_id_gets_its_spec_outcome() {
    let h = seam_host().await;
    let escapes = [
        ("misbehave.fs-escape-read", "host-fs-escape"),
        ("misbehave.fs-escape-write", "host-fs-escape"),
        ("misbehave.env-leak", "host-env-leak"),
        ("misbehave.network-escape", "network-escape"),
        ("misbehave.process-escape", "host-process-escape"),
    ];
    for (t, kind) in escapes {
        let b = invoke(&h, json!({"typeId": t})).await;
        assert_eq!(b["error"]["code"], "sandbox_escape_attempt", "{t}: {b}");
        assert_eq!(b["error"]["details"]["escapeKind"], kind, "{t}: {b}");
        assert!(b["error"]["details"]["message"].is_string(), "{t}: {b}");
    }
    let b = invoke(
        &h,
        json!({"typeId": "misbehave.capability-gate-violation", "allowedHostCalls": []}),
    )
    .await;
    assert_eq!(b["error"]["code"], "sandbox_capability_denied");
    assert_eq!(
        b["error"]["details"]["requestedCapability"],
        "notInAllowedList"
    );

    let started = std::time::Instant::now();
    let b = invoke(&h, json!({"typeId": "misbehave.timeout"})).await;
    assert_eq!(b["error"]["code"], "sandbox_timeout", "{b}");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));

    let b = invoke(&h, json!({"typeId": "misbehave.memory-bomb"})).await;
    assert_eq!(b["error"]["code"], "sandbox_memory_exceeded", "{b}");
    assert!(
        b["error"]["details"]["limitBytes"].as_u64().is_some(),
        "{b}"
    );

    for _ in 0..3 {
        let b = invoke(&h, json!({"typeId": "misbehave.cross-pack-mutate"})).await;
        assert_eq!(b, json!({"result": {"shared": 1}}));
    }
    let b = invoke(
        &h,
        json!({"typeId": "well-behaved.echo", "args": {"input": "hello-sandbox"}}),
    )
    .await;
    assert_eq!(b, json!({"result": {"echoed": "hello-sandbox"}}));

    // The invocation's grant decides, not the advertised list.
    let b = invoke(&h, json!({"typeId": "well-behaved.host-fetch", "allowedHostCalls": ["fetch"], "args": {"value": 7}})).await;
    assert_eq!(b, json!({"result": {"value": 7}}));
    let b = invoke(&h, json!({"typeId": "well-behaved.host-fetch"})).await;
    assert_eq!(b["error"]["code"], "sandbox_capability_denied");
    assert_eq!(b["error"]["details"]["requestedCapability"], "fetch");
}

#[tokio::test]
async fn seam_rejects_bad_requests_in_the_envelope() {
    let h = seam_host().await;
    let (s, b) = h.post(INVOKE, json!({"typeId": "misbehave.nope"})).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_envelope(&b, "sandbox_pack_not_found");
    let (s, b) = h.post(INVOKE, json!({"args": {}})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_envelope(&b, "validation_error");
    let (s, b) = h
        .post(
            INVOKE,
            json!({"typeId": "well-behaved.echo", "allowedHostCalls": "fetch"}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_envelope(&b, "validation_error");
    let (s, b) = h
        .post(
            "/v1/host/sample/test/sandbox-load",
            json!({"packId": "vendor.openwop.misbehaving-sandbox"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        b,
        json!({"ok": true, "packId": "vendor.openwop.misbehaving-sandbox"})
    );
    let (s, b) = h
        .post(
            "/v1/host/sample/test/sandbox-load",
            json!({"packId": "vendor.nobody.nothing"}),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_envelope(&b, "sandbox_pack_not_found");
    // Discovery advertises the sandbox with exactly the five fields, at the root and mirrored.
    let (_, d) = h.get("/.well-known/openwop").await;
    let sb = d["sandbox"].as_object().unwrap();
    let mut keys: Vec<&str> = sb.keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "allowedHostCalls",
            "isolationModel",
            "memoryLimitBytes",
            "supported",
            "wallClockLimitMs"
        ]
    );
    assert_eq!(d["sandbox"]["supported"], true);
    assert_eq!(d["sandbox"]["isolationModel"], "wasm");
    assert_eq!(d["capabilities"]["sandbox"], d["sandbox"]);
}
