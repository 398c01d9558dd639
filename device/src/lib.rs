//! rba-device: the board runtime.
//!
//! - [`store`]: the artifact directory (staged uploads, atomic publish, quota).
//! - [`runtime`]: tract loading and running with a concrete batch.
//! - [`measure`]: warm-up and measured phases, interleaved A/B runs.
//! - [`eval`]: accuracy and agreement metrics.
//! - [`probe`]: peak RSS, memory, temperatures, throttling.
//! - [`board`]: board profiles (`boards/*.toml`).
//! - [`handler`]: the protocol's `DeviceHandler` over all of the above.
//! - [`link`]: serving sessions over TCP and serial links, shutdown.

pub mod board;
pub mod eval;
pub mod handler;
pub mod link;
pub mod measure;
pub mod probe;
pub mod runtime;
pub mod store;

pub use handler::{Daemon, DaemonConfig};

static QUIET: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Silences [`log`] for this process: the host's in-process `local` board
/// reports through the host, and daemon lines would clutter its terminal.
pub fn set_quiet(quiet: bool) {
    QUIET.store(quiet, std::sync::atomic::Ordering::Relaxed);
}

/// Logs one line to stderr (journald adds timestamps under systemd).
pub fn log(msg: &str) {
    if !QUIET.load(std::sync::atomic::Ordering::Relaxed) {
        eprintln!("rba-device: {msg}");
    }
}
