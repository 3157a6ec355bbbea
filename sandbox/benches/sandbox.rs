//! `cargo bench -p wopbox-sandbox [-- fresh_instance]`
//!
//! * `fresh_instance/echo_probe`: the RFC 0035 echo probe, loaded once; each
//!   iteration is one complete isolated invocation through the public async
//!   API (queue slot, fresh Store + instance from the InstancePre, async
//!   call on the calling task, teardown).
//! * `fresh_instance/rfc0008_greet`: the same for `packs/greet` (JSON
//!   request written into guest memory, node invoked, JSON response read
//!   back and parsed, both buffers freed).
//! * `*_blocking` variants: the same work through `invoke_blocking` on the
//!   bench thread (no queue slot, no runtime worker).
//! * `baseline_spawn_blocking_roundtrip`: one hop to Tokio's blocking pool
//!   and back, what component invocations pay (and what core-module
//!   invocations paid before they ran on the calling task).
//!
//! Before the benchmarks it prints how far past its wall-clock cap a
//! timed-out invocation returns (epoch interruption latency).

use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion};
use serde_json::json;
use wopbox_sandbox::*;

fn repo_file(rel: &str) -> Vec<u8> {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn setup() -> (tokio::runtime::Runtime, Sandbox) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let s = Sandbox::new(SandboxConfig::default()).unwrap();
    (rt, s)
}

fn fresh_instance(c: &mut Criterion) {
    let (rt, s) = setup();
    let echo = s
        .load_blocking(
            &repo_file("../../shared/probes/rfc0035-sandbox/well-behaved-echo.wasm"),
            LoadOptions::new(PackFormat::Probe),
        )
        .unwrap();
    let greet = s
        .load_blocking(
            &repo_file("../packs/greet/greet.wasm"),
            LoadOptions::new(PackFormat::CoreModule),
        )
        .unwrap();
    let echo_req = InvokeRequest::new("invoke", json!(42));
    let greet_req = InvokeRequest::new("vendor.wopbox.greet.hello", json!({"name": "bench"}));

    let mut g = c.benchmark_group("fresh_instance");
    g.bench_function("echo_probe", |b| {
        b.iter(|| {
            let out = rt.block_on(s.invoke(&echo, echo_req.clone())).unwrap();
            debug_assert_eq!(out.result, GuestResult::Completed(json!(42)));
            out
        })
    });
    g.bench_function("rfc0008_greet", |b| {
        b.iter(|| {
            let out = rt.block_on(s.invoke(&greet, greet_req.clone())).unwrap();
            debug_assert!(matches!(out.result, GuestResult::Completed(_)));
            out
        })
    });
    g.bench_function("echo_probe_blocking", |b| {
        b.iter(|| s.invoke_blocking(&echo, &echo_req).unwrap())
    });
    g.bench_function("baseline_spawn_blocking_roundtrip", |b| {
        b.iter(|| rt.block_on(async { tokio::task::spawn_blocking(|| 1u32).await.unwrap() }))
    });
    g.bench_function("rfc0008_greet_blocking", |b| {
        b.iter(|| s.invoke_blocking(&greet, &greet_req).unwrap())
    });
    g.finish();
}

/// How long past the cap a timed-out invocation takes to return.
fn timeout_overshoot() {
    let (rt, s) = setup();
    let spin = s
        .load_blocking(
            &repo_file("../../shared/probes/rfc0035-sandbox/misbehaving-timeout.wasm"),
            LoadOptions::new(PackFormat::Probe),
        )
        .unwrap();
    let cap = Duration::from_millis(50);
    let limits = Limits::default().with_wall_clock(cap).with_fuel(None);
    let mut over: Vec<Duration> = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        let r = rt.block_on(s.invoke(
            &spin,
            InvokeRequest::new("invoke", json!(0)).limits(limits.clone()),
        ));
        let took = t.elapsed();
        assert!(matches!(r, Err(SandboxError::Timeout { .. })), "{r:?}");
        over.push(took.saturating_sub(cap));
    }
    over.sort();
    println!(
        "timeout_overshoot: cap {cap:?}, returned past the cap by median {:?}, max {:?} (20 runs, epoch tick {:?})",
        over[over.len() / 2],
        over[over.len() - 1],
        s.config().engine.epoch_tick
    );
}

criterion_group!(benches, fresh_instance);

/// `fresh_instance/component_files`: the files component pack (Rust
/// `wasm32-wasip2` guest, `packs/files-component`), loaded once with a
/// read-only preopen; each iteration is one isolated invocation through the
/// public async API that reads a small file through WASI (fresh Store, WASI
/// context with the preopen and bounded stdio, instance from the
/// `NodePackPre`, async call under the wall-clock timeout, teardown).
/// `component_files_blocking`: the same through `invoke_blocking`.
fn fresh_instance_component(c: &mut Criterion) {
    let (rt, s) = setup();
    let dir = std::env::temp_dir().join(format!("wopbox-bench-files-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("hello.txt"), "hello from the host\n").unwrap();
    let grants = Grants {
        preopened_dirs: vec![PreopenDir {
            host_path: dir.clone(),
            guest_path: "/data".into(),
            access: DirAccess::ReadOnly,
        }],
        env_read: true,
        ..Grants::default()
    };
    let files = s
        .load_blocking(
            &repo_file("../packs/files-component/files_component.wasm"),
            LoadOptions::new(PackFormat::Component).grants(grants),
        )
        .unwrap();
    let req = InvokeRequest::new("vendor.wopbox.files.read", json!({"path": "hello.txt"}));
    let mut g = c.benchmark_group("fresh_instance");
    g.bench_function("component_files", |b| {
        b.iter(|| {
            let out = rt.block_on(s.invoke(&files, req.clone())).unwrap();
            debug_assert!(matches!(out.result, GuestResult::Completed(_)));
            out
        })
    });
    g.bench_function("component_files_blocking", |b| {
        b.iter(|| s.invoke_blocking(&files, &req).unwrap())
    });
    g.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(component_benches, fresh_instance_component);

fn main() {
    timeout_overshoot();
    benches();
    component_benches();
    Criterion::default().configure_from_args().final_summary();
}
