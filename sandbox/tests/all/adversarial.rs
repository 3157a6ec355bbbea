//! Our own hostile modules: none of them may crash, hang or exhaust the
//! host, and each breach gets its own error.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use wopbox_sandbox::*;

use crate::util::*;

fn probe(src: &str) -> Vec<u8> {
    wat(src)
}

async fn probe_call(src: &str, limits: Limits) -> Result<i32, SandboxError> {
    let p = load(probe(src), PackFormat::Probe).await?;
    sandbox()
        .invoke_probe(&p, "invoke", Some(0), &[], Some(limits))
        .await
}

/// Load one of the RFC 0035 probe fixtures into `s`.
async fn load_probe_fixture(s: &Sandbox, rel: &str) -> Arc<LoadedPack> {
    s.load(fixture(rel), LoadOptions::new(PackFormat::Probe))
        .await
        .unwrap()
}

#[tokio::test]
async fn infinite_loop_in_start_function_times_out() {
    let src = r#"(module (func $s (loop $l (br $l))) (start $s) (func (export "invoke") (param i32) (result i32) (i32.const 0)))"#;
    // Probe: the start function runs at invocation (instantiation), under the wall clock.
    let limits = Limits::default()
        .with_wall_clock(Duration::from_millis(200))
        .with_fuel(None);
    let t = Instant::now();
    let e = probe_call(src, limits).await.unwrap_err();
    assert_eq!(e.code(), "sandbox_timeout", "{e}");
    assert!(t.elapsed() < Duration::from_secs(2));
    // RFC 0008: the start function runs in the load handshake, which is limited too.
    let core = core_module(
        "(func $s (loop $l (br $l))) (start $s)",
        &const_response("{}"),
    );
    let e = load(core, PackFormat::CoreModule).await.unwrap_err();
    assert!(
        matches!(
            e,
            SandboxError::Timeout { .. } | SandboxError::FuelExhausted { .. }
        ),
        "{e:?}"
    );
}

#[tokio::test]
async fn fuel_exhaustion_is_its_own_error() {
    let src = r#"(module (func (export "invoke") (param i32) (result i32) (loop $l (br $l)) (i32.const 0)))"#;
    let limits = Limits::default()
        .with_fuel(Some(1_000_000))
        .with_wall_clock(Duration::from_secs(10));
    let e = probe_call(src, limits).await.unwrap_err();
    assert!(
        matches!(e, SandboxError::FuelExhausted { limit: 1_000_000 }),
        "{e:?}"
    );
    assert_eq!(e.code(), "sandbox_timeout");
    assert_eq!(e.details()["reason"], "fuel");
    assert_eq!(e.cap_breach().unwrap().kind, CapKind::WasmFuel);
}

#[tokio::test]
async fn fuel_is_reported_and_deterministic() {
    let p = load_core(pack_file("greet/greet.wasm")).await;
    let mut seen = Vec::new();
    for _ in 0..3 {
        let out = sandbox()
            .invoke(
                &p,
                InvokeRequest::new("vendor.wopbox.greet.hello", json!({"name": "x"})),
            )
            .await
            .unwrap();
        seen.push(out.metrics.fuel_consumed);
    }
    assert!(seen[0] > 100);
    assert!(seen.iter().all(|f| *f == seen[0]), "{seen:?}");
}

#[tokio::test]
async fn deep_recursion_traps_cleanly() {
    let src = r#"(module (func $r (param i32) (result i32) (call $r (i32.add (local.get 0) (i32.const 1))))
      (func (export "invoke") (param i32) (result i32) (call $r (local.get 0))))"#;
    let e = probe_call(src, Limits::default()).await.unwrap_err();
    assert_eq!(e.code(), "sandbox_invocation_error");
    assert!(e.to_string().contains("call stack exhausted"), "{e}");
}

#[tokio::test]
async fn other_traps_carry_the_message() {
    let src = r#"(module (func (export "invoke") (param i32) (result i32) (i32.div_s (i32.const 1) (local.get 0))))"#;
    let e = probe_call(src, Limits::default()).await.unwrap_err();
    assert_eq!(e.code(), "sandbox_invocation_error");
    assert!(e.to_string().contains("divide by zero"), "{e}");
    assert_eq!(e.details()["trap"], "IntegerDivisionByZero");
}

#[tokio::test]
async fn grow_bomb_sees_minus_one_then_trap_is_memory_exceeded() {
    // Grows until refused and returns the page count reached: a clean answer.
    let src = r#"(module (memory 1)
      (func (export "invoke") (param i32) (result i32)
        (loop $l (br_if $l (i32.ne (memory.grow (i32.const 1)) (i32.const -1))))
        (memory.size)))"#;
    let pages = probe_call(src, Limits::default().with_memory_bytes(1 << 20))
        .await
        .unwrap();
    assert_eq!(pages, 16);
    // Same, then traps: memory exceeded, with the requested size.
    let src = r#"(module (memory 1)
      (func (export "invoke") (param i32) (result i32)
        (loop $l (br_if $l (i32.ne (memory.grow (i32.const 7)) (i32.const -1))))
        unreachable))"#;
    let e = probe_call(src, Limits::default().with_memory_bytes(1 << 20))
        .await
        .unwrap_err();
    assert_eq!(e.code(), "sandbox_memory_exceeded", "{e}");
    assert_eq!(e.details()["limitBytes"], 1 << 20);
    assert_eq!(e.details()["requestedBytes"], 22 * 65536);
}

#[tokio::test]
async fn env_memory_respects_declared_maximum_and_cap() {
    // Declared max 4 pages, cap 2 MiB (32 pages): the guest can reach 4.
    let src = r#"(module (import "env" "memory" (memory 1 4))
      (func (export "invoke") (param i32) (result i32)
        (loop $l (br_if $l (i32.ne (memory.grow (i32.const 1)) (i32.const -1))))
        (memory.size)))"#;
    assert_eq!(probe_call(src, base_limits()).await.unwrap(), 4);
    // No declared max: the cap (2 MiB = 32 pages) stops it.
    let src = src.replace("(memory 1 4)", "(memory 1)");
    assert_eq!(probe_call(&src, base_limits()).await.unwrap(), 32);
}

#[tokio::test]
async fn one_huge_grow_is_refused() {
    let src = r#"(module (memory 1)
      (func (export "invoke") (param i32) (result i32) (memory.grow (i32.const 65000))))"#;
    assert_eq!(probe_call(src, Limits::default()).await.unwrap(), -1);
}

#[tokio::test]
async fn table_grow_bomb_is_refused() {
    let src = r#"(module (table 1 funcref)
      (func (export "invoke") (param i32) (result i32)
        (loop $l (br_if $l (i32.ne (table.grow (ref.null func) (i32.const 1000)) (i32.const -1))))
        (table.size)))"#;
    let n = probe_call(src, Limits::default()).await.unwrap();
    assert!(n <= 10_001, "{n}");
}

#[tokio::test]
async fn oversized_declared_memory_is_refused_at_load() {
    // 2000 pages = 125 MiB > the 64 MiB default cap.
    let e = load(probe(r#"(module (memory 2000) (func (export "invoke") (param i32) (result i32) (i32.const 0)))"#), PackFormat::Probe)
        .await
        .unwrap_err();
    assert_eq!(e.code(), "sandbox_memory_exceeded", "{e}");
    // 20000 pages = 1.2 GiB > the pool's hard cap, whatever the limits.
    let e = sandbox()
        .load(
            probe(r#"(module (memory 20000) (func (export "invoke") (param i32) (result i32) (i32.const 0)))"#),
            LoadOptions::new(PackFormat::Probe).limits(Limits::default().with_memory_bytes(4 << 30)),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), "sandbox_memory_exceeded", "{e}");
    // Imported env.memory with a huge minimum.
    let e = load(probe(r#"(module (import "env" "memory" (memory 5000)) (func (export "invoke") (param i32) (result i32) (i32.const 0)))"#), PackFormat::Probe)
        .await
        .unwrap_err();
    assert_eq!(e.code(), "sandbox_memory_exceeded", "{e}");
}

#[tokio::test]
async fn oversized_tables_and_counts_are_refused_at_load() {
    let e = load(probe(r#"(module (table 5000000 funcref) (func (export "invoke") (param i32) (result i32) (i32.const 0)))"#), PackFormat::Probe)
        .await
        .unwrap_err();
    assert!(matches!(e, SandboxError::InvalidModule { .. }), "{e:?}");
    let e = load(
        probe(r#"(module (memory 1) (memory 1) (func (export "invoke") (param i32) (result i32) (i32.const 0)))"#),
        PackFormat::Probe,
    )
    .await
    .unwrap_err();
    assert!(matches!(e, SandboxError::InvalidModule { .. }), "{e:?}");

    let mut cfg = test_config();
    cfg.load_limits.max_functions = 10;
    cfg.load_limits.max_exports = 5;
    cfg.load_limits.max_locals = 100;
    let s = Sandbox::new(cfg).unwrap();
    let many_funcs: String = (0..11).map(|i| format!("(func $f{i})")).collect();
    let e = s.load(probe(&format!("(module {many_funcs} (func (export \"invoke\") (param i32) (result i32) (i32.const 0)))")), LoadOptions::new(PackFormat::Probe)).await.unwrap_err();
    assert!(e.to_string().contains("functions"), "{e}");
    let many_exports: String = (0..6)
        .map(|i| format!("(func (export \"e{i}\"))"))
        .collect();
    let e = s
        .load(
            probe(&format!("(module {many_exports})")),
            LoadOptions::new(PackFormat::Probe),
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("exports"), "{e}");
    let e = s
        .load(probe(r#"(module (func (export "invoke") (param i32) (result i32) (local i64 i64) (local i32) (local f64 f64 f64 f64 f64 f64 f64 f64 f64 f64 f64 f64 f64 f64 f64 f64 f64 f64 f64 f64 f64 f64 f64 f64 f64 f64 f64 f64 f64 f64 f64 f64 f64 f64 f64 f64 f64 f64 f64 f64 f64 f64 f64 f64 f64 f64 f64 f64 f64 f64 f64 f64 f64 f64 f64 f64 f64 f64 f64 f64 f64 f64 f64 f64 f64 f64 f64 f64 f64 f64 f64 f64 f64 f64 f64 f64 f64 f64 f64 f64 f64 f64 f64 f64 f64 f64 f64 f64 f64 f64 f64 f64 f64 f64 f64 f64 f64 f64 f64) (i32.const 0)))"#), LoadOptions::new(PackFormat::Probe))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("locals"), "{e}");
}

#[tokio::test]
async fn garbage_and_oversized_bytes() {
    let e = load(b"\0asm\x01\0\0\0garbage".to_vec(), PackFormat::Probe)
        .await
        .unwrap_err();
    assert!(matches!(e, SandboxError::InvalidModule { .. }), "{e:?}");
    let e = load(vec![0u8; 100], PackFormat::CoreModule)
        .await
        .unwrap_err();
    assert!(matches!(e, SandboxError::InvalidModule { .. }), "{e:?}");
    let mut cfg = test_config();
    cfg.load_limits.max_module_bytes = 1000;
    let s = Sandbox::new(cfg).unwrap();
    let e = s
        .load(vec![0u8; 1001], LoadOptions::new(PackFormat::Probe))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("1001 bytes"), "{e}");
}

#[tokio::test]
async fn pointer_abuse_through_the_rfc0008_abi() {
    let cases = [
        // response pointer past the end of memory
        r#"(func $invoke (param i32 i32 i32) (result i64) (call $pack (i32.const 65530) (i32.const 100)))"#,
        // ptr + len overflows 32 bits
        r#"(func $invoke (param i32 i32 i32) (result i64) (call $pack (i32.const -16) (i32.const 64)))"#,
        // len = 0xffffffff
        r#"(func $invoke (param i32 i32 i32) (result i64) (i64.const -1))"#,
        // not JSON
        r#"(data (i32.const 512) "not json") (func $invoke (param i32 i32 i32) (result i64) (call $pack (i32.const 512) (i32.const 8)))"#,
        // JSON without outcome
        r#"(data (i32.const 512) "[1,2]") (func $invoke (param i32 i32 i32) (result i64) (call $pack (i32.const 512) (i32.const 5)))"#,
    ];
    for body in cases {
        let p = load_core(core_module("", body)).await;
        let e = sandbox()
            .invoke(&p, InvokeRequest::new("test.node", json!({})))
            .await
            .unwrap_err();
        assert_eq!(e.code(), "sandbox_invocation_error", "{body}: {e}");
        assert!(
            matches!(e, SandboxError::AbiViolation { .. }),
            "{body}: {e:?}"
        );
    }
    // openwop_alloc returning a pointer outside memory
    let src = wat(&core_src("", &const_response("{}")).replace(
        "(local.get $p))\n  (func (export \"openwop_free\")",
        "(drop (local.get $p)) (i32.const 2147483647))\n  (func (export \"openwop_free\")",
    ));
    let p = load_core(src).await;
    let e = sandbox()
        .invoke(&p, InvokeRequest::new("test.node", json!({})))
        .await
        .unwrap_err();
    assert!(matches!(e, SandboxError::AbiViolation { .. }), "{e:?}");
    // openwop_log with a bad pointer
    let p = load_core(core_module(
        r#"(import "openwop" "openwop_log" (func $log (param i32 i32 i32)))"#,
        r#"(func $invoke (param i32 i32 i32) (result i64) (call $log (i32.const 2) (i32.const 65000) (i32.const 10000)) (i64.const 0))"#,
    ))
    .await;
    let e = sandbox()
        .invoke(&p, InvokeRequest::new("test.node", json!({})))
        .await
        .unwrap_err();
    assert!(matches!(e, SandboxError::AbiViolation { .. }), "{e:?}");
    // A guest OOB load is a memory fault.
    let p = load_core(core_module(
        "",
        r#"(func $invoke (param i32 i32 i32) (result i64) (i64.load (i32.const 70000)))"#,
    ))
    .await;
    let e = sandbox()
        .invoke(&p, InvokeRequest::new("test.node", json!({})))
        .await
        .unwrap_err();
    assert_eq!(e.code(), "sandbox_memory_exceeded", "{e}");
}

#[tokio::test]
async fn output_bomb_is_capped() {
    // Claims a 3 MiB response (it grows memory to have one).
    let body = r#"(func $invoke (param i32 i32 i32) (result i64)
        (drop (memory.grow (i32.const 60)))
        (call $pack (i32.const 0) (i32.const 3145728)))"#;
    let p = load_core(core_module("", body)).await;
    let e = sandbox()
        .invoke(&p, InvokeRequest::new("test.node", json!({})))
        .await
        .unwrap_err();
    assert!(matches!(e, SandboxError::AbiViolation { .. }), "{e:?}");
    assert!(e.to_string().contains("over the cap"), "{e}");
    // With a bigger cap it is read (and then fails JSON parsing, as zeros).
    let e = sandbox()
        .invoke(
            &p,
            InvokeRequest::new("test.node", json!({}))
                .limits(Limits::default().with_max_output_bytes(4 << 20)),
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("not JSON"), "{e}");
}

#[tokio::test]
async fn no_state_survives_between_invocations_or_packs() {
    let body = r#"(global $n (mut i32) (i32.const 0))
      (data (i32.const 512) "{\"outcome\":\"completed\",\"output\":0}")
      (func $invoke (param i32 i32 i32) (result i64)
        (global.set $n (i32.add (global.get $n) (i32.const 1)))
        (i32.store8 (i32.const 544) (i32.add (i32.const 48) (global.get $n)))
        (i32.store8 (i32.const 3000) (i32.add (i32.load8_u (i32.const 3000)) (i32.const 1)))
        (call $pack (i32.const 512) (i32.const 34)))"#;
    let p = load_core(core_module("", body)).await;
    for _ in 0..5 {
        let out = sandbox()
            .invoke(&p, InvokeRequest::new("test.node", json!({})))
            .await
            .unwrap();
        assert_eq!(out.result, GuestResult::Completed(json!(1)));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_hostile_calls_at_once_host_stays_responsive() {
    let mut cfg = test_config();
    cfg.max_concurrent = 2;
    let s = Sandbox::new(cfg).unwrap();
    let spin = load_probe_fixture(&s, "rfc0035/misbehaving-timeout.wasm").await;
    let bomb = s
        .load(
            pack_file("misbehaving-memory/memory-bomb.wasm"),
            LoadOptions::new(PackFormat::CoreModule),
        )
        .await
        .unwrap();
    let echo = load_probe_fixture(&s, "rfc0035/well-behaved-echo.wasm").await;
    let limits = Limits::default()
        .with_wall_clock(Duration::from_millis(150))
        .with_fuel(None);
    let mut tasks = Vec::new();
    for i in 0..24 {
        let s = s.clone();
        let (spin, bomb, echo, limits) = (spin.clone(), bomb.clone(), echo.clone(), limits.clone());
        tasks.push(tokio::spawn(async move {
            match i % 3 {
                0 => s
                    .invoke_probe(&spin, "invoke", Some(0), &[], Some(limits))
                    .await
                    .map(|_| "spin"),
                1 => s
                    .invoke(
                        &bomb,
                        InvokeRequest::new("vendor.openwop.misbehaving.memory-bomb", json!({}))
                            .limits(limits),
                    )
                    .await
                    .map(|_| "bomb"),
                _ => s
                    .invoke_probe(&echo, "invoke", Some(i), &[], Some(limits))
                    .await
                    .map(|_| "echo"),
            }
        }));
    }
    // The async runtime keeps ticking while guests spin (core modules run
    // on the workers and yield at every epoch tick).
    let mut worst = Duration::ZERO;
    for _ in 0..20 {
        let t = Instant::now();
        tokio::time::sleep(Duration::from_millis(10)).await;
        worst = worst.max(t.elapsed());
    }
    assert!(
        worst < Duration::from_millis(200),
        "executor stalled for {worst:?}"
    );
    let started = Instant::now();
    let mut codes = std::collections::BTreeMap::<String, usize>::new();
    for t in tasks {
        let r = tokio::time::timeout(Duration::from_secs(30), t)
            .await
            .expect("no hang")
            .expect("no panic");
        let k = match r {
            Ok(k) => k.to_string(),
            Err(e) => e.code().to_string(),
        };
        *codes.entry(k).or_default() += 1;
    }
    assert_eq!(codes.get("sandbox_timeout"), Some(&8), "{codes:?}");
    assert_eq!(codes.get("sandbox_memory_exceeded"), Some(&8), "{codes:?}");
    assert_eq!(codes.get("echo"), Some(&8), "{codes:?}");
    assert!(started.elapsed() < Duration::from_secs(20));
    // And afterwards everything still works.
    assert_eq!(
        s.invoke_probe(&echo, "invoke", Some(5), &[], None)
            .await
            .unwrap(),
        5
    );
}

/// Core-module invocations run on the caller's task: a guest in a tight loop
/// must hand the thread back at every epoch tick. On a single-threaded
/// runtime, a guest that did not would keep the timer and the second
/// invocation below from running until its own wall clock ran out.
#[tokio::test(flavor = "current_thread")]
async fn a_spinning_guest_yields_the_thread_to_other_tasks() {
    let s = Sandbox::new(test_config()).unwrap();
    let spin = load_probe_fixture(&s, "rfc0035/misbehaving-timeout.wasm").await;
    let echo = load_probe_fixture(&s, "rfc0035/well-behaved-echo.wasm").await;
    let limits = Limits::default()
        .with_wall_clock(Duration::from_millis(600))
        .with_fuel(None);
    let spinning = tokio::spawn({
        let (s, spin) = (s.clone(), spin.clone());
        async move {
            s.invoke_probe(&spin, "invoke", Some(0), &[], Some(limits))
                .await
        }
    });
    // Let the spinner start (it is polled while this task sleeps).
    tokio::time::sleep(Duration::from_millis(20)).await;
    let v = s
        .invoke_probe(&echo, "invoke", Some(7), &[], None)
        .await
        .unwrap();
    assert_eq!(v, 7);
    assert!(
        !spinning.is_finished(),
        "the echo only ran once the spinning guest had ended"
    );
    let e = spinning.await.unwrap().unwrap_err();
    assert_eq!(e.code(), "sandbox_timeout", "{e}");
}

/// Dropping an invocation's future abandons the guest and frees its slot.
#[tokio::test(flavor = "current_thread")]
async fn an_abandoned_invocation_frees_its_slot() {
    let mut cfg = test_config();
    cfg.max_concurrent = 1;
    let s = Sandbox::new(cfg).unwrap();
    let spin = load_probe_fixture(&s, "rfc0035/misbehaving-timeout.wasm").await;
    let echo = load_probe_fixture(&s, "rfc0035/well-behaved-echo.wasm").await;
    let long = Limits::default()
        .with_wall_clock(Duration::from_secs(30))
        .with_fuel(None);
    let r = tokio::time::timeout(
        Duration::from_millis(50),
        s.invoke_probe(&spin, "invoke", Some(0), &[], Some(long)),
    )
    .await;
    assert!(r.is_err(), "the spinner cannot finish in 50 ms: {r:?}");
    // The only slot is free again: this would wait 30 s for the spinner
    // otherwise (and the outer timeout would fire).
    let v = tokio::time::timeout(
        Duration::from_secs(5),
        s.invoke_probe(&echo, "invoke", Some(3), &[], None),
    )
    .await
    .expect("the slot was released")
    .unwrap();
    assert_eq!(v, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_is_bounded() {
    let mut cfg = test_config();
    cfg.max_concurrent = 1;
    cfg.max_queued = 2;
    let s = Sandbox::new(cfg).unwrap();
    let spin = load_probe_fixture(&s, "rfc0035/misbehaving-timeout.wasm").await;
    let limits = Limits::default()
        .with_wall_clock(Duration::from_millis(300))
        .with_fuel(None);
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let (s, spin, limits) = (s.clone(), spin.clone(), limits.clone());
        tasks.push(tokio::spawn(async move {
            s.invoke_probe(&spin, "invoke", Some(0), &[], Some(limits))
                .await
        }));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut overloaded = 0;
    for t in tasks {
        if let Err(SandboxError::Overloaded { .. }) = t.await.unwrap() {
            overloaded += 1;
        }
    }
    assert!(overloaded >= 2, "{overloaded}");
}

#[test]
fn invoke_blocking_works_without_a_runtime() {
    let s = Sandbox::new(test_config()).unwrap();
    let p = s
        .load_blocking(
            &fixture("rfc0035/well-behaved-echo.wasm"),
            LoadOptions::new(PackFormat::Probe),
        )
        .unwrap();
    let out = s
        .invoke_blocking(&p, &InvokeRequest::new("invoke", json!(9)))
        .unwrap();
    assert_eq!(out.result, GuestResult::Completed(json!(9)));
    let _: Arc<LoadedPack> = p;
}

#[tokio::test]
async fn time_spent_in_host_calls_counts_toward_the_wall_clock() {
    // Spins calling openwop_random for 1 MiB at a time (host-side work).
    let body = r#"(func $invoke (param i32 i32 i32) (result i64)
        (drop (memory.grow (i32.const 16)))
        (loop $l (call $random (i32.const 65536) (i32.const 1048576)) (br $l))
        (i64.const 0))"#;
    let p = load_core(core_module(
        r#"(import "openwop" "openwop_random" (func $random (param i32 i32)))"#,
        body,
    ))
    .await;
    let t = Instant::now();
    let e = sandbox()
        .invoke(
            &p,
            InvokeRequest::new("test.node", json!({}))
                .limits(Limits::default().with_wall_clock(Duration::from_millis(200))),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), "sandbox_timeout", "{e}");
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
}
