//! Pack authoring on the command line: `wopbox pack test` runs one node of a
//! local pack in the real sandbox (same manifest validation, policy, limits
//! and load path as the server) and reports output, logs and metrics.

use std::path::Path;

use serde_json::{json, Value};

use crate::packs::{packs_dir, wopbox};

fn pack(name: &str) -> String {
    packs_dir().join(name).display().to_string()
}

/// `wopbox pack test ... --json`: (exit code, report, stderr).
pub fn pack_test(dir: &str, extra: &[&str]) -> (i32, Value, String) {
    let mut args = vec!["pack", "test", dir, "--json"];
    args.extend_from_slice(extra);
    let out = wopbox(&args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("pack test printed no JSON ({e}); stderr: {stderr}"));
    (out.status.code().unwrap_or(-1), report, stderr)
}

#[test]
fn pack_test_runs_a_node_and_reports_output_logs_and_metrics() {
    let (code, r, stderr) = pack_test(&pack("greet"), &["--input", r#"{"name":"Ada"}"#]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(r["outcome"], "completed");
    assert_eq!(r["node"], "vendor.wopbox.greet.hello");
    assert_eq!(r["output"], json!({"greeting": "Hello, Ada!"}));
    assert_eq!(r["logs"][0]["level"], "info", "{r}");
    assert!(r["metrics"]["fuelConsumed"].as_u64().unwrap() > 0, "{r}");
    assert!(r["metrics"]["peakMemoryBytes"].as_u64().unwrap() >= 65536);
    assert!(r["metrics"]["durationMs"].as_f64().unwrap() > 0.0);
    // The server's defaults apply unless flags say otherwise.
    assert_eq!(r["limits"]["wallClockLimitMs"], 1000);
    assert_eq!(r["limits"]["memoryLimitBytes"], 64 << 20);

    // The human report says the same, and --repeat reports every run.
    let out = wopbox(&[
        "pack",
        "test",
        &pack("greet"),
        "--input",
        r#"{"name":"Bo"}"#,
        "--repeat",
        "3",
    ]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for want in [
        "outcome   completed",
        "\"greeting\": \"Hello, Bo!\"",
        "log       [info]",
        "fuel      ",
        "bytes peak",
        "runs      3 runs: min",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
}

#[test]
fn pack_test_fails_with_the_sandboxes_code_when_a_limit_is_breached() {
    let (code, r, stderr) = pack_test(&pack("misbehaving-memory"), &["--input", "{}"]);
    assert_eq!(code, 1);
    assert_eq!(r["outcome"], "failed");
    assert_eq!(r["error"]["error"], "sandbox_memory_exceeded", "{r}");
    assert_eq!(r["error"]["details"]["limitBytes"], 64 << 20);
    assert!(r["metrics"]["fuelConsumed"].is_null());
    assert!(
        stderr.contains("error: sandbox_memory_exceeded"),
        "{stderr}"
    );

    // A lower memory flag is the cap the node meets, exactly as `serve` would apply it.
    let (code, r, _) = pack_test(
        &pack("misbehaving-memory"),
        &["--input", "{}", "--sandbox-memory-bytes", "2097152"],
    );
    assert_eq!(code, 1);
    assert_eq!(r["error"]["details"]["limitBytes"], 2 << 20, "{r}");
}

#[test]
fn pack_test_refuses_packs_the_server_would_refuse() {
    // A module speaking an unknown ABI: refused at load, exit 2, the upload's code.
    let (code, r, stderr) = pack_test(&pack("misbehaving-abi"), &["--input", "{}"]);
    assert_eq!(code, 2);
    assert_eq!(r["error"], "pack_load_failure");
    assert_eq!(
        r["details"]["sandboxError"], "unsupported_abi_version",
        "{r}"
    );
    assert!(stderr.contains("pack_load_failure"), "{stderr}");

    // Declared needs the (empty) policy does not grant.
    let (code, r, _) = pack_test(
        &pack("files-component"),
        &["--input", "{}", "--node", "vendor.wopbox.files.env"],
    );
    assert_eq!(code, 2);
    assert_eq!(r["error"], "pack_runtime_requirement_unmet");
    assert_eq!(r["details"]["unmet"], json!(["fs.read", "env.read"]));

    // Usage mistakes are validation errors, not crashes.
    for (args, what) in [
        (vec!["--input", "[1]"], "must be a JSON object"),
        (vec!["--input", "{nope"], "not valid JSON"),
        (
            vec!["--input", "{}", "--node", "vendor.wopbox.greet.nope"],
            "has no node",
        ),
        (vec!["--input", "{}", "--grant", "sudo=yes"], "unknown kind"),
    ] {
        let dir = pack("greet");
        let mut full_args = vec!["pack", "test", dir.as_str(), "--json"];
        full_args.extend(args.iter().copied());
        let out = wopbox(&full_args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let env: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(env["error"], "validation_error", "{env}");
        assert!(env["message"].as_str().unwrap().contains(what), "{env}");
    }
    let out = wopbox(&["pack", "test", "/nonexistent-dir", "--input", "{}"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("pack.json"));
}

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

#[test]
fn pack_test_grants_reach_the_guest_and_guest_failures_keep_their_code() {
    let data = tempfile::tempdir().unwrap();
    write(data.path(), "note.txt", "from the host");
    let preopen = format!("preopen={}:/data", data.path().display());
    let grants = ["--grant", preopen.as_str(), "--grant", "runtime=env.read"];
    let files = pack("files-component");

    let mut args = vec![
        "--input",
        r#"{"path":"note.txt"}"#,
        "--node",
        "vendor.wopbox.files.read",
    ];
    args.extend_from_slice(&grants);
    let (code, r, stderr) = pack_test(&files, &args);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(r["output"]["content"], "from the host");
    assert_eq!(r["grants"]["preopens"][0]["guest"], "/data");

    // Read-only grant: the guest's write fails inside the guest, with its own code.
    let mut args = vec![
        "--input",
        r#"{"path":"note.txt","content":"pwned"}"#,
        "--node",
        "vendor.wopbox.files.write",
    ];
    args.extend_from_slice(&grants);
    let (code, r, stderr) = pack_test(&files, &args);
    assert_eq!(code, 1);
    assert_eq!(r["outcome"], "failed");
    assert_eq!(r["error"]["error"], "permission_denied", "{r}");
    assert!(stderr.contains("error: permission_denied"), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(data.path().join("note.txt")).unwrap(),
        "from the host"
    );

    // The same grants from the server's policy file.
    let policy = data.path().join("policy.toml");
    write(
        data.path(),
        "policy.toml",
        &format!(
            "[packs.\"vendor.wopbox.files\"]\nruntime = [\"env.read\"]\nenv = {{ GREETING = \"hi\" }}\npreopens = [{{ host = \"{}\", guest = \"/data\", mode = \"ro\" }}]\n",
            data.path().display()
        ),
    );
    let (code, r, stderr) = pack_test(
        &files,
        &[
            "--input",
            "{}",
            "--node",
            "vendor.wopbox.files.env",
            "--policy",
            policy.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(r["output"]["env"], json!({"GREETING": "hi"}), "{r}");
}
