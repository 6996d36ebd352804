//! The drill spec: what to inject, where, how much, for how long, and what verification
//! is expected to find. Written as TOML or JSON; validated into [`DrillSpec`] with errors
//! that name the field.
//!
//! ```toml
//! name = "bill amounts off by one cent"
//! mode = "lossless"              # or "lossy" (tampers real traffic through the proxy)
//! rules = ["payment-bill"]       # or link = "pay-to-bill"
//! ttl_secs = 300
//!
//! [[faults]]
//! kind = "bill"                  # the record kind (or JSON body) the fault applies to
//! field = "amount"
//! mutation = { offset_minor = 1 }
//! filter = { keys_matching = "ORD-*", vip = "never" }
//! limits = { hits_max = 100, percent_max = 10 }
//!
//! [expect]
//! rules = ["payment-bill"]
//! within_ms = 6000
//!
//! [guards]
//! real_breaks_max = 0
//! ```

use serde::{Deserialize, Serialize};

/// Longest drill lease: a day. A routine drill runs minutes; a lease that outlives its
/// operator is the failure this bounds.
pub const TTL_SECS_MAX: u64 = 86_400;
/// Most faults in one drill.
pub const FAULTS_MAX: usize = 64;
/// Most hits one fault may make.
pub const HITS_MAX: u64 = 1_000_000;
/// Longest delay a `delay_ms` mutation may hold a record.
pub const DELAY_MS_MAX: u64 = 600_000;
/// Slowest bandwidth limit: below this a response of a few kilobytes takes minutes.
pub const BANDWIDTH_MIN: u64 = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Forged, drill-marked records into the verification path only.
    Lossless,
    /// Real traffic tampered through the proxy, then corrected.
    Lossy,
}

/// How a fault changes what it hits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Mutation {
    /// Replace the field's value (as JSON text, e.g. `"\"EUR\""` or `"12.50"` for a string).
    Set(serde_json::Value),
    /// Multiply an amount by an exact decimal factor ("1.5"), rounded half to even to the
    /// currency's minor unit.
    Scale(String),
    /// Add this many minor units to an amount (negative subtracts).
    OffsetMinor(i64),
    /// Remove the field.
    DropField,
    /// Put another ISO 4217 currency in the record's `currency`.
    SwapCurrency(String),
    /// Send the record twice, the second time under a new record id (a resend with the same
    /// id is an idempotent retry by design, not a fault).
    Duplicate,
    /// Do not send the record at all.
    DropRecord,
    /// Hold the record back this long.
    DelayMs(u64),
    // Availability faults: the proxy only (lossy drills).
    /// Hold the request `ms` ± `jitter_ms` (uniform) before forwarding it.
    Latency {
        ms: u64,
        #[serde(default)]
        jitter_ms: u64,
    },
    /// Answer with this HTTP status instead of forwarding (e.g. 503).
    Error(u16),
    /// Reset the client's connection (TCP RST) instead of answering.
    Reset,
    /// Wait this long, then answer 504 Gateway Timeout without forwarding.
    Timeout(u64),
    /// Send the response body at most this many bytes per second.
    Bandwidth(u64),
    /// Take the request and never answer; the connection is closed when the drill ends.
    BlackHole,
}

impl Mutation {
    /// Whether the mutation needs the field path (it changes a field's value).
    pub fn needs_field(&self) -> bool {
        matches!(
            self,
            Mutation::Set(_) | Mutation::Scale(_) | Mutation::OffsetMinor(_) | Mutation::DropField
        )
    }

    /// Whether the mutation is an availability fault (it changes how a request is served,
    /// not what it carries); only the proxy applies these.
    pub fn is_availability(&self) -> bool {
        matches!(
            self,
            Mutation::Latency { .. }
                | Mutation::Error(_)
                | Mutation::Reset
                | Mutation::Timeout(_)
                | Mutation::Bandwidth(_)
                | Mutation::BlackHole
        )
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Vip {
    #[default]
    Any,
    Only,
    Never,
}

/// Which bodies a fault may hit: a business filter.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Filter {
    /// A glob (`*` any run, `?` one character) the record's business key must match.
    pub keys_matching: Option<String>,
    /// VIP users only, never VIP users, or anyone (the `vip` attribute, "true"/"false").
    pub vip: Vip,
    /// Only records whose `test_account` attribute is "true".
    pub test_accounts_only: bool,
}

/// How much a fault may hit: at most N bodies, and at most P percent of the matching
/// traffic (decided per business key, so a key is hit on every record or none).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HitLimits {
    pub hits_max: u64,
    pub percent_max: u8,
}

impl Default for HitLimits {
    fn default() -> HitLimits {
        HitLimits {
            hits_max: 100,
            percent_max: 100,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    /// The record kind the fault applies to (`bill`); for the proxy, the kind the body
    /// carries.
    pub kind: String,
    /// A field path into the body: `amount`, `attributes.payer_account`.
    #[serde(default)]
    pub field: Option<String>,
    pub mutation: Mutation,
    #[serde(default)]
    pub filter: Filter,
    #[serde(default)]
    pub limits: HitLimits,
}

/// What verification is expected to report, and how fast.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Expect {
    /// The rules that must raise a break for every fault; the drill's rules when empty.
    pub rules: Vec<String>,
    /// Each fault must be discovered within this long of taking effect.
    pub within_ms: Option<u64>,
}

/// Steady-state checks during the drill; breaching one aborts and undoes the drill.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Guards {
    /// Most real (non-drill) breaks tolerated while the drill runs.
    pub real_breaks_max: Option<u64>,
    /// Highest error rate of the target, in percent, tolerated while the drill runs.
    pub error_rate_percent_max: Option<u8>,
}

/// How a lossy drill's hits are put right afterwards.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CorrectionSpec {
    /// A correction target of the server's configuration (`[[drills.corrections]]`): the
    /// downstream's correction API, booked from each hit's recorded original.
    pub target: Option<String>,
    /// Hand every hit to a person instead of correcting it automatically.
    pub manual: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrillSpec {
    pub name: String,
    #[serde(default = "lossless")]
    pub mode: Mode,
    #[serde(default)]
    pub rules: Vec<String>,
    #[serde(default)]
    pub link: Option<String>,
    pub faults: Vec<Fault>,
    #[serde(default = "ttl_default")]
    pub ttl_secs: u64,
    /// Report what would be injected, inject nothing.
    #[serde(default)]
    pub dry_run: bool,
    #[serde(default)]
    pub expect: Expect,
    #[serde(default)]
    pub guards: Guards,
    #[serde(default)]
    pub correction: CorrectionSpec,
}

fn lossless() -> Mode {
    Mode::Lossless
}

fn ttl_default() -> u64 {
    300
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("drill spec is not valid {format}: {message}")]
    Syntax {
        format: &'static str,
        message: String,
    },
    #[error("drill spec: {field}: {message}")]
    Invalid { field: String, message: String },
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> SpecError {
    SpecError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// Parses a drill spec from TOML or JSON (JSON when the text starts with `{`) and checks
/// everything the types do not: bounds, and which mutations need which fields.
pub fn parse_spec(text: &str) -> Result<DrillSpec, SpecError> {
    let spec: DrillSpec = if text.trim_start().starts_with('{') {
        serde_json::from_str(text).map_err(|e| SpecError::Syntax {
            format: "JSON",
            message: e.to_string(),
        })?
    } else {
        toml::from_str(text).map_err(|e| SpecError::Syntax {
            format: "TOML",
            message: e.message().to_string(),
        })?
    };
    validate(&spec)?;
    Ok(spec)
}

pub fn validate(spec: &DrillSpec) -> Result<(), SpecError> {
    if spec.name.trim().is_empty() {
        return Err(invalid("name", "must not be empty"));
    }
    if spec.rules.is_empty() == spec.link.is_none() {
        return Err(invalid(
            "rules",
            "give the target `rules` or a `link`, one of the two",
        ));
    }
    if spec.ttl_secs == 0 || spec.ttl_secs > TTL_SECS_MAX {
        return Err(invalid(
            "ttl_secs",
            format!("must be between 1 and {TTL_SECS_MAX}"),
        ));
    }
    if spec.faults.is_empty() || spec.faults.len() > FAULTS_MAX {
        return Err(invalid("faults", format!("give 1 to {FAULTS_MAX} faults")));
    }
    for (i, f) in spec.faults.iter().enumerate() {
        let at = |what: &str| format!("faults[{i}].{what}");
        if f.kind.trim().is_empty() {
            return Err(invalid(at("kind"), "must name the record kind"));
        }
        match (&f.field, f.mutation.needs_field()) {
            (None, true) => {
                return Err(invalid(
                    at("field"),
                    "this mutation changes a field; name it",
                ))
            }
            (Some(p), _) if p.split('.').any(|s| s.is_empty()) => {
                return Err(invalid(at("field"), format!("{p:?} is not a field path")))
            }
            _ => {}
        }
        match &f.mutation {
            Mutation::Scale(factor) if factor.parse::<rust_decimal::Decimal>().is_err() => {
                return Err(invalid(
                    at("mutation.scale"),
                    format!("{factor:?} is not a decimal factor"),
                ))
            }
            Mutation::SwapCurrency(code) if steadfast_model::Currency::from_code(code).is_err() => {
                return Err(invalid(
                    at("mutation.swap_currency"),
                    format!("{code:?} is not an ISO 4217 currency"),
                ))
            }
            Mutation::DelayMs(ms) if *ms == 0 || *ms > DELAY_MS_MAX => {
                return Err(invalid(
                    at("mutation.delay_ms"),
                    format!("must be between 1 and {DELAY_MS_MAX}"),
                ))
            }
            Mutation::Latency { ms, jitter_ms } if *ms > DELAY_MS_MAX || jitter_ms > ms => {
                return Err(invalid(
                    at("mutation.latency"),
                    format!("ms must be at most {DELAY_MS_MAX} and jitter_ms at most ms"),
                ))
            }
            Mutation::Timeout(ms) if *ms == 0 || *ms > DELAY_MS_MAX => {
                return Err(invalid(
                    at("mutation.timeout"),
                    format!("must be between 1 and {DELAY_MS_MAX}"),
                ))
            }
            Mutation::Error(status) if !(400..=599).contains(status) => {
                return Err(invalid(
                    at("mutation.error"),
                    "an error response is a status from 400 to 599",
                ))
            }
            Mutation::Bandwidth(b) if *b < BANDWIDTH_MIN => {
                return Err(invalid(
                    at("mutation.bandwidth"),
                    format!("at least {BANDWIDTH_MIN} bytes per second"),
                ))
            }
            m if m.is_availability() && spec.mode == Mode::Lossless => return Err(invalid(
                at("mutation"),
                "availability faults act on live requests through the proxy; use mode = \"lossy\"",
            )),
            Mutation::OffsetMinor(0) => {
                return Err(invalid(
                    at("mutation.offset_minor"),
                    "an offset of 0 changes nothing",
                ))
            }
            _ => {}
        }
        if f.limits.hits_max == 0 || f.limits.hits_max > HITS_MAX {
            return Err(invalid(
                at("limits.hits_max"),
                format!("must be between 1 and {HITS_MAX}"),
            ));
        }
        if f.limits.percent_max == 0 || f.limits.percent_max > 100 {
            return Err(invalid(
                at("limits.percent_max"),
                "must be between 1 and 100",
            ));
        }
    }
    let changes_data = spec.faults.iter().any(|f| !f.mutation.is_availability());
    if spec.mode == Mode::Lossy
        && changes_data
        && spec.correction.target.is_none()
        && !spec.correction.manual
    {
        return Err(invalid(
            "correction.target",
            "a lossy drill that changes data must say how it is put right: a correction target, or manual = true",
        ));
    }
    if spec.mode == Mode::Lossless && spec.correction != CorrectionSpec::default() {
        return Err(invalid(
            "correction",
            "a lossless drill touches no real data; there is nothing to correct",
        ));
    }
    if spec.expect.within_ms == Some(0) {
        return Err(invalid("expect.within_ms", "must be at least 1"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "bill amounts off by one cent"
rules = ["payment-bill"]
[[faults]]
kind = "bill"
field = "amount"
mutation = { offset_minor = 1 }
filter = { keys_matching = "ORD-*", vip = "never" }
limits = { hits_max = 100, percent_max = 10 }
[expect]
within_ms = 6000
"#;

    #[test]
    fn a_toml_spec_parses_with_defaults() {
        let s = parse_spec(GOOD).unwrap();
        assert_eq!(
            (s.mode, s.ttl_secs, s.dry_run),
            (Mode::Lossless, 300, false)
        );
        assert_eq!(s.faults[0].mutation, Mutation::OffsetMinor(1));
        assert_eq!(s.faults[0].filter.vip, Vip::Never);
    }

    #[test]
    fn a_json_spec_parses_the_same() {
        let json = serde_json::to_string(&parse_spec(GOOD).unwrap()).unwrap();
        assert_eq!(parse_spec(&json).unwrap(), parse_spec(GOOD).unwrap());
    }

    /// One line per mistake, each naming the field.
    #[test]
    fn bad_specs_name_the_field() {
        let cases = [
            (GOOD.replace("rules = [\"payment-bill\"]", ""), "rules"),
            (
                GOOD.replace("name = \"bill amounts off by one cent\"", "name = \"\""),
                "name",
            ),
            (GOOD.replace("field = \"amount\"\n", ""), "faults[0].field"),
            (
                GOOD.replace("offset_minor = 1", "offset_minor = 0"),
                "faults[0].mutation.offset_minor",
            ),
            (
                GOOD.replace("offset_minor = 1", "scale = \"x1\""),
                "faults[0].mutation.scale",
            ),
            (
                GOOD.replace("offset_minor = 1", "swap_currency = \"XXQ\""),
                "faults[0].mutation.swap_currency",
            ),
            (
                GOOD.replace("offset_minor = 1", "delay_ms = 0"),
                "faults[0].mutation.delay_ms",
            ),
            (
                GOOD.replace("percent_max = 10", "percent_max = 101"),
                "faults[0].limits.percent_max",
            ),
            (
                GOOD.replace("hits_max = 100", "hits_max = 0"),
                "faults[0].limits.hits_max",
            ),
            (
                GOOD.replace("within_ms = 6000", "within_ms = 0"),
                "expect.within_ms",
            ),
            (format!("ttl_secs = 0\n{GOOD}"), "ttl_secs"),
        ];
        for (text, field) in cases {
            match parse_spec(&text) {
                Err(SpecError::Invalid { field: f, .. }) => assert_eq!(f, field, "{text}"),
                other => panic!("expected an error on {field}, got {other:?}"),
            }
        }
        assert!(matches!(
            parse_spec(&GOOD.replace("mutation =", "mutaton =")),
            Err(SpecError::Syntax { format: "TOML", .. })
        ));
    }
}
