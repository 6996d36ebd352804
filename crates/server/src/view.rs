//! How breaks are shown: masked, with age and SLA state, as JSON or CSV.

use serde::Serialize;
use steadfast_drill::tamper::Hit;
use steadfast_drill::{Injection, Planted, Report};
use steadfast_model::{mask_account, Millis};
use steadfast_store::BreakRow;
use steadfast_verify::rules::RuleSet;

#[derive(Serialize, Clone, Debug)]
pub struct BreakView {
    #[serde(flatten)]
    pub row: BreakRow,
    pub age_secs: i64,
    /// Open or acknowledged for longer than its rule's SLA.
    pub overdue: bool,
    pub detection_latency_ms: i64,
}

impl BreakView {
    pub fn new(row: BreakRow, sla_secs: Option<u64>, now: Millis) -> BreakView {
        let age_secs = ((now - row.detected_at) / 1000).max(0);
        let unresolved = row.status != steadfast_store::Status::Resolved;
        let overdue = unresolved && sla_secs.is_some_and(|sla| age_secs as u64 > sla);
        let detection_latency_ms = (row.detected_at - row.brk.complete_at).max(0);
        BreakView {
            row,
            age_secs,
            overdue,
            detection_latency_ms,
        }
    }
}

/// Whether a field name (or a `/`-joined key of names) includes a masked field.
fn is_masked(fields: &[String], name: &str) -> bool {
    name.split('/').any(|part| fields.iter().any(|f| f == part))
}

/// Whether the rule's keys are made of masked fields (so its keys are account-like).
fn keyed_by_masked(fields: &[String], rules: &RuleSet, rule: &str) -> bool {
    rules
        .rules
        .iter()
        .find(|r| r.name == rule)
        .is_some_and(|r| {
            r.sides()
                .iter()
                .any(|s| s.key.iter().any(|k| is_masked(fields, k)))
        })
}

/// A JSON value of a masked field, masked: the text of a number or string, so the
/// masked form is the same whatever type the record carried.
fn mask_value(v: &serde_json::Value) -> serde_json::Value {
    let text = match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => return serde_json::Value::Null,
        other => other.to_string(),
    };
    serde_json::Value::String(mask_account(&text))
}

/// Masks a tampering's values when it changed a masked field (a path such as
/// `attributes.payer_account` is judged by its last name).
pub fn mask_hit(hit: &mut Hit, fields: &[String]) {
    let leaf = |f: &str| is_masked(fields, f.rsplit('.').next().unwrap_or(f));
    if hit.field.as_deref().is_some_and(leaf) {
        hit.original = hit.original.as_ref().map(mask_value);
        hit.tampered = hit.tampered.as_ref().map(mask_value);
    }
}

/// The parts of a drill that may carry account-like values.
pub struct DrillParts<'a> {
    pub planted: &'a mut [Planted],
    pub injections: &'a mut [Injection],
    pub hits: Vec<&'a mut Hit>,
    pub report: Option<&'a mut Report>,
}

/// Masks a drill's parts as breaks are: the values of tampered masked fields, and keys
/// of rules keyed by masked fields wherever they appear (planted faults, injections,
/// outcomes, false positives). A lossy hit names no rule, so its key is masked when any
/// of the drill's rules (`drill_rules`) is keyed by a masked field.
pub fn mask_drill(parts: DrillParts<'_>, fields: &[String], rules: &RuleSet, drill_rules: &[&str]) {
    let any_keyed = drill_rules
        .iter()
        .any(|r| keyed_by_masked(fields, rules, r));
    let mut keys = std::collections::HashSet::new();
    for p in parts.planted.iter_mut() {
        mask_hit(&mut p.hit, fields);
        if keyed_by_masked(fields, rules, &p.rule) {
            keys.insert(p.key.clone());
            p.key = mask_account(&p.key);
            p.hit.key = p.key.clone();
        }
    }
    for h in parts.hits {
        mask_hit(h, fields);
        if any_keyed {
            keys.insert(h.key.clone());
            h.key = mask_account(&h.key);
        }
    }
    for i in parts.injections.iter_mut() {
        if keys.contains(&i.key) {
            i.key = mask_account(&i.key);
        }
    }
    if let Some(r) = parts.report {
        for o in &mut r.outcomes {
            if keys.contains(&o.key) {
                o.key = mask_account(&o.key);
            }
        }
        for f in &mut r.false_positives {
            if keyed_by_masked(fields, rules, &f.rule) {
                f.key = mask_account(&f.key);
            }
        }
    }
}

/// Masks account-like values: compared values of masked fields, and keys made of them.
pub fn mask_row(mut row: BreakRow, fields: &[String], rules: &RuleSet) -> BreakRow {
    let masked = |name: &str| is_masked(fields, name);
    if row.brk.field.as_deref().is_some_and(masked) {
        row.brk.expected = row.brk.expected.as_deref().map(mask_account);
        row.brk.actual = row.brk.actual.as_deref().map(mask_account);
        row.brk.message = format!(
            "key {}: {} differs between the sides",
            row.brk.key,
            row.brk.field.as_deref().unwrap_or("")
        );
    }
    if keyed_by_masked(fields, rules, &row.brk.rule) && !row.brk.key.is_empty() {
        let original = row.brk.key.clone();
        row.brk.key = mask_account(&original);
        row.brk.message = row.brk.message.replace(&original, &row.brk.key);
    }
    row
}

pub fn to_csv(views: &[BreakView]) -> Result<String, csv::Error> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record([
        "id",
        "rule",
        "link",
        "kind",
        "key",
        "side",
        "field",
        "expected",
        "actual",
        "status",
        "owner",
        "detected_at",
        "age_secs",
        "overdue",
        "detection_latency_ms",
        "evidence",
        "message",
    ])?;
    for v in views {
        let b = &v.row.brk;
        let evidence: Vec<&str> = b.evidence.iter().map(|e| e.record_id.as_str()).collect();
        w.write_record([
            b.id.to_string(),
            b.rule.clone(),
            b.link.clone().unwrap_or_default(),
            b.kind.as_str().to_string(),
            b.key.clone(),
            b.side.clone().unwrap_or_default(),
            b.field.clone().unwrap_or_default(),
            b.expected.clone().unwrap_or_default(),
            b.actual.clone().unwrap_or_default(),
            v.row.status.as_str().to_string(),
            v.row.owner.clone().unwrap_or_default(),
            steadfast_model::format_millis(v.row.detected_at),
            v.age_secs.to_string(),
            v.overdue.to_string(),
            v.detection_latency_ms.to_string(),
            evidence.join(" "),
            b.message.clone(),
        ])?;
    }
    let bytes = w.into_inner().map_err(|e| e.into_error())?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}
