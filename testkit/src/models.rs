//! Tiny ONNX models built in code on `rba_onnx::build` and `rba_onnx::proto`,
//! so that expected outputs and block structure are known by hand: a linear
//! classifier and an MLP for the device, a model with an operator tract
//! does not know, and token and convolutional models with residual blocks
//! for the host's analysis and surgery.

use rba_host::model::run::{nd, Runner};
use rba_onnx::build::{attr_ints, f32_tensor, f32_value_info, node, Dim};
use rba_onnx::proto::{type_proto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, ValueInfoProto};
use rba_onnx::OnnxModel;
use rba_protocol::{EvalBundle, TensorF32};

/// The opset of every model built here.
pub const OPSET: i64 = 17;

/// Deterministic pseudo-random values in [-scale, scale) (weights and inputs).
pub fn values(seed: u64, n: usize, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

/// `graph` as an ONNX file (IR version 8, opset [`OPSET`]).
pub fn encode(graph: GraphProto) -> Vec<u8> {
    let proto = ModelProto {
        ir_version: Some(8),
        producer_name: Some("rba-testkit".into()),
        opset_import: vec![OperatorSetIdProto { domain: Some(String::new()), version: Some(OPSET) }],
        graph: Some(graph),
        ..Default::default()
    };
    prost::Message::encode_to_vec(&proto)
}

/// `graph` as a model (see [`encode`]).
pub fn model(graph: GraphProto) -> OnnxModel {
    OnnxModel::from_bytes(&encode(graph), "<synthetic>").expect("valid synthetic model")
}

/// A tensor value info of ONNX element type `elem_type` (1: float,
/// 7: int64, ...).
pub fn value_info_typed(name: &str, dims: &[Dim], elem_type: i32) -> ValueInfoProto {
    let mut vi = f32_value_info(name, dims);
    if let Some(type_proto::Value::TensorType(t)) = vi.r#type.as_mut().and_then(|t| t.value.as_mut()) {
        t.elem_type = Some(elem_type);
    }
    vi
}

/// A node named `<op>_<first output>`.
pub fn op(op: &str, inputs: &[&str], outputs: &[&str]) -> NodeProto {
    node(op, &format!("{op}_{}", outputs.first().unwrap_or(&"")), inputs, outputs)
}

fn batch_size() -> Dim {
    Dim::Named("batch_size".into())
}

/// `y = x W + b` with `x: [batch_size, k]` (symbolic batch, as exporters
/// write it, with a stale symbolic `value_info` hint on the intermediate).
pub fn linear_model(w: &[f32], b: &[f32], k: usize, n: usize) -> Vec<u8> {
    assert_eq!(w.len(), k * n);
    assert_eq!(b.len(), n);
    encode(GraphProto {
        name: Some("linear".into()),
        node: vec![op("MatMul", &["x", "W"], &["xw"]), op("Add", &["xw", "b"], &["y"])],
        initializer: vec![f32_tensor("W", &[k, n], w), f32_tensor("b", &[n], b)],
        input: vec![f32_value_info("x", &[batch_size(), Dim::Fixed(k)])],
        output: vec![f32_value_info("y", &[batch_size(), Dim::Fixed(n)])],
        value_info: vec![f32_value_info("xw", &[batch_size(), Dim::Fixed(n)])],
        ..Default::default()
    })
}

/// The linear model used by most device tests: 4 inputs, 3 classes.
/// W = [[1,0,0],[0,1,0],[0,0,1],[1,1,1]], b = [0.5, 0, -0.5]:
/// y = (x0 + x3 + 0.5, x1 + x3, x2 + x3 - 0.5).
pub fn small_linear() -> Vec<u8> {
    linear_model(&[1., 0., 0., 0., 1., 0., 0., 0., 1., 1., 1., 1.], &[0.5, 0., -0.5], 4, 3)
}

/// What [`small_linear`] computes for one sample.
pub fn small_linear_eval(x: &[f32]) -> [f32; 3] {
    [x[0] + x[3] + 0.5, x[1] + x[3], x[2] + x[3] - 0.5]
}

/// An eval bundle for [`small_linear`] with hand-computed labels and
/// expected outputs.
pub fn linear_bundle(samples: &[[f32; 4]], labels: Option<Vec<u32>>, expected: Option<Vec<[f32; 3]>>) -> Vec<u8> {
    let n = samples.len() as u64;
    let xs: Vec<f32> = samples.iter().flatten().copied().collect();
    let expected = expected.map(|e| {
        let v: Vec<f32> = e.iter().flatten().copied().collect();
        vec![TensorF32::from_f32(Some("y".into()), vec![n, 3], &v)]
    });
    EvalBundle { inputs: vec![TensorF32::from_f32(Some("x".into()), vec![n, 4], &xs)], labels, expected }
        .encode()
        .unwrap()
}

/// A chain of `layers` square MatMul+Relu layers of `width` (fixed batch 1):
/// a model whose cost grows with its size, for A/B comparisons.
pub fn mlp_model(width: usize, layers: usize) -> Vec<u8> {
    let mut nodes = Vec::new();
    let mut inits = Vec::new();
    let mut prev = "x".to_string();
    for l in 0..layers {
        let wname = format!("W{l}");
        let mm = format!("mm{l}");
        let out = if l + 1 == layers { "y".to_string() } else { format!("h{l}") };
        let values: Vec<f32> = (0..width * width).map(|i| ((i * 7 + l) % 13) as f32 / 13.0 - 0.4).collect();
        inits.push(f32_tensor(&wname, &[width, width], &values));
        nodes.push(op("MatMul", &[&prev, &wname], &[&mm]));
        nodes.push(op("Relu", &[&mm], &[&out]));
        prev = out;
    }
    encode(GraphProto {
        name: Some("mlp".into()),
        node: nodes,
        initializer: inits,
        input: vec![f32_value_info("x", &[Dim::Fixed(1), Dim::Fixed(width)])],
        output: vec![f32_value_info("y", &[Dim::Fixed(1), Dim::Fixed(width)])],
        ..Default::default()
    })
}

/// A well-formed ONNX file using an operator tract does not know.
pub fn unknown_op_model() -> Vec<u8> {
    encode(GraphProto {
        name: Some("weird".into()),
        node: vec![op("TotallyMadeUpOp", &["x"], &["y"])],
        input: vec![f32_value_info("x", &[Dim::Fixed(1), Dim::Fixed(4)])],
        output: vec![f32_value_info("y", &[Dim::Fixed(1), Dim::Fixed(4)])],
        ..Default::default()
    })
}

/// A token model `[batch, T, D]`: each block is `x + f(x)`, with
/// `f(x) = x A` when `hidden` is None (a linear block) or
/// `f(x) = relu(x A) B` otherwise; a ReLU head follows the last block.
/// `blocks[k]` seeds block k's weights, so leaving seeds out builds the same
/// model with those blocks deleted.
pub fn token_model(blocks: &[u64], t: usize, d: usize, hidden: Option<usize>) -> OnnxModel {
    let mut g = GraphProto { name: Some("tokens".into()), ..Default::default() };
    g.input.push(f32_value_info("x", &[Dim::Named("batch".into()), Dim::Fixed(t), Dim::Fixed(d)]));
    let mut x = "x".to_string();
    for (k, &seed) in blocks.iter().enumerate() {
        let a = format!("b{k}.A");
        let out = format!("b{k}.out");
        match hidden {
            None => {
                g.initializer.push(f32_tensor(&a, &[d, d], &values(seed, d * d, 0.3)));
                g.node.push(node("MatMul", &format!("b{k}/mm"), &[&x, &a], &[&format!("b{k}.h")]));
            }
            Some(h) => {
                let b = format!("b{k}.B");
                g.initializer.push(f32_tensor(&a, &[d, h], &values(seed, d * h, 0.3)));
                g.initializer.push(f32_tensor(&b, &[h, d], &values(seed + 1000, h * d, 0.3)));
                g.node.push(node("MatMul", &format!("b{k}/mm1"), &[&x, &a], &[&format!("b{k}.u")]));
                g.node.push(node("Relu", &format!("b{k}/relu"), &[&format!("b{k}.u")], &[&format!("b{k}.r")]));
                g.node.push(node("MatMul", &format!("b{k}/mm2"), &[&format!("b{k}.r"), &b], &[&format!("b{k}.h")]));
            }
        }
        g.node.push(node("Add", &format!("b{k}/add"), &[&x, &format!("b{k}.h")], &[&out]));
        x = out;
    }
    g.node.push(node("Relu", "head", &[&x], &["y"]));
    g.output.push(f32_value_info("y", &[Dim::Named("batch".into()), Dim::Fixed(t), Dim::Fixed(d)]));
    model(g)
}

/// A CNN `[batch, C, H, W]` whose blocks are `x + conv1x1(x)` (with bias),
/// after a 3x3 stem from one channel; the exact map of block k is affine.
pub fn conv_model(blocks: &[u64], c: usize, hw: usize) -> OnnxModel {
    let mut g = GraphProto { name: Some("convs".into()), ..Default::default() };
    g.input.push(f32_value_info("image", &[Dim::Named("N".into()), Dim::Fixed(1), Dim::Fixed(hw), Dim::Fixed(hw)]));
    g.initializer.push(f32_tensor("stem.W", &[c, 1, 3, 3], &values(7, c * 9, 0.5)));
    let mut stem = node("Conv", "stem", &["image", "stem.W"], &["stem.out"]);
    stem.attribute.push(attr_ints("pads", &[1, 1, 1, 1]));
    g.node.push(stem);
    let mut x = "stem.out".to_string();
    for (k, &seed) in blocks.iter().enumerate() {
        let (w, b) = (format!("c{k}.W"), format!("c{k}.B"));
        g.initializer.push(f32_tensor(&w, &[c, c, 1, 1], &values(seed, c * c, 0.3)));
        g.initializer.push(f32_tensor(&b, &[c], &values(seed + 1, c, 0.3)));
        g.node.push(node("Conv", &format!("c{k}/conv"), &[&x, &w, &b], &[&format!("c{k}.h")]));
        g.node.push(node("Add", &format!("c{k}/add"), &[&x, &format!("c{k}.h")], &[&format!("c{k}.out")]));
        x = format!("c{k}.out");
    }
    g.node.push(node("GlobalAveragePool", "pool", &[&x], &["logits"]));
    g.output.push(f32_value_info("logits", &[Dim::Named("N".into()), Dim::Fixed(c), Dim::Fixed(1), Dim::Fixed(1)]));
    model(g)
}

/// Runs a model in tract (the host's runner) on `input`; returns its first output.
pub fn run(model: &OnnxModel, input: &nd::ArrayD<f32>) -> nd::ArrayD<f32> {
    let runner = Runner::new(model, input.shape()[0], &[]).expect("model loads in tract");
    runner.run(input.clone()).expect("model runs").remove(0)
}

/// Models of a few hundred bytes that ask the runtime for far more memory
/// than a board has (or make it panic): what `rba-device` must refuse or
/// survive. Each is at most [`bombs::MAX_BYTES`] bytes.
pub mod bombs {
    use rba_onnx::build::{attr_int, f32_tensor, f32_value_info, i64_tensor, node, Dim};
    use rba_onnx::proto::GraphProto;

    use super::{encode, value_info_typed};

    /// Largest bomb, in bytes.
    pub const MAX_BYTES: usize = 300;

    /// One float input `x` of `dims` (unused unless the nodes read it).
    fn graph(nodes: Vec<rba_onnx::proto::NodeProto>, inits: Vec<rba_onnx::proto::TensorProto>, x: &[usize]) -> Vec<u8> {
        encode(GraphProto {
            node: nodes,
            initializer: inits,
            input: vec![f32_value_info("x", &x.iter().map(|&d| Dim::Fixed(d)).collect::<Vec<_>>())],
            output: vec![f32_value_info("y", &[])],
            ..Default::default()
        })
    }

    /// `y = ConstantOfShape(shape)`, node `n1`, the shape an initializer:
    /// `[2^40]` asks for 4 TiB of floats at load time.
    pub fn constant_of_shape(shape: &[i64]) -> Vec<u8> {
        graph(
            vec![node("ConstantOfShape", "n1", &["shape"], &["y"])],
            vec![i64_tensor("shape", &[shape.len()], shape)],
            &[1],
        )
    }

    /// `y = Expand(1.0, shape)`, node `e1`: `[2^16, 2^16]` is 16 GiB of floats.
    pub fn expand(shape: &[i64]) -> Vec<u8> {
        graph(
            vec![node("Expand", "e1", &["one", "shape"], &["y"])],
            vec![f32_tensor("one", &[], &[1.0]), i64_tensor("shape", &[shape.len()], shape)],
            &[1],
        )
    }

    /// `y = Range(0, limit, delta)` of int64 scalars, node `r1`.
    pub fn range(limit: i64, delta: i64) -> Vec<u8> {
        graph(
            vec![node("Range", "r1", &["s", "l", "d"], &["y"])],
            vec![i64_tensor("s", &[], &[0]), i64_tensor("l", &[], &[limit]), i64_tensor("d", &[], &[delta])],
            &[1],
        )
    }

    /// `y = Relu(x)` with `x` of `dims`: `[2^12, 2^12, 2^12]` is 2^36
    /// floats; `[2^32, 2^32, 2^32]` overflows u64.
    pub fn input(dims: &[usize]) -> Vec<u8> {
        graph(vec![node("Relu", "relu", &["x"], &["y"])], vec![], dims)
    }

    /// A shape only known at run time: `y = Range(0, x + limit, 1)` with `x`
    /// a float scalar in [0, 1): the static check cannot size it, tract
    /// allocates `limit` floats when it runs.
    pub fn runtime_range(limit: f32) -> Vec<u8> {
        graph(
            vec![node("Add", "add", &["x", "lim"], &["l"]), node("Range", "r1", &["s", "l", "d"], &["y"])],
            vec![f32_tensor("lim", &[], &[limit]), f32_tensor("s", &[], &[0.0]), f32_tensor("d", &[], &[1.0])],
            &[],
        )
    }

    /// An integer remainder by zero at run time, `y = Mod(1, Cast<int64>(x))`
    /// with `x` in [0, 1) (synthetic inputs): tract 0.23 checks `Div` by
    /// zero but panics inside `Mod`.
    pub fn runtime_remainder_by_zero() -> Vec<u8> {
        let mut cast = node("Cast", "cast", &["x"], &["xi"]);
        cast.attribute.push(attr_int("to", 7));
        let mut g = GraphProto {
            node: vec![cast, node("Mod", "mod", &["one", "xi"], &["y"])],
            initializer: vec![i64_tensor("one", &[1], &[1])],
            input: vec![f32_value_info("x", &[Dim::Fixed(1)])],
            output: vec![value_info_typed("y", &[Dim::Fixed(1)], 7)],
            ..Default::default()
        };
        g.name = None;
        encode(g)
    }
}
