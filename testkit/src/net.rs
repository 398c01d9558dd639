//! Real links to a device: TCP clients, a peer speaking raw frames (for
//! what a well-behaved client never sends), framing written out by hand,
//! and a fault-injecting TCP proxy.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rba_protocol::rng::splitmix64;
use rba_protocol::secure;
use rba_protocol::*;

use crate::KEY;

// ---------------------------------------------------------------------------
// Clients

/// A TCP client with the right key ([`KEY`]), patient enough for a loaded
/// machine.
pub fn tcp_config() -> ClientConfig {
    ClientConfig {
        request_timeout: Duration::from_secs(5),
        job_idle_timeout: Duration::from_secs(60),
        max_retries: 2,
        ..ClientConfig::tcp(crate::psk(KEY))
    }
}

/// Connects and handshakes. A device serves one host at a time and answers
/// `Busy` to a host that arrives while it still winds down the previous
/// session (e.g. right after a broken link), and "retry later" while the
/// address backs off after failed authentications (on loopback every test
/// peer shares 127.0.0.1): retried for a few seconds.
pub fn connect_tcp(addr: SocketAddr, config: &ClientConfig) -> Result<Client<TcpStream>, ClientError> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match Client::connect_tcp(addr, config.clone()) {
            Err(ClientError::Remote(RemoteError::Busy) | ClientError::RetryLater) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50))
            }
            r => return r,
        }
    }
}

// ---------------------------------------------------------------------------
// Raw frames

/// The bytes under a [`RawPeer`]: plain TCP, or the secure channel.
enum RawLink {
    Plain(TcpStream),
    Secure(Box<secure::SecureStream<TcpStream>>),
}

impl Read for RawLink {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            RawLink::Plain(s) => s.read(buf),
            RawLink::Secure(s) => s.read(buf),
        }
    }
}

impl Write for RawLink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            RawLink::Plain(s) => s.write(buf),
            RawLink::Secure(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            RawLink::Plain(s) => s.flush(),
            RawLink::Secure(s) => s.flush(),
        }
    }
}

/// A peer speaking raw frames, for what a well-behaved client never sends:
/// on plain TCP ([`RawPeer::connect`], what an attacker without the key
/// can send) or inside the secure channel ([`RawPeer::secure`], a host with
/// the key that misbehaves).
pub struct RawPeer {
    link: RawLink,
    /// The socket, for shutting it down and watching it close.
    pub stream: TcpStream,
    decoder: FrameDecoder,
    next_id: u32,
}

impl RawPeer {
    /// Plain TCP: bytes go out as they are.
    pub fn connect(addr: SocketAddr) -> RawPeer {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let link = RawLink::Plain(stream.try_clone().unwrap());
        RawPeer { link, stream, decoder: FrameDecoder::new(DEFAULT_MAX_FRAME), next_id: 0 }
    }

    /// After the secure handshake with `key` (no Hello yet): frames are
    /// encrypted into records.
    pub fn secure(addr: SocketAddr, key: &PreSharedKey) -> RawPeer {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let mut s = stream.try_clone().unwrap();
        let channel = secure::connect(&mut s, Some(key), Duration::from_secs(5), 1).unwrap();
        let link = RawLink::Secure(Box::new(channel.stream(s)));
        RawPeer { link, stream, decoder: FrameDecoder::new(DEFAULT_MAX_FRAME), next_id: 0 }
    }

    /// A request id not used before on this link.
    pub fn take_id(&mut self) -> u32 {
        self.next_id += 1;
        self.next_id
    }

    /// Sends a request; returns its id.
    pub fn send(&mut self, req: Request) -> u32 {
        let id = self.take_id();
        self.write(&encode_frame(&Envelope { id, msg: Message::Request(req) }, 4096).unwrap());
        id
    }

    /// Sends raw bytes (encrypted on a secure peer).
    pub fn write(&mut self, bytes: &[u8]) {
        self.link.write_all(bytes).unwrap();
    }

    /// Sends `Hello` and expects `Welcome`.
    pub fn hello(&mut self) -> Welcome {
        let id = self.send(Request::Hello(hello()));
        match self.response(id, Duration::from_secs(10)) {
            Some(Response::Welcome(w)) => w,
            other => panic!("no Welcome: {other:?}"),
        }
    }

    /// The next envelope; `None` if the link closed or `timeout` passed.
    pub fn recv(&mut self, timeout: Duration) -> Option<Envelope> {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 4096];
        let mut got = None;
        while got.is_none() && Instant::now() < deadline {
            match self.link.read(&mut buf) {
                Ok(0) => return None,
                Ok(n) => self.decoder.feed(&buf[..n], |r| {
                    if let Ok(env) = r {
                        got.get_or_insert(env);
                    }
                }),
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(_) => return None,
            }
        }
        got
    }

    /// The final response to request `id` (skipping progress and others).
    pub fn response(&mut self, id: u32, timeout: Duration) -> Option<Response> {
        let deadline = Instant::now() + timeout;
        while let Some(env) = self.recv(deadline.saturating_duration_since(Instant::now())) {
            if let (true, Message::Response(r)) = (env.id == id, env.msg) {
                return Some(r);
            }
        }
        None
    }

    /// Raw bytes received within `timeout` (until the link closes).
    pub fn read_raw(&mut self, timeout: Duration) -> Vec<u8> {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            match self.stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(_) => break,
            }
        }
        out
    }

    /// True if the device closes the connection within `timeout`.
    pub fn closed_within(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            match self.stream.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(_) => return true,
            }
        }
        false
    }
}

/// `COBS(payload || CRC32) 0x00`: a well-framed frame, whatever the payload.
pub fn frame_payload(payload: &[u8]) -> Vec<u8> {
    let mut body = payload.to_vec();
    body.extend_from_slice(&rba_protocol::frame::CRC32.checksum(payload).to_le_bytes());
    let mut out = vec![0u8; rba_protocol::frame::max_encoded_len(body.len())];
    let n = cobs_encode(&body, &mut out);
    out.truncate(n);
    out.push(0);
    out
}

/// Plain COBS encoding (the protocol's framing, written out here so that
/// the tests do not share the encoder they check).
fn cobs_encode(input: &[u8], out: &mut [u8]) -> usize {
    let (mut code_at, mut w, mut code) = (0usize, 1usize, 1u8);
    for &b in input {
        if b == 0 {
            out[code_at] = code;
            code_at = w;
            w += 1;
            code = 1;
        } else {
            out[w] = b;
            w += 1;
            code += 1;
            if code == 0xFF {
                out[code_at] = code;
                code_at = w;
                w += 1;
                code = 1;
            }
        }
    }
    out[code_at] = code;
    w
}

/// A `Hello` for raw peers.
pub fn hello() -> Hello {
    Hello {
        protocol_version: PROTOCOL_VERSION,
        client: "raw-peer".into(),
        rba_version: RBA_VERSION.into(),
        capabilities: Capabilities::ALL,
        max_frame: DEFAULT_MAX_FRAME as u32,
        preferred_chunk: DEFAULT_TCP_CHUNK,
    }
}

// ---------------------------------------------------------------------------
// A fault-injecting TCP proxy

/// What a [`Proxy`] does to the bytes it forwards; can change while it runs.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Fraction of the bytes corrupted (XOR with a random non-zero byte),
    /// in both directions; 0 for none. Bursts start at random, with gaps
    /// uniform in [0.5, 1.5] times the mean that gives this rate.
    pub corrupt_rate: f64,
    /// Corrupted bytes come in bursts of this many (1: independent bytes),
    /// like noise on a line.
    pub corrupt_burst: usize,
    /// Corruption starts once this many bytes went host -> device.
    pub corrupt_after: u64,
    /// Once, when this many bytes went host -> device in total: forward up to
    /// exactly that byte, then close both sides of the connection.
    pub drop_at: Option<u64>,
    /// Once, when this many bytes went host -> device: stop forwarding
    /// that way for this long.
    pub stall_at: Option<(u64, Duration)>,
}

/// Which way bytes go through a [`Proxy`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    /// Host to device.
    Up,
    /// Device to host.
    Down,
}

/// A unit of the secure wire format (PROTOCOL.md section 4) as a proxy
/// script sees it. Record lengths are encrypted, so after the handshake a
/// proxy (like an attacker) sees bytes, not records: each read is one
/// `Data` unit. While a host waits for each answer (small requests), one
/// read is one record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    /// Preamble and message 1 (up), or the answer and message 2 (down).
    Handshake,
    /// The `index`-th read after the handshake, at `offset` bytes into
    /// this direction's records.
    Data { index: u64, offset: u64 },
}

/// Where a unit is: connection (0-based, in accept order), direction, unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct At {
    pub conn: u32,
    pub dir: Dir,
    pub unit: Unit,
}

/// Scripted tampering: called with every complete unit as it arrived;
/// returns what to forward instead (nothing drops it, several inject).
pub type Script = Arc<dyn Fn(At, Vec<u8>) -> Vec<Vec<u8>> + Send + Sync>;

/// The bytes of one connection each way, as they arrived (before tampering).
#[derive(Clone, Debug, Default)]
pub struct Capture {
    pub up: Vec<u8>,
    pub down: Vec<u8>,
}

/// Length of the handshake unit at the start of `buf`: `Some(Ok(n))` when
/// it is complete, `None` when more bytes are needed, `Some(Err(()))` when
/// the bytes are not the secure wire format (a version-1 peer).
fn handshake_unit(dir: Dir, buf: &[u8]) -> Option<Result<usize, ()>> {
    let be16 = |at: usize| usize::from(u16::from_be_bytes([buf[at], buf[at + 1]]));
    let need = |n: usize| buf.len() >= n;
    let m = secure::MAGIC.len();
    if buf[..buf.len().min(m)] != secure::MAGIC[..buf.len().min(m)] {
        return Some(Err(()));
    }
    let n = match dir {
        Dir::Up => {
            if !need(secure::PREAMBLE_LEN + 2) {
                return None;
            }
            secure::PREAMBLE_LEN + 2 + be16(secure::PREAMBLE_LEN)
        }
        Dir::Down => {
            if !need(secure::ANSWER_LEN) {
                return None;
            }
            if buf[7] != 0 {
                secure::ANSWER_LEN
            } else if !need(secure::ANSWER_LEN + 2) {
                return None;
            } else {
                secure::ANSWER_LEN + 2 + be16(secure::ANSWER_LEN)
            }
        }
    };
    need(n).then_some(Ok(n))
}

/// A captured direction split into its handshake unit and the rest (one
/// `Data` unit; empty rest: no unit).
pub fn split_units(dir: Dir, bytes: &[u8]) -> Vec<(Unit, Vec<u8>)> {
    match handshake_unit(dir, bytes) {
        Some(Ok(n)) => {
            let mut v = vec![(Unit::Handshake, bytes[..n].to_vec())];
            if bytes.len() > n {
                v.push((Unit::Data { index: 0, offset: 0 }, bytes[n..].to_vec()));
            }
            v
        }
        _ => Vec::new(),
    }
}

#[derive(Default)]
struct ProxyState {
    faults: Mutex<Faults>,
    script: Mutex<Option<Script>>,
    captures: Mutex<Vec<Capture>>,
    stop: AtomicBool,
    /// Host -> device bytes forwarded, over all connections.
    upstream: AtomicU64,
    corrupted: AtomicU64,
    connections: AtomicU32,
    dropped: AtomicBool,
    stalled: AtomicBool,
    streams: Mutex<Vec<TcpStream>>,
}

/// A TCP proxy (threads) between a host and a device.
pub struct Proxy {
    pub addr: SocketAddr,
    state: Arc<ProxyState>,
    acceptor: Option<JoinHandle<()>>,
}

impl Proxy {
    pub fn start(device: SocketAddr, faults: Faults) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let state = Arc::new(ProxyState { faults: Mutex::new(faults), ..ProxyState::default() });
        let st = state.clone();
        let acceptor = std::thread::spawn(move || {
            while !st.stop.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((host, _)) => {
                        let Ok(dev) = TcpStream::connect(device) else {
                            let _ = host.shutdown(Shutdown::Both);
                            continue;
                        };
                        let n = st.connections.fetch_add(1, Ordering::SeqCst);
                        st.captures.lock().unwrap().push(Capture::default());
                        host.set_nonblocking(false).unwrap();
                        for s in [&host, &dev] {
                            s.set_nodelay(true).unwrap();
                            st.streams.lock().unwrap().push(s.try_clone().unwrap());
                        }
                        let seed = 0x9E37_79B9_7F4A_7C15 ^ u64::from(n);
                        let (h2, d2) = (host.try_clone().unwrap(), dev.try_clone().unwrap());
                        let s1 = st.clone();
                        std::thread::spawn(move || pump(host, dev, true, &s1, seed, n));
                        let s2 = st.clone();
                        std::thread::spawn(move || pump(d2, h2, false, &s2, !seed, n));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5))
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Proxy { addr, state, acceptor: Some(acceptor) }
    }

    pub fn set_faults(&self, faults: Faults) {
        *self.state.faults.lock().unwrap() = faults;
    }

    /// From now on, forward whole units of the secure wire format through
    /// `script` (instead of applying [`Faults`]).
    pub fn set_script(&self, script: Script) {
        *self.state.script.lock().unwrap() = Some(script);
    }

    /// What connection `conn` carried so far each way (before tampering).
    pub fn capture(&self, conn: u32) -> Capture {
        self.state.captures.lock().unwrap().get(conn as usize).cloned().unwrap_or_default()
    }

    /// Bytes corrupted so far.
    pub fn corrupted(&self) -> u64 {
        self.state.corrupted.load(Ordering::SeqCst)
    }

    /// Host -> device bytes forwarded so far.
    pub fn upstream_bytes(&self) -> u64 {
        self.state.upstream.load(Ordering::SeqCst)
    }

    pub fn connections(&self) -> u32 {
        self.state.connections.load(Ordering::SeqCst)
    }

    pub fn dropped(&self) -> bool {
        self.state.dropped.load(Ordering::SeqCst)
    }

    pub fn stalled(&self) -> bool {
        self.state.stalled.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        for s in self.state.streams.lock().unwrap().iter() {
            let _ = s.shutdown(Shutdown::Both);
        }
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
    }
}

/// A uniform draw in [0, 1) from the corruption's generator.
fn unit(state: &mut u64) -> f64 {
    (splitmix64(state) >> 11) as f64 / (1u64 << 53) as f64
}

/// Script mode of [`pump`]: the handshake unit whole, then each read.
struct Units {
    buf: Vec<u8>,
    handshake_done: bool,
    reads: u64,
    offset: u64,
    /// Not the secure format: pass bytes through.
    raw: bool,
}

impl Units {
    /// What to forward for `bytes` that just arrived.
    fn forward(&mut self, bytes: &[u8], at: (u32, Dir), script: &Script) -> Vec<u8> {
        if self.raw {
            return bytes.to_vec();
        }
        let mut out = Vec::new();
        let mut data = bytes.to_vec();
        if !self.handshake_done {
            self.buf.extend_from_slice(bytes);
            match handshake_unit(at.1, &self.buf) {
                None => return out,
                Some(Err(())) => {
                    self.raw = true;
                    out.append(&mut self.buf);
                    return out;
                }
                Some(Ok(n)) => {
                    let unit: Vec<u8> = self.buf.drain(..n).collect();
                    self.handshake_done = true;
                    for piece in script(At { conn: at.0, dir: at.1, unit: Unit::Handshake }, unit) {
                        out.extend(piece);
                    }
                    data = std::mem::take(&mut self.buf);
                }
            }
        }
        if !data.is_empty() {
            let unit = Unit::Data { index: self.reads, offset: self.offset };
            self.reads += 1;
            self.offset += data.len() as u64;
            for piece in script(At { conn: at.0, dir: at.1, unit }, data) {
                out.extend(piece);
            }
        }
        out
    }
}

/// Forwards `from` -> `to` until either side closes, applying the faults
/// (or the script), recording what arrived.
fn pump(mut from: TcpStream, mut to: TcpStream, upstream: bool, st: &ProxyState, seed: u64, conn: u32) {
    let mut rng = seed;
    // Clean bytes before the next burst, and corrupt bytes left in it.
    let mut gap_left: Option<u64> = None;
    let mut burst_left = 0usize;
    let mut buf = vec![0u8; 16 * 1024];
    let dir = if upstream { Dir::Up } else { Dir::Down };
    let mut units = Units { buf: Vec::new(), handshake_done: false, reads: 0, offset: 0, raw: false };
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some(c) = st.captures.lock().unwrap().get_mut(conn as usize) {
            let side = if upstream { &mut c.up } else { &mut c.down };
            side.extend_from_slice(&buf[..n]);
        }
        let script = st.script.lock().unwrap().clone();
        if let Some(script) = script {
            if upstream {
                st.upstream.fetch_add(n as u64, Ordering::SeqCst);
            }
            let out = units.forward(&buf[..n], (conn, dir), &script);
            if to.write_all(&out).is_err() {
                break;
            }
            continue;
        }
        let faults = st.faults.lock().unwrap().clone();
        let mut len = n;
        let mut close = false;
        let before = if upstream {
            st.upstream.fetch_add(n as u64, Ordering::SeqCst)
        } else {
            st.upstream.load(Ordering::SeqCst)
        };
        if upstream {
            let after = before + n as u64;
            if let Some((at, pause)) = faults.stall_at {
                if after >= at && !st.stalled.swap(true, Ordering::SeqCst) {
                    std::thread::sleep(pause);
                }
            }
            if let Some(at) = faults.drop_at {
                if after >= at && !st.dropped.swap(true, Ordering::SeqCst) {
                    len = at.saturating_sub(before).min(n as u64) as usize;
                    close = true;
                }
            }
        }
        if faults.corrupt_rate > 0.0 && before >= faults.corrupt_after {
            // Gaps uniform in [0.5, 1.5] x their mean: the rate holds even
            // over a few bursts.
            let burst = faults.corrupt_burst.max(1);
            let mean_gap = burst as f64 / faults.corrupt_rate - burst as f64;
            let draw_gap = |rng: &mut u64| (mean_gap * (0.5 + unit(rng))) as u64;
            for b in &mut buf[..len] {
                let gap = gap_left.get_or_insert_with(|| draw_gap(&mut rng));
                if burst_left == 0 {
                    if *gap > 0 {
                        *gap -= 1;
                        continue;
                    }
                    burst_left = burst;
                    gap_left = Some(draw_gap(&mut rng));
                }
                burst_left -= 1;
                *b ^= (splitmix64(&mut rng) % 255 + 1) as u8;
                st.corrupted.fetch_add(1, Ordering::Relaxed);
            }
        }
        if to.write_all(&buf[..len]).is_err() || close {
            break;
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}
