//! The on-disk compile cache: content-addressed, sealed with the host key,
//! and never trusting a file this host did not write.

use wopbox_sandbox::*;

use crate::util::*;

fn with_cache(dir: &std::path::Path) -> Sandbox {
    let mut c = test_config();
    c.engine.cache_dir = Some(dir.to_path_buf());
    Sandbox::new(c).unwrap()
}

fn artifacts(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().and_then(|x| x.to_str()) == Some("cwasm"))
        .collect();
    v.sort();
    v
}

async fn greet(s: &Sandbox) -> std::sync::Arc<LoadedPack> {
    let p = s
        .load(
            pack_file("greet/greet.wasm"),
            LoadOptions::new(PackFormat::CoreModule),
        )
        .await
        .unwrap();
    let out = s
        .invoke(
            &p,
            InvokeRequest::new(
                "vendor.wopbox.greet.hello",
                serde_json::json!({"name": "c"}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(
        out.result,
        GuestResult::Completed(serde_json::json!({"greeting": "Hello, c!"}))
    );
    p
}

#[tokio::test]
async fn compile_once_then_memory_then_disk() {
    let dir = tempfile::tempdir().unwrap();
    let s = with_cache(dir.path());
    assert_eq!(greet(&s).await.cache_status(), CacheStatus::Compiled);
    assert_eq!(greet(&s).await.cache_status(), CacheStatus::Memory);
    let files = artifacts(dir.path());
    assert_eq!(files.len(), 1);
    let name = files[0].file_name().unwrap().to_str().unwrap().to_string();
    let sha = greet(&s).await.sha256().to_string();
    assert!(name.starts_with(&sha), "{name}");
    assert!(name.contains(s.engine().compatibility_hash()), "{name}");
    // A new host process (new Sandbox) reuses the sealed artifact.
    let s2 = with_cache(dir.path());
    assert_eq!(greet(&s2).await.cache_status(), CacheStatus::Disk);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("host.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "host key must be private: {mode:o}");
    }
}

#[tokio::test]
async fn tampered_or_foreign_artifacts_are_never_deserialized() {
    let dir = tempfile::tempdir().unwrap();
    greet(&with_cache(dir.path())).await;
    let file = artifacts(dir.path()).remove(0);
    // Flip one byte of the payload: the seal no longer verifies.
    let mut bytes = std::fs::read(&file).unwrap();
    let n = bytes.len();
    bytes[n - 100] ^= 0xff;
    std::fs::write(&file, &bytes).unwrap();
    assert_eq!(
        greet(&with_cache(dir.path())).await.cache_status(),
        CacheStatus::Compiled
    );
    // A raw wasmtime artifact planted under the right name (no seal).
    let engine = with_cache(dir.path());
    let raw = wasmtime::Engine::default()
        .precompile_module(&pack_file("greet/greet.wasm"))
        .unwrap();
    std::fs::write(&file, raw).unwrap();
    assert_eq!(greet(&engine).await.cache_status(), CacheStatus::Compiled);
    // An artifact sealed with another host's key.
    let other = tempfile::tempdir().unwrap();
    greet(&with_cache(other.path())).await;
    std::fs::copy(artifacts(other.path()).remove(0), &file).unwrap();
    assert_eq!(
        greet(&with_cache(dir.path())).await.cache_status(),
        CacheStatus::Compiled
    );
    // ... and after recompiling, the host's own artifact is trusted again.
    assert_eq!(
        greet(&with_cache(dir.path())).await.cache_status(),
        CacheStatus::Disk
    );
}

#[tokio::test]
async fn different_bytes_different_entries() {
    let dir = tempfile::tempdir().unwrap();
    let s = with_cache(dir.path());
    greet(&s).await;
    s.load(
        pack_file("rust-hello/rust-hello.wasm"),
        LoadOptions::new(PackFormat::CoreModule),
    )
    .await
    .unwrap();
    assert_eq!(artifacts(dir.path()).len(), 2);
}
