-- core.subWorkflow parent linkage (mirrors src/store/migrations/0350_subworkflows.sql).
ALTER TABLE runs ADD COLUMN parent_run_id TEXT COLLATE "C";
ALTER TABLE runs ADD COLUMN parent_node_id TEXT COLLATE "C";
CREATE INDEX runs_by_parent ON runs(parent_run_id, parent_node_id);
