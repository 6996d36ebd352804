//! Steadfast's benchmarks.
//!
//! Each subcommand runs one benchmark, prints a human-readable table to stdout and writes
//! its figures as JSON, by default to `target/bench-results/<subcommand>.json` (relative
//! to the working directory), or wherever `--out` says.
//!
//! ```text
//! cargo run --release -p steadfast-bench -- engine [--open 1000000] [--ops 4000000] [--out FILE]
//! ```
//!
//! - `engine`: throughput of the verification engine on a 1:1 match rule with a fixed
//!   number of open records, against a bare hash map doing the same keyed work, and the
//!   engine's heap bytes per open record.

mod alloc;
mod engine;

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
}

impl Command {
    /// The name results are filed under.
    fn name(&self) -> &'static str {
        match self {
            Command::Engine(_) => "engine",
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
