//! Active models on the board (PROTOCOL.md 5.5): an application (`inspect`)
//! has one active model, at a stable path for the camera's own program, and
//! the generations before it; activation checks gates on the board first,
//! rollback restores the previous generation byte for byte, and every step
//! is recorded in the application's history.
//!
//! These types travel on the wire (postcard) and are also what the board
//! writes as JSON (`active.json`, `history.jsonl`) and what the host's
//! reports embed; digests are 32 bytes on the wire and hex in JSON.

use alloc::string::String;
use alloc::vec::Vec;

use serde::{Deserialize, Serialize};

use crate::gate::{Gate, GateCheck, GateFigures};
use crate::message::{BenchmarkResult, EvalResult, RunPolicy, RuntimeRequest, Sha256Digest};

/// Most history entries a status answer carries per application.
pub const MAX_STATUS_HISTORY: u32 = 1000;

/// Make `model` (a published model, with this digest) the active model of
/// `app`, if every gate holds on the board.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ActivateRequest {
    /// Application name (`[A-Za-z0-9_-]{1,64}`, starting with a letter or digit).
    pub app: String,
    pub model: String,
    /// The digest the host means: a model of that name with other bytes is refused.
    #[serde(with = "crate::hex::digest")]
    pub sha256: Sha256Digest,
    pub gates: Vec<Gate>,
    /// Eval bundle for `top1` and `agreement` (and recorded figures).
    pub eval_bundle: Option<String>,
    pub threads: Option<u32>,
    /// Benchmark for latency and memory gates (`runs.count == 0` and
    /// `runs.min_time_ms == 0`: the board's default of 20 runs when a gate needs one).
    pub warmup: RunPolicy,
    pub runs: RunPolicy,
    /// The runtime the gates are measured on (`None`: tract): the one the
    /// application will run the model with.
    pub runtime: Option<RuntimeRequest>,
}

/// Restore the generation that was active before the current one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RollbackRequest {
    pub app: String,
    /// The generation the host saw active: if another one is active now,
    /// the board refuses (`BadRequest`) unless it is the rollback of this
    /// one (a resent request: answered `AlreadyRolledBack`).
    pub from_generation: Option<u64>,
}

/// What an `Activate` or `Rollback` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActivationOutcome {
    /// The model is now active (every gate held).
    Activated,
    /// The model (same digest) already was the active one: nothing measured or changed.
    AlreadyActive,
    /// A gate failed: the previous model stays active.
    GateFailed,
    /// The previous generation is active again.
    RolledBack,
    /// The generation named was already rolled back (a resent request).
    AlreadyRolledBack,
}

impl ActivationOutcome {
    /// The model asked for is active afterwards (or the rollback is done).
    pub fn succeeded(self) -> bool {
        !matches!(self, ActivationOutcome::GateFailed)
    }
}

/// How a generation came to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HistoryEvent {
    /// A model became active (its gates held).
    Activated,
    /// A model was refused by its gates; nothing changed.
    GateFailed,
    /// A rollback made an earlier model active again.
    RolledBack,
}

/// The active model of an application (one generation).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ActiveModel {
    /// Increases with every activation and rollback.
    pub generation: u64,
    pub model: String,
    #[serde(with = "crate::hex::digest")]
    pub sha256: Sha256Digest,
    pub size: u64,
    /// When it became active (this generation), ms since the Unix epoch.
    pub activated_at_ms: u64,
    pub event: HistoryEvent,
    /// The generation active before this one (what a rollback restores).
    pub previous_generation: Option<u64>,
    /// For a rollback: the generation rolled back from.
    pub rolled_back_from: Option<u64>,
    /// The gates this model passed (for a rollback: those of the original activation).
    pub checks: Vec<GateCheck>,
    pub figures: GateFigures,
    /// The eval bundle the figures were measured on.
    pub bundle: Option<String>,
}

/// How the activation hook of the board profile ran.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookOutcome {
    pub command: Vec<String>,
    /// Exit status, if it exited.
    pub exit_code: Option<i32>,
    /// The signal that ended it, if one did.
    pub signal: Option<i32>,
    /// Killed after the profile's timeout.
    pub timed_out: bool,
    /// It could not be started (the reason).
    pub error: Option<String>,
    pub duration_ms: u64,
    /// The end of its stdout and stderr (at most 2 KiB).
    pub output: String,
}

impl HookOutcome {
    pub fn succeeded(&self) -> bool {
        self.exit_code == Some(0) && !self.timed_out && self.error.is_none()
    }

    /// `exit 0`, `exit 3`, `killed by signal 9`, `timed out after 30000 ms`, `not started: ...`.
    pub fn status(&self) -> String {
        use alloc::format;
        if let Some(e) = &self.error {
            format!("not started: {e}")
        } else if self.timed_out {
            format!("timed out after {} ms", self.duration_ms)
        } else if let Some(c) = self.exit_code {
            format!("exit {c}")
        } else if let Some(s) = self.signal {
            format!("killed by signal {s}")
        } else {
            "unknown".into()
        }
    }
}

/// The answer to `Activate` and `Rollback`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ActivationResult {
    pub app: String,
    pub outcome: ActivationOutcome,
    /// The active model afterwards (unchanged after a failed gate).
    pub active: Option<ActiveModel>,
    /// The active model before the request.
    pub replaced: Option<ActiveModel>,
    /// Every gate with its measured value (empty for a rollback).
    pub checks: Vec<GateCheck>,
    pub figures: GateFigures,
    /// The evidence: the evaluation and the benchmark that ran, if any.
    pub evaluation: Option<EvalResult>,
    pub benchmark: Option<BenchmarkResult>,
    /// The activation hook, if the profile has one and the active model changed.
    pub hook: Option<HookOutcome>,
}

impl ActivationResult {
    /// The gates that failed.
    pub fn failed_checks(&self) -> impl Iterator<Item = &GateCheck> {
        self.checks.iter().filter(|c| !c.passed)
    }
}

/// One line of an application's history (`history.jsonl` on the board).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// 1, 2, ... in the order written.
    pub seq: u64,
    pub at_ms: u64,
    pub event: HistoryEvent,
    /// The generation made active (none for a failed gate).
    pub generation: Option<u64>,
    pub model: String,
    #[serde(with = "crate::hex::digest")]
    pub sha256: Sha256Digest,
    pub checks: Vec<GateCheck>,
    pub figures: GateFigures,
    pub hook: Option<HookOutcome>,
    /// Written at start-up by the recovery step: the daemon stopped between
    /// switching the active model and recording it (hook outcome unknown).
    pub recovered: bool,
}

/// An application as `AppStatus` reports it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AppStatus {
    pub app: String,
    pub active: Option<ActiveModel>,
    /// The generations a rollback would restore, most recent first.
    pub previous: Vec<ActiveModel>,
    /// The last entries of the history, oldest first.
    pub history: Vec<HistoryEntry>,
    /// Entries in the whole history.
    pub history_total: u64,
}
