//! The service map, kept as spans arrive: a call from one service to another is a span
//! whose parent is in another service, and a call to a database is a span that names
//! one. Each call is counted in the minute it started, with its errors and a latency
//! histogram, so the map over any range of minutes is a merge of a few small counters
//! rather than a join over every stored span.
//!
//! A trace's spans arrive in different requests and in any order (a callee usually
//! reports its span before its caller does), so a child waits for its parent, and a
//! parent is remembered for its children, for [`PAIR_WAIT_MS`] of arrival time. A child
//! whose parent has not arrived by then is counted in [`ServiceGraph::unpaired`].
//!
//! A call whose caller reported a client span and whose callee a server span also gives
//! its network time: the client's duration less the server's, the round trip and the
//! time on the wire that the callee never saw (for a browser's fetch, the user's
//! network). These are handed out by [`ServiceGraph::take_network`] for the detectors.
//!
//! Pure: spans and the time of their arrival in, edges out. The server feeds it what it
//! has stored durably, and answers from it the ranges it has seen whole.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use crate::rows::SpanRow;

/// How long (arrival time) a child waits for its parent, and a parent for its children.
pub const PAIR_WAIT_MS: i64 = 30_000;
/// Spans remembered for pairing at most (parents and waiting children); beyond it the
/// oldest are forgotten early, so a burst costs pairings, never unbounded memory.
pub const PAIRING_SPANS_MAX: usize = 1_000_000;
/// Minutes kept: a week, the longest range the dashboard offers. Older minutes go first.
pub const MINUTES_MAX: usize = 7 * 24 * 60;
/// Caller–callee pairs counted per minute at most; calls of further pairs in that minute
/// are counted in [`ServiceGraph::dropped`].
pub const EDGES_PER_MINUTE_MAX: usize = 1_024;
/// Network times held until [`ServiceGraph::take_network`] takes them; past it they are
/// counted in [`ServiceGraph::network_dropped`].
pub const NETWORK_PENDING_MAX: usize = 65_536;

const MINUTE_NS: i64 = 60_000_000_000;

/// The start of the minute after the one `ns` falls in.
fn next_minute(ns: i64) -> i64 {
    ns.div_euclid(MINUTE_NS) * MINUTE_NS + MINUTE_NS
}

/// What the map needs of a span: parsed once, before the rows are stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GraphSpan {
    pub trace: u128,
    pub span: u64,
    pub parent: Option<u64>,
    pub service: String,
    /// The database it called (`db.system.name`, or `database` for a statement alone).
    pub database: Option<String>,
    pub start_ns: i64,
    pub duration_ns: i64,
    pub error: bool,
    /// OpenTelemetry's span kind: a client span's duration includes the network.
    pub kind: Kind,
}

/// The span kinds the network time needs told apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Client,
    Server,
    Other,
}

impl Kind {
    pub fn of(kind: &str) -> Kind {
        match kind {
            "client" => Kind::Client,
            "server" => Kind::Server,
            _ => Kind::Other,
        }
    }
}

/// One call's network time: its caller's client span less its callee's server span.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkTime {
    pub caller: Arc<str>,
    pub callee: Arc<str>,
    /// When the callee's span ended, nanoseconds since the Unix epoch.
    pub end_ns: i64,
    pub network_ns: i64,
}

/// The spans of `rows` as the map reads them; spans with malformed ids are left out (the
/// store keeps them, they just cannot be paired).
pub fn tap(rows: &[SpanRow]) -> Vec<GraphSpan> {
    rows.iter()
        .filter_map(|s| {
            Some(GraphSpan {
                trace: u128::from_str_radix(&s.trace_id, 16).ok()?,
                span: u64::from_str_radix(&s.span_id, 16).ok()?,
                parent: match s.parent_span_id.as_deref() {
                    None | Some("") => None,
                    Some(p) => Some(u64::from_str_radix(p, 16).ok()?),
                },
                service: s.service.clone(),
                database: match (&s.db_system, &s.db_statement) {
                    (Some(d), _) => Some(d.clone()),
                    (None, Some(_)) => Some("database".into()),
                    (None, None) => None,
                },
                start_ns: s.start_ns,
                duration_ns: s.end_ns.saturating_sub(s.start_ns).max(0),
                error: s.status == "error",
                kind: Kind::of(&s.kind),
            })
        })
        .collect()
}

/// Latency bucket of a duration: four per power of two (at most 12.5 % wide).
fn bucket(ns: i64) -> u8 {
    let d = ns.max(0) as u64;
    if d < 4 {
        return d as u8;
    }
    let e = 63 - d.leading_zeros();
    let sub = (d >> (e - 2)) & 3;
    (e * 4 + sub as u32) as u8
}

/// The middle of a bucket, nanoseconds.
fn bucket_mid(b: u8) -> i64 {
    if b < 4 {
        return b as i64;
    }
    let (e, sub) = ((b / 4) as u32, (b % 4) as u64);
    let lo = (4 + sub) << (e - 2);
    let width = 1u64 << (e - 2);
    (lo + width / 2) as i64
}

/// Calls of one caller to one callee in one minute.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Stat {
    calls: u64,
    errors: u64,
    /// Latency bucket → calls.
    latency: BTreeMap<u8, u64>,
}

impl Stat {
    fn add(&mut self, duration_ns: i64, error: bool) {
        self.calls += 1;
        self.errors += error as u64;
        *self.latency.entry(bucket(duration_ns)).or_default() += 1;
    }

    fn merge(&mut self, o: &Stat) {
        self.calls += o.calls;
        self.errors += o.errors;
        for (b, n) in &o.latency {
            *self.latency.entry(*b).or_default() += n;
        }
    }

    /// The `q` quantile (0..=1) of the latency, from the histogram.
    fn quantile(&self, q: f64) -> i64 {
        let total: u64 = self.latency.values().sum();
        let rank = ((q * total as f64).ceil() as u64).clamp(1, total.max(1));
        let mut seen = 0;
        for (b, n) in &self.latency {
            seen += n;
            if seen >= rank {
                return bucket_mid(*b);
            }
        }
        0
    }
}

/// One edge of the map over a range.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Edge {
    pub caller: String,
    pub callee: String,
    pub calls: u64,
    pub errors: u64,
    /// The callee's latency, from a histogram whose buckets are at most 12.5 % wide.
    pub p50_ns: i64,
    pub p99_ns: i64,
}

/// A child span waiting for its parent.
#[derive(Clone, Debug)]
struct Child {
    service: Arc<str>,
    start_ns: i64,
    duration_ns: i64,
    error: bool,
    server: bool,
}

/// A span remembered for its children.
#[derive(Clone, Debug)]
struct Parent {
    service: Arc<str>,
    /// Its duration when it is a client span (whose children's network time it gives).
    client_ns: Option<i64>,
}

type Key = (u128, u64);

/// One minute's calls: (caller, callee) → calls.
type Minute = HashMap<(Arc<str>, Arc<str>), Stat>;

#[derive(Debug, Default)]
pub struct ServiceGraph {
    /// Spans that arrived in the last [`PAIR_WAIT_MS`], by trace and span id.
    seen: HashMap<Key, Parent>,
    /// Children whose parent has not arrived, by trace and parent span id.
    waiting: HashMap<Key, Vec<Child>>,
    waiting_len: usize,
    /// Arrival order of `seen` (false) and `waiting` (true) entries, for expiry.
    order: VecDeque<(i64, Key, bool)>,
    /// Minute start (ns) → (caller, callee) → calls.
    minutes: BTreeMap<i64, Minute>,
    names: HashSet<Arc<str>>,
    /// Minutes from this one on are whole: the first after the newest span stored
    /// before the graph started (which it never saw), or after the newest it let go.
    whole_ns: i64,
    /// Children whose parent never arrived within the wait.
    pub unpaired: u64,
    /// Calls left out by [`EDGES_PER_MINUTE_MAX`] or because their minute was too old.
    pub dropped: u64,
    network: Vec<NetworkTime>,
    /// Network times left out by [`NETWORK_PENDING_MAX`].
    pub network_dropped: u64,
}

impl ServiceGraph {
    /// A graph that has seen nothing of the spans already stored, the newest of which
    /// started at `stored_until_ns` (`None`: nothing is stored).
    pub fn new(stored_until_ns: Option<i64>) -> ServiceGraph {
        ServiceGraph {
            whole_ns: stored_until_ns.map_or(i64::MIN, next_minute),
            ..ServiceGraph::default()
        }
    }

    fn name(&mut self, s: &str) -> Arc<str> {
        if let Some(n) = self.names.get(s) {
            return n.clone();
        }
        let n: Arc<str> = Arc::from(s);
        self.names.insert(n.clone());
        n
    }

    fn count(&mut self, caller: &Arc<str>, callee: &Arc<str>, start_ns: i64, d: i64, err: bool) {
        let minute = start_ns.div_euclid(MINUTE_NS) * MINUTE_NS;
        let full = self.minutes.len() >= MINUTES_MAX;
        if full
            && self
                .minutes
                .first_key_value()
                .is_some_and(|(m, _)| minute < *m)
        {
            self.dropped += 1;
            return;
        }
        let edges = self.minutes.entry(minute).or_default();
        let key = (caller.clone(), callee.clone());
        if edges.len() >= EDGES_PER_MINUTE_MAX && !edges.contains_key(&key) {
            self.dropped += 1;
        } else {
            edges.entry(key).or_default().add(d, err);
        }
        while self.minutes.len() > MINUTES_MAX {
            if let Some((m, _)) = self.minutes.pop_first() {
                self.whole_ns = self.whole_ns.max(next_minute(m));
            }
        }
    }

    /// A call of `parent`'s service to `child`'s.
    fn call(&mut self, parent: &Parent, child: &Child) {
        if parent.service == child.service {
            return;
        }
        self.count(
            &parent.service,
            &child.service,
            child.start_ns,
            child.duration_ns,
            child.error,
        );
        let Some(client_ns) = parent.client_ns.filter(|_| child.server) else {
            return;
        };
        if self.network.len() >= NETWORK_PENDING_MAX {
            self.network_dropped += 1;
            return;
        }
        self.network.push(NetworkTime {
            caller: parent.service.clone(),
            callee: child.service.clone(),
            end_ns: child.start_ns.saturating_add(child.duration_ns),
            // A server span can outlast its client's (work after the answer was sent,
            // timers of different resolution): that call spent no time on the network.
            network_ns: (client_ns - child.duration_ns).max(0),
        });
    }

    /// Takes in spans that arrived (were stored) at `now_ms`.
    pub fn observe(&mut self, spans: &[GraphSpan], now_ms: i64) {
        for s in spans {
            let service = self.name(&s.service);
            if let Some(db) = &s.database {
                let db = self.name(db);
                self.count(&service, &db, s.start_ns, s.duration_ns, s.error);
            }
            let me = Parent {
                service: service.clone(),
                client_ns: (s.kind == Kind::Client).then_some(s.duration_ns),
            };
            // Its children that arrived first.
            if let Some(kids) = self.waiting.remove(&(s.trace, s.span)) {
                self.waiting_len -= kids.len();
                for k in &kids {
                    self.call(&me, k);
                }
            }
            if let Some(p) = s.parent {
                let child = Child {
                    service: service.clone(),
                    start_ns: s.start_ns,
                    duration_ns: s.duration_ns,
                    error: s.error,
                    server: s.kind == Kind::Server,
                };
                match self.seen.get(&(s.trace, p)).cloned() {
                    Some(parent) => self.call(&parent, &child),
                    None => {
                        self.waiting.entry((s.trace, p)).or_default().push(child);
                        self.waiting_len += 1;
                        self.order.push_back((now_ms, (s.trace, p), true));
                    }
                }
            }
            self.seen.insert((s.trace, s.span), me);
            self.order.push_back((now_ms, (s.trace, s.span), false));
        }
        self.expire(now_ms);
    }

    fn expire(&mut self, now_ms: i64) {
        while let Some(&(at, key, waiting)) = self.order.front() {
            let over = self.seen.len() + self.waiting_len > PAIRING_SPANS_MAX;
            if at > now_ms - PAIR_WAIT_MS && !over {
                break;
            }
            self.order.pop_front();
            if waiting {
                if let Some(kids) = self.waiting.remove(&key) {
                    self.waiting_len -= kids.len();
                    self.unpaired += kids.len() as u64;
                }
            } else {
                self.seen.remove(&key);
            }
        }
    }

    /// From this time on (ns) every minute it holds is whole: it saw every span stored
    /// since, and has let none of those minutes go.
    pub fn whole_from_ns(&self) -> i64 {
        self.whole_ns
    }

    /// The map over the minutes that start in `[from_ns, to_ns)`, and the one `from_ns`
    /// falls in: edges sorted by caller and callee.
    pub fn edges(&self, from_ns: i64, to_ns: i64) -> Vec<Edge> {
        let from = from_ns.div_euclid(MINUTE_NS) * MINUTE_NS;
        let mut sum: BTreeMap<(&str, &str), Stat> = BTreeMap::new();
        for (_, edges) in self.minutes.range(from..to_ns.max(from)) {
            for ((a, b), s) in edges {
                sum.entry((a, b)).or_default().merge(s);
            }
        }
        sum.into_iter()
            .map(|((a, b), s)| Edge {
                caller: a.to_string(),
                callee: b.to_string(),
                calls: s.calls,
                errors: s.errors,
                p50_ns: s.quantile(0.5),
                p99_ns: s.quantile(0.99),
            })
            .collect()
    }

    /// The network times of the calls paired since the last take, in pairing order.
    pub fn take_network(&mut self) -> Vec<NetworkTime> {
        std::mem::take(&mut self.network)
    }

    /// Spans held for pairing now (parents and waiting children).
    pub fn pairing_len(&self) -> usize {
        self.seen.len() + self.waiting_len
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const T0: i64 = 1_764_770_400_000_000_000; // a whole minute

    fn span(trace: u128, id: u64, parent: Option<u64>, service: &str, at_s: i64) -> GraphSpan {
        GraphSpan {
            trace,
            span: id,
            parent,
            service: service.into(),
            database: None,
            start_ns: T0 + at_s * 1_000_000_000,
            duration_ns: 1_000_000,
            error: false,
            kind: Kind::Other,
        }
    }

    /// The map as a join over all the spans at once computes it.
    fn joined(spans: &[GraphSpan]) -> BTreeMap<(String, String), u64> {
        let by_id: HashMap<Key, &GraphSpan> =
            spans.iter().map(|s| ((s.trace, s.span), s)).collect();
        let mut out = BTreeMap::new();
        for c in spans {
            if let Some(p) = c.parent.and_then(|p| by_id.get(&(c.trace, p))) {
                if p.service != c.service {
                    *out.entry((p.service.clone(), c.service.clone()))
                        .or_default() += 1;
                }
            }
            if let Some(db) = &c.database {
                *out.entry((c.service.clone(), db.clone())).or_default() += 1;
            }
        }
        out
    }

    fn counts(edges: &[Edge]) -> BTreeMap<(String, String), u64> {
        edges
            .iter()
            .map(|e| ((e.caller.clone(), e.callee.clone()), e.calls))
            .collect()
    }

    #[test]
    fn buckets_are_ordered_and_narrow() {
        let mut last = 0;
        for d in [
            1i64,
            3,
            4,
            5,
            7,
            8,
            100,
            1_000,
            999_999,
            1_000_000,
            30_000_000_000,
        ] {
            let b = bucket(d);
            assert!(b >= last, "{d}");
            last = b;
            let mid = bucket_mid(b);
            assert!(
                (mid - d).abs() as f64 <= d as f64 * 0.125 + 1.0,
                "{d} → {mid}"
            );
        }
    }

    #[test]
    fn a_child_before_its_parent_is_paired_when_the_parent_comes() {
        let mut g = ServiceGraph::new(None);
        g.observe(&[span(1, 2, Some(1), "billing", 0)], 0);
        assert!(g.edges(T0, T0 + MINUTE_NS).is_empty());
        g.observe(&[span(1, 1, None, "gateway", 0)], 1_000);
        let e = g.edges(T0, T0 + MINUTE_NS);
        assert_eq!(e.len(), 1);
        assert_eq!(
            (e[0].caller.as_str(), e[0].callee.as_str(), e[0].calls),
            ("gateway", "billing", 1)
        );
        assert_eq!(g.unpaired, 0);
    }

    #[test]
    fn a_parent_that_never_comes_leaves_its_child_unpaired_and_is_forgotten() {
        let mut g = ServiceGraph::new(None);
        g.observe(&[span(1, 2, Some(1), "billing", 0)], 0);
        g.observe(&[span(9, 9, None, "gateway", 0)], PAIR_WAIT_MS + 1);
        assert_eq!(g.unpaired, 1);
        // The late parent pairs with nothing now.
        g.observe(&[span(1, 1, None, "gateway", 0)], PAIR_WAIT_MS + 2);
        assert!(g.edges(T0, T0 + MINUTE_NS).is_empty());
        assert_eq!(g.pairing_len(), 2);
    }

    #[test]
    fn database_calls_errors_and_latency_are_counted() {
        let mut g = ServiceGraph::new(None);
        let mut spans = Vec::new();
        for i in 0..100u64 {
            let mut s = span(i as u128, 1, None, "ledger", 0);
            s.database = Some("sqlite".into());
            s.duration_ns = (i as i64 + 1) * 1_000_000; // 1..100 ms
            s.error = i % 10 == 0;
            spans.push(s);
        }
        g.observe(&spans, 0);
        let e = &g.edges(T0, T0 + MINUTE_NS)[0];
        assert_eq!((e.caller.as_str(), e.callee.as_str()), ("ledger", "sqlite"));
        assert_eq!((e.calls, e.errors), (100, 10));
        assert!(
            (e.p50_ns - 50_000_000).abs() <= 50_000_000 / 8,
            "{}",
            e.p50_ns
        );
        assert!(
            (e.p99_ns - 99_000_000).abs() <= 99_000_000 / 8,
            "{}",
            e.p99_ns
        );
    }

    #[test]
    fn ranges_are_whole_minutes_and_start_after_what_was_stored_before() {
        let mut g = ServiceGraph::new(None);
        assert_eq!(g.whole_from_ns(), i64::MIN, "nothing was stored before it");
        g.observe(
            &[span(1, 1, None, "a", 30), span(1, 2, Some(1), "b", 30)],
            0,
        );
        g.observe(
            &[span(2, 1, None, "a", 90), span(2, 2, Some(1), "b", 90)],
            0,
        );
        // A range starts at its whole minute.
        assert_eq!(g.edges(T0 + 61_000_000_000, T0 + 3 * MINUTE_NS)[0].calls, 1);
        assert_eq!(g.edges(T0, T0 + 3 * MINUTE_NS)[0].calls, 2);
        assert!(g.edges(T0 + 2 * MINUTE_NS, T0 + 3 * MINUTE_NS).is_empty());

        // Started over spans stored before (a restart), it vouches only for the minutes
        // after the newest of them, even when older spans reach it.
        let mut g = ServiceGraph::new(Some(T0 + 90_000_000_000));
        g.observe(&[span(1, 1, None, "a", 30)], 0);
        assert_eq!(g.whole_from_ns(), T0 + 2 * MINUTE_NS);
    }

    #[test]
    fn a_client_span_and_its_server_child_give_the_calls_network_time() {
        let mut g = ServiceGraph::new(None);
        let client = |id: u64, parent: Option<u64>, service: &str, ms: i64| GraphSpan {
            kind: Kind::Client,
            duration_ns: ms * 1_000_000,
            ..span(1, id, parent, service, 0)
        };
        let server = |id: u64, parent: Option<u64>, service: &str, ms: i64| GraphSpan {
            kind: Kind::Server,
            duration_ns: ms * 1_000_000,
            ..span(1, id, parent, service, 0)
        };
        // The browser's fetch (40 ms) is reported after the gateway's span (30 ms) it
        // caused, whose own call to billing (client 12 ms, server 9 ms) comes in order.
        g.observe(&[server(2, Some(1), "gateway", 30)], 0);
        g.observe(&[client(1, None, "rum:shop", 40)], 10);
        g.observe(
            &[
                client(3, Some(2), "gateway", 12),
                server(4, Some(3), "billing", 9),
            ],
            20,
        );
        // An internal span's child is a call, but says nothing of the network.
        g.observe(
            &[
                span(1, 5, Some(2), "gateway", 0),
                server(6, Some(5), "ledger", 5),
            ],
            30,
        );
        let times: Vec<(String, String, i64)> = g
            .take_network()
            .into_iter()
            .map(|n| {
                (
                    n.caller.to_string(),
                    n.callee.to_string(),
                    n.network_ns / 1_000_000,
                )
            })
            .collect();
        assert_eq!(
            times,
            [
                ("rum:shop".to_string(), "gateway".to_string(), 10),
                ("gateway".to_string(), "billing".to_string(), 3),
            ]
        );
        assert!(g.take_network().is_empty(), "taken once");
        assert_eq!(g.edges(T0, T0 + MINUTE_NS).len(), 3);
    }

    #[test]
    fn network_times_wait_in_a_bounded_buffer() {
        let mut g = ServiceGraph::new(None);
        let spans: Vec<GraphSpan> = (0..(NETWORK_PENDING_MAX as u128 + 5))
            .flat_map(|t| {
                [
                    GraphSpan {
                        kind: Kind::Client,
                        ..span(t, 1, None, "a", 0)
                    },
                    GraphSpan {
                        kind: Kind::Server,
                        ..span(t, 2, Some(1), "b", 0)
                    },
                ]
            })
            .collect();
        g.observe(&spans, 0);
        assert_eq!(g.take_network().len(), NETWORK_PENDING_MAX);
        assert_eq!(g.network_dropped, 5);
    }

    #[test]
    fn pairing_memory_is_bounded() {
        let mut g = ServiceGraph::new(None);
        let spans: Vec<GraphSpan> = (0..(PAIRING_SPANS_MAX as u64 + 10))
            .map(|i| span(i as u128, 1, None, "a", 0))
            .collect();
        g.observe(&spans, 0);
        assert!(g.pairing_len() <= PAIRING_SPANS_MAX);
    }

    proptest! {
        /// In any arrival order, within the wait, the map is the join's.
        #[test]
        fn any_arrival_order_gives_the_joins_map(
            traces in prop::collection::vec(prop::collection::vec((0usize..4, any::<bool>()), 1..6), 1..20),
            seed in any::<u64>(),
        ) {
            let services = ["gateway", "payment-core", "billing", "ledger"];
            let mut spans = Vec::new();
            for (t, tr) in traces.iter().enumerate() {
                for (i, (svc, db)) in tr.iter().enumerate() {
                    // Each span's parent is an earlier span of its trace.
                    let parent = (i > 0).then(|| (seed.wrapping_add(i as u64) % i as u64) + 1);
                    let mut s = span(t as u128, i as u64 + 1, parent, services[*svc], 0);
                    if *db { s.database = Some("sqlite".into()); }
                    spans.push(s);
                }
            }
            let want = joined(&spans);
            // A shuffled arrival, in batches of three, all within the wait.
            let mut order: Vec<usize> = (0..spans.len()).collect();
            let mut x = seed | 1;
            for i in (1..order.len()).rev() {
                x ^= x << 13; x ^= x >> 7; x ^= x << 17;
                order.swap(i, (x % (i as u64 + 1)) as usize);
            }
            let shuffled: Vec<GraphSpan> = order.iter().map(|&i| spans[i].clone()).collect();
            let mut g = ServiceGraph::new(None);
            for (n, chunk) in shuffled.chunks(3).enumerate() {
                g.observe(chunk, n as i64 * 10);
            }
            prop_assert_eq!(counts(&g.edges(T0, T0 + MINUTE_NS)), want);
            prop_assert_eq!(g.unpaired, 0);
        }
    }
}
