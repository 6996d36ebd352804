//! The web dashboard's pages, timed on the server with the demo's data after an hour of
//! its traffic (compressed: the hour's operations offered faster): every page, and the
//! detail pages of a break, a drill, a service, a journey and an incident.
//!
//! The data is the demo's: the platform exports its traces and metrics over OTLP, the
//! detectors run at the demo's one-second interval, a corrupted bill writer raises
//! amount breaks, a lossless drill runs, and a slow database raises an incident near the
//! end (and is cleared once it has). Each page's time is what the server reports in
//! `Server-Timing` (gathering the data from its own API and rendering), read over many
//! requests.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use steadfast_demo::driver::{drive, DriverConfig, DriverStats};
use steadfast_demo::report::ReportTarget;
use steadfast_demo::traffic::Traffic;
use steadfast_demo::{Platform, PlatformConfig, DEMO_RULES};
use steadfast_server::{Config, Server};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Simulated seconds of traffic (an hour).
    #[arg(long, default_value_t = 3600)]
    sim_secs: u64,
    /// The demo's own rate, operations per second: the hour holds this many per second.
    #[arg(long, default_value_t = 50.0)]
    demo_rate: f64,
    /// Operations offered per second while replaying the hour.
    #[arg(long, default_value_t = 800.0)]
    rate: f64,
    /// Requests timed per page.
    #[arg(long, default_value_t = 20)]
    reps: usize,
    #[arg(long, default_value_t = 10_000)]
    users: u32,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Keep the server up this many seconds after timing, to look at the pages (its
    /// address and token are printed).
    #[arg(long, default_value_t = 0)]
    hold_secs: u64,
}

/// The target for every page.
const TARGET_MS: f64 = 300.0;

#[derive(Serialize)]
pub struct PageTime {
    pub page: String,
    pub path: String,
    pub status: u16,
    pub bytes: usize,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub max_ms: f64,
    pub meets_target: bool,
}

#[derive(Serialize)]
pub struct Report {
    pub bench: &'static str,
    pub profile: &'static str,
    pub operations: u64,
    pub offered_ops_per_sec: f64,
    pub replay_secs: f64,
    pub records: u64,
    pub spans_and_rows: u64,
    pub breaks: u64,
    pub target_ms: f64,
    pub pages: Vec<PageTime>,
}

impl Report {
    pub fn table(&self) -> String {
        let mut out = format!(
            "dashboard pages ({}), demo data: {} operations ({} records, {} telemetry rows, {} breaks) replayed in {:.0} s\n",
            self.profile, self.operations, self.records, self.spans_and_rows, self.breaks, self.replay_secs
        );
        out += &format!(
            "{:<22} {:>6} {:>9} {:>9} {:>9} {:>9}  target {} ms\n",
            "page", "status", "bytes", "p50 ms", "p95 ms", "max ms", self.target_ms
        );
        for p in &self.pages {
            out += &format!(
                "{:<22} {:>6} {:>9} {:>9.1} {:>9.1} {:>9.1}  {}\n",
                p.page,
                p.status,
                p.bytes,
                p.p50_ms,
                p.p95_ms,
                p.max_ms,
                if p.meets_target { "met" } else { "MISSED" }
            );
        }
        out
    }
}

pub fn run(a: &Args) -> Result<Report> {
    if !(a.rate > 0.0 && a.demo_rate > 0.0) || a.reps == 0 {
        bail!("--rate and --demo-rate must be above 0 and --reps at least 1");
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run_async(a))
}

async fn api(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    path: &str,
) -> Result<serde_json::Value> {
    Ok(http
        .get(format!("{base}{path}"))
        .bearer_auth(token)
        .send()
        .await?
        .json()
        .await?)
}

async fn post(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    body: serde_json::Value,
) -> Result<serde_json::Value> {
    let r = http.post(url).bearer_auth(token).json(&body).send().await?;
    let status = r.status();
    let v: serde_json::Value = r.json().await.unwrap_or_default();
    if !status.is_success() {
        bail!("POST {url}: {status} {v}");
    }
    Ok(v)
}

async fn run_async(a: &Args) -> Result<Report> {
    let dir = tempfile::tempdir()?;
    let mut cfg = Config {
        data_dir: dir.path().join("steadfast"),
        listen: "127.0.0.1:0".parse()?,
        ..Config::default()
    };
    // As `steadfast demo` sets them.
    cfg.insight.interval_ms = 1_000;
    cfg.insight.lateness_ms = 2_000;
    let bound = std::net::TcpListener::bind("127.0.0.1:0")?;
    let base = format!("http://{}", bound.local_addr()?);
    std::fs::create_dir_all(&cfg.data_dir)?;
    let token = steadfast_server::bootstrap_admin_token(&cfg.data_dir, "bench")?;
    let traffic = Traffic::new(a.seed, a.users, 50);
    let wallets = traffic.wallets();
    let mut pcfg = PlatformConfig::new(
        dir.path().join("platform"),
        ReportTarget {
            url: base.clone(),
            token: token.clone(),
        },
        token.clone(),
    );
    pcfg.otlp = steadfast_demo::telemetry::OtlpConfig {
        enabled: true,
        endpoint: base.clone(),
        metrics_interval_secs: 10,
        token: Some(token.clone()),
    };
    let platform = Platform::start(pcfg, &wallets)
        .await
        .context("starting the platform")?;
    let (url, body) = steadfast_demo::billing_correction(&platform.endpoints.billing);
    cfg.drills
        .corrections
        .push(steadfast_server::CorrectionTarget::new(
            "billing", url, body,
        ));
    let rules =
        Arc::new(steadfast_verify::parse_rules(DEMO_RULES).map_err(|e| anyhow::anyhow!("{e}"))?);
    let server = Server::start_on(cfg, rules, false, Some(bound)).await?;
    // A hung server must end the benchmark with an error, not keep it waiting.
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;

    let ops = (a.demo_rate * a.sim_secs as f64) as u64;
    let stats = Arc::new(DriverStats::default());
    let (_stop, rx) = tokio::sync::watch::channel(false);
    let started = Instant::now();
    let driver = tokio::spawn(drive(
        traffic,
        platform.endpoints.gateway.clone(),
        DriverConfig {
            rate: a.rate,
            seasonal: false,
            ops_max: Some(ops),
            in_flight_max: 256,
            ..DriverConfig::default()
        },
        stats.clone(),
        rx,
    ));
    let replay = Duration::from_secs_f64(ops as f64 / a.rate);
    eprintln!(
        "replaying {ops} operations (an hour at {} ops/s) at {} ops/s: about {:.0} s",
        a.demo_rate,
        a.rate,
        replay.as_secs_f64()
    );
    let billing = platform.endpoints.billing.clone();
    let accounting = platform.endpoints.accounting.clone();
    let mut corrupted = false;
    let mut drilled = false;
    let mut slowed = false;
    let mut slowed_at: Option<(Instant, serde_json::Value)> = None;
    while !driver.is_finished() {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let t = started.elapsed();
        let frac = t.as_secs_f64() / replay.as_secs_f64();
        if frac > 0.3 && !corrupted {
            // Two seconds of corrupted bills: the hour's amount breaks.
            post(
                &http,
                &format!("{billing}/admin/faults"),
                &token,
                serde_json::json!({"corrupt_amount_minor": 1}),
            )
            .await?;
            tokio::time::sleep(Duration::from_secs(2)).await;
            post(
                &http,
                &format!("{billing}/admin/faults"),
                &token,
                serde_json::json!({"corrupt_amount_minor": 0}),
            )
            .await?;
            corrupted = true;
        }
        if frac > 0.5 && !drilled {
            let spec = include_str!("../../../examples/drill-pay-to-bill.toml");
            let d = post(
                &http,
                &format!("{base}/api/v1/drills"),
                &token,
                serde_json::json!({"spec": spec}),
            )
            .await?;
            let id = d["id"].as_str().context("a drill id")?.to_string();
            post(
                &http,
                &format!("{base}/api/v1/drills/{id}/start"),
                &token,
                serde_json::json!({}),
            )
            .await?;
            drilled = true;
        }
        if frac > 0.85 && !slowed {
            post(
                &http,
                &format!("{accounting}/admin/faults"),
                &token,
                serde_json::json!({"slow_db_ms": 150}),
            )
            .await?;
            slowed = true;
            let newest = api(&http, &base, &token, "/api/v1/incidents?limit=1").await?;
            slowed_at = Some((Instant::now(), newest[0]["id"].clone()));
        }
        // The slow database burns real CPU per query: once the incident is raised (or
        // after 30 s) it is cleared, so the rest of the hour replays at speed.
        if let Some((at, before)) = &slowed_at {
            let newest = api(&http, &base, &token, "/api/v1/incidents?limit=1").await?;
            let raised = !newest[0]["id"].is_null() && newest[0]["id"] != *before;
            if (raised && at.elapsed() > Duration::from_secs(10))
                || at.elapsed() > Duration::from_secs(30)
            {
                post(
                    &http,
                    &format!("{accounting}/admin/faults"),
                    &token,
                    serde_json::json!({"slow_db_ms": 0}),
                )
                .await?;
                slowed_at = None;
            }
        }
        if t.as_secs() % 15 == 0 {
            eprintln!(
                "{:>4} s: {} operations answered",
                t.as_secs(),
                stats.completed()
            );
        }
    }
    let replay_secs = started.elapsed().as_secs_f64();
    // Let the last intervals and deadlines close.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let status = api(&http, &base, &token, "/api/v1/status").await?;
    let breaks: u64 = status["breaks"]
        .as_object()
        .map(|m| m.values().filter_map(|v| v.as_u64()).sum())
        .unwrap_or(0);

    // The detail pages: a break, the drill, a service, a user, an incident.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64;
    let mut pages: Vec<(String, String)> = steadfast_server::dashboard::PAGES
        .iter()
        .map(|(p, n)| (n.to_string(), p.to_string()))
        .collect();
    pages.push(("services (1 h)".into(), "/ui/services?range=1h".into()));
    let first = |v: &serde_json::Value, key: &str| {
        v.as_array().and_then(|a| a.first()).map(|x| x[key].clone())
    };
    if let Some(id) = first(
        &api(&http, &base, &token, "/api/v1/breaks?limit=1").await?,
        "id",
    ) {
        pages.push(("break".into(), format!("/ui/breaks/{id}")));
    }
    if let Some(id) = first(&api(&http, &base, &token, "/api/v1/drills").await?, "id") {
        pages.push((
            "drill".into(),
            format!("/ui/drills/{}", id.as_str().unwrap_or("")),
        ));
    }
    pages.push((
        "service accounting".into(),
        "/ui/services/accounting?range=1h".into(),
    ));
    let users = api(
        &http,
        &base,
        &token,
        &format!("/api/v1/journeys/users?since_ms={}", now - 3_600_000),
    )
    .await?;
    if let Some(u) = first(&users, "user") {
        pages.push((
            "journey".into(),
            format!(
                "/ui/journeys?user={}",
                steadfast_web::fmt::enc(u.as_str().unwrap_or(""))
            ),
        ));
    }
    if let Some(id) = first(&api(&http, &base, &token, "/api/v1/incidents").await?, "id") {
        pages.push(("incident".into(), format!("/ui/incidents/{id}")));
    } else {
        eprintln!("no incident was raised: the incident page is not timed");
    }

    let mut out = Vec::new();
    for (name, path) in pages {
        let mut times = Vec::with_capacity(a.reps);
        let (mut status, mut bytes) = (0, 0);
        for _ in 0..a.reps {
            let r = http
                .get(format!("{base}{path}"))
                .header("cookie", format!("steadfast_session={token}"))
                .send()
                .await?;
            status = r.status().as_u16();
            let timing = r
                .headers()
                .get("server-timing")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("page;dur="))
                .and_then(|v| v.parse::<f64>().ok())
                .context("a page without Server-Timing")?;
            bytes = r.bytes().await?.len();
            times.push(timing);
        }
        times.sort_by(f64::total_cmp);
        let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
        let p = PageTime {
            page: name,
            path,
            status,
            bytes,
            p50_ms: at(0.5),
            p95_ms: at(0.95),
            max_ms: *times.last().unwrap(),
            meets_target: at(0.95) < TARGET_MS && status == 200,
        };
        eprintln!(
            "{:<22} p50 {:>7.1} ms  p95 {:>7.1} ms  ({} bytes, {})",
            p.page, p.p50_ms, p.p95_ms, p.bytes, p.status
        );
        out.push(p);
    }
    let records = status["records_seen"].as_u64().unwrap_or(0);
    let rows = server_rows(&http, &base).await.unwrap_or(0);
    if a.hold_secs > 0 {
        eprintln!(
            "holding for {} s: {base}/ui/ (token in {})",
            a.hold_secs,
            dir.path().join("token").display()
        );
        std::fs::write(dir.path().join("token"), &token)?;
        tokio::time::sleep(Duration::from_secs(a.hold_secs)).await;
    }
    platform.shutdown().await;
    server.shutdown().await;
    Ok(Report {
        bench: "dashboard",
        profile: if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        operations: stats.completed(),
        offered_ops_per_sec: a.rate,
        replay_secs,
        records,
        spans_and_rows: rows,
        breaks,
        target_ms: TARGET_MS,
        pages: out,
    })
}

/// Telemetry rows stored, from the Prometheus counter.
async fn server_rows(http: &reqwest::Client, base: &str) -> Result<u64> {
    let text = http
        .get(format!("{base}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    Ok(text
        .lines()
        .find(|l| l.starts_with("steadfast_chain_rows_total"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0, |v| v as u64))
}
