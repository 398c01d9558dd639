//! Parameter and multiply-accumulate (MAC) counts per node.

use std::collections::{HashMap, HashSet};

use crate::onnx::build::{element_count, f32_values};
use crate::onnx::graph::GraphIndex;
use crate::onnx::proto::{tensor_proto::DataType, GraphProto, TensorProto};

/// Float tensors with at least this many elements count as parameters;
/// scalars (epsilons, 0.5 and sqrt(2) in GELU) do not.
const MIN_PARAM_ELEMENTS: usize = 2;

fn is_parameter(t: &TensorProto) -> bool {
    t.data_type() == DataType::Float as i32 && element_count(t) >= MIN_PARAM_ELEMENTS
}

/// Weight tensors as stored: initializers and the outputs of `Constant`
/// nodes (older exporters store weights that way).
fn stored_weights(graph: &GraphProto) -> HashMap<&str, &TensorProto> {
    let mut w: HashMap<&str, &TensorProto> =
        graph.initializer.iter().filter(|t| is_parameter(t)).map(|t| (t.name(), t)).collect();
    for node in graph.node.iter().filter(|n| n.op_type() == "Constant") {
        if let (Some(out), Some(t)) = (node.output.first(), node.attribute.iter().find_map(|a| a.t.as_ref())) {
            if is_parameter(t) {
                w.insert(out.as_str(), t);
            }
        }
    }
    w
}

/// Weight tensors by every name they are read under: stored weights plus
/// `Identity` aliases (PyTorch deduplicates equal initializers, e.g. freshly
/// initialised LayerNorm scales, and aliases them per layer).
pub fn weights(graph: &GraphProto) -> HashMap<&str, &TensorProto> {
    let mut w = stored_weights(graph);
    for node in graph.node.iter().filter(|n| n.op_type() == "Identity") {
        if let (Some(i), Some(o)) = (node.input.first(), node.output.first()) {
            if let Some(&t) = w.get(i.as_str()) {
                w.insert(o.as_str(), t);
            }
        }
    }
    w
}

/// Total parameters of a graph (shared storage counted once).
pub fn total_params(graph: &GraphProto) -> u64 {
    stored_weights(graph).values().map(|t| element_count(t) as u64).sum()
}

/// Parameters read by a set of nodes, each weight counted once.
pub fn params_of(graph: &GraphProto, nodes: &[usize]) -> u64 {
    let w = weights(graph);
    let mut seen = HashSet::new();
    nodes
        .iter()
        .flat_map(|&i| graph.node[i].input.iter())
        .filter(|t| seen.insert(t.as_str()))
        .filter_map(|t| w.get(t.as_str()))
        .map(|t| element_count(t) as u64)
        .sum()
}

/// MACs of one node for the given tensor shapes (0 for ops that do no
/// multiply-accumulate work worth counting, or whose shapes are unknown).
pub fn node_macs(graph: &GraphProto, node: usize, shapes: &HashMap<String, Vec<usize>>) -> u64 {
    let n = &graph.node[node];
    // Activations have inferred shapes; weights carry their own dims.
    let weight_dims = |t: &str| -> Option<Vec<usize>> {
        let w = graph.initializer.iter().find(|w| w.name() == t)?;
        Some(w.dims.iter().map(|&d| d.max(0) as usize).collect())
    };
    let shape = |i: usize| n.input.get(i).and_then(|t| shapes.get(t).cloned().or_else(|| weight_dims(t)));
    let out_elems = || -> u64 {
        n.output.first().and_then(|t| shapes.get(t)).map(|s| s.iter().product::<usize>() as u64).unwrap_or(0)
    };
    match n.op_type() {
        "MatMul" => shape(0).and_then(|a| a.last().copied()).map(|k| out_elems() * k as u64).unwrap_or(0),
        "Gemm" => {
            let trans_a = n.attribute.iter().any(|a| a.name() == "transA" && a.i() != 0);
            shape(0)
                .and_then(|a| if trans_a { a.first().copied() } else { a.last().copied() })
                .map(|k| out_elems() * k as u64)
                .unwrap_or(0)
        }
        // Weight [Cout, Cin/group, k...]: each output reads Cin/group * prod(k) inputs.
        "Conv" => shape(1).map(|w| out_elems() * w[1..].iter().product::<usize>() as u64).unwrap_or(0),
        // Weight [Cin, Cout/group, k...]: each input feeds Cout/group * prod(k) outputs.
        "ConvTranspose" => match (shape(0), shape(1)) {
            (Some(x), Some(w)) => x.iter().product::<usize>() as u64 * w[1..].iter().product::<usize>() as u64,
            _ => 0,
        },
        _ => 0,
    }
}

pub fn macs_of(graph: &GraphProto, nodes: &[usize], shapes: &HashMap<String, Vec<usize>>) -> u64 {
    nodes.iter().map(|&i| node_macs(graph, i, shapes)).sum()
}

/// MACs of the whole live graph.
pub fn total_macs(graph: &GraphProto, index: &GraphIndex, shapes: &HashMap<String, Vec<usize>>) -> u64 {
    macs_of(graph, &index.order, shapes)
}

/// The values of a weight tensor as f32, if it is one.
pub fn weight_values(graph: &GraphProto, name: &str) -> Option<Vec<f32>> {
    weights(graph).get(name).and_then(|t| f32_values(t))
}
