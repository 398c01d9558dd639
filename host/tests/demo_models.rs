//! The embedded demo models and data: block detection, accuracy, and surgery
//! on a real trained network.

use std::collections::HashSet;

use rba_host::compact::surgery::{replace_spans, Span, Translator};
use rba_host::demo::{DemoModel, Digits, Split};
use rba_host::model::cost;
use rba_host::model::run::{argmax_rows, predict};
use rba_host::model::Model;
use rba_testkit::{models, tensors};

const VIT_WIDTH: usize = 96;
const VIT_TOKENS: usize = 17;

fn accuracy(model: &rba_host::onnx::OnnxModel, digits: &Digits, split: Split) -> f64 {
    let idx = digits.indices(split);
    let predicted = argmax_rows(&predict(model, &digits.batch(idx), 50).expect("inference"));
    idx.iter().zip(&predicted).filter(|(&i, &p)| digits.label(i) == p).count() as f64 / idx.len() as f64
}

#[test]
fn digits_split_is_disjoint_and_large_enough() {
    let d = Digits::embedded().expect("embedded digits");
    let (train, val, test) = (d.indices(Split::Train), d.indices(Split::Val), d.indices(Split::Test));
    assert!(train.len() >= 1000 && val.len() >= 250 && test.len() >= 400);
    let all: HashSet<usize> = train.iter().chain(val).chain(test).copied().collect();
    assert_eq!(all.len(), train.len() + val.len() + test.len(), "splits overlap");
    assert_eq!(all.len(), 1797, "every digit is in exactly one split");
    let labels: HashSet<usize> = test.iter().map(|&i| d.label(i)).collect();
    assert_eq!(labels.len(), 10, "stratified: all classes in the test split");
    let x = d.batch(&test[..3]);
    assert_eq!(x.shape(), [3, 1, 8, 8]);
    assert!(x.iter().all(|&v| (0.0..=1.0).contains(&v)) && x.iter().any(|&v| v == 1.0));
}

#[test]
fn vit_has_twelve_replaceable_transformer_layers() {
    let m = Model::new(DemoModel::Vit.load().expect("load"), None).expect("blocks");
    assert_eq!(m.blocks.blocks.len(), 12);
    let per_layer = (12 * VIT_WIDTH * VIT_WIDTH + 13 * VIT_WIDTH) as u64;
    for b in &m.blocks.blocks {
        assert!(b.replaceable(), "block {} {:?}", b.index, b.not_replaceable);
        assert_eq!(b.input_shape, [1, VIT_TOKENS, VIT_WIDTH]);
        assert_eq!(b.params, per_layer, "pre-LN ViT layer: 12 D^2 + 13 D parameters");
        // 12 T D^2 for the projections and MLP, 2 T^2 D for attention.
        let (t, d) = (VIT_TOKENS as u64, VIT_WIDTH as u64);
        assert_eq!(b.macs, 12 * t * d * d + 2 * t * t * d);
    }
}

#[test]
fn resnet_has_nine_blocks_two_of_them_downsampling() {
    let m = Model::new(DemoModel::Resnet.load().expect("load"), None).expect("blocks");
    assert_eq!(m.blocks.blocks.len(), 9);
    let fixed: Vec<usize> = m.blocks.blocks.iter().filter(|b| !b.replaceable()).map(|b| b.index).collect();
    assert_eq!(fixed, [4, 7], "the stride-2 blocks change shape");
    assert!(m.blocks.blocks[3].not_replaceable.as_deref().is_some_and(|w| w.contains("changes shape")));
    assert_eq!(m.blocks.blocks[0].input_shape, [1, 16, 8, 8]);
    assert_eq!(m.blocks.blocks[8].input_shape, [1, 64, 2, 2]);
}

#[test]
fn demo_models_reach_their_accuracy_in_tract() {
    let d = Digits::embedded().expect("digits");
    let vit = accuracy(&DemoModel::Vit.load().expect("vit"), &d, Split::Test);
    let resnet = accuracy(&DemoModel::Resnet.load().expect("resnet"), &d, Split::Test);
    assert!(vit >= 0.95, "ViT test accuracy {vit}");
    assert!(resnet >= 0.97, "ResNet test accuracy {resnet}");
}

#[test]
fn removing_a_vit_layer_drops_exactly_its_parameters() {
    let m = Model::new(DemoModel::Vit.load().expect("load"), None).expect("blocks");
    let before = cost::total_params(m.onnx.graph());
    let removed = m.blocks.blocks[10].params + m.blocks.blocks[11].params;
    let identity = replace_spans(&m.onnx, &m.blocks, &[(Span::new(10, 12), Translator::Identity)]).expect("cut");
    assert_eq!(cost::total_params(identity.graph()), before - removed);
    let linear = Translator::Linear { weight: tensors::identity(VIT_WIDTH), bias: Some(vec![0.0; VIT_WIDTH]) };
    let mapped = replace_spans(&m.onnx, &m.blocks, &[(Span::new(10, 12), linear.clone())]).expect("cut");
    assert_eq!(cost::total_params(mapped.graph()), before - removed + linear.params());
    // An identity matrix is the identity: both cut models agree.
    let d = Digits::embedded().expect("digits");
    let x = d.batch(&d.indices(Split::Val)[..16]);
    assert!(tensors::max_abs_diff(&models::run(&identity, &x), &models::run(&mapped, &x)) < 1e-5);
    // Still a classifier: the last layers of a 12-layer ViT are not everything.
    let cut_accuracy = accuracy(&identity, &d, Split::Val);
    assert!(cut_accuracy > 0.5, "validation accuracy after dropping two layers: {cut_accuracy}");
}

fn fixture(name: &str) -> Model {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures").join(name);
    Model::load(path, None).expect("fixture loads")
}

#[test]
fn hf_style_export_with_decomposed_layernorm_erf_gelu_and_layerscale() {
    let m = fixture("hf-style-vit.onnx");
    let ops: HashSet<&str> = m.onnx.graph().node.iter().map(|n| n.op_type()).collect();
    assert!(ops.contains("Erf") && ops.contains("Pow") && ops.contains("Sqrt") && !ops.contains("LayerNormalization"));
    assert_eq!(m.blocks.blocks.len(), 4);
    assert!(m.blocks.blocks.iter().all(|b| b.replaceable() && b.input_shape == [1, 17, 32]));
    // Layers are alike, so their parameter counts are too (aliased LayerNorm weights included).
    assert!(m.blocks.blocks.windows(2).all(|w| w[0].params == w[1].params && w[0].macs == w[1].macs));
    let names: Vec<&str> = m.blocks.boundaries.iter().map(String::as_str).collect();
    assert!(names[1..].iter().enumerate().all(|(i, n)| n.starts_with(&format!("/layer.{i}/"))), "{names:?}");
}

#[test]
fn nhwc_cnn_blocks_sit_after_the_layout_transpose() {
    let m = fixture("nhwc-resnet.onnx");
    assert_eq!(rba_host::model::run::input_shape(&m.onnx, 1).expect("shape"), [1, 8, 8, 1]);
    let replaceable: Vec<bool> = m.blocks.blocks.iter().map(|b| b.replaceable()).collect();
    assert_eq!(replaceable, [true, true, false, true]);
    assert_eq!(m.blocks.blocks[0].layout, Some(rba_host::model::blocks::FeatureLayout::ChannelsFirst));
    assert_eq!(m.blocks.blocks[0].input_shape, [1, 8, 8, 8]);
    // Identity on a channels-first block still runs end to end from NHWC input.
    let cut = replace_spans(&m.onnx, &m.blocks, &[(Span::new(0, 2), Translator::Identity)]).expect("cut");
    let y = models::run(&cut, &tensors::random_input(&[2, 8, 8, 1], 3));
    assert_eq!(y.shape(), [2, 10]);
}
