//! Alert rules over detector output, alert state, and incidents merged along the
//! service map.
//!
//! An [`AlertRule`] combines a baseline condition (the series' detector says anomalous),
//! an optional static bound and a minimum-traffic guard. A rule's alert for one series is
//! one [`Alert`] from firing to resolved: repeated anomalous points are the same alert
//! (deduplication by rule, service and metric). An alert that fires joins an open
//! [`Incident`] when one of the incident's services is within `merge_hops` calls of its
//! service on the service map and the incident was active within `merge_window_ms`;
//! otherwise it opens one. One incident is one notification.
//!
//! [`Book`] holds all of it and is driven by [`Book::observe`] with time as an input.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use serde::{Deserialize, Serialize};

use crate::baseline::Point;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Info,
    #[default]
    Warning,
    Critical,
}

/// When a series alerts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertRule {
    pub name: String,
    /// The metric the rule watches (`latency_ms_p95`, `errors`, `requests`, `breaks`...).
    pub metric: String,
    /// Services the rule applies to; empty means every service.
    #[serde(default)]
    pub services: Vec<String>,
    /// Whether the detector must call the series anomalous (the learned baseline).
    #[serde(default = "yes")]
    pub baseline: bool,
    /// Static bound: the value must also be above this.
    #[serde(default)]
    pub above: Option<f64>,
    /// Static bound: the value must also be below this.
    #[serde(default)]
    pub below: Option<f64>,
    /// The value must also be at least this many times the baseline (e.g. 1.25: latency
    /// a quarter above it): a departure that is statistically clear but operationally
    /// small (0.3 ms to 0.4 ms) pages nobody.
    #[serde(default)]
    pub above_ratio: Option<f64>,
    /// The value must also be at most this many times the baseline (e.g. 0.5: throughput
    /// halved).
    #[serde(default)]
    pub below_ratio: Option<f64>,
    /// The value must also exceed the baseline by at least this much, in the metric's
    /// unit (e.g. 10 for latency in ms): on a fast service a ratio alone turns a busy
    /// host's 2 ms to 4 ms into an alert, though no user notices a few milliseconds.
    #[serde(default)]
    pub above_delta: Option<f64>,
    /// Points in a row the condition must hold before the alert fires (like a
    /// Prometheus `for`): one slow interval on a busy host is not an incident.
    #[serde(default = "for_points_default")]
    pub for_points: usize,
    /// The service must have had at least this many requests in the interval, so a
    /// service with three calls an hour does not page anyone for one slow call.
    #[serde(default)]
    pub traffic_min: f64,
    #[serde(default)]
    pub severity: Severity,
    /// Intervals without the condition before the alert resolves.
    #[serde(default = "resolve_points_default")]
    pub resolve_points: usize,
}

fn yes() -> bool {
    true
}

fn resolve_points_default() -> usize {
    3
}

fn for_points_default() -> usize {
    1
}

impl AlertRule {
    /// Why the rule cannot be used, if it cannot.
    pub fn problem(&self) -> Option<String> {
        if self.name.trim().is_empty() || self.metric.trim().is_empty() {
            return Some("an alert rule needs a name and a metric".into());
        }
        if !self.baseline && self.above.is_none() && self.below.is_none() {
            return Some(format!(
                "alert rule {:?} has no condition: set baseline = true or a bound (above, below)",
                self.name
            ));
        }
        if self.resolve_points == 0 || self.resolve_points > RESOLVE_POINTS_MAX {
            return Some(format!(
                "alert rule {:?}: resolve_points must be 1 to {RESOLVE_POINTS_MAX}",
                self.name
            ));
        }
        if self
            .above_ratio
            .is_some_and(|r| !(r >= 1.0 && r.is_finite()))
        {
            return Some(format!(
                "alert rule {:?}: above_ratio must be at least 1",
                self.name
            ));
        }
        if self.below_ratio.is_some_and(|r| !(r > 0.0 && r <= 1.0)) {
            return Some(format!(
                "alert rule {:?}: below_ratio must be above 0 and at most 1",
                self.name
            ));
        }
        if self
            .above_delta
            .is_some_and(|d| !(d >= 0.0 && d.is_finite()))
        {
            return Some(format!(
                "alert rule {:?}: above_delta must be at least 0",
                self.name
            ));
        }
        if self.for_points == 0 || self.for_points > RESOLVE_POINTS_MAX {
            return Some(format!(
                "alert rule {:?}: for_points must be 1 to {RESOLVE_POINTS_MAX}",
                self.name
            ));
        }
        if self.traffic_min < 0.0 || !self.traffic_min.is_finite() {
            return Some(format!(
                "alert rule {:?}: traffic_min must be at least 0",
                self.name
            ));
        }
        None
    }

    fn applies(&self, service: &str, metric: &str) -> bool {
        self.metric == metric
            && (self.services.is_empty() || self.services.iter().any(|s| s == service))
    }

    fn holds(&self, o: &Observation) -> bool {
        (!self.baseline || o.point.anomalous)
            && self.above.is_none_or(|b| o.value > b)
            && self.below.is_none_or(|b| o.value < b)
            && self
                .above_ratio
                .is_none_or(|r| o.value >= o.point.expected * r)
            && self
                .below_ratio
                .is_none_or(|r| o.value <= o.point.expected * r)
            && self
                .above_delta
                .is_none_or(|d| o.value >= o.point.expected + d)
            && o.traffic >= self.traffic_min
    }
}

/// The most intervals an alert may wait before resolving.
pub const RESOLVE_POINTS_MAX: usize = 1_000;

/// One scored point of one series, as the rules see it.
#[derive(Clone, Copy, Debug)]
pub struct Observation<'a> {
    pub service: &'a str,
    pub metric: &'a str,
    pub time_ms: i64,
    pub value: f64,
    pub point: &'a Point,
    /// Requests the series' service had in the interval.
    pub traffic: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Firing,
    Resolved,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    pub id: u64,
    pub rule: String,
    pub service: String,
    pub metric: String,
    pub severity: Severity,
    pub state: State,
    pub started_ms: i64,
    pub resolved_ms: Option<i64>,
    /// The value, baseline and score when it fired.
    pub value: f64,
    pub expected: f64,
    pub score: f64,
    /// The largest score seen while firing.
    pub score_max: f64,
    pub incident: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Incident {
    pub id: u64,
    pub state: State,
    pub opened_ms: i64,
    pub resolved_ms: Option<i64>,
    /// The last time an alert of the incident fired or was anomalous.
    pub active_ms: i64,
    pub severity: Severity,
    pub alerts: Vec<u64>,
    /// Services of its alerts, in the order they joined.
    pub services: Vec<String>,
}

/// What changed on an observation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    AlertFired { alert: u64, incident: u64 },
    AlertResolved { alert: u64 },
    IncidentOpened { incident: u64 },
    IncidentJoined { incident: u64, alert: u64 },
    IncidentResolved { incident: u64 },
}

/// Calls between services, as the merge needs them: undirected, since an incident spreads
/// both to callers (slow answers) and callees (retries, load).
#[derive(Clone, Debug, Default)]
pub struct ServiceGraph {
    neighbours: HashMap<String, Vec<String>>,
}

impl ServiceGraph {
    pub fn from_edges<'a>(edges: impl IntoIterator<Item = (&'a str, &'a str)>) -> ServiceGraph {
        let mut neighbours: HashMap<String, Vec<String>> = HashMap::new();
        for (a, b) in edges {
            if a == b {
                continue;
            }
            neighbours
                .entry(a.to_string())
                .or_default()
                .push(b.to_string());
            neighbours
                .entry(b.to_string())
                .or_default()
                .push(a.to_string());
        }
        ServiceGraph { neighbours }
    }

    /// Calls between `a` and `b`, if at most `max`.
    pub fn hops(&self, a: &str, b: &str, max: usize) -> Option<usize> {
        if a == b {
            return Some(0);
        }
        let mut seen: HashSet<&str> = HashSet::from([a]);
        let mut queue = VecDeque::from([(a, 0usize)]);
        while let Some((node, depth)) = queue.pop_front() {
            if depth == max {
                continue;
            }
            for next in self.neighbours.get(node).into_iter().flatten() {
                if next == b {
                    return Some(depth + 1);
                }
                if seen.insert(next) {
                    queue.push_back((next, depth + 1));
                }
            }
        }
        None
    }
}

/// How alerts merge and how much is kept.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MergeConfig {
    /// An alert joins an incident active within this long.
    pub merge_window_ms: i64,
    /// ... whose services are within this many calls of the alert's service.
    pub merge_hops: usize,
    /// Alerts kept (resolved ones are dropped oldest first at the bound).
    pub alerts_max: usize,
    /// Incidents kept (resolved ones are dropped oldest first at the bound).
    pub incidents_max: usize,
}

impl Default for MergeConfig {
    fn default() -> Self {
        MergeConfig {
            merge_window_ms: 10 * 60_000,
            merge_hops: 2,
            alerts_max: 10_000,
            incidents_max: 1_000,
        }
    }
}

/// Alerts and incidents.
#[derive(Clone, Debug, Default)]
pub struct Book {
    rules: Vec<AlertRule>,
    config: MergeConfig,
    alerts: BTreeMap<u64, Alert>,
    incidents: BTreeMap<u64, Incident>,
    /// Firing alert per (rule index, service, metric), with its quiet intervals so far.
    firing: HashMap<(usize, String, String), (u64, usize)>,
    /// Points in a row the condition has held, per (rule index, service, metric), before
    /// firing.
    pending: HashMap<(usize, String, String), usize>,
    next_alert: u64,
    next_incident: u64,
}

impl Book {
    pub fn new(rules: Vec<AlertRule>, config: MergeConfig) -> Book {
        Book {
            rules,
            config,
            next_alert: 1,
            next_incident: 1,
            ..Book::default()
        }
    }

    /// Continues incident ids after `next` - 1 (ids stored by an earlier run).
    pub fn starting_at(mut self, next: u64) -> Book {
        self.next_incident = next.max(1);
        self
    }

    pub fn rules(&self) -> &[AlertRule] {
        &self.rules
    }

    pub fn alerts(&self) -> impl DoubleEndedIterator<Item = &Alert> {
        self.alerts.values()
    }

    pub fn alert(&self, id: u64) -> Option<&Alert> {
        self.alerts.get(&id)
    }

    pub fn incidents(&self) -> impl DoubleEndedIterator<Item = &Incident> {
        self.incidents.values()
    }

    pub fn incident(&self, id: u64) -> Option<&Incident> {
        self.incidents.get(&id)
    }

    /// Applies every rule to one observation.
    pub fn observe(&mut self, o: &Observation, graph: &ServiceGraph) -> Vec<Event> {
        let mut events = vec![];
        for index in 0..self.rules.len() {
            let rule = &self.rules[index];
            if !rule.applies(o.service, o.metric) {
                continue;
            }
            let holds = rule.holds(o);
            let key = (index, o.service.to_string(), o.metric.to_string());
            match (self.firing.get_mut(&key), holds) {
                (Some((id, quiet)), true) => {
                    *quiet = 0;
                    let id = *id;
                    self.touch(id, o);
                }
                (Some((id, quiet)), false) => {
                    *quiet += 1;
                    if *quiet >= rule.resolve_points {
                        let id = *id;
                        self.firing.remove(&key);
                        self.resolve(id, o.time_ms, &mut events);
                    }
                }
                (None, true) => {
                    let held = self.pending.entry(key.clone()).or_default();
                    *held += 1;
                    if *held >= rule.for_points {
                        self.pending.remove(&key);
                        let id = self.fire(index, o, graph, &mut events);
                        self.firing.insert(key, (id, 0));
                    }
                }
                (None, false) => {
                    self.pending.remove(&key);
                }
            }
        }
        events
    }

    fn touch(&mut self, id: u64, o: &Observation) {
        if let Some(alert) = self.alerts.get_mut(&id) {
            alert.score_max = alert.score_max.max(o.point.score);
            if let Some(incident) = self.incidents.get_mut(&alert.incident) {
                incident.active_ms = incident.active_ms.max(o.time_ms);
            }
        }
    }

    fn fire(
        &mut self,
        rule: usize,
        o: &Observation,
        graph: &ServiceGraph,
        events: &mut Vec<Event>,
    ) -> u64 {
        let id = self.next_alert;
        self.next_alert += 1;
        let severity = self.rules[rule].severity;
        let joined = self.incident_to_join(o.service, o.time_ms, graph);
        let incident = match joined {
            Some(incident) => incident,
            None => {
                let incident = self.next_incident;
                self.next_incident += 1;
                self.incidents.insert(
                    incident,
                    Incident {
                        id: incident,
                        state: State::Firing,
                        opened_ms: o.time_ms,
                        resolved_ms: None,
                        active_ms: o.time_ms,
                        severity,
                        alerts: vec![],
                        services: vec![],
                    },
                );
                events.push(Event::IncidentOpened { incident });
                incident
            }
        };
        if let Some(i) = self.incidents.get_mut(&incident) {
            i.alerts.push(id);
            if !i.services.iter().any(|s| s == o.service) {
                i.services.push(o.service.to_string());
            }
            i.severity = i.severity.max(severity);
            i.active_ms = i.active_ms.max(o.time_ms);
        }
        if joined.is_some() {
            events.push(Event::IncidentJoined {
                incident,
                alert: id,
            });
        }
        self.alerts.insert(
            id,
            Alert {
                id,
                rule: self.rules[rule].name.clone(),
                service: o.service.to_string(),
                metric: o.metric.to_string(),
                severity,
                state: State::Firing,
                started_ms: o.time_ms,
                resolved_ms: None,
                value: o.value,
                expected: o.point.expected,
                score: o.point.score,
                score_max: o.point.score,
                incident,
            },
        );
        events.push(Event::AlertFired {
            alert: id,
            incident,
        });
        self.trim();
        id
    }

    /// The open incident nearest on the map, if one is close enough in calls and time.
    fn incident_to_join(&self, service: &str, now_ms: i64, graph: &ServiceGraph) -> Option<u64> {
        self.incidents
            .values()
            .filter(|i| {
                i.state == State::Firing && now_ms - i.active_ms <= self.config.merge_window_ms
            })
            .filter_map(|i| {
                let hops = i
                    .services
                    .iter()
                    .filter_map(|s| graph.hops(s, service, self.config.merge_hops))
                    .min()?;
                Some((hops, std::cmp::Reverse(i.active_ms), i.id))
            })
            .min()
            .map(|(_, _, id)| id)
    }

    fn resolve(&mut self, id: u64, now_ms: i64, events: &mut Vec<Event>) {
        let Some(alert) = self.alerts.get_mut(&id) else {
            return;
        };
        alert.state = State::Resolved;
        alert.resolved_ms = Some(now_ms);
        let incident = alert.incident;
        events.push(Event::AlertResolved { alert: id });
        let all_resolved = self.incidents.get(&incident).is_some_and(|i| {
            i.alerts.iter().all(|a| {
                self.alerts
                    .get(a)
                    .is_none_or(|a| a.state == State::Resolved)
            })
        });
        if all_resolved {
            if let Some(i) = self.incidents.get_mut(&incident) {
                i.state = State::Resolved;
                i.resolved_ms = Some(now_ms);
                events.push(Event::IncidentResolved { incident });
            }
        }
    }

    /// Drops the oldest resolved alerts and incidents beyond the bounds. Firing ones are
    /// never dropped: they are bounded by rules × series, which the caller bounds.
    fn trim(&mut self) {
        while self.alerts.len() > self.config.alerts_max {
            let Some(id) = self
                .alerts
                .values()
                .find(|a| a.state == State::Resolved)
                .map(|a| a.id)
            else {
                break;
            };
            self.alerts.remove(&id);
        }
        while self.incidents.len() > self.config.incidents_max {
            let Some(id) = self
                .incidents
                .values()
                .find(|i| i.state == State::Resolved)
                .map(|i| i.id)
            else {
                break;
            };
            self.incidents.remove(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(name: &str, metric: &str) -> AlertRule {
        AlertRule {
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
            traffic_min: 10.0,
            severity: Severity::Warning,
            resolve_points: 2,
        }
    }

    fn point(anomalous: bool) -> Point {
        Point {
            expected: 10.0,
            lower: 5.0,
            upper: 15.0,
            z: if anomalous { 9.0 } else { 0.1 },
            score: if anomalous { 0.9 } else { 0.0 },
            anomalous,
            onset: false,
            change_point: false,
            warming_up: false,
        }
    }

    fn observe(
        book: &mut Book,
        graph: &ServiceGraph,
        service: &str,
        metric: &str,
        t: i64,
        bad: bool,
    ) -> Vec<Event> {
        let p = point(bad);
        let o = Observation {
            service,
            metric,
            time_ms: t,
            value: if bad { 100.0 } else { 10.0 },
            point: &p,
            traffic: 50.0,
        };
        book.observe(&o, graph)
    }

    #[test]
    fn alerts_of_one_incident_merge_along_the_map() {
        let graph = ServiceGraph::from_edges([
            ("gateway", "payment"),
            ("payment", "ledger"),
            ("shop", "search"),
        ]);
        let mut book = Book::new(
            vec![rule("latency", "latency_ms_p95"), rule("errors", "errors")],
            MergeConfig::default(),
        );
        let e = observe(&mut book, &graph, "ledger", "latency_ms_p95", 0, true);
        assert_eq!(
            e,
            [
                Event::IncidentOpened { incident: 1 },
                Event::AlertFired {
                    alert: 1,
                    incident: 1
                }
            ]
        );
        // Still anomalous: the same alert, no new event.
        assert!(observe(&mut book, &graph, "ledger", "latency_ms_p95", 1_000, true).is_empty());
        // Two calls away: joins.
        let e = observe(&mut book, &graph, "gateway", "latency_ms_p95", 2_000, true);
        assert_eq!(
            e,
            [
                Event::IncidentJoined {
                    incident: 1,
                    alert: 2
                },
                Event::AlertFired {
                    alert: 2,
                    incident: 1
                }
            ]
        );
        // Another rule on the same service joins too.
        let e = observe(&mut book, &graph, "payment", "errors", 2_000, true);
        assert_eq!(
            e[0],
            Event::IncidentJoined {
                incident: 1,
                alert: 3
            }
        );
        // Not connected: a second incident.
        let e = observe(&mut book, &graph, "search", "latency_ms_p95", 3_000, true);
        assert_eq!(e[0], Event::IncidentOpened { incident: 2 });
        assert_eq!(
            book.incident(1).unwrap().services,
            ["ledger", "gateway", "payment"]
        );
    }

    #[test]
    fn an_incident_resolves_when_its_alerts_have() {
        let graph = ServiceGraph::default();
        let mut book = Book::new(
            vec![rule("latency", "latency_ms_p95")],
            MergeConfig::default(),
        );
        observe(&mut book, &graph, "a", "latency_ms_p95", 0, true);
        assert!(observe(&mut book, &graph, "a", "latency_ms_p95", 1, false).is_empty());
        let e = observe(&mut book, &graph, "a", "latency_ms_p95", 2, false);
        assert_eq!(
            e,
            [
                Event::AlertResolved { alert: 1 },
                Event::IncidentResolved { incident: 1 }
            ]
        );
        // Firing again later is a new alert and a new incident.
        let e = observe(&mut book, &graph, "a", "latency_ms_p95", 3, true);
        assert_eq!(e[0], Event::IncidentOpened { incident: 2 });
    }

    #[test]
    fn a_rule_fires_only_after_its_condition_held_for_points_in_a_row() {
        let graph = ServiceGraph::default();
        let mut r = rule("latency", "latency_ms_p95");
        r.for_points = 3;
        let mut book = Book::new(vec![r], MergeConfig::default());
        let m = "latency_ms_p95";
        // Two bad points, a good one, two bad: never three in a row.
        for (t, bad) in [(0, true), (1, true), (2, false), (3, true), (4, true)] {
            assert!(
                observe(&mut book, &graph, "a", m, t, bad).is_empty(),
                "at {t}"
            );
        }
        let e = observe(&mut book, &graph, "a", m, 5, true);
        assert_eq!(e[0], Event::IncidentOpened { incident: 1 });
    }

    #[test]
    fn ratio_bounds_have_a_direction() {
        let graph = ServiceGraph::default();
        let mut up = rule("slow", "latency_ms_p95");
        up.above_ratio = Some(1.25);
        let mut book = Book::new(vec![up], MergeConfig::default());
        let p = point(true);
        // Anomalous, but below the baseline: not a latency alert.
        let low = Observation {
            service: "a",
            metric: "latency_ms_p95",
            time_ms: 0,
            value: 5.0,
            point: &p,
            traffic: 50.0,
        };
        assert!(book.observe(&low, &graph).is_empty());
        let high = Observation { value: 13.0, ..low };
        assert!(!book.observe(&high, &graph).is_empty());
        let mut bad = rule("x", "y");
        bad.below_ratio = Some(2.0);
        assert!(bad.problem().unwrap().contains("below_ratio"));
    }

    #[test]
    fn a_delta_bound_needs_the_value_that_far_above_its_baseline() {
        let graph = ServiceGraph::default();
        let mut r = rule("slow", "latency_ms_p95");
        r.above_ratio = Some(1.25);
        r.above_delta = Some(10.0);
        let mut book = Book::new(vec![r], MergeConfig::default());
        let p = point(true);
        // 1.9 times the baseline of 10, but only 9 above it: not yet an alert.
        let near = Observation {
            service: "a",
            metric: "latency_ms_p95",
            time_ms: 0,
            value: 19.0,
            point: &p,
            traffic: 50.0,
        };
        assert!(book.observe(&near, &graph).is_empty());
        let far = Observation {
            value: 20.0,
            ..near
        };
        assert!(!book.observe(&far, &graph).is_empty());
        let mut bad = rule("x", "y");
        bad.above_delta = Some(-1.0);
        assert!(bad.problem().unwrap().contains("above_delta"));
        bad.above_delta = Some(f64::NAN);
        assert!(bad.problem().unwrap().contains("above_delta"));
    }

    #[test]
    fn static_bounds_and_the_traffic_guard_gate_the_baseline() {
        let graph = ServiceGraph::default();
        let mut bounded = rule("slow", "latency_ms_p95");
        bounded.above = Some(200.0);
        let mut book = Book::new(vec![bounded], MergeConfig::default());
        // Anomalous against the baseline but under the bound: nothing.
        assert!(observe(&mut book, &graph, "a", "latency_ms_p95", 0, true).is_empty());
        let p = point(true);
        let quiet = Observation {
            service: "a",
            metric: "latency_ms_p95",
            time_ms: 1,
            value: 500.0,
            point: &p,
            traffic: 2.0,
        };
        assert!(
            book.observe(&quiet, &graph).is_empty(),
            "too little traffic"
        );
        let busy = Observation {
            traffic: 20.0,
            ..quiet
        };
        assert_eq!(book.observe(&busy, &graph).len(), 2);
        let mut none = rule("none", "x");
        none.baseline = false;
        assert!(none.problem().unwrap().contains("no condition"));
    }
}
