//! Calibration: stream images through the model with every boundary exposed
//! and keep only sufficient statistics (METHOD.md, "Calibration statistics").
//!
//! - [`accumulator`]: batches in, sums updated (buffered).
//! - [`statistics`]: the finished sums.
//! - [`scores`]: every span's scores, CKA and cosine matrices from them.

pub mod accumulator;
pub mod scores;
pub mod statistics;

use faer::Par;
use tract_linalg::multithread::{multithread_tract_scope, Executor};

use crate::model::run::{nd, RunError, Runner};
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
}

impl Default for CaptureOptions {
    fn default() -> Self {
        Self { batch: 16, max_span: 3, threads: 1, fold: false }
    }
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
    let mut stats = Accumulator::new(&model.blocks, options.max_span).map_err(capture_err)?;
    if options.fold {
        let sites: Vec<(usize, String)> = (1..model.blocks.boundaries.len())
            .filter_map(|s| crate::fit::fold::fold_site(model.onnx.graph(), &model.blocks, s).ok())
            .map(|site| (site.boundary, site.branch))
            .collect();
        stats = stats.with_branches(&sites);
    }
    let captured = stats.captured_tensors();
    let runner = Runner::new(&model.onnx, options.batch, &captured)?;
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
        // tract's matrix products use `threads` too (tract-linalg's
        // multithread-mm); its default executor is single-threaded.
        let executor =
            if options.threads > 1 { Executor::multithread(options.threads) } else { Executor::SingleThread };
        let produced = multithread_tract_scope(executor, || -> Result<(), CalibrateError> {
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
