-- Interrupts: a node parked until an external resolution (approval, clarification, external
-- event). The event log holds what happened; this table is the lookup for the resolve surfaces.
-- Resolution tokens are never stored: they are re-derived (HMAC) from the row and a secret that
-- lives outside the database, and only their SHA-256 digests are kept for comparison.
CREATE TABLE interrupts (
    interrupt_id        TEXT PRIMARY KEY,
    run_id              TEXT NOT NULL REFERENCES runs(run_id),
    node_id             TEXT NOT NULL,
    interrupt_key       TEXT NOT NULL,   -- replay key `${runId}:${nodeId}:${count}`
    kind                TEXT NOT NULL,   -- approval | clarification | external-event
    status              TEXT NOT NULL,   -- pending | resolved | cancelled | expired
    data                TEXT NOT NULL,   -- JSON: the interrupt payload's `data`
    timeout_ms          INTEGER,         -- the interrupt's own deadline, if any
    token_kid           TEXT NOT NULL,   -- which signing secret minted the tokens
    token_hash          TEXT NOT NULL,   -- sha256 hex of the resolve token
    inspect_token_hash  TEXT NOT NULL,   -- sha256 hex of the inspect-only token
    requested_event_id  TEXT NOT NULL,
    requested_at        TEXT NOT NULL,
    token_expires_at    TEXT NOT NULL,
    deadline_at         TEXT,
    resolution          TEXT,            -- JSON: the node's output after resolution
    resolved_by         TEXT,
    resolved_at         TEXT,
    resumed_event_id    TEXT
);
CREATE UNIQUE INDEX interrupts_run_key ON interrupts(run_id, interrupt_key);
CREATE INDEX interrupts_run_status ON interrupts(run_id, status);
