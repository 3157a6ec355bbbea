//! W3C Trace Context (`traceparent` / `tracestate`, https://www.w3.org/TR/trace-context/).
//!
//! A header that does not parse is ignored (the receiver starts a new trace), never an error:
//! that is what the W3C spec requires of a receiver, and a tracing header must not be able to
//! fail a request.

use rand::RngCore;
use serde_json::{json, Value};

/// `tracestate` is opaque to us; longer values than this are dropped (the W3C spec lets a
/// receiver discard it, and we persist it with the run, so it must stay small).
const MAX_TRACESTATE: usize = 512;

/// Key of a run's persisted trace context in its options (so it shows on the snapshot).
pub const TRACE_CONTEXT: &str = "traceContext";

/// A run's trace context (its `openwop.run` span) and the caller's parent span id: as
/// persisted at creation, or derived from the run id for a run stored without one.
pub fn run_trace(run: &crate::store::RunRecord) -> (TraceContext, Option<String>) {
    run.options
        .get(TRACE_CONTEXT)
        .and_then(TraceContext::from_json)
        .unwrap_or_else(|| (TraceContext::derived_from(&run.run_id), None))
}

/// One position in a trace: the trace, the span that is the parent of whatever comes next,
/// and the sampled flag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    /// 32 lowercase hex digits, not all zero.
    pub trace_id: String,
    /// 16 lowercase hex digits, not all zero.
    pub span_id: String,
    pub flags: u8,
    pub tracestate: Option<String>,
}

fn lower_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    loop {
        rand::thread_rng().fill_bytes(&mut buf);
        if buf.iter().any(|b| *b != 0) {
            return hex::encode(&buf);
        }
    }
}

/// A fresh span id (8 random bytes, never all zero).
pub fn new_span_id() -> String {
    random_hex(8)
}

impl TraceContext {
    /// Parse a `traceparent` value. `None` for anything the W3C spec says to ignore:
    /// wrong length or separators, upper-case or non-hex digits, an all-zero trace or parent
    /// id, version `ff`, or trailing data on a version-00 header.
    pub fn parse(traceparent: &str, tracestate: Option<&str>) -> Option<TraceContext> {
        let s = traceparent.trim_matches([' ', '\t']);
        let version = s.get(0..2)?;
        if !lower_hex(version, 2) || version == "ff" {
            return None;
        }
        // Version 00 is exactly 55 characters; a later version may append `-…` fields, which
        // a version-00 receiver ignores.
        if s.len() < 55 || (version == "00" && s.len() != 55) {
            return None;
        }
        if s.len() > 55 && s.as_bytes()[55] != b'-' {
            return None;
        }
        let b = s.as_bytes();
        if b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
            return None;
        }
        let (trace_id, span_id, flags) = (&s[3..35], &s[36..52], &s[53..55]);
        if !lower_hex(trace_id, 32) || !lower_hex(span_id, 16) || !lower_hex(flags, 2) {
            return None;
        }
        if trace_id.bytes().all(|c| c == b'0') || span_id.bytes().all(|c| c == b'0') {
            return None;
        }
        let tracestate = tracestate
            .map(str::trim)
            .filter(|t| !t.is_empty() && t.len() <= MAX_TRACESTATE)
            .filter(|t| t.bytes().all(|c| (0x20..0x7f).contains(&c)))
            .map(str::to_string);
        Some(TraceContext {
            trace_id: trace_id.to_string(),
            span_id: span_id.to_string(),
            flags: u8::from_str_radix(flags, 16).ok()?,
            tracestate,
        })
    }

    /// From request headers; `None` when absent or malformed.
    pub fn from_headers(headers: &axum::http::HeaderMap) -> Option<TraceContext> {
        let tp = headers.get("traceparent")?.to_str().ok()?;
        let ts = headers.get("tracestate").and_then(|v| v.to_str().ok());
        TraceContext::parse(tp, ts)
    }

    /// A new root: fresh trace id, fresh span id, sampled.
    pub fn new_root() -> TraceContext {
        TraceContext {
            trace_id: random_hex(16),
            span_id: new_span_id(),
            flags: 0x01,
            tracestate: None,
        }
    }

    /// The same trace, one span further down (a new span id).
    pub fn child(&self) -> TraceContext {
        TraceContext {
            span_id: new_span_id(),
            ..self.clone()
        }
    }

    /// The `traceparent` header value (always version 00, which is what we speak).
    pub fn traceparent(&self) -> String {
        format!("00-{}-{}-{:02x}", self.trace_id, self.span_id, self.flags)
    }

    /// The form persisted with a run (and shown on its snapshot as `traceContext`).
    pub fn to_json(&self, parent_span_id: Option<&str>) -> Value {
        let mut v = json!({"traceparent": self.traceparent()});
        if let Some(ts) = &self.tracestate {
            v["tracestate"] = json!(ts);
        }
        if let Some(p) = parent_span_id {
            v["parentSpanId"] = json!(p);
        }
        v
    }

    /// Read back what [`Self::to_json`] stored: the context and the parent span id.
    pub fn from_json(v: &Value) -> Option<(TraceContext, Option<String>)> {
        let ctx = TraceContext::parse(
            v.get("traceparent")?.as_str()?,
            v.get("tracestate").and_then(Value::as_str),
        )?;
        let parent = v
            .get("parentSpanId")
            .and_then(Value::as_str)
            .filter(|p| lower_hex(p, 16))
            .map(str::to_string);
        Some((ctx, parent))
    }

    /// A stable context for a run stored without one (created before trace contexts were
    /// persisted): derived from the run id, so every process that drives it agrees.
    pub fn derived_from(run_id: &str) -> TraceContext {
        let digest = crate::engine::sha256_hex(run_id.as_bytes());
        let mut trace_id = digest[0..32].to_string();
        let mut span_id = digest[32..48].to_string();
        // An all-zero id is invalid; a SHA-256 prefix of zeros is astronomically unlikely,
        // but keep the invariant anyway.
        if trace_id.bytes().all(|c| c == b'0') {
            trace_id.replace_range(31..32, "1");
        }
        if span_id.bytes().all(|c| c == b'0') {
            span_id.replace_range(15..16, "1");
        }
        TraceContext {
            trace_id,
            span_id,
            flags: 0x01,
            tracestate: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    #[test]
    fn parses_a_valid_header_and_round_trips() {
        let c = TraceContext::parse(VALID, Some("congo=t61rcWkgMzE")).unwrap();
        assert_eq!(c.trace_id, "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(c.span_id, "b7ad6b7169203331");
        assert_eq!(c.flags, 1);
        assert_eq!(c.traceparent(), VALID);
        assert_eq!(c.tracestate.as_deref(), Some("congo=t61rcWkgMzE"));
        let (back, parent) = TraceContext::from_json(&c.to_json(Some("00f067aa0ba902b7"))).unwrap();
        assert_eq!(back, c);
        assert_eq!(parent.as_deref(), Some("00f067aa0ba902b7"));
    }

    #[test]
    fn ignores_malformed_headers() {
        for bad in [
            "",
            "garbage",
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01", // upper case
            "00-00000000000000000000000000000000-b7ad6b7169203331-01", // zero trace id
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01", // zero parent id
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", // forbidden version
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra", // 00 + trailer
            "00_0af7651916cd43dd8448eb211c80319c_b7ad6b7169203331_01",
            "00-0af7651916cd43dd8448eb211c80319-cb7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-0g",
            "0-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ] {
            assert!(TraceContext::parse(bad, None).is_none(), "accepted {bad:?}");
        }
    }

    #[test]
    fn a_future_version_may_carry_more_fields() {
        let c = TraceContext::parse(
            "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-what-ever",
            None,
        )
        .unwrap();
        assert_eq!(c.trace_id, "0af7651916cd43dd8448eb211c80319c");
        assert!(TraceContext::parse(
            "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01x",
            None
        )
        .is_none());
    }

    #[test]
    fn oversized_or_binary_tracestate_is_dropped_not_fatal() {
        let long = "a=".to_string() + &"b".repeat(600);
        assert_eq!(
            TraceContext::parse(VALID, Some(&long)).unwrap().tracestate,
            None
        );
        assert_eq!(
            TraceContext::parse(VALID, Some("a=\u{1}"))
                .unwrap()
                .tracestate,
            None
        );
    }

    #[test]
    fn new_ids_are_well_formed_and_derived_ones_stable() {
        let r = TraceContext::new_root();
        assert!(TraceContext::parse(&r.traceparent(), None).is_some());
        let c = r.child();
        assert_eq!(c.trace_id, r.trace_id);
        assert_ne!(c.span_id, r.span_id);
        assert_eq!(
            TraceContext::derived_from("run-1"),
            TraceContext::derived_from("run-1")
        );
        assert_ne!(
            TraceContext::derived_from("run-1").trace_id,
            TraceContext::derived_from("run-2").trace_id
        );
    }
}
