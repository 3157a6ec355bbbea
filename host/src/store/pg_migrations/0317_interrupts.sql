-- Interrupts: a node parked until an external resolution (approval, clarification, external
-- event). The event log holds what happened; this table is the lookup for the resolve surfaces.
-- Resolution tokens are never stored: they are re-derived (HMAC) from the row and a secret that
-- lives outside the database, and only their SHA-256 digests are kept for comparison.
CREATE TABLE interrupts (
    interrupt_id        TEXT COLLATE "C" PRIMARY KEY,
    run_id              TEXT COLLATE "C" NOT NULL REFERENCES runs(run_id),
    node_id             TEXT COLLATE "C" NOT NULL,
    interrupt_key       TEXT COLLATE "C" NOT NULL,   -- replay key `${runId}:${nodeId}:${count}`
    kind                TEXT COLLATE "C" NOT NULL,   -- approval | clarification | external-event
    status              TEXT COLLATE "C" NOT NULL,   -- pending | resolved | cancelled | expired
    data                TEXT COLLATE "C" NOT NULL,   -- JSON: the interrupt payload's `data`
    timeout_ms          BIGINT,         -- the interrupt's own deadline, if any
    token_kid           TEXT COLLATE "C" NOT NULL,   -- which signing secret minted the tokens
    token_hash          TEXT COLLATE "C" NOT NULL,   -- sha256 hex of the resolve token
    inspect_token_hash  TEXT COLLATE "C" NOT NULL,   -- sha256 hex of the inspect-only token
    requested_event_id  TEXT COLLATE "C" NOT NULL,
    requested_at        TEXT COLLATE "C" NOT NULL,
    token_expires_at    TEXT COLLATE "C" NOT NULL,
    deadline_at         TEXT COLLATE "C",
    resolution          TEXT COLLATE "C",            -- JSON: the node's output after resolution
    resolved_by         TEXT COLLATE "C",
    resolved_at         TEXT COLLATE "C",
    resumed_event_id    TEXT COLLATE "C"
);
CREATE UNIQUE INDEX interrupts_run_key ON interrupts(run_id, interrupt_key);
CREATE INDEX interrupts_run_status ON interrupts(run_id, status);
