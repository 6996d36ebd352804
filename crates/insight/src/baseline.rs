//! A streaming baseline and anomaly detector for one series.
//!
//! [`Detector::update`] takes one point (time in milliseconds, value) and returns a [`Point`]:
//! the expected value and band, the robust score, the anomaly score and whether the series
//! is anomalous now. The stages, each switchable for ablation ([`Stages`]):
//!
//! 1. **Seasonality.** The detector keeps a bounded history on a regular grid and looks
//!    for a period by autocorrelation: the calendar periods (a day, a week) are preferred
//!    when they are as strong as the strongest peak, so a compressed demo day is found too.
//!    The seasonal offset of a phase is the median of the last `season_cycles` values of
//!    that phase (value minus level), so one odd day does not bend the baseline.
//! 2. **Baseline.** Level = median of the last `level_points` deseasonalised values;
//!    expected = level + offset. Scale = interquartile range of the last `scale_points`
//!    residuals / 1.349 (a robust standard deviation), with a floor.
//! 3. **Score.** Robust z = residual / scale. For counts ([`SeriesKind::Count`], e.g.
//!    errors per minute) the series is first put through the Anscombe transform
//!    `2·sqrt(x + 3/8)`, under which Poisson counts have unit variance, and the scale is
//!    floored at 1: a jump from 0 to 2 errors is not an incident, one from 5 to 60 is.
//! 4. **Anomaly likelihood** (as in Numenta's detector): the moving average of the last
//!    `likelihood_avg_points` one-sided scores is compared with the distribution of that
//!    average over the last `likelihood_points` points; the tail probability is the
//!    anomaly likelihood. A series that is always noisy stops alerting on its noise; a
//!    quiet one alerts on a small departure. Without the stage the tail probability of the
//!    z-score itself is used. Either way the anomaly score is `log10(tail) / -10` in [0, 1],
//!    so 0.5 means a tail probability of 1e-5 in both cases.
//! 5. **Alerting.** The series turns anomalous after `min_duration_points` points at or
//!    above `score_on` and clears after `clear_points` points below `score_off`
//!    (hysteresis: a score wavering around one threshold does not flap).
//! 6. **Change points.** A two-sided CUSUM over clipped z-scores detects a level shift; the
//!    level is then rebuilt from the points since the shift began, so a new normal is
//!    learned in a few points instead of alerting for half a level window.
//!
//! **Cold start.** Until `warmup_points` points are seen the detector only learns (score 0,
//! never anomalous); with the likelihood stage, nothing turns anomalous until its
//! reference distribution holds 64 averages either. Until a period is found it is a local-level detector: the rolling
//! median follows the daily shape slowly and the residual scale, which then includes the
//! seasonal drift, is wider, so it alerts on large departures only. Once a period is
//! found, offsets of a phase are seeded from the history it was found in.
//!
//! Why not MSTL/STL from a crate: they decompose a whole series in a batch, and refitting
//! per point would not reach a million points a second. The rolling medians here are the
//! streaming equivalent of STL's robust seasonal smoothing, and they are exact and bounded.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// What the series counts, which decides how its noise is modelled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SeriesKind {
    /// A measurement (latency, throughput, round-trip time): noise from the data.
    #[default]
    Gauge,
    /// Events per interval (errors, breaks): at least Poisson noise.
    Count,
}

/// Which departures count.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Only values above the baseline (latency, errors).
    Up,
    /// Only values below it (throughput, success rate).
    Down,
    /// Both.
    #[default]
    Both,
}

/// The stages that can be switched off, for ablation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stages {
    pub seasonality: bool,
    pub likelihood: bool,
    pub hysteresis: bool,
    pub change_points: bool,
}

impl Default for Stages {
    fn default() -> Self {
        Stages {
            seasonality: true,
            likelihood: true,
            hysteresis: true,
            change_points: true,
        }
    }
}

/// The detector's settings. The defaults were chosen from the stages' meaning (a level
/// window of a few hours of 5-minute data, a day of residuals, Numenta's likelihood
/// windows, a CUSUM that needs about four points of a four-sigma shift), not tuned on any
/// benchmark.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DetectorConfig {
    pub kind: SeriesKind,
    pub direction: Direction,
    pub stages: Stages,
    /// Points before the detector scores at all.
    pub warmup_points: usize,
    /// Points in the rolling median that gives the level.
    pub level_points: usize,
    /// Residuals kept for the robust scale.
    pub scale_points: usize,
    /// Cycles of each phase kept for the seasonal offset.
    pub season_cycles: usize,
    /// Grid points kept for period detection (a bound on memory and on detection cost).
    pub history_points_max: usize,
    /// Autocorrelation a period must reach to count.
    pub season_acf_min: f64,
    /// Points whose averaged scores form the likelihood's reference distribution.
    pub likelihood_points: usize,
    /// Points in the short moving average the likelihood scores.
    pub likelihood_avg_points: usize,
    /// Anomaly score at which a point counts towards firing.
    pub score_on: f64,
    /// Anomaly score below which a point counts towards clearing.
    pub score_off: f64,
    /// Points at or above `score_on` before the series is anomalous.
    pub min_duration_points: usize,
    /// Points below `score_off` before an anomaly clears.
    pub clear_points: usize,
    /// CUSUM drift allowance, in z units.
    pub cusum_drift: f64,
    /// CUSUM decision limit, in z units.
    pub cusum_limit: f64,
    /// Points the departure must have lasted before it counts as a new level: a burst of
    /// a few points is an anomaly, not a new normal, and taking it for one would make the
    /// return to normal a second alert.
    pub cusum_confirm_points: usize,
    /// z-scores are clipped to this before entering the CUSUM, so one spike is no shift.
    pub cusum_clip: f64,
    /// The smallest scale, relative to the level's magnitude.
    pub scale_floor_relative: f64,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        DetectorConfig {
            kind: SeriesKind::Gauge,
            direction: Direction::Both,
            stages: Stages::default(),
            warmup_points: 32,
            level_points: 31,
            scale_points: 288,
            season_cycles: 4,
            history_points_max: 4096,
            season_acf_min: 0.3,
            likelihood_points: 2016,
            likelihood_avg_points: 10,
            score_on: 0.5,
            score_off: 0.3,
            min_duration_points: 2,
            clear_points: 3,
            cusum_drift: 1.0,
            cusum_limit: 12.0,
            cusum_confirm_points: 8,
            cusum_clip: 5.0,
            scale_floor_relative: 1e-3,
        }
    }
}

/// Why a configuration cannot be used.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    #[error("{field} must be at least {min}, got {got}")]
    TooSmall {
        field: &'static str,
        min: usize,
        got: usize,
    },
    #[error("{field} must be at most {max}, got {got}")]
    TooLarge {
        field: &'static str,
        max: usize,
        got: usize,
    },
    #[error("score_off ({off}) must be between 0 and score_on ({on}), and score_on at most 1")]
    Thresholds { on: f64, off: f64 },
}

/// The largest window any setting may ask for: every buffer of a detector is bounded by it.
pub const WINDOW_POINTS_MAX: usize = 1 << 16;

impl DetectorConfig {
    /// Checks the bounds every buffer relies on.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let windows = [
            ("level_points", self.level_points, 3),
            ("scale_points", self.scale_points, 8),
            ("season_cycles", self.season_cycles, 2),
            ("history_points_max", self.history_points_max, 64),
            ("likelihood_points", self.likelihood_points, 16),
            ("likelihood_avg_points", self.likelihood_avg_points, 1),
            ("min_duration_points", self.min_duration_points, 1),
            ("clear_points", self.clear_points, 1),
            ("cusum_confirm_points", self.cusum_confirm_points, 1),
        ];
        for (field, got, min) in windows {
            if got < min {
                return Err(ConfigError::TooSmall { field, min, got });
            }
            if got > WINDOW_POINTS_MAX {
                return Err(ConfigError::TooLarge {
                    field,
                    max: WINDOW_POINTS_MAX,
                    got,
                });
            }
        }
        let (on, off) = (self.score_on, self.score_off);
        if !(on > 0.0 && on <= 1.0 && off >= 0.0 && off <= on) {
            return Err(ConfigError::Thresholds { on, off });
        }
        Ok(())
    }
}

/// What the detector says about one point.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Point {
    /// The baseline's value for this point, in the series' units.
    pub expected: f64,
    /// The band of normal values (expected ± 3 robust standard deviations).
    pub lower: f64,
    pub upper: f64,
    /// Robust z-score (in the Anscombe domain for counts).
    pub z: f64,
    /// Anomaly score in [0, 1]: `log10(tail probability) / -10`.
    pub score: f64,
    /// Whether the series is anomalous after this point (after duration and hysteresis).
    pub anomalous: bool,
    /// Whether this point turned the series anomalous.
    pub onset: bool,
    /// Whether a level shift was detected at this point (the level was rebuilt).
    pub change_point: bool,
    /// Whether the detector was still learning (no score yet).
    pub warming_up: bool,
}

impl Point {
    /// The score as NAB's per-row `anomaly_score`: with hysteresis, an anomaly is one
    /// detection at its onset (as a pager sees it) and every other row scores 0; without
    /// it, every row carries its score.
    pub fn detection_score(&self, stages: Stages) -> f64 {
        if !stages.hysteresis || self.onset {
            self.score
        } else {
            0.0
        }
    }
}

/// The streaming detector of one series. Memory is bounded by the configuration.
#[derive(Clone, Debug)]
pub struct Detector {
    config: DetectorConfig,
    seen: usize,
    grid: Grid,
    level: SortedWindow,
    residuals: SortedWindow,
    season: Option<Season>,
    /// (grid index, transformed value) of the last points, for period detection.
    history: VecDeque<(i64, f64)>,
    next_detection_at: usize,
    likelihood: Likelihood,
    cusum: Cusum,
    alert: AlertState,
}

impl Detector {
    pub fn new(config: DetectorConfig) -> Result<Detector, ConfigError> {
        config.validate()?;
        Ok(Detector {
            seen: 0,
            grid: Grid::default(),
            level: SortedWindow::new(config.level_points),
            residuals: SortedWindow::new(config.scale_points),
            season: None,
            history: VecDeque::with_capacity(config.history_points_max),
            next_detection_at: FIRST_DETECTION_POINTS,
            likelihood: Likelihood::new(config.likelihood_points, config.likelihood_avg_points),
            cusum: Cusum::new(config.level_points),
            alert: AlertState::default(),
            config,
        })
    }

    pub fn config(&self) -> &DetectorConfig {
        &self.config
    }

    /// The period found, in grid points, if any.
    pub fn period_points(&self) -> Option<usize> {
        self.season.as_ref().map(|s| s.period)
    }

    /// Takes the next point. Times must not go backwards (an older point is scored but
    /// not learned from); a non-finite value is skipped and reported as a warming point.
    pub fn update(&mut self, time_ms: i64, value: f64) -> Point {
        if !value.is_finite() {
            return self.quiet_point(value);
        }
        let Some(index) = self.grid.index(time_ms) else {
            return self.quiet_point(value);
        };
        let x = self.transform(value);
        let phase = self.season.as_ref().map(|s| index % s.period as i64);
        let offset = match (&self.season, phase) {
            (Some(season), Some(phase)) if self.config.stages.seasonality => {
                season.offset(phase as usize)
            }
            _ => 0.0,
        };
        let level = self.level.median().unwrap_or(x - offset);
        let expected = level + offset;
        let residual = x - expected;
        let scale = self.scale(level);
        let z = residual / scale;

        let warming_up = self.seen < self.config.warmup_points;
        let mut change_point = false;
        let mut score = 0.0;
        let (mut anomalous, mut onset) = (false, false);
        if !warming_up {
            if self.config.stages.change_points {
                let clip = self.config.cusum_clip;
                change_point = self.cusum.push(
                    z.clamp(-clip, clip),
                    self.config.cusum_drift,
                    self.config.cusum_limit,
                    self.config.cusum_confirm_points,
                );
            }
            let one_sided = match self.config.direction {
                Direction::Up => z.max(0.0),
                Direction::Down => (-z).max(0.0),
                Direction::Both => z.abs(),
            };
            let tail = if self.config.stages.likelihood {
                self.likelihood.push(one_sided.min(LIKELIHOOD_Z_MAX))
            } else {
                let sides = if self.config.direction == Direction::Both {
                    2.0
                } else {
                    1.0
                };
                (sides * normal_tail(one_sided)).min(1.0)
            };
            score = score_of_tail(tail);
            // Cold start of the likelihood: until its reference distribution exists, the
            // score is shown but raises nothing (a guess about the noise would page).
            let learning = self.config.stages.likelihood && !self.likelihood.ready();
            if !learning {
                (anomalous, onset) = self.alert.push(score, &self.config);
            }
        }

        self.learn(index, x, offset, residual);
        if change_point {
            self.level.reset_to(self.cusum.recent.iter().copied());
            self.cusum.reset();
        }
        self.seen += 1;
        let band = 3.0 * scale;
        Point {
            expected: self.untransform(expected),
            lower: self.untransform(expected - band),
            upper: self.untransform(expected + band),
            z,
            score,
            anomalous,
            onset,
            change_point,
            warming_up,
        }
    }

    fn quiet_point(&self, value: f64) -> Point {
        Point {
            expected: value,
            lower: value,
            upper: value,
            z: 0.0,
            score: 0.0,
            anomalous: self.alert.firing,
            onset: false,
            change_point: false,
            warming_up: true,
        }
    }

    fn learn(&mut self, index: i64, x: f64, offset: f64, residual: f64) {
        let deseasonalised = x - offset;
        self.level.push(deseasonalised);
        self.cusum.remember(deseasonalised);
        self.residuals.push(residual);
        let level = self.level.median().unwrap_or(deseasonalised);
        if let Some(season) = &mut self.season {
            season.push((index % season.period as i64) as usize, x - level);
        }
        if self.history.len() == self.config.history_points_max {
            self.history.pop_front();
        }
        self.history.push_back((index, x));
        if self.config.stages.seasonality && self.seen + 1 >= self.next_detection_at {
            self.detect_season();
        }
    }

    fn detect_season(&mut self) {
        let values: Vec<f64> = self.history.iter().map(|&(_, x)| x).collect();
        let found = find_period(
            &values,
            self.grid.calendar_periods(),
            self.config.season_acf_min,
        );
        if found != self.season.as_ref().map(|s| s.period) {
            self.season = found.map(|period| {
                let mut season = Season::new(period, self.config.season_cycles);
                season.seed(self.history.make_contiguous());
                season
            });
            self.rebaseline_from_history();
        }
        // Growing by a quarter while the history grows keeps detection cheap during warm-up;
        // once the history is full it is re-checked rarely.
        let full = self.config.history_points_max;
        self.next_detection_at = if self.next_detection_at < full {
            (self.next_detection_at * 5 / 4).min(full)
        } else {
            self.next_detection_at + full * REDETECT_HISTORIES
        };
    }

    /// After the season changed, the level and the residuals learned without it are
    /// rebuilt from the history under the new offsets, so its drift leaves the scale now
    /// rather than a day later.
    fn rebaseline_from_history(&mut self) {
        let offset = |season: &Option<Season>, index: i64| match season {
            Some(season) => season.offset(index.rem_euclid(season.period as i64) as usize),
            None => 0.0,
        };
        let deseasonalised: Vec<f64> = self
            .history
            .iter()
            .map(|&(index, x)| x - offset(&self.season, index))
            .collect();
        // Replays the windows over the history's tail: long enough to fill both.
        let replay_points = self.config.scale_points + self.config.level_points;
        let from = deseasonalised.len().saturating_sub(replay_points);
        let mut level = SortedWindow::new(self.config.level_points);
        let mut residuals = SortedWindow::new(self.config.scale_points);
        for &value in &deseasonalised[from..] {
            if let Some(median) = level.median() {
                residuals.push(value - median);
            }
            level.push(value);
        }
        if residuals.sorted.len() >= WINDOW_QUANTILE_POINTS_MIN {
            self.residuals = residuals;
        }
        self.level = level;
    }

    fn scale(&self, level: f64) -> f64 {
        let floor = match self.config.kind {
            // One unit in the Anscombe domain is the Poisson standard deviation.
            SeriesKind::Count => 1.0,
            SeriesKind::Gauge => (level.abs() * self.config.scale_floor_relative).max(1e-9),
        };
        let iqr = match (self.residuals.quantile(0.25), self.residuals.quantile(0.75)) {
            (Some(q1), Some(q3)) => (q3 - q1) / 1.349,
            _ => 0.0,
        };
        iqr.max(floor)
    }

    fn transform(&self, value: f64) -> f64 {
        match self.config.kind {
            SeriesKind::Gauge => value,
            SeriesKind::Count => 2.0 * (value.max(0.0) + 0.375).sqrt(),
        }
    }

    fn untransform(&self, x: f64) -> f64 {
        match self.config.kind {
            SeriesKind::Gauge => x,
            SeriesKind::Count => ((x.max(0.0) / 2.0).powi(2) - 0.375).max(0.0),
        }
    }
}

/// Points in the history before the first period detection.
const FIRST_DETECTION_POINTS: usize = 256;
/// Full histories between re-detections once the history is full.
const REDETECT_HISTORIES: usize = 4;
/// One-sided z-scores are capped before the likelihood, so one wild point cannot
/// inflate the reference distribution for thousands of points.
const LIKELIHOOD_Z_MAX: f64 = 20.0;
/// The tail probability that maps to a score of 1.
const TAIL_MIN: f64 = 1e-10;

/// `log10(tail) / -10`, clamped to [0, 1].
pub fn score_of_tail(tail: f64) -> f64 {
    (tail.max(TAIL_MIN).log10() / -10.0).clamp(0.0, 1.0)
}

/// Upper tail probability of the standard normal distribution.
pub fn normal_tail(z: f64) -> f64 {
    0.5 * libm::erfc(z / std::f64::consts::SQRT_2)
}

/// Maps times to grid indexes: the step is the first positive gap, so a gap in the data
/// later skips indexes instead of shifting the phase.
#[derive(Clone, Debug, Default)]
struct Grid {
    origin: Option<i64>,
    step_ms: Option<i64>,
    last: i64,
}

impl Grid {
    fn index(&mut self, time_ms: i64) -> Option<i64> {
        let Some(origin) = self.origin else {
            self.origin = Some(time_ms);
            self.last = time_ms;
            return Some(0);
        };
        if time_ms < self.last {
            return None;
        }
        let gap = time_ms - self.last;
        // The first positive gap sets the step for good: changing it later would move
        // every phase learned so far.
        if gap > 0 && self.step_ms.is_none() {
            self.step_ms = Some(gap);
        }
        self.last = time_ms;
        let step = self.step_ms.unwrap_or(1).max(1);
        Some((time_ms - origin + step / 2) / step)
    }

    /// A day and a week in grid points, when the step divides into them.
    fn calendar_periods(&self) -> [Option<usize>; 2] {
        let step = self.step_ms.unwrap_or(0);
        let points = |ms: i64| (step > 0 && ms % step == 0).then(|| (ms / step) as usize);
        [points(86_400_000), points(7 * 86_400_000)]
    }
}

/// The strongest period in `history` by autocorrelation: among local maxima of the
/// autocorrelation function at or above `acf_min`, the first that is within 0.05 of the
/// best, with a calendar period taking precedence when it is that strong.
pub fn find_period(history: &[f64], calendar: [Option<usize>; 2], acf_min: f64) -> Option<usize> {
    let n = history.len();
    let lag_max = (n / 2).min(PERIOD_POINTS_MAX);
    if lag_max < PERIOD_POINTS_MIN + 2 {
        return None;
    }
    let mean = history.iter().sum::<f64>() / n as f64;
    let centred: Vec<f64> = history.iter().map(|x| x - mean).collect();
    let energy: f64 = centred.iter().map(|x| x * x).sum();
    if energy <= f64::EPSILON * n as f64 {
        return None;
    }
    let sums = lagged_products(&centred);
    // Scaled to the overlap, so long lags are not penalised for having fewer pairs.
    let acf = |lag: usize| -> f64 { sums[lag] / energy * n as f64 / (n - lag) as f64 };
    let values: Vec<f64> = (0..=lag_max + 1)
        .map(|lag| if lag < 2 { 1.0 } else { acf(lag) })
        .collect();
    // A smooth series correlates with itself at every short lag; only peaks after the
    // autocorrelation first turns negative are periods (a series that never turns has a
    // trend or one slow swing in this history, not a season).
    let first_negative = (2..=lag_max).find(|&lag| values[lag] < 0.0)?;
    let peaks: Vec<(usize, f64)> = (PERIOD_POINTS_MIN.max(first_negative)..=lag_max)
        .filter(|&lag| values[lag] >= values[lag - 1] && values[lag] >= values[lag + 1])
        .map(|lag| (lag, values[lag]))
        .filter(|&(_, r)| r >= acf_min)
        .collect();
    let best = peaks
        .iter()
        .map(|&(_, r)| r)
        .fold(f64::NEG_INFINITY, f64::max);
    if !best.is_finite() {
        return None;
    }
    // A calendar period is judged by the best value near it, since a day of 5-minute
    // points may peak a point early or late.
    for period in calendar.into_iter().flatten() {
        if period >= PERIOD_POINTS_MIN && period + 2 <= lag_max {
            let near = values[period - 1]
                .max(values[period])
                .max(values[period + 1]);
            if near >= acf_min && near >= best - 0.05 {
                return Some(period);
            }
        }
    }
    peaks
        .iter()
        .find(|&&(_, r)| r >= best - 0.05)
        .map(|&(lag, _)| lag)
}

/// `Σ x[i]·x[i+lag]` for every lag, through the FFT (Wiener–Khinchin): the transform of
/// the zero-padded series, its power spectrum, and back. O(n log n) where the direct sums
/// are O(n²), which made period detection most of a detector's cost while it learns.
fn lagged_products(x: &[f64]) -> Vec<f64> {
    use rustfft::num_complex::Complex;
    let n = x.len();
    let size = (2 * n).next_power_of_two();
    let mut planner = rustfft::FftPlanner::<f64>::new();
    let mut buffer: Vec<Complex<f64>> = x.iter().map(|&v| Complex::new(v, 0.0)).collect();
    buffer.resize(size, Complex::new(0.0, 0.0));
    planner.plan_fft_forward(size).process(&mut buffer);
    for c in &mut buffer {
        *c = Complex::new(c.norm_sqr(), 0.0);
    }
    planner.plan_fft_inverse(size).process(&mut buffer);
    buffer.iter().take(n).map(|c| c.re / size as f64).collect()
}

/// The shortest period looked for: shorter "seasons" are noise or trend.
const PERIOD_POINTS_MIN: usize = 4;
/// The longest period looked for (a week of 5-minute points), bounding memory per phase.
const PERIOD_POINTS_MAX: usize = 2016;

/// Per-phase rings of the last cycles' offsets.
#[derive(Clone, Debug)]
struct Season {
    period: usize,
    cycles: usize,
    /// `period × cycles` offsets, ring per phase.
    offsets: Vec<f64>,
    /// Offsets stored per phase (up to `cycles`), and the next slot to write.
    filled: Vec<(u8, u8)>,
}

impl Season {
    fn new(period: usize, cycles: usize) -> Season {
        Season {
            period,
            cycles,
            offsets: vec![0.0; period * cycles],
            filled: vec![(0, 0); period],
        }
    }

    fn offset(&self, phase: usize) -> f64 {
        let (count, _) = self.filled[phase];
        if count == 0 {
            return 0.0;
        }
        let start = phase * self.cycles;
        let mut ring = [0.0f64; SEASON_CYCLES_MAX];
        let ring = &mut ring[..count as usize];
        ring.copy_from_slice(&self.offsets[start..start + count as usize]);
        median_of(ring)
    }

    /// Offsets from the history a period was just found in, so the seasonal baseline is
    /// used at once instead of a cycle later. The level of a point is the mean of the
    /// period around it (classical decomposition: a moving average of one period holds no
    /// season); only the last `cycles` cycles are kept, as `push` would.
    fn seed(&mut self, history: &[(i64, f64)]) {
        let (n, p) = (history.len(), self.period);
        if n < p {
            return;
        }
        let mut prefix = Vec::with_capacity(n + 1);
        prefix.push(0.0);
        for &(_, x) in history {
            prefix.push(prefix.last().copied().unwrap_or(0.0) + x);
        }
        let first = n.saturating_sub(p * self.cycles);
        for (j, &(index, x)) in history.iter().enumerate().skip(first) {
            // Centred where the history allows, else the period at its start or end.
            let from = j.saturating_sub(p / 2).min(n - p);
            let level = (prefix[from + p] - prefix[from]) / p as f64;
            self.push((index.rem_euclid(p as i64)) as usize, x - level);
        }
    }

    fn push(&mut self, phase: usize, offset: f64) {
        let (count, next) = &mut self.filled[phase];
        self.offsets[phase * self.cycles + *next as usize] = offset;
        *next = ((*next as usize + 1) % self.cycles) as u8;
        *count = (*count as usize + 1).min(self.cycles) as u8;
    }
}

/// Offsets per phase: a median of more cycles than this adapts too slowly to matter.
const SEASON_CYCLES_MAX: usize = 16;

fn median_of(values: &mut [f64]) -> f64 {
    values.sort_unstable_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// A window of the last `capacity` values, kept sorted for order statistics.
#[derive(Clone, Debug)]
struct SortedWindow {
    capacity: usize,
    arrival: VecDeque<f64>,
    sorted: Vec<f64>,
}

impl SortedWindow {
    fn new(capacity: usize) -> SortedWindow {
        SortedWindow {
            capacity,
            arrival: VecDeque::with_capacity(capacity),
            sorted: Vec::with_capacity(capacity),
        }
    }

    fn push(&mut self, value: f64) {
        if self.arrival.len() == self.capacity {
            if let Some(old) = self.arrival.pop_front() {
                let at = self.sorted.partition_point(|v| v.total_cmp(&old).is_lt());
                self.sorted.remove(at);
            }
        }
        self.arrival.push_back(value);
        let at = self.sorted.partition_point(|v| v.total_cmp(&value).is_lt());
        self.sorted.insert(at, value);
    }

    fn reset_to(&mut self, values: impl Iterator<Item = f64>) {
        self.arrival.clear();
        self.sorted.clear();
        for value in values {
            self.push(value);
        }
    }

    fn median(&self) -> Option<f64> {
        let n = self.sorted.len();
        match n {
            0 => None,
            _ if n % 2 == 1 => Some(self.sorted[n / 2]),
            _ => Some((self.sorted[n / 2 - 1] + self.sorted[n / 2]) / 2.0),
        }
    }

    /// The `q` quantile by linear interpolation; `None` until a quarter full.
    fn quantile(&self, q: f64) -> Option<f64> {
        let n = self.sorted.len();
        if n < 4 || n * 4 < self.capacity.min(WINDOW_QUANTILE_POINTS_MIN * 4) {
            return None;
        }
        let at = q * (n - 1) as f64;
        let (low, frac) = (at.floor() as usize, at.fract());
        let high = (low + 1).min(n - 1);
        Some(self.sorted[low] + (self.sorted[high] - self.sorted[low]) * frac)
    }
}

/// Residuals needed before the scale is trusted.
const WINDOW_QUANTILE_POINTS_MIN: usize = 8;

/// Numenta-style anomaly likelihood over one-sided z-scores.
#[derive(Clone, Debug)]
struct Likelihood {
    recent: VecDeque<f64>,
    recent_sum: f64,
    recent_points: usize,
    averages: VecDeque<f64>,
    sum: f64,
    sum_squares: f64,
    reference_points: usize,
    since_exact: usize,
}

/// The smallest standard deviation of the averaged scores, so a perfectly quiet series
/// does not call a tiny wobble a one-in-a-billion event.
const LIKELIHOOD_STD_MIN: f64 = 0.1;
/// Averages needed before the reference distribution is used; before that the z-score
/// tail of the average is used.
const LIKELIHOOD_REFERENCE_MIN: usize = 64;

impl Likelihood {
    fn new(reference_points: usize, recent_points: usize) -> Likelihood {
        Likelihood {
            recent: VecDeque::with_capacity(recent_points),
            recent_sum: 0.0,
            recent_points,
            averages: VecDeque::with_capacity(reference_points),
            sum: 0.0,
            sum_squares: 0.0,
            reference_points,
            since_exact: 0,
        }
    }

    /// Whether the reference distribution has enough averages to be used.
    fn ready(&self) -> bool {
        self.averages.len() >= LIKELIHOOD_REFERENCE_MIN
    }

    /// Adds a one-sided score and returns the tail probability of the current average.
    fn push(&mut self, one_sided: f64) -> f64 {
        if self.recent.len() == self.recent_points {
            self.recent_sum -= self.recent.pop_front().unwrap_or(0.0);
        }
        self.recent.push_back(one_sided);
        self.recent_sum += one_sided;
        let average = self.recent_sum / self.recent.len() as f64;

        let tail = if self.averages.len() >= LIKELIHOOD_REFERENCE_MIN {
            let n = self.averages.len() as f64;
            let mean = self.sum / n;
            let variance = (self.sum_squares / n - mean * mean).max(0.0);
            let std = variance.sqrt().max(LIKELIHOOD_STD_MIN);
            normal_tail((average - mean) / std)
        } else {
            // The average of k half-normal scores has mean ≈ 0.8 and std ≈ 0.6/√k.
            let k = self.recent.len() as f64;
            normal_tail((average - 0.8) / (0.6 / k.sqrt()))
        };

        if self.averages.len() == self.reference_points {
            let old = self.averages.pop_front().unwrap_or(0.0);
            self.sum -= old;
            self.sum_squares -= old * old;
        }
        self.averages.push_back(average);
        self.sum += average;
        self.sum_squares += average * average;
        // Running sums drift by rounding; recomputing them once per window keeps them exact
        // enough at O(1) amortised cost.
        self.since_exact += 1;
        if self.since_exact >= self.reference_points {
            self.sum = self.averages.iter().sum();
            self.sum_squares = self.averages.iter().map(|a| a * a).sum();
            self.since_exact = 0;
        }
        tail
    }
}

/// Two-sided CUSUM with the points since the current run began.
#[derive(Clone, Debug)]
struct Cusum {
    high: f64,
    low: f64,
    /// Deseasonalised values since the shift under test began (bounded by the level window).
    recent: VecDeque<f64>,
    recent_max: usize,
    run_points: usize,
    /// +1 above, -1 below, 0 no run.
    run_side: i8,
}

impl Cusum {
    fn new(recent_max: usize) -> Cusum {
        Cusum {
            high: 0.0,
            low: 0.0,
            recent: VecDeque::new(),
            recent_max,
            run_points: 0,
            run_side: 0,
        }
    }

    /// Returns whether a shift is detected at this point.
    fn push(&mut self, z: f64, drift: f64, limit: f64, confirm_points: usize) -> bool {
        self.high = (self.high + z - drift).max(0.0);
        self.low = (self.low - z - drift).max(0.0);
        // The run is the points in a row beyond the drift on one side: a burst that ended
        // leaves the sum high for a while, but its run is over.
        self.run_points = match (z > drift, z < -drift) {
            (true, _) if self.run_side >= 0 => {
                self.run_side = 1;
                self.run_points + 1
            }
            (_, true) if self.run_side <= 0 => {
                self.run_side = -1;
                self.run_points + 1
            }
            (true, _) => {
                self.run_side = 1;
                1
            }
            (_, true) => {
                self.run_side = -1;
                1
            }
            _ => {
                self.run_side = 0;
                0
            }
        };
        let over =
            (self.run_side > 0 && self.high > limit) || (self.run_side < 0 && self.low > limit);
        over && self.run_points >= confirm_points
    }

    fn remember(&mut self, value: f64) {
        if self.recent.len() == self.recent_max {
            self.recent.pop_front();
        }
        self.recent.push_back(value);
        // Only the current run is the new level; older points are the old one.
        let keep = self.run_points.clamp(1, self.recent_max);
        while self.recent.len() > keep {
            self.recent.pop_front();
        }
    }

    fn reset(&mut self) {
        self.high = 0.0;
        self.low = 0.0;
        self.run_points = 0;
        self.run_side = 0;
    }
}

/// Duration and hysteresis.
#[derive(Clone, Debug, Default)]
struct AlertState {
    firing: bool,
    above: usize,
    below: usize,
}

impl AlertState {
    /// Returns (anomalous, onset).
    fn push(&mut self, score: f64, config: &DetectorConfig) -> (bool, bool) {
        if !config.stages.hysteresis {
            let on = score >= config.score_on;
            return (on, on);
        }
        if self.firing {
            self.below = if score < config.score_off {
                self.below + 1
            } else {
                0
            };
            if self.below >= config.clear_points {
                self.firing = false;
                self.above = 0;
            }
            return (self.firing, false);
        }
        self.above = if score >= config.score_on {
            self.above + 1
        } else {
            0
        };
        if self.above >= config.min_duration_points {
            self.firing = true;
            self.below = 0;
            return (true, true);
        }
        (false, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> DetectorConfig {
        DetectorConfig::default()
    }

    /// A deterministic noise source, so the tests need no RNG crate.
    fn noise(i: u64) -> f64 {
        let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
        x ^= x >> 31;
        x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x ^= x >> 29;
        // Sum of four uniforms: roughly normal, mean 0, std ≈ 0.58.
        (0..4)
            .map(|k| ((x >> (k * 16)) & 0xFFFF) as f64 / 65535.0 - 0.5)
            .sum::<f64>()
    }

    #[test]
    fn a_daily_season_is_found_and_followed() {
        let mut detector = Detector::new(config()).unwrap();
        let step = 300;
        let mut alerts = 0;
        for i in 0..(288 * 6) {
            let phase = (i % 288) as f64 / 288.0 * std::f64::consts::TAU;
            let value = 100.0 + 40.0 * phase.sin() + noise(i as u64);
            let point = detector.update(i * step * 1000, value);
            if i > 288 * 3 {
                assert!(
                    (point.expected - value).abs() < 8.0,
                    "baseline off at {i}: {point:?}"
                );
                alerts += point.onset as usize;
            }
        }
        assert_eq!(detector.period_points(), Some(288));
        assert_eq!(alerts, 0, "the season itself must not alert");
    }

    #[test]
    fn a_spike_alerts_once_and_clears() {
        let mut detector = Detector::new(config()).unwrap();
        let mut onsets = vec![];
        let mut last = None;
        for i in 0..800i64 {
            let value = 50.0 + noise(i as u64) + if (600..603).contains(&i) { 30.0 } else { 0.0 };
            let point = detector.update(i * 60_000, value);
            if point.onset {
                onsets.push(i);
            }
            last = Some(point);
        }
        assert_eq!(onsets.len(), 1, "one alert for one spike: {onsets:?}");
        assert!((600..606).contains(&onsets[0]));
        assert!(!last.unwrap().anomalous, "cleared afterwards");
    }

    #[test]
    fn counts_are_poisson_aware() {
        let mut config = config();
        config.kind = SeriesKind::Count;
        config.direction = Direction::Up;
        let mut detector = Detector::new(config).unwrap();
        let mut small = 0;
        for i in 0..600i64 {
            // 0..2 errors a minute is normal noise for a busy service.
            let errors = (noise(i as u64) + 1.0).round().max(0.0);
            small += detector.update(i * 60_000, errors).onset as usize;
        }
        assert_eq!(small, 0, "a few errors are not an incident");
        let burst = (600..605)
            .map(|i| detector.update(i * 60_000, 60.0))
            .collect::<Vec<_>>();
        assert!(
            burst.iter().any(|p| p.onset),
            "60 errors a minute is: {burst:?}"
        );
    }

    /// Onsets after warm-up for a series, with the given stages.
    fn onsets(stages: Stages, series: impl Fn(i64) -> f64, points: i64) -> Vec<i64> {
        let mut detector = Detector::new(DetectorConfig { stages, ..config() }).unwrap();
        (0..points)
            .filter(|&i| detector.update(i * 60_000, series(i)).onset && i >= 400)
            .collect()
    }

    #[test]
    fn anomaly_likelihood_learns_what_is_normal_for_a_noisy_series() {
        // One point in about 25 (at random, so it is no season) jumps by about eight
        // robust standard deviations: that is this series' normal. The robust scale
        // ignores the jumps, so z-scores call each one an anomaly; the likelihood learns
        // that averages like these happen.
        let jump = |i: i64| (noise(i as u64 + 1_000_000) * 1000.0) as i64 % 25 == 0;
        let spiky = |i: i64| 50.0 + noise(i as u64) + if jump(i) { 5.0 } else { 0.0 };
        let no_hysteresis = Stages {
            hysteresis: false,
            ..Stages::default()
        };
        let without = onsets(
            Stages {
                likelihood: false,
                ..no_hysteresis
            },
            spiky,
            2000,
        );
        let with = onsets(no_hysteresis, spiky, 2000);
        assert!(
            without.len() > 40,
            "z-scores alone alert on every jump: {}",
            without.len()
        );
        assert!(
            with.len() * 8 < without.len(),
            "the likelihood mostly does not: {} vs {}",
            with.len(),
            without.len()
        );
        // A departure unlike the series' normal still alerts.
        let shifted = |i: i64| spiky(i) + if (1500..1520).contains(&i) { 6.0 } else { 0.0 };
        let found = onsets(no_hysteresis, shifted, 2000);
        assert!(found.iter().any(|i| (1500..1510).contains(i)), "{found:?}");
    }

    #[test]
    fn hysteresis_and_duration_keep_one_alert_from_flapping() {
        let config = config();
        // Wavering across score_on but never below score_off: one alert, not four.
        let wavering = [
            0.6, 0.6, 0.45, 0.6, 0.45, 0.6, 0.45, 0.6, 0.1, 0.1, 0.1, 0.1,
        ];
        let count = |stages: Stages, scores: &[f64]| {
            let config = DetectorConfig {
                stages,
                ..config.clone()
            };
            let mut state = AlertState::default();
            scores
                .iter()
                .filter(|&&score| state.push(score, &config).1)
                .count()
        };
        assert_eq!(count(Stages::default(), &wavering), 1);
        let plain = Stages {
            hysteresis: false,
            ..Stages::default()
        };
        assert_eq!(count(plain, &wavering), 5);
        // One high point is below the minimum duration of two.
        assert_eq!(count(Stages::default(), &[0.9, 0.1, 0.9, 0.1]), 0);
        // And the alert clears only after clear_points quiet points.
        let mut state = AlertState::default();
        let firing: Vec<bool> = [0.9, 0.9, 0.1, 0.1, 0.1, 0.1]
            .iter()
            .map(|&s| state.push(s, &config).0)
            .collect();
        assert_eq!(firing, [false, true, true, true, false, false]);
    }

    #[test]
    fn a_level_shift_is_rebaselined_by_change_point_detection() {
        let shift = |i: i64| 50.0 + noise(i as u64) + if i >= 600 { 10.0 } else { 0.0 };
        let run = |stages: Stages| {
            let mut detector = Detector::new(DetectorConfig { stages, ..config() }).unwrap();
            let points: Vec<Point> = (0..900)
                .map(|i| detector.update(i * 60_000, shift(i)))
                .collect();
            let change = points.iter().position(|p| p.change_point);
            let anomalous = points.iter().filter(|p| p.anomalous).count();
            (change, anomalous, points[620].expected)
        };
        let (change, anomalous, expected_after) = run(Stages::default());
        let change = change.expect("the shift is detected");
        assert!((606..612).contains(&change), "detected at {change}");
        assert!(
            (expected_after - 60.0).abs() < 1.5,
            "new level learned: {expected_after}"
        );
        let (none, anomalous_without, _) = run(Stages {
            change_points: false,
            ..Stages::default()
        });
        assert_eq!(none, None);
        assert!(anomalous > 0, "the shift itself alerts");
        assert!(
            anomalous < anomalous_without,
            "re-baselining shortens the alert: {anomalous} vs {anomalous_without} points"
        );
    }

    #[test]
    fn a_burst_of_a_few_points_is_no_level_shift() {
        let mut detector = Detector::new(config()).unwrap();
        let burst =
            |i: i64| 50.0 + noise(i as u64) + if (600..606).contains(&i) { 10.0 } else { 0.0 };
        let points: Vec<Point> = (0..800)
            .map(|i| detector.update(i * 60_000, burst(i)))
            .collect();
        assert!(points.iter().all(|p| !p.change_point));
        let onsets: Vec<usize> = (0..800).filter(|&i| points[i].onset).collect();
        assert_eq!(
            onsets.len(),
            1,
            "the return to normal is no second alert: {onsets:?}"
        );
    }

    #[test]
    fn cold_start_only_learns() {
        let mut detector = Detector::new(config()).unwrap();
        let points: Vec<Point> = (0..32)
            .map(|i| detector.update(i * 60_000, (i % 7) as f64 * 100.0))
            .collect();
        assert!(points
            .iter()
            .all(|p| p.warming_up && p.score == 0.0 && !p.anomalous));
        assert!(!detector.update(32 * 60_000, 1.0).warming_up);
    }

    #[test]
    fn bad_configuration_is_refused() {
        let mut c = config();
        c.level_points = 1;
        assert_eq!(
            Detector::new(c).unwrap_err(),
            ConfigError::TooSmall {
                field: "level_points",
                min: 3,
                got: 1
            }
        );
        let mut c = config();
        c.score_off = 0.9;
        assert!(matches!(
            Detector::new(c).unwrap_err(),
            ConfigError::Thresholds { .. }
        ));
    }
}
