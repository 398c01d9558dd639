//! `rba inspect`: what a model is made of and which blocks rba sees in it.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::blocks::BlockMap;
use crate::cost;
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

/// Human-readable counts: 1234567 -> "1.23M".
pub fn si(n: u64) -> String {
    match n {
        0..=9_999 => n.to_string(),
        10_000..=999_999 => format!("{:.1}K", n as f64 / 1e3),
        1_000_000..=999_999_999 => format!("{:.2}M", n as f64 / 1e6),
        _ => format!("{:.2}G", n as f64 / 1e9),
    }
}

fn shape_text(s: &[usize]) -> String {
    format!("[{}]", s.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(","))
}

pub fn render_text(i: &Inspection) -> String {
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
