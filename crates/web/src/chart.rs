//! Server-side SVG charts: time series with a learned baseline band, alert spans and
//! marked points; horizontal bars; the drill timeline; the journey waterfall; the service
//! map.
//!
//! Every chart is a `<figure class="chart">` around an `<svg>` with a fixed `viewBox` (the
//! stylesheet stretches it to the column's width), a `<title>`, axes with the unit in the
//! axis title, a legend when more than one colour carries meaning, and a `<figcaption>`.
//! All of it goes through `maud`, so every label is escaped. No script: hover text is SVG
//! `<title>` children, links are `<a href>`.
//!
//! Styling is done with presentation attributes (`fill=`, `stroke=`, `font-size=`) rather
//! than `style=`, which a strict content security policy would refuse. Colours are the
//! Okabe–Ito palette (safe for the common forms of colour blindness); health tones are the
//! same green / orange / vermillion / grey everywhere.
//!
//! Text never goes below 11 viewBox units and is never allowed to overlap: tick counts are
//! chosen from the room the labels need, long labels are cut with an ellipsis (the whole
//! text stays in a `<title>`), and free-floating labels (alert spans, timeline events,
//! link and edge labels) are placed only where nothing was placed before.

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;

use maud::{html, Markup, Render};

use crate::fmt;
use crate::layout::Tone;

// ---------------------------------------------------------------------------------------
// The API
// ---------------------------------------------------------------------------------------

/// One series of a [`TimeChart`]; `None` is a gap in the line.
pub struct Line<'a> {
    pub label: &'a str,
    pub points: &'a [(i64, Option<f64>)],
}

/// A learned baseline, `(time, lower, upper)`: drawn as a light filled area behind the lines.
pub struct Band<'a> {
    pub label: &'a str,
    pub points: &'a [(i64, f64, f64)],
}

/// An alert: a shaded vertical region (`to_ms` `None` = still open, to the end of the
/// range) with its label at the top.
pub struct Span<'a> {
    pub from_ms: i64,
    pub to_ms: Option<i64>,
    pub label: &'a str,
    pub tone: Tone,
}

/// A point marker (e.g. an anomalous point), with hover text.
pub struct Mark<'a> {
    pub at_ms: i64,
    pub value: f64,
    pub label: &'a str,
    pub tone: Tone,
}

/// A time-series chart.
pub struct TimeChart<'a> {
    pub title: &'a str,
    /// "ms", "errors/interval", "requests/interval", "records/s".
    pub unit: &'a str,
    pub from_ms: i64,
    pub to_ms: i64,
    pub lines: Vec<Line<'a>>,
    pub band: Option<Band<'a>>,
    pub spans: Vec<Span<'a>>,
    pub marks: Vec<Mark<'a>>,
    /// What to say when no line has a point in range.
    pub empty: &'a str,
}

/// An event on a [`timeline`] lane.
pub struct TimelineEvent<'a> {
    pub at_ms: i64,
    pub lane: &'a str,
    pub label: &'a str,
    pub tone: Tone,
}

/// A pair drawn as a connector between two events' times, labelled with its length (e.g.
/// "TTD 1.2 s"), e.g. a fault injected → its break discovered.
pub struct TimelineLink<'a> {
    pub from_ms: i64,
    pub to_ms: i64,
    pub from_lane: &'a str,
    pub to_lane: &'a str,
    pub label: &'a str,
}

/// One row of a journey [`waterfall`].
pub struct WaterfallRow<'a> {
    /// "GET /checkout", "payment-core POST /pay", "INSERT payments", "record pay-123 payment-core".
    pub label: &'a str,
    /// One of "experience", "network", "backend", "database", "fund".
    pub layer: &'a str,
    /// Offset from the journey's start.
    pub start_ms: f64,
    /// 0 for instant events (drawn as a diamond).
    pub duration_ms: f64,
    /// Indentation of the label (span nesting).
    pub depth: usize,
    /// Outlined in vermillion with a "!" marker.
    pub error: bool,
    /// When set, the row is a link.
    pub href: Option<&'a str>,
}

/// A service on the [`service_map`].
pub struct MapNode<'a> {
    pub id: &'a str,
    pub label: &'a str,
    pub detail: &'a str,
    pub tone: Tone,
    pub href: Option<&'a str>,
}

/// A call from one service to another on the [`service_map`].
pub struct MapEdge<'a> {
    pub from: &'a str,
    pub to: &'a str,
    pub label: &'a str,
    pub tone: Tone,
}

// ---------------------------------------------------------------------------------------
// Look and measures shared by all charts
// ---------------------------------------------------------------------------------------

/// The width of every chart's viewBox but the service map's (which grows with its layers).
const W: f64 = 960.0;
/// Tick labels, small print.
const SMALL: f64 = 11.0;
/// Legends, row labels.
const LABEL: f64 = 12.0;
/// A conservative average glyph width of a sans-serif face, in em: estimates how much room
/// a label takes (there is no font metrics on the server). Over-estimating only costs a
/// little space; under-estimating would let labels collide.
const CHAR_EM: f64 = 0.62;

const BLUE: &str = "#0072B2";
const ORANGE: &str = "#E69F00";
const GREEN: &str = "#009E73";
const VERMILLION: &str = "#D55E00";
const PURPLE: &str = "#CC79A7";
const SKY: &str = "#56B4E9";
const BLACK: &str = "#000000";
const GREY: &str = "#6b7280";

const INK: &str = "#111827";
const INK_SOFT: &str = "#374151";
const GRID: &str = "#e5e7eb";
const FRAME: &str = "#d1d5db";
const ZEBRA: &str = "#f9fafb";

/// Line colours in order. Yellow is left out: it is unreadable as a thin line on white.
const SERIES: [&str; 7] = [BLUE, ORANGE, GREEN, VERMILLION, PURPLE, SKY, BLACK];
const BAND_FILL: &str = SKY;
const BAND_OPACITY: f64 = 0.28;

fn series_colour(i: usize) -> &'static str {
    SERIES[i % SERIES.len()]
}

/// Past the seventh line colours repeat, so the repeats are dashed to stay distinguishable.
fn series_dash(i: usize) -> Option<&'static str> {
    match (i / SERIES.len()) % 3 {
        0 => None,
        1 => Some("7 4"),
        _ => Some("2 3"),
    }
}

fn tone_colour(t: Tone) -> &'static str {
    match t {
        Tone::Good => GREEN,
        Tone::Warn => ORANGE,
        Tone::Bad => VERMILLION,
        Tone::Neutral => GREY,
    }
}

/// Light tints of the tones, for areas that carry dark text (white or black text on the
/// full orange would be hard to read).
fn tone_tint(t: Tone) -> &'static str {
    match t {
        Tone::Good => "#d7efe7",
        Tone::Warn => "#fbecd0",
        Tone::Bad => "#f8ddd0",
        Tone::Neutral => "#f3f4f6",
    }
}

fn tone_name(t: Tone) -> &'static str {
    match t {
        Tone::Good => "good",
        Tone::Warn => "warning",
        Tone::Bad => "bad",
        Tone::Neutral => "neutral",
    }
}

/// Worst first, for picking the colour of a bin holding several tones: a failure among
/// many successes must still show.
fn tone_rank(t: Tone) -> u8 {
    match t {
        Tone::Bad => 3,
        Tone::Warn => 2,
        Tone::Good => 1,
        Tone::Neutral => 0,
    }
}

const TONES: [Tone; 4] = [Tone::Good, Tone::Warn, Tone::Bad, Tone::Neutral];

/// A coordinate, written with at most one decimal: keeps the SVG small and stable.
#[derive(Clone, Copy, Debug)]
struct N(f64);

impl std::fmt::Display for N {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let v = if self.0.is_finite() { self.0 } else { 0.0 };
        let r = (v * 10.0).round() / 10.0;
        if r == r.trunc() {
            write!(f, "{}", r as i64)
        } else {
            write!(f, "{r:.1}")
        }
    }
}

impl Render for N {
    fn render_to(&self, buffer: &mut String) {
        let _ = write!(buffer, "{self}");
    }
}

/// How wide `s` is at `size`, estimated.
fn text_w(s: &str, size: f64) -> f64 {
    s.chars().count() as f64 * size * CHAR_EM
}

/// `s` cut to fit `max_w` at `size`, with an ellipsis; `true` when it was cut.
fn fit(s: &str, max_w: f64, size: f64) -> (String, bool) {
    let max_chars = (max_w / (size * CHAR_EM)).floor().max(1.0) as usize;
    if s.chars().count() <= max_chars {
        return (s.to_string(), false);
    }
    let mut out: String = s.chars().take(max_chars.saturating_sub(1)).collect();
    out.truncate(out.trim_end().len());
    out.push('…');
    (out, true)
}

/// A number for a tick or a bar end: `0.25`, `12.5`, `1.5k`, `2M`; three significant
/// digits at most, so labels stay short and ticks of a 1/2/5 step stay distinct.
fn compact(v: f64) -> String {
    if !v.is_finite() {
        return "—".into();
    }
    let a = v.abs();
    if a < 1e-12 {
        return "0".into();
    }
    let (div, suffix) = match a {
        a if a >= 1e12 => (1e12, "T"),
        a if a >= 1e9 => (1e9, "G"),
        a if a >= 1e6 => (1e6, "M"),
        a if a >= 1e3 => (1e3, "k"),
        _ => (1.0, ""),
    };
    let x = v / div;
    let decimals = match x.abs() {
        x if x >= 100.0 => 0,
        x if x >= 10.0 => 1,
        x if x >= 1.0 => 2,
        x => ((-x.log10()).ceil() as usize + 2).min(8),
    };
    let mut s = format!("{x:.decimals$}");
    if s.contains('.') {
        s.truncate(s.trim_end_matches('0').trim_end_matches('.').len());
    }
    if s == "-0" {
        s = "0".into();
    }
    s + suffix
}

/// A duration in ms as a waterfall prints it: `0.35 ms`, `4.2 ms`, `850 ms`, `1.2 s`.
fn dur_label(ms: f64) -> String {
    if !ms.is_finite() || ms <= 0.0 {
        return "instant".into();
    }
    if ms < 1000.0 {
        let digits = if ms < 1.0 {
            2
        } else if ms < 10.0 {
            1
        } else {
            0
        };
        let mut s = format!("{ms:.digits$}");
        if s.contains('.') {
            s.truncate(s.trim_end_matches('0').trim_end_matches('.').len());
        }
        return format!("{s} ms");
    }
    fmt::duration_ms(ms.round() as i64)
}

/// A linear mapping from data to viewBox coordinates; the result is clamped to the range,
/// so nothing is ever drawn outside the plot rectangle.
#[derive(Clone, Copy, Debug)]
struct Scale {
    d0: f64,
    d1: f64,
    r0: f64,
    r1: f64,
}

impl Scale {
    fn new(d0: f64, d1: f64, r0: f64, r1: f64) -> Scale {
        Scale { d0, d1, r0, r1 }
    }

    fn map(&self, v: f64) -> f64 {
        let (lo, hi) = (self.r0.min(self.r1), self.r0.max(self.r1));
        if self.d1 == self.d0 || !v.is_finite() {
            return (self.r0 + self.r1) / 2.0;
        }
        (self.r0 + (v - self.d0) / (self.d1 - self.d0) * (self.r1 - self.r0)).clamp(lo, hi)
    }

    fn map_t(&self, t: i64) -> f64 {
        self.map(t as f64)
    }

    fn len(&self) -> f64 {
        (self.r1 - self.r0).abs()
    }
}

/// The plot area inside a chart.
#[derive(Clone, Copy, Debug)]
struct Rect {
    x0: f64,
    y0: f64,
    x1: f64,
    y1: f64,
}

impl Rect {
    fn cx(&self) -> f64 {
        (self.x0 + self.x1) / 2.0
    }
    fn cy(&self) -> f64 {
        (self.y0 + self.y1) / 2.0
    }
}

/// Free-floating labels claim their box here first; a label whose box is taken is not
/// drawn (its text stays available as hover text on the thing it labels). Boxes are
/// bucketed in a coarse grid so that thousands of them stay cheap to check.
#[derive(Default)]
struct Placer {
    taken: Vec<[f64; 4]>,
    grid: HashMap<(i32, i32), Vec<usize>>,
}

impl Placer {
    const CELL: f64 = 64.0;

    fn cells(b: [f64; 4]) -> impl Iterator<Item = (i32, i32)> {
        let c = |v: f64| (v / Self::CELL).floor() as i32;
        let (x0, y0, x1, y1) = (c(b[0]), c(b[1]), c(b[2]), c(b[3]));
        (x0..=x1).flat_map(move |x| (y0..=y1).map(move |y| (x, y)))
    }

    fn is_free(&self, b: [f64; 4]) -> bool {
        Self::cells(b).all(|cell| {
            self.grid.get(&cell).is_none_or(|ids| {
                ids.iter().all(|&i| {
                    let t = self.taken[i];
                    b[2] <= t[0] || b[0] >= t[2] || b[3] <= t[1] || b[1] >= t[3]
                })
            })
        })
    }

    /// Reserves `b` whatever is there already (for things that are drawn regardless).
    fn block(&mut self, b: [f64; 4]) {
        let id = self.taken.len();
        self.taken.push(b);
        for cell in Self::cells(b) {
            self.grid.entry(cell).or_default().push(id);
        }
    }

    /// Reserves `b` if nothing overlaps it; whether it did.
    fn claim(&mut self, b: [f64; 4]) -> bool {
        let free = self.is_free(b);
        if free {
            self.block(b);
        }
        free
    }

    /// Box of a text of width `w` with its baseline at `y`, anchored at `x` as `anchor`.
    fn text_box(x: f64, y: f64, w: f64, size: f64, anchor: &str) -> [f64; 4] {
        let x0 = match anchor {
            "middle" => x - w / 2.0,
            "end" => x - w,
            _ => x,
        };
        [x0 - 2.0, y - size, x0 + w + 2.0, y + size * 0.3]
    }
}

// ---------------------------------------------------------------------------------------
// Ticks
// ---------------------------------------------------------------------------------------

/// The smallest of 1, 2, 5 × 10^k that is at least `raw`.
fn nice_step(raw: f64) -> f64 {
    if !raw.is_finite() || raw <= 0.0 {
        return 1.0;
    }
    let p = 10f64.powf(raw.log10().floor());
    let f = raw / p;
    // The small tolerance keeps 2.0000000001 (a float artefact) a 2, not a 5.
    let m = if f <= 1.0 + 1e-9 {
        1.0
    } else if f <= 2.0 + 1e-9 {
        2.0
    } else if f <= 5.0 + 1e-9 {
        5.0
    } else {
        10.0
    };
    m * p
}

/// Evenly spaced ticks on a 1/2/5 step from at or below `lo` to at or above `hi`, at most
/// `max_ticks` of them (at least two).
fn nice_ticks(lo: f64, hi: f64, max_ticks: usize) -> Vec<f64> {
    let max_ticks = max_ticks.max(2);
    let (mut lo, mut hi) = (lo.min(hi), lo.max(hi));
    if !lo.is_finite() || !hi.is_finite() {
        return vec![0.0, 1.0];
    }
    if hi - lo <= f64::EPSILON * hi.abs().max(1.0) {
        // One value: show it against zero, or a unit above it when it is zero.
        if hi > 0.0 {
            lo = 0.0;
        } else if hi < 0.0 {
            hi = 0.0;
        } else {
            hi = 1.0;
        }
    }
    let mut step = nice_step((hi - lo) / (max_ticks - 1) as f64);
    loop {
        // The tolerances keep a bound that is a multiple of the step (up to float error)
        // from growing an extra tick.
        let k0 = (lo / step + 1e-9).floor() as i64;
        let k1 = (hi / step - 1e-9).ceil() as i64;
        let k1 = k1.max(k0 + 1);
        if (k1 - k0 + 1) as usize <= max_ticks {
            return (k0..=k1).map(|k| k as f64 * step + 0.0).collect();
        }
        step = nice_step(step * 1.5);
    }
}

/// How many value ticks fit along `len` when each label needs `label_w`.
fn ticks_for(len: f64, label_w: f64) -> usize {
    ((len / label_w).floor() as usize).clamp(2, 11)
}

const SEC: i64 = 1000;
const MIN: i64 = 60 * SEC;
const HOUR: i64 = 60 * MIN;
const DAY: i64 = 24 * HOUR;
const TIME_STEPS: [i64; 25] = [
    SEC,
    2 * SEC,
    5 * SEC,
    10 * SEC,
    15 * SEC,
    30 * SEC,
    MIN,
    2 * MIN,
    5 * MIN,
    10 * MIN,
    15 * MIN,
    30 * MIN,
    HOUR,
    2 * HOUR,
    3 * HOUR,
    6 * HOUR,
    12 * HOUR,
    DAY,
    2 * DAY,
    7 * DAY,
    14 * DAY,
    30 * DAY,
    90 * DAY,
    180 * DAY,
    365 * DAY,
];

/// Ticks at round UTC times (multiples of the step since the epoch, so hours fall on the
/// hour and days on midnight) inside `[from, to]`, at most `max_ticks`; and the step.
fn time_ticks(from: i64, to: i64, max_ticks: usize) -> (Vec<i64>, i64) {
    let max_ticks = max_ticks.max(2) as i64;
    let range = (to - from).max(1);
    let step = TIME_STEPS
        .iter()
        .copied()
        .find(|s| range / s < max_ticks)
        .unwrap_or_else(|| {
            let year = 365 * DAY;
            year * (range / year / max_ticks + 1)
        });
    let first = from.div_euclid(step) * step + if from.rem_euclid(step) == 0 { 0 } else { step };
    let ticks = (0..)
        .map(|i| first + i * step)
        .take_while(|&t| t <= to)
        .collect();
    (ticks, step)
}

/// Whether a time axis over `range` with ticks every `step` shows seconds.
fn shows_seconds(range: i64, step: i64) -> bool {
    range < 10 * MIN || step % MIN != 0
}

/// A tick's label: the clock time, or the date where a day begins on a multi-day axis
/// (where "00:00" alone would not say which day).
fn time_label(t: i64, step: i64, range: i64) -> String {
    if step >= DAY || (range > DAY && t.rem_euclid(DAY) == 0) {
        return chrono::DateTime::from_timestamp_millis(t)
            .map(|d| d.format("%b %d").to_string())
            .unwrap_or_default();
    }
    fmt::clock(t, shows_seconds(range, step))
}

/// A time axis along the bottom of `plot`: grid lines, ticks, labels, "time (UTC)".
fn time_axis(xs: &Scale, from: i64, to: i64, plot: &Rect) -> Markup {
    let range = to - from;
    // "00:00:00" or "00:00"/"Dec 03", plus a gap between neighbours.
    let chars = if range < 10 * MIN { 8.0 } else { 6.0 };
    let label_w = chars * SMALL * CHAR_EM + 18.0;
    let (mut ticks, mut step) = time_ticks(from, to, (xs.len() / label_w) as usize);
    // A step that does not fall on whole minutes needs the wider labels after all.
    if shows_seconds(range, step) && chars < 8.0 {
        let w = 8.0 * SMALL * CHAR_EM + 18.0;
        (ticks, step) = time_ticks(from, to, (xs.len() / w) as usize);
    }
    html! {
        g class="axis x" font-size=(SMALL) fill=(INK_SOFT) {
            @for t in &ticks {
                @let x = xs.map_t(*t);
                line x1=(N(x)) x2=(N(x)) y1=(N(plot.y0)) y2=(N(plot.y1)) stroke=(GRID) {}
                line x1=(N(x)) x2=(N(x)) y1=(N(plot.y1)) y2=(N(plot.y1 + 4.0)) stroke=(GREY) {}
                text x=(N(x)) y=(N(plot.y1 + 16.0)) text-anchor="middle" { (time_label(*t, step, range)) }
            }
            text x=(N(plot.cx())) y=(N(plot.y1 + 34.0)) text-anchor="middle" font-size=(LABEL) fill=(INK) { "time (UTC)" }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Frame, legend, empty state
// ---------------------------------------------------------------------------------------

fn figure(class: &str, w: f64, h: f64, title: &str, notes: &[String], body: Markup) -> Markup {
    html! {
        figure.chart {
            svg xmlns="http://www.w3.org/2000/svg" viewBox=(format!("0 0 {} {}", N(w), N(h)))
                role="img" aria-label=(title) class=(class)
                font-family="system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif" font-size=(SMALL) {
                title { (title) }
                (body)
            }
            figcaption {
                (title)
                @for note in notes { " · " (note) }
            }
        }
    }
}

/// The message an empty chart shows in the middle of its frame.
fn empty_note(plot: &Rect, msg: &str, fallback: &str) -> Markup {
    let msg = if msg.trim().is_empty() { fallback } else { msg };
    let (shown, cut) = fit(msg, (plot.x1 - plot.x0 - 24.0).max(60.0), 14.0);
    html! {
        text class="empty" x=(N(plot.cx())) y=(N(plot.cy() + 5.0)) text-anchor="middle" font-size="14" fill=(GREY) {
            (shown)
            @if cut { title { (msg) } }
        }
    }
}

enum Swatch {
    Line(&'static str, Option<&'static str>),
    Fill(&'static str, f64),
    Dot(&'static str),
    Outline(&'static str),
}

struct LegendItem {
    label: String,
    swatch: Swatch,
}

const LEGEND_ROW: f64 = 18.0;

/// A legend flowing left to right from `(x0, y0)`, wrapping within `max_w`; its markup and
/// its height. Nothing when fewer than two items (a single colour needs no key).
fn legend(items: &[LegendItem], x0: f64, y0: f64, max_w: f64) -> (Markup, f64) {
    if items.len() < 2 {
        return (html! {}, 0.0);
    }
    let mut placed = Vec::with_capacity(items.len());
    let (mut x, mut row) = (x0, 0usize);
    for it in items {
        let (shown, cut) = fit(&it.label, 220.0, LABEL);
        let w = 22.0 + text_w(&shown, LABEL) + 18.0;
        if x > x0 && x + w > x0 + max_w {
            x = x0;
            row += 1;
        }
        placed.push((x, y0 + row as f64 * LEGEND_ROW, shown, cut, it));
        x += w;
    }
    let markup = html! {
        g class="legend" font-size=(LABEL) fill=(INK) {
            @for (x, y, shown, cut, it) in &placed {
                g {
                    @let (sx, sy) = (*x, *y + 8.0);
                    @match it.swatch {
                        Swatch::Line(c, dash) => {
                            line x1=(N(sx)) x2=(N(sx + 16.0)) y1=(N(sy)) y2=(N(sy)) stroke=(c) stroke-width="2.5" stroke-dasharray=[dash] {}
                        }
                        Swatch::Fill(c, op) => {
                            rect x=(N(sx)) y=(N(sy - 5.0)) width="16" height="10" fill=(c) fill-opacity=(op) {}
                        }
                        Swatch::Dot(c) => {
                            circle cx=(N(sx + 8.0)) cy=(N(sy)) r="5" fill=(c) {}
                        }
                        Swatch::Outline(c) => {
                            rect x=(N(sx)) y=(N(sy - 5.0)) width="16" height="10" fill="#ffffff" stroke=(c) stroke-width="2" {}
                        }
                    }
                    text x=(N(sx + 22.0)) y=(N(*y + 12.0)) {
                        (shown)
                        @if *cut { title { (it.label) } }
                    }
                }
            }
        }
    };
    (markup, (row + 1) as f64 * LEGEND_ROW)
}

/// Legend items for the tones in use, in a fixed order.
fn tone_legend(used: impl IntoIterator<Item = Tone>) -> Vec<LegendItem> {
    let used: Vec<Tone> = used.into_iter().collect();
    TONES
        .iter()
        .filter(|t| used.contains(t))
        .map(|&t| LegendItem {
            label: tone_name(t).into(),
            swatch: Swatch::Dot(tone_colour(t)),
        })
        .collect()
}

/// An arrowhead with its tip at `(x, y)`, pointing along `(dx, dy)`.
fn arrowhead(x: f64, y: f64, dx: f64, dy: f64, size: f64) -> String {
    let len = (dx * dx + dy * dy).sqrt();
    let (ux, uy) = if len > 1e-9 {
        (dx / len, dy / len)
    } else {
        (1.0, 0.0)
    };
    let (bx, by) = (x - ux * size, y - uy * size);
    let (px, py) = (-uy * size * 0.5, ux * size * 0.5);
    format!(
        "{},{} {},{} {},{}",
        N(x),
        N(y),
        N(bx + px),
        N(by + py),
        N(bx - px),
        N(by - py)
    )
}

/// `from`, `to` in order and at least a millisecond apart.
fn ordered_range(a: i64, b: i64) -> (i64, i64) {
    let (from, to) = (a.min(b), a.max(b));
    (from, to.max(from + 1))
}

// ---------------------------------------------------------------------------------------
// Time chart
// ---------------------------------------------------------------------------------------

/// The path of one series: a subpath per run of consecutive values (a `None` or a
/// non-finite value ends a run), and the points that stand alone (a one-point subpath
/// draws nothing, so those get a dot).
fn line_path(pts: &[(i64, Option<f64>)], xs: &Scale, ys: &Scale) -> (String, Vec<(f64, f64)>) {
    let mut d = String::new();
    let mut alone = Vec::new();
    let mut run: Vec<(f64, f64)> = Vec::new();
    let mut flush = |run: &mut Vec<(f64, f64)>, d: &mut String| {
        match run.len() {
            0 => {}
            1 => alone.push(run[0]),
            _ => {
                for (i, (x, y)) in run.iter().enumerate() {
                    let _ = write!(d, "{}{},{}", if i == 0 { "M" } else { "L" }, N(*x), N(*y));
                }
            }
        }
        run.clear();
    };
    for &(t, v) in pts {
        match v.filter(|v| v.is_finite()) {
            Some(v) => run.push((xs.map_t(t), ys.map(v))),
            None => flush(&mut run, &mut d),
        }
    }
    flush(&mut run, &mut d);
    (d, alone)
}

/// A time series: lines (gaps where values are missing) over a baseline band, with alert
/// spans shaded behind and marked points on top.
pub fn time_chart(c: &TimeChart) -> Markup {
    let (from, to) = ordered_range(c.from_ms, c.to_ms);
    let inside = |t: i64| t >= from && t <= to;

    let series: Vec<Vec<(i64, Option<f64>)>> = c
        .lines
        .iter()
        .map(|l| {
            let mut pts: Vec<(i64, Option<f64>)> = l
                .points
                .iter()
                .filter(|p| inside(p.0))
                .map(|&(t, v)| (t, v.filter(|v| v.is_finite())))
                .collect();
            pts.sort_by_key(|p| p.0);
            pts
        })
        .collect();
    let has_data = series.iter().flatten().any(|p| p.1.is_some());
    let mut band: Vec<(i64, f64, f64)> = c
        .band
        .as_ref()
        .map(|b| {
            b.points
                .iter()
                .filter(|p| inside(p.0) && p.1.is_finite() && p.2.is_finite())
                .copied()
                .collect()
        })
        .unwrap_or_default();
    band.sort_by_key(|p| p.0);
    let marks: Vec<&Mark> = c
        .marks
        .iter()
        .filter(|m| inside(m.at_ms) && m.value.is_finite())
        .collect();

    let mut items: Vec<LegendItem> = c
        .lines
        .iter()
        .enumerate()
        .map(|(i, l)| LegendItem {
            label: l.label.to_string(),
            swatch: Swatch::Line(series_colour(i), series_dash(i)),
        })
        .collect();
    if let Some(b) = &c.band {
        items.push(LegendItem {
            label: b.label.to_string(),
            swatch: Swatch::Fill(BAND_FILL, BAND_OPACITY),
        });
    }
    let (legend_markup, legend_h) = legend(&items, 16.0, 8.0, W - 32.0);

    // The value axis: from 0 (or the lowest value when negative) to the highest.
    let values = series
        .iter()
        .flatten()
        .filter_map(|p| p.1)
        .chain(band.iter().flat_map(|b| [b.1, b.2]))
        .chain(marks.iter().map(|m| m.value));
    let (lo, hi) = values.fold((0.0f64, 0.0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    const PLOT_H: f64 = 220.0;
    // Labels need ~30 units of height each to breathe.
    let yticks = if has_data {
        nice_ticks(lo, hi, ticks_for(PLOT_H, 30.0))
    } else {
        Vec::new()
    };
    let ylabels: Vec<String> = yticks.iter().map(|v| compact(*v)).collect();
    let ylabel_w = ylabels.iter().map(|s| text_w(s, SMALL)).fold(0.0, f64::max);
    let top = if legend_h > 0.0 {
        legend_h + 18.0
    } else {
        12.0
    };
    let plot = Rect {
        x0: (30.0 + ylabel_w + 10.0).max(56.0),
        y0: top,
        x1: W - 32.0,
        y1: top + PLOT_H,
    };
    let h = plot.y1 + 46.0;
    let xs = Scale::new(from as f64, to as f64, plot.x0, plot.x1);
    let (ylo, yhi) = match (yticks.first(), yticks.last()) {
        (Some(a), Some(b)) => (*a, *b),
        _ => (0.0, 1.0),
    };
    let ys = Scale::new(ylo, yhi, plot.y1, plot.y0);

    // Alert spans; each label goes in the first of three rows where it does not collide.
    let mut placer = Placer::default();
    let spans: Vec<_> = c
        .spans
        .iter()
        .filter(|s| s.from_ms <= to && s.to_ms.is_none_or(|e| e >= from))
        .map(|s| {
            let end = s.to_ms.unwrap_or(to).clamp(from, to);
            let xa = xs.map_t(s.from_ms.clamp(from, to));
            let xb = xs.map_t(end).max(xa + 2.0);
            let room = (plot.x1 - xa - 6.0).min((xb - xa - 6.0).max(140.0));
            let (shown, _) = fit(s.label, room, SMALL);
            let w = text_w(&shown, SMALL);
            let row_y = (0..3).map(|r| plot.y0 + 13.0 + r as f64 * 14.0).find(|&y| {
                !shown.is_empty()
                    && room >= 3.0 * SMALL
                    && placer.claim(Placer::text_box(xa + 4.0, y, w, SMALL, "start"))
            });
            let when = format!(
                "{} – {}",
                fmt::time(s.from_ms),
                s.to_ms
                    .map(fmt::time)
                    .unwrap_or_else(|| "still open".into())
            );
            (s, xa, xb, shown, row_y, when)
        })
        .collect();

    let body = html! {
        rect x=(N(plot.x0)) y=(N(plot.y0)) width=(N(plot.x1 - plot.x0)) height=(N(plot.y1 - plot.y0)) fill="#ffffff" stroke=(FRAME) {}
        (time_axis(&xs, from, to, &plot))
        @if has_data {
            g class="axis y" font-size=(SMALL) fill=(INK_SOFT) {
                @for (v, l) in yticks.iter().zip(&ylabels) {
                    @let y = ys.map(*v);
                    line x1=(N(plot.x0)) x2=(N(plot.x1)) y1=(N(y)) y2=(N(y)) stroke=(if *v == 0.0 && ylo < 0.0 { GREY } else { GRID }) {}
                    text x=(N(plot.x0 - 6.0)) y=(N(y + 4.0)) text-anchor="end" { (l) }
                }
            }
        }
        @if !c.unit.is_empty() {
            @let (unit, cut) = fit(c.unit, PLOT_H, LABEL);
            text x="16" y=(N(plot.cy())) transform=(format!("rotate(-90 16 {})", N(plot.cy()))) text-anchor="middle" font-size=(LABEL) fill=(INK) {
                (unit)
                @if cut { title { (c.unit) } }
            }
        }
        g class="spans" {
            @for (s, xa, xb, _, _, when) in &spans {
                rect class="span" x=(N(*xa)) y=(N(plot.y0)) width=(N(xb - xa)) height=(N(plot.y1 - plot.y0)) fill=(tone_colour(s.tone)) fill-opacity="0.12" {
                    title { (s.label) " (" (when) ")" }
                }
                line x1=(N(*xa)) x2=(N(*xa)) y1=(N(plot.y0)) y2=(N(plot.y1)) stroke=(tone_colour(s.tone)) stroke-width="1.5" {}
            }
        }
        @if has_data {
            @if band.len() >= 2 {
                @let d = {
                    let mut d = String::new();
                    for (i, (t, _, up)) in band.iter().enumerate() {
                        let _ = write!(d, "{}{},{}", if i == 0 { "M" } else { "L" }, N(xs.map_t(*t)), N(ys.map(*up)));
                    }
                    for (t, low, _) in band.iter().rev() {
                        let _ = write!(d, "L{},{}", N(xs.map_t(*t)), N(ys.map(*low)));
                    }
                    d.push('Z');
                    d
                };
                path class="band" d=(d) fill=(BAND_FILL) fill-opacity=(BAND_OPACITY) stroke="none" {
                    @if let Some(b) = &c.band { title { (b.label) } }
                }
            }
            @for (i, (line, pts)) in c.lines.iter().zip(&series).enumerate() {
                @let (d, alone) = line_path(pts, &xs, &ys);
                g class="series" {
                    title { (line.label) }
                    @if !d.is_empty() {
                        path class="line" d=(d) fill="none" stroke=(series_colour(i)) stroke-width="2"
                            stroke-linejoin="round" stroke-linecap="round" stroke-dasharray=[series_dash(i)] {}
                    }
                    @for (x, y) in &alone {
                        circle cx=(N(*x)) cy=(N(*y)) r="2.5" fill=(series_colour(i)) {}
                    }
                }
            }
            g class="marks" {
                @for m in &marks {
                    circle class="mark" cx=(N(xs.map_t(m.at_ms))) cy=(N(ys.map(m.value))) r="4.5"
                        fill=(tone_colour(m.tone)) stroke="#ffffff" stroke-width="1.5" {
                        title { (m.label) " — " (compact(m.value)) " " (c.unit) " at " (fmt::time(m.at_ms)) }
                    }
                }
            }
        }
        g class="span-labels" font-size=(SMALL) fill=(INK) {
            @for (s, xa, _, shown, row_y, _) in &spans {
                @if let Some(y) = row_y {
                    text x=(N(xa + 4.0)) y=(N(*y)) paint-order="stroke" stroke="#ffffff" stroke-width="3" stroke-linejoin="round" {
                        (shown)
                        title { (s.label) }
                    }
                }
            }
        }
        (legend_markup)
        @if !has_data { (empty_note(&plot, c.empty, "no data in this time range")) }
    };
    figure("chart-time", W, h, c.title, &[], body)
}

// ---------------------------------------------------------------------------------------
// Bars
// ---------------------------------------------------------------------------------------

/// At most this many bars; the caption says how many more there were.
const MAX_BARS: usize = 200;

/// Horizontal bars, one per item (label, value, tone), value printed at the bar's end;
/// e.g. open breaks by rule.
pub fn bars(title: &str, unit: &str, items: &[(String, f64, Tone)], empty: &str) -> Markup {
    const ROW: f64 = 26.0;
    const BAR: f64 = 16.0;
    let shown = &items[..items.len().min(MAX_BARS)];
    let mut notes = Vec::new();
    if items.len() > shown.len() {
        notes.push(format!(
            "{} more not shown",
            fmt::count((items.len() - shown.len()) as u64)
        ));
    }

    let (legend_markup, legend_h) =
        legend(&tone_legend(shown.iter().map(|i| i.2)), 16.0, 8.0, W - 32.0);
    let top = if legend_h > 0.0 {
        legend_h + 16.0
    } else {
        12.0
    };
    let label_col = shown
        .iter()
        .map(|i| text_w(&i.0, LABEL))
        .fold(0.0, f64::max)
        .min(W * 0.3);
    // Whole counts print in full (they are what the bar stands for); the rest compactly.
    let values: Vec<String> = shown
        .iter()
        .map(|i| {
            if i.1.is_finite() && i.1.fract() == 0.0 && i.1.abs() < 1e7 {
                let c = fmt::count(i.1.abs() as u64);
                if i.1 < 0.0 {
                    format!("-{c}")
                } else {
                    c
                }
            } else {
                compact(i.1)
            }
        })
        .collect();
    let value_w = values.iter().map(|s| text_w(s, SMALL)).fold(0.0, f64::max);
    let rows = shown.len().max(3) as f64;
    let plot = Rect {
        x0: 12.0 + label_col + 10.0,
        y0: top,
        x1: W - value_w - 18.0,
        y1: top + rows * ROW,
    };
    let h = plot.y1 + 44.0;

    let finite = shown.iter().map(|i| i.1).filter(|v| v.is_finite());
    let (lo, hi) = finite.fold((0.0f64, 0.0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let ticks = nice_ticks(
        lo,
        hi,
        ticks_for(plot.x1 - plot.x0, 6.0 * SMALL * CHAR_EM + 24.0),
    );
    let xs = Scale::new(ticks[0], ticks[ticks.len() - 1], plot.x0, plot.x1);
    let zero = xs.map(0.0);

    let body = html! {
        @if shown.is_empty() {
            rect x=(N(plot.x0)) y=(N(plot.y0)) width=(N(plot.x1 - plot.x0)) height=(N(plot.y1 - plot.y0)) fill="#ffffff" stroke=(FRAME) {}
            (empty_note(&plot, empty, "nothing to show"))
        } @else {
            g class="axis x" font-size=(SMALL) fill=(INK_SOFT) {
                @for v in &ticks {
                    @let x = xs.map(*v);
                    line x1=(N(x)) x2=(N(x)) y1=(N(plot.y0)) y2=(N(plot.y1)) stroke=(GRID) {}
                    text x=(N(x)) y=(N(plot.y1 + 16.0)) text-anchor="middle" { (compact(*v)) }
                }
                line x1=(N(zero)) x2=(N(zero)) y1=(N(plot.y0)) y2=(N(plot.y1)) stroke=(GREY) {}
                @if !unit.is_empty() {
                    text x=(N(plot.cx())) y=(N(plot.y1 + 34.0)) text-anchor="middle" font-size=(LABEL) fill=(INK) { (unit) }
                }
            }
            @for (i, ((label, v, tone), vl)) in shown.iter().zip(&values).enumerate() {
                @let y = plot.y0 + i as f64 * ROW + (ROW - BAR) / 2.0;
                @let end = if v.is_finite() { xs.map(*v) } else { zero };
                @let (lab, cut) = fit(label, label_col, LABEL);
                g class="bar-row" {
                    title { (label) ": " (vl) " " (unit) }
                    text x=(N(plot.x0 - 8.0)) y=(N(y + BAR - 3.0)) text-anchor="end" font-size=(LABEL) fill=(INK) {
                        (lab)
                        @if cut { title { (label) } }
                    }
                    rect class="bar" x=(N(zero.min(end))) y=(N(y)) width=(N((end - zero).abs())) height=(N(BAR)) fill=(tone_colour(*tone)) {}
                    text x=(N(zero.max(end) + 6.0)) y=(N(y + BAR - 3.0)) fill=(INK) { (vl) }
                }
            }
        }
        (legend_markup)
    };
    figure("chart-bars", W, h, title, &notes, body)
}

// ---------------------------------------------------------------------------------------
// Timeline
// ---------------------------------------------------------------------------------------

/// Above this many events in view, a lane is drawn as a density strip: one marker per
/// event would be unreadable and heavy.
const DENSITY_THRESHOLD: usize = 300;
/// At most this many links are drawn, spread evenly over the given ones.
const MAX_LINKS: usize = 200;

/// The indices of at most `max` of `n` items, spread evenly (deterministic, and a long
/// list is sampled across its whole length rather than cut after its first part).
fn spread(n: usize, max: usize) -> Vec<usize> {
    if n <= max {
        (0..n).collect()
    } else {
        (0..max).map(|i| i * n / max).collect()
    }
}

/// Events binned into `bins` equal slices of `[from, to]`: per bin the count and the worst
/// tone.
fn density(events: &[&TimelineEvent], from: i64, to: i64, bins: usize) -> Vec<(usize, Tone)> {
    let mut out = vec![(0usize, Tone::Neutral); bins.max(1)];
    let span = (to - from).max(1) as i128;
    for e in events {
        let i = (((e.at_ms - from) as i128 * out.len() as i128) / span)
            .clamp(0, out.len() as i128 - 1) as usize;
        let bin = &mut out[i];
        bin.0 += 1;
        if bin.0 == 1 || tone_rank(e.tone) > tone_rank(bin.1) {
            bin.1 = e.tone;
        }
    }
    out
}

/// A drill timeline: lanes of events along a time axis (lanes in the order given; a lane
/// that only an event or a link names is added after them), with links between events.
/// Lanes with more than [`DENSITY_THRESHOLD`] events in range become density strips
/// (binned counts, coloured by the worst tone in the bin); at most [`MAX_LINKS`] links are
/// drawn, spread over all of them, and the caption says how many of how many.
pub fn timeline(
    title: &str,
    from_ms: i64,
    to_ms: i64,
    lanes: &[&str],
    events: &[TimelineEvent],
    links: &[TimelineLink],
    empty: &str,
) -> Markup {
    const LANE_H: f64 = 44.0;
    let (from, to) = ordered_range(from_ms, to_ms);
    let inside = |t: i64| t >= from && t <= to;

    // Lanes as given, then any lane an event or link names, in order of appearance.
    let mut lane_names: Vec<&str> = Vec::new();
    let mut lane_of: HashMap<&str, usize> = HashMap::new();
    let names = lanes
        .iter()
        .copied()
        .chain(events.iter().map(|e| e.lane))
        .chain(links.iter().flat_map(|l| [l.from_lane, l.to_lane]));
    for name in names {
        lane_of.entry(name).or_insert_with(|| {
            lane_names.push(name);
            lane_names.len() - 1
        });
    }

    let mut per_lane: Vec<Vec<&TimelineEvent>> = vec![Vec::new(); lane_names.len()];
    for e in events.iter().filter(|e| inside(e.at_ms)) {
        per_lane[lane_of[e.lane]].push(e);
    }
    for lane in &mut per_lane {
        lane.sort_by_key(|e| e.at_ms);
    }
    let in_view: Vec<&TimelineLink> = links
        .iter()
        .filter(|l| l.from_ms.min(l.to_ms) <= to && l.from_ms.max(l.to_ms) >= from)
        .collect();
    let drawn_links: Vec<&TimelineLink> = spread(in_view.len(), MAX_LINKS)
        .into_iter()
        .map(|i| in_view[i])
        .collect();
    let nothing = per_lane.iter().all(|l| l.is_empty()) && drawn_links.is_empty();

    let mut items = tone_legend(per_lane.iter().flatten().map(|e| e.tone));
    if !items.is_empty() && !drawn_links.is_empty() {
        items.push(LegendItem {
            label: "link".into(),
            swatch: Swatch::Line(INK_SOFT, None),
        });
    }
    let (legend_markup, legend_h) = legend(&items, 16.0, 8.0, W - 32.0);
    let top = if legend_h > 0.0 {
        legend_h + 16.0
    } else {
        12.0
    };
    let label_col = lane_names
        .iter()
        .map(|l| text_w(l, LABEL))
        .fold(text_w("00 000 events", SMALL), f64::max)
        .min(170.0);
    let lanes_h = (lane_names.len() as f64 * LANE_H).max(LANE_H * 2.0);
    let plot = Rect {
        x0: 16.0 + label_col + 12.0,
        y0: top,
        x1: W - 32.0,
        y1: top + lanes_h,
    };
    let h = plot.y1 + 46.0;
    let xs = Scale::new(from as f64, to as f64, plot.x0, plot.x1);
    let lane_top = |i: usize| plot.y0 + i as f64 * LANE_H;
    let marker_y = |i: usize| lane_top(i) + 16.0;

    let mut notes = Vec::new();
    let dense: Vec<bool> = per_lane
        .iter()
        .map(|l| l.len() > DENSITY_THRESHOLD)
        .collect();
    let dense_names: Vec<&str> = lane_names
        .iter()
        .zip(&dense)
        .filter(|(_, d)| **d)
        .map(|(n, _)| *n)
        .collect();
    if !dense_names.is_empty() {
        notes.push(format!("{} drawn as event density", dense_names.join(", ")));
    }
    if !in_view.is_empty() {
        notes.push(if drawn_links.len() < in_view.len() {
            format!(
                "{} of {} links drawn",
                fmt::count(drawn_links.len() as u64),
                fmt::count(in_view.len() as u64)
            )
        } else {
            format!("{} links", fmt::count(in_view.len() as u64))
        });
    }

    // Link geometry: an S-curve between lanes, an arch within one lane.
    let link_geo: Vec<_> = drawn_links
        .iter()
        .map(|l| {
            let (x1, x2) = (xs.map_t(l.from_ms), xs.map_t(l.to_ms));
            let (y1, y2) = (marker_y(lane_of[l.from_lane]), marker_y(lane_of[l.to_lane]));
            // The tip stops at the edge of the target's marker, not under it.
            if l.from_lane == l.to_lane {
                let (xm, yc) = ((x1 + x2) / 2.0, y1 - 22.0);
                let (dx, dy) = (x2 - xm, y2 - yc);
                let len = (dx * dx + dy * dy).sqrt().max(1e-9);
                let (tx, ty) = (x2 - dx / len * 6.0, y2 - dy / len * 6.0);
                let d = format!(
                    "M{},{} Q{},{} {},{}",
                    N(x1),
                    N(y1),
                    N(xm),
                    N(yc),
                    N(tx),
                    N(ty)
                );
                (d, arrowhead(tx, ty, dx, dy, 7.0), xm, y1 - 14.0, *l)
            } else {
                let ym = (y1 + y2) / 2.0;
                let ty = y2 - (y2 - ym).signum() * 6.0;
                let d = format!(
                    "M{},{} C{},{} {},{} {},{}",
                    N(x1),
                    N(y1),
                    N(x1),
                    N(ym),
                    N(x2),
                    N(ym),
                    N(x2),
                    N(ty)
                );
                (
                    d,
                    arrowhead(x2, ty, 0.0, y2 - ym, 7.0),
                    (x1 + x2) / 2.0,
                    ym,
                    *l,
                )
            }
        })
        .collect();

    // Labels: the markers are blocked out first, then link labels (the time between two
    // events is what a drill is about) at their middles, then event labels below their
    // markers; whatever finds no free room stays as hover text.
    let mut placer = Placer::default();
    for (i, lane) in per_lane.iter().enumerate() {
        if dense[i] {
            let y = lane_top(i);
            placer.block([plot.x0, y + 8.0, plot.x1, y + LANE_H]);
            continue;
        }
        for e in lane {
            let (x, y) = (xs.map_t(e.at_ms), marker_y(i));
            placer.block([x - 5.0, y - 5.0, x + 5.0, y + 5.0]);
        }
    }
    let link_labels: Vec<Option<(f64, f64, String)>> = link_geo
        .iter()
        .map(|(_, _, mx, my, l)| {
            let (shown, _) = fit(l.label, 120.0, SMALL);
            let w = text_w(&shown, SMALL);
            let x = mx.clamp(plot.x0 + w / 2.0, plot.x1 - w / 2.0);
            if shown.is_empty() {
                return None;
            }
            [0.0, -12.0, 12.0]
                .iter()
                .map(|dy| my + 4.0 + dy)
                .find(|&y| placer.claim(Placer::text_box(x, y, w, SMALL, "middle")))
                .map(|y| (x, y, shown))
        })
        .collect();
    let mut event_labels: Vec<(f64, f64, String)> = Vec::new();
    for (i, lane) in per_lane.iter().enumerate() {
        if dense[i] {
            continue;
        }
        for e in lane {
            let (shown, _) = fit(e.label, 150.0, SMALL);
            let x = xs.map_t(e.at_ms);
            let y = lane_top(i) + 35.0;
            let w = text_w(&shown, SMALL);
            let x = x.clamp(plot.x0 + w / 2.0, plot.x1 - w / 2.0);
            if !shown.is_empty() && placer.claim(Placer::text_box(x, y, w, SMALL, "middle")) {
                event_labels.push((x, y, shown));
            }
        }
    }

    let bins = ((plot.x1 - plot.x0) / 4.0).floor().max(1.0) as usize;
    let bin_w = (plot.x1 - plot.x0) / bins as f64;
    let bin_ms = (to - from) as f64 / bins as f64;

    let body = html! {
        @for (i, name) in lane_names.iter().enumerate() {
            @let y = lane_top(i);
            @if i % 2 == 1 {
                rect x=(N(plot.x0)) y=(N(y)) width=(N(plot.x1 - plot.x0)) height=(N(LANE_H)) fill=(ZEBRA) {}
            }
            @let (shown, cut) = fit(name, label_col, LABEL);
            text x=(N(plot.x0 - 12.0)) y=(N(marker_y(i) + 4.0)) text-anchor="end" font-size=(LABEL) fill=(INK) {
                (shown)
                @if cut { title { (name) } }
            }
            @if dense[i] {
                text x=(N(plot.x0 - 12.0)) y=(N(marker_y(i) + 18.0)) text-anchor="end" font-size=(SMALL) fill=(GREY) {
                    (fmt::count(per_lane[i].len() as u64)) " events"
                }
            }
        }
        rect x=(N(plot.x0)) y=(N(plot.y0)) width=(N(plot.x1 - plot.x0)) height=(N(plot.y1 - plot.y0)) fill="none" stroke=(FRAME) {}
        (time_axis(&xs, from, to, &plot))
        g class="links" fill="none" stroke=(INK_SOFT) stroke-width="1.25" stroke-opacity="0.75" {
            @for (d, head, _, _, l) in &link_geo {
                g class="link" {
                    title { (l.label) ": " (l.from_lane) " " (fmt::time(l.from_ms)) " → " (l.to_lane) " " (fmt::time(l.to_ms)) }
                    path d=(d) {}
                    polygon points=(head) fill=(INK_SOFT) stroke="none" {}
                }
            }
        }
        @for (i, lane) in per_lane.iter().enumerate() {
            @if dense[i] {
                @let counts = density(lane, from, to, bins);
                @let max = counts.iter().map(|c| c.0).max().unwrap_or(1).max(1) as f64;
                @let base = lane_top(i) + LANE_H - 6.0;
                g class="lane density" {
                    @for (b, (count, tone)) in counts.iter().enumerate() {
                        @if *count > 0 {
                            @let bh = 3.0 + (LANE_H - 14.0) * (*count as f64 / max);
                            @let t0 = from + (b as f64 * bin_ms) as i64;
                            @let t1 = from + ((b + 1) as f64 * bin_ms) as i64;
                            rect class="density" x=(N(plot.x0 + b as f64 * bin_w)) y=(N(base - bh)) width=(N((bin_w - 0.5).max(0.5))) height=(N(bh)) fill=(tone_colour(*tone)) {
                                title { (fmt::count(*count as u64)) " events, " (fmt::time(t0)) " – " (fmt::time(t1)) }
                            }
                        }
                    }
                }
            } @else {
                g class="lane events" {
                    @for e in lane {
                        circle class="event" cx=(N(xs.map_t(e.at_ms))) cy=(N(marker_y(i))) r="5" fill=(tone_colour(e.tone)) stroke="#ffffff" stroke-width="1.5" {
                            title { (e.label) " — " (fmt::time(e.at_ms)) }
                        }
                    }
                }
            }
        }
        g class="labels" font-size=(SMALL) fill=(INK) text-anchor="middle" {
            @for (x, y, s) in &event_labels {
                text x=(N(*x)) y=(N(*y)) { (s) }
            }
            @for (x, y, s) in link_labels.iter().flatten() {
                text x=(N(*x)) y=(N(*y)) paint-order="stroke" stroke="#ffffff" stroke-width="3" stroke-linejoin="round" { (s) }
            }
        }
        (legend_markup)
        @if nothing { (empty_note(&plot, empty, "no events in this time range")) }
    };
    figure("chart-timeline", W, h, title, &notes, body)
}

// ---------------------------------------------------------------------------------------
// Waterfall
// ---------------------------------------------------------------------------------------

/// At most this many waterfall rows; the caption says how many were left out.
const MAX_ROWS: usize = 400;
const LAYERS: [(&str, &str); 5] = [
    ("experience", BLUE),
    ("network", SKY),
    ("backend", ORANGE),
    ("database", PURPLE),
    ("fund", GREEN),
];

fn layer_colour(layer: &str) -> &'static str {
    LAYERS
        .iter()
        .find(|(name, _)| *name == layer)
        .map(|(_, c)| *c)
        .unwrap_or(GREY)
}

/// Ticks for an offset axis that must end exactly at `hi` (the journey's end): the
/// nice ticks that fall within `[lo, hi]`.
fn offset_ticks(lo: f64, hi: f64, max_ticks: usize) -> Vec<f64> {
    nice_ticks(lo, hi, max_ticks)
        .into_iter()
        .filter(|t| *t >= lo - 1e-9 && *t <= hi + 1e-9 * hi.abs().max(1.0))
        .collect()
}

/// A journey waterfall: a row per span or event, labels indented by depth, bars on a
/// shared offset axis, the duration after each bar.
pub fn waterfall(title: &str, rows: &[WaterfallRow], empty: &str) -> Markup {
    const ROW: f64 = 22.0;
    const BAR: f64 = 12.0;
    const LABEL_COL: f64 = 300.0;
    let shown = &rows[..rows.len().min(MAX_ROWS)];
    let mut notes = Vec::new();
    if rows.len() > shown.len() {
        notes.push(format!(
            "first {} of {} rows shown, {} left out",
            fmt::count(shown.len() as u64),
            fmt::count(rows.len() as u64),
            fmt::count((rows.len() - shown.len()) as u64)
        ));
    }
    let clean = |v: f64| if v.is_finite() { v } else { 0.0 };
    let start = |r: &WaterfallRow| clean(r.start_ms);
    let dur = |r: &WaterfallRow| clean(r.duration_ms).max(0.0);

    let mut items: Vec<LegendItem> = LAYERS
        .iter()
        .filter(|(name, _)| shown.iter().any(|r| r.layer == *name))
        .map(|(name, c)| LegendItem {
            label: (*name).into(),
            swatch: Swatch::Fill(c, 1.0),
        })
        .collect();
    if shown
        .iter()
        .any(|r| !LAYERS.iter().any(|(n, _)| *n == r.layer))
    {
        items.push(LegendItem {
            label: "other".into(),
            swatch: Swatch::Fill(GREY, 1.0),
        });
    }
    if shown.iter().any(|r| r.error) {
        items.push(LegendItem {
            label: "error".into(),
            swatch: Swatch::Outline(VERMILLION),
        });
    }
    let (legend_markup, legend_h) = legend(&items, 16.0, 8.0, W - 32.0);
    let axis_y = if legend_h > 0.0 {
        legend_h + 34.0
    } else {
        28.0
    };
    let n_rows = shown.len().max(3);
    let plot = Rect {
        x0: LABEL_COL + 20.0,
        y0: axis_y + 6.0,
        x1: W - 90.0,
        y1: axis_y + 6.0 + n_rows as f64 * ROW,
    };
    let bottom_axis = shown.len() > 25;
    let h = plot.y1 + if bottom_axis { 24.0 } else { 10.0 };

    let lo = shown.iter().map(start).fold(0.0, f64::min);
    let hi = shown.iter().map(|r| start(r) + dur(r)).fold(lo, f64::max);
    let hi = if hi > lo { hi } else { lo + 1.0 };
    let in_s = hi - lo >= 2000.0;
    let tick_label = |v: f64| compact(if in_s { v / 1000.0 } else { v });
    let ticks = offset_ticks(
        lo,
        hi,
        ticks_for(plot.x1 - plot.x0, 5.0 * SMALL * CHAR_EM + 28.0),
    );
    let xs = Scale::new(lo, hi, plot.x0, plot.x1);
    let axis_title = if in_s {
        "time since start (s)"
    } else {
        "time since start (ms)"
    };

    let body = html! {
        @if shown.is_empty() {
            rect x=(N(plot.x0)) y=(N(plot.y0)) width=(N(plot.x1 - plot.x0)) height=(N(plot.y1 - plot.y0)) fill="#ffffff" stroke=(FRAME) {}
            (empty_note(&Rect { x0: 16.0, ..plot }, empty, "no spans in this journey"))
        } @else {
            @for i in (1..shown.len()).step_by(2) {
                rect x="8" y=(N(plot.y0 + i as f64 * ROW)) width=(N(W - 16.0)) height=(N(ROW)) fill=(ZEBRA) {}
            }
            g class="axis x" font-size=(SMALL) fill=(INK_SOFT) {
                text x=(N(LABEL_COL)) y=(N(axis_y - 4.0)) text-anchor="end" font-size=(LABEL) fill=(INK) { (axis_title) }
                @for v in &ticks {
                    @let x = xs.map(*v);
                    line x1=(N(x)) x2=(N(x)) y1=(N(plot.y0)) y2=(N(plot.y1)) stroke=(GRID) {}
                    text x=(N(x)) y=(N(axis_y - 4.0)) text-anchor="middle" { (tick_label(*v)) }
                    @if bottom_axis {
                        text x=(N(x)) y=(N(plot.y1 + 16.0)) text-anchor="middle" { (tick_label(*v)) }
                    }
                }
            }
            @for (i, r) in shown.iter().enumerate() {
                @let y = plot.y0 + i as f64 * ROW;
                @let by = y + (ROW - BAR) / 2.0;
                @let x = xs.map(start(r));
                @let end = xs.map(start(r) + dur(r));
                @let indent = r.depth.min(12) as f64 * 12.0;
                @let (lab, _) = fit(r.label, LABEL_COL - 22.0 - indent, LABEL);
                @let colour = layer_colour(r.layer);
                @let dl = dur_label(dur(r));
                @let row = html! {
                    g class=(if r.error { "row error" } else { "row" }) {
                        title {
                            (r.label) " (" (r.layer) "): starts at " (if start(r) > 0.0 { dur_label(start(r)) } else { "0 ms".into() })
                            @if dur(r) > 0.0 { ", takes " (dl) } @else { ", instant" }
                            @if r.error { ", failed" }
                        }
                        @if r.error {
                            text x="12" y=(N(y + 15.0)) font-size=(LABEL) font-weight="700" fill=(VERMILLION) { "!" }
                        }
                        text x=(N(22.0 + indent)) y=(N(y + 15.0)) font-size=(LABEL) fill=(if r.href.is_some() { BLUE } else { INK }) { (lab) }
                        @if dur(r) > 0.0 {
                            rect class="bar" x=(N(x)) y=(N(by)) width=(N((end - x).max(1.5))) height=(N(BAR)) fill=(colour)
                                stroke=(if r.error { VERMILLION } else { "none" }) stroke-width=(if r.error { "2" } else { "0" }) {}
                        } @else {
                            polygon class="instant" points=(format!("{},{} {},{} {},{} {},{}", N(x), N(by - 1.0), N(x + 7.0), N(by + BAR / 2.0), N(x), N(by + BAR + 1.0), N(x - 7.0), N(by + BAR / 2.0)))
                                fill=(colour) stroke=(if r.error { VERMILLION } else { "#ffffff" }) stroke-width=(if r.error { "2" } else { "1" }) {}
                        }
                        text x=(N(end.max(x + 7.0) + 6.0)) y=(N(y + 15.0)) fill=(INK_SOFT) {
                            (dl)
                            @if r.error { tspan font-weight="700" fill=(VERMILLION) { " !" } }
                        }
                    }
                };
                @if let Some(href) = r.href {
                    a href=(href) { (row) }
                } @else {
                    (row)
                }
            }
        }
        (legend_markup)
    };
    figure("chart-waterfall", W, h, title, &notes, body)
}

// ---------------------------------------------------------------------------------------
// Service map
// ---------------------------------------------------------------------------------------

/// The layered layout of a directed graph (Sugiyama style).
#[derive(Debug)]
struct MapLayout {
    /// The layer (column) of every vertex: the `n` nodes, then the dummies.
    layer: Vec<usize>,
    /// Per layer, its vertices top to bottom; indices from `n` on are dummies, the points
    /// a long edge passes through in the layers it crosses.
    rows: Vec<Vec<usize>>,
    /// Per edge: whether it was reversed to break a cycle.
    back: Vec<bool>,
    /// Per edge: the vertices it runs through from its left end to its right end (its
    /// caller first, or its callee first when reversed); empty for a self-call.
    chains: Vec<Vec<usize>>,
}

/// Lays out `n` nodes and the edges between them (indices).
///
/// Cycles are broken by a depth-first search that starts from the nodes without callers,
/// in input order: the edges that close a cycle are reversed for the layout. Layers are
/// longest paths from the nodes without callers, so every other call points right. An
/// edge spanning several layers gets a dummy vertex in each layer in between, so it is
/// routed around the boxes there rather than through them, and takes part in the
/// ordering. Within a layer, vertices start in input order; then barycentre passes (down,
/// up, down) move each towards the mean position of its neighbours in the layer before,
/// which removes most crossings. Sorting is stable with index tie-breaks: the same input
/// always gives the same layout.
fn map_layout(n: usize, edges: &[(usize, usize)]) -> MapLayout {
    let mut out: Vec<Vec<(usize, usize)>> = vec![Vec::new(); n];
    let mut indeg = vec![0usize; n];
    for (e, &(u, v)) in edges.iter().enumerate() {
        if u != v {
            out[u].push((v, e));
            indeg[v] += 1;
        }
    }

    // Iterative DFS (a long chain of calls must not overflow the stack):
    // 0 unseen, 1 on the current path, 2 finished.
    let mut state = vec![0u8; n];
    let mut back = vec![false; edges.len()];
    let roots: Vec<usize> = (0..n).filter(|&v| indeg[v] == 0).chain(0..n).collect();
    for root in roots {
        if state[root] != 0 {
            continue;
        }
        state[root] = 1;
        let mut stack = vec![(root, 0usize)];
        while let Some(top) = stack.last_mut() {
            let v = top.0;
            if let Some(&(w, e)) = out[v].get(top.1) {
                top.1 += 1;
                match state[w] {
                    0 => {
                        state[w] = 1;
                        stack.push((w, 0));
                    }
                    1 => back[e] = true,
                    _ => {}
                }
            } else {
                state[v] = 2;
                stack.pop();
            }
        }
    }

    // Longest path over the acyclic rest, in Kahn's order.
    let mut dag_out: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut dag_in = vec![0usize; n];
    for (e, &(u, v)) in edges.iter().enumerate() {
        if u != v && !back[e] {
            dag_out[u].push(v);
            dag_in[v] += 1;
        }
    }
    let mut layer = vec![0usize; n];
    let mut queue: VecDeque<usize> = (0..n).filter(|&v| dag_in[v] == 0).collect();
    while let Some(u) = queue.pop_front() {
        for &v in &dag_out[u] {
            layer[v] = layer[v].max(layer[u] + 1);
            dag_in[v] -= 1;
            if dag_in[v] == 0 {
                queue.push_back(v);
            }
        }
    }

    // Chains, with dummies in the layers an edge crosses. A reversed edge v → u (u on
    // the path to v) runs from u's layer, which is lower, to v's.
    let mut chains: Vec<Vec<usize>> = Vec::with_capacity(edges.len());
    for (e, &(u, v)) in edges.iter().enumerate() {
        if u == v {
            chains.push(Vec::new());
            continue;
        }
        let (a, b) = if back[e] { (v, u) } else { (u, v) };
        let mut chain = vec![a];
        for l in layer[a] + 1..layer[b] {
            chain.push(layer.len());
            layer.push(l);
        }
        chain.push(b);
        chains.push(chain);
    }

    let layers = layer.iter().max().map_or(0, |m| m + 1);
    let mut rows: Vec<Vec<usize>> = vec![Vec::new(); layers];
    for (v, &l) in layer.iter().enumerate() {
        rows[l].push(v);
    }
    let mut nbrs: Vec<Vec<usize>> = vec![Vec::new(); layer.len()];
    for chain in &chains {
        for w in chain.windows(2) {
            nbrs[w[0]].push(w[1]);
            nbrs[w[1]].push(w[0]);
        }
    }
    // Positions as fractions of their layer's height, so layers of different sizes compare.
    let mut pos = vec![0.0f64; layer.len()];
    let set_pos = |row: &[usize], pos: &mut [f64]| {
        for (i, &v) in row.iter().enumerate() {
            pos[v] = (i as f64 + 0.5) / row.len() as f64;
        }
    };
    for row in &rows {
        set_pos(row, &mut pos);
    }
    for down in [true, false, true] {
        let order: Vec<usize> = if down {
            (1..layers).collect()
        } else {
            (0..layers.saturating_sub(1)).rev().collect()
        };
        for l in order {
            let from = if down { l - 1 } else { l + 1 };
            let mut keyed: Vec<(f64, usize, usize)> = rows[l]
                .iter()
                .enumerate()
                .map(|(i, &v)| {
                    let (sum, count) = nbrs[v]
                        .iter()
                        .filter(|&&u| layer[u] == from)
                        .fold((0.0, 0usize), |(s, c), &u| (s + pos[u], c + 1));
                    // A vertex without neighbours there keeps its place.
                    let key = if count == 0 {
                        pos[v]
                    } else {
                        sum / count as f64
                    };
                    (key, i, v)
                })
                .collect();
            keyed.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            rows[l] = keyed.into_iter().map(|k| k.2).collect();
            set_pos(&rows[l], &mut pos);
        }
    }
    MapLayout {
        layer,
        rows,
        back,
        chains,
    }
}

/// The service map: services as boxes in layers from callers (left) to callees (right),
/// calls as curved arrows coloured by health with their label at the middle.
pub fn service_map(title: &str, nodes: &[MapNode], edges: &[MapEdge], empty: &str) -> Markup {
    const NODE_W: f64 = 150.0;
    const NODE_H: f64 = 48.0;
    const DUMMY_H: f64 = 12.0;
    const COL_GAP: f64 = 120.0;
    const GAP: f64 = 22.0;
    const MARGIN: f64 = 24.0;

    // The first node with an id wins; edges naming unknown nodes are skipped.
    let mut index: HashMap<&str, usize> = HashMap::new();
    let mut uniq: Vec<&MapNode> = Vec::new();
    for n in nodes {
        index.entry(n.id).or_insert_with(|| {
            uniq.push(n);
            uniq.len() - 1
        });
    }
    let n = uniq.len();
    let known: Vec<(usize, usize, &MapEdge)> = edges
        .iter()
        .filter_map(|e| Some((*index.get(e.from)?, *index.get(e.to)?, e)))
        .collect();
    let mut notes = Vec::new();
    if known.len() < edges.len() {
        notes.push(format!(
            "{} calls to or from unknown services not drawn",
            fmt::count((edges.len() - known.len()) as u64)
        ));
    }
    let pairs: Vec<(usize, usize)> = known.iter().map(|k| (k.0, k.1)).collect();
    let lay = map_layout(n, &pairs);

    let items = tone_legend(
        uniq.iter()
            .map(|n| n.tone)
            .chain(known.iter().map(|k| k.2.tone)),
    );
    let (legend_markup, legend_h) = legend(&items, 16.0, 8.0, W - 32.0);
    // Self-calls loop above their box: a little room for the topmost.
    let top = if legend_h > 0.0 {
        legend_h + 30.0
    } else {
        MARGIN + 12.0
    };

    let slot_h = |v: usize| if v < n { NODE_H } else { DUMMY_H };
    let col_h = |row: &[usize]| {
        row.iter().map(|&v| slot_h(v)).sum::<f64>() + row.len().saturating_sub(1) as f64 * GAP
    };
    let cols = lay.rows.len().max(1) as f64;
    let content_w = cols * NODE_W + (cols - 1.0) * COL_GAP;
    // Wide graphs widen the viewBox rather than squeezing boxes and labels.
    let w = (content_w + 2.0 * MARGIN).max(W);
    let ox = (w - content_w) / 2.0;
    let content_h = lay.rows.iter().map(|r| col_h(r)).fold(NODE_H, f64::max);
    let h = top + content_h + MARGIN;

    // Top-left corner of every vertex's slot.
    let mut at = vec![(0.0f64, 0.0f64); lay.layer.len()];
    for (l, row) in lay.rows.iter().enumerate() {
        let mut y = top + (content_h - col_h(row)) / 2.0;
        for &v in row {
            at[v] = (ox + l as f64 * (NODE_W + COL_GAP), y);
            y += slot_h(v) + GAP;
        }
    }
    let mid_y = |v: usize| at[v].1 + slot_h(v) / 2.0;

    // Ports: the edges leaving a box's right side (entering its left side) are spread
    // along it in the order of where they go, so they neither bunch up nor cross there.
    let mut right_port = vec![0.0f64; known.len()];
    let mut left_port = vec![0.0f64; known.len()];
    let mut leaving: Vec<Vec<(f64, usize)>> = vec![Vec::new(); n];
    let mut entering: Vec<Vec<(f64, usize)>> = vec![Vec::new(); n];
    for (e, chain) in lay.chains.iter().enumerate() {
        if chain.len() >= 2 {
            let (a, b) = (chain[0], chain[chain.len() - 1]);
            leaving[a].push((mid_y(chain[1]), e));
            entering[b].push((mid_y(chain[chain.len() - 2]), e));
        }
    }
    for (v, (lv, en)) in leaving.iter_mut().zip(&mut entering).enumerate() {
        for (list, ports) in [(lv, &mut right_port), (en, &mut left_port)] {
            list.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            let k = list.len() as f64;
            for (i, &(_, e)) in list.iter().enumerate() {
                let spread = (NODE_H - 16.0) * ((i as f64 + 1.0) / (k + 1.0) - 0.5);
                ports[e] = mid_y(v) + spread;
            }
        }
    }

    let mut placer = Placer::default();
    for &(x, y) in &at[..n] {
        placer.block([x - 2.0, y - 2.0, x + NODE_W + 2.0, y + NODE_H + 2.0]);
    }
    let edge_geo: Vec<_> = known
        .iter()
        .enumerate()
        .map(|(e, &(u, v, edge))| {
            let chain = &lay.chains[e];
            let mut d = String::new();
            let (head, label_at) = if chain.is_empty() {
                // A self-call: a loop over the box's top right corner.
                let (x, y) = at[u];
                let (a, b) = (x + NODE_W - 46.0, x + NODE_W - 16.0);
                let _ = write!(
                    d,
                    "M{},{} C{},{} {},{} {},{}",
                    N(a),
                    N(y),
                    N(a - 4.0),
                    N(y - 26.0),
                    N(b + 4.0),
                    N(y - 26.0),
                    N(b),
                    N(y)
                );
                (arrowhead(b, y, -4.0, 26.0, 8.0), ((a + b) / 2.0, y - 24.0))
            } else {
                // Exit and entry points of each hop: out of the left end's right side,
                // across each dummy's column, into the right end's left side.
                let (a, b) = (chain[0], chain[chain.len() - 1]);
                let mut pts = vec![(at[a].0 + NODE_W, right_port[e])];
                for &dv in &chain[1..chain.len() - 1] {
                    pts.push((at[dv].0, mid_y(dv)));
                    pts.push((at[dv].0 + NODE_W, mid_y(dv)));
                }
                pts.push((at[b].0, left_port[e]));
                let _ = write!(d, "M{},{}", N(pts[0].0), N(pts[0].1));
                for j in (0..pts.len()).step_by(2) {
                    let ((x0, y0), (x1, y1)) = (pts[j], pts[j + 1]);
                    let dx = (x1 - x0) / 2.0;
                    let _ = write!(
                        d,
                        " C{},{} {},{} {},{}",
                        N(x0 + dx),
                        N(y0),
                        N(x1 - dx),
                        N(y1),
                        N(x1),
                        N(y1)
                    );
                    if let Some(&(x2, y2)) = pts.get(j + 2) {
                        let _ = write!(d, " L{},{}", N(x2), N(y2));
                    }
                }
                let hops = pts.len() / 2;
                let m = 2 * ((hops - 1) / 2);
                let mid = (
                    (pts[m].0 + pts[m + 1].0) / 2.0,
                    (pts[m].1 + pts[m + 1].1) / 2.0,
                );
                // A reversed edge points back at its left end.
                let head = if lay.back[e] {
                    arrowhead(pts[0].0, pts[0].1, -1.0, 0.0, 9.0)
                } else {
                    let last = pts[pts.len() - 1];
                    arrowhead(last.0, last.1, 1.0, 0.0, 9.0)
                };
                (head, mid)
            };
            let (shown, _) = fit(edge.label, COL_GAP - 10.0, SMALL);
            let tw = text_w(&shown, SMALL);
            let (mx, my) = label_at;
            let label = if shown.is_empty() {
                None
            } else {
                [0.0, -13.0, 13.0, -26.0, 26.0]
                    .iter()
                    .map(|dy| my + 4.0 + dy)
                    .find(|&y| placer.claim(Placer::text_box(mx, y, tw, SMALL, "middle")))
                    .map(|y| (mx, y, shown))
            };
            (d, head, label, u, v, edge)
        })
        .collect();

    let body = html! {
        @if uniq.is_empty() {
            @let frame = Rect { x0: MARGIN, y0: top - 12.0, x1: w - MARGIN, y1: h - MARGIN / 2.0 };
            rect x=(N(frame.x0)) y=(N(frame.y0)) width=(N(frame.x1 - frame.x0)) height=(N(frame.y1 - frame.y0)) fill="#ffffff" stroke=(FRAME) {}
            (empty_note(&frame, empty, "no services seen"))
        }
        g class="edges" fill="none" {
            @for (d, head, _, u, v, e) in &edge_geo {
                @let c = tone_colour(e.tone);
                g class="edge" {
                    title { (uniq[*u].label) " → " (uniq[*v].label) @if !e.label.is_empty() { ": " (e.label) } }
                    path d=(d) stroke=(c) stroke-width=(match e.tone { Tone::Bad => "2.75", Tone::Warn => "2.25", _ => "1.75" }) {}
                    polygon points=(head) fill=(c) stroke="none" {}
                }
            }
        }
        g class="nodes" {
            @for (i, node) in uniq.iter().enumerate() {
                @let (x, y) = at[i];
                @let (label, _) = fit(node.label, NODE_W - 16.0, 13.0);
                @let (detail, _) = fit(node.detail, NODE_W - 16.0, SMALL);
                @let drawn = html! {
                    g class="node" {
                        title { (node.label) @if !node.detail.is_empty() { " — " (node.detail) } " (" (tone_name(node.tone)) ")" }
                        rect x=(N(x)) y=(N(y)) width=(N(NODE_W)) height=(N(NODE_H)) rx="8" fill=(tone_tint(node.tone)) stroke=(tone_colour(node.tone)) stroke-width="2" {}
                        text x=(N(x + 8.0)) y=(N(y + 20.0)) font-size="13" font-weight="600" fill=(if node.href.is_some() { BLUE } else { INK }) { (label) }
                        text x=(N(x + 8.0)) y=(N(y + 37.0)) font-size=(SMALL) fill=(INK_SOFT) { (detail) }
                    }
                };
                @if let Some(href) = node.href {
                    a href=(href) { (drawn) }
                } @else {
                    (drawn)
                }
            }
        }
        g class="edge-labels" font-size=(SMALL) fill=(INK) text-anchor="middle" {
            @for (_, _, label, _, _, _) in &edge_geo {
                @if let Some((x, y, s)) = label {
                    text x=(N(*x)) y=(N(*y)) paint-order="stroke" stroke="#ffffff" stroke-width="3" stroke-linejoin="round" { (s) }
                }
            }
        }
        (legend_markup)
    };
    figure("chart-map", w, h, title, &notes, body)
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    /// The start tags `<tag ...>` in `svg` that carry `class="class"`.
    fn tags<'s>(svg: &'s str, tag: &str, class: &str) -> Vec<&'s str> {
        let open = format!("<{tag} ");
        let want = format!("class=\"{class}\"");
        svg.match_indices(&open)
            .map(|(i, _)| &svg[i..i + svg[i..].find('>').unwrap()])
            .filter(|t| t.contains(&want))
            .collect()
    }

    fn attr(tag: &str, name: &str) -> String {
        let key = format!(" {name}=\"");
        let i = tag.find(&key).unwrap_or_else(|| panic!("{name} in {tag}")) + key.len();
        tag[i..i + tag[i..].find('"').unwrap()].to_string()
    }

    fn num(tag: &str, name: &str) -> f64 {
        attr(tag, name).parse().unwrap()
    }

    fn view_box(svg: &str) -> (f64, f64) {
        let v = attr(tags(svg, "svg", svg_class(svg))[0], "viewBox");
        let p: Vec<f64> = v.split(' ').map(|s| s.parse().unwrap()).collect();
        (p[2], p[3])
    }

    fn svg_class(svg: &str) -> &'static str {
        [
            "chart-time",
            "chart-bars",
            "chart-timeline",
            "chart-waterfall",
            "chart-map",
        ]
        .into_iter()
        .find(|c| svg.contains(&format!("class=\"{c}\"")))
        .unwrap()
    }

    #[test]
    fn nice_ticks_cover_the_data_on_1_2_5_steps() {
        let cases = [
            (0.0, 1.0),
            (0.0, 7.3),
            (0.0, 0.013),
            (0.0, 12_345.0),
            (-3.2, 18.0),
            (-1500.0, -20.0),
            (0.0, 999_999.0),
            (5.0, 5.0),
            (0.0, 0.0),
            (0.0, 2.0e9),
        ];
        for (lo, hi) in cases {
            for max in [2, 3, 5, 7, 11] {
                let t = nice_ticks(lo, hi, max);
                assert!(
                    t.len() >= 2 && t.len() <= max,
                    "{lo}..{hi} max {max}: {t:?}"
                );
                let step = t[1] - t[0];
                assert!(t[0] <= lo.min(hi) + 1e-9 * step, "{t:?} starts above {lo}");
                assert!(
                    *t.last().unwrap() >= hi - 1e-9 * step,
                    "{t:?} ends below {hi}"
                );
                for w in t.windows(2) {
                    assert!(((w[1] - w[0]) - step).abs() <= 1e-9 * step, "uneven {t:?}");
                }
                let mantissa = step / 10f64.powf(step.log10().floor());
                assert!(
                    [1.0, 2.0, 5.0].iter().any(|m| (mantissa - m).abs() < 1e-6),
                    "step {step} of {t:?}"
                );
            }
        }
        // From zero for positive data, from the minimum when negative.
        assert_eq!(nice_ticks(0.0, 87.0, 6)[0], 0.0);
        assert!(nice_ticks(-12.0, 40.0, 6)[0] <= -12.0);
    }

    #[test]
    fn compact_labels_are_short() {
        assert_eq!(compact(0.0), "0");
        assert_eq!(compact(0.25), "0.25");
        assert_eq!(compact(1500.0), "1.5k");
        assert_eq!(compact(2_000_000.0), "2M");
        assert_eq!(compact(12.5), "12.5");
        assert_eq!(compact(250.0), "250");
        assert_eq!(compact(-1500.0), "-1.5k");
        assert_eq!(compact(0.005), "0.005");
        assert_eq!(dur_label(0.35), "0.35 ms");
        assert_eq!(dur_label(850.0), "850 ms");
        assert_eq!(dur_label(1250.0), "1.2 s");
        assert_eq!(dur_label(0.0), "instant");
    }

    #[test]
    fn time_ticks_are_in_range_evenly_spaced_and_round() {
        let base = 1_764_770_000_123i64; // some time in December 2025, off the second
        for range in [
            3 * SEC,
            45 * SEC,
            7 * MIN,
            50 * MIN,
            6 * HOUR,
            3 * DAY,
            40 * DAY,
            4000 * DAY,
        ] {
            for max in [3, 6, 12] {
                let (t, step) = time_ticks(base, base + range, max);
                assert!(TIME_STEPS.contains(&step) || step % (365 * DAY) == 0);
                assert!(
                    !t.is_empty() && t.len() <= max,
                    "{range} {max}: {} ticks",
                    t.len()
                );
                assert!(t.iter().all(|x| *x >= base && *x <= base + range));
                assert!(t.windows(2).all(|w| w[1] - w[0] == step));
                assert!(t.iter().all(|x| x % step == 0), "ticks fall on round times");
            }
        }
        // Short ranges read in seconds, long ones in minutes.
        let (t, step) = time_ticks(0, 5 * MIN, 8);
        assert_eq!(step, MIN);
        assert_eq!(time_label(t[1], step, 5 * MIN), "00:01:00");
        let (t, step) = time_ticks(0, 6 * HOUR, 8);
        assert_eq!(step, HOUR);
        assert_eq!(time_label(t[1], step, 6 * HOUR), "01:00");
    }

    #[test]
    fn scales_keep_points_inside_the_plot() {
        let s = Scale::new(0.0, 100.0, 50.0, 950.0);
        assert_eq!(s.map(0.0), 50.0);
        assert_eq!(s.map(100.0), 950.0);
        assert_eq!(s.map(50.0), 500.0);
        assert_eq!(s.map(-10.0), 50.0);
        assert_eq!(s.map(1e9), 950.0);
        assert_eq!(s.map(f64::NAN), 500.0);
        let inverted = Scale::new(0.0, 10.0, 300.0, 20.0);
        assert_eq!(inverted.map(10.0), 20.0);
        assert_eq!(inverted.map(20.0), 20.0);
    }

    fn chart<'a>(lines: Vec<Line<'a>>) -> TimeChart<'a> {
        TimeChart {
            title: "Latency",
            unit: "ms",
            from_ms: 0,
            to_ms: 60_000,
            lines,
            band: None,
            spans: Vec::new(),
            marks: Vec::new(),
            empty: "no data in this time range",
        }
    }

    #[test]
    fn time_chart_points_land_inside_the_plot_rectangle() {
        let pts: Vec<(i64, Option<f64>)> = (0..=60)
            .map(|i| (i * 1000, Some(((i * 37) % 23) as f64 * 13.7)))
            .collect();
        let band: Vec<(i64, f64, f64)> = (0..=60).map(|i| (i * 1000, 10.0, 400.0)).collect();
        let mut c = chart(vec![Line {
            label: "p99",
            points: &pts,
        }]);
        c.band = Some(Band {
            label: "baseline",
            points: &band,
        });
        c.marks = vec![Mark {
            at_ms: 30_000,
            value: 280.0,
            label: "anomaly",
            tone: Tone::Bad,
        }];
        let svg = time_chart(&c).into_string();
        let frame = tags(&svg, "rect", "span");
        assert!(frame.is_empty());
        // The plot rectangle is the first rect.
        let rect = &svg[svg.find("<rect ").unwrap()..];
        let (x0, y0) = (num(rect, "x"), num(rect, "y"));
        let (x1, y1) = (x0 + num(rect, "width"), y0 + num(rect, "height"));
        let d = attr(tags(&svg, "path", "line")[0], "d");
        let coords: Vec<(f64, f64)> = d
            .split(['M', 'L'])
            .filter(|s| !s.is_empty())
            .map(|p| {
                let (x, y) = p.split_once(',').unwrap();
                (x.parse().unwrap(), y.parse().unwrap())
            })
            .collect();
        assert_eq!(coords.len(), 61);
        for (x, y) in coords {
            assert!(
                x >= x0 && x <= x1 && y >= y0 && y <= y1,
                "({x},{y}) outside"
            );
        }
        let m = tags(&svg, "circle", "mark")[0];
        assert!(num(m, "cx") > x0 && num(m, "cx") < x1 && num(m, "cy") > y0 && num(m, "cy") < y1);
        assert!(svg.contains("class=\"band\""));
        assert!(svg.contains(">baseline<"), "legend names the band");
        assert!(svg.contains("role=\"img\"") && svg.contains("aria-label=\"Latency\""));
        assert!(svg.contains("<figcaption>Latency</figcaption>"));
        assert!(!svg.contains("style="));
    }

    #[test]
    fn a_missing_value_makes_a_gap() {
        let pts = [
            (0, Some(1.0)),
            (10_000, Some(2.0)),
            (20_000, None),
            (30_000, Some(3.0)),
            (40_000, Some(2.5)),
        ];
        let svg = time_chart(&chart(vec![Line {
            label: "errors",
            points: &pts,
        }]))
        .into_string();
        let d = attr(tags(&svg, "path", "line")[0], "d");
        assert_eq!(d.matches('M').count(), 2, "{d}");
        // A lone point between gaps is still drawn.
        let lone = [
            (0, Some(1.0)),
            (10_000, None),
            (20_000, Some(2.0)),
            (30_000, None),
        ];
        let svg = time_chart(&chart(vec![Line {
            label: "x",
            points: &lone,
        }]))
        .into_string();
        assert_eq!(svg.matches("<circle ").count(), 2);
    }

    #[test]
    fn labels_are_escaped_everywhere() {
        let evil = "<script>alert(1)</script>";
        let pts = [(0, Some(1.0)), (1000, Some(2.0))];
        let mut c = chart(vec![
            Line {
                label: evil,
                points: &pts,
            },
            Line {
                label: "b",
                points: &pts,
            },
        ]);
        c.title = evil;
        c.unit = evil;
        c.spans = vec![Span {
            from_ms: 100,
            to_ms: None,
            label: evil,
            tone: Tone::Warn,
        }];
        c.marks = vec![Mark {
            at_ms: 1000,
            value: 2.0,
            label: evil,
            tone: Tone::Bad,
        }];
        let ev = [TimelineEvent {
            at_ms: 10,
            lane: evil,
            label: evil,
            tone: Tone::Good,
        }];
        let ln = [TimelineLink {
            from_ms: 10,
            to_ms: 20,
            from_lane: evil,
            to_lane: "x",
            label: evil,
        }];
        let rows = [WaterfallRow {
            label: evil,
            layer: evil,
            start_ms: 0.0,
            duration_ms: 3.0,
            depth: 1,
            error: true,
            href: Some("/ui/x?a=\"><script>"),
        }];
        let nodes = [
            MapNode {
                id: "a",
                label: evil,
                detail: evil,
                tone: Tone::Bad,
                href: Some(evil),
            },
            MapNode {
                id: "b",
                label: "b",
                detail: "",
                tone: Tone::Good,
                href: None,
            },
        ];
        let edges = [MapEdge {
            from: "a",
            to: "b",
            label: evil,
            tone: Tone::Warn,
        }];
        let all = [
            time_chart(&c).into_string(),
            bars(evil, evil, &[(evil.to_string(), 3.0, Tone::Bad)], evil).into_string(),
            bars(evil, evil, &[], evil).into_string(),
            timeline(evil, 0, 100, &[evil], &ev, &ln, evil).into_string(),
            timeline(evil, 0, 100, &[], &[], &[], evil).into_string(),
            waterfall(evil, &rows, evil).into_string(),
            waterfall(evil, &[], evil).into_string(),
            service_map(evil, &nodes, &edges, evil).into_string(),
            service_map(evil, &[], &[], evil).into_string(),
        ];
        for svg in all {
            assert!(!svg.contains("<script"), "{svg}");
            assert!(svg.contains("&lt;script&gt;"));
        }
    }

    #[test]
    fn empty_charts_keep_their_frame_and_say_why() {
        let svg = time_chart(&chart(vec![])).into_string();
        assert!(svg.contains("class=\"empty\""));
        assert!(svg.contains("no data in this time range"));
        assert!(svg.contains("<svg ") && svg.contains("time (UTC)"));
        // Points outside the range count as nothing.
        let far = [(10_000_000, Some(1.0))];
        let mut c = chart(vec![Line {
            label: "x",
            points: &far,
        }]);
        c.empty = "nothing reported yet";
        let svg = time_chart(&c).into_string();
        assert!(svg.contains("nothing reported yet"));
        assert!(tags(&svg, "path", "line").is_empty());

        assert!(bars("Breaks", "breaks", &[], "no open breaks")
            .into_string()
            .contains("no open breaks"));
        assert!(
            timeline("Drill", 0, 1000, &["injected"], &[], &[], "no events")
                .into_string()
                .contains("no events")
        );
        assert!(waterfall("Journey", &[], "")
            .into_string()
            .contains("no spans in this journey"));
        assert!(service_map("Map", &[], &[], "no traffic")
            .into_string()
            .contains("no traffic"));
        // With data, no message.
        let pts = [(0, Some(1.0))];
        let svg = time_chart(&chart(vec![Line {
            label: "x",
            points: &pts,
        }]))
        .into_string();
        assert!(!svg.contains("class=\"empty\""));
    }

    #[test]
    fn bars_are_scaled_from_zero_with_values_at_their_ends() {
        let items = vec![
            ("amount mismatch".to_string(), 120.0, Tone::Bad),
            ("missing record".to_string(), 30.0, Tone::Warn),
            (
                "a label far too long to fit in the label column of this chart, really".to_string(),
                1.0,
                Tone::Good,
            ),
        ];
        let svg = bars("Open breaks", "breaks", &items, "none").into_string();
        let b = tags(&svg, "rect", "bar");
        assert_eq!(b.len(), 3);
        let (x0, w0, w1) = (num(b[0], "x"), num(b[0], "width"), num(b[1], "width"));
        assert!((num(b[1], "x") - x0).abs() < 0.01, "bars start at zero");
        assert!(
            (w0 / w1 - 4.0).abs() < 0.02,
            "widths proportional: {w0} {w1}"
        );
        assert!(svg.contains(">120<") && svg.contains(">30<"));
        assert!(svg.contains('…'), "long label cut");
        assert!(
            svg.contains(">bad<") && svg.contains(">warning<"),
            "legend of tones"
        );
        assert!(svg.contains(">breaks<"), "unit in the axis title");
    }

    fn rows() -> Vec<WaterfallRow<'static>> {
        let r = |label, layer, start_ms, duration_ms, depth| WaterfallRow {
            label,
            layer,
            start_ms,
            duration_ms,
            depth,
            error: false,
            href: None,
        };
        vec![
            r("GET /checkout", "experience", 0.0, 1730.0, 0),
            r("payment-core POST /pay", "backend", 40.0, 900.0, 1),
            r("INSERT payments", "database", 120.0, 4.3, 2),
            r("record pay-123 payment-core", "fund", 980.0, 0.0, 1),
        ]
    }

    #[test]
    fn waterfall_bars_are_ordered_and_the_longest_ends_at_the_axis_max() {
        let mut rows = rows();
        rows[2].error = true;
        rows[1].href = Some("/ui/journeys/j1/spans/2");
        let svg = waterfall("Journey j1", &rows, "").into_string();
        let b = tags(&svg, "rect", "bar");
        assert_eq!(b.len(), 3);
        let ys: Vec<f64> = b.iter().map(|t| num(t, "y")).collect();
        assert!(
            ys.windows(2).all(|w| w[0] < w[1]),
            "rows top to bottom in order"
        );
        let xs: Vec<f64> = b.iter().map(|t| num(t, "x")).collect();
        assert!(
            xs.windows(2).all(|w| w[0] < w[1]),
            "later starts further right"
        );
        let ends: Vec<f64> = b.iter().map(|t| num(t, "x") + num(t, "width")).collect();
        let plot_right = W - 90.0;
        assert!((ends[0] - plot_right).abs() < 0.11, "{ends:?}");
        assert!(ends[1] < ends[0]);
        assert_eq!(tags(&svg, "polygon", "instant").len(), 1);
        assert!(tags(&svg, "g", "row error").len() == 1 && svg.contains(VERMILLION));
        assert!(svg.contains("<a href=\"/ui/journeys/j1/spans/2\">"));
        assert!(svg.contains("time since start (ms)"));
        assert!(svg.contains(">1.7 s<") && svg.contains(">4.3 ms<"));
        for layer in ["experience", "backend", "database", "fund", "error"] {
            assert!(svg.contains(&format!(">{layer}<")), "legend lists {layer}");
        }
        assert!(!svg.contains(">network<"));
        // Height grows with rows.
        let (_, h) = view_box(&svg);
        let many: Vec<WaterfallRow> = (0..50)
            .map(|i| WaterfallRow {
                start_ms: i as f64,
                ..rows[2]
            })
            .collect();
        let (_, h50) = view_box(&waterfall("many", &many, "").into_string());
        assert!(h50 > h + 40.0 * 20.0);
    }

    #[test]
    fn waterfall_leaves_out_rows_past_the_limit_and_says_so() {
        let rows: Vec<WaterfallRow> = (0..450)
            .map(|i| WaterfallRow {
                label: "SELECT 1",
                layer: "database",
                start_ms: i as f64,
                duration_ms: 2.0,
                depth: 0,
                error: false,
                href: None,
            })
            .collect();
        let svg = waterfall("Big", &rows, "").into_string();
        assert_eq!(tags(&svg, "rect", "bar").len(), MAX_ROWS);
        assert!(
            svg.contains("50 left out"),
            "{}",
            &svg[svg.find("<figcaption>").unwrap()..]
        );
    }

    fn events(lane: &'static str, n: usize, from: i64, step: i64) -> Vec<TimelineEvent<'static>> {
        (0..n)
            .map(|i| TimelineEvent {
                at_ms: from + i as i64 * step,
                lane,
                label: "fault",
                tone: if i % 50 == 0 { Tone::Bad } else { Tone::Good },
            })
            .collect()
    }

    #[test]
    fn timeline_switches_to_density_above_the_threshold() {
        let lanes = ["started/stopped", "injected", "discovered"];
        let mut ev = events("injected", DENSITY_THRESHOLD, 0, 100);
        ev.extend(events("discovered", 5, 0, 5000));
        let svg = timeline("Drill", 0, 60_000, &lanes, &ev, &[], "").into_string();
        assert_eq!(tags(&svg, "circle", "event").len(), DENSITY_THRESHOLD + 5);
        assert!(tags(&svg, "rect", "density").is_empty());

        let mut ev = events("injected", 10_000, 0, 6);
        ev.extend(events("discovered", 5, 0, 5000));
        let svg = timeline("Drill", 0, 60_000, &lanes, &ev, &[], "").into_string();
        assert_eq!(
            tags(&svg, "circle", "event").len(),
            5,
            "the sparse lane keeps markers"
        );
        let bins = tags(&svg, "rect", "density");
        assert!(!bins.is_empty() && bins.len() <= 250, "{} bins", bins.len());
        assert!(svg.contains("injected drawn as event density"));
        assert!(svg.contains(VERMILLION), "a bad event shows in its bin");
        // Density bins stay inside the plot.
        for b in bins {
            assert!(num(b, "x") >= 0.0 && num(b, "x") + num(b, "width") <= W);
        }
    }

    #[test]
    fn timeline_draws_at_most_the_link_limit_and_says_how_many() {
        let ev = events("injected", 250, 0, 200);
        let links: Vec<TimelineLink> = (0..250)
            .map(|i| TimelineLink {
                from_ms: i * 200,
                to_ms: i * 200 + 1200,
                from_lane: "injected",
                to_lane: "discovered",
                label: "TTD 1.2 s",
            })
            .collect();
        let svg = timeline("Drill", 0, 60_000, &["injected"], &ev, &links, "").into_string();
        assert_eq!(tags(&svg, "g", "link").len(), MAX_LINKS);
        assert!(svg.contains("200 of 250 links drawn"));
        assert!(
            svg.contains(">discovered<"),
            "a lane named only by links is added"
        );
        // Labels were placed without overlapping.
        let far = [
            TimelineLink {
                from_ms: 30_000,
                to_ms: 31_200,
                ..links[0]
            },
            TimelineLink {
                from_ms: 50_000,
                to_ms: 51_200,
                ..links[0]
            },
        ];
        let small = timeline("Drill", 0, 60_000, &["injected"], &ev[..3], &far, "").into_string();
        assert!(small.contains("2 links") && small.contains(">TTD 1.2 s<"));
    }

    #[test]
    fn spread_samples_evenly() {
        assert_eq!(spread(3, 5), vec![0, 1, 2]);
        let s = spread(1000, 200);
        assert_eq!(s.len(), 200);
        assert_eq!(s[0], 0);
        assert!(s.windows(2).all(|w| w[1] - w[0] == 5));
    }

    #[test]
    fn placer_refuses_overlaps() {
        let mut p = Placer::default();
        assert!(p.claim([0.0, 0.0, 10.0, 10.0]));
        assert!(!p.claim([5.0, 5.0, 15.0, 15.0]));
        assert!(p.claim([10.0, 0.0, 20.0, 10.0]), "touching is fine");
    }

    #[test]
    fn layering_puts_callees_right_of_callers() {
        // gateway → checkout → payment → ledger, gateway → payment (a shortcut).
        let edges = [(0, 1), (1, 2), (2, 3), (0, 2)];
        let l = map_layout(4, &edges);
        assert_eq!(l.layer[..4], [0, 1, 2, 3], "longest path, not shortest");
        for &(u, v) in &edges {
            assert!(l.layer[v] > l.layer[u]);
        }
        assert!(l.back.iter().all(|b| !b));
        // The shortcut passes layer 1 through a dummy, which sits in that layer's order.
        assert_eq!(l.chains[3].len(), 3);
        let dummy = l.chains[3][1];
        assert!(dummy >= 4 && l.layer[dummy] == 1 && l.rows[1].contains(&dummy));
        for chain in &l.chains {
            assert!(chain.windows(2).all(|w| l.layer[w[1]] == l.layer[w[0]] + 1));
        }
    }

    #[test]
    fn layering_breaks_cycles_deterministically() {
        // entry → a → b → c → a (a cycle), c → c (a self-call), and a lone node.
        let edges = [(3, 0), (0, 1), (1, 2), (2, 0), (2, 2)];
        let l = map_layout(5, &edges);
        assert_eq!(l.back.iter().filter(|b| **b).count(), 1, "{l:?}");
        assert!(l.back[3], "the edge closing the cycle is the one reversed");
        for (e, &(u, v)) in edges.iter().enumerate() {
            if u != v && !l.back[e] {
                assert!(l.layer[v] > l.layer[u], "{l:?}");
            }
        }
        assert_eq!(l.layer[3], 0);
        assert!(l.chains[4].is_empty(), "a self-call has no chain");
        // The reversed edge c → a runs from a (left) to c (right) through a dummy.
        assert_eq!(l.chains[3].first(), Some(&0));
        assert_eq!(l.chains[3].last(), Some(&2));
        // A pure cycle with no entry point still terminates.
        let ring = map_layout(3, &[(0, 1), (1, 2), (2, 0)]);
        assert_eq!(ring.layer[..3], [0, 1, 2]);
        let again = map_layout(5, &edges);
        assert_eq!(again.layer, l.layer);
        assert_eq!(again.rows, l.rows);
    }

    #[test]
    fn barycentre_uncrosses_edges() {
        // a → y, b → x, with x and y given in the crossing order.
        let l = map_layout(4, &[(0, 3), (1, 2)]);
        assert_eq!(l.rows[0], vec![0, 1]);
        assert_eq!(l.rows[1], vec![3, 2], "y (a's callee) moves to the top");
    }

    #[test]
    fn service_map_is_deterministic_and_skips_unknown_edges() {
        let ids = [
            "gateway",
            "checkout",
            "payment-core",
            "ledger",
            "fx",
            "notify",
        ];
        let nodes: Vec<MapNode> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| MapNode {
                id,
                label: id,
                detail: "p99 120 ms · 0.1% err",
                tone: [Tone::Good, Tone::Warn, Tone::Bad][i % 3],
                href: Some("/ui/services/x"),
            })
            .collect();
        let e = |from, to, tone| MapEdge {
            from,
            to,
            label: "42 rps",
            tone,
        };
        let edges = vec![
            e("gateway", "checkout", Tone::Good),
            e("checkout", "payment-core", Tone::Bad),
            e("payment-core", "ledger", Tone::Good),
            e("payment-core", "fx", Tone::Warn),
            e("ledger", "checkout", Tone::Neutral), // closes a cycle
            e("checkout", "nowhere", Tone::Good),
        ];
        let a = service_map("Services", &nodes, &edges, "").into_string();
        let b = service_map("Services", &nodes, &edges, "").into_string();
        assert_eq!(a, b);
        assert_eq!(tags(&a, "g", "edge").len(), 5);
        assert!(a.contains("1 calls to or from unknown services not drawn"));
        assert_eq!(tags(&a, "g", "node").len(), 6);
        assert!(a.contains("<a href=\"/ui/services/x\">"));
        // gateway's box is left of checkout's, which is left of payment-core's.
        let node_x = |label: &str| {
            let i = a.find(&format!("<title>{label} — ")).unwrap();
            num(&a[i..], "x")
        };
        assert!(node_x("gateway") < node_x("checkout"));
        assert!(node_x("checkout") < node_x("payment-core"));
        assert!(node_x("payment-core") < node_x("ledger"));
    }

    #[test]
    fn a_big_service_map_stays_fast_and_inside_its_frame() {
        let ids: Vec<String> = (0..60).map(|i| format!("svc-{i:02}")).collect();
        let nodes: Vec<MapNode> = ids
            .iter()
            .map(|id| MapNode {
                id,
                label: id,
                detail: "",
                tone: Tone::Good,
                href: None,
            })
            .collect();
        let edges: Vec<MapEdge> = (0..60)
            .flat_map(|i| [(i, (i * 7 + 3) % 60), (i, (i * 13 + 1) % 60)])
            .map(|(a, b)| MapEdge {
                from: &ids[a],
                to: &ids[b],
                label: "",
                tone: Tone::Neutral,
            })
            .collect();
        let svg = service_map("Big", &nodes, &edges, "").into_string();
        let (w, h) = view_box(&svg);
        for (i, _) in svg.match_indices("<rect ") {
            let t = &svg[i..];
            let (x, y) = (num(t, "x"), num(t, "y"));
            assert!(x >= 0.0 && y >= 0.0 && x + num(t, "width") <= w && y + num(t, "height") <= h);
        }
    }
}
