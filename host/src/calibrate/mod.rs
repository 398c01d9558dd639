//! `rba analyze`: stream calibration images through the model, score every
//! block and candidate span, and build the report.

use std::time::Instant;

use faer::Par;
use serde::Serialize;
use tract_linalg::multithread::{multithread_tract_scope, Executor};

use crate::capture::{CaptureError, Statistics};
use crate::cost;
use crate::inspect::si;
use crate::model::Model;
use crate::runtime::{nd, Runner, RuntimeError};
use crate::scores::SpanScore;

/// Bumped when the JSON layout changes incompatibly; documented in
/// `host/REPORT.md`.
pub const REPORT_SCHEMA_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum AnalyzeError {
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
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
    /// Show a progress bar on stderr.
    pub progress: bool,
    /// Also capture the statistics of folded translators, wherever a block
    /// ends in a residual Add of a linear layer.
    pub fold: bool,
}

impl Default for CaptureOptions {
    fn default() -> Self {
        Self { batch: 16, max_span: 3, threads: 1, progress: false, fold: false }
    }
}

/// Streams `batches` (each `[k, ...input]`, `k <= options.batch`) through the
/// model and accumulates the statistics of all boundaries.
pub fn capture<E: std::fmt::Display>(
    model: &Model,
    batches: impl IntoIterator<Item = Result<nd::ArrayD<f32>, E>>,
    total_images: Option<usize>,
    options: &CaptureOptions,
) -> Result<Statistics, AnalyzeError> {
    let path = model.onnx.path.display().to_string();
    let capture_err = |source| AnalyzeError::Capture { path: path.clone(), source };
    let mut stats = Statistics::new(&model.blocks, options.max_span).map_err(capture_err)?;
    if options.fold {
        let sites: Vec<(usize, String)> = (1..model.blocks.boundaries.len())
            .filter_map(|s| crate::fold::fold_site(model.onnx.graph(), &model.blocks, s).ok())
            .map(|site| (site.boundary, site.branch))
            .collect();
        stats = stats.with_branches(&sites);
    }
    let mut captured = model.blocks.boundaries.clone();
    captured.extend(stats.branches.iter().map(|b| b.tensor.clone()));
    let runner = Runner::new(&model.onnx, options.batch, &captured)?;
    let outputs = runner.outputs.len() - captured.len();
    let par = if options.threads > 1 { Par::rayon(options.threads) } else { Par::Seq };
    let bar = options.progress.then(|| {
        let bar = indicatif::ProgressBar::new(total_images.unwrap_or(0) as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} images, {per_sec}, eta {eta}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar.set_message("capture");
        bar
    });
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
            stats.flush(par);
            Ok(stats)
        });
        // tract's matrix products use `threads` too (tract-linalg's
        // multithread-mm); its default executor is single-threaded.
        let executor =
            if options.threads > 1 { Executor::multithread(options.threads) } else { Executor::SingleThread };
        let produced = multithread_tract_scope(executor, || -> Result<(), AnalyzeError> {
            for batch in batches {
                let batch = batch.map_err(|e| AnalyzeError::Data(e.to_string()))?;
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
                    if let Some(bar) = &bar {
                        bar.inc(k as u64);
                    }
                }
            }
            Ok(())
        });
        drop(sender);
        (produced, worker.join())
    });
    let stats = stats.map_err(|_| AnalyzeError::Data("the statistics thread panicked".into()))?.map_err(capture_err)?;
    produced?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    if stats.images == 0 {
        return Err(AnalyzeError::Empty);
    }
    Ok(stats)
}

/// One row of the report's span table.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct SpanRow {
    #[serde(flatten)]
    pub score: SpanScore,
    /// Parameters of the removed blocks.
    pub params_removed: u64,
    /// Parameters a linear translator adds (`D^2`).
    pub translator_params: u64,
    pub macs_removed: u64,
    pub translator_macs: u64,
}

/// Column names of the span table, shared by the terminal and the HTML report.
pub const SPAN_COLUMNS: [&str; 9] =
    ["span", "blocks", "1-R^2", "cos", "BR(all)", "BR(cls)", "angle", "params saved", "MACs saved"];

impl SpanRow {
    /// The span's table cells, in `SPAN_COLUMNS` order.
    pub fn cells(&self) -> [String; 9] {
        let sc = &self.score;
        [
            format!("{}..{}", sc.start, sc.end),
            if sc.blocks == 1 { sc.end.to_string() } else { format!("{}-{}", sc.start + 1, sc.end) },
            format!("{:.4}", sc.linear_residual),
            format!("{:.4}", sc.cosine),
            format!("{:.4e}", sc.br_all_tokens),
            format!("{:.3e}", sc.br_cls),
            format!("{:.4}", sc.angular_distance),
            si(self.params_removed.saturating_sub(self.translator_params)),
            si(self.macs_removed.saturating_sub(self.translator_macs)),
        ]
    }
}

#[derive(Debug, Serialize, serde::Deserialize)]
pub struct BlockRow {
    pub index: usize,
    pub input: String,
    pub output: String,
    pub shape: Vec<usize>,
    pub params: u64,
    pub macs: u64,
    pub replaceable: bool,
    /// Scores of the single-block span, where the block is replaceable.
    pub score: Option<SpanScore>,
}

#[derive(Debug, Serialize, serde::Deserialize)]
pub struct Report {
    pub schema_version: u32,
    pub tool: String,
    pub model: ModelSummary,
    pub data: DataSummary,
    pub boundaries: Vec<String>,
    pub blocks: Vec<BlockRow>,
    /// Candidate spans, best (lowest linear residual) first.
    pub spans: Vec<SpanRow>,
    /// Linear CKA between boundaries (image rows: CLS token or spatial mean);
    /// null where a boundary does not vary over the images.
    pub cka: Vec<Vec<Option<f64>>>,
    /// Mean per-image cosine between boundaries; null where shapes differ.
    pub cosine: Vec<Vec<Option<f64>>>,
    pub seconds: f64,
}

#[derive(Debug, Serialize, serde::Deserialize)]
pub struct ModelSummary {
    pub file: String,
    pub params: u64,
    pub macs: u64,
    pub opset: i64,
}

#[derive(Debug, Serialize, serde::Deserialize)]
pub struct DataSummary {
    pub source: String,
    pub images: usize,
}

pub fn report(model: &Model, stats: &Statistics, data_source: &str, started: Instant) -> Report {
    let graph = model.onnx.graph();
    let scores = stats.span_scores();
    let blocks = &model.blocks.blocks;
    let mut spans: Vec<SpanRow> = scores
        .iter()
        .filter(|s| blocks[s.start..s.end].iter().all(|b| b.replaceable()))
        .map(|s| {
            let removed = &blocks[s.start..s.end];
            let d = blocks[s.start].features().unwrap_or(0) as u64;
            let positions = blocks[s.start].input_shape.iter().product::<usize>() as u64 / d.max(1);
            SpanRow {
                score: s.clone(),
                params_removed: removed.iter().map(|b| b.params).sum(),
                translator_params: d * d,
                macs_removed: removed.iter().map(|b| b.macs).sum(),
                translator_macs: positions * d * d,
            }
        })
        .collect();
    spans.sort_by(|a, b| a.score.linear_residual.total_cmp(&b.score.linear_residual));
    let block_rows = blocks
        .iter()
        .map(|b| BlockRow {
            index: b.index,
            input: b.input.clone(),
            output: b.output.clone(),
            shape: b.input_shape.clone(),
            params: b.params,
            macs: b.macs,
            replaceable: b.replaceable(),
            score: scores.iter().find(|s| s.end == b.index && s.blocks == 1 && b.replaceable()).cloned(),
        })
        .collect();
    Report {
        schema_version: REPORT_SCHEMA_VERSION,
        tool: format!("rba {}", env!("CARGO_PKG_VERSION")),
        model: ModelSummary {
            file: model.onnx.path.display().to_string(),
            params: cost::total_params(graph),
            macs: cost::total_macs(graph, &model.index, &model.shapes),
            opset: model.onnx.opset().unwrap_or(0),
        },
        data: DataSummary { source: data_source.to_string(), images: stats.images },
        boundaries: model.blocks.boundaries.clone(),
        blocks: block_rows,
        spans,
        cka: stats.cka_matrix(),
        cosine: stats.cosine_matrix(),
        seconds: started.elapsed().as_secs_f64(),
    }
}

/// The ranked span table for the terminal.
pub fn render_table(r: &Report, limit: usize) -> String {
    let mut out = format!(
        "{} on {} images from {}: {} candidate spans (1-{} blocks), best first\n",
        r.model.file,
        r.data.images,
        r.data.source,
        r.spans.len(),
        r.spans.iter().map(|s| s.score.blocks).max().unwrap_or(0)
    );
    const WIDTHS: [usize; 9] = [7, 6, 10, 10, 12, 10, 7, 12, 10];
    let line = |cells: &[String]| {
        let padded: Vec<String> = cells.iter().zip(WIDTHS).map(|(c, w)| format!("{c:>w$}")).collect();
        padded.join("  ") + "\n"
    };
    out += &line(&SPAN_COLUMNS.map(String::from));
    for s in r.spans.iter().take(limit) {
        out += &line(&s.cells());
    }
    out
}
