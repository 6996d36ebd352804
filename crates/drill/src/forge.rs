//! Lossless forging: fund records shaped from recent real traffic, with drill-marked
//! synthetic keys and record ids, that go into the verification path only. For each pair
//! the faults decide (through the same [`Injector`] the proxy uses) whether one side is
//! tampered with; pairs no fault hits are clean controls, which must raise nothing.
//!
//! 1:1 `match` rules get pairs: a copy of a recent record of each side, made to agree on
//! every compared field. 1:N `sum_match` rules get groups: an upstream copy and three
//! downstream parts that add up to it exactly. Then the faults tamper with them.
//!
//! Business filters look at the real record a forgery is shaped from (its key and
//! attributes), so "only VIP users" forges from VIP traffic.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use steadfast_model::wire::{parse_record, WireRecord};
use steadfast_model::FundRecord;
use steadfast_verify::rules::{RuleKind, Side};
use steadfast_verify::RuleSet;

use crate::spec::DrillSpec;
use crate::tamper::{Action, Hit, Injector};

/// Most pairs (groups) one plan forges.
pub const FORGED_PAIRS_MAX: usize = 100_000;
/// Downstream parts of a forged 1:N (`sum_match`) group.
const SUM_PARTS: usize = 3;

/// A forged record and how long after the drill's start it is sent.
#[derive(Clone, Debug, PartialEq)]
pub struct Forged {
    pub record: FundRecord,
    pub delay_ms: u64,
}

/// One fault planted on a forged pair: the rule and key its break will carry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Planted {
    pub rule: String,
    pub key: String,
    pub hit: Hit,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub records: Vec<Forged>,
    pub planted: Vec<Planted>,
    /// Keys of clean control pairs (no fault).
    pub controls: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ForgeError {
    #[error("rule {0:?} does not exist")]
    UnknownRule(String),
    #[error("fund link {0:?} does not exist or has no rules")]
    UnknownLink(String),
    #[error(
        "rule {0:?} is neither a match nor a sum_match rule; lossless drills forge only those"
    )]
    Unsupported(String),
    #[error("no recent {0} record to shape a forgery from; send some traffic first")]
    NoSample(String),
    #[error("fault {fault} makes records that ingest refuses: {why}")]
    Refused { fault: usize, why: String },
    #[error("a fault cannot be applied to the forged records: {0}")]
    Tamper(String),
    #[error("at most {FORGED_PAIRS_MAX} pairs per plan")]
    TooMany,
}

/// The rules a drill targets: its `rules`, or every rule of its `link`.
pub fn target_rules<'a>(
    spec: &DrillSpec,
    rules: &'a RuleSet,
) -> Result<Vec<&'a steadfast_verify::rules::Rule>, ForgeError> {
    if let Some(link) = &spec.link {
        let found: Vec<_> = rules
            .rules
            .iter()
            .filter(|r| r.link.as_deref() == Some(link.as_str()))
            .collect();
        if found.is_empty() {
            return Err(ForgeError::UnknownLink(link.clone()));
        }
        return Ok(found);
    }
    spec.rules
        .iter()
        .map(|name| {
            rules
                .rules
                .iter()
                .find(|r| &r.name == name)
                .ok_or_else(|| ForgeError::UnknownRule(name.clone()))
        })
        .collect()
}

fn admitted(side: &Side, r: &FundRecord) -> bool {
    r.source == side.source
        && r.kind == side.kind
        && r.drill.is_none()
        && side
            .filter
            .iter()
            .all(|(f, allowed)| r.field(f).is_some_and(|v| allowed.iter().any(|a| a == v)))
}

/// The newest real record of a side.
fn sample<'a>(side: &Side, samples: &'a [FundRecord]) -> Result<&'a FundRecord, ForgeError> {
    samples
        .iter()
        .rev()
        .find(|r| admitted(side, r))
        .ok_or_else(|| ForgeError::NoSample(format!("{}/{}", side.source, side.kind)))
}

fn set_field(r: &mut FundRecord, name: &str, value: Option<String>) {
    match name {
        "account" => r.account = value,
        "counter_account" => r.counter_account = value,
        "status" => r.status = value,
        "order_id" => r.order_id = value,
        _ => match value {
            Some(v) => {
                r.attributes.insert(name.into(), v);
            }
            None => {
                r.attributes.remove(name);
            }
        },
    }
}

fn key_of(side: &Side, r: &FundRecord) -> String {
    side.key
        .iter()
        .map(|k| r.field(k).unwrap_or(""))
        .collect::<Vec<_>>()
        .join("|")
}

/// A forgery of `sample` for `side`: synthetic key values and record id, the drill marker.
fn shape(
    drill: &str,
    rule: &str,
    side: &Side,
    sample: &FundRecord,
    values: &[String],
    n: usize,
    now_ms: i64,
) -> FundRecord {
    let mut r = sample.clone();
    r.record_id = format!("drill.{drill}.{}.{}.{n}", values.join("."), side.kind);
    r.keys = BTreeMap::new();
    for (k, v) in side.key.iter().zip(values) {
        r.keys.insert(k.clone(), v.clone());
    }
    r.drill = Some(drill.into());
    r.attributes
        .insert(steadfast_model::DRILL_RULES_ATTR.into(), rule.into());
    r.event_time = now_ms;
    r.trace_id = None;
    r.order_id = None;
    r.amends = None;
    r
}

fn reparse(fault: usize, json: &serde_json::Value) -> Result<FundRecord, ForgeError> {
    parse_record(0, &json.to_string()).map_err(|e| ForgeError::Refused {
        fault,
        why: e.message,
    })
}

/// Plans `pairs` forged pairs per target rule.
pub fn forge(
    drill: &str,
    spec: &DrillSpec,
    rules: &RuleSet,
    samples: &[FundRecord],
    pairs: usize,
    now_ms: i64,
) -> Result<Plan, ForgeError> {
    if pairs > FORGED_PAIRS_MAX {
        return Err(ForgeError::TooMany);
    }
    let mut injector = Injector::new(drill, spec);
    let mut plan = Plan {
        records: Vec::new(),
        planted: Vec::new(),
        controls: Vec::new(),
    };
    for rule in target_rules(spec, rules)? {
        // The sides of the rule and the real record each is shaped from.
        let (sides, compare): (Vec<&Side>, &[steadfast_verify::rules::FieldPair]) = match &rule.kind
        {
            RuleKind::Match {
                left,
                right,
                compare,
            } => (vec![left, right], compare),
            RuleKind::SumMatch {
                upstream,
                downstream,
            } => (vec![upstream, downstream], &[]),
            _ => return Err(ForgeError::Unsupported(rule.name.clone())),
        };
        let real: Vec<&FundRecord> = sides
            .iter()
            .map(|side| sample(side, samples))
            .collect::<Result<_, _>>()?;
        let is_sum = matches!(rule.kind, RuleKind::SumMatch { .. });
        for i in 0..pairs {
            let values: Vec<String> = (0..sides[0].key.len())
                .map(|j| format!("DRILL-{drill}-{}-{i}-{j}", rule.name))
                .collect();
            let first = shape(drill, &rule.name, sides[0], real[0], &values, 0, now_ms);
            let mut group: Vec<(FundRecord, &Side, &FundRecord)> = Vec::new();
            if is_sum {
                // The upstream amount split exactly over the parts; the last takes the rest.
                let total = first.amount.minor;
                let share = total / SUM_PARTS as i64;
                for n in 0..SUM_PARTS {
                    let mut part = shape(drill, &rule.name, sides[1], real[1], &values, n, now_ms);
                    part.amount = first.amount;
                    part.amount.minor = if n + 1 == SUM_PARTS {
                        total - share * (SUM_PARTS as i64 - 1)
                    } else {
                        share
                    };
                    group.push((part, sides[1], real[1]));
                }
            } else {
                // Agree on everything the rule compares, so only the fault can break it.
                let mut other = shape(drill, &rule.name, sides[1], real[1], &values, 0, now_ms);
                other.amount = first.amount;
                for pair in compare {
                    if pair.left != "amount" && pair.left != "currency" {
                        set_field(
                            &mut other,
                            &pair.right,
                            first.field(&pair.left).map(String::from),
                        );
                    }
                }
                group.push((other, sides[1], real[1]));
            }
            group.insert(0, (first, sides[0], real[0]));
            let key = values.join("|");
            let mut planted = false;
            for (rec, side, real) in group.iter_mut() {
                if planted {
                    break;
                }
                let json =
                    serde_json::to_value(WireRecord::from(&*rec)).expect("records serialize");
                let decided = injector
                    .apply(&side.kind, &key_of(side, real), &json, now_ms)
                    .map_err(|e| ForgeError::Tamper(e.to_string()))?;
                let Some((action, mut hit)) = decided else {
                    continue;
                };
                hit.key = key.clone();
                let fault = hit.fault;
                match action {
                    Action::Replace(v) => *rec = reparse(fault, &v)?,
                    Action::Duplicate(v) => plan.records.push(Forged {
                        record: reparse(fault, &v)?,
                        delay_ms: 0,
                    }),
                    Action::Drop => rec.record_id.clear(),
                    Action::Delay(ms) => {
                        // Held back: sent after the rest of its group, by the delay.
                        plan.records.push(Forged {
                            record: rec.clone(),
                            delay_ms: ms,
                        });
                        rec.record_id.clear();
                    }
                    // Validation keeps availability faults out of lossless drills.
                    Action::Respond(_)
                    | Action::Reset
                    | Action::Timeout(_)
                    | Action::Throttle(_)
                    | Action::BlackHole => {
                        return Err(ForgeError::Tamper(
                            "availability faults need the proxy (mode = \"lossy\")".into(),
                        ))
                    }
                }
                plan.planted.push(Planted {
                    rule: rule.name.clone(),
                    key: key.clone(),
                    hit,
                });
                planted = true;
            }
            if !planted {
                plan.controls.push(key.clone());
            }
            // A cleared record id marks a record a fault dropped or moved.
            plan.records.extend(
                group
                    .into_iter()
                    .filter(|(rec, _, _)| !rec.record_id.is_empty())
                    .map(|(record, _, _)| Forged {
                        record,
                        delay_ms: 0,
                    }),
            );
        }
    }
    plan.records.sort_by_key(|f| f.delay_ms);
    Ok(plan)
}
