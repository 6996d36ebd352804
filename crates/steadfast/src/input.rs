//! Reading exported fund records: NDJSON (or a JSON array) and CSV, by file extension.

use std::path::Path;

use anyhow::{bail, Context};
use steadfast_model::wire::{record_from_csv, RecordError};
use steadfast_model::FundRecord;

/// Most invalid records listed before reading stops.
pub const ERRORS_SHOWN_MAX: usize = 20;

/// Reads every record of `path`. Invalid records are collected, not skipped silently.
pub fn read_file(
    path: &Path,
    mut on_bytes: impl FnMut(u64),
) -> anyhow::Result<(Vec<FundRecord>, Vec<RecordError>)> {
    let is_csv = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("csv"));
    let file =
        std::fs::File::open(path).with_context(|| format!("failed to open {}", path.display()))?;
    let mut records = Vec::new();
    let mut errors = Vec::new();
    if is_csv {
        let mut r = csv::Reader::from_reader(file);
        let header: Vec<String> = r
            .headers()
            .with_context(|| format!("{}: no CSV header", path.display()))?
            .iter()
            .map(String::from)
            .collect();
        let header: Vec<&str> = header.iter().map(|s| s.as_str()).collect();
        for (i, row) in r.records().enumerate() {
            let row = row.with_context(|| format!("{}: bad CSV row {}", path.display(), i + 2))?;
            on_bytes(row.as_slice().len() as u64 + row.len() as u64);
            let cells: Vec<&str> = row.iter().collect();
            match record_from_csv(i, &header, &cells) {
                Ok(rec) => records.push(rec),
                Err(e) => errors.push(e),
            }
        }
    } else {
        if !is_ndjson(path)? {
            let bytes = std::fs::read(path)?;
            on_bytes(bytes.len() as u64);
            let parsed = steadfast_model::wire::parse_body(&bytes, usize::MAX)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            for p in parsed {
                match p {
                    Ok(r) => records.push(r),
                    Err(e) => errors.push(e),
                }
            }
        } else {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("failed to read {}", path.display()))?;
            on_bytes(text.len() as u64);
            let threads = std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1);
            (records, errors) = steadfast_model::wire::parse_ndjson(&text, threads);
        }
    }
    Ok((records, errors))
}

/// Whether `path` holds NDJSON: not a `.csv` file, and not a JSON array.
pub fn is_ndjson(path: &Path) -> anyhow::Result<bool> {
    use std::io::BufRead;
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("csv"))
    {
        return Ok(false);
    }
    let file =
        std::fs::File::open(path).with_context(|| format!("failed to open {}", path.display()))?;
    let mut peek = std::io::BufReader::new(file);
    let buf = peek.fill_buf()?;
    Ok(buf.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'['))
}

/// Prints the first invalid records and fails when there are any.
pub fn refuse_errors(path: &Path, errors: &[RecordError]) -> anyhow::Result<()> {
    if errors.is_empty() {
        return Ok(());
    }
    for e in errors.iter().take(ERRORS_SHOWN_MAX) {
        eprintln!(
            "{}: record {}{}: {}",
            path.display(),
            e.index + 1,
            e.record_id
                .as_deref()
                .map(|id| format!(" ({id})"))
                .unwrap_or_default(),
            e.message
        );
    }
    bail!(
        "{}: {} invalid records; nothing was sent",
        path.display(),
        errors.len()
    )
}
