//! Terminal text for active models: what an activation or a rollback did,
//! why a gate refused a model, and an application's status and history.

use std::fmt::Write;

use rba_protocol::time::iso8601_utc;
use rba_protocol::{
    ActivationOutcome, ActivationResult, ActiveModel, AppStatus, HistoryEntry, HistoryEvent, HookOutcome,
};

use crate::board::activate::short_sha;
use crate::board::BoardActivation;

/// `vit-slim (generation 3, sha256 0123...)`.
pub fn model_line(m: &ActiveModel) -> String {
    format!("{} (generation {}, sha256 {})", m.model, m.generation, short_sha(&m.sha256))
}

/// `gate failed on board X: top1 96.80% < 97.50%`, one line per failed
/// condition (empty when none failed).
pub fn gate_failures(board: &str, r: &ActivationResult) -> Vec<String> {
    r.failed_checks().map(|c| format!("gate failed on board {board}: {c}")).collect()
}

fn hook_line(h: &HookOutcome) -> String {
    let mut s = format!("activation hook {:?}: {} ({} ms)", h.command.join(" "), h.status(), h.duration_ms);
    if !h.succeeded() && !h.output.is_empty() {
        let last = h.output.lines().last().unwrap_or_default();
        let _ = write!(s, ": {last}");
    }
    s
}

/// What deploying with activation did on one board, several lines.
pub fn activation(board: &str, app: &str, a: &BoardActivation) -> String {
    let mut out = String::new();
    let Some(r) = &a.result else {
        let active = a.before.as_ref().and_then(|s| s.active.as_ref());
        let what = active.map_or_else(|| "the model".to_string(), model_line);
        let _ = writeln!(out, "{board}: {app} already runs {what}: nothing to do");
        return out;
    };
    out.push_str(&result(board, r));
    out
}

/// An activation's or rollback's answer, several lines.
pub fn result(board: &str, r: &ActivationResult) -> String {
    let mut out = String::new();
    let app = &r.app;
    for c in &r.checks {
        let _ = writeln!(out, "  {} {c}", if c.passed { "pass" } else { "FAIL" });
    }
    let before = r.replaced.as_ref().map_or_else(|| "no model".to_string(), model_line);
    match r.outcome {
        ActivationOutcome::Activated => {
            let now = r.active.as_ref().map_or_else(String::new, model_line);
            let _ = writeln!(out, "{board}: {app} now runs {now} (was {before})");
        }
        ActivationOutcome::AlreadyActive => {
            let _ = writeln!(out, "{board}: {app} already runs {before}: nothing to do");
        }
        ActivationOutcome::GateFailed => {
            for line in gate_failures(board, r) {
                let _ = writeln!(out, "{line}");
            }
            let _ = writeln!(out, "{board}: {app} stays on {before}");
        }
        ActivationOutcome::RolledBack => {
            let now = r.active.as_ref().map_or_else(String::new, model_line);
            let _ = writeln!(out, "{board}: rolled {app} back from {before} to {now}");
        }
        ActivationOutcome::AlreadyRolledBack => {
            let now = r.active.as_ref().map_or_else(String::new, model_line);
            let _ = writeln!(out, "{board}: {app} was already rolled back; it runs {now}");
        }
    }
    if let Some(h) = &r.hook {
        let _ = writeln!(out, "{board}: {}", hook_line(h));
    }
    out
}

fn event_name(e: HistoryEvent) -> &'static str {
    match e {
        HistoryEvent::Activated => "activated",
        HistoryEvent::GateFailed => "gate failed",
        HistoryEvent::RolledBack => "rolled back",
    }
}

fn history_line(e: &HistoryEntry) -> String {
    let mut s = format!("    #{:<4} {}  {:<11} {}", e.seq, iso8601_utc(e.at_ms), event_name(e.event), e.model);
    if let Some(g) = e.generation {
        let _ = write!(s, " (generation {g})");
    }
    let _ = write!(s, " sha256 {}", short_sha(&e.sha256));
    let failed: Vec<String> = e.checks.iter().filter(|c| !c.passed).map(|c| c.to_string()).collect();
    if !failed.is_empty() {
        let _ = write!(s, "; {}", failed.join("; "));
    }
    if let Some(h) = &e.hook {
        let _ = write!(s, "; hook {}", h.status());
    }
    if e.recovered {
        s.push_str("; recorded at start-up (recovered)");
    }
    s
}

/// The status of a board's applications.
pub fn status(board: &str, apps: &[AppStatus]) -> String {
    let mut out = String::new();
    if apps.is_empty() {
        let _ = writeln!(out, "{board}: no applications");
        return out;
    }
    for a in apps {
        match &a.active {
            Some(m) => {
                let _ = writeln!(
                    out,
                    "{board}: {}: {}, sha256 {}, active since {} ({})",
                    a.app,
                    m.model,
                    rba_protocol::hex(&m.sha256),
                    iso8601_utc(m.activated_at_ms),
                    match m.rolled_back_from {
                        Some(g) => format!("generation {}, rolled back from generation {g}", m.generation),
                        None => format!("generation {}", m.generation),
                    }
                );
                if !m.checks.is_empty() {
                    let gates: Vec<String> = m.checks.iter().map(|c| c.to_string()).collect();
                    let _ = writeln!(out, "  gates: {}", gates.join(", "));
                }
                let _ = writeln!(out, "  measured: {}", m.figures.summary());
            }
            None => {
                let _ = writeln!(out, "{board}: {}: no active model", a.app);
            }
        }
        if let Some(p) = a.previous.first() {
            let _ = writeln!(out, "  rollback restores {}", model_line(p));
        }
        if !a.history.is_empty() {
            let _ = writeln!(out, "  history (last {} of {}):", a.history.len(), a.history_total);
            for e in a.history.iter().rev() {
                let _ = writeln!(out, "{}", history_line(e));
            }
        }
    }
    out
}
