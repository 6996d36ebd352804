//! The data chain's storage: a write-ahead log first (a request is acknowledged only once
//! its rows are fsynced), then Parquet files (zstd), one directory per table (`spans`,
//! `logs`, `metrics`), queried with DataFusion together with the rows not flushed yet.
//!
//! Layout under `DATA_DIR/chain`:
//! - `wal.log`: CRC-framed postcard entries `(seq, Rows)` since the last flush;
//! - `flushed`: the highest sequence number whose rows are in Parquet files;
//! - `<table>/<from>-<to>-<max_time>.parquet`: rows of entries `from..=to`. Compaction
//!   writes one file over a range and then removes the files inside it; at open, a file
//!   whose range lies inside another's is the leftover of a compaction that did not
//!   finish and is removed, so a row is never counted twice.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::basic::{Compression, ZstdLevel};
use datafusion::parquet::file::properties::WriterProperties;
use steadfast_chain::arrow_rows::{
    log_schema, logs_batch, metric_schema, metrics_batch, span_schema, spans_batch,
};
use steadfast_chain::Rows;

/// Rows held in memory (logged, not yet in Parquet); past it ingest is refused with 503
/// until a flush makes room.
pub const PENDING_ROWS_MAX: usize = 1_000_000;
/// A flush is due once this many rows are pending (or on the caller's timer).
pub const FLUSH_ROWS: usize = 100_000;
/// Files of a table merged into one by a compaction at most.
pub const COMPACT_FILES_MAX: usize = 64;
/// Rows returned by one query at most.
pub const QUERY_ROWS_MAX: usize = 10_000;
/// Largest WAL entry.
const ENTRY_BYTES_MAX: usize = 64 * 1024 * 1024;

pub const TABLES: [&str; 3] = ["spans", "logs", "metrics"];

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
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ChainError + 'a {
    move |source| ChainError::Io {
        action,
        path: path.to_path_buf(),
        source,
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
}

fn parse_name(table: &'static str, path: &Path) -> Option<DataFile> {
    let stem = path.file_name()?.to_str()?.strip_suffix(".parquet")?;
    let mut parts = stem.split('-');
    let from = parts.next()?.parse().ok()?;
    let to = parts.next()?.parse().ok()?;
    let max_time = parts.next()?.parse().ok()?;
    let bytes = fs::metadata(path).ok()?.len();
    Some(DataFile {
        table,
        path: path.into(),
        from,
        to,
        max_time,
        bytes,
    })
}

/// What is stored, for status and benchmarks.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ChainStats {
    pub pending_rows: usize,
    pub files: usize,
    pub file_bytes: u64,
    pub flushed_seq: u64,
    pub last_seq: u64,
}

pub struct ChainStore {
    dir: PathBuf,
    wal: File,
    next_seq: u64,
    flushed: u64,
    pending: Rows,
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

fn max_time(rows: &Rows, table: &str) -> i64 {
    match table {
        "spans" => rows.spans.iter().map(|r| r.start_ns).max(),
        "logs" => rows.logs.iter().map(|r| r.time_ns).max(),
        _ => rows.metrics.iter().map(|r| r.time_ns).max(),
    }
    .unwrap_or(0)
}

fn batch_of(rows: &Rows, table: &str) -> Result<RecordBatch, ChainError> {
    match table {
        "spans" => spans_batch(&rows.spans),
        "logs" => logs_batch(&rows.logs),
        _ => metrics_batch(&rows.metrics),
    }
    .map_err(|e| ChainError::Format(e.to_string()))
}

fn schema_of(table: &str) -> datafusion::arrow::datatypes::SchemaRef {
    match table {
        "spans" => span_schema(),
        "logs" => log_schema(),
        _ => metric_schema(),
    }
}

fn table_len(rows: &Rows, table: &str) -> usize {
    match table {
        "spans" => rows.spans.len(),
        "logs" => rows.logs.len(),
        _ => rows.metrics.len(),
    }
}

/// Writes batches to `path` atomically (a temporary file, fsynced, renamed).
fn write_parquet(path: &Path, table: &str, batches: &[RecordBatch]) -> Result<u64, ChainError> {
    let tmp = path.with_extension("parquet.tmp");
    let file = File::create(&tmp).map_err(io_err("create", &tmp))?;
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(
            ZstdLevel::try_new(3).expect("a zstd level"),
        ))
        .set_max_row_group_row_count(Some(128 * 1024))
        .build();
    let mut w = ArrowWriter::try_new(file, schema_of(table), Some(props))
        .map_err(|e| ChainError::Format(e.to_string()))?;
    for b in batches {
        w.write(b).map_err(|e| ChainError::Format(e.to_string()))?;
    }
    let file = w
        .into_inner()
        .map_err(|e| ChainError::Format(e.to_string()))?;
    file.sync_all().map_err(io_err("sync", &tmp))?;
    fs::rename(&tmp, path).map_err(io_err("rename", &tmp))?;
    Ok(fs::metadata(path).map_err(io_err("stat", path))?.len())
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

impl ChainStore {
    /// Opens (or creates) the store: removes compaction leftovers and replays the WAL
    /// entries not yet in Parquet into memory.
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
        let mut store = ChainStore {
            dir: dir.into(),
            wal: File::open(dir).map_err(io_err("open", dir))?, // replaced below
            next_seq: flushed + 1,
            flushed,
            pending: Rows::default(),
            pending_max: PENDING_ROWS_MAX,
        };
        store.remove_leftovers()?;
        let wal_path = dir.join("wal.log");
        let mut good_len = 0u64;
        if let Ok(f) = File::open(&wal_path) {
            let mut r = BufReader::new(f);
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
                    // A torn tail: the entry was never acknowledged.
                    break;
                }
                let (seq, rows): (u64, Rows) = postcard::from_bytes(&body)
                    .map_err(|e| ChainError::Format(format!("WAL entry: {e}")))?;
                good_len += 8 + len as u64;
                if seq > store.flushed {
                    store.next_seq = seq + 1;
                    store.pending.spans.extend(rows.spans);
                    store.pending.logs.extend(rows.logs);
                    store.pending.metrics.extend(rows.metrics);
                }
            }
        }
        let wal = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&wal_path)
            .map_err(io_err("open", &wal_path))?;
        wal.set_len(good_len)
            .map_err(io_err("truncate", &wal_path))?;
        store.wal = wal;
        Ok(store)
    }

    /// Removes files whose entry range lies inside another file's (an interrupted
    /// compaction's inputs) and temporary files.
    fn remove_leftovers(&self) -> Result<(), ChainError> {
        for t in TABLES {
            let d = table_dir(&self.dir, t);
            for e in fs::read_dir(&d).map_err(io_err("list", &d))?.flatten() {
                if e.path().extension().is_some_and(|x| x == "tmp") {
                    let _ = fs::remove_file(e.path());
                }
            }
            let files = self.files_of(t)?;
            for f in &files {
                let inside = files.iter().any(|o| {
                    o.path != f.path
                        && o.from <= f.from
                        && f.to <= o.to
                        && (o.from, o.to) != (f.from, f.to)
                });
                if inside {
                    fs::remove_file(&f.path).map_err(io_err("remove", &f.path))?;
                }
            }
        }
        Ok(())
    }

    pub fn files_of(&self, table: &'static str) -> Result<Vec<DataFile>, ChainError> {
        let d = table_dir(&self.dir, table);
        let mut out: Vec<DataFile> = fs::read_dir(&d)
            .map_err(io_err("list", &d))?
            .flatten()
            .filter_map(|e| parse_name(table, &e.path()))
            .collect();
        out.sort_by_key(|f| (f.from, f.to));
        Ok(out)
    }

    pub fn stats(&self) -> ChainStats {
        let files: Vec<DataFile> = TABLES
            .iter()
            .flat_map(|t| self.files_of(t).unwrap_or_default())
            .collect();
        ChainStats {
            pending_rows: self.pending.len(),
            files: files.len(),
            file_bytes: files.iter().map(|f| f.bytes).sum(),
            flushed_seq: self.flushed,
            last_seq: self.next_seq - 1,
        }
    }

    /// Logs rows durably (fsynced) and keeps them for the next flush. Refused when
    /// `PENDING_ROWS_MAX` rows are waiting.
    pub fn append(&mut self, rows: Rows) -> Result<u64, ChainError> {
        if rows.is_empty() {
            return Ok(self.next_seq - 1);
        }
        if self.pending.len() + rows.len() > self.pending_max {
            return Err(ChainError::Full);
        }
        let seq = self.next_seq;
        let body =
            postcard::to_allocvec(&(seq, &rows)).map_err(|e| ChainError::Format(e.to_string()))?;
        if body.len() > ENTRY_BYTES_MAX {
            return Err(ChainError::Format(format!(
                "an entry of {} bytes is larger than {ENTRY_BYTES_MAX}",
                body.len()
            )));
        }
        let mut frame = Vec::with_capacity(8 + body.len());
        frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
        frame.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        frame.extend_from_slice(&body);
        let path = self.dir.join("wal.log");
        self.wal.write_all(&frame).map_err(io_err("write", &path))?;
        self.wal.sync_data().map_err(io_err("sync", &path))?;
        self.next_seq += 1;
        self.pending.spans.extend(rows.spans);
        self.pending.logs.extend(rows.logs);
        self.pending.metrics.extend(rows.metrics);
        Ok(seq)
    }

    pub fn pending_rows(&self) -> usize {
        self.pending.len()
    }

    /// Writes the pending rows to one Parquet file per table, records the flush, and
    /// empties the WAL. Returns the rows written.
    pub fn flush(&mut self) -> Result<usize, ChainError> {
        let to = self.next_seq - 1;
        if self.pending.is_empty() || to <= self.flushed {
            return Ok(0);
        }
        let from = self.flushed + 1;
        for t in TABLES {
            if table_len(&self.pending, t) == 0 {
                continue;
            }
            let name = format!("{from:020}-{to:020}-{}.parquet", max_time(&self.pending, t));
            let path = table_dir(&self.dir, t).join(name);
            write_parquet(&path, t, &[batch_of(&self.pending, t)?])?;
            sync_dir(&table_dir(&self.dir, t))?;
        }
        let flushed_path = self.dir.join("flushed");
        let tmp = self.dir.join("flushed.tmp");
        fs::write(&tmp, to.to_string()).map_err(io_err("write", &tmp))?;
        File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(io_err("sync", &tmp))?;
        fs::rename(&tmp, &flushed_path).map_err(io_err("rename", &tmp))?;
        sync_dir(&self.dir)?;
        let wal_path = self.dir.join("wal.log");
        self.wal.set_len(0).map_err(io_err("truncate", &wal_path))?;
        self.wal.sync_all().map_err(io_err("sync", &wal_path))?;
        self.flushed = to;
        let n = self.pending.len();
        self.pending = Rows::default();
        Ok(n)
    }

    /// Merges up to `COMPACT_FILES_MAX` of a table's files that are each smaller than
    /// `small_bytes` into one. Returns how many files were merged.
    pub fn compact(&mut self, table: &'static str, small_bytes: u64) -> Result<usize, ChainError> {
        // A run of neighbours in entry order: the merged range then holds no other file
        // of the table (a flush with no rows for it wrote none).
        let mut run: Vec<DataFile> = Vec::new();
        for f in self.files_of(table)? {
            if f.bytes < small_bytes && run.len() < COMPACT_FILES_MAX {
                run.push(f);
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
        let (from, to) = (run[0].from, run[run.len() - 1].to);
        let max_time = run.iter().map(|f| f.max_time).max().unwrap_or(0);
        let path =
            table_dir(&self.dir, table).join(format!("{from:020}-{to:020}-{max_time}.parquet"));
        write_parquet(&path, table, &batches)?;
        sync_dir(&table_dir(&self.dir, table))?;
        for f in &run {
            fs::remove_file(&f.path).map_err(io_err("remove", &f.path))?;
        }
        sync_dir(&table_dir(&self.dir, table))?;
        Ok(run.len())
    }

    /// Deletes files whose newest row is older than `older_than_ns`, then the oldest files
    /// until all of them take at most `max_bytes`. Returns the files deleted.
    pub fn retain(&mut self, older_than_ns: i64, max_bytes: u64) -> Result<usize, ChainError> {
        let mut files: Vec<DataFile> = TABLES
            .iter()
            .flat_map(|t| self.files_of(t).unwrap_or_default())
            .collect();
        files.sort_by_key(|f| (f.max_time, f.from));
        let mut total: u64 = files.iter().map(|f| f.bytes).sum();
        let mut deleted = 0;
        for f in files {
            if f.max_time < older_than_ns || total > max_bytes {
                fs::remove_file(&f.path).map_err(io_err("remove", &f.path))?;
                total -= f.bytes;
                deleted += 1;
            }
        }
        Ok(deleted)
    }

    /// A snapshot to query: the files of each table and its pending rows as batches.
    pub fn snapshot(&self) -> Result<Snapshot, ChainError> {
        let mut tables = BTreeMap::new();
        for t in TABLES {
            let files = self.files_of(t)?.into_iter().map(|f| f.path).collect();
            tables.insert(t, (files, batch_of(&self.pending, t)?));
        }
        Ok(Snapshot { tables })
    }
}

/// What a query sees: per table, its Parquet files and its rows not yet flushed.
pub struct Snapshot {
    tables: BTreeMap<&'static str, (Vec<PathBuf>, RecordBatch)>,
}

impl Snapshot {
    /// Runs SQL over `spans`, `logs` and `metrics`; at most `QUERY_ROWS_MAX` rows come
    /// back (`truncated` says when there were more).
    pub async fn query(self, sql: &str) -> Result<(Vec<RecordBatch>, bool), ChainError> {
        use datafusion::datasource::file_format::parquet::ParquetFormat;
        use datafusion::datasource::listing::{
            ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
        };
        use datafusion::datasource::MemTable;
        use datafusion::prelude::SessionContext;
        let q = |e: datafusion::error::DataFusionError| ChainError::Query(e.to_string());
        let ctx = SessionContext::new();
        for (t, (files, recent)) in self.tables {
            let schema = schema_of(t);
            let mem = MemTable::try_new(schema.clone(), vec![vec![recent]]).map_err(q)?;
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
                .map(|p| ListingTableUrl::parse(p.to_string_lossy()))
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
    w.write_batches(&refs)
        .map_err(|e| ChainError::Format(e.to_string()))?;
    w.finish().map_err(|e| ChainError::Format(e.to_string()))?;
    let bytes = w.into_inner();
    if bytes.is_empty() {
        return Ok(serde_json::Value::Array(vec![]));
    }
    serde_json::from_slice(&bytes).map_err(|e| ChainError::Format(e.to_string()))
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
            let mut s = ChainStore::open(dir.path()).unwrap();
            s.append(rows(10, 0)).unwrap();
            s.append(rows(5, 100)).unwrap();
        }
        let mut s = ChainStore::open(dir.path()).unwrap();
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
            let mut s = ChainStore::open(dir.path()).unwrap();
            s.append(rows(4, 0)).unwrap();
        }
        let wal = dir.path().join("wal.log");
        let mut f = OpenOptions::new().append(true).open(&wal).unwrap();
        f.write_all(&[200, 0, 0, 0, 1, 2, 3, 4, 9, 9]).unwrap();
        drop(f);
        let mut s = ChainStore::open(dir.path()).unwrap();
        assert_eq!(s.pending_rows(), 4);
        s.append(rows(1, 50)).unwrap();
        drop(s);
        assert_eq!(ChainStore::open(dir.path()).unwrap().pending_rows(), 5);
    }

    #[test]
    fn compaction_merges_small_files_without_losing_or_doubling_a_row() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = ChainStore::open(dir.path()).unwrap();
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
        let mut s = ChainStore::open(dir.path()).unwrap();
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
}
