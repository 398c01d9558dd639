//! Talking to boards: how the host reaches a device (serial port or pty,
//! TCP with a pre-shared key, a board profile, the in-process `local` board,
//! the emulated `qemu-aarch64` board), and what it asks of it: deploy a
//! model (skipped when the device already holds the same bytes, resumed
//! after a broken link), benchmark one model or A/B-compare two with a
//! bootstrap confidence interval on the speedup, and evaluate accuracy on
//! an eval bundle built from a dataset.
//!
//! Everything goes through `rba_protocol::Client`; this module only picks
//! the link, names the device in errors and shows progress.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use rba_device::board::{default_board_dirs, BoardError, BoardProfile, LinkKind};
use rba_device::link::{load_key, open_serial, SerialLink, Server};
use rba_protocol::client::upload_resumable;
use rba_protocol::stats::percentile_sorted;
use rba_protocol::{
    ArtifactKind, BenchmarkRequest, BenchmarkResult, BundleError, Client, ClientConfig, ClientError, CompareRequest,
    DeviceIdentity, DeviceInfo, EvalBundle, EvalRequest, EvalResult, PreSharedKey, Progress, RemoteError, RunPolicy,
    ServerConfig, Session, TensorF32,
};
use serde::Serialize;
use serialport::{SerialPort, TTYPort};
use sha2::{Digest, Sha256};

use crate::data::{splitmix64, DataError, Dataset, Preprocess, PreprocessArgs};
use crate::onnx::{OnnxError, OnnxModel};
use crate::runtime::{self, nd, RuntimeError};

/// Environment variable with the pre-shared key for TCP boards (when no
/// `--key-file` is given).
pub const KEY_ENV: &str = "RBA_KEY";
/// Baud rate when neither the command line nor the profile names one.
pub const DEFAULT_BAUD: u32 = 115_200;
/// Port when `--addr` names only a host and no profile says otherwise.
pub const DEFAULT_TCP_PORT: u16 = 7878;
/// The board that runs the daemon in this process.
pub const LOCAL_BOARD: &str = "local";
/// The board that runs the cross-built ARM daemon under qemu-user.
pub const QEMU_BOARD: &str = "qemu-aarch64";
const AARCH64: &str = "aarch64-unknown-linux-gnu";
/// Store quota of the local and emulated boards.
const LOCAL_QUOTA: u64 = 4 << 30;
/// Sessions `deploy` opens before giving up on a flaky link.
const UPLOAD_ATTEMPTS: u32 = 4;

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("no device given: pass --board NAME (e.g. --board local), --port PATH or --addr HOST:PORT")]
    NoTarget,
    #[error(transparent)]
    Board(#[from] BoardError),
    /// A target that cannot be set up (profile, key, missing tools).
    #[error("{device}: {problem}")]
    Setup { device: String, problem: String },
    /// The device or the link to it failed.
    #[error("{device}: {}", describe_client_error(source))]
    Device {
        device: String,
        #[source]
        source: ClientError,
    },
    #[error(transparent)]
    Onnx(#[from] OnnxError),
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("eval bundle: {0}")]
    Bundle(#[from] BundleError),
    #[error("{0}")]
    Usage(String),
}

/// The protocol's messages, with the hint a user needs for the common ones.
fn describe_client_error(e: &ClientError) -> String {
    match e {
        ClientError::Remote(RemoteError::AuthFailed) => {
            format!("authentication failed: the device rejected the key (check --key-file or ${KEY_ENV})")
        }
        ClientError::Remote(RemoteError::AuthRequired) => {
            format!("the device requires a pre-shared key: pass --key-file PATH or set ${KEY_ENV}")
        }
        ClientError::Remote(RemoteError::Busy) => {
            "the device is busy with another host; try again when it is done".into()
        }
        ClientError::ServerAuthFailed => "the device did not prove it holds the key (wrong device or key?)".into(),
        ClientError::Timeout { attempts } => {
            format!("no answer after {attempts} attempt(s) (is rba-device serving there, at the right baud rate?)")
        }
        other => other.to_string(),
    }
}

/// How to reach a device: `#[command(flatten)]` these into a command.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct LinkArgs {
    /// Board: a profile name (boards/NAME.toml) or path, `local` (a board
    /// running in this process over a pseudo-terminal) or `qemu-aarch64`
    /// (the cross-built ARM daemon under qemu-user).
    #[arg(long)]
    pub board: Option<String>,
    /// Serial port of the board (e.g. /dev/ttyACM0, or a pty path).
    #[arg(long, conflicts_with = "addr")]
    pub port: Option<String>,
    /// Serial baud rate (default: the profile's, else 115200).
    #[arg(long)]
    pub baud: Option<u32>,
    /// TCP address of the board, HOST:PORT (the port defaults to the profile's, else 7878).
    #[arg(long)]
    pub addr: Option<String>,
    /// File with the board's pre-shared key (else $RBA_KEY); required on TCP.
    #[arg(long)]
    pub key_file: Option<PathBuf>,
    /// Model store of the `local` and `qemu-aarch64` boards (default: a temporary directory).
    #[arg(long)]
    pub store: Option<PathBuf>,
}

/// A resolved device address.
#[derive(Clone, Debug)]
pub enum Target {
    Serial {
        path: String,
        baud: u32,
        key: Option<PreSharedKey>,
        board: Option<String>,
    },
    Tcp {
        addr: String,
        key: Option<PreSharedKey>,
        board: Option<String>,
    },
    /// The daemon on a thread of this process, over a real pty pair.
    Local {
        store: Option<PathBuf>,
    },
    /// The aarch64 daemon under qemu-user, over a pty pair.
    Qemu {
        store: Option<PathBuf>,
    },
}

impl Target {
    /// Resolves command-line options: an explicit `--port`/`--addr` wins,
    /// a board profile fills in the rest (link kind, baud, TCP port).
    pub fn from_args(args: &LinkArgs) -> Result<Target, LinkError> {
        let key = || load_key(args.key_file.as_deref(), std::env::var(KEY_ENV).ok()).map_err(key_error);
        let board = args.board.as_deref();
        match board {
            Some(LOCAL_BOARD) if args.port.is_none() && args.addr.is_none() => {
                return Ok(Target::Local { store: args.store.clone() })
            }
            Some(QEMU_BOARD) => {
                if args.port.is_some() || args.addr.is_some() {
                    return Err(LinkError::Usage(format!(
                        "--board {QEMU_BOARD} starts its own emulated board; drop --port/--addr"
                    )));
                }
                return Ok(Target::Qemu { store: args.store.clone() });
            }
            _ => {}
        }
        let profile = match board {
            Some(LOCAL_BOARD) | None => None,
            Some(name) => Some(find_board(name)?),
        };
        let board_name = profile.as_ref().map(|p| p.name.clone()).or(args.board.clone());
        if let Some(path) = &args.port {
            let baud = args.baud.or(profile.as_ref().and_then(|p| p.link.baud)).unwrap_or(DEFAULT_BAUD);
            // Serial needs no key (physical access); one given is still offered.
            return Ok(Target::Serial { path: path.clone(), baud, key: key()?, board: board_name });
        }
        let profile_port = profile.as_ref().and_then(|p| p.link.tcp.as_deref()).and_then(port_of);
        if let Some(addr) = &args.addr {
            let addr = if port_of(addr).is_some() {
                addr.clone()
            } else {
                format!("{addr}:{}", profile_port.unwrap_or(DEFAULT_TCP_PORT))
            };
            return Ok(Target::Tcp { addr, key: key()?, board: board_name });
        }
        let Some(p) = profile else { return Err(LinkError::NoTarget) };
        let setup = |problem: String| LinkError::Setup { device: format!("board '{}'", p.name), problem };
        match p.link.default {
            LinkKind::Tcp => {
                let addr = p.link.tcp.clone().unwrap_or_default();
                if is_unspecified_host(&addr) {
                    let port = profile_port.unwrap_or(DEFAULT_TCP_PORT);
                    return Err(setup(format!(
                        "the profile's address {addr} is where the board listens; pass --addr HOST:{port} with the board's address"
                    )));
                }
                Ok(Target::Tcp { addr, key: key()?, board: Some(p.name.clone()) })
            }
            LinkKind::Serial => {
                let on_board = p.link.serial.as_ref().map_or("?".into(), |s| s.display().to_string());
                Err(setup(format!(
                    "it is reached over serial ({on_board} on the board): pass --port with the host's end of the link (e.g. /dev/ttyACM0 for a USB gadget){}",
                    serial_port_hint()
                )))
            }
        }
    }

    /// How the device is named in messages and tables.
    pub fn label(&self) -> String {
        match self {
            Target::Serial { path, board: Some(b), .. } => format!("{b} ({path})"),
            Target::Serial { path, .. } => path.clone(),
            Target::Tcp { addr, board: Some(b), .. } => format!("{b} ({addr})"),
            Target::Tcp { addr, .. } => addr.clone(),
            Target::Local { .. } => format!("{LOCAL_BOARD} (in-process)"),
            Target::Qemu { .. } => format!("{QEMU_BOARD} (qemu-user)"),
        }
    }
}

fn key_error(e: rba_device::link::LinkError) -> LinkError {
    LinkError::Setup {
        device: "pre-shared key".into(),
        problem: e.to_string().trim_start_matches("pre-shared key: ").into(),
    }
}

fn port_of(addr: &str) -> Option<u16> {
    addr.rsplit_once(':')
        .and_then(|(host, port)| (!host.is_empty() || addr.starts_with(':')).then_some(port))
        .and_then(|p| p.parse().ok())
}

fn is_unspecified_host(addr: &str) -> bool {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h).trim_matches(['[', ']']);
    matches!(host, "0.0.0.0" | "::" | "")
}

fn serial_port_hint() -> String {
    match serialport::available_ports() {
        Ok(ports) if !ports.is_empty() => {
            let names: Vec<String> = ports.into_iter().map(|p| p.port_name).collect();
            format!("; serial ports here: {}", names.join(", "))
        }
        _ => "; no serial ports found here".into(),
    }
}

/// Where board profiles are looked up: the daemon's directories, then the
/// workspace's `boards/` (so a development build finds them from anywhere).
pub fn board_dirs() -> Vec<PathBuf> {
    let mut dirs = default_board_dirs();
    dirs.push(workspace_dir().join("boards"));
    dirs
}

/// The workspace this binary was built from.
fn workspace_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

pub fn find_board(name: &str) -> Result<BoardProfile, LinkError> {
    match BoardProfile::find(name, &board_dirs()) {
        Ok(p) => Ok(p),
        Err(BoardError::NotFound { looked, .. }) => {
            let mut known = vec![LOCAL_BOARD.to_string(), QEMU_BOARD.to_string()];
            known.extend(known_boards().into_iter().map(|b| b.name).filter(|n| n != LOCAL_BOARD && n != QEMU_BOARD));
            Err(LinkError::Setup {
                device: format!("board '{name}'"),
                problem: format!("profile not found (looked for {looked}); known boards: {}", known.join(", ")),
            })
        }
        Err(e) => Err(e.into()),
    }
}

/// Every profile found in the board directories (first one wins per name).
pub fn known_boards() -> Vec<BoardProfile> {
    let mut seen = std::collections::BTreeMap::new();
    for dir in board_dirs() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        paths.sort();
        for p in paths.into_iter().filter(|p| p.extension().is_some_and(|x| x == "toml")) {
            if let Ok(profile) = BoardProfile::load_file(&p) {
                seen.entry(profile.name.clone()).or_insert(profile);
            }
        }
    }
    seen.into_values().collect()
}

/// A byte stream to a device.
pub enum Stream {
    Tty(TTYPort),
    Tcp(TcpStream),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tty(p) => p.read(buf),
            Stream::Tcp(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tty(p) => p.write(buf),
            Stream::Tcp(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Tty(p) => p.flush(),
            Stream::Tcp(s) => s.flush(),
        }
    }
}

/// Opens new sessions to one device (the first, and after a broken link).
struct Connector {
    route: Route,
    config: ClientConfig,
    connect_timeout: Duration,
}

enum Route {
    Serial {
        path: String,
        baud: u32,
    },
    Tcp {
        addr: String,
    },
    /// The host end of a pty pair; every session reads and writes a clone.
    Pty(TTYPort),
}

/// How often a blocked read on the host side wakes up (the client counts
/// its deadlines across these).
const READ_POLL: Duration = Duration::from_millis(20);

impl Connector {
    fn open(&self) -> Result<Stream, String> {
        match &self.route {
            Route::Serial { path, baud } => match open_serial(path, *baud).map_err(|e| e.to_string())? {
                SerialLink::Native(mut p) => {
                    p.set_timeout(READ_POLL).map_err(|e| e.to_string())?;
                    Ok(Stream::Tty(p))
                }
                SerialLink::Plain(_) => Err(format!("{path}: this system cannot set the baud rate of the port")),
            },
            Route::Tcp { addr } => {
                let sock = addr
                    .to_socket_addrs()
                    .map_err(|e| format!("cannot resolve {addr}: {e}"))?
                    .next()
                    .ok_or_else(|| format!("{addr} resolves to no address"))?;
                let s = TcpStream::connect_timeout(&sock, self.connect_timeout)
                    .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
                s.set_nodelay(true).map_err(|e| e.to_string())?;
                s.set_read_timeout(Some(Duration::from_millis(200))).map_err(|e| e.to_string())?;
                Ok(Stream::Tcp(s))
            }
            Route::Pty(master) => {
                let mut m = master.try_clone_native().map_err(|e| format!("pseudo-terminal: {e}"))?;
                m.set_timeout(READ_POLL).map_err(|e| e.to_string())?;
                Ok(Stream::Tty(m))
            }
        }
    }

    fn connect(&self) -> Result<Client<Stream>, ClientError> {
        let stream = self.open().map_err(|m| ClientError::Io(io::Error::other(m)))?;
        Client::connect(stream, self.config.clone())
    }
}

/// The daemon thread behind the `local` board's pty; stopped when dropped.
struct LocalBoard {
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

struct QemuBoard {
    child: Child,
    _device_end: TTYPort,
    _store: Option<tempfile::TempDir>,
}

impl Drop for QemuBoard {
    fn drop(&mut self) {
        // The emulated board holds nothing worth a clean shutdown (its
        // store is ours and staged data resumes anyway).
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn store_dir(store: &Option<PathBuf>) -> Result<(PathBuf, Option<tempfile::TempDir>), String> {
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
fn pty_pair() -> Result<(TTYPort, TTYPort, String), String> {
    let (master, slave) = TTYPort::pair().map_err(|e| format!("cannot create a pseudo-terminal pair: {e}"))?;
    let path = slave.name().ok_or("the pseudo-terminal has no name")?;
    Ok((master, slave, path))
}

fn start_local(store: &Option<PathBuf>) -> Result<(TTYPort, LocalBoard), String> {
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

/// The cross-built aarch64 daemon, newest build first.
pub fn qemu_binary() -> Option<PathBuf> {
    let mut roots = Vec::new();
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        roots.push(PathBuf::from(dir));
    }
    roots.push(PathBuf::from("target"));
    roots.push(workspace_dir().join("target"));
    let mut found: Vec<(std::time::SystemTime, PathBuf)> = Vec::new();
    for root in roots {
        // The device's qemu test builds into target/aarch64-qemu.
        for base in [root.clone(), root.join("aarch64-qemu")] {
            for profile in ["release", "debug"] {
                let p = base.join(AARCH64).join(profile).join("rba-device");
                if let Ok(modified) = std::fs::metadata(&p).and_then(|m| m.modified()) {
                    found.push((modified, p));
                }
            }
        }
    }
    found.sort();
    found.pop().map(|(_, p)| p)
}

fn on_path(cmd: &str) -> bool {
    Command::new(cmd).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok()
}

/// Why the emulated board cannot start here, if it cannot.
pub fn qemu_missing() -> Option<String> {
    if !on_path("qemu-aarch64") {
        return Some("qemu-aarch64 not found: install qemu-user (apt-get install -y qemu-user)".into());
    }
    if qemu_binary().is_none() {
        return Some(format!(
            "the aarch64 rba-device is not built: rustup target add {AARCH64} && apt-get install -y gcc-aarch64-linux-gnu && cargo build --release --target {AARCH64} -p rba-device"
        ));
    }
    None
}

fn start_qemu(store: &Option<PathBuf>) -> Result<(TTYPort, QemuBoard), String> {
    if let Some(why) = qemu_missing() {
        return Err(why);
    }
    let bin = qemu_binary().ok_or("the aarch64 rba-device is not built")?;
    let profile = BoardProfile::find(QEMU_BOARD, &board_dirs()).map_err(|e| e.to_string())?;
    let profile_path = board_dirs()
        .into_iter()
        .map(|d| d.join(format!("{QEMU_BOARD}.toml")))
        .find(|p| p.is_file())
        .ok_or_else(|| format!("board profile {} not found", profile.name))?;
    let (master, slave, path) = pty_pair()?;
    let (dir, temp) = store_dir(store)?;
    let mut child = Command::new("qemu-aarch64")
        .args(["-L", "/usr/aarch64-linux-gnu"])
        .arg(&bin)
        .args(["serve", "--serial", &path, "--board"])
        .arg(&profile_path)
        .arg("--dir")
        .arg(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start qemu-aarch64: {e}"))?;
    // Wait for the daemon to hold the port; keep draining its log after.
    let (tx, rx) = mpsc::channel::<String>();
    if let Some(err) = child.stderr.take() {
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
    }
    let mut log = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains("serving on") => break,
            Ok(line) => log.push(line),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{} did not start under qemu: {}", bin.display(), log.join(" | ")));
            }
        }
    }
    Ok((master, QemuBoard { child, _device_end: slave, _store: temp }))
}

/// A connected device: one protocol session, reopened when the link breaks.
pub struct Device {
    label: String,
    connector: Connector,
    client: Option<Client<Stream>>,
    session: Session,
    show_progress: bool,
    // Declared last: dropped after the client, so the boards outlive it.
    _local: Option<LocalBoard>,
    _qemu: Option<QemuBoard>,
}

/// What `deploy` did.
#[derive(Clone, Debug, Serialize)]
pub struct Deployed {
    pub name: String,
    pub size: u64,
    /// Lower-case hex SHA-256 of the bytes.
    pub sha256: String,
    /// The device already held these bytes under this name.
    pub skipped: bool,
    /// Bytes the device already had staged from an interrupted upload
    /// (the upload resumed there; 0 for a fresh one).
    pub resumed_from: u64,
}

/// A model to deploy: its device name, the model, and the exact bytes sent.
#[derive(Clone, Debug)]
pub struct ModelArtifact {
    pub name: String,
    pub onnx: OnnxModel,
    pub bytes: Vec<u8>,
}

impl ModelArtifact {
    /// A model argument (`demo:vit`, `demo:resnet`, or an ONNX file with any
    /// external data pulled inline, since the board gets one file).
    pub fn from_spec(spec: &str) -> Result<ModelArtifact, LinkError> {
        let onnx = crate::demo::load_model_spec(spec)?;
        let name = match spec {
            "demo:vit" => "vit-digits".to_string(),
            "demo:resnet" => "resnet-digits".to_string(),
            path => device_name(Path::new(path).file_stem().map_or(path.into(), |s| s.to_string_lossy())),
        };
        Ok(ModelArtifact::new(name, onnx))
    }

    /// A model held in memory (e.g. a freshly compacted one).
    pub fn new(name: impl AsRef<str>, onnx: OnnxModel) -> ModelArtifact {
        let bytes = onnx.to_bytes();
        ModelArtifact { name: device_name(name.as_ref()), onnx, bytes }
    }
}

/// A valid device artifact name (`[A-Za-z0-9._-]{1,64}`, no leading dot).
pub fn device_name(name: impl AsRef<str>) -> String {
    let cleaned: String = name
        .as_ref()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '-' })
        .collect();
    let trimmed: String = cleaned.trim_start_matches('.').chars().take(64).collect();
    if trimmed.is_empty() {
        "model".into()
    } else {
        trimmed
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Device {
    /// Connects (starting the `local` or `qemu-aarch64` board first) and
    /// completes the handshake.
    pub fn connect(target: &Target) -> Result<Device, LinkError> {
        Self::open(target, false)
    }

    /// Like [`Device::connect`] with short timeouts, for discovery.
    pub fn probe(target: &Target) -> Result<Device, LinkError> {
        Self::open(target, true)
    }

    fn open(target: &Target, quick: bool) -> Result<Device, LinkError> {
        let label = target.label();
        let setup = |problem: String| LinkError::Setup { device: label.clone(), problem };
        let mut config = ClientConfig::serial();
        let (mut local, mut qemu) = (None, None);
        let route = match target {
            Target::Serial { path, baud, key, .. } => {
                config.key = key.clone();
                Route::Serial { path: path.clone(), baud: *baud }
            }
            Target::Tcp { addr, key, .. } => {
                let Some(key) = key.clone() else {
                    return Err(setup(format!(
                        "TCP needs the device's pre-shared key: pass --key-file PATH or set ${KEY_ENV}"
                    )));
                };
                config = ClientConfig::tcp(key);
                Route::Tcp { addr: addr.clone() }
            }
            Target::Local { store } => {
                let (master, b) = start_local(store).map_err(setup)?;
                local = Some(b);
                // A pty moves large frames as fast as small ones.
                config.preferred_chunk = rba_protocol::DEFAULT_TCP_CHUNK;
                Route::Pty(master)
            }
            Target::Qemu { store } => {
                let (master, b) = start_qemu(store).map_err(setup)?;
                qemu = Some(b);
                // Emulation is tens of times slower: be patient.
                config.preferred_chunk = 64 * 1024;
                config.request_timeout = Duration::from_secs(15);
                config.job_idle_timeout = Duration::from_secs(120);
                config.max_retries = 2;
                Route::Pty(master)
            }
        };
        if quick && !matches!(target, Target::Qemu { .. }) {
            config.request_timeout = Duration::from_millis(1500);
            config.max_retries = 0;
        }
        let connector = Connector {
            route,
            config,
            connect_timeout: if quick { Duration::from_secs(2) } else { Duration::from_secs(10) },
        };
        // A TCP daemon serves one host at a time and answers Busy until it
        // has noticed that the previous host (often this same user's last
        // command) left: give it a moment before reporting it.
        let mut busy_retries = if quick { 2 } else { 10 };
        let client = loop {
            match connector.connect() {
                Err(ClientError::Remote(RemoteError::Busy)) if busy_retries > 0 => {
                    busy_retries -= 1;
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(source) => return Err(LinkError::Device { device: label.clone(), source }),
                Ok(c) => break c,
            }
        };
        let session = client.session().cloned().ok_or_else(|| setup("no session after the handshake".into()))?;
        Ok(Device {
            label,
            connector,
            client: Some(client),
            session,
            show_progress: !quick,
            _local: local,
            _qemu: qemu,
        })
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    /// Who the device said it is in the handshake.
    pub fn identity(&self) -> &DeviceIdentity {
        &self.session.device
    }

    pub fn session(&self) -> &Session {
        &self.session
    }

    /// Progress bars on stderr (on by default; they hide themselves when
    /// stderr is not a terminal).
    pub fn set_progress(&mut self, show: bool) {
        self.show_progress = show;
    }

    fn error(&self, source: ClientError) -> LinkError {
        LinkError::Device { device: self.label.clone(), source }
    }

    /// The session, reopened if an earlier failure dropped it.
    pub fn client(&mut self) -> Result<&mut Client<Stream>, LinkError> {
        let client = match self.client.take() {
            Some(c) => c,
            None => self.connector.connect().map_err(|e| self.error(e))?,
        };
        Ok(self.client.insert(client))
    }

    /// Runs one request; a failed session is dropped so the next call reconnects.
    fn with_client<T>(
        &mut self,
        f: impl FnOnce(&mut Client<Stream>) -> Result<T, ClientError>,
    ) -> Result<T, LinkError> {
        let client = self.client()?;
        match f(client) {
            Ok(v) => Ok(v),
            Err(e) => {
                if e.is_link_failure() {
                    self.client = None;
                }
                Err(self.error(e))
            }
        }
    }

    pub fn info(&mut self) -> Result<DeviceInfo, LinkError> {
        self.with_client(|c| c.device_info())
    }

    /// Deploys a model under its name; skipped when the device already
    /// holds the same bytes under that name.
    pub fn deploy(&mut self, model: &ModelArtifact) -> Result<Deployed, LinkError> {
        self.upload(ArtifactKind::Model, &model.name, &model.bytes)
    }

    /// Uploads an artifact unless the device already has these bytes
    /// (same name and SHA-256); resumes across broken links.
    pub fn upload(&mut self, kind: ArtifactKind, name: &str, bytes: &[u8]) -> Result<Deployed, LinkError> {
        let sha: [u8; 32] = Sha256::digest(bytes).into();
        let size = bytes.len() as u64;
        let have = self.with_client(|c| c.list(Some(kind)))?;
        if have.iter().any(|a| a.name == name && a.sha256 == sha && a.size == size) {
            return Ok(Deployed { name: name.into(), size, sha256: hex(&sha), skipped: true, resumed_from: 0 });
        }
        let bar = self.bar(size, &format!("upload {name}"));
        let mut first = self.client.take();
        let connector = &self.connector;
        let mut resumed_from = 0;
        let result = upload_resumable(
            || match first.take() {
                Some(c) => Ok(c),
                None => connector.connect(),
            },
            kind,
            name,
            bytes,
            UPLOAD_ATTEMPTS,
            |p| {
                resumed_from = p.resumed_from;
                bar.set_position(p.acked);
            },
        );
        bar.finish_and_clear();
        match result {
            Ok((client, info)) => {
                self.client = Some(client);
                Ok(Deployed {
                    name: info.name,
                    size: info.size,
                    sha256: hex(&info.sha256),
                    skipped: false,
                    resumed_from,
                })
            }
            Err(e) => Err(self.error(e)),
        }
    }

    fn bar(&self, total: u64, what: &str) -> ProgressBar {
        if !self.show_progress {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::new(total);
        if let Ok(style) =
            ProgressStyle::with_template("{msg:20} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}")
        {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(what.to_string());
        bar
    }

    fn job_bar(&self, what: &str) -> ProgressBar {
        if !self.show_progress {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::new_spinner();
        bar.enable_steady_tick(Duration::from_millis(120));
        bar.set_message(what.to_string());
        bar
    }

    /// Benchmarks one model, or A/B-compares two with interleaved runs
    /// (models are device names, see [`Device::deploy`]).
    pub fn bench(&mut self, models: &[&str], options: &BenchOptions) -> Result<BenchReport, LinkError> {
        let bar = self.job_bar(&format!("benchmark {}", models.join(" vs ")));
        let show = |p: &Progress| {
            let total = p.total.map_or(String::new(), |t| format!("/{t}"));
            bar.set_message(format!("{:?} {}{total}", p.phase, p.done));
            ControlFlow::Continue(())
        };
        let result = match models {
            [one] => {
                let req = BenchmarkRequest {
                    model: (*one).into(),
                    threads: options.threads,
                    warmup: options.warmup,
                    runs: options.runs,
                    input_bundle: options.input_bundle.clone(),
                };
                self.with_client(|c| c.benchmark(&req, show)).map(|r| (vec![r], None))
            }
            [a, b] => {
                let req = CompareRequest {
                    model_a: (*a).into(),
                    model_b: (*b).into(),
                    threads: options.threads,
                    warmup: options.warmup,
                    runs: options.runs,
                    input_bundle: options.input_bundle.clone(),
                };
                self.with_client(|c| c.compare(&req, show)).map(|r| {
                    let speedup = speedup_ci(&r.a.samples_ns, &r.b.samples_ns, 0.95, options.resamples, options.seed);
                    let ab = AbComparison {
                        model_a: r.a.model.clone(),
                        model_b: r.b.model.clone(),
                        ratio_of_medians: r.ratio_of_medians,
                        speedup,
                    };
                    (vec![r.a, r.b], Some(ab))
                })
            }
            _ => Err(LinkError::Usage(format!("bench takes one or two models, got {}", models.len()))),
        };
        bar.finish_and_clear();
        let (results, ab) = result?;
        Ok(BenchReport { device: self.identity().clone(), results, ab })
    }

    /// Uploads the bundle (skipped when already there) and evaluates
    /// `model` on it on the device.
    pub fn evaluate(&mut self, model: &str, bundle: &EvalBundle) -> Result<EvalResult, LinkError> {
        let bytes = bundle.encode()?;
        let name = format!("eval-{}", &hex(&Sha256::digest(&bytes))[..16]);
        self.upload(ArtifactKind::EvalBundle, &name, &bytes)?;
        let bar = self.job_bar(&format!("evaluate {model}"));
        let req = EvalRequest { model: model.into(), bundle: name, threads: None };
        let r = self.with_client(|c| {
            c.evaluate(&req, |p| {
                bar.set_message(format!("evaluate {model}: {}/{}", p.done, p.total.unwrap_or(0)));
                ControlFlow::Continue(())
            })
        });
        bar.finish_and_clear();
        r
    }
}

/// Benchmark budget.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    pub warmup: RunPolicy,
    /// Per model; A/B runs alternate.
    pub runs: RunPolicy,
    /// `None`: the board's default.
    pub threads: Option<u32>,
    /// Feed the first sample of this uploaded bundle instead of synthetic input.
    pub input_bundle: Option<String>,
    /// Bootstrap resamples for the speedup interval.
    pub resamples: usize,
    pub seed: u64,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            warmup: RunPolicy { count: 5, min_time_ms: 0 },
            runs: RunPolicy { count: 50, min_time_ms: 0 },
            threads: None,
            input_bundle: None,
            resamples: 2000,
            seed: 0,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    pub device: DeviceIdentity,
    /// One per model, in the order given.
    pub results: Vec<BenchmarkResult>,
    /// With two models: the interleaved comparison.
    pub ab: Option<AbComparison>,
}

#[derive(Clone, Debug, Serialize)]
pub struct AbComparison {
    pub model_a: String,
    pub model_b: String,
    /// `p50(B) / p50(A)` as the device computed it (below 1: B is faster).
    pub ratio_of_medians: f64,
    /// `p50(A) / p50(B)` with its bootstrap interval.
    pub speedup: Option<Speedup>,
}

/// How many times faster B is than A: `median(A) / median(B)`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Speedup {
    pub point: f64,
    pub low: f64,
    pub high: f64,
    pub confidence: f64,
    pub resamples: usize,
}

fn median(sorted: &[u64]) -> Option<f64> {
    percentile_sorted(sorted, 50).map(|v| v as f64)
}

/// Speedup of B over A (ratio of nearest-rank medians, as in the protocol's
/// statistics) with a seeded percentile-bootstrap interval. Equal-length
/// samples are resampled in pairs: A/B runs alternate, so run i of each
/// shared the same moment of the board (heat, background load), and pairing
/// keeps that drift out of the interval's width. `None` without samples.
pub fn speedup_ci(a: &[u64], b: &[u64], confidence: f64, resamples: usize, seed: u64) -> Option<Speedup> {
    let sorted = |v: &[u64]| {
        let mut s = v.to_vec();
        s.sort_unstable();
        s
    };
    let ma = median(&sorted(a))?;
    let mb = median(&sorted(b))?;
    if mb <= 0.0 {
        return None;
    }
    let point = ma / mb;
    let mut state = seed;
    let mut pick = |n: usize| ((u128::from(splitmix64(&mut state)) * n as u128) >> 64) as usize;
    let (mut ra, mut rb) = (Vec::with_capacity(a.len()), Vec::with_capacity(b.len()));
    let mut ratios = Vec::with_capacity(resamples);
    for _ in 0..resamples {
        ra.clear();
        rb.clear();
        if a.len() == b.len() {
            for _ in 0..a.len() {
                let i = pick(a.len());
                ra.push(a[i]);
                rb.push(b[i]);
            }
        } else {
            ra.extend((0..a.len()).map(|_| a[pick(a.len())]));
            rb.extend((0..b.len()).map(|_| b[pick(b.len())]));
        }
        ra.sort_unstable();
        rb.sort_unstable();
        if let (Some(x), Some(y)) = (median(&ra), median(&rb)) {
            if y > 0.0 {
                ratios.push(x / y);
            }
        }
    }
    if ratios.is_empty() {
        return Some(Speedup { point, low: point, high: point, confidence, resamples: 0 });
    }
    ratios.sort_by(f64::total_cmp);
    let alpha = (1.0 - confidence).clamp(0.0, 1.0) / 2.0;
    let last = ratios.len() - 1;
    let at = |q: f64| ratios[((q * ratios.len() as f64).floor() as usize).min(last)];
    Some(Speedup { point, low: at(alpha), high: at(1.0 - alpha), confidence, resamples: ratios.len() })
}

/// An eval bundle and the host-side arrays it was built from.
pub struct EvalSet {
    pub bundle: EvalBundle,
    /// `[n, ...]`, preprocessed for the model.
    pub inputs: nd::ArrayD<f32>,
    pub labels: Option<Vec<usize>>,
    /// The dataset's name, for reports.
    pub source: String,
}

/// Builds an eval bundle for `model` from a data spec (`demo:test`, an
/// image folder, a `.npy`/`.npz`): the first `samples` items, preprocessed
/// as for the model. With `reference`, its outputs (computed on the host)
/// become the bundle's expected outputs, so the device reports agreement
/// with it as well as accuracy.
pub fn build_eval_bundle(
    model: &OnnxModel,
    data: &str,
    samples: Option<usize>,
    preprocess: &PreprocessArgs,
    reference: Option<&OnnxModel>,
) -> Result<EvalSet, LinkError> {
    let pre = Preprocess::for_model(preprocess, model)?;
    let dataset = Dataset::open(data)?.subset(samples, None);
    let (inputs, labels) = dataset.load_all(&pre)?;
    let input_name = first_input_name(model);
    let shape: Vec<u64> = inputs.shape().iter().map(|&d| d as u64).collect();
    let values: Vec<f32> = inputs.iter().copied().collect();
    let expected = match reference {
        Some(r) => {
            let out = runtime::predict(r, &inputs, 16)?;
            let name = r.graph().output.first().map(|o| o.name().to_string());
            let shape = out.shape().iter().map(|&d| d as u64).collect();
            let values: Vec<f32> = out.iter().copied().collect();
            Some(vec![TensorF32::from_f32(name, shape, &values)])
        }
        None => None,
    };
    let bundle = EvalBundle {
        inputs: vec![TensorF32::from_f32(input_name, shape, &values)],
        labels: labels.as_ref().map(|l| l.iter().map(|&c| u32::try_from(c).unwrap_or(u32::MAX)).collect()),
        expected,
    };
    bundle.validate()?;
    Ok(EvalSet { bundle, inputs, labels, source: dataset.name().to_string() })
}

/// The first graph input that is not an initializer (older exports list
/// weights as inputs too).
fn first_input_name(model: &OnnxModel) -> Option<String> {
    let g = model.graph();
    g.input.iter().map(|i| i.name()).find(|n| !g.initializer.iter().any(|t| t.name() == *n)).map(str::to_string)
}

/// `1.23 ms`, `456 us`, `2.10 s`.
pub fn format_ns(ns: f64) -> String {
    if ns >= 1e9 {
        format!("{:.2} s", ns / 1e9)
    } else if ns >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.0} us", ns / 1e3)
    } else {
        format!("{ns:.0} ns")
    }
}

pub fn format_bytes(b: u64) -> String {
    let b = b as f64;
    if b >= (1u64 << 30) as f64 {
        format!("{:.1} GiB", b / (1u64 << 30) as f64)
    } else {
        format!("{:.1} MiB", b / (1u64 << 20) as f64)
    }
}

/// One line about a device: board, arch, cores, memory, runtime.
pub fn describe_identity(id: &DeviceIdentity) -> String {
    format!(
        "{} ({} {}, {} cores, {} RAM, {}, rba {}{})",
        id.board,
        id.arch,
        id.os,
        id.cores,
        format_bytes(id.memory_bytes),
        id.runtime,
        id.rba_version,
        if id.hostname.is_empty() { String::new() } else { format!(", host {}", id.hostname) }
    )
}

/// The latency table, stability warnings and the A/B line.
pub fn render_bench(report: &BenchReport) -> String {
    let mut out = format!("device  {}\n", describe_identity(&report.device));
    let width = report.results.iter().map(|r| r.model.len()).max().unwrap_or(5).max(5);
    out.push_str(&format!(
        "{:width$}  {:>5}  {:>9}  {:>9}  {:>9}  {:>9}  {:>9}  {:>9}  {:>9}  {:>9}  {:>9}  {:>9}  {:>3}\n",
        "model", "runs", "load", "first", "min", "p50", "p90", "p99", "max", "mean", "std", "peak RSS", "thr"
    ));
    for r in &report.results {
        let s = &r.stats;
        let ns = |v: u64| format_ns(v as f64);
        out.push_str(&format!(
            "{:width$}  {:>5}  {:>9}  {:>9}  {:>9}  {:>9}  {:>9}  {:>9}  {:>9}  {:>9}  {:>9}  {:>9}  {:>3}\n",
            r.model,
            s.count,
            ns(r.load_time_ns),
            ns(r.first_run_ns),
            ns(s.min_ns),
            ns(s.p50_ns),
            ns(s.p90_ns),
            ns(s.p99_ns),
            ns(s.max_ns),
            format_ns(s.mean_ns),
            format_ns(s.std_ns),
            r.peak_rss_bytes.map_or("-".into(), format_bytes),
            r.threads,
        ));
    }
    for r in &report.results {
        if r.stats.unstable {
            out.push_str(&format!(
                "warning: {}: unstable measurement (coefficient of variation {:.1}% > {:.0}%): close other programs, cool the board, or add runs\n",
                r.model,
                100.0 * r.stats.cv,
                100.0 * rba_protocol::stats::UNSTABLE_CV
            ));
        }
        if let Some(t) = &r.throttling {
            if t.throttled || t.under_voltage || t.soft_temp_limit {
                out.push_str(&format!("warning: {}: the board throttled during the run ({t:?})\n", r.model));
            }
        }
    }
    if let Some(ab) = &report.ab {
        let runs = report.results.first().map_or(0, |r| r.stats.count);
        match ab.speedup {
            Some(s) => {
                out.push_str(&format!(
                    "A/B, {runs} interleaved runs each: speedup of {} over {} {:.3}x ({:.0}% CI {:.3}x .. {:.3}x, paired bootstrap; p50 B/A {:.3})\n",
                    ab.model_b,
                    ab.model_a,
                    s.point,
                    100.0 * s.confidence,
                    s.low,
                    s.high,
                    ab.ratio_of_medians
                ));
                if s.low <= 1.0 && 1.0 <= s.high {
                    out.push_str("note: the interval contains 1x: no significant difference at this noise level (add runs or quiet the board)\n");
                }
            }
            None => out.push_str(&format!("A/B: p50 ratio B/A {:.3}\n", ab.ratio_of_medians)),
        }
    }
    out
}

/// One line per evaluated model.
pub fn render_eval(results: &[EvalResult], source: &str) -> String {
    let mut out = String::new();
    for e in results {
        let pct = |v: f64| format!("{:.2}%", 100.0 * v);
        let mut line = format!("on-device  {}: {} samples of {source}", e.model, e.samples);
        if let Some(a) = e.top1_accuracy {
            line.push_str(&format!(", top-1 accuracy {}", pct(a)));
        }
        if let Some(a) = e.top1_agreement {
            line.push_str(&format!(", top-1 agreement with the reference {}", pct(a)));
        }
        if let Some(l) = e.latency {
            line.push_str(&format!(", mean latency {}", format_ns(l.mean_ns)));
        }
        out.push_str(&line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn names_and_addresses() {
        assert_eq!(device_name("slim vit/v2.onnx"), "slim-vit-v2.onnx");
        assert_eq!(device_name("..hidden"), "hidden");
        assert_eq!(device_name(""), "model");
        assert_eq!(device_name("x".repeat(80)).len(), 64);
        assert_eq!(port_of("10.0.0.2:7878"), Some(7878));
        assert_eq!(port_of("board.local"), None);
        assert!(is_unspecified_host("0.0.0.0:7878"));
        assert!(!is_unspecified_host("127.0.0.1:7878"));
    }

    #[test]
    fn speedup_interval() {
        // B takes half as long as A, with noise: speedup ~2 inside the interval.
        let a: Vec<u64> = (0..40).map(|i| 1000 + (i * 37 % 50)).collect();
        let b: Vec<u64> = (0..40).map(|i| 500 + (i * 11 % 30)).collect();
        let s = speedup_ci(&a, &b, 0.95, 1000, 7).unwrap();
        assert!(s.low <= s.point && s.point <= s.high, "{s:?}");
        assert!(s.low > 1.8 && s.high < 2.2, "{s:?}");
        assert_eq!(s, speedup_ci(&a, &b, 0.95, 1000, 7).unwrap(), "seeded: reproducible");
        // Identical samples: no spread at all.
        let s = speedup_ci(&[5, 5, 5], &[5, 5, 5], 0.95, 100, 0).unwrap();
        assert_eq!((s.low, s.point, s.high), (1.0, 1.0, 1.0));
        assert!(speedup_ci(&[], &[1], 0.95, 10, 0).is_none());
    }
}
