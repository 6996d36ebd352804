//! `engine`: the verification engine's hot path, measured against a bare hash map doing
//! the same amount of keyed work, plus the engine's memory per open record.
//!
//! The workload is the 1:1 `payment-bill` rule of `examples/rules.toml` with a fixed
//! number of open (unmatched) payments. Each op feeds the bill of the oldest open payment,
//! which closes that key, and one new payment, which opens another, so the open set stays
//! at `--open` for the whole measurement. Every record is built before the clock starts.
//! Engine time never advances and `tick` is never called, so no deadline fires and no
//! record id expires: what is timed is `ingest` and nothing else.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use hdrhistogram::Histogram;
use serde::Serialize;
use steadfast_model::{Currency, FundRecord, Millis, Money};
use steadfast_verify::{parse_rules, Engine, Event, Limits, Loc};

use crate::alloc;

const RULES: &str = include_str!("../../../examples/rules.toml");
const RULE: &str = "payment-bill";
/// Engine time and every record's event time. Constant, so nothing becomes due.
const T0: Millis = 1_700_000_000_000;
/// A throughput ratio (engine / bare map) at or above this meets the target.
const RATIO_TARGET: f64 = 0.5;
/// Heap bytes per open record at or below this meet the target.
const BYTES_PER_OPEN_TARGET: f64 = 256.0;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Open (unmatched) payments held by the engine throughout the measurement.
    #[arg(long, default_value_t = 1_000_000)]
    open: usize,
    /// Measured ops; each feeds two records (a closing bill and a new payment).
    #[arg(long, default_value_t = 4_000_000)]
    ops: usize,
    /// Records per `ingest` call.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
}

#[derive(Serialize)]
pub struct Report {
    pub bench: &'static str,
    pub profile: &'static str,
    pub rule: &'static str,
    pub open: usize,
    pub ops: usize,
    pub batch_records: usize,
    pub engine: EngineThroughput,
    pub bare: Throughput,
    pub ratio: Target,
    pub memory: Memory,
    pub checkpoint: Checkpoint,
}

#[derive(Serialize)]
pub struct Checkpoint {
    pub open_keys: usize,
    /// Matched keys still held (the run keeps every one; the server keeps up to
    /// `closed_keys_max`).
    pub closed_keys: usize,
    /// How long `Engine::copy_state` holds the engine thread.
    pub copy_ms: f64,
    /// How long serializing the copy takes (on the store thread in the server).
    pub serialize_ms: f64,
    pub bytes: usize,
}

#[derive(Serialize)]
pub struct Throughput {
    /// Records processed in the timed loop (two per op).
    pub records: u64,
    pub seconds: f64,
    pub records_per_sec: f64,
}

#[derive(Serialize)]
pub struct EngineThroughput {
    #[serde(flatten)]
    pub throughput: Throughput,
    /// Wall time of one `ingest` call of `batch_records` records, in microseconds.
    pub batch_latency_us: Latency,
    /// Events the timed loop produced; every bill agrees with its payment, so 0.
    pub events: usize,
    /// Heap allocation calls per record once warm (one extra batch after the timed loop).
    pub steady_allocations_per_record: f64,
    /// Net heap growth per record once warm: what each matched key leaves behind.
    pub steady_heap_bytes_per_record: f64,
}

#[derive(Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

#[derive(Serialize)]
pub struct Target {
    pub value: f64,
    pub target: f64,
    pub met: bool,
}

#[derive(Serialize)]
pub struct Memory {
    pub open_records: usize,
    /// Live heap growth from before `Engine::new` to after the last payment was ingested.
    pub heap: alloc::HeapDelta,
    pub allocations_per_record: f64,
    pub bytes_per_open_record: Target,
}

pub fn run(args: &Args) -> Result<Report> {
    ensure!(args.open > 0, "--open must be at least 1");
    ensure!(args.ops > 0, "--ops must be at least 1");
    ensure!(
        args.batch >= 2 && args.batch % 2 == 0,
        "--batch must be an even number of records, at least 2"
    );
    if cfg!(debug_assertions) {
        eprintln!("warning: this is a debug build; run with --release for meaningful figures");
    }
    let (n, ops) = (args.open, args.ops);
    let gen = Gen {
        usd: Currency::from_code("USD").context("USD is an ISO 4217 currency")?,
    };
    let rules = Arc::new(parse_rules(RULES).context("examples/rules.toml")?);
    // Room for everything the run adds, so nothing is evicted or refused mid-measurement.
    let room = (n + 2 * ops + 2 * args.batch).max(20_000_000);
    let limits = Limits {
        open_records_max: room,
        batch_records_max: args.batch,
        record_ids_max: room,
        closed_keys_max: room,
        ..Limits::default()
    };

    // 1. Memory: fill a fresh engine with N open payments, counting the heap it keeps.
    progress(format_args!("building {} payments", group(n as u64)));
    let prefill: Vec<FundRecord> = (0..n).map(|i| gen.payment(i)).collect();
    let mut feeder = Feeder {
        out: Vec::new(),
        loc: 0,
        events: 0,
    };
    progress(format_args!(
        "filling the engine with {} open payments",
        group(n as u64)
    ));
    let (mut engine, heap) = alloc::measure(|| {
        let mut engine = Engine::new(rules.clone(), limits.clone());
        for chunk in prefill.chunks(args.batch) {
            feeder.ingest(&mut engine, chunk);
        }
        engine
    });
    drop(prefill);
    ensure!(
        feeder.events == 0,
        "filling the engine produced {} events; expected none",
        feeder.events
    );
    ensure!(
        engine.open_records() == n,
        "engine holds {} open records after the fill, not {n}",
        engine.open_records()
    );
    let per_open = heap.live_bytes as f64 / n as f64;
    let memory = Memory {
        open_records: n,
        heap,
        allocations_per_record: heap.allocations as f64 / n as f64,
        bytes_per_open_record: Target {
            value: per_open,
            target: BYTES_PER_OPEN_TARGET,
            met: per_open <= BYTES_PER_OPEN_TARGET,
        },
    };

    // 2. Engine throughput, with the open set held at N.
    let probe_ops = args.batch / 2;
    progress(format_args!(
        "building {} records",
        group(2 * (ops + probe_ops) as u64)
    ));
    let mut records = Vec::with_capacity(2 * (ops + probe_ops));
    for i in 0..ops + probe_ops {
        records.push(gen.bill(i));
        records.push(gen.payment(n + i));
    }
    let (timed, probe) = records.split_at(2 * ops);
    progress(format_args!("timing the engine: {} ops", group(ops as u64)));
    // Nanoseconds, from 1 ns to an hour, at 3 significant digits.
    let mut hist =
        Histogram::<u64>::new_with_bounds(1, 3_600_000_000_000, 3).context("latency histogram")?;
    let start = Instant::now();
    for chunk in timed.chunks(args.batch) {
        let t = Instant::now();
        feeder.ingest(&mut engine, chunk);
        hist.saturating_record(t.elapsed().as_nanos() as u64);
    }
    let engine_elapsed = start.elapsed();
    ensure!(
        feeder.events == 0,
        "the timed loop produced {} events; every bill should match",
        feeder.events
    );
    ensure!(
        engine.open_records() == n,
        "engine holds {} open records after the run, not {n}",
        engine.open_records()
    );
    let ((), steady) = alloc::measure(|| feeder.ingest(&mut engine, probe));
    ensure!(
        feeder.events == 0,
        "the probe batch produced {} events",
        feeder.events
    );
    let probe_records = probe.len() as f64;
    // 3. A checkpoint of the state the run left: the pause the engine takes to copy it,
    // and the serialization that then runs on the store thread.
    progress(format_args!(
        "copying and serializing the state for a checkpoint"
    ));
    let closed_keys = ops + probe_ops;
    let t = Instant::now();
    let copy = engine.copy_state();
    let copy_ms = t.elapsed().as_secs_f64() * 1e3;
    let t = Instant::now();
    let bytes = copy.to_bytes().len();
    let serialize_ms = t.elapsed().as_secs_f64() * 1e3;
    drop(copy);
    let checkpoint = Checkpoint {
        open_keys: n,
        closed_keys,
        copy_ms,
        serialize_ms,
        bytes,
    };
    drop(engine);
    drop(records);
    let us = |q: f64| hist.value_at_quantile(q) as f64 / 1e3;
    let engine_result = EngineThroughput {
        throughput: Throughput::of(2 * ops as u64, engine_elapsed),
        batch_latency_us: Latency {
            p50: us(0.5),
            p99: us(0.99),
            p999: us(0.999),
            max: hist.max() as f64 / 1e3,
        },
        events: feeder.events,
        steady_allocations_per_record: steady.allocations as f64 / probe_records,
        steady_heap_bytes_per_record: steady.live_bytes as f64 / probe_records,
    };

    // 3. The bare map: same keys, same open set size, one remove and one insert per op.
    progress(format_args!(
        "timing the bare hash map: {} ops",
        group(ops as u64)
    ));
    let bare = bare_map(n, ops)?;

    let ratio = engine_result.throughput.records_per_sec / bare.records_per_sec;
    Ok(Report {
        bench: "engine",
        profile: if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        rule: RULE,
        open: n,
        ops,
        batch_records: args.batch,
        engine: engine_result,
        bare,
        ratio: Target {
            value: ratio,
            target: RATIO_TARGET,
            met: ratio >= RATIO_TARGET,
        },
        memory,
        checkpoint,
    })
}

/// `hashbrown::HashMap<String, (i64, u64)>` with N keys; per op, remove the oldest key and
/// insert a new one. Keys are built before timing; the map grows from empty like the
/// engine's tables do.
fn bare_map(n: usize, ops: usize) -> Result<Throughput> {
    let mut map: hashbrown::HashMap<String, (i64, u64)> = hashbrown::HashMap::new();
    for i in 0..n {
        map.insert(order_no(i), (i as i64, i as u64));
    }
    let oldest: Vec<String> = (0..ops).map(order_no).collect();
    let fresh: Vec<String> = (n..n + ops).map(order_no).collect();
    let mut removed = 0usize;
    let start = Instant::now();
    for (i, (old, new)) in oldest.iter().zip(fresh).enumerate() {
        removed += usize::from(map.remove(old.as_str()).is_some());
        map.insert(new, (i as i64, i as u64));
    }
    let elapsed = start.elapsed();
    black_box(&map);
    ensure!(
        removed == ops && map.len() == n,
        "bare map: {removed} of {ops} removals hit, {} keys left",
        map.len()
    );
    Ok(Throughput::of(2 * ops as u64, elapsed))
}

impl Throughput {
    fn of(records: u64, elapsed: Duration) -> Throughput {
        let seconds = elapsed.as_secs_f64();
        Throughput {
            records,
            seconds,
            records_per_sec: records as f64 / seconds,
        }
    }
}

/// Feeds batches to an engine with increasing locations, reusing one output vector.
struct Feeder {
    out: Vec<Event>,
    loc: Loc,
    events: usize,
}

impl Feeder {
    fn ingest(&mut self, engine: &mut Engine, batch: &[FundRecord]) {
        engine.ingest(
            T0,
            batch.iter().zip(self.loc..).map(|(r, loc)| (loc, r)),
            &mut self.out,
        );
        self.loc += batch.len() as Loc;
        self.events += self.out.len();
        self.out.clear();
    }
}

/// Builds the records of order `i`: a successful payment and the bill that agrees with it.
struct Gen {
    usd: Currency,
}

impl Gen {
    fn record(
        &self,
        record_id: String,
        source: &str,
        kind: &str,
        key: &str,
        i: usize,
    ) -> FundRecord {
        FundRecord {
            record_id,
            source: source.into(),
            kind: kind.into(),
            keys: BTreeMap::from([(key.to_string(), order_no(i))]),
            // 1.00 to 10 000.99 USD, varying per order.
            amount: Money {
                minor: 100 + (i as i64 * 7919) % 1_000_000,
                currency: self.usd,
            },
            account: None,
            counter_account: None,
            direction: None,
            status: None,
            event_time: T0,
            trace_id: None,
            order_id: None,
            drill: None,
            amends: None,
            attributes: BTreeMap::new(),
        }
    }

    fn payment(&self, i: usize) -> FundRecord {
        let mut r = self.record(
            format!("pay-{i:010}"),
            "payment-core",
            "payment",
            "order_no",
            i,
        );
        r.status = Some("SUCCESS".into());
        r.account = Some(account(i));
        r
    }

    /// Not an instalment bill, so `bill-instalments` filters it out and only
    /// `payment-bill` keeps it.
    fn bill(&self, i: usize) -> FundRecord {
        let mut r = self.record(format!("bill-{i:010}"), "billing", "bill", "biz_id", i);
        r.attributes.insert("payer_account".into(), account(i));
        r
    }
}

fn order_no(i: usize) -> String {
    format!("ORD-{i:010}")
}

fn account(i: usize) -> String {
    format!("ACC-{:06}", i % 100_000)
}

fn progress(what: std::fmt::Arguments) {
    eprintln!("engine: {what}...");
}

/// `1234567` as `1,234,567`.
fn group(n: u64) -> String {
    let digits = n.to_string();
    let mut s = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            s.push(',');
        }
        s.push(c);
    }
    s
}

fn verdict(t: &Target) -> &'static str {
    if t.met {
        "MET"
    } else {
        "NOT MET"
    }
}

impl Report {
    /// The human-readable summary.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let e = &self.engine.throughput;
        let b = &self.bare;
        let m = &self.memory;
        let l = &self.engine.batch_latency_us;
        let mib = |bytes: f64| bytes / (1024.0 * 1024.0);
        let _ = writeln!(
            s,
            "engine benchmark ({} build): rule {}, {} open records, {} ops, {} records per ingest",
            self.profile,
            self.rule,
            group(self.open as u64),
            group(self.ops as u64),
            self.batch_records
        );
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "  {:<26} {:>12} {:>10} {:>14}",
            "throughput", "records", "seconds", "records/s"
        );
        let _ = writeln!(
            s,
            "  {:<26} {:>12} {:>10.2} {:>14}",
            "engine ingest",
            group(e.records),
            e.seconds,
            group(e.records_per_sec as u64)
        );
        let _ = writeln!(
            s,
            "  {:<26} {:>12} {:>10.2} {:>14}",
            "bare hashbrown map",
            group(b.records),
            b.seconds,
            group(b.records_per_sec as u64)
        );
        let _ = writeln!(
            s,
            "  {:<26} {:>12.3}   target >= {:.2}: {}",
            "ratio engine / bare",
            self.ratio.value,
            self.ratio.target,
            verdict(&self.ratio)
        );
        let _ = writeln!(
            s,
            "  {:<26} p50 {:.0} us, p99 {:.0} us, p99.9 {:.0} us, max {:.0} us",
            "ingest latency per batch", l.p50, l.p99, l.p999, l.max
        );
        let _ = writeln!(
            s,
            "  {:<26} {:.1} allocations, {:+.1} heap bytes per record",
            "steady state",
            self.engine.steady_allocations_per_record,
            self.engine.steady_heap_bytes_per_record
        );
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "  {:<26} {:>12.1}   target <= {:.0}: {}",
            "heap bytes per open record",
            m.bytes_per_open_record.value,
            m.bytes_per_open_record.target,
            verdict(&m.bytes_per_open_record)
        );
        let c = &self.checkpoint;
        let _ = writeln!(
            s,
            "  {:<26} copy {:.0} ms (engine paused), serialize {:.0} ms, {:.1} MiB, for {} open and {} closed keys",
            "checkpoint",
            c.copy_ms,
            c.serialize_ms,
            mib(c.bytes as f64),
            group(c.open_keys as u64),
            group(c.closed_keys as u64)
        );
        let _ = writeln!(
            s,
            "  {:<26} {:.1} MiB live, {:.1} MiB peak, {:.1} allocations per record",
            format!("fill of {} payments", group(m.open_records as u64)),
            mib(m.heap.live_bytes as f64),
            mib(m.heap.peak_bytes as f64),
            m.allocations_per_record
        );
        s
    }
}
