-- Webhook subscriptions, the durable delivery outbox, and the tamper-evident audit log.

-- One row per registered subscription. The HMAC secret has to be stored as-is (the host signs
-- with it); it is never logged or returned after registration — logs use `secret_fingerprint`.
CREATE TABLE webhook_subscriptions (
    webhook_id          TEXT PRIMARY KEY,
    tenant_id           TEXT NOT NULL,
    principal_id        TEXT NOT NULL,
    url                 TEXT NOT NULL,
    events              TEXT NOT NULL,   -- JSON array of event types
    tags                TEXT,            -- JSON array, NULL = no tag filter
    secret              TEXT NOT NULL,
    secret_fingerprint  TEXT NOT NULL,
    status              TEXT NOT NULL,   -- active | deleted
    created_at          TEXT NOT NULL,
    deleted_at          TEXT
);

-- Per-run fan-out watermark: events with sequence < next_sequence have been matched against the
-- subscriptions and their deliveries written to the outbox (in the same transaction).
CREATE TABLE webhook_fanout (
    run_id         TEXT PRIMARY KEY,
    next_sequence  INTEGER NOT NULL
);

-- The outbox: one row per (subscription, event). The body is frozen at enqueue time so every
-- retry sends the same bytes (re-signed with a fresh timestamp).
CREATE TABLE webhook_deliveries (
    delivery_id      TEXT PRIMARY KEY,
    webhook_id       TEXT NOT NULL REFERENCES webhook_subscriptions(webhook_id),
    run_id           TEXT NOT NULL,
    event_id         TEXT NOT NULL,
    event_type       TEXT NOT NULL,
    sequence         INTEGER NOT NULL,
    body             TEXT NOT NULL,
    status           TEXT NOT NULL,   -- pending | delivered | dead | cancelled
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_ms  INTEGER NOT NULL,
    last_status      INTEGER,
    last_error       TEXT,
    created_at       TEXT NOT NULL,
    finished_at      TEXT,
    UNIQUE (webhook_id, event_id)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries(webhook_id, next_attempt_ms) WHERE status = 'pending';
CREATE INDEX webhook_deliveries_next ON webhook_deliveries(next_attempt_ms) WHERE status = 'pending';
CREATE INDEX webhook_deliveries_dead ON webhook_deliveries(webhook_id, finished_at) WHERE status = 'dead';

-- Append-only audit log (openwop-audit-log-integrity). `prev_hash` is the SHA-256 of the prior
-- entry's RFC 8785 canonical JSON; `entry_hash` caches this entry's own hash (the Merkle leaf).
CREATE TABLE audit_log (
    seq          INTEGER PRIMARY KEY,
    occurred_at  TEXT NOT NULL,
    actor        TEXT NOT NULL,
    action       TEXT NOT NULL,
    target       TEXT NOT NULL,
    details      TEXT NOT NULL,   -- JSON object
    prev_hash    TEXT,            -- NULL only for the genesis entry
    entry_hash   TEXT NOT NULL
);

-- The application never updates or deletes audit rows; the triggers make the storage layer refuse
-- it too, so only someone who can rewrite the schema can tamper (and the chain then shows it).
CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;

CREATE TABLE audit_checkpoints (
    checkpoint_id  TEXT PRIMARY KEY,
    at_sequence    INTEGER NOT NULL UNIQUE,
    merkle_root    TEXT NOT NULL,
    signature      TEXT NOT NULL,
    created_at     TEXT NOT NULL
);
CREATE TRIGGER audit_checkpoints_no_update BEFORE UPDATE ON audit_checkpoints
BEGIN SELECT RAISE(ABORT, 'audit_checkpoints is append-only'); END;
CREATE TRIGGER audit_checkpoints_no_delete BEFORE DELETE ON audit_checkpoints
BEGIN SELECT RAISE(ABORT, 'audit_checkpoints is append-only'); END;
