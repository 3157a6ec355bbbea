//! The scope vocabulary (auth.md §"Scopes") and scope matching.
//!
//! A key holds a set of scopes; a request needs one or more. Besides the exact names, a key may
//! hold `*` (everything: the legacy `--api-key` keys) or `<resource>:*` (every verb on one
//! resource, the per-segment wildcard RFC 0049 mentions). No other implication exists:
//! `runs:cancel` does not imply `runs:read` (auth.md: "enforce scope checks at the endpoint
//! level").

/// Scopes the spec names (auth.md). Hosts MUST support these and MUST NOT shadow them.
pub const SPEC_SCOPES: [&str; 13] = [
    "manifest:read",
    "runs:create",
    "runs:read",
    "runs:cancel",
    "artifacts:read",
    "webhooks:manage",
    "approvals:respond",
    "packs:publish",
    "packs:yank",
    "packs:yank-revert",
    "audit:read",
    "workspace:read",
    "workspace:write",
];

/// wopbox's own scopes for its host-extension routes (auth.md allows additional scopes that
/// do not shadow the spec's names).
pub const HOST_SCOPES: [&str; 6] = [
    // POST/PUT /v1/workflows: registering definitions.
    "workflows:write",
    // GET /v1/packs...: listing and downloading installed packs.
    "packs:read",
    // DELETE /v1/packs/{name}/-/{version}: uninstalling (a hard delete, unlike a yank).
    "packs:delete",
    // POST /v1/x-wopbox/execute: running one pack node for a remote orchestrator.
    "packs:execute",
    // GET /metrics: host-wide Prometheus figures, all tenants (docs/operations.md).
    "metrics:read",
    // Quorum approvals: cast a vote for the voter named in `resumeValue.voter`.
    "approvals:on-behalf",
];

/// Every scope a key may hold (for `--help` texts and error messages).
pub fn known_scopes() -> impl Iterator<Item = &'static str> {
    SPEC_SCOPES.iter().chain(HOST_SCOPES.iter()).copied()
}

/// Why a scope string is not acceptable on a key.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown scope '{0}' (known: *, <resource>:*, or one of: {list})", list = known_scopes().collect::<Vec<_>>().join(", "))]
pub struct UnknownScope(pub String);

/// Accepts exactly the known names, `*`, and `<resource>:*` for a resource that has at least one
/// known scope (so a typo such as `run:*` is refused rather than silently granting nothing).
pub fn validate(scope: &str) -> Result<(), UnknownScope> {
    if scope == "*" || known_scopes().any(|s| s == scope) {
        return Ok(());
    }
    if let Some(resource) = scope.strip_suffix(":*") {
        if known_scopes().any(|s| s.split(':').next() == Some(resource)) {
            return Ok(());
        }
    }
    Err(UnknownScope(scope.to_string()))
}

/// Does holding `held` allow an operation that requires `required`?
pub fn grants(held: &str, required: &str) -> bool {
    if held == "*" || held == required {
        return true;
    }
    match (held.strip_suffix(":*"), required.split_once(':')) {
        (Some(resource), Some((req_resource, _))) => resource == req_resource,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_and_exact_names() {
        assert!(grants("*", "runs:read"));
        assert!(grants("runs:*", "runs:cancel"));
        assert!(grants("runs:read", "runs:read"));
        assert!(!grants("runs:cancel", "runs:read"), "no verb implication");
        assert!(!grants("runs:*", "approvals:respond"));
        assert!(!grants("packs:*", "packsx:read"));
        assert!(
            !grants("runs:read", "*"),
            "only * grants the full-scope routes"
        );
    }

    #[test]
    fn validation_refuses_typos() {
        for ok in [
            "*",
            "runs:*",
            "approvals:respond",
            "packs:execute",
            "audit:read",
        ] {
            assert_eq!(validate(ok), Ok(()), "{ok}");
        }
        for bad in ["", "run:*", "runs:write", "RUNS:READ", "runs", ":*", "*:*"] {
            assert!(validate(bad).is_err(), "{bad}");
        }
    }
}
