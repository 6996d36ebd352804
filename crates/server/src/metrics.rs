//! Prometheus metrics, exposed at `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BreakLabels {
    pub rule: String,
    pub kind: String,
}

/// Detection latencies kept for `/api/v1/status`: the most recent breaks only.
pub const RECENT_DETECTIONS_MAX: usize = 1024;

/// Seconds of history an ingest rate is averaged over.
pub const RATE_WINDOW_SECS: usize = 60;

/// Counts per wall-clock second over the last [`RATE_WINDOW_SECS`], for the rates the
/// status answer and the dashboard show (Prometheus users take `rate()` of the counters).
#[derive(Default)]
pub struct RateWindow {
    /// (second since the epoch, count), oldest first, at most `RATE_WINDOW_SECS` long.
    secs: std::collections::VecDeque<(i64, u64)>,
    /// The first second anything was counted: a young window averages over less.
    first_sec: Option<i64>,
}

impl RateWindow {
    pub fn add(&mut self, now_ms: i64, n: u64) {
        let sec = now_ms.div_euclid(1000);
        self.first_sec.get_or_insert(sec);
        match self.secs.back_mut() {
            Some((s, c)) if *s == sec => *c += n,
            _ => self.secs.push_back((sec, n)),
        }
        self.trim(sec);
    }

    fn trim(&mut self, sec: i64) {
        while self
            .secs
            .front()
            .is_some_and(|(s, _)| *s <= sec - RATE_WINDOW_SECS as i64)
        {
            self.secs.pop_front();
        }
    }

    /// The mean per second over the window's complete seconds ending before `now_ms`
    /// (the current second is still filling).
    pub fn per_sec(&mut self, now_ms: i64) -> f64 {
        let sec = now_ms.div_euclid(1000);
        self.trim(sec);
        let done: u64 = self
            .secs
            .iter()
            .filter(|(s, _)| *s < sec)
            .map(|(_, c)| c)
            .sum();
        let span = self
            .first_sec
            .map_or(1, |f| (sec - f).clamp(1, RATE_WINDOW_SECS as i64 - 1));
        done as f64 / span as f64
    }
}

pub struct Metrics {
    pub registry: Registry,
    /// Fund records and telemetry rows accepted per second, recently.
    pub records_rate: std::sync::Mutex<RateWindow>,
    pub chain_rows_rate: std::sync::Mutex<RateWindow>,
    /// Detection latencies (ms) of the most recent breaks, newest last.
    pub recent_detection_ms: std::sync::Mutex<std::collections::VecDeque<u64>>,
    /// New production breaks per rule since the detectors last took them (bounded by the
    /// rule file's rules).
    pub live_breaks: std::sync::Mutex<std::collections::HashMap<String, u64>>,
    pub records_ingested: Counter,
    pub batches_refused: Family<RefusalLabels, Counter>,
    pub breaks: Family<BreakLabels, Counter>,
    pub detection_latency: Histogram,
    pub open_records: Gauge,
    pub wal_fsync_seconds: Histogram,
    pub records_per_fsync: Histogram,
    pub webhook_failures: Counter,
    pub outbox_pending: Gauge,
    /// Requests refused by access control, by code (unauthorized, forbidden, rate_limited...).
    pub requests_denied: Family<RefusalLabels, Counter>,
    pub audit_export_failures: Counter,
    /// Spans, log records and metric points stored by the data chain.
    pub chain_rows: Counter,
    /// Accepted fund records the data chain could not keep a copy of.
    pub chain_fund_copies_dropped: Counter,
    /// Tailed access-log lines that could not be read.
    pub chain_lines_refused: Counter,
    /// Flow datagrams dropped (unknown exporter, unreadable) and flows not stored.
    pub chain_flows_refused: Counter,
    /// Spans and logs left out by sampling (`chain.sample_percent`).
    pub chain_sampled_out: Counter,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusalLabels {
    pub code: String,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("steadfast");
        let records_ingested = Counter::default();
        registry.register(
            "records_ingested",
            "Records applied by the engine (acknowledged first, then verified)",
            records_ingested.clone(),
        );
        let batches_refused = Family::<RefusalLabels, Counter>::default();
        registry.register(
            "batches_refused",
            "Ingest batches refused, by error code",
            batches_refused.clone(),
        );
        let breaks = Family::<BreakLabels, Counter>::default();
        registry.register("breaks", "Breaks emitted, by rule and kind", breaks.clone());
        let detection_latency = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        registry.register(
            "detection_latency_seconds",
            "From the moment a break's evidence was complete to the moment it was stored",
            detection_latency.clone(),
        );
        let open_records = Gauge::default();
        registry.register(
            "open_records",
            "Records waiting for their counterpart, over all rules",
            open_records.clone(),
        );
        let wal_fsync_seconds = Histogram::new(exponential_buckets(0.0001, 2.0, 16));
        registry.register(
            "wal_fsync_seconds",
            "Duration of one WAL fsync",
            wal_fsync_seconds.clone(),
        );
        let records_per_fsync = Histogram::new(exponential_buckets(1.0, 2.0, 20));
        registry.register(
            "records_per_fsync",
            "Records made durable by one fsync (group commit)",
            records_per_fsync.clone(),
        );
        let webhook_failures = Counter::default();
        registry.register(
            "webhook_failures",
            "Webhook deliveries that failed and will be retried",
            webhook_failures.clone(),
        );
        let outbox_pending = Gauge::default();
        registry.register(
            "webhook_outbox_pending",
            "Break notifications waiting for delivery",
            outbox_pending.clone(),
        );
        let requests_denied = Family::<RefusalLabels, Counter>::default();
        registry.register(
            "requests_denied",
            "Requests refused by access control, by error code",
            requests_denied.clone(),
        );
        let audit_export_failures = Counter::default();
        registry.register(
            "audit_export_failures",
            "Audit exports (file or webhook) that failed and will be retried",
            audit_export_failures.clone(),
        );
        let chain_rows = Counter::default();
        registry.register(
            "chain_rows",
            "Spans, log records and metric points stored (logged durably) by the data chain",
            chain_rows.clone(),
        );
        let chain_fund_copies_dropped = Counter::default();
        registry.register(
            "chain_fund_copies_dropped",
            "Accepted fund records the data chain could not keep a copy of (journeys miss them)",
            chain_fund_copies_dropped.clone(),
        );
        let chain_lines_refused = Counter::default();
        registry.register(
            "chain_lines_refused",
            "Tailed Nginx access-log lines that could not be read (not in the log_format, or too long)",
            chain_lines_refused.clone(),
        );
        let chain_flows_refused = Counter::default();
        registry.register(
            "chain_flows_refused",
            "Flow datagrams dropped (exporter not allowed, unreadable) and flows that could not be stored",
            chain_flows_refused.clone(),
        );
        let chain_sampled_out = Counter::default();
        registry.register(
            "chain_sampled_out",
            "Spans and log records left out by sampling (chain.sample_percent); VIPs' never",
            chain_sampled_out.clone(),
        );
        Metrics {
            registry,
            chain_sampled_out,
            chain_flows_refused,
            chain_rows,
            chain_fund_copies_dropped,
            chain_lines_refused,
            requests_denied,
            audit_export_failures,
            recent_detection_ms: Default::default(),
            records_rate: Default::default(),
            chain_rows_rate: Default::default(),
            live_breaks: Default::default(),
            records_ingested,
            batches_refused,
            breaks,
            detection_latency,
            open_records,
            wal_fsync_seconds,
            records_per_fsync,
            webhook_failures,
            outbox_pending,
        }
    }

    /// Records the detection latency of one break.
    pub fn auth_denied(&self, code: &str) {
        self.requests_denied
            .get_or_create(&RefusalLabels { code: code.into() })
            .inc();
    }

    pub fn observe_detection(&self, latency_ms: u64) {
        self.detection_latency.observe(latency_ms as f64 / 1000.0);
        let mut recent = self.recent_detection_ms.lock().expect("metrics lock");
        if recent.len() == RECENT_DETECTIONS_MAX {
            recent.pop_front();
        }
        recent.push_back(latency_ms);
    }

    /// p50, p99 and max of the recent detection latencies, and how many there are.
    pub fn recent_detection(&self) -> (u64, u64, u64, usize) {
        let mut xs: Vec<u64> = self
            .recent_detection_ms
            .lock()
            .expect("metrics lock")
            .iter()
            .copied()
            .collect();
        if xs.is_empty() {
            return (0, 0, 0, 0);
        }
        xs.sort_unstable();
        let at = |q: usize| xs[((xs.len() - 1) * q) / 100];
        (at(50), at(99), xs[xs.len() - 1], xs.len())
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("metrics encode");
        out
    }
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

#[cfg(test)]
mod rate_tests {
    use super::*;

    #[test]
    fn a_rate_is_the_mean_of_the_complete_seconds_in_the_window() {
        let mut w = RateWindow::default();
        for sec in 0..10 {
            w.add(sec * 1000 + 500, 100);
        }
        // Ten seconds of 100, seen during the tenth second: nine complete seconds.
        assert_eq!(w.per_sec(9_900), 100.0);
        // A long silence empties the window.
        assert_eq!(w.per_sec(200_000), 0.0);
        // Counts older than the window are dropped.
        let mut w = RateWindow::default();
        for sec in 0..200 {
            w.add(sec * 1000, 60);
        }
        assert_eq!(w.per_sec(200_000), 60.0 * 59.0 / 59.0);
    }
}
