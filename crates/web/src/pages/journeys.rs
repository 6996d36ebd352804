//! Journeys (`/ui/journeys`): find a user, then see what they lived through: their
//! sessions, and each trace they caused as a waterfall from the browser to the database
//! and the fund records it wrote, with where the time went.
//!
//! From `GET /api/v1/journeys?user=`: `user`, `sessions` (`session_id`, `start_ns`,
//! `end_ns`, `traces`), `traces` (`trace_id`, `root_service`, `root_name`, `start_ns`,
//! `duration_ns`, `spans`, `errors`, `services`, `session_id`, `order_ids`, `breakdown`,
//! `spans_list`, `edge`, `flows`, `fund_records`, `logs`), `breakdown` (`client_ns`,
//! `network_ns`, `server_ns`, `database_ns`) and `truncated`.

use std::collections::{HashMap, HashSet};

use maud::{html, Markup};
use serde_json::Value;

use super::services::{ago, int, items, ns_text, num, raw_json, url_encode};
use crate::chart::{self, WaterfallRow};
use crate::fmt;
use crate::layout::{empty, page, pill, range_selector, section, stat, Ctx, Nav, Range, Tone};

/// Traces drawn as waterfalls; the older ones are listed.
const WATERFALLS_MAX: usize = 10;
/// Rows of one waterfall at most.
const ROWS_MAX: usize = 300;
/// Network flows drawn per trace (a connection is often reported by several exporters).
const FLOWS_MAX: usize = 6;
/// Log lines listed per trace.
const LOGS_MAX: usize = 50;
/// Users listed.
const USERS_MAX: usize = 25;

/// Nanoseconds since the epoch of a time column: the chain's JSON writes timestamps as
/// `2026-12-03T14:53:49.123456789` (UTC, no zone); a number is taken as nanoseconds.
fn time_ns(v: &Value) -> Option<i64> {
    if let Some(n) = int(v) {
        return Some(n);
    }
    let s = v.as_str()?;
    let t = chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f")
        .or_else(|_| chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f"))
        .ok()
        .map(|t| t.and_utc())
        .or_else(|| {
            chrono::DateTime::parse_from_rfc3339(s)
                .ok()
                .map(|t| t.to_utc())
        })?;
    t.timestamp_nanos_opt()
}

fn ns_to_ms(ns: i64) -> i64 {
    ns.div_euclid(1_000_000)
}

/// An amount in minor units at its currency's scale: `1234`, 2 → `12.34`.
fn amount(minor: i64, scale: i64) -> String {
    if !(0..=18).contains(&scale) {
        return minor.to_string();
    }
    let scale = scale as usize;
    let digits = minor.unsigned_abs().to_string();
    let sign = if minor < 0 { "-" } else { "" };
    if scale == 0 {
        return format!("{sign}{digits}");
    }
    let padded = format!("{digits:0>width$}", width = scale + 1);
    let (int_part, frac) = padded.split_at(padded.len() - scale);
    format!("{sign}{int_part}.{frac}")
}

/// How many of a user's newest traces a journey page may ask for (`?traces=`); the
/// first is the default.
pub const TRACE_CHOICES: [usize; 3] = [20, 50, 200];

/// The `?traces=` of a journey page: one of [`TRACE_CHOICES`], else the default.
pub fn traces_choice(v: Option<&str>) -> usize {
    v.and_then(|v| v.parse().ok())
        .filter(|n| TRACE_CHOICES.contains(n))
        .unwrap_or(TRACE_CHOICES[0])
}

/// `GET /ui/journeys`: the user search, the user list, and the chosen user's journey
/// (its newest `traces`, as asked of the API).
pub fn search(
    ctx: &Ctx,
    users: &Value,
    user: Option<&str>,
    journey: Option<&Value>,
    range: &Range,
    traces: usize,
) -> Markup {
    let user = user.filter(|u| !u.is_empty());
    let base = match user {
        Some(u) if traces != TRACE_CHOICES[0] => {
            format!("/ui/journeys?user={}&traces={traces}", url_encode(u))
        }
        Some(u) => format!("/ui/journeys?user={}", url_encode(u)),
        None => "/ui/journeys".to_string(),
    };
    let body = html! {
        form.filters method="get" action="/ui/journeys" {
            label {
                "User id"
                input type="search" name="user" value=(user.unwrap_or("")) required maxlength="256" placeholder="u-17";
            }
            input type="hidden" name="range" value=(range.key);
            button type="submit" { "Show journey" }
        }
        (range_selector(range, &base))
        @if let Some(u) = user {
            (journey_of(u, journey, range, traces))
        }
        (section("Users", users_table(users, user, range, ctx.now_ms)))
    };
    let title = match user {
        Some(u) => format!("Journey of {u}"),
        None => "Journeys".to_string(),
    };
    page(ctx, &title, Nav::Journeys, body)
}

fn users_table(users: &Value, chosen: Option<&str>, range: &Range, now_ms: i64) -> Markup {
    let mut list: Vec<&Value> = items(users).iter().collect();
    if list.is_empty() {
        return empty("No user seen yet: journeys are built from spans that carry a user id (user.id or enduser.id).");
    }
    // VIP first, then the most recently seen.
    list.sort_by_key(|u| {
        (
            !u["vip"].as_bool().unwrap_or(false),
            std::cmp::Reverse(int(&u["last_seen_ms"]).unwrap_or(i64::MIN)),
        )
    });
    let more = list.len().saturating_sub(USERS_MAX);
    html! {
        table {
            thead { tr { th { "User" } th { "Last seen" } th.num { "Traces" } } }
            tbody {
                @for u in list.iter().take(USERS_MAX) {
                    @let name = u["user"].as_str().unwrap_or("");
                    tr {
                        td {
                            a href=(format!("/ui/journeys?user={}&range={}", url_encode(name), range.key))
                                class=@if Some(name) == chosen { "active" } { (name) }
                            @if u["vip"].as_bool() == Some(true) { " " span.vip title="VIP user" { "VIP" } }
                        }
                        td { @match int(&u["last_seen_ms"]) {
                            Some(t) => { (fmt::time(t)) " " span.note { "(" (ago(t, now_ms)) ")" } }
                            None => "—",
                        } }
                        td.num { (int(&u["traces"]).map(|n| fmt::count(n.max(0) as u64)).unwrap_or_else(|| "—".into())) }
                    }
                }
            }
        }
        @if more > 0 { p.note { (more) " more user(s) not listed: search by id above." } }
    }
}

fn journey_of(user: &str, journey: Option<&Value>, range: &Range, asked: usize) -> Markup {
    let no_journey = format!(
        "No journey of {user} between {} and {}: no span carrying this user id is stored in this range. Pick a longer range, or check the id.",
        fmt::time(range.from_ms),
        fmt::time(range.to_ms)
    );
    let Some(j) = journey.filter(|j| j.is_object()) else {
        return section("Journey", empty(&no_journey));
    };
    let all = items(&j["traces"]);
    let mut traces: Vec<&Value> = all
        .iter()
        .filter(|t| {
            int(&t["start_ns"])
                .map(ns_to_ms)
                .is_none_or(|ms| ms >= range.from_ms && ms <= range.to_ms)
        })
        .collect();
    traces.sort_by_key(|t| std::cmp::Reverse(int(&t["start_ns"]).unwrap_or(i64::MIN)));
    if traces.is_empty() {
        let last = all
            .iter()
            .filter_map(|t| int(&t["start_ns"]))
            .max()
            .map(|ns| format!(" (their last trace is from {})", fmt::time(ns_to_ms(ns))))
            .unwrap_or_default();
        return section("Journey", empty(&format!("{no_journey}{last}")));
    }
    let shown = &traces[..traces.len().min(WATERFALLS_MAX)];
    let errors: i64 = traces.iter().filter_map(|t| int(&t["errors"])).sum();
    let funds: usize = traces.iter().map(|t| items(&t["fund_records"]).len()).sum();
    html! {
        div.stats {
            (stat("sessions", &items(&j["sessions"]).len().to_string(), Tone::Neutral))
            (stat("traces", &traces.len().to_string(), Tone::Neutral))
            (stat("traces with errors", &traces.iter().filter(|t| int(&t["errors"]).unwrap_or(0) > 0).count().to_string(), if errors > 0 { Tone::Bad } else { Tone::Good }))
            (stat("fund records written", &funds.to_string(), Tone::Neutral))
        }
        nav.ranges aria-label="traces" {
            "Newest traces: "
            @for n in TRACE_CHOICES {
                a href=(format!("/ui/journeys?user={}&range={}&traces={n}", url_encode(user), range.key))
                    class=@if n == asked { "active" } { (n) }
            }
        }
        @if j["truncated"].as_bool() == Some(true) || traces.len() >= asked {
            p.note { "Only the newest " (asked) " traces are included; ask for more above, or pick a shorter range to see older ones." }
        }
        (section("Where the time went", breakdown_figure(&j["breakdown"])))
        (section("Sessions", sessions_table(&j["sessions"])))
        (section("Traces, newest first", traces_table(&traces, shown.len())))
        @for t in shown {
            (trace_section(t))
        }
        (raw_json("journey", j))
    }
}

fn breakdown_figure(b: &Value) -> Markup {
    let parts = [
        ("client (browser or app)", &b["client_ns"]),
        ("network", &b["network_ns"]),
        ("server", &b["server_ns"]),
        ("database", &b["database_ns"]),
    ];
    let total: f64 = parts.iter().filter_map(|(_, v)| num(v)).sum();
    let bars: Vec<(String, f64, Tone)> = parts
        .iter()
        .filter_map(|(label, v)| Some((label.to_string(), num(v)? / 1e6, Tone::Neutral)))
        .collect();
    html! {
        (chart::bars("Time by where it was spent, all traces", "ms", &bars, "No time recorded: the traces have no spans with a duration."))
        (breakdown_table(b, total))
        p.note { "From each span's own time (its duration less its children's): network is the time between a caller sending and the callee starting (and back); client is the rest of what the browser or app recorded." }
    }
}

fn breakdown_table(b: &Value, total: f64) -> Markup {
    html! {
        table {
            thead { tr { th.num { "Client" } th.num { "Network" } th.num { "Server" } th.num { "Database" } } }
            tbody { tr {
                @for key in ["client_ns", "network_ns", "server_ns", "database_ns"] {
                    td.num {
                        @match num(&b[key]) {
                            Some(ns) => {
                                (ns_text(ns))
                                @if total > 0.0 { " " span.note { "(" (format!("{:.0} %", ns / total * 100.0)) ")" } }
                            }
                            None => "—",
                        }
                    }
                }
            } }
        }
    }
}

fn sessions_table(sessions: &Value) -> Markup {
    let list = items(sessions);
    if list.is_empty() {
        return empty(
            "No session id on these traces (session.id is set by the browser agent or the app).",
        );
    }
    html! {
        table {
            thead { tr { th { "Session" } th { "From" } th { "To" } th.num { "Length" } th.num { "Traces" } } }
            tbody {
                @for s in list {
                    @let (a, b) = (int(&s["start_ns"]), int(&s["end_ns"]));
                    tr {
                        td.mono { (s["session_id"].as_str().unwrap_or("—")) }
                        td { (a.map(|t| fmt::time(ns_to_ms(t))).unwrap_or_else(|| "—".into())) }
                        td { (b.map(|t| fmt::time(ns_to_ms(t))).unwrap_or_else(|| "—".into())) }
                        td.num { (match (a, b) { (Some(a), Some(b)) => ns_text(b.saturating_sub(a) as f64), _ => "—".into() }) }
                        td.num { (int(&s["traces"]).unwrap_or(0)) }
                    }
                }
            }
        }
    }
}

fn anchor(t: &Value) -> String {
    format!("trace-{}", url_encode(t["trace_id"].as_str().unwrap_or("")))
}

fn traces_table(traces: &[&Value], drawn: usize) -> Markup {
    html! {
        table {
            thead { tr {
                th { "Started" } th { "Trace" } th { "Root" } th.num { "Duration" } th.num { "Spans" } th { "Errors" }
                th.num { "Client" } th.num { "Network" } th.num { "Server" } th.num { "Database" } th.num { "Fund records" }
            } }
            tbody {
                @for (i, t) in traces.iter().enumerate() {
                    @let b = &t["breakdown"];
                    @let errs = int(&t["errors"]).unwrap_or(0);
                    tr {
                        td { (int(&t["start_ns"]).map(|ns| fmt::time(ns_to_ms(ns))).unwrap_or_else(|| "—".into())) }
                        td.mono {
                            @if i < drawn {
                                a href=(format!("#{}", anchor(t))) { (short_id(t["trace_id"].as_str().unwrap_or("—"))) }
                            } @else {
                                span title=(t["trace_id"].as_str().unwrap_or("")) { (short_id(t["trace_id"].as_str().unwrap_or("—"))) }
                            }
                        }
                        td { (t["root_service"].as_str().unwrap_or("—")) ": " (t["root_name"].as_str().unwrap_or("—")) }
                        td.num { (num(&t["duration_ns"]).map(ns_text).unwrap_or_else(|| "—".into())) }
                        td.num { (int(&t["spans"]).unwrap_or(0)) }
                        td { @if errs > 0 { (pill(&format!("{errs} error(s)"), Tone::Bad)) } @else { (pill("ok", Tone::Good)) } }
                        @for key in ["client_ns", "network_ns", "server_ns", "database_ns"] {
                            td.num { (num(&b[key]).map(ns_text).unwrap_or_else(|| "—".into())) }
                        }
                        td.num { (items(&t["fund_records"]).len()) }
                    }
                }
            }
        }
        @if traces.len() > drawn {
            p.note {
                "Waterfalls are drawn for the " (drawn) " newest traces; the " (traces.len() - drawn)
                " older ones are listed above only. Pick a shorter time range to look at older traces in detail."
            }
        }
    }
}

fn short_id(id: &str) -> String {
    if id.len() > 12 && id.is_ascii() {
        format!("{}…", &id[..12])
    } else {
        id.to_string()
    }
}

/// One row of a waterfall before it borrows its strings.
struct Row {
    label: String,
    layer: &'static str,
    start_ms: f64,
    duration_ms: f64,
    depth: usize,
    error: bool,
    href: Option<String>,
}

/// The spans of a trace in tree order (each parent before its children, siblings by start
/// time), with their depth.
fn span_rows(t: &Value, t0: i64) -> Vec<Row> {
    let spans = items(&t["spans_list"]);
    let ids: HashSet<&str> = spans.iter().filter_map(|s| s["span_id"].as_str()).collect();
    let mut children: HashMap<&str, Vec<usize>> = HashMap::new();
    let mut roots: Vec<usize> = Vec::new();
    for (i, s) in spans.iter().enumerate() {
        match s["parent_span_id"].as_str().filter(|p| ids.contains(p)) {
            Some(p) if s["span_id"].as_str() != Some(p) => children.entry(p).or_default().push(i),
            _ => roots.push(i),
        }
    }
    let start = |i: &usize| int(&spans[*i]["start_ns"]).unwrap_or(i64::MAX);
    roots.sort_by_key(start);
    for c in children.values_mut() {
        c.sort_by_key(start);
    }
    let mut out = Vec::new();
    let mut seen: HashSet<usize> = HashSet::new();
    let mut stack: Vec<(usize, usize)> = roots.iter().rev().map(|&i| (i, 0)).collect();
    while let Some((i, depth)) = stack.pop() {
        if !seen.insert(i) || out.len() >= ROWS_MAX {
            continue;
        }
        let s = &spans[i];
        let service = s["service"].as_str().unwrap_or("?");
        let name = s["name"].as_str().unwrap_or("?");
        let status = int(&s["http_status"]);
        let layer = if !s["db_statement"].is_null() {
            "database"
        } else if service.starts_with("rum:") {
            "experience"
        } else {
            "backend"
        };
        let mut label = format!("{service}: {name}");
        if let Some(code) = status {
            label.push_str(&format!(" → {code}"));
        }
        if let Some(stmt) = s["db_statement"].as_str() {
            let stmt: String = stmt.chars().take(60).collect();
            label = format!("{service}: {stmt}");
        }
        let href =
            (!service.starts_with("rum:")).then(|| format!("/ui/services/{}", url_encode(service)));
        out.push(Row {
            label,
            layer,
            start_ms: int(&s["start_ns"]).unwrap_or(t0).saturating_sub(t0) as f64 / 1e6,
            duration_ms: int(&s["duration_ns"]).unwrap_or(0).max(0) as f64 / 1e6,
            depth,
            error: s["status"].as_str() == Some("error") || status.is_some_and(|c| c >= 500),
            href,
        });
        if let Some(kids) = s["span_id"].as_str().and_then(|id| children.get(id)) {
            for &k in kids.iter().rev() {
                stack.push((k, depth + 1));
            }
        }
    }
    out
}

/// A row that is not a span (a proxy line, a flow, a fund record), placed within the
/// trace's window: one from outside it is put at the nearer edge and says when it was.
fn clamped(
    label: String,
    layer: &'static str,
    start_ns: i64,
    end_ns: i64,
    t0: i64,
    dur: i64,
    error: bool,
) -> Row {
    let (a, b) = (
        start_ns.saturating_sub(t0),
        end_ns.max(start_ns).saturating_sub(t0),
    );
    let (ca, cb) = (a.clamp(0, dur.max(0)), b.clamp(0, dur.max(0)));
    let label = if ca != a || cb != b {
        format!(
            "{label} (at {}, outside the trace)",
            fmt::clock(ns_to_ms(start_ns), true)
        )
    } else {
        label
    };
    Row {
        label,
        layer,
        start_ms: ca as f64 / 1e6,
        duration_ms: (cb - ca) as f64 / 1e6,
        depth: 1,
        error,
        href: None,
    }
}

fn extra_rows(t: &Value, t0: i64, dur: i64) -> Vec<Row> {
    let mut out = Vec::new();
    for e in items(&t["edge"]) {
        let Some(end) = time_ns(&e["time"]) else {
            continue;
        };
        let start = end.saturating_sub(int(&e["request_time_ns"]).unwrap_or(0).max(0));
        let status = int(&e["status"]);
        let label = format!(
            "proxy {}: {} {} → {}",
            e["host"].as_str().unwrap_or("—"),
            e["method"].as_str().unwrap_or("?"),
            e["uri"].as_str().unwrap_or("?"),
            status.map(|s| s.to_string()).unwrap_or_else(|| "—".into())
        );
        out.push(clamped(
            label,
            "network",
            start,
            end,
            t0,
            dur,
            status.is_some_and(|s| s >= 500),
        ));
    }
    for f in items(&t["flows"]).iter().take(FLOWS_MAX) {
        let Some(start) = time_ns(&f["start_time"]) else {
            continue;
        };
        let end = time_ns(&f["end_time"]).unwrap_or(start);
        let label = format!(
            "flow {}:{} → {}:{}, {} B in {} packets ({})",
            f["src_addr"].as_str().unwrap_or("?"),
            int(&f["src_port"]).unwrap_or(0),
            f["dst_addr"].as_str().unwrap_or("?"),
            int(&f["dst_port"]).unwrap_or(0),
            int(&f["bytes"]).unwrap_or(0),
            int(&f["packets"]).unwrap_or(0),
            f["exporter"].as_str().unwrap_or("?"),
        );
        out.push(clamped(label, "network", start, end, t0, dur, false));
    }
    for r in items(&t["fund_records"]) {
        let Some(at) = time_ns(&r["time"]) else {
            continue;
        };
        let label = format!(
            "{} {} {} {}{}",
            r["kind"].as_str().unwrap_or("record"),
            r["record_id"].as_str().unwrap_or("?"),
            int(&r["amount_minor"])
                .map(|m| amount(m, int(&r["scale"]).unwrap_or(0)))
                .unwrap_or_else(|| "—".into()),
            r["currency"].as_str().unwrap_or(""),
            r["source"]
                .as_str()
                .map(|s| format!(" from {s}"))
                .unwrap_or_default(),
        );
        out.push(clamped(label, "fund", at, at, t0, dur, false));
    }
    out.sort_by(|a, b| a.start_ms.total_cmp(&b.start_ms));
    out
}

/// The spans with the other rows placed among them by start time (after the root).
fn waterfall_rows(t: &Value) -> Vec<Row> {
    let t0 = int(&t["start_ns"]).unwrap_or(0);
    let dur = int(&t["duration_ns"]).unwrap_or(0).max(0);
    let mut rows = span_rows(t, t0);
    for extra in extra_rows(t, t0, dur) {
        if rows.len() >= ROWS_MAX {
            break;
        }
        let at = rows
            .iter()
            .skip(1)
            .position(|r| r.start_ms > extra.start_ms)
            .map_or(rows.len(), |p| p + 1);
        rows.insert(at, extra);
    }
    rows
}

fn trace_section(t: &Value) -> Markup {
    let rows = waterfall_rows(t);
    let wf: Vec<WaterfallRow> = rows
        .iter()
        .map(|r| WaterfallRow {
            label: &r.label,
            layer: r.layer,
            start_ms: r.start_ms,
            duration_ms: r.duration_ms,
            depth: r.depth,
            error: r.error,
            href: r.href.as_deref(),
        })
        .collect();
    let id = t["trace_id"].as_str().unwrap_or("—");
    let title = format!(
        "{}: {}",
        t["root_service"].as_str().unwrap_or("—"),
        t["root_name"].as_str().unwrap_or("—")
    );
    let services: Vec<&str> = items(&t["services"])
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let orders: Vec<&str> = items(&t["order_ids"])
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let logs = items(&t["logs"]);
    let b = &t["breakdown"];
    let total: f64 = ["client_ns", "network_ns", "server_ns", "database_ns"]
        .iter()
        .filter_map(|k| num(&b[*k]))
        .sum();
    html! {
        section id=(anchor(t)) {
            h2 { (title) }
            p.note {
                (int(&t["start_ns"]).map(|ns| fmt::time(ns_to_ms(ns))).unwrap_or_else(|| "—".into()))
                " · " (num(&t["duration_ns"]).map(ns_text).unwrap_or_else(|| "—".into()))
                " · trace " span.mono { (id) }
                @if let Some(s) = t["session_id"].as_str() { " · session " span.mono { (s) } }
                @if !services.is_empty() { " · " (services.join(" → ")) }
                @if !orders.is_empty() { " · orders " (orders.join(", ")) }
                @if int(&t["errors"]).unwrap_or(0) > 0 { " " (pill(&format!("{} error(s)", int(&t["errors"]).unwrap_or(0)), Tone::Bad)) }
            }
            (chart::waterfall(&format!("Waterfall of trace {}", short_id(id)), &wf, "No span of this trace was stored (only its summary)."))
            (breakdown_table(b, total))
            @if !logs.is_empty() {
                details {
                    summary { (logs.len()) " log line(s)" }
                    table {
                        thead { tr { th { "Time" } th { "Service" } th { "Severity" } th { "Message" } } }
                        tbody {
                            @for l in logs.iter().take(LOGS_MAX) {
                                tr {
                                    td { (time_ns(&l["time"]).map(|ns| fmt::clock(ns_to_ms(ns), true)).unwrap_or_else(|| "—".into())) }
                                    td { (l["service"].as_str().unwrap_or("—")) }
                                    td { (l["severity_text"].as_str().unwrap_or("—")) }
                                    td.mono { (l["body"].as_str().unwrap_or("")) }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NOW: i64 = 1_764_770_000_000;
    const T0: i64 = (NOW - 600_000) * 1_000_000;

    fn ctx() -> Ctx {
        crate::layout::test_ctx(NOW)
    }

    fn range() -> Range {
        Range::parse(Some("1h"), NOW)
    }

    fn iso(ns: i64) -> String {
        chrono::DateTime::from_timestamp_nanos(ns)
            .naive_utc()
            .format("%Y-%m-%dT%H:%M:%S%.9f")
            .to_string()
    }

    /// A trace as the journey API summarises it: a page load whose fetch reaches the
    /// gateway, which calls payments, which writes to the database and a fund record.
    fn trace(n: i64, start_ns: i64) -> Value {
        let id = format!("{n:032x}");
        json!({
            "trace_id": id, "root_service": "rum:shop", "root_name": "click pay", "start_ns": start_ns,
            "duration_ns": 100_000_000, "spans": 4, "errors": if n == 1 { 1 } else { 0 },
            "services": ["rum:shop", "gateway", "payments"], "session_id": "sess-1", "order_ids": ["ORD-7"],
            "breakdown": {"client_ns": 20_000_000, "network_ns": 20_000_000, "server_ns": 40_000_000, "database_ns": 20_000_000},
            "spans_list": [
                {"span_id": "a1", "parent_span_id": null, "service": "rum:shop", "name": "click pay", "kind": "internal", "status": "ok",
                 "start_ns": start_ns, "duration_ns": 100_000_000, "http_route": null, "http_status": null, "db_statement": null},
                {"span_id": "a3", "parent_span_id": "a2", "service": "payments", "name": "POST /pay", "kind": "server", "status": if n == 1 { "error" } else { "ok" },
                 "start_ns": start_ns + 20_000_000, "duration_ns": 60_000_000, "http_route": "/pay", "http_status": if n == 1 { 503 } else { 200 }, "db_statement": null},
                {"span_id": "a2", "parent_span_id": "a1", "service": "gateway", "name": "GET <pay>", "kind": "client", "status": "ok",
                 "start_ns": start_ns + 10_000_000, "duration_ns": 80_000_000, "http_route": null, "http_status": null, "db_statement": null},
                {"span_id": "a4", "parent_span_id": "a3", "service": "payments", "name": "INSERT payment", "kind": "client", "status": "ok",
                 "start_ns": start_ns + 30_000_000, "duration_ns": 20_000_000, "http_route": null, "http_status": null, "db_statement": "INSERT INTO payment ..."}
            ],
            "edge": [{"time": iso(start_ns + 85_000_000), "host": "pay.example", "method": "POST", "uri": "/pay", "status": 200,
                      "request_time_ns": 70_000_000, "upstream_response_ns": 60_000_000, "remote_addr": "10.1.2.3", "remote_port": 40000,
                      "server_addr": "10.9.8.7", "server_port": 443, "community_id": "1:abc", "trace_id": id}],
            "flows": [{"start_time": iso(start_ns - 5_000_000_000), "end_time": iso(start_ns + 200_000_000), "exporter": "10.0.0.1:2055",
                       "version": 9, "src_addr": "10.1.2.3", "src_port": 40000, "dst_addr": "10.9.8.7", "dst_port": 443,
                       "protocol": 6, "bytes": 300, "packets": 5, "community_id": "1:abc"}],
            "fund_records": [{"time": iso(start_ns + 45_000_000), "source": "payments", "kind": "payment", "record_id": "p-7",
                              "order_id": "ORD-7", "trace_id": id, "amount_minor": 1234, "currency": "EUR", "scale": 2, "status": "paid"}],
            "logs": [{"time": iso(start_ns + 50_000_000), "service": "payments", "severity_text": "ERROR", "body": "card <declined>", "trace_id": id, "span_id": "a3"}]
        })
    }

    fn journey(n: i64) -> Value {
        let traces: Vec<Value> = (1..=n).map(|i| trace(i, T0 + i * 1_000_000_000)).collect();
        json!({"user": "vip-7", "sessions": [{"session_id": "sess-1", "start_ns": T0, "end_ns": T0 + n * 1_000_000_000, "traces": n}],
               "traces": traces, "breakdown": {"client_ns": 20_000_000 * n, "network_ns": 20_000_000 * n, "server_ns": 40_000_000 * n, "database_ns": 20_000_000 * n},
               "truncated": false})
    }

    fn users() -> Value {
        json!([
            {"user": "u-17", "vip": false, "last_seen_ms": NOW - 1_000, "traces": 12},
            {"user": "vip 7&8", "vip": true, "last_seen_ms": NOW - 3_600_000, "traces": 3},
            {"user": "u-<old>", "vip": false, "last_seen_ms": NOW - 86_400_000, "traces": 1},
        ])
    }

    #[test]
    fn vip_users_come_first_with_a_badge_and_encoded_links() {
        let html = search(&ctx(), &users(), None, None, &range(), 20).into_string();
        let vip = html.find("vip 7&amp;8").unwrap();
        let recent = html.find(">u-17<").unwrap();
        let old = html.find("u-&lt;old&gt;").unwrap();
        assert!(vip < recent && recent < old, "{html}");
        assert_eq!(html.matches(r#"<span class="vip""#).count(), 1);
        assert!(
            html.contains(r#"href="/ui/journeys?user=vip%207%268&amp;range=1h""#),
            "{html}"
        );
        assert!(html.contains(r#"<form class="filters" method="get" action="/ui/journeys">"#));
        assert!(html.contains(r#"name="user""#));
    }

    #[test]
    fn a_journey_draws_waterfalls_with_every_layer() {
        let j = journey(2);
        let html = search(&ctx(), &users(), Some("vip-7"), Some(&j), &range(), 20).into_string();
        assert_eq!(
            html.matches(r#"<figure class="chart"#).count(),
            3,
            "bars and two waterfalls: {html}"
        );
        assert!(html.contains("Where the time went"));
        assert!(html.contains("sess-1"));
        // Escaped span names, the fund record's amount, the proxy line and the flow.
        assert!(html.contains("GET &lt;pay&gt;"));
        assert!(html.contains("payment p-7 12.34 EUR"));
        assert!(html.contains("proxy pay.example: POST /pay → 200"));
        assert!(
            html.contains("outside the trace"),
            "the long flow is clipped"
        );
        assert!(html.contains("card &lt;declined&gt;"));
        // Newest first.
        let second = html.find(&format!("#trace-{:032x}", 2)).unwrap();
        let first = html.find(&format!("#trace-{:032x}", 1)).unwrap();
        assert!(second < first);
        assert!(html.contains(r#"href="/ui/journeys?user=vip-7&amp;range=6h""#));
    }

    #[test]
    fn waterfall_rows_follow_the_span_tree_and_layers() {
        let t = trace(1, T0);
        let rows = waterfall_rows(&t);
        let layers: Vec<(&str, usize)> = rows.iter().map(|r| (r.layer, r.depth)).collect();
        assert_eq!(layers[0], ("experience", 0));
        assert!(layers.contains(&("backend", 1)));
        assert!(layers.contains(&("database", 3)));
        assert!(layers.contains(&("network", 1)));
        assert!(layers.contains(&("fund", 1)));
        let db = rows.iter().find(|r| r.layer == "database").unwrap();
        assert_eq!((db.start_ms, db.duration_ms), (30.0, 20.0));
        assert!(rows.iter().any(|r| r.error), "the 503 is an error");
        let gateway = rows
            .iter()
            .position(|r| r.label.starts_with("gateway"))
            .unwrap();
        let payments = rows
            .iter()
            .position(|r| r.label.starts_with("payments: POST"))
            .unwrap();
        assert!(gateway < payments, "a parent before its child");
        assert!(rows
            .iter()
            .all(|r| r.start_ms >= 0.0 && r.start_ms + r.duration_ms <= 100.0 + 1e-9));
    }

    #[test]
    fn many_traces_draw_ten_waterfalls_and_list_the_rest() {
        let j = journey(14);
        let html = search(&ctx(), &users(), Some("vip-7"), Some(&j), &range(), 20).into_string();
        // 10 waterfalls and the breakdown bars.
        assert_eq!(html.matches(r#"<figure class="chart"#).count(), 11);
        assert!(
            html.contains("the 4 older ones are listed above only"),
            "{html}"
        );
    }

    #[test]
    fn no_journey_in_range_says_so() {
        let html = search(&ctx(), &users(), Some("nobody <x>"), None, &range(), 20).into_string();
        assert!(
            html.contains("No journey of nobody &lt;x&gt; between"),
            "{html}"
        );
        let mut old = journey(1);
        old["traces"][0]["start_ns"] = json!((NOW - 86_400_000) * 1_000_000);
        let html = search(&ctx(), &users(), Some("vip-7"), Some(&old), &range(), 20).into_string();
        assert!(html.contains("No journey of vip-7"));
        assert!(html.contains("their last trace is from"));
        let none = search(&ctx(), &json!([]), None, None, &range(), 20).into_string();
        assert!(none.contains("No user seen yet"));
    }

    #[test]
    fn a_journey_offers_more_traces_and_says_when_it_shows_only_the_newest() {
        assert_eq!(traces_choice(None), 20);
        assert_eq!(traces_choice(Some("50")), 50);
        assert_eq!(traces_choice(Some("51")), 20, "only the offered counts");
        assert_eq!(traces_choice(Some("x")), 20);
        let j = journey(3);
        let n = 3;
        let html = search(&ctx(), &users(), Some("vip-7"), Some(&j), &range(), n).into_string();
        assert!(
            html.contains(&format!("Only the newest {n} traces are included")),
            "{html}"
        );
        let html = search(&ctx(), &users(), Some("vip-7"), Some(&j), &range(), 200).into_string();
        assert!(
            !html.contains("Only the newest"),
            "fewer than asked: all of them"
        );
        assert!(
            html.contains(r#"href="/ui/journeys?user=vip-7&amp;range=1h&amp;traces=50""#),
            "{html}"
        );
        assert!(html.contains(r#"class="active">200<"#), "{html}");
    }

    #[test]
    fn unexpected_json_never_panics() {
        let weird = [
            json!(null),
            json!("x"),
            json!(42),
            json!({"traces": "no", "sessions": 3, "breakdown": []}),
            json!({"traces": [null, 1, {"start_ns": i64::MIN, "duration_ns": -5, "spans_list": [{"span_id": "a", "parent_span_id": "a"}, 7],
                                          "edge": [{"time": i64::MAX, "request_time_ns": i64::MAX}], "fund_records": [{"time": "x"}], "flows": [{"start_time": i64::MIN}]}]}),
        ];
        for w in &weird {
            let html = search(&ctx(), w, Some("u"), Some(w), &range(), 20).into_string();
            assert!(html.contains("Journey"), "{html}");
        }
        let html = search(
            &ctx(),
            &json!([{"user": 5}, {"vip": "yes"}, null]),
            None,
            None,
            &range(),
            20,
        )
        .into_string();
        assert!(html.contains("Users"));
    }

    #[test]
    fn amounts_and_times_read_back() {
        assert_eq!(amount(1234, 2), "12.34");
        assert_eq!(amount(-5, 2), "-0.05");
        assert_eq!(amount(7, 0), "7");
        assert_eq!(amount(1, 3), "0.001");
        assert_eq!(
            time_ns(&json!("2018-11-13T17:11:10.011375885")),
            Some(1_542_129_070_011_375_885)
        );
        assert_eq!(
            time_ns(&json!("2018-11-13T17:11:10")),
            Some(1_542_129_070_000_000_000)
        );
        assert_eq!(time_ns(&json!("garbage")), None);
    }
}
