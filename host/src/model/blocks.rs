//! Block detection: boundaries are cut points of the data-flow graph (every
//! path from the input to the output passes through them); blocks are the
//! subgraphs between consecutive boundaries.
//!
//! Cut points alone are too fine (every tensor of a plain chain is one, and a
//! pre-LN transformer layer has two residual units), so they are grouped:
//! 1. the segment between two consecutive cut points is a *residual unit*
//!    when paths fork inside it and it contains a weight op (MatMul, Gemm,
//!    Conv); other segments are glue (reshapes, activations, norms);
//! 2. glue between two units belongs to the unit before it (the ReLU after a
//!    ResNet residual add); after the last unit, only glue that repeats the
//!    pattern seen after earlier units is taken (so a ViT's final LayerNorm
//!    stays outside the blocks);
//! 3. a token-mixing unit (attention: a MatMul of two activations, or a
//!    Softmax) followed by a channel-mixing unit (the MLP) is one transformer
//!    layer; any other unit (a ResNet basic or bottleneck block) is a block
//!    on its own.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;

use crate::model::cost;
use crate::onnx::graph::GraphIndex;
use crate::onnx::proto::GraphProto;

/// Operators that do real weighted work; a forking segment without one is a
/// normalisation or gating pattern, not a residual block.
const WEIGHT_OPS: [&str; 5] = ["MatMul", "Gemm", "Conv", "ConvTranspose", "Einsum"];

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum BlockError {
    #[error("no residual blocks found: the graph has no forking segment with a weight op between cut points (a plain chain?); name boundaries with --boundaries")]
    NoBlocks,
    #[error("boundary tensor '{0}' does not exist in the graph")]
    UnknownTensor(String),
    #[error("boundary tensor '{0}' is not on the data path from the input to the output")]
    NotActivation(String),
    #[error("boundary tensor '{0}' is not a cut point: some path from the input to the output bypasses it")]
    NotCut(String),
    #[error("at least two boundaries are needed to form a block, got {0}")]
    TooFew(usize),
}

/// How features are laid out in a boundary tensor, which decides the form a
/// translator takes in the graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FeatureLayout {
    /// Features on the last axis (`[B, T, D]` tokens, `[B, D]`, NHWC maps): a MatMul.
    Last,
    /// Channels on axis 1 (`[B, C, H, W]`): a 1x1 Conv.
    ChannelsFirst,
}

#[derive(Debug, Clone, Serialize)]
pub struct Block {
    /// Index of the block, from 1; block `b` maps boundary `b - 1` to boundary `b`.
    pub index: usize,
    pub input: String,
    pub output: String,
    /// Shapes at batch size 1 (empty when unknown).
    pub input_shape: Vec<usize>,
    pub output_shape: Vec<usize>,
    pub params: u64,
    /// Multiply-accumulates per image.
    pub macs: u64,
    pub layout: Option<FeatureLayout>,
    /// Why the block cannot be replaced by a map of its input, if it cannot.
    pub not_replaceable: Option<String>,
    /// Graph node indices inside the block, topologically ordered.
    #[serde(skip)]
    pub nodes: Vec<usize>,
}

impl Block {
    pub fn replaceable(&self) -> bool {
        self.not_replaceable.is_none()
    }
    /// Feature dimension of the block's input (the translator's width).
    pub fn features(&self) -> Option<usize> {
        match self.layout? {
            FeatureLayout::Last => self.input_shape.last().copied(),
            FeatureLayout::ChannelsFirst => self.input_shape.get(1).copied(),
        }
    }
}

/// Detected or user-given boundaries and the blocks between them.
#[derive(Debug, Clone, Serialize)]
pub struct BlockMap {
    /// Boundary tensors in data-flow order; `boundaries[0]` feeds block 1.
    pub boundaries: Vec<String>,
    pub blocks: Vec<Block>,
    /// "auto" or "user".
    pub source: &'static str,
}

impl BlockMap {
    /// Finds blocks automatically.
    pub fn detect(
        graph: &GraphProto,
        index: &GraphIndex,
        shapes: &HashMap<String, Vec<usize>>,
    ) -> Result<Self, BlockError> {
        let cuts = index.cut_tensors(graph);
        let boundaries = group_boundaries(graph, index, &cuts)?;
        Ok(Self::build(graph, index, shapes, boundaries, "auto"))
    }

    /// Uses boundaries named by the user, after checking each is a cut point;
    /// they are put in data-flow order.
    pub fn from_names(
        graph: &GraphProto,
        index: &GraphIndex,
        shapes: &HashMap<String, Vec<usize>>,
        names: &[String],
    ) -> Result<Self, BlockError> {
        let cuts = index.cut_tensors(graph);
        let position: HashMap<&str, usize> = cuts.iter().enumerate().map(|(i, c)| (c.as_str(), i)).collect();
        let mut chosen = Vec::new();
        for name in names {
            let known = index.producer.contains_key(name) || index.inputs.contains(name);
            if !known {
                return Err(BlockError::UnknownTensor(name.clone()));
            }
            if !index.live.contains(name) {
                return Err(BlockError::NotActivation(name.clone()));
            }
            let &p = position.get(name.as_str()).ok_or_else(|| BlockError::NotCut(name.clone()))?;
            chosen.push((p, name.clone()));
        }
        chosen.sort();
        chosen.dedup();
        if chosen.len() < 2 {
            return Err(BlockError::TooFew(chosen.len()));
        }
        Ok(Self::build(graph, index, shapes, chosen.into_iter().map(|(_, n)| n).collect(), "user"))
    }

    fn build(
        graph: &GraphProto,
        index: &GraphIndex,
        shapes: &HashMap<String, Vec<usize>>,
        boundaries: Vec<String>,
        source: &'static str,
    ) -> Self {
        let blocks = boundaries
            .windows(2)
            .enumerate()
            .map(|(i, pair)| {
                let nodes = index.nodes_between(graph, &pair[0], &pair[1]);
                let input_shape = shapes.get(&pair[0]).cloned().unwrap_or_default();
                let output_shape = shapes.get(&pair[1]).cloned().unwrap_or_default();
                let layout = feature_layout(graph, index, &pair[0], &input_shape);
                let not_replaceable = if input_shape.is_empty() || output_shape.is_empty() {
                    Some("shapes unknown".to_string())
                } else if input_shape != output_shape {
                    Some(format!("changes shape {input_shape:?} -> {output_shape:?}"))
                } else if layout.is_none() {
                    Some(format!("rank {} tensors are not supported", input_shape.len()))
                } else {
                    None
                };
                Block {
                    index: i + 1,
                    input: pair[0].clone(),
                    output: pair[1].clone(),
                    params: cost::params_of(graph, &nodes),
                    macs: cost::macs_of(graph, &nodes, shapes),
                    input_shape,
                    output_shape,
                    layout,
                    not_replaceable,
                    nodes,
                }
            })
            .collect();
        Self { boundaries, blocks, source }
    }

    pub fn replaceable_count(&self) -> usize {
        self.blocks.iter().filter(|b| b.replaceable()).count()
    }
}

/// Rank 2/3 tensors carry features last. Rank 4 maps are channels-first
/// (ONNX's Conv layout) unless the block immediately transposes them from
/// NHWC, as TF/Keras exports do.
fn feature_layout(graph: &GraphProto, index: &GraphIndex, tensor: &str, shape: &[usize]) -> Option<FeatureLayout> {
    match shape.len() {
        2 | 3 => Some(FeatureLayout::Last),
        4 => {
            let nhwc_to_nchw = index.consumers.get(tensor).into_iter().flatten().any(|&c| {
                let n = &graph.node[c];
                n.op_type() == "Transpose" && n.attribute.iter().any(|a| a.name() == "perm" && a.ints == [0, 3, 1, 2])
            });
            Some(if nhwc_to_nchw { FeatureLayout::Last } else { FeatureLayout::ChannelsFirst })
        }
        _ => None,
    }
}

struct Segment {
    end: usize,
    unit: bool,
    /// Mixes tokens (attention), so pairs with the channel-mixing unit after it.
    token_mixer: bool,
    signature: String,
}

fn signature(graph: &GraphProto, nodes: &[usize]) -> String {
    let mut ops: BTreeMap<&str, usize> = BTreeMap::new();
    for &i in nodes {
        *ops.entry(graph.node[i].op_type()).or_default() += 1;
    }
    ops.iter().map(|(op, n)| format!("{op}x{n}")).collect::<Vec<_>>().join(",")
}

/// Chooses block boundaries among the cut tensors (see the module docs).
fn group_boundaries(graph: &GraphProto, index: &GraphIndex, cuts: &[String]) -> Result<Vec<String>, BlockError> {
    let segments: Vec<Segment> = cuts
        .windows(2)
        .enumerate()
        .map(|(i, pair)| {
            let nodes = index.nodes_between(graph, &pair[0], &pair[1]);
            let forks = nodes.iter().any(|&n| index.live_inputs(graph, n).len() >= 2);
            let weighted = nodes.iter().any(|&n| WEIGHT_OPS.contains(&graph.node[n].op_type()));
            let token_mixer = nodes.iter().any(|&n| {
                let op = graph.node[n].op_type();
                op == "Softmax" || (WEIGHT_OPS.contains(&op) && index.live_inputs(graph, n).len() >= 2)
            });
            Segment { end: i + 1, unit: forks && weighted, token_mixer, signature: signature(graph, &nodes) }
        })
        .collect();
    let units: Vec<usize> = (0..segments.len()).filter(|&s| segments[s].unit).collect();
    let Some(&first) = units.first() else {
        return Err(BlockError::NoBlocks);
    };
    // Each unit ends after its trailing glue.
    let mut unit_ends: Vec<usize> = Vec::new();
    let mut previous_glue: Vec<&str> = Vec::new();
    for (k, &u) in units.iter().enumerate() {
        let glue_end = units.get(k + 1).copied().unwrap_or(segments.len());
        let mut glue: Vec<&str> = segments[u + 1..glue_end].iter().map(|s| s.signature.as_str()).collect();
        if k + 1 == units.len() {
            // After the last unit, keep only the glue that repeats what
            // followed the earlier units.
            let keep = glue.iter().zip(&previous_glue).take_while(|(a, b)| a == b).count();
            glue.truncate(keep);
        }
        unit_ends.push(segments[u + glue.len()].end);
        previous_glue = glue;
    }
    let mut boundaries = vec![cuts[segments[first].end - 1].clone()];
    let mut k = 0;
    while k < units.len() {
        let pairs = segments[units[k]].token_mixer && units.get(k + 1).is_some_and(|&next| !segments[next].token_mixer);
        k += if pairs { 2 } else { 1 };
        boundaries.push(cuts[unit_ends[k - 1]].clone());
    }
    let unique: HashSet<&String> = boundaries.iter().collect();
    debug_assert_eq!(unique.len(), boundaries.len());
    Ok(boundaries)
}
