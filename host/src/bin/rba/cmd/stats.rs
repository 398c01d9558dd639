//! `rba stats`: statistics files (host/STATS.md): merge shards, show what a
//! file holds.

use std::path::{Path, PathBuf};

use rba_host::calibrate::file::StatsFile;
use rba_host::report::text::format_bytes;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Add shard files (`rba calibrate --shard I/N`) up to the statistics
    /// of all their images. They must come from the same model,
    /// boundaries, preprocessing, calibration images, batch, max span and
    /// fold statistics, each shard once, all N of them.
    Merge {
        /// The shard files (any order).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Where to write the merged statistics.
        #[arg(long)]
        out: PathBuf,
        /// Write the merge of an incomplete set of shards too (to merge the
        /// rest into it later); analyze and compact refuse such a file.
        #[arg(long)]
        allow_partial: bool,
    },
    /// Show what a statistics file holds (and verify it).
    Show { file: PathBuf },
}

pub fn run(args: Args) -> anyhow::Result<()> {
    match args.command {
        Command::Merge { files, out, allow_partial } => {
            let started = std::time::Instant::now();
            let paths: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
            let merged = StatsFile::merge_files(&paths)?;
            let shards = &merged.provenance.shards;
            if !shards.is_complete() {
                let missing = shards.missing().iter().map(usize::to_string).collect::<Vec<_>>().join(", ");
                if !allow_partial {
                    anyhow::bail!(
                        "the files hold {} of the calibration images: shard(s) {missing} of {} are missing \
                         (--allow-partial writes the partial merge)",
                        shards.describe(),
                        shards.count
                    );
                }
                eprintln!("warning: writing a partial merge: shard(s) {missing} of {} are missing", shards.count);
            }
            let summary = merged.provenance.summary(merged.statistics.images);
            let size = merged.write(&out)?;
            println!(
                "merged {} file(s) into {} ({}, {:.2} s): {summary}",
                files.len(),
                out.display(),
                format_bytes(size),
                started.elapsed().as_secs_f64()
            );
        }
        Command::Show { file } => {
            let f = StatsFile::read(&file)?;
            let p = &f.provenance;
            println!(
                "{}: rba statistics, format version {}, written by {}",
                file.display(),
                rba_host::calibrate::file::FORMAT_VERSION,
                p.tool
            );
            println!("  model        {} (SHA-256 {})", p.model.name, p.model.sha256);
            println!("  boundaries   {} ({})", p.boundaries.len(), p.boundaries.join(", "));
            println!("  spans        up to {} blocks ({} with statistics)", p.max_span, f.statistics.spans.len());
            match &p.fold_sites {
                Some(s) => println!(
                    "  fold sites   {} at boundaries {:?}",
                    s.len(),
                    s.iter().map(|s| s.boundary).collect::<Vec<_>>()
                ),
                None => println!("  fold sites   not captured (--no-fold)"),
            }
            println!("  preprocess   {:?}", p.preprocess);
            println!(
                "  data         {} (calibration {}: {} images, --holdout {} --seed {} --samples {}, fingerprint {})",
                p.data.spec,
                p.data.calibration,
                p.data.images,
                p.data.holdout,
                p.data.seed,
                p.data.samples,
                p.data.fingerprint
            );
            println!(
                "  shards       {} ({} images here), batch {}, groups of {} images",
                p.shards.describe(),
                f.statistics.images,
                p.batch,
                p.group_images
            );
        }
    }
    Ok(())
}
