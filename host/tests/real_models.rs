//! Real third-party exports, too large for the repository. Point
//! `RBA_REAL_MODELS` at a folder of `.onnx` files and run
//! `cargo test -p rba-host --test real_models -- --ignored --nocapture`.

use rba_host::compact::surgery::{replace_spans, Span, Translator};
use rba_host::model::Model;
use rba_host::onnx::OnnxModel;
use rba_testkit::{models, tensors};

fn real_models() -> Vec<std::path::PathBuf> {
    let Ok(dir) = std::env::var("RBA_REAL_MODELS") else {
        eprintln!("skipped: set RBA_REAL_MODELS to a folder of .onnx files");
        return Vec::new();
    };
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("RBA_REAL_MODELS is a readable folder")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "onnx"))
        .collect();
    files.sort();
    files
}

#[test]
#[ignore = "needs RBA_REAL_MODELS (large third-party models)"]
fn real_models_round_trip_detect_and_cut() {
    for path in real_models() {
        let original = std::fs::read(&path).expect("read");
        let onnx = OnnxModel::load(&path).expect("load");
        let lossless = onnx.to_bytes() == original;
        let model = Model::new(onnx.clone(), None).expect("blocks");
        let b = &model.blocks;
        eprintln!(
            "{}: byte-identical re-encode: {lossless}; {} blocks ({} replaceable), boundaries {} .. {}",
            path.display(),
            b.blocks.len(),
            b.replaceable_count(),
            b.boundaries[0],
            b.boundaries[b.boundaries.len() - 1]
        );
        assert!(b.replaceable_count() > 0);
        let first = b.blocks.iter().find(|x| x.replaceable()).expect("replaceable block");
        let span = Span::new(first.index - 1, first.index);
        let slim = replace_spans(&onnx, b, &[(span, Translator::Identity)]).expect("surgery");
        let shape = rba_host::model::run::input_shape(&slim, 1).expect("input shape");
        let x = tensors::random_input(&shape, 1);
        let y = models::run(&slim, &x);
        assert!(y.iter().all(|v| v.is_finite()));
    }
}
