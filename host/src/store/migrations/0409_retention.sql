-- Retention (docs/operations.md "Retention"). A run whose data expired leaves a tombstone, so
-- reads of it answer 410 Gone (production-profile.md §"Event retention") rather than 404.
-- `purged_below` tracks how much of its event log has been deleted: long logs go in several
-- small batches, and nobody reads them meanwhile (the tombstone answers first).
CREATE TABLE expired_runs (
    run_id        TEXT PRIMARY KEY,
    tenant_id     TEXT NOT NULL,
    completed_at  TEXT NOT NULL,
    expired_at    TEXT NOT NULL,
    event_count   INTEGER NOT NULL,
    purged_below  INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX expired_runs_purging ON expired_runs(run_id) WHERE purged_below < event_count;
CREATE INDEX expired_runs_age ON expired_runs(expired_at);
-- What the sweeper scans: finished runs by completion time, idempotency records by age.
CREATE INDEX runs_expirable ON runs(completed_at) WHERE terminal = 1;
CREATE INDEX idempotency_keys_age ON idempotency_keys(created_at);
