//! Rows as Arrow record batches: one typed column per hot key (times as nanosecond
//! timestamps, ids and names as strings), the remaining attributes as a JSON string.
//! The tables are `spans`, `logs` and `metrics`.

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray,
    TimestampNanosecondArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::error::ArrowError;

use crate::flow::FlowRow;
use crate::nginx::AccessRow;
use crate::rows::{FundRow, LogRow, MetricRow, SpanRow};

fn ts(name: &str) -> Field {
    Field::new(name, DataType::Timestamp(TimeUnit::Nanosecond, None), false)
}

fn text(name: &str, nullable: bool) -> Field {
    Field::new(name, DataType::Utf8, nullable)
}

pub fn span_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        ts("start_time"),
        ts("end_time"),
        Field::new("duration_ns", DataType::Int64, false),
        text("trace_id", false),
        text("span_id", false),
        text("parent_span_id", true),
        text("service", false),
        text("name", false),
        text("kind", false),
        text("status", false),
        text("user_id", true),
        text("session_id", true),
        text("order_id", true),
        text("http_method", true),
        text("http_route", true),
        Field::new("http_status", DataType::Int64, true),
        text("db_statement", true),
        text("db_system", true),
        text("trace_state", true),
        text("attributes", false),
    ]))
}

pub fn log_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        ts("time"),
        text("service", false),
        Field::new("severity_number", DataType::Int32, false),
        text("severity_text", false),
        text("body", false),
        text("trace_id", true),
        text("span_id", true),
        text("user_id", true),
        text("session_id", true),
        text("attributes", false),
    ]))
}

pub fn metric_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        ts("time"),
        text("service", false),
        text("name", false),
        text("unit", false),
        text("kind", false),
        Field::new("value", DataType::Float64, false),
        Field::new("count", DataType::Int64, true),
        text("attributes", false),
    ]))
}

pub fn fund_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        ts("time"),
        text("source", false),
        text("kind", false),
        text("record_id", false),
        text("order_id", true),
        text("trace_id", true),
        Field::new("amount_minor", DataType::Int64, false),
        text("currency", false),
        Field::new("scale", DataType::Int32, false),
        text("status", true),
        text("keys", false),
    ]))
}

fn int(name: &str, nullable: bool) -> Field {
    Field::new(name, DataType::Int64, nullable)
}

fn int32(name: &str, nullable: bool) -> Field {
    Field::new(name, DataType::Int32, nullable)
}

pub fn access_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        ts("time"),
        text("host", true),
        text("remote_addr", true),
        int32("remote_port", true),
        text("server_addr", true),
        int32("server_port", true),
        text("method", false),
        text("uri", false),
        int32("status", false),
        int("bytes_sent", true),
        int("request_length", true),
        int("request_time_ns", true),
        text("upstream_addr", true),
        int("upstream_connect_ns", true),
        int("upstream_header_ns", true),
        int("upstream_response_ns", true),
        text("trace_id", true),
        text("span_id", true),
        text("user_agent", true),
        text("request_id", true),
        text("community_id", true),
    ]))
}

pub fn flow_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        ts("start_time"),
        ts("end_time"),
        text("exporter", false),
        int32("version", false),
        text("src_addr", false),
        int32("src_port", false),
        text("dst_addr", false),
        int32("dst_port", false),
        int32("protocol", false),
        int("bytes", false),
        int("packets", false),
        int32("tcp_flags", false),
        text("community_id", true),
    ]))
}

fn i64s<T>(rows: &[T], f: impl Fn(&T) -> i64) -> ArrayRef {
    Arc::new(Int64Array::from_iter_values(rows.iter().map(f)))
}

fn opt_i64s<T>(rows: &[T], f: impl Fn(&T) -> Option<i64>) -> ArrayRef {
    Arc::new(rows.iter().map(f).collect::<Int64Array>())
}

fn i32s<T>(rows: &[T], f: impl Fn(&T) -> i32) -> ArrayRef {
    Arc::new(Int32Array::from_iter_values(rows.iter().map(f)))
}

fn opt_i32s<T>(rows: &[T], f: impl Fn(&T) -> Option<i32>) -> ArrayRef {
    Arc::new(rows.iter().map(f).collect::<Int32Array>())
}

pub fn access_batch(rows: &[AccessRow]) -> Result<RecordBatch, ArrowError> {
    RecordBatch::try_new(
        access_schema(),
        vec![
            times(rows, |r| r.time_ns),
            opt_strs(rows, |r| r.host.as_deref()),
            opt_strs(rows, |r| r.remote_addr.as_deref()),
            opt_i32s(rows, |r| r.remote_port),
            opt_strs(rows, |r| r.server_addr.as_deref()),
            opt_i32s(rows, |r| r.server_port),
            strs(rows, |r| &r.method),
            strs(rows, |r| &r.uri),
            i32s(rows, |r| r.status),
            opt_i64s(rows, |r| r.bytes_sent),
            opt_i64s(rows, |r| r.request_length),
            opt_i64s(rows, |r| r.request_time_ns),
            opt_strs(rows, |r| r.upstream_addr.as_deref()),
            opt_i64s(rows, |r| r.upstream_connect_ns),
            opt_i64s(rows, |r| r.upstream_header_ns),
            opt_i64s(rows, |r| r.upstream_response_ns),
            opt_strs(rows, |r| r.trace_id.as_deref()),
            opt_strs(rows, |r| r.span_id.as_deref()),
            opt_strs(rows, |r| r.user_agent.as_deref()),
            opt_strs(rows, |r| r.request_id.as_deref()),
            opt_strs(rows, |r| r.community_id.as_deref()),
        ],
    )
}

pub fn flows_batch(rows: &[FlowRow]) -> Result<RecordBatch, ArrowError> {
    RecordBatch::try_new(
        flow_schema(),
        vec![
            times(rows, |r| r.start_ns),
            times(rows, |r| r.end_ns),
            strs(rows, |r| &r.exporter),
            i32s(rows, |r| r.version),
            strs(rows, |r| &r.src_addr),
            i32s(rows, |r| r.src_port),
            strs(rows, |r| &r.dst_addr),
            i32s(rows, |r| r.dst_port),
            i32s(rows, |r| r.protocol),
            i64s(rows, |r| r.bytes),
            i64s(rows, |r| r.packets),
            i32s(rows, |r| r.tcp_flags),
            opt_strs(rows, |r| r.community_id.as_deref()),
        ],
    )
}

fn strs<'a, T: 'a>(rows: &'a [T], f: impl Fn(&'a T) -> &'a str) -> ArrayRef {
    Arc::new(StringArray::from_iter_values(rows.iter().map(f)))
}

fn opt_strs<'a, T: 'a>(rows: &'a [T], f: impl Fn(&'a T) -> Option<&'a str>) -> ArrayRef {
    Arc::new(rows.iter().map(f).collect::<StringArray>())
}

fn times<T>(rows: &[T], f: impl Fn(&T) -> i64) -> ArrayRef {
    Arc::new(TimestampNanosecondArray::from_iter_values(
        rows.iter().map(f),
    ))
}

pub fn spans_batch(rows: &[SpanRow]) -> Result<RecordBatch, ArrowError> {
    RecordBatch::try_new(
        span_schema(),
        vec![
            times(rows, |r| r.start_ns),
            times(rows, |r| r.end_ns),
            Arc::new(Int64Array::from_iter_values(
                rows.iter().map(|r| r.end_ns.saturating_sub(r.start_ns)),
            )),
            strs(rows, |r| &r.trace_id),
            strs(rows, |r| &r.span_id),
            opt_strs(rows, |r| r.parent_span_id.as_deref()),
            strs(rows, |r| &r.service),
            strs(rows, |r| &r.name),
            strs(rows, |r| &r.kind),
            strs(rows, |r| &r.status),
            opt_strs(rows, |r| r.user_id.as_deref()),
            opt_strs(rows, |r| r.session_id.as_deref()),
            opt_strs(rows, |r| r.order_id.as_deref()),
            opt_strs(rows, |r| r.http_method.as_deref()),
            opt_strs(rows, |r| r.http_route.as_deref()),
            Arc::new(rows.iter().map(|r| r.http_status).collect::<Int64Array>()),
            opt_strs(rows, |r| r.db_statement.as_deref()),
            opt_strs(rows, |r| r.db_system.as_deref()),
            opt_strs(rows, |r| r.trace_state.as_deref()),
            strs(rows, |r| &r.attributes),
        ],
    )
}

pub fn logs_batch(rows: &[LogRow]) -> Result<RecordBatch, ArrowError> {
    RecordBatch::try_new(
        log_schema(),
        vec![
            times(rows, |r| r.time_ns),
            strs(rows, |r| &r.service),
            Arc::new(Int32Array::from_iter_values(
                rows.iter().map(|r| r.severity_number),
            )),
            strs(rows, |r| &r.severity_text),
            strs(rows, |r| &r.body),
            opt_strs(rows, |r| r.trace_id.as_deref()),
            opt_strs(rows, |r| r.span_id.as_deref()),
            opt_strs(rows, |r| r.user_id.as_deref()),
            opt_strs(rows, |r| r.session_id.as_deref()),
            strs(rows, |r| &r.attributes),
        ],
    )
}

pub fn metrics_batch(rows: &[MetricRow]) -> Result<RecordBatch, ArrowError> {
    RecordBatch::try_new(
        metric_schema(),
        vec![
            times(rows, |r| r.time_ns),
            strs(rows, |r| &r.service),
            strs(rows, |r| &r.name),
            strs(rows, |r| &r.unit),
            strs(rows, |r| &r.kind),
            Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.value))),
            Arc::new(rows.iter().map(|r| r.count).collect::<Int64Array>()),
            strs(rows, |r| &r.attributes),
        ],
    )
}

pub fn funds_batch(rows: &[FundRow]) -> Result<RecordBatch, ArrowError> {
    RecordBatch::try_new(
        fund_schema(),
        vec![
            times(rows, |r| r.time_ns),
            strs(rows, |r| &r.source),
            strs(rows, |r| &r.kind),
            strs(rows, |r| &r.record_id),
            opt_strs(rows, |r| r.order_id.as_deref()),
            opt_strs(rows, |r| r.trace_id.as_deref()),
            Arc::new(Int64Array::from_iter_values(
                rows.iter().map(|r| r.amount_minor),
            )),
            strs(rows, |r| &r.currency),
            Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| r.scale))),
            opt_strs(rows, |r| r.status.as_deref()),
            strs(rows, |r| &r.keys),
        ],
    )
}

fn col<'a, T: 'static>(b: &'a RecordBatch, name: &str) -> Result<&'a T, ArrowError> {
    b.column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<T>())
        .ok_or_else(|| ArrowError::SchemaError(format!("no column {name} of the expected type")))
}

/// Spans back from batches of the `spans` schema (a query's `SELECT *`).
pub fn spans_from_batches(batches: &[RecordBatch]) -> Result<Vec<SpanRow>, ArrowError> {
    let mut out = Vec::new();
    for b in batches {
        let start = col::<TimestampNanosecondArray>(b, "start_time")?;
        let end = col::<TimestampNanosecondArray>(b, "end_time")?;
        let s = |n: &str| col::<StringArray>(b, n);
        let (trace, span, parent) = (s("trace_id")?, s("span_id")?, s("parent_span_id")?);
        let (service, name, kind, status) = (s("service")?, s("name")?, s("kind")?, s("status")?);
        let (user, session, order) = (s("user_id")?, s("session_id")?, s("order_id")?);
        let (method, route, db, db_system, state, attrs) = (
            s("http_method")?,
            s("http_route")?,
            s("db_statement")?,
            s("db_system")?,
            s("trace_state")?,
            s("attributes")?,
        );
        let http_status = col::<Int64Array>(b, "http_status")?;
        let opt = |a: &StringArray, i: usize| a.is_valid(i).then(|| a.value(i).to_string());
        for i in 0..b.num_rows() {
            out.push(SpanRow {
                start_ns: start.value(i),
                end_ns: end.value(i),
                trace_id: trace.value(i).into(),
                span_id: span.value(i).into(),
                parent_span_id: opt(parent, i),
                service: service.value(i).into(),
                name: name.value(i).into(),
                kind: kind.value(i).into(),
                status: status.value(i).into(),
                user_id: opt(user, i),
                session_id: opt(session, i),
                order_id: opt(order, i),
                http_method: opt(method, i),
                http_route: opt(route, i),
                http_status: http_status.is_valid(i).then(|| http_status.value(i)),
                db_statement: opt(db, i),
                db_system: opt(db_system, i),
                trace_state: opt(state, i),
                attributes: attrs.value(i).into(),
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_carry_every_row_with_nulls_where_absent() {
        let rows = vec![
            SpanRow {
                start_ns: 10,
                end_ns: 25,
                trace_id: "t".into(),
                span_id: "s".into(),
                user_id: Some("u".into()),
                http_status: Some(200),
                attributes: "{}".into(),
                ..Default::default()
            },
            SpanRow {
                attributes: "{}".into(),
                ..Default::default()
            },
        ];
        let b = spans_batch(&rows).unwrap();
        assert_eq!(
            (b.num_rows(), b.num_columns()),
            (2, span_schema().fields().len())
        );
        let dur = b
            .column_by_name("duration_ns")
            .unwrap()
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        assert_eq!(dur.value(0), 15);
        assert!(b.column_by_name("user_id").unwrap().is_null(1));
        assert_eq!(logs_batch(&[]).unwrap().num_rows(), 0);
        assert_eq!(
            metrics_batch(&[MetricRow {
                attributes: "{}".into(),
                ..Default::default()
            }])
            .unwrap()
            .num_rows(),
            1
        );
    }
}
