//! Span surgery: replace the blocks of a span by a translator (identity, or a
//! linear map with optional bias), then drop what no longer feeds an output.
//!
//! Spans use boundary indices: span `(s, e)` maps boundary `s` to boundary
//! `e` and removes blocks `s+1 ..= e` (blocks are numbered from 1; block `b`
//! maps boundary `b-1` to boundary `b`), as in the paper.

use serde::Serialize;

use crate::fit::fold::{fold_into, fold_site, FoldError};
use crate::model::blocks::{BlockMap, FeatureLayout};
use crate::onnx::build::{attr_ints, f32_tensor, node};
use crate::onnx::proto::GraphProto;
use crate::onnx::OnnxModel;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SurgeryError {
    #[error("span {s}..{e}: the start must come before the end")]
    Empty { s: usize, e: usize },
    #[error("span {s}..{e} runs past the last boundary ({last})")]
    PastEnd { s: usize, e: usize, last: usize },
    #[error("spans {a} and {b} overlap")]
    Overlap { a: String, b: String },
    #[error("span {s}..{e}: block {block} is not replaceable: {why}")]
    NotReplaceable { s: usize, e: usize, block: usize, why: String },
    #[error("span {s}..{e}: input shape {from:?} differs from output shape {to:?}")]
    ShapeChange { s: usize, e: usize, from: Vec<usize>, to: Vec<usize> },
    #[error("span {s}..{e}: translator is {got} values, expected {expected} for {features} features")]
    TranslatorSize { s: usize, e: usize, got: usize, expected: usize, features: usize },
    #[error("span {s}..{e}: cannot fold into block {s}, which span {other} removes")]
    FoldSiteRemoved { s: usize, e: usize, other: String },
    #[error("span {s}..{e}: {source}")]
    Fold { s: usize, e: usize, source: FoldError },
}

/// What stands in for a span.
#[derive(Debug, Clone, PartialEq)]
pub enum Translator {
    /// Drop the blocks outright.
    Identity,
    /// `y = x W (+ b)` on the feature axis; `weight` is `D x D` row-major
    /// (row = input feature), `bias` has `D` values.
    Linear { weight: Vec<f32>, bias: Option<Vec<f32>> },
    /// `weight` (`D x D`, as for `Linear`) multiplied into the last linear
    /// layer of block `s` (see `fold`); the span's blocks are dropped.
    Folded { weight: Vec<f32> },
}

impl Translator {
    /// Parameters the translator adds to the model.
    pub fn params(&self) -> u64 {
        match self {
            Translator::Identity | Translator::Folded { .. } => 0,
            Translator::Linear { weight, bias } => (weight.len() + bias.as_ref().map_or(0, Vec::len)) as u64,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, serde::Deserialize)]
pub struct Span {
    pub start: usize,
    pub end: usize,
}

impl Span {
    pub fn new(start: usize, end: usize) -> Self {
        Self { start, end }
    }
    /// Blocks removed (1-based, inclusive range).
    pub fn blocks(&self) -> std::ops::RangeInclusive<usize> {
        self.start + 1..=self.end
    }
}

impl std::fmt::Display for Span {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}..{}", self.start, self.end)
    }
}

impl std::str::FromStr for Span {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, b) = s.split_once("..").ok_or_else(|| format!("span '{s}' is not of the form START..END"))?;
        let parse =
            |v: &str| v.trim().parse::<usize>().map_err(|_| format!("span '{s}': '{v}' is not a boundary index"));
        Ok(Span::new(parse(a)?, parse(b)?))
    }
}

/// Checks spans against the block map: in range, non-empty, non-overlapping
/// (adjacent is fine), every block replaceable. Returns them sorted.
pub fn check_spans(blocks: &BlockMap, spans: &[Span]) -> Result<Vec<Span>, SurgeryError> {
    let last = blocks.boundaries.len().saturating_sub(1);
    let mut sorted = spans.to_vec();
    sorted.sort();
    for sp in &sorted {
        let (s, e) = (sp.start, sp.end);
        if s >= e {
            return Err(SurgeryError::Empty { s, e });
        }
        if e > last {
            return Err(SurgeryError::PastEnd { s, e, last });
        }
        for b in sp.blocks() {
            let block = &blocks.blocks[b - 1];
            if let Some(why) = &block.not_replaceable {
                return Err(SurgeryError::NotReplaceable { s, e, block: b, why: why.clone() });
            }
        }
        let (from, to) = (&blocks.blocks[s].input_shape, &blocks.blocks[e - 1].output_shape);
        if from != to {
            return Err(SurgeryError::ShapeChange { s, e, from: from.clone(), to: to.clone() });
        }
    }
    for pair in sorted.windows(2) {
        if pair[1].start < pair[0].end {
            return Err(SurgeryError::Overlap { a: pair[0].to_string(), b: pair[1].to_string() });
        }
    }
    Ok(sorted)
}

/// Returns a copy of `model` with each span replaced by its translator.
pub fn replace_spans(
    model: &OnnxModel,
    blocks: &BlockMap,
    replacements: &[(Span, Translator)],
) -> Result<OnnxModel, SurgeryError> {
    let spans: Vec<Span> = replacements.iter().map(|(s, _)| *s).collect();
    check_spans(blocks, &spans)?;
    let mut out = model.clone();
    let mut ordered: Vec<&(Span, Translator)> = replacements.iter().collect();
    ordered.sort_by_key(|(s, _)| *s);
    // Folds first, while the blocks they rewrite are still in the graph.
    for (span, translator) in &ordered {
        let Translator::Folded { weight } = translator else { continue };
        let (s, e) = (span.start, span.end);
        if let Some((other, _)) = ordered.iter().find(|(o, _)| o.start < s && o.end >= s) {
            return Err(SurgeryError::FoldSiteRemoved { s, e, other: other.to_string() });
        }
        let features = blocks.blocks[s].features().unwrap_or(0);
        if weight.len() != features * features {
            return Err(SurgeryError::TranslatorSize {
                s,
                e,
                got: weight.len(),
                expected: features * features,
                features,
            });
        }
        let fold_err = |source| SurgeryError::Fold { s, e, source };
        let site = fold_site(out.graph(), blocks, s).map_err(fold_err)?;
        fold_into(out.graph_mut(), &site, weight).map_err(fold_err)?;
    }
    // Adjacent spans: the second reads the first's output, which replaced
    // the shared boundary.
    let mut renamed_start: Option<(usize, String)> = None;
    for (span, translator) in ordered {
        let (s, e) = (span.start, span.end);
        let first = &blocks.blocks[s];
        let input = match &renamed_start {
            Some((b, name)) if *b == s => name.clone(),
            _ => blocks.boundaries[s].clone(),
        };
        let old = blocks.boundaries[e].clone();
        let prefix = format!("rba/span_{s}_{e}");
        let new_out = span_output_name(out.graph(), *span, &old);
        let graph = out.graph_mut();
        let is_output = new_out == old;
        if is_output {
            // The graph output keeps its name: retire the old producer's.
            let retired = format!("{prefix}/replaced");
            for n in graph.node.iter_mut() {
                for o in n.output.iter_mut().filter(|o| **o == old) {
                    *o = retired.clone();
                }
            }
        }
        let new_nodes = match translator {
            Translator::Identity | Translator::Folded { .. } => {
                vec![node("Identity", &format!("{prefix}/Identity"), &[&input], &[&new_out])]
            }
            Translator::Linear { weight, bias } => {
                let features = first.features().unwrap_or(0);
                let check = |got: usize, expected: usize| {
                    if got == expected {
                        Ok(())
                    } else {
                        Err(SurgeryError::TranslatorSize { s, e, got, expected, features })
                    }
                };
                check(weight.len(), features * features)?;
                if let Some(b) = bias {
                    check(b.len(), features)?;
                }
                linear_nodes(graph, &prefix, &input, &new_out, first.layout, features, weight, bias.as_deref())
            }
        };
        if !is_output {
            for n in graph.node.iter_mut() {
                for i in n.input.iter_mut().filter(|i| **i == old) {
                    *i = new_out.clone();
                }
            }
        }
        // Insert after the producer of the span's input to keep the node
        // list topologically sorted.
        let at = graph.node.iter().position(|n| n.output.contains(&input)).map_or(0, |p| p + 1);
        graph.node.splice(at..at, new_nodes);
        renamed_start = Some((e, new_out));
    }
    rba_onnx::graph::prune(out.graph_mut());
    Ok(out)
}

/// The tensor that stands for boundary `old` (the end of `span`) after
/// [`replace_spans`]: a graph output keeps its name, others get a new one.
pub fn span_output_name(graph: &GraphProto, span: Span, old: &str) -> String {
    if graph.output.iter().any(|o| o.name() == old) {
        old.to_string()
    } else {
        format!("rba/span_{}_{}/out", span.start, span.end)
    }
}

#[allow(clippy::too_many_arguments)]
fn linear_nodes(
    graph: &mut GraphProto,
    prefix: &str,
    input: &str,
    output: &str,
    layout: Option<FeatureLayout>,
    d: usize,
    weight: &[f32],
    bias: Option<&[f32]>,
) -> Vec<crate::onnx::proto::NodeProto> {
    let w_name = format!("{prefix}/weight");
    let b_name = format!("{prefix}/bias");
    match layout {
        Some(FeatureLayout::ChannelsFirst) => {
            // Conv weight [out, in, 1, 1] is the transpose of x W.
            let mut conv_w = vec![0f32; d * d];
            for i in 0..d {
                for o in 0..d {
                    conv_w[o * d + i] = weight[i * d + o];
                }
            }
            graph.initializer.push(f32_tensor(&w_name, &[d, d, 1, 1], &conv_w));
            let mut inputs = vec![input, w_name.as_str()];
            if let Some(b) = bias {
                graph.initializer.push(f32_tensor(&b_name, &[d], b));
                inputs.push(&b_name);
            }
            let mut conv = node("Conv", &format!("{prefix}/Conv"), &inputs, &[output]);
            conv.attribute.push(attr_ints("kernel_shape", &[1, 1]));
            vec![conv]
        }
        _ => {
            graph.initializer.push(f32_tensor(&w_name, &[d, d], weight));
            match bias {
                None => vec![node("MatMul", &format!("{prefix}/MatMul"), &[input, &w_name], &[output])],
                Some(b) => {
                    graph.initializer.push(f32_tensor(&b_name, &[d], b));
                    let mm = format!("{prefix}/matmul_out");
                    vec![
                        node("MatMul", &format!("{prefix}/MatMul"), &[input, &w_name], &[&mm]),
                        node("Add", &format!("{prefix}/Add"), &[&mm, &b_name], &[output]),
                    ]
                }
            }
        }
    }
}
