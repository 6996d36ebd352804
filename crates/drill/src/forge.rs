//! Lossless forging: fund records shaped from recent real traffic, with drill-marked
//! synthetic keys and record ids, that go into the verification path only. For each pair
//! the faults decide (through the same [`Injector`] the proxy uses) whether one side is
//! tampered with; pairs no fault hits are clean controls, which must raise nothing.
//!
//! Only 1:1 `match` rules are forged from here: their two sides are copied from a recent
//! record of each side, made to agree on every compared field, then tampered with.
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

/// Most pairs one plan forges.
pub const FORGED_PAIRS_MAX: usize = 100_000;

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
    #[error("rule {0:?} is not a 1:1 match rule; lossless drills forge match rules only")]
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
    side: &Side,
    sample: &FundRecord,
    values: &[String],
    now_ms: i64,
) -> FundRecord {
    let mut r = sample.clone();
    r.record_id = format!("drill.{drill}.{}.{}", values.join("."), side.kind);
    r.keys = BTreeMap::new();
    for (k, v) in side.key.iter().zip(values) {
        r.keys.insert(k.clone(), v.clone());
    }
    r.drill = Some(drill.into());
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
        let RuleKind::Match {
            left,
            right,
            compare,
        } = &rule.kind
        else {
            return Err(ForgeError::Unsupported(rule.name.clone()));
        };
        let (ls, rs) = (sample(left, samples)?, sample(right, samples)?);
        for i in 0..pairs {
            let values: Vec<String> = (0..left.key.len())
                .map(|j| format!("DRILL-{drill}-{}-{i}-{j}", rule.name))
                .collect();
            let mut l = shape(drill, left, ls, &values, now_ms);
            let mut r = shape(drill, right, rs, &values, now_ms);
            // Agree on everything the rule compares, so only the fault can break the pair.
            r.amount = l.amount;
            for pair in compare {
                if pair.left != "amount" && pair.left != "currency" {
                    set_field(&mut r, &pair.right, l.field(&pair.left).map(String::from));
                }
            }
            let key = values.join("|");
            let mut planted = false;
            for (rec, side, real) in [(&mut l, left, ls), (&mut r, right, rs)] {
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
                let mut extra = None;
                let mut delay_ms = 0;
                match action {
                    Action::Replace(v) => *rec = reparse(fault, &v)?,
                    Action::Duplicate(v) => extra = Some(reparse(fault, &v)?),
                    Action::Drop => rec.record_id.clear(),
                    Action::Delay(ms) => delay_ms = ms,
                }
                plan.planted.push(Planted {
                    rule: rule.name.clone(),
                    key: key.clone(),
                    hit,
                });
                if let Some(x) = extra {
                    plan.records.push(Forged {
                        record: x,
                        delay_ms: 0,
                    });
                }
                if delay_ms > 0 {
                    // Held back: sent after its counterpart, by the delay.
                    plan.records.push(Forged {
                        record: rec.clone(),
                        delay_ms,
                    });
                    rec.record_id.clear();
                }
                planted = true;
            }
            if !planted {
                plan.controls.push(key.clone());
            }
            for rec in [l, r] {
                // A cleared record id marks a record a fault dropped or moved.
                if !rec.record_id.is_empty() {
                    plan.records.push(Forged {
                        record: rec,
                        delay_ms: 0,
                    });
                }
            }
        }
    }
    plan.records.sort_by_key(|f| f.delay_ms);
    Ok(plan)
}
