//! The control store: API tokens, local users, four-eyes approvals, settings such as the
//! kill switch, runbook verifications and executions, and the hash-chained audit log, in
//! one SQLite database (`control.db`).
//!
//! Roles and permissions are the server's vocabulary; this module stores them as text
//! and knows nothing of what they allow. Secrets are never stored: tokens as SHA-256 of
//! their secret part (they are 256-bit random, so a fast hash is enough), passwords as
//! the argon2 PHC string the caller computed.
//!
//! The audit log is append-only by construction of this API (there is no update or
//! delete) and tamper-evident by its chain: each entry's hash covers its fields and the
//! previous entry's hash, and the newest (seq, hash) is also written to `audit.head`
//! beside the database, so cutting entries off the end is detected too.

use std::io::Write;
use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use steadfast_model::Millis;

/// Most rows one listing returns.
pub const CONTROL_PAGE_MAX: usize = 1000;
/// Most live (unrevoked) tokens; creating more is refused. Bounds the server's token cache.
pub const TOKENS_LIVE_MAX: usize = 10_000;
/// Most users.
pub const USERS_MAX: usize = 10_000;
/// Most pending approvals; requesting more is refused until some are decided or expire.
pub const APPROVALS_PENDING_MAX: usize = 1_000;
/// Most drills kept (with their reports).
pub const DRILLS_MAX: usize = 100_000;
/// Longest free-text detail kept in one audit entry.
/// Hits stored for one drill: a lossy drill's tampered requests, each to be corrected.
pub const DRILL_HITS_MAX: usize = 100_000;
pub const AUDIT_DETAIL_BYTES_MAX: usize = 8 * 1024;
/// Verifications kept per runbook; older ones are dropped (a verification changes nothing,
/// and its latest result is what counts).
pub const RUNBOOK_VERIFICATIONS_KEPT: usize = 1_000;
/// Executions kept per runbook; older ones are dropped here, never from the audit log,
/// which records every execution.
pub const RUNBOOK_EXECUTIONS_KEPT: usize = 10_000;
/// Longest message kept with a runbook run.
pub const RUNBOOK_MESSAGE_CHARS_MAX: usize = 1_000;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("control store: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("control store: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Full(String),
}

/// A stored token, without its secret.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct TokenRow {
    pub id: String,
    /// `api`, `session` (a signed-in user) or `publishable` (browser beacons).
    pub kind: String,
    /// Who the token speaks for: a person or a machine. Four-eyes compares subjects.
    pub subject: String,
    pub name: String,
    pub role: String,
    /// Fund links and services (sources) the token may touch; both empty: everything.
    pub links: Vec<String>,
    pub services: Vec<String>,
    /// The site a publishable key sends beacons for.
    pub site: Option<String>,
    /// Requests per second; the server's default when absent.
    pub rate_per_sec: Option<u32>,
    /// Largest request body; the server's `limits.body_bytes_max` when absent or larger.
    pub body_bytes_max: Option<u64>,
    pub created_at: Millis,
    pub created_by: String,
    pub expires_at: Option<Millis>,
    pub revoked_at: Option<Millis>,
    #[serde(skip)]
    pub secret_sha256: Vec<u8>,
}

impl TokenRow {
    pub fn live_at(&self, now: Millis) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|e| now < e)
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct UserRow {
    pub name: String,
    pub role: String,
    pub links: Vec<String>,
    pub services: Vec<String>,
    pub created_at: Millis,
    pub created_by: String,
    pub disabled_at: Option<Millis>,
    #[serde(skip)]
    pub password_phc: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ApprovalRow {
    pub id: u64,
    /// The four-eyes action, e.g. `killswitch.release`.
    pub action: String,
    pub target: String,
    /// What the action will be called with once approved.
    pub params: serde_json::Value,
    pub reason: String,
    pub requested_by: String,
    pub requested_at: Millis,
    pub expires_at: Millis,
    /// `pending`, `approved`, `rejected`, `expired` or `failed`.
    pub status: String,
    pub decided_by: Option<String>,
    pub decided_at: Option<Millis>,
    pub decision_reason: Option<String>,
    pub result: Option<String>,
}

/// A stored drill; `body` is the server's JSON of it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct DrillRow {
    pub id: String,
    pub created_at: Millis,
    pub created_by: String,
    pub state: String,
    pub body: serde_json::Value,
}

fn drill_from(row: &rusqlite::Row<'_>) -> rusqlite::Result<DrillRow> {
    let body: String = row.get("body")?;
    Ok(DrillRow {
        id: row.get("id")?,
        created_at: row.get("created_at")?,
        created_by: row.get("created_by")?,
        state: row.get("state")?,
        body: serde_json::from_str(&body).unwrap_or(serde_json::Value::Null),
    })
}

/// One verification (a dry run) or execution of a runbook and what came of it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RunbookRun {
    pub id: u64,
    pub runbook: String,
    /// `verify` or `execute`.
    pub kind: String,
    pub started_at: Millis,
    /// `running`, `ok`, `failed`, or `unknown` (the server stopped during the call).
    pub outcome: String,
    pub duration_ms: Option<u64>,
    /// The HTTP status answered, when there was an answer.
    pub status: Option<u16>,
    pub message: String,
    /// Who asked for it (`server` for scheduled verifications).
    pub requested_by: String,
    pub approved_by: Option<String>,
    pub approval: Option<u64>,
    pub reason: Option<String>,
    /// Executed although the last verification had not passed.
    pub forced: bool,
}

impl RunbookRun {
    pub fn ok(&self) -> bool {
        self.outcome == "ok"
    }
}

fn runbook_run_from(row: &rusqlite::Row<'_>) -> rusqlite::Result<RunbookRun> {
    Ok(RunbookRun {
        id: row.get::<_, i64>("id")? as u64,
        runbook: row.get("runbook")?,
        kind: row.get("kind")?,
        started_at: row.get("started_at")?,
        outcome: row.get("outcome")?,
        duration_ms: row.get::<_, Option<i64>>("duration_ms")?.map(|d| d as u64),
        status: row.get("status")?,
        message: row.get("message")?,
        requested_by: row.get("requested_by")?,
        approved_by: row.get("approved_by")?,
        approval: row.get::<_, Option<i64>>("approval")?.map(|a| a as u64),
        reason: row.get("reason")?,
        forced: row.get("forced")?,
    })
}

fn clip(text: &str) -> String {
    text.chars().take(RUNBOOK_MESSAGE_CHARS_MAX).collect()
}

/// An audit entry as appended: who did what, to what, from where, with what result.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct AuditRecord {
    pub at: Millis,
    pub actor: String,
    pub action: String,
    pub target: String,
    /// Where the request came from (peer address, or `local` for the CLI on the data dir).
    pub source: String,
    /// The outcome, e.g. `200`, `202 pending approval 7`, `403 same_person`.
    pub result: String,
    pub approver: Option<String>,
    /// Free detail as JSON text (what changed, the reason given).
    pub detail: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct AuditEntry {
    pub seq: u64,
    #[serde(flatten)]
    pub record: AuditRecord,
    pub prev_hash: String,
    pub hash: String,
}

/// The first entry where the audit chain does not hold.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AuditFault {
    pub seq: u64,
    pub problem: String,
}

impl std::fmt::Display for AuditFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "audit entry {}: {}", self.seq, self.problem)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AuditCheck {
    pub entries: u64,
    pub head_seq: u64,
    pub fault: Option<AuditFault>,
}

#[derive(Clone, Debug, Default)]
pub struct AuditFilter {
    pub after_seq: u64,
    pub actor: Option<String>,
    pub action: Option<String>,
    /// Only entries about this target (e.g. `drill d-42`).
    pub target: Option<String>,
    /// Newest first (the last `limit` entries after `after_seq`) instead of in order.
    pub newest_first: bool,
    pub limit: usize,
}

/// The hash of the chain before its first entry.
pub const AUDIT_GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The hash of one entry: SHA-256 over its fields, each length-prefixed so that no two
/// different entries hash the same text, and over the previous entry's hash.
pub fn audit_hash(seq: u64, r: &AuditRecord, prev_hash: &str) -> String {
    let mut h = Sha256::new();
    let at = r.at.to_string();
    let seq = seq.to_string();
    let approver = r.approver.as_deref().unwrap_or("\u{0}");
    for field in [
        seq.as_str(),
        at.as_str(),
        &r.actor,
        &r.action,
        &r.target,
        &r.source,
        &r.result,
        approver,
        &r.detail,
        prev_hash,
    ] {
        h.update((field.len() as u64).to_le_bytes());
        h.update(field.as_bytes());
    }
    hex(&h.finalize())
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn sha256(bytes: &[u8]) -> Vec<u8> {
    Sha256::digest(bytes).to_vec()
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS tokens (
  id TEXT PRIMARY KEY, kind TEXT NOT NULL, secret_sha256 BLOB NOT NULL,
  subject TEXT NOT NULL, name TEXT NOT NULL, role TEXT NOT NULL,
  links TEXT NOT NULL, services TEXT NOT NULL, site TEXT, rate_per_sec INTEGER, body_bytes_max INTEGER,
  created_at INTEGER NOT NULL, created_by TEXT NOT NULL, expires_at INTEGER, revoked_at INTEGER
);
CREATE TABLE IF NOT EXISTS users (
  name TEXT PRIMARY KEY, password_phc TEXT NOT NULL, role TEXT NOT NULL,
  links TEXT NOT NULL, services TEXT NOT NULL,
  created_at INTEGER NOT NULL, created_by TEXT NOT NULL, disabled_at INTEGER
);
CREATE TABLE IF NOT EXISTS approvals (
  id INTEGER PRIMARY KEY AUTOINCREMENT, action TEXT NOT NULL, target TEXT NOT NULL,
  params TEXT NOT NULL, reason TEXT NOT NULL, requested_by TEXT NOT NULL,
  requested_at INTEGER NOT NULL, expires_at INTEGER NOT NULL, status TEXT NOT NULL,
  decided_by TEXT, decided_at INTEGER, decision_reason TEXT, result TEXT
);
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS drills (
  id TEXT PRIMARY KEY, created_at INTEGER NOT NULL, created_by TEXT NOT NULL,
  state TEXT NOT NULL, body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS drill_hits (
  seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, drill TEXT NOT NULL, body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS drill_hits_by_drill ON drill_hits (drill, seq);
CREATE TABLE IF NOT EXISTS runbook_runs (
  id INTEGER PRIMARY KEY AUTOINCREMENT, runbook TEXT NOT NULL, kind TEXT NOT NULL,
  started_at INTEGER NOT NULL, outcome TEXT NOT NULL, duration_ms INTEGER, status INTEGER,
  message TEXT NOT NULL, requested_by TEXT NOT NULL, approved_by TEXT, approval INTEGER,
  reason TEXT, forced INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS runbook_runs_by_runbook ON runbook_runs (runbook, kind, id);
CREATE TABLE IF NOT EXISTS audit (
  seq INTEGER PRIMARY KEY, at INTEGER NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL,
  target TEXT NOT NULL, source TEXT NOT NULL, result TEXT NOT NULL, approver TEXT,
  detail TEXT NOT NULL, prev_hash TEXT NOT NULL, hash TEXT NOT NULL
);
";

fn list_json(v: &[String]) -> String {
    serde_json::to_string(v).expect("string lists serialize")
}

fn list_from(text: String) -> Vec<String> {
    serde_json::from_str(&text).unwrap_or_default()
}

fn token_from(row: &rusqlite::Row<'_>) -> rusqlite::Result<TokenRow> {
    Ok(TokenRow {
        id: row.get("id")?,
        kind: row.get("kind")?,
        subject: row.get("subject")?,
        name: row.get("name")?,
        role: row.get("role")?,
        links: list_from(row.get("links")?),
        services: list_from(row.get("services")?),
        site: row.get("site")?,
        rate_per_sec: row.get("rate_per_sec")?,
        body_bytes_max: row.get("body_bytes_max")?,
        created_at: row.get("created_at")?,
        created_by: row.get("created_by")?,
        expires_at: row.get("expires_at")?,
        revoked_at: row.get("revoked_at")?,
        secret_sha256: row.get("secret_sha256")?,
    })
}

fn user_from(row: &rusqlite::Row<'_>) -> rusqlite::Result<UserRow> {
    Ok(UserRow {
        name: row.get("name")?,
        role: row.get("role")?,
        links: list_from(row.get("links")?),
        services: list_from(row.get("services")?),
        created_at: row.get("created_at")?,
        created_by: row.get("created_by")?,
        disabled_at: row.get("disabled_at")?,
        password_phc: row.get("password_phc")?,
    })
}

fn approval_from(row: &rusqlite::Row<'_>) -> rusqlite::Result<ApprovalRow> {
    let params: String = row.get("params")?;
    Ok(ApprovalRow {
        id: row.get::<_, i64>("id")? as u64,
        action: row.get("action")?,
        target: row.get("target")?,
        params: serde_json::from_str(&params).unwrap_or(serde_json::Value::Null),
        reason: row.get("reason")?,
        requested_by: row.get("requested_by")?,
        requested_at: row.get("requested_at")?,
        expires_at: row.get("expires_at")?,
        status: row.get("status")?,
        decided_by: row.get("decided_by")?,
        decided_at: row.get("decided_at")?,
        decision_reason: row.get("decision_reason")?,
        result: row.get("result")?,
    })
}

fn audit_from(row: &rusqlite::Row<'_>) -> rusqlite::Result<AuditEntry> {
    Ok(AuditEntry {
        seq: row.get::<_, i64>("seq")? as u64,
        record: AuditRecord {
            at: row.get("at")?,
            actor: row.get("actor")?,
            action: row.get("action")?,
            target: row.get("target")?,
            source: row.get("source")?,
            result: row.get("result")?,
            approver: row.get("approver")?,
            detail: row.get("detail")?,
        },
        prev_hash: row.get("prev_hash")?,
        hash: row.get("hash")?,
    })
}

pub struct ControlStore {
    conn: Connection,
    head_path: PathBuf,
}

impl ControlStore {
    /// Opens (creating) `control.db` in `dir`. The server and a CLI working on the data
    /// directory may have it open at once; SQLite's locking serialises their writes.
    pub fn open(dir: &Path) -> Result<ControlStore, ControlError> {
        std::fs::create_dir_all(dir)?;
        let conn = Connection::open(dir.join("control.db"))?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.execute_batch(SCHEMA)?;
        Ok(ControlStore {
            conn,
            head_path: dir.join("audit.head"),
        })
    }

    // ---- tokens ------------------------------------------------------------------

    pub fn insert_token(&mut self, t: &TokenRow) -> Result<(), ControlError> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let live: i64 = tx.query_row(
            "SELECT COUNT(*) FROM tokens WHERE revoked_at IS NULL",
            [],
            |r| r.get(0),
        )?;
        if live as usize >= TOKENS_LIVE_MAX {
            return Err(ControlError::Full(format!(
                "there are {TOKENS_LIVE_MAX} live tokens already; revoke some first"
            )));
        }
        tx.execute(
            "INSERT INTO tokens (id, kind, secret_sha256, subject, name, role, links, services, site, rate_per_sec, body_bytes_max, created_at, created_by, expires_at, revoked_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, NULL)",
            params![t.id, t.kind, t.secret_sha256, t.subject, t.name, t.role, list_json(&t.links), list_json(&t.services), t.site, t.rate_per_sec, t.body_bytes_max.map(|b| b as i64), t.created_at, t.created_by, t.expires_at],
        )?;
        tx.commit()?;
        Ok(())
    }

    pub fn token(&self, id: &str) -> Result<Option<TokenRow>, ControlError> {
        Ok(self
            .conn
            .query_row(
                "SELECT * FROM tokens WHERE id = ?1",
                params![id],
                token_from,
            )
            .optional()?)
    }

    /// Tokens, newest first; revoked and expired ones only when `all`.
    pub fn tokens(&self, all: bool, now: Millis) -> Result<Vec<TokenRow>, ControlError> {
        let mut st = self
            .conn
            .prepare("SELECT * FROM tokens ORDER BY created_at DESC, id LIMIT ?1")?;
        let rows = st.query_map(params![TOKENS_LIVE_MAX as i64 * 2], token_from)?;
        let mut out = Vec::new();
        for r in rows {
            let r = r?;
            if all || r.live_at(now) {
                out.push(r);
            }
        }
        Ok(out)
    }

    /// Whether any live token or enabled user holds `role`.
    pub fn has_live(&self, role: &str, now: Millis) -> Result<bool, ControlError> {
        let tokens: i64 = self.conn.query_row(
            "SELECT COUNT(*) FROM tokens WHERE role = ?1 AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > ?2)",
            params![role, now],
            |r| r.get(0),
        )?;
        let users: i64 = self.conn.query_row(
            "SELECT COUNT(*) FROM users WHERE role = ?1 AND disabled_at IS NULL",
            params![role],
            |r| r.get(0),
        )?;
        Ok(tokens + users > 0)
    }

    /// Revokes a token; revoking a revoked token changes nothing and is not an error.
    pub fn revoke_token(&mut self, id: &str, now: Millis) -> Result<TokenRow, ControlError> {
        self.conn.execute(
            "UPDATE tokens SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
            params![id, now],
        )?;
        self.token(id)?
            .ok_or_else(|| ControlError::NotFound(format!("token {id} does not exist")))
    }

    // ---- users -------------------------------------------------------------------

    pub fn insert_user(&mut self, u: &UserRow) -> Result<(), ControlError> {
        let n: i64 = self
            .conn
            .query_row("SELECT COUNT(*) FROM users", [], |r| r.get(0))?;
        if n as usize >= USERS_MAX {
            return Err(ControlError::Full(format!(
                "there are {USERS_MAX} users already"
            )));
        }
        let done = self.conn.execute(
            "INSERT OR IGNORE INTO users (name, password_phc, role, links, services, created_at, created_by, disabled_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, NULL)",
            params![u.name, u.password_phc, u.role, list_json(&u.links), list_json(&u.services), u.created_at, u.created_by],
        )?;
        if done == 0 {
            return Err(ControlError::Conflict(format!(
                "user {} exists already",
                u.name
            )));
        }
        Ok(())
    }

    pub fn user(&self, name: &str) -> Result<Option<UserRow>, ControlError> {
        Ok(self
            .conn
            .query_row(
                "SELECT * FROM users WHERE name = ?1",
                params![name],
                user_from,
            )
            .optional()?)
    }

    pub fn users(&self) -> Result<Vec<UserRow>, ControlError> {
        let mut st = self
            .conn
            .prepare("SELECT * FROM users ORDER BY name LIMIT ?1")?;
        let rows = st.query_map(params![USERS_MAX as i64], user_from)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Disables a user and revokes every session token it holds.
    pub fn disable_user(&mut self, name: &str, now: Millis) -> Result<UserRow, ControlError> {
        let tx = self.conn.transaction()?;
        tx.execute(
            "UPDATE users SET disabled_at = ?2 WHERE name = ?1 AND disabled_at IS NULL",
            params![name, now],
        )?;
        tx.execute(
            "UPDATE tokens SET revoked_at = ?2 WHERE kind = 'session' AND subject = ?1 AND revoked_at IS NULL",
            params![name, now],
        )?;
        tx.commit()?;
        self.user(name)?
            .ok_or_else(|| ControlError::NotFound(format!("user {name} does not exist")))
    }

    // ---- approvals ---------------------------------------------------------------

    /// Records a request for approval; returns its id.
    pub fn request_approval(&mut self, a: &ApprovalRow) -> Result<u64, ControlError> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        tx.execute(
            "UPDATE approvals SET status = 'expired' WHERE status = 'pending' AND expires_at <= ?1",
            params![a.requested_at],
        )?;
        let pending: i64 = tx.query_row(
            "SELECT COUNT(*) FROM approvals WHERE status = 'pending'",
            [],
            |r| r.get(0),
        )?;
        if pending as usize >= APPROVALS_PENDING_MAX {
            return Err(ControlError::Full(format!(
                "{APPROVALS_PENDING_MAX} approvals are pending already; decide some first"
            )));
        }
        tx.execute(
            "INSERT INTO approvals (action, target, params, reason, requested_by, requested_at, expires_at, status)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'pending')",
            params![a.action, a.target, a.params.to_string(), a.reason, a.requested_by, a.requested_at, a.expires_at],
        )?;
        let id = tx.last_insert_rowid() as u64;
        tx.commit()?;
        Ok(id)
    }

    pub fn approval(&self, id: u64) -> Result<Option<ApprovalRow>, ControlError> {
        Ok(self
            .conn
            .query_row(
                "SELECT * FROM approvals WHERE id = ?1",
                params![id as i64],
                approval_from,
            )
            .optional()?)
    }

    pub fn approvals(
        &self,
        status: Option<&str>,
        now: Millis,
    ) -> Result<Vec<ApprovalRow>, ControlError> {
        self.conn.execute(
            "UPDATE approvals SET status = 'expired' WHERE status = 'pending' AND expires_at <= ?1",
            params![now],
        )?;
        let mut st = self.conn.prepare(
            "SELECT * FROM approvals WHERE (?1 IS NULL OR status = ?1) ORDER BY id DESC LIMIT ?2",
        )?;
        let rows = st.query_map(params![status, CONTROL_PAGE_MAX as i64], approval_from)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Moves a pending approval to its decision. Only a pending, unexpired approval can be
    /// decided, and only once: the update is conditional, so two approvers racing cannot
    /// both run the action.
    pub fn decide_approval(
        &mut self,
        id: u64,
        status: &str,
        by: &str,
        reason: Option<&str>,
        now: Millis,
    ) -> Result<ApprovalRow, ControlError> {
        let n = self.conn.execute(
            "UPDATE approvals SET status = ?2, decided_by = ?3, decided_at = ?4, decision_reason = ?5
             WHERE id = ?1 AND status = 'pending' AND expires_at > ?4",
            params![id as i64, status, by, now, reason],
        )?;
        let row = self
            .approval(id)?
            .ok_or_else(|| ControlError::NotFound(format!("approval {id} does not exist")))?;
        if n == 0 {
            let state = if row.status == "pending" {
                "expired"
            } else {
                row.status.as_str()
            };
            return Err(ControlError::Conflict(format!(
                "approval {id} is {state}; only a pending approval can be decided"
            )));
        }
        Ok(row)
    }

    /// Stores what running an approved action gave (`failed` when it did not run).
    pub fn approval_result(
        &mut self,
        id: u64,
        ok: bool,
        result: &str,
    ) -> Result<ApprovalRow, ControlError> {
        self.conn.execute(
            "UPDATE approvals SET result = ?2, status = CASE WHEN ?3 THEN status ELSE 'failed' END WHERE id = ?1",
            params![id as i64, result, ok],
        )?;
        self.approval(id)?
            .ok_or_else(|| ControlError::NotFound(format!("approval {id} does not exist")))
    }

    // ---- drills ------------------------------------------------------------------

    /// Stores a drill (its spec, lease, plan and report as the server's JSON); replaces
    /// the previous version of the same id.
    pub fn put_drill(&mut self, d: &DrillRow) -> Result<(), ControlError> {
        if self.drill(&d.id)?.is_none() {
            let n: i64 = self
                .conn
                .query_row("SELECT COUNT(*) FROM drills", [], |r| r.get(0))?;
            if n as usize >= DRILLS_MAX {
                return Err(ControlError::Full(format!(
                    "{DRILLS_MAX} drills are stored already"
                )));
            }
        }
        self.conn.execute(
            "INSERT INTO drills (id, created_at, created_by, state, body) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT(id) DO UPDATE SET state = excluded.state, body = excluded.body",
            params![d.id, d.created_at, d.created_by, d.state, d.body.to_string()],
        )?;
        Ok(())
    }

    pub fn drill(&self, id: &str) -> Result<Option<DrillRow>, ControlError> {
        Ok(self
            .conn
            .query_row(
                "SELECT * FROM drills WHERE id = ?1",
                params![id],
                drill_from,
            )
            .optional()?)
    }

    /// Drills, newest first.
    pub fn drills(&self, limit: usize) -> Result<Vec<DrillRow>, ControlError> {
        let mut st = self
            .conn
            .prepare("SELECT * FROM drills ORDER BY created_at DESC, id LIMIT ?1")?;
        let rows = st.query_map(params![limit.clamp(1, CONTROL_PAGE_MAX) as i64], drill_from)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Stores a lossy drill's hits as the proxy reported them, keyed by hit id: a hit sent
    /// twice (a retried sync) is stored once. Returns how many were new. Past
    /// `DRILL_HITS_MAX` for a drill, the rest are refused (the proxy keeps them).
    pub fn insert_hits(&mut self, hits: &[(String, String, Value)]) -> Result<usize, ControlError> {
        let tx = self.conn.transaction()?;
        let mut new = 0;
        for (id, drill, body) in hits {
            let n: i64 = tx.query_row(
                "SELECT COUNT(*) FROM drill_hits WHERE drill = ?1",
                params![drill],
                |r| r.get(0),
            )?;
            if n as usize >= DRILL_HITS_MAX {
                return Err(ControlError::Full(format!(
                    "drill {drill} has {DRILL_HITS_MAX} hits stored already"
                )));
            }
            new += tx.execute(
                "INSERT OR IGNORE INTO drill_hits (id, drill, body) VALUES (?1, ?2, ?3)",
                params![id, drill, body.to_string()],
            )?;
        }
        tx.commit()?;
        Ok(new)
    }

    /// A drill's hits in the order they arrived.
    pub fn drill_hits(&self, drill: &str) -> Result<Vec<Value>, ControlError> {
        let mut st = self
            .conn
            .prepare_cached("SELECT body FROM drill_hits WHERE drill = ?1 ORDER BY seq LIMIT ?2")?;
        let rows = st.query_map(params![drill, DRILL_HITS_MAX as i64], |r| {
            r.get::<_, String>(0)
        })?;
        rows.map(|t| Ok(serde_json::from_str(&t?).unwrap_or(Value::Null)))
            .collect()
    }

    // ---- runbook runs ------------------------------------------------------------

    /// Records the start of a runbook run (its outcome `running`) before its call is made,
    /// so that a run the server did not live to finish is still on record; returns its id.
    /// Runs of the same runbook and kind past their bound are dropped, oldest first.
    pub fn start_runbook_run(&mut self, r: &RunbookRun) -> Result<u64, ControlError> {
        let kept = if r.kind == "verify" {
            RUNBOOK_VERIFICATIONS_KEPT
        } else {
            RUNBOOK_EXECUTIONS_KEPT
        };
        let tx = self.conn.transaction()?;
        tx.execute(
            "INSERT INTO runbook_runs (runbook, kind, started_at, outcome, duration_ms, status, message, requested_by, approved_by, approval, reason, forced)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            params![r.runbook, r.kind, r.started_at, r.outcome, r.duration_ms.map(|d| d as i64), r.status, clip(&r.message), r.requested_by, r.approved_by, r.approval.map(|a| a as i64), r.reason, r.forced],
        )?;
        let id = tx.last_insert_rowid();
        let oldest_dropped: Option<i64> = tx
            .query_row(
                "SELECT id FROM runbook_runs WHERE runbook = ?1 AND kind = ?2 ORDER BY id DESC LIMIT 1 OFFSET ?3",
                params![r.runbook, r.kind, kept as i64],
                |row| row.get(0),
            )
            .optional()?;
        if let Some(cut) = oldest_dropped {
            tx.execute(
                "DELETE FROM runbook_runs WHERE runbook = ?1 AND kind = ?2 AND id <= ?3",
                params![r.runbook, r.kind, cut],
            )?;
        }
        tx.commit()?;
        Ok(id as u64)
    }

    /// Stores how a run ended.
    pub fn finish_runbook_run(
        &mut self,
        id: u64,
        outcome: &str,
        duration_ms: u64,
        status: Option<u16>,
        message: &str,
    ) -> Result<RunbookRun, ControlError> {
        self.conn.execute(
            "UPDATE runbook_runs SET outcome = ?2, duration_ms = ?3, status = ?4, message = ?5 WHERE id = ?1",
            params![id as i64, outcome, duration_ms as i64, status, clip(message)],
        )?;
        self.conn
            .query_row(
                "SELECT * FROM runbook_runs WHERE id = ?1",
                params![id as i64],
                runbook_run_from,
            )
            .optional()?
            .ok_or_else(|| ControlError::NotFound(format!("runbook run {id} does not exist")))
    }

    /// Marks runs still `running` (the server stopped during their call) as `unknown`;
    /// returns how many there were.
    pub fn end_unfinished_runbook_runs(&mut self) -> Result<usize, ControlError> {
        Ok(self.conn.execute(
            "UPDATE runbook_runs SET outcome = 'unknown',
               message = 'the server stopped during this run: whether its call took effect is unknown; check the target'
             WHERE outcome = 'running'",
            [],
        )?)
    }

    /// A runbook's runs of `kind` (`verify` or `execute`), newest first.
    pub fn runbook_runs(
        &self,
        runbook: &str,
        kind: &str,
        limit: usize,
    ) -> Result<Vec<RunbookRun>, ControlError> {
        let mut st = self.conn.prepare_cached(
            "SELECT * FROM runbook_runs WHERE runbook = ?1 AND kind = ?2 ORDER BY id DESC LIMIT ?3",
        )?;
        let rows = st.query_map(
            params![runbook, kind, limit.clamp(1, CONTROL_PAGE_MAX) as i64],
            runbook_run_from,
        )?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// A runbook's newest finished run of `kind`: the last verification result, or the
    /// last execution's.
    pub fn last_runbook_run(
        &self,
        runbook: &str,
        kind: &str,
    ) -> Result<Option<RunbookRun>, ControlError> {
        Ok(self
            .conn
            .query_row(
                "SELECT * FROM runbook_runs WHERE runbook = ?1 AND kind = ?2 AND outcome != 'running'
                 ORDER BY id DESC LIMIT 1",
                params![runbook, kind],
                runbook_run_from,
            )
            .optional()?)
    }

    // ---- settings ----------------------------------------------------------------

    pub fn setting(&self, key: &str) -> Result<Option<String>, ControlError> {
        Ok(self
            .conn
            .query_row(
                "SELECT value FROM settings WHERE key = ?1",
                params![key],
                |r| r.get(0),
            )
            .optional()?)
    }

    pub fn set_setting(&mut self, key: &str, value: &str) -> Result<(), ControlError> {
        self.conn.execute(
            "INSERT INTO settings (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            params![key, value],
        )?;
        Ok(())
    }

    // ---- audit -------------------------------------------------------------------

    /// Appends an entry to the chain; durable when this returns.
    pub fn append_audit(&mut self, mut r: AuditRecord) -> Result<AuditEntry, ControlError> {
        if r.detail.len() > AUDIT_DETAIL_BYTES_MAX {
            let mut cut = AUDIT_DETAIL_BYTES_MAX;
            while !r.detail.is_char_boundary(cut) {
                cut -= 1;
            }
            r.detail.truncate(cut);
        }
        if r.detail.is_empty() {
            r.detail = "{}".into();
        }
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let last: Option<(i64, String)> = tx
            .query_row(
                "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1",
                [],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()?;
        let (seq, prev_hash) = match last {
            Some((s, h)) => (s as u64 + 1, h),
            None => (1, AUDIT_GENESIS.to_string()),
        };
        let hash = audit_hash(seq, &r, &prev_hash);
        tx.execute(
            "INSERT INTO audit (seq, at, actor, action, target, source, result, approver, detail, prev_hash, hash)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            params![seq as i64, r.at, r.actor, r.action, r.target, r.source, r.result, r.approver, r.detail, prev_hash, hash],
        )?;
        tx.commit()?;
        self.write_head(seq, &hash)?;
        Ok(AuditEntry {
            seq,
            record: r,
            prev_hash,
            hash,
        })
    }

    /// The head file is replaced atomically; a crash between the commit and this leaves it
    /// one entry behind, which the check accepts (it only needs the head's entry to exist
    /// with the head's hash).
    fn write_head(&self, seq: u64, hash: &str) -> Result<(), ControlError> {
        let tmp = self.head_path.with_extension("head.tmp");
        let mut f = std::fs::File::create(&tmp)?;
        writeln!(f, "{seq} {hash}")?;
        f.sync_all()?;
        std::fs::rename(&tmp, &self.head_path)?;
        if let Some(dir) = self.head_path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }

    fn read_head(&self) -> Option<(u64, String)> {
        let text = std::fs::read_to_string(&self.head_path).ok()?;
        let (seq, hash) = text.trim().split_once(' ')?;
        Some((seq.parse().ok()?, hash.to_string()))
    }

    pub fn audit(&self, f: &AuditFilter) -> Result<Vec<AuditEntry>, ControlError> {
        let order = if f.newest_first { "DESC" } else { "ASC" };
        let mut st = self.conn.prepare(&format!(
            "SELECT * FROM audit WHERE seq > ?1 AND (?2 IS NULL OR actor = ?2) AND (?3 IS NULL OR action = ?3)
             AND (?4 IS NULL OR target = ?4) ORDER BY seq {order} LIMIT ?5"
        ))?;
        let limit = f.limit.clamp(1, CONTROL_PAGE_MAX) as i64;
        let rows = st.query_map(
            params![f.after_seq as i64, f.actor, f.action, f.target, limit],
            audit_from,
        )?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Walks the whole chain in order and names the first entry where it breaks: a gap in
    /// the sequence (a deleted entry), a wrong back link (a deleted or reordered entry), a
    /// hash that does not match the entry's fields (an altered entry), or entries missing
    /// from the end (the head file names a later entry than the log has).
    pub fn verify_audit(&self) -> Result<AuditCheck, ControlError> {
        let mut st = self.conn.prepare("SELECT * FROM audit ORDER BY seq")?;
        let mut rows = st.query_map([], audit_from)?;
        let mut expected_seq = 1u64;
        let mut prev = AUDIT_GENESIS.to_string();
        let mut entries = 0u64;
        let mut fault = None;
        let head = self.read_head();
        let mut head_hash_seen: Option<String> = None;
        for row in rows.by_ref() {
            let e = row?;
            entries += 1;
            if e.seq != expected_seq {
                fault = Some(AuditFault {
                    seq: e.seq,
                    problem: format!(
                        "expected entry {expected_seq} here; entries {expected_seq}..{} are missing or out of order",
                        e.seq.saturating_sub(1).max(expected_seq)
                    ),
                });
                break;
            }
            if e.prev_hash != prev {
                fault = Some(AuditFault {
                    seq: e.seq,
                    problem: "does not link to the entry before it (an entry was removed, inserted or reordered)".into(),
                });
                break;
            }
            if audit_hash(e.seq, &e.record, &e.prev_hash) != e.hash {
                fault = Some(AuditFault {
                    seq: e.seq,
                    problem: "its content does not match its hash (the entry was altered)".into(),
                });
                break;
            }
            if head.as_ref().is_some_and(|(s, _)| *s == e.seq) {
                head_hash_seen = Some(e.hash.clone());
            }
            prev = e.hash;
            expected_seq += 1;
        }
        let head_seq = head.as_ref().map(|h| h.0).unwrap_or(0);
        if fault.is_none() {
            if let Some((hseq, hhash)) = &head {
                let last = expected_seq - 1;
                if *hseq > last {
                    fault = Some(AuditFault {
                        seq: last + 1,
                        problem: format!(
                            "the log ends at entry {last} but entry {hseq} was written (entries were cut off the end)"
                        ),
                    });
                } else if head_hash_seen.as_deref() != Some(hhash.as_str()) {
                    fault = Some(AuditFault {
                        seq: *hseq,
                        problem: "its hash differs from the one recorded when it was written (the chain was rewritten)".into(),
                    });
                }
            }
        }
        Ok(AuditCheck {
            entries,
            head_seq,
            fault,
        })
    }
}

/// Appends audit entries to a JSON-lines file and syncs it: the file sink of the audit
/// export. Entries may repeat after a crash (at least once); each carries its `seq`.
pub fn append_jsonl(path: &Path, entries: &[AuditEntry]) -> Result<(), ControlError> {
    let mut text = String::new();
    for e in entries {
        text += &serde_json::to_string(e).expect("audit entries serialize");
        text.push('\n');
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    f.write_all(text.as_bytes())?;
    f.sync_data()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(actor: &str, action: &str) -> AuditRecord {
        AuditRecord {
            at: 1,
            actor: actor.into(),
            action: action.into(),
            target: "t".into(),
            source: "local".into(),
            result: "200".into(),
            approver: None,
            detail: "{}".into(),
        }
    }

    fn chain(n: usize) -> (tempfile::TempDir, ControlStore) {
        let dir = tempfile::tempdir().unwrap();
        let mut st = ControlStore::open(dir.path()).unwrap();
        for i in 0..n {
            st.append_audit(rec("alice", &format!("a{i}"))).unwrap();
        }
        (dir, st)
    }

    fn fault(st: &ControlStore) -> Option<AuditFault> {
        st.verify_audit().unwrap().fault
    }

    #[test]
    fn an_intact_chain_verifies() {
        let (_d, st) = chain(5);
        let check = st.verify_audit().unwrap();
        assert_eq!((check.entries, check.head_seq, check.fault), (5, 5, None));
    }

    #[test]
    fn an_altered_entry_is_named() {
        let (_d, st) = chain(5);
        st.conn
            .execute("UPDATE audit SET actor = 'mallory' WHERE seq = 3", [])
            .unwrap();
        assert_eq!(fault(&st).unwrap().seq, 3);
    }

    #[test]
    fn a_deleted_entry_is_named() {
        let (_d, st) = chain(5);
        st.conn
            .execute("DELETE FROM audit WHERE seq = 2", [])
            .unwrap();
        let f = fault(&st).unwrap();
        assert_eq!(f.seq, 3, "{f}");
    }

    #[test]
    fn reordered_entries_are_named() {
        let (_d, st) = chain(5);
        // Swap the contents of entries 2 and 4, keeping their sequence numbers.
        st.conn
            .execute_batch(
                "UPDATE audit SET seq = 100 WHERE seq = 2;
                 UPDATE audit SET seq = 2 WHERE seq = 4;
                 UPDATE audit SET seq = 4 WHERE seq = 100;",
            )
            .unwrap();
        assert_eq!(fault(&st).unwrap().seq, 2);
    }

    #[test]
    fn entries_cut_off_the_end_are_detected() {
        let (_d, st) = chain(5);
        st.conn
            .execute("DELETE FROM audit WHERE seq >= 4", [])
            .unwrap();
        let f = fault(&st).unwrap();
        assert_eq!(f.seq, 4, "{f}");
    }

    #[test]
    fn a_rewritten_chain_is_detected_by_the_head() {
        let (_d, st) = chain(3);
        // Rewrite entry 3 and recompute its hash so that the chain itself looks whole.
        let mut e = st
            .audit(&AuditFilter {
                after_seq: 2,
                target: None,
                newest_first: false,
                limit: 1,
                ..Default::default()
            })
            .unwrap()
            .remove(0);
        e.record.result = "403".into();
        let h = audit_hash(3, &e.record, &e.prev_hash);
        st.conn
            .execute(
                "UPDATE audit SET result = '403', hash = ?1 WHERE seq = 3",
                params![h],
            )
            .unwrap();
        assert_eq!(fault(&st).unwrap().seq, 3);
    }

    #[test]
    fn an_approval_is_decided_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut st = ControlStore::open(dir.path()).unwrap();
        let id = st
            .request_approval(&ApprovalRow {
                id: 0,
                action: "killswitch.release".into(),
                target: "killswitch".into(),
                params: serde_json::json!({}),
                reason: "drill over".into(),
                requested_by: "alice".into(),
                requested_at: 10,
                expires_at: 1_000,
                status: String::new(),
                decided_by: None,
                decided_at: None,
                decision_reason: None,
                result: None,
            })
            .unwrap();
        assert_eq!(
            st.decide_approval(id, "approved", "bob", None, 20)
                .unwrap()
                .status,
            "approved"
        );
        assert!(matches!(
            st.decide_approval(id, "approved", "carol", None, 30),
            Err(ControlError::Conflict(_))
        ));
    }

    fn run(runbook: &str, kind: &str, at: Millis) -> RunbookRun {
        RunbookRun {
            id: 0,
            runbook: runbook.into(),
            kind: kind.into(),
            started_at: at,
            outcome: "running".into(),
            duration_ms: None,
            status: None,
            message: String::new(),
            requested_by: "server".into(),
            approved_by: None,
            approval: None,
            reason: None,
            forced: false,
        }
    }

    #[test]
    fn runbook_runs_keep_their_latest_result_within_their_bound() {
        let dir = tempfile::tempdir().unwrap();
        let mut st = ControlStore::open(dir.path()).unwrap();
        let first = st.start_runbook_run(&run("failover", "verify", 1)).unwrap();
        assert_eq!(
            st.last_runbook_run("failover", "verify").unwrap(),
            None,
            "a run still going is not a result"
        );
        let done = st
            .finish_runbook_run(first, "ok", 12, Some(200), "200 OK")
            .unwrap();
        assert!(done.ok() && done.status == Some(200) && done.duration_ms == Some(12));
        let second = st.start_runbook_run(&run("failover", "verify", 2)).unwrap();
        st.finish_runbook_run(second, "failed", 5, Some(500), &"x".repeat(5_000))
            .unwrap();
        let last = st.last_runbook_run("failover", "verify").unwrap().unwrap();
        assert_eq!((last.id, last.outcome.as_str()), (second, "failed"));
        assert_eq!(last.message.chars().count(), RUNBOOK_MESSAGE_CHARS_MAX);
        assert_eq!(st.last_runbook_run("failover", "execute").unwrap(), None);
        assert_eq!(st.last_runbook_run("other", "verify").unwrap(), None);

        // A run the server did not live to finish ends as unknown, not as running forever.
        let cut = st
            .start_runbook_run(&run("failover", "execute", 3))
            .unwrap();
        assert_eq!(st.end_unfinished_runbook_runs().unwrap(), 1);
        let runs = st.runbook_runs("failover", "execute", 10).unwrap();
        assert_eq!((runs[0].id, runs[0].outcome.as_str()), (cut, "unknown"));

        // Past the bound, the oldest verifications go; other runbooks' runs stay.
        for i in 0..RUNBOOK_VERIFICATIONS_KEPT {
            st.start_runbook_run(&run("failover", "verify", 10 + i as i64))
                .unwrap();
        }
        let kept: i64 = st
            .conn
            .query_row(
                "SELECT COUNT(*) FROM runbook_runs WHERE runbook = 'failover' AND kind = 'verify'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(kept as usize, RUNBOOK_VERIFICATIONS_KEPT);
        assert_eq!(st.runbook_runs("failover", "execute", 10).unwrap().len(), 1);
    }
}
