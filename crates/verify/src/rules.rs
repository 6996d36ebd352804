//! The rule file: what to verify, parsed from TOML and checked before anything runs.
//!
//! Every error names the line of the rule file and the problem, so a typo is found at
//! start-up rather than as a silent rule that never fires.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use toml::Spanned;

use steadfast_model::Millis;

/// Longest lateness budget or completeness deadline a rule may set: one day.
pub const LATENESS_MS_MAX: i64 = 24 * 3600 * 1000;
/// Longest silence budget a source may set: one week.
pub const SILENCE_BUDGET_SECS_MAX: u64 = 7 * 24 * 3600;
/// Most rules one file may hold.
pub const RULES_MAX: usize = 256;

/// Standard record fields every rule may name.
pub const STANDARD_FIELDS: &[&str] = &[
    "record_id",
    "source",
    "kind",
    "amount",
    "currency",
    "account",
    "counter_account",
    "direction",
    "status",
    "trace_id",
    "order_id",
];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("rule file line {line}: {message}")]
pub struct RuleError {
    pub line: usize,
    pub message: String,
}

/// A validated rule file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuleSet {
    /// A fingerprint of the file's text; every break records the version that produced it.
    pub version: String,
    pub business_day: BusinessDay,
    pub sources: Vec<SourceSpec>,
    pub links: Vec<Link>,
    pub rules: Vec<Rule>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BusinessDay {
    /// Minutes after local midnight at which a business day ends.
    pub cutoff_minutes: u32,
    pub timezone: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SourceSpec {
    pub name: String,
    /// A source quiet for longer than this raises `source_silent`; `None` disables it.
    pub silence_budget_ms: Option<i64>,
}

/// A named chain of sources (e.g. `pay-to-bill`: payment-core → billing).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Link {
    pub name: String,
    pub chain: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rule {
    pub name: String,
    pub link: Option<String>,
    /// Breaks of this rule open longer than this are overdue.
    pub sla_secs: Option<u64>,
    pub kind: RuleKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RuleKind {
    /// Every left record has exactly one right record with the same key, and the
    /// compared fields are equal.
    Match {
        left: Side,
        right: Side,
        compare: Vec<FieldPair>,
    },
    /// The downstream amounts per key add up to the upstream amount.
    SumMatch { upstream: Side, downstream: Side },
    /// Signed entries per transaction sum to zero per currency; optionally per business day.
    Conservation { entries: Side, daily: bool },
    /// Each balance snapshot equals the previous one plus the entries between them.
    Balance {
        entries: Side,
        snapshots: Side,
        lateness_ms: i64,
    },
}

/// Which records a side of a rule takes, how they are keyed and how late they may be.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Side {
    pub source: String,
    pub kind: String,
    pub key: Vec<String>,
    /// How long after its counterpart a record of this side may arrive.
    pub lateness_ms: Millis,
    /// Field → allowed values; a record must match every entry.
    pub filter: Vec<(String, Vec<String>)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldPair {
    pub left: String,
    pub right: String,
}

impl RuleSet {
    pub fn link(&self, name: &str) -> Option<&Link> {
        self.links.iter().find(|l| l.name == name)
    }
}

impl Rule {
    /// The sides of the rule: the record streams it reads.
    pub fn sides(&self) -> Vec<&Side> {
        match &self.kind {
            RuleKind::Match { left, right, .. } => vec![left, right],
            RuleKind::SumMatch {
                upstream,
                downstream,
            } => vec![upstream, downstream],
            RuleKind::Conservation { entries, .. } => vec![entries],
            RuleKind::Balance {
                entries, snapshots, ..
            } => vec![entries, snapshots],
        }
    }
}

// ---- the file as written -------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDef {
    #[serde(default)]
    business_day: Option<BusinessDayDef>,
    #[serde(default)]
    sources: Vec<SourceDef>,
    #[serde(default)]
    links: Vec<LinkDef>,
    #[serde(default)]
    rules: Vec<Spanned<RuleDef>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BusinessDayDef {
    cutoff: Option<Spanned<String>>,
    timezone: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SourceDef {
    name: Spanned<String>,
    silence_budget_secs: Option<u64>,
    #[serde(default)]
    kinds: Vec<KindDef>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KindDef {
    kind: String,
    #[serde(default)]
    keys: Vec<String>,
    #[serde(default)]
    fields: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LinkDef {
    name: Spanned<String>,
    chain: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleDef {
    name: Spanned<String>,
    #[serde(rename = "type")]
    kind: Spanned<String>,
    link: Option<Spanned<String>>,
    sla_secs: Option<u64>,
    left: Option<Spanned<SideDef>>,
    right: Option<Spanned<SideDef>>,
    upstream: Option<Spanned<SideDef>>,
    downstream: Option<Spanned<SideDef>>,
    entries: Option<Spanned<SideDef>>,
    snapshots: Option<Spanned<SideDef>>,
    #[serde(default)]
    compare: Vec<Spanned<CompareDef>>,
    daily: Option<bool>,
    lateness_ms: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SideDef {
    source: Spanned<String>,
    kind: Spanned<String>,
    key: Vec<Spanned<String>>,
    #[serde(default)]
    lateness_ms: i64,
    #[serde(default)]
    filter: BTreeMap<Spanned<String>, Vec<String>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum CompareDef {
    Same(String),
    Mapped { left: String, right: String },
}

struct Ctx<'a> {
    text: &'a str,
    /// (source, kind) → fields a rule may name for it.
    known: BTreeMap<(String, String), BTreeSet<String>>,
}

impl Ctx<'_> {
    fn err(&self, span: std::ops::Range<usize>, message: impl Into<String>) -> RuleError {
        RuleError {
            line: line_of(self.text, span.start),
            message: message.into(),
        }
    }

    fn side(&self, rule: &str, role: &str, def: &Spanned<SideDef>) -> Result<Side, RuleError> {
        let s = def.get_ref();
        let pair = (s.source.get_ref().clone(), s.kind.get_ref().clone());
        let Some(fields) = self.known.get(&pair) else {
            let source_known = self.known.keys().any(|(src, _)| src == &pair.0);
            return Err(if source_known {
                self.err(
                    s.kind.span(),
                    format!(
                        "rule `{rule}` {role}: source `{}` declares no record kind `{}`",
                        pair.0, pair.1
                    ),
                )
            } else {
                self.err(
                    s.source.span(),
                    format!(
                        "rule `{rule}` {role}: unknown source `{}` (declare it under [[sources]])",
                        pair.0
                    ),
                )
            });
        };
        let check = |name: &Spanned<String>| -> Result<(), RuleError> {
            if fields.contains(name.get_ref().as_str()) {
                Ok(())
            } else {
                Err(self.err(
                    name.span(),
                    format!(
                        "rule `{rule}` {role}: unknown field `{}` for {}/{} (known: {})",
                        name.get_ref(),
                        pair.0,
                        pair.1,
                        fields.iter().cloned().collect::<Vec<_>>().join(", ")
                    ),
                ))
            }
        };
        if s.key.is_empty() {
            return Err(self.err(
                def.span(),
                format!("rule `{rule}` {role}: `key` names no field"),
            ));
        }
        for f in s.key.iter().chain(s.filter.keys()) {
            check(f)?;
            if f.get_ref() == "amount" {
                return Err(self.err(
                    f.span(),
                    format!("rule `{rule}` {role}: `amount` cannot be a key or a filter"),
                ));
            }
        }
        if !(0..=LATENESS_MS_MAX).contains(&s.lateness_ms) {
            return Err(self.err(
                def.span(),
                format!(
                    "rule `{rule}` {role}: lateness_ms must be between 0 and {LATENESS_MS_MAX}"
                ),
            ));
        }
        Ok(Side {
            source: pair.0,
            kind: pair.1,
            key: s.key.iter().map(|k| k.get_ref().clone()).collect(),
            lateness_ms: s.lateness_ms,
            filter: s
                .filter
                .iter()
                .map(|(k, v)| (k.get_ref().clone(), v.clone()))
                .collect(),
        })
    }

    fn check_field(
        &self,
        rule: &str,
        side: &Side,
        field: &str,
        span: std::ops::Range<usize>,
    ) -> Result<(), RuleError> {
        let known = &self.known[&(side.source.clone(), side.kind.clone())];
        if known.contains(field) {
            Ok(())
        } else {
            Err(self.err(
                span,
                format!(
                    "rule `{rule}` compares unknown field `{field}` of {}/{}",
                    side.source, side.kind
                ),
            ))
        }
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())]
        .bytes()
        .filter(|b| *b == b'\n')
        .count()
        + 1
}

/// Parses and validates a rule file.
pub fn parse_rules(text: &str) -> Result<RuleSet, RuleError> {
    let file: FileDef = toml::from_str(text).map_err(|e| {
        let line = e.span().map(|s| line_of(text, s.start)).unwrap_or(1);
        let message = match e.message().trim() {
            // The parser has no words for some errors (a value cut off at the end).
            "" => "not valid TOML: a value is malformed or cut off".to_string(),
            m => m.to_string(),
        };
        RuleError { line, message }
    })?;
    let mut ctx = Ctx {
        text,
        known: BTreeMap::new(),
    };

    let business_day = match &file.business_day {
        None => BusinessDay {
            cutoff_minutes: 0,
            timezone: "UTC".into(),
        },
        Some(bd) => {
            let cutoff_minutes = match &bd.cutoff {
                None => 0,
                Some(c) => parse_hhmm(c.get_ref()).ok_or_else(|| {
                    ctx.err(c.span(), format!("cutoff {:?} is not HH:MM", c.get_ref()))
                })?,
            };
            let timezone = match &bd.timezone {
                None => "UTC".to_string(),
                Some(tz) => {
                    tz.get_ref().parse::<chrono_tz::Tz>().map_err(|_| {
                        ctx.err(tz.span(), format!("unknown time zone {:?} (use an IANA name such as \"Asia/Shanghai\")", tz.get_ref()))
                    })?;
                    tz.get_ref().clone()
                }
            };
            BusinessDay {
                cutoff_minutes,
                timezone,
            }
        }
    };

    let mut sources = Vec::new();
    for s in &file.sources {
        let name = s.name.get_ref();
        if sources.iter().any(|x: &SourceSpec| &x.name == name) {
            return Err(ctx.err(s.name.span(), format!("source `{name}` is declared twice")));
        }
        for k in &s.kinds {
            let mut fields: BTreeSet<String> =
                STANDARD_FIELDS.iter().map(|f| f.to_string()).collect();
            fields.extend(k.keys.iter().cloned());
            fields.extend(k.fields.iter().cloned());
            ctx.known.insert((name.clone(), k.kind.clone()), fields);
        }
        if s.kinds.is_empty() {
            return Err(ctx.err(s.name.span(), format!("source `{name}` declares no record kinds (`kinds = [{{ kind = ..., keys = [...] }}]`)")));
        }
        if let Some(secs) = s.silence_budget_secs {
            if !(1..=SILENCE_BUDGET_SECS_MAX).contains(&secs) {
                return Err(ctx.err(
                    s.name.span(),
                    format!("source `{name}`: silence_budget_secs must be between 1 and {SILENCE_BUDGET_SECS_MAX}"),
                ));
            }
        }
        sources.push(SourceSpec {
            name: name.clone(),
            silence_budget_ms: s.silence_budget_secs.map(|v| v as i64 * 1000),
        });
    }

    let mut links: Vec<Link> = Vec::new();
    for l in &file.links {
        if links.iter().any(|x| &x.name == l.name.get_ref()) {
            return Err(ctx.err(
                l.name.span(),
                format!("link `{}` is declared twice", l.name.get_ref()),
            ));
        }
        for member in &l.chain {
            if !sources.iter().any(|s| &s.name == member.get_ref()) {
                return Err(ctx.err(
                    member.span(),
                    format!(
                        "link `{}` names unknown source `{}`",
                        l.name.get_ref(),
                        member.get_ref()
                    ),
                ));
            }
        }
        links.push(Link {
            name: l.name.get_ref().clone(),
            chain: l.chain.iter().map(|c| c.get_ref().clone()).collect(),
        });
    }

    if file.rules.len() > RULES_MAX {
        return Err(RuleError {
            line: 1,
            message: format!("more than {RULES_MAX} rules"),
        });
    }
    let mut rules: Vec<Rule> = Vec::new();
    for spanned in &file.rules {
        let r = spanned.get_ref();
        let name = r.name.get_ref().clone();
        if rules.iter().any(|x| x.name == name) {
            return Err(ctx.err(r.name.span(), format!("rule `{name}` is declared twice")));
        }
        if let Some(link) = &r.link {
            if !links.iter().any(|l| &l.name == link.get_ref()) {
                return Err(ctx.err(
                    link.span(),
                    format!("rule `{name}` names unknown fund link `{}`", link.get_ref()),
                ));
            }
        }
        macro_rules! need {
            ($field:ident) => {
                match &r.$field {
                    Some(def) => def,
                    None => {
                        return Err(ctx.err(
                            spanned.span(),
                            format!(
                                "rule `{name}` of type `{}` needs `{}`",
                                r.kind.get_ref(),
                                stringify!($field)
                            ),
                        ))
                    }
                }
            };
        }
        let kind = match r.kind.get_ref().as_str() {
            "match" => {
                let left = ctx.side(&name, "left", need!(left))?;
                let right = ctx.side(&name, "right", need!(right))?;
                let mut compare = Vec::new();
                for c in &r.compare {
                    let (l, rt) = match c.get_ref() {
                        CompareDef::Same(f) => (f.clone(), f.clone()),
                        CompareDef::Mapped { left, right } => (left.clone(), right.clone()),
                    };
                    if (l == "amount") != (rt == "amount") {
                        return Err(ctx.err(c.span(), format!("rule `{name}`: `amount` compares only with `amount`")));
                    }
                    ctx.check_field(&name, &left, &l, c.span())?;
                    ctx.check_field(&name, &right, &rt, c.span())?;
                    compare.push(FieldPair { left: l, right: rt });
                }
                if compare.is_empty() {
                    compare.push(FieldPair { left: "amount".into(), right: "amount".into() });
                }
                RuleKind::Match { left, right, compare }
            }
            "sum_match" => RuleKind::SumMatch {
                upstream: ctx.side(&name, "upstream", need!(upstream))?,
                downstream: ctx.side(&name, "downstream", need!(downstream))?,
            },
            "conservation" => RuleKind::Conservation {
                entries: ctx.side(&name, "entries", need!(entries))?,
                daily: r.daily.unwrap_or(false),
            },
            "balance" => {
                let lateness_ms = r.lateness_ms.unwrap_or(0);
                if !(0..=LATENESS_MS_MAX).contains(&lateness_ms) {
                    return Err(ctx.err(spanned.span(), format!("rule `{name}`: lateness_ms must be between 0 and {LATENESS_MS_MAX}")));
                }
                RuleKind::Balance {
                    entries: ctx.side(&name, "entries", need!(entries))?,
                    snapshots: ctx.side(&name, "snapshots", need!(snapshots))?,
                    lateness_ms,
                }
            }
            other => {
                return Err(ctx.err(
                    r.kind.span(),
                    format!("rule `{name}` has unknown type `{other}` (expected match, sum_match, conservation or balance)"),
                ))
            }
        };
        rules.push(Rule {
            name,
            link: r.link.as_ref().map(|l| l.get_ref().clone()),
            sla_secs: r.sla_secs,
            kind,
        });
    }
    Ok(RuleSet {
        version: format!("{:016x}", xxhash_rust::xxh3::xxh3_64(text.as_bytes())),
        business_day,
        sources,
        links,
        rules,
    })
}

fn parse_hhmm(text: &str) -> Option<u32> {
    let (h, m) = text.split_once(':')?;
    let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
    (h < 24 && m < 60).then_some(h * 60 + m)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub const EXAMPLE: &str = include_str!("../../../examples/rules.toml");

    #[test]
    fn the_example_rule_file_is_valid() {
        let set = parse_rules(EXAMPLE).unwrap();
        assert!(set.rules.len() >= 4);
        assert!(set.link("pay-to-bill").is_some());
    }

    fn error_of(from: &str, to: &str) -> RuleError {
        assert!(EXAMPLE.contains(from), "example lacks {from}");
        parse_rules(&EXAMPLE.replacen(from, to, 1)).expect_err(to)
    }

    fn line_containing(needle: &str) -> usize {
        EXAMPLE.lines().position(|l| l.contains(needle)).unwrap() + 1
    }

    #[test]
    fn errors_name_the_line_and_the_problem() {
        let e = error_of("type = \"match\"", "type = \"mtach\"");
        assert_eq!(e.line, line_containing("type = \"match\""));
        assert!(e.message.contains("unknown type `mtach`"), "{e}");

        let e = error_of("compare = [\"amount\"", "compare = [\"amuont\"");
        assert!(e.message.contains("unknown field `amuont`"), "{e}");
        assert_eq!(e.line, line_containing("compare = [\"amount\""));

        let e = error_of("lateness_ms = 5000", "latenes_ms = 5000");
        assert!(e.message.contains("unknown field `latenes_ms`"), "{e}");

        let e = error_of("source = \"billing\"", "source = \"biling\"");
        assert!(e.message.contains("unknown source `biling`"), "{e}");

        let e = error_of("link = \"pay-to-bill\"", "link = \"pay-to-bil\"");
        assert!(e.message.contains("unknown fund link"), "{e}");

        let e = error_of("silence_budget_secs = 60 ", "silence_budget_secs = 0 ");
        assert!(
            e.message.contains("silence_budget_secs must be between"),
            "{e}"
        );

        let e = error_of("name = \"wallet\"\nchain", "name = \"pay-to-bill\"\nchain");
        assert!(
            e.message.contains("link `pay-to-bill` is declared twice"),
            "{e}"
        );

        let e = error_of("kinds = [{ kind = \"entry\", keys = [\"txn_id\"] }]", "");
        assert!(e.message.contains("declares no record kinds"), "{e}");

        let e = error_of("key = [\"order_no\"]", "key = [\"amount\"]");
        assert!(e.message.contains("`amount` cannot be a key"), "{e}");

        let e = error_of("[[rules]]", "[[rules]");
        assert!(e.line >= 1 && !e.message.is_empty());
    }

    proptest::proptest! {
        /// A rule file with a random slice removed or replaced: parsed or refused with a
        /// line inside the file, never a panic.
        #[test]
        fn mangled_rule_files_are_answered(at in 0usize..4000, len in 0usize..40, junk in "[ -~\n]{0,12}") {
            let at = at.min(EXAMPLE.len());
            let end = (at + len).min(EXAMPLE.len());
            if !EXAMPLE.is_char_boundary(at) || !EXAMPLE.is_char_boundary(end) {
                return Ok(());
            }
            let text = format!("{}{}{}", &EXAMPLE[..at], junk, &EXAMPLE[end..]);
            if let Err(e) = parse_rules(&text) {
                proptest::prop_assert!(e.line >= 1 && e.line <= text.lines().count() + 1, "{e}");
                proptest::prop_assert!(!e.message.is_empty());
            }
        }
    }
}
