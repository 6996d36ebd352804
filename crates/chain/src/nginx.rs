//! Nginx JSON access logs: one line per request, in the `log_format` below, with the
//! upstream timings and the trace id of the request (`traceparent`), so a request at the
//! edge is linked to its backend trace and, by Community ID, to its network flow.
//!
//! ```nginx
//! log_format steadfast escape=json '{"msec":"$msec","host":"$host",'
//!   '"remote_addr":"$remote_addr","remote_port":"$remote_port",'
//!   '"server_addr":"$server_addr","server_port":"$server_port",'
//!   '"request_method":"$request_method","uri":"$uri","status":"$status",'
//!   '"bytes_sent":"$bytes_sent","request_length":"$request_length",'
//!   '"request_time":"$request_time","upstream_addr":"$upstream_addr",'
//!   '"upstream_connect_time":"$upstream_connect_time",'
//!   '"upstream_header_time":"$upstream_header_time",'
//!   '"upstream_response_time":"$upstream_response_time",'
//!   '"traceparent":"$http_traceparent","user_agent":"$http_user_agent",'
//!   '"request_id":"$request_id"}';
//! access_log /var/log/nginx/steadfast.json steadfast;
//! ```
//!
//! `msec`, `request_method`, `uri` and `status` are required; every other field may be
//! missing or `-`. Times are parsed as decimal strings into exact nanoseconds (no floats).
//! Several upstreams (`"0.004, 0.010"` or `"0.004 : 0.010"`) add up.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::flow::{community_id, PROTO_TCP};

/// Longest access-log line.
pub const LINE_BYTES_MAX: usize = 16 * 1024;
/// Longest text field kept (URIs, user agents); longer ones are cut.
pub const FIELD_BYTES_MAX: usize = 2_048;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AccessRow {
    pub time_ns: i64,
    pub host: Option<String>,
    pub remote_addr: Option<String>,
    pub remote_port: Option<i32>,
    pub server_addr: Option<String>,
    pub server_port: Option<i32>,
    pub method: String,
    pub uri: String,
    pub status: i32,
    pub bytes_sent: Option<i64>,
    pub request_length: Option<i64>,
    pub request_time_ns: Option<i64>,
    pub upstream_addr: Option<String>,
    pub upstream_connect_ns: Option<i64>,
    pub upstream_header_ns: Option<i64>,
    pub upstream_response_ns: Option<i64>,
    pub trace_id: Option<String>,
    pub span_id: Option<String>,
    pub user_agent: Option<String>,
    pub request_id: Option<String>,
    /// Of the client's TCP connection to nginx.
    pub community_id: Option<String>,
}

/// Decimal seconds (`"1700000000.123"`, `"0.004"`) as nanoseconds, exactly.
pub fn seconds_ns(text: &str) -> Option<i64> {
    let t = text.trim();
    let (int, frac) = t.split_once('.').unwrap_or((t, ""));
    if int.is_empty() && frac.is_empty()
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
        || frac.len() > 9
    {
        return None;
    }
    let whole: i64 = if int.is_empty() { 0 } else { int.parse().ok()? };
    let frac_ns: i64 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<9}").parse().ok()?
    };
    whole.checked_mul(1_000_000_000)?.checked_add(frac_ns)
}

/// A field's text; `-` and empty mean absent.
fn text(v: &Value, key: &str) -> Option<String> {
    let s = match &v[key] {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => return None,
    };
    let s = s.trim();
    if s.is_empty() || s == "-" {
        return None;
    }
    let mut s = s.to_string();
    crate::rows::cut(&mut s, FIELD_BYTES_MAX);
    Some(s)
}

fn int(v: &Value, key: &str) -> Option<i64> {
    text(v, key)?.parse().ok()
}

/// Upstream times: one per upstream tried, separated by `,` or `:`; they add up.
fn upstream_ns(v: &Value, key: &str) -> Option<i64> {
    let t = text(v, key)?;
    let mut total = 0i64;
    let mut any = false;
    for part in t.split([',', ':']) {
        if let Some(ns) = seconds_ns(part) {
            total = total.saturating_add(ns);
            any = true;
        }
    }
    any.then_some(total)
}

/// The trace and span ids of a W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`).
pub fn traceparent(tp: &str) -> Option<(String, String)> {
    let parts: Vec<&str> = tp.trim().split('-').collect();
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    if parts.len() < 4 || !hex(parts[1], 32) || !hex(parts[2], 16) {
        return None;
    }
    let (t, s) = (parts[1].to_ascii_lowercase(), parts[2].to_ascii_lowercase());
    if t.bytes().all(|b| b == b'0') || s.bytes().all(|b| b == b'0') {
        return None;
    }
    Some((t, s))
}

/// One access-log line.
pub fn parse_line(line: &str) -> Result<AccessRow, String> {
    if line.len() > LINE_BYTES_MAX {
        return Err(format!("the line is longer than {LINE_BYTES_MAX} bytes"));
    }
    let v: Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    if !v.is_object() {
        return Err("not a JSON object".into());
    }
    let time_ns = text(&v, "msec")
        .and_then(|m| seconds_ns(&m))
        .ok_or("msec is missing or not seconds since the epoch")?;
    let method = text(&v, "request_method").ok_or("request_method is missing")?;
    let uri = text(&v, "uri").ok_or("uri is missing")?;
    let status = int(&v, "status")
        .filter(|s| (100..1000).contains(s))
        .ok_or("status is missing or not an HTTP status")? as i32;
    let port = |k: &str| {
        int(&v, k)
            .filter(|p| (0..=65_535).contains(p))
            .map(|p| p as i32)
    };
    let (remote_addr, remote_port) = (text(&v, "remote_addr"), port("remote_port"));
    let (server_addr, server_port) = (text(&v, "server_addr"), port("server_port"));
    let community = match (&remote_addr, remote_port, &server_addr, server_port) {
        (Some(ra), Some(rp), Some(sa), Some(sp)) => {
            match (ra.parse::<IpAddr>(), sa.parse::<IpAddr>()) {
                (Ok(r), Ok(s)) => community_id(PROTO_TCP, r, rp as u16, s, sp as u16),
                _ => None,
            }
        }
        _ => None,
    };
    let ids = text(&v, "traceparent").and_then(|t| traceparent(&t));
    Ok(AccessRow {
        time_ns,
        host: text(&v, "host"),
        remote_addr,
        remote_port,
        server_addr,
        server_port,
        method,
        uri,
        status,
        bytes_sent: int(&v, "bytes_sent"),
        request_length: int(&v, "request_length"),
        request_time_ns: text(&v, "request_time").and_then(|t| seconds_ns(&t)),
        upstream_addr: text(&v, "upstream_addr"),
        upstream_connect_ns: upstream_ns(&v, "upstream_connect_time"),
        upstream_header_ns: upstream_ns(&v, "upstream_header_time"),
        upstream_response_ns: upstream_ns(&v, "upstream_response_time"),
        trace_id: ids.as_ref().map(|(t, _)| t.clone()),
        span_id: ids.map(|(_, s)| s),
        user_agent: text(&v, "user_agent"),
        request_id: text(&v, "request_id"),
        community_id: community,
    })
}

/// Lines refused, with their (1-based) line number and why; the first few are kept.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Parsed {
    pub rows: Vec<AccessRow>,
    pub rejected: usize,
    pub errors: Vec<(usize, String)>,
}

/// Refusals described at most, per body.
const ERRORS_KEPT: usize = 10;

/// Every line of an NDJSON body; blank lines are skipped.
pub fn parse_lines(body: &str) -> Parsed {
    let mut out = Parsed::default();
    for (i, line) in body.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match parse_line(line) {
            Ok(r) => out.rows.push(r),
            Err(e) => {
                out.rejected += 1;
                if out.errors.len() < ERRORS_KEPT {
                    out.errors.push((i + 1, e));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINE: &str = r#"{"msec":"1700000000.123","host":"pay.example","remote_addr":"127.0.0.1","remote_port":"50000","server_addr":"127.0.0.1","server_port":"8080","request_method":"POST","uri":"/v1/pay","status":"200","bytes_sent":"512","request_length":"300","request_time":"0.015","upstream_addr":"127.0.0.1:7431, 127.0.0.1:7432","upstream_connect_time":"0.001, 0.002","upstream_header_time":"0.010, 0.003","upstream_response_time":"0.011 : 0.003","traceparent":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01","user_agent":"curl/8","request_id":"abc"}"#;

    #[test]
    fn a_line_in_the_documented_format_is_read_exactly() {
        let r = parse_line(LINE).unwrap();
        assert_eq!(r.time_ns, 1_700_000_000_123_000_000);
        assert_eq!(
            (r.method.as_str(), r.uri.as_str(), r.status),
            ("POST", "/v1/pay", 200)
        );
        assert_eq!(r.request_time_ns, Some(15_000_000));
        assert_eq!(
            r.upstream_connect_ns,
            Some(3_000_000),
            "two upstreams add up"
        );
        assert_eq!(r.upstream_response_ns, Some(14_000_000));
        assert_eq!(
            r.trace_id.as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(r.span_id.as_deref(), Some("00f067aa0ba902b7"));
        assert_eq!(
            r.community_id.as_deref(),
            Some("1:bwaxBSrjQiL/QKPJx556VoDZ60U=")
        );
    }

    #[test]
    fn absent_fields_are_none_and_bad_lines_say_why() {
        let r = parse_line(r#"{"msec":"1700000000","request_method":"GET","uri":"/","status":404,"upstream_response_time":"-","traceparent":"-"}"#).unwrap();
        assert_eq!(
            (r.upstream_response_ns, r.trace_id, r.community_id),
            (None, None, None)
        );
        for (line, why) in [
            ("not json", "not JSON"),
            (
                r#"{"request_method":"GET","uri":"/","status":"200"}"#,
                "msec",
            ),
            (
                r#"{"msec":"1.5","uri":"/","status":"200"}"#,
                "request_method",
            ),
            (
                r#"{"msec":"1.5","request_method":"GET","uri":"/","status":"99"}"#,
                "status",
            ),
            (
                r#"{"msec":"1e9","request_method":"GET","uri":"/","status":"200"}"#,
                "msec",
            ),
        ] {
            let e = parse_line(line).unwrap_err();
            assert!(e.contains(why), "{line}: {e}");
        }
        let p = parse_lines(&format!("{LINE}\n\nbad\n{LINE}\n"));
        assert_eq!((p.rows.len(), p.rejected), (2, 1));
        assert_eq!(p.errors[0].0, 3, "the line number of the refusal");
    }

    #[test]
    fn seconds_are_exact() {
        assert_eq!(seconds_ns("0.004"), Some(4_000_000));
        assert_eq!(seconds_ns("12"), Some(12_000_000_000));
        assert_eq!(seconds_ns(".5"), Some(500_000_000));
        assert_eq!(seconds_ns("1.0000000001"), None, "finer than a nanosecond");
        assert_eq!(seconds_ns("-1"), None);
        assert_eq!(seconds_ns(""), None);
    }
}
