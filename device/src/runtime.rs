//! Running ONNX models with tract: load with a concrete batch (the input
//! rule and tract's loading are rba-onnx's, shared with the host), run with
//! a chosen thread count.

use std::collections::HashMap;
use std::sync::Mutex;

use prost::Message;
use rba_onnx::budget::{self, BudgetError};
use rba_onnx::inputs::{declared_inputs, InputSpec};
use rba_onnx::proto::ModelProto;
use rba_onnx::tract::{inference_model, into_plan, to_f32_array, Plan};
use rba_protocol::rng::splitmix64;
use rba_protocol::RemoteError;
use tract_linalg::multithread::{multithread_tract_scope, Executor};
use tract_onnx::prelude::*;

/// Inference runtime, as reported in the device identity.
pub const RUNTIME: &str = "tract-onnx 0.23";

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// tract could not parse, type or plan the model.
    #[error("tract cannot load the model: {0}")]
    Load(String),
    /// The model is valid but outside what the device runs.
    #[error("{0}")]
    Unsupported(String),
    /// Data given to the model does not fit its inputs or outputs.
    #[error("shape mismatch: {0}")]
    Shape(String),
    #[error("inference failed: {0}")]
    Run(String),
    /// The model declares more memory than the job may use.
    #[error(transparent)]
    Budget(#[from] BudgetError),
}

impl From<RuntimeError> for RemoteError {
    fn from(e: RuntimeError) -> Self {
        match e {
            RuntimeError::Load(_) | RuntimeError::Run(_) => RemoteError::Runtime(e.to_string()),
            RuntimeError::Unsupported(m) => RemoteError::Unsupported(m),
            RuntimeError::Budget(b) => RemoteError::Unsupported(b.to_string()),
            RuntimeError::Shape(_) => RemoteError::BadRequest(e.to_string()),
        }
    }
}

fn load_err(e: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Load(format!("{e:#}"))
}

/// A model ready to run.
pub struct LoadedModel {
    plan: Plan,
    /// In tract's input order (the order [`LoadedModel::prepare`] expects).
    pub inputs: Vec<InputSpec>,
    pub outputs: Vec<String>,
    /// False when tract's optimizer failed and the typed model runs instead.
    pub optimized: bool,
}

/// Parses, types and optimizes a model for `batch` samples per run (used
/// where the first input axis is symbolic). Decoded without rba-onnx's
/// structural validation: whatever tract runs, the board runs. No memory
/// check: jobs load through [`load_within`].
pub fn load(bytes: &[u8], batch: usize) -> Result<LoadedModel, RuntimeError> {
    let proto = ModelProto::decode(bytes).map_err(load_err)?;
    load_proto(&proto, batch)
}

/// [`load`], after checking that the tensors the model declares for
/// `batch` fit `budget` bytes ([`rba_onnx::budget::check`]): a model that
/// would have tract allocate more is refused before tract sees it.
pub fn load_within(bytes: &[u8], batch: usize, budget: u64) -> Result<LoadedModel, RuntimeError> {
    let proto = ModelProto::decode(bytes).map_err(load_err)?;
    let footprint = budget::check(&proto, batch as u64, budget)?;
    log::debug!(
        "{} tensors sized, {} resident and generated (budget {})",
        footprint.tensors.len(),
        budget::human_bytes(footprint.total_bytes),
        budget::human_bytes(budget)
    );
    load_proto(&proto, batch)
}

fn load_proto(proto: &ModelProto, batch: usize) -> Result<LoadedModel, RuntimeError> {
    let graph = proto.graph.as_ref().ok_or_else(|| RuntimeError::Load("the model has no graph".into()))?;
    let inputs = declared_inputs(graph, batch.max(1)).map_err(|e| RuntimeError::Unsupported(e.to_string()))?;
    if inputs.is_empty() {
        return Err(RuntimeError::Unsupported("the model has no inputs".into()));
    }
    let model = inference_model(proto, &inputs).map_err(load_err)?;
    // tract's inputs follow the graph's (non-initializer) inputs.
    let mut ordered = Vec::with_capacity(inputs.len());
    for outlet in model.input_outlets().map_err(load_err)? {
        let name = &model.node(outlet.node).name;
        let spec = inputs
            .iter()
            .find(|s| &s.name == name)
            .ok_or_else(|| RuntimeError::Load(format!("input '{name}' has no declaration")))?;
        ordered.push(spec.clone());
    }
    let outputs: Vec<String> = model
        .output_outlets()
        .map_err(load_err)?
        .iter()
        .map(|o| model.outlet_label(*o).map(str::to_string).unwrap_or_else(|| model.node(o.node).name.clone()))
        .collect();
    let (plan, optimized) = into_plan(model).map_err(load_err)?;
    Ok(LoadedModel { plan, inputs: ordered, outputs, optimized })
}

/// One output: its shape and its values, flattened.
pub type OutputF32 = (Vec<usize>, Vec<f32>);

/// Values of one run's inputs, ready for tract (cheap to clone).
#[derive(Clone)]
pub struct Prepared(TVec<TValue>);

impl LoadedModel {
    /// Samples per run (first axis of the first input, 1 for scalars).
    pub fn batch(&self) -> usize {
        self.inputs.first().and_then(|s| s.shape.first()).copied().unwrap_or(1)
    }

    /// Builds input tensors from flat f32 values, one vector per input.
    pub fn prepare(&self, values: Vec<Vec<f32>>) -> Result<Prepared, RuntimeError> {
        if values.len() != self.inputs.len() {
            return Err(RuntimeError::Shape(format!(
                "{} input tensor(s) given, the model has {}",
                values.len(),
                self.inputs.len()
            )));
        }
        let mut tv = TVec::new();
        for (spec, v) in self.inputs.iter().zip(values) {
            if v.len() != spec.elements() {
                return Err(RuntimeError::Shape(format!(
                    "input '{}' needs {} values (shape {:?}), got {}",
                    spec.name,
                    spec.elements(),
                    spec.shape,
                    v.len()
                )));
            }
            let t = tract_ndarray::ArrayD::from_shape_vec(spec.shape.clone(), v)
                .map_err(|e| RuntimeError::Shape(e.to_string()))?;
            tv.push(Tensor::from(t).into_tvalue());
        }
        Ok(Prepared(tv))
    }

    /// Deterministic pseudo-random inputs in [0, 1).
    pub fn synthetic_inputs(&self, seed: u64) -> Result<Prepared, RuntimeError> {
        let mut state = seed;
        let values = self
            .inputs
            .iter()
            .map(|s| (0..s.elements()).map(|_| (splitmix64(&mut state) >> 40) as f32 / (1u64 << 24) as f32).collect())
            .collect();
        self.prepare(values)
    }

    /// One run; outputs are dropped (for timing).
    pub fn run(&self, inputs: &Prepared) -> Result<(), RuntimeError> {
        self.plan.run(inputs.0.clone()).map(|_| ()).map_err(|e| RuntimeError::Run(format!("{e:#}")))
    }

    /// One run, returning every output as flat f32 values with its shape.
    pub fn run_f32(&self, inputs: &Prepared) -> Result<Vec<OutputF32>, RuntimeError> {
        let run = |e: TractError| RuntimeError::Run(format!("{e:#}"));
        let out = self.plan.run(inputs.0.clone()).map_err(run)?;
        out.into_iter()
            .map(|v| {
                let a = to_f32_array(v).map_err(run)?;
                let shape = a.shape().to_vec();
                let values =
                    if a.is_standard_layout() { a.into_raw_vec_and_offset().0 } else { a.iter().copied().collect() };
                Ok((shape, values))
            })
            .collect()
    }
}

/// Thread pools for tract's matrix products, one per thread count, made
/// on first use and kept: at most one pool per count from 2 to `max`, so
/// at most 2 + 3 + ... + `max` threads however many jobs ran.
pub struct Executors {
    max: u32,
    pools: Mutex<HashMap<u32, Executor>>,
}

impl Executors {
    /// Pools of at most `max` threads (the cores); larger requests get `max`.
    pub fn new(max: u32) -> Executors {
        Executors { max: max.max(1), pools: Mutex::new(HashMap::new()) }
    }

    /// Runs `f` with tract using `threads` threads (at most the maximum) on
    /// this thread.
    pub fn scope<R>(&self, threads: u32, f: impl FnOnce() -> R) -> R {
        let threads = threads.min(self.max);
        if threads <= 1 {
            return multithread_tract_scope(Executor::SingleThread, f);
        }
        let exec = {
            let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
            pools.entry(threads).or_insert_with(|| Executor::multithread(threads as usize)).clone()
        };
        multithread_tract_scope(exec, f)
    }

    /// Pools made so far.
    pub fn pools(&self) -> usize {
        self.pools.lock().map_or(0, |p| p.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pools_are_bounded_by_the_maximum() {
        let ex = Executors::new(2);
        for threads in [1, 2, 3, 8, 64, 2, 64] {
            ex.scope(threads, || ());
        }
        assert_eq!(ex.pools(), 1, "one pool, of 2 threads, for every request above 1");
        let ex = Executors::new(4);
        for threads in [64, 3, 2, 4, 1, 100] {
            ex.scope(threads, || ());
        }
        assert_eq!(ex.pools(), 3, "counts 2, 3 and 4");
    }
}
