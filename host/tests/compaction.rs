//! Compaction end to end: fits from streamed statistics, surgery, and
//! selection verified on held-out data.
#![allow(clippy::unwrap_used)] // unwrap_err() states what a test expects

use rba_host::calibrate::{capture, CaptureOptions};
use rba_host::compact::surgery::{replace_spans, Span, Translator};
use rba_host::compact::{
    fit_span, refit_sequentially, select, Budget, CacheOptions, HeldOut, SelectOptions, TranslatorKind,
};
use rba_host::data::{Dataset, Holdout, Preprocess, PreprocessOptions};
use rba_host::demo::{DemoModel, Digits, Split};
use rba_host::model::cost;
use rba_host::model::run::{argmax_rows, nd, predict};
use rba_host::model::Model;
use rba_host::progress::Silent;
use rba_testkit::models::{run, token_model};
use rba_testkit::tensors::{max_abs_diff, random_input};

#[test]
fn linear_blocks_are_replaced_exactly_from_streamed_statistics() {
    let model = Model::new(token_model(&[1, 2, 3, 4], 5, 8, None), None).expect("blocks");
    let calib = random_input(&[64, 5, 8], 1);
    let batches =
        (0..64).step_by(16).map(|s| Ok::<_, String>(calib.slice_axis(nd::Axis(0), (s..s + 16).into()).to_owned()));
    let stats = capture(&model, batches, Some(64), &CaptureOptions::default(), &Silent).expect("capture");
    let held = HeldOut::with_boundaries(&model, random_input(&[32, 5, 8], 2), None, 16, &CacheOptions::default(), 1)
        .expect("held-out");
    let budget = Budget::Spans(vec![Span::new(1, 3)]);
    let sel = select(&model, &stats, &held, &budget, TranslatorKind::Linear, &SelectOptions::default(), &Silent)
        .expect("select");
    assert_eq!(sel.replacements.len(), 1);
    assert!(sel.replacements[0].fit_residual < 1e-6, "a linear block is fitted exactly");
    let x = random_input(&[8, 5, 8], 3);
    let diff = max_abs_diff(&run(&sel.model, &x), &run(&model.onnx, &x));
    assert!(diff < 1e-3, "max abs diff {diff}");
    assert_eq!(sel.result.agreement, 1.0);
}

#[test]
fn impossible_budget_writes_nothing_and_says_the_best() {
    let model = Model::new(token_model(&[1, 2, 3], 5, 8, Some(16)), None).expect("blocks");
    let stats =
        capture(&model, [Ok::<_, String>(random_input(&[32, 5, 8], 1))], Some(32), &CaptureOptions::default(), &Silent)
            .expect("capture");
    let held = HeldOut::new(&model.onnx, random_input(&[16, 5, 8], 2), None, 16).expect("held-out");
    // The metric would have to rise by 50 points.
    let err = select(
        &model,
        &stats,
        &held,
        &Budget::MaxDrop(-0.5),
        TranslatorKind::Linear,
        &SelectOptions::default(),
        &Silent,
    )
    .unwrap_err();
    assert!(
        err.to_string().starts_with("no block can be removed within the budget; the best single removal reaches"),
        "{err}"
    );
    let err =
        select(&model, &stats, &held, &Budget::Remove(5), TranslatorKind::Linear, &SelectOptions::default(), &Silent)
            .unwrap_err();
    assert!(err.to_string().contains("only 3 of the requested 5 blocks"), "{err}");
}

#[test]
fn demo_vit_two_blocks_fold_away_with_a_small_verified_drop() {
    let model = Model::new(DemoModel::Vit.load().expect("vit"), None).expect("blocks");
    let digits = Digits::embedded().expect("digits");
    // The calibration and held-out images `rba compact --data demo` uses.
    let pre = Preprocess::for_model(&PreprocessOptions::default(), &model.onnx).expect("preprocess");
    let (calibration, held_out) =
        Dataset::open("demo").unwrap().calibration_split(Holdout::Fraction(0.2), 0).expect("split");
    let calibration = calibration.subset(Some(500), Some(0));
    let batches = calibration.batches(&pre, 50).map(|b| b.map(|(x, _labels)| x));
    let options = CaptureOptions { batch: 50, max_span: 2, threads: 1, fold: true, ..Default::default() };
    let stats = capture(&model, batches, Some(500), &options, &Silent).expect("capture");
    let (inputs, labels) = held_out.load_all(&pre).expect("held-out images");
    assert_eq!(inputs.shape()[0], 300, "the validation digits");
    let held = HeldOut::with_boundaries(&model, inputs, labels, 50, &CacheOptions::default(), 2).expect("held-out");
    let sel =
        select(&model, &stats, &held, &Budget::Remove(2), TranslatorKind::Folded, &SelectOptions::default(), &Silent)
            .expect("select");
    // Selection's contract is on the held-out split it measured.
    assert!(sel.baseline.metric() - sel.result.metric() <= 0.01, "{:?} -> {:?}", sel.baseline, sel.result);
    // Block 1 has no block before it to fold into: never a candidate.
    assert_eq!(sel.trials.iter().filter(|t| t.removed_blocks.len() == 1).count(), 11);
    assert!(sel.trials.iter().all(|t| !t.removed_blocks.contains(&1)));
    let removed: usize = sel.replacements.iter().map(|r| r.span.end - r.span.start).sum();
    assert_eq!(removed, 2);
    // Parameters: exactly the removed blocks go; folding adds nothing.
    let blocks: u64 =
        sel.replacements.iter().flat_map(|r| r.span.blocks()).map(|b| model.blocks.blocks[b - 1].params).sum();
    assert_eq!(cost::total_params(sel.model.graph()), cost::total_params(model.onnx.graph()) - blocks);
    // Reported on the test split, which selection never saw.
    let test = digits.indices(Split::Test);
    let labels: Vec<usize> = test.iter().map(|&i| digits.label(i)).collect();
    let accuracy = |m: &rba_host::onnx::OnnxModel| {
        let p = argmax_rows(&predict(m, &digits.batch(test), 50).expect("predict"));
        p.iter().zip(&labels).filter(|(a, b)| a == b).count() as f64 / labels.len() as f64
    };
    let (before, after) = (accuracy(&model.onnx), accuracy(&sel.model));
    assert!(before - after <= 0.01, "test accuracy {before} -> {after}");
    assert_eq!(sel.proxy_spearman.len(), 4);
}

#[test]
fn sequential_refit_fits_each_span_on_the_partly_compacted_model() {
    let model = Model::new(token_model(&[41, 42, 43, 44, 45, 46], 5, 8, Some(16)), None).expect("blocks");
    let calib = random_input(&[48, 5, 8], 7);
    let capture_on = |m: &Model, max_span: usize| {
        let options = CaptureOptions { batch: 16, max_span, threads: 1, fold: true, ..Default::default() };
        capture(m, [Ok::<_, String>(calib.clone())], Some(48), &options, &Silent)
            .map_err(|e| rba_host::compact::CompactError::Budget(e.to_string()))
    };
    // Blocks 2-3 dropped, then block 5 replaced by a map fitted after that drop.
    let spans = [(Span::new(1, 3), TranslatorKind::Identity), (Span::new(4, 5), TranslatorKind::Linear)];
    let (sequential, replacements) = refit_sequentially(&model, &spans, capture_on).expect("refit");
    assert_eq!(replacements.iter().map(|r| r.span).collect::<Vec<_>>(), [Span::new(1, 3), Span::new(4, 5)]);
    // By hand: drop blocks 2-3, re-detect, fit block 5 (now block 3) there.
    let dropped = replace_spans(&model.onnx, &model.blocks, &[(Span::new(1, 3), Translator::Identity)]).unwrap();
    let partial = Model::new(dropped, None).expect("blocks");
    assert_eq!(partial.blocks.blocks.len(), 4);
    let stats = capture_on(&partial, 1).unwrap();
    let (t, _) = fit_span(&stats, Span::new(2, 3), TranslatorKind::Linear).unwrap();
    let by_hand = replace_spans(&partial.onnx, &partial.blocks, &[(Span::new(2, 3), t)]).unwrap();
    let x = random_input(&[6, 5, 8], 8);
    let diff = max_abs_diff(&run(&sequential, &x), &run(&by_hand, &x));
    assert!(diff < 1e-5, "sequential refit differs from the by-hand refit by {diff}");
    // And it is not what the original activations give.
    let original = capture_on(&model, 2).unwrap();
    let (t0, _) = fit_span(&original, Span::new(4, 5), TranslatorKind::Linear).unwrap();
    let one_shot =
        replace_spans(&model.onnx, &model.blocks, &[(Span::new(1, 3), Translator::Identity), (Span::new(4, 5), t0)])
            .unwrap();
    assert!(max_abs_diff(&run(&one_shot, &x), &run(&by_hand, &x)) > 1e-4);
}
