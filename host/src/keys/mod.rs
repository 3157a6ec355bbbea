//! Scoped, tenant-bound API keys kept in the operator config file, and the operations behind
//! `wopbox keys mint | revoke | list`. The HTTP side (authentication, scope checks) lives in
//! `api::auth` and `api::scopes`.

pub mod file;
pub mod scopes;

use std::path::Path;

use chrono::{DateTime, SecondsFormat, Utc};
use rand::RngCore;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

pub use file::{KeyEntry, KeyFileError};

/// Digest a presented secret the way the file stores it.
pub fn digest(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// The non-secret id of a key: derived from its digest, so the legacy `--api-key` keys and
/// minted keys share one format (`key-<12 hex>`).
pub fn key_id(digest: &[u8; 32]) -> String {
    format!("key-{}", &hex::encode(digest)[..12])
}

/// A fresh random secret (192 bits).
pub fn new_secret() -> String {
    let mut bytes = [0u8; 24];
    rand::thread_rng().fill_bytes(&mut bytes);
    format!("wbx_{}", hex::encode(bytes))
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

pub struct MintRequest<'a> {
    pub tenant: &'a str,
    pub scopes: &'a [String],
    pub label: Option<&'a str>,
    pub roles: &'a [String],
    pub groups: &'a [String],
    pub expires: Option<DateTime<Utc>>,
}

/// Add a key to the file. Returns its description plus `secret` — the only time the secret
/// exists outside the caller's hands; the file keeps only its digest.
pub fn mint(path: &Path, req: &MintRequest) -> Result<Value, KeyFileError> {
    file::validate_tenant(req.tenant)?;
    if req.scopes.is_empty() {
        return Err(KeyFileError::NoScopes);
    }
    for s in req.scopes {
        scopes::validate(s)?;
    }
    file::validate_refs("role", req.roles)?;
    file::validate_refs("group", req.groups)?;
    let secret = new_secret();
    let d = digest(&secret);
    let id = key_id(&d);
    let created = rfc3339(Utc::now());
    file::edit(path, |doc| {
        let mut t = toml_edit::Table::new();
        t["id"] = toml_edit::value(&id);
        t["tenant"] = toml_edit::value(req.tenant);
        t["scopes"] = toml_edit::value(string_array(req.scopes));
        t["sha256"] = toml_edit::value(hex::encode(d));
        t["created"] = toml_edit::value(&created);
        if let Some(l) = req.label {
            t["label"] = toml_edit::value(l);
        }
        if let Some(e) = req.expires {
            t["expires"] = toml_edit::value(rfc3339(e));
        }
        for (field, names) in [("roles", req.roles), ("groups", req.groups)] {
            if !names.is_empty() {
                t[field] = toml_edit::value(string_array(names));
            }
        }
        file::keys_array(doc, path)?.push(t);
        Ok(())
    })?;
    let mut out = describe_parts(&id, req.tenant, req.scopes, Some(&created), req.label);
    if let Some(e) = req.expires {
        out["expires"] = json!(rfc3339(e));
    }
    add_refs(&mut out, req.roles, req.groups);
    out["secret"] = json!(secret);
    Ok(out)
}

/// Mark a key revoked (kept in the file so presenting it answers `key_revoked`). Revoking an
/// already revoked key keeps the first timestamp. A running host picks the change up on its
/// next reload of the file.
pub fn revoke(path: &Path, id: &str) -> Result<Value, KeyFileError> {
    file::edit(path, |doc| {
        let keys = file::keys_array(doc, path)?;
        let entry = keys
            .iter_mut()
            .find(|t| t.get("id").and_then(|v| v.as_str()) == Some(id))
            .ok_or_else(|| KeyFileError::NoSuchKey(id.to_string()))?;
        let already = entry.contains_key("revoked");
        if !already {
            entry["revoked"] = toml_edit::value(rfc3339(Utc::now()));
        }
        Ok(json!({
            "id": id,
            "revoked": entry.get("revoked").and_then(|v| v.as_str()),
            "alreadyRevoked": already,
        }))
    })
}

/// Every key in the file, without digests.
pub fn list(path: &Path) -> Result<Value, KeyFileError> {
    let now = Utc::now();
    let keys: Vec<Value> = file::load(path)?
        .iter()
        .map(|k| {
            let created = k.created.map(rfc3339);
            let mut v = describe_parts(
                &k.id,
                &k.tenant,
                &k.scopes,
                created.as_deref(),
                k.label.as_deref(),
            );
            v["state"] = json!(match (k.revoked, k.expires) {
                (Some(_), _) => "revoked",
                (None, Some(e)) if e <= now => "expired",
                _ => "active",
            });
            if let Some(e) = k.expires {
                v["expires"] = json!(rfc3339(e));
            }
            if let Some(r) = k.revoked {
                v["revoked"] = json!(rfc3339(r));
            }
            add_refs(&mut v, &k.roles, &k.groups);
            v
        })
        .collect();
    Ok(json!({"keys": keys}))
}

fn string_array(items: &[String]) -> toml_edit::Array {
    items.iter().map(String::as_str).collect()
}

fn add_refs(v: &mut Value, roles: &[String], groups: &[String]) {
    if !roles.is_empty() {
        v["roles"] = json!(roles);
    }
    if !groups.is_empty() {
        v["groups"] = json!(groups);
    }
}

fn describe_parts(
    id: &str,
    tenant: &str,
    scopes: &[String],
    created: Option<&str>,
    label: Option<&str>,
) -> Value {
    let mut v = json!({"id": id, "tenant": tenant, "scopes": scopes});
    if let Some(c) = created {
        v["created"] = json!(c);
    }
    if let Some(l) = label {
        v["label"] = json!(l);
    }
    v
}
