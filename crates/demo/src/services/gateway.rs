//! The cashier: where users' apps send payments, refunds, top-ups and withdrawals. It keeps
//! an order log, applies the feature flags, and forwards to the payment core in use
//! (primary or standby, switchable at run time: what a failover runbook does).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::{Query, State};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};

use crate::svc::{now_ms, AppError, Svc};
use crate::telemetry::Cx;

pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS orders (
  order_no TEXT PRIMARY KEY,
  op TEXT NOT NULL,
  user_id TEXT NOT NULL,
  amount TEXT NOT NULL,
  currency TEXT NOT NULL,
  core TEXT NOT NULL,
  status TEXT NOT NULL,
  created_ms INTEGER NOT NULL
);";

/// Feature flags, switchable at run time (`GET`/`POST /admin/flags`, `?dry_run=true` to
/// validate a change without making it).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Flags {
    /// Pay-later plans with more than one instalment.
    pub instalments: bool,
    /// Paying from the wallet balance.
    pub wallet_payments: bool,
    pub refunds: bool,
    /// Notifications after each payment.
    pub notifications: bool,
}

impl Default for Flags {
    fn default() -> Flags {
        Flags {
            instalments: true,
            wallet_payments: true,
            refunds: true,
            notifications: true,
        }
    }
}

/// A change to the flags: only the flags given change.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FlagsPatch {
    pub instalments: Option<bool>,
    pub wallet_payments: Option<bool>,
    pub refunds: Option<bool>,
    pub notifications: Option<bool>,
}

impl Flags {
    fn patched(&self, p: &FlagsPatch) -> Flags {
        Flags {
            instalments: p.instalments.unwrap_or(self.instalments),
            wallet_payments: p.wallet_payments.unwrap_or(self.wallet_payments),
            refunds: p.refunds.unwrap_or(self.refunds),
            notifications: p.notifications.unwrap_or(self.notifications),
        }
    }
}

/// `?dry_run=true` on an admin change: validate it and answer what it would give, changing
/// nothing (what a runbook's verification calls).
#[derive(Debug, Default, Deserialize)]
pub struct DryRun {
    #[serde(default)]
    pub dry_run: bool,
}

/// The answer to an admin change: the state after it, or in a dry run the state it would
/// give, marked `dry_run`.
#[derive(Serialize)]
struct Changed<T: Serialize> {
    #[serde(flatten)]
    state: T,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    dry_run: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// `primary` or `standby`.
    pub payment_core: String,
}

pub struct Gateway {
    pub svc: Arc<Svc>,
    pub primary: String,
    pub standby: String,
    on_standby: AtomicBool,
    flags: Mutex<Flags>,
}

/// What a user's app sends.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderRequest {
    pub order_no: String,
    pub user_id: String,
    /// The user's bank account.
    pub account: String,
    pub amount: String,
    pub currency: String,
    /// Pay only: `card`, `credit` or `wallet`.
    #[serde(default)]
    pub channel: Option<String>,
    #[serde(default)]
    pub merchant: Option<String>,
    #[serde(default)]
    pub instalments: Option<u32>,
    /// Refund only: the order being refunded.
    #[serde(default)]
    pub refund_of: Option<String>,
    /// The user is a VIP (the app knows its user's tier).
    #[serde(default)]
    pub vip: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OrderAnswer {
    pub order_no: String,
    pub status: String,
    #[serde(default)]
    pub reason: Option<String>,
    pub trace_id: String,
}

impl Gateway {
    pub fn new(svc: Arc<Svc>, primary: String, standby: String) -> Arc<Gateway> {
        Arc::new(Gateway {
            svc,
            primary,
            standby,
            on_standby: AtomicBool::new(false),
            flags: Mutex::new(Flags::default()),
        })
    }

    pub fn router(self: &Arc<Gateway>) -> Router {
        let business = Router::new()
            .route("/v1/pay", post(pay))
            .route("/v1/refund", post(refund))
            .route("/v1/topup", post(topup))
            .route("/v1/withdraw", post(withdraw))
            .with_state(self.clone());
        let admin = Router::new()
            .route("/admin/flags", get(get_flags).post(set_flags))
            .route("/admin/route", get(get_route).post(set_route))
            .with_state(self.clone());
        self.svc.router(business, admin)
    }

    fn core(&self) -> (&str, &'static str) {
        if self.on_standby.load(Ordering::Relaxed) {
            (&self.standby, "standby")
        } else {
            (&self.primary, "primary")
        }
    }

    async fn forward(
        &self,
        cx: Cx,
        op: &'static str,
        req: OrderRequest,
    ) -> Result<Json<OrderAnswer>, AppError> {
        // The gateway knows who is asking: its span carries the user and the order, so a
        // journey finds the request and the fund records it wrote.
        {
            use opentelemetry::trace::TraceContextExt;
            let span = cx.0.span();
            span.set_attribute(opentelemetry::KeyValue::new("user.id", req.user_id.clone()));
            span.set_attribute(opentelemetry::KeyValue::new(
                "order.id",
                req.order_no.clone(),
            ));
            // Steadfast's default VIP attribute: never sampled away, listed first.
            if req.vip {
                span.set_attribute(opentelemetry::KeyValue::new("user.vip", true));
            }
        }
        let flags = self.flags.lock().expect("flags lock").clone();
        let (core_url, core_name) = self.core();
        let (path, body) = if op == "refund" {
            let body = serde_json::json!({
                "refund_no": req.order_no,
                "order_no": req.refund_of,
                "amount": req.amount,
                "currency": req.currency,
                "notify": flags.notifications,
            });
            ("/v1/refunds", body)
        } else {
            let body = serde_json::json!({
                "order_no": req.order_no,
                "type": op,
                "user_id": req.user_id,
                "account": req.account,
                "amount": req.amount,
                "currency": req.currency,
                "channel": req.channel,
                "merchant": req.merchant,
                "instalments": req.instalments.unwrap_or(1),
                "notify": flags.notifications,
            });
            ("/v1/payments", body)
        };
        let answer: Result<OrderAnswer, _> = self
            .svc
            .call(&cx, &format!("{core_url}{path}"), &body)
            .await;
        let (status, reason) = match &answer {
            Ok(a) => (a.status.clone(), a.reason.clone()),
            Err(e) => ("ERROR".to_string(), Some(e.to_string())),
        };
        // The order log is written once, with the outcome: one commit per order.
        let log = req.clone();
        let st = status.clone();
        self.svc
            .db(&cx, "INSERT orders", move |c| {
                c.prepare_cached(
                    "INSERT OR REPLACE INTO orders VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                )?
                .execute(rusqlite::params![
                    log.order_no,
                    op,
                    log.user_id,
                    log.amount,
                    log.currency,
                    core_name,
                    st,
                    now_ms()
                ])?;
                Ok(())
            })
            .await?;
        match answer {
            Ok(a) => Ok(Json(a)),
            Err(e) => Err(AppError::new(
                axum::http::StatusCode::BAD_GATEWAY,
                "upstream",
                format!("payment core ({core_name}) failed: {e}; reason: {reason:?}"),
            )),
        }
    }
}

async fn pay(
    State(g): State<Arc<Gateway>>,
    Extension(cx): Extension<Cx>,
    Json(req): Json<OrderRequest>,
) -> Result<Json<OrderAnswer>, AppError> {
    let flags = g.flags.lock().expect("flags lock").clone();
    if req.instalments.unwrap_or(1) > 1 && !flags.instalments {
        return Err(AppError::bad("instalment plans are switched off"));
    }
    if req.channel.as_deref() == Some("wallet") && !flags.wallet_payments {
        return Err(AppError::bad("wallet payments are switched off"));
    }
    g.forward(cx, "pay", req).await
}

async fn refund(
    State(g): State<Arc<Gateway>>,
    Extension(cx): Extension<Cx>,
    Json(req): Json<OrderRequest>,
) -> Result<Json<OrderAnswer>, AppError> {
    if !g.flags.lock().expect("flags lock").refunds {
        return Err(AppError::bad("refunds are switched off"));
    }
    if req.refund_of.is_none() {
        return Err(AppError::bad(
            "a refund names the order it refunds in `refund_of`",
        ));
    }
    g.forward(cx, "refund", req).await
}

async fn topup(
    State(g): State<Arc<Gateway>>,
    Extension(cx): Extension<Cx>,
    Json(req): Json<OrderRequest>,
) -> Result<Json<OrderAnswer>, AppError> {
    g.forward(cx, "topup", req).await
}

async fn withdraw(
    State(g): State<Arc<Gateway>>,
    Extension(cx): Extension<Cx>,
    Json(req): Json<OrderRequest>,
) -> Result<Json<OrderAnswer>, AppError> {
    g.forward(cx, "withdraw", req).await
}

async fn get_flags(State(g): State<Arc<Gateway>>) -> Json<Flags> {
    Json(g.flags.lock().expect("flags lock").clone())
}

async fn set_flags(
    State(g): State<Arc<Gateway>>,
    Query(q): Query<DryRun>,
    Json(p): Json<FlagsPatch>,
) -> Json<Changed<Flags>> {
    let mut flags = g.flags.lock().expect("flags lock");
    let f = flags.patched(&p);
    if !q.dry_run {
        tracing::info!(flags = ?f, "feature flags changed");
        *flags = f.clone();
    }
    Json(Changed {
        state: f,
        dry_run: q.dry_run,
    })
}

async fn get_route(State(g): State<Arc<Gateway>>) -> Json<Route> {
    Json(Route {
        payment_core: g.core().1.into(),
    })
}

async fn set_route(
    State(g): State<Arc<Gateway>>,
    Query(q): Query<DryRun>,
    Json(r): Json<Route>,
) -> Result<Json<Changed<Route>>, AppError> {
    let standby = match r.payment_core.as_str() {
        "primary" => false,
        "standby" => true,
        other => {
            return Err(AppError::bad(format!(
                "payment_core must be `primary` or `standby`, not `{other}`"
            )))
        }
    };
    if !q.dry_run {
        g.on_standby.store(standby, Ordering::Relaxed);
        tracing::info!(payment_core = %r.payment_core, "traffic switched");
    }
    Ok(Json(Changed {
        state: r,
        dry_run: q.dry_run,
    }))
}
