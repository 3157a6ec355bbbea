//! `openwop-interrupt-auth-required` (interrupt-profiles.md) and approver routing (interrupt.md
//! §"Portable approver routing", RFC 0104): who may resolve an approval. Every refusal leaves
//! the run waiting, and only the right key resumes it.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::harness::*;
use crate::scopes::{call, config_path, create_run_as, host_with_config, mint};

const AUTH_REQUIRED: &str = "conformance-interrupt-auth-required";
const ACCEPT: fn() -> Value = || json!({"resumeValue": {"action": "accept"}});

/// Poll the run (with `key`) until its status is one of `statuses`; returns the snapshot.
async fn wait_for(h: &Host, key: &str, run_id: &str, statuses: &[&str]) -> Value {
    let path = format!("/v1/runs/{run_id}");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (status, snap) = call(h, key, Method::GET, &path, None).await;
        assert_eq!(status, StatusCode::OK, "{snap}");
        if statuses.contains(&snap["status"].as_str().unwrap_or("")) {
            return snap;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not {statuses:?}: {snap}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn waiting(h: &Host, key: &str, run_id: &str) -> Value {
    wait_for(h, key, run_id, &["waiting-approval"]).await
}

async fn finished(h: &Host, key: &str, run_id: &str) -> Value {
    wait_for(h, key, run_id, &["completed", "failed", "cancelled"]).await
}

/// The signed-token resolve path from a waiting snapshot (`/v1/interrupts/<token>`).
fn token_path(snap: &Value) -> String {
    let i = &snap["interrupt"];
    match i["interruptToken"].as_str() {
        Some(t) => format!("/v1/interrupts/{t}"),
        None => i["callbackUrl"]
            .as_str()
            .expect("token or callbackUrl")
            .to_string(),
    }
}

/// Accept through the signed token of a waiting snapshot (no bearer).
async fn resolve_by_token(h: &Host, snap: &Value) -> (StatusCode, Value) {
    let req = h.anon(Method::POST, &token_path(snap)).json(&ACCEPT());
    read(req.send().await.unwrap()).await
}

async fn resolve(h: &Host, key: Option<&str>, run_id: &str, node: &str) -> (StatusCode, Value) {
    let path = format!("/v1/runs/{run_id}/interrupts/{node}");
    match key {
        Some(k) => call(h, k, Method::POST, &path, Some(ACCEPT())).await,
        None => {
            read(
                h.anon(Method::POST, &path)
                    .json(&ACCEPT())
                    .send()
                    .await
                    .unwrap(),
            )
            .await
        }
    }
}

#[tokio::test]
async fn auth_required_resume_needs_a_bearer_with_approvals_respond() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_path(&dir);
    let (_, low) = mint(&config, "acme", &["runs:create", "runs:read"]);
    let (_, approver) = mint(&config, "acme", &["approvals:respond", "runs:read"]);
    let (_, foreign) = mint(&config, "globex", &["approvals:respond"]);
    let h = host_with_config(&config).await;
    let (_, disc) = h.get("/.well-known/openwop").await;
    assert!(
        disc["fixtures"]
            .as_array()
            .unwrap()
            .contains(&json!(AUTH_REQUIRED)),
        "{disc}"
    );
    let profiles = &disc["extensions"]["interrupts"]["profiles"];
    assert!(
        profiles
            .as_array()
            .unwrap()
            .contains(&json!("openwop-interrupt-auth-required")),
        "{disc}"
    );

    let run_id = create_run_as(&h, &low, AUTH_REQUIRED).await;
    let snap = waiting(&h, &low, &run_id).await;

    // Each refusal: the right status and code, and the run still waits.
    let (status, body) = resolve(&h, Some(&low), &run_id, "gate").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_envelope(&body, "forbidden");
    assert_eq!(body["details"]["scopeRequired"], "approvals:respond");
    let (status, body) = resolve(&h, None, &run_id, "gate").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let (status, body) = resolve(&h, Some(&foreign), &run_id, "gate").await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "another tenant's run is invisible: {body}"
    );
    // The profile elevates auth: the signed callback token no longer resolves this gate.
    let (status, body) = resolve_by_token(&h, &snap).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_envelope(&body, "auth_elevation_required");
    let snap = waiting(&h, &low, &run_id).await;
    assert_eq!(snap["interrupt"]["nodeId"], "gate", "{snap}");

    let (status, body) = resolve(&h, Some(&approver), &run_id, "gate").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let done = finished(&h, &approver, &run_id).await;
    assert_eq!(done["status"], "completed", "{done}");
    let mut h = h;
    h.key = approver.clone();
    let received: Vec<Value> = h
        .events(&run_id)
        .await
        .into_iter()
        .filter(|e| e["type"] == "approval.received")
        .collect();
    assert_eq!(received.len(), 1, "{received:?}");
    assert!(received[0]["payload"]["decidedBy"]
        .as_str()
        .is_some_and(|d| d.starts_with("key-")));
}

/// Mint an `approvals:respond` key of tenant acme with `--role NAME` or `--group NAME`; the CLI
/// echoes the membership.
fn approver_with(config: &std::path::Path, flag: &str, name: &str) -> String {
    let args = [
        "mint",
        "--tenant",
        "acme",
        "--scope",
        "approvals:respond",
        flag,
        name,
    ];
    let out = crate::scopes::keys_cli(config, &args);
    let field = if flag == "--role" { "roles" } else { "groups" };
    assert_eq!(out[field], json!([name]), "{out}");
    out["secret"].as_str().unwrap().to_string()
}

pub fn routed_gate(id: &str, routing: Value) -> Value {
    let mut config = json!({"title": "routed", "actions": ["accept", "reject"]});
    for (k, v) in routing.as_object().unwrap() {
        config[k] = v.clone();
    }
    workflow(
        id,
        json!([node("gate", "core.approvalGate", config, json!({}))]),
        json!([]),
        json!([]),
    )
}

#[tokio::test]
async fn approvals_route_to_listed_principals_roles_and_groups_only() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_path(&dir);
    let scopes = ["approvals:respond", "runs:*", "workflows:write"];
    let (named_id, named) = mint(&config, "acme", &scopes);
    let (_, bystander) = mint(&config, "acme", &scopes);
    let controller = approver_with(&config, "--role", "controller");
    let finance = approver_with(&config, "--group", "finance");
    let h = host_with_config(&config).await;

    let (_, disc) = h.get("/.well-known/openwop").await;
    assert_eq!(
        disc["interrupt"]["approverRouting"],
        json!({"supported": true, "refKinds": ["group", "role"], "audience": false}),
        "{disc}"
    );

    let routing = json!({
        "approversList": [named_id],
        "approverRoleRefs": ["controller"],
        "approverGroupRefs": ["finance"],
    });
    let (status, body) = call(
        &h,
        &named,
        Method::PUT,
        "/v1/workflows/routed",
        Some(routed_gate("routed", routing.clone())),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    for (approver, by) in [
        (&named, "approversList"),
        (&controller, "approverRoleRefs"),
        (&finance, "approverGroupRefs"),
    ] {
        let run_id = create_run_as(&h, &named, "routed").await;
        let snap = waiting(&h, &named, &run_id).await;
        assert_eq!(
            snap["interrupt"]["payload"]["approverRoleRefs"],
            json!(["controller"]),
            "{snap}"
        );

        // A key with the scope but outside every ref is refused; so is the bare token.
        let (status, body) = resolve(&h, Some(&bystander), &run_id, "gate").await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        assert_envelope(&body, "forbidden");
        assert_eq!(
            body["details"]["reason"], "not_an_eligible_approver",
            "{body}"
        );
        assert_eq!(body["details"]["approverRoleRefs"], json!(["controller"]));
        let (status, body) = resolve_by_token(&h, &snap).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        waiting(&h, &named, &run_id).await;

        let (status, body) = resolve(&h, Some(approver), &run_id, "gate").await;
        assert_eq!(status, StatusCode::OK, "{by}: {body}");
        let done = finished(&h, &named, &run_id).await;
        assert_eq!(done["status"], "completed", "{by}: {done}");
    }
}
