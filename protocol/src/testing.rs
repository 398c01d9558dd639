//! A reference [`DeviceHandler`] kept in memory, so tests of the protocol,
//! the host and the end-to-end suite need no board. Benchmarks are
//! synthetic (deterministic fake latencies); evaluation "runs" the model by
//! echoing the bundle's expected outputs.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::bundle::EvalBundle;
use crate::error::RemoteError;
use crate::message::*;
use crate::server::{DeviceHandler, Job};
use crate::stats::LatencyStats;

#[derive(Debug, Default)]
pub struct MemoryHandler {
    pub identity: DeviceIdentity,
    pub artifacts: BTreeMap<(ArtifactKindKey, String), (ArtifactInfo, Vec<u8>)>,
    /// Staged upload; survives sessions like a temp file on disk.
    pub staged: Option<(UploadBegin, Vec<u8>)>,
    /// Every commit, in order (tests check that no wrong file was ever published).
    pub commits: Vec<ArtifactInfo>,
    /// Sleep per synthetic benchmark run (to test progress and cancel).
    pub run_delay: Duration,
    /// Flip a staged byte on write at this offset (a failing disk).
    pub corrupt_staged_at: Option<u64>,
}

/// `ArtifactKind` as an ordered map key.
pub type ArtifactKindKey = u8;

fn key(kind: ArtifactKind) -> ArtifactKindKey {
    match kind {
        ArtifactKind::Model => 0,
        ArtifactKind::EvalBundle => 1,
    }
}

impl MemoryHandler {
    pub fn new() -> Self {
        MemoryHandler {
            identity: DeviceIdentity {
                board: "memory".into(),
                arch: std::env::consts::ARCH.into(),
                os: std::env::consts::OS.into(),
                cores: 2,
                memory_bytes: 1 << 30,
                runtime: "none".into(),
                rba_version: crate::RBA_VERSION.into(),
                hostname: "memory".into(),
            },
            ..Default::default()
        }
    }

    pub fn get(&self, kind: ArtifactKind, name: &str) -> Option<&[u8]> {
        self.artifacts.get(&(key(kind), name.to_string())).map(|(_, d)| d.as_slice())
    }

    fn require(&self, kind: ArtifactKind, name: &str) -> Result<&[u8], RemoteError> {
        self.get(kind, name).ok_or_else(|| RemoteError::NotFound(name.into()))
    }

    fn fake_bench(
        &self,
        model: &str,
        policy: RunPolicy,
        threads: Option<u32>,
        job: &Job,
    ) -> Result<BenchmarkResult, RemoteError> {
        let size = self.require(ArtifactKind::Model, model)?.len() as u64;
        let runs = u64::from(policy.count.max(1));
        let mut samples = Vec::new();
        for i in 0..runs {
            job.check()?;
            if !self.run_delay.is_zero() {
                std::thread::sleep(self.run_delay);
            }
            samples.push(1_000 + size + (i % 7) * 10);
            job.progress(Phase::Measuring, i + 1, Some(runs), None);
        }
        let stats = LatencyStats::from_samples(&samples).ok_or(RemoteError::Internal("no samples".into()))?;
        Ok(BenchmarkResult {
            model: model.into(),
            threads: threads.unwrap_or(1),
            load_time_ns: 10_000,
            first_run_ns: 2_000 + size,
            warmup_runs: 0,
            samples_ns: samples,
            stats,
            peak_rss_bytes: None,
            cpu_temp_start_c: None,
            cpu_temp_end_c: None,
            throttling: None,
            runtime: RuntimeReport::default(),
        })
    }
}

impl DeviceHandler for MemoryHandler {
    fn identity(&self) -> DeviceIdentity {
        self.identity.clone()
    }

    fn device_info(&mut self) -> Result<DeviceInfo, RemoteError> {
        Ok(DeviceInfo { identity: self.identity.clone(), artifacts: self.artifacts.len() as u32, ..Default::default() })
    }

    fn upload_begin(&mut self, target: &UploadBegin) -> Result<u64, RemoteError> {
        if let Some((staged, data)) = &self.staged {
            if staged == target {
                return Ok(data.len() as u64);
            }
        }
        self.staged = Some((target.clone(), Vec::new()));
        Ok(0)
    }

    fn upload_write(&mut self, offset: u64, data: &[u8]) -> Result<(), RemoteError> {
        let corrupt = self.corrupt_staged_at;
        let (_, staged) = self.staged.as_mut().ok_or(RemoteError::NoUpload)?;
        if offset != staged.len() as u64 {
            return Err(RemoteError::Internal("non-contiguous write".into()));
        }
        staged.extend_from_slice(data);
        if let Some(at) = corrupt {
            if let Some(b) = usize::try_from(at).ok().and_then(|i| staged.get_mut(i)) {
                *b ^= 0xff;
            }
        }
        Ok(())
    }

    fn upload_read(&mut self, offset: u64, buf: &mut [u8]) -> Result<usize, RemoteError> {
        let (_, staged) = self.staged.as_ref().ok_or(RemoteError::NoUpload)?;
        let start = usize::try_from(offset).unwrap_or(usize::MAX).min(staged.len());
        let n = buf.len().min(staged.len() - start);
        buf[..n].copy_from_slice(&staged[start..start + n]);
        Ok(n)
    }

    fn upload_commit(&mut self) -> Result<ArtifactInfo, RemoteError> {
        let (target, data) = self.staged.take().ok_or(RemoteError::NoUpload)?;
        let info = ArtifactInfo {
            kind: target.kind,
            name: target.name.clone(),
            size: data.len() as u64,
            sha256: target.sha256,
        };
        self.commits.push(info.clone());
        self.artifacts.insert((key(target.kind), target.name), (info.clone(), data));
        Ok(info)
    }

    fn upload_discard(&mut self) -> Result<(), RemoteError> {
        self.staged = None;
        Ok(())
    }

    fn list(&mut self, kind: Option<ArtifactKind>) -> Result<Vec<ArtifactInfo>, RemoteError> {
        Ok(self.artifacts.values().filter(|(i, _)| kind.is_none_or(|k| k == i.kind)).map(|(i, _)| i.clone()).collect())
    }

    fn delete(&mut self, kind: ArtifactKind, name: &str) -> Result<(), RemoteError> {
        self.artifacts
            .remove(&(key(kind), name.to_string()))
            .map(|_| ())
            .ok_or_else(|| RemoteError::NotFound(name.into()))
    }

    fn benchmark(&mut self, req: &BenchmarkRequest, job: &Job) -> Result<BenchmarkResult, RemoteError> {
        self.fake_bench(&req.model, req.runs, req.threads, job)
    }

    fn evaluate(&mut self, req: &EvalRequest, job: &Job) -> Result<EvalResult, RemoteError> {
        self.require(ArtifactKind::Model, &req.model)?;
        let bundle = EvalBundle::decode(self.require(ArtifactKind::EvalBundle, &req.bundle)?)
            .map_err(|e| RemoteError::BadRequest(e.to_string()))?;
        job.progress(Phase::Evaluating, bundle.num_samples(), Some(bundle.num_samples()), None);
        let has_expected = bundle.expected.is_some();
        Ok(EvalResult {
            model: req.model.clone(),
            bundle: req.bundle.clone(),
            samples: u32::try_from(bundle.num_samples()).unwrap_or(u32::MAX),
            top1_accuracy: bundle.labels.as_ref().map(|_| 1.0),
            top1_agreement: has_expected.then_some(1.0),
            max_abs_diff: has_expected.then_some(0.0),
            mean_cosine: has_expected.then_some(1.0),
            latency: None,
            peak_rss_bytes: None,
            runtime: RuntimeReport::default(),
        })
    }

    fn compare(&mut self, req: &CompareRequest, job: &Job) -> Result<CompareResult, RemoteError> {
        let a = self.fake_bench(&req.model_a, req.runs, req.threads, job)?;
        let b = self.fake_bench(&req.model_b, req.runs, req.threads, job)?;
        let ratio = b.stats.p50_ns as f64 / a.stats.p50_ns.max(1) as f64;
        Ok(CompareResult { a, b, ratio_of_medians: ratio })
    }
}
