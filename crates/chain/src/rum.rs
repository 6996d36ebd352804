//! Digital experience: what the browser agent (`/rum.js`) or an app reports, as spans and
//! logs of the service `rum:<site>`.
//!
//! One beacon is a JSON object: `site`, `session_id`, `user_id`, `page`, `vip`, and
//! `events`, each with a `type`:
//! - `page_load`: the page view. Its span is the root of the page's trace (`trace_id`,
//!   `span_id` chosen by the agent), with navigation timing (`ttfb_ms`,
//!   `dom_content_loaded_ms`, `load_ms`) and web vitals (`lcp_ms`, `cls`, `inp_ms`) as
//!   attributes.
//! - `fetch` (fetch or XHR): a client span under the page view, whose `span_id` is the one
//!   the agent put in the request's `traceparent`, so the backend's server span is its
//!   child.
//! - `resource`: a resource the page loaded (resource timing), an internal span.
//! - `error`: a JavaScript error or unhandled rejection, a log record of the page's trace.
//! - `vital`: a web vital measured after the page load (LCP, CLS, INP), a log record.
//!
//! Times are epoch milliseconds with fractions (`performance.timeOrigin + now()`):
//! telemetry times, so a float is right. An event that cannot be read is refused on its
//! own and counted; the rest are kept.

use serde_json::{json, Map, Value};

use crate::rows::{cut, LogRow, Rows, SpanRow, TEXT_BYTES_MAX};

/// Events per beacon at most; past it the beacon is refused.
pub const EVENTS_MAX: usize = 500;
/// Largest beacon body.
pub const BEACON_BYTES_MAX: usize = 256 * 1024;
/// Longest text kept from a beacon (URLs, messages, stacks).
const FIELD_BYTES_MAX: usize = 4_096;

#[derive(Debug, Default, PartialEq)]
pub struct Decoded {
    pub rows: Rows,
    pub rejected: usize,
    pub message: Option<String>,
}

fn hex_of(v: &Value, len: usize) -> Option<String> {
    let s = v.as_str()?.to_ascii_lowercase();
    (s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit()) && s.bytes().any(|b| b != b'0'))
        .then_some(s)
}

fn ms_to_ns(v: &Value) -> Option<i64> {
    let ms = v.as_f64()?;
    (ms.is_finite() && (0.0..9.0e15).contains(&ms)).then_some((ms * 1e6) as i64)
}

fn text(v: &Value) -> Option<String> {
    let mut s = match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => return None,
    };
    cut(&mut s, FIELD_BYTES_MAX);
    (!s.is_empty()).then_some(s)
}

/// The path of a URL (for span names; the full URL is an attribute).
fn path_of(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let path = rest.find('/').map_or("/", |i| &rest[i..]);
    path.split(['?', '#']).next().unwrap_or("/")
}

/// Decodes one beacon.
pub fn decode(body: &[u8]) -> Result<Decoded, String> {
    if body.len() > BEACON_BYTES_MAX {
        return Err(format!("a beacon is at most {BEACON_BYTES_MAX} bytes"));
    }
    let b: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let site = text(&b["site"]).ok_or("site is missing")?;
    let events = b["events"]
        .as_array()
        .ok_or("events is missing or not a list")?;
    if events.len() > EVENTS_MAX {
        return Err(format!("a beacon holds at most {EVENTS_MAX} events"));
    }
    let service = format!("rum:{site}");
    let session = text(&b["session_id"]);
    let user = text(&b["user_id"]);
    let page = text(&b["page"]);
    let vip = b["vip"] == true;
    let mut out = Decoded::default();
    // The page view's ids, for the events that belong under it.
    let page_ids = events
        .iter()
        .find(|e| e["type"] == "page_load")
        .and_then(|e| Some((hex_of(&e["trace_id"], 32)?, hex_of(&e["span_id"], 16)?)));
    let trace_of =
        |e: &Value| hex_of(&e["trace_id"], 32).or_else(|| page_ids.as_ref().map(|p| p.0.clone()));
    // The page view an event belongs under: its own `parent_span_id`, else the beacon's.
    let parent_of = |e: &Value| {
        hex_of(&e["parent_span_id"], 16).or_else(|| page_ids.as_ref().map(|p| p.1.clone()))
    };
    let refuse = |out: &mut Decoded, why: String| {
        out.rejected += 1;
        out.message.get_or_insert(why);
    };
    for (i, e) in events.iter().enumerate() {
        let kind = e["type"].as_str().unwrap_or("");
        let base_attrs = || {
            let mut a = Map::new();
            a.insert("telemetry.sdk.language".into(), json!("webjs"));
            if let Some(p) = &page {
                a.insert("url.full".into(), json!(p));
            }
            if vip {
                a.insert("user.vip".into(), json!(true));
            }
            a
        };
        match kind {
            "page_load" | "fetch" | "resource" => {
                let Some(start) = ms_to_ns(&e["start_ms"]) else {
                    refuse(&mut out, format!("event {i}: start_ms is missing"));
                    continue;
                };
                let Some(trace_id) = trace_of(e) else {
                    refuse(&mut out, format!("event {i}: no trace id (32 hex digits)"));
                    continue;
                };
                let Some(span_id) = hex_of(&e["span_id"], 16) else {
                    refuse(&mut out, format!("event {i}: span_id is not 16 hex digits"));
                    continue;
                };
                let mut a = base_attrs();
                let (name, span_kind, dur_key, parent) = match kind {
                    "page_load" => {
                        for k in [
                            "ttfb_ms",
                            "dom_content_loaded_ms",
                            "load_ms",
                            "lcp_ms",
                            "cls",
                            "inp_ms",
                        ] {
                            if let Some(v) = e[k].as_f64() {
                                a.insert(format!("web_vitals.{k}"), json!(v));
                            }
                        }
                        (
                            format!("page load {}", path_of(page.as_deref().unwrap_or("/"))),
                            "internal",
                            "load_ms",
                            None,
                        )
                    }
                    "fetch" => {
                        let url = text(&e["url"]).unwrap_or_default();
                        let method = text(&e["method"]).unwrap_or_else(|| "GET".into());
                        a.insert("url.full".into(), json!(url));
                        (
                            format!("{method} {}", path_of(&url)),
                            "client",
                            "duration_ms",
                            parent_of(e),
                        )
                    }
                    _ => {
                        let url = text(&e["name"]).unwrap_or_default();
                        if let Some(t) = text(&e["initiator"]) {
                            a.insert("resource.initiator".into(), json!(t));
                        }
                        (
                            format!("resource {}", path_of(&url)),
                            "internal",
                            "duration_ms",
                            parent_of(e),
                        )
                    }
                };
                let dur = ms_to_ns(&e[dur_key]).unwrap_or(0);
                let mut name = name;
                cut(&mut name, TEXT_BYTES_MAX);
                let status = e["status"].as_i64();
                out.rows.spans.push(SpanRow {
                    start_ns: start,
                    end_ns: start.saturating_add(dur),
                    trace_id,
                    span_id,
                    parent_span_id: parent,
                    service: service.clone(),
                    name,
                    kind: span_kind.into(),
                    status: if status.is_some_and(|s| s == 0 || s >= 500) || e["error"].is_string()
                    {
                        "error".into()
                    } else {
                        "unset".into()
                    },
                    user_id: user.clone(),
                    session_id: session.clone(),
                    http_method: (kind == "fetch")
                        .then(|| text(&e["method"]).unwrap_or_else(|| "GET".into())),
                    http_status: status,
                    trace_state: vip.then(|| crate::sampling::VIP_TRACESTATE.to_string()),
                    attributes: Value::Object(a).to_string(),
                    ..Default::default()
                });
            }
            "error" | "vital" => {
                let at = ms_to_ns(&e["at_ms"]).unwrap_or(0);
                if at == 0 {
                    refuse(&mut out, format!("event {i}: at_ms is missing"));
                    continue;
                }
                let mut a = base_attrs();
                let body = if kind == "error" {
                    for (k, to) in [
                        ("source", "code.filepath"),
                        ("line", "code.lineno"),
                        ("col", "code.column"),
                        ("stack", "exception.stacktrace"),
                    ] {
                        if let Some(v) = text(&e[k]) {
                            a.insert(to.into(), json!(v));
                        }
                    }
                    text(&e["message"]).unwrap_or_else(|| "error".into())
                } else {
                    let name = text(&e["name"]).unwrap_or_default();
                    a.insert("web_vitals.name".into(), json!(name));
                    if let Some(v) = e["value"].as_f64() {
                        a.insert("web_vitals.value".into(), json!(v));
                    }
                    format!("{name} {}", e["value"])
                };
                out.rows.logs.push(LogRow {
                    time_ns: at,
                    service: service.clone(),
                    severity_number: if kind == "error" { 17 } else { 9 },
                    severity_text: if kind == "error" { "ERROR" } else { "INFO" }.into(),
                    body,
                    trace_id: trace_of(e),
                    span_id: parent_of(e),
                    user_id: user.clone(),
                    session_id: session.clone(),
                    attributes: Value::Object(a).to_string(),
                });
            }
            other => refuse(&mut out, format!("event {i}: unknown type {other:?}")),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

    fn beacon(events: Value) -> Vec<u8> {
        serde_json::to_vec(&json!({"site": "shop", "session_id": "s1", "user_id": "u1", "page": "https://shop.example/checkout?x=1", "events": events})).unwrap()
    }

    #[test]
    fn a_page_view_its_fetch_and_its_errors_share_the_pages_trace() {
        let d = decode(&beacon(json!([
            {"type": "page_load", "trace_id": T, "span_id": "00f067aa0ba902b7", "start_ms": 1700000000000.5, "load_ms": 120.0, "ttfb_ms": 30.0, "lcp_ms": 80.0, "cls": 0.01},
            {"type": "fetch", "span_id": "00f067aa0ba902b8", "url": "https://shop.example/api/pay", "method": "POST", "status": 200, "start_ms": 1700000000200.0, "duration_ms": 45.0},
            {"type": "error", "message": "boom", "line": 3, "at_ms": 1700000000300.0},
            {"type": "nonsense"}
        ])))
        .unwrap();
        assert_eq!(
            (d.rows.spans.len(), d.rows.logs.len(), d.rejected),
            (2, 1, 1)
        );
        let (page, fetch) = (&d.rows.spans[0], &d.rows.spans[1]);
        assert_eq!(page.name, "page load /checkout");
        assert_eq!(page.end_ns - page.start_ns, 120_000_000);
        assert_eq!(
            (page.service.as_str(), page.user_id.as_deref()),
            ("rum:shop", Some("u1"))
        );
        assert!(
            page.attributes.contains("\"web_vitals.lcp_ms\":80.0"),
            "{}",
            page.attributes
        );
        assert_eq!(
            (fetch.trace_id.as_str(), fetch.parent_span_id.as_deref()),
            (T, Some("00f067aa0ba902b7"))
        );
        assert_eq!(
            (fetch.name.as_str(), fetch.kind.as_str(), fetch.http_status),
            ("POST /api/pay", "client", Some(200))
        );
        assert_eq!(d.rows.logs[0].trace_id.as_deref(), Some(T));
        assert!(crate::journey::is_client_side(page));
    }

    #[test]
    fn bad_beacons_are_refused_with_a_reason() {
        assert!(decode(b"nope").unwrap_err().contains("not JSON"));
        assert!(decode(br#"{"events": []}"#).unwrap_err().contains("site"));
        let many: Vec<Value> = (0..EVENTS_MAX + 1)
            .map(|_| json!({"type": "vital"}))
            .collect();
        assert!(decode(&beacon(json!(many)))
            .unwrap_err()
            .contains("at most"));
        let d = decode(&beacon(
            json!([{"type": "fetch", "span_id": "zz", "start_ms": 1.0}]),
        ))
        .unwrap();
        assert_eq!(d.rejected, 1);
    }
}
