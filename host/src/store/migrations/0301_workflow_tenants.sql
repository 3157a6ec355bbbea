-- Workflow definitions belong to a tenant; tenant '' holds the operator's definitions
-- (--workflows, --fixtures), visible to every tenant. Before this, every key was a key of the
-- tenant 'default', so definitions registered over the API move to it.
CREATE TABLE workflows_by_tenant (
    tenant_id    TEXT NOT NULL,
    id           TEXT NOT NULL,
    version      TEXT NOT NULL,
    digest       TEXT NOT NULL,
    source       TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    updated_at   TEXT NOT NULL,
    PRIMARY KEY (tenant_id, id)
);
INSERT INTO workflows_by_tenant (tenant_id, id, version, digest, source, created_at, updated_at)
    SELECT CASE WHEN source = 'api' THEN 'default' ELSE '' END,
           id, version, digest, source, created_at, updated_at
    FROM workflows;
DROP TABLE workflows;
ALTER TABLE workflows_by_tenant RENAME TO workflows;
