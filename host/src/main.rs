//! The `rba` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use rba_host::inspect;
use rba_host::model::Model;

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
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Inspect {
            model,
            json,
            boundaries,
        } => {
            let model = Model::load(&model, boundaries.as_deref())?;
            let report = inspect::inspect(&model);
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", inspect::render_text(&report));
            }
        }
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
