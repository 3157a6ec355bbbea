//! Records the security-relevant calls visible at the HTTP edge: "who called what, when".
//! Interrupt resolutions are recorded by `Interrupts::resolve` itself, which knows the
//! interrupt, the decision and the resolving principal.
//!
//! Wraps the whole router (outside authentication) so rejected credentials are recorded too.
//! The entry is written after the handler ran and before the response leaves, so a client never
//! sees the outcome of an audited action that the log does not hold.

use std::sync::Arc;

use axum::extract::Request;
use axum::http::{header, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::Router;
use serde_json::json;

use super::AuditLog;
use crate::api::auth::KeyRing;

#[derive(Clone)]
struct Ctx {
    audit: Arc<AuditLog>,
    keys: Arc<KeyRing>,
}

pub fn layer(router: Router, audit: Arc<AuditLog>, keys: Arc<KeyRing>) -> Router {
    router.layer(middleware::from_fn_with_state(Ctx { audit, keys }, record))
}

/// What a request means for the audit log, decided from method + path before it runs.
enum Kind {
    RunCreate,
    RunCancel {
        run_id: String,
    },
    /// `PUT /v1/packs/{name}/-/{version}.tgz`: third-party code entering the host.
    PackPublish {
        pack: String,
    },
    /// `DELETE /v1/packs/{name}/-/{version}`.
    PackDelete {
        pack: String,
    },
    Other,
}

fn classify(method: &Method, path: &str) -> Kind {
    let segs: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    if let ["", "v1", "packs", name, "-", file] = segs.as_slice() {
        return match *method {
            Method::PUT => match file.strip_suffix(".tgz") {
                Some(version) => Kind::PackPublish {
                    pack: format!("{name}@{version}"),
                },
                None => Kind::Other,
            },
            Method::DELETE => Kind::PackDelete {
                pack: format!("{name}@{file}"),
            },
            _ => Kind::Other,
        };
    }
    if method != Method::POST {
        return Kind::Other;
    }
    match segs.as_slice() {
        ["", "v1", "runs"] => Kind::RunCreate,
        ["", "v1", "runs", id, "cancel"] => Kind::RunCancel {
            run_id: (*id).to_string(),
        },
        _ => Kind::Other,
    }
}

async fn record(
    axum::extract::State(ctx): axum::extract::State<Ctx>,
    req: Request,
    next: Next,
) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let kind = classify(&method, &path);
    let actor = ctx
        .keys
        .authenticate(req.headers())
        .map(|p| p.id)
        .ok()
        .unwrap_or_else(|| "anonymous".to_string());
    let resp = next.run(req).await;
    let status = resp.status();

    if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
        let action = if status == StatusCode::UNAUTHORIZED {
            "auth.failure"
        } else {
            "auth.forbidden"
        };
        ctx.audit
            .record_or_log(
                &actor,
                action,
                &path,
                json!({"method": method.as_str(), "status": status.as_u16()}),
            )
            .await;
        return resp;
    }
    if !status.is_success() {
        return resp;
    }
    let replay = resp.headers().contains_key("openwop-idempotent-replay");
    match kind {
        Kind::RunCreate if !replay => {
            let run_id = resp
                .headers()
                .get(header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|l| l.rsplit('/').next())
                .unwrap_or("")
                .to_string();
            ctx.audit
                .record_or_log(
                    &actor,
                    "run.create",
                    &run_id,
                    json!({"status": status.as_u16()}),
                )
                .await;
        }
        Kind::RunCancel { run_id } if !replay => {
            ctx.audit
                .record_or_log(
                    &actor,
                    "run.cancel",
                    &run_id,
                    json!({"status": status.as_u16()}),
                )
                .await;
        }
        Kind::PackPublish { pack } => {
            ctx.audit
                .record_or_log(
                    &actor,
                    "pack.publish",
                    &pack,
                    json!({"status": status.as_u16()}),
                )
                .await;
        }
        Kind::PackDelete { pack } => {
            ctx.audit
                .record_or_log(
                    &actor,
                    "pack.delete",
                    &pack,
                    json!({"status": status.as_u16()}),
                )
                .await;
        }
        _ => {}
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_audited_routes() {
        assert!(matches!(
            classify(&Method::POST, "/v1/runs"),
            Kind::RunCreate
        ));
        assert!(matches!(classify(&Method::GET, "/v1/runs"), Kind::Other));
        assert!(
            matches!(classify(&Method::POST, "/v1/runs/r1/cancel"), Kind::RunCancel { run_id } if run_id == "r1")
        );
        assert!(
            matches!(classify(&Method::PUT, "/v1/packs/vendor.a.b/-/1.0.0.tgz"), Kind::PackPublish { pack } if pack == "vendor.a.b@1.0.0")
        );
        assert!(
            matches!(classify(&Method::DELETE, "/v1/packs/vendor.a.b/-/1.0.0"), Kind::PackDelete { pack } if pack == "vendor.a.b@1.0.0")
        );
        assert!(matches!(
            classify(&Method::GET, "/v1/packs/vendor.a.b/-/1.0.0.tgz"),
            Kind::Other
        ));
        assert!(matches!(
            classify(&Method::PUT, "/v1/packs/vendor.a.b/-/1.0.0.json"),
            Kind::Other
        ));
        // Recorded by the resolve path, not here (it knows the decision and the interrupt).
        assert!(matches!(
            classify(&Method::POST, "/v1/runs/r1/interrupts/gate"),
            Kind::Other
        ));
    }
}
