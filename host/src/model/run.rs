//! Running ONNX models on the host with tract: concrete-batch plans, extra
//! outputs at intermediate tensors, and shape inference for every tensor.

use std::collections::HashMap;
use std::sync::Arc;

use tract_onnx::prelude::*;
use tract_onnx::tract_hir::internal::InferenceModel;

use rba_onnx::inputs::{declared_inputs, InputSpec};
use rba_onnx::tract;

use crate::onnx::OnnxModel;

pub use rba_onnx::tract::nd;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{path}: tract cannot load the model: {reason}")]
    Load { path: String, reason: String },
    #[error("{path}: input '{input}': {problem}")]
    Input { path: String, input: String, problem: String },
    #[error("{path}: tensor '{tensor}' does not exist in the model")]
    UnknownTensor { path: String, tensor: String },
    #[error("{path}: inference failed: {reason}")]
    Run { path: String, reason: String },
}

/// A model prepared for a fixed batch size. A concrete batch is both faster
/// than a symbolic one and avoids shape-unification failures on exports that
/// compute shapes at run time.
pub struct Runner {
    plan: Arc<TypedRunnableModel>,
    path: String,
    /// Shape of the (single) input, batch first.
    pub input_shape: Vec<usize>,
    /// Names of the outputs, in the order `run` returns them.
    pub outputs: Vec<String>,
    /// Whether tract had to fall back to the unoptimized typed model.
    pub optimized: bool,
}

/// The concrete shape of the model's single input for a given batch size
/// (the rule is [`rba_onnx::inputs::declared_inputs`]'s).
pub fn input_shape(model: &OnnxModel, batch: usize) -> Result<Vec<usize>, RunError> {
    let path = model.path.display().to_string();
    let inputs = declared_inputs(model.graph(), batch).map_err(|e| RunError::Input {
        path: path.clone(),
        input: e.input,
        problem: e.problem,
    })?;
    match inputs.as_slice() {
        [one] => Ok(one.shape.clone()),
        _ => Err(RunError::Input {
            path,
            input: inputs.iter().map(|i| i.name.as_str()).collect::<Vec<_>>().join(", "),
            problem: format!("rba handles models with exactly one input, this one has {}", inputs.len()),
        }),
    }
}

fn inference_model(model: &OnnxModel, input_shape: &[usize]) -> Result<InferenceModel, RunError> {
    let path = model.path.display().to_string();
    let load = |e: anyhow::Error| RunError::Load { path: path.clone(), reason: format!("{e:#}") };
    let inputs = declared_inputs(model.graph(), input_shape[0]).map_err(|e| RunError::Input {
        path: path.clone(),
        input: e.input,
        problem: e.problem,
    })?;
    let inputs: Vec<InputSpec> = inputs.into_iter().map(|i| InputSpec { shape: input_shape.to_vec(), ..i }).collect();
    tract::inference_model(&model.proto, &inputs).map_err(load)
}

impl Runner {
    /// Prepares `model` for `batch` inputs per run, returning the model's own
    /// outputs followed by the tensors named in `extra_outputs`.
    pub fn new(model: &OnnxModel, batch: usize, extra_outputs: &[String]) -> Result<Self, RunError> {
        let path = model.path.display().to_string();
        let load = |e: anyhow::Error| RunError::Load { path: path.clone(), reason: format!("{e:#}") };
        let input_shape = input_shape(model, batch)?;
        let mut m = inference_model(model, &input_shape)?;
        let mut outputs: Vec<String> = model.graph().output.iter().map(|o| o.name().to_string()).collect();
        for t in extra_outputs {
            // Inputs are named nodes rather than labelled outlets.
            if m.find_outlet_label(t).is_none() && m.node_by_name(t).is_err() {
                return Err(RunError::UnknownTensor { path: path.clone(), tensor: t.clone() });
            }
        }
        outputs.extend(extra_outputs.iter().cloned());
        m.select_outputs_by_name(&outputs).map_err(load)?;
        let (plan, optimized) = tract::into_plan(m).map_err(load)?;
        Ok(Self { plan, path, input_shape, outputs, optimized })
    }

    /// Runs one batch; the input must have exactly `input_shape`.
    pub fn run(&self, input: nd::ArrayD<f32>) -> Result<Vec<nd::ArrayD<f32>>, RunError> {
        let run = |e: anyhow::Error| RunError::Run { path: self.path.clone(), reason: format!("{e:#}") };
        let result = self.run_values(input)?;
        result.into_iter().map(|v| tract::to_f32_array(v).map_err(run)).collect()
    }

    /// Runs one batch and returns the outputs as tract computed them, of
    /// whatever element type (shape computations are integers).
    pub fn run_values(&self, input: nd::ArrayD<f32>) -> Result<TVec<TValue>, RunError> {
        if input.shape() != self.input_shape.as_slice() {
            return Err(RunError::Input {
                path: self.path.clone(),
                input: "input".into(),
                problem: format!("got shape {:?}, the model expects {:?}", input.shape(), self.input_shape),
            });
        }
        let run = |e: anyhow::Error| RunError::Run { path: self.path.clone(), reason: format!("{e:#}") };
        self.plan.run(tvec!(Tensor::from(input).into())).map_err(run)
    }
}

/// Concrete shapes of every tensor tract can name, for a given batch size.
pub fn tensor_shapes(model: &OnnxModel, batch: usize) -> Result<HashMap<String, Vec<usize>>, RunError> {
    let path = model.path.display().to_string();
    let load = |e: anyhow::Error| RunError::Load { path: path.clone(), reason: format!("{e:#}") };
    let shape = input_shape(model, batch)?;
    let m = inference_model(model, &shape)?;
    // Declare every labelled tensor an output so translation keeps them all.
    let mut labels: Vec<(OutletId, String)> = m.outlet_labels.iter().map(|(o, l)| (*o, l.clone())).collect();
    labels.sort();
    let outlets: Vec<OutletId> = labels.iter().map(|(o, _)| *o).collect();
    let m = m.with_output_outlets(&outlets).map_err(load)?;
    let typed = m.into_typed().map_err(load)?;
    // Inputs are source nodes, which tract names but does not label.
    let mut shapes: HashMap<String, Vec<usize>> =
        typed.input_outlets().map_err(load)?.iter().map(|o| (typed.node(o.node).name.clone(), shape.clone())).collect();
    for (ix, (_, label)) in labels.iter().enumerate() {
        let fact = typed.output_fact(ix).map_err(load)?;
        if let Some(s) = fact.shape.as_concrete() {
            shapes.insert(label.clone(), s.to_vec());
        }
    }
    Ok(shapes)
}

/// Runs `inputs` (first axis = samples) through the model in batches of
/// `batch`, padding the last batch, and returns the first output for every
/// sample, flattened to `[samples, features]`.
pub fn predict(model: &OnnxModel, inputs: &nd::ArrayD<f32>, batch: usize) -> Result<nd::Array2<f32>, RunError> {
    let runner = Runner::new(model, batch, &[])?;
    let batch = runner.input_shape[0];
    let n = inputs.shape()[0];
    let mut rows: Vec<f32> = Vec::new();
    let mut width = 0;
    for start in (0..n).step_by(batch.max(1)) {
        let end = (start + batch).min(n);
        let mut chunk = nd::ArrayD::zeros(runner.input_shape.clone());
        chunk
            .slice_axis_mut(nd::Axis(0), (0..end - start).into())
            .assign(&inputs.slice_axis(nd::Axis(0), (start..end).into()));
        let out = runner.run(chunk)?.swap_remove(0);
        width = out.len() / batch;
        rows.extend(out.iter().take((end - start) * width));
    }
    nd::Array2::from_shape_vec((n, width), rows)
        .map_err(|e| RunError::Run { path: model.path.display().to_string(), reason: e.to_string() })
}

/// Index of the largest value in each row.
pub fn argmax_rows(logits: &nd::Array2<f32>) -> Vec<usize> {
    logits
        .rows()
        .into_iter()
        .map(|r| {
            r.iter().enumerate().fold((0, f32::NEG_INFINITY), |best, (i, &v)| if v > best.1 { (i, v) } else { best }).0
        })
        .collect()
}
