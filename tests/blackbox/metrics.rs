//! `GET /metrics`: who may scrape it, and that runs, nodes, sandbox work, limit breaches and
//! admission refusals move the right series by the right amounts.

use std::collections::HashMap;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::harness::{assert_envelope, Host, Options, KEY};
use crate::packs::packs_dir;
use crate::scopes::{call, config_path, host_with_config_and, mint};

/// One scrape: the raw text and `series{labels}` -> value.
struct Scrape {
    text: String,
    values: HashMap<String, f64>,
}

impl Scrape {
    fn get(&self, series: &str) -> f64 {
        self.values.get(series).copied().unwrap_or(0.0)
    }
}

fn parse(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (series, value) = l
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("bad line {l:?}"));
            let value: f64 = value
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {l:?}"));
            (series.to_string(), value)
        })
        .collect()
}

async fn scrape_with(h: &Host, key: &str) -> Scrape {
    let resp = h
        .client
        .get(h.url("/metrics"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    assert!(ct.starts_with("application/openmetrics-text"), "{ct}");
    let text = resp.text().await.unwrap();
    assert!(text.trim_end().ends_with("# EOF"), "{text}");
    Scrape {
        values: parse(&text),
        text,
    }
}

/// Scrape until `ready` holds: sinks count an event right after its commit, so a client that
/// saw the commit can be a moment ahead of the counters.
async fn scrape_until(h: &Host, ready: impl Fn(&Scrape) -> bool) -> Scrape {
    for _ in 0..100 {
        let s = scrape_with(h, KEY).await;
        if ready(&s) {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "metrics never caught up:\n{}",
        scrape_with(h, KEY).await.text
    );
}

fn node_done<'a>(events: &'a [Value], ty: &str) -> &'a Value {
    events
        .iter()
        .find(|e| e["type"] == ty)
        .map(|e| &e["payload"])
        .unwrap_or_else(|| panic!("no {ty} in {events:#?}"))
}

const MEM_HOG: &str = "(block $d (loop $g (br_if $d (i32.eq (memory.grow (i32.const 64)) (i32.const -1))) (br $g))) unreachable";

#[tokio::test]
async fn runs_nodes_sandbox_fuel_and_breaches_move_their_series_by_the_right_amounts() {
    let h = Host::start_with(Options {
        extra_args: vec!["--packs".into(), packs_dir().display().to_string()],
        ..Options::default()
    })
    .await;
    h.install_rfc0008(
        "vendor.hostile.mem",
        "1.0.0",
        "vendor.hostile.mem.n",
        MEM_HOG,
    )
    .await;
    let before = scrape_with(&h, KEY).await;

    let noop = h.create_run("conformance-noop", json!({})).await;
    let snap = h.wait_terminal(&noop, Duration::from_secs(20)).await;
    assert_eq!(snap["status"], "completed", "{snap}");
    let (greet_snap, greet_events) = h
        .run_single(
            "wf-greet",
            "vendor.wopbox.greet.hello",
            json!({"name": "m"}),
        )
        .await;
    assert_eq!(greet_snap["status"], "completed", "{greet_snap}");
    let (mem_snap, mem_events) = h
        .run_single("wf-mem", "vendor.hostile.mem.n", json!({}))
        .await;
    assert_eq!(mem_snap["status"], "failed", "{mem_snap}");

    let completed = "openwop_run_completed_total{openwop_run_status=\"completed\"}";
    let failed = "openwop_run_completed_total{openwop_run_status=\"failed\"}";
    let after = scrape_until(&h, |s| {
        s.get(completed) - before.get(completed) >= 2.0 && s.get(failed) - before.get(failed) >= 1.0
    })
    .await;
    let delta = |series: &str| after.get(series) - before.get(series);

    // Runs: three accepted (tenant of the legacy key), two completed, one failed.
    assert_eq!(
        delta("openwop_run_created_total{openwop_tenant_id=\"default\"}"),
        3.0
    );
    assert_eq!(delta(completed), 2.0, "{}", after.text);
    assert_eq!(delta(failed), 1.0, "{}", after.text);
    assert_eq!(
        delta("openwop_run_completed_total{openwop_run_status=\"cancelled\"}"),
        0.0
    );

    // Nodes, by type and status.
    let node =
        |ty: &str, st: &str| format!("{{openwop_node_type=\"{ty}\",openwop_run_status=\"{st}\"}}");
    let greet = node("vendor.wopbox.greet.hello", "completed");
    let hog = node("vendor.hostile.mem.n", "failed");
    assert_eq!(
        delta(&format!(
            "openwop_node_completed_total{}",
            node("core.noop", "completed")
        )),
        1.0
    );
    assert_eq!(delta(&format!("openwop_node_completed_total{greet}")), 1.0);
    assert_eq!(delta(&format!("openwop_node_completed_total{hog}")), 1.0);
    // The node histogram holds the duration the node's terminal event reported.
    let greet_done = node_done(&greet_events, "node.completed");
    let node_ms = greet_done["durationMs"].as_f64().unwrap();
    assert_eq!(
        delta(&format!("openwop_node_duration_seconds_count{greet}")),
        1.0
    );
    let sum = delta(&format!("openwop_node_duration_seconds_sum{greet}"));
    assert!(
        (sum - node_ms / 1000.0).abs() < 1e-9,
        "{sum} vs {node_ms} ms"
    );

    // Sandbox figures of the invocation that returned: exactly the fuel and time it reported.
    let m = &greet_done["metrics"];
    let fuel = m["fuelConsumed"].as_u64().expect("fuelConsumed") as f64;
    assert!(fuel > 0.0);
    let pack = "{pack=\"vendor.wopbox.greet\"}";
    assert_eq!(
        delta(&format!("wopbox_sandbox_fuel_consumed_total{pack}")),
        fuel
    );
    assert_eq!(
        delta(&format!("wopbox_sandbox_duration_seconds_count{pack}")),
        1.0
    );
    let sandbox_ms = m["durationMs"].as_f64().unwrap();
    let sum = delta(&format!("wopbox_sandbox_duration_seconds_sum{pack}"));
    assert!(
        (sum - sandbox_ms / 1000.0).abs() < 1e-9,
        "{sum} vs {sandbox_ms} ms"
    );

    // The breach: one wasm-memory cap and one sandbox failure with its code; the stopped
    // invocation reported no fuel or time figures, so its pack has no such series.
    assert_eq!(
        node_done(&mem_events, "cap.breached")["kind"],
        "wasm-memory"
    );
    assert_eq!(
        delta("openwop_cap_exceeded_total{openwop_cap_kind=\"wasm-memory\"}"),
        1.0
    );
    assert_eq!(
        delta("openwop_cap_exceeded_total{openwop_cap_kind=\"wasm-fuel\"}"),
        0.0
    );
    assert_eq!(
        delta("wopbox_sandbox_failures_total{code=\"sandbox_memory_exceeded\"}"),
        1.0
    );
    assert!(
        !after.text.contains("pack=\"vendor.hostile.mem\""),
        "{}",
        after.text
    );

    // Nothing is in flight any more, and no run id ever becomes a label value.
    assert_eq!(
        after.get("openwop_run_active{openwop_tenant_id=\"default\"}"),
        0.0
    );
    assert_eq!(
        after.get("openwop_queue_depth{openwop_tenant_id=\"all\"}"),
        0.0
    );
    assert!(after
        .values
        .contains_key("wopbox_webhook_outbox_lag_seconds"));
    for run in [&greet_snap["runId"], &mem_snap["runId"], &json!(noop)] {
        let run = run.as_str().expect("runId");
        assert!(
            !after.text.contains(run),
            "run id {run} in:\n{}",
            after.text
        );
    }
}

#[tokio::test]
async fn metrics_need_the_metrics_read_scope_and_count_admission_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_path(&dir);
    let (_, reader) = mint(&config, "ops", &["metrics:read"]);
    let (_, tenant) = mint(&config, "acme", &["runs:create", "runs:read"]);
    let h = host_with_config_and(&config, &["--max-runs-in-flight", "1"]).await;

    // No key: 401. A tenant's key without the scope: 403 naming it. Figures span every
    // tenant, so only an operator's key (the scope or the full `*`) reads them.
    let resp = h.anon(Method::GET, "/metrics").send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let (status, body) = call(&h, &tenant, Method::GET, "/metrics", None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_envelope(&body, "forbidden");
    assert_eq!(body["details"]["scopeRequired"], "metrics:read", "{body}");
    // The scope reads metrics and nothing else.
    let (status, body) = call(&h, &reader, Method::GET, "/v1/runs", None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");

    // One run parks in flight; the next is refused at the host's limit.
    let body = json!({"workflowId": "conformance-cancellable", "inputs": {"delayMs": 60000}});
    let (status, created) = call(&h, &tenant, Method::POST, "/v1/runs", Some(body.clone())).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let (status, refused) = call(&h, &tenant, Method::POST, "/v1/runs", Some(body)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{refused}");

    let s = scrape_with(&h, &reader).await;
    assert_eq!(
        s.get("openwop_run_created_total{openwop_tenant_id=\"acme\"}"),
        1.0,
        "{}",
        s.text
    );
    assert_eq!(
        s.get("wopbox_admission_rejected_total{reason=\"runs_in_flight\"}"),
        1.0
    );
    assert_eq!(s.get("openwop_run_active{openwop_tenant_id=\"acme\"}"), 1.0);
    assert_eq!(
        s.get("openwop_run_completed_total{openwop_run_status=\"completed\"}"),
        0.0
    );
    let run_id = created["runId"].as_str().unwrap();
    assert!(!s.text.contains(run_id));
    // The full-scope legacy key reads them too.
    scrape_with(&h, KEY).await;
}

/// A host with the repository's packs, plus `extra` flags.
async fn pack_host(extra: Vec<String>) -> Host {
    let mut extra_args = vec!["--packs".to_string(), packs_dir().display().to_string()];
    extra_args.extend(extra);
    Host::start_with(Options {
        extra_args,
        ..Options::default()
    })
    .await
}

#[tokio::test]
async fn sandbox_figures_are_counted_by_the_process_whose_sandbox_ran_the_node() {
    let tier = pack_host(vec![]).await;
    let orch = pack_host(vec![
        "--executor".into(),
        format!("remote:{}", tier.base),
        "--executor-key".into(),
        KEY.into(),
    ])
    .await;
    let (snap, events) = orch
        .run_single(
            "wf-greet",
            "vendor.wopbox.greet.hello",
            json!({"name": "r"}),
        )
        .await;
    assert_eq!(snap["status"], "completed", "{snap}");
    let m = &node_done(&events, "node.completed")["metrics"];
    assert_eq!(m["executor"], "remote", "{m}");
    let fuel = m["fuelConsumed"].as_u64().expect("fuelConsumed") as f64;

    let fuel_series = "wopbox_sandbox_fuel_consumed_total{pack=\"vendor.wopbox.greet\"}";
    let count_series = "wopbox_sandbox_duration_seconds_count{pack=\"vendor.wopbox.greet\"}";
    // The isolation tier ran it: exactly the fuel the orchestrator's event reports.
    let t = scrape_with(&tier, KEY).await;
    assert_eq!(t.get(fuel_series), fuel, "{}", t.text);
    assert_eq!(t.get(count_series), 1.0);
    // The orchestrator ran no sandbox code, so summing hosts counts the invocation once; the
    // run and its node are the orchestrator's (they were committed there).
    let o = scrape_until(&orch, |s| {
        s.get("openwop_run_completed_total{openwop_run_status=\"completed\"}") >= 1.0
    })
    .await;
    assert!(!o.values.contains_key(fuel_series), "{}", o.text);
    assert!(!o.values.contains_key(count_series), "{}", o.text);
    assert_eq!(
        o.get("openwop_node_completed_total{openwop_node_type=\"vendor.wopbox.greet.hello\",openwop_run_status=\"completed\"}"),
        1.0
    );
    assert_eq!(
        t.get("openwop_run_completed_total{openwop_run_status=\"completed\"}"),
        0.0
    );
}

#[tokio::test]
async fn webhook_outbox_lag_grows_while_deliveries_wait_behind_a_slow_receiver() {
    // One delivery at a time to a receiver that takes 20 s to answer: while the first one
    // hangs, the run's other events are due and wait in the outbox.
    let receiver = crate::webhooks::Receiver::start(&[], 200, Duration::from_secs(20)).await;
    let h = Host::start_with(crate::webhooks::loopback_host(&[
        "--webhook-per-subscription-concurrency",
        "1",
        "--webhook-timeout-ms",
        "20000",
    ]))
    .await;
    let lag = "wopbox_webhook_outbox_lag_seconds";
    assert_eq!(
        scrape_with(&h, KEY).await.get(lag),
        0.0,
        "nothing pending yet"
    );
    crate::webhooks::register(
        &h,
        &receiver.url(),
        &[
            "run.started",
            "node.started",
            "node.completed",
            "run.completed",
        ],
    )
    .await;
    let run = h.create_run("conformance-noop", json!({})).await;
    h.wait_terminal(&run, Duration::from_secs(20)).await;
    receiver
        .wait_for("the first delivery", Duration::from_secs(10), |hits| {
            !hits.is_empty()
        })
        .await;
    let s = scrape_until(&h, |s| s.get(lag) >= 0.2).await;
    assert!(s.get(lag) < 20.0, "{}", s.text);
    assert_eq!(receiver.hits().len(), 1, "the others are still waiting");
}
