//! `wopbox run WORKFLOW [--input] [--watch]` against a spawned host: the CLI binary's stdout
//! (not a terminal here, so one line per event) and its exit codes.

use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::harness::Host;

fn cli(h: &Host, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wopbox"));
    cmd.arg("run")
        .args(args)
        .arg("--url")
        .arg(&h.base)
        .arg("--api-key")
        .arg(&h.key)
        .env_remove("WOPBOX_URL")
        .env_remove("WOPBOX_API_KEY")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// Run the CLI to its exit: (exit code, stdout lines without the elapsed-time column, stderr).
async fn run_cli(h: &Host, args: &[&str]) -> (i32, Vec<String>, String) {
    let out = tokio::time::timeout(Duration::from_secs(30), cli(h, args).output())
        .await
        .expect("the CLI exits")
        .expect("spawn the CLI");
    let stdout = String::from_utf8_lossy(&out.stdout);
    (
        out.status.code().expect("exit code"),
        stdout.lines().map(strip_elapsed).collect(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Plain-mode lines start with the elapsed time (`   0.1s `); tests compare what follows.
fn strip_elapsed(line: &str) -> String {
    let t = line.trim_start();
    match t.split_once("s ") {
        Some((secs, rest)) if secs.parse::<f64>().is_ok() => rest.to_string(),
        _ => line.to_string(),
    }
}

fn run_id_of(lines: &[String]) -> String {
    lines
        .iter()
        .find_map(|l| l.strip_prefix("watching run "))
        .unwrap_or_else(|| panic!("no 'watching run' line: {lines:#?}"))
        .to_string()
}

#[tokio::test]
async fn watch_a_completing_and_a_failing_run() {
    let h = Host::start().await;

    let (code, lines, err) = run_cli(&h, &["conformance-multi-node", "--watch"]).await;
    assert_eq!(code, 0, "{lines:#?} {err}");
    let run = run_id_of(&lines);
    let expected: Vec<String> = [format!("watching run {run}"), format!("run {run}: running")]
        .into_iter()
        .collect();
    assert_eq!(lines[..2], expected[..], "{lines:#?}");
    for n in ["a", "b", "c"] {
        let running = lines
            .iter()
            .position(|l| l == &format!("node {n}: running"));
        let done = lines
            .iter()
            .position(|l| l.starts_with(&format!("node {n}: completed (")) && l.ends_with(" ms)"));
        assert!(
            matches!((running, done), (Some(r), Some(d)) if r < d),
            "node {n}: {lines:#?}"
        );
    }
    assert_eq!(lines.last().unwrap(), &format!("run {run}: completed"));
    // The outcome shown is the server's.
    assert_eq!(h.snapshot(&run).await["status"], "completed");

    let (code, lines, err) = run_cli(&h, &["conformance-failure", "--watch"]).await;
    assert_eq!(code, 3, "a failed run exits 3: {lines:#?} {err}");
    let run = run_id_of(&lines);
    let snap = h.snapshot(&run).await;
    assert_eq!(snap["status"], "failed");
    let error = format!(
        "{}: {}",
        snap["error"]["code"].as_str().unwrap(),
        snap["error"]["message"].as_str().unwrap()
    );
    assert!(
        lines.contains(&format!("node fail: failed ({error})")),
        "{lines:#?}"
    );
    assert_eq!(
        lines.last().unwrap(),
        &format!("run {run}: failed ({error})")
    );
}

#[tokio::test]
async fn without_watch_it_prints_the_run_and_bad_requests_exit_1() {
    let h = Host::start().await;
    let (code, lines, _) = run_cli(&h, &["conformance-noop"]).await;
    assert_eq!(code, 0);
    let body: Value = serde_json::from_str(&lines.join("\n")).unwrap();
    assert_eq!(body["workflowId"], "conformance-noop");
    let run = body["runId"].as_str().unwrap();
    h.wait_terminal(run, Duration::from_secs(10)).await;

    // The server's refusal is shown with its error code.
    let (code, _, err) = run_cli(&h, &["no-such-workflow", "--watch"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("400 validation_error"), "{err}");
    // Inputs that are not a JSON object never leave the machine.
    let (code, _, err) = run_cli(&h, &["conformance-noop", "--input", "[1]"]).await;
    assert_eq!(code, 1);
    assert!(
        err.contains("--input: the value must be a JSON object"),
        "{err}"
    );
    let (code, _, err) = run_cli(&h, &["conformance-noop", "--input", "@/nonexistent.json"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("cannot read /nonexistent.json"), "{err}");
}

/// Reads the CLI's stdout line by line until `want` matches; returns the lines so far.
async fn lines_until(
    out: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    seen: &mut Vec<String>,
    want: impl Fn(&str) -> bool,
) {
    let found = tokio::time::timeout(Duration::from_secs(15), async {
        while let Some(l) = out.next_line().await.expect("read stdout") {
            let l = strip_elapsed(&l);
            seen.push(l.clone());
            if want(&l) {
                return true;
            }
        }
        false
    })
    .await;
    assert!(matches!(found, Ok(true)), "line not printed: {seen:#?}");
}

fn spawn(
    h: &Host,
    args: &[&str],
) -> (
    Child,
    tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
) {
    let mut child = cli(h, args).spawn().expect("spawn the CLI");
    let out = BufReader::new(child.stdout.take().unwrap()).lines();
    (child, out)
}

async fn exit_code(child: &mut Child) -> i32 {
    tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .expect("the CLI exits")
        .unwrap()
        .code()
        .unwrap()
}

#[tokio::test]
async fn a_parked_run_is_watched_on_with_a_resolve_hint_and_a_cancel_exits_4() {
    let h = Host::start().await;
    let (mut child, mut out) = spawn(&h, &["conformance-approval", "--watch"]);
    let mut seen = Vec::new();
    lines_until(&mut out, &mut seen, |l| l.starts_with("  curl -X POST")).await;
    let run = run_id_of(&seen);
    assert!(
        seen.contains(&"node gate: waiting-approval".to_string()),
        "{seen:#?}"
    );
    let hint = seen
        .iter()
        .find(|l| l.contains("still watching"))
        .unwrap_or_else(|| panic!("{seen:#?}"));
    assert!(
        hint.contains(&format!("run {run} is waiting-approval at node 'gate'")),
        "{hint}"
    );
    let curl = seen.last().unwrap();
    assert!(
        curl.contains(&format!("{}/v1/runs/{run}/interrupts/gate", h.base))
            && curl.contains(r#"{"resumeValue":{"action":"accept"}}"#),
        "{curl}"
    );
    // Still running: resolve it as the hint says, and the watcher sees the run through.
    assert!(
        child.try_wait().unwrap().is_none(),
        "the watcher exited while parked"
    );
    let (s, b) = h
        .post(
            &format!("/v1/runs/{run}/interrupts/gate"),
            json!({"resumeValue": {"action": "accept"}}),
        )
        .await;
    assert!(s.is_success(), "{s} {b}");
    lines_until(&mut out, &mut seen, |l| {
        l == format!("run {run}: completed")
    })
    .await;
    assert!(
        seen.contains(&"node gate: resumed".to_string()),
        "{seen:#?}"
    );
    assert_eq!(exit_code(&mut child).await, 0);

    // --input reaches the run; a cancelled run exits 4.
    let (mut child, mut out) = spawn(
        &h,
        &[
            "conformance-cancellable",
            "--input",
            r#"{"delayMs": 20000}"#,
            "--watch",
        ],
    );
    let mut seen = Vec::new();
    lines_until(&mut out, &mut seen, |l| l == "node wait: running").await;
    let run = run_id_of(&seen);
    assert_eq!(h.snapshot(&run).await["inputs"]["delayMs"], 20000);
    let (s, b) = h.post(&format!("/v1/runs/{run}/cancel"), json!({})).await;
    assert!(s.is_success(), "{s} {b}");
    lines_until(&mut out, &mut seen, |l| {
        l.starts_with(&format!("run {run}: cancelled"))
    })
    .await;
    assert_eq!(exit_code(&mut child).await, 4);
}
