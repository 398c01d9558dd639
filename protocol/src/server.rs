//! Blocking server core: the board side of a session.
//!
//! The core owns the protocol: the secure handshake (`secure`), request
//! dispatch, the upload state machine (offsets, sizes, duplicate chunks) and
//! the SHA-256 check of the staged bytes before commit. The board supplies a
//! [`DeviceHandler`] that stores bytes, runs models and reports results.
//!
//! A session runs one request at a time on the calling thread; a helper
//! thread reads (and decrypts) the link so that `Cancel` reaches a running
//! job. A record that fails authentication ends the session at once:
//! requests queued behind it are dropped, a running job is cancelled, and
//! nothing after it is served.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::activation::{ActivateRequest, ActivationResult, AppStatus, RollbackRequest, MAX_STATUS_HISTORY};
use crate::auth::PreSharedKey;
use crate::error::RemoteError;
use crate::frame::{decode_envelope, FrameDecoder, FrameEncoder, DEFAULT_MAX_FRAME, MAX_CHUNK, MIN_MAX_FRAME};
use crate::message::*;
use crate::name::{validate_app_name, validate_name};
use crate::secure::{
    self, integrity_error, is_restart, AcceptError, Channel, HandshakeError, Identity, IntegrityError, SecureReader,
    SecureWriter, ServerHandshake,
};
use crate::PROTOCOL_VERSION;

/// Bytes of a chunk frame that are not chunk data (id, tags, offset,
/// length, CRC), rounded up; keeps a negotiated chunk inside the frame limit.
pub const CHUNK_FRAME_OVERHEAD: u32 = 64;

/// Smallest chunk the server negotiates.
pub const MIN_CHUNK: u32 = 64;

#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// With a key, only keyed sessions (`Noise_NXpsk2`; required on TCP);
    /// without, only keyless ones (`Noise_NX`: serial, physical access).
    pub key: Option<PreSharedKey>,
    /// The device's long-term key; `None`: a fresh one per [`serve`] call
    /// (tests; a host cannot pin such a device across sessions).
    pub identity: Option<Identity>,
    /// Largest frame this server accepts (decoded payload + CRC).
    pub max_frame: usize,
    /// Largest upload chunk this server accepts.
    pub max_chunk: u32,
    /// Largest artifact accepted.
    pub max_upload: u64,
    /// A new handshake preamble on a live link starts a new session (serial
    /// lines, where a host can leave without the link closing). On TCP a
    /// preamble inside a session is an integrity failure.
    pub allow_restart: bool,
    /// End a session after this long without a complete request while
    /// none is being served (bytes of an unfinished record do not count).
    pub idle_timeout: Option<Duration>,
    /// End a session when a record takes longer than this to arrive
    /// whole, counted from the first of its bytes the server waits on.
    pub record_timeout: Option<Duration>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            key: None,
            identity: None,
            max_frame: DEFAULT_MAX_FRAME,
            max_chunk: MAX_CHUNK,
            max_upload: 4 << 30,
            allow_restart: true,
            idle_timeout: None,
            record_timeout: None,
        }
    }
}

/// What the board implements. Errors are sent to the host as they are.
///
/// Upload contract: the core calls `upload_begin` and then writes strictly
/// contiguous chunks from the returned offset; before `upload_commit` it
/// reads the staged bytes back with `upload_read` and checks their SHA-256.
/// `upload_commit` makes the staged artifact visible atomically (a temp
/// file, then a rename). Staged bytes survive a broken link, so a later `upload_begin`
/// with the same kind, name, size and digest can resume.
pub trait DeviceHandler {
    /// Sent in `Welcome` (inside the secure channel).
    fn identity(&self) -> DeviceIdentity;

    fn capabilities(&self) -> Capabilities {
        Capabilities::ALL
    }

    fn device_info(&mut self) -> Result<DeviceInfo, RemoteError>;

    /// Prepares staging for `target` (name already validated). Returns how
    /// many bytes of a matching earlier staging are kept (resume offset,
    /// at most `target.size`); anything else staged is discarded (return 0).
    fn upload_begin(&mut self, target: &UploadBegin) -> Result<u64, RemoteError>;

    /// Stores `data` at `offset` (always the current staged length).
    fn upload_write(&mut self, offset: u64, data: &[u8]) -> Result<(), RemoteError>;

    /// Reads staged bytes at `offset` into `buf`; returns the count (0 at end).
    fn upload_read(&mut self, offset: u64, buf: &mut [u8]) -> Result<usize, RemoteError>;

    /// Atomically publishes the staged (and verified) artifact.
    fn upload_commit(&mut self) -> Result<ArtifactInfo, RemoteError>;

    /// Drops the staged data (verification failed, or the host aborted).
    fn upload_discard(&mut self) -> Result<(), RemoteError>;

    fn list(&mut self, kind: Option<ArtifactKind>) -> Result<Vec<ArtifactInfo>, RemoteError>;

    fn delete(&mut self, kind: ArtifactKind, name: &str) -> Result<(), RemoteError>;

    fn benchmark(&mut self, req: &BenchmarkRequest, job: &Job) -> Result<BenchmarkResult, RemoteError>;

    fn evaluate(&mut self, req: &EvalRequest, job: &Job) -> Result<EvalResult, RemoteError>;

    /// Runs of A and B must be interleaved.
    fn compare(&mut self, req: &CompareRequest, job: &Job) -> Result<CompareResult, RemoteError>;

    /// Gates on the board, then the switch of the active model (PROTOCOL.md
    /// 5.5; names already validated).
    fn activate(&mut self, _req: &ActivateRequest, _job: &Job) -> Result<ActivationResult, RemoteError> {
        Err(RemoteError::Unsupported("this device has no active models".into()))
    }

    /// Applications (`None`: all), with at most `history` entries each.
    fn app_status(&mut self, _app: Option<&str>, _history: u32) -> Result<Vec<AppStatus>, RemoteError> {
        Err(RemoteError::Unsupported("this device has no active models".into()))
    }

    /// Restores an application's previous model.
    fn rollback(&mut self, _req: &RollbackRequest, _job: &Job) -> Result<ActivationResult, RemoteError> {
        Err(RemoteError::Unsupported("this device has no active models".into()))
    }
}

/// Handle given to a running job: report progress, observe cancellation.
pub struct Job<'a> {
    id: u32,
    shared: &'a Shared,
}

impl Job<'_> {
    /// Id of the request being served.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Sends a progress event. Report at least every few seconds: the host
    /// treats a long silence as a dead link.
    pub fn progress(&self, phase: Phase, done: u64, total: Option<u64>, message: Option<String>) {
        let env = Envelope { id: self.id, msg: Message::Progress(Progress { phase, done, total, message }) };
        // A failed write ends the session at the next response anyway.
        let _ = self.shared.send(&env);
    }

    /// True once the host asked to cancel this job.
    pub fn is_cancelled(&self) -> bool {
        self.shared.cancel.load(Ordering::SeqCst)
    }

    /// `Err(Cancelled)` once cancelled: `job.check()?` between runs.
    pub fn check(&self) -> Result<(), RemoteError> {
        if self.is_cancelled() {
            Err(RemoteError::Cancelled)
        } else {
            Ok(())
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("link error: {0}")]
    Io(#[from] io::Error),
    #[error("{0}")]
    Identity(HandshakeError),
}

/// How a session ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionEnd {
    /// The peer closed the link (or it broke).
    Closed,
    /// The host never proved the key: its first record did not
    /// authenticate (a wrong key), or it left right after the device's
    /// handshake message (it rejected the device).
    AuthFailed,
    /// A record failed authentication after the host had proved the key:
    /// the link was tampered with (or is corrupt). Nothing after it was
    /// served.
    Integrity,
    /// The handshake was refused: another protocol version (told so), a
    /// keyless host on a keyed device or the reverse, garbage.
    Refused,
    /// The server ended the session: no request within the idle timeout, a
    /// record slower than the record timeout, or the host read nothing
    /// for as long as the link's write timeout.
    TimedOut,
}

/// The writing half of a session: frames, encrypted into records.
struct Writer {
    sink: SecureWriter<Box<dyn Write + Send>>,
    encoder: FrameEncoder,
    buf: Vec<u8>,
}

struct Shared {
    writer: Mutex<Writer>,
    /// Id of the running job (0: none).
    running: AtomicU32,
    cancel: AtomicBool,
    /// `Hello` answered: Cancel may bypass the queue.
    ready: AtomicBool,
    /// Tells the reader thread to stop at its next timeout.
    stop: AtomicBool,
    /// A record failed authentication: serve nothing more.
    broken: AtomicBool,
    /// A request is being served (the idle timer does not run).
    serving: AtomicBool,
    /// When the last complete request arrived or was answered.
    activity: Mutex<Instant>,
    /// Why the server ended the session (a deadline passed).
    timed_out: Mutex<Option<String>>,
}

impl Shared {
    fn send(&self, env: &Envelope) -> io::Result<()> {
        if self.broken.load(Ordering::SeqCst) {
            return Err(io::Error::new(io::ErrorKind::BrokenPipe, "the session ended"));
        }
        let mut w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let Writer { sink, encoder, buf } = &mut *w;
        buf.clear();
        if let Err(e) = encoder.encode(env, buf) {
            // Too large for the peer: tell it instead of sending nothing.
            buf.clear();
            let err = Envelope {
                id: env.id,
                msg: Message::Response(Response::Error(RemoteError::Internal(format!("response not sendable: {e}")))),
            };
            encoder.encode(&err, buf).map_err(io::Error::other)?;
        }
        let r = sink.write_all(buf).and_then(|()| sink.flush());
        if let Err(e) = &r {
            if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) {
                // The link's write timeout: the host reads nothing. A job
                // running for it stops; the session ends.
                self.end_timed_out("the host read nothing for as long as the write timeout".into());
            }
        }
        r
    }

    /// Ends the session for a passed deadline (the first reason stays).
    fn end_timed_out(&self, why: String) {
        self.timed_out.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert(why);
        self.broken.store(true, Ordering::SeqCst);
        self.cancel.store(true, Ordering::SeqCst);
    }

    fn touch(&self) {
        *self.activity.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    }

    fn idle_for(&self) -> Duration {
        self.activity.lock().unwrap_or_else(|e| e.into_inner()).elapsed()
    }

    fn respond(&self, id: u32, r: Response) -> io::Result<()> {
        self.send(&Envelope { id, msg: Message::Response(r) })
    }

    /// Tells the host (request id 0) why the session ends: its records
    /// stopped authenticating. The device's own direction is intact.
    fn notify_integrity(&self, e: &IntegrityError) {
        let env = Envelope { id: 0, msg: Message::Response(Response::Error(RemoteError::Integrity(e.to_string()))) };
        let mut w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let Writer { sink, encoder, buf } = &mut *w;
        buf.clear();
        if encoder.encode(&env, buf).is_ok() {
            let _ = sink.write_all(buf).and_then(|()| sink.flush());
        }
    }
}

#[allow(clippy::large_enum_variant)] // short-lived, moved once
enum Incoming {
    Frame(Envelope),
    /// CRC-valid but undecodable payload (maybe a newer peer).
    Undecodable(Vec<u8>),
    /// A record failed authentication; the reader stopped.
    Broken(IntegrityError),
}

/// Requests read ahead of the one being served. When full, the reader stops
/// reading and TCP (or the serial line) pushes back: a peer that floods the
/// link while a job runs or without reading the answers cannot make the
/// server buffer without bound (at most this many frames of `max_frame`).
/// Well above what a client keeps in flight (one request, its resends and
/// a `Cancel`).
pub const MAX_QUEUED_REQUESTS: usize = 16;

/// How the reader thread ended.
enum ReaderEnd<R> {
    /// EOF, a link error, a stop, or an integrity failure (reported).
    Done { records: u64 },
    /// A new preamble (serial): the link and the bytes read past the last record.
    Restart(R, Vec<u8>),
}

/// A duration in seconds as people write it (`600`, `2.5`).
fn secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s.fract() == 0.0 {
        format!("{}", d.as_secs())
    } else {
        format!("{s}")
    }
}

/// The deadlines the reader keeps.
#[derive(Clone, Copy)]
struct Deadlines {
    idle: Option<Duration>,
    record: Option<Duration>,
}

fn reader_loop<R: Read>(
    mut reader: SecureReader<R>,
    max_frame: usize,
    deadlines: Deadlines,
    shared: Arc<Shared>,
    tx: mpsc::SyncSender<Incoming>,
) -> ReaderEnd<R> {
    let mut decoder = FrameDecoder::new(max_frame);
    let mut buf = vec![0u8; 64 * 1024];
    let done = |r: &SecureReader<R>| ReaderEnd::Done { records: r.records() };
    // Return after every read of the link, whole record or not: the
    // deadlines below hold however slowly bytes trickle in.
    reader.yield_partial_records(true);
    // Since when the reader waits for the rest of a record.
    let mut partial_since: Option<Instant> = None;
    loop {
        if shared.stop.load(Ordering::SeqCst) {
            return done(&reader);
        }
        let n = match reader.read(&mut buf) {
            Ok(0) => return done(&reader),
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                if reader.partial_record() {
                    let since = *partial_since.get_or_insert_with(Instant::now);
                    if let Some(limit) = deadlines.record.filter(|l| since.elapsed() > *l) {
                        let why = format!("a record took longer than {} s to arrive", secs(limit));
                        log::info!("closing the session: {why}");
                        shared.end_timed_out(why);
                        return done(&reader);
                    }
                } else {
                    partial_since = None;
                }
                if let Some(limit) = deadlines.idle {
                    if !shared.serving.load(Ordering::SeqCst) && shared.idle_for() > limit {
                        let why = format!("no request for {} s", secs(limit));
                        log::info!("closing an idle session: {why}");
                        shared.end_timed_out(why);
                        return done(&reader);
                    }
                }
                continue;
            }
            Err(e) if is_restart(&e) => {
                shared.broken.store(true, Ordering::SeqCst);
                shared.cancel.store(true, Ordering::SeqCst);
                let (link, unread) = reader.into_restart();
                return ReaderEnd::Restart(link, unread);
            }
            Err(e) => {
                if let Some(i) = integrity_error(&e) {
                    // Before anything queued is served: nothing after the
                    // failure, nor the job running, may go on.
                    shared.broken.store(true, Ordering::SeqCst);
                    shared.cancel.store(true, Ordering::SeqCst);
                    let _ = tx.send(Incoming::Broken(i.clone()));
                }
                return done(&reader);
            }
        };
        let mut gone = false;
        decoder.feed_payloads(&buf[..n], |r| {
            let item = match r {
                Ok(payload) => match decode_envelope(payload) {
                    Ok(env) => Incoming::Frame(env),
                    Err(_) => Incoming::Undecodable(payload.to_vec()),
                },
                // Damaged frames are dropped (inside an authenticated
                // channel only a buggy peer sends them).
                Err(_) => return,
            };
            if let Incoming::Frame(Envelope { id, msg: Message::Request(Request::Cancel { target }) }) = &item {
                if shared.ready.load(Ordering::SeqCst) {
                    let running = *target != 0 && shared.running.load(Ordering::SeqCst) == *target;
                    if running {
                        shared.cancel.store(true, Ordering::SeqCst);
                    }
                    shared.touch();
                    let _ = shared.respond(*id, Response::CancelAck { was_running: running });
                    return;
                }
            }
            if matches!(item, Incoming::Frame(_) | Incoming::Undecodable(_)) {
                shared.touch();
            }
            if tx.send(item).is_err() {
                gone = true;
            }
        });
        if gone {
            return done(&reader);
        }
        // Time spent waiting for the queue to drain is not the host's.
        partial_since = reader.partial_record().then(Instant::now);
    }
}

/// Serves one session over a TCP connection (read timeout set so the
/// reader thread notices the end of the session; socket shut down after).
/// TCP requires a key: without one the connection is closed at once.
/// This blocks on the handshake without a deadline (tests, benchmarks): a
/// daemon facing a network runs handshakes elsewhere with deadlines and
/// hands proved connections to [`serve_proved`] (PROTOCOL.md 4.8).
pub fn serve_tcp<H: DeviceHandler>(
    handler: &mut H,
    config: &ServerConfig,
    stream: TcpStream,
) -> Result<SessionEnd, ServerError> {
    if config.key.is_none() {
        let _ = stream.shutdown(std::net::Shutdown::Both);
        return Err(ServerError::Io(io::Error::other("TCP sessions need a pre-shared key")));
    }
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_millis(500)))?;
    let reader = stream.try_clone()?;
    let writer = stream.try_clone()?;
    let config = ServerConfig { allow_restart: false, ..config.clone() };
    let r = serve(handler, &config, reader, writer);
    let _ = stream.shutdown(std::net::Shutdown::Both);
    r
}

/// Serves one link until the peer closes it, fails to authenticate, breaks
/// the channel's integrity or is refused: the secure handshake (see
/// `secure`), then requests. With `config.allow_restart` a new preamble on
/// the link starts the next session on the same link (serial). `reader`
/// goes to a helper thread: give it a read timeout (serial port timeout,
/// `set_read_timeout`) so that thread ends with the session even if the
/// peer stays silent.
pub fn serve<H, R, W>(handler: &mut H, config: &ServerConfig, reader: R, writer: W) -> Result<SessionEnd, ServerError>
where
    H: DeviceHandler,
    R: Read + Send + 'static,
    W: Write + Send + 'static,
{
    let identity = match &config.identity {
        Some(i) => i.clone(),
        None => Identity::generate().map_err(ServerError::Identity)?,
    };
    let mut reader = reader;
    let mut writer: Box<dyn Write + Send> = Box::new(writer);
    let mut initial = Vec::new();
    loop {
        let handshake = ServerHandshake::new(&identity, config.key.as_ref());
        let channel = match secure::accept(&mut reader, &mut writer, handshake, &initial) {
            Ok(c) => c,
            Err(AcceptError::Closed) => return Ok(SessionEnd::Closed),
            Err(AcceptError::Handshake(e)) => {
                log::info!("handshake refused: {e}");
                return Ok(SessionEnd::Refused);
            }
            Err(AcceptError::Io(e)) if is_link_closed(&e) => return Ok(SessionEnd::Closed),
            Err(AcceptError::Io(e)) => return Err(ServerError::Io(e)),
        };
        match run_session(handler, config, reader, writer, channel)? {
            Ran::End(end) => return Ok(end),
            Ran::Restart(r, w, unread) => {
                log::info!("a new host started a handshake on this link");
                reader = r;
                writer = w;
                initial = unread;
            }
        }
    }
}

/// Serves one session whose host already proved the key: `channel` comes
/// from [`secure::FirstRecord`] (its first record decrypted), so the
/// handshake ran elsewhere, e.g. on a thread that drives many pending
/// connections (a TCP daemon). No restart: a preamble inside the session
/// is an integrity failure. Give `reader` a read timeout, as for [`serve`].
pub fn serve_proved<H, R, W>(
    handler: &mut H,
    config: &ServerConfig,
    reader: R,
    writer: W,
    channel: Channel,
) -> Result<SessionEnd, ServerError>
where
    H: DeviceHandler,
    R: Read + Send + 'static,
    W: Write + Send + 'static,
{
    let config = ServerConfig { allow_restart: false, ..config.clone() };
    match run_session(handler, &config, reader, Box::new(writer), channel)? {
        Ran::End(end) => Ok(end),
        Ran::Restart(..) => Ok(SessionEnd::Closed),
    }
}

/// [`serve`] without the secure channel: the unencrypted baseline of the
/// link benchmarks (feature `testing`; never used by the daemon).
#[cfg(feature = "testing")]
pub fn serve_insecure_for_benchmarks<H, R, W>(
    handler: &mut H,
    config: &ServerConfig,
    reader: R,
    writer: W,
) -> Result<SessionEnd, ServerError>
where
    H: DeviceHandler,
    R: Read + Send + 'static,
    W: Write + Send + 'static,
{
    let channel = Channel::insecure_for_benchmarks().map_err(ServerError::Identity)?;
    match run_session(handler, config, reader, Box::new(writer), channel)? {
        Ran::End(end) => Ok(end),
        Ran::Restart(..) => Ok(SessionEnd::Closed),
    }
}

enum Ran<R> {
    End(SessionEnd),
    Restart(R, Box<dyn Write + Send>, Vec<u8>),
}

fn run_session<H, R>(
    handler: &mut H,
    config: &ServerConfig,
    reader: R,
    writer: Box<dyn Write + Send>,
    channel: Channel,
) -> Result<Ran<R>, ServerError>
where
    H: DeviceHandler,
    R: Read + Send + 'static,
{
    let (mut secure_reader, secure_writer) = channel.split(reader, writer);
    secure_reader.allow_restart(config.allow_restart);
    let shared = Arc::new(Shared {
        writer: Mutex::new(Writer {
            sink: secure_writer,
            // Until the peer announces its limit, keep to the minimum.
            encoder: FrameEncoder::new(MIN_MAX_FRAME.max(4096)),
            buf: Vec::new(),
        }),
        running: AtomicU32::new(0),
        cancel: AtomicBool::new(false),
        ready: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        broken: AtomicBool::new(false),
        serving: AtomicBool::new(false),
        activity: Mutex::new(Instant::now()),
        timed_out: Mutex::new(None),
    });
    let (tx, rx) = mpsc::sync_channel(MAX_QUEUED_REQUESTS);
    let reader_shared = shared.clone();
    let max_frame = config.max_frame;
    let deadlines = Deadlines { idle: config.idle_timeout, record: config.record_timeout };
    let reader_thread: JoinHandle<ReaderEnd<R>> = std::thread::Builder::new()
        .name("rba-session-reader".into())
        .spawn(move || reader_loop(secure_reader, max_frame, deadlines, reader_shared, tx))?;
    let mut session = Session {
        config,
        shared: &shared,
        state: State::AwaitHello,
        chunk_size: MIN_CHUNK,
        upload: None,
        last_commit: None,
    };
    // Whether the reader thread returned (the queue closed): only then is
    // it joined, to learn whether a new host restarted the link.
    let mut reader_gone = false;
    let result = loop {
        let Ok(item) = rx.recv() else {
            reader_gone = true;
            break Ok(None);
        };
        if let Incoming::Broken(e) = item {
            break Ok(Some(e));
        }
        if shared.broken.load(Ordering::SeqCst) {
            // The reader found a bad record behind this one, or a deadline
            // passed: serve nothing more.
            continue;
        }
        shared.serving.store(true, Ordering::SeqCst);
        let r = session.handle(handler, item);
        shared.touch();
        shared.serving.store(false, Ordering::SeqCst);
        match r {
            Ok(()) => {}
            Err(_) if shared.timed_out.lock().unwrap_or_else(|e| e.into_inner()).is_some() => break Ok(None),
            Err(e) if is_link_closed(&e) => break Ok(None),
            Err(e) => break Err(ServerError::Io(e)),
        }
    };
    shared.stop.store(true, Ordering::SeqCst);
    if let Some(why) = shared.timed_out.lock().unwrap_or_else(|e| e.into_inner()).take() {
        log::info!("session timed out: {why}");
        return Ok(Ran::End(SessionEnd::TimedOut));
    }
    let broken = result?;
    if let Some(e) = broken {
        let authenticated = !matches!(e, IntegrityError::FirstRecord);
        return Ok(Ran::End(if authenticated {
            log::info!("integrity failure, session ended: {e}");
            shared.notify_integrity(&e);
            SessionEnd::Integrity
        } else {
            log::info!("authentication failed: {e}");
            SessionEnd::AuthFailed
        }));
    }
    if !reader_gone {
        return Ok(Ran::End(SessionEnd::Closed));
    }
    match reader_thread.join() {
        Ok(ReaderEnd::Restart(link, unread)) => {
            let Ok(shared) = Arc::try_unwrap(shared) else {
                return Ok(Ran::End(SessionEnd::Closed));
            };
            let writer = shared.writer.into_inner().unwrap_or_else(|e| e.into_inner()).sink.into_inner();
            Ok(Ran::Restart(link, writer, unread))
        }
        Ok(ReaderEnd::Done { records: 0 }) if config.key.is_some() => Ok(Ran::End(SessionEnd::AuthFailed)),
        Ok(ReaderEnd::Done { .. }) | Err(_) => Ok(Ran::End(SessionEnd::Closed)),
    }
}

fn is_link_closed(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::UnexpectedEof
    )
}

enum State {
    AwaitHello,
    Ready,
}

struct UploadState {
    target: UploadBegin,
    /// Bytes staged so far.
    next: u64,
}

struct Session<'a> {
    config: &'a ServerConfig,
    shared: &'a Shared,
    state: State,
    chunk_size: u32,
    upload: Option<UploadState>,
    last_commit: Option<(UploadCommit, ArtifactInfo)>,
}

impl Session<'_> {
    fn handle<H: DeviceHandler>(&mut self, h: &mut H, item: Incoming) -> io::Result<()> {
        let env = match item {
            Incoming::Frame(env) => env,
            Incoming::Broken(_) => return Ok(()),
            Incoming::Undecodable(payload) => {
                if let Some((id, v)) = secure::hello_version(&payload) {
                    if v != PROTOCOL_VERSION {
                        self.shared.respond(id, version_mismatch(v))?;
                        return Ok(());
                    }
                }
                if let Ok((id, _)) = postcard::take_from_bytes::<u32>(&payload) {
                    let err = match self.state {
                        State::Ready => RemoteError::BadRequest("undecodable message".into()),
                        State::AwaitHello => RemoteError::HandshakeRequired,
                    };
                    self.shared.respond(id, Response::Error(err))?;
                }
                return Ok(());
            }
        };
        let id = env.id;
        // Only requests are served; anything else from a client is ignored.
        let Message::Request(req) = env.msg else {
            return Ok(());
        };
        match req {
            Request::Hello(hello) => self.hello(h, id, &hello),
            req => {
                if !matches!(self.state, State::Ready) {
                    self.shared.respond(id, Response::Error(RemoteError::HandshakeRequired))?;
                    return Ok(());
                }
                let resp = self.dispatch(h, id, req);
                let resp = resp.unwrap_or_else(Response::Error);
                self.shared.respond(id, resp)
            }
        }
    }

    fn hello<H: DeviceHandler>(&mut self, h: &mut H, id: u32, hello: &Hello) -> io::Result<()> {
        // Hello always restarts the exchange (also after a lost Welcome).
        self.shared.ready.store(false, Ordering::SeqCst);
        self.state = State::AwaitHello;
        if hello.protocol_version != PROTOCOL_VERSION {
            return self.shared.respond(id, version_mismatch(hello.protocol_version));
        }
        let peer_max = (hello.max_frame as usize).max(MIN_MAX_FRAME);
        let frame_room = peer_max.min(self.config.max_frame).saturating_sub(CHUNK_FRAME_OVERHEAD as usize);
        self.chunk_size = hello
            .preferred_chunk
            .min(self.config.max_chunk)
            .min(u32::try_from(frame_room).unwrap_or(u32::MAX))
            .max(MIN_CHUNK);
        {
            let mut w = self.shared.writer.lock().unwrap_or_else(|e| e.into_inner());
            w.encoder.set_max_frame(peer_max);
        }
        self.state = State::Ready;
        self.shared.ready.store(true, Ordering::SeqCst);
        let w = Response::Welcome(Welcome {
            protocol_version: PROTOCOL_VERSION,
            device: h.identity(),
            capabilities: h.capabilities(),
            max_frame: u32::try_from(self.config.max_frame).unwrap_or(u32::MAX),
            chunk_size: self.chunk_size,
            max_upload: self.config.max_upload,
        });
        self.shared.respond(id, w)
    }

    fn dispatch<H: DeviceHandler>(&mut self, h: &mut H, id: u32, req: Request) -> Result<Response, RemoteError> {
        match req {
            Request::Hello(_) => Err(RemoteError::Internal("Hello routed to dispatch".into())),
            Request::DeviceInfo => h.device_info().map(Response::DeviceInfo),
            Request::UploadBegin(b) => self.upload_begin(h, b),
            Request::UploadChunk(c) => self.upload_chunk(h, &c),
            Request::UploadCommit(c) => self.upload_commit(h, c),
            Request::UploadAbort => {
                self.upload = None;
                h.upload_discard().map(|()| Response::Aborted)
            }
            Request::List { kind } => {
                let mut list = h.list(kind)?;
                // A stable order whatever the store does (PROTOCOL.md 5.4).
                list.retain(|a| kind.is_none_or(|k| k == a.kind));
                list.sort_by(|a, b| (a.kind, &a.name).cmp(&(b.kind, &b.name)));
                Ok(Response::Artifacts(list))
            }
            Request::Delete { kind, name } => {
                validate_name(&name)?;
                h.delete(kind, &name).map(|()| Response::Deleted)
            }
            Request::Benchmark(r) => {
                validate_name(&r.model)?;
                check_opt_name(&r.input_bundle)?;
                self.run_job(id, |job| h.benchmark(&r, job)).map(Response::Benchmark)
            }
            Request::Evaluate(r) => {
                validate_name(&r.model)?;
                validate_name(&r.bundle)?;
                self.run_job(id, |job| h.evaluate(&r, job)).map(Response::Evaluation)
            }
            Request::Compare(r) => {
                validate_name(&r.model_a)?;
                validate_name(&r.model_b)?;
                check_opt_name(&r.input_bundle)?;
                self.run_job(id, |job| h.compare(&r, job)).map(Response::Compare)
            }
            // Cancels normally bypass the queue in the reader thread; one
            // that got here found nothing running.
            Request::Cancel { .. } => Ok(Response::CancelAck { was_running: false }),
            Request::Ping { nonce } => Ok(Response::Pong { nonce }),
            Request::Activate(r) => {
                validate_app_name(&r.app)?;
                validate_name(&r.model)?;
                check_opt_name(&r.eval_bundle)?;
                self.run_job(id, |job| h.activate(&r, job)).map(|a| Response::Activation(Box::new(a)))
            }
            Request::AppStatus { app, history } => {
                if let Some(a) = &app {
                    validate_app_name(a)?;
                }
                let mut apps = h.app_status(app.as_deref(), history.min(MAX_STATUS_HISTORY))?;
                apps.sort_by(|a, b| a.app.cmp(&b.app));
                Ok(Response::Apps(apps))
            }
            Request::Rollback(r) => {
                validate_app_name(&r.app)?;
                self.run_job(id, |job| h.rollback(&r, job)).map(|a| Response::Activation(Box::new(a)))
            }
        }
    }

    fn run_job<T>(&mut self, id: u32, f: impl FnOnce(&Job) -> Result<T, RemoteError>) -> Result<T, RemoteError> {
        self.shared.cancel.store(false, Ordering::SeqCst);
        self.shared.running.store(id, Ordering::SeqCst);
        let job = Job { id, shared: self.shared };
        job.progress(Phase::Started, 0, None, None);
        let r = f(&job);
        self.shared.running.store(0, Ordering::SeqCst);
        self.shared.cancel.store(false, Ordering::SeqCst);
        r
    }

    fn upload_begin<H: DeviceHandler>(&mut self, h: &mut H, b: UploadBegin) -> Result<Response, RemoteError> {
        validate_name(&b.name)?;
        if b.size > self.config.max_upload {
            return Err(RemoteError::TooLarge { size: b.size, max: self.config.max_upload });
        }
        self.upload = None;
        let resume = h.upload_begin(&b)?;
        if resume > b.size {
            let _ = h.upload_discard();
            return Err(RemoteError::Internal(format!("handler resumed at {resume} beyond size {}", b.size)));
        }
        self.upload = Some(UploadState { target: b, next: resume });
        Ok(Response::UploadReady { resume_offset: resume, chunk_size: self.chunk_size })
    }

    fn upload_chunk<H: DeviceHandler>(&mut self, h: &mut H, c: &UploadChunk) -> Result<Response, RemoteError> {
        let chunk_size = self.chunk_size;
        let up = self.upload.as_mut().ok_or(RemoteError::NoUpload)?;
        let len = c.data.0.len();
        if len > chunk_size as usize {
            return Err(RemoteError::ChunkTooLarge { max: chunk_size, got: u32::try_from(len).unwrap_or(u32::MAX) });
        }
        let size = up.target.size;
        let end = c.offset.saturating_add(len as u64);
        if end > size {
            return Err(RemoteError::ChunkBeyondSize { size, end });
        }
        if c.offset > up.next {
            return Err(RemoteError::OffsetMismatch { expected: up.next, got: c.offset });
        }
        if end > up.next {
            // Overlaps with staged data (a duplicate or re-cut chunk): store
            // only the new tail. Wrong old bytes are caught by the digest.
            let skip = usize::try_from(up.next - c.offset).map_err(|_| RemoteError::Internal("offset".into()))?;
            h.upload_write(up.next, &c.data.0[skip..])?;
            up.next = end;
        }
        Ok(Response::ChunkAck { next_offset: up.next })
    }

    fn upload_commit<H: DeviceHandler>(&mut self, h: &mut H, c: UploadCommit) -> Result<Response, RemoteError> {
        let Some(up) = &self.upload else {
            // A retried commit whose first answer was lost.
            return match &self.last_commit {
                Some((last, info)) if *last == c => Ok(Response::Committed(info.clone())),
                _ => Err(RemoteError::NoUpload),
            };
        };
        let t = &up.target;
        if t.kind != c.kind || t.name != c.name || t.sha256 != c.sha256 {
            return Err(RemoteError::BadRequest("commit does not match the upload in progress".into()));
        }
        if up.next < t.size {
            return Err(RemoteError::Incomplete { received: up.next, size: t.size });
        }
        let (size, expected) = (t.size, t.sha256);
        let actual = staged_digest(h, size);
        let actual = match actual {
            Ok(d) => d,
            Err(e) => {
                self.upload = None;
                let _ = h.upload_discard();
                return Err(e);
            }
        };
        if actual != expected {
            self.upload = None;
            h.upload_discard()?;
            return Err(RemoteError::ShaMismatch { expected, actual });
        }
        let info = h.upload_commit()?;
        self.upload = None;
        self.last_commit = Some((c, info.clone()));
        Ok(Response::Committed(info))
    }
}

/// SHA-256 of exactly `size` staged bytes, read back from the handler.
fn staged_digest<H: DeviceHandler>(h: &mut H, size: u64) -> Result<Sha256Digest, RemoteError> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut offset = 0u64;
    while offset < size {
        let want = usize::try_from((size - offset).min(buf.len() as u64)).unwrap_or(buf.len());
        let n = h.upload_read(offset, &mut buf[..want])?;
        if n == 0 {
            return Err(RemoteError::Storage(format!("staged data ends at {offset} of {size} bytes")));
        }
        hasher.update(&buf[..n.min(want)]);
        offset += n.min(want) as u64;
    }
    Ok(hasher.finalize().into())
}

fn check_opt_name(n: &Option<String>) -> Result<(), RemoteError> {
    n.as_deref().map_or(Ok(()), validate_name)
}

fn version_mismatch(requested: u16) -> Response {
    Response::Error(RemoteError::VersionMismatch { supported: PROTOCOL_VERSION, requested })
}
