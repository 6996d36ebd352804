//! The accounting service: a double-entry ledger. Every transaction's debits equal its
//! credits; each entry updates its account's balance and is reported as an `entry` record.
//! A correction re-books an entry's amount and reports an amending record.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use rusqlite::OptionalExtension;
use serde::{Deserialize, Serialize};
use steadfast_model::Direction;

use crate::svc::{amount_text, now_ms, parse_amount, AppError, Rec, Svc};
use crate::telemetry::Cx;

pub const SOURCE: &str = "accounting";
/// Most legs in one transaction.
pub const LEGS_MAX: usize = 16;

pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS accounts (
  account TEXT NOT NULL,
  currency TEXT NOT NULL,
  balance_minor INTEGER NOT NULL,
  PRIMARY KEY (account, currency)
);
CREATE TABLE IF NOT EXISTS entries (
  record_id TEXT PRIMARY KEY,
  txn_id TEXT NOT NULL,
  txn_type TEXT NOT NULL,
  leg INTEGER NOT NULL,
  account TEXT NOT NULL,
  direction TEXT NOT NULL,
  amount_minor INTEGER NOT NULL,
  currency TEXT NOT NULL,
  created_ms INTEGER NOT NULL,
  superseded_by TEXT,
  trace_id TEXT
);
CREATE INDEX IF NOT EXISTS entries_txn ON entries (txn_id);";

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Leg {
    pub account: String,
    /// `debit` or `credit`.
    pub direction: String,
    pub amount: String,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TxnRequest {
    pub txn_id: String,
    /// `payment` or `refund`.
    pub txn_type: String,
    pub currency: String,
    pub legs: Vec<Leg>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Entry {
    pub record_id: String,
    pub txn_id: String,
    pub txn_type: String,
    pub leg: u32,
    pub account: String,
    pub direction: String,
    pub amount: String,
    pub currency: String,
    /// The trace of the request that booked the entry.
    #[serde(default)]
    pub trace_id: Option<String>,
}

/// A correction: the entry's right amount.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Correction {
    /// The entry's current record id.
    pub record_id: String,
    pub amount: String,
    pub reason: String,
}

pub struct Accounting {
    pub svc: Arc<Svc>,
}

impl Accounting {
    pub fn router(self: &Arc<Accounting>) -> Router {
        let business = Router::new()
            .route("/v1/transactions", post(book))
            .route("/v1/transactions/{txn_id}", get(get_txn))
            .route("/v1/accounts/{account}", get(get_account))
            .route("/v1/corrections", post(correct))
            .with_state(self.clone());
        self.svc.router(business, Router::new())
    }
}

/// `SELECT` of the columns [`row_entry`] reads, followed by `$tail`.
macro_rules! select_entries {
    ($tail:literal) => {
        concat!(
            "SELECT record_id, txn_id, txn_type, leg, account, direction, amount_minor, currency, trace_id, superseded_by FROM entries ",
            $tail
        )
    };
}

/// An entry row: the entry, its amount in minor units, the record that superseded it.
fn row_entry(r: &rusqlite::Row<'_>) -> rusqlite::Result<(Entry, i64, Option<String>)> {
    let currency: String = r.get(7)?;
    let minor: i64 = r.get(6)?;
    Ok((
        Entry {
            record_id: r.get(0)?,
            txn_id: r.get(1)?,
            txn_type: r.get(2)?,
            leg: r.get(3)?,
            account: r.get(4)?,
            direction: r.get(5)?,
            amount: amount_text(minor, &currency),
            currency,
            trace_id: r.get(8)?,
        },
        minor,
        r.get(9)?,
    ))
}

fn direction(text: &str) -> Result<Direction, AppError> {
    Direction::parse(text).ok_or_else(|| {
        AppError::bad(format!(
            "direction must be `debit` or `credit`, not `{text}`"
        ))
    })
}

fn entry_record(
    e: &Entry,
    amount_minor: i64,
    trace_id: &str,
    amends: Option<String>,
) -> steadfast_model::wire::WireRecord {
    let mut rec = Rec {
        record_id: e.record_id.clone(),
        source: SOURCE,
        kind: "entry",
        keys: vec![("txn_id", e.txn_id.clone())],
        amount_minor,
        currency: &e.currency,
        event_ms: now_ms(),
        trace_id,
        order_id: Some(e.txn_id.clone()),
    }
    .wire();
    rec.account = Some(e.account.clone());
    rec.direction = Some(direction(&e.direction).expect("stored directions are valid"));
    rec.amends = amends;
    rec.attributes.insert("txn_type".into(), e.txn_type.clone());
    rec.attributes.insert("leg".into(), e.leg.to_string());
    rec
}

async fn book(
    State(a): State<Arc<Accounting>>,
    Extension(cx): Extension<Cx>,
    Json(req): Json<TxnRequest>,
) -> Result<Json<Vec<Entry>>, AppError> {
    if req.legs.len() < 2 || req.legs.len() > LEGS_MAX {
        return Err(AppError::bad(format!(
            "a transaction has 2 to {LEGS_MAX} legs"
        )));
    }
    let mut legs = Vec::with_capacity(req.legs.len());
    let mut net: i128 = 0;
    for l in &req.legs {
        let (minor, _) = parse_amount(&l.amount, &req.currency)?;
        let d = direction(&l.direction)?;
        net += d.sign(minor) as i128;
        legs.push((l.account.clone(), d, minor));
    }
    if net != 0 {
        return Err(AppError::bad(format!(
            "debits and credits of `{}` differ by {} {}",
            req.txn_id,
            amount_text(net as i64, &req.currency),
            req.currency
        )));
    }
    let trace_id = cx.trace_id();
    let reporter = a.svc.reporter.clone();
    let entries = a
        .svc
        .db(&cx, "INSERT entries", move |c| {
            let tx = c.transaction()?;
            let known: i64 = tx.prepare_cached("SELECT count(*) FROM entries WHERE txn_id = ?1")?.query_row(
                [&req.txn_id],
                |r| r.get(0),
            )?;
            let entries: Vec<Entry> = legs
                .iter()
                .enumerate()
                .map(|(i, (account, d, minor))| Entry {
                    record_id: format!("acc-{}-{i}", req.txn_id),
                    txn_id: req.txn_id.clone(),
                    txn_type: req.txn_type.clone(),
                    leg: i as u32,
                    account: account.clone(),
                    direction: d.as_str().into(),
                    amount: amount_text(*minor, &req.currency),
                    currency: req.currency.clone(),
                    trace_id: Some(trace_id.clone()),
                })
                .collect();
            if known > 0 {
                // A retry: the transaction is booked already.
                return Ok(entries);
            }
            let now = now_ms();
            for (e, (_, d, minor)) in entries.iter().zip(&legs) {
                tx.prepare_cached("INSERT INTO entries VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, NULL, ?10)")?.execute(
                    rusqlite::params![e.record_id, e.txn_id, e.txn_type, e.leg, e.account, e.direction, minor, e.currency, now, trace_id],
                )?;
                tx.prepare_cached("INSERT INTO accounts VALUES (?1, ?2, ?3) ON CONFLICT (account, currency) DO UPDATE SET balance_minor = balance_minor + ?3")?.execute(
                    rusqlite::params![e.account, e.currency, d.sign(*minor)],
                )?;
            }
            tx.commit()?;
            reporter.report_blocking(
                entries
                    .iter()
                    .zip(&legs)
                    .map(|(e, (_, _, minor))| entry_record(e, *minor, &trace_id, None))
                    .collect(),
            );
            Ok(entries)
        })
        .await?;
    Ok(Json(entries))
}

async fn get_txn(
    State(a): State<Arc<Accounting>>,
    Extension(cx): Extension<Cx>,
    Path(txn_id): Path<String>,
) -> Result<Json<Vec<Entry>>, AppError> {
    let entries = a
        .svc
        .db(&cx, "SELECT entries", move |c| {
            let mut st = c.prepare_cached(select_entries!(
                "WHERE txn_id = ?1 AND superseded_by IS NULL ORDER BY leg"
            ))?;
            let rows = st.query_map([&txn_id], |r| row_entry(r).map(|(e, _, _)| e))?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await?;
    if entries.is_empty() {
        return Err(AppError::not_found("no such transaction"));
    }
    Ok(Json(entries))
}

#[derive(Serialize)]
struct Balance {
    account: String,
    currency: String,
    balance: String,
}

async fn get_account(
    State(a): State<Arc<Accounting>>,
    Extension(cx): Extension<Cx>,
    Path(account): Path<String>,
) -> Result<Json<Vec<Balance>>, AppError> {
    a.svc
        .db(&cx, "SELECT accounts", move |c| {
            let mut st = c.prepare_cached(
                "SELECT account, currency, balance_minor FROM accounts WHERE account = ?1 ORDER BY currency",
            )?;
            let rows = st.query_map([&account], |r| {
                let currency: String = r.get(1)?;
                Ok(Balance {
                    account: r.get(0)?,
                    balance: amount_text(r.get(2)?, &currency),
                    currency,
                })
            })?;
            let out = rows.collect::<Result<Vec<_>, _>>()?;
            if out.is_empty() {
                return Err(AppError::not_found(format!("no account `{account}`")));
            }
            Ok(out)
        })
        .await
        .map(Json)
}

/// Re-books an entry at its right amount: the account balance moves by the difference,
/// and an amending record (`amends` = the entry's previous record id) is reported.
async fn correct(
    State(a): State<Arc<Accounting>>,
    Extension(cx): Extension<Cx>,
    Json(req): Json<Correction>,
) -> Result<Json<Entry>, AppError> {
    let trace_id = cx.trace_id();
    let reporter = a.svc.reporter.clone();
    let entry = a
        .svc
        .db(&cx, "UPDATE entries (correction)", move |c| {
            let tx = c.transaction()?;
            let old = tx
                .prepare_cached(select_entries!("WHERE record_id = ?1"))?
                .query_row([&req.record_id], row_entry)
                .optional()?
                .ok_or_else(|| AppError::not_found(format!("no entry `{}`", req.record_id)))?;
            let (old, old_minor, superseded) = old;
            if let Some(by) = superseded {
                return Err(AppError::conflict(format!(
                    "entry `{}` was already corrected by `{by}`; correct that one",
                    req.record_id
                )));
            }
            let (minor, _) = parse_amount(&req.amount, &old.currency)?;
            let count: i64 = tx.prepare_cached("SELECT count(*) FROM entries WHERE txn_id = ?1 AND leg = ?2")?.query_row(
                rusqlite::params![old.txn_id, old.leg],
                |r| r.get(0),
            )?;
            let new = Entry {
                record_id: format!("acc-{}-{}-c{count}", old.txn_id, old.leg),
                amount: amount_text(minor, &old.currency),
                trace_id: Some(trace_id.clone()),
                ..old.clone()
            };
            let d = direction(&old.direction)?;
            tx.prepare_cached("UPDATE entries SET superseded_by = ?2 WHERE record_id = ?1")?.execute(
                rusqlite::params![old.record_id, new.record_id],
            )?;
            tx.prepare_cached("INSERT INTO entries VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, NULL, ?10)")?.execute(
                rusqlite::params![new.record_id, new.txn_id, new.txn_type, new.leg, new.account, new.direction, minor, new.currency, now_ms(), trace_id],
            )?;
            tx.prepare_cached("UPDATE accounts SET balance_minor = balance_minor + ?3 WHERE account = ?1 AND currency = ?2")?.execute(
                rusqlite::params![new.account, new.currency, d.sign(minor - old_minor)],
            )?;
            tx.commit()?;
            tracing::info!(entry = %old.record_id, by = %new.record_id, reason = %req.reason, "entry corrected");
            reporter.report_blocking(vec![entry_record(&new, minor, &trace_id, Some(old.record_id.clone()))]);
            Ok(new)
        })
        .await?;
    Ok(Json(entry))
}
