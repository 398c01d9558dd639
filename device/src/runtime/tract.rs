//! tract, built into rba-device: loading with a concrete batch (the input
//! rule and tract's loading are rba-onnx's, shared with the host), running
//! on a chosen number of threads.

use std::collections::HashMap;
use std::sync::Mutex;

use rba_onnx::inputs::InputSpec;
use rba_onnx::proto::ModelProto;
use rba_onnx::tract::{inference_model, into_plan, to_f32_array, Plan};
use tract_linalg::multithread::{multithread_tract_scope, Executor};
use tract_onnx::prelude::*;

use super::{OutputF32, RuntimeError};

/// tract and its version, as reported in the device identity and results.
pub const VERSION: &str = "tract-onnx 0.23";

fn load_err(e: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Load(format!("{e:#}"))
}

/// A model tract has planned.
pub(crate) struct TractModel {
    plan: Plan,
    /// In tract's input order.
    pub inputs: Vec<InputSpec>,
    pub outputs: Vec<String>,
    /// False when tract's optimizer failed and the typed model runs instead.
    pub optimized: bool,
    /// Nodes of the plan.
    pub nodes: usize,
}

/// Inputs of one run, ready for tract (cheap to clone).
#[derive(Clone)]
pub(crate) struct TractInputs(TVec<TValue>);

/// Types and optimizes `proto` for the concrete `inputs` (declared with
/// the batch already set).
pub(crate) fn load(proto: &ModelProto, inputs: &[InputSpec]) -> Result<TractModel, RuntimeError> {
    let model = inference_model(proto, inputs).map_err(load_err)?;
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
    let nodes = plan.model().nodes().len();
    Ok(TractModel { plan, inputs: ordered, outputs, optimized, nodes })
}

impl TractModel {
    /// Tensors from flat values already checked against the inputs.
    pub fn prepare(&self, values: Vec<Vec<f32>>) -> Result<TractInputs, RuntimeError> {
        let mut tv = TVec::new();
        for (spec, v) in self.inputs.iter().zip(values) {
            let t = tract_ndarray::ArrayD::from_shape_vec(spec.shape.clone(), v)
                .map_err(|e| RuntimeError::Shape(e.to_string()))?;
            tv.push(Tensor::from(t).into_tvalue());
        }
        Ok(TractInputs(tv))
    }

    pub fn run(&self, inputs: &TractInputs) -> Result<(), RuntimeError> {
        self.plan.run(inputs.0.clone()).map(|_| ()).map_err(|e| RuntimeError::Run(format!("{e:#}")))
    }

    pub fn run_f32(&self, inputs: &TractInputs) -> Result<Vec<OutputF32>, RuntimeError> {
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
