//! Selection benchmark: the wall time of `rba compact --remove 1
//! --translator auto` — the held-out pass and the greedy search (12
//! single-block candidates, then 4 translators for the chosen span) —
//! verified with tail-only measurement (the default) against
//! `--selection full` (every candidate's whole model on every held-out
//! image), both in the same run; the two must choose the same span and
//! translator (asserted).
//!
//! `cargo bench -p rba-host --bench selection --profile dev` runs it on the
//! demo ViT (500 calibration digits, the 300 validation digits held out,
//! batch 50, as `rba compact --data demo`); `RBA_BENCH_MODELS=vit_s.onnx`
//! adds a larger model, measured on noise images
//! (`RBA_BENCH_SELECTION_CALIBRATION`, default 64, and
//! `RBA_BENCH_SELECTION_HELD_OUT`, default 32, images; batch 8), twice: as
//! exported, and as the issue measured it, its backbone with a linear
//! probe head (cut after the last block, CLS token, 10 classes, seeded
//! weights as `rba probe` would append).
//! `RBA_BENCH_THREADS` sets `--threads` (default: all cores). As in the
//! CLI, `--selection full` runs tract on one thread (today's path), tail
//! selection runs candidates on all threads.

#![allow(clippy::unwrap_used)] // a benchmark may panic

use std::time::Instant;

use rba_host::calibrate::{capture, CaptureOptions, Statistics};
use rba_host::compact::{
    select, Budget, CacheOptions, HeldOut, SelectOptions, Selection, SelectionMode, TranslatorKind,
};
use rba_host::data::{Dataset, Holdout, Preprocess, PreprocessOptions};
use rba_host::fit::probe::{append_head, cut, FeatureShape, Pooling};
use rba_host::model::run::{input_shape, nd};
use rba_host::model::Model;
use rba_host::progress::Silent;
use rba_testkit::bench::*;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Calibration statistics and held-out inputs (with labels for the digits).
fn data(spec: &str, model: &Model, threads: usize) -> (Statistics, nd::ArrayD<f32>, Option<Vec<usize>>, usize) {
    if spec == "demo:vit" {
        let pre = Preprocess::for_model(&PreprocessOptions::default(), &model.onnx).unwrap();
        let (calibration, held_out) =
            Dataset::open("demo").unwrap().calibration_split(Holdout::Fraction(0.2), 0).unwrap();
        let calibration = calibration.subset(Some(500), Some(0));
        let batches = calibration.batches(&pre, 50).map(|b| b.map(|(x, _labels)| x));
        let options = CaptureOptions { batch: 50, max_span: 4, threads, fold: true, ..Default::default() };
        let stats = capture(model, batches, Some(500), &options, &Silent).unwrap();
        let (inputs, labels) = held_out.load_all(&pre).unwrap();
        return (stats, inputs, labels, 50);
    }
    let batch = 8;
    let calibration = env_usize("RBA_BENCH_SELECTION_CALIBRATION", 64);
    let held_out = env_usize("RBA_BENCH_SELECTION_HELD_OUT", 32);
    let shape = input_shape(&model.onnx, batch).unwrap();
    let batches = (0..calibration.div_ceil(batch)).map(|k| {
        let mut s = shape.clone();
        s[0] = batch.min(calibration - k * batch);
        Ok::<_, String>(random_batch(&s, 100 + k as u64))
    });
    let options = CaptureOptions { batch, max_span: 1, threads, fold: true, ..Default::default() };
    let stats = capture(model, batches, Some(calibration), &options, &Silent).unwrap();
    let mut s = shape.clone();
    s[0] = held_out;
    (stats, random_batch(&s, 5), None, batch)
}

/// CPU seconds this process has used (user + system), from /proc.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// Seconds of the held-out pass plus the selection (wall and CPU), the
/// held-out pass alone, and the selection.
fn run(
    model: &Model,
    stats: &Statistics,
    inputs: &nd::ArrayD<f32>,
    labels: &Option<Vec<usize>>,
    batch: usize,
    mode: SelectionMode,
    threads: usize,
) -> (f64, f64, f64, Selection) {
    let (t, cpu) = (Instant::now(), cpu_seconds());
    let held = match mode {
        SelectionMode::Full => HeldOut::new(&model.onnx, inputs.clone(), labels.clone(), batch).unwrap(),
        SelectionMode::Tail => {
            HeldOut::with_boundaries(model, inputs.clone(), labels.clone(), batch, &CacheOptions::default(), threads)
                .unwrap()
        }
    };
    let pass = t.elapsed().as_secs_f64();
    let options = SelectOptions { mode, threads, verify_top: None };
    let sel = select(model, stats, &held, &Budget::Remove(1), TranslatorKind::Auto, &options, &Silent).unwrap();
    (t.elapsed().as_secs_f64(), cpu_seconds() - cpu, pass, sel)
}

/// The model's backbone (up to its last block) with a linear probe head on
/// the CLS token: 10 classes, seeded weights.
fn with_probe_head(model: &Model) -> Model {
    let last = model.blocks.boundaries.last().unwrap();
    let shape = &model.shapes[last];
    let (tokens, dim) = (shape[1], shape[2]);
    let backbone = cut(&model.onnx, last).unwrap();
    let w: Vec<f32> = random_batch(&[dim * 10], 11).iter().map(|v| (v - 0.5) * 0.2).collect();
    let head = append_head(&backbone, last, FeatureShape::Tokens { tokens, dim }, Pooling::Cls, &w, &[0.0; 10], 10);
    Model::new(head.unwrap(), None).unwrap()
}

fn main() {
    if !run_as_bench("selection") {
        return;
    }
    let threads = threads();
    let specs = model_specs();
    let mut models: Vec<(String, String, Model)> = Vec::new();
    for spec in &specs {
        let model = load(spec);
        let probed = (spec != "demo:vit").then(|| with_probe_head(&model));
        models.push((spec.clone(), label(spec), model));
        if let Some(m) = probed {
            models.push((spec.clone(), format!("{} + probe head", label(spec)), m));
        }
    }
    for (spec, name, model) in &models {
        let (spec, name, model) = (spec.as_str(), name.as_str(), model);
        let (stats, inputs, labels, batch) = data(spec, model, threads);
        let images = inputs.shape()[0];
        // Tail first, then full; on the demo ViT a second round each, best kept.
        let rounds = if spec == "demo:vit" { 2 } else { 1 };
        let (mut tail, mut full) = (f64::INFINITY, f64::INFINITY);
        let (mut tail_cpu, mut full_cpu) = (0.0, 0.0);
        let mut chosen = None;
        let mut runs = (0, 0);
        for _ in 0..rounds {
            let (t, tc, pass, a) = run(model, &stats, &inputs, &labels, batch, SelectionMode::Tail, threads);
            println!(
                "{name}: tail selection {t:.2} s, {tc:.2} CPU s (held-out pass with the cache {pass:.2} s), {:?}",
                a.verification
            );
            let (f, fc, pass, b) = run(model, &stats, &inputs, &labels, batch, SelectionMode::Full, threads);
            println!(
                "{name}: full selection {f:.2} s, {fc:.2} CPU s (held-out pass {pass:.2} s), {} runs",
                b.verification.runs
            );
            let key = |s: &Selection| s.replacements.iter().map(|r| (r.span, r.translator)).collect::<Vec<_>>();
            assert_eq!(key(&a), key(&b), "{name}: tail and full selection must choose alike");
            for (x, y) in a.trials.iter().zip(&b.trials) {
                assert_eq!(x.quality.metric(), y.quality.metric(), "{name}: {:?}", x.removed_blocks);
            }
            if t < tail {
                (tail, tail_cpu) = (t, tc);
            }
            if f < full {
                (full, full_cpu) = (f, fc);
            }
            chosen = Some(key(&a));
            runs = (a.verification.runs, b.verification.runs);
        }
        let chosen = chosen.unwrap();
        let speedup = full / tail;
        let target_met = (spec != "demo:vit").then_some(speedup >= 4.0);
        row(
            &format!(
                "selection {name} (--remove 1 --translator auto, {images} held-out images, {threads} threads): \
                 tail-only vs --selection full, same choice {}",
                chosen.iter().map(|(s, k)| format!("{s} {k:?}")).collect::<Vec<_>>().join(", ")
            ),
            &format!("{tail:.2} s ({} tails)", runs.0),
            &format!("{full:.2} s ({} whole models)", runs.1),
            speedup,
            if target_met.is_some() { ">= 4" } else { "-" },
            target_met,
        );
        row(
            &format!("selection {name}: CPU time (user + system) of the same two runs, tail-only vs --selection full"),
            &format!("{tail_cpu:.2} CPU s"),
            &format!("{full_cpu:.2} CPU s"),
            full_cpu / tail_cpu,
            "-",
            None,
        );
    }
}
