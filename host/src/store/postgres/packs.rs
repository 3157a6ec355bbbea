//! Postgres implementation of [`PackStore`]: blobs live in the database, so every process
//! sharing it can load every uploaded pack; changes notify the other processes.

use async_trait::async_trait;

use super::{notify, PgStore, CH_CHANGES};
use crate::store::packs::{PackRecord, PackStore};
use crate::store::{rows, StoreResult};

#[async_trait]
impl PackStore for PgStore {
    async fn put_blob(&self, sha256: &str, bytes: &[u8]) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO pack_blobs (sha256, bytes, created_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        )
        .bind(sha256)
        .bind(bytes)
        .bind(crate::store::ts(chrono::Utc::now()))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn get_blob(&self, sha256: &str) -> StoreResult<Option<Vec<u8>>> {
        let row: Option<(Vec<u8>,)> =
            sqlx::query_as("SELECT bytes FROM pack_blobs WHERE sha256 = $1")
                .bind(sha256)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.map(|r| r.0))
    }

    async fn insert_pack(&self, rec: &PackRecord) -> StoreResult<bool> {
        let mut tx = self.pool.begin().await?;
        let res = sqlx::query(
            "INSERT INTO packs (tenant_id, name, version, runtime, manifest, entry_sha256, \
             tarball_sha256, type_ids, published_by, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
             ON CONFLICT DO NOTHING",
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
        .execute(&mut *tx)
        .await?;
        if res.rows_affected() == 1 {
            notify(&mut tx, CH_CHANGES, "packs").await?;
        }
        tx.commit().await?;
        Ok(res.rows_affected() == 1)
    }

    async fn get_pack(
        &self,
        tenant: &str,
        name: &str,
        version: &str,
    ) -> StoreResult<Option<PackRecord>> {
        let row =
            sqlx::query("SELECT * FROM packs WHERE tenant_id = $1 AND name = $2 AND version = $3")
                .bind(tenant)
                .bind(name)
                .bind(version)
                .fetch_optional(&self.pool)
                .await?;
        row.as_ref().map(rows::pack).transpose()
    }

    async fn list_packs(&self) -> StoreResult<Vec<PackRecord>> {
        let rows = sqlx::query("SELECT * FROM packs ORDER BY created_at, ord")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(rows::pack).collect()
    }

    async fn delete_pack(&self, tenant: &str, name: &str, version: &str) -> StoreResult<bool> {
        let mut tx = self.pool.begin().await?;
        let res =
            sqlx::query("DELETE FROM packs WHERE tenant_id = $1 AND name = $2 AND version = $3")
                .bind(tenant)
                .bind(name)
                .bind(version)
                .execute(&mut *tx)
                .await?;
        if res.rows_affected() == 1 {
            notify(&mut tx, CH_CHANGES, "packs").await?;
        }
        tx.commit().await?;
        Ok(res.rows_affected() == 1)
    }
}
