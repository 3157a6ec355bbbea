use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use wopbox::client::Client;

// glibc malloc (arena locks, consolidation) was ~15 % of the host's CPU under load; mimalloc's
// thread-local free lists cost a fraction of that (docs/performance.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use wopbox::config::{Config, ServeArgs};
use wopbox::telemetry::LogFormat;

#[derive(Parser)]
#[command(
    name = "wopbox",
    version,
    about = "OpenWOP v1 host that runs untrusted node packs in a wasmtime sandbox"
)]
struct Cli {
    /// How log lines are written to stderr: `text` for people, `json` (one object per line,
    /// with the run id, tenant and correlation id of the enclosing spans) for collectors.
    #[arg(
        long,
        global = true,
        env = "WOPBOX_LOG_FORMAT",
        value_enum,
        default_value_t = LogFormat::Text
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP host.
    Serve(ServeArgs),
    /// Work with node packs on a running wopbox.
    #[command(subcommand)]
    Pack(PackCommand),
    /// Work with workflow definitions on a running wopbox.
    #[command(subcommand)]
    Workflow(WorkflowCommand),
    /// Start a run of a workflow on a running wopbox; with --watch, follow it to its end
    /// (exit 0 completed, 3 failed, 4 cancelled, 1 when the client cannot go on).
    Run(RunArgs),
    /// Mint, revoke and list scoped API keys in the operator config file.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Load and scale benchmarks over loopback HTTP (docs/performance.md).
    Bench(wopbox::bench::BenchArgs),
}

/// Where a client subcommand sends its requests.
#[derive(Args, Debug)]
struct Remote {
    /// Base URL of the wopbox server.
    #[arg(long, env = "WOPBOX_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Bearer API key.
    #[arg(long = "api-key", env = "WOPBOX_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
}

#[derive(Subcommand)]
enum PackCommand {
    /// Build a tarball from DIR (its pack.json and runtime.entry) and publish it.
    Push {
        dir: PathBuf,
        #[command(flatten)]
        remote: Remote,
    },
    /// Run one node of the local pack in DIR in the real sandbox, with the
    /// server's limits and grants; prints output, logs, fuel, memory and
    /// duration. Exits 1 when the node fails, 2 when the pack cannot run.
    Test(wopbox::authoring::local_test::PackTestArgs),
    /// Create a pack project in DIR from a template (Rust with wopbox-pdk,
    /// Python with componentize-py, JS with componentize-js) that builds as
    /// generated: `./build.sh`, then `wopbox pack test DIR`.
    New(wopbox::authoring::new_pack::PackNewArgs),
}

#[derive(Subcommand)]
enum WorkflowCommand {
    /// Register the workflow definition in FILE (JSON).
    Put {
        file: PathBuf,
        #[command(flatten)]
        remote: Remote,
    },
}

#[derive(Args)]
struct RunArgs {
    /// Id of a registered workflow.
    workflow: String,
    /// The run's inputs: a JSON object, or @FILE to read one from a file.
    #[arg(long, value_name = "JSON|@FILE")]
    input: Option<String>,
    /// Stream the run's events and show live progress until it ends (redrawn in place on a
    /// terminal, one line per event otherwise); a run parked on an interrupt is watched on,
    /// with a hint saying how to resolve it.
    #[arg(long)]
    watch: bool,
    #[command(flatten)]
    remote: Remote,
}

/// `wopbox run`: without `--watch`, the created run's JSON; with it, the exit code of the
/// run's outcome.
async fn run_command(args: RunArgs) -> ExitCode {
    use std::io::IsTerminal;
    use wopbox::client::watch::Display;
    let client = Client::new(&args.remote.url, args.remote.api_key);
    let inputs = match wopbox::client::parse_input(args.input.as_deref()) {
        Ok(v) => v,
        Err(e) => return report::<_>(Err(e)),
    };
    let started = std::time::Instant::now();
    let created = match client.create_run(&args.workflow, inputs).await {
        Ok(v) => v,
        Err(e) => return report::<_>(Err(e)),
    };
    if !args.watch {
        return report::<wopbox::client::ClientError>(Ok(created));
    }
    let Some(run_id) = created.get("runId").and_then(serde_json::Value::as_str) else {
        eprintln!("error: the server's answer names no runId: {created}");
        return ExitCode::FAILURE;
    };
    let display = if std::io::stdout().is_terminal() {
        Display::Live
    } else {
        Display::Plain
    };
    match client.watch(run_id, display, started).await {
        Ok(outcome) => ExitCode::from(outcome.exit_code()),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The operator config file the `keys` subcommands edit (the one `serve --config` reads).
#[derive(Args, Debug)]
struct ConfigFile {
    #[arg(long, env = "WOPBOX_CONFIG", default_value = "wopbox.toml")]
    config: PathBuf,
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Add a key for TENANT holding the given scopes; prints its secret once (only the
    /// secret's SHA-256 digest is stored).
    Mint {
        #[arg(long)]
        tenant: String,
        /// A scope (repeatable): e.g. runs:create, runs:read, approvals:respond, runs:*, or *.
        #[arg(long = "scope", required = true)]
        scopes: Vec<String>,
        /// Free-form note shown by `keys list`.
        #[arg(long)]
        label: Option<String>,
        /// A role the key holds (repeatable), for approvals routed by `approverRoleRefs`.
        #[arg(long = "role")]
        roles: Vec<String>,
        /// A group the key belongs to (repeatable), for `approverGroupRefs`.
        #[arg(long = "group")]
        groups: Vec<String>,
        /// Expiry (RFC 3339); afterwards the key answers 401 key_expired.
        #[arg(long)]
        expires: Option<chrono::DateTime<chrono::Utc>>,
        #[command(flatten)]
        file: ConfigFile,
    },
    /// Revoke the key with this id (it then answers 401 key_revoked; a running host applies
    /// this within a second).
    Revoke {
        id: String,
        #[command(flatten)]
        file: ConfigFile,
    },
    /// List the keys (ids, tenants, scopes, state; never secrets or digests).
    List {
        #[command(flatten)]
        file: ConfigFile,
    },
}

fn keys_command(cmd: KeysCommand) -> ExitCode {
    use wopbox::keys;
    let result = match cmd {
        KeysCommand::Mint {
            tenant,
            scopes,
            label,
            roles,
            groups,
            expires,
            file,
        } => keys::mint(
            &file.config,
            &keys::MintRequest {
                tenant: &tenant,
                scopes: &scopes,
                label: label.as_deref(),
                roles: &roles,
                groups: &groups,
                expires,
            },
        ),
        KeysCommand::Revoke { id, file } => keys::revoke(&file.config, &id),
        KeysCommand::List { file } => keys::list(&file.config),
    };
    report(result.map_err(|e| e.to_string()))
}

/// Prints a client call's result; the server's error envelope becomes a
/// message on stderr and a non-zero exit.
fn report<E: std::fmt::Display>(result: Result<serde_json::Value, E>) -> ExitCode {
    match result {
        Ok(v) => {
            println!(
                "{}",
                serde_json::to_string_pretty(&v).unwrap_or_else(|_| v.to_string())
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `wopbox pack test`: the report on stdout; on failure the spec's error
/// code on stderr and a non-zero exit (1: the node failed, 2: the pack could
/// not be run at all).
async fn pack_test(args: &wopbox::authoring::local_test::PackTestArgs) -> ExitCode {
    use wopbox::authoring::local_test::{render, run};
    match run(args).await {
        Ok(report) => {
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report).unwrap_or_default()
                );
            } else {
                print!("{}", render(&report));
            }
            if report.succeeded() {
                return ExitCode::SUCCESS;
            }
            let (code, message) = match &report.error {
                Some(e) => (
                    e["error"].as_str().unwrap_or("unknown").to_string(),
                    e["message"].as_str().unwrap_or("").to_string(),
                ),
                None => (
                    "wasm_suspend_not_implemented".to_string(),
                    "the node asked to suspend; the server does not resume pack interrupts yet"
                        .to_string(),
                ),
            };
            eprintln!("error: {code}: {message}");
            ExitCode::from(1)
        }
        Err(e) => {
            if args.json {
                println!("{}", e.envelope());
            }
            eprintln!("error: {}: {e}", e.code());
            ExitCode::from(2)
        }
    }
}

/// `wopbox pack new`: what was created and what to run next; a usage
/// mistake is `validation_error`, exit 2, and nothing is written.
fn pack_new(args: &wopbox::authoring::new_pack::PackNewArgs) -> ExitCode {
    use wopbox::authoring::new_pack::{create, PackNewError};
    match create(args) {
        Ok(c) => {
            let dir = c.dir.display();
            println!("created {} ({:?}) in {dir}", c.pack, args.lang);
            println!("  node   {}", c.node);
            println!("  entry  {} (built by ./build.sh)", c.entry);
            println!("  files  {}", c.files.join(" "));
            println!(
                "next:  (cd {dir} && ./build.sh) && wopbox pack test {dir} --input '{{\"name\":\"Ada\"}}'"
            );
            ExitCode::SUCCESS
        }
        Err(e @ PackNewError::Usage(_)) => {
            eprintln!("error: validation_error: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    // The OTel test seam needs the span recorder; only a host serving test seams records.
    let record_spans = matches!(&cli.command, Command::Serve(a) if a.packs.enable_test_seams);
    wopbox::telemetry::init(cli.log_format, record_spans);
    match cli.command {
        Command::Serve(args) => {
            let config = Config::from_args(args)?;
            let pack_args = config.packs.clone();
            let mut host = wopbox::Host::build(config).await?;
            wopbox::packs::attach(&mut host, &pack_args).await?;
            host.serve().await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Keys(cmd) => Ok(keys_command(cmd)),
        Command::Run(args) => Ok(run_command(args).await),
        Command::Bench(args) => {
            wopbox::bench::run(args).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Pack(PackCommand::Push { dir, remote }) => Ok(report(
            Client::new(&remote.url, remote.api_key)
                .push_pack(&dir)
                .await,
        )),
        Command::Pack(PackCommand::Test(args)) => Ok(pack_test(&args).await),
        Command::Pack(PackCommand::New(args)) => Ok(pack_new(&args)),
        Command::Workflow(WorkflowCommand::Put { file, remote }) => Ok(report(
            Client::new(&remote.url, remote.api_key)
                .put_workflow(&file)
                .await,
        )),
    }
}
