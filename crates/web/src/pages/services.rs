//! The service map (`/ui/services`) and one service's page (`/ui/services/{name}`).
//!
//! The map is drawn from `GET /api/v1/service-map?since_ms=` (one edge per caller and
//! callee: `caller`, `callee`, `calls`, `errors`, `p50_ns`, `p99_ns`, `per_sec`) and
//! coloured by `GET /api/v1/alerts`. A service's page charts each of its detector series
//! (`GET /api/v1/series?service=&metric=`: `points` of `time_ms`, `value`, `expected`,
//! `lower`, `upper`, `score`, `anomalous`) with the learned band and its alerts.
//!
//! The small helpers the other pages share (URL encoding, numbers out of JSON) live here.

use std::collections::{BTreeMap, BTreeSet};

use maud::{html, Markup};
use serde_json::Value;

use crate::chart::{self, Band, Line, MapEdge, MapNode, Mark, Span, TimeChart};
use crate::fmt;
use crate::layout::{empty, page, pill, range_selector, section, stat, Ctx, Nav, Range, Tone};

// ---- helpers shared by the pages ------------------------------------------------------

/// Percent-encodes a path segment or a query value.
pub(crate) use crate::fmt::enc as url_encode;

/// An integer out of JSON (an integer, or a float rounded toward zero).
pub(crate) fn int(v: &Value) -> Option<i64> {
    v.as_i64()
        .or_else(|| v.as_u64().map(|u| u.min(i64::MAX as u64) as i64))
        .or_else(|| v.as_f64().filter(|f| f.is_finite()).map(|f| f as i64))
}

/// A finite number out of JSON.
pub(crate) fn num(v: &Value) -> Option<f64> {
    v.as_f64().filter(|f| f.is_finite())
}

/// A wall-clock time (ms) or an em dash.
pub(crate) fn time_of(v: &Value) -> String {
    int(v).map(fmt::time).unwrap_or_else(|| "—".into())
}

/// How long ago a time was, for any time the JSON may carry.
pub(crate) fn ago(ms: i64, now_ms: i64) -> String {
    fmt::ago(ms.clamp(0, i64::MAX / 4), now_ms.clamp(0, i64::MAX / 4))
}

/// A duration in milliseconds or an em dash.
pub(crate) fn ms_of(v: &Value) -> String {
    int(v).map(fmt::duration_ms).unwrap_or_else(|| "—".into())
}

/// A duration given in nanoseconds: sub-millisecond ones to a hundredth of a millisecond.
pub(crate) fn ns_text(ns: f64) -> String {
    if !ns.is_finite() {
        return "—".into();
    }
    let ms = ns / 1e6;
    if ms < 1.0 {
        format!("{ms:.2} ms")
    } else if ms < 10.0 {
        format!("{ms:.1} ms")
    } else {
        fmt::duration_ms(ms.round() as i64)
    }
}

/// A percentage with one decimal.
pub(crate) fn percent(part: f64, whole: f64) -> String {
    if whole > 0.0 {
        format!("{:.1} %", part / whole * 100.0)
    } else {
        "—".into()
    }
}

/// Pretty JSON in a collapsed `<details>`, for the curious.
/// The largest API answer shown raw in a page: a bigger one would make the page slow to
/// render and to load for a view few open.
pub(crate) const RAW_JSON_BYTES_MAX: usize = 64 * 1024;

pub(crate) fn raw_json(what: &str, v: &Value) -> Markup {
    let text = serde_json::to_string_pretty(v).unwrap_or_default();
    html! {
        @if text.len() > RAW_JSON_BYTES_MAX {
            p.note { "The raw " (what) " (" (text.len() / 1024) " KiB) is too large to show here; the API answers it whole." }
        } @else {
            details.raw {
                summary { "raw " (what) }
                pre { (text) }
            }
        }
    }
}

/// An array out of JSON, empty when it is something else.
pub(crate) fn items(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or(&[])
}

// ---- alerts ---------------------------------------------------------------------------

/// Whether an alert of `GET /api/v1/alerts` was active at some time in `range`.
fn alert_in_range(a: &Value, range: &Range) -> bool {
    let started = int(&a["started_ms"]).unwrap_or(i64::MIN);
    let resolved = int(&a["resolved_ms"]);
    started <= range.to_ms && resolved.is_none_or(|r| r >= range.from_ms)
}

fn is_firing(a: &Value) -> bool {
    a["state"].as_str() == Some("firing")
}

fn severity_tone(s: &str) -> Tone {
    match s {
        "critical" => Tone::Bad,
        "warning" => Tone::Warn,
        _ => Tone::Neutral,
    }
}

/// A table of alerts, newest first as the API gives them.
pub(crate) fn alerts_table(alerts: &[&Value], with_service: bool) -> Markup {
    html! {
        table {
            thead { tr {
                th { "Alert" }
                @if with_service { th { "Service" } }
                th { "Metric" } th { "Severity" } th { "State" } th { "Started" } th { "Resolved" }
                th.num { "Value" } th.num { "Expected" } th.num { "Score max" } th { "Incident" }
            } }
            tbody {
                @for a in alerts {
                    @let severity = a["severity"].as_str().unwrap_or("—");
                    @let state = a["state"].as_str().unwrap_or("—");
                    tr {
                        td { (a["rule"].as_str().unwrap_or("—")) }
                        @if with_service {
                            td { @match a["service"].as_str() {
                                Some(s) => a href=(format!("/ui/services/{}", url_encode(s))) { (s) },
                                None => "—",
                            } }
                        }
                        td { code { (a["metric"].as_str().unwrap_or("—")) } }
                        td { (pill(severity, severity_tone(severity))) }
                        td { (pill(state, if state == "firing" { Tone::Bad } else { Tone::Good })) }
                        td { (time_of(&a["started_ms"])) }
                        td { (time_of(&a["resolved_ms"])) }
                        td.num { (value_text(&a["value"])) }
                        td.num { (value_text(&a["expected"])) }
                        td.num { (num(&a["score_max"]).map(|s| format!("{s:.2}")).unwrap_or_else(|| "—".into())) }
                        td { @match int(&a["incident"]) {
                            Some(id) => a href=(format!("/ui/incidents/{id}")) { "#" (id) },
                            None => "—",
                        } }
                    }
                }
            }
        }
    }
}

/// A measured value: three significant decimals at most.
fn value_text(v: &Value) -> String {
    match num(v) {
        Some(x) if x.fract() == 0.0 && x.abs() < 1e15 => format!("{}", x as i64),
        Some(x) if x.abs() >= 100.0 => format!("{x:.0}"),
        Some(x) => format!("{x:.3}"),
        None => "—".into(),
    }
}

// ---- the map --------------------------------------------------------------------------

/// Database systems as OpenTelemetry names them (`db.system`), and the map's fallback.
const DATABASES: [&str; 24] = [
    "database",
    "postgresql",
    "mysql",
    "mariadb",
    "sqlite",
    "mssql",
    "oracle",
    "db2",
    "redis",
    "memcached",
    "mongodb",
    "cassandra",
    "elasticsearch",
    "opensearch",
    "dynamodb",
    "cosmosdb",
    "couchbase",
    "couchdb",
    "neo4j",
    "hbase",
    "clickhouse",
    "spanner",
    "h2",
    "other_sql",
];

/// One edge as the map uses it.
struct Edge<'a> {
    caller: &'a str,
    callee: &'a str,
    /// The callee's node: a database gets one node per caller (two services' PostgreSQL
    /// are two databases, not one node joining them).
    callee_node: String,
    database: bool,
    calls: f64,
    errors: f64,
    per_sec: Option<f64>,
    p50_ns: Option<f64>,
    p99_ns: Option<f64>,
}

/// What the map shows of one node.
#[derive(Default)]
struct Node {
    label: String,
    service: Option<String>,
    calls_in: f64,
    errors_in: f64,
    p99_ns_max: Option<f64>,
    p50_ns_max: Option<f64>,
    database_of: Option<String>,
}

fn edges_of(v: &Value) -> Vec<Edge<'_>> {
    let rows = items(&v["edges"]);
    let callers: BTreeSet<&str> = rows.iter().filter_map(|e| e["caller"].as_str()).collect();
    rows.iter()
        .filter_map(|e| {
            let caller = e["caller"].as_str()?;
            let callee = e["callee"].as_str()?;
            // A callee that never calls anything and is named like a database system is
            // one (the map's rows name a database call by its `db.system`).
            let database = !callers.contains(callee)
                && DATABASES.contains(&callee.to_ascii_lowercase().as_str());
            Some(Edge {
                caller,
                callee,
                callee_node: if database {
                    format!("db:{caller}:{callee}")
                } else {
                    callee.to_string()
                },
                database,
                calls: num(&e["calls"]).unwrap_or(0.0),
                errors: num(&e["errors"]).unwrap_or(0.0),
                per_sec: num(&e["per_sec"]),
                p50_ns: num(&e["p50_ns"]),
                p99_ns: num(&e["p99_ns"]),
            })
        })
        .collect()
}

fn rate_tone(errors: f64, calls: f64) -> Tone {
    if calls <= 0.0 {
        Tone::Good
    } else if errors / calls > 0.05 {
        Tone::Bad
    } else if errors / calls > 0.01 {
        Tone::Warn
    } else {
        Tone::Good
    }
}

fn worse(a: Tone, b: Tone) -> Tone {
    let rank = |t: Tone| match t {
        Tone::Bad => 3,
        Tone::Warn => 2,
        Tone::Good => 1,
        Tone::Neutral => 0,
    };
    if rank(a) >= rank(b) {
        a
    } else {
        b
    }
}

/// `GET /ui/services`: the service map over `range`.
pub fn map(ctx: &Ctx, edges: &Value, alerts: &Value, range: &Range) -> Markup {
    let rows = edges_of(edges);
    let alerts: Vec<&Value> = items(alerts).iter().collect();
    let mut nodes: BTreeMap<String, Node> = BTreeMap::new();
    for e in &rows {
        nodes.entry(e.caller.to_string()).or_insert_with(|| Node {
            label: e.caller.to_string(),
            service: Some(e.caller.to_string()),
            ..Default::default()
        });
        let n = nodes.entry(e.callee_node.clone()).or_insert_with(|| Node {
            label: e.callee.to_string(),
            service: (!e.database).then(|| e.callee.to_string()),
            database_of: e.database.then(|| e.caller.to_string()),
            ..Default::default()
        });
        n.calls_in += e.calls;
        n.errors_in += e.errors;
        n.p99_ns_max = max_opt(n.p99_ns_max, e.p99_ns);
        n.p50_ns_max = max_opt(n.p50_ns_max, e.p50_ns);
    }
    let tone_of = |n: &Node| -> Tone {
        let mut tone = rate_tone(n.errors_in, n.calls_in);
        if let Some(s) = &n.service {
            for a in alerts
                .iter()
                .filter(|a| a["service"].as_str() == Some(s.as_str()))
            {
                if is_firing(a) {
                    tone = Tone::Bad;
                } else if alert_in_range(a, range) {
                    tone = worse(tone, Tone::Warn);
                }
            }
        }
        tone
    };
    let texts: Vec<(String, String, String, Tone, Option<String>)> = nodes
        .iter()
        .map(|(id, n)| {
            // Short: the box has room for about 24 characters.
            let mut detail = Vec::new();
            if let Some(p99) = n.p99_ns_max {
                detail.push(format!("p99 {}", ns_text(p99)));
            }
            // No errors is the usual case; the box has room only for what stands out.
            if n.calls_in > 0.0 && n.errors_in > 0.0 {
                detail.push(format!("{:.1}% err", n.errors_in / n.calls_in * 100.0));
            }
            if detail.is_empty() {
                let firing = n.service.as_deref().map_or(0, |s| {
                    alerts
                        .iter()
                        .filter(|a| a["service"].as_str() == Some(s) && is_firing(a))
                        .count()
                });
                detail.push(if firing > 0 {
                    format!("{firing} alert(s) firing")
                } else {
                    "entry point".into()
                });
            }
            let href = n
                .service
                .as_deref()
                .or(n.database_of.as_deref())
                .map(|s| format!("/ui/services/{}", url_encode(s)));
            (
                id.clone(),
                n.label.clone(),
                detail.join(" · "),
                tone_of(n),
                href,
            )
        })
        .collect();
    let map_nodes: Vec<MapNode> = texts
        .iter()
        .map(|(id, label, detail, tone, href)| MapNode {
            id,
            label,
            detail,
            tone: *tone,
            href: href.as_deref(),
        })
        .collect();
    let edge_labels: Vec<String> = rows
        .iter()
        .map(|e| match e.per_sec {
            Some(r) => format!("{} calls/s", rate_text(r)),
            None => format!("{} calls", e.calls),
        })
        .collect();
    let map_edges: Vec<MapEdge> = rows
        .iter()
        .zip(&edge_labels)
        .map(|(e, label)| MapEdge {
            from: e.caller,
            to: &e.callee_node,
            label,
            tone: rate_tone(e.errors, e.calls),
        })
        .collect();
    let since = int(&edges["since_ms"]).unwrap_or(range.from_ms);
    let why = format!(
        "No calls between services since {}: no spans were stored in this range, or every trace stayed within one service.",
        fmt::time(since)
    );
    let firing: Vec<&Value> = alerts.iter().copied().filter(|a| is_firing(a)).collect();
    let body = html! {
        (range_selector(range, "/ui/services"))
        (chart::service_map("Calls between services", &map_nodes, &map_edges, &why))
        p.note {
            "Colours: "
            (pill("red", Tone::Bad)) " an alert is firing on the service, or more than 5 % of the calls to it failed; "
            (pill("amber", Tone::Warn)) " more than 1 % failed, or an alert on it resolved within this range; "
            (pill("green", Tone::Good)) " otherwise. Edges are labelled with calls per second; "
            "a node shows the p99 latency of the calls to it (the slowest caller's) and the share of them that failed. "
            "A database is drawn once per service that calls it, to the right of that service."
        }
        @if !firing.is_empty() {
            (section("Firing alerts", alerts_table(&firing, true)))
        }
        (section("Calls", edges_table(&rows, &why)))
    };
    page(ctx, "Service map", Nav::Services, body)
}

fn max_opt(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

fn rate_text(r: f64) -> String {
    if r >= 100.0 {
        format!("{r:.0}")
    } else if r >= 1.0 {
        format!("{r:.1}")
    } else {
        format!("{r:.3}")
    }
}

fn edges_table(rows: &[Edge], why: &str) -> Markup {
    if rows.is_empty() {
        return empty(why);
    }
    let link = |name: &str| {
        html! { a href=(format!("/ui/services/{}", url_encode(name))) { (name) } }
    };
    html! {
        table {
            thead { tr {
                th { "Caller" } th { "Callee" } th.num { "Calls" } th.num { "Calls/s" }
                th.num { "Errors" } th.num { "Error rate" } th.num { "p50" } th.num { "p99" }
            } }
            tbody {
                @for e in rows {
                    tr {
                        td { (link(e.caller)) }
                        td {
                            @if e.database { (e.callee) " " span.note { "(database)" } } @else { (link(e.callee)) }
                        }
                        td.num { (fmt::count(e.calls.max(0.0) as u64)) }
                        td.num { (e.per_sec.map(rate_text).unwrap_or_else(|| "—".into())) }
                        td.num { (fmt::count(e.errors.max(0.0) as u64)) }
                        td.num { (pill(&percent(e.errors, e.calls), rate_tone(e.errors, e.calls))) }
                        td.num { (e.p50_ns.map(ns_text).unwrap_or_else(|| "—".into())) }
                        td.num { (e.p99_ns.map(ns_text).unwrap_or_else(|| "—".into())) }
                    }
                }
            }
        }
    }
}

// ---- one service ----------------------------------------------------------------------

/// Warm-up points of the detector's default configuration (`insight.detector`).
const WARMUP_POINTS_DEFAULT: usize = 32;
/// Anomaly score at which the default detector counts a point towards firing.
const SCORE_ON_DEFAULT: f64 = 0.5;

/// The metrics a service has, in the order they are charted: title and unit.
const METRICS: [(&str, &str, &str); 7] = [
    ("latency_ms_p95", "Latency p95", "ms"),
    ("db_ms_p95", "Database time p95", "ms"),
    ("network_ms_p95", "Network time p95 of calls in", "ms"),
    ("lcp_ms_p75", "Largest Contentful Paint p75", "ms"),
    ("errors", "Errors per interval", "errors"),
    ("requests", "Requests per interval", "requests"),
    ("breaks", "Breaks per interval", "breaks"),
];

fn metric_meta(metric: &str) -> (usize, String, &'static str) {
    match METRICS.iter().position(|(m, _, _)| *m == metric) {
        Some(i) => (i, METRICS[i].1.to_string(), METRICS[i].2),
        None => (METRICS.len(), metric.to_string(), ""),
    }
}

/// `GET /ui/services/{name}`: each of the service's series with its learned band,
/// anomalies and alerts, and the service's alerts.
pub fn service(
    ctx: &Ctx,
    name: &str,
    series: &[(String, Value)],
    alerts: &Value,
    range: &Range,
) -> Markup {
    let mine: Vec<&Value> = items(alerts)
        .iter()
        .filter(|a| a["service"].as_str() == Some(name))
        .collect();
    let firing = mine.iter().filter(|a| is_firing(a)).count();
    let in_range: Vec<&Value> = mine
        .iter()
        .copied()
        .filter(|a| alert_in_range(a, range))
        .collect();
    let mut ordered: Vec<&(String, Value)> = series.iter().collect();
    ordered.sort_by_key(|(m, _)| metric_meta(m).0);
    let base = format!("/ui/services/{}", url_encode(name));
    let body = html! {
        p { a href="/ui/services" { "← Service map" } }
        (range_selector(range, &base))
        div.stats {
            (stat("alerts firing", &firing.to_string(), if firing > 0 { Tone::Bad } else { Tone::Good }))
            (stat("alerts in this range", &in_range.len().to_string(), if in_range.is_empty() { Tone::Neutral } else { Tone::Warn }))
            (stat("series watched", &series.len().to_string(), Tone::Neutral))
        }
        @if ordered.is_empty() {
            (empty(&format!(
                "No series for {name} yet: the detectors make one point per interval from the service's spans, and none has arrived from it (check that it exports traces with service.name = {name:?})."
            )))
        }
        @for (metric, v) in &ordered {
            (metric_chart(name, metric, v, &mine, range))
        }
        (section("Alerts of this service", if mine.is_empty() {
            empty("No alert of this service since the server started (alerts are kept in memory).")
        } else {
            alerts_table(&mine, false)
        }))
    };
    page(ctx, &format!("Service {name}"), Nav::Services, body)
}

fn metric_chart(
    service: &str,
    metric: &str,
    v: &Value,
    alerts: &[&Value],
    range: &Range,
) -> Markup {
    let (_, title, unit) = metric_meta(metric);
    let all = items(&v["points"]);
    let pts: Vec<&Value> = all
        .iter()
        .filter(|p| int(&p["time_ms"]).is_some_and(|t| t >= range.from_ms && t <= range.to_ms))
        .collect();
    let observed: Vec<(i64, Option<f64>)> = pts
        .iter()
        .filter_map(|p| Some((int(&p["time_ms"])?, num(&p["value"]))))
        .collect();
    let expected: Vec<(i64, Option<f64>)> = pts
        .iter()
        .filter_map(|p| Some((int(&p["time_ms"])?, num(&p["expected"]))))
        .collect();
    let band: Vec<(i64, f64, f64)> = pts
        .iter()
        // Every watched metric is a latency, a count or a rate: never below zero, so a
        // band reaching below it would only stretch the axis.
        .filter_map(|p| {
            Some((
                int(&p["time_ms"])?,
                num(&p["lower"])?.max(0.0),
                num(&p["upper"])?,
            ))
        })
        .collect();
    let mark_labels: Vec<(i64, f64, String, Tone)> = pts
        .iter()
        .filter_map(|p| {
            let score = num(&p["score"]).unwrap_or(0.0);
            let anomalous = p["anomalous"].as_bool().unwrap_or(false);
            if !anomalous && score < SCORE_ON_DEFAULT {
                return None;
            }
            Some((
                int(&p["time_ms"])?,
                num(&p["value"])?,
                format!(
                    "score {score:.2}{}",
                    if anomalous { ", anomalous" } else { "" }
                ),
                if anomalous { Tone::Bad } else { Tone::Warn },
            ))
        })
        .collect();
    let span_labels: Vec<(i64, Option<i64>, String, Tone)> = alerts
        .iter()
        .filter(|a| a["metric"].as_str() == Some(metric) && alert_in_range(a, range))
        .filter_map(|a| {
            let firing = is_firing(a);
            Some((
                int(&a["started_ms"])?,
                if firing { None } else { int(&a["resolved_ms"]) },
                format!(
                    "{} {}",
                    a["rule"].as_str().unwrap_or("alert"),
                    if firing { "firing" } else { "resolved" }
                ),
                if firing { Tone::Bad } else { Tone::Warn },
            ))
        })
        .collect();
    let has_expected = expected.iter().any(|(_, v)| v.is_some());
    let mut lines = vec![Line {
        label: "observed",
        points: &observed,
    }];
    if has_expected {
        lines.push(Line {
            label: "expected",
            points: &expected,
        });
    }
    let why = if all.is_empty() {
        format!(
            "No points yet: the detector makes one point per interval and learns from the first {WARMUP_POINTS_DEFAULT} (by default) before it scores."
        )
    } else {
        format!(
            "No traffic from {service} in this range: its last point is from {}.",
            all.iter()
                .filter_map(|p| int(&p["time_ms"]))
                .max()
                .map(fmt::time)
                .unwrap_or_else(|| "—".into())
        )
    };
    let learning = !all.is_empty() && all.len() < WARMUP_POINTS_DEFAULT;
    // The detector keeps a bounded history: the axis starts where the points do when
    // that is later than the range's start, rather than leaving most of it empty.
    let first_point = observed.iter().map(|(t, _)| *t).min();
    let from_ms = first_point.map_or(range.from_ms, |t| t.max(range.from_ms));
    let chart = TimeChart {
        title: &title,
        unit,
        from_ms,
        to_ms: range.to_ms,
        lines,
        band: (!band.is_empty()).then_some(Band {
            label: "learned band",
            points: &band,
        }),
        spans: span_labels
            .iter()
            .map(|(from, to, label, tone)| Span {
                from_ms: *from,
                to_ms: *to,
                label,
                tone: *tone,
            })
            .collect(),
        marks: mark_labels
            .iter()
            .map(|(at, value, label, tone)| Mark {
                at_ms: *at,
                value: *value,
                label,
                tone: *tone,
            })
            .collect(),
        empty: &why,
    };
    let last = pts.last();
    html! {
        section id=(format!("metric-{}", url_encode(metric))) {
            h2 { (title) " " code { (metric) } }
            @if let Some(p) = last {
                p.note {
                    "Last point " (time_of(&p["time_ms"])) ": " (value_text(&p["value"])) " " (unit)
                    ", expected " (value_text(&p["expected"]))
                    ", band " (value_text(&p["lower"])) " to " (value_text(&p["upper"]))
                    ", score " (num(&p["score"]).map(|s| format!("{s:.2}")).unwrap_or_else(|| "—".into())) "."
                }
            }
            @if learning {
                p.note {
                    "The detector is still learning: " (all.len()) " point(s) so far; it scores nothing during its first "
                    (WARMUP_POINTS_DEFAULT) " intervals (by default), so the band is not yet a baseline."
                }
            }
            (chart::time_chart(&chart))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NOW: i64 = 1_764_770_000_000;

    fn ctx() -> Ctx {
        crate::layout::test_ctx(NOW)
    }

    fn range() -> Range {
        Range::parse(Some("1h"), NOW)
    }

    fn edges() -> Value {
        json!({"since_ms": NOW - 3_600_000, "edges": [
            {"caller": "gateway", "callee": "payments", "calls": 1000, "errors": 80, "p50_ns": 12_000_000.0, "p99_ns": 410_000_000.0, "per_sec": 0.278},
            {"caller": "payments", "callee": "postgresql", "calls": 2000, "errors": 0, "p50_ns": 800_000.0, "p99_ns": 5_000_000.0, "per_sec": 0.556},
            {"caller": "rum:shop", "callee": "gateway", "calls": 1000, "errors": 15, "p50_ns": 20_000_000.0, "p99_ns": 450_000_000.0, "per_sec": 0.278},
            {"caller": "ledger", "callee": "postgresql", "calls": 10, "errors": 0, "p50_ns": 1_000_000.0, "p99_ns": 2_000_000.0, "per_sec": 0.003},
            {"caller": "gateway", "callee": "fx <rates>", "calls": 100, "errors": 0, "p50_ns": 1_000_000.0, "p99_ns": 2_000_000.0, "per_sec": 0.028}
        ]})
    }

    fn alerts() -> Value {
        json!([
            {"id": 7, "rule": "latency", "service": "ledger", "metric": "latency_ms_p95", "severity": "warning", "state": "firing",
             "started_ms": NOW - 600_000, "resolved_ms": null, "value": 420.5, "expected": 80.0, "score": 0.7, "score_max": 0.9, "incident": 3},
            {"id": 6, "rule": "errors", "service": "fx <rates>", "metric": "errors", "severity": "critical", "state": "resolved",
             "started_ms": NOW - 1_200_000, "resolved_ms": NOW - 900_000, "value": 9.0, "expected": 0.0, "score": 0.8, "score_max": 0.8, "incident": 2}
        ])
    }

    #[test]
    fn raw_json_is_shown_only_when_small() {
        let small = raw_json("journey", &json!({"a": 1})).into_string();
        assert!(small.contains("<details class=\"raw\">"), "{small}");
        let big = json!({"a": "x".repeat(RAW_JSON_BYTES_MAX)});
        let html = raw_json("journey", &big).into_string();
        assert!(!html.contains("<details"), "{html}");
        assert!(html.contains("is too large to show here"), "{html}");
    }

    #[test]
    fn url_encoding_leaves_only_unreserved_characters() {
        assert_eq!(url_encode("a b/c?d&e=é"), "a%20b%2Fc%3Fd%26e%3D%C3%A9");
        assert_eq!(url_encode("rum:shop-1_x.y~"), "rum%3Ashop-1_x.y~");
    }

    #[test]
    fn the_map_colours_nodes_by_errors_and_alerts_and_links_them() {
        let html = map(&ctx(), &edges(), &alerts(), &range()).into_string();
        assert!(html.contains(r#"<figure class="chart"#), "{html}");
        // 8 % of the calls to payments failed: bad. 1.5 % to gateway: warn.
        assert!(html.contains(r#"<a href="/ui/services/payments">payments</a>"#));
        assert!(html.contains("8.0 %"), "{html}");
        assert!(html.contains("1.5 %"));
        // A database gets a node per caller, labelled as one, and is not a service link.
        assert!(html.contains("postgresql <span class=\"note\">(database)</span>"));
        assert!(!html.contains("/ui/services/postgresql"));
        // Names are escaped and URL-encoded.
        assert!(html.contains("/ui/services/fx%20%3Crates%3E"), "{html}");
        assert!(html.contains("fx &lt;rates&gt;"));
        assert!(!html.contains("<rates>"));
        // The legend explains the colours; the firing alert is listed.
        assert!(html.contains("more than 5 %"));
        assert!(html.contains("Firing alerts"));
        assert!(html.contains(r#"href="/ui/incidents/3""#));
        assert!(html.contains("0.278 calls/s"));
        assert!(html.contains(r#"href="/ui/services?range=6h""#));
    }

    #[test]
    fn node_tones_follow_the_rules() {
        let rows = edges();
        let e = edges_of(&rows);
        let payments = e.iter().find(|e| e.callee == "payments").unwrap();
        assert_eq!(rate_tone(payments.errors, payments.calls), Tone::Bad);
        let gateway = e.iter().find(|e| e.callee == "gateway").unwrap();
        assert_eq!(rate_tone(gateway.errors, gateway.calls), Tone::Warn);
        let dbs: Vec<&str> = e
            .iter()
            .filter(|e| e.database)
            .map(|e| e.callee_node.as_str())
            .collect();
        assert_eq!(dbs, ["db:payments:postgresql", "db:ledger:postgresql"]);
        assert_eq!(rate_tone(0.0, 0.0), Tone::Good);
    }

    #[test]
    fn an_empty_map_says_why() {
        let html = map(
            &ctx(),
            &json!({"since_ms": NOW - 3_600_000, "edges": []}),
            &json!([]),
            &range(),
        )
        .into_string();
        assert!(html.contains("No calls between services since"), "{html}");
        assert!(!html.contains("Firing alerts"));
    }

    fn series(metric: &str, n: i64) -> Value {
        let points: Vec<Value> = (0..n)
            .map(|i| {
                let t = NOW - (n - i) * 10_000;
                let anomalous = i == n - 1;
                json!({"time_ms": t, "value": if anomalous { 420.0 } else { 80.0 + (i % 3) as f64 },
                       "expected": 81.0, "lower": 70.0, "upper": 92.0,
                       "score": if anomalous { 0.93 } else { 0.01 }, "anomalous": anomalous})
            })
            .collect();
        json!({"service": "ledger", "metric": metric, "points": points})
    }

    #[test]
    fn a_service_page_charts_each_series_with_its_band_anomalies_and_alerts() {
        let mut old = series("requests", 40);
        // A point from before the range is dropped.
        old["points"][0]["time_ms"] = json!(NOW - 86_400_000);
        old["points"][0]["value"] = json!(123456.0);
        let html = service(
            &ctx(),
            "ledger",
            &[
                ("requests".into(), old),
                ("latency_ms_p95".into(), series("latency_ms_p95", 40)),
            ],
            &alerts(),
            &range(),
        )
        .into_string();
        assert_eq!(html.matches(r#"<figure class="chart"#).count(), 2, "{html}");
        let latency = html.find("Latency p95").unwrap();
        let requests = html.find("Requests per interval").unwrap();
        assert!(latency < requests, "latency is charted first");
        assert!(
            !html.contains("123456"),
            "points outside the range are dropped"
        );
        assert!(html.contains("score 0.93"));
        assert!(html.contains(r#"href="/ui/services/ledger?range=24h""#));
        // The firing alert is in the table and counted.
        assert!(html.contains("Alerts of this service"));
        assert!(html.contains(r#"href="/ui/incidents/3""#));
        assert!(
            !html.contains("fx &lt;rates&gt;"),
            "only this service's alerts"
        );
    }

    #[test]
    fn unexpected_json_never_panics() {
        let weird = [
            json!(null),
            json!([1, "x"]),
            json!({"edges": [{"caller": 1}, {"caller": "a", "callee": "a", "calls": "many", "p99_ns": -1.0}, null]}),
            json!({"points": [null, {"time_ms": "x"}, {"time_ms": NOW - 1, "value": null, "lower": 1.0}]}),
        ];
        for w in &weird {
            let html = map(&ctx(), w, w, &range()).into_string();
            assert!(html.contains("Service map"));
            let html = service(
                &ctx(),
                "a",
                &[("latency_ms_p95".into(), w.clone())],
                w,
                &range(),
            )
            .into_string();
            assert!(html.contains("Service a"));
        }
    }

    #[test]
    fn empty_series_explain_themselves() {
        let stale = json!({"service": "ledger", "metric": "errors", "points": [
            {"time_ms": NOW - 86_400_000, "value": 1.0, "expected": 1.0, "lower": 0.0, "upper": 3.0, "score": 0.0, "anomalous": false}
        ]});
        let html = service(
            &ctx(),
            "ledger",
            &[
                ("errors".into(), stale),
                (
                    "db_ms_p95".into(),
                    json!({"service": "ledger", "metric": "db_ms_p95", "points": []}),
                ),
            ],
            &json!([]),
            &range(),
        )
        .into_string();
        assert!(
            html.contains("No traffic from ledger in this range"),
            "{html}"
        );
        assert!(html.contains("No points yet: the detector"));
        assert!(html.contains("No alert of this service"));

        let none = service(&ctx(), "a<b", &[], &json!([]), &range()).into_string();
        assert!(none.contains("No series for a&lt;b yet"), "{none}");
        assert!(none.contains("/ui/services/a%3Cb?range=1h"));
    }
}
