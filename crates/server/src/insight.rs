//! Baselines, alerts and incidents on live data: the edge around `steadfast_insight`.
//!
//! Spans are tapped as they are stored (before sampling, so rates are true) into
//! per-service buckets; fund breaks are counted per rule as they are stored. Every
//! `interval_ms` the buckets close into one point per series (requests, errors, p95
//! latency and p95 database time per service; breaks per rule), each series' detector
//! scores its point, the alert rules and the incident merge run over the scores, and an
//! incident that opens or grows is analysed (root-cause ranking on the service map) and
//! stored with a notice for the webhook. The detectors and alert state are in memory and
//! rebuilt from live data after a restart; incidents and notices are durable.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use steadfast_chain::graph::NetworkTime;
use steadfast_chain::SpanRow;
use steadfast_insight::alert::{
    Alert, AlertRule, Book, Event, Incident, MergeConfig, Observation, ServiceGraph, Severity,
    State as AlertState,
};
use steadfast_insight::baseline::{Detector, DetectorConfig, Direction, SeriesKind};
use steadfast_store::IncidentStore;

use crate::api::{ApiError, Shared};
use crate::pipeline::wall_ms;

/// `[insight]`: the detectors, alert rules and incident merge.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InsightConfig {
    pub enabled: bool,
    /// One point per series per interval (of the spans' end times).
    pub interval_ms: u64,
    /// How long after an interval ends its spans may still arrive (exporters batch
    /// them); the interval is scored then. Later spans are counted and dropped.
    pub lateness_ms: u64,
    /// Series watched at most (services × metrics, rules); new ones past it are counted
    /// and not watched.
    pub series_max: usize,
    /// Points kept per series for charts and root-cause analysis.
    pub points_kept: usize,
    /// Points before an incident that root-cause analysis treats as normal.
    pub rca_before_points: usize,
    /// The detector's settings, shared by every series (kind and direction are per metric).
    pub detector: DetectorConfig,
    /// Alert rules; the defaults cover latency, errors, throughput drops and breaks.
    pub rules: Vec<AlertRule>,
    pub merge: MergeConfig,
    /// Where incident notices are POSTed; none when absent.
    pub webhook_url: Option<String>,
    /// How often the service map used for merging and analysis is refreshed.
    pub map_refresh_secs: u64,
}

impl Default for InsightConfig {
    fn default() -> Self {
        InsightConfig {
            enabled: true,
            interval_ms: 10_000,
            lateness_ms: 5_000,
            series_max: 5_000,
            points_kept: 720,
            rca_before_points: 30,
            detector: DetectorConfig::default(),
            rules: default_rules(),
            merge: MergeConfig::default(),
            webhook_url: None,
            map_refresh_secs: 30,
        }
    }
}

/// Bounds the configuration may not pass: they bound memory per series and per interval.
pub const POINTS_KEPT_MAX: usize = 100_000;
pub const SERIES_MAX_MAX: usize = 1_000_000;
/// Durations sampled per service per interval for the percentiles; past it, a
/// deterministic reservoir keeps a uniform sample.
pub const DURATIONS_PER_INTERVAL_MAX: usize = 4_096;

fn default_rules() -> Vec<AlertRule> {
    let rule = |name: &str, metric: &str, severity, traffic_min| AlertRule {
        name: name.into(),
        metric: metric.into(),
        services: vec![],
        baseline: true,
        above: None,
        below: None,
        above_ratio: None,
        below_ratio: None,
        above_delta: None,
        for_points: 1,
        traffic_min,
        severity,
        resolve_points: 3,
    };
    // Latency must also be 1.25 times its baseline and 10 ms above it for three
    // intervals in a row (page loads: 100 ms), and a throughput drop must halve it:
    // smaller or shorter departures are real, but nobody acts on them. The absolute
    // margin is what keeps a fast service quiet on a busy host, where a 2 ms p95 doubles
    // for minutes at a time without anyone noticing.
    vec![
        AlertRule {
            above: Some(1.0),
            above_ratio: Some(1.25),
            above_delta: Some(10.0),
            for_points: 3,
            ..rule("latency", METRIC_LATENCY, Severity::Warning, 5.0)
        },
        rule("errors", METRIC_ERRORS, Severity::Critical, 5.0),
        AlertRule {
            below_ratio: Some(0.5),
            ..rule("throughput_drop", METRIC_REQUESTS, Severity::Warning, 0.0)
        },
        rule("breaks", METRIC_BREAKS, Severity::Critical, 0.0),
        // Pages that load slower than they did: the same shape as service latency.
        AlertRule {
            above: Some(1.0),
            above_ratio: Some(1.25),
            above_delta: Some(100.0),
            for_points: 3,
            ..rule("web_vitals", METRIC_LCP, Severity::Warning, 5.0)
        },
        // The network to a service: judged as its latency is, over its callers' calls.
        AlertRule {
            above: Some(1.0),
            above_ratio: Some(1.25),
            above_delta: Some(10.0),
            for_points: 3,
            ..rule("network", METRIC_NETWORK, Severity::Warning, 5.0)
        },
    ]
}

pub const METRIC_LATENCY: &str = "latency_ms_p95";
pub const METRIC_DB: &str = "db_ms_p95";
pub const METRIC_ERRORS: &str = "errors";
pub const METRIC_REQUESTS: &str = "requests";
pub const METRIC_BREAKS: &str = "breaks";
/// Largest Contentful Paint of a browser site's page loads (`rum:<site>`), the 75th
/// percentile as web vitals are judged.
pub const METRIC_LCP: &str = "lcp_ms_p75";
/// Network time of the calls into a service (its callers' client spans less its server
/// spans), the 95th percentile: the round trip as the callers see it, or for a browser
/// site's calls, the users' network.
pub const METRIC_NETWORK: &str = "network_ms_p95";

/// How a metric's noise is modelled and which way is bad.
fn metric_shape(metric: &str) -> (SeriesKind, Direction) {
    match metric {
        METRIC_LATENCY | METRIC_DB | METRIC_LCP | METRIC_NETWORK => {
            (SeriesKind::Gauge, Direction::Up)
        }
        METRIC_ERRORS | METRIC_BREAKS => (SeriesKind::Count, Direction::Up),
        METRIC_REQUESTS => (SeriesKind::Count, Direction::Down),
        _ => (SeriesKind::Gauge, Direction::Both),
    }
}

impl InsightConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.interval_ms < 100 {
            anyhow::bail!("insight.interval_ms must be at least 100");
        }
        if self.points_kept < 16 || self.points_kept > POINTS_KEPT_MAX {
            anyhow::bail!("insight.points_kept must be 16 to {POINTS_KEPT_MAX}");
        }
        if self.series_max == 0 || self.series_max > SERIES_MAX_MAX {
            anyhow::bail!("insight.series_max must be 1 to {SERIES_MAX_MAX}");
        }
        if self.rca_before_points < 3 || self.rca_before_points >= self.points_kept {
            anyhow::bail!("insight.rca_before_points must be at least 3 and below points_kept");
        }
        self.detector
            .validate()
            .map_err(|e| anyhow::anyhow!("insight.detector: {e}"))?;
        let mut names = std::collections::HashSet::new();
        for rule in &self.rules {
            if let Some(problem) = rule.problem() {
                anyhow::bail!("insight.rules: {problem}");
            }
            if !names.insert(rule.name.as_str()) {
                anyhow::bail!("insight.rules: {:?} is named twice", rule.name);
            }
        }
        if let Some(url) = &self.webhook_url {
            let u = reqwest::Url::parse(url)
                .map_err(|e| anyhow::anyhow!("insight.webhook_url: {e}"))?;
            if !matches!(u.scheme(), "http" | "https") {
                anyhow::bail!("insight.webhook_url must be http or https");
            }
        }
        Ok(())
    }
}

/// One service's spans since the interval began.
#[derive(Clone, Debug, Default)]
pub(crate) struct Bucket {
    requests: u64,
    errors: u64,
    durations: Reservoir,
    db: Reservoir,
    /// Page loads' Largest Contentful Paint (ms).
    lcp: Reservoir,
    /// Network time of the calls into the service (ms): each caller's client span less
    /// the service's server span, from the service map's pairing.
    network: Reservoir,
}

/// A bounded uniform sample of durations (ms).
#[derive(Clone, Debug, Default)]
struct Reservoir {
    seen: u64,
    values: Vec<f64>,
}

impl Reservoir {
    fn push(&mut self, value: f64) {
        self.seen += 1;
        if self.values.len() < DURATIONS_PER_INTERVAL_MAX {
            self.values.push(value);
            return;
        }
        // Algorithm R with a hash of the count as its random source: deterministic, and
        // every value seen has the same chance to stay.
        let slot = xxhash_rust::xxh3::xxh3_64(&self.seen.to_le_bytes()) % self.seen;
        if (slot as usize) < DURATIONS_PER_INTERVAL_MAX {
            self.values[slot as usize] = value;
        }
    }

    fn merge(&mut self, other: Reservoir) {
        for v in other.values {
            self.push(v);
        }
    }

    fn p95(&mut self) -> Option<f64> {
        self.quantile(0.95)
    }

    /// The nearest-rank `q` quantile of the sample.
    fn quantile(&mut self, q: f64) -> Option<f64> {
        if self.values.is_empty() {
            return None;
        }
        self.values.sort_unstable_by(f64::total_cmp);
        let at = ((self.values.len() as f64) * q).ceil() as usize;
        Some(self.values[at.clamp(1, self.values.len()) - 1])
    }
}

/// The Largest Contentful Paint a browser's page-load span carries (`web_vitals.lcp_ms`,
/// set by the browser agent), when it is a sane number of milliseconds.
fn lcp_ms(span: &SpanRow) -> Option<f64> {
    const KEY: &str = "web_vitals.lcp_ms";
    if !span.attributes.contains(KEY) {
        return None;
    }
    let attrs: serde_json::Value = serde_json::from_str(&span.attributes).ok()?;
    attrs[KEY]
        .as_f64()
        .filter(|v| v.is_finite() && (0.0..=600_000.0).contains(v))
}

/// What one stored batch of spans adds, computed before the spans move on.
#[derive(Clone, Debug, Default)]
pub(crate) struct SpanTap(HashMap<(i64, String), Bucket>);

/// Services one batch may add at most; the rest of a batch's services are not watched.
const SERVICES_PER_BATCH_MAX: usize = 1_024;

impl SpanTap {
    /// A service's requests are its server and consumer spans, and its root spans; its
    /// database time is its client spans that carry a database system or statement.
    /// Each span counts in the interval its end time falls in.
    pub(crate) fn of(spans: &[SpanRow], interval_ms: u64) -> SpanTap {
        let interval = interval_ms.max(1) as i64;
        let mut buckets: HashMap<(i64, String), Bucket> = HashMap::new();
        for span in spans {
            let Some(bucket) = bucket_of(&mut buckets, span.end_ns, &span.service, interval) else {
                continue;
            };
            let ms = (span.end_ns - span.start_ns).max(0) as f64 / 1e6;
            let is_request = matches!(span.kind.as_str(), "server" | "consumer")
                || span.parent_span_id.is_none();
            if is_request {
                bucket.requests += 1;
                bucket.errors += (span.status == "error") as u64;
                bucket.durations.push(ms);
            } else if span.db_system.is_some() || span.db_statement.is_some() {
                bucket.db.push(ms);
            }
            if let Some(lcp) = lcp_ms(span) {
                bucket.lcp.push(lcp);
            }
        }
        SpanTap(buckets)
    }

    /// The network times of paired calls, each in the interval its callee's span ended
    /// in, under the callee's name.
    pub(crate) fn network(times: &[NetworkTime], interval_ms: u64) -> SpanTap {
        let interval = interval_ms.max(1) as i64;
        let mut buckets: HashMap<(i64, String), Bucket> = HashMap::new();
        for t in times {
            if let Some(bucket) = bucket_of(&mut buckets, t.end_ns, &t.callee, interval) {
                bucket.network.push(t.network_ns as f64 / 1e6);
            }
        }
        SpanTap(buckets)
    }
}

/// The bucket of `service` for the interval `end_ns` falls in; `None` once a batch has
/// [`SERVICES_PER_BATCH_MAX`] buckets and this would be a new one.
fn bucket_of<'a>(
    buckets: &'a mut HashMap<(i64, String), Bucket>,
    end_ns: i64,
    service: &str,
    interval: i64,
) -> Option<&'a mut Bucket> {
    let end_ms = end_ns.div_euclid(1_000_000);
    let key = (end_ms - end_ms.rem_euclid(interval), service.to_string());
    if !buckets.contains_key(&key) && buckets.len() >= SERVICES_PER_BATCH_MAX {
        return None;
    }
    Some(buckets.entry(key).or_default())
}

/// A scored point as charts and the API show it.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct SeriesPoint {
    pub time_ms: i64,
    pub value: f64,
    pub expected: f64,
    pub lower: f64,
    pub upper: f64,
    pub score: f64,
    pub anomalous: bool,
}

struct Series {
    detector: Detector,
    points: VecDeque<SeriesPoint>,
}

/// The root-cause analysis of an incident, as stored with it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Analysis {
    pub at_ms: i64,
    pub ranking: Vec<Value>,
    pub fault_type: Option<String>,
    pub summary: String,
    /// What to look at first for this fault type.
    pub steps: Vec<String>,
}

struct Inner {
    /// Intervals not yet scored, by start time.
    open: BTreeMap<i64, HashMap<String, Bucket>>,
    /// The start of the next interval to score.
    next_ms: Option<i64>,
    late_spans: u64,
    known_services: BTreeMap<String, i64>,
    breaks: HashMap<String, u64>,
    series: HashMap<(String, String), Series>,
    series_refused: u64,
    book: Book,
    graph: ServiceGraph,
    edges: Vec<(String, String)>,
    analyses: HashMap<u64, Analysis>,
}

/// Services unseen this long stop getting points (a retired service is not an outage
/// forever); the throughput-drop rule has fired by then if it was one.
const SERVICE_FORGET_INTERVALS: i64 = 360;
/// Intervals scored one by one after a pause; a longer gap is skipped.
const CATCH_UP_INTERVALS_MAX: i64 = 60;

pub struct Insight {
    cfg: InsightConfig,
    inner: Mutex<Inner>,
    store: Mutex<IncidentStore>,
}

/// An incident as the API shows it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct IncidentView {
    #[serde(flatten)]
    pub incident: Incident,
    pub alerts: Vec<Alert>,
    pub analysis: Option<Analysis>,
}

impl Insight {
    pub fn open(cfg: InsightConfig, dir: &std::path::Path) -> anyhow::Result<Insight> {
        let mut store = IncidentStore::open(&dir.join("incidents.db"))
            .map_err(|e| anyhow::anyhow!("failed to open the incident store: {e}"))?;
        let now = wall_ms();
        store
            .close_interrupted(now)
            .map_err(|e| anyhow::anyhow!("failed to read the incident store: {e}"))?;
        let next = store
            .max_id()
            .map_err(|e| anyhow::anyhow!("failed to read the incident store: {e}"))?
            + 1;
        let book = Book::new(cfg.rules.clone(), cfg.merge.clone()).starting_at(next);
        Ok(Insight {
            inner: Mutex::new(Inner {
                open: BTreeMap::new(),
                next_ms: None,
                late_spans: 0,
                known_services: BTreeMap::new(),
                breaks: HashMap::new(),
                series: HashMap::new(),
                series_refused: 0,
                book,
                graph: ServiceGraph::default(),
                edges: vec![],
                analyses: HashMap::new(),
            }),
            store: Mutex::new(store),
            cfg,
        })
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("insight lock")
    }

    /// Adds a stored batch's spans to their intervals. A span from an interval already
    /// scored is counted as late; one from the future (a skewed clock) counts now.
    pub(crate) fn absorb(&self, tap: SpanTap, now_ms: i64) {
        if !self.cfg.enabled {
            return;
        }
        let interval = self.cfg.interval_ms as i64;
        let current = now_ms - now_ms.rem_euclid(interval);
        let mut inner = self.inner();
        for ((start, service), b) in tap.0 {
            if inner.next_ms.is_some_and(|next| start < next) {
                inner.late_spans += b.requests;
                continue;
            }
            let start = start.min(current);
            let Inner {
                open,
                series_refused,
                ..
            } = &mut *inner;
            let slot = open.entry(start).or_default();
            if !slot.contains_key(&service) && slot.len() >= self.cfg.series_max {
                *series_refused += 1;
                continue;
            }
            let open = slot.entry(service).or_default();
            open.requests += b.requests;
            open.errors += b.errors;
            open.durations.merge(b.durations);
            open.db.merge(b.db);
            open.lcp.merge(b.lcp);
            open.network.merge(b.network);
        }
    }

    /// Counts stored production breaks per rule (drill breaks never alert).
    pub(crate) fn count_breaks(&self, counts: HashMap<String, u64>) {
        if !self.cfg.enabled {
            return;
        }
        let mut inner = self.inner();
        for (rule, n) in counts {
            *inner.breaks.entry(rule).or_default() += n;
        }
    }

    pub(crate) fn set_map(&self, edges: Vec<(String, String)>) {
        let graph = ServiceGraph::from_edges(edges.iter().map(|(a, b)| (a.as_str(), b.as_str())));
        let mut inner = self.inner();
        inner.graph = graph;
        inner.edges = edges;
    }

    /// Scores every interval that ended at least `lateness_ms` before `now_ms`: one point
    /// per series each, through the alert rules. Returns the incidents that changed, to be
    /// stored and notified.
    pub(crate) fn close(&self, now_ms: i64) -> Vec<(IncidentView, Vec<&'static str>)> {
        let mut inner = self.inner();
        let interval = self.cfg.interval_ms as i64;
        let cutoff = now_ms - self.cfg.lateness_ms as i64;
        let first = cutoff - cutoff.rem_euclid(interval) - interval;
        let mut next = inner.next_ms.unwrap_or(first);
        // After a long pause (a stopped process, a suspended machine) the gap is not
        // replayed point by point: scoring resumes at the latest complete interval.
        if first - next > CATCH_UP_INTERVALS_MAX * interval {
            next = first;
        }
        let breaks = std::mem::take(&mut inner.breaks);
        let mut changed = vec![];
        let mut breaks = Some(breaks);
        while next + interval <= cutoff {
            let open = inner.open.remove(&next).unwrap_or_default();
            // Breaks are counted as they are stored, so they go to the newest interval.
            let last = next + 2 * interval > cutoff;
            let counts = if last {
                breaks.take().unwrap_or_default()
            } else {
                HashMap::new()
            };
            changed.extend(self.close_one(&mut inner, open, counts, next + interval));
            next += interval;
        }
        if let Some(unused) = breaks {
            for (rule, n) in unused {
                *inner.breaks.entry(rule).or_default() += n;
            }
        }
        inner.next_ms = Some(next);
        // Spans older than what is scored (when resuming after a pause) are dropped.
        let stale: Vec<i64> = inner.open.range(..next).map(|(k, _)| *k).collect();
        for k in stale {
            inner.open.remove(&k);
        }
        changed
    }

    fn close_one(
        &self,
        inner: &mut Inner,
        open: HashMap<String, Bucket>,
        breaks: HashMap<String, u64>,
        now_ms: i64,
    ) -> Vec<(IncidentView, Vec<&'static str>)> {
        let interval = self.cfg.interval_ms as i64;
        for service in open.keys() {
            inner.known_services.insert(service.clone(), now_ms);
        }
        inner
            .known_services
            .retain(|_, seen| now_ms - *seen <= SERVICE_FORGET_INTERVALS * interval);
        let services: Vec<String> = inner.known_services.keys().cloned().collect();

        let mut points: Vec<(String, &'static str, f64, f64)> = vec![];
        for service in &services {
            let mut b = open.get(service).cloned().unwrap_or_default();
            let traffic = b.requests as f64;
            points.push((service.clone(), METRIC_REQUESTS, traffic, traffic));
            points.push((service.clone(), METRIC_ERRORS, b.errors as f64, traffic));
            if let Some(p95) = b.durations.p95() {
                points.push((service.clone(), METRIC_LATENCY, p95, traffic));
            }
            if let Some(p95) = b.db.p95() {
                points.push((service.clone(), METRIC_DB, p95, traffic));
            }
            // Its traffic guard counts page loads, not requests.
            let loads = b.lcp.seen as f64;
            if let Some(p75) = b.lcp.quantile(0.75) {
                points.push((service.clone(), METRIC_LCP, p75, loads));
            }
            let calls = b.network.seen as f64;
            if let Some(p95) = b.network.p95() {
                points.push((service.clone(), METRIC_NETWORK, p95, calls));
            }
        }
        let rules: Vec<String> = self
            .cfg
            .rules
            .iter()
            .filter(|r| r.metric == METRIC_BREAKS)
            .flat_map(|_| breaks.keys().cloned())
            .chain(
                inner
                    .series
                    .keys()
                    .filter(|(_, m)| m == METRIC_BREAKS)
                    .map(|(s, _)| s.clone()),
            )
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        for rule in rules {
            let n = breaks.get(&rule).copied().unwrap_or(0) as f64;
            points.push((rule, METRIC_BREAKS, n, 0.0));
        }

        let mut events = vec![];
        for (service, metric, value, traffic) in points {
            let key = (service.clone(), metric.to_string());
            if !inner.series.contains_key(&key) {
                if inner.series.len() >= self.cfg.series_max {
                    inner.series_refused += 1;
                    continue;
                }
                let (kind, direction) = metric_shape(metric);
                let config = DetectorConfig {
                    kind,
                    direction,
                    ..self.cfg.detector.clone()
                };
                let Ok(detector) = Detector::new(config) else {
                    continue;
                };
                inner.series.insert(
                    key.clone(),
                    Series {
                        detector,
                        points: VecDeque::with_capacity(self.cfg.points_kept),
                    },
                );
            }
            let Inner {
                series,
                book,
                graph,
                ..
            } = &mut *inner;
            let Some(s) = series.get_mut(&key) else {
                continue;
            };
            let point = s.detector.update(now_ms, value);
            if s.points.len() == self.cfg.points_kept {
                s.points.pop_front();
            }
            s.points.push_back(SeriesPoint {
                time_ms: now_ms,
                value,
                expected: point.expected,
                lower: point.lower,
                upper: point.upper,
                score: point.score,
                anomalous: point.anomalous,
            });
            let o = Observation {
                service: &service,
                metric,
                time_ms: now_ms,
                value,
                point: &point,
                traffic: if metric == METRIC_BREAKS {
                    f64::INFINITY
                } else {
                    traffic
                },
            };
            events.extend(book.observe(&o, graph));
        }
        self.changed(inner, &events, now_ms)
    }

    fn changed(
        &self,
        inner: &mut Inner,
        events: &[Event],
        now_ms: i64,
    ) -> Vec<(IncidentView, Vec<&'static str>)> {
        let mut touched: BTreeMap<u64, Vec<&'static str>> = BTreeMap::new();
        for e in events {
            match e {
                Event::IncidentOpened { incident } => touched
                    .entry(*incident)
                    .or_default()
                    .push("incident_opened"),
                Event::IncidentJoined { incident, .. } => {
                    touched.entry(*incident).or_default();
                }
                Event::IncidentResolved { incident } => touched
                    .entry(*incident)
                    .or_default()
                    .push("incident_resolved"),
                Event::AlertFired { incident, .. } => {
                    touched.entry(*incident).or_default();
                }
                Event::AlertResolved { alert } => {
                    if let Some(a) = inner.book.alert(*alert) {
                        touched.entry(a.incident).or_default();
                    }
                }
            }
        }
        // One analysis per incident that grew, however many of its alerts fired at once.
        let mut grew: Vec<u64> = events
            .iter()
            .filter_map(|e| match e {
                Event::AlertFired { incident, .. } => Some(*incident),
                _ => None,
            })
            .collect();
        grew.sort_unstable();
        grew.dedup();
        for id in grew {
            if let Some(analysis) = self.analyse(inner, id, now_ms) {
                inner.analyses.insert(id, analysis);
            }
        }
        let kept: std::collections::HashSet<u64> = inner.book.incidents().map(|i| i.id).collect();
        inner.analyses.retain(|id, _| kept.contains(id));
        touched
            .into_iter()
            .filter_map(|(id, events)| Some((view_of(inner, id)?, events)))
            .collect()
    }

    /// Ranks the likely root causes of an incident from the series around its start.
    fn analyse(&self, inner: &Inner, id: u64, now_ms: i64) -> Option<Analysis> {
        let incident = inner.book.incident(id)?;
        let first = inner.book.alert(*incident.alerts.first()?)?;
        crate::rca::analyse(
            &inner.edges,
            |service, metric| {
                inner
                    .series
                    .get(&(service.to_string(), metric.to_string()))
                    .map(|s| s.points.iter().copied().collect::<Vec<_>>())
            },
            incident,
            &first.metric,
            inner.known_services.keys().map(String::as_str),
            self.cfg.rca_before_points,
            now_ms,
        )
    }

    /// Stores what changed and queues its notices.
    pub(crate) fn persist(
        &self,
        changed: &[(IncidentView, Vec<&'static str>)],
    ) -> anyhow::Result<()> {
        let mut store = self.store.lock().expect("incident store lock");
        let now = wall_ms();
        for (view, events) in changed {
            let body = serde_json::to_string(view)?;
            let state = match view.incident.state {
                AlertState::Firing => "firing",
                AlertState::Resolved => "resolved",
            };
            store.put(
                view.incident.id,
                state,
                view.incident.opened_ms,
                &body,
                events,
                now,
            )?;
        }
        Ok(())
    }

    pub fn alerts(&self, state: Option<&str>) -> Vec<Alert> {
        let inner = self.inner();
        inner
            .book
            .alerts()
            .rev()
            .filter(|a| state.is_none_or(|s| state_name(a.state) == s))
            .cloned()
            .collect()
    }

    pub fn series_list(&self) -> Vec<Value> {
        let inner = self.inner();
        let mut out: Vec<Value> = inner
            .series
            .iter()
            .map(|((service, metric), s)| {
                let last = s.points.back();
                json!({
                    "service": service, "metric": metric,
                    "period_points": s.detector.period_points(),
                    "last": last,
                })
            })
            .collect();
        out.sort_by(|a, b| {
            (a["service"].as_str(), a["metric"].as_str())
                .cmp(&(b["service"].as_str(), b["metric"].as_str()))
        });
        out
    }

    pub fn series(&self, service: &str, metric: &str) -> Option<Vec<SeriesPoint>> {
        let inner = self.inner();
        inner
            .series
            .get(&(service.to_string(), metric.to_string()))
            .map(|s| s.points.iter().copied().collect())
    }

    pub fn refused(&self) -> u64 {
        self.inner().series_refused
    }

    /// Requests whose spans arrived after their interval was scored.
    pub fn late_spans(&self) -> u64 {
        self.inner().late_spans
    }
}

fn state_name(s: AlertState) -> &'static str {
    match s {
        AlertState::Firing => "firing",
        AlertState::Resolved => "resolved",
    }
}

fn view_of(inner: &Inner, id: u64) -> Option<IncidentView> {
    let incident = inner.book.incident(id)?.clone();
    let alerts = incident
        .alerts
        .iter()
        .filter_map(|a| inner.book.alert(*a).cloned())
        .collect();
    Some(IncidentView {
        analysis: inner.analyses.get(&id).cloned(),
        incident,
        alerts,
    })
}

/// Closes an interval every `interval_ms`, refreshes the service map, stores and
/// notifies what changed.
pub async fn run(s: Shared, mut stop: tokio::sync::watch::Receiver<bool>) {
    let cfg = s.insight.cfg.clone();
    let mut every = tokio::time::interval(Duration::from_millis(cfg.interval_ms));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut map_at = 0i64;
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = stop.changed() => return,
        }
        let now = wall_ms();
        if now - map_at >= (cfg.map_refresh_secs as i64) * 1000 {
            map_at = now;
            match crate::chain_api::service_edges(&s, now - 15 * 60_000).await {
                Ok(edges) => s.insight.set_map(edges),
                Err(e) => tracing::warn!(error = ?e, "the service map could not be read"),
            }
        }
        let breaks = std::mem::take(&mut *s.metrics.live_breaks.lock().expect("metrics lock"));
        s.insight.count_breaks(breaks);
        let changed = s.insight.close(now);
        if changed.is_empty() {
            continue;
        }
        let opened: Vec<Value> = changed
            .iter()
            .filter(|(_, events)| events.contains(&"incident_opened"))
            .filter_map(|(view, _)| serde_json::to_value(view).ok())
            .collect();
        let s2 = s.clone();
        let stored = tokio::task::spawn_blocking(move || s2.insight.persist(&changed)).await;
        for incident in &opened {
            crate::rca::execute_automatic(&s, incident).await;
        }
        match stored {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "incidents could not be stored"),
            Err(e) => tracing::error!(error = %e, "the incident task failed"),
        }
    }
}

/// Delivers incident notices: each `{event, incident}` POSTed as JSON, retried with
/// exponential backoff, at least once (the notice id travels as `Idempotency-Key`).
pub async fn deliver(s: Shared, url: String, mut stop: tokio::sync::watch::Receiver<bool>) {
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(s.cfg.webhook.timeout_secs))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "incident webhook client failed to start; notices wait");
            return;
        }
    };
    loop {
        let s2 = s.clone();
        let due = tokio::task::spawn_blocking(move || {
            let store = s2.insight.store.lock().expect("incident store lock");
            let due = store.notices_due(wall_ms(), 16)?;
            let mut out = vec![];
            for n in due {
                let body = store.get(n.incident)?;
                out.push((n, body));
            }
            Ok::<_, steadfast_store::IncidentError>(out)
        })
        .await;
        let due = match due {
            Ok(Ok(d)) => d,
            _ => {
                tracing::error!("incident notices could not be read");
                vec![]
            }
        };
        if due.is_empty() {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(250)) => continue,
                _ = stop.changed() => return,
            }
        }
        let (mut done, mut retry) = (vec![], vec![]);
        let mut attempts_max = 0;
        for (notice, body) in due {
            let incident: Value = body
                .and_then(|b| serde_json::from_str(&b).ok())
                .unwrap_or(Value::Null);
            let payload =
                json!({ "event": notice.event, "notice_id": notice.id, "incident": incident });
            let sent = client
                .post(&url)
                .header("Idempotency-Key", format!("incident-notice-{}", notice.id))
                .json(&payload)
                .send()
                .await;
            match sent {
                Ok(r) if r.status().is_success() => done.push(notice.id),
                other => {
                    if let Err(e) = other {
                        tracing::warn!(error = %e, "incident notice not delivered");
                    }
                    attempts_max = attempts_max.max(notice.attempts);
                    retry.push(notice.id);
                }
            }
        }
        let backoff = (1u64 << attempts_max.min(10)).min(s.cfg.webhook.backoff_secs_max.max(1));
        let next_at = wall_ms() + (backoff as i64) * 1000;
        let s2 = s.clone();
        let _ = tokio::task::spawn_blocking(move || {
            let mut store = s2.insight.store.lock().expect("incident store lock");
            store.notices_done(&done)?;
            store.notices_retry(&retry, next_at)
        })
        .await;
    }
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct StateQuery {
    /// firing or resolved (incidents also: interrupted, by a restart).
    state: Option<String>,
    /// At most this many, newest first (default 100, at most 500).
    limit: Option<usize>,
}

fn state_param(state: &Option<String>, allowed: &[&str]) -> Result<(), ApiError> {
    match state {
        Some(s) if !allowed.contains(&s.as_str()) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_query",
            format!("state must be one of {}", allowed.join(", ")),
        )),
        _ => Ok(()),
    }
}

type QueryResult<T> = Result<Query<T>, axum::extract::rejection::QueryRejection>;

fn query<T>(q: QueryResult<T>) -> Result<T, ApiError> {
    q.map(|Query(q)| q)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_query", e.body_text()))
}

/// Alerts in memory (since the server started), newest first.
#[utoipa::path(get, path = "/api/v1/alerts", params(StateQuery), responses((status = 200, description = "alerts"), (status = 400, body = crate::api::ErrorBody)), security(("token" = [])))]
pub async fn list_alerts(
    State(s): State<Shared>,
    q: QueryResult<StateQuery>,
) -> Result<Json<Vec<Alert>>, ApiError> {
    let q = query(q)?;
    state_param(&q.state, &["firing", "resolved"])?;
    let mut alerts = s.insight.alerts(q.state.as_deref());
    alerts.truncate(q.limit.unwrap_or(100).min(500));
    Ok(Json(alerts))
}

/// Incidents (merged alerts with their root-cause analysis), newest first.
#[utoipa::path(get, path = "/api/v1/incidents", params(StateQuery), responses((status = 200, description = "incidents"), (status = 400, body = crate::api::ErrorBody)), security(("token" = [])))]
pub async fn list_incidents(
    State(s): State<Shared>,
    q: QueryResult<StateQuery>,
) -> Result<Json<Vec<Value>>, ApiError> {
    let q = query(q)?;
    state_param(&q.state, &["firing", "resolved", "interrupted"])?;
    let limit = q.limit.unwrap_or(100);
    let s2 = s.clone();
    let bodies = tokio::task::spawn_blocking(move || {
        s2.insight
            .store
            .lock()
            .expect("incident store lock")
            .list(q.state.as_deref(), limit)
    })
    .await
    .map_err(|e| ApiError::internal("the incident task failed", e))?
    .map_err(|e| ApiError::internal("incidents could not be read", e))?;
    Ok(Json(
        bodies
            .iter()
            .filter_map(|b| serde_json::from_str(b).ok())
            .collect(),
    ))
}

/// One incident: its alerts, the root-cause ranking with its explanation, and the
/// runbooks suggested for its likely fault with their last verification.
#[utoipa::path(get, path = "/api/v1/incidents/{id}", params(("id" = u64, Path)), responses((status = 200, description = "the incident"), (status = 404, body = crate::api::ErrorBody)), security(("token" = [])))]
pub async fn get_incident(
    State(s): State<Shared>,
    Path(id): Path<u64>,
) -> Result<Json<Value>, ApiError> {
    let s2 = s.clone();
    let body = tokio::task::spawn_blocking(move || {
        s2.insight
            .store
            .lock()
            .expect("incident store lock")
            .get(id)
    })
    .await
    .map_err(|e| ApiError::internal("the incident task failed", e))?
    .map_err(|e| ApiError::internal("incidents could not be read", e))?
    .ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("incident {id} does not exist"),
        )
    })?;
    let mut incident: Value = serde_json::from_str(&body)
        .map_err(|e| ApiError::internal("an incident could not be read", e))?;
    incident["runbooks"] = crate::rca::suggested_runbooks(&s, &incident).await;
    Ok(Json(incident))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct SeriesQuery {
    /// The service (or `rule:`-less rule name for `breaks`); without it, every series is listed.
    service: Option<String>,
    /// latency_ms_p95, db_ms_p95, errors, requests or breaks.
    metric: Option<String>,
}

/// A series' recent points with the learned baseline and band, or the list of series.
#[utoipa::path(get, path = "/api/v1/series", params(SeriesQuery), responses((status = 200, description = "points or series"), (status = 404, body = crate::api::ErrorBody)), security(("token" = [])))]
pub async fn get_series(
    State(s): State<Shared>,
    q: QueryResult<SeriesQuery>,
) -> Result<Json<Value>, ApiError> {
    let q = query(q)?;
    match (q.service, q.metric) {
        (Some(service), Some(metric)) => {
            let points = s.insight.series(&service, &metric).ok_or_else(|| {
                ApiError::new(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    format!("no series {metric} of {service}"),
                )
            })?;
            Ok(Json(
                json!({ "service": service, "metric": metric, "points": points }),
            ))
        }
        (None, None) => Ok(Json(json!({
            "series": s.insight.series_list(),
            "refused": s.insight.refused(),
            "late_spans": s.insight.late_spans(),
        }))),
        _ => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_query",
            "give both service and metric, or neither",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(service: &str, end_ms: i64, duration_ms: i64, error: bool) -> SpanRow {
        SpanRow {
            start_ns: (end_ms - duration_ms) * 1_000_000,
            end_ns: end_ms * 1_000_000,
            service: service.into(),
            kind: "server".into(),
            status: if error { "error" } else { "ok" }.into(),
            ..SpanRow::default()
        }
    }

    /// Detectors over 1 s intervals, each scored 500 ms after it ends.
    fn one_second_intervals(dir: &std::path::Path) -> Insight {
        let cfg = InsightConfig {
            interval_ms: 1_000,
            lateness_ms: 500,
            ..InsightConfig::default()
        };
        Insight::open(cfg, dir).unwrap()
    }

    fn last(insight: &Insight, service: &str, metric: &str) -> Option<f64> {
        insight.series(service, metric)?.last().map(|p| p.value)
    }

    #[test]
    fn an_interval_is_scored_after_its_lateness_and_later_spans_are_counted() {
        let dir = tempfile::tempdir().unwrap();
        let insight = one_second_intervals(dir.path());
        let t0 = 1_000_000;
        let spans = [span("a", t0 + 100, 5, false), span("a", t0 + 900, 7, true)];
        insight.absorb(SpanTap::of(&spans, 1_000), t0 + 950);
        // The first close only sets where scoring starts.
        insight.close(t0 + 1_000);
        insight.close(t0 + 1_499);
        assert_eq!(
            last(&insight, "a", METRIC_REQUESTS),
            None,
            "not yet: spans may still come"
        );
        insight.absorb(
            SpanTap::of(&[span("a", t0 + 990, 9, false)], 1_000),
            t0 + 1_400,
        );
        insight.close(t0 + 1_500);
        assert_eq!(last(&insight, "a", METRIC_REQUESTS), Some(3.0));
        assert_eq!(last(&insight, "a", METRIC_ERRORS), Some(1.0));
        assert_eq!(last(&insight, "a", METRIC_LATENCY), Some(9.0));
        // A span of an interval already scored is late: counted, not scored.
        insight.absorb(
            SpanTap::of(&[span("a", t0 + 500, 5, false)], 1_000),
            t0 + 1_600,
        );
        assert_eq!(insight.late_spans(), 1);
        // An interval with no spans still scores the service (zero requests).
        insight.close(t0 + 2_500);
        assert_eq!(last(&insight, "a", METRIC_REQUESTS), Some(0.0));
        assert_eq!(insight.series("a", METRIC_REQUESTS).unwrap().len(), 2);
    }

    #[test]
    fn page_loads_give_their_sites_a_web_vital_series() {
        let dir = tempfile::tempdir().unwrap();
        let insight = one_second_intervals(dir.path());
        let t0 = 1_000_000;
        // Four page loads of the shop (LCP 100..400 ms), a nonsense value, and a backend
        // span without any.
        let mut spans: Vec<SpanRow> = (1..=4)
            .map(|i| SpanRow {
                attributes: format!(r#"{{"web_vitals.lcp_ms":{}.0}}"#, i * 100),
                ..span("rum:shop", t0 + 100 * i, 5, false)
            })
            .collect();
        spans.push(SpanRow {
            attributes: r#"{"web_vitals.lcp_ms":-3}"#.into(),
            ..span("rum:shop", t0 + 600, 5, false)
        });
        spans.push(span("gateway", t0 + 700, 5, false));
        insight.close(t0);
        insight.absorb(SpanTap::of(&spans, 1_000), t0 + 900);
        insight.close(t0 + 1_500);
        assert_eq!(
            last(&insight, "rum:shop", METRIC_LCP),
            Some(300.0),
            "the p75"
        );
        assert_eq!(last(&insight, "gateway", METRIC_LCP), None);
        let (kind, direction) = metric_shape(METRIC_LCP);
        assert_eq!((kind, direction), (SeriesKind::Gauge, Direction::Up));
        assert!(default_rules().iter().any(|r| r.metric == METRIC_LCP));
    }

    #[test]
    fn paired_calls_give_their_callee_a_network_series() {
        let dir = tempfile::tempdir().unwrap();
        let insight = one_second_intervals(dir.path());
        let t0 = 1_000_000;
        // Twenty calls into the gateway, 1..20 ms on the network, ending in one interval.
        let times: Vec<NetworkTime> = (1..=20)
            .map(|ms| NetworkTime {
                caller: "rum:shop".into(),
                callee: "gateway".into(),
                end_ns: (t0 + 10 * ms) * 1_000_000,
                network_ns: ms * 1_000_000,
            })
            .collect();
        insight.close(t0);
        insight.absorb(SpanTap::network(&times, 1_000), t0 + 900);
        insight.close(t0 + 1_500);
        assert_eq!(
            last(&insight, "gateway", METRIC_NETWORK),
            Some(19.0),
            "the p95"
        );
        assert_eq!(last(&insight, "rum:shop", METRIC_NETWORK), None);
        // Network times alone count no request.
        assert_eq!(last(&insight, "gateway", METRIC_REQUESTS), Some(0.0));
        let network = default_rules()
            .into_iter()
            .find(|r| r.metric == METRIC_NETWORK)
            .expect("a default network rule");
        assert_eq!(network.traffic_min, 5.0, "guarded by its calls");
    }

    #[test]
    fn bad_insight_settings_are_refused_with_the_option_named() {
        let cfg = InsightConfig {
            interval_ms: 10,
            ..InsightConfig::default()
        };
        assert!(cfg
            .validate()
            .unwrap_err()
            .to_string()
            .contains("insight.interval_ms"));
        let mut cfg = InsightConfig::default();
        cfg.rules.push(cfg.rules[0].clone());
        assert!(cfg
            .validate()
            .unwrap_err()
            .to_string()
            .contains("named twice"));
        let cfg = InsightConfig {
            webhook_url: Some("ftp://x".into()),
            ..InsightConfig::default()
        };
        assert!(cfg
            .validate()
            .unwrap_err()
            .to_string()
            .contains("http or https"));
    }
}
