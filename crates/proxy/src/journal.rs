//! The hit journal: every hit is appended (and synced to disk) before the tampered request
//! goes on, kept until the server acknowledges it, and replayed after a restart. Once
//! nothing is pending the file is emptied, so it stays as small as the unacknowledged
//! hits.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::Context;
use steadfast_drill::proxy::{ProxyHit, HITS_UNACKED_MAX};

pub(crate) struct Journal {
    path: PathBuf,
    inner: Mutex<Inner>,
}

struct Inner {
    file: File,
    pending: Vec<ProxyHit>,
}

impl Journal {
    pub fn open(path: &Path) -> anyhow::Result<Journal> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("failed to create {}", dir.display()))?;
        }
        let mut pending = Vec::new();
        if let Ok(f) = File::open(path) {
            for (n, line) in BufReader::new(f).lines().enumerate() {
                let line = line.with_context(|| format!("failed to read {}", path.display()))?;
                match serde_json::from_str::<ProxyHit>(&line) {
                    Ok(h) if pending.len() < HITS_UNACKED_MAX => pending.push(h),
                    Ok(_) => anyhow::bail!(
                        "{} holds more than {HITS_UNACKED_MAX} unacknowledged hits",
                        path.display()
                    ),
                    // A line torn by a crash mid-write is the last one; its request was
                    // never sent on, so nothing was tampered.
                    Err(_) => {
                        tracing::warn!(path = %path.display(), line = n + 1, "torn journal line skipped")
                    }
                }
            }
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("failed to open {}", path.display()))?;
        if !pending.is_empty() {
            tracing::info!(
                hits = pending.len(),
                "unacknowledged hits replayed from the journal"
            );
        }
        Ok(Journal {
            path: path.into(),
            inner: Mutex::new(Inner { file, pending }),
        })
    }

    /// Appends a hit durably. An error means the hit must not take effect.
    pub fn append(&self, hit: &ProxyHit) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(hit).expect("hits serialize");
        line.push(b'\n');
        let mut g = self.inner.lock().expect("journal lock");
        g.file.write_all(&line)?;
        g.file.sync_data()?;
        g.pending.push(hit.clone());
        Ok(())
    }

    /// Up to `n` pending hits, oldest first.
    pub fn peek(&self, n: usize) -> Vec<ProxyHit> {
        let g = self.inner.lock().expect("journal lock");
        g.pending.iter().take(n).cloned().collect()
    }

    pub fn pending_len(&self) -> usize {
        self.inner.lock().expect("journal lock").pending.len()
    }

    /// Forgets acknowledged hits; empties the file when none is left.
    pub fn acknowledge(&self, ids: &[String]) -> usize {
        let mut g = self.inner.lock().expect("journal lock");
        let before = g.pending.len();
        g.pending.retain(|h| !ids.contains(&h.id));
        let gone = before - g.pending.len();
        if g.pending.is_empty() && gone > 0 {
            if let Err(e) = g.file.set_len(0) {
                tracing::warn!(path = %self.path.display(), error = %e, "journal could not be emptied");
            }
        }
        gone
    }
}
