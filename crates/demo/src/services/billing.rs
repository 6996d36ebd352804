//! The billing service: consumer-credit bills, paid later, in one go or in instalments;
//! credit notes for refunds; corrections that re-book a bill at its right amount.
//!
//! Its failure modes include `corrupt_amount_minor`: every bill is written with that many
//! minor units added, the corrupted downstream write that fund verification must catch.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use rusqlite::OptionalExtension;
use serde::{Deserialize, Serialize};
use steadfast_model::wire::WireRecord;

use crate::svc::{amount_text, now_ms, parse_amount, AppError, Rec, Svc};
use crate::telemetry::Cx;

pub const SOURCE: &str = "billing";

pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS bills (
  biz_id TEXT PRIMARY KEY,
  user_id TEXT NOT NULL,
  payer_account TEXT NOT NULL,
  amount_minor INTEGER NOT NULL,
  currency TEXT NOT NULL,
  status TEXT NOT NULL,
  instalments INTEGER NOT NULL,
  record_id TEXT NOT NULL,
  corrections INTEGER NOT NULL DEFAULT 0,
  created_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS instalments (
  biz_id TEXT NOT NULL REFERENCES bills(biz_id),
  seq INTEGER NOT NULL,
  amount_minor INTEGER NOT NULL,
  record_id TEXT NOT NULL,
  PRIMARY KEY (biz_id, seq)
);
CREATE TABLE IF NOT EXISTS credit_notes (
  refund_no TEXT PRIMARY KEY,
  biz_id TEXT NOT NULL REFERENCES bills(biz_id),
  amount_minor INTEGER NOT NULL,
  created_ms INTEGER NOT NULL
);";

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BillRequest {
    pub biz_id: String,
    pub user_id: String,
    pub payer_account: String,
    pub amount: String,
    pub currency: String,
    #[serde(default = "one")]
    pub instalments: u32,
}

fn one() -> u32 {
    1
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Bill {
    pub biz_id: String,
    pub user_id: String,
    pub payer_account: String,
    pub amount: String,
    pub currency: String,
    pub status: String,
    pub instalments: Vec<String>,
    pub record_id: String,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreditNoteRequest {
    pub refund_no: String,
    pub biz_id: String,
    pub amount: String,
    pub currency: String,
}

/// A correction: the bill's right amount.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Correction {
    pub biz_id: String,
    pub amount: String,
    pub reason: String,
}

pub struct Billing {
    pub svc: Arc<Svc>,
}

impl Billing {
    pub fn router(self: &Arc<Billing>) -> Router {
        let business = Router::new()
            .route("/v1/bills", post(create))
            .route("/v1/bills/{biz_id}", get(get_bill))
            .route("/v1/credit-notes", post(credit_note))
            .route("/v1/corrections", post(correct))
            .with_state(self.clone());
        self.svc.router(business, Router::new())
    }
}

/// Splits an amount into `n` instalments that add up to it exactly: the remainder goes
/// to the first.
pub fn split(amount_minor: i64, n: u32) -> Vec<i64> {
    let n = n.max(1) as i64;
    let base = amount_minor / n;
    let mut parts = vec![base; n as usize];
    parts[0] += amount_minor - base * n;
    parts
}

struct Stored {
    biz_id: String,
    user_id: String,
    payer_account: String,
    amount_minor: i64,
    currency: String,
    status: String,
    record_id: String,
}

fn bill_record(b: &Stored, trace_id: &str, amends: Option<String>) -> WireRecord {
    let mut rec = Rec {
        record_id: b.record_id.clone(),
        source: SOURCE,
        kind: "bill",
        keys: vec![("biz_id", b.biz_id.clone())],
        amount_minor: b.amount_minor,
        currency: &b.currency,
        event_ms: now_ms(),
        trace_id,
        order_id: Some(b.biz_id.clone()),
    }
    .wire();
    rec.status = Some(b.status.clone());
    rec.amends = amends;
    rec.attributes.insert("user_id".into(), b.user_id.clone());
    rec.attributes
        .insert("payer_account".into(), b.payer_account.clone());
    rec
}

fn instalment_record(
    b: &Stored,
    seq: usize,
    minor: i64,
    record_id: String,
    trace_id: &str,
    amends: Option<String>,
) -> WireRecord {
    let mut rec = Rec {
        record_id,
        source: SOURCE,
        kind: "instalment",
        keys: vec![("biz_id", b.biz_id.clone()), ("seq", seq.to_string())],
        amount_minor: minor,
        currency: &b.currency,
        event_ms: now_ms(),
        trace_id,
        order_id: Some(b.biz_id.clone()),
    }
    .wire();
    rec.amends = amends;
    rec
}

async fn create(
    State(b): State<Arc<Billing>>,
    Extension(cx): Extension<Cx>,
    Json(req): Json<BillRequest>,
) -> Result<Json<Bill>, AppError> {
    let (minor, _) = parse_amount(&req.amount, &req.currency)?;
    if req.instalments == 0 || req.instalments > super::core::INSTALMENTS_MAX {
        return Err(AppError::bad("instalments out of range"));
    }
    // The test switch: the amount actually written differs from the one asked for.
    let written = minor.saturating_add(b.svc.faults.corrupt_amount_minor());
    let trace_id = cx.trace_id();
    let reporter = b.svc.reporter.clone();
    let bill = b
        .svc
        .db(&cx, "INSERT bills", move |c| {
            let tx = c.transaction()?;
            let exists: bool = tx
                .prepare_cached("SELECT 1 FROM bills WHERE biz_id = ?1")?
                .query_row([&req.biz_id], |_| Ok(()))
                .optional()?
                .is_some();
            let status = if req.instalments > 1 {
                "INSTALMENT"
            } else {
                "BILLED"
            };
            let stored = Stored {
                biz_id: req.biz_id.clone(),
                user_id: req.user_id.clone(),
                payer_account: req.payer_account.clone(),
                amount_minor: written,
                currency: req.currency.clone(),
                status: status.into(),
                record_id: format!("bill-{}", req.biz_id),
            };
            if !exists {
                tx.prepare_cached(
                    "INSERT INTO bills VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 0, ?9)",
                )?
                .execute(rusqlite::params![
                    stored.biz_id,
                    stored.user_id,
                    stored.payer_account,
                    written,
                    stored.currency,
                    status,
                    req.instalments,
                    stored.record_id,
                    now_ms()
                ])?;
                let mut records = vec![bill_record(&stored, &trace_id, None)];
                if req.instalments > 1 {
                    for (i, part) in split(written, req.instalments).into_iter().enumerate() {
                        let id = format!("bill-{}-i{}", stored.biz_id, i + 1);
                        tx.prepare_cached("INSERT INTO instalments VALUES (?1, ?2, ?3, ?4)")?
                            .execute(rusqlite::params![stored.biz_id, i as i64 + 1, part, id])?;
                        records.push(instalment_record(&stored, i + 1, part, id, &trace_id, None));
                    }
                }
                tx.commit()?;
                reporter.report_blocking(records);
            } else {
                tx.commit()?;
            }
            load(c, &req.biz_id)
        })
        .await?;
    Ok(Json(bill))
}

fn load(c: &rusqlite::Connection, biz_id: &str) -> Result<Bill, AppError> {
    let (stored, _) = load_stored(c, biz_id)?;
    let mut st =
        c.prepare_cached("SELECT amount_minor FROM instalments WHERE biz_id = ?1 ORDER BY seq")?;
    let parts = st
        .query_map([biz_id], |r| r.get::<_, i64>(0))?
        .map(|m| m.map(|m| amount_text(m, &stored.currency)))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Bill {
        biz_id: stored.biz_id,
        user_id: stored.user_id,
        payer_account: stored.payer_account,
        amount: amount_text(stored.amount_minor, &stored.currency),
        currency: stored.currency,
        status: stored.status,
        instalments: parts,
        record_id: stored.record_id,
    })
}

fn load_stored(c: &rusqlite::Connection, biz_id: &str) -> Result<(Stored, i64), AppError> {
    c.prepare_cached("SELECT biz_id, user_id, payer_account, amount_minor, currency, status, record_id, corrections FROM bills WHERE biz_id = ?1")?.query_row(
        [biz_id],
        |r| {
            Ok((
                Stored {
                    biz_id: r.get(0)?,
                    user_id: r.get(1)?,
                    payer_account: r.get(2)?,
                    amount_minor: r.get(3)?,
                    currency: r.get(4)?,
                    status: r.get(5)?,
                    record_id: r.get(6)?,
                },
                r.get(7)?,
            ))
        },
    )
    .optional()?
    .ok_or_else(|| AppError::not_found(format!("no bill `{biz_id}`")))
}

async fn get_bill(
    State(b): State<Arc<Billing>>,
    Extension(cx): Extension<Cx>,
    Path(biz_id): Path<String>,
) -> Result<Json<Bill>, AppError> {
    b.svc
        .db(&cx, "SELECT bills", move |c| load(c, &biz_id))
        .await
        .map(Json)
}

async fn credit_note(
    State(b): State<Arc<Billing>>,
    Extension(cx): Extension<Cx>,
    Json(req): Json<CreditNoteRequest>,
) -> Result<Json<serde_json::Value>, AppError> {
    let (minor, _) = parse_amount(&req.amount, &req.currency)?;
    let trace_id = cx.trace_id();
    let reporter = b.svc.reporter.clone();
    b.svc
        .db(&cx, "INSERT credit_notes", move |c| {
            let tx = c.transaction()?;
            let exists = tx
                .prepare_cached("SELECT 1 FROM credit_notes WHERE refund_no = ?1")?
                .query_row([&req.refund_no], |_| Ok(()))
                .optional()?
                .is_some();
            if !exists {
                let (bill, _) = load_stored(&tx, &req.biz_id)?;
                if bill.currency != req.currency || minor > bill.amount_minor {
                    return Err(AppError::conflict(
                        "a credit note cannot exceed its bill or change its currency",
                    ));
                }
                tx.prepare_cached("INSERT INTO credit_notes VALUES (?1, ?2, ?3, ?4)")?
                    .execute(rusqlite::params![
                        req.refund_no,
                        req.biz_id,
                        minor,
                        now_ms()
                    ])?;
                let mut rec = Rec {
                    record_id: format!("cn-{}", req.refund_no),
                    source: SOURCE,
                    kind: "credit_note",
                    keys: vec![("refund_no", req.refund_no.clone())],
                    amount_minor: minor,
                    currency: &req.currency,
                    event_ms: now_ms(),
                    trace_id: &trace_id,
                    order_id: Some(req.refund_no.clone()),
                }
                .wire();
                rec.attributes.insert("biz_id".into(), req.biz_id.clone());
                tx.commit()?;
                reporter.report_blocking(vec![rec]);
            }
            Ok(serde_json::json!({ "refund_no": req.refund_no, "biz_id": req.biz_id }))
        })
        .await
        .map(Json)
}

/// Re-books a bill at its right amount. The bill record is amended (`amends` = its
/// previous record id); an instalment plan is split again and each instalment amended.
async fn correct(
    State(b): State<Arc<Billing>>,
    Extension(cx): Extension<Cx>,
    Json(req): Json<Correction>,
) -> Result<Json<Bill>, AppError> {
    let trace_id = cx.trace_id();
    let reporter = b.svc.reporter.clone();
    let bill = b
        .svc
        .db(&cx, "UPDATE bills (correction)", move |c| {
            let tx = c.transaction()?;
            let (old, corrections) = load_stored(&tx, &req.biz_id)?;
            let (minor, _) = parse_amount(&req.amount, &old.currency)?;
            let n = corrections + 1;
            let new = Stored {
                amount_minor: minor,
                record_id: format!("bill-{}-c{n}", old.biz_id),
                biz_id: old.biz_id.clone(),
                user_id: old.user_id.clone(),
                payer_account: old.payer_account.clone(),
                currency: old.currency.clone(),
                status: old.status.clone(),
            };
            tx.prepare_cached("UPDATE bills SET amount_minor = ?2, record_id = ?3, corrections = ?4 WHERE biz_id = ?1")?.execute(
                rusqlite::params![new.biz_id, minor, new.record_id, n],
            )?;
            let mut records = vec![bill_record(&new, &trace_id, Some(old.record_id.clone()))];
            let old_parts: Vec<(i64, String)> = {
                let mut st = tx.prepare_cached("SELECT seq, record_id FROM instalments WHERE biz_id = ?1 ORDER BY seq")?;
                let rows = st.query_map([&new.biz_id], |r| Ok((r.get(0)?, r.get(1)?)))?;
                rows.collect::<Result<_, _>>()?
            };
            if !old_parts.is_empty() {
                let parts = split(minor, old_parts.len() as u32);
                for ((seq, old_id), part) in old_parts.into_iter().zip(parts) {
                    let id = format!("bill-{}-i{seq}-c{n}", new.biz_id);
                    tx.prepare_cached("UPDATE instalments SET amount_minor = ?3, record_id = ?4 WHERE biz_id = ?1 AND seq = ?2")?.execute(
                        rusqlite::params![new.biz_id, seq, part, id],
                    )?;
                    records.push(instalment_record(&new, seq as usize, part, id, &trace_id, Some(old_id)));
                }
            }
            tx.commit()?;
            tracing::info!(bill = %new.biz_id, by = %new.record_id, reason = %req.reason, "bill corrected");
            reporter.report_blocking(records);
            load(c, &new.biz_id)
        })
        .await?;
    Ok(Json(bill))
}

#[cfg(test)]
mod tests {
    #[test]
    fn instalments_add_up_exactly() {
        for (amount, n) in [(100, 3), (1, 12), (999_999, 7), (0, 3), (-10, 3)] {
            let parts = super::split(amount, n);
            assert_eq!(parts.len(), n as usize);
            assert_eq!(parts.iter().sum::<i64>(), amount);
        }
    }
}
