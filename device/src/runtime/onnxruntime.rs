//! Running models with ONNX Runtime: a session with the planned execution
//! providers registered one by one (each with `error_on_failure`, so an
//! EP the library lacks is an error to report, never a silent CPU run),
//! profiling on for the first run only (to count the nodes each provider
//! ran, [`super::profiling`]), and TensorRT's engine cache counted before
//! the session and after the first run.

use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

use ort::ep::{self, ArbitrarilyConfigurableExecutionProvider, ExecutionProviderDispatch};
use ort::session::Session;
use ort::value::{DynValue, Tensor};
use rba_onnx::inputs::InputSpec;
use rba_protocol::{EngineCache, EpOutcome, EpPolicy, ExecutionProvider, ProviderNodes, RuntimeKind, RuntimeReport};
use sha2::{Digest, Sha256};

use super::library::{self, Found};
use super::providers::{self, CachePaths, EpPlan, PlannedEp};
use super::{OrtSetup, OutputF32, RuntimeError};

fn session_err(what: &str) -> impl Fn(ort::Error<ort::session::builder::SessionBuilder>) -> RuntimeError + '_ {
    move |e| RuntimeError::OrtLoad(format!("{what}: {e}"))
}

/// A session and what its first run leaves to read.
struct State {
    session: Session,
    /// Holds the profile until the first run ends profiling.
    profile_dir: Option<tempfile::TempDir>,
    /// Nodes per provider, once the first run ended profiling.
    nodes: Option<Result<Vec<ProviderNodes>, String>>,
}

pub(crate) struct OrtModel {
    state: Mutex<State>,
    pub inputs: Vec<InputSpec>,
    pub outputs: Vec<String>,
    plan: EpPlan,
    /// TensorRT's engine folder for this model, when caching engines.
    engines: Option<std::path::PathBuf>,
}

/// Inputs of one run, by input name.
pub(crate) struct OrtInputs(Vec<(String, DynValue)>);

/// `*.engine` files in `dir` (0 when there is no such folder).
fn engine_files(dir: &Path) -> u32 {
    std::fs::read_dir(dir).map_or(0, |d| {
        let n = d.flatten().filter(|e| e.path().extension().is_some_and(|x| x == "engine")).count();
        u32::try_from(n).unwrap_or(u32::MAX)
    })
}

fn has_files(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some())
}

/// The dispatch that registers `p` with its options, failing loudly.
fn dispatch(p: &PlannedEp) -> ExecutionProviderDispatch {
    fn with<E: ArbitrarilyConfigurableExecutionProvider>(mut e: E, options: &[(String, String)]) -> E {
        for (k, v) in options {
            e = e.with_arbitrary_config(k, v);
        }
        e
    }
    let d: ExecutionProviderDispatch = match p.ep {
        ExecutionProvider::Cpu => ep::CPU::default().with_arena_allocator(true).build(),
        ExecutionProvider::Xnnpack => with(ep::XNNPACK::default(), &p.options).build(),
        ExecutionProvider::Cuda => with(ep::CUDA::default(), &p.options).build(),
        ExecutionProvider::TensorRt => with(ep::TensorRT::default(), &p.options).build(),
    };
    d.error_on_failure()
}

/// ONNX Runtime's log level for sessions: warnings, or everything when
/// the daemon logs at `trace` (the verbose log names each node's provider).
fn session_log_level() -> ort::logging::LogLevel {
    if log::max_level() >= log::LevelFilter::Trace {
        ort::logging::LogLevel::Verbose
    } else {
        ort::logging::LogLevel::Warning
    }
}

/// Loads `bytes` in a session as `setup` says, on `threads` threads;
/// `inputs` are the declared inputs (batch set). Returns the model and the
/// report so far (providers, session time, engine cache before).
pub(crate) fn load(
    setup: &OrtSetup,
    bytes: &[u8],
    inputs: Vec<InputSpec>,
    threads: u32,
) -> Result<(OrtModel, RuntimeReport), RuntimeError> {
    let path = &setup.library;
    let version = path.file_name().and_then(|n| library::Version::from_file_name(&n.to_string_lossy()));
    let found = Found { path: path.clone(), origin: "the daemon".into(), version };
    let loaded = library::load(&found).map_err(|e| RuntimeError::Unavailable(e.to_string()))?;
    let digest = rba_protocol::hex(&Sha256::digest(bytes))[..16].to_string();
    let cache = CachePaths::for_model(&setup.cache_dir, &digest);
    let plan = providers::plan(&setup.request, &setup.profile, &loaded.providers, threads, &cache);
    let mut report = RuntimeReport {
        runtime: RuntimeKind::OnnxRuntime,
        version: format!("onnxruntime {}", loaded.version),
        library: Some(loaded.path.display().to_string()),
        policy: plan.policy,
        notes: plan.notes.clone(),
        ..RuntimeReport::default()
    };
    // TensorRT's caches: made before the session, counted around it.
    let trt = plan.eps.iter().find(|p| p.ep == ExecutionProvider::TensorRt);
    let engines = trt.filter(|_| setup.profile.tensorrt.engine_cache).map(|_| cache.engines.clone());
    if let Some(t) = trt {
        let want = |key: &str| t.options.iter().any(|(k, v)| k == key && v == "1");
        for (on, dir) in
            [(want("trt_engine_cache_enable"), &cache.engines), (want("trt_timing_cache_enable"), &cache.timing)]
        {
            if on {
                std::fs::create_dir_all(dir).map_err(|e| {
                    RuntimeError::OrtLoad(format!("cannot create TensorRT's cache folder in the store: {e}"))
                })?;
            }
        }
        report.engine_cache = Some(EngineCache {
            engines_before: engines.as_deref().map_or(0, engine_files),
            engines_after: 0,
            hit: false,
            timing_cache: want("trt_timing_cache_enable") && has_files(&cache.timing),
        });
    }
    let mut builder = Session::builder(&loaded.environment)
        .map_err(|e| RuntimeError::OrtLoad(format!("cannot create session options: {e}")))?
        .with_log_level(session_log_level())
        .map_err(session_err("log level"))?
        .with_intra_threads(plan.session_threads as usize)
        .map_err(session_err("intra-op threads"))?
        .with_inter_threads(1)
        .map_err(session_err("inter-op threads"))?;
    let spinning = setup.no_spinning.then(|| ("session.intra_op.allow_spinning".to_string(), "0".to_string()));
    for (k, v) in plan.session_config.iter().chain(spinning.iter()) {
        builder = builder.with_config_entry(k, v).map_err(session_err("session configuration"))?;
    }
    let profile_dir = tempfile::Builder::new()
        .prefix("rba-ort-profile-")
        .tempdir()
        .map_err(|e| RuntimeError::OrtLoad(format!("cannot create a folder for onnxruntime's profile: {e}")))?;
    builder = builder.with_profiling(profile_dir.path().join("profile")).map_err(session_err("profiling"))?;
    for p in &plan.eps {
        let outcome = match builder.with_execution_providers([dispatch(p)]) {
            Ok(b) => {
                builder = b;
                EpOutcome { ep: p.ep.name().into(), options: p.options.clone(), error: None }
            }
            Err(e) => {
                let message = e.to_string();
                builder = e.recover();
                log::info!("onnxruntime: the {} provider did not register: {message}", p.ep);
                if plan.policy == EpPolicy::Strict {
                    return Err(RuntimeError::Provider(format!(
                        "the {} execution provider did not register (policy strict): {message}",
                        p.ep
                    )));
                }
                EpOutcome { ep: p.ep.name().into(), options: p.options.clone(), error: Some(message) }
            }
        };
        report.eps.push(outcome);
    }
    let started = Instant::now();
    let session = builder.commit_from_memory(bytes).map_err(|e| RuntimeError::OrtLoad(e.to_string()))?;
    report.session_ns = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
    let names: Vec<&str> = session.inputs().iter().map(|i| i.name()).collect();
    for spec in &inputs {
        if !names.contains(&spec.name.as_str()) {
            return Err(RuntimeError::OrtLoad(format!(
                "the session has no input '{}' (it has {})",
                spec.name,
                names.join(", ")
            )));
        }
    }
    let outputs = session.outputs().iter().map(|o| o.name().to_string()).collect();
    let state = State { session, profile_dir: Some(profile_dir), nodes: None };
    Ok((OrtModel { state: Mutex::new(state), inputs, outputs, plan, engines }, report))
}

/// Ends profiling after the first run and counts nodes per provider.
fn end_profiling(state: &mut State) {
    let Some(dir) = state.profile_dir.take() else { return };
    let nodes = state.session.end_profiling().map_err(|e| format!("cannot end onnxruntime's profiling: {e}")).and_then(
        |file| {
            let path =
                if Path::new(&file).is_absolute() { std::path::PathBuf::from(&file) } else { dir.path().join(&file) };
            let json = std::fs::read_to_string(&path)
                .or_else(|_| std::fs::read_to_string(&file))
                .map_err(|e| format!("cannot read onnxruntime's profile {file}: {e}"))?;
            super::profiling::nodes_per_provider(&json)
        },
    );
    drop(dir);
    state.nodes = Some(nodes);
}

impl OrtModel {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn prepare(&self, values: Vec<Vec<f32>>) -> Result<OrtInputs, RuntimeError> {
        let mut v = Vec::with_capacity(values.len());
        for (spec, data) in self.inputs.iter().zip(values) {
            let t = Tensor::from_array((spec.shape.clone(), data)).map_err(|e| RuntimeError::Shape(e.to_string()))?;
            v.push((spec.name.clone(), t.into_dyn()));
        }
        Ok(OrtInputs(v))
    }

    fn with_outputs<R>(
        &self,
        inputs: &OrtInputs,
        f: impl FnOnce(&ort::session::SessionOutputs<'_>) -> Result<R, RuntimeError>,
    ) -> Result<R, RuntimeError> {
        let mut state = self.lock();
        let feed: Vec<(&str, &DynValue)> = inputs.0.iter().map(|(n, v)| (n.as_str(), v)).collect();
        let r = {
            let outputs = state.session.run(feed).map_err(|e| RuntimeError::Run(e.to_string()))?;
            f(&outputs)
        };
        end_profiling(&mut state);
        r
    }

    pub fn run(&self, inputs: &OrtInputs) -> Result<(), RuntimeError> {
        self.with_outputs(inputs, |_| Ok(()))
    }

    pub fn run_f32(&self, inputs: &OrtInputs) -> Result<Vec<OutputF32>, RuntimeError> {
        self.with_outputs(inputs, |outputs| {
            self.outputs
                .iter()
                .map(|name| {
                    let v = outputs
                        .get(name)
                        .ok_or_else(|| RuntimeError::Run(format!("onnxruntime returned no output '{name}'")))?;
                    to_f32(name, v)
                })
                .collect()
        })
    }

    /// After the first run: nodes per provider and the engine cache into
    /// `report`; under `strict`, an error when any node ran on a provider
    /// that was not asked for.
    pub fn finish_first_run(&self, report: &mut RuntimeReport) -> Result<(), RuntimeError> {
        let nodes = {
            let mut state = self.lock();
            end_profiling(&mut state);
            state.nodes.clone()
        };
        match nodes {
            Some(Ok(n)) => report.nodes = n,
            Some(Err(why)) => report.notes.push(why),
            None => report.notes.push("onnxruntime's profile was not written".into()),
        }
        if let (Some(dir), Some(cache)) = (&self.engines, report.engine_cache.as_mut()) {
            cache.engines_after = engine_files(dir);
            cache.hit = cache.engines_before > 0 && cache.engines_after == cache.engines_before;
        }
        if self.plan.policy == EpPolicy::Strict {
            let mut allowed: Vec<&str> = self.plan.eps.iter().map(|p| p.ep.ort_name()).collect();
            if allowed.is_empty() {
                allowed.push(ExecutionProvider::Cpu.ort_name());
            }
            let total: u32 = report.nodes.iter().map(|n| n.nodes).sum();
            if let Some(other) = report.nodes.iter().find(|n| !allowed.contains(&n.provider.as_str())) {
                let asked: Vec<&str> = self.plan.eps.iter().map(|p| p.ep.name()).collect();
                return Err(RuntimeError::Provider(format!(
                    "{} of {total} nodes ran on {}, which was not asked for (policy strict, providers: {}); add cpu to \
                     the providers to allow it, or use policy fallback",
                    other.nodes,
                    other.provider,
                    if asked.is_empty() { "cpu".to_string() } else { asked.join(", ") }
                )));
            }
        }
        Ok(())
    }
}

/// An output as f32 values with its shape (f32, f64 and integer outputs).
fn to_f32(name: &str, v: &DynValue) -> Result<OutputF32, RuntimeError> {
    fn shape(s: &ort::value::Shape) -> Vec<usize> {
        s.iter().map(|&d| usize::try_from(d).unwrap_or(0)).collect()
    }
    if let Ok((s, d)) = v.try_extract_tensor::<f32>() {
        return Ok((shape(s), d.to_vec()));
    }
    if let Ok((s, d)) = v.try_extract_tensor::<f64>() {
        return Ok((shape(s), d.iter().map(|&x| x as f32).collect()));
    }
    if let Ok((s, d)) = v.try_extract_tensor::<i64>() {
        return Ok((shape(s), d.iter().map(|&x| x as f32).collect()));
    }
    if let Ok((s, d)) = v.try_extract_tensor::<i32>() {
        return Ok((shape(s), d.iter().map(|&x| x as f32).collect()));
    }
    Err(RuntimeError::Run(format!("output '{name}' is not a numeric tensor ({:?})", v.dtype())))
}
