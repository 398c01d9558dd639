//! Tail-only selection (METHOD.md, "Selection"): measuring a candidate by
//! running only its part after the earliest boundary it changes, fed with
//! the cached held-out activation there, gives the same held-out metrics as
//! running the whole candidate model, and selection makes the same choices.

use std::sync::OnceLock;

use rba_host::calibrate::{capture, CaptureOptions, Statistics};
use rba_host::compact::surgery::Span;
use rba_host::compact::tail::{run_tail, tail_model};
use rba_host::compact::verify::{changed_from, Candidate, Verifier};
use rba_host::compact::{
    build, select, Budget, CacheOptions, HeldOut, SelectOptions, Selection, SelectionMode, TranslatorKind,
};
use rba_host::data::{Dataset, Holdout, Preprocess, PreprocessOptions};
use rba_host::demo::DemoModel;
use rba_host::model::run::{argmax_rows, predict};
use rba_host::model::Model;
use rba_host::progress::Silent;

/// A demo model calibrated as `rba compact --data demo` does (500 images,
/// fold statistics), and its held-out digits with the boundary cache.
struct Setup {
    model: Model,
    stats: Statistics,
    held: HeldOut,
}

fn setup(which: DemoModel) -> Setup {
    let model = Model::new(which.load().expect("demo model"), None).expect("blocks");
    let pre = Preprocess::for_model(&PreprocessOptions::default(), &model.onnx).expect("preprocess");
    let (calibration, held_out) =
        Dataset::open("demo").expect("digits").calibration_split(Holdout::Fraction(0.2), 0).expect("split");
    let calibration = calibration.subset(Some(500), Some(0));
    let batches = calibration.batches(&pre, 50).map(|b| b.map(|(x, _labels)| x));
    let options = CaptureOptions { batch: 50, max_span: 3, threads: 2, fold: true, ..Default::default() };
    let stats = capture(&model, batches, Some(500), &options, &Silent).expect("capture");
    // 150 held-out digits: the claim is per image, so fewer keep it (and the test's time).
    let (inputs, labels) = held_out.subset(Some(150), Some(0)).load_all(&pre).expect("held-out images");
    let held =
        HeldOut::with_boundaries(&model, inputs, labels, 50, &CacheOptions::default(), 2).expect("held-out cache");
    Setup { model, stats, held }
}

fn vit() -> &'static Setup {
    static S: OnceLock<Setup> = OnceLock::new();
    S.get_or_init(|| setup(DemoModel::Vit))
}

fn resnet() -> &'static Setup {
    static S: OnceLock<Setup> = OnceLock::new();
    S.get_or_init(|| setup(DemoModel::Resnet))
}

const KINDS: [TranslatorKind; 4] =
    [TranslatorKind::Linear, TranslatorKind::Affine, TranslatorKind::Identity, TranslatorKind::Folded];

/// Every single-block candidate with every translator, and two-span ones.
fn candidates(s: &Setup, two_spans: &[Candidate]) -> Vec<Candidate> {
    let mut out: Vec<Candidate> = Vec::new();
    for b in s.model.blocks.blocks.iter().filter(|b| b.replaceable()) {
        for kind in KINDS {
            out.push(vec![(Span::new(b.index - 1, b.index), kind)]);
        }
    }
    out.extend(two_spans.iter().cloned());
    out
}

fn options(mode: SelectionMode) -> SelectOptions {
    SelectOptions { mode, threads: 2, verify_top: None }
}

/// Tail and whole-model measurements of every candidate agree: accuracy
/// and agreement exactly, output cosine within 1e-5. Returns how many
/// candidates of each kind could be built.
fn tail_equals_full(s: &Setup, two_spans: &[Candidate]) -> Vec<(TranslatorKind, usize)> {
    let all = candidates(s, two_spans);
    let full = Verifier::new(&s.model, &s.stats, &s.held, &options(SelectionMode::Full), &Silent);
    let tail = Verifier::new(&s.model, &s.stats, &s.held, &options(SelectionMode::Tail), &Silent);
    let (qf, qt) = (full.measure(&all).expect("full"), tail.measure(&all).expect("tail"));
    let mut built = KINDS.map(|k| (k, 0usize)).to_vec();
    for ((c, f), t) in all.iter().zip(&qf).zip(&qt) {
        match (f, t) {
            (None, None) => {}
            (Some(f), Some(t)) => {
                assert_eq!(f.accuracy, t.accuracy, "{c:?}: accuracy");
                assert_eq!(f.agreement, t.agreement, "{c:?}: agreement");
                let d = (f.output_cosine - t.output_cosine).abs();
                assert!(d <= 1e-5, "{c:?}: output cosine {} vs {} ({d:e})", f.output_cosine, t.output_cosine);
                if c.len() == 1 {
                    built.iter_mut().find(|(k, _)| *k == c[0].1).expect("kind").1 += 1;
                }
            }
            _ => panic!("{c:?}: built in one mode only: full {f:?}, tail {t:?}"),
        }
    }
    for c in two_spans {
        let i = all.iter().position(|x| x == c).expect("listed");
        assert!(qt[i].is_some(), "two-span candidate {c:?} can be built");
    }
    let v = tail.verification();
    assert_eq!(v.full_fallbacks, 0, "every tail could be built: {v:?}");
    assert_eq!(v.runs, qt.iter().filter(|q| q.is_some()).count());
    built
}

#[test]
fn demo_vit_tails_measure_like_whole_models() {
    let s = vit();
    let two = [
        vec![(Span::new(2, 3), TranslatorKind::Linear), (Span::new(6, 8), TranslatorKind::Folded)],
        vec![(Span::new(3, 5), TranslatorKind::Affine), (Span::new(5, 6), TranslatorKind::Identity)],
    ];
    let built = tail_equals_full(s, &two);
    // 12 blocks: linear, affine, identity on all; folded from block 2 on.
    assert_eq!(
        built,
        [
            (TranslatorKind::Linear, 12),
            (TranslatorKind::Affine, 12),
            (TranslatorKind::Identity, 12),
            (TranslatorKind::Folded, 11)
        ]
    );
}

#[test]
fn demo_resnet_tails_measure_like_whole_models() {
    let s = resnet();
    let replaceable: Vec<usize> = s.model.blocks.blocks.iter().filter(|b| b.replaceable()).map(|b| b.index).collect();
    assert!(replaceable.len() >= 3, "{replaceable:?}");
    // Two non-adjacent replaceable blocks.
    let (a, b) = (replaceable[0], *replaceable.last().expect("blocks"));
    let two = [vec![(Span::new(a - 1, a), TranslatorKind::Linear), (Span::new(b - 1, b), TranslatorKind::Identity)]];
    let built = tail_equals_full(s, &two);
    for (kind, n) in built {
        if kind != TranslatorKind::Folded {
            assert_eq!(n, replaceable.len(), "{kind:?}");
        }
    }
}

#[test]
fn a_tail_runs_only_the_part_after_the_changed_boundary() {
    let s = vit();
    let cache = s.held.cache.as_ref().expect("cache");
    let candidate = vec![(Span::new(8, 9), TranslatorKind::Linear)];
    let (m, _) = build(&s.model, &s.stats, &candidate).expect("build");
    let nodes = m.graph().node.len();
    let tail = tail_model(m.clone(), changed_from(&candidate), cache).expect("tail");
    // Blocks 1..=8 are gone from the tail (about two thirds of the nodes).
    assert!(tail.graph().node.len() * 2 < nodes, "{} of {nodes} nodes", tail.graph().node.len());
    assert_eq!(tail.graph().input.len(), 1);
    assert_eq!(tail.graph().input[0].name(), s.model.blocks.boundaries[8]);
    let a = run_tail(&tail, 8, cache).expect("tail runs");
    let b = predict(&m, &s.held.inputs, s.held.batch).expect("whole model");
    let diff = a.iter().zip(b.iter()).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    assert!(diff < 1e-4, "max |tail - whole| = {diff}");
    // The reference outputs of the capture pass (boundaries exposed, tract
    // on 2 threads) are those of a plain pass (`--selection full`'s).
    let plain = HeldOut::new(&s.model.onnx, s.held.inputs.clone(), None, s.held.batch).expect("plain pass");
    let diff = plain.reference.iter().zip(s.held.reference.iter()).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    assert!(diff < 1e-5, "reference outputs differ by {diff}");
    assert_eq!(argmax_rows(&plain.reference), argmax_rows(&s.held.reference));
    // A folded span rewrites the block before it: its tail starts one earlier.
    assert_eq!(changed_from(&[(Span::new(8, 9), TranslatorKind::Folded)]), 7);
    assert_eq!(
        changed_from(&[(Span::new(2, 3), TranslatorKind::Linear), (Span::new(6, 8), TranslatorKind::Folded)]),
        2
    );
}

fn same_choice(a: &Selection, b: &Selection) {
    let key = |s: &Selection| s.replacements.iter().map(|r| (r.span, r.translator)).collect::<Vec<_>>();
    assert_eq!(key(a), key(b));
    assert_eq!(a.result.metric(), b.result.metric());
    assert_eq!(a.trials.len(), b.trials.len());
    for (x, y) in a.trials.iter().zip(&b.trials) {
        assert_eq!(x.removed_blocks, y.removed_blocks);
        assert_eq!(x.quality.accuracy, y.quality.accuracy, "{:?}", x.removed_blocks);
        assert!((x.quality.output_cosine - y.quality.output_cosine).abs() <= 1e-5);
    }
}

fn selections(s: &Setup, budget: &Budget, kind: TranslatorKind) -> (Selection, Selection) {
    let run = |mode| select(&s.model, &s.stats, &s.held, budget, kind, &options(mode), &Silent).expect("select");
    (run(SelectionMode::Full), run(SelectionMode::Tail))
}

#[test]
fn demo_vit_selection_chooses_the_same_either_way() {
    let s = vit();
    let (full, tail) = selections(s, &Budget::Remove(2), TranslatorKind::Auto);
    same_choice(&full, &tail);
    assert_eq!(full.verification.mode, SelectionMode::Full);
    assert!(tail.verification.runs < full.verification.runs, "repeats are answered from memory");
    let (full, tail) = selections(s, &Budget::MaxDrop(0.01), TranslatorKind::Folded);
    same_choice(&full, &tail);
}

#[test]
fn demo_resnet_selection_chooses_the_same_either_way() {
    let s = resnet();
    let (full, tail) = selections(s, &Budget::Remove(2), TranslatorKind::Auto);
    same_choice(&full, &tail);
    let (full, tail) = selections(s, &Budget::MaxDrop(0.01), TranslatorKind::Linear);
    same_choice(&full, &tail);
}

#[test]
fn verify_top_verifies_exactly_k_and_says_so() {
    let s = vit();
    let options = SelectOptions { verify_top: Some(3), ..options(SelectionMode::Tail) };
    let sel = select(&s.model, &s.stats, &s.held, &Budget::Remove(2), TranslatorKind::Linear, &options, &Silent)
        .expect("select");
    let v = &sel.verification;
    assert_eq!(v.verify_top, Some(3));
    assert_eq!(v.steps.len(), 2);
    assert!(v.steps.iter().all(|st| st.verified == 3 && st.candidates > 3), "{:?}", v.steps);
    assert_eq!(sel.trials.len(), 6);
    let text = rba_host::report::text::verification(v);
    assert!(text.contains("--verify-top 3: verified only the 3 best candidates by fit 1-R^2"), "{text}");
    // The three verified in the first step are the three best fits.
    let mut fits: Vec<(f64, usize)> = (1..=12)
        .map(|b| {
            let f = rba_host::compact::fit_span(&s.stats, Span::new(b - 1, b), TranslatorKind::Linear).expect("fit");
            (f.1.relative_residual, b)
        })
        .collect();
    fits.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut best: Vec<usize> = fits[..3].iter().map(|f| f.1).collect();
    best.sort_unstable();
    let first: Vec<usize> = sel.trials[..3].iter().map(|t| t.removed_blocks[0]).collect();
    assert_eq!(first, best);
}

#[test]
fn f16_cache_and_a_spilled_cache_measure_like_the_f32_one() {
    let s = vit();
    let pre = Preprocess::for_model(&PreprocessOptions::default(), &s.model.onnx).expect("preprocess");
    let (_, held_out) =
        Dataset::open("demo").expect("digits").calibration_split(Holdout::Fraction(0.2), 0).expect("split");
    let (inputs, labels) = held_out.subset(Some(150), Some(0)).load_all(&pre).expect("held-out images");
    let spilled = HeldOut::with_boundaries(
        &s.model,
        inputs.clone(),
        labels.clone(),
        50,
        &CacheOptions { budget: 1 << 20, f16: false },
        2,
    )
    .expect("spilled cache");
    let info = &spilled.cache.as_ref().expect("cache").info;
    assert!(info.spilled && info.precision == "f32", "{info:?}");
    let half = HeldOut::with_boundaries(&s.model, inputs, labels, 50, &CacheOptions { budget: u64::MAX, f16: true }, 2)
        .expect("f16 cache");
    let all = candidates(s, &[]);
    let tail = |held: &HeldOut| {
        Verifier::new(&s.model, &s.stats, held, &options(SelectionMode::Tail), &Silent).measure(&all).expect("tail")
    };
    let (exact, from_file, from_f16) = (tail(&s.held), tail(&spilled), tail(&half));
    let mut worst_cosine = 0f64;
    let (mut flips, mut worst_images, mut built) = (0, 0f64, 0);
    for ((a, b), c) in exact.iter().zip(&from_file).zip(&from_f16) {
        let (Some(a), Some(b), Some(c)) = (a, b, c) else { continue };
        built += 1;
        // The spill file holds the same f32 values.
        assert_eq!(a.accuracy, b.accuracy);
        assert_eq!(a.output_cosine, b.output_cosine);
        worst_cosine = worst_cosine.max((a.output_cosine - c.output_cosine).abs());
        flips += (a.agreement != c.agreement) as usize;
        worst_images = worst_images.max((a.agreement - c.agreement).abs() * s.held.len() as f64);
    }
    eprintln!(
        "f16 cache: largest output-cosine change {worst_cosine:e}; {flips} of {} candidates with another agreement, \
         by at most {worst_images:.0} of {} images",
        built,
        s.held.len()
    );
    assert!(worst_cosine < 1e-3, "{worst_cosine}");
}

/// A token model whose later part reads the original input's shape (as ViT
/// exports do for reshapes): the tails get the captured `Shape(x)` value and
/// still measure like whole models, without falling back.
#[test]
fn tails_that_read_the_input_shape_get_it_captured() {
    use rba_host::onnx::build::node;
    use rba_testkit::models::token_model;
    use rba_testkit::tensors::random_input;
    let mut onnx = token_model(&[1, 2, 3, 4], 5, 8, Some(16));
    let g = onnx.graph_mut();
    // After block 3: a no-op Reshape of b2.out to Shape(x).
    for n in g.node.iter_mut() {
        for i in n.input.iter_mut().filter(|i| *i == "b2.out") {
            *i = "b2.re".into();
        }
    }
    let at = g.node.iter().position(|n| n.output.iter().any(|o| o == "b2.out")).expect("block 3") + 1;
    g.node.insert(at, node("Shape", "x/shape", &["x"], &["x.shape"]));
    g.node.insert(at + 1, node("Reshape", "b2/re", &["b2.out", "x.shape"], &["b2.re"]));
    let model = Model::new(onnx, None).expect("blocks");
    let calib = random_input(&[64, 5, 8], 1);
    let options = CaptureOptions { batch: 16, max_span: 2, threads: 1, fold: true, ..Default::default() };
    let stats = capture(&model, [Ok::<_, String>(calib)], Some(64), &options, &Silent).expect("capture");
    let held = HeldOut::with_boundaries(&model, random_input(&[40, 5, 8], 2), None, 16, &CacheOptions::default(), 2)
        .expect("held-out");
    let info = &held.cache.as_ref().expect("cache").info;
    assert_eq!(info.constants, ["x.shape"], "{info:?}");
    let s = Setup { model, stats, held };
    let two = [vec![(Span::new(0, 1), TranslatorKind::Linear), (Span::new(2, 4), TranslatorKind::Affine)]];
    tail_equals_full(&s, &two);
}
