//! Scoped API keys: minted with the real `wopbox keys` CLI into an operator config file, served
//! with `serve --config`, refused with `403 forbidden` + `details.scopeRequired` when a scope is
//! missing, `401 key_revoked` once revoked (while the host keeps running).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::harness::*;

/// Run `wopbox keys ARGS --config CONFIG`, asserting success; returns its JSON output.
pub fn keys_cli(config: &Path, args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_wopbox"))
        .arg("keys")
        .args(args)
        .arg("--config")
        .arg(config)
        .env_remove("WOPBOX_CONFIG")
        .output()
        .expect("run wopbox keys");
    assert!(
        out.status.success(),
        "wopbox keys {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("keys CLI prints JSON")
}

/// Mint a key for `tenant` with `scopes`; returns (id, secret).
pub fn mint(config: &Path, tenant: &str, scopes: &[&str]) -> (String, String) {
    let mut args = vec!["mint", "--tenant", tenant];
    for s in scopes {
        args.push("--scope");
        args.push(s);
    }
    let v = keys_cli(config, &args);
    assert_eq!(v["tenant"], tenant, "{v}");
    assert_eq!(v["scopes"], json!(scopes), "{v}");
    (
        v["id"].as_str().unwrap().to_string(),
        v["secret"].as_str().unwrap().to_string(),
    )
}

/// A host serving `config` (plus the legacy full-scope `KEY`), with a temp dir holding both.
pub async fn host_with_config(config: &Path) -> Host {
    host_with_config_and(config, &[]).await
}

pub async fn host_with_config_and(config: &Path, extra: &[&str]) -> Host {
    let mut extra_args = vec!["--config".to_string(), config.display().to_string()];
    extra_args.extend(extra.iter().map(|s| s.to_string()));
    Host::start_with(Options {
        extra_args,
        ..Default::default()
    })
    .await
}

pub fn config_path(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("wopbox.toml")
}

/// One request with `key` as the bearer.
pub async fn call(
    h: &Host,
    key: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut req = h
        .client
        .request(method, h.url(path))
        .bearer_auth(key)
        .header("accept", "application/json");
    if let Some(b) = body {
        req = req.json(&b);
    }
    read(req.send().await.unwrap()).await
}

/// `POST /v1/runs` with `key`, asserting 201; returns the runId.
pub async fn create_run_as(h: &Host, key: &str, workflow_id: &str) -> String {
    let body = json!({"workflowId": workflow_id});
    let (status, created) = call(h, key, Method::POST, "/v1/runs", Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    created["runId"].as_str().unwrap().to_string()
}

fn assert_forbidden(status: StatusCode, body: &Value, scope: &str, what: &str) {
    assert_eq!(status, StatusCode::FORBIDDEN, "{what}: {body}");
    assert_envelope(body, "forbidden");
    assert_eq!(body["details"]["scopeRequired"], scope, "{what}: {body}");
}

#[tokio::test]
async fn a_key_lacking_a_scope_gets_403_naming_it_and_nothing_happens() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_path(&dir);
    let (_, reader) = mint(&config, "default", &["runs:read"]);
    let (_, creator) = mint(&config, "default", &["runs:create", "manifest:read"]);
    let (_, hooks) = mint(&config, "default", &["webhooks:manage"]);
    let (_, runs_all) = mint(&config, "default", &["runs:*"]);
    let h = host_with_config(&config).await;

    // Allowed: the creator starts a run the reader may then read.
    let run_id = create_run_as(&h, &creator, "conformance-cancellable").await;
    let run_path = format!("/v1/runs/{run_id}");
    let (status, snap) = call(&h, &reader, Method::GET, &run_path, None).await;
    assert_eq!(status, StatusCode::OK, "{snap}");

    let refusals: Vec<(&str, Method, String, Option<Value>, &str)> = vec![
        (
            &reader,
            Method::POST,
            "/v1/runs".into(),
            Some(json!({"workflowId": "conformance-noop"})),
            "runs:create",
        ),
        (
            &reader,
            Method::POST,
            format!("{run_path}/cancel"),
            Some(json!({})),
            "runs:cancel",
        ),
        (
            &reader,
            Method::GET,
            "/v1/workflows/conformance-noop".into(),
            None,
            "manifest:read",
        ),
        (
            &reader,
            Method::POST,
            "/v1/webhooks".into(),
            Some(json!({"url": "https://example.com/h"})),
            "webhooks:manage",
        ),
        (&creator, Method::GET, run_path.clone(), None, "runs:read"),
        (
            &creator,
            Method::GET,
            format!("{run_path}/events/poll"),
            None,
            "runs:read",
        ),
        (
            &creator,
            Method::GET,
            format!("{run_path}/events"),
            None,
            "runs:read",
        ),
        (
            &creator,
            Method::POST,
            "/v1/workflows".into(),
            Some(json!({"id": "x"})),
            "workflows:write",
        ),
        (
            &hooks,
            Method::GET,
            "/v1/audit/verify".into(),
            None,
            "audit:read",
        ),
        (&hooks, Method::GET, "/v1/packs".into(), None, "packs:read"),
        (
            &runs_all,
            Method::GET,
            "/v1/workflows/conformance-noop".into(),
            None,
            "manifest:read",
        ),
    ];
    for (key, method, path, body, scope) in refusals {
        let what = format!("{method} {path} needs {scope}");
        let (status, resp) = call(&h, key, method, &path, body).await;
        assert_forbidden(status, &resp, scope, &what);
        assert!(!resp.to_string().contains(key), "never echo the key");
    }

    // The refused cancel had no effect: the run is still live.
    let snap = h.snapshot(&run_id).await;
    assert_ne!(snap["status"], "cancelled", "{snap}");
    assert_ne!(snap["status"], "cancelling", "{snap}");

    // `runs:*` covers every runs verb, including cancel.
    let (status, body) = call(&h, &runs_all, Method::GET, &run_path, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = call(
        &h,
        &runs_all,
        Method::POST,
        &format!("{run_path}/cancel"),
        Some(json!({})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    h.wait_status(&run_id, &["cancelled"], Duration::from_secs(20))
        .await;

    // A scope a key does hold is not a 403 (the webhook body is then judged on its merits).
    let (status, body) = call(
        &h,
        &hooks,
        Method::POST,
        "/v1/webhooks",
        Some(json!({"url": 5})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    // Unknown routes still answer 404 to a scoped key, and the legacy key stays full-scope.
    let (status, body) = call(&h, &reader, Method::GET, "/v1/no-such-route", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, body) = h.get("/v1/audit/verify").await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn cli_mint_list_revoke_round_trip_on_a_running_host() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_path(&dir);
    std::fs::write(
        &config,
        "# operator notes survive edits\n[other]\nkept = true\n",
    )
    .unwrap();
    let (id, secret) = mint(&config, "acme", &["runs:create", "runs:read"]);

    // Only the digest is stored; the operator's comment and other sections are kept.
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(!text.contains(&secret), "secret must not be stored: {text}");
    assert!(
        text.contains(&hex::encode(Sha256::digest(secret.as_bytes()))),
        "{text}"
    );
    assert!(
        text.contains("# operator notes survive edits") && text.contains("kept = true"),
        "{text}"
    );

    let listed = keys_cli(&config, &["list"]);
    let entry = &listed["keys"][0];
    assert_eq!(entry["id"], id.as_str());
    assert_eq!(entry["tenant"], "acme");
    assert_eq!(entry["state"], "active");
    assert!(!listed.to_string().contains(&secret), "{listed}");

    let h = host_with_config(&config).await;
    let run_path = format!(
        "/v1/runs/{}",
        create_run_as(&h, &secret, "conformance-noop").await
    );
    let (status, snap) = call(&h, &secret, Method::GET, &run_path, None).await;
    assert_eq!(status, StatusCode::OK, "{snap}");
    assert_eq!(snap["owner"]["tenant"], "acme", "{snap}");

    // A key minted while the host runs is picked up too.
    let (_, late) = mint(&config, "acme", &["runs:read"]);
    wait_for_status(&h, &late, &run_path, StatusCode::OK).await;

    let revoked = keys_cli(&config, &["revoke", &id]);
    assert_eq!(revoked["id"], id.as_str());
    assert_eq!(revoked["alreadyRevoked"], false);
    let body = wait_for_status(&h, &secret, &run_path, StatusCode::UNAUTHORIZED).await;
    assert_envelope(&body, "key_revoked");
    assert_eq!(keys_cli(&config, &["list"])["keys"][0]["state"], "revoked");
    // Revoking again is harmless; the other key is unaffected.
    assert_eq!(keys_cli(&config, &["revoke", &id])["alreadyRevoked"], true);
    let (status, _) = call(&h, &late, Method::GET, &run_path, None).await;
    assert_eq!(status, StatusCode::OK);
}

/// Poll until `key` gets `want` on `path` (the host re-reads the config about every second).
async fn wait_for_status(h: &Host, key: &str, path: &str, want: StatusCode) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, body) = call(h, key, Method::GET, path, None).await;
        if status == want {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "still {status} {body}, wanted {want}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn expired_and_unknown_keys_get_401_and_bad_cli_input_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_path(&dir);
    let v = keys_cli(
        &config,
        &[
            "mint",
            "--tenant",
            "acme",
            "--scope",
            "runs:read",
            "--expires",
            "2020-01-01T00:00:00Z",
        ],
    );
    let expired = v["secret"].as_str().unwrap().to_string();
    let h = host_with_config(&config).await;
    let (status, body) = call(&h, &expired, Method::GET, "/v1/runs/run-x", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_envelope(&body, "key_expired");
    let (status, body) = call(&h, "wbx_not_a_key", Method::GET, "/v1/runs/run-x", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_envelope(&body, "unauthenticated");

    // Typos never become keys: unknown scope, bad tenant, unknown id to revoke.
    for args in [
        vec!["mint", "--tenant", "acme", "--scope", "run:read"],
        vec!["mint", "--tenant", "bad tenant", "--scope", "runs:read"],
        vec!["revoke", "key-000000000000"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_wopbox"))
            .arg("keys")
            .args(&args)
            .arg("--config")
            .arg(&config)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} should fail");
        assert!(
            !String::from_utf8_lossy(&out.stderr).is_empty(),
            "{args:?} explains"
        );
    }
    assert_eq!(
        keys_cli(&config, &["list"])["keys"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn a_config_file_with_a_bad_key_entry_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_path(&dir);
    std::fs::write(
        &config,
        format!(
            "[[keys]]\nid = \"k1\"\ntenant = \"acme\"\nscope = [\"runs:read\"]\nsha256 = \"{}\"\n",
            "ab".repeat(32)
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_wopbox"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(dir.path().join("data"))
        .arg("--config")
        .arg(&config)
        .env_remove("WOPBOX_API_KEYS")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("wopbox started with an invalid key entry");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success());
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(stderr.contains("scope"), "names the problem: {stderr}");
}

#[tokio::test]
async fn a_config_broken_while_serving_keeps_the_previous_keys() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_path(&dir);
    let (id, secret) = mint(&config, "acme", &["runs:read"]);
    let good = std::fs::read_to_string(&config).unwrap();
    let h = host_with_config(&config).await;
    let path = "/v1/runs/run-none";
    let (status, _) = call(&h, &secret, Method::GET, path, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "the key works");

    // A half-written or mistyped file must not lock everyone out: the keys stay as they were
    // across several reload periods.
    std::fs::write(&config, "[[keys]]\nid = \"oops\"\n").unwrap();
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (status, body) = call(&h, &secret, Method::GET, path, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    }
    // Once the file loads again its changes apply (here: the key's revocation).
    std::fs::write(&config, good).unwrap();
    keys_cli(&config, &["revoke", &id]);
    let body = wait_for_status(&h, &secret, path, StatusCode::UNAUTHORIZED).await;
    assert_envelope(&body, "key_revoked");
}
