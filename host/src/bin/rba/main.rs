//! The `rba` command line: one module per command under `cmd/`; the work
//! happens in the `rba_host` library.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod args;
mod cmd;
mod progress;

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

// Parsed once per process: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Show a model's inputs, outputs, size and the blocks rba detects.
    Inspect(cmd::inspect::Args),
    /// Stream the calibration images (or one shard of them) and write their
    /// statistics to a file, for analyze/compact --stats and stats merge.
    Calibrate(cmd::calibrate::Args),
    /// Statistics files: merge shards, show what a file holds.
    Stats(cmd::stats::Args),
    /// Score every block and candidate span on calibration images; write
    /// report.json and report.html.
    Analyze(cmd::analyze::Args),
    /// Replace redundant spans by closed-form maps, verified on held-out data,
    /// and write the compacted ONNX model.
    Compact(cmd::compact::Args),
    /// Compare models side by side: accuracy, agreement, size, host latency.
    Evaluate(cmd::evaluate::Args),
    /// The whole job on the embedded demo ViT, no files needed: analyze,
    /// compact, deploy to a local board over a pseudo-terminal, benchmark
    /// A/B, accuracy on the device, one HTML report.
    Demo(cmd::demo::Args),
    /// Merge analysis, compaction and device results into one HTML page.
    Report(cmd::report::Args),
    /// Fit a linear classifier on a feature of a (headless) model in closed
    /// form and append it, so the backbone can be compacted and deployed.
    Probe(cmd::probe::Args),
    /// Probe serial ports, board profiles with TCP addresses and the
    /// in-process `local` board; show each device's identity.
    Devices(cmd::devices::Args),
    /// Upload a model to a board; skipped when the board already holds the
    /// same bytes (SHA-256) under that name. With --activate APP: make it the
    /// application's active model if every --gate holds on the board.
    Deploy(cmd::deploy::Args),
    /// Measure a model's latency on a board, or A/B-compare two models with
    /// interleaved runs; `--eval DATA` adds on-device top-1 accuracy.
    Bench(cmd::bench::Args),
    /// A board's applications: the active model, its SHA-256, since when, the
    /// gate figures, what a rollback restores, the history.
    Status(cmd::status::Args),
    /// Restore an application's previous model on a board (byte for byte).
    Rollback(cmd::rollback::Args),
    /// One command on every board of an inventory: status, deploy (with
    /// gates and canaries), bench, rollback.
    Fleet(cmd::fleet::Args),
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Inspect(a) => cmd::inspect::run(a),
        Command::Calibrate(a) => cmd::calibrate::run(a),
        Command::Stats(a) => cmd::stats::run(a),
        Command::Analyze(a) => cmd::analyze::run(a),
        Command::Compact(a) => cmd::compact::run(a),
        Command::Evaluate(a) => cmd::evaluate::run(a),
        Command::Demo(a) => cmd::demo::run(a),
        Command::Report(a) => cmd::report::run(a),
        Command::Probe(a) => cmd::probe::run(a),
        Command::Devices(a) => cmd::devices::run(a),
        Command::Deploy(a) => cmd::deploy::run(a),
        Command::Bench(a) => cmd::bench::run(a),
        Command::Status(a) => cmd::status::run(a),
        Command::Rollback(a) => cmd::rollback::run(a),
        Command::Fleet(a) => cmd::fleet::run(a),
    }
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
