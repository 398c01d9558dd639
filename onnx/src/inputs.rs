//! The model inputs a board or the host can run: float tensors whose only
//! free dimension is the batch (the first axis). One rule for both sides, so
//! a model the host accepts is a model the device accepts.

use crate::build::{value_info_dims, Dim};
use crate::proto::tensor_proto::DataType;
use crate::proto::type_proto::Value;
use crate::proto::GraphProto;

/// A graph input with its concrete shape for one batch size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InputSpec {
    pub name: String,
    pub shape: Vec<usize>,
    /// The first axis was symbolic (or unknown) and became the batch.
    pub free_batch: bool,
}

impl InputSpec {
    /// Elements of one input tensor (saturating: a shape whose product
    /// overflows is refused by [`crate::budget`] before anything allocates).
    pub fn elements(&self) -> usize {
        self.shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d)).unwrap_or(usize::MAX)
    }
}

/// Why an input cannot be given a concrete shape.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("input '{input}': {problem}")]
pub struct InputError {
    pub input: String,
    pub problem: String,
}

/// The graph's inputs that are not initializers (older exports list weights
/// as inputs too), in declaration order, with a symbolic or unknown first
/// axis replaced by `batch`. Fixed dimensions stay (a model exported with a
/// fixed batch runs at that batch); any other free dimension is an error.
pub fn declared_inputs(graph: &GraphProto, batch: usize) -> Result<Vec<InputSpec>, InputError> {
    let initializers: std::collections::HashSet<&str> = graph.initializer.iter().map(|t| t.name()).collect();
    let mut specs = Vec::new();
    for vi in graph.input.iter().filter(|i| !initializers.contains(i.name())) {
        let err = |problem: String| InputError { input: vi.name().to_string(), problem };
        let elem_type = match vi.r#type.as_ref().and_then(|t| t.value.as_ref()) {
            Some(Value::TensorType(t)) => t.elem_type(),
            _ => return Err(err("not a tensor".into())),
        };
        if elem_type != DataType::Float as i32 {
            return Err(err(format!("element type {elem_type} (only float32 inputs are supported)")));
        }
        let dims = value_info_dims(vi).ok_or_else(|| err("no declared shape".into()))?;
        let mut shape = Vec::with_capacity(dims.len());
        let mut free_batch = false;
        for (axis, d) in dims.iter().enumerate() {
            match d {
                Some(Dim::Fixed(v)) if *v > 0 => shape.push(*v),
                _ if axis == 0 => {
                    free_batch = true;
                    shape.push(batch);
                }
                Some(Dim::Named(s)) => {
                    return Err(err(format!("dimension {axis} is symbolic ('{s}'); only the batch may be")))
                }
                _ => return Err(err(format!("dimension {axis} is unknown; only the batch may be"))),
            }
        }
        specs.push(InputSpec { name: vi.name().to_string(), shape, free_batch });
    }
    Ok(specs)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::build::{f32_tensor, f32_value_info};

    fn graph(dims: &[Dim]) -> GraphProto {
        GraphProto {
            input: vec![f32_value_info("x", dims), f32_value_info("w", &[Dim::Fixed(2)])],
            initializer: vec![f32_tensor("w", &[2], &[1.0, 2.0])],
            ..Default::default()
        }
    }

    #[test]
    fn only_the_batch_may_be_free() {
        let specs = declared_inputs(&graph(&[Dim::Named("batch".into()), Dim::Fixed(3)]), 4).unwrap();
        assert_eq!(specs, [InputSpec { name: "x".into(), shape: vec![4, 3], free_batch: true }]);
        let specs = declared_inputs(&graph(&[Dim::Fixed(2), Dim::Fixed(3)]), 4).unwrap();
        assert_eq!(specs[0].shape, [2, 3], "a fixed batch stays");
        assert!(!specs[0].free_batch);
        let e = declared_inputs(&graph(&[Dim::Fixed(1), Dim::Named("tokens".into())]), 4).unwrap_err();
        assert_eq!(e.to_string(), "input 'x': dimension 1 is symbolic ('tokens'); only the batch may be");
    }
}
