//! The fund records the HTTP, verify and restart benchmarks send or write, in the wire
//! form of the API (NDJSON, one record per line), and the order numbering they share.
//!
//! Order `i` has a successful payment (`payment-core`/`payment`, key `order_no`) and a
//! bill (`billing`/`bill`, key `biz_id`) with the same amount, currency and payer account,
//! so the `payment-bill` rule of `examples/rules.toml` matches them; a tampered bill
//! differs by one cent, which makes an `amount_mismatch` break.

use std::fmt::Write as _;

/// Digits of an epoch-millisecond event time (2001-09-09 to 2286-11-20), so the value can
/// be overwritten in place in a body that was built earlier.
pub const TIME_DIGITS: usize = 13;

pub fn order_no(i: usize) -> String {
    format!("ORD-{i:010}")
}

/// The payment's amount in cents: 1.00 to 10 000.99 USD, varying per order.
pub fn amount_minor(i: usize) -> i64 {
    100 + (i as i64 * 7919) % 1_000_000
}

fn account(i: usize) -> String {
    format!("ACC-{:06}", i % 100_000)
}

fn push_amount(buf: &mut String, minor: i64) {
    let _ = write!(buf, "\"{}.{:02}\"", minor / 100, minor % 100);
}

/// Appends the time and returns the byte offset of its first digit.
fn push_time(buf: &mut String, event_time: i64) -> usize {
    let at = buf.len();
    let _ = write!(buf, "{event_time}");
    assert_eq!(buf.len() - at, TIME_DIGITS, "event times have 13 digits");
    at
}

/// Appends the payment of order `i` and a newline; returns where its event time starts.
pub fn payment(buf: &mut String, i: usize, event_time: i64) -> usize {
    let _ = write!(
        buf,
        r#"{{"record_id":"pay-{i:010}","source":"payment-core","kind":"payment","keys":{{"order_no":"{}"}},"amount":"#,
        order_no(i)
    );
    push_amount(buf, amount_minor(i));
    let _ = write!(
        buf,
        r#","currency":"USD","account":"{}","status":"SUCCESS","event_time":"#,
        account(i)
    );
    let at = push_time(buf, event_time);
    buf.push_str("}\n");
    at
}

/// Appends the bill of order `i`, one cent off when `tampered`, and a newline; returns
/// where its event time starts.
pub fn bill(buf: &mut String, i: usize, event_time: i64, tampered: bool) -> usize {
    let _ = write!(
        buf,
        r#"{{"record_id":"bill-{i:010}","source":"billing","kind":"bill","keys":{{"biz_id":"{}"}},"amount":"#,
        order_no(i)
    );
    push_amount(buf, amount_minor(i) + i64::from(tampered));
    let _ = write!(
        buf,
        r#","currency":"USD","attributes":{{"payer_account":"{}"}},"event_time":"#,
        account(i)
    );
    let at = push_time(buf, event_time);
    buf.push_str("}\n");
    at
}

/// `1234567` as `1,234,567`.
pub fn group(n: u64) -> String {
    let digits = n.to_string();
    let mut s = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            s.push(',');
        }
        s.push(c);
    }
    s
}

#[cfg(test)]
mod tests {
    use steadfast_model::wire::parse_record;

    #[test]
    fn lines_parse_and_times_can_be_overwritten() {
        let mut buf = String::new();
        let t = 1_700_000_000_000;
        let at = super::payment(&mut buf, 7, t);
        assert_eq!(&buf[at..at + super::TIME_DIGITS], t.to_string());
        let start = buf.len();
        let bt = super::bill(&mut buf, 7, t, true);
        let mut bytes = buf.into_bytes();
        bytes[bt..bt + super::TIME_DIGITS].copy_from_slice(b"1700000000123");
        let text = String::from_utf8(bytes).unwrap();
        let p = parse_record(0, text[..start].trim()).unwrap();
        let b = parse_record(1, text[start..].trim()).unwrap();
        assert_eq!(p.keys["order_no"], b.keys["biz_id"]);
        assert_eq!(b.amount.minor, p.amount.minor + 1);
        assert_eq!(p.event_time, t);
        assert_eq!(b.event_time, 1_700_000_000_123);
        assert_eq!(
            p.account.as_deref(),
            Some(b.attributes["payer_account"].as_str())
        );
    }
}
