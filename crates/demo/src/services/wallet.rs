//! The wallet: each user's money-market balance. Movements (payments from the balance,
//! top-ups, withdrawals, refunds) change it; balance snapshots of the accounts that moved
//! are reported every `snapshot_interval_ms`, so Steadfast can prove each snapshot equals
//! the previous one plus the movements between.
//!
//! Event times are ordered per account: a movement after a snapshot is stamped at least
//! one millisecond later than it, a snapshot no earlier than the movements it includes.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use rusqlite::OptionalExtension;
use serde::{Deserialize, Serialize};
use steadfast_model::wire::WireRecord;
use steadfast_model::Direction;

use crate::svc::{amount_text, now_ms, parse_amount, AppError, Rec, Svc};
use crate::telemetry::Cx;

pub const SOURCE: &str = "wallet";
/// Most accounts snapshotted in one sweep; the rest wait for the next (oldest first).
pub const SNAPSHOT_SWEEP_MAX: usize = 5_000;

pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS wallets (
  user_id TEXT PRIMARY KEY,
  currency TEXT NOT NULL,
  balance_minor INTEGER NOT NULL,
  snapshots INTEGER NOT NULL DEFAULT 0,
  dirty INTEGER NOT NULL DEFAULT 0,
  last_movement_ms INTEGER NOT NULL DEFAULT 0,
  last_snapshot_ms INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS wallets_dirty ON wallets (dirty, last_movement_ms);
CREATE TABLE IF NOT EXISTS movements (
  movement_id TEXT PRIMARY KEY,
  user_id TEXT NOT NULL REFERENCES wallets(user_id),
  direction TEXT NOT NULL,
  amount_minor INTEGER NOT NULL,
  currency TEXT NOT NULL,
  origin TEXT NOT NULL,
  record_id TEXT NOT NULL,
  corrections INTEGER NOT NULL DEFAULT 0,
  created_ms INTEGER NOT NULL
);";

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MovementRequest {
    pub movement_id: String,
    pub user_id: String,
    /// `credit` adds to the balance, `debit` takes from it.
    pub direction: String,
    pub amount: String,
    pub currency: String,
    /// `payment`, `topup`, `withdraw` or `refund`.
    pub origin: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Movement {
    pub movement_id: String,
    pub user_id: String,
    pub direction: String,
    pub amount: String,
    pub currency: String,
    pub origin: String,
    pub record_id: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WalletView {
    pub user_id: String,
    pub account: String,
    pub currency: String,
    pub balance: String,
}

/// A correction: the movement's right amount.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Correction {
    pub movement_id: String,
    pub amount: String,
    pub reason: String,
}

pub struct Wallet {
    pub svc: Arc<Svc>,
}

/// The wallet account of a user, as records name it.
pub fn account_of(user_id: &str) -> String {
    format!("W-{user_id}")
}

/// A movement's effect on the balance; directions are checked on the way in.
fn signed(direction: &str, minor: i64) -> i64 {
    Direction::parse(direction).map_or(minor, |d| d.sign(minor))
}

fn snapshot_record(user_id: &str, n: i64, balance: i64, currency: &str, t: i64) -> WireRecord {
    let mut rec = Rec {
        record_id: format!("wb-{user_id}-{n}"),
        source: SOURCE,
        kind: "balance",
        keys: vec![("snapshot_id", format!("{user_id}-{n}"))],
        amount_minor: balance,
        currency,
        event_ms: t,
        trace_id: "",
        order_id: None,
    }
    .wire();
    rec.account = Some(account_of(user_id));
    rec
}

fn movement_record(
    m: &Movement,
    minor: i64,
    t: i64,
    trace_id: &str,
    amends: Option<String>,
) -> WireRecord {
    let mut rec = Rec {
        record_id: m.record_id.clone(),
        source: SOURCE,
        kind: "movement",
        keys: vec![("movement_id", m.movement_id.clone())],
        amount_minor: minor,
        currency: &m.currency,
        event_ms: t,
        trace_id,
        order_id: Some(m.movement_id.clone()),
    }
    .wire();
    rec.account = Some(account_of(&m.user_id));
    rec.direction = Direction::parse(&m.direction);
    rec.amends = amends;
    rec.attributes.insert("origin".into(), m.origin.clone());
    rec.attributes.insert("user_id".into(), m.user_id.clone());
    rec
}

impl Wallet {
    pub fn router(self: &Arc<Wallet>) -> Router {
        let business = Router::new()
            .route("/v1/movements", post(move_money))
            .route("/v1/wallets/{user_id}", get(get_wallet))
            .route("/v1/corrections", post(correct))
            .with_state(self.clone());
        self.svc.router(business, Router::new())
    }

    /// Opens the wallets of a population with their opening balances (existing customers).
    pub fn seed(&self, wallets: &[(String, &'static str, i64)]) -> anyhow::Result<()> {
        let conn = self.svc.connection();
        let mut c = conn.lock().expect("database lock");
        let tx = c.transaction()?;
        {
            let mut st = tx.prepare_cached(
                "INSERT OR IGNORE INTO wallets (user_id, currency, balance_minor) VALUES (?1, ?2, ?3)",
            )?;
            for (user, currency, opening) in wallets {
                st.execute(rusqlite::params![user, currency, opening])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Snapshots every wallet that moved, sweep after sweep, until none is left.
    pub async fn sweep_all(&self) {
        loop {
            match self.sweep().await {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = ?e, "final wallet snapshots failed");
                    return;
                }
            }
        }
    }

    /// Snapshots up to [`SNAPSHOT_SWEEP_MAX`] accounts that moved since their last
    /// snapshot. Returns how many.
    pub async fn sweep(&self) -> Result<usize, AppError> {
        let cx = Cx(opentelemetry::Context::new());
        let reporter = self.svc.reporter.clone();
        self.svc
            .db(&cx, "SELECT wallets (snapshot)", move |c| {
                let tx = c.transaction()?;
                let rows: Vec<(String, String, i64, i64, i64)> = {
                    let mut st = tx.prepare_cached(
                        "SELECT user_id, currency, balance_minor, snapshots, last_movement_ms FROM wallets WHERE dirty = 1 ORDER BY last_movement_ms LIMIT ?1",
                    )?;
                    let rows = st.query_map([SNAPSHOT_SWEEP_MAX as i64], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
                    })?;
                    rows.collect::<Result<_, _>>()?
                };
                let now = now_ms();
                let mut records = Vec::with_capacity(rows.len());
                for (user, currency, balance, n, last_movement) in &rows {
                    let t = now.max(*last_movement);
                    tx.prepare_cached("UPDATE wallets SET dirty = 0, snapshots = ?2, last_snapshot_ms = ?3 WHERE user_id = ?1")?.execute(
                        rusqlite::params![user, n + 1, t],
                    )?;
                    records.push(snapshot_record(user, n + 1, *balance, currency, t));
                }
                tx.commit()?;
                let count = records.len();
                reporter.report_blocking(records);
                Ok(count)
            })
            .await
    }
}

async fn move_money(
    State(w): State<Arc<Wallet>>,
    Extension(cx): Extension<Cx>,
    Json(req): Json<MovementRequest>,
) -> Result<Json<Movement>, AppError> {
    let (minor, _) = parse_amount(&req.amount, &req.currency)?;
    if minor <= 0 {
        return Err(AppError::bad("amount must be positive"));
    }
    if Direction::parse(&req.direction).is_none() {
        return Err(AppError::bad("direction must be `debit` or `credit`"));
    }
    let trace_id = cx.trace_id();
    let reporter = w.svc.reporter.clone();
    let m = w
        .svc
        .db(&cx, "INSERT movements", move |c| {
            let tx = c.transaction()?;
            if let Some(m) = load_movement(&tx, &req.movement_id)? {
                // A retry: the movement is booked already.
                return Ok(m);
            }
            let wallet: Option<(String, i64, i64, i64)> = tx
                .prepare_cached("SELECT currency, balance_minor, snapshots, last_snapshot_ms FROM wallets WHERE user_id = ?1")?.query_row(
                    [&req.user_id],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                )
                .optional()?;
            let (currency, balance, snapshots, last_snapshot) = match wallet {
                Some(x) => x,
                None => {
                    // A wallet opens with its first movement.
                    tx.prepare_cached("INSERT INTO wallets (user_id, currency, balance_minor) VALUES (?1, ?2, 0)")?.execute(
                        rusqlite::params![req.user_id, req.currency],
                    )?;
                    (req.currency.clone(), 0, 0, 0)
                }
            };
            if currency != req.currency {
                return Err(AppError::conflict(format!(
                    "wallet of `{}` holds {currency}, not {}",
                    req.user_id, req.currency
                )));
            }
            let delta = signed(&req.direction, minor);
            if balance + delta < 0 {
                return Err(AppError::new(
                    axum::http::StatusCode::CONFLICT,
                    "insufficient_funds",
                    format!("wallet of `{}` holds less than {} {currency}", req.user_id, req.amount),
                ));
            }
            let mut records = Vec::with_capacity(2);
            let mut t = now_ms().max(last_snapshot + 1);
            let mut n = snapshots;
            if snapshots == 0 {
                // The first movement of a wallet: report its balance before it as the
                // baseline the following snapshots are checked against.
                n = 1;
                records.push(snapshot_record(&req.user_id, n, balance, &currency, t));
                t += 1;
            }
            let m = Movement {
                movement_id: req.movement_id.clone(),
                user_id: req.user_id.clone(),
                direction: req.direction.clone(),
                amount: amount_text(minor, &currency),
                currency: currency.clone(),
                origin: req.origin.clone(),
                record_id: format!("wm-{}", req.movement_id),
            };
            tx.prepare_cached("INSERT INTO movements VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 0, ?8)")?.execute(
                rusqlite::params![m.movement_id, m.user_id, m.direction, minor, m.currency, m.origin, m.record_id, t],
            )?;
            tx.prepare_cached("UPDATE wallets SET balance_minor = balance_minor + ?2, dirty = 1, last_movement_ms = ?3, snapshots = ?4, last_snapshot_ms = CASE WHEN ?4 > snapshots THEN ?3 - 1 ELSE last_snapshot_ms END WHERE user_id = ?1")?.execute(
                rusqlite::params![m.user_id, delta, t, n],
            )?;
            tx.commit()?;
            records.push(movement_record(&m, minor, t, &trace_id, None));
            reporter.report_blocking(records);
            Ok(m)
        })
        .await?;
    Ok(Json(m))
}

fn load_movement(c: &rusqlite::Connection, id: &str) -> Result<Option<Movement>, AppError> {
    Ok(c.prepare_cached("SELECT movement_id, user_id, direction, amount_minor, currency, origin, record_id FROM movements WHERE movement_id = ?1")?.query_row(
        [id],
        |r| {
            let currency: String = r.get(4)?;
            Ok(Movement {
                movement_id: r.get(0)?,
                user_id: r.get(1)?,
                direction: r.get(2)?,
                amount: amount_text(r.get(3)?, &currency),
                currency,
                origin: r.get(5)?,
                record_id: r.get(6)?,
            })
        },
    )
    .optional()?)
}

async fn get_wallet(
    State(w): State<Arc<Wallet>>,
    Extension(cx): Extension<Cx>,
    Path(user_id): Path<String>,
) -> Result<Json<WalletView>, AppError> {
    w.svc
        .db(&cx, "SELECT wallets", move |c| {
            c.prepare_cached("SELECT currency, balance_minor FROM wallets WHERE user_id = ?1")?
                .query_row([&user_id], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
                })
                .optional()?
                .map(|(currency, balance)| WalletView {
                    account: account_of(&user_id),
                    balance: amount_text(balance, &currency),
                    user_id: user_id.clone(),
                    currency,
                })
                .ok_or_else(|| AppError::not_found(format!("no wallet for `{user_id}`")))
        })
        .await
        .map(Json)
}

/// Re-books a movement at its right amount: the balance moves by the difference and an
/// amending record is reported (`amends` = the movement's previous record id).
async fn correct(
    State(w): State<Arc<Wallet>>,
    Extension(cx): Extension<Cx>,
    Json(req): Json<Correction>,
) -> Result<Json<Movement>, AppError> {
    let trace_id = cx.trace_id();
    let reporter = w.svc.reporter.clone();
    let m = w
        .svc
        .db(&cx, "UPDATE movements (correction)", move |c| {
            let tx = c.transaction()?;
            let old = load_movement(&tx, &req.movement_id)?
                .ok_or_else(|| AppError::not_found(format!("no movement `{}`", req.movement_id)))?;
            let (old_minor, corrections): (i64, i64) = tx.prepare_cached("SELECT amount_minor, corrections FROM movements WHERE movement_id = ?1")?.query_row(
                [&req.movement_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            let (minor, _) = parse_amount(&req.amount, &old.currency)?;
            let (last_snapshot,): (i64,) = tx.prepare_cached("SELECT last_snapshot_ms FROM wallets WHERE user_id = ?1")?.query_row(
                [&old.user_id],
                |r| Ok((r.get(0)?,)),
            )?;
            let n = corrections + 1;
            let new = Movement {
                record_id: format!("wm-{}-c{n}", old.movement_id),
                amount: amount_text(minor, &old.currency),
                ..old.clone()
            };
            let t = now_ms().max(last_snapshot + 1);
            tx.prepare_cached("UPDATE movements SET amount_minor = ?2, record_id = ?3, corrections = ?4 WHERE movement_id = ?1")?.execute(
                rusqlite::params![new.movement_id, minor, new.record_id, n],
            )?;
            tx.prepare_cached("UPDATE wallets SET balance_minor = balance_minor + ?2, dirty = 1, last_movement_ms = ?3 WHERE user_id = ?1")?.execute(
                rusqlite::params![new.user_id, signed(&new.direction, minor - old_minor), t],
            )?;
            tx.commit()?;
            tracing::info!(movement = %new.movement_id, by = %new.record_id, reason = %req.reason, "movement corrected");
            reporter.report_blocking(vec![movement_record(&new, minor, t, &trace_id, Some(old.record_id.clone()))]);
            Ok(new)
        })
        .await?;
    Ok(Json(m))
}
