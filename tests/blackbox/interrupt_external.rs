//! `openwop-interrupt-external-event` (interrupt-profiles.md): a run waits for an external
//! event, correlated back by a stable `correlationId` (or the signed token); delivery is
//! idempotent by `(correlationId, eventId)`; unknown, expired and already-resolved
//! correlations answer canonical envelopes; the recorded event is redacted; the wait survives
//! restarts and works the same across two processes sharing Postgres.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::harness::*;
use crate::scopes::{call, config_path, host_with_config, mint};

const FIXTURE: &str = "conformance-interrupt-external-event";
const NODE: &str = "wait-for-external";
const DELIVER: &str = "/v1/x-wopbox/external-events";
const T: Duration = Duration::from_secs(15);

/// The fixture's correlation plus extras, one of them a credential.
fn matching() -> Value {
    json!({"orderId": "fixture-order-1", "status": "completed", "externalReference": "ref-9",
           "apiKey": "sk_live_never_logged", "meta": {"Authorization": "Bearer never-logged"}})
}

async fn anon_post(h: &Host, path: &str, body: Value) -> (StatusCode, Value) {
    read(h.anon(Method::POST, path).json(&body).send().await.unwrap()).await
}

/// Park a run of `workflow` on its external-event gate; returns (runId, snapshot).
async fn parked(h: &Host, workflow: &str) -> (String, Value) {
    let run = h.create_run(workflow, json!({})).await;
    let snap = h.wait_status(&run, &["waiting-external"], T).await;
    (run, snap)
}

fn token_path(snap: &Value) -> String {
    let t = snap["interrupt"]["interruptToken"]
        .as_str()
        .unwrap_or_else(|| panic!("no token on {snap}"));
    format!("/v1/interrupts/{t}")
}

fn correlation_of(snap: &Value) -> String {
    let c = snap["interrupt"]["data"]["correlationId"]
        .as_str()
        .unwrap_or_else(|| panic!("no correlationId on {snap}"))
        .to_string();
    let hex = c.strip_prefix("corr_").expect("corr_ prefix");
    assert!(
        hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()),
        "{c}"
    );
    c
}

fn by_correlation(correlation: &str, event_id: Option<&str>, event: Value) -> Value {
    let mut b = json!({"correlationId": correlation, "eventPayload": event});
    if let Some(id) = event_id {
        b["eventId"] = json!(id);
    }
    b
}

fn of_type<'a>(events: &'a [Value], ty: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["type"] == ty).collect()
}

/// A single external-event gate with `extra` merged into its config.
fn gate_workflow(id: &str, extra: Value) -> Value {
    let mut config = json!({"kind": "external-event",
                            "data": {"eventType": "test.paid", "correlation": {"orderId": "o-1"}}});
    for (k, v) in extra.as_object().unwrap() {
        config[k] = v.clone();
    }
    workflow(
        id,
        json!([node(NODE, "core.interrupt", config, json!({}))]),
        json!([]),
        json!([]),
    )
}

fn assert_waiting(snap: &Value) {
    assert_eq!(snap["status"], "waiting-external", "{snap}");
}

#[tokio::test]
async fn fixture_token_delivery_is_correlated_idempotent_and_redacted() {
    let h = Host::start().await;
    let (_, disc) = h.get("/.well-known/openwop").await;
    assert!(disc["fixtures"]
        .as_array()
        .unwrap()
        .contains(&json!(FIXTURE)));
    assert!(
        disc["extensions"]["interrupts"]["profiles"]
            .as_array()
            .unwrap()
            .contains(&json!("openwop-interrupt-external-event")),
        "{disc}"
    );

    let (run, snap) = parked(&h, FIXTURE).await;
    let correlation = correlation_of(&snap);
    let tok = token_path(&snap);
    // One stable correlationId: the request event, the snapshot and the inspect view agree.
    let events = h.events(&run).await;
    let requested = of_type(&events, "interrupt.requested")[0];
    assert_eq!(
        requested["payload"]["data"]["correlationId"],
        json!(correlation)
    );
    let (s, inspected) = read(h.anon(Method::GET, &tok).send().await.unwrap()).await;
    assert_eq!(s, StatusCode::OK, "{inspected}");
    assert_eq!(inspected["data"]["correlationId"], json!(correlation));

    // Refusals leave the run waiting: a mismatched correlation, a malformed eventId.
    let (s, b) = anon_post(
        &h,
        &tok,
        json!({"eventId": "evt-bad", "resumeValue": {"orderId": "different-order", "status": "completed"}}),
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
    assert_envelope(&b, "correlation_mismatch");
    let (s, b) = anon_post(&h, &tok, json!({"eventId": 42, "resumeValue": matching()})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
    assert_envelope(&b, "validation_error");
    assert_waiting(&h.snapshot(&run).await);

    // The event, then the same event again (a provider's retry): once accepted, then answered
    // as a duplicate on either surface, with nothing appended.
    let first = json!({"eventId": "evt-1", "resumeValue": matching()});
    let (s, b) = anon_post(&h, &tok, first.clone()).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["interrupt"]["duplicate"], false, "{b}");
    assert_eq!(b["interrupt"]["eventId"], "evt-1");
    assert_eq!(b["interrupt"]["correlationId"], json!(correlation));
    let done = h.wait_terminal(&run, T).await;
    assert_eq!(done["status"], "completed", "{done}");
    let logged = h.events(&run).await.len();
    for (s, b) in [
        anon_post(&h, &tok, first.clone()).await,
        h.post(&format!("/v1/runs/{run}/interrupts/{NODE}"), first)
            .await,
        h.post(
            DELIVER,
            by_correlation(&correlation, Some("evt-1"), matching()),
        )
        .await,
    ] {
        assert_eq!(s, StatusCode::OK, "{b}");
        assert_eq!(b["interrupt"]["duplicate"], true, "{b}");
        assert_eq!(b["status"], "completed", "{b}");
    }
    // Any other delivery to the closed interrupt is the canonical 409.
    for body in [
        json!({"eventId": "evt-2", "resumeValue": matching()}),
        json!({"resumeValue": matching()}),
    ] {
        let (s, b) = anon_post(&h, &tok, body).await;
        assert_eq!(s, StatusCode::CONFLICT, "{b}");
        assert_envelope(&b, "interrupt_already_resolved");
    }
    let events = h.events(&run).await;
    assert_eq!(events.len(), logged, "re-deliveries append nothing");
    assert_event_log(&run, &events);
    assert_eq!(of_type(&events, "interrupt.resolved").len(), 1);

    // Recorded redacted: credential-shaped keys replaced, their pointers listed; the rest kept.
    let out = &done["outputs"];
    assert_eq!(out["eventPayload"]["externalReference"], "ref-9", "{done}");
    assert_eq!(out["eventPayload"]["apiKey"], "[redacted]");
    assert_eq!(out["eventPayload"]["meta"]["Authorization"], "[redacted]");
    assert_eq!(out["redacted"], json!(["/apiKey", "/meta/Authorization"]));
    assert_eq!(out["eventId"], "evt-1");
    assert_eq!(out["correlationId"], json!(correlation));
    let resolved = of_type(&events, "interrupt.resolved")[0];
    assert_eq!(resolved["payload"]["resumeValue"]["eventId"], "evt-1");
    let everything = format!("{events:?}{done}");
    assert!(
        !everything.contains("never_logged") && !everything.contains("never-logged"),
        "a credential reached the log or the snapshot"
    );
}

#[tokio::test]
async fn concurrent_deliveries_of_one_event_resume_once() {
    let h = Host::start().await;
    let (run, snap) = parked(&h, FIXTURE).await;
    let tok = token_path(&snap);
    let body = json!({"eventId": "evt-race", "resumeValue": matching()});
    let calls = (0..6).map(|_| anon_post(&h, &tok, body.clone()));
    let results = futures::future::join_all(calls).await;
    let count = |dup: bool| {
        results
            .iter()
            .filter(|(s, b)| *s == StatusCode::OK && b["interrupt"]["duplicate"] == dup)
            .count()
    };
    assert_eq!((count(false), count(true)), (1, 5), "{results:?}");
    assert_eq!(h.wait_terminal(&run, T).await["status"], "completed");
    assert_eq!(
        of_type(&h.events(&run).await, "interrupt.resolved").len(),
        1
    );
}

#[tokio::test]
async fn delivery_by_correlation_id_needs_the_scope_and_the_tenant() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_path(&dir);
    let (_, responder) = mint(
        &config,
        "acme",
        &["approvals:respond", "runs:*", "workflows:write"],
    );
    let (_, reader) = mint(&config, "acme", &["runs:read"]);
    let (_, outsider) = mint(&config, "globex", &["approvals:respond"]);
    let h = host_with_config(&config).await;
    let (s, b) = call(
        &h,
        &responder,
        Method::POST,
        "/v1/workflows",
        Some(gate_workflow("ext-corr", json!({}))),
    )
    .await;
    assert!(s.is_success(), "{b}");
    let created = call(
        &h,
        &responder,
        Method::POST,
        "/v1/runs",
        Some(json!({"workflowId": "ext-corr"})),
    )
    .await;
    assert_eq!(created.0, StatusCode::CREATED, "{}", created.1);
    let run = created.1["runId"].as_str().unwrap().to_string();
    let snap = {
        let mut snap = json!(null);
        for _ in 0..400 {
            let (_, s) = call(
                &h,
                &responder,
                Method::GET,
                &format!("/v1/runs/{run}"),
                None,
            )
            .await;
            if s["status"] == "waiting-external" {
                snap = s;
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        snap
    };
    let correlation = correlation_of(&snap);
    let event = json!({"orderId": "o-1"});
    let deliver = |key: &str, body: Value| {
        let key = key.to_string();
        let h = &h;
        async move { call(h, &key, Method::POST, DELIVER, Some(body)).await }
    };

    // No bearer: 401. Without approvals:respond: 403. Another tenant's key: 404, as if unknown.
    let (s, b) = anon_post(
        &h,
        DELIVER,
        by_correlation(&correlation, None, event.clone()),
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{b}");
    let (s, b) = deliver(&reader, by_correlation(&correlation, None, event.clone())).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{b}");
    assert_eq!(b["details"]["scopeRequired"], "approvals:respond", "{b}");
    let (s, b) = deliver(&outsider, by_correlation(&correlation, None, event.clone())).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{b}");
    assert_envelope(&b, "interrupt_not_found");
    // Unknown, foreign-shaped or missing correlation ids.
    let interrupt_shaped = correlation.replace("corr_", "int_");
    for c in [
        "corr_00000000000000000000000000000000",
        "order-1",
        interrupt_shaped.as_str(),
    ] {
        let (s, b) = deliver(&responder, by_correlation(c, None, event.clone())).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{c}: {b}");
        assert_envelope(&b, "interrupt_not_found");
    }
    let (s, b) = deliver(&responder, json!({"eventPayload": event})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
    assert_envelope(&b, "validation_error");
    // A mismatch keeps the run waiting.
    let (s, b) = deliver(
        &responder,
        by_correlation(&correlation, Some("e0"), json!({"orderId": "o-2"})),
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
    assert_envelope(&b, "correlation_mismatch");
    let (_, snap) = call(
        &h,
        &responder,
        Method::GET,
        &format!("/v1/runs/{run}"),
        None,
    )
    .await;
    assert_waiting(&snap);

    // The event resumes the run; resolvedBy is the delivering key.
    let (s, b) = deliver(
        &responder,
        by_correlation(&correlation, Some("e1"), event.clone()),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["interrupt"]["duplicate"], false);
    let (s, b) = deliver(
        &responder,
        by_correlation(&correlation, Some("e2"), event.clone()),
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT, "{b}");
    assert_envelope(&b, "interrupt_already_resolved");
}

#[tokio::test]
async fn correlation_ids_name_external_events_only_and_cancelled_runs_refuse() {
    let h = Host::start().await;
    // An approval interrupt is not reachable through a correlation id built from its id.
    let approval = h.create_run("conformance-approval", json!({})).await;
    let snap = h.wait_status(&approval, &["waiting-approval"], T).await;
    let id = snap["interrupt"]["interruptId"].as_str().unwrap();
    let forged = id.replace("int_", "corr_");
    let (s, b) = h
        .post(DELIVER, by_correlation(&forged, None, json!({})))
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{b}");
    assert_eq!(h.snapshot(&approval).await["status"], "waiting-approval");

    // A cancelled run's correlation: 422 interrupt_cancelled, as on the run-scoped route.
    let (run, snap) = parked(&h, FIXTURE).await;
    let correlation = correlation_of(&snap);
    let (s, _) = h.post(&format!("/v1/runs/{run}/cancel"), json!({})).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(h.wait_terminal(&run, T).await["status"], "cancelled");
    let (s, b) = h
        .post(
            DELIVER,
            by_correlation(&correlation, Some("late"), matching()),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
    assert_envelope(&b, "interrupt_cancelled");
}

#[tokio::test]
async fn a_timed_out_wait_fails_the_run_and_refuses_late_events_with_410() {
    let h = Host::start().await;
    // Long enough to see the run parked (and take its token) on a loaded machine.
    h.register(gate_workflow("ext-short", json!({"timeoutMs": 1000})))
        .await;
    let (run, snap) = parked(&h, "ext-short").await;
    let correlation = correlation_of(&snap);
    let tok = token_path(&snap);
    let done = h.wait_terminal(&run, T).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["error"]["code"], "interrupt_timeout", "{done}");
    let events = h.events(&run).await;
    assert_event_log(&run, &events);
    let timed_out = of_type(&events, "interrupt.resolved");
    assert_eq!(timed_out.len(), 1, "{:?}", Host::event_types(&events));
    let p = &timed_out[0]["payload"];
    assert_eq!(p["outcome"], "timeout", "{p}");
    assert_eq!(p["reason"], "timeout");
    assert_eq!(p["resolvedBy"], "system:timeout");
    assert_eq!(p["correlationId"], json!(correlation));
    let types = Host::event_types(&events);
    let at = |t: &str| types.iter().position(|x| x == t).unwrap();
    assert!(at("interrupt.resolved") < at("node.failed"), "{types:?}");
    assert!(!types.contains(&"node.resumed".to_string()), "{types:?}");

    // Late deliveries on every surface, with or without an eventId: 410 interrupt_expired.
    let event = json!({"orderId": "o-1"});
    for (s, b) in [
        anon_post(&h, &tok, json!({"eventId": "late", "resumeValue": event})).await,
        h.post(
            &format!("/v1/runs/{run}/interrupts/{NODE}"),
            json!({"resumeValue": event}),
        )
        .await,
        h.post(
            DELIVER,
            by_correlation(&correlation, Some("late"), event.clone()),
        )
        .await,
    ] {
        assert_eq!(s, StatusCode::GONE, "{b}");
        assert_envelope(&b, "interrupt_expired");
    }
    assert_eq!(h.events(&run).await.len(), events.len());
}

#[tokio::test]
async fn configured_keys_are_redacted_and_bad_redact_configs_refused() {
    let h = Host::start().await;
    for bad in [json!("cvc"), json!([""]), json!([7])] {
        let (s, b) = h
            .post(
                "/v1/workflows",
                gate_workflow("ext-bad", json!({"redact": bad})),
            )
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
    }
    h.register(gate_workflow(
        "ext-redact",
        json!({"redact": ["cvc", "email"]}),
    ))
    .await;
    let (run, snap) = parked(&h, "ext-redact").await;
    assert_eq!(snap["interrupt"]["data"]["redact"], json!(["cvc", "email"]));
    let event = json!({"orderId": "o-1", "card": {"cvc": "C-V-C-1", "last4": "4242"},
                       "customer": {"E-mail": "x", "Email": "who@example.test"},
                       "lines": [{"token": "tok-secret-1"}]});
    let (s, b) = h
        .post(
            DELIVER,
            by_correlation(&correlation_of(&snap), Some("r1"), event),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let done = h.wait_terminal(&run, T).await;
    let p = &done["outputs"]["eventPayload"];
    assert_eq!(p["card"]["cvc"], "[redacted]", "{done}");
    assert_eq!(p["card"]["last4"], "4242");
    assert_eq!(p["customer"]["Email"], "[redacted]");
    assert_eq!(p["customer"]["E-mail"], "[redacted]", "dashes are ignored");
    assert_eq!(p["lines"][0]["token"], "[redacted]");
    let mut pointers: Vec<String> = done["outputs"]["redacted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_string())
        .collect();
    pointers.sort();
    assert_eq!(
        pointers,
        [
            "/card/cvc",
            "/customer/E-mail",
            "/customer/Email",
            "/lines/0/token"
        ]
    );
    let everything = format!("{:?}{done}", h.events(&run).await);
    for secret in ["C-V-C-1", "who@example.test", "tok-secret-1"] {
        assert!(!everything.contains(secret), "{secret} was recorded");
    }
}

#[tokio::test]
async fn a_wait_survives_restarts_with_its_correlation_and_deadline() {
    let mut h = Host::start().await;
    let dir = h.data_dir.clone();
    let _tmp = h.take_tmp();
    h.register(gate_workflow("ext-deadline", json!({"timeoutMs": 1500})))
        .await;
    let (run, snap) = parked(&h, FIXTURE).await;
    let correlation = correlation_of(&snap);
    let (timed, _) = parked(&h, "ext-deadline").await;
    h.kill9();

    let restart = |dir: std::path::PathBuf| async move {
        Host::start_with(Options {
            data_dir: Some(dir),
            ..Default::default()
        })
        .await
    };
    let mut h = restart(dir.clone()).await;
    let snap = h.wait_status(&run, &["waiting-external"], T).await;
    assert_eq!(correlation_of(&snap), correlation, "stable across restarts");
    let (s, b) = h
        .post(
            DELIVER,
            by_correlation(&correlation, Some("after-crash"), matching()),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(h.wait_terminal(&run, T).await["status"], "completed");
    // The deadline was stored, not restarted: the other wait still times out.
    let done = h.wait_terminal(&timed, T).await;
    assert_eq!(done["error"]["code"], "interrupt_timeout", "{done}");
    h.kill9();

    // The accepted eventId is durable: a retry after another restart is still a duplicate.
    let h = restart(dir).await;
    let (s, b) = h
        .post(
            DELIVER,
            by_correlation(&correlation, Some("after-crash"), matching()),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["interrupt"]["duplicate"], true, "{b}");
    for r in [&run, &timed] {
        let events = h.events(r).await;
        assert_event_log(r, &events);
        assert_eq!(of_type(&events, "interrupt.requested").len(), 1);
        assert_eq!(of_type(&events, "interrupt.resolved").len(), 1);
    }
}

#[tokio::test]
async fn postgres_deliveries_through_two_processes_resume_once() {
    let Some(db) = pg_database().await else {
        return;
    };
    let (mut a, b, _tmp) = two_processes(|data_dir| Options {
        database: Some(db.clone()),
        data_dir,
        ..Default::default()
    })
    .await;
    a.register(gate_workflow("ext-pg-short", json!({"timeoutMs": 200})))
        .await;

    // Parked on A, delivered through B by correlation; A sees the re-delivery as a duplicate.
    let (run, snap) = parked(&a, FIXTURE).await;
    let correlation = correlation_of(&snap);
    let (s, body) = b
        .post(
            DELIVER,
            by_correlation(&correlation, Some("pg-1"), matching()),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["interrupt"]["duplicate"], false);
    let (s, body) = a
        .post(
            DELIVER,
            by_correlation(&correlation, Some("pg-1"), matching()),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["interrupt"]["duplicate"], true, "{body}");
    assert_eq!(a.wait_terminal(&run, T).await["status"], "completed");

    // One event delivered concurrently through both processes (token on one, correlation on
    // the other): accepted exactly once.
    let (run, snap) = parked(&b, FIXTURE).await;
    let correlation = correlation_of(&snap);
    let tok = token_path(&snap);
    let token_body = json!({"eventId": "pg-race", "resumeValue": matching()});
    let corr_body = by_correlation(&correlation, Some("pg-race"), matching());
    let calls = (0..6).map(|i| {
        let (h, tb, cb) = (
            if i % 2 == 0 { &a } else { &b },
            token_body.clone(),
            corr_body.clone(),
        );
        let tok = tok.clone();
        async move {
            if i % 3 == 0 {
                anon_post(h, &tok, tb).await
            } else {
                h.post(DELIVER, cb).await
            }
        }
    });
    let results = futures::future::join_all(calls).await;
    let fresh = results
        .iter()
        .filter(|(s, b)| *s == StatusCode::OK && b["interrupt"]["duplicate"] == false)
        .count();
    let dup = results
        .iter()
        .filter(|(s, b)| *s == StatusCode::OK && b["interrupt"]["duplicate"] == true)
        .count();
    assert_eq!((fresh, dup), (1, 5), "{results:?}");
    assert_eq!(b.wait_terminal(&run, T).await["status"], "completed");
    let events = a.events(&run).await;
    assert_event_log(&run, &events);
    assert_eq!(of_type(&events, "interrupt.resolved").len(), 1);

    // A timeout on one process is a 410 on the other (the correlation id read from the log:
    // the wait may be over before a snapshot shows it).
    let run = a.create_run("ext-pg-short", json!({})).await;
    assert_eq!(
        b.wait_terminal(&run, T).await["error"]["code"],
        "interrupt_timeout"
    );
    let events = b.events(&run).await;
    let correlation = of_type(&events, "interrupt.requested")[0]["payload"]["data"]
        ["correlationId"]
        .as_str()
        .unwrap()
        .to_string();
    let (s, body) = b
        .post(
            DELIVER,
            by_correlation(&correlation, Some("late"), json!({"orderId": "o-1"})),
        )
        .await;
    assert_eq!(s, StatusCode::GONE, "{body}");
    assert_envelope(&body, "interrupt_expired");
    a.kill9();
}
