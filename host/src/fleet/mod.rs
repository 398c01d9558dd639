//! Fleets: one command on many boards (`rba fleet status|deploy|bench|rollback`).
//!
//! The boards of an [`inventory`] (selected by tags) are handed to a pool of
//! `parallel` worker threads, each taking the next board from a shared
//! queue and running the whole task there (connect with the board's
//! pinned identity, upload, the board's gates, the switch). What happens on
//! one board never stops the others: an unreachable board, a wrong key, a
//! changed identity or a failed gate is that board's outcome. Only two
//! things leave boards out: failed canaries (`canary`: a deploy goes to the
//! first K selected boards first and continues to the rest only if every
//! one of them ends with the model active) and `stop_on_failure` (no board
//! is started after the first failure).
//!
//! A deploy asks each board for its application's status first and skips
//! a board that already runs the model (same SHA-256), so running it again
//! ends in the same state.

pub mod inventory;

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use rba_protocol::time::{iso8601_utc, now_ms};
use rba_protocol::{hex, ActivationOutcome, ActivationResult, ClientError, RemoteError};
use sha2::{Digest, Sha256};

pub use inventory::{FleetBoard, Inventory, InventoryError};

use crate::board::{deploy_and_activate, ActivationPlan, BenchOptions, BoardError, Device, ModelArtifact, Pinning};
use crate::progress::{Progress, Silent, Task, Unit};
use crate::report::fleet::{BoardOutcome, BoardResult, FleetCommand, FleetReport, ModelRef, FLEET_SCHEMA_VERSION};

/// What to do on every board.
#[derive(Clone, Debug)]
pub enum FleetTask {
    /// Applications (`app`: just that one) with their last `history` entries.
    Status { app: Option<String>, history: u32 },
    /// Upload and activate, if the gates hold on the board.
    Deploy(ActivationPlan),
    /// Upload and benchmark.
    Bench { model: ModelArtifact, options: BenchOptions },
    /// Restore the application's previous model.
    Rollback { app: String },
}

impl FleetTask {
    pub fn command(&self) -> FleetCommand {
        match self {
            FleetTask::Status { .. } => FleetCommand::Status,
            FleetTask::Deploy(_) => FleetCommand::Deploy,
            FleetTask::Bench { .. } => FleetCommand::Bench,
            FleetTask::Rollback { .. } => FleetCommand::Rollback,
        }
    }
}

#[derive(Clone, Debug)]
pub struct FleetOptions {
    /// Boards worked on at once (threads of the pool), at least 1.
    pub parallel: usize,
    /// Deploy: activate on this many boards first; the rest only if all
    /// of them end with the model active.
    pub canary: usize,
    /// Start no board after the first failure.
    pub stop_on_failure: bool,
    /// Where board identities are pinned.
    pub pinning: Pinning,
    /// For the report.
    pub inventory: String,
    pub tags: Vec<String>,
}

impl Default for FleetOptions {
    fn default() -> Self {
        FleetOptions {
            parallel: 4,
            canary: 0,
            stop_on_failure: false,
            pinning: Pinning::Default,
            inventory: String::new(),
            tags: Vec::new(),
        }
    }
}

/// Hears what happens on each board, as it happens (called from the pool's
/// threads).
pub trait FleetEvents: Send + Sync {
    fn event(&self, board: &str, message: &str);
}

/// Hears nothing.
pub struct Quiet;

impl FleetEvents for Quiet {
    fn event(&self, _: &str, _: &str) {}
}

/// A board's device progress (uploads, jobs) as fleet events: one event
/// when a task starts.
struct BoardProgress {
    board: String,
    events: Arc<dyn FleetEvents>,
}

impl Progress for BoardProgress {
    fn task(&self, name: &str, _total: Option<u64>, _unit: Unit) -> Box<dyn Task> {
        self.events.event(&self.board, name);
        Box::new(Silent)
    }
    fn note(&self, line: &str) {
        self.events.event(&self.board, line);
    }
}

/// Runs `task` on `boards` (already selected, in inventory order).
pub fn run(
    boards: &[FleetBoard],
    task: &FleetTask,
    options: &FleetOptions,
    events: Arc<dyn FleetEvents>,
) -> FleetReport {
    let started_ms = now_ms();
    let started = Instant::now();
    let canary = match task {
        FleetTask::Deploy(_) => options.canary.min(boards.len()),
        _ => 0,
    };
    let mut results: Vec<BoardResult> = boards
        .iter()
        .enumerate()
        .map(|(i, b)| BoardResult::new(&b.name, &b.link_label(), &b.tags, i < canary))
        .collect();
    let stop = AtomicBool::new(false);
    let work = |i: usize| -> BoardResult {
        let b = &boards[i];
        let t = Instant::now();
        let mut r = catch_unwind(AssertUnwindSafe(|| run_board(b, task, options, events.clone(), i < canary)))
            .unwrap_or_else(|_| {
                let mut r = BoardResult::new(&b.name, &b.link_label(), &b.tags, i < canary);
                r.outcome = BoardOutcome::Failed;
                r.message = "internal error: the board's worker panicked".into();
                r
            });
        r.duration_ms = u64::try_from(t.elapsed().as_millis()).unwrap_or(u64::MAX);
        events.event(
            &b.name,
            &format!(
                "{}{}",
                r.outcome.label(),
                if r.message.is_empty() { String::new() } else { format!(": {}", r.message) }
            ),
        );
        r
    };
    let all: Vec<usize> = (0..boards.len()).collect();
    let (first, rest) = all.split_at(canary);
    let mut halted = None;
    for (i, r) in pool(first, options, &stop, &work) {
        results[i] = r;
    }
    let canaries_failed: Vec<String> = results[..canary]
        .iter()
        .filter(|r| !r.outcome.ok())
        .map(|r| format!("{} ({})", r.name, r.outcome.label()))
        .collect();
    if !canaries_failed.is_empty() {
        halted = Some(format!(
            "canary failed on {}: the other {} board(s) were not attempted",
            canaries_failed.join(", "),
            rest.len()
        ));
        for r in &mut results[canary..] {
            r.message = "not attempted: a canary failed".into();
        }
    } else if !stop.load(Ordering::SeqCst) {
        for (i, r) in pool(rest, options, &stop, &work) {
            results[i] = r;
        }
    }
    if stop.load(Ordering::SeqCst) && halted.is_none() {
        let left = results.iter().filter(|r| r.outcome == BoardOutcome::NotAttempted).count();
        if left > 0 {
            halted = Some(format!("--stop-on-failure: {left} board(s) were not attempted after a failure"));
            for r in results.iter_mut().filter(|r| r.outcome == BoardOutcome::NotAttempted) {
                r.message = "not attempted: stopped after a failure".into();
            }
        }
    }
    let (app, model, gates) = match task {
        FleetTask::Status { app, .. } => (app.clone(), None, Vec::new()),
        FleetTask::Deploy(p) => (Some(p.app.clone()), Some(model_ref(&p.model)), p.gates.clone()),
        FleetTask::Bench { model, .. } => (None, Some(model_ref(model)), Vec::new()),
        FleetTask::Rollback { app } => (Some(app.clone()), None, Vec::new()),
    };
    let summary = FleetReport::summarize(&results);
    FleetReport {
        schema_version: FLEET_SCHEMA_VERSION,
        command: task.command(),
        inventory: options.inventory.clone(),
        tags: options.tags.clone(),
        parallel: options.parallel.max(1),
        canary,
        stop_on_failure: options.stop_on_failure,
        app,
        model,
        gates,
        started_at: iso8601_utc(started_ms),
        wall_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        halted,
        boards: results,
        summary,
    }
}

fn model_ref(m: &ModelArtifact) -> ModelRef {
    ModelRef { name: m.name.clone(), sha256: hex(&Sha256::digest(&m.bytes)), size: m.bytes.len() as u64 }
}

/// Runs `work` on `indices` with at most `options.parallel` threads, each
/// taking the next index from a shared queue. With `stop_on_failure`, a
/// failure sets `stop` and no further index is taken.
fn pool(
    indices: &[usize],
    options: &FleetOptions,
    stop: &AtomicBool,
    work: &(dyn Fn(usize) -> BoardResult + Sync),
) -> Vec<(usize, BoardResult)> {
    let queue = Mutex::new(indices.iter().copied().collect::<VecDeque<usize>>());
    let done = Mutex::new(Vec::new());
    let threads = options.parallel.clamp(1, indices.len().max(1));
    let worker = || loop {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let Some(i) = queue.lock().unwrap_or_else(|e| e.into_inner()).pop_front() else { return };
        let r = work(i);
        if options.stop_on_failure && !r.outcome.ok() {
            stop.store(true, Ordering::SeqCst);
        }
        done.lock().unwrap_or_else(|e| e.into_inner()).push((i, r));
    };
    std::thread::scope(|s| {
        let mut spawned = 0;
        for k in 0..threads {
            if std::thread::Builder::new().name(format!("rba-fleet-{k}")).spawn_scoped(s, worker).is_ok() {
                spawned += 1;
            }
        }
        // No thread could start: work here.
        if spawned == 0 {
            worker();
        }
    });
    done.into_inner().unwrap_or_else(|e| e.into_inner())
}

/// What a board error means for the fleet table.
fn classify(e: &BoardError, connecting: bool) -> BoardOutcome {
    match e {
        BoardError::IdentityChanged(_) => BoardOutcome::IdentityChanged,
        BoardError::Device { source, .. } => match source {
            ClientError::AuthFailed
            | ClientError::DeviceHasNoKey
            | ClientError::Remote(RemoteError::AuthFailed | RemoteError::AuthRequired) => BoardOutcome::AuthFailed,
            e if connecting && (e.is_link_failure() || matches!(e, ClientError::Remote(RemoteError::Busy))) => {
                BoardOutcome::Unreachable
            }
            _ => BoardOutcome::Failed,
        },
        _ => BoardOutcome::Failed,
    }
}

fn fail(r: &mut BoardResult, e: &BoardError, connecting: bool) {
    r.outcome = classify(e, connecting);
    r.message = e.to_string();
}

/// The whole task on one board.
fn run_board(
    board: &FleetBoard,
    task: &FleetTask,
    options: &FleetOptions,
    events: Arc<dyn FleetEvents>,
    canary: bool,
) -> BoardResult {
    let mut r = BoardResult::new(&board.name, &board.link_label(), &board.tags, canary);
    events.event(&board.name, "connecting");
    let mut device = match board.target().and_then(|t| Device::connect_pinned(&t, &options.pinning)) {
        Ok(d) => d,
        Err(e) => {
            fail(&mut r, &e, true);
            return r;
        }
    };
    if let Some(note) = device.pin_note() {
        events.event(&board.name, note);
    }
    r.fingerprint = Some(device.fingerprint());
    r.device = Some(device.identity().clone());
    device.set_progress(Arc::new(BoardProgress { board: board.name.clone(), events: events.clone() }));
    let outcome = match task {
        FleetTask::Status { app, history } => device.app_status(app.as_deref(), *history).map(|apps| {
            r.apps = apps;
            r.outcome = BoardOutcome::Done;
        }),
        FleetTask::Deploy(plan) => with_board_gates(plan, board)
            .and_then(|own| deploy_and_activate(&mut device, own.as_ref().unwrap_or(plan)))
            .map(|a| {
                r.deployed = a.deployed.clone();
                match a.result {
                    None => {
                        r.outcome = BoardOutcome::AlreadyActive;
                        r.message = "already runs the model: skipped".into();
                        r.apps = a.before.into_iter().collect();
                    }
                    Some(result) => {
                        describe_activation(&mut r, &result);
                        r.activation = Some(result);
                    }
                }
            }),
        FleetTask::Bench { model, options } => device.deploy(model).and_then(|d| {
            r.deployed = Some(d);
            device.bench(&[model.name.as_str()], options).map(|b| {
                r.benchmark = b.results.into_iter().next();
                r.outcome = BoardOutcome::Done;
            })
        }),
        FleetTask::Rollback { app } => device.app_status(Some(app), 0).and_then(|s| {
            let current = s.first().and_then(|s| s.active.as_ref()).map(|a| a.generation);
            device.rollback(app, current).map(|result| {
                describe_activation(&mut r, &result);
                r.activation = Some(result);
            })
        }),
    };
    if let Err(e) = outcome {
        fail(&mut r, &e, false);
    }
    r
}

/// The deploy's plan with the board's own gates added, if it has any.
fn with_board_gates(plan: &ActivationPlan, board: &FleetBoard) -> Result<Option<ActivationPlan>, BoardError> {
    if board.gates.is_empty() {
        return Ok(None);
    }
    let mut plan = plan.clone();
    plan.gates.extend(board.gates.iter().copied());
    plan.validate()?;
    Ok(Some(plan))
}

/// Outcome and message from the board's answer to an activation or rollback.
fn describe_activation(r: &mut BoardResult, a: &ActivationResult) {
    let hook_failed = a.hook.as_ref().filter(|h| !h.succeeded());
    r.outcome = match a.outcome {
        ActivationOutcome::Activated if hook_failed.is_some() => BoardOutcome::HookFailed,
        ActivationOutcome::Activated => BoardOutcome::Activated,
        ActivationOutcome::AlreadyActive => BoardOutcome::AlreadyActive,
        ActivationOutcome::GateFailed => BoardOutcome::GateFailed,
        ActivationOutcome::RolledBack if hook_failed.is_some() => BoardOutcome::HookFailed,
        ActivationOutcome::RolledBack => BoardOutcome::RolledBack,
        ActivationOutcome::AlreadyRolledBack => BoardOutcome::AlreadyRolledBack,
    };
    r.message = match (a.outcome, hook_failed) {
        (ActivationOutcome::GateFailed, _) => a.failed_checks().map(|c| c.to_string()).collect::<Vec<_>>().join("; "),
        (_, Some(h)) => format!("activation hook: {}", h.status()),
        (ActivationOutcome::RolledBack, None) => {
            a.replaced.as_ref().map(|m| format!("from {} gen {}", m.model, m.generation)).unwrap_or_default()
        }
        _ => String::new(),
    };
}
