//! Running a model in onnxruntime (its Python package) as a cross-check
//! that what rba writes runs outside tract too. Where python3 cannot import
//! onnxruntime and numpy, checks skip with a message, or fail under
//! `RBA_REQUIRE_EXTERNAL=1` ([`crate::external`]).
//!
//! And the ONNX Runtime libraries rba-device's onnxruntime runtime loads in
//! the tests: [`library`] (this machine's, from python's `onnxruntime`
//! package: `capi/libonnxruntime.so.*`, CPU only) and [`aarch64_library`]
//! (PyPI's aarch64 wheel's, fetched into the target directory by
//! `tools/fetch-onnxruntime-aarch64`, for the qemu-aarch64 board).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use rba_host::data::npy;
use rba_host::model::run::nd;

use crate::external;

/// Why onnxruntime cannot run here (and how to install it), if it cannot.
pub fn missing() -> Option<String> {
    static MISSING: OnceLock<Option<String>> = OnceLock::new();
    MISSING
        .get_or_init(|| {
            let probe = Command::new("python3").args(["-c", "import onnxruntime, numpy"]).output();
            match probe {
                Ok(o) if o.status.success() => None,
                Ok(_) => Some("python3 cannot import onnxruntime and numpy (pip install onnxruntime numpy)".into()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    Some("python3 not found (install python3, then pip install onnxruntime numpy)".into())
                }
                Err(e) => Some(format!("python3 does not run: {e} (pip install onnxruntime numpy)")),
            }
        })
        .clone()
}

/// Runs `model` on `input` with onnxruntime's CPU provider; returns its
/// first output. `None` (after saying why) when onnxruntime is not
/// installed; panics instead under `RBA_REQUIRE_EXTERNAL=1`.
#[track_caller]
pub fn run(model: &Path, input: &nd::ArrayD<f32>) -> Option<nd::ArrayD<f32>> {
    if !external::require("the onnxruntime cross-check", missing()) {
        return None;
    }
    let dir = model.parent().expect("model dir");
    let (x, y) = (dir.join("input.npy"), dir.join("output.npy"));
    std::fs::write(&x, npy::to_bytes_f32(input)).expect("write input");
    let script = "import sys, numpy as np, onnxruntime as ort\n\
                  s = ort.InferenceSession(sys.argv[1], providers=['CPUExecutionProvider'])\n\
                  x = np.load(sys.argv[2])\n\
                  np.save(sys.argv[3], s.run(None, {s.get_inputs()[0].name: x})[0].astype(np.float32))\n";
    let out = Command::new("python3").args(["-c", script]).arg(model).arg(&x).arg(&y).output().expect("python3");
    assert!(out.status.success(), "onnxruntime failed: {}", String::from_utf8_lossy(&out.stderr));
    Some(npy::read_f32(&y).expect("read output"))
}

/// The aarch64 ONNX Runtime the qemu tests load (at most 1.27: newer ones
/// crash at load under qemu-user, see `tools/fetch-onnxruntime-aarch64`).
pub const AARCH64_VERSION: &str = "1.20.1";

/// `libonnxruntime.so*` in python3's `onnxruntime` package (`capi/`),
/// found without importing it; or why there is none.
pub fn library() -> Result<PathBuf, String> {
    static LIB: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    LIB.get_or_init(|| {
        let script = "import importlib.util as u\ns = u.find_spec('onnxruntime')\n\
                      print(s.submodule_search_locations[0] if s and s.submodule_search_locations else '')";
        let how = "pip install onnxruntime (1.19 or newer carries capi/libonnxruntime.so.*)";
        let out = Command::new("python3").args(["-c", script]).output().map_err(|e| format!("python3: {e} ({how})"))?;
        let pkg = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if pkg.is_empty() {
            return Err(format!("python3 has no onnxruntime package ({how})"));
        }
        let capi = Path::new(&pkg).join("capi");
        let mut libs: Vec<PathBuf> = std::fs::read_dir(&capi)
            .map_err(|e| format!("{}: {e} ({how})", capi.display()))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("libonnxruntime.so")))
            .collect();
        libs.sort();
        libs.pop().ok_or_else(|| format!("{} holds no libonnxruntime.so* ({how})", capi.display()))
    })
    .clone()
}

/// [`library`], or `None` after skipping `what` with a message (a failure
/// under `RBA_REQUIRE_EXTERNAL=1`).
#[track_caller]
pub fn require_library(what: &str) -> Option<PathBuf> {
    let lib = library();
    external::require(what, lib.as_ref().err().cloned()).then(|| lib.ok()).flatten()
}

/// PyPI's aarch64 `libonnxruntime.so.`[`AARCH64_VERSION`] in the target
/// directory (`onnxruntime-aarch64/<version>/`), or why it is not there.
pub fn aarch64_library() -> Result<PathBuf, String> {
    let lib = crate::target_dir()
        .join("onnxruntime-aarch64")
        .join(AARCH64_VERSION)
        .join(format!("libonnxruntime.so.{AARCH64_VERSION}"));
    if lib.is_file() {
        Ok(lib)
    } else {
        Err(format!(
            "{} is missing: run tools/fetch-onnxruntime-aarch64 {AARCH64_VERSION} (with the same CARGO_TARGET_DIR; \
             .ci/run does)",
            lib.display()
        ))
    }
}
