//! Network data: Nginx JSON access logs, posted (`POST /v1/nginx`) or tailed from files
//! (`[chain] nginx_logs`), and NetFlow v9 / IPFIX over UDP (`[chain] netflow_listen`).
//!
//! Tailing follows a file across rotation: when the path names a new file (rename and
//! create) the old one is read to its end first; when the file shrinks (copytruncate) it
//! is read from the start. The position (`DATA_DIR/chain/tail/<hash>.pos`: inode and
//! offset) is saved after the lines it covers are durable, so a restart goes on where the
//! last one stopped; a crash between the two can repeat those lines once (at least once,
//! never lost).

use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use sha2::Digest;
use steadfast_chain::nginx::{self, LINE_BYTES_MAX};
use steadfast_chain::Rows;

use crate::api::{ApiError, Shared};
use crate::chain_api::store_rows;

/// How often tailed files are read.
const TAIL_EVERY_MS: u64 = 250;
/// Bytes read from a tailed file per round at most.
const TAIL_CHUNK_BYTES: usize = 4 * 1024 * 1024;

/// Nginx access-log lines (NDJSON, the documented `log_format`). Lines that cannot be read
/// are refused on their own and listed; the rest are stored.
#[utoipa::path(post, path = "/v1/nginx", request_body(content = String, content_type = "application/x-ndjson"),
    responses((status = 200, description = "stored; refused lines listed"), (status = 400, body = crate::api::ErrorBody), (status = 503, body = crate::api::ErrorBody)),
    security(("token" = [])))]
pub async fn ingest(State(s): State<Shared>, body: Bytes) -> Result<Response, ApiError> {
    let text = String::from_utf8(body.to_vec())
        .map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "bad_body", "the body is not UTF-8"))?;
    let parsed = tokio::task::spawn_blocking(move || nginx::parse_lines(&text))
        .await
        .map_err(|e| ApiError::internal("the parsing task failed", e))?;
    if parsed.rows.is_empty() && parsed.rejected > 0 {
        let mut e = ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_lines",
            format!(
                "none of the {} lines is an access-log line; first: line {}: {}",
                parsed.rejected, parsed.errors[0].0, parsed.errors[0].1
            ),
        );
        e.body.message += " (see docs/specs/chain.md for the log_format)";
        return Err(e);
    }
    let accepted = parsed.rows.len();
    store_rows(
        &s,
        Rows {
            access: parsed.rows,
            ..Default::default()
        },
    )
    .await?;
    Ok(Json(json!({
        "accepted": accepted,
        "rejected": parsed.rejected,
        "errors": parsed.errors.iter().map(|(l, m)| json!({"line": l, "message": m})).collect::<Vec<_>>(),
    }))
    .into_response())
}

/// Complete lines of `buf` (up to its last newline) and how many bytes they take. A line
/// longer than the limit is skipped (counted); a partial last line waits for its end,
/// unless it is already past the limit.
pub fn complete_lines(buf: &[u8]) -> (Vec<&str>, usize, usize) {
    let mut lines = Vec::new();
    let mut skipped = 0;
    let mut start = 0;
    while let Some(nl) = buf[start..].iter().position(|&b| b == b'\n') {
        let line = &buf[start..start + nl];
        match std::str::from_utf8(line) {
            Ok(l) if line.len() <= LINE_BYTES_MAX => {
                if !l.trim().is_empty() {
                    lines.push(l);
                }
            }
            _ => skipped += 1,
        }
        start += nl + 1;
    }
    if buf.len() - start > LINE_BYTES_MAX {
        // A line with no end in sight: drop it rather than hold the file.
        skipped += 1;
        start = buf.len();
    }
    (lines, start, skipped)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Position {
    inode: u64,
    offset: u64,
}

fn position_path(s: &Shared, file: &Path) -> PathBuf {
    let hash = hex_of(&sha2::Sha256::digest(file.to_string_lossy().as_bytes())[..8]);
    s.cfg
        .data_dir
        .join("chain")
        .join("tail")
        .join(format!("{hash}.pos"))
}

fn hex_of(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn load_position(path: &Path) -> Option<Position> {
    let t = std::fs::read_to_string(path).ok()?;
    let mut it = t.split_whitespace();
    Some(Position {
        inode: it.next()?.parse().ok()?,
        offset: it.next()?.parse().ok()?,
    })
}

fn save_position(path: &Path, p: Position) -> std::io::Result<()> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d)?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{} {}\n", p.inode, p.offset))?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// One tailed file: the open file being read and where.
struct Tailer {
    path: PathBuf,
    pos_path: PathBuf,
    file: Option<(std::fs::File, Position)>,
}

impl Tailer {
    /// Reads what is new: from the open file to its end, then (after a rotation) from
    /// the file the path names now. Returns the bytes read and the position after them.
    fn read_some(&mut self) -> std::io::Result<Option<(Vec<u8>, Position)>> {
        let current = match std::fs::metadata(&self.path) {
            Ok(m) => Some(m.ino()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        if self.file.is_none() {
            let Some(ino) = current else { return Ok(None) };
            let f = std::fs::File::open(&self.path)?;
            let saved = load_position(&self.pos_path).filter(|p| p.inode == ino);
            let pos = saved.unwrap_or(Position {
                inode: ino,
                offset: 0,
            });
            self.file = Some((f, pos));
        }
        let (f, pos) = self.file.as_mut().expect("opened above");
        let len = f.metadata()?.len();
        if len < pos.offset {
            // Truncated in place: the new content starts at 0.
            pos.offset = 0;
        }
        let mut buf = Vec::new();
        f.seek(SeekFrom::Start(pos.offset))?;
        f.take(TAIL_CHUNK_BYTES as u64).read_to_end(&mut buf)?;
        if buf.is_empty() && current.is_some_and(|ino| ino != pos.inode) {
            // The old file is read to its end and the path names a new one.
            self.file = None;
            return self.read_some();
        }
        Ok(Some((buf, *pos)))
    }
}

/// Tails one file until `stop`.
pub async fn tail(s: Shared, path: PathBuf, mut stop: tokio::sync::watch::Receiver<bool>) {
    let pos_path = position_path(&s, &path);
    let mut t = Tailer {
        path: path.clone(),
        pos_path,
        file: None,
    };
    let mut warned = false;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(TAIL_EVERY_MS)) => {}
            _ = stop.changed() => return,
        }
        loop {
            let (back, read) = match tokio::task::spawn_blocking(move || {
                let r = t.read_some();
                (t, r)
            })
            .await
            {
                Ok(x) => x,
                Err(e) => {
                    tracing::error!(file = %path.display(), error = %e, "the tail task failed");
                    return;
                }
            };
            t = back;
            let (buf, pos) = match read {
                Ok(Some(x)) => x,
                Ok(None) => break,
                Err(e) => {
                    if !warned {
                        tracing::warn!(file = %path.display(), error = %e, "an Nginx log cannot be read");
                        warned = true;
                    }
                    t.file = None;
                    break;
                }
            };
            warned = false;
            let (lines, used, skipped) = complete_lines(&buf);
            if used == 0 {
                break;
            }
            let mut rows = Vec::with_capacity(lines.len());
            let mut bad = skipped;
            for l in lines {
                match nginx::parse_line(l) {
                    Ok(r) => rows.push(r),
                    Err(_) => bad += 1,
                }
            }
            if bad > 0 {
                s.metrics.chain_lines_refused.inc_by(bad as u64);
            }
            let stored = store_rows(
                &s,
                Rows {
                    access: rows,
                    ..Default::default()
                },
            )
            .await;
            if let Err(e) = stored {
                // Not durable: the position stays, the lines are read again next round.
                tracing::warn!(file = %path.display(), error = ?e.body.message, "Nginx lines not stored yet");
                t.file = None;
                break;
            }
            let next = Position {
                inode: pos.inode,
                offset: pos.offset + used as u64,
            };
            if let Some((_, p)) = t.file.as_mut() {
                *p = next;
            }
            if let Err(e) = save_position(&t.pos_path, next) {
                tracing::warn!(file = %path.display(), error = %e, "the tail position could not be saved");
            }
            if buf.len() < TAIL_CHUNK_BYTES {
                break;
            }
        }
    }
}

/// Flows gathered before they are stored, at most; and how long they wait at most.
const FLOW_BATCH_MAX: usize = 10_000;
const FLOW_BATCH_MS: u64 = 200;

/// Collects NetFlow v9 and IPFIX on `socket` until `stop`. Datagrams from addresses not in
/// `[chain] netflow_exporters` are dropped (UDP carries no credentials).
pub async fn collect_flows(
    s: Shared,
    socket: tokio::net::UdpSocket,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut collector = steadfast_chain::netflow::Collector::default();
    let mut buf = vec![0u8; steadfast_chain::netflow::DATAGRAM_BYTES_MAX];
    let mut batch: Vec<steadfast_chain::flow::FlowRow> = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(FLOW_BATCH_MS));
    loop {
        let flush = tokio::select! {
            r = socket.recv_from(&mut buf) => {
                match r {
                    Ok((n, from)) => {
                        if !s.cfg.chain.netflow_exporters.contains(&from.ip()) {
                            s.metrics.chain_flows_refused.inc();
                            continue;
                        }
                        let d = collector.decode(from, &buf[..n]);
                        if let Some(e) = &d.error {
                            tracing::debug!(exporter = %from, error = %e, "a flow datagram was not fully read");
                            s.metrics.chain_flows_refused.inc();
                        }
                        batch.extend(d.flows);
                        batch.len() >= FLOW_BATCH_MAX
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "the flow collector could not receive");
                        false
                    }
                }
            }
            _ = tick.tick() => !batch.is_empty(),
            _ = stop.changed() => {
                store_flows(&s, std::mem::take(&mut batch)).await;
                return;
            }
        };
        if flush {
            store_flows(&s, std::mem::take(&mut batch)).await;
        }
    }
}

async fn store_flows(s: &Shared, flows: Vec<steadfast_chain::flow::FlowRow>) {
    if flows.is_empty() {
        return;
    }
    let n = flows.len() as u64;
    let rows = Rows {
        flows,
        ..Default::default()
    };
    if let Err(e) = store_rows(s, rows).await {
        // UDP cannot be asked to resend: the flows are counted as lost.
        s.metrics.chain_flows_refused.inc_by(n);
        tracing::warn!(error = ?e.body.message, flows = n, "flows were not stored");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_complete_lines_are_taken_and_overlong_ones_skipped() {
        let (lines, used, skipped) = complete_lines(b"a\nb\n\npartial");
        assert_eq!((lines, used, skipped), (vec!["a", "b"], 5, 0));
        let long = vec![b'x'; LINE_BYTES_MAX + 1];
        let mut buf = long.clone();
        buf.extend_from_slice(b"\nok\n");
        let (lines, used, skipped) = complete_lines(&buf);
        assert_eq!((lines, used, skipped), (vec!["ok"], buf.len(), 1));
        let (lines, used, skipped) = complete_lines(&long);
        assert_eq!((lines.len(), used, skipped), (0, long.len(), 1));
    }
}
