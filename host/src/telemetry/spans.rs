//! In-memory span recorder behind the OTel collector test seam (observability.md §"OTel
//! collector test seam", RFC 0034): `GET /v1/host/sample/test/otel/spans?runId=…` answers
//! with every `openwop.*` span the host opened for that run — the same spans the logs carry.
//!
//! Installed only with `wopbox serve --enable-test-seams`. Memory is bounded: the most recent
//! [`MAX_RUNS`] runs are kept, each with at most [`MAX_SPANS_PER_RUN`] spans.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};

use serde_json::{json, Map, Value};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

pub const MAX_RUNS: usize = 1024;
pub const MAX_SPANS_PER_RUN: usize = 512;
const MAX_EVENTS_PER_SPAN: usize = 64;

/// Span fields that are span identity, reported beside the attributes rather than in them.
const IDENTITY: [&str; 4] = ["otel.name", "trace_id", "span_id", "parent_span_id"];

#[derive(Default)]
struct Inner {
    /// run id → its spans (in creation order).
    runs: HashMap<String, Vec<Arc<Mutex<Map<String, Value>>>>>,
    order: VecDeque<String>,
}

/// Cheap to clone; every clone records into the same store.
#[derive(Clone, Default)]
pub struct SpanRecorder {
    inner: Arc<Mutex<Inner>>,
}

static GLOBAL: OnceLock<SpanRecorder> = OnceLock::new();

impl SpanRecorder {
    /// The process-wide recorder (created on first use; installed by [`super::init`]).
    pub fn global() -> SpanRecorder {
        GLOBAL.get_or_init(SpanRecorder::default).clone()
    }

    /// Whether [`super::init`] installed the recorder (so the seam has data to show).
    pub fn installed() -> bool {
        GLOBAL.get().is_some()
    }

    /// The spans recorded for `run_id`, oldest first.
    pub fn spans(&self, run_id: &str) -> Vec<Value> {
        let inner = self.inner.lock().unwrap();
        inner
            .runs
            .get(run_id)
            .map(|spans| spans.iter().map(|s| render(&s.lock().unwrap())).collect())
            .unwrap_or_default()
    }

    fn add(&self, run_id: &str, span: Arc<Mutex<Map<String, Value>>>) {
        let mut inner = self.inner.lock().unwrap();
        if !inner.runs.contains_key(run_id) {
            if inner.order.len() >= MAX_RUNS {
                if let Some(old) = inner.order.pop_front() {
                    inner.runs.remove(&old);
                }
            }
            inner.order.push_back(run_id.to_string());
        }
        let spans = inner.runs.entry(run_id.to_string()).or_default();
        if spans.len() < MAX_SPANS_PER_RUN {
            spans.push(span);
        }
    }
}

/// `{name, traceId, spanId, parentSpanId, attributes, events}`.
fn render(raw: &Map<String, Value>) -> Value {
    let attrs: Map<String, Value> = raw
        .get("fields")
        .and_then(Value::as_object)
        .map(|f| {
            f.iter()
                .filter(|(k, _)| !IDENTITY.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default();
    let field = |k: &str| raw.get("fields").and_then(|f| f.get(k)).cloned();
    json!({
        "name": field("otel.name").unwrap_or_else(|| raw.get("name").cloned().unwrap_or(Value::Null)),
        "traceId": field("trace_id"),
        "spanId": field("span_id"),
        "parentSpanId": field("parent_span_id"),
        "attributes": attrs,
        "events": raw.get("events").cloned().unwrap_or(json!([])),
        "ended": raw.get("ended").cloned().unwrap_or(json!(false)),
    })
}

/// Collects field values as JSON (strings for `Display`/`Debug` values).
struct Fields<'a>(&'a mut Map<String, Value>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0
            .insert(field.name().to_string(), json!(format!("{value:?}")));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_string(), json!(value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_string(), json!(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_string(), json!(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_string(), json!(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().to_string(), json!(value));
    }
}

/// Kept in the span's extensions: the shared record the store also points at.
struct Recorded(Arc<Mutex<Map<String, Value>>>);

impl<S> Layer<S> for SpanRecorder
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let name = attrs.metadata().name();
        if !name.starts_with("openwop.") {
            return;
        }
        let Some(span) = ctx.span(id) else { return };
        let mut fields = Map::new();
        attrs.record(&mut Fields(&mut fields));
        // The run a span belongs to: its own `openwop.run_id`, else the nearest ancestor's.
        let run_id = fields
            .get("openwop.run_id")
            .and_then(Value::as_str)
            .map(str::to_string)
            .or_else(|| {
                span.scope().skip(1).find_map(|p| {
                    let ext = p.extensions();
                    let rec = ext.get::<Recorded>()?;
                    let r = rec.0.lock().unwrap();
                    r.get("fields")?
                        .get("openwop.run_id")?
                        .as_str()
                        .map(str::to_string)
                })
            });
        let Some(run_id) = run_id else { return };
        let rec = Arc::new(Mutex::new(Map::from_iter([
            ("name".to_string(), json!(name)),
            ("fields".to_string(), Value::Object(fields)),
            ("events".to_string(), json!([])),
        ])));
        self.add(&run_id, rec.clone());
        span.extensions_mut().insert(Recorded(rec));
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let ext = span.extensions();
        let Some(rec) = ext.get::<Recorded>() else {
            return;
        };
        let mut r = rec.0.lock().unwrap();
        if let Some(Value::Object(f)) = r.get_mut("fields") {
            values.record(&mut Fields(f));
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.event_span(event) else {
            return;
        };
        let ext = span.extensions();
        let Some(rec) = ext.get::<Recorded>() else {
            return;
        };
        let mut fields = Map::new();
        event.record(&mut Fields(&mut fields));
        let name = fields
            .remove("message")
            .unwrap_or_else(|| json!(event.metadata().name()));
        let mut r = rec.0.lock().unwrap();
        if let Some(Value::Array(evs)) = r.get_mut("events") {
            if evs.len() < MAX_EVENTS_PER_SPAN {
                evs.push(json!({"name": name, "level": event.metadata().level().as_str(), "attributes": fields}));
            }
        }
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(&id) else { return };
        let ext = span.extensions();
        if let Some(rec) = ext.get::<Recorded>() {
            rec.0.lock().unwrap().insert("ended".into(), json!(true));
        }
    }
}
