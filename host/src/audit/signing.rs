//! The audit checkpoint signing key (Ed25519). Distinct from every other key the host holds, as
//! the profile requires; generated on first start and kept in `<data>/audit-signing-key` (0600).

use std::io::Write;
use std::path::Path;

use base64::Engine as _;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use rand::RngCore;

pub const KEY_FILE: &str = "audit-signing-key";

/// DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410): SEQUENCE { SEQUENCE { OID
/// 1.3.101.112 }, BIT STRING { 32-byte key } }.
const SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read or write the audit signing key: {0}")]
    Io(#[from] std::io::Error),
    #[error("the audit signing key file is corrupt (expected 64 hex characters)")]
    Corrupt,
}

pub struct CheckpointSigner {
    key: SigningKey,
}

impl CheckpointSigner {
    pub fn load_or_generate(data_dir: &Path) -> Result<Self, KeyError> {
        let path = data_dir.join(KEY_FILE);
        if let Ok(text) = std::fs::read_to_string(&path) {
            let bytes = hex::decode(text.trim()).map_err(|_| KeyError::Corrupt)?;
            let seed: [u8; 32] = bytes.try_into().map_err(|_| KeyError::Corrupt)?;
            return Ok(CheckpointSigner {
                key: SigningKey::from_bytes(&seed),
            });
        }
        let mut seed = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut seed);
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(&path)?;
        writeln!(f, "{}", hex::encode(seed))?;
        f.sync_all()?;
        Ok(CheckpointSigner {
            key: SigningKey::from_bytes(&seed),
        })
    }

    #[cfg(test)]
    pub fn from_seed(seed: [u8; 32]) -> Self {
        CheckpointSigner {
            key: SigningKey::from_bytes(&seed),
        }
    }

    /// Base64 Ed25519 signature over the 32 raw bytes the hex `merkle_root` decodes to.
    pub fn sign_root(&self, merkle_root: &str) -> Option<String> {
        let raw = hex::decode(merkle_root).ok()?;
        Some(base64::engine::general_purpose::STANDARD.encode(self.key.sign(&raw).to_bytes()))
    }

    pub fn verifying_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// The public key as base64 SPKI DER (`checkpointPublicKey` in discovery).
    pub fn public_key_spki_b64(&self) -> String {
        let mut der = SPKI_PREFIX.to_vec();
        der.extend_from_slice(self.key.verifying_key().as_bytes());
        base64::engine::general_purpose::STANDARD.encode(der)
    }
}

/// Check a checkpoint signature the way an outside verifier would.
pub fn verify_root(key: &VerifyingKey, merkle_root: &str, signature_b64: &str) -> bool {
    let Ok(raw) = hex::decode(merkle_root) else {
        return false;
    };
    let Ok(sig) = base64::engine::general_purpose::STANDARD.decode(signature_b64) else {
        return false;
    };
    let Ok(sig) = Signature::from_slice(&sig) else {
        return false;
    };
    key.verify(&raw, &sig).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_root_bytes_and_rejects_other_roots() {
        let s = CheckpointSigner::from_seed([7u8; 32]);
        let root = "ab".repeat(32);
        let sig = s.sign_root(&root).unwrap();
        assert!(verify_root(&s.verifying_key(), &root, &sig));
        assert!(!verify_root(&s.verifying_key(), &"cd".repeat(32), &sig));
        assert!(!verify_root(
            &s.verifying_key(),
            &root,
            "bm90IGEgc2lnbmF0dXJl"
        ));
        assert_eq!(s.sign_root("not hex"), None);
    }

    #[test]
    fn spki_is_the_rfc8410_shape() {
        let s = CheckpointSigner::from_seed([1u8; 32]);
        let der = base64::engine::general_purpose::STANDARD
            .decode(s.public_key_spki_b64())
            .unwrap();
        assert_eq!(der.len(), 44);
        assert_eq!(&der[..12], &SPKI_PREFIX);
        assert_eq!(&der[12..], s.verifying_key().as_bytes());
    }

    #[test]
    fn key_persists_across_loads() {
        let dir = tempfile::tempdir().unwrap();
        let a = CheckpointSigner::load_or_generate(dir.path()).unwrap();
        let b = CheckpointSigner::load_or_generate(dir.path()).unwrap();
        assert_eq!(a.public_key_spki_b64(), b.public_key_spki_b64());
        std::fs::write(dir.path().join(KEY_FILE), "zz").unwrap();
        assert!(matches!(
            CheckpointSigner::load_or_generate(dir.path()),
            Err(KeyError::Corrupt)
        ));
    }
}
