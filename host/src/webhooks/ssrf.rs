//! Egress guard for webhook URLs (spec/v1/webhooks.md §Security, RFC 0093).
//!
//! Registration rejects non-https URLs and hosts that are, or resolve to, loopback, private,
//! link-local, unique-local, metadata or otherwise non-public addresses. Delivery repeats the
//! check through [`GuardedResolver`], which resolves once, validates *every* address and hands
//! exactly those addresses to the connector — so a DNS answer cannot change between check and
//! connect (no rebinding window). Redirects are never followed (see `dispatch.rs`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::Url;

#[derive(Debug, Clone, Copy, Default)]
pub struct EgressPolicy {
    /// Operator flag for local testing: loopback hosts (and plain http to them) are allowed.
    pub allow_loopback: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("url is not a valid absolute URL: {0}")]
    InvalidUrl(String),
    /// A URL that parses but is refused; `reason` is a stable machine code.
    #[error("webhook url rejected: {reason}")]
    Denied { reason: &'static str },
}

impl Rejection {
    fn denied(reason: &'static str) -> Self {
        Rejection::Denied { reason }
    }
}

/// Why an address is not a public unicast destination, or `None` when it is.
pub fn classify_ip(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    Some(match (a, b, c) {
        (127, _, _) => "loopback",
        (0, _, _) => "unspecified",
        (10, _, _) | (192, 168, _) => "private",
        (172, b, _) if (16..=31).contains(&b) => "private",
        (169, 254, _) => "link_local",
        (100, b, _) if (64..=127).contains(&b) => "shared_address_space",
        (192, 0, 0) => "reserved",
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => "documentation",
        (198, b, _) if b == 18 || b == 19 => "reserved",
        (a, _, _) if (224..=239).contains(&a) => "multicast",
        (a, _, _) if a >= 240 => "reserved",
        _ => return None,
    })
}

fn classify_v6(ip: Ipv6Addr) -> Option<&'static str> {
    if ip.is_loopback() {
        return Some("loopback");
    }
    if ip.is_unspecified() {
        return Some("unspecified");
    }
    // Addresses that embed an IPv4 address are judged by it (mapped, NAT64, 6to4).
    if let Some(v4) = ip.to_ipv4_mapped() {
        return classify_v4(v4);
    }
    let s = ip.segments();
    if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
        return classify_v4(Ipv4Addr::new(
            (s[6] >> 8) as u8,
            s[6] as u8,
            (s[7] >> 8) as u8,
            s[7] as u8,
        ));
    }
    if s[0] == 0x2002 {
        return classify_v4(Ipv4Addr::new(
            (s[1] >> 8) as u8,
            s[1] as u8,
            (s[2] >> 8) as u8,
            s[2] as u8,
        ));
    }
    Some(match s[0] {
        x if x & 0xffc0 == 0xfe80 => "link_local",
        x if x & 0xffc0 == 0xfec0 => "site_local",
        x if x & 0xfe00 == 0xfc00 => "unique_local",
        x if x & 0xff00 == 0xff00 => "multicast",
        0x2001 if s[1] == 0x0db8 => "documentation",
        // IPv4-compatible (::a.b.c.d, deprecated) and the rest of ::/8.
        0 => "reserved",
        _ => return None,
    })
}

/// Whether `ip` may be contacted under `policy`.
pub fn check_ip(ip: IpAddr, policy: EgressPolicy) -> Result<(), &'static str> {
    match classify_ip(ip) {
        None => Ok(()),
        Some("loopback") if policy.allow_loopback => Ok(()),
        Some(reason) => Err(reason),
    }
}

fn is_loopback_name(host: &str) -> bool {
    host == "localhost" || host.ends_with(".localhost")
}

/// Static checks on a webhook URL: syntax, scheme, credentials, host names and IP literals.
/// Host *names* are judged again by their resolved addresses ([`check_resolved`],
/// [`GuardedResolver`]).
pub fn check_url(raw: &str, policy: EgressPolicy) -> Result<Url, Rejection> {
    let url = Url::parse(raw.trim()).map_err(|e| Rejection::InvalidUrl(e.to_string()))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(Rejection::denied("credentials_in_url"));
    }
    let loopback_host = match url.host() {
        None => return Err(Rejection::InvalidUrl("url has no host".into())),
        Some(url::Host::Domain(d)) => {
            let d = d.trim_end_matches('.').to_ascii_lowercase();
            if d == "metadata" || d == "metadata.google.internal" {
                return Err(Rejection::denied("metadata_host"));
            }
            if is_loopback_name(&d) {
                if !policy.allow_loopback {
                    return Err(Rejection::denied("loopback"));
                }
                true
            } else {
                false
            }
        }
        Some(url::Host::Ipv4(v4)) => {
            if v4 == Ipv4Addr::new(169, 254, 169, 254) {
                return Err(Rejection::denied("metadata_host"));
            }
            check_ip(IpAddr::V4(v4), policy).map_err(Rejection::denied)?;
            v4.is_loopback()
        }
        Some(url::Host::Ipv6(v6)) => {
            check_ip(IpAddr::V6(v6), policy).map_err(Rejection::denied)?;
            classify_v6(v6) == Some("loopback")
        }
    };
    match url.scheme() {
        "https" => {}
        // Plain http only to loopback, and only when the operator allowed loopback.
        "http" if loopback_host && policy.allow_loopback => {}
        "http" => return Err(Rejection::denied("scheme_not_https")),
        _ => return Err(Rejection::denied("unsupported_scheme")),
    }
    Ok(url)
}

/// Registration-time resolution of a host name, bounded by `timeout`. A name that resolves to
/// any denied address is rejected; a name that does not resolve (yet) is accepted — delivery
/// re-checks every time anyway.
pub async fn check_resolved(
    url: &Url,
    policy: EgressPolicy,
    timeout: Duration,
) -> Result<(), Rejection> {
    let Some(url::Host::Domain(d)) = url.host() else {
        return Ok(());
    };
    let port = url.port_or_known_default().unwrap_or(443);
    let lookup =
        tokio::time::timeout(timeout, tokio::net::lookup_host((d.to_string(), port))).await;
    if let Ok(Ok(addrs)) = lookup {
        for a in addrs {
            check_ip(a.ip(), policy).map_err(Rejection::denied)?;
        }
    }
    Ok(())
}

/// reqwest resolver that only ever yields validated addresses.
#[derive(Debug, Clone)]
pub struct GuardedResolver {
    pub policy: EgressPolicy,
}

#[derive(Debug, thiserror::Error)]
#[error("webhook host {host} resolves to a denied address ({reason})")]
struct DeniedResolution {
    host: String,
    reason: &'static str,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy;
        Box::pin(async move {
            let host = name.as_str().to_string();
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if addrs.is_empty() {
                return Err(format!("webhook host {host} has no addresses").into());
            }
            for a in &addrs {
                if let Err(reason) = check_ip(a.ip(), policy) {
                    return Err(Box::new(DeniedResolution {
                        host: host.clone(),
                        reason,
                    }) as Box<_>);
                }
            }
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(url: &str) -> Option<&'static str> {
        match check_url(url, EgressPolicy::default()) {
            Ok(_) => None,
            Err(Rejection::Denied { reason }) => Some(reason),
            Err(Rejection::InvalidUrl(_)) => Some("invalid"),
        }
    }

    #[test]
    fn rejects_every_non_public_destination() {
        let cases = [
            ("http://example.com/hook", "scheme_not_https"),
            ("ftp://example.com/hook", "unsupported_scheme"),
            ("https://127.0.0.1/", "loopback"),
            ("https://127.8.9.10:8443/x", "loopback"),
            ("https://2130706433/", "loopback"),
            ("https://0x7f.1/", "loopback"),
            ("https://[::1]/", "loopback"),
            ("https://[::ffff:127.0.0.1]/", "loopback"),
            ("https://localhost/", "loopback"),
            ("https://api.localhost./", "loopback"),
            ("https://10.1.2.3/", "private"),
            ("https://172.16.0.1/", "private"),
            ("https://172.31.255.255/", "private"),
            ("https://192.168.1.1/", "private"),
            ("https://[::ffff:10.0.0.1]/", "private"),
            ("https://[64:ff9b::a00:1]/", "private"),
            ("https://[2002:c0a8:0101::1]/", "private"),
            (
                "https://169.254.169.254/computeMetadata/v1/",
                "metadata_host",
            ),
            ("https://169.254.1.1/", "link_local"),
            ("https://[fe80::1]/", "link_local"),
            ("https://[fd00::1]/", "unique_local"),
            ("https://[fc00::1]/", "unique_local"),
            ("https://0.0.0.0/", "unspecified"),
            ("https://[::]/", "unspecified"),
            ("https://100.64.0.1/", "shared_address_space"),
            ("https://224.0.0.1/", "multicast"),
            ("https://metadata.google.internal/", "metadata_host"),
            ("https://METADATA/", "metadata_host"),
            ("https://user:pw@example.com/", "credentials_in_url"),
            ("not a url", "invalid"),
            ("https://", "invalid"),
        ];
        for (url, want) in cases {
            assert_eq!(reason(url), Some(want), "{url}");
        }
    }

    #[test]
    fn accepts_public_https() {
        for url in [
            "https://example.com/hook",
            "https://8.8.8.8/x",
            "https://[2606:4700::1111]/",
            "https://172.32.0.1/",
        ] {
            assert_eq!(reason(url), None, "{url}");
        }
    }

    #[test]
    fn loopback_flag_allows_only_loopback() {
        let p = EgressPolicy {
            allow_loopback: true,
        };
        assert!(check_url("http://127.0.0.1:9/hook", p).is_ok());
        assert!(check_url("http://localhost:9/hook", p).is_ok());
        assert!(check_url("https://[::1]:9/", p).is_ok());
        assert!(check_url("http://10.0.0.1/", p).is_err());
        assert!(check_url("https://192.168.0.1/", p).is_err());
        assert!(
            check_url("http://example.com/", p).is_err(),
            "plain http stays loopback-only"
        );
        assert!(check_url("https://169.254.169.254/", p).is_err());
    }
}
