//! `chain`: the data chain. Three figures, each against its target:
//!
//! 1. **Ingest**: OTLP/HTTP protobuf `ExportTraceServiceRequest`s of `--batch` spans,
//!    sent by `--clients` concurrent clients in this process to an in-process server (the
//!    load generator shares the machine, as the target says); a span counts once its
//!    request is acknowledged, that is once it is fsynced in the chain's WAL. Reported:
//!    spans/s, the ack latency, and CPU-seconds per million spans of the whole process
//!    (server and load generator together, so the figure is an upper bound).
//! 2. **Storage**: bytes per span in the `spans` table after compaction.
//! 3. **Journeys**: the store is grown to `--journey-spans` spans (appended to the store
//!    directly, through the same OTLP decoding), compacted, served again, and
//!    `GET /api/v1/journeys` is timed for `--journeys` users.
//!
//! The spans imitate the demo platform's: a payment request through gateway, payment core
//! and billing, seven spans with HTTP, database and user/order attributes, random ids.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use hdrhistogram::Histogram;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use steadfast_server::{Config, Server, DEFAULT_RULES};
use steadfast_store::chain::ChainStore;

use crate::cpu;
use crate::ndjson::group;

const INGEST_TARGET_SPANS_PER_SEC: f64 = 200_000.0;
const JOURNEY_TARGET_MS: f64 = 200.0;
const BYTES_PER_SPAN_TARGET: f64 = 60.0;
/// Spans in one of the generated traces.
const SPANS_PER_TRACE: usize = 7;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Spans sent over OTLP/HTTP.
    #[arg(long, default_value_t = 2_000_000)]
    spans: usize,
    /// Spans per request (the Python and Go SDKs batch 512).
    #[arg(long, default_value_t = 512)]
    batch: usize,
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Spans stored before the journey queries are timed.
    #[arg(long, default_value_t = 10_000_000)]
    journey_spans: usize,
    /// Distinct users the traces belong to.
    #[arg(long, default_value_t = 100_000)]
    users: usize,
    /// Journeys timed.
    #[arg(long, default_value_t = 50)]
    journeys: usize,
    #[arg(long, default_value_t = 7)]
    seed: u64,
}

fn kv(k: &str, v: impl Into<String>) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(v.into())),
        }),
    }
}

fn kv_int(k: &str, v: i64) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::IntValue(v)),
        }),
    }
}

/// `traces` demo-like traces starting at trace number `first`, as one request.
pub fn request(
    rng: &mut impl Rng,
    first: usize,
    traces: usize,
    users: usize,
    t0_ns: u64,
) -> ExportTraceServiceRequest {
    let mut by_service: Vec<(&str, Vec<Span>)> = vec![
        ("gateway", vec![]),
        ("payment-core", vec![]),
        ("billing", vec![]),
    ];
    for n in first..first + traces {
        let trace_id: [u8; 16] = rng.gen();
        let ids: Vec<[u8; 8]> = (0..SPANS_PER_TRACE).map(|_| rng.gen()).collect();
        let user = format!("user-{:06}", n % users);
        let order = format!("ORD-{n:09}");
        let t = t0_ns + n as u64 * 1_000_000;
        let mut ms = |a: u64| t + a * 1_000_000 + rng.gen_range(0..50_000);
        let mut span = |i: usize,
                        parent: Option<usize>,
                        name: &str,
                        kind: i32,
                        a: u64,
                        b: u64,
                        attrs: Vec<KeyValue>| Span {
            trace_id: trace_id.to_vec(),
            span_id: ids[i].to_vec(),
            parent_span_id: parent.map_or(vec![], |p| ids[p].to_vec()),
            name: name.into(),
            kind,
            start_time_unix_nano: ms(a),
            end_time_unix_nano: ms(b),
            attributes: attrs,
            ..Default::default()
        };
        let g = vec![
            span(
                0,
                None,
                "POST /v1/pay",
                2,
                0,
                40,
                vec![
                    kv("http.request.method", "POST"),
                    kv("url.path", "/v1/pay"),
                    kv_int("http.response.status_code", 200),
                    kv("user.id", user.clone()),
                    kv("order.id", order.clone()),
                ],
            ),
            span(
                1,
                Some(0),
                "POST payment-core /v1/pay",
                3,
                2,
                38,
                vec![
                    kv("server.address", "127.0.0.1"),
                    kv_int("server.port", 7431),
                ],
            ),
        ];
        let c = vec![
            span(
                2,
                Some(1),
                "POST /v1/pay",
                2,
                3,
                37,
                vec![
                    kv("http.request.method", "POST"),
                    kv("url.path", "/v1/pay"),
                    kv_int("http.response.status_code", 200),
                ],
            ),
            span(
                3,
                Some(2),
                "sqlite INSERT payments",
                3,
                4,
                9,
                vec![
                    kv("db.system.name", "sqlite"),
                    kv("db.operation.name", "INSERT payments"),
                ],
            ),
            span(
                4,
                Some(2),
                "POST billing /v1/bills",
                3,
                10,
                35,
                vec![
                    kv("server.address", "127.0.0.1"),
                    kv_int("server.port", 7433),
                ],
            ),
        ];
        let b = vec![
            span(
                5,
                Some(4),
                "POST /v1/bills",
                2,
                11,
                34,
                vec![
                    kv("http.request.method", "POST"),
                    kv("url.path", "/v1/bills"),
                    kv_int("http.response.status_code", 201),
                ],
            ),
            span(
                6,
                Some(5),
                "sqlite INSERT bills",
                3,
                12,
                20,
                vec![
                    kv("db.system.name", "sqlite"),
                    kv("db.operation.name", "INSERT bills"),
                ],
            ),
        ];
        by_service[0].1.extend(g);
        by_service[1].1.extend(c);
        by_service[2].1.extend(b);
    }
    ExportTraceServiceRequest {
        resource_spans: by_service
            .into_iter()
            .map(|(service, spans)| ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![
                        kv("service.name", service),
                        kv("service.namespace", "steadfast-demo"),
                    ],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            })
            .collect(),
    }
}

#[derive(Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

#[derive(Serialize)]
pub struct Report {
    pub bench: &'static str,
    pub profile: &'static str,
    pub spans: usize,
    pub batch_spans: usize,
    pub clients: usize,
    pub ingest_seconds: f64,
    pub spans_per_sec: f64,
    pub ingest_target_spans_per_sec: f64,
    pub ack_latency_ms: Latency,
    /// Whole process (server and load generator), per million spans acknowledged.
    pub cpu_seconds_per_million_spans: f64,
    pub retries: u64,
    pub stored_spans: usize,
    /// The ingested spans, after compaction: what bytes per span is measured on.
    pub storage_spans: usize,
    pub span_file_bytes: u64,
    pub bytes_per_span: f64,
    pub bytes_per_span_target: f64,
    pub journey_users: usize,
    pub journey_ms: Latency,
    pub journey_traces_mean: f64,
    pub journey_target_ms: f64,
}

impl Report {
    pub fn table(&self) -> String {
        let mut s = String::new();
        let mark = |ok: bool| if ok { "meets" } else { "MISSES" };
        let _ = writeln!(s, "data chain ({} build)", self.profile);
        let _ = writeln!(
            s,
            "  ingest   {} spans in {:.1} s: {:.0} spans/s ({} the {:.0} target), ack p50 {:.1} ms p99 {:.1} ms, {} retries",
            group(self.spans as u64), self.ingest_seconds, self.spans_per_sec,
            mark(self.spans_per_sec >= self.ingest_target_spans_per_sec), self.ingest_target_spans_per_sec,
            self.ack_latency_ms.p50, self.ack_latency_ms.p99, self.retries
        );
        let _ = writeln!(
            s,
            "  cpu      {:.2} CPU-seconds per million spans (server and load generator)",
            self.cpu_seconds_per_million_spans
        );
        let _ = writeln!(
            s,
            "  storage  {} spans in {} bytes: {:.1} B/span ({} the {:.0} target)",
            group(self.storage_spans as u64),
            group(self.span_file_bytes),
            self.bytes_per_span,
            mark(self.bytes_per_span <= self.bytes_per_span_target),
            self.bytes_per_span_target
        );
        let _ = writeln!(
            s,
            "  journey  {} users over {} spans: p50 {:.1} ms p99 {:.1} ms max {:.1} ms, {:.1} traces each ({} the {:.0} ms target)",
            self.journey_users, group(self.stored_spans as u64), self.journey_ms.p50, self.journey_ms.p99, self.journey_ms.max,
            self.journey_traces_mean, mark(self.journey_ms.p99 < self.journey_target_ms), self.journey_target_ms
        );
        s
    }
}

fn hist() -> Result<Histogram<u64>> {
    Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).context("latency histogram")
}

fn cpu_secs() -> f64 {
    let snap = cpu::Snapshot::take(None);
    snap.since(&cpu::Snapshot::default())
        .iter()
        .map(|(_, s)| s)
        .sum()
}

async fn start(dir: &std::path::Path) -> Result<(Server, String, String)> {
    let mut cfg = Config {
        data_dir: dir.to_path_buf(),
        listen: "127.0.0.1:0".parse().expect("a loopback address"),
        ..Config::default()
    };
    cfg.auth.requests_per_sec_per_token = 1_000_000;
    let rules =
        Arc::new(steadfast_verify::parse_rules(DEFAULT_RULES).map_err(|e| anyhow::anyhow!("{e}"))?);
    let server = Server::start(cfg, rules, false)
        .await
        .context("starting the server")?;
    let base = format!("http://{}", server.addr);
    let token = steadfast_server::bootstrap_admin_token(dir, "bench")?;
    Ok((server, base, token))
}

fn compact_all(store: &ChainStore) -> Result<()> {
    store.flush()?;
    while store.compact("spans", u64::MAX / 2)? > 0 {}
    Ok(())
}

pub fn run(args: &Args) -> Result<Report> {
    ensure!(
        args.batch >= SPANS_PER_TRACE,
        "--batch is at least {SPANS_PER_TRACE}"
    );
    ensure!(
        args.users >= 1 && args.clients >= 1,
        "--users and --clients are at least 1"
    );
    let dir = tempfile::Builder::new()
        .prefix("steadfast-bench-chain-")
        .tempdir()?;
    let traces_per_req = args.batch / SPANS_PER_TRACE;
    let requests = args.spans.div_ceil(traces_per_req * SPANS_PER_TRACE);
    let t0 = steadfast_server::pipeline::wall_ms() as u64 * 1_000_000 - 3_600_000_000_000;
    eprintln!(
        "chain: building {requests} requests of {} spans...",
        traces_per_req * SPANS_PER_TRACE
    );
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(args.seed);
    let bodies: Arc<Vec<Vec<u8>>> = Arc::new(
        (0..requests)
            .map(|r| {
                request(&mut rng, r * traces_per_req, traces_per_req, args.users, t0)
                    .encode_to_vec()
            })
            .collect(),
    );
    let spans = requests * traces_per_req * SPANS_PER_TRACE;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let (ingest_seconds, lat, retries, cpu) = rt.block_on(async {
        let (server, base, token) = start(dir.path()).await?;
        let next = Arc::new(AtomicUsize::new(0));
        let retries = Arc::new(AtomicU64::new(0));
        let cpu_before = cpu_secs();
        let started = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..args.clients {
            let (next, retries, bodies, url, token) = (
                next.clone(),
                retries.clone(),
                bodies.clone(),
                format!("{base}/v1/traces"),
                token.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let http = reqwest::Client::new();
                let mut h = hist()?;
                let tenth = (bodies.len() / 10).max(1);
                loop {
                    let j = next.fetch_add(1, Ordering::Relaxed);
                    let Some(body) = bodies.get(j) else { break };
                    let sent = Instant::now();
                    loop {
                        let r = http
                            .post(&url)
                            .bearer_auth(&token)
                            .header("content-type", "application/x-protobuf")
                            .body(body.clone())
                            .send()
                            .await?;
                        let status = r.status().as_u16();
                        let _ = r.bytes().await?;
                        match status {
                            200 => break,
                            429 | 503 => {
                                retries.fetch_add(1, Ordering::Relaxed);
                                tokio::time::sleep(Duration::from_millis(20)).await;
                            }
                            s => bail!("request {j}: HTTP {s}"),
                        }
                    }
                    h.saturating_record(sent.elapsed().as_micros() as u64);
                    if (j + 1) % tenth == 0 {
                        eprintln!("chain: {} of {} requests acknowledged", j + 1, bodies.len());
                    }
                }
                Ok::<_, anyhow::Error>(h)
            }));
        }
        let mut h = hist()?;
        for t in tasks {
            h.add(&t.await??)?;
        }
        let secs = started.elapsed().as_secs_f64();
        let cpu = cpu_secs() - cpu_before;
        server.shutdown().await;
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1e3;
        Ok::<_, anyhow::Error>((
            secs,
            Latency {
                p50: ms(0.5),
                p99: ms(0.99),
                max: h.max() as f64 / 1e3,
            },
            retries.load(Ordering::Relaxed),
            cpu,
        ))
    })?;
    drop(bodies);

    // Storage, then grow to the journey size through the same decoding.
    let chain_dir = dir.path().join("chain");
    let store = ChainStore::open(&chain_dir)?;
    let mut stored = store.stats().file_rows + store.stats().pending_rows;
    compact_all(&store)?;
    let span_bytes = |s: &ChainStore| -> Result<(u64, usize)> {
        let f = s.files_of("spans")?;
        Ok((
            f.iter().map(|f| f.bytes).sum(),
            f.iter().map(|f| f.rows).sum(),
        ))
    };
    let (bytes, rows) = span_bytes(&store)?;
    ensure!(rows == spans, "{rows} spans stored of {spans} acknowledged");
    let bytes_per_span = bytes as f64 / rows as f64;
    let mut n = requests * traces_per_req;
    let chunk = 100_000 / SPANS_PER_TRACE;
    while stored < args.journey_spans {
        let req = request(&mut rng, n, chunk, args.users, t0);
        n += chunk;
        let d = steadfast_chain::otlp::from_traces(req);
        stored += d.rows.spans.len();
        store.append_relaxed(d.rows)?;
        store.flush()?;
        if (stored / 100_000) % 10 == 0 {
            eprintln!(
                "chain: {} of {} spans stored",
                group(stored as u64),
                group(args.journey_spans as u64)
            );
        }
    }
    eprintln!("chain: compacting...");
    compact_all(&store)?;
    let (_, total_rows) = span_bytes(&store)?;
    drop(store);

    let (journey_ms, traces_mean) = rt.block_on(async {
        let (server, base, token) = start(dir.path()).await?;
        let http = reqwest::Client::new();
        let mut h = hist()?;
        let mut traces = 0usize;
        let mut pick = rand_chacha::ChaCha8Rng::seed_from_u64(args.seed + 1);
        for _ in 0..args.journeys {
            let user = format!("user-{:06}", pick.gen_range(0..args.users));
            let started = Instant::now();
            let r = http
                .get(format!("{base}/api/v1/journeys?user={user}&limit=200"))
                .bearer_auth(&token)
                .send()
                .await?;
            ensure!(
                r.status().as_u16() == 200,
                "journey of {user}: HTTP {}",
                r.status()
            );
            let v: serde_json::Value = r.json().await?;
            h.saturating_record(started.elapsed().as_micros() as u64);
            traces += v["traces"].as_array().map_or(0, |a| a.len());
        }
        server.shutdown().await;
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1e3;
        Ok::<_, anyhow::Error>((
            Latency {
                p50: ms(0.5),
                p99: ms(0.99),
                max: h.max() as f64 / 1e3,
            },
            traces as f64 / args.journeys.max(1) as f64,
        ))
    })?;
    Ok(Report {
        bench: "chain",
        profile: if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        spans,
        batch_spans: traces_per_req * SPANS_PER_TRACE,
        clients: args.clients,
        ingest_seconds,
        spans_per_sec: spans as f64 / ingest_seconds,
        ingest_target_spans_per_sec: INGEST_TARGET_SPANS_PER_SEC,
        ack_latency_ms: lat,
        cpu_seconds_per_million_spans: cpu / (spans as f64 / 1e6),
        retries,
        stored_spans: total_rows,
        storage_spans: rows,
        span_file_bytes: bytes,
        bytes_per_span,
        bytes_per_span_target: BYTES_PER_SPAN_TARGET,
        journey_users: args.journeys,
        journey_ms,
        journey_traces_mean: traces_mean,
        journey_target_ms: JOURNEY_TARGET_MS,
    })
}
