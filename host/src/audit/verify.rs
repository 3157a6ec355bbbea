//! `GET /v1/audit/verify`: re-walk the stored chain and the signed checkpoints.
//!
//! Everything is recomputed from the stored columns; the cached `entry_hash` column is only
//! trusted as the expected link *after* the last entry (there is no successor to carry it).
//! An anomaly at `atSeq = s` always means "the link into entry `s` is broken": `expectedPrevHash`
//! is the hash recomputed from entry `s-1` as stored now, `actualPrevHash` is what entry `s`
//! carries (empty when entry `s` is missing altogether).

use serde_json::{json, Value};

use super::chain::{entry_hash, merkle_root};
use super::signing::verify_root;
use super::AuditLog;
use crate::store::audit::Checkpoint;
use crate::store::StoreResult;

/// Rows read per page while walking the chain.
const PAGE: i64 = 2000;

#[derive(Debug, Clone, PartialEq)]
pub struct Anomaly {
    pub at_seq: i64,
    pub expected_prev_hash: String,
    pub actual_prev_hash: String,
}

#[derive(Debug, Clone)]
pub struct VerifyReport {
    pub from_seq: i64,
    pub to_seq: i64,
    pub anomalies: Vec<Anomaly>,
    pub checkpoints: Vec<Checkpoint>,
    pub checkpoints_valid: bool,
}

impl VerifyReport {
    pub fn chain_valid(&self) -> bool {
        self.anomalies.is_empty() && self.checkpoints_valid
    }

    /// The closed `audit-verify-result.schema.json` shape.
    pub fn to_json(&self) -> Value {
        json!({
            "fromSeq": self.from_seq,
            "toSeq": self.to_seq,
            "chainValid": self.chain_valid(),
            "checkpointsValid": self.checkpoints_valid,
            "checkpoints": self.checkpoints.iter().map(|c| json!({
                "checkpoint": c.checkpoint_id,
                "atSequence": c.at_sequence,
                "merkleRoot": c.merkle_root,
                "signature": c.signature,
            })).collect::<Vec<_>>(),
            "anomalies": self.anomalies.iter().map(|a| json!({
                "atSeq": a.at_seq,
                "expectedPrevHash": a.expected_prev_hash,
                "actualPrevHash": a.actual_prev_hash,
            })).collect::<Vec<_>>(),
        })
    }
}

/// Stand-in for "no predecessor": the genesis entry must carry `prevHash: null`.
const GENESIS: &str = "null";

impl AuditLog {
    /// Verify entries `from..=to` (both echoed back) and the checkpoints minted in that range.
    pub async fn verify(&self, from: i64, to: i64) -> StoreResult<VerifyReport> {
        let store = self.store();
        let head = store.audit_head().await?;
        let lo = from.max(1);
        let hi = to.min(head);
        let mut anomalies = Vec::new();

        if lo <= hi {
            // The link into `lo` needs the entry before it.
            let mut prev: Option<(i64, String)> = if lo > 1 {
                store
                    .audit_entries(lo - 1, lo - 1)
                    .await?
                    .first()
                    .map(|e| (e.seq, entry_hash(e)))
            } else {
                None
            };
            let mut expected_seq = lo;
            let mut last_entry = None;
            let mut cursor = lo;
            while cursor <= hi {
                let page_end = (cursor + PAGE - 1).min(hi);
                let page = store.audit_entries(cursor, page_end).await?;
                for e in page {
                    // Missing rows between the previous entry and this one.
                    while expected_seq < e.seq {
                        anomalies.push(Anomaly {
                            at_seq: expected_seq,
                            expected_prev_hash: match &prev {
                                Some((s, h)) if *s == expected_seq - 1 => h.clone(),
                                _ if expected_seq == 1 => GENESIS.into(),
                                _ => format!("unavailable:entry {} is missing", expected_seq - 1),
                            },
                            actual_prev_hash: String::new(),
                        });
                        expected_seq += 1;
                    }
                    let expected = if e.seq == 1 {
                        Some(GENESIS.to_string())
                    } else {
                        match &prev {
                            Some((s, h)) if *s == e.seq - 1 => Some(h.clone()),
                            // The predecessor is missing (already reported) — nothing to compare.
                            _ => None,
                        }
                    };
                    let actual = e.prev_hash.clone().unwrap_or_else(|| {
                        if e.seq == 1 {
                            GENESIS.into()
                        } else {
                            String::new()
                        }
                    });
                    if let Some(expected) = expected {
                        if expected != actual {
                            anomalies.push(Anomaly {
                                at_seq: e.seq,
                                expected_prev_hash: expected,
                                actual_prev_hash: actual,
                            });
                        }
                    }
                    let h = entry_hash(&e);
                    prev = Some((e.seq, h.clone()));
                    expected_seq = e.seq + 1;
                    last_entry = Some((e, h));
                }
                cursor = page_end + 1;
            }
            // Rows missing at the end of the range.
            while expected_seq <= hi {
                anomalies.push(Anomaly {
                    at_seq: expected_seq,
                    expected_prev_hash: prev
                        .as_ref()
                        .filter(|(s, _)| *s == expected_seq - 1)
                        .map(|(_, h)| h.clone())
                        .unwrap_or_else(|| {
                            format!("unavailable:entry {} is missing", expected_seq - 1)
                        }),
                    actual_prev_hash: String::new(),
                });
                expected_seq += 1;
            }
            // The head has no successor: its cached hash is the only witness of its content.
            if let Some((e, h)) = last_entry {
                if e.seq == head && e.entry_hash != h {
                    anomalies.push(Anomaly {
                        at_seq: e.seq + 1,
                        expected_prev_hash: h,
                        actual_prev_hash: e.entry_hash,
                    });
                }
            }
        }

        // Checkpoints minted within the range, each re-derived from the entries it covers.
        let all = store.audit_checkpoints(0, to.max(0)).await?;
        let key = self.signer().verifying_key();
        let mut checkpoints = Vec::new();
        let mut checkpoints_valid = true;
        let mut prev_at = 0i64;
        for cp in all {
            let covered_from = prev_at;
            prev_at = cp.at_sequence;
            if cp.at_sequence < from {
                continue;
            }
            let mut leaves = Vec::new();
            let mut cursor = covered_from + 1;
            while cursor <= cp.at_sequence {
                let page_end = (cursor + PAGE - 1).min(cp.at_sequence);
                leaves.extend(
                    store
                        .audit_entries(cursor, page_end)
                        .await?
                        .iter()
                        .map(entry_hash),
                );
                cursor = page_end + 1;
            }
            let root_ok = leaves.len() as i64 == cp.at_sequence - covered_from
                && merkle_root(&leaves).as_deref() == Some(cp.merkle_root.as_str());
            let sig_ok = verify_root(&key, &cp.merkle_root, &cp.signature);
            if !(root_ok && sig_ok) {
                checkpoints_valid = false;
            }
            checkpoints.push(cp);
        }

        Ok(VerifyReport {
            from_seq: from,
            to_seq: to,
            anomalies,
            checkpoints,
            checkpoints_valid,
        })
    }
}
