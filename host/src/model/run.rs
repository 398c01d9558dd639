//! Running ONNX models on the host: concrete-batch plans with extra outputs
//! at intermediate tensors, on tract (built in) or on ONNX Runtime (loaded at
//! run time, the board's runtime layer: [`rba_device::runtime`]); shape
//! inference for every tensor (tract).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use prost::Message;
use rba_device::runtime::library::{self, Search};
use rba_device::runtime::{LoadedModel, OrtSetup, RuntimeError};
use rba_protocol::RuntimeRequest;

use tract_onnx::prelude::*;
use tract_onnx::tract_hir::internal::InferenceModel;

use rba_onnx::inputs::{declared_inputs, InputSpec};
use rba_onnx::tract;

use crate::onnx::OnnxModel;

pub use rba_device::runtime::Runtime;
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
    #[error("{path}: {source}")]
    Runtime { path: String, source: Box<RuntimeError> },
    /// ONNX Runtime is not usable here (no library, too old).
    #[error("onnxruntime is not available: {0}")]
    Unavailable(String),
}

/// ONNX Runtime on this machine, on its CPU: the library given (a file or
/// its folder), else found as the board daemon finds it
/// ([`Search::standard`]: `$ORT_DYLIB_PATH`, python3's `onnxruntime`
/// package, system folders).
pub fn onnxruntime(library: Option<PathBuf>) -> Result<Runtime, RunError> {
    let found = library::locate(&Search::standard(library, None)).map_err(|e| RunError::Unavailable(e.to_string()))?;
    found.check_version().map_err(|e| RunError::Unavailable(e.to_string()))?;
    Ok(Runtime::OnnxRuntime(OrtSetup {
        library: found.path,
        request: RuntimeRequest::onnxruntime(vec![], None),
        profile: Default::default(),
        // TensorRT's caches; the host registers only the CPU provider.
        cache_dir: std::env::temp_dir().join("rba-onnxruntime"),
        // The capture folds statistics on its own threads while the next
        // batch runs: spinning idle ONNX Runtime threads would take their cores.
        no_spinning: true,
    }))
}

/// Runs `f` with tract's matrix products on `threads` threads (tract-linalg's
/// multithread-mm; its default executor is single-threaded).
pub fn with_tract_threads<R>(threads: usize, f: impl FnOnce() -> R) -> R {
    use tract_linalg::multithread::{multithread_tract_scope, Executor};
    let executor = if threads > 1 { Executor::multithread(threads) } else { Executor::SingleThread };
    multithread_tract_scope(executor, f)
}

/// Where each of a runner's outputs comes from on ONNX Runtime.
enum Pick {
    /// The session's output of this index.
    Output(usize),
    /// The model's input itself (a boundary at the input).
    Input,
}

enum Engine {
    Tract(Arc<TypedRunnableModel>),
    Ort { model: Box<LoadedModel>, picks: Vec<Pick> },
}

/// A model prepared for a fixed batch size. A concrete batch is both faster
/// than a symbolic one and avoids shape-unification failures on exports that
/// compute shapes at run time.
pub struct Runner {
    engine: Engine,
    path: String,
    /// Shape of the (single) input, batch first.
    pub input_shape: Vec<usize>,
    /// Names of the outputs, in the order `run` returns them.
    pub outputs: Vec<String>,
    /// Whether tract had to fall back to the unoptimized typed model.
    pub optimized: bool,
}

/// `model` with `extra` tensors appended to its graph outputs (ONNX
/// Runtime returns only graph outputs); returns where each of the model's
/// outputs then `extra` comes from.
fn with_outputs(model: &OnnxModel, extra: &[String]) -> Result<(Vec<u8>, Vec<Pick>), RunError> {
    let path = model.path.display().to_string();
    let mut proto = model.proto.clone();
    let graph = proto.graph.get_or_insert_with(Default::default);
    let mut outputs: Vec<String> = graph.output.iter().map(|o| o.name().to_string()).collect();
    let own = outputs.len();
    let mut picks: Vec<Pick> = (0..own).map(Pick::Output).collect();
    for t in extra {
        if let Some(i) = outputs.iter().position(|o| o == t) {
            picks.push(Pick::Output(i));
        } else if graph.input.iter().any(|i| i.name() == t) {
            picks.push(Pick::Input);
        } else if graph.node.iter().any(|n| n.output.iter().any(|o| o == t)) {
            // Its type from the model's value_info where declared; ONNX
            // Runtime infers it otherwise.
            let info = graph.value_info.iter().find(|v| v.name() == t).cloned();
            graph.output.push(
                info.unwrap_or_else(|| rba_onnx::proto::ValueInfoProto { name: Some(t.clone()), ..Default::default() }),
            );
            picks.push(Pick::Output(outputs.len()));
            outputs.push(t.clone());
        } else {
            return Err(RunError::UnknownTensor { path, tensor: t.clone() });
        }
    }
    Ok((proto.encode_to_vec(), picks))
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
    /// Prepares `model` for `batch` inputs per run with tract, returning the
    /// model's own outputs followed by the tensors named in `extra_outputs`.
    pub fn new(model: &OnnxModel, batch: usize, extra_outputs: &[String]) -> Result<Self, RunError> {
        Self::on(&Runtime::Tract, model, batch, extra_outputs, 1)
    }

    /// [`Runner::new`] on `runtime`; `threads` are ONNX Runtime's (tract's
    /// come from the caller's executor scope).
    pub fn on(
        runtime: &Runtime,
        model: &OnnxModel,
        batch: usize,
        extra_outputs: &[String],
        threads: usize,
    ) -> Result<Self, RunError> {
        if let Runtime::OnnxRuntime(_) = runtime {
            let path = model.path.display().to_string();
            let input_shape = input_shape(model, batch)?;
            let (bytes, picks) = with_outputs(model, extra_outputs)?;
            let threads = u32::try_from(threads.max(1)).unwrap_or(u32::MAX);
            let loaded = runtime
                .load(&bytes, input_shape[0], None, threads)
                .map_err(|source| RunError::Runtime { path: path.clone(), source: Box::new(source) })?;
            let mut outputs: Vec<String> = model.graph().output.iter().map(|o| o.name().to_string()).collect();
            outputs.extend(extra_outputs.iter().cloned());
            return Ok(Self {
                engine: Engine::Ort { model: Box::new(loaded), picks },
                path,
                input_shape,
                outputs,
                optimized: true,
            });
        }
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
        Ok(Self { engine: Engine::Tract(plan), path, input_shape, outputs, optimized })
    }

    /// Runs one batch; the input must have exactly `input_shape`.
    pub fn run(&self, input: nd::ArrayD<f32>) -> Result<Vec<nd::ArrayD<f32>>, RunError> {
        let run_err = |reason: String| RunError::Run { path: self.path.clone(), reason };
        let Engine::Ort { model, picks } = &self.engine else {
            let result = self.run_values(input)?;
            return result.into_iter().map(|v| tract::to_f32_array(v).map_err(|e| run_err(format!("{e:#}")))).collect();
        };
        self.check_shape(&input)?;
        let runtime = |source| RunError::Runtime { path: self.path.clone(), source: Box::new(source) };
        let prepared = model.prepare(vec![input.iter().copied().collect()]).map_err(runtime)?;
        let mut outputs: Vec<Option<(Vec<usize>, Vec<f32>)>> =
            model.run_f32(&prepared).map_err(runtime)?.into_iter().map(Some).collect();
        picks
            .iter()
            .enumerate()
            .map(|(k, pick)| match pick {
                Pick::Input => Ok(input.clone()),
                Pick::Output(i) => {
                    // Taken at its last use, copied before (a boundary that is also a model output).
                    let again = picks[k + 1..].iter().any(|p| matches!(p, Pick::Output(j) if j == i));
                    let slot =
                        outputs.get_mut(*i).ok_or_else(|| run_err(format!("onnxruntime returned no output {i}")))?;
                    let (shape, values) = if again { slot.clone() } else { slot.take() }
                        .ok_or_else(|| run_err(format!("onnxruntime's output {i} was used up")))?;
                    nd::ArrayD::from_shape_vec(shape, values).map_err(|e| run_err(e.to_string()))
                }
            })
            .collect()
    }

    fn check_shape(&self, input: &nd::ArrayD<f32>) -> Result<(), RunError> {
        if input.shape() != self.input_shape.as_slice() {
            return Err(RunError::Input {
                path: self.path.clone(),
                input: "input".into(),
                problem: format!("got shape {:?}, the model expects {:?}", input.shape(), self.input_shape),
            });
        }
        Ok(())
    }

    /// Runs one batch and returns the outputs as tract computed them, of
    /// whatever element type (shape computations are integers). tract only.
    pub fn run_values(&self, input: nd::ArrayD<f32>) -> Result<TVec<TValue>, RunError> {
        let Engine::Tract(plan) = &self.engine else {
            return Err(RunError::Run {
                path: self.path.clone(),
                reason: "typed outputs are tract's: this runner runs on onnxruntime".into(),
            });
        };
        if input.shape() != self.input_shape.as_slice() {
            return Err(RunError::Input {
                path: self.path.clone(),
                input: "input".into(),
                problem: format!("got shape {:?}, the model expects {:?}", input.shape(), self.input_shape),
            });
        }
        let run = |e: anyhow::Error| RunError::Run { path: self.path.clone(), reason: format!("{e:#}") };
        plan.run(tvec!(Tensor::from(input).into())).map_err(run)
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
    predict_on(&Runtime::Tract, model, inputs, batch, 1)
}

/// [`predict`] on `runtime` (`threads`: ONNX Runtime's).
pub fn predict_on(
    runtime: &Runtime,
    model: &OnnxModel,
    inputs: &nd::ArrayD<f32>,
    batch: usize,
    threads: usize,
) -> Result<nd::Array2<f32>, RunError> {
    let runner = Runner::on(runtime, model, batch, &[], threads)?;
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
