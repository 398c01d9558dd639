//! `rba compact`: replace spans under a budget, verified on held-out data;
//! write the compacted model and its report.

use std::path::PathBuf;

use clap::builder::{PossibleValuesParser, TypedValueParser};
use rba_host::calibrate::{self, CaptureOptions};
use rba_host::compact::surgery::Span;
use rba_host::compact::{
    self, Budget, CacheOptions, CompactError, HeldOut, SelectOptions, SelectionMode, TranslatorKind,
};
use rba_host::data::Dataset;
use rba_host::fit::probe::{self, HeadSeen};
use rba_host::onnx::OnnxModel;
use rba_host::onnx::{write_atomically, DataPlacement};
use rba_host::report::compaction::{self, Calibration, CompactionReport, DataUsed};
use rba_host::report::text;

use crate::args::{calibrate, Calibrated, CalibrationArgs, StatsArgs};
use crate::progress::Terminal;

#[derive(clap::Args)]
pub struct Args {
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
    #[arg(long, default_value = "linear", value_parser = translator_parser())]
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
    #[command(flatten)]
    stats: StatsArgs,
    /// How candidates are measured: `tail` runs only the part of each
    /// candidate after the first boundary it changes, from the held-out
    /// activations cached once, candidates in parallel; `full` runs the whole
    /// model for every candidate, one after the other.
    #[arg(long, default_value = "tail", value_parser = PossibleValuesParser::new(SelectionMode::NAMES).try_map(|s| s.parse::<SelectionMode>()))]
    selection: SelectionMode,
    /// Per greedy step, verify only the K candidates whose changed span fits
    /// best (lowest 1-R^2 on the calibration statistics); for big models.
    #[arg(long, value_name = "K", value_parser = clap::value_parser!(u64).range(1..))]
    verify_top: Option<u64>,
    /// Memory for the cached held-out boundary activations (`--selection
    /// tail`), e.g. 512M or 4G; past it they go to a temporary file.
    /// Default: a quarter of the memory available.
    #[arg(long, value_name = "BYTES", value_parser = parse_bytes)]
    cache_budget: Option<u64>,
    /// Cache the held-out boundary activations in f16 (half the memory;
    /// tails start from rounded activations) instead of f32.
    #[arg(long)]
    cache_f16: bool,
}

/// `512M`, `4G`, `1500000` (bytes; K, M, G are powers of 1024).
fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (digits, unit) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&t[..i], c.to_ascii_uppercase()),
        _ => (t, 'B'),
    };
    let scale: u64 = match unit {
        'B' => 1,
        'K' => 1 << 10,
        'M' => 1 << 20,
        'G' => 1 << 30,
        _ => return Err(format!("'{s}': unknown unit '{unit}' (use K, M or G)")),
    };
    let v: f64 = digits.trim().parse().map_err(|_| format!("'{s}' is not a size such as 512M or 4G"))?;
    if !(v >= 0.0 && v.is_finite()) {
        return Err(format!("'{s}' is not a size"));
    }
    Ok((v * scale as f64) as u64)
}

/// `--translator`'s values, listed in `--help`.
pub fn translator_parser() -> impl TypedValueParser<Value = TranslatorKind> {
    PossibleValuesParser::new(TranslatorKind::NAMES).try_map(|s| s.parse::<TranslatorKind>())
}

impl Args {
    fn budget(&self) -> anyhow::Result<Budget> {
        Ok(match (&self.spans, self.remove, self.max_drop, self.target_params, self.target_macs) {
            (Some(s), ..) => Budget::Spans(s.clone()),
            (_, Some(k), ..) => Budget::Remove(k),
            (_, _, Some(p), ..) => Budget::MaxDrop(p / 100.0),
            (_, _, _, Some(f), _) => Budget::TargetParams(f),
            (.., Some(f)) => Budget::TargetMacs(f),
            _ => anyhow::bail!("say what to remove: --spans, --remove, --max-drop, --target-params or --target-macs"),
        })
    }
}

/// Warns when the held-out set is too small to resolve the allowed drop.
fn warn_if_too_few(budget: &Budget, held: &HeldOut) {
    if let (Budget::MaxDrop(p), Some(_)) = (budget, &held.labels) {
        let half_width = 1.96 * (0.25 / held.len() as f64).sqrt();
        if half_width > *p {
            eprintln!(
                "warning: {} held-out images give accuracy +/- {:.1} points (95%), more than the allowed drop of {:.1}",
                held.len(),
                100.0 * half_width,
                100.0 * p
            );
        }
    }
}

/// A probed model (`rba.probe`) whose head was fitted on images of the
/// held-out data would verify every candidate on images it learnt: its
/// held-out accuracy is inflated (~100%) and cannot rank candidates. The
/// images the record names are left out (with a note); a record that does
/// not name them (older rba) only gets a warning.
fn without_images_the_head_saw(
    model: &OnnxModel,
    name: &str,
    held_out: Dataset,
) -> anyhow::Result<(Dataset, Option<usize>)> {
    match probe::seen_by_head(model, &held_out) {
        HeadSeen::Nothing => Ok((held_out, None)),
        HeadSeen::Unknown { data } => {
            eprintln!(
                "warning: the probe head of {name} was fitted on {} and {} (rba.probe), the same data source as the \
                 held-out images ({}); if they overlap, held-out accuracy is inflated (~100%) and cannot rank \
                 candidates. Re-probe with this rba (it records which images the head saw, and compact leaves them \
                 out), or verify on other data",
                data.train,
                data.val,
                held_out.name()
            );
            Ok((held_out, None))
        }
        HeadSeen::Images { data, seen } => {
            let total = held_out.len();
            eprintln!(
                "warning: the probe head of {name} was fitted on {} of the {total} held-out images of {} \
                 (rba.probe: train {} ({} images), validation {} ({} images)); its accuracy on them is inflated \
                 (~100%) and cannot rank candidates",
                seen.len(),
                held_out.name(),
                data.train,
                data.train_images,
                data.val,
                data.val_images
            );
            let kept = held_out.without(&seen);
            if kept.is_empty() {
                anyhow::bail!(
                    "all {total} held-out images of {} were used to fit the probe head of {name}; verify on images it \
                     did not see: other --data, or probe with fewer --val-samples or another --holdout",
                    held_out.name()
                );
            }
            eprintln!(
                "note: left out the {} held-out images the probe head saw; verifying on the remaining {}",
                seen.len(),
                kept.len()
            );
            Ok((kept, Some(seen.len())))
        }
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let budget = args.budget()?;
    let c = &args.calibration;
    let (batch, seed, threads) = (c.batch, c.seed, c.threads);
    let runtime = c.runtime.runtime()?;
    let fold = matches!(args.translator, TranslatorKind::Folded | TranslatorKind::Auto);
    let Calibrated { model, pre, stats, calibration, held_out } =
        calibrate(c, args.max_span, fold, args.stats.stats.as_deref())?;
    let (held_out, excluded) = without_images_the_head_saw(&model.onnx, &c.model, held_out)?;
    let held_out = held_out.subset(Some(args.held_out_samples), Some(seed));
    let (inputs, labels) = held_out.load_all(&pre)?;
    let held = match args.selection {
        SelectionMode::Full => HeldOut::new(&model.onnx, inputs, labels, batch)?,
        SelectionMode::Tail => {
            let mut cache = CacheOptions { f16: args.cache_f16, ..CacheOptions::default() };
            if let Some(b) = args.cache_budget {
                cache.budget = b;
            }
            HeldOut::with_boundaries(&model, inputs, labels, batch, &cache, threads)?
        }
    };
    warn_if_too_few(&budget, &held);
    let progress = Terminal::stderr();
    let options = SelectOptions { mode: args.selection, threads, verify_top: args.verify_top.map(|k| k as usize) };
    let mut selection = compact::select(&model, &stats, &held, &budget, args.translator, &options, &progress)?;
    let mut fitted_on = compaction::FITTED_ON_ORIGINAL;
    if args.sequential {
        let spans: Vec<(Span, TranslatorKind)> =
            selection.replacements.iter().map(|r| (r.span, r.translator)).collect();
        let (refit, replacements) = compact::refit_sequentially(&model, &spans, |partial, max_span| {
            let options = CaptureOptions { batch, max_span, threads, fold: true, runtime: runtime.clone() };
            let batches = calibration.batches(&pre, batch).map(|b| b.map(|(x, _labels)| x));
            calibrate::capture(partial, batches, Some(calibration.len()), &options, &progress)
                .map_err(|e| CompactError::Budget(e.to_string()))
        })?;
        let result = held.measure(&refit)?;
        println!(
            "sequential refit: held-out metric {:.4} (fitted on the original activations: {:.4})",
            result.metric(),
            selection.result.metric()
        );
        (selection.model, selection.replacements, selection.result) = (refit, replacements, result);
        fitted_on = compaction::FITTED_SEQUENTIALLY;
    }
    let report = CompactionReport::new(
        &model,
        &args.out,
        &selection,
        Calibration { source: calibration.name().to_string(), images: stats.images, fitted_on: fitted_on.into() },
        DataUsed { source: held_out.name().to_string(), images: held.len(), excluded_seen_by_probe: excluded },
    )?;
    let mut slim = selection.model.clone();
    slim.set_metadata(compaction::METADATA_KEY, serde_json::to_string(&report.compaction)?);
    slim.save(&args.out, &DataPlacement::Inline)?;
    let report_path = args.out.with_extension("report.json");
    write_atomically(&report_path, &serde_json::to_vec_pretty(&report)?)?;
    print!("{}", text::selection(&model, &selection));
    println!("wrote {} and {}", args.out.display(), report_path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_bytes;

    #[test]
    fn cache_budgets_parse_with_units() {
        assert_eq!(parse_bytes("1500"), Ok(1500));
        assert_eq!(parse_bytes("512M"), Ok(512 << 20));
        assert_eq!(parse_bytes("4g"), Ok(4 << 30));
        assert_eq!(parse_bytes("1.5K"), Ok(1536));
        assert!(parse_bytes("12X").is_err());
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("-1G").is_err());
    }
}
