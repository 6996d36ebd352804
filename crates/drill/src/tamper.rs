//! Typed data tampering on JSON bodies. The [`Injector`] holds a drill's faults and their
//! hit counts and decides, for each body it is shown, whether a fault hits it and what the
//! body becomes. It never changes a body it fails on: a mutation is worked out on a copy
//! and only handed back whole, so a failed injection leaves the traffic as it was.
//!
//! Which keys a fault hits is deterministic: a hash of the drill, the fault and the key
//! against `percent_max`, so the same key is hit on every record or on none, and a rerun
//! with the same drill id hits the same keys.

use rust_decimal::prelude::ToPrimitive;
use rust_decimal::{Decimal, RoundingStrategy};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use steadfast_model::{Currency, Money};

use crate::spec::{DrillSpec, Fault, Filter, Mutation, Vip};

/// One body a fault hit: what it was and what it became, so it can be corrected later.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hit {
    pub fault: usize,
    pub key: String,
    pub record_id: Option<String>,
    pub field: Option<String>,
    pub original: Option<Value>,
    pub tampered: Option<Value>,
    pub at_ms: i64,
}

/// What to do with a body.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Send this body instead of the original.
    Replace(Value),
    /// Send the original, then this copy under a new record id.
    Duplicate(Value),
    /// Do not send it.
    Drop,
    /// Send the original this many milliseconds later (a delayed record, or added latency).
    Delay(u64),
    /// Answer with this status instead of forwarding.
    Respond(u16),
    /// Reset the client's connection.
    Reset,
    /// Wait this long, then answer 504 without forwarding.
    Timeout(u64),
    /// Forward, and send the response body at this many bytes per second.
    Throttle(u64),
    /// Never answer.
    BlackHole,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TamperError {
    #[error("the body has no field {0:?}")]
    NoField(String),
    #[error("field {field:?} is not an amount in the body's currency: {why}")]
    NotAnAmount { field: String, why: String },
    #[error("the scaled amount is out of range")]
    OutOfRange,
}

pub struct Injector {
    drill: String,
    faults: Vec<Fault>,
    hits: Vec<u64>,
}

/// Matches `*` (any run) and `?` (one character); everything else literally.
pub fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

fn attr<'a>(body: &'a Value, name: &str) -> Option<&'a str> {
    body.get("attributes")
        .and_then(|a| a.get(name))
        .or_else(|| body.get(name))
        .and_then(|v| v.as_str())
}

fn admits(filter: &Filter, key: &str, body: &Value) -> bool {
    let vip = attr(body, "vip") == Some("true");
    let key_ok = filter.keys_matching.as_deref().is_none_or(|g| glob(g, key));
    let vip_ok = match filter.vip {
        Vip::Any => true,
        Vip::Only => vip,
        Vip::Never => !vip,
    };
    let test_ok = !filter.test_accounts_only || attr(body, "test_account") == Some("true");
    key_ok && vip_ok && test_ok
}

fn sampled(drill: &str, fault: usize, key: &str, percent_max: u8) -> bool {
    let h = xxhash_rust::xxh3::xxh3_64(format!("{drill}\u{0}{fault}\u{0}{key}").as_bytes());
    (h % 100) < percent_max as u64
}

/// `ms` ± up to `jitter` (uniform, deterministic per drill, fault and hit).
fn jittered(drill: &str, fault: usize, n: u64, ms: u64, jitter: u64) -> u64 {
    if jitter == 0 {
        return ms;
    }
    let h = xxhash_rust::xxh3::xxh3_64(format!("{drill}\u{0}{fault}\u{0}{n}").as_bytes());
    ms - jitter + h % (2 * jitter + 1)
}

fn field_mut<'a>(body: &'a mut Value, path: &str) -> Option<&'a mut Value> {
    path.split('.').try_fold(body, |v, part| v.get_mut(part))
}

fn currency_of(body: &Value, field: &str) -> Result<Currency, TamperError> {
    let code = body
        .get("currency")
        .and_then(|c| c.as_str())
        .ok_or_else(|| TamperError::NotAnAmount {
            field: field.into(),
            why: "the body has no `currency`".into(),
        })?;
    Currency::from_code(code).map_err(|e| TamperError::NotAnAmount {
        field: field.into(),
        why: e.to_string(),
    })
}

fn amount_of(v: &Value, currency: Currency, field: &str) -> Result<Money, TamperError> {
    let text = v.as_str().ok_or_else(|| TamperError::NotAnAmount {
        field: field.into(),
        why: "amounts are decimal strings".into(),
    })?;
    Money::parse(text, currency).map_err(|e| TamperError::NotAnAmount {
        field: field.into(),
        why: e.to_string(),
    })
}

/// Works a value-changing mutation out on a copy of the body.
fn mutate(
    body: &Value,
    path: &str,
    m: &Mutation,
) -> Result<(Value, Option<Value>, Option<Value>), TamperError> {
    let mut out = body.clone();
    let currency = match m {
        Mutation::Scale(_) | Mutation::OffsetMinor(_) => Some(currency_of(body, path)?),
        _ => None,
    };
    if let Mutation::DropField = m {
        let (parent, leaf) = match path.rsplit_once('.') {
            Some((p, l)) => (field_mut(&mut out, p), l),
            None => (Some(&mut out), path),
        };
        let original = parent
            .and_then(|p| p.as_object_mut())
            .and_then(|o| o.remove(leaf))
            .ok_or_else(|| TamperError::NoField(path.into()))?;
        return Ok((out, Some(original), None));
    }
    let slot = field_mut(&mut out, path).ok_or_else(|| TamperError::NoField(path.into()))?;
    let original = slot.clone();
    let tampered = match m {
        Mutation::Set(v) => v.clone(),
        Mutation::OffsetMinor(d) => {
            let c = currency.expect("amount mutations have a currency");
            let a = amount_of(&original, c, path)?;
            let minor = a.minor.checked_add(*d).ok_or(TamperError::OutOfRange)?;
            Value::String(Money { minor, currency: c }.to_decimal_string())
        }
        Mutation::Scale(factor) => {
            let c = currency.expect("amount mutations have a currency");
            let a = amount_of(&original, c, path)?;
            let f: Decimal = factor.parse().map_err(|_| TamperError::OutOfRange)?;
            // Exact: minor units times the factor, rounded half to even to a whole unit.
            let minor = (Decimal::from(a.minor) * f)
                .round_dp_with_strategy(0, RoundingStrategy::MidpointNearestEven)
                .to_i64()
                .ok_or(TamperError::OutOfRange)?;
            Value::String(Money { minor, currency: c }.to_decimal_string())
        }
        _ => unreachable!("only value-changing mutations come here"),
    };
    *slot = tampered.clone();
    Ok((out, Some(original), Some(tampered)))
}

impl Injector {
    pub fn new(drill_id: &str, spec: &DrillSpec) -> Injector {
        Injector {
            drill: drill_id.into(),
            faults: spec.faults.clone(),
            hits: vec![0; spec.faults.len()],
        }
    }

    /// Hits made per fault so far.
    pub fn hits(&self) -> &[u64] {
        &self.hits
    }

    /// Whether every fault has made all the hits it may.
    pub fn exhausted(&self) -> bool {
        self.faults
            .iter()
            .zip(&self.hits)
            .all(|(f, h)| *h >= f.limits.hits_max)
    }

    /// Shows the injector one body of `kind` with business key `key`. The first fault that
    /// applies and still has hits left decides; a failure changes nothing and counts no hit.
    pub fn apply(
        &mut self,
        kind: &str,
        key: &str,
        body: &Value,
        now_ms: i64,
    ) -> Result<Option<(Action, Hit)>, TamperError> {
        for (i, f) in self.faults.iter().enumerate() {
            if f.kind != kind
                || self.hits[i] >= f.limits.hits_max
                || !admits(&f.filter, key, body)
                || !sampled(&self.drill, i, key, f.limits.percent_max)
            {
                continue;
            }
            let record_id = body
                .get("record_id")
                .and_then(|v| v.as_str())
                .map(String::from);
            let mut hit = Hit {
                fault: i,
                key: key.into(),
                record_id: record_id.clone(),
                field: f.field.clone(),
                original: None,
                tampered: None,
                at_ms: now_ms,
            };
            let action = match &f.mutation {
                Mutation::Duplicate => {
                    let mut copy = body.clone();
                    let dup = format!(
                        "{}~dup~{}",
                        record_id.as_deref().unwrap_or("record"),
                        self.drill
                    );
                    if let Some(obj) = copy.as_object_mut() {
                        obj.insert("record_id".into(), Value::String(dup.clone()));
                    }
                    hit.tampered = Some(Value::String(dup));
                    Action::Duplicate(copy)
                }
                Mutation::DropRecord => Action::Drop,
                Mutation::DelayMs(ms) => Action::Delay(*ms),
                Mutation::Latency { ms, jitter_ms } => {
                    Action::Delay(jittered(&self.drill, i, self.hits[i], *ms, *jitter_ms))
                }
                Mutation::Error(status) => Action::Respond(*status),
                Mutation::Reset => Action::Reset,
                Mutation::Timeout(ms) => Action::Timeout(*ms),
                Mutation::Bandwidth(b) => Action::Throttle(*b),
                Mutation::BlackHole => Action::BlackHole,
                Mutation::SwapCurrency(code) => {
                    let mut out = body.clone();
                    let slot = out
                        .get_mut("currency")
                        .ok_or_else(|| TamperError::NoField("currency".into()))?;
                    hit.field = Some("currency".into());
                    hit.original = Some(slot.clone());
                    *slot = Value::String(code.clone());
                    hit.tampered = Some(slot.clone());
                    Action::Replace(out)
                }
                m => {
                    let path = f
                        .field
                        .as_deref()
                        .expect("validated: value mutations name a field");
                    let (out, original, tampered) = mutate(body, path, m)?;
                    hit.original = original;
                    hit.tampered = tampered;
                    Action::Replace(out)
                }
            };
            self.hits[i] += 1;
            return Ok(Some((action, hit)));
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::parse_spec;
    use serde_json::json;

    fn spec(mutation: &str, extra: &str) -> DrillSpec {
        parse_spec(&format!(
            "name = \"t\"\nrules = [\"r\"]\n[[faults]]\nkind = \"bill\"\nfield = \"amount\"\nmutation = {mutation}\n{extra}"
        ))
        .unwrap()
    }

    fn bill(id: &str, amount: &str, currency: &str) -> Value {
        json!({"record_id": id, "amount": amount, "currency": currency, "attributes": {"vip": "false"}})
    }

    fn once(mutation: &str, body: Value) -> Result<Option<(Action, Hit)>, TamperError> {
        Injector::new("d1", &spec(mutation, "")).apply("bill", "K1", &body, 5)
    }

    fn replaced(mutation: &str, body: Value) -> Value {
        match once(mutation, body).unwrap().unwrap().0 {
            Action::Replace(v) => v,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn amount_mutations_are_exact_in_the_currency_scale() {
        let cases = [
            ("{ offset_minor = 1 }", "10.00", "USD", "10.01"),
            ("{ offset_minor = -5 }", "10.00", "USD", "9.95"),
            ("{ offset_minor = 1 }", "1000", "JPY", "1001"),
            ("{ offset_minor = 1 }", "1.000", "KWD", "1.001"),
            ("{ scale = \"1.5\" }", "10.01", "USD", "15.02"), // 1501.5 → 1502 (half to even)
            ("{ scale = \"1.5\" }", "10.03", "USD", "15.04"), // 1504.5 → 1504
            ("{ scale = \"0\" }", "10.00", "USD", "0.00"),
            ("{ set = \"99.99\" }", "10.00", "USD", "99.99"),
        ];
        for (m, amount, cur, want) in cases {
            assert_eq!(
                replaced(m, bill("b", amount, cur))["amount"],
                want,
                "{m} on {amount} {cur}"
            );
        }
    }

    #[test]
    fn a_hit_records_the_original_and_the_tampered_value() {
        let (_, hit) = once("{ offset_minor = 1 }", bill("b7", "10.00", "EUR"))
            .unwrap()
            .unwrap();
        assert_eq!(hit.record_id.as_deref(), Some("b7"));
        assert_eq!(
            (hit.original, hit.tampered),
            (Some(json!("10.00")), Some(json!("10.01")))
        );
    }

    #[test]
    fn record_faults_and_field_drops() {
        let b = bill("b1", "1.00", "USD");
        assert!(replaced("\"drop_field\"", b.clone())
            .get("amount")
            .is_none());
        let swapped = Injector::new("d", &spec("{ swap_currency = \"EUR\" }", ""))
            .apply("bill", "K", &b, 0)
            .unwrap()
            .unwrap();
        assert!(
            matches!(swapped.0, Action::Replace(ref v) if v["currency"] == "EUR" && v["amount"] == "1.00")
        );
        match once("\"duplicate\"", b.clone()).unwrap().unwrap().0 {
            Action::Duplicate(v) => {
                assert_eq!(v["record_id"], "b1~dup~d1", "a new record id, not a retry")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            once("\"drop_record\"", b.clone()).unwrap().unwrap().0,
            Action::Drop
        );
        assert_eq!(
            once("{ delay_ms = 250 }", b).unwrap().unwrap().0,
            Action::Delay(250)
        );
    }

    #[test]
    fn a_failed_injection_changes_nothing_and_counts_no_hit() {
        let mut inj = Injector::new("d", &spec("{ offset_minor = 1 }", ""));
        let not_money = json!({"record_id": "b", "amount": 10, "currency": "USD"});
        assert!(matches!(
            inj.apply("bill", "K", &not_money, 0),
            Err(TamperError::NotAnAmount { .. })
        ));
        let no_field = json!({"record_id": "b", "currency": "USD"});
        assert!(matches!(
            inj.apply("bill", "K", &no_field, 0),
            Err(TamperError::NoField(_))
        ));
        let too_fine = bill("b", "10.001", "USD");
        assert!(inj.apply("bill", "K", &too_fine, 0).is_err());
        assert_eq!(inj.hits(), &[0]);
    }

    #[test]
    fn filters_and_limits_bound_what_is_hit() {
        let extra =
            "filter = { keys_matching = \"ORD-*\", vip = \"never\" }\nlimits = { hits_max = 3 }";
        let mut inj = Injector::new("d", &spec("{ offset_minor = 1 }", extra));
        let vip = json!({"record_id": "v", "amount": "1.00", "currency": "USD", "attributes": {"vip": "true"}});
        assert!(
            inj.apply("bill", "ORD-1", &vip, 0).unwrap().is_none(),
            "never VIP"
        );
        assert!(
            inj.apply("bill", "X-1", &bill("b", "1.00", "USD"), 0)
                .unwrap()
                .is_none(),
            "key pattern"
        );
        assert!(
            inj.apply("payment", "ORD-1", &bill("b", "1.00", "USD"), 0)
                .unwrap()
                .is_none(),
            "other kind"
        );
        for i in 0..5 {
            let hit = inj
                .apply("bill", &format!("ORD-{i}"), &bill("b", "1.00", "USD"), 0)
                .unwrap();
            assert_eq!(hit.is_some(), i < 3, "at most 3 hits");
        }
        assert!(inj.exhausted());
    }

    #[test]
    fn percent_limits_sample_keys_deterministically() {
        let extra = "limits = { hits_max = 100000, percent_max = 10 }";
        let run = || {
            let mut inj = Injector::new("drill-9", &spec("{ offset_minor = 1 }", extra));
            (0..10_000)
                .filter(|i| {
                    inj.apply("bill", &format!("K{i}"), &bill("b", "1.00", "USD"), 0)
                        .unwrap()
                        .is_some()
                })
                .collect::<Vec<_>>()
        };
        let hit = run();
        assert!(
            (800..1200).contains(&hit.len()),
            "about 10 % of keys: {}",
            hit.len()
        );
        assert_eq!(hit, run(), "the same keys every time");
    }

    #[test]
    fn globs() {
        for (p, t, want) in [
            ("ORD-*", "ORD-1", true),
            ("ORD-*", "ORX-1", false),
            ("*-7", "A-B-7", true),
            ("A?C", "ABC", true),
            ("A?C", "AC", false),
            ("*", "", true),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
        ] {
            assert_eq!(glob(p, t), want, "{p} ~ {t}");
        }
    }
}
