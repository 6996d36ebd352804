//! The payment core: takes payments, top-ups, withdrawals and refunds, books them with the
//! downstream services (wallet, accounting, billing) over HTTP, and reports each payment
//! and refund with its final status.
//!
//! Its link to billing goes through a configurable upstream URL
//! (`GET`/`POST /admin/upstreams`), so a fault-injection proxy can be put in the way.

use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use rusqlite::OptionalExtension;
use serde::{Deserialize, Serialize};
use steadfast_model::Direction;

use super::gateway::OrderAnswer;
use super::notification::Notice;
use crate::svc::{now_ms, parse_amount, AppError, Rec, Svc};
use crate::telemetry::Cx;
use crate::traffic::Channel;

pub const SOURCE: &str = "payment-core";

pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS payments (
  order_no TEXT PRIMARY KEY,
  type TEXT NOT NULL,
  user_id TEXT NOT NULL,
  account TEXT NOT NULL,
  channel TEXT NOT NULL,
  merchant TEXT,
  amount_minor INTEGER NOT NULL,
  currency TEXT NOT NULL,
  instalments INTEGER NOT NULL,
  status TEXT NOT NULL,
  reason TEXT,
  created_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS refunds (
  refund_no TEXT PRIMARY KEY,
  order_no TEXT NOT NULL UNIQUE REFERENCES payments(order_no),
  amount_minor INTEGER NOT NULL,
  currency TEXT NOT NULL,
  status TEXT NOT NULL,
  reason TEXT,
  created_ms INTEGER NOT NULL
);";

/// Where the payment core sends its downstream calls.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Upstreams {
    pub billing: String,
    pub accounting: String,
    pub wallet: String,
    pub notification: String,
}

/// Changes to the upstreams; only `billing` can be redirected at run time.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamChange {
    pub billing: String,
}

pub struct Core {
    pub svc: Arc<Svc>,
    upstreams: Mutex<Upstreams>,
    notices: tokio::sync::mpsc::Sender<Notice>,
}

/// Notifications waiting to be sent; a full queue makes payments wait.
pub const NOTICES_QUEUED_MAX: usize = 10_000;
/// Most notifications in one call to the notification service.
pub const NOTICES_BATCH_MAX: usize = 500;
/// How long a notification waits for companions.
pub const NOTICES_LINGER_MS: u64 = 50;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PaymentRequest {
    pub order_no: String,
    /// `pay`, `topup` or `withdraw`.
    #[serde(rename = "type")]
    pub op: String,
    pub user_id: String,
    pub account: String,
    pub amount: String,
    pub currency: String,
    #[serde(default)]
    pub channel: Option<String>,
    #[serde(default)]
    pub merchant: Option<String>,
    #[serde(default = "one")]
    pub instalments: u32,
    #[serde(default)]
    pub notify: bool,
}

fn one() -> u32 {
    1
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefundRequest {
    pub refund_no: String,
    pub order_no: String,
    pub amount: String,
    pub currency: String,
    #[serde(default)]
    pub notify: bool,
}

/// A stored payment, as `GET /v1/payments/{order_no}` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct Payment {
    pub order_no: String,
    #[serde(rename = "type")]
    pub op: String,
    pub user_id: String,
    pub account: String,
    pub channel: String,
    pub merchant: Option<String>,
    pub amount_minor: i64,
    pub currency: String,
    pub instalments: u32,
    pub status: String,
    pub reason: Option<String>,
}

/// Instalment plans offered.
pub const INSTALMENTS_MAX: u32 = 24;

impl Core {
    /// The core and its notifier task, which sends queued notifications in batches
    /// until `stop`, then sends what is left and ends.
    pub fn new(
        svc: Arc<Svc>,
        upstreams: Upstreams,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> (Arc<Core>, tokio::task::JoinHandle<()>) {
        let (tx, rx) = tokio::sync::mpsc::channel(NOTICES_QUEUED_MAX);
        let core = Arc::new(Core {
            svc,
            upstreams: Mutex::new(upstreams),
            notices: tx,
        });
        let task = tokio::spawn(notifier(core.clone(), rx, stop));
        (core, task)
    }

    pub fn router(self: &Arc<Core>) -> Router {
        let business = Router::new()
            .route("/v1/payments", post(pay))
            .route("/v1/payments/{order_no}", get(get_payment))
            .route("/v1/refunds", post(refund))
            .with_state(self.clone());
        let admin = Router::new()
            .route("/admin/upstreams", get(get_upstreams).post(set_upstreams))
            .with_state(self.clone());
        self.svc.router(business, admin)
    }

    /// Sends billing calls to `url` from now on (a fault-injection proxy, or billing
    /// itself again).
    pub fn set_billing_upstream(&self, url: &str) {
        self.upstreams.lock().expect("upstreams lock").billing =
            url.trim_end_matches('/').to_string();
    }

    fn upstreams(&self) -> Upstreams {
        self.upstreams.lock().expect("upstreams lock").clone()
    }

    /// Marks the payment final and queues its record, in one database call so records
    /// leave in commit order.
    async fn finish(
        &self,
        cx: &Cx,
        p: Payment,
        status: &'static str,
        reason: Option<String>,
    ) -> Result<OrderAnswer, AppError> {
        let trace_id = cx.trace_id();
        let reporter = self.svc.reporter.clone();
        let t = trace_id.clone();
        let r = reason.clone();
        let order_no = p.order_no.clone();
        self.svc
            .db(cx, "UPDATE payments", move |c| {
                c.prepare_cached(
                    "UPDATE payments SET status = ?2, reason = ?3 WHERE order_no = ?1",
                )?
                .execute(rusqlite::params![p.order_no, status, r])?;
                let mut rec = Rec {
                    record_id: format!("pc-{}", p.order_no),
                    source: SOURCE,
                    kind: "payment",
                    keys: vec![("order_no", p.order_no.clone())],
                    amount_minor: p.amount_minor,
                    currency: &p.currency,
                    event_ms: now_ms(),
                    trace_id: &t,
                    order_id: Some(p.order_no.clone()),
                }
                .wire();
                rec.account = Some(p.account.clone());
                rec.counter_account = p.merchant.clone();
                rec.status = Some(status.into());
                rec.attributes.insert("user_id".into(), p.user_id.clone());
                rec.attributes.insert("channel".into(), p.channel.clone());
                rec.attributes.insert("type".into(), p.op.clone());
                if let Some(m) = &p.merchant {
                    rec.attributes.insert("merchant".into(), m.clone());
                }
                reporter.report_blocking(vec![rec]);
                Ok(())
            })
            .await?;
        Ok(OrderAnswer {
            order_no,
            status: status.into(),
            reason,
            trace_id,
        })
    }
}

/// The ledger legs of a movement of money: (account, direction) pairs, debit first.
fn legs(
    op: &str,
    channel: Channel,
    user: &str,
    merchant: &str,
    currency: &str,
) -> [(String, Direction); 2] {
    let card = format!("CARD-CLEARING-{currency}");
    let wallet = format!("WALLET-{user}");
    let merchant = format!("MERCHANT-{merchant}");
    match (op, channel) {
        ("topup", _) => [(card, Direction::Debit), (wallet, Direction::Credit)],
        ("withdraw", _) => [(wallet, Direction::Debit), (card, Direction::Credit)],
        (_, Channel::Card) => [(card, Direction::Debit), (merchant, Direction::Credit)],
        (_, Channel::Credit) => [
            (format!("CREDIT-RECEIVABLE-{user}"), Direction::Debit),
            (merchant, Direction::Credit),
        ],
        (_, Channel::Wallet) => [(wallet, Direction::Debit), (merchant, Direction::Credit)],
    }
}

fn legs_json(legs: &[(String, Direction); 2], amount: &str) -> serde_json::Value {
    serde_json::Value::Array(
        legs.iter()
            .map(|(a, d)| {
                serde_json::json!({
                    "account": a,
                    "direction": d.as_str(),
                    "amount": amount,
                })
            })
            .collect(),
    )
}

async fn pay(
    State(core): State<Arc<Core>>,
    Extension(cx): Extension<Cx>,
    Json(req): Json<PaymentRequest>,
) -> Result<Json<OrderAnswer>, AppError> {
    let (amount_minor, _) = parse_amount(&req.amount, &req.currency)?;
    if amount_minor <= 0 {
        return Err(AppError::bad("amount must be positive"));
    }
    let channel = match req.op.as_str() {
        "pay" => req
            .channel
            .as_deref()
            .and_then(Channel::parse)
            .ok_or_else(|| AppError::bad("a payment needs channel `card`, `credit` or `wallet`"))?,
        "topup" | "withdraw" => Channel::Wallet,
        other => {
            return Err(AppError::bad(format!(
                "type must be `pay`, `topup` or `withdraw`, not `{other}`"
            )))
        }
    };
    if req.op == "pay" && req.merchant.is_none() {
        return Err(AppError::bad("a payment needs a merchant"));
    }
    if req.instalments == 0 || req.instalments > INSTALMENTS_MAX {
        return Err(AppError::bad(format!(
            "instalments must be 1 to {INSTALMENTS_MAX}"
        )));
    }
    if req.instalments > 1 && channel != Channel::Credit {
        return Err(AppError::bad(
            "only credit payments can be paid in instalments",
        ));
    }
    let p = Payment {
        order_no: req.order_no.clone(),
        op: req.op.clone(),
        user_id: req.user_id.clone(),
        account: req.account.clone(),
        channel: channel.as_str().into(),
        merchant: req.merchant.clone(),
        amount_minor,
        currency: req.currency.clone(),
        instalments: req.instalments,
        status: "PENDING".into(),
        reason: None,
    };
    let row = p.clone();
    let existing = core
        .svc
        .db(&cx, "INSERT payments", move |c| {
            let tx = c.transaction()?;
            let existing: Option<(String, Option<String>)> = tx
                .prepare_cached("SELECT status, reason FROM payments WHERE order_no = ?1")?.query_row(
                    [&row.order_no],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            if existing.is_none() {
                tx.prepare_cached("INSERT INTO payments VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 'PENDING', NULL, ?10)")?.execute(
                    rusqlite::params![
                        row.order_no, row.op, row.user_id, row.account, row.channel,
                        row.merchant, row.amount_minor, row.currency, row.instalments, now_ms()
                    ],
                )?;
            }
            tx.commit()?;
            Ok(existing)
        })
        .await?;
    if let Some((status, reason)) = existing {
        // A retry of a known order: answer what happened, do nothing again.
        return Ok(Json(OrderAnswer {
            order_no: req.order_no,
            status,
            reason,
            trace_id: cx.trace_id(),
        }));
    }
    let up = core.upstreams();
    let merchant = req.merchant.clone().unwrap_or_default();
    if channel == Channel::Wallet {
        let direction = if req.op == "topup" { "credit" } else { "debit" };
        let origin = if req.op == "pay" {
            "payment"
        } else {
            req.op.as_str()
        };
        let body = serde_json::json!({
            "movement_id": req.order_no,
            "user_id": req.user_id,
            "direction": direction,
            "amount": req.amount,
            "currency": req.currency,
            "origin": origin,
        });
        let res: Result<serde_json::Value, _> = core
            .svc
            .call(&cx, &format!("{}/v1/movements", up.wallet), &body)
            .await;
        if let Err(e) = res {
            let answer = core
                .finish(&cx, p, "FAILED", Some(format!("wallet: {e}")))
                .await?;
            return Ok(Json(answer));
        }
    }
    let legs = legs(&req.op, channel, &req.user_id, &merchant, &req.currency);
    let body = serde_json::json!({
        "txn_id": req.order_no,
        "txn_type": "payment",
        "currency": req.currency,
        "legs": legs_json(&legs, &req.amount),
    });
    let res: Result<serde_json::Value, _> = core
        .svc
        .call(&cx, &format!("{}/v1/transactions", up.accounting), &body)
        .await;
    if let Err(e) = res {
        let answer = core
            .finish(&cx, p, "FAILED", Some(format!("accounting: {e}")))
            .await?;
        return Ok(Json(answer));
    }
    if channel == Channel::Credit {
        let body = serde_json::json!({
            "biz_id": req.order_no,
            "user_id": req.user_id,
            "payer_account": req.account,
            "amount": req.amount,
            "currency": req.currency,
            "instalments": req.instalments,
        });
        let res: Result<serde_json::Value, _> = core
            .svc
            .call(&cx, &format!("{}/v1/bills", up.billing), &body)
            .await;
        if let Err(e) = res {
            let answer = core
                .finish(&cx, p, "FAILED", Some(format!("billing: {e}")))
                .await?;
            return Ok(Json(answer));
        }
    }
    let answer = core.finish(&cx, p, "SUCCESS", None).await?;
    if req.notify {
        notify(
            &core,
            &req.user_id,
            &req.order_no,
            format!("{} {} {}", req.op, req.amount, req.currency),
        )
        .await;
    }
    Ok(Json(answer))
}

/// Queues a notification. Notifications leave the payment path: they go out in batches
/// from the notifier, as a payment platform's messaging does; a lost one is no fund
/// problem.
async fn notify(core: &Core, user: &str, order_no: &str, text: String) {
    let notice = Notice {
        user_id: user.to_string(),
        order_no: order_no.to_string(),
        text,
    };
    if core.notices.send(notice).await.is_err() {
        tracing::debug!("notifier stopped; a notification was dropped");
    }
}

async fn notifier(
    core: Arc<Core>,
    mut rx: tokio::sync::mpsc::Receiver<Notice>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut batch = Vec::with_capacity(NOTICES_BATCH_MAX);
    while crate::svc::next_batch(
        &mut rx,
        &mut stop,
        &mut batch,
        NOTICES_BATCH_MAX,
        |_| 1,
        NOTICES_LINGER_MS,
    )
    .await
    {
        let url = format!("{}/v1/notify", core.upstreams().notification);
        let cx = Cx(opentelemetry::Context::new());
        let res: Result<serde_json::Value, _> = core.svc.call(&cx, &url, &batch).await;
        if let Err(e) = res {
            tracing::debug!(error = %e, dropped = batch.len(), "notifications failed");
        }
    }
}

async fn refund(
    State(core): State<Arc<Core>>,
    Extension(cx): Extension<Cx>,
    Json(req): Json<RefundRequest>,
) -> Result<Json<OrderAnswer>, AppError> {
    let (amount_minor, _) = parse_amount(&req.amount, &req.currency)?;
    if amount_minor <= 0 {
        return Err(AppError::bad("amount must be positive"));
    }
    let r = req.clone();
    let found = core
        .svc
        .db(&cx, "INSERT refunds", move |c| {
            let tx = c.transaction()?;
            if let Some((status, reason)) = tx
                .prepare_cached("SELECT status, reason FROM refunds WHERE refund_no = ?1")?.query_row(
                    [&r.refund_no],
                    |x| Ok((x.get::<_, String>(0)?, x.get::<_, Option<String>>(1)?)),
                )
                .optional()?
            {
                return Ok(Err((status, reason)));
            }
            let paid = tx
                .prepare_cached("SELECT order_no, type, user_id, account, channel, merchant, amount_minor, currency, instalments, status, reason FROM payments WHERE order_no = ?1")?.query_row(
                    [&r.order_no],
                    row_payment,
                )
                .optional()?
                .ok_or_else(|| AppError::not_found(format!("no payment `{}` here", r.order_no)))?;
            if paid.status != "SUCCESS" || paid.op != "pay" {
                return Err(AppError::conflict(format!(
                    "payment `{}` is {} ({}), not a successful payment",
                    r.order_no, paid.status, paid.op
                )));
            }
            if paid.currency != r.currency || amount_minor > paid.amount_minor {
                return Err(AppError::conflict("a refund cannot exceed the payment or change its currency"));
            }
            let done: bool = tx
                .prepare_cached("SELECT count(*) FROM refunds WHERE order_no = ?1")?.query_row( [&r.order_no], |x| {
                    x.get::<_, i64>(0)
                })
                .map(|n| n > 0)?;
            if done {
                return Err(AppError::conflict(format!("payment `{}` was already refunded", r.order_no)));
            }
            tx.prepare_cached("INSERT INTO refunds VALUES (?1, ?2, ?3, ?4, 'PENDING', NULL, ?5)")?.execute(
                rusqlite::params![r.refund_no, r.order_no, amount_minor, r.currency, now_ms()],
            )?;
            tx.commit()?;
            Ok(Ok(paid))
        })
        .await?;
    let paid = match found {
        Ok(p) => p,
        Err((status, reason)) => {
            return Ok(Json(OrderAnswer {
                order_no: req.refund_no,
                status,
                reason,
                trace_id: cx.trace_id(),
            }))
        }
    };
    let channel = Channel::parse(&paid.channel).unwrap_or(Channel::Card);
    let up = core.upstreams();
    let mut failure = None;
    if channel == Channel::Wallet {
        let body = serde_json::json!({
            "movement_id": req.refund_no,
            "user_id": paid.user_id,
            "direction": "credit",
            "amount": req.amount,
            "currency": req.currency,
            "origin": "refund",
        });
        let res: Result<serde_json::Value, _> = core
            .svc
            .call(&cx, &format!("{}/v1/movements", up.wallet), &body)
            .await;
        failure = res.err().map(|e| format!("wallet: {e}"));
    }
    if failure.is_none() {
        let merchant = paid.merchant.clone().unwrap_or_default();
        let [debit, credit] = legs(&paid.op, channel, &paid.user_id, &merchant, &paid.currency);
        // A refund books the payment's legs in reverse.
        let reversed = [(credit.0, Direction::Debit), (debit.0, Direction::Credit)];
        let body = serde_json::json!({
            "txn_id": req.refund_no,
            "txn_type": "refund",
            "currency": req.currency,
            "legs": legs_json(&reversed, &req.amount),
        });
        let res: Result<serde_json::Value, _> = core
            .svc
            .call(&cx, &format!("{}/v1/transactions", up.accounting), &body)
            .await;
        failure = res.err().map(|e| format!("accounting: {e}"));
    }
    if failure.is_none() && channel == Channel::Credit {
        let body = serde_json::json!({
            "refund_no": req.refund_no,
            "biz_id": paid.order_no,
            "amount": req.amount,
            "currency": req.currency,
        });
        let res: Result<serde_json::Value, _> = core
            .svc
            .call(&cx, &format!("{}/v1/credit-notes", up.billing), &body)
            .await;
        failure = res.err().map(|e| format!("billing: {e}"));
    }
    let status = if failure.is_some() {
        "FAILED"
    } else {
        "SUCCESS"
    };
    let trace_id = cx.trace_id();
    let reporter = core.svc.reporter.clone();
    let (t, f, r, paid_row) = (trace_id.clone(), failure.clone(), req.clone(), paid.clone());
    core.svc
        .db(&cx, "UPDATE refunds", move |c| {
            c.prepare_cached("UPDATE refunds SET status = ?2, reason = ?3 WHERE refund_no = ?1")?
                .execute(rusqlite::params![r.refund_no, status, f])?;
            let mut rec = Rec {
                record_id: format!("pc-{}", r.refund_no),
                source: SOURCE,
                kind: "refund",
                keys: vec![("refund_no", r.refund_no.clone())],
                amount_minor,
                currency: &r.currency,
                event_ms: now_ms(),
                trace_id: &t,
                order_id: Some(r.refund_no.clone()),
            }
            .wire();
            rec.account = Some(paid_row.account.clone());
            rec.status = Some(status.into());
            rec.attributes
                .insert("user_id".into(), paid_row.user_id.clone());
            rec.attributes
                .insert("channel".into(), paid_row.channel.clone());
            rec.attributes
                .insert("paid_order".into(), paid_row.order_no.clone());
            reporter.report_blocking(vec![rec]);
            Ok(())
        })
        .await?;
    if req.notify && failure.is_none() {
        notify(
            &core,
            &paid.user_id,
            &req.refund_no,
            format!("refund {} {}", req.amount, req.currency),
        )
        .await;
    }
    Ok(Json(OrderAnswer {
        order_no: req.refund_no,
        status: status.into(),
        reason: failure,
        trace_id,
    }))
}

fn row_payment(r: &rusqlite::Row<'_>) -> rusqlite::Result<Payment> {
    Ok(Payment {
        order_no: r.get(0)?,
        op: r.get(1)?,
        user_id: r.get(2)?,
        account: r.get(3)?,
        channel: r.get(4)?,
        merchant: r.get(5)?,
        amount_minor: r.get(6)?,
        currency: r.get(7)?,
        instalments: r.get(8)?,
        status: r.get(9)?,
        reason: r.get(10)?,
    })
}

async fn get_payment(
    State(core): State<Arc<Core>>,
    Extension(cx): Extension<Cx>,
    Path(order_no): Path<String>,
) -> Result<Json<Payment>, AppError> {
    core.svc
        .db(&cx, "SELECT payments", move |c| {
            c.prepare_cached("SELECT order_no, type, user_id, account, channel, merchant, amount_minor, currency, instalments, status, reason FROM payments WHERE order_no = ?1")?.query_row(
                [&order_no],
                row_payment,
            )
            .optional()?
            .ok_or_else(|| AppError::not_found(format!("no payment `{order_no}`")))
        })
        .await
        .map(Json)
}

async fn get_upstreams(State(core): State<Arc<Core>>) -> Json<Upstreams> {
    Json(core.upstreams())
}

async fn set_upstreams(
    State(core): State<Arc<Core>>,
    Json(c): Json<UpstreamChange>,
) -> Result<Json<Upstreams>, AppError> {
    let url = reqwest::Url::parse(&c.billing)
        .map_err(|e| AppError::bad(format!("billing: not a URL: {e}")))?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(AppError::bad("billing: the URL must be http or https"));
    }
    let mut up = core.upstreams.lock().expect("upstreams lock");
    up.billing = c.billing.trim_end_matches('/').to_string();
    tracing::info!(billing = %up.billing, "billing upstream changed");
    Ok(Json(up.clone()))
}
