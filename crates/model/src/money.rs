use std::fmt;
use std::str::FromStr;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// The largest magnitude an amount may have, in minor units. Sums of many amounts are
/// kept in `i128`, so this bound leaves room for 2^63 of them without overflow.
pub const MINOR_UNITS_MAX: i64 = i64::MAX / 2;

/// An ISO 4217 currency: its three-letter code and its scale (digits after the point).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Currency {
    code: [u8; 3],
    exponent: u8,
}

impl Currency {
    /// Looks a code up in ISO 4217. Codes without a minor unit (XAU, XDR...) are refused
    /// because an amount in them has no exact scale.
    pub fn from_code(code: &str) -> Result<Currency, MoneyError> {
        let iso = iso_currency::Currency::from_code(code)
            .ok_or_else(|| MoneyError::UnknownCurrency(code.to_string()))?;
        let exponent = iso
            .exponent()
            .ok_or_else(|| MoneyError::UnknownCurrency(code.to_string()))?;
        let bytes = code.as_bytes();
        Ok(Currency {
            code: [bytes[0], bytes[1], bytes[2]],
            exponent: exponent as u8,
        })
    }

    pub fn code(&self) -> &str {
        // The bytes came from a validated ASCII ISO code.
        std::str::from_utf8(&self.code).unwrap_or("???")
    }

    /// Digits after the decimal point (2 for USD, 0 for JPY, 3 for BHD).
    pub fn exponent(&self) -> u8 {
        self.exponent
    }
}

impl fmt::Debug for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl Serialize for Currency {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.code())
    }
}

impl<'de> Deserialize<'de> for Currency {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let code = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Currency::from_code(&code).map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error(
        "unknown currency {0:?}: expected an ISO 4217 code with a minor unit, such as \"USD\""
    )]
    UnknownCurrency(String),
    #[error("amount {0:?} is not a decimal number such as \"1234.56\"")]
    NotDecimal(String),
    #[error("amount {amount:?} has more decimals than {currency} allows ({exponent})")]
    TooManyDecimals {
        amount: String,
        currency: String,
        exponent: u8,
    },
    #[error("amount {0:?} is beyond the supported range")]
    OutOfRange(String),
}

/// An exact amount of money: integer minor units in a currency.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub struct Money {
    pub minor: i64,
    pub currency: Currency,
}

impl Money {
    /// Parses a decimal string in the given currency. "100.5" and "100.50" are equal;
    /// "100.505" in USD is refused; exponent notation and floats are refused.
    pub fn parse(text: &str, currency: Currency) -> Result<Money, MoneyError> {
        let trimmed = text.trim();
        let plain = !trimmed.is_empty()
            && trimmed
                .bytes()
                .enumerate()
                .all(|(i, b)| b.is_ascii_digit() || b == b'.' || (i == 0 && b == b'-'));
        if !plain {
            return Err(MoneyError::NotDecimal(text.to_string()));
        }
        let mut value =
            Decimal::from_str(trimmed).map_err(|_| MoneyError::NotDecimal(text.to_string()))?;
        value = value.normalize();
        let exponent = currency.exponent() as u32;
        if value.scale() > exponent {
            return Err(MoneyError::TooManyDecimals {
                amount: text.to_string(),
                currency: currency.code().to_string(),
                exponent: currency.exponent(),
            });
        }
        value.rescale(exponent);
        let mantissa = value.mantissa();
        if mantissa.unsigned_abs() > MINOR_UNITS_MAX as u128 {
            return Err(MoneyError::OutOfRange(text.to_string()));
        }
        Ok(Money {
            minor: mantissa as i64,
            currency,
        })
    }

    /// The canonical decimal string: exactly the currency's number of decimals.
    pub fn to_decimal_string(&self) -> String {
        format_minor(self.minor as i128, self.currency)
    }
}

/// Formats a (possibly summed) minor-unit value in a currency's scale.
pub fn format_minor(minor: i128, currency: Currency) -> String {
    let exponent = currency.exponent() as u32;
    let sign = if minor < 0 { "-" } else { "" };
    let abs = minor.unsigned_abs();
    if exponent == 0 {
        return format!("{sign}{abs}");
    }
    let div = 10u128.pow(exponent);
    format!(
        "{sign}{}.{:0width$}",
        abs / div,
        abs % div,
        width = exponent as usize
    )
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.to_decimal_string(), self.currency)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usd() -> Currency {
        Currency::from_code("USD").unwrap()
    }

    fn check(text: &str, code: &str, expect: Result<i64, &str>) {
        let cur = Currency::from_code(code).unwrap();
        let got = Money::parse(text, cur)
            .map(|m| m.minor)
            .map_err(|e| e.to_string());
        match expect {
            Ok(v) => assert_eq!(got, Ok(v), "{text} {code}"),
            Err(fragment) => {
                let err = got.expect_err(text);
                assert!(err.contains(fragment), "{text}: {err} lacks {fragment}");
            }
        }
    }

    #[test]
    fn parses_exact_amounts() {
        check("100.5", "USD", Ok(10050));
        check("100.50", "USD", Ok(10050));
        check("100.500", "USD", Ok(10050));
        check("0", "USD", Ok(0));
        check("-12.34", "USD", Ok(-1234));
        check("1234", "JPY", Ok(1234));
        check("1.234", "BHD", Ok(1234));
        check("100.505", "USD", Err("more decimals than USD allows (2)"));
        check("1.5", "JPY", Err("more decimals than JPY allows (0)"));
        check("1e5", "USD", Err("not a decimal"));
        check("", "USD", Err("not a decimal"));
        check("12,50", "USD", Err("not a decimal"));
        check("+5", "USD", Err("not a decimal"));
        check(
            "99999999999999999999",
            "USD",
            Err("beyond the supported range"),
        );
    }

    #[test]
    fn formats_in_currency_scale() {
        let m = Money::parse("100.5", usd()).unwrap();
        assert_eq!(m.to_decimal_string(), "100.50");
        let j = Money::parse("7", Currency::from_code("JPY").unwrap()).unwrap();
        assert_eq!(j.to_decimal_string(), "7");
        assert_eq!(format_minor(-5, usd()), "-0.05");
    }

    #[test]
    fn refuses_unknown_currencies() {
        assert!(Currency::from_code("XYZ").is_err());
        assert!(Currency::from_code("usd").is_err());
        assert!(Currency::from_code("XAU").is_err());
    }

    proptest::proptest! {
        #[test]
        fn round_trips(minor in -MINOR_UNITS_MAX..MINOR_UNITS_MAX) {
            let m = Money { minor, currency: usd() };
            let back = Money::parse(&m.to_decimal_string(), usd()).unwrap();
            proptest::prop_assert_eq!(back, m);
        }
    }
}
