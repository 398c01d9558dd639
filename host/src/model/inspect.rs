//! `rba inspect`: what a model is made of and which blocks rba sees in it.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::model::blocks::BlockMap;
use crate::model::cost;
use crate::model::Model;
use crate::onnx::build::value_info_dims;
use crate::onnx::proto::ValueInfoProto;

/// Bumped when the JSON layout changes incompatibly.
pub const INSPECT_SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Serialize)]
pub struct TensorSummary {
    pub name: String,
    /// Declared dimensions: numbers, symbolic names, or "?".
    pub shape: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct Inspection {
    pub schema_version: u32,
    pub file: String,
    pub ir_version: i64,
    pub opset: i64,
    pub producer: String,
    pub inputs: Vec<TensorSummary>,
    pub outputs: Vec<TensorSummary>,
    pub nodes: usize,
    pub op_histogram: BTreeMap<String, usize>,
    pub params: u64,
    /// Multiply-accumulates per image (batch 1).
    pub macs: u64,
    pub blocks: BlockMap,
}

fn summary(vi: &ValueInfoProto) -> TensorSummary {
    let shape = value_info_dims(vi)
        .unwrap_or_default()
        .into_iter()
        .map(|d| d.map_or("?".to_string(), |d| d.to_string()))
        .collect();
    TensorSummary { name: vi.name().to_string(), shape }
}

pub fn inspect(model: &Model) -> Inspection {
    let onnx = &model.onnx;
    let graph = onnx.graph();
    let mut op_histogram = BTreeMap::new();
    for n in &graph.node {
        *op_histogram.entry(n.op_type().to_string()).or_insert(0) += 1;
    }
    Inspection {
        schema_version: INSPECT_SCHEMA_VERSION,
        file: onnx.path.display().to_string(),
        ir_version: onnx.proto.ir_version(),
        opset: onnx.opset().unwrap_or(0),
        producer: format!("{} {}", onnx.proto.producer_name(), onnx.proto.producer_version()).trim().to_string(),
        inputs: graph.input.iter().filter(|i| model.index.inputs.iter().any(|n| n == i.name())).map(summary).collect(),
        outputs: graph.output.iter().map(summary).collect(),
        nodes: graph.node.len(),
        op_histogram,
        params: cost::total_params(graph),
        macs: cost::total_macs(graph, &model.index, &model.shapes),
        blocks: model.blocks.clone(),
    }
}
