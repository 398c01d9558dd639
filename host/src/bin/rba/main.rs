//! The `rba` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod demo_cli;
mod device_cli;
mod probe_cli;

use rba_host::analyze::{self, CaptureOptions};
use rba_host::compact::{self, Budget, HeldOut, TranslatorKind};
use rba_host::data::{Dataset, Holdout, Preprocess, PreprocessArgs};
use rba_host::inspect;
use rba_host::model::Model;
use rba_host::onnx::{write_atomically, DataPlacement};
use rba_host::surgery::Span;

#[derive(Parser)]
#[command(
    name = "rba",
    version,
    about = "Find redundant blocks in vision models and replace them with closed-form linear maps"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show a model's inputs, outputs, size and the blocks rba detects.
    Inspect {
        /// The ONNX model (or `demo:vit`, `demo:resnet`).
        model: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Use these boundary tensors (comma separated, in any order) instead
        /// of detecting blocks.
        #[arg(long, value_delimiter = ',')]
        boundaries: Option<Vec<String>>,
    },
    /// Score every block and candidate span on calibration images; write
    /// report.json and report.html.
    Analyze {
        #[command(flatten)]
        calibration: CalibrationArgs,
        /// Longest span (in blocks) to score.
        #[arg(long, default_value_t = 3)]
        max_span: usize,
        /// Folder for report.json and report.html.
        #[arg(long, default_value = "rba-analysis")]
        out: PathBuf,
    },
    /// Replace redundant spans by closed-form maps, verified on held-out data,
    /// and write the compacted ONNX model.
    Compact {
        #[command(flatten)]
        calibration: CalibrationArgs,
        /// Where to write the compacted model.
        #[arg(long)]
        out: PathBuf,
        /// Replace exactly these spans, e.g. `5..6,9..10` (boundary indices).
        #[arg(long, value_delimiter = ',', group = "budget")]
        spans: Option<Vec<Span>>,
        /// Remove the best K blocks.
        #[arg(long, group = "budget")]
        remove: Option<usize>,
        /// Remove as many blocks as possible while the held-out metric drops
        /// by at most P points (accuracy with labels, else top-1 agreement).
        #[arg(long, group = "budget")]
        max_drop: Option<f64>,
        /// Remove blocks until parameters are at most this fraction of the original.
        #[arg(long, group = "budget")]
        target_params: Option<f64>,
        /// Remove blocks until MACs are at most this fraction of the original.
        #[arg(long, group = "budget")]
        target_macs: Option<f64>,
        #[arg(long, value_enum, default_value = "linear")]
        translator: TranslatorKind,
        /// Held-out images for verification (at most).
        #[arg(long, default_value_t = 1000)]
        held_out_samples: usize,
        /// Longest span (in blocks) with fit statistics; adjacent removed
        /// blocks merge into one span, up to this length.
        #[arg(long, default_value_t = 4)]
        max_span: usize,
        /// After selection, refit each translator on the model with the
        /// earlier spans already replaced (one more calibration pass per span)
        /// instead of on the original model's activations.
        #[arg(long)]
        sequential: bool,
    },
    /// Compare models side by side: accuracy, agreement, size, host latency.
    Evaluate {
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
    },
    /// The whole job on the embedded demo ViT, no files needed: analyze,
    /// compact, deploy to a local board over a pseudo-terminal, benchmark
    /// A/B, accuracy on the device, one HTML report.
    Demo(demo_cli::DemoArgs),
    /// Merge analysis, compaction and device results into one HTML page.
    Report {
        /// `report.json` from `rba analyze`.
        #[arg(long)]
        analysis: Option<PathBuf>,
        /// The `.report.json` next to a model written by `rba compact`.
        #[arg(long)]
        compaction: Option<PathBuf>,
        /// The JSON written by `rba bench --json`.
        #[arg(long)]
        device: Option<PathBuf>,
        #[arg(long, default_value = "report.html")]
        out: PathBuf,
    },
    /// Fit a linear classifier on a feature of a (headless) model in closed
    /// form and append it, so the backbone can be compacted and deployed.
    Probe(probe_cli::ProbeArgs),
    #[command(flatten)]
    Device(device_cli::DeviceCommand),
}

/// The model and the calibration data: shared by `analyze` and `compact`.
#[derive(clap::Args)]
struct CalibrationArgs {
    /// The ONNX model (or `demo:vit`, `demo:resnet` for the embedded ones).
    model: String,
    /// Images: an ImageFolder, a flat folder, a .npy/.npz file, or `demo`.
    #[arg(long)]
    data: String,
    /// Calibration images to use.
    #[arg(long, default_value_t = 500)]
    samples: usize,
    /// Held out from calibration for verification (fraction or count; the
    /// demo digits use their fixed split).
    #[arg(long, default_value = "0.2")]
    holdout: Holdout,
    /// Seed for the held-out split and the calibration subset.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Images per forward pass.
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Threads for the model's and the statistics' matrix products (default: all cores).
    #[arg(long, default_value_t = all_cores())]
    threads: usize,
    /// Use these boundary tensors instead of detecting blocks.
    #[arg(long, value_delimiter = ',')]
    boundaries: Option<Vec<String>>,
    #[command(flatten)]
    preprocess: PreprocessArgs,
}

fn all_cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// A model with its calibration statistics, and the held-out data left over.
struct Calibrated {
    model: Model,
    pre: Preprocess,
    stats: rba_host::capture::Statistics,
    calibration: Dataset,
    held_out: Dataset,
}

fn calibrate(args: &CalibrationArgs, max_span: usize, fold: bool) -> anyhow::Result<Calibrated> {
    let model = Model::new(rba_host::demo::load_model_spec(&args.model)?, args.boundaries.as_deref())?;
    let pre = Preprocess::for_model(&args.preprocess, &model.onnx)?;
    let (calibration, held_out) = Dataset::open(&args.data)?.calibration_split(args.holdout, args.seed)?;
    let calibration = calibration.subset(Some(args.samples), Some(args.seed));
    let options = CaptureOptions { batch: args.batch, max_span, threads: args.threads, progress: true, fold };
    let batches = calibration.batches(&pre, args.batch).map(|b| b.map(|(x, _labels)| x));
    let stats = analyze::capture(&model, batches, Some(calibration.len()), &options)?;
    Ok(Calibrated { model, pre, stats, calibration, held_out })
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Inspect { model, json, boundaries } => {
            let model = Model::new(rba_host::demo::load_model_spec(&model)?, boundaries.as_deref())?;
            let report = inspect::inspect(&model);
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", inspect::render_text(&report));
            }
        }
        Command::Demo(args) => demo_cli::run(args)?,
        Command::Report { analysis, compaction, device, out } => {
            if analysis.is_none() && compaction.is_none() && device.is_none() {
                anyhow::bail!("give at least one of --analysis, --compaction, --device");
            }
            fn read<T: serde::de::DeserializeOwned>(path: &Option<PathBuf>) -> anyhow::Result<Option<T>> {
                let Some(path) = path else { return Ok(None) };
                let bytes = std::fs::read(path).map_err(|e| anyhow::anyhow!("{}: cannot read: {e}", path.display()))?;
                let value = serde_json::from_slice(&bytes)
                    .map_err(|e| anyhow::anyhow!("{}: not the expected rba JSON: {e}", path.display()))?;
                Ok(Some(value))
            }
            let analysis: Option<analyze::Report> = read(&analysis)?;
            let (compaction, device): (Option<serde_json::Value>, _) = (read(&compaction)?, read(&device)?);
            let html = rba_host::report::merged_html(analysis.as_ref(), compaction.as_ref(), device.as_ref());
            write_atomically(&out, html.as_bytes())?;
            println!("wrote {}", out.display());
        }
        Command::Device(command) => device_cli::run(command)?,
        Command::Probe(args) => probe_cli::run(args)?,
        Command::Evaluate { models, data, samples, batch, rounds, json, preprocess } => {
            let mut loaded = Vec::new();
            for spec in &models {
                let onnx = rba_host::demo::load_model_spec(spec)?;
                let bytes = onnx.to_bytes().len() as u64;
                loaded.push((spec.clone(), Model::new(onnx, None)?, bytes));
            }
            let pre = Preprocess::for_model(&preprocess, &loaded[0].1.onnx)?;
            let dataset = Dataset::open(&data)?.subset(samples, None);
            let (inputs, labels) = dataset.load_all(&pre)?;
            let rows = compact::evaluate(&loaded, &inputs, labels.as_deref(), batch, rounds)?;
            println!("{} images from {}", dataset.len(), dataset.name());
            print!("{}", compact::render_evaluation(&rows));
            if let Some(path) = json {
                write_atomically(&path, &serde_json::to_vec_pretty(&rows)?)?;
            }
        }
        Command::Compact {
            calibration,
            out,
            spans,
            remove,
            max_drop,
            target_params,
            target_macs,
            translator,
            held_out_samples,
            max_span,
            sequential,
        } => {
            let budget = match (spans, remove, max_drop, target_params, target_macs) {
                (Some(s), ..) => Budget::Spans(s),
                (_, Some(k), ..) => Budget::Remove(k),
                (_, _, Some(p), ..) => Budget::MaxDrop(p / 100.0),
                (_, _, _, Some(f), _) => Budget::TargetParams(f),
                (.., Some(f)) => Budget::TargetMacs(f),
                _ => {
                    anyhow::bail!("say what to remove: --spans, --remove, --max-drop, --target-params or --target-macs")
                }
            };
            let (batch, seed, threads) = (calibration.batch, calibration.seed, calibration.threads);
            let Calibrated { model, pre, stats, calibration, held_out } =
                calibrate(&calibration, max_span, matches!(translator, TranslatorKind::Folded | TranslatorKind::Auto))?;
            let held_out = held_out.subset(Some(held_out_samples), Some(seed));
            let (inputs, labels) = held_out.load_all(&pre)?;
            let held = HeldOut::new(&model.onnx, inputs, labels, batch)?;
            if let (Budget::MaxDrop(p), Some(_)) = (&budget, &held.labels) {
                let n = held.len() as f64;
                let half_width = 1.96 * (0.25 / n).sqrt();
                if half_width > *p {
                    eprintln!(
                        "warning: {} held-out images give accuracy +/- {:.1} points (95%), more than the allowed drop of {:.1}",
                        held.len(),
                        100.0 * half_width,
                        100.0 * p
                    );
                }
            }
            let mut selection = compact::select(&model, &stats, &held, &budget, translator, |msg| eprintln!("{msg}"))?;
            let mut fitted_on = "original model activations";
            if sequential {
                let spans: Vec<(Span, TranslatorKind)> =
                    selection.replacements.iter().map(|r| (r.span, r.translator)).collect();
                let (refit, replacements) = compact::refit_sequentially(&model, &spans, |partial, max_span| {
                    let options = CaptureOptions { batch, max_span, threads, progress: true, fold: true };
                    let batches = calibration.batches(&pre, batch).map(|b| b.map(|(x, _labels)| x));
                    analyze::capture(partial, batches, Some(calibration.len()), &options)
                        .map_err(|e| compact::CompactError::Budget(e.to_string()))
                })?;
                let result = held.measure(&refit)?;
                println!(
                    "sequential refit: held-out metric {:.4} (fitted on the original activations: {:.4})",
                    result.metric(),
                    selection.result.metric()
                );
                (selection.model, selection.replacements, selection.result) = (refit, replacements, result);
                fitted_on = "sequentially, each span on the model with the earlier spans replaced";
            }
            let (record, report) = compaction_report(
                &model,
                &out,
                &selection,
                (calibration.name(), stats.images),
                (held_out.name(), held.len()),
                fitted_on,
            );
            let mut slim = selection.model.clone();
            slim.set_metadata("rba.compaction", record.to_string());
            slim.save(&out, &DataPlacement::Inline)?;
            let report = serde_json::to_vec_pretty(&report)?;
            let report_path = out.with_extension("report.json");
            write_atomically(&report_path, &report)?;
            print!("{}", compact::render(&model, &selection));
            println!("wrote {} and {}", out.display(), report_path.display());
        }
        Command::Analyze { calibration, max_span, out } => {
            let started = std::time::Instant::now();
            let Calibrated { model, stats, calibration, .. } = calibrate(&calibration, max_span, false)?;
            let report = analyze::report(&model, &stats, calibration.name(), started);
            print!("{}", analyze::render_table(&report, 15));
            std::fs::create_dir_all(&out).map_err(|e| anyhow::anyhow!("{}: cannot create: {e}", out.display()))?;
            let json = serde_json::to_vec_pretty(&report)?;
            write_atomically(&out.join("report.json"), &json)?;
            write_atomically(&out.join("report.html"), rba_host::report::html(&report).as_bytes())?;
            println!("wrote {} and {}", out.join("report.json").display(), out.join("report.html").display());
        }
    }
    Ok(())
}

/// What a compaction did, as recorded in the model's metadata (`rba.compaction`)
/// and as the full JSON report (with every verified trial).
fn compaction_report(
    model: &Model,
    out: &std::path::Path,
    selection: &compact::Selection,
    calibration: (&str, usize),
    held_out: (&str, usize),
    fitted_on: &str,
) -> (serde_json::Value, serde_json::Value) {
    let record = serde_json::json!({
        "replacements": &selection.replacements,
        "calibration": { "source": calibration.0, "images": calibration.1, "fitted_on": fitted_on },
        "held_out": { "source": held_out.0, "images": held_out.1 },
        "baseline": &selection.baseline,
        "result": &selection.result,
    });
    let report = serde_json::json!({
        "schema_version": 1,
        "model": model.onnx.path.display().to_string(),
        "output": out.display().to_string(),
        "compaction": record,
        "trials": &selection.trials,
        "proxy_spearman": &selection.proxy_spearman,
    });
    (record, report)
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Library errors already spell out their causes; `{e:#}` would repeat them.
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
