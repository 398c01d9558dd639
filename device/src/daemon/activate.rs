//! Activation and rollback (PROTOCOL.md 5.5): the gates measured and
//! checked here, on the board, so the decision and its evidence live where
//! the model runs; the switch itself is [`crate::apps`]'s.

use rba_protocol::gate::{check_all, needs};
use rba_protocol::time::now_ms;
use rba_protocol::{
    hex, ActivateRequest, ActivationOutcome, ActivationResult, ActiveModel, AppStatus, ArtifactKind, BenchmarkRequest,
    BenchmarkResult, EvalRequest, EvalResult, GateFigures, HistoryEntry, HistoryEvent, HookOutcome, Job, Phase,
    RemoteError, RollbackRequest, RunPolicy,
};

use super::Daemon;
use crate::apps::HOOK_LOG;
use crate::hook;

/// Benchmark runs when a latency or memory gate needs a benchmark and the
/// request set no policy.
const DEFAULT_GATE_RUNS: RunPolicy = RunPolicy { count: 20, min_time_ms: 0 };
const DEFAULT_GATE_WARMUP: RunPolicy = RunPolicy { count: 3, min_time_ms: 0 };

fn is_zero(p: RunPolicy) -> bool {
    p.count == 0 && p.min_time_ms == 0
}

/// What the gates compare: accuracy and agreement from the evaluation,
/// latency from the benchmark, the larger peak RSS of the two.
pub(crate) fn figures(evaluation: Option<&EvalResult>, benchmark: Option<&BenchmarkResult>) -> GateFigures {
    let peak = [evaluation.and_then(|e| e.peak_rss_bytes), benchmark.and_then(|b| b.peak_rss_bytes)]
        .into_iter()
        .flatten()
        .max();
    GateFigures {
        samples: evaluation.map(|e| e.samples),
        top1: evaluation.and_then(|e| e.top1_accuracy),
        agreement: evaluation.and_then(|e| e.top1_agreement),
        p50_ns: benchmark.map(|b| b.stats.p50_ns),
        p90_ns: benchmark.map(|b| b.stats.p90_ns),
        p99_ns: benchmark.map(|b| b.stats.p99_ns),
        mean_ns: benchmark.map(|b| b.stats.mean_ns),
        peak_rss_bytes: peak,
    }
}

impl Daemon {
    pub(super) fn run_activation(&mut self, req: &ActivateRequest, job: &Job) -> Result<ActivationResult, RemoteError> {
        let app = req.app.as_str();
        let info = self.store.info(ArtifactKind::Model, &req.model)?;
        if info.sha256 != req.sha256 {
            return Err(RemoteError::BadRequest(format!(
                "model '{}' on the board has SHA-256 {}, not {} as asked: upload it again",
                req.model,
                &hex(&info.sha256)[..16],
                &hex(&req.sha256)[..16]
            )));
        }
        let replaced = self.store.apps().active(app)?;
        if let Some(active) = replaced.as_ref().filter(|a| a.sha256 == req.sha256) {
            log::info!("{app}: '{}' (generation {}) is already active", active.model, active.generation);
            return Ok(ActivationResult {
                app: app.into(),
                outcome: ActivationOutcome::AlreadyActive,
                active: replaced.clone(),
                replaced,
                checks: Vec::new(),
                figures: GateFigures::default(),
                evaluation: None,
                benchmark: None,
                hook: None,
            });
        }
        let (need_eval, need_bench) = needs(&req.gates);
        if need_eval && req.eval_bundle.is_none() {
            return Err(RemoteError::BadRequest("top1 and agreement gates need an eval bundle".into()));
        }
        let evaluation = match &req.eval_bundle {
            Some(bundle) => Some(self.run_evaluation(&eval_request(req, bundle), job)?),
            None => None,
        };
        let benchmark = if need_bench || !is_zero(req.runs) {
            let (warmup, runs) =
                if is_zero(req.runs) { (DEFAULT_GATE_WARMUP, DEFAULT_GATE_RUNS) } else { (req.warmup, req.runs) };
            let r = bench_request(req, warmup, runs);
            Some(self.run_benchmark(&r, job)?)
        } else {
            None
        };
        let figures = figures(evaluation.as_ref(), benchmark.as_ref());
        let checks = check_all(&req.gates, &figures);
        // A cancel (or a shutdown) that came during the measurements stops
        // here: nothing is switched.
        self.check(job)?;
        let entry = |event, generation, hook| HistoryEntry {
            seq: 0,
            at_ms: now_ms(),
            event,
            generation,
            model: req.model.clone(),
            sha256: req.sha256,
            checks: checks.clone(),
            figures: figures.clone(),
            hook,
            recovered: false,
        };
        let failed: Vec<String> = checks.iter().filter(|c| !c.passed).map(|c| c.to_string()).collect();
        if !failed.is_empty() {
            self.store.apps().record(app, entry(HistoryEvent::GateFailed, None, None))?;
            log::warn!("{app}: '{}' not activated: gate failed: {}", req.model, failed.join("; "));
            return Ok(ActivationResult {
                app: app.into(),
                outcome: ActivationOutcome::GateFailed,
                active: replaced.clone(),
                replaced,
                checks,
                figures,
                evaluation,
                benchmark,
                hook: None,
            });
        }
        job.progress(Phase::Activating, 0, None, Some(format!("switching {app} to {}", req.model)));
        let source = self.store.existing(ArtifactKind::Model, &req.model)?;
        let meta = ActiveModel {
            generation: 0,
            model: req.model.clone(),
            sha256: req.sha256,
            size: info.size,
            activated_at_ms: now_ms(),
            event: HistoryEvent::Activated,
            previous_generation: replaced.as_ref().map(|r| r.generation),
            rolled_back_from: None,
            checks: checks.clone(),
            figures: figures.clone(),
            bundle: req.eval_bundle.clone(),
        };
        let active = self.store.apps().switch(app, &source, meta)?;
        log::info!(
            "{app}: activated '{}' (generation {}, sha256 {}){}",
            active.model,
            active.generation,
            &hex(&active.sha256)[..16],
            if checks.is_empty() { String::new() } else { format!("; gates passed: {}", figures.summary()) }
        );
        let hook = self.run_hook(app, &active, job);
        self.store.apps().record(app, entry(HistoryEvent::Activated, Some(active.generation), hook.clone()))?;
        if let Err(e) = self.store.apps().prune(app) {
            log::warn!("{app}: {e}");
        }
        Ok(ActivationResult {
            app: app.into(),
            outcome: ActivationOutcome::Activated,
            active: Some(active),
            replaced,
            checks,
            figures,
            evaluation,
            benchmark,
            hook,
        })
    }

    pub(super) fn run_rollback(&mut self, req: &RollbackRequest, job: &Job) -> Result<ActivationResult, RemoteError> {
        let app = req.app.as_str();
        let apps = self.store.apps();
        let Some(current) = apps.active(app)? else {
            return Err(RemoteError::NotFound(format!("application '{app}' has no active model")));
        };
        if let Some(from) = req.from_generation.filter(|&g| g != current.generation) {
            if current.rolled_back_from == Some(from) {
                return Ok(ActivationResult {
                    app: app.into(),
                    outcome: ActivationOutcome::AlreadyRolledBack,
                    active: Some(current),
                    replaced: None,
                    checks: Vec::new(),
                    figures: GateFigures::default(),
                    evaluation: None,
                    benchmark: None,
                    hook: None,
                });
            }
            return Err(RemoteError::BadRequest(format!(
                "application '{app}' is at generation {}, not {from}: look at its status again",
                current.generation
            )));
        }
        let Some(previous) = apps.previous(app)? else {
            return Err(RemoteError::NotFound(format!(
                "application '{app}' has no earlier model to roll back to (generation {} is the oldest kept)",
                current.generation
            )));
        };
        job.progress(Phase::Activating, 0, None, Some(format!("rolling {app} back to {}", previous.model)));
        let source = apps.generation_model(app, previous.generation)?;
        let meta = ActiveModel {
            generation: 0,
            activated_at_ms: now_ms(),
            event: HistoryEvent::RolledBack,
            previous_generation: previous.previous_generation,
            rolled_back_from: Some(current.generation),
            ..previous.clone()
        };
        let active = apps.switch(app, &source, meta)?;
        log::info!(
            "{app}: rolled back from '{}' (generation {}) to '{}' (now generation {}, sha256 {})",
            current.model,
            current.generation,
            active.model,
            active.generation,
            &hex(&active.sha256)[..16]
        );
        let hook = self.run_hook(app, &active, job);
        let entry = HistoryEntry {
            seq: 0,
            at_ms: active.activated_at_ms,
            event: HistoryEvent::RolledBack,
            generation: Some(active.generation),
            model: active.model.clone(),
            sha256: active.sha256,
            checks: active.checks.clone(),
            figures: active.figures.clone(),
            hook: hook.clone(),
            recovered: false,
        };
        let apps = self.store.apps();
        apps.record(app, entry)?;
        if let Err(e) = apps.prune(app) {
            log::warn!("{app}: {e}");
        }
        Ok(ActivationResult {
            app: app.into(),
            outcome: ActivationOutcome::RolledBack,
            figures: active.figures.clone(),
            checks: Vec::new(),
            active: Some(active),
            replaced: Some(current),
            evaluation: None,
            benchmark: None,
            hook,
        })
    }

    pub(super) fn app_statuses(&self, app: Option<&str>, history: u32) -> Result<Vec<AppStatus>, RemoteError> {
        let apps = self.store.apps();
        let names = match app {
            Some(a) => vec![a.to_string()],
            None => apps.names()?,
        };
        names.iter().map(|a| apps.status(a, history).map_err(RemoteError::from)).collect()
    }

    /// The profile's hook, after a switch of `app` to `active`.
    fn run_hook(&self, app: &str, active: &ActiveModel, job: &Job) -> Option<HookOutcome> {
        let config = self.config.activate_hook.as_ref()?;
        let apps = self.store.apps();
        let dir = apps.dir(app).ok()?;
        let event = match active.event {
            HistoryEvent::RolledBack => "rolled_back",
            _ => "activated",
        };
        let env = [
            ("RBA_APP", app.to_string()),
            ("RBA_MODEL", active.model.clone()),
            ("RBA_SHA256", hex(&active.sha256)),
            ("RBA_GENERATION", active.generation.to_string()),
            ("RBA_EVENT", event.to_string()),
            ("RBA_ACTIVE_MODEL", dir.join("active.onnx").display().to_string()),
        ];
        let started = std::time::Instant::now();
        let mut last = 0u128;
        let outcome = hook::run(config, &env, &dir.join(HOOK_LOG), || {
            let ms = started.elapsed().as_millis();
            if ms - last >= 500 {
                last = ms;
                job.progress(
                    Phase::Activating,
                    u64::try_from(ms).unwrap_or(u64::MAX),
                    None,
                    Some("activation hook".into()),
                );
            }
        });
        if outcome.succeeded() {
            log::info!(
                "{app}: activation hook {:?}: {} in {} ms",
                config.command,
                outcome.status(),
                outcome.duration_ms
            );
        } else {
            log::warn!(
                "{app}: activation hook {:?}: {} after {} ms{}",
                config.command,
                outcome.status(),
                outcome.duration_ms,
                if outcome.output.is_empty() { String::new() } else { format!("; output: {}", outcome.output) }
            );
        }
        Some(outcome)
    }
}

/// The evaluation a gate runs (one place to build it), on the request's runtime.
fn eval_request(req: &ActivateRequest, bundle: &str) -> EvalRequest {
    EvalRequest { model: req.model.clone(), bundle: bundle.into(), threads: req.threads, runtime: req.runtime.clone() }
}

/// The benchmark a gate runs (one place to build it), fed from the eval
/// bundle when there is one, on the request's runtime.
fn bench_request(req: &ActivateRequest, warmup: RunPolicy, runs: RunPolicy) -> BenchmarkRequest {
    BenchmarkRequest {
        model: req.model.clone(),
        threads: req.threads,
        warmup,
        runs,
        input_bundle: req.eval_bundle.clone(),
        runtime: req.runtime.clone(),
    }
}
