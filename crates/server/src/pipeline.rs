//! The ingest pipeline: WAL committer → engine → break store, one thread each, joined by
//! bounded channels.
//!
//! - The committer appends every waiting batch and tick, makes them durable with one
//!   fsync (group commit), then acknowledges the batches and hands the entries on.
//! - The engine thread applies durable entries in WAL order, so its output is a pure
//!   function of the WAL. It publishes its headroom for admission control.
//! - The store thread writes breaks and resolutions, and writes checkpoints once every
//!   event before them is committed, so a checkpoint never runs ahead of the store.
//!
//! After a crash, recovery restores the last checkpoint and replays the WAL tail through
//! the same engine; break ids repeat exactly and the store ignores ones it already has.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use anyhow::{bail, Context};
use steadfast_model::{FundRecord, Millis};
use steadfast_store::{checkpoint, BreakStore, Wal, WalEntry, WalError, WalItem};
use steadfast_verify::{Engine, EngineStats, Event, Limits, RuleSet};

use crate::metrics::Metrics;

/// Most WAL entries one fsync covers.
const GROUP_ENTRIES_MAX: usize = 512;
/// Durable entries waiting for the engine; a full queue stalls the committer, which
/// fills the submit queue, which refuses new batches with 429.
const ENGINE_QUEUE_MAX: usize = 1024;
/// Event groups waiting for the store.
const STORE_QUEUE_MAX: usize = 1024;
/// Batches that may wait for backlog room at once; each holds a parsed body in memory.
const WAITING_BATCHES_MAX: usize = 64;
/// How often the engine thread publishes statistics.
const STATS_EVERY: std::time::Duration = std::time::Duration::from_millis(100);
/// Decoded WAL entries waiting to be applied during recovery.
const REPLAY_QUEUE_MAX: usize = 64;
/// Records replayed between break-store commits during recovery.
const REPLAY_COMMIT_EVERY: usize = 50_000;

pub fn wall_ms() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as Millis)
        .unwrap_or(0)
}

/// A record's location: its WAL entry and its index in the batch.
pub fn loc(seq: u64, index: usize) -> u64 {
    (seq << 20) | index as u64
}

/// Answers a submitter once its batch is durable (its WAL sequence number) or failed.
type Ack = tokio::sync::oneshot::Sender<Result<u64, String>>;

enum Submit {
    Batch {
        at: Millis,
        records: Vec<FundRecord>,
        ack: Ack,
    },
    Tick(Millis),
    Stop,
}

enum ToEngine {
    Entry(WalEntry),
    Stop,
}

enum ToStore {
    Events(Vec<Event>),
    /// Serialized and written by the store thread, so the engine does not pause for it.
    Checkpoint {
        seq: u64,
        state: steadfast_verify::StateCopy,
    },
    Stop,
}

/// Why a batch was not accepted.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The engine's open state is near its bound.
    Capacity,
    /// The WAL queue is full.
    Overloaded,
    /// The WAL failed or the pipeline stopped; nothing was acknowledged.
    Unavailable(String),
}

pub struct Pipeline {
    submit: SyncSender<Submit>,
    headroom: Arc<AtomicUsize>,
    inflight: Arc<AtomicUsize>,
    /// Permits for records acknowledged-to-be but not yet applied by the engine; a batch
    /// waits (up to `backlog_wait`) for its permits, which bounds detection latency.
    backlog: Arc<tokio::sync::Semaphore>,
    backlog_wait: std::time::Duration,
    /// Batches waiting for backlog permits; past `WAITING_BATCHES_MAX`, refused at once.
    waiting: AtomicUsize,
    pub store: Arc<Mutex<BreakStore>>,
    stats: Arc<Mutex<(EngineStats, u64)>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    failed: Arc<AtomicBool>,
    pub rules: Arc<RuleSet>,
}

pub struct PipelineConfig {
    pub data_dir: PathBuf,
    pub limits: Limits,
    pub wal_queue_batches_max: usize,
    pub checkpoint_every_records: u64,
    pub checkpoint_every_secs: u64,
    /// WAL segments kept after a checkpoint covers them, for backtests.
    pub wal_segments_kept: usize,
    pub backlog_records_max: usize,
    pub backlog_wait_ms: u64,
    pub webhooks: bool,
    /// Start a fresh engine when the rule file differs from the checkpoint's.
    pub accept_new_rules: bool,
}

fn apply_entry(engine: &mut Engine, entry: &WalEntry, out: &mut Vec<Event>) -> usize {
    match &entry.item {
        WalItem::Batch(records) => {
            engine.ingest(
                entry.at,
                records
                    .iter()
                    .enumerate()
                    .map(|(i, r)| (loc(entry.seq, i), r)),
                out,
            );
            records.len()
        }
        WalItem::Tick => {
            engine.tick(entry.at, out);
            0
        }
    }
}

fn record_breaks(metrics: &Metrics, events: &[Event], now: Millis) {
    for e in events {
        if let Event::Break(b) = e {
            metrics
                .breaks
                .get_or_create(&crate::metrics::BreakLabels {
                    rule: b.rule.clone(),
                    kind: b.kind.as_str().into(),
                })
                .inc();
            metrics.observe_detection((now - b.complete_at).max(0) as u64);
        }
    }
}

/// New production breaks (not replays, not drills) for the detectors.
fn count_live_breaks(metrics: &Metrics, events: &[Event], fresh: &[u64]) {
    if fresh.is_empty() {
        return;
    }
    let fresh: std::collections::HashSet<u64> = fresh.iter().copied().collect();
    let mut live = metrics.live_breaks.lock().expect("metrics lock");
    for e in events {
        if let Event::Break(b) = e {
            if b.drill.is_none() && fresh.contains(&b.id) {
                *live.entry(b.rule.clone()).or_default() += 1;
            }
        }
    }
}

impl Pipeline {
    /// Recovers from the data directory and starts the pipeline's threads.
    pub fn start(
        cfg: PipelineConfig,
        rules: Arc<RuleSet>,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Pipeline> {
        let dir = &cfg.data_dir;
        std::fs::create_dir_all(dir)
            .with_context(|| format!("failed to create data directory {}", dir.display()))?;
        let ckpt_dir = dir.join("checkpoint");
        let wal_dir = dir.join("wal");
        let mut store =
            BreakStore::open(&dir.join("breaks.db")).context("failed to open the break store")?;
        let ckpt = checkpoint::read(&ckpt_dir).context("failed to read the checkpoint")?;
        let mut replay_from = 0;
        let mut fresh_checkpoint = false;
        let mut engine = match ckpt {
            Some(c) if c.rules_version == rules.version => {
                replay_from = c.seq;
                Engine::restore(rules.clone(), cfg.limits.clone(), &c.state)
                    .map_err(|e| anyhow::anyhow!("failed to restore the checkpoint: {e}"))?
            }
            Some(c) => {
                if !cfg.accept_new_rules {
                    bail!(
                        "the rule file (version {}) differs from the one the data directory was verified with (version {}); \
                         backtest it with `steadfast verify`, then start with --accept-new-rules",
                        rules.version,
                        c.rules_version
                    );
                }
                fresh_checkpoint = true;
                Engine::new(rules.clone(), cfg.limits.clone())
                    .with_first_break_id(store.max_id()? + 1)
            }
            None => Engine::new(rules.clone(), cfg.limits.clone()),
        };

        // Replay the WAL tail through the engine; the store keeps what it already has.
        // Reading and decoding run on this thread, applying on another, so replay uses
        // both cores.
        let started = Instant::now();
        let (replay_tx, replay_rx) = sync_channel::<WalEntry>(REPLAY_QUEUE_MAX);
        let webhooks = cfg.webhooks;
        let (opened, applied) = std::thread::scope(|scope| {
            let applier = scope.spawn(|| -> anyhow::Result<(usize, u64)> {
                let mut events = Vec::new();
                let (mut replayed, mut since_commit, mut last_seq) = (0usize, 0usize, replay_from);
                for entry in replay_rx {
                    last_seq = entry.seq;
                    let n = apply_entry(&mut engine, &entry, &mut events);
                    replayed += n;
                    since_commit += n;
                    if since_commit >= REPLAY_COMMIT_EVERY {
                        since_commit = 0;
                        store
                            .apply(&events, wall_ms(), webhooks)
                            .context("failed to store replayed breaks")?;
                        events.clear();
                    }
                }
                store
                    .apply(&events, wall_ms(), webhooks)
                    .context("failed to store replayed breaks")?;
                Ok((replayed, last_seq))
            });
            let opened = Wal::open(&wal_dir, replay_from, |entry| {
                // A failed applier drops the receiver; its error is reported below.
                let _ = replay_tx.send(entry);
            });
            drop(replay_tx);
            let applied = applier
                .join()
                .map_err(|_| anyhow::anyhow!("WAL replay thread panicked"));
            (opened, applied)
        });
        let mut wal = opened.context("failed to open the write-ahead log")?;
        let (replayed, last_seq) = applied??;
        if replayed > 0 {
            tracing::info!(
                records = replayed,
                ms = started.elapsed().as_millis() as u64,
                "replayed the WAL tail"
            );
        }
        engine.reserve_record_ids(cfg.limits.record_ids_max);
        if fresh_checkpoint {
            checkpoint::write(
                &ckpt_dir,
                last_seq.max(wal.next_seq() - 1),
                &rules.version,
                &engine.snapshot(),
            )
            .context("failed to write a checkpoint for the new rule file")?;
        }

        let headroom = Arc::new(AtomicUsize::new(engine.headroom()));
        let inflight = Arc::new(AtomicUsize::new(0));
        let backlog = Arc::new(tokio::sync::Semaphore::new(cfg.backlog_records_max));
        let failed = Arc::new(AtomicBool::new(false));
        let checkpointed = Arc::new(AtomicU64::new(0));
        let stats = Arc::new(Mutex::new((engine.stats(), wal.next_seq() - 1)));
        let store = Arc::new(Mutex::new(store));
        let (submit_tx, submit_rx) = sync_channel::<Submit>(cfg.wal_queue_batches_max);
        let (engine_tx, engine_rx) = sync_channel::<ToEngine>(ENGINE_QUEUE_MAX);
        let (store_tx, store_rx) = sync_channel::<ToStore>(STORE_QUEUE_MAX);

        let mut threads = Vec::new();
        {
            let (failed, metrics, checkpointed) =
                (failed.clone(), metrics.clone(), checkpointed.clone());
            let segments_kept = cfg.wal_segments_kept;
            threads.push(
                std::thread::Builder::new()
                    .name("wal-committer".into())
                    .spawn(move || {
                        committer(
                            &mut wal,
                            submit_rx,
                            engine_tx,
                            &failed,
                            &metrics,
                            &checkpointed,
                            segments_kept,
                        )
                    })?,
            );
        }
        {
            let shared = EngineShared {
                headroom: headroom.clone(),
                inflight: inflight.clone(),
                backlog: backlog.clone(),
                stats: stats.clone(),
                metrics: metrics.clone(),
            };
            let every = (cfg.checkpoint_every_records, cfg.checkpoint_every_secs);
            threads.push(
                std::thread::Builder::new()
                    .name("engine".into())
                    .spawn(move || engine_loop(engine, engine_rx, store_tx, &shared, every))?,
            );
        }
        {
            let (store, metrics, version) = (store.clone(), metrics.clone(), rules.version.clone());
            let webhooks = cfg.webhooks;
            threads.push(
                std::thread::Builder::new()
                    .name("break-store".into())
                    .spawn(move || {
                        store_loop(
                            &store,
                            store_rx,
                            &ckpt_dir,
                            &version,
                            &checkpointed,
                            &metrics,
                            webhooks,
                        )
                    })?,
            );
        }
        Ok(Pipeline {
            submit: submit_tx,
            headroom,
            inflight,
            backlog,
            backlog_wait: std::time::Duration::from_millis(cfg.backlog_wait_ms),
            waiting: AtomicUsize::new(0),
            store,
            stats,
            threads: Mutex::new(threads),
            failed,
            rules,
        })
    }

    /// Submits a validated batch; resolves once it is durable (its WAL sequence number).
    ///
    /// Admission has two bounds. Open state: a batch that could push a rule past
    /// `open_records_max` is refused (`Capacity`). Backlog: records acknowledged but not
    /// yet applied hold permits; a batch waits for its permits up to `backlog_wait`, then
    /// is refused (`Overloaded`). The backlog bound keeps the engine close behind the
    /// acknowledgements, so that breaks are found soon after their evidence is durable.
    pub async fn submit(&self, at: Millis, records: Vec<FundRecord>) -> Result<u64, Refusal> {
        if self.failed.load(Ordering::Acquire) {
            return Err(Refusal::Unavailable(
                "the write-ahead log failed; see the server log".into(),
            ));
        }
        let n = records.len();
        let before = self.inflight.fetch_add(n, Ordering::AcqRel);
        if before + n > self.headroom.load(Ordering::Acquire) {
            self.inflight.fetch_sub(n, Ordering::AcqRel);
            return Err(Refusal::Capacity);
        }
        let refuse = |r: Refusal| {
            self.inflight.fetch_sub(n, Ordering::AcqRel);
            Err(r)
        };
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= WAITING_BATCHES_MAX {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return refuse(Refusal::Overloaded);
        }
        let permits =
            tokio::time::timeout(self.backlog_wait, self.backlog.acquire_many(n as u32)).await;
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        match permits {
            // The engine thread returns the permits once it has applied the batch.
            Ok(Ok(p)) => p.forget(),
            Ok(Err(_)) => return refuse(Refusal::Unavailable("the server is stopping".into())),
            Err(_) => return refuse(Refusal::Overloaded),
        }
        let give_back = |r: Refusal| {
            self.backlog.add_permits(n);
            refuse(r)
        };
        let (ack, done) = tokio::sync::oneshot::channel();
        match self.submit.try_send(Submit::Batch { at, records, ack }) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => return give_back(Refusal::Overloaded),
            Err(TrySendError::Disconnected(_)) => {
                return give_back(Refusal::Unavailable("the server is stopping".into()))
            }
        }
        match done.await {
            Ok(Ok(seq)) => Ok(seq),
            Ok(Err(e)) => give_back(Refusal::Unavailable(e)),
            Err(_) => give_back(Refusal::Unavailable("the server is stopping".into())),
        }
    }

    /// Advances engine time (from the edge's clock). Skipped when the queue is full:
    /// the next tick carries a later time anyway.
    pub fn tick(&self, now: Millis) {
        let _ = self.submit.try_send(Submit::Tick(now));
    }

    /// False once the WAL has failed; no batch is accepted after that.
    pub fn healthy(&self) -> bool {
        !self.failed.load(Ordering::Acquire)
    }

    /// Engine statistics and the last WAL sequence number it applied.
    pub fn stats(&self) -> (EngineStats, u64) {
        self.stats.lock().expect("stats lock").clone()
    }

    /// Stops accepting, drains every queue, writes a final checkpoint and joins the threads.
    pub fn shutdown(&self) {
        let _ = self.submit.send(Submit::Stop);
        let threads = std::mem::take(&mut *self.threads.lock().expect("threads lock"));
        for t in threads {
            let _ = t.join();
        }
    }
}

fn committer(
    wal: &mut Wal,
    rx: Receiver<Submit>,
    engine: SyncSender<ToEngine>,
    failed: &AtomicBool,
    metrics: &Metrics,
    checkpointed: &AtomicU64,
    segments_kept: usize,
) {
    let mut removed_through = 0;
    let mut stopping = false;
    while !stopping {
        let Ok(first) = rx.recv() else { break };
        let mut group = vec![first];
        while group.len() < GROUP_ENTRIES_MAX {
            match rx.try_recv() {
                Ok(item) => group.push(item),
                Err(TryRecvError::Empty) | Err(TryRecvError::Disconnected) => break,
            }
        }
        let mut written: Vec<(WalEntry, Option<Ack>)> = Vec::new();
        let mut error: Option<String> = None;
        let mut records = 0usize;
        for item in group {
            let (at, wal_item, ack) = match item {
                Submit::Stop => {
                    stopping = true;
                    continue;
                }
                Submit::Tick(at) => (at, WalItem::Tick, None),
                Submit::Batch { at, records, ack } => (at, WalItem::Batch(records), Some(ack)),
            };
            if error.is_some() || failed.load(Ordering::Acquire) {
                if let Some(ack) = ack {
                    let _ = ack.send(Err(error
                        .clone()
                        .unwrap_or_else(|| "the write-ahead log failed".into())));
                }
                continue;
            }
            match wal.append(at, &wal_item) {
                Ok(seq) => {
                    if let WalItem::Batch(r) = &wal_item {
                        records += r.len();
                    }
                    written.push((
                        WalEntry {
                            seq,
                            at,
                            item: wal_item,
                        },
                        ack,
                    ));
                }
                Err(e @ WalError::TooLarge(_)) => {
                    // Nothing was written: refuse this batch only.
                    if let Some(ack) = ack {
                        let _ = ack.send(Err(e.to_string()));
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "WAL append failed; refusing all further writes");
                    failed.store(true, Ordering::Release);
                    error = Some("the write-ahead log failed".into());
                    if let Some(ack) = ack {
                        let _ = ack.send(Err("the write-ahead log failed".into()));
                    }
                }
            }
        }
        let t = Instant::now();
        if let Err(e) = wal.sync() {
            // After a failed fsync the page cache can no longer be trusted: stop for good.
            tracing::error!(error = %e, "WAL fsync failed; refusing all further writes");
            failed.store(true, Ordering::Release);
            for (_, ack) in written {
                if let Some(ack) = ack {
                    let _ = ack.send(Err("the write-ahead log failed".into()));
                }
            }
            continue;
        }
        if !written.is_empty() {
            metrics.wal_fsync_seconds.observe(t.elapsed().as_secs_f64());
            if records > 0 {
                metrics.records_per_fsync.observe(records as f64);
            }
        }
        for (entry, ack) in written {
            if let Some(ack) = ack {
                let _ = ack.send(Ok(entry.seq));
            }
            if engine.send(ToEngine::Entry(entry)).is_err() {
                return;
            }
        }
        let through = checkpointed.load(Ordering::Acquire);
        if through > removed_through {
            match wal.remove_through(through, segments_kept) {
                Ok(_) => removed_through = through,
                Err(e) => tracing::warn!(error = %e, "failed to remove old WAL segments"),
            }
        }
    }
    let _ = engine.send(ToEngine::Stop);
}

/// What the engine thread shares with the HTTP side.
struct EngineShared {
    headroom: Arc<AtomicUsize>,
    inflight: Arc<AtomicUsize>,
    backlog: Arc<tokio::sync::Semaphore>,
    stats: Arc<Mutex<(EngineStats, u64)>>,
    metrics: Arc<Metrics>,
}

fn engine_loop(
    mut engine: Engine,
    rx: Receiver<ToEngine>,
    store: SyncSender<ToStore>,
    shared: &EngineShared,
    (every_records, every_secs): (u64, u64),
) {
    let mut out = Vec::new();
    let mut since_records = 0u64;
    let mut since = Instant::now();
    let mut stats_at = Instant::now();
    let mut last_seq = 0;
    let mut dirty = false;
    while let Ok(ToEngine::Entry(entry)) = rx.recv() {
        let n = apply_entry(&mut engine, &entry, &mut out);
        last_seq = entry.seq;
        dirty = true;
        shared.headroom.store(engine.headroom(), Ordering::Release);
        shared.inflight.fetch_sub(
            n.min(shared.inflight.load(Ordering::Acquire)),
            Ordering::AcqRel,
        );
        shared.backlog.add_permits(n);
        shared.metrics.records_ingested.inc_by(n as u64);
        shared
            .metrics
            .records_rate
            .lock()
            .expect("metrics lock")
            .add(wall_ms(), n as u64);
        since_records += n as u64;
        if !out.is_empty()
            && store
                .send(ToStore::Events(std::mem::take(&mut out)))
                .is_err()
        {
            return;
        }
        if stats_at.elapsed() >= STATS_EVERY {
            stats_at = Instant::now();
            shared
                .metrics
                .open_records
                .set(engine.open_records() as i64);
            *shared.stats.lock().expect("stats lock") = (engine.stats(), last_seq);
        }
        if since_records >= every_records || since.elapsed().as_secs() >= every_secs {
            since_records = 0;
            since = Instant::now();
            dirty = false;
            if store
                .send(ToStore::Checkpoint {
                    seq: last_seq,
                    state: engine.copy_state(),
                })
                .is_err()
            {
                return;
            }
        }
    }
    shared
        .metrics
        .open_records
        .set(engine.open_records() as i64);
    *shared.stats.lock().expect("stats lock") = (engine.stats(), last_seq);
    if dirty && last_seq > 0 {
        let _ = store.send(ToStore::Checkpoint {
            seq: last_seq,
            state: engine.copy_state(),
        });
    }
    let _ = store.send(ToStore::Stop);
}

fn store_loop(
    store: &Mutex<BreakStore>,
    rx: Receiver<ToStore>,
    ckpt_dir: &Path,
    version: &str,
    checkpointed: &AtomicU64,
    metrics: &Metrics,
    webhooks: bool,
) {
    // Checkpoints are serialized and written on a thread of their own, so that breaks
    // keep being stored while a large checkpoint goes to disk. One may be in progress;
    // a checkpoint that arrives while the writer is busy is skipped (a later one covers
    // more), except the last one, written at shutdown.
    std::thread::scope(|scope| {
        let (ckpt_tx, ckpt_rx) = sync_channel::<(u64, steadfast_verify::StateCopy)>(0);
        scope.spawn(move || {
            for (seq, state) in ckpt_rx {
                match checkpoint::write(ckpt_dir, seq, version, &state.to_bytes()) {
                    Ok(()) => checkpointed.store(seq, Ordering::Release),
                    Err(e) => tracing::warn!(error = %e, "failed to write a checkpoint"),
                }
            }
        });
        let mut skipped = None;
        loop {
            let Ok(first) = rx.recv() else { return };
            let mut events = Vec::new();
            let mut checkpoint = None;
            let mut stop = false;
            let mut next = Some(first);
            while let Some(msg) = next.take() {
                match msg {
                    ToStore::Events(e) => events.extend(e),
                    ToStore::Checkpoint { seq, state } => {
                        checkpoint = Some((seq, state));
                        break;
                    }
                    ToStore::Stop => {
                        stop = true;
                        break;
                    }
                }
                if events.len() < 10_000 {
                    next = rx.try_recv().ok();
                }
            }
            if !events.is_empty() {
                let now = wall_ms();
                let result = store
                    .lock()
                    .expect("store lock")
                    .apply(&events, now, webhooks);
                match result {
                    Ok(fresh) => {
                        record_breaks(metrics, &events, now);
                        count_live_breaks(metrics, &events, &fresh);
                    }
                    Err(e) => {
                        // The events are in the WAL: a restart replays them. Stop
                        // checkpointing so that replay starts before them.
                        tracing::error!(error = %e, "failed to store breaks; they will be replayed from the WAL on restart");
                        return;
                    }
                }
            }
            // Every event before this checkpoint is committed now, so it may be written.
            if let Some(ckpt) = checkpoint {
                skipped = match ckpt_tx.try_send(ckpt) {
                    Err(TrySendError::Full(ckpt)) => Some(ckpt),
                    _ => None,
                };
            }
            if stop {
                // The newest checkpoint is written even if it has to wait for the writer.
                if let Some(ckpt) = skipped.take() {
                    let _ = ckpt_tx.send(ckpt);
                }
                return;
            }
        }
    });
}
