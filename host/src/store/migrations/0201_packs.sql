-- Installed node packs. Blobs are content-addressed (hex SHA-256) so the same
-- module uploaded twice is stored once; rows pin the exact bytes they load.
CREATE TABLE pack_blobs (
    sha256      TEXT PRIMARY KEY,
    bytes       BLOB NOT NULL,
    created_at  TEXT NOT NULL
);

CREATE TABLE packs (
    tenant_id      TEXT NOT NULL,
    name           TEXT NOT NULL,
    version        TEXT NOT NULL,
    runtime        TEXT NOT NULL,
    manifest       TEXT NOT NULL,
    entry_sha256   TEXT NOT NULL REFERENCES pack_blobs(sha256),
    tarball_sha256 TEXT REFERENCES pack_blobs(sha256),
    type_ids       TEXT NOT NULL,
    published_by   TEXT NOT NULL,
    created_at     TEXT NOT NULL,
    PRIMARY KEY (tenant_id, name, version)
);
