//! Blocking client core: the host side of a session.
//!
//! Works over any `Read + Write` link. Set a read timeout on the link
//! (`TcpStream::set_read_timeout`, the serial port timeout, `MemLink`):
//! the client counts its own deadlines across timed-out reads, and without
//! one a lost frame blocks forever.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::auth::PreSharedKey;
use crate::error::{FrameError, RemoteError};
use crate::frame::{FrameDecoder, FrameEncoder, DEFAULT_MAX_FRAME, MIN_MAX_FRAME};
use crate::message::*;
use crate::name::is_valid_name;
use crate::{DEFAULT_SERIAL_CHUNK, DEFAULT_TCP_CHUNK, PROTOCOL_VERSION, RBA_VERSION};

#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Pre-shared key; required by servers on TCP.
    pub key: Option<PreSharedKey>,
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
    #[error("the server did not prove knowledge of the key")]
    ServerAuthFailed,
    #[error("invalid name {0:?}: use [A-Za-z0-9._-]{{1,64}}, not starting with '.'")]
    InvalidName(String),
    #[error("cannot encode request: {0}")]
    Frame(#[from] FrameError),
    #[error("protocol violation: {0}")]
    Unexpected(String),
    #[error("upload gave up after {attempts} attempt(s): {last}")]
    RetriesExhausted { attempts: u32, last: Box<ClientError> },
}

impl ClientError {
    /// The link is broken or silent: reconnecting may help.
    pub fn is_link_failure(&self) -> bool {
        matches!(self, ClientError::Io(_) | ClientError::Disconnected | ClientError::Timeout { .. })
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
    /// Both sides proved knowledge of the key.
    pub authenticated: bool,
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
    link: T,
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
    /// Connects over TCP with sensible socket options.
    pub fn connect_tcp(addr: impl std::net::ToSocketAddrs, config: ClientConfig) -> Result<Self, ClientError> {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_millis(200)))?;
        Client::connect(stream, config)
    }
}

impl<T: Read + Write> Client<T> {
    /// Handshake (and authentication) over an open link.
    pub fn connect(link: T, config: ClientConfig) -> Result<Self, ClientError> {
        let mut c = Client {
            link,
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
        c.handshake()?;
        Ok(c)
    }

    fn handshake(&mut self) -> Result<(), ClientError> {
        let mut client_nonce = [0u8; 32];
        getrandom::fill(&mut client_nonce).map_err(|e| io::Error::other(format!("no randomness: {e}")))?;
        let hello = Hello {
            protocol_version: PROTOCOL_VERSION,
            client: self.config.client_name.clone(),
            rba_version: RBA_VERSION.into(),
            capabilities: Capabilities::ALL,
            max_frame: u32::try_from(self.config.max_frame).unwrap_or(u32::MAX),
            preferred_chunk: self.config.preferred_chunk,
            client_nonce,
        };
        let (welcome, authenticated) = match self.call(Request::Hello(hello))? {
            Response::Welcome(w) => {
                // A server without a key (serial) skips authentication; a
                // server mac, if sent anyway, must still be right.
                if w.server_mac.is_some() {
                    return Err(ClientError::ServerAuthFailed);
                }
                (w, false)
            }
            Response::AuthChallenge { server_nonce } => {
                let key = self.config.key.clone().ok_or(RemoteError::AuthRequired)?;
                let mac = key.proof(false, &client_nonce, &server_nonce);
                match self.call(Request::AuthProof(AuthProof { mac }))? {
                    Response::Welcome(w) => {
                        let ok = w.server_mac.is_some_and(|m| key.verify(true, &client_nonce, &server_nonce, &m));
                        if !ok {
                            return Err(ClientError::ServerAuthFailed);
                        }
                        (w, true)
                    }
                    other => return Err(unexpected("Welcome", &other)),
                }
            }
            other => return Err(unexpected("Welcome or AuthChallenge", &other)),
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

    pub fn link(&self) -> &T {
        &self.link
    }

    pub fn into_inner(self) -> T {
        self.link
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
        self.link.write_all(&self.out)?;
        self.link.flush()?;
        Ok(())
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
                Err(e) => return Err(e.into()),
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

/// Uploads across broken links: on a link failure it calls `connect` for a
/// new session and resumes from the device's staged offset; a digest
/// mismatch (the device discarded the staged data) restarts from zero.
/// Gives up after `max_attempts` sessions. Returns the last client.
pub fn upload_resumable<T: Read + Write>(
    mut connect: impl FnMut() -> Result<Client<T>, ClientError>,
    kind: ArtifactKind,
    name: &str,
    data: &[u8],
    max_attempts: u32,
    mut progress: impl FnMut(UploadProgress),
) -> Result<(Client<T>, ArtifactInfo), ClientError> {
    let mut attempts = 0;
    loop {
        attempts += 1;
        let result = connect().and_then(|mut c| c.upload(kind, name, data, &mut progress).map(|info| (c, info)));
        match result {
            Ok(ok) => return Ok(ok),
            Err(e) => {
                let retryable =
                    e.is_link_failure() || matches!(e, ClientError::Remote(RemoteError::ShaMismatch { .. }));
                if !retryable {
                    return Err(e);
                }
                if attempts >= max_attempts {
                    return Err(ClientError::RetriesExhausted { attempts, last: Box::new(e) });
                }
            }
        }
    }
}
