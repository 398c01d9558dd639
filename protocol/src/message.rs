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
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalRequest {
    pub model: String,
    /// Name of an uploaded [`ArtifactKind::EvalBundle`].
    pub bundle: String,
    pub threads: Option<u32>,
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
    /// Per-sample inference latency.
    pub latency: Option<LatencyStats>,
    pub peak_rss_bytes: Option<u64>,
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
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CompareResult {
    pub a: BenchmarkResult,
    pub b: BenchmarkResult,
    /// `b.stats.p50_ns / a.stats.p50_ns`: below 1 means B is faster.
    pub ratio_of_medians: f64,
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
