//! Small constructors for ONNX nodes, attributes and tensors, and readers for
//! tensor data, used by graph surgery and by tests that build models.

use super::proto::{
    attribute_proto::AttributeType, tensor_proto::DataType, tensor_shape_proto, type_proto, AttributeProto, NodeProto,
    TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
};

/// An f32 tensor stored as little-endian `raw_data` (the compact form every
/// runtime reads).
pub fn f32_tensor(name: &str, dims: &[usize], values: &[f32]) -> TensorProto {
    TensorProto {
        name: Some(name.into()),
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: Some(DataType::Float as i32),
        raw_data: Some(values.iter().flat_map(|v| v.to_le_bytes()).collect()),
        ..Default::default()
    }
}

/// An int64 tensor (shapes, axes).
pub fn i64_tensor(name: &str, dims: &[usize], values: &[i64]) -> TensorProto {
    TensorProto {
        name: Some(name.into()),
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: Some(DataType::Int64 as i32),
        raw_data: Some(values.iter().flat_map(|v| v.to_le_bytes()).collect()),
        ..Default::default()
    }
}

/// Number of elements of a tensor from its dims.
pub fn element_count(t: &TensorProto) -> usize {
    t.dims.iter().map(|&d| d.max(0) as usize).product()
}

/// The values of a float tensor, whichever field holds them. `None` for
/// other data types or inconsistent sizes.
pub fn f32_values(t: &TensorProto) -> Option<Vec<f32>> {
    if t.data_type() != DataType::Float as i32 {
        return None;
    }
    let n = element_count(t);
    let values: Vec<f32> = match &t.raw_data {
        Some(raw) => raw.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
        None => t.float_data.clone(),
    };
    (values.len() == n).then_some(values)
}

pub fn node(op: &str, name: &str, inputs: &[&str], outputs: &[&str]) -> NodeProto {
    NodeProto {
        op_type: Some(op.into()),
        name: Some(name.into()),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

pub fn attr_ints(name: &str, values: &[i64]) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Ints as i32),
        ints: values.to_vec(),
        ..Default::default()
    }
}

pub fn attr_int(name: &str, value: i64) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Int as i32),
        i: Some(value),
        ..Default::default()
    }
}

pub fn attr_float(name: &str, value: f32) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Float as i32),
        f: Some(value),
        ..Default::default()
    }
}

/// A dimension: a fixed size or a symbolic name such as `batch`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dim {
    Fixed(usize),
    Named(String),
}

/// A float tensor value info (graph input or output) with the given dims.
pub fn f32_value_info(name: &str, dims: &[Dim]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| tensor_shape_proto::Dimension {
            value: Some(match d {
                Dim::Fixed(v) => tensor_shape_proto::dimension::Value::DimValue(*v as i64),
                Dim::Named(s) => tensor_shape_proto::dimension::Value::DimParam(s.clone()),
            }),
            ..Default::default()
        })
        .collect();
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(DataType::Float as i32),
                shape: Some(TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The declared dims of a value info (`None` where the type is not a tensor).
pub fn value_info_dims(vi: &ValueInfoProto) -> Option<Vec<Option<Dim>>> {
    let Some(type_proto::Value::TensorType(t)) = vi.r#type.as_ref()?.value.as_ref() else {
        return None;
    };
    Some(
        t.shape
            .as_ref()?
            .dim
            .iter()
            .map(|d| match &d.value {
                Some(tensor_shape_proto::dimension::Value::DimValue(v)) if *v >= 0 => Some(Dim::Fixed(*v as usize)),
                Some(tensor_shape_proto::dimension::Value::DimParam(s)) => Some(Dim::Named(s.clone())),
                _ => None,
            })
            .collect(),
    )
}

impl std::fmt::Display for Dim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Dim::Fixed(v) => write!(f, "{v}"),
            Dim::Named(s) => write!(f, "{s}"),
        }
    }
}
