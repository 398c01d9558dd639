//! rba-device: the board runtime.
//!
//! - [`daemon`]: the protocol's `DeviceHandler`: [`Daemon`] and its
//!   [`DaemonConfig`] (with [`daemon::OrtConfig`]); benchmark, compare and
//!   evaluation jobs.
//! - [`job`]: one job, wherever it runs (a daemon thread or a worker).
//! - [`worker`]: jobs in worker processes (`rba-device worker`), their
//!   memory limit, and what a worker's death means.
//! - [`limits`]: the memory budget of a job.
//! - [`runtime`]: the runtimes behind one API: tract (loading through
//!   rba-onnx, a concrete batch, a chosen number of threads) and ONNX
//!   Runtime (its library found and loaded at run time, execution
//!   providers, nodes per provider).
//! - [`accelerator`]: the board model, Jetson power mode, GPU frequency
//!   and load.
//! - [`measure`]: warm-up and measured phases, interleaved A/B runs.
//! - [`metrics`]: accuracy and agreement of an evaluation.
//! - [`sensors`]: peak RSS, memory, temperatures, throttling.
//! - [`store`]: the artifact directory (staged uploads, atomic publish, quota).
//! - [`apps`]: applications and their active models (crash-safe switches,
//!   generations, history, start-up recovery); [`hook`]: the profile's
//!   activation hook.
//! - [`serve`]: serving sessions over TCP, serial and in-memory links, until
//!   shutdown.
//! - [`admission`]: where TCP connections wait until their host proved the key
//!   (one thread): deadlines, the cap on waiting connections, per-address
//!   backoff, rate-limited logging.
//! - [`in_process`]: the one entry for running a daemon inside another
//!   process ([`spawn_in_process`]), for the host's `local` board and tests.
//!
//! Keys, serial ports and board profiles, which the host needs too, live in
//! `rba_protocol` (`keys`, `serial`, `boards`).
//!
//! The daemon logs through the `log` crate: the `rba-device` binary prints
//! to stderr; a process that installs no logger sees nothing.
//!
//! A host that runs a board in its own process needs only this:
//!
//! ```no_run
//! use rba_device::{spawn_in_process, InProcessLink, InProcessOptions};
//!
//! # fn main() -> Result<(), rba_device::InProcessError> {
//! let (tx, links) = std::sync::mpsc::channel();
//! let board = spawn_in_process(InProcessOptions::default(), InProcessLink::Memory(links))?;
//! // send the board's end of each `rba_protocol::mem::duplex()` on `tx`,
//! // talk to the other end with `rba_protocol::Client`...
//! drop(tx);
//! let finished = board.join()?;
//! println!("{:?}", finished.sessions);
//! # Ok(())
//! # }
//! ```

pub mod accelerator;
pub mod admission;
pub mod apps;
pub mod daemon;
pub mod hook;
pub mod in_process;
pub mod job;
pub mod limits;
pub mod measure;
pub mod metrics;
pub mod runtime;
pub mod sensors;
pub mod serve;
pub mod store;
pub mod worker;

pub use daemon::{Daemon, DaemonConfig};
pub use in_process::{spawn_in_process, Finished, InProcessBoard, InProcessError, InProcessLink, InProcessOptions};
