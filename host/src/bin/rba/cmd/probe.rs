//! `rba probe`: turn a headless backbone into a classifier with a closed-form
//! linear head on a chosen feature tensor.

use std::path::PathBuf;

use clap::builder::{PossibleValuesParser, TypedValueParser};
use rba_host::data::{Dataset, Holdout, Preprocess};
use rba_host::demo::load_model_spec;
use rba_host::fit::probe::{self, Pooling, ProbeOptions, DEFAULT_LAMBDAS};
use rba_host::model::run::with_tract_threads;
use rba_host::onnx::DataPlacement;
use rba_host::report::text;

use crate::args::{all_cores, HostRuntimeArgs, PreprocessArgs};
use crate::progress::Terminal;

#[derive(clap::Args)]
pub struct Args {
    /// The backbone ONNX model (or `demo:vit`, `demo:resnet`).
    backbone: String,
    /// Labelled images: an ImageFolder, a .npz with labels, or `demo`.
    #[arg(long)]
    data: String,
    /// The tensor to fit the head on, e.g. the output of the final norm:
    /// `[B, T, D]` (pooled by --pool), `[B, C, H, W]` (spatial mean) or `[B, D]`.
    #[arg(long)]
    feature: String,
    /// Where to write the probed model.
    #[arg(long)]
    out: PathBuf,
    /// Pooling of a token feature: the CLS token (token 0) or the token mean.
    #[arg(long, default_value = "cls", value_parser = PossibleValuesParser::new(Pooling::NAMES).try_map(|s| s.parse::<Pooling>()))]
    pool: Pooling,
    /// Training images (at most).
    #[arg(long, default_value_t = 1000)]
    samples: usize,
    /// Validation images for choosing lambda (at most).
    #[arg(long, default_value_t = 500)]
    val_samples: usize,
    /// Held out from the data for validation (fraction or count; the demo
    /// digits use their fixed train/val split).
    #[arg(long, default_value = "0.2")]
    holdout: Holdout,
    /// Seed for the split and the subsets.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Images per forward pass.
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Relative ridge lambdas to try (multiples of trace(G)/D); default 1e-6..1e1.
    #[arg(long, value_delimiter = ',')]
    lambdas: Option<Vec<f64>>,
    /// Keep the head fitted on the training images only (by default the
    /// chosen lambda is refitted on train + validation).
    #[arg(long)]
    no_refit: bool,
    #[command(flatten)]
    preprocess: PreprocessArgs,
    #[command(flatten)]
    runtime: HostRuntimeArgs,
    /// Inference threads (default: all cores).
    #[arg(long, default_value_t = all_cores())]
    threads: usize,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let model = load_model_spec(&args.backbone)?;
    let pre = Preprocess::for_model(&(&args.preprocess).into(), &model)?;
    let data = Dataset::open(&args.data)?;
    // Fail before any forward pass when there is nothing to fit on.
    data.require_labels()?;
    let (train, val) = data.calibration_split(args.holdout, args.seed)?;
    let train = train.subset(Some(args.samples), Some(args.seed));
    let val = val.subset(Some(args.val_samples), Some(args.seed));
    let options = ProbeOptions {
        pooling: args.pool,
        relative_lambdas: args.lambdas.unwrap_or_else(|| DEFAULT_LAMBDAS.to_vec()),
        batch: args.batch,
        refit: !args.no_refit,
        runtime: args.runtime.runtime()?,
        threads: args.threads,
        ..ProbeOptions::new(&args.feature)
    };
    eprintln!("probe: {} training and {} validation images from {}", train.len(), val.len(), data.name());
    let result =
        with_tract_threads(args.threads, || probe::probe(&model, &train, &val, &pre, &options, &Terminal::stderr()))?;
    result.model.save(&args.out, &DataPlacement::Inline)?;
    print!("{}", text::probe(&result));
    println!("wrote {} (output '{}', metadata '{}')", args.out.display(), probe::OUTPUT, probe::METADATA_KEY);
    Ok(())
}
