//! The Postgres backend over HTTP: the same behaviour as SQLite for one process, and several
//! processes on one database acting as one host — takeover of a killed process's runs without
//! duplicated events, SSE across processes, cancels and idempotency keys across processes.
//! Needs `WOPBOX_TEST_PG_URL` (scripts/test.sh starts a throwaway cluster); fails under CI=true
//! without it.

use std::path::PathBuf;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::harness::*;

/// A short lease so takeover tests do not wait the default 10 s.
const LEASE_MS: &str = "1000";

fn on(db: &str, data_dir: Option<PathBuf>) -> Options {
    Options {
        database: Some(db.to_string()),
        data_dir,
        extra_args: vec!["--lease-ttl-ms".into(), LEASE_MS.into()],
        ..Default::default()
    }
}

/// `on(db, data_dir)` plus the given flags.
fn on_with(db: &str, data_dir: Option<PathBuf>, args: &[&str]) -> Options {
    let mut o = on(db, data_dir);
    o.extra_args.extend(args.iter().map(|s| s.to_string()));
    o
}

/// No event appears twice: no repeated event id, and no node attempt started or finished
/// twice (what a second driver writing into the same run would produce).
fn assert_no_duplicates(events: &[Value]) {
    let mut seen = std::collections::HashSet::new();
    for e in events {
        let t = e["type"].as_str().unwrap();
        if t.starts_with("node.") && t != "node.log" {
            let key = (
                t.to_string(),
                e["nodeId"].clone().to_string(),
                e["payload"]["attempt"].to_string(),
            );
            assert!(
                seen.insert(key),
                "duplicated {t}: {:?}",
                Host::event_types(events)
            );
        }
    }
}

#[tokio::test]
async fn postgres_runs_stream_and_replay_like_sqlite() {
    let Some(db) = pg_database().await else {
        return;
    };
    let h = Host::start_with(on(&db, None)).await;
    let id = h.create_run("conformance-multi-node", json!({})).await;
    let snap = h.wait_terminal(&id, Duration::from_secs(10)).await;
    assert_eq!(snap["status"], "completed", "{snap}");
    let events = h.events(&id).await;
    assert_event_log(&id, &events);
    let sse = h
        .sse(
            &format!("/v1/runs/{id}/events?streamMode=debug"),
            Some("1"),
            Duration::from_secs(5),
        )
        .await;
    assert!(sse.closed, "stream of a finished run closes");
    let streamed: Vec<Value> = sse.frames.iter().map(|f| f.data.clone()).collect();
    assert_eq!(streamed, events[2..], "resumes after Last-Event-ID 1");

    // The same run on SQLite logs the same event types in the same order.
    let lite = Host::start().await;
    let lite_id = lite.create_run("conformance-multi-node", json!({})).await;
    lite.wait_terminal(&lite_id, Duration::from_secs(10)).await;
    assert_eq!(
        Host::event_types(&lite.events(&lite_id).await),
        Host::event_types(&events)
    );

    // Idempotency: same key and body replays; a different body is a mismatch.
    let send = |nonce: &'static str| {
        h.req(Method::POST, "/v1/runs")
            .header("idempotency-key", "pg-key")
            .json(&json!({"workflowId": "conformance-idempotent", "inputs": {"nonce": nonce}}))
            .send()
    };
    let (s1, b1) = read(send("a").await.unwrap()).await;
    assert_eq!(s1, StatusCode::CREATED, "{b1}");
    let r2 = send("a").await.unwrap();
    assert_eq!(
        r2.headers().get("openwop-idempotent-replay").unwrap(),
        "true"
    );
    let (_, b2) = read(r2).await;
    assert_eq!(b2["runId"], b1["runId"]);
    let (s3, b3) = read(send("b").await.unwrap()).await;
    assert_eq!(s3, StatusCode::CONFLICT, "{b3}");

    // The audit chain verifies on Postgres too.
    let (s, v) = h.get("/v1/audit/verify").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["chainValid"], true, "{v}");
    assert_eq!(v["anomalies"], json!([]), "{v}");
}

#[tokio::test]
async fn postgres_kill9_restart_resumes_in_flight_runs() {
    let Some(db) = pg_database().await else {
        return;
    };
    let mut h = Host::start_with(on(&db, None)).await;
    let dir = h.data_dir.clone();
    let _tmp = h.take_tmp();
    let done = h.create_run("conformance-multi-node", json!({})).await;
    h.wait_terminal(&done, Duration::from_secs(10)).await;
    let before = h.events(&done).await;
    let slow = h
        .create_run("conformance-delay", json!({"delayMs": 1500}))
        .await;
    h.wait_for_event(&slow, "node.started").await;
    h.kill9();

    let h = Host::start_with(on(&db, Some(dir))).await;
    assert_eq!(
        h.events(&done).await,
        before,
        "finished logs survive verbatim"
    );
    let snap = h.wait_terminal(&slow, Duration::from_secs(20)).await;
    assert_eq!(snap["status"], "completed", "{snap}");
    let events = h.events(&slow).await;
    assert_event_log(&slow, &events);
    assert_no_duplicates(&events);
    assert!(Host::event_types(&events).contains(&"run.resumed".to_string()));
}

#[tokio::test]
async fn a_killed_process_runs_are_finished_by_another_without_duplicates() {
    let Some(db) = pg_database().await else {
        return;
    };
    let (mut a, b, _tmp) = two_processes(|dir| on(&db, dir)).await;

    // Runs accepted by A; A executes them.
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(
            a.create_run("conformance-delay", json!({"delayMs": 2000}))
                .await,
        );
    }
    for id in &ids {
        a.wait_for_event(id, "node.started").await;
    }
    let seen_on_a: Vec<Vec<Value>> = {
        let mut v = Vec::new();
        for id in &ids {
            v.push(a.events(id).await);
        }
        v
    };
    a.kill9();

    // B takes them over once A's leases expire, and finishes each exactly once.
    for (id, before) in ids.iter().zip(&seen_on_a) {
        let snap = b.wait_terminal(id, Duration::from_secs(30)).await;
        assert_eq!(snap["status"], "completed", "{snap}");
        let events = b.events(id).await;
        assert_event_log(id, &events);
        assert_no_duplicates(&events);
        assert_eq!(
            &events[..before.len()],
            &before[..],
            "A's events kept verbatim"
        );
        let types = Host::event_types(&events);
        assert_eq!(
            types.iter().filter(|t| *t == "run.resumed").count(),
            1,
            "{types:?}"
        );
        let attempts: Vec<_> = events
            .iter()
            .filter(|e| e["type"] == "node.started")
            .map(|e| e["payload"]["attempt"].as_u64().unwrap())
            .collect();
        assert_eq!(
            attempts,
            [1, 2],
            "the interrupted node is re-dispatched once"
        );
    }
}

#[tokio::test]
async fn processes_share_streams_cancels_and_idempotency_keys() {
    let Some(db) = pg_database().await else {
        return;
    };
    let (mut a, b, _tmp) = two_processes(|dir| on(&db, dir)).await;

    // SSE on B of a run A executes: B has no driver for it, so only A's notifications can
    // bring the live events — including the terminal one that closes the stream.
    let id = a
        .create_run("conformance-delay", json!({"delayMs": 1500}))
        .await;
    let sse = b
        .sse(
            &format!("/v1/runs/{id}/events?streamMode=debug"),
            None,
            Duration::from_secs(20),
        )
        .await;
    assert_eq!(sse.status, StatusCode::OK);
    assert!(
        sse.closed,
        "B's stream ended with A's terminal event: {:?}",
        sse.frames.len()
    );
    let streamed: Vec<Value> = sse.frames.iter().map(|f| f.data.clone()).collect();
    assert_eq!(
        streamed,
        a.events(&id).await,
        "the whole log, in order, once"
    );
    assert_eq!(streamed.last().unwrap()["type"], "run.completed");

    // A cancel sent to B reaches the run executing on A.
    let id = a
        .create_run("conformance-cancellable", json!({"delayMs": 60000}))
        .await;
    a.wait_for_event(&id, "node.started").await;
    let (s, body) = b.post(&format!("/v1/runs/{id}/cancel"), json!({})).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let snap = a.wait_terminal(&id, Duration::from_secs(10)).await;
    assert_eq!(snap["status"], "cancelled", "{snap}");
    let events = b.events(&id).await;
    assert_event_log(&id, &events);
    assert!(
        !Host::event_types(&events).contains(&"run.resumed".to_string()),
        "A cancelled its own run; nobody took it over"
    );

    // An idempotency key used on A replays on B.
    let send = |h: &Host| {
        h.req(Method::POST, "/v1/runs")
            .header("idempotency-key", "shared-key")
            .json(&json!({"workflowId": "conformance-idempotent", "inputs": {"nonce": "x"}}))
            .send()
    };
    let (s1, b1) = read(send(&a).await.unwrap()).await;
    assert_eq!(s1, StatusCode::CREATED, "{b1}");
    let r2 = send(&b).await.unwrap();
    assert_eq!(
        r2.headers().get("openwop-idempotent-replay").unwrap(),
        "true"
    );
    assert_eq!(read(r2).await.1["runId"], b1["runId"]);

    // Both processes appended to one audit chain (run creations, cancels): it has no fork.
    let (s, v) = b.get("/v1/audit/verify").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["chainValid"], true, "{v}");
    assert_eq!(v["anomalies"], json!([]), "{v}");
    a.kill9();
}

/// Poll `path` on `h` until it answers `want`.
async fn wait_for_status(h: &Host, path: &str, want: StatusCode) {
    for _ in 0..400 {
        if h.get(path).await.0 == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{path} never answered {want}");
}

#[tokio::test]
async fn a_pack_uploaded_on_one_process_runs_on_another() {
    let Some(db) = pg_database().await else {
        return;
    };
    let (mut a, b, _tmp) = two_processes(|dir| on(&db, dir)).await;
    a.install_rfc0008(
        "vendor.test.shared",
        "1.0.0",
        "vendor.test.shared.n",
        "(call $ok)",
    )
    .await;
    // B loads it from the database when A's upload is announced; no restart.
    wait_for_status(&b, "/v1/packs/vendor.test.shared", StatusCode::OK).await;
    b.register(workflow(
        "shared-pack-wf",
        json!([node("n", "vendor.test.shared.n", json!({}), json!({}))]),
        json!([]),
        json!([]),
    ))
    .await;
    let run = b.create_run("shared-pack-wf", json!({})).await;
    let snap = b.wait_terminal(&run, Duration::from_secs(30)).await;
    assert_eq!(snap["status"], "completed", "{snap}");
    // Deleting it on A removes it from B as well.
    let (s, body) = read(
        a.req(Method::DELETE, "/v1/packs/vendor.test.shared/-/1.0.0")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert!(s.is_success(), "{s} {body}");
    wait_for_status(&b, "/v1/packs/vendor.test.shared", StatusCode::NOT_FOUND).await;
    a.kill9();
}

#[tokio::test]
async fn two_processes_send_each_webhook_attempt_once() {
    use crate::webhooks::Receiver;
    let Some(db) = pg_database().await else {
        return;
    };
    let flags = ["--webhook-allow-loopback", "--webhook-retry-base-ms", "50"];
    let (mut a, b, _tmp) = two_processes(|dir| on_with(&db, dir, &flags)).await;
    // The first 10 attempts fail, every later one succeeds.
    let rx = Receiver::start(&[500; 10], 204, Duration::ZERO).await;
    // Registered on B; the runs are executed (and fanned out) by A, and both processes drain
    // the one outbox.
    let (s, body) = b
        .post(
            "/v1/webhooks",
            json!({"url": rx.url(), "events": ["run.completed"]}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    let mut runs = Vec::new();
    for _ in 0..10 {
        runs.push(a.create_run("conformance-noop", json!({})).await);
    }
    let hits = rx
        .wait_for("20 attempts", Duration::from_secs(30), |h| h.len() >= 20)
        .await;
    // Settle: a duplicated attempt would show up as extra hits.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let hits = if rx.hits().len() > hits.len() {
        rx.hits()
    } else {
        hits
    };
    assert_eq!(
        hits.len(),
        20,
        "10 failed attempts + 10 successes, nothing sent twice"
    );
    let mut delivered: Vec<String> = hits[10..]
        .iter()
        .map(|h| h.json()["runId"].as_str().unwrap().to_string())
        .collect();
    delivered.sort();
    runs.sort();
    assert_eq!(
        delivered, runs,
        "each run's completion delivered exactly once"
    );
    a.kill9();
}

/// How often `ty` occurs in the log.
fn count(events: &[Value], ty: &str) -> usize {
    events.iter().filter(|e| e["type"] == ty).count()
}

/// A parked run's resolution token (the signed-token surface's credential).
fn token_of(snap: &Value) -> String {
    snap["interrupt"]["interruptToken"]
        .as_str()
        .unwrap_or_else(|| panic!("no interrupt token on {snap}"))
        .to_string()
}

const APPROVAL: &str = "conformance-approval";
const EXTERNAL: &str = "conformance-interrupt-external-event";
const PARK: Duration = Duration::from_secs(10);

fn matching_event() -> Value {
    json!({"resumeValue": {"orderId": "fixture-order-1", "status": "completed", "externalReference": "x"}})
}

/// A resolved interrupt's run finished cleanly: asked once, its gate started once, resumed by
/// the resolution, and `run.resumed` exactly `takeovers` times.
fn assert_resolved_once(run: &str, events: &[Value], takeovers: usize) {
    assert_event_log(run, events);
    assert_no_duplicates(events);
    let types = Host::event_types(events);
    assert_eq!(count(events, "interrupt.requested"), 1, "{types:?}");
    assert_eq!(count(events, "interrupt.resolved"), 1, "{types:?}");
    assert_eq!(count(events, "node.started"), 1, "{types:?}");
    assert_eq!(count(events, "run.resumed"), takeovers, "{types:?}");
    assert_eq!(types.last().map(String::as_str), Some("run.completed"));
}

#[tokio::test]
async fn an_interrupt_parked_on_one_process_is_resolved_through_another() {
    let Some(db) = pg_database().await else {
        return;
    };
    let (mut a, b, _tmp) = two_processes(|dir| on(&db, dir)).await;

    // Run-scoped surface: parked on A, resolved with a bearer on B; A (the owner) finishes it.
    let approval = a.create_run(APPROVAL, json!({})).await;
    a.wait_status(&approval, &["waiting-approval"], PARK).await;
    let snap = b.wait_status(&approval, &["waiting-approval"], PARK).await;
    assert_eq!(snap["interrupt"]["nodeId"], "gate", "B sees the interrupt");
    let (s, body) = b.accept(&approval, "gate").await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["interrupt"]["outcome"], "accepted");
    // A second resolution, now on A, loses: the row is no longer pending.
    let (s, body) = a.accept(&approval, "gate").await;
    assert_eq!(s, StatusCode::CONFLICT, "{body}");
    assert_envelope(&body, "interrupt_already_resolved");

    // Signed-token surface: the token minted on A resolves on B (no bearer).
    let external = a.create_run(EXTERNAL, json!({})).await;
    let snap = a.wait_status(&external, &["waiting-external"], PARK).await;
    let token = token_of(&snap);
    let (s, body) = read(
        b.anon(Method::POST, &format!("/v1/interrupts/{token}"))
            .json(&matching_event())
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{body}");

    for run in [&approval, &external] {
        let done = a.wait_terminal(run, PARK).await;
        assert_eq!(done["status"], "completed", "{done}");
        // Nobody took the runs over: A executed them throughout.
        assert_resolved_once(run, &b.events(run).await, 0);
    }
    a.kill9();
}

#[tokio::test]
async fn a_run_parked_on_a_killed_process_resumes_and_finishes_on_another() {
    let Some(db) = pg_database().await else {
        return;
    };
    let (mut a, b, _tmp) = two_processes(|dir| on(&db, dir)).await;

    let early = a.create_run(APPROVAL, json!({})).await;
    let late = a.create_run(APPROVAL, json!({})).await;
    let external = a.create_run(EXTERNAL, json!({})).await;
    for run in [&early, &late] {
        a.wait_status(run, &["waiting-approval"], PARK).await;
    }
    let token = token_of(&a.wait_status(&external, &["waiting-external"], PARK).await);
    let before = b.events(&late).await;
    a.kill9();

    // Resolved on B while A's lease has not yet lapsed: the resolution commits (it is guarded
    // by the interrupt row, not the lease) and the run continues once B claims it.
    let (s, body) = b.accept(&early, "gate").await;
    assert_eq!(s, StatusCode::OK, "{body}");

    // Taken over while still parked: B re-parks it on the same interrupt (no new request)...
    b.wait_for_event(&late, "run.resumed").await;
    let snap = b.wait_status(&late, &["waiting-approval"], PARK).await;
    assert_eq!(snap["interrupt"]["nodeId"], "gate");
    let after = b.events(&late).await;
    assert_eq!(
        &after[..before.len()],
        &before[..],
        "A's events kept verbatim"
    );
    // ...and a resolution on B finishes it there.
    let (s, body) = b.accept(&late, "gate").await;
    assert_eq!(s, StatusCode::OK, "{body}");
    // The token A minted still resolves on B after the takeover.
    b.wait_for_event(&external, "run.resumed").await;
    let (s, body) = read(
        b.anon(Method::POST, &format!("/v1/interrupts/{token}"))
            .json(&matching_event())
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{body}");

    for run in [&early, &late, &external] {
        let done = b.wait_terminal(run, Duration::from_secs(30)).await;
        assert_eq!(done["status"], "completed", "{done}");
        assert_resolved_once(run, &b.events(run).await, 1);
    }
}

#[tokio::test]
async fn the_audit_chain_stays_valid_when_two_processes_append_at_once() {
    let Some(db) = pg_database().await else {
        return;
    };
    // Checkpoints by count and every second: both processes also mint checkpoints while the
    // chain grows, at heads that differ between them.
    let flags = [
        "--audit-checkpoint-entries",
        "7",
        "--audit-checkpoint-seconds",
        "1",
    ];
    let (mut a, b, _tmp) = two_processes(|dir| on_with(&db, dir, &flags)).await;
    let (_, v) = b.get("/v1/audit/verify").await;
    let head_before = v["toSeq"].as_i64().unwrap_or(0);

    // Waves spread over a few seconds; in each, both hosts take run creations and refused
    // bearers (both audited) all in flight together.
    const WAVES: usize = 6;
    const PER_WAVE: usize = 5;
    let burst = |h: &Host| {
        let creates = (0..PER_WAVE).map(|_| {
            h.req(Method::POST, "/v1/runs")
                .json(&json!({"workflowId": "conformance-noop", "inputs": {}}))
                .send()
        });
        let refused = (0..PER_WAVE).map(|_| {
            h.anon(Method::GET, "/v1/runs/run-nope")
                .bearer_auth("not-a-key")
                .send()
        });
        (
            futures::future::join_all(creates),
            futures::future::join_all(refused),
        )
    };
    for _ in 0..WAVES {
        let ((ca, ra), (cb, rb)) = (burst(&a), burst(&b));
        let (ca, ra, cb, rb) = tokio::join!(ca, ra, cb, rb);
        for r in ca.into_iter().chain(cb) {
            assert_eq!(r.unwrap().status(), StatusCode::CREATED);
        }
        for r in ra.into_iter().chain(rb) {
            assert_eq!(r.unwrap().status(), StatusCode::UNAUTHORIZED);
        }
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    // Let both timers cover the tail.
    tokio::time::sleep(Duration::from_millis(2500)).await;

    for h in [&a, &b] {
        let (s, v) = h.get("/v1/audit/verify").await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v["chainValid"], true, "{v}");
        assert_eq!(v["checkpointsValid"], true, "{v}");
        assert_eq!(v["anomalies"], json!([]), "{v}");
        assert!(!v["checkpoints"].as_array().unwrap().is_empty(), "{v}");
        // Nothing lost or written twice: one entry per audited request.
        assert_eq!(
            v["toSeq"].as_i64().unwrap() - head_before,
            (4 * WAVES * PER_WAVE) as i64,
            "{v}"
        );
    }
    a.kill9();
}

/// Sub-workflows on Postgres: a fixture parent maps its child's outcome back, 100 parallel
/// children each map their own value, and a parent cancel cascades into a child waiting on an
/// approval (its interrupt answers 410 afterwards); a child waiting on an approval keeps its
/// dispatch-time inputs when the parent's variables change.
#[tokio::test]
async fn postgres_sub_workflows_fan_out_and_cascade() {
    let Some(db) = pg_database().await else {
        return;
    };
    let h = Host::start_with(on_with(&db, None, &["--enable-test-seams"])).await;
    crate::subworkflows::parent_fixture_maps_outputs_and_links_both_ways(&h).await;
    crate::subworkflows::hundred_children_each_map_their_own_values(&h).await;
    crate::interrupt_cascade::parent_cancel_invalidates_the_childs_interrupt(&h).await;
    crate::interrupt_cascade::a_waiting_child_keeps_its_dispatch_time_inputs(&h).await;
}
