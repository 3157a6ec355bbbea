//! `wopbox bench`: rerunnable load and scale benchmarks over HTTP (loopback only).
//!
//! Every scenario either spawns its own `wopbox serve` (this executable) on `127.0.0.1:0` with a
//! fresh data directory, or targets `--url` of a host that is already running (e.g. another
//! OpenWOP implementation). Each scenario prints one JSON object on stdout.
//!
//! The load generator is closed-loop: N workers, each `POST /v1/runs` and then waits for the
//! run's terminal event (SSE, or long-poll), then starts the next run. Runs/s counts the runs
//! that reached their terminal event inside the measurement window (after the warm-up);
//! latency is POST sent → terminal event received.

mod scale;
mod subworkflows;

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use futures::StreamExt;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Workflow ids the bench registers on a host it spawns.
const WF_GREET: &str = "bench-greet";
const WF_NOOP: &str = "bench-noop";
const WF_PARK: &str = "bench-park";
const WF_FANOUT: &str = "bench-fanout";
const WF_SPIN: &str = "bench-spin";
const SPIN_PACK: &str = "vendor.wopbox.bench-spin";

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("cannot start `wopbox serve`: {0}")]
    Spawn(std::io::Error),
    #[error("spawned host exited before it listened")]
    NoListenLine,
    #[error("request {what} failed: {source}")]
    Http {
        what: String,
        source: reqwest::Error,
    },
    #[error("{what}: host answered {status}: {body}")]
    Status {
        what: String,
        status: u16,
        body: String,
    },
    #[error("{0}")]
    Protocol(String),
    #[error("scenario {0} needs a spawned host (drop --url)")]
    NeedsSpawn(&'static str),
    #[error("cannot build the hostile pack: {0}")]
    Pack(String),
}

type Result<T> = std::result::Result<T, BenchError>;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// Closed-loop runs/s and latency per workflow.
    Load,
    /// Resident memory with N runs parked on an approval interrupt.
    Memory,
    /// Time to replay a ~10,000-event run over SSE from sequence 0.
    Replay,
    /// Honest throughput while N infinite-loop runs time out in the sandbox.
    Flood,
    /// One parent run fanning out to `--children` parallel sub-workflows (bench/subworkflows.rs).
    Subworkflows,
    /// The `high-throughput` scale tier's floors, each figure next to its floor (bench/scale.rs).
    Scale,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum WaitMode {
    /// One SSE request per run, read until the terminal event.
    Sse,
    /// Repeated `GET …/events/poll?lastSequence=N&waitMs=…` until `isTerminal`.
    Poll,
}

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// Scenarios to run, in order (repeatable / comma-separated).
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Scenario::Load])]
    pub scenario: Vec<Scenario>,
    /// Target an already-running host instead of spawning one (load and replay only).
    #[arg(long)]
    pub url: Option<String>,
    /// Bearer key for --url.
    #[arg(long = "api-key")]
    pub api_key: Option<String>,
    /// Workflows the load scenario drives (default on a spawned host: bench-greet, bench-noop;
    /// required with --url, e.g. conformance-noop).
    #[arg(long = "workflow", value_delimiter = ',')]
    pub workflows: Vec<String>,
    /// JSON object sent as `inputs` with every load run.
    #[arg(long)]
    pub inputs: Option<String>,
    /// Closed-loop workers.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Measurement window per load run, seconds.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Warm-up before the window, seconds (runs completed then are not counted).
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// How a worker waits for the terminal event.
    #[arg(long, value_enum, default_value_t = WaitMode::Sse)]
    pub wait: WaitMode,
    /// Operator packs for a spawned host (must contain packs/greet).
    #[arg(long, default_value = "packs")]
    pub packs: PathBuf,
    /// Extra arguments passed to the spawned `wopbox serve` (repeatable, e.g. `--serve-arg=--sandbox-concurrency=4`).
    #[arg(long = "serve-arg", allow_hyphen_values = true)]
    pub serve_args: Vec<String>,
    /// Load scenario on PostgreSQL: admin URL of a server (e.g. `WOPBOX_TEST_PG_URL` from
    /// `scripts/pg.sh`); each spawned host set gets a fresh database on it. Default: SQLite.
    #[arg(long, env = "WOPBOX_BENCH_PG_URL")]
    pub database: Option<String>,
    /// Load scenario: wopbox processes sharing the database (needs --database when > 1). Each
    /// worker is pinned to one process (a sticky load balancer) unless --cross-process-wait.
    #[arg(long, default_value_t = 1)]
    pub processes: usize,
    /// Load scenario with several processes: wait for each run's terminal event on another
    /// process than the one that accepted it (events cross processes via LISTEN/NOTIFY).
    #[arg(long)]
    pub cross_process_wait: bool,
    /// Memory scenario: runs parked on an approval interrupt (`core.approvalGate`).
    #[arg(long, default_value_t = 1000)]
    pub parked: usize,
    /// Replay scenario: parallel `core.noop` nodes (2 events each + 2 per run: 5000 ≈ 10k events).
    #[arg(long, default_value_t = 5000)]
    pub replay_nodes: usize,
    /// Replay scenario: timed replays (median reported).
    #[arg(long, default_value_t = 5)]
    pub replay_reads: usize,
    /// Flood scenario: infinite-loop runs launched at once.
    #[arg(long, default_value_t = 50)]
    pub hostile: usize,
    /// Subworkflows scenario: parallel child runs of one parent.
    #[arg(long, default_value_t = 100)]
    pub children: usize,
    /// Subworkflows scenario: timed fan-out runs (median reported).
    #[arg(long, default_value_t = 3)]
    pub fanout_runs: usize,
    /// Scale scenario: runs parked in flight, split evenly over --tenants.
    #[arg(long, default_value_t = 5000)]
    pub scale_runs: usize,
    /// Scale scenario: tenants, each with its own scoped key.
    #[arg(long, default_value_t = 8)]
    pub tenants: usize,
    /// Scale scenario: POSTs sharing one Idempotency-Key.
    #[arg(long, default_value_t = 20)]
    pub idempotency_retries: usize,
    /// Scale scenario: milliseconds between those POSTs.
    #[arg(long, default_value_t = 100)]
    pub retry_interval_ms: u64,
}

/// Entry point of the subcommand; one JSON object per scenario on stdout.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    for scenario in args.scenario.clone() {
        let out = match scenario {
            Scenario::Load => load(&args).await?,
            Scenario::Memory => memory(&args).await?,
            Scenario::Replay => replay(&args).await?,
            Scenario::Flood => flood(&args).await?,
            Scenario::Subworkflows => subworkflows::run(&args).await?,
            Scenario::Scale => scale::run(&args).await?,
        };
        for line in out {
            println!("{line}");
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Target host: spawned or remote

struct Target {
    base: String,
    key: String,
    http: reqwest::Client,
    child: Option<Child>,
    data_dir: Option<PathBuf>,
}

impl Target {
    async fn spawn(args: &BenchArgs) -> Result<Target> {
        let dir = std::env::temp_dir().join(format!("wopbox-bench-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).map_err(BenchError::Spawn)?;
        let key = format!("bench-{}", uuid::Uuid::new_v4().simple());
        Target::spawn_on(args, None, &key, dir).await
    }

    /// Spawn `wopbox serve` with `key`, data dir `dir`, and optionally `--database db`.
    async fn spawn_on(
        args: &BenchArgs,
        db: Option<&str>,
        key: &str,
        dir: PathBuf,
    ) -> Result<Target> {
        let exe = std::env::current_exe().map_err(BenchError::Spawn)?;
        let key = key.to_string();
        let mut cmd = Command::new(exe);
        cmd.arg("serve")
            .args(["--listen", "127.0.0.1:0", "--api-key", &key])
            .arg("--data")
            .arg(&dir)
            .arg("--packs")
            .arg(&args.packs)
            .args(
                db.map(|d| vec!["--database".to_string(), d.to_string()])
                    .unwrap_or_default(),
            )
            .args(&args.serve_args)
            .env(
                "RUST_LOG",
                std::env::var("WOPBOX_BENCH_LOG").unwrap_or_else(|_| "wopbox=warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(BenchError::Spawn)?;
        let stdout = child.stdout.take().ok_or(BenchError::NoListenLine)?;
        let mut lines = BufReader::new(stdout).lines();
        let base = loop {
            match lines.next_line().await {
                Ok(Some(line)) => {
                    if let Some(addr) = line.strip_prefix("wopbox listening on ") {
                        break addr.trim().to_string();
                    }
                }
                _ => return Err(BenchError::NoListenLine),
            }
        };
        // Keep draining stdout so the host never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Target {
            base,
            key,
            http: client(),
            child: Some(child),
            data_dir: Some(dir),
        })
    }

    fn remote(url: &str, key: Option<String>) -> Target {
        Target {
            base: url.trim_end_matches('/').to_string(),
            key: key.unwrap_or_default(),
            http: client(),
            child: None,
            data_dir: None,
        }
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(|c| c.id())
    }

    async fn shutdown(mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
        }
        if let Some(d) = self.data_dir.take() {
            let _ = std::fs::remove_dir_all(d);
        }
    }

    async fn send_json(
        &self,
        what: &str,
        req: reqwest::RequestBuilder,
        ok: &[u16],
    ) -> Result<Value> {
        let resp = req
            .bearer_auth(&self.key)
            .send()
            .await
            .map_err(|source| BenchError::Http {
                what: what.into(),
                source,
            })?;
        let status = resp.status().as_u16();
        let text = resp.text().await.map_err(|source| BenchError::Http {
            what: what.into(),
            source,
        })?;
        if !ok.contains(&status) {
            return Err(BenchError::Status {
                what: what.into(),
                status,
                body: text.chars().take(500).collect(),
            });
        }
        serde_json::from_str(&text)
            .map_err(|e| BenchError::Protocol(format!("{what}: response is not JSON: {e}")))
    }

    async fn put_workflow(&self, def: &Value) -> Result<()> {
        let id = def["id"].as_str().unwrap_or_default();
        let url = format!("{}/v1/workflows/{id}", self.base);
        self.send_json("PUT workflow", self.http.put(url).json(def), &[200, 201])
            .await
            .map(|_| ())
    }

    async fn create_run(&self, workflow: &str, inputs: &Value) -> Result<String> {
        let url = format!("{}/v1/runs", self.base);
        let body = json!({"workflowId": workflow, "inputs": inputs});
        let v = self
            .send_json(
                "POST /v1/runs",
                self.http.post(url).json(&body),
                &[200, 201],
            )
            .await?;
        v["runId"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| BenchError::Protocol("POST /v1/runs: no runId".into()))
    }

    async fn snapshot(&self, run: &str) -> Result<Value> {
        let url = format!("{}/v1/runs/{run}", self.base);
        self.send_json("GET run", self.http.get(url), &[200]).await
    }

    /// Waits for the run's terminal event; returns its type (`run.completed`, ...).
    async fn wait_terminal(&self, run: &str, mode: WaitMode) -> Result<String> {
        match mode {
            WaitMode::Sse => self.wait_sse(run).await,
            WaitMode::Poll => self.wait_poll(run).await,
        }
    }

    /// Open a run's SSE event stream (`query` is appended to the path, e.g.
    /// `?streamMode=debug`); a non-2xx answer is an error.
    async fn open_events(&self, run: &str, query: &str) -> Result<reqwest::Response> {
        let url = format!("{}/v1/runs/{run}/events{query}", self.base);
        let resp = self
            .http
            .get(url)
            .bearer_auth(&self.key)
            .header("accept", "text/event-stream")
            .send()
            .await
            .map_err(|source| BenchError::Http {
                what: "SSE".into(),
                source,
            })?;
        if !resp.status().is_success() {
            return Err(BenchError::Status {
                what: "SSE".into(),
                status: resp.status().as_u16(),
                body: String::new(),
            });
        }
        Ok(resp)
    }

    async fn wait_sse(&self, run: &str) -> Result<String> {
        let resp = self.open_events(run, "").await?;
        let mut sse = SseScan::default();
        let mut body = resp.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|source| BenchError::Http {
                what: "SSE body".into(),
                source,
            })?;
            sse.feed(&chunk);
            if let Some(t) = sse.terminal.clone() {
                // Hosts close the stream right after the terminal event; reading to the end
                // lets the connection go back to the pool. Bounded in case one does not.
                let _ = tokio::time::timeout(Duration::from_secs(1), async {
                    while let Some(Ok(_)) = body.next().await {}
                })
                .await;
                return Ok(t);
            }
        }
        Err(BenchError::Protocol(format!(
            "SSE for {run} ended without a terminal event"
        )))
    }

    async fn wait_poll(&self, run: &str) -> Result<String> {
        let mut last: i64 = -1;
        loop {
            let url = format!(
                "{}/v1/runs/{run}/events/poll?lastSequence={last}&waitMs=10000",
                self.base
            );
            let page = self.send_json("poll", self.http.get(url), &[200]).await?;
            let mut terminal = None;
            if let Some(events) = page["events"].as_array() {
                for e in events {
                    let t = e["type"].as_str().unwrap_or_default();
                    if is_terminal_event(t) {
                        terminal = Some(t.to_string());
                    }
                }
            }
            if let Some(t) = terminal {
                return Ok(t);
            }
            last = page["lastEventSeq"].as_i64().unwrap_or(last);
        }
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(4096)
        .tcp_nodelay(true)
        .build()
        .unwrap_or_else(|_| reqwest::Client::new())
}

fn is_terminal_event(t: &str) -> bool {
    matches!(t, "run.completed" | "run.failed" | "run.cancelled")
}

/// Incremental SSE scanner: counts events (`id:` lines) and spots the terminal `event:` line
/// without parsing the JSON payloads (cheap, and the same for every host).
#[derive(Default)]
struct SseScan {
    partial: Vec<u8>,
    events: usize,
    bytes: usize,
    terminal: Option<String>,
}

impl SseScan {
    fn feed(&mut self, chunk: &[u8]) {
        self.feed_data(chunk);
    }

    /// [`SseScan::feed`], returning the `data:` payloads completed by this chunk.
    fn feed_data(&mut self, chunk: &[u8]) -> Vec<String> {
        let mut data = Vec::new();
        self.bytes += chunk.len();
        self.partial.extend_from_slice(chunk);
        let mut start = 0;
        while let Some(nl) = self.partial[start..].iter().position(|b| *b == b'\n') {
            let line = &self.partial[start..start + nl];
            if let Some(rest) = line.strip_prefix(b"event:") {
                let t = String::from_utf8_lossy(rest).trim().to_string();
                self.events += 1;
                if is_terminal_event(&t) {
                    self.terminal = Some(t);
                }
            } else if let Some(rest) = line.strip_prefix(b"data:") {
                data.push(String::from_utf8_lossy(rest).trim().to_string());
            }
            start += nl + 1;
        }
        self.partial.drain(..start);
        data
    }
}

// ---------------------------------------------------------------------------------------------
// Workflow definitions registered on a spawned host

fn node(id: &str, type_id: &str, inputs: Value) -> Value {
    json!({"id": id, "typeId": type_id, "name": id, "position": {"x": 0, "y": 0},
           "config": {}, "inputs": inputs})
}

fn workflow(id: &str, nodes: Vec<Value>, variables: Value, timeout_ms: u64) -> Value {
    json!({"id": id, "name": id, "version": "1.0", "nodes": nodes, "edges": [],
           "triggers": [{"id": "manual", "type": "manual", "enabled": true}],
           "variables": variables, "metadata": {}, "settings": {"timeout": timeout_ms}})
}

fn greet_workflow() -> Value {
    workflow(
        WF_GREET,
        vec![node(
            "hello",
            "vendor.wopbox.greet.hello",
            json!({"name": {"type": "variable", "variableName": "who"}}),
        )],
        json!([{"name": "who", "type": "string", "defaultValue": "world"}]),
        10_000,
    )
}

fn noop_workflow() -> Value {
    workflow(
        WF_NOOP,
        vec![node("noop", "core.noop", json!({}))],
        json!([]),
        10_000,
    )
}

async fn register_defaults(t: &Target) -> Result<()> {
    t.put_workflow(&greet_workflow()).await?;
    t.put_workflow(&noop_workflow()).await
}

// ---------------------------------------------------------------------------------------------
// Closed-loop generator

#[derive(Default)]
struct LoopStats {
    latencies_us: Vec<u64>,
    /// Runs that ended at all, in or outside the window (divides the host's CPU time).
    ended: u64,
    completed: u64,
    not_completed: u64,
    errors: u64,
    first_error: Option<String>,
}

/// Drives `workflow` with `concurrency` workers for `warmup + duration` seconds (or until
/// `stop` fires, then the window ends there). Returns stats for the window and its length.
async fn closed_loop(
    t: Arc<Target>,
    workflow: String,
    inputs: Value,
    concurrency: usize,
    warmup: Duration,
    duration: Duration,
    mode: WaitMode,
) -> (LoopStats, Duration) {
    closed_loop_on(
        vec![t],
        false,
        workflow,
        inputs,
        concurrency,
        warmup,
        duration,
        mode,
    )
    .await
}

/// [`closed_loop`] over several processes of one host: worker `i` creates its runs on
/// `targets[i % n]` and waits on the same process, or on the next one with `cross`.
#[allow(clippy::too_many_arguments)]
async fn closed_loop_on(
    targets: Vec<Arc<Target>>,
    cross: bool,
    workflow: String,
    inputs: Value,
    concurrency: usize,
    warmup: Duration,
    duration: Duration,
    mode: WaitMode,
) -> (LoopStats, Duration) {
    let start = Instant::now();
    let window_start = start + warmup;
    let window_end = window_start + duration;
    let mut tasks = Vec::with_capacity(concurrency);
    let n = targets.len().max(1);
    for i in 0..concurrency {
        let t = targets[i % n].clone();
        let w = targets[(i + usize::from(cross)) % n].clone();
        let workflow = workflow.clone();
        let inputs = inputs.clone();
        tasks.push(tokio::spawn(async move {
            let mut s = LoopStats::default();
            while Instant::now() < window_end {
                let began = Instant::now();
                let r = match t.create_run(&workflow, &inputs).await {
                    Ok(id) => w.wait_terminal(&id, mode).await,
                    Err(e) => Err(e),
                };
                let done = Instant::now();
                s.ended += 1;
                if began < window_start || done > window_end {
                    continue;
                }
                match r {
                    Ok(term) if term == "run.completed" => {
                        s.completed += 1;
                        s.latencies_us.push((done - began).as_micros() as u64);
                    }
                    Ok(term) => {
                        s.not_completed += 1;
                        s.first_error.get_or_insert(term);
                    }
                    Err(e) => {
                        s.errors += 1;
                        s.first_error.get_or_insert(e.to_string());
                        // Do not spin on a host that refuses everything.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            s
        }));
    }
    let mut all = LoopStats::default();
    for task in tasks {
        if let Ok(s) = task.await {
            all.latencies_us.extend(s.latencies_us);
            all.ended += s.ended;
            all.completed += s.completed;
            all.not_completed += s.not_completed;
            all.errors += s.errors;
            if all.first_error.is_none() {
                all.first_error = s.first_error;
            }
        }
    }
    (all, duration)
}

fn percentile_ms(sorted_us: &[u64], p: f64) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    let idx = ((p / 100.0) * (sorted_us.len() - 1) as f64).round() as usize;
    sorted_us[idx.min(sorted_us.len() - 1)] as f64 / 1000.0
}

fn stats_json(mut s: LoopStats, window: Duration) -> Value {
    s.latencies_us.sort_unstable();
    let secs = window.as_secs_f64();
    json!({
        "runs": s.completed,
        "runs_per_sec": round1(s.completed as f64 / secs),
        "p50_ms": round2(percentile_ms(&s.latencies_us, 50.0)),
        "p99_ms": round2(percentile_ms(&s.latencies_us, 99.0)),
        "max_ms": round2(percentile_ms(&s.latencies_us, 100.0)),
        "not_completed": s.not_completed,
        "errors": s.errors,
        "first_error": s.first_error,
    })
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}
fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}
fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

// ---------------------------------------------------------------------------------------------
// Process figures (Linux /proc)

fn loadavg() -> Value {
    let raw = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let v: Vec<f64> = raw
        .split_whitespace()
        .take(3)
        .filter_map(|x| x.parse().ok())
        .collect();
    json!(v)
}

/// utime + stime of a process in seconds (USER_HZ assumed 100, the Linux default).
fn cpu_secs(pid: Option<u32>) -> Option<f64> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/stat"),
        None => "/proc/self/stat".into(),
    };
    let raw = std::fs::read_to_string(path).ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = raw.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ut: f64 = f.get(11)?.parse().ok()?;
    let st: f64 = f.get(12)?.parse().ok()?;
    Some((ut + st) / 100.0)
}

/// VmRSS in KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let raw = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    raw.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

fn machine() -> Value {
    json!({
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "loadavg": loadavg(),
    })
}

// ---------------------------------------------------------------------------------------------
// Scenarios

async fn load(args: &BenchArgs) -> anyhow::Result<Vec<Value>> {
    let inputs: Value = match &args.inputs {
        Some(s) => serde_json::from_str(s)?,
        None => json!({}),
    };
    let workflows = if args.workflows.is_empty() {
        if args.url.is_some() {
            anyhow::bail!("--url needs --workflow (e.g. conformance-noop)");
        }
        vec![WF_GREET.to_string(), WF_NOOP.to_string()]
    } else {
        args.workflows.clone()
    };
    if args.processes > 1 && (args.database.is_none() || args.url.is_some()) {
        anyhow::bail!(
            "--processes > 1 needs --database (processes share one Postgres) and no --url"
        );
    }
    let mut out = Vec::new();
    for wf in workflows {
        // A fresh host (data dir, database) per workflow, so one run does not inherit the
        // other's rows.
        let targets = match &args.url {
            Some(u) => vec![Target::remote(u, args.api_key.clone())],
            None => spawn_set(args).await?,
        };
        let pids: Vec<Option<u32>> = targets.iter().map(Target::pid).collect();
        let spawned = pids.iter().all(Option::is_some);
        let host_cpu = |pids: &[Option<u32>]| -> Option<f64> {
            pids.iter().map(|p| cpu_secs(*p)).sum::<Option<f64>>()
        };
        let targets: Vec<Arc<Target>> = targets.into_iter().map(Arc::new).collect();
        let (host0, self0) = (host_cpu(&pids), cpu_secs(None));
        let wall = Instant::now();
        let (stats, window) = closed_loop_on(
            targets.clone(),
            args.cross_process_wait,
            wf.clone(),
            inputs.clone(),
            args.concurrency,
            Duration::from_secs_f64(args.warmup),
            Duration::from_secs_f64(args.duration),
            args.wait,
        )
        .await;
        let wall = wall.elapsed().as_secs_f64();
        let cpu = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) => json!(round2((b - a) / wall)),
            _ => Value::Null,
        };
        // CPU per run: comparable across runs on a shared machine, where runs/s also depends
        // on how much of the CPUs the other tenants left us.
        let ended = stats.ended.max(1) as f64;
        let per_run = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) => json!(round3((b - a) * 1000.0 / ended)),
            _ => Value::Null,
        };
        let mut v = json!({
            "scenario": "load",
            "host": args.url.clone().unwrap_or_else(|| "wopbox (spawned, release)".into()),
            "store": if args.url.is_some() { Value::Null } else if args.database.is_some() { json!("postgres") } else { json!("sqlite") },
            "processes": targets.len(),
            "cross_process_wait": args.cross_process_wait && targets.len() > 1,
            "workflow": wf,
            "concurrency": args.concurrency,
            "wait": format!("{:?}", args.wait).to_lowercase(),
            "window_s": window.as_secs_f64(),
            // Only known for spawned hosts (their pids, summed); `null` for --url.
            "host_cpu_cores": if spawned { cpu(host0, host_cpu(&pids)) } else { Value::Null },
            "bench_cpu_cores": cpu(self0, cpu_secs(None)),
            "host_cpu_ms_per_run": if spawned { per_run(host0, host_cpu(&pids)) } else { Value::Null },
            "bench_cpu_ms_per_run": per_run(self0, cpu_secs(None)),
            "machine": machine(),
        });
        merge(&mut v, stats_json(stats, window));
        out.push(v);
        for t in targets {
            if let Ok(t) = Arc::try_unwrap(t) {
                t.shutdown().await;
            }
        }
    }
    Ok(out)
}

/// `--processes` hosts sharing one key, data dir and (with --database) a fresh database;
/// the default workflows are registered through the first.
async fn spawn_set(args: &BenchArgs) -> anyhow::Result<Vec<Target>> {
    let Some(admin) = &args.database else {
        let t = Target::spawn(args).await?;
        register_defaults(&t).await?;
        return Ok(vec![t]);
    };
    let db = crate::store::postgres::scratch_database(admin).await?;
    let dir = std::env::temp_dir().join(format!("wopbox-bench-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir)?;
    let key = format!("bench-{}", uuid::Uuid::new_v4().simple());
    let mut targets = Vec::new();
    for _ in 0..args.processes.max(1) {
        targets.push(Target::spawn_on(args, Some(&db), &key, dir.clone()).await?);
    }
    register_defaults(&targets[0]).await?;
    Ok(targets)
}

fn merge(into: &mut Value, from: Value) {
    if let (Some(a), Value::Object(b)) = (into.as_object_mut(), from) {
        a.extend(b);
    }
}

/// Resident memory with `--parked` runs parked on an approval interrupt (`core.approvalGate`:
/// the interrupt row, its tokens, the suspended run task and its cached state).
async fn memory(args: &BenchArgs) -> anyhow::Result<Vec<Value>> {
    if args.url.is_some() {
        return Err(BenchError::NeedsSpawn("memory").into());
    }
    let t = Target::spawn(args).await?;
    register_defaults(&t).await?;
    let mut gate = node("approve", "core.approvalGate", json!({}));
    gate["config"] = json!({"title": "bench: parked for approval"});
    t.put_workflow(&workflow(WF_PARK, vec![gate], json!([]), 7_200_000))
        .await?;
    let pid = t.pid().ok_or(BenchError::NoListenLine)?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_boot = rss_kib(pid);
    // Warm the host (connection pools, allocator arenas, caches) with a few hundred short runs:
    // "idle" means a host that has served traffic and is now quiet.
    let t = Arc::new(t);
    let (warm, _) = closed_loop(
        t.clone(),
        WF_NOOP.into(),
        json!({}),
        args.concurrency,
        Duration::ZERO,
        Duration::from_secs(2),
        WaitMode::Sse,
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_idle = rss_kib(pid);

    let started = Instant::now();
    let ids = futures::stream::iter(0..args.parked)
        .map(|_| {
            let t = t.clone();
            async move { t.create_run(WF_PARK, &json!({})).await }
        })
        .buffer_unordered(args.concurrency.max(1))
        .collect::<Vec<_>>()
        .await;
    let ids: Vec<String> = ids.into_iter().collect::<Result<_>>()?;
    // Parked = its interrupt is committed (status waiting-approval).
    let mut running = 0;
    for _ in 0..100 {
        running = futures::stream::iter(ids.iter())
            .map(|id| {
                let t = t.clone();
                async move { t.snapshot(id).await }
            })
            .buffer_unordered(32)
            .filter(|s| {
                let ok = matches!(s, Ok(v) if v["status"] == "waiting-approval");
                async move { ok }
            })
            .count()
            .await;
        if running == ids.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let park_secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_parked = rss_kib(pid);
    let delta = match (rss_idle, rss_parked) {
        (Some(a), Some(b)) => Some(b as i64 - a as i64),
        _ => None,
    };
    let v = json!({
        "scenario": "memory",
        "parked_on": "approval interrupt (core.approvalGate)",
        "parked_runs": ids.len(),
        "waiting_approval_confirmed": running,
        "park_s": round2(park_secs),
        "warmup_runs": warm.completed,
        "rss_boot_mib": rss_boot.map(|k| round2(k as f64 / 1024.0)),
        "rss_idle_mib": rss_idle.map(|k| round2(k as f64 / 1024.0)),
        "rss_parked_mib": rss_parked.map(|k| round2(k as f64 / 1024.0)),
        "delta_mib": delta.map(|k| round2(k as f64 / 1024.0)),
        "per_run_kib": delta.map(|k| round1(k as f64 / ids.len().max(1) as f64)),
        "goal_mib": 50,
        "machine": machine(),
    });
    if let Ok(t) = Arc::try_unwrap(t) {
        t.shutdown().await;
    }
    Ok(vec![v])
}

async fn replay(args: &BenchArgs) -> anyhow::Result<Vec<Value>> {
    let t = match &args.url {
        Some(u) => Target::remote(u, args.api_key.clone()),
        None => Target::spawn(args).await?,
    };
    let nodes: Vec<Value> = (0..args.replay_nodes)
        .map(|i| node(&format!("n{i}"), "core.noop", json!({})))
        .collect();
    t.put_workflow(&workflow(WF_FANOUT, nodes, json!([]), 600_000))
        .await?;
    let produced = Instant::now();
    let run = t.create_run(WF_FANOUT, &json!({})).await?;
    let terminal = t.wait_terminal(&run, WaitMode::Poll).await?;
    let produce_secs = produced.elapsed().as_secs_f64();

    let mut times = Vec::new();
    let mut events = 0;
    let mut bytes = 0;
    for _ in 0..args.replay_reads.max(1) {
        let began = Instant::now();
        let url = format!("{}/v1/runs/{run}/events?streamMode=debug", t.base);
        let resp = t
            .http
            .get(url)
            .bearer_auth(&t.key)
            .header("accept", "text/event-stream")
            .send()
            .await?;
        let mut sse = SseScan::default();
        let mut body = resp.bytes_stream();
        while let Some(chunk) = body.next().await {
            sse.feed(&chunk?);
        }
        times.push(began.elapsed().as_secs_f64() * 1000.0);
        if sse.terminal.is_none() {
            anyhow::bail!("replay stream ended without the terminal event");
        }
        events = sse.events;
        bytes = sse.bytes;
    }
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    let v = json!({
        "scenario": "replay",
        "nodes": args.replay_nodes,
        "terminal": terminal,
        "events": events,
        "bytes": bytes,
        "produce_s": round2(produce_secs),
        "replay_ms_each": times.iter().map(|x| round1(*x)).collect::<Vec<_>>(),
        "replay_ms_median": round1(sorted[sorted.len() / 2]),
        "events_per_sec": round1(events as f64 / (sorted[sorted.len() / 2] / 1000.0)),
        "goal_ms": 1000,
        "machine": machine(),
    });
    t.shutdown().await;
    Ok(vec![v])
}

/// An RFC 0008 module whose only node loops forever (no host calls): an invocation can only
/// end by the sandbox's wall-clock or fuel cap.
fn spin_module() -> Result<Vec<u8>> {
    let type_id = format!("{SPIN_PACK}.spin");
    let wat_text = format!(
        r#"(module
  (memory (export "memory") 2)
  (global $heap (mut i32) (i32.const 65536))
  (data (i32.const 1024) "{SPIN_PACK}")
  (data (i32.const 2048) "{type_id}")
  (func (export "openwop_abi_version") (result i32) (i32.const 1))
  (func (export "openwop_pack_name") (result i64) {pack})
  (func (export "openwop_node_count") (result i32) (i32.const 1))
  (func (export "openwop_node_id_at") (param i32) (result i64) {tid})
  (func (export "openwop_alloc") (param i32) (result i32) (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (local.get 0)))
    (local.get $p))
  (func (export "openwop_free") (param i32 i32))
  (func (export "openwop_node_invoke") (param i32 i32 i32) (result i64)
    (loop $forever (br $forever))
    (i64.const 0)))"#,
        pack = packed(1024, SPIN_PACK.len()),
        tid = packed(2048, type_id.len()),
    );
    wat::parse_str(&wat_text).map_err(|e| BenchError::Pack(e.to_string()))
}

/// The gzipped tarball of the spin pack (manifest + module).
fn spin_pack() -> Result<Vec<u8>> {
    let type_id = format!("{SPIN_PACK}.spin");
    let module = spin_module()?;
    let manifest = json!({
        "name": SPIN_PACK, "version": "1.0.0", "description": "bench: loops forever",
        "author": "wopbox", "license": "Apache-2.0", "engines": {"openwop": ">=1.1 <2.0.0"},
        "kind": "node",
        "nodes": [{"typeId": type_id, "version": "1.0.0", "category": "bench",
                   "role": "transform", "label": "Spin", "description": "Never returns."}],
        "runtime": {"language": "wasm", "entry": "spin.wasm", "format": "wasm",
                    "minRuntimeVersion": "1",
                    "wasm": {"abiVersion": 1, "memoryPagesInitial": 2, "memoryPagesMax": 16}}
    });
    let manifest = serde_json::to_vec(&manifest).map_err(|e| BenchError::Pack(e.to_string()))?;
    crate::packs::tarball::write_tgz([
        ("pack.json", manifest.as_slice()),
        ("spin.wasm", module.as_slice()),
    ])
    .map_err(|e| BenchError::Pack(e.to_string()))
}

/// RFC 0008 packed (len << 32 | ptr) return value as a WAT constant.
fn packed(ptr: usize, len: usize) -> String {
    format!("(i64.const {})", ((len as u64) << 32) | ptr as u64)
}

async fn flood(args: &BenchArgs) -> anyhow::Result<Vec<Value>> {
    if args.url.is_some() {
        return Err(BenchError::NeedsSpawn("flood").into());
    }
    let t = Target::spawn(args).await?;
    register_defaults(&t).await?;
    let url = format!("{}/v1/packs/{SPIN_PACK}/-/1.0.0.tgz", t.base);
    t.send_json(
        "PUT spin pack",
        t.http
            .put(url)
            .header("content-type", "application/gzip")
            .body(spin_pack()?),
        &[200, 201],
    )
    .await?;
    t.put_workflow(&workflow(
        WF_SPIN,
        vec![node("spin", &format!("{SPIN_PACK}.spin"), json!({}))],
        json!([]),
        600_000,
    ))
    .await?;
    let t = Arc::new(t);
    let warmup = Duration::from_secs_f64(args.warmup);
    let duration = Duration::from_secs_f64(args.duration);

    let mut out = Vec::new();
    for honest in [WF_NOOP, WF_GREET] {
        // Baseline on the same host, then the same generator while the hostile runs execute.
        let (base, bw) = closed_loop(
            t.clone(),
            honest.into(),
            json!({}),
            args.concurrency,
            warmup,
            duration,
            args.wait,
        )
        .await;
        let flood_started = Instant::now();
        let spin_target = t.clone();
        let hostile = futures::stream::iter(0..args.hostile)
            .map(move |_| {
                let t = spin_target.clone();
                async move {
                    let id = t.create_run(WF_SPIN, &json!({})).await?;
                    t.wait_terminal(&id, WaitMode::Sse).await?;
                    let snap = t.snapshot(&id).await?;
                    Ok::<_, BenchError>((
                        snap["status"].as_str().unwrap_or_default().to_string(),
                        snap["error"]["code"]
                            .as_str()
                            .unwrap_or_default()
                            .to_string(),
                        // Which limit ended it: `fuel` or `wall-clock` (both are
                        // `sandbox_timeout` on the wire).
                        snap["error"]["details"]["reason"]
                            .as_str()
                            .unwrap_or("none")
                            .to_string(),
                        flood_started.elapsed().as_secs_f64(),
                    ))
                }
            })
            .buffer_unordered(args.hostile.max(1));
        let hostile = tokio::spawn(hostile.collect::<Vec<_>>());
        // Honest load for as long as the flood is expected to last (measured below).
        let (during, dw) = closed_loop(
            t.clone(),
            honest.into(),
            json!({}),
            args.concurrency,
            Duration::ZERO,
            duration,
            args.wait,
        )
        .await;
        let results = hostile.await.unwrap_or_default();
        let mut codes = std::collections::BTreeMap::<String, u64>::new();
        let mut reasons = std::collections::BTreeMap::<String, u64>::new();
        let mut last_done: f64 = 0.0;
        let mut failed = 0;
        for r in &results {
            match r {
                Ok((status, code, reason, at)) => {
                    if status == "failed" {
                        failed += 1;
                    }
                    *codes.entry(code.clone()).or_default() += 1;
                    *reasons.entry(reason.clone()).or_default() += 1;
                    last_done = last_done.max(*at);
                }
                Err(e) => *codes.entry(format!("bench error: {e}")).or_default() += 1,
            }
        }
        out.push(json!({
            "scenario": "flood",
            "honest_workflow": honest,
            "concurrency": args.concurrency,
            "hostile_runs": args.hostile,
            "hostile_failed": failed,
            "hostile_error_codes": codes,
            "hostile_ended_by": reasons,
            "hostile_all_done_s": round2(last_done),
            "baseline": stats_json(base, bw),
            "during_flood": stats_json(during, dw),
            "machine": machine(),
        }));
    }
    if let Ok(t) = Arc::try_unwrap(t) {
        t.shutdown().await;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_scan_counts_events_across_chunk_boundaries() {
        let mut s = SseScan::default();
        s.feed(b"id: 0\nevent: run.star");
        s.feed(b"ted\ndata: {}\n\nid: 1\nevent: run.completed\ndata: {}\n\n");
        assert_eq!(s.events, 2);
        assert_eq!(s.terminal.as_deref(), Some("run.completed"));
    }

    #[test]
    fn percentiles_pick_from_sorted_latencies() {
        let v: Vec<u64> = (1..=100).map(|x| x * 1000).collect();
        assert_eq!(percentile_ms(&v, 50.0), 51.0);
        assert_eq!(percentile_ms(&v, 99.0), 99.0);
        assert_eq!(percentile_ms(&[], 99.0), 0.0);
    }

    #[test]
    fn spin_pack_is_a_gzip_tarball_with_manifest_and_module() {
        let tgz = spin_pack().expect("spin pack builds");
        assert_eq!(&tgz[..2], &[0x1f, 0x8b]);
    }

    /// The hostile pack must pass the RFC 0008 handshake and then never return, so the flood
    /// measures timeouts rather than load failures.
    #[tokio::test]
    async fn spin_module_loads_and_only_ends_by_the_wall_clock() {
        use wopbox_sandbox::{
            InvokeRequest, Limits, LoadOptions, PackFormat, Sandbox, SandboxConfig,
        };
        let mut c = SandboxConfig::default();
        c.engine.pool.total_memories = 8;
        c.engine.pool.total_tables = 8;
        c.engine.pool.total_core_instances = 8;
        c.engine.pool.total_component_instances = 4;
        c.engine.pool.total_stacks = 4;
        let sb = Sandbox::new(c).expect("sandbox");
        let pack = sb
            .load(
                spin_module().expect("module"),
                LoadOptions::new(PackFormat::CoreModule).name(SPIN_PACK),
            )
            .await
            .expect("spin pack passes the handshake");
        let limits = Limits::default().with_wall_clock(Duration::from_millis(50));
        let err = sb
            .invoke(
                &pack,
                InvokeRequest::new(format!("{SPIN_PACK}.spin"), json!({})).limits(limits),
            )
            .await
            .expect_err("an infinite loop cannot complete");
        assert_eq!(err.code(), "sandbox_timeout");
    }
}
