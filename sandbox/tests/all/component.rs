//! Component-model packs (`runtime.language: "wasm-component"`): the files
//! pack (a Rust `wasm32-wasip2` guest, committed binary) and small
//! component-model WAT fixtures.
//!
//! What is shown here:
//! * the files pack reads from a granted read-only preopen, is refused at
//!   load without the grant, cannot write to a read-only preopen, cannot
//!   leave the preopen with `..`/symlinks, sees only the granted env vars;
//! * stdout/stderr are captured and capped without killing the guest;
//! * every un-granted WASI interface / host capability import is refused
//!   at load, before instantiation, with the RFC 0035 code and details;
//! * outbound HTTP: the http pack (a Rust guest using `wasi:http`) reaches
//!   an allowlisted loopback server and is denied everything else; the
//!   allowlist hook is also tested directly (loopback only);
//! * fuel, wall clock (also during instantiation), memory caps trip; a
//!   typed guest error comes back as `GuestResult::Failed`; each invocation
//!   gets a fresh instance.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use wopbox_sandbox::grants::PreopenDir;
use wopbox_sandbox::wasi::{HttpAllowlist, OutboundHttpHooks};
use wopbox_sandbox::{
    DirAccess, EscapeKind, Grants, GuestResult, InvokeRequest, Limits, LoadOptions, LoadedPack,
    PackFormat, Sandbox, SandboxConfig, SandboxError,
};

const READ: &str = "vendor.wopbox.files.read";
const WRITE: &str = "vendor.wopbox.files.write";
const LIST: &str = "vendor.wopbox.files.list";
const ENV: &str = "vendor.wopbox.files.env";
const PRINT: &str = "vendor.wopbox.files.print";

fn sandbox() -> Sandbox {
    static SB: OnceLock<Sandbox> = OnceLock::new();
    SB.get_or_init(|| Sandbox::new(SandboxConfig::default()).expect("sandbox"))
        .clone()
}

fn files_pack_bytes() -> Vec<u8> {
    let p =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../packs/files-component/files_component.wasm");
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn ro(dir: &Path) -> PreopenDir {
    PreopenDir {
        host_path: dir.to_path_buf(),
        guest_path: "/data".into(),
        access: DirAccess::ReadOnly,
    }
}

fn rw(dir: &Path) -> PreopenDir {
    PreopenDir {
        host_path: dir.to_path_buf(),
        guest_path: "/data".into(),
        access: DirAccess::ReadWrite,
    }
}

/// Grants the files pack needs to load: a `/data` preopen and an env grant.
fn files_grants(preopen: PreopenDir) -> Grants {
    Grants {
        preopened_dirs: vec![preopen],
        env: vec![("WOPBOX_GREETING".into(), "hello".into())],
        ..Grants::default()
    }
}

/// A temp dir with `data/hello.txt` (the preopen) and `secret.txt` next to
/// `data/` (outside the preopen).
fn fixture_dir() -> (tempfile::TempDir, PathBuf) {
    let t = tempfile::tempdir().unwrap();
    let data = t.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("hello.txt"), "hello from the host\n").unwrap();
    std::fs::create_dir(data.join("sub")).unwrap();
    std::fs::write(data.join("sub/inner.txt"), "inner").unwrap();
    std::fs::write(t.path().join("secret.txt"), "TOP SECRET").unwrap();
    (t, data)
}

async fn load_files(grants: Grants) -> Result<Arc<LoadedPack>, SandboxError> {
    sandbox()
        .load(
            files_pack_bytes(),
            LoadOptions::new(PackFormat::Component)
                .grants(grants)
                .name("vendor.wopbox.files"),
        )
        .await
}

async fn call(
    pack: &Arc<LoadedPack>,
    type_id: &str,
    input: Value,
) -> Result<wopbox_sandbox::InvokeOutcome, SandboxError> {
    sandbox()
        .invoke(pack, InvokeRequest::new(type_id, input))
        .await
}

fn completed(r: &GuestResult) -> &Value {
    match r {
        GuestResult::Completed(v) => v,
        other => panic!("expected completed, got {other:?}"),
    }
}

fn failed_code(r: &GuestResult) -> &str {
    match r {
        GuestResult::Failed { code, .. } => code,
        other => panic!("expected a typed failure, got {other:?}"),
    }
}

fn escape_kind(e: &SandboxError) -> EscapeKind {
    match e {
        SandboxError::EscapeAttempt { kind, .. } => *kind,
        other => panic!("expected sandbox_escape_attempt, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------
// The files pack (Rust guest)
// ---------------------------------------------------------------------------

#[test]
fn files_pack_manifest_matches_binary() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packs/files-component");
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("pack.json")).unwrap()).unwrap();
    assert_eq!(manifest["runtime"]["language"], "wasm-component");
    assert_eq!(manifest["runtime"]["format"], "wasm-component");
    assert!(dir
        .join(manifest["runtime"]["entry"].as_str().unwrap())
        .is_file());
    assert_eq!(
        PackFormat::detect(&files_pack_bytes()),
        Some(PackFormat::Component)
    );

    // The manifest's runtime.requires covers exactly what the binary imports.
    let sb = sandbox();
    for (dir, file) in [
        ("files-component", "files_component.wasm"),
        ("http-component", "http_component.wasm"),
    ] {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../packs")
            .join(dir);
        let manifest: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("pack.json")).unwrap()).unwrap();
        let (component, _) = sb
            .engine()
            .component(&std::fs::read(dir.join(file)).unwrap())
            .unwrap();
        let needed = wopbox_sandbox::wasi::component_requirements(sb.engine().engine(), &component);
        let declared: Vec<&str> = manifest["runtime"]["requires"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        let mut declared_sorted = declared.clone();
        declared_sorted.sort();
        assert_eq!(
            needed.into_iter().collect::<Vec<_>>(),
            declared_sorted,
            "{}",
            dir.display()
        );
    }
}

#[tokio::test]
async fn files_pack_reads_from_granted_read_only_preopen() {
    let (_t, data) = fixture_dir();
    let pack = load_files(files_grants(ro(&data))).await.expect("load");
    assert_eq!(pack.name(), "vendor.wopbox.files");
    assert!(pack.node_type_ids().iter().any(|n| n == READ));

    let out = call(&pack, READ, json!({"path": "hello.txt"}))
        .await
        .expect("invoke");
    assert_eq!(completed(&out.result)["content"], "hello from the host\n");
    assert!(out.metrics.fuel_consumed > 0);
    assert!(
        out.logs
            .iter()
            .any(|l| l.message.contains("invoke vendor.wopbox.files.read")),
        "host log import: {:?}",
        out.logs
    );

    let out = call(&pack, LIST, json!({})).await.unwrap();
    assert_eq!(
        completed(&out.result)["entries"],
        json!(["hello.txt", "sub"])
    );
    let out = call(&pack, READ, json!({"path": "sub/inner.txt"}))
        .await
        .unwrap();
    assert_eq!(completed(&out.result)["content"], "inner");

    // Typed guest failures come back as GuestResult::Failed.
    let out = call(&pack, READ, json!({"path": "missing.txt"}))
        .await
        .unwrap();
    assert_eq!(failed_code(&out.result), "not_found");
    let out = call(&pack, READ, json!({})).await.unwrap();
    assert_eq!(failed_code(&out.result), "validation_error");
    // Unknown node ids never reach the guest.
    let err = call(&pack, "vendor.wopbox.files.nope", json!({}))
        .await
        .unwrap_err();
    assert!(matches!(err, SandboxError::UnknownNode { .. }), "{err:?}");
}

#[tokio::test]
async fn files_pack_refused_at_load_without_fs_grant() {
    // Env granted, no preopen: the first un-granted import is wasi:filesystem.
    let grants = Grants {
        env: vec![("A".into(), "1".into())],
        ..Grants::default()
    };
    let err = load_files(grants).await.unwrap_err();
    assert_eq!(err.code(), "sandbox_escape_attempt");
    assert_eq!(escape_kind(&err), EscapeKind::HostFs);
    let d = err.details();
    assert_eq!(d["escapeKind"], "host-fs-escape");
    assert!(
        d["import"]
            .as_str()
            .unwrap()
            .starts_with("wasi:filesystem/"),
        "{d}"
    );

    // Nothing granted: refused too (env or fs, whichever import comes first).
    let err = load_files(Grants::none()).await.unwrap_err();
    assert!(
        matches!(escape_kind(&err), EscapeKind::HostFs | EscapeKind::HostEnv),
        "{err:?}"
    );

    // Preopen granted but no env grant: host-env-leak.
    let (_t, data) = fixture_dir();
    let grants = Grants {
        preopened_dirs: vec![ro(&data)],
        ..Grants::default()
    };
    let err = load_files(grants).await.unwrap_err();
    assert_eq!(escape_kind(&err), EscapeKind::HostEnv);
    assert_eq!(err.details()["escapeKind"], "host-env-leak");
}

#[tokio::test]
async fn per_call_grant_without_preopen_is_refused() {
    let (_t, data) = fixture_dir();
    let pack = load_files(files_grants(ro(&data))).await.unwrap();
    let narrower = Grants {
        env: vec![("A".into(), "1".into())],
        ..Grants::default()
    };
    let err = sandbox()
        .invoke(
            &pack,
            InvokeRequest::new(READ, json!({"path": "hello.txt"})).grants(narrower),
        )
        .await
        .unwrap_err();
    assert_eq!(escape_kind(&err), EscapeKind::HostFs);
}

#[tokio::test]
async fn files_pack_cannot_write_to_read_only_preopen() {
    let (_t, data) = fixture_dir();
    let pack = load_files(files_grants(ro(&data))).await.unwrap();
    let out = call(&pack, WRITE, json!({"path": "new.txt", "content": "x"}))
        .await
        .unwrap();
    assert_eq!(
        failed_code(&out.result),
        "permission_denied",
        "{:?}",
        out.result
    );
    assert!(!data.join("new.txt").exists());
    let out = call(
        &pack,
        WRITE,
        json!({"path": "hello.txt", "content": "overwritten"}),
    )
    .await
    .unwrap();
    assert_eq!(failed_code(&out.result), "permission_denied");
    assert_eq!(
        std::fs::read_to_string(data.join("hello.txt")).unwrap(),
        "hello from the host\n"
    );

    // The same pack with a read-write grant can write (inside the preopen).
    let pack = load_files(files_grants(rw(&data))).await.unwrap();
    let out = call(
        &pack,
        WRITE,
        json!({"path": "new.txt", "content": "written by the guest"}),
    )
    .await
    .unwrap();
    assert_eq!(completed(&out.result)["written"], 20);
    assert_eq!(
        std::fs::read_to_string(data.join("new.txt")).unwrap(),
        "written by the guest"
    );
}

#[tokio::test]
async fn files_pack_cannot_escape_preopen() {
    let (t, data) = fixture_dir();
    #[cfg(unix)]
    std::os::unix::fs::symlink(t.path().join("secret.txt"), data.join("link-out")).unwrap();
    #[cfg(unix)]
    std::os::unix::fs::symlink("/etc", data.join("etc-link")).unwrap();
    for grants in [files_grants(ro(&data)), files_grants(rw(&data))] {
        let pack = load_files(grants).await.unwrap();
        for path in [
            "../secret.txt",
            "sub/../../secret.txt",
            "../../../../../../etc/hostname",
            "link-out",
            "etc-link/hostname",
        ] {
            let out = call(&pack, READ, json!({"path": path})).await.unwrap();
            match &out.result {
                GuestResult::Failed { code, .. } => {
                    assert!(
                        ["not_found", "permission_denied", "io_error"].contains(&code.as_str()),
                        "{path}: {code}"
                    )
                }
                GuestResult::Completed(v) => panic!("{path} escaped the preopen: {v}"),
                other => panic!("{other:?}"),
            }
        }
        let out = call(&pack, LIST, json!({"path": ".."})).await.unwrap();
        assert!(
            matches!(out.result, GuestResult::Failed { .. }),
            "listing .. must fail: {:?}",
            out.result
        );
        let out = call(
            &pack,
            WRITE,
            json!({"path": "../planted.txt", "content": "x"}),
        )
        .await
        .unwrap();
        assert!(matches!(out.result, GuestResult::Failed { .. }));
        assert!(!t.path().join("planted.txt").exists());
    }
}

#[tokio::test]
async fn files_pack_sees_only_granted_env() {
    let (_t, data) = fixture_dir();
    // The host process has variables the pack must never see.
    assert!(std::env::var("PATH").is_ok());
    let grants = Grants {
        preopened_dirs: vec![ro(&data)],
        env: vec![("WOPBOX_ALLOWED".into(), "yes".into())],
        ..Grants::default()
    };
    let pack = load_files(grants).await.unwrap();
    let out = call(&pack, ENV, json!({})).await.unwrap();
    assert_eq!(
        completed(&out.result)["env"],
        json!({"WOPBOX_ALLOWED": "yes"})
    );

    // `env_read` with no variables: the interface is linked, the guest sees
    // an empty environment.
    let grants = Grants {
        preopened_dirs: vec![ro(&data)],
        env_read: true,
        ..Grants::default()
    };
    let pack = load_files(grants).await.unwrap();
    let out = call(&pack, ENV, json!({})).await.unwrap();
    assert_eq!(completed(&out.result)["env"], json!({}));

    // The allowlist helper takes names and reads values from the host
    // process; unset names are left out.
    let pairs = wopbox_sandbox::wasi::env_from_process(["PATH", "WOPBOX_SURELY_UNSET_VARIABLE"]);
    assert_eq!(pairs.len(), 1);
    assert_eq!(pairs[0].0, "PATH");
}

#[tokio::test]
async fn stdout_and_stderr_are_captured_and_capped() {
    let (_t, data) = fixture_dir();
    let pack = load_files(files_grants(ro(&data))).await.unwrap();

    let out = call(&pack, PRINT, json!({"text": "hi", "repeat": 2}))
        .await
        .unwrap();
    assert_eq!(out.stdout, "hi\nhi\n");
    assert_eq!(out.stderr, "hi\nhi\n");
    assert_eq!(out.output_dropped_bytes, 0);

    // 2000 lines of 100 bytes to each stream with a 4 KiB cap: the guest is
    // not killed, the host keeps exactly 4 KiB of each and counts the rest.
    let line = "x".repeat(99);
    let req = InvokeRequest::new(PRINT, json!({"text": line, "repeat": 2000}))
        .limits(Limits::default().with_max_output_bytes(4096));
    let out = sandbox().invoke(&pack, req).await.unwrap();
    assert_eq!(completed(&out.result)["printed"], 2000);
    assert_eq!(out.stdout.len(), 4096);
    assert_eq!(out.stderr.len(), 4096);
    assert_eq!(out.output_dropped_bytes, 2 * (2000 * 100 - 4096));
}

#[tokio::test]
async fn files_pack_fresh_instance_per_invocation_is_cheap() {
    let (_t, data) = fixture_dir();
    let pack = load_files(files_grants(ro(&data))).await.unwrap();
    let n = 20;
    let start = Instant::now();
    for _ in 0..n {
        let out = call(&pack, READ, json!({"path": "hello.txt"}))
            .await
            .unwrap();
        completed(&out.result);
    }
    let per = start.elapsed() / n;
    eprintln!("files component: {per:?} per fresh-instance invocation (debug build, incl. WASI ctx + preopen)");
    assert!(per < Duration::from_millis(500), "{per:?}");
}

// ---------------------------------------------------------------------------
// Outbound HTTP allowlist (hook tested directly, loopback only)
// ---------------------------------------------------------------------------

/// A loopback HTTP/1.1 server answering `200 hello` and counting connections.
fn loopback_server() -> (u16, Arc<AtomicUsize>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            h.fetch_add(1, Ordering::SeqCst);
            let mut buf = [0u8; 4096];
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let _ = s.read(&mut buf);
            let _ = s.write_all(
                b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello",
            );
        }
    });
    (port, hits)
}

fn empty_body() -> wasmtime_wasi_http::WasiBody {
    use http_body_util::BodyExt;
    http_body_util::Empty::<bytes::Bytes>::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

async fn send(
    hooks: &mut OutboundHttpHooks,
    uri: &str,
) -> Result<http::StatusCode, wasmtime_wasi_http::Error> {
    use wasmtime_wasi_http::WasiHttpHooks;
    let req = http::Request::get(uri).body(empty_body()).unwrap();
    let fut = hooks.send_request(req, None, Box::new(async { Ok(()) }));
    let (resp, _io) = Box::into_pin(fut).await?;
    Ok(resp.status())
}

#[tokio::test]
async fn outbound_http_allowlist_hook() {
    use wasmtime_wasi_http::WasiHttpHooks;
    let (port, hits) = loopback_server();

    // Allowlisted exactly: plain http to 127.0.0.1:<port> reaches the server.
    let mut hooks = OutboundHttpHooks::new(
        HttpAllowlist::parse(&[format!("http://127.0.0.1:{port}")]).unwrap(),
    );
    assert_eq!(
        send(&mut hooks, &format!("http://127.0.0.1:{port}/ok"))
            .await
            .unwrap(),
        http::StatusCode::OK
    );
    assert_eq!(hits.load(Ordering::SeqCst), 1);

    // Not allowlisted (another host name for the same server; another port;
    // https to an http-only entry): denied before any connection is made.
    for uri in [
        format!("http://localhost:{port}/"),
        format!("http://127.0.0.1:{}/", port.wrapping_add(1)),
        format!("https://127.0.0.1:{port}/"),
    ] {
        let err = send(&mut hooks, &uri).await.unwrap_err();
        assert!(
            matches!(err, wasmtime_wasi_http::Error::HttpRequestDenied),
            "{uri}: {err:?}"
        );
    }
    assert_eq!(
        hits.load(Ordering::SeqCst),
        1,
        "denied requests must not connect"
    );
    assert_eq!(hooks.denied().len(), 3);

    // An entry without a scheme means https only: plain http is not even a
    // supported scheme, and a request is denied.
    let mut https_only =
        OutboundHttpHooks::new(HttpAllowlist::parse(&[format!("127.0.0.1:{port}")]).unwrap());
    assert!(!https_only.is_supported_scheme(&http::uri::Scheme::HTTP));
    assert!(https_only.is_supported_scheme(&http::uri::Scheme::HTTPS));
    let err = send(&mut https_only, &format!("http://127.0.0.1:{port}/"))
        .await
        .unwrap_err();
    assert!(matches!(err, wasmtime_wasi_http::Error::HttpRequestDenied));

    // No hosts: everything denied. Credentials headers are forbidden.
    let mut none = OutboundHttpHooks::new(HttpAllowlist::default());
    assert!(matches!(
        send(&mut none, &format!("http://127.0.0.1:{port}/")).await,
        Err(wasmtime_wasi_http::Error::HttpRequestDenied)
    ));
    assert!(none.is_forbidden_header(&http::header::AUTHORIZATION));
    assert!(none.is_forbidden_header(&http::header::HOST));
    assert!(!none.is_forbidden_header(&http::header::ACCEPT));
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}

// ---------------------------------------------------------------------------
// The http pack (Rust guest doing wasi:http) against a loopback server
// ---------------------------------------------------------------------------

const HTTP_GET: &str = "vendor.wopbox.http.get";

fn http_pack_bytes() -> Vec<u8> {
    let p =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../packs/http-component/http_component.wasm");
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

async fn load_http(grants: Grants) -> Result<Arc<LoadedPack>, SandboxError> {
    sandbox()
        .load(
            http_pack_bytes(),
            LoadOptions::new(PackFormat::Component)
                .grants(grants)
                .name("vendor.wopbox.http"),
        )
        .await
}

#[tokio::test]
async fn http_pack_refused_without_outbound_grant() {
    let err = load_http(Grants {
        env_read: true,
        ..Grants::default()
    })
    .await
    .unwrap_err();
    assert_eq!(err.code(), "sandbox_escape_attempt");
    assert_eq!(escape_kind(&err), EscapeKind::Network);
    assert!(
        err.details()["import"]
            .as_str()
            .unwrap()
            .starts_with("wasi:http/"),
        "{}",
        err.details()
    );
}

#[tokio::test]
async fn http_pack_reaches_only_allowlisted_hosts() {
    let (port, hits) = loopback_server();
    let grants = Grants {
        env_read: true,
        outbound_hosts: vec![format!("http://127.0.0.1:{port}")],
        ..Grants::default()
    };
    let pack = load_http(grants).await.expect("load");

    // Allowlisted: the guest gets the loopback server's answer.
    let out = call(
        &pack,
        HTTP_GET,
        json!({"url": format!("http://127.0.0.1:{port}/hello")}),
    )
    .await
    .unwrap();
    let v = completed(&out.result);
    assert_eq!(v["status"], 200);
    assert_eq!(v["body"], "hello");
    assert_eq!(hits.load(Ordering::SeqCst), 1);

    // Not allowlisted: denied by the host hook, seen by the guest as
    // HTTP-request-denied (a typed failure), and no connection is made.
    // `.invalid` never resolves, so even a broken hook could not reach a
    // non-loopback address.
    for url in [
        format!("http://localhost:{port}/"),
        format!("http://127.0.0.1:{}/", port.wrapping_add(1)),
        format!("https://127.0.0.1:{port}/"),
        "https://blocked.invalid/".to_string(),
        "http://blocked.invalid/".to_string(),
    ] {
        let out = call(&pack, HTTP_GET, json!({ "url": url })).await.unwrap();
        match &out.result {
            GuestResult::Failed { code, .. } => assert!(
                code == "http_request_denied" || code == "http_error",
                "{url}: {code}"
            ),
            other => panic!("{url}: {other:?}"),
        }
        assert_eq!(hits.load(Ordering::SeqCst), 1, "{url} must not connect");
    }
    // The allowlisted-host-but-wrong-port and unlisted-host cases are
    // exactly `http_request_denied`.
    let out = call(
        &pack,
        HTTP_GET,
        json!({"url": format!("http://localhost:{port}/")}),
    )
    .await
    .unwrap();
    assert_eq!(failed_code(&out.result), "http_request_denied");
}

// ---------------------------------------------------------------------------
// Component-model WAT fixtures
// ---------------------------------------------------------------------------

/// A minimal `openwop:node/node-pack` component in WAT: pack
/// `vendor.test.wat`, one node `vendor.test.wat.node`. `imports` are extra
/// component-level imports, `body` is the core `invoke` body (13 i32 params:
/// type-id ptr/len, ctx (9 flat), input ptr/len; returns a pointer to the
/// `result<string, node-error>` return area), `start` is an optional core
/// start function body, `memory` the core memory declaration.
fn wat_component(imports: &str, body: &str, start: Option<&str>, memory: &str) -> String {
    wat_component_with(imports, "", "", body, start, memory)
}

/// [`wat_component`] plus `lowered`: component-level definitions after the
/// imports (e.g. `canon lower` of imported functions into a core instance
/// named `$host`), and `core_imports`: imports of the core module (from
/// module `host`). When `core_imports` is non-empty the core module is
/// instantiated with `(with "host" (instance $host))`.
fn wat_component_with(
    imports: &str,
    lowered: &str,
    core_imports: &str,
    body: &str,
    start: Option<&str>,
    memory: &str,
) -> String {
    let with_host = if core_imports.is_empty() {
        ""
    } else {
        r#"(with "host" (instance $host))"#
    };
    let start = match start {
        Some(s) => format!("(func $start {s}) (start $start)"),
        None => String::new(),
    };
    format!(
        r#"(component
  (type $types-ty (instance
    (type (record (field "run-id" string) (field "node-id" string) (field "tenant-id" string) (field "attempt" u32) (field "configurable-json" string)))
    (export "node-context" (type (eq 0)))
    (type (option string))
    (type (record (field "code" string) (field "message" string) (field "details-json" 2)))
    (export "node-error" (type (eq 3)))
    (type (record (field "type-id" string) (field "version" string)))
    (export "node-info" (type (eq 5)))))
  (import "openwop:node/types@0.1.0" (instance $types (type $types-ty)))
  {imports}
  (alias export $types "node-context" (type $node-context))
  (alias export $types "node-error" (type $node-error))
  (alias export $types "node-info" (type $node-info))
  {lowered}
  (core module $m
    {core_imports}
    {memory}
    (global $heap (mut i32) (i32.const 4096))
    (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32)
      (local $r i32)
      (local.set $r (global.get $heap))
      (global.set $heap (i32.add (global.get $heap) (i32.and (i32.add (local.get 3) (i32.const 7)) (i32.const -8))))
      (local.get $r))
    (data (i32.const 16) "vendor.test.wat")
    (data (i32.const 64) "vendor.test.wat.node")
    (data (i32.const 96) "0.1.0")
    (data (i32.const 128) "{{\"ok\":true}}")
    (data (i32.const 160) "quota_exceeded")
    (data (i32.const 192) "typed failure from a WAT component")
    (data (i32.const 240) "{{\"limit\":3}}")
    (func (export "pack-name") (result i32)
      (i32.store (i32.const 512) (i32.const 16))
      (i32.store (i32.const 516) (i32.const 15))
      (i32.const 512))
    (func (export "nodes") (result i32)
      (i32.store (i32.const 600) (i32.const 64))
      (i32.store (i32.const 604) (i32.const 20))
      (i32.store (i32.const 608) (i32.const 96))
      (i32.store (i32.const 612) (i32.const 5))
      (i32.store (i32.const 520) (i32.const 600))
      (i32.store (i32.const 524) (i32.const 1))
      (i32.const 520))
    (func (export "invoke") (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)
      {body})
    {start})
  (core instance $i (instantiate $m {with_host}))
  (alias core export $i "memory" (core memory $mem))
  (alias core export $i "cabi_realloc" (core func $realloc))
  (type $pack-name-ty (func (result string)))
  (func $pack-name (type $pack-name-ty) (canon lift (core func $i "pack-name") (memory $mem) string-encoding=utf8))
  (type $node-list (list $node-info))
  (type $nodes-ty (func (result $node-list)))
  (func $nodes (type $nodes-ty) (canon lift (core func $i "nodes") (memory $mem) string-encoding=utf8))
  (type $invoke-result (result string (error $node-error)))
  (type $invoke-ty (func (param "type-id" string) (param "ctx" $node-context) (param "input-json" string) (result $invoke-result)))
  (func $invoke (type $invoke-ty) (canon lift (core func $i "invoke") (memory $mem) (realloc $realloc) string-encoding=utf8))
  (instance $node
    (export "pack-name" (func $pack-name))
    (export "nodes" (func $nodes))
    (export "invoke" (func $invoke)))
  (export "openwop:node/node@0.1.0" (instance $node)))"#
    )
}

const MEM: &str = r#"(memory (export "memory") 1)"#;
/// `Ok("{"ok":true}")`.
const OK_BODY: &str = "(i32.store8 (i32.const 700) (i32.const 0)) (i32.store (i32.const 704) (i32.const 128)) (i32.store (i32.const 708) (i32.const 11)) (i32.const 700)";
/// `Ok(input-json)`: echoes the input.
const ECHO_BODY: &str = "(i32.store8 (i32.const 700) (i32.const 0)) (i32.store (i32.const 704) (local.get 11)) (i32.store (i32.const 708) (local.get 12)) (i32.const 700)";
/// `Err(node-error{code:"quota_exceeded", message, details-json: Some("{"limit":3}")})`.
const TYPED_ERROR_BODY: &str = "(i32.store8 (i32.const 700) (i32.const 1))
      (i32.store (i32.const 704) (i32.const 160)) (i32.store (i32.const 708) (i32.const 14))
      (i32.store (i32.const 712) (i32.const 192)) (i32.store (i32.const 716) (i32.const 34))
      (i32.store8 (i32.const 720) (i32.const 1)) (i32.store (i32.const 724) (i32.const 240)) (i32.store (i32.const 728) (i32.const 11))
      (i32.const 700)";
const LOOP_BODY: &str = "(loop $l (br $l)) (unreachable)";
/// Grow memory 1 MiB at a time until refused, then trap (like an allocator abort).
const MEMORY_BOMB_BODY: &str =
    "(loop $l (br_if $l (i32.ne (memory.grow (i32.const 16)) (i32.const -1)))) (unreachable)";

async fn load_wat(wat: &str, grants: Grants) -> Result<Arc<LoadedPack>, SandboxError> {
    let bytes = wat::parse_str(wat).unwrap_or_else(|e| panic!("fixture WAT: {e}\n{wat}"));
    sandbox()
        .load(
            bytes,
            LoadOptions::new(PackFormat::Component).grants(grants),
        )
        .await
}

async fn invoke_wat(
    pack: &Arc<LoadedPack>,
    input: Value,
    limits: Option<Limits>,
) -> Result<wopbox_sandbox::InvokeOutcome, SandboxError> {
    let mut req = InvokeRequest::new("vendor.test.wat.node", input);
    req.limits = limits;
    sandbox().invoke(pack, req).await
}

#[tokio::test]
async fn wat_component_round_trip_and_typed_error() {
    let pack = load_wat(&wat_component("", ECHO_BODY, None, MEM), Grants::none())
        .await
        .expect("load");
    assert_eq!(pack.name(), "vendor.test.wat");
    assert_eq!(pack.node_type_ids(), ["vendor.test.wat.node".to_string()]);
    let out = invoke_wat(&pack, json!({"name": "openwop", "n": [1, 2]}), None)
        .await
        .unwrap();
    assert_eq!(
        out.result,
        GuestResult::Completed(json!({"name": "openwop", "n": [1, 2]}))
    );

    let pack = load_wat(
        &wat_component("", TYPED_ERROR_BODY, None, MEM),
        Grants::none(),
    )
    .await
    .unwrap();
    let out = invoke_wat(&pack, json!({}), None).await.unwrap();
    assert_eq!(
        out.result,
        GuestResult::Failed {
            code: "quota_exceeded".into(),
            message: "typed failure from a WAT component".into(),
            details: Some(json!({"limit": 3})),
        }
    );
}

/// Imports that must be refused at load, with the expected outcome.
fn forbidden_imports() -> Vec<(
    &'static str,
    &'static str,
    Option<EscapeKind>,
    Option<&'static str>,
)> {
    vec![
        (
            "wasi:cli/environment",
            r#"(import "wasi:cli/environment@0.2.0" (instance (export "get-environment" (func (result (list (tuple string string)))))))"#,
            Some(EscapeKind::HostEnv),
            None,
        ),
        (
            "wasi:filesystem/types",
            r#"(import "wasi:filesystem/types@0.2.0" (instance))"#,
            Some(EscapeKind::HostFs),
            None,
        ),
        (
            "wasi:filesystem/preopens",
            r#"(import "wasi:filesystem/preopens@0.2.6" (instance))"#,
            Some(EscapeKind::HostFs),
            None,
        ),
        (
            "wasi:sockets/tcp",
            r#"(import "wasi:sockets/tcp@0.2.0" (instance))"#,
            Some(EscapeKind::Network),
            None,
        ),
        (
            "wasi:sockets/ip-name-lookup",
            r#"(import "wasi:sockets/ip-name-lookup@0.2.0" (instance))"#,
            Some(EscapeKind::Network),
            None,
        ),
        (
            "wasi:http/outgoing-handler",
            r#"(import "wasi:http/outgoing-handler@0.2.0" (instance))"#,
            Some(EscapeKind::Network),
            None,
        ),
        (
            "wasi:cli/run (as an import)",
            r#"(import "wasi:cli/run@0.2.0" (instance))"#,
            Some(EscapeKind::HostProcess),
            None,
        ),
        (
            "openwop:node/fetch",
            r#"(import "openwop:node/fetch@0.1.0" (instance (export "fetch" (func (param "url" string) (result string)))))"#,
            None,
            Some("fetch"),
        ),
        (
            "vendor interface",
            r#"(import "acme:secrets/vault" (instance))"#,
            None,
            Some("acme:secrets/vault"),
        ),
        (
            "world-level function",
            r#"(import "privileged" (func))"#,
            None,
            Some("privileged"),
        ),
    ]
}

#[tokio::test]
async fn forbidden_imports_refused_before_instantiation() {
    // Every fixture also has a start function that spins forever: had the
    // sandbox instantiated it, the load would end in a timeout, not in the
    // static refusal.
    for (what, import, kind, capability) in forbidden_imports() {
        let wat = wat_component(import, OK_BODY, Some("(loop $l (br $l))"), MEM);
        let started = Instant::now();
        let err = load_wat(&wat, Grants::none()).await.expect_err(what);
        assert!(
            started.elapsed() < Duration::from_millis(900),
            "{what}: refusal must not wait for guest code"
        );
        match (kind, capability) {
            (Some(kind), _) => {
                assert_eq!(err.code(), "sandbox_escape_attempt", "{what}: {err:?}");
                assert_eq!(escape_kind(&err), kind, "{what}");
                assert_eq!(err.details()["escapeKind"], kind.as_str());
            }
            (None, Some(cap)) => {
                assert_eq!(err.code(), "sandbox_capability_denied", "{what}: {err:?}");
                assert_eq!(err.details()["requestedCapability"], cap, "{what}");
            }
            _ => unreachable!(),
        }
    }
}

#[tokio::test]
async fn sockets_refused_even_with_every_grant() {
    let (_t, data) = fixture_dir();
    let all = Grants {
        preopened_dirs: vec![ro(&data)],
        env: vec![("A".into(), "1".into())],
        outbound_hosts: vec!["api.example.com".into()],
        allowed_host_calls: vec!["fetch".into()],
        env_read: true,
    };
    for (import, kind) in [
        (
            r#"(import "wasi:sockets/tcp@0.2.0" (instance))"#,
            EscapeKind::Network,
        ),
        (
            r#"(import "wasi:http/incoming-handler@0.2.0" (instance))"#,
            EscapeKind::Network,
        ),
    ] {
        let err = load_wat(&wat_component(import, OK_BODY, None, MEM), all.clone())
            .await
            .unwrap_err();
        assert_eq!(escape_kind(&err), kind);
    }
    // No component host capability exists yet: granting `fetch` does not
    // make an `openwop:node/fetch` import linkable.
    let fetch = r#"(import "openwop:node/fetch@0.1.0" (instance))"#;
    let err = load_wat(&wat_component(fetch, OK_BODY, None, MEM), all)
        .await
        .unwrap_err();
    assert_eq!(err.code(), "sandbox_capability_denied");
}

#[tokio::test]
async fn wall_clock_trips_on_infinite_loop() {
    let pack = load_wat(&wat_component("", LOOP_BODY, None, MEM), Grants::none())
        .await
        .unwrap();
    let limits = Limits::default()
        .with_fuel(None)
        .with_wall_clock(Duration::from_millis(300));
    let started = Instant::now();
    let err = invoke_wat(&pack, json!({}), Some(limits))
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert!(matches!(err, SandboxError::Timeout { .. }), "{err:?}");
    assert_eq!(err.code(), "sandbox_timeout");
    assert!(took < Duration::from_secs(3), "{took:?}");
    // The pack is still usable: the next call gets a fresh instance.
    let err = invoke_wat(
        &pack,
        json!({}),
        Some(
            Limits::default()
                .with_fuel(None)
                .with_wall_clock(Duration::from_millis(100)),
        ),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, SandboxError::Timeout { .. }));
}

/// Imports `wasi:io/poll` + `wasi:clocks/monotonic-clock` and lowers
/// `subscribe-duration` and `pollable.block` into the core module.
const SLEEP_IMPORTS: &str = r#"
  (type $poll-ty (instance
    (export "pollable" (type (sub resource)))
    (type (borrow 0))
    (type (func (param "self" 1)))
    (export "[method]pollable.block" (func (type 2)))))
  (import "wasi:io/poll@0.2.0" (instance $poll (type $poll-ty)))
  (alias export $poll "pollable" (type $pollable))
  (type $clock-ty (instance
    (alias outer 1 $pollable (type))
    (export "pollable" (type (eq 0)))
    (type (own 1))
    (type (func (param "when" u64) (result 2)))
    (export "subscribe-duration" (func (type 3)))))
  (import "wasi:clocks/monotonic-clock@0.2.0" (instance $clock (type $clock-ty)))"#;
const SLEEP_LOWERED: &str = r#"
  (alias export $poll "[method]pollable.block" (func $block))
  (alias export $clock "subscribe-duration" (func $subscribe))
  (core func $block-core (canon lower (func $block)))
  (core func $subscribe-core (canon lower (func $subscribe)))
  (core instance $host (export "block" (func $block-core)) (export "subscribe" (func $subscribe-core)))"#;
const SLEEP_CORE_IMPORTS: &str = r#"
    (import "host" "subscribe" (func $subscribe (param i64) (result i32)))
    (import "host" "block" (func $block (param i32)))"#;
/// Sleep 60 s inside the host (`subscribe-duration` + `block`), then answer.
const SLEEP_BODY: &str = "(call $block (call $subscribe (i64.const 60000000000))) (i32.store8 (i32.const 700) (i32.const 0)) (i32.store (i32.const 704) (i32.const 128)) (i32.store (i32.const 708) (i32.const 11)) (i32.const 700)";

#[tokio::test]
async fn wall_clock_covers_time_blocked_in_host_calls() {
    // Epochs only interrupt running wasm; a guest parked in a WASI sleep is
    // abandoned at the deadline instead, and its worker thread and
    // concurrency slot are free again at once (not after 60 s).
    let sb = Sandbox::new(SandboxConfig {
        max_concurrent: 1,
        ..SandboxConfig::default()
    })
    .unwrap();
    let wat = wat_component_with(
        SLEEP_IMPORTS,
        SLEEP_LOWERED,
        SLEEP_CORE_IMPORTS,
        SLEEP_BODY,
        None,
        MEM,
    );
    let bytes = wat::parse_str(&wat).unwrap();
    let pack = sb
        .load(bytes, LoadOptions::new(PackFormat::Component))
        .await
        .expect("load");
    let limits = Limits::default().with_wall_clock(Duration::from_millis(200));
    for _ in 0..3 {
        let started = Instant::now();
        let req = InvokeRequest::new("vendor.test.wat.node", json!({})).limits(limits.clone());
        let err = sb.invoke(&pack, req).await.unwrap_err();
        let took = started.elapsed();
        assert!(matches!(err, SandboxError::Timeout { .. }), "{err:?}");
        // With one slot, a guest still sleeping would make the next call
        // queue behind it; every call returning promptly shows the slot
        // was released.
        assert!(took < Duration::from_millis(1500), "{took:?}");
    }
}

#[tokio::test]
async fn fuel_trips_on_infinite_loop() {
    let pack = load_wat(&wat_component("", LOOP_BODY, None, MEM), Grants::none())
        .await
        .unwrap();
    let limits = Limits::default()
        .with_fuel(Some(5_000_000))
        .with_wall_clock(Duration::from_secs(30));
    let err = invoke_wat(&pack, json!({}), Some(limits))
        .await
        .unwrap_err();
    assert!(
        matches!(err, SandboxError::FuelExhausted { limit: 5_000_000 }),
        "{err:?}"
    );
    assert_eq!(err.details()["reason"], "fuel");
}

#[tokio::test]
async fn wall_clock_covers_instantiation() {
    // A core start function that never returns: instantiation itself must
    // be interrupted (here during the load-time handshake, which runs under
    // the load limits' 1 s wall clock).
    let wat = wat_component("", OK_BODY, Some("(loop $l (br $l))"), MEM);
    let started = Instant::now();
    let err = load_wat(&wat, Grants::none()).await.unwrap_err();
    assert!(
        matches!(
            err,
            SandboxError::Timeout { .. } | SandboxError::FuelExhausted { .. }
        ),
        "{err:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn memory_cap_trips() {
    let pack = load_wat(
        &wat_component("", MEMORY_BOMB_BODY, None, MEM),
        Grants::none(),
    )
    .await
    .unwrap();
    let limits = Limits::default().with_memory_bytes(8 << 20);
    let err = invoke_wat(&pack, json!({}), Some(limits))
        .await
        .unwrap_err();
    match &err {
        SandboxError::MemoryExceeded {
            limit_bytes,
            requested_bytes,
            ..
        } => {
            assert_eq!(*limit_bytes, 8 << 20);
            assert!(requested_bytes.unwrap() > 8 << 20);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(err.code(), "sandbox_memory_exceeded");
    // A declared minimum over the cap fails at instantiation, as memory.
    let big = r#"(memory (export "memory") 512)"#; // 32 MiB
    let pack = load_wat(&wat_component("", OK_BODY, None, big), Grants::none()).await;
    match pack {
        // The handshake (64 MiB default cap) may accept it; the invocation
        // with an 8 MiB cap must not.
        Ok(pack) => {
            let err = invoke_wat(
                &pack,
                json!({}),
                Some(Limits::default().with_memory_bytes(8 << 20)),
            )
            .await
            .unwrap_err();
            assert_eq!(err.code(), "sandbox_memory_exceeded", "{err:?}");
        }
        Err(e) => assert_eq!(e.code(), "sandbox_memory_exceeded", "{e:?}"),
    }
}

#[tokio::test]
async fn declared_bounds_checked_at_load() {
    // Two defined memories would make the per-memory byte cap a
    // per-instance cap of twice the size: refused before compiling.
    let two = r#"(memory (export "memory") 1) (memory $second 1)"#;
    let err = load_wat(&wat_component("", OK_BODY, None, two), Grants::none())
        .await
        .unwrap_err();
    assert!(matches!(err, SandboxError::InvalidModule { .. }), "{err:?}");
    assert!(err.to_string().contains("linear memories"), "{err}");
    // An initial memory over the pack's cap.
    let huge = r#"(memory (export "memory") 2048)"#; // 128 MiB > 64 MiB default
    let err = load_wat(&wat_component("", OK_BODY, None, huge), Grants::none())
        .await
        .unwrap_err();
    assert_eq!(err.code(), "sandbox_memory_exceeded", "{err:?}");
    // Shared memories are refused.
    let shared = r#"(memory (export "memory") 1 1 shared)"#;
    assert!(
        load_wat(&wat_component("", OK_BODY, None, shared), Grants::none())
            .await
            .is_err()
    );
}

#[tokio::test]
async fn component_output_cap() {
    let pack = load_wat(&wat_component("", ECHO_BODY, None, MEM), Grants::none())
        .await
        .unwrap();
    let big = json!({"s": "y".repeat(10_000)});
    let err = invoke_wat(
        &pack,
        big,
        Some(Limits::default().with_max_output_bytes(1024)),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), "sandbox_invocation_error");
    assert!(matches!(err, SandboxError::AbiViolation { .. }), "{err:?}");
}
