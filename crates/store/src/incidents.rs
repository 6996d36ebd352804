//! Incidents and their notification outbox (`DATA_DIR/incidents.db`, SQLite).
//!
//! The detectors' state lives in memory and is rebuilt from live telemetry after a
//! restart; what a person relies on afterwards is stored here: each incident as the
//! server last described it (a JSON body, replaced on every change), and a notice per
//! incident event waiting for its webhook delivery (at least once, retried with backoff).

use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension};
use steadfast_model::Millis;

#[derive(Debug, thiserror::Error)]
pub enum IncidentError {
    #[error("incident store: {0}")]
    Sql(#[from] rusqlite::Error),
}

/// Most incidents one listing returns.
pub const INCIDENT_PAGE_MAX: usize = 500;
/// Notices kept waiting at most; past it the oldest are dropped (and counted by the caller),
/// so a webhook that is down for a week cannot fill the disk.
pub const NOTICES_MAX: usize = 100_000;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    pub id: i64,
    pub incident: u64,
    pub event: String,
    pub attempts: u32,
}

pub struct IncidentStore {
    conn: Connection,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS incidents (
  id INTEGER PRIMARY KEY, state TEXT NOT NULL, opened_at INTEGER NOT NULL,
  updated_at INTEGER NOT NULL, body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS incidents_state ON incidents(state, id);
CREATE TABLE IF NOT EXISTS notices (
  id INTEGER PRIMARY KEY AUTOINCREMENT, incident INTEGER NOT NULL, event TEXT NOT NULL,
  attempts INTEGER NOT NULL DEFAULT 0, next_at INTEGER NOT NULL
);
";

impl IncidentStore {
    pub fn open(path: &Path) -> Result<IncidentStore, IncidentError> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.execute_batch(SCHEMA)?;
        Ok(IncidentStore { conn })
    }

    /// Stores the incident's current description and, for each event, a notice to
    /// deliver, in one transaction.
    pub fn put(
        &mut self,
        id: u64,
        state: &str,
        opened_at: Millis,
        body: &str,
        events: &[&str],
        now: Millis,
    ) -> Result<usize, IncidentError> {
        let tx = self.conn.transaction()?;
        tx.execute(
            "INSERT INTO incidents (id, state, opened_at, updated_at, body) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT(id) DO UPDATE SET state = ?2, updated_at = ?4, body = ?5",
            params![id as i64, state, opened_at, now, body],
        )?;
        for event in events {
            tx.execute(
                "INSERT INTO notices (incident, event, next_at) VALUES (?1, ?2, ?3)",
                params![id as i64, event, now],
            )?;
        }
        let waiting: i64 = tx.query_row("SELECT COUNT(*) FROM notices", [], |r| r.get(0))?;
        let dropped = (waiting as usize).saturating_sub(NOTICES_MAX);
        if dropped > 0 {
            tx.execute(
                "DELETE FROM notices WHERE id IN (SELECT id FROM notices ORDER BY id LIMIT ?1)",
                params![dropped as i64],
            )?;
        }
        tx.commit()?;
        Ok(dropped)
    }

    /// Incident bodies, newest first.
    pub fn list(&self, state: Option<&str>, limit: usize) -> Result<Vec<String>, IncidentError> {
        let limit = limit.min(INCIDENT_PAGE_MAX) as i64;
        let mut stmt = self.conn.prepare(
            "SELECT body FROM incidents WHERE (?1 IS NULL OR state = ?1) ORDER BY id DESC LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![state, limit], |r| r.get::<_, String>(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn get(&self, id: u64) -> Result<Option<String>, IncidentError> {
        Ok(self
            .conn
            .query_row(
                "SELECT body FROM incidents WHERE id = ?1",
                params![id as i64],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// The highest incident id stored, so ids continue after a restart.
    pub fn max_id(&self) -> Result<u64, IncidentError> {
        Ok(self
            .conn
            .query_row("SELECT COALESCE(MAX(id), 0) FROM incidents", [], |r| {
                r.get::<_, i64>(0)
            })? as u64)
    }

    /// Marks incidents left firing by a previous run as interrupted: their alerts' state
    /// was in memory, so nothing will resolve them.
    pub fn close_interrupted(&mut self, now: Millis) -> Result<Vec<(u64, String)>, IncidentError> {
        let mut stmt = self
            .conn
            .prepare("SELECT id, body FROM incidents WHERE state = 'firing'")?;
        let rows: Vec<(u64, String)> = stmt
            .query_map([], |r| {
                Ok((r.get::<_, i64>(0)? as u64, r.get::<_, String>(1)?))
            })?
            .collect::<Result<_, _>>()?;
        drop(stmt);
        self.conn.execute(
            "UPDATE incidents SET state = 'interrupted', updated_at = ?1 WHERE state = 'firing'",
            params![now],
        )?;
        Ok(rows)
    }

    pub fn notices_due(&self, now: Millis, limit: usize) -> Result<Vec<Notice>, IncidentError> {
        let mut stmt = self.conn.prepare(
            "SELECT id, incident, event, attempts FROM notices WHERE next_at <= ?1 ORDER BY id LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![now, limit as i64], |r| {
            Ok(Notice {
                id: r.get(0)?,
                incident: r.get::<_, i64>(1)? as u64,
                event: r.get(2)?,
                attempts: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn notices_len(&self) -> Result<u64, IncidentError> {
        Ok(self
            .conn
            .query_row("SELECT COUNT(*) FROM notices", [], |r| r.get::<_, i64>(0))?
            as u64)
    }

    pub fn notices_done(&mut self, ids: &[i64]) -> Result<(), IncidentError> {
        let tx = self.conn.transaction()?;
        for id in ids {
            tx.execute("DELETE FROM notices WHERE id = ?1", params![id])?;
        }
        tx.commit()?;
        Ok(())
    }

    pub fn notices_retry(&mut self, ids: &[i64], next_at: Millis) -> Result<(), IncidentError> {
        let tx = self.conn.transaction()?;
        for id in ids {
            tx.execute(
                "UPDATE notices SET attempts = attempts + 1, next_at = ?2 WHERE id = ?1",
                params![id, next_at],
            )?;
        }
        tx.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incidents_and_notices_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("incidents.db");
        {
            let mut s = IncidentStore::open(&path).unwrap();
            s.put(1, "firing", 10, "{\"id\":1}", &["incident_opened"], 10)
                .unwrap();
            s.put(1, "firing", 10, "{\"id\":1,\"alerts\":2}", &[], 20)
                .unwrap();
            s.put(
                2,
                "resolved",
                30,
                "{\"id\":2}",
                &["incident_opened", "incident_resolved"],
                30,
            )
            .unwrap();
        }
        let mut s = IncidentStore::open(&path).unwrap();
        assert_eq!(s.max_id().unwrap(), 2);
        assert_eq!(s.get(1).unwrap().unwrap(), "{\"id\":1,\"alerts\":2}");
        assert_eq!(s.list(Some("resolved"), 10).unwrap(), ["{\"id\":2}"]);
        let due = s.notices_due(100, 10).unwrap();
        assert_eq!(due.len(), 3);
        s.notices_retry(&[due[0].id], 1_000).unwrap();
        s.notices_done(&[due[1].id]).unwrap();
        let due = s.notices_due(100, 10).unwrap();
        assert_eq!(
            due.iter().map(|n| n.event.as_str()).collect::<Vec<_>>(),
            ["incident_resolved"]
        );
        assert_eq!(s.notices_due(1_000, 10).unwrap()[0].attempts, 1);
        let interrupted = s.close_interrupted(50).unwrap();
        assert_eq!(interrupted.len(), 1);
        assert!(s.list(Some("firing"), 10).unwrap().is_empty());
    }
}
