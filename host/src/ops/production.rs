//! `capabilities.production` (RFC 0009, spec/v1/production-profile.md): the production
//! profile's advertisement block.
//!
//! The block states what the conformance suite can test; `supported` is the profile claim
//! itself. wopbox does **not** claim the profile: its compatibility baseline requires a
//! published pass of the official conformance suite (version and command), and that suite
//! has not been run against wopbox (docs/operations.md "Production profile" has the whole
//! checklist). Only the sub-blocks whose behaviour is implemented and tested on both
//! backends are advertised: backpressure here, retention by [`crate::retention`].

use serde_json::{json, Value};

use super::admission::Limits;

/// `production.supported` and `production.backpressure`.
pub fn discovery_block(limits: &Limits) -> Value {
    json!({
        "supported": false,
        "backpressure": backpressure(limits),
    })
}

/// The in-flight cap a single client can saturate: its tenant's share, or the host's limit
/// when that is lower. The `inflightCap + 1`-th run of one tenant on an otherwise idle host
/// gets `503`, with `Retry-After` = `details.retryAfter` = `retryAfterSeconds`.
fn backpressure(limits: &Limits) -> Value {
    json!({
        "supported": true,
        "inflightCap": limits
            .max_runs_in_flight
            .min(limits.tenant_max_runs_in_flight)
            .max(1),
        "retryAfterSeconds": limits.retry_after_secs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_is_the_lower_of_the_tenant_share_and_the_host_limit() {
        let limits = Limits {
            max_runs_in_flight: 3,
            tenant_max_runs_in_flight: 10,
            retry_after_secs: 4,
            ..Limits::default()
        };
        let b = discovery_block(&limits);
        assert_eq!(b["supported"], false);
        assert_eq!(b["backpressure"]["inflightCap"], 3);
        assert_eq!(b["backpressure"]["retryAfterSeconds"], 4);
        let b = discovery_block(&Limits::default());
        assert_eq!(b["backpressure"]["inflightCap"], 5_000);
    }
}
