//! The fault-injection proxy's cost and its stop: latency at a fixed open-loop rate to a
//! small JSON upstream, directly, through `steadfast proxy` with no fault active, and
//! through nginx as a plain reverse proxy, in the same run; then the time from a kill
//! switch call to the last request the proxy tampered with.
//!
//! Latency is measured from each request's scheduled send time, so a stall is counted
//! against every request it delays (no coordinated omission). The upstream, the proxy and
//! the load each run on a runtime of their own thread; nginx runs one worker process.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use serde_json::{json, Value};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Requests per second offered to each target.
    #[arg(long, default_value_t = 5_000)]
    rate: u64,
    /// Seconds measured per target, after one second of warm-up.
    #[arg(long, default_value_t = 10)]
    secs: u64,
    /// The nginx binary; the nginx row is left out when it is not found.
    #[arg(long, default_value = "/usr/sbin/nginx")]
    nginx: String,
    /// Rounds: each measures every target once, interleaved, so a noisy moment on the
    /// machine hits all of them alike; the figures are the median round's.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Requests per second through the proxy while the kill switch is pulled.
    #[arg(long, default_value_t = 2_000)]
    kill_rate: u64,
}

#[derive(Serialize)]
pub struct Row {
    pub round: usize,
    pub target: String,
    pub requests: u64,
    pub errors: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

#[derive(Serialize)]
pub struct Report {
    pub bench: &'static str,
    pub profile: &'static str,
    pub rate: u64,
    pub secs: u64,
    pub rows: Vec<Row>,
    /// p99 through the proxy minus p99 direct, per round, and the median of the rounds.
    pub proxy_added_p99_us_rounds: Vec<i64>,
    pub proxy_added_p99_us: i64,
    pub nginx_added_p99_us_rounds: Vec<i64>,
    pub nginx_added_p99_us: Option<i64>,
    /// How long the kill switch call took to return (every proxy confirmed).
    pub killswitch_call_ms: u64,
    /// From sending the kill switch call to the last request the proxy tampered with;
    /// negative when the last one came before the call was sent.
    pub killswitch_to_last_tamper_ms: i64,
    pub tampered_before_kill: u64,
    pub tampered_after_return: u64,
}

impl Report {
    pub fn table(&self) -> String {
        let mut t = format!(
            "proxy latency at {} requests/s, {} s per target and round ({} build)\n\n{:<6}{:<34} {:>9} {:>7} {:>9} {:>9} {:>9} {:>9}\n",
            self.rate, self.secs, self.profile, "round", "target", "requests", "errors", "p50 µs", "p99 µs", "p99.9 µs", "max µs"
        );
        for r in &self.rows {
            let _ = writeln!(
                t,
                "{:<6}{:<34} {:>9} {:>7} {:>9} {:>9} {:>9} {:>9}",
                r.round, r.target, r.requests, r.errors, r.p50_us, r.p99_us, r.p999_us, r.max_us
            );
        }
        let _ = writeln!(
            t,
            "\nadded p99, median of rounds: steadfast proxy {} µs (target ≤ 1000 µs; rounds {:?}){}",
            self.proxy_added_p99_us,
            self.proxy_added_p99_us_rounds,
            self.nginx_added_p99_us
                .map(|n| format!(", nginx {n} µs (rounds {:?})", self.nginx_added_p99_us_rounds))
                .unwrap_or_default()
        );
        let _ = writeln!(
            t,
            "kill switch: call returned in {} ms; last tampered request {} ms after the call (target < 1000 ms); tampered before {}, after the call returned {}",
            self.killswitch_call_ms,
            self.killswitch_to_last_tamper_ms,
            self.tampered_before_kill,
            self.tampered_after_return
        );
        t
    }
}

fn runtime(name: &str) -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(name)
        .enable_all()
        .build()?)
}

/// A small JSON service standing in for billing.
async fn upstream() -> Result<SocketAddr> {
    use axum::routing::post;
    let app = axum::Router::new().route(
        "/v1/bills",
        post(|axum::Json(b): axum::Json<Value>| async move {
            axum::Json(json!({"biz_id": b["biz_id"], "amount": b["amount"], "status": "CREATED"}))
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(l, app).await;
    });
    Ok(addr)
}

/// Request senders; request `i` goes to sender `i % SENDERS`, each at its scheduled time.
const SENDERS: u64 = 64;

/// Offers `rate` requests per second to `url` for `secs` and returns the latencies, each
/// measured from the request's scheduled time. Senders keep their own histograms and
/// share hyper's connection pool, so the load itself stays cheap.
async fn load(
    url: String,
    rate: u64,
    secs: u64,
    warmup: bool,
) -> Result<(hdrhistogram::Histogram<u64>, u64, u64)> {
    type Full = http_body_util::Full<bytes::Bytes>;
    let client: hyper_util::client::legacy::Client<_, Full> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_max_idle_per_host(256)
            .build_http();
    let uri: hyper::Uri = url.parse()?;
    let interval = Duration::from_nanos(1_000_000_000 / rate.max(1));
    let total = rate * secs;
    let started = Instant::now() + Duration::from_millis(50);
    let mut senders = Vec::new();
    for k in 0..SENDERS {
        let (client, uri) = (client.clone(), uri.clone());
        senders.push(tokio::spawn(async move {
            let mut h = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
                .expect("histogram bounds");
            let (mut sent, mut errors) = (0u64, 0u64);
            let mut i = k;
            while i < total {
                let at = started + interval * i as u32;
                tokio::time::sleep_until(at.into()).await;
                let body = format!(
                    r#"{{"biz_id":"ORD-{i}","user_id":"u1","payer_account":"A1","amount":"10.00","currency":"USD"}}"#
                );
                let req = hyper::Request::post(uri.clone())
                    .header("content-type", "application/json")
                    .body(Full::new(body.into()))
                    .expect("a request");
                let ok = match tokio::time::timeout(Duration::from_secs(10), client.request(req)).await {
                    Ok(Ok(r)) => {
                        let good = r.status().is_success();
                        good && http_body_util::BodyExt::collect(r.into_body()).await.is_ok()
                    }
                    _ => false,
                };
                sent += 1;
                if !ok {
                    errors += 1;
                }
                if !warmup {
                    let _ = h.record((at.elapsed().as_micros() as u64).max(1));
                }
                i += SENDERS;
            }
            (h, sent, errors)
        }));
    }
    let mut hist = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let (mut sent, mut errors) = (0, 0);
    for s in senders {
        let (h, n, e) = s.await?;
        hist.add(h)?;
        sent += n;
        errors += e;
    }
    Ok((hist, sent, errors))
}

fn measure(rt: &tokio::runtime::Runtime, name: &str, url: &str, a: &Args) -> Result<Row> {
    // Spawned, so the load runs on its runtime's thread and not on the caller's.
    rt.block_on(rt.spawn(load(url.into(), a.rate, 1, true)))??;
    let (h, requests, errors) =
        rt.block_on(rt.spawn(load(url.into(), a.rate, a.secs, false)))??;
    Ok(Row {
        round: 0,
        target: name.into(),
        requests,
        errors,
        p50_us: h.value_at_quantile(0.50),
        p99_us: h.value_at_quantile(0.99),
        p999_us: h.value_at_quantile(0.999),
        max_us: h.max(),
    })
}

/// nginx as a plain reverse proxy with keep-alive to the upstream, one worker.
fn start_nginx(
    bin: &str,
    dir: &Path,
    upstream: SocketAddr,
) -> Result<Option<(std::process::Child, SocketAddr)>> {
    if !Path::new(bin).exists() {
        eprintln!("nginx not found at {bin}: its row is left out");
        return Ok(None);
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    std::fs::create_dir_all(dir.join("logs"))?;
    let conf = format!(
        "daemon off;\nmaster_process off;\nworker_processes 1;\nerror_log {d}/logs/error.log;\npid {d}/nginx.pid;\nevents {{ worker_connections 8192; }}\nhttp {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  upstream up {{ server {upstream}; keepalive 256; }}\n  server {{\n    listen 127.0.0.1:{port};\n    location / {{ proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection \"\"; }}\n  }}\n}}\n",
        d = dir.display()
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf)?;
    let child = std::process::Command::new(bin)
        .arg("-c")
        .arg(&path)
        .arg("-p")
        .arg(dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {bin}"))?;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(addr).is_err() {
        if Instant::now() > deadline {
            bail!("nginx did not start; see {}/logs/error.log", dir.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(Some((child, addr)))
}

/// A proxy in front of `up` with the bill route, synced with `controller` when given.
fn proxy_config(
    name: &str,
    up: SocketAddr,
    dir: &Path,
    controller: Option<steadfast_proxy::ControllerConfig>,
) -> Result<steadfast_proxy::ProxyConfig> {
    Ok(steadfast_proxy::ProxyConfig {
        name: name.into(),
        listen: "127.0.0.1:0".parse()?,
        upstream: format!("http://{up}"),
        data_dir: dir.join("proxy"),
        controller,
        routes: vec![steadfast_proxy::Route::request(
            "POST",
            "/v1/bills",
            "bill",
            "biz_id",
        )],
        ..steadfast_proxy::ProxyConfig::default()
    })
}

pub fn run(a: &Args) -> Result<Report> {
    let dir = tempfile::tempdir()?;
    let up_rt = runtime("upstream")?;
    let proxy_rt = runtime("proxy")?;
    let load_rt = runtime("load")?;
    let up = up_rt.block_on(upstream())?;
    let proxy = proxy_rt.block_on(steadfast_proxy::Proxy::start(proxy_config(
        "bench",
        up,
        dir.path(),
        None,
    )?))?;
    let nginx = start_nginx(&a.nginx, &dir.path().join("nginx"), up)?;
    let mut targets = vec![
        ("direct", format!("http://{up}/v1/bills")),
        (
            "steadfast proxy (no fault active)",
            format!("http://{}/v1/bills", proxy.addr),
        ),
    ];
    if let Some((_, addr)) = &nginx {
        targets.push((
            "nginx (plain reverse proxy)",
            format!("http://{addr}/v1/bills"),
        ));
    }
    let mut rows = Vec::new();
    let (mut proxy_added, mut nginx_added) = (Vec::new(), Vec::new());
    for round in 1..=a.rounds.max(1) {
        let first = rows.len();
        for (name, url) in &targets {
            let mut row = measure(&load_rt, name, url, a)?;
            row.round = round;
            rows.push(row);
        }
        let p99 = |i: usize| rows.get(first + i).map(|r: &Row| r.p99_us as i64);
        proxy_added.push(p99(1).unwrap_or(0) - p99(0).unwrap_or(0));
        if let Some(n) = p99(2) {
            nginx_added.push(n - p99(0).unwrap_or(0));
        }
    }
    let median = |v: &[i64]| {
        let mut v = v.to_vec();
        v.sort_unstable();
        v.get(v.len() / 2).copied()
    };
    if let Some((mut child, _)) = nginx {
        let _ = child.kill();
        let _ = child.wait();
    }
    proxy_rt.block_on(proxy.stop());
    let kill = kill_switch(a, &dir.path().join("kill"), up, &proxy_rt, &load_rt)?;
    Ok(Report {
        bench: "proxy",
        profile: if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        rate: a.rate,
        secs: a.secs,
        proxy_added_p99_us: median(&proxy_added).unwrap_or(0),
        nginx_added_p99_us: median(&nginx_added),
        proxy_added_p99_us_rounds: proxy_added,
        nginx_added_p99_us_rounds: nginx_added,
        killswitch_call_ms: kill.0,
        killswitch_to_last_tamper_ms: kill.1,
        tampered_before_kill: kill.2,
        tampered_after_return: kill.3,
        rows,
    })
}

/// A lossy drill tampering every bill through the proxy while traffic flows; the kill
/// switch is pulled mid-stream. Returns (call ms, last tamper after the call in ms,
/// tampered before, tampered after the call returned).
fn kill_switch(
    a: &Args,
    dir: &Path,
    up: SocketAddr,
    proxy_rt: &tokio::runtime::Runtime,
    load_rt: &tokio::runtime::Runtime,
) -> Result<(u64, i64, u64, u64)> {
    let mut cfg = steadfast_server::Config {
        data_dir: dir.join("steadfast"),
        listen: "127.0.0.1:0".parse()?,
        ..steadfast_server::Config::default()
    };
    cfg.approvals.required = vec![];
    let rules = Arc::new(
        steadfast_verify::parse_rules(steadfast_server::DEFAULT_RULES)
            .map_err(|e| anyhow::anyhow!("{e}"))?,
    );
    let server = proxy_rt.block_on(steadfast_server::Server::start(cfg.clone(), rules, false))?;
    let base = format!("http://{}", server.addr);
    let admin = steadfast_server::bootstrap_admin_token(&cfg.data_dir, "bench")?;
    let (_, ptoken) = steadfast_server::auth::create_local_token(
        &cfg.data_dir,
        &steadfast_server::auth::TokenSpec::new(
            "proxy",
            "proxy",
            steadfast_server::auth::Role::Proxy,
        ),
        "bench",
        86_400,
    )?;
    let controller = steadfast_proxy::ControllerConfig::with_token(&base, ptoken);
    let proxy = proxy_rt.block_on(steadfast_proxy::Proxy::start(proxy_config(
        "kill",
        up,
        dir,
        Some(controller),
    )?))?;
    let via = format!("http://{}/v1/bills", proxy.addr);
    let result = load_rt.block_on(async {
        let http = reqwest::Client::new();
        let spec = "name = \"kill\"\nmode = \"lossy\"\nrules = [\"payment-bill\"]\nttl_secs = 600\ncorrection = { manual = true }\n[[faults]]\nkind = \"bill\"\nfield = \"amount\"\nmutation = { offset_minor = 1 }\nlimits = { hits_max = 1000000 }\n";
        let d: Value = http.post(format!("{base}/api/v1/drills")).bearer_auth(&admin).json(&json!({"spec": spec})).send().await?.json().await?;
        let id = d["id"].as_str().context("no drill id")?.to_string();
        http.post(format!("{base}/api/v1/drills/{id}/start")).bearer_auth(&admin).send().await?.error_for_status()?;
        while !proxy.running().contains(&id) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let traffic = tokio::spawn(load(via.clone(), a.kill_rate, 4, true));
        tokio::time::sleep(Duration::from_secs(2)).await;
        let before = proxy.counters().tampered;
        let sent_at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() as i64;
        let t = Instant::now();
        http.post(format!("{base}/api/v1/killswitch")).bearer_auth(&admin).json(&json!({"reason": "bench"})).send().await?.error_for_status()?;
        let call_ms = t.elapsed().as_millis() as u64;
        let at_return = proxy.counters().tampered;
        traffic.await??;
        let after = proxy.counters().tampered - at_return;
        // The drill's hits as the server stored them, with their wall-clock times.
        let deadline = Instant::now() + Duration::from_secs(20);
        let last = loop {
            let d: Value = http.get(format!("{base}/api/v1/drills/{id}")).bearer_auth(&admin).send().await?.json().await?;
            let hits = d["hits"].as_array().cloned().unwrap_or_default();
            if d["state"] != "running" && hits.len() as u64 >= at_return {
                break hits.iter().filter_map(|h| h["hit"]["at_ms"].as_i64()).max().unwrap_or(sent_at);
            }
            if Instant::now() > deadline {
                bail!("the drill did not end after the kill switch");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        Ok::<_, anyhow::Error>((call_ms, last - sent_at, before, after))
    });
    proxy_rt.block_on(proxy.stop());
    proxy_rt.block_on(server.shutdown());
    result
}
