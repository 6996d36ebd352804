//! Baselines and root-cause analysis on public benchmarks, and their speed.
//!
//! - `nab DIR`: Steadfast's detector on a folder with NAB's layout (`data/`,
//!   `labels/combined_windows.json`, `config/profiles.json`), scored by the project's NAB
//!   scorer at the detector's own threshold (fixed in advance: `score_on` = 0.5, a tail
//!   probability of 1e-5), at the best threshold, and with each stage removed; next to the
//!   published detectors' scores on the same files when `results/` holds them. Per-file
//!   results are written in NAB's format.
//! - `petshop DIR`: root-cause ranking on the PetShop dataset's test split (data: Hardt
//!   et al. 2024, CC-BY-4.0): top-1 and top-3 recall per target metric and per scenario,
//!   and specificity on the issue-free periods.
//! - `insight-speed`: baseline updates per second on one core, and one incident's
//!   root-cause analysis over 50 services.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::Serialize;
use steadfast_insight::baseline::{Detector, DetectorConfig, Stages};
use steadfast_insight::nab::{self, Corpus};
use steadfast_insight::rca::{self, petshop};

#[derive(clap::Args, Debug)]
pub struct NabArgs {
    /// A folder with NAB's layout.
    data: PathBuf,
    /// Where the NAB-format per-file results go [default: target/bench-results/nab-results].
    #[arg(long, value_name = "DIR")]
    results: Option<PathBuf>,
}

#[derive(Serialize)]
pub struct NabReport {
    files: usize,
    rows: usize,
    threshold: f64,
    /// Normalised score per profile at the fixed threshold.
    fixed: BTreeMap<String, f64>,
    /// Normalised score per profile at the best threshold, and that threshold.
    best: BTreeMap<String, (f64, Option<f64>)>,
    /// Normalised scores at the fixed threshold with one stage removed.
    ablation: BTreeMap<String, BTreeMap<String, f64>>,
    /// The published detectors' normalised scores on the same files (their thresholds
    /// were tuned on the data).
    published: BTreeMap<String, BTreeMap<String, f64>>,
    points_per_sec: f64,
}

const PROFILES: [&str; 3] = ["standard", "reward_low_FP_rate", "reward_low_FN_rate"];

fn data_files(dir: &Path) -> Result<Vec<(String, String)>> {
    let mut out = vec![];
    let data = dir.join("data");
    let mut categories: Vec<PathBuf> = fs::read_dir(&data)
        .with_context(|| format!("reading {}", data.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    categories.sort();
    for category in categories {
        let mut files: Vec<PathBuf> = fs::read_dir(&category)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "csv"))
            .collect();
        files.sort();
        for file in files {
            let rel = file
                .strip_prefix(&data)?
                .to_string_lossy()
                .replace('\\', "/");
            let text =
                fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
            out.push((rel, text));
        }
    }
    if out.is_empty() {
        bail!("{} holds no data/<category>/<file>.csv", dir.display());
    }
    Ok(out)
}

/// The detector's NAB score column for one file.
fn detect(series: &nab::Series, stages: Stages) -> Result<Vec<f64>> {
    let mut detector = Detector::new(DetectorConfig {
        stages,
        ..DetectorConfig::default()
    })?;
    Ok(series
        .timestamps
        .iter()
        .zip(&series.values)
        .map(|(&t, &v)| detector.update(t * 1000, v).detection_score(stages))
        .collect())
}

fn normalised(score: &nab::CorpusScore) -> BTreeMap<String, f64> {
    score
        .profiles
        .iter()
        .map(|(p, s)| (p.clone(), s.normalised))
        .collect()
}

/// Published per-file raw scores normalised over the corpus' files.
fn published(dir: &Path, corpus: &Corpus) -> Result<BTreeMap<String, BTreeMap<String, f64>>> {
    let mut out = BTreeMap::new();
    let results = dir.join("results");
    let Ok(entries) = fs::read_dir(&results) else {
        return Ok(out);
    };
    let wanted: std::collections::HashSet<&str> =
        corpus.files().iter().map(|f| f.path.as_str()).collect();
    let mut detectors: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    detectors.sort();
    for detector in detectors {
        let mut per_profile = BTreeMap::new();
        for profile in PROFILES {
            let path = results
                .join(&detector)
                .join(format!("{detector}_{profile}_scores.csv"));
            let Ok(text) = fs::read_to_string(&path) else {
                continue;
            };
            let Some(p) = corpus.profiles().get(profile) else {
                continue;
            };
            let mut reader = csv::Reader::from_reader(text.as_bytes());
            let (mut raw, mut seen) = (0.0, 0usize);
            for row in reader.records() {
                let row = row.with_context(|| format!("reading {}", path.display()))?;
                let (Some(file), Some(score)) = (row.get(2), row.get(4)) else {
                    continue;
                };
                if wanted.contains(file) {
                    raw += score.parse::<f64>().unwrap_or(0.0);
                    seen += 1;
                }
            }
            // A detector scored on an older corpus misses files: not comparable.
            if seen == wanted.len() {
                per_profile.insert(
                    profile.to_string(),
                    nab::normalise(raw, corpus.null_score(p), corpus.perfect_score(p)),
                );
            }
        }
        if !per_profile.is_empty() {
            out.insert(detector, per_profile);
        }
    }
    Ok(out)
}

pub fn nab(args: &NabArgs) -> Result<NabReport> {
    let dir = &args.data;
    let windows = fs::read_to_string(dir.join("labels/combined_windows.json"))
        .with_context(|| format!("{} has no labels/combined_windows.json", dir.display()))?;
    let profiles = fs::read_to_string(dir.join("config/profiles.json"))
        .with_context(|| format!("{} has no config/profiles.json", dir.display()))?;
    let files = data_files(dir)?;
    let corpus = Corpus::new(files, &windows, &profiles)?;
    let rows: usize = corpus.files().iter().map(|f| f.series.values.len()).sum();
    let threshold = DetectorConfig::default().score_on;

    let started = Instant::now();
    let full: Vec<Vec<f64>> = corpus
        .files()
        .iter()
        .map(|f| detect(&f.series, Stages::default()))
        .collect::<Result<_>>()?;
    let points_per_sec = rows as f64 / started.elapsed().as_secs_f64();
    let fixed = corpus.score(&full, threshold)?;
    let best = corpus.best_threshold(&full)?;

    let mut ablation = BTreeMap::new();
    let off = [
        (
            "seasonality",
            Stages {
                seasonality: false,
                ..Stages::default()
            },
        ),
        (
            "likelihood",
            Stages {
                likelihood: false,
                ..Stages::default()
            },
        ),
        (
            "hysteresis",
            Stages {
                hysteresis: false,
                ..Stages::default()
            },
        ),
        (
            "change_points",
            Stages {
                change_points: false,
                ..Stages::default()
            },
        ),
    ];
    for (name, stages) in off {
        let scores: Vec<Vec<f64>> = corpus
            .files()
            .iter()
            .map(|f| detect(&f.series, stages))
            .collect::<Result<_>>()?;
        ablation.insert(
            name.to_string(),
            normalised(&corpus.score(&scores, threshold)?),
        );
    }

    let results_dir = args
        .results
        .clone()
        .unwrap_or_else(|| Path::new("target/bench-results/nab-results").to_path_buf());
    for (i, f) in corpus.files().iter().enumerate() {
        let (category, name) = f.path.rsplit_once('/').unwrap_or(("", &f.path));
        let out = results_dir
            .join("steadfast")
            .join(category)
            .join(format!("steadfast_{name}"));
        if let Some(parent) = out.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::write(&out, corpus.results_csv(i, &full[i]))
            .with_context(|| format!("writing {}", out.display()))?;
    }

    Ok(NabReport {
        files: corpus.files().len(),
        rows,
        threshold,
        fixed: normalised(&fixed),
        best: best
            .profiles
            .iter()
            .map(|(p, s)| {
                (
                    p.clone(),
                    (s.normalised, Some(s.threshold).filter(|t| t.is_finite())),
                )
            })
            .collect(),
        ablation,
        published: published(dir, &corpus)?,
        points_per_sec,
    })
}

impl NabReport {
    pub fn table(&self) -> String {
        let mut out = format!(
            "NAB: {} files, {} rows; Steadfast's detector at its fixed threshold {}\n\n",
            self.files, self.rows, self.threshold
        );
        out += &format!(
            "{:<28} {:>10} {:>10} {:>10}\n",
            "detector", "standard", "low_FP", "low_FN"
        );
        let row = |name: &str, m: &BTreeMap<String, f64>| {
            let v = |p: &str| m.get(p).map_or("-".to_string(), |x| format!("{x:.2}"));
            format!(
                "{:<28} {:>10} {:>10} {:>10}\n",
                name,
                v(PROFILES[0]),
                v(PROFILES[1]),
                v(PROFILES[2])
            )
        };
        out += &row("steadfast (fixed threshold)", &self.fixed);
        let best: BTreeMap<String, f64> = self
            .best
            .iter()
            .map(|(p, (s, _))| (p.clone(), *s))
            .collect();
        out += &row("steadfast (best threshold)", &best);
        for (stage, m) in &self.ablation {
            out += &row(&format!("  without {stage}"), m);
        }
        out += "published (thresholds tuned on the data):\n";
        for (detector, m) in &self.published {
            out += &row(&format!("  {detector}"), m);
        }
        out += &format!(
            "\ndetector speed on these files: {:.0} points/s (one core)\n",
            self.points_per_sec
        );
        out
    }
}

#[derive(clap::Args, Debug)]
pub struct PetshopArgs {
    /// The PetShop dataset folder (scenario folders with graph.csv, train/, test/).
    data: PathBuf,
    /// The split to report (the ranker's constants were chosen on `train`).
    #[arg(long, default_value = "test")]
    split: String,
}

#[derive(Serialize)]
pub struct PetshopReport {
    split: String,
    report: petshop::Report,
    ms_per_incident: f64,
}

fn load_petshop(dir: &Path, split: &str) -> Result<Vec<petshop::Scenario>> {
    let read =
        |p: PathBuf| fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()));
    let mut names: Vec<String> = fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("graph.csv").exists())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    if names.is_empty() {
        bail!(
            "{} holds no scenario folder with a graph.csv",
            dir.display()
        );
    }
    let mut scenarios = vec![];
    for name in names {
        let sd = dir.join(&name);
        let graph = petshop::Graph::parse(&read(sd.join("graph.csv"))?)?;
        let mut ids: Vec<(usize, String)> = fs::read_dir(sd.join(split))
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter_map(|f| Some((f.strip_prefix("issue_")?.parse().ok()?, f)))
                    .collect()
            })
            .unwrap_or_default();
        ids.sort();
        let mut cases = vec![];
        for (_, id) in ids {
            let d = sd.join(split).join(&id);
            cases.push(
                petshop::Case::parse(&read(d.join("metrics.csv"))?, &read(d.join("target.json"))?)
                    .with_context(|| format!("reading {}", d.display()))?
                    .with_id(&id),
            );
        }
        let noissue = sd.join("noissue/metrics.csv");
        let noissue = if noissue.exists() {
            Some(petshop::parse_metrics(&read(noissue)?)?)
        } else {
            None
        };
        scenarios.push(petshop::Scenario {
            name,
            graph,
            cases,
            noissue,
        });
    }
    Ok(scenarios)
}

pub fn petshop(args: &PetshopArgs) -> Result<PetshopReport> {
    let scenarios = load_petshop(&args.data, &args.split)?;
    let cfg = rca::RcaConfig::default();
    let report = petshop::evaluate(&scenarios, &cfg);
    // Timing: every case ranked again, alone.
    let started = Instant::now();
    let mut n = 0;
    for s in &scenarios {
        for c in &s.cases {
            std::hint::black_box(rca::rank(&s.graph.map, &c.series, &c.incident(), &cfg));
            n += 1;
        }
    }
    let ms_per_incident = started.elapsed().as_secs_f64() * 1000.0 / n.max(1) as f64;
    Ok(PetshopReport {
        split: args.split.clone(),
        report,
        ms_per_incident,
    })
}

impl PetshopReport {
    pub fn table(&self) -> String {
        let r = &self.report;
        let f = |x: &petshop::Recall| {
            format!(
                "top-1 {:.3} ({}/{})  top-3 {:.3} ({}/{})",
                x.top1, x.top1_hits, x.cases, x.top3, x.top3_hits, x.cases
            )
        };
        let mut out = format!(
            "PetShop {} split (data: Hardt et al. 2024, CC-BY-4.0)\n  pooled: {}\n",
            self.split,
            f(&r.pooled)
        );
        for (m, x) in &r.by_metric {
            out += &format!("  {m}: {}\n", f(x));
        }
        for (s, per) in &r.by_scenario_metric {
            for (m, x) in per {
                out += &format!("  {s} / {m}: {}\n", f(x));
            }
        }
        out += &format!(
            "  specificity on issue-free windows: {:.3} ({}/{})\n",
            r.specificity.value, r.specificity.quiet, r.specificity.windows
        );
        for p in &r.operating_points {
            out += &format!(
                "    threshold {:>4}: detection {:.3}, specificity {:.3}\n",
                p.threshold, p.detection, p.specificity
            );
        }
        out += &format!("  {:.3} ms per incident\n", self.ms_per_incident);
        out
    }
}

#[derive(clap::Args, Debug)]
pub struct SpeedArgs {
    /// Points scored in the baseline benchmark.
    #[arg(long, default_value_t = 10_000_000)]
    points: usize,
    /// Series the points are spread over (each keeps its own detector).
    #[arg(long, default_value_t = 1_000)]
    series: usize,
}

#[derive(Serialize)]
pub struct SpeedReport {
    points: usize,
    series: usize,
    points_per_sec: f64,
    rca_services: usize,
    rca_series: usize,
    rca_ms: f64,
}

/// Deterministic noise in [-0.5, 0.5).
fn noise(i: u64) -> f64 {
    (xxhash_rust::xxh3::xxh3_64(&i.to_le_bytes()) >> 11) as f64 / (1u64 << 53) as f64 - 0.5
}

pub fn speed(args: &SpeedArgs) -> Result<SpeedReport> {
    let series = args.series.max(1);
    let per = args.points / series;
    let mut detectors: Vec<Detector> = (0..series)
        .map(|_| Detector::new(DetectorConfig::default()))
        .collect::<Result<_, _>>()?;
    // Daily seasonal 5-minute data, so every stage works (season found, offsets used).
    let value = |s: usize, i: usize| {
        let phase = (i % 288) as f64 / 288.0 * std::f64::consts::TAU;
        100.0 + 30.0 * phase.sin() + 5.0 * noise((s * per + i) as u64) + s as f64
    };
    let started = Instant::now();
    let mut anomalous = 0usize;
    // Interleaved as a server sees them: one point of every series per interval.
    for i in 0..per {
        for (s, d) in detectors.iter_mut().enumerate() {
            anomalous += d.update(i as i64 * 300_000, value(s, i)).anomalous as usize;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    std::hint::black_box(anomalous);

    // One incident over 50 services in a call tree, 4 metrics each, 60 points.
    let services = 50;
    let mut map = rca::ServiceMap::new();
    for s in 0..services {
        map.add_node(&format!("svc-{s}"), rca::NodeKind::Service);
    }
    for s in 1..services {
        map.add_call(&format!("svc-{}", (s - 1) / 3), &format!("svc-{s}"));
    }
    let mut all = vec![];
    for s in 0..services {
        for (k, kind) in [
            rca::MetricKind::Latency,
            rca::MetricKind::Errors,
            rca::MetricKind::Requests,
            rca::MetricKind::Latency,
        ]
        .into_iter()
        .enumerate()
        {
            let values = (0..60)
                .map(|i| {
                    let base = 100.0 + 5.0 * noise((s * 1000 + k * 100 + i) as u64);
                    // svc-40 (and so its callers) slows down at the incident.
                    let slow =
                        kind == rca::MetricKind::Latency && i >= 40 && [0, 13, 40].contains(&s);
                    Some(if slow { base * 3.0 } else { base })
                })
                .collect();
            all.push(rca::Series::new(
                &format!("svc-{s}"),
                kind,
                "p95",
                (0..60).map(|i| i * 60).collect(),
                values,
            ));
        }
    }
    let incident = rca::Incident {
        time: 40 * 60,
        target: Some(rca::Target {
            node: "svc-0".into(),
            kind: rca::MetricKind::Latency,
            statistic: None,
        }),
    };
    let cfg = rca::RcaConfig::default();
    let runs = 50;
    let started = Instant::now();
    let mut top = String::new();
    for _ in 0..runs {
        let ranking = rca::rank(&map, &all, &incident, &cfg);
        top = ranking
            .candidates
            .first()
            .map(|c| c.node.clone())
            .unwrap_or_default();
    }
    let rca_ms = started.elapsed().as_secs_f64() * 1000.0 / runs as f64;
    if top != "svc-40" {
        bail!(
            "the speed benchmark's incident ranked {top} first, not svc-40: the ranking is broken"
        );
    }
    Ok(SpeedReport {
        points: per * series,
        series,
        points_per_sec: (per * series) as f64 / elapsed,
        rca_services: services,
        rca_series: all.len(),
        rca_ms,
    })
}

impl SpeedReport {
    pub fn table(&self) -> String {
        format!(
            "baseline update and scoring: {:.2} M points/s on one core ({} points over {} series)\n\
             root-cause analysis: {:.2} ms per incident ({} services, {} series)\n",
            self.points_per_sec / 1e6,
            self.points,
            self.series,
            self.rca_ms,
            self.rca_services,
            self.rca_series
        )
    }
}
