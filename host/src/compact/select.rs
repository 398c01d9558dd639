//! The greedy search: remove one more block at a time, each candidate
//! compacted model verified on held-out data, until the budget is met
//! (METHOD.md, "Selection").

use super::evaluate::{quality, HeldOut, Quality};
use super::surgery::{check_spans, Span};
use super::verify::{Candidate, SelectOptions, Step, Verifier};
use super::{
    build, fit_span, spans_of, Budget, CompactError, ModelCost, Replacement, Selection, TranslatorKind, Trial,
};
use crate::calibrate::scores::SpanScore;
use crate::calibrate::Statistics;
use crate::model::blocks::Block;
use crate::model::Model;
use crate::onnx::OnnxModel;
use crate::progress::Progress;

/// Greedy selection under a budget, every step verified on held-out data
/// as `options` says; each step is reported to `progress` as a note.
pub fn select(
    model: &Model,
    stats: &Statistics,
    held: &HeldOut,
    budget: &Budget,
    kind: TranslatorKind,
    options: &SelectOptions,
    progress: &dyn Progress,
) -> Result<Selection, CompactError> {
    let baseline = quality(&held.reference, &held.reference, held.labels.as_deref());
    let verifier = Verifier::new(model, stats, held, options, progress);
    if let Budget::Spans(spans) = budget {
        let spans = check_spans(&model.blocks, spans)?;
        let (m, replacements, result) = resolve(model, stats, &verifier, &spans, kind)?;
        return Ok(Selection {
            replacements,
            baseline,
            result,
            trials: Vec::new(),
            proxy_spearman: Vec::new(),
            verification: verifier.verification(),
            model: m,
        });
    }
    let costs = Costs { blocks: &model.blocks.blocks, original: ModelCost::of(model), kind: kind_for_search(kind) };
    let mut search = Search {
        model,
        stats,
        verifier: &verifier,
        costs: &costs,
        removed: Vec::new(),
        trials: Vec::new(),
        single_drops: Vec::new(),
    };
    let mut best_model: Option<(OnnxModel, Vec<Replacement>, Quality)> = None;
    while !costs.met(budget, &search.removed) {
        let mut measured = search.measure_next(&baseline, progress)?;
        if let Budget::MaxDrop(p) = budget {
            measured.retain(|(_, q)| baseline.metric() - q.metric() <= *p + 1e-12);
        }
        let Some((b, q)) = choose(&measured, held.len()) else { break };
        search.removed.push(b);
        progress.note(&format!(
            "removed blocks {:?}: metric {:.4} (baseline {:.4})",
            sorted(&search.removed),
            q.metric(),
            baseline.metric()
        ));
        best_model = Some(resolve(model, stats, &verifier, &spans_of(&search.removed), kind)?);
    }
    if let Budget::Remove(k) = budget {
        if search.removed.len() < *k {
            return Err(CompactError::Budget(format!(
                "only {} of the requested {k} blocks can be replaced (the others change shape or lack statistics)",
                search.removed.len()
            )));
        }
    }
    let Some((model_out, replacements, result)) = best_model else {
        let best = search.trials.iter().map(|t| t.quality.metric()).fold(f64::NEG_INFINITY, f64::max);
        return Err(CompactError::Budget(format!(
            "no block can be removed within the budget; the best single removal reaches {:.4} against a baseline of {:.4}",
            best,
            baseline.metric()
        )));
    };
    let proxy_spearman = proxy_spearman(&stats.span_scores(), &search.single_drops);
    let trials = std::mem::take(&mut search.trials);
    Ok(Selection {
        replacements,
        baseline,
        result,
        trials,
        proxy_spearman,
        verification: verifier.verification(),
        model: model_out,
    })
}

fn sorted(blocks: &[usize]) -> Vec<usize> {
    let mut v = blocks.to_vec();
    v.sort_unstable();
    v
}

/// The state of the greedy search.
struct Search<'a> {
    model: &'a Model,
    stats: &'a Statistics,
    verifier: &'a Verifier<'a>,
    costs: &'a Costs<'a>,
    /// Blocks removed so far, in the order chosen.
    removed: Vec<usize>,
    /// Every candidate measured.
    trials: Vec<Trial>,
    /// The metric drop of each single block removed alone (the first step).
    single_drops: Vec<(usize, f64)>,
}

impl Search<'_> {
    /// Measures every replaceable block not yet removed, added to the
    /// removed ones (with `--verify-top K` only the `K` whose changed span
    /// fits best). Candidates that cannot be built (no statistics for the
    /// merged span, no fold site) are skipped.
    fn measure_next(
        &mut self,
        baseline: &Quality,
        progress: &dyn Progress,
    ) -> Result<Vec<(usize, Quality)>, CompactError> {
        let replaceable: Vec<usize> =
            self.model.blocks.blocks.iter().filter(|b| b.replaceable()).map(|b| b.index).collect();
        let mut candidates: Vec<(usize, Vec<usize>, Candidate, f64)> = Vec::new();
        for b in replaceable.into_iter().filter(|b| !self.removed.contains(b)) {
            let mut removed = self.removed.clone();
            removed.push(b);
            let spans: Candidate = spans_of(&removed).into_iter().map(|s| (s, self.costs.kind)).collect();
            // The fit of the span that changes with this candidate ranks it
            // for --verify-top (and a span without statistics is skipped).
            let Some(&(changed, _)) = spans.iter().find(|(s, _)| s.blocks().contains(&b)) else { continue };
            let Ok((_, fit)) = fit_span(self.stats, changed, self.costs.kind) else { continue };
            candidates.push((b, removed, spans, fit.relative_residual));
        }
        let built = candidates.len();
        if let Some(k) = self.verifier.options().verify_top {
            // Stable: ties keep index order; NaN fits last.
            candidates.sort_by(|a, b| a.3.is_nan().cmp(&b.3.is_nan()).then(a.3.total_cmp(&b.3)));
            candidates.truncate(k);
            candidates.sort_by_key(|c| c.0);
        }
        let qualities = self.verifier.measure(&candidates.iter().map(|c| c.2.clone()).collect::<Vec<_>>())?;
        let mut measured = Vec::new();
        for ((b, removed, _, _), q) in candidates.into_iter().zip(qualities) {
            let Some(q) = q else { continue };
            let cost = self.costs.after(&removed);
            self.trials.push(Trial { removed_blocks: sorted(&removed), quality: q, cost });
            if self.removed.is_empty() {
                self.single_drops.push((b, baseline.metric() - q.metric()));
            }
            measured.push((b, q));
        }
        if let Some(k) = self.verifier.options().verify_top {
            progress.note(&format!(
                "verified {} of {built} candidates (--verify-top {k}: best by fit 1-R^2)",
                measured.len()
            ));
        }
        self.verifier.record_step(Step { candidates: built, verified: measured.len() });
        Ok(measured)
    }
}

/// What the original model costs, and what it costs with blocks removed
/// (their cost out, one translator of the searched kind per span in).
struct Costs<'a> {
    blocks: &'a [Block],
    original: ModelCost,
    kind: TranslatorKind,
}

impl Costs<'_> {
    fn after(&self, removed: &[usize]) -> ModelCost {
        let mut cost = self.original;
        for &b in removed {
            cost.params = cost.params.saturating_sub(self.blocks[b - 1].params);
            cost.macs = cost.macs.saturating_sub(self.blocks[b - 1].macs);
        }
        for s in spans_of(removed) {
            let first = &self.blocks[s.start];
            let d = first.features().unwrap_or(0);
            let added = self.kind.cost(d, first.input_shape.iter().product::<usize>() / d.max(1));
            cost.params += added.params;
            cost.macs += added.macs;
        }
        cost
    }

    /// Whether removing `removed` meets the budget.
    fn met(&self, budget: &Budget, removed: &[usize]) -> bool {
        let fraction = |after: u64, original: u64| after as f64 / original.max(1) as f64;
        match budget {
            Budget::Remove(k) => removed.len() >= *k,
            Budget::TargetParams(f) => fraction(self.after(removed).params, self.original.params) <= *f,
            Budget::TargetMacs(f) => fraction(self.after(removed).macs, self.original.macs) <= *f,
            Budget::MaxDrop(_) | Budget::Spans(_) => false,
        }
    }
}

/// How well each proxy ranked the single-block spans against the measured drop.
fn proxy_spearman(scores: &[SpanScore], single_drops: &[(usize, f64)]) -> Vec<(String, f64)> {
    type Proxy = fn(&SpanScore) -> f64;
    let proxies: [(&str, Proxy); 4] = [
        ("linear_residual", |s| s.linear_residual),
        ("-br_cls", |s| -s.br_cls),
        ("-br_all_tokens", |s| -s.br_all_tokens),
        ("1-cosine", |s| 1.0 - s.cosine),
    ];
    proxies
        .iter()
        .map(|(name, proxy)| {
            let (mut p, mut d) = (Vec::new(), Vec::new());
            for &(b, drop) in single_drops {
                if let Some(s) = scores.iter().find(|s| s.blocks == 1 && s.end == b) {
                    p.push(proxy(s));
                    d.push(drop);
                }
            }
            (name.to_string(), spearman(&p, &d))
        })
        .collect()
}

/// Chooses per span the translator that verifies best, for `Auto`.
fn resolve(
    model: &Model,
    stats: &Statistics,
    verifier: &Verifier,
    spans: &[Span],
    kind: TranslatorKind,
) -> Result<(OnnxModel, Vec<Replacement>, Quality), CompactError> {
    let mut chosen: Vec<(Span, TranslatorKind)> = spans.iter().map(|s| (*s, kind)).collect();
    if kind == TranslatorKind::Auto {
        for k in 0..chosen.len() {
            let options =
                [TranslatorKind::Linear, TranslatorKind::Affine, TranslatorKind::Folded, TranslatorKind::Identity];
            let trials: Vec<Candidate> = options
                .iter()
                .map(|&option| {
                    let mut trial = chosen.clone();
                    trial[k].1 = option;
                    // Spans not yet resolved use linear meanwhile.
                    for t in trial.iter_mut().skip(k + 1) {
                        t.1 = TranslatorKind::Linear;
                    }
                    trial
                })
                .collect();
            // Options that cannot be built (folding needs a suitable block
            // before the span) measure as None.
            let mut best: Option<(Quality, TranslatorKind)> = None;
            for (q, option) in verifier.measure(&trials)?.into_iter().zip(options) {
                let Some(q) = q else { continue };
                if best.as_ref().is_none_or(|(b, _)| q.better_than(b)) {
                    best = Some((q, option));
                }
            }
            chosen[k].1 = best.map_or(TranslatorKind::Linear, |(_, o)| o);
        }
    }
    let (m, r) = build(model, stats, &chosen)?;
    let q = verifier.measure(std::slice::from_ref(&chosen))?.pop().flatten().ok_or_else(|| {
        CompactError::Budget(format!(
            "the chosen spans {:?} cannot be built",
            chosen.iter().map(|c| c.0).collect::<Vec<_>>()
        ))
    })?;
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
    fn spearman_matches_hand_values() {
        assert!((spearman(&[1.0, 2.0, 3.0, 4.0], &[10.0, 20.0, 30.0, 40.0]) - 1.0).abs() < 1e-12);
        assert!((spearman(&[1.0, 2.0, 3.0, 4.0], &[4.0, 3.0, 2.0, 1.0]) + 1.0).abs() < 1e-12);
        // ranks a = [0,1,2,3], b = [1,0,3,2]: rho = 1 - 6*4/(4*15) = 0.6
        assert!((spearman(&[1.0, 2.0, 3.0, 4.0], &[2.0, 1.0, 4.0, 3.0]) - 0.6).abs() < 1e-12);
        assert!(spearman(&[1.0, 2.0], &[1.0, 2.0]).is_nan());
    }
}
