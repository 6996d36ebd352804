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
    /// The API listener. Without `[tls]` it speaks plain HTTP, which is refused on a
    /// non-loopback address unless `allow_plain_http`.
    pub listen: SocketAddr,
    /// Serve plain HTTP on a non-loopback address (behind a TLS-terminating proxy).
    pub allow_plain_http: bool,
    /// The rule file; the embedded example rules when absent.
    pub rules: Option<PathBuf>,
    pub limits: LimitsConfig,
    pub engine: EngineConfig,
    pub webhook: WebhookConfig,
    pub masking: MaskingConfig,
    pub tls: TlsConfig,
    pub auth: AuthConfig,
    pub approvals: ApprovalsConfig,
    pub audit: AuditConfig,
    pub drills: DrillsConfig,
    pub chain: ChainConfig,
    /// Pre-verified runbooks (`[[runbooks]]`): HTTP changes with a dry-run verification.
    pub runbooks: Vec<crate::runbooks::RunbookConfig>,
    /// Baselines, alert rules and incidents.
    pub insight: crate::insight::InsightConfig,
}

/// The data chain's storage (`DATA_DIR/chain`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChainConfig {
    /// Files whose newest row is older than this are deleted.
    pub retention_secs: u64,
    /// Past this many bytes of files, the oldest are deleted.
    pub max_bytes: u64,
    /// Where OTLP/gRPC is served (the standard port is 4317). Off unless set here;
    /// `steadfast serve` sets 127.0.0.1:4317 unless told otherwise.
    pub otlp_grpc_listen: Option<std::net::SocketAddr>,
    /// Where OTLP/HTTP is served besides the main listener (the standard port is 4318).
    pub otlp_http_listen: Option<std::net::SocketAddr>,
    /// Nginx JSON access logs to tail (the `log_format` of docs/specs/chain.md).
    pub nginx_logs: Vec<std::path::PathBuf>,
    /// Where NetFlow v9 and IPFIX are collected (UDP; 2055 and 4739 are usual). Off unless set.
    pub netflow_listen: Option<std::net::SocketAddr>,
    /// Exporters whose flows are taken; datagrams from anywhere else are dropped.
    pub netflow_exporters: Vec<std::net::IpAddr>,
    /// Traces kept at ingest, in percent (per trace, by its id); VIPs' always.
    pub sample_percent: u8,
    /// Users whose traces are never sampled away.
    pub vip_users: Vec<String>,
    /// A span attribute that marks a VIP when true.
    pub vip_attribute: String,
}

impl Default for ChainConfig {
    fn default() -> ChainConfig {
        ChainConfig {
            retention_secs: 7 * 86_400,
            max_bytes: 10 * 1024 * 1024 * 1024,
            otlp_grpc_listen: None,
            otlp_http_listen: None,
            nginx_logs: Vec::new(),
            netflow_listen: None,
            netflow_exporters: vec![
                std::net::Ipv4Addr::LOCALHOST.into(),
                std::net::Ipv6Addr::LOCALHOST.into(),
            ],
            sample_percent: 100,
            vip_users: Vec::new(),
            vip_attribute: "user.vip".into(),
        }
    }
}

/// Where lossy drills book their corrections: named targets, so a drill spec names one and
/// never makes the server call an address of its own choosing.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DrillsConfig {
    pub corrections: Vec<CorrectionTarget>,
}

/// A downstream's correction API.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CorrectionTarget {
    pub name: String,
    /// POSTed once per hit.
    pub url: String,
    /// The JSON body, a template: a string that is exactly `{key}`, `{original}`,
    /// `{tampered}`, `{field}`, `{record_id}`, `{drill}` or `{reason}` is replaced.
    pub body: serde_json::Value,
    /// A file holding a bearer token for the correction API (never logged).
    #[serde(default)]
    pub token_file: Option<PathBuf>,
}

impl CorrectionTarget {
    /// A target with no token.
    pub fn new(name: &str, url: String, body: serde_json::Value) -> CorrectionTarget {
        CorrectionTarget {
            name: name.into(),
            url,
            body,
            token_file: None,
        }
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM certificate chain; with `key`, the listener speaks TLS (rustls).
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// PEM CA that client certificates must chain to; when set, clients are asked for one.
    pub client_ca: Option<PathBuf>,
    /// With `client_ca`: ingest needs a verified client certificate besides its token.
    pub ingest_requires_client_cert: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Lifetime of a token created without `expires_in_secs`.
    pub token_lifetime_secs_default: u64,
    /// Lifetime of a signed-in user's session token.
    pub session_secs: u64,
    /// Requests per second per token unless the token says otherwise; past it, 429.
    pub requests_per_sec_per_token: u32,
    /// Sign-in attempts per minute from one address; past it, 429.
    pub logins_per_min_per_ip: u32,
}

/// Four-eyes: the actions one person requests and a different person approves.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApprovalsConfig {
    /// Actions that need a second person (see `FOUR_EYES_ACTIONS`).
    pub required: Vec<String>,
    /// A request not decided within this expires.
    pub ttl_secs: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// Every audit entry is appended here as a JSON line (at least once, in order).
    pub export_file: Option<PathBuf>,
    /// Audit entries are POSTed here as NDJSON batches (at least once, in order), e.g. to a SIEM.
    pub webhook_url: Option<String>,
    pub batch_max: usize,
    pub timeout_secs: u64,
}

/// The actions that can be put under four-eyes approval. Pulling the kill switch is not
/// one of them: stopping every drill must never wait for a second person.
pub const FOUR_EYES_ACTIONS: [&str; 5] = [
    "drill.lossy",
    "correction",
    "killswitch.release",
    "runbook.execute",
    "rules.change",
];

impl Default for AuthConfig {
    fn default() -> AuthConfig {
        AuthConfig {
            token_lifetime_secs_default: 90 * 86_400,
            session_secs: 12 * 3600,
            requests_per_sec_per_token: 1000,
            logins_per_min_per_ip: 10,
        }
    }
}

impl Default for ApprovalsConfig {
    fn default() -> ApprovalsConfig {
        ApprovalsConfig {
            required: FOUR_EYES_ACTIONS.map(String::from).to_vec(),
            ttl_secs: 3600,
        }
    }
}

impl Default for AuditConfig {
    fn default() -> AuditConfig {
        AuditConfig {
            export_file: None,
            webhook_url: None,
            batch_max: 500,
            timeout_secs: 5,
        }
    }
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
    /// Roles that see those values in full through the API (webhooks stay masked).
    pub unmasked_roles: Vec<String>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            data_dir: PathBuf::from("steadfast-data"),
            listen: "127.0.0.1:7420".parse().expect("valid default address"),
            allow_plain_http: false,
            rules: None,
            limits: LimitsConfig::default(),
            engine: EngineConfig::default(),
            webhook: WebhookConfig::default(),
            masking: MaskingConfig::default(),
            tls: TlsConfig::default(),
            auth: AuthConfig::default(),
            approvals: ApprovalsConfig::default(),
            audit: AuditConfig::default(),
            drills: DrillsConfig::default(),
            chain: ChainConfig::default(),
            runbooks: Vec::new(),
            insight: crate::insight::InsightConfig::default(),
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
            unmasked_roles: vec![],
        }
    }
}

impl Config {
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("failed to read config {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("config {}: {e}", path.display()))
    }

    /// Checks what the types cannot: relations between options.
    pub fn validate(&self) -> anyhow::Result<()> {
        self.insight.validate()?;
        if self.chain.sample_percent > 100 {
            anyhow::bail!(
                "chain.sample_percent is {}: a percentage, 0 to 100",
                self.chain.sample_percent
            );
        }
        for a in &self.approvals.required {
            if a == "killswitch.pull" {
                anyhow::bail!("approvals.required: pulling the kill switch never needs approval");
            }
            if !FOUR_EYES_ACTIONS.contains(&a.as_str()) {
                anyhow::bail!(
                    "approvals.required: unknown action {a:?} (one of: {})",
                    FOUR_EYES_ACTIONS.join(", ")
                );
            }
        }
        let mut names = std::collections::BTreeSet::new();
        for t in &self.drills.corrections {
            if !names.insert(t.name.as_str()) {
                anyhow::bail!("drills.corrections: {:?} is named twice", t.name);
            }
            let url = reqwest::Url::parse(&t.url)
                .map_err(|e| anyhow::anyhow!("drills.corrections {:?}: url: {e}", t.name))?;
            if !matches!(url.scheme(), "http" | "https") {
                anyhow::bail!("drills.corrections {:?}: url must be http or https", t.name);
            }
            if !t.body.is_object() {
                anyhow::bail!(
                    "drills.corrections {:?}: body must be a JSON object (a table)",
                    t.name
                );
            }
        }
        crate::runbooks::validate(&self.runbooks)?;
        for r in &self.masking.unmasked_roles {
            if crate::auth::Role::parse(r).is_none() {
                anyhow::bail!("masking.unmasked_roles: unknown role {r:?}");
            }
        }
        if self.tls.cert.is_some() != self.tls.key.is_some() {
            anyhow::bail!("tls.cert and tls.key go together");
        }
        if self.tls.client_ca.is_some() && self.tls.cert.is_none() {
            anyhow::bail!("tls.client_ca needs tls.cert and tls.key");
        }
        if self.tls.ingest_requires_client_cert && self.tls.client_ca.is_none() {
            anyhow::bail!("tls.ingest_requires_client_cert needs tls.client_ca");
        }
        if self.tls.cert.is_none() && !self.listen.ip().is_loopback() && !self.allow_plain_http {
            anyhow::bail!(
                "refusing to serve plain HTTP on {}: configure [tls] cert and key, or set allow_plain_http = true (for a TLS-terminating proxy in front)",
                self.listen
            );
        }
        if self.auth.requests_per_sec_per_token == 0 || self.auth.logins_per_min_per_ip == 0 {
            anyhow::bail!("auth rate limits must be at least 1");
        }
        if self.limits.backlog_records_max < self.limits.batch_records_max {
            anyhow::bail!("limits.backlog_records_max must be at least limits.batch_records_max, or a full batch could never be admitted");
        }
        if self.limits.batch_records_max.saturating_mul(10) > self.limits.open_records_max {
            anyhow::bail!(
                "limits.batch_records_max must be at most a tenth of limits.open_records_max"
            );
        }
        Ok(())
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

    #[test]
    fn relations_between_options_are_checked() {
        let bad = |text: &str| {
            let cfg: super::Config = toml::from_str(text).unwrap();
            cfg.validate().unwrap_err().to_string()
        };
        assert!(bad("listen = \"0.0.0.0:7420\"").contains("plain HTTP"));
        assert!(
            bad("[approvals]\nrequired = [\"killswitch.pull\"]").contains("never needs approval")
        );
        assert!(bad("[approvals]\nrequired = [\"drill.lossless\"]").contains("unknown action"));
        assert!(bad("[tls]\ncert = \"c.pem\"").contains("go together"));
        let open: super::Config =
            toml::from_str("listen = \"0.0.0.0:7420\"\nallow_plain_http = true").unwrap();
        open.validate().unwrap();
        super::Config::default().validate().unwrap();
    }
}
