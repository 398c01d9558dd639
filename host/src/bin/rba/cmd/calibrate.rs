//! `rba calibrate`: stream the calibration images (or one shard of them)
//! and write the sufficient statistics to a file (host/STATS.md), which
//! `rba analyze --stats`, `rba compact --stats` and `rba stats merge` read.

use std::path::PathBuf;

use rba_host::calibrate::file::{Provenance, Shards, StatsFile};
use rba_host::calibrate::shard::{Shard, ShardSpec};
use rba_host::calibrate::{self, CaptureOptions};
use rba_host::report::text::format_bytes;

use crate::args::{prepare, provenance, CalibrationArgs, Prepared};
use crate::progress::Terminal;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    calibration: CalibrationArgs,
    /// Where to write the statistics.
    #[arg(long)]
    out: PathBuf,
    /// Longest span (in blocks) with statistics. A file serves `analyze`
    /// and `compact` with any --max-span up to this (the default is
    /// compact's; analyze's is 3).
    #[arg(long, default_value_t = 4)]
    max_span: usize,
    /// Leave out the fold statistics. By default they are captured, so the
    /// file serves every translator; without them `compact --translator
    /// folded|auto` refuses the file. They cost about as much again as the
    /// spans' statistics (time and file size).
    #[arg(long)]
    no_fold: bool,
    /// Capture one shard of the calibration images: `I/N` (0-based), or
    /// `auto` from a Kubernetes Indexed Job (JOB_COMPLETION_INDEX, with N
    /// from --shards or RBA_SHARDS) or a Slurm job array
    /// (SLURM_ARRAY_TASK_ID, SLURM_ARRAY_TASK_COUNT, SLURM_ARRAY_TASK_MIN).
    /// `rba stats merge` adds the N files up to the one-shot statistics.
    #[arg(long, value_name = "I/N|auto")]
    shard: Option<ShardSpec>,
    /// The number of shards for `--shard auto` in a Kubernetes Indexed Job
    /// (its spec.completions; default: $RBA_SHARDS).
    #[arg(long, value_name = "N", requires = "shard")]
    shards: Option<usize>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let c = &args.calibration;
    let shard = match args.shard {
        None => Shard::WHOLE,
        Some(ShardSpec::Fixed(s)) => s,
        Some(ShardSpec::Auto) => Shard::from_env(|k| std::env::var(k).ok(), args.shards)?,
    };
    if args.shards.is_some() && args.shard != Some(ShardSpec::Auto) {
        anyhow::bail!("--shards N only goes with --shard auto (with --shard I/N the count is N)");
    }
    let prepared = prepare(c)?;
    let provenance = provenance(c, &prepared)?;
    let Prepared { model, pre, calibration, .. } = prepared;
    let runtime = c.runtime.runtime()?;
    let options =
        CaptureOptions { batch: c.batch, max_span: args.max_span, threads: c.threads, fold: !args.no_fold, runtime };
    let positions = shard.positions(calibration.len(), provenance.group_images);
    let part = calibration.select(&positions)?;
    if shard != Shard::WHOLE {
        eprintln!(
            "shard {shard}: {} of the {} calibration images of {} (groups of {} images, every {}th from group {})",
            part.len(),
            calibration.len(),
            calibration.name(),
            provenance.group_images,
            shard.count,
            shard.index
        );
    }
    let stats = if part.is_empty() {
        eprintln!(
            "warning: shard {shard} holds no images ({} calibration images form {} group(s) of {}); its file is \
             empty but completes the set for `rba stats merge`",
            calibration.len(),
            calibration.len().div_ceil(provenance.group_images),
            provenance.group_images
        );
        calibrate::empty(&model, &options)?
    } else {
        let batches = part.batches(&pre, c.batch).map(|b| b.map(|(x, _labels)| x));
        calibrate::capture(&model, batches, Some(part.len()), &options, &Terminal::stderr())?
    };
    let provenance = Provenance {
        max_span: args.max_span,
        fold_sites: (!args.no_fold).then(|| Provenance::fold_sites(&model)),
        shards: Shards::one(shard),
        ..provenance
    };
    let summary = provenance.summary(stats.images);
    let file = StatsFile { provenance, statistics: stats };
    let size = file.write(&args.out)?;
    println!(
        "wrote {} ({}, {:.1} s): {summary}",
        args.out.display(),
        format_bytes(size),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
