-- Workflow definitions belong to a tenant; tenant '' holds the operator's definitions
-- (--workflows, --fixtures), visible to every tenant (as src/store/migrations/0301 on SQLite).
ALTER TABLE workflows ADD COLUMN tenant_id TEXT COLLATE "C" NOT NULL DEFAULT '';
UPDATE workflows SET tenant_id = 'default' WHERE source = 'api';
ALTER TABLE workflows DROP CONSTRAINT workflows_pkey;
ALTER TABLE workflows ADD PRIMARY KEY (tenant_id, id);
