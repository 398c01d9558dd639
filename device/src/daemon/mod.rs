//! The daemon: the protocol's [`DeviceHandler`] over the store (uploads,
//! listing) and the runtimes (jobs: tract, or onnxruntime where the board
//! has its library). The handler only dispatches; the jobs live in
//! `bench.rs` (benchmark, compare) and `evaluate.rs`, and run where the
//! [`Isolation`] says: in a worker process per job, or on the daemon's
//! thread ([`Daemon::execute`]). Activation (gates, the switch of an
//! application's active model, the hook) and rollback are in `activate.rs`.

pub(crate) mod activate;
pub(crate) mod bench;
pub(crate) mod evaluate;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use rba_onnx::budget::human_bytes;
use rba_protocol::boards::OnnxRuntimeProfile;
use rba_protocol::{
    ActivateRequest, ActivationResult, AppStatus, ArtifactInfo, ArtifactKind, BenchmarkRequest, BenchmarkResult,
    CompareRequest, CompareResult, DeviceHandler, DeviceIdentity, DeviceInfo, EvalRequest, EvalResult, Job, Phase,
    RemoteError, RollbackRequest, RuntimeInfo, RuntimeKind, RuntimeRequest, UploadBegin,
};

use crate::accelerator::Accelerator;
use crate::hook::HookConfig;
use crate::job::{self, JobContext, JobOutput, JobSpec, Work};
use crate::limits::MemoryBudget;
use crate::measure::Caps;
use crate::runtime::library::{self, Found, Search};
use crate::runtime::{self, Executors, OrtSetup, Runtime};
use crate::sensors::Sensors;
use crate::store::{kind_label, Store};
use crate::worker::{self, Isolation};

/// How often a job reports progress (the host's silence timeout is 60 s).
pub(crate) const PROGRESS_EVERY_NS: u64 = 500_000_000;

/// The board name a daemon reports when it was started without a profile.
pub const UNPROFILED: &str = "unprofiled";

#[derive(Clone, Debug)]
pub struct DaemonConfig {
    /// Board profile name, reported to the host.
    pub board: String,
    /// Threads when a request does not say.
    pub default_threads: u32,
    pub caps: Caps,
    pub sensors: Sensors,
    /// Set on SIGTERM: running jobs stop at their next check.
    pub shutdown: Arc<AtomicBool>,
    /// Where jobs run (see [`Isolation::resolve`] for the checked choice).
    pub isolation: Isolation,
    /// What the tensors of a job's model may take.
    pub memory_budget: MemoryBudget,
    /// Most threads a job gets: larger requests are clamped to it (the
    /// cores this process may use, by default).
    pub max_threads: u32,
    /// ONNX Runtime: where its library is, the profile's providers.
    pub onnxruntime: OrtConfig,
    /// Where the accelerator's readings are.
    pub accelerator: Accelerator,
    /// Run after an application's active model changed (board profile's
    /// `activate_hook`).
    pub activate_hook: Option<HookConfig>,
}

/// ONNX Runtime on this board.
#[derive(Clone, Debug, Default)]
pub struct OrtConfig {
    /// `serve --ort-library`: the library or a folder holding it.
    pub library: Option<PathBuf>,
    /// The board profile's `[onnxruntime]` (its library, providers, policy,
    /// TensorRT options).
    pub profile: OnnxRuntimeProfile,
}

impl OrtConfig {
    /// Where the library is looked for ([`library::Search::standard`]).
    pub fn search(&self) -> Search {
        Search::standard(self.library.clone(), self.profile.library.clone())
    }
}

impl Default for DaemonConfig {
    /// Jobs on the daemon's thread (a library user's process need not have
    /// a `worker` subcommand), half the available memory as the budget.
    fn default() -> Self {
        DaemonConfig {
            board: UNPROFILED.into(),
            default_threads: 1,
            caps: Caps::default(),
            sensors: Sensors::default(),
            shutdown: Arc::new(AtomicBool::new(false)),
            isolation: Isolation::Thread,
            memory_budget: MemoryBudget::default(),
            max_threads: crate::sensors::cores(),
            onnxruntime: OrtConfig::default(),
            accelerator: Accelerator::default(),
            activate_hook: None,
        }
    }
}

pub struct Daemon {
    store: Store,
    config: DaemonConfig,
    executors: Executors,
    started: Instant,
    identity: DeviceIdentity,
    /// The ONNX Runtime library, once found (a miss is looked up again).
    ort_library: Mutex<Option<Found>>,
    /// What the library said when probed, once a library was found.
    ort_info: Mutex<Option<RuntimeInfo>>,
}

impl Daemon {
    pub fn new(store: Store, config: DaemonConfig) -> Daemon {
        let s = &config.sensors;
        let identity = DeviceIdentity {
            board: config.board.clone(),
            arch: std::env::consts::ARCH.into(),
            os: std::env::consts::OS.into(),
            cores: crate::sensors::cores(),
            memory_bytes: s.memory_total().unwrap_or(0),
            runtime: runtime::RUNTIME.into(),
            rba_version: rba_protocol::RBA_VERSION.into(),
            hostname: s.hostname().unwrap_or_default(),
        };
        let executors = Executors::new(config.max_threads);
        Daemon {
            store,
            config,
            executors,
            started: Instant::now(),
            identity,
            ort_library: Mutex::new(None),
            ort_info: Mutex::new(None),
        }
    }

    /// The ONNX Runtime library ([`library::locate`]), or why there is none
    /// or it is too old (a miss is looked up again next time: the library
    /// may be installed while the daemon runs).
    pub fn ort_library(&self) -> Result<Found, library::LibraryError> {
        let mut slot = self.ort_library.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = slot.as_ref() {
            return Ok(f.clone());
        }
        let found = library::locate(&self.config.onnxruntime.search())?;
        found.check_version()?;
        log::info!(
            "onnxruntime library {} ({}, from {})",
            found.path.display(),
            found.version.map_or_else(|| "version not in its name".to_string(), |v| v.to_string()),
            found.origin
        );
        *slot = Some(found.clone());
        Ok(found)
    }

    /// The runtime a request asks for (`None`: tract).
    pub(crate) fn runtime_for(&self, request: Option<&RuntimeRequest>) -> Result<Runtime, RemoteError> {
        let Some(r) = request else { return Ok(Runtime::Tract) };
        match r.runtime {
            RuntimeKind::Tract if r.eps.is_empty() && r.policy.is_none() => Ok(Runtime::Tract),
            RuntimeKind::Tract => Err(RemoteError::BadRequest(
                "execution providers and their policy apply to onnxruntime; tract runs on the CPU".into(),
            )),
            RuntimeKind::OnnxRuntime => {
                let found = self.ort_library().map_err(|e| {
                    RemoteError::Unsupported(format!("onnxruntime is not available on this board: {e}"))
                })?;
                Ok(Runtime::OnnxRuntime(OrtSetup {
                    library: found.path,
                    request: r.clone(),
                    profile: self.config.onnxruntime.profile.clone(),
                    cache_dir: self.store.root().join("onnxruntime").join("tensorrt"),
                    no_spinning: false,
                }))
            }
        }
    }

    /// The runtimes this board has: tract, and onnxruntime with its version,
    /// library and providers (probed where jobs run, once), or why not.
    pub fn runtimes(&self) -> Vec<RuntimeInfo> {
        let tract = RuntimeInfo {
            runtime: RuntimeKind::Tract,
            version: Some(runtime::tract::VERSION.into()),
            providers: vec!["tract (CPU)".into()],
            ..RuntimeInfo::default()
        };
        vec![tract, self.onnxruntime_info()]
    }

    fn onnxruntime_info(&self) -> RuntimeInfo {
        let profile = &self.config.onnxruntime.profile;
        let base = RuntimeInfo {
            runtime: RuntimeKind::OnnxRuntime,
            default_eps: profile.execution_providers.clone(),
            default_policy: profile.policy,
            ..RuntimeInfo::default()
        };
        let mut cached = self.ort_info.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(info) = cached.as_ref() {
            return info.clone();
        }
        let found = match self.ort_library() {
            Ok(f) => f,
            Err(e) => return RuntimeInfo { problem: Some(e.to_string()), ..base },
        };
        let probed = match &self.config.isolation {
            Isolation::Process { program } => worker::probe(program, &found.path),
            Isolation::Thread => {
                library::load(&found).map(|l| (l.version.clone(), l.providers.clone())).map_err(|e| e.to_string())
            }
        };
        let info = match probed {
            Ok((version, providers)) => RuntimeInfo {
                version: Some(version),
                library: Some(found.path.display().to_string()),
                providers,
                ..base
            },
            Err(why) => RuntimeInfo {
                version: found.version.map(|v| v.to_string()),
                library: Some(found.path.display().to_string()),
                problem: Some(why),
                ..base
            },
        };
        *cached = Some(info.clone());
        info
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Threads for a job: what the request asks (else the default), at
    /// most the cores.
    fn threads(&self, requested: Option<u32>, what: &str) -> Result<u32, RemoteError> {
        let max = self.config.max_threads.max(1);
        let asked = match requested {
            Some(0) => return Err(RemoteError::BadRequest("threads must be at least 1".into())),
            Some(t) => t,
            None => self.config.default_threads.max(1),
        };
        if asked > max {
            log::info!("{what} asks for {asked} threads; using {max}, the cores");
        }
        Ok(asked.min(max))
    }

    /// The job of `work` on `threads` threads, with this daemon's caps and
    /// its memory budget as of now.
    fn job_spec(&self, work: Work, threads: u32) -> JobSpec {
        let caps = self.config.caps;
        JobSpec {
            work,
            threads,
            memory_budget: self.config.memory_budget.bytes(&self.config.sensors),
            max_runs: caps.max_runs,
            max_time_ms: u64::try_from(caps.max_time.as_millis()).unwrap_or(u64::MAX),
        }
    }

    /// Runs a job where the isolation says: in a worker process, or here
    /// (tract on the daemon's pool of the job's thread count, onnxruntime on
    /// its own threads, panics caught).
    fn execute(&self, spec: &JobSpec, job: &Job) -> Result<JobOutput, RemoteError> {
        let ctx = DaemonJob { daemon: self, job };
        log::debug!("{}: memory budget {}", spec.models_label(), human_bytes(spec.memory_budget));
        match &self.config.isolation {
            Isolation::Process { program } => worker::run_job(program, spec, &ctx),
            Isolation::Thread => {
                self.config.sensors.reset_peak_rss();
                self.executors.scope(spec.threads, || job::run_guarded(spec, &ctx, false))
            }
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
}

/// A job of this daemon: progress to the host, cancellation by the host or
/// a shutdown, this process's peak RSS.
struct DaemonJob<'a, 'j> {
    daemon: &'a Daemon,
    job: &'a Job<'j>,
}

impl JobContext for DaemonJob<'_, '_> {
    fn progress(&self, phase: Phase, done: u64, total: Option<u64>, message: Option<String>) {
        self.job.progress(phase, done, total, message);
    }

    fn check(&self) -> Result<(), RemoteError> {
        self.daemon.check(self.job)
    }

    fn peak_rss(&self) -> Option<u64> {
        self.daemon.config.sensors.peak_rss()
    }
}

impl DeviceHandler for Daemon {
    fn identity(&self) -> DeviceIdentity {
        self.identity.clone()
    }

    fn device_info(&mut self) -> Result<DeviceInfo, RemoteError> {
        let s = &self.config.sensors;
        Ok(DeviceInfo {
            identity: self.identity.clone(),
            uptime_s: self.started.elapsed().as_secs(),
            free_storage_bytes: Some(self.store.free()),
            available_memory_bytes: s.memory_available(),
            cpu_temp_c: s.cpu_temp(),
            throttling: s.throttling(),
            artifacts: self.store.count(),
            runtimes: self.runtimes(),
            accelerator: self.config.accelerator.info(),
        })
    }

    fn upload_begin(&mut self, target: &UploadBegin) -> Result<u64, RemoteError> {
        let resume = self.store.begin(target)?;
        log::info!(
            "upload of {} '{}' ({} bytes){}",
            kind_label(target.kind),
            target.name,
            target.size,
            if resume > 0 { format!(", resuming at {resume}") } else { String::new() }
        );
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
        log::info!("committed {} '{}' ({} bytes)", kind_label(info.kind), info.name, info.size);
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
        log::info!("deleted {} '{name}'", kind_label(kind));
        Ok(())
    }

    fn benchmark(&mut self, req: &BenchmarkRequest, job: &Job) -> Result<BenchmarkResult, RemoteError> {
        self.run_benchmark(req, job)
    }

    fn evaluate(&mut self, req: &EvalRequest, job: &Job) -> Result<EvalResult, RemoteError> {
        self.run_evaluation(req, job)
    }

    fn compare(&mut self, req: &CompareRequest, job: &Job) -> Result<CompareResult, RemoteError> {
        self.run_comparison(req, job)
    }

    fn activate(&mut self, req: &ActivateRequest, job: &Job) -> Result<ActivationResult, RemoteError> {
        self.run_activation(req, job)
    }

    fn app_status(&mut self, app: Option<&str>, history: u32) -> Result<Vec<AppStatus>, RemoteError> {
        self.app_statuses(app, history)
    }

    fn rollback(&mut self, req: &RollbackRequest, job: &Job) -> Result<ActivationResult, RemoteError> {
        self.run_rollback(req, job)
    }
}
