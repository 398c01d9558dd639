//! The demo models and eval sets, with the host's own answers to compare a
//! device's against.

use std::sync::OnceLock;

use rba_host::compact::surgery::{replace_spans, Span, Translator};
pub use rba_host::demo::DemoModel;
use rba_host::demo::{Digits, Split};
use rba_host::model::run::{argmax_rows, predict};
use rba_host::model::Model;
use rba_host::onnx::OnnxModel;
use rba_protocol::{EvalBundle, TensorF32};

/// The demo ViT and a compacted variant: two transformer layers (11 and 12
/// of 12) replaced by the identity with the host's own surgery.
pub struct Demo {
    pub vit: OnnxModel,
    pub slim: OnnxModel,
    pub vit_bytes: Vec<u8>,
    pub slim_bytes: Vec<u8>,
}

/// The demo models, built once per test process.
pub fn demo() -> &'static Demo {
    static DEMO: OnceLock<Demo> = OnceLock::new();
    DEMO.get_or_init(|| {
        let vit = DemoModel::Vit.load().unwrap();
        let m = Model::new(vit.clone(), None).unwrap();
        assert_eq!(m.blocks.blocks.len(), 12);
        let slim = replace_spans(&m.onnx, &m.blocks, &[(Span::new(10, 12), Translator::Identity)]).unwrap();
        let slim_bytes = slim.to_bytes();
        Demo { vit_bytes: DemoModel::Vit.bytes().to_vec(), slim_bytes, vit, slim }
    })
}

/// The first `n` test digits as an eval bundle (labels, and the ViT's host
/// outputs as the expected outputs), with what the host computes for them.
pub struct EvalSet {
    pub bundle: Vec<u8>,
    pub samples: usize,
    /// Correct top-1 answers of the ViT and of the compacted model, on the host.
    pub vit_correct: usize,
    pub slim_correct: usize,
    /// Samples where the compacted model's top-1 equals the ViT's.
    pub slim_agree: usize,
    /// Largest |slim - vit| over all logits.
    pub slim_max_diff: f32,
}

pub fn eval_set(n: usize) -> EvalSet {
    let demo = demo();
    let digits = Digits::embedded().unwrap();
    let idx = &digits.indices(Split::Test)[..n];
    let x = digits.batch(idx);
    let labels: Vec<usize> = idx.iter().map(|&i| digits.label(i)).collect();
    // Batch 1, as the device runs an evaluation.
    let vit = predict(&demo.vit, &x, 1).unwrap();
    let slim = predict(&demo.slim, &x, 1).unwrap();
    let (pv, ps) = (argmax_rows(&vit), argmax_rows(&slim));
    let correct = |p: &[usize]| p.iter().zip(&labels).filter(|(a, b)| a == b).count();
    let slim_max_diff = vit.iter().zip(slim.iter()).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    let input_name = demo.vit.graph().input[0].name().to_string();
    let n64 = n as u64;
    let bundle = EvalBundle {
        inputs: vec![TensorF32::from_f32(Some(input_name), vec![n64, 1, 8, 8], x.as_slice().unwrap())],
        labels: Some(labels.iter().map(|&l| l as u32).collect()),
        expected: Some(vec![TensorF32::from_f32(None, vec![n64, vit.ncols() as u64], vit.as_slice().unwrap())]),
    };
    EvalSet {
        bundle: bundle.encode().unwrap(),
        samples: n,
        vit_correct: correct(&pv),
        slim_correct: correct(&ps),
        slim_agree: pv.iter().zip(&ps).filter(|(a, b)| a == b).count(),
        slim_max_diff,
    }
}

/// The first `n` test digits as an eval bundle for `model` (labels, and
/// `model`'s host outputs from tract as the expected outputs), with how
/// many it gets right on the host.
pub struct ModelEvalSet {
    pub bundle: Vec<u8>,
    pub samples: usize,
    pub correct: usize,
}

pub fn model_eval_set(model: &OnnxModel, n: usize) -> ModelEvalSet {
    let digits = Digits::embedded().unwrap();
    let idx = &digits.indices(Split::Test)[..n];
    let x = digits.batch(idx);
    let labels: Vec<usize> = idx.iter().map(|&i| digits.label(i)).collect();
    let out = predict(model, &x, 1).unwrap();
    let correct = argmax_rows(&out).iter().zip(&labels).filter(|(a, b)| a == b).count();
    let input_name = model.graph().input[0].name().to_string();
    let n64 = n as u64;
    let shape: Vec<u64> = x.shape().iter().map(|&d| d as u64).collect();
    let bundle = EvalBundle {
        inputs: vec![TensorF32::from_f32(Some(input_name), shape, x.as_slice().unwrap())],
        labels: Some(labels.iter().map(|&l| l as u32).collect()),
        expected: Some(vec![TensorF32::from_f32(None, vec![n64, out.ncols() as u64], out.as_slice().unwrap())]),
    };
    ModelEvalSet { bundle: bundle.encode().unwrap(), samples: n, correct }
}
