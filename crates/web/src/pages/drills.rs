//! Drills: the list with schedules and the "new drill" form (`/ui/drills`), and one
//! drill with its live figures, report and timeline (`/ui/drills/{id}`).
//!
//! From the API: `GET /api/v1/drills` (`id`, `state`, `created_at`, `created_by`, `name`,
//! `report`), `GET /api/v1/drill-schedules` (`id`, `name`, `cron`, `spec`, `pairs`,
//! `created_by`, `created_at`, `history` of `at`, `decision`, `reason`, `drill`), and
//! `GET /api/v1/drills/{id}` (the stored drill: `spec`, `pairs`, `lease`, `planted`,
//! `controls`, `injections`, `report`, `error`, `breaks_closed`, `started_by`, `hits`,
//! `correction`, and `state`) with its report (`injected`, `discovered`, `missed`,
//! `discovered_permille`, `time_to_detect_ms_*`, `false_positives`, `corrected`,
//! `time_to_recover_ms_*`, `passed`, `outcomes`).

use maud::{html, Markup};
use serde_json::Value;

use super::services::{int, items, ms_of, raw_json, time_of, url_encode};
use crate::chart::{self, TimelineEvent, TimelineLink};
use crate::fmt;
use crate::layout::{action_form, empty, page, pill, section, stat, text, Ctx, Nav, Tone};

/// A drill spec offered as a starting point (`examples/drill-*.toml`).
pub struct Template<'a> {
    pub name: &'a str,
    pub spec: &'a str,
}

/// Rows of long per-fault tables shown before the rest is summarised.
const ROWS_MAX: usize = 100;
/// Faults put on the timeline at most (each is up to three events and a link; the chart
/// draws a busy lane as a density strip and samples the links).
const TIMELINE_FAULTS_MAX: usize = 2_000;

/// How a drill's state reads: `pending`, `running`, `correcting`, `completed`, `stopped`,
/// `killed`, `aborted`, `expired`, `failed`.
fn state_tone(state: &str) -> Tone {
    match state {
        "completed" => Tone::Good,
        "running" | "correcting" | "expired" => Tone::Warn,
        "killed" | "aborted" | "failed" => Tone::Bad,
        _ => Tone::Neutral,
    }
}

fn mode_of(d: &Value) -> Option<&str> {
    d["spec"]["mode"].as_str().or(d["mode"].as_str())
}

fn mode_pill(mode: Option<&str>) -> Markup {
    match mode {
        Some("lossy") => pill("lossy", Tone::Warn),
        Some(m) => pill(m, Tone::Neutral),
        None => html! { "—" },
    }
}

fn killswitch_engaged(ctx: &Ctx) -> bool {
    ctx.killswitch["engaged"].as_bool().unwrap_or(false)
}

/// The Start or Stop button a drill in `state` offers, if any.
fn controls(ctx: &Ctx, id: &str, state: &str, lossy: bool) -> Markup {
    let id = url_encode(id);
    html! {
        @match state {
            "pending" => {
                @if killswitch_engaged(ctx) {
                    form.action method="post" action=(format!("/ui/drills/{id}/start")) {
                        button type="submit" disabled title="The kill switch is engaged: no drill starts until it is released." { "Start" }
                    }
                } @else {
                    (action_form(&format!("/ui/drills/{id}/start"), "Start", None))
                }
                @if lossy { " " span.note { "needs a second person's approval" } }
            }
            "running" => (action_form(&format!("/ui/drills/{id}/stop"), "Stop", None)),
            _ => {}
        }
    }
}

fn ttd_text(report: &Value) -> String {
    match (
        int(&report["time_to_detect_ms_p50"]),
        int(&report["time_to_detect_ms_max"]),
    ) {
        (Some(p50), Some(max)) => format!("{} / {}", fmt::duration_ms(p50), fmt::duration_ms(max)),
        (Some(p50), None) => fmt::duration_ms(p50),
        _ => "—".into(),
    }
}

fn count_of(v: &Value) -> String {
    int(v)
        .map(|n| fmt::count(n.max(0) as u64))
        .unwrap_or_else(|| "—".into())
}

/// Whether a spec text asks for a lossy drill (`mode = "lossy"` in TOML, `"mode": "lossy"`
/// in JSON).
fn spec_is_lossy(spec: &str) -> bool {
    spec.lines().any(|l| {
        let l = l.trim();
        !l.starts_with('#') && l.contains("mode") && l.contains("\"lossy\"")
    })
}

/// `GET /ui/drills`: drills newest first, schedules, and the form that creates a drill.
pub fn list(
    ctx: &Ctx,
    drills: &Value,
    schedules: &Value,
    templates: &[Template],
    chosen: Option<&str>,
) -> Markup {
    let mut rows: Vec<&Value> = items(drills).iter().collect();
    rows.sort_by_key(|d| std::cmp::Reverse(int(&d["created_at"]).unwrap_or(i64::MIN)));
    let running = rows
        .iter()
        .filter(|d| d["state"].as_str() == Some("running"))
        .count();
    let chosen_template = chosen.and_then(|c| templates.iter().find(|t| t.name == c));
    let body = html! {
        @if killswitch_engaged(ctx) {
            p.flash.error { "The kill switch is engaged: running drills were stopped and none may start until it is released." }
        }
        div.stats {
            (stat("drills running", &running.to_string(), if running > 0 { Tone::Warn } else { Tone::Neutral }))
            (stat("drills listed", &rows.len().to_string(), Tone::Neutral))
        }
        (section("Drills", drills_table(ctx, &rows)))
        (section("Schedules", schedules_table(items(schedules))))
        (section("New drill", new_drill_form(templates, chosen, chosen_template)))
    };
    page(ctx, "Drills", Nav::Drills, body)
}

fn drills_table(ctx: &Ctx, rows: &[&Value]) -> Markup {
    if rows.is_empty() {
        return empty("No drill yet: create one below, from a template or your own spec.");
    }
    html! {
        table {
            thead { tr {
                th { "Drill" } th { "Mode" } th { "State" } th { "Verdict" } th { "Created by" } th { "Started by" }
                th.num { "Injected" } th.num { "Discovered" } th { "Time to detect p50 / max" }
                th { "Created" } th { "Started" } th {}
            } }
            tbody {
                @for d in rows {
                    @let id = d["id"].as_str().unwrap_or("");
                    @let state = d["state"].as_str().unwrap_or("—");
                    @let report = &d["report"];
                    @let mode = mode_of(d);
                    tr {
                        td {
                            a href=(format!("/ui/drills/{}", url_encode(id))) { (d["name"].as_str().or(d["spec"]["name"].as_str()).unwrap_or(id)) }
                            br; span.note.mono { (id) }
                        }
                        td { (mode_pill(mode)) }
                        td { (pill(state, state_tone(state))) }
                        td { (verdict_pill(report)) }
                        td { (text(&d["created_by"])) }
                        td { (text(&d["started_by"])) }
                        td.num { (count_of(&report["injected"])) }
                        td.num { (count_of(&report["discovered"])) }
                        td { (ttd_text(report)) }
                        td { (time_of(&d["created_at"])) }
                        td { (time_of(if d["lease"]["started_at"].is_null() { &d["started_at"] } else { &d["lease"]["started_at"] })) }
                        td { (controls(ctx, id, state, mode == Some("lossy"))) }
                    }
                }
            }
        }
    }
}

fn verdict_pill(report: &Value) -> Markup {
    match report["passed"].as_bool() {
        Some(true) => pill("passed", Tone::Good),
        Some(false) => pill("failed", Tone::Bad),
        None => html! { "—" },
    }
}

fn schedules_table(schedules: &[Value]) -> Markup {
    if schedules.is_empty() {
        return empty("No schedule: routine drills are created with POST /api/v1/drill-schedules (a cron and a lossless spec).");
    }
    html! {
        table {
            thead { tr {
                th { "Schedule" } th { "Cron (UTC)" } th.num { "Pairs" } th { "Created by" } th { "Created" }
                th { "Last firing" } th.num { "Firings kept" }
            } }
            tbody {
                @for s in schedules {
                    @let history = items(&s["history"]);
                    tr {
                        td {
                            (s["name"].as_str().unwrap_or("—"))
                            details { summary { "spec" } pre { (s["spec"].as_str().unwrap_or("")) } }
                        }
                        td { code { (s["cron"].as_str().unwrap_or("—")) } }
                        td.num { (text(&s["pairs"])) }
                        td { (text(&s["created_by"])) }
                        td { (time_of(&s["created_at"])) }
                        td {
                            @match history.last() {
                                None => span.note { "never fired yet" },
                                Some(f) => {
                                    (time_of(&f["at"])) " "
                                    @match f["decision"].as_str() {
                                        Some("start") => {
                                            (pill("started", Tone::Good))
                                            @if let Some(d) = f["drill"].as_str() {
                                                " " a href=(format!("/ui/drills/{}", url_encode(d))) { (d) }
                                            }
                                        }
                                        Some("skip") => {
                                            (pill("skipped", Tone::Warn)) " " (f["reason"].as_str().unwrap_or(""))
                                        }
                                        _ => "—",
                                    }
                                }
                            }
                        }
                        td.num { (history.len()) }
                    }
                }
            }
        }
    }
}

fn new_drill_form(
    templates: &[Template],
    chosen: Option<&str>,
    found: Option<&Template>,
) -> Markup {
    html! {
        @if let (Some(name), None) = (chosen, found) {
            p.flash.error { "No template named " code { (name) } "; pick one of the list." }
        }
        @if !templates.is_empty() {
            p {
                "Start from a template: "
                @for (i, t) in templates.iter().enumerate() {
                    @if i > 0 { " · " }
                    a href=(format!("/ui/drills?template={}", url_encode(t.name))) {
                        @if Some(t.name) == chosen { strong { (t.name) } } @else { (t.name) }
                    }
                    @if spec_is_lossy(t.spec) { " " (pill("lossy", Tone::Warn)) }
                }
            }
        }
        form.stack #new-drill method="post" action="/ui/drills" {
            label {
                "Drill spec (TOML or JSON)"
                textarea name="spec" required rows="18" spellcheck="false"
                    placeholder="name = \"bills a cent high\"\nmode = \"lossless\"\nrules = [\"payment-bill\"]\n\n[[faults]]\nkind = \"bill\"\nfield = \"amount\"\nmutation = { offset_minor = 1 }\nlimits = { hits_max = 100 }" {
                    (found.map(|t| t.spec).unwrap_or(""))
                }
            }
            label {
                "Pairs per rule (optional)"
                input type="number" name="pairs" min="1" max="10000" step="1" placeholder="default: the faults' hits_max";
            }
            div { button type="submit" { "Create drill" } }
        }
        p.note {
            "A new drill is pending until someone starts it. A lossless drill forges drill-marked records into verification only. "
            "A lossy drill tampers with real traffic through the fault-injection proxy: it needs the drill-admin role, "
            "and starting it needs a second person's approval (it waits under Approvals), as do its corrections afterwards."
        }
    }
}

// ---- one drill ------------------------------------------------------------------------

/// `GET /ui/drills/{id}`: state, spec, live figures, report, timeline and verdict.
/// `live_breaks`: the drill's breaks so far (`GET /api/v1/breaks?drill={id}`), what a
/// running drill shows before its report exists.
/// `window`: the timeline's `?window=` (its first 10 s, 1 min, … from the start), the
/// whole drill when absent or unknown.
pub fn detail(
    ctx: &Ctx,
    drill: &Value,
    report: Option<&Value>,
    live_breaks: &Value,
    window: Option<&str>,
) -> Markup {
    let id = drill["id"].as_str().unwrap_or("");
    let state = drill["state"].as_str().unwrap_or("—");
    let spec = &drill["spec"];
    let name = spec["name"].as_str().unwrap_or(id);
    let lossy = mode_of(drill) == Some("lossy");
    let report = report.filter(|r| r.is_object()).unwrap_or(&drill["report"]);
    let has_report = report.is_object();
    let live = matches!(state, "running" | "correcting");
    let body = html! {
        p { a href="/ui/drills" { "← Drills" } }
        div.stats {
            div class=(format!("stat {}", state_tone(state).class())) {
                div.value { (pill(state, state_tone(state))) }
                div.label { "state" }
            }
            (stat("mode", mode_of(drill).unwrap_or("—"), if lossy { Tone::Warn } else { Tone::Neutral }))
            @if has_report {
                (verdict_stat(report))
            }
        }
        @if live {
            p.note {
                @match ctx.refresh_secs {
                    Some(s) => { "This page refreshes itself every " (s) " s while the drill " (if state == "correcting" { "is being corrected" } else { "runs" }) "." }
                    None => "The drill is live: reload the page for the latest figures.",
                }
            }
        }
        @if let Some(e) = drill["error"].as_str() {
            p.flash.error { "Error: " (e) }
        }
        div { (controls(ctx, id, state, lossy)) }
        @if lossy && state == "pending" {
            p.note { "Starting a lossy drill asks a second person to approve it; it starts once they do." }
        }
        (section("Lifecycle", lifecycle(ctx, drill)))
        (section("Figures", figures(drill, report, live_breaks)))
        (section("Timeline", timeline(ctx, drill, report, live_breaks, window)))
        @if has_report {
            (section("Verdict", verdict(drill, report)))
            (section("Faults", outcomes_table(report)))
            @if !items(&report["false_positives"]).is_empty() {
                (section("False positives", false_positives(report)))
            }
        } @else if !matches!(state, "pending" | "running") {
            (section("Verdict", empty(&format!("No report: the drill ended ({state}) before it measured anything."))))
        }
        @if !items(&drill["hits"]).is_empty() {
            (section("Proxy hits", hits_table(drill)))
        }
        @if !items(&drill["planted"]).is_empty() {
            (section("Planted faults", planted_table(drill)))
        }
        (section("Spec", spec_summary(drill)))
        p {
            a href=(format!("/ui/audit?target={}", url_encode(&format!("drill {id}")))) { "Audit log entries of this drill" }
        }
        (raw_json("drill", drill))
    };
    page(ctx, &format!("Drill: {name}"), Nav::Drills, body)
}

fn verdict_stat(report: &Value) -> Markup {
    match report["passed"].as_bool() {
        Some(true) => stat("verdict", "passed", Tone::Good),
        Some(false) => stat("verdict", "failed", Tone::Bad),
        None => stat("verdict", "—", Tone::Neutral),
    }
}

fn lifecycle(ctx: &Ctx, d: &Value) -> Markup {
    let lease = &d["lease"];
    html! {
        table {
            tbody {
                tr { th { "Created" } td { (time_of(&d["created_at"])) " by " (text(&d["created_by"])) } }
                tr { th { "Started" } td {
                    (time_of(&lease["started_at"]))
                    @if !d["started_by"].is_null() { " by " (text(&d["started_by"])) }
                } }
                @if d["state"].as_str() == Some("running") {
                    tr { th { "Lease expires" } td {
                        (time_of(&lease["expires_at"]))
                        @if let Some(t) = int(&lease["expires_at"]) {
                            " (" (if t > ctx.now_ms { format!("in {}", fmt::duration_ms(t.saturating_sub(ctx.now_ms))) } else { "now".into() }) ")"
                        }
                    } }
                }
                tr { th { "Ended" } td { (time_of(&lease["ended_at"])) } }
                tr { th { "Lease TTL" } td { (ms_of(&lease["ttl_ms"])) } }
                @if let Some(c) = d["correction"].as_object() {
                    tr { th { "Correction" } td {
                        (c.get("state").and_then(Value::as_str).unwrap_or("—").replace('_', " "))
                        @if let Some(a) = c.get("approval").and_then(Value::as_u64) { ", approval #" (a) }
                        @if let Some(by) = c.get("approved_by").and_then(Value::as_str) { ", approved by " (by) }
                    } }
                }
            }
        }
    }
}

/// The drill's breaks so far as (key, first detection), earliest first.
fn found_so_far(live_breaks: &Value) -> Vec<(String, i64)> {
    let mut first: std::collections::BTreeMap<String, i64> = Default::default();
    for b in items(live_breaks) {
        if let (Some(k), Some(t)) = (b["key"].as_str(), int(&b["detected_at"])) {
            let e = first.entry(k.to_string()).or_insert(t);
            *e = (*e).min(t);
        }
    }
    let mut v: Vec<(String, i64)> = first.into_iter().collect();
    v.sort_by_key(|(_, t)| *t);
    v
}

fn figures(d: &Value, report: &Value, live_breaks: &Value) -> Markup {
    let hits = items(&d["hits"]);
    let planted = items(&d["planted"]).len();
    html! {
        div.stats {
            @if report.is_object() {
                (stat("injected", &count_of(&report["injected"]), Tone::Neutral))
                (stat("discovered", &count_of(&report["discovered"]), Tone::Good))
                (stat("missed", &count_of(&report["missed"]), if int(&report["missed"]).unwrap_or(0) > 0 { Tone::Bad } else { Tone::Good }))
                @if let Some(p) = int(&report["discovered_permille"]) {
                    (stat("discovery rate", &format!("{}.{} %", p / 10, p % 10), if p >= 1000 { Tone::Good } else { Tone::Bad }))
                }
                (stat("time to detect p50", &ms_of(&report["time_to_detect_ms_p50"]), Tone::Neutral))
                (stat("time to detect p99", &ms_of(&report["time_to_detect_ms_p99"]), Tone::Neutral))
                (stat("time to detect max", &ms_of(&report["time_to_detect_ms_max"]), Tone::Neutral))
                @let fp = items(&report["false_positives"]).len();
                (stat("false positives", &fp.to_string(), if fp > 0 { Tone::Bad } else { Tone::Good }))
                @if int(&report["corrected"]).unwrap_or(0) > 0 || !hits.is_empty() {
                    (stat("corrected", &count_of(&report["corrected"]), Tone::Neutral))
                    (stat("time to recover p50", &ms_of(&report["time_to_recover_ms_p50"]), Tone::Neutral))
                    (stat("time to recover max", &ms_of(&report["time_to_recover_ms_max"]), Tone::Neutral))
                }
            } @else {
                (stat("faults planted", &planted.to_string(), Tone::Neutral))
                @let found = found_so_far(live_breaks);
                @if hits.is_empty() {
                    (stat("discovered so far", &found.len().to_string(), if found.is_empty() { Tone::Neutral } else { Tone::Good }))
                    @if let (Some((_, t)), Some(start)) = (found.first(), int(&d["lease"]["started_at"])) {
                        (stat("first found after start", &fmt::duration_ms(t - start), Tone::Neutral))
                    }
                }
                @if !hits.is_empty() {
                    (stat("proxy hits", &hits.len().to_string(), Tone::Neutral))
                    @let found = hits.iter().filter(|h| !h["discovered_at_ms"].is_null()).count();
                    (stat("discovered so far", &found.to_string(), Tone::Neutral))
                }
            }
            (stat("control pairs", &count_of(&d["controls"]), Tone::Neutral))
            (stat("pairs per rule", &count_of(&d["pairs"]), Tone::Neutral))
            @if int(&d["breaks_closed"]).unwrap_or(0) > 0 {
                (stat("drill breaks closed", &count_of(&d["breaks_closed"]), Tone::Neutral))
            }
        }
        @if !report.is_object() {
            p.note { "Discoveries and times to detect are measured when injection ends; the report appears then." }
        }
    }
}

/// One fault on the timeline.
struct Fault {
    key: String,
    injected: Option<i64>,
    discovered: Option<i64>,
    corrected: Option<i64>,
    on_time: bool,
}

/// The faults with their times: the report's outcomes, or while there is none, a lossy
/// drill's hits or a lossless drill's injections.
fn faults_of(d: &Value, report: &Value) -> Vec<Fault> {
    let outcomes = items(&report["outcomes"]);
    if !outcomes.is_empty() {
        return outcomes
            .iter()
            .map(|o| Fault {
                key: o["key"].as_str().unwrap_or("").to_string(),
                injected: int(&o["injected_at_ms"]),
                discovered: int(&o["discovered_at_ms"]),
                corrected: int(&o["corrected_at_ms"]),
                on_time: o["on_time"].as_bool().unwrap_or(false),
            })
            .collect();
    }
    let hits = items(&d["hits"]);
    if !hits.is_empty() {
        return hits
            .iter()
            .map(|h| Fault {
                key: h["hit"]["key"].as_str().unwrap_or("").to_string(),
                injected: int(&h["hit"]["at_ms"]),
                discovered: int(&h["discovered_at_ms"]),
                corrected: int(&h["recovered_at_ms"]),
                on_time: !h["discovered_at_ms"].is_null(),
            })
            .collect();
    }
    items(&d["injections"])
        .iter()
        .map(|i| Fault {
            key: i["key"].as_str().unwrap_or("").to_string(),
            injected: int(&i["at_ms"]),
            discovered: None,
            corrected: int(&i["corrected_at_ms"]),
            on_time: false,
        })
        .collect()
}

/// Whether a wall-clock time (ms) is one a drill can have: 2000 to 2200.
fn plausible(ms: i64) -> bool {
    (946_684_800_000..=7_258_118_400_000).contains(&ms)
}

/// The timeline's time ranges: its first part from the drill's first event.
pub const WINDOWS: [(&str, &str, i64); 5] = [
    ("10s", "first 10 s", 10_000),
    ("1m", "first 1 min", 60_000),
    ("5m", "first 5 min", 5 * 60_000),
    ("15m", "first 15 min", 15 * 60_000),
    ("1h", "first hour", 3_600_000),
];

/// Links to the drill's page over each window shorter than the drill, and the whole.
fn window_selector(id: &str, current: Option<&str>, span_ms: i64) -> Markup {
    let base = format!("/ui/drills/{}", url_encode(id));
    html! {
        nav.ranges aria-label="time range" {
            "Time range: "
            a href=(base) class=@if current.is_none() { "active" } { "whole drill (" (fmt::duration_ms(span_ms)) ")" }
            @for (key, label, _) in WINDOWS.iter().filter(|w| w.2 < span_ms) {
                a href=(format!("{base}?window={key}")) class=@if current == Some(*key) { "active" } { (label) }
            }
        }
    }
}

fn timeline(
    ctx: &Ctx,
    d: &Value,
    report: &Value,
    live_breaks: &Value,
    window: Option<&str>,
) -> Markup {
    let lease = &d["lease"];
    let mut faults = faults_of(d, report);
    // Before the report: what the drill's breaks show so far.
    if faults.is_empty() {
        faults = found_so_far(live_breaks)
            .into_iter()
            .map(|(key, t)| Fault {
                key,
                injected: None,
                discovered: Some(t),
                corrected: None,
                on_time: true,
            })
            .collect();
    }
    let shown = &faults[..faults.len().min(TIMELINE_FAULTS_MAX)];
    // (time, lane, label, tone)
    let mut evs: Vec<(i64, &str, String, Tone)> = Vec::new();
    // Its creation only while it has not started: the wait before the start would
    // squeeze what matters into a corner.
    match int(&lease["started_at"]) {
        Some(t) => evs.push((t, "drill", "started".into(), Tone::Neutral)),
        None => {
            if let Some(t) = int(&d["created_at"]) {
                evs.push((t, "drill", "created".into(), Tone::Neutral));
            }
        }
    }
    if let Some(t) = int(&lease["ended_at"]) {
        let state = d["state"].as_str().unwrap_or("ended");
        evs.push((t, "drill", state.to_string(), state_tone(state)));
    }
    let mut links: Vec<(i64, i64, String)> = Vec::new();
    for f in shown {
        if let Some(t) = f.injected {
            evs.push((t, "injected", f.key.clone(), Tone::Neutral));
        }
        if let Some(t) = f.discovered {
            evs.push((
                t,
                "discovered",
                f.key.clone(),
                if f.on_time { Tone::Good } else { Tone::Warn },
            ));
            if let Some(i) = f.injected {
                links.push((
                    i,
                    t,
                    format!("TTD {}", fmt::duration_ms(t.saturating_sub(i))),
                ));
            }
        }
        if let Some(t) = f.corrected {
            evs.push((t, "corrected", f.key.clone(), Tone::Good));
        }
    }
    for o in items(&report["false_positives"])
        .iter()
        .take(TIMELINE_FAULTS_MAX)
    {
        if let Some(t) = int(&o["detected_at_ms"]) {
            evs.push((
                t,
                "false positives",
                format!(
                    "{} {}",
                    o["rule"].as_str().unwrap_or(""),
                    o["key"].as_str().unwrap_or("")
                ),
                Tone::Bad,
            ));
        }
    }
    let mut lanes: Vec<&str> = vec!["drill", "injected", "discovered"];
    for extra in ["corrected", "false positives"] {
        if evs.iter().any(|e| e.1 == extra) {
            lanes.push(extra);
        }
    }
    let live = matches!(d["state"].as_str(), Some("running" | "correcting"));
    if live {
        evs.push((ctx.now_ms, "drill", "now".into(), Tone::Neutral));
    }
    // A time no drill can have (a corrupt record) would stretch the axis over millennia.
    evs.retain(|e| plausible(e.0));
    links.retain(|l| plausible(l.0) && plausible(l.1));
    let first = evs.iter().map(|e| e.0).min();
    let last = evs.iter().map(|e| e.0).max();
    let span_ms = match (first, last) {
        (Some(a), Some(b)) => b.saturating_sub(a),
        _ => 0,
    };
    // A window the drill outlasts; any other (or none) shows the whole drill.
    let window = WINDOWS
        .iter()
        .find(|w| Some(w.0) == window && w.2 < span_ms);
    let (from, to) = match (first, last) {
        (Some(a), Some(b)) => {
            let b = match window {
                Some(w) => a.saturating_add(w.2),
                None => b,
            };
            let pad = (b.saturating_sub(a) / 20).max(500);
            (a.saturating_sub(pad), b.saturating_add(pad))
        }
        _ => (ctx.now_ms - 60_000, ctx.now_ms),
    };
    let events: Vec<TimelineEvent> = evs
        .iter()
        .map(|(t, lane, label, tone)| TimelineEvent {
            at_ms: *t,
            lane,
            label,
            tone: *tone,
        })
        .collect();
    let tl_links: Vec<TimelineLink> = links
        .iter()
        .map(|(a, b, label)| TimelineLink {
            from_ms: *a,
            to_ms: *b,
            from_lane: "injected",
            to_lane: "discovered",
            label,
        })
        .collect();
    let why = match d["state"].as_str() {
        Some("pending") => "Nothing yet: the drill has not started.",
        _ => "No fault was injected, so there is nothing to place on the timeline.",
    };
    let id = d["id"].as_str().unwrap_or("");
    html! {
        @if first.is_some() {
            (window_selector(id, window.map(|w| w.0), span_ms))
        }
        (chart::timeline("Drill timeline", from, to, &lanes, &events, &tl_links, why))
        @if faults.len() > shown.len() {
            p.note { "The first " (shown.len()) " of " (faults.len()) " faults are drawn." }
        }
        p.note { "Each line joins a fault's injection to its discovery, labelled with the time to detect." }
    }
}

fn verdict(d: &Value, report: &Value) -> Markup {
    let mut why: Vec<String> = Vec::new();
    let injected = int(&report["injected"]).unwrap_or(0);
    let missed = int(&report["missed"]).unwrap_or(0);
    let late = items(&report["outcomes"])
        .iter()
        .filter(|o| !o["discovered_at_ms"].is_null() && o["on_time"].as_bool() == Some(false))
        .count();
    let fps = items(&report["false_positives"]).len();
    let within = int(&d["spec"]["expect"]["within_ms"]);
    if injected == 0 {
        why.push(if d["spec"]["dry_run"].as_bool() == Some(true) {
            "this was a dry run: nothing was injected (the planted faults below are what would have been)".into()
        } else {
            "nothing was injected".into()
        });
    }
    if missed > 0 {
        why.push(format!(
            "{missed} of {injected} fault(s) were not discovered"
        ));
    }
    if late > 0 {
        why.push(format!(
            "{late} fault(s) were discovered later than expected{}",
            within
                .map(|w| format!(" (within {})", fmt::duration_ms(w)))
                .unwrap_or_default()
        ));
    }
    if fps > 0 {
        why.push(format!(
            "{fps} break(s) were raised on keys the drill did not tamper with (false positives)"
        ));
    }
    html! {
        @match report["passed"].as_bool() {
            Some(true) => p { (pill("passed", Tone::Good)) " Every fault was discovered"
                (within.map(|w| format!(" within {}", fmt::duration_ms(w))).unwrap_or_default())
                " and no false positive was raised." },
            Some(false) => {
                p { (pill("failed", Tone::Bad)) " The drill failed:" }
                ul { @for w in &why { li { (w) } } }
                @if why.is_empty() { p.note { "The report does not say why." } }
            }
            None => (empty("The report carries no verdict.")),
        }
    }
}

fn outcomes_table(report: &Value) -> Markup {
    let outcomes = items(&report["outcomes"]);
    if outcomes.is_empty() {
        return empty("No fault was injected.");
    }
    // The ones that matter first: missed, then late, then the rest.
    let mut rows: Vec<&Value> = outcomes.iter().collect();
    rows.sort_by_key(|o| {
        (
            !o["discovered_at_ms"].is_null(),
            o["on_time"].as_bool().unwrap_or(false),
        )
    });
    // A passed drill's faults are all alike: folded, with what went wrong open.
    let all_fine = rows.iter().all(|o| o["on_time"].as_bool() == Some(true));
    html! {
        details open[!all_fine] {
        summary { (rows.len()) " fault(s)" @if all_fine { ", every one found on time" } @else { ": missed and late ones first" } }
        table {
            thead { tr {
                th { "Key" } th { "Injected" } th { "Discovered" } th.num { "Time to detect" } th { "Corrected" } th { "On time" }
            } }
            tbody {
                @for o in rows.iter().take(ROWS_MAX) {
                    tr {
                        td.mono { (text(&o["key"])) }
                        td { (time_of(&o["injected_at_ms"])) }
                        td { (time_of(&o["discovered_at_ms"])) }
                        td.num { (ms_of(&o["time_to_detect_ms"])) }
                        td { (time_of(&o["corrected_at_ms"])) }
                        td { @match (o["on_time"].as_bool(), o["discovered_at_ms"].is_null()) {
                            (Some(true), _) => (pill("on time", Tone::Good)),
                            (_, true) => (pill("missed", Tone::Bad)),
                            _ => (pill("late", Tone::Warn)),
                        } }
                    }
                }
            }
        }
        @if rows.len() > ROWS_MAX {
            p.note { (rows.len() - ROWS_MAX) " more fault(s) not listed (missed and late ones are listed first)." }
        }
        }
    }
}

fn false_positives(report: &Value) -> Markup {
    let fps = items(&report["false_positives"]);
    html! {
        table {
            thead { tr { th { "Rule" } th { "Key" } th { "Kind" } th { "Detected" } } }
            tbody {
                @for o in fps.iter().take(ROWS_MAX) {
                    tr {
                        td { (text(&o["rule"])) }
                        td.mono { (text(&o["key"])) }
                        td { (text(&o["kind"])) }
                        td { (time_of(&o["detected_at_ms"])) }
                    }
                }
            }
        }
        @if fps.len() > ROWS_MAX { p.note { (fps.len() - ROWS_MAX) " more not listed." } }
    }
}

fn hits_table(d: &Value) -> Markup {
    let hits = items(&d["hits"]);
    html! {
        table {
            thead { tr {
                th { "Key" } th { "Proxy" } th { "Route" } th { "Change" } th { "Hit" } th { "Discovered" }
                th { "Correction" } th { "Recovered" } th { "Note" }
            } }
            tbody {
                @for h in hits.iter().take(ROWS_MAX) {
                    @let hit = &h["hit"];
                    @let fix = h["state"].as_str().unwrap_or("—");
                    tr {
                        td.mono { (text(&hit["key"])) }
                        td { (text(&hit["proxy"])) }
                        td.mono { (text(&hit["route"])) }
                        td {
                            @if let Some(f) = hit["field"].as_str() { code { (f) } ": " }
                            (short(&hit["original"])) " → " (short(&hit["tampered"]))
                            @if hit["dry_run"].as_bool() == Some(true) { " " (pill("dry run", Tone::Neutral)) }
                        }
                        td { (time_of(&hit["at_ms"])) }
                        td { (time_of(&h["discovered_at_ms"])) }
                        td { (pill(&fix.replace('_', " "), match fix {
                            "recovered" | "untouched" => Tone::Good,
                            "needs_person" => Tone::Bad,
                            "handed_over" => Tone::Neutral,
                            _ => Tone::Warn,
                        })) }
                        td { (time_of(&h["recovered_at_ms"])) }
                        td { (h["note"].as_str().unwrap_or("")) }
                    }
                }
            }
        }
        @if hits.len() > ROWS_MAX { p.note { (hits.len() - ROWS_MAX) " more hit(s) not listed." } }
    }
}

/// A JSON value in a cell: strings bare, the rest compact, long ones cut.
fn short(v: &Value) -> String {
    let t = match v {
        Value::Null => "—".to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    if t.chars().count() > 60 {
        format!("{}…", t.chars().take(60).collect::<String>())
    } else {
        t
    }
}

fn planted_table(d: &Value) -> Markup {
    let planted = items(&d["planted"]);
    html! {
        details {
            summary { (planted.len()) " fault(s) planted on forged pairs" }
            table {
                thead { tr { th { "Rule" } th { "Key" } th.num { "Fault" } th { "Change" } } }
                tbody {
                    @for p in planted.iter().take(ROWS_MAX) {
                        tr {
                            td { (text(&p["rule"])) }
                            td.mono { (text(&p["key"])) }
                            td.num { (text(&p["hit"]["fault"])) }
                            td {
                                @if let Some(f) = p["hit"]["field"].as_str() { code { (f) } ": " }
                                (short(&p["hit"]["original"])) " → " (short(&p["hit"]["tampered"]))
                            }
                        }
                    }
                }
            }
            @if planted.len() > ROWS_MAX { p.note { (planted.len() - ROWS_MAX) " more not listed." } }
        }
    }
}

/// A mutation as the spec writes it: `offset_minor 1`, `duplicate`, `latency ms=100`.
fn mutation_text(m: &Value) -> String {
    match m {
        Value::String(s) => s.replace('_', " "),
        Value::Object(o) => o
            .iter()
            .map(|(k, v)| {
                let arg = match v {
                    Value::Object(args) => args
                        .iter()
                        .map(|(a, x)| format!("{a}={}", short(x)))
                        .collect::<Vec<_>>()
                        .join(", "),
                    other => short(other),
                };
                format!("{} {arg}", k.replace('_', " "))
            })
            .collect::<Vec<_>>()
            .join("; "),
        Value::Null => "—".into(),
        other => other.to_string(),
    }
}

/// A fault's business filter in words.
fn filter_text(filter: &Value) -> String {
    let mut parts: Vec<String> = Vec::new();
    if let Some(k) = filter["keys_matching"].as_str() {
        parts.push(format!("keys {k}"));
    }
    match filter["vip"].as_str() {
        Some("only") => parts.push("VIP users only".into()),
        Some("never") => parts.push("never VIP users".into()),
        _ => {}
    }
    if filter["test_accounts_only"].as_bool() == Some(true) {
        parts.push("test accounts only".into());
    }
    if parts.is_empty() {
        "any".into()
    } else {
        parts.join(", ")
    }
}

fn spec_summary(d: &Value) -> Markup {
    let spec = &d["spec"];
    let list = |v: &Value| -> String {
        let names: Vec<&str> = items(v).iter().filter_map(Value::as_str).collect();
        if names.is_empty() {
            "—".into()
        } else {
            names.join(", ")
        }
    };
    let target = match spec["link"].as_str() {
        Some(link) => format!("fund link {link}"),
        None => format!("rules {}", list(&spec["rules"])),
    };
    let guards = &spec["guards"];
    let correction = &spec["correction"];
    html! {
        table {
            tbody {
                tr { th { "Name" } td { (text(&spec["name"])) } }
                tr { th { "Mode" } td { (mode_pill(mode_of(d)))
                    @if spec["dry_run"].as_bool() == Some(true) { " " (pill("dry run", Tone::Neutral)) } } }
                tr { th { "Target" } td { (target) } }
                tr { th { "TTL" } td { (int(&spec["ttl_secs"]).map(|s| fmt::duration_ms(s.saturating_mul(1000))).unwrap_or_else(|| "—".into())) } }
                tr { th { "Expected" } td {
                    "breaks of " (if items(&spec["expect"]["rules"]).is_empty() { "the target rules".to_string() } else { list(&spec["expect"]["rules"]) })
                    (int(&spec["expect"]["within_ms"]).map(|w| format!(", each within {}", fmt::duration_ms(w))).unwrap_or_default())
                } }
                tr { th { "Guards" } td {
                    @let rb = int(&guards["real_breaks_max"]);
                    @let er = int(&guards["error_rate_percent_max"]);
                    @if rb.is_none() && er.is_none() { "none" }
                    @match rb {
                        Some(0) => "no real break while it runs",
                        Some(n) => { "at most " (n) " real break(s) while it runs" }
                        None => {}
                    }
                    @if rb.is_some() && er.is_some() { "; " }
                    @if let Some(p) = er { "target error rate at most " (p) " %" }
                } }
                @if mode_of(d) == Some("lossy") {
                    tr { th { "Correction" } td {
                        @if let Some(t) = correction["target"].as_str() { "through " code { (t) } }
                        @if correction["manual"].as_bool() == Some(true) { "by a person (manual)" }
                        @if correction["target"].is_null() && correction["manual"].as_bool() != Some(true) { "—" }
                    } }
                }
            }
        }
        h3 { "Faults" }
        table {
            thead { tr { th { "Kind" } th { "Field" } th { "Mutation" } th { "Filter" } th.num { "Hits max" } th.num { "% max" } } }
            tbody {
                @for f in items(&spec["faults"]) {
                    tr {
                        td { (text(&f["kind"])) }
                        td { code { (text(&f["field"])) } }
                        td { (mutation_text(&f["mutation"])) }
                        td { (filter_text(&f["filter"])) }
                        td.num { (text(&f["limits"]["hits_max"])) }
                        td.num { (text(&f["limits"]["percent_max"])) }
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

    fn ctx() -> Ctx {
        Ctx {
            subject: "alice".into(),
            role: "drill-admin".into(),
            killswitch: json!({"engaged": false}),
            now_ms: NOW,
            ..Default::default()
        }
    }

    fn report() -> Value {
        json!({
            "injected": 3, "discovered": 2, "missed": 1, "discovered_permille": 666,
            "time_to_detect_ms_p50": 1200, "time_to_detect_ms_p99": 7000, "time_to_detect_ms_max": 7000,
            "false_positives": [{"rule": "payment-bill", "key": "DRILL-ctl-1", "kind": "amount_mismatch", "detected_at_ms": NOW - 50_000}],
            "corrected": 0, "time_to_recover_ms_p50": null, "time_to_recover_ms_max": null,
            "passed": false,
            "outcomes": [
                {"key": "DRILL-a", "injected_at_ms": NOW - 60_000, "discovered_at_ms": NOW - 58_800, "time_to_detect_ms": 1200, "corrected_at_ms": null, "on_time": true},
                {"key": "DRILL-b", "injected_at_ms": NOW - 60_000, "discovered_at_ms": NOW - 53_000, "time_to_detect_ms": 7000, "corrected_at_ms": null, "on_time": false},
                {"key": "DRILL-<c>", "injected_at_ms": NOW - 60_000, "discovered_at_ms": null, "time_to_detect_ms": null, "corrected_at_ms": null, "on_time": false}
            ]
        })
    }

    /// A drill as `GET /api/v1/drills/{id}` answers it (`Drill::view`).
    fn drill(state: &str, lease_state: Value, report: Value) -> Value {
        json!({
            "id": "drill-AbC123", "state": state,
            "spec": {"name": "bills a cent <high>", "mode": "lossless", "rules": ["payment-bill"], "link": null,
                "faults": [{"kind": "bill", "field": "amount", "mutation": {"offset_minor": 1},
                    "filter": {"keys_matching": null, "vip": "never", "test_accounts_only": false},
                    "limits": {"hits_max": 100, "percent_max": 100}}],
                "ttl_secs": 300, "dry_run": false, "expect": {"rules": ["payment-bill"], "within_ms": 6000},
                "guards": {"real_breaks_max": 0, "error_rate_percent_max": null},
                "correction": {"target": null, "manual": false}},
            "pairs": 100,
            "lease": {"ttl_ms": 300_000, "state": lease_state, "started_at": NOW - 61_000, "expires_at": NOW + 239_000, "ended_at": if state == "running" { Value::Null } else { json!(NOW - 40_000) }},
            "created_by": "alice", "created_at": NOW - 120_000,
            "planted": [{"rule": "payment-bill", "key": "DRILL-a", "hit": {"fault": 0, "key": "DRILL-a", "record_id": "r1", "field": "amount", "original": "12.34", "tampered": "12.35", "at_ms": NOW - 60_000}}],
            "controls": 97, "injections": [{"key": "DRILL-a", "at_ms": NOW - 60_000, "corrected_at_ms": null}],
            "report": report, "error": null, "breaks_closed": 3, "started_by": "bob", "hits": [], "correction": null
        })
    }

    fn list_item(id: &str, state: &str, created_at: i64, report: Value) -> Value {
        json!({"id": id, "state": state, "created_at": created_at, "created_by": "alice", "name": format!("drill {id}"), "report": report})
    }

    #[test]
    fn the_list_offers_start_only_when_pending_and_stop_only_when_running() {
        let drills = json!([
            list_item("drill-old", "completed", NOW - 900_000, report()),
            list_item("drill-run", "running", NOW - 60_000, Value::Null),
            list_item("drill-new", "pending", NOW - 1_000, Value::Null),
        ]);
        let html = list(&ctx(), &drills, &json!([]), &[], None).into_string();
        assert!(
            html.contains(r#"action="/ui/drills/drill-new/start""#),
            "{html}"
        );
        assert!(html.contains(r#"action="/ui/drills/drill-run/stop""#));
        assert!(!html.contains("/ui/drills/drill-new/stop"));
        assert!(!html.contains("/ui/drills/drill-run/start"));
        assert!(!html.contains("/ui/drills/drill-old/st"));
        // Newest first.
        let (new, run, old) = (
            html.find("drill drill-new").unwrap(),
            html.find("drill drill-run").unwrap(),
            html.find("drill drill-old").unwrap(),
        );
        assert!(new < run && run < old);
        assert!(html.contains(r#"href="/ui/drills/drill-old""#));
        // The report's figures: injected, discovered, time to detect.
        assert!(html.contains("1.2 s / 7.0 s"), "{html}");
        assert!(html.contains(r#"<span class="pill bad">failed</span>"#));
        assert!(html.contains("No schedule"));
    }

    #[test]
    fn under_the_kill_switch_start_is_disabled() {
        let mut c = ctx();
        c.killswitch = json!({"engaged": true});
        let drills = json!([list_item("drill-new", "pending", NOW, Value::Null)]);
        let html = list(&c, &drills, &json!([]), &[], None).into_string();
        assert!(html.contains("disabled"), "{html}");
        assert!(html.contains("none may start"));
    }

    #[test]
    fn templates_prefill_the_form_and_say_which_are_lossy() {
        let templates = [
            Template {
                name: "drill-pay-to-bill",
                spec: "name = \"bills a cent high\"\nmode = \"lossless\"\n",
            },
            Template {
                name: "drill lossy bills",
                spec: "name = \"in <flight>\"\nmode = \"lossy\"\n",
            },
        ];
        let html = list(
            &ctx(),
            &json!([]),
            &json!([]),
            &templates,
            Some("drill lossy bills"),
        )
        .into_string();
        assert!(
            html.contains(r#"href="/ui/drills?template=drill%20lossy%20bills""#),
            "{html}"
        );
        assert!(html
            .contains(r#"<form class="stack" id="new-drill" method="post" action="/ui/drills">"#));
        assert!(html.contains(r#"name="spec""#) && html.contains(r#"name="pairs""#));
        // The chosen template's text is in the textarea, escaped.
        assert!(html.contains("in &lt;flight&gt;"));
        assert!(!html.contains("in <flight>"));
        assert!(html.contains("second person"));
        assert!(html.contains(r#"<span class="pill warn">lossy</span>"#));
        assert!(html.contains("No drill yet"));

        let unknown = list(&ctx(), &json!([]), &json!([]), &templates, Some("nope")).into_string();
        assert!(unknown.contains("No template named"));
    }

    #[test]
    fn schedules_show_their_last_firing() {
        let schedules = json!([{
            "id": "schedule-1", "name": "nightly", "cron": "0 0 2 * * *", "spec": "name = \"x\"", "pairs": null,
            "created_by": "alice", "created_at": NOW - 86_400_000, "checked_to": NOW,
            "history": [
                {"at": NOW - 86_400_000, "decision": "start", "drill": "drill-n1"},
                {"at": NOW - 3_600_000, "decision": "skip", "reason": "blackout: month-end <close>", "drill": null}
            ]
        }]);
        let html = list(&ctx(), &json!([]), &schedules, &[], None).into_string();
        assert!(html.contains("nightly"));
        assert!(html.contains("0 0 2 * * *"));
        assert!(html.contains("skipped"));
        assert!(html.contains("month-end &lt;close&gt;"), "{html}");
    }

    #[test]
    fn a_running_drill_has_stop_and_says_it_refreshes() {
        let mut c = ctx();
        c.refresh_secs = Some(2);
        let d = drill("running", json!("running"), Value::Null);
        let html = detail(&c, &d, None, &Value::Null, None).into_string();
        assert!(
            html.contains(r#"action="/ui/drills/drill-AbC123/stop""#),
            "{html}"
        );
        assert!(!html.contains("/start\""));
        assert!(html.contains("refreshes itself every 2 s"));
        assert!(
            html.contains(r#"<figure class="chart"#),
            "the timeline is drawn"
        );
        assert!(html.contains("Discoveries and times to detect are measured when injection ends"));
        assert!(html.contains("bills a cent &lt;high&gt;"));
        assert!(html.contains("offset minor 1"));
        assert!(html.contains("never VIP users"));
    }

    #[test]
    fn a_running_drill_shows_what_its_breaks_have_found_so_far() {
        let mut d = drill("running", json!("running"), Value::Null);
        d["lease"]["ended_at"] = Value::Null;
        let started = d["lease"]["started_at"]
            .as_i64()
            .unwrap_or(1_764_770_000_000);
        d["lease"]["started_at"] = json!(started);
        let breaks = json!([
            {"key": "k-1", "detected_at": started + 1_500},
            {"key": "k-1", "detected_at": started + 1_700},
            {"key": "k-2", "detected_at": started + 2_000}]);
        let html = detail(&ctx(), &d, None, &breaks, None).into_string();
        let found = html.find("discovered so far").expect("the live figure");
        assert!(html[..found].rfind(">2<").is_some(), "two keys found");
        assert!(html.contains("1.5 s"), "first found 1.5 s after the start");
        assert!(
            html.contains(r#"<details><summary>"#) || !html.contains("<details open"),
            "planted faults folded"
        );
    }

    #[test]
    fn a_pending_drill_has_start_only() {
        let mut d = drill("pending", json!("pending"), Value::Null);
        d["lease"]["started_at"] = Value::Null;
        d["lease"]["ended_at"] = Value::Null;
        d["injections"] = json!([]);
        let html = detail(&ctx(), &d, None, &Value::Null, None).into_string();
        assert!(html.contains(r#"action="/ui/drills/drill-AbC123/start""#));
        assert!(!html.contains("/stop\""));
        assert!(!html.contains("refreshes itself"));
    }

    /// The timeline's figure in a drill page.
    fn timeline_figure(html: &str) -> &str {
        let at = html.find(r#"<figure class="chart"#).expect("a chart");
        let end = at + html[at..].find("</figure>").expect("its end");
        &html[at..end]
    }

    #[test]
    fn the_timeline_can_show_the_first_part_of_a_long_drill() {
        // 21 s from the start to the end; a false positive 11 s in.
        let d = drill("completed", json!({"ended": "completed"}), report());
        let r = report();
        let whole = detail(&ctx(), &d, Some(&r), &Value::Null, None).into_string();
        assert!(
            whole.contains(r#"href="/ui/drills/drill-AbC123?window=10s""#),
            "{whole}"
        );
        assert!(
            !whole.contains("window=1m"),
            "a window the drill does not outlast is not offered"
        );
        assert!(
            whole.contains(r#"class="active">whole drill (21.0 s)"#),
            "{whole}"
        );
        assert!(timeline_figure(&whole).contains("DRILL-ctl-1"));

        let first = detail(&ctx(), &d, Some(&r), &Value::Null, Some("10s")).into_string();
        assert!(first.contains(r#"class="active">first 10 s"#), "{first}");
        let fig = timeline_figure(&first);
        assert!(fig.contains("DRILL-b"), "inside the first 10 s");
        assert!(
            !fig.contains("DRILL-ctl-1"),
            "the false positive came later"
        );

        // An unknown window is the whole drill.
        let odd = detail(&ctx(), &d, Some(&r), &Value::Null, Some("<x>")).into_string();
        assert_eq!(timeline_figure(&odd), timeline_figure(&whole));
    }

    #[test]
    fn an_ended_drill_shows_its_verdict_timeline_and_audit_link() {
        let d = drill("completed", json!({"ended": "completed"}), report());
        let r = report();
        let html = detail(&ctx(), &d, Some(&r), &Value::Null, None).into_string();
        assert!(!html.contains("/stop\"") && !html.contains("/start\""));
        assert!(html.contains(r#"<figure class="chart"#));
        assert!(html.contains("Drill timeline"));
        assert!(html.contains("The drill failed:"), "{html}");
        assert!(html.contains("1 of 3 fault(s) were not discovered"));
        assert!(html.contains("later than expected (within 6.0 s)"));
        assert!(html.contains("false positives"));
        assert!(html.contains("DRILL-&lt;c&gt;"));
        assert!(html.contains(r#"href="/ui/audit?target=drill%20drill-AbC123""#));
        assert!(html.contains("66.6 %"));
        assert!(html.contains("<details class=\"raw\">"));
        // Missed faults are listed first.
        let missed = html.find("DRILL-&lt;c&gt;").unwrap();
        let ok = html.find("<td class=\"mono\">DRILL-a</td>").unwrap();
        assert!(missed < ok);
    }

    #[test]
    fn a_passed_drill_says_so() {
        let mut r = report();
        r["passed"] = json!(true);
        r["missed"] = json!(0);
        r["false_positives"] = json!([]);
        let d = drill("completed", json!({"ended": "completed"}), r.clone());
        let html = detail(&ctx(), &d, Some(&r), &Value::Null, None).into_string();
        assert!(
            html.contains("Every fault was discovered within 6.0 s"),
            "{html}"
        );
    }

    #[test]
    fn a_lossy_drill_shows_its_hits_and_correction() {
        let mut d = drill("correcting", json!({"ended": "completed"}), Value::Null);
        d["spec"]["mode"] = json!("lossy");
        d["spec"]["correction"] = json!({"target": "billing", "manual": false});
        d["correction"] =
            json!({"state": "awaiting_approval", "approval": 12, "approved_by": null});
        d["hits"] = json!([{
            "hit": {"id": "p1-drill-AbC123-1", "drill": "drill-AbC123", "proxy": "p1", "route": "/bills", "side": "request", "dry_run": false,
                    "fault": 0, "key": "ORD-9", "record_id": "b-9", "field": "amount", "original": "10.00", "tampered": "10.01", "at_ms": NOW - 30_000},
            "discovered_at_ms": NOW - 27_000, "state": "pending", "booked_at_ms": null, "recovered_at_ms": null, "note": null
        }]);
        let html = detail(&ctx(), &d, None, &Value::Null, None).into_string();
        assert!(html.contains("Proxy hits"));
        assert!(html.contains("10.00 → 10.01"), "{html}");
        assert!(html.contains("awaiting approval, approval #12"));
        assert!(html.contains("discovered so far"));
        assert!(html.contains("TTD 3.0 s") || html.contains(r#"<figure class="chart"#));
    }

    #[test]
    fn unexpected_json_never_panics() {
        let weird = [
            json!(null),
            json!([1, "x", null]),
            json!({"id": 5, "state": 7, "spec": "toml", "lease": {"started_at": i64::MIN, "ended_at": i64::MAX},
                   "report": {"outcomes": [null, {"injected_at_ms": i64::MIN, "discovered_at_ms": i64::MAX}], "passed": "yes"},
                   "hits": [1], "planted": {}, "correction": {"state": 3}}),
        ];
        for w in &weird {
            let html = list(&ctx(), w, w, &[], None).into_string();
            assert!(html.contains("New drill"));
            let html = detail(&ctx(), w, Some(w), &Value::Null, None).into_string();
            assert!(html.contains("Drill"), "{html}");
        }
        let html = list(
            &ctx(),
            &json!([{"id": "d", "state": "pending"}]),
            &json!(null),
            &[],
            None,
        )
        .into_string();
        assert!(html.contains("—"), "missing fields read as a dash");
    }

    #[test]
    fn a_drill_that_ended_without_a_report_says_why() {
        let mut d = drill("killed", json!({"ended": "kill_switch"}), Value::Null);
        d["injections"] = json!([]);
        d["error"] = json!("the kill switch <was> pulled");
        let html = detail(&ctx(), &d, None, &Value::Null, None).into_string();
        assert!(
            html.contains("No report: the drill ended (killed)"),
            "{html}"
        );
        assert!(html.contains("the kill switch &lt;was&gt; pulled"));
    }
}
