//! Running models: tract (built in) or ONNX Runtime (loaded at run time
//! from the board's library, with execution providers), behind one API,
//! so that the jobs above (measurement, evaluation) are the same for both.
//!
//! - [`Runtime`]: which runtime loads a job's models, with what it needs
//!   (for onnxruntime: the library, the request, the board profile, the
//!   cache folder); [`Runtime::load`] checks the model against the memory
//!   budget first, whichever runtime runs it.
//! - [`LoadedModel`]: a model ready to run: its inputs and outputs,
//!   [`LoadedModel::prepare`], [`LoadedModel::run`],
//!   [`LoadedModel::run_f32`], and after the first run
//!   ([`LoadedModel::finish_first_run`]) its [`RuntimeReport`]: runtime and
//!   version, library, providers requested and registered (or the exact
//!   error), nodes per provider, session and first-run times, TensorRT's
//!   engine cache.
//! - [`tract`], [`onnxruntime`]: the two implementations; [`library`]:
//!   finding and loading ONNX Runtime; [`providers`]: which providers with
//!   which options; [`profiling`]: nodes per provider from ONNX Runtime's
//!   profile.

pub mod library;
pub(crate) mod onnxruntime;
pub mod profiling;
pub mod providers;
pub mod tract;

use std::path::PathBuf;
use std::time::Instant;

use prost::Message;
use rba_onnx::budget::{self, BudgetError};
use rba_onnx::inputs::{declared_inputs, InputSpec};
use rba_onnx::proto::ModelProto;
use rba_protocol::boards::OnnxRuntimeProfile;
use rba_protocol::rng::splitmix64;
use rba_protocol::{ExecutionProvider, ProviderNodes, RemoteError, RuntimeKind, RuntimeReport, RuntimeRequest};
use serde::{Deserialize, Serialize};

pub use self::tract::Executors;

/// Inference runtime, as reported in the device identity.
pub const RUNTIME: &str = tract::VERSION;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// tract could not parse, type or plan the model.
    #[error("tract cannot load the model: {0}")]
    Load(String),
    /// ONNX Runtime could not create a session for the model.
    #[error("onnxruntime cannot load the model: {0}")]
    OrtLoad(String),
    /// The model is valid but outside what the device runs.
    #[error("{0}")]
    Unsupported(String),
    /// ONNX Runtime is not usable here (no library, too old, does not load).
    #[error("{0}")]
    Unavailable(String),
    /// The policy is strict and a provider did not register, or nodes ran
    /// on a provider that was not asked for.
    #[error("{0}")]
    Provider(String),
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
            RuntimeError::Load(_) | RuntimeError::OrtLoad(_) | RuntimeError::Run(_) => {
                RemoteError::Runtime(e.to_string())
            }
            RuntimeError::Unsupported(m) | RuntimeError::Unavailable(m) | RuntimeError::Provider(m) => {
                RemoteError::Unsupported(m)
            }
            RuntimeError::Budget(b) => RemoteError::Unsupported(b.to_string()),
            RuntimeError::Shape(_) => RemoteError::BadRequest(e.to_string()),
        }
    }
}

/// What an onnxruntime job needs to load its models (crosses to a worker).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OrtSetup {
    /// The library the daemon found.
    pub library: PathBuf,
    /// The providers and policy the request asked for.
    pub request: RuntimeRequest,
    /// The board profile's `[onnxruntime]` (default providers, TensorRT).
    pub profile: OnnxRuntimeProfile,
    /// Where TensorRT keeps engines and timings (the store's
    /// `onnxruntime/tensorrt`).
    pub cache_dir: PathBuf,
    /// Idle intra-op threads sleep instead of spinning
    /// (`session.intra_op.allow_spinning = 0`): for a caller whose own
    /// threads need the cores between runs (the host's capture, which
    /// folds statistics while the next batch runs).
    #[serde(default)]
    pub no_spinning: bool,
}

impl OrtSetup {
    /// Whether the job may register a GPU provider (its worker then gets
    /// more address space: [`crate::worker::data_limit`]).
    pub fn may_use_gpu(&self) -> bool {
        let gpu = |ep: &ExecutionProvider| matches!(ep, ExecutionProvider::Cuda | ExecutionProvider::TensorRt);
        if self.request.eps.is_empty() {
            self.profile.execution_providers.iter().any(gpu)
        } else {
            self.request.eps.iter().any(gpu)
        }
    }
}

/// The runtime that loads a job's models.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub enum Runtime {
    #[default]
    Tract,
    OnnxRuntime(OrtSetup),
}

impl Runtime {
    pub fn kind(&self) -> RuntimeKind {
        match self {
            Runtime::Tract => RuntimeKind::Tract,
            Runtime::OnnxRuntime(_) => RuntimeKind::OnnxRuntime,
        }
    }

    /// Loads `bytes` for `batch` samples per run (used where the first input
    /// axis is symbolic) on `threads` threads (onnxruntime's intra-op
    /// threads; tract's come from the caller's executor). With `budget`,
    /// the tensors the model declares must fit it
    /// ([`rba_onnx::budget::check`]) before any runtime sees the model.
    /// Decoded without rba-onnx's structural validation: whatever the
    /// runtime runs, the board runs.
    pub fn load(
        &self,
        bytes: &[u8],
        batch: usize,
        budget: Option<u64>,
        threads: u32,
    ) -> Result<LoadedModel, RuntimeError> {
        let load_err = |m: String| match self {
            Runtime::Tract => RuntimeError::Load(m),
            Runtime::OnnxRuntime(_) => RuntimeError::OrtLoad(m),
        };
        let proto = ModelProto::decode(bytes).map_err(|e| load_err(format!("{e:#}")))?;
        if let Some(budget) = budget {
            let footprint = budget::check(&proto, batch as u64, budget)?;
            log::debug!(
                "{} tensors sized, {} resident and generated (budget {})",
                footprint.tensors.len(),
                budget::human_bytes(footprint.total_bytes),
                budget::human_bytes(budget)
            );
        }
        let graph = proto.graph.as_ref().ok_or_else(|| load_err("the model has no graph".into()))?;
        let inputs = declared_inputs(graph, batch.max(1)).map_err(|e| RuntimeError::Unsupported(e.to_string()))?;
        if inputs.is_empty() {
            return Err(RuntimeError::Unsupported("the model has no inputs".into()));
        }
        match self {
            Runtime::Tract => {
                let started = Instant::now();
                let m = tract::load(&proto, &inputs)?;
                let report = RuntimeReport {
                    runtime: RuntimeKind::Tract,
                    version: tract::VERSION.into(),
                    session_ns: u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX),
                    nodes: vec![ProviderNodes {
                        provider: "tract".into(),
                        nodes: u32::try_from(m.nodes).unwrap_or(u32::MAX),
                    }],
                    ..RuntimeReport::default()
                };
                Ok(LoadedModel {
                    inputs: m.inputs.clone(),
                    outputs: m.outputs.clone(),
                    optimized: m.optimized,
                    engine: Engine::Tract(m),
                    report,
                })
            }
            Runtime::OnnxRuntime(setup) => {
                let (m, report) = onnxruntime::load(setup, bytes, inputs, threads)?;
                Ok(LoadedModel {
                    inputs: m.inputs.clone(),
                    outputs: m.outputs.clone(),
                    optimized: true,
                    engine: Engine::Ort(m),
                    report,
                })
            }
        }
    }
}

/// Loads a model with tract for `batch` samples per run, without a memory
/// check (jobs load through [`load_within`] or [`Runtime::load`]).
pub fn load(bytes: &[u8], batch: usize) -> Result<LoadedModel, RuntimeError> {
    Runtime::Tract.load(bytes, batch, None, 1)
}

/// [`load`], after checking that the tensors the model declares for
/// `batch` fit `budget` bytes: a model that would have tract allocate more
/// is refused before tract sees it.
pub fn load_within(bytes: &[u8], batch: usize, budget: u64) -> Result<LoadedModel, RuntimeError> {
    Runtime::Tract.load(bytes, batch, Some(budget), 1)
}

enum Engine {
    Tract(tract::TractModel),
    Ort(onnxruntime::OrtModel),
}

/// One output: its shape and its values, flattened.
pub type OutputF32 = (Vec<usize>, Vec<f32>);

/// Values of one run's inputs, ready for the model's runtime.
pub struct Prepared(PreparedInner);

enum PreparedInner {
    Tract(tract::TractInputs),
    Ort(onnxruntime::OrtInputs),
}

/// A model ready to run.
pub struct LoadedModel {
    /// In the runtime's input order (the order [`LoadedModel::prepare`] expects).
    pub inputs: Vec<InputSpec>,
    pub outputs: Vec<String>,
    /// False when tract's optimizer failed and the typed model runs instead.
    pub optimized: bool,
    engine: Engine,
    report: RuntimeReport,
}

impl LoadedModel {
    /// Samples per run (first axis of the first input, 1 for scalars).
    pub fn batch(&self) -> usize {
        self.inputs.first().and_then(|s| s.shape.first()).copied().unwrap_or(1)
    }

    pub fn runtime(&self) -> RuntimeKind {
        self.report.runtime
    }

    /// What ran the model and how (complete after [`LoadedModel::finish_first_run`]).
    pub fn report(&self) -> &RuntimeReport {
        &self.report
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
        for (spec, v) in self.inputs.iter().zip(&values) {
            if v.len() != spec.elements() {
                return Err(RuntimeError::Shape(format!(
                    "input '{}' needs {} values (shape {:?}), got {}",
                    spec.name,
                    spec.elements(),
                    spec.shape,
                    v.len()
                )));
            }
        }
        Ok(Prepared(match &self.engine {
            Engine::Tract(m) => PreparedInner::Tract(m.prepare(values)?),
            Engine::Ort(m) => PreparedInner::Ort(m.prepare(values)?),
        }))
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

    fn mismatch() -> RuntimeError {
        RuntimeError::Shape("inputs prepared for another runtime".into())
    }

    /// One run; outputs are dropped (for timing).
    pub fn run(&self, inputs: &Prepared) -> Result<(), RuntimeError> {
        match (&self.engine, &inputs.0) {
            (Engine::Tract(m), PreparedInner::Tract(i)) => m.run(i),
            (Engine::Ort(m), PreparedInner::Ort(i)) => m.run(i),
            _ => Err(Self::mismatch()),
        }
    }

    /// One run, returning every output as flat f32 values with its shape.
    pub fn run_f32(&self, inputs: &Prepared) -> Result<Vec<OutputF32>, RuntimeError> {
        match (&self.engine, &inputs.0) {
            (Engine::Tract(m), PreparedInner::Tract(i)) => m.run_f32(i),
            (Engine::Ort(m), PreparedInner::Ort(i)) => m.run_f32(i),
            _ => Err(Self::mismatch()),
        }
    }

    /// After the first run (which took `first_run_ns`): completes the
    /// report (onnxruntime: nodes per provider from the profile of that run,
    /// the engine cache after it) and applies the policy: under `strict`,
    /// nodes on a provider that was not asked for are an error.
    pub fn finish_first_run(&mut self, first_run_ns: u64) -> Result<(), RuntimeError> {
        self.report.first_run_ns = first_run_ns;
        match &self.engine {
            Engine::Tract(_) => Ok(()),
            Engine::Ort(m) => m.finish_first_run(&mut self.report),
        }
    }
}
