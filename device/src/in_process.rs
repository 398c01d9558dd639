//! The one entry for running a daemon inside another process: the host's
//! `local` board and the tests. The caller picks the link; the daemon runs
//! on its own thread until the board is stopped, joined or dropped.

use std::io;
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

use rba_protocol::mem::MemLink;
use rba_protocol::serial::{open_serial, SerialError, SerialLink};
use rba_protocol::{Identity, PreSharedKey, ServerConfig, SessionEnd};

use crate::accelerator::Accelerator;
use crate::admission::Limits;
use crate::daemon::{Daemon, DaemonConfig, OrtConfig};
use crate::hook::HookConfig;
use crate::limits::MemoryBudget;
use crate::measure::Caps;
use crate::sensors::{self, Sensors};
use crate::serve::{ServeError, Server};
use crate::store::{Store, StoreError};
use crate::worker::Isolation;

/// The board name of an in-process daemon unless the options say otherwise.
pub const LOCAL_BOARD: &str = "local";

/// How the in-process daemon is set up.
#[derive(Clone, Debug)]
pub struct InProcessOptions {
    /// The artifact store; `None`: a fresh temporary directory, removed
    /// when the board finishes.
    pub store_dir: Option<PathBuf>,
    /// Bytes the store may hold; also the largest upload accepted.
    pub quota: u64,
    /// Reported to the host as the board.
    pub board_name: String,
    /// Inference threads when a request does not say.
    pub threads: u32,
    /// When set, the host must prove it holds this key (`Noise_NXpsk2`);
    /// without, sessions are keyless (`Noise_NX`), which TCP refuses.
    pub key: Option<PreSharedKey>,
    /// The board's long-term key; `None`: a fresh one for this board (the
    /// host's `local` board: nothing to pin across runs).
    pub identity: Option<Identity>,
    pub sensors: Sensors,
    pub caps: Caps,
    /// Where jobs run. A worker process needs an executable with the
    /// `worker` subcommand (`rba-device`): the host's process has none, so
    /// its local board runs jobs on the board's thread.
    pub isolation: Isolation,
    /// What the tensors of a job's model may take.
    pub memory_budget: MemoryBudget,
    /// ONNX Runtime: the library (else searched) and the providers of a
    /// request that names none.
    pub onnxruntime: OrtConfig,
    /// What TCP peers are allowed (deadlines, waiting connections,
    /// backoff); the daemon's defaults.
    pub limits: Limits,
    /// Run after an application's active model changed.
    pub activate_hook: Option<HookConfig>,
}

impl Default for InProcessOptions {
    /// The host's `local` board: a temporary store of 4 GiB, all cores, no
    /// key, sensors without `vcgencmd`, jobs on the board's thread, half the
    /// available memory per job.
    fn default() -> Self {
        InProcessOptions {
            store_dir: None,
            quota: 4 << 30,
            board_name: LOCAL_BOARD.into(),
            threads: sensors::cores(),
            key: None,
            identity: None,
            sensors: Sensors::for_profile(None),
            caps: Caps::default(),
            isolation: Isolation::Thread,
            memory_budget: MemoryBudget::default(),
            onnxruntime: OrtConfig::default(),
            limits: Limits::default(),
            activate_hook: None,
        }
    }
}

/// Where the in-process daemon meets its hosts.
#[derive(Debug)]
pub enum InProcessLink {
    /// A serial line, e.g. the device end of a pseudo-terminal pair. Opened
    /// before the board thread starts, so nothing the host writes is lost;
    /// reopened when it breaks.
    Serial { path: String, baud: u32 },
    /// Connections accepted on this listener, one host at a time (others
    /// get `Busy`).
    Tcp(TcpListener),
    /// Each link received is one session, until the sender is dropped.
    Memory(mpsc::Receiver<MemLink>),
}

#[derive(Debug, thiserror::Error)]
pub enum InProcessError {
    #[error("cannot create a temporary model store: {0}")]
    TempDir(io::Error),
    #[error("cannot open the model store {}: {error}", dir.display())]
    Store { dir: PathBuf, error: StoreError },
    #[error(transparent)]
    Serial(#[from] SerialError),
    #[error("cannot start the board thread: {0}")]
    Thread(io::Error),
    #[error("the in-process board stopped: {0}")]
    Serve(#[from] ServeError),
    #[error("the in-process board panicked")]
    Panicked,
}

/// What a finished board leaves behind.
pub struct Finished {
    /// The daemon, with its store (`daemon.store()`).
    pub daemon: Daemon,
    /// How each session over a [`InProcessLink::Memory`] ended, in order;
    /// empty for serial and TCP links (a long-lived board would pile them
    /// up; their sessions are logged instead).
    pub sessions: Vec<SessionEnd>,
    /// Keeps a temporary store until the caller is done with the daemon.
    _temp: Option<tempfile::TempDir>,
}

/// A daemon running on its own thread. Dropping it stops the daemon (a
/// running job ends `Cancelled`) and waits for the thread.
pub struct InProcessBoard {
    shutdown: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<Finished, InProcessError>>>,
}

/// An [`InProcessLink`] ready for the board thread.
enum Opened {
    Serial { port: SerialLink, path: String, baud: u32 },
    Tcp(TcpListener),
    Memory(mpsc::Receiver<MemLink>),
}

/// Starts a daemon on `link` in this process. Fails before any thread
/// starts if the store or the serial line cannot be opened.
pub fn spawn_in_process(options: InProcessOptions, link: InProcessLink) -> Result<InProcessBoard, InProcessError> {
    let (dir, temp) = match options.store_dir {
        Some(dir) => (dir, None),
        None => {
            let t = tempfile::Builder::new().prefix("rba-board-").tempdir().map_err(InProcessError::TempDir)?;
            (t.path().to_path_buf(), Some(t))
        }
    };
    let store = Store::open(&dir, options.quota).map_err(|error| InProcessError::Store { dir, error })?;
    let shutdown = Arc::new(AtomicBool::new(false));
    let config = DaemonConfig {
        board: options.board_name,
        default_threads: options.threads,
        caps: options.caps,
        sensors: options.sensors,
        shutdown: shutdown.clone(),
        isolation: options.isolation,
        memory_budget: options.memory_budget,
        max_threads: sensors::cores(),
        onnxruntime: options.onnxruntime,
        accelerator: Accelerator::default(),
        activate_hook: options.activate_hook,
    };
    let mut daemon = Daemon::new(store, config);
    let server_config = ServerConfig {
        key: options.key,
        identity: options.identity,
        max_upload: options.quota,
        ..ServerConfig::default()
    };
    let link = match link {
        InProcessLink::Serial { path, baud } => Opened::Serial { port: open_serial(&path, baud)?, path, baud },
        InProcessLink::Tcp(listener) => Opened::Tcp(listener),
        InProcessLink::Memory(links) => Opened::Memory(links),
    };
    let stop = shutdown.clone();
    let limits = options.limits;
    let thread = std::thread::Builder::new()
        .name("rba-in-process-board".into())
        .spawn(move || {
            let mut server = Server { handler: &mut daemon, config: server_config, shutdown: stop, limits };
            let sessions = match link {
                Opened::Serial { port, path, baud } => {
                    server.serve_opened_serial(port, &path, baud).map(|()| Vec::new())
                }
                Opened::Tcp(listener) => server.serve_listener(listener).map(|()| Vec::new()),
                Opened::Memory(links) => server.serve_memory(links),
            }?;
            Ok(Finished { daemon, sessions, _temp: temp })
        })
        .map_err(InProcessError::Thread)?;
    Ok(InProcessBoard { shutdown, thread: Some(thread) })
}

impl InProcessBoard {
    /// Stops the daemon (a running job ends `Cancelled`) and waits for it.
    pub fn stop(mut self) -> Result<Finished, InProcessError> {
        self.shutdown.store(true, Ordering::SeqCst);
        self.wait()
    }

    /// Waits until the daemon finishes by itself: a memory board once the
    /// sender of its links is dropped and the last session ended; serial and
    /// TCP boards only after [`InProcessBoard::stop`].
    pub fn join(mut self) -> Result<Finished, InProcessError> {
        self.wait()
    }

    /// False once the daemon's thread has ended (stopped, or failed).
    pub fn is_running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    fn wait(&mut self) -> Result<Finished, InProcessError> {
        match self.thread.take() {
            Some(t) => t.join().map_err(|_| InProcessError::Panicked)?,
            // Unreachable: `stop` and `join` consume the board, `drop` checks.
            None => Err(InProcessError::Panicked),
        }
    }
}

impl Drop for InProcessBoard {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.shutdown.store(true, Ordering::SeqCst);
            if let Err(e) = self.wait() {
                log::error!("{e}");
            }
        }
    }
}
