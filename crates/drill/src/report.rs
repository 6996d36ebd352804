//! Measurement: the faults a drill injected against the breaks verification reported.
//! For every injection: when it took effect, when it was discovered (the first break of an
//! expected rule on its key), when it was corrected. Per drill: injected, discovered,
//! missed, discovery rate, time to detect, and false positives (drill breaks on keys the
//! drill did not tamper with).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// One injected fault.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Injection {
    pub key: String,
    pub at_ms: i64,
    pub corrected_at_ms: Option<i64>,
}

/// One break the drill's records caused, as the break store has it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Observed {
    pub rule: String,
    pub key: String,
    pub kind: String,
    pub detected_at_ms: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    pub key: String,
    pub injected_at_ms: i64,
    pub discovered_at_ms: Option<i64>,
    pub time_to_detect_ms: Option<i64>,
    pub corrected_at_ms: Option<i64>,
    /// Discovered, and within the expected time if one was set.
    pub on_time: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub injected: usize,
    pub discovered: usize,
    pub missed: usize,
    /// Discovered per thousand injected (exact integers; 1000 is all of them).
    pub discovered_permille: u32,
    pub time_to_detect_ms_p50: Option<i64>,
    pub time_to_detect_ms_p99: Option<i64>,
    pub time_to_detect_ms_max: Option<i64>,
    /// Breaks on keys the drill did not tamper with.
    pub false_positives: Vec<Observed>,
    pub corrected: usize,
    /// From injection to correction (the data right again), over the corrected ones.
    #[serde(default)]
    pub time_to_recover_ms_p50: Option<i64>,
    #[serde(default)]
    pub time_to_recover_ms_max: Option<i64>,
    /// Every injection discovered on time and no false positive.
    pub passed: bool,
    pub outcomes: Vec<Outcome>,
}

/// The nearest-rank percentile of sorted values.
fn percentile(sorted: &[i64], p: usize) -> Option<i64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (sorted.len() * p).div_ceil(100).max(1);
    Some(sorted[rank - 1])
}

impl Report {
    /// `expect_rules`: breaks of these rules count as discoveries (all rules when empty).
    pub fn new(
        injections: &[Injection],
        observed: &[Observed],
        expect_rules: &[String],
        within_ms: Option<u64>,
    ) -> Report {
        let counts = |o: &Observed| expect_rules.is_empty() || expect_rules.contains(&o.rule);
        let mut first: BTreeMap<&str, i64> = BTreeMap::new();
        for o in observed.iter().filter(|o| counts(o)) {
            let e = first.entry(o.key.as_str()).or_insert(o.detected_at_ms);
            *e = (*e).min(o.detected_at_ms);
        }
        let injected_keys: BTreeSet<&str> = injections.iter().map(|i| i.key.as_str()).collect();
        let outcomes: Vec<Outcome> = injections
            .iter()
            .map(|i| {
                // A break stored before the fault took effect is not its discovery.
                let found = first.get(i.key.as_str()).copied().filter(|&t| t >= i.at_ms);
                let ttd = found.map(|t| t - i.at_ms);
                Outcome {
                    key: i.key.clone(),
                    injected_at_ms: i.at_ms,
                    discovered_at_ms: found,
                    time_to_detect_ms: ttd,
                    corrected_at_ms: i.corrected_at_ms,
                    on_time: ttd.is_some_and(|d| within_ms.is_none_or(|w| d <= w as i64)),
                }
            })
            .collect();
        let mut ttd: Vec<i64> = outcomes
            .iter()
            .filter_map(|o| o.time_to_detect_ms)
            .collect();
        ttd.sort_unstable();
        let false_positives: Vec<Observed> = observed
            .iter()
            .filter(|o| !injected_keys.contains(o.key.as_str()))
            .cloned()
            .collect();
        let mut ttr: Vec<i64> = injections
            .iter()
            .filter_map(|i| i.corrected_at_ms.map(|c| c - i.at_ms))
            .collect();
        ttr.sort_unstable();
        let discovered = ttd.len();
        let injected = injections.len();
        Report {
            injected,
            discovered,
            missed: injected - discovered,
            discovered_permille: (discovered * 1000).checked_div(injected).unwrap_or(0) as u32,
            time_to_detect_ms_p50: percentile(&ttd, 50),
            time_to_detect_ms_p99: percentile(&ttd, 99),
            time_to_detect_ms_max: ttd.last().copied(),
            time_to_recover_ms_p50: percentile(&ttr, 50),
            time_to_recover_ms_max: ttr.last().copied(),
            corrected: outcomes
                .iter()
                .filter(|o| o.corrected_at_ms.is_some())
                .count(),
            passed: injected > 0
                && outcomes.iter().all(|o| o.on_time)
                && false_positives.is_empty(),
            false_positives,
            outcomes,
        }
    }

    /// The report for people.
    pub fn markdown(&self, title: &str) -> String {
        let ms = |v: Option<i64>| v.map(|v| format!("{v} ms")).unwrap_or_else(|| "-".into());
        let mut out = format!(
            "# Drill report: {title}\n\n**{}**\n\n| | |\n| --- | --- |\n| faults injected | {} |\n| discovered | {} ({}.{} %) |\n| missed | {} |\n| time to detect p50 / p99 / max | {} / {} / {} |\n| false positives | {} |\n| corrected | {} |\n| time to recover p50 / max | {} / {} |\n",
            if self.passed { "PASSED" } else { "FAILED" },
            self.injected,
            self.discovered,
            self.discovered_permille / 10,
            self.discovered_permille % 10,
            self.missed,
            ms(self.time_to_detect_ms_p50),
            ms(self.time_to_detect_ms_p99),
            ms(self.time_to_detect_ms_max),
            self.false_positives.len(),
            self.corrected,
            ms(self.time_to_recover_ms_p50),
            ms(self.time_to_recover_ms_max),
        );
        let missed: Vec<&Outcome> = self.outcomes.iter().filter(|o| !o.on_time).collect();
        if !missed.is_empty() {
            out += "\n## Not discovered in time\n\n| key | injected at | discovered after |\n| --- | --- | --- |\n";
            for o in missed {
                out += &format!(
                    "| {} | {} | {} |\n",
                    o.key,
                    o.injected_at_ms,
                    ms(o.time_to_detect_ms)
                );
            }
        }
        if !self.false_positives.is_empty() {
            out += "\n## False positives\n\n| rule | key | kind |\n| --- | --- | --- |\n";
            for o in &self.false_positives {
                out += &format!("| {} | {} | {} |\n", o.rule, o.key, o.kind);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inj(key: &str, at: i64) -> Injection {
        Injection {
            key: key.into(),
            at_ms: at,
            corrected_at_ms: None,
        }
    }

    fn obs(rule: &str, key: &str, at: i64) -> Observed {
        Observed {
            rule: rule.into(),
            key: key.into(),
            kind: "amount_mismatch".into(),
            detected_at_ms: at,
        }
    }

    #[test]
    fn discovery_is_the_first_expected_break_after_the_fault() {
        let injections: Vec<Injection> = (0..100).map(|i| inj(&format!("K{i}"), 1_000)).collect();
        let mut observed: Vec<Observed> = (0..100)
            .map(|i| obs("payment-bill", &format!("K{i}"), 1_000 + 10 * i))
            .collect();
        observed.push(obs("payment-bill", "K5", 1_001)); // an earlier one wins
        observed.push(obs("other-rule", "K7", 1_000)); // not an expected rule
        let r = Report::new(
            &injections,
            &observed,
            &["payment-bill".into()],
            Some(2_000),
        );
        assert_eq!(
            (r.injected, r.discovered, r.missed, r.discovered_permille),
            (100, 100, 0, 1000)
        );
        assert_eq!(r.outcomes[5].time_to_detect_ms, Some(1));
        assert_eq!(r.outcomes[7].time_to_detect_ms, Some(70));
        assert_eq!(
            (r.time_to_detect_ms_p99, r.time_to_detect_ms_max),
            (Some(980), Some(990))
        );
        assert!(r.passed);
        assert!(r.markdown("t").contains("| discovered | 100 (100.0 %) |"));
        assert_eq!(r.time_to_recover_ms_max, None, "nothing corrected");
        let mut fixed = injections.clone();
        fixed[0].corrected_at_ms = Some(4_000);
        fixed[1].corrected_at_ms = Some(2_000);
        let r = Report::new(&fixed, &observed, &[], None);
        assert_eq!(
            (
                r.corrected,
                r.time_to_recover_ms_p50,
                r.time_to_recover_ms_max
            ),
            (2, Some(1_000), Some(3_000))
        );
        assert!(r
            .markdown("t")
            .contains("| time to recover p50 / max | 1000 ms / 3000 ms |"));
    }

    #[test]
    fn misses_late_finds_and_false_positives_fail_the_drill() {
        let injections = [inj("A", 0), inj("B", 0), inj("C", 100)];
        let observed = [
            obs("r", "A", 50),
            obs("r", "B", 5_000),
            obs("r", "C", 99),
            obs("r", "Z", 10),
        ];
        let r = Report::new(&injections, &observed, &[], Some(1_000));
        assert_eq!(
            (r.discovered, r.missed),
            (2, 1),
            "C's break came before C's fault"
        );
        assert!(!r.outcomes[1].on_time, "B was found too late");
        assert_eq!(r.false_positives.len(), 1);
        assert!(!r.passed);
        let md = r.markdown("t");
        assert!(
            md.contains("FAILED") && md.contains("| B | 0 | 5000 ms |") && md.contains("| r | Z |")
        );
    }
}
