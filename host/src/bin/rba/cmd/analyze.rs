//! `rba analyze`: score every block and span; write report.json and report.html.

use std::path::PathBuf;

use rba_host::onnx::write_atomically;
use rba_host::report::{analysis, html, text};

use crate::args::{calibrate, Calibrated, CalibrationArgs, StatsArgs};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    calibration: CalibrationArgs,
    /// Longest span (in blocks) to score.
    #[arg(long, default_value_t = 3)]
    max_span: usize,
    /// Folder for report.json and report.html.
    #[arg(long, default_value = "rba-analysis")]
    out: PathBuf,
    #[command(flatten)]
    stats: StatsArgs,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let out = &args.out;
    let Calibrated { model, stats, calibration, .. } =
        calibrate(&args.calibration, args.max_span, false, args.stats.stats.as_deref())?;
    let report = analysis::build(&model, &stats, calibration.name(), started);
    print!("{}", text::span_table(&report, 15));
    std::fs::create_dir_all(out).map_err(|e| anyhow::anyhow!("{}: cannot create: {e}", out.display()))?;
    write_atomically(&out.join("report.json"), &serde_json::to_vec_pretty(&report)?)?;
    write_atomically(&out.join("report.html"), html::analysis_page(&report).as_bytes())?;
    println!("wrote {} and {}", out.join("report.json").display(), out.join("report.html").display());
    Ok(())
}
