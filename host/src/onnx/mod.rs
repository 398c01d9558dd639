//! ONNX protobuf types and model I/O.

/// Types generated from the vendored official `onnx.proto` (proto2).
#[allow(clippy::all, missing_docs)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/onnx.rs"));
}
