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
//! - [`transport`]: byte streams and reconnecting to a target.
//! - [`local`], [`emulated`]: the boards rba starts itself.
//! - [`session`]: a connected [`Device`]: deploy, benchmark, evaluate.
//! - [`bench`]: benchmark options and the A/B speedup interval.
//! - [`bundle`]: eval bundles built from datasets.

pub mod bench;
pub mod bundle;
pub mod emulated;
pub mod local;
pub mod session;
pub mod target;
pub mod transport;

use rba_protocol::boards::ProfileError;
use rba_protocol::{BundleError, ClientError, RemoteError};

use crate::data::DataError;
use crate::model::run::RunError;
use crate::onnx::OnnxError;

pub use bench::{speedup_ci, AbComparison, BenchOptions, BenchReport, Speedup};
pub use bundle::{build_eval_bundle, EvalSet};
pub use session::{device_name, Deployed, Device, ModelArtifact};
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
    #[error("{device}: {}", describe_client_error(source))]
    Device {
        device: String,
        #[source]
        source: ClientError,
    },
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

/// The protocol's messages, with the hint a user needs for the common ones.
fn describe_client_error(e: &ClientError) -> String {
    match e {
        ClientError::Remote(RemoteError::AuthFailed) => {
            format!("authentication failed: the device rejected the key (check --key-file or ${KEY_ENV})")
        }
        ClientError::Remote(RemoteError::AuthRequired) => {
            format!("the device requires a pre-shared key: pass --key-file PATH or set ${KEY_ENV}")
        }
        ClientError::Remote(RemoteError::Busy) => {
            "the device is busy with another host; try again when it is done".into()
        }
        ClientError::ServerAuthFailed => "the device did not prove it holds the key (wrong device or key?)".into(),
        ClientError::Timeout { attempts } => {
            format!("no answer after {attempts} attempt(s) (is rba-device serving there, at the right baud rate?)")
        }
        other => other.to_string(),
    }
}
