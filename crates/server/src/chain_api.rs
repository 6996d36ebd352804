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
    let rows = decoded.rows;
    let n = rows.len() as u64;
    with_chain(s, move |c| c.append(rows)).await?;
    s.metrics.chain_rows.inc_by(n);
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
        .query(&format!(
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
