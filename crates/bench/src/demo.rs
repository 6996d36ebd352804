//! The demo platform under load while Steadfast verifies it, all in this process: how many
//! payments per second the platform completes, how many records per second Steadfast
//! verifies, how far verification lags the acknowledgements, and whether any break was
//! raised (none should be: no fault is injected).

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Serialize;
use steadfast_demo::driver::{drive, DriverConfig, DriverStats};
use steadfast_demo::report::ReportTarget;
use steadfast_demo::traffic::Traffic;
use steadfast_demo::{Platform, PlatformConfig, DEMO_RULES};
use steadfast_server::{Config, Server};

use crate::cpu::{Load, LoadDelta};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Operations offered per second (flat: no seasonality).
    #[arg(long, default_value_t = 2500.0)]
    rate: f64,
    /// Length of the measured run, after a warm-up of `--warmup-secs`.
    #[arg(long, default_value_t = 30)]
    secs: u64,
    #[arg(long, default_value_t = 5)]
    warmup_secs: u64,
    #[arg(long, default_value_t = 10_000)]
    users: u32,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Requests in flight at most.
    #[arg(long, default_value_t = 512)]
    in_flight: usize,
}

#[derive(Serialize)]
pub struct Report {
    pub bench: &'static str,
    pub profile: &'static str,
    pub offered_ops_per_sec: f64,
    pub measured_secs: f64,
    /// Operations completed with status SUCCESS per second, in the measured window.
    pub payments_per_sec: f64,
    /// All answered operations per second (successes and business refusals).
    pub ops_per_sec: f64,
    pub errors: u64,
    pub skipped: u64,
    pub mean_latency_ms: f64,
    /// Records Steadfast verified per second in the measured window.
    pub records_verified_per_sec: f64,
    /// Largest gap between records acknowledged to the services and records verified,
    /// sampled each second.
    pub verify_lag_records_max: u64,
    pub records_total: u64,
    pub breaks: u64,
    pub load: LoadDelta,
}

pub fn run(a: &Args) -> Result<Report> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run_async(a))
}

async fn status(http: &reqwest::Client, base: &str, token: &str) -> Result<serde_json::Value> {
    Ok(http
        .get(format!("{base}/api/v1/status"))
        .bearer_auth(token)
        .send()
        .await?
        .json()
        .await?)
}

async fn run_async(a: &Args) -> Result<Report> {
    let dir = tempfile::tempdir()?;
    let cfg = Config {
        data_dir: dir.path().join("steadfast"),
        listen: "127.0.0.1:0".parse()?,
        ..Config::default()
    };
    let rules =
        Arc::new(steadfast_verify::parse_rules(DEMO_RULES).map_err(|e| anyhow::anyhow!("{e}"))?);
    let data_dir = cfg.data_dir.clone();
    let server = Server::start(cfg, rules, false).await?;
    let base = format!("http://{}", server.addr);
    let token = steadfast_server::bootstrap_admin_token(&data_dir, "bench")?;
    let traffic = Traffic::new(a.seed, a.users, 50);
    let wallets = traffic.wallets();
    let platform = Platform::start(
        PlatformConfig::new(
            dir.path().join("platform"),
            ReportTarget {
                url: base.clone(),
                token: token.clone(),
            },
            token.clone(),
        ),
        &wallets,
    )
    .await
    .context("starting the platform")?;
    let stats = Arc::new(DriverStats::default());
    let (stop, rx) = tokio::sync::watch::channel(false);
    let total = Duration::from_secs(a.warmup_secs + a.secs);
    let driver = tokio::spawn(drive(
        traffic,
        platform.endpoints.gateway.clone(),
        DriverConfig {
            rate: a.rate,
            seasonal: false,
            in_flight_max: a.in_flight,
            duration: Some(total),
            ..DriverConfig::default()
        },
        stats.clone(),
        rx,
    ));
    let http = reqwest::Client::new();
    let started = Instant::now();
    let mut lag_max = 0u64;
    let mut window_start = None;
    eprintln!(
        "warming up for {} s, then measuring for {} s",
        a.warmup_secs, a.secs
    );
    while !driver.is_finished() {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let s = status(&http, &base, &token).await?;
        let seen = s["records_seen"].as_u64().unwrap_or(0);
        let acked = platform.records_acknowledged();
        let elapsed = started.elapsed();
        if elapsed >= Duration::from_secs(a.warmup_secs) {
            lag_max = lag_max.max(acked.saturating_sub(seen));
            if window_start.is_none() {
                window_start = Some((
                    Instant::now(),
                    stats.succeeded.load(Ordering::Relaxed),
                    stats.completed(),
                    seen,
                    Load::take(),
                ));
            }
        }
        eprintln!(
            "{:>4} s: {} ok, {} errors, {acked} records acknowledged, {seen} verified",
            elapsed.as_secs(),
            stats.succeeded.load(Ordering::Relaxed),
            stats.errors.load(Ordering::Relaxed)
        );
    }
    let end = Instant::now();
    let end_seen = status(&http, &base, &token).await?["records_seen"]
        .as_u64()
        .unwrap_or(0);
    let (t0, ok0, done0, seen0, load0) =
        window_start.context("the run ended before the warm-up did")?;
    let load = Load::take().since(&load0, end - t0);
    let secs = (end - t0).as_secs_f64();
    let _ = stop.send(true);
    let _ = driver.await;
    platform.shutdown().await;
    tokio::time::sleep(Duration::from_secs(7)).await;
    let s = status(&http, &base, &token).await?;
    let breaks: u64 = s["breaks"]
        .as_object()
        .map(|m| m.values().filter_map(|v| v.as_u64()).sum())
        .unwrap_or(0);
    if breaks > 0 {
        // None is expected without faults: show what they are.
        let list: serde_json::Value = http
            .get(format!("{base}/api/v1/breaks?limit=1000"))
            .bearer_auth(&token)
            .send()
            .await?
            .json()
            .await?;
        let mut kinds = std::collections::BTreeMap::<String, (u64, String)>::new();
        for b in list.as_array().into_iter().flatten() {
            let k = format!("{} {} {}", b["rule"], b["kind"], b["side"]);
            let e = kinds.entry(k).or_insert((0, b["message"].to_string()));
            e.0 += 1;
        }
        for (k, (n, example)) in kinds {
            eprintln!("break {k}: {n} in the first 1000, e.g. {example}");
        }
    }
    server.shutdown().await;
    let completed = stats.completed();
    Ok(Report {
        bench: "demo",
        profile: if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        offered_ops_per_sec: a.rate,
        measured_secs: secs,
        payments_per_sec: (stats.succeeded.load(Ordering::Relaxed) - ok0) as f64 / secs,
        ops_per_sec: (completed - done0) as f64 / secs,
        errors: stats.errors.load(Ordering::Relaxed),
        skipped: stats.skipped.load(Ordering::Relaxed),
        mean_latency_ms: stats.latency_us_total.load(Ordering::Relaxed) as f64
            / completed.max(1) as f64
            / 1000.0,
        records_verified_per_sec: (end_seen - seen0) as f64 / secs,
        verify_lag_records_max: lag_max,
        records_total: s["records_seen"].as_u64().unwrap_or(0),
        breaks,
        load,
    })
}

impl Report {
    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "demo platform benchmark ({} build): {:.0} operations/s offered for {:.0} s",
            self.profile, self.offered_ops_per_sec, self.measured_secs
        );
        let _ = writeln!(
            s,
            "  payments completed     {:>10.0} /s",
            self.payments_per_sec
        );
        let _ = writeln!(
            s,
            "  operations answered    {:>10.0} /s (mean {:.1} ms)",
            self.ops_per_sec, self.mean_latency_ms
        );
        let _ = writeln!(
            s,
            "  errors / skipped       {:>10} / {}",
            self.errors, self.skipped
        );
        let _ = writeln!(
            s,
            "  records verified       {:>10.0} /s",
            self.records_verified_per_sec
        );
        let _ = writeln!(
            s,
            "  verification lag max   {:>10} records",
            self.verify_lag_records_max
        );
        let _ = writeln!(s, "  records in total       {:>10}", self.records_total);
        let _ = writeln!(s, "  breaks                 {:>10}", self.breaks);
        let _ = writeln!(s, "  {}", self.load.line());
        s
    }
}
