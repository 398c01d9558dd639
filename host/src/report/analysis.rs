//! The analysis report (`rba analyze`'s report.json): every block and span
//! scored, the CKA and cosine matrices (REPORT.md, "Analysis report").

use std::time::Instant;

use serde::Serialize;

use crate::calibrate::scores::SpanScore;
use crate::calibrate::Statistics;
use crate::model::cost;
use crate::model::Model;
use crate::report::text::si;

/// Bumped when the JSON layout changes incompatibly (REPORT.md).
pub const ANALYSIS_SCHEMA_VERSION: u32 = 1;

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
pub struct AnalysisReport {
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

pub fn build(model: &Model, stats: &Statistics, data_source: &str, started: Instant) -> AnalysisReport {
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
    AnalysisReport {
        schema_version: ANALYSIS_SCHEMA_VERSION,
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
