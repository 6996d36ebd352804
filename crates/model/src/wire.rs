//! The JSON wire form of fund records and the validation of ingest bodies.
//!
//! A body is either a JSON array of records or NDJSON (one record per line). Each record
//! is validated on its own, so the answer can list every bad record with its position,
//! its id when it has one, and the reason.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::{format_millis, parse_millis, Currency, Direction, FundRecord, Money};

/// Longest accepted record id, source, kind, key or attribute value, in bytes.
pub const FIELD_BYTES_MAX: usize = 512;
/// Most business key fields or attributes a record may carry.
pub const MAP_ENTRIES_MAX: usize = 64;

/// One refused record: where it was in the body and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordError {
    /// Zero-based position of the record in the body (the line for NDJSON, ignoring blank lines).
    pub index: usize,
    pub record_id: Option<String>,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("body is not valid JSON or NDJSON: {0}")]
    Malformed(String),
    #[error("body holds {got} records, more than the {max} allowed per batch")]
    TooManyRecords { max: usize, got: usize },
    #[error("body holds no records")]
    Empty,
}

/// A JSON scalar accepted where text is expected; numbers and booleans become text.
/// Hand-written visitors (rather than untagged enums, which buffer every value and
/// build an error per variant tried) keep parsing cheap.
struct Scalar(String);

/// `amount` as sent: text, or a JSON number that is refused with a clear message.
enum WireAmount {
    Text(String),
    Number(String),
}

/// `event_time` as sent: RFC 3339 text or epoch milliseconds.
enum WireTime {
    Text(String),
    Millis(i64),
}

macro_rules! scalar_visitor {
    ($ty:ident, $expecting:literal, str: $str:expr, int: $int:expr, float: $float:expr, bool: $bool:expr) => {
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<$ty, D::Error> {
                struct V;
                impl<'de> serde::de::Visitor<'de> for V {
                    type Value = $ty;
                    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                        f.write_str($expecting)
                    }
                    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<$ty, E> {
                        #[allow(clippy::redundant_closure_call)]
                        Ok(($str)(v))
                    }
                    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<$ty, E> {
                        #[allow(clippy::redundant_closure_call)]
                        ($int)(v)
                            .ok_or_else(|| E::invalid_type(serde::de::Unexpected::Signed(v), &self))
                    }
                    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<$ty, E> {
                        match i64::try_from(v) {
                            Ok(v) => self.visit_i64(v),
                            Err(_) => {
                                Err(E::invalid_type(serde::de::Unexpected::Unsigned(v), &self))
                            }
                        }
                    }
                    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<$ty, E> {
                        #[allow(clippy::redundant_closure_call)]
                        ($float)(v)
                            .ok_or_else(|| E::invalid_type(serde::de::Unexpected::Float(v), &self))
                    }
                    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<$ty, E> {
                        #[allow(clippy::redundant_closure_call)]
                        ($bool)(v)
                            .ok_or_else(|| E::invalid_type(serde::de::Unexpected::Bool(v), &self))
                    }
                }
                d.deserialize_any(V)
            }
        }
    };
}

scalar_visitor!(Scalar, "a string, number or boolean",
    str: |v: &str| Scalar(v.to_string()),
    int: |v: i64| Some(Scalar(v.to_string())),
    float: |v: f64| Some(Scalar(v.to_string())),
    bool: |v: bool| Some(Scalar(v.to_string())));
scalar_visitor!(WireAmount, "a decimal string such as \"12.50\"",
    str: |v: &str| WireAmount::Text(v.to_string()),
    int: |v: i64| Some(WireAmount::Number(v.to_string())),
    float: |v: f64| Some(WireAmount::Number(v.to_string())),
    bool: |_| None);
scalar_visitor!(WireTime, "RFC 3339 text or epoch milliseconds",
    str: |v: &str| WireTime::Text(v.to_string()),
    int: |v: i64| Some(WireTime::Millis(v)),
    float: |_| None,
    bool: |_| None);

impl Scalar {
    fn into_text(self) -> String {
        self.0
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireIn {
    record_id: String,
    source: String,
    kind: String,
    #[serde(default)]
    keys: BTreeMap<String, Scalar>,
    amount: WireAmount,
    currency: String,
    account: Option<String>,
    counter_account: Option<String>,
    direction: Option<Direction>,
    status: Option<String>,
    event_time: WireTime,
    trace_id: Option<String>,
    order_id: Option<String>,
    drill: Option<String>,
    amends: Option<String>,
    #[serde(default)]
    attributes: BTreeMap<String, Scalar>,
}

/// The wire form written out (exports, break evidence): amounts as decimal strings,
/// times as RFC 3339.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct WireRecord {
    pub record_id: String,
    pub source: String,
    pub kind: String,
    pub keys: BTreeMap<String, String>,
    pub amount: String,
    pub currency: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub counter_account: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub direction: Option<Direction>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    pub event_time: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub order_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drill: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub amends: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty", default)]
    pub attributes: BTreeMap<String, String>,
}

impl From<&FundRecord> for WireRecord {
    fn from(r: &FundRecord) -> WireRecord {
        WireRecord {
            record_id: r.record_id.clone(),
            source: r.source.clone(),
            kind: r.kind.clone(),
            keys: r.keys.clone(),
            amount: r.amount.to_decimal_string(),
            currency: r.amount.currency.code().to_string(),
            account: r.account.clone(),
            counter_account: r.counter_account.clone(),
            direction: r.direction,
            status: r.status.clone(),
            event_time: format_millis(r.event_time),
            trace_id: r.trace_id.clone(),
            order_id: r.order_id.clone(),
            drill: r.drill.clone(),
            amends: r.amends.clone(),
            attributes: r.attributes.clone(),
        }
    }
}

fn check_text(field: &str, value: &str, required: bool) -> Result<(), String> {
    if required && value.is_empty() {
        return Err(format!("field `{field}` must not be empty"));
    }
    if value.len() > FIELD_BYTES_MAX {
        return Err(format!(
            "field `{field}` is longer than {FIELD_BYTES_MAX} bytes"
        ));
    }
    Ok(())
}

fn convert(w: WireIn) -> Result<FundRecord, String> {
    check_text("record_id", &w.record_id, true)?;
    check_text("source", &w.source, true)?;
    check_text("kind", &w.kind, true)?;
    for opt in [
        ("account", &w.account),
        ("counter_account", &w.counter_account),
        ("status", &w.status),
        ("trace_id", &w.trace_id),
        ("order_id", &w.order_id),
        ("drill", &w.drill),
        ("amends", &w.amends),
    ] {
        if let Some(v) = opt.1 {
            check_text(opt.0, v, true)?;
        }
    }
    if w.keys.is_empty() {
        return Err("field `keys` must name at least one business key field".into());
    }
    if w.keys.len() > MAP_ENTRIES_MAX || w.attributes.len() > MAP_ENTRIES_MAX {
        return Err(format!(
            "`keys` and `attributes` hold at most {MAP_ENTRIES_MAX} entries"
        ));
    }
    let currency = Currency::from_code(&w.currency).map_err(|e| e.to_string())?;
    let amount = match w.amount {
        WireAmount::Text(t) => Money::parse(&t, currency).map_err(|e| e.to_string())?,
        WireAmount::Number(n) => {
            return Err(format!(
                "field `amount` must be a decimal string such as \"{n}\", not a JSON number: numbers lose precision"
            ))
        }
    };
    let event_time = match w.event_time {
        WireTime::Millis(ms) => ms,
        WireTime::Text(t) => parse_millis(&t).ok_or_else(|| {
            format!("field `event_time` {t:?} is not RFC 3339 (2026-11-22T10:00:00.000Z) nor epoch milliseconds")
        })?,
    };
    let text_map = |name: &str, m: BTreeMap<String, Scalar>| {
        m.into_iter()
            .map(|(k, v)| {
                let v = v.into_text();
                check_text(name, &k, true)?;
                check_text(name, &v, false)?;
                Ok((k, v))
            })
            .collect::<Result<BTreeMap<_, _>, String>>()
    };
    let keys = text_map("keys", w.keys)?;
    if let Some((k, _)) = keys.iter().find(|(_, v)| v.is_empty()) {
        return Err(format!("business key `{k}` must not be empty"));
    }
    let attributes = text_map("attributes", w.attributes)?;
    Ok(FundRecord {
        record_id: w.record_id,
        source: w.source,
        kind: w.kind,
        keys,
        amount,
        account: w.account,
        counter_account: w.counter_account,
        direction: w.direction,
        status: w.status,
        event_time,
        trace_id: w.trace_id,
        order_id: w.order_id,
        drill: w.drill,
        amends: w.amends,
        attributes,
    })
}

/// Parses and validates one JSON object.
pub fn parse_record(index: usize, json: &str) -> Result<FundRecord, RecordError> {
    match serde_json::from_str::<WireIn>(json) {
        Ok(w) => {
            let id = w.record_id.clone();
            convert(w).map_err(|message| RecordError {
                index,
                record_id: Some(id),
                message,
            })
        }
        Err(e) => {
            #[derive(Deserialize)]
            struct IdOnly {
                record_id: String,
            }
            let record_id = serde_json::from_str::<IdOnly>(json)
                .ok()
                .map(|r| r.record_id);
            let message = match e.classify() {
                serde_json::error::Category::Data => e.to_string(),
                _ => format!("malformed JSON: {e}"),
            };
            Err(RecordError {
                index,
                record_id,
                message,
            })
        }
    }
}

/// Splits a body into records and validates each. The outer error means nothing in the
/// body can be trusted (malformed array, too many records); the inner results say, per
/// record, whether it is valid.
pub fn parse_body(
    body: &[u8],
    records_max: usize,
) -> Result<Vec<Result<FundRecord, RecordError>>, BodyError> {
    let text = std::str::from_utf8(body)
        .map_err(|e| BodyError::Malformed(format!("body is not UTF-8: {e}")))?;
    let trimmed = text.trim_start();
    let parts: Vec<&str> = if trimmed.starts_with('[') {
        let raws: Vec<&RawValue> =
            serde_json::from_str(trimmed).map_err(|e| BodyError::Malformed(e.to_string()))?;
        raws.into_iter().map(|r| r.get()).collect()
    } else {
        text.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect()
    };
    if parts.is_empty() {
        return Err(BodyError::Empty);
    }
    if parts.len() > records_max {
        return Err(BodyError::TooManyRecords {
            max: records_max,
            got: parts.len(),
        });
    }
    Ok(parts
        .into_iter()
        .enumerate()
        .map(|(i, p)| parse_record(i, p))
        .collect())
}

/// Parses NDJSON text (one record per line, blank lines skipped) on up to `threads`
/// threads. Records come back in file order; an error's `index` counts non-blank lines
/// from zero, as for a request body.
pub fn parse_ndjson(text: &str, threads: usize) -> (Vec<FundRecord>, Vec<RecordError>) {
    let threads = threads.clamp(1, 64);
    // Cut the text into about equal chunks at line ends.
    let mut chunks = Vec::with_capacity(threads);
    let mut start = 0;
    for i in 1..=threads {
        let mut end = if i == threads {
            text.len()
        } else {
            (text.len() * i / threads).max(start)
        };
        while end > start && end < text.len() && text.as_bytes()[end - 1] != b'\n' {
            end += 1;
        }
        chunks.push(&text[start..end]);
        start = end;
    }
    let parse_chunk = |chunk: &str| {
        let mut records = Vec::new();
        let mut errors = Vec::new();
        let mut index = 0;
        for line in chunk.lines().map(str::trim).filter(|l| !l.is_empty()) {
            match parse_record(index, line) {
                Ok(r) => records.push(r),
                Err(e) => errors.push(e),
            }
            index += 1;
        }
        (records, errors, index)
    };
    let parts: Vec<(Vec<FundRecord>, Vec<RecordError>, usize)> = std::thread::scope(|scope| {
        let handles: Vec<_> = chunks
            .iter()
            .skip(1)
            .map(|c| scope.spawn(move || parse_chunk(c)))
            .collect();
        let mut parts = vec![parse_chunk(chunks[0])];
        parts.extend(
            handles
                .into_iter()
                .map(|h| h.join().expect("a parser thread panicked")),
        );
        parts
    });
    let mut records = Vec::with_capacity(parts.iter().map(|p| p.0.len()).sum());
    let mut errors = Vec::new();
    let mut offset = 0;
    for (mut r, e, lines) in parts {
        records.append(&mut r);
        errors.extend(e.into_iter().map(|mut e| {
            e.index += offset;
            e
        }));
        offset += lines;
    }
    (records, errors)
}

/// NDJSON bytes [`parse_ndjson_stream`] parses as one block.
pub const NDJSON_BLOCK_BYTES: usize = 4 << 20;
/// Longest NDJSON line [`parse_ndjson_stream`] takes; a longer one ends the stream with an
/// error (records are limited to far less: a few fields of [`FIELD_BYTES_MAX`]).
pub const NDJSON_LINE_BYTES_MAX: usize = 1 << 20;
/// Parsed blocks [`parse_ndjson_stream`] keeps ready for its consumer. With the block
/// being parsed, this bounds what a stream holds to a few blocks, whatever the file size.
pub const NDJSON_BLOCKS_AHEAD: usize = 2;

/// One block of a [`parse_ndjson_stream`].
#[derive(Debug)]
pub struct ParsedBlock {
    pub records: Vec<FundRecord>,
    /// Invalid records, indexed from the start of the stream (as [`parse_ndjson`] would
    /// over the whole text).
    pub errors: Vec<RecordError>,
    /// Bytes of input the block covers.
    pub bytes: u64,
}

/// Parses NDJSON from `reader` on a thread of its own, a block of about
/// [`NDJSON_BLOCK_BYTES`] at a time, cut at line ends, and yields the blocks in order. The
/// caller works on one block while the next is parsed, and memory stays bounded (see
/// [`NDJSON_BLOCKS_AHEAD`]) where reading a whole export first would hold all of it. A
/// read error, text that is not UTF-8 or an over-long line ends the stream with an error.
pub fn parse_ndjson_stream<R: std::io::Read + Send + 'static>(reader: R) -> NdjsonStream {
    let (tx, rx) = std::sync::mpsc::sync_channel(NDJSON_BLOCKS_AHEAD);
    let thread = std::thread::spawn(move || {
        let mut blocks = Blocks {
            reader,
            carry: Vec::new(),
            lines: 0,
        };
        loop {
            match blocks.next_block() {
                Ok((block, eof)) => {
                    if tx.send(Ok(block)).is_err() || eof {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            }
        }
    });
    NdjsonStream {
        rx,
        thread: Some(thread),
    }
}

/// Cuts a reader into blocks of whole lines and parses them.
struct Blocks<R> {
    reader: R,
    /// The start of a line the last block left over.
    carry: Vec<u8>,
    /// Records (non-blank lines) parsed so far.
    lines: usize,
}

impl<R: std::io::Read> Blocks<R> {
    /// The next block, and whether the input ended with it.
    fn next_block(&mut self) -> std::io::Result<(ParsedBlock, bool)> {
        let invalid =
            |message: String| std::io::Error::new(std::io::ErrorKind::InvalidData, message);
        loop {
            let mut buf = std::mem::take(&mut self.carry);
            let eof = read_block(&mut self.reader, &mut buf)?;
            if !eof {
                match buf.iter().rposition(|&b| b == b'\n') {
                    Some(end) => self.carry = buf.split_off(end + 1),
                    None if buf.len() > NDJSON_LINE_BYTES_MAX => {
                        return Err(invalid(format!(
                            "record {} is on a line longer than {NDJSON_LINE_BYTES_MAX} bytes",
                            self.lines + 1
                        )))
                    }
                    // No line end yet: read on.
                    None => {
                        self.carry = buf;
                        continue;
                    }
                }
            }
            let text = std::str::from_utf8(&buf)
                .map_err(|e| invalid(format!("not UTF-8 after record {}: {e}", self.lines)))?;
            let (records, mut errors) = parse_ndjson(text, 1);
            for e in &mut errors {
                e.index += self.lines;
            }
            self.lines += records.len() + errors.len();
            let block = ParsedBlock {
                records,
                errors,
                bytes: buf.len() as u64,
            };
            return Ok((block, eof));
        }
    }
}

/// Appends to `buf` until it holds [`NDJSON_BLOCK_BYTES`] or the input ends; says whether
/// it ended.
fn read_block(reader: &mut impl std::io::Read, buf: &mut Vec<u8>) -> std::io::Result<bool> {
    use std::io::Read as _;
    let want = NDJSON_BLOCK_BYTES.saturating_sub(buf.len()).max(1);
    let before = buf.len();
    reader.take(want as u64).read_to_end(buf)?;
    Ok(buf.len() == before)
}

/// The blocks of [`parse_ndjson_stream`], in input order.
pub struct NdjsonStream {
    rx: std::sync::mpsc::Receiver<std::io::Result<ParsedBlock>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Iterator for NdjsonStream {
    type Item = std::io::Result<ParsedBlock>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.rx.recv() {
            Ok(block) => Some(block),
            Err(_) => {
                if let Some(t) = self.thread.take() {
                    if t.join().is_err() {
                        return Some(Err(std::io::Error::other(
                            "the NDJSON parser thread panicked",
                        )));
                    }
                }
                None
            }
        }
    }
}

/// Builds a record from one CSV row. Columns: the record's field names, plus
/// `key.NAME` for business keys and `attr.NAME` for attributes; empty cells are absent.
pub fn record_from_csv(
    index: usize,
    header: &[&str],
    row: &[&str],
) -> Result<FundRecord, RecordError> {
    let mut obj = serde_json::Map::new();
    let mut keys = serde_json::Map::new();
    let mut attrs = serde_json::Map::new();
    for (name, value) in header.iter().zip(row.iter()) {
        if value.is_empty() {
            continue;
        }
        let v = serde_json::Value::String(value.to_string());
        if let Some(k) = name.strip_prefix("key.") {
            keys.insert(k.to_string(), v);
        } else if let Some(a) = name.strip_prefix("attr.") {
            attrs.insert(a.to_string(), v);
        } else if let Some(ms) = (*name == "event_time")
            .then(|| value.parse::<i64>().ok())
            .flatten()
        {
            obj.insert(name.to_string(), serde_json::Value::from(ms));
        } else {
            obj.insert(name.to_string(), v);
        }
    }
    obj.insert("keys".into(), keys.into());
    if !attrs.is_empty() {
        obj.insert("attributes".into(), attrs.into());
    }
    parse_record(index, &serde_json::Value::Object(obj).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{"record_id":"r1","source":"payment-core","kind":"payment","keys":{"order_no":"O1"},"amount":"100.5","currency":"USD","event_time":"2026-11-22T10:00:00Z"}"#;

    /// `n` records `r0`, `r1`, ...; those `bad` picks have an amount with too many decimals.
    fn ndjson_lines(n: usize, bad: impl Fn(usize) -> bool) -> Vec<String> {
        (0..n)
            .map(|i| {
                let amount = if bad(i) { "1.001" } else { "1.00" };
                GOOD.replace("\"r1\"", &format!("\"r{i}\""))
                    .replace("\"100.5\"", &format!("\"{amount}\""))
            })
            .collect()
    }

    fn err_of(json: &str) -> String {
        parse_record(0, json).expect_err(json).message
    }

    #[test]
    fn accepts_a_valid_record() {
        let r = parse_record(0, GOOD).unwrap();
        assert_eq!(r.amount.minor, 10050);
        assert_eq!(r.keys["order_no"], "O1");
        let wire = WireRecord::from(&r);
        assert_eq!(wire.amount, "100.50");
        assert_eq!(wire.event_time, "2026-11-22T10:00:00.000Z");
    }

    #[test]
    fn explains_each_bad_record() {
        let cases = [
            (GOOD.replace("\"100.5\"", "100.5"), "not a JSON number"),
            (
                GOOD.replace("\"100.5\"", "\"100.505\""),
                "more decimals than USD allows",
            ),
            (GOOD.replace("USD", "XXY"), "unknown currency"),
            (
                GOOD.replace(r#""keys":{"order_no":"O1"},"#, ""),
                "`keys` must name",
            ),
            (
                GOOD.replace(r#""record_id":"r1","#, ""),
                "missing field `record_id`",
            ),
            (
                GOOD.replace("2026-11-22T10:00:00Z", "yesterday"),
                "not RFC 3339",
            ),
            (GOOD.replace("\"kind\"", "\"knid\""), "unknown field `knid`"),
            (GOOD.replace("\"payment-core\"", "7"), "invalid type"),
            (GOOD.replace("\"O1\"", "\"\""), "must not be empty"),
            (
                GOOD.replace("\"100.5\"", "true"),
                "expected a decimal string",
            ),
            (
                GOOD.replace("\"2026-11-22T10:00:00Z\"", "1.5"),
                "expected RFC 3339 text or epoch milliseconds",
            ),
            (
                GOOD.replace("\"O1\"", "{}"),
                "expected a string, number or boolean",
            ),
        ];
        for (json, fragment) in cases {
            let msg = err_of(&json);
            assert!(
                msg.contains(fragment),
                "{json}\n => {msg}\n lacks {fragment}"
            );
        }
    }

    #[test]
    fn splits_arrays_and_ndjson() {
        let arr = format!("[{GOOD}, {}]", GOOD.replace("100.5", "1.001"));
        let parsed = parse_body(arr.as_bytes(), 10).unwrap();
        assert!(parsed[0].is_ok());
        let bad = parsed[1].as_ref().unwrap_err();
        assert_eq!((bad.index, bad.record_id.as_deref()), (1, Some("r1")));

        let nd = format!("{GOOD}\n\n{GOOD}\n");
        assert_eq!(parse_body(nd.as_bytes(), 10).unwrap().len(), 2);
        assert_eq!(
            parse_body(nd.as_bytes(), 1),
            Err(BodyError::TooManyRecords { max: 1, got: 2 })
        );
        assert!(matches!(
            parse_body(b"[{\"a\":", 10),
            Err(BodyError::Malformed(_))
        ));
        assert_eq!(parse_body(b"  ", 10), Err(BodyError::Empty));
        let nd_bad = parse_body(b"{not json}\n", 10).unwrap();
        assert!(nd_bad[0]
            .as_ref()
            .unwrap_err()
            .message
            .contains("malformed JSON"));
    }

    #[test]
    fn a_stream_parses_in_blocks_what_the_whole_text_would_give() {
        /// Hands out at most 999 bytes per read, so blocks end mid-line.
        struct Trickle(std::io::Cursor<Vec<u8>>);
        impl std::io::Read for Trickle {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                let n = buf.len().min(999);
                self.0.read(&mut buf[..n])
            }
        }
        // Blank lines, and no line end after the last record.
        let text = ndjson_lines(60_000, |i| i % 1013 == 7).join("\n\n");
        assert!(
            text.len() > 2 * NDJSON_BLOCK_BYTES,
            "the text spans several blocks"
        );
        let (want_records, want_errors) = parse_ndjson(&text, 1);
        let (mut records, mut errors, mut bytes, mut blocks) = (Vec::new(), Vec::new(), 0, 0);
        for block in parse_ndjson_stream(Trickle(std::io::Cursor::new(text.clone().into_bytes()))) {
            let block = block.unwrap();
            records.extend(block.records);
            errors.extend(block.errors);
            bytes += block.bytes;
            blocks += 1;
        }
        assert!(blocks >= 3, "{blocks} blocks");
        assert_eq!(bytes, text.len() as u64);
        assert_eq!(records, want_records);
        let index = |e: &[RecordError]| {
            e.iter()
                .map(|e| (e.index, e.record_id.clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(index(&errors), index(&want_errors));
        assert_eq!(errors.len(), (0..60_000).filter(|i| i % 1013 == 7).count());

        // Not UTF-8, and a line longer than any record can be: an error ends the stream.
        let mut bad = format!("{GOOD}\n").into_bytes();
        bad.extend_from_slice(b"\xff\xfe\n");
        let last = parse_ndjson_stream(std::io::Cursor::new(bad))
            .last()
            .unwrap();
        assert!(last.unwrap_err().to_string().contains("not UTF-8"));
        let long = vec![b'x'; NDJSON_BLOCK_BYTES + 1];
        let last = parse_ndjson_stream(std::io::Cursor::new(long))
            .last()
            .unwrap();
        assert!(last.unwrap_err().to_string().contains("longer than"));
    }

    #[test]
    fn parses_ndjson_in_parallel_in_file_order() {
        let text = ndjson_lines(1000, |i| i % 97 == 5).join("\n\n");
        for threads in [1, 2, 3, 7] {
            let (records, errors) = parse_ndjson(&text, threads);
            let ids: Vec<usize> = records
                .iter()
                .map(|r| r.record_id[1..].parse().unwrap())
                .collect();
            let expected: Vec<usize> = (0..1000).filter(|i| i % 97 != 5).collect();
            assert_eq!(ids, expected, "{threads} threads");
            let bad: Vec<usize> = errors.iter().map(|e| e.index).collect();
            assert_eq!(bad, (0..1000).filter(|i| i % 97 == 5).collect::<Vec<_>>());
        }
        assert_eq!(parse_ndjson("", 2).0.len(), 0);
        assert_eq!(parse_ndjson(GOOD, 7).0.len(), 1, "more threads than lines");
        let short = format!("{GOOD}\né");
        assert_eq!(
            parse_ndjson(&short, 64).1.len(),
            1,
            "chunks cut only at line ends"
        );
    }

    #[test]
    fn reads_csv_rows() {
        let header = [
            "record_id",
            "source",
            "kind",
            "key.order_no",
            "amount",
            "currency",
            "event_time",
            "attr.channel",
        ];
        let row = [
            "r1",
            "billing",
            "bill",
            "O1",
            "12.5",
            "EUR",
            "1700000000000",
            "app",
        ];
        let r = record_from_csv(0, &header, &row).unwrap();
        assert_eq!((r.amount.minor, r.event_time), (1250, 1_700_000_000_000));
        assert_eq!(r.attributes["channel"], "app");
    }

    proptest::proptest! {
        /// Any bytes at all: an answer, never a panic.
        #[test]
        fn arbitrary_bodies_never_panic(body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let _ = parse_body(&body, 100);
        }

        /// Valid records with one field replaced by random JSON text: each is either
        /// accepted or refused with a message, never a panic.
        #[test]
        fn mangled_records_are_answered(field in 0usize..8, junk in "[ -~]{0,24}") {
            let names = ["record_id", "source", "kind", "keys", "amount", "currency", "event_time", "attributes"];
            let mut v: serde_json::Value = serde_json::from_str(GOOD).unwrap();
            v[names[field]] = serde_json::from_str(&junk).unwrap_or(serde_json::Value::String(junk.clone()));
            match parse_record(0, &v.to_string()) {
                Ok(r) => proptest::prop_assert!(!r.record_id.is_empty()),
                Err(e) => proptest::prop_assert!(!e.message.is_empty()),
            }
        }
    }
}
