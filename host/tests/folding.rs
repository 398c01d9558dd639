//! Folded translators: the map multiplied into the last linear layer of the
//! block before a span must equal the same map applied as a node, and its
//! fit from streamed statistics must equal least squares on the raw tensors.
#![allow(clippy::unwrap_used)] // unwrap_err() states what a test expects

use rba_host::calibrate::{capture, CaptureOptions};
use rba_host::compact::surgery::{replace_spans, Span, SurgeryError, Translator};
use rba_host::compact::{fit_span, TranslatorKind};
use rba_host::demo::DemoModel;
use rba_host::fit::fold::{fold_site, FoldError};
use rba_host::model::cost;
use rba_host::model::run::{nd, Runner};
use rba_host::model::Model;
use rba_host::onnx::build::{f32_tensor, node};
use rba_host::progress::Silent;
use rba_testkit::models::{run, token_model, values};
use rba_testkit::tensors::{identity, max_abs_diff, random_input};

fn fixture(name: &str) -> Model {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures").join(name);
    Model::load(path, None).expect("fixture loads")
}

/// The unfolded equivalent: a MatMul by `t` on block `s`'s branch, then the
/// span's blocks dropped.
fn unfolded(model: &Model, span: Span, t: &[f32], d: usize) -> rba_host::onnx::OnnxModel {
    let site = fold_site(model.onnx.graph(), &model.blocks, span.start).expect("foldable");
    let mut m = model.onnx.clone();
    let g = m.graph_mut();
    g.initializer.push(f32_tensor("test/T", &[d, d], t));
    let mapped = "test/branch_T".to_string();
    for n in g.node.iter_mut() {
        for i in n.input.iter_mut().filter(|i| **i == site.branch) {
            *i = mapped.clone();
        }
    }
    let at = g.node.iter().position(|n| n.output.contains(&site.branch)).unwrap() + 1;
    g.node.insert(at, node("MatMul", "test/MatMul", &[&site.branch, "test/T"], &[&mapped]));
    replace_spans(&m, &model.blocks, &[(span, Translator::Identity)]).expect("identity span")
}

fn check_folded_equals_unfolded(model: &Model, span: Span, input_shape: &[usize]) {
    let d = model.blocks.blocks[span.start].features().unwrap();
    // A map near the identity, like a fitted one.
    let t: Vec<f32> = values(9, d * d, 0.05).iter().zip(identity(d)).map(|(v, i)| v + i).collect();
    let folded =
        replace_spans(&model.onnx, &model.blocks, &[(span, Translator::Folded { weight: t.clone() })]).expect("fold");
    let x = random_input(input_shape, 4);
    let (a, b) = (run(&folded, &x), run(&unfolded(model, span, &t, d), &x));
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
    assert!(max_abs_diff(&a, &b) <= 1e-5 * scale.max(1.0), "diff {} (scale {scale})", max_abs_diff(&a, &b));
    // No node and no parameter added: the removed blocks' parameters go.
    let removed: u64 = span.blocks().map(|b| model.blocks.blocks[b - 1].params).sum();
    let params = cost::total_params(folded.graph());
    assert!(params <= cost::total_params(model.onnx.graph()) - removed, "{params}");
    assert!(folded.graph().node.iter().all(|n| n.op_type() != "MatMul" || !n.name().starts_with("rba/")));
}

#[test]
fn folded_equals_unfolded_on_the_demo_vit() {
    let model = Model::new(DemoModel::Vit.load().unwrap(), None).unwrap();
    check_folded_equals_unfolded(&model, Span::new(4, 6), &[3, 1, 8, 8]);
    let site = fold_site(model.onnx.graph(), &model.blocks, 4).unwrap();
    assert!(site.bias.is_some() && site.scale.is_none(), "{site:?}");
}

#[test]
fn folded_equals_unfolded_through_layerscale() {
    let model = fixture("hf-style-vit.onnx");
    let site = fold_site(model.onnx.graph(), &model.blocks, 1).unwrap();
    assert!(site.scale.is_some() && site.bias.is_some(), "LayerScale and bias found: {site:?}");
    check_folded_equals_unfolded(&model, Span::new(1, 3), &[2, 1, 8, 8]);
    // The LayerScale Mul of block 1 is gone (folded into its layer).
    let folded =
        replace_spans(&model.onnx, &model.blocks, &[(Span::new(1, 2), Translator::Folded { weight: identity(32) })])
            .unwrap();
    let (gamma, _) = site.scale.unwrap();
    assert!(folded.graph().node.iter().all(|n| !n.output.contains(&gamma)));
}

#[test]
fn folded_fit_from_statistics_equals_least_squares_on_the_tensors() {
    const T: usize = 5;
    const D: usize = 6;
    let model = Model::new(token_model(&[31, 32, 33, 34], T, D, Some(12)), None).unwrap();
    let inputs: Vec<nd::ArrayD<f32>> = (0..4).map(|k| random_input(&[10, T, D], 100 + k)).collect();
    let options = CaptureOptions { batch: 10, max_span: 2, threads: 1, fold: true, ..Default::default() };
    let stats = capture(&model, inputs.iter().cloned().map(Ok::<_, String>), Some(40), &options, &Silent).unwrap();
    let span = Span::new(1, 3);
    let (translator, fit) = fit_span(&stats, span, TranslatorKind::Folded).unwrap();
    let Translator::Folded { weight } = translator else { panic!("folded translator expected") };
    // Least squares directly: A = m_1 (block 1's branch), B = h_3 - h_1 + m_1.
    let site = fold_site(model.onnx.graph(), &model.blocks, 1).unwrap();
    let names = [site.branch.clone(), model.blocks.boundaries[1].clone(), model.blocks.boundaries[3].clone()];
    let runner = Runner::new(&model.onnx, 10, &names).unwrap();
    let (mut ata, mut atb) = (vec![0f64; D * D], vec![0f64; D * D]);
    for x in &inputs {
        let out = runner.run(x.clone()).unwrap();
        let k = out.len() - 3;
        let (m, hs, he) = (&out[k], &out[k + 1], &out[k + 2]);
        let rows = |a: &nd::ArrayD<f32>| a.iter().map(|&v| v as f64).collect::<Vec<_>>();
        let (m, hs, he) = (rows(m), rows(hs), rows(he));
        for r in 0..m.len() / D {
            let a = &m[r * D..(r + 1) * D];
            let b: Vec<f64> = (0..D).map(|j| he[r * D + j] - hs[r * D + j] + a[j]).collect();
            for i in 0..D {
                for j in 0..D {
                    ata[i * D + j] += a[i] * a[j];
                    atb[i * D + j] += a[i] * b[j];
                }
            }
        }
    }
    let direct = solve(&ata, &atb, D);
    let diff = weight.iter().zip(&direct).map(|(w, v)| (*w as f64 - v).abs()).fold(0f64, f64::max);
    assert!(diff < 1e-3, "folded fit differs from direct least squares by {diff}");
    assert!(fit.relative_residual > 0.0 && fit.relative_residual < 1.0, "{}", fit.relative_residual);
}

/// Solves `A X = B` (`D x D`, row-major) by Gauss-Jordan elimination.
fn solve(a: &[f64], b: &[f64], d: usize) -> Vec<f64> {
    let (mut a, mut b) = (a.to_vec(), b.to_vec());
    for c in 0..d {
        let p = (c..d).max_by(|&i, &j| a[i * d + c].abs().total_cmp(&a[j * d + c].abs())).unwrap();
        for k in 0..d {
            a.swap(c * d + k, p * d + k);
            b.swap(c * d + k, p * d + k);
        }
        let pivot = a[c * d + c];
        for k in 0..d {
            a[c * d + k] /= pivot;
            b[c * d + k] /= pivot;
        }
        for r in (0..d).filter(|&r| r != c) {
            let f = a[r * d + c];
            for k in 0..d {
                a[r * d + k] -= f * a[c * d + k];
                b[r * d + k] -= f * b[c * d + k];
            }
        }
    }
    b
}

#[test]
fn fold_errors_name_the_reason() {
    let vit = Model::new(DemoModel::Vit.load().unwrap(), None).unwrap();
    let t = Translator::Folded { weight: identity(96) };
    // No block before the first span.
    let err = replace_spans(&vit.onnx, &vit.blocks, &[(Span::new(0, 1), t.clone())]).unwrap_err();
    assert_eq!(err, SurgeryError::Fold { s: 0, e: 1, source: FoldError::NoBlockBefore(0) });
    // Block 3 is removed by the adjacent span, so nothing can fold into it.
    let spans = [(Span::new(2, 3), Translator::Identity), (Span::new(3, 5), t)];
    let err = replace_spans(&vit.onnx, &vit.blocks, &spans).unwrap_err();
    assert_eq!(err.to_string(), "span 3..5: cannot fold into block 3, which span 2..3 removes");
    // A ResNet block ends in a ReLU after its residual Add.
    let resnet = Model::new(DemoModel::Resnet.load().unwrap(), None).unwrap();
    let err = fold_site(resnet.onnx.graph(), &resnet.blocks, 1).unwrap_err();
    assert!(
        err.to_string().contains("folding needs the block to end in a residual Add of a linear layer, found Relu"),
        "{err}"
    );
}
