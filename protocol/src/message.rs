//! Every message that crosses the link.
//!
//! The postcard encoding of these types *is* the wire format (see
//! `PROTOCOL.md`): enum variants are numbered by declaration order, so new
//! variants and fields go at the end only, and anything else needs a
//! [`PROTOCOL_VERSION`](crate::PROTOCOL_VERSION) bump.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use serde::{Deserialize, Serialize};

use crate::activation::{ActivateRequest, ActivationResult, AppStatus, RollbackRequest};
use crate::error::RemoteError;
use crate::stats::LatencyStats;

/// A SHA-256 digest.
pub type Sha256Digest = [u8; 32];

/// One frame: a request id and a message.
///
/// Requests use ids chosen by the client (non-zero, increasing); responses
/// and progress events echo the id of the request they belong to.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub id: u32,
    pub msg: Message,
}

// Results are large and rare; boxing them would only complicate matching.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Message {
    Request(Request),
    Response(Response),
    /// Not final: any number may precede the final response of a job.
    Progress(Progress),
}

/// Client (host) to server (device).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// Variant 0 with `protocol_version` first, as in version 1: a v1
    /// Hello sent to a v2 device is recognised by this prefix and answered
    /// with a v1-framed `VersionMismatch` (PROTOCOL.md 4.1).
    Hello(Hello),
    DeviceInfo,
    UploadBegin(UploadBegin),
    UploadChunk(UploadChunk),
    UploadCommit(UploadCommit),
    /// Discard the staged upload (resume state included).
    UploadAbort,
    List {
        kind: Option<ArtifactKind>,
    },
    Delete {
        kind: ArtifactKind,
        name: String,
    },
    Benchmark(BenchmarkRequest),
    Evaluate(EvalRequest),
    Compare(CompareRequest),
    /// Ask the device to stop the job started by request `target`.
    Cancel {
        target: u32,
    },
    Ping {
        nonce: u64,
    },
    /// Make a published model an application's active model, if its gates
    /// hold on the board (a job; answered `Activation`).
    Activate(ActivateRequest),
    /// Applications, their active models and histories (`app: None`: all;
    /// `history`: most entries per application). Answered `Apps`.
    AppStatus {
        app: Option<String>,
        history: u32,
    },
    /// Restore an application's previous model (a job; answered `Activation`).
    Rollback(RollbackRequest),
}

/// Server (device) to client (host). Exactly one per request.
// One response exists at a time (the results with their runtime reports
// are the large ones); boxing them would change every match for nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Response {
    /// Answer to `Hello`: versions, limits and who the board says it is.
    Welcome(Welcome),
    DeviceInfo(DeviceInfo),
    UploadReady {
        resume_offset: u64,
        chunk_size: u32,
    },
    /// Everything below `next_offset` is stored.
    ChunkAck {
        next_offset: u64,
    },
    Committed(ArtifactInfo),
    Aborted,
    Artifacts(Vec<ArtifactInfo>),
    Deleted,
    Benchmark(BenchmarkResult),
    Evaluation(EvalResult),
    Compare(CompareResult),
    /// `was_running`: the target job was running and has been told to stop
    /// (its own final response follows, usually `Error(Cancelled)`).
    CancelAck {
        was_running: bool,
    },
    Pong {
        nonce: u64,
    },
    Error(RemoteError),
    /// Answer to `Activate` and `Rollback` (boxed: by far the largest
    /// answer; the bytes on the wire are those of the value).
    Activation(Box<ActivationResult>),
    /// Answer to `AppStatus`, sorted by application name.
    Apps(Vec<AppStatus>),
}

/// Capability bits announced in the handshake.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities(pub u64);

impl Capabilities {
    pub const UPLOAD_RESUME: u64 = 1 << 0;
    pub const BENCHMARK: u64 = 1 << 1;
    pub const EVALUATE: u64 = 1 << 2;
    pub const COMPARE: u64 = 1 << 3;
    pub const CANCEL: u64 = 1 << 4;
    pub const EVAL_BUNDLES: u64 = 1 << 5;
    /// Activate, AppStatus, Rollback.
    pub const ACTIVATION: u64 = 1 << 6;
    pub const ALL: Capabilities = Capabilities(0b111_1111);

    pub fn has(self, bit: u64) -> bool {
        self.0 & bit == bit
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    /// Keep first (see [`Request::Hello`]).
    pub protocol_version: u16,
    pub client: String,
    pub rba_version: String,
    pub capabilities: Capabilities,
    /// Largest frame (decoded payload + CRC) the client accepts.
    pub max_frame: u32,
    /// Upload chunk size the client would like (small on serial, large on TCP).
    pub preferred_chunk: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Welcome {
    pub protocol_version: u16,
    pub device: DeviceIdentity,
    pub capabilities: Capabilities,
    /// Largest frame the server accepts.
    pub max_frame: u32,
    /// Negotiated upload chunk size: min(preferred, server maximum).
    pub chunk_size: u32,
    /// Largest artifact the server will accept.
    pub max_upload: u64,
}

/// Who the board says it is (inside the secure channel, so only to a host
/// that completed the handshake). Free text: the host identifies a board
/// by the static key the handshake proved, never by this.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DeviceIdentity {
    /// Board profile name, e.g. `rpi5`.
    pub board: String,
    /// e.g. `aarch64`.
    pub arch: String,
    pub os: String,
    pub cores: u32,
    pub memory_bytes: u64,
    /// Inference runtime and version, e.g. `tract 0.23.0`.
    pub runtime: String,
    pub rba_version: String,
    pub hostname: String,
}

/// Current state of the board.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DeviceInfo {
    pub identity: DeviceIdentity,
    pub uptime_s: u64,
    pub free_storage_bytes: Option<u64>,
    pub available_memory_bytes: Option<u64>,
    pub cpu_temp_c: Option<f32>,
    pub throttling: Option<Throttling>,
    pub artifacts: u32,
    /// The inference runtimes the board has: tract always, onnxruntime
    /// with its version, library and execution providers, or why not.
    #[serde(default)]
    pub runtimes: Vec<RuntimeInfo>,
    /// The accelerator, where the board exposes it (Jetson: model, power
    /// mode, GPU frequency and load).
    #[serde(default)]
    pub accelerator: Option<AcceleratorInfo>,
}

/// What an uploaded artifact is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ArtifactKind {
    /// An ONNX model.
    Model,
    /// An [`EvalBundle`](crate::EvalBundle).
    EvalBundle,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactInfo {
    pub kind: ArtifactKind,
    pub name: String,
    pub size: u64,
    pub sha256: Sha256Digest,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadBegin {
    pub kind: ArtifactKind,
    pub name: String,
    pub size: u64,
    pub sha256: Sha256Digest,
}

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadChunk {
    pub offset: u64,
    pub data: Bytes,
}

impl fmt::Debug for UploadChunk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UploadChunk").field("offset", &self.offset).field("len", &self.data.0.len()).finish()
    }
}

/// Repeats name and digest so that a retried commit is idempotent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadCommit {
    pub kind: ArtifactKind,
    pub name: String,
    pub sha256: Sha256Digest,
}

/// Warm-up or measurement budget: run until *both* the count and the
/// minimum time are reached (a zero disables that bound).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunPolicy {
    pub count: u32,
    pub min_time_ms: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BenchmarkRequest {
    pub model: String,
    /// `None`: the board profile's default.
    pub threads: Option<u32>,
    pub warmup: RunPolicy,
    pub runs: RunPolicy,
    /// Feed the first sample of this eval bundle instead of synthetic input.
    pub input_bundle: Option<String>,
    /// The runtime and execution providers; `None`: tract.
    #[serde(default)]
    pub runtime: Option<RuntimeRequest>,
}

/// Throttling state as the board reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Throttling {
    /// Throttled (frequency capped or limited) during the measurement.
    pub throttled: bool,
    pub under_voltage: bool,
    pub soft_temp_limit: bool,
    /// Raw board value where there is one (Raspberry Pi `get_throttled`).
    pub raw: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BenchmarkResult {
    pub model: String,
    pub threads: u32,
    pub load_time_ns: u64,
    pub first_run_ns: u64,
    pub warmup_runs: u32,
    /// Warm per-run latencies in run order.
    pub samples_ns: Vec<u64>,
    pub stats: LatencyStats,
    pub peak_rss_bytes: Option<u64>,
    pub cpu_temp_start_c: Option<f32>,
    pub cpu_temp_end_c: Option<f32>,
    pub throttling: Option<Throttling>,
    /// What ran the model and how (runtime, providers, session, caches).
    #[serde(default)]
    pub runtime: RuntimeReport,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalRequest {
    pub model: String,
    /// Name of an uploaded [`ArtifactKind::EvalBundle`].
    pub bundle: String,
    pub threads: Option<u32>,
    /// The runtime and execution providers; `None`: tract.
    #[serde(default)]
    pub runtime: Option<RuntimeRequest>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalResult {
    pub model: String,
    pub bundle: String,
    pub samples: u32,
    /// Fraction of samples whose arg-max equals the label (with labels).
    pub top1_accuracy: Option<f64>,
    /// Fraction whose arg-max equals that of the expected output.
    pub top1_agreement: Option<f64>,
    /// Largest |output - expected| over all outputs.
    pub max_abs_diff: Option<f32>,
    /// Mean per-sample cosine similarity of output and expected output.
    pub mean_cosine: Option<f64>,
    /// Per-sample inference latency of the warm batches (the first batch,
    /// which builds accelerator engines, is `runtime.first_run_ns`; with a
    /// single batch it is counted here too).
    pub latency: Option<LatencyStats>,
    pub peak_rss_bytes: Option<u64>,
    /// What ran the model and how.
    #[serde(default)]
    pub runtime: RuntimeReport,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CompareRequest {
    pub model_a: String,
    pub model_b: String,
    pub threads: Option<u32>,
    pub warmup: RunPolicy,
    /// Per model; runs of A and B alternate.
    pub runs: RunPolicy,
    pub input_bundle: Option<String>,
    /// The runtime of arm A and of arm B (`None`: tract): the same model
    /// under two runtimes is a comparison of runtimes.
    #[serde(default)]
    pub runtime_a: Option<RuntimeRequest>,
    #[serde(default)]
    pub runtime_b: Option<RuntimeRequest>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CompareResult {
    pub a: BenchmarkResult,
    pub b: BenchmarkResult,
    /// `b.stats.p50_ns / a.stats.p50_ns`: below 1 means B is faster.
    pub ratio_of_medians: f64,
}

/// An inference runtime of the board.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeKind {
    /// tract, built into rba-device: always there.
    #[default]
    Tract,
    /// ONNX Runtime, loaded at run time from a library on the board.
    OnnxRuntime,
}

impl RuntimeKind {
    pub const ALL: [RuntimeKind; 2] = [RuntimeKind::Tract, RuntimeKind::OnnxRuntime];

    /// `tract`, `onnxruntime` (as on the command line).
    pub fn name(self) -> &'static str {
        match self {
            RuntimeKind::Tract => "tract",
            RuntimeKind::OnnxRuntime => "onnxruntime",
        }
    }

    pub fn from_name(name: &str) -> Option<RuntimeKind> {
        let n = name.trim().to_ascii_lowercase();
        match n.as_str() {
            "tract" => Some(RuntimeKind::Tract),
            "onnxruntime" | "ort" | "onnx-runtime" => Some(RuntimeKind::OnnxRuntime),
            _ => None,
        }
    }
}

impl fmt::Display for RuntimeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An ONNX Runtime execution provider rba-device can register.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExecutionProvider {
    /// ONNX Runtime's own kernels (always registered, last).
    Cpu,
    /// XNNPACK's ARM and x86 kernels (where the library was built with it).
    Xnnpack,
    /// NVIDIA CUDA (and cuDNN).
    Cuda,
    /// NVIDIA TensorRT: engines built at the first run, cached in the store.
    #[serde(rename = "tensorrt")]
    TensorRt,
}

impl ExecutionProvider {
    pub const ALL: [ExecutionProvider; 4] =
        [ExecutionProvider::Cpu, ExecutionProvider::Xnnpack, ExecutionProvider::Cuda, ExecutionProvider::TensorRt];

    /// `cpu`, `xnnpack`, `cuda`, `tensorrt` (as on the command line and in
    /// board profiles).
    pub fn name(self) -> &'static str {
        match self {
            ExecutionProvider::Cpu => "cpu",
            ExecutionProvider::Xnnpack => "xnnpack",
            ExecutionProvider::Cuda => "cuda",
            ExecutionProvider::TensorRt => "tensorrt",
        }
    }

    /// ONNX Runtime's name, as `GetAvailableProviders` and its profiles
    /// spell it.
    pub fn ort_name(self) -> &'static str {
        match self {
            ExecutionProvider::Cpu => "CPUExecutionProvider",
            ExecutionProvider::Xnnpack => "XnnpackExecutionProvider",
            ExecutionProvider::Cuda => "CUDAExecutionProvider",
            ExecutionProvider::TensorRt => "TensorrtExecutionProvider",
        }
    }

    /// From a short name (`cuda`) or ONNX Runtime's (`CUDAExecutionProvider`),
    /// case-insensitively.
    pub fn from_name(name: &str) -> Option<ExecutionProvider> {
        let n = name.trim();
        ExecutionProvider::ALL.into_iter().find(|ep| {
            n.eq_ignore_ascii_case(ep.name())
                || n.eq_ignore_ascii_case(ep.ort_name())
                || (*ep == ExecutionProvider::TensorRt && n.eq_ignore_ascii_case("trt"))
        })
    }
}

impl fmt::Display for ExecutionProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a job does when an execution provider it asked for is missing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EpPolicy {
    /// Run with what registered (ONNX Runtime's CPU kernels at worst) and
    /// report what happened.
    #[default]
    Fallback,
    /// Fail when a requested provider does not register, or when any node
    /// runs on a provider that was not requested (the CPU, unless listed).
    Strict,
}

impl EpPolicy {
    pub fn name(self) -> &'static str {
        match self {
            EpPolicy::Fallback => "fallback",
            EpPolicy::Strict => "strict",
        }
    }

    pub fn from_name(name: &str) -> Option<EpPolicy> {
        match name.trim().to_ascii_lowercase().as_str() {
            "fallback" => Some(EpPolicy::Fallback),
            "strict" => Some(EpPolicy::Strict),
            _ => None,
        }
    }
}

/// The runtime a job asks for.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeRequest {
    pub runtime: RuntimeKind,
    /// Execution providers in order of preference (onnxruntime only);
    /// empty: the board profile's list, without the ones the library lacks.
    pub eps: Vec<ExecutionProvider>,
    /// `None`: the board profile's policy (else `Fallback`).
    pub policy: Option<EpPolicy>,
}

impl RuntimeRequest {
    pub fn tract() -> RuntimeRequest {
        RuntimeRequest::default()
    }

    pub fn onnxruntime(eps: Vec<ExecutionProvider>, policy: Option<EpPolicy>) -> RuntimeRequest {
        RuntimeRequest { runtime: RuntimeKind::OnnxRuntime, eps, policy }
    }
}

/// One requested execution provider and what became of it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpOutcome {
    /// The provider (`cpu`, `xnnpack`, `cuda`, `tensorrt`).
    pub ep: String,
    /// The options it was registered with (`trt_fp16_enable=1`, ...).
    pub options: Vec<(String, String)>,
    /// `None`: registered. Otherwise ONNX Runtime's exact error (under
    /// `fallback` the job ran without the provider).
    pub error: Option<String>,
}

/// How many nodes of the model one provider ran.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderNodes {
    /// ONNX Runtime's provider name (`CPUExecutionProvider`), or `tract`.
    pub provider: String,
    /// Nodes (kernels) it ran in the first run. A subgraph a provider
    /// fuses (TensorRT) counts as one.
    pub nodes: u32,
}

/// TensorRT's engine cache in the store, around one session.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineCache {
    /// Engine files for this model before the session was created.
    pub engines_before: u32,
    /// Engine files after the first run.
    pub engines_after: u32,
    /// Engines were there and none had to be built.
    pub hit: bool,
    /// A timing cache was there before the session.
    pub timing_cache: bool,
}

/// What ran a model and how: in every benchmark and evaluation result.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RuntimeReport {
    pub runtime: RuntimeKind,
    /// `tract-onnx 0.23`, `onnxruntime 1.20.1`.
    pub version: String,
    /// The library loaded (onnxruntime).
    pub library: Option<String>,
    pub policy: EpPolicy,
    /// Each provider asked for, in order of preference, with its outcome.
    pub eps: Vec<EpOutcome>,
    /// Nodes per provider in the first run (ONNX Runtime's profile), or
    /// tract's node count.
    pub nodes: Vec<ProviderNodes>,
    /// Creating the session or plan (parsing, optimising, partitioning;
    /// TensorRT builds its engines in the first run).
    pub session_ns: u64,
    /// The first run, engine builds included.
    pub first_run_ns: u64,
    /// TensorRT's engine cache, where TensorRT was registered.
    pub engine_cache: Option<EngineCache>,
    /// What else the board wants said (providers of the profile the
    /// library lacks, ...).
    pub notes: Vec<String>,
}

impl RuntimeReport {
    /// `tract`, `onnxruntime [tensorrt, cuda]`: a short label.
    pub fn label(&self) -> String {
        let registered: Vec<&str> = self.eps.iter().filter(|e| e.error.is_none()).map(|e| e.ep.as_str()).collect();
        if self.runtime == RuntimeKind::OnnxRuntime && !registered.is_empty() {
            alloc::format!("{} [{}]", self.runtime.name(), registered.join(", "))
        } else {
            self.runtime.name().into()
        }
    }

    /// `CPUExecutionProvider 412, TensorrtExecutionProvider 3`.
    pub fn nodes_text(&self) -> String {
        let parts: Vec<String> = self.nodes.iter().map(|n| alloc::format!("{} {}", n.provider, n.nodes)).collect();
        parts.join(", ")
    }
}

/// A runtime as the board has it (in [`DeviceInfo`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeInfo {
    pub runtime: RuntimeKind,
    pub version: Option<String>,
    /// The library it loads (onnxruntime).
    pub library: Option<String>,
    /// Why it cannot run here (no library, too old, does not load).
    pub problem: Option<String>,
    /// Execution providers the library offers (`GetAvailableProviders`).
    pub providers: Vec<String>,
    /// The board profile's providers, in order, and its policy.
    pub default_eps: Vec<ExecutionProvider>,
    pub default_policy: EpPolicy,
}

/// The board's accelerator, as far as it tells.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AcceleratorInfo {
    /// `/proc/device-tree/model`, e.g. `NVIDIA Jetson Orin Nano Developer Kit`.
    pub model: Option<String>,
    /// The power mode (`nvpmodel`), e.g. `15W (mode 0)`.
    pub power_mode: Option<String>,
    pub gpu_freq_hz: Option<u64>,
    pub gpu_max_freq_hz: Option<u64>,
    /// GPU load, 0-100.
    pub gpu_load_pct: Option<f32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    /// The job was accepted and started.
    Started,
    Loading,
    WarmUp,
    Measuring,
    Evaluating,
    /// Switching the active model, running the activation hook.
    Activating,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    pub phase: Phase,
    pub done: u64,
    pub total: Option<u64>,
    pub message: Option<String>,
}

/// Bytes serialised as one length-prefixed block (postcard copies them in
/// one go instead of element by element, and bounds them by the input).
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Bytes(pub Vec<u8>);

impl fmt::Debug for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Bytes(len {})", self.0.len())
    }
}

impl From<Vec<u8>> for Bytes {
    fn from(v: Vec<u8>) -> Self {
        Bytes(v)
    }
}

impl Serialize for Bytes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Bytes;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Bytes, E> {
                Ok(Bytes(v.to_vec()))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Bytes, E> {
                Ok(Bytes(v))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut a: A) -> Result<Bytes, A::Error> {
                // Self-describing formats (JSON): never trust the size hint.
                let mut v = Vec::new();
                while let Some(b) = a.next_element::<u8>()? {
                    v.push(b);
                }
                Ok(Bytes(v))
            }
        }
        d.deserialize_byte_buf(V)
    }
}
