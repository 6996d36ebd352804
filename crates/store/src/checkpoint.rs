//! Engine checkpoints: the engine's serialized state at a WAL position.
//!
//! Written to a temporary file, synced, then renamed over the previous one, so a crash
//! leaves either the old or the new checkpoint, never half of one.

use std::fs;
use std::io::Write;
use std::path::Path;

const MAGIC: &[u8; 8] = b"SFCKPT01";

/// Writes a checkpoint of `state` covering the WAL through `seq`.
pub fn write(dir: &Path, seq: u64, rules_version: &str, state: &[u8]) -> std::io::Result<()> {
    fs::create_dir_all(dir)?;
    let tmp = dir.join("checkpoint.tmp");
    let mut f = fs::File::create(&tmp)?;
    let version = rules_version.as_bytes();
    f.write_all(MAGIC)?;
    f.write_all(&seq.to_le_bytes())?;
    f.write_all(&(version.len() as u32).to_le_bytes())?;
    f.write_all(version)?;
    f.write_all(&crc32fast::hash(state).to_le_bytes())?;
    f.write_all(state)?;
    f.sync_all()?;
    fs::rename(&tmp, dir.join("checkpoint"))?;
    fs::File::open(dir)?.sync_all()
}

/// A checkpoint read back: the WAL position it covers, the rule version it was taken
/// with, and the engine state.
pub struct Checkpoint {
    pub seq: u64,
    pub rules_version: String,
    pub state: Vec<u8>,
}

/// Reads the checkpoint in `dir`, if any. A damaged checkpoint is an error rather than
/// silently ignored: the WAL before it may already be gone.
pub fn read(dir: &Path) -> std::io::Result<Option<Checkpoint>> {
    let bytes = match fs::read(dir.join("checkpoint")) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let bad = |why: &str| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("checkpoint is damaged: {why}"),
        )
    };
    if bytes.len() < 24 || &bytes[..8] != MAGIC {
        return Err(bad("bad header"));
    }
    let seq = u64::from_le_bytes(bytes[8..16].try_into().unwrap());
    let vlen = u32::from_le_bytes(bytes[16..20].try_into().unwrap()) as usize;
    let rest = &bytes[20..];
    if rest.len() < vlen + 4 {
        return Err(bad("truncated"));
    }
    let rules_version = String::from_utf8_lossy(&rest[..vlen]).into_owned();
    let crc = u32::from_le_bytes(rest[vlen..vlen + 4].try_into().unwrap());
    let state = rest[vlen + 4..].to_vec();
    if crc32fast::hash(&state) != crc {
        return Err(bad("checksum mismatch"));
    }
    Ok(Some(Checkpoint {
        seq,
        rules_version,
        state,
    }))
}

#[cfg(test)]
mod tests {
    #[test]
    fn round_trips_and_detects_damage() {
        let dir = tempfile::tempdir().unwrap();
        assert!(super::read(dir.path()).unwrap().is_none());
        super::write(dir.path(), 42, "v1", b"state").unwrap();
        let c = super::read(dir.path()).unwrap().unwrap();
        assert_eq!(
            (c.seq, c.rules_version.as_str(), c.state.as_slice()),
            (42, "v1", &b"state"[..])
        );
        let path = dir.path().join("checkpoint");
        let mut bytes = std::fs::read(&path).unwrap();
        *bytes.last_mut().unwrap() ^= 1;
        std::fs::write(&path, bytes).unwrap();
        assert!(super::read(dir.path()).is_err());
    }
}
