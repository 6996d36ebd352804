//! Steadfast's server: the edges around the pure verification engine.
//!
//! - [`pipeline`]: WAL committer → engine → break store threads, recovery, checkpoints.
//! - [`api`]: the HTTP API (axum), its route table and OpenAPI document (utoipa).
//! - [`webhook`]: delivery of new breaks from the durable outbox.
//! - [`metrics`]: Prometheus metrics.
//!
//! [`Server::start`] wires them together; the binary only parses arguments.

pub mod api;
mod config;
pub mod metrics;
pub mod pipeline;
pub mod view;
mod webhook;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use steadfast_verify::RuleSet;

pub use config::{Config, EngineConfig, LimitsConfig, MaskingConfig, WebhookConfig};

/// The rule file shipped with Steadfast, used when none is configured.
pub const DEFAULT_RULES: &str = include_str!("../../../examples/rules.toml");

/// A running server.
pub struct Server {
    pub addr: SocketAddr,
    pub admin_token: String,
    pipeline: Arc<pipeline::Pipeline>,
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Reads the admin token from the data directory, creating one (owner-only) if absent.
/// Returns the token and whether it was just created.
pub fn admin_token(data_dir: &Path) -> anyhow::Result<(String, bool)> {
    let path = data_dir.join("admin.token");
    if let Ok(t) = std::fs::read_to_string(&path) {
        let t = t.trim().to_string();
        if t.len() >= 32 {
            return Ok((t, false));
        }
    }
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    std::fs::create_dir_all(data_dir)?;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    use std::io::Write;
    let mut f = opts
        .open(&path)
        .with_context(|| format!("failed to write {}", path.display()))?;
    f.write_all(token.as_bytes())?;
    f.sync_all()?;
    Ok((token, true))
}

impl Server {
    /// Recovers from the data directory, binds the listener and starts serving.
    pub async fn start(
        cfg: Config,
        rules: Arc<RuleSet>,
        accept_new_rules: bool,
    ) -> anyhow::Result<Server> {
        if !cfg.listen.ip().is_loopback() {
            bail!(
                "refusing to serve plain HTTP on {}: only loopback addresses are allowed until TLS is configured",
                cfg.listen
            );
        }
        if cfg.limits.backlog_records_max < cfg.limits.batch_records_max {
            bail!("limits.backlog_records_max must be at least limits.batch_records_max, or a full batch could never be admitted");
        }
        if cfg.limits.batch_records_max.saturating_mul(10) > cfg.limits.open_records_max {
            bail!("limits.batch_records_max must be at most a tenth of limits.open_records_max");
        }
        let metrics = Arc::new(metrics::Metrics::new());
        let pcfg = pipeline::PipelineConfig {
            data_dir: cfg.data_dir.clone(),
            limits: cfg.engine_limits(),
            wal_queue_batches_max: cfg.limits.wal_queue_batches_max,
            checkpoint_every_records: cfg.engine.checkpoint_every_records,
            checkpoint_every_secs: cfg.engine.checkpoint_every_secs,
            wal_segments_kept: cfg.engine.wal_segments_kept,
            backlog_records_max: cfg.limits.backlog_records_max,
            backlog_wait_ms: cfg.limits.backlog_wait_ms,
            webhooks: cfg.webhook.url.is_some(),
            accept_new_rules,
        };
        let m = metrics.clone();
        let pipeline = Arc::new(
            tokio::task::spawn_blocking(move || pipeline::Pipeline::start(pcfg, rules, m))
                .await
                .context("recovery task failed")??,
        );
        let (admin_token, _) = admin_token(&cfg.data_dir)?;
        let listener = tokio::net::TcpListener::bind(cfg.listen)
            .await
            .with_context(|| format!("failed to listen on {}", cfg.listen))?;
        let addr = listener.local_addr()?;
        let state = Arc::new(api::AppState {
            pipeline: pipeline.clone(),
            metrics,
            cfg: cfg.clone(),
            admin_token: admin_token.clone(),
        });
        let router = api::router(state.clone());
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let mut tasks = Vec::new();
        let mut rx = stop_rx.clone();
        tasks.push(tokio::spawn(async move {
            let shutdown = async move {
                let _ = rx.changed().await;
            };
            if let Err(e) = axum::serve(listener, router)
                .with_graceful_shutdown(shutdown)
                .await
            {
                tracing::error!(error = %e, "HTTP server failed");
            }
        }));
        let ticker = pipeline.clone();
        let tick_ms = cfg.engine.tick_ms.max(1);
        let mut rx = stop_rx.clone();
        tasks.push(tokio::spawn(async move {
            let mut interval = tokio::time::interval(Duration::from_millis(tick_ms));
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tokio::select! {
                    _ = interval.tick() => ticker.tick(pipeline::wall_ms()),
                    _ = rx.changed() => return,
                }
            }
        }));
        if let Some(url) = cfg.webhook.url.clone() {
            tasks.push(tokio::spawn(webhook::run(state, url, stop_rx.clone())));
        }
        Ok(Server {
            addr,
            admin_token,
            pipeline,
            stop,
            tasks,
        })
    }

    /// Stops listening, lets in-flight requests finish, drains the pipeline and writes a
    /// final checkpoint. Every acknowledged record is durable before this returns.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        let p = self.pipeline.clone();
        let _ = tokio::task::spawn_blocking(move || p.shutdown()).await;
    }
}
