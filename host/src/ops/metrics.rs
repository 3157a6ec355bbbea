//! Prometheus metrics: `GET /metrics` (OpenMetrics text; bearer key with `metrics:read`).
//!
//! Names follow the `openwop.*` taxonomy of spec/v1/observability.md written the Prometheus
//! way (dots become underscores, counters end in `_total`, durations in `_seconds`); figures
//! of wopbox's own are under `wopbox_*`. docs/operations.md "Metrics" lists them all.
//!
//! Where each figure is counted:
//! * run, node, limit and interrupt figures when their event is **committed** (this
//!   is an [`EventSink`] of the event log): every fact a client can see in an event log is
//!   counted once, at the moment it becomes durable, and nothing is ever recomputed by
//!   scanning the store;
//! * sandbox time, fuel and failures where the sandbox runs ([`SandboxCounters`], at the one
//!   call every invocation of this process goes through: local runs' nodes and executions
//!   served to a remote orchestrator alike; an orchestrator that delegates its pack nodes to
//!   a remote tier counts none, the tier does);
//! * runs accepted and refused by the admission gate where it decides ([`AdmissionCounters`]);
//! * runs in flight, queue depth and outbox lag are read from their owners at scrape time.
//!
//! Counts are per process (a Postgres cluster's processes each count what they commit; sum
//! them). Labels carry only bounded vocabularies: statuses, limit and interrupt kinds,
//! refusal reasons, tenant ids (operator-issued keys), installed node types and pack names.
//! Never run ids, workflow ids (clients register those freely) or payload data.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use serde_json::Value;

use super::admission::Admission;
use crate::events::EventSink;
use crate::store::EventRecord;
use crate::webhooks::WebhookService;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    openwop_run_status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TenantLabel {
    openwop_tenant_id: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeLabel {
    openwop_node_type: String,
    openwop_run_status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeTypeLabel {
    openwop_node_type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CapLabel {
    openwop_cap_kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InterruptLabel {
    openwop_interrupt_kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PackLabel {
    pack: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabel {
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ScopeLabel {
    scope: String,
}

/// Limit kinds the spec names (`openwop.cap_kind`); anything else is counted as `other`, so a
/// remote executor cannot mint label values.
const CAP_KINDS: [&str; 9] = [
    "clarification",
    "schema",
    "envelopes",
    "node-executions",
    "wasm-memory",
    "wasm-fuel",
    "wasm-execution-time",
    "run-duration",
    "loop-iterations",
];

const INTERRUPT_KINDS: [&str; 4] = ["approval", "clarification", "external-event", "custom"];

/// Engine deadlines that fail a node or a run: error code -> `scope` label.
const TIMEOUT_CODES: [(&str, &str); 3] = [
    ("node_timeout", "node"),
    ("run_timeout", "run"),
    ("interrupt_timeout", "interrupt"),
];

/// Most runs whose started nodes' types are remembered (well above the default limit of
/// runs in flight, 20,000).
const MAX_TRACKED_RUNS: usize = 100_000;

fn closed(value: Option<&str>, vocabulary: &[&str]) -> String {
    match value {
        Some(v) if vocabulary.contains(&v) => v.to_string(),
        _ => "other".to_string(),
    }
}

/// observability.md's recommended `openwop.node.duration` buckets (1 ms .. 1 min).
fn node_buckets() -> Histogram {
    Histogram::new([
        0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0,
    ])
}

/// Runs admitted and refused, counted by the admission gate where it decides.
#[derive(Clone, Default)]
pub struct AdmissionCounters {
    created: Family<TenantLabel, Counter>,
    rejected: Family<ReasonLabel, Counter>,
}

impl AdmissionCounters {
    /// A run accepted by `POST /v1/runs` (stored, about to start).
    pub fn created(&self, tenant: &str) {
        self.created
            .get_or_create(&TenantLabel {
                openwop_tenant_id: tenant.to_string(),
            })
            .inc();
    }

    /// `POST /v1/runs` refused with 503 (`reason` is [`super::admission::Rejection::reason`]).
    pub fn rejected(&self, reason: &str) {
        self.rejected
            .get_or_create(&ReasonLabel {
                reason: reason.to_string(),
            })
            .inc();
    }
}

/// Sandbox invocations of this process, counted as each one returns (see
/// [`crate::packs::PackService::invoke`]).
#[derive(Clone, Debug)]
pub struct SandboxCounters {
    duration: Family<PackLabel, Histogram, fn() -> Histogram>,
    fuel: Family<PackLabel, Counter>,
    failures: Family<CodeLabel, Counter>,
}

impl Default for SandboxCounters {
    fn default() -> Self {
        SandboxCounters {
            duration: Family::new_with_constructor(node_buckets),
            fuel: Family::default(),
            failures: Family::default(),
        }
    }
}

impl SandboxCounters {
    /// One invocation of `pack` ended. One that returned (completed, or a failure the guest
    /// reported) adds its time and fuel; one the sandbox stopped (a limit, a refused import, a
    /// trap) reports no figures and is counted by its error code (a closed set of ours).
    pub fn record(
        &self,
        pack: &str,
        result: &Result<wopbox_sandbox::InvokeOutcome, wopbox_sandbox::SandboxError>,
    ) {
        match result {
            Ok(out) => {
                let label = PackLabel {
                    pack: pack.to_string(),
                };
                self.duration
                    .get_or_create(&label)
                    .observe(out.metrics.duration.as_secs_f64());
                self.fuel
                    .get_or_create(&label)
                    .inc_by(out.metrics.fuel_consumed);
            }
            Err(e) => {
                self.failures
                    .get_or_create(&CodeLabel {
                        code: e.code().to_string(),
                    })
                    .inc();
            }
        }
    }
}

/// The event-derived series.
struct Series {
    runs_completed: Family<StatusLabel, Counter>,
    nodes_completed: Family<NodeLabel, Counter>,
    node_duration: Family<NodeLabel, Histogram, fn() -> Histogram>,
    node_attempts: Family<NodeTypeLabel, Counter>,
    cap_exceeded: Family<CapLabel, Counter>,
    timeouts: Family<ScopeLabel, Counter>,
    interrupts: Family<InterruptLabel, Counter>,
}

/// The scrape-time gauges.
#[derive(Default)]
struct Gauges {
    runs_active: Family<TenantLabel, Gauge>,
    queue_depth: Family<TenantLabel, Gauge>,
    executing: Gauge,
    outbox_lag: Gauge<f64, AtomicU64>,
}

/// Everything `/metrics` reports.
pub struct Metrics {
    registry: Registry,
    admission: Arc<Admission>,
    webhooks: Arc<WebhookService>,
    series: Series,
    gauges: Gauges,
    /// Node types of nodes that started in this process and have not ended, per run, so a
    /// node's terminal event (which names only the node id) is labelled with its type.
    /// Forgotten when the node ends and, for whatever is left, when the run ends.
    started: Mutex<HashMap<String, HashMap<String, String>>>,
}

impl Default for Series {
    fn default() -> Self {
        Series {
            runs_completed: Family::default(),
            nodes_completed: Family::default(),
            node_duration: Family::new_with_constructor(node_buckets),
            node_attempts: Family::default(),
            cap_exceeded: Family::default(),
            timeouts: Family::default(),
            interrupts: Family::default(),
        }
    }
}

impl Metrics {
    pub fn new(
        admission: Arc<Admission>,
        webhooks: Arc<WebhookService>,
        sandbox: &SandboxCounters,
    ) -> Arc<Self> {
        let series = Series::default();
        let gauges = Gauges::default();
        let mut r = Registry::default();
        let c = &admission.counters;
        r.register(
            "openwop_run_created",
            "Runs accepted by POST /v1/runs, by tenant",
            c.created.clone(),
        );
        r.register(
            "openwop_run_completed",
            "Runs that reached a terminal status, by status",
            series.runs_completed.clone(),
        );
        r.register(
            "openwop_run_active",
            "Runs admitted and not yet terminal (parked included), by tenant",
            gauges.runs_active.clone(),
        );
        r.register(
            "openwop_node_completed",
            "Node executions that reached a terminal node status, by node type and status",
            series.nodes_completed.clone(),
        );
        r.register(
            "openwop_node_duration_seconds",
            "Node execution time as reported by its terminal event, by node type and status",
            series.node_duration.clone(),
        );
        r.register(
            "openwop_node_attempts",
            "Node attempts after the first (retries), by node type",
            series.node_attempts.clone(),
        );
        r.register(
            "openwop_cap_exceeded",
            "Engine and sandbox limits that fired (cap.breached), by kind",
            series.cap_exceeded.clone(),
        );
        r.register(
            "openwop_interrupt_requested",
            "Interrupts (human-in-the-loop suspensions) requested, by kind",
            series.interrupts.clone(),
        );
        r.register(
            "openwop_queue_depth",
            "Node executions waiting for an execution slot, by tenant and \"all\"",
            gauges.queue_depth.clone(),
        );
        r.register(
            "wopbox_nodes_executing",
            "Nodes holding an execution slot",
            gauges.executing.clone(),
        );
        r.register(
            "wopbox_admission_rejected",
            "POST /v1/runs refused with 503, by reason",
            c.rejected.clone(),
        );
        r.register(
            "wopbox_timeouts",
            "Nodes and runs failed by an engine deadline, by scope (node, run, interrupt)",
            series.timeouts.clone(),
        );
        r.register(
            "wopbox_sandbox_duration_seconds",
            "Time inside the WebAssembly sandbox per invocation of this process that returned, by pack",
            sandbox.duration.clone(),
        );
        r.register(
            "wopbox_sandbox_fuel_consumed",
            "Wasmtime fuel consumed by this process's sandbox invocations that returned, by pack",
            sandbox.fuel.clone(),
        );
        r.register(
            "wopbox_sandbox_failures",
            "Sandbox invocations of this process stopped by the sandbox (limits, refused imports, traps), by error code",
            sandbox.failures.clone(),
        );
        r.register(
            "wopbox_webhook_outbox_lag_seconds",
            "How overdue the most overdue pending webhook delivery is",
            gauges.outbox_lag.clone(),
        );
        Arc::new(Metrics {
            registry: r,
            admission,
            webhooks,
            series,
            gauges,
            started: Mutex::new(HashMap::new()),
        })
    }

    fn started(&self) -> std::sync::MutexGuard<'_, HashMap<String, HashMap<String, String>>> {
        // Every update is a single insert or remove: a panicked holder leaves it consistent.
        self.started.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The node's type if it started in this process (forgotten now: the node ended).
    fn ended_node_type(&self, ev: &EventRecord) -> String {
        let node = ev
            .node_id
            .as_deref()
            .or_else(|| ev.payload.get("nodeId").and_then(Value::as_str));
        let mut started = self.started();
        let found = node.and_then(|n| {
            let nodes = started.get_mut(&ev.run_id)?;
            let t = nodes.remove(n);
            if nodes.is_empty() {
                started.remove(&ev.run_id);
            }
            t
        });
        found.unwrap_or_else(|| "unknown".to_string())
    }

    fn observe(&self, ev: &EventRecord) {
        let s = &self.series;
        let p = &ev.payload;
        let error_code = || p.pointer("/error/code").and_then(Value::as_str);
        let status = |t: &str| t.split_once('.').map_or(t, |(_, s)| s).to_string();
        match ev.event_type.as_str() {
            t @ ("run.completed" | "run.failed" | "run.cancelled") => {
                self.started().remove(&ev.run_id);
                s.runs_completed
                    .get_or_create(&StatusLabel {
                        openwop_run_status: status(t),
                    })
                    .inc();
                if error_code() == Some("run_timeout") {
                    self.count_timeout("run_timeout");
                }
            }
            "node.started" => {
                if let (Some(node), Some(ty)) = (
                    ev.node_id.as_deref(),
                    p.get("typeId").and_then(Value::as_str),
                ) {
                    let mut started = self.started();
                    // A run whose end this process never sees (taken over by another process
                    // on a shared Postgres) stays here: the bound keeps such leftovers from
                    // growing without limit; past it, new runs' nodes are labelled `unknown`.
                    if started.len() < MAX_TRACKED_RUNS || started.contains_key(&ev.run_id) {
                        started
                            .entry(ev.run_id.clone())
                            .or_default()
                            .insert(node.to_string(), ty.to_string());
                    }
                }
            }
            "node.retried" => {
                // The node keeps running: peek at its type without forgetting it.
                let ty = ev
                    .node_id
                    .as_deref()
                    .and_then(|n| self.started().get(&ev.run_id)?.get(n).cloned())
                    .unwrap_or_else(|| "unknown".to_string());
                s.node_attempts
                    .get_or_create(&NodeTypeLabel {
                        openwop_node_type: ty,
                    })
                    .inc();
            }
            t @ ("node.cancelled" | "node.skipped") => {
                let label = NodeLabel {
                    openwop_node_type: self.ended_node_type(ev),
                    openwop_run_status: status(t),
                };
                s.nodes_completed.get_or_create(&label).inc();
            }
            t @ ("node.completed" | "node.failed") => {
                let label = NodeLabel {
                    openwop_node_type: self.ended_node_type(ev),
                    openwop_run_status: status(t),
                };
                s.nodes_completed.get_or_create(&label).inc();
                if let Some(ms) = p.get("durationMs").and_then(Value::as_f64) {
                    s.node_duration.get_or_create(&label).observe(ms / 1000.0);
                }
                if let Some(code) = error_code() {
                    self.count_timeout(code);
                }
            }
            "cap.breached" => {
                s.cap_exceeded
                    .get_or_create(&CapLabel {
                        openwop_cap_kind: closed(p.get("kind").and_then(Value::as_str), &CAP_KINDS),
                    })
                    .inc();
            }
            "interrupt.requested" => {
                s.interrupts
                    .get_or_create(&InterruptLabel {
                        openwop_interrupt_kind: closed(
                            p.get("kind").and_then(Value::as_str),
                            &INTERRUPT_KINDS,
                        ),
                    })
                    .inc();
            }
            _ => {}
        }
    }

    fn count_timeout(&self, code: &str) {
        if let Some((_, scope)) = TIMEOUT_CODES.iter().find(|(c, _)| *c == code) {
            self.series
                .timeouts
                .get_or_create(&ScopeLabel {
                    scope: scope.to_string(),
                })
                .inc();
        }
    }

    /// Refresh the scrape-time gauges and render the OpenMetrics text.
    pub async fn render(&self) -> Result<String, std::fmt::Error> {
        let g = &self.gauges;
        let snap = self.admission.snapshot();
        // Rebuilt each scrape: a tenant with nothing in flight drops out of the series.
        g.runs_active.clear();
        g.queue_depth.clear();
        for t in self.admission.tenant_figures() {
            let label = TenantLabel {
                openwop_tenant_id: t.tenant,
            };
            g.runs_active.get_or_create(&label).set(t.runs as i64);
            g.queue_depth.get_or_create(&label).set(t.queued as i64);
        }
        g.queue_depth
            .get_or_create(&TenantLabel {
                openwop_tenant_id: "all".into(),
            })
            .set(snap.queued as i64);
        g.executing.set(snap.executing as i64);
        match self.webhooks.outbox_lag_ms().await {
            Ok(ms) => {
                g.outbox_lag.set(ms as f64 / 1000.0);
            }
            // Keep the last known value; the scrape itself still answers.
            Err(e) => tracing::warn!(error = %e, "metrics: cannot read the webhook outbox"),
        }
        let mut out = String::new();
        encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

impl EventSink for Metrics {
    fn committed(&self, _run_id: &str, records: &[EventRecord]) {
        for ev in records {
            self.observe(ev);
        }
    }
}

/// `GET /metrics`, mounted inside the API so bearer auth and the scope table apply.
pub fn router<S: Clone + Send + Sync + 'static>(metrics: Arc<Metrics>) -> Router<S> {
    Router::new()
        .route("/metrics", get(scrape))
        .with_state(metrics)
}

async fn scrape(State(metrics): State<Arc<Metrics>>) -> Response {
    match metrics.render().await {
        Ok(body) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            )],
            body,
        )
            .into_response(),
        Err(e) => crate::api::error::ApiError::internal(e).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::EventRecord;
    use serde_json::json;

    fn ev(run: &str, ty: &str, node: Option<&str>, payload: Value) -> EventRecord {
        EventRecord {
            run_id: run.into(),
            sequence: 0,
            event_id: "e".into(),
            event_type: ty.into(),
            node_id: node.map(str::to_string),
            causation_id: None,
            payload,
            timestamp: String::new(),
        }
    }

    fn series_text(m: &Metrics) -> String {
        let mut out = String::new();
        encode(&mut out, &m.registry).unwrap();
        out
    }

    async fn metrics() -> Arc<Metrics> {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn crate::store::Store> = Arc::new(
            crate::store::sqlite::SqliteStore::open(dir.path())
                .await
                .unwrap(),
        );
        let webhooks =
            WebhookService::new(store, crate::webhooks::config::WebhookArgs::default(), None)
                .unwrap();
        let admission = Admission::new(Default::default());
        Metrics::new(admission, webhooks, &SandboxCounters::default())
    }

    #[tokio::test]
    async fn node_type_follows_the_node_from_start_to_end_and_is_then_forgotten() {
        let m = metrics().await;
        m.committed(
            "r1",
            &[
                ev(
                    "r1",
                    "node.started",
                    Some("a"),
                    json!({"typeId": "core.noop"}),
                ),
                ev("r1", "node.retried", Some("a"), json!({})),
                ev("r1", "node.completed", Some("a"), json!({"durationMs": 2})),
                ev("r1", "node.skipped", Some("b"), json!({})),
                ev(
                    "r1",
                    "node.started",
                    Some("c"),
                    json!({"typeId": "core.delay"}),
                ),
            ],
        );
        let text = series_text(&m);
        assert!(text.contains(
            "openwop_node_completed_total{openwop_node_type=\"core.noop\",openwop_run_status=\"completed\"} 1"
        ), "{text}");
        assert!(text.contains(
            "openwop_node_completed_total{openwop_node_type=\"unknown\",openwop_run_status=\"skipped\"} 1"
        ), "{text}");
        assert!(
            text.contains("openwop_node_attempts_total{openwop_node_type=\"core.noop\"} 1"),
            "{text}"
        );
        // `c` never ended: the run's end forgets it, so parked runs cannot grow the map forever.
        assert_eq!(m.started().get("r1").map(|n| n.len()), Some(1));
        m.committed("r1", &[ev("r1", "run.cancelled", None, json!({}))]);
        assert!(m.started().is_empty());
    }

    #[tokio::test]
    async fn remembered_node_types_are_bounded() {
        let m = metrics().await;
        let started = |run: &str| ev(run, "node.started", Some("n"), json!({"typeId": "t"}));
        for i in 0..MAX_TRACKED_RUNS {
            m.committed("", &[started(&format!("r{i}"))]);
        }
        m.committed("", &[started("one-too-many")]);
        assert_eq!(m.started().len(), MAX_TRACKED_RUNS);
        assert!(!m.started().contains_key("one-too-many"));
        // A run already tracked still records its further nodes.
        m.committed(
            "",
            &[ev("r0", "node.started", Some("b"), json!({"typeId": "t"}))],
        );
        assert_eq!(m.started()["r0"].len(), 2);
    }

    #[tokio::test]
    async fn label_values_come_from_closed_vocabularies() {
        let m = metrics().await;
        m.committed(
            "r",
            &[
                ev("r", "cap.breached", None, json!({"kind": "made-up"})),
                ev("r", "cap.breached", None, json!({"kind": "wasm-fuel"})),
                ev(
                    "r",
                    "node.failed",
                    Some("n"),
                    json!({"error": {"code": "sandbox_whatever"}}),
                ),
                ev(
                    "r",
                    "node.failed",
                    Some("n"),
                    json!({"error": {"code": "node_timeout"}}),
                ),
                ev(
                    "r",
                    "node.failed",
                    Some("n"),
                    json!({"error": {"code": "my_guest_code"}}),
                ),
            ],
        );
        let text = series_text(&m);
        assert!(
            text.contains("openwop_cap_exceeded_total{openwop_cap_kind=\"other\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("openwop_cap_exceeded_total{openwop_cap_kind=\"wasm-fuel\"} 1"),
            "{text}"
        );
        assert!(!text.contains("my_guest_code"), "{text}");
        assert!(!text.contains("sandbox_whatever"), "{text}");
        assert!(
            text.contains("wopbox_timeouts_total{scope=\"node\"} 1"),
            "{text}"
        );
    }
}
