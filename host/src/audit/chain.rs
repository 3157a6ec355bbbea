//! Hash-chain and Merkle primitives of the `openwop-audit-log-integrity` profile.

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::jcs::canonicalize;
use crate::store::audit::AuditEntry;

/// The entry as hashed: every stored field except the cached `entryHash` itself.
pub fn entry_document(e: &AuditEntry) -> Value {
    json!({
        "seq": e.seq,
        "occurredAt": e.occurred_at,
        "actor": e.actor,
        "action": e.action,
        "target": e.target,
        "details": e.details,
        "prevHash": e.prev_hash,
    })
}

/// Lowercase-hex SHA-256 of the entry's RFC 8785 canonical JSON — what the next entry's
/// `prevHash` must be.
pub fn entry_hash(e: &AuditEntry) -> String {
    hex::encode(Sha256::digest(canonicalize(&entry_document(e)).as_bytes()))
}

/// Merkle root over hex leaf hashes: a parent is SHA-256 of the ASCII bytes `left ‖ right`
/// (hex text), a last odd node is promoted unchanged. `None` for no leaves.
pub fn merkle_root(leaves: &[String]) -> Option<String> {
    if leaves.is_empty() {
        return None;
    }
    let mut level: Vec<String> = leaves.to_vec();
    while level.len() > 1 {
        let mut next = Vec::with_capacity(level.len().div_ceil(2));
        for pair in level.chunks(2) {
            match pair {
                [l, r] => {
                    let mut h = Sha256::new();
                    h.update(l.as_bytes());
                    h.update(r.as_bytes());
                    next.push(hex::encode(h.finalize()));
                }
                [odd] => next.push(odd.clone()),
                _ => {}
            }
        }
        level = next;
    }
    level.pop()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(s: &str) -> String {
        hex::encode(Sha256::digest(s.as_bytes()))
    }

    #[test]
    fn merkle_pairs_hex_text_and_promotes_odd_nodes() {
        let (a, b, c) = (sha("a"), sha("b"), sha("c"));
        assert_eq!(merkle_root(&[]), None);
        assert_eq!(merkle_root(std::slice::from_ref(&a)), Some(a.clone()));
        let ab = sha(&format!("{a}{b}"));
        assert_eq!(merkle_root(&[a.clone(), b.clone()]), Some(ab.clone()));
        // Three leaves: (a,b) pair, c promoted, then the root pairs them.
        assert_eq!(
            merkle_root(&[a, b, c.clone()]),
            Some(sha(&format!("{ab}{c}")))
        );
    }

    #[test]
    fn entry_hash_covers_every_field_but_itself() {
        let e = AuditEntry {
            seq: 2,
            occurred_at: "2026-01-01T00:00:00.000Z".into(),
            actor: "key-abc".into(),
            action: "run.create".into(),
            target: "run-1".into(),
            details: json!({"b": 1, "a": 2}),
            prev_hash: Some("00".repeat(32)),
            entry_hash: "ignored".into(),
        };
        let canonical = format!(
            "{{\"action\":\"run.create\",\"actor\":\"key-abc\",\"details\":{{\"a\":2,\"b\":1}},\"occurredAt\":\"2026-01-01T00:00:00.000Z\",\"prevHash\":\"{}\",\"seq\":2,\"target\":\"run-1\"}}",
            "00".repeat(32)
        );
        assert_eq!(entry_hash(&e), sha(&canonical));
        let mut changed = e.clone();
        changed.entry_hash = "other".into();
        assert_eq!(entry_hash(&changed), entry_hash(&e));
        changed.actor = "key-xyz".into();
        assert_ne!(entry_hash(&changed), entry_hash(&e));
    }
}
