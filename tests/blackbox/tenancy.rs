//! Tenants: two tenants' keys (minted with the CLI) on one host. Another tenant's run, webhook or
//! workflow is indistinguishable from an absent one (404, rest-endpoints.md "do not leak
//! existence"); idempotency keys never collide across tenants; the operator's fixtures are
//! visible to every tenant.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::harness::*;
use crate::scopes::{call, config_path, create_run_as, host_with_config_and, mint};

const NOOP: &str = "/v1/workflows/conformance-noop";

/// A one-node workflow whose node is `node_type`.
fn one_node(id: &str, node_type: &str) -> Value {
    workflow(
        id,
        json!([node("n", node_type, json!({}), json!({}))]),
        json!([]),
        json!([]),
    )
}

/// `PUT /v1/workflows/{id}` with `key`: a one-node definition of `node_type`.
async fn define(h: &Host, key: &str, id: &str, node_type: &str) -> (StatusCode, Value) {
    let path = format!("/v1/workflows/{id}");
    call(h, key, Method::PUT, &path, Some(one_node(id, node_type))).await
}

/// A host with keys holding `scopes` for the tenants `acme` and `globex` (the temp dir holding
/// the config must outlive the host).
async fn two_tenants(scopes: &[&str], extra: &[&str]) -> (tempfile::TempDir, Host, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let config = config_path(&dir);
    let (_, acme) = mint(&config, "acme", scopes);
    let (_, globex) = mint(&config, "globex", scopes);
    let h = host_with_config_and(&config, extra).await;
    (dir, h, acme, globex)
}

#[tokio::test]
async fn another_tenants_run_is_404_on_every_route() {
    let (_dir, h, acme, globex) = two_tenants(&["*"], &[]).await;

    let run_id = create_run_as(&h, &acme, "conformance-cancellable").await;
    let run = format!("/v1/runs/{run_id}");
    let (status, snap) = call(&h, &acme, Method::GET, &run, None).await;
    assert_eq!(status, StatusCode::OK, "{snap}");
    assert_eq!(snap["owner"]["tenant"], "acme");

    // The legacy key (tenant `default`) is just another tenant here.
    for key in [globex.as_str(), h.key.as_str()] {
        for (method, path) in [
            (Method::GET, run.clone()),
            (Method::GET, format!("{run}/events/poll")),
            (Method::GET, format!("{run}/events")),
            (Method::POST, format!("{run}/cancel")),
        ] {
            let body = (method == Method::POST).then(|| json!({}));
            let (status, resp) = call(&h, key, method.clone(), &path, body).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}: {resp}");
            assert_envelope(&resp, "not_found");
        }
    }
    // The foreign cancel did nothing; the owner can still cancel.
    let (_, snap) = call(&h, &acme, Method::GET, &run, None).await;
    assert!(
        !["cancelled", "cancelling"].contains(&snap["status"].as_str().unwrap()),
        "{snap}"
    );
    let (status, _) = call(
        &h,
        &acme,
        Method::POST,
        &format!("{run}/cancel"),
        Some(json!({})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);

    // Naming another tenant in the body is refused, never honoured.
    let body = json!({"workflowId": "conformance-noop", "tenantId": "acme"});
    let (status, resp) = call(&h, &globex, Method::POST, "/v1/runs", Some(body)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{resp}");
    assert_envelope(&resp, "tenant_membership_required");
}

#[tokio::test]
async fn idempotency_keys_and_webhooks_do_not_cross_tenants() {
    let scopes = ["runs:*", "webhooks:manage"];
    let (_dir, h, acme, globex) = two_tenants(&scopes, &["--webhook-allow-loopback"]).await;

    let mut run_ids = Vec::new();
    for key in [&acme, &globex] {
        let resp = h
            .client
            .post(h.url("/v1/runs"))
            .bearer_auth(key)
            .header("idempotency-key", "same-key-both-tenants")
            .json(&json!({"workflowId": "conformance-noop"}))
            .send()
            .await
            .unwrap();
        assert!(resp.headers().get("openwop-idempotent-replay").is_none());
        let (status, body) = read(resp).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        run_ids.push(body["runId"].as_str().unwrap().to_string());
    }
    assert_ne!(run_ids[0], run_ids[1], "each tenant got its own run");

    let (status, hook) = call(
        &h,
        &acme,
        Method::POST,
        "/v1/webhooks",
        Some(json!({"url": "http://127.0.0.1:9/hook", "events": ["run.failed"]})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{hook}");
    let id = hook["webhookId"].as_str().expect("webhookId").to_string();
    let path = format!("/v1/webhooks/{id}/dead-letters");
    let (status, resp) = call(&h, &globex, Method::GET, &path, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {resp}");
    let (status, resp) = call(&h, &acme, Method::GET, &path, None).await;
    assert_eq!(status, StatusCode::OK, "{path}: {resp}");
    let (status, resp) = call(
        &h,
        &globex,
        Method::DELETE,
        &format!("/v1/webhooks/{id}"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{resp}");
    // Still there for its owner.
    let (status, resp) = call(
        &h,
        &acme,
        Method::DELETE,
        &format!("/v1/webhooks/{id}"),
        None,
    )
    .await;
    assert!(status.is_success(), "{status} {resp}");
}

#[tokio::test]
async fn workflows_belong_to_the_registering_tenant_and_fixtures_to_all() {
    let (_dir, h, acme, globex) = two_tenants(&["*"], &[]).await;

    let (status, body) = define(&h, &acme, "private-wf", "core.noop").await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["shared"], false);

    // Invisible to globex: GET, list, and starting a run of it.
    let (status, resp) = call(&h, &globex, Method::GET, "/v1/workflows/private-wf", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{resp}");
    let (_, list) = call(&h, &globex, Method::GET, "/v1/workflows", None).await;
    let ids: Vec<&str> = list["workflows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["workflowId"].as_str().unwrap())
        .collect();
    assert!(
        !ids.contains(&"private-wf") && ids.contains(&"conformance-noop"),
        "{ids:?}"
    );
    let body = json!({"workflowId": "private-wf"});
    let (status, resp) = call(&h, &globex, Method::POST, "/v1/runs", Some(body)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{resp}");

    // globex registers its own definition under the same id: created (201), and each tenant
    // runs its own: the acme one completes, the globex one (a core.fail node) fails.
    let (status, body) = define(&h, &globex, "private-wf", "core.fail").await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let acme_run = create_run_as(&h, &acme, "private-wf").await;
    let globex_run = create_run_as(&h, &globex, "private-wf").await;
    let mut h2 = h;
    h2.key = acme.clone();
    let snap = h2.wait_terminal(&acme_run, Duration::from_secs(20)).await;
    assert_eq!(snap["status"], "completed", "{snap}");
    h2.key = globex.clone();
    let snap = h2.wait_terminal(&globex_run, Duration::from_secs(20)).await;
    assert_eq!(snap["status"], "failed", "{snap}");

    // Fixtures are shared: both tenants see them; a tenant's own definition of a
    // fixture id shadows it for that tenant only.
    let (_, fixture) = call(&h2, &acme, Method::GET, NOOP, None).await;
    assert_eq!(fixture["id"], "conformance-noop");
    let (status, body) = define(&h2, &acme, "conformance-noop", "core.fail").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, mine) = call(&h2, &acme, Method::GET, NOOP, None).await;
    assert_eq!(mine["nodes"][0]["typeId"], "core.fail");
    let (_, theirs) = call(&h2, &globex, Method::GET, NOOP, None).await;
    assert_eq!(theirs, fixture, "globex still sees the operator's fixture");
}
