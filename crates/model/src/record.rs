use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{Millis, Money};

/// Which side of an account an entry books. Conservation and balance rules sign
/// amounts by it: a credit adds, a debit subtracts.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Debit,
    Credit,
}

impl Direction {
    /// `minor` with this direction's sign: a credit adds, a debit subtracts.
    pub fn sign(self, minor: i64) -> i64 {
        match self {
            Direction::Credit => minor,
            Direction::Debit => -minor,
        }
    }

    /// The wire text: `debit` or `credit`.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Debit => "debit",
            Direction::Credit => "credit",
        }
    }

    /// Parses the wire text.
    pub fn parse(text: &str) -> Option<Direction> {
        match text {
            "debit" => Some(Direction::Debit),
            "credit" => Some(Direction::Credit),
            _ => None,
        }
    }
}

/// A 128-bit fingerprint of a record id. The engine remembers fingerprints rather than
/// ids to keep idempotency state small; a collision needs about 2^64 ids.
pub type RecordFp = u128;

/// What a system on a fund link reports for each record it writes.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct FundRecord {
    /// The idempotency key: the same id again is a retry with no second effect.
    pub record_id: String,
    /// The system that wrote the record (`payment-core`, `billing`).
    pub source: String,
    /// What the record is (`payment`, `bill`, `entry`, `balance`).
    pub kind: String,
    /// Business key fields (`order_no`, `txn_id`), as named by the source.
    pub keys: BTreeMap<String, String>,
    pub amount: Money,
    pub account: Option<String>,
    pub counter_account: Option<String>,
    pub direction: Option<Direction>,
    pub status: Option<String>,
    pub event_time: Millis,
    /// W3C trace id of the request that wrote the record.
    pub trace_id: Option<String>,
    pub order_id: Option<String>,
    /// Set on records forged or tampered by a drill; their breaks go to the drill.
    pub drill: Option<String>,
    /// The record id this record supersedes (a correcting bill, a fixed entry).
    pub amends: Option<String>,
    pub attributes: BTreeMap<String, String>,
}

impl FundRecord {
    pub fn fingerprint(&self) -> RecordFp {
        fingerprint(&self.record_id)
    }

    /// Looks a field up by the name a rule uses: the standard fields first, then the
    /// business keys, then the free attributes. Amount and currency are compared
    /// through [`Money`], not as text, so they are not returned here.
    pub fn field(&self, name: &str) -> Option<&str> {
        match name {
            "record_id" => Some(&self.record_id),
            "source" => Some(&self.source),
            "kind" => Some(&self.kind),
            "account" => self.account.as_deref(),
            "counter_account" => self.counter_account.as_deref(),
            "direction" => self.direction.map(|d| match d {
                Direction::Debit => "debit",
                Direction::Credit => "credit",
            }),
            "status" => self.status.as_deref(),
            "trace_id" => self.trace_id.as_deref(),
            "order_id" => self.order_id.as_deref(),
            "currency" => Some(self.amount.currency.code()),
            _ => self
                .keys
                .get(name)
                .or_else(|| self.attributes.get(name))
                .map(|s| s.as_str()),
        }
    }

    /// The amount signed by direction: credits positive, debits negative, no
    /// direction as given.
    pub fn signed_minor(&self) -> i64 {
        match self.direction {
            Some(d) => d.sign(self.amount.minor),
            None => self.amount.minor,
        }
    }
}

pub fn fingerprint(record_id: &str) -> RecordFp {
    xxhash_rust::xxh3::xxh3_128(record_id.as_bytes())
}

/// Masks an account or card number for display: all but the last four characters
/// become `*`. Short values are masked whole.
pub fn mask_account(value: &str) -> String {
    let chars: Vec<char> = value.chars().collect();
    if chars.len() <= 4 {
        return "*".repeat(chars.len());
    }
    let keep = chars.len() - 4;
    chars
        .iter()
        .enumerate()
        .map(|(i, c)| if i < keep { '*' } else { *c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_all_but_last_four() {
        assert_eq!(mask_account("4111111111111111"), "************1111");
        assert_eq!(mask_account("abc"), "***");
        assert_eq!(mask_account("ACC-0042"), "****0042");
    }
}
