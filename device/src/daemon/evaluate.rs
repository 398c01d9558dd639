//! Evaluation jobs: every sample of a bundle through the model, a batch at
//! a time, scored against the bundle's labels and expected outputs.

use rba_protocol::{ArtifactKind, EvalBundle, EvalRequest, EvalResult, Job, Phase, RemoteError, TensorF32};

use super::{Daemon, PROGRESS_EVERY_NS};
use crate::job::{self, model_error, Artifact, JobContext, JobOutput, JobSpec, Work};
use crate::measure::{self, Clock, MonotonicClock};
use crate::metrics::Metrics;
use crate::runtime::{LoadedModel, OutputF32, Prepared, RuntimeError};

impl Daemon {
    pub(super) fn run_evaluation(&self, req: &EvalRequest, job: &Job) -> Result<EvalResult, RemoteError> {
        let threads = self.threads(req.threads, "evaluation")?;
        let model = Artifact { name: req.model.clone(), path: self.store.existing(ArtifactKind::Model, &req.model)? };
        let bundle =
            Artifact { name: req.bundle.clone(), path: self.store.existing(ArtifactKind::EvalBundle, &req.bundle)? };
        log::info!("evaluate {} on {} ({threads} thread(s))", req.model, req.bundle);
        let spec = self.job_spec(Work::Evaluate { model, bundle }, threads);
        match self.execute(&spec, job)? {
            JobOutput::Evaluate(r) => Ok(r),
            JobOutput::Bench(_) => Err(RemoteError::Internal("an evaluation produced another job's result".into())),
        }
    }
}

/// The job: loads the model and scores every sample of the bundle.
pub(crate) fn evaluate(
    spec: &JobSpec,
    model: &Artifact,
    bundle_name: &str,
    bundle: &EvalBundle,
    ctx: &dyn JobContext,
) -> Result<EvalResult, RemoteError> {
    let name = model.name.as_str();
    ctx.progress(Phase::Loading, 0, Some(1), Some(name.to_string()));
    let loaded = job::load(model, 1, spec.memory_budget)?;
    let (metrics, latencies) = score(name, &loaded, bundle, ctx)?;
    Ok(EvalResult {
        model: name.to_string(),
        bundle: bundle_name.to_string(),
        samples: u32::try_from(bundle.num_samples()).unwrap_or(u32::MAX),
        top1_accuracy: metrics.top1_accuracy(),
        top1_agreement: metrics.top1_agreement(),
        max_abs_diff: metrics.max_abs_diff(),
        mean_cosine: metrics.mean_cosine(),
        latency: measure::stats(&latencies),
        peak_rss_bytes: ctx.peak_rss(),
    })
}

/// The batch loop: runs every sample of `bundle` through `model` and
/// scores it; returns the metrics and each batch's time per sample.
fn score(
    name: &str,
    model: &LoadedModel,
    bundle: &EvalBundle,
    ctx: &dyn JobContext,
) -> Result<(Metrics, Vec<u64>), RemoteError> {
    let err = |e| model_error(name, e);
    let inputs = BundleInputs::map(model, &bundle.inputs).map_err(err)?;
    check_expected_count(model, bundle.expected.as_deref()).map_err(err)?;
    let n = bundle.num_samples();
    let batch = model.batch() as u64;
    let mut metrics = Metrics::default();
    let mut latencies = Vec::new();
    let mut clock = MonotonicClock::default();
    let mut last = 0u64;
    let mut start = 0u64;
    while start < n {
        ctx.check()?;
        let input = inputs.batch(model, start, n).map_err(err)?;
        let (outputs, ns) = measure::time_once(&mut clock, || model.run_f32(&input)).map_err(err)?;
        let rows = batch.min(n - start);
        latencies.push(ns / batch.max(1));
        for (s, outputs) in (start..).zip(split_per_sample(&outputs, batch, rows).map_err(err)?) {
            let label = bundle.labels.as_ref().and_then(|l| l.get(s as usize).copied());
            let expected = expected_sample(model, bundle.expected.as_deref(), s, &outputs).map_err(err)?;
            metrics.add(&outputs, label, expected.as_deref());
        }
        start += rows;
        let now = clock.now_ns();
        if now.saturating_sub(last) >= PROGRESS_EVERY_NS {
            last = now;
            ctx.progress(Phase::Evaluating, start, Some(n), None);
        }
    }
    ctx.progress(Phase::Evaluating, n, Some(n), None);
    Ok((metrics, latencies))
}

/// A bundle's input tensors matched to a model's inputs.
struct BundleInputs<'a> {
    tensors: &'a [TensorF32],
    /// For each model input, the index of its bundle tensor.
    order: Vec<usize>,
}

impl<'a> BundleInputs<'a> {
    /// Matches by name when every model input has a bundle tensor of its
    /// name, else by position; each tensor's per-sample shape must be the
    /// model input's.
    fn map(model: &LoadedModel, tensors: &'a [TensorF32]) -> Result<Self, RuntimeError> {
        if tensors.len() != model.inputs.len() {
            return Err(RuntimeError::Shape(format!(
                "the bundle has {} input tensor(s), the model has {} input(s)",
                tensors.len(),
                model.inputs.len()
            )));
        }
        let by_name: Option<Vec<usize>> = model
            .inputs
            .iter()
            .map(|spec| tensors.iter().position(|t| t.name.as_deref() == Some(spec.name.as_str())))
            .collect();
        let order = by_name.unwrap_or_else(|| (0..tensors.len()).collect());
        for (spec, &ix) in model.inputs.iter().zip(&order) {
            let t = &tensors[ix];
            let per_sample: Vec<u64> = t.shape.iter().skip(1).copied().collect();
            let want: Vec<u64> = spec.shape.iter().skip(1).map(|&d| d as u64).collect();
            if per_sample != want {
                return Err(RuntimeError::Shape(format!(
                    "bundle input {} has shape {:?} (samples first), the model's input '{}' expects {:?} per sample",
                    ix, t.shape, spec.name, want
                )));
            }
        }
        Ok(BundleInputs { tensors, order })
    }

    /// Inputs for samples `start..start + batch` of `n`, padded by
    /// repeating the last sample.
    fn batch(&self, model: &LoadedModel, start: u64, n: u64) -> Result<Prepared, RuntimeError> {
        let batch = model.batch() as u64;
        let mut values = Vec::new();
        for &ix in &self.order {
            let t = &self.tensors[ix];
            let mut v = Vec::new();
            for i in 0..batch {
                let s = (start + i).min(n.saturating_sub(1));
                let sample = t
                    .sample_f32(s)
                    .ok_or_else(|| RuntimeError::Shape(format!("bundle input {ix} lacks sample {s}")))?;
                v.extend(sample);
            }
            values.push(v);
        }
        model.prepare(values)
    }
}

/// The model's inputs from a bundle's first sample (a benchmark fed with
/// real data).
pub(super) fn first_sample_input(model: &LoadedModel, bundle: &EvalBundle) -> Result<Prepared, RuntimeError> {
    BundleInputs::map(model, &bundle.inputs)?.batch(model, 0, 1)
}

/// Expected outputs, if any, come one tensor per model output.
fn check_expected_count(model: &LoadedModel, expected: Option<&[TensorF32]>) -> Result<(), RuntimeError> {
    match expected {
        Some(exp) if exp.len() != model.outputs.len() => Err(RuntimeError::Shape(format!(
            "the bundle has {} expected tensor(s), the model has {} output(s)",
            exp.len(),
            model.outputs.len()
        ))),
        _ => Ok(()),
    }
}

/// The first `rows` samples of a batch's outputs: per sample, one flat
/// vector per output. Every output must have the batch as its first axis.
fn split_per_sample(outputs: &[OutputF32], batch: u64, rows: u64) -> Result<Vec<Vec<Vec<f32>>>, RuntimeError> {
    for (shape, values) in outputs {
        if shape.first().copied().map(|b| b as u64) != Some(batch) || !(values.len() as u64).is_multiple_of(batch) {
            return Err(RuntimeError::Shape(format!(
                "output shape {shape:?} has no batch axis of {batch}; cannot split it per sample"
            )));
        }
    }
    let sample = |values: &[f32], r: usize| {
        let w = values.len() / batch as usize;
        values.get(r * w..(r + 1) * w).unwrap_or_default().to_vec()
    };
    Ok((0..rows as usize).map(|r| outputs.iter().map(|(_, values)| sample(values, r)).collect()).collect())
}

/// Sample `s`'s expected outputs, each as wide as the model's output.
fn expected_sample(
    model: &LoadedModel,
    expected: Option<&[TensorF32]>,
    s: u64,
    outputs: &[Vec<f32>],
) -> Result<Option<Vec<Vec<f32>>>, RuntimeError> {
    let Some(exp) = expected else { return Ok(None) };
    let mut v = Vec::with_capacity(exp.len());
    for (k, (t, o)) in exp.iter().zip(outputs).enumerate() {
        let e = t.sample_f32(s).unwrap_or_default();
        if e.len() != o.len() {
            return Err(RuntimeError::Shape(format!(
                "expected output {k} has {} values per sample (shape {:?}), the model's output '{}' has {}",
                e.len(),
                t.shape,
                model.outputs.get(k).map_or("?", String::as_str),
                o.len()
            )));
        }
        v.push(e);
    }
    Ok(Some(v))
}
