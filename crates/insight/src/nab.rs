//! NAB scoring: the Numenta Anomaly Benchmark's windows, probation, scaled-sigmoid
//! weighting, cost profiles and normalisation, so Steadfast's detectors are compared on
//! the published terms.
//!
//! The rules, as NAB applies them to one file (`nab/scorer.py`, the scorer that produced
//! NAB's published results; `nab/sweeper.py` computes the same scores):
//!
//! - The first [`probation_rows`] rows (15% of the file, at most 750) are not scored.
//! - A detection is a row whose anomaly score is at least the threshold ([`detections`]).
//! - Each labelled window (the rows whose timestamps lie in `[start, end]`) scores once:
//!   its first detection outside probation earns `A_TP * σ(p) / σ(-1)`, where `σ` is
//!   [`scaled_sigmoid`] and `p = -(last - i + 1) / len` the detection's relative position
//!   (-1 at the window's first row, 0 just after its last); a window without such a
//!   detection costs `A_FN`. Later detections in a window add nothing.
//! - A detection outside every window costs `A_FP * σ(|last - i| / (len - 1))` measured
//!   from the closest preceding window (so one just after a window costs little, one far
//!   after costs the full `A_FP`), or the full `A_FP` when no window precedes it.
//! - `A_TN` is read but, as in NAB, weighs nothing.
//!
//! A corpus's raw score is the sum over its files; it is normalised as
//! `100 * (S - S_null) / (S_perfect - S_null)` with the null detector (no detection:
//! `-A_FN` per window) and the perfect detector (`A_TP` per window), both summed over the
//! same files ([`normalise`]).
//!
//! Nothing here reads a file: texts and slices are inputs. [`Corpus`] is the driver for a
//! benchmark: built once from the data files' texts, the windows and the profiles, it
//! scores per-file anomaly scores at a threshold or at the best threshold per profile.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use chrono::{DateTime, NaiveDateTime};
use serde::{Deserialize, Serialize};

/// Fraction of a file's rows in the probationary period.
pub const PROBATION_FRACTION: f64 = 0.15;
/// Most rows in a probationary period (NAB: 15% of 5000).
pub const PROBATION_ROWS_MAX: usize = 750;
/// How NAB writes timestamps in its data and results files.
pub const TIMESTAMP_FORMAT: &str = "%Y-%m-%d %H:%M:%S";

/// Bad input: which file (or JSON document) and, for CSV, which line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NabError {
    #[error("{what}: {message}")]
    Json { what: &'static str, message: String },
    #[error("profile {name:?}: {message}")]
    Profile { name: String, message: String },
    #[error("windows of {file}: window {index}: {message}")]
    Window {
        file: String,
        index: usize,
        message: String,
    },
    #[error("{file}: line {line}: {message}")]
    Csv {
        file: String,
        line: usize,
        message: String,
    },
    #[error("{file}: no entry in the windows JSON")]
    NoWindows { file: String },
    #[error("{got} score series for a corpus of {expected} files")]
    FileCount { expected: usize, got: usize },
    #[error("{file}: {got} anomaly scores for {expected} rows")]
    RowCount {
        file: String,
        expected: usize,
        got: usize,
    },
}

/// A cost profile (NAB's `CostMatrix`): the weight of a true positive, a false positive,
/// a true negative (unused by NAB's score) and a false negative.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Profile {
    pub a_tp: f64,
    pub a_fp: f64,
    pub a_tn: f64,
    pub a_fn: f64,
}

/// A labelled anomaly window, inclusive at both ends, in epoch seconds (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Window {
    pub start: i64,
    pub end: i64,
}

/// A data file: its timestamps (epoch seconds, UTC) and values, row by row.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Series {
    pub timestamps: Vec<i64>,
    pub values: Vec<f64>,
}

/// Per-row counts outside probation, as NAB's results files report them: a row inside a
/// window is a TP when detected and an FN otherwise; a row outside is an FP or a TN.
/// `total` is every row of the file, probation included (NAB's `Total_Count`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub tp: usize,
    pub tn: usize,
    pub fp: usize,
    pub fn_: usize,
    pub total: usize,
}

/// One file's score under one profile.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FileScore {
    /// The file's raw NAB score (NAB's `Score` column).
    pub raw: f64,
    pub counts: Counts,
    /// Each row's contribution, as NAB's `S(t)_<profile>` column: a window's score (its
    /// TP reward or `-A_FN`) on the window's first row, each false positive's cost on its
    /// row, 0 elsewhere. They sum to `raw` (less windows that match no row).
    pub rewards: Vec<f64>,
}

/// [`scaled_sigmoid`] at a window's first row: the largest unweighted TP reward.
fn max_tp() -> f64 {
    scaled_sigmoid(-1.0)
}

/// NAB's scaled sigmoid `2 / (1 + exp(5x)) - 1`, and -1 past `x = 3`: 0.98661 at -1
/// (a window's first row), 0 at 0 (just after its last row), -0.98661 at 1.
pub fn scaled_sigmoid(position: f64) -> f64 {
    if position > 3.0 {
        -1.0
    } else {
        2.0 / (1.0 + (5.0 * position).exp()) - 1.0
    }
}

/// Rows at the start of a file that are not scored: `min(floor(0.15 n), 750)`.
pub fn probation_rows(rows: usize) -> usize {
    ((PROBATION_FRACTION * rows as f64).floor() as usize).min(PROBATION_ROWS_MAX)
}

/// Epoch seconds (UTC) of a NAB timestamp, `2014-04-10 07:15:00` with an optional
/// fraction (`.000000`, as in the windows file; truncated to the second).
pub fn parse_timestamp(text: &str) -> Option<i64> {
    NaiveDateTime::parse_from_str(text.trim(), "%Y-%m-%d %H:%M:%S%.f")
        .ok()
        .map(|t| t.and_utc().timestamp())
}

/// A timestamp as NAB writes it (`%Y-%m-%d %H:%M:%S`, UTC).
pub fn format_timestamp(secs: i64) -> String {
    match DateTime::from_timestamp(secs, 0) {
        Some(t) => t.format(TIMESTAMP_FORMAT).to_string(),
        None => secs.to_string(),
    }
}

#[derive(Deserialize)]
struct ProfileJson {
    #[serde(rename = "CostMatrix")]
    cost_matrix: CostMatrixJson,
}

#[derive(Deserialize)]
struct CostMatrixJson {
    #[serde(rename = "tpWeight")]
    tp: f64,
    #[serde(rename = "fpWeight")]
    fp: f64,
    #[serde(rename = "tnWeight")]
    tn: f64,
    #[serde(rename = "fnWeight")]
    fn_: f64,
}

/// NAB's `config/profiles.json`: profile name to its cost matrix.
pub fn parse_profiles(json: &str) -> Result<BTreeMap<String, Profile>, NabError> {
    let raw: BTreeMap<String, ProfileJson> =
        serde_json::from_str(json).map_err(|e| NabError::Json {
            what: "profiles JSON",
            message: e.to_string(),
        })?;
    if raw.is_empty() {
        return Err(NabError::Json {
            what: "profiles JSON",
            message: "no profile".into(),
        });
    }
    raw.into_iter()
        .map(|(name, p)| {
            let c = p.cost_matrix;
            let weights = [c.tp, c.fp, c.tn, c.fn_];
            if weights.iter().any(|w| !w.is_finite() || *w < 0.0) {
                return Err(NabError::Profile {
                    name,
                    message: "weights must be finite and not negative".into(),
                });
            }
            let profile = Profile {
                a_tp: c.tp,
                a_fp: c.fp,
                a_tn: c.tn,
                a_fn: c.fn_,
            };
            Ok((name, profile))
        })
        .collect()
}

/// NAB's `labels/combined_windows.json`: a data file's relative path (such as
/// `realKnownCause/nyc_taxi.csv`) to its windows, which must be in time order and must
/// not overlap.
pub fn parse_windows(json: &str) -> Result<BTreeMap<String, Vec<Window>>, NabError> {
    let raw: BTreeMap<String, Vec<(String, String)>> =
        serde_json::from_str(json).map_err(|e| NabError::Json {
            what: "windows JSON",
            message: e.to_string(),
        })?;
    raw.into_iter()
        .map(|(file, limits)| {
            let windows = file_windows(&file, &limits)?;
            Ok((file, windows))
        })
        .collect()
}

fn file_windows(file: &str, limits: &[(String, String)]) -> Result<Vec<Window>, NabError> {
    let mut windows: Vec<Window> = Vec::with_capacity(limits.len());
    for (index, (start, end)) in limits.iter().enumerate() {
        let bad = |message: String| NabError::Window {
            file: file.into(),
            index,
            message,
        };
        let start = parse_timestamp(start).ok_or_else(|| bad(format!("bad start {start:?}")))?;
        let end = parse_timestamp(end).ok_or_else(|| bad(format!("bad end {end:?}")))?;
        if end < start {
            return Err(bad("ends before it starts".into()));
        }
        if windows.last().is_some_and(|prev| start <= prev.end) {
            return Err(bad("starts before the previous window ends".into()));
        }
        windows.push(Window { start, end });
    }
    Ok(windows)
}

/// A NAB data file (`timestamp,value` header, then one row per line). `file` names the
/// file in errors.
pub fn parse_series(file: &str, csv: &str) -> Result<Series, NabError> {
    let bad = |line: usize, message: String| NabError::Csv {
        file: file.into(),
        line,
        message,
    };
    let mut lines = csv.lines().enumerate();
    match lines.next() {
        Some((_, header)) if header.trim() == "timestamp,value" => {}
        Some((_, header)) => {
            return Err(bad(
                1,
                format!("expected header timestamp,value, got {header:?}"),
            ))
        }
        None => return Err(bad(1, "empty file".into())),
    }
    let mut series = Series::default();
    for (i, line) in lines {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let (timestamp, value) = line
            .split_once(',')
            .ok_or_else(|| bad(i + 1, format!("expected timestamp,value, got {line:?}")))?;
        let timestamp = parse_timestamp(timestamp)
            .ok_or_else(|| bad(i + 1, format!("bad timestamp {timestamp:?}")))?;
        let value: f64 = value
            .trim()
            .parse()
            .map_err(|_| bad(i + 1, format!("bad value {value:?}")))?;
        series.timestamps.push(timestamp);
        series.values.push(value);
    }
    Ok(series)
}

/// Rows whose anomaly score is at least `threshold` (NaN never is).
pub fn detections(scores: &[f64], threshold: f64) -> Vec<bool> {
    scores.iter().map(|s| *s >= threshold).collect()
}

/// Rows inside a window (NAB's `label` column).
pub fn labels(timestamps: &[i64], windows: &[Window]) -> Vec<bool> {
    timestamps
        .iter()
        .map(|t| windows.iter().any(|w| w.start <= *t && *t <= w.end))
        .collect()
}

/// The null detector's raw score on a file: every window missed.
pub fn null_score(windows: &[Window], profile: &Profile) -> f64 {
    -profile.a_fn * windows.len() as f64
}

/// The perfect detector's raw score on a file, as NAB normalises: `A_TP` per window.
pub fn perfect_score(windows: &[Window], profile: &Profile) -> f64 {
    profile.a_tp * windows.len() as f64
}

/// `100 * (raw - null) / (perfect - null)`, all summed over the same files; 0 when the
/// files have no window (nothing to find, so no range to normalise on).
pub fn normalise(raw: f64, null: f64, perfect: f64) -> f64 {
    if perfect == null {
        0.0
    } else {
        100.0 * (raw - null) / (perfect - null)
    }
}

/// Scores one file: its timestamps, whether each row is a detection, its windows and a
/// profile. `detections` shorter than `timestamps` counts the missing rows as not
/// detected.
pub fn score_file(
    timestamps: &[i64],
    detections: &[bool],
    windows: &[Window],
    profile: &Profile,
) -> FileScore {
    Layout::new(timestamps, windows).score(detections, profile)
}

/// A NAB results file: `timestamp,value,anomaly_score,label`, label 1 inside a window.
/// Rows past the end of `scores` are written with score 0.
pub fn results_csv(series: &Series, scores: &[f64], windows: &[Window]) -> String {
    let labels = labels(&series.timestamps, windows);
    let mut out = String::from("timestamp,value,anomaly_score,label\n");
    for (i, (t, v)) in series.timestamps.iter().zip(&series.values).enumerate() {
        let score = scores.get(i).copied().unwrap_or(0.0);
        let label = u8::from(labels[i]);
        let _ = writeln!(out, "{},{v},{score},{label}", format_timestamp(*t));
    }
    out
}

/// The rows a window covers: the first and last, and how many.
#[derive(Debug, Clone, Copy)]
struct Span {
    first: usize,
    last: usize,
    len: usize,
}

/// Where a row lies: in a window, or outside after a preceding window (if any).
#[derive(Debug, Clone, Copy)]
enum Place {
    Inside(usize),
    Outside(Option<usize>),
}

/// A file's rows against its windows: what scoring needs, independent of the detections
/// and of the profile.
#[derive(Debug, Clone)]
struct Layout {
    probation: usize,
    /// Per window; `None` when no row falls in it (always missed).
    spans: Vec<Option<Span>>,
    places: Vec<Place>,
}

impl Layout {
    fn new(timestamps: &[i64], windows: &[Window]) -> Self {
        let mut spans: Vec<Option<Span>> = vec![None; windows.len()];
        let mut places = Vec::with_capacity(timestamps.len());
        for (i, t) in timestamps.iter().enumerate() {
            let inside = windows.iter().position(|w| w.start <= *t && *t <= w.end);
            if let Some(w) = inside {
                let span = spans[w].get_or_insert(Span {
                    first: i,
                    last: i,
                    len: 0,
                });
                span.last = i;
                span.len += 1;
            }
            places.push(inside);
        }
        let places = places
            .into_iter()
            .enumerate()
            .map(|(i, inside)| match inside {
                Some(w) => Place::Inside(w),
                None => Place::Outside(preceding(&spans, i)),
            })
            .collect();
        Layout {
            probation: probation_rows(timestamps.len()),
            spans,
            places,
        }
    }

    /// Unweighted reward of a detection at row `i` in window `w` (1 at its first row).
    fn tp_reward(&self, w: usize, i: usize) -> f64 {
        let span = self.spans[w].expect("a row inside a window makes its span");
        let position = -((span.last - i + 1) as f64) / span.len as f64;
        scaled_sigmoid(position) / max_tp()
    }

    /// Unweighted cost (negative) of a false positive at row `i`.
    fn fp_reward(&self, after: Option<usize>, i: usize) -> f64 {
        let Some(span) = after.and_then(|w| self.spans[w]) else {
            return -1.0;
        };
        if span.len <= 1 {
            return -1.0; // NAB divides by zero here; the limit is the far case
        }
        scaled_sigmoid(span.last.abs_diff(i) as f64 / (span.len - 1) as f64)
    }

    /// Unweighted reward of a detection at row `i` (probation rows earn nothing).
    fn event(&self, i: usize) -> Option<Event> {
        if i < self.probation {
            return None;
        }
        Some(match self.places[i] {
            Place::Inside(w) => Event::Tp {
                window: w,
                reward: self.tp_reward(w, i),
            },
            Place::Outside(after) => Event::Fp {
                reward: self.fp_reward(after, i),
            },
        })
    }

    fn score(&self, detections: &[bool], profile: &Profile) -> FileScore {
        let rows = self.places.len();
        let mut rewards = vec![0.0; rows];
        let mut counts = Counts {
            total: rows,
            ..Counts::default()
        };
        let mut first_tp: Vec<Option<usize>> = vec![None; self.spans.len()];
        let mut fp_score = 0.0;
        for (i, place) in self.places.iter().enumerate().skip(self.probation) {
            let detected = detections.get(i).copied().unwrap_or(false);
            match (*place, detected) {
                (Place::Inside(w), true) => {
                    counts.tp += 1;
                    first_tp[w].get_or_insert(i);
                }
                (Place::Inside(_), false) => counts.fn_ += 1,
                (Place::Outside(after), true) => {
                    counts.fp += 1;
                    let cost = self.fp_reward(after, i) * profile.a_fp;
                    rewards[i] = cost;
                    fp_score += cost;
                }
                (Place::Outside(_), false) => counts.tn += 1,
            }
        }
        let (mut tp_score, mut fn_score) = (0.0, 0.0);
        for (w, span) in self.spans.iter().enumerate() {
            let reward = match first_tp[w] {
                Some(i) => {
                    let reward = self.tp_reward(w, i) * profile.a_tp;
                    tp_score += reward;
                    reward
                }
                None => {
                    fn_score -= profile.a_fn;
                    -profile.a_fn
                }
            };
            if let Some(span) = span {
                rewards[span.first] = reward;
            }
        }
        FileScore {
            raw: tp_score + fp_score + fn_score,
            counts,
            rewards,
        }
    }
}

/// The closest window ending before row `i`.
fn preceding(spans: &[Option<Span>], i: usize) -> Option<usize> {
    spans
        .iter()
        .enumerate()
        .filter_map(|(w, s)| s.filter(|s| s.last < i).map(|s| (w, s.last)))
        .max_by_key(|(_, last)| *last)
        .map(|(w, _)| w)
}

/// What a detection at a row would earn, unweighted.
#[derive(Debug, Clone, Copy)]
enum Event {
    Tp { window: usize, reward: f64 },
    Fp { reward: f64 },
}

/// One data file of a [`Corpus`].
#[derive(Debug, Clone)]
pub struct CorpusFile {
    /// Relative path, as in the windows JSON (`realKnownCause/nyc_taxi.csv`).
    pub path: String,
    pub series: Series,
    pub windows: Vec<Window>,
    layout: Layout,
}

/// One profile's score of a detector over a corpus.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProfileScore {
    /// The threshold used; `f64::INFINITY` when no detection at all scores best.
    pub threshold: f64,
    /// `100 * (raw - null) / (perfect - null)`.
    pub normalised: f64,
    /// Sum of the files' raw scores.
    pub raw: f64,
    pub null: f64,
    pub perfect: f64,
    /// Per file, in corpus order.
    pub files: Vec<FileScore>,
}

/// A detector's scores over a corpus, per profile name.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CorpusScore {
    pub profiles: BTreeMap<String, ProfileScore>,
}

/// The benchmark's data: files, their windows and the cost profiles.
#[derive(Debug, Clone)]
pub struct Corpus {
    files: Vec<CorpusFile>,
    profiles: BTreeMap<String, Profile>,
}

impl Corpus {
    /// Builds a corpus from `(relative path, CSV text)` pairs (in the order scores will be
    /// given), NAB's windows JSON (which may list more files) and its profiles JSON.
    pub fn new<P: AsRef<str>, T: AsRef<str>>(
        files: impl IntoIterator<Item = (P, T)>,
        windows_json: &str,
        profiles_json: &str,
    ) -> Result<Self, NabError> {
        let mut windows = parse_windows(windows_json)?;
        let profiles = parse_profiles(profiles_json)?;
        let files = files
            .into_iter()
            .map(|(path, text)| {
                let path = path.as_ref().to_string();
                let series = parse_series(&path, text.as_ref())?;
                let windows = windows
                    .remove(&path)
                    .ok_or_else(|| NabError::NoWindows { file: path.clone() })?;
                let layout = Layout::new(&series.timestamps, &windows);
                Ok(CorpusFile {
                    path,
                    series,
                    windows,
                    layout,
                })
            })
            .collect::<Result<_, NabError>>()?;
        Ok(Corpus { files, profiles })
    }

    pub fn files(&self) -> &[CorpusFile] {
        &self.files
    }

    pub fn profiles(&self) -> &BTreeMap<String, Profile> {
        &self.profiles
    }

    /// The null detector's raw score summed over the corpus.
    pub fn null_score(&self, profile: &Profile) -> f64 {
        self.files
            .iter()
            .map(|f| null_score(&f.windows, profile))
            .sum()
    }

    /// The perfect detector's raw score summed over the corpus.
    pub fn perfect_score(&self, profile: &Profile) -> f64 {
        self.files
            .iter()
            .map(|f| perfect_score(&f.windows, profile))
            .sum()
    }

    /// Scores per-file anomaly scores (one series per file, one score per row) at one
    /// threshold, under every profile.
    pub fn score(&self, scores: &[Vec<f64>], threshold: f64) -> Result<CorpusScore, NabError> {
        self.check(scores)?;
        let profiles = self
            .profiles
            .iter()
            .map(|(name, p)| (name.clone(), self.score_profile(scores, p, threshold)))
            .collect();
        Ok(CorpusScore { profiles })
    }

    /// Scores per-file anomaly scores at each profile's best threshold.
    ///
    /// NAB's optimiser hill-climbs on the threshold; this sweeps instead, exactly: the raw
    /// score only changes at the rows' distinct anomaly scores, so it evaluates every one
    /// of them (and "no detection"), lowering the threshold one distinct score at a time
    /// and updating the sum incrementally, and keeps the best (the highest threshold among
    /// equals). Its result is therefore at least as good as any threshold NAB's optimiser
    /// can find. Cost: one sort of the scored rows per profile.
    pub fn best_threshold(&self, scores: &[Vec<f64>]) -> Result<CorpusScore, NabError> {
        self.check(scores)?;
        let events = self.events(scores);
        let windows = self.files.iter().map(|f| f.windows.len()).sum();
        let profiles = self
            .profiles
            .iter()
            .map(|(name, p)| {
                let threshold = sweep(&events, windows, p);
                (name.clone(), self.score_profile(scores, p, threshold))
            })
            .collect();
        Ok(CorpusScore { profiles })
    }

    /// File `file`'s NAB results CSV for its anomaly scores (see [`results_csv`]).
    pub fn results_csv(&self, file: usize, scores: &[f64]) -> String {
        let f = &self.files[file];
        results_csv(&f.series, scores, &f.windows)
    }

    fn check(&self, scores: &[Vec<f64>]) -> Result<(), NabError> {
        if scores.len() != self.files.len() {
            return Err(NabError::FileCount {
                expected: self.files.len(),
                got: scores.len(),
            });
        }
        for (f, s) in self.files.iter().zip(scores) {
            if s.len() != f.series.timestamps.len() {
                return Err(NabError::RowCount {
                    file: f.path.clone(),
                    expected: f.series.timestamps.len(),
                    got: s.len(),
                });
            }
        }
        Ok(())
    }

    fn score_profile(
        &self,
        scores: &[Vec<f64>],
        profile: &Profile,
        threshold: f64,
    ) -> ProfileScore {
        let files: Vec<FileScore> = self
            .files
            .iter()
            .zip(scores)
            .map(|(f, s)| f.layout.score(&detections(s, threshold), profile))
            .collect();
        let raw = files.iter().map(|f| f.raw).sum();
        let null = self.null_score(profile);
        let perfect = self.perfect_score(profile);
        ProfileScore {
            threshold,
            normalised: normalise(raw, null, perfect),
            raw,
            null,
            perfect,
            files,
        }
    }

    /// Every scored row of the corpus as (anomaly score, event), windows numbered across
    /// the corpus, highest score first; NaN scores never detect and are left out.
    fn events(&self, scores: &[Vec<f64>]) -> Vec<(f64, Event)> {
        let mut events = Vec::new();
        let mut offset = 0;
        for (f, s) in self.files.iter().zip(scores) {
            for (i, score) in s.iter().enumerate() {
                let Some(event) = f.layout.event(i) else {
                    continue;
                };
                if score.is_nan() {
                    continue;
                }
                let event = match event {
                    Event::Tp { window, reward } => Event::Tp {
                        window: window + offset,
                        reward,
                    },
                    fp => fp,
                };
                events.push((*score, event));
            }
            offset += f.windows.len();
        }
        events.sort_by(|a, b| b.0.total_cmp(&a.0));
        events
    }
}

/// The threshold with the best raw score over `events` (sorted by score, highest first)
/// for a corpus of `windows` windows.
fn sweep(events: &[(f64, Event)], windows: usize, profile: &Profile) -> f64 {
    let mut best_in_window: Vec<Option<f64>> = vec![None; windows];
    let mut raw = -profile.a_fn * windows as f64;
    let (mut best, mut best_raw) = (f64::INFINITY, raw);
    let mut i = 0;
    while i < events.len() {
        let threshold = events[i].0;
        while i < events.len() && events[i].0 == threshold {
            match events[i].1 {
                Event::Tp { window, reward } => {
                    let reward = reward * profile.a_tp;
                    let old = best_in_window[window].unwrap_or(-profile.a_fn);
                    if reward > old {
                        raw += reward - old;
                        best_in_window[window] = Some(reward);
                    }
                }
                Event::Fp { reward } => raw += reward * profile.a_fp,
            }
            i += 1;
        }
        if raw > best_raw {
            (best, best_raw) = (threshold, raw);
        }
    }
    best
}
