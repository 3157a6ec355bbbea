//! `openwop-interrupt-quorum` (interrupt-profiles.md): N-of-M approvals. Each vote is its own
//! `approval.received`; the run keeps waiting until the quorum is settled; duplicates are
//! idempotent, changed votes refused; concurrent votes (on one process or two sharing a
//! Postgres database) are each counted exactly once.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::harness::*;
use crate::interrupt_auth::routed_gate;
use crate::scopes::{call, config_path, create_run_as, host_with_config, mint};

const QUORUM: &str = "conformance-interrupt-quorum";
const T: Duration = Duration::from_secs(20);

fn vote_body(action: &str, voter: &str) -> Value {
    json!({"resumeValue": {"action": action, "voter": voter}})
}

async fn vote(h: &Host, run_id: &str, action: &str, voter: &str) -> (StatusCode, Value) {
    h.post(
        &format!("/v1/runs/{run_id}/interrupts/gate"),
        vote_body(action, voter),
    )
    .await
}

fn of_type<'a>(events: &'a [Value], ty: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["type"] == ty).collect()
}

/// A gate needing `n` approvals under `policy`, with extra config merged in.
fn quorum_workflow(id: &str, n: u64, policy: &str, extra: Value) -> Value {
    let mut config = json!({"requiredApprovals": n, "rejectionPolicy": policy});
    for (k, v) in extra.as_object().unwrap() {
        config[k] = v.clone();
    }
    routed_gate(id, config)
}

#[tokio::test]
async fn quorum_fixture_needs_three_accepts_and_majority_rejects() {
    let h = Host::start().await;
    let (_, disc) = h.get("/.well-known/openwop").await;
    assert!(
        disc["fixtures"]
            .as_array()
            .unwrap()
            .contains(&json!(QUORUM)),
        "{disc}"
    );
    assert!(disc["extensions"]["interrupts"]["profiles"]
        .as_array()
        .unwrap()
        .contains(&json!("openwop-interrupt-quorum")));

    let run = h.create_run(QUORUM, json!({})).await;
    let snap = h.wait_status(&run, &["waiting-approval"], T).await;
    // The payload documents the rule.
    let data = &snap["interrupt"]["data"];
    assert_eq!(data["requiredApprovals"], 3, "{snap}");
    assert_eq!(data["rejectionPolicy"], "majority");
    assert_eq!(data["rejectAt"], 2);

    for (i, voter) in ["approver-1", "approver-2"].iter().enumerate() {
        let (s, b) = vote(&h, &run, "accept", voter).await;
        assert_eq!(s, StatusCode::OK, "{b}");
        assert_eq!(b["interrupt"]["outcome"], "vote-recorded", "{b}");
        assert_eq!(b["interrupt"]["quorumProgress"]["accepts"], i + 1);
        assert_eq!(b["interrupt"]["quorumProgress"]["state"], "open");
        let snap = h.snapshot(&run).await;
        assert_eq!(snap["status"], "waiting-approval", "{snap}");
        assert_eq!(
            snap["interrupt"]["quorumProgress"]["accepts"],
            i + 1,
            "{snap}"
        );
    }
    // The same decision again is idempotent: answered, not counted.
    let (s, b) = vote(&h, &run, "accept", "approver-2").await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["interrupt"]["duplicate"], true, "{b}");
    assert_eq!(b["interrupt"]["outcome"], "duplicate-vote");
    assert_eq!(b["interrupt"]["quorumProgress"]["accepts"], 2);
    // A different decision by the same voter is refused; the run keeps waiting.
    let (s, b) = vote(&h, &run, "reject", "approver-1").await;
    assert_eq!(s, StatusCode::CONFLICT, "{b}");
    assert_envelope(&b, "conflict");
    assert_eq!(b["details"]["reason"], "vote_already_cast");
    assert_eq!(b["details"]["priorAction"], "accept");
    // A vote outside the gate's actions is a validation error, not a vote.
    let (s, b) = vote(&h, &run, "refine", "approver-9").await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
    assert_eq!(h.snapshot(&run).await["status"], "waiting-approval");
    let events = h.events(&run).await;
    assert!(of_type(&events, "interrupt.resolved").is_empty());
    assert_eq!(of_type(&events, "approval.received").len(), 2);

    let (s, b) = vote(&h, &run, "accept", "approver-3").await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["interrupt"]["outcome"], "accepted", "{b}");
    let done = h.wait_terminal(&run, T).await;
    assert_eq!(done["status"], "completed", "{done}");

    let events = h.events(&run).await;
    assert_event_log(&run, &events);
    let received = of_type(&events, "approval.received");
    assert_eq!(received.len(), 3, "one event per counted vote");
    let voters: Vec<&str> = received
        .iter()
        .map(|e| e["payload"]["decidedBy"].as_str().unwrap())
        .collect();
    assert_eq!(voters, ["approver-1", "approver-2", "approver-3"]);
    for (i, e) in received.iter().enumerate() {
        assert_eq!(e["payload"]["quorumProgress"]["accepts"], i + 1, "{e}");
        assert!(e["payload"]["decidedAt"].is_string());
    }
    let resolved = of_type(&events, "interrupt.resolved");
    assert_eq!(resolved.len(), 1);
    let rv = &resolved[0]["payload"]["resumeValue"];
    assert_eq!(rv["action"], "accept");
    assert_eq!(resolved[0]["payload"]["resolvedBy"], "approver-3");
    assert_eq!(rv["votes"].as_array().unwrap().len(), 3, "{rv}");
    // The closing vote comes after interrupt.resolved (it is caused by it).
    let pos = |id: &Value| events.iter().position(|e| &e["eventId"] == id).unwrap();
    assert!(pos(&resolved[0]["eventId"]) < pos(&received[2]["eventId"]));

    // After the close: a known voter's repeat is still idempotent, a new voter is too late.
    let (s, b) = vote(&h, &run, "accept", "approver-1").await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["interrupt"]["duplicate"], true);
    let (s, b) = vote(&h, &run, "accept", "approver-4").await;
    assert_eq!(s, StatusCode::CONFLICT, "{b}");
    assert_envelope(&b, "interrupt_already_resolved");

    // Majority reject: two rejects of three settle the gate as rejected; the run fails.
    let run = h.create_run(QUORUM, json!({})).await;
    h.wait_status(&run, &["waiting-approval"], T).await;
    let (s, b) = vote(&h, &run, "reject", "approver-1").await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(
        h.snapshot(&run).await["status"],
        "waiting-approval",
        "one reject does not veto under majority"
    );
    let (s, b) = vote(&h, &run, "accept", "approver-2").await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (s, b) = vote(&h, &run, "reject", "approver-3").await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["interrupt"]["outcome"], "rejected", "{b}");
    let done = h.wait_terminal(&run, T).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["error"]["code"], "interrupt_rejected", "{done}");
    let events = h.events(&run).await;
    let resolved = of_type(&events, "interrupt.resolved");
    assert_eq!(resolved[0]["payload"]["resumeValue"]["action"], "reject");
    assert_eq!(
        resolved[0]["payload"]["resumeValue"]["quorum"]["rejects"],
        2
    );
}

#[tokio::test]
async fn quorum_votes_are_per_key_and_impersonation_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_path(&dir);
    let (a_id, a) = mint(
        &config,
        "acme",
        &[
            "approvals:respond",
            "runs:read",
            "runs:create",
            "workflows:write",
        ],
    );
    let (b_id, b) = mint(&config, "acme", &["approvals:respond", "runs:read"]);
    let (_, delegate) = mint(
        &config,
        "acme",
        &["approvals:respond", "approvals:on-behalf", "runs:read"],
    );
    let h = host_with_config(&config).await;
    let def = quorum_workflow("q-keys", 2, "single-veto", json!({}));
    let (s, body) = call(&h, &a, Method::POST, "/v1/workflows", Some(def)).await;
    assert!(s.is_success(), "{body}");

    let run = create_run_as(&h, &a, "q-keys").await;
    let path = format!("/v1/runs/{run}/interrupts/gate");
    let accept = json!({"resumeValue": {"action": "accept"}});
    let snap = loop {
        let (_, snap) = call(&h, &a, Method::GET, &format!("/v1/runs/{run}"), None).await;
        if snap["status"] == "waiting-approval" {
            break snap;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    // The signed token carries no identity to count: refused, run still waiting.
    let token = snap["interrupt"]["interruptToken"].as_str().unwrap();
    let (s, body) = read(
        h.anon(Method::POST, &format!("/v1/interrupts/{token}"))
            .json(&accept)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{body}");
    assert_envelope(&body, "forbidden");

    let (s, body) = call(&h, &a, Method::POST, &path, Some(accept.clone())).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["interrupt"]["vote"]["voter"], a_id);
    // A key without approvals:on-behalf cannot vote as someone else.
    let (s, body) = call(
        &h,
        &a,
        Method::POST,
        &path,
        Some(vote_body("accept", "someone-else")),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["details"]["reason"], "on_behalf_not_allowed", "{body}");
    assert_eq!(body["details"]["scopeRequired"], "approvals:on-behalf");
    // Naming itself is just its own vote (a duplicate now).
    let (s, body) = call(
        &h,
        &a,
        Method::POST,
        &path,
        Some(vote_body("accept", &a_id)),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["interrupt"]["duplicate"], true, "{body}");
    // A delegate voting as key A is A's vote: a change is refused like A's own.
    let (s, body) = call(
        &h,
        &delegate,
        Method::POST,
        &path,
        Some(vote_body("reject", &a_id)),
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT, "{body}");
    let (_, snap) = call(&h, &a, Method::GET, &format!("/v1/runs/{run}"), None).await;
    assert_eq!(snap["status"], "waiting-approval", "{snap}");
    assert_eq!(snap["interrupt"]["quorumProgress"]["accepts"], 1, "{snap}");

    // single-veto: B's reject settles it.
    let reject = json!({"resumeValue": {"action": "reject"}});
    let (s, body) = call(&h, &b, Method::POST, &path, Some(reject)).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["interrupt"]["outcome"], "rejected", "{body}");
    let done = loop {
        let (_, snap) = call(&h, &a, Method::GET, &format!("/v1/runs/{run}"), None).await;
        if snap["status"] == "failed" || snap["status"] == "completed" {
            break snap;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["error"]["details"]["decidedBy"], b_id, "{done}");
}

#[tokio::test]
async fn quorum_gate_configs_are_validated_at_registration() {
    let h = Host::start().await;
    for (extra, n, why) in [
        (json!({}), 0, "zero approvals"),
        (json!({}), 101, "over the cap"),
        (
            json!({"actions": ["accept", "refine"]}),
            3,
            "refine has no tally",
        ),
        (
            json!({"approversList": ["a", "b"]}),
            3,
            "unreachable quorum",
        ),
        (json!({"rejectionPolicy": "loudest"}), 3, "unknown policy"),
    ] {
        let mut def = quorum_workflow("q-bad", n, "majority", json!({}));
        for (k, v) in extra.as_object().unwrap() {
            def["nodes"][0]["config"][k] = v.clone();
        }
        let (s, b) = h.post("/v1/workflows", def).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{why}: {b}");
    }
    // Eligible approvers listed: a voter outside them is refused even on behalf.
    let def = quorum_workflow(
        "q-listed",
        2,
        "majority",
        json!({"approversList": ["alice", "bob"]}),
    );
    h.register(def).await;
    let run = h.create_run("q-listed", json!({})).await;
    h.wait_status(&run, &["waiting-approval"], T).await;
    let (s, b) = vote(&h, &run, "accept", "mallory").await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{b}");
    assert_eq!(b["details"]["reason"], "not_an_eligible_approver");
    for voter in ["alice", "bob"] {
        let (s, b) = vote(&h, &run, "accept", voter).await;
        assert_eq!(s, StatusCode::OK, "{b}");
    }
    assert_eq!(h.wait_terminal(&run, T).await["status"], "completed");
}

/// Fire `voters` at `run` all at once, on the hosts in turn; returns (status, body) each.
async fn concurrent_votes(
    hosts: &[&Host],
    run: &str,
    voters: &[String],
) -> Vec<(StatusCode, Value)> {
    let futs = voters.iter().enumerate().map(|(i, v)| {
        let h = hosts[i % hosts.len()];
        async move { vote(h, run, "accept", v).await }
    });
    futures::future::join_all(futs).await
}

/// N concurrent distinct voters on a quorum of `required`: exactly `required` counted, one of
/// them closes it, the rest are too late; the log has one approval.received per counted vote.
async fn assert_counted_once(hosts: &[&Host], run: &str, required: usize) {
    let voters: Vec<String> = (0..required * 3).map(|i| format!("voter-{i}")).collect();
    let results = concurrent_votes(hosts, run, &voters).await;
    let counted: Vec<&Value> = results
        .iter()
        .filter(|(s, _)| *s == StatusCode::OK)
        .map(|(_, b)| b)
        .collect();
    for (s, b) in &results {
        assert!(
            *s == StatusCode::OK || *s == StatusCode::CONFLICT,
            "{s} {b}"
        );
        if *s == StatusCode::CONFLICT {
            assert_envelope(b, "interrupt_already_resolved");
        }
    }
    assert_eq!(counted.len(), required, "{results:?}");
    assert_eq!(
        counted
            .iter()
            .filter(|b| b["interrupt"]["outcome"] == "accepted")
            .count(),
        1,
        "exactly one vote closes the quorum"
    );
    let done = hosts[0].wait_terminal(run, T).await;
    assert_eq!(done["status"], "completed", "{done}");
    let events = hosts[0].events(run).await;
    assert_event_log(run, &events);
    let received = of_type(&events, "approval.received");
    assert_eq!(received.len(), required);
    let mut accepts: Vec<u64> = received
        .iter()
        .map(|e| e["payload"]["quorumProgress"]["accepts"].as_u64().unwrap())
        .collect();
    accepts.sort();
    assert_eq!(
        accepts,
        (1..=required as u64).collect::<Vec<_>>(),
        "no tally seen twice"
    );
    assert_eq!(of_type(&events, "interrupt.resolved").len(), 1);
    assert_eq!(of_type(&events, "node.resumed").len(), 1);
}

/// One voter sending the same vote many times at once: counted once.
async fn assert_duplicates_collapse(hosts: &[&Host], run: &str) {
    let voters: Vec<String> = vec!["same-voter".to_string(); 8];
    let results = concurrent_votes(hosts, run, &voters).await;
    let fresh = results
        .iter()
        .filter(|(s, b)| *s == StatusCode::OK && b["interrupt"]["duplicate"] == false)
        .count();
    let dup = results
        .iter()
        .filter(|(s, b)| *s == StatusCode::OK && b["interrupt"]["duplicate"] == true)
        .count();
    assert_eq!((fresh, dup), (1, 7), "{results:?}");
    let snap = hosts[0].snapshot(run).await;
    assert_eq!(snap["status"], "waiting-approval");
    assert_eq!(snap["interrupt"]["quorumProgress"]["accepts"], 1, "{snap}");
    assert_eq!(
        of_type(&hosts[0].events(run).await, "approval.received").len(),
        1
    );
}

#[tokio::test]
async fn concurrent_votes_are_each_counted_once() {
    let h = Host::start().await;
    h.register(quorum_workflow("q-race", 5, "majority", json!({})))
        .await;
    let run = h.create_run("q-race", json!({})).await;
    h.wait_status(&run, &["waiting-approval"], T).await;
    assert_counted_once(&[&h], &run, 5).await;

    let run = h.create_run("q-race", json!({})).await;
    h.wait_status(&run, &["waiting-approval"], T).await;
    assert_duplicates_collapse(&[&h], &run).await;
}

#[tokio::test]
async fn postgres_votes_from_two_processes_count_once_each() {
    let Some(db) = pg_database().await else {
        return;
    };
    let opts = Options {
        database: Some(db),
        ..Default::default()
    };
    let a = Host::start_with(opts.clone()).await;
    let b = Host::start_with(opts).await;
    a.register(quorum_workflow("q-pg", 4, "majority", json!({})))
        .await;
    // Sequential votes alternate processes: each one counted, the run waits until the 4th.
    let run = a.create_run("q-pg", json!({})).await;
    a.wait_status(&run, &["waiting-approval"], T).await;
    for i in 0..4 {
        let h = if i % 2 == 0 { &a } else { &b };
        let (s, body) = vote(h, &run, "accept", &format!("seq-{i}")).await;
        assert_eq!(s, StatusCode::OK, "{body}");
        assert_eq!(
            body["interrupt"]["quorumProgress"]["accepts"],
            i + 1,
            "{body}"
        );
        let (s, body) = vote(
            if i % 2 == 0 { &b } else { &a },
            &run,
            "accept",
            &format!("seq-{i}"),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{body}");
        assert_eq!(
            body["interrupt"]["duplicate"], true,
            "the other process sees the vote: {body}"
        );
    }
    assert_eq!(a.wait_terminal(&run, T).await["status"], "completed");
    // Concurrent votes spread over both processes.
    let run = b.create_run("q-pg", json!({})).await;
    a.wait_status(&run, &["waiting-approval"], T).await;
    assert_counted_once(&[&a, &b], &run, 4).await;
    let run = a.create_run("q-pg", json!({})).await;
    b.wait_status(&run, &["waiting-approval"], T).await;
    assert_duplicates_collapse(&[&a, &b], &run).await;
}
