//! The notification service: stores the messages sent to users after their payments
//! (`POST /v1/notify` takes a batch). It writes no money, so it reports no fund records.
//! The payment core sends it notifications in batches, off the payment path: a slow or
//! stuck notifier delays messages, not payments.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};

use crate::svc::{now_ms, AppError, Svc};
use crate::telemetry::Cx;

pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS notifications (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  user_id TEXT NOT NULL,
  order_no TEXT NOT NULL,
  text TEXT NOT NULL,
  created_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS notifications_user ON notifications (user_id, id);";
/// Most notifications one query returns.
pub const LIST_MAX: u32 = 100;
/// Most notifications in one request.
pub const BATCH_MAX: usize = 1_000;
/// Longest notification text.
pub const TEXT_BYTES_MAX: usize = 1024;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Notice {
    pub user_id: String,
    pub order_no: String,
    pub text: String,
}

#[derive(Deserialize)]
struct ListQuery {
    user_id: String,
    limit: Option<u32>,
}

pub struct Notification {
    pub svc: Arc<Svc>,
}

impl Notification {
    pub fn router(self: &Arc<Notification>) -> Router {
        let business = Router::new()
            .route("/v1/notify", post(notify))
            .route("/v1/notifications", get(list))
            .with_state(self.clone());
        self.svc.router(business, Router::new())
    }
}

async fn notify(
    State(n): State<Arc<Notification>>,
    Extension(cx): Extension<Cx>,
    Json(batch): Json<Vec<Notice>>,
) -> Result<Json<serde_json::Value>, AppError> {
    if batch.is_empty() || batch.len() > BATCH_MAX {
        return Err(AppError::bad(format!(
            "send 1 to {BATCH_MAX} notifications"
        )));
    }
    if batch.iter().any(|x| x.text.len() > TEXT_BYTES_MAX) {
        return Err(AppError::bad(format!(
            "text is longer than {TEXT_BYTES_MAX} bytes"
        )));
    }
    let stored = n
        .svc
        .db(&cx, "INSERT notifications", move |c| {
            let tx = c.transaction()?;
            let now = now_ms();
            for x in &batch {
                tx.prepare_cached(
                    "INSERT INTO notifications (user_id, order_no, text, created_ms) VALUES (?1, ?2, ?3, ?4)",
                )?
                .execute(rusqlite::params![x.user_id, x.order_no, x.text, now])?;
            }
            tx.commit()?;
            Ok(batch.len())
        })
        .await?;
    Ok(Json(serde_json::json!({ "stored": stored })))
}

async fn list(
    State(n): State<Arc<Notification>>,
    Extension(cx): Extension<Cx>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Vec<Notice>>, AppError> {
    let limit = q.limit.unwrap_or(20).min(LIST_MAX);
    n.svc
        .db(&cx, "SELECT notifications", move |c| {
            let mut st = c.prepare_cached(
                "SELECT user_id, order_no, text FROM notifications WHERE user_id = ?1 ORDER BY id DESC LIMIT ?2",
            )?;
            let rows = st.query_map(rusqlite::params![q.user_id, limit], |r| {
                Ok(Notice {
                    user_id: r.get(0)?,
                    order_no: r.get(1)?,
                    text: r.get(2)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
        .map(Json)
}
