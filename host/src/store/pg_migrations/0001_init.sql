-- wopbox schema for PostgreSQL: the same tables as the SQLite set (src/store/migrations), plus
-- what several processes sharing one database need (run leases, delivery claims).
-- JSON is kept as TEXT, not JSONB, so documents come back byte-for-byte as stored (JSONB would
-- reorder keys and change what clients see). Timestamps are RFC 3339 TEXT as on SQLite.
-- Text compares by code point (COLLATE "C"), as on SQLite, whatever the database's locale, so
-- listings and cursors order the same on both backends.

CREATE TABLE workflows (
    id           TEXT COLLATE "C" PRIMARY KEY,
    version      TEXT COLLATE "C" NOT NULL,
    digest       TEXT COLLATE "C" NOT NULL,
    source       TEXT COLLATE "C" NOT NULL,
    created_at   TEXT COLLATE "C" NOT NULL,
    updated_at   TEXT COLLATE "C" NOT NULL
);

CREATE TABLE workflow_versions (
    digest       TEXT COLLATE "C" PRIMARY KEY,
    workflow_id  TEXT COLLATE "C" NOT NULL,
    definition   TEXT COLLATE "C" NOT NULL,
    created_at   TEXT COLLATE "C" NOT NULL
);

CREATE TABLE runs (
    run_id            TEXT COLLATE "C" PRIMARY KEY,
    workflow_id       TEXT COLLATE "C" NOT NULL,
    definition_digest TEXT COLLATE "C" NOT NULL REFERENCES workflow_versions(digest),
    tenant_id         TEXT COLLATE "C" NOT NULL,
    principal_id      TEXT COLLATE "C" NOT NULL,
    status            TEXT COLLATE "C" NOT NULL,
    terminal          BIGINT NOT NULL DEFAULT 0,
    inputs            TEXT COLLATE "C" NOT NULL,
    variables         TEXT COLLATE "C" NOT NULL,
    options           TEXT COLLATE "C" NOT NULL,
    current_node_id   TEXT COLLATE "C",
    error             TEXT COLLATE "C",
    outputs           TEXT COLLATE "C",
    next_sequence     BIGINT NOT NULL DEFAULT 0,
    created_at        TEXT COLLATE "C" NOT NULL,
    started_at        TEXT COLLATE "C",
    completed_at      TEXT COLLATE "C",
    updated_at        TEXT COLLATE "C" NOT NULL,
    -- Which process executes the run, and until when (database clock). A process renews its
    -- leases while alive; an expired lease is claimed by another process (FOR UPDATE SKIP
    -- LOCKED) which resumes the run from its event log. Appends are fenced on the owner.
    lease_owner       TEXT COLLATE "C",
    lease_until       TIMESTAMPTZ
);
CREATE INDEX runs_unfinished ON runs(created_at) WHERE terminal = 0;
CREATE INDEX runs_leases ON runs(lease_owner) WHERE terminal = 0;

-- (run_id, sequence) is the total order; the primary key makes a duplicate sequence impossible
-- even if two writers raced past the row lock.
CREATE TABLE run_events (
    run_id        TEXT COLLATE "C" NOT NULL,
    sequence      BIGINT NOT NULL,
    event_id      TEXT COLLATE "C" NOT NULL UNIQUE,
    type          TEXT COLLATE "C" NOT NULL,
    node_id       TEXT COLLATE "C",
    causation_id  TEXT COLLATE "C",
    payload       TEXT COLLATE "C" NOT NULL,
    timestamp     TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (run_id, sequence)
);

CREATE TABLE idempotency_keys (
    scope_key        TEXT COLLATE "C" PRIMARY KEY,
    request_digest   TEXT COLLATE "C" NOT NULL,
    response_status  BIGINT NOT NULL,
    response_body    TEXT COLLATE "C" NOT NULL,
    created_at       TEXT COLLATE "C" NOT NULL
);

CREATE TABLE webhook_subscriptions (
    webhook_id          TEXT COLLATE "C" PRIMARY KEY,
    tenant_id           TEXT COLLATE "C" NOT NULL,
    principal_id        TEXT COLLATE "C" NOT NULL,
    url                 TEXT COLLATE "C" NOT NULL,
    events              TEXT COLLATE "C" NOT NULL,
    tags                TEXT COLLATE "C",
    secret              TEXT COLLATE "C" NOT NULL,
    secret_fingerprint  TEXT COLLATE "C" NOT NULL,
    status              TEXT COLLATE "C" NOT NULL,
    created_at          TEXT COLLATE "C" NOT NULL,
    deleted_at          TEXT COLLATE "C"
);

CREATE TABLE webhook_fanout (
    run_id         TEXT COLLATE "C" PRIMARY KEY,
    next_sequence  BIGINT NOT NULL
);

CREATE TABLE webhook_deliveries (
    delivery_id      TEXT COLLATE "C" PRIMARY KEY,
    webhook_id       TEXT COLLATE "C" NOT NULL REFERENCES webhook_subscriptions(webhook_id),
    run_id           TEXT COLLATE "C" NOT NULL,
    event_id         TEXT COLLATE "C" NOT NULL,
    event_type       TEXT COLLATE "C" NOT NULL,
    sequence         BIGINT NOT NULL,
    body             TEXT COLLATE "C" NOT NULL,
    status           TEXT COLLATE "C" NOT NULL,
    attempts         BIGINT NOT NULL DEFAULT 0,
    next_attempt_ms  BIGINT NOT NULL,
    last_status      BIGINT,
    last_error       TEXT COLLATE "C",
    created_at       TEXT COLLATE "C" NOT NULL,
    finished_at      TEXT COLLATE "C",
    -- A process that picked the row for an attempt holds it until then (ms since the epoch),
    -- so two processes never send the same attempt; a crashed sender's claim just expires.
    claimed_until_ms BIGINT,
    UNIQUE (webhook_id, event_id)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries(webhook_id, next_attempt_ms) WHERE status = 'pending';
CREATE INDEX webhook_deliveries_next ON webhook_deliveries(next_attempt_ms) WHERE status = 'pending';
CREATE INDEX webhook_deliveries_dead ON webhook_deliveries(webhook_id, finished_at) WHERE status = 'dead';

CREATE TABLE audit_log (
    seq          BIGINT PRIMARY KEY,
    occurred_at  TEXT COLLATE "C" NOT NULL,
    actor        TEXT COLLATE "C" NOT NULL,
    action       TEXT COLLATE "C" NOT NULL,
    target       TEXT COLLATE "C" NOT NULL,
    details      TEXT COLLATE "C" NOT NULL,
    prev_hash    TEXT COLLATE "C",
    entry_hash   TEXT COLLATE "C" NOT NULL
);

CREATE TABLE audit_checkpoints (
    checkpoint_id  TEXT COLLATE "C" PRIMARY KEY,
    at_sequence    BIGINT NOT NULL UNIQUE,
    merkle_root    TEXT COLLATE "C" NOT NULL,
    signature      TEXT COLLATE "C" NOT NULL,
    created_at     TEXT COLLATE "C" NOT NULL
);

-- The storage layer refuses to rewrite history, as the SQLite triggers do.
CREATE FUNCTION wopbox_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only', TG_TABLE_NAME;
END;
$$;
CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION wopbox_append_only();
CREATE TRIGGER audit_checkpoints_append_only BEFORE UPDATE OR DELETE ON audit_checkpoints
    FOR EACH ROW EXECUTE FUNCTION wopbox_append_only();

CREATE TABLE pack_blobs (
    sha256      TEXT COLLATE "C" PRIMARY KEY,
    bytes       BYTEA NOT NULL,
    created_at  TEXT COLLATE "C" NOT NULL
);

CREATE TABLE packs (
    tenant_id      TEXT COLLATE "C" NOT NULL,
    name           TEXT COLLATE "C" NOT NULL,
    version        TEXT COLLATE "C" NOT NULL,
    runtime        TEXT COLLATE "C" NOT NULL,
    manifest       TEXT COLLATE "C" NOT NULL,
    entry_sha256   TEXT COLLATE "C" NOT NULL REFERENCES pack_blobs(sha256),
    tarball_sha256 TEXT COLLATE "C" REFERENCES pack_blobs(sha256),
    type_ids       TEXT COLLATE "C" NOT NULL,
    published_by   TEXT COLLATE "C" NOT NULL,
    created_at     TEXT COLLATE "C" NOT NULL,
    -- Insertion order (SQLite lists by rowid).
    ord            BIGSERIAL,
    PRIMARY KEY (tenant_id, name, version)
);
