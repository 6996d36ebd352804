//! Lossless drills against the real verification engine: forged pairs through the shipped
//! rules, their breaks measured by the report.

use std::sync::Arc;

use steadfast_drill::{forge, parse_spec, Injection, Observed, Report};
use steadfast_model::FundRecord;
use steadfast_verify::{parse_rules, verify_batch, Event, Limits, RuleSet};

const RULES: &str = include_str!("../../../../examples/rules.toml");
const NOW: i64 = 1_700_000_000_000;

fn rules() -> RuleSet {
    parse_rules(RULES).unwrap()
}

fn record(json: serde_json::Value) -> FundRecord {
    steadfast_model::wire::parse_record(0, &json.to_string()).unwrap()
}

/// Recent real traffic: a matched payment and bill, as the systems reported them.
fn samples(vip: bool) -> Vec<FundRecord> {
    let attrs = serde_json::json!({"payer_account": "6222020200112233", "user_id": "u7", "vip": vip.to_string()});
    vec![
        record(serde_json::json!({
            "record_id": "p-real", "source": "payment-core", "kind": "payment",
            "keys": {"order_no": "ORD-77"}, "amount": "125.40", "currency": "EUR",
            "account": "6222020200112233", "status": "SUCCESS", "event_time": NOW - 5_000,
        })),
        record(serde_json::json!({
            "record_id": "b-real", "source": "billing", "kind": "bill",
            "keys": {"biz_id": "ORD-77"}, "amount": "125.40", "currency": "EUR",
            "event_time": NOW - 4_900, "attributes": attrs,
        })),
    ]
}

fn drill_breaks(events: &[Event], drill: &str) -> Vec<Observed> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Break(b) if b.drill.as_deref() == Some(drill) => Some(Observed {
                rule: b.rule.clone(),
                key: b.key.clone(),
                kind: b.kind.as_str().into(),
                detected_at_ms: b.emitted_at,
            }),
            _ => None,
        })
        .collect()
}

fn run(spec: &str, pairs: usize, vip: bool) -> (Report, Vec<Observed>, steadfast_drill::Plan) {
    let spec = parse_spec(spec).unwrap();
    let rules = rules();
    let plan = forge("d1", &spec, &rules, &samples(vip), pairs, NOW).unwrap();
    let records: Vec<&FundRecord> = plan.records.iter().map(|f| &f.record).collect();
    assert!(
        records.iter().all(|r| r.drill.as_deref() == Some("d1")),
        "every forged record is drill-marked"
    );
    assert!(records
        .iter()
        .all(|r| r.keys.values().all(|k| k.starts_with("DRILL-d1-"))));
    let events = verify_batch(Arc::new(rules), Limits::unbounded_batch(), records, |_| {});
    let observed = drill_breaks(&events, "d1");
    let injections: Vec<Injection> = plan
        .planted
        .iter()
        .map(|p| Injection {
            key: p.key.clone(),
            at_ms: NOW,
            corrected_at_ms: None,
        })
        .collect();
    let report = Report::new(&injections, &observed, &["payment-bill".into()], None);
    (report, observed, plan)
}

const OFF_BY_ONE: &str = r#"
name = "bill one cent high"
rules = ["payment-bill"]
[[faults]]
kind = "bill"
field = "amount"
mutation = { offset_minor = 1 }
limits = { hits_max = 100 }
"#;

#[test]
fn a_lossless_drill_of_100_faults_is_discovered_100_of_100_with_clean_controls() {
    let (report, observed, plan) = run(OFF_BY_ONE, 130, false);
    assert_eq!(plan.planted.len(), 100);
    assert_eq!(
        plan.controls.len(),
        30,
        "pairs past the hit limit are clean controls"
    );
    assert_eq!(
        (report.injected, report.discovered, report.missed),
        (100, 100, 0)
    );
    assert!(
        report.false_positives.is_empty(),
        "{:?}",
        report.false_positives
    );
    assert!(observed.iter().all(|o| o.kind == "amount_mismatch"));
    assert!(report.passed, "{}", report.markdown("t"));
}

#[test]
fn every_mutation_kind_is_found_as_its_kind_of_break() {
    let cases: [(&str, &str, &[&str]); 6] = [
        (
            "{ set = \"1.00\" }",
            "field = \"amount\"",
            &["amount_mismatch"],
        ),
        (
            "{ scale = \"2\" }",
            "field = \"amount\"",
            &["amount_mismatch"],
        ),
        // Another currency: the amounts and the compared currency field both differ.
        (
            "{ swap_currency = \"USD\" }",
            "",
            &["amount_mismatch", "field_mismatch"],
        ),
        (
            "{ set = \"6222020200119999\" }",
            "field = \"attributes.payer_account\"",
            &["field_mismatch"],
        ),
        ("\"duplicate\"", "", &["duplicate"]),
        ("\"drop_record\"", "", &["missing_counterpart"]),
    ];
    for (mutation, field, kinds) in cases {
        let spec = format!(
            "name = \"m\"\nrules = [\"payment-bill\"]\n[[faults]]\nkind = \"bill\"\n{field}\nmutation = {mutation}\nlimits = {{ hits_max = 10 }}\n"
        );
        let (report, observed, _) = run(&spec, 10, false);
        assert_eq!(
            report.discovered,
            10,
            "{mutation}: {}",
            report.markdown(mutation)
        );
        assert!(
            observed.iter().all(|o| kinds.contains(&o.kind.as_str())),
            "{mutation}: {observed:?}"
        );
    }
}

#[test]
fn filters_shape_forgeries_from_matching_traffic_only() {
    let only_vip = OFF_BY_ONE.replace("limits =", "filter = { vip = \"only\" }\nlimits =");
    let (report, _, plan) = run(&only_vip, 5, false);
    assert_eq!(
        (plan.planted.len(), report.injected),
        (0, 0),
        "no VIP traffic, no fault"
    );
    let (report, _, _) = run(&only_vip, 5, true);
    assert_eq!(report.discovered, 5);
}

#[test]
fn what_cannot_be_forged_is_refused_with_the_reason() {
    let rules = rules();
    let spec = |text: &str| parse_spec(text).unwrap();
    let err = |s: &str, samples: &[FundRecord]| {
        forge("d", &spec(s), &rules, samples, 1, NOW)
            .unwrap_err()
            .to_string()
    };
    assert!(err(OFF_BY_ONE, &[]).contains("no recent payment-core/payment record"));
    let double_entry = OFF_BY_ONE.replace("payment-bill", "ledger-balanced");
    assert!(err(&double_entry, &samples(false)).contains("neither a match nor a sum_match"));
    let unknown = OFF_BY_ONE.replace("payment-bill", "no-such-rule");
    assert!(err(&unknown, &samples(false)).contains("does not exist"));
    let dropped = OFF_BY_ONE.replace(
        "mutation = { offset_minor = 1 }",
        "mutation = \"drop_field\"",
    );
    assert!(err(&dropped, &samples(false)).contains("ingest refuses"));
}

#[test]
fn the_shipped_example_drill_is_valid_and_targets_a_demo_rule() {
    let spec = parse_spec(include_str!("../../../../examples/drill-pay-to-bill.toml")).unwrap();
    let demo = parse_rules(include_str!("../../../../examples/demo-rules.toml")).unwrap();
    let targets = steadfast_drill::forge::target_rules(&spec, &demo).unwrap();
    assert_eq!(targets[0].name, "payment-bill");
    let lossy = parse_spec(include_str!("../../../../examples/drill-lossy-bills.toml")).unwrap();
    assert_eq!(lossy.mode, steadfast_drill::Mode::Lossy);
    assert_eq!(lossy.correction.target.as_deref(), Some("billing"));
    assert_eq!(
        steadfast_drill::forge::target_rules(&lossy, &demo).unwrap()[0].name,
        "payment-bill"
    );
}

#[test]
fn a_lossless_drill_on_a_one_to_many_rule_finds_every_fault() {
    let mut real = samples(false);
    real.push(record(serde_json::json!({
        "record_id": "b-inst", "source": "billing", "kind": "bill", "keys": {"biz_id": "ORD-88"},
        "amount": "100.01", "currency": "EUR", "status": "INSTALMENT", "event_time": NOW - 3_000,
    })));
    real.push(record(serde_json::json!({
        "record_id": "i-1", "source": "billing", "kind": "instalment", "keys": {"biz_id": "ORD-88"},
        "amount": "33.34", "currency": "EUR", "event_time": NOW - 3_000,
    })));
    let spec = parse_spec(
        &OFF_BY_ONE
            .replace("payment-bill", "bill-instalments")
            .replace("kind = \"bill\"", "kind = \"instalment\"")
            .replace("hits_max = 100", "hits_max = 20"),
    )
    .unwrap();
    let rules = rules();
    let plan = forge("d1", &spec, &rules, &real, 25, NOW).unwrap();
    assert_eq!((plan.planted.len(), plan.controls.len()), (20, 5));
    assert_eq!(
        plan.records.len(),
        25 * 4,
        "a bill and three instalments per group"
    );
    let records: Vec<&FundRecord> = plan.records.iter().map(|f| &f.record).collect();
    let events = verify_batch(Arc::new(rules), Limits::unbounded_batch(), records, |_| {});
    let observed = drill_breaks(&events, "d1");
    let injections: Vec<Injection> = plan
        .planted
        .iter()
        .map(|p| Injection {
            key: p.key.clone(),
            at_ms: NOW,
            corrected_at_ms: None,
        })
        .collect();
    let report = Report::new(&injections, &observed, &["bill-instalments".into()], None);
    assert_eq!(
        (report.discovered, report.missed),
        (20, 0),
        "{}",
        report.markdown("sum")
    );
    assert!(
        report.false_positives.is_empty(),
        "the 5 controls add up: {:?}",
        report.false_positives
    );
}
