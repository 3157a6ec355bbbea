//! Bearer API keys. Keys are kept only as SHA-256 digests and compared in constant time; each
//! key is its own principal (idempotency keys are scoped per credential).

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::error::ApiError;
use super::AppState;

pub const DEFAULT_TENANT: &str = "default";

#[derive(Debug, Clone)]
pub struct Principal {
    /// Opaque, non-secret id of the credential (`key-<first 12 hex of sha256(key)>`).
    pub id: String,
    pub tenant: String,
}

pub struct KeyRing {
    entries: Vec<([u8; 32], Principal)>,
}

impl KeyRing {
    pub fn new(keys: &[String]) -> Self {
        let entries = keys
            .iter()
            .map(|k| {
                let d: [u8; 32] = Sha256::digest(k.as_bytes()).into();
                let p = Principal {
                    id: format!("key-{}", &hex::encode(d)[..12]),
                    tenant: DEFAULT_TENANT.into(),
                };
                (d, p)
            })
            .collect();
        KeyRing { entries }
    }

    pub fn authenticate(&self, headers: &HeaderMap) -> Option<Principal> {
        let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
        let (scheme, token) = value.split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        let token = token.trim();
        if token.is_empty() {
            return None;
        }
        let d: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        for (digest, p) in &self.entries {
            if bool::from(digest.ct_eq(&d)) {
                found = Some(p.clone());
            }
        }
        found
    }
}

/// Routes that need no credential.
pub fn is_public(path: &str) -> bool {
    matches!(path, "/.well-known/openwop" | "/v1/openapi.json")
}

/// Authenticates every non-public request before routing, so 401 precedes any 404/405.
pub async fn require_auth(State(st): State<AppState>, mut req: Request, next: Next) -> Response {
    if is_public(req.uri().path()) {
        return next.run(req).await;
    }
    match st.keys.authenticate(req.headers()) {
        Some(p) => {
            req.extensions_mut().insert(p);
            next.run(req).await
        }
        None => ApiError::unauthenticated().into_response(),
    }
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
