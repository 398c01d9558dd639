//! Command-line arguments shared by several commands, and their conversion
//! into the library's plain option types.

use std::path::PathBuf;

use clap::builder::{PossibleValuesParser, TypedValueParser};
use rba_host::board::LinkOptions;
use rba_host::calibrate::file::{self, DataId, ModelId, Needs, Provenance, Shards, StatsFile};
use rba_host::calibrate::shard::Shard;
use rba_host::calibrate::{self, CaptureOptions, Statistics};
use rba_host::data::preprocess::parse_scale;
use rba_host::data::{Dataset, Holdout, Hw, Layout, Preprocess, PreprocessOptions};
use rba_host::model::run::{self, Runtime};
use rba_host::model::Model;
use rba_protocol::{EpPolicy, ExecutionProvider, RuntimeKind, RuntimeRequest};

use crate::progress::Terminal;

/// Preprocessing flags.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct PreprocessArgs {
    /// Resize every image to H,W (or N for a square) before cropping.
    #[arg(long, value_name = "H,W", conflicts_with = "resize_shorter")]
    pub size: Option<Hw>,
    /// Resize keeping the aspect ratio so the shorter side is N pixels.
    #[arg(long, value_name = "N")]
    pub resize_shorter: Option<usize>,
    /// Center-crop to H,W (or N for a square) after resizing.
    #[arg(long, value_name = "H,W")]
    pub crop: Option<Hw>,
    /// Per-channel mean subtracted after scaling (one value or one per channel).
    #[arg(long, value_name = "A,B,C", value_delimiter = ',', allow_hyphen_values = true)]
    pub mean: Option<Vec<f32>>,
    /// Per-channel standard deviation divided by after subtracting the mean.
    #[arg(long, value_name = "A,B,C", value_delimiter = ',', allow_hyphen_values = true)]
    pub std: Option<Vec<f32>>,
    /// Factor applied to raw pixel values first, e.g. 1/255.
    #[arg(long, value_name = "F", value_parser = parse_scale)]
    pub scale: Option<f32>,
    /// Model input layout (default: from the model input shape).
    #[arg(long, value_parser = PossibleValuesParser::new(["nchw", "nhwc"]).try_map(|s| s.parse::<Layout>()))]
    pub layout: Option<Layout>,
    /// Channels the model takes (1 = grayscale, 3 = RGB; default: from the model).
    #[arg(long, value_name = "C")]
    pub channels: Option<usize>,
    /// A HuggingFace preprocessor_config.json to take preprocessing from.
    #[arg(long, value_name = "FILE")]
    pub preprocessor_config: Option<PathBuf>,
}

impl From<&PreprocessArgs> for PreprocessOptions {
    fn from(a: &PreprocessArgs) -> Self {
        PreprocessOptions {
            size: a.size,
            resize_shorter: a.resize_shorter,
            crop: a.crop,
            mean: a.mean.clone(),
            std: a.std.clone(),
            scale: a.scale,
            layout: a.layout,
            channels: a.channels,
            preprocessor_config: a.preprocessor_config.clone(),
        }
    }
}

/// How to reach a device.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct LinkArgs {
    /// Board: a profile name (boards/NAME.toml) or path, `local` (a board
    /// running in this process over a pseudo-terminal) or `qemu-aarch64`
    /// (the cross-built ARM daemon under qemu-user).
    #[arg(long)]
    pub board: Option<String>,
    /// Serial port of the board (e.g. /dev/ttyACM0, or a pty path).
    #[arg(long, conflicts_with = "addr")]
    pub port: Option<String>,
    /// Serial baud rate (default: the profile's, else 115200).
    #[arg(long)]
    pub baud: Option<u32>,
    /// TCP address of the board, HOST:PORT (the port defaults to the profile's, else 7878).
    #[arg(long)]
    pub addr: Option<String>,
    /// File with the board's pre-shared key (else $RBA_KEY); required on TCP.
    #[arg(long)]
    pub key_file: Option<PathBuf>,
    /// Model store of the `local` and `qemu-aarch64` boards (default: a temporary directory).
    #[arg(long)]
    pub store: Option<PathBuf>,
}

impl From<&LinkArgs> for LinkOptions {
    fn from(a: &LinkArgs) -> Self {
        LinkOptions {
            board: a.board.clone(),
            port: a.port.clone(),
            baud: a.baud,
            addr: a.addr.clone(),
            key_file: a.key_file.clone(),
            store: a.store.clone(),
        }
    }
}

/// The model and the calibration data: shared by `analyze` and `compact`.
#[derive(clap::Args)]
pub struct CalibrationArgs {
    /// The ONNX model (or `demo:vit`, `demo:resnet` for the embedded ones).
    pub model: String,
    /// Images: an ImageFolder, a flat folder, a .npy/.npz file, or `demo`.
    #[arg(long)]
    pub data: String,
    /// Calibration images to use.
    #[arg(long, default_value_t = 500)]
    pub samples: usize,
    /// Held out from calibration for verification (fraction or count; the
    /// demo digits use their fixed split).
    #[arg(long, default_value = "0.2")]
    pub holdout: Holdout,
    /// Seed for the held-out split and the calibration subset.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Images per forward pass.
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// Threads for the model's and the statistics' matrix products (default: all cores).
    #[arg(long, default_value_t = all_cores())]
    pub threads: usize,
    /// Use these boundary tensors instead of detecting blocks.
    #[arg(long, value_delimiter = ',')]
    pub boundaries: Option<Vec<String>>,
    #[command(flatten)]
    pub preprocess: PreprocessArgs,
    #[command(flatten)]
    pub runtime: HostRuntimeArgs,
}

/// What runs the model on this machine: capture, probe features, evaluation.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct HostRuntimeArgs {
    /// Run the model here with tract (built in) or onnxruntime (ONNX Runtime's library on the
    /// CPU: --ort-library, else $ORT_DYLIB_PATH, python3's onnxruntime package, system folders).
    #[arg(long = "runtime", value_name = "RUNTIME", default_value = "tract", value_parser = parse_runtime)]
    pub kind: RuntimeKind,
    /// ONNX Runtime's library (the file or its folder) for --runtime onnxruntime.
    #[arg(long, value_name = "PATH")]
    pub ort_library: Option<PathBuf>,
}

impl HostRuntimeArgs {
    pub fn runtime(&self) -> anyhow::Result<Runtime> {
        Ok(match self.kind {
            RuntimeKind::Tract => {
                if self.ort_library.is_some() {
                    anyhow::bail!("--ort-library applies to --runtime onnxruntime");
                }
                Runtime::Tract
            }
            RuntimeKind::OnnxRuntime => {
                let runtime = run::onnxruntime(self.ort_library.clone())?;
                if let Runtime::OnnxRuntime(setup) = &runtime {
                    eprintln!("the model runs here on onnxruntime ({}, CPU)", setup.library.display());
                }
                runtime
            }
        })
    }
}

/// The runtime on the board and its execution providers (`rba bench`, and
/// the gates of `rba deploy --activate` and `rba fleet deploy`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct BoardRuntimeArgs {
    /// The runtime on the board: tract (built in) or onnxruntime (the board's ONNX Runtime
    /// library).
    #[arg(long, value_name = "RUNTIME", value_parser = parse_runtime)]
    pub runtime: Option<RuntimeKind>,
    /// onnxruntime's execution providers, in order of preference (cpu, xnnpack, cuda,
    /// tensorrt; default: the board profile's).
    #[arg(long, value_name = "EP,...", value_delimiter = ',', value_parser = parse_ep)]
    pub ep: Vec<ExecutionProvider>,
    /// strict: fail when a provider does not register or nodes run elsewhere (the CPU, unless
    /// listed); fallback: run with what registered and report it (default: the board's).
    #[arg(long, value_name = "POLICY", value_parser = parse_policy)]
    pub ep_policy: Option<EpPolicy>,
}

impl BoardRuntimeArgs {
    /// Whether providers or a policy were given (they mean onnxruntime).
    pub fn names_providers(&self) -> bool {
        !self.ep.is_empty() || self.ep_policy.is_some()
    }

    /// The request for `kind`, with the providers and policy given (`None`: tract).
    pub fn request(&self, kind: RuntimeKind) -> Option<RuntimeRequest> {
        match kind {
            RuntimeKind::Tract => None,
            RuntimeKind::OnnxRuntime => Some(RuntimeRequest::onnxruntime(self.ep.clone(), self.ep_policy)),
        }
    }

    /// The runtime asked for (providers without `--runtime` mean onnxruntime).
    pub fn kind(&self) -> anyhow::Result<RuntimeKind> {
        let kind = match self.runtime {
            Some(k) => k,
            None if self.names_providers() => RuntimeKind::OnnxRuntime,
            None => RuntimeKind::Tract,
        };
        if kind == RuntimeKind::Tract && self.names_providers() {
            anyhow::bail!("--ep and --ep-policy choose onnxruntime's execution providers; tract runs on the CPU");
        }
        Ok(kind)
    }
}

fn parse_ep(s: &str) -> Result<ExecutionProvider, String> {
    ExecutionProvider::from_name(s)
        .ok_or_else(|| format!("unknown execution provider '{s}' (cpu, xnnpack, cuda or tensorrt)"))
}

fn parse_policy(s: &str) -> Result<EpPolicy, String> {
    EpPolicy::from_name(s).ok_or_else(|| format!("unknown policy '{s}' (strict or fallback)"))
}

pub fn parse_runtime(s: &str) -> Result<RuntimeKind, String> {
    RuntimeKind::from_name(s).ok_or_else(|| format!("unknown runtime '{s}' (tract or onnxruntime)"))
}

pub fn all_cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// The model, its preprocessing and the calibration split, before capture.
pub struct Prepared {
    pub model: Model,
    pub pre: Preprocess,
    /// The whole calibration set (after the split and `--samples`).
    pub calibration: Dataset,
    pub held_out: Dataset,
}

/// Loads the model and splits the data, as every calibrating command does.
pub fn prepare(args: &CalibrationArgs) -> anyhow::Result<Prepared> {
    let model = Model::new(rba_host::demo::load_model_spec(&args.model)?, args.boundaries.as_deref())?;
    let pre = Preprocess::for_model(&(&args.preprocess).into(), &model.onnx)?;
    let (calibration, held_out) = Dataset::open(&args.data)?.calibration_split(args.holdout, args.seed)?;
    let calibration = calibration.subset(Some(args.samples), Some(args.seed));
    Ok(Prepared { model, pre, calibration, held_out })
}

/// What a statistics file captured from `prepared` records: a one-shot
/// capture; `max_span`, `fold_sites` and `shards` are the caller's to set.
pub fn provenance(args: &CalibrationArgs, prepared: &Prepared) -> anyhow::Result<Provenance> {
    let Prepared { model, pre, calibration, .. } = prepared;
    Ok(Provenance {
        tool: file::tool(),
        model: ModelId { name: args.model.clone(), sha256: file::model_sha256(model) },
        boundaries: model.blocks.boundaries.clone(),
        max_span: 0,
        fold_sites: None,
        preprocess: pre.clone(),
        data: DataId::new(&args.data, calibration, args.holdout, args.seed, args.samples),
        batch: args.batch,
        group_images: calibrate::group_images(model, args.batch)?,
        shards: Shards::one(Shard::WHOLE),
    })
}

/// A model with its calibration statistics, and the held-out data left over.
pub struct Calibrated {
    pub model: Model,
    pub pre: Preprocess,
    pub stats: Statistics,
    pub calibration: Dataset,
    pub held_out: Dataset,
}

/// Loads the model, splits the data and captures the statistics, or, with
/// `stats`, reads them from a file written by `rba calibrate` for the same
/// model, boundaries, preprocessing and calibration images.
pub fn calibrate(
    args: &CalibrationArgs,
    max_span: usize,
    fold: bool,
    stats: Option<&std::path::Path>,
) -> anyhow::Result<Calibrated> {
    let prepared = prepare(args)?;
    let stats = match stats {
        Some(path) => {
            let provenance = provenance(args, &prepared)?;
            let model = &prepared.model;
            let shown = path.display().to_string();
            let needs = Needs { max_span, fold_sites: fold.then(|| Provenance::fold_sites(model)) };
            let file = StatsFile::read(path)?;
            let note = file.provenance.summary(file.statistics.images);
            let stats = file.statistics_for(&shown, &provenance, &needs)?;
            eprintln!("statistics from {shown}: {note}");
            stats
        }
        None => {
            let Prepared { model, pre, calibration, .. } = &prepared;
            let runtime = args.runtime.runtime()?;
            let options = CaptureOptions { batch: args.batch, max_span, threads: args.threads, fold, runtime };
            let batches = calibration.batches(pre, args.batch).map(|b| b.map(|(x, _labels)| x));
            calibrate::capture(model, batches, Some(calibration.len()), &options, &Terminal::stderr())?
        }
    };
    let Prepared { model, pre, calibration, held_out } = prepared;
    Ok(Calibrated { model, pre, stats, calibration, held_out })
}

/// `--stats FILE` of `analyze` and `compact`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct StatsArgs {
    /// Read the calibration statistics from this file (written by `rba
    /// calibrate`, or merged by `rba stats merge`) instead of streaming the
    /// calibration images; it must come from the same model, boundaries,
    /// preprocessing and calibration images (--data, --holdout, --seed,
    /// --samples) as the flags given here.
    #[arg(long, value_name = "FILE")]
    pub stats: Option<PathBuf>,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        pre: PreprocessArgs,
    }

    #[test]
    fn flags_parse_sizes_scales_and_negative_means() {
        let cli = Cli::try_parse_from([
            "rba",
            "--size",
            "224",
            "--crop",
            "200,180",
            "--mean",
            "-0.5,0.25,1",
            "--scale",
            "1/255",
            "--layout",
            "nhwc",
        ])
        .expect("parse");
        let pre = PreprocessOptions::from(&cli.pre);
        assert_eq!(pre.size, Some(Hw::new(224, 224)));
        assert_eq!(pre.crop, Some(Hw::new(200, 180)));
        assert_eq!(pre.mean, Some(vec![-0.5, 0.25, 1.0]));
        assert_eq!(pre.scale, Some(1.0 / 255.0));
        assert_eq!(pre.layout, Some(Layout::Nhwc));
        assert!(Cli::try_parse_from(["rba", "--size", "0"]).is_err());
        assert!(Cli::try_parse_from(["rba", "--scale", "1/0"]).is_err());
        assert!(Cli::try_parse_from(["rba", "--size", "4", "--resize-shorter", "4"]).is_err());
        assert!(Cli::try_parse_from(["rba", "--layout", "chw4"]).is_err());
    }
}
