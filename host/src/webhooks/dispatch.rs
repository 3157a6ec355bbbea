//! One delivery attempt, and the retry schedule.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE, USER_AGENT};

use super::config::WebhookArgs;
use super::signing;
use super::ssrf::{check_url, EgressPolicy, GuardedResolver, Rejection};
use crate::store::webhooks::{AttemptOutcome, Delivery, Subscription};
use crate::telemetry::TraceContext;

pub const USER_AGENT_VALUE: &str =
    concat!("openwop-webhook-dispatcher/", env!("CARGO_PKG_VERSION"));

/// The delivery client: validated-address resolver, no proxy (a proxy would resolve names
/// itself, bypassing the guard), no redirects, per-attempt timeout.
pub fn client(settings: &WebhookArgs, policy: EgressPolicy) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .dns_resolver(Arc::new(GuardedResolver { policy }))
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_millis(settings.timeout_ms))
        .connect_timeout(Duration::from_millis(settings.timeout_ms))
        .pool_idle_timeout(Duration::from_secs(30))
        .build()
}

/// Delay before attempt `attempts + 1`: base · 2^(attempts-1), capped, ±20 % jitter so a
/// receiver coming back is not hit by every queued delivery at the same instant.
pub fn backoff(settings: &WebhookArgs, attempts: u32) -> Duration {
    let exp = attempts.saturating_sub(1).min(30);
    let raw = settings
        .retry_base_ms
        .saturating_mul(1u64 << exp)
        .min(settings.retry_max_ms);
    let jitter = rand::thread_rng().gen_range(0.8..=1.2);
    Duration::from_millis(((raw as f64) * jitter).round().max(1.0) as u64)
}

fn headers(
    sub: &Subscription,
    d: &Delivery,
    timestamp: i64,
    signature: &str,
    trace: Option<&TraceContext>,
) -> HeaderMap {
    let mut h = HeaderMap::new();
    // W3C Trace Context: the receiver's spans nest under this delivery's span, in the run's
    // trace (observability.md: propagate into every external call, webhooks included).
    if let Some(t) = trace {
        if let Ok(v) = HeaderValue::from_str(&t.traceparent()) {
            h.insert("traceparent", v);
        }
        if let Some(Ok(v)) = t.tracestate.as_deref().map(HeaderValue::from_str) {
            h.insert("tracestate", v);
        }
    }
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(USER_AGENT, HeaderValue::from_static(USER_AGENT_VALUE));
    let values = [
        sub.webhook_id.as_str(),
        d.event_type.as_str(),
        &timestamp.to_string(),
        signature,
        signing::ALGORITHM,
    ];
    for family in signing::HEADER_FAMILIES {
        for (name, value) in family.iter().zip(values.iter()) {
            if let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(value),
            ) {
                h.insert(n, v);
            }
        }
    }
    h
}

/// What one attempt produced, before it is turned into a retry or a dead letter.
pub enum Attempt {
    Delivered(u16),
    Failed {
        http_status: Option<u16>,
        error: String,
        retryable: bool,
    },
}

/// One POST of `d` to `sub`; `trace` (the delivery span's position) becomes its
/// `traceparent`.
pub async fn attempt(
    client: &reqwest::Client,
    policy: EgressPolicy,
    sub: &Subscription,
    d: &Delivery,
    trace: Option<&TraceContext>,
) -> Attempt {
    // Re-validate the stored URL under the current policy (the operator may have dropped the
    // loopback flag since registration).
    let url = match check_url(&sub.url, policy) {
        Ok(u) => u,
        Err(Rejection::Denied { reason }) => {
            return Attempt::Failed {
                http_status: None,
                error: format!("egress denied: {reason}"),
                retryable: false,
            }
        }
        Err(e) => {
            return Attempt::Failed {
                http_status: None,
                error: e.to_string(),
                retryable: false,
            }
        }
    };
    let timestamp = chrono::Utc::now().timestamp();
    let signature = signing::sign(&sub.secret, timestamp, d.body.as_bytes());
    let result = client
        .post(url)
        .headers(headers(sub, d, timestamp, &signature, trace))
        .body(d.body.clone())
        .send()
        .await;
    match result {
        Ok(resp) if resp.status().is_success() => Attempt::Delivered(resp.status().as_u16()),
        // 3xx included: redirects are never followed, so they are failures.
        Ok(resp) => Attempt::Failed {
            http_status: Some(resp.status().as_u16()),
            error: format!("receiver answered {}", resp.status()),
            retryable: true,
        },
        Err(e) => {
            let kind = if e.is_timeout() {
                "timeout"
            } else if e.is_connect() {
                "connect failed"
            } else {
                "request failed"
            };
            // Without the URL: it may carry receiver-side tokens in its query.
            let detail = std::error::Error::source(&e)
                .map(|s| s.to_string())
                .unwrap_or_default();
            Attempt::Failed {
                http_status: None,
                error: format!("{kind}: {detail}")
                    .trim_end_matches(": ")
                    .to_string(),
                retryable: true,
            }
        }
    }
}

/// Turn an attempt into the outbox update.
pub fn outcome(settings: &WebhookArgs, attempts: u32, a: Attempt, now_ms: i64) -> AttemptOutcome {
    match a {
        Attempt::Delivered(s) => AttemptOutcome::Delivered { http_status: s },
        Attempt::Failed {
            http_status,
            error,
            retryable,
        } => {
            if !retryable || attempts >= settings.max_attempts {
                AttemptOutcome::Dead { http_status, error }
            } else {
                let delay = backoff(settings, attempts).as_millis() as i64;
                AttemptOutcome::Retry {
                    http_status,
                    error,
                    next_attempt_ms: now_ms + delay,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_caps() {
        let s = WebhookArgs {
            retry_base_ms: 1000,
            retry_max_ms: 10_000,
            ..Default::default()
        };
        for (attempts, nominal) in [
            (1u32, 1000u64),
            (2, 2000),
            (3, 4000),
            (4, 8000),
            (5, 10_000),
            (40, 10_000),
        ] {
            let d = backoff(&s, attempts).as_millis() as u64;
            assert!(
                d >= nominal * 8 / 10 && d <= nominal * 12 / 10,
                "attempt {attempts}: {d}ms vs {nominal}ms"
            );
        }
    }

    #[test]
    fn exhausted_or_permanent_failures_dead_letter() {
        let s = WebhookArgs {
            max_attempts: 3,
            ..Default::default()
        };
        let fail = |retryable| Attempt::Failed {
            http_status: Some(500),
            error: "x".into(),
            retryable,
        };
        assert!(
            matches!(outcome(&s, 1, fail(true), 0), AttemptOutcome::Retry { next_attempt_ms, .. } if next_attempt_ms > 0)
        );
        assert!(matches!(
            outcome(&s, 3, fail(true), 0),
            AttemptOutcome::Dead { .. }
        ));
        assert!(matches!(
            outcome(&s, 1, fail(false), 0),
            AttemptOutcome::Dead { .. }
        ));
        assert!(matches!(
            outcome(&s, 1, Attempt::Delivered(204), 0),
            AttemptOutcome::Delivered { http_status: 204 }
        ));
    }
}
