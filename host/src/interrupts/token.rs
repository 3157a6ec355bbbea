//! Signed interrupt tokens (interrupt.md §"Signed resolution tokens"):
//! `base64url(payload) "." hex(HMAC-SHA256(secret, payload))` with
//! `payload = {v, kid, runId, nodeId, interruptId, expiresAt, intent}`.
//!
//! The secret lives in `<data>/interrupt-token-key` (0600), never in the database, so the
//! database (which keeps only SHA-256 digests of tokens) cannot mint or reveal a token. A
//! retired secret moved to `<data>/interrupt-token-key.previous` still verifies tokens minted
//! under it (rotation without orphaning outstanding tokens); `kid` selects the secret.

use std::io::Write;
use std::path::Path;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

pub const KEY_FILE: &str = "interrupt-token-key";
pub const PREVIOUS_KEY_FILE: &str = "interrupt-token-key.previous";
/// Longest token string considered at all (bounded work on hostile input).
pub const MAX_TOKEN_LEN: usize = 2048;

#[derive(Debug, thiserror::Error)]
pub enum TokenKeyError {
    #[error("cannot read or write the interrupt token key: {0}")]
    Io(#[from] std::io::Error),
    #[error("the interrupt token key file {0} is corrupt (expected 64 hex characters)")]
    Corrupt(String),
}

/// Why a presented token is refused before any lookup.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not even shaped like a token (characters outside base64url, too long): 400.
    #[error("the interrupt token is malformed")]
    Malformed,
    /// Shaped like a token but not one this host minted (bad MAC, unknown key, bad payload): 404.
    #[error("no interrupt matches this token")]
    Unknown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Intent {
    Resolve,
    Inspect,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenClaims {
    pub v: u32,
    pub kid: String,
    pub run_id: String,
    pub node_id: String,
    pub interrupt_id: String,
    pub expires_at: String,
    pub intent: Intent,
}

struct Secret {
    kid: String,
    key: [u8; 32],
}

pub struct TokenKeys {
    /// The first secret signs; all verify.
    secrets: Vec<Secret>,
}

fn kid_of(key: &[u8; 32]) -> String {
    hex::encode(&Sha256::digest(key)[..4])
}

fn read_key(path: &Path) -> Result<Option<[u8; 32]>, TokenKeyError> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let corrupt = || TokenKeyError::Corrupt(path.display().to_string());
            let bytes = hex::decode(text.trim()).map_err(|_| corrupt())?;
            Ok(Some(bytes.try_into().map_err(|_| corrupt())?))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

impl TokenKeys {
    pub fn load_or_generate(data_dir: &Path) -> Result<Self, TokenKeyError> {
        let path = data_dir.join(KEY_FILE);
        let current = match read_key(&path)? {
            Some(k) => k,
            None => {
                let mut key = [0u8; 32];
                rand::rngs::OsRng.fill_bytes(&mut key);
                let mut opts = std::fs::OpenOptions::new();
                opts.write(true).create_new(true);
                #[cfg(unix)]
                {
                    use std::os::unix::fs::OpenOptionsExt;
                    opts.mode(0o600);
                }
                let mut f = opts.open(&path)?;
                writeln!(f, "{}", hex::encode(key))?;
                f.sync_all()?;
                key
            }
        };
        let mut keys = vec![current];
        if let Some(prev) = read_key(&data_dir.join(PREVIOUS_KEY_FILE))? {
            keys.push(prev);
        }
        Ok(Self::from_keys(keys))
    }

    pub fn from_keys(keys: Vec<[u8; 32]>) -> Self {
        TokenKeys {
            secrets: keys
                .into_iter()
                .map(|key| Secret {
                    kid: kid_of(&key),
                    key,
                })
                .collect(),
        }
    }

    pub fn signing_kid(&self) -> &str {
        &self.secrets[0].kid
    }

    fn mac(key: &[u8; 32]) -> HmacSha256 {
        // HMAC takes keys of any length; a 32-byte key cannot fail.
        <HmacSha256 as Mac>::new_from_slice(key).expect("hmac key")
    }

    /// Mint (or re-derive: the same claims give the same token) a token. `None` if the claims
    /// name a secret this host no longer holds.
    pub fn mint(&self, claims: &TokenClaims) -> Option<String> {
        let secret = self.secrets.iter().find(|s| s.kid == claims.kid)?;
        let payload = serde_json::to_vec(claims).ok()?;
        let mut mac = Self::mac(&secret.key);
        mac.update(&payload);
        let tag = mac.finalize().into_bytes();
        Some(format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(&payload),
            hex::encode(tag)
        ))
    }

    /// Check shape and MAC (constant time) and return the claims. Expiry and the interrupt's
    /// state are the caller's business (they need the stored row).
    pub fn verify(&self, token: &str) -> Result<TokenClaims, TokenError> {
        if token.is_empty()
            || token.len() > MAX_TOKEN_LEN
            || !token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        {
            return Err(TokenError::Malformed);
        }
        let (payload_b64, tag_hex) = token.split_once('.').ok_or(TokenError::Unknown)?;
        let payload = URL_SAFE_NO_PAD
            .decode(payload_b64)
            .map_err(|_| TokenError::Unknown)?;
        let tag = hex::decode(tag_hex).map_err(|_| TokenError::Unknown)?;
        // The kid is read before the MAC is checked only to pick the secret; nothing else in
        // the payload is trusted until the MAC verifies.
        let claims: TokenClaims =
            serde_json::from_slice(&payload).map_err(|_| TokenError::Unknown)?;
        let secret = self
            .secrets
            .iter()
            .find(|s| s.kid == claims.kid)
            .ok_or(TokenError::Unknown)?;
        let mut mac = Self::mac(&secret.key);
        mac.update(&payload);
        mac.verify_slice(&tag).map_err(|_| TokenError::Unknown)?;
        if claims.v != 1 {
            return Err(TokenError::Unknown);
        }
        Ok(claims)
    }
}

/// SHA-256 hex of a token: what the database keeps.
pub fn digest(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Constant-time equality of a presented token's digest and a stored one.
pub fn digest_matches(token: &str, stored_hex: &str) -> bool {
    let presented = digest(token);
    presented.len() == stored_hex.len()
        && bool::from(presented.as_bytes().ct_eq(stored_hex.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(kid: &str) -> TokenClaims {
        TokenClaims {
            v: 1,
            kid: kid.into(),
            run_id: "run-1".into(),
            node_id: "gate".into(),
            interrupt_id: "int_1".into(),
            expires_at: "2030-01-01T00:00:00.000Z".into(),
            intent: Intent::Resolve,
        }
    }

    #[test]
    fn mint_verify_roundtrip_and_forgery() {
        let keys = TokenKeys::from_keys(vec![[7u8; 32]]);
        let c = claims(keys.signing_kid());
        let t = keys.mint(&c).unwrap();
        assert_eq!(keys.mint(&c).unwrap(), t, "re-derivation is deterministic");
        assert_eq!(keys.verify(&t).unwrap(), c);
        assert!(digest_matches(&t, &digest(&t)));
        assert!(!digest_matches(&t, &digest("other")));

        // Tampered payload (other run) with the old MAC.
        let (_, tag) = t.split_once('.').unwrap();
        let mut forged = c.clone();
        forged.run_id = "run-2".into();
        let forged = format!(
            "{}.{tag}",
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged).unwrap())
        );
        assert_eq!(keys.verify(&forged), Err(TokenError::Unknown));
        // Another host's secret.
        let other = TokenKeys::from_keys(vec![[8u8; 32]]);
        assert_eq!(other.verify(&t), Err(TokenError::Unknown));
        assert_eq!(keys.verify("tok_abc"), Err(TokenError::Unknown));
        assert_eq!(keys.verify("!!!x!!!"), Err(TokenError::Malformed));
        assert_eq!(keys.verify(&"a".repeat(5000)), Err(TokenError::Malformed));
    }

    #[test]
    fn previous_secret_still_verifies() {
        let old = TokenKeys::from_keys(vec![[1u8; 32]]);
        let t = old.mint(&claims(old.signing_kid())).unwrap();
        let rotated = TokenKeys::from_keys(vec![[2u8; 32], [1u8; 32]]);
        assert!(rotated.verify(&t).is_ok());
        assert_ne!(rotated.signing_kid(), old.signing_kid());
    }
}
