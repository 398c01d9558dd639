//! One benchmark, compare or evaluation job, wherever it runs: on a thread
//! of the daemon or in a worker process ([`crate::worker`]). A [`JobSpec`]
//! says everything the job needs (artifact paths in the store, threads,
//! policies, the memory budget) and crosses a pipe to a worker as postcard;
//! a [`JobContext`] is how the job reports progress, notices a
//! cancellation and reads its peak memory where it runs.
//!
//! Every model is checked against the memory budget
//! ([`rba_onnx::budget`]) before tract sees it, and a panic inside tract
//! ends the job, not its process ([`run_guarded`]).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::time::Duration;

use rba_protocol::{BenchmarkResult, EvalBundle, EvalResult, Phase, RemoteError, RunPolicy};
use serde::{Deserialize, Serialize};

use crate::measure::Caps;
use crate::runtime::{self, LoadedModel, RuntimeError};

/// A published artifact the job reads: its name (for messages) and its
/// file in the store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Artifact {
    pub name: String,
    pub path: PathBuf,
}

/// What a job does.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Work {
    /// One model (a benchmark) or several measured interleaved (compare).
    Bench { models: Vec<Artifact>, warmup: RunPolicy, runs: RunPolicy, input_bundle: Option<Artifact> },
    /// Every sample of a bundle through a model.
    Evaluate { model: Artifact, bundle: Artifact },
}

/// Everything a job needs, wherever it runs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobSpec {
    pub work: Work,
    /// Threads for tract (already clamped to the cores).
    pub threads: u32,
    /// Bytes the tensors a model declares may take (inputs at batch 1,
    /// weights, constants, generated tensors; see `rba_onnx::budget`).
    pub memory_budget: u64,
    pub max_runs: u32,
    pub max_time_ms: u64,
}

impl JobSpec {
    pub fn caps(&self) -> Caps {
        Caps { max_runs: self.max_runs, max_time: Duration::from_millis(self.max_time_ms) }
    }

    pub fn models(&self) -> Vec<&Artifact> {
        match &self.work {
            Work::Bench { models, .. } => models.iter().collect(),
            Work::Evaluate { model, .. } => vec![model],
        }
    }

    /// "model 'a'" or "models 'a' and 'b'", for messages about the job.
    pub fn models_label(&self) -> String {
        let names: Vec<String> = self.models().iter().map(|a| format!("'{}'", a.name)).collect();
        match names.as_slice() {
            [one] => format!("model {one}"),
            [init @ .., last] => format!("models {} and {last}", init.join(", ")),
            [] => "the job".into(),
        }
    }
}

/// What a job produced.
// Results are large and rare; boxing them would only complicate matching.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum JobOutput {
    /// One result per model, in order. Temperatures and throttling are left
    /// for the daemon to fill in (it reads them around the job).
    Bench(Vec<BenchmarkResult>),
    Evaluate(EvalResult),
}

/// Where a job runs: how it reports and what it can read.
pub trait JobContext {
    /// A progress event for the host.
    fn progress(&self, phase: Phase, done: u64, total: Option<u64>, message: Option<String>);
    /// `Err(Cancelled)` once the host cancelled or the daemon is stopping.
    fn check(&self) -> Result<(), RemoteError>;
    /// Peak resident memory of the process running the job, since the job
    /// started where that can be reset.
    fn peak_rss(&self) -> Option<u64>;
}

/// Runs `spec` here (tract's thread pool already chosen by the caller).
pub fn run(spec: &JobSpec, ctx: &dyn JobContext) -> Result<JobOutput, RemoteError> {
    match &spec.work {
        Work::Bench { models, warmup, runs, input_bundle } => {
            let bundle = input_bundle.as_ref().map(read_bundle).transpose()?;
            crate::daemon::bench::bench(spec, models, *warmup, *runs, bundle.as_ref(), ctx).map(JobOutput::Bench)
        }
        Work::Evaluate { model, bundle: b } => {
            let bundle = read_bundle(b)?;
            crate::daemon::evaluate::evaluate(spec, model, &b.name, &bundle, ctx).map(JobOutput::Evaluate)
        }
    }
}

/// [`run`], with a panic (inside tract: a division by zero, a capacity
/// overflow, an allocation tract checks) turned into the job's error.
/// `memory_limited`: the process runs under a memory limit built on the
/// budget (a worker), so a failed allocation means the budget ran out.
pub fn run_guarded(spec: &JobSpec, ctx: &dyn JobContext, memory_limited: bool) -> Result<JobOutput, RemoteError> {
    match catch_unwind(AssertUnwindSafe(|| run(spec, ctx))) {
        Ok(r) => r,
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".into());
            let label = spec.models_label();
            log::warn!("{label}: the runtime panicked: {what}");
            let allocation = what.contains("allocat") || what.contains("capacity overflow");
            let why = match (allocation, memory_limited) {
                (true, true) => format!(
                    "it ran out of its {} memory budget ({what})",
                    rba_onnx::budget::human_bytes(spec.memory_budget)
                ),
                (true, false) => format!("it ran out of memory ({what})"),
                (false, _) => format!("the runtime panicked: {what}"),
            };
            Err(RemoteError::Runtime(format!("{label}: the job was stopped: {why}")))
        }
    }
}

/// Reads and loads a model for `batch` samples per run, within the budget.
pub(crate) fn load(model: &Artifact, batch: usize, budget: u64) -> Result<LoadedModel, RemoteError> {
    let bytes = std::fs::read(&model.path)
        .map_err(|e| RemoteError::Storage(format!("cannot read model '{}': {e}", model.name)))?;
    runtime::load_within(&bytes, batch, budget).map_err(|e| model_error(&model.name, e))
}

fn read_bundle(bundle: &Artifact) -> Result<EvalBundle, RemoteError> {
    let bytes = std::fs::read(&bundle.path)
        .map_err(|e| RemoteError::Storage(format!("cannot read eval bundle '{}': {e}", bundle.name)))?;
    EvalBundle::decode(&bytes).map_err(|e| RemoteError::BadRequest(format!("eval bundle '{}': {e}", bundle.name)))
}

/// A runtime error as the host sees it, naming the model.
pub(crate) fn model_error(name: &str, e: RuntimeError) -> RemoteError {
    match RemoteError::from(e) {
        RemoteError::Runtime(m) => RemoteError::Runtime(format!("model '{name}': {m}")),
        RemoteError::Unsupported(m) => RemoteError::Unsupported(format!("model '{name}': {m}")),
        RemoteError::BadRequest(m) => RemoteError::BadRequest(format!("model '{name}': {m}")),
        other => other,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn spec(names: &[&str]) -> JobSpec {
        let models =
            names.iter().map(|n| Artifact { name: (*n).into(), path: PathBuf::from("/nowhere").join(n) }).collect();
        JobSpec {
            work: Work::Bench { models, warmup: RunPolicy::default(), runs: RunPolicy::default(), input_bundle: None },
            threads: 1,
            memory_budget: 1 << 30,
            max_runs: 10,
            max_time_ms: 1000,
        }
    }

    struct Quiet;

    impl JobContext for Quiet {
        fn progress(&self, _: Phase, _: u64, _: Option<u64>, _: Option<String>) {}
        fn check(&self) -> Result<(), RemoteError> {
            Ok(())
        }
        fn peak_rss(&self) -> Option<u64> {
            None
        }
    }

    #[test]
    fn labels_and_a_missing_file_is_named_not_pathed() {
        assert_eq!(spec(&["a"]).models_label(), "model 'a'");
        assert_eq!(spec(&["a", "b"]).models_label(), "models 'a' and 'b'");
        assert_eq!(spec(&["a", "b", "c"]).models_label(), "models 'a', 'b' and 'c'");
        let e = run_guarded(&spec(&["gone"]), &Quiet, false).unwrap_err();
        match e {
            RemoteError::Storage(m) => {
                assert!(m.starts_with("cannot read model 'gone': "), "{m}");
                assert!(!m.contains("/nowhere"), "no path reaches the host: {m}");
            }
            other => panic!("{other:?}"),
        }
        let bytes = postcard::to_stdvec(&spec(&["a", "b"])).unwrap();
        assert_eq!(postcard::from_bytes::<JobSpec>(&bytes).unwrap(), spec(&["a", "b"]));
    }
}
