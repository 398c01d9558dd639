//! Running ONNX models on the host with tract: concrete-batch plans, extra
//! outputs at intermediate tensors, and shape inference for every tensor.

use std::collections::HashMap;
use std::sync::Arc;

use tract_onnx::prelude::*;
use tract_onnx::tract_hir::internal::InferenceModel;

use crate::onnx::build::{value_info_dims, Dim};
use crate::onnx::proto::type_proto::Value;
use crate::onnx::OnnxModel;

pub use tract_onnx::prelude::tract_ndarray as nd;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
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

/// The concrete shape of the model's single input for a given batch size: a
/// symbolic first dimension becomes the batch; fixed dimensions stay (a model
/// exported with a fixed batch runs at that batch); other symbolic ones are an
/// error.
pub fn input_shape(model: &OnnxModel, batch: usize) -> Result<Vec<usize>, RuntimeError> {
    let path = model.path.display().to_string();
    let index = crate::onnx::graph::GraphIndex::new(model.graph())
        .map_err(|reason| RuntimeError::Load { path: path.clone(), reason })?;
    let [name] = index.inputs.as_slice() else {
        return Err(RuntimeError::Input {
            path,
            input: index.inputs.join(", "),
            problem: format!("rba handles models with exactly one input, this one has {}", index.inputs.len()),
        });
    };
    let err = |problem: String| RuntimeError::Input { path: path.clone(), input: name.clone(), problem };
    let vi = model
        .graph()
        .input
        .iter()
        .find(|i| i.name() == name)
        .ok_or_else(|| err("not declared as a graph input".into()))?;
    let dims = value_info_dims(vi).ok_or_else(|| err("has no tensor shape".into()))?;
    let mut shape = Vec::with_capacity(dims.len());
    for (axis, d) in dims.iter().enumerate() {
        shape.push(match d {
            Some(Dim::Fixed(v)) => *v,
            _ if axis == 0 => batch,
            Some(Dim::Named(s)) => {
                return Err(err(format!("dimension {axis} is symbolic ('{s}'); only the batch may be")))
            }
            None => return Err(err(format!("dimension {axis} is unknown; only the batch may be"))),
        });
    }
    Ok(shape)
}

fn inference_model(model: &OnnxModel, input_shape: &[usize]) -> Result<InferenceModel, RuntimeError> {
    let path = model.path.display().to_string();
    let load = |e: anyhow::Error| RuntimeError::Load { path: path.clone(), reason: format!("{e:#}") };
    // Exporters annotate intermediate tensors and outputs with the symbolic
    // batch ("batch_size"); with a concrete input those hints cannot unify, and
    // tract infers every shape anyway, so drop them.
    let mut proto = model.proto.clone();
    if let Some(g) = proto.graph.as_mut() {
        g.value_info.clear();
        for o in g.output.iter_mut() {
            if let Some(Value::TensorType(t)) = o.r#type.as_mut().and_then(|t| t.value.as_mut()) {
                t.shape = None;
            }
        }
    }
    let bytes = prost::Message::encode_to_vec(&proto);
    let mut m = tract_onnx::onnx().model_for_read(&mut bytes.as_slice()).map_err(load)?;
    m.set_input_fact(0, f32::fact(input_shape).into()).map_err(load)?;
    Ok(m)
}

impl Runner {
    /// Prepares `model` for `batch` inputs per run, returning the model's own
    /// outputs followed by the tensors named in `extra_outputs`.
    pub fn new(model: &OnnxModel, batch: usize, extra_outputs: &[String]) -> Result<Self, RuntimeError> {
        let path = model.path.display().to_string();
        let load = |e: anyhow::Error| RuntimeError::Load { path: path.clone(), reason: format!("{e:#}") };
        let input_shape = input_shape(model, batch)?;
        let mut m = inference_model(model, &input_shape)?;
        let mut outputs: Vec<String> = model.graph().output.iter().map(|o| o.name().to_string()).collect();
        for t in extra_outputs {
            // Inputs are named nodes rather than labelled outlets.
            if m.find_outlet_label(t).is_none() && m.node_by_name(t).is_err() {
                return Err(RuntimeError::UnknownTensor { path: path.clone(), tensor: t.clone() });
            }
        }
        outputs.extend(extra_outputs.iter().cloned());
        m.select_outputs_by_name(&outputs).map_err(load)?;
        let typed = m.into_typed().map_err(load)?;
        // Some exports trip tract's optimizer; the typed model still runs.
        let (typed, optimized) = match typed.clone().into_optimized() {
            Ok(opt) => (opt, true),
            Err(_) => (typed, false),
        };
        let plan = typed.into_runnable().map_err(load)?;
        Ok(Self { plan, path, input_shape, outputs, optimized })
    }

    /// Runs one batch; the input must have exactly `input_shape`.
    pub fn run(&self, input: nd::ArrayD<f32>) -> Result<Vec<nd::ArrayD<f32>>, RuntimeError> {
        if input.shape() != self.input_shape.as_slice() {
            return Err(RuntimeError::Input {
                path: self.path.clone(),
                input: "input".into(),
                problem: format!("got shape {:?}, the model expects {:?}", input.shape(), self.input_shape),
            });
        }
        let run = |e: anyhow::Error| RuntimeError::Run { path: self.path.clone(), reason: format!("{e:#}") };
        let result = self.plan.run(tvec!(Tensor::from(input).into())).map_err(run)?;
        result
            .into_iter()
            .map(|v| {
                let v = v.cast_to::<f32>().map_err(run)?;
                Ok(v.to_plain_array_view::<f32>().map_err(run)?.to_owned())
            })
            .collect()
    }
}

/// Concrete shapes of every tensor tract can name, for a given batch size.
pub fn tensor_shapes(model: &OnnxModel, batch: usize) -> Result<HashMap<String, Vec<usize>>, RuntimeError> {
    let path = model.path.display().to_string();
    let load = |e: anyhow::Error| RuntimeError::Load { path: path.clone(), reason: format!("{e:#}") };
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
pub fn predict(model: &OnnxModel, inputs: &nd::ArrayD<f32>, batch: usize) -> Result<nd::Array2<f32>, RuntimeError> {
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
        .map_err(|e| RuntimeError::Run { path: model.path.display().to_string(), reason: e.to_string() })
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
