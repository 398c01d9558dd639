//! Blocking client core: the host side of a session.
//!
//! Works over any `Read + Write` link. Set a read timeout on the link
//! (`TcpStream::set_read_timeout`, the serial port timeout, `MemLink`):
//! the client counts its own deadlines across timed-out reads, and without
//! one a lost frame blocks forever.
//!
//! [`Client::connect`] runs the secure handshake (`secure`: `Noise_NXpsk2`
//! with a key, `Noise_NX` without) and then talks frames inside the
//! channel; a record that fails authentication ends the session with
//! [`ClientError::Integrity`].

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::activation::{ActivateRequest, ActivationResult, AppStatus, RollbackRequest};
use crate::auth::PreSharedKey;
use crate::error::{FrameError, RemoteError};
use crate::frame::{FrameDecoder, FrameEncoder, DEFAULT_MAX_FRAME, MIN_MAX_FRAME};
use crate::message::*;
use crate::name::is_valid_name;
use crate::secure::{
    self, integrity_error, ClientHandshakeError, ConnectError, IntegrityError, LegacyAnswer, SecureStream, Status,
};
use crate::{DEFAULT_SERIAL_CHUNK, DEFAULT_TCP_CHUNK, PROTOCOL_VERSION, RBA_VERSION};

#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Pre-shared key: `Noise_NXpsk2` with it (required on TCP), the
    /// keyless `Noise_NX` without (serial links to keyless devices only).
    pub key: Option<PreSharedKey>,
    /// The fingerprint (`secure::fingerprint`) of the device's static key
    /// as pinned earlier: a device that proves another key is refused
    /// ([`ClientError::IdentityChanged`]) before anything is exchanged.
    pub expected_device: Option<String>,
    /// Resend the handshake when the device stays silent (serial: it may
    /// have missed it); pointless on TCP, where one attempt waits.
    pub resend_handshake: bool,
    pub client_name: String,
    pub preferred_chunk: u32,
    /// Largest frame this client accepts.
    pub max_frame: usize,
    /// Wait per attempt for the answer to a quick request (and for the
    /// first sign of life of a job).
    pub request_timeout: Duration,
    /// Silence tolerated while a job runs (progress events reset it).
    pub job_idle_timeout: Duration,
    /// Extra attempts per request (and per chunk) after a timeout or
    /// an out-of-sync offset, before giving up.
    pub max_retries: u32,
}

impl ClientConfig {
    /// Small chunks and patient timeouts for a UART.
    pub fn serial() -> Self {
        ClientConfig {
            key: None,
            expected_device: None,
            resend_handshake: true,
            client_name: "rba".into(),
            preferred_chunk: DEFAULT_SERIAL_CHUNK,
            max_frame: DEFAULT_MAX_FRAME,
            request_timeout: Duration::from_secs(3),
            job_idle_timeout: Duration::from_secs(60),
            max_retries: 5,
        }
    }

    /// Large chunks for TCP.
    pub fn tcp(key: PreSharedKey) -> Self {
        ClientConfig {
            key: Some(key),
            resend_handshake: false,
            preferred_chunk: DEFAULT_TCP_CHUNK,
            request_timeout: Duration::from_secs(5),
            ..Self::serial()
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("link error: {0}")]
    Io(#[from] io::Error),
    #[error("the link was closed")]
    Disconnected,
    #[error("no answer after {attempts} attempt(s)")]
    Timeout { attempts: u32 },
    #[error("device error: {0}")]
    Remote(#[from] RemoteError),
    /// The handshake failed: the device does not hold our key, or is not
    /// the device (its message 2 did not authenticate).
    #[error("authentication failed: the device rejected the key or is not the device you think")]
    AuthFailed,
    /// A record failed authentication: the link was tampered with (or is
    /// corrupt). The session is over; the device commits nothing it did
    /// not receive intact.
    #[error("the link was tampered with or corrupted: {0}")]
    Integrity(IntegrityError),
    /// The device proved a static key other than the pinned one.
    #[error("the device proved the identity {got}, not the pinned {expected}")]
    IdentityChanged { expected: String, got: String },
    /// The host holds a key but the device has none configured: it cannot
    /// prove it is the device meant, so it is refused.
    #[error("the device has no pre-shared key configured, so it cannot be authenticated; refusing it")]
    DeviceHasNoKey,
    /// An answer without the secure handshake (a protocol-1 device, or a
    /// fake one): refused.
    #[error("{0}")]
    NotSecure(String),
    /// Nothing answered the handshake.
    #[error("no answer to the secure handshake after {attempts} attempt(s)")]
    HandshakeTimeout { attempts: u32 },
    #[error("invalid name {0:?}: use [A-Za-z0-9._-]{{1,64}}, not starting with '.'")]
    InvalidName(String),
    #[error("cannot encode request: {0}")]
    Frame(#[from] FrameError),
    #[error("protocol violation: {0}")]
    Unexpected(String),
    /// The device refuses connections from this address for a while after
    /// failed authentications from it (PROTOCOL.md 4.8).
    #[error("the device refuses connections from this address for now, after failed authentications from it; try again later")]
    RetryLater,
    #[error("upload gave up after {attempts} attempt(s): {last}")]
    RetriesExhausted { attempts: u32, last: Box<ClientError> },
}

impl ClientError {
    /// The link is broken or silent: reconnecting may help.
    pub fn is_link_failure(&self) -> bool {
        matches!(
            self,
            ClientError::Io(_)
                | ClientError::Disconnected
                | ClientError::Timeout { .. }
                | ClientError::HandshakeTimeout { .. }
        )
    }

    /// The session cannot go on: a broken link, or a record that failed
    /// authentication. A new session (fresh keys) may work.
    pub fn ends_session(&self) -> bool {
        self.is_link_failure() || matches!(self, ClientError::Integrity(_))
    }

    /// The integrity failure behind this error (also after retries).
    pub fn integrity(&self) -> Option<&IntegrityError> {
        match self {
            ClientError::Integrity(e) => Some(e),
            ClientError::RetriesExhausted { last, .. } => last.integrity(),
            _ => None,
        }
    }
}

impl From<ConnectError> for ClientError {
    fn from(e: ConnectError) -> Self {
        match e {
            ConnectError::Silent { attempts } => ClientError::HandshakeTimeout { attempts },
            ConnectError::Closed => ClientError::Disconnected,
            ConnectError::Io(e) => ClientError::Io(e),
            ConnectError::Handshake(h) => match h {
                ClientHandshakeError::AuthFailed => ClientError::AuthFailed,
                ClientHandshakeError::Refused(Status::Busy) => ClientError::Remote(RemoteError::Busy),
                ClientHandshakeError::Refused(Status::KeyRequired) => ClientError::Remote(RemoteError::AuthRequired),
                ClientHandshakeError::Refused(Status::NoKey) => ClientError::DeviceHasNoKey,
                ClientHandshakeError::Refused(Status::RetryLater) => ClientError::RetryLater,
                ClientHandshakeError::Refused(s) => ClientError::Unexpected(format!("the device refused: {s:?}")),
                ClientHandshakeError::VersionMismatch { supported, requested } => {
                    ClientError::Remote(RemoteError::VersionMismatch { supported, requested })
                }
                ClientHandshakeError::Legacy(LegacyAnswer::VersionMismatch { supported, requested }) => {
                    ClientError::Remote(RemoteError::VersionMismatch { supported, requested })
                }
                ClientHandshakeError::Legacy(LegacyAnswer::Welcome) => ClientError::NotSecure(
                    "the device answered with a protocol-1 Welcome, without the secure handshake (an rba-device \
                     older than protocol 2, or not the device you think): refusing it"
                        .into(),
                ),
                ClientHandshakeError::Legacy(a) => ClientError::NotSecure(format!(
                    "the device answered in protocol 1, without the secure handshake ({a:?}): refusing it"
                )),
                ClientHandshakeError::NotRba(n) => {
                    ClientError::NotSecure(format!("no rba answer in the first {n} bytes: not an rba-device"))
                }
                ClientHandshakeError::Noise(m) => ClientError::Unexpected(format!("handshake: {m}")),
            },
        }
    }
}

/// An I/O error of the secure stream: integrity failures keep their type.
fn link_error(e: io::Error) -> ClientError {
    match integrity_error(&e) {
        Some(i) => ClientError::Integrity(i.clone()),
        None => ClientError::Io(e),
    }
}

/// What the handshake established.
#[derive(Clone, Debug, PartialEq)]
pub struct Session {
    pub protocol_version: u16,
    pub device: DeviceIdentity,
    pub capabilities: Capabilities,
    pub chunk_size: u32,
    pub max_frame: u32,
    pub max_upload: u64,
    /// Both sides proved the pre-shared key (`Noise_NXpsk2`); false on a
    /// keyless serial session (`Noise_NX`).
    pub authenticated: bool,
    /// The device's static key, as the handshake proved it (pin this one,
    /// never anything the device says about itself).
    pub device_key: [u8; 32],
}

impl Session {
    /// `SHA256:...` of [`Session::device_key`].
    pub fn fingerprint(&self) -> String {
        secure::fingerprint(&self.device_key)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UploadProgress {
    /// Bytes acknowledged by the device.
    pub acked: u64,
    pub total: u64,
    /// Offset this upload (re)started from.
    pub resumed_from: u64,
}

pub struct Client<T: Read + Write> {
    link: SecureStream<T>,
    config: ClientConfig,
    decoder: FrameDecoder,
    encoder: FrameEncoder,
    out: Vec<u8>,
    rbuf: Vec<u8>,
    pending: VecDeque<Envelope>,
    next_id: u32,
    session: Option<Session>,
}

/// How to wait for a final response.
#[derive(Clone, Copy)]
enum Wait {
    /// Retry on timeout (idempotent requests).
    Quick,
    /// Retry only until the job shows a sign of life.
    Job,
}

impl Client<TcpStream> {
    /// Connects over TCP with sensible socket options. TCP requires the
    /// pre-shared key.
    pub fn connect_tcp(addr: impl std::net::ToSocketAddrs, config: ClientConfig) -> Result<Self, ClientError> {
        if config.key.is_none() {
            return Err(RemoteError::AuthRequired.into());
        }
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_millis(200)))?;
        Client::connect(stream, config)
    }
}

impl<T: Read + Write> Client<T> {
    /// The secure handshake, then `Hello`/`Welcome` inside the channel.
    pub fn connect(mut link: T, config: ClientConfig) -> Result<Self, ClientError> {
        let attempts = if config.resend_handshake { config.max_retries.saturating_add(1) } else { 1 };
        let channel = secure::connect(&mut link, config.key.as_ref(), config.request_timeout, attempts)?;
        let authenticated = channel.mode() == secure::Mode::Psk;
        let device_key = channel
            .remote_static()
            .ok_or_else(|| ClientError::Unexpected("the handshake proved no device key".into()))?;
        if let Some(expected) = &config.expected_device {
            let got = secure::fingerprint(&device_key);
            if *expected != got {
                return Err(ClientError::IdentityChanged { expected: expected.clone(), got });
            }
        }
        let mut c = Client {
            link: channel.stream(link),
            decoder: FrameDecoder::new(config.max_frame),
            // Until the server announces its limit, stay small.
            encoder: FrameEncoder::new(MIN_MAX_FRAME.max(4096)),
            config,
            out: Vec::new(),
            rbuf: vec![0u8; 64 * 1024],
            pending: VecDeque::new(),
            next_id: 0,
            session: None,
        };
        c.hello(authenticated, device_key)?;
        Ok(c)
    }

    /// [`Client::connect`] without the secure channel: the unencrypted
    /// baseline of the link benchmarks (feature `testing`; never used by
    /// the host).
    #[cfg(feature = "testing")]
    pub fn connect_insecure_for_benchmarks(link: T, config: ClientConfig) -> Result<Self, ClientError> {
        let channel = secure::Channel::insecure_for_benchmarks().map_err(|e| ClientError::Unexpected(e.to_string()))?;
        let mut c = Client {
            link: channel.stream(link),
            decoder: FrameDecoder::new(config.max_frame),
            encoder: FrameEncoder::new(MIN_MAX_FRAME.max(4096)),
            config,
            out: Vec::new(),
            rbuf: vec![0u8; 64 * 1024],
            pending: VecDeque::new(),
            next_id: 0,
            session: None,
        };
        c.hello(false, [0; 32])?;
        Ok(c)
    }

    fn hello(&mut self, authenticated: bool, device_key: [u8; 32]) -> Result<(), ClientError> {
        let hello = Hello {
            protocol_version: PROTOCOL_VERSION,
            client: self.config.client_name.clone(),
            rba_version: RBA_VERSION.into(),
            capabilities: Capabilities::ALL,
            max_frame: u32::try_from(self.config.max_frame).unwrap_or(u32::MAX),
            preferred_chunk: self.config.preferred_chunk,
        };
        let welcome = match self.call(Request::Hello(hello))? {
            Response::Welcome(w) => w,
            other => return Err(unexpected("Welcome", &other)),
        };
        if welcome.protocol_version != PROTOCOL_VERSION {
            return Err(RemoteError::VersionMismatch {
                supported: welcome.protocol_version,
                requested: PROTOCOL_VERSION,
            }
            .into());
        }
        self.encoder.set_max_frame((welcome.max_frame as usize).max(MIN_MAX_FRAME));
        self.session = Some(Session {
            protocol_version: welcome.protocol_version,
            device: welcome.device,
            capabilities: welcome.capabilities,
            chunk_size: welcome.chunk_size,
            max_frame: welcome.max_frame,
            max_upload: welcome.max_upload,
            authenticated,
            device_key,
        });
        Ok(())
    }

    /// What the handshake established.
    pub fn session(&self) -> Option<&Session> {
        self.session.as_ref()
    }

    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// The link under the secure channel.
    pub fn link(&self) -> &T {
        self.link.get_ref()
    }

    pub fn into_inner(self) -> T {
        self.link.into_inner()
    }

    pub fn device_info(&mut self) -> Result<DeviceInfo, ClientError> {
        match self.call(Request::DeviceInfo)? {
            Response::DeviceInfo(i) => Ok(i),
            other => Err(unexpected("DeviceInfo", &other)),
        }
    }

    pub fn ping(&mut self, nonce: u64) -> Result<(), ClientError> {
        match self.call(Request::Ping { nonce })? {
            Response::Pong { nonce: n } if n == nonce => Ok(()),
            other => Err(unexpected("Pong", &other)),
        }
    }

    pub fn list(&mut self, kind: Option<ArtifactKind>) -> Result<Vec<ArtifactInfo>, ClientError> {
        match self.call(Request::List { kind })? {
            Response::Artifacts(a) => Ok(a),
            other => Err(unexpected("Artifacts", &other)),
        }
    }

    /// Deleting something that is already gone after a retry counts as done.
    pub fn delete(&mut self, kind: ArtifactKind, name: &str) -> Result<(), ClientError> {
        check_name(name)?;
        let req = Request::Delete { kind, name: name.into() };
        match self.exchange(req, Wait::Quick, &mut |_| ControlFlow::Continue(()))? {
            (Response::Deleted, _) => Ok(()),
            (Response::Error(RemoteError::NotFound(_)), attempts) if attempts > 1 => Ok(()),
            (other, _) => Err(unexpected("Deleted", &other)),
        }
    }

    /// Uploads `data` (resuming a matching staged upload on the device),
    /// verified by SHA-256 before it is committed.
    pub fn upload(
        &mut self,
        kind: ArtifactKind,
        name: &str,
        data: &[u8],
        mut progress: impl FnMut(UploadProgress),
    ) -> Result<ArtifactInfo, ClientError> {
        check_name(name)?;
        let sha256: Sha256Digest = Sha256::digest(data).into();
        let size = data.len() as u64;
        let begin = UploadBegin { kind, name: name.into(), size, sha256 };
        let (resumed_from, chunk_size) = match self.call(Request::UploadBegin(begin))? {
            Response::UploadReady { resume_offset, chunk_size } if resume_offset <= size && chunk_size > 0 => {
                (resume_offset, chunk_size)
            }
            other => return Err(unexpected("UploadReady", &other)),
        };
        let mut offset = resumed_from;
        progress(UploadProgress { acked: offset, total: size, resumed_from });
        let mut resyncs = 0;
        while offset < size {
            let end = offset.saturating_add(u64::from(chunk_size)).min(size);
            // Offsets are below `size == data.len()`, so they fit in usize.
            let slice = &data[offset as usize..end as usize];
            let req = Request::UploadChunk(UploadChunk { offset, data: Bytes(slice.to_vec()) });
            match self.call(req) {
                Ok(Response::ChunkAck { next_offset }) if next_offset > offset && next_offset <= size => {
                    offset = next_offset;
                    resyncs = 0;
                }
                Err(ClientError::Remote(RemoteError::OffsetMismatch { expected, .. }))
                    if expected <= size && resyncs < self.config.max_retries =>
                {
                    // The device has less (or more) than we thought: follow it.
                    offset = expected;
                    resyncs += 1;
                }
                Ok(other) => return Err(unexpected("ChunkAck", &other)),
                Err(e) => return Err(e),
            }
            progress(UploadProgress { acked: offset, total: size, resumed_from });
        }
        let commit = UploadCommit { kind, name: name.into(), sha256 };
        match self.call(Request::UploadCommit(commit))? {
            Response::Committed(info) if info.sha256 == sha256 && info.size == size => Ok(info),
            other => Err(unexpected("Committed", &other)),
        }
    }

    /// Discards the device's staged upload (and its resume state).
    pub fn upload_abort(&mut self) -> Result<(), ClientError> {
        match self.call(Request::UploadAbort)? {
            Response::Aborted => Ok(()),
            other => Err(unexpected("Aborted", &other)),
        }
    }

    /// Runs a benchmark. `progress` may return `Break` to cancel it; the
    /// device then answers `Remote(Cancelled)` (or the result if it was done).
    pub fn benchmark(
        &mut self,
        req: &BenchmarkRequest,
        mut progress: impl FnMut(&Progress) -> ControlFlow<()>,
    ) -> Result<BenchmarkResult, ClientError> {
        match self.job(Request::Benchmark(req.clone()), &mut progress)? {
            Response::Benchmark(r) => Ok(r),
            other => Err(unexpected("Benchmark", &other)),
        }
    }

    pub fn evaluate(
        &mut self,
        req: &EvalRequest,
        mut progress: impl FnMut(&Progress) -> ControlFlow<()>,
    ) -> Result<EvalResult, ClientError> {
        match self.job(Request::Evaluate(req.clone()), &mut progress)? {
            Response::Evaluation(r) => Ok(r),
            other => Err(unexpected("Evaluation", &other)),
        }
    }

    pub fn compare(
        &mut self,
        req: &CompareRequest,
        mut progress: impl FnMut(&Progress) -> ControlFlow<()>,
    ) -> Result<CompareResult, ClientError> {
        match self.job(Request::Compare(req.clone()), &mut progress)? {
            Response::Compare(r) => Ok(r),
            other => Err(unexpected("Compare", &other)),
        }
    }

    /// Gates and activation on the device (PROTOCOL.md 5.5). `progress`
    /// may return `Break` to cancel while the gates are measured.
    pub fn activate(
        &mut self,
        req: &ActivateRequest,
        mut progress: impl FnMut(&Progress) -> ControlFlow<()>,
    ) -> Result<ActivationResult, ClientError> {
        match self.job(Request::Activate(req.clone()), &mut progress)? {
            Response::Activation(r) => Ok(*r),
            other => Err(unexpected("Activation", &other)),
        }
    }

    /// Restores the application's previous model.
    pub fn rollback(
        &mut self,
        req: &RollbackRequest,
        mut progress: impl FnMut(&Progress) -> ControlFlow<()>,
    ) -> Result<ActivationResult, ClientError> {
        match self.job(Request::Rollback(req.clone()), &mut progress)? {
            Response::Activation(r) => Ok(*r),
            other => Err(unexpected("Activation", &other)),
        }
    }

    /// Applications (`None`: all) with their active models and the last
    /// `history` entries of their histories.
    pub fn app_status(&mut self, app: Option<&str>, history: u32) -> Result<Vec<AppStatus>, ClientError> {
        match self.call(Request::AppStatus { app: app.map(str::to_string), history })? {
            Response::Apps(a) => Ok(a),
            other => Err(unexpected("Apps", &other)),
        }
    }

    /// Asks the device to stop the job started by request `target`.
    /// Returns whether it was running.
    pub fn cancel(&mut self, target: u32) -> Result<bool, ClientError> {
        match self.call(Request::Cancel { target })? {
            Response::CancelAck { was_running } => Ok(was_running),
            other => Err(unexpected("CancelAck", &other)),
        }
    }

    /// Id of the most recent request (e.g. to cancel it later).
    pub fn last_request_id(&self) -> u32 {
        self.next_id
    }

    fn job(
        &mut self,
        req: Request,
        progress: &mut dyn FnMut(&Progress) -> ControlFlow<()>,
    ) -> Result<Response, ClientError> {
        match self.exchange(req, Wait::Job, progress)?.0 {
            Response::Error(e) => Err(e.into()),
            r => Ok(r),
        }
    }

    /// A quick idempotent request; `Response::Error` becomes `Err`.
    fn call(&mut self, req: Request) -> Result<Response, ClientError> {
        match self.exchange(req, Wait::Quick, &mut |_| ControlFlow::Continue(()))?.0 {
            Response::Error(e) => Err(e.into()),
            r => Ok(r),
        }
    }

    fn fresh_id(&mut self) -> u32 {
        self.next_id = self.next_id.wrapping_add(1).max(1);
        self.next_id
    }

    fn send(&mut self, env: &Envelope) -> Result<(), ClientError> {
        self.out.clear();
        self.encoder.encode(env, &mut self.out)?;
        let written = self.link.write_all(&self.out).and_then(|()| self.link.flush());
        match written {
            Ok(()) => Ok(()),
            Err(e) => Err(self.why_write_failed(link_error(e))),
        }
    }

    /// A write failed (the device closed): if the device said why before it
    /// closed (its records are still readable), that is the error.
    fn why_write_failed(&mut self, e: ClientError) -> ClientError {
        if matches!(e, ClientError::Integrity(_)) {
            return e;
        }
        let deadline = Instant::now() + Duration::from_secs(1);
        while let Ok(env) = self.next_envelope(deadline) {
            if let (0, Message::Response(Response::Error(RemoteError::Integrity(m)))) = (env.id, env.msg) {
                return ClientError::Integrity(IntegrityError::ReportedByDevice(m));
            }
        }
        e
    }

    /// Sends `req` and waits for its final response, resending it under a
    /// fresh id after a timeout (late answers to old ids are ignored).
    /// Returns the response and the number of attempts made.
    fn exchange(
        &mut self,
        req: Request,
        wait: Wait,
        progress: &mut dyn FnMut(&Progress) -> ControlFlow<()>,
    ) -> Result<(Response, u32), ClientError> {
        let mut env = Envelope { id: 0, msg: Message::Request(req) };
        let attempts = self.config.max_retries.saturating_add(1);
        for attempt in 1..=attempts {
            env.id = self.fresh_id();
            self.send(&env)?;
            match self.await_final(env.id, wait, progress) {
                Ok(r) => return Ok((r, attempt)),
                Err(Waited::Silent) => continue,
                Err(Waited::Failed(e)) => return Err(e),
            }
        }
        Err(ClientError::Timeout { attempts })
    }

    fn await_final(
        &mut self,
        id: u32,
        wait: Wait,
        progress: &mut dyn FnMut(&Progress) -> ControlFlow<()>,
    ) -> Result<Response, Waited> {
        let mut deadline = Instant::now() + self.config.request_timeout;
        let mut alive = false;
        let mut cancel_sent = false;
        loop {
            let env = match self.next_envelope(deadline) {
                Ok(env) => env,
                // Once a job has started, resending would run it twice.
                Err(ClientError::Timeout { .. }) if !alive => return Err(Waited::Silent),
                Err(e) => return Err(Waited::Failed(e)),
            };
            if env.id == 0 {
                if let Message::Response(Response::Error(RemoteError::Integrity(m))) = env.msg {
                    return Err(Waited::Failed(ClientError::Integrity(IntegrityError::ReportedByDevice(m))));
                }
                continue;
            }
            if env.id != id {
                continue; // stale answer to an earlier attempt
            }
            match env.msg {
                Message::Response(r) => return Ok(r),
                Message::Progress(p) => {
                    if matches!(wait, Wait::Job) {
                        alive = true;
                        deadline = Instant::now() + self.config.job_idle_timeout;
                    }
                    if progress(&p).is_break() && !cancel_sent {
                        cancel_sent = true;
                        let cancel =
                            Envelope { id: self.fresh_id(), msg: Message::Request(Request::Cancel { target: id }) };
                        self.send(&cancel).map_err(Waited::Failed)?;
                    }
                }
                Message::Request(_) => {}
            }
        }
    }

    fn next_envelope(&mut self, deadline: Instant) -> Result<Envelope, ClientError> {
        loop {
            if let Some(env) = self.pending.pop_front() {
                return Ok(env);
            }
            if Instant::now() >= deadline {
                return Err(ClientError::Timeout { attempts: 1 });
            }
            match self.link.read(&mut self.rbuf) {
                Ok(0) => return Err(ClientError::Disconnected),
                Ok(n) => {
                    let pending = &mut self.pending;
                    // Damaged frames are dropped: the retry logic recovers.
                    self.decoder.feed(&self.rbuf[..n], |r| {
                        if let Ok(env) = r {
                            pending.push_back(env);
                        }
                    });
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Err(link_error(e)),
            }
        }
    }
}

enum Waited {
    /// Nothing heard before the deadline: the request may be resent.
    Silent,
    Failed(ClientError),
}

fn check_name(name: &str) -> Result<(), ClientError> {
    if is_valid_name(name) {
        Ok(())
    } else {
        Err(ClientError::InvalidName(name.into()))
    }
}

fn unexpected(wanted: &str, got: &Response) -> ClientError {
    match got {
        Response::Error(e) => ClientError::Remote(e.clone()),
        other => ClientError::Unexpected(format!("expected {wanted}, got {other:?}")),
    }
}

/// Uploads across broken links: on a link failure (or a record that failed
/// authentication: a corrupt or tampered link) it calls `connect` for a
/// new session (fresh keys) and resumes from the device's staged offset,
/// which holds only bytes that arrived intact; a digest mismatch (the
/// device discarded the staged data) restarts from zero. Gives up after
/// `max_attempts` sessions. Returns the last client.
pub fn upload_resumable<T: Read + Write>(
    mut connect: impl FnMut() -> Result<Client<T>, ClientError>,
    kind: ArtifactKind,
    name: &str,
    data: &[u8],
    max_attempts: u32,
    mut progress: impl FnMut(UploadProgress),
) -> Result<(Client<T>, ArtifactInfo), ClientError> {
    let mut attempts = 0;
    // Once a session was established, a handshake that fails to
    // authenticate is a damaged link, not a wrong key.
    let mut connected = false;
    let mut tampered: Option<IntegrityError> = None;
    loop {
        attempts += 1;
        let result = connect().and_then(|mut c| {
            connected = true;
            c.upload(kind, name, data, &mut progress).map(|info| (c, info))
        });
        match result {
            Ok(ok) => return Ok(ok),
            Err(e) => {
                let retryable = e.ends_session()
                    || (connected && matches!(e, ClientError::AuthFailed))
                    || matches!(e, ClientError::Remote(RemoteError::ShaMismatch { .. }));
                if !retryable {
                    return Err(e);
                }
                if let Some(i) = e.integrity() {
                    tampered = Some(i.clone());
                }
                if attempts >= max_attempts {
                    // A link that failed integrity is the story to tell,
                    // even if the last session merely broke.
                    let last = match (&tampered, e.integrity()) {
                        (Some(i), None) => ClientError::Integrity(i.clone()),
                        _ => e,
                    };
                    return Err(ClientError::RetriesExhausted { attempts, last: Box::new(last) });
                }
            }
        }
    }
}
