//! The `[[keys]]` section of the operator config file (`--config wopbox.toml`).
//!
//! ```toml
//! [[keys]]
//! id = "key-3f2a9c01b7de"          # non-secret handle (audit actor, `keys revoke ID`)
//! tenant = "acme"
//! scopes = ["runs:create", "runs:read"]
//! sha256 = "<64 hex digits>"       # SHA-256 of the secret; the secret itself is never stored
//! created = "2026-12-03T09:00:00Z"
//! label = "ci pipeline"            # optional
//! roles = ["controller"]           # optional: approver routing (approverRoleRefs)
//! groups = ["finance-approvers"]   # optional: approver routing (approverGroupRefs)
//! expires = "2027-01-01T00:00:00Z" # optional; afterwards the key gets 401 key_expired
//! revoked = "2026-12-04T10:00:00Z" # set by `wopbox keys revoke`; the key gets 401 key_revoked
//! ```
//!
//! Other top-level tables are ignored here, so the same file can carry other sections; inside a
//! key entry unknown fields are refused (a misspelt `scope =` must not yield a key that silently
//! holds nothing). Writes go through `toml_edit`, keeping the operator's comments and layout, to
//! a temporary file that is renamed over the original, under an exclusive lock on a sibling
//! `.lock` file so two concurrent `keys mint` runs cannot lose each other's entry.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::Deserialize;

use super::scopes::{self, UnknownScope};

#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not valid TOML: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("{path}: key {index} ({id}): {problem}")]
    Entry {
        path: PathBuf,
        index: usize,
        id: String,
        problem: String,
    },
    #[error("{path}: `keys` must be an array of tables ([[keys]])")]
    Shape { path: PathBuf },
    #[error("no key with id '{0}'")]
    NoSuchKey(String),
    #[error(transparent)]
    Scope(#[from] UnknownScope),
    #[error("invalid tenant '{0}': use 1-64 characters from A-Z a-z 0-9 . _ - starting with a letter or digit")]
    Tenant(String),
    #[error("invalid {kind} '{name}': use 1-64 characters from A-Z a-z 0-9 . _ - starting with a letter or digit")]
    Name { kind: String, name: String },
    #[error("a key needs at least one --scope")]
    NoScopes,
}

/// One key as configured. `sha256` is the digest of the secret (lower-case hex).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyEntry {
    pub id: String,
    pub tenant: String,
    pub scopes: Vec<String>,
    pub sha256: String,
    #[serde(default, deserialize_with = "timestamp")]
    pub created: Option<DateTime<Utc>>,
    #[serde(default)]
    pub label: Option<String>,
    /// Roles and groups the key's principal holds, matched against an approval's
    /// `approverRoleRefs` / `approverGroupRefs` (interrupt.md, RFC 0104).
    #[serde(default)]
    pub roles: Vec<String>,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default, deserialize_with = "timestamp")]
    pub expires: Option<DateTime<Utc>>,
    #[serde(default, deserialize_with = "timestamp")]
    pub revoked: Option<DateTime<Utc>>,
}

impl KeyEntry {
    pub fn digest(&self) -> Option<[u8; 32]> {
        let bytes = hex::decode(&self.sha256).ok()?;
        bytes.try_into().ok()
    }
}

/// Accepts an RFC 3339 string or a TOML offset date-time (`expires = 2027-01-01T00:00:00Z`).
fn timestamp<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
    let v = toml::Value::deserialize(d)?;
    let text = match &v {
        toml::Value::String(s) => s.clone(),
        toml::Value::Datetime(dt) => dt.to_string(),
        other => {
            return Err(serde::de::Error::custom(format!(
                "expected an RFC 3339 timestamp, got {}",
                other.type_str()
            )))
        }
    };
    DateTime::parse_from_rfc3339(&text)
        .map(|t| Some(t.with_timezone(&Utc)))
        .map_err(|e| serde::de::Error::custom(format!("invalid timestamp '{text}': {e}")))
}

#[derive(Deserialize)]
struct Document {
    #[serde(default)]
    keys: Vec<KeyEntry>,
}

/// 1-64 characters from `A-Z a-z 0-9 . _ -`, starting with a letter or digit: the shape of
/// tenant, role and group names.
fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

pub fn validate_tenant(tenant: &str) -> Result<(), KeyFileError> {
    if is_name(tenant) {
        Ok(())
    } else {
        Err(KeyFileError::Tenant(tenant.to_string()))
    }
}

/// Role and group names have the tenant's shape.
pub fn validate_refs(kind: &str, names: &[String]) -> Result<(), KeyFileError> {
    match names.iter().find(|n| !is_name(n)) {
        None => Ok(()),
        Some(bad) => Err(KeyFileError::Name {
            kind: kind.to_string(),
            name: bad.clone(),
        }),
    }
}

/// Parse and validate every entry: ids and digests unique, tenants and scopes well-formed.
pub fn parse(path: &Path, text: &str) -> Result<Vec<KeyEntry>, KeyFileError> {
    let doc: Document = toml::from_str(text).map_err(|e| KeyFileError::Syntax {
        path: path.to_path_buf(),
        message: e.message().to_string(),
    })?;
    let mut ids = HashSet::new();
    let mut digests = HashSet::new();
    for (index, k) in doc.keys.iter().enumerate() {
        let fail = |problem: String| KeyFileError::Entry {
            path: path.to_path_buf(),
            index,
            id: k.id.clone(),
            problem,
        };
        if k.id.trim().is_empty() {
            return Err(fail("id must not be empty".into()));
        }
        if !ids.insert(k.id.clone()) {
            return Err(fail("duplicate id".into()));
        }
        validate_tenant(&k.tenant).map_err(|e| fail(e.to_string()))?;
        validate_refs("role", &k.roles).map_err(|e| fail(e.to_string()))?;
        validate_refs("group", &k.groups).map_err(|e| fail(e.to_string()))?;
        if k.scopes.is_empty() {
            return Err(fail("scopes must not be empty".into()));
        }
        for s in &k.scopes {
            scopes::validate(s).map_err(|e| fail(e.to_string()))?;
        }
        match k.digest() {
            Some(d) if digests.insert(d) => {}
            Some(_) => return Err(fail("duplicate sha256 (the same secret twice)".into())),
            None => return Err(fail("sha256 must be 64 hex digits".into())),
        }
    }
    Ok(doc.keys)
}

/// The file's text; a missing file reads as empty (no keys yet).
pub fn read_text(path: &Path) -> Result<String, KeyFileError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(source) => Err(KeyFileError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Read the file's keys; a missing file has none.
pub fn load(path: &Path) -> Result<Vec<KeyEntry>, KeyFileError> {
    parse(path, &read_text(path)?)
}

/// Apply `change` to the file's TOML document under an exclusive lock and replace the file
/// atomically. The change sees the current text, so concurrent writers serialise.
pub fn edit<T>(
    path: &Path,
    change: impl FnOnce(&mut toml_edit::DocumentMut) -> Result<T, KeyFileError>,
) -> Result<T, KeyFileError> {
    let write_err = |source| KeyFileError::Write {
        path: path.to_path_buf(),
        source,
    };
    let lock_path = sibling(path, ".lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(write_err)?;
    lock.lock().map_err(write_err)?;

    let text = read_text(path)?;
    // Refuse to rewrite a file that does not load: the operator must fix it first.
    parse(path, &text)?;
    let mut doc: toml_edit::DocumentMut =
        text.parse()
            .map_err(|e: toml_edit::TomlError| KeyFileError::Syntax {
                path: path.to_path_buf(),
                message: e.message().to_string(),
            })?;
    let out = change(&mut doc)?;
    let new_text = doc.to_string();
    parse(path, &new_text)?;

    let tmp = sibling(path, &format!(".tmp-{}", std::process::id()));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(&tmp).map_err(write_err)?;
    f.write_all(new_text.as_bytes()).map_err(write_err)?;
    f.sync_all().map_err(write_err)?;
    std::fs::rename(&tmp, path).map_err(write_err)?;
    drop(lock);
    Ok(out)
}

/// The `keys` array of tables, created when absent.
pub fn keys_array<'d>(
    doc: &'d mut toml_edit::DocumentMut,
    path: &Path,
) -> Result<&'d mut toml_edit::ArrayOfTables, KeyFileError> {
    let item = doc
        .entry("keys")
        .or_insert(toml_edit::Item::ArrayOfTables(Default::default()));
    item.as_array_of_tables_mut().ok_or(KeyFileError::Shape {
        path: path.to_path_buf(),
    })
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    path.with_file_name(name)
}
