//! A small host embedding the sandbox: load packs from `packs/`, run the
//! greeting under explicit grants and limits, show a capability granted per
//! invocation, and show what a misbehaving pack looks like to the host.
//!
//!     cargo run -p wopbox-sandbox --example embed [name]
//!
//! Every failure is a typed [`SandboxError`] (or an I/O error reading a
//! pack file); nothing here panics on a hostile module.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;
use wopbox_sandbox::*;

/// Why the example stopped.
#[derive(Debug, thiserror::Error)]
enum ExampleError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    #[error("{0}")]
    Unexpected(String),
}

fn read(packs: &Path, rel: &str) -> Result<Vec<u8>, ExampleError> {
    let path = packs.join(rel);
    std::fs::read(&path).map_err(|source| ExampleError::Read { path, source })
}

#[tokio::main]
async fn main() -> Result<(), ExampleError> {
    let name = std::env::args().nth(1).unwrap_or_else(|| "embedder".into());
    let packs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packs");

    // One sandbox per process (no global state: it is an ordinary value,
    // cheap to clone). Host-wide defaults and concurrency bounds live here.
    let config = SandboxConfig {
        default_limits: Limits::default()
            .with_wall_clock(Duration::from_secs(2))
            .with_memory_bytes(32 << 20),
        max_concurrent: 2,
        ..SandboxConfig::default()
    };
    let sandbox = Sandbox::new(config)?;

    // A well-behaved pack, loaded with explicit grants (none: pure compute;
    // the RFC 0008 baseline imports such as openwop_log are always linked)
    // and the limits its invocations run under. Load validates, gates
    // imports and runs the ABI handshake.
    let greet = sandbox
        .load(
            read(&packs, "greet/greet.wasm")?,
            LoadOptions::new(PackFormat::CoreModule)
                .name("vendor.wopbox.greet")
                .grants(Grants::none())
                .limits(
                    Limits::default()
                        .with_fuel(Some(10_000_000))
                        .with_wall_clock(Duration::from_millis(500))
                        .with_memory_bytes(16 << 20),
                ),
        )
        .await?;
    println!(
        "loaded {} with nodes {:?}",
        greet.name(),
        greet.node_type_ids()
    );
    // One invocation = one fresh instance. The context is the RFC 0008
    // nodeContext the guest sees.
    let context = NodeContext {
        run_id: "run-1".into(),
        node_id: "greet".into(),
        tenant_id: "example".into(),
        ..NodeContext::default()
    };
    let out = sandbox
        .invoke(
            &greet,
            InvokeRequest::new("vendor.wopbox.greet.hello", json!({ "name": name }))
                .context(context),
        )
        .await?;
    println!("result: {:?}", out.result);
    println!("logs: {:?}", out.logs);
    println!(
        "fuel {} · peak memory {} B · {:?}",
        out.metrics.fuel_consumed, out.metrics.peak_memory_bytes, out.metrics.duration
    );

    // Grants per invocation (RFC 0035 probe ABI): the same module is denied
    // the `fetch` host call unless this call grants it.
    let fetch = sandbox
        .load(
            read(&packs, "conformance-sandbox/probes/host-fetch.wasm")?,
            LoadOptions::new(PackFormat::Probe),
        )
        .await?;
    match sandbox
        .invoke_probe(&fetch, "invoke", Some(7), &[], None)
        .await
    {
        Err(e) => println!("host-fetch without a grant: {} ({})", e.code(), e.details()),
        Ok(v) => {
            return Err(ExampleError::Unexpected(format!(
                "ungranted fetch answered {v}"
            )))
        }
    }
    let v = sandbox
        .invoke_probe(&fetch, "invoke", Some(7), &["host.fetch"], None)
        .await?;
    println!("host-fetch with the grant: {v}");

    // A pack answering ABI version 999 never loads.
    match sandbox
        .load(
            read(&packs, "misbehaving-abi/abi-bomb.wasm")?,
            LoadOptions::new(PackFormat::CoreModule),
        )
        .await
    {
        Err(e) => println!("abi-bomb refused: {} ({e})", e.code()),
        Ok(_) => return Err(ExampleError::Unexpected("ABI 999 was accepted".into())),
    }

    // A memory bomb under a tighter per-invocation memory cap: the host gets
    // a typed error and the RFC 0008 cap.breached data.
    let bomb = sandbox
        .load(
            read(&packs, "misbehaving-memory/memory-bomb.wasm")?,
            LoadOptions::new(PackFormat::CoreModule),
        )
        .await?;
    let req = InvokeRequest::new("vendor.openwop.misbehaving.memory-bomb", json!({}))
        .limits(Limits::default().with_memory_bytes(8 << 20));
    match sandbox.invoke(&bomb, req).await {
        Err(e) => println!(
            "memory-bomb: {} · cap.breached {}",
            e.to_json(),
            e.cap_breach().map(|b| b.to_json()).unwrap_or_default()
        ),
        Ok(o) => {
            return Err(ExampleError::Unexpected(format!(
                "the memory bomb answered {:?}",
                o.result
            )))
        }
    }
    Ok(())
}
