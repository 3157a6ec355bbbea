-- core.subWorkflow parent linkage: a child run records the run and node that dispatched it.
-- Top-level runs leave both NULL. Portable SQL (plain columns + index) so Postgres can mirror it.
ALTER TABLE runs ADD COLUMN parent_run_id TEXT;
ALTER TABLE runs ADD COLUMN parent_node_id TEXT;
CREATE INDEX runs_by_parent ON runs(parent_run_id, parent_node_id);
