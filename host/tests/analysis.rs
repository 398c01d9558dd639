//! Streaming statistics against a direct, non-streaming computation.

use rba_host::calibrate::{capture, CaptureOptions};
use rba_host::model::run::{nd, Runner};
use rba_host::model::Model;
use rba_host::progress::Silent;
use rba_host::report::analysis;
use rba_testkit::models::{conv_model, token_model};
use rba_testkit::tensors::random_input;

/// Boundary activations for all images at once, as f64 `[images][tokens][d]`.
fn direct_activations(model: &Model, x: &nd::ArrayD<f32>, channels_first: bool) -> Vec<Vec<Vec<Vec<f64>>>> {
    let runner = Runner::new(&model.onnx, x.shape()[0], &model.blocks.boundaries).expect("runner");
    let out = runner.run(x.clone()).expect("run");
    out[out.len() - model.blocks.boundaries.len()..]
        .iter()
        .map(|a| {
            let a = if channels_first { a.view().permuted_axes(vec![0, 2, 3, 1]).to_owned() } else { a.clone() };
            let d = *a.shape().last().expect("rank");
            let images = a.shape()[0];
            let flat: Vec<f64> = a.as_standard_layout().iter().map(|&v| v as f64).collect();
            let per = flat.len() / images;
            (0..images).map(|i| flat[i * per..(i + 1) * per].chunks(d).map(|t| t.to_vec()).collect()).collect()
        })
        .collect()
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn close(a: f64, b: f64, rel: f64) -> bool {
    (a - b).abs() <= rel * a.abs().max(b.abs()).max(1e-12)
}

/// Direct least-squares 1 - R^2 of Y ~ X T via the f64 normal equations.
fn direct_residual(x: &[Vec<f64>], y: &[Vec<f64>]) -> f64 {
    let d = x[0].len();
    let mut g = faer::Mat::<f64>::zeros(d, d);
    let mut c = faer::Mat::<f64>::zeros(d, d);
    for (xr, yr) in x.iter().zip(y) {
        for i in 0..d {
            for j in 0..d {
                g[(i, j)] += xr[i] * xr[j];
                c[(i, j)] += xr[i] * yr[j];
            }
        }
    }
    let t = faer::linalg::solvers::Solve::solve(&g.llt(faer::Side::Lower).expect("spd"), &c);
    let n = y.len() as f64;
    let mean: Vec<f64> = (0..d).map(|j| y.iter().map(|r| r[j]).sum::<f64>() / n).collect();
    let (mut res, mut tot) = (0.0, 0.0);
    for (xr, yr) in x.iter().zip(y) {
        for j in 0..d {
            let p: f64 = (0..d).map(|i| xr[i] * t[(i, j)]).sum();
            res += (p - yr[j]).powi(2);
            tot += (yr[j] - mean[j]).powi(2);
        }
    }
    res / tot
}

fn direct_cka(x: &[Vec<f64>], y: &[Vec<f64>]) -> f64 {
    let n = x.len() as f64;
    let centre = |m: &[Vec<f64>]| {
        let d = m[0].len();
        let mean: Vec<f64> = (0..d).map(|j| m.iter().map(|r| r[j]).sum::<f64>() / n).collect();
        m.iter().map(|r| r.iter().zip(&mean).map(|(v, mu)| v - mu).collect::<Vec<f64>>()).collect::<Vec<_>>()
    };
    let (xc, yc) = (centre(x), centre(y));
    let frob_sq = |a: &[Vec<f64>], b: &[Vec<f64>]| {
        let (da, db) = (a[0].len(), b[0].len());
        let mut s = 0.0;
        for i in 0..da {
            for j in 0..db {
                let v: f64 = a.iter().zip(b).map(|(ra, rb)| ra[i] * rb[j]).sum();
                s += v * v;
            }
        }
        s
    };
    frob_sq(&yc, &xc) / (frob_sq(&xc, &xc).sqrt() * frob_sq(&yc, &yc).sqrt())
}

#[test]
fn token_model_scores_match_direct_computation() {
    let model = Model::new(token_model(&[1, 2, 3, 4], 5, 8, Some(16)), None).expect("blocks");
    let x = random_input(&[37, 5, 8], 11);
    // Batches of 8 with a short last batch, as a dataset would stream them.
    let batches: Vec<Result<nd::ArrayD<f32>, String>> =
        (0..37).step_by(8).map(|s| Ok(x.slice_axis(nd::Axis(0), (s..(s + 8).min(37)).into()).to_owned())).collect();
    let options = CaptureOptions { batch: 8, max_span: 3, threads: 1, fold: false, ..Default::default() };
    let stats = capture(&model, batches, Some(37), &options, &Silent).expect("capture");
    assert_eq!(stats.images, 37);
    let acts = direct_activations(&model, &x, false);
    let scores = stats.span_scores();
    assert_eq!(scores.len(), 4 + 3 + 2, "spans of 1, 2 and 3 blocks");
    for s in &scores {
        let (hs, he) = (&acts[s.start], &acts[s.end]);
        let br_all = -hs
            .iter()
            .zip(he)
            .map(|(a, b)| a.iter().zip(b).map(|(u, v)| dot(u, u) + dot(v, v) - 2.0 * dot(u, v)).sum::<f64>())
            .sum::<f64>()
            / 37.0;
        let br_cls =
            -hs.iter().zip(he).map(|(a, b)| (0..8).map(|k| (a[0][k] - b[0][k]).powi(2)).sum::<f64>()).sum::<f64>()
                / 37.0;
        let tokens_s: Vec<Vec<f64>> = hs.iter().flatten().cloned().collect();
        let tokens_e: Vec<Vec<f64>> = he.iter().flatten().cloned().collect();
        let cos: Vec<f64> =
            tokens_s.iter().zip(&tokens_e).map(|(u, v)| dot(u, v) / (dot(u, u) * dot(v, v)).sqrt()).collect();
        let mean_cos = cos.iter().sum::<f64>() / cos.len() as f64;
        let angle =
            cos.iter().map(|c| c.clamp(-1.0, 1.0).acos() / std::f64::consts::PI).sum::<f64>() / cos.len() as f64;
        assert!(close(s.br_all_tokens, br_all, 1e-6), "BR all {} vs {br_all}", s.br_all_tokens);
        assert!(close(s.br_cls, br_cls, 1e-6), "BR cls {} vs {br_cls}", s.br_cls);
        assert!(close(s.cosine, mean_cos, 1e-6) && close(s.angular_distance, angle, 1e-6));
        // Chunk products are f32 (METHOD.md allows it; it halves the cost on
        // real models), and 1 - R^2 is a difference of near-equal sums.
        let residual = direct_residual(&tokens_s, &tokens_e);
        assert!(close(s.linear_residual, residual, 1e-5), "1-R^2 {} vs {residual}", s.linear_residual);
    }
    let cka = stats.cka_matrix();
    let cls = |b: usize| acts[b].iter().map(|img| img[0].clone()).collect::<Vec<_>>();
    for i in 0..5 {
        for j in 0..5 {
            let direct = if i == j { 1.0 } else { direct_cka(&cls(i), &cls(j)) };
            let got = cka[i][j].expect("varying features");
            assert!(close(got, direct, 1e-6), "CKA({i},{j}) {got} vs {direct}");
        }
    }
    let cosine = stats.cosine_matrix();
    let flat = |b: usize, img: usize| acts[b][img].concat();
    let direct: f64 = (0..37)
        .map(|k| {
            let (u, v) = (flat(1, k), flat(3, k));
            dot(&u, &v) / (dot(&u, &u) * dot(&v, &v)).sqrt()
        })
        .sum::<f64>()
        / 37.0;
    assert!(close(cosine[1][3].expect("same shape"), direct, 1e-6));
}

#[test]
fn conv_model_uses_channel_rows_and_spatial_means() {
    let model = Model::new(conv_model(&[1, 2, 3], 6, 4), None).expect("blocks");
    let x = random_input(&[20, 1, 4, 4], 2);
    let options = CaptureOptions { batch: 20, max_span: 2, threads: 1, fold: false, ..Default::default() };
    let stats = capture(&model, [Ok::<_, String>(x.clone())], Some(20), &options, &Silent).expect("capture");
    let acts = direct_activations(&model, &x, true);
    let mean_rows = |b: usize| -> Vec<Vec<f64>> {
        acts[b]
            .iter()
            .map(|img| (0..6).map(|c| img.iter().map(|p| p[c]).sum::<f64>() / img.len() as f64).collect())
            .collect()
    };
    let cka = stats.cka_matrix();
    assert!(close(cka[0][2].expect("varies"), direct_cka(&mean_rows(0), &mean_rows(2)), 1e-6));
    let scores = stats.span_scores();
    let s = scores.iter().find(|s| s.start == 1 && s.end == 2).expect("span 1..2");
    let pixels = |b: usize| acts[b].iter().flatten().cloned().collect::<Vec<_>>();
    // Conv blocks here are affine in the input: a linear map without bias
    // leaves a small residual, which must match the direct solve.
    assert!(close(s.linear_residual, direct_residual(&pixels(1), &pixels(2)), 1e-4));
}

#[test]
fn report_ranks_spans_and_counts_savings() {
    let model = Model::new(token_model(&[1, 2, 3, 4], 5, 8, Some(16)), None).expect("blocks");
    let x = random_input(&[16, 5, 8], 3);
    let stats = capture(&model, [Ok::<_, String>(x)], Some(16), &CaptureOptions::default(), &Silent).expect("capture");
    let r = analysis::build(&model, &stats, "random", std::time::Instant::now());
    assert!(r.spans.windows(2).all(|w| w[0].score.linear_residual <= w[1].score.linear_residual));
    let two = r.spans.iter().find(|s| s.score.start == 1 && s.score.end == 3).expect("span 1..3");
    assert_eq!(two.params_removed, 2 * 2 * 8 * 16);
    assert_eq!(two.translator_params, 64);
    assert_eq!(two.translator_macs, 5 * 64);
    assert_eq!(r.blocks.len(), 4);
    assert!(r.blocks.iter().all(|b| b.score.as_ref().is_some_and(|s| s.blocks == 1 && s.end == b.index)));
    let json = serde_json::to_value(&r).expect("json");
    assert_eq!(json["schema_version"], 1);
    assert!(json["spans"][0]["linear_residual"].is_number());
}

#[test]
fn cka_of_a_constant_boundary_is_undefined_not_zero() {
    let model = Model::new(token_model(&[1, 2], 3, 4, None), None).expect("blocks");
    // The same image every time: nothing varies.
    let x = nd::ArrayD::from_shape_fn(vec![6, 3, 4], |i| (i[1] * 4 + i[2]) as f32 * 0.1);
    let stats = capture(&model, [Ok::<_, String>(x)], Some(6), &CaptureOptions::default(), &Silent).expect("capture");
    let cka = stats.cka_matrix();
    assert_eq!(cka[0][1], None);
    assert_eq!(cka[1][1], Some(1.0));
}

#[test]
fn non_finite_activations_name_the_boundary() {
    let mut m = token_model(&[1, 2], 3, 4, None);
    m.path = "nan.onnx".into();
    let model = Model::new(m, None).expect("blocks");
    let mut x = random_input(&[4, 3, 4], 1);
    x[[2, 1, 1]] = f32::NAN;
    let err =
        capture(&model, [Ok::<_, String>(x)], Some(4), &CaptureOptions::default(), &Silent).unwrap_err().to_string();
    assert_eq!(err, "nan.onnx: boundary 'x' produced NaN or Inf activations");
}

#[test]
fn cli_writes_json_and_html_reports() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rba"))
        .args(["analyze", "demo:resnet", "--data", "demo", "--samples", "40", "--batch", "20", "--out"])
        .arg(dir.path())
        .output()
        .expect("run rba");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("on 40 images from demo:train"), "{stdout}");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("report.json")).expect("json")).expect("valid json");
    assert_eq!(report["data"]["images"], 40);
    assert_eq!(report["blocks"].as_array().map(Vec::len), Some(9));
    let html = std::fs::read_to_string(dir.path().join("report.html")).expect("html");
    assert!(html.contains("<svg") && !html.contains("<script"));
    assert!(!html.contains("src=\"http") && !html.contains("href=\"http"), "self-contained: no external resources");

    // A missing data folder: a clear error and nothing written.
    let empty = tempfile::tempdir().expect("tempdir");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rba"))
        .args(["analyze", "demo:resnet", "--data"])
        .arg(empty.path().join("nope"))
        .arg("--out")
        .arg(empty.path().join("report"))
        .output()
        .expect("run rba");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope"));
    assert!(!empty.path().join("report").exists());
}
