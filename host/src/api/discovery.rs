//! `GET /.well-known/openwop` and `GET /v1/openapi.json`.
//!
//! The discovery document is assembled from parts: root blocks (optionally mirrored under the
//! deprecated `capabilities` wrapper) and the fixture list. Later subsystems add their blocks
//! (`sandbox`, `nodePackRuntimes`, ...) and fixtures through [`Discovery`] without touching
//! this file. Only advertise what works.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::RwLock;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};

use super::AppState;

#[derive(Default)]
struct Doc {
    blocks: BTreeMap<String, Value>,
    mirrored: BTreeSet<String>,
    fixtures: BTreeSet<String>,
}

pub struct Discovery {
    doc: RwLock<Doc>,
}

impl Discovery {
    /// The core blocks: every required root field plus the transport/stream claims.
    pub fn new(max_body_bytes: usize) -> Self {
        let d = Discovery {
            doc: RwLock::new(Doc::default()),
        };
        d.set_block("protocolVersion", json!(crate::PROTOCOL_VERSION), false);
        d.set_block(
            "implementation",
            json!({"name": "wopbox", "version": env!("CARGO_PKG_VERSION"), "vendor": "wopbox"}),
            false,
        );
        // `clarification.request` is served by `core.clarificationGate` (one round per gate).
        d.set_block(
            "supportedEnvelopes",
            json!(["clarification.request"]),
            false,
        );
        d.set_block("schemaVersions", json!({"clarification.request": 1}), false);
        d.set_block(
            "limits",
            json!({
                "clarificationRounds": 1,
                "schemaRounds": 0,
                "envelopesPerTurn": 0,
                "maxRequestBodyBytes": max_body_bytes,
            }),
            false,
        );
        d.set_block("supportedTransports", json!(["rest"]), false);
        d.set_block(
            "extensions",
            json!({
                "x-host-wopbox": {"workflowRegistration": {"create": "POST /v1/workflows", "put": "PUT /v1/workflows/{workflowId}"}},
                // Profiles are added by `add_interrupt_profile` once implemented and tested.
                "interrupts": {"profiles": [], "signedCallbackTokens": true, "tokenIntents": ["resolve", "inspect"]},
            }),
            false,
        );
        d
    }

    /// Add or replace a root block; `mirror` also places it under `capabilities`.
    pub fn set_block(&self, key: &str, value: Value, mirror: bool) {
        let mut doc = self.doc.write().unwrap();
        doc.blocks.insert(key.to_string(), value);
        if mirror {
            doc.mirrored.insert(key.to_string());
        } else {
            doc.mirrored.remove(key);
        }
    }

    /// Merge the keys of the object `value` into the object block `key` (created if absent), so
    /// several subsystems can each own a part of one block (`production.retention`, ...).
    pub fn merge_block(&self, key: &str, value: Value, mirror: bool) {
        let mut doc = self.doc.write().unwrap();
        let block = doc
            .blocks
            .entry(key.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
        match (block, value) {
            (Value::Object(into), Value::Object(from)) => into.extend(from),
            (block, value) => *block = value,
        }
        if mirror {
            doc.mirrored.insert(key.to_string());
        }
    }

    /// Claim an interrupt profile under `extensions.interrupts.profiles` (interrupt-profiles.md
    /// §"Discovery guidance"). Only for profiles whose behaviour is implemented and tested.
    pub fn add_interrupt_profile(&self, profile: &str) {
        let mut doc = self.doc.write().unwrap();
        let Some(list) = doc
            .blocks
            .get_mut("extensions")
            .and_then(|e| e.pointer_mut("/interrupts/profiles"))
            .and_then(Value::as_array_mut)
        else {
            return;
        };
        if !list.iter().any(|p| p == profile) {
            list.push(json!(profile));
        }
    }

    pub fn add_fixture(&self, id: &str) {
        self.doc.write().unwrap().fixtures.insert(id.to_string());
    }

    pub fn remove_fixture(&self, id: &str) {
        self.doc.write().unwrap().fixtures.remove(id);
    }

    pub fn fixtures(&self) -> Vec<String> {
        self.doc.read().unwrap().fixtures.iter().cloned().collect()
    }

    pub fn document(&self) -> Value {
        let doc = self.doc.read().unwrap();
        let mut root = Map::new();
        for (k, v) in &doc.blocks {
            root.insert(k.clone(), v.clone());
        }
        root.insert(
            "fixtures".into(),
            json!(doc.fixtures.iter().collect::<Vec<_>>()),
        );
        let mirror: Map<String, Value> = doc
            .mirrored
            .iter()
            .filter_map(|k| doc.blocks.get(k).map(|v| (k.clone(), v.clone())))
            .collect();
        root.insert("capabilities".into(), Value::Object(mirror));
        Value::Object(root)
    }
}

pub async fn well_known(State(st): State<AppState>, headers: HeaderMap) -> Response {
    let body = st.discovery.document().to_string();
    let etag = format!("\"{}\"", &crate::engine::sha256_hex(body.as_bytes())[..32]);
    let cache = HeaderValue::from_static("public, max-age=60");
    let matches = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"))
        .unwrap_or(false);
    let etag_value = HeaderValue::from_str(&etag).unwrap();
    if matches {
        return (
            StatusCode::NOT_MODIFIED,
            [(header::ETAG, etag_value), (header::CACHE_CONTROL, cache)],
        )
            .into_response();
    }
    (
        StatusCode::OK,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (header::ETAG, etag_value),
            (header::CACHE_CONTROL, cache),
        ],
        body,
    )
        .into_response()
}

pub async fn openapi() -> Response {
    let run_id =
        json!({"name": "runId", "in": "path", "required": true, "schema": {"type": "string"}});
    let wf_id =
        json!({"name": "workflowId", "in": "path", "required": true, "schema": {"type": "string"}});
    let err = json!({"description": "Error envelope", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}});
    let doc = json!({
        "openapi": "3.1.0",
        "info": {"title": "wopbox OpenWOP v1 host", "version": env!("CARGO_PKG_VERSION")},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {"Error": {"type": "object", "required": ["error", "message"], "additionalProperties": false,
                "properties": {"error": {"type": "string"}, "message": {"type": "string"}, "details": {"type": "object"}}}}
        },
        "security": [{"bearer": []}],
        "paths": {
            "/.well-known/openwop": {"get": {"summary": "Discovery document", "security": [], "responses": {"200": {"description": "Capabilities"}}}},
            "/v1/openapi.json": {"get": {"summary": "This document", "security": [], "responses": {"200": {"description": "OpenAPI"}}}},
            "/v1/runs": {"post": {"summary": "Create a run (Idempotency-Key honoured)", "responses": {"201": {"description": "Run created"}, "400": err, "401": err, "409": err}}},
            "/v1/runs/{runId}": {"get": {"summary": "Run snapshot", "parameters": [run_id], "responses": {"200": {"description": "RunSnapshot"}, "404": err}}},
            "/v1/runs/{runId}/cancel": {"post": {"summary": "Cancel a run", "parameters": [run_id], "responses": {"200": {"description": "Cancelling / cancelled"}, "404": err}}},
            "/v1/runs/{runId}/events": {"get": {"summary": "SSE event stream (Last-Event-ID resume)", "parameters": [run_id], "responses": {"200": {"description": "text/event-stream"}, "404": err}}},
            "/v1/runs/{runId}/events/poll": {"get": {"summary": "Poll events after lastSequence", "parameters": [run_id,
                {"name": "lastSequence", "in": "query", "schema": {"type": "integer", "minimum": -1}}], "responses": {"200": {"description": "Events page"}, "400": err, "404": err}}},
            "/v1/workflows": {"get": {"summary": "List workflows", "responses": {"200": {"description": "Workflows"}}},
                              "post": {"summary": "Register a workflow definition (host extension)", "responses": {"201": {"description": "Registered"}, "400": err}}},
            "/v1/runs/{runId}/interrupts/{nodeId}": {"post": {"summary": "Resolve the interrupt a node is parked on", "parameters": [run_id,
                {"name": "nodeId", "in": "path", "required": true, "schema": {"type": "string"}}],
                "responses": {"200": {"description": "Resolved; the run resumes"}, "400": err, "404": err, "409": err, "410": err, "422": err}}},
            "/v1/interrupts/{token}": {
                "get": {"summary": "Inspect a pending interrupt (signed token, no bearer)", "security": [], "parameters": [{"name": "token", "in": "path", "required": true, "schema": {"type": "string"}}],
                        "responses": {"200": {"description": "Interrupt"}, "400": err, "404": err, "409": err, "410": err}},
                "post": {"summary": "Resolve an interrupt (signed token, no bearer)", "security": [], "parameters": [{"name": "token", "in": "path", "required": true, "schema": {"type": "string"}}],
                         "responses": {"200": {"description": "Resolved"}, "400": err, "403": err, "404": err, "409": err, "410": err, "422": err}}},
            "/v1/x-wopbox/execute": crate::packs::remote::openapi_path(&err),
            "/v1/x-wopbox/external-events": {"post": {"summary": "Deliver an external event by its correlationId (host extension; idempotent by eventId)",
                "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object", "required": ["correlationId"],
                    "properties": {"correlationId": {"type": "string"}, "eventId": {"type": "string", "minLength": 1, "maxLength": 200}, "eventPayload": {}}}}}},
                "responses": {"200": {"description": "Accepted, or a re-delivery (interrupt.duplicate)"}, "400": err, "401": err, "403": err, "404": err, "409": err, "410": err, "422": err}}},
            "/v1/workflows/{workflowId}": {"get": {"summary": "Workflow definition", "parameters": [wf_id], "responses": {"200": {"description": "WorkflowDefinition"}, "404": err}},
                                           "put": {"summary": "Register/replace a workflow definition (host extension)", "parameters": [wf_id], "responses": {"200": {"description": "Registered"}, "400": err}}}
        }
    });
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=60"),
            ),
        ],
        doc.to_string(),
    )
        .into_response()
}
