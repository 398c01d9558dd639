//! Jobs in worker processes: a model that makes the runtime abort (an
//! allocation that fails cannot be caught inside a process), overflow its
//! stack or panic ends its worker, never the daemon.
//!
//! For each job the daemon starts its own executable again as `rba-device
//! worker` (through `/proc/self/exe`, so an upgrade of the file on disk
//! does not change the code a running daemon starts), writes a
//! [`Request`] to its stdin and keeps stdin open: the worker exits when it
//! closes (the daemon died). The worker
//!
//! 1. limits itself: `RLIMIT_DATA` (heap, anonymous mappings and thread
//!    stacks, Linux >= 4.7) to the job's memory budget plus a margin
//!    ([`data_limit`]), `RLIMIT_CORE` to 0 (an abort leaves no core file on
//!    the board's storage), and raises its own `oom_score_adj` so that the
//!    kernel's out-of-memory killer picks it before the daemon;
//! 2. runs the job ([`crate::job::run_guarded`]: the static memory check,
//!    tract, a panic turned into the job's error) on its own tract thread
//!    pool of the job's (clamped) thread count;
//! 3. streams progress and then the result or a typed error to stdout,
//!    each a frame (`u32` little-endian length, postcard), and exits.
//!
//! The daemon relays progress to the host, kills the worker on cancel or
//! shutdown, and turns a worker that died (a signal, an abort, an exit
//! without a result, a garbled frame) into the job's error
//! ([`death_message`]). Latencies are measured inside the worker around
//! each run only; the peak RSS reported is the worker's own (VmHWM).
//!
//! Where a worker cannot start (qemu-user without binfmt support cannot
//! execute the ARM binary from inside the emulated process), the daemon's
//! start-up self-test ([`Isolation::resolve`]) falls back to jobs on a
//! daemon thread, with one log line.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rba_onnx::budget::human_bytes;
use rba_protocol::{Phase, Progress, RemoteError};
use serde::{Deserialize, Serialize};

use crate::job::{self, JobContext, JobOutput, JobSpec, Work};
use crate::sensors::Sensors;

/// The hidden subcommand that runs one job.
pub const SUBCOMMAND: &str = "worker";

/// What a worker needs besides the job's own budget: the runtime itself
/// (code, thread stacks, allocator slack, tract's plan).
pub const BASE_MARGIN: u64 = 256 << 20;

/// More for an onnxruntime job: the library's own heap, its thread pools
/// and arena slack.
pub const ORT_MARGIN: u64 = 256 << 20;

/// More for a job that may register CUDA or TensorRT: the CUDA runtime's
/// and TensorRT's host-side memory while engines build (unmeasured on a
/// Jetson: `--isolation thread` removes the limit if it is too small).
pub const GPU_MARGIN: u64 = 2 << 30;

/// Largest frame either side accepts (a result of 50 000 samples is about
/// 400 KB).
const MAX_FRAME: u32 = 16 << 20;

/// How long the start-up self-test waits for a worker's answer.
const SELF_TEST_TIMEOUT: Duration = Duration::from_secs(20);

/// How often the daemon looks at cancellation while a worker runs.
const POLL: Duration = Duration::from_millis(50);

/// Lines of a worker's stderr kept for the error of a worker that died.
const STDERR_LINES: usize = 40;

/// Longest line of a worker's stderr kept (longer ones are cut).
const MAX_LINE: usize = 400;

/// Exit status of a worker whose daemon went away.
const EXIT_ORPHANED: i32 = 3;

/// Both ends must be the same build: the frames are postcard of types that
/// change between versions.
fn build_id() -> String {
    format!("{} {}", env!("CARGO_PKG_VERSION"), rba_protocol::RBA_VERSION)
}

/// Where jobs run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Isolation {
    /// On the daemon's own thread: a model that aborts the runtime (a failed
    /// allocation, a stack overflow) stops the daemon. The static memory
    /// check and catching panics still apply.
    Thread,
    /// Each job in a fresh `program worker` process.
    Process { program: PathBuf },
}

/// What `rba-device serve --isolation` asks for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum IsolationMode {
    /// A worker process per job (falls back to `thread` where none can start).
    #[default]
    Process,
    /// Jobs on a daemon thread.
    Thread,
}

impl Isolation {
    /// The isolation `mode` asks for, if it works here: for `process`, a
    /// worker of this executable must answer the self-test; otherwise jobs
    /// run on a daemon thread, with one log line saying why.
    pub fn resolve(mode: IsolationMode) -> Isolation {
        match mode {
            IsolationMode::Thread => {
                log::info!("jobs run inside the daemon (--isolation thread)");
                Isolation::Thread
            }
            IsolationMode::Process => {
                let program = this_program();
                match self_test(&program) {
                    Ok(took) => {
                        log::info!("jobs run in worker processes (self-test answered in {} ms)", took.as_millis());
                        Isolation::Process { program }
                    }
                    Err(why) => {
                        log::warn!(
                            "jobs run inside the daemon, as a worker process cannot start here: {why}. A model that \
                             exhausts memory can stop the daemon"
                        );
                        Isolation::Thread
                    }
                }
            }
        }
    }
}

/// This executable: `/proc/self/exe` where there is one (the very file this
/// process runs, even if it was replaced on disk since), else its path.
pub fn this_program() -> PathBuf {
    let proc_exe = PathBuf::from("/proc/self/exe");
    if proc_exe.exists() {
        return proc_exe;
    }
    std::env::current_exe().unwrap_or(proc_exe)
}

/// Daemon to worker.
#[derive(Debug, Serialize, Deserialize)]
struct Request {
    build: String,
    task: Task,
}

// One request per worker process; boxing the job would only complicate matching.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Serialize, Deserialize)]
enum Task {
    /// Answer [`Event::Alive`] and exit.
    SelfTest {
        nonce: u64,
    },
    Job {
        spec: JobSpec,
        data_limit: u64,
    },
    /// Load the ONNX Runtime library, answer [`Event::Probed`] and exit.
    Probe {
        library: PathBuf,
    },
}

/// Worker to daemon.
// Results are large and rare; boxing them would only complicate matching.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Serialize, Deserialize)]
enum Event {
    Alive {
        nonce: u64,
        build: String,
    },
    Progress(Progress),
    Done(Result<JobOutput, RemoteError>),
    /// The library's version and providers, or why it did not load.
    Probed(Result<(String, Vec<String>), String>),
}

fn write_frame<T: Serialize>(w: &mut impl Write, value: &T) -> io::Result<()> {
    let bytes = postcard::to_stdvec(value).map_err(io::Error::other)?;
    let len = u32::try_from(bytes.len())
        .ok()
        .filter(|&l| l <= MAX_FRAME)
        .ok_or_else(|| io::Error::other("frame too large"))?;
    w.write_all(&len.to_le_bytes())?;
    w.write_all(&bytes)?;
    w.flush()
}

/// Why reading a frame stopped.
#[derive(Debug)]
enum ReadEnd {
    /// The stream ended before a frame started.
    Closed,
    Garbled(String),
}

fn read_frame<T: for<'de> Deserialize<'de>>(r: &mut impl Read) -> Result<T, ReadEnd> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < len.len() {
        match r.read(&mut len[got..]) {
            Ok(0) if got == 0 => return Err(ReadEnd::Closed),
            Ok(0) => return Err(ReadEnd::Garbled("the output ends inside a frame header".into())),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(ReadEnd::Garbled(format!("cannot read: {e}"))),
        }
    }
    let len = u32::from_le_bytes(len);
    if len > MAX_FRAME {
        return Err(ReadEnd::Garbled(format!("a frame of {len} bytes (at most {MAX_FRAME})")));
    }
    let mut buf = vec![0u8; len as usize];
    r.read_exact(&mut buf).map_err(|e| ReadEnd::Garbled(format!("the output ends inside a frame: {e}")))?;
    postcard::from_bytes(&buf).map_err(|e| ReadEnd::Garbled(format!("an undecodable frame: {e}")))
}

/// `RLIMIT_DATA` of a job's worker: the budget, [`BASE_MARGIN`], three
/// times the model files (while a model loads, its bytes, the decoded
/// protobuf and the runtime's copy of the weights coexist) and twice the
/// bundle (its bytes and the decoded samples); [`ORT_MARGIN`] for an
/// onnxruntime job, [`GPU_MARGIN`] when it may use the GPU.
pub fn data_limit(spec: &JobSpec) -> u64 {
    let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
    let models: u64 = spec.models().iter().map(|m| size(&m.path)).fold(0u64, u64::saturating_add);
    let bundle = match &spec.work {
        Work::Bench { input_bundle: Some(b), .. } => size(&b.path),
        Work::Bench { input_bundle: None, .. } => 0,
        Work::Evaluate { bundle, .. } => size(&bundle.path),
    };
    let ort = spec.runtimes().iter().any(|r| r.kind() == rba_protocol::RuntimeKind::OnnxRuntime);
    spec.memory_budget
        .saturating_add(BASE_MARGIN)
        .saturating_add(models.saturating_mul(3))
        .saturating_add(bundle.saturating_mul(2))
        .saturating_add(if ort { ORT_MARGIN } else { 0 })
        .saturating_add(if spec.may_use_gpu() { GPU_MARGIN } else { 0 })
}

// ---------------------------------------------------------------- worker side

/// `rba-device worker`: reads one request from stdin, answers on stdout,
/// returns the process's exit status.
pub fn worker_main() -> i32 {
    // A panic becomes the job's typed error (`job::run_guarded`); two lines
    // for the daemon's log are enough, without a backtrace.
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current();
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        let at = info.location().map(|l| l.to_string()).unwrap_or_default();
        let _ = writeln!(io::stderr(), "thread '{}' panicked at {at}:\n{message}", thread.name().unwrap_or("?"));
    }));
    let mut stdin = io::stdin();
    let request: Request = match read_frame(&mut stdin) {
        Ok(r) => r,
        Err(e) => {
            log::error!("worker: no request on stdin: {e:?}");
            return 2;
        }
    };
    let mut out = io::stdout().lock();
    if request.build != build_id() {
        let e = RemoteError::Internal(format!(
            "the worker executable is build {}, the daemon {}: restart the daemon after an upgrade",
            build_id(),
            request.build
        ));
        return if write_frame(&mut out, &Event::Done(Err(e))).is_ok() { 0 } else { 2 };
    }
    match request.task {
        Task::SelfTest { nonce } => {
            if write_frame(&mut out, &Event::Alive { nonce, build: build_id() }).is_ok() {
                0
            } else {
                2
            }
        }
        Task::Probe { library } => {
            let _ = limit_core();
            let version = library
                .file_name()
                .and_then(|n| crate::runtime::library::Version::from_file_name(&n.to_string_lossy()));
            let found = crate::runtime::library::Found { path: library, origin: "the daemon".into(), version };
            let answer = crate::runtime::library::load(&found)
                .map(|l| (l.version.clone(), l.providers.clone()))
                .map_err(|e| e.to_string());
            if write_frame(&mut out, &Event::Probed(answer)).is_ok() {
                0
            } else {
                2
            }
        }
        Task::Job { spec, data_limit } => {
            let result = match limit_self(data_limit) {
                Ok(()) => {
                    watch_for_orphaning(stdin);
                    let ctx = WorkerContext { out: Mutex::new(&mut out), sensors: Sensors::default() };
                    let r = run_in_pool(&spec, &ctx);
                    drop(ctx);
                    r
                }
                Err(e) => Err(RemoteError::Internal(format!("cannot limit the worker's memory: {e}"))),
            };
            if write_frame(&mut out, &Event::Done(result)).is_ok() {
                0
            } else {
                2
            }
        }
    }
}

/// The job on a tract thread pool of its own (the process ends with it;
/// none when no model runs on tract: onnxruntime has its own threads).
fn run_in_pool(spec: &JobSpec, ctx: &dyn JobContext) -> Result<JobOutput, RemoteError> {
    use tract_linalg::multithread::{multithread_tract_scope, Executor};
    let exec = if spec.threads > 1 && spec.uses_tract() {
        Executor::multithread(spec.threads as usize)
    } else {
        Executor::SingleThread
    };
    multithread_tract_scope(exec, || job::run_guarded(spec, ctx, true))
}

/// No core files (a library that aborts leaves nothing on the board's storage).
fn limit_core() -> io::Result<()> {
    use nix::sys::resource::{setrlimit, Resource};
    setrlimit(Resource::RLIMIT_CORE, 0, 0).map_err(io::Error::from)
}

/// `RLIMIT_DATA` to `bytes`, no core files, first in line for the OOM killer.
fn limit_self(bytes: u64) -> io::Result<()> {
    use nix::sys::resource::{setrlimit, Resource};
    limit_core()?;
    setrlimit(Resource::RLIMIT_DATA, bytes, bytes).map_err(io::Error::from)?;
    // Best effort: raising one's own score needs no privilege, but /proc
    // may be missing.
    if let Err(e) = std::fs::write("/proc/self/oom_score_adj", b"1000") {
        log::debug!("worker: cannot raise oom_score_adj: {e}");
    }
    Ok(())
}

/// Exits as soon as stdin closes: the daemon that started this worker is
/// gone (or dropped it), and nobody will read the result.
fn watch_for_orphaning(mut stdin: io::Stdin) {
    let spawned = std::thread::Builder::new().name("rba-worker-watch".into()).spawn(move || {
        let mut buf = [0u8; 64];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) => std::process::exit(EXIT_ORPHANED),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => std::process::exit(EXIT_ORPHANED),
            }
        }
    });
    if let Err(e) = spawned {
        log::warn!("worker: cannot watch stdin: {e}");
    }
}

struct WorkerContext<'a, W: Write> {
    out: Mutex<&'a mut W>,
    sensors: Sensors,
}

impl<W: Write> JobContext for WorkerContext<'_, W> {
    fn progress(&self, phase: Phase, done: u64, total: Option<u64>, message: Option<String>) {
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        // A daemon that stopped reading kills or abandons this worker anyway.
        let _ = write_frame(&mut **out, &Event::Progress(Progress { phase, done, total, message }));
    }

    fn check(&self) -> Result<(), RemoteError> {
        // The daemon kills the worker to cancel it.
        Ok(())
    }

    fn peak_rss(&self) -> Option<u64> {
        // A fresh process: its high-water mark is the job's.
        self.sensors.peak_rss()
    }
}

// ---------------------------------------------------------------- daemon side

/// A worker process: killed and reaped when dropped.
struct Worker {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Option<JoinHandle<()>>,
    stderr: Option<JoinHandle<()>>,
    tail: Arc<Mutex<VecDeque<String>>>,
    events: mpsc::Receiver<Result<Event, ReadEnd>>,
}

impl Worker {
    fn spawn(program: &Path, request: &Request) -> Result<Worker, RemoteError> {
        let mut child = Command::new(program)
            .arg(SUBCOMMAND)
            .env_remove("RBA_DEVICE_KEY")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| RemoteError::Internal(format!("cannot start a worker process: {e}")))?;
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let mut stdin = child.stdin.take();
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let (tx, events) = mpsc::channel();
        let mut worker = Worker { child, stdin: None, stdout: None, stderr: None, tail: tail.clone(), events };
        let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| std::thread::Builder::new().name(name.into()).spawn(f);
        if let Some(mut out) = stdout {
            let reader = move || loop {
                let event = read_frame::<Event>(&mut out);
                let end = event.is_err();
                if tx.send(event).is_err() || end {
                    return;
                }
            };
            worker.stdout = Some(spawn("rba-worker-out", Box::new(reader)).map_err(thread_error)?);
        }
        if let Some(err) = stderr {
            let pid = worker.child.id();
            let reader = move || {
                for_each_line(err, |line| {
                    // The worker logs through the same logger as the daemon.
                    let line = line.strip_prefix("rba-device: ").unwrap_or(line);
                    log::info!("worker {pid}: {line}");
                    let mut t = tail.lock().unwrap_or_else(|e| e.into_inner());
                    if t.len() == STDERR_LINES {
                        t.pop_front();
                    }
                    t.push_back(line.to_string());
                });
            };
            worker.stderr = Some(spawn("rba-worker-err", Box::new(reader)).map_err(thread_error)?);
        }
        let sent = stdin.as_mut().map(|s| write_frame(s, request));
        if let Some(Err(e)) = sent {
            // The worker may have died at once: its status says more.
            log::debug!("cannot hand the job to worker {}: {e}", worker.child.id());
        }
        worker.stdin = stdin;
        Ok(worker)
    }

    /// The exit status once the process has ended, killing it after `grace`.
    fn finish(&mut self, grace: Duration) -> Option<ExitStatus> {
        self.stdin = None;
        let deadline = Instant::now() + grace;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
                _ => {
                    let _ = self.child.kill();
                    return self.child.wait().ok();
                }
            }
        }
    }

    fn kill(&mut self) {
        self.stdin = None;
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The last lines of the worker's stderr, once it has ended.
    fn stderr_tail(&mut self) -> String {
        if let Some(t) = self.stderr.take() {
            let _ = t.join();
        }
        self.tail.lock().map(|t| t.iter().cloned().collect::<Vec<_>>().join("\n")).unwrap_or_default()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.kill();
        }
        for t in [self.stdout.take(), self.stderr.take()].into_iter().flatten() {
            let _ = t.join();
        }
    }
}

/// Calls `f` with each line of `r` (lossy UTF-8), cut to [`MAX_LINE`]
/// bytes: however long a line the worker prints (a panic message quoting
/// a model's node names), the daemon holds at most that much of it.
fn for_each_line(mut r: impl Read, mut f: impl FnMut(&str)) {
    let mut line = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        for &b in &buf[..n] {
            if b == b'\n' {
                f(&String::from_utf8_lossy(&line));
                line.clear();
            } else if line.len() < MAX_LINE {
                line.push(b);
            }
        }
    }
    if !line.is_empty() {
        f(&String::from_utf8_lossy(&line));
    }
}

fn thread_error(e: io::Error) -> RemoteError {
    RemoteError::Internal(format!("cannot start a thread: {e}"))
}

/// One question to a fresh worker of `program`: its answer within
/// [`SELF_TEST_TIMEOUT`], or why none came.
fn ask(program: &Path, task: Task) -> Result<Event, String> {
    let request = Request { build: build_id(), task };
    let mut worker = Worker::spawn(program, &request).map_err(|e| match e {
        RemoteError::Internal(m) => m,
        e => e.to_string(),
    })?;
    let answer = worker.events.recv_timeout(SELF_TEST_TIMEOUT);
    let status = worker.finish(Duration::from_secs(2));
    match answer {
        Ok(Ok(Event::Done(Err(e)))) => Err(e.to_string()),
        Ok(Ok(event)) => Ok(event),
        Ok(Err(ReadEnd::Garbled(why))) => Err(format!("a garbled answer: {why}")),
        Ok(Err(ReadEnd::Closed)) | Err(RecvTimeoutError::Disconnected) => {
            let tail = worker.stderr_tail();
            let why = status.map_or_else(|| "vanished".to_string(), |s| death_message(s, &tail, 0));
            Err(format!("the worker {why} without answering"))
        }
        Err(RecvTimeoutError::Timeout) => Err(format!("no answer within {} s", SELF_TEST_TIMEOUT.as_secs())),
    }
}

/// Starts a worker of `program`, checks that it answers; returns how long
/// that took.
pub fn self_test(program: &Path) -> Result<Duration, String> {
    let started = Instant::now();
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    let nonce = (u64::from(std::process::id()) << 32) | u64::from(nanos);
    match ask(program, Task::SelfTest { nonce })? {
        Event::Alive { nonce: n, build } if n == nonce && build == build_id() => Ok(started.elapsed()),
        other => Err(format!("an unexpected answer {other:?}")),
    }
}

/// Loads the ONNX Runtime `library` in a fresh worker of `program` (so that
/// a library that crashes while loading takes only the worker down);
/// returns its version and providers, or why it did not load.
pub fn probe(program: &Path, library: &Path) -> Result<(String, Vec<String>), String> {
    let loading = |why: String| format!("loading {} in a worker process: {why}", library.display());
    match ask(program, Task::Probe { library: library.to_path_buf() }).map_err(loading)? {
        Event::Probed(r) => r,
        _ => Err(loading("the worker answered another question".into())),
    }
}

/// Runs `spec` in a fresh worker of `program`, relaying its progress to
/// `ctx`; a worker that dies is the job's error, a cancellation kills it.
pub fn run_job(program: &Path, spec: &JobSpec, ctx: &dyn JobContext) -> Result<JobOutput, RemoteError> {
    let data_limit = data_limit(spec);
    let label = spec.models_label();
    log::debug!(
        "{label}: worker memory limit {} (budget {})",
        human_bytes(data_limit),
        human_bytes(spec.memory_budget)
    );
    let request = Request { build: build_id(), task: Task::Job { spec: spec.clone(), data_limit } };
    let mut worker = Worker::spawn(program, &request)?;
    loop {
        match worker.events.recv_timeout(POLL) {
            Ok(Ok(Event::Progress(p))) => ctx.progress(p.phase, p.done, p.total, p.message),
            Ok(Ok(Event::Done(result))) => {
                worker.finish(Duration::from_secs(2));
                return result;
            }
            Ok(Ok(Event::Alive { .. } | Event::Probed(_))) => {
                worker.kill();
                return Err(stopped(&label, "sent an unexpected message"));
            }
            Ok(Err(ReadEnd::Garbled(why))) => {
                worker.kill();
                log::warn!("{label}: the worker's output is garbled ({why})");
                return Err(stopped(&label, "sent an unreadable reply"));
            }
            Ok(Err(ReadEnd::Closed)) | Err(RecvTimeoutError::Disconnected) => {
                let status = worker.finish(Duration::from_secs(5));
                // A worker killed by the service manager's stop (SIGTERM to
                // the whole group) is a shutdown, not a crash.
                ctx.check()?;
                let tail = worker.stderr_tail();
                let why =
                    status.map_or_else(|| "vanished".to_string(), |s| death_message(s, &tail, spec.memory_budget));
                log::warn!("{label}: the worker {why}");
                return Err(stopped(&label, &why));
            }
            Err(RecvTimeoutError::Timeout) => {
                if let Err(e) = ctx.check() {
                    worker.kill();
                    return Err(e);
                }
            }
        }
    }
}

fn stopped(label: &str, why: &str) -> RemoteError {
    RemoteError::Runtime(format!("{label}: the job was stopped: it {why}"))
}

/// What happened to a worker that ended without a result, from its exit
/// status and the last lines of its stderr: "ran out of its 1.2 GiB memory
/// budget", "crashed (signal 11)", ...
pub fn death_message(status: ExitStatus, stderr_tail: &str, budget: u64) -> String {
    use std::os::unix::process::ExitStatusExt;
    let out_of_memory = stderr_tail.contains("memory allocation of") || stderr_tail.contains("out of memory");
    match (status.signal(), status.code()) {
        (Some(6), _) if out_of_memory => format!("ran out of its {} memory budget", human_bytes(budget)),
        (Some(_), _) if stderr_tail.contains("has overflowed its stack") => {
            format!("overflowed its stack (signal {})", status.signal().unwrap_or(0))
        }
        (Some(9), _) => "was killed (signal 9; the kernel's out-of-memory killer, if nobody else)".into(),
        (Some(sig), _) => format!("crashed (signal {sig})"),
        (None, Some(101)) => {
            // The default panic hook prints "thread '...' panicked at FILE:" and
            // then the message.
            let message = stderr_tail.lines().skip_while(|l| !l.contains("panicked at")).nth(1);
            format!("crashed (a panic: {})", message.unwrap_or("no message"))
        }
        (None, Some(code)) => format!("exited with status {code} without a result"),
        (None, None) => "ended without a result".into(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::os::unix::process::ExitStatusExt;

    use super::*;

    #[test]
    fn deaths_are_named() {
        let gib = 1 << 30;
        let abort = ExitStatus::from_raw(6);
        assert_eq!(
            death_message(abort, "memory allocation of 4398046511104 bytes failed", gib),
            "ran out of its 1 GiB memory budget"
        );
        assert_eq!(death_message(abort, "", gib), "crashed (signal 6)");
        assert_eq!(
            death_message(ExitStatus::from_raw(6), "thread 'main' has overflowed its stack\nfatal runtime error", gib),
            "overflowed its stack (signal 6)"
        );
        assert!(death_message(ExitStatus::from_raw(9), "", gib).starts_with("was killed (signal 9"));
        assert_eq!(death_message(ExitStatus::from_raw(11), "", gib), "crashed (signal 11)");
        let panicked = "thread 'main' panicked at src/x.rs:1:1:\nattempt to divide by zero\nnote: ...";
        assert_eq!(
            death_message(ExitStatus::from_raw(101 << 8), panicked, gib),
            "crashed (a panic: attempt to divide by zero)"
        );
        assert_eq!(death_message(ExitStatus::from_raw(3 << 8), "", gib), "exited with status 3 without a result");
    }

    #[test]
    fn stderr_lines_are_cut() {
        let long = format!("{}\nshort\n{}", "x".repeat(100_000), "tail without a newline");
        let mut lines = Vec::new();
        for_each_line(long.as_bytes(), |l| lines.push(l.to_string()));
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0].len(), MAX_LINE);
        assert_eq!(lines[1..], ["short", "tail without a newline"]);
    }

    #[test]
    fn frames_round_trip_and_garbage_is_refused() {
        let mut buf = Vec::new();
        let p = Progress { phase: Phase::Loading, done: 1, total: Some(2), message: Some("m".into()) };
        write_frame(&mut buf, &Event::Progress(p.clone())).unwrap();
        match read_frame::<Event>(&mut buf.as_slice()) {
            Ok(Event::Progress(q)) => assert_eq!(q, p),
            other => panic!("{other:?}"),
        }
        assert!(matches!(read_frame::<Event>(&mut [].as_slice()), Err(ReadEnd::Closed)));
        assert!(matches!(read_frame::<Event>(&mut [1u8, 0].as_slice()), Err(ReadEnd::Garbled(_))));
        let huge = (MAX_FRAME + 1).to_le_bytes();
        assert!(matches!(read_frame::<Event>(&mut huge.as_slice()), Err(ReadEnd::Garbled(_))));
        let junk = [3u8, 0, 0, 0, 0xff, 0xff, 0xff];
        assert!(matches!(read_frame::<Event>(&mut junk.as_slice()), Err(ReadEnd::Garbled(_))));
    }
}
