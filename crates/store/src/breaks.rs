use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};
use steadfast_model::Millis;
use steadfast_verify::{Break, Event};

/// Most breaks one query returns.
pub const PAGE_MAX: usize = 1000;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("break store: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("break {0} does not exist")]
    NotFound(u64),
    #[error("break {id} is {from}; it cannot become {to}")]
    BadTransition { id: u64, from: Status, to: Status },
}

/// The workflow of a break: open → acknowledged → resolved (or open → resolved).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Open,
    Acknowledged,
    Resolved,
}

impl Status {
    pub fn as_str(&self) -> &'static str {
        match self {
            Status::Open => "open",
            Status::Acknowledged => "acknowledged",
            Status::Resolved => "resolved",
        }
    }

    pub fn parse(text: &str) -> Option<Status> {
        [Status::Open, Status::Acknowledged, Status::Resolved]
            .into_iter()
            .find(|s| s.as_str() == text)
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A stored break with its workflow state.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct BreakRow {
    #[serde(flatten)]
    pub brk: Break,
    pub status: Status,
    pub owner: Option<String>,
    /// Wall-clock time the break was stored (detection as the user sees it).
    pub detected_at: Millis,
    pub status_at: Millis,
    pub status_by: Option<String>,
    pub status_reason: Option<String>,
    /// The record whose arrival resolved the break automatically, if any.
    pub resolved_by_record: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct HistoryRow {
    pub at: Millis,
    pub actor: String,
    pub from: Option<Status>,
    pub to: Status,
    pub reason: Option<String>,
}

#[derive(Clone, Debug, Default)]
pub struct BreakFilter {
    pub rule: Option<String>,
    pub link: Option<String>,
    /// Only breaks of these rules (the caller's scope); `None`: every rule.
    pub rules_in: Option<Vec<String>>,
    pub kind: Option<String>,
    pub status: Option<Status>,
    pub owner: Option<String>,
    /// Only breaks emitted at or after / before these times.
    pub since: Option<Millis>,
    pub until: Option<Millis>,
    /// Only breaks detected at or after this time.
    pub detected_since: Option<Millis>,
    /// Only breaks detected at least this long before `now`.
    pub min_age_ms: Option<(Millis, Millis)>,
    /// `None`: production breaks only; `Some(None)`: all; `Some(Some(d))`: drill `d` only.
    pub drill: Option<Option<String>>,
    /// Breaks with ids above this (cursor paging).
    pub after_id: Option<u64>,
    /// The newest `limit` first instead of the oldest (a screen of the latest breaks).
    pub newest_first: bool,
    pub limit: usize,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboxItem {
    pub id: i64,
    pub break_id: u64,
    pub attempts: u32,
}

pub struct BreakStore {
    conn: Connection,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS breaks (
  id INTEGER PRIMARY KEY,
  rule TEXT NOT NULL, link TEXT, kind TEXT NOT NULL, key TEXT NOT NULL, drill TEXT,
  emitted_at INTEGER NOT NULL, detected_at INTEGER NOT NULL,
  status TEXT NOT NULL, owner TEXT, status_at INTEGER NOT NULL, status_by TEXT, status_reason TEXT,
  resolved_by_record TEXT,
  body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS breaks_rule ON breaks(rule, id);
CREATE INDEX IF NOT EXISTS breaks_status ON breaks(status, id);
CREATE TABLE IF NOT EXISTS history (
  break_id INTEGER NOT NULL, at INTEGER NOT NULL, actor TEXT NOT NULL,
  from_status TEXT, to_status TEXT NOT NULL, reason TEXT
);
CREATE INDEX IF NOT EXISTS history_break ON history(break_id);
CREATE TABLE IF NOT EXISTS outbox (
  id INTEGER PRIMARY KEY AUTOINCREMENT, break_id INTEGER NOT NULL,
  attempts INTEGER NOT NULL DEFAULT 0, next_at INTEGER NOT NULL
);
";

fn row_to_break(row: &rusqlite::Row<'_>) -> rusqlite::Result<BreakRow> {
    let body: String = row.get("body")?;
    let brk: Break = serde_json::from_str(&body).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })?;
    let status: String = row.get("status")?;
    Ok(BreakRow {
        brk,
        status: Status::parse(&status).unwrap_or(Status::Open),
        owner: row.get("owner")?,
        detected_at: row.get("detected_at")?,
        status_at: row.get("status_at")?,
        status_by: row.get("status_by")?,
        status_reason: row.get("status_reason")?,
        resolved_by_record: row.get("resolved_by_record")?,
    })
}

impl BreakStore {
    pub fn open(path: &Path) -> Result<BreakStore, StoreError> {
        let conn = Connection::open(path)?;
        // WAL journaling with full sync: a committed transaction survives power loss.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.execute_batch(SCHEMA)?;
        Ok(BreakStore { conn })
    }

    /// Stores engine events in one transaction. Replaying the same events again (after a
    /// restart from an older checkpoint) changes nothing: breaks are keyed by their
    /// deterministic id. New production breaks get a webhook outbox entry when `notify`.
    /// Returns the breaks that were new.
    pub fn apply(
        &mut self,
        events: &[Event],
        detected_at: Millis,
        notify: bool,
    ) -> Result<Vec<u64>, StoreError> {
        let tx = self.conn.transaction()?;
        let mut fresh = Vec::new();
        for event in events {
            match event {
                Event::Break(b) => {
                    let body = serde_json::to_string(b).expect("breaks serialize");
                    let n = tx.execute(
                        "INSERT OR IGNORE INTO breaks (id, rule, link, kind, key, drill, emitted_at, detected_at, status, status_at, body)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 'open', ?8, ?9)",
                        params![b.id as i64, b.rule, b.link, b.kind.as_str(), b.key, b.drill, b.emitted_at, detected_at, body],
                    )?;
                    if n == 1 {
                        fresh.push(b.id);
                        tx.execute(
                            "INSERT INTO history (break_id, at, actor, from_status, to_status, reason) VALUES (?1, ?2, 'engine', NULL, 'open', ?3)",
                            params![b.id as i64, detected_at, b.message],
                        )?;
                        if notify && b.drill.is_none() {
                            tx.execute(
                                "INSERT INTO outbox (break_id, next_at) VALUES (?1, 0)",
                                params![b.id as i64],
                            )?;
                        }
                    }
                }
                Event::Resolved {
                    break_id,
                    by_record,
                    reason,
                    ..
                } => {
                    let from: Option<String> = tx
                        .query_row(
                            "SELECT status FROM breaks WHERE id = ?1",
                            params![*break_id as i64],
                            |r| r.get(0),
                        )
                        .optional()?;
                    if let Some(from) = from.filter(|s| s != "resolved") {
                        tx.execute(
                            "UPDATE breaks SET status = 'resolved', status_at = ?2, status_by = 'engine', status_reason = ?3, resolved_by_record = ?4 WHERE id = ?1",
                            params![*break_id as i64, detected_at, reason, by_record],
                        )?;
                        tx.execute(
                            "INSERT INTO history (break_id, at, actor, from_status, to_status, reason) VALUES (?1, ?2, 'engine', ?3, 'resolved', ?4)",
                            params![*break_id as i64, detected_at, from, reason],
                        )?;
                    }
                }
            }
        }
        tx.commit()?;
        Ok(fresh)
    }

    pub fn get(&self, id: u64) -> Result<Option<BreakRow>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT * FROM breaks WHERE id = ?1",
                params![id as i64],
                row_to_break,
            )
            .optional()?)
    }

    pub fn list(&self, f: &BreakFilter) -> Result<Vec<BreakRow>, StoreError> {
        let mut sql = String::from("SELECT * FROM breaks WHERE id > ?1");
        let mut args: Vec<rusqlite::types::Value> = vec![(f.after_id.unwrap_or(0) as i64).into()];
        let mut add_with = |clause: &str, v: rusqlite::types::Value, close: &str| {
            args.push(v);
            sql.push_str(&format!(" AND {clause} ?{}{close}", args.len()));
        };
        if let Some(rules) = &f.rules_in {
            let list = serde_json::to_string(rules).expect("rule names serialize");
            add_with("rule IN (SELECT value FROM json_each(", list.into(), "))");
        }
        let mut add = |clause: &str, v: rusqlite::types::Value| add_with(clause, v, "");
        if let Some(v) = &f.rule {
            add("rule =", v.clone().into());
        }
        if let Some(v) = &f.link {
            add("link =", v.clone().into());
        }
        if let Some(v) = &f.kind {
            add("kind =", v.clone().into());
        }
        if let Some(v) = f.status {
            add("status =", v.as_str().to_string().into());
        }
        if let Some(v) = &f.owner {
            add("owner =", v.clone().into());
        }
        if let Some(v) = f.since {
            add("emitted_at >=", v.into());
        }
        if let Some(v) = f.until {
            add("emitted_at <", v.into());
        }
        if let Some(v) = f.detected_since {
            add("detected_at >=", v.into());
        }
        if let Some((now, age)) = f.min_age_ms {
            add("detected_at <=", (now - age).into());
        }
        match &f.drill {
            None => sql.push_str(" AND drill IS NULL"),
            Some(None) => {}
            Some(Some(d)) => add("drill =", d.clone().into()),
        }
        let limit = f.limit.clamp(1, PAGE_MAX);
        let order = if f.newest_first { "DESC" } else { "ASC" };
        sql.push_str(&format!(" ORDER BY id {order} LIMIT {limit}"));
        let mut stmt = self.conn.prepare(&sql)?;
        let rows = stmt.query_map(rusqlite::params_from_iter(args), row_to_break)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn history(&self, id: u64) -> Result<Vec<HistoryRow>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT at, actor, from_status, to_status, reason FROM history WHERE break_id = ?1 ORDER BY rowid",
        )?;
        let rows = stmt.query_map(params![id as i64], |r| {
            let from: Option<String> = r.get(2)?;
            let to: String = r.get(3)?;
            Ok(HistoryRow {
                at: r.get(0)?,
                actor: r.get(1)?,
                from: from.as_deref().and_then(Status::parse),
                to: Status::parse(&to).unwrap_or(Status::Open),
                reason: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Moves a break through its workflow, recording who and why. Setting only the owner
    /// keeps the status.
    pub fn transition(
        &mut self,
        id: u64,
        to: Option<Status>,
        owner: Option<&str>,
        actor: &str,
        reason: Option<&str>,
        now: Millis,
    ) -> Result<BreakRow, StoreError> {
        let tx = self.conn.transaction()?;
        let current: Option<String> = tx
            .query_row(
                "SELECT status FROM breaks WHERE id = ?1",
                params![id as i64],
                |r| r.get(0),
            )
            .optional()?;
        let from = current
            .as_deref()
            .and_then(Status::parse)
            .ok_or(StoreError::NotFound(id))?;
        if let Some(owner) = owner {
            tx.execute(
                "UPDATE breaks SET owner = ?2 WHERE id = ?1",
                params![id as i64, owner],
            )?;
        }
        if let Some(to) = to {
            let allowed = matches!(
                (from, to),
                (Status::Open, Status::Acknowledged)
                    | (Status::Open, Status::Resolved)
                    | (Status::Acknowledged, Status::Resolved)
            );
            if !allowed {
                return Err(StoreError::BadTransition { id, from, to });
            }
            tx.execute(
                "UPDATE breaks SET status = ?2, status_at = ?3, status_by = ?4, status_reason = ?5 WHERE id = ?1",
                params![id as i64, to.as_str(), now, actor, reason],
            )?;
            tx.execute(
                "INSERT INTO history (break_id, at, actor, from_status, to_status, reason) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![id as i64, now, actor, from.as_str(), to.as_str(), reason],
            )?;
        }
        tx.commit()?;
        self.get(id)?.ok_or(StoreError::NotFound(id))
    }

    /// Unresolved production breaks per rule (open or acknowledged).
    pub fn unresolved_by_rule(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT rule, COUNT(*) FROM breaks WHERE drill IS NULL AND status <> 'resolved' GROUP BY rule",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Counts of breaks by status and rule, production breaks only.
    pub fn counts_by_rule(&self) -> Result<Vec<(String, String, u64)>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT status, rule, COUNT(*) FROM breaks WHERE drill IS NULL GROUP BY status, rule",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)? as u64,
            ))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn max_id(&self) -> Result<u64, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT COALESCE(MAX(id), 0) FROM breaks", [], |r| {
                r.get::<_, i64>(0)
            })? as u64)
    }

    pub fn outbox_due(&self, now: Millis, limit: usize) -> Result<Vec<OutboxItem>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT id, break_id, attempts FROM outbox WHERE next_at <= ?1 ORDER BY id LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![now, limit as i64], |r| {
            Ok(OutboxItem {
                id: r.get(0)?,
                break_id: r.get::<_, i64>(1)? as u64,
                attempts: r.get(2)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn outbox_len(&self) -> Result<u64, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT COUNT(*) FROM outbox", [], |r| r.get::<_, i64>(0))?
            as u64)
    }

    pub fn outbox_done(&mut self, ids: &[i64]) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        for id in ids {
            tx.execute("DELETE FROM outbox WHERE id = ?1", params![id])?;
        }
        tx.commit()?;
        Ok(())
    }

    pub fn outbox_retry(&mut self, ids: &[i64], next_at: Millis) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        for id in ids {
            tx.execute(
                "UPDATE outbox SET attempts = attempts + 1, next_at = ?2 WHERE id = ?1",
                params![id, next_at],
            )?;
        }
        tx.commit()?;
        Ok(())
    }
}
