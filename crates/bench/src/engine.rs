//! `engine`: the verification engine's hot path, measured against a bare hash map doing
//! the same amount of keyed work, plus the engine's memory per open record.
//!
//! The workload is the 1:1 `payment-bill` rule of `examples/rules.toml` with a fixed
//! number of open (unmatched) payments. Each op feeds the bill of the oldest open payment,
//! which closes that key, and one new payment, which opens another, so the open set stays
//! at `--open` for the whole measurement. Each batch is built before its clock starts;
//! only the engine's calls are timed.
//!
//! The engine is measured twice:
//! - **steady** (the figure the target applies to): the server's default bounds on
//!   remembered record ids and closed keys, with the engine already holding as many as
//!   those bounds allow. Engine time advances one millisecond per batch and `tick`
//!   follows every `ingest`, as the server's clock does, so each op also pays for the
//!   evictions that keep the state at its bounds and for the deadlines that come due. The
//!   state neither grows nor shrinks, like the bare map's.
//! - **growing**: bounds far out of reach and time frozen, so every matched key and every
//!   record id is kept and nothing is evicted. The state grows by what each op leaves
//!   behind, so this also measures how fast the machine hands out fresh memory.

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
/// Engine time at the start, and every record's event time while time is frozen.
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
    /// Measured ops per run; each feeds two records (a closing bill and a new payment).
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
    /// At the server's default bounds, time advancing: the figure the target applies to.
    pub steady: EngineRun,
    /// Nothing evicted, time frozen.
    pub growing: EngineRun,
    pub bare: Throughput,
    /// steady / bare.
    pub ratio: Target,
    /// growing / bare.
    pub growing_ratio: f64,
    pub memory: Memory,
    pub checkpoint: Checkpoint,
}

#[derive(Serialize)]
pub struct Checkpoint {
    pub open_keys: usize,
    /// Matched keys held at the end of the steady run (at most `closed_keys_max`).
    pub closed_keys: usize,
    /// Record ids remembered at the end of the steady run.
    pub record_ids: usize,
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
pub struct EngineRun {
    pub record_ids_max: usize,
    pub closed_keys_max: usize,
    /// Whether engine time advanced and `tick` ran after every batch.
    pub ticks: bool,
    /// Ops fed before the timed ones, to bring the state to its bounds.
    pub warm_up_ops: usize,
    #[serde(flatten)]
    pub throughput: Throughput,
    /// Wall time of one batch (`ingest`, and `tick` when it runs), in microseconds.
    pub batch_latency_us: Latency,
    /// Events the timed loop produced; every bill agrees with its payment, so 0.
    pub events: usize,
    /// Record ids and closed keys evicted during the timed ops (0 when growing).
    pub record_ids_evicted: u64,
    pub closed_keys_evicted: u64,
    /// Heap allocation calls per record once warm (one extra batch after the timed loop).
    pub steady_allocations_per_record: f64,
    /// Net heap growth per record once warm: what each op leaves behind.
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

    // 1. Memory: fill a fresh engine with N open payments, counting the heap it keeps.
    // Bounds out of reach, so that nothing is evicted or refused in this or the growing run.
    let room = (n + 2 * ops + 2 * args.batch).max(20_000_000);
    let unbounded = Limits {
        open_records_max: room,
        batch_records_max: args.batch,
        record_ids_max: room,
        closed_keys_max: room,
        ..Limits::default()
    };
    progress(format_args!(
        "growing: filling a fresh engine with {} open payments",
        group(n as u64)
    ));
    let mut feeder = Feeder::new(&gen, args.batch, false);
    // Built before the window opens, so that only the engine's allocations are counted.
    let payments: Vec<FundRecord> = (0..n).map(|i| gen.payment(i, T0)).collect();
    let (mut engine, heap) = alloc::measure(|| {
        let mut engine = Engine::new(rules.clone(), unbounded.clone());
        for chunk in payments.chunks(args.batch) {
            feeder.feed_slice(&mut engine, chunk);
        }
        engine
    });
    drop(payments);
    feeder.next_payment = n;
    feeder.check(&engine, n, "filling the engine")?;
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

    // 2. Growing: nothing evicted, time frozen.
    progress(format_args!("growing: timing {} ops", group(ops as u64)));
    let growing = feeder.timed(&mut engine, &unbounded, 0, ops)?;
    drop(engine);

    // 3. Steady: the server's default bounds, reached before the clock starts.
    let limits = Limits {
        open_records_max: Limits::default()
            .open_records_max
            .max(2 * n + 2 * args.batch),
        batch_records_max: args.batch,
        ..Limits::default()
    };
    let mut engine = Engine::new(rules.clone(), limits.clone());
    // As the server's pipeline does, so that the id set never grows mid-run.
    engine.reserve_record_ids(limits.record_ids_max);
    let mut feeder = Feeder::new(&gen, args.batch, true);
    progress(format_args!(
        "steady: filling the engine with {} open payments",
        group(n as u64)
    ));
    feeder.fill(&mut engine, n);
    feeder.check(&engine, n, "filling the engine")?;
    let warm =
        (limits.record_ids_max.saturating_sub(n) / 2).max(limits.closed_keys_max) + args.batch;
    progress(format_args!(
        "steady: {} ops to reach the bounds on record ids and closed keys",
        group(warm as u64)
    ));
    feeder.untimed(&mut engine, warm);
    feeder.check(&engine, n, "the warm-up")?;
    progress(format_args!("steady: timing {} ops", group(ops as u64)));
    let steady = feeder.timed(&mut engine, &limits, warm, ops)?;
    ensure!(
        steady.record_ids_evicted > 0 && steady.closed_keys_evicted > 0,
        "the steady run evicted {} record ids and {} closed keys; it never reached its bounds",
        steady.record_ids_evicted,
        steady.closed_keys_evicted
    );

    // 4. A checkpoint of the steady state: the pause the engine takes to copy it, and the
    // serialization that then runs on the store thread.
    progress(format_args!(
        "copying and serializing the state for a checkpoint"
    ));
    let t = Instant::now();
    let copy = engine.copy_state();
    let copy_ms = t.elapsed().as_secs_f64() * 1e3;
    let t = Instant::now();
    let bytes = copy.to_bytes().len();
    let serialize_ms = t.elapsed().as_secs_f64() * 1e3;
    drop(copy);
    let checkpoint = Checkpoint {
        open_keys: n,
        closed_keys: limits.closed_keys_max,
        record_ids: limits.record_ids_max,
        copy_ms,
        serialize_ms,
        bytes,
    };
    drop(engine);

    // 5. The bare map: same keys, same open set size, one remove and one insert per op.
    progress(format_args!(
        "timing the bare hash map: {} ops",
        group(ops as u64)
    ));
    let bare = bare_map(n, ops)?;

    let ratio = steady.throughput.records_per_sec / bare.records_per_sec;
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
        growing_ratio: growing.throughput.records_per_sec / bare.records_per_sec,
        steady,
        growing,
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

/// Feeds generated batches to an engine: payments to fill it, then ops of a bill for the
/// oldest open payment and a new payment. Locations increase; when `ticks` is set, engine
/// time advances a millisecond per batch (event times with it) and `tick` follows each
/// `ingest`, as the server's clock does.
struct Feeder<'g> {
    gen: &'g Gen,
    batch: usize,
    ticks: bool,
    now: Millis,
    next_payment: usize,
    next_bill: usize,
    records: Vec<FundRecord>,
    out: Vec<Event>,
    loc: Loc,
    events: usize,
}

impl<'g> Feeder<'g> {
    fn new(gen: &'g Gen, batch: usize, ticks: bool) -> Feeder<'g> {
        Feeder {
            gen,
            batch,
            ticks,
            now: T0,
            next_payment: 0,
            next_bill: 0,
            records: Vec::with_capacity(batch),
            out: Vec::new(),
            loc: 0,
            events: 0,
        }
    }

    fn fill(&mut self, engine: &mut Engine, n: usize) {
        while self.next_payment < n {
            let k = self.batch.min(n - self.next_payment);
            self.build(0, k);
            self.feed(engine);
        }
    }

    /// Builds the next batch: `bills` bills of the oldest open payments and `payments`
    /// new payments, interleaved while both last.
    fn build(&mut self, bills: usize, payments: usize) {
        self.records.clear();
        let at = self.now;
        for j in 0..bills.max(payments) {
            if j < bills {
                self.records.push(self.gen.bill(self.next_bill, at));
                self.next_bill += 1;
            }
            if j < payments {
                self.records.push(self.gen.payment(self.next_payment, at));
                self.next_payment += 1;
            }
        }
    }

    /// Feeds the built batch; returns how long the engine took.
    fn feed(&mut self, engine: &mut Engine) -> Duration {
        let records = std::mem::take(&mut self.records);
        let elapsed = self.feed_slice(engine, &records);
        self.records = records;
        elapsed
    }

    fn feed_slice(&mut self, engine: &mut Engine, records: &[FundRecord]) -> Duration {
        let t = Instant::now();
        engine.ingest(
            self.now,
            records.iter().zip(self.loc..).map(|(r, loc)| (loc, r)),
            &mut self.out,
        );
        if self.ticks {
            engine.tick(self.now, &mut self.out);
        }
        let elapsed = t.elapsed();
        self.loc += records.len() as Loc;
        if self.ticks {
            self.now += 1;
        }
        self.events += self.out.len();
        self.out.clear();
        elapsed
    }

    fn untimed(&mut self, engine: &mut Engine, ops: usize) {
        let per_batch = self.batch / 2;
        let mut done = 0;
        while done < ops {
            let k = per_batch.min(ops - done);
            self.build(k, k);
            self.feed(engine);
            done += k;
        }
    }

    fn timed(
        &mut self,
        engine: &mut Engine,
        limits: &Limits,
        warm_up_ops: usize,
        ops: usize,
    ) -> Result<EngineRun> {
        // Nanoseconds, from 1 ns to an hour, at 3 significant digits.
        let mut hist = Histogram::<u64>::new_with_bounds(1, 3_600_000_000_000, 3)
            .context("latency histogram")?;
        let before = engine.stats();
        let events_before = self.events;
        let per_batch = self.batch / 2;
        let (mut done, mut total) = (0, Duration::ZERO);
        while done < ops {
            let k = per_batch.min(ops - done);
            self.build(k, k);
            let elapsed = self.feed(engine);
            hist.saturating_record(elapsed.as_nanos() as u64);
            total += elapsed;
            done += k;
        }
        let after = engine.stats();
        let events = self.events - events_before;
        ensure!(
            events == 0,
            "the timed loop produced {events} events; every bill should match"
        );
        let open = self.next_payment - self.next_bill;
        self.check(engine, open, "the timed loop")?;
        // One more batch, counting what it allocates and what it leaves behind.
        self.build(per_batch, per_batch);
        let ((), probe) = alloc::measure(|| {
            self.feed(engine);
        });
        self.check(engine, open, "the probe batch")?;
        let probe_records = self.records.len() as f64;
        let us = |q: f64| hist.value_at_quantile(q) as f64 / 1e3;
        Ok(EngineRun {
            record_ids_max: limits.record_ids_max,
            closed_keys_max: limits.closed_keys_max,
            ticks: self.ticks,
            warm_up_ops,
            throughput: Throughput::of(2 * ops as u64, total),
            batch_latency_us: Latency {
                p50: us(0.5),
                p99: us(0.99),
                p999: us(0.999),
                max: hist.max() as f64 / 1e3,
            },
            events,
            record_ids_evicted: after.record_ids_evicted - before.record_ids_evicted,
            closed_keys_evicted: after.closed_keys_evicted - before.closed_keys_evicted,
            steady_allocations_per_record: probe.allocations as f64 / probe_records,
            steady_heap_bytes_per_record: probe.live_bytes as f64 / probe_records,
        })
    }

    /// Every batch so far agreed, and the engine holds `open` open records.
    fn check(&self, engine: &Engine, open: usize, what: &str) -> Result<()> {
        ensure!(
            self.events == 0,
            "{what} produced {} events; expected none",
            self.events
        );
        ensure!(
            engine.open_records() == open,
            "engine holds {} open records after {what}, not {open}",
            engine.open_records()
        );
        Ok(())
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
        at: Millis,
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
            event_time: at,
            trace_id: None,
            order_id: None,
            drill: None,
            amends: None,
            attributes: BTreeMap::new(),
        }
    }

    fn payment(&self, i: usize, at: Millis) -> FundRecord {
        let mut r = self.record(
            format!("pay-{i:010}"),
            "payment-core",
            "payment",
            "order_no",
            i,
            at,
        );
        r.status = Some("SUCCESS".into());
        r.account = Some(account(i));
        r
    }

    /// Not an instalment bill, so `bill-instalments` filters it out and only
    /// `payment-bill` keeps it.
    fn bill(&self, i: usize, at: Millis) -> FundRecord {
        let mut r = self.record(format!("bill-{i:010}"), "billing", "bill", "biz_id", i, at);
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
        let b = &self.bare;
        let m = &self.memory;
        let mib = |bytes: f64| bytes / (1024.0 * 1024.0);
        let _ = writeln!(
            s,
            "engine benchmark ({} build): rule {}, {} open records, {} ops per run, {} records per ingest",
            self.profile,
            self.rule,
            group(self.open as u64),
            group(self.ops as u64),
            self.batch_records
        );
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "  {:<34} {:>12} {:>10} {:>14} {:>8}",
            "throughput", "records", "seconds", "records/s", "/ bare"
        );
        let runs = [
            (
                "engine, steady at default bounds",
                &self.steady,
                self.ratio.value,
            ),
            (
                "engine, growing (nothing evicted)",
                &self.growing,
                self.growing_ratio,
            ),
        ];
        for (name, run, ratio) in runs {
            let e = &run.throughput;
            let _ = writeln!(
                s,
                "  {:<34} {:>12} {:>10.2} {:>14} {:>8.3}",
                name,
                group(e.records),
                e.seconds,
                group(e.records_per_sec as u64),
                ratio
            );
        }
        let _ = writeln!(
            s,
            "  {:<34} {:>12} {:>10.2} {:>14}",
            "bare hashbrown map",
            group(b.records),
            b.seconds,
            group(b.records_per_sec as u64)
        );
        let _ = writeln!(
            s,
            "  {:<34} {:>12.3}   target >= {:.2}: {}",
            "ratio steady engine / bare",
            self.ratio.value,
            self.ratio.target,
            verdict(&self.ratio)
        );
        let _ = writeln!(s);
        for (name, run) in [("steady", &self.steady), ("growing", &self.growing)] {
            let l = &run.batch_latency_us;
            let _ = writeln!(
                s,
                "  {name:<8} batch latency p50 {:.0} us, p99 {:.0} us, p99.9 {:.0} us, max {:.0} us",
                l.p50, l.p99, l.p999, l.max
            );
            let _ = writeln!(
                s,
                "  {:<8} {:.1} allocations and {:+.1} heap bytes per record; {} ids and {} closed keys evicted{}",
                "",
                run.steady_allocations_per_record,
                run.steady_heap_bytes_per_record,
                group(run.record_ids_evicted),
                group(run.closed_keys_evicted),
                if run.warm_up_ops > 0 {
                    format!(" (after {} warm-up ops)", group(run.warm_up_ops as u64))
                } else {
                    String::new()
                }
            );
        }
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "  {:<34} {:>12.1}   target <= {:.0}: {}",
            "heap bytes per open record",
            m.bytes_per_open_record.value,
            m.bytes_per_open_record.target,
            verdict(&m.bytes_per_open_record)
        );
        let _ = writeln!(
            s,
            "  {:<34} {:.1} MiB live, {:.1} MiB peak, {:.1} allocations per record",
            format!("fill of {} payments", group(m.open_records as u64)),
            mib(m.heap.live_bytes as f64),
            mib(m.heap.peak_bytes as f64),
            m.allocations_per_record
        );
        let c = &self.checkpoint;
        let _ = writeln!(
            s,
            "  {:<34} copy {:.0} ms (engine paused), serialize {:.0} ms, {:.1} MiB, for {} open and {} closed keys and {} ids",
            "checkpoint of the steady state",
            c.copy_ms,
            c.serialize_ms,
            mib(c.bytes as f64),
            group(c.open_keys as u64),
            group(c.closed_keys as u64),
            group(c.record_ids as u64)
        );
        s
    }
}
