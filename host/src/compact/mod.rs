//! Compaction: fit translators for spans from the calibration statistics,
//! and choose which spans to replace by *measuring* candidate compacted
//! models on held-out data (never the calibration images).
//!
//! - [`select`]: the greedy search under a budget.
//! - [`surgery`]: replacing spans in the ONNX graph.
//! - [`evaluate`]: held-out quality, and models side by side.
//! - [`verify`]: measuring candidates during selection (whole models, or
//!   in parallel only their tails, see [`tail`]).

pub mod evaluate;
pub mod select;
pub mod surgery;
pub mod tail;
pub mod verify;

use serde::Serialize;

use crate::calibrate::Statistics;
use crate::fit::{fit, Fit, FitError, FitKind};
use crate::model::run::RunError;
use crate::model::Model;
use crate::onnx::OnnxModel;
use evaluate::Quality;
use surgery::{replace_spans, Span, SurgeryError, Translator};

pub use evaluate::HeldOut;
pub use select::select;
pub use tail::CacheOptions;
pub use verify::{SelectOptions, SelectionMode, Verification};

#[derive(Debug, thiserror::Error)]
pub enum CompactError {
    #[error(transparent)]
    Surgery(#[from] SurgeryError),
    #[error(transparent)]
    Run(#[from] RunError),
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
    #[error("held-out activation cache: {0}")]
    Cache(String),
}

/// Which map stands in for a span.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
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
    /// The values `--translator` takes.
    pub const NAMES: [&'static str; 6] = ["linear", "affine", "ridge", "identity", "folded", "auto"];

    /// Parameters and MACs per image this translator adds for a span whose
    /// input has `d` features at `positions` tokens or pixels (a `MatMul`
    /// or 1x1 `Conv`; folded and identity add nothing).
    pub fn cost(self, d: usize, positions: usize) -> ModelCost {
        let (d, positions) = (d as u64, positions as u64);
        match self {
            TranslatorKind::Identity | TranslatorKind::Folded => ModelCost { params: 0, macs: 0 },
            TranslatorKind::Linear | TranslatorKind::Ridge | TranslatorKind::Auto => {
                ModelCost { params: d * d, macs: positions * d * d }
            }
            TranslatorKind::Affine => ModelCost { params: d * d + d, macs: positions * d * d },
        }
    }

    fn fit_kind(self) -> FitKind {
        match self {
            TranslatorKind::Linear | TranslatorKind::Folded | TranslatorKind::Auto => FitKind::Linear,
            TranslatorKind::Affine => FitKind::Affine,
            TranslatorKind::Ridge => FitKind::Ridge { relative_lambda: 1e-3 },
            TranslatorKind::Identity => FitKind::Identity,
        }
    }
}

impl std::str::FromStr for TranslatorKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "linear" => TranslatorKind::Linear,
            "affine" => TranslatorKind::Affine,
            "ridge" => TranslatorKind::Ridge,
            "identity" => TranslatorKind::Identity,
            "folded" => TranslatorKind::Folded,
            "auto" => TranslatorKind::Auto,
            _ => {
                return Err(format!("unknown translator '{s}' (expected one of: {})", TranslatorKind::NAMES.join(", ")))
            }
        })
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
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Replacement {
    pub span: Span,
    pub translator: TranslatorKind,
    /// 1 - R^2 of the fit on the calibration statistics.
    #[serde(with = "crate::report::nan_as_null")]
    pub fit_residual: f64,
    pub solver: crate::fit::Solver,
}

/// One candidate model measured during selection.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Trial {
    pub removed_blocks: Vec<usize>,
    pub quality: Quality,
    /// The candidate's size: the original's minus the removed blocks plus
    /// the translators searched with.
    pub cost: ModelCost,
}

/// What a model costs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ModelCost {
    pub params: u64,
    /// Multiply-accumulates per image.
    pub macs: u64,
}

impl ModelCost {
    /// Of a model, counted on its graph.
    pub fn of(model: &Model) -> ModelCost {
        let graph = model.onnx.graph();
        ModelCost {
            params: crate::model::cost::total_params(graph),
            macs: crate::model::cost::total_macs(graph, &model.index, &model.shapes),
        }
    }

    /// Of an ONNX model without blocks (e.g. a compacted one).
    pub fn of_onnx(onnx: &OnnxModel) -> Result<ModelCost, RunError> {
        let path = onnx.path.display().to_string();
        let index = crate::onnx::graph::GraphIndex::new(onnx.graph())
            .map_err(|reason| RunError::Load { path: path.clone(), reason })?;
        let shapes = crate::model::run::tensor_shapes(onnx, 1)?;
        let graph = onnx.graph();
        Ok(ModelCost {
            params: crate::model::cost::total_params(graph),
            macs: crate::model::cost::total_macs(graph, &index, &shapes),
        })
    }
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
    /// How candidates were measured.
    pub verification: Verification,
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
            crate::fit::fold::fold_site(model.onnx.graph(), &model.blocks, span.start)
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
        let end = crate::compact::surgery::span_output_name(partial.onnx.graph(), local, &names[local.end]);
        names.splice(local.start + 1..=local.end, [end]);
        shift += span.end - span.start - 1;
        replacements.push(Replacement { span, translator: kind, fit_residual: f.relative_residual, solver: f.solver });
    }
    Ok((current, replacements))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adjacent_blocks_merge_into_spans() {
        assert_eq!(spans_of(&[6, 3, 4, 9]), vec![Span::new(2, 4), Span::new(5, 6), Span::new(8, 9)]);
        assert_eq!(spans_of(&[]), vec![]);
    }
}
