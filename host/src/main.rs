//! The `rba` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use rba_host::analyze::{self, CaptureOptions};
use rba_host::data::{Dataset, Holdout, Preprocess, PreprocessArgs};
use rba_host::demo::{DemoModel, Digits, Split};
use rba_host::inspect;
use rba_host::model::Model;
use rba_host::onnx::{write_atomically, DataPlacement};
use rba_host::runtime;

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
        /// The ONNX model.
        model: PathBuf,
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
        /// The ONNX model (or `demo:vit`, `demo:resnet` for the embedded ones).
        model: String,
        /// Images: an ImageFolder, a flat folder, a .npy/.npz file, or `demo`.
        #[arg(long)]
        data: String,
        /// Calibration images to use.
        #[arg(long, default_value_t = 500)]
        samples: usize,
        /// Held out from calibration for later verification (fraction or count;
        /// the demo digits use their fixed split).
        #[arg(long, default_value = "0.2")]
        holdout: Holdout,
        /// Seed for the held-out split and the calibration subset.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Images per forward pass.
        #[arg(long, default_value_t = 16)]
        batch: usize,
        /// Longest span (in blocks) to score.
        #[arg(long, default_value_t = 3)]
        max_span: usize,
        /// Threads for the statistics.
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// Folder for report.json and report.html.
        #[arg(long, default_value = "rba-analysis")]
        out: PathBuf,
        /// Use these boundary tensors instead of detecting blocks.
        #[arg(long, value_delimiter = ',')]
        boundaries: Option<Vec<String>>,
        #[command(flatten)]
        preprocess: PreprocessArgs,
    },
    /// Run rba on the embedded demo models (digits ViT and ResNet).
    Demo {
        /// Also write the embedded models to this folder.
        #[arg(long)]
        export: Option<PathBuf>,
    },
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Inspect { model, json, boundaries } => {
            let model = Model::load(&model, boundaries.as_deref())?;
            let report = inspect::inspect(&model);
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", inspect::render_text(&report));
            }
        }
        Command::Demo { export } => demo(export)?,
        Command::Analyze {
            model,
            data,
            samples,
            holdout,
            seed,
            batch,
            max_span,
            threads,
            out,
            boundaries,
            preprocess,
        } => {
            let started = std::time::Instant::now();
            let model = Model::new(load_model(&model)?, boundaries.as_deref())?;
            let pre = Preprocess::for_model(&preprocess, &model.onnx)?;
            let (calibration, _held_out) = Dataset::open(&data)?.calibration_split(holdout, seed)?;
            let calibration = calibration.subset(Some(samples), Some(seed));
            let options = CaptureOptions { batch, max_span, threads, progress: true };
            let batches = calibration.batches(&pre, batch).map(|b| b.map(|(x, _labels)| x));
            let stats = analyze::capture(&model, batches, Some(calibration.len()), &options)?;
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

/// Reads a model file, or one of the embedded demo models (`demo:vit`, `demo:resnet`).
fn load_model(spec: &str) -> anyhow::Result<rba_host::onnx::OnnxModel> {
    Ok(match spec {
        "demo:vit" => DemoModel::Vit.load()?,
        "demo:resnet" => DemoModel::Resnet.load()?,
        path => rba_host::onnx::OnnxModel::load(path)?,
    })
}

fn demo(export: Option<PathBuf>) -> anyhow::Result<()> {
    let digits = Digits::embedded().map_err(anyhow::Error::msg)?;
    let test = digits.indices(Split::Test);
    let inputs = digits.batch(test);
    for which in [DemoModel::Vit, DemoModel::Resnet] {
        let onnx = which.load()?;
        if let Some(dir) = &export {
            std::fs::create_dir_all(dir)?;
            onnx.save(dir.join(which.file_name()), &DataPlacement::Inline)?;
        }
        let model = Model::new(onnx, None)?;
        print!("{}", inspect::render_text(&inspect::inspect(&model)));
        let predicted = runtime::argmax_rows(&runtime::predict(&model.onnx, &inputs, 64)?);
        let correct = test.iter().zip(&predicted).filter(|(&i, &p)| digits.label(i) == p).count();
        println!(
            "test accuracy: {:.2}% ({correct}/{} held-out digits)\n",
            100.0 * correct as f64 / test.len() as f64,
            test.len()
        );
    }
    if let Some(dir) = &export {
        println!("wrote {} and {} to {}", DemoModel::Vit.file_name(), DemoModel::Resnet.file_name(), dir.display());
    }
    Ok(())
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
