//! The streaming engine. See the crate docs for the contract; the comments here say why
//! the state looks the way it does.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::sync::Arc;

use hashbrown::{HashMap, HashSet, HashTable};
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;
use steadfast_model::{Currency, FundRecord, Millis, RecordFp};

use crate::breaks::{Break, BreakKind, Event, Evidence};
use crate::packed::Packed;
use crate::rules::{Rule, RuleKind, RuleSet, Side};

/// Where the edge can find a record again (for the server: its position in the WAL).
pub type Loc = u64;

/// Bounds on the engine's state. Every map the engine keeps is bounded by one of these.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Limits {
    /// Pending (unmatched) records per rule. The edge refuses batches that could pass it,
    /// and the engine reports a `capacity` break once fewer than one batch fits.
    pub open_records_max: usize,
    /// The largest batch the edge admits; sets how early `capacity` is reported.
    pub batch_records_max: usize,
    /// Record ids remembered for idempotency.
    pub record_ids_max: usize,
    /// How long a record id is remembered; a retry after that counts as new (and then
    /// shows as a `duplicate` break rather than passing silently).
    pub record_id_retention_ms: Millis,
    /// Matched or broken keys kept per rule, for duplicates, late records and amendments.
    pub closed_keys_max: usize,
    pub closed_retention_ms: Millis,
}

impl Limits {
    /// Limits for a batch run over files (`verify_batch`, `BatchVerifier`): nothing is
    /// refused, and ids and keys are kept for the whole run, so the state grows with the
    /// input (the engine's bytes per record, not the records themselves).
    pub fn unbounded_batch() -> Limits {
        Limits {
            open_records_max: usize::MAX / 4,
            record_ids_max: usize::MAX / 4,
            closed_keys_max: usize::MAX / 4,
            record_id_retention_ms: i64::MAX / 4,
            closed_retention_ms: i64::MAX / 4,
            ..Limits::default()
        }
    }
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            open_records_max: 2_000_000,
            batch_records_max: 10_000,
            record_ids_max: 5_000_000,
            record_id_retention_ms: 15 * 60 * 1000,
            closed_keys_max: 1_000_000,
            closed_retention_ms: 15 * 60 * 1000,
        }
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct EngineStats {
    pub records_seen: u64,
    pub retries_ignored: u64,
    pub record_ids_evicted: u64,
    pub closed_keys_evicted: u64,
    /// Open (pending) records per rule, in rule order.
    pub open_per_rule: Vec<usize>,
}

/// One record held by a rule: the few values the rule compares, and where the whole
/// record can be found again.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Entry {
    /// key, record_id, trace_id, drill, then one value per compared field.
    text: Packed,
    amount: i64,
    event_time: Millis,
    loc: Loc,
    currency: Currency,
    side: u8,
}

const T_KEY: usize = 0;
const T_RECORD_ID: usize = 1;
const T_TRACE: usize = 2;
const T_DRILL: usize = 3;
const T_FIELDS: usize = 4;

impl Entry {
    fn record_id(&self) -> &str {
        self.text.get(T_RECORD_ID)
    }
    fn drill(&self) -> Option<&str> {
        Some(self.text.get(T_DRILL)).filter(|s| !s.is_empty())
    }
    fn field(&self, i: usize) -> &str {
        self.text.get(T_FIELDS + i)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum Phase {
    Pending,
    Closed,
    /// An unused slot.
    Free,
}

/// An open break a key still carries, so that re-evaluation can resolve it.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct OpenBreak {
    id: u64,
    slot: Slot,
}

/// Identifies a finding across re-evaluations: the same slot is the same disagreement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Slot {
    kind: BreakKind,
    detail: u64,
}

/// One business key of a keyed rule: its records and where it stands. The key text is
/// the first string of every entry's packed text, so a key costs no allocation of its own.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct KeyState {
    entries: SmallVec<[Entry; 1]>,
    /// The deadline while pending; the time it closed once closed.
    time: Millis,
    phase: Phase,
    /// Whether `KeyedState::breaks` holds open breaks for this key.
    has_breaks: bool,
    /// The fragment of the key's hash its index bucket holds, so that removing the key
    /// finds its bucket without reading the key text. Fits in what would be padding;
    /// derived from the key, so not serialized but set again by `rebuild_index`.
    #[serde(skip)]
    frag: HashFragment,
}

impl KeyState {
    fn key(&self) -> &str {
        self.entries
            .first()
            .map(|e| e.text.get(T_KEY))
            .unwrap_or("")
    }
}

/// Key states in chunks shared behind `Arc`: copying the slab for a checkpoint copies
/// only the chunk pointers, and the engine copies a chunk the first time it changes one
/// that a checkpoint still reads (copy on write). A whole-slab copy would pause the engine
/// for a time proportional to the keys held.
#[derive(Clone, Debug, Default)]
struct Slab {
    chunks: Vec<Arc<Vec<KeyState>>>,
    len: usize,
}

/// Key states per slab chunk: small, so that a write after a checkpoint copies little.
const SLAB_CHUNK: usize = 64;

impl Slab {
    fn len(&self) -> usize {
        self.len
    }

    fn push(&mut self, state: KeyState) {
        if self.len.is_multiple_of(SLAB_CHUNK) {
            self.chunks.push(Arc::new(Vec::with_capacity(SLAB_CHUNK)));
        }
        let last = self.chunks.last_mut().expect("a chunk was just ensured");
        Arc::make_mut(last).push(state);
        self.len += 1;
    }

    fn iter(&self) -> impl Iterator<Item = &KeyState> {
        self.chunks.iter().flat_map(|c| c.iter())
    }
}

impl std::ops::Index<usize> for Slab {
    type Output = KeyState;
    fn index(&self, i: usize) -> &KeyState {
        &self.chunks[i / SLAB_CHUNK][i % SLAB_CHUNK]
    }
}

impl std::ops::IndexMut<usize> for Slab {
    fn index_mut(&mut self, i: usize) -> &mut KeyState {
        &mut Arc::make_mut(&mut self.chunks[i / SLAB_CHUNK])[i % SLAB_CHUNK]
    }
}

/// Serialized as a plain sequence of key states.
impl Serialize for Slab {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        // The length up front: postcard (like most formats) needs it.
        let mut seq = s.serialize_seq(Some(self.len))?;
        for state in self.iter() {
            seq.serialize_element(state)?;
        }
        seq.end()
    }
}

impl<'de> Deserialize<'de> for Slab {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Slab, D::Error> {
        let mut slab = Slab::default();
        for state in Vec::<KeyState>::deserialize(d)? {
            slab.push(state);
        }
        Ok(slab)
    }
}

/// A first-in first-out queue in chunks shared behind `Arc`, for the same reason as
/// [`Slab`]: a checkpoint copies chunk pointers, not entries. Pushing copies at most the
/// last chunk (once, if a checkpoint still reads it); popping never copies.
#[derive(Clone, Debug)]
struct ChunkQueue<T: Clone> {
    chunks: VecDeque<Arc<Vec<T>>>,
    /// Position of the front entry in the first chunk.
    head: usize,
    len: usize,
}

/// Entries per queue chunk.
const QUEUE_CHUNK: usize = 1024;

impl<T: Clone> Default for ChunkQueue<T> {
    fn default() -> Self {
        ChunkQueue {
            chunks: VecDeque::new(),
            head: 0,
            len: 0,
        }
    }
}

impl<T: Clone> ChunkQueue<T> {
    fn len(&self) -> usize {
        self.len
    }

    fn push_back(&mut self, item: T) {
        if self.chunks.back().is_none_or(|c| c.len() == QUEUE_CHUNK) {
            self.chunks
                .push_back(Arc::new(Vec::with_capacity(QUEUE_CHUNK)));
        }
        let last = self.chunks.back_mut().expect("a chunk was just ensured");
        Arc::make_mut(last).push(item);
        self.len += 1;
    }

    fn front(&self) -> Option<&T> {
        self.chunks.front().and_then(|c| c.get(self.head))
    }

    fn pop_front(&mut self) {
        let Some(first) = self.chunks.front() else {
            return;
        };
        self.head += 1;
        self.len -= 1;
        if self.head == first.len() && (first.len() == QUEUE_CHUNK || self.len == 0) {
            self.chunks.pop_front();
            self.head = 0;
        }
    }

    fn iter(&self) -> impl Iterator<Item = &T> {
        let head = self.head;
        self.chunks
            .iter()
            .enumerate()
            .flat_map(move |(i, c)| c[if i == 0 { head } else { 0 }..].iter())
    }
}

impl<T: Clone + Serialize> Serialize for ChunkQueue<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut seq = s.serialize_seq(Some(self.len))?;
        for item in self.iter() {
            seq.serialize_element(item)?;
        }
        seq.end()
    }
}

impl<'de, T: Clone + Deserialize<'de>> Deserialize<'de> for ChunkQueue<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<ChunkQueue<T>, D::Error> {
        let mut q = ChunkQueue::default();
        for item in Vec::<T>::deserialize(d)? {
            q.push_back(item);
        }
        Ok(q)
    }
}

/// Pending keys' deadlines, in buckets by the millisecond they fall due. Records arrive
/// at thousands per millisecond of event time, so a bucket holds many keys and finding
/// one touches a small, hot tree, where a binary heap of a million deadlines would make
/// every push and pop walk a path of cache misses. Entries are never updated: one whose
/// key has closed or moved to another deadline is skipped when its bucket falls due.
///
/// Serialized as a plain sequence of (deadline, slot) pairs: the form a binary heap of
/// those pairs had, so checkpoints read either way.
#[derive(Clone, Debug, Default)]
struct Deadlines {
    due: BTreeMap<Millis, Vec<SlotId>>,
}

impl Deadlines {
    fn push(&mut self, at: Millis, id: SlotId) {
        self.due.entry(at).or_default().push(id);
    }

    /// Takes the earliest bucket if it falls due by `until`, its slots in ascending order
    /// (the order a heap of (deadline, slot) pairs gives, so breaks are numbered alike).
    fn pop_due(&mut self, until: Millis) -> Option<(Millis, Vec<SlotId>)> {
        let entry = self.due.first_entry()?;
        if *entry.key() > until {
            return None;
        }
        let (at, mut ids) = entry.remove_entry();
        ids.sort_unstable();
        Some((at, ids))
    }

    fn iter(&self) -> impl Iterator<Item = (Millis, SlotId)> + '_ {
        self.due
            .iter()
            .flat_map(|(&at, ids)| ids.iter().map(move |&id| (at, id)))
    }
}

impl Serialize for Deadlines {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let len = self.due.values().map(Vec::len).sum();
        let mut seq = s.serialize_seq(Some(len))?;
        for pair in self.iter() {
            seq.serialize_element(&pair)?;
        }
        seq.end()
    }
}

impl<'de> Deserialize<'de> for Deadlines {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Deadlines, D::Error> {
        let mut q = Deadlines::default();
        for (at, id) in Vec::<(Millis, SlotId)>::deserialize(d)? {
            q.push(at, id);
        }
        Ok(q)
    }
}

/// Slot index of a key in `KeyedState::slots`.
type SlotId = u32;

/// A disagreement a rule's evaluation found, before it becomes a break.
struct Finding {
    slot: Slot,
    side: Option<String>,
    field: Option<String>,
    expected: Option<String>,
    actual: Option<String>,
    message: String,
    evidence: SmallVec<[usize; 2]>,
}

/// The state of one keyed rule. Keys live in a slab (`slots`, reused through `free`) and
/// are found through `index`, a hash table of (hash fragment, slot id): nine times smaller
/// than a table of key states, which keeps open records small, and it grows without
/// touching the slots because each bucket carries the hash it was placed by. Deadline and
/// expiry queues refer to slots and are checked lazily: an entry whose slot has moved on
/// is skipped.
#[derive(Debug, Serialize, Deserialize, Default)]
struct KeyedState {
    slots: Slab,
    free: Vec<SlotId>,
    /// Rebuilt from `slots` after a restore.
    #[serde(skip)]
    index: HashTable<(HashFragment, SlotId)>,
    deadlines: Deadlines,
    closed: ChunkQueue<(Millis, SlotId)>,
    /// Open breaks per key, for the few keys that have any.
    breaks: BTreeMap<SlotId, Vec<OpenBreak>>,
    open: usize,
    closed_count: usize,
    capacity_break: Option<u64>,
}

/// A copy for a checkpoint: everything but the index, which is derived from the slots,
/// never serialized, and rebuilt on restore (`rebuild_index`). Copying it would double
/// the engine's pause for a checkpoint.
impl Clone for KeyedState {
    fn clone(&self) -> KeyedState {
        KeyedState {
            slots: self.slots.clone(),
            free: self.free.clone(),
            index: HashTable::new(),
            deadlines: self.deadlines.clone(),
            closed: self.closed.clone(),
            breaks: self.breaks.clone(),
            open: self.open,
            closed_count: self.closed_count,
            capacity_break: self.capacity_break,
        }
    }
}

impl KeyedState {
    fn find(&self, hash: u64, key: &str) -> Option<SlotId> {
        let (slots, frag) = (&self.slots, fragment(hash));
        self.index
            .find(hash, |&(f, i)| f == frag && slots[i as usize].key() == key)
            .map(|&(_, i)| i)
    }

    /// The slot of the first index bucket holding `hash`'s fragment: the key's slot
    /// unless another key shares the fragment. Reads the index only, not the slots.
    fn candidate(&self, hash: u64) -> Option<SlotId> {
        let frag = fragment(hash);
        self.index.find(hash, |&(f, _)| f == frag).map(|&(_, i)| i)
    }

    fn insert(&mut self, hash: u64, state: KeyState) -> SlotId {
        let id = match self.free.pop() {
            Some(id) => {
                self.slots[id as usize] = state;
                id
            }
            None => {
                self.slots.push(state);
                (self.slots.len() - 1) as SlotId
            }
        };
        self.index
            .insert_unique(hash, (fragment(hash), id), |&(f, _)| spread(f));
        id
    }

    fn remove(&mut self, id: SlotId) {
        let hash = spread(self.slots[id as usize].frag);
        if let Ok(entry) = self.index.find_entry(hash, |&(_, i)| i == id) {
            entry.remove();
        }
        self.slots[id as usize] = KeyState {
            entries: SmallVec::new(),
            time: 0,
            phase: Phase::Free,
            has_breaks: false,
            frag: 0,
        };
        self.breaks.remove(&id);
        self.free.push(id);
    }

    fn rebuild_index(&mut self) {
        let mut index = HashTable::with_capacity(self.slots.len());
        for i in 0..self.slots.len() {
            if self.slots[i].phase != Phase::Free {
                let hash = key_hash(self.slots[i].key());
                self.slots[i].frag = fragment(hash);
                index.insert_unique(hash, (fragment(hash), i as SlotId), |&(f, _)| spread(f));
            }
        }
        self.index = index;
    }
}

/// Per-account state of a balance rule.
#[derive(Clone, Debug, Serialize, Deserialize, Default)]
struct Account {
    /// The last checked snapshot: (event time, balance, currency, record id).
    last: Option<(Millis, i64, Currency, String)>,
    /// Movements after `last`, (event time, signed amount, record id, loc).
    movements: Vec<(Millis, i64, String, Loc)>,
    /// Snapshots waiting for their lateness budget, in arrival order.
    snapshots: Vec<(Millis, i64, Currency, String, Loc)>,
    /// The drill whose records this account carries (drills use synthetic accounts).
    drill: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, Default)]
struct BalanceState {
    accounts: BTreeMap<String, Account>,
    deadlines: BinaryHeap<Reverse<(Millis, String)>>,
    /// Movements and snapshots waiting, over all accounts (kept, not counted, because
    /// admission control asks after every batch).
    pending: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize, Default)]
struct DailyState {
    /// (business day start, currency) → signed sum.
    totals: BTreeMap<(Millis, Currency), i128>,
    /// Days already checked, with the break raised for them if any.
    checked: BTreeMap<(Millis, Currency), Option<u64>>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct RuleState {
    keyed: KeyedState,
    balance: BalanceState,
    daily: DailyState,
}

#[derive(Clone, Debug, Serialize, Deserialize, Default)]
struct SourceState {
    last_seen: Option<Millis>,
    silent_break: Option<u64>,
}

/// The part of the engine that changes; serialized as a checkpoint.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct State {
    now: Millis,
    started: bool,
    next_break_id: u64,
    /// Arrival order of remembered ids; the fingerprint split in two keeps entries at 24
    /// bytes. The set of ids (`Engine::seen`) is rebuilt from it on restore.
    seen_order: ChunkQueue<(Millis, [u64; 2])>,
    rules: Vec<RuleState>,
    sources: Vec<SourceState>,
    stats: EngineStats,
}

/// source → kind → the (rule index, side index) pairs a record feeds.
type Routes = HashMap<String, HashMap<String, Arc<[(usize, u8)]>>>;

/// A copy of the engine's state, for a checkpoint.
pub struct StateCopy(State);

impl StateCopy {
    pub fn to_bytes(&self) -> Vec<u8> {
        postcard::to_allocvec(&self.0).expect("engine state serializes")
    }
}

/// The streaming verification engine.
pub struct Engine {
    rules: Arc<RuleSet>,
    limits: Limits,
    routes: Arc<Routes>,
    /// Reused for building business keys.
    key_buf: String,
    /// Reused by `ingest` for its first pass: what it found, and the keys it built.
    probes: Vec<Probe>,
    probe_keys: String,
    /// The remembered record ids: derived from `s.seen_order`, so neither copied for a
    /// checkpoint nor serialized.
    seen: HashSet<RecordFp>,
    /// source name → index in `rules.sources`.
    source_index: HashMap<String, usize>,
    day: BusinessDayClock,
    s: State,
}

#[derive(Clone)]
struct BusinessDayClock {
    tz: chrono_tz::Tz,
    cutoff_minutes: u32,
}

impl BusinessDayClock {
    /// Start of the business day (as epoch ms) that `t` falls in.
    fn day_start(&self, t: Millis) -> Millis {
        use chrono::{TimeZone, Timelike};
        let Some(utc) = chrono::DateTime::from_timestamp_millis(t) else {
            return t;
        };
        let local = utc.with_timezone(&self.tz);
        let minutes = local.hour() * 60 + local.minute();
        let mut date = local.date_naive();
        if minutes < self.cutoff_minutes {
            date = date.pred_opt().unwrap_or(date);
        }
        let naive = date.and_hms_opt(self.cutoff_minutes / 60, self.cutoff_minutes % 60, 0);
        naive
            .and_then(|n| self.tz.from_local_datetime(&n).earliest())
            .map(|d| d.timestamp_millis())
            .unwrap_or(t)
    }

    /// Start of the business day after the one starting at `day_start`. Days are 23 to
    /// 25 hours long across daylight-saving changes, so 26 hours always land in the next.
    fn next_day_start(&self, day_start: Millis) -> Millis {
        self.day_start(day_start.saturating_add(26 * 3600 * 1000))
    }

    /// The business date: the local date on which the day ends, so that with a 22:00
    /// cut-off the evening's late transactions count for the next date.
    fn label(&self, day_start: Millis) -> String {
        chrono::DateTime::from_timestamp_millis(self.next_day_start(day_start) - 1)
            .map(|d| d.with_timezone(&self.tz).format("%Y-%m-%d").to_string())
            .unwrap_or_default()
    }
}

const DAY_MS: Millis = 24 * 3600 * 1000;
/// How long a business day stays open to late entries after it was checked.
const DAILY_HORIZON_MS: Millis = 7 * DAY_MS;

/// The 32 bits of a key's hash that its index bucket keeps.
type HashFragment = u32;

/// A key's hash as the index uses it: made from 32 bits alone, so that the index can
/// rehash from what its buckets hold.
fn key_hash(key: &str) -> u64 {
    spread((xxhash_rust::xxh3::xxh3_64(key.as_bytes()) >> 32) as HashFragment)
}

/// Spreads a fragment over 64 bits: hashbrown takes its control byte from the top bits
/// and the bucket from the low bits. Multiplying by an odd constant is invertible, so
/// `fragment` recovers the fragment from the spread hash.
fn spread(f: HashFragment) -> u64 {
    (f as u64).wrapping_mul(SPREAD)
}

fn fragment(hash: u64) -> HashFragment {
    hash.wrapping_mul(SPREAD_INVERSE) as HashFragment
}

const SPREAD: u64 = 0x9E37_79B9_7F4A_7C15;
const SPREAD_INVERSE: u64 = 0xF1DE_83E1_9937_733D;
const _: () = assert!(SPREAD.wrapping_mul(SPREAD_INVERSE) == 1);

fn side_of(rule: &Rule, side: u8) -> &Side {
    match (&rule.kind, side) {
        (RuleKind::Match { left, .. }, 0) => left,
        (RuleKind::Match { right, .. }, _) => right,
        (RuleKind::SumMatch { upstream, .. }, 0) => upstream,
        (RuleKind::SumMatch { downstream, .. }, _) => downstream,
        (RuleKind::Conservation { entries, .. }, _) => entries,
        (RuleKind::Balance { entries, .. }, 0) => entries,
        (RuleKind::Balance { snapshots, .. }, _) => snapshots,
    }
}

fn side_name(rule: &Rule, side: u8) -> &'static str {
    match (&rule.kind, side) {
        (RuleKind::Match { .. }, 0) => "left",
        (RuleKind::Match { .. }, _) => "right",
        (RuleKind::SumMatch { .. }, 0) => "upstream",
        (RuleKind::SumMatch { .. }, _) => "downstream",
        (RuleKind::Conservation { .. }, _) => "entries",
        (RuleKind::Balance { .. }, 0) => "entries",
        (RuleKind::Balance { .. }, _) => "snapshots",
    }
}

use steadfast_model::format_minor;

/// One record of a batch in `Engine::ingest`.
struct Step<'a, 'r> {
    loc: Loc,
    record: &'a FundRecord,
    fp: RecordFp,
    /// Whether the id set held the id already (before the batch or earlier in it): a
    /// retry.
    known: bool,
    routes: &'r [(usize, u8)],
    /// The record's entries in the batch's probes, one per element of `steps`.
    probes: std::ops::Range<usize>,
}

/// What the first pass of `Engine::ingest` found for one (record, rule side).
#[derive(Clone, Copy, Debug)]
enum Probe {
    /// The side's filter leaves the record out.
    Filtered,
    /// A keyed rule: the key (a range of the batch's key text), its hash, and its slot if
    /// the rule held the key before the batch.
    Keyed {
        rule: u32,
        key: (u32, u32),
        hash: u64,
        slot: Option<SlotId>,
    },
    /// Worked out in the second pass: balance rules, and records missing a key field.
    Later,
}

/// The (rule, side) pairs a record's source and kind feed.
fn route<'r>(routes: &'r Routes, record: &FundRecord) -> &'r [(usize, u8)] {
    routes
        .get(record.source.as_str())
        .and_then(|k| k.get(record.kind.as_str()))
        .map(|r| &r[..])
        .unwrap_or(&[])
}

/// The pairs of `routes` a record is applied to: all of them, except that a drill's
/// record that names its rules goes only to those.
fn steps<'r>(
    rules: &'r RuleSet,
    record: &'r FundRecord,
    routes: &'r [(usize, u8)],
) -> impl Iterator<Item = (usize, u8)> + 'r {
    let only = record
        .drill
        .as_ref()
        .and(record.attributes.get(steadfast_model::DRILL_RULES_ATTR));
    routes.iter().copied().filter(move |&(ri, _)| {
        only.is_none_or(|list| list.split(',').any(|n| n == rules.rules[ri].name))
    })
}

impl Engine {
    pub fn new(rules: Arc<RuleSet>, limits: Limits) -> Engine {
        let mut flat: HashMap<(String, String), Vec<(usize, u8)>> = HashMap::new();
        for (i, rule) in rules.rules.iter().enumerate() {
            let sides: &[u8] = match rule.kind {
                RuleKind::Conservation { .. } => &[0],
                _ => &[0, 1],
            };
            for &s in sides {
                let side = side_of(rule, s);
                flat.entry((side.source.clone(), side.kind.clone()))
                    .or_default()
                    .push((i, s));
            }
        }
        let mut routes = Routes::new();
        for ((source, kind), list) in flat {
            routes.entry(source).or_default().insert(kind, list.into());
        }
        let source_index = rules
            .sources
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name.clone(), i))
            .collect();
        let day = BusinessDayClock {
            tz: rules
                .business_day
                .timezone
                .parse()
                .unwrap_or(chrono_tz::UTC),
            cutoff_minutes: rules.business_day.cutoff_minutes,
        };
        let s = State {
            now: Millis::MIN,
            started: false,
            next_break_id: 1,
            seen_order: ChunkQueue::default(),
            rules: rules
                .rules
                .iter()
                .map(|_| RuleState {
                    keyed: KeyedState::default(),
                    balance: BalanceState::default(),
                    daily: DailyState::default(),
                })
                .collect(),
            sources: rules
                .sources
                .iter()
                .map(|_| SourceState::default())
                .collect(),
            stats: EngineStats {
                open_per_rule: vec![0; rules.rules.len()],
                ..Default::default()
            },
        };
        Engine {
            rules,
            limits,
            routes: Arc::new(routes),
            key_buf: String::new(),
            probes: Vec::new(),
            probe_keys: String::new(),
            seen: HashSet::new(),
            source_index,
            day,
            s,
        }
    }

    /// Starts break ids at `first` (after a rule change, ids continue past those stored).
    pub fn with_first_break_id(mut self, first: u64) -> Engine {
        self.s.next_break_id = first.max(1);
        self
    }

    pub fn rules(&self) -> &Arc<RuleSet> {
        &self.rules
    }

    pub fn now(&self) -> Millis {
        self.s.now
    }

    pub fn stats(&self) -> EngineStats {
        let mut stats = self.s.stats.clone();
        stats.open_per_rule = self
            .s
            .rules
            .iter()
            .map(|r| r.keyed.open + r.balance_open())
            .collect();
        stats
    }

    /// Total open (pending) records over all rules.
    pub fn open_records(&self) -> usize {
        self.s
            .rules
            .iter()
            .map(|r| r.keyed.open + r.balance_open())
            .sum()
    }

    /// How many more records can be admitted before some rule reaches its bound. Each
    /// record opens at most one entry per rule, so admitting no more than this keeps
    /// every rule within `open_records_max`.
    pub fn headroom(&self) -> usize {
        let fullest = self
            .s
            .rules
            .iter()
            .map(|r| r.keyed.open + r.balance_open())
            .max()
            .unwrap_or(0);
        self.limits.open_records_max.saturating_sub(fullest)
    }

    /// Serializes the engine's state for a checkpoint.
    pub fn snapshot(&self) -> Vec<u8> {
        self.copy_state().to_bytes()
    }

    /// A copy of the engine's state. Record text is shared, so the copy is quick and the
    /// slow part, serializing it, can happen on another thread.
    pub fn copy_state(&self) -> StateCopy {
        StateCopy(self.s.clone())
    }

    /// Makes room for `n` remembered record ids up front, so that the id set never stops
    /// the engine to grow (growing a table of millions takes a noticeable pause).
    pub fn reserve_record_ids(&mut self, n: usize) {
        let n = n.min(self.limits.record_ids_max);
        self.seen.reserve(n.saturating_sub(self.seen.len()));
    }

    /// Restores a checkpoint taken with the same rule set.
    pub fn restore(rules: Arc<RuleSet>, limits: Limits, bytes: &[u8]) -> Result<Engine, String> {
        let mut e = Engine::new(rules, limits);
        let s: State = postcard::from_bytes(bytes).map_err(|err| err.to_string())?;
        if s.rules.len() != e.s.rules.len() || s.sources.len() != e.s.sources.len() {
            return Err("checkpoint was taken with a different rule set".into());
        }
        e.s = s;
        for r in &mut e.s.rules {
            r.keyed.rebuild_index();
        }
        e.seen =
            e.s.seen_order
                .iter()
                .map(|&(_, [lo, hi])| (lo as u128) | ((hi as u128) << 64))
                .collect();
        Ok(e)
    }

    fn advance(&mut self, now: Millis) {
        if now > self.s.now {
            self.s.now = now;
        }
        if !self.s.started {
            self.s.started = true;
            let now = self.s.now;
            for src in &mut self.s.sources {
                src.last_seen.get_or_insert(now);
            }
        }
    }

    fn next_id(&mut self) -> u64 {
        let id = self.s.next_break_id;
        self.s.next_break_id += 1;
        id
    }

    /// Consumes records that arrived at engine time `now`, in arrival order.
    ///
    /// A batch is worked in passes. The state holds millions of entries, so nearly every
    /// probe of the id set or of a rule's key index is a cache miss. The first passes add
    /// the batch's ids to the id set (in arrival order, so a repeat within the batch is a
    /// retry as it would be one by one), then look each record's keys up in the indexes of
    /// the rules it feeds. Their iterations do not depend on each other, so the processor
    /// overlaps their misses, where record-by-record work would wait for each in turn. The
    /// last pass does the work with what they found. That stays true within the batch:
    /// keys only leave the state in `tick`, never during `ingest`; a key the lookup did
    /// not find is looked up again, because an earlier record of the batch may add it.
    pub fn ingest<'a>(
        &mut self,
        now: Millis,
        records: impl IntoIterator<Item = (Loc, &'a FundRecord)>,
        out: &mut Vec<Event>,
    ) {
        self.advance(now);
        let (rules, routes) = (self.rules.clone(), self.routes.clone());
        let mut batch: Vec<Step<'a, '_>> = records
            .into_iter()
            .map(|(loc, record)| Step {
                loc,
                record,
                fp: record.fingerprint(),
                known: false,
                routes: route(&routes, record),
                probes: 0..0,
            })
            .collect();
        let mut probes = std::mem::take(&mut self.probes);
        let mut keys = std::mem::take(&mut self.probe_keys);
        probes.clear();
        keys.clear();
        for step in &mut batch {
            step.known = !self.seen.insert(step.fp);
        }
        for step in &mut batch {
            if step.known {
                continue;
            }
            let start = probes.len();
            for (ri, side) in steps(&rules, step.record, step.routes) {
                probes.push(self.probe(&rules, ri, side, step.record, &mut keys));
            }
            step.probes = start..probes.len();
        }
        // The index lookups in two short loops, so that more of their misses overlap: the
        // buckets first (a candidate is a bucket with the key's hash fragment), then the
        // candidates' key text. A candidate whose text differs is a fragment collision; the
        // full lookup settles it.
        for probe in &mut probes {
            if let Probe::Keyed {
                rule, hash, slot, ..
            } = probe
            {
                *slot = self.s.rules[*rule as usize].keyed.candidate(*hash);
            }
        }
        for probe in &mut probes {
            if let Probe::Keyed {
                rule,
                key,
                hash,
                slot,
            } = probe
            {
                let st = &self.s.rules[*rule as usize].keyed;
                let text = &keys[key.0 as usize..key.1 as usize];
                if slot.is_some_and(|id| st.slots[id as usize].key() != text) {
                    *slot = st.find(*hash, text);
                }
            }
        }
        for step in batch {
            let (loc, record) = (step.loc, step.record);
            self.s.stats.records_seen += 1;
            if step.known {
                self.s.stats.retries_ignored += 1;
                continue;
            }
            self.s
                .seen_order
                .push_back((self.s.now, [step.fp as u64, (step.fp >> 64) as u64]));
            // A drill's forgery proves nothing about its source being alive.
            let source = match record.drill {
                None => self.source_index.get(record.source.as_str()),
                Some(_) => None,
            };
            if let Some(&i) = source {
                let now = self.s.now;
                let st = &mut self.s.sources[i];
                st.last_seen = Some(now);
                if let Some(id) = st.silent_break.take() {
                    out.push(Event::Resolved {
                        break_id: id,
                        by_record: Some(record.record_id.clone()),
                        reason: format!("source {} resumed", record.source),
                        at: now,
                    });
                }
            }
            let found = &probes[step.probes];
            for (&probe, (ri, side)) in found.iter().zip(steps(&rules, record, step.routes)) {
                self.apply(&rules, ri, side, loc, record, probe, &keys, out);
            }
        }
        self.probes = probes;
        self.probe_keys = keys;
        self.expire_ids();
        self.check_capacity(out);
    }

    /// The first pass's look at one (record, rule side): whether the record passes the
    /// side's filter, and its key and the key's hash (its slot is looked up after).
    fn probe(
        &mut self,
        rules: &RuleSet,
        ri: usize,
        side: u8,
        record: &FundRecord,
        keys: &mut String,
    ) -> Probe {
        let rule = &rules.rules[ri];
        let spec = side_of(rule, side);
        if !Self::passes(spec, record) {
            return Probe::Filtered;
        }
        if matches!(rule.kind, RuleKind::Balance { .. }) {
            return Probe::Later;
        }
        let mut key = std::mem::take(&mut self.key_buf);
        let probe = match Self::key_of(spec, record, &mut key) {
            Ok(()) => {
                let hash = key_hash(&key);
                let start = keys.len() as u32;
                keys.push_str(&key);
                Probe::Keyed {
                    rule: ri as u32,
                    key: (start, keys.len() as u32),
                    hash,
                    slot: None,
                }
            }
            Err(_) => Probe::Later,
        };
        self.key_buf = key;
        probe
    }

    /// Advances engine time without records: fires deadlines and silence checks.
    pub fn tick(&mut self, now: Millis, out: &mut Vec<Event>) {
        self.advance(now);
        self.fire(self.s.now, out);
        self.expire_ids();
        self.check_capacity(out);
    }

    /// End of input (batch mode): fires every pending deadline.
    pub fn flush(&mut self, out: &mut Vec<Event>) {
        self.fire(Millis::MAX, out);
    }

    fn expire_ids(&mut self) {
        let horizon = self
            .s
            .now
            .saturating_sub(self.limits.record_id_retention_ms);
        let over = self
            .s
            .seen_order
            .len()
            .saturating_sub(self.limits.record_ids_max);
        // First count what leaves and touch it in the id set, a tight loop whose cache
        // misses overlap (see `ingest`); then remove it.
        let mut leaving = 0;
        for &(at, [lo, hi]) in self.s.seen_order.iter() {
            if at >= horizon && leaving >= over {
                break;
            }
            leaving += 1;
            let fp = (lo as u128) | ((hi as u128) << 64);
            std::hint::black_box(self.seen.contains(&fp));
        }
        for i in 0..leaving {
            let Some(&(at, [lo, hi])) = self.s.seen_order.front() else {
                break;
            };
            if i < over && at >= horizon {
                self.s.stats.record_ids_evicted += 1;
            }
            self.s.seen_order.pop_front();
            self.seen.remove(&((lo as u128) | ((hi as u128) << 64)));
        }
    }

    fn check_capacity(&mut self, out: &mut Vec<Event>) {
        let zone = self
            .limits
            .open_records_max
            .saturating_sub(self.limits.batch_records_max);
        let now = self.s.now;
        for i in 0..self.s.rules.len() {
            let open = self.s.rules[i].keyed.open + self.s.rules[i].balance_open();
            match self.s.rules[i].keyed.capacity_break {
                None if open > zone => {
                    let id = self.next_id();
                    self.s.rules[i].keyed.capacity_break = Some(id);
                    let rule = &self.rules.rules[i];
                    out.push(Event::Break(Break {
                        expected: Some(self.limits.open_records_max.to_string()),
                        actual: Some(open.to_string()),
                        message: format!(
                            "rule {} holds {open} open records, near its bound of {}; ingest is refused until it drains",
                            rule.name, self.limits.open_records_max
                        ),
                        ..Break::of(id, rule, &self.rules.version, BreakKind::Capacity, String::new(), now, now)
                    }));
                }
                Some(id) if open * 10 < self.limits.open_records_max * 9 => {
                    self.s.rules[i].keyed.capacity_break = None;
                    out.push(Event::Resolved {
                        break_id: id,
                        by_record: None,
                        reason: "open state drained below 90% of its bound".into(),
                        at: now,
                    });
                }
                _ => {}
            }
        }
    }

    fn fire(&mut self, until: Millis, out: &mut Vec<Event>) {
        let rules = self.rules.clone();
        for i in 0..self.s.rules.len() {
            self.fire_keyed(&rules, i, until, out);
            if let RuleKind::Balance { .. } = self.rules.rules[i].kind {
                self.fire_balance(i, until, out);
            }
            if let RuleKind::Conservation {
                daily: true,
                entries,
            } = &self.rules.rules[i].kind
            {
                let lateness = entries.lateness_ms;
                self.fire_daily(i, lateness, until, out);
            }
            self.expire_closed(i);
        }
        if until != Millis::MAX {
            let now = self.s.now;
            for (i, spec) in self.rules.sources.iter().enumerate() {
                let Some(budget) = spec.silence_budget_ms else {
                    continue;
                };
                let st = &self.s.sources[i];
                let Some(last) = st.last_seen else { continue };
                if st.silent_break.is_none() && now - last > budget {
                    let id = self.s.next_break_id;
                    self.s.next_break_id += 1;
                    self.s.sources[i].silent_break = Some(id);
                    out.push(Event::Break(Break {
                        id,
                        rule: format!("source:{}", spec.name),
                        rule_version: self.rules.version.clone(),
                        link: self
                            .rules
                            .links
                            .iter()
                            .find(|l| l.chain.contains(&spec.name))
                            .map(|l| l.name.clone()),
                        kind: BreakKind::SourceSilent,
                        key: spec.name.clone(),
                        side: None,
                        field: None,
                        expected: Some(format!("a record at least every {} ms", budget)),
                        actual: Some(format!("none for {} ms", now - last)),
                        message: format!(
                            "source {} has sent nothing for {} ms (budget {} ms)",
                            spec.name,
                            now - last,
                            budget
                        ),
                        evidence: vec![],
                        drill: None,
                        complete_at: last + budget,
                        emitted_at: now,
                    }));
                }
            }
        }
    }

    // ---- keyed rules: match, sum_match, conservation ----------------------------------

    /// Writes the record's business key for `side` into `key`, or names the missing field.
    fn key_of<'r>(side: &'r Side, record: &FundRecord, key: &mut String) -> Result<(), &'r str> {
        key.clear();
        for (i, field) in side.key.iter().enumerate() {
            let Some(v) = record.field(field) else {
                return Err(field);
            };
            if i > 0 {
                key.push('|');
            }
            key.push_str(v);
        }
        Ok(())
    }

    fn passes(side: &Side, record: &FundRecord) -> bool {
        side.filter.iter().all(|(field, allowed)| {
            record
                .field(field)
                .map(|v| allowed.iter().any(|a| a == v))
                .unwrap_or(false)
        })
    }

    fn entry(rule: &Rule, side: u8, loc: Loc, key: &str, record: &FundRecord) -> Entry {
        let compare: &[crate::rules::FieldPair] = match &rule.kind {
            RuleKind::Match { compare, .. } => compare,
            _ => &[],
        };
        // Amount and currency are compared through `Entry::amount` and `Entry::currency`
        // (see `evaluate`), so their parts stay empty and cost no lookup.
        let compared = compare.iter().map(move |p| match p.left.as_str() {
            "amount" | "currency" => "",
            _ => record
                .field(if side == 0 { &p.left } else { &p.right })
                .unwrap_or(""),
        });
        let fixed = [
            key,
            record.record_id.as_str(),
            record.trace_id.as_deref().unwrap_or(""),
            record.drill.as_deref().unwrap_or(""),
        ];
        let amount = match rule.kind {
            RuleKind::Conservation { .. } => record.signed_minor(),
            _ => record.amount.minor,
        };
        Entry {
            text: Packed::new(fixed.into_iter().chain(compared)),
            amount,
            event_time: record.event_time,
            loc,
            currency: record.amount.currency,
            side,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn apply(
        &mut self,
        rules: &RuleSet,
        ri: usize,
        side: u8,
        loc: Loc,
        record: &FundRecord,
        probe: Probe,
        keys: &str,
        out: &mut Vec<Event>,
    ) {
        match probe {
            Probe::Filtered => return,
            Probe::Keyed {
                key, hash, slot, ..
            } => {
                let key = &keys[key.0 as usize..key.1 as usize];
                // A key the first pass did not find may have come with an earlier record.
                let slot = slot.or_else(|| self.s.rules[ri].keyed.find(hash, key));
                return self.apply_keyed(rules, ri, side, loc, record, key, hash, slot, out);
            }
            // What the first pass leaves for later: balance rules, and records missing a
            // key field.
            Probe::Later => {}
        }
        let rule = &rules.rules[ri];
        let spec = side_of(rule, side);
        // The key is built in a reused buffer: most records need no allocation for it.
        let mut key = std::mem::take(&mut self.key_buf);
        match Self::key_of(spec, record, &mut key) {
            Ok(()) if matches!(rule.kind, RuleKind::Balance { .. }) => {
                self.apply_balance(ri, side, loc, record, &key, out)
            }
            Ok(()) => {
                let hash = key_hash(&key);
                let slot = self.s.rules[ri].keyed.find(hash, &key);
                self.apply_keyed(rules, ri, side, loc, record, &key, hash, slot, out)
            }
            Err(field) => {
                let id = self.next_id();
                let now = self.s.now;
                out.push(Event::Break(Break {
                    side: Some(side_name(rule, side).into()),
                    field: Some(field.to_string()),
                    message: format!("record {} has no key field `{field}`", record.record_id),
                    evidence: vec![
                        self.evidence_of(rule, &Self::entry(rule, side, loc, "", record))
                    ],
                    drill: record.drill.clone(),
                    ..Break::of(
                        id,
                        rule,
                        &rules.version,
                        BreakKind::MissingKey,
                        String::new(),
                        now,
                        now,
                    )
                }));
            }
        }
        self.key_buf = key;
    }

    #[allow(clippy::too_many_arguments)]
    fn apply_keyed(
        &mut self,
        rules: &RuleSet,
        ri: usize,
        side: u8,
        loc: Loc,
        record: &FundRecord,
        key: &str,
        hash: u64,
        found: Option<SlotId>,
        out: &mut Vec<Event>,
    ) {
        let rule = &rules.rules[ri];
        let spec = side_of(rule, side);
        if matches!(rule.kind, RuleKind::Conservation { daily: true, .. }) && record.drill.is_none()
        {
            // An amendment replaces the amount it supersedes in the day's total.
            let superseded = record
                .amends
                .as_deref()
                .zip(found)
                .and_then(|(target, id)| {
                    let ks = &self.s.rules[ri].keyed.slots[id as usize];
                    ks.entries
                        .iter()
                        .find(|e| e.record_id() == target)
                        .map(|e| (e.event_time, e.currency, e.amount))
                });
            if let Some((t, cur, amount)) = superseded {
                self.daily_add(ri, t, cur, -(amount as i128), &record.record_id, out);
            }
            let signed = record.signed_minor() as i128;
            self.daily_add(
                ri,
                record.event_time,
                record.amount.currency,
                signed,
                &record.record_id,
                out,
            );
        }
        let entry = Self::entry(rule, side, loc, key, record);
        let now = self.s.now;
        let st = &mut self.s.rules[ri].keyed;
        let Some(id) = found else {
            let other_lateness = match rule.kind {
                RuleKind::Match { .. } | RuleKind::SumMatch { .. } => {
                    side_of(rule, 1 - side).lateness_ms
                }
                _ => spec.lateness_ms,
            };
            let deadline = record.event_time.saturating_add(other_lateness);
            let id = st.insert(
                hash,
                KeyState {
                    entries: smallvec::smallvec![entry],
                    time: deadline,
                    phase: Phase::Pending,
                    has_breaks: false,
                    frag: fragment(hash),
                },
            );
            st.deadlines.push(deadline, id);
            st.open += 1;
            return;
        };
        let ks = &mut st.slots[id as usize];

        // An amendment replaces the record it names, on the same side.
        let amended = record.amends.as_deref().and_then(|target| {
            ks.entries
                .iter()
                .position(|e| e.side == side && e.record_id() == target)
        });
        if let Some(pos) = amended {
            ks.entries[pos] = entry;
            if ks.phase == Phase::Closed {
                self.reevaluate_at(rules, ri, id, Some(&record.record_id), now, out);
            }
            return;
        }

        let same_side = ks.entries.iter().filter(|e| e.side == side).count();
        let other_side = ks.entries.len() - same_side;
        let is_dup = match rule.kind {
            RuleKind::Match { .. } => same_side > 0,
            RuleKind::SumMatch { .. } => side == 0 && same_side > 0,
            _ => false,
        };
        if is_dup {
            let first = ks.entries.iter().find(|e| e.side == side).cloned();
            if ks.phase == Phase::Pending {
                ks.entries.push(entry.clone());
                st.open += 1;
            }
            let break_id = self.next_id();
            let st = &mut self.s.rules[ri].keyed;
            st.slots[id as usize].has_breaks = true;
            st.breaks.entry(id).or_default().push(OpenBreak {
                id: break_id,
                slot: Slot {
                    kind: BreakKind::Duplicate,
                    detail: 0,
                },
            });
            let mut evidence = Vec::new();
            if let Some(f) = &first {
                evidence.push(self.evidence_of(rule, f));
            }
            evidence.push(self.evidence_of(rule, &entry));
            out.push(Event::Break(Break {
                side: Some(side_name(rule, side).into()),
                expected: first.as_ref().map(|f| f.record_id().to_string()),
                actual: Some(record.record_id.clone()),
                message: format!(
                    "{} {} {key} reported again under record id {}",
                    spec.source, spec.kind, record.record_id
                ),
                evidence,
                drill: entry
                    .drill()
                    .or(first.as_ref().and_then(|f| f.drill()))
                    .map(String::from),
                ..Break::of(
                    break_id,
                    rule,
                    &rules.version,
                    BreakKind::Duplicate,
                    key.to_string(),
                    now,
                    now,
                )
            }));
            return;
        }

        ks.entries.push(entry);
        match ks.phase {
            Phase::Pending => {
                st.open += 1;
                // A 1:1 match is decided as soon as both sides are present.
                if matches!(rule.kind, RuleKind::Match { .. }) && other_side > 0 {
                    self.close(rules, ri, id, now, out);
                }
            }
            Phase::Closed => self.reevaluate_at(rules, ri, id, Some(&record.record_id), now, out),
            Phase::Free => {}
        }
    }

    /// Closes a pending key: evaluates it and turns findings into breaks.
    fn close(
        &mut self,
        rules: &RuleSet,
        ri: usize,
        id: SlotId,
        complete_at: Millis,
        out: &mut Vec<Event>,
    ) {
        let now = self.s.now;
        let st = &mut self.s.rules[ri].keyed;
        let ks = &mut st.slots[id as usize];
        st.open -= ks.entries.len();
        ks.phase = Phase::Closed;
        ks.time = now;
        st.closed.push_back((now, id));
        st.closed_count += 1;
        self.reevaluate_at(rules, ri, id, None, complete_at, out);
    }

    /// Compares a key's findings with the breaks it already carries: new findings become
    /// breaks, breaks no longer found are resolved (naming the record that changed it).
    fn reevaluate_at(
        &mut self,
        rules: &RuleSet,
        ri: usize,
        id: SlotId,
        by: Option<&str>,
        complete_at: Millis,
        out: &mut Vec<Event>,
    ) {
        let rule = &rules.rules[ri];
        let now = self.s.now;
        let st = &mut self.s.rules[ri].keyed;
        let ks = &mut st.slots[id as usize];
        let findings = evaluate(rule, ks);
        if findings.is_empty() && !ks.has_breaks {
            return;
        }
        let mut next_id = self.s.next_break_id;
        let mut kept = Vec::new();
        for b in st.breaks.remove(&id).unwrap_or_default() {
            let sticky = matches!(b.slot.kind, BreakKind::Duplicate);
            if sticky || findings.iter().any(|f| f.slot == b.slot) {
                kept.push(b);
            } else {
                out.push(Event::Resolved {
                    break_id: b.id,
                    by_record: by.map(String::from),
                    reason: match by {
                        Some(r) => format!("evidence now agrees after record {r}"),
                        None => "evidence now agrees".into(),
                    },
                    at: now,
                });
            }
        }
        let mut new_breaks = Vec::new();
        for f in findings {
            if kept.iter().any(|b| b.slot == f.slot) {
                continue;
            }
            let break_id = next_id;
            next_id += 1;
            kept.push(OpenBreak {
                id: break_id,
                slot: f.slot,
            });
            let evidence: Vec<Entry> = f.evidence.iter().map(|&i| ks.entries[i].clone()).collect();
            new_breaks.push((break_id, f, evidence));
        }
        ks.has_breaks = !kept.is_empty();
        let key = ks.key().to_string();
        if !kept.is_empty() {
            st.breaks.insert(id, kept);
        }
        self.s.next_break_id = next_id;
        for (break_id, f, evidence) in new_breaks {
            let drill = evidence.iter().find_map(|e| e.drill()).map(String::from);
            out.push(Event::Break(Break {
                side: f.side,
                field: f.field,
                expected: f.expected,
                actual: f.actual,
                message: f.message,
                evidence: evidence.iter().map(|e| self.evidence_of(rule, e)).collect(),
                drill,
                ..Break::of(
                    break_id,
                    rule,
                    &rules.version,
                    f.slot.kind,
                    key.clone(),
                    complete_at.min(now),
                    now,
                )
            }));
        }
    }

    fn evidence_of(&self, rule: &Rule, e: &Entry) -> Evidence {
        let side = side_of(rule, e.side);
        Evidence {
            record_id: e.record_id().to_string(),
            source: side.source.clone(),
            kind: side.kind.clone(),
            event_time: e.event_time,
            amount: format_minor(e.amount as i128, e.currency),
            currency: e.currency.code().to_string(),
            trace_id: Some(e.text.get(T_TRACE))
                .filter(|t| !t.is_empty())
                .map(String::from),
            loc: e.loc,
        }
    }

    fn fire_keyed(&mut self, rules: &RuleSet, ri: usize, until: Millis, out: &mut Vec<Event>) {
        while let Some((deadline, ids)) = self.s.rules[ri].keyed.deadlines.pop_due(until) {
            for id in ids {
                let ks = &self.s.rules[ri].keyed.slots[id as usize];
                // Any pending key whose deadline this is must close now, whichever key it
                // is. A key closed already (matched, or by an earlier entry for the same
                // deadline) is skipped.
                if ks.phase == Phase::Pending && ks.time == deadline {
                    if until == Millis::MAX {
                        self.s.now = self.s.now.max(deadline);
                    }
                    self.close(rules, ri, id, deadline, out);
                }
            }
        }
    }

    fn expire_closed(&mut self, ri: usize) {
        let horizon = self.s.now.saturating_sub(self.limits.closed_retention_ms);
        let max = self.limits.closed_keys_max;
        let st = &mut self.s.rules[ri].keyed;
        // Touch what leaves first, in a loop whose cache misses overlap (see `ingest`): the
        // slots and their records' text, which removing them then reads and frees.
        let over = st.closed_count.saturating_sub(max);
        let mut touched = 0usize;
        for (i, &(at, id)) in st.closed.iter().enumerate() {
            if at >= horizon && i >= over {
                break;
            }
            let ks = &st.slots[id as usize];
            touched += ks.frag as usize;
            for e in &ks.entries {
                touched += e.text.get(T_KEY).len();
            }
        }
        std::hint::black_box(touched);
        while let Some(&(at, id)) = st.closed.front() {
            let over = st.closed_count > max;
            if at >= horizon && !over {
                break;
            }
            st.closed.pop_front();
            let ks = &st.slots[id as usize];
            if ks.phase == Phase::Closed && ks.time == at {
                st.remove(id);
                st.closed_count -= 1;
                if over && at >= horizon {
                    self.s.stats.closed_keys_evicted += 1;
                }
            }
        }
    }

    // ---- conservation per business day ------------------------------------------------

    fn fire_daily(&mut self, ri: usize, lateness: Millis, until: Millis, out: &mut Vec<Event>) {
        let due: Vec<(Millis, Currency)> = self.s.rules[ri]
            .daily
            .totals
            .keys()
            .filter(|(day, _)| {
                until == Millis::MAX
                    || self.day.next_day_start(*day).saturating_add(lateness) <= until
            })
            .filter(|k| !self.s.rules[ri].daily.checked.contains_key(*k))
            .copied()
            .collect();
        for (day, cur) in due {
            self.s.rules[ri].daily.checked.insert((day, cur), None);
            self.recheck_day(ri, day, cur, None, out);
        }
        // Keep a week of days for late entries; older days are final and entries for
        // them no longer count (see `daily_add`).
        let horizon = self.s.now.saturating_sub(DAILY_HORIZON_MS);
        let daily = &mut self.s.rules[ri].daily;
        daily.checked.retain(|(day, _), _| *day >= horizon);
        daily.totals.retain(|(day, _), _| *day >= horizon);
    }

    fn daily_add(
        &mut self,
        ri: usize,
        t: Millis,
        cur: Currency,
        delta: i128,
        by: &str,
        out: &mut Vec<Event>,
    ) {
        let day = self.day.day_start(t);
        if day < self.s.now.saturating_sub(DAILY_HORIZON_MS) {
            return;
        }
        let daily = &mut self.s.rules[ri].daily;
        *daily.totals.entry((day, cur)).or_default() += delta;
        if daily.checked.contains_key(&(day, cur)) {
            self.recheck_day(ri, day, cur, Some(by), out);
        }
    }

    fn recheck_day(
        &mut self,
        ri: usize,
        day: Millis,
        cur: Currency,
        by: Option<&str>,
        out: &mut Vec<Event>,
    ) {
        let total = self.s.rules[ri]
            .daily
            .totals
            .get(&(day, cur))
            .copied()
            .unwrap_or(0);
        let open = self.s.rules[ri]
            .daily
            .checked
            .get(&(day, cur))
            .copied()
            .flatten();
        let now = self.s.now;
        match (total == 0, open) {
            (true, Some(id)) => {
                self.s.rules[ri].daily.checked.insert((day, cur), None);
                out.push(Event::Resolved {
                    break_id: id,
                    by_record: by.map(String::from),
                    reason: "business day nets to zero again".into(),
                    at: now,
                });
            }
            (false, None) => {
                let id = self.next_id();
                self.s.rules[ri].daily.checked.insert((day, cur), Some(id));
                let rule = &self.rules.rules[ri];
                let label = self.day.label(day);
                out.push(Event::Break(Break {
                    expected: Some(format_minor(0, cur)),
                    actual: Some(format_minor(total, cur)),
                    message: format!(
                        "business day {label}: entries in {cur} net to {} instead of zero",
                        format_minor(total, cur)
                    ),
                    ..Break::of(
                        id,
                        rule,
                        &self.rules.version,
                        BreakKind::ConservationViolation,
                        format!("day {label} {cur}"),
                        now,
                        now,
                    )
                }));
            }
            _ => {}
        }
    }

    // ---- balance continuity ------------------------------------------------------------

    fn apply_balance(
        &mut self,
        ri: usize,
        side: u8,
        loc: Loc,
        record: &FundRecord,
        account: &str,
        out: &mut Vec<Event>,
    ) {
        let rules = self.rules.clone();
        let rule = &rules.rules[ri];
        let RuleKind::Balance { lateness_ms, .. } = rule.kind else {
            return;
        };
        let account = account.to_string();
        let st = &mut self.s.rules[ri].balance;
        let acc = st.accounts.entry(account.clone()).or_default();
        if record.drill.is_some() {
            acc.drill.clone_from(&record.drill);
        }
        if side == 0 {
            let late = acc.last.as_ref().is_some_and(|l| record.event_time <= l.0);
            if late {
                let last_time = acc.last.as_ref().map(|l| l.0).unwrap_or(0);
                let now = self.s.now;
                let id = self.next_id();
                out.push(Event::Break(Break {
                    side: Some("entries".into()),
                    actual: Some(format_minor(
                        record.signed_minor() as i128,
                        record.amount.currency,
                    )),
                    message: format!(
                        "movement {} at {} arrived after the snapshot at {} was checked",
                        record.record_id,
                        steadfast_model::format_millis(record.event_time),
                        steadfast_model::format_millis(last_time)
                    ),
                    evidence: vec![
                        self.evidence_of(rule, &Self::entry(rule, side, loc, &account, record))
                    ],
                    drill: record.drill.clone(),
                    ..Break::of(
                        id,
                        rule,
                        &rules.version,
                        BreakKind::BalanceDiscontinuity,
                        account.clone(),
                        now,
                        now,
                    )
                }));
                return;
            }
            st.pending += 1;
            acc.movements.push((
                record.event_time,
                record.signed_minor(),
                record.record_id.clone(),
                loc,
            ));
        } else {
            st.pending += 1;
            acc.snapshots.push((
                record.event_time,
                record.amount.minor,
                record.amount.currency,
                record.record_id.clone(),
                loc,
            ));
            st.deadlines.push(Reverse((
                record.event_time.saturating_add(lateness_ms),
                account,
            )));
        }
    }

    fn fire_balance(&mut self, ri: usize, until: Millis, out: &mut Vec<Event>) {
        let rules = self.rules.clone();
        let rule = &rules.rules[ri];
        let RuleKind::Balance { lateness_ms, .. } = rule.kind else {
            return;
        };
        loop {
            let st = &mut self.s.rules[ri].balance;
            let Some(Reverse((deadline, _))) = st.deadlines.peek() else {
                break;
            };
            if *deadline > until {
                break;
            }
            let Some(Reverse((deadline, account))) = st.deadlines.pop() else {
                break;
            };
            let Some(acc) = st.accounts.get_mut(&account) else {
                continue;
            };
            // Check every snapshot whose budget has passed, oldest event time first.
            acc.snapshots.sort_by_key(|s| s.0);
            let horizon = if until == Millis::MAX {
                Millis::MAX
            } else {
                deadline.max(until) - lateness_ms
            };
            let ready: Vec<_> = acc
                .snapshots
                .iter()
                .filter(|s| s.0 <= horizon)
                .cloned()
                .collect();
            acc.snapshots.retain(|s| s.0 > horizon);
            let mut checked = ready.len();
            for (t, balance, cur, rid, loc) in ready {
                let between: i128 = acc
                    .movements
                    .iter()
                    .filter(|m| m.0 <= t)
                    .map(|m| m.1 as i128)
                    .sum();
                let used: Vec<_> = acc.movements.iter().filter(|m| m.0 <= t).cloned().collect();
                acc.movements.retain(|m| m.0 > t);
                checked += used.len();
                if let Some((prev_t, prev_balance, prev_cur, prev_id)) = acc.last.take() {
                    let expected = prev_balance as i128 + between;
                    if expected != balance as i128 || prev_cur != cur {
                        let id = self.s.next_break_id;
                        self.s.next_break_id += 1;
                        let now = self
                            .s
                            .now
                            .max(if until == Millis::MAX { deadline } else { 0 });
                        let mut evidence = vec![Evidence {
                            record_id: rid.clone(),
                            source: side_of(rule, 1).source.clone(),
                            kind: side_of(rule, 1).kind.clone(),
                            event_time: t,
                            amount: format_minor(balance as i128, cur),
                            currency: cur.code().to_string(),
                            trace_id: None,
                            loc,
                        }];
                        for m in &used {
                            evidence.push(Evidence {
                                record_id: m.2.clone(),
                                source: side_of(rule, 0).source.clone(),
                                kind: side_of(rule, 0).kind.clone(),
                                event_time: m.0,
                                amount: format_minor(m.1 as i128, cur),
                                currency: cur.code().to_string(),
                                trace_id: None,
                                loc: m.3,
                            });
                        }
                        out.push(Event::Break(Break {
                            expected: Some(format_minor(expected, cur)),
                            actual: Some(format_minor(balance as i128, cur)),
                            message: format!(
                                "snapshot {rid} shows {} but snapshot {prev_id} at {} plus {} movements gives {}",
                                format_minor(balance as i128, cur),
                                steadfast_model::format_millis(prev_t),
                                used.len(),
                                format_minor(expected, cur)
                            ),
                            evidence,
                            drill: acc.drill.clone(),
                            ..Break::of(id, rule, &rules.version, BreakKind::BalanceDiscontinuity, account.clone(), deadline, now)
                        }));
                    }
                }
                acc.last = Some((t, balance, cur, rid));
            }
            let st = &mut self.s.rules[ri].balance;
            st.pending -= checked;
            if let Some(acc) = st.accounts.get(&account) {
                if acc.snapshots.is_empty() && acc.movements.is_empty() && acc.last.is_none() {
                    st.accounts.remove(&account);
                }
            }
        }
    }
}

impl RuleState {
    fn balance_open(&self) -> usize {
        self.balance.pending
    }
}

/// What a rule finds wrong with one key's records. Pure: the same entries give the same
/// findings, which is what lets re-evaluation resolve breaks after amendments.
fn evaluate(rule: &Rule, ks: &KeyState) -> Vec<Finding> {
    let mut findings = Vec::new();
    let sides = |s: u8| -> SmallVec<[usize; 2]> {
        ks.entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.side == s)
            .map(|(i, _)| i)
            .collect()
    };
    let missing = |side: u8, present: &SmallVec<[usize; 2]>| Finding {
        slot: Slot {
            kind: BreakKind::MissingCounterpart,
            detail: side as u64,
        },
        side: Some(side_name(rule, side).into()),
        field: None,
        expected: None,
        actual: None,
        message: format!(
            "no {} {} record for key {} within its lateness budget",
            side_of(rule, side).source,
            side_of(rule, side).kind,
            ks.key()
        ),
        evidence: present.clone(),
    };
    match &rule.kind {
        RuleKind::Match { compare, .. } => {
            let (l, r) = (sides(0), sides(1));
            if l.is_empty() {
                findings.push(missing(0, &r));
            } else if r.is_empty() {
                findings.push(missing(1, &l));
            } else if l.len() > 1 || r.len() > 1 {
                findings.push(Finding {
                    slot: Slot {
                        kind: BreakKind::AmbiguousMatch,
                        detail: 0,
                    },
                    side: None,
                    field: None,
                    expected: Some("1 record per side".into()),
                    actual: Some(format!("{} left, {} right", l.len(), r.len())),
                    message: format!("key {} has several candidates; none was picked", ks.key()),
                    evidence: l.iter().chain(r.iter()).copied().collect(),
                });
            } else {
                let (a, b) = (&ks.entries[l[0]], &ks.entries[r[0]]);
                for (i, pair) in compare.iter().enumerate() {
                    let evidence: SmallVec<[usize; 2]> = smallvec::smallvec![l[0], r[0]];
                    let same = match pair.left.as_str() {
                        "amount" => a.amount == b.amount && a.currency == b.currency,
                        "currency" => a.currency == b.currency,
                        _ => a.field(i) == b.field(i),
                    };
                    if same {
                        continue;
                    }
                    let (kind, exp, act) = match pair.left.as_str() {
                        "amount" => (
                            BreakKind::AmountMismatch,
                            format!(
                                "{} {}",
                                format_minor(a.amount as i128, a.currency),
                                a.currency
                            ),
                            format!(
                                "{} {}",
                                format_minor(b.amount as i128, b.currency),
                                b.currency
                            ),
                        ),
                        "currency" => (
                            BreakKind::FieldMismatch,
                            a.currency.to_string(),
                            b.currency.to_string(),
                        ),
                        _ => (
                            BreakKind::FieldMismatch,
                            a.field(i).to_string(),
                            b.field(i).to_string(),
                        ),
                    };
                    if exp != act {
                        findings.push(Finding {
                            slot: Slot {
                                kind,
                                detail: i as u64,
                            },
                            side: None,
                            field: Some(if pair.left == pair.right {
                                pair.left.clone()
                            } else {
                                format!("{}/{}", pair.left, pair.right)
                            }),
                            message: format!(
                                "key {}: {} is {exp} upstream but {act} downstream",
                                ks.key(),
                                pair.left
                            ),
                            expected: Some(exp),
                            actual: Some(act),
                            evidence,
                        });
                    }
                }
            }
        }
        RuleKind::SumMatch { .. } => {
            let (u, d) = (sides(0), sides(1));
            if u.is_empty() {
                findings.push(missing(0, &d));
            } else if d.is_empty() {
                findings.push(missing(1, &u));
            } else {
                let up = &ks.entries[u[0]];
                let sum: i128 = d.iter().map(|&i| ks.entries[i].amount as i128).sum();
                let same_currency = d.iter().all(|&i| ks.entries[i].currency == up.currency);
                if sum != up.amount as i128 || !same_currency {
                    let actual = if same_currency {
                        format!("{} {}", format_minor(sum, up.currency), up.currency)
                    } else {
                        "mixed currencies".to_string()
                    };
                    let expected = format!(
                        "{} {}",
                        format_minor(up.amount as i128, up.currency),
                        up.currency
                    );
                    findings.push(Finding {
                        slot: Slot {
                            kind: BreakKind::AmountMismatch,
                            detail: 0,
                        },
                        side: None,
                        field: Some("amount".into()),
                        message: format!(
                            "key {}: {} downstream records add up to {actual}, not {expected}",
                            ks.key(),
                            d.len()
                        ),
                        expected: Some(expected),
                        actual: Some(actual),
                        evidence: u.iter().take(1).chain(d.iter()).copied().collect(),
                    });
                }
            }
        }
        RuleKind::Conservation { .. } => {
            let mut sums: BTreeMap<Currency, i128> = BTreeMap::new();
            for e in &ks.entries {
                *sums.entry(e.currency).or_default() += e.amount as i128;
            }
            for (cur, sum) in sums {
                if sum != 0 {
                    let detail = u64::from_le_bytes({
                        let mut b = [0u8; 8];
                        b[..3].copy_from_slice(cur.code().as_bytes());
                        b
                    });
                    findings.push(Finding {
                        slot: Slot {
                            kind: BreakKind::ConservationViolation,
                            detail,
                        },
                        side: None,
                        field: Some("amount".into()),
                        expected: Some(format!("{} {cur}", format_minor(0, cur))),
                        actual: Some(format!("{} {cur}", format_minor(sum, cur))),
                        message: format!(
                            "transaction {}: entries in {cur} net to {} instead of zero",
                            ks.key(),
                            format_minor(sum, cur)
                        ),
                        evidence: (0..ks.entries.len())
                            .filter(|&i| ks.entries[i].currency == cur)
                            .collect(),
                    });
                }
            }
        }
        RuleKind::Balance { .. } => {}
    }
    findings
}

#[cfg(test)]
mod tests {
    use super::BusinessDayClock;
    use steadfast_model::{Currency, FundRecord};

    fn record(source: &str, kind: &str, key: (&str, &str), id: &str, minor: i64) -> FundRecord {
        FundRecord {
            record_id: id.into(),
            source: source.into(),
            kind: kind.into(),
            keys: std::collections::BTreeMap::from([(key.0.into(), key.1.into())]),
            amount: steadfast_model::Money {
                minor,
                currency: Currency::from_code("USD").unwrap(),
            },
            account: None,
            counter_account: None,
            direction: None,
            status: Some("SUCCESS".into()),
            event_time: 1_000,
            trace_id: None,
            order_id: None,
            drill: None,
            amends: None,
            attributes: Default::default(),
        }
    }

    /// The batch lookup takes the first index bucket with a key's hash fragment as its
    /// candidate; two keys sharing a fragment must still each find their own slot, within
    /// a batch and across batches.
    #[test]
    fn keys_sharing_a_hash_fragment_are_told_apart() {
        let mut by_fragment = hashbrown::HashMap::new();
        let (a, b) = (0u64..)
            .find_map(|i| {
                let key = format!("ORD-{i}");
                let f = super::fragment(super::key_hash(&key));
                by_fragment.insert(f, key.clone()).map(|other| (other, key))
            })
            .unwrap();
        assert_ne!(a, b);
        let rules = std::sync::Arc::new(
            crate::parse_rules(include_str!("../../../examples/rules.toml")).unwrap(),
        );
        let pay = |k: &str, minor| {
            record(
                "payment-core",
                "payment",
                ("order_no", k),
                &format!("p-{k}"),
                minor,
            )
        };
        let bill =
            |k: &str, minor| record("billing", "bill", ("biz_id", k), &format!("b-{k}"), minor);
        let run = |batches: Vec<Vec<FundRecord>>| {
            let mut engine = super::Engine::new(rules.clone(), super::Limits::default());
            let mut out = Vec::new();
            for (i, batch) in batches.iter().enumerate() {
                engine.ingest(
                    2_000,
                    batch.iter().zip(10 * i as u64..).map(|(r, l)| (l, r)),
                    &mut out,
                );
            }
            let breaks: Vec<(String, crate::BreakKind)> = out
                .iter()
                .filter_map(|e| match e {
                    crate::Event::Break(b) => Some((b.key.clone(), b.kind)),
                    _ => None,
                })
                .collect();
            (breaks, engine.open_records())
        };
        // Across batches: both keys are in the index when the bills come.
        let (breaks, open) = run(vec![
            vec![pay(&a, 1000), pay(&b, 2000)],
            vec![bill(&b, 2000), bill(&a, 1001)],
        ]);
        assert_eq!(breaks, [(a.clone(), crate::BreakKind::AmountMismatch)]);
        assert_eq!(open, 0);
        // Within one batch: neither key is in the index when the batch is looked up.
        let (breaks, open) = run(vec![vec![
            pay(&a, 1000),
            pay(&b, 2000),
            bill(&b, 2001),
            bill(&a, 1000),
        ]]);
        assert_eq!(breaks, [(b.clone(), crate::BreakKind::AmountMismatch)]);
        assert_eq!(open, 0);
        // One key held before the batch, the other added by it.
        let (breaks, open) = run(vec![
            vec![pay(&a, 1000)],
            vec![pay(&b, 2000), bill(&a, 1000), bill(&b, 2000)],
        ]);
        assert!(breaks.is_empty(), "{breaks:?}");
        assert_eq!(open, 0);
    }

    fn ms(rfc3339: &str) -> i64 {
        steadfast_model::parse_millis(rfc3339).unwrap()
    }

    #[test]
    fn business_days_follow_the_zone_and_cut_off_across_daylight_saving() {
        let ny = BusinessDayClock {
            tz: "America/New_York".parse().unwrap(),
            cutoff_minutes: 0,
        };
        // 8 March 2026: clocks spring forward, so the business day is 23 hours long.
        let day = ny.day_start(ms("2026-03-08T12:00:00Z"));
        assert_eq!(day, ms("2026-03-08T05:00:00Z"));
        assert_eq!(ny.next_day_start(day), ms("2026-03-09T04:00:00Z"));
        assert_eq!(ny.label(day), "2026-03-08");
        // 1 November 2026: clocks fall back, a 25-hour day.
        let day = ny.day_start(ms("2026-11-01T12:00:00Z"));
        assert_eq!(ny.next_day_start(day) - day, 25 * 3600 * 1000);

        // A 22:00 cut-off in Shanghai: 21:59 local belongs to the day that began at 22:00
        // the evening before.
        let sh = BusinessDayClock {
            tz: "Asia/Shanghai".parse().unwrap(),
            cutoff_minutes: 22 * 60,
        };
        assert_eq!(
            sh.day_start(ms("2026-11-22T13:59:00Z")),
            ms("2026-11-21T14:00:00Z")
        );
        assert_eq!(
            sh.day_start(ms("2026-11-22T14:00:00Z")),
            ms("2026-11-22T14:00:00Z")
        );
        assert_eq!(
            sh.label(ms("2026-11-21T14:00:00Z")),
            "2026-11-22",
            "after 22:00 counts for the next date"
        );
    }
}

#[cfg(test)]
mod index_tests {
    #[test]
    fn a_fragment_survives_spreading() {
        for f in [0u32, 1, 7, 0xDEAD_BEEF, u32::MAX] {
            assert_eq!(super::fragment(super::spread(f)), f);
        }
        let h = super::key_hash("ORD-1");
        assert_eq!(
            super::spread(super::fragment(h)),
            h,
            "the index rehashes to the same buckets"
        );
    }
}

#[cfg(test)]
mod chunk_tests {
    use super::{ChunkQueue, KeyState, Phase, Slab, QUEUE_CHUNK, SLAB_CHUNK};

    #[test]
    fn a_queue_copy_is_unchanged_by_later_pushes_and_pops() {
        let mut q = ChunkQueue::default();
        for i in 0..3 * QUEUE_CHUNK + 7 {
            q.push_back(i);
        }
        for _ in 0..QUEUE_CHUNK + 3 {
            q.pop_front();
        }
        let copy = q.clone();
        for i in 0..10 {
            q.push_back(1_000_000 + i);
        }
        q.pop_front();
        let expected: Vec<usize> = (QUEUE_CHUNK + 3..3 * QUEUE_CHUNK + 7).collect();
        assert_eq!(copy.iter().copied().collect::<Vec<_>>(), expected);
        assert_eq!(copy.len(), expected.len());
        assert_eq!(q.front(), Some(&(QUEUE_CHUNK + 4)));
        let bytes = postcard::to_allocvec(&copy).unwrap();
        let back: ChunkQueue<usize> = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back.iter().copied().collect::<Vec<_>>(), expected);
        // Draining to empty and refilling works.
        let mut q = ChunkQueue::default();
        q.push_back(1);
        q.pop_front();
        assert_eq!((q.len(), q.front()), (0, None));
        q.push_back(2);
        assert_eq!(q.front(), Some(&2));
    }

    #[test]
    fn a_slab_copy_is_unchanged_by_later_writes() {
        let state = |t| KeyState {
            entries: Default::default(),
            time: t,
            phase: Phase::Pending,
            has_breaks: false,
            frag: 0,
        };
        let mut slab = Slab::default();
        for t in 0..3 * SLAB_CHUNK as i64 + 5 {
            slab.push(state(t));
        }
        let copy = slab.clone();
        slab[7].time = -1;
        slab.push(state(-2));
        assert_eq!(copy[7].time, 7);
        assert_eq!(copy.len(), 3 * SLAB_CHUNK + 5);
        assert_eq!((slab[7].time, slab.len()), (-1, 3 * SLAB_CHUNK + 6));
        let bytes = postcard::to_allocvec(&copy).unwrap();
        let back: Slab = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(
            back.iter().map(|k| k.time).collect::<Vec<_>>(),
            (0..3 * SLAB_CHUNK as i64 + 5).collect::<Vec<_>>()
        );
    }
}
