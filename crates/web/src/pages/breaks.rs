//! Breaks: a filterable list, and one break with its evidence side by side (the
//! differing fields highlighted), its history, and the forms to acknowledge and resolve it.

use std::collections::HashMap;

use maud::{html, Markup};
use serde_json::Value;

use crate::fmt::{self, enc};
use crate::layout::{empty, page, pill, text, Ctx, Nav, Tone, RANGES};

/// The break kinds a user can filter by (the engine's `BreakKind`s).
pub const KINDS: [&str; 10] = [
    "amount_mismatch",
    "field_mismatch",
    "missing_counterpart",
    "duplicate",
    "ambiguous_match",
    "conservation_violation",
    "balance_discontinuity",
    "source_silent",
    "missing_key",
    "capacity",
];

const STATUSES: [&str; 3] = ["open", "acknowledged", "resolved"];

/// `breaks`: `GET /api/v1/breaks` with the page's filters; `rules`: `GET /api/v1/rules`;
/// `q`: the page's query (rule, kind, status, range); `error`: why the list is missing.
pub fn list(
    ctx: &Ctx,
    breaks: &Value,
    rules: &Value,
    q: &HashMap<String, String>,
    error: Option<&str>,
) -> Markup {
    let chosen = |k: &str| q.get(k).map(String::as_str).unwrap_or("");
    let rule_names: Vec<&str> = rules["rules"]
        .as_array()
        .map(|a| a.iter().filter_map(|r| r["name"].as_str()).collect())
        .unwrap_or_default();
    let link_names: Vec<&str> = rules["links"]
        .as_array()
        .map(|a| a.iter().filter_map(|l| l["name"].as_str()).collect())
        .unwrap_or_default();
    let rows = breaks.as_array().cloned().unwrap_or_default();
    let body = html! {
        form.filters method="get" action="/ui/breaks" {
            label { "Fund link"
                select name="link" {
                    option value="" { "any" }
                    @for l in &link_names { option value=(l) selected[chosen("link") == *l] { (l) } }
                }
            }
            label { "Rule"
                select name="rule" {
                    option value="" { "any" }
                    @for r in &rule_names { option value=(r) selected[chosen("rule") == *r] { (r) } }
                }
            }
            label { "Kind"
                select name="kind" {
                    option value="" { "any" }
                    @for k in KINDS { option value=(k) selected[chosen("kind") == k] { (k.replace('_', " ")) } }
                }
            }
            label { "Status"
                select name="status" {
                    option value="" { "any" }
                    @for st in STATUSES { option value=(st) selected[chosen("status") == st] { (st) } }
                }
            }
            label { "Emitted in the last"
                select name="range" {
                    option value="all" { "any time" }
                    @for (key, label, _) in RANGES { option value=(key) selected[chosen("range") == key] { (label) } }
                }
            }
            button type="submit" { "Filter" }
        }
        @if let Some(e) = error {
            (crate::layout::flash(&crate::layout::Flash::Error(e.to_string())))
        } @else if rows.is_empty() {
            (empty("No break matches these filters."))
        } @else {
            p.note { (rows.len()) " breaks, newest first" @if rows.len() >= 200 { " (the first 200; narrow the filters to see others)" } "." }
            table {
                thead { tr {
                    th.num { "#" } th { "Rule" } th { "Kind" } th { "Key" } th { "What differs" }
                    th { "Status" } th { "Detected" } th.num { "Detection" }
                } }
                tbody {
                    @for b in &rows {
                        tr {
                            td.num { a href=(format!("/ui/breaks/{}", b["id"])) { (text(&b["id"])) } }
                            td { (text(&b["rule"])) }
                            td { (kind_text(&b["kind"])) }
                            td.mono { (text(&b["key"])) }
                            td { (b["message"].as_str().unwrap_or("")) }
                            td { (status_pill(b)) }
                            td { (fmt::ago(b["detected_at"].as_i64().unwrap_or(0), ctx.now_ms)) }
                            td.num { (fmt::duration_ms(b["detection_latency_ms"].as_i64().unwrap_or(0))) }
                        }
                    }
                }
            }
        }
    };
    page(ctx, "Breaks", Nav::Breaks, body)
}

fn kind_text(v: &Value) -> String {
    v.as_str().unwrap_or("?").replace('_', " ")
}

fn status_pill(b: &Value) -> Markup {
    let status = b["status"].as_str().unwrap_or("?");
    let tone = match status {
        "resolved" => Tone::Good,
        "acknowledged" => Tone::Warn,
        _ => Tone::Bad,
    };
    html! {
        (pill(status, tone))
        @if b["overdue"] == true { " " (pill("overdue", Tone::Bad)) }
        @if b["drill"].is_string() { " " (pill("drill", Tone::Neutral)) }
    }
}

/// The rows of the evidence table: label and the field of each evidence record.
const EVIDENCE_ROWS: [(&str, &str); 7] = [
    ("source", "source"),
    ("kind", "kind"),
    ("amount", "amount"),
    ("currency", "currency"),
    ("event time", "event_time"),
    ("record id", "record_id"),
    ("trace", "trace_id"),
];

/// `detail`: `GET /api/v1/breaks/{id}` (the break, with its `history`).
pub fn detail(ctx: &Ctx, detail: &Value) -> Markup {
    let b = detail;
    let id = text(&b["id"]);
    let evidence = b["evidence"].as_array().cloned().unwrap_or_default();
    let history = detail["history"].as_array().cloned().unwrap_or_default();
    let status = b["status"].as_str().unwrap_or("");
    let body = html! {
        p { (status_pill(b)) " " strong { (kind_text(&b["kind"])) } " in rule " strong { (text(&b["rule"])) }
            @if let Some(link) = b["link"].as_str() { " on fund link " strong { (link) } } }
        p { (b["message"].as_str().unwrap_or("")) }
        section {
            h2 { "Evidence" }
            @if evidence.is_empty() {
                (empty("This break rests on no record (a silent source or a missing key names none)."))
            } @else {
                (evidence_table(b, &evidence))
            }
        }
        div.grid {
            section {
                h2 { "Facts" }
                table {
                    tr { th { "Key" } td.mono { (text(&b["key"])) } }
                    @if let Some(side) = b["side"].as_str() { tr { th { "Missing side" } td { (side) } } }
                    tr { th { "Detected" } td { (fmt::time(b["detected_at"].as_i64().unwrap_or(0))) " UTC (" (fmt::ago(b["detected_at"].as_i64().unwrap_or(0), ctx.now_ms)) ")" } }
                    tr { th { "Detection latency" } td { (fmt::duration_ms(b["detection_latency_ms"].as_i64().unwrap_or(0))) " after the evidence was complete" } }
                    tr { th { "Rule version" } td.mono { (text(&b["rule_version"])) } }
                    @if let Some(d) = b["drill"].as_str() { tr { th { "Drill" } td { a href=(format!("/ui/drills/{}", enc(d))) { (d) } " — a drill's break: it never reaches alerts or webhooks" } } }
                    @if let Some(r) = b["resolved_by_record"].as_str() { tr { th { "Resolved by" } td.mono { "amending record " (r) } } }
                    tr { th { "Owner" } td { (text(&b["owner"])) } }
                }
            }
            section {
                h2 { "Work this break" }
                @if status == "resolved" {
                    p { "Resolved" @if let Some(by) = b["status_by"].as_str() { " by " (by) } @if let Some(r) = b["status_reason"].as_str() { ": " (r) } "." }
                } @else {
                    @if status == "open" {
                        form.stack #ack method="post" action=(format!("/ui/breaks/{id}/status")) {
                            input type="hidden" name="status" value="acknowledged";
                            label { "Acknowledge: what are you doing about it?"
                                input type="text" name="reason" required maxlength="500" placeholder="e.g. looking into billing's retry queue"; }
                            div { button type="submit" { "Acknowledge" } }
                        }
                    }
                    form.stack #resolve method="post" action=(format!("/ui/breaks/{id}/status")) {
                        input type="hidden" name="status" value="resolved";
                        label { "Resolve: why is it no longer a problem?"
                            input type="text" name="reason" required maxlength="500" placeholder="e.g. corrected bill issued"; }
                        div { button type="submit" { "Resolve" } }
                    }
                    p.note { "Acknowledging and resolving need the operator role or above; every change is in the audit log." }
                }
            }
        }
        section {
            h2 { "History" }
            @if history.is_empty() {
                (empty("No change since it was detected."))
            } @else {
                table {
                    thead { tr { th { "When" } th { "Who" } th { "Change" } th { "Reason" } } }
                    tbody {
                        @for h in &history {
                            tr {
                                td { (fmt::time(h["at"].as_i64().unwrap_or(0))) }
                                td { (text(&h["actor"])) }
                                td { (h["from"].as_str().unwrap_or("new")) " → " (text(&h["to"])) }
                                td { (text(&h["reason"])) }
                            }
                        }
                    }
                }
            }
        }
    };
    page(ctx, &format!("Break {id}"), Nav::Breaks, body)
}

/// The evidence records side by side, one column each, with every row whose values
/// differ between the records highlighted, and the break's own field (the one a rule
/// compared) shown as expected against actual.
fn evidence_table(b: &Value, evidence: &[Value]) -> Markup {
    let field = b["field"].as_str();
    html! {
        table {
            thead { tr {
                th { "" }
                @for (i, e) in evidence.iter().enumerate() {
                    th { (if i == 0 { "upstream" } else if evidence.len() == 2 { "downstream" } else { "record" }) " · " (text(&e["source"])) }
                }
            } }
            tbody {
                @for (label, key) in EVIDENCE_ROWS {
                    @let values: Vec<String> = evidence.iter().map(|e| cell(key, &e[key])).collect();
                    @let differs = values.iter().any(|v| v != &values[0]) && !matches!(key, "record_id" | "source" | "kind" | "event_time" | "trace_id");
                    tr.differs[differs] {
                        th { (label) }
                        @for v in &values { td.mono.differs[differs] { (v) } }
                    }
                }
                @if let Some(f) = field {
                    tr.differs {
                        th { (f) " (compared)" }
                        td.mono.differs { (text(&b["expected"])) }
                        @for _ in 1..evidence.len().max(2) { td.mono.differs { (text(&b["actual"])) } }
                    }
                }
            }
        }
        @if evidence.len() >= 2 {
            p.note { "Highlighted: values that differ between the records." }
        }
    }
}

fn cell(key: &str, v: &Value) -> String {
    match (key, v) {
        ("event_time", Value::Number(n)) => format!("{} UTC", fmt::time(n.as_i64().unwrap_or(0))),
        (_, v) => text(v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn mismatch(status: &str) -> Value {
        json!({"id": 42, "rule": "payment-bill", "link": "pay-to-bill", "kind": "amount_mismatch",
            "key": "ord-1", "field": "amount", "expected": "10.00", "actual": "10.01",
            "message": "key ord-1: amount 10.00 vs 10.01", "status": status, "detected_at": 1000,
            "detection_latency_ms": 12, "rule_version": "abc",
            "evidence": [
                {"record_id": "p-1", "source": "payment-core", "kind": "payment", "event_time": 0, "amount": "10.00", "currency": "EUR"},
                {"record_id": "b-1", "source": "billing", "kind": "bill", "event_time": 5, "amount": "10.01", "currency": "EUR"}],
            "history": []})
    }

    #[test]
    fn evidence_is_side_by_side_with_the_differing_amount_highlighted() {
        let html = detail(&Ctx::default(), &mismatch("open")).into_string();
        assert!(html.contains("upstream · payment-core"));
        assert!(html.contains("downstream · billing"));
        // The amount row differs; the currency row does not.
        let amount = html.find("<th>amount</th>").unwrap();
        let row_start = html[..amount].rfind("<tr").unwrap();
        assert!(
            html[row_start..amount].contains("differs"),
            "{}",
            &html[row_start..amount + 80]
        );
        let currency = html.find("<th>currency</th>").unwrap();
        let row_start = html[..currency].rfind("<tr").unwrap();
        assert!(!html[row_start..currency].contains("differs"));
        assert!(html.contains("amount (compared)"));
    }

    #[test]
    fn an_open_break_offers_acknowledge_and_resolve_and_a_resolved_one_neither() {
        let open = detail(&Ctx::default(), &mismatch("open")).into_string();
        assert!(open.contains(r#"value="acknowledged""#));
        assert!(open.contains(r#"value="resolved""#));
        assert!(open.contains(r#"action="/ui/breaks/42/status""#));
        let acked = detail(&Ctx::default(), &mismatch("acknowledged")).into_string();
        assert!(!acked.contains(r#"value="acknowledged""#));
        assert!(acked.contains(r#"value="resolved""#));
        let done = detail(&Ctx::default(), &mismatch("resolved")).into_string();
        assert!(!done.contains(r#"value="resolved""#));
    }

    #[test]
    fn the_list_keeps_its_filters_and_says_when_nothing_matches() {
        let q: HashMap<String, String> = [("kind".to_string(), "duplicate".to_string())].into();
        let rules = json!({"rules": [{"name": "payment-bill"}]});
        let html = list(&Ctx::default(), &json!([]), &rules, &q, None).into_string();
        assert!(
            html.contains(r#"<option value="duplicate" selected>"#),
            "{html}"
        );
        assert!(html.contains("No break matches"));
        let rows = json!([{"id": 5, "rule": "payment-bill", "kind": "duplicate", "key": "<k>", "message": "m",
            "status": "open", "overdue": true, "detected_at": 0, "detection_latency_ms": 3}]);
        let html = list(&Ctx::default(), &rows, &rules, &q, None).into_string();
        assert!(html.contains(r#"href="/ui/breaks/5""#));
        assert!(html.contains("&lt;k&gt;"));
        assert!(html.contains(">overdue<"));
        let refused = list(
            &Ctx::default(),
            &Value::Null,
            &rules,
            &q,
            Some("Refused: no"),
        )
        .into_string();
        assert!(refused.contains("Refused: no"));
    }
}
