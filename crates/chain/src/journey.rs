//! Journeys: what one user lived through, assembled from the spans of the traces they
//! caused. Pure: the server reads the rows, this says what they mean.
//!
//! A trace's time is split by where it was spent, from each span's *self time* (its
//! duration less the union of its children's, so parallel children are not counted
//! twice):
//! - **network**: a client span's self time when it has children, i.e. the time between
//!   the caller sending (a browser's fetch, a service's call) and the callee starting, and
//!   between it answering and the caller receiving;
//! - **database**: spans of a database call (a `db_statement` or a `db_system`);
//! - **client**: the rest of what the browser or app recorded (spans of a `rum:` service,
//!   from `/rum.js` or an app's events, or whose SDK is webjs, swift or kotlin);
//! - **server**: the rest (handlers, internal work, calls to uninstrumented services).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Serialize;
use serde_json::Value;

use crate::rows::SpanRow;

/// Where a trace's time went, nanoseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Breakdown {
    pub client_ns: i64,
    pub network_ns: i64,
    pub server_ns: i64,
    pub database_ns: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Part {
    Client,
    Network,
    Server,
    Database,
}

/// Whether a span was recorded on the user's device.
pub fn is_client_side(s: &SpanRow) -> bool {
    if s.service.starts_with("rum:") {
        return true;
    }
    let attrs: Value = serde_json::from_str(&s.attributes).unwrap_or(Value::Null);
    matches!(
        attrs["telemetry.sdk.language"].as_str(),
        Some("webjs" | "swift" | "kotlin" | "android" | "ios")
    )
}

fn is_database(s: &SpanRow) -> bool {
    s.db_statement.is_some() || s.db_system.is_some()
}

fn part_of(s: &SpanRow, has_children: bool) -> Part {
    if s.kind == "client" && has_children {
        Part::Network
    } else if is_database(s) {
        Part::Database
    } else if is_client_side(s) {
        Part::Client
    } else {
        Part::Server
    }
}

/// Length of the union of `[start, end)` intervals clipped to `[lo, hi)`.
fn covered(mut spans: Vec<(i64, i64)>, lo: i64, hi: i64) -> i64 {
    spans.sort_unstable();
    let (mut total, mut cur): (i64, Option<(i64, i64)>) = (0, None);
    for (a, b) in spans {
        let (a, b) = (a.max(lo), b.min(hi));
        if a >= b {
            continue;
        }
        cur = match cur {
            Some((ca, cb)) if a <= cb => Some((ca, cb.max(b))),
            Some((ca, cb)) => {
                total += cb - ca;
                Some((a, b))
            }
            None => Some((a, b)),
        };
    }
    total + cur.map_or(0, |(a, b)| b - a)
}

/// The time breakdown of one trace's spans.
pub fn breakdown(spans: &[SpanRow]) -> Breakdown {
    let mut children: HashMap<&str, Vec<(i64, i64)>> = HashMap::new();
    for s in spans {
        if let Some(p) = &s.parent_span_id {
            children
                .entry(p.as_str())
                .or_default()
                .push((s.start_ns, s.end_ns));
        }
    }
    let mut b = Breakdown::default();
    for s in spans {
        let kids = children.remove(s.span_id.as_str()).unwrap_or_default();
        let has_children = !kids.is_empty();
        let own = (s.end_ns - s.start_ns).max(0) - covered(kids, s.start_ns, s.end_ns);
        match part_of(s, has_children) {
            Part::Client => b.client_ns += own,
            Part::Network => b.network_ns += own,
            Part::Server => b.server_ns += own,
            Part::Database => b.database_ns += own,
        }
    }
    b
}

/// One trace of a journey.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TraceSummary {
    pub trace_id: String,
    /// The root span (or the earliest, when the root was not received).
    pub root_service: String,
    pub root_name: String,
    pub start_ns: i64,
    pub duration_ns: i64,
    pub spans: usize,
    pub errors: usize,
    /// Services in the order they first appear.
    pub services: Vec<String>,
    pub session_id: Option<String>,
    pub order_ids: Vec<String>,
    pub breakdown: Breakdown,
}

/// Summaries of every trace among `spans`, oldest first.
pub fn summarise(spans: &[SpanRow]) -> Vec<TraceSummary> {
    let mut by_trace: BTreeMap<&str, Vec<&SpanRow>> = BTreeMap::new();
    for s in spans {
        by_trace.entry(s.trace_id.as_str()).or_default().push(s);
    }
    let mut out: Vec<TraceSummary> = by_trace
        .into_iter()
        .map(|(id, mut ss)| {
            ss.sort_by_key(|s| (s.start_ns, std::cmp::Reverse(s.end_ns)));
            let ids: BTreeSet<&str> = ss.iter().map(|s| s.span_id.as_str()).collect();
            let root = ss
                .iter()
                .find(|s| s.parent_span_id.as_deref().is_none_or(|p| !ids.contains(p)))
                .copied()
                .unwrap_or(ss[0]);
            let start = ss.iter().map(|s| s.start_ns).min().unwrap_or(0);
            let end = ss.iter().map(|s| s.end_ns).max().unwrap_or(start);
            let mut services: Vec<String> = Vec::new();
            for s in &ss {
                if !services.contains(&s.service) {
                    services.push(s.service.clone());
                }
            }
            let owned: Vec<SpanRow> = ss.iter().map(|s| (*s).clone()).collect();
            let mut order_ids: Vec<String> = ss.iter().filter_map(|s| s.order_id.clone()).collect();
            order_ids.sort();
            order_ids.dedup();
            TraceSummary {
                trace_id: id.to_string(),
                root_service: root.service.clone(),
                root_name: root.name.clone(),
                start_ns: start,
                duration_ns: end - start,
                spans: ss.len(),
                errors: ss.iter().filter(|s| s.status == "error").count(),
                services,
                session_id: ss.iter().find_map(|s| s.session_id.clone()),
                order_ids,
                breakdown: breakdown(&owned),
            }
        })
        .collect();
    out.sort_by_key(|t| t.start_ns);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(id: &str, parent: Option<&str>, service: &str, kind: &str, t: (i64, i64)) -> SpanRow {
        SpanRow {
            trace_id: "t1".into(),
            span_id: id.into(),
            parent_span_id: parent.map(String::from),
            service: service.into(),
            kind: kind.into(),
            name: id.into(),
            status: "ok".into(),
            start_ns: t.0,
            end_ns: t.1,
            attributes: "{}".into(),
            ..Default::default()
        }
    }

    /// A click in the browser (0..100) fetches the gateway (client span 10..90), whose
    /// server span (20..80) calls the database (30..50).
    fn click() -> Vec<SpanRow> {
        let mut db = span("db", Some("srv"), "payments", "client", (30, 50));
        db.db_statement = Some("SELECT 1".into());
        vec![
            span("page", None, "rum:shop", "internal", (0, 100)),
            span("fetch", Some("page"), "rum:shop", "client", (10, 90)),
            span("srv", Some("fetch"), "payments", "server", (20, 80)),
            db,
        ]
    }

    #[test]
    fn a_trace_splits_into_client_network_server_and_database_time() {
        let b = breakdown(&click());
        assert_eq!(
            b,
            Breakdown {
                // The page's own 20; the fetch's 20 not covered by the server is network.
                client_ns: 20,
                network_ns: 20,
                server_ns: 40,
                database_ns: 20,
            }
        );
        // Without the browser, the gap between caller and callee is network.
        let mut spans = click()[2..].to_vec();
        spans[0].parent_span_id = Some("call".into());
        spans.insert(0, span("call", None, "gateway", "client", (10, 90)));
        let b = breakdown(&spans);
        assert_eq!((b.network_ns, b.server_ns, b.database_ns), (20, 40, 20));
        assert_eq!(b.client_ns, 0);
    }

    #[test]
    fn parallel_children_are_not_counted_twice() {
        let spans = vec![
            span("root", None, "gw", "server", (0, 100)),
            span("a", Some("root"), "gw", "internal", (10, 60)),
            span("b", Some("root"), "gw", "internal", (40, 90)),
        ];
        // root's own time is 100 - |[10,90)| = 20; a 50 and b 50.
        assert_eq!(breakdown(&spans).server_ns, 120);
    }

    #[test]
    fn summaries_find_the_root_services_and_orders() {
        let mut spans = click();
        spans[2].order_id = Some("ORD-1".into());
        spans[2].status = "error".into();
        let t = summarise(&spans);
        assert_eq!(t.len(), 1);
        let t = &t[0];
        assert_eq!(
            (t.root_service.as_str(), t.root_name.as_str()),
            ("rum:shop", "page")
        );
        assert_eq!((t.duration_ns, t.spans, t.errors), (100, 4, 1));
        assert_eq!(t.services, ["rum:shop", "payments"]);
        assert_eq!(t.order_ids, ["ORD-1"]);
    }
}
