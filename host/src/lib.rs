//! rba host library: read ONNX models, find their blocks, score and replace
//! redundant ones, write standard ONNX back, and talk to boards.
//!
//! The modules follow the pipeline (see ARCHITECTURE.md):
//!
//! - [`onnx`] (the `rba-onnx` crate): model files, graph queries, tract loading.
//! - [`data`]: datasets, preprocessing, splits, `.npy`/`.npz`.
//! - [`model`]: a model with its blocks, their costs, and running it.
//! - [`calibrate`]: streaming calibration images into sufficient statistics,
//!   and the scores computed from them.
//! - [`fit`]: closed-form maps (least squares), folding them into the graph,
//!   and the linear probe head.
//! - [`compact`]: choosing spans under a budget, graph surgery, held-out
//!   evaluation.
//! - [`board`]: reaching boards and asking them to deploy, benchmark and
//!   evaluate.
//! - [`fleet`]: one command on many boards of an inventory (a bounded pool of
//!   workers, canaries, per-board outcomes).
//! - [`report`]: the JSON reports (typed, versioned), terminal tables, HTML.
//! - [`progress`]: how long work reports itself (the CLI draws bars).
//! - [`demo`]: the embedded demo models and digits.
pub mod board;
pub mod calibrate;
pub mod compact;
pub mod data;
pub mod demo;
pub mod fit;
pub mod fleet;
pub mod model;
pub mod progress;
pub mod report;

pub use rba_onnx as onnx;
