//! A small host embedding the sandbox: load the packs in `packs/`, run the
//! greeting, and show what a misbehaving pack looks like to the host.
//!
//!     cargo run -p wopbox-sandbox --example embed [name]

use std::path::Path;

use serde_json::json;
use wopbox_sandbox::*;

#[tokio::main]
async fn main() -> Result<(), SandboxError> {
    let name = std::env::args().nth(1).unwrap_or_else(|| "embedder".into());
    let packs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packs");
    let read = |rel: &str| std::fs::read(packs.join(rel)).expect("pack file");

    let sandbox = Sandbox::new(SandboxConfig::default())?;

    // A well-behaved pack: load (validates, gates imports, runs the ABI
    // handshake), then invoke one node in a fresh instance.
    let greet = sandbox
        .load(
            read("greet/greet.wasm"),
            LoadOptions::new(PackFormat::CoreModule).name("vendor.wopbox.greet"),
        )
        .await?;
    println!(
        "loaded {} with nodes {:?}",
        greet.name(),
        greet.node_type_ids()
    );
    let out = sandbox
        .invoke(
            &greet,
            InvokeRequest::new("vendor.wopbox.greet.hello", json!({ "name": name })),
        )
        .await?;
    println!("result: {:?}", out.result);
    println!("logs: {:?}", out.logs);
    println!(
        "fuel {} · peak memory {} B · {:?}",
        out.metrics.fuel_consumed, out.metrics.peak_memory_bytes, out.metrics.duration
    );

    // A pack answering ABI version 999 never loads.
    match sandbox
        .load(
            read("misbehaving-abi/abi-bomb.wasm"),
            LoadOptions::new(PackFormat::CoreModule),
        )
        .await
    {
        Err(e) => println!("abi-bomb refused: {} ({e})", e.code()),
        Ok(_) => unreachable!("ABI 999 must be refused"),
    }

    // A memory bomb hits the cap: the host gets a typed error and the
    // RFC 0008 cap.breached data.
    let bomb = sandbox
        .load(
            read("misbehaving-memory/memory-bomb.wasm"),
            LoadOptions::new(PackFormat::CoreModule),
        )
        .await?;
    let err = sandbox
        .invoke(
            &bomb,
            InvokeRequest::new("vendor.openwop.misbehaving.memory-bomb", json!({})),
        )
        .await
        .expect_err("the memory bomb must fail");
    println!(
        "memory-bomb: {} · cap.breached {}",
        err.to_json(),
        err.cap_breach().map(|b| b.to_json()).unwrap_or_default()
    );
    Ok(())
}
