//! Calibration: stream images through the model with every boundary exposed
//! and keep only sufficient statistics (METHOD.md, "Calibration statistics").
//!
//! - [`accumulator`]: batches in, sums updated (buffered).
//! - [`statistics`]: the finished sums.
//! - [`scores`]: every span's scores, CKA and cosine matrices from them.
//! - [`file`]: statistics files (host/STATS.md), read and written, merged.
//! - [`shard`]: which calibration images a shard captures.

pub mod accumulator;
pub mod file;
pub mod scores;
pub mod shard;
pub mod statistics;

use faer::Par;

use crate::model::run::{nd, with_tract_threads, RunError, Runner, Runtime};
use crate::model::Model;
use crate::progress::{Progress, Unit};
use accumulator::{Accumulator, CaptureError};
pub use statistics::Statistics;

#[derive(Debug, thiserror::Error)]
pub enum CalibrateError {
    #[error(transparent)]
    Run(#[from] RunError),
    #[error("{path}: {source}")]
    Capture { path: String, source: CaptureError },
    #[error("{0}")]
    Data(String),
    #[error("no calibration images: the dataset is empty")]
    Empty,
}

#[derive(Debug, Clone)]
pub struct CaptureOptions {
    /// Images per forward pass (the last batch is padded).
    pub batch: usize,
    /// Fit statistics for spans of up to this many blocks.
    pub max_span: usize,
    /// Threads for the model's and the statistics' matrix products.
    pub threads: usize,
    /// Also capture the statistics of folded translators, wherever a block
    /// ends in a residual Add of a linear layer.
    pub fold: bool,
    /// What runs the model (the statistics are the same within float noise).
    pub runtime: Runtime,
}

impl Default for CaptureOptions {
    fn default() -> Self {
        Self { batch: 16, max_span: 3, threads: 1, fold: false, runtime: Runtime::Tract }
    }
}

/// The fold sites of `model`'s boundaries: `(boundary, branch tensor)` for
/// every boundary whose block ends in a residual Add of a linear layer.
pub fn fold_sites(model: &Model) -> Vec<(usize, String)> {
    (1..model.blocks.boundaries.len())
        .filter_map(|s| crate::fit::fold::fold_site(model.onnx.graph(), &model.blocks, s).ok())
        .map(|site| (site.boundary, site.branch))
        .collect()
}

/// Images folded into the statistics at a time for `batch` images per
/// forward pass (see [`accumulator::group_images`]); shards are made of
/// whole groups.
pub fn group_images(model: &Model, batch: usize) -> Result<usize, CalibrateError> {
    let path = model.onnx.path.display().to_string();
    accumulator::group_images(&model.blocks, batch).map_err(|source| CalibrateError::Capture { path, source })
}

fn accumulator(model: &Model, options: &CaptureOptions) -> Result<Accumulator, CalibrateError> {
    let path = model.onnx.path.display().to_string();
    let capture_err = |source| CalibrateError::Capture { path: path.clone(), source };
    let group = accumulator::group_images(&model.blocks, options.batch).map_err(capture_err)?;
    let mut stats = Accumulator::new(&model.blocks, options.max_span, group).map_err(capture_err)?;
    if options.fold {
        stats = stats.with_branches(&fold_sites(model));
    }
    Ok(stats)
}

/// The statistics of no images (what a shard without images holds).
pub fn empty(model: &Model, options: &CaptureOptions) -> Result<Statistics, CalibrateError> {
    Ok(accumulator(model, options)?.finish(Par::Seq))
}

/// Streams `batches` (each `[k, ...input]`, `k <= options.batch`) through the
/// model and accumulates the statistics of all boundaries.
pub fn capture<E: std::fmt::Display>(
    model: &Model,
    batches: impl IntoIterator<Item = Result<nd::ArrayD<f32>, E>>,
    total_images: Option<usize>,
    options: &CaptureOptions,
    progress: &dyn Progress,
) -> Result<Statistics, CalibrateError> {
    let path = model.onnx.path.display().to_string();
    let capture_err = |source| CalibrateError::Capture { path: path.clone(), source };
    let mut stats = accumulator(model, options)?;
    let captured = stats.captured_tensors();
    let runner = Runner::on(&options.runtime, &model.onnx, options.batch, &captured, options.threads)?;
    let outputs = runner.outputs.len() - captured.len();
    let par = if options.threads > 1 { Par::rayon(options.threads) } else { Par::Seq };
    let task = progress.task("capture", total_images.map(|n| n as u64), Unit::Images);
    // Pipeline: this thread runs the model while a second one folds the
    // previous batch into the statistics, so on two cores the statistics
    // cost little wall time. The channel holds two batches: memory stays
    // bounded.
    let (sender, receiver) = std::sync::mpsc::sync_channel::<(Vec<nd::ArrayD<f32>>, usize)>(2);
    let (produced, stats) = std::thread::scope(|scope| {
        let worker = scope.spawn(move || -> Result<Statistics, CaptureError> {
            for (activations, valid) in receiver {
                stats.update(&activations, valid, par)?;
            }
            Ok(stats.finish(par))
        });
        // tract's matrix products use `threads` too.
        let produced = with_tract_threads(options.threads, || -> Result<(), CalibrateError> {
            for batch in batches {
                let batch = batch.map_err(|e| CalibrateError::Data(e.to_string()))?;
                // Any batch size works: run it in pieces of the plan's batch.
                let plan_batch = runner.input_shape[0];
                for start in (0..batch.shape()[0]).step_by(plan_batch.max(1)) {
                    let piece =
                        batch.slice_axis(nd::Axis(0), (start..(start + plan_batch).min(batch.shape()[0])).into());
                    let k = piece.shape()[0];
                    let mut padded = nd::ArrayD::zeros(runner.input_shape.clone());
                    padded.slice_axis_mut(nd::Axis(0), (0..k).into()).assign(&piece);
                    let activations: Vec<nd::ArrayD<f32>> = runner.run(padded)?.into_iter().skip(outputs).collect();
                    if sender.send((activations, k)).is_err() {
                        // The statistics thread stopped on an error; join() reports it.
                        return Ok(());
                    }
                    task.advance(k as u64);
                }
            }
            Ok(())
        });
        drop(sender);
        (produced, worker.join())
    });
    let stats =
        stats.map_err(|_| CalibrateError::Data("the statistics thread panicked".into()))?.map_err(capture_err)?;
    produced?;
    drop(task);
    if stats.images == 0 {
        return Err(CalibrateError::Empty);
    }
    Ok(stats)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::shard::Shard;
    use super::*;
    use crate::progress::Silent;

    fn noise(images: usize, seed: u64) -> nd::ArrayD<f32> {
        let mut s = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
        nd::ArrayD::from_shape_fn(vec![images, 1, 8, 8], |_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32
        })
    }

    fn capture_positions(
        model: &Model,
        x: &nd::ArrayD<f32>,
        positions: &[usize],
        options: &CaptureOptions,
    ) -> Statistics {
        if positions.is_empty() {
            return empty(model, options).unwrap();
        }
        let part = x.select(nd::Axis(0), positions);
        let batches: Vec<Result<nd::ArrayD<f32>, String>> = (0..positions.len())
            .step_by(options.batch)
            .map(|s| Ok(part.slice_axis(nd::Axis(0), (s..(s + options.batch).min(positions.len())).into()).to_owned()))
            .collect();
        capture(model, batches, Some(positions.len()), options, &Silent).unwrap()
    }

    #[test]
    fn merged_shards_equal_the_one_shot_capture_bit_for_bit() {
        let model = Model::new(crate::demo::DemoModel::Vit.load().unwrap(), None).unwrap();
        let options = CaptureOptions { batch: 4, max_span: 2, threads: 1, fold: true, ..Default::default() };
        let group = group_images(&model, options.batch).unwrap();
        // 4 images of 17 tokens per batch: 31 batches make a group of 2048+ rows.
        assert_eq!(group, 4 * 2048usize.div_ceil(4 * 17));
        let images = 3 * group + 7;
        let x = noise(images, 1);
        let whole = capture_positions(&model, &x, &(0..images).collect::<Vec<_>>(), &options);
        assert_eq!(whole.images, images);
        for count in [2, 3, 5] {
            let mut merged: Option<Statistics> = None;
            // Merge in reverse order: the order must not matter either.
            for index in (0..count).rev() {
                let shard = capture_positions(&model, &x, &Shard { index, count }.positions(images, group), &options);
                match merged.as_mut() {
                    None => merged = Some(shard),
                    Some(m) => m.merge(&shard).unwrap(),
                }
            }
            let merged = merged.unwrap();
            let (a, b) = (whole.named_sums(), merged.named_sums());
            assert_eq!(a.len(), b.len());
            for ((name, x), (_, y)) in a.iter().zip(&b) {
                let same = x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits());
                assert!(same, "{count} shards: {name} differs");
            }
        }
    }

    #[test]
    fn merging_statistics_of_another_layout_is_refused() {
        let model = Model::new(crate::demo::DemoModel::Vit.load().unwrap(), None).unwrap();
        let options = CaptureOptions { batch: 4, max_span: 2, threads: 1, fold: false, ..Default::default() };
        let mut a = empty(&model, &options).unwrap();
        let b = empty(&model, &CaptureOptions { max_span: 1, ..options.clone() }).unwrap();
        let err = a.merge(&b).unwrap_err();
        assert!(err.to_string().starts_with("the statistics were captured differently: spans"), "{err}");
        let folded = empty(&model, &CaptureOptions { fold: true, ..options }).unwrap();
        assert!(a.merge(&folded).unwrap_err().to_string().contains("fold sites"));
    }
}
