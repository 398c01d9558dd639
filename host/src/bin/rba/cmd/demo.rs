//! `rba demo`: the whole job on the embedded demo ViT and digits, with no
//! files needed: analyze, compact under an accuracy budget, deploy both
//! models to a board (by default the `local` one, a daemon on a thread of
//! this process behind a real pseudo-terminal), benchmark them A/B, measure
//! accuracy on the device, and write one HTML report.

use std::path::PathBuf;
use std::time::Instant;

use rba_host::board::{self, build_eval_bundle, BenchOptions, ModelArtifact};
use rba_host::compact::{self, evaluate, Budget, CacheOptions, HeldOut, SelectOptions, TranslatorKind};
use rba_host::data::{Holdout, PreprocessOptions};
use rba_host::demo::{DemoModel, Digits, Split};
use rba_host::model::run::Runtime;
use rba_host::model::{inspect, Model};
use rba_host::onnx::{write_atomically, DataPlacement};
use rba_host::report::compaction::{self, Calibration, CompactionReport, DataUsed};
use rba_host::report::device::{DeviceReport, Evaluation, DEVICE_SCHEMA_VERSION};
use rba_host::report::text::{self, format_bytes, format_ns, si};
use rba_host::report::{analysis, html};
use rba_protocol::RunPolicy;

use super::compact::translator_parser;
use super::deploy::connect;
use crate::args::{all_cores, calibrate, Calibrated, CalibrationArgs, HostRuntimeArgs, LinkArgs, PreprocessArgs};
use crate::progress::Terminal;

#[derive(clap::Args)]
pub struct Args {
    /// The embedded model to slim.
    #[arg(long, value_enum, default_value = "vit")]
    model: DemoChoice,
    /// Folder for the two models, the JSON results and report.html.
    #[arg(long, default_value = "rba-demo")]
    out: PathBuf,
    /// Largest drop of held-out (validation) accuracy allowed, in points.
    #[arg(long, default_value_t = 1.0)]
    max_drop: f64,
    /// Folded maps add no node, so the compacted model's latency follows its
    /// MACs; a separate `MatMul` per span costs more than its MACs on a model
    /// this small.
    #[arg(long, default_value = "folded", value_parser = translator_parser())]
    translator: TranslatorKind,
    /// Measured runs per model on the device (A/B interleaved).
    #[arg(long, default_value_t = 100)]
    runs: u32,
    /// The board (default `local`; `qemu-aarch64` runs the ARM build under emulation).
    #[command(flatten)]
    link: LinkArgs,
}

#[derive(Clone, Copy, PartialEq, clap::ValueEnum)]
enum DemoChoice {
    Vit,
    Resnet,
}

fn step(n: usize, what: &str) {
    println!("\n== [{n}/5] {what}");
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let started = Instant::now();
    let (which, spec) = match args.model {
        DemoChoice::Vit => (DemoModel::Vit, "demo:vit"),
        DemoChoice::Resnet => (DemoModel::Resnet, "demo:resnet"),
    };
    std::fs::create_dir_all(&args.out).map_err(|e| anyhow::anyhow!("{}: cannot create: {e}", args.out.display()))?;

    step(1, "the model");
    let calibration = CalibrationArgs {
        model: spec.into(),
        data: "demo".into(),
        samples: 500,
        holdout: Holdout::Fraction(0.2),
        seed: 0,
        batch: 50,
        threads: all_cores(),
        boundaries: None,
        preprocess: PreprocessArgs::default(),
        runtime: HostRuntimeArgs::default(),
    };
    let fold = matches!(args.translator, TranslatorKind::Folded | TranslatorKind::Auto);
    let Calibrated { model, pre, stats, calibration: calibration_set, held_out } =
        calibrate(&calibration, 3, fold, None)?;
    print!("{}", text::inspection(&inspect::inspect(&model)));

    step(2, "analyze: score every block and span on 500 calibration digits");
    let analysis = analysis::build(&model, &stats, calibration_set.name(), started);
    print!("{}", text::span_table(&analysis, 5));

    step(3, &format!("compact: remove blocks while validation accuracy drops <= {} point(s)", args.max_drop));
    let (inputs, labels) = held_out.load_all(&pre)?;
    let held = HeldOut::with_boundaries(
        &model,
        inputs,
        labels,
        calibration.batch,
        &CacheOptions::default(),
        calibration.threads,
    )?;
    let budget = Budget::MaxDrop(args.max_drop / 100.0);
    let options = SelectOptions { threads: calibration.threads, ..SelectOptions::default() };
    let selection =
        compact::select(&model, &stats, &held, &budget, args.translator, &options, &Terminal::notes_on_stdout())?;
    print!("{}", text::selection(&model, &selection));
    let slim_path = args.out.join(format!("slim-{}", which.file_name()));
    let compaction = CompactionReport::new(
        &model,
        &slim_path,
        &selection,
        Calibration {
            source: calibration_set.name().to_string(),
            images: stats.images,
            fitted_on: compaction::FITTED_ON_ORIGINAL.into(),
        },
        DataUsed { source: held_out.name().to_string(), images: held.len(), excluded_seen_by_probe: None },
    )?;
    let mut slim = selection.model.clone();
    slim.set_metadata(compaction::METADATA_KEY, serde_json::to_string(&compaction.compaction)?);
    which.load()?.save(args.out.join(which.file_name()), &DataPlacement::Inline)?;
    slim.save(&slim_path, &DataPlacement::Inline)?;
    write_atomically(&args.out.join("compaction.json"), &serde_json::to_vec_pretty(&compaction)?)?;

    step(4, "on the board: deploy both, benchmark A/B, accuracy on the test digits");
    let mut link_args = args.link.clone();
    if link_args.board.is_none() && link_args.port.is_none() && link_args.addr.is_none() {
        link_args.board = Some(board::LOCAL_BOARD.into());
    }
    let original = ModelArtifact::new(which.file_name().trim_end_matches(".onnx"), which.load()?);
    let compacted = ModelArtifact::new(format!("slim-{}", original.name), slim.clone());
    let eval_set =
        build_eval_bundle(&original.onnx, "demo:test", None, &PreprocessOptions::default(), Some(&original.onnx))?;
    let mut device = connect(&link_args)?;
    println!("device: {}", text::describe_identity(device.identity()));
    let mut deployed = Vec::new();
    for m in [&original, &compacted] {
        let d = device.deploy(m)?;
        println!(
            "  {} {} ({}, sha256 {}...)",
            if d.skipped { "already there:" } else { "deployed" },
            d.name,
            format_bytes(d.size),
            &d.sha256[..16]
        );
        deployed.push(d);
    }
    let options = BenchOptions { runs: RunPolicy { count: args.runs, min_time_ms: 0 }, ..BenchOptions::default() };
    let bench = device.bench(&[&original.name, &compacted.name], &options)?;
    print!("{}", text::bench(&bench));
    let evaluations =
        vec![device.evaluate(&original.name, &eval_set.bundle)?, device.evaluate(&compacted.name, &eval_set.bundle)?];
    let device_report = DeviceReport {
        schema_version: DEVICE_SCHEMA_VERSION,
        device: bench.device.clone(),
        target: device.label().to_string(),
        deployed,
        benchmark: bench.clone(),
        evaluation: Some(Evaluation {
            data: eval_set.source.clone(),
            samples: eval_set.bundle.num_samples(),
            results: evaluations.clone(),
        }),
    };
    write_atomically(&args.out.join("device.json"), &serde_json::to_vec_pretty(&device_report)?)?;

    step(5, "side by side on the 497 test digits (never used for fitting or selection)");
    let digits = Digits::embedded().map_err(anyhow::Error::msg)?;
    let test = digits.indices(Split::Test);
    let test_labels: Vec<usize> = test.iter().map(|&i| digits.label(i)).collect();
    let host = evaluate::evaluate(
        &[
            (original.name.clone(), Model::new(original.onnx.clone(), None)?, original.bytes.len() as u64),
            (compacted.name.clone(), Model::new(slim, None)?, compacted.bytes.len() as u64),
        ],
        &digits.batch(test),
        Some(&test_labels),
        50,
        5,
        &Runtime::Tract,
        1,
    )?;
    println!(
        "{:<22} {:>10} {:>12} {:>8} {:>8} {:>8} {:>11} {:>11} {:>24} {:>8}",
        "model",
        "top-1 host",
        "top-1 device",
        "params",
        "MACs",
        "file",
        "device p50",
        "device p99",
        "device speedup (95% CI)",
        "ideal"
    );
    for (k, row) in host.iter().enumerate() {
        let stats = &bench.results[k].stats;
        let speedup = match (k, bench.ab.as_ref().and_then(|ab| ab.speedup)) {
            (1, Some(s)) => format!("{:.2}x [{:.2}, {:.2}]", s.point, s.low, s.high),
            _ => "1.00x".into(),
        };
        let pct = |v: Option<f64>| v.map_or("-".into(), |v| format!("{:.2}%", 100.0 * v));
        println!(
            "{:<22} {:>10} {:>12} {:>8} {:>8} {:>8} {:>11} {:>11} {:>24} {:>7.2}x",
            row.model,
            pct(row.accuracy_top1),
            pct(evaluations[k].top1_accuracy),
            si(row.params),
            si(row.macs),
            format_bytes(row.file_bytes),
            format_ns(stats.p50_ns as f64),
            format_ns(stats.p99_ns as f64),
            speedup,
            row.ideal_speedup,
        );
    }
    let report_path = args.out.join("report.html");
    write_atomically(
        &report_path,
        html::merged_page(Some(&analysis), Some(&compaction), Some(&device_report)).as_bytes(),
    )?;
    println!(
        "\nwrote {} (models, compaction.json, device.json) in {:.0} s; open {}",
        args.out.display(),
        started.elapsed().as_secs_f64(),
        report_path.display()
    );
    Ok(())
}
