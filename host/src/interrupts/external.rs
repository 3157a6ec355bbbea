//! External-event interrupts (interrupt-profiles.md `openwop-interrupt-external-event`): the
//! pieces that make a `core.interrupt` wait correlatable and its delivery safe to repeat.
//!
//! - **Correlation id.** Every external-event interrupt carries `data.correlationId`,
//!   `corr_<32 hex>`, derived from its interrupt id when it is raised and stored with it, so it
//!   is the same in the `interrupt.requested` event, the snapshot, the token inspect view and
//!   after any restart. A holder of the id (and a key with `approvals:respond` in the run's
//!   tenant) can deliver the event without the signed token.
//! - **Idempotent delivery.** A delivery may name its `eventId`; the accepted one is recorded
//!   with the resolution. Re-delivering the same `(correlationId, eventId)` answers `200` with
//!   `duplicate: true` and changes nothing; any other delivery to a closed interrupt keeps the
//!   canonical refusal (`409 interrupt_already_resolved`, `410 interrupt_expired`).
//! - **Redaction.** Before the event payload is recorded (event log, node output, interrupt row)
//!   the values of credential-shaped keys, and of the keys the node lists in `config.redact`,
//!   are replaced by [`REDACTED`]; the JSON pointers of what was replaced are recorded beside it.
//!   The correlation is checked against the event as delivered, before redaction.

use serde_json::{json, Map, Value};

use super::resume::ResumeError;
use super::{Interrupts, ResolveError};
use crate::store::interrupts::InterruptRecord;
use crate::store::StoreError;

/// The profile this module completes (claimed in discovery).
pub const PROFILE: &str = "openwop-interrupt-external-event";

/// What a redacted value is replaced with.
pub const REDACTED: &str = "[redacted]";

/// Longest accepted `eventId` (bounds what is stored per interrupt; [`BadEventId`] says it).
pub const MAX_EVENT_ID_LEN: usize = 200;

/// Most names a node may list in `config.redact`.
pub const MAX_REDACT_NAMES: usize = 50;

/// At most this many redacted pointers are recorded (a payload may repeat a key many times).
const MAX_RECORDED_POINTERS: usize = 100;

/// Key names that are always redacted, compared case-insensitively with `-` and `_` ignored
/// (`api_key`, `API-Key` and `apiKey` are the same name).
const CREDENTIAL_NAMES: [&str; 13] = [
    "authorization",
    "password",
    "passwd",
    "secret",
    "clientsecret",
    "apikey",
    "token",
    "accesstoken",
    "refreshtoken",
    "idtoken",
    "cookie",
    "setcookie",
    "privatekey",
];

fn normalise(name: &str) -> String {
    name.chars()
        .filter(|c| *c != '-' && *c != '_')
        .flat_map(char::to_lowercase)
        .collect()
}

/// The correlation id of the external-event interrupt `interrupt_id` (`int_<hex>`).
pub fn correlation_id(interrupt_id: &str) -> String {
    format!(
        "corr_{}",
        interrupt_id.strip_prefix("int_").unwrap_or(interrupt_id)
    )
}

/// The interrupt id a correlation id names, or `None` when it is not one this host minted.
pub fn interrupt_id_of(correlation_id: &str) -> Option<String> {
    let hex = correlation_id.strip_prefix("corr_")?;
    let ok = hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit());
    ok.then(|| format!("int_{hex}"))
}

/// Why a delivery's `eventId` was refused (400 `validation_error`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("eventId must be a string of 1 to 200 printable characters")]
pub struct BadEventId;

/// The `eventId` of a delivery body: top-level `eventId`, or `eventId` next to `eventPayload`
/// inside `resumeValue`. Absent is fine (the delivery is then not re-deliverable).
pub fn event_id(body: &Value) -> Result<Option<String>, BadEventId> {
    let found = body
        .get("eventId")
        .or_else(|| body.get("resumeValue").and_then(|r| r.get("eventId")));
    match found {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s))
            if !s.is_empty()
                && s.chars().count() <= MAX_EVENT_ID_LEN
                && !s.chars().any(char::is_control) =>
        {
            Ok(Some(s.clone()))
        }
        Some(_) => Err(BadEventId),
    }
}

/// Whether `resolution` (a closed interrupt's recorded output) accepted delivery `event_id`.
pub fn is_redelivery(resolution: Option<&Value>, event_id: Option<&str>) -> bool {
    match (resolution.and_then(|r| r.get("eventId")), event_id) {
        (Some(Value::String(recorded)), Some(id)) => recorded == id,
        _ => false,
    }
}

/// The `eventId` of a delivery to `rec` (only external events have one).
pub fn delivery_id(rec: &InterruptRecord, body: &Value) -> Result<Option<String>, ResolveError> {
    if rec.kind != "external-event" {
        return Ok(None);
    }
    event_id(body).map_err(|e| {
        ResolveError::Resume(ResumeError::Invalid {
            message: e.to_string(),
            details: json!({"path": "/eventId"}),
        })
    })
}

/// Add what a delivery answer says about the event to a response's `interrupt` object.
pub fn describe_delivery(
    out: &mut Value,
    rec: &InterruptRecord,
    event_id: Option<&str>,
    duplicate: bool,
) {
    out["duplicate"] = json!(duplicate);
    out["correlationId"] = rec
        .data
        .get("correlationId")
        .cloned()
        .unwrap_or_else(|| json!(correlation_id(&rec.interrupt_id)));
    if let Some(id) = event_id {
        out["eventId"] = json!(id);
    }
}

impl Interrupts {
    /// The answer to a re-delivery of the event `rec` already accepted, or `None` when this is
    /// not one (no `eventId`, another one, or the interrupt is not resolved).
    pub(super) async fn redelivery(
        &self,
        rec: &InterruptRecord,
        event_id: Option<&str>,
    ) -> Result<Option<Value>, StoreError> {
        if rec.kind != "external-event"
            || rec.status != "resolved"
            || !is_redelivery(rec.resolution.as_ref(), event_id)
        {
            return Ok(None);
        }
        let status = self
            .store
            .get_run(&rec.run_id)
            .await?
            .map(|r| r.status)
            .unwrap_or_default();
        let mut out = json!({
            "runId": rec.run_id, "nodeId": rec.node_id, "interruptId": rec.interrupt_id,
            "status": status,
            "interrupt": {"kind": rec.kind, "nodeId": rec.node_id, "interruptId": rec.interrupt_id,
                          "outcome": "resolved"},
        });
        describe_delivery(&mut out["interrupt"], rec, event_id, true);
        if let Some(audit) = &self.audit {
            let details = json!({"interruptId": rec.interrupt_id, "nodeId": rec.node_id,
                                 "eventId": event_id});
            let actor = rec.resolved_by.as_deref().unwrap_or("unknown");
            audit
                .record_or_log(actor, "interrupt.redelivery", &rec.run_id, details)
                .await;
        }
        Ok(Some(out))
    }

    /// [`Self::redelivery`] against the interrupt's row as stored now (after a lost race).
    pub(super) async fn redelivery_now(
        &self,
        rec: &InterruptRecord,
        event_id: Option<&str>,
    ) -> Result<Option<Value>, StoreError> {
        if rec.kind != "external-event" || event_id.is_none() {
            return Ok(None);
        }
        match self.store.get_interrupt(&rec.interrupt_id).await? {
            Some(now) => self.redelivery(&now, event_id).await,
            None => Ok(None),
        }
    }

    /// The external-event interrupt a correlation id names. Anything else (a foreign shape, an
    /// unknown id, another kind's interrupt) is `NotFound`.
    pub async fn by_correlation(
        &self,
        correlation_id: &str,
    ) -> Result<InterruptRecord, ResolveError> {
        let id = interrupt_id_of(correlation_id).ok_or(ResolveError::NotFound)?;
        match self.store.get_interrupt(&id).await? {
            Some(rec) if rec.kind == "external-event" => Ok(rec),
            _ => Err(ResolveError::NotFound),
        }
    }
}

/// Check a node's `config.redact` (registration time).
pub fn check_redact_config(config: &Value) -> Result<(), String> {
    let Some(v) = config.get("redact") else {
        return Ok(());
    };
    let names = v
        .as_array()
        .ok_or("config.redact must be an array of key names")?;
    if names.len() > MAX_REDACT_NAMES {
        return Err(format!(
            "config.redact lists at most {MAX_REDACT_NAMES} names"
        ));
    }
    for n in names {
        match n.as_str() {
            Some(s) if !s.is_empty() && s.len() <= 100 => {}
            _ => {
                return Err("config.redact entries must be non-empty strings (≤ 100 bytes)".into())
            }
        }
    }
    Ok(())
}

/// The names a node asked to redact (already validated at registration).
pub fn redact_names(data: &Value) -> Vec<String> {
    data.get("redact")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).map(normalise).collect())
        .unwrap_or_default()
}

/// `payload` with every credential-shaped or `extra`-named key's value replaced by
/// [`REDACTED`], and the JSON pointers (RFC 6901) of the replaced values.
pub fn redact(payload: &Value, extra: &[String]) -> (Value, Vec<String>) {
    let mut out = payload.clone();
    let mut pointers = Vec::new();
    walk(&mut out, &mut String::new(), extra, &mut pointers);
    pointers.truncate(MAX_RECORDED_POINTERS);
    (out, pointers)
}

fn sensitive(key: &str, extra: &[String]) -> bool {
    let k = normalise(key);
    CREDENTIAL_NAMES.contains(&k.as_str()) || extra.contains(&k)
}

fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

// Recursion depth is bounded by the parsed body (serde_json refuses nesting beyond 128).
fn walk(v: &mut Value, path: &mut String, extra: &[String], pointers: &mut Vec<String>) {
    match v {
        Value::Object(map) => walk_object(map, path, extra, pointers),
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                let len = path.len();
                path.push_str(&format!("/{i}"));
                walk(item, path, extra, pointers);
                path.truncate(len);
            }
        }
        _ => {}
    }
}

fn walk_object(
    map: &mut Map<String, Value>,
    path: &mut String,
    extra: &[String],
    pointers: &mut Vec<String>,
) {
    for (k, val) in map.iter_mut() {
        let len = path.len();
        path.push('/');
        path.push_str(&escape(k));
        if sensitive(k, extra) {
            *val = Value::String(REDACTED.into());
            if pointers.len() < MAX_RECORDED_POINTERS {
                pointers.push(path.clone());
            }
        } else {
            walk(val, path, extra, pointers);
        }
        path.truncate(len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn correlation_ids_round_trip_and_refuse_foreign_shapes() {
        let id = "int_0123456789abcdef0123456789abcdef";
        let c = correlation_id(id);
        assert_eq!(c, "corr_0123456789abcdef0123456789abcdef");
        assert_eq!(interrupt_id_of(&c).as_deref(), Some(id));
        for bad in [
            "",
            "corr_",
            "corr_xyz",
            "int_0123456789abcdef0123456789abcdef",
            "corr_0123456789abcdef0123456789abcdef0",
            "corr_0123456789abcdef0123456789abcdeg",
        ] {
            assert_eq!(interrupt_id_of(bad), None, "{bad}");
        }
    }

    #[test]
    fn event_ids_are_bounded_printable_strings() {
        assert_eq!(event_id(&json!({})), Ok(None));
        assert_eq!(
            event_id(&json!({"eventId": "evt_1", "resumeValue": {}})),
            Ok(Some("evt_1".into()))
        );
        assert_eq!(
            event_id(&json!({"resumeValue": {"eventId": "evt_2", "eventPayload": {}}})),
            Ok(Some("evt_2".into()))
        );
        for bad in [
            json!({"eventId": ""}),
            json!({"eventId": 7}),
            json!({"eventId": "a\nb"}),
            json!({"eventId": "x".repeat(MAX_EVENT_ID_LEN + 1)}),
        ] {
            assert_eq!(event_id(&bad), Err(BadEventId), "{bad}");
        }
    }

    #[test]
    fn redelivery_needs_the_recorded_event_id() {
        let r = json!({"eventId": "evt_1"});
        assert!(is_redelivery(Some(&r), Some("evt_1")));
        assert!(!is_redelivery(Some(&r), Some("evt_2")));
        assert!(!is_redelivery(Some(&r), None));
        assert!(!is_redelivery(Some(&json!({})), Some("evt_1")));
        assert!(!is_redelivery(None, Some("evt_1")));
    }

    #[test]
    fn redaction_replaces_credentials_and_named_keys_anywhere() {
        let payload = json!({
            "orderId": "o1",
            "Authorization": "Bearer abc",
            "card": {"number": "4242", "cvc": "123", "brand": "visa"},
            "items": [{"api_key": "k1", "sku": "s"}, {"sku": "t"}],
            "a/b": {"password": "p"},
        });
        let extra = redact_names(&json!({"redact": ["cvc", "Number"]}));
        let (out, mut pointers) = redact(&payload, &extra);
        assert_eq!(out["orderId"], "o1");
        assert_eq!(out["Authorization"], REDACTED);
        assert_eq!(out["card"]["number"], REDACTED);
        assert_eq!(out["card"]["cvc"], REDACTED);
        assert_eq!(out["card"]["brand"], "visa");
        assert_eq!(out["items"][0]["api_key"], REDACTED);
        assert_eq!(out["items"][0]["sku"], "s");
        assert_eq!(out["a/b"]["password"], REDACTED);
        pointers.sort();
        assert_eq!(
            pointers,
            [
                "/Authorization",
                "/a~1b/password",
                "/card/cvc",
                "/card/number",
                "/items/0/api_key"
            ]
        );
        // Nothing sensitive: unchanged, nothing recorded.
        let plain = json!({"orderId": "o1", "status": "completed"});
        assert_eq!(redact(&plain, &[]), (plain.clone(), vec![]));
    }

    #[test]
    fn redact_config_is_checked() {
        assert!(check_redact_config(&json!({})).is_ok());
        assert!(check_redact_config(&json!({"redact": ["cvc"]})).is_ok());
        assert!(check_redact_config(&json!({"redact": "cvc"})).is_err());
        assert!(check_redact_config(&json!({"redact": [""]})).is_err());
        assert!(check_redact_config(&json!({"redact": [1]})).is_err());
        let many: Vec<String> = (0..=MAX_REDACT_NAMES).map(|i| format!("k{i}")).collect();
        assert!(check_redact_config(&json!({ "redact": many })).is_err());
    }
}
