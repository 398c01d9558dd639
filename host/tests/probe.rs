//! `rba probe`: closed-form linear heads appended to headless backbones.

use std::io::Write;
use std::path::Path;
use std::process::Command;

use rba_host::data::npy;
use rba_host::data::{Dataset, Holdout, Preprocess, PreprocessOptions};
use rba_host::demo::DemoModel;
use rba_host::fit::probe::{self, Pooling, ProbeError, ProbeOptions};
use rba_host::model::run::{argmax_rows, nd, predict};
use rba_host::onnx::build::{f32_tensor, f32_value_info, i64_tensor, node, Dim};
use rba_host::onnx::proto::GraphProto;
use rba_host::onnx::{DataPlacement, OnnxModel};
use rba_host::progress::Silent;
use rba_testkit::models::{model, values};
use rba_testkit::onnxruntime;
use rba_testkit::tensors::max_abs_diff;

const T: usize = 3;
const DIN: usize = 4;
const D: usize = 6;
const K: usize = 3;

/// `x [batch, 1, T, DIN]` (an image-shaped input, so the data pipeline takes
/// it) `-> [batch, T, DIN] -> feat = x A [batch, T, D] -> relu -> y` (a
/// headless "decoder" output), plus a rank-5 tensor for the unsupported-shape error.
fn linear_backbone() -> (OnnxModel, Vec<f32>) {
    let a = values(11, DIN * D, 1.0);
    let mut g = GraphProto { name: Some("linear".into()), ..Default::default() };
    g.input.push(f32_value_info("x", &[Dim::Named("batch".into()), Dim::Fixed(1), Dim::Fixed(T), Dim::Fixed(DIN)]));
    g.initializer.push(f32_tensor("A", &[DIN, D], &a));
    g.initializer.push(i64_tensor("axes", &[2], &[3, 4]));
    g.initializer.push(i64_tensor("tokens", &[3], &[-1, T as i64, DIN as i64]));
    g.node.push(node("Reshape", "flatten", &["x", "tokens"], &["x3"]));
    g.node.push(node("MatMul", "mm", &["x3", "A"], &["feat"]));
    g.node.push(node("Relu", "decoder", &["feat"], &["y"]));
    g.node.push(node("Unsqueeze", "five", &["feat", "axes"], &["feat5"]));
    g.node.push(node("Relu", "decoder5", &["feat5"], &["y5"]));
    g.output.push(f32_value_info("y", &[Dim::Named("batch".into()), Dim::Fixed(T), Dim::Fixed(D)]));
    g.output.push(f32_value_info("y5", &[]));
    (model(g), a)
}

/// `n` samples of `[1, T, DIN]`; token 0 is its class's centre plus small
/// noise, the other tokens are noise; labels cycle through the classes.
fn separable(n: usize) -> (nd::ArrayD<f32>, Vec<usize>) {
    let centres = [[3.0, 0.0, 0.0, 1.0], [0.0, 3.0, 0.0, -1.0], [0.0, 0.0, 3.0, 0.5]];
    let noise = values(5, n * T * DIN, 0.3);
    let labels: Vec<usize> = (0..n).map(|i| i % K).collect();
    let mut x = noise;
    for (i, &l) in labels.iter().enumerate() {
        for j in 0..DIN {
            x[i * T * DIN + j] += centres[l][j];
        }
    }
    (nd::ArrayD::from_shape_vec(vec![n, 1, T, DIN], x).expect("shape"), labels)
}

fn npz(path: &Path, members: &[(&str, nd::ArrayD<f32>)]) {
    let file = std::fs::File::create(path).expect("create npz");
    let mut zip = zip::ZipWriter::new(file);
    let options = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, array) in members {
        zip.start_file(format!("{name}.npy"), options).expect("start member");
        zip.write_all(&npy::to_bytes_f32(array)).expect("write member");
    }
    zip.finish().expect("finish");
}

fn labelled_npz(dir: &Path, n: usize) -> (std::path::PathBuf, nd::ArrayD<f32>) {
    let (x, labels) = separable(n);
    let y = nd::ArrayD::from_shape_vec(vec![n], labels.iter().map(|&l| l as f32).collect()).expect("shape");
    let path = dir.join("data.npz");
    npz(&path, &[("x", x.clone()), ("y", y)]);
    (path, x)
}

fn options(feature: &str, pooling: Pooling) -> ProbeOptions {
    ProbeOptions { pooling, batch: 8, ..ProbeOptions::new(feature) }
}

#[test]
fn linear_feature_with_separable_classes_is_probed_exactly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (backbone, a) = linear_backbone();
    let (path, x) = labelled_npz(dir.path(), 60);
    let data = Dataset::open(path.to_str().expect("utf-8")).expect("open");
    let (train, val) = data.split(Holdout::Fraction(0.25), 0).expect("split");
    let pre = Preprocess::for_model(&PreprocessOptions::default(), &backbone).expect("preprocess");
    for pooling in [Pooling::Cls, Pooling::Mean] {
        let p = probe::probe(&backbone, &train, &val, &pre, &options("feat", pooling), &Silent).expect("probe");
        let chosen = &p.trials[p.chosen];
        assert_eq!(p.trials.len(), probe::DEFAULT_LAMBDAS.len());
        assert_eq!(chosen.train_accuracy, 1.0, "{pooling:?}: {:?}", p.trials);
        assert_eq!(chosen.val_accuracy, Some(1.0), "{pooling:?}: {:?}", p.trials);
        // Ties go to the larger lambda: no larger lambda reaches the same accuracy.
        assert!(p.trials[p.chosen + 1..].iter().all(|t| t.val_accuracy < chosen.val_accuracy));

        // Only the head's output is left; the old decoders are pruned.
        let graph = p.model.graph();
        assert_eq!(graph.output.iter().map(|o| o.name()).collect::<Vec<_>>(), [probe::OUTPUT]);
        assert!(graph.node.iter().all(|n| n.name() != "decoder" && n.name() != "five"));
        let meta: serde_json::Value =
            serde_json::from_str(p.model.metadata()[probe::METADATA_KEY]).expect("metadata JSON");
        assert_eq!(meta["feature"], "feat");
        assert_eq!(meta["pooling"], if pooling == Pooling::Cls { "cls" } else { "mean" });
        assert_eq!(meta["classes"].as_array().map(Vec::len), Some(K));

        // The graph computes pool(x A) W + b.
        let logits = predict(&p.model, &x, 8).expect("run probed model");
        let n = x.shape()[0];
        for i in 0..n {
            let mut pooled = [0f64; D];
            for t in 0..T {
                let weight = match pooling {
                    Pooling::Cls if t > 0 => continue,
                    Pooling::Cls => 1.0,
                    Pooling::Mean => 1.0 / T as f64,
                };
                for (j, v) in pooled.iter_mut().enumerate() {
                    let f: f64 = (0..DIN).map(|c| x[[i, 0, t, c]] as f64 * a[c * D + j] as f64).sum();
                    *v += weight * f;
                }
            }
            for k in 0..K {
                let want = p.bias[k] as f64 + (0..D).map(|j| pooled[j] * p.weight[j * K + k] as f64).sum::<f64>();
                let got = logits[[i, k]] as f64;
                assert!((got - want).abs() < 1e-4, "{pooling:?} sample {i} class {k}: {got} vs {want}");
            }
        }
        let predicted = argmax_rows(&logits);
        let labels = data.labels().expect("labels");
        assert_eq!(predicted, labels, "{pooling:?}: all 60 samples classified");
    }
}

/// The demo ViT's final-norm output, `[B, T, 96]` (the old head reads its CLS token).
const VIT_FEATURE: &str = "/norm/LayerNormalization_output_0";

#[test]
fn demo_vit_probe_on_final_norm_cls_classifies_digits() {
    let backbone = DemoModel::Vit.load().expect("demo vit");
    let pre = Preprocess::for_model(&PreprocessOptions::default(), &backbone).expect("preprocess");
    let (train, val) =
        Dataset::open("demo").expect("demo").calibration_split(Holdout::Fraction(0.2), 0).expect("split");
    let train = train.subset(Some(600), Some(0));
    let val = val.subset(Some(200), Some(0));
    let p = probe::probe(
        &backbone,
        &train,
        &val,
        &pre,
        &ProbeOptions { batch: 50, ..ProbeOptions::new(VIT_FEATURE) },
        &Silent,
    )
    .expect("probe");
    print!("{}", rba_host::report::text::probe(&p));
    assert!(p.model.graph().node.iter().all(|n| n.op_type() != "Gemm"), "the original head is pruned");
    // The preprocessing used is recorded and read back by later commands.
    assert_eq!(Preprocess::for_model(&PreprocessOptions::default(), &p.model).expect("metadata preprocess"), pre);

    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("probed.onnx");
    p.model.save(&path, &DataPlacement::Inline).expect("save");
    let reloaded = OnnxModel::load(&path).expect("reload");
    let (inputs, labels) = Dataset::open("demo:test").expect("test").load_all(&pre).expect("load");
    let labels = labels.expect("labels");
    let logits = predict(&reloaded, &inputs, 50).expect("tract runs the probed model");
    let correct = argmax_rows(&logits).iter().zip(&labels).filter(|(a, b)| a == b).count();
    let accuracy = correct as f64 / labels.len() as f64;
    eprintln!("probe test accuracy: {:.1}% on {} digits", 100.0 * accuracy, labels.len());
    assert!(accuracy >= 0.9, "test accuracy {accuracy}");

    let sample = inputs.slice_axis(nd::Axis(0), (0..16).into()).to_owned();
    if let Some(ort) = onnxruntime::run(&path, &sample) {
        let tract = logits.slice_axis(nd::Axis(0), (0..16).into()).to_owned().into_dyn();
        let diff = max_abs_diff(&ort, &tract);
        assert!(diff < 1e-3, "onnxruntime and tract differ by {diff}");
    }
}

#[test]
fn missing_tensor_unsupported_shape_and_unlabeled_data_are_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (backbone, _) = linear_backbone();
    let (path, x) = labelled_npz(dir.path(), 12);
    let data = Dataset::open(path.to_str().expect("utf-8")).expect("open");
    let (train, val) = data.split(Holdout::Fraction(0.25), 0).expect("split");
    let pre = Preprocess::for_model(&PreprocessOptions::default(), &backbone).expect("preprocess");

    let err =
        probe::probe(&backbone, &train, &val, &pre, &options("nope", Pooling::Cls), &Silent).expect_err("missing");
    assert!(matches!(err, ProbeError::UnknownTensor { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("'nope'") && msg.contains("feat"), "names the tensor and candidates: {msg}");

    let err =
        probe::probe(&backbone, &train, &val, &pre, &options("feat5", Pooling::Cls), &Silent).expect_err("rank 5");
    assert!(matches!(err, ProbeError::UnsupportedShape { .. }), "{err:?}");
    assert!(err.to_string().contains("'feat5'"), "{err}");

    let unlabeled = dir.path().join("unlabeled.npz");
    npz(&unlabeled, &[("x", x)]);
    let data = Dataset::open(unlabeled.to_str().expect("utf-8")).expect("open");
    let (train, val) = data.split(Holdout::Fraction(0.25), 0).expect("split");
    let err =
        probe::probe(&backbone, &train, &val, &pre, &options("feat", Pooling::Cls), &Silent).expect_err("unlabeled");
    assert!(err.to_string().contains("labels are needed"), "{err}");

    // The CLI says the same, before any forward pass.
    let rba = env!("CARGO_BIN_EXE_rba");
    let out = Command::new(rba)
        .args(["probe", "demo:vit", "--data", "demo", "--feature", "/norm/nope", "--out"])
        .arg(dir.path().join("x.onnx"))
        .output()
        .expect("rba");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("'/norm/nope'") && stderr.contains(VIT_FEATURE), "{stderr}");
    let out = Command::new(rba)
        .args(["probe", "demo:vit", "--feature", VIT_FEATURE, "--data"])
        .arg(&unlabeled)
        .arg("--out")
        .arg(dir.path().join("x.onnx"))
        .output()
        .expect("rba");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("labels are needed"));
    assert!(!dir.path().join("x.onnx").exists(), "nothing written on error");
}

/// Channels-first maps are pooled by their spatial mean, `[B, D]` features
/// are used as is; either way the graph computes `pool(feature) W + b`.
#[test]
fn spatial_and_flat_features_on_the_demo_models() {
    use rba_host::model::run::Runner;
    let (train, val) =
        Dataset::open("demo").expect("demo").calibration_split(Holdout::Fraction(0.2), 0).expect("split");
    let (train, val) = (train.subset(Some(300), Some(0)), val.subset(Some(100), Some(0)));
    let test = Dataset::open("demo:test").expect("test").subset(Some(100), None);
    for (which, feature, layout) in [
        (DemoModel::Resnet, "/layers/layers.8/Relu_1_output_0", "spatial_mean"),
        (DemoModel::Vit, "/Gather_1_output_0", "none"),
    ] {
        let backbone = which.load().expect("demo model");
        let pre = Preprocess::for_model(&PreprocessOptions::default(), &backbone).expect("preprocess");
        let p = probe::probe(
            &backbone,
            &train,
            &val,
            &pre,
            &ProbeOptions { batch: 50, ..ProbeOptions::new(feature) },
            &Silent,
        )
        .expect("probe");
        assert_eq!(p.record.pooling, layout);
        let (inputs, labels) = test.load_all(&pre).expect("load");
        let logits = predict(&p.model, &inputs, 50).expect("probed model runs");
        let correct = argmax_rows(&logits).iter().zip(&labels.expect("labels")).filter(|(a, b)| a == b).count();
        assert!(correct >= 85, "{feature}: {correct}/100 test digits");
        // The same feature taken from the original model, pooled here.
        let n = inputs.shape()[0];
        let runner = Runner::new(&backbone, n, &[feature.to_string()]).expect("runner");
        let raw = runner.run(inputs.clone()).expect("run").swap_remove(1);
        let d = p.layout.dim();
        let per = raw.len() / n;
        let k = p.classes.len();
        let values: Vec<f32> = raw.iter().copied().collect();
        for (i, img) in values.chunks_exact(per).enumerate() {
            let pooled: Vec<f64> = (0..d)
                .map(|c| {
                    let s = &img[c * (per / d)..(c + 1) * (per / d)];
                    s.iter().map(|&v| v as f64).sum::<f64>() / s.len() as f64
                })
                .collect();
            for j in 0..k {
                let want = p.bias[j] as f64 + (0..d).map(|c| pooled[c] * p.weight[c * k + j] as f64).sum::<f64>();
                let got = logits[[i, j]] as f64;
                assert!(
                    (got - want).abs() < 1e-3 * want.abs().max(1.0),
                    "{feature} image {i} class {j}: {got} vs {want}"
                );
            }
        }
    }
}

/// A probed model's head has seen its validation images; when `compact`
/// verifies on the same data source, the held-out accuracy of those images
/// is inflated, so compact leaves them out (and warns), or refuses when
/// nothing would be left.
#[test]
fn compact_leaves_out_the_held_out_images_a_probe_head_saw() {
    let rba = env!("CARGO_BIN_EXE_rba");
    let dir = tempfile::tempdir().expect("tempdir");
    let probe = |val: &str, out: &Path| {
        let o = Command::new(rba)
            .args(["probe", "demo:vit", "--data", "demo", "--feature", VIT_FEATURE, "--samples", "400"])
            .args(["--val-samples", val, "--batch", "50", "--out"])
            .arg(out)
            .output()
            .expect("rba probe");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    let compact = |model: &Path, out: &Path| {
        Command::new(rba)
            .arg("compact")
            .arg(model)
            .args(["--data", "demo", "--samples", "200", "--batch", "50", "--spans", "9..10", "--out"])
            .arg(out)
            .output()
            .expect("rba compact")
    };

    // 100 of the 300 validation digits (demo:val, compact's held-out set) fitted the head.
    let probed = dir.path().join("probed-100.onnx");
    probe("100", &probed);
    let model = OnnxModel::load(&probed).expect("probed");
    let record: probe::ProbeRecord =
        serde_json::from_str(model.metadata()[probe::METADATA_KEY]).expect("the record parses");
    let images = record.images.expect("the record lists the images");
    assert_eq!((images.train.len(), images.val.len(), images.source_items), (400, 100, 1797));
    let held_out = Dataset::open("demo:val").expect("val");
    let seen = match probe::seen_by_head(&model, &held_out) {
        probe::HeadSeen::Images { seen, .. } => seen,
        other => panic!("{other:?}"),
    };
    assert_eq!(seen, images.val.iter().copied().collect(), "exactly the probe's validation digits");
    // Other data (the test digits share the source but the head saw none of them).
    assert_eq!(probe::seen_by_head(&model, &Dataset::open("demo:test").expect("test")), probe::HeadSeen::Nothing);

    let slim = dir.path().join("slim.onnx");
    let out = compact(&probed, &slim);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("was fitted on 100 of the 300 held-out images of demo:val") && stderr.contains("inflated"),
        "{stderr}"
    );
    assert!(
        stderr.contains("note: left out the 100 held-out images the probe head saw; verifying on the remaining 200"),
        "{stderr}"
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(slim.with_extension("report.json")).expect("report")).expect("json");
    assert_eq!(report["compaction"]["held_out"]["images"], 200);
    assert_eq!(report["compaction"]["held_out"]["excluded_seen_by_probe"], 100);

    // Every validation digit fitted the head: nothing is left to verify on.
    let all = dir.path().join("probed-all.onnx");
    probe("500", &all);
    let out = compact(&all, &dir.path().join("none.onnx"));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("all 300 held-out images of demo:val were used to fit the probe head"), "{stderr}");
    assert!(!dir.path().join("none.onnx").exists());

    // A record from before images were recorded: a warning only.
    let mut old = model.clone();
    let mut v: serde_json::Value = serde_json::from_str(model.metadata()[probe::METADATA_KEY]).expect("json");
    v.as_object_mut().expect("object").remove("images");
    old.set_metadata(probe::METADATA_KEY, v.to_string());
    let old_path = dir.path().join("probed-old.onnx");
    old.save(&old_path, &DataPlacement::Inline).expect("save");
    let out = compact(&old_path, &dir.path().join("old-slim.onnx"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("warning: the probe head of") && stderr.contains("the same data source"), "{stderr}");
    assert!(!stderr.contains("left out"), "{stderr}");
}
