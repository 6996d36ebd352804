//! `verify`: batch verification of an exported NDJSON file as `steadfast verify` does it, against
//! DuckDB doing the same reconciliation as a FULL OUTER JOIN.
//!
//! The file holds `--records / 2` orders with event times spread over an hour, in event
//! time order: each order's payment, and its bill 0 to 3 s later. 0.1% of the bills are
//! one cent off; one order in 2000 has no payment and another one in 2000 has no bill.
//! Steadfast is timed from opening the file to the last break, as `steadfast verify`
//! works: one thread reads and parses the file a block at a time while `BatchVerifier`
//! verifies the block before, with the rules of `examples/rules.toml`. DuckDB (through `python3`, when the `duckdb` module is installed) is timed around one
//! query that reads the same file and counts mismatched and one-sided keys. Both counts
//! must agree, and agree with what was generated.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::io::{BufWriter, Write as _};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};
use steadfast_verify::{parse_rules, BatchVerifier, BreakKind, Event, Limits, RuleSet};

use crate::ndjson::{self, group};

const RULES: &str = include_str!("../../../examples/rules.toml");
const RULE: &str = "payment-bill";
/// The first payment's event time; the last is an hour later.
const T0: i64 = 1_700_000_000_000;
const HOUR_MS: i64 = 3_600_000;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Records in the generated file: half payments, half bills (less the missing ones).
    #[arg(long, default_value_t = 2_000_000)]
    records: usize,
    /// Where to write the file (kept); a temporary directory, removed after the run, when absent.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

fn tampered(i: usize) -> bool {
    i % 1000 == 500
}
fn has_payment(i: usize) -> bool {
    i % 2000 != 1
}
fn has_bill(i: usize) -> bool {
    i % 2000 != 2
}

/// Keys found wrong, by way.
#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Counts {
    /// Keys with both records whose amount or currency differ.
    pub mismatched: u64,
    /// Keys with a payment and no bill.
    pub missing_bill: u64,
    /// Keys with a bill and no payment.
    pub missing_payment: u64,
}

impl Counts {
    pub fn total(&self) -> u64 {
        self.mismatched + self.missing_bill + self.missing_payment
    }
}

#[derive(Serialize)]
pub struct Report {
    pub bench: &'static str,
    pub profile: &'static str,
    pub records: u64,
    pub payments: u64,
    pub bills: u64,
    pub file_bytes: u64,
    /// Where the file was written when `--dir` was given.
    pub file: Option<PathBuf>,
    pub generate_seconds: f64,
    /// What the generator put in the file.
    pub expected: Counts,
    pub steadfast: Steadfast,
    /// `null` when DuckDB was not available.
    pub duckdb: Option<DuckDb>,
    pub duckdb_skipped: Option<String>,
    /// Steadfast records/s over DuckDB records/s, both end to end from the file.
    pub steadfast_over_duckdb: Option<f64>,
    /// Steadfast and DuckDB found the same numbers of mismatched and one-sided keys.
    pub agree: Option<bool>,
}

#[derive(Serialize)]
pub struct Steadfast {
    /// Threads at work: one parsing the file a block at a time, and the engine.
    pub threads: usize,
    /// From opening the file to the last break: reading, parsing, verifying.
    pub total_seconds: f64,
    /// Of that, the time the engine spent verifying; the rest it waited for the parser.
    pub engine_busy_seconds: f64,
    pub records_per_sec: f64,
    /// Records over `engine_busy_seconds`.
    pub engine_records_per_sec: f64,
    pub counts: Counts,
    pub machine_load: crate::cpu::LoadDelta,
    /// Open breaks of other rules or kinds, as `rule/kind` (none expected).
    pub other_breaks: BTreeMap<String, u64>,
    pub matches_generated: bool,
}

#[derive(Serialize, Deserialize)]
pub struct DuckDb {
    pub version: String,
    #[serde(default, skip_deserializing)]
    pub machine_load: Option<crate::cpu::LoadDelta>,
    pub threads: u64,
    /// The query from reading the file to the counts, timed in Python.
    pub seconds: f64,
    pub records_per_sec: f64,
    pub counts: Counts,
}

pub fn run(args: &Args) -> Result<Report> {
    ensure!(args.records >= 2, "--records must be at least 2");
    if cfg!(debug_assertions) {
        eprintln!("warning: this is a debug build; run with --release for meaningful figures");
    }
    let temp;
    let dir = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
            d.clone()
        }
        None => {
            temp = tempfile::Builder::new()
                .prefix("steadfast-bench-verify-")
                .tempdir()
                .context("creating a temporary directory")?;
            temp.path().to_path_buf()
        }
    };
    let path = dir.join("records.ndjson");

    eprintln!(
        "verify: writing {} records to {}...",
        group(args.records as u64),
        path.display()
    );
    let t = Instant::now();
    let generated = generate(&path, args.records / 2)?;
    let generate_seconds = t.elapsed().as_secs_f64();
    let file_bytes = std::fs::metadata(&path)?.len();

    let rules = Arc::new(parse_rules(RULES).context("examples/rules.toml")?);
    // As `steadfast verify`: no bound is reached on a file.
    let limits = Limits::unbounded_batch();
    eprintln!("verify: steadfast (read and parse || BatchVerifier)...");
    let load = crate::cpu::Load::take();
    let started = Instant::now();
    let (events, n, engine_busy_seconds) = verify_file(&path, rules, limits)?;
    let total_seconds = started.elapsed().as_secs_f64();
    let machine_load = crate::cpu::Load::take().since(&load, started.elapsed());
    ensure!(
        n == generated.records,
        "read {n} records, wrote {}",
        generated.records
    );
    let (counts, other_breaks) = count_breaks(&events);
    let steadfast = Steadfast {
        threads: 2,
        total_seconds,
        engine_busy_seconds,
        records_per_sec: n as f64 / total_seconds,
        engine_records_per_sec: n as f64 / engine_busy_seconds,
        counts,
        machine_load,
        other_breaks,
        matches_generated: counts == generated.expected,
    };

    let (duckdb, duckdb_skipped) = match duckdb_available() {
        Ok(()) => {
            eprintln!("verify: duckdb (read_ndjson, FULL OUTER JOIN)...");
            let load = crate::cpu::Load::take();
            let t = Instant::now();
            let mut d = run_duckdb(&path)?;
            d.machine_load = Some(crate::cpu::Load::take().since(&load, t.elapsed()));
            d.records_per_sec = n as f64 / d.seconds;
            (Some(d), None)
        }
        Err(why) => {
            println!("duckdb: skipped: {why}");
            (None, Some(why))
        }
    };
    let steadfast_over_duckdb = duckdb
        .as_ref()
        .map(|d| steadfast.records_per_sec / d.records_per_sec);
    let agree = duckdb.as_ref().map(|d| d.counts == steadfast.counts);
    Ok(Report {
        bench: "verify",
        profile: if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        records: n,
        payments: generated.payments,
        bills: generated.bills,
        file_bytes,
        file: args.dir.as_ref().map(|_| path.clone()),
        generate_seconds,
        expected: generated.expected,
        steadfast,
        duckdb,
        duckdb_skipped,
        steadfast_over_duckdb,
        agree,
    })
}

struct Generated {
    records: u64,
    payments: u64,
    bills: u64,
    expected: Counts,
}

/// Writes `orders` orders in event-time order.
fn generate(path: &Path, orders: usize) -> Result<Generated> {
    let pay_time = |i: usize| T0 + (i as i64 * HOUR_MS) / orders.max(1) as i64;
    // (event time, bill?, order)
    let mut events: Vec<(i64, bool, u32)> = Vec::with_capacity(2 * orders);
    let mut g = Generated {
        records: 0,
        payments: 0,
        bills: 0,
        expected: Counts::default(),
    };
    // Exactly `orders` payments and `orders` bills: one-sided orders are made up for by
    // a few more orders at the end.
    let target = orders as u64;
    for i in 0.. {
        if g.payments >= target && g.bills >= target {
            break;
        }
        let p = has_payment(i) && g.payments < target;
        let b = has_bill(i) && g.bills < target;
        let t = pay_time(i);
        if p {
            events.push((t, false, i as u32));
            g.payments += 1;
        }
        if b {
            events.push((t + (i as i64 * 37) % 3000, true, i as u32));
            g.bills += 1;
        }
        match (p, b) {
            (true, true) if tampered(i) => g.expected.mismatched += 1,
            (true, false) => g.expected.missing_bill += 1,
            (false, true) => g.expected.missing_payment += 1,
            _ => {}
        }
    }
    g.records = g.payments + g.bills;
    events.sort_unstable();
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut w = BufWriter::with_capacity(1 << 20, file);
    let mut line = String::with_capacity(512);
    for (t, is_bill, i) in events {
        line.clear();
        let i = i as usize;
        if is_bill {
            ndjson::bill(&mut line, i, t, tampered(i));
        } else {
            ndjson::payment(&mut line, i, t);
        }
        w.write_all(line.as_bytes())?;
    }
    w.flush()?;
    w.into_inner()
        .map_err(|e| e.into_error())?
        .sync_all()
        .context("syncing the generated file")?;
    Ok(g)
}

/// The NDJSON reading of `steadfast verify` (`crates/steadfast/src/input.rs`): the whole
/// file, parsed on every core.
/// What `steadfast verify FILE` does: the file parsed a block at a time on its own
/// thread while the engine verifies the block before. Returns the events, the records
/// read and the seconds the engine was busy.
fn verify_file(path: &Path, rules: Arc<RuleSet>, limits: Limits) -> Result<(Vec<Event>, u64, f64)> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut verifier = BatchVerifier::new(rules, limits);
    let mut busy = 0.0;
    for block in steadfast_model::wire::parse_ndjson_stream(file) {
        let block = block.with_context(|| format!("reading {}", path.display()))?;
        if let Some(e) = block.errors.first() {
            bail!("record {}: {}", e.index + 1, e.message);
        }
        let t = Instant::now();
        verifier.feed(block.records);
        busy += t.elapsed().as_secs_f64();
    }
    let n = verifier.records();
    let t = Instant::now();
    let events = verifier.finish();
    busy += t.elapsed().as_secs_f64();
    Ok((events, n, busy))
}

/// Open breaks of `payment-bill` as counts of keys, and every other open break by kind.
fn count_breaks(events: &[Event]) -> (Counts, BTreeMap<String, u64>) {
    let mut mismatched = HashSet::new();
    let mut missing_bill = HashSet::new();
    let mut missing_payment = HashSet::new();
    let mut other = BTreeMap::new();
    for (b, resolved) in steadfast_verify::breaks_with_resolution(events) {
        if resolved {
            continue;
        }
        let side = b.side.as_deref();
        match (b.rule.as_str(), b.kind, side) {
            (RULE, BreakKind::AmountMismatch | BreakKind::FieldMismatch, _) => {
                mismatched.insert(b.key.clone());
            }
            (RULE, BreakKind::MissingCounterpart, Some("right")) => {
                missing_bill.insert(b.key.clone());
            }
            (RULE, BreakKind::MissingCounterpart, Some("left")) => {
                missing_payment.insert(b.key.clone());
            }
            _ => {
                *other
                    .entry(format!("{}/{}", b.rule, b.kind.as_str()))
                    .or_default() += 1;
            }
        }
    }
    (
        Counts {
            mismatched: mismatched.len() as u64,
            missing_bill: missing_bill.len() as u64,
            missing_payment: missing_payment.len() as u64,
        },
        other,
    )
}

fn duckdb_available() -> Result<(), String> {
    match Command::new("python3")
        .args(["-c", "import duckdb"])
        .output()
    {
        Ok(o) if o.status.success() => Ok(()),
        Ok(_) => Err("duckdb not installed (pip install duckdb)".into()),
        Err(e) => Err(format!("duckdb not installed: python3 did not run: {e}")),
    }
}

/// Reads the file and reconciles payments with bills: the same keys, the same
/// comparison of amount and currency as the rule, successful payments only.
const DUCKDB_SCRIPT: &str = r#"
import json, sys, time
import duckdb

path = sys.argv[1].replace("'", "''")
con = duckdb.connect()
threads = int(con.execute("SELECT current_setting('threads')").fetchone()[0])
sql = f"""
WITH recs AS MATERIALIZED (
  SELECT source, kind, status, keys, amount, currency
  FROM read_ndjson('{path}', columns = {{
    'record_id': 'VARCHAR', 'source': 'VARCHAR', 'kind': 'VARCHAR',
    'keys': 'STRUCT(order_no VARCHAR, biz_id VARCHAR)',
    'amount': 'DECIMAL(18,2)', 'currency': 'VARCHAR', 'account': 'VARCHAR',
    'status': 'VARCHAR', 'event_time': 'BIGINT',
    'attributes': 'STRUCT(payer_account VARCHAR)'
  }})
),
p AS (
  SELECT keys.order_no AS k, amount, currency FROM recs
  WHERE source = 'payment-core' AND kind = 'payment' AND status = 'SUCCESS'
),
b AS (
  SELECT keys.biz_id AS k, amount, currency FROM recs
  WHERE source = 'billing' AND kind = 'bill'
)
SELECT
  count(*) FILTER (WHERE p.k IS NOT NULL AND b.k IS NOT NULL
                   AND (p.amount <> b.amount OR p.currency <> b.currency)),
  count(*) FILTER (WHERE b.k IS NULL),
  count(*) FILTER (WHERE p.k IS NULL)
FROM p FULL OUTER JOIN b ON p.k = b.k
"""
t = time.perf_counter()
mismatched, missing_bill, missing_payment = con.execute(sql).fetchone()
seconds = time.perf_counter() - t
print(json.dumps({
    "version": duckdb.__version__,
    "threads": threads,
    "seconds": seconds,
    "records_per_sec": 0.0,
    "counts": {
        "mismatched": mismatched,
        "missing_bill": missing_bill,
        "missing_payment": missing_payment,
    },
}))
"#;

fn run_duckdb(path: &Path) -> Result<DuckDb> {
    let out = Command::new("python3")
        .arg("-c")
        .arg(DUCKDB_SCRIPT)
        .arg(path)
        .output()
        .context("running python3")?;
    if !out.status.success() {
        bail!(
            "the DuckDB script failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last).with_context(|| format!("reading the DuckDB result {last:?}"))
}

fn counts_line(c: &Counts) -> String {
    format!(
        "{} mismatched, {} missing bill, {} missing payment = {}",
        group(c.mismatched),
        group(c.missing_bill),
        group(c.missing_payment),
        group(c.total())
    )
}

impl Report {
    pub fn table(&self) -> String {
        let mut s = String::new();
        let st = &self.steadfast;
        let _ = writeln!(
            s,
            "verify benchmark ({} build): {} records ({} payments, {} bills), {:.1} MiB of NDJSON",
            self.profile,
            group(self.records),
            group(self.payments),
            group(self.bills),
            self.file_bytes as f64 / (1024.0 * 1024.0)
        );
        let _ = writeln!(s);
        let _ = writeln!(s, "  {:<34} {:>10} {:>14}", "", "seconds", "records/s");
        let _ = writeln!(
            s,
            "  {:<34} {:>10.2} {:>14}",
            "steadfast: engine busy",
            st.engine_busy_seconds,
            group(st.engine_records_per_sec as u64)
        );
        let _ = writeln!(
            s,
            "  {:<34} {:>10.2} {:>14}",
            "steadfast: total (parse || verify)",
            st.total_seconds,
            group(st.records_per_sec as u64)
        );
        match &self.duckdb {
            Some(d) => {
                let _ = writeln!(
                    s,
                    "  {:<34} {:>10.2} {:>14}",
                    format!("duckdb {} ({} threads)", d.version, d.threads),
                    d.seconds,
                    group(d.records_per_sec as u64)
                );
                let _ = writeln!(
                    s,
                    "  {:<34} {:>10.2}",
                    "ratio steadfast / duckdb",
                    self.steadfast_over_duckdb.unwrap_or(f64::NAN)
                );
            }
            None => {
                let _ = writeln!(
                    s,
                    "  {:<34} skipped: {}",
                    "duckdb",
                    self.duckdb_skipped.as_deref().unwrap_or("not run")
                );
            }
        }
        let _ = writeln!(s);
        let _ = writeln!(s, "  {:<12} {}", "generated", counts_line(&self.expected));
        let _ = writeln!(
            s,
            "  {:<12} {}{}",
            "steadfast",
            counts_line(&st.counts),
            if st.matches_generated {
                ""
            } else {
                "  <- DIFFERS from what was generated"
            }
        );
        if !st.other_breaks.is_empty() {
            let _ = writeln!(s, "  {:<12} other breaks: {:?}", "", st.other_breaks);
        }
        if let Some(d) = &self.duckdb {
            let _ = writeln!(s, "  {:<12} {}", "duckdb", counts_line(&d.counts));
        }
        let _ = writeln!(
            s,
            "  {:<12} steadfast run: {}",
            "machine",
            st.machine_load.line()
        );
        if let Some(l) = self.duckdb.as_ref().and_then(|d| d.machine_load) {
            let _ = writeln!(
                s,
                "  {:<12} duckdb run (python start included): {}",
                "",
                l.line()
            );
        }
        let _ = writeln!(
            s,
            "  {:<12} {}",
            "agreement",
            match self.agree {
                Some(true) => "steadfast and duckdb AGREE",
                Some(false) => "steadfast and duckdb DISAGREE",
                None => "not checked (duckdb skipped)",
            }
        );
        s
    }
}
