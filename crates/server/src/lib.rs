//! Steadfast's server: the edges around the pure verification engine.
//!
//! - [`pipeline`]: WAL committer → engine → break store threads, recovery, checkpoints.
//! - [`api`]: the HTTP API (axum), its route table with an access decision per route,
//!   the guard that enforces it and audits state changes, the OpenAPI document (utoipa).
//! - [`auth`]: roles, permissions, tokens, passwords, scopes, rate limits.
//! - `control_api`: sessions, tokens, users, four-eyes approvals, kill switch, audit routes.
//! - [`tls`]: the plain and rustls listeners.
//! - [`runbooks`]: pre-verified runbooks: config, dry-run verification, execution under
//!   four-eyes, and [`runbooks::suggest`] for incidents.
//! - [`webhook`]: delivery of new breaks from the durable outbox.
//! - [`dashboard`]: the web dashboard's edge: cookie sign-in, pages fed by in-process API
//!   calls, rendered by `steadfast_web`.
//! - [`metrics`]: Prometheus metrics.
//!
//! [`Server::start`] wires them together; the binary only parses arguments.

pub mod api;
mod audit_export;
pub mod auth;
mod chain_api;
mod config;
mod control_api;
pub mod dashboard;
pub mod drills;
pub mod insight;
mod lossy;
pub mod metrics;
mod npm;
mod otlp_grpc;
pub mod pipeline;
mod rca;
mod rum_api;
pub mod runbooks;
pub mod tls;
pub mod view;
mod webhook;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use steadfast_verify::RuleSet;

pub use auth::bootstrap_admin_token;
pub use config::{
    ApprovalsConfig, AuditConfig, AuthConfig, ChainConfig, Config, CorrectionTarget, DrillsConfig,
    EngineConfig, LimitsConfig, MaskingConfig, TlsConfig, WebhookConfig, FOUR_EYES_ACTIONS,
};
pub use control_api::{create_local_user, killswitch_state, KillSwitch, NewUser};
pub use runbooks::{HeaderSource, HttpCall, RunbookConfig};

/// The rule file shipped with Steadfast, used when none is configured.
pub const DEFAULT_RULES: &str = include_str!("../../../examples/rules.toml");

/// How often drill schedules are checked; a cron time fires within this of being due.
const SCHEDULER_TICK_MS: u64 = 500;

/// A running server.
pub struct Server {
    pub addr: SocketAddr,
    /// The OTLP/gRPC and OTLP/HTTP listeners, when configured (`[chain]`).
    pub otlp_grpc_addr: Option<SocketAddr>,
    pub otlp_http_addr: Option<SocketAddr>,
    /// The NetFlow/IPFIX collector's UDP address, when configured.
    pub netflow_addr: Option<SocketAddr>,
    /// Whether the listener speaks TLS.
    pub tls: bool,
    pipeline: Arc<pipeline::Pipeline>,
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Server {
    /// Recovers from the data directory, binds the listener and starts serving.
    pub async fn start(
        cfg: Config,
        rules: Arc<RuleSet>,
        accept_new_rules: bool,
    ) -> anyhow::Result<Server> {
        Server::start_on(cfg, rules, accept_new_rules, None).await
    }

    /// Starts on a listener bound beforehand (its address is then known before the server
    /// runs, e.g. to tell services that start first where to report); `cfg.listen` is
    /// checked but not bound.
    pub async fn start_on(
        cfg: Config,
        rules: Arc<RuleSet>,
        accept_new_rules: bool,
        bound: Option<std::net::TcpListener>,
    ) -> anyhow::Result<Server> {
        cfg.validate()?;
        // Certificates are read before recovery so that a bad one fails fast.
        let tls_config = match (&cfg.tls.cert, &cfg.tls.key) {
            (Some(cert), Some(key)) => {
                Some(tls::server_config(cert, key, cfg.tls.client_ca.as_deref())?)
            }
            _ => None,
        };
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
        let mut control =
            steadfast_store::ControlStore::open(&cfg.data_dir).with_context(|| {
                format!(
                    "failed to open the control store in {}",
                    cfg.data_dir.display()
                )
            })?;
        drills::end_orphans(&mut control, pipeline::wall_ms());
        let chain_dir = cfg.data_dir.join("chain");
        let chain = tokio::task::spawn_blocking(move || {
            steadfast_store::chain::ChainStore::open(&chain_dir)
        })
        .await
        .context("the data chain recovery task failed")?
        .context("failed to open the data chain store")?;
        // The live service map and user list vouch only for what comes after this.
        let stored_until = chain.newest_span_ns();
        let listener = match bound {
            Some(l) => {
                l.set_nonblocking(true)?;
                tokio::net::TcpListener::from_std(l)?
            }
            None => tokio::net::TcpListener::bind(cfg.listen)
                .await
                .with_context(|| format!("failed to listen on {}", cfg.listen))?,
        };
        let addr = listener.local_addr()?;
        let state = Arc::new(api::AppState {
            pipeline: pipeline.clone(),
            metrics,
            cfg: cfg.clone(),
            control: Arc::new(std::sync::Mutex::new(control)),
            auth: auth::Auth::new(
                cfg.auth.requests_per_sec_per_token,
                cfg.auth.logins_per_min_per_ip,
            ),
            samples: drills::Samples::default(),
            drills: drills::Registry::default(),
            proxies: lossy::ProxyHub::default(),
            chain: std::sync::Arc::new(chain),
            runbooks: runbooks::Runbooks::default(),
            insight: insight::Insight::open(cfg.insight.clone(), &cfg.data_dir)?,
            graph: std::sync::Mutex::new(steadfast_chain::graph::ServiceGraph::new(stored_until)),
            users: std::sync::Mutex::new(steadfast_chain::users::UserBook::new(stored_until)),
        });
        let router = api::router(state.clone());
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let mut tasks = Vec::new();
        let tls = tls_config.is_some();
        tasks.push(serve(
            listener,
            router.clone(),
            tls_config.clone(),
            stop_rx.clone(),
        )?);
        // The OTLP ports serve the same router (same guard, limits and TLS): gRPC on
        // one, HTTP on the other, as collectors and SDKs expect by default.
        let mut otlp_addrs = [None, None];
        for (i, want) in [cfg.chain.otlp_grpc_listen, cfg.chain.otlp_http_listen]
            .into_iter()
            .enumerate()
        {
            if let Some(a) = want {
                let l = tokio::net::TcpListener::bind(a)
                    .await
                    .with_context(|| format!("failed to listen for OTLP on {a}"))?;
                otlp_addrs[i] = Some(l.local_addr()?);
                tasks.push(serve(
                    l,
                    router.clone(),
                    tls_config.clone(),
                    stop_rx.clone(),
                )?);
            }
        }
        let mut netflow_addr = None;
        if let Some(a) = cfg.chain.netflow_listen {
            let socket = tokio::net::UdpSocket::bind(a)
                .await
                .with_context(|| format!("failed to listen for flows on udp {a}"))?;
            netflow_addr = Some(socket.local_addr()?);
            tasks.push(tokio::spawn(npm::collect_flows(
                state.clone(),
                socket,
                stop_rx.clone(),
            )));
        }
        for path in &cfg.chain.nginx_logs {
            tasks.push(tokio::spawn(npm::tail(
                state.clone(),
                path.clone(),
                stop_rx.clone(),
            )));
        }
        tasks.push(tokio::spawn(chain_api::maintain(
            state.clone(),
            stop_rx.clone(),
        )));
        tasks.push(tokio::spawn(runbooks::verify_periodically(
            state.clone(),
            stop_rx.clone(),
        )));
        if cfg.insight.enabled {
            tasks.push(tokio::spawn(insight::run(state.clone(), stop_rx.clone())));
        }
        if let Some(url) = cfg.insight.webhook_url.clone() {
            tasks.push(tokio::spawn(insight::deliver(
                state.clone(),
                url,
                stop_rx.clone(),
            )));
        }
        let scheduler = state.clone();
        let mut rx = stop_rx.clone();
        tasks.push(tokio::spawn(async move {
            let mut interval = tokio::time::interval(Duration::from_millis(SCHEDULER_TICK_MS));
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tokio::select! {
                    _ = interval.tick() => drills::tick_schedules(&scheduler).await,
                    _ = rx.changed() => return,
                }
            }
        }));
        if let Some(path) = cfg.audit.export_file.clone() {
            tasks.push(tokio::spawn(audit_export::run(
                state.clone(),
                audit_export::Sink::File(path),
                stop_rx.clone(),
            )));
        }
        if let Some(url) = cfg.audit.webhook_url.clone() {
            tasks.push(tokio::spawn(audit_export::run(
                state.clone(),
                audit_export::Sink::Webhook(url),
                stop_rx.clone(),
            )));
        }
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
            otlp_grpc_addr: otlp_addrs[0],
            otlp_http_addr: otlp_addrs[1],
            netflow_addr,
            tls,
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

/// Serves `router` on `listener` (TLS when configured) until `stop` changes.
fn serve(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    tls_config: Option<Arc<rustls::ServerConfig>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let shutdown = async move {
        let _ = stop.changed().await;
    };
    let service = router.into_make_service_with_connect_info::<tls::ConnInfo>();
    Ok(match tls_config {
        Some(config) => {
            let listener = tls::TlsListener::new(listener, config)?;
            tokio::spawn(async move {
                if let Err(e) = axum::serve(listener, service)
                    .with_graceful_shutdown(shutdown)
                    .await
                {
                    tracing::error!(error = %e, "HTTPS server failed");
                }
            })
        }
        None => {
            let listener = tls::PlainListener(listener);
            tokio::spawn(async move {
                if let Err(e) = axum::serve(listener, service)
                    .with_graceful_shutdown(shutdown)
                    .await
                {
                    tracing::error!(error = %e, "HTTP server failed");
                }
            })
        }
    })
}
