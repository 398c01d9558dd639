//! rba host library.
pub mod onnx;
