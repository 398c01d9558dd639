//! Talking to boards: how the host reaches a device (serial port or pty,
//! TCP with a pre-shared key, a board profile, the in-process `local` board,
//! the emulated `qemu-aarch64` board), and what it asks of it: deploy a
//! model (skipped when the device already holds the same bytes, resumed
//! after a broken link), benchmark one model or A/B-compare two with a
//! bootstrap confidence interval on the speedup, and evaluate accuracy on
//! an eval bundle built from a dataset.
//!
//! Everything goes through `rba_protocol::Client`:
//!
//! - [`target`]: from options (board profile, port, address, key) to a [`Target`].
//! - [`known`]: the device identities pinned on first use (known-boards file).
//! - [`transport`]: byte streams and reconnecting to a target.
//! - [`local`], [`emulated`]: the boards rba starts itself.
//! - [`session`]: a connected [`Device`]: deploy, benchmark, evaluate.
//! - [`bench`]: benchmark options and the A/B speedup interval.
//! - [`bundle`]: eval bundles built from datasets.
//! - [`activate`]: deploying for production: upload, gates on the device,
//!   the switch of an application's active model.

pub mod activate;
pub mod bench;
pub mod bundle;
pub mod emulated;
pub mod known;
pub mod local;
pub mod session;
pub mod target;
pub mod transport;

use rba_protocol::boards::ProfileError;
use rba_protocol::{BundleError, ClientError, RemoteError};

use crate::data::DataError;
use crate::model::run::RunError;
use crate::onnx::OnnxError;

pub use activate::{deploy_and_activate, ActivationPlan, BoardActivation};
pub use bench::{speedup_ci, AbComparison, BenchOptions, BenchReport, Speedup};
pub use bundle::{build_eval_bundle, EvalSet};
pub use session::{device_name, BenchArm, Deployed, Device, ModelArtifact, Pinning};
pub use target::{LinkOptions, Target};

/// Environment variable with the pre-shared key for TCP boards (when no
/// `--key-file` is given).
pub const KEY_ENV: &str = "RBA_KEY";
/// Baud rate when neither the command line nor the profile names one.
pub const DEFAULT_BAUD: u32 = 115_200;
/// Port when `--addr` names only a host and no profile says otherwise.
pub const DEFAULT_TCP_PORT: u16 = 7878;
/// The board that runs the daemon in this process.
pub const LOCAL_BOARD: &str = "local";
/// The board that runs the cross-built ARM daemon under qemu-user.
pub const QEMU_BOARD: &str = "qemu-aarch64";

#[derive(Debug, thiserror::Error)]
pub enum BoardError {
    #[error("no device given: pass --board NAME (e.g. --board local), --port PATH or --addr HOST:PORT")]
    NoTarget,
    #[error(transparent)]
    Profile(#[from] ProfileError),
    /// A target that cannot be set up (profile, key, missing tools).
    #[error("{device}: {problem}")]
    Setup { device: String, problem: String },
    /// The device or the link to it failed.
    #[error("{}", describe_device_error(device, source))]
    Device {
        device: String,
        #[source]
        source: ClientError,
    },
    /// The device proved another identity than the one pinned for it.
    #[error("{0}")]
    IdentityChanged(Box<IdentityChange>),
    #[error(transparent)]
    Known(#[from] known::KnownError),
    #[error(transparent)]
    Onnx(#[from] OnnxError),
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Run(#[from] RunError),
    #[error("eval bundle: {0}")]
    Bundle(#[from] BundleError),
    #[error("{0}")]
    Usage(String),
}

/// A board that proved another identity than the one pinned for it.
#[derive(Debug, thiserror::Error)]
#[error(
    "{device}: the board's identity changed: it proved {proved}, but {file}:{line} pins {pinned} for {target}. \
     If the board was legitimately replaced or reinstalled, accept its new identity with \
     `rba devices --forget {target}`; otherwise someone may be impersonating it"
)]
pub struct IdentityChange {
    pub device: String,
    pub target: String,
    pub file: String,
    pub line: usize,
    pub pinned: String,
    pub proved: String,
}

/// A device error as the user reads it: which device, what happened, and
/// the hint a user needs for the common cases.
fn describe_device_error(device: &str, e: &ClientError) -> String {
    if let Some(i) = e.integrity() {
        let sessions = match e {
            ClientError::RetriesExhausted { attempts, .. } => format!(" ({attempts} sessions in a row)"),
            _ => String::new(),
        };
        return format!("the link to {device} was tampered with or corrupted{sessions}: {i}; nothing was committed");
    }
    format!("{device}: {}", describe_client_error(e))
}

/// The protocol's messages, with the hint a user needs for the common ones.
fn describe_client_error(e: &ClientError) -> String {
    match e {
        ClientError::AuthFailed | ClientError::Remote(RemoteError::AuthFailed) => format!(
            "authentication failed: the device rejected the key or is not the device you think (check --key-file or ${KEY_ENV})"
        ),
        ClientError::Remote(RemoteError::AuthRequired) => {
            format!("the device requires a pre-shared key: pass --key-file PATH or set ${KEY_ENV}")
        }
        ClientError::Remote(RemoteError::Busy) => {
            "the device is busy with another host; try again when it is done".into()
        }
        ClientError::RetryLater => "the device refuses connections from this address for a while, after failed \
             authentications from it (a wrong key, here or on another host behind the same address); try again \
             later"
            .into(),
        ClientError::DeviceHasNoKey => "the device has no pre-shared key configured, so it cannot prove it is the \
             device you mean: refusing it (give the device the key: rba-device serve --key-file FILE; or, on a \
             serial link you trust, drop --key-file)"
            .into(),
        ClientError::Remote(RemoteError::VersionMismatch { supported, requested }) => format!(
            "the device speaks protocol version {supported}, this rba {requested}: install the same rba version on both sides"
        ),
        ClientError::HandshakeTimeout { attempts } => format!(
            "no answer to the secure handshake after {attempts} attempt(s): is rba-device serving there (at the right \
             baud rate)? It may be an older rba-device (protocol 1), which does not answer it: update it"
        ),
        ClientError::Timeout { attempts } => {
            format!("no answer after {attempts} attempt(s) (is rba-device serving there, at the right baud rate?)")
        }
        ClientError::RetriesExhausted { attempts, last } => {
            format!("gave up after {attempts} attempt(s): {}", describe_client_error(last))
        }
        other => other.to_string(),
    }
}
