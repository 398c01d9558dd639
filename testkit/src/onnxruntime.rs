//! Running a model in onnxruntime (its Python package) as a cross-check
//! that what rba writes runs outside tract too. Where python3 cannot import
//! onnxruntime and numpy, checks skip with a message, or fail under
//! `RBA_REQUIRE_EXTERNAL=1` ([`crate::external`]).

use std::path::Path;
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
