//! Steadfast's shared vocabulary: the types every other crate speaks.
//!
//! - [`Money`] is an exact amount: integer minor units plus a [`Currency`] whose scale
//!   comes from ISO 4217. Amounts travel as decimal strings and are never floats.
//! - [`FundRecord`] is what a system on a fund link reports when it writes money.
//! - [`wire`] turns JSON and NDJSON bodies into validated records with one error per
//!   bad record, so an ingest edge can say precisely what was refused and why.
//! - Time is [`Millis`]: milliseconds since the Unix epoch, passed in as data.
//!
//! This crate does no IO.

mod money;
mod record;
pub mod wire;

pub use money::{format_minor, Currency, Money, MoneyError, MINOR_UNITS_MAX};
pub use record::{mask_account, Direction, FundRecord, RecordFp};

/// The attribute with which a drill-marked record names the rules (comma-separated) that
/// verify it; other rules reading its stream ignore it. A forgery aimed at one rule then
/// raises nothing on the rules around it.
pub const DRILL_RULES_ATTR: &str = "drill_rules";

/// Milliseconds since the Unix epoch (UTC). All engine time is expressed in this unit.
pub type Millis = i64;

/// Formats epoch milliseconds as RFC 3339 with millisecond precision.
pub fn format_millis(ms: Millis) -> String {
    match chrono::DateTime::from_timestamp_millis(ms) {
        Some(t) => t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        None => ms.to_string(),
    }
}

/// Parses RFC 3339 text into epoch milliseconds.
pub fn parse_millis(text: &str) -> Option<Millis> {
    chrono::DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.timestamp_millis())
}
