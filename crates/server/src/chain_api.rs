//! The data chain's routes: OTLP/HTTP ingest of traces, metrics and logs (protobuf or
//! JSON, gzip, partial success), SQL over everything stored (`POST /api/v1/query`), and
//! one trace by id. Rows are logged durably before a request is acknowledged; a task
//! flushes them to Parquet every second, compacts small files and applies retention.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;
use steadfast_chain::otlp::{self, Encoding, OtlpError, Signal, BODY_BYTES_MAX};
use steadfast_store::chain::{batches_to_json, ChainError, ChainStore};
use utoipa::ToSchema;

use crate::api::{ApiError, Shared};

/// How often pending rows are written to Parquet.
pub const FLUSH_EVERY_MS: u64 = 1_000;
/// Files smaller than this are merged by compaction.
pub const COMPACT_SMALL_BYTES: u64 = 8 * 1024 * 1024;
/// How often compaction and retention run.
const MAINTAIN_EVERY_SECS: u64 = 60;

pub type Chain = Arc<ChainStore>;

impl From<ChainError> for ApiError {
    fn from(e: ChainError) -> ApiError {
        match e {
            ChainError::Full => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "chain_full", e.to_string()).retry(1)
            }
            ChainError::Query(m) => ApiError::new(StatusCode::BAD_REQUEST, "bad_query", m),
            other => ApiError::internal("the data chain store failed", other),
        }
    }
}

fn otlp_error(e: OtlpError) -> ApiError {
    let status = match e {
        OtlpError::UnsupportedMediaType(_) | OtlpError::UnsupportedEncoding(_) => {
            StatusCode::UNSUPPORTED_MEDIA_TYPE
        }
        OtlpError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        OtlpError::Malformed { .. } => StatusCode::BAD_REQUEST,
    };
    ApiError::new(status, "bad_otlp", e.to_string())
}

async fn with_chain<T: Send + 'static>(
    s: &Shared,
    f: impl FnOnce(&ChainStore) -> Result<T, ChainError> + Send + 'static,
) -> Result<T, ApiError> {
    let chain = s.chain.clone();
    tokio::task::spawn_blocking(move || f(&chain))
        .await
        .map_err(|e| ApiError::internal("the data chain task failed", e))?
        .map_err(ApiError::from)
}

async fn export(
    s: Shared,
    signal: Signal,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let header_of = |h: header::HeaderName| {
        headers
            .get(h)
            .and_then(|v| v.to_str().ok())
            .map(String::from)
    };
    let encoding =
        otlp::encoding_of(header_of(header::CONTENT_TYPE).as_deref()).map_err(otlp_error)?;
    let content_encoding = header_of(header::CONTENT_ENCODING);
    let decoded = tokio::task::spawn_blocking(move || {
        let raw = otlp::decompress(content_encoding.as_deref(), &body, BODY_BYTES_MAX)?;
        otlp::decode(signal, encoding, &raw)
    })
    .await
    .map_err(|e| ApiError::internal("the decoding task failed", e))?
    .map_err(otlp_error)?;
    let answer = otlp::response(signal, encoding, &decoded);
    store(&s, decoded).await?;
    let ct = match encoding {
        Encoding::Protobuf => "application/x-protobuf",
        Encoding::Json => "application/json",
    };
    Ok(([(header::CONTENT_TYPE, ct)], answer).into_response())
}

/// Logs a decoded request's rows durably (OTLP/HTTP and OTLP/gRPC alike).
pub(crate) async fn store(s: &Shared, decoded: otlp::Decoded) -> Result<(), ApiError> {
    store_sampled(s, decoded.rows).await
}

/// Applies `chain.sample_percent` (never to a VIP's trace), then logs durably.
pub(crate) async fn store_sampled(
    s: &Shared,
    mut rows: steadfast_chain::Rows,
) -> Result<(), ApiError> {
    // Rates are taken before sampling, so a sampled store still alerts on true rates.
    let tap = crate::insight::SpanTap::of(&rows.spans, s.cfg.insight.interval_ms);
    let c = &s.cfg.chain;
    if c.sample_percent < 100 {
        let policy = steadfast_chain::sampling::Sampling {
            percent: c.sample_percent,
            vip_users: c.vip_users.iter().cloned().collect(),
            vip_attribute: c.vip_attribute.clone(),
        };
        let dropped = policy.apply(&mut rows);
        s.metrics.chain_sampled_out.inc_by(dropped as u64);
    }
    store_rows(s, rows).await?;
    s.insight.absorb(tap, crate::pipeline::wall_ms());
    Ok(())
}

/// Logs rows durably; returns once they are fsynced.
pub(crate) async fn store_rows(s: &Shared, rows: steadfast_chain::Rows) -> Result<(), ApiError> {
    let n = rows.len() as u64;
    let spans = steadfast_chain::graph::tap(&rows.spans);
    // Marked by attribute or tracestate; listed VIPs are applied when the list is read.
    let marks = steadfast_chain::sampling::Sampling {
        vip_attribute: s.cfg.chain.vip_attribute.clone(),
        ..Default::default()
    };
    let users = steadfast_chain::users::tap(&rows.spans, |sp| marks.is_vip(sp));
    with_chain(s, move |c| c.append(rows)).await?;
    // Only what is durable reaches the service map and the user list.
    if !spans.is_empty() {
        let now = crate::pipeline::wall_ms();
        let network = {
            let mut g = s.graph.lock().expect("graph lock");
            g.observe(&spans, now);
            g.take_network()
        };
        if !network.is_empty() {
            let tap = crate::insight::SpanTap::network(&network, s.cfg.insight.interval_ms);
            s.insight.absorb(tap, now);
        }
    }
    if !users.is_empty() {
        s.users.lock().expect("users lock").observe(&users);
    }
    s.metrics.chain_rows.inc_by(n);
    s.metrics
        .chain_rows_rate
        .lock()
        .expect("metrics lock")
        .add(crate::pipeline::wall_ms(), n);
    Ok(())
}

/// OTLP/HTTP traces: `ExportTraceServiceRequest`, protobuf or JSON, optionally gzip.
#[utoipa::path(post, path = "/v1/traces", request_body(content = Vec<u8>, content_type = "application/x-protobuf"),
    responses((status = 200, description = "stored (partial success lists what was rejected)"), (status = 400, body = crate::api::ErrorBody),
        (status = 413, body = crate::api::ErrorBody), (status = 415, body = crate::api::ErrorBody), (status = 503, body = crate::api::ErrorBody)),
    security(("token" = [])))]
pub async fn traces(
    State(s): State<Shared>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    export(s, Signal::Traces, headers, body).await
}

/// OTLP/HTTP metrics.
#[utoipa::path(post, path = "/v1/metrics", request_body(content = Vec<u8>, content_type = "application/x-protobuf"),
    responses((status = 200, description = "stored"), (status = 400, body = crate::api::ErrorBody)), security(("token" = [])))]
pub async fn metrics(
    State(s): State<Shared>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    export(s, Signal::Metrics, headers, body).await
}

/// OTLP/HTTP logs.
#[utoipa::path(post, path = "/v1/logs", request_body(content = Vec<u8>, content_type = "application/x-protobuf"),
    responses((status = 200, description = "stored"), (status = 400, body = crate::api::ErrorBody)), security(("token" = [])))]
pub async fn logs(
    State(s): State<Shared>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    export(s, Signal::Logs, headers, body).await
}

/// A SQL query over `spans`, `logs` and `metrics`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Query {
    pub sql: String,
}

/// Longest query text.
const SQL_BYTES_MAX: usize = 64 * 1024;

async fn run_query(s: &Shared, sql: String) -> Result<(serde_json::Value, bool), ApiError> {
    if sql.len() > SQL_BYTES_MAX {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_query",
            format!("a query is at most {SQL_BYTES_MAX} bytes"),
        ));
    }
    let snapshot = with_chain(s, |c| c.snapshot()).await?;
    let (batches, truncated) = snapshot.query(&sql).await?;
    Ok((batches_to_json(&batches)?, truncated))
}

/// Runs read-only SQL (DataFusion) over the stored spans, logs and metrics; at most
/// 10 000 rows (`truncated` says when there were more).
#[utoipa::path(post, path = "/api/v1/query", request_body = Query,
    responses((status = 200, description = "rows"), (status = 400, body = crate::api::ErrorBody)), security(("token" = [])))]
pub async fn query(
    State(s): State<Shared>,
    b: Result<Json<Query>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(q) =
        b.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_body", e.body_text()))?;
    let lowered = q.sql.trim_start().to_ascii_lowercase();
    if !(lowered.starts_with("select")
        || lowered.starts_with("with")
        || lowered.starts_with("explain"))
    {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_query",
            "only SELECT, WITH and EXPLAIN queries are run",
        ));
    }
    let (rows, truncated) = run_query(&s, q.sql).await?;
    Ok(Json(json!({ "rows": rows, "truncated": truncated })).into_response())
}

/// One trace's spans, oldest first.
#[utoipa::path(get, path = "/api/v1/traces/{trace_id}", params(("trace_id" = String, Path, description = "32 hex digits")),
    responses((status = 200, description = "spans"), (status = 400, body = crate::api::ErrorBody), (status = 404, body = crate::api::ErrorBody)), security(("token" = [])))]
pub async fn trace(State(s): State<Shared>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let id = id.to_ascii_lowercase();
    if id.len() != 32 || !id.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_trace_id",
            "a trace id is 32 hex digits",
        ));
    }
    let wanted = u128::from_str_radix(&id, 16).expect("32 hex digits");
    let snapshot = with_chain(&s, move |c| c.snapshot())
        .await?
        .narrow(|i| i.has_trace(wanted));
    let (batches, _) = snapshot
        .lookup(&format!(
            "SELECT * FROM spans WHERE trace_id = '{id}' ORDER BY start_time"
        ))
        .await?;
    let rows = batches_to_json(&batches)?;
    if rows.as_array().is_none_or(|r| r.is_empty()) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no span of trace {id} is stored"),
        ));
    }
    Ok(Json(json!({ "trace_id": id, "spans": rows })).into_response())
}

/// Flushes every second; compacts and applies retention every minute.
pub async fn maintain(s: Shared, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_millis(FLUSH_EVERY_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut n: u64 = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => {
                let _ = with_chain(&s, |c| c.flush()).await;
                return;
            }
        }
        n += 1;
        if let Err(e) = with_chain(&s, |c| c.flush()).await {
            tracing::error!(error = ?e, "data chain flush failed");
        }
        if n.is_multiple_of(MAINTAIN_EVERY_SECS * 1000 / FLUSH_EVERY_MS) {
            let keep_ns = s.cfg.chain.retention_secs as i64 * 1_000_000_000;
            let max_bytes = s.cfg.chain.max_bytes;
            let now_ns = crate::pipeline::wall_ms() * 1_000_000;
            let r = with_chain(&s, move |c| {
                for t in steadfast_store::chain::TABLES {
                    while c.compact(t, COMPACT_SMALL_BYTES)? > 0 {}
                }
                c.retain(now_ns - keep_ns, max_bytes)
            })
            .await;
            if let Err(e) = r {
                tracing::error!(error = ?e, "data chain compaction or retention failed");
            }
        }
    }
}

/// A SQL string literal: quotes doubled, so a value is never read as SQL.
fn literal(v: &str) -> String {
    format!("'{}'", v.replace('\'', "''"))
}

/// Longest user id a journey is asked for.
const USER_ID_BYTES_MAX: usize = 256;
/// Traces one journey answer holds at most (the newest).
pub const JOURNEY_TRACES_MAX: usize = 200;
/// Spans read for one journey at most (a query's row bound).
const JOURNEY_SPANS_MAX: usize = steadfast_store::chain::QUERY_ROWS_MAX;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JourneyParams {
    pub user: String,
    /// Only traces from this time on (ms since the epoch).
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    /// Newest traces kept (default 50, at most 200).
    pub limit: Option<usize>,
}

/// Rows of `sql` over `snapshot` as JSON.
async fn rows_of(
    snapshot: &steadfast_store::chain::Snapshot,
    sql: &str,
) -> Result<Vec<serde_json::Value>, ApiError> {
    let (b, _) = snapshot.query(sql).await?;
    Ok(into_rows(batches_to_json(&b)?))
}

/// [`rows_of`] for a lookup that keeps few rows ([`steadfast_store::chain::Snapshot::lookup`]).
async fn lookup_rows(
    snapshot: &steadfast_store::chain::Snapshot,
    sql: &str,
) -> Result<Vec<serde_json::Value>, ApiError> {
    let (b, _) = snapshot.lookup(sql).await?;
    Ok(into_rows(batches_to_json(&b)?))
}

/// The rows of a JSON array (none when it is something else).
fn into_rows(v: serde_json::Value) -> Vec<serde_json::Value> {
    match v {
        serde_json::Value::Array(rows) => rows,
        _ => Vec::new(),
    }
}

/// A user's journey: their sessions, the traces they caused (front end to database)
/// with where the time went, the logs of those traces, the proxy's access-log lines and
/// the network flows that carried them, and the fund records the traces wrote (by trace
/// id or order id).
#[utoipa::path(get, path = "/api/v1/journeys", params(("user" = String, Query), ("since_ms" = Option<i64>, Query), ("until_ms" = Option<i64>, Query), ("limit" = Option<usize>, Query)),
    responses((status = 200, description = "the journey"), (status = 400, body = crate::api::ErrorBody), (status = 404, body = crate::api::ErrorBody)), security(("token" = [])))]
pub async fn journey(
    State(s): State<Shared>,
    q: Result<axum::extract::Query<JourneyParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let axum::extract::Query(q) =
        q.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_query", e.body_text()))?;
    if q.user.is_empty() || q.user.len() > USER_ID_BYTES_MAX {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_user",
            format!("a user id is 1 to {USER_ID_BYTES_MAX} bytes"),
        ));
    }
    let limit = q.limit.unwrap_or(50).clamp(1, JOURNEY_TRACES_MAX);
    let mut window = String::new();
    if let Some(t) = q.since_ms {
        window += &format!(" AND start_time >= to_timestamp_millis({t})");
    }
    if let Some(t) = q.until_ms {
        window += &format!(" AND start_time < to_timestamp_millis({t})");
    }
    let user = q.user.clone();
    // The user's newest traces: from the file indexes (no file is scanned for them), and
    // from the rows not yet flushed.
    let snapshot = with_chain(&s, move |c| c.snapshot()).await?;
    let (lo, hi) = (
        q.since_ms.map_or(i64::MIN, |t| t.saturating_mul(1_000_000)),
        q.until_ms.map_or(i64::MAX, |t| t.saturating_mul(1_000_000)),
    );
    let mut found: Vec<(i64, String)> = snapshot
        .indexed_user_traces(&user, usize::MAX)
        .into_iter()
        .filter(|(t, _)| (lo..hi).contains(t))
        .take(limit)
        .map(|(t, id)| (t, format!("{id:032x}")))
        .collect();
    let recent = snapshot.recent();
    let newest = rows_of(
        &recent,
        &format!(
            "SELECT trace_id, CAST(max(start_time) AS BIGINT) AS t FROM spans WHERE user_id = {}{window} \
             GROUP BY trace_id ORDER BY t DESC LIMIT {limit}",
            literal(&q.user)
        ),
    )
    .await?;
    found.extend(
        newest
            .iter()
            .filter_map(|r| Some((r["t"].as_i64()?, r["trace_id"].as_str()?.to_string()))),
    );
    found.sort_unstable_by(|a, b| b.cmp(a));
    let mut seen = std::collections::HashSet::new();
    found.retain(|(_, t)| seen.insert(t.clone()));
    found.truncate(limit);
    let traces: Vec<String> = found.into_iter().map(|(_, t)| t).collect();
    if traces.is_empty() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no span of user {:?} is stored", q.user),
        ));
    }
    let wanted: Vec<u128> = traces
        .iter()
        .filter_map(|t| u128::from_str_radix(t, 16).ok())
        .collect();
    let theirs = with_chain(&s, move |c| c.snapshot())
        .await?
        .narrow(move |i| wanted.iter().any(|t| i.has_trace(*t)));
    let list = traces
        .iter()
        .map(|t| literal(t))
        .collect::<Vec<_>>()
        .join(",");
    // The spans, the logs and the proxy's access-log lines of these traces at once; the
    // fund records and the flows then follow from what they name.
    let spans_sql = format!(
        "SELECT * FROM spans WHERE trace_id IN ({list}) ORDER BY start_time LIMIT {JOURNEY_SPANS_MAX}"
    );
    let logs_sql = format!(
        "SELECT time, service, severity_text, body, trace_id, span_id FROM logs \
         WHERE trace_id IN ({list}) ORDER BY time LIMIT 1000"
    );
    // The edge: the proxy's access-log lines of these traces, and the network flows
    // that carried those connections (by Community ID).
    let edge_sql = format!(
        "SELECT time, host, method, uri, status, request_time_ns, upstream_response_ns, \
         remote_addr, remote_port, server_addr, server_port, community_id, trace_id \
         FROM access_logs WHERE trace_id IN ({list}) ORDER BY time LIMIT 1000"
    );
    let (found_spans, logs, edge) = tokio::join!(
        theirs.lookup(&spans_sql),
        lookup_rows(&theirs, &logs_sql),
        lookup_rows(&theirs, &edge_sql)
    );
    let ((batches, spans_cut), logs, edge) = (found_spans?, logs?, edge?);
    let spans = steadfast_chain::arrow_rows::spans_from_batches(&batches)
        .map_err(|e| ApiError::internal("spans could not be read back", e))?;
    let summaries = steadfast_chain::journey::summarise(&spans);
    let orders: Vec<String> = summaries
        .iter()
        .flat_map(|t| t.order_ids.iter().map(|o| literal(o)))
        .collect();
    let order_clause = if orders.is_empty() {
        String::new()
    } else {
        format!(" OR order_id IN ({})", orders.join(","))
    };
    let funds_sql = format!(
        "SELECT time, source, kind, record_id, order_id, trace_id, amount_minor, currency, scale, status \
         FROM fund_records WHERE trace_id IN ({list}){order_clause} ORDER BY time LIMIT 1000"
    );
    let communities: std::collections::BTreeSet<String> = edge
        .iter()
        .filter_map(|r| r["community_id"].as_str().map(literal))
        .collect();
    let flows_sql = (!communities.is_empty()).then(|| {
        format!(
            "SELECT start_time, end_time, exporter, version, src_addr, src_port, dst_addr, \
             dst_port, protocol, bytes, packets, community_id FROM flows \
             WHERE community_id IN ({}) ORDER BY start_time LIMIT 1000",
            communities.into_iter().collect::<Vec<_>>().join(",")
        )
    });
    let (funds, flows) = tokio::join!(lookup_rows(&theirs, &funds_sql), async {
        match &flows_sql {
            Some(sql) => lookup_rows(&theirs, sql).await,
            None => Ok(Vec::new()),
        }
    });
    let (funds, flows) = (funds?, flows?);
    let mut total = steadfast_chain::journey::Breakdown::default();
    let mut sessions: std::collections::BTreeMap<String, (i64, i64, usize)> = Default::default();
    let mut out_traces = Vec::new();
    for t in &summaries {
        total.client_ns += t.breakdown.client_ns;
        total.network_ns += t.breakdown.network_ns;
        total.server_ns += t.breakdown.server_ns;
        total.database_ns += t.breakdown.database_ns;
        if let Some(sid) = &t.session_id {
            let e =
                sessions
                    .entry(sid.clone())
                    .or_insert((t.start_ns, t.start_ns + t.duration_ns, 0));
            e.0 = e.0.min(t.start_ns);
            e.1 = e.1.max(t.start_ns + t.duration_ns);
            e.2 += 1;
        }
        let linked = |r: &&serde_json::Value| {
            r["trace_id"].as_str() == Some(t.trace_id.as_str())
                || r["order_id"]
                    .as_str()
                    .is_some_and(|o| t.order_ids.iter().any(|x| x == o))
        };
        let mut v = serde_json::to_value(t).expect("a summary serializes");
        v["fund_records"] = json!(funds.iter().filter(linked).collect::<Vec<_>>());
        v["logs"] = json!(logs
            .iter()
            .filter(|r| r["trace_id"].as_str() == Some(t.trace_id.as_str()))
            .collect::<Vec<_>>());
        let mine: Vec<&serde_json::Value> = edge
            .iter()
            .filter(|r| r["trace_id"].as_str() == Some(t.trace_id.as_str()))
            .collect();
        v["flows"] = json!(flows
            .iter()
            .filter(|f| mine.iter().any(|e| e["community_id"] == f["community_id"]))
            .collect::<Vec<_>>());
        v["edge"] = json!(mine);
        v["spans_list"] = json!(spans
            .iter()
            .filter(|sp| sp.trace_id == t.trace_id)
            .map(|sp| json!({
                "span_id": sp.span_id, "parent_span_id": sp.parent_span_id, "service": sp.service,
                "name": sp.name, "kind": sp.kind, "status": sp.status, "start_ns": sp.start_ns,
                "duration_ns": sp.end_ns - sp.start_ns, "http_route": sp.http_route,
                "http_status": sp.http_status, "db_statement": sp.db_statement,
            }))
            .collect::<Vec<_>>());
        out_traces.push(v);
    }
    let sessions: Vec<serde_json::Value> = sessions
        .into_iter()
        .map(|(id, (a, b, n))| json!({ "session_id": id, "start_ns": a, "end_ns": b, "traces": n }))
        .collect();
    Ok(Json(json!({
        "user": q.user,
        "sessions": sessions,
        "traces": out_traces,
        "breakdown": total,
        "truncated": spans_cut || traces.len() == limit,
    }))
    .into_response())
}

/// Users one answer of `GET /api/v1/journeys/users` lists at most.
pub const JOURNEY_USERS_MAX: usize = 200;

/// The users seen in spans from `since_ms` on (default the last hour): VIP users first,
/// then the most recently seen, at most [`JOURNEY_USERS_MAX`]. A range that started
/// after this server did is read from the list it keeps as spans arrive; an older one
/// from the stored spans.
#[utoipa::path(get, path = "/api/v1/journeys/users", params(("since_ms" = Option<i64>, Query)),
    responses((status = 200, description = "users, VIP first"), (status = 400, body = crate::api::ErrorBody)), security(("token" = [])))]
pub async fn journey_users(
    State(s): State<Shared>,
    q: Result<axum::extract::Query<MapParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let axum::extract::Query(q) =
        q.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_query", e.body_text()))?;
    let since = q.since_ms.unwrap_or(crate::pipeline::wall_ms() - 3_600_000);
    let c = &s.cfg.chain;
    // From the book kept as spans arrive, when it has seen the whole range.
    let since_ns = since.saturating_mul(1_000_000);
    {
        let book = s.users.lock().expect("users lock");
        if book.whole_from_ns() <= since_ns {
            let rows: Vec<serde_json::Value> = book
                .list(
                    since_ns,
                    |u| c.vip_users.iter().any(|v| v == u),
                    JOURNEY_USERS_MAX,
                )
                .into_iter()
                .map(|u| {
                    json!({"user": u.user, "last_seen_ms": u.last_seen_ns / 1_000_000,
                        "traces": u.traces, "vip": u.vip})
                })
                .collect();
            return Ok(Json(json!(rows)).into_response());
        }
    }
    let listed = if c.vip_users.is_empty() {
        "FALSE".to_string()
    } else {
        let names: Vec<String> = c.vip_users.iter().map(|u| literal(u)).collect();
        format!("user_id IN ({})", names.join(","))
    };
    // A VIP as the sampler sees one: listed, marked by the attribute, or by tracestate.
    let marked = format!(
        "{listed} OR trace_state LIKE {} OR attributes LIKE {} OR attributes LIKE {}",
        literal(&format!("%{}%", steadfast_chain::sampling::VIP_TRACESTATE)),
        literal(&format!("%\"{}\":true%", c.vip_attribute)),
        literal(&format!("%\"{}\":\"true\"%", c.vip_attribute)),
    );
    let snapshot = with_chain(&s, |c| c.snapshot()).await?;
    let rows = rows_of(
        &snapshot,
        &format!(
            "SELECT user_id AS user, CAST(max(start_time) AS BIGINT) / 1000000 AS last_seen_ms, \
               count(DISTINCT trace_id) AS traces, \
               max(CASE WHEN {marked} THEN 1 ELSE 0 END) = 1 AS vip \
             FROM spans WHERE user_id IS NOT NULL AND start_time >= to_timestamp_millis({since}) \
             GROUP BY user_id ORDER BY vip DESC, last_seen_ms DESC LIMIT {JOURNEY_USERS_MAX}"
        ),
    )
    .await?;
    Ok(Json(json!(rows)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MapParams {
    /// From this time on (ms since the epoch); default the last hour.
    pub since_ms: Option<i64>,
}

/// The service map: one edge per caller and callee seen in spans (a child span in another
/// service than its parent, or a database call), with calls, calls per second, errors
/// and latency percentiles of the callee. A range that starts after this server did is
/// answered from the map it keeps as spans arrive (`source: live`; the range starts at
/// its whole minute, latency within 12.5 %); an older one is joined over the stored
/// spans (`source: stored`).
#[utoipa::path(get, path = "/api/v1/service-map", params(("since_ms" = Option<i64>, Query)),
    responses((status = 200, description = "edges"), (status = 400, body = crate::api::ErrorBody)), security(("token" = [])))]
pub async fn service_map(
    State(s): State<Shared>,
    q: Result<axum::extract::Query<MapParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let axum::extract::Query(q) =
        q.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_query", e.body_text()))?;
    let now = crate::pipeline::wall_ms();
    let since = q.since_ms.unwrap_or(now - 3_600_000);
    let secs = ((now - since).max(1_000) as f64) / 1000.0;
    let (edges, source) = edge_rows(&s, since).await?;
    let edges: Vec<serde_json::Value> = edges
        .into_iter()
        .map(|mut e| {
            let calls = e["calls"].as_f64().unwrap_or(0.0);
            e["per_sec"] = json!((calls / secs * 1000.0).round() / 1000.0);
            e
        })
        .collect();
    Ok(Json(json!({ "since_ms": since, "source": source, "edges": edges })).into_response())
}

/// The service map's edges since `since` (ms): caller, callee, calls, errors and the
/// callee's latency percentiles.
async fn edge_rows(
    s: &Shared,
    since: i64,
) -> Result<(Vec<serde_json::Value>, &'static str), ApiError> {
    // From the live graph when it has seen the whole range (in whole minutes), else
    // joined over the stored spans (a range from before this server started).
    let since_ns = since.saturating_mul(1_000_000);
    {
        let g = s.graph.lock().expect("graph lock");
        if g.whole_from_ns() <= since_ns {
            let edges = g
                .edges(since_ns, i64::MAX)
                .into_iter()
                .map(|e| {
                    json!({"caller": e.caller, "callee": e.callee, "calls": e.calls,
                        "errors": e.errors, "p50_ns": e.p50_ns, "p99_ns": e.p99_ns})
                })
                .collect();
            return Ok((edges, "live"));
        }
    }
    let snapshot = with_chain(s, |c| c.snapshot()).await?;
    rows_of(
        &snapshot,
        &format!(
            "WITH w AS (SELECT * FROM spans WHERE start_time >= to_timestamp_millis({since})), \
             calls AS ( \
               SELECT p.service AS caller, c.service AS callee, c.status AS status, c.duration_ns AS d \
               FROM w c JOIN w p ON c.trace_id = p.trace_id AND c.parent_span_id = p.span_id \
               WHERE p.service <> c.service \
               UNION ALL \
               SELECT service AS caller, \
                 coalesce(db_system, 'database') AS callee, status, duration_ns AS d \
               FROM w WHERE db_statement IS NOT NULL OR db_system IS NOT NULL) \
             SELECT caller, callee, count(*) AS calls, \
               sum(CASE WHEN status = 'error' THEN 1 ELSE 0 END) AS errors, \
               approx_percentile_cont(d, 0.5) AS p50_ns, approx_percentile_cont(d, 0.99) AS p99_ns \
             FROM calls GROUP BY caller, callee ORDER BY caller, callee"
        ),
    )
    .await
    .map(|rows| (rows, "stored"))
}

/// Caller → callee pairs between services since `since` (ms), for the detectors' merge
/// and root-cause analysis (database calls stay inside their service).
pub(crate) async fn service_edges(
    s: &Shared,
    since: i64,
) -> Result<Vec<(String, String)>, ApiError> {
    let (rows, _) = edge_rows(s, since).await?;
    let pairs: Vec<(String, String)> = rows
        .into_iter()
        .filter_map(|e| {
            Some((
                e["caller"].as_str()?.to_string(),
                e["callee"].as_str()?.to_string(),
            ))
        })
        .collect();
    // Every service calls something (at least its database); a database system calls
    // nothing. Keeping callees that are callers drops the database nodes, which would
    // otherwise join every service that uses the same kind of database.
    let services: std::collections::HashSet<String> =
        pairs.iter().map(|(a, _)| a.clone()).collect();
    Ok(pairs
        .into_iter()
        .filter(|(_, callee)| services.contains(callee))
        .collect())
}

/// The chain's copy of accepted fund records (drill records are the drill's, not kept).
pub(crate) fn fund_rows(records: &[steadfast_model::FundRecord]) -> Vec<steadfast_chain::FundRow> {
    records
        .iter()
        .filter(|r| r.drill.is_none())
        .map(|r| steadfast_chain::FundRow {
            time_ns: r.event_time.saturating_mul(1_000_000),
            source: r.source.clone(),
            kind: r.kind.clone(),
            record_id: r.record_id.clone(),
            order_id: r.order_id.clone(),
            trace_id: r.trace_id.as_ref().map(|t| t.to_ascii_lowercase()),
            amount_minor: r.amount.minor,
            currency: r.amount.currency.code().to_string(),
            scale: r.amount.currency.exponent() as i32,
            status: r.status.clone(),
            keys: serde_json::to_string(&r.keys).unwrap_or_else(|_| "{}".into()),
        })
        .collect()
}

/// Keeps the copy beside the telemetry. The records themselves are durable in the fund
/// WAL already, so the copy does not wait for its own fsync (the next one covers it), and
/// a copy the chain cannot take (full, or failing) is counted, not an ingest error.
pub(crate) async fn copy_funds(s: &Shared, funds: Vec<steadfast_chain::FundRow>) {
    if funds.is_empty() {
        return;
    }
    let rows = steadfast_chain::Rows {
        funds,
        ..Default::default()
    };
    if let Err(e) = with_chain(s, move |c| c.append_relaxed(rows)).await {
        s.metrics.chain_fund_copies_dropped.inc();
        tracing::warn!(error = ?e, "fund records were not copied to the data chain");
    }
}
