//! Self-contained HTML for the analysis report: inline SVG heatmaps and bar
//! charts, no scripts, no network.

use std::fmt::Write;

use super::analysis::{AnalysisReport, SPAN_COLUMNS};
use super::compaction::CompactionReport;
use super::device::DeviceReport;
use super::text::si;

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

/// A square heatmap of `values` (rows = columns = boundaries), `None` cells grey.
pub fn heatmap_svg(title: &str, values: &[Vec<Option<f64>>]) -> String {
    let n = values.len();
    let cell = (360 / n.max(1)).clamp(8, 40);
    let margin = 40;
    let size = margin + n * cell + 10;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{}\" role=\"img\"><title>{}</title>",
        size + 60,
        size + 20,
        escape(title)
    );
    for (i, row) in values.iter().enumerate() {
        for (j, v) in row.iter().enumerate() {
            let fill = v.map_or("#ccc".to_string(), color);
            let tip = v.map_or("n/a".to_string(), |v| format!("{v:.4}"));
            let _ = write!(
                svg,
                "<rect x=\"{}\" y=\"{}\" width=\"{cell}\" height=\"{cell}\" fill=\"{fill}\"><title>h{i} vs h{j}: {tip}</title></rect>",
                margin + j * cell,
                margin + i * cell
            );
        }
        if n <= 30 || i % 2 == 0 {
            let _ = write!(
                svg,
                "<text x=\"{}\" y=\"{}\" font-size=\"10\" text-anchor=\"end\">{i}</text><text x=\"{}\" y=\"{}\" font-size=\"10\" text-anchor=\"middle\">{i}</text>",
                margin - 4,
                margin + i * cell + cell / 2 + 3,
                margin + i * cell + cell / 2,
                margin - 6
            );
        }
    }
    // Colour scale.
    let x = margin + n * cell + 20;
    for k in 0..20 {
        let v = 1.0 - k as f64 / 19.0;
        let _ = write!(
            svg,
            "<rect x=\"{x}\" y=\"{}\" width=\"14\" height=\"{}\" fill=\"{}\"/>",
            margin + k * 9,
            9,
            color(v)
        );
    }
    let _ = write!(
        svg,
        "<text x=\"{}\" y=\"{}\" font-size=\"10\">1</text><text x=\"{}\" y=\"{}\" font-size=\"10\">0</text></svg>",
        x + 18,
        margin + 8,
        x + 18,
        margin + 180
    );
    svg
}

/// A bar chart of one value per block (`None` = not replaceable).
pub fn bars_svg(title: &str, labels: &[String], values: &[Option<f64>]) -> String {
    let (w, h, margin) = (560usize, 200usize, 40usize);
    let max = values.iter().flatten().fold(0f64, |m, v| m.max(v.abs())).max(f64::MIN_POSITIVE);
    let n = values.len().max(1);
    let bw = (w - margin) / n;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{}\" role=\"img\"><title>{}</title>",
        h + 30,
        escape(title)
    );
    let _ = write!(svg, "<line x1=\"{margin}\" y1=\"{h}\" x2=\"{w}\" y2=\"{h}\" stroke=\"#444\"/>");
    let _ = write!(svg, "<text x=\"2\" y=\"12\" font-size=\"10\">{}</text>", escape(&format!("{max:.3e}")));
    for (k, (label, v)) in labels.iter().zip(values).enumerate() {
        let x = margin + k * bw;
        match v {
            Some(v) => {
                let bh = ((v.abs() / max) * (h - 20) as f64).round() as usize;
                let _ = write!(
                    svg,
                    "<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{bh}\" fill=\"#3b528b\"><title>block {}: {v:.4e}</title></rect>",
                    x + 2,
                    h - bh,
                    bw.saturating_sub(4).max(1),
                    escape(label)
                );
            }
            None => {
                let _ = write!(svg, "<text x=\"{}\" y=\"{}\" font-size=\"9\" fill=\"#999\">n/a</text>", x + 2, h - 4);
            }
        }
        let _ = write!(
            svg,
            "<text x=\"{}\" y=\"{}\" font-size=\"10\" text-anchor=\"middle\">{}</text>",
            x + bw / 2,
            h + 14,
            escape(label)
        );
    }
    svg.push_str("</svg>");
    svg
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
    sections.extend(compaction.map(compaction_section));
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
        res_svg = bars_svg("1 - R^2 per block", &labels, &residual),
        br_svg = bars_svg("-BR (CLS) per block", &labels, &br),
        br_all_svg = bars_svg("-BR (all tokens) per block", &labels, &br_all),
    )
}

/// Percent with one decimal, or "-".
fn pct(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{:.2}%", 100.0 * v))
}

/// The compaction section: what was replaced, the verified quality, and the
/// best held-out metric reached for each number of blocks removed.
fn compaction_section(c: &CompactionReport) -> String {
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
    let best = c.best_metric_per_removed();
    let labels: Vec<String> = (0..best.len()).map(|k| k.to_string()).collect();
    let chart = if best.len() > 1 {
        format!(
            "<figure>{}<figcaption>Best held-out metric (accuracy, else agreement) per number of blocks removed</figcaption></figure>",
            bars_svg("held-out metric vs blocks removed", &labels, &best)
        )
    } else {
        String::new()
    };
    format!(
        "<h2>Compaction</h2><p><b>{}</b> &rarr; <b>{}</b>; calibration: {} images from <code>{}</code>, fitted on {}; \
held-out: {} images from <code>{}</code>.</p><p>Held-out metric {} &rarr; {} (agreement with the original {}, output cosine {:.4}).</p>\
<table><tr><th>span</th><th>translator</th><th>1-R²</th><th>solver</th></tr>{rows}</table>{chart}",
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
    )
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
    for r in &bench.results {
        let st = &r.stats;
        let ms = |v: f64| format!("{:.3}", v / 1e6);
        let _ = write!(
            rows,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&r.model),
            st.count,
            ms(st.min_ns as f64),
            ms(st.p50_ns as f64),
            ms(st.p90_ns as f64),
            ms(st.p99_ns as f64),
            ms(st.max_ns as f64),
            r.peak_rss_bytes.map_or("-".into(), |b| format!("{:.1} MiB", b as f64 / (1 << 20) as f64)),
        );
        series.push((r.model.clone(), r.samples_ns.clone()));
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
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&e.model),
            e.samples,
            pct(e.top1_accuracy),
            pct(e.top1_agreement),
            e.mean_cosine.map_or("-".into(), |v| format!("{v:.4}")),
        );
    }
    let evals = match &d.evaluation {
        Some(e) if !evals.is_empty() => format!(
            "<h3>Accuracy on the device ({})</h3><table><tr><th>model</th><th>images</th><th>top-1</th><th>agreement with the original</th><th>output cosine</th></tr>{evals}</table>",
            escape(&e.data)
        ),
        _ => String::new(),
    };
    format!(
        "<h2>On the device</h2><p>{} ({}, {} cores), reached as <code>{}</code>.</p>{ab}\
<figure>{}<figcaption>Warm latency per run: whiskers p1&ndash;p99, box p25&ndash;p75, line at the median</figcaption></figure>\
<table><tr><th>model</th><th>runs</th><th>min ms</th><th>p50 ms</th><th>p90 ms</th><th>p99 ms</th><th>max ms</th><th>peak RSS</th></tr>{rows}</table>{evals}",
        escape(&device.board),
        escape(&device.arch),
        device.cores,
        escape(&d.target),
        latency_boxes_svg("warm latency", &series),
    )
}

/// Horizontal box plots of latency samples (ns), one per series, on a shared
/// millisecond axis.
pub fn latency_boxes_svg(title: &str, series: &[(String, Vec<u64>)]) -> String {
    let (w, row, left) = (620usize, 36usize, 170usize);
    let h = 30 + row * series.len();
    let pick = |sorted: &[u64], p: f64| {
        sorted[((p * (sorted.len() - 1) as f64).round() as usize).min(sorted.len() - 1)] as f64
    };
    let max = series.iter().flat_map(|(_, s)| s.iter().copied()).max().unwrap_or(1).max(1) as f64 * 1.05;
    let x = |ns: f64| left as f64 + ns / max * (w - left - 20) as f64;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{}\" role=\"img\"><title>{}</title>",
        h + 20,
        escape(title)
    );
    for (k, (name, samples)) in series.iter().enumerate() {
        let y = 10 + k * row;
        let _ = write!(
            svg,
            "<text x=\"{}\" y=\"{}\" font-size=\"11\" text-anchor=\"end\">{}</text>",
            left - 8,
            y + 18,
            escape(name)
        );
        if samples.is_empty() {
            continue;
        }
        let mut s = samples.clone();
        s.sort_unstable();
        let [p1, p25, p50, p75, p99] = [0.01, 0.25, 0.5, 0.75, 0.99].map(|p| x(pick(&s, p)));
        let mid = y + 14;
        let _ = write!(
            svg,
            "<line x1=\"{p1:.1}\" y1=\"{mid}\" x2=\"{p99:.1}\" y2=\"{mid}\" stroke=\"#444\"/>\
<rect x=\"{p25:.1}\" y=\"{}\" width=\"{:.1}\" height=\"20\" fill=\"#5ec962\" stroke=\"#333\"><title>{}: p25 {:.3} ms, p75 {:.3} ms</title></rect>\
<line x1=\"{p50:.1}\" y1=\"{}\" x2=\"{p50:.1}\" y2=\"{}\" stroke=\"#000\" stroke-width=\"2\"/>",
            y + 4,
            (p75 - p25).max(1.0),
            escape(name),
            pick(&s, 0.25) / 1e6,
            pick(&s, 0.75) / 1e6,
            y + 4,
            y + 24,
        );
    }
    let axis = 10 + row * series.len() + 4;
    for k in 0..=4 {
        let ns = max * k as f64 / 4.0;
        let _ = write!(
            svg,
            "<text x=\"{:.1}\" y=\"{}\" font-size=\"10\" text-anchor=\"middle\">{:.2} ms</text>",
            x(ns),
            axis + 10,
            ns / 1e6
        );
    }
    svg.push_str("</svg>");
    svg
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

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
        }
    }

    #[test]
    fn merged_report_shows_device_and_compaction_figures() {
        use crate::board::{AbComparison, BenchReport, Speedup};
        use crate::compact::evaluate::Quality;
        use crate::compact::surgery::Span;
        use crate::compact::{ModelCost, Replacement, TranslatorKind, Trial};
        use crate::report::compaction::{Calibration, CompactionRecord, DataUsed};
        use crate::report::device::Evaluation;

        let identity = rba_protocol::DeviceIdentity {
            board: "local".into(),
            arch: "x86_64".into(),
            cores: 2,
            ..Default::default()
        };
        let device = DeviceReport {
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
                results: vec![rba_protocol::EvalResult {
                    model: "slim".into(),
                    bundle: "b".into(),
                    samples: 497,
                    top1_accuracy: Some(0.9678),
                    top1_agreement: None,
                    max_abs_diff: None,
                    mean_cosine: None,
                    latency: None,
                    peak_rss_bytes: None,
                }],
            }),
        };
        let q = |accuracy: f64| Quality { accuracy: Some(accuracy), agreement: 0.98, output_cosine: 0.99 };
        let compaction = CompactionReport {
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
                held_out: DataUsed { source: "demo:val".into(), images: 300 },
                baseline: Quality { accuracy: Some(0.99), agreement: 1.0, output_cosine: 1.0 },
                result: q(0.98),
            },
            trials: vec![
                Trial { removed_blocks: vec![5], quality: q(0.985), cost: ModelCost { params: 900, macs: 9000 } },
                Trial { removed_blocks: vec![5, 6], quality: q(0.98), cost: ModelCost { params: 800, macs: 8000 } },
            ],
            original: ModelCost { params: 1000, macs: 10_000 },
            compacted: ModelCost { params: 800, macs: 8000 },
            proxy_spearman: vec![("1-cosine".into(), f64::NAN)],
        };
        let page = merged_page(None, Some(&compaction), Some(&device));
        assert!(page.contains("is <b>1.333x</b> as fast as <b>orig</b> (95% interval 1.200&ndash;1.400)"), "{page}");
        assert!(page.contains("<td>slim</td><td>497</td><td>96.78%</td>"), "{page}");
        assert!(page.contains("<td>4..6</td><td>folded</td><td>0.2500</td><td>cholesky</td>"), "{page}");
        assert!(page.contains("Held-out metric 99.00% &rarr; 98.00%"), "{page}");
        assert!(
            page.contains("<td>orig</td><td>2</td><td>2.000</td><td>2.000</td>") && page.contains("1.0 MiB"),
            "{page}"
        );
        assert!(!page.contains("rba analysis"), "no analysis given");
        // The typed reports read back what they wrote, NaN included (JSON null).
        let json = serde_json::to_string(&compaction).unwrap();
        assert!(json.contains("[\"1-cosine\",null]"), "{json}");
        let back: CompactionReport = serde_json::from_str(&json).unwrap();
        assert!(back.proxy_spearman[0].1.is_nan());
        let back: DeviceReport = serde_json::from_str(&serde_json::to_string(&device).unwrap()).unwrap();
        assert_eq!(back.benchmark.results, device.benchmark.results);
    }

    #[test]
    fn escapes_names() {
        let svg = bars_svg("<x>", &["a&b".into()], &[Some(1.0)]);
        assert!(svg.contains("&lt;x&gt;") && svg.contains("a&amp;b") && !svg.contains("<x>"));
    }
}
