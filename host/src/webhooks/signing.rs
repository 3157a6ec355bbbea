//! Webhook signature scheme `v1` (spec/v1/webhooks.md §Headers): HMAC-SHA256 keyed with the
//! subscription secret (UTF-8) over `"{timestamp}.{rawBody}"`, sent as `sha256=<lowercase hex>`.

use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub const ALGORITHM: &str = "v1";
pub const SIGNATURE_PREFIX: &str = "sha256=";
/// Receivers reject timestamps further than this from their clock.
pub const FRESHNESS_WINDOW_SECS: i64 = 300;

/// Header names. The spec's `X-openwop-*` family is authoritative; the `OpenWOP-*` family
/// (RFC 0165, what the v2 SDKs read first) carries identical values.
pub const HEADER_FAMILIES: [[&str; 5]; 2] = [
    [
        "X-openwop-Webhook-Id",
        "X-openwop-Event-Type",
        "X-openwop-Timestamp",
        "X-openwop-Signature",
        "X-openwop-Signature-Algorithm",
    ],
    [
        "OpenWOP-Webhook-Id",
        "OpenWOP-Event-Type",
        "OpenWOP-Timestamp",
        "OpenWOP-Signature",
        "OpenWOP-Signature-Algorithm",
    ],
];

fn mac(secret: &str, timestamp: i64, body: &[u8]) -> Hmac<Sha256> {
    // HMAC accepts keys of any length; `new_from_slice` cannot fail for it.
    let mut m =
        <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes()).unwrap_or_else(|_| unreachable!());
    m.update(timestamp.to_string().as_bytes());
    m.update(b".");
    m.update(body);
    m
}

/// The `X-openwop-Signature` value for these exact body bytes.
pub fn sign(secret: &str, timestamp: i64, body: &[u8]) -> String {
    format!(
        "{SIGNATURE_PREFIX}{}",
        hex::encode(mac(secret, timestamp, body).finalize().into_bytes())
    )
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("signature header is not sha256=<hex>")]
    MalformedSignature,
    #[error("timestamp header is not unix seconds")]
    MalformedTimestamp,
    #[error("timestamp outside the freshness window")]
    Stale,
    #[error("unsupported signature algorithm")]
    UnsupportedAlgorithm,
    #[error("signature mismatch")]
    Mismatch,
}

/// Receiver-side check (the spec's verification recipe). A missing algorithm header means `v1`.
pub fn verify(
    secret: &str,
    signature: &str,
    timestamp: &str,
    algorithm: Option<&str>,
    body: &[u8],
    now_secs: i64,
) -> Result<(), VerifyError> {
    if algorithm.is_some_and(|a| a != ALGORITHM) {
        return Err(VerifyError::UnsupportedAlgorithm);
    }
    let hex_sig = signature
        .strip_prefix(SIGNATURE_PREFIX)
        .ok_or(VerifyError::MalformedSignature)?;
    let given = hex::decode(hex_sig).map_err(|_| VerifyError::MalformedSignature)?;
    let ts: i64 = timestamp
        .trim()
        .parse()
        .map_err(|_| VerifyError::MalformedTimestamp)?;
    if (now_secs - ts).abs() > FRESHNESS_WINDOW_SECS {
        return Err(VerifyError::Stale);
    }
    let expected = mac(secret, ts, body).finalize().into_bytes();
    if given.len() == expected.len() && bool::from(expected.as_slice().ct_eq(&given)) {
        Ok(())
    } else {
        Err(VerifyError::Mismatch)
    }
}

/// A fresh subscription secret: 32 random bytes as 64 lowercase hex characters.
pub fn generate_secret() -> String {
    let mut b = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut b);
    hex::encode(b)
}

/// First 8 hex characters of sha256(secret): what logs and responses may show.
pub fn fingerprint(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))[..8].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_an_independent_hmac() {
        // Computed with Python's hmac module over b'1700000000.{"a":1}'.
        assert_eq!(
            sign("whsec-test-secret", 1_700_000_000, br#"{"a":1}"#),
            "sha256=4b776f4eda0086dafb75030a7dcbe0b60f5c49dbdc5376afc01e2e4d98eff080"
        );
    }

    #[test]
    fn verify_round_trip_and_failures() {
        let body = br#"{"type":"run.completed"}"#;
        let now = 1_700_000_000;
        let sig = sign("s3cret", now, body);
        assert_eq!(
            verify("s3cret", &sig, &now.to_string(), Some("v1"), body, now + 10),
            Ok(())
        );
        assert_eq!(
            verify("s3cret", &sig, &now.to_string(), None, body, now),
            Ok(())
        );
        assert_eq!(
            verify("other", &sig, &now.to_string(), None, body, now),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            verify("s3cret", &sig, &now.to_string(), None, b"{}", now),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            verify("s3cret", &sig, &now.to_string(), Some("v2"), body, now),
            Err(VerifyError::UnsupportedAlgorithm)
        );
        assert_eq!(
            verify("s3cret", &sig, &now.to_string(), None, body, now + 301),
            Err(VerifyError::Stale)
        );
        assert_eq!(
            verify("s3cret", &sig[7..], &now.to_string(), None, body, now),
            Err(VerifyError::MalformedSignature)
        );
        assert_eq!(
            verify("s3cret", &sig, "soon", None, body, now),
            Err(VerifyError::MalformedTimestamp)
        );
    }

    #[test]
    fn secrets_are_random_and_fingerprints_short() {
        let (a, b) = (generate_secret(), generate_secret());
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
        assert_eq!(fingerprint(&a).len(), 8);
        assert_eq!(fingerprint("abc"), "ba7816bf");
    }
}
