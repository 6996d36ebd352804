use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use steadfast_model::{FundRecord, Millis};

/// A segment is closed and a new one started past this size.
pub const SEGMENT_BYTES_MAX: u64 = 256 * 1024 * 1024;
/// Largest single entry; a bigger one is refused before it is written.
pub const ENTRY_BYTES_MAX: usize = 64 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("failed to {action} WAL {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("WAL entry of {0} bytes is larger than the {ENTRY_BYTES_MAX} allowed")]
    TooLarge(usize),
    #[error("WAL segment {path} is corrupt at offset {offset}: {reason}")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
}

/// What one WAL entry holds.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum WalItem {
    /// An ingest batch, with the engine time at which it was received.
    Batch(Vec<FundRecord>),
    /// A tick of engine time with no records.
    Tick,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct WalEntry {
    /// Strictly increasing from 1; a record's location is `seq << 20 | index`.
    pub seq: u64,
    /// Engine time of the entry (wall clock when the edge received it).
    pub at: Millis,
    pub item: WalItem,
}

/// An append-only log in numbered segment files. Frames are `len u32 | crc32 u32 |
/// postcard payload`; a torn frame at the tail (a crash mid-write) is cut off on open,
/// since it was never acknowledged.
pub struct Wal {
    dir: PathBuf,
    file: File,
    segment_bytes: u64,
    next_seq: u64,
    unsynced: bool,
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> WalError + 'a {
    move |source| WalError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

fn segment_name(first_seq: u64) -> String {
    format!("{first_seq:020}.wal")
}

/// Segment files in order, with the first sequence number each holds.
fn segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, WalError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err("list", dir))? {
        let path = entry.map_err(io_err("list", dir))?.path();
        let first = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".wal"))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(first) = first {
            out.push((first, path));
        }
    }
    out.sort();
    Ok(out)
}

/// Reads frames from one segment; stops at the first torn or corrupt frame and reports
/// its offset, so the caller can decide whether that is a tail to cut.
/// Entries with `seq <= skip_through` are checked but not decoded (a checkpoint covers
/// them); `last_seq` is the last sequence number read.
fn read_segment(
    path: &Path,
    skip_through: u64,
    last_seq: &mut u64,
    mut visit: impl FnMut(WalEntry),
) -> Result<(u64, Option<String>), WalError> {
    let file = File::open(path).map_err(io_err("open", path))?;
    let mut r = BufReader::with_capacity(1 << 20, file);
    let mut offset = 0u64;
    let mut head = [0u8; 8];
    let mut buf = Vec::new();
    loop {
        let mut got = 0;
        while got < head.len() {
            match r.read(&mut head[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(WalError::Io {
                        action: "read",
                        path: path.into(),
                        source: e,
                    })
                }
            }
        }
        match got {
            0 => return Ok((offset, None)),
            8 => {}
            _ => return Ok((offset, Some("frame header cut short".into()))),
        }
        let len = u32::from_le_bytes(head[..4].try_into().unwrap()) as usize;
        let crc = u32::from_le_bytes(head[4..].try_into().unwrap());
        if len > ENTRY_BYTES_MAX {
            return Ok((offset, Some(format!("frame length {len} out of range"))));
        }
        buf.resize(len, 0);
        if r.read_exact(&mut buf).is_err() {
            return Ok((offset, Some("frame cut short".into())));
        }
        if crc32fast::hash(&buf) != crc {
            // A whole frame with more data after it was not torn by a crash: it rotted.
            let file_len = r.get_ref().metadata().map(|m| m.len()).unwrap_or(0);
            if offset + 8 + (len as u64) < file_len {
                return Err(WalError::Corrupt {
                    path: path.into(),
                    offset,
                    reason: "checksum mismatch".into(),
                });
            }
            return Ok((offset, Some("checksum mismatch".into())));
        }
        // The sequence number leads the payload, so covered entries are skipped cheaply.
        match postcard::take_from_bytes::<u64>(&buf) {
            Ok((seq, _)) if seq <= skip_through => *last_seq = seq,
            _ => match postcard::from_bytes::<WalEntry>(&buf) {
                Ok(entry) => {
                    *last_seq = entry.seq;
                    visit(entry)
                }
                Err(e) => return Ok((offset, Some(format!("undecodable frame: {e}")))),
            },
        }
        offset += 8 + len as u64;
    }
}

impl Wal {
    /// Opens (or creates) the log in `dir`, replaying every entry with `seq > after` into
    /// `visit`. A torn tail of the last segment is truncated; damage anywhere else is an
    /// error, because acknowledged data would be missing.
    pub fn open(dir: &Path, after: u64, mut visit: impl FnMut(WalEntry)) -> Result<Wal, WalError> {
        fs::create_dir_all(dir).map_err(io_err("create", dir))?;
        let segs = segments(dir)?;
        let mut next_seq = 1;
        let count = segs.len();
        for (i, (first, path)) in segs.iter().enumerate() {
            // Skip whole segments that the checkpoint already covers.
            if let Some((next_first, _)) = segs.get(i + 1) {
                if *next_first <= after + 1 {
                    next_seq = *next_first;
                    continue;
                }
            }
            let _ = first;
            let mut last = 0;
            let (good, damage) = read_segment(path, after, &mut last, &mut visit)?;
            if last > 0 {
                next_seq = last + 1;
            }
            if let Some(reason) = damage {
                if i + 1 != count {
                    return Err(WalError::Corrupt {
                        path: path.clone(),
                        offset: good,
                        reason,
                    });
                }
                tracing::warn!(segment = %path.display(), offset = good, %reason, "cutting torn WAL tail");
                let f = OpenOptions::new()
                    .write(true)
                    .open(path)
                    .map_err(io_err("open", path))?;
                f.set_len(good).map_err(io_err("truncate", path))?;
                f.sync_all().map_err(io_err("sync", path))?;
            }
        }
        next_seq = next_seq.max(after + 1);
        let (file, segment_bytes) = match segs.last() {
            Some((_, path)) => {
                let f = OpenOptions::new()
                    .append(true)
                    .open(path)
                    .map_err(io_err("open", path))?;
                let len = f.metadata().map_err(io_err("stat", path))?.len();
                (f, len)
            }
            None => (Self::create_segment(dir, next_seq)?, 0),
        };
        Ok(Wal {
            dir: dir.to_path_buf(),
            file,
            segment_bytes,
            next_seq,
            unsynced: false,
        })
    }

    fn create_segment(dir: &Path, first_seq: u64) -> Result<File, WalError> {
        let path = dir.join(segment_name(first_seq));
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io_err("create", &path))?;
        // The new file's name must survive a crash too.
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err("sync", dir))?;
        Ok(f)
    }

    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Appends an entry (not yet durable) and returns its sequence number.
    pub fn append(&mut self, at: Millis, item: &WalItem) -> Result<u64, WalError> {
        /// Serializes exactly like [`WalEntry`] without taking the records.
        #[derive(Serialize)]
        struct EntryRef<'a> {
            seq: u64,
            at: Millis,
            item: &'a WalItem,
        }
        let seq = self.next_seq;
        let payload =
            postcard::to_allocvec(&EntryRef { seq, at, item }).expect("WAL entries serialize");
        if payload.len() > ENTRY_BYTES_MAX {
            return Err(WalError::TooLarge(payload.len()));
        }
        if self.segment_bytes > SEGMENT_BYTES_MAX {
            self.sync()?;
            self.file = Self::create_segment(&self.dir, seq)?;
            self.segment_bytes = 0;
        }
        let mut frame = Vec::with_capacity(payload.len() + 8);
        frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        frame.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        frame.extend_from_slice(&payload);
        self.file
            .write_all(&frame)
            .map_err(io_err("write", &self.dir))?;
        self.segment_bytes += frame.len() as u64;
        self.next_seq += 1;
        self.unsynced = true;
        Ok(seq)
    }

    /// Makes everything appended so far durable (one fdatasync for the whole group).
    pub fn sync(&mut self) -> Result<(), WalError> {
        if self.unsynced {
            self.file.sync_data().map_err(io_err("sync", &self.dir))?;
            self.unsynced = false;
        }
        Ok(())
    }

    /// Deletes segments whose entries are all at or below `seq` (covered by a checkpoint),
    /// except the newest `keep` of those, which stay for backtests (`steadfast verify`).
    pub fn remove_through(&mut self, seq: u64, keep: usize) -> Result<usize, WalError> {
        let segs = segments(&self.dir)?;
        let covered = segs.windows(2).filter(|w| w[1].0 <= seq + 1).count();
        let mut removed = 0;
        for w in segs.windows(2).take(covered.saturating_sub(keep)) {
            {
                fs::remove_file(&w[0].1).map_err(io_err("remove", &w[0].1))?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Reads every entry of a WAL directory (for backtests and inspection).
    pub fn read_all(dir: &Path, mut visit: impl FnMut(WalEntry)) -> Result<(), WalError> {
        for (_, path) in segments(dir)? {
            read_segment(&path, 0, &mut 0, &mut visit)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replays_after_a_position_and_cuts_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = Wal::open(dir.path(), 0, |_| panic!("empty")).unwrap();
        for t in 0..5 {
            wal.append(t, &WalItem::Tick).unwrap();
        }
        wal.sync().unwrap();
        drop(wal);
        // A torn frame: half a header.
        let seg = dir.path().join(segment_name(1));
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&[9, 0, 0]).unwrap();
        drop(f);
        let mut seen = Vec::new();
        let mut wal = Wal::open(dir.path(), 2, |e| seen.push(e.seq)).unwrap();
        assert_eq!(seen, [3, 4, 5]);
        assert_eq!(wal.append(9, &WalItem::Tick).unwrap(), 6);
        wal.sync().unwrap();
        let mut all = Vec::new();
        Wal::read_all(dir.path(), |e| all.push(e.seq)).unwrap();
        assert_eq!(all, [1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn checkpointed_segments_are_removed_but_the_newest_kept() {
        let dir = tempfile::tempdir().unwrap();
        for first in [1u64, 10, 20, 30] {
            let mut f = fs::File::create(dir.path().join(segment_name(first))).unwrap();
            f.write_all(b"").unwrap();
        }
        let mut wal = Wal::open(dir.path(), 0, |_| {}).unwrap();
        assert_eq!(
            wal.remove_through(25, 1).unwrap(),
            1,
            "segments 1 and 10 are covered; one is kept"
        );
        let left: Vec<u64> = segments(dir.path())
            .unwrap()
            .into_iter()
            .map(|s| s.0)
            .collect();
        assert_eq!(left, [10, 20, 30]);
        assert_eq!(wal.remove_through(35, 0).unwrap(), 2);
    }

    #[test]
    fn damage_before_the_tail_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = Wal::open(dir.path(), 0, |_| {}).unwrap();
        wal.append(1, &WalItem::Tick).unwrap();
        wal.sync().unwrap();
        drop(wal);
        let seg = dir.path().join(segment_name(1));
        let mut bytes = fs::read(&seg).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        fs::write(&seg, &bytes).unwrap();
        fs::write(dir.path().join(segment_name(2)), b"").unwrap();
        assert!(matches!(
            Wal::open(dir.path(), 0, |_| {}),
            Err(WalError::Corrupt { .. })
        ));
    }
}
