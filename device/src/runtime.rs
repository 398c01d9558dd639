//! Running ONNX models with tract: load with a concrete batch, optimize
//! (falling back to the typed model), run with a chosen thread count.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rba_protocol::RemoteError;
use tract_linalg::multithread::{multithread_tract_scope, Executor};
use tract_onnx::pb;
use tract_onnx::pb::tensor_shape_proto::dimension::Value as DimValue;
use tract_onnx::pb::type_proto::Value as TypeValue;
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
}

impl From<RuntimeError> for RemoteError {
    fn from(e: RuntimeError) -> Self {
        match e {
            RuntimeError::Load(_) | RuntimeError::Run(_) => RemoteError::Runtime(e.to_string()),
            RuntimeError::Unsupported(m) => RemoteError::Unsupported(m),
            RuntimeError::Shape(_) => RemoteError::BadRequest(e.to_string()),
        }
    }
}

fn load_err(e: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Load(format!("{e:#}"))
}

/// A model input with its concrete shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InputSpec {
    pub name: String,
    pub shape: Vec<usize>,
    /// The first axis was symbolic (a free batch size).
    pub free_batch: bool,
}

impl InputSpec {
    pub fn elements(&self) -> usize {
        self.shape.iter().product()
    }
}

/// A model ready to run.
pub struct LoadedModel {
    plan: Arc<TypedRunnableModel>,
    pub inputs: Vec<InputSpec>,
    pub outputs: Vec<String>,
    /// False when tract's optimizer failed and the typed model runs instead.
    pub optimized: bool,
}

/// ONNX `TensorProto.DataType.FLOAT`.
const ONNX_FLOAT: i32 = 1;

/// Reads the declared inputs of a model: names and shapes, with a symbolic
/// (or unknown) first axis replaced by `batch`.
pub fn declared_inputs(proto: &pb::ModelProto, batch: usize) -> Result<Vec<InputSpec>, RuntimeError> {
    let graph = proto.graph.as_ref().ok_or_else(|| RuntimeError::Load("the model has no graph".into()))?;
    let initializers: std::collections::HashSet<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let mut specs = Vec::new();
    for vi in graph.input.iter().filter(|i| !initializers.contains(i.name.as_str())) {
        let unsupported = |what: String| RuntimeError::Unsupported(format!("input '{}': {what}", vi.name));
        let Some(TypeValue::TensorType(t)) = vi.r#type.as_ref().and_then(|t| t.value.as_ref()) else {
            return Err(unsupported("not a tensor".into()));
        };
        if t.elem_type != ONNX_FLOAT {
            return Err(unsupported(format!("element type {} (only float32 inputs are supported)", t.elem_type)));
        }
        let dims = t.shape.as_ref().map(|s| s.dim.as_slice()).unwrap_or_default();
        if t.shape.is_none() {
            return Err(unsupported("no declared shape".into()));
        }
        let mut shape = Vec::with_capacity(dims.len());
        let mut free_batch = false;
        for (axis, d) in dims.iter().enumerate() {
            match d.value.as_ref() {
                Some(DimValue::DimValue(v)) if *v > 0 => {
                    shape.push(usize::try_from(*v).map_err(|_| unsupported(format!("dimension {axis} too large")))?)
                }
                _ if axis == 0 => {
                    free_batch = true;
                    shape.push(batch);
                }
                Some(DimValue::DimParam(p)) => {
                    return Err(unsupported(format!("dimension {axis} is symbolic ('{p}'); only the batch may be")))
                }
                _ => return Err(unsupported(format!("dimension {axis} is unknown; only the batch may be"))),
            }
        }
        specs.push(InputSpec { name: vi.name.clone(), shape, free_batch });
    }
    if specs.is_empty() {
        return Err(RuntimeError::Unsupported("the model has no inputs".into()));
    }
    Ok(specs)
}

/// Parses, types and optimizes a model for `batch` samples per run (used
/// where the first input axis is symbolic).
pub fn load(bytes: &[u8], batch: usize) -> Result<LoadedModel, RuntimeError> {
    // Exporters annotate intermediate tensors and outputs with a symbolic
    // batch; with concrete inputs those hints cannot unify ("cannot unify
    // Sym(batch_size) with Val(1)") and tract infers every shape anyway.
    let onnx = tract_onnx::onnx().with_ignore_output_shapes(true).with_ignore_value_info(true);
    let mut proto = onnx.proto_model_for_read(&mut &*bytes).map_err(load_err)?;
    if let Some(g) = proto.graph.as_mut() {
        g.value_info.clear();
    }
    let inputs = declared_inputs(&proto, batch.max(1))?;
    let mut model = onnx.model_for_proto_model(&proto).map_err(load_err)?;
    // tract's inputs follow the graph's (non-initializer) inputs.
    let tract_inputs: Vec<String> =
        model.input_outlets().map_err(load_err)?.iter().map(|o| model.node(o.node).name.clone()).collect();
    let mut ordered = Vec::with_capacity(tract_inputs.len());
    for name in &tract_inputs {
        let spec = inputs
            .iter()
            .find(|s| &s.name == name)
            .ok_or_else(|| RuntimeError::Load(format!("input '{name}' has no declaration")))?;
        ordered.push(spec.clone());
    }
    for (ix, spec) in ordered.iter().enumerate() {
        model.set_input_fact(ix, f32::fact(&spec.shape).into()).map_err(load_err)?;
    }
    let outputs: Vec<String> = model
        .output_outlets()
        .map_err(load_err)?
        .iter()
        .map(|o| model.outlet_label(*o).map(str::to_string).unwrap_or_else(|| model.node(o.node).name.clone()))
        .collect();
    let typed = model.into_typed().map_err(load_err)?;
    // Some exports trip tract's optimizer; the typed model still runs.
    let (typed, optimized) = match typed.clone().into_optimized() {
        Ok(opt) => (opt, true),
        Err(_) => (typed, false),
    };
    let plan = typed.into_runnable().map_err(load_err)?;
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
            .map(|s| (0..s.elements()).map(|_| (splitmix(&mut state) >> 40) as f32 / (1u64 << 24) as f32).collect())
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
                let v = v.cast_to::<f32>().map_err(run)?;
                let view = v.to_plain_array_view::<f32>().map_err(run)?;
                Ok((view.shape().to_vec(), view.iter().copied().collect()))
            })
            .collect()
    }
}

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Thread pools for tract's matrix products, one per thread count.
#[derive(Default)]
pub struct Executors {
    pools: Mutex<HashMap<u32, Executor>>,
}

impl Executors {
    /// Runs `f` with tract using `threads` threads on this thread.
    pub fn scope<R>(&self, threads: u32, f: impl FnOnce() -> R) -> R {
        if threads <= 1 {
            return multithread_tract_scope(Executor::SingleThread, f);
        }
        let exec = {
            let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
            pools.entry(threads).or_insert_with(|| Executor::multithread(threads as usize)).clone()
        };
        multithread_tract_scope(exec, f)
    }
}
