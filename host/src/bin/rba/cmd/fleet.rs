//! `rba fleet status|deploy|bench|rollback`: one command on every board of
//! an inventory (or those with `--tags`), `--parallel N` at a time; a table
//! per board, `--json` and `--html` reports.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use clap::Subcommand;
use rba_host::board::{BenchOptions, ModelArtifact, Pinning};
use rba_host::fleet::{self, FleetEvents, FleetOptions, FleetTask, Inventory};
use rba_host::onnx::write_atomically;
use rba_host::report::fleet::text;
use rba_host::report::html::fleet_page;
use rba_protocol::RunPolicy;

use super::deploy::GateArgs;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: FleetCommand,
}

/// What every fleet command takes.
#[derive(clap::Args)]
struct Common {
    /// The inventory (TOML): boards with name, link, address or port, key file,
    /// profile and tags (see boards/fleet/example.toml).
    #[arg(long)]
    inventory: PathBuf,
    /// Only boards carrying every one of these tags.
    #[arg(long, value_delimiter = ',')]
    tags: Vec<String>,
    /// Boards worked on at once.
    #[arg(long, default_value_t = 4)]
    parallel: usize,
    /// Start no board after the first failure (boards in flight finish).
    #[arg(long)]
    stop_on_failure: bool,
    /// Write the fleet report (JSON, REPORT.md "Fleet report") here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the fleet page (HTML: outcomes, latency across boards, failed gates) here.
    #[arg(long)]
    html: Option<PathBuf>,
    /// Known-boards file where board identities are pinned (default: $RBA_KNOWN_BOARDS,
    /// else ~/.config/rba/known_boards).
    #[arg(long)]
    known_boards: Option<PathBuf>,
}

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once per process
enum FleetCommand {
    /// Every board's applications: active model, SHA-256, since when, last event.
    Status {
        /// Only this application.
        #[arg(long)]
        app: Option<String>,
        /// History entries kept per application in the JSON report.
        #[arg(long, default_value_t = 10)]
        history: u32,
        #[command(flatten)]
        common: Common,
    },
    /// Upload a model and make it APP's active model on every board whose gates hold.
    Deploy {
        /// The ONNX model (or `demo:vit`, `demo:resnet`).
        model: String,
        /// The application to activate the model as.
        #[arg(long, value_name = "APP")]
        activate: String,
        /// Name on the boards (default: the file name without `.onnx`).
        #[arg(long)]
        name: Option<String>,
        /// Activate on this many boards first (inventory order) and go on only if
        /// every one of them ends with the model active.
        #[arg(long, default_value_t = 0)]
        canary: usize,
        #[command(flatten)]
        gates: GateArgs,
        #[command(flatten)]
        common: Common,
    },
    /// Upload a model and benchmark it on every board.
    Bench {
        /// The ONNX model (or `demo:vit`, `demo:resnet`).
        model: String,
        /// Measured runs per board.
        #[arg(long, default_value_t = 50)]
        runs: u32,
        /// Warm-up runs per board.
        #[arg(long, default_value_t = 5)]
        warmup: u32,
        /// Inference threads (default: each board's).
        #[arg(long)]
        threads: Option<u32>,
        #[command(flatten)]
        common: Common,
    },
    /// Restore APP's previous model on every board.
    Rollback {
        /// The application.
        app: String,
        #[command(flatten)]
        common: Common,
    },
}

/// Progress lines on stderr, one per event, prefixed by the board and the
/// time since the start.
struct Lines {
    started: Instant,
}

impl FleetEvents for Lines {
    fn event(&self, board: &str, message: &str) {
        eprintln!("[{:>6.1} s] {board}: {message}", self.started.elapsed().as_secs_f64());
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let (task, common) = match args.command {
        FleetCommand::Status { app, history, common } => (FleetTask::Status { app, history }, common),
        FleetCommand::Deploy { model, activate, name, canary, gates, common } => {
            let mut artifact = ModelArtifact::from_spec(&model)?;
            if let Some(n) = name {
                artifact.name = rba_host::board::device_name(n);
            }
            let plan = gates.plan(&activate, artifact)?;
            return go(FleetTask::Deploy(plan), common, canary);
        }
        FleetCommand::Bench { model, runs, warmup, threads, common } => {
            let options = BenchOptions {
                warmup: RunPolicy { count: warmup, min_time_ms: 0 },
                runs: RunPolicy { count: runs, min_time_ms: 0 },
                threads,
                ..BenchOptions::default()
            };
            (FleetTask::Bench { model: ModelArtifact::from_spec(&model)?, options }, common)
        }
        FleetCommand::Rollback { app, common } => (FleetTask::Rollback { app }, common),
    };
    go(task, common, 0)
}

fn go(task: FleetTask, common: Common, canary: usize) -> anyhow::Result<()> {
    if common.parallel == 0 {
        anyhow::bail!("--parallel must be at least 1");
    }
    let inventory = Inventory::load(&common.inventory)?;
    let boards = inventory.select(&common.tags);
    if boards.is_empty() {
        anyhow::bail!("no board of {} carries the tags {}", common.inventory.display(), common.tags.join(", "));
    }
    let options = FleetOptions {
        parallel: common.parallel,
        canary,
        stop_on_failure: common.stop_on_failure,
        pinning: common.known_boards.map_or(Pinning::Default, Pinning::File),
        inventory: common.inventory.display().to_string(),
        tags: common.tags.clone(),
    };
    let report = fleet::run(&boards, &task, &options, Arc::new(Lines { started: Instant::now() }));
    print!("{}", text(&report));
    write(common.json.as_deref(), || Ok(serde_json::to_vec_pretty(&report)?))?;
    write(common.html.as_deref(), || Ok(fleet_page(&report).into_bytes()))?;
    if !report.all_ok() {
        anyhow::bail!(
            "{} of {} board(s) did not end as asked{}",
            report.summary.boards - report.summary.ok,
            report.summary.boards,
            report.halted.as_ref().map_or(String::new(), |h| format!(" ({h})"))
        );
    }
    Ok(())
}

fn write(path: Option<&Path>, bytes: impl FnOnce() -> anyhow::Result<Vec<u8>>) -> anyhow::Result<()> {
    if let Some(p) = path {
        write_atomically(p, &bytes()?)?;
        println!("wrote {}", p.display());
    }
    Ok(())
}
