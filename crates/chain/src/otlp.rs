//! OTLP requests, decoded with `opentelemetry-proto` (prost messages; its serde for the
//! JSON encoding, hex trace and span ids) and normalised into [`Rows`].
//!
//! Limits: a body is at most [`BODY_BYTES_MAX`] after decompression (past it,
//! [`OtlpError::TooLarge`]: 413); attribute values and counts are trimmed per
//! [`crate::rows`]. A span or log record with an invalid trace or span id is rejected on
//! its own and counted in the partial-success answer; the rest of the request is kept.

use std::io::Read;

use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsPartialSuccess, ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsPartialSuccess, ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{metric, number_data_point};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;
use serde_json::{Map, Value};

use crate::rows::{
    cut, normalise, LogRow, MetricRow, Rows, SpanRow, ATTRS_PER_ITEM_MAX, ATTR_VALUE_BYTES_MAX,
    TEXT_BYTES_MAX,
};

/// Largest request body after decompression.
pub const BODY_BYTES_MAX: usize = 16 * 1024 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    Traces,
    Metrics,
    Logs,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    Protobuf,
    Json,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OtlpError {
    #[error("unsupported content type {0:?}: OTLP/HTTP takes application/x-protobuf or application/json")]
    UnsupportedMediaType(String),
    #[error("the body is larger than {max} bytes after decompression")]
    TooLarge { max: usize },
    #[error("unsupported content encoding {0:?}: gzip or none")]
    UnsupportedEncoding(String),
    #[error("the body is not a valid OTLP {what}: {why}")]
    Malformed { what: &'static str, why: String },
}

/// A decoded request: its rows, and what was left out or cut.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Decoded {
    pub rows: Rows,
    /// Spans, log records or points refused on their own (partial success).
    pub rejected: i64,
    /// Attribute values cut or attributes dropped by the limits.
    pub trimmed: u64,
    /// Why the rejected ones were refused (the first reason).
    pub message: Option<String>,
}

/// The encoding a `content-type` names (parameters such as `charset` are ignored).
pub fn encoding_of(content_type: Option<&str>) -> Result<Encoding, OtlpError> {
    let ct = content_type.unwrap_or("");
    let base = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match base.as_str() {
        "application/x-protobuf" | "application/protobuf" => Ok(Encoding::Protobuf),
        "application/json" => Ok(Encoding::Json),
        _ => Err(OtlpError::UnsupportedMediaType(ct.into())),
    }
}

/// Undoes `content-encoding` (gzip or none), reading at most `max` bytes of output.
pub fn decompress(encoding: Option<&str>, body: &[u8], max: usize) -> Result<Vec<u8>, OtlpError> {
    match encoding.map(|e| e.trim().to_ascii_lowercase()).as_deref() {
        None | Some("") | Some("identity") => {
            if body.len() > max {
                return Err(OtlpError::TooLarge { max });
            }
            Ok(body.to_vec())
        }
        Some("gzip") => {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(body)
                .take(max as u64 + 1)
                .read_to_end(&mut out)
                .map_err(|e| OtlpError::Malformed {
                    what: "gzip stream",
                    why: e.to_string(),
                })?;
            if out.len() > max {
                return Err(OtlpError::TooLarge { max });
            }
            Ok(out)
        }
        Some(other) => Err(OtlpError::UnsupportedEncoding(other.into())),
    }
}

fn parse<T: Message + Default + serde::de::DeserializeOwned>(
    encoding: Encoding,
    body: &[u8],
    what: &'static str,
) -> Result<T, OtlpError> {
    let bad = |why: String| OtlpError::Malformed { what, why };
    match encoding {
        Encoding::Protobuf => T::decode(body).map_err(|e| bad(e.to_string())),
        Encoding::Json => serde_json::from_slice(body).map_err(|e| bad(e.to_string())),
    }
}

/// Decodes one OTLP/HTTP (or gRPC, protobuf) request of `signal`.
pub fn decode(signal: Signal, encoding: Encoding, body: &[u8]) -> Result<Decoded, OtlpError> {
    let mut out = Decoded::default();
    match signal {
        Signal::Traces => {
            let req: ExportTraceServiceRequest = parse(encoding, body, "trace export")?;
            spans(req, &mut out);
        }
        Signal::Logs => {
            let req: ExportLogsServiceRequest = parse(encoding, body, "logs export")?;
            logs(req, &mut out);
        }
        Signal::Metrics => {
            let req: ExportMetricsServiceRequest = parse(encoding, body, "metrics export")?;
            metrics(req, &mut out);
        }
    }
    Ok(out)
}

/// Rows of a decoded trace export (the gRPC service receives messages already decoded).
pub fn from_traces(req: ExportTraceServiceRequest) -> Decoded {
    let mut out = Decoded::default();
    spans(req, &mut out);
    out
}

/// Rows of a decoded logs export.
pub fn from_logs(req: ExportLogsServiceRequest) -> Decoded {
    let mut out = Decoded::default();
    logs(req, &mut out);
    out
}

/// Rows of a decoded metrics export.
pub fn from_metrics(req: ExportMetricsServiceRequest) -> Decoded {
    let mut out = Decoded::default();
    metrics(req, &mut out);
    out
}

/// The export response, with partial success when something was rejected, in the
/// request's encoding.
pub fn response(signal: Signal, encoding: Encoding, d: &Decoded) -> Vec<u8> {
    let msg = d.message.clone().unwrap_or_default();
    let partial = d.rejected > 0;
    macro_rules! answer {
        ($resp:ident, $partial:ident, $field:ident) => {{
            let r = $resp {
                partial_success: partial.then(|| $partial {
                    $field: d.rejected,
                    error_message: msg.clone(),
                }),
            };
            match encoding {
                Encoding::Protobuf => r.encode_to_vec(),
                Encoding::Json => serde_json::to_vec(&r).expect("responses serialize"),
            }
        }};
    }
    match signal {
        Signal::Traces => answer!(
            ExportTraceServiceResponse,
            ExportTracePartialSuccess,
            rejected_spans
        ),
        Signal::Logs => answer!(
            ExportLogsServiceResponse,
            ExportLogsPartialSuccess,
            rejected_log_records
        ),
        Signal::Metrics => answer!(
            ExportMetricsServiceResponse,
            ExportMetricsPartialSuccess,
            rejected_data_points
        ),
    }
}

fn any_to_json(v: &AnyValue, trimmed: &mut u64) -> Value {
    match &v.value {
        Some(any_value::Value::StringValue(s)) => {
            let mut s = s.clone();
            if cut(&mut s, ATTR_VALUE_BYTES_MAX) {
                *trimmed += 1;
            }
            Value::String(s)
        }
        Some(any_value::Value::BoolValue(b)) => Value::Bool(*b),
        Some(any_value::Value::IntValue(i)) => Value::from(*i),
        Some(any_value::Value::DoubleValue(f)) => serde_json::Number::from_f64(*f)
            .map(Value::Number)
            .unwrap_or(Value::Null),
        Some(any_value::Value::ArrayValue(a)) => Value::Array(
            a.values
                .iter()
                .take(ATTRS_PER_ITEM_MAX)
                .map(|v| any_to_json(v, trimmed))
                .collect(),
        ),
        Some(any_value::Value::KvlistValue(kv)) => {
            let mut m = Map::new();
            for (k, v) in kv
                .values
                .iter()
                .take(ATTRS_PER_ITEM_MAX)
                .filter_map(|kv| kv.value.as_ref().map(|v| (&kv.key, v)))
            {
                m.insert(k.clone(), any_to_json(v, trimmed));
            }
            Value::Object(m)
        }
        Some(any_value::Value::BytesValue(b)) => {
            let mut s = hex::encode(b);
            if cut(&mut s, ATTR_VALUE_BYTES_MAX) {
                *trimmed += 1;
            }
            Value::String(s)
        }
        None => Value::Null,
    }
}

/// Resource and item attributes, normalised, item ones winning, at most
/// `ATTRS_PER_ITEM_MAX`.
fn attributes(resource: &[KeyValue], item: &[KeyValue], trimmed: &mut u64) -> Map<String, Value> {
    let mut m = Map::new();
    for kv in resource.iter().chain(item) {
        let key = normalise(&kv.key).to_string();
        if !m.contains_key(&key) && m.len() >= ATTRS_PER_ITEM_MAX {
            *trimmed += 1;
            continue;
        }
        let v = kv
            .value
            .as_ref()
            .map_or(Value::Null, |v| any_to_json(v, trimmed));
        m.insert(key, v);
    }
    m
}

fn take_str(m: &mut Map<String, Value>, keys: &[&str]) -> Option<String> {
    keys.iter().find_map(|k| match m.remove(*k) {
        Some(Value::String(s)) => Some(s),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    })
}

fn service_of(resource: &Option<Resource>) -> String {
    resource
        .as_ref()
        .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| match &v.value {
            Some(any_value::Value::StringValue(s)) => Some(s.clone()),
            _ => None,
        })
        .unwrap_or_else(|| "unknown_service".into())
}

/// Lower-case hex of an id of `len` bytes; `None` when it is missing, short or all zero.
fn id_hex(bytes: &[u8], len: usize) -> Option<String> {
    (bytes.len() == len && bytes.iter().any(|b| *b != 0)).then(|| hex::encode(bytes))
}

fn clamp_ns(n: u64) -> i64 {
    n.min(i64::MAX as u64) as i64
}

fn text(mut s: String, trimmed: &mut u64) -> String {
    if cut(&mut s, TEXT_BYTES_MAX) {
        *trimmed += 1;
    }
    s
}

fn reject(out: &mut Decoded, why: String) {
    out.rejected += 1;
    out.message.get_or_insert(why);
}

fn spans(req: ExportTraceServiceRequest, out: &mut Decoded) {
    for rs in req.resource_spans {
        let service = service_of(&rs.resource);
        let res_attrs = rs.resource.map(|r| r.attributes).unwrap_or_default();
        for ss in rs.scope_spans {
            for s in ss.spans {
                let (Some(trace_id), Some(span_id)) =
                    (id_hex(&s.trace_id, 16), id_hex(&s.span_id, 8))
                else {
                    reject(
                        out,
                        format!(
                            "span {:?}: trace id must be 16 bytes and span id 8, not all zero",
                            s.name
                        ),
                    );
                    continue;
                };
                let mut a = attributes(&res_attrs, &s.attributes, &mut out.trimmed);
                a.remove("service.name");
                let kind = match s.kind {
                    1 => "internal",
                    2 => "server",
                    3 => "client",
                    4 => "producer",
                    5 => "consumer",
                    _ => "unspecified",
                };
                let status = match s.status.as_ref().map(|st| st.code) {
                    Some(1) => "ok",
                    Some(2) => "error",
                    _ => "unset",
                };
                let http_status = match a.remove("http.response.status_code") {
                    Some(Value::Number(n)) => n.as_i64(),
                    Some(Value::String(s)) => s.parse().ok(),
                    _ => None,
                };
                out.rows.spans.push(SpanRow {
                    start_ns: clamp_ns(s.start_time_unix_nano),
                    end_ns: clamp_ns(s.end_time_unix_nano),
                    trace_id,
                    span_id,
                    parent_span_id: id_hex(&s.parent_span_id, 8),
                    service: service.clone(),
                    name: text(s.name, &mut out.trimmed),
                    kind: kind.into(),
                    status: status.into(),
                    user_id: take_str(&mut a, &["user.id"]),
                    session_id: take_str(&mut a, &["session.id"]),
                    order_id: take_str(&mut a, &["order.id", "order_id", "order_no"]),
                    http_method: take_str(&mut a, &["http.request.method"]),
                    http_route: take_str(&mut a, &["http.route", "url.path"]),
                    http_status,
                    db_statement: take_str(&mut a, &["db.query.text"]),
                    db_system: take_str(&mut a, &["db.system.name"]),
                    trace_state: (!s.trace_state.is_empty())
                        .then(|| text(s.trace_state.clone(), &mut out.trimmed)),
                    attributes: Value::Object(a).to_string(),
                });
            }
        }
    }
}

fn logs(req: ExportLogsServiceRequest, out: &mut Decoded) {
    for rl in req.resource_logs {
        let service = service_of(&rl.resource);
        let res_attrs = rl.resource.map(|r| r.attributes).unwrap_or_default();
        for sl in rl.scope_logs {
            for l in sl.log_records {
                // Ids are optional on a log record, but when given they must be valid.
                let trace_id = id_hex(&l.trace_id, 16);
                if !l.trace_id.is_empty() && trace_id.is_none() {
                    reject(out, "log record: an invalid trace id".into());
                    continue;
                }
                let mut a = attributes(&res_attrs, &l.attributes, &mut out.trimmed);
                a.remove("service.name");
                let body = match l.body.as_ref().map(|b| any_to_json(b, &mut out.trimmed)) {
                    Some(Value::String(s)) => s,
                    Some(v) => v.to_string(),
                    None => String::new(),
                };
                let time = if l.time_unix_nano > 0 {
                    l.time_unix_nano
                } else {
                    l.observed_time_unix_nano
                };
                out.rows.logs.push(LogRow {
                    time_ns: clamp_ns(time),
                    service: service.clone(),
                    severity_number: l.severity_number,
                    severity_text: l.severity_text,
                    body: text(body, &mut out.trimmed),
                    trace_id,
                    span_id: id_hex(&l.span_id, 8),
                    user_id: take_str(&mut a, &["user.id"]),
                    session_id: take_str(&mut a, &["session.id"]),
                    attributes: Value::Object(a).to_string(),
                });
            }
        }
    }
}

fn metrics(req: ExportMetricsServiceRequest, out: &mut Decoded) {
    for rm in req.resource_metrics {
        let service = service_of(&rm.resource);
        let res_attrs = rm.resource.map(|r| r.attributes).unwrap_or_default();
        for sm in rm.scope_metrics {
            for m in sm.metrics {
                let row = |time: u64,
                           kind: &str,
                           value: f64,
                           count: Option<i64>,
                           attrs: &[KeyValue],
                           trimmed: &mut u64| {
                    let mut a = attributes(&res_attrs, attrs, trimmed);
                    a.remove("service.name");
                    MetricRow {
                        time_ns: clamp_ns(time),
                        service: service.clone(),
                        name: m.name.clone(),
                        unit: m.unit.clone(),
                        kind: kind.into(),
                        value,
                        count,
                        attributes: Value::Object(a).to_string(),
                    }
                };
                let number =
                    |p: &opentelemetry_proto::tonic::metrics::v1::NumberDataPoint| match p.value {
                        Some(number_data_point::Value::AsDouble(d)) => d,
                        Some(number_data_point::Value::AsInt(i)) => i as f64,
                        None => 0.0,
                    };
                match &m.data {
                    Some(metric::Data::Gauge(g)) => {
                        for p in &g.data_points {
                            out.rows.metrics.push(row(
                                p.time_unix_nano,
                                "gauge",
                                number(p),
                                None,
                                &p.attributes,
                                &mut out.trimmed,
                            ));
                        }
                    }
                    Some(metric::Data::Sum(s)) => {
                        for p in &s.data_points {
                            out.rows.metrics.push(row(
                                p.time_unix_nano,
                                "sum",
                                number(p),
                                None,
                                &p.attributes,
                                &mut out.trimmed,
                            ));
                        }
                    }
                    Some(metric::Data::Histogram(h)) => {
                        for p in &h.data_points {
                            let count = i64::try_from(p.count).unwrap_or(i64::MAX);
                            out.rows.metrics.push(row(
                                p.time_unix_nano,
                                "histogram",
                                p.sum.unwrap_or(0.0),
                                Some(count),
                                &p.attributes,
                                &mut out.trimmed,
                            ));
                        }
                    }
                    Some(metric::Data::ExponentialHistogram(h)) => {
                        for p in &h.data_points {
                            let count = i64::try_from(p.count).unwrap_or(i64::MAX);
                            out.rows.metrics.push(row(
                                p.time_unix_nano,
                                "exponential_histogram",
                                p.sum.unwrap_or(0.0),
                                Some(count),
                                &p.attributes,
                                &mut out.trimmed,
                            ));
                        }
                    }
                    Some(metric::Data::Summary(s)) => {
                        for p in &s.data_points {
                            let count = i64::try_from(p.count).unwrap_or(i64::MAX);
                            out.rows.metrics.push(row(
                                p.time_unix_nano,
                                "summary",
                                p.sum,
                                Some(count),
                                &p.attributes,
                                &mut out.trimmed,
                            ));
                        }
                    }
                    None => reject(out, format!("metric {:?} has no data", m.name)),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
    use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
    use opentelemetry_proto::tonic::metrics::v1::{
        Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics,
    };
    use opentelemetry_proto::tonic::trace::v1::{
        span, status, ResourceSpans, ScopeSpans, Span, Status,
    };

    fn kv(k: &str, v: &str) -> KeyValue {
        KeyValue {
            key: k.into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(v.into())),
            }),
        }
    }

    fn resource(service: &str) -> Option<Resource> {
        Some(Resource {
            attributes: vec![kv("service.name", service), kv("host.name", "h1")],
            ..Default::default()
        })
    }

    fn span(trace: [u8; 16], id: u8, attrs: Vec<KeyValue>) -> Span {
        Span {
            trace_id: trace.to_vec(),
            span_id: vec![0, 0, 0, 0, 0, 0, 0, id],
            name: "POST /v1/pay".into(),
            kind: span::SpanKind::Server as i32,
            start_time_unix_nano: 1_700_000_000_000_000_000,
            end_time_unix_nano: 1_700_000_000_005_000_000,
            attributes: attrs,
            status: Some(Status {
                code: status::StatusCode::Error as i32,
                message: "boom".into(),
            }),
            ..Default::default()
        }
    }

    fn traces(spans: Vec<Span>) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: resource("gateway"),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope::default()),
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    const T: [u8; 16] = [0xab; 16];

    #[test]
    fn protobuf_spans_become_rows_with_normalised_hot_keys() {
        let req = traces(vec![span(
            T,
            1,
            vec![
                kv("enduser.id", "u-42"),
                kv("session.id", "s-1"),
                kv("http.method", "POST"),
                kv("http.route", "/v1/pay"),
                kv("order_id", "ORD-9"),
                kv("db.statement", "SELECT 1"),
                kv("custom", "x"),
            ],
        )]);
        let d = decode(Signal::Traces, Encoding::Protobuf, &req.encode_to_vec()).unwrap();
        assert_eq!(d.rejected, 0);
        let s = &d.rows.spans[0];
        assert_eq!(s.trace_id, "ab".repeat(16));
        assert_eq!(s.span_id, "0000000000000001");
        assert_eq!(
            (s.service.as_str(), s.kind.as_str(), s.status.as_str()),
            ("gateway", "server", "error")
        );
        assert_eq!(s.user_id.as_deref(), Some("u-42"), "enduser.id is user.id");
        assert_eq!(
            s.http_method.as_deref(),
            Some("POST"),
            "old http.method is http.request.method"
        );
        assert_eq!(s.order_id.as_deref(), Some("ORD-9"));
        assert_eq!(s.db_statement.as_deref(), Some("SELECT 1"));
        let attrs: Value = serde_json::from_str(&s.attributes).unwrap();
        assert_eq!(attrs, serde_json::json!({"host.name": "h1", "custom": "x"}));
        assert_eq!(s.end_ns - s.start_ns, 5_000_000);
    }

    #[test]
    fn json_with_hex_ids_decodes_the_same_as_protobuf() {
        let req = traces(vec![span(T, 7, vec![kv("user.id", "u-1")])]);
        let json = serde_json::to_vec(&req).unwrap();
        let text = String::from_utf8(json.clone()).unwrap();
        assert!(
            text.contains(&"ab".repeat(16)),
            "ids are hex in OTLP JSON: {text}"
        );
        let a = decode(Signal::Traces, Encoding::Json, &json).unwrap();
        let b = decode(Signal::Traces, Encoding::Protobuf, &req.encode_to_vec()).unwrap();
        assert_eq!(a.rows, b.rows);
    }

    #[test]
    fn invalid_ids_reject_that_span_only() {
        let req = traces(vec![span([0; 16], 1, vec![]), span(T, 2, vec![])]);
        let d = decode(Signal::Traces, Encoding::Protobuf, &req.encode_to_vec()).unwrap();
        assert_eq!((d.rejected, d.rows.spans.len()), (1, 1));
        let resp = ExportTraceServiceResponse::decode(
            &response(Signal::Traces, Encoding::Protobuf, &d)[..],
        )
        .unwrap();
        let p = resp.partial_success.unwrap();
        assert_eq!(p.rejected_spans, 1);
        assert!(p.error_message.contains("trace id"), "{}", p.error_message);
    }

    #[test]
    fn gigantic_values_are_cut_and_counted() {
        let big = "x".repeat(ATTR_VALUE_BYTES_MAX * 3);
        let mut attrs = vec![kv("huge", &big)];
        attrs.extend((0..ATTRS_PER_ITEM_MAX + 10).map(|i| kv(&format!("a{i}"), "v")));
        let d = decode(
            Signal::Traces,
            Encoding::Protobuf,
            &traces(vec![span(T, 1, attrs)]).encode_to_vec(),
        )
        .unwrap();
        let a: Value = serde_json::from_str(&d.rows.spans[0].attributes).unwrap();
        assert_eq!(a["huge"].as_str().unwrap().len(), ATTR_VALUE_BYTES_MAX);
        assert!(a.as_object().unwrap().len() <= ATTRS_PER_ITEM_MAX);
        assert!(d.trimmed >= 11, "{}", d.trimmed);
    }

    #[test]
    fn truncated_protobuf_wrong_type_and_bombs_are_refused() {
        let bytes = traces(vec![span(T, 1, vec![kv("k", "v")])]).encode_to_vec();
        assert!(matches!(
            decode(
                Signal::Traces,
                Encoding::Protobuf,
                &bytes[..bytes.len() - 3]
            ),
            Err(OtlpError::Malformed { .. })
        ));
        assert!(matches!(
            encoding_of(Some("text/plain")),
            Err(OtlpError::UnsupportedMediaType(_))
        ));
        assert_eq!(
            encoding_of(Some("application/json; charset=utf-8")),
            Ok(Encoding::Json)
        );
        // A gzip bomb: small on the wire, past the limit once inflated.
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        std::io::Write::write_all(&mut gz, &vec![0u8; 4096]).unwrap();
        let bomb = gz.finish().unwrap();
        assert_eq!(
            decompress(Some("gzip"), &bomb, 1000),
            Err(OtlpError::TooLarge { max: 1000 })
        );
        assert_eq!(decompress(Some("gzip"), &bomb, 8192).unwrap().len(), 4096);
        assert!(matches!(
            decompress(Some("br"), &bomb, 8192),
            Err(OtlpError::UnsupportedEncoding(_))
        ));
    }

    #[test]
    fn logs_and_metrics_become_rows_too() {
        let logs = ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                resource: resource("billing"),
                scope_logs: vec![ScopeLogs {
                    log_records: vec![LogRecord {
                        time_unix_nano: 5,
                        severity_number: 17,
                        severity_text: "ERROR".into(),
                        body: Some(AnyValue {
                            value: Some(any_value::Value::StringValue("bill failed".into())),
                        }),
                        trace_id: T.to_vec(),
                        span_id: vec![1; 8],
                        attributes: vec![kv("enduser.id", "u-7")],
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let d = decode(Signal::Logs, Encoding::Protobuf, &logs.encode_to_vec()).unwrap();
        let l = &d.rows.logs[0];
        assert_eq!(
            (l.service.as_str(), l.body.as_str(), l.user_id.as_deref()),
            ("billing", "bill failed", Some("u-7"))
        );
        assert_eq!(l.trace_id.as_deref(), Some("ab".repeat(16).as_str()));
        let metrics = ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: resource("wallet"),
                scope_metrics: vec![ScopeMetrics {
                    metrics: vec![Metric {
                        name: "queue.depth".into(),
                        unit: "1".into(),
                        data: Some(metric::Data::Gauge(Gauge {
                            data_points: vec![NumberDataPoint {
                                time_unix_nano: 9,
                                value: Some(number_data_point::Value::AsInt(12)),
                                ..Default::default()
                            }],
                        })),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let json = serde_json::to_vec(&metrics).unwrap();
        let d = decode(Signal::Metrics, Encoding::Json, &json).unwrap();
        let m = &d.rows.metrics[0];
        assert_eq!(
            (
                m.name.as_str(),
                m.kind.as_str(),
                m.value,
                m.service.as_str()
            ),
            ("queue.depth", "gauge", 12.0, "wallet")
        );
    }
}
