//! The daemon's [`DeviceHandler`]: the store for uploads, tract for jobs.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use rba_protocol::{
    ArtifactInfo, ArtifactKind, BenchmarkRequest, BenchmarkResult, CompareRequest, CompareResult, DeviceHandler,
    DeviceIdentity, DeviceInfo, EvalBundle, EvalRequest, EvalResult, Job, Phase, RemoteError, RunPolicy, Throttling,
    UploadBegin,
};

use crate::eval::Metrics;
use crate::log;
use crate::measure::{self, Caps, Clock, MonotonicClock};
use crate::probe::Probe;
use crate::runtime::{self, Executors, LoadedModel, Prepared, RuntimeError};
use crate::store::Store;

/// How often a job reports progress (the host's silence timeout is 60 s).
const PROGRESS_EVERY_NS: u64 = 500_000_000;

#[derive(Clone, Debug)]
pub struct DaemonConfig {
    /// Board profile name, reported to the host.
    pub board: String,
    /// Threads when a request does not say.
    pub default_threads: u32,
    pub caps: Caps,
    pub probe: Probe,
    /// Set on SIGTERM: running jobs stop at their next check.
    pub shutdown: Arc<AtomicBool>,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            board: "local".into(),
            default_threads: 1,
            caps: Caps::default(),
            probe: Probe::default(),
            shutdown: Arc::new(AtomicBool::new(false)),
        }
    }
}

pub struct Daemon {
    store: Store,
    config: DaemonConfig,
    executors: Executors,
    started: Instant,
    identity: DeviceIdentity,
}

/// Most threads a request may ask for.
const MAX_THREADS: u32 = 64;

impl Daemon {
    pub fn new(store: Store, config: DaemonConfig) -> Daemon {
        let p = &config.probe;
        let identity = DeviceIdentity {
            board: config.board.clone(),
            arch: std::env::consts::ARCH.into(),
            os: std::env::consts::OS.into(),
            cores: std::thread::available_parallelism().map_or(1, |n| u32::try_from(n.get()).unwrap_or(u32::MAX)),
            memory_bytes: p.memory_total().unwrap_or(0),
            runtime: runtime::RUNTIME.into(),
            rba_version: rba_protocol::RBA_VERSION.into(),
            hostname: p.hostname().unwrap_or_default(),
        };
        Daemon { store, config, executors: Executors::default(), started: Instant::now(), identity }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    fn threads(&self, requested: Option<u32>) -> Result<u32, RemoteError> {
        match requested {
            Some(0) => Err(RemoteError::BadRequest("threads must be at least 1".into())),
            Some(t) if t > MAX_THREADS => Err(RemoteError::BadRequest(format!("at most {MAX_THREADS} threads"))),
            Some(t) => Ok(t),
            None => Ok(self.config.default_threads.max(1)),
        }
    }

    /// `Err(Cancelled)` once the host cancelled the job or the daemon is
    /// shutting down.
    fn check(&self, job: &Job) -> Result<(), RemoteError> {
        if self.config.shutdown.load(Ordering::SeqCst) {
            return Err(RemoteError::Cancelled);
        }
        job.check()
    }

    fn bundle(&self, name: &str) -> Result<EvalBundle, RemoteError> {
        let bytes = self.store.read(ArtifactKind::EvalBundle, name)?;
        EvalBundle::decode(&bytes).map_err(|e| RemoteError::BadRequest(format!("eval bundle '{name}': {e}")))
    }

    fn load(&self, name: &str, batch: usize) -> Result<LoadedModel, RemoteError> {
        let bytes = self.store.read(ArtifactKind::Model, name)?;
        runtime::load(&bytes, batch).map_err(|e| model_error(name, e))
    }

    /// Benchmarks one model (`arms` of 1) or several interleaved.
    fn bench(
        &self,
        models: &[&str],
        threads: Option<u32>,
        warmup: RunPolicy,
        runs: RunPolicy,
        input_bundle: Option<&str>,
        job: &Job,
    ) -> Result<Vec<BenchmarkResult>, RemoteError> {
        let threads = self.threads(threads)?;
        for m in models {
            self.store.existing(ArtifactKind::Model, m)?;
        }
        let bundle = input_bundle.map(|b| self.bundle(b)).transpose()?;
        let probe = &self.config.probe;
        probe.reset_peak_rss();
        let temp_start = probe.cpu_temp();
        let throttle_start = probe.throttling();
        let mut clock = MonotonicClock::default();
        let caps = self.config.caps;
        log(&format!("benchmark {} ({threads} thread(s))", models.join(" vs ")));
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
            let last = std::cell::Cell::new(0u64);
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
            let peak = probe.peak_rss();
            let temp_end = probe.cpu_temp();
            let throttling = merge_throttling(throttle_start.clone(), probe.throttling());
            let mut results = Vec::new();
            for ((name, (model, _, load_ns, first_ns)), samples) in models.iter().zip(&loaded).zip(measured.samples) {
                let stats = measure::stats(&samples).ok_or_else(|| RemoteError::Internal("no samples".into()))?;
                if stats.unstable {
                    log(&format!("{name}: unstable measurement (cv {:.3})", stats.cv));
                }
                if !model.optimized {
                    log(&format!("{name}: tract could not optimize the model; the typed model was measured"));
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

fn model_error(name: &str, e: RuntimeError) -> RemoteError {
    match RemoteError::from(e) {
        RemoteError::Runtime(m) => RemoteError::Runtime(format!("model '{name}': {m}")),
        RemoteError::Unsupported(m) => RemoteError::Unsupported(format!("model '{name}': {m}")),
        RemoteError::BadRequest(m) => RemoteError::BadRequest(format!("model '{name}': {m}")),
        other => other,
    }
}

/// Maps bundle tensors to model inputs: by name when every bundle tensor
/// is named after a model input, else by position.
fn input_order(model: &LoadedModel, tensors: &[rba_protocol::TensorF32]) -> Result<Vec<usize>, RuntimeError> {
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
    Ok(by_name.unwrap_or_else(|| (0..tensors.len()).collect()))
}

/// Checks that each bundle tensor's per-sample shape is the model input's.
fn check_bundle_shapes(
    model: &LoadedModel,
    tensors: &[rba_protocol::TensorF32],
    order: &[usize],
) -> Result<(), RuntimeError> {
    for (spec, &ix) in model.inputs.iter().zip(order) {
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
    Ok(())
}

/// Inputs for a batch of samples `start..start+batch` (padding by
/// repeating the last sample).
fn batch_input(
    model: &LoadedModel,
    tensors: &[rba_protocol::TensorF32],
    order: &[usize],
    start: u64,
    n: u64,
) -> Result<Prepared, RuntimeError> {
    let batch = model.batch() as u64;
    let mut values = Vec::new();
    for &ix in order {
        let t = &tensors[ix];
        let mut v = Vec::new();
        for i in 0..batch {
            let s = (start + i).min(n.saturating_sub(1));
            let sample =
                t.sample_f32(s).ok_or_else(|| RuntimeError::Shape(format!("bundle input {ix} lacks sample {s}")))?;
            v.extend(sample);
        }
        values.push(v);
    }
    model.prepare(values)
}

fn first_sample_input(model: &LoadedModel, bundle: &EvalBundle) -> Result<Prepared, RuntimeError> {
    let order = input_order(model, &bundle.inputs)?;
    check_bundle_shapes(model, &bundle.inputs, &order)?;
    batch_input(model, &bundle.inputs, &order, 0, 1)
}

impl DeviceHandler for Daemon {
    fn identity(&self) -> DeviceIdentity {
        self.identity.clone()
    }

    fn device_info(&mut self) -> Result<DeviceInfo, RemoteError> {
        let p = &self.config.probe;
        Ok(DeviceInfo {
            identity: self.identity.clone(),
            uptime_s: self.started.elapsed().as_secs(),
            free_storage_bytes: Some(self.store.free()),
            available_memory_bytes: p.memory_available(),
            cpu_temp_c: p.cpu_temp(),
            throttling: p.throttling(),
            artifacts: self.store.count(),
        })
    }

    fn upload_begin(&mut self, target: &UploadBegin) -> Result<u64, RemoteError> {
        let resume = self.store.begin(target)?;
        log(&format!(
            "upload of {} '{}' ({} bytes){}",
            crate::store::kind_label(target.kind),
            target.name,
            target.size,
            if resume > 0 { format!(", resuming at {resume}") } else { String::new() }
        ));
        Ok(resume)
    }

    fn upload_write(&mut self, offset: u64, data: &[u8]) -> Result<(), RemoteError> {
        Ok(self.store.write(offset, data)?)
    }

    fn upload_read(&mut self, offset: u64, buf: &mut [u8]) -> Result<usize, RemoteError> {
        Ok(self.store.read_staged(offset, buf)?)
    }

    fn upload_commit(&mut self) -> Result<ArtifactInfo, RemoteError> {
        let info = self.store.commit()?;
        log(&format!("committed {} '{}' ({} bytes)", crate::store::kind_label(info.kind), info.name, info.size));
        Ok(info)
    }

    fn upload_discard(&mut self) -> Result<(), RemoteError> {
        Ok(self.store.discard()?)
    }

    fn list(&mut self, kind: Option<ArtifactKind>) -> Result<Vec<ArtifactInfo>, RemoteError> {
        Ok(self.store.list(kind)?)
    }

    fn delete(&mut self, kind: ArtifactKind, name: &str) -> Result<(), RemoteError> {
        self.store.delete(kind, name)?;
        log(&format!("deleted {} '{name}'", crate::store::kind_label(kind)));
        Ok(())
    }

    fn benchmark(&mut self, req: &BenchmarkRequest, job: &Job) -> Result<BenchmarkResult, RemoteError> {
        let mut r = self.bench(&[&req.model], req.threads, req.warmup, req.runs, req.input_bundle.as_deref(), job)?;
        r.pop().ok_or_else(|| RemoteError::Internal("no result".into()))
    }

    fn evaluate(&mut self, req: &EvalRequest, job: &Job) -> Result<EvalResult, RemoteError> {
        let threads = self.threads(req.threads)?;
        self.store.existing(ArtifactKind::Model, &req.model)?;
        let bundle = self.bundle(&req.bundle)?;
        let probe = &self.config.probe;
        probe.reset_peak_rss();
        log(&format!("evaluate {} on {} ({} samples)", req.model, req.bundle, bundle.num_samples()));
        let name = req.model.as_str();
        let err = |e| model_error(name, e);
        self.executors.scope(threads, || {
            job.progress(Phase::Loading, 0, Some(1), Some(name.to_string()));
            let model = self.load(name, 1)?;
            let order = input_order(&model, &bundle.inputs).map_err(err)?;
            check_bundle_shapes(&model, &bundle.inputs, &order).map_err(err)?;
            let n = bundle.num_samples();
            let batch = model.batch() as u64;
            if let Some(exp) = &bundle.expected {
                if exp.len() != model.outputs.len() {
                    return Err(err(RuntimeError::Shape(format!(
                        "the bundle has {} expected tensor(s), the model has {} output(s)",
                        exp.len(),
                        model.outputs.len()
                    ))));
                }
            }
            let mut metrics = Metrics::default();
            let mut latencies = Vec::new();
            let mut clock = MonotonicClock::default();
            let mut last = 0u64;
            let mut start = 0u64;
            while start < n {
                self.check(job)?;
                let input = batch_input(&model, &bundle.inputs, &order, start, n).map_err(err)?;
                let (outputs, ns) = measure::time_once(&mut clock, || model.run_f32(&input)).map_err(err)?;
                let rows = batch.min(n - start);
                latencies.push(ns / batch.max(1));
                for r in 0..rows {
                    let mut per_sample = Vec::with_capacity(outputs.len());
                    for (shape, values) in &outputs {
                        if shape.first().copied().map(|b| b as u64) != Some(batch) || !(values.len() as u64).is_multiple_of(batch) {
                            return Err(err(RuntimeError::Shape(format!(
                                "output shape {shape:?} has no batch axis of {batch}; cannot split it per sample"
                            ))));
                        }
                        let w = values.len() / batch as usize;
                        let r = r as usize;
                        per_sample.push(values[r * w..(r + 1) * w].to_vec());
                    }
                    let s = start + r;
                    let label = bundle.labels.as_ref().and_then(|l| l.get(s as usize).copied());
                    let expected = match &bundle.expected {
                        Some(exp) => {
                            let mut v = Vec::with_capacity(exp.len());
                            for (k, (t, o)) in exp.iter().zip(&per_sample).enumerate() {
                                let e = t.sample_f32(s).unwrap_or_default();
                                if e.len() != o.len() {
                                    return Err(err(RuntimeError::Shape(format!(
                                        "expected output {k} has {} values per sample (shape {:?}), the model's output '{}' has {}",
                                        e.len(),
                                        t.shape,
                                        model.outputs.get(k).map_or("?", String::as_str),
                                        o.len()
                                    ))));
                                }
                                v.push(e);
                            }
                            Some(v)
                        }
                        None => None,
                    };
                    metrics.add(&per_sample, label, expected.as_deref());
                }
                start += rows;
                let now = clock.now_ns();
                if now.saturating_sub(last) >= PROGRESS_EVERY_NS {
                    last = now;
                    job.progress(Phase::Evaluating, start, Some(n), None);
                }
            }
            job.progress(Phase::Evaluating, n, Some(n), None);
            Ok(EvalResult {
                model: req.model.clone(),
                bundle: req.bundle.clone(),
                samples: u32::try_from(n).unwrap_or(u32::MAX),
                top1_accuracy: metrics.top1_accuracy(),
                top1_agreement: metrics.top1_agreement(),
                max_abs_diff: metrics.max_abs_diff(),
                mean_cosine: metrics.mean_cosine(),
                latency: measure::stats(&latencies),
                peak_rss_bytes: probe.peak_rss(),
            })
        })
    }

    fn compare(&mut self, req: &CompareRequest, job: &Job) -> Result<CompareResult, RemoteError> {
        let mut r = self.bench(
            &[&req.model_a, &req.model_b],
            req.threads,
            req.warmup,
            req.runs,
            req.input_bundle.as_deref(),
            job,
        )?;
        let (Some(b), Some(a)) = (r.pop(), r.pop()) else {
            return Err(RemoteError::Internal("compare lost a result".into()));
        };
        let ratio_of_medians = measure::ratio_of_medians(&a.stats, &b.stats);
        Ok(CompareResult { a, b, ratio_of_medians })
    }
}
