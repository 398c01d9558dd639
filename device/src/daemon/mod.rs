//! The daemon: the protocol's [`DeviceHandler`] over the store (uploads,
//! listing) and tract (jobs). The handler only dispatches; the jobs live in
//! `bench.rs` (benchmark, compare) and `evaluate.rs`.

mod bench;
mod evaluate;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use rba_protocol::{
    ArtifactInfo, ArtifactKind, BenchmarkRequest, BenchmarkResult, CompareRequest, CompareResult, DeviceHandler,
    DeviceIdentity, DeviceInfo, EvalBundle, EvalRequest, EvalResult, Job, RemoteError, UploadBegin,
};

use crate::measure::Caps;
use crate::runtime::{self, Executors, LoadedModel, RuntimeError};
use crate::sensors::Sensors;
use crate::store::{kind_label, Store};

/// How often a job reports progress (the host's silence timeout is 60 s).
const PROGRESS_EVERY_NS: u64 = 500_000_000;

/// Most threads a request may ask for.
const MAX_THREADS: u32 = 64;

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
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            board: UNPROFILED.into(),
            default_threads: 1,
            caps: Caps::default(),
            sensors: Sensors::default(),
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
}

/// A runtime error as the host sees it, naming the model.
fn model_error(name: &str, e: RuntimeError) -> RemoteError {
    match RemoteError::from(e) {
        RemoteError::Runtime(m) => RemoteError::Runtime(format!("model '{name}': {m}")),
        RemoteError::Unsupported(m) => RemoteError::Unsupported(format!("model '{name}': {m}")),
        RemoteError::BadRequest(m) => RemoteError::BadRequest(format!("model '{name}': {m}")),
        other => other,
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
}
