//! kill -9 and restart on the same data dir: nothing a client saw is lost, and mid-flight runs
//! are resumed to a terminal state.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::harness::*;

#[tokio::test]
async fn kill9_restart_keeps_everything_and_resumes_in_flight_runs() {
    let mut h = Host::start().await;
    let dir = h.data_dir.clone();
    let _tmp = h.take_tmp();

    // A finished run, an idempotent create, and runs that are mid-flight at the kill.
    let done = h.create_run("conformance-multi-node", json!({})).await;
    h.wait_terminal(&done, Duration::from_secs(5)).await;
    let resp = h
        .req(Method::POST, "/v1/runs")
        .header("idempotency-key", "durable-key")
        .json(&json!({"workflowId": "conformance-idempotent", "inputs": {"nonce": "d"}}))
        .send()
        .await
        .unwrap();
    let (_, idem_body) = read(resp).await;
    let slow = h
        .create_run("conformance-delay", json!({"delayMs": 1500}))
        .await;
    // Its delay node has started (committed) when the host dies: it is re-dispatched as
    // attempt 2 after the restart.
    h.wait_for_event(&slow, "node.started").await;
    let mut seen = std::collections::HashMap::new();
    for id in [&done, &slow] {
        seen.insert(id.clone(), h.events(id).await);
    }
    let pending = h
        .create_run("conformance-delay", json!({"delayMs": 10}))
        .await;

    h.kill9();

    let h = Host::start_with(Options {
        data_dir: Some(dir),
        ..Default::default()
    })
    .await;
    // Everything seen before the crash is still there, unchanged.
    for (id, before) in &seen {
        let after = h.events(id).await;
        assert!(after.len() >= before.len());
        assert_eq!(
            &after[..before.len()],
            &before[..],
            "events of {id} survived verbatim"
        );
    }
    // In-flight runs are resumed and finish; their logs stay well-formed.
    for id in [&slow, &pending] {
        let snap = h.wait_terminal(id, Duration::from_secs(10)).await;
        assert_eq!(snap["status"], "completed", "{id}: {snap}");
        let events = h.events(id).await;
        assert_event_log(id, &events);
    }
    let slow_events = h.events(&slow).await;
    let types = Host::event_types(&slow_events);
    assert!(types.contains(&"run.resumed".to_string()), "{types:?}");
    let attempts: Vec<_> = slow_events
        .iter()
        .filter(|e| e["type"] == "node.started")
        .map(|e| e["payload"]["attempt"].as_u64().unwrap())
        .collect();
    assert_eq!(
        attempts,
        [1, 2],
        "the interrupted node is re-dispatched as attempt 2"
    );
    assert_eq!(h.snapshot(&done).await["status"], "completed");

    // The idempotency record survived: same key + body replays the same run.
    let resp = h
        .req(Method::POST, "/v1/runs")
        .header("idempotency-key", "durable-key")
        .json(&json!({"workflowId": "conformance-idempotent", "inputs": {"nonce": "d"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.headers().get("openwop-idempotent-replay").unwrap(),
        "true"
    );
    let (status, body) = read(resp).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(body["runId"], idem_body["runId"]);
}

#[tokio::test]
async fn in_flight_runs_resume_after_kill9_and_stay_cancellable() {
    let mut h = Host::start().await;
    let dir = h.data_dir.clone();
    let _tmp = h.take_tmp();
    // Many runs in flight at the kill: each must end terminal after restart, never hang.
    let mut ids = Vec::new();
    for _ in 0..20 {
        ids.push(
            h.create_run("conformance-cancellable", json!({"delayMs": 60000}))
                .await,
        );
    }
    h.kill9();
    let h = Host::start_with(Options {
        data_dir: Some(dir),
        ..Default::default()
    })
    .await;
    for id in &ids {
        let snap = h
            .wait_status(id, &["running"], Duration::from_secs(5))
            .await;
        assert_eq!(snap["status"], "running");
        let (s, _) = h.post(&format!("/v1/runs/{id}/cancel"), json!({})).await;
        assert_eq!(s, StatusCode::OK);
    }
    for id in &ids {
        let snap = h.wait_terminal(id, Duration::from_secs(5)).await;
        assert_eq!(snap["status"], "cancelled");
        assert_event_log(id, &h.events(id).await);
    }
}

#[tokio::test]
async fn sigterm_shuts_down_promptly_even_with_open_streams() {
    let mut h = Host::start().await;
    let dir = h.data_dir.clone();
    let _tmp = h.take_tmp();
    let run_id = h.create_run("conformance-cancellable", json!({})).await;
    h.wait_status(&run_id, &["running"], Duration::from_secs(2))
        .await;
    // An SSE client stays connected to the running run while the host shuts down.
    let client = h.client.clone();
    let url = h.url(&format!("/v1/runs/{run_id}/events"));
    let key = h.key.clone();
    let stream = tokio::spawn(async move {
        let resp = client
            .get(url)
            .bearer_auth(key)
            .header("accept", "text/event-stream")
            .send()
            .await
            .unwrap();
        let _ = resp.bytes().await;
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let status = h
        .terminate(Duration::from_secs(10))
        .expect("wopbox exits after SIGTERM");
    assert!(status.success(), "clean exit: {status:?}");
    stream.abort();

    // The unfinished run resumes on the next start.
    let h = Host::start_with(Options {
        data_dir: Some(dir),
        ..Default::default()
    })
    .await;
    assert_eq!(h.snapshot(&run_id).await["status"], "running");
    let (s, _) = h
        .post(&format!("/v1/runs/{run_id}/cancel"), json!({}))
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        h.wait_terminal(&run_id, Duration::from_secs(5)).await["status"],
        "cancelled"
    );
}

#[tokio::test]
async fn a_second_process_on_the_same_sqlite_data_dir_is_refused_until_the_first_is_gone() {
    let mut first = Host::start().await;
    let dir = first.data_dir.clone();
    let tmp = first.take_tmp();
    let run = first
        .create_run("conformance-cancellable", json!({"delayMs": 60000}))
        .await;
    // Without leases both would drive the parked run: the second refuses to start.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wopbox"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--api-key",
            KEY,
            "--data",
        ])
        .arg(&dir)
        .env_remove("WOPBOX_DATABASE_URL")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run wopbox");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("in use by another wopbox process"),
        "{stderr}"
    );
    assert_eq!(first.snapshot(&run).await["status"], "running");
    // The lock goes with the process, even a killed one: a restart finds it free.
    first.kill9();
    let second = Host::start_with(Options {
        data_dir: Some(dir),
        ..Options::default()
    })
    .await;
    let (s, b) = second
        .post(&format!("/v1/runs/{run}/cancel"), json!({}))
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(
        second.wait_terminal(&run, Duration::from_secs(20)).await["status"],
        "cancelled"
    );
    drop(tmp);
}
