//! Eval bundles: a dataset preprocessed for a model, with labels and
//! (optionally) a reference model's outputs, to evaluate on the device.

use rba_protocol::{EvalBundle, TensorF32};

use super::BoardError;
use crate::data::{Dataset, Preprocess, PreprocessOptions};
use crate::model::run::{self, nd};
use crate::onnx::OnnxModel;

/// An eval bundle and the host-side arrays it was built from.
pub struct EvalSet {
    pub bundle: EvalBundle,
    /// `[n, ...]`, preprocessed for the model.
    pub inputs: nd::ArrayD<f32>,
    pub labels: Option<Vec<usize>>,
    /// The dataset's name, for reports.
    pub source: String,
}

/// Builds an eval bundle for `model` from a data spec (`demo:test`, an
/// image folder, a `.npy`/`.npz`): the first `samples` items, preprocessed
/// as for the model. With `reference`, its outputs (computed on the host)
/// become the bundle's expected outputs, so the device reports agreement
/// with it as well as accuracy.
pub fn build_eval_bundle(
    model: &OnnxModel,
    data: &str,
    samples: Option<usize>,
    preprocess: &PreprocessOptions,
    reference: Option<&OnnxModel>,
) -> Result<EvalSet, BoardError> {
    let pre = Preprocess::for_model(preprocess, model)?;
    let dataset = Dataset::open(data)?.subset(samples, None);
    let (inputs, labels) = dataset.load_all(&pre)?;
    let input_name = first_input_name(model);
    let shape: Vec<u64> = inputs.shape().iter().map(|&d| d as u64).collect();
    let values: Vec<f32> = inputs.iter().copied().collect();
    let expected = match reference {
        Some(r) => {
            let out = run::predict(r, &inputs, 16)?;
            let name = r.graph().output.first().map(|o| o.name().to_string());
            let shape = out.shape().iter().map(|&d| d as u64).collect();
            let values: Vec<f32> = out.iter().copied().collect();
            Some(vec![TensorF32::from_f32(name, shape, &values)])
        }
        None => None,
    };
    let bundle = EvalBundle {
        inputs: vec![TensorF32::from_f32(input_name, shape, &values)],
        labels: labels.as_ref().map(|l| l.iter().map(|&c| u32::try_from(c).unwrap_or(u32::MAX)).collect()),
        expected,
    };
    bundle.validate()?;
    Ok(EvalSet { bundle, inputs, labels, source: dataset.name().to_string() })
}

/// The first graph input that is not an initializer (older exports list
/// weights as inputs too).
fn first_input_name(model: &OnnxModel) -> Option<String> {
    let g = model.graph();
    g.input.iter().map(|i| i.name()).find(|n| !g.initializer.iter().any(|t| t.name() == *n)).map(str::to_string)
}
