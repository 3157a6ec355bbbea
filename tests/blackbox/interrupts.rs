//! Interrupts: approval / clarification / external-event gates, both resolve surfaces, the
//! signed-token matrix, event order and causation, cancellation, timeouts, restart survival.

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::harness::*;

const T: Duration = Duration::from_secs(10);
const EXTERNAL: &str = "conformance-interrupt-external-event";
const MATCHING: fn() -> Value = || json!({"resumeValue": {"orderId": "fixture-order-1", "status": "completed", "externalReference": "x"}});

/// POST without a bearer (the token is the credential).
async fn anon_post(h: &Host, path: &str, body: Value) -> (StatusCode, Value) {
    read(h.anon(Method::POST, path).json(&body).send().await.unwrap()).await
}

async fn anon_get(h: &Host, path: &str) -> (StatusCode, Value) {
    read(h.anon(Method::GET, path).send().await.unwrap()).await
}

/// Start a run and wait until it is parked with `status`; returns (runId, snapshot).
async fn parked(h: &Host, workflow: &str, status: &str) -> (String, Value) {
    let id = h.create_run(workflow, json!({})).await;
    let snap = h.wait_status(&id, &[status], T).await;
    (id, snap)
}

fn token_of(snap: &Value) -> String {
    let t = snap["interrupt"]["interruptToken"]
        .as_str()
        .unwrap_or_else(|| panic!("no token on {snap}"))
        .to_string();
    assert_eq!(
        snap["interrupt"]["callbackUrl"],
        json!(format!("/v1/interrupts/{t}"))
    );
    t
}

fn find<'a>(events: &'a [Value], ty: &str) -> &'a Value {
    events
        .iter()
        .find(|e| e["type"] == ty)
        .unwrap_or_else(|| panic!("no {ty} in {:?}", Host::event_types(events)))
}

fn caused_by(events: &[Value], ty: &str, cause: &str) {
    assert_eq!(
        find(events, ty)["causationId"],
        find(events, cause)["eventId"],
        "{ty} must be caused by {cause}"
    );
}

#[tokio::test]
async fn approval_gate_parks_validates_and_resumes_with_ordered_causal_events() {
    let h = Host::start().await;
    let (run, snap) = parked(&h, "conformance-approval", "waiting-approval").await;
    assert_eq!(snap["currentNodeId"], "gate");
    assert_eq!(snap["interrupt"]["kind"], "approval");
    assert_eq!(snap["interrupt"]["nodeId"], "gate");
    assert_eq!(
        snap["interrupt"]["payload"]["actions"],
        json!(["accept", "reject"])
    );
    token_of(&snap);

    let path = format!("/v1/runs/{run}/interrupts/gate");
    // An action the gate does not offer: 400, and the run keeps waiting.
    let (s, b) = h
        .post(&path, json!({"resumeValue": {"action": "maybe"}}))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
    assert_envelope(&b, "validation_error");
    assert_eq!(h.snapshot(&run).await["status"], "waiting-approval");
    // No bearer: 401 before anything else.
    let (s, _) = anon_post(&h, &path, json!({"resumeValue": {"action": "accept"}})).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    // Unknown node / run.
    let (s, b) = h.accept(&run, "nope").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_envelope(&b, "interrupt_not_found");
    let (s, _) = h
        .post(
            "/v1/runs/run-nope/interrupts/gate",
            json!({"resumeValue": {"action": "accept"}}),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    let (s, b) = h
        .post(
            &path,
            json!({"resumeValue": {"action": "accept", "decidedBy": "someone-else"}}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["interrupt"]["outcome"], "accepted");
    assert_eq!(b["runId"], json!(run));
    let done = h.wait_terminal(&run, T).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert!(done.get("interrupt").is_none());

    // Replay after resolution: 409.
    let (s, b) = h
        .post(&path, json!({"resumeValue": {"action": "accept"}}))
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert_envelope(&b, "interrupt_already_resolved");

    let events = h.events(&run).await;
    assert_event_log(&run, &events);
    assert_eq!(
        Host::event_types(&events),
        [
            "run.started",
            "node.started",
            "interrupt.requested",
            "approval.requested",
            "node.suspended",
            "interrupt.resolved",
            "approval.received",
            "node.resumed",
            "node.completed",
            "run.completed"
        ]
    );
    caused_by(&events, "interrupt.requested", "node.started");
    caused_by(&events, "approval.requested", "interrupt.requested");
    caused_by(&events, "node.suspended", "interrupt.requested");
    caused_by(&events, "interrupt.resolved", "interrupt.requested");
    caused_by(&events, "approval.received", "interrupt.resolved");
    caused_by(&events, "node.resumed", "interrupt.resolved");
    caused_by(&events, "node.completed", "node.resumed");
    let requested = &find(&events, "interrupt.requested")["payload"];
    for k in [
        "runId",
        "nodeId",
        "interruptId",
        "kind",
        "key",
        "data",
        "requestedAt",
    ] {
        assert!(
            requested.get(k).is_some(),
            "interrupt.requested.{k}: {requested}"
        );
    }
    assert_eq!(requested["key"], json!(format!("{run}:gate:1")));
    // decidedBy is the authenticated principal, not what the client claimed.
    let received = &find(&events, "approval.received")["payload"];
    assert_eq!(received["action"], "accept");
    let decided_by = received["decidedBy"].as_str().unwrap();
    assert!(decided_by.starts_with("key-"), "{decided_by}");
    assert_eq!(
        find(&events, "interrupt.resolved")["payload"]["resolvedBy"],
        json!(decided_by)
    );
    // The resolution is the node's output.
    let out = &find(&events, "node.completed")["payload"]["outputs"];
    assert_eq!(out["action"], "accept");
    assert_eq!(out["decidedBy"], json!(decided_by));
    // Tokens are credentials: never in the event log (which webhooks also receive).
    let log = serde_json::to_string(&events).unwrap();
    assert!(!log.contains(&token_of(&snap)));

    // The resolution is in the audit chain with the decision and the principal.
    let (s, v) = h.get("/v1/audit/verify").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["chainValid"], true);
    let mut db = sqlx::SqliteConnection::connect_lazy_db(&h).await;
    let rows: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT actor, target, details FROM audit_log WHERE action = 'interrupt.resolve'",
    )
    .fetch_all(&mut db)
    .await
    .unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].0, decided_by);
    assert_eq!(rows[0].1, run);
    let details: Value = serde_json::from_str(&rows[0].2).unwrap();
    assert_eq!(details["action"], "accept");
    assert_eq!(details["via"], "run");
}

/// Open the host's SQLite database (read-only use in assertions).
trait ConnectDb {
    async fn connect_lazy_db(h: &Host) -> sqlx::SqliteConnection;
}
impl ConnectDb for sqlx::SqliteConnection {
    async fn connect_lazy_db(h: &Host) -> sqlx::SqliteConnection {
        use sqlx::Connection;
        let path = h.data_dir.join("wopbox.db");
        sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
            .await
            .unwrap()
    }
}

#[tokio::test]
async fn rejection_fails_the_run_and_the_resolution_feeds_downstream_nodes() {
    let h = Host::start().await;
    let def = workflow(
        "gate-then-echo",
        json!([
            node(
                "gate",
                "core.approvalGate",
                json!({"title": "ship?", "actions": ["accept", "reject", "refine"]}),
                json!({})
            ),
            node(
                "echo",
                "core.identity",
                json!({}),
                json!({
                    "action": {"type": "connection", "nodeId": "gate", "outputKey": "action"},
                    "feedback": {"type": "connection", "nodeId": "gate", "outputKey": "refineFeedback"}
                })
            ),
        ]),
        json!([edge("e1", "gate", "echo")]),
        json!([]),
    );
    h.register(def).await;

    let (run, _) = parked(&h, "gate-then-echo", "waiting-approval").await;
    let (s, b) = h
        .post(
            &format!("/v1/runs/{run}/interrupts/gate"),
            json!({"resumeValue": {"action": "refine", "feedback": "shorter"}}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let done = h.wait_terminal(&run, T).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["outputs"]["action"], "refine");
    assert_eq!(done["outputs"]["feedback"]["text"], "shorter");

    let (run, _) = parked(&h, "gate-then-echo", "waiting-approval").await;
    let (s, b) = h
        .post(
            &format!("/v1/runs/{run}/interrupts/gate"),
            json!({"resumeValue": {"action": "reject"}}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["interrupt"]["outcome"], "rejected");
    let done = h.wait_terminal(&run, T).await;
    assert_eq!(done["status"], "failed");
    assert_eq!(done["error"]["code"], "interrupt_rejected");
    let events = h.events(&run).await;
    assert_event_log(&run, &events);
    caused_by(&events, "node.failed", "node.resumed");
    assert!(!Host::event_types(&events).contains(&"node.completed".to_string()));

    // Unsupported configs are refused at registration, not at run time.
    for bad in [
        json!({"actions": ["accept", "launch"]}),
        json!({"actions": []}),
        json!({"requiredApprovals": 0}),
        json!({"requiredApprovals": 3, "actions": ["accept", "edit"]}),
        json!({"rejectionPolicy": "loudest"}),
        json!({"timeoutMs": -5}),
    ] {
        let def = workflow(
            "bad-gate",
            json!([node("g", "core.approvalGate", bad.clone(), json!({}))]),
            json!([]),
            json!([]),
        );
        let (s, b) = h.post("/v1/workflows", def).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad} -> {b}");
        assert_envelope(&b, "validation_error");
    }
}

#[tokio::test]
async fn clarification_gate_accepts_both_answer_shapes() {
    let h = Host::start().await;
    for answers in [
        json!({"q1": "blue"}),
        json!([{"id": "q1", "answer": "blue"}]),
    ] {
        let (run, snap) = parked(&h, "conformance-clarification", "waiting-input").await;
        assert_eq!(snap["currentNodeId"], "ask");
        assert_eq!(snap["interrupt"]["kind"], "clarification");
        let path = format!("/v1/runs/{run}/interrupts/ask");
        for bad in [
            json!({}),
            json!({"answers": {}}),
            json!({"answers": {"q1": "x", "q2": "y"}}),
            json!({"answers": "blue"}),
        ] {
            let (s, b) = h.post(&path, json!({"resumeValue": bad})).await;
            assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {b}");
            assert_envelope(&b, "validation_error");
        }
        assert_eq!(h.snapshot(&run).await["status"], "waiting-input");
        let (s, b) = h
            .post(&path, json!({"resumeValue": {"answers": answers}}))
            .await;
        assert_eq!(s, StatusCode::OK, "{b}");
        let done = h.wait_terminal(&run, T).await;
        assert_eq!(done["status"], "completed", "{done}");
        assert_eq!(done["outputs"]["answers"], json!({"q1": "blue"}));
        let events = h.events(&run).await;
        assert_event_log(&run, &events);
        assert_eq!(
            Host::event_types(&events),
            [
                "run.started",
                "node.started",
                "interrupt.requested",
                "clarification.requested",
                "node.suspended",
                "interrupt.resolved",
                "clarification.resolved",
                "node.resumed",
                "node.completed",
                "run.completed"
            ]
        );
        caused_by(&events, "clarification.resolved", "interrupt.resolved");
        assert_eq!(
            find(&events, "clarification.requested")["payload"]["questions"][0]["id"],
            "q1"
        );
    }
}

/// Re-sign a token's payload with a different runId but keep the original MAC.
fn tamper(token: &str) -> String {
    let (p, mac) = token.split_once('.').unwrap();
    let mut claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(p).unwrap()).unwrap();
    claims["runId"] = json!("run-other");
    format!(
        "{}.{mac}",
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap())
    )
}

#[tokio::test]
async fn token_matrix() {
    let h = Host::start().await;
    let (run, snap) = parked(&h, EXTERNAL, "waiting-external").await;
    assert_eq!(snap["currentNodeId"], "wait-for-external");
    let token = token_of(&snap);
    let inspect = snap["interrupt"]["inspectToken"]
        .as_str()
        .unwrap()
        .to_string();
    let tok = |t: &str| format!("/v1/interrupts/{t}");

    // Malformed: 400; well-formed unknown, forged, cross-run: 404 — on GET and POST.
    let (s, b) = anon_get(&h, &tok("!!!not-a-valid-token!!!")).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_envelope(&b, "validation_error");
    let unknown = format!("tok_{}", URL_SAFE_NO_PAD.encode([7u8; 32]));
    let mut mac_flipped = token.clone();
    let last = mac_flipped.pop().unwrap();
    mac_flipped.push(if last == '0' { '1' } else { '0' });
    for t in [unknown.as_str(), &tamper(&token), &mac_flipped, "a.b", "x"] {
        let (s, b) = anon_get(&h, &tok(t)).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "GET {t}: {b}");
        assert_envelope(&b, "interrupt_not_found");
        let (s, b) = anon_post(&h, &tok(t), MATCHING()).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "POST {t}: {b}");
        assert_envelope(&b, "interrupt_not_found");
    }
    assert_eq!(h.snapshot(&run).await["status"], "waiting-external");

    // Inspect with either token, no bearer needed.
    for t in [&token, &inspect] {
        let (s, b) = anon_get(&h, &tok(t)).await;
        assert_eq!(s, StatusCode::OK, "{b}");
        assert_eq!(b["runId"], json!(run));
        assert_eq!(b["kind"], "external-event");
        assert_eq!(b["data"]["correlation"]["orderId"], "fixture-order-1");
        assert!(b["expiresAt"].is_string() && b["requestedAt"].is_string());
    }
    // An inspect-only token cannot resolve.
    let (s, b) = anon_post(&h, &tok(&inspect), MATCHING()).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert_envelope(&b, "forbidden");
    // Correlation mismatch: 422 and the run keeps waiting.
    let (s, b) = anon_post(
        &h,
        &tok(&token),
        json!({"resumeValue": {"orderId": "different-order", "status": "completed"}}),
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
    assert_envelope(&b, "correlation_mismatch");
    assert_eq!(b["details"]["fields"], json!(["orderId"]));
    assert_eq!(h.snapshot(&run).await["status"], "waiting-external");

    // Matching event (a bearer, if sent, is ignored): 200, run completes with the event.
    let (s, b) = read(
        h.anon(Method::POST, &tok(&token))
            .bearer_auth("not-a-key")
            .json(&MATCHING())
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["status"], "running");
    let done = h.wait_terminal(&run, T).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["outputs"]["eventPayload"]["externalReference"], "x");
    assert_eq!(
        done["outputs"]["eventType"],
        "conformance.external.completed"
    );
    // Replay of a used token, and inspecting it: 409.
    for (s, b) in [
        anon_post(&h, &tok(&token), MATCHING()).await,
        anon_get(&h, &tok(&token)).await,
    ] {
        assert_eq!(s, StatusCode::CONFLICT, "{b}");
        assert_envelope(&b, "interrupt_already_resolved");
    }
    let events = h.events(&run).await;
    assert_event_log(&run, &events);
    assert_eq!(
        Host::event_types(&events),
        [
            "run.started",
            "node.started",
            "interrupt.requested",
            "node.suspended",
            "interrupt.resolved",
            "node.resumed",
            "node.completed",
            "run.completed"
        ]
    );
    let resolved_by = find(&events, "interrupt.resolved")["payload"]["resolvedBy"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        resolved_by.starts_with("token:") && !token.contains(&resolved_by[6..]),
        "{resolved_by}"
    );

    // A token of a cancelled run is invalidated (409); the run-scoped surface says 422.
    let (run, snap) = parked(&h, EXTERNAL, "waiting-external").await;
    let token = token_of(&snap);
    let (s, _) = h.post(&format!("/v1/runs/{run}/cancel"), json!({})).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(h.wait_terminal(&run, T).await["status"], "cancelled");
    let (s, b) = anon_post(&h, &tok(&token), MATCHING()).await;
    assert_eq!(s, StatusCode::CONFLICT, "{b}");
    assert_envelope(&b, "interrupt_already_resolved");
    let (s, b) = h
        .post(
            &format!("/v1/runs/{run}/interrupts/wait-for-external"),
            MATCHING(),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
    assert_envelope(&b, "interrupt_cancelled");
    let events = h.events(&run).await;
    assert_event_log(&run, &events);
    assert!(Host::event_types(&events).contains(&"node.cancelled".to_string()));
}

#[tokio::test]
async fn concurrent_resolves_have_exactly_one_winner() {
    let h = Host::start().await;
    let (run, _) = parked(&h, "conformance-approval", "waiting-approval").await;
    let path = format!("/v1/runs/{run}/interrupts/gate");
    let calls = (0..8).map(|_| h.post(&path, json!({"resumeValue": {"action": "accept"}})));
    let results = futures::future::join_all(calls).await;
    let ok = results.iter().filter(|(s, _)| *s == StatusCode::OK).count();
    let conflict = results
        .iter()
        .filter(|(s, _)| *s == StatusCode::CONFLICT)
        .count();
    assert_eq!((ok, conflict), (1, 7), "{results:?}");
    assert_eq!(h.wait_terminal(&run, T).await["status"], "completed");
    let events = h.events(&run).await;
    assert_event_log(&run, &events);
    let n = Host::event_types(&events)
        .iter()
        .filter(|t| *t == "interrupt.resolved")
        .count();
    assert_eq!(n, 1);
}

#[tokio::test]
async fn expired_tokens_and_interrupt_timeouts_answer_410() {
    // Tokens live 300 ms here; the interrupt itself has no deadline.
    let h = Host::start_with(Options {
        extra_args: vec!["--interrupt-token-ttl-ms".into(), "300".into()],
        ..Default::default()
    })
    .await;
    let (run, snap) = parked(&h, EXTERNAL, "waiting-external").await;
    let token = token_of(&snap);
    tokio::time::sleep(Duration::from_millis(400)).await;
    for (s, b) in [
        anon_post(&h, &format!("/v1/interrupts/{token}"), MATCHING()).await,
        anon_get(&h, &format!("/v1/interrupts/{token}")).await,
    ] {
        assert_eq!(s, StatusCode::GONE, "{b}");
        assert_envelope(&b, "interrupt_expired");
    }
    // The interrupt is still pending: the bearer surface resolves it.
    assert_eq!(h.snapshot(&run).await["status"], "waiting-external");
    let (s, b) = h
        .post(
            &format!("/v1/runs/{run}/interrupts/wait-for-external"),
            MATCHING(),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(h.wait_terminal(&run, T).await["status"], "completed");

    // An interrupt with its own deadline: the run fails with interrupt_timeout, the token is gone.
    let def = workflow(
        "short-approval",
        json!([node(
            "gate",
            "core.approvalGate",
            json!({"title": "quick", "timeoutMs": 200}),
            json!({})
        )]),
        json!([]),
        json!([]),
    );
    h.register(def).await;
    let (run, snap) = parked(&h, "short-approval", "waiting-approval").await;
    let token = token_of(&snap);
    let done = h.wait_terminal(&run, T).await;
    assert_eq!(done["status"], "failed");
    assert_eq!(done["error"]["code"], "interrupt_timeout");
    let (s, b) = anon_post(
        &h,
        &format!("/v1/interrupts/{token}"),
        json!({"resumeValue": {"action": "accept"}}),
    )
    .await;
    assert_eq!(s, StatusCode::GONE, "{b}");
    let (s, b) = h.accept(&run, "gate").await;
    assert_eq!(s, StatusCode::GONE, "{b}");
    assert_envelope(&b, "interrupt_expired");
    let events = h.events(&run).await;
    assert_event_log(&run, &events);
    assert_eq!(
        find(&events, "approval.received")["payload"]["action"],
        "timeout"
    );
}

#[tokio::test]
async fn parked_runs_survive_kill9_and_clean_restart() {
    let mut h = Host::start().await;
    let dir = h.data_dir.clone();
    let _tmp = h.take_tmp();
    let (approval, _) = parked(&h, "conformance-approval", "waiting-approval").await;
    let (external, snap) = parked(&h, EXTERNAL, "waiting-external").await;
    let token = token_of(&snap);
    let before = h.events(&approval).await;

    h.kill9();
    let mut h = Host::start_with(Options {
        data_dir: Some(dir.clone()),
        ..Default::default()
    })
    .await;
    let snap = h.wait_status(&approval, &["waiting-approval"], T).await;
    assert_eq!(snap["currentNodeId"], "gate");
    let snap = h.wait_status(&external, &["waiting-external"], T).await;
    assert_eq!(
        token_of(&snap),
        token,
        "the same token is valid after a restart"
    );
    // The parked status survives from before the crash; the resume itself (`run.resumed`) is
    // appended by the recovered run's task: wait for it before stopping the host again.
    for run in [&approval, &external] {
        let deadline = tokio::time::Instant::now() + T;
        while !Host::event_types(&h.events(run).await).contains(&"run.resumed".to_string()) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{run} never resumed"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
    let after = h.events(&approval).await;
    assert_eq!(
        &after[..before.len()],
        &before[..],
        "nothing seen before the crash changed"
    );

    // Graceful stop and start again; still parked, still resolvable.
    h.terminate(Duration::from_secs(10)).expect("clean exit");
    let h = Host::start_with(Options {
        data_dir: Some(dir),
        ..Default::default()
    })
    .await;
    h.wait_status(&approval, &["waiting-approval"], T).await;
    let (s, b) = h.accept(&approval, "gate").await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (s, b) = anon_post(&h, &format!("/v1/interrupts/{token}"), MATCHING()).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    for run in [&approval, &external] {
        let done = h.wait_terminal(run, T).await;
        assert_eq!(done["status"], "completed", "{done}");
        let events = h.events(run).await;
        assert_event_log(run, &events);
        let types = Host::event_types(&events);
        // Requested once, never re-requested or re-started by the restarts.
        assert_eq!(
            types.iter().filter(|t| *t == "interrupt.requested").count(),
            1,
            "{types:?}"
        );
        assert_eq!(
            types.iter().filter(|t| *t == "node.started").count(),
            1,
            "{types:?}"
        );
        assert_eq!(
            types.iter().filter(|t| *t == "run.resumed").count(),
            2,
            "{types:?}"
        );
        caused_by(&events, "node.completed", "node.resumed");
    }
}
