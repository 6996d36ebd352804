use steadfast_model::Direction::{Credit, Debit};
use steadfast_verify::{verify_batch, BatchVerifier, BreakKind, Event, Limits};

use crate::support::*;

const T: i64 = 1_700_000_000_000;

#[test]
fn agreeing_payment_and_bill_raise_nothing() {
    let mut h = Harness::new();
    h.feed(T, &[payment("p1", "O1", "10.00", T)])
        .feed(T + 10, &[bill("b1", "O1", "10.0", T + 5)])
        .tick(T + 60_000);
    assert_eq!(h.summary(), Vec::<String>::new());
    assert_eq!(h.engine.open_records(), 0);
}

#[test]
fn amount_and_field_mismatches_name_the_key_and_field() {
    let mut h = Harness::new();
    let mut p = payment("p1", "O1", "10.00", T);
    p.account = Some("ACC-1".into());
    let mut b = bill("b1", "O1", "10.01", T);
    b.attributes.insert("payer_account".into(), "ACC-2".into());
    h.feed(T, &[p, b]);
    assert_eq!(
        h.summary(),
        [
            "payment-bill amount_mismatch O1 field=amount",
            "payment-bill field_mismatch O1 field=account/payer_account"
        ]
    );
    let amount = h.breaks()[0];
    assert_eq!(
        (amount.expected.as_deref(), amount.actual.as_deref()),
        (Some("10.00 USD"), Some("10.01 USD"))
    );
    assert_eq!(amount.evidence.len(), 2);
    assert_eq!(amount.detection_latency_ms(), 0);
}

#[test]
fn a_one_sided_record_waits_for_its_deadline_then_breaks() {
    let mut h = Harness::new();
    h.feed(T, &[payment("p1", "O1", "10.00", T)]);
    h.tick(T + 4_999);
    assert!(h.breaks().is_empty(), "the bill may still come within 5 s");
    h.tick(T + 5_100);
    assert_eq!(
        h.summary(),
        ["payment-bill missing_counterpart O1 side=right"]
    );
    assert_eq!(h.breaks()[0].complete_at, T + 5_000);
    assert_eq!(h.breaks()[0].detection_latency_ms(), 100);

    // The payment may arrive only 1 s after a bill.
    let mut h = Harness::new();
    h.feed(T, &[bill("b1", "O2", "3.00", T)]).tick(T + 1_001);
    assert_eq!(
        h.summary(),
        ["payment-bill missing_counterpart O2 side=left"]
    );
}

#[test]
fn a_late_counterpart_resolves_the_missing_break_and_is_still_compared() {
    let mut h = Harness::new();
    h.feed(T, &[payment("p1", "O1", "10.00", T)])
        .tick(T + 6_000);
    h.feed(T + 7_000, &[bill("b1", "O1", "9.00", T + 6_500)]);
    assert_eq!(
        h.summary(),
        [
            "payment-bill missing_counterpart O1 side=right",
            "payment-bill amount_mismatch O1 field=amount"
        ]
    );
    assert_eq!(h.open().len(), 1, "only the mismatch stays open");
    assert!(h
        .events
        .iter()
        .any(|e| matches!(e, Event::Resolved { by_record: Some(r), .. } if r == "b1")));
}

#[test]
fn retries_have_no_second_effect_but_new_ids_are_duplicates() {
    let mut h = Harness::new();
    let p = payment("p1", "O1", "10.00", T);
    h.feed(T, &[p.clone(), p.clone()]).feed(T + 1, &[p]);
    assert_eq!(h.engine.stats().retries_ignored, 2);
    assert!(h.breaks().is_empty());
    h.feed(T + 2, &[payment("p1-again", "O1", "10.00", T)]);
    assert_eq!(h.summary(), ["payment-bill duplicate O1 side=left"]);
    h.feed(T + 3, &[bill("b1", "O1", "10.00", T)]);
    assert_eq!(
        h.summary()[1],
        "payment-bill ambiguous_match O1",
        "two candidates: none is picked"
    );
}

#[test]
fn an_amendment_resolves_the_break_naming_the_amending_record() {
    let mut h = Harness::new();
    h.feed(
        T,
        &[
            payment("p1", "O1", "100.00", T),
            bill("b1", "O1", "90.00", T),
        ],
    );
    assert_eq!(h.open().len(), 1);
    let mut fix = bill("b1-fix", "O1", "100.00", T + 10);
    fix.amends = Some("b1".into());
    h.feed(T + 20, &[fix]);
    assert!(h.open().is_empty(), "{:?}", h.summary());
    let resolved = h.events.iter().find_map(|e| match e {
        Event::Resolved { by_record, .. } => by_record.clone(),
        _ => None,
    });
    assert_eq!(resolved.as_deref(), Some("b1-fix"));

    // An amendment that still disagrees keeps the break open and adds none.
    let mut h = Harness::new();
    h.feed(
        T,
        &[
            payment("p1", "O1", "100.00", T),
            bill("b1", "O1", "90.00", T),
        ],
    );
    let mut fix = bill("b1-fix", "O1", "95.00", T + 10);
    fix.amends = Some("b1".into());
    h.feed(T + 20, &[fix]);
    assert_eq!(h.open().len(), 1);
    assert_eq!(h.breaks().len(), 1);
}

#[test]
fn filters_keep_records_out_of_a_rule() {
    let mut h = Harness::new();
    let mut failed = payment("p1", "O1", "10.00", T);
    failed.status = Some("FAILED".into());
    h.feed(T, &[failed]).tick(T + 60_000);
    assert!(h.breaks().iter().all(|b| b.rule != "payment-bill"));
}

#[test]
fn instalments_must_add_up_to_the_bill() {
    let mut h = Harness::new();
    let mut b = bill("b1", "O1", "90.00", T);
    b.status = Some("INSTALMENT".into());
    let inst = |id: &str, amount: &str| {
        let mut r = rec(id, "billing", "instalment", ("biz_id", "O1"), amount, T);
        r.keys.insert("seq".into(), id.into());
        r
    };
    h.feed(
        T,
        &[
            b.clone(),
            inst("i1", "30.00"),
            inst("i2", "30.00"),
            inst("i3", "30.00"),
        ],
    );
    h.tick(T + 10_000);
    assert!(
        h.summary()
            .iter()
            .all(|s| !s.starts_with("bill-instalments")),
        "{:?}",
        h.summary()
    );

    let mut h = Harness::new();
    let mut b2 = b.clone();
    b2.keys.insert("biz_id".into(), "O2".into());
    let mut i = inst("i9", "30.00");
    i.keys.insert("biz_id".into(), "O2".into());
    h.feed(T, &[b2, i]).tick(T + 10_000);
    let sums: Vec<_> = h
        .breaks()
        .into_iter()
        .filter(|b| b.rule == "bill-instalments")
        .collect();
    assert_eq!(sums.len(), 1);
    assert_eq!(
        (sums[0].kind, sums[0].actual.as_deref()),
        (BreakKind::AmountMismatch, Some("30.00 USD"))
    );
}

#[test]
fn double_entry_must_net_to_zero_per_transaction_and_per_day() {
    let mut h = Harness::new();
    h.feed(
        T,
        &[
            entry("e1", "X1", "50.00", Debit, T),
            entry("e2", "X1", "50.00", Credit, T),
        ],
    );
    h.feed(
        T,
        &[
            entry("e3", "X2", "50.00", Debit, T),
            entry("e4", "X2", "49.99", Credit, T),
        ],
    );
    h.tick(T + 2_000);
    assert!(h.breaks().is_empty(), "completeness deadline not reached");
    h.tick(T + 3_000);
    assert_eq!(
        h.summary(),
        ["ledger-balanced conservation_violation X2 field=amount"]
    );
    assert_eq!(h.breaks()[0].actual.as_deref(), Some("-0.01 USD"));
    h.tick(T + 2 * 86_400_000);
    let daily: Vec<_> = h
        .breaks()
        .into_iter()
        .filter(|b| b.key.starts_with("day "))
        .collect();
    assert_eq!(daily.len(), 1, "{:?}", h.summary());
    assert_eq!(daily[0].actual.as_deref(), Some("-0.01"));
}

#[test]
fn balance_snapshots_must_follow_from_movements() {
    let mut h = Harness::new();
    let wallet =
        |id: &str, kind: &str, amount: &str, dir: Option<steadfast_model::Direction>, t: i64| {
            let mut r = rec(id, "wallet", kind, ("movement_id", id), amount, t);
            r.keys.insert("snapshot_id".into(), id.into());
            r.account = Some("W1".into());
            r.direction = dir;
            r
        };
    h.feed(T, &[wallet("s0", "balance", "100.00", None, T)]);
    h.feed(
        T + 10,
        &[
            wallet("m1", "movement", "20.00", Some(Credit), T + 1),
            wallet("m2", "movement", "5.00", Some(Debit), T + 2),
        ],
    );
    h.feed(T + 20, &[wallet("s1", "balance", "115.00", None, T + 3)]);
    h.tick(T + 3_000);
    assert!(h.breaks().is_empty(), "{:?}", h.summary());
    h.feed(
        T + 3_100,
        &[wallet("m3", "movement", "1.00", Some(Credit), T + 3_050)],
    );
    h.feed(
        T + 3_200,
        &[wallet("s2", "balance", "117.00", None, T + 3_100)],
    );
    h.tick(T + 6_000);
    assert_eq!(h.summary(), ["wallet-continuity balance_discontinuity W1"]);
    assert_eq!(
        (
            h.breaks()[0].expected.as_deref(),
            h.breaks()[0].actual.as_deref()
        ),
        (Some("116.00"), Some("117.00"))
    );
    assert_eq!(
        h.engine.open_records(),
        0,
        "every movement and snapshot was checked"
    );
}

#[test]
fn a_silent_source_is_a_break_until_it_speaks_again() {
    let mut h = Harness::new();
    h.feed(
        T,
        &[payment("p1", "O1", "1.00", T), bill("b1", "O1", "1.00", T)],
    );
    h.tick(T + 59_000);
    assert!(h.breaks().is_empty());
    h.tick(T + 61_000);
    let silent: Vec<_> = h
        .breaks()
        .into_iter()
        .filter(|b| b.kind == BreakKind::SourceSilent)
        .map(|b| b.key.clone())
        .collect();
    assert_eq!(silent, ["payment-core", "billing"]);
    // A drill's forged bill does not make billing speak.
    let mut forged = bill("b-drill", "D1", "1.00", T + 61_500);
    forged.drill = Some("d1".into());
    h.feed(T + 61_500, &[forged]);
    assert_eq!(
        h.open()
            .iter()
            .filter(|b| b.kind == BreakKind::SourceSilent)
            .count(),
        2,
        "a drill record is no sign of life"
    );
    h.feed(T + 62_000, &[payment("p2", "O2", "1.00", T + 62_000)]);
    assert_eq!(
        h.open()
            .iter()
            .filter(|b| b.kind == BreakKind::SourceSilent)
            .count(),
        1,
        "billing is still silent"
    );
}

#[test]
fn open_state_is_bounded_and_capacity_is_reported() {
    let limits = Limits {
        open_records_max: 100,
        batch_records_max: 10,
        ..Limits::default()
    };
    let mut h = Harness::with_limits(limits);
    let payments: Vec<_> = (0..95)
        .map(|i| payment(&format!("p{i}"), &format!("O{i}"), "1.00", T))
        .collect();
    h.feed(T, &payments[..80]);
    assert_eq!(h.engine.headroom(), 20);
    assert!(h.breaks().is_empty());
    h.feed(T, &payments[80..]);
    assert_eq!(h.summary(), ["payment-bill capacity "]);
    assert_eq!(h.engine.headroom(), 5);
    let bills: Vec<_> = (0..95)
        .map(|i| bill(&format!("b{i}"), &format!("O{i}"), "1.00", T))
        .collect();
    h.feed(T, &bills);
    assert!(h.open().is_empty(), "draining resolves the capacity break");
}

#[test]
fn drill_marked_records_yield_drill_breaks() {
    let mut h = Harness::new();
    let mut p = payment("d1", "DRILL-1", "5.00", T);
    p.drill = Some("drill-7".into());
    let mut b = bill("d2", "DRILL-1", "6.00", T);
    b.drill = Some("drill-7".into());
    h.feed(T, &[p, b]);
    assert_eq!(h.breaks()[0].drill.as_deref(), Some("drill-7"));
}

#[test]
fn a_restored_checkpoint_continues_exactly_like_the_original() {
    let first: Vec<_> = (0..50)
        .map(|i| payment(&format!("p{i}"), &format!("O{i}"), "1.00", T))
        .collect();
    let second: Vec<_> = (0..50)
        .filter(|i| i % 7 != 0)
        .map(|i| {
            bill(
                &format!("b{i}"),
                &format!("O{i}"),
                if i % 5 == 0 { "2.00" } else { "1.00" },
                T,
            )
        })
        .collect();
    let mut straight = Harness::new();
    straight
        .feed(T, &first)
        .feed(T + 100, &second)
        .tick(T + 10_000);

    let mut before = Harness::new();
    before.feed(T, &first);
    let bytes = before.engine.snapshot();
    let mut after = Harness::new();
    after.engine = steadfast_verify::Engine::restore(rules(), Limits::default(), &bytes).unwrap();
    after.events = before.events.clone();
    after.loc = 50;
    after.feed(T + 100, &second).tick(T + 10_000);
    assert_eq!(after.events, straight.events);
    // Record ids remembered before the checkpoint are still recognised after it.
    after.feed(T + 10_001, &first[..1]);
    assert_eq!(after.engine.stats().retries_ignored, 1);
}

#[test]
fn a_batch_verifier_fed_in_any_pieces_gives_the_breaks_of_verify_batch() {
    // Orders over ten seconds of event time: some bills off by a cent, some missing, some
    // payments missing, a few retries.
    let mut records = Vec::new();
    for i in 0..3000i64 {
        let t = T + i * 3;
        let order = format!("O{i}");
        if i % 101 != 1 {
            records.push(payment(&format!("p{i}"), &order, "10.00", t));
        }
        if i % 103 != 2 {
            let amount = if i % 97 == 3 { "10.01" } else { "10.00" };
            records.push(bill(&format!("b{i}"), &order, amount, t + 500));
        }
        if i % 89 == 4 {
            records.push(payment(&format!("p{i}"), &order, "10.00", t));
        }
    }
    let events = |e: &[Event]| e.iter().map(|e| format!("{e:?}")).collect::<Vec<_>>();
    let whole = verify_batch(rules(), Limits::unbounded_batch(), &records, |_| {});
    let breaks = whole
        .iter()
        .filter(|e| matches!(e, Event::Break(_)))
        .count();
    assert!(breaks > 60, "the input has breaks to find: {breaks}");
    for piece in [1, 7, 1023, 1024, 1500, records.len()] {
        let mut v = BatchVerifier::new(rules(), Limits::unbounded_batch());
        for chunk in records.chunks(piece) {
            v.feed(chunk.to_vec());
        }
        assert_eq!(v.records(), records.len() as u64);
        assert_eq!(events(&v.finish()), events(&whole), "pieces of {piece}");
    }
}
