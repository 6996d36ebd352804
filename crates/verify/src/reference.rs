//! A batch reference reconciler for 1:1 match rules, written for obviousness rather than
//! speed: it sees the whole input at once and decides each key on its own. The streaming
//! engine must report exactly the breaks this model reports, for any input.

use std::collections::{BTreeMap, HashSet};

use steadfast_model::{FundRecord, Millis};

use crate::rules::{RuleKind, RuleSet, Side};
use crate::BreakKind;

/// One step of input, as the engine receives it.
#[derive(Clone, Debug)]
pub enum Input {
    Records(Millis, Vec<FundRecord>),
    Tick(Millis),
}

/// A break as the model describes it: what, where, and whether it ended resolved.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct RefBreak {
    pub rule: String,
    pub kind: BreakKind,
    pub key: String,
    pub side: Option<String>,
    pub field: Option<String>,
    pub resolved: bool,
}

fn key_of(side: &Side, r: &FundRecord) -> Option<String> {
    let parts: Option<Vec<&str>> = side.key.iter().map(|f| r.field(f)).collect();
    parts.map(|p| p.join("|"))
}

fn passes(side: &Side, r: &FundRecord) -> bool {
    side.filter
        .iter()
        .all(|(f, allowed)| r.field(f).is_some_and(|v| allowed.iter().any(|a| a == v)))
}

/// Reconciles the inputs against every match rule; `flushed` says whether the input
/// ended with end-of-input (all deadlines fire).
pub fn reconcile(rules: &RuleSet, inputs: &[Input], flushed: bool) -> Vec<RefBreak> {
    let mut out = Vec::new();
    // Records after de-duplication by record id, with the index of their input step.
    let mut seen = HashSet::new();
    let mut records: Vec<(usize, &FundRecord)> = Vec::new();
    let mut clock = Vec::new();
    let mut now = Millis::MIN;
    for (i, input) in inputs.iter().enumerate() {
        match input {
            Input::Records(t, rs) => {
                now = now.max(*t);
                for r in rs {
                    if seen.insert(r.record_id.clone()) {
                        records.push((i, r));
                    }
                }
            }
            Input::Tick(t) => now = now.max(*t),
        }
        clock.push(now);
    }
    for rule in &rules.rules {
        let RuleKind::Match {
            left,
            right,
            compare,
        } = &rule.kind
        else {
            continue;
        };
        let sides = [left, right];
        let mut by_key: BTreeMap<String, Vec<(usize, u8, &FundRecord)>> = BTreeMap::new();
        for &(i, r) in &records {
            for (s, side) in sides.iter().enumerate() {
                if r.source == side.source && r.kind == side.kind && passes(side, r) {
                    if let Some(k) = key_of(side, r) {
                        by_key.entry(k).or_default().push((i, s as u8, r));
                    }
                }
            }
        }
        for (key, arrivals) in by_key {
            let push = |out: &mut Vec<RefBreak>,
                        kind,
                        side: Option<&str>,
                        field: Option<String>,
                        resolved| {
                out.push(RefBreak {
                    rule: rule.name.clone(),
                    kind,
                    key: key.clone(),
                    side: side.map(String::from),
                    field,
                    resolved,
                })
            };
            let (first_step, first_side, first) = arrivals[0];
            let other = 1 - first_side;
            let deadline = first
                .event_time
                .saturating_add(sides[other as usize].lateness_ms);
            // The deadline fires at the first tick at or after the first arrival whose
            // clock has passed it (records alone never fire deadlines).
            let fire_step = (first_step..inputs.len())
                .find(|&i| matches!(inputs[i], Input::Tick(_)) && clock[i] >= deadline)
                .or(if flushed { Some(inputs.len()) } else { None });
            let mut same: Vec<&FundRecord> = Vec::new();
            let mut counterpart: Option<&FundRecord> = None;
            let mut missing_at_fire = false;
            for &(step, s, r) in &arrivals {
                let before_fire = fire_step.is_none_or(|f| step < f);
                if s == first_side && counterpart.is_none() && before_fire {
                    if !same.is_empty() {
                        push(
                            &mut out,
                            BreakKind::Duplicate,
                            Some(side_name(first_side)),
                            None,
                            false,
                        );
                    }
                    same.push(r);
                    continue;
                }
                if s == first_side || counterpart.is_some() {
                    push(
                        &mut out,
                        BreakKind::Duplicate,
                        Some(side_name(s)),
                        None,
                        false,
                    );
                    continue;
                }
                // The counterpart: arrived before the deadline fired, or late.
                if !before_fire {
                    missing_at_fire = true;
                }
                counterpart = Some(r);
            }
            let fired_missing = match (counterpart, fire_step) {
                (None, Some(_)) => true,
                (Some(_), Some(_)) => missing_at_fire,
                _ => false,
            };
            if fired_missing {
                push(
                    &mut out,
                    BreakKind::MissingCounterpart,
                    Some(side_name(other)),
                    None,
                    counterpart.is_some(),
                );
            }
            let Some(c) = counterpart else { continue };
            if same.len() > 1 {
                push(&mut out, BreakKind::AmbiguousMatch, None, None, false);
                continue;
            }
            let (l, r) = if first_side == 0 {
                (same[0], c)
            } else {
                (c, same[0])
            };
            for pair in compare {
                let differs = match pair.left.as_str() {
                    "amount" => l.amount != r.amount,
                    "currency" => l.amount.currency != r.amount.currency,
                    _ => l.field(&pair.left).unwrap_or("") != r.field(&pair.right).unwrap_or(""),
                };
                if differs {
                    let kind = if pair.left == "amount" {
                        BreakKind::AmountMismatch
                    } else {
                        BreakKind::FieldMismatch
                    };
                    let field = if pair.left == pair.right {
                        pair.left.clone()
                    } else {
                        format!("{}/{}", pair.left, pair.right)
                    };
                    push(&mut out, kind, None, Some(field), false);
                }
            }
        }
    }
    out.sort();
    out
}

fn side_name(side: u8) -> &'static str {
    if side == 0 {
        "left"
    } else {
        "right"
    }
}
