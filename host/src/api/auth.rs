//! Bearer API keys. Keys are kept only as SHA-256 digests and compared in constant time. Each
//! key is a [`Principal`]: its id, its tenant, its scopes. The legacy keys (`--api-key`,
//! `WOPBOX_API_KEYS`, the generated `<data>/api-key`) are full-scope (`*`) keys of the
//! [`DEFAULT_TENANT`]; scoped keys come from the `[[keys]]` of the operator config file
//! (`keys::file`), which the host re-reads when it changes so a revocation takes effect
//! without a restart.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use axum::extract::{FromRequestParts, MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use subtle::ConstantTimeEq;

use super::error::ApiError;
use super::AppState;
use crate::keys::{self, scopes, KeyFileError};

pub const DEFAULT_TENANT: &str = "default";

/// Who is calling: the request context every handler (and every other subsystem that needs the
/// tenant, e.g. per-tenant limits) reads.
#[derive(Debug, Clone)]
pub struct Principal {
    /// Opaque, non-secret id of the credential (`key-<first 12 hex of sha256(key)>`).
    pub id: String,
    pub tenant: String,
    /// Held scopes (`*`, `<resource>:*` or exact names; see `keys::scopes`).
    pub scopes: Arc<[String]>,
    /// Roles and groups (from the key's config entry) for approver routing.
    pub roles: Arc<[String]>,
    pub groups: Arc<[String]>,
}

impl Principal {
    pub fn allows(&self, required: &str) -> bool {
        self.scopes
            .iter()
            .any(|held| scopes::grants(held, required))
    }

    /// `Ok` when every scope in `required` is held, else the `403 forbidden` naming the first
    /// missing one.
    pub fn require(&self, required: &[&str]) -> Result<(), ApiError> {
        match required.iter().find(|s| !self.allows(s)) {
            None => Ok(()),
            Some(missing) => Err(ApiError::forbidden_scope(missing)),
        }
    }
}

/// Why a presented credential is refused (each is a 401 with its own code).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    Unauthenticated,
    Revoked,
    Expired,
}

impl AuthFailure {
    pub fn to_error(self) -> ApiError {
        match self {
            AuthFailure::Unauthenticated => ApiError::unauthenticated(),
            AuthFailure::Revoked => ApiError::new(
                StatusCode::UNAUTHORIZED,
                "key_revoked",
                "this API key has been revoked",
            )
            .header(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer")),
            AuthFailure::Expired => ApiError::new(
                StatusCode::UNAUTHORIZED,
                "key_expired",
                "this API key has expired",
            )
            .header(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer")),
        }
    }
}

struct Entry {
    digest: [u8; 32],
    principal: Principal,
    revoked: bool,
    expires: Option<DateTime<Utc>>,
}

fn legacy_entry(key: &str) -> Entry {
    let digest = keys::digest(key);
    Entry {
        principal: Principal {
            id: keys::key_id(&digest),
            tenant: DEFAULT_TENANT.into(),
            scopes: Arc::from(vec!["*".to_string()]),
            roles: Arc::from(Vec::new()),
            groups: Arc::from(Vec::new()),
        },
        digest,
        revoked: false,
        expires: None,
    }
}

fn file_entries(path: &Path, text: &str) -> Result<Vec<Entry>, KeyFileError> {
    let entries = keys::file::parse(path, text)?
        .into_iter()
        .filter_map(|k| {
            Some(Entry {
                digest: k.digest()?,
                principal: Principal {
                    id: k.id,
                    tenant: k.tenant,
                    scopes: Arc::from(k.scopes),
                    roles: Arc::from(k.roles),
                    groups: Arc::from(k.groups),
                },
                revoked: k.revoked.is_some(),
                expires: k.expires,
            })
        })
        .collect();
    Ok(entries)
}

pub struct KeyRing {
    legacy: Vec<Entry>,
    file: Option<PathBuf>,
    /// The file's entries as last loaded successfully.
    loaded: RwLock<Arc<Vec<Entry>>>,
    /// The file's text as last read, loadable or not: a change is noticed (and a broken file
    /// reported) once, not on every poll.
    seen: Mutex<String>,
}

impl KeyRing {
    /// Legacy keys only (no config file).
    pub fn new(legacy: &[String]) -> Self {
        KeyRing {
            legacy: legacy.iter().map(|k| legacy_entry(k)).collect(),
            file: None,
            loaded: RwLock::new(Arc::new(Vec::new())),
            seen: Mutex::new(String::new()),
        }
    }

    /// Legacy keys plus the `[[keys]]` of `config`. A file that does not load is an error here
    /// (at boot); later reloads keep the previous keys instead.
    pub fn with_file(legacy: &[String], config: &Path) -> Result<Self, KeyFileError> {
        let text = keys::file::read_text(config)?;
        let entries = file_entries(config, &text)?;
        let mut ring = KeyRing::new(legacy);
        ring.file = Some(config.to_path_buf());
        ring.loaded = RwLock::new(Arc::new(entries));
        ring.seen = Mutex::new(text);
        Ok(ring)
    }

    /// Re-read the config file if its text changed. Returns whether keys were replaced.
    pub fn reload(&self) -> Result<bool, KeyFileError> {
        let Some(path) = &self.file else {
            return Ok(false);
        };
        let text = keys::file::read_text(path)?;
        {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            if *seen == text {
                return Ok(false);
            }
            seen.clone_from(&text);
        }
        let entries = file_entries(path, &text)?;
        *self.loaded.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(entries);
        Ok(true)
    }

    /// Poll the config file (cheap: one small read) and apply changes, so `wopbox keys revoke`
    /// takes effect on a running host within `every`.
    pub fn spawn_reloader(self: &Arc<Self>, every: std::time::Duration) {
        if self.file.is_none() {
            return;
        }
        let ring = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(ring) = ring.upgrade() else { break };
                // A small file, but still blocking I/O: keep it off the async workers.
                let result = tokio::task::spawn_blocking(move || ring.reload()).await;
                match result.unwrap_or(Ok(false)) {
                    Ok(true) => tracing::info!("API keys reloaded from the config file"),
                    Ok(false) => {}
                    Err(e) => {
                        tracing::error!(error = %e, "config file does not load; keeping the previous keys")
                    }
                }
            }
        });
    }

    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Principal, AuthFailure> {
        let token = bearer(headers).ok_or(AuthFailure::Unauthenticated)?;
        let d = keys::digest(token);
        let file = self
            .loaded
            .read()
            .map(|g| g.clone())
            .unwrap_or_else(|p| p.into_inner().clone());
        // Every entry is compared (constant time each), so timing does not reveal which matched.
        let mut found: Option<&Entry> = None;
        for e in self.legacy.iter().chain(file.iter()) {
            if bool::from(e.digest.ct_eq(&d)) {
                found = Some(e);
            }
        }
        let e = found.ok_or(AuthFailure::Unauthenticated)?;
        if e.revoked {
            return Err(AuthFailure::Revoked);
        }
        if e.expires.is_some_and(|t| t <= Utc::now()) {
            return Err(AuthFailure::Expired);
        }
        Ok(e.principal.clone())
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = token.trim();
    (!token.is_empty()).then_some(token)
}

/// Routes that need no credential.
pub fn is_public(path: &str) -> bool {
    matches!(path, "/.well-known/openwop" | "/v1/openapi.json")
        // Signed interrupt tokens are their own credential (interrupt.md); a bearer is ignored.
        || path.starts_with("/v1/interrupts/")
}

/// Authenticates every non-public request (401 precedes any 404/405), then checks the scope
/// the matched route requires (`api::scopes`). Unmatched paths skip the scope check so they
/// answer 404 as before.
pub async fn require_auth(State(st): State<AppState>, mut req: Request, next: Next) -> Response {
    if is_public(req.uri().path()) {
        return next.run(req).await;
    }
    let principal = match st.keys.authenticate(req.headers()) {
        Ok(p) => p,
        Err(f) => return f.to_error().into_response(),
    };
    if req.extensions().get::<MatchedPath>().is_some() {
        let required = super::scopes::required(req.method(), req.uri().path());
        if let Err(e) = principal.require(required) {
            return e.into_response();
        }
    }
    req.extensions_mut().insert(principal);
    next.run(req).await
}

/// Extractor for the authenticated principal.
pub struct Auth(pub Principal);

impl<S: Send + Sync> FromRequestParts<S> for Auth {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Principal>()
            .cloned()
            .map(Auth)
            .ok_or_else(ApiError::unauthenticated)
    }
}
