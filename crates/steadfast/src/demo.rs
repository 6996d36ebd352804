//! `steadfast demo`: wires a server, the demo platform and its load driver together, shows
//! a live summary, and shuts everything down in order on Ctrl-C or at `--duration`.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use steadfast_demo::driver::{drive, DriverConfig, DriverStats};
use steadfast_demo::report::ReportTarget;
use steadfast_demo::telemetry::OtlpConfig;
use steadfast_demo::traffic::Traffic;
use steadfast_demo::{Platform, PlatformConfig, DEMO_RULES};
use steadfast_server::{Config, Server};
use steadfast_verify::parse_rules;

/// The file that marks a directory as the demo's own, so it may be wiped on the next run.
const MARKER: &str = ".steadfast-demo";

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Stop after this long (`90s`, `10m`, `2h`); runs until Ctrl-C when absent.
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// Average operations per second (payments, refunds, top-ups, withdrawals) over a
    /// simulated week; the actual rate follows the hour and the weekday.
    #[arg(long, default_value_t = 50.0)]
    rate: f64,
    /// Seed of the population and its traffic: the same seed, the same traffic.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Wall seconds per simulated day (1440: one simulated hour a minute).
    #[arg(long, default_value_t = 1440)]
    day_secs: u64,
    /// Working directory: the server's data and the services' databases. Wiped at start
    /// (only if an earlier demo created it).
    #[arg(long, default_value = "steadfast-demo")]
    data_dir: PathBuf,
    /// Users in the population (5 % of them VIP).
    #[arg(long, default_value_t = 10_000)]
    users: u32,
    /// The Steadfast API's address.
    #[arg(long, default_value = "127.0.0.1:7420")]
    listen: SocketAddr,
    /// The gateway's port; the other services take the next six (payment core, standby,
    /// accounting, billing, wallet, notification). Any free ports when 0.
    #[arg(long, default_value_t = 7430)]
    platform_port: u16,
    /// Send the payment core's billing calls here (a fault-injection proxy of your own)
    /// instead of through the built-in proxy.
    #[arg(long)]
    billing_upstream: Option<String>,
    /// Where the built-in fault-injection proxy between the payment cores and billing
    /// listens (lossy drills and availability faults go through it).
    #[arg(long, default_value = "127.0.0.1:7428")]
    proxy_listen: SocketAddr,
    /// Send billing calls straight to billing, with no proxy in between.
    #[arg(long)]
    no_proxy: bool,
    /// Export the services' traces and metrics over OTLP/HTTP to this base URL instead of
    /// the demo's own server (which then gets none; no token is sent there).
    #[arg(long)]
    otlp_endpoint: Option<String>,
    /// Export no telemetry (journeys then show nothing).
    #[arg(long)]
    no_otlp: bool,
    /// Rule file; the shipped demo rules when absent.
    #[arg(long)]
    rules: Option<PathBuf>,
}

/// Empties the demo directory if an earlier demo made it; refuses any other non-empty
/// directory, so a mistyped `--data-dir` never deletes someone's data.
fn prepare_dir(dir: &Path) -> anyhow::Result<()> {
    if dir.exists() {
        let empty = std::fs::read_dir(dir)
            .with_context(|| format!("failed to read {}", dir.display()))?
            .next()
            .is_none();
        if !empty {
            if !dir.join(MARKER).exists() {
                bail!(
                    "{} exists and was not made by `steadfast demo`; choose another --data-dir",
                    dir.display()
                );
            }
            std::fs::remove_dir_all(dir)
                .with_context(|| format!("failed to clear {}", dir.display()))?;
        }
    }
    std::fs::create_dir_all(dir).with_context(|| format!("failed to create {}", dir.display()))?;
    std::fs::write(
        dir.join(MARKER),
        "made by steadfast demo; wiped by the next run\n",
    )?;
    Ok(())
}

pub async fn run(a: DemoArgs) -> anyhow::Result<()> {
    if !(a.rate > 0.0 && a.rate <= 1_000_000.0) {
        bail!("--rate must be above 0 and at most 1000000");
    }
    if a.day_secs == 0 {
        bail!("--day-secs must be at least 1");
    }
    prepare_dir(&a.data_dir)?;
    let rules_text = match &a.rules {
        Some(p) => {
            std::fs::read_to_string(p).with_context(|| format!("failed to read {}", p.display()))?
        }
        None => DEMO_RULES.to_string(),
    };
    let rules = Arc::new(parse_rules(&rules_text).map_err(|e| anyhow::anyhow!("rules: {e}"))?);
    let server_dir = a.data_dir.join("steadfast");
    std::fs::create_dir_all(&server_dir)
        .with_context(|| format!("failed to create {}", server_dir.display()))?;
    let mut cfg = Config {
        data_dir: server_dir.clone(),
        listen: a.listen,
        ..Config::default()
    };
    // The server's address is taken first: the platform, which reports to it, starts
    // before it, so that the server knows billing's correction API.
    let bound = std::net::TcpListener::bind(a.listen)
        .with_context(|| format!("failed to listen on {}", a.listen))?;
    let base = format!("http://{}", bound.local_addr()?);
    // A session admin token for the person watching, and an ingest token, scoped to the
    // demo's sources, for the platform's reporters: they can write records and nothing else.
    let token = steadfast_server::bootstrap_admin_token(&server_dir, "demo")?;
    let sources: Vec<String> = rules.sources.iter().map(|s| s.name.clone()).collect();
    let (_, ingest_token) = steadfast_server::auth::create_local_token(
        &server_dir,
        &steadfast_server::auth::TokenSpec {
            subject: "demo-platform".into(),
            name: "demo reporters".into(),
            role: "ingest".into(),
            links: vec![],
            services: sources,
            site: None,
            expires_in_secs: Some(7 * 86_400),
            rate_per_sec: Some(50_000),
            body_bytes_max: None,
        },
        "demo",
        7 * 86_400,
    )?;

    let traffic = Traffic::new(a.seed, a.users, 50);
    let wallets = traffic.wallets();
    let mut pcfg = PlatformConfig::new(
        a.data_dir.join("platform"),
        ReportTarget {
            url: base.clone(),
            token: ingest_token,
        },
        token.clone(),
    );
    pcfg.base_port = a.platform_port;
    pcfg.billing_upstream = a.billing_upstream.clone();
    // The services' telemetry goes to the demo's own server by default, with the ingest
    // token, so that journeys link the platform's traces to its fund records.
    if !a.no_otlp {
        pcfg.otlp = match &a.otlp_endpoint {
            Some(e) => OtlpConfig {
                enabled: true,
                endpoint: e.clone(),
                ..OtlpConfig::default()
            },
            None => OtlpConfig {
                enabled: true,
                endpoint: base.clone(),
                metrics_interval_secs: 5,
                token: Some(pcfg.report.token.clone()),
            },
        };
    }
    let platform = Platform::start(pcfg, &wallets).await?;
    let (url, body) = steadfast_demo::billing_correction(&platform.endpoints.billing);
    cfg.drills
        .corrections
        .push(steadfast_server::CorrectionTarget::new(
            "billing", url, body,
        ));
    // A point a second (a simulated minute at the default speed); the services export
    // spans every second, so two seconds of lateness takes all of them.
    cfg.insight.interval_ms = 1_000;
    cfg.insight.lateness_ms = 2_000;
    cfg.insight.map_refresh_secs = 10;
    cfg.runbooks = demo_runbooks(&platform.endpoints.gateway, &server_dir.join("admin.token"));
    let server = match Server::start_on(cfg, rules.clone(), false, Some(bound)).await {
        Ok(s) => s,
        Err(e) => {
            platform.shutdown().await;
            return Err(e);
        }
    };
    let proxy = if a.no_proxy || a.billing_upstream.is_some() {
        None
    } else {
        match start_proxy(&a, &server_dir, &base, &platform).await {
            Ok(p) => Some(p),
            Err(e) => {
                platform.shutdown().await;
                server.shutdown().await;
                return Err(e);
            }
        }
    };

    eprintln!(
        "Steadfast is verifying the demo payment platform: {} rules (version {}), {} users, seed {}",
        rules.rules.len(),
        rules.version,
        a.users,
        a.seed
    );
    eprintln!("  dashboard:  {base}/ui/  (sign in with the admin token below)");
    eprintln!("  API:        {base}/api/v1  (OpenAPI: {base}/api/v1/openapi.json)");
    eprintln!("  metrics:    {base}/metrics");
    eprintln!("  admin token for this session (shown once): {token}");
    eprintln!(
        "              also in {} (owner-only); `steadfast breaks --data-dir {}` lists the breaks",
        server_dir.join("admin.token").display(),
        server_dir.display()
    );
    for (name, url) in platform.endpoints.list() {
        eprintln!("  {name:<21} {url}  (admin: {url}/admin/faults)");
    }
    if let Some(p) = &proxy {
        eprintln!(
            "  proxy (core→billing)  http://{}  (lossy drills: examples/drill-lossy-bills.toml; a second person approves with a drill-admin token of their own)",
            p.addr
        );
    }
    eprintln!(
        "  runbooks:             payment-core-failover, notifications-off  (`steadfast runbooks list --data-dir {}`; executing one needs a second person's approval)",
        server_dir.display()
    );
    eprintln!("Ctrl-C stops the traffic, reports everything written and shuts down.");

    let stats = Arc::new(DriverStats::default());
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let driver = tokio::spawn(drive(
        traffic,
        platform.endpoints.gateway.clone(),
        DriverConfig {
            rate: a.rate,
            day_secs: a.day_secs,
            duration: a.duration,
            ..DriverConfig::default()
        },
        stats.clone(),
        stop_rx,
    ));
    let mut summary = Summary::new(&base, &token);
    let mut driver = driver;
    let mut every = tokio::time::interval(Duration::from_secs(1));
    // One signal future for the whole run: a Ctrl-C that arrives while the summary is
    // being drawn must not be lost.
    let signal = crate::shutdown_signal();
    tokio::pin!(signal);
    let interrupted = loop {
        tokio::select! {
            _ = every.tick() => summary.show(&stats, &platform).await,
            _ = &mut driver => break false,
            _ = &mut signal => break true,
        }
    };
    if interrupted {
        summary.clear();
        eprintln!("stopping: finishing the requests in flight");
        let _ = stop.send(true);
        let _ = driver.await;
    }
    summary.clear();
    eprintln!("stopping the platform: reporting every record written");
    let reports = platform.reports.clone();
    if let Some(p) = proxy {
        p.stop().await;
    }
    platform.shutdown().await;
    let acknowledged: u64 = reports
        .iter()
        .map(|(_, r)| r.acknowledged.load(Ordering::Relaxed))
        .sum();
    // Let the engine verify what was just acknowledged before the last look.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let last = summary.status().await;
    eprintln!("stopping Steadfast: draining the pipeline and writing a checkpoint");
    server.shutdown().await;
    let ops = stats.issued.load(Ordering::Relaxed);
    eprintln!(
        "done: {ops} operations ({} succeeded, {} declined, {} errors); {acknowledged} records acknowledged, {} verified",
        stats.succeeded.load(Ordering::Relaxed),
        stats.declined.load(Ordering::Relaxed),
        stats.errors.load(Ordering::Relaxed),
        last.as_ref()
            .map_or(0, |s| s["records_seen"].as_u64().unwrap_or(0)),
    );
    if let Some(s) = last {
        eprintln!("breaks by status: {}", s["breaks"]);
    }
    eprintln!("data kept in {} until the next demo", a.data_dir.display());
    Ok(())
}

/// The demo's runbooks, both on the gateway's admin API (under the session's admin token,
/// which the platform's services take): failing over to the standby payment core, and
/// switching notifications off. Each is verified by the same call with `dry_run=true`,
/// which validates the change and makes none.
fn demo_runbooks(gateway: &str, token_file: &Path) -> Vec<steadfast_server::RunbookConfig> {
    use steadfast_server::{HttpCall, RunbookConfig};
    let call = |path: &str, body: serde_json::Value, dry_run: bool| HttpCall {
        body: Some(body),
        token_file: Some(token_file.to_path_buf()),
        expect_status: dry_run.then_some(200),
        ..HttpCall::new(
            "POST",
            format!(
                "{}{path}{}",
                gateway.trim_end_matches('/'),
                if dry_run { "?dry_run=true" } else { "" }
            ),
        )
    };
    let both = |path: &str, body: serde_json::Value| {
        (call(path, body.clone(), false), call(path, body, true))
    };
    let (failover, failover_dry) = both(
        "/admin/route",
        serde_json::json!({ "payment_core": "standby" }),
    );
    let (quiet, quiet_dry) = both(
        "/admin/flags",
        serde_json::json!({ "notifications": false }),
    );
    vec![
        RunbookConfig::new(
            "payment-core-failover",
            "Switch the gateway's payment traffic to the standby payment core",
            &["latency", "errors", "saturation", "overload"],
            &["payment-core"],
            failover,
            failover_dry,
        ),
        RunbookConfig::new(
            "notifications-off",
            "Switch the notifications feature flag off: payments go on without notifying",
            &["latency", "errors", "saturation", "overload"],
            &["notification"],
            quiet,
            quiet_dry,
        ),
    ]
}

/// The built-in proxy between both payment cores and billing, synced with the server under
/// a `proxy`-role token of its own.
async fn start_proxy(
    a: &DemoArgs,
    server_dir: &Path,
    base: &str,
    platform: &Platform,
) -> anyhow::Result<steadfast_proxy::Proxy> {
    let (_, token) = steadfast_server::auth::create_local_token(
        server_dir,
        &steadfast_server::auth::TokenSpec {
            expires_in_secs: Some(7 * 86_400),
            ..steadfast_server::auth::TokenSpec::new(
                "demo-billing-proxy",
                "demo proxy",
                steadfast_server::auth::Role::Proxy,
            )
        },
        "demo",
        7 * 86_400,
    )?;
    let (method, path, kind, key) = steadfast_demo::BILLING_ROUTE;
    let proxy = steadfast_proxy::Proxy::start(steadfast_proxy::ProxyConfig {
        name: "billing".into(),
        listen: a.proxy_listen,
        upstream: platform.endpoints.billing.clone(),
        data_dir: a.data_dir.join("proxy"),
        controller: Some(steadfast_proxy::ControllerConfig::with_token(base, token)),
        routes: vec![steadfast_proxy::Route::request(method, path, kind, key)],
        ..steadfast_proxy::ProxyConfig::default()
    })
    .await?;
    let url = format!("http://{}", proxy.addr);
    platform.core.set_billing_upstream(&url);
    platform.standby.set_billing_upstream(&url);
    Ok(proxy)
}

/// The live line: operations, records, open state, breaks, detection latency.
struct Summary {
    client: reqwest::Client,
    url: String,
    token: String,
    bar: Option<indicatif::ProgressBar>,
    last: Option<(Instant, u64, u64)>,
    printed: Instant,
}

impl Summary {
    fn new(base: &str, token: &str) -> Summary {
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = indicatif::ProgressBar::new_spinner();
            b.enable_steady_tick(Duration::from_millis(200));
            b
        });
        Summary {
            client: reqwest::Client::new(),
            url: format!("{base}/api/v1/status"),
            token: token.to_string(),
            bar,
            last: None,
            printed: Instant::now(),
        }
    }

    async fn status(&self) -> Option<serde_json::Value> {
        let r = self
            .client
            .get(&self.url)
            .bearer_auth(&self.token)
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .ok()?;
        r.json().await.ok()
    }

    async fn show(&mut self, stats: &DriverStats, platform: &Platform) {
        let Some(s) = self.status().await else { return };
        let now = Instant::now();
        let seen = s["records_seen"].as_u64().unwrap_or(0);
        let ops = stats.completed();
        let (ops_rate, rec_rate) = match self.last {
            Some((t, o, r)) => {
                let dt = (now - t).as_secs_f64().max(1e-3);
                ((ops - o) as f64 / dt, (seen.saturating_sub(r)) as f64 / dt)
            }
            None => (0.0, 0.0),
        };
        self.last = Some((now, ops, seen));
        let sim = chrono::DateTime::from_timestamp_millis(stats.sim_ms.load(Ordering::Relaxed))
            .map(|t| t.format("%a %H:%M").to_string())
            .unwrap_or_default();
        let open_breaks = s["breaks"]["open"].as_u64().unwrap_or(0);
        let d = &s["detection_latency_ms"];
        let detection = if d["breaks"].as_u64().unwrap_or(0) == 0 {
            "-".to_string()
        } else {
            format!("p50 {} ms, p99 {} ms", d["p50"], d["p99"])
        };
        let line = format!(
            "[{sim}] {ops_rate:.0} ops/s ({} errors) | {rec_rate:.0} records/s, {seen} verified, {} acknowledged | open {} | breaks open {open_breaks} | detection {detection}",
            stats.errors.load(Ordering::Relaxed),
            platform.records_acknowledged(),
            s["open_records_total"],
        );
        match &self.bar {
            Some(b) => b.set_message(line),
            None => {
                // Not a terminal (a log file): a line every ten seconds.
                if now - self.printed >= Duration::from_secs(10) {
                    eprintln!("{line}");
                    self.printed = now;
                }
            }
        }
    }

    fn clear(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}
