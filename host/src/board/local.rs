//! The `local` board: the daemon on a thread of this process, behind a real
//! pseudo-terminal pair, so `rba demo` needs no second binary.

use std::path::PathBuf;

use rba_device::{spawn_in_process, InProcessBoard, InProcessLink, InProcessOptions};
use serialport::{SerialPort, TTYPort};

use super::DEFAULT_BAUD;

/// The daemon behind the `local` board's pty; stopped when dropped.
pub(super) struct LocalBoard {
    _board: InProcessBoard,
    /// Held open so the pty never reports a hang-up between sessions.
    _device_end: TTYPort,
}

/// A pty pair: (host end, device end, device path).
pub(super) fn pty_pair() -> Result<(TTYPort, TTYPort, String), String> {
    let (master, slave) = TTYPort::pair().map_err(|e| format!("cannot create a pseudo-terminal pair: {e}"))?;
    let path = slave.name().ok_or("the pseudo-terminal has no name")?;
    Ok((master, slave, path))
}

/// Starts the local board; returns the host's end of its pty.
pub(super) fn start_local(store: &Option<PathBuf>) -> Result<(TTYPort, LocalBoard), String> {
    let (master, slave, path) = pty_pair()?;
    let options = InProcessOptions { store_dir: store.clone(), ..InProcessOptions::default() };
    let board =
        spawn_in_process(options, InProcessLink::Serial { path, baud: DEFAULT_BAUD }).map_err(|e| e.to_string())?;
    Ok((master, LocalBoard { _board: board, _device_end: slave }))
}
