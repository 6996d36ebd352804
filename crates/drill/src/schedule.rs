//! Routine drills: cron schedules and blackout windows, decided from a clock the caller
//! passes in. A schedule fires at each cron time; a firing inside a blackout window (month-
//! end close, a peak sales day) is skipped and says why.
//!
//! Cron expressions have seconds: `sec min hour day-of-month month day-of-week [year]`,
//! e.g. `0 0 2 * * Mon-Fri` is 02:00 on weekdays (UTC).

use std::str::FromStr;

use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};

/// Longest blackout window: 31 days.
pub const BLACKOUT_SECS_MAX: u64 = 31 * 86_400;

fn parse_cron(text: &str) -> Result<cron::Schedule, String> {
    cron::Schedule::from_str(text).map_err(|e| {
        format!("{text:?} is not a cron expression (sec min hour day month weekday): {e}")
    })
}

fn at(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
}

/// Checks a cron expression.
pub fn check_cron(text: &str) -> Result<(), String> {
    parse_cron(text).map(|_| ())
}

/// The first cron time strictly after `after_ms`.
pub fn next_fire(cron: &str, after_ms: i64) -> Result<Option<i64>, String> {
    Ok(parse_cron(cron)?
        .after(&at(after_ms))
        .next()
        .map(|t| t.timestamp_millis()))
}

/// A time during which no drill starts: either fixed (`from`/`to`, RFC 3339) or recurring
/// (`cron` starts, each lasting `duration_secs`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Blackout {
    #[serde(default)]
    pub id: String,
    pub reason: String,
    #[serde(default)]
    pub from: Option<String>,
    #[serde(default)]
    pub to: Option<String>,
    #[serde(default)]
    pub cron: Option<String>,
    #[serde(default)]
    pub duration_secs: Option<u64>,
}

impl Blackout {
    pub fn validate(&self) -> Result<(), String> {
        if self.reason.trim().is_empty() {
            return Err("a blackout needs a `reason`".into());
        }
        match (&self.from, &self.to, &self.cron, self.duration_secs) {
            (Some(f), Some(t), None, None) => {
                let (f, t) = (parse_time(f)?, parse_time(t)?);
                if t <= f {
                    return Err("`to` must be after `from`".into());
                }
                if (t - f) / 1000 > BLACKOUT_SECS_MAX as i64 {
                    return Err(format!("a blackout lasts at most {BLACKOUT_SECS_MAX} s"));
                }
                Ok(())
            }
            (None, None, Some(c), Some(d)) => {
                if d == 0 || d > BLACKOUT_SECS_MAX {
                    return Err(format!("`duration_secs` must be 1 to {BLACKOUT_SECS_MAX}"));
                }
                check_cron(c)
            }
            _ => Err("give `from` and `to`, or `cron` and `duration_secs`".into()),
        }
    }

    /// Whether `now_ms` falls inside this window.
    pub fn covers(&self, now_ms: i64) -> bool {
        if let (Some(f), Some(t)) = (&self.from, &self.to) {
            return matches!((parse_time(f), parse_time(t)), (Ok(f), Ok(t)) if f <= now_ms && now_ms < t);
        }
        let (Some(c), Some(d)) = (&self.cron, self.duration_secs) else {
            return false;
        };
        let len = d as i64 * 1000;
        // The first start strictly after (now - len) began a window that still lasts, if
        // it is not after now.
        matches!(next_fire(c, now_ms - len), Ok(Some(start)) if start <= now_ms)
    }
}

fn parse_time(text: &str) -> Result<i64, String> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.timestamp_millis())
        .map_err(|_| format!("{text:?} is not an RFC 3339 time"))
}

/// What a schedule does when it comes due.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "decision")]
pub enum Firing {
    Start,
    Skip { reason: String },
}

/// Decides a due schedule: skipped in a blackout or under the kill switch, else started.
pub fn decide(blackouts: &[Blackout], now_ms: i64, killswitch_engaged: bool) -> Firing {
    if killswitch_engaged {
        return Firing::Skip {
            reason: "the kill switch is engaged".into(),
        };
    }
    match blackouts.iter().find(|b| b.covers(now_ms)) {
        Some(b) => Firing::Skip {
            reason: format!("blackout: {}", b.reason),
        },
        None => Firing::Start,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(t: &str) -> i64 {
        parse_time(t).unwrap()
    }

    #[test]
    fn schedules_fire_at_their_cron_times() {
        let after = ms("2026-12-04T01:59:59Z"); // a Friday
        assert_eq!(
            next_fire("0 0 2 * * Mon-Fri", after).unwrap(),
            Some(ms("2026-12-04T02:00:00Z"))
        );
        let sat = ms("2026-12-05T00:00:00Z");
        assert_eq!(
            next_fire("0 0 2 * * Mon-Fri", sat).unwrap(),
            Some(ms("2026-12-07T02:00:00Z"))
        );
        assert!(next_fire("every tuesday", 0).is_err());
    }

    #[test]
    fn blackouts_cover_fixed_and_recurring_windows() {
        let fixed = Blackout {
            id: String::new(),
            reason: "peak sales day".into(),
            from: Some("2026-11-11T00:00:00Z".into()),
            to: Some("2026-11-12T00:00:00Z".into()),
            cron: None,
            duration_secs: None,
        };
        fixed.validate().unwrap();
        assert!(fixed.covers(ms("2026-11-11T13:00:00Z")));
        assert!(!fixed.covers(ms("2026-11-12T00:00:00Z")), "the end is open");
        // Month-end close: from the 28th, for three days.
        let close = Blackout {
            id: String::new(),
            reason: "month-end close".into(),
            from: None,
            to: None,
            cron: Some("0 0 0 28 * *".into()),
            duration_secs: Some(3 * 86_400),
        };
        close.validate().unwrap();
        assert!(close.covers(ms("2026-12-28T00:00:00Z")));
        assert!(close.covers(ms("2026-12-30T23:59:59Z")));
        assert!(!close.covers(ms("2026-12-31T00:00:00Z")));
        assert!(!close.covers(ms("2026-12-27T23:59:59Z")));
        assert_eq!(
            decide(&[fixed, close.clone()], ms("2026-12-29T10:00:00Z"), false),
            Firing::Skip {
                reason: "blackout: month-end close".into()
            }
        );
        assert_eq!(
            decide(
                std::slice::from_ref(&close),
                ms("2026-12-10T10:00:00Z"),
                false
            ),
            Firing::Start
        );
        assert!(matches!(
            decide(&[close], ms("2026-12-10T10:00:00Z"), true),
            Firing::Skip { .. }
        ));
    }

    #[test]
    fn bad_blackouts_say_what_is_wrong() {
        let b =
            |from: Option<&str>, to: Option<&str>, cron: Option<&str>, d: Option<u64>| Blackout {
                id: String::new(),
                reason: "r".into(),
                from: from.map(String::from),
                to: to.map(String::from),
                cron: cron.map(String::from),
                duration_secs: d,
            };
        assert!(b(
            Some("2026-01-02T00:00:00Z"),
            Some("2026-01-01T00:00:00Z"),
            None,
            None
        )
        .validate()
        .unwrap_err()
        .contains("after"));
        assert!(
            b(Some("yesterday"), Some("2026-01-01T00:00:00Z"), None, None)
                .validate()
                .unwrap_err()
                .contains("RFC 3339")
        );
        assert!(b(None, None, Some("0 0 0 28 * *"), None)
            .validate()
            .unwrap_err()
            .contains("give"));
        assert!(b(None, None, Some("0 0 0 28 * *"), Some(0))
            .validate()
            .unwrap_err()
            .contains("duration_secs"));
    }
}
