//! Self-contained HTML for the reports: inline SVG charts (heatmaps, bar
//! charts, latency box plots, accuracy-against-cost scatter plots), no
//! scripts, no network.
//!
//! Every chart draws its axes with one piece of code ([`axes_svg`]): an
//! [`Axis`] is either numeric, with "nice" ticks (1, 2 or 5 x 10^k), or a
//! row of categories; a [`Frame`] places the plot area in the SVG.

use std::fmt::Write;

mod fleet;

pub use fleet::fleet_page;

use super::analysis::{AnalysisReport, SPAN_COLUMNS};
use super::compaction::CompactionReport;
use super::device::DeviceReport;
use super::text::si;
use crate::compact::evaluate::Quality;
use crate::compact::{ModelCost, Trial};

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// Viridis-like ramp from dark blue (0) to yellow (1).
fn color(v: f64) -> String {
    const STOPS: [(f64, [u8; 3]); 5] = [
        (0.0, [68, 1, 84]),
        (0.25, [59, 82, 139]),
        (0.5, [33, 145, 140]),
        (0.75, [94, 201, 98]),
        (1.0, [253, 231, 37]),
    ];
    let v = if v.is_finite() { v.clamp(0.0, 1.0) } else { 0.0 };
    let k = STOPS.windows(2).position(|w| v <= w[1].0).unwrap_or(STOPS.len() - 2);
    let ((a, ca), (b, cb)) = (STOPS[k], STOPS[k + 1]);
    let t = (v - a) / (b - a);
    let mix = |i: usize| (ca[i] as f64 + t * (cb[i] as f64 - ca[i] as f64)).round() as u8;
    format!("rgb({},{},{})", mix(0), mix(1), mix(2))
}

// ---------------------------------------------------------------------------
// Axes, shared by every chart.

/// How the values of a numeric axis are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TickFormat {
    /// Plain numbers; exponent form when very small or very large.
    Plain,
    /// Fractions as percent (`98.4%`); the axis stays within 0..=1.
    Percent,
    /// Counts with an SI suffix (`8.5M`); the axis stays at or above 0.
    Si,
    /// Nanoseconds written as milliseconds (`1.50`); at or above 0.
    Millis,
}

impl TickFormat {
    /// The interval an axis of this format never leaves.
    fn bounds(self) -> (f64, f64) {
        match self {
            TickFormat::Plain => (f64::NEG_INFINITY, f64::INFINITY),
            TickFormat::Percent => (0.0, 1.0),
            TickFormat::Si | TickFormat::Millis => (0.0, f64::INFINITY),
        }
    }

    /// `v`, a multiple of `step`, on an axis whose largest magnitude is `max_abs`.
    fn format(self, v: f64, step: f64, max_abs: f64) -> String {
        match self {
            TickFormat::Plain => plain(v, step, max_abs),
            TickFormat::Percent => format!("{:.*}%", decimals(100.0 * step), 100.0 * v),
            TickFormat::Si => {
                let (unit, suffix) = match max_abs {
                    m if m >= 1e9 => (1e9, "G"),
                    m if m >= 1e6 => (1e6, "M"),
                    m if m >= 1e3 => (1e3, "K"),
                    _ => (1.0, ""),
                };
                format!("{:.*}{suffix}", decimals(step / unit), v / unit)
            }
            TickFormat::Millis => format!("{:.*}", decimals(step / 1e6), v / 1e6),
        }
    }
}

/// Digits after the point that tell multiples of `step` apart.
fn decimals(step: f64) -> usize {
    if step.is_finite() && step > 0.0 {
        (-(step.log10() + 1e-9).floor()).max(0.0) as usize
    } else {
        0
    }
}

/// A plain tick value: fixed point, or exponent form outside 1e-3..1e5.
fn plain(v: f64, step: f64, max_abs: f64) -> String {
    if v == 0.0 || (1e-3..1e5).contains(&max_abs) || step.is_nan() || step <= 0.0 {
        return format!("{:.*}", decimals(step), v);
    }
    let digits = (v.abs().log10().floor() - (step.log10() + 1e-9).floor()).max(0.0) as usize;
    format!("{v:.digits$e}")
}

/// A "nice" step (1, 2 or 5 x 10^k) cutting `span` into about `target` intervals.
fn nice_step(span: f64, target: usize) -> f64 {
    let raw = span / target.max(1) as f64;
    if !(raw.is_finite() && raw > 0.0) {
        return 1.0;
    }
    let magnitude = 10f64.powf(raw.log10().floor());
    let m = raw / magnitude;
    let nice = if m >= 50f64.sqrt() {
        10.0
    } else if m >= 10f64.sqrt() {
        5.0
    } else if m >= 2f64.sqrt() {
        2.0
    } else {
        1.0
    };
    nice * magnitude
}

/// The data range `min..=max` widened by `pad` of its span on both sides
/// (a little when it is one value), kept within `bounds`: an axis zoomed to
/// the data instead of starting at zero.
fn zoomed(min: f64, max: f64, pad: f64, bounds: (f64, f64)) -> (f64, f64) {
    let span = max - min;
    let p = if span > 0.0 {
        span * pad
    } else if max != 0.0 {
        max.abs() * 0.02
    } else {
        1.0
    };
    ((min - p).max(bounds.0), (max + p).min(bounds.1))
}

/// One axis of a chart: the values it spans (`lo` at the left or bottom;
/// `lo > hi` draws it the other way), its ticks and its title.
#[derive(Debug, Clone)]
pub struct Axis {
    lo: f64,
    hi: f64,
    /// Position (in the axis's values) and text of each tick.
    ticks: Vec<(f64, String)>,
    label: String,
    /// Light grid lines at the ticks (numeric axes).
    grid: bool,
}

impl Axis {
    /// A numeric axis over `lo..=hi` widened to whole "nice" steps, about
    /// `target` intervals.
    fn numeric(label: &str, lo: f64, hi: f64, format: TickFormat, target: usize) -> Axis {
        let (lo, hi) = match (lo.is_finite() && hi.is_finite(), hi > lo) {
            (true, true) => (lo, hi),
            (true, false) => zoomed(lo, lo, 0.0, (f64::NEG_INFINITY, f64::INFINITY)),
            (false, _) => (0.0, 1.0),
        };
        let step = nice_step(hi - lo, target);
        // Snap ratios a rounding error away from a whole number onto it.
        let snap = |r: f64| if (r - r.round()).abs() < 1e-6 { r.round() } else { r };
        let (first, last) = (snap(lo / step).floor() as i64, snap(hi / step).ceil() as i64);
        let (lo, hi) = (first as f64 * step, last as f64 * step);
        let max_abs = lo.abs().max(hi.abs());
        let ticks = (first..=last)
            .map(|i| {
                let v = i as f64 * step + 0.0;
                (v, format.format(v, step, max_abs))
            })
            .collect();
        Axis { lo, hi, ticks, label: label.into(), grid: true }
    }

    /// An axis over `values` for a scatter plot: zoomed to them with a
    /// little padding, or from zero.
    fn fitted(label: &str, values: &[f64], format: TickFormat, from_zero: bool, target: usize) -> Axis {
        let finite = values.iter().copied().filter(|v| v.is_finite());
        let (min, max) = finite.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| (a.min(v), b.max(v)));
        let bounds = format.bounds();
        let (lo, hi) = if min > max {
            (bounds.0.max(0.0), bounds.1.min(1.0))
        } else if from_zero {
            let lo = min.min(0.0);
            (lo, (max + 0.08 * (max - lo)).min(bounds.1))
        } else {
            zoomed(min, max, 0.1, bounds)
        };
        Axis::numeric(label, lo, hi, format, target)
    }

    /// `names.len()` categories centred at 0.5, 1.5, ..., at most about
    /// `max_labels` of them labelled (every k-th).
    fn categories(label: &str, names: &[String], max_labels: usize) -> Axis {
        let every = names.len().div_ceil(max_labels.max(1)).max(1);
        let ticks = names
            .iter()
            .enumerate()
            .filter(|(i, _)| i % every == 0)
            .map(|(i, n)| (i as f64 + 0.5, n.clone()))
            .collect();
        Axis { lo: 0.0, hi: names.len().max(1) as f64, ticks, label: label.into(), grid: false }
    }

    /// The same axis, drawn the other way round (the first category on top).
    fn reversed(self) -> Axis {
        Axis { lo: self.hi, hi: self.lo, ..self }
    }

    /// Where `v` falls, 0 at `lo` and 1 at `hi`.
    fn fraction(&self, v: f64) -> f64 {
        let d = self.hi - self.lo;
        if d == 0.0 {
            0.5
        } else {
            (v - self.lo) / d
        }
    }

    /// Pixels the widest tick value takes.
    fn tick_width(&self) -> f64 {
        self.ticks.iter().map(|(_, t)| text_width(t)).fold(0.0, f64::max)
    }
}

/// Rough width of `text` at 11 px (there is no layout engine here).
fn text_width(text: &str) -> f64 {
    text.chars().count() as f64 * 6.4
}

/// The plot area of a chart, in pixels of its SVG.
#[derive(Debug, Clone, Copy)]
struct Frame {
    left: f64,
    top: f64,
    width: f64,
    height: f64,
}

/// Pixels under a frame taken by the x tick values and the x title.
const BELOW: f64 = 44.0;

impl Frame {
    /// A plot area whose left margin fits `y`'s tick values and title.
    fn new(y: &Axis, top: f64, width: f64, height: f64) -> Frame {
        let title = if y.label.is_empty() { 0.0 } else { 20.0 };
        Frame { left: (y.tick_width() + title + 16.0).ceil(), top, width, height }
    }
    fn x(&self, axis: &Axis, v: f64) -> f64 {
        self.left + axis.fraction(v) * self.width
    }
    fn y(&self, axis: &Axis, v: f64) -> f64 {
        self.top + self.height - axis.fraction(v) * self.height
    }
    fn right(&self) -> f64 {
        self.left + self.width
    }
    fn bottom(&self) -> f64 {
        self.top + self.height
    }
}

/// The opening tag of a chart's SVG, with its accessible title.
fn svg_open(width: f64, height: f64, title: &str) -> String {
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{:.0}\" height=\"{:.0}\" font-family=\"sans-serif\" role=\"img\"><title>{}</title>",
        width.ceil(),
        height.ceil(),
        escape(title)
    )
}

/// The axes of a chart: grid lines at numeric ticks, the x axis under the
/// frame and the y axis on its left, tick marks with their values, and the
/// axis titles (the y title turned upright).
fn axes_svg(f: &Frame, x: &Axis, y: &Axis) -> String {
    let mut s = String::new();
    let (left, right, top, bottom) = (f.left, f.right(), f.top, f.bottom());
    for (v, _) in x.ticks.iter().filter(|_| x.grid) {
        let px = f.x(x, *v);
        let _ =
            write!(s, "<line x1=\"{px:.1}\" y1=\"{top:.1}\" x2=\"{px:.1}\" y2=\"{bottom:.1}\" stroke=\"#e6e6e6\"/>");
    }
    for (v, _) in y.ticks.iter().filter(|_| y.grid) {
        let py = f.y(y, *v);
        let _ =
            write!(s, "<line x1=\"{left:.1}\" y1=\"{py:.1}\" x2=\"{right:.1}\" y2=\"{py:.1}\" stroke=\"#e6e6e6\"/>");
    }
    let _ = write!(s, "<path d=\"M{left:.1},{top:.1}V{bottom:.1}H{right:.1}\" fill=\"none\" stroke=\"#444\"/>");
    for (v, text) in &x.ticks {
        let px = f.x(x, *v);
        let _ = write!(
            s,
            "<line x1=\"{px:.1}\" y1=\"{bottom:.1}\" x2=\"{px:.1}\" y2=\"{:.1}\" stroke=\"#444\"/>\
<text x=\"{px:.1}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"middle\">{}</text>",
            bottom + 5.0,
            bottom + 17.0,
            escape(text)
        );
    }
    for (v, text) in &y.ticks {
        let py = f.y(y, *v);
        let _ = write!(
            s,
            "<line x1=\"{:.1}\" y1=\"{py:.1}\" x2=\"{left:.1}\" y2=\"{py:.1}\" stroke=\"#444\"/>\
<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"end\">{}</text>",
            left - 5.0,
            left - 8.0,
            py + 4.0,
            escape(text)
        );
    }
    if !x.label.is_empty() {
        let _ = write!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"12\" text-anchor=\"middle\" font-weight=\"bold\">{}</text>",
            (left + right) / 2.0,
            bottom + 36.0,
            escape(&x.label)
        );
    }
    if !y.label.is_empty() {
        let (cx, cy) = (left - y.tick_width() - 16.0, (top + bottom) / 2.0);
        let _ = write!(
            s,
            "<text x=\"{cx:.1}\" y=\"{cy:.1}\" transform=\"rotate(-90 {cx:.1} {cy:.1})\" font-size=\"12\" text-anchor=\"middle\" font-weight=\"bold\">{}</text>",
            escape(&y.label)
        );
    }
    s
}

// ---------------------------------------------------------------------------
// The charts.

/// A square heatmap of `values` (rows = columns = boundaries), `None` cells
/// grey, boundary indices on both axes and a colour scale from 0 to 1.
pub fn heatmap_svg(title: &str, values: &[Vec<Option<f64>>]) -> String {
    let n = values.len();
    let cell = (360 / n.max(1)).clamp(8, 40) as f64;
    let names: Vec<String> = (0..n).map(|i| i.to_string()).collect();
    let most = (n as f64 * cell / 22.0).floor().max(1.0) as usize;
    let x = Axis::categories("boundary index", &names, most);
    let y = Axis::categories("boundary index", &names, most).reversed();
    let f = Frame::new(&y, 10.0, n as f64 * cell, n as f64 * cell);
    let scale_x = f.right() + 16.0;
    let mut svg = svg_open(scale_x + 50.0, f.bottom() + BELOW, title);
    svg.push_str(&axes_svg(&f, &x, &y));
    for (i, row) in values.iter().enumerate() {
        for (j, v) in row.iter().enumerate() {
            let fill = v.map_or("#ccc".to_string(), color);
            let tip = v.map_or("n/a".to_string(), |v| format!("{v:.4}"));
            let _ = write!(
                svg,
                "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{cell}\" height=\"{cell}\" fill=\"{fill}\"><title>boundary {i} vs {j}: {tip}</title></rect>",
                f.x(&x, j as f64),
                f.y(&y, i as f64),
            );
        }
    }
    // Colour scale: 20 steps from 1 (top) to 0, with its values.
    let step = f.height / 20.0;
    for k in 0..20 {
        let _ = write!(
            svg,
            "<rect x=\"{scale_x:.1}\" y=\"{:.1}\" width=\"14\" height=\"{:.1}\" fill=\"{}\"/>",
            f.top + k as f64 * step,
            step + 0.5,
            color(1.0 - (k as f64 + 0.5) / 20.0)
        );
    }
    for (v, text) in [(1.0, "1"), (0.5, "0.5"), (0.0, "0")] {
        let _ = write!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\">{text}</text>",
            scale_x + 18.0,
            f.top + (1.0 - v) * f.height + 4.0
        );
    }
    svg.push_str("</svg>");
    svg
}

/// A bar chart of one value per category (`None`: drawn as "n/a"), bars
/// from zero, `x_label` under the categories and `y_label` beside the values.
pub fn bars_svg(title: &str, x_label: &str, y_label: &str, labels: &[String], values: &[Option<f64>]) -> String {
    let (lo, hi) =
        values.iter().flatten().filter(|v| v.is_finite()).fold((0f64, 0f64), |(a, b), &v| (a.min(v), b.max(v)));
    let y = Axis::numeric(y_label, lo, if hi > lo { hi } else { lo + 1.0 }, TickFormat::Plain, 5);
    let x = Axis::categories(x_label, labels, 26);
    let f = Frame::new(&y, 10.0, 420.0, 170.0);
    let mut svg = svg_open(f.right() + 10.0, f.bottom() + BELOW, title);
    svg.push_str(&axes_svg(&f, &x, &y));
    let bw = f.width / labels.len().max(1) as f64;
    for (k, (label, v)) in labels.iter().zip(values).enumerate() {
        let left = f.x(&x, k as f64);
        match v {
            Some(v) if v.is_finite() => {
                let (a, b) = (f.y(&y, 0.0), f.y(&y, *v));
                let _ = write!(
                    svg,
                    "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"#3b528b\"><title>block {}: {v:.4e}</title></rect>",
                    left + bw * 0.15,
                    a.min(b),
                    (bw * 0.7).max(1.0),
                    (a - b).abs(),
                    escape(label)
                );
            }
            _ => {
                let _ = write!(
                    svg,
                    "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"9\" fill=\"#999\" text-anchor=\"middle\">n/a</text>",
                    left + bw / 2.0,
                    f.y(&y, 0.0) - 4.0
                );
            }
        }
    }
    svg.push_str("</svg>");
    svg
}

/// Horizontal box plots of latency samples (ns), one per series, on a shared
/// millisecond axis from zero.
pub fn latency_boxes_svg(title: &str, series: &[(String, Vec<u64>)]) -> String {
    let pick = |sorted: &[u64], p: f64| {
        sorted[((p * (sorted.len() - 1) as f64).round() as usize).min(sorted.len() - 1)] as f64
    };
    let max = series.iter().flat_map(|(_, s)| s.iter().copied()).max().unwrap_or(1_000_000).max(1) as f64;
    let x = Axis::numeric("warm latency per run (ms)", 0.0, max * 1.05, TickFormat::Millis, 6);
    let names: Vec<String> = series.iter().map(|(n, _)| n.clone()).collect();
    let y = Axis::categories("", &names, names.len()).reversed();
    let f = Frame::new(&y, 6.0, 440.0, 36.0 * series.len().max(1) as f64);
    let mut svg = svg_open(f.right() + 20.0, f.bottom() + BELOW, title);
    svg.push_str(&axes_svg(&f, &x, &y));
    for (k, (name, samples)) in series.iter().enumerate() {
        if samples.is_empty() {
            continue;
        }
        let mut s = samples.clone();
        s.sort_unstable();
        let [p1, p25, p50, p75, p99] = [0.01, 0.25, 0.5, 0.75, 0.99].map(|p| f.x(&x, pick(&s, p)));
        let mid = f.y(&y, k as f64 + 0.5);
        let _ = write!(
            svg,
            "<line x1=\"{p1:.1}\" y1=\"{mid:.1}\" x2=\"{p99:.1}\" y2=\"{mid:.1}\" stroke=\"#444\"/>\
<rect x=\"{p25:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"20\" fill=\"#5ec962\" stroke=\"#333\"><title>{}: p25 {:.3} ms, p75 {:.3} ms</title></rect>\
<line x1=\"{p50:.1}\" y1=\"{:.1}\" x2=\"{p50:.1}\" y2=\"{:.1}\" stroke=\"#000\" stroke-width=\"2\"/>",
            mid - 10.0,
            (p75 - p25).max(1.0),
            escape(name),
            pick(&s, 0.25) / 1e6,
            pick(&s, 0.75) / 1e6,
            mid - 10.0,
            mid + 10.0,
        );
    }
    svg.push_str("</svg>");
    svg
}

/// What a point of a scatter plot stands for, which sets how it is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    /// One of many candidates (on the Pareto front: dark, else light).
    Candidate,
    /// The model everything started from: a black diamond, its level dashed.
    Original,
    /// The model picked: red, ringed.
    Chosen,
}

/// One point of a scatter plot.
#[derive(Debug, Clone)]
pub struct Point {
    pub x: f64,
    pub y: f64,
    pub mark: Mark,
    /// A few characters written inside the marker (e.g. blocks removed).
    pub text: String,
    /// A word written beside the marker (empty: none).
    pub tag: String,
    /// Shown on hover.
    pub title: String,
}

/// One axis of a scatter plot: its title, how its values are written, and
/// whether it starts at zero (else it is zoomed to the data).
#[derive(Debug, Clone, Copy)]
pub struct AxisSpec<'a> {
    pub label: &'a str,
    pub format: TickFormat,
    pub from_zero: bool,
}

/// The points on the Pareto front when lower `x` (cost) and higher `y`
/// (quality) are better: a point is on it when no point at the same or a
/// lower cost reaches its quality. Indices sorted by cost; along the front
/// both cost and quality rise. Points with a non-finite coordinate are left
/// out.
pub fn pareto_front(points: &[(f64, f64)]) -> Vec<usize> {
    let mut order: Vec<usize> =
        (0..points.len()).filter(|&i| points[i].0.is_finite() && points[i].1.is_finite()).collect();
    order.sort_by(|&a, &b| points[a].0.total_cmp(&points[b].0).then(points[b].1.total_cmp(&points[a].1)));
    let mut best = f64::NEG_INFINITY;
    let mut front = Vec::new();
    for i in order {
        if points[i].1 > best {
            best = points[i].1;
            front.push(i);
        }
    }
    front
}

/// A scatter plot of `points` with labelled axes, a legend and, with
/// `front`, the Pareto front of the candidates drawn as a step line (the best
/// `y` reached at each `x` or less). `note` (lines split at `\n`) ends the
/// legend, e.g. to say what the numbers in the markers are. `size` is the
/// plot area in pixels.
pub fn scatter_svg(
    title: &str,
    x: &AxisSpec,
    y: &AxisSpec,
    points: &[Point],
    front: bool,
    note: &str,
    size: (f64, f64),
) -> String {
    let xs: Vec<f64> = points.iter().map(|p| p.x).collect();
    let ys: Vec<f64> = points.iter().map(|p| p.y).collect();
    let xa = Axis::fitted(x.label, &xs, x.format, x.from_zero, (size.0 / 90.0).round().max(2.0) as usize);
    let ya = Axis::fitted(y.label, &ys, y.format, y.from_zero, (size.1 / 45.0).round().max(2.0) as usize);
    let f = Frame::new(&ya, 14.0, size.0, size.1);
    let on_front: Vec<usize> =
        if front { pareto_front(&points.iter().map(|p| (p.x, p.y)).collect::<Vec<_>>()) } else { Vec::new() };
    let finite = |p: &Point| p.x.is_finite() && p.y.is_finite();
    let style = |i: usize, p: &Point| match p.mark {
        Mark::Candidate if front && !on_front.contains(&i) => Style::Dominated,
        Mark::Candidate => Style::Candidate,
        Mark::Original => Style::Original,
        Mark::Chosen => Style::Chosen,
    };
    let drawn: Vec<(usize, &Point, f64, f64)> = points
        .iter()
        .enumerate()
        .filter(|(_, p)| finite(p))
        .map(|(i, p)| (i, p, f.x(&xa, p.x), f.y(&ya, p.y)))
        .collect();

    // The legend, only for what the chart shows; it sets the SVG's width.
    let has = |s: Style| drawn.iter().any(|(i, p, _, _)| style(*i, p) == s);
    let mut entries: Vec<(String, &str)> = Vec::new();
    let candidates = if front { "candidate on the front" } else { "candidate" };
    for (s, text) in [(Style::Candidate, candidates), (Style::Dominated, "dominated candidate")] {
        if has(s) {
            entries.push((s.marker(0.0, 0.0), text));
        }
    }
    if !on_front.is_empty() {
        let line = "<path d=\"M-9,4H0V-4H9\" fill=\"none\" stroke=\"#21918c\" stroke-width=\"2\"/>";
        entries.push((line.into(), "Pareto front (best at this cost or less)"));
    }
    for (s, text) in [(Style::Original, "original model (dashed: its level)"), (Style::Chosen, "chosen model")] {
        if has(s) {
            entries.push((s.marker(0.0, 0.0), text));
        }
    }
    let notes: Vec<&str> = note.lines().filter(|l| !l.is_empty()).collect();
    let legend_x = f.right() + 26.0;
    let legend_width = entries
        .iter()
        .map(|(_, t)| 26.0 + text_width(t))
        .chain(notes.iter().map(|t| text_width(t)))
        .fold(0.0, f64::max);
    let legend_height = 10.0 + 24.0 * entries.len() as f64 + 15.0 * notes.len() as f64;
    let mut svg =
        svg_open(legend_x + legend_width + 10.0, (f.bottom() + BELOW).max(f.top + legend_height + 10.0), title);
    svg.push_str(&axes_svg(&f, &xa, &ya));

    for &(_, _, _, py) in drawn.iter().filter(|(_, p, _, _)| p.mark == Mark::Original) {
        let _ = write!(
            svg,
            "<line x1=\"{:.1}\" y1=\"{py:.1}\" x2=\"{:.1}\" y2=\"{py:.1}\" stroke=\"#777\" stroke-dasharray=\"4 3\"/>",
            f.left,
            f.right()
        );
    }
    if let Some((&first, rest)) = on_front.split_first() {
        let mut d = format!("M{:.1},{:.1}", f.x(&xa, points[first].x), f.y(&ya, points[first].y));
        for &i in rest {
            let _ = write!(d, "H{:.1}V{:.1}", f.x(&xa, points[i].x), f.y(&ya, points[i].y));
        }
        let _ = write!(d, "H{:.1}", f.right());
        let _ = write!(svg, "<path d=\"{d}\" fill=\"none\" stroke=\"#21918c\" stroke-width=\"2\"/>");
    }
    // Light candidates under dark ones, the original and the chosen model on
    // top; tags where they cover the fewest markers.
    let markers: Vec<(f64, f64)> = drawn.iter().map(|&(_, _, cx, cy)| (cx, cy)).collect();
    let mut tags: Vec<Rect> = Vec::new();
    for layer in [Style::Dominated, Style::Candidate, Style::Original, Style::Chosen] {
        for &(_, p, cx, cy) in drawn.iter().filter(|(i, p, _, _)| style(*i, p) == layer) {
            let _ = write!(svg, "<g><title>{}</title>{}", escape(&p.title), layer.marker(cx, cy));
            if !p.text.is_empty() {
                let _ = write!(
                    svg,
                    "<text x=\"{cx:.1}\" y=\"{:.1}\" font-size=\"10\" font-weight=\"bold\" text-anchor=\"middle\" fill=\"{}\">{}</text>",
                    cy + 3.5,
                    layer.ink(),
                    escape(&p.text)
                );
            }
            if !p.tag.is_empty() {
                let Tag { x: tx, y: ty, anchor, rect } =
                    place_tag(&f, (cx, cy), 7.2 * p.tag.chars().count() as f64, &markers, &tags);
                tags.push(rect);
                let _ = write!(
                    svg,
                    "<text x=\"{tx:.1}\" y=\"{ty:.1}\" font-size=\"12\" font-weight=\"bold\" text-anchor=\"{anchor}\" fill=\"{}\" \
stroke=\"#fff\" stroke-width=\"3\" paint-order=\"stroke\">{}</text>",
                    layer.fill(),
                    escape(&p.tag)
                );
            }
            svg.push_str("</g>");
        }
    }
    let mut ly = f.top + 10.0;
    for (symbol, text) in &entries {
        let _ = write!(
            svg,
            "<g transform=\"translate({:.1} {ly:.1})\">{symbol}</g><text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\">{}</text>",
            legend_x + 10.0,
            legend_x + 26.0,
            ly + 4.0,
            escape(text)
        );
        ly += 24.0;
    }
    for line in notes {
        let _ = write!(
            svg,
            "<text x=\"{legend_x:.1}\" y=\"{:.1}\" font-size=\"11\" fill=\"#555\">{}</text>",
            ly + 4.0,
            escape(line)
        );
        ly += 15.0;
    }
    svg.push_str("</svg>");
    svg
}

/// A box in pixels: left, top, right, bottom.
type Rect = (f64, f64, f64, f64);

/// Where a tag's text goes: its anchor point, `text-anchor`, and its box.
#[derive(Debug, Clone, Copy)]
struct Tag {
    x: f64,
    y: f64,
    anchor: &'static str,
    rect: Rect,
}

/// Where a tag `width` pixels wide goes beside the marker at `at`: of the
/// spots right or left of it, above, level or below, the first that covers
/// the fewest other markers and earlier tags and stays inside the frame.
fn place_tag(f: &Frame, at: (f64, f64), width: f64, markers: &[(f64, f64)], tags: &[Rect]) -> Tag {
    let (cx, cy) = at;
    let mut best: Option<(usize, Tag)> = None;
    for dy in [-8.0, 4.0, 18.0] {
        for (dx, anchor) in [(15.0, "start"), (-15.0, "end")] {
            let (tx, ty) = (cx + dx, cy + dy);
            let left = if anchor == "start" { tx } else { tx - width };
            let rect = (left, ty - 10.0, left + width, ty + 2.0);
            let outside = rect.0 < f.left || rect.2 > f.right() || rect.1 < f.top || rect.3 > f.bottom();
            let covers = |&(mx, my): &(f64, f64)| {
                let (nx, ny) = (mx.clamp(rect.0, rect.2), my.clamp(rect.1, rect.3));
                (nx - mx).hypot(ny - my) < 9.0
            };
            let overlaps = |t: &&Rect| t.0 < rect.2 && rect.0 < t.2 && t.1 < rect.3 && rect.1 < t.3;
            let cost = 100 * usize::from(outside)
                + markers.iter().filter(|m| covers(m)).count()
                + 10 * tags.iter().filter(overlaps).count();
            if best.as_ref().is_none_or(|(c, _)| cost < *c) {
                best = Some((cost, Tag { x: tx, y: ty, anchor, rect }));
            }
        }
    }
    best.map_or(Tag { x: cx + 15.0, y: cy - 8.0, anchor: "start", rect: (cx, cy, cx, cy) }, |(_, t)| t)
}

/// How a scatter marker is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Style {
    Dominated,
    Candidate,
    Original,
    Chosen,
}

impl Style {
    fn fill(self) -> &'static str {
        match self {
            Style::Dominated => "#b8c2d6",
            Style::Candidate => "#3b528b",
            Style::Original => "#111",
            Style::Chosen => "#d62728",
        }
    }
    /// The colour of text inside the marker.
    fn ink(self) -> &'static str {
        match self {
            Style::Dominated => "#223",
            _ => "#fff",
        }
    }
    /// The marker centred at `(cx, cy)`.
    fn marker(self, cx: f64, cy: f64) -> String {
        let fill = self.fill();
        match self {
            Style::Dominated | Style::Candidate => {
                format!("<circle cx=\"{cx:.1}\" cy=\"{cy:.1}\" r=\"8\" fill=\"{fill}\" stroke=\"#fff\"/>")
            }
            Style::Original => format!(
                "<path d=\"M{cx:.1},{:.1}L{:.1},{cy:.1}L{cx:.1},{:.1}L{:.1},{cy:.1}Z\" fill=\"{fill}\" stroke=\"#fff\"/>",
                cy - 10.0,
                cx + 10.0,
                cy + 10.0,
                cx - 10.0
            ),
            Style::Chosen => format!(
                "<circle cx=\"{cx:.1}\" cy=\"{cy:.1}\" r=\"11.5\" fill=\"none\" stroke=\"{fill}\" stroke-width=\"2\"/>\
<circle cx=\"{cx:.1}\" cy=\"{cy:.1}\" r=\"8\" fill=\"{fill}\" stroke=\"#fff\"/>"
            ),
        }
    }
}

const STYLE: &str =
    "body{font-family:sans-serif;margin:2em;max-width:1100px}table{border-collapse:collapse;font-size:13px}\
td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}th{background:#eee}code{font-size:11px}\
.figs{display:flex;flex-wrap:wrap;gap:2em}figure{margin:0}figcaption{font-size:13px;color:#333}";

/// A self-contained page around report sections.
fn page(title: &str, sections: &[String]) -> String {
    format!(
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{}</title><style>{STYLE}</style></head><body>{}</body></html>\n",
        escape(title),
        sections.concat()
    )
}

/// The analysis report page.
pub fn analysis_page(r: &AnalysisReport) -> String {
    page(&format!("rba analysis: {}", r.model.file), &[analysis_section(r)])
}

/// One page with whatever is given: the analysis, the compaction and the
/// device results.
pub fn merged_page(
    analysis: Option<&AnalysisReport>,
    compaction: Option<&CompactionReport>,
    device: Option<&DeviceReport>,
) -> String {
    let mut sections = vec!["<h1>rba report</h1>".to_string()];
    sections.extend(device.map(device_section));
    sections.extend(compaction.map(|c| compaction_section(c, device)));
    sections.extend(analysis.map(analysis_section));
    page("rba report", &sections)
}

fn analysis_section(r: &AnalysisReport) -> String {
    let labels: Vec<String> = r.blocks.iter().map(|b| b.index.to_string()).collect();
    let residual: Vec<Option<f64>> = r.blocks.iter().map(|b| b.score.as_ref().map(|s| s.linear_residual)).collect();
    let br: Vec<Option<f64>> = r.blocks.iter().map(|b| b.score.as_ref().map(|s| -s.br_cls)).collect();
    let br_all: Vec<Option<f64>> = r.blocks.iter().map(|b| b.score.as_ref().map(|s| -s.br_all_tokens)).collect();
    let mut rows = String::new();
    for s in r.spans.iter().take(30) {
        let cells: String = s.cells().iter().map(|c| format!("<td>{}</td>", escape(c))).collect();
        let _ = write!(rows, "<tr>{cells}</tr>");
    }
    let header: String = SPAN_COLUMNS.iter().map(|c| format!("<th>{}</th>", escape(c))).collect();
    let mut blocks = String::new();
    for b in &r.blocks {
        let _ = write!(
            blocks,
            "<tr><td>{}</td><td><code>{}</code></td><td><code>{}</code></td><td>{:?}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            b.index,
            escape(&b.input),
            escape(&b.output),
            b.shape,
            si(b.params),
            si(b.macs),
            if b.replaceable { "yes" } else { "no" }
        );
    }
    format!(
        "<h1>rba analysis</h1><p><b>{file}</b>: {params} parameters, {macs} MACs per image, opset {opset}.<br>\
Calibration: {images} images from <code>{source}</code>; {tool}; {seconds:.1} s.</p>\
<h2>Similarity between boundaries</h2><div class=\"figs\">\
<figure>{cka_svg}<figcaption>Linear CKA (CLS token, or spatial mean for CNN maps); grey: constant over images</figcaption></figure>\
<figure>{cos_svg}<figcaption>Mean per-image cosine similarity of the activations; grey: shapes differ</figcaption></figure></div>\
<h2>Per block</h2><div class=\"figs\">\
<figure>{res_svg}<figcaption>1 - R² of the linear map over the block (lower = more replaceable)</figcaption></figure>\
<figure>{br_svg}<figcaption>-BR on the CLS token (the paper's score; closer to 0 = more redundant)</figcaption></figure>\
<figure>{br_all_svg}<figcaption>-BR over all tokens</figcaption></figure></div>\
<h2>Candidate spans (best first)</h2><table><tr>{header}</tr>{rows}</table>\
<h2>Blocks</h2><table><tr><th>block</th><th>input</th><th>output</th><th>shape</th><th>params</th><th>MACs</th><th>replaceable</th></tr>{blocks}</table>",
        file = escape(&r.model.file),
        params = si(r.model.params),
        macs = si(r.model.macs),
        opset = r.model.opset,
        images = r.data.images,
        source = escape(&r.data.source),
        tool = escape(&r.tool),
        seconds = r.seconds,
        cka_svg = heatmap_svg("linear CKA", &r.cka),
        cos_svg = heatmap_svg("cosine similarity", &r.cosine),
        res_svg = bars_svg("1 - R^2 per block", "block", "1 - R²", &labels, &residual),
        br_svg = bars_svg("-BR (CLS) per block", "block", "-BR (CLS token)", &labels, &br),
        br_all_svg = bars_svg("-BR (all tokens) per block", "block", "-BR (all tokens)", &labels, &br_all),
    )
}

/// Percent with one decimal, or "-".
fn pct(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{:.2}%", 100.0 * v))
}

/// The compaction section: what was replaced, the verified quality, and
/// held-out accuracy against cost for every verified candidate (with the
/// measured on-device latency when a device report is given).
fn compaction_section(c: &CompactionReport, device: Option<&DeviceReport>) -> String {
    let record = &c.compaction;
    let mut rows = String::new();
    for r in &record.replacements {
        let _ = write!(
            rows,
            "<tr><td>{}</td><td>{}</td><td>{:.4}</td><td>{}</td></tr>",
            r.span,
            escape(&serde_name(&r.translator)),
            r.fit_residual,
            escape(&serde_name(&r.solver))
        );
    }
    let metric = metric_name(c);
    let pareto = format!(
        "<figure>{}<figcaption>Held-out {metric} against MACs per image of every verified candidate \
(hover a point for its blocks); the step line is the best {metric} reached at that cost or less. \
The chosen model can sit below it: candidates within the noise of the held-out set count as ties, \
and of those the one whose outputs stay closest to the original's is taken.</figcaption></figure>",
        pareto_svg(c)
    );
    let latency = device.and_then(|d| latency_figure(c, d)).unwrap_or_default();
    format!(
        "<h2>Compaction</h2><p><b>{}</b> &rarr; <b>{}</b>; calibration: {} images from <code>{}</code>, fitted on {}; \
held-out: {} images from <code>{}</code>.</p><p>Held-out metric {} &rarr; {} (agreement with the original {}, output cosine {:.4}); \
{} &rarr; {} MACs per image, {} &rarr; {} parameters.</p>\
<table><tr><th>span</th><th>translator</th><th>1-R²</th><th>solver</th></tr>{rows}</table>\
<h3>Accuracy against cost</h3><div class=\"figs\">{pareto}{latency}</div>",
        escape(&c.model),
        escape(&c.output),
        record.calibration.images,
        escape(&record.calibration.source),
        escape(&record.calibration.fitted_on),
        record.held_out.images,
        escape(&record.held_out.source),
        pct(Some(record.baseline.metric())),
        pct(Some(record.result.metric())),
        pct(Some(record.result.agreement)),
        record.result.output_cosine,
        si(c.original.macs),
        si(c.compacted.macs),
        si(c.original.params),
        si(c.compacted.params),
    )
}

/// What the held-out metric is: accuracy with labels, else agreement.
fn metric_name(c: &CompactionReport) -> &'static str {
    if c.compaction.baseline.accuracy.is_some() {
        "accuracy"
    } else {
        "agreement with the original"
    }
}

/// `1 block removed`, `3 blocks removed`.
fn blocks_removed(n: usize) -> String {
    format!("{n} block{} removed", if n == 1 { "" } else { "s" })
}

/// Held-out metric against MACs per image: every verified candidate (the
/// number in its marker: blocks removed), the Pareto front, the original
/// and the chosen model.
fn pareto_svg(c: &CompactionReport) -> String {
    let metric = metric_name(c);
    let describe = |what: &str, q: &Quality, cost: &ModelCost| {
        format!(
            "{what}\n{metric} {}, {} MACs per image, {} parameters",
            pct(Some(q.metric())),
            si(cost.macs),
            si(cost.params)
        )
    };
    let record = &c.compaction;
    let mut points = vec![Point {
        x: c.original.macs as f64,
        y: record.baseline.metric(),
        mark: Mark::Original,
        text: String::new(),
        tag: "original".into(),
        title: describe("original model", &record.baseline, &c.original),
    }];
    // Candidates of the same cost and metric (common: the metric moves in
    // steps of one held-out image) share one marker that lists them all.
    let mut spots: Vec<(&Trial, Vec<&Trial>)> = Vec::new();
    for t in &c.trials {
        let same = |s: &&mut (&Trial, Vec<&Trial>)| s.0.cost == t.cost && s.0.quality.metric() == t.quality.metric();
        match spots.iter_mut().find(same) {
            Some(spot) => spot.1.push(t),
            None => spots.push((t, vec![t])),
        }
    }
    for (first, all) in spots {
        let mut counts: Vec<usize> = all.iter().map(|t| t.removed_blocks.len()).collect();
        counts.sort_unstable();
        counts.dedup();
        let whats: Vec<String> = all
            .iter()
            .map(|t| {
                let blocks: Vec<String> = t.removed_blocks.iter().map(|b| b.to_string()).collect();
                format!("{} ({})", blocks_removed(t.removed_blocks.len()), blocks.join(", "))
            })
            .collect();
        points.push(Point {
            x: first.cost.macs as f64,
            y: first.quality.metric(),
            mark: Mark::Candidate,
            text: counts.iter().map(|n| n.to_string()).collect::<Vec<_>>().join("/"),
            tag: String::new(),
            title: describe(&whats.join("\n"), &first.quality, &first.cost),
        });
    }
    let removed: usize = record.replacements.iter().map(|r| r.span.blocks().count()).sum();
    points.push(Point {
        x: c.compacted.macs as f64,
        y: record.result.metric(),
        mark: Mark::Chosen,
        text: removed.to_string(),
        tag: "chosen".into(),
        title: describe(&format!("chosen, {}: {}", blocks_removed(removed), c.output), &record.result, &c.compacted),
    });
    let y_label = format!("held-out {metric}");
    scatter_svg(
        &format!("held-out {metric} against MACs per image"),
        &AxisSpec { label: "MACs per image", format: TickFormat::Si, from_zero: false },
        &AxisSpec { label: &y_label, format: TickFormat::Percent, from_zero: false },
        &points,
        true,
        "number in a marker: blocks removed;\nhover a marker for its blocks",
        (520.0, 330.0),
    )
}

/// Accuracy against the measured median latency of the original (the
/// benchmark's first model) and the chosen model (its second): on-device
/// top-1 accuracy when the device evaluated both, else the held-out metric.
fn latency_figure(c: &CompactionReport, d: &DeviceReport) -> Option<String> {
    let [original, chosen] = d.benchmark.results.get(..2)? else {
        return None;
    };
    let on_device =
        |model: &str| d.evaluation.as_ref()?.results.iter().find(|e| e.model == model).and_then(|e| e.top1_accuracy);
    let record = &c.compaction;
    let (accuracy, y_label, data) = match (on_device(&original.model), on_device(&chosen.model), &d.evaluation) {
        (Some(a), Some(b), Some(e)) => ([a, b], "top-1 accuracy on the device".to_string(), e.data.clone()),
        _ => (
            [record.baseline.metric(), record.result.metric()],
            format!("held-out {}", metric_name(c)),
            record.held_out.source.clone(),
        ),
    };
    let points: Vec<Point> = [(original, Mark::Original, "original"), (chosen, Mark::Chosen, "chosen")]
        .into_iter()
        .zip(accuracy)
        .map(|((r, mark, tag), y)| Point {
            x: r.stats.p50_ns as f64,
            y,
            mark,
            text: String::new(),
            tag: tag.into(),
            title: format!("{tag} ({}): p50 {:.3} ms, {}", r.model, r.stats.p50_ns as f64 / 1e6, pct(Some(y))),
        })
        .collect();
    let speedup = match d.benchmark.ab.as_ref().and_then(|ab| ab.speedup) {
        Some(s) => format!(
            "; the chosen model runs <b>{:.2}x</b> as fast ({:.0}% interval {:.2}&ndash;{:.2})",
            s.point,
            100.0 * s.confidence,
            s.low,
            s.high
        ),
        None => String::new(),
    };
    let svg = scatter_svg(
        &format!("{y_label} ({data}) against measured latency"),
        &AxisSpec { label: "measured median (p50) latency, ms", format: TickFormat::Millis, from_zero: true },
        &AxisSpec { label: &y_label, format: TickFormat::Percent, from_zero: false },
        &points,
        false,
        "",
        (240.0, 240.0),
    );
    Some(format!(
        "<figure>{svg}<figcaption>Median warm latency measured on {} against {} on <code>{}</code>{speedup}.</figcaption></figure>",
        escape(&d.device.board),
        escape(&y_label),
        escape(&data)
    ))
}

/// How a value is spelled in the JSON (`"folded"`, `"cholesky"`).
fn serde_name<T: serde::Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        _ => "?".into(),
    }
}

/// The device section: latency box plots, the A/B speedup, on-device accuracy.
fn device_section(d: &DeviceReport) -> String {
    let bench = &d.benchmark;
    let device = &bench.device;
    let mut series = Vec::new();
    let mut rows = String::new();
    // The same model under two runtimes: the runtime tells the arms apart.
    let same_model = bench.results.windows(2).any(|w| w[0].model == w[1].model);
    for r in &bench.results {
        let st = &r.stats;
        let ms = |v: f64| format!("{:.3}", v / 1e6);
        let rt = &r.runtime;
        let eps: Vec<String> = rt
            .eps
            .iter()
            .map(|e| match &e.error {
                None => escape(&e.ep),
                Some(err) => format!("<s title=\"{}\">{}</s>", escape(err), escape(&e.ep)),
            })
            .collect();
        let cache = rt.engine_cache.as_ref().map_or(String::new(), |c| {
            format!(" (TensorRT engines: {} cached, {})", c.engines_before, if c.hit { "hit" } else { "built" })
        });
        let _ = write!(
            rows,
            "<tr><td>{}</td><td title=\"{}\">{}</td><td>{}</td><td>{}{cache}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&r.model),
            escape(rt.library.as_deref().unwrap_or("")),
            escape(&rt.version),
            if eps.is_empty() { "-".to_string() } else { eps.join(", ") },
            escape(if rt.nodes.is_empty() { "-".to_string() } else { rt.nodes_text() }.as_str()),
            ms(rt.session_ns as f64),
            ms(rt.first_run_ns as f64),
            st.count,
            ms(st.min_ns as f64),
            ms(st.p50_ns as f64),
            ms(st.p90_ns as f64),
            ms(st.p99_ns as f64),
            ms(st.max_ns as f64),
            r.peak_rss_bytes.map_or("-".into(), |b| format!("{:.1} MiB", b as f64 / (1 << 20) as f64)),
        );
        let label = if same_model { format!("{} ({})", r.model, rt.label()) } else { r.model.clone() };
        series.push((label, r.samples_ns.clone()));
    }
    let ab = match bench.ab.as_ref().and_then(|ab| ab.speedup.map(|s| (ab, s))) {
        Some((ab, s)) => format!(
            "<p>A/B, interleaved: <b>{}</b> is <b>{:.3}x</b> as fast as <b>{}</b> ({:.0}% interval {:.3}&ndash;{:.3}).</p>",
            escape(&ab.model_b),
            s.point,
            escape(&ab.model_a),
            100.0 * s.confidence,
            s.low,
            s.high,
        ),
        None => String::new(),
    };
    let mut evals = String::new();
    for e in d.evaluation.iter().flat_map(|e| &e.results) {
        let _ = write!(
            evals,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&e.model),
            escape(&e.runtime.label()),
            e.samples,
            pct(e.top1_accuracy),
            pct(e.top1_agreement),
            e.mean_cosine.map_or("-".into(), |v| format!("{v:.4}")),
        );
    }
    let evals = match &d.evaluation {
        Some(e) if !evals.is_empty() => format!(
            "<h3>Accuracy on the device ({})</h3><table><tr><th>model</th><th>runtime</th><th>images</th><th>top-1</th><th>agreement with the original</th><th>output cosine</th></tr>{evals}</table>",
            escape(&e.data)
        ),
        _ => String::new(),
    };
    format!(
        "<h2>On the device</h2><p>{} ({}, {} cores), reached as <code>{}</code>.</p>{ab}\
<figure>{}<figcaption>Warm latency per run: whiskers p1&ndash;p99, box p25&ndash;p75, line at the median</figcaption></figure>\
<table><tr><th>model</th><th>runtime</th><th>execution providers</th><th>nodes per provider</th><th>session ms</th><th>first run ms</th><th>runs</th><th>min ms</th><th>p50 ms</th><th>p90 ms</th><th>p99 ms</th><th>max ms</th><th>peak RSS</th></tr>{rows}</table>{evals}",
        escape(&device.board),
        escape(&device.arch),
        device.cores,
        escape(&d.target),
        latency_boxes_svg("warm latency", &series),
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    use super::*;
    use crate::board::{AbComparison, BenchReport, Speedup};
    use crate::compact::surgery::Span;
    use crate::compact::{Replacement, TranslatorKind};
    use crate::report::compaction::{Calibration, CompactionRecord, DataUsed};
    use crate::report::device::Evaluation;

    #[test]
    fn heatmap_has_one_cell_per_pair_and_greys_missing_ones() {
        let svg = heatmap_svg("t", &[vec![Some(1.0), None], vec![None, Some(0.0)]]);
        assert_eq!(svg.matches("<rect x=").count(), 4 + 20, "4 cells + 20 scale steps");
        assert_eq!(svg.matches("fill=\"#ccc\"").count(), 2);
        assert!(svg.contains(&color(1.0)) && svg.contains(&color(0.0)));
    }

    #[test]
    fn colour_ramp_ends() {
        assert_eq!(color(0.0), "rgb(68,1,84)");
        assert_eq!(color(1.0), "rgb(253,231,37)");
        assert_eq!(color(f64::NAN), color(0.0));
    }

    #[test]
    fn latency_boxes_order_the_quantiles() {
        let svg =
            latency_boxes_svg("t", &[("a".into(), (1..=100).map(|v| v * 1_000_000).collect()), ("b".into(), vec![])]);
        // One box (the empty series draws only its name), median inside it.
        assert_eq!(svg.matches("<rect").count(), 1);
        // Nearest rank: p25 of 1..=100 ms is sample 26 (index round(24.75)), p75 sample 75.
        assert!(svg.contains("p25 26.000 ms, p75 75.000 ms"), "{svg}");
        assert!(svg.contains(">a</text>") && svg.contains(">b</text>"));
    }

    #[test]
    fn nice_steps_are_one_two_or_five_times_a_power_of_ten() {
        assert_eq!(nice_step(0.012, 6), 0.002);
        assert_eq!(nice_step(7.3e6, 5), 2e6);
        assert_eq!(nice_step(100.0, 4), 20.0);
        for span in [3e-7, 0.013, 0.9, 7.0, 42.0, 1234.5, 9.9e8] {
            for target in 2..9 {
                let step = nice_step(span, target);
                let mantissa = step / 10f64.powf(step.log10().floor());
                assert!(
                    [1.0, 2.0, 5.0, 10.0].iter().any(|m| (mantissa - m).abs() < 1e-9),
                    "span {span} target {target}: step {step}"
                );
                let intervals = span / step;
                assert!(intervals > target as f64 / 3.0 && intervals < target as f64 * 3.0, "{span} {target} {step}");
            }
        }
        assert_eq!(nice_step(0.0, 5), 1.0, "an empty range still has a step");
    }

    #[test]
    fn tick_values_are_written_for_their_axis() {
        assert_eq!(TickFormat::Percent.format(0.984, 0.002, 1.0), "98.4%");
        assert_eq!(TickFormat::Percent.format(0.95, 0.05, 1.0), "95%");
        assert_eq!(TickFormat::Si.format(8e6, 5e5, 1e7), "8.0M");
        assert_eq!(TickFormat::Si.format(12_000.0, 2_000.0, 14_000.0), "12K");
        assert_eq!(TickFormat::Millis.format(1.5e6, 5e5, 2e6), "1.5");
        assert_eq!(TickFormat::Plain.format(0.25, 0.05, 1.0), "0.25");
        assert_eq!(TickFormat::Plain.format(1.5e-5, 5e-6, 2e-5), "1.5e-5");
        assert_eq!(TickFormat::Plain.format(0.0, 5e-6, 2e-5), "0.000000");
    }

    #[test]
    fn numeric_axis_ends_on_whole_ticks() {
        let a = Axis::numeric("v", 0.13, 0.87, TickFormat::Plain, 4);
        let values: Vec<f64> = a.ticks.iter().map(|t| t.0).collect();
        assert_eq!((a.lo, a.hi), (0.0, 1.0));
        assert_eq!(values.len(), 6, "{values:?}");
        assert!(values.windows(2).all(|w| (w[1] - w[0] - 0.2).abs() < 1e-12));
        let texts: Vec<&str> = a.ticks.iter().map(|t| t.1.as_str()).collect();
        assert_eq!(texts, ["0.0", "0.2", "0.4", "0.6", "0.8", "1.0"]);
    }

    #[test]
    fn accuracy_axis_is_zoomed_to_the_data() {
        let a = Axis::fitted("held-out accuracy", &[0.983, 0.99, 0.993], TickFormat::Percent, false, 6);
        let (first, last) = (a.ticks[0].0, a.ticks[a.ticks.len() - 1].0);
        assert!((0.95..0.983).contains(&first), "zoomed, not from 0: {:?}", a.ticks);
        assert!((0.993..=1.0).contains(&last), "{:?}", a.ticks);
        let texts: Vec<&str> = a.ticks.iter().map(|t| t.1.as_str()).collect();
        assert_eq!(texts, ["98.2%", "98.4%", "98.6%", "98.8%", "99.0%", "99.2%", "99.4%"]);
        // Padding never leaves 0..=100%, and one value still spans a range.
        let top = Axis::fitted("a", &[0.9, 1.0], TickFormat::Percent, false, 5);
        assert!(top.hi <= 1.0 && top.hi >= 1.0 - 1e-12, "{:?}", top.ticks);
        let one = Axis::fitted("a", &[0.5], TickFormat::Percent, false, 5);
        assert!(one.lo < 0.5 && one.hi > 0.5 && one.ticks.len() >= 2, "{:?}", one.ticks);
        // A cost axis from zero starts at zero.
        let ms = Axis::fitted("ms", &[1.5e6, 2e6], TickFormat::Millis, true, 4);
        assert_eq!(ms.ticks[0], (0.0, "0.0".to_string()));
    }

    #[test]
    fn pareto_front_keeps_the_undominated_points_in_rising_order() {
        let points = [
            (10.0, 0.99),    // 0: the original: the most accurate
            (9.0, 0.985),    // 1
            (9.0, 0.97),     // 2: same cost as 1, worse
            (8.0, 0.98),     // 3
            (8.5, 0.975),    // 4: costs more than 3, worse
            (7.0, 0.95),     // 5: costs more than 6, worse
            (6.0, 0.96),     // 6: the cheapest
            (f64::NAN, 1.0), // 7: unmeasured
            (9.5, f64::NAN), // 8: unmeasured
            (8.0, 0.98),     // 9: a tie with 3 counts once
        ];
        let front = pareto_front(&points);
        assert_eq!(front, [6, 3, 1, 0]);
        assert!(front.windows(2).all(|w| points[w[0]].0 < points[w[1]].0 && points[w[0]].1 < points[w[1]].1));
        for (i, p) in points.iter().enumerate().filter(|(i, _)| !front.contains(i)) {
            if p.0.is_finite() && p.1.is_finite() {
                assert!(
                    points.iter().any(|q| q.0 <= p.0 && q.1 >= p.1 && q != p) || i == 9,
                    "{i} is off the front but nothing dominates it"
                );
            }
        }
        assert!(pareto_front(&[]).is_empty());
    }

    fn bench_result(model: &str, samples: &[u64], rss: Option<u64>) -> rba_protocol::BenchmarkResult {
        let stats = rba_protocol::LatencyStats {
            count: samples.len() as u64,
            min_ns: samples[0],
            p50_ns: samples[0],
            max_ns: samples[samples.len() - 1],
            ..Default::default()
        };
        rba_protocol::BenchmarkResult {
            model: model.into(),
            threads: 1,
            load_time_ns: 0,
            first_run_ns: 0,
            warmup_runs: 0,
            samples_ns: samples.to_vec(),
            stats,
            peak_rss_bytes: rss,
            cpu_temp_start_c: None,
            cpu_temp_end_c: None,
            throttling: None,
            runtime: rba_protocol::RuntimeReport::default(),
        }
    }

    fn eval_result(model: &str, accuracy: f64) -> rba_protocol::EvalResult {
        rba_protocol::EvalResult {
            model: model.into(),
            bundle: "b".into(),
            samples: 497,
            top1_accuracy: Some(accuracy),
            top1_agreement: None,
            max_abs_diff: None,
            mean_cosine: None,
            latency: None,
            peak_rss_bytes: None,
            runtime: rba_protocol::RuntimeReport::default(),
        }
    }

    /// A benchmark of `orig` (2 ms) against `slim` (1.5 ms); only `slim`
    /// evaluated on the device.
    fn device_report() -> DeviceReport {
        let identity = rba_protocol::DeviceIdentity {
            board: "local".into(),
            arch: "x86_64".into(),
            cores: 2,
            ..Default::default()
        };
        DeviceReport {
            schema_version: 1,
            device: identity.clone(),
            target: "local (pty)".into(),
            deployed: Vec::new(),
            benchmark: BenchReport {
                device: identity,
                results: vec![
                    bench_result("orig", &[2_000_000, 2_100_000], Some(1 << 20)),
                    bench_result("slim", &[1_500_000, 1_600_000], None),
                ],
                ab: Some(AbComparison {
                    model_a: "orig".into(),
                    model_b: "slim".into(),
                    ratio_of_medians: 0.75,
                    speedup: Some(Speedup { point: 1.333, low: 1.2, high: 1.4, confidence: 0.95, resamples: 100 }),
                }),
            },
            evaluation: Some(Evaluation {
                data: "demo:test".into(),
                samples: 497,
                results: vec![eval_result("slim", 0.9678)],
            }),
        }
    }

    fn quality(accuracy: f64) -> Quality {
        Quality { accuracy: Some(accuracy), agreement: 0.98, output_cosine: 0.99 }
    }

    fn trial(removed_blocks: &[usize], accuracy: f64, macs: u64) -> Trial {
        Trial {
            removed_blocks: removed_blocks.to_vec(),
            quality: quality(accuracy),
            cost: ModelCost { params: macs / 10, macs },
        }
    }

    /// Blocks 5 and 6 (span 4..6) removed out of a 10K-MAC model; one
    /// candidate (block 4 alone) dominated, two (5 alone, 6 alone) alike.
    fn compaction_report() -> CompactionReport {
        CompactionReport {
            schema_version: 1,
            model: "m.onnx".into(),
            output: "s.onnx".into(),
            compaction: CompactionRecord {
                replacements: vec![Replacement {
                    span: Span::new(4, 6),
                    translator: TranslatorKind::Folded,
                    fit_residual: 0.25,
                    solver: crate::fit::Solver::Cholesky,
                }],
                calibration: Calibration {
                    source: "demo".into(),
                    images: 500,
                    fitted_on: "original model activations".into(),
                },
                held_out: DataUsed { source: "demo:val".into(), images: 300, excluded_seen_by_probe: None },
                baseline: Quality { accuracy: Some(0.99), agreement: 1.0, output_cosine: 1.0 },
                result: quality(0.98),
            },
            verification: None,
            trials: vec![
                trial(&[5], 0.985, 9000),
                trial(&[4], 0.97, 9000),
                trial(&[6], 0.985, 9000),
                trial(&[5, 6], 0.98, 8000),
            ],
            original: ModelCost { params: 1000, macs: 10_000 },
            compacted: ModelCost { params: 800, macs: 8000 },
            proxy_spearman: vec![("1-cosine".into(), f64::NAN)],
        }
    }

    #[test]
    fn merged_report_shows_device_and_compaction_figures() {
        let device = device_report();
        let compaction = compaction_report();
        let page = merged_page(None, Some(&compaction), Some(&device));
        assert!(page.contains("is <b>1.333x</b> as fast as <b>orig</b> (95% interval 1.200&ndash;1.400)"), "{page}");
        assert!(page.contains("<td>slim</td><td>tract</td><td>497</td><td>96.78%</td>"), "{page}");
        assert!(page.contains("<td>4..6</td><td>folded</td><td>0.2500</td><td>cholesky</td>"), "{page}");
        assert!(page.contains("Held-out metric 99.00% &rarr; 98.00%"), "{page}");
        assert!(page.contains("10.0K &rarr; 8000 MACs per image"), "{page}");
        assert!(
            page.contains("<td>orig</td>")
                && page.contains("<td>0.000</td><td>0.000</td><td>2</td><td>2.000</td><td>2.000</td>")
                && page.contains("1.0 MiB"),
            "{page}"
        );
        // Accuracy against MACs, and against the measured latency: only the
        // compacted model was evaluated on the device, so the held-out
        // metric stands for both.
        assert!(page.contains("<title>held-out accuracy against MACs per image</title>"), "{page}");
        assert!(page.contains("<title>held-out accuracy (demo:val) against measured latency</title>"), "{page}");
        assert!(page.contains("<title>original (orig): p50 2.000 ms, 99.00%</title>"), "{page}");
        assert!(page.contains("<title>chosen (slim): p50 1.500 ms, 98.00%</title>"), "{page}");
        assert!(page.contains("runs <b>1.33x</b> as fast (95% interval 1.20&ndash;1.40)"), "{page}");
        assert!(!page.contains("rba analysis"), "no analysis given");
        // With both models evaluated on the device, the device's accuracy is plotted.
        let mut both = device.clone();
        both.evaluation.as_mut().unwrap().results.push(eval_result("orig", 0.9718));
        let page = merged_page(None, Some(&compaction), Some(&both));
        assert!(page.contains("<title>top-1 accuracy on the device (demo:test) against measured latency</title>"));
        assert!(page.contains("<title>original (orig): p50 2.000 ms, 97.18%</title>"), "{page}");
        // Without a device report, no latency chart.
        let page = merged_page(None, Some(&compaction), None);
        assert!(page.contains("against MACs per image") && !page.contains("measured latency"));
        // The typed reports read back what they wrote, NaN included (JSON null).
        let json = serde_json::to_string(&compaction).unwrap();
        assert!(json.contains("[\"1-cosine\",null]"), "{json}");
        let back: CompactionReport = serde_json::from_str(&json).unwrap();
        assert!(back.proxy_spearman[0].1.is_nan());
        let back: DeviceReport = serde_json::from_str(&serde_json::to_string(&device).unwrap()).unwrap();
        assert_eq!(back.benchmark.results, device.benchmark.results);
    }

    /// One model under tract and under onnxruntime with CUDA asked for and
    /// refused (a CPU-only library), as `rba bench --runtimes` reports it.
    pub(crate) fn runtime_compare_report() -> DeviceReport {
        use rba_protocol::{EpOutcome, EpPolicy, ProviderNodes, RuntimeKind, RuntimeReport};
        let mut d = device_report();
        let mut a = bench_result("vit-digits", &[2_000_000, 2_100_000], None);
        a.runtime = RuntimeReport {
            version: "tract-onnx 0.23".into(),
            nodes: vec![ProviderNodes { provider: "tract".into(), nodes: 311 }],
            session_ns: 250_000_000,
            first_run_ns: 3_000_000,
            ..RuntimeReport::default()
        };
        let mut b = bench_result("vit-digits", &[1_000_000, 1_100_000], None);
        b.runtime = RuntimeReport {
            runtime: RuntimeKind::OnnxRuntime,
            version: "onnxruntime 1.32.0".into(),
            library: Some("/x/libonnxruntime.so.1.32.0".into()),
            policy: EpPolicy::Fallback,
            eps: vec![EpOutcome {
                ep: "cuda".into(),
                options: vec![],
                error: Some("CUDA execution provider is not enabled in this build".into()),
            }],
            nodes: vec![ProviderNodes { provider: "CPUExecutionProvider".into(), nodes: 290 }],
            session_ns: 90_000_000,
            first_run_ns: 1_500_000,
            ..RuntimeReport::default()
        };
        d.benchmark.results = vec![a, b];
        d.benchmark.ab = Some(AbComparison {
            model_a: "vit-digits (tract)".into(),
            model_b: "vit-digits (onnxruntime)".into(),
            ratio_of_medians: 0.5,
            speedup: Some(Speedup { point: 2.0, low: 1.9, high: 2.1, confidence: 0.95, resamples: 100 }),
        });
        d
    }

    #[test]
    fn the_device_section_shows_runtime_providers_and_nodes() {
        let page = merged_page(None, None, Some(&runtime_compare_report()));
        assert!(page.contains("<th>runtime</th><th>execution providers</th><th>nodes per provider</th>"), "{page}");
        assert!(
            page.contains("<td>vit-digits</td><td title=\"\">tract-onnx 0.23</td><td>-</td><td>tract 311</td>"),
            "{page}"
        );
        assert!(
            page.contains(
                "<td title=\"/x/libonnxruntime.so.1.32.0\">onnxruntime 1.32.0</td><td><s title=\"CUDA execution \
                 provider is not enabled in this build\">cuda</s></td><td>CPUExecutionProvider 290</td><td>90.000</td>\
                 <td>1.500</td>"
            ),
            "{page}"
        );
        // The box plot tells the two arms of one model apart by runtime.
        assert!(page.contains("vit-digits (tract)") && page.contains("vit-digits (onnxruntime)"), "{page}");
        assert!(page.contains("is <b>2.000x</b> as fast as <b>vit-digits (tract)</b>"), "{page}");
    }

    #[test]
    fn pareto_chart_labels_its_axes_and_marks_original_and_chosen() {
        let c = compaction_report();
        let svg = pareto_svg(&c);
        for label in
            ["held-out accuracy", "MACs per image", "blocks removed", "Pareto front", "original model", "chosen model"]
        {
            assert!(svg.contains(label), "{label}: {svg}");
        }
        // Zoomed: the lowest accuracy tick is close under the data (97%), not 0%.
        let ticks: Vec<f64> = svg
            .split("text-anchor=\"end\">")
            .skip(1)
            .filter_map(|s| s.split('%').next()?.parse::<f64>().ok())
            .collect();
        assert!(!ticks.is_empty() && ticks.iter().all(|&t| (95.0..=100.0).contains(&t)), "{ticks:?}");
        // The original (a diamond) and the chosen model (a ring) are drawn and tagged.
        assert!(svg.contains("fill=\"#111\"") && svg.contains(">original</text>"), "{svg}");
        assert!(svg.contains("r=\"11.5\" fill=\"none\" stroke=\"#d62728\"") && svg.contains(">chosen</text>"), "{svg}");
        // Each candidate says what it removed; the dominated one (block 4) is light.
        assert!(svg
            .contains("<title>2 blocks removed (5, 6)\naccuracy 98.00%, 8000 MACs per image, 800 parameters</title>"));
        assert!(svg.contains("<title>1 block removed (4)\naccuracy 97.00%"), "{svg}");
        // Blocks 5 and 6 alone cost and score the same: one marker lists both.
        assert!(svg.contains("<title>1 block removed (5)\n1 block removed (6)\naccuracy 98.50%"), "{svg}");
        assert_eq!(svg.matches("<circle").count(), 3 + 2 + 2 + 2, "3 candidate spots, the chosen ring and dot, legend");
        assert_eq!(svg.matches("fill=\"#b8c2d6\"").count(), 2, "the dominated candidate and its legend entry");
        assert!(svg.contains(">2</text>"), "the number of blocks removed is in the marker");
        // Without labels the metric is agreement, and says so.
        let mut unlabelled = c.clone();
        unlabelled.compaction.baseline.accuracy = None;
        let svg = pareto_svg(&unlabelled);
        assert!(svg.contains("held-out agreement with the original") && !svg.contains("held-out accuracy"));
    }

    #[test]
    fn every_chart_labels_its_axes_with_tick_values() {
        let heat = heatmap_svg("cka", &[vec![Some(1.0), Some(0.5)], vec![Some(0.5), Some(1.0)]]);
        assert_eq!(heat.matches(">boundary index</text>").count(), 2, "{heat}");
        assert!(heat.contains(">0</text>") && heat.contains(">1</text>") && heat.contains(">0.5</text>"));
        let bars = bars_svg("r", "block", "1 - R²", &["1".into(), "2".into()], &[Some(0.2), None]);
        assert!(bars.contains(">block</text>") && bars.contains(">1 - R²</text>") && bars.contains(">n/a</text>"));
        assert!(bars.contains(">0.00</text>") && bars.contains(">0.20</text>"), "{bars}");
        let boxes = latency_boxes_svg("l", &[("m".into(), vec![1_000_000, 2_000_000])]);
        assert!(boxes.contains(">warm latency per run (ms)</text>") && boxes.contains(">0.0</text>"), "{boxes}");
        assert!(!boxes.contains("rotate(-90"), "no y title for the model names");
        assert!(bars.contains("rotate(-90"), "the y title stands upright");
    }

    #[test]
    fn tags_avoid_markers_and_stay_inside_the_frame() {
        let f = Frame { left: 0.0, top: 0.0, width: 200.0, height: 200.0 };
        let covers = |r: Rect, (mx, my): (f64, f64)| (mx.clamp(r.0, r.2) - mx).hypot(my.clamp(r.1, r.3) - my) < 9.0;
        // Free: right of the marker, a little above.
        let Tag { anchor, rect, .. } = place_tag(&f, (100.0, 100.0), 40.0, &[(100.0, 100.0)], &[]);
        assert_eq!(anchor, "start");
        assert!(rect.0 > 100.0 && rect.3 < 100.0, "{rect:?}");
        // A neighbour up right and one level right: the tag goes elsewhere.
        let markers = [(100.0, 100.0), (125.0, 93.0), (125.0, 100.0), (150.0, 100.0)];
        let rect = place_tag(&f, (100.0, 100.0), 40.0, &markers, &[]).rect;
        assert!(markers[1..].iter().all(|&m| !covers(rect, m)), "{rect:?}");
        // At the right edge the tag goes left.
        let Tag { anchor, rect, .. } = place_tag(&f, (195.0, 100.0), 40.0, &[], &[]);
        assert_eq!(anchor, "end");
        assert!(rect.0 >= 0.0 && rect.2 <= 200.0);
        // A second tag does not sit on the first.
        let first = place_tag(&f, (100.0, 100.0), 40.0, &[], &[]).rect;
        let second = place_tag(&f, (100.0, 100.0), 40.0, &[], &[first]).rect;
        assert!(second.2 <= first.0 || second.0 >= first.2 || second.3 <= first.1 || second.1 >= first.3);
    }

    #[test]
    fn escapes_names() {
        let svg = bars_svg("<x>", "a<b", "c>d", &["a&b".into()], &[Some(1.0)]);
        assert!(svg.contains("&lt;x&gt;") && svg.contains("a&amp;b") && !svg.contains("<x>"));
        assert!(svg.contains(">a&lt;b</text>") && svg.contains(">c&gt;d</text>"));
        let point = Point {
            x: 1.0,
            y: 0.5,
            mark: Mark::Chosen,
            text: "<1>".into(),
            tag: "a&b".into(),
            title: "\"q\" <script>".into(),
        };
        let x = AxisSpec { label: "<x>", format: TickFormat::Si, from_zero: false };
        let y = AxisSpec { label: "y&", format: TickFormat::Percent, from_zero: false };
        let svg = scatter_svg("<t>", &x, &y, &[point], true, "<n>", (300.0, 200.0));
        for bad in ["<x>", "<1>", "<script>", "<n>", "<t>", "a&b", "y&<"] {
            assert!(!svg.contains(bad), "{bad}: {svg}");
        }
        assert!(svg.contains("&quot;q&quot; &lt;script&gt;") && svg.contains(">a&amp;b</text>"));
        let mut c = compaction_report();
        c.output = "<slim>.onnx".into();
        assert!(pareto_svg(&c).contains("&lt;slim&gt;.onnx") && !pareto_svg(&c).contains("<slim>"));
    }
}
