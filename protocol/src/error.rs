//! Errors: [`RemoteError`] travels on the wire; [`FrameError`] is local.

use alloc::string::String;

use serde::{Deserialize, Serialize};

use crate::message::Sha256Digest;

/// A typed error sent by the server as the final response to a request.
/// Append-only: the variant index is on the wire.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum RemoteError {
    #[error("protocol version mismatch: server speaks {supported}, client asked for {requested}")]
    VersionMismatch { supported: u16, requested: u16 },
    #[error("authentication required")]
    AuthRequired,
    #[error("authentication failed (wrong pre-shared key?)")]
    AuthFailed,
    #[error("handshake required before this request")]
    HandshakeRequired,
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("invalid name {0:?}: use [A-Za-z0-9._-]{{1,64}}, not starting with '.'")]
    InvalidName(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("no upload in progress")]
    NoUpload,
    #[error("chunk at offset {got}, expected {expected}")]
    OffsetMismatch { expected: u64, got: u64 },
    #[error("chunk of {got} bytes exceeds the negotiated chunk size {max}")]
    ChunkTooLarge { max: u32, got: u32 },
    #[error("chunk ends at {end}, beyond the announced size {size}")]
    ChunkBeyondSize { size: u64, end: u64 },
    #[error("upload incomplete: {received} of {size} bytes")]
    Incomplete { received: u64, size: u64 },
    #[error("SHA-256 mismatch: the staged data was discarded")]
    ShaMismatch { expected: Sha256Digest, actual: Sha256Digest },
    #[error("artifact of {size} bytes exceeds the limit of {max}")]
    TooLarge { size: u64, max: u64 },
    #[error("device busy")]
    Busy,
    #[error("cancelled")]
    Cancelled,
    #[error("storage error: {0}")]
    Storage(String),
    #[error("runtime error: {0}")]
    Runtime(String),
    #[error("unsupported: {0}")]
    Unsupported(String),
    #[error("internal error: {0}")]
    Internal(String),
    /// Sent by the device, unsolicited (request id 0), before it ends a
    /// session whose host-to-device records failed authentication: the
    /// device-to-host direction is still intact, so the host learns why.
    #[error("the device received a record that failed authentication: {0}")]
    Integrity(String),
}

/// Why a frame was dropped by the decoder (the stream itself goes on).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame exceeds the limit of {max} bytes")]
    TooLarge { max: usize },
    #[error("invalid COBS encoding")]
    Cobs,
    #[error("frame shorter than its CRC")]
    TooShort,
    #[error("CRC mismatch")]
    Crc,
    #[error("undecodable message: {0}")]
    Decode(postcard::Error),
    #[error("trailing bytes after the message")]
    Trailing,
    #[error("cannot encode message: {0}")]
    Encode(postcard::Error),
}
