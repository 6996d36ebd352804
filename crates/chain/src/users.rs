//! The users seen in spans, kept as spans are stored: when each was last seen, whether
//! they are a VIP, and their recent traces. The journeys page lists them (VIP first, then
//! the most recently seen) without scanning every stored span.
//!
//! Pure: spans in, a list out. The server feeds it what is durable and answers from it
//! the ranges that started after it did.

use std::collections::HashMap;

use crate::rows::SpanRow;

/// Users remembered at most; beyond it the tenth seen longest ago is forgotten.
pub const USERS_MAX: usize = 100_000;
/// Traces remembered per user at most (the newest); a user with more shows this many.
pub const TRACES_PER_USER_MAX: usize = 1_000;

const MINUTE_NS: i64 = 60_000_000_000;

/// What the user list needs of a span that names its user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserSpan {
    pub user: String,
    pub trace: u128,
    pub start_ns: i64,
    /// Marked a VIP's (listed, by attribute or by `tracestate`; see [`crate::sampling`]).
    pub vip: bool,
}

/// The spans of `rows` that name a user, with `is_vip`'s verdict on each.
pub fn tap(rows: &[SpanRow], is_vip: impl Fn(&SpanRow) -> bool) -> Vec<UserSpan> {
    rows.iter()
        .filter_map(|s| {
            Some(UserSpan {
                user: s.user_id.clone()?,
                trace: u128::from_str_radix(&s.trace_id, 16).ok()?,
                start_ns: s.start_ns,
                vip: is_vip(s),
            })
        })
        .collect()
}

#[derive(Debug, Default)]
struct Seen {
    last_ns: i64,
    /// A span of theirs marked them a VIP.
    vip: bool,
    /// Trace → its latest span start.
    traces: HashMap<u128, i64>,
}

/// One user of the list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub user: String,
    pub last_seen_ns: i64,
    /// Traces since the range's start (at most [`TRACES_PER_USER_MAX`]).
    pub traces: u64,
    pub vip: bool,
}

#[derive(Debug, Default)]
pub struct UserBook {
    users: HashMap<String, Seen>,
    /// The first minute after the newest span stored before the book started.
    started_ns: i64,
    /// The latest time of a user it has forgotten: ranges from before it are not whole.
    forgot_ns: i64,
}

impl UserBook {
    /// A book that has seen nothing of the spans already stored, the newest of which
    /// started at `stored_until_ns` (`None`: nothing is stored).
    pub fn new(stored_until_ns: Option<i64>) -> UserBook {
        UserBook {
            started_ns: stored_until_ns.map_or(i64::MIN, |t| {
                t.div_euclid(MINUTE_NS) * MINUTE_NS + MINUTE_NS
            }),
            forgot_ns: i64::MIN,
            ..UserBook::default()
        }
    }

    pub fn observe(&mut self, spans: &[UserSpan]) {
        for s in spans {
            if !self.users.contains_key(&s.user) && self.users.len() >= USERS_MAX {
                self.forget_oldest();
            }
            let seen = self.users.entry(s.user.clone()).or_default();
            seen.last_ns = seen.last_ns.max(s.start_ns);
            seen.vip |= s.vip;
            let t = seen.traces.entry(s.trace).or_insert(s.start_ns);
            *t = (*t).max(s.start_ns);
            if seen.traces.len() > TRACES_PER_USER_MAX {
                // The oldest tenth goes at once, so this runs once per hundred traces.
                let mut times: Vec<i64> = seen.traces.values().copied().collect();
                times.sort_unstable();
                let cut = times[TRACES_PER_USER_MAX / 10];
                seen.traces.retain(|_, t| *t > cut);
            }
        }
    }

    fn forget_oldest(&mut self) {
        let mut lasts: Vec<i64> = self.users.values().map(|s| s.last_ns).collect();
        lasts.sort_unstable();
        let cut = lasts[lasts.len() / 10];
        self.users.retain(|_, s| s.last_ns > cut);
        self.forgot_ns = self.forgot_ns.max(cut);
    }

    /// From this time on (ns) the list is whole: the book started before it and has
    /// forgotten no one seen since.
    pub fn whole_from_ns(&self) -> i64 {
        self.started_ns.max(self.forgot_ns.saturating_add(1))
    }

    /// The users seen from `since_ns` on: VIPs first (a span marked them, or `listed`
    /// says so), then the most recently seen; at most `limit`.
    pub fn list(&self, since_ns: i64, listed: impl Fn(&str) -> bool, limit: usize) -> Vec<User> {
        let mut out: Vec<User> = self
            .users
            .iter()
            .filter(|(_, s)| s.last_ns >= since_ns)
            .map(|(u, s)| User {
                user: u.clone(),
                last_seen_ns: s.last_ns,
                traces: s.traces.values().filter(|t| **t >= since_ns).count() as u64,
                vip: s.vip || listed(u),
            })
            .collect();
        out.sort_unstable_by(|a, b| {
            b.vip
                .cmp(&a.vip)
                .then(b.last_seen_ns.cmp(&a.last_seen_ns))
                .then(a.user.cmp(&b.user))
        });
        out.truncate(limit);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(user: &str, trace: u128, at_s: i64, vip: bool) -> UserSpan {
        UserSpan {
            user: user.into(),
            trace,
            start_ns: at_s * 1_000_000_000,
            vip,
        }
    }

    #[test]
    fn vips_come_first_then_the_most_recent() {
        let mut b = UserBook::new(None);
        b.observe(&[
            seen("ann", 1, 10, false),
            seen("bob", 2, 20, false),
            seen("cat", 3, 5, true),
            seen("ann", 4, 30, false),
            seen("ann", 4, 31, false),
        ]);
        let l = b.list(0, |u| u == "bob", 10);
        let names: Vec<&str> = l.iter().map(|u| u.user.as_str()).collect();
        assert_eq!(names, ["bob", "cat", "ann"]);
        assert_eq!((l[2].traces, l[2].last_seen_ns), (2, 31_000_000_000));
        // From 15 s on: ann's one trace then, bob; cat was seen before.
        let l = b.list(15_000_000_000, |_| false, 10);
        let got: Vec<(&str, u64)> = l.iter().map(|u| (u.user.as_str(), u.traces)).collect();
        assert_eq!(got, [("ann", 1), ("bob", 1)]);
        assert_eq!(b.list(0, |_| false, 1).len(), 1);
    }

    #[test]
    fn traces_per_user_are_bounded_to_the_newest() {
        let mut b = UserBook::new(None);
        let spans: Vec<UserSpan> = (0..(TRACES_PER_USER_MAX as i64 + 1))
            .map(|i| seen("ann", i as u128, i, false))
            .collect();
        b.observe(&spans);
        let l = b.list(0, |_| false, 10);
        assert!(l[0].traces <= TRACES_PER_USER_MAX as u64);
        assert_eq!(
            l[0].last_seen_ns,
            TRACES_PER_USER_MAX as i64 * 1_000_000_000
        );
        // The newest are the ones kept.
        let recent = b.list(
            (TRACES_PER_USER_MAX as i64 - 10) * 1_000_000_000,
            |_| false,
            1,
        );
        assert_eq!(recent[0].traces, 11);
    }

    #[test]
    fn users_are_bounded_and_forgetting_narrows_what_is_whole() {
        let mut b = UserBook::new(None);
        assert_eq!(b.whole_from_ns(), i64::MIN + 1);
        assert_eq!(
            UserBook::new(Some(30_000_000_000)).whole_from_ns(),
            MINUTE_NS
        );
        let spans: Vec<UserSpan> = (0..(USERS_MAX as i64 + 1))
            .map(|i| seen(&format!("u{i}"), i as u128, i, false))
            .collect();
        b.observe(&spans);
        assert!(b.users.len() <= USERS_MAX);
        assert!(
            b.whole_from_ns() > 0,
            "it forgot users seen after its start"
        );
        assert!(b.users.contains_key(&format!("u{USERS_MAX}")));
    }
}
