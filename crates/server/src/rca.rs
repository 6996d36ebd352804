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

/// Ranked services whose runbooks are suggested.
const SUGGEST_FROM_TOP: usize = 3;

/// The configured runbooks for the incident's likely causes (the top three, in rank
/// order) and their fault types.
pub(crate) fn suggestions<'a>(
    runbooks: &'a [crate::runbooks::RunbookConfig],
    incident: &Value,
) -> Vec<&'a crate::runbooks::RunbookConfig> {
    let analysis = &incident["analysis"];
    let overall = analysis["fault_type"].as_str();
    let mut out: Vec<&crate::runbooks::RunbookConfig> = vec![];
    for c in analysis["ranking"]
        .as_array()
        .into_iter()
        .flatten()
        .take(SUGGEST_FROM_TOP)
    {
        let Some(service) = c["service"].as_str() else {
            continue;
        };
        let Some(fault) = c["fault_type"].as_str().or(overall) else {
            continue;
        };
        for rb in crate::runbooks::suggest(runbooks, service, fault) {
            if !out.iter().any(|r| r.name == rb.name) {
                out.push(rb);
            }
        }
    }
    out
}

/// The suggested runbooks with their last verification, as an incident shows them.
pub(crate) async fn suggested_runbooks(s: &Shared, incident: &Value) -> Value {
    let mut out = vec![];
    for rb in suggestions(&s.cfg.runbooks, incident) {
        let last = crate::runbooks::last_verification(s, &rb.name).await;
        out.push(json!({
            "name": rb.name,
            "description": rb.description,
            "services": rb.services,
            "fault_types": rb.fault_types,
            "auto_execute": rb.auto_execute,
            "last_verification": last.map(|r| json!({
                "ok": r.outcome == "ok",
                "outcome": r.outcome,
                "started_at": r.started_at,
                "duration_ms": r.duration_ms,
                "status": r.status,
                "message": r.message,
            })),
        }));
    }
    Value::Array(out)
}

/// Runs the suggested runbooks configured `auto_execute = true` for a new incident
/// (never any other: a person runs those). Each execution is recorded like any other.
pub(crate) async fn execute_automatic(s: &Shared, incident: &Value) {
    let id = incident["id"].as_u64().unwrap_or(0).to_string();
    for rb in suggestions(&s.cfg.runbooks, incident) {
        if !rb.auto_execute {
            continue;
        }
        match crate::runbooks::execute_automatically(s, &rb.name, &id).await {
            Ok(run) => {
                tracing::info!(runbook = %rb.name, incident = %id, outcome = %run.outcome, "runbook executed automatically")
            }
            Err(e) => {
                tracing::warn!(runbook = %rb.name, incident = %id, error = ?e, "automatic runbook refused")
            }
        }
    }
}
