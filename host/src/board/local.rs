//! The `local` board: the daemon on a thread of this process, behind a real
//! pseudo-terminal pair, so `rba demo` needs no second binary.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use rba_device::link::{open_serial, Server};
use rba_protocol::ServerConfig;
use serialport::{SerialPort, TTYPort};

use super::{DEFAULT_BAUD, LOCAL_BOARD};

/// Store quota of the local and emulated boards.
pub(super) const LOCAL_QUOTA: u64 = 4 << 30;

/// The daemon thread behind the `local` board's pty; stopped when dropped.
pub(super) struct LocalBoard {
    shutdown: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// Held open so the pty never reports a hang-up between sessions.
    _device_end: TTYPort,
    _store: Option<tempfile::TempDir>,
}

impl Drop for LocalBoard {
    fn drop(&mut self) {
        self.shutdown.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub(super) fn store_dir(store: &Option<PathBuf>) -> Result<(PathBuf, Option<tempfile::TempDir>), String> {
    match store {
        Some(dir) => Ok((dir.clone(), None)),
        None => {
            let t = tempfile::Builder::new()
                .prefix("rba-board-")
                .tempdir()
                .map_err(|e| format!("cannot create a temporary model store: {e}"))?;
            Ok((t.path().to_path_buf(), Some(t)))
        }
    }
}

/// A pty pair: (host end, device end, device path).
pub(super) fn pty_pair() -> Result<(TTYPort, TTYPort, String), String> {
    let (master, slave) = TTYPort::pair().map_err(|e| format!("cannot create a pseudo-terminal pair: {e}"))?;
    let path = slave.name().ok_or("the pseudo-terminal has no name")?;
    Ok((master, slave, path))
}

pub(super) fn start_local(store: &Option<PathBuf>) -> Result<(TTYPort, LocalBoard), String> {
    let (master, slave, path) = pty_pair()?;
    let (dir, temp) = store_dir(store)?;
    let store = rba_device::store::Store::open(&dir, LOCAL_QUOTA)
        .map_err(|e| format!("cannot open the model store {}: {e}", dir.display()))?;
    let shutdown = Arc::new(AtomicBool::new(false));
    let threads = std::thread::available_parallelism().map_or(1, |n| u32::try_from(n.get()).unwrap_or(1));
    let config = rba_device::DaemonConfig {
        board: LOCAL_BOARD.into(),
        default_threads: threads,
        probe: rba_device::probe::Probe { use_vcgencmd: false, ..Default::default() },
        shutdown: shutdown.clone(),
        ..Default::default()
    };
    // The host reports what matters; daemon log lines would clutter it.
    rba_device::set_quiet(true);
    let mut daemon = rba_device::Daemon::new(store, config);
    // Opened here, before the thread starts: nothing the host writes is lost.
    let port = open_serial(&path, DEFAULT_BAUD).map_err(|e| e.to_string())?;
    let stop = shutdown.clone();
    let thread = std::thread::Builder::new()
        .name("rba-local-board".into())
        .spawn(move || {
            let config = ServerConfig { key: None, max_upload: LOCAL_QUOTA, ..ServerConfig::default() };
            let mut server = Server { handler: &mut daemon, config, shutdown: stop, idle: None };
            if let Err(e) = server.serve_opened_serial(port, &path, DEFAULT_BAUD) {
                eprintln!("rba: the local board stopped: {e}");
            }
        })
        .map_err(|e| format!("cannot start the board thread: {e}"))?;
    Ok((master, LocalBoard { shutdown, thread: Some(thread), _device_end: slave, _store: temp }))
}
