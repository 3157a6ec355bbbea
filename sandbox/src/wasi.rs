//! Grants → WASI preview 2 for component packs.
//!
//! Deny by default, like `wasmtime_wasi::WasiCtxBuilder` itself: a component
//! sees no host directory, no environment variable, no socket and no
//! outbound HTTP unless its [`Grants`] say so, and its stdout/stderr go to
//! bounded in-memory buffers the host reads after the call. Core-module packs
//! never get WASI at all (any `wasi_snapshot_preview1.*` import is refused at
//! load as an escape attempt, see `load.rs`).
//!
//! Three pieces live here:
//!
//! * [`classify_import`] / [`gate_component`] — the static gate: every import
//!   of a component is mapped to "linked" or to an RFC 0035 refusal
//!   **before** anything is instantiated (table on [`classify_import`]).
//! * [`build_ctx`] — grants → a fresh [`WasiCtx`] per invocation: preopens
//!   read-only / read-write (cap-std underneath, so `..`, absolute paths and
//!   symlinks cannot leave the directory; `FsPerms::ReadOnly` refuses every
//!   mutation), exactly the granted environment, closed stdin, captured and
//!   bounded stdout/stderr ([`BoundedOutputPipe`]), no sockets.
//! * [`OutboundHttpHooks`] — the `wasi:http` hook enforcing the outbound host
//!   allowlist ([`HttpAllowlist`]): https only unless an entry says `http://`
//!   explicitly; everything else gets `error-code.HTTP-request-denied`.

use std::sync::{Arc, Mutex};

use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError, StreamResult};
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder};
use wasmtime_wasi_http::{WasiBody, WasiHttpHooks};

use crate::error::{EscapeKind, SandboxError};
use crate::grants::{DirAccess, Grants};

// ---------------------------------------------------------------------------
// Environment allowlist helper
// ---------------------------------------------------------------------------

/// Resolve an environment *allowlist* (names) against the host process
/// environment: the (name, value) pairs to put in [`Grants::env`]. Names that
/// are unset are left out. Nothing else of the host environment is ever
/// visible to a pack.
pub fn env_from_process<I, S>(allow: I) -> Vec<(String, String)>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    allow
        .into_iter()
        .filter_map(|n| {
            std::env::var(n.as_ref())
                .ok()
                .map(|v| (n.as_ref().to_string(), v))
        })
        .collect()
}

// ---------------------------------------------------------------------------
// WASI context per invocation
// ---------------------------------------------------------------------------

/// Build the WASI context for ONE invocation from the grants, with stdout
/// and stderr each capped at `output_cap` bytes. Nothing is inherited from
/// the host: no stdio, args, cwd, env or network; stdin is closed.
pub fn build_ctx(
    grants: &Grants,
    output_cap: usize,
) -> Result<(WasiCtx, CapturedOutput), SandboxError> {
    let mut b = WasiCtxBuilder::new();
    for p in &grants.preopened_dirs {
        let perms = match p.access {
            DirAccess::ReadOnly => FsPerms::ReadOnly,
            DirAccess::ReadWrite => FsPerms::ReadWrite,
        };
        b.preopened_dir(&p.host_path, &p.guest_path, perms)
            .map_err(|e| {
                SandboxError::internal(format!(
                    "cannot open preopened directory {}: {e:#}",
                    p.host_path.display()
                ))
            })?;
    }
    b.envs(&grants.env);
    let stdout = BoundedOutputPipe::new(output_cap);
    let stderr = BoundedOutputPipe::new(output_cap);
    b.stdout(stdout.clone());
    b.stderr(stderr.clone());
    // Belt and braces: `wasi:sockets/*` imports are refused by the gate and
    // never linked; the context also denies every address (the builder's
    // default) and every protocol.
    b.allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false);
    Ok((b.build(), CapturedOutput { stdout, stderr }))
}

// ---------------------------------------------------------------------------
// Bounded stdout/stderr capture
// ---------------------------------------------------------------------------

#[derive(Debug, Default)]
struct PipeState {
    buf: Vec<u8>,
    dropped: u64,
}

/// An in-memory stdout/stderr that keeps at most `limit` bytes and drops
/// (but counts) the rest. Unlike wasmtime's `MemoryOutputPipe`, writing past
/// the limit neither traps the guest nor closes the stream (Rust's `println!`
/// would panic on a closed stdout): a chatty guest loses output, not its
/// run. CPU spent printing is bounded by fuel and the wall clock.
#[derive(Debug, Clone)]
pub struct BoundedOutputPipe {
    limit: usize,
    state: Arc<Mutex<PipeState>>,
}

impl BoundedOutputPipe {
    /// A pipe keeping at most `limit` bytes.
    pub fn new(limit: usize) -> Self {
        BoundedOutputPipe {
            limit,
            state: Arc::default(),
        }
    }
    fn push(&self, bytes: &[u8]) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let room = self.limit.saturating_sub(s.buf.len());
        let keep = room.min(bytes.len());
        s.buf.extend_from_slice(&bytes[..keep]);
        s.dropped += (bytes.len() - keep) as u64;
    }
    /// Captured bytes (at most the limit).
    pub fn contents(&self) -> Vec<u8> {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .buf
            .clone()
    }
    /// Bytes written beyond the limit and dropped.
    pub fn dropped(&self) -> u64 {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).dropped
    }
}

/// How much a guest may write per `check-write` permit.
const PIPE_PERMIT: usize = 64 * 1024;

#[wasmtime_wasi::async_trait]
impl Pollable for BoundedOutputPipe {
    async fn ready(&mut self) {}
}

impl OutputStream for BoundedOutputPipe {
    fn write(&mut self, bytes: bytes::Bytes) -> StreamResult<()> {
        self.push(&bytes);
        Ok(())
    }
    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }
    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(PIPE_PERMIT)
    }
}

impl tokio::io::AsyncWrite for BoundedOutputPipe {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.push(buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

impl wasmtime_wasi::cli::IsTerminal for BoundedOutputPipe {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl wasmtime_wasi::cli::StdoutStream for BoundedOutputPipe {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

/// Handles to one invocation's captured stdout and stderr.
#[derive(Debug, Clone)]
pub struct CapturedOutput {
    /// Guest stdout.
    pub stdout: BoundedOutputPipe,
    /// Guest stderr.
    pub stderr: BoundedOutputPipe,
}

// ---------------------------------------------------------------------------
// Static import gate
// ---------------------------------------------------------------------------

/// What the gate decided for an import it lets through (and so what the
/// linker must provide).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Linked {
    /// Our world's `openwop:node/host` (log) or `openwop:node/types`.
    Baseline,
    /// WASI that cannot reach the host: io, clocks, random, stdio (stdin
    /// closed, output captured), terminal queries, and `wasi:cli/exit`.
    WasiBaseline,
    /// `wasi:filesystem/{types,preopens}` (a preopen is granted).
    Filesystem,
    /// `wasi:cli/environment` (an environment is granted).
    Environment,
    /// `wasi:http/{types,outgoing-handler}` (outbound hosts are granted).
    Http,
}

/// Split `ns:pkg/iface@ver` into (`ns:pkg`, `iface`). World-level imports
/// without a `/` yield (`""`, name).
fn split_import(name: &str) -> (&str, &str) {
    let unversioned = name.split('@').next().unwrap_or(name);
    match unversioned.rsplit_once('/') {
        Some((pkg, iface)) => (pkg, iface),
        None => ("", unversioned),
    }
}

/// The escape error for a refused component import (`details.import` is
/// the full interface name).
fn escape(kind: EscapeKind, import: &str) -> SandboxError {
    SandboxError::EscapeAttempt {
        kind,
        module: import.to_string(),
        name: String::new(),
    }
}

/// Decide one component import (its full name, e.g.
/// `wasi:filesystem/types@0.2.6`) against the grants.
///
/// | import | linked when | otherwise |
/// |---|---|---|
/// | `openwop:node/host`, `openwop:node/types` | always | — |
/// | `wasi:io/*`, `wasi:clocks/*`, `wasi:random/*` | always | — |
/// | `wasi:cli/{stdin,stdout,stderr,terminal-*}` | always (stdin closed, output captured and capped) | — |
/// | `wasi:cli/exit` | always: it unwinds only the guest's own instance and surfaces as a failed invocation (`sandbox_invocation_error`, `reason: "exit"`); no WASI p2 interface can signal, spawn or exit the host process | — |
/// | `wasi:filesystem/{types,preopens}` | ≥ 1 preopened dir | escape `host-fs-escape` |
/// | `wasi:cli/environment` | `env_read`, or ≥ 1 env var granted (Rust std imports it in every `wasm32-wasip2` component) | escape `host-env-leak` |
/// | `wasi:http/{types,outgoing-handler}` | ≥ 1 outbound host | escape `network-escape` |
/// | other `wasi:http/*`, every `wasi:sockets/*` | never | escape `network-escape` |
/// | any other `wasi:*` (`wasi:cli/run` as an import, `wasi:threads`, …) | never | escape `host-process-escape` (the reference gate's default) |
/// | `openwop:<pkg>/<x>` | never (no component capability provider exists yet, granted or not) | `sandbox_capability_denied`, `requestedCapability: "<x>"` |
/// | anything else (vendor interfaces, bare world-level functions) | never | `sandbox_capability_denied`, `requestedCapability: <full name>` |
pub fn classify_import(name: &str, grants: &Grants) -> Result<Linked, SandboxError> {
    let (pkg, iface) = split_import(name);
    let fs = !grants.preopened_dirs.is_empty();
    let env = grants.env_read || !grants.env.is_empty();
    let http = !grants.outbound_hosts.is_empty();
    match pkg {
        "openwop:node" if iface == "host" || iface == "types" => Ok(Linked::Baseline),
        "wasi:io" | "wasi:clocks" | "wasi:random" => Ok(Linked::WasiBaseline),
        "wasi:cli" => match iface {
            "stdin" | "stdout" | "stderr" | "terminal-input" | "terminal-output"
            | "terminal-stdin" | "terminal-stdout" | "terminal-stderr" | "exit" => {
                Ok(Linked::WasiBaseline)
            }
            "environment" if env => Ok(Linked::Environment),
            "environment" => Err(escape(EscapeKind::HostEnv, name)),
            _ => Err(escape(EscapeKind::HostProcess, name)),
        },
        "wasi:filesystem" if fs && (iface == "types" || iface == "preopens") => {
            Ok(Linked::Filesystem)
        }
        "wasi:filesystem" => Err(escape(EscapeKind::HostFs, name)),
        "wasi:http" if http && (iface == "types" || iface == "outgoing-handler") => {
            Ok(Linked::Http)
        }
        "wasi:http" | "wasi:sockets" => Err(escape(EscapeKind::Network, name)),
        p if p.starts_with("wasi:") => Err(escape(EscapeKind::HostProcess, name)),
        p if p.starts_with("openwop:") => Err(SandboxError::CapabilityDenied {
            capability: iface.to_string(),
        }),
        _ => Err(SandboxError::CapabilityDenied {
            capability: name.to_string(),
        }),
    }
}

/// Gate import names in declaration order; the first offending import wins
/// (as in the reference core-module gate). Returns the set of WASI/host
/// groups the linker must provide.
pub fn classify_imports<'a>(
    names: impl IntoIterator<Item = &'a str>,
    grants: &Grants,
) -> Result<std::collections::BTreeSet<Linked>, SandboxError> {
    names
        .into_iter()
        .map(|n| classify_import(n, grants))
        .collect()
}

/// Gate a compiled component by its type (`component_type().imports()`);
/// runs no guest code.
pub fn gate_component(
    engine: &wasmtime::Engine,
    component: &wasmtime::component::Component,
    grants: &Grants,
) -> Result<std::collections::BTreeSet<Linked>, SandboxError> {
    let ty = component.component_type();
    let names: Vec<&str> = ty.imports(engine).map(|(name, _)| name).collect();
    classify_imports(names, grants)
}

/// RFC 0076 `runtime.requires` tokens that a component's imports call for:
/// `fs.read` (`wasi:filesystem/*`), `env.read` (`wasi:cli/environment`),
/// `net.outbound` (`wasi:http/*`). A host can compare this with the
/// manifest's `runtime.requires` at install time (a component importing
/// more than it declares can be refused with `pack_runtime_requirement_unmet`
/// before the sandbox refuses it at load). `fs.write` cannot be told from
/// imports: a read-only grant satisfies the import, writes then fail.
pub fn requirements_for_imports<'a>(
    names: impl IntoIterator<Item = &'a str>,
) -> std::collections::BTreeSet<&'static str> {
    names
        .into_iter()
        .filter_map(|n| match split_import(n) {
            ("wasi:filesystem", _) => Some("fs.read"),
            ("wasi:cli", "environment") => Some("env.read"),
            ("wasi:http", _) => Some("net.outbound"),
            _ => None,
        })
        .collect()
}

/// [`requirements_for_imports`] of a compiled component.
pub fn component_requirements(
    engine: &wasmtime::Engine,
    component: &wasmtime::component::Component,
) -> std::collections::BTreeSet<&'static str> {
    let ty = component.component_type();
    let names: Vec<&str> = ty.imports(engine).map(|(name, _)| name).collect();
    requirements_for_imports(names)
}

// ---------------------------------------------------------------------------
// Outbound HTTP allowlist
// ---------------------------------------------------------------------------

/// One allowlist entry, written `[scheme://]host[:port]` (Spin-like):
///
/// * no scheme means `https`; plain HTTP is only ever allowed by an entry
///   that says `http://` explicitly;
/// * `host` matches case-insensitively and exactly, or `*.example.com`
///   matches any subdomain (not the apex); IP literals match only literally
///   (no DNS-based matching, so `localhost` ≠ `127.0.0.1`);
/// * no port means the scheme's default (443 / 80); `:*` means any port.
///
/// Limitation: matching is by the name in the request; the addresses a name
/// resolves to are not checked (no private-address or DNS-rebinding filter
/// yet), so allowlist only names whose DNS you trust.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedHost {
    /// `https` or `http`.
    pub scheme: HttpScheme,
    /// Lower-cased host or `*.suffix` pattern.
    pub host: String,
    /// `None` = any port.
    pub port: Option<u16>,
}

/// Scheme of an allowlist entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpScheme {
    /// `https://` (the default).
    Https,
    /// `http://` (must be explicit).
    Http,
}

impl HttpScheme {
    fn default_port(self) -> u16 {
        match self {
            HttpScheme::Https => 443,
            HttpScheme::Http => 80,
        }
    }
}

impl std::str::FromStr for AllowedHost {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (scheme, rest) = if let Some(r) = s.strip_prefix("https://") {
            (HttpScheme::Https, r)
        } else if let Some(r) = s.strip_prefix("http://") {
            (HttpScheme::Http, r)
        } else if s.contains("://") {
            return Err(format!(
                "unsupported scheme in allowed host `{s}` (only https:// and http://)"
            ));
        } else {
            (HttpScheme::Https, s)
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.is_empty() || rest.contains('/') || rest.contains('@') {
            return Err(format!("allowed host `{s}` must be [scheme://]host[:port]"));
        }
        let (host, port) = if let Some(r) = rest.strip_prefix('[') {
            let (h, tail) = r
                .split_once(']')
                .ok_or_else(|| format!("bad IPv6 literal in `{s}`"))?;
            (format!("[{h}]"), tail.strip_prefix(':'))
        } else {
            match rest.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (rest.to_string(), None),
            }
        };
        let port = match port {
            None => Some(scheme.default_port()),
            Some("*") => None,
            Some(p) => Some(
                p.parse::<u16>()
                    .map_err(|_| format!("bad port in allowed host `{s}`"))?,
            ),
        };
        let host = host.to_ascii_lowercase();
        let wildcard_ok = !host.contains('*')
            || (host.starts_with("*.") && !host[2..].contains('*') && host.len() > 2);
        if host.is_empty() || !wildcard_ok {
            return Err(format!(
                "bad host pattern in `{s}` (use an exact host or `*.domain`)"
            ));
        }
        Ok(AllowedHost { scheme, host, port })
    }
}

impl AllowedHost {
    fn matches(&self, scheme: HttpScheme, host: &str, port: u16) -> bool {
        if self.scheme != scheme || self.port.is_some_and(|p| p != port) {
            return false;
        }
        let host = host.to_ascii_lowercase();
        match self.host.strip_prefix("*.") {
            Some(suffix) => host
                .strip_suffix(suffix)
                .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
            None => self.host == host,
        }
    }
}

/// The outbound HTTP hosts a pack may call. Empty: every request is denied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HttpAllowlist {
    /// Parsed entries.
    pub hosts: Vec<AllowedHost>,
}

/// A request the allowlist refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeniedRequest {
    /// The request URI.
    pub uri: String,
    /// Why.
    pub reason: String,
}

impl HttpAllowlist {
    /// Parse entries such as `api.example.com`, `https://*.example.com:8443`,
    /// `http://127.0.0.1:8080` (see [`AllowedHost`]).
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<Self, String> {
        let hosts = entries
            .iter()
            .map(|e| e.as_ref().parse())
            .collect::<Result<Vec<_>, _>>()?;
        Ok(HttpAllowlist { hosts })
    }

    /// Whether plain `http` is allowed at all (some entry says `http://`).
    pub fn allows_plain_http(&self) -> bool {
        self.hosts.iter().any(|h| h.scheme == HttpScheme::Http)
    }

    /// Check one absolute request URI.
    pub fn check(&self, uri: &http::Uri) -> Result<(), DeniedRequest> {
        let deny = |reason: &str| {
            Err(DeniedRequest {
                uri: uri.to_string(),
                reason: reason.to_string(),
            })
        };
        let scheme = match uri.scheme_str() {
            Some("https") => HttpScheme::Https,
            Some("http") => HttpScheme::Http,
            _ => return deny("scheme not allowed"),
        };
        let Some(authority) = uri.authority() else {
            return deny("no host");
        };
        if authority.as_str().contains('@') {
            return deny("userinfo in authority");
        }
        let port = authority.port_u16().unwrap_or(scheme.default_port());
        if self
            .hosts
            .iter()
            .any(|h| h.matches(scheme, authority.host(), port))
        {
            Ok(())
        } else {
            deny("host not in allowlist")
        }
    }
}

/// `wasi:http` hooks for one invocation: allowlist enforcement in
/// `send_request`, extra forbidden headers (`authorization`, `cookie`,
/// `proxy-authorization` on top of wasmtime's defaults, so a guest cannot
/// smuggle credentials), bounded timeouts, and a record of denials.
pub struct OutboundHttpHooks {
    allowlist: HttpAllowlist,
    denied: Arc<Mutex<Vec<DeniedRequest>>>,
}

impl OutboundHttpHooks {
    /// Hooks enforcing `allowlist`.
    pub fn new(allowlist: HttpAllowlist) -> Self {
        OutboundHttpHooks {
            allowlist,
            denied: Arc::default(),
        }
    }
    /// Requests denied so far.
    pub fn denied(&self) -> Vec<DeniedRequest> {
        self.denied
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

type IoFuture = Box<dyn std::future::Future<Output = wasmtime_wasi_http::Result<()>> + Send>;
type SendFuture = Box<
    dyn std::future::Future<
            Output = wasmtime_wasi_http::Result<(http::Response<WasiBody>, IoFuture)>,
        > + Send,
>;

/// Longest a single outbound connect / first byte / gap may take, whatever
/// the guest asks for (the invocation's wall clock applies on top).
const HTTP_TIMEOUT_CAP: std::time::Duration = std::time::Duration::from_secs(10);

impl WasiHttpHooks for OutboundHttpHooks {
    fn forbidden_header_filter(&mut self) -> wasmtime_wasi_http::ForbiddenHeaderFilter {
        Arc::new(|name| {
            wasmtime_wasi_http::DEFAULT_FORBIDDEN_HEADERS.contains(name)
                || *name == http::header::AUTHORIZATION
                || *name == http::header::COOKIE
                || *name == http::header::PROXY_AUTHORIZATION
        })
    }

    fn is_supported_scheme(&mut self, scheme: &http::uri::Scheme) -> bool {
        *scheme == http::uri::Scheme::HTTPS
            || (*scheme == http::uri::Scheme::HTTP && self.allowlist.allows_plain_http())
    }

    fn default_scheme(&mut self) -> Option<http::uri::Scheme> {
        Some(http::uri::Scheme::HTTPS)
    }

    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<wasmtime_wasi_http::RequestOptions>,
        fut: IoFuture,
    ) -> SendFuture {
        _ = fut;
        if let Err(denied) = self.allowlist.check(request.uri()) {
            tracing::warn!(uri = %denied.uri, reason = %denied.reason, "sandbox: outbound HTTP denied");
            self.denied
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(denied);
            return Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) });
        }
        let mut o = options.unwrap_or_default();
        let cap = |t: Option<std::time::Duration>| {
            Some(t.map_or(HTTP_TIMEOUT_CAP, |t| t.min(HTTP_TIMEOUT_CAP)))
        };
        o.connect_timeout = cap(o.connect_timeout);
        o.first_byte_timeout = cap(o.first_byte_timeout);
        o.between_bytes_timeout = cap(o.between_bytes_timeout);
        Box::new(async move {
            use http_body_util::BodyExt;
            let (res, io) = wasmtime_wasi_http::default_send_request(request, Some(o)).await?;
            Ok((res.map(BodyExt::boxed_unsync), Box::new(io) as IoFuture))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grants::PreopenDir;

    fn g(fs: bool, env: bool, http: bool) -> Grants {
        Grants {
            preopened_dirs: if fs {
                vec![PreopenDir {
                    host_path: "/nonexistent".into(),
                    guest_path: "/data".into(),
                    access: DirAccess::ReadOnly,
                }]
            } else {
                vec![]
            },
            env: if env {
                vec![("A".into(), "1".into())]
            } else {
                vec![]
            },
            outbound_hosts: if http {
                vec!["api.example.com".into()]
            } else {
                vec![]
            },
            ..Grants::default()
        }
    }

    fn kind(name: &str, grants: &Grants) -> Option<EscapeKind> {
        match classify_import(name, grants) {
            Err(SandboxError::EscapeAttempt { kind, .. }) => Some(kind),
            _ => None,
        }
    }

    fn denied_cap(name: &str, grants: &Grants) -> Option<String> {
        match classify_import(name, grants) {
            Err(SandboxError::CapabilityDenied { capability }) => Some(capability),
            _ => None,
        }
    }

    #[test]
    fn classifier_table() {
        let none = g(false, false, false);
        let all = g(true, true, true);
        for ok in [
            "openwop:node/host@0.1.0",
            "wasi:io/streams@0.2.6",
            "wasi:io/error@0.2.0",
            "wasi:clocks/wall-clock@0.2.6",
            "wasi:random/random@0.2.0",
            "wasi:cli/stdout@0.2.6",
            "wasi:cli/terminal-stderr@0.2.0",
            "wasi:cli/exit@0.2.6",
        ] {
            assert!(classify_import(ok, &none).is_ok(), "{ok}");
        }
        assert_eq!(
            kind("wasi:filesystem/types@0.2.6", &none),
            Some(EscapeKind::HostFs)
        );
        assert_eq!(
            kind("wasi:filesystem/preopens@0.2.0", &none),
            Some(EscapeKind::HostFs)
        );
        assert_eq!(
            kind("wasi:cli/environment@0.2.6", &none),
            Some(EscapeKind::HostEnv)
        );
        assert_eq!(
            kind("wasi:sockets/tcp@0.2.0", &all),
            Some(EscapeKind::Network)
        );
        assert_eq!(
            kind("wasi:sockets/ip-name-lookup@0.2.0", &all),
            Some(EscapeKind::Network)
        );
        assert_eq!(
            kind("wasi:http/outgoing-handler@0.2.0", &none),
            Some(EscapeKind::Network)
        );
        assert_eq!(
            kind("wasi:http/incoming-handler@0.2.0", &all),
            Some(EscapeKind::Network)
        );
        assert_eq!(
            kind("wasi:cli/run@0.2.0", &all),
            Some(EscapeKind::HostProcess)
        );
        assert_eq!(
            kind("wasi:threads/spawn@0.1.0", &all),
            Some(EscapeKind::HostProcess)
        );
        assert_eq!(
            classify_import("wasi:filesystem/types@0.2.6", &all).unwrap(),
            Linked::Filesystem
        );
        assert_eq!(
            classify_import("wasi:cli/environment@0.2.6", &all).unwrap(),
            Linked::Environment
        );
        assert_eq!(
            classify_import("wasi:http/types@0.2.6", &all).unwrap(),
            Linked::Http
        );
        assert_eq!(
            denied_cap("openwop:node/fetch@0.1.0", &all).as_deref(),
            Some("fetch")
        );
        assert_eq!(
            denied_cap("acme:secrets/vault", &all).as_deref(),
            Some("acme:secrets/vault")
        );
        assert_eq!(
            denied_cap("privileged", &all).as_deref(),
            Some("privileged")
        );
    }

    #[test]
    fn requirements_from_imports() {
        let r = requirements_for_imports([
            "wasi:io/streams@0.2.6",
            "wasi:filesystem/types@0.2.6",
            "wasi:filesystem/preopens@0.2.6",
            "wasi:cli/environment@0.2.6",
            "wasi:cli/exit@0.2.6",
        ]);
        assert_eq!(r.into_iter().collect::<Vec<_>>(), ["env.read", "fs.read"]);
        let r = requirements_for_imports(["wasi:http/types@0.2.12", "openwop:node/host@0.1.0"]);
        assert_eq!(r.into_iter().collect::<Vec<_>>(), ["net.outbound"]);
    }

    #[test]
    fn first_offending_import_wins() {
        let r = classify_imports(
            [
                "wasi:io/streams@0.2.0",
                "wasi:cli/environment@0.2.0",
                "wasi:filesystem/types@0.2.0",
            ],
            &g(false, false, false),
        );
        match r {
            Err(SandboxError::EscapeAttempt { kind, module, .. }) => {
                assert_eq!(kind, EscapeKind::HostEnv);
                assert_eq!(module, "wasi:cli/environment@0.2.0");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn allowlist_grammar_and_matching() {
        let a = HttpAllowlist::parse(&[
            "api.example.com",
            "https://*.svc.example.org:8443",
            "http://127.0.0.1:8080",
        ])
        .unwrap();
        let ok = |u: &str| a.check(&u.parse().unwrap()).is_ok();
        assert!(ok("https://api.example.com/v1"));
        assert!(ok("https://API.Example.com:443/"));
        assert!(
            !ok("http://api.example.com/"),
            "plain http needs an explicit http:// entry"
        );
        assert!(!ok("https://api.example.com:8443/"));
        assert!(!ok("https://evil.com/"));
        assert!(!ok("https://api.example.com.evil.com/"));
        assert!(ok("https://a.svc.example.org:8443/"));
        assert!(ok("https://a.b.svc.example.org:8443/"));
        assert!(
            !ok("https://svc.example.org:8443/"),
            "wildcard does not match the apex"
        );
        assert!(!ok("https://xsvc.example.org:8443/"));
        assert!(ok("http://127.0.0.1:8080/x"));
        assert!(!ok("http://127.0.0.1:8081/x"));
        assert!(!ok("http://localhost:8080/x"));
        assert!(a.allows_plain_http());
        assert!(!HttpAllowlist::parse(&["api.example.com"])
            .unwrap()
            .allows_plain_http());
        for bad in ["ftp://x", "*", "a.*.com", "https://h/path", "*.", "user@h"] {
            assert!(HttpAllowlist::parse(&[bad]).is_err(), "{bad}");
        }
        let any_port = HttpAllowlist::parse(&["https://h.example:*"]).unwrap();
        assert!(any_port
            .check(&"https://h.example:9999/".parse().unwrap())
            .is_ok());
        assert!(HttpAllowlist::default()
            .check(&"https://api.example.com/".parse().unwrap())
            .is_err());
    }

    #[test]
    fn bounded_pipe_drops_and_counts() {
        let p = BoundedOutputPipe::new(5);
        let mut w = p.clone();
        w.write(bytes::Bytes::from_static(b"abc")).unwrap();
        w.write(bytes::Bytes::from_static(b"defgh")).unwrap();
        assert_eq!(p.contents(), b"abcde");
        assert_eq!(p.dropped(), 3);
        assert!(
            w.check_write().unwrap() > 0,
            "a full pipe never closes or traps the guest"
        );
    }
}
