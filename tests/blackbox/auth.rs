use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::harness::*;

const PROTECTED: [(&str, &str); 9] = [
    ("POST", "/v1/runs"),
    ("GET", "/v1/runs/run-does-not-exist"),
    ("POST", "/v1/runs/run-does-not-exist/cancel"),
    ("GET", "/v1/runs/run-does-not-exist/events"),
    ("GET", "/v1/runs/run-does-not-exist/events/poll"),
    ("GET", "/v1/workflows/nope"),
    ("POST", "/v1/workflows"),
    ("GET", "/v1/no-such-route"),
    ("DELETE", "/v1/runs"),
];

#[tokio::test]
async fn missing_and_invalid_credentials_get_401_before_anything_else() {
    let h = Host::start().await;
    for (m, path) in PROTECTED {
        let method = Method::from_bytes(m.as_bytes()).unwrap();
        for auth in [
            None,
            Some("Bearer hk_definitely_not_a_real_key_12345"),
            Some("Basic dXNlcjpwYXNz"),
            Some("Bearer"),
            Some(KEY),
        ] {
            let mut req = h
                .anon(method.clone(), path)
                .json(&json!({"workflowId": "conformance-noop"}));
            if let Some(a) = auth {
                req = req.header("authorization", a);
            }
            let (status, body) = read(req.send().await.unwrap()).await;
            assert_eq!(
                status,
                StatusCode::UNAUTHORIZED,
                "{m} {path} with {auth:?}: {body}"
            );
            assert_envelope(&body, "unauthenticated");
            assert!(
                !body.to_string().contains("hk_definitely"),
                "never echo the token"
            );
        }
    }
}

#[tokio::test]
async fn valid_keys_from_flags_and_env() {
    let h = Host::start_with(Options {
        keys: vec![KEY.into(), "second-key".into()],
        env: vec![],
        ..Default::default()
    })
    .await;
    for key in [KEY, "second-key"] {
        let resp = h
            .anon(Method::GET, "/v1/workflows/conformance-noop")
            .bearer_auth(key)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "key {key}");
    }
    drop(h);

    let h = Host::start_with(Options {
        keys: vec![],
        env: vec![("WOPBOX_API_KEYS".into(), "env-one, env-two".into())],
        ..Default::default()
    })
    .await;
    for key in ["env-one", "env-two"] {
        let resp = h
            .anon(Method::GET, "/v1/workflows/conformance-noop")
            .bearer_auth(key)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "key {key}");
    }
    assert!(
        !h.data_dir.join("api-key").exists(),
        "no key is generated when keys are configured"
    );
}

#[tokio::test]
async fn first_start_without_key_generates_prints_and_persists_one() {
    let mut h = Host::start_with(Options {
        keys: vec![],
        ..Default::default()
    })
    .await;
    let key = std::fs::read_to_string(h.data_dir.join("api-key"))
        .unwrap()
        .trim()
        .to_string();
    assert!(key.len() >= 32);
    let printed = h
        .stdout
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains(&key))
        .count();
    assert_eq!(printed, 1, "the generated key is printed once");
    let resp = h
        .anon(Method::GET, "/v1/workflows/conformance-noop")
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = h
        .anon(Method::GET, "/v1/workflows/conformance-noop")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);

    // Restart on the same data dir: same key, not printed again.
    let tmp = h.take_tmp();
    let dir = h.data_dir.clone();
    h.kill9();
    let h2 = Host::start_with(Options {
        keys: vec![],
        data_dir: Some(dir),
        ..Default::default()
    })
    .await;
    assert_eq!(h2.key, key);
    assert!(
        !h2.stdout.lock().unwrap().iter().any(|l| l.contains(&key)),
        "key printed only on first start"
    );
    let resp = h2
        .anon(Method::GET, "/v1/workflows/conformance-noop")
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    drop(tmp);
}
