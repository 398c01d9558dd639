//! Capture benchmark: plain forward throughput vs forward + streaming
//! statistics, measured in the same run, and peak RSS of a capture over 500
//! vs 2000 images (each in a fresh child process).
//!
//! `cargo bench -p rba-host --bench capture --profile dev` runs it on the
//! demo ViT (the dev profile optimises everything and reuses the test build);
//! `RBA_BENCH_MODELS=a.onnx,b.onnx` adds larger models (e.g. a ViT-S),
//! `RBA_BENCH_RSS=500,2000` sets the image counts of the memory runs.

use std::process::Command;
use std::time::Instant;

use rba_host::analyze::{capture, CaptureOptions};
use rba_host::demo::DemoModel;
use rba_host::model::Model;
use rba_host::onnx::OnnxModel;
use rba_host::runtime::{input_shape, nd, Runner};

const BATCH: usize = 8;

fn random_batch(shape: &[usize], seed: u64) -> nd::ArrayD<f32> {
    let mut s = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    nd::ArrayD::from_shape_fn(shape.to_vec(), |_| {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 40) as f32 / (1u64 << 24) as f32
    })
}

fn load(spec: &str) -> Model {
    let onnx = match spec {
        "demo:vit" => DemoModel::Vit.load().expect("embedded model"),
        path => OnnxModel::load(path).expect("model file"),
    };
    Model::new(onnx, None).expect("blocks")
}

fn batches(model: &Model, images: usize) -> impl Iterator<Item = Result<nd::ArrayD<f32>, String>> {
    let shape = input_shape(&model.onnx, BATCH).expect("input shape");
    (0..images.div_ceil(BATCH)).map(move |k| {
        let mut s = shape.clone();
        s[0] = BATCH.min(images - k * BATCH);
        Ok(random_batch(&s, k as u64))
    })
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).map(str::to_string))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

fn child_rss(spec: &str, images: usize) -> u64 {
    let out = Command::new(std::env::current_exe().expect("bench binary"))
        .env("RBA_BENCH_CHILD", format!("{spec}={images}"))
        .output()
        .expect("child");
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0)
}

fn main() {
    if let Ok(job) = std::env::var("RBA_BENCH_CHILD") {
        let (spec, images) = job.rsplit_once('=').expect("spec=images");
        let model = load(spec);
        let n: usize = images.parse().expect("count");
        capture(&model, batches(&model, n), Some(n), &CaptureOptions { batch: BATCH, ..Default::default() })
            .expect("capture");
        println!("{}", peak_rss_kib());
        return;
    }
    let mut specs = vec!["demo:vit".to_string()];
    if let Ok(extra) = std::env::var("RBA_BENCH_MODELS") {
        specs.extend(extra.split(',').filter(|s| !s.is_empty()).map(str::to_string));
    }
    let rss: Vec<usize> = std::env::var("RBA_BENCH_RSS")
        .unwrap_or_else(|_| "500,2000".into())
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .collect();
    let (small, large) = (rss.first().copied().unwrap_or(500), rss.get(1).copied().unwrap_or(2000));
    println!("| model | forward img/s | forward+stats img/s | stats overhead | peak RSS {small} | peak RSS {large} | ratio |");
    println!("|---|---|---|---|---|---|---|");
    for spec in &specs {
        let model = load(spec);
        let images = if model.shapes.values().map(|s| s.iter().product::<usize>()).max().unwrap_or(0) > 100_000 {
            32
        } else {
            400
        };
        let runner = Runner::new(&model.onnx, BATCH, &[]).expect("runner");
        let options = CaptureOptions { batch: BATCH, ..Default::default() };
        // Interleave the two measurements so machine noise hits both alike.
        let (mut forward, mut stats) = (0f64, 0f64);
        for _round in 0..3 {
            let t = Instant::now();
            for b in batches(&model, images) {
                let b = b.expect("batch");
                let mut padded = nd::ArrayD::zeros(runner.input_shape.clone());
                padded.slice_axis_mut(nd::Axis(0), (0..b.shape()[0]).into()).assign(&b);
                runner.run(padded).expect("forward");
            }
            forward += t.elapsed().as_secs_f64();
            let t = Instant::now();
            capture(&model, batches(&model, images), Some(images), &options).expect("capture");
            stats += t.elapsed().as_secs_f64();
        }
        let (fwd_ips, cap_ips) = (3.0 * images as f64 / forward, 3.0 * images as f64 / stats);
        let (rss500, rss2000) = (child_rss(spec, small), child_rss(spec, large));
        println!(
            "| {spec} | {fwd_ips:.1} | {cap_ips:.1} | {:+.1}% | {:.1} MiB | {:.1} MiB | {:.3} |",
            100.0 * (fwd_ips / cap_ips - 1.0),
            rss500 as f64 / 1024.0,
            rss2000 as f64 / 1024.0,
            rss2000 as f64 / rss500.max(1) as f64
        );
    }
}
