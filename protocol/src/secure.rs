//! The secure channel under the framing (PROTOCOL.md section 4): a
//! plaintext preamble, a Noise handshake (`snow`), then length-prefixed
//! Noise transport records carrying the COBS frames of section 1.
//!
//! ```text
//! host -> device   preamble  = "\0\0RBA" || version: u16 BE || mode: u8
//!                  message 1 = len: u16 BE || Noise message (-> e)
//! device -> host   answer    = "\0\0RBA" || version: u16 BE || status: u8 || echo: [u8; 8]
//!                  message 2 = len: u16 BE || Noise message (<- e, ee, s, es [, psk])
//! both ways        record    = header: Noise transport message of len: u16 BE (2 + 16 bytes)
//!                              || body: Noise transport message of the payload (len bytes)
//! ```
//!
//! The record length is encrypted and authenticated on its own (as in
//! Lightning's BOLT 8), so a forged or injected header is caught at once
//! instead of making the receiver wait for bytes that never come.
//!
//! - [`Identity`]: a device's long-term X25519 key and its [`fingerprint`].
//! - [`ServerHandshake`]: the device's side, driven by bytes (`feed`), so a
//!   server can run many pending handshakes on one thread; [`accept`] is
//!   the blocking convenience.
//! - [`ClientHandshake`]: the host's side, likewise.
//! - [`Channel`]: what a completed handshake established; turns a byte
//!   stream into a [`SecureStream`] (or a [`SecureReader`] and a
//!   [`SecureWriter`] for split halves).
//!
//! Any record that fails to decrypt (altered, replayed, reordered, injected,
//! dropped before it) ends the channel with an `io::ErrorKind::InvalidData`
//! error carrying an [`IntegrityError`] ([`integrity_error`] finds it).

use std::io::{self, Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use snow::params::NoiseParams;
use snow::{Builder, HandshakeState, StatelessTransportState};

use crate::auth::PreSharedKey;
use crate::frame::{FrameDecoder, CRC32};
use crate::PROTOCOL_VERSION;

/// First bytes of a preamble and of an answer. The two zero bytes end any
/// half-received frame of a version-1 peer and cannot start a record.
pub const MAGIC: [u8; 5] = [0, 0, b'R', b'B', b'A'];
/// Magic, version, mode.
pub const PREAMBLE_LEN: usize = MAGIC.len() + 3;
/// Bytes of the answer's echo: the first bytes of the host's message 1.
pub const ECHO_LEN: usize = 8;
/// Magic, version, status, echo.
pub const ANSWER_LEN: usize = MAGIC.len() + 3 + ECHO_LEN;
/// AEAD tag of every record.
pub const TAG_LEN: usize = 16;
/// Largest record body (a Noise message is at most 65535 bytes).
pub const MAX_RECORD: usize = 65535;
/// A record's encrypted length: 2 bytes and their tag.
pub const HEADER_LEN: usize = 2 + TAG_LEN;
/// Largest plaintext in one record; larger writes are split.
pub const MAX_RECORD_PAYLOAD: usize = MAX_RECORD - TAG_LEN;
/// Largest handshake message accepted (ours are 32 and 96 bytes).
pub const MAX_HANDSHAKE_MESSAGE: usize = 1024;
/// Bytes a server skips before a preamble before it gives up (garbage, a
/// version-1 peer's frames); a client likewise before an answer.
pub const MAX_GARBAGE: usize = 64 * 1024;
/// Largest version-1 frame looked at (v1 handshake frames were <= 4096 bytes).
const LEGACY_MAX_FRAME: usize = 4096;

/// With a pre-shared key: the host proves the key, the device its static
/// key (and the key); `psk2` mixes the key in after `ee`, so a passive
/// eavesdropper cannot test guesses of it.
pub const PATTERN_PSK: &str = "Noise_NXpsk2_25519_ChaChaPoly_BLAKE2s";
/// Without a key (serial links only, neither side configured with one):
/// still encrypted, the device still proves its static key.
pub const PATTERN_KEYLESS: &str = "Noise_NX_25519_ChaChaPoly_BLAKE2s";

/// Which handshake the host asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// `Noise_NX`: no key on either side (serial links only).
    Keyless,
    /// `Noise_NXpsk2`: both sides hold the pre-shared key.
    Psk,
}

impl Mode {
    pub fn byte(self) -> u8 {
        match self {
            Mode::Keyless => 1,
            Mode::Psk => 2,
        }
    }

    pub fn from_byte(b: u8) -> Option<Mode> {
        match b {
            1 => Some(Mode::Keyless),
            2 => Some(Mode::Psk),
            _ => None,
        }
    }

    pub fn pattern(self) -> &'static str {
        match self {
            Mode::Keyless => PATTERN_KEYLESS,
            Mode::Psk => PATTERN_PSK,
        }
    }
}

/// The device's answer to a preamble (plaintext: an attacker can forge a
/// refusal, which only denies service, never an acceptance).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Message 2 follows.
    Ok,
    /// Serving another host.
    Busy,
    /// The host asked for a keyless session; this device requires the key.
    KeyRequired,
    /// The host asked for a keyed session; this device has no key.
    NoKey,
    /// The answer's version field is what the device speaks.
    VersionMismatch,
    /// Unknown mode byte.
    BadMode,
    /// The device refuses connections from this address for a while, after
    /// failed authentications from it (PROTOCOL.md 4.8). Sent right after
    /// the connection is accepted, before the preamble is read, so its
    /// echo is all-zero.
    RetryLater,
}

impl Status {
    pub fn byte(self) -> u8 {
        match self {
            Status::Ok => 0,
            Status::Busy => 1,
            Status::KeyRequired => 2,
            Status::NoKey => 3,
            Status::VersionMismatch => 4,
            Status::BadMode => 5,
            Status::RetryLater => 6,
        }
    }

    pub fn from_byte(b: u8) -> Option<Status> {
        Some(match b {
            0 => Status::Ok,
            1 => Status::Busy,
            2 => Status::KeyRequired,
            3 => Status::NoKey,
            4 => Status::VersionMismatch,
            5 => Status::BadMode,
            6 => Status::RetryLater,
            _ => return None,
        })
    }
}

/// The preamble a host sends for `mode` (version [`PROTOCOL_VERSION`]).
pub fn preamble(mode: Mode) -> [u8; PREAMBLE_LEN] {
    let mut p = [0u8; PREAMBLE_LEN];
    p[..MAGIC.len()].copy_from_slice(&MAGIC);
    p[5..7].copy_from_slice(&PROTOCOL_VERSION.to_be_bytes());
    p[7] = mode.byte();
    p
}

/// A device's answer header.
pub fn answer(status: Status, echo: [u8; ECHO_LEN]) -> [u8; ANSWER_LEN] {
    let mut a = [0u8; ANSWER_LEN];
    a[..MAGIC.len()].copy_from_slice(&MAGIC);
    a[5..7].copy_from_slice(&PROTOCOL_VERSION.to_be_bytes());
    a[7] = status.byte();
    a[8..].copy_from_slice(&echo);
    a
}

fn params(mode: Mode) -> Result<NoiseParams, HandshakeError> {
    mode.pattern().parse().map_err(|e| HandshakeError::Noise(format!("{e}")))
}

// ---------------------------------------------------------------------------
// Identities and fingerprints

/// A device's long-term X25519 key pair.
#[derive(Clone)]
pub struct Identity {
    private: [u8; 32],
    public: [u8; 32],
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Identity({})", self.fingerprint())
    }
}

impl Identity {
    /// A fresh key pair from the operating system's random source.
    pub fn generate() -> Result<Identity, HandshakeError> {
        let kp = Builder::new(params(Mode::Keyless)?)
            .generate_keypair()
            .map_err(|e| HandshakeError::Noise(format!("cannot generate a key pair: {e}")))?;
        Identity::from_private(&kp.private)
    }

    /// The key pair of a private key (its public key computed from it).
    pub fn from_private(private: &[u8]) -> Result<Identity, HandshakeError> {
        use snow::params::DHChoice;
        use snow::resolvers::{CryptoResolver, DefaultResolver};
        let private: [u8; 32] =
            private.try_into().map_err(|_| HandshakeError::Noise("a private key has 32 bytes".into()))?;
        let mut dh = DefaultResolver
            .resolve_dh(&DHChoice::Curve25519)
            .ok_or_else(|| HandshakeError::Noise("no X25519 implementation".into()))?;
        dh.set(&private);
        let public: [u8; 32] =
            dh.pubkey().try_into().map_err(|_| HandshakeError::Noise("X25519 public key size".into()))?;
        Ok(Identity { private, public })
    }

    pub fn public(&self) -> &[u8; 32] {
        &self.public
    }

    /// The private key (to store it; keep it secret).
    pub fn private(&self) -> &[u8; 32] {
        &self.private
    }

    /// `SHA256:` + base64 of SHA-256 of the public key (see [`fingerprint`]).
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.public)
    }
}

/// A static key's fingerprint as ssh prints them: `SHA256:` and the
/// unpadded standard base64 of the SHA-256 of the 32-byte public key.
pub fn fingerprint(public: &[u8; 32]) -> String {
    format!("SHA256:{}", base64_unpadded(&Sha256::digest(public)))
}

/// Standard base64 (RFC 4648 alphabet), without `=` padding.
pub fn base64_unpadded(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], chunk.get(1).copied().unwrap_or(0), chunk.get(2).copied().unwrap_or(0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Errors

/// Why a handshake did not complete.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    #[error("a protocol-{requested} peer (this side speaks {supported}); it was told so")]
    VersionMismatch { supported: u16, requested: u16 },
    #[error("no rba handshake in the first {0} bytes")]
    NotRba(usize),
    #[error("the host asked for a keyless session, but this device requires the pre-shared key")]
    KeyRequired,
    #[error("the host asked for a keyed session, but this device has no pre-shared key configured")]
    NoKey,
    #[error("unknown handshake mode {0}")]
    BadMode(u8),
    #[error("handshake message of {0} bytes (at most {MAX_HANDSHAKE_MESSAGE})")]
    MessageSize(usize),
    #[error("busy with another host")]
    Busy,
    #[error("Noise handshake failed: {0}")]
    Noise(String),
}

/// Why the channel ended: the stream is no longer trustworthy.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IntegrityError {
    /// The peer's first record did not authenticate: it does not hold the
    /// session keys (a wrong pre-shared key), or the record was altered.
    #[error("the peer's first record failed authentication (wrong pre-shared key, or an altered record)")]
    FirstRecord,
    /// A later record failed authentication.
    #[error(
        "record {index} failed authentication: it was altered, replayed, reordered or injected, or one before it was dropped"
    )]
    Record { index: u64 },
    /// A record header no peer sends.
    #[error("record {index} has an impossible length of {len} bytes")]
    Length { index: u64, len: usize },
    /// A handshake preamble inside a session, where the link does not allow
    /// a restart (TCP).
    #[error("a handshake preamble in the middle of the session")]
    UnexpectedPreamble,
    /// The link closed in the middle of a record.
    #[error("the link closed in the middle of record {index}")]
    Truncated { index: u64 },
    /// 2^64 records: never in practice.
    #[error("record counter exhausted")]
    Exhausted,
    /// A write failed half-way; nothing more may be sent.
    #[error("an earlier write failed: the channel is closed")]
    Poisoned,
    /// The device found a record of ours that failed authentication (it
    /// said so over its intact direction before ending the session).
    #[error("the device received a record that failed authentication ({0})")]
    ReportedByDevice(String),
}

/// The [`IntegrityError`] inside an `io::Error` of a secure stream, if any.
pub fn integrity_error(e: &io::Error) -> Option<&IntegrityError> {
    e.get_ref().and_then(|inner| inner.downcast_ref::<IntegrityError>())
}

/// Marker error: the peer started a new handshake on this (serial) link;
/// [`SecureReader::into_restart`] gives back the link and the bytes read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the peer started a new handshake")]
pub struct Restart;

/// True if `e` is the [`Restart`] marker.
pub fn is_restart(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<Restart>())
}

fn integrity(e: IntegrityError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

// ---------------------------------------------------------------------------
// The channel and its record layer

/// What a completed handshake established.
pub struct Channel {
    transport: Arc<StatelessTransportState>,
    /// Bench baselines only (feature `testing`): records carry plaintext.
    plaintext: bool,
    mode: Mode,
    remote_static: Option<[u8; 32]>,
    handshake_hash: [u8; 32],
    leftover: Vec<u8>,
    /// The plaintext of the peer's first record, when [`FirstRecord`]
    /// already decrypted it (the reader starts with it, at record 1).
    first: Option<Vec<u8>>,
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel").field("mode", &self.mode).field("leftover", &self.leftover.len()).finish()
    }
}

impl Channel {
    fn new(hs: HandshakeState, mode: Mode, leftover: Vec<u8>) -> Result<Channel, HandshakeError> {
        let remote_static = hs.get_remote_static().and_then(|k| <[u8; 32]>::try_from(k).ok());
        let handshake_hash = <[u8; 32]>::try_from(hs.get_handshake_hash()).unwrap_or([0; 32]);
        let transport = hs.into_stateless_transport_mode().map_err(|e| HandshakeError::Noise(format!("{e}")))?;
        Ok(Channel {
            transport: Arc::new(transport),
            plaintext: false,
            mode,
            remote_static,
            handshake_hash,
            leftover,
            first: None,
        })
    }

    /// A channel that passes bytes through unencrypted, for the baseline
    /// of the link benchmarks (never used by the host or the daemon).
    #[cfg(feature = "testing")]
    pub fn insecure_for_benchmarks() -> Result<Channel, HandshakeError> {
        let id = Identity::generate()?;
        let (mut c, hello) = ClientHandshake::start(None).map_err(|e| HandshakeError::Noise(e.to_string()))?;
        let fed = ServerHandshake::new(&id, None).feed(&hello);
        match c.feed(&fed.reply) {
            ClientOutcome::Established(ch) => Ok(Channel { plaintext: true, ..*ch }),
            _ => Err(HandshakeError::Noise("local handshake".into())),
        }
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The peer's static key as the handshake proved it (the device's, on
    /// the host's side; `None` on the device's side: hosts have none).
    pub fn remote_static(&self) -> Option<[u8; 32]> {
        self.remote_static
    }

    /// The Noise handshake hash (unique per session).
    pub fn handshake_hash(&self) -> [u8; 32] {
        self.handshake_hash
    }

    /// Bytes that arrived after the handshake (fed to the reader first).
    pub fn leftover(&self) -> &[u8] {
        &self.leftover
    }

    /// The plaintext of the peer's first record, if [`FirstRecord`]
    /// decrypted it (the reader of this channel delivers it first).
    pub fn first_record(&self) -> Option<&[u8]> {
        self.first.as_deref()
    }

    /// The device's wait for the host's first record (the host's proof of
    /// the key), driven by bytes like [`ServerHandshake`]; the bytes that
    /// followed the handshake count.
    pub fn await_first_record(mut self) -> FirstRecord {
        let buf = std::mem::take(&mut self.leftover);
        FirstRecord { channel: Some(self), buf, body_len: None }
    }

    fn reader(&mut self) -> RecordReader {
        let mut r = RecordReader {
            plaintext: self.plaintext,
            ..RecordReader::new(self.transport.clone(), std::mem::take(&mut self.leftover))
        };
        if let Some(first) = self.first.take() {
            // Record 0 was decrypted already (nonces 0 and 1).
            let n = first.len().min(r.plain.len());
            r.plain[..n].copy_from_slice(&first[..n]);
            r.plain_len = n;
            r.nonce = 1;
        }
        r
    }

    /// One stream that reads and writes records.
    pub fn stream<S: Read + Write>(mut self, inner: S) -> SecureStream<S> {
        SecureStream {
            inner,
            reader: self.reader(),
            writer: RecordWriter { plaintext: self.plaintext, ..RecordWriter::new(self.transport) },
        }
    }

    /// Separate halves (e.g. a reader thread and a writer behind a lock).
    pub fn split<R: Read, W: Write>(mut self, r: R, w: W) -> (SecureReader<R>, SecureWriter<W>) {
        (
            SecureReader { inner: r, rec: self.reader() },
            SecureWriter {
                inner: w,
                rec: RecordWriter { plaintext: self.plaintext, ..RecordWriter::new(self.transport) },
            },
        )
    }
}

/// What one [`FirstRecord::feed`] found.
#[derive(Debug)]
pub enum Proof {
    /// Feed more bytes.
    Pending,
    /// The host's first record authenticated: it holds the key. The
    /// channel's reader delivers that record's plaintext first.
    Proved(Box<Channel>),
    /// The first record did not authenticate (a wrong key, a replayed or
    /// made-up record): the host did not prove the key. Close the link.
    Failed(IntegrityError),
}

/// The device's side after message 2: waits for the host's first record
/// and decrypts it, without I/O or a clock (one thread can drive many).
/// A host without the key fails at the record's 18-byte header; only a
/// host with the key makes the device buffer a whole record.
pub struct FirstRecord {
    /// `None` once finished.
    channel: Option<Channel>,
    buf: Vec<u8>,
    body_len: Option<usize>,
}

impl std::fmt::Debug for FirstRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FirstRecord").field("buffered", &self.buf.len()).finish()
    }
}

impl FirstRecord {
    /// Takes the bytes that arrived; see [`Proof`].
    pub fn feed(&mut self, bytes: &[u8]) -> Proof {
        let Some(channel) = &self.channel else {
            return Proof::Failed(IntegrityError::Poisoned);
        };
        self.buf.extend_from_slice(bytes);
        if channel.plaintext {
            return self.proved(None, 0);
        }
        let body_len = match self.body_len {
            Some(l) => l,
            None => {
                if self.buf.len() < HEADER_LEN {
                    return Proof::Pending;
                }
                let mut len = [0u8; HEADER_LEN];
                if channel.transport.read_message(0, &self.buf[..HEADER_LEN], &mut len).is_err() {
                    self.channel = None;
                    return Proof::Failed(if self.buf.starts_with(&MAGIC) {
                        IntegrityError::UnexpectedPreamble
                    } else {
                        IntegrityError::FirstRecord
                    });
                }
                let l = usize::from(u16::from_be_bytes([len[0], len[1]]));
                if l < TAG_LEN {
                    self.channel = None;
                    return Proof::Failed(IntegrityError::Length { index: 0, len: l });
                }
                self.body_len = Some(l);
                l
            }
        };
        if self.buf.len() < HEADER_LEN + body_len {
            return Proof::Pending;
        }
        let mut plain = vec![0u8; body_len];
        let body = &self.buf[HEADER_LEN..HEADER_LEN + body_len];
        match channel.transport.read_message(1, body, &mut plain) {
            Ok(n) => {
                plain.truncate(n);
                self.proved(Some(plain), HEADER_LEN + body_len)
            }
            Err(_) => {
                self.channel = None;
                Proof::Failed(IntegrityError::FirstRecord)
            }
        }
    }

    fn proved(&mut self, first: Option<Vec<u8>>, used: usize) -> Proof {
        let Some(mut channel) = self.channel.take() else {
            return Proof::Failed(IntegrityError::Poisoned);
        };
        channel.leftover = self.buf.split_off(used.min(self.buf.len()));
        channel.first = first;
        self.buf = Vec::new();
        Proof::Proved(Box::new(channel))
    }

    /// Bytes buffered (at most one record and what came with it).
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }
}

/// Raw bytes kept for records: two maximal records.
const RAW_CAPACITY: usize = 2 * (MAX_RECORD + HEADER_LEN);

struct RecordReader {
    transport: Arc<StatelessTransportState>,
    /// Records decrypted: record n uses nonces 2n (header) and 2n + 1 (body).
    nonce: u64,
    /// The body length of the record whose header was decrypted.
    body_len: Option<usize>,
    raw: Vec<u8>,
    lo: usize,
    hi: usize,
    plain: Vec<u8>,
    plain_pos: usize,
    plain_len: usize,
    failed: Option<IntegrityError>,
    /// A preamble at a record boundary is a restart (serial), not an error.
    allow_restart: bool,
    restarted: bool,
    plaintext: bool,
    /// Return `WouldBlock` after a read of the link that completed no
    /// record, instead of reading on (a caller that keeps deadlines).
    yield_partial: bool,
}

enum Parsed {
    /// A record's plaintext is in `plain`.
    Record,
    NeedMore,
}

impl RecordReader {
    fn new(transport: Arc<StatelessTransportState>, leftover: Vec<u8>) -> RecordReader {
        let mut raw = vec![0u8; RAW_CAPACITY.max(leftover.len())];
        let hi = leftover.len();
        raw[..hi].copy_from_slice(&leftover);
        RecordReader {
            transport,
            nonce: 0,
            body_len: None,
            raw,
            lo: 0,
            hi,
            plain: vec![0u8; MAX_RECORD],
            plain_pos: 0,
            plain_len: 0,
            failed: None,
            allow_restart: false,
            restarted: false,
            plaintext: false,
            yield_partial: false,
        }
    }

    fn fail(&mut self, e: IntegrityError) -> io::Error {
        self.failed = Some(e.clone());
        integrity(e)
    }

    fn failure(&self) -> IntegrityError {
        if self.nonce == 0 {
            IntegrityError::FirstRecord
        } else {
            IntegrityError::Record { index: self.nonce }
        }
    }

    /// Decrypts the next complete record in `raw`, if there is one.
    fn parse(&mut self) -> io::Result<Parsed> {
        let exhausted = || integrity(IntegrityError::Exhausted);
        let header_nonce = self.nonce.checked_mul(2).ok_or_else(exhausted)?;
        let body_len = match self.body_len {
            Some(l) => l,
            None => {
                let avail = &self.raw[self.lo..self.hi];
                if avail.len() < HEADER_LEN {
                    return Ok(Parsed::NeedMore);
                }
                let mut len = [0u8; HEADER_LEN];
                if self.transport.read_message(header_nonce, &avail[..HEADER_LEN], &mut len).is_err() {
                    // No record: a preamble (a new host on a serial line),
                    // or bytes an attacker made up.
                    if avail.starts_with(&MAGIC) {
                        if self.allow_restart {
                            self.restarted = true;
                            return Err(io::Error::new(io::ErrorKind::InvalidData, Restart));
                        }
                        return Err(self.fail(IntegrityError::UnexpectedPreamble));
                    }
                    let e = self.failure();
                    return Err(self.fail(e));
                }
                let l = usize::from(u16::from_be_bytes([len[0], len[1]]));
                if l < TAG_LEN {
                    return Err(self.fail(IntegrityError::Length { index: self.nonce, len: l }));
                }
                self.body_len = Some(l);
                l
            }
        };
        let avail = &self.raw[self.lo..self.hi];
        if avail.len() < HEADER_LEN + body_len {
            return Ok(Parsed::NeedMore);
        }
        let body = &self.raw[self.lo + HEADER_LEN..self.lo + HEADER_LEN + body_len];
        match self.transport.read_message(header_nonce + 1, body, &mut self.plain) {
            Ok(n) => {
                self.lo += HEADER_LEN + body_len;
                self.body_len = None;
                self.nonce = self.nonce.checked_add(1).ok_or_else(exhausted)?;
                self.plain_pos = 0;
                self.plain_len = n;
                Ok(Parsed::Record)
            }
            Err(_) => {
                let e = self.failure();
                Err(self.fail(e))
            }
        }
    }

    fn read<R: Read>(&mut self, inner: &mut R, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.plaintext {
            if self.lo < self.hi {
                let n = buf.len().min(self.hi - self.lo);
                buf[..n].copy_from_slice(&self.raw[self.lo..self.lo + n]);
                self.lo += n;
                return Ok(n);
            }
            return inner.read(buf);
        }
        loop {
            if self.plain_pos < self.plain_len {
                let n = buf.len().min(self.plain_len - self.plain_pos);
                buf[..n].copy_from_slice(&self.plain[self.plain_pos..self.plain_pos + n]);
                self.plain_pos += n;
                return Ok(n);
            }
            if let Some(e) = &self.failed {
                return Err(integrity(e.clone()));
            }
            if self.restarted {
                return Err(io::Error::new(io::ErrorKind::InvalidData, Restart));
            }
            match self.parse()? {
                Parsed::Record => continue,
                Parsed::NeedMore => {}
            }
            if self.lo == self.hi {
                (self.lo, self.hi) = (0, 0);
            } else if self.raw.len() - self.hi < MAX_RECORD + HEADER_LEN && self.lo > 0 {
                // Keep room for a whole record: reads stay large.
                self.raw.copy_within(self.lo..self.hi, 0);
                self.hi -= self.lo;
                self.lo = 0;
            }
            let hi = self.hi;
            match inner.read(&mut self.raw[hi..]) {
                Ok(0) => {
                    if self.hi > self.lo {
                        return Err(self.fail(IntegrityError::Truncated { index: self.nonce }));
                    }
                    return Ok(0);
                }
                Ok(n) => {
                    self.hi += n;
                    if self.yield_partial {
                        if let Parsed::Record = self.parse()? {
                            continue;
                        }
                        return Err(io::ErrorKind::WouldBlock.into());
                    }
                }
                // Timeouts leave a partial record buffered for the next call.
                Err(e) => return Err(e),
            }
        }
    }

    /// Bytes of a record that has not arrived whole are buffered.
    fn partial(&self) -> bool {
        self.body_len.is_some() || self.hi > self.lo
    }

    /// Records decrypted so far.
    fn records(&self) -> u64 {
        self.nonce
    }

    fn unread(&self) -> Vec<u8> {
        self.raw[self.lo..self.hi].to_vec()
    }
}

struct RecordWriter {
    transport: Arc<StatelessTransportState>,
    nonce: u64,
    out: Vec<u8>,
    poisoned: bool,
    plaintext: bool,
}

impl RecordWriter {
    fn new(transport: Arc<StatelessTransportState>) -> RecordWriter {
        RecordWriter { transport, nonce: 0, out: vec![0u8; MAX_RECORD + HEADER_LEN], poisoned: false, plaintext: false }
    }

    fn write<W: Write>(&mut self, inner: &mut W, buf: &[u8]) -> io::Result<usize> {
        if self.poisoned {
            return Err(integrity(IntegrityError::Poisoned));
        }
        if buf.is_empty() {
            return Ok(0);
        }
        if self.plaintext {
            return inner.write(buf);
        }
        let n = buf.len().min(MAX_RECORD_PAYLOAD);
        let exhausted = || integrity(IntegrityError::Exhausted);
        let header_nonce = self.nonce.checked_mul(2).ok_or_else(exhausted)?;
        let encrypt = |e: snow::Error| io::Error::other(format!("cannot encrypt a record: {e}"));
        let body_len = n + TAG_LEN;
        let len = u16::try_from(body_len).map_err(|_| io::Error::other("record too large"))?.to_be_bytes();
        let (header, body) = self.out.split_at_mut(HEADER_LEN);
        self.transport.write_message(header_nonce, &len, header).map_err(encrypt)?;
        self.transport.write_message(header_nonce + 1, &buf[..n], body).map_err(encrypt)?;
        self.nonce = self.nonce.checked_add(1).ok_or_else(exhausted)?;
        if let Err(e) = inner.write_all(&self.out[..HEADER_LEN + body_len]) {
            // Half a record may be on the wire: nothing after it would decrypt.
            self.poisoned = true;
            return Err(e);
        }
        Ok(n)
    }
}

/// Reads the records of a channel's incoming half.
pub struct SecureReader<R> {
    inner: R,
    rec: RecordReader,
}

impl<R: Read> Read for SecureReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.rec.read(&mut self.inner, buf)
    }
}

impl<R> SecureReader<R> {
    /// Let a preamble at a record boundary end the reader with the
    /// [`Restart`] marker instead of an integrity error: a new host on a
    /// serial line whose previous host left without the link closing.
    pub fn allow_restart(&mut self, allow: bool) {
        self.rec.allow_restart = allow;
    }

    /// Records decrypted so far (0: the peer has not proved the keys yet).
    pub fn records(&self) -> u64 {
        self.rec.records()
    }

    /// Make `read` return `WouldBlock` after each read of the link that
    /// completed no record (the bytes stay buffered), so that the caller
    /// can keep deadlines however slowly the bytes of a record trickle in.
    pub fn yield_partial_records(&mut self, yield_partial: bool) {
        self.rec.yield_partial = yield_partial;
    }

    /// Part of a record is buffered: the rest has not arrived yet (as seen
    /// when `read` returns a timeout or `WouldBlock`).
    pub fn partial_record(&self) -> bool {
        self.rec.partial()
    }

    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    /// After a [`Restart`]: the link and the bytes read from it but not
    /// used (the new preamble and what followed).
    pub fn into_restart(self) -> (R, Vec<u8>) {
        let unread = self.rec.unread();
        (self.inner, unread)
    }
}

/// Writes a channel's outgoing half as records.
pub struct SecureWriter<W> {
    inner: W,
    rec: RecordWriter,
}

impl<W: Write> Write for SecureWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.rec.write(&mut self.inner, buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<W> SecureWriter<W> {
    pub fn get_ref(&self) -> &W {
        &self.inner
    }

    pub fn into_inner(self) -> W {
        self.inner
    }
}

/// Both halves of a channel over one stream: `Read` decrypts records
/// (buffering partial ones across timeouts: `TimedOut`/`WouldBlock` pass
/// through), `Write` encrypts into records of at most
/// [`MAX_RECORD_PAYLOAD`] plaintext bytes.
pub struct SecureStream<S> {
    inner: S,
    reader: RecordReader,
    writer: RecordWriter,
}

impl<S: Read> Read for SecureStream<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.reader.read(&mut self.inner, buf)
    }
}

impl<S: Write> Write for SecureStream<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.writer.write(&mut self.inner, buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<S> SecureStream<S> {
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    pub fn into_inner(self) -> S {
        self.inner
    }
}

// ---------------------------------------------------------------------------
// Version 1 peers

/// The prefix every Hello of version 1 and 2 shares: id, `Message::Request`
/// (0), `Request::Hello` (0), protocol version.
pub fn hello_version(payload: &[u8]) -> Option<(u32, u16)> {
    let ((id, msg, req, version), _) = postcard::take_from_bytes::<(u32, u32, u32, u16)>(payload).ok()?;
    (msg == 0 && req == 0).then_some((id, version))
}

/// A version-1 frame `Envelope { id, Response(Error(VersionMismatch {
/// supported, requested })) }` (v1 numbering: `Response::Error` = 14).
pub fn legacy_version_mismatch(id: u32, supported: u16, requested: u16) -> Vec<u8> {
    let payload = postcard::to_allocvec(&(id, 1u32, 14u32, 0u32, supported, requested)).unwrap_or_default();
    legacy_frame(&payload)
}

/// `COBS(payload || CRC32 LE) 0x00`.
pub fn legacy_frame(payload: &[u8]) -> Vec<u8> {
    let mut body = payload.to_vec();
    body.extend_from_slice(&CRC32.checksum(payload).to_le_bytes());
    let mut out = cobs::encode_vec(&body);
    out.push(0);
    out
}

/// What a version-1 response frame said, read with v1 numbering.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LegacyAnswer {
    /// `Welcome`, authenticated or not: a v1 device (or a fake one).
    Welcome,
    VersionMismatch {
        supported: u16,
        requested: u16,
    },
    Busy,
    /// Another v1 response.
    Other {
        response: u32,
    },
}

fn legacy_answer(payload: &[u8]) -> Option<LegacyAnswer> {
    let ((_id, msg, resp), rest) = postcard::take_from_bytes::<(u32, u32, u32)>(payload).ok()?;
    if msg != 1 {
        return None;
    }
    Some(match resp {
        1 => LegacyAnswer::Welcome,
        14 => match postcard::take_from_bytes::<u32>(rest).ok()? {
            (0, r) => {
                let ((supported, requested), _) = postcard::take_from_bytes::<(u16, u16)>(r).ok()?;
                LegacyAnswer::VersionMismatch { supported, requested }
            }
            (14, _) => LegacyAnswer::Busy,
            _ => LegacyAnswer::Other { response: resp },
        },
        r => LegacyAnswer::Other { response: r },
    })
}

fn find_magic(buf: &[u8]) -> Option<usize> {
    buf.windows(MAGIC.len()).position(|w| w == MAGIC)
}

/// Bytes at the end of `buf` that may start a magic (kept for later).
fn partial_magic_tail(buf: &[u8]) -> usize {
    (1..MAGIC.len()).rev().find(|&k| buf.len() >= k && buf[buf.len() - k..] == MAGIC[..k]).unwrap_or(0)
}

/// Finds the magic in the bytes that arrive; bytes before it go to a
/// version-1 frame decoder (a v1 peer's frames) and are dropped.
struct Scanner {
    buf: Vec<u8>,
    /// Bytes of `buf` given to the v1 decoder.
    fed: usize,
    /// Bytes dropped before a magic.
    skipped: usize,
    legacy: FrameDecoder,
}

impl Scanner {
    fn new() -> Scanner {
        Scanner { buf: Vec::new(), fed: 0, skipped: 0, legacy: FrameDecoder::new(LEGACY_MAX_FRAME) }
    }

    /// True once `buf` starts with the magic. v1 frames completed before
    /// it go to `legacy` (the magic's first byte, 0x00, ends a v1 frame
    /// right before it).
    fn scan(&mut self, legacy: &mut dyn FnMut(&[u8])) -> bool {
        if self.buf.starts_with(&MAGIC) {
            return true;
        }
        let at = find_magic(&self.buf);
        let end = at.map_or(self.buf.len(), |a| a + 1);
        if end > self.fed {
            self.legacy.feed_payloads(&self.buf[self.fed..end], |r| {
                if let Ok(p) = r {
                    legacy(p);
                }
            });
            self.fed = end;
        }
        let drop = match at {
            Some(a) => a,
            None => self.buf.len() - partial_magic_tail(&self.buf),
        };
        self.buf.drain(..drop);
        self.skipped += drop;
        self.fed = self.fed.saturating_sub(drop);
        at.is_some()
    }

    /// Drops `n` bytes at the front (a consumed answer); scanning goes on after them.
    fn consume(&mut self, n: usize) {
        self.buf.drain(..n);
        self.fed = 0;
        self.legacy.reset();
    }
}

// ---------------------------------------------------------------------------
// The device's side

/// What one [`ServerHandshake::feed`] produced: `reply` (possibly empty) is
/// to be written to the host first, whatever the outcome.
#[derive(Debug)]
pub struct Fed {
    pub reply: Vec<u8>,
    pub outcome: Outcome,
}

#[derive(Debug)]
pub enum Outcome {
    /// Feed more bytes.
    Pending,
    /// The device's side is done; the host is authenticated by its first
    /// record (see [`SecureReader::records`]).
    Established(Box<Channel>),
    /// Close the link (after writing the reply).
    Failed(HandshakeError),
}

/// The device's side of the handshake, driven by the bytes that arrive:
/// no I/O, no clock, so one thread can drive many (non-blocking sockets).
pub struct ServerHandshake {
    identity: Identity,
    key: Option<PreSharedKey>,
    busy: bool,
    scanner: Scanner,
    done: bool,
}

impl ServerHandshake {
    /// With `key`, only keyed sessions (`Noise_NXpsk2`); without, only
    /// keyless ones (`Noise_NX`, for serial links).
    pub fn new(identity: &Identity, key: Option<&PreSharedKey>) -> ServerHandshake {
        ServerHandshake {
            identity: identity.clone(),
            key: key.cloned(),
            busy: false,
            scanner: Scanner::new(),
            done: false,
        }
    }

    /// Answers the preamble with [`Status::Busy`] (a v1 Hello with
    /// `VersionMismatch`), then fails.
    pub fn busy(identity: &Identity) -> ServerHandshake {
        ServerHandshake { busy: true, ..ServerHandshake::new(identity, None) }
    }

    /// Whether to answer the preamble with [`Status::Busy`] (decided when
    /// message 1 is complete: set it before each [`ServerHandshake::feed`]).
    pub fn set_busy(&mut self, busy: bool) {
        self.busy = busy;
    }

    /// Takes the bytes that arrived; see [`Fed`].
    pub fn feed(&mut self, bytes: &[u8]) -> Fed {
        if self.done {
            return Fed { reply: Vec::new(), outcome: Outcome::Failed(HandshakeError::NotRba(0)) };
        }
        self.scanner.buf.extend_from_slice(bytes);
        let fed = self.step();
        if !matches!(fed.outcome, Outcome::Pending) {
            self.done = true;
        }
        fed
    }

    fn pending() -> Fed {
        Fed { reply: Vec::new(), outcome: Outcome::Pending }
    }

    fn fail(reply: Vec<u8>, e: HandshakeError) -> Fed {
        Fed { reply, outcome: Outcome::Failed(e) }
    }

    fn step(&mut self) -> Fed {
        let mut hello = None;
        let found = self.scanner.scan(&mut |p| {
            if hello.is_none() {
                hello = hello_version(p);
            }
        });
        if let Some((id, requested)) = hello {
            // A version-1 host: tell it in its own framing.
            let reply = legacy_version_mismatch(id, PROTOCOL_VERSION, requested);
            return ServerHandshake::fail(
                reply,
                HandshakeError::VersionMismatch { supported: PROTOCOL_VERSION, requested },
            );
        }
        if self.scanner.skipped > MAX_GARBAGE {
            return ServerHandshake::fail(Vec::new(), HandshakeError::NotRba(self.scanner.skipped));
        }
        if !found {
            return ServerHandshake::pending();
        }
        let buf = &self.scanner.buf;
        // The preamble starts the buffer now.
        if buf.len() < MAGIC.len() + 2 {
            return ServerHandshake::pending();
        }
        let version = u16::from_be_bytes([buf[5], buf[6]]);
        if version != PROTOCOL_VERSION {
            return ServerHandshake::fail(
                answer(Status::VersionMismatch, [0; ECHO_LEN]).to_vec(),
                HandshakeError::VersionMismatch { supported: PROTOCOL_VERSION, requested: version },
            );
        }
        if buf.len() < PREAMBLE_LEN + 2 {
            return ServerHandshake::pending();
        }
        let len = usize::from(u16::from_be_bytes([buf[8], buf[9]]));
        if len > MAX_HANDSHAKE_MESSAGE {
            return ServerHandshake::fail(Vec::new(), HandshakeError::MessageSize(len));
        }
        if buf.len() < PREAMBLE_LEN + 2 + len {
            return ServerHandshake::pending();
        }
        let mut pre = [0u8; PREAMBLE_LEN];
        pre.copy_from_slice(&buf[..PREAMBLE_LEN]);
        let msg1 = buf[PREAMBLE_LEN + 2..PREAMBLE_LEN + 2 + len].to_vec();
        let leftover = buf[PREAMBLE_LEN + 2 + len..].to_vec();
        let mut echo = [0u8; ECHO_LEN];
        let e = msg1.len().min(ECHO_LEN);
        echo[..e].copy_from_slice(&msg1[..e]);
        let refuse = |status, err| ServerHandshake::fail(answer(status, echo).to_vec(), err);
        if self.busy {
            return refuse(Status::Busy, HandshakeError::Busy);
        }
        let mode = match Mode::from_byte(pre[7]) {
            None => return refuse(Status::BadMode, HandshakeError::BadMode(pre[7])),
            Some(m) => m,
        };
        match (mode, &self.key) {
            (Mode::Keyless, Some(_)) => return refuse(Status::KeyRequired, HandshakeError::KeyRequired),
            (Mode::Psk, None) => return refuse(Status::NoKey, HandshakeError::NoKey),
            _ => {}
        }
        match self.respond(mode, &pre, &msg1, leftover) {
            Ok((msg2, channel)) => {
                let mut reply = answer(Status::Ok, echo).to_vec();
                // msg2 is < 1024 bytes.
                reply.extend_from_slice(&(msg2.len() as u16).to_be_bytes());
                reply.extend_from_slice(&msg2);
                Fed { reply, outcome: Outcome::Established(Box::new(channel)) }
            }
            Err(e) => ServerHandshake::fail(Vec::new(), e),
        }
    }

    fn respond(
        &self,
        mode: Mode,
        prologue: &[u8],
        msg1: &[u8],
        leftover: Vec<u8>,
    ) -> Result<(Vec<u8>, Channel), HandshakeError> {
        let noise = |e: snow::Error| HandshakeError::Noise(format!("{e}"));
        let mut b = Builder::new(params(mode)?).local_private_key(&self.identity.private).map_err(noise)?;
        b = b.prologue(prologue).map_err(noise)?;
        if let (Mode::Psk, Some(k)) = (mode, &self.key) {
            b = b.psk(2, k.bytes()).map_err(noise)?;
        }
        let mut hs = b.build_responder().map_err(noise)?;
        let mut scratch = [0u8; MAX_HANDSHAKE_MESSAGE];
        hs.read_message(msg1, &mut scratch).map_err(noise)?;
        let mut msg2 = vec![0u8; MAX_HANDSHAKE_MESSAGE];
        let n = hs.write_message(&[], &mut msg2).map_err(noise)?;
        msg2.truncate(n);
        Ok((msg2, Channel::new(hs, mode, leftover)?))
    }
}

/// How a blocking [`accept`] ended without a channel.
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    #[error("the link closed before a handshake")]
    Closed,
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
    #[error("link error: {0}")]
    Io(#[from] io::Error),
}

/// Runs a [`ServerHandshake`] over a blocking link: `initial` (bytes
/// already read) first, then reads (timeouts just wait) until the handshake
/// completes, fails, or the link closes.
pub fn accept<R: Read, W: Write>(
    reader: &mut R,
    writer: &mut W,
    mut handshake: ServerHandshake,
    initial: &[u8],
) -> Result<Channel, AcceptError> {
    let mut buf = vec![0u8; 4096];
    let mut fed = handshake.feed(initial);
    loop {
        if !fed.reply.is_empty() {
            writer.write_all(&fed.reply)?;
            writer.flush()?;
        }
        match fed.outcome {
            Outcome::Established(c) => return Ok(*c),
            Outcome::Failed(e) => return Err(e.into()),
            Outcome::Pending => {}
        }
        let n = loop {
            match reader.read(&mut buf) {
                Ok(0) => return Err(AcceptError::Closed),
                Ok(n) => break n,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Err(e.into()),
            }
        };
        fed = handshake.feed(&buf[..n]);
    }
}

// ---------------------------------------------------------------------------
// The host's side

/// Why the host's handshake failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClientHandshakeError {
    /// Message 2 did not decrypt: the device does not hold our key (or is
    /// not the device), or it was altered.
    #[error("the device's handshake message did not authenticate")]
    AuthFailed,
    /// The device refused (plaintext answer).
    #[error("the device refused the handshake: {0:?}")]
    Refused(Status),
    /// A version-2+ device that speaks another version.
    #[error("the device speaks protocol version {supported}, this host {requested}")]
    VersionMismatch { supported: u16, requested: u16 },
    /// A version-1 peer answered in v1 framing.
    #[error("a protocol-1 answer: {0:?}")]
    Legacy(LegacyAnswer),
    /// Bytes that are no answer.
    #[error("no rba answer in the first {0} bytes")]
    NotRba(usize),
    #[error("{0}")]
    Noise(String),
}

/// What one [`ClientHandshake::feed`] produced.
#[derive(Debug)]
pub enum ClientOutcome {
    Pending,
    Established(Box<Channel>),
    Failed(ClientHandshakeError),
}

/// The host's side of the handshake, driven by the bytes that arrive.
pub struct ClientHandshake {
    /// `None` once finished.
    hs: Option<HandshakeState>,
    mode: Mode,
    echo: [u8; ECHO_LEN],
    scanner: Scanner,
}

impl ClientHandshake {
    /// Starts a handshake (a fresh ephemeral key): returns it and the bytes
    /// to send (preamble and message 1). With `key`: `Noise_NXpsk2`;
    /// without: `Noise_NX`.
    pub fn start(key: Option<&PreSharedKey>) -> Result<(ClientHandshake, Vec<u8>), ClientHandshakeError> {
        let mode = if key.is_some() { Mode::Psk } else { Mode::Keyless };
        let noise = |e: snow::Error| ClientHandshakeError::Noise(format!("{e}"));
        let pre = preamble(mode);
        let p = params(mode).map_err(|e| ClientHandshakeError::Noise(e.to_string()))?;
        let mut b = Builder::new(p).prologue(&pre).map_err(noise)?;
        if let Some(k) = key {
            b = b.psk(2, k.bytes()).map_err(noise)?;
        }
        let mut hs = b.build_initiator().map_err(noise)?;
        let mut msg1 = [0u8; MAX_HANDSHAKE_MESSAGE];
        let n = hs.write_message(&[], &mut msg1).map_err(noise)?;
        let mut echo = [0u8; ECHO_LEN];
        echo.copy_from_slice(&msg1[..ECHO_LEN.min(n)]);
        let mut out = pre.to_vec();
        out.extend_from_slice(&(n as u16).to_be_bytes());
        out.extend_from_slice(&msg1[..n]);
        Ok((ClientHandshake { hs: Some(hs), mode, echo, scanner: Scanner::new() }, out))
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Takes the bytes that arrived.
    pub fn feed(&mut self, bytes: &[u8]) -> ClientOutcome {
        self.scanner.buf.extend_from_slice(bytes);
        loop {
            let mut legacy = None;
            let found = self.scanner.scan(&mut |p| {
                if legacy.is_none() {
                    legacy = legacy_answer(p);
                }
            });
            if let Some(a) = legacy {
                return ClientOutcome::Failed(ClientHandshakeError::Legacy(a));
            }
            if self.scanner.skipped > MAX_GARBAGE {
                return ClientOutcome::Failed(ClientHandshakeError::NotRba(self.scanner.skipped));
            }
            if !found {
                return ClientOutcome::Pending;
            }
            let buf = &self.scanner.buf;
            if buf.len() < ANSWER_LEN {
                return ClientOutcome::Pending;
            }
            let version = u16::from_be_bytes([buf[5], buf[6]]);
            let status = buf[7];
            let echo = &buf[8..ANSWER_LEN];
            let ours = echo == self.echo;
            let anonymous = echo.iter().all(|&b| b == 0);
            if status == Status::Ok.byte() {
                if buf.len() < ANSWER_LEN + 2 {
                    return ClientOutcome::Pending;
                }
                let len = usize::from(u16::from_be_bytes([buf[ANSWER_LEN], buf[ANSWER_LEN + 1]]));
                if buf.len() < ANSWER_LEN + 2 + len {
                    return ClientOutcome::Pending;
                }
                if !ours {
                    // An answer to an earlier attempt (a resent handshake).
                    self.scanner.consume(ANSWER_LEN + 2 + len);
                    continue;
                }
                let msg2 = buf[ANSWER_LEN + 2..ANSWER_LEN + 2 + len].to_vec();
                let leftover = buf[ANSWER_LEN + 2 + len..].to_vec();
                let Some(mut hs) = self.hs.take() else {
                    return ClientOutcome::Failed(ClientHandshakeError::Noise("handshake already finished".into()));
                };
                let mut scratch = [0u8; MAX_HANDSHAKE_MESSAGE];
                if len > MAX_HANDSHAKE_MESSAGE || hs.read_message(&msg2, &mut scratch).is_err() {
                    return ClientOutcome::Failed(ClientHandshakeError::AuthFailed);
                }
                return match Channel::new(hs, self.mode, leftover) {
                    Ok(c) => ClientOutcome::Established(Box::new(c)),
                    Err(e) => ClientOutcome::Failed(ClientHandshakeError::Noise(e.to_string())),
                };
            }
            if !ours && !anonymous {
                self.scanner.consume(ANSWER_LEN);
                continue;
            }
            return ClientOutcome::Failed(match Status::from_byte(status) {
                Some(Status::VersionMismatch) => {
                    ClientHandshakeError::VersionMismatch { supported: version, requested: PROTOCOL_VERSION }
                }
                Some(s) => ClientHandshakeError::Refused(s),
                None => ClientHandshakeError::NotRba(self.scanner.skipped),
            });
        }
    }
}

/// How the blocking host handshake ended without a channel.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(transparent)]
    Handshake(#[from] ClientHandshakeError),
    #[error("no answer to the handshake after {attempts} attempt(s)")]
    Silent { attempts: u32 },
    #[error("the link closed during the handshake")]
    Closed,
    #[error("link error: {0}")]
    Io(#[from] io::Error),
}

/// The host's handshake over a blocking link with a read timeout: sends
/// the preamble and message 1, waits `timeout` for the answer, and sends a
/// fresh handshake up to `attempts` times in all (a serial device that
/// missed it; answers to earlier attempts are recognised and skipped).
pub fn connect<S: Read + Write>(
    link: &mut S,
    key: Option<&PreSharedKey>,
    timeout: Duration,
    attempts: u32,
) -> Result<Channel, ConnectError> {
    let attempts = attempts.max(1);
    let mut buf = vec![0u8; 4096];
    for _ in 0..attempts {
        let (mut hs, hello) = ClientHandshake::start(key)?;
        link.write_all(&hello)?;
        link.flush()?;
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            match link.read(&mut buf) {
                Ok(0) => return Err(ConnectError::Closed),
                Ok(n) => match hs.feed(&buf[..n]) {
                    ClientOutcome::Pending => {}
                    ClientOutcome::Established(c) => return Ok(*c),
                    ClientOutcome::Failed(e) => return Err(e.into()),
                },
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Err(ConnectError::Silent { attempts })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Feeds `bytes` to a server handshake in pieces of `step`.
    fn feed_server(hs: &mut ServerHandshake, bytes: &[u8], step: usize) -> (Vec<u8>, Outcome) {
        let mut reply = Vec::new();
        let mut out = Outcome::Pending;
        for piece in bytes.chunks(step.max(1)) {
            let f = hs.feed(piece);
            reply.extend(f.reply);
            out = f.outcome;
            if !matches!(out, Outcome::Pending) {
                break;
            }
        }
        (reply, out)
    }

    fn pair(key: Option<&PreSharedKey>, step: usize) -> (Channel, Channel, Identity) {
        let id = Identity::generate().unwrap();
        let (mut c, hello) = ClientHandshake::start(key).unwrap();
        let mut s = ServerHandshake::new(&id, key);
        let (reply, out) = feed_server(&mut s, &hello, step);
        let Outcome::Established(server) = out else { panic!("{out:?}") };
        let mut client = None;
        for piece in reply.chunks(step.max(1)) {
            match c.feed(piece) {
                ClientOutcome::Pending => {}
                ClientOutcome::Established(ch) => client = Some(*ch),
                ClientOutcome::Failed(e) => panic!("{e}"),
            }
        }
        (client.unwrap(), *server, id)
    }

    fn key(b: u8) -> PreSharedKey {
        PreSharedKey::new([b; 32])
    }

    #[test]
    fn fingerprints_are_ssh_style() {
        // ssh-keygen's format: SHA256: and 43 characters of unpadded base64.
        let f = fingerprint(&[0u8; 32]);
        assert_eq!(f, "SHA256:Zmh6rfhivXdsj8GLjp+OIAiXFIVu4jOzkCpZHQ1fKSU");
        assert_eq!(base64_unpadded(b"f"), "Zg");
        assert_eq!(base64_unpadded(b"fo"), "Zm8");
        assert_eq!(base64_unpadded(b"foo"), "Zm9v");
        assert_eq!(base64_unpadded(b"foob"), "Zm9vYg");
    }

    #[test]
    fn handshakes_pin_the_device_key_whatever_the_byte_boundaries() {
        for step in [1, 3, 7, 4096] {
            let k = key(9);
            let (c, s, id) = pair(Some(&k), step);
            assert_eq!(c.remote_static(), Some(*id.public()));
            assert_eq!(c.handshake_hash(), s.handshake_hash());
            assert_eq!(c.mode(), Mode::Psk);
            let (c, _, id) = pair(None, step);
            assert_eq!(c.remote_static(), Some(*id.public()));
            assert_eq!(c.mode(), Mode::Keyless);
        }
        let id = Identity::generate().unwrap();
        assert_eq!(Identity::from_private(id.private()).unwrap().public(), id.public());
    }

    #[test]
    fn wrong_key_and_mode_refusals() {
        let id = Identity::generate().unwrap();
        // Wrong key: the server cannot tell yet; the host fails on message 2.
        let (mut c, hello) = ClientHandshake::start(Some(&key(1))).unwrap();
        let f = ServerHandshake::new(&id, Some(&key(2))).feed(&hello);
        assert!(matches!(f.outcome, Outcome::Established(_)));
        assert!(matches!(c.feed(&f.reply), ClientOutcome::Failed(ClientHandshakeError::AuthFailed)));
        // Keyless host, keyed device; keyed host, keyless device.
        let (mut c, hello) = ClientHandshake::start(None).unwrap();
        let f = ServerHandshake::new(&id, Some(&key(2))).feed(&hello);
        assert!(matches!(f.outcome, Outcome::Failed(HandshakeError::KeyRequired)));
        assert!(matches!(c.feed(&f.reply), ClientOutcome::Failed(ClientHandshakeError::Refused(Status::KeyRequired))));
        let (mut c, hello) = ClientHandshake::start(Some(&key(1))).unwrap();
        let f = ServerHandshake::new(&id, None).feed(&hello);
        assert!(matches!(f.outcome, Outcome::Failed(HandshakeError::NoKey)));
        assert!(matches!(c.feed(&f.reply), ClientOutcome::Failed(ClientHandshakeError::Refused(Status::NoKey))));
        // Busy.
        let (mut c, hello) = ClientHandshake::start(Some(&key(1))).unwrap();
        let f = ServerHandshake::busy(&id).feed(&hello);
        assert!(matches!(c.feed(&f.reply), ClientOutcome::Failed(ClientHandshakeError::Refused(Status::Busy))));
    }

    #[test]
    fn version_one_and_future_peers_are_told() {
        let id = Identity::generate().unwrap();
        // A v1 Hello (garbage before it is skipped).
        let payload = postcard::to_allocvec(&(5u32, 0u32, 0u32, 1u16, "rba")).unwrap();
        let mut wire = vec![0xFF, 0x13, 0x00];
        wire.extend(legacy_frame(&payload));
        let f = ServerHandshake::new(&id, None).feed(&wire);
        assert!(matches!(
            f.outcome,
            Outcome::Failed(HandshakeError::VersionMismatch { supported: PROTOCOL_VERSION, requested: 1 })
        ));
        assert_eq!(f.reply, legacy_version_mismatch(5, PROTOCOL_VERSION, 1));
        // A v1 host reads it as Error(VersionMismatch { 3, 1 }).
        let mut d = FrameDecoder::new(4096);
        let mut got = None;
        d.feed_payloads(&f.reply, |p| got = p.ok().and_then(legacy_answer));
        assert_eq!(got, Some(LegacyAnswer::VersionMismatch { supported: PROTOCOL_VERSION, requested: 1 }));
        // A future preamble: answered with the version this side speaks.
        let mut future = preamble(Mode::Psk);
        future[5..7].copy_from_slice(&(PROTOCOL_VERSION + 1).to_be_bytes());
        let f = ServerHandshake::new(&id, None).feed(&future[..7]);
        assert!(matches!(
            f.outcome,
            Outcome::Failed(HandshakeError::VersionMismatch { requested, .. }) if requested == PROTOCOL_VERSION + 1
        ));
        assert_eq!(f.reply[7], Status::VersionMismatch.byte());
        // A v1 device (or a fake one) answering with an unauthenticated Welcome.
        let (mut c, _) = ClientHandshake::start(Some(&key(1))).unwrap();
        let welcome = postcard::to_allocvec(&(1u32, 1u32, 1u32, 1u16)).unwrap();
        let o = c.feed(&legacy_frame(&welcome));
        assert!(matches!(o, ClientOutcome::Failed(ClientHandshakeError::Legacy(LegacyAnswer::Welcome))), "{o:?}");
        // Garbage alone is bounded.
        let mut s = ServerHandshake::new(&id, None);
        let f = s.feed(&vec![0xAB; MAX_GARBAGE + 10]);
        assert!(matches!(f.outcome, Outcome::Failed(HandshakeError::NotRba(_))));
    }

    #[test]
    fn stale_answers_to_earlier_attempts_are_skipped() {
        let id = Identity::generate().unwrap();
        let k = key(3);
        let (_old, hello1) = ClientHandshake::start(Some(&k)).unwrap();
        let (mut c, hello2) = ClientHandshake::start(Some(&k)).unwrap();
        let r1 = ServerHandshake::new(&id, Some(&k)).feed(&hello1).reply;
        let r2 = ServerHandshake::new(&id, Some(&k)).feed(&hello2).reply;
        let mut both = r1;
        both.extend(r2);
        assert!(matches!(c.feed(&both), ClientOutcome::Established(_)));
    }

    /// A link that returns at most `step` bytes per read and `TimedOut`
    /// every other call.
    struct Trickle {
        data: Vec<u8>,
        pos: usize,
        step: usize,
        tick: bool,
    }

    impl Read for Trickle {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.tick = !self.tick;
            if self.tick {
                return Err(io::ErrorKind::TimedOut.into());
            }
            let n = buf.len().min(self.step).min(self.data.len() - self.pos);
            buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
            self.pos += n;
            Ok(n)
        }
    }

    fn records(c: Channel, writes: &[Vec<u8>]) -> Vec<u8> {
        record_wire(c, writes).0
    }

    /// The wire bytes of `writes` and where each write's bytes are.
    fn record_wire(c: Channel, writes: &[Vec<u8>]) -> (Vec<u8>, Vec<(usize, usize)>) {
        let mut w = c.split(io::empty(), Vec::new()).1;
        let mut spans = Vec::new();
        for b in writes {
            let start = w.get_ref().len();
            w.write_all(b).unwrap();
            spans.push((start, w.get_ref().len() - start));
        }
        (w.into_inner(), spans)
    }

    /// Reads everything (timeouts retried) until EOF or an error.
    fn drain<R: Read>(r: &mut R) -> (Vec<u8>, Option<io::Error>) {
        let mut out = Vec::new();
        let mut buf = [0u8; 10_000];
        loop {
            match r.read(&mut buf) {
                Ok(0) => return (out, None),
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::TimedOut => {}
                Err(e) => return (out, Some(e)),
            }
        }
    }

    #[test]
    fn records_split_large_writes_and_reassemble_across_partial_reads() {
        let (c, s, _) = pair(Some(&key(4)), 4096);
        let big: Vec<u8> = (0..200_000u32).map(|i| (i * 7) as u8).collect();
        let wire = records(c, &[b"hello".to_vec(), big.clone(), Vec::new()]);
        // 5 bytes, then 200000 in 4 records (65519 max each).
        assert_eq!(wire.len(), (5 + 200_000) + 5 * (HEADER_LEN + TAG_LEN));
        for step in [1, 2, 17, 65_537, 1 << 20] {
            let mut r = Trickle { data: wire.clone(), pos: 0, step, tick: false };
            // A fresh reader per pass: same keys, nonces from 0.
            let mut reader = SecureReader { inner: &mut r, rec: RecordReader::new(s.transport.clone(), Vec::new()) };
            let (got, err) = drain(&mut reader);
            assert!(err.is_none(), "step {step}: {err:?}");
            assert_eq!(got.len(), 200_005);
            assert_eq!(&got[..5], b"hello");
            assert!(got[5..] == big[..]);
        }
    }

    fn read_all(s: &Channel, wire: Vec<u8>) -> (Vec<u8>, Option<IntegrityError>) {
        let mut reader =
            SecureReader { inner: io::Cursor::new(wire), rec: RecordReader::new(s.transport.clone(), Vec::new()) };
        let (got, err) = drain(&mut reader);
        (got, err.map(|e| integrity_error(&e).cloned().expect("an integrity error")))
    }

    #[test]
    fn tampered_reordered_replayed_dropped_and_injected_records_fail() {
        let (c, s, _) = pair(Some(&key(5)), 4096);
        let (wire, recs) = record_wire(c, &[b"first".to_vec(), b"second".to_vec(), b"third".to_vec()]);
        assert_eq!(recs.len(), 3);
        let rec = |i: usize| wire[recs[i].0..recs[i].0 + recs[i].1].to_vec();
        assert_eq!(read_all(&s, wire.clone()), (b"firstsecondthird".to_vec(), None));
        // Every single flipped byte is caught, header or body.
        for at in 0..wire.len() {
            let mut bad = wire.clone();
            bad[at] ^= 0x20;
            let (_, err) = read_all(&s, bad);
            assert!(err.is_some(), "flip at {at} undetected");
        }
        let first_fails = |w: Vec<u8>| read_all(&s, w);
        // Reordered.
        let (got, err) = first_fails([rec(0), rec(2), rec(1)].concat());
        assert_eq!((got, err), (b"first".to_vec(), Some(IntegrityError::Record { index: 1 })));
        // Replayed.
        let (got, err) = first_fails([rec(0), rec(0)].concat());
        assert_eq!((got, err), (b"first".to_vec(), Some(IntegrityError::Record { index: 1 })));
        // Dropped.
        let (got, err) = first_fails([rec(0), rec(2)].concat());
        assert_eq!((got, err), (b"first".to_vec(), Some(IntegrityError::Record { index: 1 })));
        // Injected: random bytes, a v1 frame, a preamble (TCP: no restart):
        // caught at the header, without waiting for a length that never comes.
        let random: Vec<u8> = (0..40u8).map(|i| i.wrapping_mul(77)).collect();
        let (got, err) = first_fails([rec(0), random, rec(1)].concat());
        assert_eq!((got, err), (b"first".to_vec(), Some(IntegrityError::Record { index: 1 })));
        let (_, err) = first_fails([rec(0), legacy_frame(&[1, 0, 7, 0, 1, b'x'])].concat());
        assert!(err.is_some());
        let (_, hello) = ClientHandshake::start(Some(&key(5))).unwrap();
        let (_, err) = first_fails([rec(0), hello].concat());
        assert_eq!(err, Some(IntegrityError::UnexpectedPreamble));
        // A record from another session with the same key.
        let (c2, _, _) = pair(Some(&key(5)), 4096);
        let other = records(c2, &[b"first".to_vec()]);
        assert_eq!(first_fails(other).1, Some(IntegrityError::FirstRecord));
        // Truncated mid-record.
        let (_, err) = first_fails(wire[..wire.len() - 3].to_vec());
        assert_eq!(err, Some(IntegrityError::Truncated { index: 2 }));
        // A v1 frame injected mid-stream is answered at once, however long
        // its first bytes would be as a length.
        let mut stalled = rec(0);
        stalled.extend([0x03, 0x02, 0x01]);
        let mut reader =
            SecureReader { inner: io::Cursor::new(stalled), rec: RecordReader::new(s.transport.clone(), Vec::new()) };
        let mut buf = [0u8; 64];
        assert_eq!(reader.read(&mut buf).unwrap(), 5);
        assert!(reader.read(&mut buf).is_err(), "three bytes are not a record");
    }

    #[test]
    fn the_first_record_is_proved_byte_by_byte_and_read_first() {
        for step in [1, 5, 18, 19, 4096] {
            let (c, s, _) = pair(Some(&key(6)), 4096);
            let wire = records(c, &[b"hello record".to_vec(), b"second".to_vec()]);
            let mut first = s.await_first_record();
            let mut proved = None;
            for piece in wire.chunks(step) {
                match first.feed(piece) {
                    Proof::Pending => assert!(first.buffered() <= HEADER_LEN + 64 + step),
                    Proof::Proved(ch) => {
                        proved = Some(ch);
                        break;
                    }
                    Proof::Failed(e) => panic!("step {step}: {e}"),
                }
            }
            let ch = proved.expect("proved");
            assert_eq!(ch.first_record(), Some(&b"hello record"[..]));
            // The rest of the wire after what the proof consumed.
            let used = HEADER_LEN + b"hello record".len() + TAG_LEN;
            let rest = wire[used..].iter().skip(ch.leftover().len()).copied().collect::<Vec<u8>>();
            let mut reader = (*ch).split(io::Cursor::new(rest), io::sink()).0;
            assert_eq!(reader.records(), 1);
            let (got, err) = drain(&mut reader);
            assert!(err.is_none(), "{err:?}");
            assert_eq!(got, b"hello recordsecond");
            assert_eq!(reader.records(), 2);
        }
    }

    #[test]
    fn a_first_record_without_the_key_fails_at_its_header() {
        let id = Identity::generate().unwrap();
        // The host holds another key: the device's side completes, the
        // host's first record does not decrypt.
        let (c, hello) = ClientHandshake::start(Some(&key(1))).unwrap();
        let Outcome::Established(s) = ServerHandshake::new(&id, Some(&key(2))).feed(&hello).outcome else { panic!() };
        drop(c);
        // What a host with key 1 would send: a record under other keys.
        let (other, _, _) = pair(Some(&key(1)), 4096);
        let wire = records(other, &[b"hello".to_vec()]);
        let mut first = s.await_first_record();
        assert!(matches!(first.feed(&wire[..HEADER_LEN - 1]), Proof::Pending));
        assert!(matches!(first.feed(&wire[HEADER_LEN - 1..HEADER_LEN]), Proof::Failed(IntegrityError::FirstRecord)));
        assert!(matches!(first.feed(b"more"), Proof::Failed(_)), "finished");
        // A new preamble instead of a record; a header claiming 3 bytes.
        let (_, s, _) = pair(Some(&key(2)), 4096);
        let mut first = s.await_first_record();
        let (_, again) = ClientHandshake::start(Some(&key(2))).unwrap();
        assert!(matches!(first.feed(&again), Proof::Failed(IntegrityError::UnexpectedPreamble)));
    }

    #[test]
    fn a_reader_that_yields_partial_records_returns_after_each_read() {
        let (c, s, _) = pair(Some(&key(8)), 4096);
        let wire = records(c, &[b"abc".to_vec()]);
        let mut r = Trickle { data: wire.clone(), pos: 0, step: 4, tick: true };
        let mut reader = SecureReader { inner: &mut r, rec: RecordReader::new(s.transport.clone(), Vec::new()) };
        reader.yield_partial_records(true);
        let mut buf = [0u8; 16];
        let mut would_block = 0;
        let got = loop {
            match reader.read(&mut buf) {
                Ok(n) => break buf[..n].to_vec(),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    would_block += 1;
                    assert!(reader.partial_record());
                }
                Err(e) if e.kind() == io::ErrorKind::TimedOut => {}
                Err(e) => panic!("{e}"),
            }
        };
        assert_eq!(got, b"abc");
        assert!(!reader.partial_record());
        // One return per 4-byte read but the last.
        assert_eq!(would_block, wire.len().div_ceil(4) - 1);
    }

    #[test]
    fn a_preamble_restarts_a_serial_reader_and_keeps_the_bytes() {
        let (c, s, _) = pair(None, 4096);
        let mut wire = records(c, &[b"old host".to_vec()]);
        let (_, hello) = ClientHandshake::start(None).unwrap();
        wire.extend(&hello);
        let (mut reader, _) = s.split(io::Cursor::new(wire), io::sink());
        reader.allow_restart(true);
        let (got, err) = drain(&mut reader);
        assert_eq!(got, b"old host");
        assert!(is_restart(&err.unwrap()));
        let (_, unread) = reader.into_restart();
        assert_eq!(unread, hello);
    }
}
