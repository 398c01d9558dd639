//! The compaction report (`rba compact`'s `<out>.report.json`, the demo's
//! compaction.json) and the record stored in the compacted model's
//! metadata (`rba.compaction`); REPORT.md, "Compaction report".

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::nan_as_null;
use crate::compact::evaluate::Quality;
use crate::compact::{ModelCost, Replacement, Selection, Trial, Verification};
use crate::model::run::RunError;
use crate::model::Model;

/// Bumped when the JSON layout changes incompatibly (REPORT.md).
pub const COMPACTION_SCHEMA_VERSION: u32 = 1;

/// Metadata key of the [`CompactionRecord`] in a compacted model.
pub const METADATA_KEY: &str = "rba.compaction";

/// What a compaction did: stored in the compacted model and in the report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CompactionRecord {
    pub replacements: Vec<Replacement>,
    pub calibration: Calibration,
    pub held_out: DataUsed,
    pub baseline: Quality,
    pub result: Quality,
}

/// The calibration images and what the maps were fitted on.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Calibration {
    pub source: String,
    pub images: usize,
    /// `original model activations`, or sequentially on the partly compacted model.
    pub fitted_on: String,
}

/// A data source and how many of its images were used.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DataUsed {
    pub source: String,
    pub images: usize,
    /// Held-out images left out because the model's probe head was fitted
    /// on them (`rba.probe`); absent when none were.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub excluded_seen_by_probe: Option<usize>,
}

/// The full report: the record plus every verified candidate.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CompactionReport {
    pub schema_version: u32,
    pub model: String,
    pub output: String,
    pub compaction: CompactionRecord,
    /// The original and the compacted model, counted on their graphs.
    pub original: ModelCost,
    pub compacted: ModelCost,
    pub trials: Vec<Trial>,
    /// Spearman correlation of each proxy score with the measured drop over
    /// single blocks (null where undefined).
    #[serde(with = "nan_as_null::pairs")]
    pub proxy_spearman: Vec<(String, f64)>,
    /// How the candidates were measured (absent in reports written before
    /// tail-only selection).
    #[serde(default)]
    pub verification: Option<Verification>,
}

/// What the maps were fitted on, for [`Calibration::fitted_on`].
pub const FITTED_ON_ORIGINAL: &str = "original model activations";
pub const FITTED_SEQUENTIALLY: &str = "sequentially, each span on the model with the earlier spans replaced";

impl CompactionReport {
    pub fn new(
        model: &Model,
        out: &Path,
        selection: &Selection,
        calibration: Calibration,
        held_out: DataUsed,
    ) -> Result<CompactionReport, RunError> {
        Ok(CompactionReport {
            schema_version: COMPACTION_SCHEMA_VERSION,
            model: model.onnx.path.display().to_string(),
            output: out.display().to_string(),
            compaction: CompactionRecord {
                replacements: selection.replacements.clone(),
                calibration,
                held_out,
                baseline: selection.baseline,
                result: selection.result,
            },
            original: ModelCost::of(model),
            compacted: ModelCost::of_onnx(&selection.model)?,
            trials: selection.trials.clone(),
            proxy_spearman: selection.proxy_spearman.clone(),
            verification: Some(selection.verification.clone()),
        })
    }
}
