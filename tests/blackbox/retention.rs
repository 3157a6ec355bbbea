//! Retention (docs/operations.md "Retention"): a finished run's snapshot and events expire
//! `--retention-events` after it completed and then answer `410 Gone` (canonical envelope,
//! `details.expiredAt`) on every read; idempotency records expire after
//! `--retention-idempotency`, after which the key starts a fresh request; a run that has not
//! finished is never deleted, however old; the rows are really gone from the database. On
//! SQLite and on Postgres (two processes sharing the store, each running the cleanup). Tiny,
//! development-only windows and a fast sweep stand in for 7 days and 24 hours.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sqlx::Connection;

use crate::harness::*;

const T: Duration = Duration::from_secs(20);

fn short(database: Option<String>, data_dir: Option<std::path::PathBuf>) -> Options {
    Options {
        database,
        data_dir,
        extra_args: [
            "--retention-events",
            "2s",
            "--retention-idempotency",
            "1s",
            "--retention-sweep-interval",
            "100ms",
            // Tiny batches: a run's log takes several cleanup transactions.
            "--retention-batch",
            "4",
            "--lease-ttl-ms",
            "1000",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
        ..Default::default()
    }
}

/// Poll `path` on `h` until it answers `want`; returns the body.
async fn until_status(h: &Host, path: &str, want: StatusCode) -> Value {
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let (s, body) = h.get(path).await;
        if s == want {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{path} still answers {s} {body}, never {want}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn keyed(h: &Host, nonce: &str) -> reqwest::RequestBuilder {
    h.req(Method::POST, "/v1/runs")
        .header("idempotency-key", "retention-key")
        .json(&json!({"workflowId": "conformance-idempotent", "inputs": {"nonce": nonce}}))
}

/// Rows of `run_id` left in the runs table and the event log.
async fn rows_left(h: &Host, database: Option<&str>, run_id: &str) -> (i64, i64) {
    const RUNS: &str = "SELECT COUNT(*) FROM runs WHERE run_id = ";
    const EVENTS: &str = "SELECT COUNT(*) FROM run_events WHERE run_id = ";
    match database {
        None => {
            let path = h.data_dir.join("wopbox.db");
            let mut c = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
                .await
                .unwrap();
            let runs: (i64,) = sqlx::query_as(&format!("{RUNS}?"))
                .bind(run_id)
                .fetch_one(&mut c)
                .await
                .unwrap();
            let events: (i64,) = sqlx::query_as(&format!("{EVENTS}?"))
                .bind(run_id)
                .fetch_one(&mut c)
                .await
                .unwrap();
            (runs.0, events.0)
        }
        Some(url) => {
            let mut c = sqlx::PgConnection::connect(url).await.unwrap();
            let runs: (i64,) = sqlx::query_as(&format!("{RUNS}$1"))
                .bind(run_id)
                .fetch_one(&mut c)
                .await
                .unwrap();
            let events: (i64,) = sqlx::query_as(&format!("{EVENTS}$1"))
                .bind(run_id)
                .fetch_one(&mut c)
                .await
                .unwrap();
            (runs.0, events.0)
        }
    }
}

/// The whole retention contract, with runs created on `a` and read on `b` (the same host on
/// SQLite; another process on Postgres).
async fn finished_runs_and_keys_expire_unfinished_runs_stay(
    a: &Host,
    b: &Host,
    database: Option<&str>,
) {
    let doc = b.discovery().await;
    // A development window (below the 7-day floor) is not advertised as a retention window.
    let retention = &doc["capabilities"]["production"]["retention"];
    assert_eq!(retention["supported"], false, "{doc}");
    assert!(retention.get("minWindowSeconds").is_none(), "{doc}");

    let done = a.create_run("conformance-multi-node", json!({})).await;
    a.wait_terminal(&done, T).await;
    let logged = a.events(&done).await.len();
    assert!(logged > 4, "a log that takes several batches: {logged}");
    let parked = a.create_run("conformance-approval", json!({})).await;
    a.wait_status(&parked, &["waiting-approval"], T).await;
    let (s, first) = read(keyed(a, "a").send().await.unwrap()).await;
    assert_eq!(s, StatusCode::CREATED, "{first}");

    // Expired: 410 with the canonical envelope on the snapshot and both event surfaces.
    let run = format!("/v1/runs/{done}");
    let gone = until_status(b, &run, StatusCode::GONE).await;
    assert_envelope(&gone, "run_expired");
    assert_eq!(gone["details"]["runId"], json!(done), "{gone}");
    assert!(gone["details"]["expiredAt"].as_str().is_some(), "{gone}");
    for path in [format!("{run}/events"), format!("{run}/events/poll")] {
        let (s, body) = a.get(&path).await;
        assert_eq!(s, StatusCode::GONE, "{path}: {body}");
        assert_envelope(&body, "run_expired");
    }
    let (s, body) = a.post(&format!("{run}/cancel"), json!({})).await;
    assert_eq!(s, StatusCode::GONE, "{body}");
    // An id that never existed is still plain 404.
    let (s, body) = a.get("/v1/runs/run-never-existed").await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{body}");
    assert_envelope(&body, "not_found");
    // The rows are deleted, not hidden (the log goes in batches: wait for the last one).
    let deadline = tokio::time::Instant::now() + T;
    while rows_left(a, database, &done).await != (0, 0) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "rows of {done} left"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The parked run is older than two windows by now, but not finished: untouched, and still
    // resolvable.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let snap = a.snapshot(&parked).await;
    assert_eq!(snap["status"], "waiting-approval", "{snap}");
    let events = b.events(&parked).await;
    let seqs: Vec<u64> = events
        .iter()
        .map(|e| e["sequence"].as_u64().unwrap())
        .collect();
    assert_eq!(
        seqs,
        (0..events.len() as u64).collect::<Vec<_>>(),
        "log intact"
    );
    assert!(Host::event_types(&events).contains(&"interrupt.requested".to_string()));
    let (s, body) = b.accept(&parked, "gate").await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(a.wait_terminal(&parked, T).await["status"], "completed");

    // The idempotency record expired: the key with another body is a fresh request (201),
    // no longer `409 idempotency_key_mismatch`.
    let deadline = tokio::time::Instant::now() + T;
    let second = loop {
        let (s, body) = read(keyed(b, "b").send().await.unwrap()).await;
        if s == StatusCode::CREATED {
            break body;
        }
        assert_eq!(s, StatusCode::CONFLICT, "{body}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "the key never expired"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_ne!(second["runId"], first["runId"]);
}

#[tokio::test]
async fn sqlite_expires_finished_runs_and_idempotency_records() {
    let h = Host::start_with(short(None, None)).await;
    finished_runs_and_keys_expire_unfinished_runs_stay(&h, &h, None).await;
}

#[tokio::test]
async fn postgres_expires_finished_runs_and_idempotency_records_across_processes() {
    let Some(db) = pg_database().await else {
        return;
    };
    let (mut a, b, _tmp) = two_processes(|dir| short(Some(db.clone()), dir)).await;
    finished_runs_and_keys_expire_unfinished_runs_stay(&a, &b, Some(&db)).await;
    a.kill9();
}

#[tokio::test]
async fn a_malformed_retention_setting_stops_the_host_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let serve = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_wopbox"))
            .args(["serve", "--listen", "127.0.0.1:0", "--data"])
            .arg(dir.path())
            .args(args)
            .output()
            .unwrap()
    };
    let out = serve(&["--retention-events", "7 weeks"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--retention-events"), "{err}");
    // The same from the config file's [retention] table.
    let config = dir.path().join("wopbox.toml");
    std::fs::write(&config, "[retention]\nidempotency = \"a day\"\n").unwrap();
    let out = serve(&["--config", config.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("idempotency"), "{err}");
}
