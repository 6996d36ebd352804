//! The server's configuration: one TOML file, every option with a default, so the server
//! runs with no file at all.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use steadfast_verify::Limits;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the WAL, checkpoints, break store and admin token live.
    pub data_dir: PathBuf,
    /// The API listener. Plain HTTP is meant for loopback.
    pub listen: SocketAddr,
    /// The rule file; the embedded example rules when absent.
    pub rules: Option<PathBuf>,
    pub limits: LimitsConfig,
    pub engine: EngineConfig,
    pub webhook: WebhookConfig,
    pub masking: MaskingConfig,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest request body; larger ones get 413.
    pub body_bytes_max: usize,
    /// Most records in one ingest batch; more get 413.
    pub batch_records_max: usize,
    /// Batches waiting for the WAL; past this, 429 with Retry-After.
    pub wal_queue_batches_max: usize,
    /// Records acknowledged but not yet verified. A batch waits up to `backlog_wait_ms`
    /// for room, then gets 429 with Retry-After. This bounds detection latency: the
    /// engine is never more than this many records behind the acknowledgements.
    pub backlog_records_max: usize,
    pub backlog_wait_ms: u64,
    /// Pending records per rule; near it, 503 with Retry-After and a `capacity` break.
    pub open_records_max: usize,
    pub record_ids_max: usize,
    pub record_id_retention_secs: u64,
    pub closed_keys_max: usize,
    pub closed_retention_secs: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    /// How often the engine's clock advances with no records, firing deadlines.
    pub tick_ms: u64,
    /// A checkpoint is written after this many records...
    pub checkpoint_every_records: u64,
    /// ...or this many seconds, whichever comes first.
    pub checkpoint_every_secs: u64,
    /// WAL segments (up to 256 MiB each) kept after a checkpoint covers them, so that
    /// `steadfast verify --rules NEW DATA_DIR/wal` can backtest a rule change on past data.
    pub wal_segments_kept: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookConfig {
    /// Where new production breaks are POSTed; none when absent.
    pub url: Option<String>,
    pub batch_max: usize,
    pub timeout_secs: u64,
    /// Longest wait between retries.
    pub backoff_secs_max: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MaskingConfig {
    pub enabled: bool,
    /// Fields whose values are masked in breaks, webhooks and logs.
    pub fields: Vec<String>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            data_dir: PathBuf::from("steadfast-data"),
            listen: "127.0.0.1:7420".parse().expect("valid default address"),
            rules: None,
            limits: LimitsConfig::default(),
            engine: EngineConfig::default(),
            webhook: WebhookConfig::default(),
            masking: MaskingConfig::default(),
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> LimitsConfig {
        let l = Limits::default();
        LimitsConfig {
            body_bytes_max: 16 * 1024 * 1024,
            batch_records_max: l.batch_records_max,
            wal_queue_batches_max: 256,
            backlog_records_max: 10_000,
            backlog_wait_ms: 2_000,
            open_records_max: l.open_records_max,
            record_ids_max: l.record_ids_max,
            record_id_retention_secs: (l.record_id_retention_ms / 1000) as u64,
            closed_keys_max: l.closed_keys_max,
            closed_retention_secs: (l.closed_retention_ms / 1000) as u64,
        }
    }
}

impl Default for EngineConfig {
    fn default() -> EngineConfig {
        EngineConfig {
            tick_ms: 100,
            checkpoint_every_records: 1_000_000,
            checkpoint_every_secs: 60,
            wal_segments_kept: 4,
        }
    }
}

impl Default for WebhookConfig {
    fn default() -> WebhookConfig {
        WebhookConfig {
            url: None,
            batch_max: 100,
            timeout_secs: 5,
            backoff_secs_max: 300,
        }
    }
}

impl Default for MaskingConfig {
    fn default() -> MaskingConfig {
        MaskingConfig {
            enabled: true,
            fields: ["account", "counter_account", "payer_account", "card_no"]
                .map(String::from)
                .to_vec(),
        }
    }
}

impl Config {
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("failed to read config {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("config {}: {e}", path.display()))
    }

    pub fn engine_limits(&self) -> Limits {
        let l = &self.limits;
        Limits {
            open_records_max: l.open_records_max,
            batch_records_max: l.batch_records_max,
            record_ids_max: l.record_ids_max,
            record_id_retention_ms: l.record_id_retention_secs as i64 * 1000,
            closed_keys_max: l.closed_keys_max,
            closed_retention_ms: l.closed_retention_secs as i64 * 1000,
        }
    }

    /// The documented default configuration, as TOML.
    pub fn default_toml() -> String {
        toml::to_string_pretty(&Config::default()).expect("default config serializes")
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_default_round_trips_and_typos_are_refused() {
        let text = super::Config::default_toml();
        let back: super::Config = toml::from_str(&text).unwrap();
        assert_eq!(back.listen, super::Config::default().listen);
        let err = toml::from_str::<super::Config>("[limits]\nbody_bytes_mx = 5\n").unwrap_err();
        assert!(err.to_string().contains("body_bytes_mx"));
    }
}
