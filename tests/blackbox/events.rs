use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use crate::harness::*;

#[tokio::test]
async fn poll_cursor_semantics() {
    let h = Host::start().await;
    let run_id = h.create_run("conformance-multi-node", json!({})).await;
    h.wait_terminal(&run_id, Duration::from_secs(5)).await;
    let all = h.events(&run_id).await;
    assert_event_log(&run_id, &all);
    assert_eq!(all.len(), 8);

    // Repeated polls of a terminal run are identical.
    let (_, a) = h.get(&format!("/v1/runs/{run_id}/events/poll")).await;
    let (_, b) = h
        .get(&format!("/v1/runs/{run_id}/events/poll?lastSequence=-1"))
        .await;
    assert_eq!(a["events"], b["events"]);
    assert_eq!(a["events"].as_array().unwrap().len(), 8);
    assert_eq!(a["isTerminal"], true);
    assert_eq!(a["runStatus"], "completed");

    // Strictly after the cursor; `since` alias; limit paging.
    let (_, p) = h
        .get(&format!("/v1/runs/{run_id}/events/poll?lastSequence=2"))
        .await;
    let seqs: Vec<i64> = p["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["sequence"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, (3..8).collect::<Vec<_>>());
    let (_, p) = h
        .get(&format!("/v1/runs/{run_id}/events/poll?since=6"))
        .await;
    assert_eq!(p["events"].as_array().unwrap().len(), 1);
    let (_, p) = h
        .get(&format!(
            "/v1/runs/{run_id}/events/poll?lastSequence=-1&limit=3"
        ))
        .await;
    assert_eq!(p["events"].as_array().unwrap().len(), 3);
    assert_eq!(p["hasMore"], true);
    assert_eq!(p["lastEventSeq"], 2);

    // Past the end: empty, never an error.
    let (s, p) = h
        .get(&format!("/v1/runs/{run_id}/events/poll?lastSequence=100"))
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(p["events"], json!([]));

    // Bad cursors.
    for bad in ["abc", "-2", "1.5"] {
        let (s, b) = h
            .get(&format!("/v1/runs/{run_id}/events/poll?lastSequence={bad}"))
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}");
        assert_envelope(&b, "validation_error");
    }
    let (s, b) = h.get("/v1/runs/run-nope/events/poll").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_envelope(&b, "not_found");
}

#[tokio::test]
async fn poll_long_polls_for_the_next_event() {
    let h = Host::start().await;
    let run_id = h
        .create_run("conformance-delay", json!({"delayMs": 400}))
        .await;
    h.wait_status(&run_id, &["running"], Duration::from_secs(2))
        .await;
    let events = h.events(&run_id).await;
    let last = events.last().unwrap()["sequence"].as_i64().unwrap();
    let t = std::time::Instant::now();
    let (s, p) = h
        .get(&format!(
            "/v1/runs/{run_id}/events/poll?lastSequence={last}&waitMs=5000"
        ))
        .await;
    assert_eq!(s, StatusCode::OK);
    assert!(!p["events"].as_array().unwrap().is_empty(), "{p}");
    assert!(t.elapsed() < Duration::from_secs(4));
}

#[tokio::test]
async fn sse_replays_streams_and_closes_after_terminal() {
    let h = Host::start().await;
    let run_id = h.create_run("conformance-multi-node", json!({})).await;
    h.wait_terminal(&run_id, Duration::from_secs(5)).await;

    // debug = every event; ids are sequences; the stream closes after the terminal event.
    let sse = h
        .sse(
            &format!("/v1/runs/{run_id}/events?streamMode=debug"),
            None,
            Duration::from_secs(5),
        )
        .await;
    assert_eq!(sse.status, StatusCode::OK);
    assert!(sse.content_type.starts_with("text/event-stream"));
    assert!(sse.closed, "stream must close after the terminal event");
    let polled = h.events(&run_id).await;
    assert_eq!(sse.frames.len(), polled.len());
    for (f, e) in sse.frames.iter().zip(&polled) {
        assert_eq!(f.id.as_deref(), Some(e["sequence"].to_string().as_str()));
        assert_eq!(f.event.as_deref(), e["type"].as_str());
        assert_eq!(&f.data, e);
    }

    // Default `updates` mode hides node.started.
    let sse = h
        .sse(
            &format!("/v1/runs/{run_id}/events"),
            None,
            Duration::from_secs(5),
        )
        .await;
    assert!(sse.closed);
    assert!(sse
        .frames
        .iter()
        .all(|f| f.event.as_deref() != Some("node.started")));
    assert_eq!(
        sse.frames.last().unwrap().event.as_deref(),
        Some("run.completed")
    );

    // Last-Event-ID resumes strictly after that sequence.
    let sse = h
        .sse(
            &format!("/v1/runs/{run_id}/events?streamMode=debug"),
            Some("4"),
            Duration::from_secs(5),
        )
        .await;
    let ids: Vec<_> = sse.frames.iter().map(|f| f.id.clone().unwrap()).collect();
    assert_eq!(ids, ["5", "6", "7"]);

    // A client that accepts only JSON gets the poll shape from the stream route.
    let (s, b) = h.get(&format!("/v1/runs/{run_id}/events")).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(b["events"].as_array().unwrap(), &polled);

    // Unsupported stream modes and bad resume ids.
    let (s, b) = h
        .get(&format!("/v1/runs/{run_id}/events?streamMode=values"))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_envelope(&b, "unsupported_stream_mode");
    assert!(b["details"]["supported"].is_array());
    let resp = h
        .req(reqwest::Method::GET, &format!("/v1/runs/{run_id}/events"))
        .header("last-event-id", "x")
        .send()
        .await
        .unwrap();
    let (s, b) = read(resp).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_envelope(&b, "validation_error");
    let (s, b) = h.get("/v1/runs/run-nope/events").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_envelope(&b, "not_found");
}

#[tokio::test]
async fn sse_live_tail_with_keepalives() {
    let h = Host::start_with(Options {
        extra_args: vec!["--sse-keepalive-ms".into(), "100".into()],
        ..Default::default()
    })
    .await;
    let run_id = h
        .create_run("conformance-delay", json!({"delayMs": 800}))
        .await;
    let sse = h
        .sse(
            &format!("/v1/runs/{run_id}/events?streamMode=debug"),
            None,
            Duration::from_secs(10),
        )
        .await;
    assert!(sse.closed);
    assert!(
        sse.comments.iter().any(|c| c == "keepalive"),
        "keep-alive comments: {:?}",
        sse.comments
    );
    let frames: Vec<_> = sse.frames.iter().map(|f| f.data.clone()).collect();
    assert_event_log(&run_id, &frames);
    assert_eq!(
        Host::event_types(&frames),
        [
            "run.started",
            "node.started",
            "node.completed",
            "run.completed"
        ]
    );
}
