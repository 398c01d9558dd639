//! The embedded demo: two models trained on scikit-learn's handwritten
//! digits and the digits themselves, built by `tools/make_demo_models.py`.
//! Embedding them lets `rba demo` run from any directory with no files.

use serde::Deserialize;

use crate::data::npy;
use crate::model::run::nd;
use crate::onnx::{OnnxError, OnnxModel};

pub const VIT_ONNX: &[u8] = include_bytes!("../demo/vit-digits.onnx");
pub const RESNET_ONNX: &[u8] = include_bytes!("../demo/resnet-digits.onnx");
const IMAGES_NPY: &[u8] = include_bytes!("../demo/digits-images.npy");
const LABELS_NPY: &[u8] = include_bytes!("../demo/digits-labels.npy");
const SPLITS_JSON: &str = include_str!("../demo/digits-splits.json");

/// Pixel values are 0..=16; the demo models take value / 16.
const PIXEL_SCALE: f32 = 1.0 / 16.0;

/// Which embedded model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DemoModel {
    Vit,
    Resnet,
}

impl DemoModel {
    pub fn file_name(self) -> &'static str {
        match self {
            DemoModel::Vit => "vit-digits.onnx",
            DemoModel::Resnet => "resnet-digits.onnx",
        }
    }
    pub fn bytes(self) -> &'static [u8] {
        match self {
            DemoModel::Vit => VIT_ONNX,
            DemoModel::Resnet => RESNET_ONNX,
        }
    }
    pub fn load(self) -> Result<OnnxModel, OnnxError> {
        OnnxModel::from_bytes(self.bytes(), format!("<embedded {}>", self.file_name()))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// Fitting data; the calibration images are drawn from it.
    Train,
    /// Held out for choosing spans.
    Val,
    /// Held out for reporting only.
    Test,
}

#[derive(Deserialize)]
struct Splits {
    train: Vec<usize>,
    val: Vec<usize>,
    test: Vec<usize>,
}

/// The digits dataset with its fixed split.
pub struct Digits {
    /// `[1797, 8, 8]`, raw pixel values 0..=16.
    images: nd::ArrayD<f32>,
    labels: Vec<usize>,
    splits: Splits,
}

impl Digits {
    /// Decodes the embedded data (checked by the tests, so failures here mean
    /// a corrupted build).
    pub fn embedded() -> Result<Self, String> {
        let images = npy::parse_f32(IMAGES_NPY, "<embedded digits-images.npy>").map_err(|e| e.to_string())?;
        let labels = npy::parse_f32(LABELS_NPY, "<embedded digits-labels.npy>").map_err(|e| e.to_string())?;
        let splits: Splits =
            serde_json::from_str(SPLITS_JSON).map_err(|e| format!("<embedded digits-splits.json>: {e}"))?;
        let n = images.shape()[0];
        if labels.len() != n || splits.train.iter().chain(&splits.val).chain(&splits.test).any(|&i| i >= n) {
            return Err("embedded digits: labels or split indices do not match the images".into());
        }
        Ok(Self { images, labels: labels.iter().map(|&l| l as usize).collect(), splits })
    }

    pub fn indices(&self, split: Split) -> &[usize] {
        match split {
            Split::Train => &self.splits.train,
            Split::Val => &self.splits.val,
            Split::Test => &self.splits.test,
        }
    }

    pub fn label(&self, index: usize) -> usize {
        self.labels[index]
    }

    /// Model inputs `[n, 1, 8, 8]` (scaled to 0..1) for the given images.
    pub fn batch(&self, indices: &[usize]) -> nd::ArrayD<f32> {
        let mut out = nd::ArrayD::zeros(vec![indices.len(), 1, 8, 8]);
        for (row, &i) in indices.iter().enumerate() {
            let img = self.images.index_axis(nd::Axis(0), i);
            out.index_axis_mut(nd::Axis(0), row).index_axis_mut(nd::Axis(0), 0).assign(&img.mapv(|v| v * PIXEL_SCALE));
        }
        out
    }
}

/// A model argument as every command takes it: an ONNX file (external data
/// pulled inline), or `demo:vit` / `demo:resnet` for the embedded models.
pub fn load_model_spec(spec: &str) -> Result<OnnxModel, OnnxError> {
    match spec {
        "demo:vit" => DemoModel::Vit.load(),
        "demo:resnet" => DemoModel::Resnet.load(),
        path => OnnxModel::load(path),
    }
}
