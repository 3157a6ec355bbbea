//! RFC 0008 ABI v1 core modules: the packs in `packs/`, the conformance WAT
//! packs, both (ptr, len) encodings, the handshake, the baseline imports,
//! and the host side of the memory contract.

use std::time::Duration;

use serde_json::{json, Value};
use wopbox_sandbox::*;

use crate::util::*;

#[tokio::test]
async fn greet_pack() {
    let pack = load_core(pack_file("greet/greet.wasm")).await;
    assert_eq!(pack.name(), "vendor.wopbox.greet");
    assert_eq!(pack.node_type_ids(), ["vendor.wopbox.greet.hello"]);
    assert_eq!(pack.abi_version(), Some(1));
    let out = sandbox()
        .invoke(
            &pack,
            InvokeRequest::new("vendor.wopbox.greet.hello", json!({"name": "Ada"})),
        )
        .await
        .unwrap();
    assert_eq!(
        out.result,
        GuestResult::Completed(json!({"greeting": "Hello, Ada!"}))
    );
    assert_eq!(
        out.logs,
        vec![LogEntry {
            level: LogLevel::Info,
            message: "greet: composing a greeting".into()
        }]
    );
    assert!(out.metrics.fuel_consumed > 0);
    assert_eq!(out.metrics.peak_memory_bytes, 2 * 65536);
    let out = sandbox()
        .invoke(
            &pack,
            InvokeRequest::new("vendor.wopbox.greet.hello", json!({})),
        )
        .await
        .unwrap();
    assert_eq!(
        out.result,
        GuestResult::Completed(json!({"greeting": "Hello, world!"}))
    );
    // Escaped characters survive the round trip.
    let out = sandbox()
        .invoke(
            &pack,
            InvokeRequest::new("vendor.wopbox.greet.hello", json!({"name": "O\"Neil ✓"})),
        )
        .await
        .unwrap();
    assert_eq!(
        out.result,
        GuestResult::Completed(json!({"greeting": "Hello, O\"Neil ✓!"}))
    );
}

#[tokio::test]
async fn rust_hello_pack_packed_i64() {
    let pack = load_core(pack_file("rust-hello/rust-hello.wasm")).await;
    assert_eq!(pack.name(), "vendor.openwop.rust-hello");
    assert_eq!(pack.node_type_ids(), ["vendor.openwop.rust-hello.greet"]);
    let ctx = NodeContext {
        run_id: "r1".into(),
        node_id: "n1".into(),
        ..Default::default()
    };
    let out = sandbox()
        .invoke(
            &pack,
            InvokeRequest::new(
                "vendor.openwop.rust-hello.greet",
                json!({"name": "openwop"}),
            )
            .context(ctx),
        )
        .await
        .unwrap();
    assert_eq!(
        out.result,
        GuestResult::Completed(json!({"greeting": "Hello, openwop!"}))
    );
    assert_eq!(out.logs[0].level, LogLevel::Info);
}

#[tokio::test]
async fn unknown_type_id() {
    let pack = load_core(pack_file("greet/greet.wasm")).await;
    let e = sandbox()
        .invoke(
            &pack,
            InvokeRequest::new("vendor.wopbox.greet.nope", json!({})),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), "wasm_pack_unknown_type");
}

#[tokio::test]
async fn abi_999_is_refused_at_load() {
    for bytes in [
        pack_file("misbehaving-abi/abi-bomb.wasm"),
        fixture("rfc0008/conformance-misbehaving-abi.wat"),
    ] {
        let e = load(bytes, PackFormat::CoreModule).await.unwrap_err();
        assert_eq!(e.code(), "unsupported_abi_version", "{e}");
        assert!(matches!(
            e,
            SandboxError::UnsupportedAbiVersion { found: 999, .. }
        ));
    }
    // A manifest that says 999 is refused without running anything.
    let mut o = LoadOptions::new(PackFormat::CoreModule);
    o.manifest_abi_version = Some(999);
    let e = sandbox()
        .load(pack_file("greet/greet.wasm"), o)
        .await
        .unwrap_err();
    assert_eq!(e.code(), "unsupported_abi_version");
}

#[tokio::test]
async fn memory_bomb_is_a_memory_breach() {
    for bytes in [
        pack_file("misbehaving-memory/memory-bomb.wasm"),
        fixture("rfc0008/conformance-misbehaving-memory.wat"),
    ] {
        let pack = load_core(bytes).await;
        assert_eq!(pack.name(), "vendor.openwop.misbehaving");
        let e = sandbox()
            .invoke(
                &pack,
                InvokeRequest::new("vendor.openwop.misbehaving.memory-bomb", json!({})),
            )
            .await
            .unwrap_err();
        assert_eq!(e.code(), "sandbox_memory_exceeded", "{e}");
        let b = e.cap_breach().unwrap();
        assert_eq!(b.kind, CapKind::WasmMemory);
        assert_eq!(b.limit, 64 << 20);
        assert!(b.observed > b.limit);
        assert_eq!(b.to_json()["kind"], "wasm-memory");
    }
}

#[tokio::test]
async fn manifest_memory_pages_max_lowers_the_cap() {
    let mut o = LoadOptions::new(PackFormat::CoreModule);
    o.memory_pages_max = Some(32); // 2 MiB
    let pack = sandbox()
        .load(pack_file("misbehaving-memory/memory-bomb.wasm"), o)
        .await
        .unwrap();
    let e = sandbox()
        .invoke(
            &pack,
            InvokeRequest::new("vendor.openwop.misbehaving.memory-bomb", json!({})),
        )
        .await
        .unwrap_err();
    assert_eq!(e.cap_breach().unwrap().limit, 2 << 20);
}

/// Every RFC 0008 pack under packs/ loads per its manifest, or (ABI 999) is refused.
#[tokio::test]
async fn every_pack_in_packs_dir() {
    let mut seen = 0;
    for e in std::fs::read_dir(repo().join("packs")).unwrap() {
        let dir = e.unwrap().path();
        let Ok(text) = std::fs::read_to_string(dir.join("pack.json")) else {
            continue;
        };
        let m: Value = serde_json::from_str(&text).unwrap();
        if m["runtime"]["language"] != "wasm" {
            continue; // component packs are tested in component.rs
        }
        seen += 1;
        let bytes = std::fs::read(dir.join(m["runtime"]["entry"].as_str().unwrap())).unwrap();
        let name = m["name"].as_str().unwrap();
        let mut o = LoadOptions::new(PackFormat::CoreModule).name(name);
        o.manifest_abi_version = m["runtime"]["wasm"]["abiVersion"].as_i64();
        o.memory_pages_max = m["runtime"]["wasm"]["memoryPagesMax"].as_u64();
        let r = sandbox().load(bytes, o).await;
        if name == "vendor.openwop.misbehaving-abi" {
            assert_eq!(r.unwrap_err().code(), "unsupported_abi_version");
            continue;
        }
        let pack = r.unwrap_or_else(|e| panic!("{name}: {e}"));
        let want: Vec<&str> = m["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["typeId"].as_str().unwrap())
            .collect();
        assert_eq!(pack.node_type_ids(), want.as_slice(), "{name}");
    }
    assert!(seen >= 4, "{seen}");
}

#[tokio::test]
async fn name_mismatch_is_refused() {
    let r = sandbox()
        .load(
            pack_file("greet/greet.wasm"),
            LoadOptions::new(PackFormat::CoreModule).name("vendor.other"),
        )
        .await;
    assert_eq!(r.unwrap_err().code(), "sandbox_invocation_error");
}

#[tokio::test]
async fn multi_value_and_packed_both_work() {
    // greet is fully multi-value and rust-hello fully packed (above); here
    // only openwop_node_invoke is multi-value.
    let src = wat(&core_src("", "").replace(
        r#"(func (export "openwop_node_invoke") (param i32 i32 i32) (result i64)
    (call $invoke (local.get 0) (local.get 1) (local.get 2)))"#,
        r#"(data (i32.const 512) "{\"outcome\":\"completed\",\"output\":1}")
  (func (export "openwop_node_invoke") (param i32 i32 i32) (result i32 i32) (i32.const 512) (i32.const 34))"#,
    ));
    let p = load_core(src).await;
    let out = sandbox()
        .invoke(&p, InvokeRequest::new("test.node", json!({})))
        .await
        .unwrap();
    assert_eq!(out.result, GuestResult::Completed(json!(1)));
}

#[tokio::test]
async fn failed_and_suspended_outcomes() {
    let p = load_core(core_module(
        "",
        &const_response(
            r#"{"outcome":"failed","error":{"code":"bad_input","message":"no","details":{"x":1}}}"#,
        ),
    ))
    .await;
    let out = sandbox()
        .invoke(&p, InvokeRequest::new("test.node", json!({})))
        .await
        .unwrap();
    assert_eq!(
        out.result,
        GuestResult::Failed {
            code: "bad_input".into(),
            message: "no".into(),
            details: Some(json!({"x": 1}))
        }
    );
    let p = load_core(core_module(
        "",
        &const_response(r#"{"outcome":"suspended","interrupt":{"kind":"approval"}}"#),
    ))
    .await;
    let out = sandbox()
        .invoke(&p, InvokeRequest::new("test.node", json!({})))
        .await
        .unwrap();
    assert_eq!(
        out.result,
        GuestResult::Suspended(json!({"kind": "approval"}))
    );
}

#[tokio::test]
async fn request_envelope_reaches_the_guest() {
    // Echo the request back as the output.
    let body = r#"(data (i32.const 512) "{\"outcome\":\"completed\",\"output\":")
  (func $invoke (param $n i32) (param $p i32) (param $l i32) (result i64)
    (local $out i32)
    (local.set $out (call $alloc (i32.add (local.get $l) (i32.const 33))))
    (memory.copy (local.get $out) (i32.const 512) (i32.const 32))
    (memory.copy (i32.add (local.get $out) (i32.const 32)) (local.get $p) (local.get $l))
    (i32.store8 (i32.add (local.get $out) (i32.add (local.get $l) (i32.const 32))) (i32.const 125))
    (call $pack (local.get $out) (i32.add (local.get $l) (i32.const 33))))"#;
    let p = load_core(core_module("", body)).await;
    let ctx = NodeContext {
        run_id: "run-1".into(),
        node_id: "node-a".into(),
        tenant_id: "t".into(),
        attempt: 2,
        ..Default::default()
    };
    let out = sandbox()
        .invoke(
            &p,
            InvokeRequest::new("test.node", json!({"k": [1, 2]})).context(ctx),
        )
        .await
        .unwrap();
    let GuestResult::Completed(v) = out.result else {
        panic!()
    };
    assert_eq!(v["abiVersion"], 1);
    assert_eq!(v["inputs"], json!({"k": [1, 2]}));
    assert_eq!(v["nodeContext"]["runId"], "run-1");
    assert_eq!(v["nodeContext"]["nodeId"], "node-a");
    assert_eq!(v["nodeContext"]["attempt"], 2);
}

const BASELINE_IMPORTS: &str = r#"
  (import "openwop" "openwop_log" (func $log (param i32 i32 i32)))
  (import "openwop" "openwop_now_ms" (func $now (result i64)))
  (import "openwop" "openwop_random" (func $random (param i32 i32)))
  (import "openwop" "openwop_channel_read" (func $chan_read (param i32 i32) (result i64)))
  (import "openwop" "openwop_channel_write" (func $chan_write (param i32 i32 i32 i32) (result i32)))
  (import "openwop" "openwop_variable_get" (func $var_get (param i32 i32) (result i32 i32)))
  (import "openwop" "openwop_variable_set" (func $var_set (param i32 i32 i32 i32) (result i32)))
  (import "openwop" "openwop_interrupt" (func $interrupt (param i32 i32) (result i64)))"#;

#[tokio::test]
async fn baseline_imports_are_never_gated() {
    // Loads with no grants at all.
    let p = load_core(core_module(
        BASELINE_IMPORTS,
        &const_response(r#"{"outcome":"completed","output":null}"#),
    ))
    .await;
    sandbox()
        .invoke(
            &p,
            InvokeRequest::new("test.node", json!({})).grants(Grants::none()),
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn channels_variables_random_now() {
    // output = {"c": <channel "in">, "v": <variable "k">}; writes channel "out" = 42 and variable "k2" = "s".
    let body = r#"
  (data (i32.const 200) "in")
  (data (i32.const 210) "k")
  (data (i32.const 220) "out")
  (data (i32.const 230) "42")
  (data (i32.const 240) "k2")
  (data (i32.const 250) "\"s\"")
  (data (i32.const 260) "{\"outcome\":\"completed\",\"output\":[")
  (data (i32.const 300) ",")
  (data (i32.const 310) "]}")
  (func $invoke (param i32 i32 i32) (result i64)
    (local $c i64) (local $vp i32) (local $vl i32) (local $out i32) (local $cl i32)
    (drop (call $chan_write (i32.const 220) (i32.const 3) (i32.const 230) (i32.const 2)))
    (drop (call $var_set (i32.const 240) (i32.const 2) (i32.const 250) (i32.const 3)))
    (local.set $c (call $chan_read (i32.const 200) (i32.const 2)))
    (call $var_get (i32.const 210) (i32.const 1))
    (local.set $vl) (local.set $vp)
    (local.set $cl (i32.wrap_i64 (i64.shr_u (local.get $c) (i64.const 32))))
    (local.set $out (call $alloc (i32.add (i32.add (local.get $cl) (local.get $vl)) (i32.const 40))))
    (memory.copy (local.get $out) (i32.const 260) (i32.const 33))
    (memory.copy (i32.add (local.get $out) (i32.const 33)) (i32.wrap_i64 (local.get $c)) (local.get $cl))
    (memory.copy (i32.add (local.get $out) (i32.add (i32.const 33) (local.get $cl))) (i32.const 300) (i32.const 1))
    (memory.copy (i32.add (local.get $out) (i32.add (i32.const 34) (local.get $cl))) (local.get $vp) (local.get $vl))
    (memory.copy (i32.add (local.get $out) (i32.add (i32.add (i32.const 34) (local.get $cl)) (local.get $vl))) (i32.const 310) (i32.const 2))
    (call $pack (local.get $out) (i32.add (i32.add (local.get $cl) (local.get $vl)) (i32.const 36))))"#;
    let p = load_core(core_module(BASELINE_IMPORTS, body)).await;
    let mut ctx = NodeContext::default();
    ctx.channels.insert("in".into(), json!({"a": 1}));
    ctx.variables.insert("k".into(), json!("val"));
    let out = sandbox()
        .invoke(&p, InvokeRequest::new("test.node", json!({})).context(ctx))
        .await
        .unwrap();
    assert_eq!(out.result, GuestResult::Completed(json!([{"a": 1}, "val"])));
    assert_eq!(out.channel_writes, vec![("out".to_string(), json!(42))]);
    assert_eq!(out.variable_writes, vec![("k2".to_string(), json!("s"))]);
}

#[tokio::test]
async fn random_is_deterministic_per_run_node_attempt() {
    // Output: 8 random bytes as a JSON array of numbers is awkward in WAT; log
    // them in hex-ish form instead via openwop_log (raw bytes, lossy UTF-8).
    let body = r#"
  (func $invoke (param i32 i32 i32) (result i64)
    (call $random (i32.const 1000) (i32.const 16))
    (call $log (i32.const 2) (i32.const 1000) (i32.const 16))
    (i64.store (i32.const 1100) (call $now))
    (call $log (i32.const 2) (i32.const 1100) (i32.const 8))
    (call $pack (i32.const 512) (i32.const 34)))
  (data (i32.const 512) "{\"outcome\":\"completed\",\"output\":0}")"#;
    let p = load_core(core_module(BASELINE_IMPORTS, body)).await;
    let run = |run: &str, attempt: u32| {
        let ctx = NodeContext {
            run_id: run.into(),
            node_id: "n".into(),
            attempt,
            now_ms: Some(1_700_000_000_000),
            ..Default::default()
        };
        let p = p.clone();
        async move {
            sandbox()
                .invoke(&p, InvokeRequest::new("test.node", json!({})).context(ctx))
                .await
                .unwrap()
                .logs
        }
    };
    let a = run("r", 0).await;
    let b = run("r", 0).await;
    let c = run("r", 1).await;
    assert_eq!(a, b);
    assert_ne!(a[0], c[0]);
    assert_eq!(a[1], c[1], "now_ms comes from the context");
}

#[tokio::test]
async fn interrupt_suspends_then_resumes() {
    let body = r#"
  (data (i32.const 200) "{\"ask\":\"approve?\"}")
  (data (i32.const 300) "{\"outcome\":\"completed\",\"output\":")
  (func $invoke (param i32 i32 i32) (result i64)
    (local $r i64) (local $l i32) (local $out i32)
    (local.set $r (call $interrupt (i32.const 200) (i32.const 18)))
    (local.set $l (i32.wrap_i64 (i64.shr_u (local.get $r) (i64.const 32))))
    (local.set $out (call $alloc (i32.add (local.get $l) (i32.const 33))))
    (memory.copy (local.get $out) (i32.const 300) (i32.const 32))
    (memory.copy (i32.add (local.get $out) (i32.const 32)) (i32.wrap_i64 (local.get $r)) (local.get $l))
    (i32.store8 (i32.add (local.get $out) (i32.add (local.get $l) (i32.const 32))) (i32.const 125))
    (call $pack (local.get $out) (i32.add (local.get $l) (i32.const 33))))"#;
    let p = load_core(core_module(BASELINE_IMPORTS, body)).await;
    let out = sandbox()
        .invoke(&p, InvokeRequest::new("test.node", json!({})))
        .await
        .unwrap();
    assert_eq!(
        out.result,
        GuestResult::Suspended(json!({"ask": "approve?"}))
    );
    let ctx = NodeContext {
        resume_value: Some(json!({"approved": true})),
        ..Default::default()
    };
    let out = sandbox()
        .invoke(&p, InvokeRequest::new("test.node", json!({})).context(ctx))
        .await
        .unwrap();
    assert_eq!(
        out.result,
        GuestResult::Completed(json!({"approved": true}))
    );
}

#[tokio::test]
async fn free_is_honoured() {
    // openwop_free logs "free" with the pointer it got; the host must free
    // the response and the request.
    let src = wat(&core_src(
        r#"(import "openwop" "openwop_log" (func $log (param i32 i32 i32)))"#,
        &const_response(r#"{"outcome":"completed","output":1}"#),
    )
    .replace(
        r#"(func (export "openwop_free") (param i32 i32))"#,
        r#"(data (i32.const 100) "free")
  (func (export "openwop_free") (param i32 i32) (call $log (i32.const 2) (i32.const 100) (i32.const 4)))"#,
    ));
    let p = load_core(src).await;
    let out = sandbox()
        .invoke(&p, InvokeRequest::new("test.node", json!({})))
        .await
        .unwrap();
    assert_eq!(out.logs.iter().filter(|l| l.message == "free").count(), 2);
}

#[tokio::test]
async fn logs_are_bounded() {
    let body = r#"
  (data (i32.const 100) "0123456789")
  (func $invoke (param i32 i32 i32) (result i64)
    (local $i i32)
    (loop $l
      (call $log (i32.const 3) (i32.const 100) (i32.const 10))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $l (i32.lt_u (local.get $i) (i32.const 1000))))
    (call $pack (i32.const 512) (i32.const 34)))
  (data (i32.const 512) "{\"outcome\":\"completed\",\"output\":0}")"#;
    let p = load_core(core_module(
        r#"(import "openwop" "openwop_log" (func $log (param i32 i32 i32)))"#,
        body,
    ))
    .await;
    let limits = Limits {
        max_log_entries: 10,
        max_log_message_bytes: 4,
        ..Limits::default()
    };
    let out = sandbox()
        .invoke(
            &p,
            InvokeRequest::new("test.node", json!({})).limits(limits),
        )
        .await
        .unwrap();
    assert_eq!(out.logs.len(), 10);
    assert_eq!(out.logs_dropped, 990);
    assert_eq!(out.logs[0].message, "0123");
    assert_eq!(out.logs[0].level, LogLevel::Warn);
}

#[tokio::test]
async fn capability_imports_are_gated_at_load() {
    let imports = r#"(import "openwop" "fetch" (func $f (param i32) (result i32)))"#;
    let bytes = core_module(
        imports,
        &const_response(r#"{"outcome":"completed","output":1}"#),
    );
    let e = load(bytes.clone(), PackFormat::CoreModule)
        .await
        .unwrap_err();
    assert_eq!(e.code(), "sandbox_capability_denied");
    assert_eq!(e.details()["requestedCapability"], "fetch");
    let p = sandbox()
        .load(
            bytes,
            LoadOptions::new(PackFormat::CoreModule).grants(Grants::host_calls(["host.fetch"])),
        )
        .await
        .unwrap();
    sandbox()
        .invoke(&p, InvokeRequest::new("test.node", json!({})))
        .await
        .unwrap();
    // An invocation's own grants can narrow the load grants.
    let e = sandbox()
        .invoke(
            &p,
            InvokeRequest::new("test.node", json!({})).grants(Grants::none()),
        )
        .await
        .unwrap_err();
    assert_eq!(e.details()["requestedCapability"], "fetch");
}

#[tokio::test]
async fn wasi_imports_in_core_modules_are_escapes() {
    for (name, kind) in [
        ("fd_write", "host-fs-escape"),
        ("path_open", "host-fs-escape"),
        ("environ_sizes_get", "host-env-leak"),
        ("sock_accept", "network-escape"),
        ("proc_exit", "host-process-escape"),
        ("random_get", "host-process-escape"),
    ] {
        let imports = format!(r#"(import "wasi_snapshot_preview1" "{name}" (func (param i32)))"#);
        let e = load(
            core_module(&imports, &const_response("{}")),
            PackFormat::CoreModule,
        )
        .await
        .unwrap_err();
        assert_eq!(e.code(), "sandbox_escape_attempt", "{name}");
        assert_eq!(e.details()["escapeKind"], kind, "{name}");
    }
}

#[tokio::test]
async fn handshake_runs_under_limits() {
    // openwop_node_count loops forever: the handshake times out at load.
    let src = wat(&core_src("", &const_response("{}")).replace(
        r#"(func (export "openwop_node_count") (result i32) (i32.const 1))"#,
        r#"(func (export "openwop_node_count") (result i32) (loop $l (br $l)) (i32.const 1))"#,
    ));
    let t = std::time::Instant::now();
    let e = load(src, PackFormat::CoreModule).await.unwrap_err();
    assert!(
        matches!(
            e,
            SandboxError::Timeout { .. } | SandboxError::FuelExhausted { .. }
        ),
        "{e:?}"
    );
    assert!(t.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn missing_exports_are_abi_violations() {
    let src = wat(&core_src("", &const_response("{}"))
        .replace(r#"(func (export "openwop_free") (param i32 i32))"#, ""));
    let e = load(src, PackFormat::CoreModule).await.unwrap_err();
    assert!(matches!(e, SandboxError::AbiViolation { .. }), "{e:?}");
    assert!(e.to_string().contains("openwop_free"));
}
