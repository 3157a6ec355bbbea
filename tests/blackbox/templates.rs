//! `wopbox pack new` templates build as generated and their node runs in the real sandbox.
//!
//! Each test creates a project, and where the language's toolchain is present runs the
//! project's own `build.sh`, then `wopbox pack test` on the result, then `wopbox pack push` to a
//! spawned host and a workflow run of the node over HTTP. Where the toolchain is
//! absent (a CI machine that cannot fetch wasm32 targets, componentize-py or componentize-js)
//! it says so on the terminal and checks only what `pack new` wrote; once a toolchain is found,
//! any build or run failure fails the test. `WOPBOX_REQUIRE_TOOLCHAINS=1` turns a missing
//! toolchain into a failure too.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

use crate::authoring::pack_test;
use crate::examples::{push_dir, run_node};
use crate::harness::Host;
use crate::packs::{packs_dir, wopbox};

/// Printed past the test harness's capture, so a skip is visible in a normal run.
fn say(msg: &str) {
    let _ = writeln!(std::io::stderr(), "{msg}");
}

/// A toolchain that is missing: skip (loudly) unless the run requires every toolchain.
fn missing(what: &str) {
    let msg = format!("templates: skipped building the {what} template: toolchain not found (tested the generated files only)");
    if std::env::var("WOPBOX_REQUIRE_TOOLCHAINS").as_deref() == Ok("1") {
        panic!("{msg}, and WOPBOX_REQUIRE_TOOLCHAINS=1");
    }
    say(&msg);
}

/// `wopbox pack new DIR --lang LANG`; asserts it succeeded and returns the project dir.
fn pack_new(root: &Path, name: &str, lang: &str) -> PathBuf {
    let dir = root.join(name);
    let out = wopbox(&["pack", "new", &dir.display().to_string(), "--lang", lang]);
    assert!(
        out.status.success(),
        "pack new --lang {lang} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("node   vendor.example.{name}.greet")),
        "{text}"
    );
    for f in ["pack.json", "build.sh", "README.md"] {
        assert!(dir.join(f).is_file(), "{lang}: no {f}");
    }
    assert_only_the_entry_is_missing(&dir, name);
    dir
}

/// Before `build.sh` ran, `pack test` gets past the manifest (it validates, names the node,
/// needs no grant) and stops only at the entry that `build.sh` is written to produce.
fn assert_only_the_entry_is_missing(dir: &Path, name: &str) {
    let entry = format!("{name}.wasm");
    let build_sh = std::fs::read_to_string(dir.join("build.sh")).unwrap();
    assert!(build_sh.contains(&entry), "build.sh does not make {entry}");
    let (code, r, stderr) = pack_test(&dir.display().to_string(), &["--input", "{}"]);
    assert_eq!(code, 2, "{stderr}\n{r}");
    assert_eq!(r["error"], "validation_error", "{r}");
    let msg = r["message"].as_str().unwrap_or_default();
    assert!(
        msg.starts_with("cannot read ") && msg.contains(&entry),
        "{r}"
    );
}

/// Runs `cmd`, failing the test with its output if it fails.
fn run_ok(mut cmd: Command, what: &str) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The generated project's `build.sh`, with `path_front` searched first for tools.
fn build(dir: &Path, path_front: Option<&Path>, envs: &[(&str, String)]) {
    let mut cmd = Command::new("bash");
    cmd.arg(dir.join("build.sh")).current_dir(dir);
    if let Some(front) = path_front {
        let path = std::env::var("PATH").unwrap_or_default();
        cmd.env("PATH", format!("{}:{path}", front.display()));
    }
    for (k, v) in envs {
        cmd.env(k, v);
    }
    run_ok(cmd, &format!("{}/build.sh", dir.display()));
}

/// The generated node runs, uses its configuration, logs, and fails with its own codes.
fn assert_greets(dir: &Path, name: &str) {
    let d = dir.display().to_string();
    let (code, r, stderr) = pack_test(
        &d,
        &[
            "--input",
            r#"{"name":"Ada"}"#,
            "--config",
            r#"{"greeting":"Hi"}"#,
        ],
    );
    assert_eq!(code, 0, "{stderr}\n{r}");
    assert_eq!(r["node"], format!("vendor.example.{name}.greet"));
    assert_eq!(r["output"], json!({"message": "Hi, Ada!"}));
    assert_eq!(r["logs"][0]["message"], "greeting Ada", "{r}");

    let (code, r, _) = pack_test(&d, &["--input", r#"{"name":"  "}"#]);
    assert_eq!(code, 1);
    assert_eq!(r["error"]["error"], "validation_error", "{r}");
    let long = json!({ "name": "n".repeat(101) }).to_string();
    let (code, r, _) = pack_test(&d, &["--input", &long]);
    assert_eq!(code, 1);
    assert_eq!(r["error"]["error"], "name_too_long", "{r}");
    assert_eq!(r["error"]["details"], json!({"len": 101}), "{r}");
}

/// The built project uploads as generated and its node runs in a workflow on a server.
async fn assert_runs_on_a_server(dir: &Path, name: &str) {
    let h = Host::start().await;
    let pack = format!("vendor.example.{name}");
    let node = format!("{pack}.greet");
    let pushed = push_dir(&h, &dir.display().to_string());
    assert_eq!(pushed["name"], pack, "{pushed}");
    assert_eq!(pushed["typeIds"], json!([node]), "{pushed}");

    let (status, p) = run_node(
        &h,
        &format!("{name}-ok"),
        &node,
        json!({"greeting": "Hi"}),
        json!({"name": "Ada"}),
    )
    .await;
    assert_eq!(status, "completed", "{p}");
    assert_eq!(p["outputs"], json!({"message": "Hi, Ada!"}));
    assert_eq!(p["metrics"]["logs"][0]["message"], "greeting Ada", "{p}");

    let (status, p) = run_node(
        &h,
        &format!("{name}-long"),
        &node,
        json!({}),
        json!({"name": "n".repeat(101)}),
    )
    .await;
    assert_eq!(status, "failed", "{p}");
    assert_eq!(p["error"]["code"], "name_too_long", "{p}");
    assert_eq!(p["error"]["details"]["guestDetails"], json!({"len": 101}));
}

/// A tool on PATH, else in `packs/.toolchain` (where `WOPBOX_FETCH_TOOLCHAINS=1 packs/build.sh`
/// installs it): the directory holding it.
fn tool_dir(name: &str, local: &str) -> Option<PathBuf> {
    let on_path = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    on_path
        .or_else(|| Some(packs_dir().join(".toolchain").join(local).join(name)))
        .filter(|p| p.is_file())
        .and_then(|p| p.parent().map(Path::to_path_buf))
}

fn rust_target_installed(target: &str) -> bool {
    Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.trim() == target)
        })
        .unwrap_or(false)
}

#[tokio::test]
async fn rust_template_builds_and_its_node_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = pack_new(tmp.path(), "hello_rs", "rust");
    let cargo = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
    let pdk = std::fs::canonicalize(packs_dir().join("../pdk")).unwrap();
    assert!(
        cargo.contains(&format!("path = \"{}\"", pdk.display())),
        "{cargo}"
    );
    if !rust_target_installed("wasm32-unknown-unknown") {
        return missing("rust (wasm32-unknown-unknown)");
    }
    // One target dir for every run, so only the first build compiles serde for wasm.
    let target = packs_dir().join("../target/pack-templates");
    build(
        &dir,
        None,
        &[("CARGO_TARGET_DIR", target.display().to_string())],
    );
    assert_greets(&dir, "hello_rs");
    assert_runs_on_a_server(&dir, "hello_rs").await;
}

#[tokio::test]
async fn python_template_builds_and_its_node_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = pack_new(tmp.path(), "hello_py", "python");
    assert!(dir.join("wit/node-pack.wit").is_file());
    let Some(tools) = tool_dir("componentize-py", ".venv/bin") else {
        return missing("python (componentize-py)");
    };
    build(&dir, Some(&tools), &[]);
    assert_greets(&dir, "hello_py");
    assert_runs_on_a_server(&dir, "hello_py").await;
}

#[tokio::test]
async fn js_template_builds_and_its_node_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = pack_new(tmp.path(), "hello_js", "js");
    let pkg: Value =
        serde_json::from_slice(&std::fs::read(dir.join("package.json")).unwrap()).unwrap();
    assert!(pkg["devDependencies"]["@bytecodealliance/componentize-js"].is_string());
    let Some(tools) = tool_dir("componentize-js", "node_modules/.bin") else {
        return missing("js (componentize-js)");
    };
    build(&dir, Some(&tools), &[]);
    assert_greets(&dir, "hello_js");
    assert_runs_on_a_server(&dir, "hello_js").await;
}

#[test]
fn pack_new_refuses_a_bad_name_and_a_non_empty_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("p").display().to_string();
    let out = wopbox(&["pack", "new", &dir, "--lang", "js", "--name", "acme.pack"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("error: validation_error: pack name"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !tmp.path().join("p").exists(),
        "nothing is written on a usage error"
    );

    std::fs::write(tmp.path().join("mine.txt"), "keep").unwrap();
    let out = wopbox(&[
        "pack",
        "new",
        &tmp.path().display().to_string(),
        "--lang",
        "rust",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        std::fs::read_to_string(tmp.path().join("mine.txt")).unwrap(),
        "keep"
    );
    let out = wopbox(&["pack", "new", &dir, "--lang", "cobol"]);
    assert!(!out.status.success());
}
