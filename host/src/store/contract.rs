//! Storage contract: the same black-box checks against every backend, through `dyn Store`.
//! SQLite always runs; Postgres runs against `WOPBOX_TEST_PG_URL` (scripts/test.sh starts a
//! throwaway cluster) in a fresh database per test, and fails when CI=true and it is missing.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use super::audit::NewAuditEntry;
use super::interrupts::{CloseOutcome, InterruptClose, InterruptRecord};
use super::packs::PackRecord;
use super::postgres::{scratch_database, PgSettings, PgStore};
use super::shared::SharedStore;
use super::sqlite::SqliteStore;
use super::webhooks::{AttemptOutcome, NewDelivery, Subscription, WebhookStore};
use super::*;

pub(crate) struct Backend {
    pub store: Arc<dyn Store>,
    _dir: Option<tempfile::TempDir>,
}

async fn sqlite() -> Backend {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(dir.path()).await.unwrap());
    Backend {
        store,
        _dir: Some(dir),
    }
}

/// The admin URL of the test server, or `None` (skip) outside CI.
pub(crate) fn pg_admin_url() -> Option<String> {
    match std::env::var("WOPBOX_TEST_PG_URL") {
        Ok(u) if !u.is_empty() => Some(u),
        _ => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI=true but WOPBOX_TEST_PG_URL is not set: run the tests through scripts/test.sh"
            );
            eprintln!("WOPBOX_TEST_PG_URL not set: Postgres contract test skipped");
            None
        }
    }
}

pub(crate) async fn pg_open(url: &str, lease_ms: u64) -> PgStore {
    PgStore::open(&PgSettings {
        url: url.to_string(),
        max_connections: 8,
        lease_ttl: Duration::from_millis(lease_ms),
    })
    .await
    .unwrap()
}

/// A fresh database's URL, or `None` when skipped.
pub(crate) async fn pg_database() -> Option<String> {
    let admin = pg_admin_url()?;
    Some(scratch_database(&admin).await.unwrap())
}

macro_rules! contract {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test]
            async fn sqlite() {
                super::$name(super::sqlite().await.store).await
            }
            #[tokio::test]
            async fn postgres() {
                if let Some(url) = super::pg_database().await {
                    super::$name(std::sync::Arc::new(super::pg_open(&url, 10_000).await)).await
                }
            }
        }
    )*};
}

contract!(
    workflows_are_pinned_by_digest,
    workflows_are_scoped_to_tenants,
    events_are_gap_free_and_end_at_the_terminal_event,
    concurrent_appends_interleave_without_gaps,
    idempotency_claims_are_atomic,
    unfinished_runs_are_listed_for_resume,
    outbox_lifecycle,
    audit_chain_links_and_never_forks,
    packs_and_blobs,
    interrupts_park_and_close_exactly_once,
    child_runs_are_listed_under_their_parent,
    retention_expires_finished_runs_only,
);

fn wf(id: &str, digest: &str, version: &str) -> StoredWorkflow {
    StoredWorkflow {
        tenant_id: "t".into(),
        id: id.into(),
        version: version.into(),
        digest: digest.into(),
        definition: json!({"id": id, "version": version, "zeta": 1, "alpha": [1, 2]}),
        source: "api".into(),
        created_at: "2026-01-01T00:00:00.000Z".into(),
        updated_at: format!("2026-01-01T00:00:0{version}.000Z"),
    }
}

fn run(run_id: &str, digest: &str) -> RunRecord {
    RunRecord {
        run_id: run_id.into(),
        workflow_id: "wf".into(),
        definition_digest: digest.into(),
        tenant_id: "t".into(),
        principal_id: "p".into(),
        status: "pending".into(),
        inputs: json!({"b": 1, "a": "x"}),
        variables: json!({}),
        options: json!({"tags": ["prod"]}),
        current_node_id: None,
        error: None,
        outputs: None,
        created_at: format!("2026-01-01T00:00:00.{:0>3}Z", run_id.len()),
        started_at: None,
        completed_at: None,
        updated_at: "2026-01-01T00:00:00.000Z".into(),
        parent_run_id: None,
        parent_node_id: None,
    }
}

async fn with_run(store: &Arc<dyn Store>, run_id: &str) {
    store.put_workflow(&wf("wf", "d1", "1")).await.unwrap();
    assert!(matches!(
        store.create_run(&run(run_id, "d1"), None).await.unwrap(),
        CreateRunOutcome::Created
    ));
}

async fn workflows_are_pinned_by_digest(store: Arc<dyn Store>) {
    store.put_workflow(&wf("wf", "d1", "1")).await.unwrap();
    store.put_workflow(&wf("wf", "d2", "2")).await.unwrap();
    store.put_workflow(&wf("a-first", "d3", "1")).await.unwrap();
    let got = store.get_workflow("t", "wf").await.unwrap().unwrap();
    assert_eq!((got.version.as_str(), got.digest.as_str()), ("2", "d2"));
    assert_eq!(got.created_at, "2026-01-01T00:00:00.000Z");
    // The document comes back as stored, key order included.
    assert_eq!(
        got.definition.to_string(),
        wf("wf", "d2", "2").definition.to_string()
    );
    assert_eq!(
        store.get_definition("d1").await.unwrap().unwrap()["version"],
        "1",
        "the old version stays pinned"
    );
    assert!(store.get_definition("nope").await.unwrap().is_none());
    assert!(store.get_workflow("t", "nope").await.unwrap().is_none());
    let ids = |list: Vec<StoredWorkflow>| -> Vec<(String, String)> {
        list.into_iter().map(|w| (w.tenant_id, w.id)).collect()
    };
    assert_eq!(
        ids(store.list_workflows("t").await.unwrap()),
        [("t".into(), "a-first".into()), ("t".into(), "wf".into())]
    );
}

/// A tenant sees its own definitions and the shared ones; its own shadows a shared one of the
/// same id; other tenants' definitions are invisible.
async fn workflows_are_scoped_to_tenants(store: Arc<dyn Store>) {
    let shared = |id: &str, digest: &str| StoredWorkflow {
        tenant_id: SHARED_TENANT.into(),
        ..wf(id, digest, "1")
    };
    store.put_workflow(&shared("common", "s1")).await.unwrap();
    store.put_workflow(&shared("both", "s2")).await.unwrap();
    store.put_workflow(&wf("both", "t1", "1")).await.unwrap();
    store.put_workflow(&wf("mine", "t2", "1")).await.unwrap();
    let other = StoredWorkflow {
        tenant_id: "u".into(),
        ..wf("theirs", "u1", "1")
    };
    store.put_workflow(&other).await.unwrap();

    let digest = |w: Option<StoredWorkflow>| w.map(|w| w.digest);
    assert_eq!(
        digest(store.get_workflow("t", "both").await.unwrap()).as_deref(),
        Some("t1")
    );
    assert_eq!(
        digest(store.get_workflow("u", "both").await.unwrap()).as_deref(),
        Some("s2")
    );
    assert_eq!(
        digest(store.get_workflow("u", "common").await.unwrap()).as_deref(),
        Some("s1")
    );
    assert!(store.get_workflow("t", "theirs").await.unwrap().is_none());
    assert!(store.get_workflow("u", "mine").await.unwrap().is_none());
    let seen: Vec<(String, String)> = store
        .list_workflows("t")
        .await
        .unwrap()
        .into_iter()
        .map(|w| (w.id, w.digest))
        .collect();
    let want = [("both", "t1"), ("common", "s1"), ("mine", "t2")];
    assert_eq!(seen, want.map(|(a, b)| (a.to_string(), b.to_string())));
}

async fn events_are_gap_free_and_end_at_the_terminal_event(store: Arc<dyn Store>) {
    with_run(&store, "run-a").await;
    let recs = store
        .append_events(
            "run-a",
            vec![
                NewEvent::new("run.started", json!({})),
                NewEvent::new("node.started", json!({"n": 1})).node("n1"),
            ],
            Some(RunUpdate {
                status: Some("running".into()),
                current_node_id: Some(Some("n1".into())),
                started_at: Some("2026-01-01T00:00:01.000Z".into()),
                ..Default::default()
            }),
        )
        .await
        .unwrap();
    assert_eq!(recs.iter().map(|r| r.sequence).collect::<Vec<_>>(), [0, 1]);
    let r = store.get_run("run-a").await.unwrap().unwrap();
    assert_eq!(r.status, "running");
    assert_eq!(r.current_node_id.as_deref(), Some("n1"));
    assert_eq!(r.inputs.to_string(), run("run-a", "d1").inputs.to_string());

    // A batch with events after the terminal one is refused and writes nothing.
    let bad = store
        .append_events(
            "run-a",
            vec![
                NewEvent::new("run.completed", json!({})),
                NewEvent::new("node.started", json!({})),
            ],
            None,
        )
        .await;
    assert!(matches!(bad, Err(StoreError::Backend(_))), "{bad:?}");
    assert_eq!(store.list_events("run-a", -1, 100).await.unwrap().len(), 2);

    let done = store
        .append_events(
            "run-a",
            vec![NewEvent::new("run.completed", json!({"outputs": {"x": 1}}))],
            Some(RunUpdate {
                status: Some("completed".into()),
                current_node_id: Some(None),
                outputs: Some(json!({"x": 1})),
                completed_at: Some("2026-01-01T00:00:02.000Z".into()),
                ..Default::default()
            }),
        )
        .await
        .unwrap();
    assert_eq!(done[0].sequence, 2);
    let r = store.get_run("run-a").await.unwrap().unwrap();
    assert!(r.is_terminal());
    assert_eq!(r.current_node_id, None);
    assert_eq!(r.outputs, Some(json!({"x": 1})));
    assert_eq!(r.started_at.as_deref(), Some("2026-01-01T00:00:01.000Z"));
    assert!(matches!(
        store
            .append_events(
                "run-a",
                vec![NewEvent::new("node.started", json!({}))],
                None
            )
            .await,
        Err(StoreError::RunTerminal)
    ));
    assert!(!store.set_run_status("run-a", "cancelling").await.unwrap());
    assert!(matches!(
        store
            .append_events("nope", vec![NewEvent::new("x", json!({}))], None)
            .await,
        Err(StoreError::RunNotFound)
    ));
    // Paging: after/limit.
    let page = store.list_events("run-a", 0, 1).await.unwrap();
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].sequence, 1);
    assert_eq!(page[0].node_id.as_deref(), Some("n1"));
    assert_eq!(page[0].payload, json!({"n": 1}));
}

async fn concurrent_appends_interleave_without_gaps(store: Arc<dyn Store>) {
    with_run(&store, "run-c").await;
    let mut tasks = Vec::new();
    for i in 0..16 {
        let s = store.clone();
        tasks.push(tokio::spawn(async move {
            for j in 0..5 {
                s.append_events(
                    "run-c",
                    vec![
                        NewEvent::new("node.log", json!({"i": i, "j": j})),
                        NewEvent::new("node.log", json!({"i": i, "j": j, "second": true})),
                    ],
                    None,
                )
                .await
                .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let events = store.list_events("run-c", -1, 1000).await.unwrap();
    assert_eq!(
        events.iter().map(|e| e.sequence).collect::<Vec<_>>(),
        (0..160).collect::<Vec<_>>()
    );
    // A batch is contiguous: each first event is directly followed by its second.
    for pair in events.chunks(2) {
        assert_eq!(pair[0].payload["i"], pair[1].payload["i"]);
        assert_eq!(pair[1].payload["second"], true);
    }
}

async fn idempotency_claims_are_atomic(store: Arc<dyn Store>) {
    store.put_workflow(&wf("wf", "d1", "1")).await.unwrap();
    let claim = |digest: &str| IdempotencyClaim {
        scope_key: "k1".into(),
        request_digest: digest.into(),
        response_status: 201,
        response_body: json!({"runId": "first"}),
    };
    // Concurrent duplicates: exactly one creates.
    let mut tasks = Vec::new();
    for i in 0..8 {
        let s = store.clone();
        let c = claim("same");
        tasks.push(tokio::spawn(async move {
            s.create_run(&run(&format!("run-{i}"), "d1"), Some(&c))
                .await
                .unwrap()
        }));
    }
    let mut created = 0;
    for t in tasks {
        match t.await.unwrap() {
            CreateRunOutcome::Created => created += 1,
            CreateRunOutcome::Replay { status, body } => {
                assert_eq!((status, body), (201, json!({"runId": "first"})))
            }
            CreateRunOutcome::Mismatch => panic!("same digest is no mismatch"),
        }
    }
    assert_eq!(created, 1);
    assert!(matches!(
        store
            .create_run(&run("run-x", "d1"), Some(&claim("other")))
            .await
            .unwrap(),
        CreateRunOutcome::Mismatch
    ));
    assert!(store.get_run("run-x").await.unwrap().is_none());
    // Webhook registration shares the same record table.
    assert!(matches!(
        store
            .insert_subscription(&sub("wh_1"), Some(&claim("same")))
            .await
            .unwrap(),
        CreateRunOutcome::Replay { .. }
    ));
    assert!(store.get_subscription("wh_1").await.unwrap().is_none());
}

async fn unfinished_runs_are_listed_for_resume(store: Arc<dyn Store>) {
    with_run(&store, "run-1").await;
    store.create_run(&run("run-22", "d1"), None).await.unwrap();
    store
        .append_events(
            "run-1",
            vec![NewEvent::new("run.failed", json!({}))],
            Some(RunUpdate::status("failed")),
        )
        .await
        .unwrap();
    assert!(store.set_run_status("run-22", "cancelling").await.unwrap());
    let runs = store.list_unfinished_runs().await.unwrap();
    // Postgres lists only runs whose lease is free or expired: these were created by this
    // process and are still leased to it (see postgres_leases below).
    let ids: Vec<_> = runs.iter().map(|r| r.run_id.as_str()).collect();
    assert!(ids == ["run-22"] || ids.is_empty(), "{ids:?}");
    if let Some(r) = runs.first() {
        assert_eq!(r.status, "cancelling");
    }
}

fn sub(id: &str) -> Subscription {
    Subscription {
        webhook_id: id.into(),
        tenant_id: "t".into(),
        principal_id: "p".into(),
        url: "https://example.com/".into(),
        events: vec!["run.completed".into()],
        tags: Some(vec!["prod".into()]),
        secret: "s".into(),
        secret_fingerprint: "f".into(),
        status: "active".into(),
        created_at: "2026-01-01T00:00:00.000Z".into(),
    }
}

fn delivery(id: &str, wh: &str, seq: i64, due: i64) -> NewDelivery {
    NewDelivery {
        delivery_id: id.into(),
        webhook_id: wh.into(),
        run_id: "run-1".into(),
        event_id: format!("evt-{seq}"),
        event_type: "run.completed".into(),
        sequence: seq,
        body: "{}".into(),
        next_attempt_ms: due,
        created_at: "2026-01-01T00:00:00.000Z".into(),
    }
}

async fn outbox_lifecycle(store: Arc<dyn Store>) {
    store.insert_subscription(&sub("wh_a"), None).await.unwrap();
    store.insert_subscription(&sub("wh_b"), None).await.unwrap();
    assert_eq!(
        store.get_subscription("wh_a").await.unwrap().unwrap().tags,
        Some(vec!["prod".to_string()])
    );

    assert_eq!(store.fanout_watermark("run-1").await.unwrap(), 0);
    let rows = [
        delivery("d1", "wh_a", 1, 100),
        delivery("d2", "wh_a", 2, 50),
        delivery("d3", "wh_b", 1, 10),
    ];
    store.commit_fanout("run-1", 3, &rows).await.unwrap();
    // Re-running the same fan-out (after a crash) neither duplicates rows nor moves back.
    store
        .commit_fanout("run-1", 2, &[delivery("d9", "wh_a", 1, 100)])
        .await
        .unwrap();
    assert_eq!(store.fanout_watermark("run-1").await.unwrap(), 3);

    assert!(store
        .due_deliveries("wh_a", 49, 10)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(store.next_due_ms().await.unwrap(), Some(10));
    let due: Vec<String> = store
        .due_deliveries("wh_a", 100, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.delivery_id)
        .collect();
    assert_eq!(
        due,
        ["d2", "d1"],
        "per subscription, earliest due first; the duplicate was ignored"
    );

    let now = "2026-01-02T00:00:00.000Z";
    store
        .record_attempt(
            "d1",
            1,
            &AttemptOutcome::Retry {
                http_status: Some(500),
                error: "x".into(),
                next_attempt_ms: 500,
            },
            now,
        )
        .await
        .unwrap();
    store
        .record_attempt(
            "d2",
            1,
            &AttemptOutcome::Delivered { http_status: 204 },
            now,
        )
        .await
        .unwrap();
    store
        .record_attempt(
            "d3",
            3,
            &AttemptOutcome::Dead {
                http_status: None,
                error: "down".into(),
            },
            now,
        )
        .await
        .unwrap();
    let d1 = store.get_delivery("d1").await.unwrap().unwrap();
    assert_eq!(
        (
            d1.status.as_str(),
            d1.attempts,
            d1.next_attempt_ms,
            d1.last_status
        ),
        ("pending", 1, 500, Some(500))
    );
    // A recorded attempt makes the row due again at its retry time.
    assert_eq!(
        store.due_deliveries("wh_a", 500, 10).await.unwrap().len(),
        1
    );
    assert_eq!(
        store.get_delivery("d2").await.unwrap().unwrap().status,
        "delivered"
    );
    let dead = store.dead_letters("wh_b", 10, None).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].last_error.as_deref(), Some("down"));
    let cursor = Some((now.to_string(), "d3".to_string()));
    assert!(store
        .dead_letters("wh_b", 10, cursor)
        .await
        .unwrap()
        .is_empty());

    // Deleting a subscription cancels what is pending, and a late attempt cannot revive it.
    assert!(store.delete_subscription("wh_a", now).await.unwrap());
    assert!(!store.delete_subscription("wh_a", now).await.unwrap());
    assert_eq!(
        store.get_delivery("d1").await.unwrap().unwrap().status,
        "cancelled"
    );
    store
        .record_attempt(
            "d1",
            2,
            &AttemptOutcome::Delivered { http_status: 200 },
            now,
        )
        .await
        .unwrap();
    assert_eq!(
        store.get_delivery("d1").await.unwrap().unwrap().status,
        "cancelled"
    );
    assert_eq!(store.list_active_subscriptions().await.unwrap().len(), 1);

    // Purge: settled rows before the first cutoff, dead letters only before the second.
    assert_eq!(
        store
            .purge_deliveries("2026-01-03T00:00:00.000Z", "2026-01-01T00:00:00.000Z")
            .await
            .unwrap(),
        2
    );
    assert!(store.get_delivery("d3").await.unwrap().is_some());
    assert_eq!(
        store
            .purge_deliveries("2026-01-03T00:00:00.000Z", "2026-01-03T00:00:00.000Z")
            .await
            .unwrap(),
        1
    );
    assert!(store.get_delivery("d3").await.unwrap().is_none());
}

fn audit_entry(n: usize) -> NewAuditEntry {
    NewAuditEntry {
        occurred_at: "2026-01-01T00:00:00.000Z".into(),
        actor: "key-1".into(),
        action: "run.create".into(),
        target: format!("run-{n}"),
        details: json!({"n": n}),
    }
}

async fn audit_chain_links_and_never_forks(store: Arc<dyn Store>) {
    assert_eq!(store.audit_head().await.unwrap(), 0);
    let mut tasks = Vec::new();
    for n in 0..12 {
        let s = store.clone();
        tasks.push(tokio::spawn(async move {
            s.audit_append(audit_entry(n), crate::audit::chain::entry_hash)
                .await
                .unwrap()
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(store.audit_head().await.unwrap(), 12);
    let entries = store.audit_entries(1, 12).await.unwrap();
    assert_eq!(entries.len(), 12);
    assert_eq!(entries[0].prev_hash, None);
    for w in entries.windows(2) {
        assert_eq!(w[1].seq, w[0].seq + 1);
        assert_eq!(w[1].prev_hash.as_deref(), Some(w[0].entry_hash.as_str()));
        assert_eq!(w[0].entry_hash, crate::audit::chain::entry_hash(&w[0]));
    }
    assert!(store.audit_last_checkpoint().await.unwrap().is_none());
    let cp = audit::Checkpoint {
        checkpoint_id: "cp-5".into(),
        at_sequence: 5,
        merkle_root: "ab".into(),
        signature: "sig".into(),
        created_at: "2026-01-01T00:00:00.000Z".into(),
    };
    assert!(store.audit_put_checkpoint(&cp, 0).await.unwrap());
    assert_eq!(
        store.audit_last_checkpoint().await.unwrap(),
        Some(cp.clone())
    );
    // A minter that read the chain before cp-5 was stored covers (0, 8]: it must not be
    // stored, or verification would read it as covering (5, 8] and fail.
    let stale = audit::Checkpoint {
        checkpoint_id: "cp-8".into(),
        at_sequence: 8,
        ..cp.clone()
    };
    assert!(!store.audit_put_checkpoint(&stale, 0).await.unwrap());
    // The same range minted twice is stored once.
    assert!(!store.audit_put_checkpoint(&cp, 0).await.unwrap());
    let next = audit::Checkpoint {
        checkpoint_id: "cp-9".into(),
        at_sequence: 9,
        ..cp.clone()
    };
    assert!(store.audit_put_checkpoint(&next, 5).await.unwrap());
    assert_eq!(store.audit_checkpoints(1, 4).await.unwrap(), vec![]);
    assert_eq!(
        store.audit_checkpoints(5, 12).await.unwrap(),
        vec![cp, next]
    );
}

fn pack(name: &str, version: &str, created: &str) -> PackRecord {
    PackRecord {
        tenant_id: "t".into(),
        name: name.into(),
        version: version.into(),
        runtime: "wasm".into(),
        manifest: json!({"name": name, "version": version}),
        entry_sha256: "e1".into(),
        tarball_sha256: None,
        type_ids: vec![format!("{name}.do")],
        published_by: "key-1".into(),
        created_at: created.into(),
    }
}

async fn packs_and_blobs(store: Arc<dyn Store>) {
    let bytes: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    store.put_blob("e1", &bytes).await.unwrap();
    store.put_blob("e1", &bytes).await.unwrap();
    assert_eq!(store.get_blob("e1").await.unwrap(), Some(bytes));
    assert_eq!(store.get_blob("e2").await.unwrap(), None);
    let t = "2026-01-01T00:00:00.000Z";
    assert!(store.insert_pack(&pack("zeta", "1.0.0", t)).await.unwrap());
    assert!(store.insert_pack(&pack("alpha", "1.0.0", t)).await.unwrap());
    assert!(!store.insert_pack(&pack("zeta", "1.0.0", t)).await.unwrap());
    let names: Vec<_> = store
        .list_packs()
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.name)
        .collect();
    assert_eq!(names, ["zeta", "alpha"], "same timestamp: insertion order");
    let got = store.get_pack("t", "zeta", "1.0.0").await.unwrap().unwrap();
    assert_eq!(got.type_ids, ["zeta.do"]);
    assert!(store.delete_pack("t", "zeta", "1.0.0").await.unwrap());
    assert!(!store.delete_pack("t", "zeta", "1.0.0").await.unwrap());
    assert!(store
        .get_pack("t", "zeta", "1.0.0")
        .await
        .unwrap()
        .is_none());
}

// ── Postgres only: several processes on one database ─────────────────────────────────────

#[tokio::test]
async fn postgres_leases_fence_appends_and_expire_to_a_new_owner() {
    let Some(url) = pg_database().await else {
        return;
    };
    let a: Arc<dyn Store> = Arc::new(pg_open(&url, 800).await);
    let b = Arc::new(pg_open(&url, 800).await);
    with_run(&a, "run-l").await;
    a.append_events("run-l", vec![NewEvent::new("run.started", json!({}))], None)
        .await
        .unwrap();
    // B may not write into A's run while A's lease is live, nor claim it.
    assert!(matches!(
        b.append_events(
            "run-l",
            vec![NewEvent::new("node.started", json!({}))],
            None
        )
        .await,
        Err(StoreError::LeaseLost)
    ));
    assert!(b.list_unfinished_runs().await.unwrap().is_empty());
    // Renewal keeps it; after the TTL without renewal B claims it and A is fenced.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let a_shared = pg_open(&url, 800).await; // a second handle cannot renew A's leases
    assert_eq!(a_shared.renew_leases().await.unwrap(), 0);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let claimed = b.list_unfinished_runs().await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].run_id, "run-l");
    assert!(
        b.list_unfinished_runs().await.unwrap().is_empty(),
        "claimed once"
    );
    assert!(matches!(
        a.append_events(
            "run-l",
            vec![NewEvent::new("node.started", json!({}))],
            None
        )
        .await,
        Err(StoreError::LeaseLost)
    ));
    let recs = b
        .append_events("run-l", vec![NewEvent::new("run.resumed", json!({}))], None)
        .await
        .unwrap();
    assert_eq!(recs[0].sequence, 1, "the log continues without a gap");
    // Strict fencing: once B's lease lapses, a third process still cannot write before it
    // claims the run.
    let c = pg_open(&url, 800).await;
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert!(matches!(
        c.append_events(
            "run-l",
            vec![NewEvent::new("node.started", json!({}))],
            None
        )
        .await,
        Err(StoreError::LeaseLost)
    ));
    assert_eq!(b.renew_leases().await.unwrap(), 1);
    assert_eq!(b.release_leases().await.unwrap(), 1);
    let released = c.list_unfinished_runs().await.unwrap();
    assert_eq!(released.len(), 1, "a released lease is claimable at once");
}

#[tokio::test]
async fn postgres_delivery_claims_hand_each_due_row_to_one_process() {
    let Some(url) = pg_database().await else {
        return;
    };
    let a = pg_open(&url, 10_000).await;
    let b = pg_open(&url, 10_000).await;
    a.insert_subscription(&sub("wh_a"), None).await.unwrap();
    let rows: Vec<_> = (0..20)
        .map(|i| delivery(&format!("d{i:02}"), "wh_a", i, 10))
        .collect();
    a.commit_fanout("run-1", 20, &rows).await.unwrap();
    let (x, y) = tokio::join!(
        a.due_deliveries("wh_a", 100, 15),
        b.due_deliveries("wh_a", 100, 15)
    );
    let (x, y) = (x.unwrap(), y.unwrap());
    assert_eq!(x.len() + y.len(), 20);
    let mut ids: Vec<_> = x
        .iter()
        .chain(y.iter())
        .map(|d| d.delivery_id.clone())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 20, "no row was handed out twice");
    // Claimed rows are not due again until recorded (or the claim expires).
    assert!(a.due_deliveries("wh_a", 100, 50).await.unwrap().is_empty());
    a.record_attempt(
        &x[0].delivery_id,
        1,
        &AttemptOutcome::Retry {
            http_status: Some(503),
            error: "busy".into(),
            next_attempt_ms: 200,
        },
        "2026-01-01T00:00:00.000Z",
    )
    .await
    .unwrap();
    assert_eq!(b.due_deliveries("wh_a", 200, 50).await.unwrap().len(), 1);
}

#[tokio::test]
async fn postgres_notifies_other_processes() {
    let Some(url) = pg_database().await else {
        return;
    };
    let a: Arc<dyn Store> = Arc::new(pg_open(&url, 10_000).await);
    let b = pg_open(&url, 10_000).await;
    let mut rx = b.listen().await.unwrap();
    with_run(&a, "run-n").await;
    a.append_events(
        "run-n",
        vec![
            NewEvent::new("run.started", json!({})),
            NewEvent::new("node.started", json!({})),
        ],
        None,
    )
    .await
    .unwrap();
    a.insert_subscription(&sub("wh_n"), None).await.unwrap();
    let n1 = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        n1,
        shared::Notice::Events {
            run_id: "run-n".into(),
            first: 0,
            last: 1
        }
    );
    let n2 = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n2, shared::Notice::Webhooks);
    // B's own appends are not echoed back to B.
    let b_run = Arc::new(b);
    b_run.create_run(&run("run-m", "d1"), None).await.unwrap();
    b_run
        .append_events("run-m", vec![NewEvent::new("run.started", json!({}))], None)
        .await
        .unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(300), rx.recv())
            .await
            .is_err(),
        "no echo of B's own events"
    );
}

fn interrupt(id: &str, run_id: &str, key: &str) -> InterruptRecord {
    InterruptRecord {
        interrupt_id: id.into(),
        run_id: run_id.into(),
        node_id: "gate".into(),
        key: key.into(),
        kind: "approval".into(),
        status: "pending".into(),
        data: json!({"actions": ["accept"]}),
        timeout_ms: Some(5000),
        token_kid: "k1".into(),
        token_hash: "h1".into(),
        inspect_token_hash: "h2".into(),
        requested_event_id: "evt_req".into(),
        requested_at: "2026-01-01T00:00:00.000Z".into(),
        token_expires_at: "2026-01-01T00:30:00.000Z".into(),
        deadline_at: None,
        resolution: None,
        resolved_by: None,
        resolved_at: None,
        resumed_event_id: None,
    }
}

fn close(status: &str) -> InterruptClose {
    InterruptClose {
        status: status.into(),
        resolution: json!({"action": "accept"}),
        resolved_by: "key-1".into(),
        resolved_at: "2026-01-01T00:01:00.000Z".into(),
        resumed_event_id: Some("evt_res".into()),
    }
}

async fn interrupts_park_and_close_exactly_once(store: Arc<dyn Store>) {
    with_run(&store, "run-i").await;
    store
        .append_events("run-i", vec![NewEvent::new("run.started", json!({}))], None)
        .await
        .unwrap();
    let rec = interrupt("int_1", "run-i", "run-i:gate:1");
    let parked = store
        .park_interrupt(
            &rec,
            vec![NewEvent::new("interrupt.requested", json!({}))],
            RunUpdate::status("waiting-approval"),
        )
        .await
        .unwrap();
    assert_eq!(parked[0].sequence, 1);
    assert_eq!(
        store.get_run("run-i").await.unwrap().unwrap().status,
        "waiting-approval"
    );
    assert_eq!(store.get_interrupt("int_1").await.unwrap().unwrap(), rec);
    assert_eq!(
        store
            .interrupt_by_key("run-i", "run-i:gate:1")
            .await
            .unwrap()
            .unwrap(),
        rec
    );
    assert!(store
        .interrupt_by_key("run-i", "run-i:gate:2")
        .await
        .unwrap()
        .is_none());
    // The same key cannot be parked twice (and the failed park appends nothing).
    assert!(store
        .park_interrupt(
            &interrupt("int_2", "run-i", "run-i:gate:1"),
            vec![NewEvent::new("x", json!({}))],
            RunUpdate::default()
        )
        .await
        .is_err());
    assert_eq!(store.list_events("run-i", -1, 100).await.unwrap().len(), 2);

    // Concurrent closes: exactly one commits its events.
    let attempts = (0..6).map(|_| {
        let s = store.clone();
        async move {
            s.close_interrupt(
                "int_1",
                &close("resolved"),
                vec![NewEvent::new("interrupt.resolved", json!({}))],
                RunUpdate::status("running"),
            )
            .await
            .unwrap()
        }
    });
    let outcomes = futures::future::join_all(attempts).await;
    let won = outcomes
        .iter()
        .filter(|o| matches!(o, CloseOutcome::Closed(_)))
        .count();
    let lost = outcomes
        .iter()
        .filter(|o| matches!(o, CloseOutcome::NotPending(s) if s == "resolved"))
        .count();
    assert_eq!((won, lost), (1, 5), "{outcomes:?}");
    let events = store.list_events("run-i", -1, 100).await.unwrap();
    assert_eq!(
        events
            .iter()
            .filter(|e| e.event_type == "interrupt.resolved")
            .count(),
        1
    );
    let done = store.get_interrupt("int_1").await.unwrap().unwrap();
    assert_eq!(done.status, "resolved");
    assert_eq!(done.resolution, Some(json!({"action": "accept"})));
    assert_eq!(done.resumed_event_id.as_deref(), Some("evt_res"));
    assert_eq!(
        store.get_run("run-i").await.unwrap().unwrap().status,
        "running"
    );
    assert!(matches!(
        store
            .close_interrupt("int_9", &close("resolved"), vec![], RunUpdate::default())
            .await
            .unwrap(),
        CloseOutcome::NotFound
    ));

    // A terminal run: the close is refused and rolled back (the row stays pending).
    store
        .park_interrupt(
            &interrupt("int_3", "run-i", "run-i:gate:2"),
            vec![],
            RunUpdate::default(),
        )
        .await
        .unwrap();
    store
        .append_events(
            "run-i",
            vec![NewEvent::new("run.cancelled", json!({}))],
            None,
        )
        .await
        .unwrap();
    assert!(matches!(
        store
            .close_interrupt(
                "int_3",
                &close("resolved"),
                vec![NewEvent::new("interrupt.resolved", json!({}))],
                RunUpdate::default()
            )
            .await
            .unwrap(),
        CloseOutcome::RunTerminal
    ));
    assert_eq!(
        store.get_interrupt("int_3").await.unwrap().unwrap().status,
        "pending"
    );
    let cause = json!({"invalidatedBy": "parent-cancelled", "parentRunId": "p"});
    assert_eq!(
        store
            .cancel_interrupts("run-i", Some(&cause))
            .await
            .unwrap(),
        1
    );
    let all = store.run_interrupts("run-i").await.unwrap();
    let states: Vec<&str> = all.iter().map(|r| r.status.as_str()).collect();
    assert_eq!(states, ["resolved", "cancelled"]);
    // The cause is kept on the cancelled row only; the resolved one keeps its resolution.
    assert_eq!(all[1].resolution, Some(cause));
    assert_eq!(all[0].resolution, Some(json!({"action": "accept"})));
    // Nothing is pending any more: a second cancel touches no row.
    assert_eq!(store.cancel_interrupts("run-i", None).await.unwrap(), 0);
}

#[tokio::test]
async fn postgres_interrupt_resolution_is_not_fenced_but_parking_is() {
    let Some(url) = pg_database().await else {
        return;
    };
    let a: Arc<dyn Store> = Arc::new(pg_open(&url, 10_000).await);
    let b: Arc<dyn Store> = Arc::new(pg_open(&url, 10_000).await);
    with_run(&a, "run-f").await;
    // Only the lease owner parks ...
    assert!(matches!(
        b.park_interrupt(
            &interrupt("int_b", "run-f", "k-b"),
            vec![NewEvent::new("interrupt.requested", json!({}))],
            RunUpdate::default()
        )
        .await,
        Err(StoreError::LeaseLost)
    ));
    assert!(
        b.get_interrupt("int_b").await.unwrap().is_none(),
        "rolled back"
    );
    a.park_interrupt(
        &interrupt("int_a", "run-f", "k-a"),
        vec![NewEvent::new("interrupt.requested", json!({}))],
        RunUpdate::default(),
    )
    .await
    .unwrap();
    // ... but any process may resolve (the resolver is rarely the executing process).
    assert!(matches!(
        b.close_interrupt("int_a", &close("resolved"), vec![NewEvent::new("interrupt.resolved", json!({}))], RunUpdate::status("running"))
            .await
            .unwrap(),
        CloseOutcome::Closed(ref r) if r[0].sequence == 1
    ));
}

async fn child_runs_are_listed_under_their_parent(store: Arc<dyn Store>) {
    with_run(&store, "parent").await;
    for (id, node) in [("child-b", "n2"), ("child-a", "n1")] {
        let mut child = run(id, "d1");
        child.parent_run_id = Some("parent".into());
        child.parent_node_id = Some(node.into());
        store.create_run(&child, None).await.unwrap();
    }
    let kids = store.list_child_runs("parent").await.unwrap();
    // Oldest first (created_at, then run id).
    let got: Vec<_> = kids
        .iter()
        .map(|c| {
            (
                c.run_id.as_str(),
                c.parent_node_id.as_str(),
                c.status.as_str(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [("child-a", "n1", "pending"), ("child-b", "n2", "pending")]
    );
    assert!(store.list_child_runs("child-a").await.unwrap().is_empty());
    let child = store.get_run("child-a").await.unwrap().unwrap();
    assert_eq!(child.parent_run_id.as_deref(), Some("parent"));
    assert_eq!(child.parent_node_id.as_deref(), Some("n1"));
    assert_eq!(
        store
            .get_run("parent")
            .await
            .unwrap()
            .unwrap()
            .parent_run_id,
        None
    );

    // Variable writes land with their event; an update without them keeps the bag.
    let update = RunUpdate {
        variables: Some(json!({"out": "v"})),
        ..Default::default()
    };
    store
        .append_events(
            "parent",
            vec![NewEvent::new("variable.changed", json!({}))],
            Some(update),
        )
        .await
        .unwrap();
    store
        .append_events(
            "parent",
            vec![NewEvent::new("node.started", json!({}))],
            None,
        )
        .await
        .unwrap();
    let parent = store.get_run("parent").await.unwrap().unwrap();
    assert_eq!(parent.variables, json!({"out": "v"}));
}

/// Retention: finished runs past the cutoff become tombstones and lose their logs in batches;
/// unfinished runs stay whatever their age; idempotency records and old tombstones go too.
async fn retention_expires_finished_runs_only(store: Arc<dyn Store>) {
    use super::retention::Cutoffs;
    /// Create `rec` and append `events` (if any): the last one terminal when `completed_at`.
    async fn logged(
        store: &Arc<dyn Store>,
        rec: RunRecord,
        events: Vec<NewEvent>,
        completed_at: Option<&str>,
    ) {
        let id = rec.run_id.clone();
        assert!(matches!(
            store.create_run(&rec, None).await.unwrap(),
            CreateRunOutcome::Created
        ));
        let update = completed_at.map(|t| RunUpdate {
            status: Some("completed".into()),
            completed_at: Some(t.into()),
            ..Default::default()
        });
        store.append_events(&id, events, update).await.unwrap();
    }
    let completed = || vec![NewEvent::new("run.completed", json!({}))];
    store.put_workflow(&wf("wf", "d1", "1")).await.unwrap();
    // A log of 11 events (10 + terminal): with batches of 4 rows it takes several batches.
    let mut events: Vec<NewEvent> = (0..10)
        .map(|i| NewEvent::new("node.log", json!({"i": i})))
        .collect();
    events.extend(completed());
    logged(
        &store,
        run("run-done", "d1"),
        events,
        Some("2026-01-01T00:00:05.000Z"),
    )
    .await;
    // Created as long ago, but not finished.
    let started = vec![NewEvent::new("run.started", json!({}))];
    logged(&store, run("run-open", "d1"), started, None).await;
    // Finished long ago, but a child of the unfinished run: kept (its parent reads it).
    let mut child = run("run-child", "d1");
    child.parent_run_id = Some("run-open".into());
    child.parent_node_id = Some("n1".into());
    logged(&store, child, completed(), Some("2026-01-01T00:00:05.000Z")).await;
    // Finished after the cutoff: kept.
    let recent = run("run-recent", "d1");
    logged(
        &store,
        recent,
        completed(),
        Some("2026-06-01T00:00:00.000Z"),
    )
    .await;
    let claim = IdempotencyClaim {
        scope_key: "retention-key".into(),
        request_digest: "d".into(),
        response_status: 201,
        response_body: json!({"runId": "run-keyed"}),
    };
    assert!(matches!(
        store
            .create_run(&run("run-keyed", "d1"), Some(&claim))
            .await
            .unwrap(),
        CreateRunOutcome::Created
    ));

    let cut = |tombstones_before: &str| Cutoffs {
        runs_before: "2026-03-01T00:00:00.000Z".into(),
        idempotency_before: "2026-03-01T00:00:00.000Z".into(),
        tombstones_before: tombstones_before.into(),
        now: "2026-03-02T00:00:00.000Z".into(),
    };
    let mut batches = 0;
    let mut total = super::retention::Purged::default();
    loop {
        let p = store
            .purge_batch(&cut("2000-01-01T00:00:00.000Z"), 4)
            .await
            .unwrap()
            .expect("nobody else is sweeping");
        if p.is_empty() {
            break;
        }
        total.add(p);
        batches += 1;
        assert!(batches < 20, "the sweep never ends");
    }
    assert!(batches >= 3, "11 events in batches of 4 rows: {batches}");
    assert_eq!(total.runs, 1, "{total:?}");
    assert_eq!(total.events, 11, "{total:?}");
    assert_eq!(total.idempotency, 1, "{total:?}");
    assert_eq!(total.tombstones, 0, "{total:?}");

    assert!(store.get_run("run-done").await.unwrap().is_none());
    assert!(store
        .list_events("run-done", -1, 100)
        .await
        .unwrap()
        .is_empty());
    let x = store.expired_run("run-done").await.unwrap().unwrap();
    assert_eq!(x.tenant_id, "t");
    assert_eq!(x.completed_at, "2026-01-01T00:00:05.000Z");
    assert_eq!(x.expired_at, "2026-03-02T00:00:00.000Z");
    for kept in ["run-open", "run-child", "run-recent", "run-keyed"] {
        assert!(store.get_run(kept).await.unwrap().is_some(), "{kept}");
        assert!(store.expired_run(kept).await.unwrap().is_none(), "{kept}");
    }
    assert_eq!(
        store.list_events("run-open", -1, 100).await.unwrap().len(),
        1
    );
    // The key's record is gone: the same key now creates a new run.
    assert!(matches!(
        store
            .create_run(&run("run-keyed-again", "d1"), Some(&claim))
            .await
            .unwrap(),
        CreateRunOutcome::Created
    ));
    // Tombstones older than their cutoff go; then the id is simply unknown.
    let p = store
        .purge_batch(&cut("2026-04-01T00:00:00.000Z"), 4)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(p.tombstones, 1, "{p:?}");
    assert!(store.expired_run("run-done").await.unwrap().is_none());
}

#[tokio::test]
async fn postgres_one_process_sweeps_at_a_time() {
    use super::retention::{Cutoffs, RetentionStore};
    let Some(url) = pg_database().await else {
        return;
    };
    let store = pg_open(&url, 10_000).await;
    let cut = Cutoffs {
        runs_before: "2026-03-01T00:00:00.000Z".into(),
        idempotency_before: "2026-03-01T00:00:00.000Z".into(),
        tombstones_before: "2000-01-01T00:00:00.000Z".into(),
        now: "2026-03-02T00:00:00.000Z".into(),
    };
    assert!(store.purge_batch(&cut, 10).await.unwrap().is_some());
    // Another process's sweep holds the lock: this one skips instead of waiting.
    let mut other = <sqlx::PgConnection as sqlx::Connection>::connect(&url)
        .await
        .unwrap();
    let mut tx = sqlx::Connection::begin(&mut other).await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(super::postgres::RETENTION_LOCK)
        .execute(&mut *tx)
        .await
        .unwrap();
    assert!(store.purge_batch(&cut, 10).await.unwrap().is_none());
    tx.rollback().await.unwrap();
    assert!(store.purge_batch(&cut, 10).await.unwrap().is_some());
}
