//! Audit log (openwop-audit-log-integrity): what is recorded, `GET /v1/audit/verify`, signed
//! checkpoints, and tamper detection by editing the database behind the host's back.

use std::time::Duration;

use base64::Engine as _;
use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sqlx::{Connection, SqliteConnection};

use crate::harness::*;

fn audit_host(entries: u32) -> Options {
    Options {
        extra_args: vec![
            "--audit-checkpoint-entries".into(),
            entries.to_string(),
            "--webhook-allow-loopback".into(),
        ],
        ..Options::default()
    }
}

async fn verify(h: &Host, query: &str) -> Value {
    let (status, body) = h.get(&format!("/v1/audit/verify{query}")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // The closed audit-verify-result.schema.json shape.
    let keys: Vec<&str> = body
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    for k in &keys {
        assert!(
            [
                "fromSeq",
                "toSeq",
                "chainValid",
                "checkpointsValid",
                "checkpoints",
                "anomalies"
            ]
            .contains(k),
            "extra key {k}"
        );
    }
    for cp in body["checkpoints"].as_array().unwrap() {
        let mut k: Vec<&str> = cp.as_object().unwrap().keys().map(String::as_str).collect();
        k.sort();
        assert_eq!(k, ["atSequence", "checkpoint", "merkleRoot", "signature"]);
    }
    for a in body["anomalies"].as_array().unwrap() {
        let mut k: Vec<&str> = a.as_object().unwrap().keys().map(String::as_str).collect();
        k.sort();
        assert_eq!(k, ["actualPrevHash", "atSeq", "expectedPrevHash"]);
    }
    body
}

async fn db(h: &Host) -> SqliteConnection {
    let path = h.data_dir.join("wopbox.db");
    SqliteConnection::connect(&format!("sqlite://{}", path.display()))
        .await
        .expect("open the host's database")
}

async fn actions(h: &Host) -> Vec<(i64, String, String, String)> {
    let mut c = db(h).await;
    sqlx::query_as("SELECT seq, actor, action, target FROM audit_log ORDER BY seq")
        .fetch_all(&mut c)
        .await
        .unwrap()
}

/// Produce `n` audited auth failures.
async fn auth_failures(h: &Host, n: usize) {
    for _ in 0..n {
        let resp = h
            .anon(Method::GET, "/v1/runs/run-x")
            .bearer_auth("wrong-key")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    }
}

#[tokio::test]
async fn discovery_advertises_the_profile_with_its_key() {
    let h = Host::start_with(audit_host(7)).await;
    let doc = h.discovery().await;
    assert!(doc["auth"]["profiles"]
        .as_array()
        .unwrap()
        .contains(&json!("openwop-audit-log-integrity")));
    let a = &doc["auth"]["auditLogIntegrity"];
    assert_eq!(a["hashChain"], true);
    assert_eq!(a["checkpointSignatureAlgorithm"], "ed25519");
    assert_eq!(a["checkpointIntervalEntries"], 7);
    assert_eq!(a["checkpointIntervalSeconds"], 300);
    let der = base64::engine::general_purpose::STANDARD
        .decode(a["checkpointPublicKey"].as_str().unwrap())
        .unwrap();
    assert_eq!(der.len(), 44, "Ed25519 SubjectPublicKeyInfo DER");
    assert_eq!(
        &der[..12],
        &[0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00]
    );
}

#[tokio::test]
async fn security_actions_are_chained_and_checkpoints_are_signed() {
    let h = Host::start_with(audit_host(3)).await;
    let run = h.create_run("conformance-noop", json!({})).await;
    let slow = h
        .create_run("conformance-delay", json!({"delayMs": 5000}))
        .await;
    let (status, _) = h.post(&format!("/v1/runs/{slow}/cancel"), json!({})).await;
    assert_eq!(status, StatusCode::OK);
    let (_, wh) = h
        .post(
            "/v1/webhooks",
            json!({"url": "http://127.0.0.1:9/hook", "events": ["run.completed"]}),
        )
        .await;
    let wh_id = wh["webhookId"].as_str().unwrap().to_string();
    let (status, _) = read(
        h.req(Method::DELETE, &format!("/v1/webhooks/{wh_id}"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    auth_failures(&h, 2).await;
    // Reads and replays are not security actions.
    h.get(&format!("/v1/runs/{run}")).await;

    let log = actions(&h).await;
    let got: Vec<(&str, &str)> = log
        .iter()
        .map(|(_, _, a, t)| (a.as_str(), t.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            ("run.create", run.as_str()),
            ("run.create", slow.as_str()),
            ("run.cancel", slow.as_str()),
            ("webhook.register", wh_id.as_str()),
            ("webhook.delete", wh_id.as_str()),
            ("auth.failure", "/v1/runs/run-x"),
            ("auth.failure", "/v1/runs/run-x"),
        ]
    );
    assert!(
        log[0].1.starts_with("key-"),
        "actor is the opaque principal id"
    );
    assert!(
        log.iter().all(|(_, actor, _, _)| !actor.contains(KEY)),
        "no key material in the log"
    );
    assert_eq!(log[5].1, "anonymous");
    assert_eq!(
        log.iter().map(|r| r.0).collect::<Vec<_>>(),
        (1..=7).collect::<Vec<_>>()
    );

    // Checkpoints at 3 and 6 (every 3 entries); wait for the background minting.
    let mut body = verify(&h, "").await;
    for _ in 0..100 {
        if body["checkpoints"].as_array().unwrap().len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        body = verify(&h, "").await;
    }
    assert_eq!(body["chainValid"], true, "{body}");
    assert_eq!(body["checkpointsValid"], true);
    assert_eq!(body["anomalies"], json!([]));
    assert_eq!(body["fromSeq"], 0);
    assert_eq!(body["toSeq"], 7);
    let cps = body["checkpoints"].as_array().unwrap();
    assert_eq!(
        cps.iter()
            .map(|c| c["atSequence"].as_i64().unwrap())
            .collect::<Vec<_>>(),
        [3, 6]
    );

    // Verify every signature independently with the advertised key.
    let doc = h.discovery().await;
    let der = base64::engine::general_purpose::STANDARD
        .decode(
            doc["auth"]["auditLogIntegrity"]["checkpointPublicKey"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
    let key = VerifyingKey::from_bytes(der[12..].try_into().unwrap()).unwrap();
    for cp in cps {
        let root = hex::decode(cp["merkleRoot"].as_str().unwrap()).unwrap();
        assert_eq!(root.len(), 32);
        let sig = base64::engine::general_purpose::STANDARD
            .decode(cp["signature"].as_str().unwrap())
            .unwrap();
        key.verify(&root, &Signature::from_slice(&sig).unwrap())
            .expect("checkpoint signature verifies");
        let mut other = root.clone();
        other[0] ^= 1;
        assert!(key
            .verify(&other, &Signature::from_slice(&sig).unwrap())
            .is_err());
    }

    // A sub-range echoes its bounds and lists only its checkpoints.
    let part = verify(&h, "?fromSeq=4&toSeq=6").await;
    assert_eq!(
        (part["fromSeq"].as_i64(), part["toSeq"].as_i64()),
        (Some(4), Some(6))
    );
    assert_eq!(part["chainValid"], true);
    assert_eq!(part["checkpoints"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn checkpoints_are_also_minted_on_a_timer() {
    let h = Host::start_with(Options {
        extra_args: vec!["--audit-checkpoint-seconds".into(), "1".into()],
        ..Options::default()
    })
    .await;
    auth_failures(&h, 2).await;
    let mut body = verify(&h, "").await;
    for _ in 0..80 {
        if !body["checkpoints"].as_array().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        body = verify(&h, "").await;
    }
    // Far fewer than the 1000-entry threshold, yet covered within a few seconds.
    assert_eq!(body["checkpoints"][0]["atSequence"], 2, "{body}");
    assert_eq!(body["checkpointsValid"], true);
}

#[tokio::test]
async fn verify_rejects_bad_parameters_and_requires_auth() {
    let h = Host::start().await;
    for q in [
        "?fromSeq=-1",
        "?fromSeq=abc",
        "?toSeq=1.5",
        "?fromSeq=5&toSeq=2",
    ] {
        let (status, body) = h.get(&format!("/v1/audit/verify{q}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{q}: {body}");
        assert_envelope(&body, "validation_error");
    }
    let (status, body) = read(
        h.anon(Method::GET, "/v1/audit/verify")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_envelope(&body, "unauthenticated");
    // An empty range past the head is valid and empty.
    let body = verify(&h, "?fromSeq=100&toSeq=200").await;
    assert_eq!(body["chainValid"], true);
    assert_eq!(body["checkpoints"], json!([]));
}

#[tokio::test]
async fn storage_refuses_in_place_edits() {
    let h = Host::start().await;
    auth_failures(&h, 1).await;
    let mut c = db(&h).await;
    let err = sqlx::query("UPDATE audit_log SET actor = 'x' WHERE seq = 1")
        .execute(&mut c)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("append-only"), "{err}");
    let err = sqlx::query("DELETE FROM audit_log")
        .execute(&mut c)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("append-only"), "{err}");
}

#[tokio::test]
async fn editing_a_row_makes_verify_fail_at_that_row() {
    let h = Host::start_with(audit_host(1000)).await;
    auth_failures(&h, 6).await;
    let clean = verify(&h, "").await;
    assert_eq!(clean["chainValid"], true);
    let hashes: Vec<(i64, String)> = {
        let mut c = db(&h).await;
        sqlx::query_as("SELECT seq, entry_hash FROM audit_log ORDER BY seq")
            .fetch_all(&mut c)
            .await
            .unwrap()
    };
    assert_eq!(hashes.len(), 6);

    // An insider with file access drops the guard and rewrites history.
    let mut c = db(&h).await;
    sqlx::query("DROP TRIGGER audit_log_no_update")
        .execute(&mut c)
        .await
        .unwrap();
    sqlx::query("UPDATE audit_log SET actor = 'key-someone-else' WHERE seq = 3")
        .execute(&mut c)
        .await
        .unwrap();

    let body = verify(&h, "").await;
    assert_eq!(body["chainValid"], false);
    let anomalies = body["anomalies"].as_array().unwrap();
    assert_eq!(anomalies.len(), 1, "{body}");
    // Entry 3's content no longer hashes to what entry 4 committed to.
    assert_eq!(anomalies[0]["atSeq"], 4);
    assert_eq!(anomalies[0]["actualPrevHash"], json!(hashes[2].1));
    assert_ne!(
        anomalies[0]["expectedPrevHash"],
        anomalies[0]["actualPrevHash"]
    );
    // The history before the edit still verifies.
    assert_eq!(verify(&h, "?fromSeq=1&toSeq=3").await["chainValid"], true);

    // Rewriting a link itself is reported at exactly that row (and, since the row's content
    // changed, at the link after it).
    sqlx::query("UPDATE audit_log SET prev_hash = ? WHERE seq = 5")
        .bind("ab".repeat(32))
        .execute(&mut c)
        .await
        .unwrap();
    let body = verify(&h, "").await;
    let at: Vec<i64> = body["anomalies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["atSeq"].as_i64().unwrap())
        .collect();
    assert_eq!(at, [4, 5, 6]);
    assert_eq!(
        body["anomalies"][1]["actualPrevHash"],
        json!("ab".repeat(32))
    );
    assert_eq!(body["anomalies"][1]["expectedPrevHash"], json!(hashes[3].1));

    // The newest entry has no successor: its stored hash is the witness.
    sqlx::query("UPDATE audit_log SET details = '{\"forged\":true}' WHERE seq = 6")
        .execute(&mut c)
        .await
        .unwrap();
    let body = verify(&h, "?fromSeq=6").await;
    assert_eq!(body["chainValid"], false);
    let head = body["anomalies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["atSeq"] == 7)
        .expect("anomaly after the head");
    assert_eq!(head["actualPrevHash"], json!(hashes[5].1));
    assert_ne!(head["expectedPrevHash"], head["actualPrevHash"]);
}

#[tokio::test]
async fn deleted_rows_and_broken_checkpoints_are_detected() {
    let h = Host::start_with(audit_host(4)).await;
    auth_failures(&h, 8).await;
    let mut body = verify(&h, "").await;
    for _ in 0..100 {
        if body["checkpoints"].as_array().unwrap().len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        body = verify(&h, "").await;
    }
    assert_eq!(body["checkpointsValid"], true, "{body}");
    assert_eq!(body["checkpoints"].as_array().unwrap().len(), 2);

    let mut c = db(&h).await;
    sqlx::query("DROP TRIGGER audit_log_no_delete")
        .execute(&mut c)
        .await
        .unwrap();
    sqlx::query("DELETE FROM audit_log WHERE seq = 6")
        .execute(&mut c)
        .await
        .unwrap();
    let body = verify(&h, "").await;
    assert_eq!(body["chainValid"], false);
    assert_eq!(
        body["checkpointsValid"], false,
        "the checkpoint at 8 no longer matches its entries"
    );
    assert_eq!(body["anomalies"][0]["atSeq"], 6);
    assert_eq!(
        body["anomalies"][0]["actualPrevHash"], "",
        "a missing entry carries no prevHash"
    );
    // The first checkpoint's span (1..=4) is untouched.
    let early = verify(&h, "?fromSeq=0&toSeq=4").await;
    assert_eq!(early["chainValid"], true);
    assert_eq!(early["checkpointsValid"], true);

    // A forged checkpoint signature is caught even though the chain under it is intact.
    sqlx::query("DROP TRIGGER audit_checkpoints_no_update")
        .execute(&mut c)
        .await
        .unwrap();
    sqlx::query("UPDATE audit_checkpoints SET signature = ? WHERE at_sequence = 4")
        .bind(base64::engine::general_purpose::STANDARD.encode([7u8; 64]))
        .execute(&mut c)
        .await
        .unwrap();
    let early = verify(&h, "?fromSeq=0&toSeq=4").await;
    assert_eq!(early["checkpointsValid"], false);
    assert_eq!(early["chainValid"], false);
    assert_eq!(early["anomalies"], json!([]));
}
