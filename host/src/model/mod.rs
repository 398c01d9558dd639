//! A model ready for analysis: the ONNX graph, its index, concrete tensor
//! shapes at batch 1, and its blocks.
//!
//! - [`blocks`]: boundary and block detection.
//! - [`cost`]: parameters and MACs.
//! - [`inspect`]: the `rba inspect` summary.
//! - [`run`]: running a model with tract on the host.

pub mod blocks;
pub mod cost;
pub mod inspect;
pub mod run;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::onnx::graph::GraphIndex;
use crate::onnx::{OnnxError, OnnxModel};
use blocks::{BlockError, BlockMap};
use run::RunError;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Onnx(#[from] OnnxError),
    #[error(transparent)]
    Run(#[from] RunError),
    #[error("{path}: {problem}")]
    Graph { path: PathBuf, problem: String },
    #[error("{path}: {source}")]
    Blocks { path: PathBuf, source: BlockError },
}

pub struct Model {
    pub onnx: OnnxModel,
    pub index: GraphIndex,
    /// Concrete shapes of the tensors tract can name, at batch size 1.
    pub shapes: HashMap<String, Vec<usize>>,
    pub blocks: BlockMap,
}

impl Model {
    /// Reads a model file and finds its blocks (or uses `boundaries`).
    pub fn load(path: impl AsRef<Path>, boundaries: Option<&[String]>) -> Result<Self, ModelError> {
        Self::new(OnnxModel::load(path)?, boundaries)
    }

    pub fn new(onnx: OnnxModel, boundaries: Option<&[String]>) -> Result<Self, ModelError> {
        let path = onnx.path.clone();
        let index =
            GraphIndex::new(onnx.graph()).map_err(|problem| ModelError::Graph { path: path.clone(), problem })?;
        let shapes = run::tensor_shapes(&onnx, 1)?;
        let graph = onnx.graph();
        let blocks = match boundaries {
            Some(names) => BlockMap::from_names(graph, &index, &shapes, names),
            None => BlockMap::detect(graph, &index, &shapes),
        }
        .map_err(|source| ModelError::Blocks { path, source })?;
        Ok(Self { onnx, index, shapes, blocks })
    }
}
