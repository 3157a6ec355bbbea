-- wopbox core schema (SQLite). Postgres gets its own migration set behind the same `Store` trait.

-- Registered workflow definitions (latest version per id).
CREATE TABLE workflows (
    id           TEXT PRIMARY KEY,
    version      TEXT NOT NULL,
    digest       TEXT NOT NULL,
    source       TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    updated_at   TEXT NOT NULL
);

-- Every definition ever registered, content-addressed; runs pin the exact one they execute.
CREATE TABLE workflow_versions (
    digest       TEXT PRIMARY KEY,
    workflow_id  TEXT NOT NULL,
    definition   TEXT NOT NULL,
    created_at   TEXT NOT NULL
);

CREATE TABLE runs (
    run_id            TEXT PRIMARY KEY,
    workflow_id       TEXT NOT NULL,
    definition_digest TEXT NOT NULL REFERENCES workflow_versions(digest),
    tenant_id         TEXT NOT NULL,
    principal_id      TEXT NOT NULL,
    status            TEXT NOT NULL,
    terminal          INTEGER NOT NULL DEFAULT 0,
    inputs            TEXT NOT NULL,
    variables         TEXT NOT NULL,
    options           TEXT NOT NULL,
    current_node_id   TEXT,
    error             TEXT,
    outputs           TEXT,
    next_sequence     INTEGER NOT NULL DEFAULT 0,
    created_at        TEXT NOT NULL,
    started_at        TEXT,
    completed_at      TEXT,
    updated_at        TEXT NOT NULL
);
CREATE INDEX runs_unfinished ON runs(created_at) WHERE terminal = 0;

-- The append-only event log. (run_id, sequence) is the total order; sequence is gap-free from 0.
CREATE TABLE run_events (
    run_id        TEXT NOT NULL,
    sequence      INTEGER NOT NULL,
    event_id      TEXT NOT NULL,
    type          TEXT NOT NULL,
    node_id       TEXT,
    causation_id  TEXT,
    payload       TEXT NOT NULL,
    timestamp     TEXT NOT NULL,
    PRIMARY KEY (run_id, sequence)
) WITHOUT ROWID;

-- Layer-1 idempotency records: scope_key = sha256(credential ':' endpoint ':' Idempotency-Key).
CREATE TABLE idempotency_keys (
    scope_key        TEXT PRIMARY KEY,
    request_digest   TEXT NOT NULL,
    response_status  INTEGER NOT NULL,
    response_body    TEXT NOT NULL,
    created_at       TEXT NOT NULL
);
