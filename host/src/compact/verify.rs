//! Measuring candidate compacted models on the held-out data (METHOD.md,
//! "Selection"): whole models one after the other (`--selection full`), or
//! only their tails from the cached boundary activations (`tail`, the
//! default), candidates in parallel.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use tract_linalg::multithread::{multithread_tract_scope, Executor};

use super::evaluate::{quality, HeldOut, Quality};
use super::surgery::Span;
use super::tail::{run_tail, tail_model, CacheInfo};
use super::{build, CompactError, TranslatorKind};
use crate::calibrate::Statistics;
use crate::model::run::predict;
use crate::model::Model;
use crate::progress::{Progress, Unit};

/// How candidates are measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SelectionMode {
    /// Only the part of each candidate after the earliest boundary it
    /// changes, from the cached held-out activations; candidates in parallel.
    #[default]
    Tail,
    /// The whole candidate model on every held-out image, one candidate
    /// after the other (the reference the tail path must agree with).
    Full,
}

impl SelectionMode {
    pub const NAMES: [&'static str; 2] = ["tail", "full"];
}

impl std::str::FromStr for SelectionMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "tail" => Ok(SelectionMode::Tail),
            "full" => Ok(SelectionMode::Full),
            _ => Err(format!("unknown selection mode '{s}' (expected tail or full)")),
        }
    }
}

/// How selection verifies candidates.
#[derive(Debug, Clone, PartialEq)]
pub struct SelectOptions {
    pub mode: SelectionMode,
    /// Threads in all: candidates run in parallel, each tract plan with
    /// `threads / workers` matrix-product threads.
    pub threads: usize,
    /// Per greedy step, verify only the `K` candidates whose changed span
    /// fits best (lowest 1 - R^2 from the statistics).
    pub verify_top: Option<usize>,
}

impl Default for SelectOptions {
    fn default() -> Self {
        Self { mode: SelectionMode::Tail, threads: 1, verify_top: None }
    }
}

/// One greedy step's verification.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    /// Candidates that could be built.
    pub candidates: usize,
    /// Candidates measured on the held-out data.
    pub verified: usize,
}

/// How the selection's candidates were measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verification {
    pub mode: SelectionMode,
    pub verify_top: Option<usize>,
    /// Per greedy step.
    pub steps: Vec<Step>,
    /// Candidate models run on the held-out data (a candidate measured
    /// again is answered from memory in the tail path and not counted).
    pub runs: usize,
    /// Tail-path candidates whose tail could not be built and that ran as
    /// whole models.
    pub full_fallbacks: usize,
    pub cache: Option<CacheInfo>,
}

/// One candidate's measurement: `None` when it cannot be built.
type Measured = Result<Option<Quality>, CompactError>;

/// A candidate: spans with their translators (`Auto` resolved).
pub type Candidate = Vec<(Span, TranslatorKind)>;

/// The earliest boundary a candidate changes: a span's start, or for a
/// folded span the boundary before it (the fold rewrites block `s`).
pub fn changed_from(candidate: &[(Span, TranslatorKind)]) -> usize {
    candidate
        .iter()
        .map(|(s, k)| if *k == TranslatorKind::Folded { s.start.saturating_sub(1) } else { s.start })
        .min()
        .unwrap_or(0)
}

/// Measures candidates for one selection.
pub struct Verifier<'a> {
    model: &'a Model,
    stats: &'a Statistics,
    held: &'a HeldOut,
    options: SelectOptions,
    progress: &'a dyn Progress,
    memo: Mutex<HashMap<Candidate, Quality>>,
    runs: AtomicUsize,
    fallbacks: AtomicUsize,
    warned: AtomicBool,
    steps: Mutex<Vec<Step>>,
}

impl<'a> Verifier<'a> {
    pub fn new(
        model: &'a Model,
        stats: &'a Statistics,
        held: &'a HeldOut,
        options: &SelectOptions,
        progress: &'a dyn Progress,
    ) -> Self {
        if options.mode == SelectionMode::Tail && held.cache.is_none() {
            let why = held.no_cache.as_deref().unwrap_or("they were not captured");
            progress.note(&format!(
                "tail-only selection needs the held-out boundary activations ({why}); measuring whole models"
            ));
        }
        Self {
            model,
            stats,
            held,
            options: options.clone(),
            progress,
            memo: Mutex::new(HashMap::new()),
            runs: AtomicUsize::new(0),
            fallbacks: AtomicUsize::new(0),
            warned: AtomicBool::new(false),
            steps: Mutex::new(Vec::new()),
        }
    }

    pub fn options(&self) -> &SelectOptions {
        &self.options
    }

    pub(crate) fn record_step(&self, step: Step) {
        if let Ok(mut s) = self.steps.lock() {
            s.push(step);
        }
    }

    /// What was measured, and how.
    pub fn verification(&self) -> Verification {
        Verification {
            mode: self.options.mode,
            verify_top: self.options.verify_top,
            steps: self.steps.lock().map(|s| s.clone()).unwrap_or_default(),
            runs: self.runs.load(Ordering::Relaxed),
            full_fallbacks: self.fallbacks.load(Ordering::Relaxed),
            cache: self.held.cache.as_ref().map(|c| c.info.clone()),
        }
    }

    /// The held-out quality of each candidate, `None` for one that cannot be
    /// built (no statistics for a merged span, no fold site, ...).
    pub fn measure(&self, candidates: &[Candidate]) -> Result<Vec<Option<Quality>>, CompactError> {
        match self.options.mode {
            SelectionMode::Full => candidates.iter().map(|c| self.measure_full(c)).collect(),
            SelectionMode::Tail => self.measure_parallel(candidates),
        }
    }

    /// Today's path: build the whole model, run it on every held-out image.
    fn measure_full(&self, candidate: &Candidate) -> Result<Option<Quality>, CompactError> {
        let Ok((m, _)) = build(self.model, self.stats, candidate) else { return Ok(None) };
        self.runs.fetch_add(1, Ordering::Relaxed);
        Ok(Some(self.held.measure(&m)?))
    }

    fn measure_parallel(&self, candidates: &[Candidate]) -> Result<Vec<Option<Quality>>, CompactError> {
        let mut results: Vec<Option<Quality>> = vec![None; candidates.len()];
        let mut todo: Vec<usize> = Vec::new();
        {
            let memo = self.memo.lock().map_err(|_| CompactError::Cache("memo lock poisoned".into()))?;
            for (i, c) in candidates.iter().enumerate() {
                match memo.get(c) {
                    Some(q) => results[i] = Some(*q),
                    None => todo.push(i),
                }
            }
        }
        // Longest tails first, so the last ones to finish are short.
        todo.sort_by_key(|&i| changed_from(&candidates[i]));
        let threads = self.options.threads.max(1);
        let workers = threads.min(todo.len()).max(1);
        let per_worker = (threads / workers).max(1);
        let task = self.progress.task("verify", Some(todo.len() as u64), Unit::Steps);
        let next = AtomicUsize::new(0);
        let failed = AtomicBool::new(false);
        let done: Mutex<Vec<(usize, Measured)>> = Mutex::new(Vec::new());
        std::thread::scope(|scope| {
            for _ in 0..workers {
                scope.spawn(|| {
                    let executor =
                        if per_worker > 1 { Executor::multithread(per_worker) } else { Executor::SingleThread };
                    multithread_tract_scope(executor, || loop {
                        let k = next.fetch_add(1, Ordering::Relaxed);
                        if k >= todo.len() || failed.load(Ordering::Relaxed) {
                            break;
                        }
                        let i = todo[k];
                        let r = self.measure_tail(&candidates[i]);
                        if r.is_err() {
                            failed.store(true, Ordering::Relaxed);
                        }
                        if let Ok(mut d) = done.lock() {
                            d.push((i, r));
                        }
                        task.advance(1);
                    });
                });
            }
        });
        drop(task);
        let done = done.into_inner().map_err(|_| CompactError::Cache("a verification thread failed".into()))?;
        let mut memo = self.memo.lock().map_err(|_| CompactError::Cache("memo lock poisoned".into()))?;
        for (i, r) in done {
            let q = r?;
            if let Some(q) = q {
                memo.insert(candidates[i].clone(), q);
            }
            results[i] = q;
        }
        Ok(results)
    }

    /// One candidate from its tail; a whole-model run when the tail cannot
    /// be built.
    fn measure_tail(&self, candidate: &Candidate) -> Result<Option<Quality>, CompactError> {
        let Ok((m, _)) = build(self.model, self.stats, candidate) else { return Ok(None) };
        self.runs.fetch_add(1, Ordering::Relaxed);
        let b = changed_from(candidate);
        let labels = self.held.labels.as_deref();
        let why = match self.held.cache.as_ref() {
            Some(cache) => match tail_model(m, b, cache) {
                Ok(tail) => {
                    let out = run_tail(&tail, b, cache)?;
                    return Ok(Some(quality(&out, &self.held.reference, labels)));
                }
                Err(why) => why,
            },
            None => String::new(),
        };
        self.fallbacks.fetch_add(1, Ordering::Relaxed);
        if !why.is_empty() && !self.warned.swap(true, Ordering::Relaxed) {
            self.progress.note(&format!("measuring a candidate on the whole model: {why}"));
        }
        let Ok((m, _)) = build(self.model, self.stats, candidate) else { return Ok(None) };
        let out = predict(&m, &self.held.inputs, self.held.batch)?;
        Ok(Some(quality(&out, &self.held.reference, labels)))
    }
}
