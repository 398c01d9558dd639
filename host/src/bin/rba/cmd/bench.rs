//! `rba bench`: latency of one model on a board, or an A/B comparison of
//! two models, or of one model under two runtimes (`--runtimes
//! tract,onnxruntime`); `--runtime onnxruntime --ep tensorrt,cuda` picks the
//! runtime and its execution providers; `--eval DATA` adds on-device
//! accuracy (under each runtime compared).

use std::path::PathBuf;

use anyhow::bail;
use rba_host::board::{build_eval_bundle, BenchArm, BenchOptions, ModelArtifact};
use rba_host::onnx::write_atomically;
use rba_host::report::device::{DeviceReport, Evaluation, DEVICE_SCHEMA_VERSION};
use rba_host::report::text;
use rba_protocol::{RunPolicy, RuntimeKind, RuntimeRequest};

use super::deploy::{connect, deployed_line};
use crate::args::{parse_runtime, BoardRuntimeArgs, LinkArgs, PreprocessArgs};

#[derive(clap::Args)]
pub struct Args {
    /// The model (or `demo:vit`, `demo:resnet`).
    model: String,
    /// A second model to compare against the first (B against A).
    model2: Option<String>,
    #[command(flatten)]
    link: LinkArgs,
    /// Measured runs (per model).
    #[arg(long, default_value_t = 50)]
    runs: u32,
    /// Warm-up runs (per model), not measured.
    #[arg(long, default_value_t = 5)]
    warmup: u32,
    /// Keep measuring until at least this many milliseconds have passed.
    #[arg(long, default_value_t = 0)]
    min_time_ms: u32,
    /// Inference threads (default: the board's).
    #[arg(long)]
    threads: Option<u32>,
    /// Evaluate on the device too: a data spec (`demo:test`, an image
    /// folder, a .npy/.npz with labels).
    #[arg(long, value_name = "DATA")]
    eval: Option<String>,
    /// Evaluate on at most this many samples (the first ones).
    #[arg(long, default_value_t = 500)]
    eval_samples: usize,
    #[command(flatten)]
    preprocess: PreprocessArgs,
    /// Also write the results (raw samples included) as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    #[command(flatten)]
    board_runtime: BoardRuntimeArgs,
    /// Compare one model under two runtimes, interleaved (e.g. tract,onnxruntime).
    #[arg(long, value_name = "A,B", value_delimiter = ',', value_parser = parse_runtime, conflicts_with_all = ["model2", "runtime"])]
    runtimes: Option<Vec<RuntimeKind>>,
}

impl Args {
    /// The runtime of each arm: one per model, or the two compared.
    fn arm_runtimes(&self, models: usize) -> anyhow::Result<Vec<Option<RuntimeRequest>>> {
        let r = &self.board_runtime;
        let kinds: Vec<RuntimeKind> = match &self.runtimes {
            Some(list) => {
                if list.len() != 2 {
                    bail!("--runtimes takes two runtimes to compare (e.g. tract,onnxruntime), got {}", list.len());
                }
                if r.names_providers() && !list.contains(&RuntimeKind::OnnxRuntime) {
                    bail!("--ep and --ep-policy choose onnxruntime's execution providers; tract runs on the CPU");
                }
                list.clone()
            }
            None => vec![r.kind()?; models],
        };
        Ok(kinds.into_iter().map(|k| r.request(k)).collect())
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let mut models = vec![ModelArtifact::from_spec(&args.model)?];
    if let Some(m) = &args.model2 {
        let b = ModelArtifact::from_spec(m)?;
        if b.name == models[0].name {
            anyhow::bail!("both models would be named '{}' on the device; rename one of the files", b.name);
        }
        models.push(b);
    }
    let runtimes = args.arm_runtimes(models.len())?;
    // One model under two runtimes: two arms of the same model.
    let arms: Vec<BenchArm> = if args.runtimes.is_some() {
        runtimes.iter().map(|r| BenchArm { model: models[0].name.clone(), runtime: r.clone() }).collect()
    } else {
        models.iter().zip(&runtimes).map(|(m, r)| BenchArm { model: m.name.clone(), runtime: r.clone() }).collect()
    };
    // Build the bundle before connecting: data errors come first and fast.
    let eval_set = match &args.eval {
        Some(data) => {
            // The first model's host outputs are the reference: for two
            // models the original, for two runtimes what tract on the host
            // computes.
            let reference = (arms.len() == 2).then(|| &models[0].onnx);
            let pre = (&args.preprocess).into();
            Some(build_eval_bundle(&models[0].onnx, data, Some(args.eval_samples), &pre, reference)?)
        }
        None => None,
    };
    let mut device = connect(&args.link)?;
    let mut deployed = Vec::new();
    for m in &models {
        let d = device.deploy(m)?;
        println!("{}", deployed_line(&d, device.label()));
        deployed.push(d);
    }
    let options = BenchOptions {
        warmup: RunPolicy { count: args.warmup, min_time_ms: 0 },
        runs: RunPolicy { count: args.runs, min_time_ms: args.min_time_ms },
        threads: args.threads,
        ..BenchOptions::default()
    };
    let benchmark = device.bench_arms(&arms, &options)?;
    print!("{}", text::bench(&benchmark));
    let mut evaluation = None;
    if let Some(set) = &eval_set {
        let results = arms
            .iter()
            .map(|a| device.evaluate_with(&a.model, &set.bundle, a.runtime.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        print!("{}", text::device_evaluation(&results, &set.source));
        evaluation = Some(Evaluation { data: set.source.clone(), samples: set.bundle.num_samples(), results });
    }
    if let Some(path) = args.json {
        let report = DeviceReport {
            schema_version: DEVICE_SCHEMA_VERSION,
            device: benchmark.device.clone(),
            target: device.label().to_string(),
            deployed,
            benchmark,
            evaluation,
        };
        write_atomically(&path, &serde_json::to_vec_pretty(&report)?)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
