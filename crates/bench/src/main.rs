//! Steadfast's benchmarks.
//!
//! Each subcommand runs one benchmark, prints a human-readable table to stdout and writes
//! its figures as JSON, by default to `target/bench-results/<subcommand>.json` (relative
//! to the working directory), or wherever `--out` says.
//!
//! ```text
//! cargo run --release -p steadfast-bench -- engine [--open 1000000] [--ops 4000000] [--out FILE]
//! cargo run --release -p steadfast-bench -- http [--records 2000000] [--batch 1000] [--clients 8]
//! cargo run --release -p steadfast-bench -- verify [--records 2000000] [--dir DIR]
//! cargo run --release -p steadfast-bench -- restart [--records 10000000]
//! cargo run --release -p steadfast-bench -- demo [--rate 2500] [--secs 30]
//! cargo run --release -p steadfast-bench -- drill [--faults 1000] [--background-rate 20000]
//! cargo run --release -p steadfast-bench -- chain [--spans 2000000] [--journey-spans 10000000]
//! cargo run --release -p steadfast-bench -- nab ../shared/data/nab [--results DIR]
//! cargo run --release -p steadfast-bench -- petshop ../shared/data/petshop [--split test]
//! cargo run --release -p steadfast-bench -- insight-speed [--points 10000000] [--series 1000]
//! cargo run --release -p steadfast-bench -- dashboard [--rate 800] [--reps 20] [--hold-secs 0]
//! ```
//!
//! - `engine`: throughput of the verification engine on a 1:1 match rule with a fixed
//!   number of open records, against a bare hash map doing the same keyed work, and the
//!   engine's heap bytes per open record.
//! - `http`: end-to-end ingest through the HTTP API of an in-process server: acknowledged
//!   records per second, ack latency, records per WAL fsync, detection latency.
//! - `verify`: `verify_batch` over a generated NDJSON export, reading and parsing
//!   included, against the same reconciliation in DuckDB (when `python3 -c "import
//!   duckdb"` works).
//! - `demo`: the demo platform at a flat offered rate while Steadfast verifies it:
//!   payments completed per second, records verified per second, verification lag.
//! - `drill`: lossless drills against an in-process server under real traffic: time to
//!   detect per fault, found on arrival and found at the lateness deadline.
//! - `chain`: OTLP/HTTP span ingest (spans/s, CPU-seconds per million spans), bytes per
//!   span after compaction, and journey query latency over a large store.
//! - `nab`, `petshop`, `insight-speed`: the detector on NAB (fixed threshold, best
//!   threshold, ablation, published detectors), root-cause ranking on PetShop, and the
//!   speed of both (see `insight.rs`).
//! - `dashboard`: every dashboard page's server-side time with the demo's data after an
//!   hour of its traffic (see `dashboard.rs`).
//! - `restart`: time from SIGKILL of a loaded server (run as a child process) to its
//!   replacement answering `/healthz`.

mod alloc;
mod chain;
mod cpu;
mod dashboard;
mod demo;
mod drill;
mod engine;
mod http;
mod insight;
mod ndjson;
mod prom;
mod proxy;
mod restart;
mod verify;

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use serde::Serialize;

#[global_allocator]
static ALLOC: alloc::Counting = alloc::Counting;

#[derive(Parser, Debug)]
#[command(name = "steadfast-bench", about = "Steadfast's benchmarks", version)]
struct Cli {
    /// Where to write the JSON result [default: target/bench-results/<subcommand>.json]
    #[arg(long, value_name = "FILE", global = true)]
    out: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Engine ingest throughput against a bare hash map, and heap bytes per open record.
    Engine(engine::Args),
    /// End-to-end HTTP ingest into an in-process server: records/s, ack and detection latency.
    Http(http::Args),
    /// Batch verification of an NDJSON file, against DuckDB when it is installed.
    Verify(verify::Args),
    /// The demo platform under load while Steadfast verifies it: payments/s, records/s.
    Demo(demo::Args),
    /// Time from a SIGKILLed server to a ready one, after a large ingest.
    Restart(restart::Args),
    /// Lossless drills while real traffic flows: time to detect per fault.
    Drill(drill::Args),
    /// The fault-injection proxy: added latency next to a direct connection and nginx, and
    /// the time from the kill switch to the last tampered request.
    Proxy(proxy::Args),
    /// The data chain: OTLP span ingest, bytes per span, journey latency.
    Chain(chain::Args),
    /// Steadfast's detector on a NAB-layout folder, next to the published detectors.
    Nab(insight::NabArgs),
    /// Root-cause ranking on the PetShop dataset: top-k recall and specificity.
    Petshop(insight::PetshopArgs),
    /// Baseline updates per second and root-cause analysis time per incident.
    InsightSpeed(insight::SpeedArgs),
    /// The web dashboard's pages: server-side time with the demo's data after an hour.
    Dashboard(dashboard::Args),
    /// The server the `restart` benchmark runs and kills (internal).
    #[command(hide = true)]
    ServeChild(restart::ChildArgs),
}

impl Command {
    /// The name results are filed under.
    fn name(&self) -> &'static str {
        match self {
            Command::Engine(_) => "engine",
            Command::Http(_) => "http",
            Command::Verify(_) => "verify",
            Command::Restart(_) => "restart",
            Command::Demo(_) => "demo",
            Command::Drill(_) => "drill",
            Command::Proxy(_) => "proxy",
            Command::Chain(_) => "chain",
            Command::Nab(_) => "nab",
            Command::Petshop(_) => "petshop",
            Command::InsightSpeed(_) => "insight-speed",
            Command::Dashboard(_) => "dashboard",
            Command::ServeChild(_) => "serve-child",
        }
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let out = cli
        .out
        .clone()
        .unwrap_or_else(|| default_out(cli.command.name()));
    match &cli.command {
        Command::Engine(args) => {
            let report = engine::run(args)?;
            print!("{}", report.table());
            write_result(&out, &report)?;
        }
        Command::Http(args) => {
            let report = http::run(args)?;
            print!("{}", report.table());
            write_result(&out, &report)?;
        }
        Command::Verify(args) => {
            let report = verify::run(args)?;
            print!("{}", report.table());
            write_result(&out, &report)?;
        }
        Command::Restart(args) => {
            let report = restart::run(args)?;
            print!("{}", report.table());
            write_result(&out, &report)?;
        }
        Command::Demo(args) => {
            let report = demo::run(args)?;
            print!("{}", report.table());
            write_result(&out, &report)?;
        }
        Command::Drill(args) => {
            let report = drill::run(args)?;
            print!("{}", report.table());
            write_result(&out, &report)?;
        }
        Command::Proxy(args) => {
            let report = proxy::run(args)?;
            print!("{}", report.table());
            write_result(&out, &report)?;
        }
        Command::Chain(args) => {
            let report = chain::run(args)?;
            print!("{}", report.table());
            write_result(&out, &report)?;
        }
        Command::Nab(args) => {
            let report = insight::nab(args)?;
            print!("{}", report.table());
            write_result(&out, &report)?;
        }
        Command::Petshop(args) => {
            let report = insight::petshop(args)?;
            print!("{}", report.table());
            write_result(&out, &report)?;
        }
        Command::InsightSpeed(args) => {
            let report = insight::speed(args)?;
            print!("{}", report.table());
            write_result(&out, &report)?;
        }
        Command::Dashboard(args) => {
            let report = dashboard::run(args)?;
            print!("{}", report.table());
            write_result(&out, &report)?;
        }
        Command::ServeChild(args) => return restart::serve_child(args),
    }
    println!("\nresults written to {}", out.display());
    Ok(())
}

fn default_out(bench: &str) -> PathBuf {
    Path::new("target")
        .join("bench-results")
        .join(format!("{bench}.json"))
}

/// Writes a benchmark's result as pretty JSON, creating the parent directories.
fn write_result(path: &Path, result: &impl Serialize) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut json = serde_json::to_string_pretty(result).context("serializing the result")?;
    json.push('\n');
    fs::write(path, json).with_context(|| format!("writing {}", path.display()))
}
