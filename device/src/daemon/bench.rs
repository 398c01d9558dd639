//! Benchmark and compare jobs: load each model once, warm up, then measure
//! all of them interleaved (ABAB...), so drift (heat, other load) hits every
//! arm alike.
//!
//! The daemon side ([`Daemon::run_benchmark`], [`Daemon::run_comparison`])
//! builds the job and reads temperatures and throttling around it; the job
//! itself ([`bench`]) runs wherever the daemon's isolation puts it.

use std::cell::Cell;

use rba_protocol::{
    ArtifactKind, BenchmarkRequest, BenchmarkResult, CompareRequest, CompareResult, EvalBundle, Job, Phase,
    RemoteError, RunPolicy, Throttling,
};

use super::evaluate::first_sample_input;
use super::{Daemon, PROGRESS_EVERY_NS};
use crate::job::{self, model_error, Artifact, JobContext, JobOutput, JobSpec, Work};
use crate::measure::{self, MonotonicClock};

/// What a benchmark of one or more models runs.
struct BenchSpec<'a> {
    models: &'a [&'a str],
    threads: Option<u32>,
    warmup: RunPolicy,
    runs: RunPolicy,
    input_bundle: Option<&'a str>,
}

impl Daemon {
    pub(super) fn run_benchmark(&self, req: &BenchmarkRequest, job: &Job) -> Result<BenchmarkResult, RemoteError> {
        let spec = BenchSpec {
            models: &[req.model.as_str()],
            threads: req.threads,
            warmup: req.warmup,
            runs: req.runs,
            input_bundle: req.input_bundle.as_deref(),
        };
        let mut r = self.bench(&spec, job)?;
        r.pop().ok_or_else(|| RemoteError::Internal("no result".into()))
    }

    pub(super) fn run_comparison(&self, req: &CompareRequest, job: &Job) -> Result<CompareResult, RemoteError> {
        let spec = BenchSpec {
            models: &[req.model_a.as_str(), req.model_b.as_str()],
            threads: req.threads,
            warmup: req.warmup,
            runs: req.runs,
            input_bundle: req.input_bundle.as_deref(),
        };
        let mut r = self.bench(&spec, job)?;
        let (Some(b), Some(a)) = (r.pop(), r.pop()) else {
            return Err(RemoteError::Internal("compare lost a result".into()));
        };
        let ratio_of_medians = measure::ratio_of_medians(&a.stats, &b.stats);
        Ok(CompareResult { a, b, ratio_of_medians })
    }

    /// Benchmarks one model (one arm) or several interleaved; one result
    /// per model, in order.
    fn bench(&self, spec: &BenchSpec<'_>, job: &Job) -> Result<Vec<BenchmarkResult>, RemoteError> {
        let BenchSpec { models, threads, warmup, runs, input_bundle } = *spec;
        let threads = self.threads(threads, "benchmark")?;
        let models = models
            .iter()
            .map(|m| Ok(Artifact { name: (*m).to_string(), path: self.store.existing(ArtifactKind::Model, m)? }))
            .collect::<Result<Vec<_>, RemoteError>>()?;
        let input_bundle = input_bundle
            .map(|b| {
                Ok::<_, RemoteError>(Artifact {
                    name: b.into(),
                    path: self.store.existing(ArtifactKind::EvalBundle, b)?,
                })
            })
            .transpose()?;
        let names: Vec<&str> = models.iter().map(|m| m.name.as_str()).collect();
        let spec = self.job_spec(Work::Bench { models: models.clone(), warmup, runs, input_bundle }, threads);
        let sensors = &self.config.sensors;
        let temp_start = sensors.cpu_temp();
        let throttle_start = sensors.throttling();
        log::info!("benchmark {} ({threads} thread(s))", names.join(" vs "));
        let JobOutput::Bench(mut results) = self.execute(&spec, job)? else {
            return Err(RemoteError::Internal("a benchmark produced another job's result".into()));
        };
        let temp_end = sensors.cpu_temp();
        let throttling = merge_throttling(throttle_start, sensors.throttling());
        for r in &mut results {
            r.cpu_temp_start_c = temp_start;
            r.cpu_temp_end_c = temp_end;
            r.throttling = throttling.clone();
        }
        Ok(results)
    }
}

/// The job: loads and runs each model once (load time, first run), warms
/// up, then measures all of them interleaved.
pub(crate) fn bench(
    spec: &JobSpec,
    models: &[Artifact],
    warmup: RunPolicy,
    runs: RunPolicy,
    bundle: Option<&EvalBundle>,
    ctx: &dyn JobContext,
) -> Result<Vec<BenchmarkResult>, RemoteError> {
    let mut clock = MonotonicClock::default();
    let caps = spec.caps();
    // Load and first run, per model.
    let mut loaded = Vec::new();
    for (i, m) in models.iter().enumerate() {
        ctx.check()?;
        ctx.progress(Phase::Loading, i as u64, Some(models.len() as u64), Some(m.name.clone()));
        let (model, load_ns) = measure::time_once(&mut clock, || job::load(m, 1, spec.memory_budget))?;
        let name = m.name.as_str();
        let input = match bundle {
            Some(b) => first_sample_input(&model, b).map_err(|e| model_error(name, e))?,
            None => model.synthetic_inputs(0x5eed).map_err(|e| model_error(name, e))?,
        };
        let ((), first_ns) = measure::time_once(&mut clock, || model.run(&input)).map_err(|e| model_error(name, e))?;
        loaded.push((model, input, load_ns, first_ns));
    }
    let arms = loaded.len();
    let run = |arm: usize| -> Result<(), RemoteError> {
        let (model, input, ..) = &loaded[arm];
        model.run(input).map_err(|e| model_error(&models[arm].name, e))
    };
    let last = Cell::new(0u64);
    let between = |phase: Phase, policy: RunPolicy, done: u32, elapsed: u64| -> Result<(), RemoteError> {
        ctx.check()?;
        if elapsed.saturating_sub(last.get()) >= PROGRESS_EVERY_NS {
            last.set(elapsed);
            let total = (policy.min_time_ms == 0).then_some(u64::from(policy.count));
            ctx.progress(phase, u64::from(done), total, None);
        }
        Ok(())
    };
    ctx.progress(Phase::WarmUp, 0, (warmup.min_time_ms == 0).then_some(u64::from(warmup.count)), None);
    let warm = measure::run_phase(&mut clock, warmup, 0, arms, caps, run, |d, e| between(Phase::WarmUp, warmup, d, e))?;
    last.set(0);
    ctx.progress(Phase::Measuring, 0, (runs.min_time_ms == 0).then_some(u64::from(runs.count)), None);
    let measured =
        measure::run_phase(&mut clock, runs, 1, arms, caps, run, |d, e| between(Phase::Measuring, runs, d, e))?;
    let peak = ctx.peak_rss();
    let mut results = Vec::new();
    for ((m, (model, _, load_ns, first_ns)), samples) in models.iter().zip(&loaded).zip(measured.samples) {
        let stats = measure::stats(&samples).ok_or_else(|| RemoteError::Internal("no samples".into()))?;
        if stats.unstable {
            log::info!("{}: unstable measurement (cv {:.3})", m.name, stats.cv);
        }
        if !model.optimized {
            log::info!("{}: tract could not optimize the model; the typed model was measured", m.name);
        }
        results.push(BenchmarkResult {
            model: m.name.clone(),
            threads: spec.threads,
            load_time_ns: *load_ns,
            first_run_ns: *first_ns,
            warmup_runs: warm.runs(),
            samples_ns: samples,
            stats,
            peak_rss_bytes: peak,
            cpu_temp_start_c: None,
            cpu_temp_end_c: None,
            throttling: None,
        });
    }
    Ok(results)
}

/// Throttled at the start or at the end of a job.
fn merge_throttling(a: Option<Throttling>, b: Option<Throttling>) -> Option<Throttling> {
    match (a, b) {
        (Some(a), Some(b)) => Some(Throttling {
            throttled: a.throttled || b.throttled,
            under_voltage: a.under_voltage || b.under_voltage,
            soft_temp_limit: a.soft_temp_limit || b.soft_temp_limit,
            raw: b.raw.or(a.raw),
        }),
        (a, b) => b.or(a),
    }
}
