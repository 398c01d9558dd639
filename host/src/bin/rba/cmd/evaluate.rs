//! `rba evaluate`: models side by side on the same images.

use std::path::PathBuf;

use rba_host::compact::evaluate;
use rba_host::data::{Dataset, Preprocess};
use rba_host::model::run::with_tract_threads;
use rba_host::model::Model;
use rba_host::onnx::write_atomically;
use rba_host::report::text;

use crate::args::{all_cores, HostRuntimeArgs, PreprocessArgs};

#[derive(clap::Args)]
pub struct Args {
    /// The original model first, then compacted ones (`demo:vit` etc. allowed).
    #[arg(required = true)]
    models: Vec<String>,
    /// Evaluation images; for the demo digits use `demo:test`.
    #[arg(long)]
    data: String,
    /// Evaluate at most this many images.
    #[arg(long)]
    samples: Option<usize>,
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Interleaved latency rounds.
    #[arg(long, default_value_t = 30)]
    rounds: usize,
    /// Write the table as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    #[command(flatten)]
    preprocess: PreprocessArgs,
    #[command(flatten)]
    runtime: HostRuntimeArgs,
    /// Inference threads (default: all cores).
    #[arg(long, default_value_t = all_cores())]
    threads: usize,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let mut loaded = Vec::new();
    for spec in &args.models {
        let onnx = rba_host::demo::load_model_spec(spec)?;
        let bytes = onnx.to_bytes().len() as u64;
        loaded.push((spec.clone(), Model::new(onnx, None)?, bytes));
    }
    let pre = Preprocess::for_model(&(&args.preprocess).into(), &loaded[0].1.onnx)?;
    let dataset = Dataset::open(&args.data)?.subset(args.samples, None);
    let (inputs, labels) = dataset.load_all(&pre)?;
    let runtime = args.runtime.runtime()?;
    let rows = with_tract_threads(args.threads, || {
        evaluate::evaluate(&loaded, &inputs, labels.as_deref(), args.batch, args.rounds, &runtime, args.threads)
    })?;
    println!("{} images from {} on {}", dataset.len(), dataset.name(), args.runtime.kind.name());
    print!("{}", text::evaluation(&rows));
    if let Some(path) = args.json {
        write_atomically(&path, &serde_json::to_vec_pretty(&rows)?)?;
    }
    Ok(())
}
