//! Reading and writing ONNX files: lossless round trips, external data, and
//! clear errors on bad input.
#![allow(clippy::unwrap_used)] // unwrap_err() states what a test expects

use rba_host::model::blocks::BlockError;
use rba_host::model::{Model, ModelError};
use rba_host::onnx::build::{f32_tensor, f32_value_info, node, Dim};
use rba_host::onnx::proto::GraphProto;
use rba_host::onnx::{DataPlacement, OnnxModel};
use rba_testkit::models::{model, run, token_model, values};
use rba_testkit::tensors::random_input;

#[test]
fn round_trip_is_lossless() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut original = token_model(&[1, 2, 3], 4, 6, Some(12));
    original.set_metadata("rba.note", "kept");
    let path = dir.path().join("m.onnx");
    original.save(&path, &DataPlacement::Inline).expect("save");
    let bytes = std::fs::read(&path).expect("read back");
    assert_eq!(bytes, original.to_bytes(), "file holds exactly the encoded model");
    let back = OnnxModel::load(&path).expect("load");
    assert_eq!(back.proto, original.proto);
    assert_eq!(back.metadata().get("rba.note"), Some(&"kept"));
}

#[test]
fn external_data_round_trip() {
    let dir = tempfile::tempdir().expect("tempdir");
    let original = token_model(&[1, 2, 3], 4, 16, Some(32));
    let path = dir.path().join("ext.onnx");
    original.save(&path, &DataPlacement::External { min_bytes: 1024 }).expect("save");
    let data = dir.path().join("ext.onnx.data");
    assert!(data.exists(), "sidecar written next to the model");
    let model_size = std::fs::metadata(&path).expect("stat").len();
    assert!(model_size < 2000, "weights left the model file ({model_size} bytes)");
    let back = OnnxModel::load(&path).expect("load with external data");
    assert_eq!(back.proto, original.proto, "weights pulled back inline, identical");
    let x = random_input(&[2, 4, 16], 1);
    assert_eq!(run(&back, &x), run(&original, &x));

    std::fs::remove_file(&data).expect("rm");
    let err = OnnxModel::load(&path).unwrap_err().to_string();
    assert!(err.contains("ext.onnx") && err.contains("external data") && err.contains("ext.onnx.data"), "{err}");
}

#[test]
fn external_data_outside_the_model_directory_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let original = token_model(&[1], 4, 16, None);
    let path = dir.path().join("m.onnx");
    original.save(&path, &DataPlacement::External { min_bytes: 16 }).expect("save");
    let mut m = rba_host::onnx::proto::ModelProto::default();
    prost::Message::merge(&mut m, std::fs::read(&path).expect("read").as_slice()).expect("decode");
    for t in m.graph.as_mut().expect("graph").initializer.iter_mut() {
        for e in t.external_data.iter_mut().filter(|e| e.key() == "location") {
            e.value = Some("../../etc/passwd".into());
        }
    }
    std::fs::write(&path, prost::Message::encode_to_vec(&m)).expect("write");
    let err = OnnxModel::load(&path).unwrap_err().to_string();
    assert!(err.contains("outside the model's directory"), "{err}");
}

#[test]
fn truncated_and_foreign_files_are_rejected_with_the_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bytes = token_model(&[1, 2], 4, 6, None).to_bytes();
    let truncated = dir.path().join("truncated.onnx");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).expect("write");
    let err = OnnxModel::load(&truncated).unwrap_err().to_string();
    assert!(err.contains("truncated.onnx") && err.contains("not a valid ONNX model"), "{err}");

    let text = dir.path().join("notes.onnx");
    std::fs::write(&text, "this is not a model\n").expect("write");
    let err = OnnxModel::load(&text).unwrap_err().to_string();
    assert!(err.contains("notes.onnx") && err.contains("not a valid ONNX model"), "{err}");

    let err = OnnxModel::load(dir.path().join("missing.onnx")).unwrap_err().to_string();
    assert!(err.contains("missing.onnx") && err.contains("cannot read"), "{err}");
}

#[test]
fn unknown_opset_is_rejected() {
    let mut m = token_model(&[1], 4, 6, None);
    m.proto.opset_import[0].version = Some(99);
    let err = OnnxModel::from_bytes(&m.to_bytes(), "future.onnx").unwrap_err().to_string();
    assert_eq!(err, "future.onnx: unsupported opset 99 (supported: 7..=23)");
}

#[test]
fn plain_chain_has_no_blocks() {
    let mut g = GraphProto::default();
    g.input.push(f32_value_info("x", &[Dim::Named("b".into()), Dim::Fixed(4)]));
    g.initializer.push(f32_tensor("W", &[4, 4], &values(1, 16, 1.0)));
    g.node.push(node("MatMul", "mm", &["x", "W"], &["h"]));
    g.node.push(node("Relu", "relu", &["h"], &["y"]));
    g.output.push(f32_value_info("y", &[Dim::Named("b".into()), Dim::Fixed(4)]));
    let mut m = model(g);
    m.path = "chain.onnx".into();
    let err = Model::new(m, None).err().expect("no blocks");
    assert!(matches!(&err, ModelError::Blocks { source: BlockError::NoBlocks, .. }));
    assert!(err.to_string().starts_with("chain.onnx: no residual blocks found"), "{err}");
}

#[test]
fn user_boundaries_are_checked() {
    let m = token_model(&[1, 2, 3], 4, 6, Some(8));
    let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let ok = Model::new(m.clone(), Some(&names(&["b2.out", "x", "b0.out"]))).expect("valid boundaries");
    assert_eq!(ok.blocks.boundaries, names(&["x", "b0.out", "b2.out"]), "sorted in data-flow order");
    assert_eq!(ok.blocks.blocks.len(), 2);
    assert_eq!(ok.blocks.blocks[1].params, 2 * ok.blocks.blocks[0].params, "block 2 spans two units");
    let err = |v: &[&str]| Model::new(m.clone(), Some(&names(v))).err().expect("error").to_string();
    assert!(err(&["x", "nope"]).contains("boundary tensor 'nope' does not exist"));
    assert!(err(&["x", "b1.u"]).contains("'b1.u' is not a cut point"));
    assert!(err(&["x"]).contains("at least two boundaries"));
}

#[test]
fn cli_reports_bad_files_in_one_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("broken.onnx");
    std::fs::write(&bad, b"\x08\x07garbage").expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rba"))
        .args(["inspect", bad.to_str().expect("utf8")])
        .output()
        .expect("run rba");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("error: ") && stderr.contains("broken.onnx"), "{stderr}");
    assert!(out.stdout.is_empty());
}
