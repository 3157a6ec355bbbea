//! Retention settings: `--retention-*` flags (or `WOPBOX_RETENTION_*`), else the `[retention]`
//! table of the operator config file (`--config`), else the defaults — the production
//! profile's floors (events 7 days, idempotency records 24 hours).
//!
//! ```toml
//! [retention]
//! events = "14d"          # finished runs: snapshot + event log, counted from completion
//! idempotency = "48h"     # Idempotency-Key records, counted from the first request
//! sweep_interval = "5m"   # how often the cleanup runs
//! batch = 500             # rows per table per cleanup transaction
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// production-profile.md §"Event retention": 7 days for run snapshots and events.
pub const EVENTS_FLOOR: Duration = Duration::from_secs(7 * 24 * 3600);
/// idempotency.md rule 3 / production-profile.md: at least 24 hours.
pub const IDEMPOTENCY_FLOOR: Duration = Duration::from_secs(24 * 3600);
pub const DEFAULT_SWEEP_INTERVAL: Duration = Duration::from_secs(60);
pub const DEFAULT_BATCH: u32 = 500;

#[derive(clap::Args, Debug, Clone, Default)]
pub struct RetentionArgs {
    /// Keep a finished run's snapshot and events this long after it completed (`7d`, `36h`,
    /// `90m`, `30s`, `500ms`). Default 7d. Shorter than 7d is development-only.
    #[arg(long = "retention-events", env = "WOPBOX_RETENTION_EVENTS", value_parser = parse_duration)]
    pub events: Option<Duration>,
    /// Keep Idempotency-Key records this long. Default 24h. Shorter is development-only.
    #[arg(long = "retention-idempotency", env = "WOPBOX_RETENTION_IDEMPOTENCY", value_parser = parse_duration)]
    pub idempotency: Option<Duration>,
    /// How often the retention cleanup runs. Default 1m.
    #[arg(long = "retention-sweep-interval", env = "WOPBOX_RETENTION_SWEEP_INTERVAL", value_parser = parse_duration)]
    pub sweep_interval: Option<Duration>,
    /// Rows deleted per table per cleanup transaction. Default 500.
    #[arg(long = "retention-batch", env = "WOPBOX_RETENTION_BATCH",
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub batch: Option<u32>,
}

/// The resolved settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionSettings {
    pub events: Duration,
    pub idempotency: Duration,
    pub sweep_interval: Duration,
    pub batch: u32,
}

impl Default for RetentionSettings {
    fn default() -> Self {
        RetentionSettings {
            events: EVENTS_FLOOR,
            idempotency: IDEMPOTENCY_FLOOR,
            sweep_interval: DEFAULT_SWEEP_INTERVAL,
            batch: DEFAULT_BATCH,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RetentionConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: [retention]: {message}")]
    File { path: PathBuf, message: String },
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileSection {
    events: Option<String>,
    idempotency: Option<String>,
    sweep_interval: Option<String>,
    batch: Option<u32>,
}

/// The config file's other tables belong to other readers; only `[retention]` is read here.
#[derive(Deserialize)]
struct Document {
    #[serde(default)]
    retention: FileSection,
}

impl RetentionSettings {
    /// Flags win over the file, the file over the defaults.
    pub fn resolve(
        args: &RetentionArgs,
        config_file: Option<&Path>,
    ) -> Result<Self, RetentionConfigError> {
        let file = match config_file {
            Some(path) => read_section(path)?,
            None => FileSection::default(),
        };
        let from_file =
            |field: &str, v: &Option<String>| -> Result<Option<Duration>, RetentionConfigError> {
                v.as_deref()
                    .map(parse_duration)
                    .transpose()
                    .map_err(|message| RetentionConfigError::File {
                        path: config_file.map(Path::to_path_buf).unwrap_or_default(),
                        message: format!("{field}: {message}"),
                    })
            };
        let d = RetentionSettings::default();
        let file_batch = match file.batch {
            Some(0) => {
                return Err(RetentionConfigError::File {
                    path: config_file.map(Path::to_path_buf).unwrap_or_default(),
                    message: "batch must be at least 1".into(),
                })
            }
            b => b,
        };
        Ok(RetentionSettings {
            events: args
                .events
                .or(from_file("events", &file.events)?)
                .unwrap_or(d.events),
            idempotency: args
                .idempotency
                .or(from_file("idempotency", &file.idempotency)?)
                .unwrap_or(d.idempotency),
            sweep_interval: args
                .sweep_interval
                .or(from_file("sweep_interval", &file.sweep_interval)?)
                .unwrap_or(d.sweep_interval),
            batch: args.batch.or(file_batch).unwrap_or(d.batch),
        })
    }

    /// Below the production profile's floors (a development setting).
    pub fn below_floor(&self) -> bool {
        self.events < EVENTS_FLOOR || self.idempotency < IDEMPOTENCY_FLOOR
    }
}

fn read_section(path: &Path) -> Result<FileSection, RetentionConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| RetentionConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    toml::from_str::<Document>(&text)
        .map(|d| d.retention)
        .map_err(|e| RetentionConfigError::File {
            path: path.to_path_buf(),
            message: e.message().to_string(),
        })
}

/// `<whole number><unit>` with unit `ms`, `s`, `m`, `h` or `d`; at least 1 ms, at most 100
/// years.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("'{s}' has no unit (use ms, s, m, h or d, e.g. 7d)"))?;
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("'{s}' does not start with a whole number"))?;
    let ms_per = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => {
            return Err(format!(
                "unknown unit '{unit}' in '{s}' (use ms, s, m, h or d)"
            ))
        }
    };
    let ms = n
        .checked_mul(ms_per)
        .filter(|ms| (1..=100 * 365 * 86_400_000).contains(ms))
        .ok_or_else(|| format!("'{s}' is out of range (1ms to 100 years)"))?;
    Ok(Duration::from_millis(ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units_and_refuse_the_rest() {
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("90m"), Ok(Duration::from_secs(5_400)));
        assert_eq!(parse_duration(" 30s "), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        for bad in ["", "7", "d", "7w", "-1d", "1.5h", "0s", "99999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn flags_override_the_file_which_overrides_the_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wopbox.toml");
        std::fs::write(
            &path,
            "[[keys]]\nid = \"k\"\n\n[retention]\nevents = \"14d\"\nidempotency = \"48h\"\nbatch = 50\n",
        )
        .unwrap();
        let none = RetentionArgs::default();
        assert_eq!(
            RetentionSettings::resolve(&none, None).unwrap(),
            RetentionSettings::default()
        );
        let s = RetentionSettings::resolve(&none, Some(&path)).unwrap();
        assert_eq!(s.events, Duration::from_secs(14 * 86_400));
        assert_eq!(s.idempotency, Duration::from_secs(48 * 3_600));
        assert_eq!(s.batch, 50);
        assert_eq!(s.sweep_interval, DEFAULT_SWEEP_INTERVAL);
        assert!(!s.below_floor());
        let flags = RetentionArgs {
            events: Some(Duration::from_secs(1)),
            ..Default::default()
        };
        let s = RetentionSettings::resolve(&flags, Some(&path)).unwrap();
        assert_eq!(s.events, Duration::from_secs(1));
        assert_eq!(s.idempotency, Duration::from_secs(48 * 3_600));
        assert!(s.below_floor());

        std::fs::write(&path, "[retention]\nevents = \"soon\"\n").unwrap();
        let e = RetentionSettings::resolve(&none, Some(&path)).unwrap_err();
        assert!(e.to_string().contains("events"), "{e}");
        std::fs::write(&path, "[retention]\nevent = \"7d\"\n").unwrap();
        assert!(RetentionSettings::resolve(&none, Some(&path)).is_err());
    }
}
