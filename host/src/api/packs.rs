//! Pack registry routes (node-packs.md §"Registry HTTP API"), scoped to the
//! caller's tenant:
//!
//! * `PUT  /v1/packs/{name}/-/{version}.tgz` — publish (body: gzipped tar
//!   with `pack.json` + the `runtime.entry` artifact; optional
//!   `X-Pack-Sha256: sha256-<base64>` is verified). 201 with the installed
//!   pack; 409 if that version exists.
//! * `GET  /v1/packs` — packs visible to the caller (host extension).
//! * `GET  /v1/packs/{name}` — versions and `dist-tags.latest`.
//! * `GET  /v1/packs/{name}/-/{version}.json` — the manifest.
//! * `GET  /v1/packs/{name}/-/{version}.tgz` — the tarball as uploaded.
//! * `DELETE /v1/packs/{name}/-/{version}` — uninstall.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Request};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use serde_json::{json, Value};

use super::auth::Auth;
use super::body::{read_bounded, BodyError};
use super::error::ApiError;
use super::AppState;
use crate::packs::{PackError, PackService};

/// Largest pack tarball accepted (bytes).
pub const DEFAULT_MAX_PACK_BYTES: usize = 16 * 1024 * 1024;

#[derive(Clone, Copy)]
pub struct PackUploadLimit(pub usize);

impl From<PackError> for ApiError {
    fn from(e: PackError) -> Self {
        let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST);
        if status.is_server_error() {
            return ApiError::internal(e);
        }
        let err = ApiError::new(status, e.code(), e.to_string());
        match e.details() {
            Some(d) => err.details(d),
            None => err,
        }
    }
}

pub fn router(service: Arc<PackService>, max_pack_bytes: usize) -> Router<AppState> {
    Router::new()
        .route("/v1/packs", get(list))
        .route("/v1/packs/{name}", get(versions))
        .route(
            "/v1/packs/{name}/-/{file}",
            get(fetch).put(publish).delete(remove),
        )
        .layer(Extension(service))
        .layer(Extension(PackUploadLimit(max_pack_bytes)))
}

fn split_file<'a>(file: &'a str, ext: &str) -> Option<&'a str> {
    file.strip_suffix(ext).filter(|v| !v.is_empty())
}

async fn publish(
    Auth(principal): Auth,
    Extension(service): Extension<Arc<PackService>>,
    Extension(PackUploadLimit(limit)): Extension<PackUploadLimit>,
    Path((name, file)): Path<(String, String)>,
    req: Request,
) -> Result<Response, ApiError> {
    let Some(version) = split_file(&file, ".tgz") else {
        return Err(ApiError::not_found(
            "publish with PUT /v1/packs/{name}/-/{version}.tgz",
        ));
    };
    let headers: HeaderMap = req.headers().clone();
    let ctype = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|c| {
            c.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        });
    let accepted = [
        "application/gzip",
        "application/x-gzip",
        "application/tar+gzip",
        "application/octet-stream",
    ];
    if !ctype.as_deref().is_some_and(|c| accepted.contains(&c)) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "a pack upload is a gzipped tarball (Content-Type: application/gzip)",
        ));
    }
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("pack tarballs are limited to {limit} bytes"),
        )
        .details(json!({"maxPackBytes": limit}))
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let body = match read_bounded(req.into_body(), declared, limit).await {
        Ok(b) => b,
        Err(BodyError::TooLarge) => return Err(too_large()),
        Err(BodyError::Broken) => return Err(ApiError::validation("the upload could not be read")),
    };
    let asserted = headers.get("x-pack-sha256").and_then(|v| v.to_str().ok());
    let pack = service
        .publish(
            &principal.tenant,
            &principal.id,
            &name,
            version,
            asserted,
            &body,
        )
        .await?;
    Ok((StatusCode::CREATED, Json(pack.summary())).into_response())
}

async fn list(
    Auth(principal): Auth,
    Extension(service): Extension<Arc<PackService>>,
) -> Json<Value> {
    let packs: Vec<Value> = service
        .list(&principal.tenant)
        .iter()
        .map(|p| p.summary())
        .collect();
    Json(json!({ "packs": packs }))
}

async fn versions(
    Auth(principal): Auth,
    Extension(service): Extension<Arc<PackService>>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let all: Vec<_> = service
        .list(&principal.tenant)
        .into_iter()
        .filter(|p| p.record.name == name)
        .collect();
    let Some(latest) = all.last() else {
        return Err(ApiError::not_found(format!("pack {name} is not installed")));
    };
    let mut versions = serde_json::Map::new();
    for p in &all {
        versions.insert(p.record.version.clone(), p.summary());
    }
    Ok(Json(json!({
        "name": name,
        "versions": versions,
        "dist-tags": { "latest": latest.record.version },
    })))
}

async fn fetch(
    Auth(principal): Auth,
    Extension(service): Extension<Arc<PackService>>,
    Path((name, file)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let (version, tarball) = match (split_file(&file, ".json"), split_file(&file, ".tgz")) {
        (Some(v), _) => (v, false),
        (_, Some(v)) => (v, true),
        _ => {
            return Err(ApiError::not_found(format!(
                "no route for {file}: use {{version}}.json or {{version}}.tgz"
            )))
        }
    };
    let pack = service
        .get(&principal.tenant, &name, version)
        .ok_or_else(|| ApiError::not_found(format!("pack {name}@{version} is not installed")))?;
    if !tarball {
        return Ok(Json(pack.record.manifest.clone()).into_response());
    }
    let bytes = service.tarball(&pack).await?.ok_or_else(|| {
        ApiError::not_found(format!(
            "{name}@{version} was installed from a directory; it has no tarball"
        ))
    })?;
    let etag = format!(
        "\"sha256-{}\"",
        pack.record.tarball_sha256.as_deref().unwrap_or("")
    );
    let mut resp = Response::new(Body::from(bytes));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/tar+gzip"),
    );
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    Ok(resp)
}

async fn remove(
    Auth(principal): Auth,
    Extension(service): Extension<Arc<PackService>>,
    Path((name, version)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    service.delete(&principal.tenant, &name, &version).await?;
    Ok(StatusCode::NO_CONTENT)
}
