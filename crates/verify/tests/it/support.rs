use std::collections::BTreeMap;
use std::sync::Arc;

use steadfast_model::{Currency, Direction, FundRecord, Millis, Money};
use steadfast_verify::{parse_rules, Break, Engine, Event, Limits, RuleSet};

pub const RULES: &str = include_str!("../../../../examples/rules.toml");

pub fn rules() -> Arc<RuleSet> {
    Arc::new(parse_rules(RULES).unwrap())
}

pub fn rec(
    id: &str,
    source: &str,
    kind: &str,
    key: (&str, &str),
    amount: &str,
    t: Millis,
) -> FundRecord {
    let currency = Currency::from_code("USD").unwrap();
    FundRecord {
        record_id: id.into(),
        source: source.into(),
        kind: kind.into(),
        keys: BTreeMap::from([(key.0.to_string(), key.1.to_string())]),
        amount: Money::parse(amount, currency).unwrap(),
        account: None,
        counter_account: None,
        direction: None,
        status: Some("SUCCESS".into()),
        event_time: t,
        trace_id: None,
        order_id: None,
        drill: None,
        amends: None,
        attributes: BTreeMap::new(),
    }
}

pub fn payment(id: &str, order: &str, amount: &str, t: Millis) -> FundRecord {
    rec(
        id,
        "payment-core",
        "payment",
        ("order_no", order),
        amount,
        t,
    )
}

pub fn bill(id: &str, order: &str, amount: &str, t: Millis) -> FundRecord {
    rec(id, "billing", "bill", ("biz_id", order), amount, t)
}

pub fn entry(id: &str, txn: &str, amount: &str, dir: Direction, t: Millis) -> FundRecord {
    let mut r = rec(id, "accounting", "entry", ("txn_id", txn), amount, t);
    r.direction = Some(dir);
    r
}

/// An engine under test with a log of everything it emitted.
pub struct Harness {
    pub engine: Engine,
    pub events: Vec<Event>,
    pub loc: u64,
}

impl Harness {
    pub fn new() -> Harness {
        Harness::with_limits(Limits::default())
    }

    pub fn with_limits(limits: Limits) -> Harness {
        Harness {
            engine: Engine::new(rules(), limits),
            events: Vec::new(),
            loc: 0,
        }
    }

    pub fn feed(&mut self, now: Millis, records: &[FundRecord]) -> &mut Harness {
        let base = self.loc;
        self.loc += records.len() as u64;
        self.engine.ingest(
            now,
            records
                .iter()
                .enumerate()
                .map(|(i, r)| (base + i as u64, r)),
            &mut self.events,
        );
        self
    }

    pub fn tick(&mut self, now: Millis) -> &mut Harness {
        self.engine.tick(now, &mut self.events);
        self
    }

    pub fn breaks(&self) -> Vec<&Break> {
        self.events
            .iter()
            .filter_map(|e| {
                if let Event::Break(b) = e {
                    Some(b)
                } else {
                    None
                }
            })
            .collect()
    }

    /// Breaks not resolved by a later event.
    pub fn open(&self) -> Vec<&Break> {
        steadfast_verify::breaks_with_resolution(&self.events)
            .into_iter()
            .filter(|(_, resolved)| !resolved)
            .map(|(b, _)| b)
            .collect()
    }

    /// `kind key [side|field]` per break, for compact assertions.
    pub fn summary(&self) -> Vec<String> {
        self.breaks()
            .iter()
            .map(|b| {
                let mut s = format!("{} {} {}", b.rule, b.kind.as_str(), b.key);
                if let Some(side) = &b.side {
                    s += &format!(" side={side}");
                }
                if let Some(f) = &b.field {
                    s += &format!(" field={f}");
                }
                s
            })
            .collect()
    }
}
