//! Compaction: fit translators for spans from the calibration statistics,
//! and choose which spans to replace by *measuring* candidate compacted
//! models on held-out data (never the calibration images).

use serde::Serialize;

use crate::capture::Statistics;
use crate::fit::{fit, Fit, FitError, FitKind};
use crate::model::Model;
use crate::onnx::OnnxModel;
use crate::runtime::{argmax_rows, nd, predict, RuntimeError};
use crate::surgery::{check_spans, replace_spans, Span, SurgeryError, Translator};

#[derive(Debug, thiserror::Error)]
pub enum CompactError {
    #[error(transparent)]
    Surgery(#[from] SurgeryError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("span {span}: {source}")]
    Fit { span: Span, source: FitError },
    #[error("span {0} has no calibration statistics (spans longer than --max-span are not captured)")]
    NoStatistics(Span),
    #[error("span {0} has no fold statistics: the block before it must end in a residual Add of a linear layer")]
    NoFoldStatistics(Span),
    #[error("{0}")]
    Budget(String),
    #[error(transparent)]
    Model(#[from] crate::model::ModelError),
}

/// Which map stands in for a span.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum TranslatorKind {
    Linear,
    Affine,
    Ridge,
    Identity,
    /// Linear, multiplied into the last linear layer of the block before the
    /// span: no extra node or parameter (needs that block to end in one).
    Folded,
    /// Per span, whichever of linear, affine, folded and identity verifies best.
    Auto,
}

impl TranslatorKind {
    fn fit_kind(self) -> FitKind {
        match self {
            TranslatorKind::Linear | TranslatorKind::Folded | TranslatorKind::Auto => FitKind::Linear,
            TranslatorKind::Affine => FitKind::Affine,
            TranslatorKind::Ridge => FitKind::Ridge { relative_lambda: 1e-3 },
            TranslatorKind::Identity => FitKind::Identity,
        }
    }
}

/// Fits the translator of `span` from the statistics.
pub fn fit_span(stats: &Statistics, span: Span, kind: TranslatorKind) -> Result<(Translator, Fit), CompactError> {
    let fitted = if kind == TranslatorKind::Folded {
        let branch = stats.branches.iter().find(|b| b.boundary == span.start);
        let target = branch.and_then(|b| b.targets.iter().find(|t| t.end == span.end).map(|t| (b, t)));
        let (b, t) = target.ok_or(CompactError::NoFoldStatistics(span))?;
        fit(kind.fit_kind(), &b.moments, &t.moments, &t.cross)
    } else {
        let sp = stats
            .spans
            .iter()
            .find(|s| s.start == span.start && s.end == span.end)
            .ok_or(CompactError::NoStatistics(span))?;
        let (x, y) = (&stats.boundaries[span.start].tokens, &stats.boundaries[span.end].tokens);
        fit(kind.fit_kind(), x, y, &sp.cross)
    };
    let f = fitted.map_err(|source| CompactError::Fit { span, source })?;
    let translator = match kind {
        TranslatorKind::Identity => Translator::Identity,
        TranslatorKind::Folded => Translator::Folded { weight: f.weight_f32() },
        _ => Translator::Linear { weight: f.weight_f32(), bias: f.bias_f32() },
    };
    Ok((translator, f))
}

/// Held-out data and the original model's outputs on it.
pub struct HeldOut {
    pub inputs: nd::ArrayD<f32>,
    pub labels: Option<Vec<usize>>,
    pub reference: nd::Array2<f32>,
    pub batch: usize,
}

/// How a model does on the held-out data.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Quality {
    /// Top-1 accuracy (with labels).
    pub accuracy: Option<f64>,
    /// Top-1 agreement with the original model.
    pub agreement: f64,
    /// Mean cosine between the model's and the original's outputs.
    pub output_cosine: f64,
}

impl Quality {
    /// The metric selection optimises: accuracy with labels, else agreement.
    pub fn metric(&self) -> f64 {
        self.accuracy.unwrap_or(self.agreement)
    }

    /// Whether `self` beats `other`: the metric first; on a tie (small
    /// held-out sets tie often), the output that stays closer to the original.
    pub fn better_than(&self, other: &Quality) -> bool {
        (self.metric(), self.agreement, self.output_cosine) > (other.metric(), other.agreement, other.output_cosine)
    }
}

impl HeldOut {
    pub fn new(
        original: &OnnxModel,
        inputs: nd::ArrayD<f32>,
        labels: Option<Vec<usize>>,
        batch: usize,
    ) -> Result<Self, CompactError> {
        let reference = predict(original, &inputs, batch)?;
        Ok(Self { inputs, labels, reference, batch })
    }

    pub fn measure(&self, model: &OnnxModel) -> Result<Quality, CompactError> {
        let out = predict(model, &self.inputs, self.batch)?;
        Ok(quality(&out, &self.reference, self.labels.as_deref()))
    }

    pub fn len(&self) -> usize {
        self.reference.nrows()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Accuracy, agreement and output cosine of `out` against the reference outputs.
pub fn quality(out: &nd::Array2<f32>, reference: &nd::Array2<f32>, labels: Option<&[usize]>) -> Quality {
    let (pred, refp) = (argmax_rows(out), argmax_rows(reference));
    let n = pred.len().max(1) as f64;
    let agreement = pred.iter().zip(&refp).filter(|(a, b)| a == b).count() as f64 / n;
    let accuracy = labels.map(|l| pred.iter().zip(l).filter(|(a, b)| a == b).count() as f64 / n);
    let output_cosine = out
        .rows()
        .into_iter()
        .zip(reference.rows())
        .map(|(a, b)| {
            let (ab, aa, bb) = a.iter().zip(b.iter()).fold((0f64, 0f64, 0f64), |(ab, aa, bb), (&x, &y)| {
                (ab + x as f64 * y as f64, aa + x as f64 * x as f64, bb + y as f64 * y as f64)
            });
            if aa > 0.0 && bb > 0.0 {
                ab / (aa * bb).sqrt()
            } else {
                0.0
            }
        })
        .sum::<f64>()
        / n;
    Quality { accuracy, agreement, output_cosine }
}

/// What to remove.
#[derive(Debug, Clone)]
pub enum Budget {
    /// Exactly these spans.
    Spans(Vec<Span>),
    /// The best `k` blocks.
    Remove(usize),
    /// As many blocks as possible while the metric drops at most this much
    /// (a fraction: 0.01 = one point).
    MaxDrop(f64),
    /// Until parameters fall to this fraction of the original.
    TargetParams(f64),
    /// Until MACs fall to this fraction of the original.
    TargetMacs(f64),
}

/// One replaced span in a result.
#[derive(Debug, Clone, Serialize)]
pub struct Replacement {
    pub span: Span,
    pub translator: TranslatorKind,
    /// 1 - R^2 of the fit on the calibration statistics.
    pub fit_residual: f64,
    pub solver: crate::fit::Solver,
}

/// One candidate model measured during selection.
#[derive(Debug, Clone, Serialize)]
pub struct Trial {
    pub removed_blocks: Vec<usize>,
    pub quality: Quality,
}

#[derive(Debug, Serialize)]
pub struct Selection {
    pub replacements: Vec<Replacement>,
    pub baseline: Quality,
    pub result: Quality,
    pub trials: Vec<Trial>,
    /// Spearman correlation between each proxy score of the single-block
    /// spans and their measured metric drop.
    pub proxy_spearman: Vec<(String, f64)>,
    #[serde(skip)]
    pub model: OnnxModel,
}

/// Groups removed blocks into maximal runs of adjacent blocks: spans.
pub fn spans_of(blocks: &[usize]) -> Vec<Span> {
    let mut sorted = blocks.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut spans: Vec<Span> = Vec::new();
    for b in sorted {
        match spans.last_mut() {
            Some(last) if last.end + 1 == b => last.end = b,
            _ => spans.push(Span::new(b - 1, b)),
        }
    }
    spans
}

/// Builds the compacted model for a set of spans, each with its translator
/// (`Auto` must already be resolved).
pub fn build(
    model: &Model,
    stats: &Statistics,
    spans: &[(Span, TranslatorKind)],
) -> Result<(OnnxModel, Vec<Replacement>), CompactError> {
    let mut replacements = Vec::new();
    let mut translators = Vec::new();
    for &(span, kind) in spans {
        if kind == TranslatorKind::Folded {
            // Say why a block cannot take a fold, rather than that its statistics are missing.
            crate::fold::fold_site(model.onnx.graph(), &model.blocks, span.start)
                .map_err(|source| SurgeryError::Fold { s: span.start, e: span.end, source })?;
        }
        let (t, f) = fit_span(stats, span, kind)?;
        translators.push((span, t));
        replacements.push(Replacement { span, translator: kind, fit_residual: f.relative_residual, solver: f.solver });
    }
    Ok((replace_spans(&model.onnx, &model.blocks, &translators)?, replacements))
}

/// `--sequential`: refits each span's translator on the model with the
/// earlier spans already replaced (their errors included), instead of on the
/// original model's activations. `capture` computes statistics of a model
/// (with fold statistics) for spans of up to the given length.
pub fn refit_sequentially(
    model: &Model,
    spans: &[(Span, TranslatorKind)],
    mut capture: impl FnMut(&Model, usize) -> Result<Statistics, CompactError>,
) -> Result<(OnnxModel, Vec<Replacement>), CompactError> {
    let mut ordered = spans.to_vec();
    ordered.sort_by_key(|(s, _)| *s);
    let mut current = model.onnx.clone();
    // Boundaries of the partly compacted model: a replaced span leaves one
    // pseudo-block (its translator) between its start and its new end.
    let mut names = model.blocks.boundaries.clone();
    let mut shift = 0;
    let mut replacements = Vec::new();
    for (span, kind) in ordered {
        let partial = Model::new(current.clone(), Some(&names))?;
        let local = Span::new(span.start - shift, span.end - shift);
        let stats = capture(&partial, local.end - local.start)?;
        let (translator, f) = fit_span(&stats, local, kind)?;
        current = replace_spans(&current, &partial.blocks, &[(local, translator)])?;
        let end = crate::surgery::span_output_name(partial.onnx.graph(), local, &names[local.end]);
        names.splice(local.start + 1..=local.end, [end]);
        shift += span.end - span.start - 1;
        replacements.push(Replacement { span, translator: kind, fit_residual: f.relative_residual, solver: f.solver });
    }
    Ok((current, replacements))
}

/// Chooses per span the translator that verifies best, for `Auto`.
fn resolve(
    model: &Model,
    stats: &Statistics,
    held: &HeldOut,
    spans: &[Span],
    kind: TranslatorKind,
) -> Result<(OnnxModel, Vec<Replacement>, Quality), CompactError> {
    let mut chosen: Vec<(Span, TranslatorKind)> = spans.iter().map(|s| (*s, kind)).collect();
    if kind == TranslatorKind::Auto {
        for k in 0..chosen.len() {
            let mut best: Option<(Quality, TranslatorKind)> = None;
            for option in
                [TranslatorKind::Linear, TranslatorKind::Affine, TranslatorKind::Folded, TranslatorKind::Identity]
            {
                let mut trial = chosen.clone();
                trial[k].1 = option;
                // Spans not yet resolved use linear meanwhile.
                for t in trial.iter_mut().skip(k + 1) {
                    t.1 = TranslatorKind::Linear;
                }
                // Folding needs a suitable block before the span.
                let Ok((m, _)) = build(model, stats, &trial) else { continue };
                let q = held.measure(&m)?;
                if best.as_ref().is_none_or(|(b, _)| q.better_than(b)) {
                    best = Some((q, option));
                }
            }
            chosen[k].1 = best.map_or(TranslatorKind::Linear, |(_, o)| o);
        }
    }
    let (m, r) = build(model, stats, &chosen)?;
    let q = held.measure(&m)?;
    Ok((m, r, q))
}

/// Ranks of values (average ranks for ties), for Spearman correlation.
fn ranks(v: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
    let mut r = vec![0.0; v.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && v[idx[j + 1]] == v[idx[i]] {
            j += 1;
        }
        for &k in &idx[i..=j] {
            r[k] = (i + j) as f64 / 2.0;
        }
        i = j + 1;
    }
    r
}

/// Spearman rank correlation (NaN for fewer than 3 points or constant input).
pub fn spearman(a: &[f64], b: &[f64]) -> f64 {
    if a.len() < 3 || a.len() != b.len() {
        return f64::NAN;
    }
    let (ra, rb) = (ranks(a), ranks(b));
    let n = ra.len() as f64;
    let (ma, mb) = (ra.iter().sum::<f64>() / n, rb.iter().sum::<f64>() / n);
    let cov: f64 = ra.iter().zip(&rb).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = ra.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f64 = rb.iter().map(|y| (y - mb).powi(2)).sum();
    cov / (va * vb).sqrt()
}

/// Greedy selection under a budget, every step verified on held-out data.
pub fn select(
    model: &Model,
    stats: &Statistics,
    held: &HeldOut,
    budget: &Budget,
    kind: TranslatorKind,
    mut progress: impl FnMut(&str),
) -> Result<Selection, CompactError> {
    let baseline = quality(&held.reference, &held.reference, held.labels.as_deref());
    let graph = model.onnx.graph();
    let total_params = crate::cost::total_params(graph) as f64;
    let total_macs = crate::cost::total_macs(graph, &model.index, &model.shapes) as f64;
    let replaceable: Vec<usize> = model.blocks.blocks.iter().filter(|b| b.replaceable()).map(|b| b.index).collect();
    if let Budget::Spans(spans) = budget {
        let spans = check_spans(&model.blocks, spans)?;
        let (m, replacements, result) = resolve(model, stats, held, &spans, kind)?;
        return Ok(Selection {
            replacements,
            baseline,
            result,
            trials: Vec::new(),
            proxy_spearman: Vec::new(),
            model: m,
        });
    }
    let savings =
        |removed: &[usize], cost: fn(&crate::blocks::Block) -> u64, per_translator: fn(usize, usize) -> u64| {
            let blocks = &model.blocks.blocks;
            let saved: u64 = removed.iter().map(|&b| cost(&blocks[b - 1])).sum();
            let added: u64 = spans_of(removed)
                .iter()
                .map(|s| {
                    let first = &blocks[s.start];
                    let d = first.features().unwrap_or(0);
                    per_translator(d, first.input_shape.iter().product::<usize>() / d.max(1))
                })
                .sum();
            saved as f64 - added as f64
        };
    let params_saved = |r: &[usize]| savings(r, |b| b.params, |d, _| (d * d) as u64);
    let macs_saved = |r: &[usize]| savings(r, |b| b.macs, |d, positions| (positions * d * d) as u64);
    let done = |removed: &[usize]| match budget {
        Budget::Remove(k) => removed.len() >= *k,
        Budget::TargetParams(f) => total_params - params_saved(removed) <= f * total_params,
        Budget::TargetMacs(f) => total_macs - macs_saved(removed) <= f * total_macs,
        Budget::MaxDrop(_) | Budget::Spans(_) => false,
    };
    let mut removed: Vec<usize> = Vec::new();
    let mut trials = Vec::new();
    let mut best_model: Option<(OnnxModel, Vec<Replacement>, Quality)> = None;
    let mut single_drops: Vec<(usize, f64)> = Vec::new();
    while !done(&removed) {
        let mut measured: Vec<(usize, Quality)> = Vec::new();
        for &b in replaceable.iter().filter(|b| !removed.contains(b)) {
            let mut candidate = removed.clone();
            candidate.push(b);
            let spans: Vec<(Span, TranslatorKind)> =
                spans_of(&candidate).into_iter().map(|s| (s, kind_for_search(kind))).collect();
            let Ok((m, _)) = build(model, stats, &spans) else { continue };
            let q = held.measure(&m)?;
            trials.push(Trial {
                removed_blocks: {
                    let mut c = candidate.clone();
                    c.sort_unstable();
                    c
                },
                quality: q,
            });
            if removed.is_empty() {
                single_drops.push((b, baseline.metric() - q.metric()));
            }
            measured.push((b, q));
        }
        if let Budget::MaxDrop(p) = budget {
            measured.retain(|(_, q)| baseline.metric() - q.metric() <= *p + 1e-12);
        }
        let Some((b, q)) = choose(&measured, held.len()) else { break };
        removed.push(b);
        progress(&format!(
            "removed blocks {:?}: metric {:.4} (baseline {:.4})",
            {
                let mut r = removed.clone();
                r.sort_unstable();
                r
            },
            q.metric(),
            baseline.metric()
        ));
        best_model = Some(resolve(model, stats, held, &spans_of(&removed), kind)?);
    }
    if let Budget::Remove(k) = budget {
        if removed.len() < *k {
            return Err(CompactError::Budget(format!(
                "only {} of the requested {k} blocks can be replaced (the others change shape or lack statistics)",
                removed.len()
            )));
        }
    }
    let Some((model_out, replacements, result)) = best_model else {
        let best = trials.iter().map(|t| t.quality.metric()).fold(f64::NEG_INFINITY, f64::max);
        return Err(CompactError::Budget(format!(
            "no block can be removed within the budget; the best single removal reaches {:.4} against a baseline of {:.4}",
            best,
            baseline.metric()
        )));
    };
    // How well each proxy ranked the single-block spans against the measured drop.
    let scores = stats.span_scores();
    let mut proxy_spearman = Vec::new();
    type Proxy = fn(&crate::scores::SpanScore) -> f64;
    let proxies: [(&str, Proxy); 4] = [
        ("linear_residual", |s| s.linear_residual),
        ("-br_cls", |s| -s.br_cls),
        ("-br_all_tokens", |s| -s.br_all_tokens),
        ("1-cosine", |s| 1.0 - s.cosine),
    ];
    for (name, proxy) in proxies {
        let (mut p, mut d) = (Vec::new(), Vec::new());
        for &(b, drop) in &single_drops {
            if let Some(s) = scores.iter().find(|s| s.blocks == 1 && s.end == b) {
                p.push(proxy(s));
                d.push(drop);
            }
        }
        proxy_spearman.push((name.to_string(), spearman(&p, &d)));
    }
    Ok(Selection { replacements, baseline, result, trials, proxy_spearman, model: model_out })
}

/// The best candidate. Held-out sets are small, so a metric difference of a
/// few images is noise: a candidate ties with the top one unless the top one
/// is better by a margin significant at 95% in a paired (McNemar-style) test.
/// The number of images on which the two differ is bounded by the sum of
/// their disagreements with the original model. Among the ties, the one whose
/// outputs stay closest to the original's wins: output cosine is a smooth
/// score that tracks accuracy on unseen data better than a noisy count.
fn choose(measured: &[(usize, Quality)], held_out: usize) -> Option<(usize, Quality)> {
    let n = held_out.max(1) as f64;
    let top = measured.iter().map(|(_, q)| *q).max_by(|a, b| a.metric().total_cmp(&b.metric()))?;
    let ties = |q: &Quality| {
        let gap = (top.metric() - q.metric()) * n;
        let discordant = n * ((1.0 - top.agreement) + (1.0 - q.agreement));
        gap <= (1.96 * discordant.sqrt()).max(1.0) + 1e-9
    };
    measured.iter().filter(|(_, q)| ties(q)).max_by(|a, b| a.1.output_cosine.total_cmp(&b.1.output_cosine)).copied()
}

/// `Auto` searches with linear maps and resolves the final spans afterwards.
fn kind_for_search(kind: TranslatorKind) -> TranslatorKind {
    if kind == TranslatorKind::Auto {
        TranslatorKind::Linear
    } else {
        kind
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adjacent_blocks_merge_into_spans() {
        assert_eq!(spans_of(&[6, 3, 4, 9]), vec![Span::new(2, 4), Span::new(5, 6), Span::new(8, 9)]);
        assert_eq!(spans_of(&[]), vec![]);
    }

    #[test]
    fn spearman_matches_hand_values() {
        assert!((spearman(&[1.0, 2.0, 3.0, 4.0], &[10.0, 20.0, 30.0, 40.0]) - 1.0).abs() < 1e-12);
        assert!((spearman(&[1.0, 2.0, 3.0, 4.0], &[4.0, 3.0, 2.0, 1.0]) + 1.0).abs() < 1e-12);
        // ranks a = [0,1,2,3], b = [1,0,3,2]: rho = 1 - 6*4/(4*15) = 0.6
        assert!((spearman(&[1.0, 2.0, 3.0, 4.0], &[2.0, 1.0, 4.0, 3.0]) - 0.6).abs() < 1e-12);
        assert!(spearman(&[1.0, 2.0], &[1.0, 2.0]).is_nan());
    }

    #[test]
    fn quality_counts_agreement_and_accuracy() {
        let reference = nd::arr2(&[[1.0f32, 0.0], [0.0, 1.0], [1.0, 0.0]]);
        let out = nd::arr2(&[[2.0f32, 0.0], [1.0, 0.0], [0.5, 0.1]]);
        let q = quality(&out, &reference, Some(&[0, 1, 1]));
        assert!((q.agreement - 2.0 / 3.0).abs() < 1e-12);
        assert!((q.accuracy.expect("labels") - 1.0 / 3.0).abs() < 1e-12);
        assert!(q.output_cosine < 1.0 && q.output_cosine > 0.0);
    }
}

/// The terminal summary of a selection.
pub fn render(model: &Model, s: &Selection) -> String {
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
    out += &format!(
        "parameters {} -> {}\n",
        crate::inspect::si(crate::cost::total_params(graph)),
        crate::inspect::si(crate::cost::total_params(slim))
    );
    if !s.proxy_spearman.is_empty() {
        let list: Vec<String> = s.proxy_spearman.iter().map(|(n, r)| format!("{n} {r:.2}")).collect();
        out += &format!("Spearman(proxy, measured drop) over single blocks: {}\n", list.join(", "));
    }
    out
}

/// One model's row in `rba evaluate`.
#[derive(Debug, Serialize)]
pub struct EvalRow {
    pub model: String,
    pub accuracy_top1: Option<f64>,
    /// Only for more than 5 classes.
    pub accuracy_top5: Option<f64>,
    pub agreement: f64,
    pub output_cosine: f64,
    pub params: u64,
    pub macs: u64,
    pub file_bytes: u64,
    /// Median host latency per batch, seconds (interleaved runs).
    pub latency_median_s: f64,
    /// Measured speedup against the first model.
    pub speedup: f64,
    /// Speedup predicted from MACs against the first model.
    pub ideal_speedup: f64,
}

/// Top-k accuracy of `out` against `labels`.
pub fn top_k(out: &nd::Array2<f32>, labels: &[usize], k: usize) -> f64 {
    let hits = out
        .rows()
        .into_iter()
        .zip(labels)
        .filter(|(row, &label)| {
            let v = row[label.min(row.len().saturating_sub(1))];
            label < row.len() && row.iter().filter(|&&x| x > v).count() < k
        })
        .count();
    hits as f64 / labels.len().max(1) as f64
}

/// Evaluates models side by side on the same inputs; the first is the reference.
pub fn evaluate(
    models: &[(String, Model, u64)],
    inputs: &nd::ArrayD<f32>,
    labels: Option<&[usize]>,
    batch: usize,
    rounds: usize,
) -> Result<Vec<EvalRow>, CompactError> {
    let outputs: Vec<nd::Array2<f32>> =
        models.iter().map(|(_, m, _)| predict(&m.onnx, inputs, batch)).collect::<Result<_, _>>()?;
    // Latency: one batch per model, interleaved ABAB... so drift hits all alike.
    let runners: Vec<crate::runtime::Runner> =
        models.iter().map(|(_, m, _)| crate::runtime::Runner::new(&m.onnx, batch, &[])).collect::<Result<_, _>>()?;
    let mut one = nd::ArrayD::zeros(runners[0].input_shape.clone());
    let k = inputs.shape()[0].min(runners[0].input_shape[0]);
    one.slice_axis_mut(nd::Axis(0), (0..k).into()).assign(&inputs.slice_axis(nd::Axis(0), (0..k).into()));
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); models.len()];
    for _ in 0..rounds {
        for (r, s) in runners.iter().zip(samples.iter_mut()) {
            let t = std::time::Instant::now();
            r.run(one.clone())?;
            s.push(t.elapsed().as_secs_f64());
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    };
    let medians: Vec<f64> = samples.iter_mut().map(median).collect();
    let macs: Vec<u64> =
        models.iter().map(|(_, m, _)| crate::cost::total_macs(m.onnx.graph(), &m.index, &m.shapes)).collect();
    Ok(models
        .iter()
        .enumerate()
        .map(|(i, (name, m, bytes))| {
            let q = quality(&outputs[i], &outputs[0], labels);
            let classes = outputs[i].ncols();
            EvalRow {
                model: name.clone(),
                accuracy_top1: q.accuracy,
                accuracy_top5: labels.filter(|_| classes > 5).map(|l| top_k(&outputs[i], l, 5)),
                agreement: q.agreement,
                output_cosine: q.output_cosine,
                params: crate::cost::total_params(m.onnx.graph()),
                macs: macs[i],
                file_bytes: *bytes,
                latency_median_s: medians[i],
                speedup: medians[0] / medians[i],
                ideal_speedup: macs[0] as f64 / macs[i].max(1) as f64,
            }
        })
        .collect())
}

pub fn render_evaluation(rows: &[EvalRow]) -> String {
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
            crate::inspect::si(r.params),
            crate::inspect::si(r.macs),
            crate::inspect::si(r.file_bytes),
            1e3 * r.latency_median_s,
            r.speedup,
            r.ideal_speedup
        );
    }
    out
}
