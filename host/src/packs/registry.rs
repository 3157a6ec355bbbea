//! The pack registry: validates uploads, loads them into the sandbox, keeps
//! them durable, and makes their node types runnable.
//!
//! Install order of checks (each refusal leaves nothing behind):
//! integrity → archive bounds → manifest → URL/manifest agreement →
//! operator grants (`runtime.requires`) → conflicts → sandbox load (import
//! gating, ABI handshake, compile) → typeIds agree with the module → store →
//! register node types → discovery.
//!
//! Packs are scoped to the uploading credential's tenant. Packs the operator
//! installs from `--packs DIR` belong to every tenant ([`HOST_TENANT`]), are
//! loaded from the directory on every boot and cannot be deleted over HTTP.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use wopbox_sandbox::{
    DirAccess, Grants, InvokeOutcome, InvokeRequest, Limits, LoadOptions, LoadedPack, PackFormat,
    PreopenDir, Sandbox, SandboxError,
};

use super::error::PackError;
use super::executor::PackNodeExecutor;
use super::manifest::{validate_manifest, PackManifest, PackRuntime};
use super::policy::{DirMode, EffectiveGrants, Policy};
use super::remote::{ExecutorChoice, RemoteNodeExecutor};
use super::tarball::{read_tgz, ArchiveLimits};
use crate::api::discovery::Discovery;
use crate::engine::registry::NodeExecutor;
use crate::engine::NodeRegistry;
use crate::store::packs::{PackRecord, PackStore, HOST_TENANT};

/// The tenant whose packs discovery lists (discovery is unauthenticated and
/// tenant-agnostic; every credential maps to it until scoped keys exist).
const DISCOVERY_TENANT: &str = crate::api::auth::DEFAULT_TENANT;

/// Concurrent sandbox slots one pack may hold: all but one, so another pack always gets in.
fn per_pack_slots(max_concurrent: usize) -> usize {
    max_concurrent.saturating_sub(1).max(1)
}

/// One loaded pack version.
pub struct InstalledPack {
    pub record: PackRecord,
    pub loaded: Arc<LoadedPack>,
    pub grants: EffectiveGrants,
    pub limits: Limits,
    /// This pack's share of the sandbox's concurrent slots (see [`InstalledPack::invoke`]).
    slots: Arc<tokio::sync::Semaphore>,
}

impl PackService {
    /// Every sandbox invocation of this process — a local run's node or an execution served
    /// to a remote orchestrator — goes through here, so `/metrics` counts each one once, in
    /// the process that ran it.
    pub async fn invoke(
        &self,
        pack: &InstalledPack,
        req: InvokeRequest,
    ) -> Result<InvokeOutcome, SandboxError> {
        let result = pack.invoke(&self.sandbox, req).await;
        self.settings
            .sandbox_metrics
            .record(&pack.record.name, &result);
        result
    }
}

impl InstalledPack {
    /// Runs one invocation in the sandbox while holding one of this pack's slots. A pack may
    /// occupy at most all but one of the sandbox's concurrent slots, so one pack's hostile nodes
    /// (say, infinite loops that wait out their wall clock) cannot starve every other pack:
    /// their surplus invocations wait here, not in the sandbox's shared queue.
    pub async fn invoke(
        &self,
        sandbox: &Sandbox,
        req: InvokeRequest,
    ) -> Result<InvokeOutcome, SandboxError> {
        let _slot = self
            .slots
            .acquire()
            .await
            .map_err(|_| SandboxError::Internal {
                message: "the pack's slots were closed".into(),
            })?;
        sandbox.invoke(&self.loaded, req).await
    }

    /// The JSON the pack routes return.
    pub fn summary(&self) -> Value {
        json!({
            "name": self.record.name,
            "version": self.record.version,
            "runtime": self.record.runtime,
            "typeIds": self.record.type_ids,
            "entrySha256": self.record.entry_sha256,
            "tarballSha256": self.record.tarball_sha256,
            "abiVersion": self.loaded.abi_version(),
            "scope": if self.record.tenant_id == HOST_TENANT { "host" } else { "tenant" },
            "publishedAt": self.record.created_at,
            "grants": self.grants,
            "limits": {
                "memoryLimitBytes": self.limits.memory_bytes,
                "wallClockLimitMs": self.limits.wall_clock.as_millis() as u64,
                "fuel": self.limits.fuel,
            },
        })
    }
}

#[derive(Default)]
struct State {
    /// (tenant, pack name) → installed versions, oldest first; the last one
    /// is the version whose node types run.
    packs: HashMap<(String, String), Vec<Arc<InstalledPack>>>,
}

impl State {
    /// Which active pack provides `type_id` for `tenant` (its own packs
    /// first, then operator packs).
    fn resolve(&self, tenant: &str, type_id: &str) -> Option<Arc<InstalledPack>> {
        for scope in [tenant, HOST_TENANT] {
            for ((t, _), versions) in &self.packs {
                if t == scope {
                    if let Some(p) = versions.last() {
                        if p.record.type_ids.iter().any(|x| x == type_id) {
                            return Some(p.clone());
                        }
                    }
                }
            }
        }
        None
    }

    fn provided_type_ids(&self) -> BTreeSet<String> {
        self.packs
            .values()
            .filter_map(|v| v.last())
            .flat_map(|p| p.record.type_ids.iter().cloned())
            .collect()
    }
}

/// Host-wide sandbox settings that the policy's defaults start from.
#[derive(Debug, Clone)]
pub struct PackSettings {
    pub default_limits: Limits,
    pub archive: ArchiveLimits,
    /// Where pack nodes execute: this sandbox, or another wopbox's
    /// execution API (`--executor remote:URL`).
    pub executor: ExecutorChoice,
    /// `/metrics` figures of every sandbox invocation ([`PackService::invoke`]).
    pub sandbox_metrics: crate::ops::metrics::SandboxCounters,
}

pub struct PackService {
    sandbox: Sandbox,
    store: Arc<dyn PackStore>,
    policy: Policy,
    registry: Arc<NodeRegistry>,
    discovery: Arc<Discovery>,
    settings: PackSettings,
    /// The executor registered for every pack typeId (local or remote).
    executor: Arc<dyn NodeExecutor>,
    state: RwLock<State>,
    /// Serialises installs and deletes so conflict checks and registration
    /// see a consistent state (reads stay lock-free of it).
    install_lock: tokio::sync::Mutex<()>,
}

fn hex_sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// `X-Pack-Sha256` may be `sha256-<base64>` (SRI style, as node-packs.md
/// shows) or plain hex; both are compared against the server's digest.
fn asserted_matches(asserted: &str, digest: &[u8]) -> bool {
    let a = asserted.trim();
    if let Some(b64) = a.strip_prefix("sha256-") {
        return base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map(|d| d == digest)
            .unwrap_or(false);
    }
    let hexed = a.strip_prefix("sha256:").unwrap_or(a);
    hexed.eq_ignore_ascii_case(&hex::encode(digest))
}

fn to_sandbox_grants(g: &EffectiveGrants) -> Grants {
    Grants {
        allowed_host_calls: g.host_calls.clone(),
        preopened_dirs: g
            .preopens
            .iter()
            .map(|p| PreopenDir {
                host_path: p.host.clone(),
                guest_path: p.guest.clone(),
                access: match p.mode {
                    DirMode::Ro => DirAccess::ReadOnly,
                    DirMode::Rw => DirAccess::ReadWrite,
                },
            })
            .collect(),
        env: g.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        env_read: g.runtime.iter().any(|r| r == "env.read"),
        outbound_hosts: g.outbound_hosts.clone(),
    }
}

/// The limits a pack runs under: host defaults, then the operator's
/// policy (never the manifest, which can only lower memory).
pub fn limits_for(defaults: &Limits, grants: &EffectiveGrants) -> Limits {
    let mut l = defaults.clone();
    if let Some(m) = grants.memory_limit_bytes {
        l.memory_bytes = m;
    }
    if let Some(ms) = grants.wall_clock_limit_ms {
        l.wall_clock = Duration::from_millis(ms);
    }
    if let Some(f) = grants.fuel {
        l.fuel = Some(f);
    }
    l
}

/// What `policy` grants the pack `manifest` describes, or
/// `pack_runtime_requirement_unmet` when its declared needs exceed that.
pub fn granted(policy: &Policy, manifest: &PackManifest) -> Result<EffectiveGrants, PackError> {
    let grants = policy.grants_for(&manifest.name);
    let unmet = grants.unmet(&manifest.requires);
    if !unmet.is_empty() {
        return Err(PackError::RequirementUnmet { unmet });
    }
    Ok(grants)
}

/// Loads a pack's entry into the sandbox exactly as an install does (import
/// gating against `grants`, ABI handshake, compile) and checks that the
/// module provides the node types the manifest declares. Shared by the
/// registry and `wopbox pack test`, so a local test runs what the server
/// would run.
pub async fn load_entry(
    sandbox: &Sandbox,
    manifest: &PackManifest,
    entry: Vec<u8>,
    grants: &EffectiveGrants,
    limits: &Limits,
) -> Result<Arc<LoadedPack>, PackError> {
    let format = match manifest.runtime {
        PackRuntime::Wasm => PackFormat::CoreModule,
        PackRuntime::WasmComponent => PackFormat::Component,
    };
    let opts = LoadOptions {
        format,
        grants: to_sandbox_grants(grants),
        name: Some(manifest.name.clone()),
        manifest_abi_version: manifest.abi_version,
        memory_pages_max: manifest.memory_pages_max,
        limits: Some(limits.clone()),
    };
    let loaded = sandbox
        .load(entry, opts)
        .await
        .map_err(|e| PackError::LoadFailure {
            code: e.code().to_string(),
            message: e.to_string(),
            details: e.details(),
        })?;

    // The module is the authority on what it can run; the manifest must
    // describe it truthfully.
    let declared: BTreeSet<&str> = manifest.nodes.iter().map(|n| n.type_id.as_str()).collect();
    let exported: BTreeSet<&str> = loaded.node_type_ids().iter().map(String::as_str).collect();
    if declared != exported {
        return Err(PackError::InvalidManifest {
            path: "/nodes".into(),
            message: format!(
                "manifest declares {:?} but the module provides {:?}",
                declared, exported
            ),
        });
    }
    Ok(loaded)
}

impl PackService {
    pub fn new(
        sandbox: Sandbox,
        store: Arc<dyn PackStore>,
        policy: Policy,
        registry: Arc<NodeRegistry>,
        discovery: Arc<Discovery>,
        settings: PackSettings,
    ) -> Arc<PackService> {
        let executor_choice = settings.executor.clone();
        Arc::new_cyclic(|weak| PackService {
            sandbox,
            store,
            policy,
            registry,
            discovery,
            settings,
            executor: match executor_choice {
                ExecutorChoice::Local => Arc::new(PackNodeExecutor::new(weak.clone())),
                ExecutorChoice::Remote(target) => {
                    Arc::new(RemoteNodeExecutor::new(weak.clone(), target))
                }
            },
            state: RwLock::new(State::default()),
            install_lock: tokio::sync::Mutex::new(()),
        })
    }

    pub fn sandbox(&self) -> &Sandbox {
        &self.sandbox
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The active pack providing `type_id` to `tenant`.
    pub fn resolve(&self, tenant: &str, type_id: &str) -> Option<Arc<InstalledPack>> {
        self.state.read().ok()?.resolve(tenant, type_id)
    }

    /// Packs visible to `tenant` (its own and the operator's), every version.
    pub fn list(&self, tenant: &str) -> Vec<Arc<InstalledPack>> {
        let Ok(st) = self.state.read() else {
            return Vec::new();
        };
        let mut out: Vec<Arc<InstalledPack>> = st
            .packs
            .iter()
            .filter(|((t, _), _)| t == tenant || t == HOST_TENANT)
            .flat_map(|(_, v)| v.iter().cloned())
            .collect();
        out.sort_by(|a, b| {
            (&a.record.name, &a.record.created_at).cmp(&(&b.record.name, &b.record.created_at))
        });
        out
    }

    /// One version visible to `tenant`.
    pub fn get(&self, tenant: &str, name: &str, version: &str) -> Option<Arc<InstalledPack>> {
        let st = self.state.read().ok()?;
        [tenant, HOST_TENANT].iter().find_map(|t| {
            st.packs
                .get(&(t.to_string(), name.to_string()))?
                .iter()
                .find(|p| p.record.version == version)
                .cloned()
        })
    }

    /// Stored tarball bytes of an uploaded version.
    pub async fn tarball(&self, pack: &InstalledPack) -> Result<Option<Vec<u8>>, PackError> {
        match &pack.record.tarball_sha256 {
            Some(sha) => self
                .store
                .get_blob(sha)
                .await
                .map_err(|e| PackError::Storage(e.to_string())),
            None => Ok(None),
        }
    }

    /// Validates and loads a manifest + entry module, without storing.
    async fn prepare(
        &self,
        tenant: &str,
        manifest: PackManifest,
        entry: Vec<u8>,
        tarball_sha256: Option<String>,
        published_by: &str,
    ) -> Result<InstalledPack, PackError> {
        let grants = granted(&self.policy, &manifest)?;
        self.check_conflicts(tenant, &manifest)?;
        let entry_sha256 = hex_sha256(&entry);
        let limits = limits_for(&self.settings.default_limits, &grants);
        let loaded = load_entry(&self.sandbox, &manifest, entry, &grants, &limits).await?;
        let record = PackRecord {
            tenant_id: tenant.to_string(),
            name: manifest.name.clone(),
            version: manifest.version.clone(),
            runtime: manifest.runtime.as_str().to_string(),
            manifest: manifest.raw.clone(),
            entry_sha256,
            tarball_sha256,
            type_ids: manifest.nodes.iter().map(|n| n.type_id.clone()).collect(),
            published_by: published_by.to_string(),
            created_at: crate::store::ts(chrono::Utc::now()),
        };
        Ok(InstalledPack {
            record,
            loaded,
            grants,
            limits,
            slots: Arc::new(tokio::sync::Semaphore::new(per_pack_slots(
                self.sandbox.config().max_concurrent,
            ))),
        })
    }

    fn check_conflicts(&self, tenant: &str, manifest: &PackManifest) -> Result<(), PackError> {
        let st = self
            .state
            .read()
            .map_err(|_| PackError::Storage("registry lock poisoned".into()))?;
        if let Some(versions) = st.packs.get(&(tenant.to_string(), manifest.name.clone())) {
            if versions
                .iter()
                .any(|p| p.record.version == manifest.version)
            {
                return Err(PackError::VersionConflict {
                    name: manifest.name.clone(),
                    version: manifest.version.clone(),
                });
            }
        }
        // A typeId must mean one thing to a tenant: refuse a second pack
        // (other name) claiming it, in this tenant or host-wide.
        for ((t, name), versions) in &st.packs {
            if name == &manifest.name || !(t == tenant || t == HOST_TENANT || tenant == HOST_TENANT)
            {
                continue;
            }
            if let Some(active) = versions.last() {
                for n in &manifest.nodes {
                    if active.record.type_ids.contains(&n.type_id) {
                        return Err(PackError::TypeIdTaken {
                            type_id: n.type_id.clone(),
                            owner: name.clone(),
                        });
                    }
                }
            }
        }
        Ok(())
    }

    fn activate(&self, pack: InstalledPack) -> Arc<InstalledPack> {
        let pack = Arc::new(pack);
        if let Ok(mut st) = self.state.write() {
            st.packs
                .entry((pack.record.tenant_id.clone(), pack.record.name.clone()))
                .or_default()
                .push(pack.clone());
        }
        for t in &pack.record.type_ids {
            if !self.registry.contains(t) {
                self.registry.register(t.clone(), self.executor.clone());
            }
        }
        self.refresh_discovery();
        pack
    }

    /// `PUT /v1/packs/{name}/-/{version}.tgz`.
    pub async fn publish(
        &self,
        tenant: &str,
        principal: &str,
        url_name: &str,
        url_version: &str,
        asserted_sha256: Option<&str>,
        tgz: &[u8],
    ) -> Result<Arc<InstalledPack>, PackError> {
        let digest = Sha256::digest(tgz);
        if let Some(a) = asserted_sha256 {
            if !asserted_matches(a, &digest) {
                return Err(PackError::IntegrityFailure {
                    asserted: a.to_string(),
                    computed: format!(
                        "sha256-{}",
                        base64::engine::general_purpose::STANDARD.encode(digest)
                    ),
                });
            }
        }
        let files = read_tgz(tgz, self.settings.archive)?;
        let manifest_bytes = files
            .get("pack.json")
            .ok_or_else(|| PackError::InvalidArchive("the archive has no pack.json".into()))?;
        let raw: Value =
            serde_json::from_slice(manifest_bytes).map_err(|e| PackError::InvalidManifest {
                path: String::new(),
                message: format!("pack.json is not valid JSON: {e}"),
            })?;
        let manifest = validate_manifest(&raw)?;
        if manifest.name != url_name || manifest.version != url_version {
            return Err(PackError::ManifestMismatch {
                url: format!("{url_name}@{url_version}"),
                manifest: format!("{}@{}", manifest.name, manifest.version),
            });
        }
        let entry = files
            .get(&manifest.entry)
            .ok_or_else(|| PackError::InvalidManifest {
                path: "/runtime/entry".into(),
                message: format!("`{}` is not in the archive", manifest.entry),
            })?;
        let entry = entry.to_vec();

        let _guard = self.install_lock.lock().await;
        let tar_sha = hex::encode(digest);
        let pack = self
            .prepare(
                tenant,
                manifest,
                entry.clone(),
                Some(tar_sha.clone()),
                principal,
            )
            .await?;
        // Durable before it is acknowledged or runnable.
        let storage = |e: crate::store::StoreError| PackError::Storage(e.to_string());
        self.store
            .put_blob(&pack.record.entry_sha256, &entry)
            .await
            .map_err(storage)?;
        self.store.put_blob(&tar_sha, tgz).await.map_err(storage)?;
        if !self
            .store
            .insert_pack(&pack.record)
            .await
            .map_err(storage)?
        {
            return Err(PackError::VersionConflict {
                name: pack.record.name.clone(),
                version: pack.record.version.clone(),
            });
        }
        tracing::info!(pack = %pack.record.name, version = %pack.record.version, tenant, "pack installed");
        Ok(self.activate(pack))
    }

    /// `DELETE /v1/packs/{name}/-/{version}`.
    pub async fn delete(&self, tenant: &str, name: &str, version: &str) -> Result<(), PackError> {
        let _guard = self.install_lock.lock().await;
        let key = (tenant.to_string(), name.to_string());
        let exists = self
            .state
            .read()
            .map(|st| {
                st.packs
                    .get(&key)
                    .is_some_and(|v| v.iter().any(|p| p.record.version == version))
            })
            .unwrap_or(false);
        if !exists {
            let host_owned = self
                .state
                .read()
                .map(|st| {
                    st.packs
                        .contains_key(&(HOST_TENANT.to_string(), name.to_string()))
                })
                .unwrap_or(false);
            return Err(if host_owned {
                PackError::OperatorOwned(name.to_string())
            } else {
                PackError::NotFound(format!("{name}@{version}"))
            });
        }
        self.store
            .delete_pack(tenant, name, version)
            .await
            .map_err(|e| PackError::Storage(e.to_string()))?;
        self.unload(&key, version);
        self.refresh_discovery();
        Ok(())
    }

    /// Drop an active version and the node types only it provided.
    fn unload(&self, key: &(String, String), version: &str) {
        if let Ok(mut st) = self.state.write() {
            if let Some(v) = st.packs.get_mut(key) {
                v.retain(|p| p.record.version != version);
                if v.is_empty() {
                    st.packs.remove(key);
                }
            }
            let still = st.provided_type_ids();
            for t in self.registry.type_ids() {
                if !still.contains(&t)
                    && self.registry.get(&t).is_some_and(|e| {
                        std::ptr::addr_eq(Arc::as_ptr(&e), Arc::as_ptr(&self.executor))
                    })
                {
                    self.registry.unregister(&t);
                }
            }
        }
    }

    /// Boot: reload every uploaded pack from the store. A pack that no longer
    /// loads (e.g. a policy change revoked a grant) is logged and skipped.
    pub async fn reload_from_store(&self) -> anyhow::Result<usize> {
        let mut n = 0;
        for rec in self.store.list_packs().await? {
            if self.load_stored(rec).await? {
                n += 1;
            }
        }
        Ok(n)
    }

    /// Another process sharing the store installed or deleted packs: load the stored versions
    /// this process lacks and drop uploaded versions that are no longer stored. (Operator packs
    /// from `--packs` are per process and never stored.)
    pub async fn sync_from_store(&self) -> anyhow::Result<()> {
        let _guard = self.install_lock.lock().await;
        let stored = self.store.list_packs().await?;
        let want: std::collections::HashSet<(String, String, String)> = stored
            .iter()
            .map(|r| (r.tenant_id.clone(), r.name.clone(), r.version.clone()))
            .collect();
        let have: Vec<(String, String, String)> = self
            .state
            .read()
            .map(|st| {
                st.packs
                    .values()
                    .flatten()
                    .map(|p| {
                        let r = &p.record;
                        (r.tenant_id.clone(), r.name.clone(), r.version.clone())
                    })
                    .collect()
            })
            .unwrap_or_default();
        for (tenant, name, version) in &have {
            if tenant != HOST_TENANT
                && !want.contains(&(tenant.clone(), name.clone(), version.clone()))
            {
                self.unload(&(tenant.clone(), name.clone()), version);
            }
        }
        for rec in stored {
            let key = (rec.tenant_id.clone(), rec.name.clone(), rec.version.clone());
            if !have.contains(&key) {
                self.load_stored(rec).await?;
            }
        }
        self.refresh_discovery();
        Ok(())
    }

    /// Load one stored pack; false (logged) when it no longer loads.
    async fn load_stored(&self, rec: PackRecord) -> anyhow::Result<bool> {
        let Some(entry) = self.store.get_blob(&rec.entry_sha256).await? else {
            tracing::error!(pack = %rec.name, version = %rec.version, "stored pack has no entry blob; skipped");
            return Ok(false);
        };
        let manifest = match validate_manifest(&rec.manifest) {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(pack = %rec.name, error = %e, "stored manifest no longer validates; skipped");
                return Ok(false);
            }
        };
        let tenant = rec.tenant_id.clone();
        match self
            .prepare(
                &tenant,
                manifest,
                entry,
                rec.tarball_sha256.clone(),
                &rec.published_by,
            )
            .await
        {
            Ok(mut p) => {
                p.record.created_at = rec.created_at.clone();
                self.activate(p);
                Ok(true)
            }
            Err(e) => {
                tracing::error!(pack = %rec.name, version = %rec.version, error = %e, "stored pack failed to load; skipped");
                Ok(false)
            }
        }
    }

    /// Boot: install every pack directory under `dir` (each holding a
    /// `pack.json` and its entry) host-wide. A refused pack is logged and left
    /// out — that is how an ABI-999 pack ends up absent from `loadedPacks`.
    pub async fn install_dir(&self, dir: &Path) -> anyhow::Result<Vec<String>> {
        let mut dirs: Vec<_> = std::fs::read_dir(dir)
            .map_err(|e| anyhow::anyhow!("cannot read packs dir {}: {e}", dir.display()))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.join("pack.json").is_file())
            .collect();
        if dir.join("pack.json").is_file() {
            dirs.push(dir.to_path_buf());
        }
        dirs.sort();
        let mut installed = Vec::new();
        for d in dirs {
            match self.install_one_dir(&d).await {
                Ok(p) => {
                    tracing::info!(pack = %p.record.name, version = %p.record.version, dir = %d.display(), "operator pack loaded");
                    installed.push(p.record.name.clone());
                }
                Err(e) => {
                    tracing::warn!(dir = %d.display(), code = e.code(), error = %e, "operator pack refused")
                }
            }
        }
        Ok(installed)
    }

    async fn install_one_dir(&self, d: &Path) -> Result<Arc<InstalledPack>, PackError> {
        let read = |p: &Path| {
            std::fs::read(p).map_err(|e| PackError::InvalidArchive(format!("{}: {e}", p.display())))
        };
        let raw: Value = serde_json::from_slice(&read(&d.join("pack.json"))?).map_err(|e| {
            PackError::InvalidManifest {
                path: String::new(),
                message: format!("pack.json is not valid JSON: {e}"),
            }
        })?;
        let manifest = validate_manifest(&raw)?;
        let entry = read(&d.join(&manifest.entry))?;
        let _guard = self.install_lock.lock().await;
        let pack = self
            .prepare(HOST_TENANT, manifest, entry, None, "operator")
            .await?;
        Ok(self.activate(pack))
    }

    /// Rewrites the `nodePackRuntimes` discovery block from the live state.
    fn refresh_discovery(&self) {
        let mut names: BTreeSet<String> = BTreeSet::new();
        if let Ok(st) = self.state.read() {
            for (t, name) in st.packs.keys() {
                if t == HOST_TENANT || t == DISCOVERY_TENANT {
                    names.insert(name.clone());
                }
            }
        }
        let l = &self.settings.default_limits;
        let pool_max = self.sandbox.engine().config().pool.max_memory_bytes;
        self.discovery.set_block(
            "nodePackRuntimes",
            json!({
                "wasm": {
                    "supported": true,
                    "abiVersions": wopbox_sandbox::SUPPORTED_ABI_VERSIONS,
                    "maxMemoryBytes": l.memory_bytes.min(pool_max),
                    "maxExecutionMs": l.wall_clock.as_millis() as u64,
                    "loadedPacks": names,
                    "engine": "wasmtime",
                    "engineVersion": wopbox_sandbox::WASMTIME_VERSION,
                },
                "wasmComponent": { "supported": true, "wit": "openwop:node/node-pack@0.1.0" },
            }),
            true,
        );
    }

    /// Publishes the discovery blocks once at boot (before any pack loads).
    pub fn advertise(&self) {
        let l = &self.settings.default_limits;
        let pool_max = self.sandbox.engine().config().pool.max_memory_bytes;
        let host_calls = self.policy.grants_for("").host_calls;
        self.discovery.set_block(
            "sandbox",
            json!({
                "supported": true,
                "isolationModel": "wasm",
                "allowedHostCalls": host_calls,
                "memoryLimitBytes": l.memory_bytes.min(pool_max),
                "wallClockLimitMs": (l.wall_clock.as_millis() as u64).max(100),
            }),
            true,
        );
        self.refresh_discovery();
    }

    /// Packs per tenant, for logs.
    pub fn counts(&self) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        if let Ok(st) = self.state.read() {
            for ((t, _), v) in &st.packs {
                *m.entry(t.clone()).or_default() += v.len();
            }
        }
        m
    }
}

#[async_trait::async_trait]
impl crate::cluster::PackSync for PackService {
    async fn sync_from_store(&self) {
        if let Err(e) = PackService::sync_from_store(self).await {
            tracing::warn!(error = %e, "could not sync packs installed by another process");
        }
    }
}
