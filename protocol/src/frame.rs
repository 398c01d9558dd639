//! Framing: `COBS(postcard(Envelope) || CRC32-LE) || 0x00`.
//!
//! The same bytes go over serial, pseudo-terminals and TCP. COBS removes every
//! zero byte from the frame body, so a zero always ends a frame and a decoder
//! that lost its place (garbage, a cut cable) is back in sync at the next zero.

use alloc::vec::Vec;

use crate::error::FrameError;
use crate::message::Envelope;

/// CRC-32/ISO-HDLC (the zlib/Ethernet CRC) over the postcard payload.
/// Slice-by-16 tables: ~10x the byte-wise speed for 16 KiB of tables.
pub const CRC32: crc::Crc<u32, crc::Table<16>> = crc::Crc::<u32, crc::Table<16>>::new(&crc::CRC_32_ISO_HDLC);

/// Largest upload chunk any peer may negotiate.
pub const MAX_CHUNK: u32 = 1024 * 1024;

/// Default frame limit: decoded payload plus CRC. Room for a maximal chunk
/// plus its envelope, and for large result messages.
pub const DEFAULT_MAX_FRAME: usize = MAX_CHUNK as usize + 16 * 1024;

/// Smallest frame limit a peer may announce (handshake messages must fit).
pub const MIN_MAX_FRAME: usize = 1024;

/// Bytes of CRC appended to the payload.
pub const CRC_LEN: usize = 4;

/// Upper bound of the COBS-encoded size of a frame body of `len` bytes,
/// without the delimiter (saturating, so any configured limit is safe).
pub const fn max_encoded_len(len: usize) -> usize {
    len.saturating_add(len.div_ceil(254))
}

/// Encodes envelopes into wire frames, reusing its scratch buffer.
#[derive(Debug)]
pub struct FrameEncoder {
    scratch: Vec<u8>,
    max_frame: usize,
}

impl FrameEncoder {
    /// `max_frame`: the *peer's* limit; larger frames are refused here
    /// rather than dropped there.
    pub fn new(max_frame: usize) -> Self {
        FrameEncoder { scratch: Vec::new(), max_frame }
    }

    pub fn set_max_frame(&mut self, max_frame: usize) {
        self.max_frame = max_frame;
    }

    pub fn max_frame(&self) -> usize {
        self.max_frame
    }

    /// Appends the complete frame (delimiter included) to `out`.
    pub fn encode(&mut self, env: &Envelope, out: &mut Vec<u8>) -> Result<(), FrameError> {
        let mut scratch = core::mem::take(&mut self.scratch);
        scratch.clear();
        let result = postcard::to_extend(env, scratch);
        let mut scratch = match result {
            Ok(s) => s,
            Err(e) => return Err(FrameError::Encode(e)),
        };
        let crc = CRC32.checksum(&scratch);
        scratch.extend_from_slice(&crc.to_le_bytes());
        let r = if scratch.len() > self.max_frame {
            Err(FrameError::TooLarge { max: self.max_frame })
        } else {
            let start = out.len();
            out.resize(start + max_encoded_len(scratch.len()), 0);
            let n = cobs::encode(&scratch, &mut out[start..]);
            out.truncate(start + n);
            out.push(0);
            Ok(())
        };
        self.scratch = scratch;
        r
    }
}

/// Encodes one envelope into a fresh frame.
pub fn encode_frame(env: &Envelope, max_frame: usize) -> Result<Vec<u8>, FrameError> {
    let mut out = Vec::new();
    FrameEncoder::new(max_frame).encode(env, &mut out)?;
    Ok(out)
}

/// Decodes a frame payload (CRC already checked and stripped). Trailing
/// bytes are an error: a second implementation must match exactly.
pub fn decode_envelope(payload: &[u8]) -> Result<Envelope, FrameError> {
    match postcard::take_from_bytes::<Envelope>(payload) {
        Ok((env, [])) => Ok(env),
        Ok(_) => Err(FrameError::Trailing),
        Err(e) => Err(FrameError::Decode(e)),
    }
}

/// Counters of a [`FrameDecoder`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DecoderStats {
    pub frames: u64,
    pub dropped: u64,
}

/// Streaming frame decoder with a hard size limit.
///
/// Its buffer never grows beyond `max_encoded_len(max_frame)`: bytes past
/// that without a delimiter are skipped up to the next zero, then decoding
/// resumes. Every bad frame is reported once and dropped.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    max_frame: usize,
    max_body: usize,
    discarding: bool,
    stats: DecoderStats,
}

impl FrameDecoder {
    pub fn new(max_frame: usize) -> Self {
        FrameDecoder {
            buf: Vec::new(),
            max_frame,
            max_body: max_encoded_len(max_frame),
            discarding: false,
            stats: DecoderStats::default(),
        }
    }

    pub fn max_frame(&self) -> usize {
        self.max_frame
    }

    /// Capacity of the internal buffer (for tests of the allocation bound).
    pub fn buffer_capacity(&self) -> usize {
        self.buf.capacity()
    }

    pub fn stats(&self) -> DecoderStats {
        self.stats
    }

    /// Forgets a partial frame (e.g. after reconnecting).
    pub fn reset(&mut self) {
        self.buf.clear();
        self.discarding = false;
    }

    /// Feeds raw link bytes; calls `sink` with the payload (CRC stripped) of
    /// every complete valid frame, or the reason a frame was dropped.
    pub fn feed_payloads(&mut self, mut input: &[u8], mut sink: impl FnMut(Result<&[u8], FrameError>)) {
        while !input.is_empty() {
            let (segment, delimited) = match input.iter().position(|&b| b == 0) {
                Some(i) => (&input[..i], Some(i + 1)),
                None => (input, None),
            };
            self.append(segment, &mut sink);
            match delimited {
                Some(skip) => {
                    self.end_frame(&mut sink);
                    input = &input[skip..];
                }
                None => break,
            }
        }
    }

    /// Like [`feed_payloads`](Self::feed_payloads), decoding each payload
    /// into an [`Envelope`].
    pub fn feed(&mut self, input: &[u8], mut sink: impl FnMut(Result<Envelope, FrameError>)) {
        self.feed_payloads(input, |r| sink(r.and_then(decode_envelope)));
    }

    fn append(&mut self, segment: &[u8], sink: &mut impl FnMut(Result<&[u8], FrameError>)) {
        if self.discarding || segment.is_empty() {
            return;
        }
        let need = self.buf.len() + segment.len();
        if need > self.max_body {
            self.buf.clear();
            self.discarding = true;
            self.stats.dropped += 1;
            sink(Err(FrameError::TooLarge { max: self.max_frame }));
            return;
        }
        if need > self.buf.capacity() {
            // Grow geometrically but never past the limit.
            let target = need.max(self.buf.capacity().saturating_mul(2)).max(256).min(self.max_body);
            self.buf.reserve_exact(target - self.buf.len());
        }
        self.buf.extend_from_slice(segment);
    }

    fn end_frame(&mut self, sink: &mut impl FnMut(Result<&[u8], FrameError>)) {
        if self.discarding {
            self.discarding = false;
            self.buf.clear();
            return;
        }
        if self.buf.is_empty() {
            // Back-to-back delimiters are allowed (a sender may flush with one).
            return;
        }
        let result = match cobs::decode_in_place(&mut self.buf) {
            Err(_) => Err(FrameError::Cobs),
            Ok(n) if n < CRC_LEN => Err(FrameError::TooShort),
            Ok(n) if n > self.max_frame => Err(FrameError::TooLarge { max: self.max_frame }),
            Ok(n) => {
                let (payload, crc) = self.buf[..n].split_at(n - CRC_LEN);
                let mut crc_bytes = [0u8; CRC_LEN];
                crc_bytes.copy_from_slice(crc);
                if CRC32.checksum(payload) == u32::from_le_bytes(crc_bytes) {
                    Ok(payload)
                } else {
                    Err(FrameError::Crc)
                }
            }
        };
        match result {
            Ok(p) => {
                self.stats.frames += 1;
                sink(Ok(p));
            }
            Err(e) => {
                self.stats.dropped += 1;
                sink(Err(e));
            }
        }
        self.buf.clear();
    }
}
