use serde::{Deserialize, Serialize};
use steadfast_model::Millis;

/// What kind of disagreement a break reports.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum BreakKind {
    AmountMismatch,
    FieldMismatch,
    MissingCounterpart,
    Duplicate,
    AmbiguousMatch,
    ConservationViolation,
    BalanceDiscontinuity,
    SourceSilent,
    /// A record lacks a business key field its rule needs.
    MissingKey,
    /// A rule's open state reached its bound; ingest is being refused.
    Capacity,
}

impl BreakKind {
    pub const ALL: [BreakKind; 10] = [
        BreakKind::AmountMismatch,
        BreakKind::FieldMismatch,
        BreakKind::MissingCounterpart,
        BreakKind::Duplicate,
        BreakKind::AmbiguousMatch,
        BreakKind::ConservationViolation,
        BreakKind::BalanceDiscontinuity,
        BreakKind::SourceSilent,
        BreakKind::MissingKey,
        BreakKind::Capacity,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            BreakKind::AmountMismatch => "amount_mismatch",
            BreakKind::FieldMismatch => "field_mismatch",
            BreakKind::MissingCounterpart => "missing_counterpart",
            BreakKind::Duplicate => "duplicate",
            BreakKind::AmbiguousMatch => "ambiguous_match",
            BreakKind::ConservationViolation => "conservation_violation",
            BreakKind::BalanceDiscontinuity => "balance_discontinuity",
            BreakKind::SourceSilent => "source_silent",
            BreakKind::MissingKey => "missing_key",
            BreakKind::Capacity => "capacity",
        }
    }

    pub fn parse(text: &str) -> Option<BreakKind> {
        BreakKind::ALL.into_iter().find(|k| k.as_str() == text)
    }
}

/// One record a break rests on.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Evidence {
    pub record_id: String,
    pub source: String,
    pub kind: String,
    pub event_time: Millis,
    /// Decimal string in the currency's scale.
    pub amount: String,
    pub currency: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub trace_id: Option<String>,
    /// Where the edge can find the whole record (its position in the write-ahead log).
    pub loc: u64,
}

/// A disagreement found by a rule.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Break {
    /// Assigned in emission order; the same input always gives the same ids.
    pub id: u64,
    pub rule: String,
    pub rule_version: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub link: Option<String>,
    pub kind: BreakKind,
    /// The business key values, joined with `|`.
    pub key: String,
    /// The side a missing record belongs to (`left`, `right`, `upstream`...).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub side: Option<String>,
    /// The field that differs, for field mismatches.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub field: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub expected: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub actual: Option<String>,
    pub message: String,
    pub evidence: Vec<Evidence>,
    /// Set when the evidence carries a drill marker: the break belongs to that drill.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub drill: Option<String>,
    /// Engine time at which the evidence was complete (the deadline, or the arrival of
    /// the record that completed it).
    pub complete_at: Millis,
    /// Engine time at which the break was emitted.
    pub emitted_at: Millis,
}

impl Break {
    /// A break of `rule` with everything else empty: callers fill in what they know with
    /// struct update syntax (`Break { message, ..Break::of(...) }`).
    pub(crate) fn of(
        id: u64,
        rule: &crate::rules::Rule,
        rule_version: &str,
        kind: BreakKind,
        key: String,
        complete_at: Millis,
        emitted_at: Millis,
    ) -> Break {
        Break {
            id,
            rule: rule.name.clone(),
            rule_version: rule_version.to_string(),
            link: rule.link.clone(),
            kind,
            key,
            side: None,
            field: None,
            expected: None,
            actual: None,
            message: String::new(),
            evidence: Vec::new(),
            drill: None,
            complete_at,
            emitted_at,
        }
    }

    pub fn detection_latency_ms(&self) -> Millis {
        (self.emitted_at - self.complete_at).max(0)
    }
}

/// The breaks among `events`, each with whether a later event resolved it.
pub fn breaks_with_resolution(events: &[Event]) -> Vec<(&Break, bool)> {
    let resolved: std::collections::HashSet<u64> = events
        .iter()
        .filter_map(|e| match e {
            Event::Resolved { break_id, .. } => Some(*break_id),
            Event::Break(_) => None,
        })
        .collect();
    events
        .iter()
        .filter_map(|e| match e {
            Event::Break(b) => Some((b, resolved.contains(&b.id))),
            Event::Resolved { .. } => None,
        })
        .collect()
}

// Breaks are rare next to the records that produce them; boxing them would add an
// allocation for no gain.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum Event {
    Break(Break),
    /// An earlier break no longer holds: its evidence was amended into agreement, a late
    /// counterpart arrived, or a silent source resumed.
    Resolved {
        break_id: u64,
        by_record: Option<String>,
        reason: String,
        at: Millis,
    },
}
