//! How long work reports itself. The library draws nothing: capture, fits,
//! selection and board jobs report to a [`Progress`], and the `rba` binary
//! turns that into progress bars and lines on the terminal. Tests and other
//! callers pass [`Silent`].

/// What a task counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    Images,
    Bytes,
    /// A job with no natural unit (a benchmark phase, an evaluation).
    Steps,
}

/// Receives the progress of long work.
pub trait Progress: Send + Sync {
    /// Starts a task of `total` units (`None`: unknown); it ends when the
    /// returned handle is dropped.
    fn task(&self, name: &str, total: Option<u64>, unit: Unit) -> Box<dyn Task>;
    /// A line worth showing as it happens (e.g. each verified candidate).
    fn note(&self, line: &str);
}

/// One running task.
pub trait Task: Send + Sync {
    /// Units done so far.
    fn set(&self, done: u64);
    /// Adds `n` units.
    fn advance(&self, n: u64);
    /// What the task is doing now.
    fn message(&self, text: &str);
}

/// Reports nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct Silent;

impl Progress for Silent {
    fn task(&self, _: &str, _: Option<u64>, _: Unit) -> Box<dyn Task> {
        Box::new(Silent)
    }
    fn note(&self, _: &str) {}
}

impl Task for Silent {
    fn set(&self, _: u64) {}
    fn advance(&self, _: u64) {}
    fn message(&self, _: &str) {}
}
