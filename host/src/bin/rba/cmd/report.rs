//! `rba report`: merge analysis, compaction and device JSON into one HTML page.

use std::path::{Path, PathBuf};

use rba_host::onnx::write_atomically;
use rba_host::report::html;

#[derive(clap::Args)]
pub struct Args {
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
}

fn read<T: serde::de::DeserializeOwned>(path: Option<&Path>) -> anyhow::Result<Option<T>> {
    let Some(path) = path else { return Ok(None) };
    let bytes = std::fs::read(path).map_err(|e| anyhow::anyhow!("{}: cannot read: {e}", path.display()))?;
    let value = serde_json::from_slice(&bytes)
        .map_err(|e| anyhow::anyhow!("{}: not the expected rba JSON: {e}", path.display()))?;
    Ok(Some(value))
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if args.analysis.is_none() && args.compaction.is_none() && args.device.is_none() {
        anyhow::bail!("give at least one of --analysis, --compaction, --device");
    }
    let analysis = read(args.analysis.as_deref())?;
    let compaction = read(args.compaction.as_deref())?;
    let device = read(args.device.as_deref())?;
    let page = html::merged_page(analysis.as_ref(), compaction.as_ref(), device.as_ref());
    write_atomically(&args.out, page.as_bytes())?;
    println!("wrote {}", args.out.display());
    Ok(())
}
