//! rba-protocol: the wire contract between the rba host and rba-device boards.
//!
//! - [`message`]: every message (postcard-encoded, versioned by
//!   [`PROTOCOL_VERSION`]); [`error::RemoteError`] is the typed error on the wire.
//! - [`frame`]: `COBS(postcard || CRC32) 0x00` framing with a hard size limit
//!   and resynchronisation.
//! - [`client`] / [`server`] (feature `std`): blocking, transport-agnostic
//!   cores over `Read + Write`; the board implements [`server::DeviceHandler`].
//! - [`mem`] (feature `std`): an in-memory duplex link, optionally lossy.
//! - [`secure`] (feature `std`): the secure channel under the framing:
//!   preamble, Noise handshake (`snow`), records; device identities.
//! - [`auth`]: the pre-shared key.
//! - [`stats`], [`bundle`], [`name`]: shared helpers.
//! - [`rng`]: the one splitmix64 generator; [`hex()`]: lower-case hex.
//! - [`activation`], [`gate`], [`time`]: active models per application, the
//!   gates a model must pass on the board, history timestamps.
//!
//! What host and board share beyond the wire (feature `std`), so that neither
//! reaches into the other's crate:
//!
//! - [`keys`]: key files: the pre-shared key (file or environment), key
//!   generation, a device's identity file.
//! - [`serial`] (unix): opening serial ports, with a fallback where the
//!   terminal ioctls are missing (qemu-user).
//! - [`boards`]: board profiles, compiled in and looked up in directories.
//!
//! Diagnostics go through the `log` crate; nothing is printed unless the
//! program installs a logger.
//!
//! The wire format and session state machine are specified in `PROTOCOL.md`.
#![cfg_attr(not(feature = "std"), no_std)]

extern crate alloc;

pub mod activation;
pub mod auth;
pub mod bundle;
pub mod error;
pub mod frame;
pub mod gate;
mod hex;
pub mod message;
pub mod name;
pub mod rng;
pub mod stats;
pub mod time;

#[cfg(feature = "std")]
pub mod boards;
#[cfg(feature = "std")]
pub mod client;
#[cfg(feature = "std")]
pub mod keys;
#[cfg(feature = "std")]
pub mod mem;
#[cfg(feature = "std")]
pub mod secure;
#[cfg(all(feature = "std", unix))]
pub mod serial;
#[cfg(feature = "std")]
pub mod server;
#[cfg(feature = "testing")]
pub mod testing;

pub use activation::{
    ActivateRequest, ActivationOutcome, ActivationResult, ActiveModel, AppStatus, HistoryEntry, HistoryEvent,
    HookOutcome, RollbackRequest,
};
pub use auth::{PreSharedKey, KEY_LEN};
pub use bundle::{BundleError, EvalBundle, TensorF32};
pub use error::{FrameError, RemoteError};
pub use frame::{decode_envelope, encode_frame, FrameDecoder, FrameEncoder, DEFAULT_MAX_FRAME, MAX_CHUNK};
pub use gate::{parse_gates, Gate, GateCheck, GateFigures, GateMetric, GateOp, GateParseError, GateUnit};
pub use hex::{hex, unhex32};
pub use message::*;
pub use name::{is_valid_app_name, is_valid_name, validate_app_name, validate_name};
pub use stats::LatencyStats;

#[cfg(feature = "std")]
pub use client::{Client, ClientConfig, ClientError, Session, UploadProgress};
#[cfg(feature = "std")]
pub use secure::{fingerprint, Identity};
#[cfg(feature = "std")]
pub use server::{serve, serve_proved, serve_tcp, DeviceHandler, Job, ServerConfig, ServerError, SessionEnd};

/// Version of the wire format. Peers must agree exactly.
pub const PROTOCOL_VERSION: u16 = 3;

/// Version of this crate, sent in the handshake.
pub const RBA_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Default upload chunk on serial links: a few hundred ms at 115200 baud,
/// framing overhead about 1%.
pub const DEFAULT_SERIAL_CHUNK: u32 = 4096;

/// Default upload chunk on TCP: large enough that per-chunk round trips
/// do not limit throughput on a LAN.
pub const DEFAULT_TCP_CHUNK: u32 = 256 * 1024;
