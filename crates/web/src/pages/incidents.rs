//! Incidents: the list (`/ui/incidents`) and one incident with its alerts, root-cause
//! ranking and suggested runbooks (`/ui/incidents/{id}`).
//!
//! From `GET /api/v1/incidents[/{id}]` (an incident with its alerts and analysis: `id`,
//! `state`, `opened_ms`, `resolved_ms`, `active_ms`, `severity`, `services`, `alerts`,
//! `analysis` of `at_ms`, `ranking`, `fault_type`, `summary`, `steps`; the detail adds
//! `runbooks`, each with `last_verification`) and `GET /api/v1/runbooks` (each runbook's
//! `four_eyes`, `executing`, `verify_every_secs`, `last_verification`, `last_execution`).

use maud::{html, Markup};
use serde_json::Value;

use super::services::{ago, alerts_table, int, items, ms_of, num, raw_json, time_of, url_encode};
use crate::fmt;
use crate::layout::{empty, page, pill, section, stat, text, Ctx, Nav, Tone};

fn state_tone(state: &str) -> Tone {
    match state {
        "firing" => Tone::Bad,
        "resolved" => Tone::Good,
        _ => Tone::Warn,
    }
}

fn severity_tone(s: &str) -> Tone {
    match s {
        "critical" => Tone::Bad,
        "warning" => Tone::Warn,
        _ => Tone::Neutral,
    }
}

fn service_links(services: &Value) -> Markup {
    let list: Vec<&str> = items(services).iter().filter_map(Value::as_str).collect();
    html! {
        @if list.is_empty() { "—" }
        @for (i, s) in list.iter().enumerate() {
            @if i > 0 { ", " }
            a href=(format!("/ui/services/{}", url_encode(s))) { (s) }
        }
    }
}

/// The incident's alerts: objects (as the API shows them) or bare ids.
fn alert_count(i: &Value) -> usize {
    items(&i["alerts"]).len()
}

fn top_candidate(i: &Value) -> Markup {
    let analysis = &i["analysis"];
    let top = &analysis["ranking"][0];
    html! {
        @match top["service"].as_str() {
            Some(s) => {
                a href=(format!("/ui/services/{}", url_encode(s))) { (s) }
                @if let Some(f) = top["fault_type"].as_str().or(analysis["fault_type"].as_str()) { " · " (f) }
                @if let Some(score) = num(&top["score"]) { " " span.note { "(score " (format!("{score:.2}")) ")" } }
            }
            None => span.note { (analysis["summary"].as_str().unwrap_or("not analysed yet")) },
        }
    }
}

/// `GET /ui/incidents`: incidents newest first.
pub fn list(ctx: &Ctx, incidents: &Value) -> Markup {
    let list = items(incidents);
    let firing = list
        .iter()
        .filter(|i| i["state"].as_str() == Some("firing"))
        .count();
    let body = html! {
        div.stats {
            (stat("firing", &firing.to_string(), if firing > 0 { Tone::Bad } else { Tone::Good }))
            (stat("listed", &list.len().to_string(), Tone::Neutral))
        }
        @if list.is_empty() {
            (empty("No incident: no alert has fired. Alerts that fire close together on the service map are merged into one incident."))
        } @else {
            section { table {
                thead { tr {
                    th { "Incident" } th { "Status" } th { "Severity" } th { "Opened" } th { "Closed" }
                    th { "Services" } th.num { "Alerts" } th { "Likely root cause" }
                } }
                tbody {
                    @for i in list {
                        @let id = int(&i["id"]);
                        @let state = i["state"].as_str().unwrap_or("—");
                        @let severity = i["severity"].as_str().unwrap_or("—");
                        tr {
                            td { @match id {
                                Some(id) => a href=(format!("/ui/incidents/{id}")) { "#" (id) },
                                None => "—",
                            } }
                            td { (pill(state, state_tone(state))) }
                            td { (pill(severity, severity_tone(severity))) }
                            td {
                                (time_of(&i["opened_ms"]))
                                @if let Some(t) = int(&i["opened_ms"]) { br; span.note { (ago(t, ctx.now_ms)) } }
                            }
                            td {
                                @match int(&i["resolved_ms"]) {
                                    Some(t) => { (fmt::time(t)) }
                                    None => @if let Some(o) = int(&i["opened_ms"]) {
                                        span.note { "open for " (fmt::duration_ms(ctx.now_ms.saturating_sub(o))) }
                                    } @else { "—" },
                                }
                            }
                            td { (service_links(&i["services"])) }
                            td.num { (alert_count(i)) }
                            td { (top_candidate(i)) }
                        }
                    }
                }
            } }
        }
    };
    page(ctx, "Incidents", Nav::Incidents, body)
}

/// `GET /ui/incidents/{id}`: the merged alerts, the root-cause ranking and the runbooks
/// suggested for it.
pub fn detail(ctx: &Ctx, incident: &Value, runbooks: &Value) -> Markup {
    let id = int(&incident["id"]);
    let state = incident["state"].as_str().unwrap_or("—");
    let severity = incident["severity"].as_str().unwrap_or("—");
    let alerts: Vec<&Value> = items(&incident["alerts"])
        .iter()
        .filter(|a| a.is_object())
        .collect();
    let title = match id {
        Some(id) => format!("Incident #{id}"),
        None => "Incident".to_string(),
    };
    let body = html! {
        p { a href="/ui/incidents" { "← Incidents" } }
        div.stats {
            (stat("status", state, state_tone(state)))
            (stat("severity", severity, severity_tone(severity)))
            (stat("opened", &time_of(&incident["opened_ms"]), Tone::Neutral))
            @match int(&incident["resolved_ms"]) {
                Some(t) => (stat("resolved", &fmt::time(t), Tone::Good)),
                None => @if let Some(o) = int(&incident["opened_ms"]) {
                    (stat("open for", &fmt::duration_ms(ctx.now_ms.saturating_sub(o)), Tone::Bad))
                },
            }
            (stat("last active", &int(&incident["active_ms"]).map(|t| ago(t, ctx.now_ms)).unwrap_or_else(|| "—".into()), Tone::Neutral))
        }
        p { "Services: " (service_links(&incident["services"])) }
        (section("Alerts", if alerts.is_empty() {
            empty("The incident lists no alert details (the server may have restarted since; alerts are kept in memory).")
        } else {
            alerts_table(&alerts, true)
        }))
        (section("Likely root cause", analysis(&incident["analysis"])))
        (section("Suggested runbooks", suggested(ctx, &incident["runbooks"], runbooks)))
        (raw_json("incident", incident))
    };
    page(ctx, &title, Nav::Incidents, body)
}

fn analysis(a: &Value) -> Markup {
    if !a.is_object() {
        return empty("Not analysed yet: the ranking is computed when an alert of the incident fires, from the series around its start.");
    }
    let ranking = items(&a["ranking"]);
    let steps: Vec<&str> = items(&a["steps"])
        .iter()
        .filter_map(Value::as_str)
        .collect();
    html! {
        p {
            strong { (a["summary"].as_str().unwrap_or("—")) }
        }
        p.note {
            "Analysed " (time_of(&a["at_ms"]))
            @if let Some(f) = a["fault_type"].as_str() { " · likely fault: " (f) }
        }
        @if ranking.is_empty() {
            (empty("No candidate: no series of the services around the incident had points to compare."))
        } @else {
            ol.ranking {
                @for c in ranking {
                    li { (candidate(c)) }
                }
            }
        }
        @if !steps.is_empty() {
            h3 { "What to look at first" }
            ol { @for s in &steps { li { (s) } } }
        }
    }
}

fn candidate(c: &Value) -> Markup {
    let path: Vec<&str> = items(&c["path"]).iter().filter_map(Value::as_str).collect();
    let evidence = items(&c["evidence"]);
    let explained = &c["explained_by"];
    html! {
        div.candidate {
            @match c["service"].as_str() {
                Some(s) => strong { a href=(format!("/ui/services/{}", url_encode(s))) { (s) } },
                None => strong { "—" },
            }
            " · score " (num(&c["score"]).map(|s| format!("{s:.2}")).unwrap_or_else(|| "—".into()))
            " · anomaly " (num(&c["anomaly"]).map(|s| format!("{s:.2}")).unwrap_or_else(|| "—".into()))
            @if let Some(f) = c["fault_type"].as_str() { " · " (pill(f, Tone::Warn)) }
            @if path.len() > 1 { br; span.note { "path: " (path.join(" → ")) } }
            @if let Some(node) = explained["node"].as_str() {
                br;
                span.note {
                    (num(&explained["share"]).map(|s| format!("{:.0} %", s * 100.0)).unwrap_or_else(|| "part".into()))
                    " explained by "
                    (if explained["via"].as_str() == Some("sibling") { "the instrumented sibling " } else { "its dependency " })
                    (node)
                }
            }
            @if let Some(e) = c["explanation"].as_str() { p { (e) } }
            @if !evidence.is_empty() {
                table {
                    thead { tr {
                        th { "Metric" } th { "Statistic" } th.num { "Before (median)" } th.num { "After (median)" } th.num { "z" } th { "" }
                    } }
                    tbody {
                        @for e in evidence {
                            tr {
                                td { (text(&e["kind"]).replace('_', " ")) }
                                td { (text(&e["statistic"])) }
                                td.num { (figure(&e["before_median"])) }
                                td.num { (figure(&e["after_median"])) }
                                td.num { (num(&e["z"]).map(|z| format!("{z:+.1}")).unwrap_or_else(|| "—".into())) }
                                td { @if e["dominant"].as_bool() == Some(true) { (pill("dominant", Tone::Neutral)) } }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn figure(v: &Value) -> String {
    match num(v) {
        Some(x) if x.abs() >= 100.0 => format!("{x:.0}"),
        Some(x) => format!("{x:.3}"),
        None => "—".into(),
    }
}

/// A verification's result as a pill: `ok`, `failed`, `running` or `unknown`.
fn outcome_pill(outcome: &str) -> Markup {
    match outcome {
        "ok" => pill("passed", Tone::Good),
        "failed" => pill("failed", Tone::Bad),
        "running" => pill("running", Tone::Neutral),
        other => pill(other, Tone::Warn),
    }
}

fn suggested(ctx: &Ctx, suggested: &Value, runbooks: &Value) -> Markup {
    let list = items(suggested);
    if list.is_empty() {
        return empty("No runbook is configured for this fault on these services: a [[runbooks]] entry names the services and fault types it addresses.");
    }
    html! {
        @for rb in list {
            @let name = rb["name"].as_str().unwrap_or("");
            @let full = items(runbooks).iter().find(|r| r["name"].as_str() == Some(name));
            (runbook(ctx, rb, full))
        }
    }
}

fn runbook(ctx: &Ctx, rb: &Value, full: Option<&Value>) -> Markup {
    let name = rb["name"].as_str().unwrap_or("");
    let null = Value::Null;
    let full = full.unwrap_or(&null);
    // The runbook list's verification is the complete run; the incident's is a summary.
    let last = if full["last_verification"].is_object() {
        &full["last_verification"]
    } else {
        &rb["last_verification"]
    };
    let outcome = last["outcome"].as_str().or_else(|| {
        last["ok"]
            .as_bool()
            .map(|ok| if ok { "ok" } else { "failed" })
    });
    let started = int(&last["started_at"]);
    let every = int(&full["verify_every_secs"]).filter(|s| *s > 0);
    let stale = match (started, every) {
        (Some(t), Some(e)) => ctx.now_ms.saturating_sub(t) > e.saturating_mul(2_000),
        _ => false,
    };
    let lists = |v: &Value| -> String {
        items(v)
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let four_eyes = full["four_eyes"].as_bool();
    html! {
        div.runbook {
            h3 { code { (name) } }
            @if let Some(d) = rb["description"].as_str().filter(|d| !d.is_empty()) { p { (d) } }
            p.note {
                "For " (lists(&rb["fault_types"]).replace('_', " ")) " on " (lists(&rb["services"]))
                @if rb["auto_execute"].as_bool() == Some(true) { " · runs automatically for new incidents" }
            }
            table {
                tbody {
                    tr {
                        th { "Last verification" }
                        td {
                            @match (outcome, started) {
                                (Some(o), Some(t)) => {
                                    (outcome_pill(o)) " " (fmt::time(t)) " (" (ago(t, ctx.now_ms)) ")"
                                    @if let Some(d) = int(&last["duration_ms"]) { ", took " (fmt::duration_ms(d)) }
                                    @if let Some(s) = int(&last["status"]) { ", HTTP " (s) }
                                    @if stale { " " (pill("stale", Tone::Warn)) }
                                    @if let Some(m) = last["message"].as_str().filter(|m| !m.is_empty()) { br; span.note.mono { (m) } }
                                }
                                _ => (pill("never verified", Tone::Warn)),
                            }
                        }
                    }
                    @if full["last_execution"].is_object() {
                        @let x = &full["last_execution"];
                        tr {
                            th { "Last execution" }
                            td {
                                (outcome_pill(x["outcome"].as_str().unwrap_or("unknown"))) " " (time_of(&x["started_at"]))
                                " by " (text(&x["requested_by"]))
                                @if let Some(a) = x["approved_by"].as_str() { ", approved by " (a) }
                                @if let Some(r) = x["reason"].as_str() { ": " (r) }
                                @if !x["duration_ms"].is_null() { " (" (ms_of(&x["duration_ms"])) ")" }
                            }
                        }
                    }
                }
            }
            @if full["executing"].as_bool() == Some(true) {
                p.note { (pill("executing", Tone::Warn)) " It is being executed now." }
            }
            @if outcome != Some("ok") {
                p.note { "Its last verification did not pass: the server refuses to execute it until a verification passes (or the execution is forced through the API)." }
            }
            form.action method="post" action=(format!("/ui/runbooks/{}/execute", url_encode(name))) {
                input type="text" name="reason" required maxlength="500" size="60" placeholder="Reason (recorded with the run and in the audit log)";
                button type="submit" { "Execute" }
            }
            p.note {
                @match four_eyes {
                    Some(true) => "Executing needs a second person's approval: the change is made only once they approve (under Approvals).",
                    Some(false) => "This runbook runs at once when executed (no second approval is configured for it).",
                    None => "Executing may need a second person's approval; the change is then made only once they approve.",
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
        crate::layout::test_ctx(NOW)
    }

    fn alert(id: u64, service: &str, state: &str) -> Value {
        json!({"id": id, "rule": "latency", "service": service, "metric": "latency_ms_p95", "severity": "warning",
               "state": state, "started_ms": NOW - 600_000, "resolved_ms": if state == "resolved" { json!(NOW - 60_000) } else { Value::Null },
               "value": 420.0, "expected": 80.0, "score": 0.7, "score_max": 0.91, "incident": 4})
    }

    /// An incident as `GET /api/v1/incidents/{id}` answers it.
    fn incident() -> Value {
        json!({
            "id": 4, "state": "firing", "opened_ms": NOW - 600_000, "resolved_ms": null, "active_ms": NOW - 10_000,
            "severity": "critical", "services": ["gateway", "ledger db"],
            "alerts": [alert(11, "gateway", "firing"), alert(12, "ledger db", "resolved")],
            "analysis": {
                "at_ms": NOW - 590_000,
                "ranking": [
                    {"service": "ledger db", "score": 4.2, "anomaly": 5.1, "path": ["gateway", "ledger db"],
                     "explained_by": null, "fault_type": "latency",
                     "evidence": [{"kind": "latency", "statistic": "p95", "before_median": 80.0, "after_median": 420.0, "scale": 5.0,
                                   "z": 68.0, "severity": 68.0, "before_points": 30, "after_points": 3, "dominant": true}],
                     "explanation": "ledger db (score 4.20, anomaly 5.10), likely latency: latency p95 80.0000 -> 420.0000 (z +68.0, scale 5.000e0, dominant); path gateway -> ledger db"},
                    {"service": "gateway", "score": 0.4, "anomaly": 3.0, "path": ["gateway"],
                     "explained_by": {"node": "ledger db", "share": 0.87, "via": "dependency"}, "fault_type": "latency",
                     "evidence": [], "explanation": "gateway (score 0.40, anomaly 3.00) <b>"}
                ],
                "fault_type": "latency", "summary": "ledger db (score 4.20, anomaly 5.10), likely latency",
                "steps": ["Check recent deploys and configuration changes of ledger db"]
            },
            "runbooks": [{"name": "ledger-failover", "description": "Fail the ledger over to its standby", "services": ["ledger db"],
                          "fault_types": ["latency", "dependency_failure"], "auto_execute": false,
                          "last_verification": {"ok": true, "outcome": "ok", "started_at": NOW - 1_800_000, "duration_ms": 120, "status": 200, "message": "standby ready"}}]
        })
    }

    fn runbooks() -> Value {
        json!([{"name": "ledger-failover", "description": "Fail the ledger over to its standby", "fault_types": ["latency"], "services": ["ledger db"],
                "action": {"method": "POST", "url": "https://ledger.internal/failover", "headers": [], "bearer_token": true, "body": null, "expect_status": 200},
                "verify": {"method": "GET", "url": "https://ledger.internal/standby", "headers": [], "bearer_token": true, "body": null, "expect_status": 200},
                "verify_every_secs": 3600, "timeout_secs": 10, "auto_execute": false, "four_eyes": true, "executing": false,
                "last_verification": {"id": 9, "runbook": "ledger-failover", "kind": "verify", "started_at": NOW - 1_800_000, "outcome": "ok",
                                      "duration_ms": 120, "status": 200, "message": "standby ready", "requested_by": "server",
                                      "approved_by": null, "approval": null, "reason": null, "forced": false},
                "last_execution": null}])
    }

    #[test]
    fn the_list_links_each_incident_with_its_status_and_top_cause() {
        let mut resolved = incident();
        resolved["id"] = json!(3);
        resolved["state"] = json!("resolved");
        resolved["resolved_ms"] = json!(NOW - 100_000);
        resolved["analysis"] = Value::Null;
        let html = list(&ctx(), &json!([incident(), resolved])).into_string();
        assert!(html.contains(r#"href="/ui/incidents/4""#), "{html}");
        assert!(html.contains(r#"href="/ui/incidents/3""#));
        assert!(html.contains(r#"<span class="pill bad">firing</span>"#));
        assert!(html.contains(r#"<span class="pill good">resolved</span>"#));
        assert!(html.contains(r#"<span class="pill bad">critical</span>"#));
        assert!(html.contains(r#"href="/ui/services/ledger%20db""#));
        assert!(html.contains("(score 4.20)"));
        assert!(html.contains("not analysed yet"));
        assert!(html.contains("open for 10 min 0 s"));
        let empty = list(&ctx(), &json!([])).into_string();
        assert!(empty.contains("No incident: no alert has fired"));
    }

    #[test]
    fn the_detail_shows_alerts_ranking_and_runbooks_with_an_execute_form() {
        let html = detail(&ctx(), &incident(), &runbooks()).into_string();
        assert!(html.contains("Incident #4"));
        // The merged alerts.
        assert!(html.contains("<td>latency</td>"), "{html}");
        assert_eq!(html.matches(r#"href="/ui/incidents/4""#).count(), 2);
        // The ranking, in order, with its explanation, path and evidence.
        let first = html
            .find("ledger db (score 4.20, anomaly 5.10), likely latency: latency")
            .unwrap();
        let second = html
            .find("gateway (score 0.40, anomaly 3.00) &lt;b&gt;")
            .unwrap();
        assert!(first < second);
        assert!(html.contains("path: gateway → ledger db"));
        assert!(html.contains("87 % explained by its dependency ledger db"));
        assert!(html.contains("+68.0"));
        assert!(html.contains("What to look at first"));
        // The runbook: verified 30 min ago, passed; executing needs a reason and approval.
        assert!(html.contains(r#"<span class="pill good">passed</span>"#));
        assert!(html.contains("30 min ago"));
        assert!(html.contains(r#"action="/ui/runbooks/ledger-failover/execute""#));
        assert!(html.contains(r#"name="reason" required"#));
        assert!(html.contains("second person's approval"));
        assert!(!html.contains("did not pass"));
    }

    #[test]
    fn an_unverified_runbook_and_a_missing_analysis_say_so() {
        let mut i = incident();
        i["analysis"] = Value::Null;
        i["runbooks"][0]["last_verification"] = Value::Null;
        i["runbooks"][0]["name"] = json!("flag off/now");
        let html = detail(&ctx(), &i, &json!([])).into_string();
        assert!(html.contains("Not analysed yet"), "{html}");
        assert!(html.contains("never verified"));
        assert!(html.contains("did not pass"));
        assert!(html.contains(r#"action="/ui/runbooks/flag%20off%2Fnow/execute""#));
        assert!(html.contains("may need a second person's approval"));

        i["runbooks"] = json!([]);
        let html = detail(&ctx(), &i, &json!([])).into_string();
        assert!(html.contains("No runbook is configured"));
    }

    #[test]
    fn unexpected_json_never_panics() {
        let weird = [
            json!(null),
            json!([1, "x", null]),
            json!({"id": "x", "alerts": [1, 2], "analysis": {"ranking": [null, {"path": "a", "evidence": [7]}]}, "runbooks": [{"name": 3}, 4],
                   "opened_ms": i64::MIN, "active_ms": i64::MAX}),
        ];
        for w in &weird {
            let html = list(&ctx(), w).into_string();
            assert!(html.contains("Incidents"));
            let html = detail(&ctx(), w, w).into_string();
            assert!(html.contains("Incident"), "{html}");
        }
        let html = list(&ctx(), &json!([{"id": 1, "state": "firing"}])).into_string();
        assert!(html.contains("—"));
    }

    #[test]
    fn a_stale_verification_is_flagged() {
        let mut rbs = runbooks();
        rbs[0]["last_verification"]["started_at"] = json!(NOW - 3 * 3_600_000);
        rbs[0]["last_verification"]["outcome"] = json!("failed");
        let html = detail(&ctx(), &incident(), &rbs).into_string();
        assert!(
            html.contains(r#"<span class="pill warn">stale</span>"#),
            "{html}"
        );
        assert!(html.contains(r#"<span class="pill bad">failed</span>"#));
        assert!(html.contains("did not pass"));
    }
}
