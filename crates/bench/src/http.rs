//! `http`: end-to-end ingest through the HTTP API of an in-process server.
//!
//! A `Server` runs on 127.0.0.1 with a temporary data directory and the default
//! configuration, except for larger open-record and batch limits. `--clients` concurrent
//! HTTP clients POST prebuilt NDJSON bodies of `--batch` records with the admin token;
//! a batch counts once the server acknowledged it (that is, once it is fsynced in the
//! WAL). Batch `j` carries the payments of order block `j` and the bills of block `j-1`,
//! so every key is opened by one batch and closed by the next, and 0.1% of the bills are
//! one cent off, so `amount_mismatch` breaks occur. Event times are the wall clock at the
//! moment a body is sent (written in place into the prebuilt body), so lateness
//! deadlines hold exactly as they would for live traffic.
//!
//! After the last acknowledgement the benchmark waits until the engine has applied every
//! record and every tampered key's break is stored, then reads `/metrics`: records per
//! fsync (group commit) and the detection latency histogram, whose p99 is known only up
//! to its bucket.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use hdrhistogram::Histogram;
use serde::Serialize;
use steadfast_server::pipeline::wall_ms;
use steadfast_server::{Config, Server, DEFAULT_RULES};
use steadfast_verify::parse_rules;

use crate::cpu;
use crate::ndjson::{self, group, TIME_DIGITS};
use crate::prom::{Bounds, Scrape};

/// Acknowledged records per second at or above this meet the target.
const THROUGHPUT_TARGET: f64 = 200_000.0;
/// A p99 detection latency (seconds) below this meets the target.
const DETECTION_P99_TARGET: f64 = 0.100;
/// Longest wait for the engine and the break store to catch up after the last ack.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Records to send: half payments, half bills.
    #[arg(long, default_value_t = 2_000_000)]
    records: usize,
    /// Records per request.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Concurrent HTTP clients, one request in flight each.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Offered load in records/s: batch `j` is sent no earlier than `j * batch / rate`
    /// seconds after the start. Without it, clients send as fast as they are answered.
    #[arg(long)]
    rate: Option<u64>,
}

/// Order `i`'s bill is one cent off: 0.1% of the bills.
pub fn tampered(i: usize) -> bool {
    i % 1000 == 500
}

/// One prebuilt request body.
pub struct Body {
    bytes: Vec<u8>,
    /// Byte offsets of every record's event time, overwritten when the body is sent.
    times: Vec<usize>,
}

impl Body {
    pub fn records(&self) -> usize {
        self.times.len()
    }
}

/// Every request body of a run, built before the clock starts.
pub struct Plan {
    pub bodies: Vec<Body>,
    pub records: usize,
    pub tampered: usize,
    pub bytes: u64,
}

impl Plan {
    /// `records / 2` orders (rounded down), in bodies of at most `batch` records: body `j`
    /// holds the payments of block `j` and the bills of block `j - 1` (`batch / 2` orders
    /// a block). Built on every core.
    pub fn build(records: usize, batch: usize) -> Result<Plan> {
        ensure!(
            batch >= 2 && batch % 2 == 0,
            "--batch must be an even number of records, at least 2"
        );
        ensure!(records >= 2, "--records must be at least 2");
        let orders = records / 2;
        let half = batch / 2;
        let blocks = orders.div_ceil(half);
        // Any 13-digit time; the real one is written when the body is sent.
        let placeholder = wall_ms();
        let body = |j: usize| {
            let mut buf = String::with_capacity(batch * 240);
            let mut times = Vec::with_capacity(batch);
            if j < blocks {
                for i in j * half..((j + 1) * half).min(orders) {
                    times.push(ndjson::payment(&mut buf, i, placeholder));
                }
            }
            if j > 0 {
                for i in (j - 1) * half..(j * half).min(orders) {
                    times.push(ndjson::bill(&mut buf, i, placeholder, tampered(i)));
                }
            }
            Body {
                bytes: buf.into_bytes(),
                times,
            }
        };
        let threads = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let per = (blocks + 1).div_ceil(threads);
        let bodies: Vec<Body> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    let body = &body;
                    s.spawn(move || {
                        (t * per..((t + 1) * per).min(blocks + 1))
                            .map(body)
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().expect("body builder panicked"))
                .collect()
        });
        Ok(Plan {
            records: bodies.iter().map(Body::records).sum(),
            bytes: bodies.iter().map(|b| b.bytes.len() as u64).sum(),
            tampered: (0..orders).filter(|&i| tampered(i)).count(),
            bodies,
        })
    }
}

#[derive(Serialize, Clone, Copy)]
pub struct Latency {
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

/// What the clients saw.
#[derive(Serialize)]
pub struct Ingested {
    /// Records acknowledged (200) by the server.
    pub records: u64,
    pub batches: u64,
    pub body_bytes: u64,
    /// From the first request to the last acknowledgement.
    pub seconds: f64,
    pub records_per_sec: f64,
    pub mib_per_sec: f64,
    /// From sending a batch to its acknowledgement, retries included, in milliseconds.
    pub batch_ack_latency_ms: Latency,
    /// Answers that asked the client to retry, by HTTP status.
    pub retries: BTreeMap<u16, u64>,
}

/// Sends every body of `plan` to `base` with `clients` concurrent clients, one request in
/// flight each; refusals that ask for a retry (429, 503) are retried after a short pause.
pub async fn ingest(
    base: &str,
    token: &str,
    plan: Arc<Plan>,
    clients: usize,
    rate: Option<u64>,
    label: &'static str,
) -> Result<Ingested> {
    ensure!(clients >= 1, "--clients must be at least 1");
    ensure!(rate != Some(0), "--rate must be above 0");
    let next = Arc::new(AtomicUsize::new(0));
    let acked = Arc::new(AtomicU64::new(0));
    let url = Arc::new(format!("{base}/api/v1/records"));
    let token = Arc::new(token.to_string());
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (next, acked, url, token, plan) = (
            next.clone(),
            acked.clone(),
            url.clone(),
            token.clone(),
            plan.clone(),
        );
        let pace = rate.map(|r| (start, r));
        tasks.push(tokio::spawn(async move {
            client(&url, &token, &plan, &next, &acked, pace, label).await
        }));
    }
    let mut hist = latency_histogram()?;
    let mut retries = BTreeMap::new();
    let mut last = start;
    for t in tasks {
        let (h, r, l) = t.await.context("client task panicked")??;
        hist.add(&h).context("merging latency histograms")?;
        for (status, n) in r {
            *retries.entry(status).or_default() += n;
        }
        last = last.max(l);
    }
    let seconds = (last - start).as_secs_f64();
    let records = acked.load(Ordering::Relaxed);
    ensure!(
        records == plan.records as u64,
        "{records} records acknowledged of {}",
        plan.records
    );
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1e3;
    Ok(Ingested {
        records,
        batches: plan.bodies.len() as u64,
        body_bytes: plan.bytes,
        seconds,
        records_per_sec: records as f64 / seconds,
        mib_per_sec: plan.bytes as f64 / (1024.0 * 1024.0) / seconds,
        batch_ack_latency_ms: Latency {
            p50: ms(0.5),
            p99: ms(0.99),
            p999: ms(0.999),
            max: hist.max() as f64 / 1e3,
        },
        retries,
    })
}

fn latency_histogram() -> Result<Histogram<u64>> {
    // Microseconds, up to an hour, 3 significant digits.
    Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).context("latency histogram")
}

type ClientResult = (Histogram<u64>, BTreeMap<u16, u64>, Instant);

async fn client(
    url: &str,
    token: &str,
    plan: &Plan,
    next: &AtomicUsize,
    acked: &AtomicU64,
    pace: Option<(Instant, u64)>,
    label: &'static str,
) -> Result<ClientResult> {
    let http = reqwest::Client::new();
    let mut hist = latency_histogram()?;
    let mut retries = BTreeMap::new();
    let mut last = Instant::now();
    let tenth = (plan.records as u64 / 10).max(1);
    loop {
        let j = next.fetch_add(1, Ordering::Relaxed);
        let Some(body) = plan.bodies.get(j) else {
            break;
        };
        if let Some((start, rate)) = pace {
            let due = start + Duration::from_secs_f64((j * body.records()) as f64 / rate as f64);
            tokio::time::sleep_until(due.into()).await;
        }
        let sent = Instant::now();
        let mut attempt = 0u32;
        loop {
            let mut bytes = body.bytes.clone();
            let now = wall_ms().to_string();
            ensure!(now.len() == TIME_DIGITS, "the wall clock is out of range");
            for &at in &body.times {
                bytes[at..at + TIME_DIGITS].copy_from_slice(now.as_bytes());
            }
            let resp = http
                .post(url)
                .bearer_auth(token)
                .header(reqwest::header::CONTENT_TYPE, "application/x-ndjson")
                .body(bytes)
                .send()
                .await
                .with_context(|| format!("sending batch {j}"))?;
            let status = resp.status();
            if status.is_success() {
                let ack: serde_json::Value = resp.json().await.context("reading an ack")?;
                ensure!(
                    ack["accepted"].as_u64() == Some(body.records() as u64),
                    "batch {j}: unexpected acknowledgement {ack}"
                );
                break;
            }
            if status.as_u16() == 429 || status.as_u16() == 503 {
                *retries.entry(status.as_u16()).or_default() += 1;
                attempt += 1;
                tokio::time::sleep(Duration::from_millis((5 * u64::from(attempt)).min(500))).await;
                continue;
            }
            let text = resp.text().await.unwrap_or_default();
            bail!("batch {j}: HTTP {status}: {text}");
        }
        last = Instant::now();
        hist.saturating_record((last - sent).as_micros() as u64);
        let n = body.records() as u64;
        let before = acked.fetch_add(n, Ordering::Relaxed);
        if (before + n) / tenth > before / tenth {
            eprintln!(
                "{label}: {} of {} records acknowledged",
                group(before + n),
                group(plan.records as u64)
            );
        }
    }
    Ok((hist, retries, last))
}

#[derive(Serialize)]
pub struct Report {
    pub bench: &'static str,
    pub profile: &'static str,
    pub records: usize,
    pub batch_records: usize,
    pub clients: usize,
    /// `--rate`, when the load was paced.
    pub offered_records_per_sec: Option<u64>,
    pub tampered_keys: usize,
    pub build_seconds: f64,
    pub ingest: Ingested,
    /// From the first request until the engine had applied every acknowledged record.
    pub engine_applied_seconds: f64,
    /// From the first request until every tampered key's break was stored.
    pub breaks_stored_seconds: f64,
    pub wal: Wal,
    pub detection_latency_seconds: Detection,
    /// Breaks counted by `steadfast_breaks_total`, as `rule/kind`.
    pub breaks: BTreeMap<String, u64>,
    /// `steadfast_batches_refused_total` by code.
    pub refused: BTreeMap<String, u64>,
    pub open_records_after: u64,
    /// CPU seconds of this process's threads during the ingest (clients and server share
    /// the process), busiest first.
    pub cpu_seconds_by_thread: Vec<(String, f64)>,
    /// Machine CPU from the first request until the breaks were stored.
    pub machine_load: cpu::LoadDelta,
    pub targets: Targets,
}

#[derive(Serialize)]
pub struct Wal {
    /// fsyncs that made at least one entry durable (ticks included).
    pub fsyncs: u64,
    pub fsync_seconds_mean: Option<f64>,
    pub fsync_seconds_p99: Option<Bounds>,
    /// fsyncs that carried records (`steadfast_records_per_fsync` count).
    pub fsyncs_with_records: u64,
    /// `steadfast_records_per_fsync` sum / count.
    pub records_per_fsync_mean: Option<f64>,
}

#[derive(Serialize)]
pub struct Detection {
    /// Breaks observed by the histogram (every rule and kind).
    pub breaks: u64,
    pub mean: Option<f64>,
    pub p50: Option<Bounds>,
    pub p99: Option<Bounds>,
    /// The same latency computed exactly from every stored break (`detected_at -
    /// complete_at`, both in milliseconds, as `GET /api/v1/breaks` reports them).
    pub stored: Option<StoredLatency>,
}

#[derive(Serialize)]
pub struct StoredLatency {
    pub breaks: usize,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
    /// The slowest breaks: (latency s, seconds after the first request it was stored).
    pub slowest: Vec<(f64, f64)>,
}

#[derive(Serialize)]
pub struct Targets {
    pub records_per_sec: Target,
    pub detection_p99_seconds: UpperTarget,
}

#[derive(Serialize)]
pub struct Target {
    pub value: f64,
    pub target: f64,
    pub met: bool,
}

/// A target on a quantile known only to lie in a histogram bucket.
#[derive(Serialize)]
pub struct UpperTarget {
    pub lower: Option<f64>,
    /// `None` when unbounded (the `+Inf` bucket) or without observations.
    pub upper: Option<f64>,
    pub target: f64,
    /// `None` when the bucket straddles the target, so the histogram cannot tell.
    pub met: Option<bool>,
}

impl UpperTarget {
    fn of(b: Option<Bounds>, target: f64) -> UpperTarget {
        let met = match b {
            None => Some(false),
            Some(Bounds {
                upper: Some(u),
                lower: _,
            }) if u < target => Some(true),
            Some(Bounds { lower, .. }) if lower >= target => Some(false),
            Some(_) => None,
        };
        UpperTarget {
            lower: b.map(|b| b.lower),
            upper: b.and_then(|b| b.upper),
            target,
            met,
        }
    }
}

pub fn run(args: &Args) -> Result<Report> {
    if cfg!(debug_assertions) {
        eprintln!("warning: this is a debug build; run with --release for meaningful figures");
    }
    let t = Instant::now();
    eprintln!(
        "http: building {} records in bodies of {}...",
        group(args.records as u64),
        args.batch
    );
    let plan = Arc::new(Plan::build(args.records, args.batch)?);
    let build_seconds = t.elapsed().as_secs_f64();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(run_async(args, plan, build_seconds))
}

async fn run_async(args: &Args, plan: Arc<Plan>, build_seconds: f64) -> Result<Report> {
    let dir = tempfile::Builder::new()
        .prefix("steadfast-bench-http-")
        .tempdir()
        .context("creating a temporary data directory")?;
    let mut cfg = Config {
        data_dir: dir.path().to_path_buf(),
        listen: "127.0.0.1:0".parse().expect("a loopback address"),
        ..Config::default()
    };
    cfg.engine.tick_ms = 100;
    cfg.limits.open_records_max = 5_000_000;
    cfg.limits.batch_records_max = 10_000;
    ensure!(
        args.batch <= cfg.limits.batch_records_max,
        "--batch is larger than the server's batch_records_max"
    );
    let rules = Arc::new(parse_rules(DEFAULT_RULES).context("the default rules")?);
    let data_dir = cfg.data_dir.clone();
    let server = Server::start(cfg, rules, false)
        .await
        .context("starting the server")?;
    let base = format!("http://{}", server.addr);
    let token = steadfast_server::bootstrap_admin_token(&data_dir, "bench")?;
    let http = reqwest::Client::new();

    eprintln!(
        "http: sending {} records with {} clients...",
        group(plan.records as u64),
        args.clients
    );
    let cpu_before = cpu::Snapshot::take(None);
    let load_before = cpu::Load::take();
    let start = Instant::now();
    let ingest = ingest(&base, &token, plan.clone(), args.clients, args.rate, "http").await?;
    let cpu_seconds_by_thread = cpu::Snapshot::take(None).since(&cpu_before);

    // The engine and the break store run behind the acknowledgement: wait for both.
    eprintln!("http: waiting for the engine and the break store...");
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    let mut engine_applied = None;
    let tampered = plan.tampered as f64;
    let stored = loop {
        let m = Scrape::fetch(&http, &base).await?;
        if engine_applied.is_none()
            && m.sum("steadfast_records_ingested_total", &[]) >= ingest.records as f64
        {
            engine_applied = Some(start.elapsed().as_secs_f64());
        }
        let found = m.sum(
            "steadfast_breaks_total",
            &[("rule", "payment-bill"), ("kind", "amount_mismatch")],
        );
        if found >= tampered && engine_applied.is_some() {
            break start.elapsed().as_secs_f64();
        }
        if Instant::now() > deadline {
            bail!(
                "after {:?}: engine applied all records: {}, {found} of {tampered} tampered breaks stored",
                DRAIN_TIMEOUT,
                engine_applied.is_some()
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let machine_load = cpu::Load::take().since(&load_before, start.elapsed());
    let m = Scrape::fetch(&http, &base).await?;
    let started_ms = wall_ms() - start.elapsed().as_millis() as i64;
    let stored_latency = stored_latency(&http, &base, &token, started_ms).await?;
    server.shutdown().await;
    drop(dir);

    let fsync = m.hist("steadfast_wal_fsync_seconds");
    let per_fsync = m.hist("steadfast_records_per_fsync");
    let det = m.hist("steadfast_detection_latency_seconds");
    let mut breaks = BTreeMap::new();
    for s in m.0.iter().filter(|s| s.name == "steadfast_breaks_total") {
        let get = |k: &str| {
            s.labels
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.as_str())
                .unwrap_or("?")
        };
        *breaks
            .entry(format!("{}/{}", get("rule"), get("kind")))
            .or_default() += s.value as u64;
    }
    let refused = m
        .by_label("steadfast_batches_refused_total", "code")
        .into_iter()
        .map(|(k, v)| (k, v as u64))
        .collect();
    let p99 = det.quantile(0.99);
    let rps = ingest.records_per_sec;
    Ok(Report {
        bench: "http",
        profile: if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        records: plan.records,
        batch_records: args.batch,
        clients: args.clients,
        offered_records_per_sec: args.rate,
        tampered_keys: plan.tampered,
        build_seconds,
        ingest,
        engine_applied_seconds: engine_applied.unwrap_or(f64::NAN),
        breaks_stored_seconds: stored,
        wal: Wal {
            fsyncs: fsync.count,
            fsync_seconds_mean: fsync.mean,
            fsync_seconds_p99: fsync.quantile(0.99),
            fsyncs_with_records: per_fsync.count,
            records_per_fsync_mean: per_fsync.mean,
        },
        detection_latency_seconds: Detection {
            breaks: det.count,
            mean: det.mean,
            p50: det.quantile(0.5),
            p99,
            stored: stored_latency,
        },
        breaks,
        refused,
        open_records_after: m.sum("steadfast_open_records", &[]) as u64,
        cpu_seconds_by_thread,
        machine_load,
        targets: Targets {
            records_per_sec: Target {
                value: rps,
                target: THROUGHPUT_TARGET,
                met: rps >= THROUGHPUT_TARGET,
            },
            detection_p99_seconds: UpperTarget::of(p99, DETECTION_P99_TARGET),
        },
    })
}

/// Every stored break's detection latency, read back through the API.
async fn stored_latency(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    started_ms: i64,
) -> Result<Option<StoredLatency>> {
    let mut lat: Vec<(f64, f64)> = Vec::new();
    let mut after = 0u64;
    loop {
        let page: Vec<serde_json::Value> = http
            .get(format!(
                "{base}/api/v1/breaks?drill=include&limit=1000&after_id={after}"
            ))
            .bearer_auth(token)
            .send()
            .await
            .context("GET /api/v1/breaks")?
            .error_for_status()
            .context("GET /api/v1/breaks")?
            .json()
            .await
            .context("reading breaks")?;
        let Some(last) = page.last() else { break };
        after = last["id"].as_u64().context("a break without an id")?;
        for b in &page {
            let detected = b["detected_at"].as_i64().context("detected_at")?;
            let complete = b["complete_at"].as_i64().context("complete_at")?;
            lat.push((
                (detected - complete).max(0) as f64 / 1e3,
                (detected - started_ms) as f64 / 1e3,
            ));
        }
    }
    if lat.is_empty() {
        return Ok(None);
    }
    lat.sort_by(|a, b| a.0.total_cmp(&b.0));
    let q = |p: f64| lat[((p * lat.len() as f64).ceil() as usize).clamp(1, lat.len()) - 1].0;
    Ok(Some(StoredLatency {
        breaks: lat.len(),
        p50: q(0.5),
        p99: q(0.99),
        max: lat[lat.len() - 1].0,
        slowest: lat.iter().rev().take(10).copied().collect(),
    }))
}

pub fn verdict(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "MET",
        Some(false) => "NOT MET",
        None => "UNDETERMINED (the bucket straddles the target)",
    }
}

pub fn bounds_ms(b: Option<Bounds>) -> String {
    match b {
        None => "n/a".into(),
        Some(Bounds {
            lower,
            upper: Some(u),
        }) => format!("{:.0}-{:.0} ms", lower * 1e3, u * 1e3),
        Some(Bounds { lower, upper: None }) => format!("> {:.0} ms", lower * 1e3),
    }
}

pub fn latency_line(l: &Latency) -> String {
    format!(
        "p50 {:.1} ms, p99 {:.1} ms, p99.9 {:.1} ms, max {:.1} ms",
        l.p50, l.p99, l.p999, l.max
    )
}

impl Report {
    pub fn table(&self) -> String {
        let mut s = String::new();
        let i = &self.ingest;
        let _ = writeln!(
            s,
            "http ingest benchmark ({} build): {} records ({} tampered bills), {} records per request, {} clients",
            self.profile,
            group(self.records as u64),
            self.tampered_keys,
            self.batch_records,
            self.clients
        );
        if let Some(rate) = self.offered_records_per_sec {
            let _ = writeln!(s, "offered load paced at {} records/s", group(rate));
        }
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "  {:<30} {} records in {:.2} s = {} records/s ({:.1} MiB/s of NDJSON)",
            "acknowledged",
            group(i.records),
            i.seconds,
            group(i.records_per_sec as u64),
            i.mib_per_sec
        );
        let t = &self.targets.records_per_sec;
        let _ = writeln!(
            s,
            "  {:<30} target >= {} records/s: {}",
            "",
            group(t.target as u64),
            verdict(Some(t.met))
        );
        let _ = writeln!(
            s,
            "  {:<30} {}",
            "ack latency per batch",
            latency_line(&i.batch_ack_latency_ms)
        );
        if !i.retries.is_empty() {
            let _ = writeln!(s, "  {:<30} {:?}", "retried answers by status", i.retries);
        }
        let _ = writeln!(
            s,
            "  {:<30} {:.2} s after the first request ({:.2} s for the break store)",
            "engine applied everything", self.engine_applied_seconds, self.breaks_stored_seconds
        );
        let w = &self.wal;
        let _ = writeln!(
            s,
            "  {:<30} {:.0} records per fsync (mean over {} fsyncs with records; {} fsyncs in all, mean {:.2} ms, p99 {})",
            "WAL group commit",
            w.records_per_fsync_mean.unwrap_or(f64::NAN),
            group(w.fsyncs_with_records),
            group(w.fsyncs),
            w.fsync_seconds_mean.unwrap_or(f64::NAN) * 1e3,
            bounds_ms(w.fsync_seconds_p99)
        );
        let d = &self.detection_latency_seconds;
        let _ = writeln!(
            s,
            "  {:<30} p50 {}, p99 {}, mean {:.1} ms, over {} breaks",
            "detection latency (buckets)",
            bounds_ms(d.p50),
            bounds_ms(d.p99),
            d.mean.unwrap_or(f64::NAN) * 1e3,
            d.breaks
        );
        if let Some(st) = &d.stored {
            let slow: Vec<String> = st
                .slowest
                .iter()
                .take(5)
                .map(|(l, at)| format!("{:.0} ms at {at:.1} s", l * 1e3))
                .collect();
            let _ = writeln!(
                s,
                "  {:<30} exact from {} stored breaks: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms; slowest: {}",
                "",
                st.breaks,
                st.p50 * 1e3,
                st.p99 * 1e3,
                st.max * 1e3,
                slow.join(", ")
            );
        }
        let dt = &self.targets.detection_p99_seconds;
        let _ = writeln!(
            s,
            "  {:<30} target p99 < {:.0} ms: {}",
            "",
            dt.target * 1e3,
            verdict(dt.met)
        );
        let _ = writeln!(s, "  {:<30} {:?}", "breaks by rule/kind", self.breaks);
        if !self.refused.is_empty() {
            let _ = writeln!(s, "  {:<30} {:?}", "batches refused", self.refused);
        }
        let busy: Vec<String> = self
            .cpu_seconds_by_thread
            .iter()
            .take(6)
            .map(|(n, c)| format!("{n} {c:.1} s"))
            .collect();
        let _ = writeln!(
            s,
            "  {:<30} {} (over {:.1} s of ingest)",
            "CPU by thread",
            busy.join(", "),
            i.seconds
        );
        let _ = writeln!(s, "  {:<30} {}", "machine", self.machine_load.line());
        s
    }
}
