//! The data chain over HTTP: OTLP traces, logs and metrics in (protobuf, JSON with hex
//! ids, gzip), durable before the answer, queryable with SQL, a trace by id; bad input
//! refused with the right status, partial success for the spans refused on their own.

use std::io::Write;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::metrics::v1::{
    metric, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;
use serde_json::{json, Value};

use crate::support::*;

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
        attributes: vec![kv("service.name", service)],
        ..Default::default()
    })
}

fn traces(trace: u8, n: u8, user: &str) -> ExportTraceServiceRequest {
    let spans = (1..=n)
        .map(|i| Span {
            trace_id: vec![trace; 16],
            span_id: vec![0, 0, 0, 0, 0, 0, trace, i],
            parent_span_id: if i > 1 {
                vec![0, 0, 0, 0, 0, 0, trace, 1]
            } else {
                vec![]
            },
            name: format!("op-{i}"),
            kind: 2,
            start_time_unix_nano: 1_700_000_000_000_000_000 + i as u64 * 1000,
            end_time_unix_nano: 1_700_000_000_000_000_000 + i as u64 * 1000 + 500,
            attributes: vec![kv("enduser.id", user)],
            ..Default::default()
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: resource("gateway"),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn logs_request() -> ExportLogsServiceRequest {
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: resource("billing"),
            scope_logs: vec![ScopeLogs {
                log_records: vec![LogRecord {
                    time_unix_nano: 1_700_000_000_000_000_000,
                    severity_text: "WARN".into(),
                    body: Some(AnyValue {
                        value: Some(any_value::Value::StringValue("slow bill".into())),
                    }),
                    trace_id: vec![1; 16],
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn metrics_request() -> ExportMetricsServiceRequest {
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: resource("wallet"),
            scope_metrics: vec![ScopeMetrics {
                metrics: vec![Metric {
                    name: "payments".into(),
                    data: Some(metric::Data::Sum(Sum {
                        data_points: vec![NumberDataPoint {
                            time_unix_nano: 1_700_000_000_000_000_000,
                            value: Some(opentelemetry_proto::tonic::metrics::v1::number_data_point::Value::AsInt(42)),
                            ..Default::default()
                        }],
                        ..Default::default()
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

async fn send(
    s: &TestServer,
    path: &str,
    ct: &str,
    gzip: bool,
    body: Vec<u8>,
) -> (u16, Vec<u8>, String) {
    let mut req = s
        .http
        .post(format!("{}{path}", s.base))
        .bearer_auth(&s.token)
        .header("content-type", ct);
    let body = if gzip {
        req = req.header("content-encoding", "gzip");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&body).unwrap();
        gz.finish().unwrap()
    } else {
        body
    };
    let r = req.body(body).send().await.unwrap();
    let status = r.status().as_u16();
    let ct = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    (status, r.bytes().await.unwrap().to_vec(), ct)
}

async fn sql(s: &TestServer, q: &str) -> Value {
    let (code, v) = s
        .call(
            "post",
            "/api/v1/query",
            Some(&s.token),
            Some(json!({ "sql": q })),
        )
        .await;
    assert_eq!(code, 200, "{q}: {v}");
    v["rows"].clone()
}

#[tokio::test]
async fn otlp_traces_logs_and_metrics_are_stored_and_queryable() {
    let mut s = TestServer::start().await;
    let pb = "application/x-protobuf";
    let (code, body, ct) = send(
        &s,
        "/v1/traces",
        pb,
        false,
        traces(1, 3, "u-1").encode_to_vec(),
    )
    .await;
    assert_eq!((code, ct.as_str()), (200, pb));
    assert!(ExportTraceServiceResponse::decode(&body[..])
        .unwrap()
        .partial_success
        .is_none());
    // JSON with hex ids, gzipped.
    let json = serde_json::to_vec(&traces(2, 2, "u-2")).unwrap();
    assert_eq!(
        send(&s, "/v1/traces", "application/json", true, json)
            .await
            .0,
        200
    );
    let logs = logs_request();
    assert_eq!(
        send(&s, "/v1/logs", pb, true, logs.encode_to_vec()).await.0,
        200
    );
    let metrics = metrics_request();
    assert_eq!(
        send(
            &s,
            "/v1/metrics",
            "application/json",
            false,
            serde_json::to_vec(&metrics).unwrap()
        )
        .await
        .0,
        200
    );

    let rows = sql(
        &s,
        "SELECT user_id, count(*) AS n FROM spans GROUP BY user_id ORDER BY user_id",
    )
    .await;
    assert_eq!(
        rows,
        json!([{"user_id": "u-1", "n": 3}, {"user_id": "u-2", "n": 2}])
    );
    assert_eq!(
        sql(&s, "SELECT body FROM logs").await,
        json!([{"body": "slow bill"}])
    );
    assert_eq!(
        sql(&s, "SELECT name, value FROM metrics").await,
        json!([{"name": "payments", "value": 42.0}])
    );
    // Across a flush to Parquet the answer is the same.
    tokio::time::sleep(std::time::Duration::from_millis(1_500)).await;
    assert_eq!(
        sql(&s, "SELECT count(*) AS n FROM spans").await,
        json!([{"n": 5}])
    );
    let (code, t) = s.get(&format!("/api/v1/traces/{}", "01".repeat(16))).await;
    assert_eq!(code, 200, "{t}");
    let names: Vec<&str> = t["spans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["op-1", "op-2", "op-3"]);
    assert_eq!(
        s.get(&format!("/api/v1/traces/{}", "0f".repeat(16)))
            .await
            .0,
        404
    );
    assert_eq!(s.get("/api/v1/traces/nothex").await.0, 400);
    s.stop().await;

    // Acknowledged means durable: a restart still has every row.
    let mut again = TestServer::start_with(s.cfg.clone()).await;
    assert_eq!(
        sql(&again, "SELECT count(*) AS n FROM spans").await,
        json!([{"n": 5}])
    );
    again.stop().await;
}

#[tokio::test]
async fn bad_otlp_is_refused_clearly_and_invalid_ids_only_cost_their_span() {
    let mut s = TestServer::start().await;
    let pb = "application/x-protobuf";
    let bytes = traces(1, 2, "u").encode_to_vec();
    assert_eq!(
        send(
            &s,
            "/v1/traces",
            pb,
            false,
            bytes[..bytes.len() - 4].to_vec()
        )
        .await
        .0,
        400,
        "truncated protobuf"
    );
    assert_eq!(
        send(&s, "/v1/traces", "text/plain", false, bytes.clone())
            .await
            .0,
        415,
        "wrong content type"
    );
    let bomb = vec![0u8; 17 * 1024 * 1024];
    assert_eq!(
        send(&s, "/v1/traces", pb, true, bomb).await.0,
        413,
        "past the limit once inflated"
    );
    let mut bad = traces(3, 2, "u");
    bad.resource_spans[0].scope_spans[0].spans[0].trace_id = vec![0; 16];
    let (code, body, _) = send(&s, "/v1/traces", pb, false, bad.encode_to_vec()).await;
    assert_eq!(code, 200);
    let p = ExportTraceServiceResponse::decode(&body[..])
        .unwrap()
        .partial_success
        .unwrap();
    assert_eq!(p.rejected_spans, 1, "{}", p.error_message);
    assert_eq!(
        sql(&s, "SELECT count(*) AS n FROM spans").await,
        json!([{"n": 1}])
    );
    let (code, v) = s
        .call(
            "post",
            "/api/v1/query",
            Some(&s.token),
            Some(json!({"sql": "DROP TABLE spans"})),
        )
        .await;
    assert_eq!(code, 400, "{v}");
    let (code, v) = s
        .call(
            "post",
            "/api/v1/query",
            Some(&s.token),
            Some(json!({"sql": "SELECT nope FROM spans"})),
        )
        .await;
    assert_eq!((code, v["code"].as_str()), (400, Some("bad_query")), "{v}");
    // A viewer may query but not ingest.
    let viewer = s.token_for("viewer", "vic");
    let r = s
        .http
        .post(format!("{}/v1/traces", s.base))
        .bearer_auth(&viewer)
        .header("content-type", pb)
        .body(bytes)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    s.stop().await;
}

#[tokio::test]
async fn otlp_grpc_takes_traces_logs_and_metrics_with_an_ingest_token() {
    use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
    use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
    use tonic::codec::CompressionEncoding;

    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.chain.otlp_grpc_listen = Some("127.0.0.1:0".parse().unwrap());
    let mut s = TestServer::start_with(cfg).await;
    let addr = s.server.as_ref().unwrap().otlp_grpc_addr.unwrap();
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let ingest = s.token_for("ingest", "collector");
    let authed = |msg| {
        let mut r = tonic::Request::new(msg);
        r.metadata_mut()
            .insert("authorization", format!("Bearer {ingest}").parse().unwrap());
        r
    };
    let mut t = TraceServiceClient::new(channel.clone()).send_compressed(CompressionEncoding::Gzip);
    let answer = t.export(authed(traces(9, 4, "u-9"))).await.unwrap();
    assert!(answer.into_inner().partial_success.is_none());
    let mut l = LogsServiceClient::new(channel.clone());
    let mut r = tonic::Request::new(logs_request());
    r.metadata_mut()
        .insert("authorization", format!("Bearer {ingest}").parse().unwrap());
    l.export(r).await.unwrap();
    let mut m = MetricsServiceClient::new(channel.clone());
    let mut r = tonic::Request::new(metrics_request());
    r.metadata_mut()
        .insert("authorization", format!("Bearer {ingest}").parse().unwrap());
    m.export(r).await.unwrap();
    assert_eq!(
        sql(&s, "SELECT count(*) AS n FROM spans WHERE user_id = 'u-9'").await,
        json!([{"n": 4}])
    );
    assert_eq!(
        sql(&s, "SELECT count(*) AS n FROM logs").await,
        json!([{"n": 1}])
    );
    assert_eq!(
        sql(&s, "SELECT count(*) AS n FROM metrics").await,
        json!([{"n": 1}])
    );
    // Without a token, or with one that may not ingest: refused, nothing stored.
    let e = t.export(traces(8, 1, "x")).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
    let viewer = s.token_for("viewer", "v");
    let mut r = tonic::Request::new(traces(8, 1, "x"));
    r.metadata_mut()
        .insert("authorization", format!("Bearer {viewer}").parse().unwrap());
    let e = t.export(r).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    // A span with a bad id costs only itself: partial success, as over HTTP.
    let mut bad = traces(7, 2, "u-7");
    bad.resource_spans[0].scope_spans[0].spans[1].span_id = vec![1, 2, 3];
    let answer = t.export(authed(bad)).await.unwrap().into_inner();
    assert_eq!(answer.partial_success.unwrap().rejected_spans, 1);
    assert_eq!(
        sql(&s, "SELECT count(*) AS n FROM spans").await,
        json!([{"n": 5}])
    );
    s.stop().await;
}

fn span(
    trace: u8,
    id: u8,
    parent: Option<u8>,
    name: &str,
    kind: i32,
    t: (u64, u64),
    attrs: &[(&str, &str)],
) -> Span {
    let base = 1_700_000_000_000_000_000u64;
    Span {
        trace_id: vec![trace; 16],
        span_id: vec![0, 0, 0, 0, 0, 0, trace, id],
        parent_span_id: parent.map_or(vec![], |p| vec![0, 0, 0, 0, 0, 0, trace, p]),
        name: name.into(),
        kind,
        start_time_unix_nano: base + t.0 * 1_000_000,
        end_time_unix_nano: base + t.1 * 1_000_000,
        attributes: attrs.iter().map(|(k, v)| kv(k, v)).collect(),
        ..Default::default()
    }
}

fn service_spans(service: &str, spans: Vec<Span>) -> ResourceSpans {
    ResourceSpans {
        resource: resource(service),
        scope_spans: vec![ScopeSpans {
            spans,
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// A click in the shop's page (0..100 ms) fetches the gateway (10..90), which calls
/// payments (30..70), which queries PostgreSQL (40..60) and writes order ORD-7.
fn click(trace: u8, user: &str, session: &str) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![
            service_spans(
                "rum:shop",
                vec![
                    span(
                        trace,
                        1,
                        None,
                        "click pay",
                        1,
                        (0, 100),
                        &[("user.id", user), ("session.id", session)],
                    ),
                    span(
                        trace,
                        2,
                        Some(1),
                        "POST /pay",
                        3,
                        (10, 90),
                        &[("user.id", user), ("session.id", session)],
                    ),
                ],
            ),
            service_spans(
                "gateway",
                vec![
                    span(
                        trace,
                        3,
                        Some(2),
                        "POST /pay",
                        2,
                        (15, 85),
                        &[("http.route", "/pay")],
                    ),
                    span(trace, 4, Some(3), "call payments", 3, (25, 75), &[]),
                ],
            ),
            service_spans(
                "payments",
                vec![
                    span(
                        trace,
                        5,
                        Some(4),
                        "pay",
                        2,
                        (30, 70),
                        &[("order.id", "ORD-7")],
                    ),
                    span(
                        trace,
                        6,
                        Some(5),
                        "INSERT payment",
                        3,
                        (40, 60),
                        &[
                            ("db.system", "postgresql"),
                            ("db.statement", "INSERT INTO payment ..."),
                        ],
                    ),
                ],
            ),
        ],
    }
}

#[tokio::test]
async fn a_users_journey_links_page_backend_database_and_fund_records() {
    let mut s = TestServer::start().await;
    let pb = "application/x-protobuf";
    for (trace, user) in [(0x21, "vip-7"), (0x22, "vip-7"), (0x23, "someone-else")] {
        let (code, _, _) = send(
            &s,
            "/v1/traces",
            pb,
            false,
            click(trace, user, "sess-1").encode_to_vec(),
        )
        .await;
        assert_eq!(code, 200);
    }
    // The payment core reports the record it wrote, with the trace that wrote it.
    let mut p = payment("p-7", "ORD-7", "12.34");
    p["trace_id"] = json!("21".repeat(16));
    p["order_id"] = json!("ORD-7");
    assert_eq!(s.post("/api/v1/records", body(&[p])).await.0, 200);

    let check = |j: &Value| {
        assert_eq!(j["user"], "vip-7");
        assert_eq!(j["sessions"].as_array().unwrap().len(), 1, "{j}");
        assert_eq!(j["sessions"][0]["traces"], 2);
        let traces = j["traces"].as_array().unwrap();
        assert_eq!(traces.len(), 2, "only this user's traces");
        let t = traces
            .iter()
            .find(|t| t["trace_id"] == "21".repeat(16))
            .unwrap();
        assert_eq!(
            t["spans"], 6,
            "the backend spans carry no user id and are still there"
        );
        assert_eq!(t["services"], json!(["rum:shop", "gateway", "payments"]));
        assert_eq!(t["root_name"], "click pay");
        assert_eq!(
            t["breakdown"],
            json!({"client_ns": 20_000_000, "network_ns": 20_000_000, "server_ns": 40_000_000, "database_ns": 20_000_000})
        );
        // The money the click moved, linked by its trace (and its order).
        let funds = t["fund_records"].as_array().unwrap();
        assert_eq!(funds.len(), 1, "{t}");
        assert_eq!(
            (
                &funds[0]["record_id"],
                &funds[0]["amount_minor"],
                &funds[0]["scale"]
            ),
            (&json!("p-7"), &json!(1234), &json!(2))
        );
        let other = traces
            .iter()
            .find(|t| t["trace_id"] == "22".repeat(16))
            .unwrap();
        assert_eq!(
            other["fund_records"].as_array().unwrap().len(),
            1,
            "the same order, linked by order id"
        );
    };
    let (code, j) = s.get("/api/v1/journeys?user=vip-7").await;
    assert_eq!(code, 200, "{j}");
    check(&j);
    // The same once everything is in Parquet files, read through the indexes.
    tokio::time::sleep(std::time::Duration::from_millis(1_500)).await;
    let (_, j) = s.get("/api/v1/journeys?user=vip-7").await;
    check(&j);
    assert_eq!(s.get("/api/v1/journeys?user=nobody").await.0, 404);
    assert_eq!(
        s.get("/api/v1/journeys?user=x'%20OR%20'1'='1").await.0,
        404,
        "a value, never SQL"
    );
    assert_eq!(s.get("/api/v1/journeys").await.0, 400);

    let (_, edges) = service_map(&s, 0).await;
    assert_eq!(
        edges,
        [
            ("gateway".into(), "payments".into(), 3, 0),
            ("payments".into(), "postgresql".into(), 3, 0),
            ("rum:shop".into(), "gateway".into(), 3, 0),
        ]
    );
    s.stop().await;
}

/// `req` with every span `by_ms` later.
fn later(mut req: ExportTraceServiceRequest, by_ms: u64) -> ExportTraceServiceRequest {
    for rs in &mut req.resource_spans {
        for ss in &mut rs.scope_spans {
            for sp in &mut ss.spans {
                sp.start_time_unix_nano += by_ms * 1_000_000;
                sp.end_time_unix_nano += by_ms * 1_000_000;
            }
        }
    }
    req
}

/// Sends a click at `at_ms`, each service's spans in a request of its own, callees first,
/// as exporters do.
async fn click_at(s: &TestServer, trace: u8, user: &str, at_ms: u64) {
    let mut req = later(click(trace, user, "sess-1"), at_ms - 1_700_000_000_000);
    req.resource_spans.reverse();
    for rs in req.resource_spans {
        let one = ExportTraceServiceRequest {
            resource_spans: vec![rs],
        };
        let (code, _, _) = send(
            s,
            "/v1/traces",
            "application/x-protobuf",
            false,
            one.encode_to_vec(),
        )
        .await;
        assert_eq!(code, 200);
    }
}

/// `GET /api/v1/service-map?since_ms=`: its source and (caller, callee, calls, errors).
async fn service_map(s: &TestServer, since: u64) -> (String, Vec<(String, String, u64, u64)>) {
    let (code, m) = s
        .get(&format!("/api/v1/service-map?since_ms={since}"))
        .await;
    assert_eq!(code, 200, "{m}");
    let edges = m["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["caller"].as_str().unwrap().to_string(),
                e["callee"].as_str().unwrap().to_string(),
                e["calls"].as_u64().unwrap(),
                e["errors"].as_u64().unwrap(),
            )
        })
        .collect();
    (m["source"].as_str().unwrap_or("").to_string(), edges)
}

/// The calls between services since `since` (ms), joined over the stored spans.
async fn joined(s: &TestServer, since: u64) -> Vec<(String, String, u64, u64)> {
    let rows = sql(
        s,
        &format!(
            "SELECT p.service AS caller, c.service AS callee, count(*) AS calls, \
             sum(CASE WHEN c.status = 'error' THEN 1 ELSE 0 END) AS errors FROM spans c \
             JOIN spans p ON c.trace_id = p.trace_id AND c.parent_span_id = p.span_id \
             WHERE p.service <> c.service AND c.start_time >= to_timestamp_millis({since}) \
             GROUP BY 1, 2 ORDER BY 1, 2"
        ),
    )
    .await;
    rows.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["caller"].as_str().unwrap().to_string(),
                r["callee"].as_str().unwrap().to_string(),
                r["calls"].as_u64().unwrap(),
                r["errors"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// `GET /api/v1/journeys/users?since_ms=`.
async fn users(s: &TestServer, since: u64) -> Value {
    let (code, u) = s
        .get(&format!("/api/v1/journeys/users?since_ms={since}"))
        .await;
    assert_eq!(code, 200, "{u}");
    u
}

fn between(edges: Vec<(String, String, u64, u64)>) -> Vec<(String, String, u64, u64)> {
    edges.into_iter().filter(|e| e.1 != "postgresql").collect()
}

#[tokio::test]
async fn the_service_map_and_users_agree_with_the_stored_spans_live_and_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let mut s = TestServer::start_with(cfg.clone()).await;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    // One click in two minutes, two in five.
    click_at(&s, 0x41, "u-1", now_ms + 120_000).await;
    click_at(&s, 0x42, "u-1", now_ms + 300_000).await;
    click_at(&s, 0x43, "u-1", now_ms + 300_000).await;
    // Nothing was stored before this server started: every range is its live map's.
    // A range starts at its whole minute, which holds the last two clicks.
    let since = now_ms + 290_000;
    let minute = since / 60_000 * 60_000;
    let (source, recent) = service_map(&s, since).await;
    assert_eq!(source, "live");
    assert_eq!(between(recent.clone()), joined(&s, minute).await);
    let (source, all) = service_map(&s, 0).await;
    assert_eq!(source, "live");
    assert_eq!(between(all.clone()), joined(&s, 0).await);
    let calls = |edges: &[(String, String, u64, u64)], callee: &str| {
        edges.iter().find(|e| e.1 == callee).map_or(0, |e| e.2)
    };
    assert_eq!(calls(&recent, "payments"), 2, "{recent:?}");
    assert_eq!(calls(&recent, "postgresql"), 2, "{recent:?}");
    assert_eq!(calls(&all, "payments"), 3, "{all:?}");
    // The live map's latency is the callee's, within its histogram's 12.5 %.
    let (_, m) = s
        .get(&format!("/api/v1/service-map?since_ms={since}"))
        .await;
    let p50 = m["edges"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["callee"] == "payments")
        .unwrap()["p50_ns"]
        .as_i64()
        .unwrap();
    assert!((p50 - 40_000_000).abs() <= 5_000_000, "{p50}");
    let (live_recent, live_all) = (users(&s, since).await, users(&s, 0).await);
    assert_eq!(live_recent[0]["user"], "u-1", "{live_recent}");
    assert_eq!(live_recent[0]["traces"], 2, "{live_recent}");
    assert_eq!(live_all[0]["traces"], 3, "{live_all}");
    assert_eq!(live_recent[0]["vip"], false);
    s.stop().await;

    // After a restart, the ranges it did not see are read from the stored spans, with
    // the same answers.
    let mut s = TestServer::start_with(cfg).await;
    let (source, stored) = service_map(&s, since).await;
    assert_eq!(source, "stored");
    assert_eq!(between(stored.clone()), between(recent.clone()));
    assert_eq!(calls(&stored, "postgresql"), 2);
    let (stored_recent, stored_all) = (users(&s, since).await, users(&s, 0).await);
    assert_eq!(stored_recent, live_recent);
    assert_eq!(stored_all, live_all);
    // A range after what was stored is the new live map's.
    click_at(&s, 0x44, "u-1", now_ms + 600_000).await;
    let (source, later_map) = service_map(&s, now_ms + 590_000).await;
    assert_eq!(source, "live");
    assert_eq!(calls(&later_map, "payments"), 1);
    assert_eq!(users(&s, now_ms + 590_000).await[0]["traces"], 1);
    s.stop().await;
}

/// Python with the OpenTelemetry SDK and both OTLP exporters (`.ci/run` installs them).
fn python_with_otel() -> Option<std::path::PathBuf> {
    let python = std::env::var_os("PYTHON").map_or("python3".into(), std::path::PathBuf::from);
    let ok = std::process::Command::new(&python)
        .args([
            "-c",
            "import opentelemetry.sdk, opentelemetry.exporter.otlp.proto.grpc.trace_exporter, \
             opentelemetry.exporter.otlp.proto.http.trace_exporter",
        ])
        .output()
        .is_ok_and(|o| o.status.success());
    ok.then_some(python)
}

/// The Python OpenTelemetry SDK, as an application uses it, exports over OTLP/HTTP and
/// OTLP/gRPC; every span, log record and metric point it sent is queryable.
#[tokio::test]
async fn the_python_sdk_exports_traces_metrics_and_logs_over_http_and_grpc() {
    let python = python_with_otel();
    if !tool_present("python3 with the OpenTelemetry SDK", python.is_some()) {
        return;
    }
    let python = python.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.chain.otlp_grpc_listen = Some("127.0.0.1:0".parse().unwrap());
    let mut s = TestServer::start_with(cfg).await;
    let grpc = s.server.as_ref().unwrap().otlp_grpc_addr.unwrap();
    let token = s.token_for("ingest", "python-app");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/otel_export.py");
    for (protocol, endpoint) in [("http", s.base.clone()), ("grpc", format!("http://{grpc}"))] {
        let (python, token) = (python.clone(), token.clone());
        let out = tokio::task::spawn_blocking(move || {
            std::process::Command::new(python)
                .args([script, protocol, &endpoint, &token, "1"])
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        assert!(
            out.status.success(),
            "{protocol}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let service = format!("py-{protocol}-1");
        assert_eq!(
            sql(
                &s,
                &format!(
                    "SELECT count(*) AS n, count(DISTINCT trace_id) AS traces FROM spans \
                     WHERE service = '{service}' AND user_id = 'py-user-1' AND http_method = 'POST'"
                )
            )
            .await,
            json!([{"n": 10, "traces": 10}]),
            "{protocol}: the checkout spans, old attribute names normalised"
        );
        assert_eq!(
            sql(&s, &format!("SELECT count(*) AS n FROM spans WHERE service = '{service}' AND parent_span_id IS NOT NULL")).await,
            json!([{"n": 10}]),
            "{protocol}: the children, linked to their parents"
        );
        let logs = sql(
            &s,
            &format!("SELECT count(*) AS n, count(trace_id) AS traced FROM logs WHERE service = '{service}'"),
        )
        .await;
        assert_eq!(
            logs,
            json!([{"n": 10, "traced": 10}]),
            "{protocol}: logs inside spans carry the trace"
        );
        let points = sql(
            &s,
            &format!("SELECT name, max(value) AS v FROM metrics WHERE service = '{service}' GROUP BY name"),
        )
        .await;
        assert_eq!(
            points,
            json!([{"name": "checkout.count", "v": 10.0}]),
            "{protocol}"
        );
    }
    s.stop().await;
}

/// With sampling at 0 %, a VIP's trace is still kept whole: its front spans by the user
/// list, its backend spans by the `sf=vip` tracestate they were propagated.
#[tokio::test]
async fn a_vips_journey_is_never_sampled_away() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.chain.sample_percent = 0;
    cfg.chain.vip_users = vec!["vip-7".into()];
    let mut s = TestServer::start_with(cfg).await;
    let pb = "application/x-protobuf";
    let mut vip = click(0x31, "vip-7", "sess-v");
    for rs in &mut vip.resource_spans {
        for sp in &mut rs.scope_spans[0].spans {
            sp.trace_state = "sf=vip".into();
        }
    }
    // The backend's spans come first, in their own request, as exporters send them.
    let backend = ExportTraceServiceRequest {
        resource_spans: vip.resource_spans[1..].to_vec(),
    };
    let front = ExportTraceServiceRequest {
        resource_spans: vip.resource_spans[..1].to_vec(),
    };
    for req in [backend, front, click(0x32, "someone", "sess-o")] {
        assert_eq!(
            send(&s, "/v1/traces", pb, false, req.encode_to_vec())
                .await
                .0,
            200
        );
    }
    let (code, j) = s.get("/api/v1/journeys?user=vip-7").await;
    assert_eq!(code, 200, "{j}");
    assert_eq!(j["traces"][0]["spans"], 6, "the whole trace: {j}");
    assert_eq!(
        s.get("/api/v1/journeys?user=someone").await.0,
        404,
        "sampled out"
    );
    s.stop().await;
}
