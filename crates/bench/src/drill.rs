//! Lossless drills against an in-process server while real traffic flows: time to detect
//! per fault, for a fault found on arrival (a bill a cent high) and for one found only
//! when the counterpart's lateness budget runs out (a dropped bill), reported beyond that
//! budget. The figures come from the drill's own report, which the server computes from
//! the stored breaks.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Serialize;
use serde_json::{json, Value};
use steadfast_server::{Config, Server, DEFAULT_RULES};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Faults per drill.
    #[arg(long, default_value_t = 1000)]
    faults: usize,
    /// Real records per second sent meanwhile (matched payment/bill pairs).
    #[arg(long, default_value_t = 20_000)]
    background_rate: u64,
}

#[derive(Serialize)]
pub struct DrillFigures {
    pub name: String,
    pub injected: u64,
    pub discovered: u64,
    pub false_positives: u64,
    pub lateness_budget_ms: i64,
    pub ttd_ms_p50: i64,
    pub ttd_ms_p99: i64,
    pub ttd_ms_max: i64,
    /// p99 time to detect minus the rule's lateness budget for this fault.
    pub beyond_budget_ms_p99: i64,
}

#[derive(Serialize)]
pub struct Report {
    pub bench: &'static str,
    pub profile: &'static str,
    pub background_records_per_sec: f64,
    pub real_breaks: u64,
    pub drills: Vec<DrillFigures>,
}

pub fn run(a: &Args) -> Result<Report> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run_async(a))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn pair(i: u64, t: i64) -> String {
    format!(
        "{{\"record_id\":\"p{i}\",\"source\":\"payment-core\",\"kind\":\"payment\",\"keys\":{{\"order_no\":\"O{i}\"}},\"amount\":\"12.34\",\"currency\":\"EUR\",\"status\":\"SUCCESS\",\"event_time\":{t}}}\n\
         {{\"record_id\":\"b{i}\",\"source\":\"billing\",\"kind\":\"bill\",\"keys\":{{\"biz_id\":\"O{i}\"}},\"amount\":\"12.34\",\"currency\":\"EUR\",\"event_time\":{t}}}\n"
    )
}

async fn run_async(a: &Args) -> Result<Report> {
    let dir = tempfile::tempdir()?;
    let cfg = Config {
        data_dir: dir.path().join("steadfast"),
        listen: "127.0.0.1:0".parse()?,
        ..Config::default()
    };
    let data_dir = cfg.data_dir.clone();
    let rules =
        Arc::new(steadfast_verify::parse_rules(DEFAULT_RULES).map_err(|e| anyhow::anyhow!("{e}"))?);
    let lateness = rules
        .rules
        .iter()
        .find(|r| r.name == "payment-bill")
        .map(|r| r.sides().iter().map(|s| s.lateness_ms).max().unwrap_or(0))
        .context("the shipped rules have payment-bill")?;
    let server = Server::start(cfg, rules, false).await?;
    let base = format!("http://{}", server.addr);
    let token = steadfast_server::bootstrap_admin_token(&data_dir, "bench")?;
    let http = reqwest::Client::new();

    // Real traffic: matched pairs in batches of 500 records, paced.
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let background = {
        let (http, base, token, stop, sent) = (
            http.clone(),
            base.clone(),
            token.clone(),
            stop.clone(),
            sent.clone(),
        );
        let per_batch = 250u64; // pairs
        let rate = a.background_rate.max(1);
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let t = now_ms();
                let body: String = (i..i + per_batch).map(|k| pair(k, t)).collect();
                i += per_batch;
                let ok = http
                    .post(format!("{base}/api/v1/records"))
                    .bearer_auth(&token)
                    .body(body)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                if ok {
                    sent.fetch_add(per_batch * 2, Ordering::Relaxed);
                }
                let due =
                    Duration::from_secs_f64(sent.load(Ordering::Relaxed) as f64 / rate as f64);
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    tokio::time::sleep(wait).await;
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let bg_started = (std::time::Instant::now(), sent.load(Ordering::Relaxed));

    let mut drills = Vec::new();
    for (name, mutation, field) in [
        (
            "bill a cent high (found on arrival)",
            "{ offset_minor = 1 }",
            "field = \"amount\"\n",
        ),
        (
            "bill dropped (found when the bill's lateness runs out)",
            "\"drop_record\"",
            "",
        ),
    ] {
        let spec = format!(
            "name = \"{name}\"\nrules = [\"payment-bill\"]\nttl_secs = 600\n[[faults]]\nkind = \"bill\"\n{field}mutation = {mutation}\nlimits = {{ hits_max = {} }}\n[expect]\nwithin_ms = 60000\n",
            a.faults
        );
        let d: Value = http
            .post(format!("{base}/api/v1/drills"))
            .bearer_auth(&token)
            .json(&json!({ "spec": spec, "pairs": a.faults }))
            .send()
            .await?
            .json()
            .await?;
        let id = d["id"]
            .as_str()
            .context("the drill was not created")?
            .to_string();
        let r = http
            .post(format!("{base}/api/v1/drills/{id}/start"))
            .bearer_auth(&token)
            .send()
            .await?;
        if r.status() != 202 {
            bail!("the drill did not start: {}", r.text().await?);
        }
        eprintln!("drill: {name}: running...");
        let d = loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let d: Value = http
                .get(format!("{base}/api/v1/drills/{id}"))
                .bearer_auth(&token)
                .send()
                .await?
                .json()
                .await?;
            if !matches!(d["state"].as_str(), Some("pending" | "running")) {
                break d;
            }
        };
        let r = &d["report"];
        if r.is_null() {
            bail!("drill {name} ended without a report: {d}");
        }
        let budget = if mutation.contains("drop") {
            lateness
        } else {
            0
        };
        let p99 = r["time_to_detect_ms_p99"].as_i64().unwrap_or(-1);
        drills.push(DrillFigures {
            name: name.into(),
            injected: r["injected"].as_u64().unwrap_or(0),
            discovered: r["discovered"].as_u64().unwrap_or(0),
            false_positives: r["false_positives"]
                .as_array()
                .map_or(0, |a| a.len() as u64),
            lateness_budget_ms: budget,
            ttd_ms_p50: r["time_to_detect_ms_p50"].as_i64().unwrap_or(-1),
            ttd_ms_p99: p99,
            ttd_ms_max: r["time_to_detect_ms_max"].as_i64().unwrap_or(-1),
            beyond_budget_ms_p99: p99 - budget,
        });
    }
    let secs = bg_started.0.elapsed().as_secs_f64();
    let bg_rate = (sent.load(Ordering::Relaxed) - bg_started.1) as f64 / secs;
    stop.store(true, Ordering::Relaxed);
    let _ = background.await;
    let prod: Vec<Value> = http
        .get(format!("{base}/api/v1/breaks?limit=1000"))
        .bearer_auth(&token)
        .send()
        .await?
        .json()
        .await?;
    server.shutdown().await;
    Ok(Report {
        bench: "drill",
        profile: if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        background_records_per_sec: bg_rate,
        real_breaks: prod.len() as u64,
        drills,
    })
}

impl Report {
    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "lossless drill benchmark ({} build): {:.0} real records/s meanwhile, {} real breaks",
            self.profile, self.background_records_per_sec, self.real_breaks
        );
        for d in &self.drills {
            let _ = writeln!(s, "\n  {}", d.name);
            let _ = writeln!(
                s,
                "    discovered {} of {}, {} false positives",
                d.discovered, d.injected, d.false_positives
            );
            let _ = writeln!(
                s,
                "    time to detect p50 {} ms, p99 {} ms, max {} ms (lateness budget {} ms)",
                d.ttd_ms_p50, d.ttd_ms_p99, d.ttd_ms_max, d.lateness_budget_ms
            );
            let _ = writeln!(
                s,
                "    p99 beyond the budget {} ms; target < 1000 ms: {}",
                d.beyond_budget_ms_p99,
                if d.beyond_budget_ms_p99 < 1000 && d.discovered == d.injected {
                    "MET"
                } else {
                    "NOT MET"
                }
            );
        }
        s
    }
}
