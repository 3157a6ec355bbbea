//! Storage of installed node packs: metadata rows plus content-addressed blobs
//! (the uploaded tarball and the entry module), so every host process sharing
//! the store can load the same bytes after a restart.

use async_trait::async_trait;

use super::StoreResult;

/// Tenant id of operator-installed packs (`--packs DIR`): visible to every tenant.
pub const HOST_TENANT: &str = "*";

/// One installed pack version.
#[derive(Debug, Clone)]
pub struct PackRecord {
    pub tenant_id: String,
    pub name: String,
    pub version: String,
    /// `wasm` or `wasm-component`.
    pub runtime: String,
    /// `pack.json` as uploaded.
    pub manifest: serde_json::Value,
    /// Hex SHA-256 of the entry module/component (its blob key).
    pub entry_sha256: String,
    /// Hex SHA-256 of the uploaded tarball (its blob key), if uploaded as one.
    pub tarball_sha256: Option<String>,
    pub type_ids: Vec<String>,
    pub published_by: String,
    pub created_at: String,
}

#[async_trait]
pub trait PackStore: Send + Sync + 'static {
    /// Stores a blob under its SHA-256 (idempotent).
    async fn put_blob(&self, sha256: &str, bytes: &[u8]) -> StoreResult<()>;
    async fn get_blob(&self, sha256: &str) -> StoreResult<Option<Vec<u8>>>;
    /// Inserts a pack version; `false` if (tenant, name, version) already exists.
    async fn insert_pack(&self, rec: &PackRecord) -> StoreResult<bool>;
    async fn get_pack(
        &self,
        tenant: &str,
        name: &str,
        version: &str,
    ) -> StoreResult<Option<PackRecord>>;
    /// Every installed pack, oldest first (boot reload and listings).
    async fn list_packs(&self) -> StoreResult<Vec<PackRecord>>;
    async fn delete_pack(&self, tenant: &str, name: &str, version: &str) -> StoreResult<bool>;
}
