//! The streaming engine against the batch reference model, over random streams with
//! reordering, retries, duplicates, late arrivals and tampered fields.

use proptest::prelude::*;
use steadfast_verify::reference::{reconcile, Input, RefBreak};
use steadfast_verify::Limits;

use crate::support::*;

const T0: i64 = 1_700_000_000_000;

#[derive(Debug, Clone)]
struct KeyPlan {
    payment: bool,
    bill: bool,
    failed: bool,
    tamper_amount: bool,
    tamper_account: bool,
    duplicate_payment: bool,
    duplicate_bill: bool,
    retry: bool,
}

fn key_plan() -> impl Strategy<Value = KeyPlan> {
    (any::<[bool; 8]>(), 0u8..10).prop_map(|(b, p)| KeyPlan {
        payment: p < 9,
        bill: b[0] || b[1] || b[2],
        failed: b[3] && b[4] && b[5],
        tamper_amount: b[1] && b[6],
        tamper_account: b[2] && b[7] && b[0],
        duplicate_payment: b[4] && b[6] && b[7],
        duplicate_bill: b[5] && b[6] && b[3],
        retry: b[7],
    })
}

/// Random input: the records each plan implies, shuffled into arrival order and cut into
/// batches, with ticks in between and event times lagging arrival by up to 3 s.
fn stream() -> impl Strategy<Value = (Vec<Input>, bool)> {
    (
        prop::collection::vec(key_plan(), 1..40),
        any::<u64>(),
        prop::collection::vec((0i64..1500, 0i64..3000, any::<bool>()), 200),
        any::<bool>(),
    )
        .prop_map(|(plans, seed, steps, flushed)| {
            let mut records = Vec::new();
            for (k, plan) in plans.iter().enumerate() {
                let order = format!("O{k}");
                let mut p = payment(&format!("p{k}"), &order, "10.00", 0);
                p.account = Some("A1".into());
                if plan.failed {
                    p.status = Some("FAILED".into());
                }
                let mut b = bill(
                    &format!("b{k}"),
                    &order,
                    if plan.tamper_amount { "10.01" } else { "10.00" },
                    0,
                );
                b.attributes.insert(
                    "payer_account".into(),
                    if plan.tamper_account { "A2" } else { "A1" }.into(),
                );
                if plan.payment {
                    records.push(p.clone());
                    if plan.retry {
                        records.push(p.clone());
                    }
                    if plan.duplicate_payment {
                        let mut d = p.clone();
                        d.record_id = format!("p{k}-dup");
                        records.push(d);
                    }
                }
                if plan.bill {
                    records.push(b.clone());
                    if plan.duplicate_bill {
                        let mut d = b.clone();
                        d.record_id = format!("b{k}-dup");
                        records.push(d);
                    }
                }
            }
            // Deterministic shuffle from the seed.
            let mut state = seed | 1;
            for i in (1..records.len()).rev() {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                records.swap(i, (state % (i as u64 + 1)) as usize);
            }
            let mut inputs = Vec::new();
            let mut now = T0;
            let mut rest = records.as_slice();
            for (advance, lag, tick) in steps {
                if rest.is_empty() {
                    break;
                }
                now += advance;
                if tick {
                    inputs.push(Input::Tick(now));
                } else {
                    let n = ((advance as usize) % 4 + 1).min(rest.len());
                    let batch: Vec<_> = rest[..n]
                        .iter()
                        .map(|r| {
                            let mut r = r.clone();
                            r.event_time = now - lag;
                            r
                        })
                        .collect();
                    rest = &rest[n..];
                    inputs.push(Input::Records(now, batch));
                }
            }
            if !rest.is_empty() {
                inputs.push(Input::Records(now, rest.to_vec()));
            }
            inputs.push(Input::Tick(now + 2_000));
            (inputs, flushed)
        })
}

fn run_engine(inputs: &[Input], flushed: bool) -> Vec<RefBreak> {
    let limits = Limits {
        closed_retention_ms: i64::MAX / 4,
        ..Limits::default()
    };
    let mut h = Harness::with_limits(limits);
    for input in inputs {
        match input {
            Input::Records(now, rs) => {
                h.feed(*now, rs);
            }
            Input::Tick(now) => {
                h.tick(*now);
            }
        }
    }
    if flushed {
        h.engine.flush(&mut h.events);
    }

    let mut out: Vec<RefBreak> = steadfast_verify::breaks_with_resolution(&h.events)
        .into_iter()
        .filter(|(b, _)| b.rule == "payment-bill")
        .map(|(b, resolved)| RefBreak {
            rule: b.rule.clone(),
            kind: b.kind,
            key: b.key.clone(),
            side: b.side.clone(),
            field: b.field.clone(),
            resolved,
        })
        .collect();
    out.sort();
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn engine_reports_exactly_the_reference_breaks((inputs, flushed) in stream()) {
        let expected = reconcile(&rules(), &inputs, flushed);
        let got = run_engine(&inputs, flushed);
        prop_assert_eq!(got, expected);
    }
}
