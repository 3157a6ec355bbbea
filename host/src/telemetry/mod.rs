//! Logs and tracing (docs/operations.md "Logs and tracing").
//!
//! Everything is `tracing`: the host opens a span per HTTP request, per run (`openwop.run`)
//! and per node execution (`openwop.node.<typeId>`), named and attributed as
//! spec/v1/observability.md says, so a log line written inside a node carries the run id,
//! tenant and correlation id of the spans around it without repeating them. `--log-format`
//! picks how the lines are written: human text, or one JSON object per line.

pub mod spans;
pub mod trace;

use tracing_subscriber::filter::{filter_fn, FilterExt};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use std::io::IsTerminal;

pub use spans::SpanRecorder;
pub use trace::TraceContext;

/// `--log-format`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines (span fields shown inline).
    #[default]
    Text,
    /// One JSON object per line: event fields at the top level, the enclosing spans (with
    /// their fields) under `spans`, outermost first.
    Json,
}

/// The filter used when `RUST_LOG` is unset.
const DEFAULT_FILTER: &str = "wopbox=info";

/// Install the process-wide subscriber: logs to stderr in `format`, filtered by `RUST_LOG`,
/// plus the span recorder behind the OTel test seam when `record_spans`.
pub fn init(format: LogFormat, record_spans: bool) {
    let env = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    // `RUST_LOG` picks which *events* are written; the host's own spans stay enabled whatever
    // it says, so a warning still carries the run, tenant and correlation id around it.
    let filter = env.or(filter_fn(|m| {
        m.is_span() && m.target().starts_with("wopbox")
    }));
    let fmt = match format {
        // Colour only for a terminal: escape codes in a log file or pipe are noise.
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(true)
            .with_writer(std::io::stderr)
            .boxed(),
    };
    // The filter applies to the log output only: the recorder sees every span and event, so
    // the seam reports what the host really traced whatever `RUST_LOG` says.
    let registry = tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .with(record_spans.then(SpanRecorder::global));
    let _ = registry.try_init();
}
