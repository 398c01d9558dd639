//! Span surgery on synthetic models whose exact block functions are known.
#![allow(clippy::unwrap_used)] // unwrap_err() states what a test expects

use rba_host::compact::surgery::{replace_spans, Span, SurgeryError, Translator};
use rba_host::model::cost;
use rba_host::model::Model;
use rba_testkit::models::{conv_model, run, token_model};
use rba_testkit::tensors::{identity, matmul, max_abs_diff, random_input};

const T: usize = 5;
const D: usize = 8;

fn load(m: rba_host::onnx::OnnxModel) -> Model {
    Model::new(m, None).expect("blocks detected")
}

#[test]
fn detects_one_block_per_residual_unit() {
    let m = load(token_model(&[1, 2, 3, 4, 5], T, D, Some(16)));
    let names: Vec<&str> = m.blocks.boundaries.iter().map(String::as_str).collect();
    assert_eq!(names, ["x", "b0.out", "b1.out", "b2.out", "b3.out", "b4.out"]);
    assert!(m.blocks.blocks.iter().all(|b| b.replaceable() && b.input_shape == [1, T, D]));
    assert_eq!(m.blocks.blocks[0].params, (2 * D * 16) as u64);
    assert_eq!(m.blocks.blocks[0].macs, (2 * T * D * 16) as u64);
}

#[test]
fn identity_span_equals_model_with_blocks_deleted() {
    let full = load(token_model(&[1, 2, 3, 4, 5], T, D, Some(16)));
    let slim = replace_spans(&full.onnx, &full.blocks, &[(Span::new(1, 3), Translator::Identity)]).expect("surgery");
    let expected = token_model(&[1, 4, 5], T, D, Some(16));
    let x = random_input(&[3, T, D], 42);
    assert!(max_abs_diff(&run(&slim, &x), &run(&expected, &x)) < 1e-6);
    // Blocks 2 and 3 (b1, b2) are gone, nodes and weights alike.
    let g = slim.graph();
    assert!(g.node.iter().all(|n| !n.name().starts_with("b1/") && !n.name().starts_with("b2/")));
    assert!(g.initializer.iter().all(|t| !t.name().starts_with("b1.") && !t.name().starts_with("b2.")));
    assert_eq!(g.node.len(), expected.graph().node.len() + 1, "only an Identity node is added");
    let removed = full.blocks.blocks[1].params + full.blocks.blocks[2].params;
    assert_eq!(cost::total_params(g), cost::total_params(full.onnx.graph()) - removed);
}

#[test]
fn exact_linear_translator_reproduces_outputs() {
    let full = load(token_model(&[11, 12, 13, 14], T, D, None));
    // Blocks 2 and 3 compute x (I + A1) (I + A2).
    let a = |k: usize| cost::weight_values(full.onnx.graph(), &format!("b{k}.A")).expect("weights");
    let plus_identity = |m: Vec<f32>| m.iter().zip(identity(D)).map(|(x, i)| x + i).collect::<Vec<_>>();
    let t = matmul(&plus_identity(a(1)), &plus_identity(a(2)), D);
    let slim = replace_spans(
        &full.onnx,
        &full.blocks,
        &[(Span::new(1, 3), Translator::Linear { weight: t.clone(), bias: None })],
    )
    .expect("surgery");
    let x = random_input(&[4, T, D], 3);
    let diff = max_abs_diff(&run(&slim, &x), &run(&full.onnx, &x));
    assert!(diff < 1e-5, "max abs diff {diff}");
    let translator = Translator::Linear { weight: t, bias: None };
    let removed = full.blocks.blocks[1].params + full.blocks.blocks[2].params;
    assert_eq!(cost::total_params(slim.graph()), cost::total_params(full.onnx.graph()) - removed + translator.params());
    assert!(slim.graph().node.iter().any(|n| n.op_type() == "MatMul" && n.name() == "rba/span_1_3/MatMul"));
}

#[test]
fn adjacent_spans_chain_their_translators() {
    let full = load(token_model(&[21, 22, 23], T, D, None));
    let a = |k: usize| cost::weight_values(full.onnx.graph(), &format!("b{k}.A")).expect("weights");
    let plus_identity = |m: Vec<f32>| m.iter().zip(identity(D)).map(|(x, i)| x + i).collect::<Vec<_>>();
    let spans = [
        (Span::new(0, 1), Translator::Linear { weight: plus_identity(a(0)), bias: None }),
        (
            Span::new(1, 3),
            Translator::Linear { weight: matmul(&plus_identity(a(1)), &plus_identity(a(2)), D), bias: None },
        ),
    ];
    let slim = replace_spans(&full.onnx, &full.blocks, &spans).expect("surgery");
    let x = random_input(&[2, T, D], 5);
    assert!(max_abs_diff(&run(&slim, &x), &run(&full.onnx, &x)) < 1e-5);
    assert_eq!(slim.graph().initializer.len(), 2, "only the two translators remain");
}

#[test]
fn exact_affine_conv_translator_reproduces_outputs() {
    let c = 6;
    let full = load(conv_model(&[31, 32, 33], c, 5));
    let names: Vec<&str> = full.blocks.boundaries.iter().map(String::as_str).collect();
    assert_eq!(names, ["stem.out", "c0.out", "c1.out", "c2.out"]);
    // Block k: y = x (I + M_k) + b_k with M_k[i][o] = W_k[o][i].
    let g = full.onnx.graph();
    let m = |k: usize| {
        let w = cost::weight_values(g, &format!("c{k}.W")).expect("weights");
        let mut out = identity(c);
        for i in 0..c {
            for o in 0..c {
                out[i * c + o] += w[o * c + i];
            }
        }
        out
    };
    let b = |k: usize| cost::weight_values(g, &format!("c{k}.B")).expect("bias");
    // Span 0..2: x (I+M0)(I+M1) + b0 (I+M1) + b1.
    let weight = matmul(&m(0), &m(1), c);
    let m1 = m(1);
    let bias: Vec<f32> = (0..c).map(|o| (0..c).map(|i| b(0)[i] * m1[i * c + o]).sum::<f32>() + b(1)[o]).collect();
    let slim =
        replace_spans(&full.onnx, &full.blocks, &[(Span::new(0, 2), Translator::Linear { weight, bias: Some(bias) })])
            .expect("surgery");
    assert!(slim.graph().node.iter().any(|n| n.op_type() == "Conv" && n.name() == "rba/span_0_2/Conv"));
    let x = random_input(&[2, 1, 5, 5], 9);
    let diff = max_abs_diff(&run(&slim, &x), &run(&full.onnx, &x));
    assert!(diff < 1e-5, "max abs diff {diff}");
}

#[test]
fn rejects_bad_spans() {
    let full = load(token_model(&[1, 2, 3, 4], T, D, None));
    let try_spans = |spans: &[Span]| {
        let r: Vec<(Span, Translator)> = spans.iter().map(|s| (*s, Translator::Identity)).collect();
        replace_spans(&full.onnx, &full.blocks, &r).unwrap_err()
    };
    assert_eq!(
        try_spans(&[Span::new(0, 2), Span::new(1, 3)]),
        SurgeryError::Overlap { a: "0..2".into(), b: "1..3".into() }
    );
    assert_eq!(try_spans(&[Span::new(2, 5)]), SurgeryError::PastEnd { s: 2, e: 5, last: 4 });
    assert_eq!(try_spans(&[Span::new(2, 2)]), SurgeryError::Empty { s: 2, e: 2 });
    let wrong_size = replace_spans(
        &full.onnx,
        &full.blocks,
        &[(Span::new(0, 1), Translator::Linear { weight: vec![0.0; 3], bias: None })],
    )
    .unwrap_err();
    assert!(wrong_size.to_string().contains("expected 64"), "{wrong_size}");
}

#[test]
fn span_parsing() {
    assert_eq!("5..6".parse::<Span>(), Ok(Span::new(5, 6)));
    assert!("5-6".parse::<Span>().unwrap_err().contains("START..END"));
    assert!("a..6".parse::<Span>().unwrap_err().contains("'a'"));
}
