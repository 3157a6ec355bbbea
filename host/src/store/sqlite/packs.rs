//! SQLite implementation of [`PackStore`].

use async_trait::async_trait;

use super::SqliteStore;
use crate::store::packs::{PackRecord, PackStore};
use crate::store::StoreResult;

#[async_trait]
impl PackStore for SqliteStore {
    async fn put_blob(&self, sha256: &str, bytes: &[u8]) -> StoreResult<()> {
        sqlx::query(
            "INSERT OR IGNORE INTO pack_blobs (sha256, bytes, created_at) VALUES (?, ?, ?)",
        )
        .bind(sha256)
        .bind(bytes)
        .bind(crate::store::ts(chrono::Utc::now()))
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn get_blob(&self, sha256: &str) -> StoreResult<Option<Vec<u8>>> {
        let row: Option<(Vec<u8>,)> =
            sqlx::query_as("SELECT bytes FROM pack_blobs WHERE sha256 = ?")
                .bind(sha256)
                .fetch_optional(&self.reader)
                .await?;
        Ok(row.map(|r| r.0))
    }

    async fn insert_pack(&self, rec: &PackRecord) -> StoreResult<bool> {
        let res = sqlx::query(
            "INSERT OR IGNORE INTO packs (tenant_id, name, version, runtime, manifest, entry_sha256, \
             tarball_sha256, type_ids, published_by, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&rec.tenant_id)
        .bind(&rec.name)
        .bind(&rec.version)
        .bind(&rec.runtime)
        .bind(serde_json::to_string(&rec.manifest)?)
        .bind(&rec.entry_sha256)
        .bind(&rec.tarball_sha256)
        .bind(serde_json::to_string(&rec.type_ids)?)
        .bind(&rec.published_by)
        .bind(&rec.created_at)
        .execute(&self.writer)
        .await?;
        Ok(res.rows_affected() == 1)
    }

    async fn get_pack(
        &self,
        tenant: &str,
        name: &str,
        version: &str,
    ) -> StoreResult<Option<PackRecord>> {
        let row =
            sqlx::query("SELECT * FROM packs WHERE tenant_id = ? AND name = ? AND version = ?")
                .bind(tenant)
                .bind(name)
                .bind(version)
                .fetch_optional(&self.reader)
                .await?;
        row.as_ref().map(crate::store::rows::pack).transpose()
    }

    async fn list_packs(&self) -> StoreResult<Vec<PackRecord>> {
        let rows = sqlx::query("SELECT * FROM packs ORDER BY created_at, rowid")
            .fetch_all(&self.reader)
            .await?;
        rows.iter().map(crate::store::rows::pack).collect()
    }

    async fn delete_pack(&self, tenant: &str, name: &str, version: &str) -> StoreResult<bool> {
        let res = sqlx::query("DELETE FROM packs WHERE tenant_id = ? AND name = ? AND version = ?")
            .bind(tenant)
            .bind(name)
            .bind(version)
            .execute(&self.writer)
            .await?;
        Ok(res.rows_affected() == 1)
    }
}
