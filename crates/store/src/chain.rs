//! The data chain's storage: a write-ahead log first (a request is acknowledged only once
//! its rows are fsynced), then Parquet files (zstd), one directory per table (`spans`,
//! `logs`, `metrics`), queried with DataFusion together with the rows not flushed yet.
//!
//! Layout under `DATA_DIR/chain`:
//! - `wal-<first>.log`: WAL segments, CRC-framed `seq, Rows` entries from entry `first`
//!   on. A flush starts a new segment and removes the older ones once their rows are in
//!   Parquet, so ingest goes on while a flush writes;
//! - `flushed`: the highest sequence number whose rows are in Parquet files;
//! - `<table>/<from>-<to>-<max_time>.parquet`: rows of entries `from..=to`, with an index
//!   beside it (`.idx`: the file's trace ids and, per user id, the time range of the user's
//!   rows), so that a trace or a user's journey is read from the files that hold it only.
//!   Compaction writes one file over a range and then drops the files inside it; at open,
//!   a file whose range lies inside another's is the leftover of a compaction that did not
//!   finish and is removed, so a row is never counted twice.
//!
//! Concurrency: appends encode outside any lock, write their frame under the state lock,
//! and share one fsync (group commit): whoever finds no sync running syncs everything
//! written so far for all who wait. Flush, compaction and retention do their file work
//! outside the state lock and swap the file set under it. Files dropped from the set are
//! deleted one maintenance round later, so a query that started before still reads them.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};

use datafusion::arrow::array::{Array, RecordBatch, StringArray, TimestampNanosecondArray};
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::basic::{Compression, ZstdLevel};
use datafusion::parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};
use steadfast_chain::arrow_rows::{
    access_batch, access_schema, flow_schema, flows_batch, fund_schema, funds_batch, log_schema,
    logs_batch, metric_schema, metrics_batch, span_schema, spans_batch,
};
use steadfast_chain::Rows;

/// Rows held in memory (logged, not yet in Parquet); past it ingest is refused with 503
/// until a flush makes room.
pub const PENDING_ROWS_MAX: usize = 1_000_000;
/// Files of a table merged into one by a compaction at most.
pub const COMPACT_FILES_MAX: usize = 64;
/// Rows returned by one query at most.
pub const QUERY_ROWS_MAX: usize = 10_000;
/// Largest WAL entry.
const ENTRY_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Rows per Parquet row group.
const ROW_GROUP_ROWS: usize = 128 * 1024;

pub const TABLES: [&str; 6] = [
    "spans",
    "logs",
    "metrics",
    "fund_records",
    "access_logs",
    "flows",
];

#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    #[error("data chain storage: {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("data chain storage: {0}")]
    Format(String),
    #[error("{PENDING_ROWS_MAX} rows wait to be written to Parquet; retry shortly")]
    Full,
    #[error("query: {0}")]
    Query(String),
    /// A WAL fsync failed: what was written since the last good one may be lost, so the
    /// store takes nothing more until it is reopened.
    #[error("data chain storage stopped after a failed fsync: {0}")]
    Poisoned(String),
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ChainError + 'a {
    move |source| ChainError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

fn fmt_err(e: impl std::fmt::Display) -> ChainError {
    ChainError::Format(e.to_string())
}

/// What a data file holds, for lookups: its trace ids, and per user id the time range of
/// the user's rows. Spans and logs have one; metrics an empty one.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileIndex {
    /// Sorted, distinct.
    pub traces: Vec<u128>,
    /// Sorted by user id: the user, the first and last time of their rows
    /// (nanoseconds), and the traces of their rows (each with its latest time, newest
    /// first), so a journey finds a user's traces without scanning the file.
    pub users: Vec<UserEntry>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserEntry {
    pub user: String,
    pub first: i64,
    pub last: i64,
    pub traces: Vec<(i64, u128)>,
}

impl FileIndex {
    fn of(batches: &[RecordBatch]) -> FileIndex {
        let mut traces = Vec::new();
        let mut users: BTreeMap<String, UserEntry> = BTreeMap::new();
        for b in batches {
            let time = b
                .column(0)
                .as_any()
                .downcast_ref::<TimestampNanosecondArray>();
            let ids = b
                .column_by_name("trace_id")
                .and_then(|c| c.as_any().downcast_ref::<StringArray>());
            let trace_at = |i: usize| {
                ids.filter(|a| a.is_valid(i))
                    .and_then(|a| u128::from_str_radix(a.value(i), 16).ok())
            };
            if ids.is_some() {
                traces.extend((0..b.num_rows()).filter_map(trace_at));
            }
            if let (Some(us), Some(time)) = (
                b.column_by_name("user_id")
                    .and_then(|c| c.as_any().downcast_ref::<StringArray>()),
                time,
            ) {
                for i in (0..us.len()).filter(|&i| us.is_valid(i)) {
                    let t = time.value(i);
                    let e = users
                        .entry(us.value(i).to_string())
                        .or_insert_with(|| UserEntry {
                            user: us.value(i).to_string(),
                            first: t,
                            last: t,
                            traces: Vec::new(),
                        });
                    e.first = e.first.min(t);
                    e.last = e.last.max(t);
                    if let Some(tr) = trace_at(i) {
                        e.traces.push((t, tr));
                    }
                }
            }
        }
        traces.sort_unstable();
        traces.dedup();
        let users = users
            .into_values()
            .map(|mut e| {
                // Newest first, one entry per trace (at its latest row).
                e.traces.sort_unstable_by(|a, b| b.cmp(a));
                let mut seen = std::collections::HashSet::new();
                e.traces.retain(|(_, t)| seen.insert(*t));
                e
            })
            .collect();
        FileIndex { traces, users }
    }

    pub fn has_trace(&self, id: u128) -> bool {
        self.traces.binary_search(&id).is_ok()
    }

    fn entry(&self, user: &str) -> Option<&UserEntry> {
        self.users
            .binary_search_by(|e| e.user.as_str().cmp(user))
            .ok()
            .map(|i| &self.users[i])
    }

    /// The time range of the user's rows in this file.
    pub fn user(&self, user: &str) -> Option<(i64, i64)> {
        self.entry(user).map(|e| (e.first, e.last))
    }

    /// The user's traces in this file, newest first, with their latest time.
    pub fn user_traces(&self, user: &str) -> &[(i64, u128)] {
        self.entry(user).map_or(&[], |e| &e.traces)
    }
}

/// One Parquet file of a table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataFile {
    pub table: &'static str,
    pub path: PathBuf,
    pub from: u64,
    pub to: u64,
    /// Latest row time in the file, nanoseconds.
    pub max_time: i64,
    pub bytes: u64,
    pub rows: usize,
    pub index: FileIndex,
}

fn parse_name(path: &Path) -> Option<(u64, u64, i64)> {
    let stem = path.file_name()?.to_str()?.strip_suffix(".parquet")?;
    let mut parts = stem.split('-');
    let from = parts.next()?.parse().ok()?;
    let to = parts.next()?.parse().ok()?;
    let max_time = parts.next()?.parse().ok()?;
    Some((from, to, max_time))
}

fn data_name(from: u64, to: u64, max_time: i64) -> String {
    format!("{from:020}-{to:020}-{max_time}.parquet")
}

/// What is stored, for status and benchmarks.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ChainStats {
    pub pending_rows: usize,
    pub files: usize,
    pub file_bytes: u64,
    pub file_rows: usize,
    pub flushed_seq: u64,
    pub last_seq: u64,
}

/// Rows logged and not yet in Parquet, per table, as Arrow batches (what queries read
/// and flushes write).
#[derive(Clone, Default)]
struct Pending {
    tables: BTreeMap<&'static str, Vec<RecordBatch>>,
    rows: usize,
}

impl Pending {
    fn add(&mut self, batches: Vec<(&'static str, RecordBatch)>) {
        for (t, b) in batches {
            self.rows += b.num_rows();
            self.tables.entry(t).or_default().push(b);
        }
    }

    fn merge(&mut self, older: Pending) {
        for (t, mut bs) in older.tables {
            let mine = self.tables.entry(t).or_default();
            bs.append(mine);
            *mine = bs;
        }
        self.rows += older.rows;
    }
}

struct State {
    /// The segment appends go to, and the sequence number it starts at.
    wal: Arc<File>,
    wal_path: PathBuf,
    next_seq: u64,
    flushed: u64,
    pending: Pending,
    /// Rows a flush is writing: still read by queries until the files are in the set.
    flushing: Option<Pending>,
    files: Vec<Arc<DataFile>>,
    /// Dropped from the set by compaction or retention; deleted at the next round.
    doomed: Vec<PathBuf>,
}

#[derive(Default)]
struct Sync {
    synced: u64,
    syncing: bool,
    poisoned: Option<String>,
}

pub struct ChainStore {
    dir: PathBuf,
    state: Mutex<State>,
    sync: Mutex<Sync>,
    synced: Condvar,
    /// One flush at a time; one compaction or retention round at a time.
    flush_lock: Mutex<()>,
    maintain_lock: Mutex<()>,
    /// `PENDING_ROWS_MAX` unless a test says otherwise.
    pending_max: usize,
}

fn table_dir(dir: &Path, table: &str) -> PathBuf {
    dir.join(table)
}

fn sync_dir(dir: &Path) -> Result<(), ChainError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("sync", dir))
}

fn schema_of(table: &str) -> datafusion::arrow::datatypes::SchemaRef {
    match table {
        "spans" => span_schema(),
        "logs" => log_schema(),
        "fund_records" => fund_schema(),
        "access_logs" => access_schema(),
        "flows" => flow_schema(),
        _ => metric_schema(),
    }
}

/// The non-empty tables of `rows` as batches.
fn batches_of(rows: &Rows) -> Result<Vec<(&'static str, RecordBatch)>, ChainError> {
    let mut out = Vec::new();
    if !rows.spans.is_empty() {
        out.push(("spans", spans_batch(&rows.spans).map_err(fmt_err)?));
    }
    if !rows.logs.is_empty() {
        out.push(("logs", logs_batch(&rows.logs).map_err(fmt_err)?));
    }
    if !rows.metrics.is_empty() {
        out.push(("metrics", metrics_batch(&rows.metrics).map_err(fmt_err)?));
    }
    if !rows.funds.is_empty() {
        out.push(("fund_records", funds_batch(&rows.funds).map_err(fmt_err)?));
    }
    if !rows.access.is_empty() {
        out.push(("access_logs", access_batch(&rows.access).map_err(fmt_err)?));
    }
    if !rows.flows.is_empty() {
        out.push(("flows", flows_batch(&rows.flows).map_err(fmt_err)?));
    }
    Ok(out)
}

/// Latest row time of batches whose first column is their time.
fn max_time(batches: &[RecordBatch]) -> i64 {
    batches
        .iter()
        .filter_map(|b| {
            let t = b
                .column(0)
                .as_any()
                .downcast_ref::<TimestampNanosecondArray>()?;
            datafusion::arrow::compute::max(t)
        })
        .max()
        .unwrap_or(0)
}

fn index_path(data: &Path) -> PathBuf {
    data.with_extension("idx")
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ChainError> {
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp).map_err(io_err("create", &tmp))?;
    f.write_all(bytes).map_err(io_err("write", &tmp))?;
    f.sync_all().map_err(io_err("sync", &tmp))?;
    fs::rename(&tmp, path).map_err(io_err("rename", &tmp))
}

/// Writes batches to `path` atomically (a temporary file, fsynced, renamed), then its
/// index; the directory is synced by the caller.
fn write_data_file(
    table: &'static str,
    path: &Path,
    from: u64,
    to: u64,
    batches: &[RecordBatch],
) -> Result<DataFile, ChainError> {
    let tmp = path.with_extension("parquet.tmp");
    let file = File::create(&tmp).map_err(io_err("create", &tmp))?;
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(
            ZstdLevel::try_new(3).expect("a zstd level"),
        ))
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        // Row groups a trace or user lookup can skip; sized for a row group's distinct
        // values (a trace has a few spans, a user many), not the default million.
        .set_column_bloom_filter_enabled("trace_id".into(), true)
        .set_column_bloom_filter_max_ndv("trace_id".into(), (ROW_GROUP_ROWS / 4) as u64)
        .set_column_bloom_filter_fpp("trace_id".into(), 0.01)
        .set_column_bloom_filter_enabled("user_id".into(), true)
        .set_column_bloom_filter_max_ndv("user_id".into(), (ROW_GROUP_ROWS / 16) as u64)
        .set_column_bloom_filter_fpp("user_id".into(), 0.01)
        .build();
    let mut w = ArrowWriter::try_new(file, schema_of(table), Some(props)).map_err(fmt_err)?;
    for b in batches {
        w.write(b).map_err(fmt_err)?;
    }
    let file = w.into_inner().map_err(fmt_err)?;
    file.sync_all().map_err(io_err("sync", &tmp))?;
    fs::rename(&tmp, path).map_err(io_err("rename", &tmp))?;
    let index = FileIndex::of(batches);
    let bytes = postcard::to_allocvec(&index).map_err(fmt_err)?;
    write_atomic(&index_path(path), &bytes)?;
    Ok(DataFile {
        table,
        path: path.into(),
        from,
        to,
        max_time: max_time(batches),
        bytes: fs::metadata(path).map_err(io_err("stat", path))?.len(),
        rows: batches.iter().map(|b| b.num_rows()).sum(),
        index,
    })
}

/// A compacted file's rows ordered by trace id (for tables that have one), so each row
/// group covers a narrow range of ids and a trace lookup skips the others by their
/// statistics; a trace's rows also sit together, which compresses better.
fn by_trace(table: &str, batches: Vec<RecordBatch>) -> Result<Vec<RecordBatch>, ChainError> {
    use datafusion::arrow::compute::{concat_batches, sort_to_indices, take_record_batch};
    let schema = schema_of(table);
    if schema.column_with_name("trace_id").is_none() || batches.is_empty() {
        return Ok(batches);
    }
    let all = concat_batches(&schema, &batches).map_err(fmt_err)?;
    drop(batches);
    let ids = all.column_by_name("trace_id").expect("checked above");
    let order = sort_to_indices(ids, None, None).map_err(fmt_err)?;
    Ok(vec![take_record_batch(&all, &order).map_err(fmt_err)?])
}

fn read_parquet(path: &Path) -> Result<Vec<RecordBatch>, ChainError> {
    let f = File::open(path).map_err(io_err("open", path))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(f)
        .and_then(|b| b.build())
        .map_err(|e| ChainError::Format(format!("{}: {e}", path.display())))?;
    reader
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ChainError::Format(format!("{}: {e}", path.display())))
}

/// A data file found at open, with its index read (or rebuilt when it is missing or
/// unreadable: it is derived data).
fn load_data_file(table: &'static str, path: &Path) -> Result<Option<DataFile>, ChainError> {
    let Some((from, to, max_time)) = parse_name(path) else {
        return Ok(None);
    };
    let bytes = fs::metadata(path).map_err(io_err("stat", path))?.len();
    let meta = {
        let f = File::open(path).map_err(io_err("open", path))?;
        ParquetRecordBatchReaderBuilder::try_new(f)
            .map_err(|e| ChainError::Format(format!("{}: {e}", path.display())))?
            .metadata()
            .file_metadata()
            .num_rows() as usize
    };
    let index = match fs::read(index_path(path))
        .ok()
        .and_then(|b| postcard::from_bytes::<FileIndex>(&b).ok())
    {
        Some(i) => i,
        None => {
            let i = FileIndex::of(&read_parquet(path)?);
            write_atomic(
                &index_path(path),
                &postcard::to_allocvec(&i).map_err(fmt_err)?,
            )?;
            i
        }
    };
    Ok(Some(DataFile {
        table,
        path: path.into(),
        from,
        to,
        max_time,
        bytes,
        rows: meta,
        index,
    }))
}

fn segment_path(dir: &Path, first: u64) -> PathBuf {
    dir.join(format!("wal-{first:020}.log"))
}

/// The WAL segments, oldest first.
fn segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, ChainError> {
    let mut out: Vec<(u64, PathBuf)> = fs::read_dir(dir)
        .map_err(io_err("list", dir))?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let first = name
                .strip_prefix("wal-")?
                .strip_suffix(".log")?
                .parse()
                .ok()?;
            Some((first, e.path()))
        })
        .collect();
    out.sort();
    Ok(out)
}

/// Reads a segment's whole entries; returns them and the length of the good prefix (a
/// torn tail was never acknowledged).
fn read_segment(path: &Path) -> Result<(Vec<(u64, Rows)>, u64), ChainError> {
    let f = File::open(path).map_err(io_err("open", path))?;
    let mut r = BufReader::new(f);
    let mut out = Vec::new();
    let mut good = 0u64;
    loop {
        let mut head = [0u8; 8];
        if r.read_exact(&mut head).is_err() {
            break;
        }
        let len = u32::from_le_bytes(head[..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(head[4..].try_into().expect("4 bytes"));
        if len > ENTRY_BYTES_MAX {
            break;
        }
        let mut body = vec![0u8; len];
        if r.read_exact(&mut body).is_err() || crc32fast::hash(&body) != crc {
            break;
        }
        if len < 8 {
            break;
        }
        let seq = u64::from_le_bytes(body[..8].try_into().expect("8 bytes"));
        let rows: Rows = postcard::from_bytes(&body[8..])
            .map_err(|e| ChainError::Format(format!("{}: WAL entry: {e}", path.display())))?;
        good += 8 + len as u64;
        out.push((seq, rows));
    }
    Ok((out, good))
}

/// An entry's frame with its rows encoded and room for the head: `len`, `crc` and `seq`
/// are filled in by [`seal`] once the sequence number is known. Encoding needs no lock.
fn frame(rows: &Rows) -> Result<Vec<u8>, ChainError> {
    let mut frame = vec![0u8; 16];
    postcard::to_io(rows, &mut frame).map_err(fmt_err)?;
    if frame.len() - 8 > ENTRY_BYTES_MAX {
        return Err(ChainError::Format(format!(
            "an entry of {} bytes is larger than {ENTRY_BYTES_MAX}",
            frame.len() - 8
        )));
    }
    Ok(frame)
}

/// Fills in a frame's head: the body is `seq` (8 bytes, little-endian) and the rows, so
/// that a frame decodes as `(seq, Rows)`... with a fixed-width sequence number.
fn seal(frame: &mut [u8], seq: u64) {
    frame[8..16].copy_from_slice(&seq.to_le_bytes());
    let len = (frame.len() - 8) as u32;
    let crc = crc32fast::hash(&frame[8..]);
    frame[..4].copy_from_slice(&len.to_le_bytes());
    frame[4..8].copy_from_slice(&crc.to_le_bytes());
}

fn open_segment(path: &Path) -> Result<File, ChainError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io_err("open", path))
}

impl ChainStore {
    /// Opens (or creates) the store: removes compaction leftovers, loads the file
    /// indexes, and replays the WAL entries not yet in Parquet into memory.
    pub fn open(dir: &Path) -> Result<ChainStore, ChainError> {
        for t in TABLES {
            let d = table_dir(dir, t);
            fs::create_dir_all(&d).map_err(io_err("create", &d))?;
        }
        let flushed_path = dir.join("flushed");
        let flushed: u64 = match fs::read_to_string(&flushed_path) {
            Ok(t) => t.trim().parse().map_err(|_| {
                ChainError::Format(format!("{} is not a number", flushed_path.display()))
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
            Err(e) => return Err(io_err("read", &flushed_path)(e)),
        };
        let files = Self::load_files(dir)?;
        let mut pending = Pending::default();
        let mut next_seq = flushed + 1;
        let segs = segments(dir)?;
        let mut last_good = 0;
        for (_, path) in &segs {
            let (entries, good) = read_segment(path)?;
            last_good = good;
            for (seq, rows) in entries {
                if seq > flushed {
                    next_seq = next_seq.max(seq + 1);
                    pending.add(batches_of(&rows)?);
                }
            }
        }
        // Appends go on in the newest segment, cut to its good prefix.
        let wal_path = match segs.last() {
            Some((_, p)) => p.clone(),
            None => segment_path(dir, next_seq),
        };
        let wal = open_segment(&wal_path)?;
        if segs.last().is_some() {
            wal.set_len(last_good)
                .map_err(io_err("truncate", &wal_path))?;
        }
        Ok(ChainStore {
            dir: dir.into(),
            state: Mutex::new(State {
                wal: Arc::new(wal),
                wal_path,
                next_seq,
                flushed,
                pending,
                flushing: None,
                files,
                doomed: Vec::new(),
            }),
            sync: Mutex::new(Sync {
                synced: next_seq - 1,
                ..Default::default()
            }),
            synced: Condvar::new(),
            flush_lock: Mutex::new(()),
            maintain_lock: Mutex::new(()),
            pending_max: PENDING_ROWS_MAX,
        })
    }

    /// The data files on disk, after removing temporary files and files whose entry
    /// range lies inside another file's (an interrupted compaction's inputs).
    fn load_files(dir: &Path) -> Result<Vec<Arc<DataFile>>, ChainError> {
        let mut all = Vec::new();
        for t in TABLES {
            let d = table_dir(dir, t);
            let mut found = Vec::new();
            for e in fs::read_dir(&d).map_err(io_err("list", &d))?.flatten() {
                let p = e.path();
                let orphan_index = p.extension().is_some_and(|x| x == "idx")
                    && !p.with_extension("parquet").exists();
                if orphan_index || p.extension().is_some_and(|x| x == "tmp") {
                    let _ = fs::remove_file(&p);
                } else if let Some((from, to, _)) = parse_name(&p) {
                    found.push((from, to, p));
                }
            }
            for (from, to, p) in &found {
                let inside = found
                    .iter()
                    .any(|(f, t, o)| o != p && f <= from && to <= t && (f, t) != (from, to));
                if inside {
                    fs::remove_file(p).map_err(io_err("remove", p))?;
                    let _ = fs::remove_file(index_path(p));
                } else if let Some(f) = load_data_file(t, p)? {
                    all.push(Arc::new(f));
                }
            }
        }
        all.sort_by_key(|f| (f.table, f.from, f.to));
        Ok(all)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("chain state lock")
    }

    /// The latest start of any span stored (in files or not yet flushed), nanoseconds;
    /// `None` when no span is stored.
    pub fn newest_span_ns(&self) -> Option<i64> {
        let st = self.state();
        let in_files = st
            .files
            .iter()
            .filter(|f| f.table == "spans")
            .map(|f| f.max_time);
        let unflushed = st
            .flushing
            .iter()
            .flat_map(|f| f.tables.get("spans").into_iter().flatten())
            .chain(st.pending.tables.get("spans").into_iter().flatten())
            .filter_map(|b| {
                b.column(0)
                    .as_any()
                    .downcast_ref::<TimestampNanosecondArray>()
                    .and_then(|t| t.iter().flatten().max())
            })
            .collect::<Vec<i64>>();
        in_files.chain(unflushed).max()
    }

    /// A table's files, oldest entries first.
    pub fn files_of(&self, table: &'static str) -> Result<Vec<DataFile>, ChainError> {
        Ok(self
            .state()
            .files
            .iter()
            .filter(|f| f.table == table)
            .map(|f| (**f).clone())
            .collect())
    }

    pub fn stats(&self) -> ChainStats {
        let st = self.state();
        ChainStats {
            pending_rows: st.pending.rows + st.flushing.as_ref().map_or(0, |f| f.rows),
            files: st.files.len(),
            file_bytes: st.files.iter().map(|f| f.bytes).sum(),
            file_rows: st.files.iter().map(|f| f.rows).sum(),
            flushed_seq: st.flushed,
            last_seq: st.next_seq - 1,
        }
    }

    /// Logs rows durably (fsynced, the fsync shared with concurrent appends) and keeps
    /// them for the next flush. Refused when `PENDING_ROWS_MAX` rows are waiting.
    pub fn append(&self, rows: Rows) -> Result<u64, ChainError> {
        let seq = self.write_entry(rows)?;
        self.wait_durable(seq)?;
        Ok(seq)
    }

    /// Writes an entry to the current segment (not yet fsynced) and keeps its rows.
    fn write_entry(&self, rows: Rows) -> Result<u64, ChainError> {
        if let Some(p) = &self.sync.lock().expect("chain sync lock").poisoned {
            return Err(ChainError::Poisoned(p.clone()));
        }
        if rows.is_empty() {
            return Ok(self.state().next_seq - 1);
        }
        let batches = batches_of(&rows)?;
        let mut frame = frame(&rows)?;
        let n = rows.len();
        let mut st = self.state();
        let held = st.pending.rows + st.flushing.as_ref().map_or(0, |f| f.rows);
        if held + n > self.pending_max {
            return Err(ChainError::Full);
        }
        let seq = st.next_seq;
        seal(&mut frame, seq);
        if let Err(e) = (&*st.wal).write_all(&frame) {
            // A partial frame may be in the segment: nothing after it could be read back,
            // so the store stops taking rows.
            let why = format!("{}: {e}", st.wal_path.display());
            self.sync.lock().expect("chain sync lock").poisoned = Some(why.clone());
            return Err(ChainError::Poisoned(why));
        }
        st.next_seq += 1;
        st.pending.add(batches);
        Ok(seq)
    }

    /// Logs rows without waiting for their fsync (the next append's or flush's covers
    /// them): for copies of data that is durable elsewhere.
    pub fn append_relaxed(&self, rows: Rows) -> Result<u64, ChainError> {
        self.write_entry(rows)
    }

    /// Returns once entry `seq` is fsynced: by another caller's sync, or by this one,
    /// which then syncs everything written so far.
    fn wait_durable(&self, seq: u64) -> Result<(), ChainError> {
        let mut g = self.sync.lock().expect("chain sync lock");
        loop {
            if let Some(p) = &g.poisoned {
                return Err(ChainError::Poisoned(p.clone()));
            }
            if g.synced >= seq {
                return Ok(());
            }
            if !g.syncing {
                g.syncing = true;
                drop(g);
                // The current segment and what was written to it. An entry in an older
                // segment was synced by the rotation that left it, which recorded that
                // before this read could see the new segment.
                let (file, path, upto) = {
                    let st = self.state();
                    (st.wal.clone(), st.wal_path.clone(), st.next_seq - 1)
                };
                let r = file.sync_data();
                g = self.sync.lock().expect("chain sync lock");
                g.syncing = false;
                match r {
                    Ok(()) => g.synced = g.synced.max(upto),
                    Err(e) => g.poisoned = Some(format!("{}: {e}", path.display())),
                }
                self.synced.notify_all();
                continue;
            }
            g = self.synced.wait(g).expect("chain sync lock");
        }
    }

    pub fn pending_rows(&self) -> usize {
        self.stats().pending_rows
    }

    /// Writes the pending rows to one Parquet file per table, records the flush, and
    /// removes the WAL segments it covers. Appends go on meanwhile into a new segment.
    /// Returns the rows written.
    pub fn flush(&self) -> Result<usize, ChainError> {
        let _one = self.flush_lock.lock().expect("chain flush lock");
        let (from, to, taken) = {
            let mut st = self.state();
            let to = st.next_seq - 1;
            if st.pending.rows == 0 || to <= st.flushed {
                return Ok(0);
            }
            // Everything in the old segment is made durable before appends switch.
            let old_path = st.wal_path.clone();
            st.wal.sync_data().map_err(io_err("sync", &old_path))?;
            {
                let mut g = self.sync.lock().expect("chain sync lock");
                g.synced = g.synced.max(to);
                self.synced.notify_all();
            }
            let new_path = segment_path(&self.dir, to + 1);
            st.wal = Arc::new(open_segment(&new_path)?);
            st.wal_path = new_path;
            let taken = std::mem::take(&mut st.pending);
            st.flushing = Some(taken.clone());
            (st.flushed + 1, to, taken)
        };
        let written = self.write_flush(from, to, &taken);
        let mut st = self.state();
        let new_files = match written {
            Ok(f) => f,
            Err(e) => {
                // The rows stay pending (and logged); the next flush tries again.
                let back = st.flushing.take().unwrap_or_default();
                st.pending.merge(back);
                return Err(e);
            }
        };
        st.files.extend(new_files.into_iter().map(Arc::new));
        st.files.sort_by_key(|f| (f.table, f.from, f.to));
        st.flushed = to;
        st.flushing = None;
        let current = st.wal_path.clone();
        drop(st);
        for (_, p) in segments(&self.dir)? {
            if p != current {
                fs::remove_file(&p).map_err(io_err("remove", &p))?;
            }
        }
        sync_dir(&self.dir)?;
        Ok(taken.rows)
    }

    fn write_flush(&self, from: u64, to: u64, p: &Pending) -> Result<Vec<DataFile>, ChainError> {
        let mut out = Vec::new();
        for (t, batches) in &p.tables {
            if batches.is_empty() {
                continue;
            }
            let path = table_dir(&self.dir, t).join(data_name(from, to, max_time(batches)));
            out.push(write_data_file(t, &path, from, to, batches)?);
            sync_dir(&table_dir(&self.dir, t))?;
        }
        let tmp = self.dir.join("flushed.tmp");
        fs::write(&tmp, to.to_string()).map_err(io_err("write", &tmp))?;
        File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(io_err("sync", &tmp))?;
        fs::rename(&tmp, self.dir.join("flushed")).map_err(io_err("rename", &tmp))?;
        sync_dir(&self.dir)?;
        Ok(out)
    }

    /// Deletes the files dropped by the previous compaction or retention round (queries
    /// that started before it had a round to finish).
    fn reap(&self) -> Result<(), ChainError> {
        let doomed = std::mem::take(&mut self.state().doomed);
        for p in doomed {
            for q in [index_path(&p), p] {
                match fs::remove_file(&q) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io_err("remove", &q)(e)),
                }
            }
        }
        Ok(())
    }

    /// Merges up to `COMPACT_FILES_MAX` of a table's files that are each smaller than
    /// `small_bytes` into one. Returns how many files were merged.
    pub fn compact(&self, table: &'static str, small_bytes: u64) -> Result<usize, ChainError> {
        let _one = self.maintain_lock.lock().expect("chain maintain lock");
        self.reap()?;
        // A run of neighbours in entry order: the merged range then holds no other file
        // of the table (a flush with no rows for it wrote none).
        let mut run: Vec<Arc<DataFile>> = Vec::new();
        for f in self.state().files.iter().filter(|f| f.table == table) {
            if f.bytes < small_bytes && run.len() < COMPACT_FILES_MAX {
                run.push(f.clone());
            } else if run.len() >= 2 {
                break;
            } else {
                run.clear();
            }
        }
        if run.len() < 2 {
            return Ok(0);
        }
        let mut batches = Vec::new();
        for f in &run {
            batches.extend(read_parquet(&f.path)?);
        }
        let batches = by_trace(table, batches)?;
        let (from, to) = (run[0].from, run[run.len() - 1].to);
        let max_t = run.iter().map(|f| f.max_time).max().unwrap_or(0);
        let path = table_dir(&self.dir, table).join(data_name(from, to, max_t));
        let merged = write_data_file(table, &path, from, to, &batches)?;
        sync_dir(&table_dir(&self.dir, table))?;
        let mut st = self.state();
        st.files.retain(|f| !run.iter().any(|r| r.path == f.path));
        st.files.push(Arc::new(merged));
        st.files.sort_by_key(|f| (f.table, f.from, f.to));
        st.doomed.extend(run.iter().map(|f| f.path.clone()));
        Ok(run.len())
    }

    /// Drops files whose newest row is older than `older_than_ns`, then the oldest files
    /// until all of them take at most `max_bytes`. Returns the files dropped.
    pub fn retain(&self, older_than_ns: i64, max_bytes: u64) -> Result<usize, ChainError> {
        let _one = self.maintain_lock.lock().expect("chain maintain lock");
        self.reap()?;
        let mut st = self.state();
        let mut by_age: Vec<Arc<DataFile>> = st.files.clone();
        by_age.sort_by_key(|f| (f.max_time, f.from));
        let mut total: u64 = by_age.iter().map(|f| f.bytes).sum();
        let mut dropped = Vec::new();
        for f in by_age {
            if f.max_time < older_than_ns || total > max_bytes {
                total -= f.bytes;
                dropped.push(f.path.clone());
            }
        }
        st.files.retain(|f| !dropped.contains(&f.path));
        let n = dropped.len();
        st.doomed.extend(dropped);
        Ok(n)
    }

    /// A snapshot to query: the files of each table and its pending rows.
    pub fn snapshot(&self) -> Result<Snapshot, ChainError> {
        let st = self.state();
        let mut tables = BTreeMap::new();
        for t in TABLES {
            let files: Vec<Arc<DataFile>> =
                st.files.iter().filter(|f| f.table == t).cloned().collect();
            let mut recent: Vec<RecordBatch> = st
                .flushing
                .as_ref()
                .and_then(|f| f.tables.get(t).cloned())
                .unwrap_or_default();
            recent.extend(st.pending.tables.get(t).cloned().unwrap_or_default());
            tables.insert(t, (files, recent));
        }
        Ok(Snapshot { tables })
    }
}

/// What a query sees: per table, its Parquet files and its rows not yet flushed.
#[derive(Clone)]
pub struct Snapshot {
    tables: BTreeMap<&'static str, (Vec<Arc<DataFile>>, Vec<RecordBatch>)>,
}

impl Snapshot {
    /// Keeps only the files of `spans`, `logs`, `fund_records` and `access_logs` whose
    /// index says they
    /// may hold a row `keep` wants (rows not yet flushed are always kept).
    pub fn narrow(mut self, keep: impl Fn(&FileIndex) -> bool) -> Snapshot {
        for t in ["spans", "logs", "fund_records", "access_logs"] {
            if let Some((files, _)) = self.tables.get_mut(t) {
                files.retain(|f| keep(&f.index));
            }
        }
        self
    }

    /// Files of a table this snapshot reads.
    pub fn files(&self, table: &str) -> usize {
        self.tables.get(table).map_or(0, |(f, _)| f.len())
    }

    /// The user's newest traces (at most `limit`) according to the file indexes, newest
    /// first; rows not yet flushed are not included (query them with [`Snapshot::recent`]).
    pub fn indexed_user_traces(&self, user: &str, limit: usize) -> Vec<(i64, u128)> {
        let mut all: Vec<(i64, u128)> = self
            .tables
            .get("spans")
            .into_iter()
            .flat_map(|(files, _)| {
                files
                    .iter()
                    .flat_map(|f| f.index.user_traces(user).iter().copied())
            })
            .collect();
        all.sort_unstable_by(|a, b| b.cmp(a));
        let mut seen = std::collections::HashSet::new();
        all.retain(|(_, t)| seen.insert(*t));
        all.truncate(limit);
        all
    }

    /// Only the rows not yet flushed (no file of any table), of this same snapshot, so
    /// that with [`Snapshot::indexed_user_traces`] every row is seen exactly once.
    pub fn recent(&self) -> Snapshot {
        let mut r = self.clone();
        for (files, _) in r.tables.values_mut() {
            files.clear();
        }
        r
    }

    /// Runs SQL over `spans`, `logs` and `metrics`; at most `QUERY_ROWS_MAX` rows come
    /// back (`truncated` says when there were more).
    pub async fn query(&self, sql: &str) -> Result<(Vec<RecordBatch>, bool), ChainError> {
        self.run(sql, false).await
    }

    /// [`Snapshot::query`] for a lookup whose filter keeps few rows (a trace, a user's
    /// traces): the filter is evaluated inside the Parquet reader, so the other columns
    /// are decoded only for the rows it keeps, not for whole row groups.
    pub async fn lookup(&self, sql: &str) -> Result<(Vec<RecordBatch>, bool), ChainError> {
        self.run(sql, true).await
    }

    async fn run(&self, sql: &str, pushdown: bool) -> Result<(Vec<RecordBatch>, bool), ChainError> {
        use datafusion::datasource::file_format::parquet::ParquetFormat;
        use datafusion::datasource::listing::{
            ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
        };
        use datafusion::datasource::MemTable;
        use datafusion::prelude::SessionContext;
        let q = |e: datafusion::error::DataFusionError| ChainError::Query(e.to_string());
        let mut config = datafusion::prelude::SessionConfig::new();
        if pushdown {
            let parquet = &mut config.options_mut().execution.parquet;
            parquet.pushdown_filters = true;
            parquet.reorder_filters = true;
        }
        let ctx = SessionContext::new_with_config(config);
        for (t, (files, recent)) in &self.tables {
            let schema = schema_of(t);
            let mem = MemTable::try_new(schema.clone(), vec![recent.clone()]).map_err(q)?;
            ctx.register_table(format!("{t}_recent"), Arc::new(mem))
                .map_err(q)?;
            if files.is_empty() {
                ctx.sql(&format!("CREATE VIEW {t} AS SELECT * FROM {t}_recent"))
                    .await
                    .map_err(q)?;
                continue;
            }
            let urls = files
                .iter()
                .map(|f| ListingTableUrl::parse(f.path.to_string_lossy()))
                .collect::<Result<Vec<_>, _>>()
                .map_err(q)?;
            let config = ListingTableConfig::new_with_multi_paths(urls)
                .with_listing_options(
                    ListingOptions::new(Arc::new(ParquetFormat::default()))
                        .with_file_extension(".parquet"),
                )
                .with_schema(schema);
            let table = ListingTable::try_new(config).map_err(q)?;
            ctx.register_table(format!("{t}_files"), Arc::new(table))
                .map_err(q)?;
            ctx.sql(&format!(
                "CREATE VIEW {t} AS SELECT * FROM {t}_files UNION ALL SELECT * FROM {t}_recent"
            ))
            .await
            .map_err(q)?;
        }
        let df = ctx.sql(sql).await.map_err(q)?;
        let df = df.limit(0, Some(QUERY_ROWS_MAX + 1)).map_err(q)?;
        let mut batches = df.collect().await.map_err(q)?;
        let total: usize = batches.iter().map(|b| b.num_rows()).sum();
        let truncated = total > QUERY_ROWS_MAX;
        if truncated {
            let mut keep = QUERY_ROWS_MAX;
            for b in batches.iter_mut() {
                let n = b.num_rows().min(keep);
                *b = b.slice(0, n);
                keep -= n;
            }
        }
        Ok((batches, truncated))
    }
}

/// Batches as JSON rows (an array of objects), for the API.
pub fn batches_to_json(batches: &[RecordBatch]) -> Result<serde_json::Value, ChainError> {
    let mut w = datafusion::arrow::json::ArrayWriter::new(Vec::new());
    let refs: Vec<&RecordBatch> = batches.iter().collect();
    w.write_batches(&refs).map_err(fmt_err)?;
    w.finish().map_err(fmt_err)?;
    let bytes = w.into_inner();
    if bytes.is_empty() {
        return Ok(serde_json::Value::Array(vec![]));
    }
    serde_json::from_slice(&bytes).map_err(fmt_err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use steadfast_chain::SpanRow;

    fn rows(n: usize, base: i64) -> Rows {
        Rows {
            spans: (0..n)
                .map(|i| SpanRow {
                    start_ns: base + i as i64,
                    end_ns: base + i as i64 + 10,
                    trace_id: format!("{:032x}", base as usize + i),
                    span_id: format!("{:016x}", i + 1),
                    service: "gateway".into(),
                    name: "GET /".into(),
                    kind: "server".into(),
                    status: "ok".into(),
                    user_id: Some(format!("u{}", i % 3)),
                    attributes: "{}".into(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    fn count(store: &ChainStore, sql: &str) -> i64 {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let (b, _) = rt.block_on(store.snapshot().unwrap().query(sql)).unwrap();
        let v = batches_to_json(&b).unwrap();
        v[0]["n"].as_i64().unwrap()
    }

    const N: &str = "SELECT count(*) AS n FROM spans";

    #[test]
    fn logged_rows_survive_a_restart_before_and_after_a_flush() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = ChainStore::open(dir.path()).unwrap();
            s.append(rows(10, 0)).unwrap();
            s.append(rows(5, 100)).unwrap();
        }
        let s = ChainStore::open(dir.path()).unwrap();
        assert_eq!(s.pending_rows(), 15, "replayed from the WAL");
        assert_eq!(count(&s, N), 15);
        assert_eq!(s.flush().unwrap(), 15);
        s.append(rows(3, 200)).unwrap();
        drop(s);
        let s = ChainStore::open(dir.path()).unwrap();
        assert_eq!((s.pending_rows(), s.stats().files), (3, 1));
        assert_eq!(
            count(&s, N),
            18,
            "files and pending rows together, none twice"
        );
        assert_eq!(
            count(&s, "SELECT count(*) AS n FROM spans WHERE user_id = 'u1'"),
            6
        );
    }

    #[test]
    fn a_torn_wal_tail_is_cut_and_the_rest_kept() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = ChainStore::open(dir.path()).unwrap();
            s.append(rows(4, 0)).unwrap();
        }
        let wal = segments(dir.path()).unwrap().pop().unwrap().1;
        let mut f = OpenOptions::new().append(true).open(&wal).unwrap();
        f.write_all(&[200, 0, 0, 0, 1, 2, 3, 4, 9, 9]).unwrap();
        drop(f);
        let s = ChainStore::open(dir.path()).unwrap();
        assert_eq!(s.pending_rows(), 4);
        s.append(rows(1, 50)).unwrap();
        drop(s);
        assert_eq!(ChainStore::open(dir.path()).unwrap().pending_rows(), 5);
    }

    #[test]
    fn compaction_merges_small_files_without_losing_or_doubling_a_row() {
        let dir = tempfile::tempdir().unwrap();
        let s = ChainStore::open(dir.path()).unwrap();
        for i in 0..5 {
            s.append(rows(7, i * 1000)).unwrap();
            s.flush().unwrap();
        }
        assert_eq!(s.stats().files, 5);
        let before = count(&s, N);
        assert_eq!(s.compact("spans", u64::MAX).unwrap(), 5);
        assert_eq!(s.stats().files, 1);
        assert_eq!(count(&s, N), before);
        assert_eq!(
            count(&s, "SELECT count(DISTINCT trace_id) AS n FROM spans"),
            before
        );
        // An interrupted compaction: the merged file written, its inputs still there.
        for i in 5..8 {
            s.append(rows(7, i * 1000)).unwrap();
            s.flush().unwrap();
        }
        let inputs: Vec<PathBuf> = s
            .files_of("spans")
            .unwrap()
            .iter()
            .skip(1)
            .map(|f| f.path.clone())
            .collect();
        let keep: Vec<Vec<u8>> = inputs.iter().map(|p| fs::read(p).unwrap()).collect();
        s.compact("spans", u64::MAX).unwrap();
        for (p, bytes) in inputs.iter().zip(keep) {
            fs::write(p, bytes).unwrap();
        }
        let s = ChainStore::open(dir.path()).unwrap();
        assert_eq!(s.stats().files, 1, "the leftovers are removed at open");
        assert_eq!(count(&s, N), 8 * 7);
    }

    #[test]
    fn retention_deletes_by_age_and_by_size() {
        let dir = tempfile::tempdir().unwrap();
        let s = ChainStore::open(dir.path()).unwrap();
        for i in 0..4 {
            s.append(rows(50, i * 1_000_000)).unwrap();
            s.flush().unwrap();
        }
        assert_eq!(
            s.retain(1_000_000, u64::MAX).unwrap(),
            1,
            "the oldest file by age"
        );
        assert_eq!(count(&s, N), 150);
        let newest_two: u64 = s.files_of("spans").unwrap()[1..]
            .iter()
            .map(|f| f.bytes)
            .sum();
        assert_eq!(
            s.retain(0, newest_two).unwrap(),
            1,
            "then the oldest until the size fits"
        );
        assert_eq!(count(&s, N), 100);
        assert!(count(&s, "SELECT min(start_time) AS n FROM (SELECT CAST(start_time AS BIGINT) AS start_time FROM spans)") >= 2_000_000);
    }

    #[test]
    fn a_full_buffer_refuses_instead_of_growing() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = ChainStore::open(dir.path()).unwrap();
        s.pending_max = 10;
        s.append(rows(10, 0)).unwrap();
        assert!(matches!(s.append(rows(1, 0)), Err(ChainError::Full)));
        s.flush().unwrap();
        s.append(rows(1, 0)).unwrap();
    }

    #[test]
    fn concurrent_appends_share_fsyncs_and_all_survive_a_flush_in_between() {
        let dir = tempfile::tempdir().unwrap();
        let s = Arc::new(ChainStore::open(dir.path()).unwrap());
        let writers: Vec<_> = (0..8)
            .map(|w| {
                let s = s.clone();
                std::thread::spawn(move || {
                    for i in 0..50 {
                        s.append(rows(3, (w * 1_000 + i * 10) as i64)).unwrap();
                    }
                })
            })
            .collect();
        let flusher = {
            let s = s.clone();
            std::thread::spawn(move || {
                for _ in 0..20 {
                    s.flush().unwrap();
                    std::thread::sleep(std::time::Duration::from_millis(2));
                }
            })
        };
        for w in writers {
            w.join().unwrap();
        }
        flusher.join().unwrap();
        assert_eq!(
            count(&s, N),
            8 * 50 * 3,
            "every acknowledged row, none twice"
        );
        let last = s.stats().last_seq;
        drop(s);
        let s = ChainStore::open(dir.path()).unwrap();
        assert_eq!(s.stats().last_seq, last);
        assert_eq!(count(&s, N), 8 * 50 * 3, "and after a restart");
        assert!(
            segments(dir.path()).unwrap().len() <= 2,
            "flushed segments are removed"
        );
    }

    #[test]
    fn the_indexes_narrow_a_trace_or_a_user_to_the_files_that_hold_them() {
        let dir = tempfile::tempdir().unwrap();
        let s = ChainStore::open(dir.path()).unwrap();
        for i in 0..4 {
            let mut r = rows(6, i * 1_000);
            for span in &mut r.spans {
                span.user_id = Some(format!("user-{i}"));
            }
            s.append(r).unwrap();
            s.flush().unwrap();
        }
        let trace = u128::from_str_radix(&format!("{:032x}", 2_003), 16).unwrap();
        let snap = s.snapshot().unwrap().narrow(|i| i.has_trace(trace));
        assert_eq!(snap.files("spans"), 1, "one file of four holds the trace");
        let snap = s.snapshot().unwrap();
        // The user's time range and traces, newest first, from the index alone.
        let traces: Vec<(i64, u128)> = (1_000..1_006).rev().map(|t| (t, t as u128)).collect();
        assert_eq!(snap.indexed_user_traces("user-1", 10), traces);
        let snap = snap.narrow(|i| i.user("user-1").is_some());
        assert_eq!(snap.files("spans"), 1);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let (b, _) = rt
            .block_on(snap.query("SELECT count(*) AS n FROM spans WHERE user_id = 'user-1'"))
            .unwrap();
        assert_eq!(batches_to_json(&b).unwrap()[0]["n"], 6);
        // A lost index is rebuilt from its file.
        let f = s.files_of("spans").unwrap().remove(0);
        fs::remove_file(index_path(&f.path)).unwrap();
        drop(s);
        let s = ChainStore::open(dir.path()).unwrap();
        assert_eq!(s.files_of("spans").unwrap()[0].index, f.index);
    }

    #[test]
    fn a_query_started_before_a_compaction_still_reads_its_files() {
        let dir = tempfile::tempdir().unwrap();
        let s = ChainStore::open(dir.path()).unwrap();
        for i in 0..3 {
            s.append(rows(4, i * 100)).unwrap();
            s.flush().unwrap();
        }
        let before = s.snapshot().unwrap();
        assert_eq!(s.compact("spans", u64::MAX).unwrap(), 3);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let (b, _) = rt.block_on(before.query(N)).unwrap();
        assert_eq!(batches_to_json(&b).unwrap()[0]["n"], 12);
        assert_eq!(count(&s, N), 12);
    }
}
