//! The HTTP client behind `wopbox pack push`, `wopbox workflow put` and `wopbox run`.
//!
//! It talks to a running wopbox exactly as any other client would, and turns
//! the server's error envelope into a readable message and a non-zero exit.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde_json::Value;
use sha2::{Digest, Sha256};

pub mod progress;
pub mod sse;
pub mod watch;

use crate::packs::error::PackError;
use crate::packs::manifest::validate_manifest;
use crate::packs::tarball::write_tgz;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not valid JSON: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("pack.json: {0}")]
    Manifest(#[from] PackError),
    #[error("request to {url} failed: {source}")]
    Http { url: String, source: reqwest::Error },
    #[error("--input: {0}")]
    Input(String),
    #[error("{0}")]
    Stream(String),
    #[error("server answered {status} {code}: {message}{}", details.as_ref().map(|d| format!(" ({d})")).unwrap_or_default())]
    Server {
        status: u16,
        code: String,
        message: String,
        details: Option<Value>,
    },
}

/// The server's error envelope (`{error, message, details}`) as a [`ClientError`].
fn server_error(status: u16, text: &str) -> ClientError {
    let body: Value = serde_json::from_str(text).unwrap_or(Value::String(text.to_string()));
    ClientError::Server {
        status,
        code: body
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or("unknown")
            .to_string(),
        message: body
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
        details: body.get("details").cloned(),
    }
}

/// `--input JSON|@file`: the run's inputs, a JSON object given inline or read from a file.
pub fn parse_input(arg: Option<&str>) -> Result<Value, ClientError> {
    let Some(arg) = arg else {
        return Ok(Value::Object(Default::default()));
    };
    let (text, origin) = match arg.strip_prefix('@') {
        Some(path) => {
            let bytes = read(Path::new(path))?;
            let text = String::from_utf8(bytes)
                .map_err(|_| ClientError::Input(format!("{path} is not UTF-8")))?;
            (text, path.to_string())
        }
        None => (arg.to_string(), "the value".to_string()),
    };
    let v: Value = serde_json::from_str(&text)
        .map_err(|e| ClientError::Input(format!("{origin} is not valid JSON: {e}")))?;
    if !v.is_object() {
        return Err(ClientError::Input(format!(
            "{origin} must be a JSON object (the run's inputs)"
        )));
    }
    Ok(v)
}

/// A client for one wopbox server.
pub struct Client {
    base: String,
    api_key: Option<String>,
    http: reqwest::Client,
}

fn read(path: &Path) -> Result<Vec<u8>, ClientError> {
    std::fs::read(path).map_err(|source| ClientError::Read {
        path: path.to_path_buf(),
        source,
    })
}

impl Client {
    pub fn new(base_url: &str, api_key: Option<String>) -> Client {
        Client {
            base: base_url.trim_end_matches('/').to_string(),
            api_key,
            http: reqwest::Client::new(),
        }
    }

    async fn send(&self, req: reqwest::RequestBuilder, url: &str) -> Result<Value, ClientError> {
        let req = match &self.api_key {
            Some(k) => req.bearer_auth(k),
            None => req,
        };
        let resp = req.send().await.map_err(|source| ClientError::Http {
            url: url.to_string(),
            source,
        })?;
        let status = resp.status().as_u16();
        let text = resp.text().await.map_err(|source| ClientError::Http {
            url: url.to_string(),
            source,
        })?;
        if (200..300).contains(&status) {
            return Ok(serde_json::from_str(&text).unwrap_or(Value::String(text)));
        }
        Err(server_error(status, &text))
    }

    /// Packs `dir` (its `pack.json` and the `runtime.entry` artifact) into a
    /// tarball and publishes it with `PUT /v1/packs/{name}/-/{version}.tgz`.
    /// The manifest is validated locally first so obvious mistakes never
    /// leave the machine; the server validates everything again.
    pub async fn push_pack(&self, dir: &Path) -> Result<Value, ClientError> {
        let manifest_path = dir.join("pack.json");
        let manifest_bytes = read(&manifest_path)?;
        let raw: Value =
            serde_json::from_slice(&manifest_bytes).map_err(|source| ClientError::Json {
                path: manifest_path.clone(),
                source,
            })?;
        let manifest = validate_manifest(&raw)?;
        let entry_bytes = read(&dir.join(&manifest.entry))?;
        let tgz = write_tgz([
            ("pack.json", manifest_bytes.as_slice()),
            (manifest.entry.as_str(), entry_bytes.as_slice()),
        ])
        .map_err(|source| ClientError::Read {
            path: dir.to_path_buf(),
            source,
        })?;
        let digest = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(&tgz));
        let url = format!(
            "{}/v1/packs/{}/-/{}.tgz",
            self.base, manifest.name, manifest.version
        );
        let req = self
            .http
            .put(&url)
            .header("content-type", "application/gzip")
            .header("x-pack-sha256", format!("sha256-{digest}"))
            .header("x-pack-signing-method", "none")
            .body(tgz);
        self.send(req, &url).await
    }

    /// Starts a run of `workflow_id` with `inputs` (`POST /v1/runs`); the server's 201 body.
    pub async fn create_run(&self, workflow_id: &str, inputs: Value) -> Result<Value, ClientError> {
        let url = format!("{}/v1/runs", self.base);
        let body = serde_json::json!({"workflowId": workflow_id, "inputs": inputs});
        self.send(self.http.post(&url).json(&body), &url).await
    }

    /// Registers the workflow definition in `file`.
    pub async fn put_workflow(&self, file: &Path) -> Result<Value, ClientError> {
        let bytes = read(file)?;
        let def: Value = serde_json::from_slice(&bytes).map_err(|source| ClientError::Json {
            path: file.to_path_buf(),
            source,
        })?;
        let url = format!("{}/v1/workflows", self.base);
        self.send(self.http.post(&url).json(&def), &url).await
    }
}
