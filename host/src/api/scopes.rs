//! Which scopes each route requires (rest-endpoints.md per-route table; wopbox's own scopes for
//! its host-extension routes). One table for the whole API so a route added anywhere is
//! covered: a matched route the table does not know needs the full scope `*` (fail closed), so
//! only the legacy full-scope keys reach it until it is given a scope here.

use axum::http::Method;

/// The full scope: only keys holding `*` pass.
const FULL: &[&str] = &["*"];

/// Scopes required for `method path` (path as requested, e.g. `/v1/runs/run-1/cancel`).
pub fn required(method: &Method, path: &str) -> &'static [&'static str] {
    let segs: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    let read = *method == Method::GET || *method == Method::HEAD;
    match segs.as_slice() {
        // The signed interrupt token is the credential on this surface (rest-endpoints.md).
        ["v1", "interrupts", ..] => &[],

        ["v1", "runs"] if *method == Method::POST => &["runs:create"],
        ["v1", "runs:bulk-cancel"] if *method == Method::POST => &["runs:cancel"],
        ["v1", "runs", _, "artifacts", ..] if read => &["artifacts:read"],
        ["v1", "runs", ..] if read => &["runs:read"],
        ["v1", "runs", _, "cancel"] if *method == Method::POST => &["runs:cancel"],
        ["v1", "runs", _, "interrupts", ..] if *method == Method::POST => &["approvals:respond"],
        ["v1", "runs", run] if *method == Method::POST => match run.rsplit_once(':') {
            Some((_, "fork")) => &["runs:create", "runs:read"],
            Some((_, "pause" | "resume")) => &["runs:cancel"],
            _ => FULL,
        },

        ["v1", "workflows", ..] if read => &["manifest:read"],
        ["v1", "workflows"] if *method == Method::POST => &["workflows:write"],
        ["v1", "workflows", _] if *method == Method::PUT || *method == Method::DELETE => {
            &["workflows:write"]
        }

        ["v1", "webhooks", ..] => &["webhooks:manage"],
        ["v1", "audit", ..] if read => &["audit:read"],

        ["v1", "packs", ..] if read => &["packs:read"],
        ["v1", "packs", _, "-", _] if *method == Method::PUT => &["packs:publish"],
        ["v1", "packs", _, "-", _] if *method == Method::DELETE => &["packs:delete"],
        ["v1", "x-wopbox", "execute"] if *method == Method::POST => &["packs:execute"],
        // Host-wide operational figures (every tenant's): an operator scope.
        ["metrics"] if read => &["metrics:read"],
        // Delivering an external event resolves an interrupt, like the run-scoped route.
        ["v1", "x-wopbox", "external-events"] if *method == Method::POST => &["approvals:respond"],

        _ => FULL,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_routes_map_to_spec_scopes() {
        let cases = [
            (Method::POST, "/v1/runs", &["runs:create"][..]),
            (Method::GET, "/v1/runs/run-1", &["runs:read"]),
            (Method::GET, "/v1/runs/run-1/events", &["runs:read"]),
            (Method::GET, "/v1/runs/run-1/events/poll", &["runs:read"]),
            (Method::POST, "/v1/runs/run-1/cancel", &["runs:cancel"]),
            (
                Method::POST,
                "/v1/runs/run-1/interrupts/gate",
                &["approvals:respond"],
            ),
            (
                Method::POST,
                "/v1/runs/run-1:fork",
                &["runs:create", "runs:read"],
            ),
            (Method::GET, "/v1/workflows/wf", &["manifest:read"]),
            (Method::POST, "/v1/webhooks", &["webhooks:manage"]),
            (Method::DELETE, "/v1/webhooks/wh-1", &["webhooks:manage"]),
            (Method::GET, "/v1/audit/verify", &["audit:read"]),
            (Method::PUT, "/v1/packs/p/-/1.0.0.tgz", &["packs:publish"]),
            (Method::GET, "/v1/runs/r/artifacts/a", &["artifacts:read"]),
            (Method::POST, "/v1/interrupts/tok", &[]),
            (
                Method::POST,
                "/v1/x-wopbox/external-events",
                &["approvals:respond"],
            ),
        ];
        for (m, p, want) in cases {
            assert_eq!(required(&m, p), want, "{m} {p}");
        }
    }

    #[test]
    fn unknown_routes_need_the_full_scope() {
        assert_eq!(
            required(&Method::POST, "/v1/host/sample/test/sandbox-invoke"),
            FULL
        );
        assert_eq!(required(&Method::DELETE, "/v1/runs/run-1"), FULL);
    }
}
