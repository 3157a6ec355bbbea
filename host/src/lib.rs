//! wopbox: an OpenWOP v1 host.
//!
//! Data flows one way: HTTP (`api`) → `engine` → node executors → event log (`events`, backed by
//! `store`) → streams. [`Host::build`] wires the parts; callers may register more node executors
//! on [`Host::registry`] and add discovery blocks before [`Host::serve`].

pub mod api;
pub mod audit;
pub mod authoring;
pub mod bench;
pub mod client;
pub mod cluster;
pub mod config;
pub mod engine;
pub mod events;
pub mod interrupts;
pub mod keys;
pub mod ops;
pub mod packs;
pub mod retention;
pub mod store;
pub mod telemetry;
pub mod webhooks;

use std::path::Path;
use std::sync::Arc;

use axum::serve::ListenerExt;
use axum::Router;

use api::discovery::Discovery;
use api::AppState;
use config::Config;
use engine::{Engine, EngineError, NodeRegistry};
use events::EventLog;
use store::Store;

/// Conformance fixtures whose *semantics* this host implements. A fixture file is loaded and
/// advertised only if it is listed here **and** validates against the node registry; other
/// fixtures (e.g. `conformance-cap-breach`, which uses only `core.noop` but expects a recursion
/// limit to be enforced) are skipped with a logged reason. Later subsystems extend the set with
/// [`Host::support_fixtures`] when they implement what a fixture exercises.
pub const CORE_FIXTURES: [&str; 16] = [
    "conformance-noop",
    "conformance-failure",
    "conformance-idempotent",
    "conformance-multi-node",
    "conformance-delay",
    "conformance-cancellable",
    "conformance-identity",
    // core.subWorkflow (engine/subworkflow.rs).
    "conformance-subworkflow-parent",
    "conformance-subworkflow-child",
    "conformance-subworkflow-input-mapping",
    "conformance-subworkflow-input-mapping-child",
    "conformance-subworkflow-input-mapping-no-default",
    // Children that wait on an approval: the parent mirrors `waiting-approval`; a parent
    // cancel cascades and invalidates the child's interrupt (tests/blackbox/interrupt_cascade.rs).
    "conformance-subworkflow-mid-run-mutation",
    "conformance-subworkflow-mid-run-mutation-child",
    "conformance-interrupt-parent-child-cancel",
    "conformance-interrupt-parent-child-cancel-child",
];

/// How often a serving host re-reads the config file's keys (a revocation applies this fast).
pub const KEY_RELOAD_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// The OpenWOP protocol version this host speaks (discovery's `protocolVersion`).
pub const PROTOCOL_VERSION: &str = "1.0";

/// Version stamped on events (`engineVersion`).
pub const ENGINE_VERSION: &str = concat!("wopbox/", env!("CARGO_PKG_VERSION"));

pub struct Host {
    pub config: Config,
    pub store: Arc<dyn Store>,
    /// Multi-process coordination when the store is shared (Postgres).
    pub shared: Option<Arc<dyn store::shared::SharedStore>>,
    pub events: Arc<EventLog>,
    pub registry: Arc<NodeRegistry>,
    pub engine: Arc<Engine>,
    pub discovery: Arc<Discovery>,
    /// Tamper-evident audit log (record security-relevant actions with `audit.record`).
    pub audit: Arc<audit::AuditLog>,
    pub webhooks: Arc<webhooks::WebhookService>,
    /// Probes, admission and drain state (docs/operations.md).
    pub ops: Arc<ops::Ops>,
    /// Multi-process background work, when the store is shared.
    pub cluster: Option<Arc<cluster::Cluster>>,
    /// Deletes expired runs and idempotency records in the background.
    pub retention: Arc<retention::Retention>,
    /// Sandbox figures for `/metrics`, handed to the pack service when packs attach.
    pub sandbox_metrics: ops::metrics::SandboxCounters,
    /// Extra resource routers merged into the API.
    pub routers: Vec<Router<AppState>>,
    /// Fixture ids whose semantics are implemented (see [`CORE_FIXTURES`]).
    pub supported_fixtures: std::collections::BTreeSet<String>,
}

impl Host {
    /// Open storage and assemble the engine with the built-in node types.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let (store, shared): (Arc<dyn Store>, Option<Arc<dyn store::shared::SharedStore>>) =
            match &config.postgres {
                Some(pg) => {
                    let s = Arc::new(store::postgres::PgStore::open(pg).await?);
                    (s.clone(), Some(s))
                }
                None => (
                    Arc::new(store::sqlite::SqliteStore::open(&config.data_dir).await?),
                    None,
                ),
            };
        let events = Arc::new(EventLog::new(store.clone()));
        let registry = Arc::new(NodeRegistry::new());
        engine::nodes::register_core(&registry);
        let audit = audit::AuditLog::new(store.clone(), &config.data_dir, config.audit.clone())?;
        let interrupts = interrupts::Interrupts::new(
            store.clone(),
            events.clone(),
            interrupts::token::TokenKeys::load_or_generate(&config.data_dir)?,
            &config.interrupts,
            Some(audit.clone()),
        );
        let admission = ops::admission::Admission::new(config.ops.admission.limits());
        let engine = Engine::with_admission(
            store.clone(),
            events.clone(),
            registry.clone(),
            interrupts,
            admission.clone(),
        );
        engine::subworkflow::SubWorkflow::register(&engine);
        let discovery = Arc::new(Discovery::new(config.max_body_bytes));
        // RFC 0022 §B: inputMapping on core.subWorkflow is honoured.
        discovery.set_block(
            "subWorkflow",
            serde_json::json!({"inputMapping": true}),
            true,
        );
        let webhooks = webhooks::WebhookService::new(
            store.clone(),
            config.webhooks.clone(),
            Some(audit.clone()),
        )?;
        events.add_sink(webhooks.clone());
        let sandbox_metrics = ops::metrics::SandboxCounters::default();
        let metrics =
            ops::metrics::Metrics::new(admission.clone(), webhooks.clone(), &sandbox_metrics);
        events.add_sink(metrics.clone());
        let cluster = shared.clone().map(|shared| {
            engine.set_shared(shared.clone());
            Arc::new(cluster::Cluster {
                shared,
                engine: engine.clone(),
                events: events.clone(),
                webhooks: webhooks.clone(),
                packs: std::sync::OnceLock::new(),
            })
        });
        discovery.set_block("webhooks", webhooks.discovery_block(), false);
        discovery.set_block("auth", audit.discovery_block(), false);
        // Who may resolve approvals (tests/blackbox/interrupt_auth.rs backs both claims).
        discovery.add_interrupt_profile(api::approvers::AUTH_REQUIRED_PROFILE);
        // Parent cancel cascades into waiting children (tests/blackbox/interrupt_cascade.rs).
        discovery.add_interrupt_profile(engine::subworkflow::CASCADE_CANCEL_PROFILE);
        // N-of-M approvals (tests/blackbox/interrupt_quorum.rs backs the claim).
        discovery.add_interrupt_profile(interrupts::quorum::PROFILE);
        // Correlated, idempotent, redacted external events (tests/blackbox/interrupt_external.rs).
        discovery.add_interrupt_profile(interrupts::external::PROFILE);
        discovery.set_block("interrupt", api::approvers::discovery_block(), false);
        let routers = vec![
            api::webhooks::router(webhooks.clone()),
            api::audit::router(audit.clone()),
            ops::metrics::router(metrics),
            api::interrupts::router(),
        ];
        let retention = retention::Retention::new(store.clone(), config.retention.clone());
        // RFC 0009 `production`: the sub-blocks implemented and tested on both backends; the
        // profile itself is not claimed (ops/production.rs, docs/operations.md).
        discovery.merge_block(
            "production",
            ops::production::discovery_block(admission.limits()),
            true,
        );
        discovery.merge_block("production", retention.discovery_block(), true);
        let ops = ops::Ops::new(store.clone(), admission);
        Ok(Host {
            retention,
            sandbox_metrics,
            config,
            ops,
            store,
            shared,
            events,
            registry,
            engine,
            discovery,
            audit,
            webhooks,
            cluster,
            routers,
            supported_fixtures: CORE_FIXTURES
                .iter()
                .chain(interrupts::FIXTURES.iter())
                .map(|s| s.to_string())
                .collect(),
        })
    }

    /// Declare more fixtures whose semantics this host now implements.
    pub fn support_fixtures<'a>(&mut self, ids: impl IntoIterator<Item = &'a str>) {
        self.supported_fixtures
            .extend(ids.into_iter().map(str::to_string));
    }

    /// Register every definition in `--workflows` and every valid fixture in `--fixtures`
    /// (fixtures are advertised in discovery only when they validate against the registry).
    pub async fn load_definitions(&self) -> anyhow::Result<()> {
        if let Some(dir) = &self.config.workflows_dir {
            for (path, def) in read_json_dir(dir, |_| true)? {
                match self
                    .engine
                    .register_workflow(store::SHARED_TENANT, def, "workflows-dir")
                    .await
                {
                    Ok(wf) => tracing::info!(workflow = %wf.id, "registered workflow"),
                    Err(e) => {
                        tracing::warn!(path = %path, error = %describe(&e), "skipped invalid workflow")
                    }
                }
            }
        }
        if let Some(dir) = &self.config.fixtures_dir {
            for (path, def) in read_json_dir(dir, |name| name.starts_with("conformance-"))? {
                let id = def
                    .get("id")
                    .and_then(|v| v.as_str())
                    .unwrap_or("")
                    .to_string();
                if !self.supported_fixtures.contains(&id) {
                    // Validate anyway so the log says whether only semantics are missing.
                    let reason = match self.engine.validate(&def) {
                        Ok(_) => "its semantics are not implemented by this host".to_string(),
                        Err(p) => describe(&EngineError::Invalid(p)),
                    };
                    tracing::info!(fixture = %id, %reason, "fixture skipped");
                    continue;
                }
                match self
                    .engine
                    .register_workflow(store::SHARED_TENANT, def, "fixtures")
                    .await
                {
                    Ok(wf) => self.discovery.add_fixture(&wf.id),
                    Err(e) => {
                        tracing::warn!(path = %path, reason = %describe(&e), "fixture skipped")
                    }
                }
            }
            tracing::info!(fixtures = ?self.discovery.fixtures(), "fixtures advertised");
        }
        Ok(())
    }

    /// Load definitions, resume unfinished runs, then serve HTTP until Ctrl-C.
    pub async fn serve(self) -> anyhow::Result<()> {
        self.load_definitions().await?;
        let resumed = self.engine.recover().await?;
        if resumed > 0 {
            tracing::info!(resumed, "resumed unfinished runs");
        }
        self.webhooks.start().await?;
        if let Some(c) = &self.cluster {
            c.start().await?;
        }
        self.audit.spawn_checkpointer();
        self.retention.spawn();
        let keys = Arc::new(match &self.config.config_file {
            Some(path) => api::auth::KeyRing::with_file(&self.config.api_keys, path)?,
            None => api::auth::KeyRing::new(&self.config.api_keys),
        });
        keys.spawn_reloader(KEY_RELOAD_INTERVAL);
        let state = AppState {
            engine: self.engine.clone(),
            events: self.events.clone(),
            keys: keys.clone(),
            discovery: self.discovery.clone(),
            max_body_bytes: self.config.max_body_bytes,
            sse_keepalive: std::time::Duration::from_millis(self.config.sse_keepalive_ms),
        };
        // Probes sit beside the API, outside its bearer-auth layer.
        let app = api::router(state, self.routers).merge(ops::health::router(self.ops.clone()));
        let app = audit::http::layer(app, self.audit.clone(), keys);
        let listener = tokio::net::TcpListener::bind(self.config.listen).await?;
        {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            writeln!(out, "wopbox listening on http://{}", listener.local_addr()?)?;
            out.flush()?;
        }
        // Without TCP_NODELAY, Nagle holds a response's last small segment until the client's
        // delayed ACK (~40 ms on Linux): every keep-alive request/response pair (and every SSE
        // frame) then costs ~40 ms, which capped a closed-loop client at ~650 runs/s.
        let listener = listener.tap_io(|tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "cannot set TCP_NODELAY on an accepted connection");
            }
        });
        let (close_tx, close_rx) = tokio::sync::oneshot::channel::<()>();
        let server = axum::serve(listener, app).with_graceful_shutdown(async move {
            let _ = close_rx.await;
        });
        let mut server = std::pin::pin!(std::future::IntoFuture::into_future(server));
        tokio::select! {
            r = &mut server => return r.map_err(Into::into),
            _ = shutdown_signal() => {}
        }
        // Keep serving while draining (ops/shutdown.rs); a second signal cuts the drain short.
        tokio::select! {
            _ = ops::shutdown::drain(&self.ops, &self.webhooks, &self.config.ops.shutdown) => {}
            _ = shutdown_signal() => tracing::warn!("second signal: exiting without finishing the drain"),
        }
        let _ = close_tx.send(());
        // Open SSE streams of running runs would hold a graceful shutdown forever: give
        // in-flight requests a grace period, then exit. Unfinished runs resume on next start.
        tokio::select! {
            r = &mut server => r?,
            _ = tokio::time::sleep(ops::shutdown::STREAM_GRACE) => {
                tracing::warn!("shutdown grace period over; exiting with requests still open")
            }
        }
        if let Some(c) = &self.cluster {
            c.release().await;
        }
        Ok(())
    }
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

fn describe(e: &EngineError) -> String {
    match e {
        EngineError::Invalid(problems) => problems
            .iter()
            .map(|p| format!("{}: {}", p.path, p.message))
            .collect::<Vec<_>>()
            .join("; "),
        EngineError::WorkflowNotFound(id) => format!("workflow {id} not found"),
        EngineError::Store(e) => e.to_string(),
    }
}

fn read_json_dir(
    dir: &Path,
    keep: impl Fn(&str) -> bool,
) -> anyhow::Result<Vec<(String, serde_json::Value)>> {
    let mut out = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.extension().map(|x| x == "json").unwrap_or(false))
        .collect();
    entries.sort();
    for p in entries {
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if !keep(name) {
            continue;
        }
        let text = std::fs::read_to_string(&p)?;
        match serde_json::from_str(&text) {
            Ok(v) => out.push((p.display().to_string(), v)),
            Err(e) => tracing::warn!(path = %p.display(), error = %e, "skipped unparseable JSON"),
        }
    }
    Ok(out)
}
