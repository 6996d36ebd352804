//! The overview: each fund link's and service's health at a glance, open breaks by rule,
//! firing incidents, running and recent drills, ingest rates and the data chain.

use std::collections::BTreeMap;

use maud::{html, Markup};
use serde_json::Value;

use crate::chart;
use crate::fmt::{self, enc};
use crate::layout::{
    empty, page, pill, range_selector, section, stat, text, Ctx, Nav, Range, Tone,
};

/// The API answers the overview is made of (each `null` when the caller may not read it
/// or the call failed; the page then says so).
pub struct Data {
    /// `GET /api/v1/status`
    pub status: Value,
    /// `GET /api/v1/rules`
    pub rules: Value,
    /// `GET /api/v1/incidents?state=firing`
    pub incidents: Value,
    /// `GET /api/v1/drills`
    pub drills: Value,
    /// `GET /api/v1/service-map` over `range`
    pub service_map: Value,
    /// The services' time range (`?range=`, 15 minutes unless chosen).
    pub range: Range,
}

/// Drills listed as recent.
const RECENT_DRILLS: usize = 5;

pub fn render(ctx: &Ctx, d: &Data) -> Markup {
    let unresolved: BTreeMap<String, u64> = d.status["unresolved_by_rule"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default();
    let firing: Vec<&Value> = d
        .incidents
        .as_array()
        .map(|a| a.iter().filter(|i| i["state"] == "firing").collect())
        .unwrap_or_default();
    let drills = d.drills.as_array().cloned().unwrap_or_default();
    let running = drills
        .iter()
        .filter(|x| matches!(x["state"].as_str(), Some("running" | "correcting")))
        .count();
    let body = html! {
        (figures(d, &firing, running))
        div.grid {
            (links(d, &unresolved))
            (services(d))
        }
        // Full width: a chart's text scales with its box.
        (section("Unresolved breaks by rule", breaks_by_rule(d, &unresolved)))
        div.grid {
            (section("Firing incidents", incidents(ctx, &firing)))
            (section("Drills", drill_table(ctx, &drills)))
        }
    };
    page(ctx, "Overview", Nav::Overview, body)
}

fn figures(d: &Data, firing: &[&Value], running_drills: usize) -> Markup {
    let s = &d.status;
    let open = s["breaks"]["open"].as_u64().unwrap_or(0);
    let acked = s["breaks"]["acknowledged"].as_u64().unwrap_or(0);
    let p99 = s["detection_latency_ms"]["p99"].as_u64();
    let rate = |v: &Value| {
        v.as_f64()
            .map(|r| format!("{:.0}/s", r))
            .unwrap_or_else(|| "—".into())
    };
    html! {
        @if s.is_null() {
            (empty("The engine's status could not be read with this sign-in."))
        }
        div.stats {
            (stat("fund records in", &rate(&s["records_per_sec"]), Tone::Neutral))
            (stat("telemetry rows in", &rate(&s["chain_rows_per_sec"]), Tone::Neutral))
            (stat("open breaks", &fmt::count(open), if open > 0 { Tone::Bad } else { Tone::Good }))
            (stat("acknowledged", &fmt::count(acked), if acked > 0 { Tone::Warn } else { Tone::Good }))
            (stat("detection p99", &p99.map(|p| format!("{p} ms")).unwrap_or_else(|| "—".into()),
                if p99.unwrap_or(0) > 1000 { Tone::Bad } else { Tone::Good }))
            (stat("firing incidents", &firing.len().to_string(), if firing.is_empty() { Tone::Good } else { Tone::Bad }))
            (stat("running drills", &running_drills.to_string(), Tone::Neutral))
            (stat("records verified", &fmt::count(s["records_seen"].as_u64().unwrap_or(0)), Tone::Neutral))
        }
    }
}

/// Each fund link: its chain, its rules and whether any of them has unresolved breaks.
fn links(d: &Data, unresolved: &BTreeMap<String, u64>) -> Markup {
    let links = d.rules["links"].as_array().cloned().unwrap_or_default();
    let rules = d.rules["rules"].as_array().cloned().unwrap_or_default();
    html! {
        section {
            h2 { "Fund links" }
            @if links.is_empty() {
                (empty("No fund link is defined in the rule file (or this sign-in may not read the rules)."))
            } @else {
                table {
                    thead { tr { th { "Link" } th { "Chain" } th.num { "Rules" } th.num { "Unresolved" } th { "Health" } } }
                    tbody {
                        @for l in &links {
                            @let name = l["name"].as_str().unwrap_or("");
                            @let of_link: Vec<&str> = rules.iter()
                                .filter(|r| r["link"].as_str() == Some(name))
                                .filter_map(|r| r["name"].as_str()).collect();
                            @let n: u64 = of_link.iter().map(|r| unresolved.get(*r).copied().unwrap_or(0)).sum();
                            tr {
                                td { a href=(format!("/ui/breaks?link={}", enc(name))) { (name) } }
                                td.mono { (chain_text(&l["chain"])) }
                                td.num { (of_link.len()) }
                                td.num { (fmt::count(n)) }
                                td { @if n == 0 { (pill("agrees", Tone::Good)) } @else { (pill("breaks", Tone::Bad)) } }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn chain_text(v: &Value) -> String {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(" → ")
        })
        .unwrap_or_default()
}

/// Each service seen calling or being called recently, by its error rate.
fn services(d: &Data) -> Markup {
    let edges = d.service_map["edges"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    // Per callee: calls and errors; callers with no callers still appear.
    let mut by: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for e in &edges {
        if let Some(c) = e["caller"].as_str() {
            by.entry(c.to_string()).or_default();
        }
        if let Some(c) = e["callee"].as_str() {
            let x = by.entry(c.to_string()).or_default();
            x.0 += e["calls"].as_u64().unwrap_or(0);
            x.1 += e["errors"].as_u64().unwrap_or(0);
        }
    }
    html! {
        section {
            h2 { "Services (last " (d.range.label()) ")" }
            (range_selector(&d.range, "/ui/"))
            @if by.is_empty() {
                (empty(&format!("No traces in the last {}: the data chain has seen no calls between services in that time.", d.range.label())))
            } @else {
                table {
                    thead { tr { th { "Service" } th.num { "Calls in" } th.num { "Errors" } th { "Health" } } }
                    tbody {
                        @for (name, (calls, errors)) in &by {
                            @let tone = error_tone(*calls, *errors);
                            tr {
                                td { a href=(format!("/ui/services/{}", enc(name))) { (name) } }
                                td.num { (fmt::count(*calls)) }
                                td.num { (fmt::count(*errors)) }
                                td { (pill(match tone { Tone::Good => "healthy", Tone::Warn => "degraded", _ => "failing" }, tone)) }
                            }
                        }
                    }
                }
                p.note { "Healthy: under 1 % errors; degraded: 1–5 %; failing: over 5 %. " a href="/ui/services" { "Service map →" } }
            }
        }
    }
}

/// Health by error share: the thresholds the service map uses too.
pub fn error_tone(calls: u64, errors: u64) -> Tone {
    if calls == 0 {
        return Tone::Good;
    }
    let per_mille = errors * 1000 / calls;
    match per_mille {
        0..=9 => Tone::Good,
        10..=50 => Tone::Warn,
        _ => Tone::Bad,
    }
}

fn breaks_by_rule(d: &Data, unresolved: &BTreeMap<String, u64>) -> Markup {
    let mut items: Vec<(String, f64, Tone)> = unresolved
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(r, n)| (r.clone(), *n as f64, Tone::Bad))
        .collect();
    items.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let open = d.status["breaks"]["open"].as_u64().unwrap_or(0);
    html! {
        (chart::bars("Unresolved breaks by rule", "breaks", &items, "No unresolved break: every rule agrees."))
        @if open > 0 {
            p.note { a href="/ui/breaks?status=open" { "Open breaks →" } }
        }
    }
}

fn incidents(ctx: &Ctx, firing: &[&Value]) -> Markup {
    html! {
        @if firing.is_empty() {
            (empty("No incident is firing."))
        } @else {
            table {
                thead { tr { th { "Incident" } th { "Severity" } th { "Services" } th { "Opened" } } }
                tbody {
                    @for i in firing {
                        tr {
                            td { a href=(format!("/ui/incidents/{}", i["id"])) { "#" (text(&i["id"])) } }
                            td { (pill(i["severity"].as_str().unwrap_or("?"), Tone::Bad)) }
                            td { (services_text(&i["services"])) }
                            td { (fmt::ago(i["opened_ms"].as_i64().unwrap_or(0), ctx.now_ms)) }
                        }
                    }
                }
            }
        }
        p.note { a href="/ui/incidents" { "All incidents →" } }
    }
}

fn services_text(v: &Value) -> String {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

fn drill_table(ctx: &Ctx, drills: &[Value]) -> Markup {
    let mut shown: Vec<&Value> = drills
        .iter()
        .filter(|x| matches!(x["state"].as_str(), Some("running" | "correcting")))
        .collect();
    for x in drills {
        if shown.len() >= RECENT_DRILLS {
            break;
        }
        if !shown.iter().any(|s| s["id"] == x["id"]) {
            shown.push(x);
        }
    }
    html! {
        @if shown.is_empty() {
            (empty("No drill has been run yet. Start one from a template on the Drills page."))
        } @else {
            table {
                thead { tr { th { "Drill" } th { "Mode" } th { "State" } th { "Created" } } }
                tbody {
                    @for x in &shown {
                        tr {
                            td { a href=(format!("/ui/drills/{}", enc(x["id"].as_str().unwrap_or("")))) {
                                (x["name"].as_str().unwrap_or("(unnamed)")) } }
                            td { (text(&x["mode"])) }
                            td { (pill(x["state"].as_str().unwrap_or("?"), drill_tone(x["state"].as_str()))) }
                            td { (fmt::ago(x["created_at"].as_i64().unwrap_or(0), ctx.now_ms)) }
                        }
                    }
                }
            }
        }
        p.note { a href="/ui/drills" { "Drills →" } }
    }
}

fn drill_tone(state: Option<&str>) -> Tone {
    match state {
        Some("completed") => Tone::Good,
        Some("running" | "correcting" | "pending") => Tone::Warn,
        Some("stopped") => Tone::Neutral,
        _ => Tone::Bad,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn data() -> Data {
        Data {
            status: json!({"records_per_sec": 412.5, "chain_rows_per_sec": 1900.0, "records_seen": 123456,
                "breaks": {"open": 3, "resolved": 9}, "detection_latency_ms": {"p99": 120},
                "unresolved_by_rule": {"payment-bill": 3}}),
            rules: json!({"links": [{"name": "pay-to-bill", "chain": ["payment-core", "billing"]},
                                    {"name": "wallet", "chain": ["wallet", "ledger"]}],
                          "rules": [{"name": "payment-bill", "link": "pay-to-bill"}, {"name": "wallet-ledger", "link": "wallet"}]}),
            incidents: json!([{"id": 7, "state": "firing", "severity": "critical", "services": ["accounting"], "opened_ms": 0},
                              {"id": 6, "state": "resolved", "severity": "warning", "services": ["billing"], "opened_ms": 0}]),
            drills: json!([{"id": "d-1", "state": "running", "name": "cent high", "mode": "lossless", "created_at": 0}]),
            service_map: json!({"edges": [{"caller": "gateway", "callee": "payment-core", "calls": 1000, "errors": 80}]}),
            range: Range::parse(Some("15m"), 0),
        }
    }

    #[test]
    fn the_overview_shows_each_links_health_and_the_firing_incidents_only() {
        let html = render(&Ctx::default(), &data()).into_string();
        assert!(html.contains("payment-core → billing"), "{html}");
        // pay-to-bill has 3 unresolved breaks, wallet none.
        let pay = html.find("pay-to-bill").unwrap();
        let wallet = html.find(">wallet<").unwrap();
        assert!(html[pay..wallet].contains(">breaks<"));
        assert!(html[wallet..].contains(">agrees<"));
        assert!(html.contains("/ui/incidents/7"));
        assert!(!html.contains("/ui/incidents/6"));
        assert!(html.contains("412/s") || html.contains("413/s"));
        // 8 % errors: failing.
        assert!(html.contains(">failing<"));
        assert!(html.contains(r#"aria-label="Unresolved breaks by rule""#));
        assert!(html.contains("/ui/drills/d-1"));
        assert!(html.contains("Services (last 15 min)"));
        assert!(html.contains(r#"href="/ui/?range=1h""#), "a range selector");
    }

    #[test]
    fn an_empty_platform_says_why_each_part_is_empty() {
        let d = Data {
            status: Value::Null,
            rules: Value::Null,
            incidents: json!([]),
            drills: json!([]),
            service_map: json!({"edges": []}),
            range: Range::parse(Some("1h"), 0),
        };
        let html = render(&Ctx::default(), &d).into_string();
        assert!(html.contains("could not be read"));
        assert!(html.contains("No fund link is defined"));
        assert!(html.contains("No incident is firing"));
        assert!(html.contains("No drill has been run yet"));
        assert!(html.contains("every rule agrees"));
    }

    #[test]
    fn error_shares_map_to_tones_at_the_documented_thresholds() {
        assert_eq!(error_tone(0, 0), Tone::Good);
        assert_eq!(error_tone(1000, 9), Tone::Good);
        assert_eq!(error_tone(1000, 10), Tone::Warn);
        assert_eq!(error_tone(1000, 50), Tone::Warn);
        assert_eq!(error_tone(1000, 51), Tone::Bad);
    }
}
