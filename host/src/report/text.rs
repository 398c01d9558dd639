//! Terminal output: the tables and one-line summaries every command prints,
//! and the number formats they share.

use rba_protocol::{DeviceIdentity, EvalResult, RuntimeInfo, RuntimeKind, RuntimeReport};

use super::analysis::{AnalysisReport, SPAN_COLUMNS};
use crate::board::BenchReport;
use crate::compact::evaluate::EvalRow;
use crate::compact::{Selection, SelectionMode, Verification};
use crate::fit::probe::Probe;
use crate::model::cost;
use crate::model::inspect::{Inspection, TensorSummary};
use crate::model::Model;

/// Human-readable counts: 1234567 -> "1.23M".
pub fn si(n: u64) -> String {
    match n {
        0..=9_999 => n.to_string(),
        10_000..=999_999 => format!("{:.1}K", n as f64 / 1e3),
        1_000_000..=999_999_999 => format!("{:.2}M", n as f64 / 1e6),
        _ => format!("{:.2}G", n as f64 / 1e9),
    }
}

/// `1.23 ms`, `456 us`, `2.10 s`.
pub fn format_ns(ns: f64) -> String {
    if ns >= 1e9 {
        format!("{:.2} s", ns / 1e9)
    } else if ns >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.0} us", ns / 1e3)
    } else {
        format!("{ns:.0} ns")
    }
}

pub fn format_bytes(b: u64) -> String {
    let b = b as f64;
    if b >= (1u64 << 30) as f64 {
        format!("{:.1} GiB", b / (1u64 << 30) as f64)
    } else {
        format!("{:.1} MiB", b / (1u64 << 20) as f64)
    }
}

/// One line about a device: board, arch, cores, memory, runtime.
pub fn describe_identity(id: &DeviceIdentity) -> String {
    format!(
        "{} ({} {}, {} cores, {} RAM, {}, rba {}{})",
        id.board,
        id.arch,
        id.os,
        id.cores,
        format_bytes(id.memory_bytes),
        id.runtime,
        id.rba_version,
        if id.hostname.is_empty() { String::new() } else { format!(", host {}", id.hostname) }
    )
}

/// One line on how a model ran: runtime, version and library, each
/// provider asked for and what became of it, nodes per provider, session
/// and first-run times, TensorRT's engine cache, notes.
pub fn runtime_line(model: &str, r: &RuntimeReport) -> String {
    let mut parts = vec![r.version.clone()];
    if let Some(lib) = &r.library {
        parts[0] = format!("{} ({lib})", r.version);
    }
    if r.runtime == RuntimeKind::OnnxRuntime {
        let eps: Vec<String> = r
            .eps
            .iter()
            .map(|e| match &e.error {
                None => format!("{} registered", e.ep),
                Some(err) => format!("{} NOT registered: {err}", e.ep),
            })
            .collect();
        let asked = if eps.is_empty() { "no providers asked (CPU)".to_string() } else { eps.join("; ") };
        parts.push(format!("policy {}: {asked}", r.policy.name()));
    }
    if !r.nodes.is_empty() {
        parts.push(format!("nodes: {}", r.nodes_text()));
    }
    parts.push(format!("session {}, first run {}", format_ns(r.session_ns as f64), format_ns(r.first_run_ns as f64)));
    if let Some(c) = &r.engine_cache {
        parts.push(format!(
            "TensorRT engine cache: {} engine(s) before, {} after ({}){}",
            c.engines_before,
            c.engines_after,
            if c.hit { "hit" } else { "built" },
            if c.timing_cache { ", timing cache present" } else { "" }
        ));
    }
    for n in &r.notes {
        parts.push(format!("note: {n}"));
    }
    format!("runtime  {model}: {}\n", parts.join("; "))
}

/// The runtimes a board has (`rba devices`): one line each.
pub fn runtimes(list: &[RuntimeInfo]) -> String {
    let mut out = String::new();
    for r in list {
        let mut line = format!("{}", r.runtime);
        if let Some(v) = &r.version {
            line.push_str(&format!(" {v}"));
        }
        if let Some(lib) = &r.library {
            line.push_str(&format!(" ({lib})"));
        }
        if !r.providers.is_empty() {
            line.push_str(&format!(": {}", r.providers.join(", ")));
        }
        if !r.default_eps.is_empty() {
            let eps: Vec<&str> = r.default_eps.iter().map(|e| e.name()).collect();
            line.push_str(&format!("; board default {} ({})", eps.join(","), r.default_policy.name()));
        }
        if let Some(p) = &r.problem {
            line.push_str(&format!(": not available: {p}"));
        }
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// The latency table, stability warnings, how each model ran (when a
/// runtime other than tract is involved) and the A/B line.
pub fn bench(report: &BenchReport) -> String {
    let mut out = format!("device  {}\n", describe_identity(&report.device));
    let width = report.results.iter().map(|r| r.model.len()).max().unwrap_or(5).max(5);
    let rt_width = report.results.iter().map(|r| r.runtime.label().len()).max().unwrap_or(7).max(7);
    out.push_str(&format!(
        "{:width$}  {:rt_width$}  {:>5}  {:>9}  {:>9}  {:>9}  {:>9}  {:>9}  {:>9}  {:>9}  {:>9}  {:>9}  {:>9}  {:>3}\n",
        "model",
        "runtime",
        "runs",
        "load",
        "first",
        "min",
        "p50",
        "p90",
        "p99",
        "max",
        "mean",
        "std",
        "peak RSS",
        "thr"
    ));
    for r in &report.results {
        let s = &r.stats;
        let ns = |v: u64| format_ns(v as f64);
        out.push_str(&format!(
            "{:width$}  {:rt_width$}  {:>5}  {:>9}  {:>9}  {:>9}  {:>9}  {:>9}  {:>9}  {:>9}  {:>9}  {:>9}  {:>9}  {:>3}\n",
            r.model,
            r.runtime.label(),
            s.count,
            ns(r.load_time_ns),
            ns(r.first_run_ns),
            ns(s.min_ns),
            ns(s.p50_ns),
            ns(s.p90_ns),
            ns(s.p99_ns),
            ns(s.max_ns),
            format_ns(s.mean_ns),
            format_ns(s.std_ns),
            r.peak_rss_bytes.map_or("-".into(), format_bytes),
            r.threads,
        ));
    }
    if report.results.iter().any(|r| r.runtime.runtime != RuntimeKind::Tract) {
        for r in &report.results {
            out.push_str(&runtime_line(&r.model, &r.runtime));
        }
    }
    for r in &report.results {
        if r.stats.unstable {
            out.push_str(&format!(
                "warning: {}: unstable measurement (coefficient of variation {:.1}% > {:.0}%): close other programs, cool the board, or add runs\n",
                r.model,
                100.0 * r.stats.cv,
                100.0 * rba_protocol::stats::UNSTABLE_CV
            ));
        }
        if let Some(t) = &r.throttling {
            if t.throttled || t.under_voltage || t.soft_temp_limit {
                out.push_str(&format!("warning: {}: the board throttled during the run ({t:?})\n", r.model));
            }
        }
    }
    if let Some(ab) = &report.ab {
        let runs = report.results.first().map_or(0, |r| r.stats.count);
        match ab.speedup {
            Some(s) => {
                out.push_str(&format!(
                    "A/B, {runs} interleaved runs each: speedup of {} over {} {:.3}x ({:.0}% CI {:.3}x .. {:.3}x, paired bootstrap; p50 B/A {:.3})\n",
                    ab.model_b,
                    ab.model_a,
                    s.point,
                    100.0 * s.confidence,
                    s.low,
                    s.high,
                    ab.ratio_of_medians
                ));
                if s.low <= 1.0 && 1.0 <= s.high {
                    out.push_str("note: the interval contains 1x: no significant difference at this noise level (add runs or quiet the board)\n");
                }
            }
            None => out.push_str(&format!("A/B: p50 ratio B/A {:.3}\n", ab.ratio_of_medians)),
        }
    }
    out
}

/// One line per evaluated model.
pub fn device_evaluation(results: &[EvalResult], source: &str) -> String {
    let mut out = String::new();
    for e in results {
        let pct = |v: f64| format!("{:.2}%", 100.0 * v);
        let with = match e.runtime.runtime {
            RuntimeKind::Tract => String::new(),
            RuntimeKind::OnnxRuntime => format!(" ({})", e.runtime.label()),
        };
        let mut line = format!("on-device  {}{with}: {} samples of {source}", e.model, e.samples);
        if let Some(a) = e.top1_accuracy {
            line.push_str(&format!(", top-1 accuracy {}", pct(a)));
        }
        if let Some(a) = e.top1_agreement {
            line.push_str(&format!(", top-1 agreement with the reference {}", pct(a)));
        }
        if let Some(l) = e.latency {
            line.push_str(&format!(", mean latency {}", format_ns(l.mean_ns)));
        }
        out.push_str(&line);
        out.push('\n');
        if e.runtime.runtime != RuntimeKind::Tract {
            out.push_str(&runtime_line(&e.model, &e.runtime));
        }
    }
    out
}

fn shape_text(s: &[usize]) -> String {
    format!("[{}]", s.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(","))
}

/// `rba inspect`'s summary.
pub fn inspection(i: &Inspection) -> String {
    let mut out = String::new();
    let io = |t: &TensorSummary| format!("{} [{}]", t.name, t.shape.join(","));
    out += &format!("model     {}\n", i.file);
    out += &format!("producer  {} (ir {}, opset {})\n", i.producer, i.ir_version, i.opset);
    out += &format!("inputs    {}\n", i.inputs.iter().map(io).collect::<Vec<_>>().join(", "));
    out += &format!("outputs   {}\n", i.outputs.iter().map(io).collect::<Vec<_>>().join(", "));
    out += &format!("size      {} nodes, {} parameters, {} MACs per image\n", i.nodes, si(i.params), si(i.macs));
    let mut ops: Vec<(&String, &usize)> = i.op_histogram.iter().collect();
    ops.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    out += &format!("ops       {}\n", ops.iter().map(|(op, n)| format!("{op} {n}")).collect::<Vec<_>>().join(", "));
    let b = &i.blocks;
    let block_params: u64 = b.blocks.iter().map(|x| x.params).sum();
    out += &format!(
        "\nblocks ({}, {} found, {} replaceable, {:.1}% of parameters)\n",
        b.source,
        b.blocks.len(),
        b.replaceable_count(),
        100.0 * block_params as f64 / i.params.max(1) as f64
    );
    let width = b.blocks.iter().flat_map(|x| [x.input.len(), x.output.len()]).max().unwrap_or(5).clamp(5, 48);
    out += &format!(
        "{:>5}  {:<width$}  {:<width$}  {:<16}  {:>8}  {:>8}  {}\n",
        "block", "input", "output", "shape", "params", "MACs", "replaceable"
    );
    for x in &b.blocks {
        let shape = if x.input_shape == x.output_shape {
            shape_text(&x.input_shape)
        } else {
            format!("{}->{}", shape_text(&x.input_shape), shape_text(&x.output_shape))
        };
        out += &format!(
            "{:>5}  {:<width$}  {:<width$}  {:<16}  {:>8}  {:>8}  {}\n",
            x.index,
            ellipsize(&x.input, width),
            ellipsize(&x.output, width),
            shape,
            si(x.params),
            si(x.macs),
            x.not_replaceable.as_deref().map_or("yes".to_string(), |why| format!("no: {why}"))
        );
    }
    out
}

/// Keeps the informative tail of long tensor names.
fn ellipsize(s: &str, width: usize) -> String {
    let n = s.chars().count();
    if n <= width {
        s.to_string()
    } else {
        let tail: String = s.chars().skip(n - (width - 1)).collect();
        format!("…{tail}")
    }
}
/// The ranked span table for the terminal.
pub fn span_table(r: &AnalysisReport, limit: usize) -> String {
    let mut out = format!(
        "{} on {} images from {}: {} candidate spans (1-{} blocks), best first\n",
        r.model.file,
        r.data.images,
        r.data.source,
        r.spans.len(),
        r.spans.iter().map(|s| s.score.blocks).max().unwrap_or(0)
    );
    const WIDTHS: [usize; 9] = [7, 6, 10, 10, 12, 10, 7, 12, 10];
    let line = |cells: &[String]| {
        let padded: Vec<String> = cells.iter().zip(WIDTHS).map(|(c, w)| format!("{c:>w$}")).collect();
        padded.join("  ") + "\n"
    };
    out += &line(&SPAN_COLUMNS.map(String::from));
    for s in r.spans.iter().take(limit) {
        out += &line(&s.cells());
    }
    out
}
/// The terminal summary of a selection.
pub fn selection(model: &Model, s: &Selection) -> String {
    let graph = model.onnx.graph();
    let slim = s.model.graph();
    let pct = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{:.2}%", 100.0 * v));
    let mut out = String::new();
    for r in &s.replacements {
        out += &format!(
            "replaced span {} (blocks {}..={}) with {:?} (fit 1-R^2 {:.4}, {:?})\n",
            r.span,
            r.span.start + 1,
            r.span.end,
            r.translator,
            r.fit_residual,
            r.solver
        );
    }
    out += &format!(
        "held-out accuracy {} -> {}, agreement {:.2}%, output cosine {:.4}\n",
        pct(s.baseline.accuracy),
        pct(s.result.accuracy),
        100.0 * s.result.agreement,
        s.result.output_cosine
    );
    out += &format!("parameters {} -> {}\n", si(cost::total_params(graph)), si(cost::total_params(slim)));
    out += &verification(&s.verification);
    if !s.proxy_spearman.is_empty() {
        let list: Vec<String> = s.proxy_spearman.iter().map(|(n, r)| format!("{n} {r:.2}")).collect();
        out += &format!("Spearman(proxy, measured drop) over single blocks: {}\n", list.join(", "));
    }
    out
}

/// How a selection measured its candidates, in one or two lines.
pub fn verification(v: &Verification) -> String {
    let mut out = match (v.mode, &v.cache) {
        (SelectionMode::Full, _) => format!("verified {} candidate models on every held-out image (--selection full)", v.runs),
        (SelectionMode::Tail, Some(c)) => format!(
            "verified {} candidate models from their tails after cached held-out boundary activations ({}, {:.1} MiB {})",
            v.runs,
            c.precision,
            c.bytes as f64 / (1u64 << 20) as f64,
            if c.spilled { "spilled to a temporary file" } else { "in memory" }
        ),
        (SelectionMode::Tail, None) => format!("verified {} candidate models on every held-out image", v.runs),
    };
    if v.full_fallbacks > 0 {
        out += &format!("; {} ran as whole models (no tail)", v.full_fallbacks);
    }
    out += "\n";
    if let Some(k) = v.verify_top {
        let per_step: Vec<String> = v.steps.iter().map(|s| format!("{} of {}", s.verified, s.candidates)).collect();
        out += &format!(
            "--verify-top {k}: verified only the {k} best candidates by fit 1-R^2 per step ({})\n",
            per_step.join(", ")
        );
    }
    out
}

/// `rba evaluate`'s table.
pub fn evaluation(rows: &[EvalRow]) -> String {
    let pct = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{:.2}%", 100.0 * v));
    let mut out = format!(
        "{:<28}  {:>8}  {:>8}  {:>9}  {:>7}  {:>8}  {:>8}  {:>9}  {:>10}  {:>7}  {:>7}\n",
        "model", "top-1", "top-5", "agreement", "cosine", "params", "MACs", "file", "latency", "speedup", "ideal"
    );
    for r in rows {
        let name = if r.model.chars().count() > 28 {
            format!("…{}", r.model.chars().skip(r.model.chars().count() - 27).collect::<String>())
        } else {
            r.model.clone()
        };
        out += &format!(
            "{:<28}  {:>8}  {:>8}  {:>8.2}%  {:>7.4}  {:>8}  {:>8}  {:>9}  {:>8.2}ms  {:>6.2}x  {:>6.2}x\n",
            name,
            pct(r.accuracy_top1),
            pct(r.accuracy_top5),
            100.0 * r.agreement,
            r.output_cosine,
            si(r.params),
            si(r.macs),
            si(r.file_bytes),
            1e3 * r.latency_median_s,
            r.speedup,
            r.ideal_speedup
        );
    }
    out
}
/// A short text summary: accuracy per lambda and the choice.
pub fn probe(p: &Probe) -> String {
    let pct = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{:.1}%", 100.0 * v));
    let mut s = String::new();
    s.push_str(&format!(
        "probe on '{}' ({}, D = {}, {} classes)\n",
        p.record.feature,
        p.record.pooling,
        p.layout.dim(),
        p.classes.len()
    ));
    s.push_str("  rel. lambda      lambda    train      val  solver\n");
    for (i, t) in p.trials.iter().enumerate() {
        s.push_str(&format!(
            "  {:>11.0e} {:>11.3e} {:>8} {:>8}  {:?}{}\n",
            t.relative_lambda,
            t.lambda,
            pct(Some(t.train_accuracy)),
            pct(t.val_accuracy),
            t.solver,
            if i == p.chosen { "  <- chosen" } else { "" }
        ));
    }
    s.push_str(&format!(
        "chosen relative lambda {:.0e} (best validation accuracy, ties to the larger); head fitted on {}\n",
        p.trials[p.chosen].relative_lambda, p.record.fitted_on
    ));
    s
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_bench_table_names_runtimes_and_how_onnxruntime_ran() {
        let d = crate::report::html::tests::runtime_compare_report();
        let text = bench(&d.benchmark);
        let header = text.lines().nth(1).unwrap();
        assert!(header.starts_with("model       runtime "), "{text}");
        assert!(text.contains("vit-digits  tract "), "{text}");
        assert!(text.contains("vit-digits  onnxruntime "), "{text}");
        let ort = text.lines().find(|l| l.starts_with("runtime  vit-digits: onnxruntime 1.32.0")).unwrap();
        assert!(ort.contains("(/x/libonnxruntime.so.1.32.0)"), "{ort}");
        assert!(ort.contains("policy fallback: cuda NOT registered: CUDA execution provider is not enabled"), "{ort}");
        assert!(ort.contains("nodes: CPUExecutionProvider 290"), "{ort}");
        assert!(ort.contains("session 90.00 ms, first run 1.50 ms"), "{ort}");
        assert!(text.contains("runtime  vit-digits: tract-onnx 0.23; nodes: tract 311"), "{text}");
        assert!(text.contains("speedup of vit-digits (onnxruntime) over vit-digits (tract) 2.000x"), "{text}");
        // tract alone: no runtime lines.
        let tract_only =
            crate::board::BenchReport { results: d.benchmark.results[..1].to_vec(), ab: None, ..d.benchmark };
        let t = bench(&tract_only);
        assert!(!t.lines().any(|l| l.starts_with("runtime  ")), "{t}");
    }

    #[test]
    fn runtimes_of_a_board() {
        use rba_protocol::{EpPolicy, ExecutionProvider};
        let list = [
            RuntimeInfo {
                runtime: RuntimeKind::Tract,
                version: Some("tract-onnx 0.23".into()),
                providers: vec!["tract (CPU)".into()],
                ..RuntimeInfo::default()
            },
            RuntimeInfo {
                runtime: RuntimeKind::OnnxRuntime,
                version: Some("1.20.0".into()),
                library: Some("/usr/lib/libonnxruntime.so.1.20.0".into()),
                providers: vec!["TensorrtExecutionProvider".into(), "CUDAExecutionProvider".into()],
                default_eps: vec![ExecutionProvider::TensorRt, ExecutionProvider::Cuda],
                default_policy: EpPolicy::Fallback,
                ..RuntimeInfo::default()
            },
            RuntimeInfo {
                runtime: RuntimeKind::OnnxRuntime,
                problem: Some("no ONNX Runtime library found".into()),
                ..RuntimeInfo::default()
            },
        ];
        let t = runtimes(&list);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "tract tract-onnx 0.23: tract (CPU)");
        assert_eq!(
            lines[1],
            "onnxruntime 1.20.0 (/usr/lib/libonnxruntime.so.1.20.0): TensorrtExecutionProvider, CUDAExecutionProvider; \
             board default tensorrt,cuda (fallback)"
        );
        assert_eq!(lines[2], "onnxruntime: not available: no ONNX Runtime library found");
    }
}
