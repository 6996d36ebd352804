//! How numbers and times read on the pages.

/// A path segment or query value, percent-encoded (everything but letters, digits and
/// `-_.~`), safe in both places.
pub fn enc(s: &str) -> String {
    const KEEP: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(s, KEEP).to_string()
}

/// The text `enc` made (invalid UTF-8 replaced).
pub fn dec(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// A wall-clock time in UTC, to the second: `2026-12-03 14:53:49`.
pub fn time(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|| "—".into())
}

/// A time of day, for chart axes: `14:53` or `14:53:49` when seconds matter.
pub fn clock(ms: i64, seconds: bool) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| {
            t.format(if seconds { "%H:%M:%S" } else { "%H:%M" })
                .to_string()
        })
        .unwrap_or_default()
}

/// How long ago `ms` was, seen at `now_ms`: `42 s ago`, `3 min ago`, `2 h ago`, `4 d ago`.
pub fn ago(ms: i64, now_ms: i64) -> String {
    let secs = (now_ms - ms).max(0) / 1000;
    match secs {
        0..=59 => format!("{secs} s ago"),
        60..=3599 => format!("{} min ago", secs / 60),
        3600..=86_399 => format!("{} h ago", secs / 3600),
        _ => format!("{} d ago", secs / 86_400),
    }
}

/// A duration: `850 ms`, `1.2 s`, `3 min 5 s`, `2 h 10 min`.
pub fn duration_ms(ms: i64) -> String {
    let ms = ms.max(0);
    match ms {
        0..=999 => format!("{ms} ms"),
        1000..=59_999 => format!("{}.{} s", ms / 1000, (ms % 1000) / 100),
        60_000..=3_599_999 => format!("{} min {} s", ms / 60_000, (ms % 60_000) / 1000),
        _ => format!("{} h {} min", ms / 3_600_000, (ms % 3_600_000) / 60_000),
    }
}

/// An integer with thousands separators: `1 234 567`.
pub fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push('\u{202f}');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_durations_read_naturally() {
        assert_eq!(time(0), "1970-01-01 00:00:00");
        assert_eq!(clock(90_061_000, false), "01:01");
        assert_eq!(clock(90_061_000, true), "01:01:01");
        assert_eq!(ago(0, 42_000), "42 s ago");
        assert_eq!(ago(0, 180_000), "3 min ago");
        assert_eq!(ago(0, 7_200_000), "2 h ago");
        assert_eq!(ago(10, 0), "0 s ago");
        assert_eq!(duration_ms(850), "850 ms");
        assert_eq!(duration_ms(1_250), "1.2 s");
        assert_eq!(duration_ms(185_000), "3 min 5 s");
        assert_eq!(duration_ms(7_800_000), "2 h 10 min");
        assert_eq!(count(1_234_567), "1\u{202f}234\u{202f}567");
        assert_eq!(count(999), "999");
        assert_eq!(enc("a b/é+"), "a%20b%2F%C3%A9%2B");
        assert_eq!(dec(&enc("ok:a b/é+")), "ok:a b/é+");
    }
}
