//! Webhooks: registration validation, SSRF guard, signed delivery, retries from the durable
//! outbox, dead letters, and delivery that never holds up runs.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode as AxStatus};
use hmac::{Hmac, Mac};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sha2::Sha256;

use crate::harness::*;

// ── a loopback receiver ─────────────────────────────────────────────────────────────────────

#[derive(Clone, Debug)]
pub struct Hit {
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Hit {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("delivery body is JSON")
    }
}

#[derive(Default)]
struct Behaviour {
    /// Statuses for the next requests, then `fallback`.
    script: VecDeque<u16>,
    fallback: u16,
    delay: Duration,
}

#[derive(Clone)]
struct RecvState {
    hits: Arc<Mutex<Vec<Hit>>>,
    behaviour: Arc<Mutex<Behaviour>>,
}

pub struct Receiver {
    pub addr: SocketAddr,
    hits: Arc<Mutex<Vec<Hit>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    /// Answers `script` in order, then `fallback`, each after `delay`.
    pub async fn start(script: &[u16], fallback: u16, delay: Duration) -> Receiver {
        Receiver::start_on("127.0.0.1:0".parse().unwrap(), script, fallback, delay).await
    }

    pub async fn start_on(
        addr: SocketAddr,
        script: &[u16],
        fallback: u16,
        delay: Duration,
    ) -> Receiver {
        let st = RecvState {
            hits: Arc::new(Mutex::new(Vec::new())),
            behaviour: Arc::new(Mutex::new(Behaviour {
                script: script.iter().copied().collect(),
                fallback,
                delay,
            })),
        };
        // Re-binding a port just released by an aborted receiver can take a moment.
        let deadline = Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => break l,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("bind receiver on {addr}: {e}"),
            }
        };
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new().fallback(receive).with_state(st.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver {
            addr,
            hits: st.hits,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    pub fn hits(&self) -> Vec<Hit> {
        self.hits.lock().unwrap().clone()
    }

    /// Wait until `pred` holds for the hits so far.
    pub async fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&[Hit]) -> bool,
    ) -> Vec<Hit> {
        let deadline = Instant::now() + timeout;
        loop {
            let hits = self.hits();
            if pred(&hits) {
                return hits;
            }
            assert!(
                Instant::now() < deadline,
                "receiver: timed out waiting for {what}; got {} hits",
                hits.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn receive(State(st): State<RecvState>, headers: HeaderMap, body: Bytes) -> AxStatus {
    let (status, delay) = {
        let mut b = st.behaviour.lock().unwrap();
        let s = b.script.pop_front().unwrap_or(b.fallback);
        (s, b.delay)
    };
    st.hits.lock().unwrap().push(Hit { headers, body });
    tokio::time::sleep(delay).await;
    AxStatus::from_u16(status).unwrap()
}

/// A loopback port with nothing listening on it.
async fn closed_port() -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    port
}

// ── helpers ─────────────────────────────────────────────────────────────────────────────────

pub fn loopback_host(extra: &[&str]) -> Options {
    let mut args = vec!["--webhook-allow-loopback".to_string()];
    args.extend(extra.iter().map(|s| s.to_string()));
    Options {
        extra_args: args,
        ..Options::default()
    }
}

pub async fn register(h: &Host, url: &str, events: &[&str]) -> Value {
    let (status, body) = h
        .post("/v1/webhooks", json!({"url": url, "events": events}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "register {url}: {body}");
    body
}

fn hmac_hex(secret: &str, timestamp: &str, body: &[u8]) -> String {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes()).unwrap();
    m.update(timestamp.as_bytes());
    m.update(b".");
    m.update(body);
    hex::encode(m.finalize().into_bytes())
}

/// The receiver-side recipe from spec/v1/webhooks.md, written independently of the host.
fn verify(hit: &Hit, secret: &str) -> bool {
    let ts = hit.header("x-openwop-timestamp");
    let Ok(t) = ts.parse::<i64>() else {
        return false;
    };
    if (chrono::Utc::now().timestamp() - t).abs() > 300 {
        return false;
    }
    let Some(sig) = hit.header("x-openwop-signature").strip_prefix("sha256=") else {
        return false;
    };
    sig == hmac_hex(secret, ts, &hit.body)
}

// ── registration and validation ─────────────────────────────────────────────────────────────

#[tokio::test]
async fn discovery_advertises_webhooks() {
    let h = Host::start().await;
    let doc = h.discovery().await;
    assert_eq!(doc["webhooks"]["supported"], true);
    assert_eq!(doc["webhooks"]["signatureAlgorithms"], json!(["v1"]));
}

#[tokio::test]
async fn register_validates_the_body() {
    let h = Host::start().await;
    let url = "https://93.184.215.14/hook";
    let cases = [
        // The conformance probe: no url at all.
        (json!({"eventTypes": ["run.completed"]}), "validation_error"),
        (
            json!({"url": "", "events": ["run.completed"]}),
            "validation_error",
        ),
        (
            json!({"url": 42, "events": ["run.completed"]}),
            "validation_error",
        ),
        (
            json!({"url": "not a url", "events": ["run.completed"]}),
            "validation_error",
        ),
        (json!({"url": url}), "validation_error"),
        (json!({"url": url, "events": []}), "validation_error"),
        (
            json!({"url": url, "events": "run.completed"}),
            "validation_error",
        ),
        (json!({"url": url, "events": [1, 2]}), "validation_error"),
        (
            json!({"url": url, "events": ["run.completed"], "tags": [true]}),
            "validation_error",
        ),
        (
            json!({"url": url, "events": ["run.completed"], "secret": "mine"}),
            "validation_error",
        ),
        (json!(["not", "an", "object"]), "validation_error"),
    ];
    for (body, code) in cases {
        let (status, resp) = h.post("/v1/webhooks", body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {resp}");
        assert_envelope(&resp, code);
    }
    let (status, resp) = read(
        h.req(Method::POST, "/v1/webhooks")
            .header("content-type", "application/json")
            .body("{nope")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_envelope(&resp, "validation_error");

    let (status, resp) = h
        .post(
            "/v1/webhooks",
            json!({"url": url, "events": ["run.completed"], "tenantId": "someone-else"}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_envelope(&resp, "tenant_membership_required");

    let (status, resp) = read(
        h.anon(Method::POST, "/v1/webhooks")
            .json(&json!({"url": url, "events": ["run.completed"]}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_envelope(&resp, "unauthenticated");
}

#[tokio::test]
async fn register_returns_secret_once_and_delete_semantics() {
    let h = Host::start().await;
    // A public IP literal: accepted without any network traffic (no run ever emits events here).
    let (status, body) =
        h.post("/v1/webhooks", json!({"url": "https://93.184.215.14/hook", "eventTypes": ["run.completed"], "tenantId": "default"})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let id = body["webhookId"].as_str().unwrap().to_string();
    assert!(id.starts_with("wh_"));
    assert_eq!(body["subscriptionId"], json!(id));
    let secret = body["secret"].as_str().unwrap();
    assert!(secret.len() >= 64, "at least 32 random bytes");
    use sha2::Digest;
    assert_eq!(
        body["secretFingerprint"],
        json!(hex::encode(Sha256::digest(secret.as_bytes()))[..8].to_string())
    );
    assert_eq!(body["events"], json!(["run.completed"]));
    assert_eq!(body["eventTypes"], json!(["run.completed"]));
    assert_eq!(body["signatureAlgorithm"], "v1");
    assert_eq!(body["tenantId"], "default");
    assert!(body["createdAt"].is_string());

    // Foreign tenant is refused before the lookup (no existence leak), also for unknown ids.
    for target in [id.as_str(), "wh_unknown"] {
        let (status, resp) = read(
            h.req(
                Method::DELETE,
                &format!("/v1/webhooks/{target}?tenantId=other"),
            )
            .send()
            .await
            .unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{resp}");
        assert_envelope(&resp, "tenant_membership_required");
    }
    let (status, resp) = read(
        h.req(Method::DELETE, "/v1/webhooks/wh_unknown")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_envelope(&resp, "subscription_not_found");

    let (status, _) = read(
        h.req(
            Method::DELETE,
            &format!("/v1/webhooks/{id}?tenantId=default"),
        )
        .send()
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, resp) = read(
        h.req(Method::DELETE, &format!("/v1/webhooks/{id}"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "a deleted subscription is gone"
    );
    assert_envelope(&resp, "subscription_not_found");
}

#[tokio::test]
async fn idempotency_key_replays_registration() {
    let h = Host::start().await;
    let body = json!({"url": "https://93.184.215.14/hook", "events": ["run.completed"]});
    let send = |key: &'static str, body: Value| {
        let req = h
            .req(Method::POST, "/v1/webhooks")
            .header("idempotency-key", key)
            .json(&body);
        async move { req.send().await.unwrap() }
    };
    let first = send("wh-key-1", body.clone()).await;
    assert_eq!(first.status(), StatusCode::CREATED);
    assert!(first.headers().get("openwop-idempotent-replay").is_none());
    let (_, first) = read(first).await;
    let again = send("wh-key-1", body.clone()).await;
    assert_eq!(again.status(), StatusCode::CREATED);
    assert_eq!(
        again
            .headers()
            .get("openwop-idempotent-replay")
            .and_then(|v| v.to_str().ok()),
        Some("true")
    );
    let (_, again) = read(again).await;
    assert_eq!(
        again, first,
        "same subscription, same secret, no second registration"
    );

    let (status, resp) = read(
        send(
            "wh-key-1",
            json!({"url": "https://93.184.215.14/other", "events": ["run.completed"]}),
        )
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_envelope(&resp, "idempotency_key_mismatch");
    assert!(resp.get("webhookId").is_none() && resp["details"].get("webhookId").is_none());

    let (_, other) = read(send("wh-key-2", body).await).await;
    assert_ne!(other["webhookId"], first["webhookId"]);
    // Rejected requests are not cached: fixing the body under the same key works.
    let (status, _) = read(
        send(
            "wh-key-3",
            json!({"url": "https://10.0.0.1/", "events": ["run.completed"]}),
        )
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = read(
        send(
            "wh-key-3",
            json!({"url": "https://93.184.215.14/x", "events": ["run.completed"]}),
        )
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
}

#[tokio::test]
async fn ssrf_guard_rejects_non_public_and_non_https_urls() {
    let h = Host::start().await;
    let cases = [
        // The conformance suite's probe.
        ("http://127.0.0.1:65535/", "loopback"),
        ("https://127.0.0.1/hook", "loopback"),
        ("https://localhost:8443/hook", "loopback"),
        ("https://[::1]/hook", "loopback"),
        ("https://10.0.0.7/hook", "private"),
        ("https://172.20.1.1/hook", "private"),
        ("https://192.168.0.10/hook", "private"),
        (
            "https://169.254.169.254/computeMetadata/v1/",
            "metadata_host",
        ),
        ("https://169.254.10.10/", "link_local"),
        ("https://metadata.google.internal/", "metadata_host"),
        ("https://[fd12::1]/hook", "unique_local"),
        ("https://[fe80::1]/hook", "link_local"),
        ("https://0.0.0.0/hook", "unspecified"),
        ("https://[::ffff:192.168.1.1]/hook", "private"),
        ("http://93.184.215.14/hook", "scheme_not_https"),
        ("ftp://93.184.215.14/hook", "unsupported_scheme"),
    ];
    for (url, reason) in cases {
        let (status, resp) = h
            .post(
                "/v1/webhooks",
                json!({"url": url, "events": ["run.completed"]}),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{url}: {resp}");
        assert_envelope(&resp, "webhook_url_rejected");
        assert_eq!(resp["details"]["reason"], reason, "{url}");
    }
}

#[tokio::test]
async fn loopback_flag_admits_loopback_only() {
    let h = Host::start_with(loopback_host(&[])).await;
    let (status, _) = h
        .post(
            "/v1/webhooks",
            json!({"url": "http://127.0.0.1:9/hook", "events": ["run.completed"]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    for url in [
        "https://10.0.0.1/",
        "http://93.184.215.14/",
        "https://169.254.169.254/",
    ] {
        let (status, resp) = h
            .post(
                "/v1/webhooks",
                json!({"url": url, "events": ["run.completed"]}),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{url}");
        assert_envelope(&resp, "webhook_url_rejected");
    }
}

// ── delivery ────────────────────────────────────────────────────────────────────────────────

#[tokio::test]
async fn delivers_signed_events_per_spec() {
    let h = Host::start_with(loopback_host(&[])).await;
    let rx = Receiver::start(&[], 200, Duration::ZERO).await;
    let sub = register(&h, &rx.url(), &["run.started", "run.completed"]).await;
    let other = register(&h, &rx.url(), &["run.completed"]).await;
    let (id, secret) = (
        sub["webhookId"].as_str().unwrap(),
        sub["secret"].as_str().unwrap(),
    );
    let other_secret = other["secret"].as_str().unwrap();

    let run_id = h.create_run("conformance-noop", json!({})).await;
    h.wait_terminal(&run_id, Duration::from_secs(5)).await;
    let hits = rx
        .wait_for("3 deliveries", Duration::from_secs(10), |h| h.len() >= 3)
        .await;
    let mine: Vec<&Hit> = hits
        .iter()
        .filter(|x| x.header("x-openwop-webhook-id") == id)
        .collect();
    assert_eq!(
        mine.len(),
        2,
        "run.started + run.completed for the first subscription"
    );
    let events = h.events(&run_id).await;

    for hit in &mine {
        assert!(
            verify(hit, secret),
            "signature verifies with the subscription secret"
        );
        assert!(
            !verify(hit, other_secret),
            "and not with another subscription's secret"
        );
        let mut tampered = (*hit).clone();
        tampered.body = Bytes::from([hit.body.as_ref(), b" "].concat());
        assert!(
            !verify(&tampered, secret),
            "a modified body fails verification"
        );

        assert!(hit.header("x-openwop-signature").starts_with("sha256="));
        assert_eq!(hit.header("x-openwop-signature-algorithm"), "v1");
        assert_eq!(hit.header("content-type"), "application/json");
        assert!(hit
            .header("user-agent")
            .starts_with("openwop-webhook-dispatcher/"));
        // The RFC 0165 family carries identical values.
        for name in [
            "webhook-id",
            "event-type",
            "timestamp",
            "signature",
            "signature-algorithm",
        ] {
            assert_eq!(
                hit.header(&format!("openwop-{name}")),
                hit.header(&format!("x-openwop-{name}")),
                "{name}"
            );
        }
        let body = hit.json();
        assert_eq!(body["runId"], json!(run_id));
        assert_eq!(body["workspaceId"], "default");
        assert_eq!(body["type"], json!(hit.header("x-openwop-event-type")));
        let seq = body["sequence"].as_i64().unwrap();
        assert_eq!(
            body["event"], events[seq as usize],
            "the event is the verbatim RunEventDoc"
        );
        assert_eq!(body["event"]["type"], body["type"]);
    }
    let mut types: Vec<&str> = mine
        .iter()
        .map(|x| x.header("x-openwop-event-type"))
        .collect();
    types.sort();
    assert_eq!(types, ["run.completed", "run.started"]);
    assert!(hits
        .iter()
        .filter(|x| x.header("x-openwop-webhook-id") == other["webhookId"].as_str().unwrap())
        .all(|x| verify(x, other_secret) && x.header("x-openwop-event-type") == "run.completed"));
}

#[tokio::test]
async fn tag_filter_selects_runs_by_their_tags() {
    let h = Host::start_with(loopback_host(&[])).await;
    let rx = Receiver::start(&[], 200, Duration::ZERO).await;
    let (status, sub) = h
        .post(
            "/v1/webhooks",
            json!({"url": rx.url(), "events": ["run.completed"], "tags": ["prod"]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{sub}");
    assert_eq!(sub["tags"], json!(["prod"]));
    let (_, untagged) = h
        .post(
            "/v1/runs",
            json!({"workflowId": "conformance-noop", "tags": ["dev"]}),
        )
        .await;
    let (_, tagged) = h
        .post(
            "/v1/runs",
            json!({"workflowId": "conformance-noop", "tags": ["dev", "prod"]}),
        )
        .await;
    for r in [&untagged, &tagged] {
        h.wait_terminal(r["runId"].as_str().unwrap(), Duration::from_secs(5))
            .await;
    }
    rx.wait_for("the tagged run's delivery", Duration::from_secs(10), |h| {
        !h.is_empty()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let hits = rx.hits();
    assert_eq!(hits.len(), 1, "only the run tagged 'prod' is delivered");
    assert_eq!(hits[0].json()["runId"], tagged["runId"]);
}

#[tokio::test]
async fn failed_deliveries_are_retried_with_the_same_body() {
    let h = Host::start_with(loopback_host(&[
        "--webhook-retry-base-ms",
        "50",
        "--webhook-max-attempts",
        "5",
    ]))
    .await;
    // 500, then a redirect (never followed: a failure too), then success.
    let rx = Receiver::start(&[500, 302], 204, Duration::ZERO).await;
    let sub = register(&h, &rx.url(), &["run.completed"]).await;
    let run_id = h.create_run("conformance-noop", json!({})).await;
    let hits = rx
        .wait_for("3 attempts", Duration::from_secs(10), |h| h.len() >= 3)
        .await;
    assert!(
        hits.iter().all(|x| x.body == hits[0].body),
        "every retry sends the same bytes"
    );
    assert!(
        hits.iter()
            .all(|x| verify(x, sub["secret"].as_str().unwrap())),
        "every attempt is signed"
    );
    assert_eq!(hits[0].json()["runId"], json!(run_id));
    // Delivered on the third attempt: no fourth one, no dead letter.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(rx.hits().len(), 3);
    let (status, dl) = h
        .get(&format!(
            "/v1/webhooks/{}/dead-letters",
            sub["webhookId"].as_str().unwrap()
        ))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(dl["deliveries"], json!([]));
}

#[tokio::test]
async fn unreachable_and_slow_receivers_dead_letter_without_slowing_runs() {
    let h = Host::start_with(loopback_host(&[
        "--webhook-retry-base-ms",
        "20",
        "--webhook-max-attempts",
        "3",
        "--webhook-timeout-ms",
        "300",
    ]))
    .await;
    let down = format!("http://127.0.0.1:{}/hook", closed_port().await);
    let slow = Receiver::start(&[], 200, Duration::from_secs(3)).await;
    let dead_sub = register(&h, &down, &["run.started", "run.completed"]).await;
    let slow_sub = register(&h, &slow.url(), &["run.completed"]).await;

    // Runs finish on their own schedule while every delivery fails.
    let started = Instant::now();
    let mut runs = Vec::new();
    for _ in 0..5 {
        runs.push(h.create_run("conformance-noop", json!({})).await);
    }
    for r in &runs {
        assert_eq!(
            h.wait_terminal(r, Duration::from_secs(5)).await["status"],
            "completed"
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "runs were held up by webhook delivery"
    );

    let dead_id = dead_sub["webhookId"].as_str().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let letters = loop {
        let (status, body) = h
            .get(&format!("/v1/webhooks/{dead_id}/dead-letters?limit=500"))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let d = body["deliveries"].as_array().unwrap().clone();
        if d.len() == 10 {
            break d;
        }
        assert!(
            Instant::now() < deadline,
            "expected 10 dead letters (5 runs x 2 events), got {}",
            d.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for d in &letters {
        assert_eq!(d["webhookId"], json!(dead_id));
        assert_eq!(d["attempts"], 3);
        assert_eq!(d["reason"], "retries_exhausted");
        assert!(runs.contains(&d["runId"].as_str().unwrap().to_string()));
        assert!(["run.started", "run.completed"].contains(&d["eventType"].as_str().unwrap()));
        assert!(d["lastStatus"].is_null(), "nothing answered");
        assert!(d["deadLetteredAt"].as_str().unwrap() < d["expiresAt"].as_str().unwrap());
    }
    // Newest first, and the cursor pages without overlap.
    let (_, p1) = h
        .get(&format!("/v1/webhooks/{dead_id}/dead-letters?limit=4"))
        .await;
    let cursor = p1["nextCursor"].as_str().unwrap();
    let (_, p2) = h
        .get(&format!(
            "/v1/webhooks/{dead_id}/dead-letters?limit=10&cursor={cursor}"
        ))
        .await;
    let ids = |p: &Value| {
        p["deliveries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["deliveryId"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    let (a, b) = (ids(&p1), ids(&p2));
    assert_eq!(a.len() + b.len(), 10);
    assert!(a.iter().all(|x| !b.contains(x)));
    assert!(p2["nextCursor"].is_null());

    // The slow receiver got each attempt but never answered within the timeout.
    let slow_id = slow_sub["webhookId"].as_str().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, body) = h
            .get(&format!("/v1/webhooks/{slow_id}/dead-letters?limit=500"))
            .await;
        if body["deliveries"].as_array().unwrap().len() == 5 {
            assert!(
                body["deliveries"][0]["lastError"]
                    .as_str()
                    .unwrap()
                    .contains("timeout"),
                "{body}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "slow receiver deliveries were not dead-lettered: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(slow.hits().len() >= 5);

    let (status, resp) = h.get("/v1/webhooks/wh_nope/dead-letters").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_envelope(&resp, "subscription_not_found");
}

#[tokio::test]
async fn deleting_a_subscription_stops_its_deliveries() {
    let h = Host::start_with(loopback_host(&[
        "--webhook-retry-base-ms",
        "200",
        "--webhook-max-attempts",
        "50",
    ]))
    .await;
    let rx = Receiver::start(&[], 503, Duration::ZERO).await;
    let sub = register(&h, &rx.url(), &["run.completed"]).await;
    let id = sub["webhookId"].as_str().unwrap();
    h.create_run("conformance-noop", json!({})).await;
    rx.wait_for("a first attempt", Duration::from_secs(10), |h| {
        !h.is_empty()
    })
    .await;
    let (status, _) = read(
        h.req(Method::DELETE, &format!("/v1/webhooks/{id}"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    // An attempt already in flight may land; nothing after that.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let seen = rx.hits().len();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        rx.hits().len(),
        seen,
        "retries continued after the subscription was deleted"
    );
}

#[tokio::test]
async fn pending_deliveries_survive_a_crash() {
    let tmp = tempfile::tempdir().unwrap();
    let mut opts = loopback_host(&[
        "--webhook-retry-base-ms",
        "300",
        "--webhook-max-attempts",
        "100",
    ]);
    opts.data_dir = Some(tmp.path().to_path_buf());
    let mut h = Host::start_with(opts.clone()).await;
    let down = Receiver::start(&[], 503, Duration::ZERO).await;
    let addr = down.addr;
    let sub = register(&h, &format!("http://{addr}/hook"), &["run.completed"]).await;
    let run_id = h.create_run("conformance-noop", json!({})).await;
    h.wait_terminal(&run_id, Duration::from_secs(5)).await;
    down.wait_for("a failed attempt", Duration::from_secs(10), |h| {
        !h.is_empty()
    })
    .await;

    h.kill9();
    drop(down);
    let up = Receiver::start_on(addr, &[], 200, Duration::ZERO).await;
    let h2 = Host::start_with(opts).await;
    let hits = up
        .wait_for("redelivery after restart", Duration::from_secs(15), |h| {
            !h.is_empty()
        })
        .await;
    assert!(verify(&hits[0], sub["secret"].as_str().unwrap()));
    assert_eq!(hits[0].json()["runId"], json!(run_id));
    assert_eq!(hits[0].json()["type"], "run.completed");
    drop(h2);
}
