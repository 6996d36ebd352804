//! `restart`: time from a crash to a ready server.
//!
//! The server runs in a child process (this binary's hidden `serve-child` subcommand) on a
//! temporary data directory with the default configuration, checkpoints included. The
//! parent ingests `--records` records over HTTP as fast as it can (the `http` benchmark's
//! clients and bodies), then kills the child with SIGKILL right after the last
//! acknowledgement, with no clean shutdown and no final checkpoint. It then starts a new
//! child on the same directory and measures from the spawn to the first 200 answer of
//! `/healthz`; the server binds its listener only once recovery (checkpoint restore and
//! WAL replay) is done. Afterwards it checks that the recovered engine has seen every
//! acknowledged record, and counts what the WAL held.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde::Serialize;
use steadfast_server::{Config, Server, DEFAULT_RULES};
use steadfast_store::{Wal, WalItem};
use steadfast_verify::parse_rules;

use crate::http::{self, latency_line, Ingested, Plan};
use crate::ndjson::group;
use crate::prom::Scrape;

/// Seconds from spawn to ready at or below this meet the target.
const READY_TARGET_SECS: f64 = 10.0;
/// Longest wait for a child to answer `/healthz`.
const READY_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Records to ingest before the crash: half payments, half bills.
    #[arg(long, default_value_t = 10_000_000)]
    records: usize,
    /// Records per request.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Concurrent HTTP clients.
    #[arg(long, default_value_t = 8)]
    clients: usize,
}

#[derive(clap::Args, Debug)]
pub struct ChildArgs {
    #[arg(long, value_name = "DIR")]
    data_dir: PathBuf,
    #[arg(long)]
    port: u16,
}

/// The child: a server with the default configuration on `127.0.0.1:PORT`, until killed.
pub fn serve_child(args: &ChildArgs) -> Result<()> {
    // The server's own log (recovery reports how much it replayed and how long it took).
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async {
        let cfg = Config {
            data_dir: args.data_dir.clone(),
            listen: ([127, 0, 0, 1], args.port).into(),
            ..Config::default()
        };
        let rules = Arc::new(parse_rules(DEFAULT_RULES).context("the default rules")?);
        let _server = Server::start(cfg, rules, false)
            .await
            .context("starting the server")?;
        std::future::pending::<()>().await;
        Ok(())
    })
}

/// A child server, SIGKILLed when dropped.
struct ChildServer(Child);

impl ChildServer {
    /// Starts a child; its log goes to `log`.
    fn spawn(data_dir: &Path, port: u16, log: &Path) -> Result<ChildServer> {
        let exe = std::env::current_exe().context("locating this executable")?;
        let log =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let child = Command::new(exe)
            .arg("serve-child")
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--port")
            .arg(port.to_string())
            .stdin(Stdio::null())
            .stderr(log)
            .spawn()
            .context("spawning the server child")?;
        Ok(ChildServer(child))
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }

    /// SIGKILL, then reap.
    fn kill(&mut self) -> Result<()> {
        self.0.kill().context("killing the server child")?;
        self.0.wait().context("reaping the server child")?;
        Ok(())
    }

    /// Polls `/healthz` until it answers 200.
    async fn wait_ready(&mut self, base: &str) -> Result<()> {
        // A fresh connection per poll: nothing pooled from an earlier server.
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(2))
            .build()?;
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.0.try_wait()? {
                bail!("the server child exited during startup: {status}");
            }
            if let Ok(r) = http.get(format!("{base}/healthz")).send().await {
                if r.status().is_success() {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!("the server child was not ready within {READY_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[derive(Serialize)]
pub struct Report {
    pub bench: &'static str,
    pub profile: &'static str,
    pub records: usize,
    pub batch_records: usize,
    pub clients: usize,
    /// The first start, on an empty directory.
    pub first_start_seconds: f64,
    pub ingest: Ingested,
    pub at_kill: AtKill,
    pub wal: WalContents,
    pub restart: Restart,
    pub ready_seconds: Target,
    /// Machine CPU during the ingest, and from the second spawn until the child was killed.
    pub machine_load_ingest: crate::cpu::LoadDelta,
    pub machine_load_restart: crate::cpu::LoadDelta,
    /// CPU seconds of the first server's threads over its life (the ingest), busiest first.
    pub server_cpu_seconds_by_thread: Vec<(String, f64)>,
    /// CPU seconds of the restarted server's threads when it became ready (recovery).
    pub recovery_cpu_seconds_by_thread: Vec<(String, f64)>,
    /// The restarted server's own report of its WAL replay ("replayed the WAL tail").
    pub replay_log: Option<ReplayLog>,
}

#[derive(Serialize)]
pub struct ReplayLog {
    pub records: u64,
    pub seconds: f64,
}

#[derive(Serialize)]
pub struct AtKill {
    /// Records the engine had applied when the last ack arrived (from `/metrics`).
    pub engine_applied_records: u64,
    pub wal_segments: usize,
    pub wal_bytes: u64,
    /// The WAL sequence number the last checkpoint covers; `None` when there was none.
    pub checkpoint_seq: Option<u64>,
    pub checkpoint_bytes: u64,
}

/// What the WAL held at the crash, counted after the restart was timed.
#[derive(Serialize)]
pub struct WalContents {
    pub entries: u64,
    pub records: u64,
    /// Records after the checkpoint: what recovery had to replay.
    pub records_after_checkpoint: u64,
    pub entries_after_checkpoint: u64,
}

#[derive(Serialize)]
pub struct Restart {
    /// `records_seen` of `/api/v1/status` after recovery.
    pub records_seen: u64,
    pub wal_seq_applied: u64,
    /// Every acknowledged record was recovered.
    pub all_acknowledged_recovered: bool,
}

#[derive(Serialize)]
pub struct Target {
    pub value: f64,
    pub target: f64,
    pub met: bool,
}

pub fn run(args: &Args) -> Result<Report> {
    if cfg!(debug_assertions) {
        eprintln!("warning: this is a debug build; run with --release for meaningful figures");
    }
    eprintln!(
        "restart: building {} records in bodies of {}...",
        group(args.records as u64),
        args.batch
    );
    let plan = Arc::new(Plan::build(args.records, args.batch)?);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(run_async(args, plan))
}

async fn run_async(args: &Args, plan: Arc<Plan>) -> Result<Report> {
    let dir = tempfile::Builder::new()
        .prefix("steadfast-bench-restart-")
        .tempdir()
        .context("creating a temporary directory")?;
    let data = dir.path().join("data");
    let token = steadfast_server::bootstrap_admin_token(&data, "bench")?;
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
        l.local_addr()?.port()
    };
    let base = format!("http://127.0.0.1:{port}");

    let first_log = dir.path().join("server-1.log");
    let second_log = dir.path().join("server-2.log");
    let t = Instant::now();
    let mut child = ChildServer::spawn(&data, port, &first_log)?;
    child.wait_ready(&base).await?;
    let first_start_seconds = t.elapsed().as_secs_f64();

    eprintln!(
        "restart: sending {} records with {} clients...",
        group(plan.records as u64),
        args.clients
    );
    let load = crate::cpu::Load::take_with(&[child.pid()]);
    let t = Instant::now();
    let ingest = http::ingest(&base, &token, plan.clone(), args.clients, None, "restart").await?;
    let machine_load_ingest = crate::cpu::Load::take_with(&[child.pid()]).since(&load, t.elapsed());
    drop(plan);
    let http = reqwest::Client::new();
    let applied = Scrape::fetch(&http, &base)
        .await?
        .sum("steadfast_records_ingested_total", &[]) as u64;
    let server_cpu_seconds_by_thread =
        crate::cpu::Snapshot::take(Some(child.pid())).since(&crate::cpu::Snapshot::default());
    child.kill()?;
    drop(http);

    // Only metadata and the checkpoint's header before the timed start: no data is read.
    let wal_dir = data.join("wal");
    let (wal_segments, wal_bytes) = dir_size(&wal_dir)?;
    let ckpt = data.join("checkpoint").join("checkpoint");
    let checkpoint_seq = checkpoint_seq(&ckpt)?;
    let checkpoint_bytes = std::fs::metadata(&ckpt).map(|m| m.len()).unwrap_or(0);

    eprintln!("restart: killed the server; starting it again...");
    let load = crate::cpu::Load::take();
    let t = Instant::now();
    let mut child = ChildServer::spawn(&data, port, &second_log)?;
    child.wait_ready(&base).await?;
    let ready = t.elapsed().as_secs_f64();
    let recovery_cpu_seconds_by_thread =
        crate::cpu::Snapshot::take(Some(child.pid())).since(&crate::cpu::Snapshot::default());

    let http = reqwest::Client::new();
    let status: serde_json::Value = http
        .get(format!("{base}/api/v1/status"))
        .bearer_auth(&token)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    child.kill()?;
    let machine_load_restart = crate::cpu::Load::take().since(&load, t.elapsed());
    let records_seen = status["records_seen"].as_u64().unwrap_or(0);
    let wal_seq_applied = status["wal_seq_applied"].as_u64().unwrap_or(0);

    let after = checkpoint_seq.unwrap_or(0);
    let mut wal = WalContents {
        entries: 0,
        records: 0,
        records_after_checkpoint: 0,
        entries_after_checkpoint: 0,
    };
    Wal::read_all(&wal_dir, |e| {
        let n = match &e.item {
            WalItem::Batch(r) => r.len() as u64,
            WalItem::Tick => 0,
        };
        wal.entries += 1;
        wal.records += n;
        if e.seq > after {
            wal.entries_after_checkpoint += 1;
            wal.records_after_checkpoint += n;
        }
    })
    .context("reading the WAL")?;
    let log = std::fs::read_to_string(&second_log).unwrap_or_default();
    let replay_log = replay_line(&log);
    if let Ok(first) = std::fs::read_to_string(&first_log) {
        for line in first
            .lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        {
            eprintln!("restart: first server: {line}");
        }
    }
    for line in log
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
    {
        eprintln!("restart: restarted server: {line}");
    }
    ensure!(
        wal_seq_applied > 0,
        "the restarted server reports no applied WAL entry"
    );

    Ok(Report {
        bench: "restart",
        profile: if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        records: args.records,
        batch_records: args.batch,
        clients: args.clients,
        first_start_seconds,
        at_kill: AtKill {
            engine_applied_records: applied,
            wal_segments,
            wal_bytes,
            checkpoint_seq,
            checkpoint_bytes,
        },
        wal,
        restart: Restart {
            records_seen,
            wal_seq_applied,
            all_acknowledged_recovered: records_seen >= ingest.records,
        },
        ingest,
        ready_seconds: Target {
            value: ready,
            target: READY_TARGET_SECS,
            met: ready <= READY_TARGET_SECS,
        },
        machine_load_ingest,
        machine_load_restart,
        server_cpu_seconds_by_thread,
        recovery_cpu_seconds_by_thread,
        replay_log,
    })
}

/// `... replayed the WAL tail records=N ms=M` from the server's log.
fn replay_line(log: &str) -> Option<ReplayLog> {
    let line = log.lines().find(|l| l.contains("replayed the WAL tail"))?;
    let field = |name: &str| -> Option<u64> {
        let at = line.find(&format!("{name}="))? + name.len() + 1;
        line[at..]
            .split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    };
    Some(ReplayLog {
        records: field("records")?,
        seconds: field("ms")? as f64 / 1e3,
    })
}

fn dir_size(dir: &Path) -> Result<(usize, u64)> {
    let mut n = 0;
    let mut bytes = 0;
    for e in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let e = e?;
        n += 1;
        bytes += e.metadata()?.len();
    }
    Ok((n, bytes))
}

/// The sequence number in a checkpoint's header (magic, then `seq` little-endian).
fn checkpoint_seq(path: &Path) -> Result<Option<u64>> {
    use std::io::Read;
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
    };
    let mut head = [0u8; 16];
    f.read_exact(&mut head)
        .with_context(|| format!("reading {}", path.display()))?;
    ensure!(
        &head[..8] == b"SFCKPT01",
        "{} is not a checkpoint",
        path.display()
    );
    Ok(Some(u64::from_le_bytes(
        head[8..].try_into().expect("8 bytes"),
    )))
}

impl Report {
    pub fn table(&self) -> String {
        let mut s = String::new();
        let i = &self.ingest;
        let k = &self.at_kill;
        let w = &self.wal;
        let r = &self.restart;
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        let _ = writeln!(
            s,
            "restart benchmark ({} build): {} records ingested over HTTP, then SIGKILL",
            self.profile,
            group(i.records)
        );
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "  {:<30} {} records in {:.2} s = {} records/s; {}",
            "ingest (acknowledged)",
            group(i.records),
            i.seconds,
            group(i.records_per_sec as u64),
            latency_line(&i.batch_ack_latency_ms)
        );
        if !i.retries.is_empty() {
            let _ = writeln!(s, "  {:<30} {:?}", "retried answers by status", i.retries);
        }
        let _ = writeln!(
            s,
            "  {:<30} engine had applied {} records; WAL {} segments, {:.0} MiB; checkpoint at seq {}, {:.0} MiB",
            "at the kill",
            group(k.engine_applied_records),
            k.wal_segments,
            mib(k.wal_bytes),
            k.checkpoint_seq
                .map(|s| s.to_string())
                .unwrap_or_else(|| "none".into()),
            mib(k.checkpoint_bytes)
        );
        let _ = writeln!(
            s,
            "  {:<30} {} records in {} entries; {} records ({} entries) after the checkpoint to replay",
            "WAL contents",
            group(w.records),
            group(w.entries),
            group(w.records_after_checkpoint),
            group(w.entries_after_checkpoint)
        );
        let _ = writeln!(
            s,
            "  {:<30} {:.2} s   target <= {:.0} s: {}",
            "spawn to /healthz 200",
            self.ready_seconds.value,
            self.ready_seconds.target,
            if self.ready_seconds.met {
                "MET"
            } else {
                "NOT MET"
            }
        );
        if let Some(l) = &self.replay_log {
            let _ = writeln!(
                s,
                "  {:<30} the server replayed {} records in {:.2} s; the other {:.2} s: process start, checkpoint read and restore, break store",
                "of which",
                group(l.records),
                l.seconds,
                self.ready_seconds.value - l.seconds
            );
        }
        let threads = |v: &[(String, f64)]| {
            v.iter()
                .take(5)
                .map(|(n, c)| format!("{n} {c:.1} s"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(
            s,
            "  {:<30} ingest: {}",
            "server CPU by thread",
            threads(&self.server_cpu_seconds_by_thread)
        );
        let _ = writeln!(
            s,
            "  {:<30} recovery: {}",
            "",
            threads(&self.recovery_cpu_seconds_by_thread)
        );
        let _ = writeln!(
            s,
            "  {:<30} records_seen {} (acknowledged {}): {}; wal_seq_applied {}",
            "after recovery",
            group(r.records_seen),
            group(i.records),
            if r.all_acknowledged_recovered {
                "all recovered"
            } else {
                "RECORDS LOST"
            },
            r.wal_seq_applied
        );
        let _ = writeln!(
            s,
            "  {:<30} {:.2} s",
            "first start (empty dir)", self.first_start_seconds
        );
        let _ = writeln!(
            s,
            "  {:<30} ingest: {}",
            "machine",
            self.machine_load_ingest.line()
        );
        let _ = writeln!(
            s,
            "  {:<30} restart: {}",
            "",
            self.machine_load_restart.line()
        );
        s
    }
}
