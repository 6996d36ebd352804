//! The HTTP API. Every route is registered through [`Api::route`], which records it in
//! the route table that the OpenAPI test and access checks walk.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::{header, request::Parts, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::MethodRouter;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use steadfast_model::wire::{parse_body, BodyError, RecordError};
use steadfast_store::{BreakFilter, BreakRow, HistoryRow, Status, StoreError};
use utoipa::{OpenApi, ToSchema};

use crate::pipeline::{wall_ms, Pipeline, Refusal};
use crate::view::{mask_row, BreakView};
use crate::Config;

pub struct AppState {
    pub pipeline: Arc<Pipeline>,
    pub metrics: Arc<crate::metrics::Metrics>,
    pub cfg: Config,
    pub admin_token: String,
}

type Shared = Arc<AppState>;

/// One registered route: what the OpenAPI document and the access table must cover.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteInfo {
    pub method: &'static str,
    pub path: &'static str,
    /// Open without a token (health, metrics, the API description).
    pub public: bool,
}

struct Api {
    router: Router<Shared>,
    routes: Vec<RouteInfo>,
}

impl Api {
    fn route(
        mut self,
        method: &'static str,
        path: &'static str,
        public: bool,
        handler: MethodRouter<Shared>,
    ) -> Api {
        self.routes.push(RouteInfo {
            method,
            path,
            public,
        });
        self.router = self.router.route(path, handler);
        self
    }
}

/// Every route with its handler; the one place routes are added.
fn api() -> Api {
    use axum::routing::{get, post};
    Api {
        router: Router::new(),
        routes: Vec::new(),
    }
    .route("get", "/healthz", true, get(health))
    .route("get", "/metrics", true, get(metrics))
    .route("get", "/api/v1/openapi.json", true, get(openapi))
    .route("post", "/api/v1/records", false, post(ingest))
    .route("get", "/api/v1/breaks", false, get(list_breaks))
    .route("get", "/api/v1/breaks/{id}", false, get(get_break))
    .route(
        "post",
        "/api/v1/breaks/{id}/status",
        false,
        post(change_status),
    )
    .route("get", "/api/v1/rules", false, get(rules))
    .route("get", "/api/v1/status", false, get(status))
}

/// The route table, for checks that walk every route.
pub fn route_table() -> Vec<RouteInfo> {
    api().routes
}

/// Builds the router.
pub fn router(state: Shared) -> Router {
    let body_max = state.cfg.limits.body_bytes_max;
    api()
        .router
        .layer(axum::extract::DefaultBodyLimit::max(body_max))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .with_state(state)
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Steadfast API", description = "Real-time fund verification: ingest fund records, read and work breaks."),
    paths(health, metrics, openapi, ingest, list_breaks, get_break, change_status, rules, status),
    components(schemas(IngestAck, ErrorBody, StatusChange, RecordErrorDoc)),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "token",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

// ---- errors ------------------------------------------------------------------------

/// The body of every error answer: a stable code, a message for people, and for refused
/// ingest batches the list of bad records.
#[derive(Serialize, Deserialize, ToSchema, Debug)]
pub struct ErrorBody {
    pub code: String,
    pub message: String,
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    #[schema(value_type = Vec<RecordErrorDoc>)]
    pub errors: Vec<RecordError>,
}

/// One refused record.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct RecordErrorDoc {
    index: usize,
    record_id: Option<String>,
    message: String,
}

#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    body: ErrorBody,
    retry_after_secs: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, code: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            body: ErrorBody {
                code: code.into(),
                message: message.into(),
                errors: vec![],
            },
            retry_after_secs: None,
        }
    }

    fn retry(mut self, secs: u64) -> ApiError {
        self.retry_after_secs = Some(secs);
        self
    }

    fn internal(what: &str, e: impl std::fmt::Display) -> ApiError {
        // The detail goes to the log, never to the client.
        tracing::error!(error = %e, "{what}");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("{what}; see the server log"),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, Json(self.body)).into_response();
        if let Some(secs) = self.retry_after_secs {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::NotFound(id) => ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("break {id} does not exist"),
            ),
            StoreError::BadTransition { .. } => {
                ApiError::new(StatusCode::CONFLICT, "bad_transition", e.to_string())
            }
            StoreError::Sql(e) => ApiError::internal("the break store failed", e),
        }
    }
}

// ---- authentication ----------------------------------------------------------------

/// The caller, proven by a bearer token.
pub struct Caller(pub String);

impl FromRequestParts<Shared> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Shared) -> Result<Caller, ApiError> {
        let given = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !given.is_empty() && constant_time_eq(given.as_bytes(), state.admin_token.as_bytes()) {
            Ok(Caller("admin".into()))
        } else {
            Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "send `Authorization: Bearer <token>`; the admin token is in the data directory's admin.token",
            ))
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

// ---- handlers ----------------------------------------------------------------------

/// Liveness: 200 while the write-ahead log accepts writes.
#[utoipa::path(get, path = "/healthz", responses((status = 200, description = "healthy"), (status = 503, description = "the write-ahead log failed")))]
async fn health(State(s): State<Shared>) -> Response {
    if s.pipeline.healthy() {
        Json(serde_json::json!({ "status": "ok" })).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({ "status": "wal_failed" })),
        )
            .into_response()
    }
}

/// Prometheus metrics in the text exposition format.
#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "metrics", content_type = "text/plain")))]
async fn metrics(State(s): State<Shared>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.encode(),
    )
}

/// This document.
#[utoipa::path(get, path = "/api/v1/openapi.json", responses((status = 200, description = "OpenAPI 3.1 document")))]
async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

/// Acknowledgement of a durable batch.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct IngestAck {
    /// Records in the batch (retries of known record ids included: they have no effect).
    pub accepted: usize,
    /// The batch's write-ahead-log sequence number.
    pub wal_seq: u64,
}

/// Ingests fund records: a JSON array or NDJSON.
///
/// All or nothing: when any record is invalid, the whole batch is refused with 422 and
/// every bad record is listed; nothing is written. A batch is acknowledged only once it
/// is fsynced in the write-ahead log.
#[utoipa::path(post, path = "/api/v1/records",
    request_body(content = String, description = "JSON array or NDJSON of fund records", content_type = "application/json"),
    responses(
        (status = 200, body = IngestAck, description = "durable"),
        (status = 400, body = ErrorBody, description = "malformed body"),
        (status = 401, body = ErrorBody, description = "no or bad token"),
        (status = 413, body = ErrorBody, description = "body or batch too large"),
        (status = 422, body = ErrorBody, description = "invalid records, listed; nothing written"),
        (status = 429, body = ErrorBody, description = "write queue full; retry after Retry-After"),
        (status = 503, body = ErrorBody, description = "open state at its bound or log unavailable; retry after Retry-After"),
    ),
    security(("token" = [])))]
async fn ingest(
    State(s): State<Shared>,
    _caller: Caller,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<IngestAck>, ApiError> {
    let refuse = |code: &str| {
        s.metrics
            .batches_refused
            .get_or_create(&crate::metrics::RefusalLabels { code: code.into() })
            .inc()
    };
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            refuse("body_too_large");
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!(
                    "request body is larger than {} bytes; split the batch",
                    s.cfg.limits.body_bytes_max
                ),
            )
        } else {
            ApiError::new(StatusCode::BAD_REQUEST, "bad_body", e.body_text())
        }
    })?;
    let parsed = parse_body(&body, s.cfg.limits.batch_records_max).map_err(|e| {
        let (status, code) = match e {
            BodyError::TooManyRecords { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "too_many_records"),
            BodyError::Malformed(_) => (StatusCode::BAD_REQUEST, "malformed"),
            BodyError::Empty => (StatusCode::BAD_REQUEST, "empty"),
        };
        refuse(code);
        ApiError::new(status, code, e.to_string())
    })?;
    let mut records = Vec::with_capacity(parsed.len());
    let mut errors = Vec::new();
    for r in parsed {
        match r {
            Ok(rec) => records.push(rec),
            Err(e) => errors.push(e),
        }
    }
    if !errors.is_empty() {
        refuse("invalid_records");
        let mut err = ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_records",
            format!(
                "{} of {} records are invalid; nothing was written",
                errors.len(),
                errors.len() + records.len()
            ),
        );
        err.body.errors = errors;
        return Err(err);
    }
    let n = records.len();
    match s.pipeline.submit(wall_ms(), records).await {
        Ok(seq) => Ok(Json(IngestAck {
            accepted: n,
            wal_seq: seq,
        })),
        Err(Refusal::Capacity) => {
            refuse("capacity");
            Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "capacity",
                "open state is at its bound until pending records are matched or expire",
            )
            .retry(5))
        }
        Err(Refusal::Overloaded) => {
            refuse("overloaded");
            Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "overloaded",
                "the write queue is full",
            )
            .retry(1))
        }
        Err(Refusal::Unavailable(why)) => {
            refuse("unavailable");
            Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", why).retry(30))
        }
    }
}

#[derive(Deserialize, Default, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct BreakQuery {
    rule: Option<String>,
    link: Option<String>,
    kind: Option<String>,
    status: Option<String>,
    owner: Option<String>,
    /// Only breaks detected at least this many seconds ago.
    min_age_secs: Option<u64>,
    /// RFC 3339 bounds on emission time.
    since: Option<String>,
    until: Option<String>,
    /// `exclude` (default), `include`, or a drill id.
    drill: Option<String>,
    after_id: Option<u64>,
    limit: Option<usize>,
    /// `json` (default) or `csv`.
    format: Option<String>,
}

fn parse_time(field: &str, v: &Option<String>) -> Result<Option<i64>, ApiError> {
    v.as_ref()
        .map(|t| {
            steadfast_model::parse_millis(t).ok_or_else(|| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "bad_query",
                    format!("`{field}` {t:?} is not RFC 3339"),
                )
            })
        })
        .transpose()
}

/// Lists breaks, oldest first, with filters and cursor paging (`after_id`).
#[utoipa::path(get, path = "/api/v1/breaks", params(BreakQuery),
    responses((status = 200, description = "breaks (JSON array, or CSV with format=csv)"), (status = 400, body = ErrorBody)),
    security(("token" = [])))]
async fn list_breaks(
    State(s): State<Shared>,
    _caller: Caller,
    query: Result<Query<BreakQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) =
        query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_query", e.body_text()))?;
    let status = q
        .status
        .as_deref()
        .map(|t| parse_status(t, "bad_query"))
        .transpose()?;
    if let Some(k) = &q.kind {
        if steadfast_verify::BreakKind::parse(k).is_none() {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_query",
                format!("unknown break kind {k:?}"),
            ));
        }
    }
    let now = wall_ms();
    let filter = BreakFilter {
        rule: q.rule.clone(),
        link: q.link.clone(),
        kind: q.kind.clone(),
        status,
        owner: q.owner.clone(),
        since: parse_time("since", &q.since)?,
        until: parse_time("until", &q.until)?,
        min_age_ms: q.min_age_secs.map(|a| (now, a as i64 * 1000)),
        drill: match q.drill.as_deref() {
            None | Some("exclude") => None,
            Some("include") => Some(None),
            Some(d) => Some(Some(d.to_string())),
        },
        after_id: q.after_id,
        limit: q.limit.unwrap_or(100),
    };
    let rows = with_store(&s, move |st| st.list(&filter)).await?;
    let views: Vec<BreakView> = rows.into_iter().map(|r| view(&s, r, now)).collect();
    match q.format.as_deref() {
        None | Some("json") => Ok(Json(views).into_response()),
        Some("csv") => {
            let csv = crate::view::to_csv(&views)
                .map_err(|e| ApiError::internal("CSV export failed", e))?;
            Ok(([(header::CONTENT_TYPE, "text/csv")], csv).into_response())
        }
        Some(f) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_query",
            format!("unknown format {f:?} (json or csv)"),
        )),
    }
}

fn parse_status(text: &str, code: &str) -> Result<Status, ApiError> {
    Status::parse(text).ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            code,
            format!("unknown status {text:?} (open, acknowledged or resolved)"),
        )
    })
}

/// A stored break as every output shows it: masked as configured, with age and SLA.
pub(crate) fn view(s: &AppState, row: BreakRow, now: i64) -> BreakView {
    let sla = s
        .pipeline
        .rules
        .rules
        .iter()
        .find(|r| r.name == row.brk.rule)
        .and_then(|r| r.sla_secs);
    let row = if s.cfg.masking.enabled {
        mask_row(row, &s.cfg.masking.fields, &s.pipeline.rules)
    } else {
        row
    };
    BreakView::new(row, sla, now)
}

async fn with_store<T: Send + 'static>(
    s: &Shared,
    f: impl FnOnce(&mut steadfast_store::BreakStore) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    let store = s.pipeline.store.clone();
    tokio::task::spawn_blocking(move || f(&mut store.lock().expect("store lock")))
        .await
        .map_err(|e| ApiError::internal("the break store task failed", e))?
        .map_err(ApiError::from)
}

#[derive(Serialize)]
struct BreakDetail {
    #[serde(flatten)]
    brk: BreakView,
    history: Vec<HistoryRow>,
}

/// One break with its workflow history.
#[utoipa::path(get, path = "/api/v1/breaks/{id}", params(("id" = u64, Path)),
    responses((status = 200, description = "the break"), (status = 404, body = ErrorBody)),
    security(("token" = [])))]
async fn get_break(
    State(s): State<Shared>,
    _caller: Caller,
    Path(id): Path<u64>,
) -> Result<Response, ApiError> {
    let (row, history) = with_store(&s, move |st| Ok((st.get(id)?, st.history(id)?))).await?;
    let row = row.ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("break {id} does not exist"),
        )
    })?;
    Ok(Json(BreakDetail {
        brk: view(&s, row, wall_ms()),
        history,
    })
    .into_response())
}

/// A workflow step: a new status and/or owner, and why.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StatusChange {
    /// `acknowledged` or `resolved`.
    status: Option<String>,
    owner: Option<String>,
    reason: String,
}

/// Moves a break through open → acknowledged → resolved, recording who and why.
#[utoipa::path(post, path = "/api/v1/breaks/{id}/status", params(("id" = u64, Path)), request_body = StatusChange,
    responses((status = 200, description = "the updated break"), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("token" = [])))]
async fn change_status(
    State(s): State<Shared>,
    Caller(actor): Caller,
    Path(id): Path<u64>,
    body: Result<Json<StatusChange>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(change) =
        body.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_body", e.body_text()))?;
    let to = change
        .status
        .as_deref()
        .map(|t| parse_status(t, "bad_body"))
        .transpose()?;
    if to.is_none() && change.owner.is_none() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_body",
            "give a `status`, an `owner`, or both",
        ));
    }
    if change.reason.trim().is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_body",
            "`reason` must say why",
        ));
    }
    let now = wall_ms();
    let row = with_store(&s, move |st| {
        st.transition(
            id,
            to,
            change.owner.as_deref(),
            &actor,
            Some(&change.reason),
            now,
        )
    })
    .await?;
    Ok(Json(view(&s, row, now)).into_response())
}

/// The rule set in force and its version.
#[utoipa::path(get, path = "/api/v1/rules", responses((status = 200, description = "rules")), security(("token" = [])))]
async fn rules(State(s): State<Shared>, _caller: Caller) -> Json<steadfast_verify::RuleSet> {
    Json((*s.pipeline.rules).clone())
}

/// Engine state: open records per rule, the last applied WAL entry, break counts.
#[utoipa::path(get, path = "/api/v1/status", responses((status = 200, description = "status")), security(("token" = [])))]
async fn status(
    State(s): State<Shared>,
    _caller: Caller,
) -> Result<Json<serde_json::Value>, ApiError> {
    let (stats, seq) = s.pipeline.stats();
    let counts = with_store(&s, |st| st.counts()).await?;
    let open: serde_json::Map<String, serde_json::Value> = s
        .pipeline
        .rules
        .rules
        .iter()
        .zip(stats.open_per_rule.iter())
        .map(|(r, n)| (r.name.clone(), (*n).into()))
        .collect();
    let (p50, p99, max, n) = s.metrics.recent_detection();
    Ok(Json(serde_json::json!({
        "rules_version": s.pipeline.rules.version,
        "open_records_total": stats.open_per_rule.iter().sum::<usize>(),
        "detection_latency_ms": { "breaks": n, "p50": p50, "p99": p99, "max": max },
        "wal_seq_applied": seq,
        "records_seen": stats.records_seen,
        "retries_ignored": stats.retries_ignored,
        "record_ids_evicted": stats.record_ids_evicted,
        "open_records": open,
        "breaks": counts.into_iter().collect::<std::collections::BTreeMap<_, _>>(),
    })))
}
