//! Models written by rba must run in onnxruntime too, not only in tract.
//! Uses onnxruntime's Python package (installed by .ci/run); skips with a
//! message where it is missing, or fails then under `RBA_REQUIRE_EXTERNAL=1`
//! (`rba_testkit::external`).

use rba_host::compact::surgery::{replace_spans, Span, Translator};
use rba_host::model::run::nd;
use rba_host::model::Model;
use rba_host::onnx::{DataPlacement, OnnxModel};
use rba_testkit::models::{conv_model, run, token_model, values};
use rba_testkit::onnxruntime;
use rba_testkit::tensors::{identity, max_abs_diff, random_input};

fn check_same_in_both(model: &OnnxModel, input: &nd::ArrayD<f32>, placement: DataPlacement) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("model.onnx");
    model.save(&path, &placement).expect("save");
    let tract = run(&OnnxModel::load(&path).expect("reload"), input);
    if let Some(ort) = onnxruntime::run(&path, input) {
        let diff = max_abs_diff(&ort, &tract);
        assert!(diff < 1e-4, "onnxruntime and tract differ by {diff}");
    }
}

#[test]
fn compacted_token_model_runs_in_onnxruntime() {
    let full = Model::new(token_model(&[1, 2, 3, 4], 5, 8, Some(16)), None).expect("blocks");
    let weight: Vec<f32> = values(3, 64, 0.2);
    let slim = replace_spans(
        &full.onnx,
        &full.blocks,
        &[
            (Span::new(0, 1), Translator::Identity),
            (Span::new(2, 4), Translator::Linear { weight, bias: Some(values(4, 8, 0.1)) }),
        ],
    )
    .expect("surgery");
    check_same_in_both(&slim, &random_input(&[3, 5, 8], 1), DataPlacement::Inline);
}

#[test]
fn compacted_conv_model_with_external_data_runs_in_onnxruntime() {
    let full = Model::new(conv_model(&[1, 2, 3], 6, 5), None).expect("blocks");
    let slim = replace_spans(
        &full.onnx,
        &full.blocks,
        &[(Span::new(1, 3), Translator::Linear { weight: values(5, 36, 0.2), bias: Some(values(6, 6, 0.1)) })],
    )
    .expect("surgery");
    check_same_in_both(&slim, &random_input(&[2, 1, 5, 5], 2), DataPlacement::External { min_bytes: 64 });
}

#[test]
fn compacted_demo_vit_runs_in_onnxruntime() {
    use rba_host::demo::{DemoModel, Digits, Split};
    let full = Model::new(DemoModel::Vit.load().expect("vit"), None).expect("blocks");
    let d = 96;
    let weight: Vec<f32> = identity(d).iter().zip(values(8, d * d, 0.01)).map(|(i, r)| i + r).collect();
    let slim = replace_spans(
        &full.onnx,
        &full.blocks,
        &[(Span::new(3, 4), Translator::Identity), (Span::new(9, 11), Translator::Linear { weight, bias: None })],
    )
    .expect("surgery");
    assert_eq!(slim.graph().node.iter().filter(|n| n.name().starts_with("rba/")).count(), 2);
    let digits = Digits::embedded().expect("digits");
    check_same_in_both(&slim, &digits.batch(&digits.indices(Split::Test)[..8]), DataPlacement::Inline);
}
