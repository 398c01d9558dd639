//! The fleet report (`rba fleet ... --json`): one entry per board of the
//! inventory that was selected, with what happened there; REPORT.md,
//! "Fleet report". Also its terminal table.

use std::fmt::Write;

use rba_protocol::time::iso8601_utc;
use rba_protocol::{ActivationResult, AppStatus, BenchmarkResult, DeviceIdentity, Gate, GateFigures};
use serde::{Deserialize, Serialize};

use super::text::format_ns;
use crate::board::Deployed;

/// Bumped when the JSON layout changes incompatibly (REPORT.md).
pub const FLEET_SCHEMA_VERSION: u32 = 1;

/// Which fleet command ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FleetCommand {
    Status,
    Deploy,
    Bench,
    Rollback,
}

/// How it went on one board.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BoardOutcome {
    /// The model is now active (gates held, hook fine if there is one).
    Activated,
    /// The board already ran the model (same SHA-256): nothing done.
    AlreadyActive,
    /// The model is active but the activation hook failed.
    HookFailed,
    /// A gate failed: the old model stays active.
    GateFailed,
    RolledBack,
    AlreadyRolledBack,
    /// Status or benchmark done.
    Done,
    /// No connection (refused, timed out, no answer to the handshake).
    Unreachable,
    /// The handshake failed: the board does not hold this key.
    AuthFailed,
    /// The board proved another identity than the one pinned for it.
    IdentityChanged,
    /// Anything else that went wrong (see the message).
    Failed,
    /// Not tried: the canaries failed, or `--stop-on-failure` stopped the run.
    NotAttempted,
}

impl BoardOutcome {
    /// The board ended where the command meant it to.
    pub fn ok(self) -> bool {
        matches!(
            self,
            BoardOutcome::Activated
                | BoardOutcome::AlreadyActive
                | BoardOutcome::RolledBack
                | BoardOutcome::AlreadyRolledBack
                | BoardOutcome::Done
        )
    }

    pub fn label(self) -> &'static str {
        match self {
            BoardOutcome::Activated => "activated",
            BoardOutcome::AlreadyActive => "already active",
            BoardOutcome::HookFailed => "hook failed",
            BoardOutcome::GateFailed => "gate failed",
            BoardOutcome::RolledBack => "rolled back",
            BoardOutcome::AlreadyRolledBack => "already rolled back",
            BoardOutcome::Done => "ok",
            BoardOutcome::Unreachable => "unreachable",
            BoardOutcome::AuthFailed => "wrong key",
            BoardOutcome::IdentityChanged => "identity changed",
            BoardOutcome::Failed => "failed",
            BoardOutcome::NotAttempted => "not attempted",
        }
    }
}

/// One board's entry.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BoardResult {
    /// The inventory's name.
    pub name: String,
    /// `tcp 10.0.3.11:7878`, `serial /dev/ttyUSB0`.
    pub link: String,
    pub tags: Vec<String>,
    pub outcome: BoardOutcome,
    /// What happened, for people: the failed gates with their values, the error.
    pub message: String,
    /// One of the `--canary` boards.
    pub canary: bool,
    pub duration_ms: u64,
    /// The identity the board proved (`SHA256:...`).
    pub fingerprint: Option<String>,
    pub device: Option<DeviceIdentity>,
    /// The model upload (deploy, bench).
    pub deployed: Option<Deployed>,
    /// The board's answer to an activation or rollback.
    pub activation: Option<ActivationResult>,
    /// Benchmark of `rba fleet bench`.
    pub benchmark: Option<BenchmarkResult>,
    /// The applications afterwards (status; deploy and rollback: the one changed).
    pub apps: Vec<AppStatus>,
}

impl BoardResult {
    /// A result for a board before anything happened.
    pub fn new(name: &str, link: &str, tags: &[String], canary: bool) -> BoardResult {
        BoardResult {
            name: name.into(),
            link: link.into(),
            tags: tags.to_vec(),
            outcome: BoardOutcome::NotAttempted,
            message: String::new(),
            canary,
            duration_ms: 0,
            fingerprint: None,
            device: None,
            deployed: None,
            activation: None,
            benchmark: None,
            apps: Vec::new(),
        }
    }

    /// The latency samples measured on this board (benchmark, or the
    /// activation's gate benchmark).
    pub fn samples_ns(&self) -> Option<&[u64]> {
        self.benchmark
            .as_ref()
            .or_else(|| self.activation.as_ref().and_then(|a| a.benchmark.as_ref()))
            .map(|b| b.samples_ns.as_slice())
    }

    /// What was measured for the gates (deploy) or by the benchmark.
    pub fn figures(&self) -> Option<GateFigures> {
        if let Some(a) = &self.activation {
            if a.evaluation.is_some() || a.benchmark.is_some() {
                return Some(a.figures.clone());
            }
            let active = a.active.as_ref().map(|m| m.figures.clone());
            return active.filter(|f| *f != GateFigures::default());
        }
        self.benchmark.as_ref().map(|b| GateFigures {
            p50_ns: Some(b.stats.p50_ns),
            p90_ns: Some(b.stats.p90_ns),
            p99_ns: Some(b.stats.p99_ns),
            mean_ns: Some(b.stats.mean_ns),
            peak_rss_bytes: b.peak_rss_bytes,
            ..GateFigures::default()
        })
    }
}

/// The model a deploy or bench sent.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ModelRef {
    pub name: String,
    /// Lower-case hex.
    pub sha256: String,
    pub size: u64,
}

/// Counts of outcomes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetSummary {
    pub boards: usize,
    /// Ended as meant (`BoardOutcome::ok`).
    pub ok: usize,
    pub failed: usize,
    pub not_attempted: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FleetReport {
    pub schema_version: u32,
    pub command: FleetCommand,
    /// The inventory file.
    pub inventory: String,
    /// `--tags`: boards carrying every one of these.
    pub tags: Vec<String>,
    pub parallel: usize,
    pub canary: usize,
    pub stop_on_failure: bool,
    /// The application (deploy, rollback, status --app).
    pub app: Option<String>,
    pub model: Option<ModelRef>,
    pub gates: Vec<Gate>,
    /// ISO 8601 UTC.
    pub started_at: String,
    pub wall_ms: u64,
    /// Why boards were left out, if they were (failed canaries, a stop).
    pub halted: Option<String>,
    /// In inventory order.
    pub boards: Vec<BoardResult>,
    pub summary: FleetSummary,
}

impl FleetReport {
    pub fn summarize(boards: &[BoardResult]) -> FleetSummary {
        let not_attempted = boards.iter().filter(|b| b.outcome == BoardOutcome::NotAttempted).count();
        let ok = boards.iter().filter(|b| b.outcome.ok()).count();
        FleetSummary { boards: boards.len(), ok, failed: boards.len() - ok - not_attempted, not_attempted }
    }

    /// Every board ended as meant.
    pub fn all_ok(&self) -> bool {
        self.summary.ok == self.summary.boards
    }
}

fn pct(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{:.2}%", 100.0 * v))
}

fn ms(v: Option<u64>) -> String {
    v.map_or("-".into(), |v| format_ns(v as f64))
}

/// The active model of the board's application, as `name gen N (sha8)`.
fn active_cell(b: &BoardResult) -> String {
    let active = b.activation.as_ref().and_then(|a| a.active.as_ref()).or_else(|| b.apps.first()?.active.as_ref());
    active.map_or("-".into(), |m| format!("{} gen {} ({})", m.model, m.generation, &rba_protocol::hex(&m.sha256)[..8]))
}

/// Lays out rows under a header, columns padded to their widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let n = cells.len();
        for (i, (c, w)) in cells.into_iter().zip(&widths).enumerate() {
            if i + 1 == n {
                let _ = write!(out, "{c}");
            } else {
                let _ = write!(out, "{c:<w$}  ");
            }
        }
        out.push('\n');
    };
    line(header.to_vec(), &mut out);
    for r in rows {
        line(r.iter().map(String::as_str).collect(), &mut out);
    }
    out
}

/// The per-board table, then a summary line.
pub fn text(r: &FleetReport) -> String {
    let mut out = String::new();
    match r.command {
        FleetCommand::Status => {
            let mut rows = Vec::new();
            for b in &r.boards {
                if b.apps.is_empty() {
                    let what = if b.outcome.ok() { "(no applications)".to_string() } else { "-".into() };
                    rows.push(vec![
                        b.name.clone(),
                        b.outcome.label().into(),
                        what,
                        "-".into(),
                        "-".into(),
                        "-".into(),
                        b.message.clone(),
                    ]);
                }
                for a in &b.apps {
                    let (model, sha, since) = a.active.as_ref().map_or(("-".into(), "-".into(), "-".into()), |m| {
                        (
                            format!("{} gen {}", m.model, m.generation),
                            rba_protocol::hex(&m.sha256)[..16].to_string(),
                            iso8601_utc(m.activated_at_ms),
                        )
                    });
                    let last = a.history.last().map_or("-".into(), |e| format!("#{} {:?}", e.seq, e.event));
                    rows.push(vec![b.name.clone(), b.outcome.label().into(), a.app.clone(), model, sha, since, last]);
                }
            }
            out.push_str(&table(&["board", "outcome", "app", "active model", "sha256", "since", "last event"], &rows));
        }
        _ => {
            let rows: Vec<Vec<String>> = r
                .boards
                .iter()
                .map(|b| {
                    let f = b.figures().unwrap_or_default();
                    let name = if b.canary { format!("{} (canary)", b.name) } else { b.name.clone() };
                    vec![
                        name,
                        b.link.clone(),
                        b.outcome.label().into(),
                        active_cell(b),
                        pct(f.top1),
                        ms(f.p50_ns),
                        ms(f.p99_ns),
                        format!("{:.1} s", b.duration_ms as f64 / 1e3),
                        b.message.clone(),
                    ]
                })
                .collect();
            let header = ["board", "link", "outcome", "active model", "top1", "p50", "p99", "time", "detail"];
            out.push_str(&table(&header, &rows));
        }
    }
    let s = &r.summary;
    let _ = writeln!(
        out,
        "{} board(s): {} ok, {} failed, {} not attempted; {:.1} s with {} in parallel",
        s.boards,
        s.ok,
        s.failed,
        s.not_attempted,
        r.wall_ms as f64 / 1e3,
        r.parallel
    );
    if let Some(h) = &r.halted {
        let _ = writeln!(out, "{h}");
    }
    out
}
