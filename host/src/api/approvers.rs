//! Approver eligibility (interrupt.md §"Host-side enforcement boundary" and §"Portable approver
//! routing (RFC 0104)"): an approval interrupt's `approversList` (principal ids: wopbox key
//! ids), `approverRoleRefs` and `approverGroupRefs` (matched against the `roles`/`groups` of the
//! key's config entry) name who may resolve it. The engine treats them as advisory; the host
//! enforces them here, before the resume reaches the engine. No field (or only empty ones) ⇒
//! anyone holding `approvals:respond` on the run's tenant may resolve.

use axum::http::StatusCode;
use serde_json::{json, Value};

use super::auth::Principal;
use super::error::ApiError;
use crate::interrupts::voting::Voter;

/// interrupt-profiles.md: resuming needs a bearer with `approvals:respond`; the signed callback
/// token is not enough. A gate opts in with `config.profile`.
pub const AUTH_REQUIRED_PROFILE: &str = "openwop-interrupt-auth-required";

/// Lets a key cast a quorum vote for a named voter (`resumeValue.voter`): interrupt.md allows
/// "admin acting-as" submissions per host policy; wopbox's policy is this scope (held through
/// `*` or `approvals:*`, or granted explicitly).
pub const ON_BEHALF_SCOPE: &str = "approvals:on-behalf";

/// Longest accepted `resumeValue.voter`.
const MAX_VOTER_LEN: usize = 256;

/// Who a quorum vote by `p` counts for: `p` itself, or the `resumeValue.voter` it names when
/// `p` holds [`ON_BEHALF_SCOPE`]. The voter must be eligible (a named voter only through
/// `approversList`: its roles and groups are unknown to the host).
pub fn voter(data: &Value, p: &Principal, body: &Value) -> Result<Voter, ApiError> {
    let resume = crate::interrupts::resume::resume_value(body);
    let claimed = match resume.get("voter") {
        None | Some(Value::Null) => None,
        Some(Value::String(v)) if !v.is_empty() && v.len() <= MAX_VOTER_LEN => Some(v.as_str()),
        Some(_) => {
            return Err(ApiError::validation(format!(
                "resumeValue.voter must be a non-empty string of at most {MAX_VOTER_LEN} bytes"
            ))
            .details(json!({"path": "/voter"})))
        }
    };
    let e = Eligibility::from_data(data);
    let refuse = || not_eligible(&e, "this voter");
    let (id, by) = match claimed {
        Some(v) if v != p.id => {
            if !p.allows(ON_BEHALF_SCOPE) {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    format!("voting on behalf of another voter needs the {ON_BEHALF_SCOPE} scope"),
                )
                .details(
                    json!({"reason": "on_behalf_not_allowed", "scopeRequired": ON_BEHALF_SCOPE}),
                ));
            }
            let by = if !e.is_restricted() {
                EligibleBy::Unrestricted
            } else if e.principals.iter().any(|x| x == v) {
                EligibleBy::Principal(v.to_string())
            } else {
                return Err(refuse());
            };
            (v.to_string(), by)
        }
        _ => (p.id.clone(), e.admits(p).ok_or_else(refuse)?),
    };
    let mut eligible_by = by.to_json();
    if id != p.id {
        eligible_by["onBehalfVia"] = json!(ON_BEHALF_SCOPE);
    }
    Ok(Voter {
        id,
        submitted_by: p.id.clone(),
        eligible_by,
    })
}

/// Discovery `interrupt.approverRouting` (capabilities.md, RFC 0104): both ref kinds are
/// resolved against the key's config entry; notifications are not routed, so no `audience`.
pub fn discovery_block() -> Value {
    json!({"approverRouting": {"supported": true, "refKinds": ["group", "role"], "audience": false}})
}

/// `403 forbidden` for `who` outside the interrupt's approvers; the run keeps waiting.
fn not_eligible(e: &Eligibility, who: &str) -> ApiError {
    let mut d = e.to_json();
    d["reason"] = json!("not_an_eligible_approver");
    ApiError::new(
        StatusCode::FORBIDDEN,
        "forbidden",
        format!("{who} is not an eligible approver for this interrupt; the run keeps waiting"),
    )
    .details(d)
}

/// Who may resolve an approval interrupt with `data` through the bearer route.
pub fn check_bearer(data: &Value, p: &Principal) -> Result<EligibleBy, ApiError> {
    let e = Eligibility::from_data(data);
    e.admits(p).ok_or_else(|| not_eligible(&e, "this key"))
}

/// Whether a signed token (which carries no identity) may resolve an interrupt with `data`:
/// not when its gate elevates auth, nor when its approvers are restricted (eligibility could not
/// be checked).
pub fn check_token(data: &Value) -> Result<(), ApiError> {
    let refuse = |code: &str, message: &str| {
        Err(ApiError::new(StatusCode::FORBIDDEN, code, message.to_string())
            .details(json!({"profile": data.get("profile"), "resolveWith": "POST /v1/runs/{runId}/interrupts/{nodeId}"})))
    };
    if data.get("profile").and_then(Value::as_str) == Some(AUTH_REQUIRED_PROFILE) {
        return refuse(
            "auth_elevation_required",
            "this interrupt requires a bearer key with approvals:respond; the signed token cannot resolve it",
        );
    }
    if crate::interrupts::quorum::QuorumRule::from_data(data).is_some() {
        return refuse(
            "forbidden",
            "this interrupt needs a quorum of distinct approvers; the signed token carries no identity to count, so vote with an approver's bearer key",
        );
    }
    if Eligibility::from_data(data).is_restricted() {
        return refuse(
            "forbidden",
            "this interrupt names its approvers; resolve it with an eligible approver's bearer key",
        );
    }
    Ok(())
}

/// The eligibility constraint an interrupt's data declares.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Eligibility {
    pub principals: Vec<String>,
    pub roles: Vec<String>,
    pub groups: Vec<String>,
}

/// What made a principal eligible, recorded with the decision (membership is resolved once, at
/// decision time, so replays never re-resolve it).
#[derive(Debug, PartialEq, Eq)]
pub enum EligibleBy {
    /// The interrupt names no approvers.
    Unrestricted,
    Principal(String),
    Role(String),
    Group(String),
}

impl EligibleBy {
    pub fn to_json(&self) -> Value {
        match self {
            EligibleBy::Unrestricted => json!({"by": "unrestricted"}),
            EligibleBy::Principal(p) => json!({"by": "approversList", "ref": p}),
            EligibleBy::Role(r) => json!({"by": "approverRoleRefs", "ref": r}),
            EligibleBy::Group(g) => json!({"by": "approverGroupRefs", "ref": g}),
        }
    }
}

fn strings(data: &Value, field: &str) -> Vec<String> {
    data.get(field)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

impl Eligibility {
    pub fn from_data(data: &Value) -> Self {
        Eligibility {
            principals: strings(data, "approversList"),
            roles: strings(data, "approverRoleRefs"),
            groups: strings(data, "approverGroupRefs"),
        }
    }

    pub fn is_restricted(&self) -> bool {
        !(self.principals.is_empty() && self.roles.is_empty() && self.groups.is_empty())
    }

    /// Why `p` may resolve, or `None` when it may not.
    pub fn admits(&self, p: &Principal) -> Option<EligibleBy> {
        if !self.is_restricted() {
            return Some(EligibleBy::Unrestricted);
        }
        if let Some(id) = self.principals.iter().find(|id| **id == p.id) {
            return Some(EligibleBy::Principal(id.clone()));
        }
        if let Some(r) = self.roles.iter().find(|r| p.roles.contains(r)) {
            return Some(EligibleBy::Role(r.clone()));
        }
        self.groups
            .iter()
            .find(|g| p.groups.contains(g))
            .map(|g| EligibleBy::Group(g.clone()))
    }

    /// The declared constraint, for a refusal's `details`.
    pub fn to_json(&self) -> Value {
        json!({
            "approversList": self.principals,
            "approverRoleRefs": self.roles,
            "approverGroupRefs": self.groups,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn principal(id: &str, roles: &[&str], groups: &[&str]) -> Principal {
        let owned = |xs: &[&str]| -> Arc<[String]> { xs.iter().map(|s| s.to_string()).collect() };
        Principal {
            id: id.into(),
            tenant: "t".into(),
            scopes: owned(&["approvals:respond"]),
            roles: owned(roles),
            groups: owned(groups),
        }
    }

    #[test]
    fn unrestricted_without_refs() {
        let e = Eligibility::from_data(&json!({"approversList": [], "title": "x"}));
        assert_eq!(
            e.admits(&principal("k", &[], &[])),
            Some(EligibleBy::Unrestricted)
        );
    }

    #[test]
    fn each_ref_kind_admits_its_members_only() {
        let e = Eligibility::from_data(&json!({
            "approversList": ["key-a"], "approverRoleRefs": ["controller"],
            "approverGroupRefs": ["finance"],
        }));
        assert_eq!(
            e.admits(&principal("key-a", &[], &[])),
            Some(EligibleBy::Principal("key-a".into()))
        );
        assert_eq!(
            e.admits(&principal("key-b", &["controller"], &[])),
            Some(EligibleBy::Role("controller".into()))
        );
        assert_eq!(
            e.admits(&principal("key-c", &["viewer"], &["finance"])),
            Some(EligibleBy::Group("finance".into()))
        );
        assert_eq!(e.admits(&principal("key-d", &["viewer"], &["sales"])), None);
    }
}
