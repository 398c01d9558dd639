//! Admission of TCP connections: every connection waits here, on one thread
//! with non-blocking sockets, until its host has completed the handshake
//! and proved the key with its first record; only then is it handed to
//! the session (PROTOCOL.md 4.8). So an unauthenticated peer never holds
//! the session slot, and a crowd of them costs one thread.
//!
//! - a deadline from accept for the handshake and the first record,
//!   not extended by bytes;
//! - at most `max_pending` connections waiting: a newer one evicts the
//!   oldest that has not completed message 1 (else the oldest);
//! - per-address backoff after failed authentications ([`backoff`]):
//!   a backed-off address is answered "retry later" at once;
//! - a host that proves the key while another is served is told `Busy`
//!   (before message 2 when the session already runs, else encrypted);
//! - log lines that peers trigger are rate-limited per kind ([`ratelog`]).

pub mod backoff;
pub mod ratelog;

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use rba_protocol::secure::{
    self, Channel, FirstRecord, HandshakeError, Identity, Outcome, Proof, ServerHandshake, Status, ECHO_LEN,
};
use rba_protocol::{
    encode_frame, Envelope, FrameDecoder, Message, PreSharedKey, RemoteError, Response, DEFAULT_MAX_FRAME,
};

pub use backoff::{peer_key, Backoff, BackoffPolicy};
pub use ratelog::{Kind, RateLog};

/// What a TCP daemon allows the peers that connect to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// From accept to the host's first record (the handshake and the
    /// proof of the key); bytes do not extend it.
    pub handshake_timeout: Duration,
    /// Connections waiting for their handshake at once; a newer one
    /// evicts the oldest.
    pub max_pending: usize,
    /// A session ends after this long without a complete request (none
    /// being served).
    pub idle_timeout: Option<Duration>,
    /// A session ends when one record takes longer than this to arrive.
    pub record_timeout: Option<Duration>,
    /// A session ends when a write blocks this long (the host reads nothing).
    pub write_timeout: Option<Duration>,
    /// Backoff after failed authentications.
    pub backoff: BackoffPolicy,
    /// Lines of each kind peers can trigger, per `log_window` (0: all).
    pub log_limit: u32,
    pub log_window: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            handshake_timeout: Duration::from_secs(10),
            max_pending: 64,
            idle_timeout: Some(Duration::from_secs(600)),
            record_timeout: Some(Duration::from_secs(30)),
            write_timeout: Some(Duration::from_secs(30)),
            backoff: BackoffPolicy::default(),
            log_limit: 10,
            log_window: Duration::from_secs(60),
        }
    }
}

/// A connection whose host proved the key, for the session.
pub struct Admitted {
    /// Non-blocking still: the session sets its own options.
    pub stream: TcpStream,
    pub peer: SocketAddr,
    /// Proved: its reader delivers the first record's plaintext first.
    pub channel: Channel,
    /// Bytes of the device's handshake answer not written yet (normally none).
    pub unsent: Vec<u8>,
}

/// Bytes read from one connection per pass (others get their turn).
const READ_BUDGET: usize = 16 * 1024;
/// Accepts per pass, well below the cap: a connection accepted in one pass
/// is served in that pass, and a flood cannot evict it in the next.
const ACCEPT_BATCH: usize = 16;
/// Sleep between passes while connections wait.
const BUSY_POLL: Duration = Duration::from_millis(5);
/// Sleep between passes while none waits (bounds accept latency).
const IDLE_POLL: Duration = Duration::from_millis(20);
/// How long a refused connection is kept to deliver its answer (its
/// input drained, so that closing does not reset the connection and
/// discard the answer), and how much input is drained at most.
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 16 * 1024;
/// How often the backoff table forgets quiet addresses.
const SWEEP: Duration = Duration::from_secs(10);

enum State {
    Handshake(Box<ServerHandshake>),
    Proof(Box<FirstRecord>),
}

/// A connection waiting for its handshake.
struct Conn {
    stream: TcpStream,
    peer: SocketAddr,
    accepted: Instant,
    state: State,
    /// Reply bytes not written yet.
    out: Vec<u8>,
}

/// A refused connection delivering its answer before it is closed.
struct Closing {
    stream: TcpStream,
    until: Instant,
    out: Vec<u8>,
    drained: usize,
    shut: bool,
}

/// The admission thread's state.
pub struct Admission {
    identity: Identity,
    key: PreSharedKey,
    limits: Limits,
    /// A session runs (set here when a host is admitted, cleared by the
    /// session's thread when it ends).
    in_session: Arc<AtomicBool>,
    shutdown: Arc<AtomicBool>,
    admit: mpsc::SyncSender<Admitted>,
    pending: VecDeque<Conn>,
    closing: VecDeque<Closing>,
    backoff: Backoff,
    log: RateLog,
    next_sweep: Instant,
}

/// What became of a connection after it was served a pass.
enum Next {
    Keep(Conn),
    Done,
}

impl Admission {
    pub fn new(
        identity: Identity,
        key: PreSharedKey,
        limits: Limits,
        in_session: Arc<AtomicBool>,
        shutdown: Arc<AtomicBool>,
        admit: mpsc::SyncSender<Admitted>,
    ) -> Admission {
        let backoff = Backoff::new(limits.backoff.clone());
        let log = RateLog::new(limits.log_limit, limits.log_window);
        Admission {
            identity,
            key,
            limits,
            in_session,
            shutdown,
            admit,
            pending: VecDeque::new(),
            closing: VecDeque::new(),
            backoff,
            log,
            next_sweep: Instant::now() + SWEEP,
        }
    }

    /// Accepts and drives connections on `listener` (non-blocking) until
    /// shutdown or until the session side is gone.
    pub fn run(mut self, listener: &TcpListener) {
        while !self.shutdown.load(Ordering::SeqCst) {
            let mut worked = self.accept(listener);
            let now = Instant::now();
            let pending = std::mem::take(&mut self.pending);
            for c in pending {
                let (next, read) = self.serve(c, now);
                worked |= read;
                if let Next::Keep(c) = next {
                    self.pending.push_back(c);
                }
            }
            let closing = std::mem::take(&mut self.closing);
            self.closing = closing.into_iter().filter_map(|c| linger(c, now)).collect();
            for line in self.log.tick(now) {
                log::info!("{line}");
            }
            if now >= self.next_sweep {
                self.backoff.sweep(now);
                self.next_sweep = now + SWEEP;
            }
            if !worked {
                let idle = self.pending.is_empty() && self.closing.is_empty();
                std::thread::sleep(if idle { IDLE_POLL } else { BUSY_POLL });
            }
        }
    }

    fn note(&mut self, kind: Kind, message: impl FnOnce() -> String) {
        for line in self.log.event(kind, Instant::now(), message) {
            log::info!("{line}");
        }
    }

    /// Accepts what waits in the backlog (a bounded batch); true if any.
    fn accept(&mut self, listener: &TcpListener) -> bool {
        let mut any = false;
        for _ in 0..ACCEPT_BATCH {
            match listener.accept() {
                Ok((stream, peer)) => {
                    any = true;
                    self.admit_new(stream, peer);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // E.g. out of file descriptors: the connection waits
                    // in the backlog; try again next pass.
                    self.note(Kind::Accept, || format!("accept failed: {e}"));
                    break;
                }
            }
        }
        any
    }

    fn admit_new(&mut self, stream: TcpStream, peer: SocketAddr) {
        let now = Instant::now();
        if stream.set_nonblocking(true).is_err() {
            return;
        }
        let _ = stream.set_nodelay(true);
        if let Some(left) = self.backoff.refused(peer.ip(), now) {
            self.note(Kind::Backoff, || {
                format!("{peer}: refused: backing off after failed authentications ({} s left)", left.as_secs() + 1)
            });
            // Answered before the preamble is read: the echo is all-zero.
            let answer = secure::answer(Status::RetryLater, [0; ECHO_LEN]).to_vec();
            self.close_with(stream, answer, now);
            return;
        }
        if self.pending.len() >= self.limits.max_pending.max(1) {
            // The oldest that has not completed message 1 (silent, slow,
            // garbage); only if every one has, the oldest of all. A host
            // past message 1 has its answer and sends its first record in
            // a round trip; one that never does is a failed authentication.
            let at = self.pending.iter().position(|c| matches!(c.state, State::Handshake(_))).unwrap_or(0);
            if let Some(old) = self.pending.remove(at) {
                let cap = self.limits.max_pending;
                let age = now.duration_since(old.accepted);
                self.note(Kind::Evicted, || {
                    format!(
                        "{}: dropped after {:.1} s without a handshake: {cap} connections were waiting",
                        old.peer,
                        age.as_secs_f64()
                    )
                });
                let _ = old.stream.shutdown(Shutdown::Both);
            }
        }
        let hs = ServerHandshake::new(&self.identity, Some(&self.key));
        self.pending.push_back(Conn {
            stream,
            peer,
            accepted: now,
            state: State::Handshake(Box::new(hs)),
            out: Vec::new(),
        });
    }

    /// Keeps a refused connection for a moment to deliver `answer`; past
    /// the bound on such connections, the oldest goes at once.
    fn close_with(&mut self, stream: TcpStream, answer: Vec<u8>, now: Instant) {
        if self.closing.len() >= self.limits.max_pending.max(1) {
            if let Some(old) = self.closing.pop_front() {
                let _ = old.stream.shutdown(Shutdown::Both);
            }
        }
        let c = Closing { stream, until: now + LINGER, out: answer, drained: 0, shut: false };
        if let Some(c) = linger(c, now) {
            self.closing.push_back(c);
        }
    }

    /// One pass over a waiting connection: write, read (bounded), feed,
    /// check its deadline. Returns what became of it and whether bytes came.
    fn serve(&mut self, mut c: Conn, now: Instant) -> (Next, bool) {
        if flush(&mut c.stream, &mut c.out).is_err() {
            return (Next::Done, false);
        }
        let mut buf = [0u8; 4096];
        let mut read = 0usize;
        while read < READ_BUDGET {
            match c.stream.read(&mut buf) {
                Ok(0) => {
                    self.closed(&c);
                    return (Next::Done, true);
                }
                Ok(n) => {
                    read += n;
                    c = match self.feed(c, &buf[..n]) {
                        Next::Keep(c) => c,
                        Next::Done => return (Next::Done, true),
                    };
                    if flush(&mut c.stream, &mut c.out).is_err() {
                        return (Next::Done, true);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.closed(&c);
                    return (Next::Done, true);
                }
            }
        }
        if now.duration_since(c.accepted) >= self.limits.handshake_timeout {
            self.expired(&c);
            let _ = c.stream.shutdown(Shutdown::Both);
            return (Next::Done, read > 0);
        }
        (Next::Keep(c), read > 0)
    }

    fn feed(&mut self, mut c: Conn, bytes: &[u8]) -> Next {
        match &mut c.state {
            State::Handshake(hs) => {
                // Busy is decided when message 1 is complete.
                hs.set_busy(self.in_session.load(Ordering::SeqCst));
                let fed = hs.feed(bytes);
                c.out.extend_from_slice(&fed.reply);
                match fed.outcome {
                    Outcome::Pending => Next::Keep(c),
                    Outcome::Established(channel) => {
                        // Message 2 first: whatever the first record holds,
                        // the host gets the device's answer.
                        if flush(&mut c.stream, &mut c.out).is_err() {
                            return Next::Done;
                        }
                        c.state = State::Proof(Box::new(channel.await_first_record()));
                        // The bytes after message 1 may hold the record already.
                        self.feed(c, &[])
                    }
                    Outcome::Failed(e) => {
                        self.refused(c, e);
                        Next::Done
                    }
                }
            }
            State::Proof(first) => match first.feed(bytes) {
                Proof::Pending => Next::Keep(c),
                Proof::Failed(e) => {
                    self.auth_failed(&c, &format!("its first record did not authenticate ({e})"));
                    let _ = c.stream.shutdown(Shutdown::Both);
                    Next::Done
                }
                Proof::Proved(channel) => {
                    self.proved(c, *channel);
                    Next::Done
                }
            },
        }
    }

    /// The handshake failed on the device's side.
    fn refused(&mut self, c: Conn, e: HandshakeError) {
        let peer = c.peer;
        match &e {
            HandshakeError::Busy => self.note(Kind::Busy, || format!("{peer}: busy with another host, refused")),
            // Not rba, or an rba handshake that is malformed: a failure.
            HandshakeError::NotRba(_) | HandshakeError::MessageSize(_) | HandshakeError::Noise(_) => {
                self.auth_failed(&c, &format!("failed handshake: {e}"));
            }
            // A host of another version or mode: told why, no failure.
            _ => self.note(Kind::Refused, || format!("{peer}: handshake refused: {e}")),
        }
        if c.out.is_empty() {
            let _ = c.stream.shutdown(Shutdown::Both);
        } else {
            self.close_with(c.stream, c.out, Instant::now());
        }
    }

    /// A failed authentication: counted against the address, logged.
    fn auth_failed(&mut self, c: &Conn, why: &str) {
        let (failures, delay) = self.backoff.failed(c.peer.ip(), Instant::now());
        let peer = c.peer;
        self.note(Kind::AuthFailed, || {
            let backoff = match delay {
                Some(d) => format!("; {failures} in a row, refusing {} for {} s", peer.ip(), d.as_secs_f64()),
                None => String::new(),
            };
            format!("{peer}: authentication failed: {why}{backoff}")
        });
    }

    /// The link closed (or broke) before the host proved the key.
    fn closed(&mut self, c: &Conn) {
        match c.state {
            // After message 2 the host cannot decrypt (a wrong key), or it
            // refused this device's identity: the device cannot tell.
            State::Proof(_) => self.auth_failed(
                c,
                "it left after the device's handshake message (a wrong key, or it refused this device's identity)",
            ),
            State::Handshake(_) => {
                let peer = c.peer;
                self.note(Kind::Closed, || format!("{peer}: closed before completing a handshake"));
            }
        }
    }

    /// The deadline passed before the host proved the key.
    fn expired(&mut self, c: &Conn) {
        let secs = self.limits.handshake_timeout.as_secs_f64();
        match c.state {
            // It holds the device's message 2 and sends no record: a key test.
            State::Proof(_) => self.auth_failed(c, &format!("no first record within {secs} s")),
            State::Handshake(_) => {
                let peer = c.peer;
                self.note(Kind::Timeout, || format!("{peer}: no handshake within {secs} s, closed"));
            }
        }
    }

    /// The host proved the key: the session is its, unless another runs.
    fn proved(&mut self, c: Conn, channel: Channel) {
        self.backoff.succeeded(c.peer.ip());
        if self.in_session.swap(true, Ordering::SeqCst) {
            let peer = c.peer;
            self.note(Kind::Busy, || format!("{peer}: busy with another host, refused (after its handshake)"));
            let mut answer = c.out;
            answer.extend(encrypted_busy(channel));
            self.close_with(c.stream, answer, Instant::now());
            return;
        }
        let admitted = Admitted { stream: c.stream, peer: c.peer, channel, unsent: c.out };
        if let Err(e) = self.admit.try_send(admitted) {
            // The session side is gone (shutdown) or, impossibly, full.
            self.in_session.store(false, Ordering::SeqCst);
            let a = match e {
                mpsc::TrySendError::Full(a) | mpsc::TrySendError::Disconnected(a) => a,
            };
            let _ = a.stream.shutdown(Shutdown::Both);
        }
    }
}

/// `Error(Busy)` for each request in the host's first record (its Hello),
/// encrypted in the channel it just established.
fn encrypted_busy(channel: Channel) -> Vec<u8> {
    let mut ids = Vec::new();
    let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME);
    decoder.feed(channel.first_record().unwrap_or_default(), |r| {
        if let Ok(Envelope { id, msg: Message::Request(_) }) = r {
            ids.push(id);
        }
    });
    let (_, mut writer) = channel.split(io::empty(), Vec::new());
    for id in ids {
        let env = Envelope { id, msg: Message::Response(Response::Error(RemoteError::Busy)) };
        if let Ok(frame) = encode_frame(&env, 4096) {
            if writer.write_all(&frame).is_err() {
                break;
            }
        }
    }
    writer.into_inner()
}

/// Writes what the socket takes of `out` now.
fn flush(stream: &mut TcpStream, out: &mut Vec<u8>) -> io::Result<()> {
    while !out.is_empty() {
        match stream.write(out) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                out.drain(..n);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// One pass over a refused connection: deliver the answer, then close the
/// sending side and drain input until the peer closes (bounded in time
/// and bytes). `None` once it is closed.
fn linger(mut c: Closing, now: Instant) -> Option<Closing> {
    if flush(&mut c.stream, &mut c.out).is_err() || now >= c.until {
        let _ = c.stream.shutdown(Shutdown::Both);
        return None;
    }
    if !c.out.is_empty() {
        return Some(c);
    }
    if !c.shut {
        let _ = c.stream.shutdown(Shutdown::Write);
        c.shut = true;
    }
    let mut buf = [0u8; 4096];
    loop {
        match c.stream.read(&mut buf) {
            Ok(0) => return None,
            Ok(n) => {
                c.drained += n;
                if c.drained > LINGER_BYTES {
                    let _ = c.stream.shutdown(Shutdown::Both);
                    return None;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Some(c),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
}
