//! rba host library: read ONNX models, find their blocks, score and replace
//! redundant ones, and write standard ONNX back.
pub mod analyze;
pub mod blocks;
pub mod capture;
pub mod compact;
pub mod cost;
pub mod data;
pub mod demo;
pub mod fit;
pub mod fold;
pub mod inspect;
pub mod link;
pub mod model;
pub mod npy;
pub mod onnx;
pub mod probe;
pub mod report;
pub mod runtime;
pub mod scores;
pub mod surgery;
