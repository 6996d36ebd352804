//! A simulated payment platform that Steadfast watches: real HTTP services on loopback
//! ports, each with its own SQLite database, calling each other with W3C trace context,
//! and reporting the fund records they write to Steadfast's ingest API.
//!
//! - [`traffic`]: the seeded population and its operations, and the seasonal rate (pure).
//! - [`driver`]: plays that traffic against the gateway over HTTP.
//! - [`services`]: gateway (cashier), payment core (and its standby), accounting (a
//!   double-entry ledger), billing (consumer credit), wallet (money-market balances),
//!   notification.
//! - [`svc`]: what every service shares (database, calls, admin API);
//!   [`faults`]: the failure modes; [`report`]: the ingest client;
//!   [`telemetry`]: OpenTelemetry traces and metrics.
//!
//! [`Platform::start`] starts every service; [`Platform::shutdown`] stops them in call
//! order and reports everything they wrote before returning.

pub mod driver;
pub mod faults;
pub mod report;
pub mod services;
pub mod svc;
pub mod telemetry;
pub mod traffic;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use report::{ReportStats, ReportTarget, Reporter};
use services::{accounting, billing, core, gateway, notification, wallet};
use svc::Svc;
use telemetry::{OtlpConfig, Telemetry};

/// The rule file that proves the platform's fund links.
pub const DEMO_RULES: &str = include_str!("../../../examples/demo-rules.toml");

#[derive(Clone, Debug)]
pub struct PlatformConfig {
    /// Where the services' databases live.
    pub data_dir: PathBuf,
    /// Steadfast's ingest API and a token allowed to ingest.
    pub report: ReportTarget,
    /// The token the services' admin routes require.
    pub admin_token: String,
    pub otlp: OtlpConfig,
    /// The URL the payment core uses for billing; billing itself when absent. A
    /// fault-injection proxy goes here.
    pub billing_upstream: Option<String>,
    /// Timeout of a call between services.
    pub call_timeout_ms: u64,
    /// How often the wallet reports balance snapshots of the accounts that moved.
    pub snapshot_interval_ms: u64,
    /// The gateway's port, the others following it in the order of [`Endpoints`]; 0 for
    /// any free ports.
    pub base_port: u16,
}

impl PlatformConfig {
    pub fn new(data_dir: PathBuf, report: ReportTarget, admin_token: String) -> PlatformConfig {
        PlatformConfig {
            data_dir,
            report,
            admin_token,
            otlp: OtlpConfig::default(),
            billing_upstream: None,
            call_timeout_ms: 2_000,
            snapshot_interval_ms: 1_000,
            base_port: 0,
        }
    }
}

/// Billing's correction API as a Steadfast correction target: the body re-books the bill
/// (`biz_id`, the hit's key) at its recorded original amount.
pub fn billing_correction(billing_url: &str) -> (String, serde_json::Value) {
    (
        format!("{}/v1/corrections", billing_url.trim_end_matches('/')),
        serde_json::json!({ "biz_id": "{key}", "amount": "{original}", "reason": "{reason}" }),
    )
}

/// The payment core → billing route a fault-injection proxy tampers with: method, path,
/// record kind, business-key field.
pub const BILLING_ROUTE: (&str, &str, &str, &str) = ("POST", "/v1/bills", "bill", "biz_id");

/// The services in call order; ports follow this order from `base_port`.
pub const SERVICES: [&str; 7] = [
    "gateway",
    "payment-core",
    "payment-core-standby",
    "accounting",
    "billing",
    "wallet",
    "notification",
];

/// Where each service listens.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Endpoints {
    pub gateway: String,
    pub payment_core: String,
    pub payment_core_standby: String,
    pub accounting: String,
    pub billing: String,
    pub wallet: String,
    pub notification: String,
}

impl Endpoints {
    pub fn list(&self) -> [(&'static str, &str); SERVICES.len()] {
        let urls = [
            &self.gateway,
            &self.payment_core,
            &self.payment_core_standby,
            &self.accounting,
            &self.billing,
            &self.wallet,
            &self.notification,
        ];
        std::array::from_fn(|i| (SERVICES[i], urls[i].as_str()))
    }
}

struct Running {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// The running platform.
pub struct Platform {
    pub endpoints: Endpoints,
    pub gateway: Arc<gateway::Gateway>,
    pub core: Arc<core::Core>,
    pub standby: Arc<core::Core>,
    pub accounting: Arc<accounting::Accounting>,
    pub billing: Arc<billing::Billing>,
    pub wallet: Arc<wallet::Wallet>,
    pub notification: Arc<notification::Notification>,
    /// Per service: its name and its reporter's counters.
    pub reports: Vec<(&'static str, Arc<ReportStats>)>,
    servers: Vec<Running>,
    stop_background: watch::Sender<bool>,
    background: Vec<JoinHandle<()>>,
    stop_reporters: watch::Sender<bool>,
    reporters: Vec<JoinHandle<()>>,
}

impl Platform {
    /// Starts every service. `wallets` opens the population's wallets with their opening
    /// balances (user id, currency, minor units).
    pub async fn start(
        cfg: PlatformConfig,
        wallets: &[(String, &'static str, i64)],
    ) -> anyhow::Result<Platform> {
        std::fs::create_dir_all(&cfg.data_dir)
            .with_context(|| format!("failed to create {}", cfg.data_dir.display()))?;
        let call_client = reqwest::Client::builder()
            .timeout(Duration::from_millis(cfg.call_timeout_ms.max(1)))
            .pool_max_idle_per_host(512)
            .build()?;
        // Ingest may hold a batch while Steadfast's backlog drains; give it time.
        let report_client = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()?;
        let (stop_reporters, reporters_rx) = watch::channel(false);
        let (stop_background, background_rx) = watch::channel(false);
        let mut reporters = Vec::new();
        let mut reports = Vec::new();
        let mut background = Vec::new();

        let mut listeners = Vec::new();
        for i in 0..SERVICES.len() {
            let port = if cfg.base_port == 0 {
                0
            } else {
                cfg.base_port + i as u16
            };
            let (l, a) = svc::bind(port)
                .await
                .with_context(|| format!("failed to listen on 127.0.0.1:{port}"))?;
            listeners.push((l, format!("http://{a}")));
        }
        let url = |i: usize| listeners[i].1.clone();
        let endpoints = Endpoints {
            gateway: url(0),
            payment_core: url(1),
            payment_core_standby: url(2),
            accounting: url(3),
            billing: url(4),
            wallet: url(5),
            notification: url(6),
        };

        let mut make = |name: &'static str, schema: &str| -> anyhow::Result<Arc<Svc>> {
            let telemetry = Arc::new(Telemetry::new(name, &cfg.otlp)?);
            let (reporter, task) = Reporter::start(
                name,
                cfg.report.clone(),
                report_client.clone(),
                reporters_rx.clone(),
            );
            reports.push((name, reporter.stats.clone()));
            reporters.push(task);
            let faults = faults::Faults::new(name == "billing");
            background.push(svc::fault_ticker(faults.clone(), background_rx.clone()));
            Ok(Arc::new(Svc::new(
                name,
                &cfg.data_dir,
                schema,
                svc::SvcParts {
                    telemetry,
                    faults,
                    reporter,
                    client: call_client.clone(),
                    admin_token: cfg.admin_token.clone(),
                },
            )?))
        };
        let upstreams = core::Upstreams {
            billing: cfg
                .billing_upstream
                .clone()
                .map(|u| u.trim_end_matches('/').to_string())
                .unwrap_or_else(|| endpoints.billing.clone()),
            accounting: endpoints.accounting.clone(),
            wallet: endpoints.wallet.clone(),
            notification: endpoints.notification.clone(),
        };
        let gateway = gateway::Gateway::new(
            make("gateway", gateway::SCHEMA)?,
            endpoints.payment_core.clone(),
            endpoints.payment_core_standby.clone(),
        );
        let (core, notifier) = core::Core::new(
            make("payment-core", core::SCHEMA)?,
            upstreams.clone(),
            background_rx.clone(),
        );
        let (standby, standby_notifier) = core::Core::new(
            make("payment-core-standby", core::SCHEMA)?,
            upstreams,
            background_rx.clone(),
        );
        let notifiers = [notifier, standby_notifier];
        let accounting = Arc::new(accounting::Accounting {
            svc: make("accounting", accounting::SCHEMA)?,
        });
        let billing = Arc::new(billing::Billing {
            svc: make("billing", billing::SCHEMA)?,
        });
        let wallet = Arc::new(wallet::Wallet {
            svc: make("wallet", wallet::SCHEMA)?,
        });
        let notification = Arc::new(notification::Notification {
            svc: make("notification", notification::SCHEMA)?,
        });
        background.extend(notifiers);
        {
            let w = wallet.clone();
            let seed = wallets.to_vec();
            tokio::task::spawn_blocking(move || w.seed(&seed))
                .await
                .context("wallet seeding failed")??;
        }
        let routers = [
            gateway.router(),
            core.router(),
            standby.router(),
            accounting.router(),
            billing.router(),
            wallet.router(),
            notification.router(),
        ];
        let mut servers = Vec::new();
        for ((listener, _), router) in listeners.into_iter().zip(routers) {
            let (stop, rx) = watch::channel(false);
            let task = svc::serve(listener, router, rx);
            servers.push(Running { stop, task });
        }
        {
            let w = wallet.clone();
            let mut stop = background_rx.clone();
            let every_ms = cfg.snapshot_interval_ms.max(10);
            background.push(tokio::spawn(async move {
                let mut every = tokio::time::interval(Duration::from_millis(every_ms));
                loop {
                    tokio::select! {
                        _ = every.tick() => {
                            if let Err(e) = w.sweep().await {
                                tracing::warn!(error = ?e, "wallet snapshot sweep failed");
                            }
                        }
                        _ = svc::stopped(&mut stop) => return,
                    }
                }
            }));
        }
        Ok(Platform {
            endpoints,
            gateway,
            core,
            standby,
            accounting,
            billing,
            wallet,
            notification,
            reports,
            servers,
            stop_background,
            background,
            stop_reporters,
            reporters,
        })
    }

    /// Every service, by name.
    pub fn services(&self) -> [&Arc<Svc>; 7] {
        [
            &self.gateway.svc,
            &self.core.svc,
            &self.standby.svc,
            &self.accounting.svc,
            &self.billing.svc,
            &self.wallet.svc,
            &self.notification.svc,
        ]
    }

    /// Records reported and acknowledged by Steadfast, over all services.
    pub fn records_acknowledged(&self) -> u64 {
        self.reports
            .iter()
            .map(|(_, s)| s.acknowledged.load(std::sync::atomic::Ordering::Relaxed))
            .sum()
    }

    /// Stops the services in call order (the gateway first, so every request in flight
    /// completes downstream; notification after the notifiers have drained), takes the
    /// last wallet snapshots, then reports everything still queued. Every record a service wrote has been acknowledged by Steadfast when
    /// this returns, unless Steadfast refused it (counted in `refused`).
    pub async fn shutdown(self) {
        let svcs: Vec<Arc<Svc>> = self.services().into_iter().cloned().collect();
        let mut servers = self.servers;
        // Notification is last in call order; it stays up while the notifiers drain.
        let notification = servers.pop();
        for s in servers {
            let _ = s.stop.send(true);
            let _ = s.task.await;
        }
        let _ = self.stop_background.send(true);
        for t in self.background {
            let _ = t.await;
        }
        if let Some(s) = notification {
            let _ = s.stop.send(true);
            let _ = s.task.await;
        }
        for s in &svcs {
            s.faults.stop();
        }
        // The last movements get a snapshot, so their intervals are checked.
        self.wallet.sweep_all().await;
        let _ = self.stop_reporters.send(true);
        for t in self.reporters {
            let _ = t.await;
        }
        for s in &svcs {
            s.telemetry.shutdown();
        }
    }
}
