//! How breaks are shown: masked, with age and SLA state, as JSON or CSV.

use serde::Serialize;
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

/// Masks account-like values: compared values of masked fields, and keys made of them.
pub fn mask_row(mut row: BreakRow, fields: &[String], rules: &RuleSet) -> BreakRow {
    let masked = |name: &str| name.split('/').any(|part| fields.iter().any(|f| f == part));
    if row.brk.field.as_deref().is_some_and(masked) {
        row.brk.expected = row.brk.expected.as_deref().map(mask_account);
        row.brk.actual = row.brk.actual.as_deref().map(mask_account);
        row.brk.message = format!(
            "key {}: {} differs between the sides",
            row.brk.key,
            row.brk.field.as_deref().unwrap_or("")
        );
    }
    let keyed_by_masked = rules
        .rules
        .iter()
        .find(|r| r.name == row.brk.rule)
        .is_some_and(|r| r.sides().iter().any(|s| s.key.iter().any(|k| masked(k))));
    if keyed_by_masked && !row.brk.key.is_empty() {
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
