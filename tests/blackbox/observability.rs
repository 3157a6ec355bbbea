//! Logs and tracing: `--log-format json` lines carry the run's identity from the enclosing
//! spans, W3C `traceparent` is honoured (or ignored when malformed), persisted with the run,
//! continued after a restart, returned on responses and sent on webhook deliveries, and the
//! OTel test seam shows the `openwop.*` spans with the spec's attribute names.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{json, Map, Value};

use crate::harness::*;
use crate::webhooks::Receiver;

const TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const CLIENT_SPAN: &str = "b7ad6b7169203331";

fn traceparent() -> String {
    format!("00-{TRACE}-{CLIENT_SPAN}-01")
}

/// POST /v1/runs with an optional `traceparent`; returns (run id, response traceparent).
async fn create_traced(h: &Host, workflow: &str, tp: Option<&str>) -> (String, String) {
    let mut req = h
        .req(Method::POST, "/v1/runs")
        .json(&json!({"workflowId": workflow}));
    if let Some(tp) = tp {
        req = req.header("traceparent", tp);
    }
    let resp = req.send().await.unwrap();
    let header = resp
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let (status, body) = read(resp).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    (body["runId"].as_str().unwrap().to_string(), header)
}

/// `00-<32 hex>-<16 hex>-<2 hex>` split into (trace id, span id); panics when malformed.
fn parts(tp: &str) -> (String, String) {
    let p: Vec<&str> = tp.split('-').collect();
    assert_eq!(p.len(), 4, "traceparent {tp:?}");
    assert_eq!(p[0], "00");
    assert!(p[1].len() == 32 && p[1].bytes().all(|b| b.is_ascii_hexdigit()));
    assert!(p[2].len() == 16 && p[2].bytes().all(|b| b.is_ascii_hexdigit()));
    assert_ne!(p[1], "0".repeat(32));
    (p[1].to_string(), p[2].to_string())
}

/// One log line's fields, the event's own and those of every enclosing span, flattened.
fn flatten(line: &Value) -> Map<String, Value> {
    let mut out = Map::new();
    for span in line["spans"].as_array().into_iter().flatten() {
        for (k, v) in span.as_object().into_iter().flatten() {
            out.insert(k.clone(), v.clone());
        }
    }
    for (k, v) in line.as_object().into_iter().flatten() {
        if k != "spans" {
            out.insert(k.clone(), v.clone());
        }
    }
    out
}

/// Wait until a JSON log line satisfies `pred`; every line so far must be JSON.
async fn wait_log(h: &Host, what: &str, pred: impl Fn(&Map<String, Value>) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let lines = h.stderr.lock().unwrap().clone();
        for l in &lines {
            let v: Value = serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("stderr line is not JSON ({e}): {l}"));
            if pred(&flatten(&v)) {
                return v;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no log line for {what}; stderr: {lines:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn json_logs() -> Options {
    Options {
        extra_args: vec!["--log-format".into(), "json".into()],
        capture_stderr: true,
        env: vec![("RUST_LOG".into(), "wopbox=info".into())],
        ..Options::default()
    }
}

#[tokio::test]
async fn json_logs_carry_run_tenant_error_code_and_correlation_id() {
    json_logs_carry_the_runs_identity(json_logs()).await;
}

/// The production profile's log requirement (run id, tenant, terminal status, error code,
/// correlation id) holds on Postgres too.
#[tokio::test]
async fn postgres_json_logs_carry_run_tenant_error_code_and_correlation_id() {
    let Some(db) = pg_database().await else {
        return;
    };
    json_logs_carry_the_runs_identity(Options {
        database: Some(db),
        ..json_logs()
    })
    .await;
}

async fn json_logs_carry_the_runs_identity(opts: Options) {
    let h = Host::start_with(opts).await;
    let (run, tp) = create_traced(&h, "conformance-failure", Some(&traceparent())).await;
    let snap = h.wait_terminal(&run, Duration::from_secs(10)).await;
    assert_eq!(snap["status"], "failed");
    let tenant = snap["owner"]["tenant"].as_str().unwrap().to_string();
    let code = snap["error"]["code"].as_str().unwrap().to_string();
    // The run's response traceparent continues the caller's trace.
    assert_eq!(parts(&tp).0, TRACE);

    // The failing node's line: run id, tenant and correlation id come from the enclosing
    // run span, the error code from the event itself.
    let node_line = wait_log(&h, "the failed node", |f| {
        f.get("openwop.run_id") == Some(&json!(run))
            && f.get("status") == Some(&json!("failed"))
            && f.get("nodeId") == Some(&json!("fail"))
    })
    .await;
    let f = flatten(&node_line);
    assert_eq!(f["level"], "WARN");
    assert_eq!(f["openwop.tenant_id"], json!(tenant));
    assert_eq!(f["errorCode"], json!(code));
    assert_eq!(f["correlation_id"], json!(TRACE));
    assert_eq!(f["openwop.node_type"], "core.fail");
    // Fields are inherited from spans, outermost first: … → openwop.run → openwop.node.
    let names: Vec<&str> = node_line["spans"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    let run_at = names.iter().position(|n| *n == "openwop.run").unwrap();
    assert_eq!(names.get(run_at + 1), Some(&"openwop.node"), "{names:?}");

    // The run's terminal record (observability.md `metricKind`).
    let terminal = wait_log(&h, "the run's terminal record", |f| {
        f.get("metricKind") == Some(&json!("openwop.run.completed"))
            && f.get("runId") == Some(&json!(run))
    })
    .await;
    let f = flatten(&terminal);
    assert_eq!(f["status"], "failed");
    assert_eq!(f["errorCode"], json!(code));
    assert_eq!(f["level"], "ERROR");
    assert_eq!(f["openwop.tenant_id"], json!(tenant));
    assert_eq!(f["correlation_id"], json!(TRACE));
    assert!(f["durationMs"].is_u64());

    let created = wait_log(&h, "the run.created record", |f| {
        f.get("metricKind") == Some(&json!("openwop.run.created"))
            && f.get("runId") == Some(&json!(run))
    })
    .await;
    let f = flatten(&created);
    assert_eq!(f["workflowId"], "conformance-failure");
    assert_eq!(f["correlation_id"], json!(TRACE));
}

#[tokio::test]
async fn trace_context_is_persisted_returned_and_malformed_headers_ignored() {
    let h = Host::start().await;
    let (run, tp) = create_traced(&h, "conformance-noop", Some(&traceparent())).await;
    let (trace, run_span) = parts(&tp);
    assert_eq!(trace, TRACE);
    assert_ne!(run_span, CLIENT_SPAN, "the run gets a span of its own");
    h.wait_terminal(&run, Duration::from_secs(10)).await;
    let resp = h
        .req(Method::GET, &format!("/v1/runs/{run}"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.headers()["traceparent"].to_str().unwrap(),
        tp,
        "GET returns the run's traceparent"
    );
    let (_, snap) = read(resp).await;
    assert_eq!(snap["traceContext"]["traceparent"], json!(tp));
    assert_eq!(snap["traceContext"]["parentSpanId"], CLIENT_SPAN);
    let resp = h
        .req(Method::GET, &format!("/v1/runs/{run}/events/poll"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["traceparent"].to_str().unwrap(), tp);

    // Malformed headers are ignored, never an error: the run starts a trace of its own.
    for bad in [
        "garbage",
        "00-00000000000000000000000000000000-b7ad6b7169203331-01",
        "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
        "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    ] {
        let (run, tp) = create_traced(&h, "conformance-noop", Some(bad)).await;
        let (trace, _) = parts(&tp);
        assert_ne!(trace, TRACE, "{bad} was not ignored");
        let snap = h.snapshot(&run).await;
        assert_eq!(snap["traceContext"]["traceparent"], json!(tp));
        assert!(snap["traceContext"].get("parentSpanId").is_none());
    }
    // Without a header there is a fresh trace too, different per run.
    let (_, a) = create_traced(&h, "conformance-noop", None).await;
    let (_, b) = create_traced(&h, "conformance-noop", None).await;
    assert_ne!(parts(&a).0, parts(&b).0);
    // Any other response carries a traceparent in the caller's trace.
    let resp = h
        .req(Method::GET, "/v1/workflows")
        .header("traceparent", traceparent())
        .send()
        .await
        .unwrap();
    let (trace, span) = parts(resp.headers()["traceparent"].to_str().unwrap());
    assert_eq!(trace, TRACE);
    assert_ne!(span, CLIENT_SPAN);
}

fn seam_spans(spans: &Value, name: &str) -> Vec<Value> {
    spans["spans"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["name"] == name)
        .cloned()
        .collect()
}

#[tokio::test]
async fn otel_seam_shows_openwop_spans_and_a_restart_continues_the_trace() {
    let opts = Options {
        extra_args: vec!["--enable-test-seams".into()],
        ..Options::default()
    };
    let mut h = Host::start_with(opts.clone()).await;
    let (_, disc) = h.get("/.well-known/openwop").await;
    assert_eq!(
        disc["capabilities"]["observability"]["testSeams"]["otelScrape"],
        true
    );
    let (run, tp) = create_traced(&h, "conformance-approval", Some(&traceparent())).await;
    let (_, run_span) = parts(&tp);
    h.wait_status(&run, &["waiting-approval"], Duration::from_secs(10))
        .await;
    let (s, spans) = h
        .get(&format!("/v1/host/sample/test/otel/spans?runId={run}"))
        .await;
    assert_eq!(s, StatusCode::OK, "{spans}");
    let runs = seam_spans(&spans, "openwop.run");
    assert_eq!(runs.len(), 1, "{spans}");
    let r = &runs[0];
    assert_eq!(r["attributes"]["openwop.run_id"], json!(run));
    assert_eq!(
        r["attributes"]["openwop.workflow_id"],
        "conformance-approval"
    );
    assert!(r["attributes"]["openwop.tenant_id"].is_string());
    assert_eq!(r["attributes"]["openwop.protocol_version"], "1.0");
    assert_eq!(r["traceId"], TRACE);
    assert_eq!(r["spanId"], json!(run_span));
    assert_eq!(r["parentSpanId"], CLIENT_SPAN);
    let nodes = seam_spans(&spans, "openwop.node.core.approvalGate");
    assert_eq!(nodes.len(), 1, "{spans}");
    let n = &nodes[0];
    assert_eq!(n["attributes"]["openwop.node_id"], "gate");
    assert_eq!(n["attributes"]["openwop.node_type"], "core.approvalGate");
    assert_eq!(n["attributes"]["openwop.node_attempt"], 0);
    assert_eq!(n["traceId"], TRACE);
    assert_eq!(n["parentSpanId"], json!(run_span));
    let waits = seam_spans(&spans, "openwop.interrupt");
    assert_eq!(waits.len(), 1, "{spans}");
    assert_eq!(waits[0]["attributes"]["openwop.interrupt_kind"], "approval");
    assert!(waits[0]["attributes"]["openwop.interrupt_id"].is_string());
    assert_eq!(waits[0]["parentSpanId"], n["spanId"]);
    assert_eq!(
        waits[0]["ended"], false,
        "the interrupt span stays open while parked"
    );
    // Another tenant's (or an unknown) run is not found; runId is required.
    let (s, _) = h
        .get("/v1/host/sample/test/otel/spans?runId=run-nope")
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, b) = h.get("/v1/host/sample/test/otel/spans").await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_envelope(&b, "validation_error");

    // Restart on the same data: the resumed run's spans are in the same trace, under the
    // same run span.
    let dir = h.data_dir.clone();
    let _tmp = h.take_tmp();
    h.kill9();
    let h = Host::start_with(Options {
        data_dir: Some(dir),
        ..opts
    })
    .await;
    h.wait_status(&run, &["waiting-approval"], Duration::from_secs(10))
        .await;
    let (s, b) = h.accept(&run, "gate").await;
    assert!(s.is_success(), "{s} {b}");
    h.wait_terminal(&run, Duration::from_secs(10)).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    let spans = loop {
        let (_, spans) = h
            .get(&format!("/v1/host/sample/test/otel/spans?runId={run}"))
            .await;
        let ended = seam_spans(&spans, "openwop.run")
            .first()
            .is_some_and(|r| r["ended"] == true);
        if ended || Instant::now() > deadline {
            break spans;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let runs = seam_spans(&spans, "openwop.run");
    assert_eq!(runs.len(), 1, "{spans}");
    assert_eq!(runs[0]["traceId"], TRACE);
    assert_eq!(runs[0]["spanId"], json!(run_span));
    assert_eq!(runs[0]["ended"], true);
    let nodes = seam_spans(&spans, "openwop.node.core.approvalGate");
    assert_eq!(nodes.len(), 1, "{spans}");
    assert_eq!(nodes[0]["traceId"], TRACE);
    assert_eq!(nodes[0]["parentSpanId"], json!(run_span));
    let resp = h
        .req(Method::GET, &format!("/v1/runs/{run}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["traceparent"].to_str().unwrap(), tp);
}

#[tokio::test]
async fn webhook_deliveries_carry_the_runs_trace() {
    let rx = Receiver::start(&[], 200, Duration::ZERO).await;
    let h = Host::start_with(Options {
        extra_args: vec!["--webhook-allow-loopback".into()],
        ..Options::default()
    })
    .await;
    let (s, b) = h
        .post(
            "/v1/webhooks",
            json!({"url": rx.url(), "events": ["run.completed"]}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let mut req = h
        .req(Method::POST, "/v1/runs")
        .json(&json!({"workflowId": "conformance-noop"}));
    req = req
        .header("traceparent", traceparent())
        .header("tracestate", "congo=t61rcWkgMzE");
    let (s, body) = read(req.send().await.unwrap()).await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    let run = body["runId"].as_str().unwrap().to_string();
    let snap = h.wait_terminal(&run, Duration::from_secs(10)).await;
    let run_tp = snap["traceContext"]["traceparent"].as_str().unwrap();
    let hits = rx
        .wait_for(
            "the run.completed delivery",
            Duration::from_secs(10),
            |hits| hits.iter().any(|x| x.json()["runId"] == json!(run)),
        )
        .await;
    let hit = hits
        .iter()
        .find(|x| x.json()["runId"] == json!(run))
        .unwrap();
    let (trace, span) = parts(hit.header("traceparent"));
    assert_eq!(trace, TRACE, "the delivery is in the run's trace");
    assert_ne!(span, CLIENT_SPAN);
    assert_ne!(span, parts(run_tp).1, "the delivery has a span of its own");
    assert_eq!(hit.header("tracestate"), "congo=t61rcWkgMzE");
}

#[tokio::test]
async fn a_sub_workflow_child_continues_the_parents_trace_under_the_invoke_node() {
    let h = Host::start_with(Options {
        extra_args: vec!["--enable-test-seams".into()],
        ..Options::default()
    })
    .await;
    let (parent, tp) =
        create_traced(&h, "conformance-subworkflow-parent", Some(&traceparent())).await;
    let snap = h.wait_terminal(&parent, Duration::from_secs(10)).await;
    assert_eq!(snap["status"], "completed", "{snap}");
    let child = snap["childRuns"][0]["runId"].as_str().unwrap().to_string();
    let (_, pspans) = h
        .get(&format!("/v1/host/sample/test/otel/spans?runId={parent}"))
        .await;
    let invoke = pspans["spans"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "openwop.node.core.subWorkflow")
        .unwrap_or_else(|| panic!("no invoke-node span: {pspans}"))
        .clone();
    assert_eq!(invoke["parentSpanId"], json!(parts(&tp).1));
    // The child's run span: same trace, child of the parent's invoke-node span, with the
    // openwop.parent.* attributes.
    let csnap = h.snapshot(&child).await;
    let ctp = csnap["traceContext"]["traceparent"].as_str().unwrap();
    assert_eq!(parts(ctp).0, TRACE);
    assert_eq!(csnap["traceContext"]["parentSpanId"], invoke["spanId"]);
    let (_, cspans) = h
        .get(&format!("/v1/host/sample/test/otel/spans?runId={child}"))
        .await;
    let runs = seam_spans(&cspans, "openwop.run");
    assert_eq!(runs.len(), 1, "{cspans}");
    assert_eq!(runs[0]["traceId"], TRACE);
    assert_eq!(runs[0]["parentSpanId"], invoke["spanId"]);
    assert_eq!(
        runs[0]["attributes"]["openwop.parent.run_id"],
        json!(parent)
    );
    assert_eq!(
        runs[0]["attributes"]["openwop.parent.node_id"],
        invoke["attributes"]["openwop.node_id"]
    );
}

/// The interrupt lines (parked, then how the wait ended) and a cancelled run's terminal line
/// carry the run id, tenant, status, error code and correlation id like the node lines.
#[tokio::test]
async fn json_logs_for_interrupts_and_cancellation() {
    let h = Host::start_with(json_logs()).await;
    let (run, _) = create_traced(&h, "conformance-approval", Some(&traceparent())).await;
    let snap = h
        .wait_status(&run, &["waiting-approval"], Duration::from_secs(10))
        .await;
    let tenant = snap["owner"]["tenant"].as_str().unwrap().to_string();
    let parked = wait_log(&h, "the parked line", |f| {
        f.get("metricKind") == Some(&json!("openwop.interrupt.requested"))
            && f.get("runId") == Some(&json!(run))
    })
    .await;
    let f = flatten(&parked);
    assert_eq!(f["status"], "waiting-approval");
    assert_eq!(f["interruptKind"], "approval");
    assert_eq!(f["nodeId"], "gate");
    assert!(f["interruptId"].is_string());
    assert_eq!(f["openwop.run_id"], json!(run));
    assert_eq!(f["openwop.tenant_id"], json!(tenant));
    assert_eq!(f["correlation_id"], json!(TRACE));
    assert_eq!(
        f.get("openwop.interrupt_id"),
        f.get("interruptId"),
        "{parked}"
    );

    let (s, b) = h
        .post(
            &format!("/v1/runs/{run}/interrupts/gate"),
            json!({"resumeValue": {"action": "reject"}}),
        )
        .await;
    assert!(s.is_success(), "{s} {b}");
    let ended = wait_log(&h, "the wait-ended line", |f| {
        f.get("message") == Some(&json!("interrupt wait ended"))
            && f.get("runId") == Some(&json!(run))
    })
    .await;
    let f = flatten(&ended);
    assert_eq!(f["status"], "resolved");
    assert_eq!(f["errorCode"], "interrupt_rejected");
    assert_eq!(f["openwop.tenant_id"], json!(tenant));
    assert_eq!(f["correlation_id"], json!(TRACE));
    assert!(f["durationMs"].is_u64());
    let terminal = wait_log(&h, "the rejected run's terminal line", |f| {
        f.get("metricKind") == Some(&json!("openwop.run.completed"))
            && f.get("runId") == Some(&json!(run))
    })
    .await;
    let f = flatten(&terminal);
    assert_eq!(f["status"], "failed");
    assert_eq!(f["errorCode"], "interrupt_rejected");
    assert!(
        f["error"].as_str().is_some_and(|m| m.contains("rejected")),
        "{f:?}"
    );

    // Cancelled while parked: the wait ends `cancelled`, the run's line says `cancelled`.
    let (run, _) = create_traced(&h, "conformance-approval", None).await;
    h.wait_status(&run, &["waiting-approval"], Duration::from_secs(10))
        .await;
    let (s, b) = h.post(&format!("/v1/runs/{run}/cancel"), json!({})).await;
    assert!(s.is_success(), "{s} {b}");
    let ended = wait_log(&h, "the cancelled wait", |f| {
        f.get("message") == Some(&json!("interrupt wait ended"))
            && f.get("runId") == Some(&json!(run))
    })
    .await;
    assert_eq!(flatten(&ended)["status"], "cancelled");
    let terminal = wait_log(&h, "the cancelled run's terminal line", |f| {
        f.get("metricKind") == Some(&json!("openwop.run.completed"))
            && f.get("runId") == Some(&json!(run))
    })
    .await;
    let f = flatten(&terminal);
    assert_eq!(f["status"], "cancelled");
    assert_eq!(f["openwop.run_id"], json!(run));
    assert_eq!(f["openwop.tenant_id"], json!(tenant));
    assert!(f["correlation_id"].is_string());
}
