//! What every service of the platform shares: its embedded database, its failure modes,
//! its telemetry, its reporter, its HTTP client, its admin API, and serving.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use opentelemetry::trace::{SpanKind, Status, TraceContextExt};
use opentelemetry::KeyValue;
use rusqlite::Connection;
use serde::de::DeserializeOwned;
use serde::Serialize;
use steadfast_model::wire::WireRecord;
use steadfast_model::{format_millis, format_minor, Currency, Millis, Money};

use crate::faults::{burn, Faults, FaultsView};
use crate::report::Reporter;
use crate::telemetry::{Cx, Telemetry};

/// An error a service answers with: a stable code, a message, a status.
#[derive(Debug)]
pub struct AppError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl AppError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> AppError {
        AppError {
            status,
            code,
            message: message.into(),
        }
    }
    pub fn bad(message: impl Into<String>) -> AppError {
        AppError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", message)
    }
    pub fn conflict(message: impl Into<String>) -> AppError {
        AppError::new(StatusCode::CONFLICT, "conflict", message)
    }
    pub fn not_found(message: impl Into<String>) -> AppError {
        AppError::new(StatusCode::NOT_FOUND, "not_found", message)
    }
    pub fn internal(what: &str, e: impl std::fmt::Display) -> AppError {
        tracing::error!(error = %e, "{what}");
        AppError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            what.to_string(),
        )
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(serde_json::json!({ "code": self.code, "message": self.message })),
        )
            .into_response()
    }
}

impl From<rusqlite::Error> for AppError {
    fn from(e: rusqlite::Error) -> AppError {
        AppError::internal("database error", e)
    }
}

/// A failed call to another service.
#[derive(Debug)]
pub struct CallError {
    /// The answer's status; none when there was no answer (refused, timed out).
    pub status: Option<u16>,
    pub message: String,
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.status {
            Some(s) => write!(f, "HTTP {s}: {}", self.message),
            None => write!(f, "{}", self.message),
        }
    }
}

/// Prepared statements kept per service connection (more than any service uses).
pub const STATEMENTS_CACHED_MAX: usize = 64;

/// How often a service's checkpointer copies its WAL into the database file.
pub const CHECKPOINT_EVERY: Duration = Duration::from_millis(500);
/// WAL pages (4 KiB) past which the serving connection checkpoints by itself: the
/// bound on the WAL should the checkpointer fall behind (64 MiB).
pub const WAL_PAGES_MAX: u32 = 16_384;

/// Checkpoints the database at `path` every [`CHECKPOINT_EVERY`] on a thread of its own,
/// with a connection of its own, until the service's connection is gone. A passive
/// checkpoint copies what no reader still needs and never blocks the service's writes.
fn spawn_checkpointer(
    name: &'static str,
    path: &Path,
    serving: std::sync::Weak<Mutex<Connection>>,
) -> anyhow::Result<()> {
    let conn = Connection::open(path)
        .map_err(|e| anyhow::anyhow!("failed to open {}: {e}", path.display()))?;
    std::thread::Builder::new()
        .name(format!("{name}-checkpoint"))
        .spawn(move || {
            while serving.strong_count() > 0 {
                std::thread::sleep(CHECKPOINT_EVERY);
                if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                    tracing::warn!(service = name, error = %e, "checkpoint failed");
                }
            }
        })?;
    Ok(())
}

/// What a service is built from, besides its name and database.
pub struct SvcParts {
    pub telemetry: Arc<Telemetry>,
    pub faults: Arc<Faults>,
    pub reporter: Reporter,
    pub client: reqwest::Client,
    pub admin_token: String,
}

/// One service.
pub struct Svc {
    pub name: &'static str,
    pub telemetry: Arc<Telemetry>,
    pub faults: Arc<Faults>,
    conn: Arc<Mutex<Connection>>,
    /// The connection's turn: one query at a time holds it, the others wait for it
    /// asynchronously (their number is bounded by the calls in flight, which the
    /// callers' timeouts and the traffic driver bound).
    turn: Arc<tokio::sync::Semaphore>,
    pub reporter: Reporter,
    pub client: reqwest::Client,
    admin_token: String,
}

impl Svc {
    pub fn new(
        name: &'static str,
        data_dir: &Path,
        schema: &str,
        parts: SvcParts,
    ) -> anyhow::Result<Svc> {
        let SvcParts {
            telemetry,
            faults,
            reporter,
            client,
            admin_token,
        } = parts;
        let path = data_dir.join(format!("{name}.db"));
        let conn = Connection::open(&path)
            .map_err(|e| anyhow::anyhow!("failed to open {}: {e}", path.display()))?;
        // WAL with NORMAL sync: a committed write survives a process crash, as in the
        // services this simulates; an fsync per payment would make the demo about disks.
        // Checkpoints run on a thread of their own (below): run by the connection, they
        // happen inside whichever request's commit crosses the threshold, and that
        // request (and every one queued behind the connection) waits for the copy and
        // its fsync. The connection still checkpoints itself at a far larger WAL, so a
        // stalled checkpointer cannot let the file grow without bound.
        conn.execute_batch(&format!(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;
             PRAGMA cache_size = -32768; PRAGMA wal_autocheckpoint = {WAL_PAGES_MAX};"
        ))?;
        conn.execute_batch(schema)?;
        // Every statement a service runs stays prepared: parsing SQL per call costs more
        // than running it.
        conn.set_prepared_statement_cache_capacity(STATEMENTS_CACHED_MAX);
        let conn = Arc::new(Mutex::new(conn));
        spawn_checkpointer(name, &path, Arc::downgrade(&conn))?;
        Ok(Svc {
            name,
            telemetry,
            faults,
            conn,
            turn: Arc::new(tokio::sync::Semaphore::new(1)),
            reporter,
            client,
            admin_token,
        })
    }

    /// The database connection, for start-up work outside any request.
    pub fn connection(&self) -> Arc<Mutex<Connection>> {
        self.conn.clone()
    }

    /// Runs `f` on the service's database on a blocking thread, as one span named
    /// `statement`. The slow-database failure mode adds its work inside the same call.
    pub async fn db<T: Send + 'static>(
        &self,
        cx: &Cx,
        statement: &'static str,
        f: impl FnOnce(&mut Connection) -> Result<T, AppError> + Send + 'static,
    ) -> Result<T, AppError> {
        if self.faults.slow_db_iterations() == 0 {
            // The common case: a query of some microseconds on an idle connection runs
            // right here. A thread hand-off would cost more than the query.
            if let Ok(_turn) = self.turn.try_acquire() {
                if let Ok(mut conn) = self.conn.try_lock() {
                    return self.telemetry.db_span(&cx.0, statement, || f(&mut conn));
                }
            }
        }
        // A busy connection or a slow database: wait for the connection's turn here,
        // asynchronously and in arrival order, then run on a blocking thread, never on
        // the async workers (they also serve Steadfast when the demo runs in one
        // process). Waiting on the blocking pool instead let a slow database fill it
        // with threads parked on the connection, and the server's own file and database
        // work queued behind them.
        let turn = self
            .turn
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| AppError::internal("database turn", e))?;
        let conn = self.conn.clone();
        let telemetry = self.telemetry.clone();
        let faults = self.faults.clone();
        let cx = cx.0.clone();
        tokio::task::spawn_blocking(move || {
            let _turn = turn;
            telemetry.db_span(&cx, statement, || {
                let mut conn = conn.lock().expect("database lock");
                // The mode as it is now, with the connection in hand: a query queued while
                // the database was slow runs at normal speed once the mode is cleared.
                let slow = faults.slow_db_iterations();
                let slow_ms = faults.slow_db_ms();
                if slow > 0 {
                    let started = std::time::Instant::now();
                    burn(&conn, slow)?;
                    // The calibration is an estimate (the machine may be faster now than
                    // when it was measured); the mode promises at least `slow_db_ms`.
                    let per_ms = (slow / slow_ms.max(1)).max(1);
                    while started.elapsed() < std::time::Duration::from_millis(slow_ms) {
                        burn(&conn, per_ms)?;
                    }
                }
                f(&mut conn)
            })
        })
        .await
        .map_err(|e| AppError::internal("database task failed", e))?
    }

    /// POSTs `body` as JSON to another service, as a client span under `cx`, with the
    /// request's `traceparent`.
    pub async fn call<B: Serialize, R: DeserializeOwned>(
        &self,
        cx: &Cx,
        url: &str,
        body: &B,
    ) -> Result<R, CallError> {
        let span = self.telemetry.span(
            &cx.0,
            format!("POST {url}"),
            SpanKind::Client,
            vec![
                KeyValue::new("http.request.method", "POST"),
                KeyValue::new("url.full", url.to_string()),
            ],
        );
        let mut headers = HeaderMap::new();
        self.telemetry.inject(&span, &mut headers);
        let res = self
            .client
            .post(url)
            .headers(headers)
            .json(body)
            .send()
            .await;
        let out = match res {
            Ok(r) if r.status().is_success() => r.json::<R>().await.map_err(|e| CallError {
                status: None,
                message: format!("bad answer from {url}: {e}"),
            }),
            Ok(r) => {
                let status = r.status().as_u16();
                let text = r.text().await.unwrap_or_default();
                Err(CallError {
                    status: Some(status),
                    message: text,
                })
            }
            Err(e) => Err(CallError {
                status: None,
                message: format!("{url}: {e}"),
            }),
        };
        if let Err(e) = &out {
            span.span().set_status(Status::error(e.to_string()));
        }
        span.span().end();
        out
    }

    /// The router of a service: its business routes under telemetry and failure modes,
    /// `/admin/faults` and `extra_admin` under the admin token.
    pub fn router(self: &Arc<Svc>, business: Router, extra_admin: Router) -> Router {
        let admin = Router::new()
            .route("/admin/faults", get(get_faults).post(set_faults))
            .with_state(self.clone())
            .merge(extra_admin)
            .layer(middleware::from_fn_with_state(self.clone(), require_admin));
        let business = business
            .layer(middleware::from_fn_with_state(
                self.faults.clone(),
                crate::faults::inject,
            ))
            .layer(middleware::from_fn_with_state(
                self.telemetry.clone(),
                crate::telemetry::server_span,
            ));
        Router::new()
            .route("/healthz", get(|| async { "ok" }))
            .merge(business)
            .merge(admin)
    }
}

async fn require_admin(State(s): State<Arc<Svc>>, req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let ok = given.len() == s.admin_token.len()
        && given
            .bytes()
            .zip(s.admin_token.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if !ok {
        return AppError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "admin routes need `Authorization: Bearer <admin token>`",
        )
        .into_response();
    }
    next.run(req).await
}

async fn get_faults(State(s): State<Arc<Svc>>) -> Json<FaultsView> {
    Json(s.faults.view())
}

async fn set_faults(
    State(s): State<Arc<Svc>>,
    Json(v): Json<FaultsView>,
) -> Result<Json<FaultsView>, AppError> {
    s.faults
        .apply(&v)
        .map_err(|e| AppError::bad(e.to_string()))?;
    tracing::info!(service = s.name, faults = ?v, "failure modes changed");
    Ok(Json(s.faults.view()))
}

/// Binds a loopback listener (port 0: any free port).
pub async fn bind(port: u16) -> anyhow::Result<(tokio::net::TcpListener, SocketAddr)> {
    let l = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    let a = l.local_addr()?;
    Ok((l, a))
}

/// Serves `router` until `stop` turns true; in-flight requests finish first.
pub fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let shutdown = async move { stopped(&mut stop).await };
        if let Err(e) = axum::serve(listener, router)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!(error = %e, "service failed");
        }
    })
}

/// Resolves once `stop` is true (or its sender is gone).
pub async fn stopped(stop: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Fills `batch` (cleared first) from `rx`: waits for a first item, then takes more for
/// up to `linger_ms` or until the items' total `weight` reaches `max`. Once `stop` is true the channel is closed to new
/// items and what is queued is still handed out. Returns false when nothing is left.
pub async fn next_batch<T>(
    rx: &mut tokio::sync::mpsc::Receiver<T>,
    stop: &mut tokio::sync::watch::Receiver<bool>,
    batch: &mut Vec<T>,
    max: usize,
    weight: impl Fn(&T) -> usize,
    linger_ms: u64,
) -> bool {
    batch.clear();
    let first = tokio::select! {
        r = rx.recv() => r,
        _ = stopped(stop) => {
            rx.close();
            rx.recv().await
        }
    };
    let Some(first) = first else { return false };
    let mut total = weight(&first);
    batch.push(first);
    let linger = tokio::time::sleep(Duration::from_millis(linger_ms));
    tokio::pin!(linger);
    while total < max {
        tokio::select! {
            r = rx.recv() => match r {
                Some(r) => {
                    total += weight(&r);
                    batch.push(r);
                }
                None => break,
            },
            _ = &mut linger => break,
        }
    }
    true
}

/// The wall clock in epoch milliseconds: the event time of the records a service writes.
pub fn now_ms() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as Millis)
}

/// Parses a decimal amount in a currency into minor units, refusing what the currency
/// cannot hold.
pub fn parse_amount(amount: &str, currency: &str) -> Result<(i64, Currency), AppError> {
    let cur = Currency::from_code(currency).map_err(|e| AppError::bad(e.to_string()))?;
    let m = Money::parse(amount, cur).map_err(|e| AppError::bad(e.to_string()))?;
    Ok((m.minor, cur))
}

/// Formats minor units of `currency` as a decimal string.
pub fn amount_text(minor: i64, currency: &str) -> String {
    let cur = Currency::from_code(currency).expect("currencies are checked on the way in");
    format_minor(minor as i128, cur)
}

/// A fund record as the services report it.
pub struct Rec<'a> {
    pub record_id: String,
    pub source: &'static str,
    pub kind: &'static str,
    pub keys: Vec<(&'static str, String)>,
    pub amount_minor: i64,
    pub currency: &'a str,
    pub event_ms: Millis,
    pub trace_id: &'a str,
    pub order_id: Option<String>,
}

impl Rec<'_> {
    pub fn wire(self) -> WireRecord {
        WireRecord {
            record_id: self.record_id,
            source: self.source.into(),
            kind: self.kind.into(),
            keys: self
                .keys
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            amount: amount_text(self.amount_minor, self.currency),
            currency: self.currency.into(),
            account: None,
            counter_account: None,
            direction: None,
            status: None,
            event_time: format_millis(self.event_ms),
            trace_id: (!self.trace_id.is_empty()).then(|| self.trace_id.to_string()),
            order_id: self.order_id,
            drill: None,
            amends: None,
            attributes: Default::default(),
        }
    }
}

/// The background work of a service's failure modes (the leak), until `stop`.
pub fn fault_ticker(
    faults: Arc<Faults>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_millis(100));
        loop {
            tokio::select! {
                _ = every.tick() => faults.leak_step(),
                _ = stopped(&mut stop) => return,
            }
        }
    })
}
