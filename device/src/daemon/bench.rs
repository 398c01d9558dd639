//! Benchmark and compare jobs: load each model once, warm up, then measure
//! all of them interleaved (ABAB...), so drift (heat, other load) hits every
//! arm alike.

use std::cell::Cell;

use rba_protocol::{
    ArtifactKind, BenchmarkRequest, BenchmarkResult, CompareRequest, CompareResult, Job, Phase, RemoteError, RunPolicy,
    Throttling,
};

use super::evaluate::first_sample_input;
use super::{model_error, Daemon, PROGRESS_EVERY_NS};
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
        let threads = self.threads(threads)?;
        for m in models {
            self.store.existing(ArtifactKind::Model, m)?;
        }
        let bundle = input_bundle.map(|b| self.bundle(b)).transpose()?;
        let sensors = &self.config.sensors;
        sensors.reset_peak_rss();
        let temp_start = sensors.cpu_temp();
        let throttle_start = sensors.throttling();
        let mut clock = MonotonicClock::default();
        let caps = self.config.caps;
        log::info!("benchmark {} ({threads} thread(s))", models.join(" vs "));
        self.executors.scope(threads, || -> Result<Vec<BenchmarkResult>, RemoteError> {
            // Load and first run, per model.
            let mut loaded = Vec::new();
            for (i, name) in models.iter().enumerate() {
                self.check(job)?;
                job.progress(Phase::Loading, i as u64, Some(models.len() as u64), Some((*name).to_string()));
                let (model, load_ns) = measure::time_once(&mut clock, || self.load(name, 1))?;
                let input = match &bundle {
                    Some(b) => first_sample_input(&model, b).map_err(|e| model_error(name, e))?,
                    None => model.synthetic_inputs(0x5eed).map_err(|e| model_error(name, e))?,
                };
                let ((), first_ns) =
                    measure::time_once(&mut clock, || model.run(&input)).map_err(|e| model_error(name, e))?;
                loaded.push((model, input, load_ns, first_ns));
            }
            let arms = loaded.len();
            let run = |arm: usize| -> Result<(), RemoteError> {
                let (model, input, ..) = &loaded[arm];
                model.run(input).map_err(|e| model_error(models[arm], e))
            };
            let last = Cell::new(0u64);
            let between = |phase: Phase, policy: RunPolicy, done: u32, elapsed: u64| -> Result<(), RemoteError> {
                self.check(job)?;
                if elapsed.saturating_sub(last.get()) >= PROGRESS_EVERY_NS {
                    last.set(elapsed);
                    let total = (policy.min_time_ms == 0).then_some(u64::from(policy.count));
                    job.progress(phase, u64::from(done), total, None);
                }
                Ok(())
            };
            job.progress(Phase::WarmUp, 0, (warmup.min_time_ms == 0).then_some(u64::from(warmup.count)), None);
            let warm = measure::run_phase(&mut clock, warmup, 0, arms, caps, run, |d, e| {
                between(Phase::WarmUp, warmup, d, e)
            })?;
            last.set(0);
            job.progress(Phase::Measuring, 0, (runs.min_time_ms == 0).then_some(u64::from(runs.count)), None);
            let measured =
                measure::run_phase(&mut clock, runs, 1, arms, caps, run, |d, e| between(Phase::Measuring, runs, d, e))?;
            let peak = sensors.peak_rss();
            let temp_end = sensors.cpu_temp();
            let throttling = merge_throttling(throttle_start.clone(), sensors.throttling());
            let mut results = Vec::new();
            for ((name, (model, _, load_ns, first_ns)), samples) in models.iter().zip(&loaded).zip(measured.samples) {
                let stats = measure::stats(&samples).ok_or_else(|| RemoteError::Internal("no samples".into()))?;
                if stats.unstable {
                    log::info!("{name}: unstable measurement (cv {:.3})", stats.cv);
                }
                if !model.optimized {
                    log::info!("{name}: tract could not optimize the model; the typed model was measured");
                }
                results.push(BenchmarkResult {
                    model: (*name).to_string(),
                    threads,
                    load_time_ns: *load_ns,
                    first_run_ns: *first_ns,
                    warmup_runs: warm.runs(),
                    samples_ns: samples,
                    stats,
                    peak_rss_bytes: peak,
                    cpu_temp_start_c: temp_start,
                    cpu_temp_end_c: temp_end,
                    throttling: throttling.clone(),
                });
            }
            Ok(results)
        })
    }
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
