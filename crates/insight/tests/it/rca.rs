//! Root-cause ranking: synthetic cases of each rule, the PetShop parsers, and the PetShop
//! benchmark on its test split.

use std::path::{Path, PathBuf};
use std::time::Instant;

use steadfast_insight::rca::petshop::{self, Case, Graph, Scenario};
use steadfast_insight::rca::{
    rank, ExplainedVia, FaultType, Incident, MetricKind, NodeKind, RcaConfig, Series, ServiceMap,
    Target, Verdict,
};

const STEP: i64 = 300;
/// Points before the incident (the incident lies between point `BEFORE - 1` and `BEFORE`).
const BEFORE: usize = 8;
const AFTER: usize = 4;
const T0: i64 = 1_700_000_000;

fn incident_time() -> i64 {
    T0 + BEFORE as i64 * STEP - STEP / 2
}

/// A series that is `before` (with a small deterministic wobble) and then `after`.
fn series(node: &str, kind: MetricKind, statistic: &str, before: f64, after: f64) -> Series {
    let n = BEFORE + AFTER;
    let timestamps = (0..n as i64).map(|i| T0 + i * STEP).collect();
    let values = (0..n)
        .map(|i| {
            let wobble = 1.0 + 0.01 * ((i * 7 % 5) as f64 - 2.0);
            Some(if i < BEFORE { before } else { after } * wobble)
        })
        .collect();
    Series::new(node, kind, statistic, timestamps, values)
}

fn latency(node: &str, before: f64, after: f64) -> Series {
    series(node, MetricKind::Latency, "Average", before, after)
}

fn requests(node: &str, before: f64, after: f64) -> Series {
    series(node, MetricKind::Requests, "Sum", before, after)
}

fn availability(node: &str, before: f64, after: f64) -> Series {
    series(node, MetricKind::Availability, "Average", before, after)
}

fn chain(kinds: &[(&str, NodeKind)]) -> ServiceMap {
    let mut map = ServiceMap::new();
    for (name, kind) in kinds {
        map.add_node(name, *kind);
    }
    for w in kinds.windows(2) {
        map.add_call(w[0].0, w[1].0);
    }
    map
}

fn abc() -> ServiceMap {
    chain(&[
        ("A", NodeKind::Service),
        ("B", NodeKind::Service),
        ("C", NodeKind::Service),
    ])
}

fn incident_at(node: &str, kind: MetricKind) -> Incident {
    Incident {
        time: incident_time(),
        target: Some(Target {
            node: node.to_string(),
            kind,
            statistic: Some("Average".to_string()),
        }),
    }
}

fn with_requests(mut s: Vec<Series>, nodes: &[&str]) -> Vec<Series> {
    for n in nodes {
        s.push(requests(n, 1000.0, 1000.0));
    }
    s
}

#[test]
fn a_slow_leaf_ranks_first_and_its_callers_are_explained_by_it() {
    // C is 400 ms slower; B and A inherit the same 400 ms.
    let s = with_requests(
        vec![
            latency("A", 0.20, 0.60),
            latency("B", 0.15, 0.55),
            latency("C", 0.10, 0.50),
        ],
        &["A", "B", "C"],
    );
    let r = rank(
        &abc(),
        &s,
        &incident_at("A", MetricKind::Latency),
        &RcaConfig::default(),
    );
    assert_eq!(r.verdict, Verdict::Anomalous);
    assert_eq!(r.top(3), vec!["C", "B", "A"]);
    let c = &r.candidates[0];
    assert!(c.explained_by.is_none());
    assert_eq!(c.path, vec!["A", "B", "C"]);
    for name in ["A", "B"] {
        let x = &r.candidates[r.position(name).unwrap()];
        let e = x.explained_by.as_ref().expect("explained");
        assert_eq!(e.via, ExplainedVia::Dependency);
        assert!(e.share > 0.9, "{name}: {e:?}");
        assert!(x.score < 0.2 * x.anomaly, "{name}: {x:?}");
    }
    assert_eq!(r.fault_type, Some(FaultType::Latency));
    assert!(r.runbook.iter().all(|s| s.contains('C')) && !r.runbook.is_empty());
}

#[test]
fn a_slow_node_whose_callees_did_not_move_stays_first() {
    let s = with_requests(
        vec![
            latency("A", 0.20, 0.60),
            latency("B", 0.10, 0.50),
            latency("C", 0.05, 0.05),
        ],
        &["A", "B", "C"],
    );
    let r = rank(
        &abc(),
        &s,
        &incident_at("A", MetricKind::Latency),
        &RcaConfig::default(),
    );
    assert_eq!(r.top(1), vec!["B"]);
    let b = &r.candidates[0];
    assert!(b.explained_by.is_none(), "{b:?}");
    assert!((b.score - b.anomaly).abs() < 1e-9);
    // A callee that moved a little explains only its share.
    let s = with_requests(
        vec![
            latency("A", 0.20, 0.60),
            latency("B", 0.10, 0.50),
            latency("C", 0.05, 0.09),
        ],
        &["A", "B", "C"],
    );
    let r = rank(
        &abc(),
        &s,
        &incident_at("A", MetricKind::Latency),
        &RcaConfig::default(),
    );
    assert_eq!(r.top(1), vec!["B"]);
    let share = r.candidates[0]
        .explained_by
        .as_ref()
        .map_or(0.0, |e| e.share);
    assert!(share > 0.05 && share < 0.15, "{share}");
}

#[test]
fn the_explanation_names_the_metric_how_far_and_the_path() {
    let s = with_requests(
        vec![
            latency("A", 0.20, 0.60),
            latency("B", 0.15, 0.55),
            latency("C", 0.10, 0.50),
        ],
        &["A", "B", "C"],
    );
    let r = rank(
        &abc(),
        &s,
        &incident_at("A", MetricKind::Latency),
        &RcaConfig::default(),
    );
    let c = &r.candidates[0];
    let e = c
        .evidence
        .iter()
        .find(|e| e.dominant)
        .expect("a dominant metric");
    assert_eq!(e.kind, MetricKind::Latency);
    assert_eq!(e.statistic, "Average");
    assert!((e.before_median - 0.10).abs() < 0.005 && (e.after_median - 0.50).abs() < 0.01);
    assert!(e.z > 10.0 && e.scale > 0.0);
    assert_eq!(
        e.before_points,
        BEFORE - 1,
        "the bucket holding the incident is left out"
    );
    assert_eq!(e.after_points, AFTER);
    let text = c.describe();
    assert!(text.contains("latency Average"), "{text}");
    assert!(text.contains("A -> B -> C"), "{text}");
    let a = &r.candidates[r.position("A").unwrap()].describe();
    assert!(a.contains("explained by its dependency"), "{a}");
}

#[test]
fn fault_types_are_told_apart() {
    let cfg = RcaConfig::default();
    // Errors: availability drops at C and is passed up.
    let s = with_requests(
        vec![
            availability("A", 100.0, 96.0),
            availability("B", 100.0, 95.0),
            availability("C", 100.0, 95.0),
        ],
        &["A", "B", "C"],
    );
    let r = rank(
        &abc(),
        &s,
        &incident_at("A", MetricKind::Availability),
        &cfg,
    );
    assert_eq!(
        (r.top(1), r.fault_type),
        (vec!["C"], Some(FaultType::Errors))
    );

    // Saturation: B's CPU is pinned and it is slow.
    let mut s = with_requests(
        vec![
            latency("A", 0.2, 0.5),
            latency("B", 0.1, 0.4),
            latency("C", 0.05, 0.05),
        ],
        &["A", "B", "C"],
    );
    s.push(series("B", MetricKind::Saturation, "Average", 35.0, 98.0));
    let r = rank(&abc(), &s, &incident_at("A", MetricKind::Latency), &cfg);
    assert_eq!(
        (r.top(1), r.fault_type),
        (vec!["B"], Some(FaultType::Saturation))
    );

    // Overload: B gets three times the requests from outside (A's did not change).
    let s = vec![
        latency("A", 0.2, 0.5),
        latency("B", 0.1, 0.4),
        latency("C", 0.05, 0.05),
        requests("A", 1000.0, 1000.0),
        requests("B", 1000.0, 3000.0),
        requests("C", 1000.0, 1000.0),
    ];
    let r = rank(&abc(), &s, &incident_at("A", MetricKind::Latency), &cfg);
    assert_eq!(
        (r.top(1), r.fault_type),
        (vec!["B"], Some(FaultType::Overload))
    );

    // Dependency failure: the database at the end of the chain is slow.
    let map = chain(&[
        ("A", NodeKind::Service),
        ("B", NodeKind::Service),
        ("db", NodeKind::Resource),
    ]);
    let s = with_requests(
        vec![
            latency("A", 0.2, 0.6),
            latency("B", 0.15, 0.55),
            latency("db", 0.01, 0.41),
        ],
        &["A", "B", "db"],
    );
    let r = rank(&map, &s, &incident_at("A", MetricKind::Latency), &cfg);
    assert_eq!(
        (r.top(1), r.fault_type),
        (vec!["db"], Some(FaultType::DependencyFailure))
    );
    assert!(r.runbook[0].contains("db"));

    // Plain latency in a service.
    let s = with_requests(
        vec![
            latency("A", 0.2, 0.6),
            latency("B", 0.1, 0.5),
            latency("C", 0.05, 0.05),
        ],
        &["A", "B", "C"],
    );
    let r = rank(&abc(), &s, &incident_at("A", MetricKind::Latency), &cfg);
    assert_eq!(r.fault_type, Some(FaultType::Latency));
}

#[test]
fn flat_data_is_nothing_anomalous() {
    let s = with_requests(
        vec![
            latency("A", 0.2, 0.2),
            latency("B", 0.1, 0.1),
            latency("C", 0.05, 0.05),
            availability("A", 100.0, 100.0),
            availability("C", 99.5, 99.5),
        ],
        &["A", "B", "C"],
    );
    let r = rank(
        &abc(),
        &s,
        &incident_at("A", MetricKind::Latency),
        &RcaConfig::default(),
    );
    assert_eq!(r.verdict, Verdict::NothingAnomalous);
    assert!(r.top_anomaly < 1.0, "{}", r.top_anomaly);
    assert_eq!(r.fault_type, None);
    assert!(r.runbook.is_empty());
    assert_eq!(r.candidates.len(), 3, "still a full ranking");
    // Constant values (zero MAD) do not divide by zero.
    assert!(r
        .candidates
        .iter()
        .all(|c| c.score.is_finite() && c.anomaly.is_finite()));
}

#[test]
fn a_remote_view_is_explained_by_the_instrumented_service_it_fronts() {
    // A calls B and also B's load balancer, seen only from A's side.
    let mut map = ServiceMap::new();
    map.add_node("A", NodeKind::Service);
    map.add_node("B", NodeKind::Service);
    map.add_node("b-elb_remote", NodeKind::Remote);
    map.add_call("A", "B");
    map.add_call("A", "b-elb_remote");
    // The remote view moves more (it adds queueing in the balancer).
    let s = with_requests(
        vec![
            latency("A", 0.1, 0.3),
            latency("B", 0.01, 0.05),
            latency("b-elb_remote", 0.012, 0.15),
        ],
        &["A", "B", "b-elb_remote"],
    );
    let r = rank(
        &map,
        &s,
        &incident_at("A", MetricKind::Latency),
        &RcaConfig::default(),
    );
    assert_eq!(r.top(1), vec!["B"]);
    let remote = &r.candidates[r.position("b-elb_remote").unwrap()];
    assert_eq!(
        remote.explained_by.as_ref().map(|e| e.via),
        Some(ExplainedVia::Sibling)
    );
}

#[test]
fn unreachable_and_unknown_nodes_rank_after_the_candidates() {
    let mut map = abc();
    map.add_node("D", NodeKind::Service); // not called by A
    let s = with_requests(
        vec![
            latency("A", 0.2, 0.3),
            latency("C", 0.1, 0.2),
            latency("D", 0.1, 5.0),
            latency("not-on-the-map", 0.1, 5.0),
        ],
        &["A", "C", "D"],
    );
    let r = rank(
        &map,
        &s,
        &incident_at("A", MetricKind::Latency),
        &RcaConfig::default(),
    );
    assert_eq!(r.top(1), vec!["C"]);
    let d = r.position("D").unwrap();
    let u = r.position("not-on-the-map").unwrap();
    assert!(d >= 3 && u >= 3);
    assert!(r.candidates[d].path.is_empty() && !r.candidates[d].reachable);
    // Without a target every node is a candidate.
    let r = rank(
        &map,
        &s,
        &Incident {
            time: incident_time(),
            target: None,
        },
        &RcaConfig::default(),
    );
    assert!(r.top(2).contains(&"D") && r.top(2).contains(&"not-on-the-map"));
}

#[test]
fn metric_kinds_parse() {
    assert_eq!(MetricKind::parse("latency"), MetricKind::Latency);
    assert_eq!(MetricKind::parse("Availability"), MetricKind::Availability);
    assert_eq!(MetricKind::parse("throughput"), MetricKind::Requests);
    assert_eq!(MetricKind::parse("cpu"), MetricKind::Saturation);
    assert_eq!(MetricKind::parse("error_rate"), MetricKind::ErrorRate);
    assert_eq!(MetricKind::parse("whatever"), MetricKind::Other);
}

#[test]
fn fifty_services_rank_in_well_under_100_ms() {
    // A tree of 50 services, a day of 5-minute points, four series each.
    let n = 50;
    let points = 288;
    let mut map = ServiceMap::new();
    for i in 0..n {
        map.add_node(&format!("s{i}"), NodeKind::Service);
    }
    for i in 1..n {
        map.add_call(&format!("s{}", (i - 1) / 3), &format!("s{i}"));
    }
    let incident = T0 + (points as i64 - 12) * STEP - STEP / 2;
    let mut series = Vec::new();
    for i in 0..n {
        let node = format!("s{i}");
        // s40 (under s13 under s4 under s1 under s0) is slow; its ancestors inherit.
        let slow = [0, 1, 4, 13, 40].contains(&i);
        for (kind, stat, level) in [
            (MetricKind::Latency, "Average", 0.1),
            (MetricKind::Latency, "p99", 0.5),
            (MetricKind::Requests, "Sum", 1000.0),
            (MetricKind::Availability, "Average", 100.0),
        ] {
            let timestamps: Vec<i64> = (0..points as i64).map(|p| T0 + p * STEP).collect();
            let values = timestamps
                .iter()
                .enumerate()
                .map(|(p, &t)| {
                    let wobble = 1.0 + 0.03 * (((p * 13 + i * 7) % 11) as f64 / 10.0 - 0.5);
                    let bump = if slow && kind == MetricKind::Latency && t > incident {
                        0.4
                    } else {
                        0.0
                    };
                    Some(if kind == MetricKind::Availability {
                        level
                    } else {
                        (level + bump) * wobble
                    })
                })
                .collect();
            series.push(Series::new(&node, kind, stat, timestamps, values));
        }
    }
    let cfg = RcaConfig::default();
    let inc = incident_at("s0", MetricKind::Latency);
    let inc = Incident {
        time: incident,
        ..inc
    };
    let r = rank(&map, &series, &inc, &cfg);
    assert_eq!(r.top(1), vec!["s40"]);
    let runs = 20;
    let start = Instant::now();
    for _ in 0..runs {
        std::hint::black_box(rank(&map, &series, &inc, &cfg));
    }
    let per = start.elapsed() / runs;
    eprintln!("rca: 50 services, 200 series of {points} points: {per:?} per incident");
    assert!(per.as_millis() < 100, "{per:?}");
}

#[test]
fn petshop_files_parse() {
    let graph = Graph::parse(",A,B_remote,T_AWS::DynamoDB::Table\nA,0.0,1.0,1.0\nB_remote,0.0,0.0,0.0\nT_AWS::DynamoDB::Table,0,0,0\n")
        .unwrap();
    let map = &graph.map;
    assert_eq!(map.len(), 3);
    assert_eq!(map.edge_count(), 2);
    let a = map.index_of("A").unwrap();
    assert_eq!(map.callees(a).len(), 2);
    assert_eq!(
        map.kind(map.index_of("B_remote").unwrap()),
        NodeKind::Remote
    );
    assert_eq!(
        map.kind(map.index_of("T_AWS::DynamoDB::Table").unwrap()),
        NodeKind::Resource
    );
    assert_eq!(
        petshop::node_kind("payforadoption_AWS::ECS::Container"),
        NodeKind::Service
    );

    let metrics = "microservice,A,A,B_remote\nmetric,latency,requests,availability\nstatistic,Average,Sum,Average\nunix_timestamp,,,\n1000.0,0.5,10,\n1300.0,,12,99.5\n";
    let target = r#"{"target": {"node": "A", "metric": "latency", "agg": "Average", "timestamp": 1200}, "root_cause": {"node": "B_remote", "metric": null}, "metadata": {}}"#;
    let case = Case::parse(metrics, target).unwrap().with_id("issue_0");
    assert_eq!(case.series.len(), 3);
    assert_eq!(case.series[0].timestamps, vec![1000, 1300]);
    assert_eq!(case.series[0].values, vec![Some(0.5), None]);
    assert_eq!(case.series[1].kind, MetricKind::Requests);
    assert_eq!(case.series[2].values, vec![None, Some(99.5)]);
    assert_eq!(case.root_cause, "B_remote");
    let inc = case.incident();
    assert_eq!(inc.time, 1200);
    assert_eq!(inc.target.unwrap().kind, MetricKind::Latency);
    assert!(petshop::parse_metrics("metric,latency\n").is_err());
    assert!(Case::parse(metrics, "{}").is_err());
}

fn data_dir() -> Option<PathBuf> {
    let dir = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/data/petshop"
    ))
    .to_path_buf();
    if dir.join("README.md").exists() {
        return Some(dir);
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!(
            "the PetShop data is missing at {} (CI=true): fetch it or fix the path",
            dir.display()
        );
    }
    eprintln!("skipped: PetShop data not found at {}", dir.display());
    None
}

const SCENARIOS: [&str; 4] = [
    "low_traffic",
    "high_traffic",
    "temporal_traffic1",
    "temporal_traffic2",
];

fn load(dir: &Path, split: &str) -> Vec<Scenario> {
    let read =
        |p: PathBuf| std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    SCENARIOS
        .iter()
        .map(|name| {
            let sd = dir.join(name);
            let graph = Graph::parse(&read(sd.join("graph.csv"))).unwrap();
            let mut ids: Vec<(usize, String)> = std::fs::read_dir(sd.join(split))
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter_map(|f| Some((f.strip_prefix("issue_")?.parse().ok()?, f)))
                .collect();
            ids.sort();
            let cases = ids
                .into_iter()
                .map(|(_, id)| {
                    let d = sd.join(split).join(&id);
                    Case::parse(&read(d.join("metrics.csv")), &read(d.join("target.json")))
                        .unwrap()
                        .with_id(&id)
                })
                .collect();
            let noissue = sd.join("noissue/metrics.csv");
            let noissue = noissue
                .exists()
                .then(|| petshop::parse_metrics(&read(noissue)).unwrap());
            Scenario {
                name: name.to_string(),
                graph,
                cases,
                noissue,
            }
        })
        .collect()
}

fn print_report(split: &str, r: &petshop::Report) {
    let f = |x: &petshop::Recall| {
        format!(
            "top-1 {:.3} ({}/{}), top-3 {:.3} ({}/{})",
            x.top1, x.top1_hits, x.cases, x.top3, x.top3_hits, x.cases
        )
    };
    eprintln!("PetShop {split} (data: Hardt et al. 2024, CC-BY-4.0):");
    eprintln!("  pooled: {}", f(&r.pooled));
    for (m, x) in &r.by_metric {
        eprintln!("  {m}: {}", f(x));
    }
    for (s, by) in &r.by_scenario_metric {
        for (m, x) in by {
            eprintln!("  {s} / {m}: {}", f(x));
        }
    }
    eprintln!("  detection at the threshold: {:.3}", r.detection);
    eprintln!(
        "  specificity: {:.3} ({}/{} windows)",
        r.specificity.value, r.specificity.quiet, r.specificity.windows
    );
    for (s, x) in &r.specificity_by_scenario {
        eprintln!("    {s}: {:.3} ({}/{})", x.value, x.quiet, x.windows);
    }
    for (m, x) in &r.specificity_by_metric {
        eprintln!(
            "    pseudo-target {m}: {:.3} ({}/{})",
            x.value, x.quiet, x.windows
        );
    }
    for p in &r.operating_points {
        eprintln!(
            "    threshold {:>4}: detection {:.3}, specificity {:.3}",
            p.threshold, p.detection, p.specificity
        );
    }
    for o in r.outcomes.iter().filter(|o| o.position != Some(0)) {
        eprintln!(
            "    miss {} {} {}: root cause {} at {:?}, top 3 {:?}",
            o.scenario, o.id, o.target_metric, o.root_cause, o.position, o.top3
        );
    }
}

#[test]
fn petshop_benchmark() {
    let Some(dir) = data_dir() else { return };
    let cfg = RcaConfig::default();

    let train = petshop::evaluate(&load(&dir, "train"), &cfg);
    print_report("train", &train);

    let scenarios = load(&dir, "test");
    let start = Instant::now();
    let report = petshop::evaluate(&scenarios, &cfg);
    let elapsed = start.elapsed();
    print_report("test", &report);
    let incidents: usize = scenarios.iter().map(|s| s.cases.len()).sum();
    let start = Instant::now();
    for s in &scenarios {
        for c in &s.cases {
            std::hint::black_box(rank(&s.graph.map, &c.series, &c.incident(), &cfg));
        }
    }
    let per = start.elapsed() / incidents as u32;
    eprintln!(
        "  {incidents} incidents, {per:?} per incident; evaluation with specificity {elapsed:?}"
    );

    let latency = report.metric("latency").expect("latency issues");
    let availability = report.metric("availability").expect("availability issues");
    assert_eq!(latency.cases, 26);
    assert_eq!(availability.cases, 22);
    // Floors a little under the figures measured with the default config (one miss fewer
    // than measured each): latency 26/26 top-1 and top-3, availability 19/22 top-1 and
    // 22/22 top-3, specificity 989/2340 = 0.423; train 20/20.
    let floor = |name: &str, got: f64, min: f64| assert!(got >= min, "{name}: {got:.3} < {min}");
    floor("train top-1", train.pooled.top1, 0.95);
    floor("latency top-1", latency.top1, 0.95);
    floor("latency top-3", latency.top3, 0.95);
    floor("availability top-1", availability.top1, 0.80);
    floor("availability top-3", availability.top3, 0.95);
    floor("pooled top-1", report.pooled.top1, 0.90);
    floor("specificity", report.specificity.value, 0.40);
    assert!(per.as_millis() < 100, "{per:?} per incident");
}
