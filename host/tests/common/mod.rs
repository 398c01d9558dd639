//! Builders for small synthetic ONNX models with known block structure.
#![allow(dead_code)]

use rba_host::model::run::{nd, Runner};
use rba_host::onnx::build::{attr_ints, f32_tensor, f32_value_info, node, Dim};
use rba_host::onnx::proto::{GraphProto, ModelProto, OperatorSetIdProto};
use rba_host::onnx::OnnxModel;

/// Deterministic pseudo-random values in [-scale, scale).
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

pub fn model(graph: GraphProto) -> OnnxModel {
    let proto = ModelProto {
        ir_version: Some(8),
        producer_name: Some("rba-tests".into()),
        opset_import: vec![OperatorSetIdProto { domain: Some(String::new()), version: Some(17) }],
        graph: Some(graph),
        ..Default::default()
    };
    OnnxModel::from_bytes(&prost::Message::encode_to_vec(&proto), "<synthetic>").expect("valid synthetic model")
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

/// Runs a model on `input` and returns its first output.
pub fn run(model: &OnnxModel, input: &nd::ArrayD<f32>) -> nd::ArrayD<f32> {
    let runner = Runner::new(model, input.shape()[0], &[]).expect("model loads in tract");
    runner.run(input.clone()).expect("model runs").remove(0)
}

pub fn max_abs_diff(a: &nd::ArrayD<f32>, b: &nd::ArrayD<f32>) -> f32 {
    assert_eq!(a.shape(), b.shape());
    a.iter().zip(b.iter()).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

pub fn random_input(shape: &[usize], seed: u64) -> nd::ArrayD<f32> {
    let n = shape.iter().product();
    nd::ArrayD::from_shape_vec(shape.to_vec(), values(seed, n, 1.0)).expect("shape")
}

/// `D x D` matrix product of row-major matrices.
pub fn matmul(a: &[f32], b: &[f32], d: usize) -> Vec<f32> {
    let mut c = vec![0f32; d * d];
    for i in 0..d {
        for k in 0..d {
            let aik = a[i * d + k];
            for j in 0..d {
                c[i * d + j] += aik * b[k * d + j];
            }
        }
    }
    c
}

pub fn identity(d: usize) -> Vec<f32> {
    (0..d * d).map(|i| if i / d == i % d { 1.0 } else { 0.0 }).collect()
}

/// Runs `model` on `input` with onnxruntime; `None` when onnxruntime is not installed.
pub fn onnxruntime(model: &std::path::Path, input: &nd::ArrayD<f32>) -> Option<nd::ArrayD<f32>> {
    let probe = std::process::Command::new("python3").args(["-c", "import onnxruntime"]).output();
    if !probe.is_ok_and(|o| o.status.success()) {
        eprintln!("skipped: python3 with onnxruntime is not installed (pip install onnxruntime)");
        return None;
    }
    let dir = model.parent().expect("model dir");
    let (x, y) = (dir.join("input.npy"), dir.join("output.npy"));
    std::fs::write(&x, rba_host::data::npy::to_bytes_f32(input)).expect("write input");
    let script = "import sys, numpy as np, onnxruntime as ort\n\
                  s = ort.InferenceSession(sys.argv[1], providers=['CPUExecutionProvider'])\n\
                  x = np.load(sys.argv[2])\n\
                  np.save(sys.argv[3], s.run(None, {s.get_inputs()[0].name: x})[0].astype(np.float32))\n";
    let out = std::process::Command::new("python3")
        .args(["-c", script])
        .arg(model)
        .arg(&x)
        .arg(&y)
        .output()
        .expect("python3");
    assert!(out.status.success(), "onnxruntime failed: {}", String::from_utf8_lossy(&out.stderr));
    Some(rba_host::data::npy::read_f32(&y).expect("read output"))
}
