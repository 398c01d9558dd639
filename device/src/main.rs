//! `rba-device`: the board daemon.

use std::io::Write;
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use rba_device::accelerator::Accelerator;
use rba_device::admission::{BackoffPolicy, Limits};
use rba_device::daemon::{OrtConfig, UNPROFILED};
use rba_device::limits::MemoryBudget;
use rba_device::sensors::{self, Sensors};
use rba_device::serve::{ServeError, Server};
use rba_device::store::Store;
use rba_device::worker::{Isolation, IsolationMode};
use rba_device::{Daemon, DaemonConfig};
use rba_protocol::boards::{self, BoardProfile, LinkKind};
use rba_protocol::keys::{self, load_key};
use rba_protocol::ServerConfig;

/// Prints log records to stderr as `rba-device: <message>` (journald adds
/// timestamps under systemd); warnings and errors say so.
struct StderrLogger;

impl log::Log for StderrLogger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record) {
        if self.enabled(record.metadata()) {
            let kind = match record.level() {
                log::Level::Error => "error: ",
                log::Level::Warn => "warning: ",
                _ => "",
            };
            // Nowhere to report a failed write to stderr.
            let _ = writeln!(std::io::stderr().lock(), "rba-device: {kind}{}", record.args());
        }
    }

    fn flush(&self) {}
}

/// Installs [`StderrLogger`] at the level `$RBA_LOG` names (`error`, `warn`,
/// `info`, `debug`, `trace`, `off`), `info` by default.
fn init_logging() {
    static LOGGER: StderrLogger = StderrLogger;
    let level = std::env::var("RBA_LOG").ok().and_then(|v| v.parse().ok()).unwrap_or(log::LevelFilter::Info);
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(level);
    }
}

/// Environment variable holding the pre-shared key (when no key file is given).
const KEY_ENV: &str = "RBA_DEVICE_KEY";

#[derive(Parser)]
#[command(
    name = "rba-device",
    version,
    about = "rba board daemon: receives models, runs them with tract or ONNX Runtime, reports latency, memory and accuracy"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve one host at a time over a serial link or TCP, until SIGTERM.
    Serve(Box<ServeArgs>),
    /// Print what the board reports about itself (JSON).
    Info(InfoArgs),
    /// Run one job for a serving daemon (internal: the daemon starts it, with
    /// the job on stdin).
    #[command(hide = true, name = "worker")]
    Worker,
    /// Write a new random pre-shared key (64 hex digits, mode 0600) for
    /// `serve --key-file` and the host's `--key-file`.
    Keygen(KeygenArgs),
    /// Print the fingerprint of this device's identity (the key hosts pin),
    /// creating the identity if the store has none yet.
    Identity(IdentityArgs),
}

#[derive(clap::Args)]
struct KeygenArgs {
    /// Where to write the key; an existing file is never overwritten.
    #[arg(long)]
    out: PathBuf,
}

#[derive(clap::Args)]
struct IdentityArgs {
    /// Store directory holding identity.key (default: the profile's model_dir, else ./rba-device-store).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Board profile whose model_dir is the store.
    #[arg(long)]
    board: Option<String>,
    /// Extra directory to look for board profiles in (first).
    #[arg(long)]
    boards_dir: Option<PathBuf>,
}

#[derive(clap::Args)]
struct InfoArgs {
    /// Board profile: a name looked up in the boards directories (else among the built-in
    /// profiles), or a path to a .toml file.
    #[arg(long)]
    board: Option<String>,
    /// Extra directory to look for board profiles in (first).
    #[arg(long)]
    boards_dir: Option<PathBuf>,
    #[command(flatten)]
    ort: OrtArgs,
}

/// Where the ONNX Runtime library is.
#[derive(clap::Args)]
struct OrtArgs {
    /// The ONNX Runtime library (libonnxruntime.so.1.x.y, or a folder holding one). Else: the
    /// board profile's [onnxruntime] library, $ORT_DYLIB_PATH, python3's onnxruntime package
    /// (its capi/ folder), the usual site-packages, /usr/lib, /usr/local/lib, the ldconfig
    /// cache. Loaded only when a job asks for onnxruntime (or the host asks what the board has).
    #[arg(long, value_name = "PATH")]
    ort_library: Option<PathBuf>,
}

impl OrtArgs {
    fn config(&self, board: Option<&BoardProfile>) -> OrtConfig {
        OrtConfig {
            library: self.ort_library.clone(),
            profile: board.map(|b| b.onnxruntime.clone()).unwrap_or_default(),
        }
    }
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Board profile: a name looked up in the boards directories
    /// ($RBA_BOARDS_DIR, ./boards, next to the binary, /etc/rba/boards; else the built-in
    /// profiles) or a path to a .toml file.
    #[arg(long)]
    board: Option<String>,
    /// Extra directory to look for board profiles in (first).
    #[arg(long)]
    boards_dir: Option<PathBuf>,
    /// Serial device to serve on (e.g. /dev/ttyGS0).
    #[arg(long, conflicts_with = "tcp")]
    serial: Option<String>,
    /// Serial baud rate.
    #[arg(long)]
    baud: Option<u32>,
    /// TCP address to listen on (e.g. 0.0.0.0:7878); requires a pre-shared key.
    #[arg(long)]
    tcp: Option<String>,
    /// File holding the pre-shared key (else $RBA_DEVICE_KEY). Required on TCP, optional on serial.
    #[arg(long)]
    key_file: Option<PathBuf>,
    /// Directory of the artifact store (default: the profile's model_dir, else ./rba-device-store).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Bytes the store may hold (default: the profile's quota_bytes, else 4 GiB).
    #[arg(long)]
    quota: Option<u64>,
    /// Default inference threads (default: the profile's, else all cores).
    #[arg(long)]
    threads: Option<u32>,
    #[command(flatten)]
    tcp_limits: TcpLimitArgs,
    #[command(flatten)]
    jobs: JobArgs,
    #[command(flatten)]
    ort: OrtArgs,
}

// ---- What TCP peers are allowed (PROTOCOL.md 4.8).

#[derive(clap::Args)]
struct TcpLimitArgs {
    /// TCP: seconds from accepting a connection until its host has completed the handshake
    /// and proved the key with its first record (bytes do not extend it).
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = parse_secs)]
    handshake_timeout: Duration,
    /// TCP: connections that may wait for their handshake at once; a newer one evicts the
    /// oldest.
    #[arg(long, value_name = "N", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=4096))]
    max_pending: u32,
    /// TCP: close a session after this many seconds without a complete request, while none
    /// is being served (0: never).
    #[arg(long, value_name = "SECS", default_value = "600", value_parser = parse_secs)]
    idle_timeout: Duration,
    /// TCP: close a session when one record takes longer than this to arrive (0: never).
    #[arg(long, value_name = "SECS", default_value = "30", value_parser = parse_secs)]
    record_timeout: Duration,
    /// TCP: close a session when a write blocks this long: the host reads nothing (0: never).
    #[arg(long, value_name = "SECS", default_value = "30", value_parser = parse_secs)]
    write_timeout: Duration,
    /// TCP: failed authentications an address may have before it must wait.
    #[arg(long, value_name = "N", default_value_t = 3)]
    auth_free_failures: u32,
    /// TCP: the first wait after the free failures; it doubles with each further failure
    /// (0: no backoff).
    #[arg(long, value_name = "SECS", default_value = "1", value_parser = parse_secs)]
    auth_backoff: Duration,
    /// TCP: the longest wait; an address is forgotten this long after its wait ended.
    #[arg(long, value_name = "SECS", default_value = "300", value_parser = parse_secs)]
    auth_backoff_max: Duration,
    /// Lines per minute of each kind that peers can cause (failed authentications, refusals,
    /// timeouts, evictions); the rest are counted in one summary line (0: no limit).
    #[arg(long, value_name = "N", default_value_t = 10)]
    log_limit: u32,
    /// The window of --log-limit (tests).
    #[arg(long, value_name = "SECS", default_value = "60", value_parser = parse_secs, hide = true)]
    log_window: Duration,
}

impl TcpLimitArgs {
    fn limits(&self) -> Limits {
        let some = |d: Duration| (!d.is_zero()).then_some(d);
        let backoff = BackoffPolicy {
            free_failures: self.auth_free_failures,
            initial: self.auth_backoff,
            max: self.auth_backoff_max.max(self.auth_backoff),
            max_peers: if self.auth_backoff.is_zero() { 0 } else { BackoffPolicy::default().max_peers },
        };
        Limits {
            handshake_timeout: self.handshake_timeout.max(Duration::from_millis(100)),
            max_pending: self.max_pending as usize,
            idle_timeout: some(self.idle_timeout),
            record_timeout: some(self.record_timeout),
            write_timeout: some(self.write_timeout),
            backoff,
            log_limit: self.log_limit,
            log_window: self.log_window.max(Duration::from_secs(1)),
        }
    }
}

/// Seconds, whole or decimal (`10`, `0.5`).
fn parse_secs(s: &str) -> Result<Duration, String> {
    let v: f64 = s.trim().parse().map_err(|_| format!("'{s}' is not a number of seconds"))?;
    if !(0.0..=1e9).contains(&v) {
        return Err(format!("'{s}': seconds from 0 to 1e9"));
    }
    Ok(Duration::from_secs_f64(v))
}

// ---- Jobs: memory budget and isolation (models that cannot kill the daemon).

#[derive(clap::Args)]
struct JobArgs {
    /// Memory the tensors of a job's model may take: bytes, 512MiB, 1.5GiB, or a
    /// percentage of the memory available when the job starts (default: the profile's
    /// memory_budget_bytes, else 50%).
    #[arg(long, value_name = "SIZE|PERCENT")]
    memory_budget: Option<MemoryBudget>,
    /// Where jobs run: a worker process per job (a model that exhausts memory or crashes
    /// the runtime ends only its job), or a thread of the daemon.
    #[arg(long, value_enum, default_value_t = IsolationMode::Process)]
    isolation: IsolationMode,
}

impl JobArgs {
    /// The budget, the isolation (checked by starting a worker) and the
    /// most threads a job gets, logged.
    fn configure(&self, board: Option<&BoardProfile>, config: &mut DaemonConfig) {
        config.memory_budget = self
            .memory_budget
            .or(board.and_then(|b| b.memory_budget_bytes).map(MemoryBudget::Bytes))
            .unwrap_or_default();
        config.isolation = Isolation::resolve(self.isolation);
        config.max_threads = sensors::cores();
        log::info!(
            "memory budget per job: {} (now {}); at most {} threads per job",
            config.memory_budget,
            rba_onnx::budget::human_bytes(config.memory_budget.bytes(&config.sensors)),
            config.max_threads
        );
    }
}

// ---- end of job arguments.

fn find_board(name: &str, extra: Option<PathBuf>) -> Result<BoardProfile> {
    Ok(boards::find(name, &boards::lookup_dirs(extra.as_deref()))?)
}

fn sensors_for(board: Option<&BoardProfile>) -> Sensors {
    Sensors::for_profile(board.map(|b| &b.sensors))
}

fn accelerator_for(board: Option<&BoardProfile>) -> Accelerator {
    Accelerator { use_nvpmodel: board.is_some_and(|b| b.sensors.nvpmodel), ..Accelerator::default() }
}

fn serve(args: ServeArgs) -> Result<()> {
    let board = args.board.as_deref().map(|b| find_board(b, args.boards_dir.clone())).transpose()?;
    if let Some(b) = &board {
        log::info!("board profile {} ({}, {} cores)", b.name, b.cpu, b.cores);
        if b.target != current_target() {
            log::info!("note: profile {} is for {}, this binary is {}", b.name, b.target, current_target());
        }
    }
    let shutdown = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        // A second signal exits at once; the first asks for a clean stop.
        signal_hook::flag::register_conditional_shutdown(sig, 1, shutdown.clone())?;
        signal_hook::flag::register(sig, shutdown.clone())?;
    }
    let dir = args
        .dir
        .or_else(|| board.as_ref().map(|b| b.model_dir.clone()))
        .unwrap_or_else(|| PathBuf::from("rba-device-store"));
    let quota = args.quota.or(board.as_ref().and_then(|b| b.quota_bytes)).unwrap_or(4 << 30);
    let store = Store::open(&dir, quota).with_context(|| format!("cannot open the store in {}", dir.display()))?;
    log::info!("store {} (quota {quota} bytes, {} used)", dir.display(), store.used());
    if let Some((staged, len)) = store.staged() {
        log::info!("resumable upload of '{}': {len} of {} bytes staged", staged.name, staged.size);
    }
    let identity = load_identity(&dir)?;
    let threads = args.threads.or(board.as_ref().map(|b| b.threads)).unwrap_or_else(sensors::cores);
    let key = load_key(args.key_file.as_deref(), KEY_ENV, std::env::var(KEY_ENV).ok())?;
    let mut config = DaemonConfig {
        board: board.as_ref().map_or_else(|| UNPROFILED.to_string(), |b| b.name.clone()),
        default_threads: threads,
        sensors: sensors_for(board.as_ref()),
        shutdown: shutdown.clone(),
        onnxruntime: args.ort.config(board.as_ref()),
        accelerator: accelerator_for(board.as_ref()),
        ..DaemonConfig::default()
    };
    args.jobs.configure(board.as_ref(), &mut config);
    config.activate_hook = board.as_ref().and_then(|b| {
        let command = b.activate_hook.clone()?;
        let timeout = b.activate_hook_timeout_s.map_or(rba_device::hook::DEFAULT_TIMEOUT, Duration::from_secs);
        log::info!("activation hook: {command:?} (timeout {} s)", timeout.as_secs());
        Some(rba_device::hook::HookConfig { command, timeout })
    });
    let mut daemon = Daemon::new(store, config);
    // Link: the command line, else the profile's default.
    let (serial, tcp) = match (&args.serial, &args.tcp, &board) {
        (Some(s), _, _) => (Some(s.clone()), None),
        (None, Some(t), _) => (None, Some(t.clone())),
        (None, None, Some(b)) => match b.link.default {
            LinkKind::Serial => (b.link.serial.as_ref().map(|p| p.display().to_string()), None),
            LinkKind::Tcp => (None, b.link.tcp.clone()),
        },
        (None, None, None) => bail!("no link: pass --serial PATH, --tcp ADDR or --board NAME"),
    };
    let server_config =
        |key| ServerConfig { key, identity: Some(identity.clone()), max_upload: quota, ..ServerConfig::default() };
    let limits = args.tcp_limits.limits();
    if let Some(addr) = tcp {
        let Some(key) = key else {
            bail!("TCP needs a pre-shared key: pass --key-file PATH or set {KEY_ENV}");
        };
        let listener = TcpListener::bind(&addr).map_err(|source| ServeError::Listen { addr: addr.clone(), source })?;
        log::info!("listening on {}", listener.local_addr()?);
        log::info!(
            "TCP limits: handshake within {} s, at most {} waiting, idle timeout {}, record timeout {}, write \
             timeout {}, backoff after {} failures from {} s up to {} s",
            limits.handshake_timeout.as_secs_f64(),
            limits.max_pending,
            or_never(limits.idle_timeout),
            or_never(limits.record_timeout),
            or_never(limits.write_timeout),
            limits.backoff.free_failures,
            limits.backoff.initial.as_secs_f64(),
            limits.backoff.max.as_secs_f64(),
        );
        let mut server = Server { handler: &mut daemon, config: server_config(Some(key)), shutdown, limits };
        server.serve_listener(listener)?;
    } else if let Some(path) = serial {
        let baud = args.baud.or(board.as_ref().and_then(|b| b.link.baud)).unwrap_or(115_200);
        let mut server = Server { handler: &mut daemon, config: server_config(key), shutdown, limits };
        server.serve_serial(&path, baud)?;
    } else {
        bail!("the board profile names no link address");
    }
    log::info!("shut down");
    Ok(())
}

fn or_never(d: Option<Duration>) -> String {
    d.map_or_else(|| "never".into(), |d| format!("{} s", d.as_secs_f64()))
}

/// The device's long-term key from `dir/identity.key`, created at first
/// start; refused when its group or others can read it.
fn load_identity(dir: &std::path::Path) -> Result<rba_protocol::Identity> {
    let (identity, created) = keys::load_or_create_identity(dir)?;
    let path = keys::identity_path(dir);
    if created {
        log::info!("created the device identity {} ({})", path.display(), identity.fingerprint());
    } else {
        log::info!("device identity {} ({})", identity.fingerprint(), path.display());
    }
    Ok(identity)
}

fn keygen(args: KeygenArgs) -> Result<()> {
    keys::write_new_key(&args.out)?;
    log::info!("wrote a new pre-shared key to {} (mode 0600)", args.out.display());
    Ok(())
}

fn identity(args: IdentityArgs) -> Result<()> {
    let board = args.board.as_deref().map(|b| find_board(b, args.boards_dir)).transpose()?;
    let dir = args
        .dir
        .or_else(|| board.as_ref().map(|b| b.model_dir.clone()))
        .unwrap_or_else(|| PathBuf::from("rba-device-store"));
    let (identity, _) = keys::load_or_create_identity(&dir)?;
    writeln!(std::io::stdout().lock(), "{}", identity.fingerprint())?;
    Ok(())
}

fn current_target() -> String {
    format!("{}-unknown-{}-gnu", std::env::consts::ARCH, std::env::consts::OS)
}

fn info(args: InfoArgs) -> Result<()> {
    let board = args.board.as_deref().map(|b| find_board(b, args.boards_dir)).transpose()?;
    let p = sensors_for(board.as_ref());
    // Probed in this process: `info` is a one-shot command.
    let dir = tempfile::tempdir()?;
    let store = Store::open(dir.path(), 1 << 20)?;
    let config = DaemonConfig {
        onnxruntime: args.ort.config(board.as_ref()),
        accelerator: accelerator_for(board.as_ref()),
        ..DaemonConfig::default()
    };
    let daemon = Daemon::new(store, config);
    let runtimes: Vec<serde_json::Value> = daemon
        .runtimes()
        .into_iter()
        .map(|r| {
            serde_json::json!({
                "runtime": r.runtime.name(), "version": r.version, "library": r.library,
                "problem": r.problem, "providers": r.providers,
                "default_eps": r.default_eps.iter().map(|e| e.name()).collect::<Vec<_>>(),
                "default_policy": r.default_policy.name(),
            })
        })
        .collect();
    let accelerator = accelerator_for(board.as_ref()).info();
    let v = serde_json::json!({
        "board": board.as_ref().map(|b| b.name.clone()),
        "arch": std::env::consts::ARCH,
        "cores": sensors::cores(),
        "memory_bytes": p.memory_total(),
        "memory_available_bytes": p.memory_available(),
        "cpu_temp_c": p.cpu_temp(),
        "throttling": p.throttling().map(|t| serde_json::json!({
            "throttled": t.throttled, "under_voltage": t.under_voltage,
            "soft_temp_limit": t.soft_temp_limit, "raw": t.raw,
        })),
        "peak_rss_bytes": p.peak_rss(),
        "runtime": rba_device::runtime::RUNTIME,
        "runtimes": runtimes,
        "accelerator": accelerator.map(|a| serde_json::json!({
            "model": a.model, "power_mode": a.power_mode, "gpu_freq_hz": a.gpu_freq_hz,
            "gpu_max_freq_hz": a.gpu_max_freq_hz, "gpu_load_pct": a.gpu_load_pct,
        })),
    });
    writeln!(std::io::stdout().lock(), "{}", serde_json::to_string_pretty(&v)?)?;
    Ok(())
}

fn main() {
    init_logging();
    let cli = Cli::parse();
    let r = match cli.command {
        Command::Serve(a) => serve(*a),
        Command::Info(a) => info(a),
        Command::Worker => std::process::exit(rba_device::worker::worker_main()),
        Command::Keygen(a) => keygen(a),
        Command::Identity(a) => identity(a),
    };
    if let Err(e) = r {
        log::error!("{e:#}");
        std::process::exit(1);
    }
}
