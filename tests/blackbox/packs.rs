//! Packs on the wire: upload, registry routes, CLI, runs of sandboxed nodes, and the RFC 0035
//! §B invariants proven through the production path (upload over HTTP, `POST /v1/runs`).

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::harness::{assert_envelope, node, read, workflow, Host, Options, KEY};

/// The repository's `packs/` directory.
pub fn packs_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../packs")
}

/// A host with the repository's example packs installed by the operator.
async fn host_with_packs(extra: &[&str]) -> Host {
    let mut extra_args = vec!["--packs".to_string(), packs_dir().display().to_string()];
    extra_args.extend(extra.iter().map(|s| s.to_string()));
    Host::start_with(Options {
        extra_args,
        ..Options::default()
    })
    .await
}

/// A gzipped tarball of (path, bytes) entries.
pub fn tgz(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut b = tar::Builder::new(gz);
    for (path, bytes) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_size(bytes.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, path, *bytes).unwrap();
    }
    b.into_inner().unwrap().finish().unwrap()
}

pub fn manifest(name: &str, version: &str, type_id: &str, extra_runtime: Value) -> Value {
    let mut runtime = json!({"language": "wasm", "format": "wasm", "entry": "module.wasm", "wasm": {"abiVersion": 1}});
    if let (Some(r), Some(e)) = (runtime.as_object_mut(), extra_runtime.as_object()) {
        for (k, v) in e {
            r.insert(k.clone(), v.clone());
        }
    }
    json!({
        "name": name,
        "version": version,
        "engines": {"openwop": ">=1.0.0 <2.0.0"},
        "nodes": [{"typeId": type_id, "version": version, "category": "data", "role": "pure"}],
        "runtime": runtime,
    })
}

fn wat_str(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

fn packed(ptr: usize, len: usize) -> String {
    format!("(i64.or (i64.shl (i64.const {len}) (i64.const 32)) (i64.const {ptr}))")
}

/// An RFC 0008 module (packed-i64 encoding) with one node. `imports` are extra import lines;
/// `body` is the body of `openwop_node_invoke` and may use `$ok` / `$alt` helpers that return
/// the two canned responses' (ptr,len).
pub fn rfc0008_module(pack: &str, type_id: &str, imports: &str, body: &str) -> Vec<u8> {
    let ok = r#"{"outcome":"completed","output":{"shared":1}}"#;
    let alt = r#"{"outcome":"completed","output":{"shared":"leaked"}}"#;
    let text = format!(
        r#"(module
  {imports}
  (memory (export "memory") 2)
  (global $heap (mut i32) (i32.const 65536))
  (global $calls (mut i32) (i32.const 0))
  (data (i32.const 1024) "{pack}")
  (data (i32.const 2048) "{tid}")
  (data (i32.const 4096) "{ok}")
  (data (i32.const 8192) "{alt}")
  (func $ok (result i64) {ok_packed})
  (func $alt (result i64) {alt_packed})
  (func (export "openwop_abi_version") (result i32) (i32.const 1))
  (func (export "openwop_pack_name") (result i64) {pack_packed})
  (func (export "openwop_node_count") (result i32) (i32.const 1))
  (func (export "openwop_node_id_at") (param i32) (result i64)
    (if (result i64) (local.get 0) (then (i64.const 0)) (else {tid_packed})))
  (func (export "openwop_alloc") (param i32) (result i32) (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (local.get 0)))
    (local.get $p))
  (func (export "openwop_free") (param i32 i32))
  (func (export "openwop_node_invoke") (param i32 i32 i32) (result i64)
    {body}))"#,
        tid = wat_str(type_id),
        ok = wat_str(ok),
        alt = wat_str(alt),
        ok_packed = packed(4096, ok.len()),
        alt_packed = packed(8192, alt.len()),
        pack_packed = packed(1024, pack.len()),
        tid_packed = packed(2048, type_id.len()),
    );
    wat::parse_str(&text).unwrap_or_else(|e| panic!("bad test WAT: {e}\n{text}"))
}

impl Host {
    /// `PUT /v1/packs/{name}/-/{version}.tgz` with a gzip body.
    pub async fn publish(&self, name: &str, version: &str, body: Vec<u8>) -> (StatusCode, Value) {
        let resp = self
            .req(Method::PUT, &format!("/v1/packs/{name}/-/{version}.tgz"))
            .header("content-type", "application/gzip")
            .body(body)
            .send()
            .await
            .expect("publish request");
        read(resp).await
    }

    /// Publishes a single-module pack built from `manifest` + `module`.
    pub async fn publish_module(&self, manifest: &Value, module: &[u8]) -> (StatusCode, Value) {
        let m = serde_json::to_vec(manifest).unwrap();
        let name = manifest["name"].as_str().unwrap();
        let version = manifest["version"].as_str().unwrap();
        self.publish(
            name,
            version,
            tgz(&[("pack.json", &m), ("module.wasm", module)]),
        )
        .await
    }

    /// Builds a one-node RFC 0008 module from `body` (see [`rfc0008_module`]), publishes it as
    /// `name@version` providing `type_id`, and asserts it was installed.
    pub async fn install_rfc0008(&self, name: &str, version: &str, type_id: &str, body: &str) {
        let module = rfc0008_module(name, type_id, "", body);
        let (s, b) = self
            .publish_module(&manifest(name, version, type_id, json!({})), &module)
            .await;
        assert_eq!(s, StatusCode::CREATED, "{b}");
    }

    /// Registers a one-node workflow `wf` running `type_id` with `ports` as static input values
    /// and returns the terminal snapshot and events of one run.
    pub async fn run_single(&self, wf: &str, type_id: &str, ports: Value) -> (Value, Vec<Value>) {
        self.register(workflow(
            wf,
            json!([node("n", type_id, json!({}), static_ports(&ports))]),
            json!([]),
            json!([]),
        ))
        .await;
        let run = self.create_run(wf, json!({})).await;
        let snap = self.wait_terminal(&run, Duration::from_secs(30)).await;
        let events = self.events(&run).await;
        (snap, events)
    }
}

/// `{"k": v}` → `{"k": {"type": "static", "value": v}}`.
pub fn static_ports(values: &Value) -> Value {
    let mut m = serde_json::Map::new();
    for (k, v) in values.as_object().into_iter().flatten() {
        m.insert(k.clone(), json!({"type": "static", "value": v}));
    }
    Value::Object(m)
}

fn find<'a>(events: &'a [Value], ty: &str) -> &'a Value {
    events
        .iter()
        .find(|e| e["type"] == ty)
        .unwrap_or_else(|| panic!("no {ty} event in {events:#?}"))
}

/// Runs the `wopbox` binary with `args` (no server URL or key from the environment).
pub fn wopbox(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_wopbox"))
        .args(args)
        .env_remove("WOPBOX_URL")
        .env_remove("WOPBOX_API_KEY")
        .output()
        .expect("run wopbox")
}

#[tokio::test]
async fn cli_pushes_the_greeting_pack_registers_a_workflow_and_the_run_greets() {
    let h = Host::start().await;
    let greet = packs_dir().join("greet");
    let out = wopbox(&[
        "pack",
        "push",
        &greet.display().to_string(),
        "--url",
        &h.base,
        "--api-key",
        KEY,
    ]);
    assert!(
        out.status.success(),
        "pack push failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: Value = serde_json::from_slice(&out.stdout).expect("pack push prints JSON");
    assert_eq!(printed["name"], "vendor.wopbox.greet");
    assert_eq!(printed["typeIds"], json!(["vendor.wopbox.greet.hello"]));

    let dir = tempfile::tempdir().unwrap();
    let wf_file = dir.path().join("wf.json");
    let wf = workflow(
        "greet-wf",
        json!([node(
            "hello",
            "vendor.wopbox.greet.hello",
            json!({}),
            static_ports(&json!({"name": "Ada"}))
        )]),
        json!([]),
        json!([]),
    );
    std::fs::write(&wf_file, serde_json::to_vec(&wf).unwrap()).unwrap();
    let out = wopbox(&[
        "workflow",
        "put",
        &wf_file.display().to_string(),
        "--url",
        &h.base,
        "--api-key",
        KEY,
    ]);
    assert!(
        out.status.success(),
        "workflow put failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let run = h.create_run("greet-wf", json!({})).await;
    let snap = h.wait_terminal(&run, Duration::from_secs(30)).await;
    assert_eq!(snap["status"], "completed", "{snap}");
    let events = h.events(&run).await;
    let done = find(&events, "node.completed");
    assert_eq!(done["payload"]["outputs"]["greeting"], "Hello, Ada!");
    let metrics = &done["payload"]["metrics"];
    assert!(metrics["fuelConsumed"].as_u64().unwrap() > 0, "{metrics}");
    assert!(
        metrics["peakMemoryBytes"].as_u64().unwrap() >= 65536,
        "{metrics}"
    );
    assert!(metrics["durationMs"].as_f64().is_some(), "{metrics}");
    assert_eq!(metrics["pack"], "vendor.wopbox.greet");
}

#[tokio::test]
async fn cli_push_exits_non_zero_with_the_servers_error() {
    let h = Host::start().await;
    let abi = packs_dir().join("misbehaving-abi");
    let out = wopbox(&[
        "pack",
        "push",
        &abi.display().to_string(),
        "--url",
        &h.base,
        "--api-key",
        KEY,
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("pack_load_failure") && err.contains("unsupported_abi_version"),
        "{err}"
    );
    // Wrong key: 401 surfaces as an error too.
    let greet = packs_dir().join("greet");
    let out = wopbox(&[
        "pack",
        "push",
        &greet.display().to_string(),
        "--url",
        &h.base,
        "--api-key",
        "nope",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unauthenticated"));
    // A directory without pack.json never reaches the server.
    let out = wopbox(&[
        "pack",
        "push",
        "/nonexistent-dir",
        "--url",
        &h.base,
        "--api-key",
        KEY,
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("pack.json"));
}

#[tokio::test]
async fn registry_routes_list_get_fetch_and_delete() {
    let h = Host::start().await;
    let module = std::fs::read(packs_dir().join("greet/greet.wasm")).unwrap();
    let mut m: Value =
        serde_json::from_slice(&std::fs::read(packs_dir().join("greet/pack.json")).unwrap())
            .unwrap();
    m["runtime"]["entry"] = json!("module.wasm");
    let (s, body) = h.publish_module(&m, &module).await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    assert_eq!(body["scope"], "tenant");

    // Same version again: immutable.
    let (s, body) = h.publish_module(&m, &module).await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert_envelope(&body, "version_conflict");

    let (s, list) = h.get("/v1/packs").await;
    assert_eq!(s, StatusCode::OK);
    assert!(list["packs"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["name"] == "vendor.wopbox.greet"));
    let (s, v) = h.get("/v1/packs/vendor.wopbox.greet").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["dist-tags"]["latest"], "1.0.0");
    let (s, man) = h.get("/v1/packs/vendor.wopbox.greet/-/1.0.0.json").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(man["name"], "vendor.wopbox.greet");
    let resp = h
        .req(Method::GET, "/v1/packs/vendor.wopbox.greet/-/1.0.0.tgz")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "application/tar+gzip");
    assert!(resp.headers()["etag"]
        .to_str()
        .unwrap()
        .starts_with("\"sha256-"));
    assert!(resp.bytes().await.unwrap().starts_with(&[0x1f, 0x8b]));

    // Delete: the node type disappears with it.
    let resp = h
        .req(Method::DELETE, "/v1/packs/vendor.wopbox.greet/-/1.0.0")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let (s, body) = h.get("/v1/packs/vendor.wopbox.greet").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_envelope(&body, "not_found");
    let (s, body) = h
        .post(
            "/v1/workflows",
            workflow(
                "gone",
                json!([node("n", "vendor.wopbox.greet.hello", json!({}), json!({}))]),
                json!([]),
                json!([]),
            ),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
    let resp = h
        .req(Method::DELETE, "/v1/packs/vendor.wopbox.greet/-/1.0.0")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn bad_uploads_get_precise_errors_and_leave_nothing_behind() {
    let h = Host::start_with(Options {
        extra_args: vec!["--max-pack-bytes".into(), "200000".into()],
        ..Options::default()
    })
    .await;
    let module = rfc0008_module("vendor.test.ok", "vendor.test.ok.node", "", "(call $ok)");
    let good = manifest("vendor.test.ok", "1.0.0", "vendor.test.ok.node", json!({}));

    // Not a tarball.
    let (s, b) = h
        .publish("vendor.test.ok", "1.0.0", b"definitely not gzip".to_vec())
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_envelope(&b, "invalid_pack_archive");
    // Wrong content type.
    let resp = h
        .req(Method::PUT, "/v1/packs/vendor.test.ok/-/1.0.0.tgz")
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    let (s, b) = read(resp).await;
    assert_eq!(s, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_envelope(&b, "unsupported_media_type");
    // Integrity header that does not match.
    let body = tgz(&[
        ("pack.json", &serde_json::to_vec(&good).unwrap()),
        ("module.wasm", &module),
    ]);
    let resp = h
        .req(Method::PUT, "/v1/packs/vendor.test.ok/-/1.0.0.tgz")
        .header("content-type", "application/gzip")
        .header(
            "x-pack-sha256",
            "sha256-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        )
        .body(body.clone())
        .send()
        .await
        .unwrap();
    let (s, b) = read(resp).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_envelope(&b, "pack_integrity_failure");
    // URL that does not match the manifest.
    let (s, b) = h.publish("vendor.test.other", "1.0.0", body.clone()).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_envelope(&b, "manifest_mismatch");
    // Manifest problems carry a JSON pointer.
    let mut bad = good.clone();
    bad["nodes"][0]["typeId"] = json!("Not A TypeId");
    let (s, b) = h.publish_module(&bad, &module).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_envelope(&b, "invalid_manifest");
    assert_eq!(b["details"]["path"], "/nodes/0/typeId");
    // Reserved scope and other runtimes.
    let (s, b) = h
        .publish_module(
            &manifest("core.test.x", "1.0.0", "vendor.test.ok.node", json!({})),
            &module,
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_envelope(&b, "invalid_pack_scope");
    let (s, b) = h
        .publish_module(
            &manifest(
                "vendor.test.js",
                "1.0.0",
                "vendor.test.js.n",
                json!({"language": "javascript", "format": "esm"}),
            ),
            &module,
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_envelope(&b, "unsupported_runtime");
    // Declaring is not granting: the operator granted no filesystem.
    let (s, b) = h
        .publish_module(
            &manifest(
                "vendor.test.fs",
                "1.0.0",
                "vendor.test.fs.n",
                json!({"requires": ["fs.read"]}),
            ),
            &module,
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_envelope(&b, "pack_runtime_requirement_unmet");
    assert_eq!(b["details"]["unmet"], json!(["fs.read"]));
    // The manifest must describe the module truthfully.
    let (s, b) = h
        .publish_module(
            &manifest("vendor.test.ok", "1.0.0", "vendor.test.ok.other", json!({})),
            &module,
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_envelope(&b, "invalid_manifest");
    assert_eq!(b["details"]["path"], "/nodes");
    // Malformed wasm.
    let (s, b) = h.publish_module(&good, b"\0asm\x01\0\0\0garbage").await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_envelope(&b, "pack_load_failure");
    // Too large: 413 before anything is unpacked.
    let big: Vec<u8> = (0..300_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let (s, b) = h.publish("vendor.test.ok", "1.0.0", big).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    assert_envelope(&b, "payload_too_large");
    // No credential: 401 first.
    let resp = h
        .anon(Method::PUT, "/v1/packs/vendor.test.ok/-/1.0.0.tgz")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    let (s, b) = read(resp).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_envelope(&b, "unauthenticated");

    // None of that installed anything; the good upload still works afterwards.
    let (_, list) = h.get("/v1/packs").await;
    assert_eq!(list["packs"], json!([]));
    let (s, b) = h.publish("vendor.test.ok", "1.0.0", body).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
}

#[tokio::test]
async fn operator_packs_back_the_rfc0008_fixtures_and_the_abi_999_pack_is_absent() {
    let h = host_with_packs(&[]).await;
    let (_, d) = h.anon_get_discovery().await;
    let loaded = d["nodePackRuntimes"]["wasm"]["loadedPacks"]
        .as_array()
        .unwrap()
        .clone();
    assert!(
        loaded.contains(&json!("vendor.openwop.rust-hello")),
        "{loaded:?}"
    );
    assert!(
        loaded.contains(&json!("vendor.openwop.misbehaving")),
        "{loaded:?}"
    );
    assert!(
        !loaded.contains(&json!("vendor.openwop.misbehaving-abi")),
        "{loaded:?}"
    );
    assert_eq!(d["capabilities"]["nodePackRuntimes"], d["nodePackRuntimes"]);
    let fixtures = d["fixtures"].as_array().unwrap();
    for f in [
        "conformance-wasm-pack-roundtrip",
        "conformance-wasm-pack-memory-cap-breach",
    ] {
        assert!(
            fixtures.contains(&json!(f)),
            "{f} not advertised: {fixtures:?}"
        );
    }

    let run = h
        .create_run(
            "conformance-wasm-pack-roundtrip",
            json!({"name": "openwop"}),
        )
        .await;
    let snap = h.wait_terminal(&run, Duration::from_secs(30)).await;
    assert_eq!(snap["status"], "completed", "{snap}");
    let events = h.events(&run).await;
    assert_eq!(
        find(&events, "node.completed")["payload"]["outputs"]["greeting"],
        "Hello, openwop!"
    );

    let run = h
        .create_run("conformance-wasm-pack-memory-cap-breach", json!({}))
        .await;
    let snap = h.wait_terminal(&run, Duration::from_secs(30)).await;
    assert_eq!(snap["status"], "failed", "{snap}");
    let events = h.events(&run).await;
    let types = Host::event_types(&events);
    let breach = types
        .iter()
        .position(|t| t == "cap.breached")
        .expect("cap.breached");
    let failed = types
        .iter()
        .position(|t| t == "node.failed")
        .expect("node.failed");
    assert!(breach < failed, "{types:?}");
    let b = &events[breach]["payload"];
    assert_eq!(b["kind"], "wasm-memory");
    assert_eq!(b["nodeId"], "bomb");
    assert!(
        b["observed"].as_u64().unwrap() > b["limit"].as_u64().unwrap(),
        "{b}"
    );
    assert_eq!(
        events[failed]["payload"]["error"]["code"],
        "sandbox_memory_exceeded"
    );
    assert_eq!(types.last().unwrap(), "run.failed");
    // Operator packs are not the tenant's to delete.
    let resp = h
        .req(
            Method::DELETE,
            "/v1/packs/vendor.openwop.rust-hello/-/1.0.0",
        )
        .send()
        .await
        .unwrap();
    let (s, b) = read(resp).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert_envelope(&b, "forbidden");
}

#[tokio::test]
async fn uploaded_packs_survive_a_kill_9_restart() {
    let mut h = Host::start().await;
    h.install_rfc0008(
        "vendor.test.durable",
        "1.2.3",
        "vendor.test.durable.n",
        "(call $ok)",
    )
    .await;
    h.register(workflow(
        "durable-wf",
        json!([node("n", "vendor.test.durable.n", json!({}), json!({}))]),
        json!([]),
        json!([]),
    ))
    .await;
    let data = h.data_dir.clone();
    let tmp = h.take_tmp();
    h.kill9();
    let h2 = Host::start_with(Options {
        data_dir: Some(data),
        ..Options::default()
    })
    .await;
    let (s, v) = h2.get("/v1/packs/vendor.test.durable").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["dist-tags"]["latest"], "1.2.3");
    let run = h2.create_run("durable-wf", json!({})).await;
    let snap = h2.wait_terminal(&run, Duration::from_secs(30)).await;
    assert_eq!(snap["status"], "completed", "{snap}");
    drop(tmp);
}

/// Uploads a hostile pack whose module imports `import`: the upload is refused before any of its
/// code runs, the refusal names the spec code and detail, the typeId never becomes runnable, and
/// honest runs keep completing.
async fn refused_at_upload(h: &Host, tag: &str, import: &str, code: &str, detail: (&str, &str)) {
    let name = format!("vendor.hostile.{tag}");
    let tid = format!("{name}.n");
    let module = rfc0008_module(&name, &tid, import, "(call $ok)");
    let (s, b) = h
        .publish_module(&manifest(&name, "1.0.0", &tid, json!({})), &module)
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{tag}: {b}");
    assert_envelope(&b, "pack_load_failure");
    assert_eq!(b["details"]["sandboxError"], code, "{tag}: {b}");
    assert_eq!(
        b["details"]["sandboxDetails"][detail.0], detail.1,
        "{tag}: {b}"
    );
    let (s, b) = h
        .post(
            "/v1/workflows",
            workflow(
                &format!("wf-{tag}"),
                json!([node("n", &tid, json!({}), json!({}))]),
                json!([]),
                json!([]),
            ),
        )
        .await;
    assert_eq!(
        s,
        StatusCode::BAD_REQUEST,
        "{tag}: a workflow using a refused pack must not register: {b}"
    );
    let run = h.create_run("conformance-noop", json!({})).await;
    assert_eq!(
        h.wait_terminal(&run, Duration::from_secs(10)).await["status"],
        "completed"
    );
}

#[tokio::test]
async fn invariant_fs_env_network_process_and_capability_gate_refused_before_code_runs() {
    let h = Host::start().await;
    // (tag, import line, expected sandbox code, (detail field, expected value))
    let cases = [
        (
            "fs",
            r#"(import "wasi_snapshot_preview1" "fd_read" (func (param i32 i32 i32 i32) (result i32)))"#,
            "sandbox_escape_attempt",
            ("escapeKind", "host-fs-escape"),
        ),
        (
            "fswrite",
            r#"(import "wasi_snapshot_preview1" "path_open" (func (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))"#,
            "sandbox_escape_attempt",
            ("escapeKind", "host-fs-escape"),
        ),
        (
            "env",
            r#"(import "wasi_snapshot_preview1" "environ_get" (func (param i32 i32) (result i32)))"#,
            "sandbox_escape_attempt",
            ("escapeKind", "host-env-leak"),
        ),
        (
            "net",
            r#"(import "wasi_snapshot_preview1" "sock_connect" (func (param i32 i32) (result i32)))"#,
            "sandbox_escape_attempt",
            ("escapeKind", "network-escape"),
        ),
        (
            "proc",
            r#"(import "wasi_snapshot_preview1" "proc_exit" (func (param i32)))"#,
            "sandbox_escape_attempt",
            ("escapeKind", "host-process-escape"),
        ),
        (
            "cap",
            r#"(import "openwop" "privileged" (func (param i32) (result i32)))"#,
            "sandbox_capability_denied",
            ("requestedCapability", "privileged"),
        ),
    ];
    for (tag, import, code, detail) in cases {
        refused_at_upload(&h, tag, import, code, detail).await;
    }
}

#[tokio::test]
async fn invariant_memory_cap_fails_the_run_with_cap_breached() {
    let h = Host::start().await;
    let body = "(block $d (loop $g (br_if $d (i32.eq (memory.grow (i32.const 64)) (i32.const -1))) (br $g))) unreachable";
    h.install_rfc0008("vendor.hostile.mem", "1.0.0", "vendor.hostile.mem.n", body)
        .await;
    let (snap, events) = h
        .run_single("wf-mem", "vendor.hostile.mem.n", json!({}))
        .await;
    assert_eq!(snap["status"], "failed");
    let breach = &find(&events, "cap.breached")["payload"];
    assert_eq!(breach["kind"], "wasm-memory");
    assert_eq!(breach["limit"], 64 << 20);
    let err = &find(&events, "node.failed")["payload"]["error"];
    assert_eq!(err["code"], "sandbox_memory_exceeded");
    assert_eq!(err["details"]["limitBytes"], 64 << 20);
    assert_eq!(
        find(&events, "run.failed")["payload"]["error"]["code"],
        "sandbox_memory_exceeded"
    );
}

#[tokio::test]
async fn invariant_timeout_fails_the_run_while_honest_runs_keep_completing() {
    let h = Host::start_with(Options {
        // Unmetered fuel: this test is about the wall clock alone.
        extra_args: vec![
            "--sandbox-wall-clock-ms".into(),
            "3000".into(),
            "--sandbox-fuel".into(),
            "0".into(),
        ],
        ..Options::default()
    })
    .await;
    h.install_rfc0008(
        "vendor.hostile.spin",
        "1.0.0",
        "vendor.hostile.spin.n",
        "(loop $l (br $l)) (i64.const 0)",
    )
    .await;
    h.register(workflow(
        "wf-spin",
        json!([node("n", "vendor.hostile.spin.n", json!({}), json!({}))]),
        json!([]),
        json!([]),
    ))
    .await;
    // Several hostile runs at once occupy the sandbox's slots...
    let mut hostile = Vec::new();
    for _ in 0..4 {
        hostile.push(h.create_run("wf-spin", json!({})).await);
    }
    // ...and honest runs still complete while they spin.
    for _ in 0..5 {
        let run = h.create_run("conformance-noop", json!({})).await;
        assert_eq!(
            h.wait_terminal(&run, Duration::from_secs(10)).await["status"],
            "completed"
        );
    }
    // ...and so do honest *sandboxed* runs: one pack cannot hold every sandbox slot.
    let greet = packs_dir().join("greet");
    let (s, b) = h
        .publish(
            "vendor.wopbox.greet",
            "1.0.0",
            tgz(&[
                (
                    "pack.json",
                    &std::fs::read(greet.join("pack.json")).unwrap(),
                ),
                (
                    "greet.wasm",
                    &std::fs::read(greet.join("greet.wasm")).unwrap(),
                ),
            ]),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    for i in 0..3 {
        let (snap, events) = h
            .run_single(
                &format!("wf-greet-{i}"),
                "vendor.wopbox.greet.hello",
                json!({"name": "honest"}),
            )
            .await;
        assert_eq!(snap["status"], "completed", "{events:#?}");
    }
    // The hostile runs were still executing while the honest ones were served.
    for run in &hostile {
        let snap = h.snapshot(run).await;
        assert!(
            !["completed", "failed", "cancelled"].contains(&snap["status"].as_str().unwrap_or("")),
            "a hostile run ended before the honest runs were served: {snap}"
        );
    }
    for run in hostile {
        let snap = h.wait_terminal(&run, Duration::from_secs(30)).await;
        assert_eq!(snap["status"], "failed", "{snap}");
        let events = h.events(&run).await;
        let err = &find(&events, "node.failed")["payload"]["error"];
        assert_eq!(err["code"], "sandbox_timeout", "{err}");
        // The epoch deadline is enforced to within a tick (1 ms) and reported in whole ms.
        assert_eq!(err["details"]["limitMs"], 3000, "{err}");
        assert!(
            err["details"]["elapsedMs"].as_u64().unwrap() >= 2998,
            "{err}"
        );
        assert_eq!(
            find(&events, "cap.breached")["payload"]["kind"],
            "wasm-execution-time"
        );
    }
}

#[tokio::test]
async fn invariant_fuel_budget_fails_the_run_with_wasm_fuel() {
    let h = Host::start_with(Options {
        extra_args: vec![
            "--sandbox-fuel".into(),
            "100000".into(),
            "--sandbox-wall-clock-ms".into(),
            "20000".into(),
        ],
        ..Options::default()
    })
    .await;
    h.install_rfc0008(
        "vendor.hostile.burn",
        "1.0.0",
        "vendor.hostile.burn.n",
        "(loop $l (br $l)) (i64.const 0)",
    )
    .await;
    let (snap, events) = h
        .run_single("wf-burn", "vendor.hostile.burn.n", json!({}))
        .await;
    assert_eq!(snap["status"], "failed");
    assert_eq!(
        find(&events, "cap.breached")["payload"]["kind"],
        "wasm-fuel"
    );
    let err = &find(&events, "node.failed")["payload"]["error"];
    assert_eq!(err["code"], "sandbox_timeout");
    assert_eq!(err["details"]["reason"], "fuel");
}

#[tokio::test]
async fn invariant_no_state_survives_between_invocations() {
    let h = Host::start().await;
    // Counts calls in a module global: a reused instance would answer "leaked".
    let body = "(global.set $calls (i32.add (global.get $calls) (i32.const 1))) \
                (if (result i64) (i32.eq (global.get $calls) (i32.const 1)) (then (call $ok)) (else (call $alt)))";
    h.install_rfc0008(
        "vendor.hostile.state",
        "1.0.0",
        "vendor.hostile.state.n",
        body,
    )
    .await;
    h.register(workflow(
        "wf-state",
        json!([node("n", "vendor.hostile.state.n", json!({}), json!({}))]),
        json!([]),
        json!([]),
    ))
    .await;
    for _ in 0..3 {
        let run = h.create_run("wf-state", json!({})).await;
        assert_eq!(
            h.wait_terminal(&run, Duration::from_secs(10)).await["status"],
            "completed"
        );
        let events = h.events(&run).await;
        assert_eq!(
            find(&events, "node.completed")["payload"]["outputs"]["shared"],
            1
        );
    }
}

#[tokio::test]
async fn component_pack_reads_a_granted_directory_and_is_refused_without_the_grant() {
    let data = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("hello.txt"), "hi from the host").unwrap();
    let policy_dir = tempfile::tempdir().unwrap();
    let policy = policy_dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        format!(
            "[packs.\"vendor.wopbox.files\"]\nruntime = [\"env.read\"]\npreopens = [{{ host = \"{}\", guest = \"/data\", mode = \"ro\" }}]\n",
            data.path().display()
        ),
    )
    .unwrap();
    let files = packs_dir().join("files-component");
    let m = std::fs::read(files.join("pack.json")).unwrap();
    let wasm = std::fs::read(files.join("files_component.wasm")).unwrap();
    let body = tgz(&[("pack.json", &m), ("files_component.wasm", &wasm)]);

    // Without a grant: refused at upload, naming what is missing.
    let plain = Host::start().await;
    let (s, b) = plain
        .publish("vendor.wopbox.files", "0.1.0", body.clone())
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_envelope(&b, "pack_runtime_requirement_unmet");

    let h = Host::start_with(Options {
        extra_args: vec!["--policy".into(), policy.display().to_string()],
        ..Options::default()
    })
    .await;
    let (s, b) = h.publish("vendor.wopbox.files", "0.1.0", body).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    assert_eq!(b["runtime"], "wasm-component");
    let (snap, events) = h
        .run_single(
            "wf-read",
            "vendor.wopbox.files.read",
            json!({"path": "hello.txt"}),
        )
        .await;
    assert_eq!(snap["status"], "completed", "{events:#?}");
    assert_eq!(
        find(&events, "node.completed")["payload"]["outputs"]["content"],
        "hi from the host"
    );
    // Read-only grant: writing fails inside the guest, the host file is untouched.
    let (snap, _) = h
        .run_single(
            "wf-write",
            "vendor.wopbox.files.write",
            json!({"path": "hello.txt", "content": "pwned"}),
        )
        .await;
    assert_eq!(snap["status"], "failed");
    assert_eq!(
        std::fs::read_to_string(data.path().join("hello.txt")).unwrap(),
        "hi from the host"
    );
    // `..` cannot leave the preopen.
    let (snap, _) = h
        .run_single(
            "wf-escape",
            "vendor.wopbox.files.read",
            json!({"path": "../../../../etc/passwd"}),
        )
        .await;
    assert_eq!(snap["status"], "failed");
}

impl Host {
    async fn anon_get_discovery(&self) -> (StatusCode, Value) {
        let resp = self
            .anon(Method::GET, "/.well-known/openwop")
            .send()
            .await
            .unwrap();
        read(resp).await
    }
}
