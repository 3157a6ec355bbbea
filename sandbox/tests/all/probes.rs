//! Every RFC 0035 probe fixture (both the committed `.wasm` and its `.wat`
//! source) gets exactly the outcome the spec names (§3 and §6; BASE =
//! allowedHostCalls [], 2 MiB, 1000 ms).

use std::time::{Duration, Instant};

use wopbox_sandbox::*;

use crate::util::*;

async fn run(
    file: &str,
    entry: &str,
    arg: Option<i32>,
    allowed: &[&str],
    limits: Limits,
) -> Result<i32, SandboxError> {
    let pack = load_probe(file).await?;
    sandbox()
        .invoke_probe(&pack, entry, arg, allowed, Some(limits))
        .await
}

fn both(name: &str) -> [String; 2] {
    [
        format!("rfc0035/{name}.wasm"),
        format!("rfc0035/{name}.wat"),
    ]
}

#[tokio::test]
async fn well_behaved_echo() {
    for f in both("well-behaved-echo") {
        assert_eq!(
            run(&f, "invoke", Some(42), &[], base_limits())
                .await
                .unwrap(),
            42,
            "{f}"
        );
    }
}

#[tokio::test]
async fn echo_under_a_1000ms_budget_does_not_time_out() {
    let limits = base_limits().with_wall_clock(Duration::from_millis(1000));
    for i in 0..20 {
        assert_eq!(
            run(
                "rfc0035/well-behaved-echo.wasm",
                "invoke",
                Some(i),
                &[],
                limits.clone()
            )
            .await
            .unwrap(),
            i
        );
    }
}

#[tokio::test]
async fn host_fetch_granted_echoes() {
    for f in both("well-behaved-host-fetch") {
        assert_eq!(
            run(&f, "invoke", Some(7), &["fetch"], base_limits())
                .await
                .unwrap(),
            7,
            "{f}"
        );
        assert_eq!(
            run(&f, "invoke", Some(7), &["host.fetch"], base_limits())
                .await
                .unwrap(),
            7,
            "{f}"
        );
    }
}

#[tokio::test]
async fn host_fetch_without_grant_is_denied() {
    for f in both("well-behaved-host-fetch") {
        let e = run(&f, "invoke", Some(7), &[], base_limits())
            .await
            .unwrap_err();
        assert_eq!(e.code(), "sandbox_capability_denied", "{f}");
        assert_eq!(e.details()["requestedCapability"], "fetch");
        assert!(e.details()["message"].is_string());
        let e = run(&f, "invoke", Some(7), &["privileged"], base_limits())
            .await
            .unwrap_err();
        assert_eq!(e.details()["requestedCapability"], "fetch");
    }
}

#[tokio::test]
async fn invocation_grant_overrides_load_grant() {
    // Granted at load, but this invocation sends allowedHostCalls: [].
    let pack = sandbox()
        .load(
            fixture("rfc0035/well-behaved-host-fetch.wasm"),
            LoadOptions::new(PackFormat::Probe).grants(Grants::host_calls(["fetch"])),
        )
        .await
        .unwrap();
    let e = sandbox()
        .invoke_probe(&pack, "invoke", Some(1), &[], None)
        .await
        .unwrap_err();
    assert_eq!(e.code(), "sandbox_capability_denied");
    // No invocation grant at all: the load-time grant applies.
    let out = sandbox()
        .invoke(&pack, InvokeRequest::new("invoke", 5.into()))
        .await
        .unwrap();
    assert_eq!(out.result, GuestResult::Completed(5.into()));
}

#[tokio::test]
async fn capability_gate() {
    for f in both("misbehaving-capability-gate") {
        let e = run(&f, "invoke", Some(1), &[], base_limits())
            .await
            .unwrap_err();
        assert_eq!(e.code(), "sandbox_capability_denied", "{f}");
        assert_eq!(e.details()["requestedCapability"], "privileged");
        // Granting something else does not help.
        let e = run(&f, "invoke", Some(1), &["fetch"], base_limits())
            .await
            .unwrap_err();
        assert_eq!(e.details()["requestedCapability"], "privileged");
    }
}

async fn assert_escape(name: &str, kind: &str) {
    for f in both(name) {
        // Refused at load, before anything is instantiated.
        let e = load_probe(&f).await.unwrap_err();
        assert_eq!(e.code(), "sandbox_escape_attempt", "{f}: {e}");
        assert_eq!(e.details()["escapeKind"], kind, "{f}");
        assert!(matches!(e, SandboxError::EscapeAttempt { .. }));
        // Even with every grant there is.
        let e = sandbox()
            .load(
                fixture(&f),
                LoadOptions::new(PackFormat::Probe).grants(Grants::host_calls([
                    "fetch",
                    "fd_read",
                    "environ_get",
                ])),
            )
            .await
            .unwrap_err();
        assert_eq!(e.details()["escapeKind"], kind, "{f}");
    }
}

#[tokio::test]
async fn fs_escape() {
    assert_escape("misbehaving-fs", "host-fs-escape").await;
}

#[tokio::test]
async fn env_leak() {
    assert_escape("misbehaving-env", "host-env-leak").await;
}

#[tokio::test]
async fn network_escape() {
    assert_escape("misbehaving-network", "network-escape").await;
}

#[tokio::test]
async fn process_escape() {
    assert_escape("misbehaving-process", "host-process-escape").await;
}

#[tokio::test]
async fn memory_cap() {
    for f in both("misbehaving-memory") {
        let e = run(&f, "invoke", Some(0), &[], base_limits())
            .await
            .unwrap_err();
        assert_eq!(e.code(), "sandbox_memory_exceeded", "{f}: {e}");
        assert_eq!(e.details()["limitBytes"], 2 << 20);
        assert_eq!(e.cap_breach().unwrap().kind, CapKind::WasmMemory);
    }
}

#[tokio::test]
async fn timeout_300ms() {
    for f in both("misbehaving-timeout") {
        let limits = base_limits()
            .with_wall_clock(Duration::from_millis(300))
            .with_fuel(None);
        let t = Instant::now();
        let e = run(&f, "invoke", Some(0), &[], limits).await.unwrap_err();
        let took = t.elapsed();
        assert_eq!(e.code(), "sandbox_timeout", "{f}: {e}");
        assert!(matches!(e, SandboxError::Timeout { .. }), "{e:?}");
        let elapsed = e.details()["elapsedMs"].as_u64().unwrap();
        assert!(elapsed >= 300, "{elapsed}");
        assert!(took < Duration::from_millis(1500), "{took:?}");
        let b = e.cap_breach().unwrap();
        assert_eq!((b.kind, b.limit), (CapKind::WasmExecutionTime, 300));
    }
}

#[tokio::test]
async fn isolation_global_fresh_instance_per_invocation() {
    for f in both("isolation-global") {
        let pack = load_probe(&f).await.unwrap();
        assert_eq!(pack.node_type_ids(), ["bump", "read"]);
        for _ in 0..3 {
            assert_eq!(
                sandbox()
                    .invoke_probe(&pack, "bump", None, &[], None)
                    .await
                    .unwrap(),
                1,
                "{f}"
            );
        }
        assert_eq!(
            sandbox()
                .invoke_probe(&pack, "read", None, &[], None)
                .await
                .unwrap(),
            0,
            "{f}"
        );
        // A second load of the same bytes shares code, not state.
        let again = load_probe(&f).await.unwrap();
        assert_eq!(
            sandbox()
                .invoke_probe(&again, "read", None, &[], None)
                .await
                .unwrap(),
            0
        );
    }
}

#[tokio::test]
async fn committed_wasm_matches_wat_source() {
    for e in std::fs::read_dir(crate::util::shared_probes().join("rfc0035-sandbox")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().and_then(|x| x.to_str()) == Some("wat") {
            let name = p.file_stem().unwrap().to_str().unwrap();
            let from_wat = fixture(&format!("rfc0035/{name}.wat"));
            let committed = fixture(&format!("rfc0035/{name}.wasm"));
            // wabt and `wat` may differ in encoding details; both must at
            // least agree on imports and exports.
            let a = wasmtime::Module::new(&wasmtime::Engine::default(), &from_wat).unwrap();
            let b = wasmtime::Module::new(&wasmtime::Engine::default(), &committed).unwrap();
            let ia: Vec<_> = a
                .imports()
                .map(|i| (i.module().to_string(), i.name().to_string()))
                .collect();
            let ib: Vec<_> = b
                .imports()
                .map(|i| (i.module().to_string(), i.name().to_string()))
                .collect();
            assert_eq!(ia, ib, "{name}");
            let ea: Vec<_> = a.exports().map(|e| e.name().to_string()).collect();
            let eb: Vec<_> = b.exports().map(|e| e.name().to_string()).collect();
            assert_eq!(ea, eb, "{name}");
        }
    }
}

#[tokio::test]
async fn unknown_entry() {
    let pack = load_probe("rfc0035/well-behaved-echo.wasm").await.unwrap();
    let e = sandbox()
        .invoke_probe(&pack, "nope", Some(1), &[], None)
        .await
        .unwrap_err();
    assert!(matches!(e, SandboxError::UnknownNode { .. }));
}

#[tokio::test]
async fn format_detection() {
    assert_eq!(
        PackFormat::detect(&fixture("rfc0035/well-behaved-echo.wasm")),
        Some(PackFormat::Probe)
    );
    assert_eq!(
        PackFormat::detect(&pack_file("greet/greet.wasm")),
        Some(PackFormat::CoreModule)
    );
    assert_eq!(PackFormat::detect(b"not wasm"), None);
}
