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

/// `--runtime onnxruntime` on the host: the capture runs the demo ViT on
/// ONNX Runtime (boundaries as extra graph outputs of a rewritten model);
/// every span's statistics match tract's within float noise, and selection
/// from either makes the same choices.
#[test]
fn host_capture_on_onnxruntime_matches_tract() {
    use rba_host::calibrate::{capture, CaptureOptions};
    use rba_host::compact::{select, Budget, CacheOptions, HeldOut, SelectOptions, TranslatorKind};
    use rba_host::data::{Dataset, Holdout, Preprocess, PreprocessOptions};
    use rba_host::demo::DemoModel;
    use rba_host::model::run::{self as host_run, Runner};
    use rba_host::progress::Silent;

    let Some(lib) = onnxruntime::require_library("host capture on onnxruntime") else { return };
    let ort = host_run::onnxruntime(Some(lib)).expect("onnxruntime");
    let model = Model::new(DemoModel::Vit.load().expect("vit"), None).expect("blocks");
    let pre = Preprocess::for_model(&PreprocessOptions::default(), &model.onnx).expect("preprocess");
    let (calibration, held_out) =
        Dataset::open("demo").unwrap().calibration_split(Holdout::Fraction(0.2), 0).expect("split");
    let calibration = calibration.subset(Some(200), Some(0));

    // The boundaries themselves, one batch: the same tensors within 1e-4.
    let names: Vec<String> = model.blocks.boundaries.clone();
    let (x, _) = calibration.subset(Some(8), Some(0)).load_all(&pre).expect("images");
    let on_tract = Runner::new(&model.onnx, 8, &names).unwrap().run(x.clone()).unwrap();
    let on_ort = Runner::on(&ort, &model.onnx, 8, &names, 2).unwrap().run(x).unwrap();
    assert_eq!(on_tract.len(), 1 + names.len(), "the logits, then every boundary");
    for (a, b) in on_tract.iter().zip(&on_ort) {
        assert_eq!(a.shape(), b.shape());
        assert!(max_abs_diff(a, b) < 1e-4, "tract and onnxruntime differ by {}", max_abs_diff(a, b));
    }

    let stats_on = |runtime: &host_run::Runtime| {
        let batches = calibration.batches(&pre, 50).map(|b| b.map(|(x, _labels)| x));
        let options = CaptureOptions { batch: 50, max_span: 2, threads: 2, fold: true, runtime: runtime.clone() };
        capture(&model, batches, Some(200), &options, &Silent).expect("capture")
    };
    let (t, o) = (stats_on(&host_run::Runtime::Tract), stats_on(&ort));
    assert_eq!((t.images, o.images), (200, 200));
    let (st, so) = (t.span_scores(), o.span_scores());
    assert_eq!(st.len(), so.len());
    let near = |a: f64, b: f64, rel: f64| (a - b).abs() <= rel * a.abs().max(b.abs()).max(1e-6);
    for (a, b) in st.iter().zip(&so) {
        assert_eq!((a.start, a.end), (b.start, b.end));
        assert!(near(a.br_all_tokens, b.br_all_tokens, 1e-4), "BR {} vs {}", a.br_all_tokens, b.br_all_tokens);
        assert!(near(a.cosine, b.cosine, 1e-5), "cosine {} vs {}", a.cosine, b.cosine);
        assert!(
            (a.linear_residual - b.linear_residual).abs() < 1e-4,
            "1-R^2 {} vs {}",
            a.linear_residual,
            b.linear_residual
        );
    }

    let (inputs, labels) = held_out.subset(Some(100), Some(0)).load_all(&pre).expect("held-out");
    let held = HeldOut::with_boundaries(&model, inputs, labels, 50, &CacheOptions::default(), 2).expect("held-out");
    let choose = |stats| {
        let sel = select(
            &model,
            stats,
            &held,
            &Budget::Remove(2),
            TranslatorKind::Folded,
            &SelectOptions::default(),
            &Silent,
        )
        .expect("select");
        sel.replacements.iter().map(|r| (r.span.start, r.span.end)).collect::<Vec<_>>()
    };
    assert_eq!(choose(&t), choose(&o), "the same blocks replaced");
}

/// An explicit library path that holds none is an error naming it.
#[test]
fn host_onnxruntime_with_a_missing_library_says_where_it_looked() {
    let err = rba_host::model::run::onnxruntime(Some("/nonexistent/libonnxruntime.so.1.20.1".into())).unwrap_err();
    let text = err.to_string();
    assert!(text.starts_with("onnxruntime is not available: "), "{text}");
    assert!(text.contains("/nonexistent/libonnxruntime.so.1.20.1"), "{text}");
}

/// `rba evaluate --runtime onnxruntime` and `rba analyze --runtime
/// onnxruntime` through the binary: the same accuracy and agreement as on
/// tract, the same report shape; a library that is not there is an error.
#[test]
fn cli_evaluate_and_analyze_on_onnxruntime() {
    let Some(lib) = onnxruntime::require_library("rba evaluate --runtime onnxruntime") else { return };
    let rba = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_rba")).args(args).output().expect("run rba");
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        eprintln!("$ rba {}\n{text}", args.join(" "));
        (out.status.success(), text)
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let lib = lib.display().to_string();
    let rows = |runtime: &str| {
        let json = dir.path().join(format!("{runtime}.json"));
        let json_arg = json.display().to_string();
        let mut args = vec!["evaluate", "demo:vit", "--data", "demo:test", "--samples", "200", "--rounds", "3"];
        args.extend(["--runtime", runtime, "--json", &json_arg]);
        if runtime == "onnxruntime" {
            args.extend(["--ort-library", &lib]);
        }
        let (ok, text) = rba(&args);
        assert!(ok, "{text}");
        assert!(text.contains(&format!("200 images from demo:test on {runtime}")), "{text}");
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).expect("json")).expect("valid json");
        v
    };
    let (t, o) = (rows("tract"), rows("onnxruntime"));
    assert_eq!(t[0]["accuracy_top1"], o[0]["accuracy_top1"], "the same top-1 on the same digits");
    assert!(t[0]["accuracy_top1"].as_f64().unwrap() > 0.9);

    let report = dir.path().join("analysis");
    let report_arg = report.display().to_string();
    let (ok, text) = rba(&[
        "analyze",
        "demo:resnet",
        "--data",
        "demo",
        "--samples",
        "40",
        "--batch",
        "20",
        "--runtime",
        "onnxruntime",
        "--ort-library",
        &lib,
        "--out",
        &report_arg,
    ]);
    assert!(ok, "{text}");
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(report.join("report.json")).expect("json")).expect("valid json");
    assert_eq!(v["blocks"].as_array().map(Vec::len), Some(9));

    let (ok, text) = rba(&[
        "evaluate",
        "demo:vit",
        "--data",
        "demo:test",
        "--runtime",
        "onnxruntime",
        "--ort-library",
        "/nonexistent/ort",
    ]);
    assert!(!ok);
    assert!(text.contains("error: onnxruntime is not available: ") && text.contains("/nonexistent/ort"), "{text}");
    let (ok, text) = rba(&["evaluate", "demo:vit", "--data", "demo:test", "--ort-library", &lib]);
    assert!(!ok);
    assert!(text.contains("--ort-library applies to --runtime onnxruntime"), "{text}");
}
