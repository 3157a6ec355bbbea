//! Black-box harness: spawns the real `wopbox` binary on 127.0.0.1:0 in a temp data dir, finds
//! its port from the `wopbox listening on http://ADDR` line, and offers HTTP helpers.
//! The process is killed (SIGKILL) on drop.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde_json::{json, Value};

pub const KEY: &str = "test-key-primary";
pub const CORE_FIXTURES: [&str; 7] = [
    "conformance-noop",
    "conformance-failure",
    "conformance-idempotent",
    "conformance-multi-node",
    "conformance-delay",
    "conformance-cancellable",
    "conformance-identity",
];

/// A fresh database on the test Postgres server (`WOPBOX_TEST_PG_URL`, started by
/// scripts/test.sh). `None` skips the caller outside CI; under CI=true a missing server fails.
pub async fn pg_database() -> Option<String> {
    match std::env::var("WOPBOX_TEST_PG_URL") {
        Ok(admin) if !admin.is_empty() => Some(
            wopbox::store::postgres::scratch_database(&admin)
                .await
                .expect("create a scratch database"),
        ),
        _ => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI=true but WOPBOX_TEST_PG_URL is not set: run the tests through scripts/test.sh"
            );
            eprintln!("WOPBOX_TEST_PG_URL not set: Postgres test skipped");
            None
        }
    }
}

/// Two processes on one database sharing one data directory (API key, audit and interrupt
/// token keys), each started with `opts(data_dir)` (`None` for the first). Keep the returned
/// temp dir alive as long as the hosts.
pub async fn two_processes(
    opts: impl Fn(Option<PathBuf>) -> Options,
) -> (Host, Host, Option<tempfile::TempDir>) {
    let mut a = Host::start_with(opts(None)).await;
    let tmp = a.take_tmp();
    let b = Host::start_with(opts(Some(a.data_dir.clone()))).await;
    (a, b, tmp)
}

/// `shared/conformance-fixtures` beside the repository (or `WOPBOX_FIXTURES_DIR`, for a
/// checkout elsewhere, e.g. a git worktree).
pub fn fixtures_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("WOPBOX_FIXTURES_DIR") {
        return PathBuf::from(dir);
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/conformance-fixtures")
}

#[derive(Clone)]
pub struct Options {
    /// API keys passed as repeated `--api-key`; empty = none (the host generates one).
    pub keys: Vec<String>,
    /// Pass `--fixtures <shared/conformance-fixtures>`.
    pub fixtures: bool,
    pub extra_args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Reuse this data dir (for restart tests) instead of a fresh temp dir.
    pub data_dir: Option<PathBuf>,
    /// `--database URL` (Postgres); `None` = embedded SQLite.
    pub database: Option<String>,
    /// Collect the host's stderr lines in [`Host::stderr`] instead of passing them through.
    pub capture_stderr: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            keys: vec![KEY.to_string()],
            fixtures: true,
            extra_args: vec![],
            env: vec![],
            data_dir: None,
            database: None,
            capture_stderr: false,
        }
    }
}

pub struct Host {
    child: Child,
    pub base: String,
    pub key: String,
    pub data_dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    pub stdout: Arc<Mutex<Vec<String>>>,
    /// The host's stderr lines (only with [`Options::capture_stderr`]).
    pub stderr: Arc<Mutex<Vec<String>>>,
    pub client: reqwest::Client,
}

impl Host {
    pub async fn start() -> Host {
        Host::start_with(Options::default()).await
    }

    pub async fn start_with(opts: Options) -> Host {
        let (tmp, data_dir) = match &opts.data_dir {
            Some(d) => (None, d.clone()),
            None => {
                let t = tempfile::tempdir().expect("tempdir");
                let p = t.path().to_path_buf();
                (Some(t), p)
            }
        };
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_wopbox"));
        cmd.arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data")
            .arg(&data_dir);
        for k in &opts.keys {
            cmd.arg("--api-key").arg(k);
        }
        if opts.fixtures {
            cmd.arg("--fixtures").arg(fixtures_dir());
        }
        if let Some(db) = &opts.database {
            cmd.arg("--database").arg(db);
        }
        cmd.args(&opts.extra_args);
        cmd.env_remove("WOPBOX_API_KEYS");
        cmd.env_remove("WOPBOX_DATABASE_URL");
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        if !opts.env.iter().any(|(k, _)| k == "RUST_LOG") {
            cmd.env("RUST_LOG", "wopbox=warn");
        }
        cmd.stdout(Stdio::piped())
            .stderr(if opts.capture_stderr {
                Stdio::piped()
            } else {
                Stdio::inherit()
            })
            .stdin(Stdio::null());
        let mut child = cmd.spawn().expect("spawn wopbox");
        let err_lines = Arc::new(Mutex::new(Vec::new()));
        if let Some(stderr) = child.stderr.take() {
            let lines = err_lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    lines.lock().unwrap().push(line);
                }
            });
        }
        let stdout = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        {
            let lines = lines.clone();
            std::thread::spawn(move || {
                let mut sent = false;
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    lines.lock().unwrap().push(line.clone());
                    if !sent {
                        if let Some(addr) = line.strip_prefix("wopbox listening on ") {
                            let _ = tx.send(addr.trim().to_string());
                            sent = true;
                        }
                    }
                }
            });
        }
        let base = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| {
                let _ = child.kill();
                panic!(
                    "wopbox did not print its listening line; stdout: {:?}",
                    lines.lock().unwrap()
                )
            });
        let env_key = opts
            .env
            .iter()
            .find(|(k, _)| k == "WOPBOX_API_KEYS")
            .and_then(|(_, v)| v.split(',').next().map(|k| k.trim().to_string()));
        let key = opts.keys.first().cloned().or(env_key).unwrap_or_else(|| {
            std::fs::read_to_string(data_dir.join("api-key"))
                .expect("generated key file")
                .trim()
                .to_string()
        });
        Host {
            child,
            base,
            key,
            data_dir,
            _tmp: tmp,
            stdout: lines,
            stderr: err_lines,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
        }
    }

    /// SIGKILL the process (no graceful shutdown) and wait for it.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM the process and wait up to `timeout` for it to exit; returns its exit status.
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        self.sigterm();
        self.wait_exit(timeout)
    }

    /// Send SIGTERM without waiting.
    pub fn sigterm(&self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
    }

    /// Wait up to `timeout` for the process to exit; returns its exit status.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Wait (without blocking the test's runtime) up to `timeout` for the process to exit.
    pub async fn exited(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }

    /// Keep the data dir alive beyond this host (for restarts).
    pub fn take_tmp(&mut self) -> Option<tempfile::TempDir> {
        self._tmp.take()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// A request carrying the primary bearer key.
    pub fn req(&self, method: Method, path: &str) -> RequestBuilder {
        self.client
            .request(method, self.url(path))
            .bearer_auth(&self.key)
            .header("accept", "application/json")
    }

    pub fn anon(&self, method: Method, path: &str) -> RequestBuilder {
        self.client.request(method, self.url(path))
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        read(self.req(Method::GET, path).send().await.unwrap()).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        read(
            self.req(Method::POST, path)
                .json(&body)
                .send()
                .await
                .unwrap(),
        )
        .await
    }

    /// The discovery document, fetched without a bearer (it is public); asserts 200.
    pub async fn discovery(&self) -> Value {
        let (status, doc) = read(
            self.anon(Method::GET, "/.well-known/openwop")
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{doc}");
        doc
    }

    /// Answer the approval `run` waits on at node `node` with the `accept` action.
    pub async fn accept(&self, run: &str, node: &str) -> (StatusCode, Value) {
        self.post(
            &format!("/v1/runs/{run}/interrupts/{node}"),
            json!({"resumeValue": {"action": "accept"}}),
        )
        .await
    }

    /// Overwrite run variables through the sample test seam (`--enable-test-seams`): POST
    /// `{"variables": variables}`.
    pub async fn seam_set_variables(&self, run: &str, variables: Value) -> (StatusCode, Value) {
        self.post(
            &format!("/v1/host/sample/test/runs/{run}/variables"),
            json!({ "variables": variables }),
        )
        .await
    }

    pub async fn put(&self, path: &str, body: Value) -> (StatusCode, Value) {
        read(
            self.req(Method::PUT, path)
                .json(&body)
                .send()
                .await
                .unwrap(),
        )
        .await
    }

    /// `POST /v1/runs`, asserting 201; returns the runId.
    pub async fn create_run(&self, workflow_id: &str, inputs: Value) -> String {
        let (status, body) = self
            .post(
                "/v1/runs",
                json!({"workflowId": workflow_id, "inputs": inputs}),
            )
            .await;
        assert_eq!(
            status,
            StatusCode::CREATED,
            "create run {workflow_id}: {body}"
        );
        body["runId"].as_str().expect("runId").to_string()
    }

    pub async fn snapshot(&self, run_id: &str) -> Value {
        let (status, body) = self.get(&format!("/v1/runs/{run_id}")).await;
        assert_eq!(status, StatusCode::OK, "snapshot {run_id}: {body}");
        body
    }

    /// Poll the snapshot until the run is terminal.
    pub async fn wait_terminal(&self, run_id: &str, timeout: Duration) -> Value {
        self.wait_status(run_id, &["completed", "failed", "cancelled"], timeout)
            .await
    }

    pub async fn wait_status(&self, run_id: &str, statuses: &[&str], timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let snap = self.snapshot(run_id).await;
            if statuses.contains(&snap["status"].as_str().unwrap_or("")) {
                return snap;
            }
            assert!(
                Instant::now() < deadline,
                "run {run_id} did not reach {statuses:?} in {timeout:?}: {snap}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Poll until the run's log holds an event of `event_type` (10 s at most).
    pub async fn wait_for_event(&self, run_id: &str, event_type: &str) {
        for _ in 0..400 {
            if self
                .events(run_id)
                .await
                .iter()
                .any(|e| e["type"] == event_type)
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("run {run_id} never logged {event_type}");
    }

    /// All committed events of a run via the poll endpoint.
    pub async fn events(&self, run_id: &str) -> Vec<Value> {
        let mut out = Vec::new();
        let mut cursor = -1i64;
        loop {
            let (status, body) = self
                .get(&format!(
                    "/v1/runs/{run_id}/events/poll?lastSequence={cursor}"
                ))
                .await;
            assert_eq!(status, StatusCode::OK, "poll: {body}");
            let page = body["events"].as_array().unwrap().clone();
            if page.is_empty() {
                return out;
            }
            cursor = page.last().unwrap()["sequence"].as_i64().unwrap();
            out.extend(page);
            if !body["hasMore"].as_bool().unwrap_or(false) {
                return out;
            }
        }
    }

    pub fn event_types(events: &[Value]) -> Vec<String> {
        events
            .iter()
            .map(|e| e["type"].as_str().unwrap().to_string())
            .collect()
    }

    /// Register a workflow definition over HTTP, asserting success.
    pub async fn register(&self, def: Value) {
        let (status, body) = self.post("/v1/workflows", def).await;
        assert!(
            status == StatusCode::CREATED || status == StatusCode::OK,
            "register: {status} {body}"
        );
    }

    /// Read an SSE stream until it closes or `timeout` passes.
    pub async fn sse(&self, path: &str, last_event_id: Option<&str>, timeout: Duration) -> Sse {
        let mut req = self
            .client
            .get(self.url(path))
            .bearer_auth(&self.key)
            .header("accept", "text/event-stream");
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id);
        }
        let resp = req
            .timeout(timeout + Duration::from_secs(5))
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let content_type = resp
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let mut sse = Sse {
            status,
            content_type,
            frames: vec![],
            comments: vec![],
            closed: false,
        };
        if status != StatusCode::OK {
            return sse;
        }
        let mut stream = resp.bytes_stream();
        let mut buf = String::new();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let chunk = tokio::time::timeout_at(deadline, stream.next()).await;
            match chunk {
                Err(_) => break,
                Ok(None) => {
                    sse.closed = true;
                    break;
                }
                Ok(Some(Err(_))) => break,
                Ok(Some(Ok(bytes))) => {
                    buf.push_str(&String::from_utf8_lossy(&bytes));
                    while let Some(end) = buf.find("\n\n") {
                        let block: String = buf.drain(..end + 2).collect();
                        sse.push_block(&block);
                    }
                }
            }
        }
        sse
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug, Clone)]
pub struct Frame {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: Value,
}

#[derive(Debug)]
pub struct Sse {
    pub status: StatusCode,
    pub content_type: String,
    pub frames: Vec<Frame>,
    pub comments: Vec<String>,
    pub closed: bool,
}

impl Sse {
    fn push_block(&mut self, block: &str) {
        let (mut id, mut event, mut data) = (None, None, String::new());
        for line in block.lines() {
            if let Some(c) = line.strip_prefix(':') {
                self.comments.push(c.trim().to_string());
            } else if let Some(v) = line.strip_prefix("id:") {
                id = Some(v.trim().to_string());
            } else if let Some(v) = line.strip_prefix("event:") {
                event = Some(v.trim().to_string());
            } else if let Some(v) = line.strip_prefix("data:") {
                data.push_str(v.strip_prefix(' ').unwrap_or(v));
            }
        }
        if !data.is_empty() {
            self.frames.push(Frame {
                id,
                event,
                data: serde_json::from_str(&data).expect("SSE data is JSON"),
            });
        }
    }
}

pub async fn read(resp: Response) -> (StatusCode, Value) {
    let status = resp.status();
    let text = resp.text().await.unwrap();
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    (status, body)
}

/// Assert the canonical error envelope: exactly `{error, message, details?}` with the code.
pub fn assert_envelope(body: &Value, code: &str) {
    let obj = body
        .as_object()
        .unwrap_or_else(|| panic!("error body is not an object: {body}"));
    for k in obj.keys() {
        assert!(
            ["error", "message", "details"].contains(&k.as_str()),
            "extra envelope key '{k}': {body}"
        );
    }
    assert_eq!(
        obj.get("error").and_then(Value::as_str),
        Some(code),
        "error code: {body}"
    );
    assert!(
        obj.get("message")
            .and_then(Value::as_str)
            .map(|m| !m.is_empty())
            .unwrap_or(false),
        "message: {body}"
    );
    if let Some(d) = obj.get("details") {
        assert!(d.is_object(), "details must be an object: {body}");
    }
}

/// The RunEventDoc invariants every log must satisfy: closed key set, gap-free 0-based
/// sequences, unique ids, causation pointing backwards, exactly one terminal event, last.
pub fn assert_event_log(run_id: &str, events: &[Value]) {
    let allowed = [
        "eventId",
        "runId",
        "nodeId",
        "type",
        "payload",
        "timestamp",
        "sequence",
        "schemaVersion",
        "engineVersion",
        "causationId",
    ];
    let mut seen = std::collections::HashSet::new();
    let mut terminal = 0;
    for (i, e) in events.iter().enumerate() {
        let obj = e.as_object().unwrap();
        for k in obj.keys() {
            assert!(
                allowed.contains(&k.as_str()),
                "event has extra key '{k}': {e}"
            );
        }
        for k in [
            "eventId",
            "runId",
            "type",
            "payload",
            "timestamp",
            "sequence",
        ] {
            assert!(obj.contains_key(k), "event lacks '{k}': {e}");
        }
        assert_eq!(e["runId"], json!(run_id));
        assert_eq!(
            e["sequence"].as_i64(),
            Some(i as i64),
            "sequences must be 0-based and gap-free"
        );
        assert!(
            chrono_like(e["timestamp"].as_str().unwrap()),
            "timestamp: {e}"
        );
        if let Some(c) = e.get("causationId").and_then(Value::as_str) {
            assert!(
                seen.contains(c),
                "causationId {c} does not name an earlier event of the run: {e}"
            );
        }
        assert!(
            seen.insert(e["eventId"].as_str().unwrap().to_string()),
            "duplicate eventId"
        );
        if ["run.completed", "run.failed", "run.cancelled"].contains(&e["type"].as_str().unwrap()) {
            terminal += 1;
            assert_eq!(i, events.len() - 1, "terminal event must be last");
        }
    }
    assert_eq!(
        terminal,
        1,
        "exactly one terminal event: {:?}",
        Host::event_types(events)
    );
}

fn chrono_like(s: &str) -> bool {
    s.len() >= 20
        && s.as_bytes()[4] == b'-'
        && s.contains('T')
        && (s.ends_with('Z') || s.contains('+'))
}

/// A minimal valid workflow definition around `nodes` and `edges`.
pub fn workflow(id: &str, nodes: Value, edges: Value, variables: Value) -> Value {
    json!({
        "id": id,
        "name": id,
        "version": "1.0",
        "nodes": nodes,
        "edges": edges,
        "triggers": [{"id": "manual", "type": "manual", "enabled": true}],
        "variables": variables,
        "metadata": {},
        "settings": {"timeout": 60000}
    })
}

pub fn node(id: &str, type_id: &str, config: Value, inputs: Value) -> Value {
    json!({"id": id, "typeId": type_id, "name": id, "position": {"x": 0, "y": 0}, "config": config, "inputs": inputs})
}

pub fn edge(id: &str, from: &str, to: &str) -> Value {
    json!({"id": id, "sourceNodeId": from, "targetNodeId": to})
}

pub fn data_path(p: &Path) -> String {
    p.display().to_string()
}
