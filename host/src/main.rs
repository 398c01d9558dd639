//! The `rba` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use rba_host::demo::{DemoModel, Digits, Split};
use rba_host::inspect;
use rba_host::model::Model;
use rba_host::onnx::DataPlacement;
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
    }
    Ok(())
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
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
