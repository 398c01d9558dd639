//! rba-testkit: the one test kit of the workspace, used by the integration
//! tests and benches of `rba-host` and `rba-device` and by the end-to-end
//! tests in `tests/` (never by unit tests inside a crate's `src/`).
//!
//! - [`external`]: what a check does when this machine lacks python3 with
//!   onnxruntime, the aarch64 target, the cross gcc or qemu-aarch64: skip
//!   with a message, or fail under `RBA_REQUIRE_EXTERNAL=1` (CI).
//! - [`process`]: the real `rba-device` binary as a child process (built
//!   once when needed, stderr captured, always killed).
//! - [`qemu`]: the emulated aarch64 board (prerequisites, the one cross build).
//! - [`daemon`]: in-process daemons on `spawn_in_process`, quick clients and
//!   requests.
//! - [`net`]: clients of real links, a fault-injecting TCP proxy, raw frame
//!   peers and hand-written framing.
//! - [`models`]: tiny ONNX models built in code (known outputs, known blocks).
//! - [`tensors`]: inputs and comparisons for those models.
//! - [`demo`]: the demo ViT, a compacted variant and eval sets with the
//!   host's own answers.
//! - [`conformance`]: the one routine run over every link to a device.
//! - [`onnxruntime`]: running a model in onnxruntime (Python) as a cross-check.
//! - [`bench`]: what the benches share (inputs, baselines, the results table).

// Panicking is how a test helper fails.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

pub mod bench;
pub mod conformance;
pub mod daemon;
pub mod demo;
pub mod external;
pub mod models;
pub mod net;
pub mod onnxruntime;
pub mod process;
pub mod qemu;
pub mod tensors;

/// Pre-shared key of every keyed daemon the tests start (in-process or a
/// real process) and of the clients talking to them: 64 hex digits, as
/// `rba-device keygen` writes them.
pub const KEY: &str = "7262612d746573742d6b65792d30313233343536373839616263646566303132";

/// A key from its 64 hex digits (panics on anything else: tests only).
pub fn psk(hex: &str) -> rba_protocol::PreSharedKey {
    rba_protocol::PreSharedKey::from_hex(hex.as_bytes()).expect("64 hex digits")
}

/// [`KEY`] as a key.
pub fn test_key() -> rba_protocol::PreSharedKey {
    psk(KEY)
}

/// Writes `hex` to `path` as a key file (mode 0600, as the daemon and the
/// host require).
pub fn write_key_file(path: &Path, hex: &str) {
    std::fs::write(path, format!("{hex}\n")).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
}

/// The workspace root (every member sits one level below it).
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("a workspace member").to_path_buf()
}

pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}
