//! How much memory a model declares, before any runtime touches it.
//!
//! A model of a few hundred bytes can ask tract for terabytes: a
//! `ConstantOfShape` of `[2^40]`, an `Expand` to 16 GiB, a `Range` of
//! 10^12 steps, an input of 2^36 elements. tract folds such constants while
//! it loads the model, so the allocation (and the abort when it fails)
//! happens before the first run. This module sizes every tensor whose shape
//! the model fixes, with checked arithmetic, and refuses a model whose any
//! single tensor, or whose resident and generated tensors together, exceed a
//! memory budget.
//!
//! What is sized (batch = the batch the job runs, for a free first axis):
//!
//! - every graph input and every initializer (and sparse initializer, at its
//!   dense size), every `Constant` node;
//! - the outputs of the generating operators `ConstantOfShape`, `Expand`,
//!   `Range`, `Tile`, `Resize`, `Upsample`, `Pad`, `OneHot`, `RandomNormal`,
//!   `RandomUniform` and `EyeLike`, wherever the inputs that fix their shape
//!   are known: initializers, `Constant` nodes, or small values computed
//!   from them and from known shapes (`Shape`, `Size`, `Gather`, `Slice`,
//!   `Concat`, `Unsqueeze`, `Squeeze`, `Cast`, `Identity`, `Reshape`,
//!   `Add`, `Sub`, `Mul`, `Div`);
//! - the outputs of shape-preserving, broadcasting and shape-moving
//!   operators (element-wise ones, `MatMul`, `Gemm`, `Reshape`, `Flatten`,
//!   `Transpose`, `Concat`) whose input shapes are known.
//!
//! The rules: no single sized tensor may exceed the budget, and the
//! resident tensors (inputs, initializers, constants) plus the generated
//! ones (outputs of the generating operators above) may not exceed it
//! together. Ordinary intermediates are checked one by one but not summed
//! (the runtime frees them as it goes). A product that overflows `u64` is an
//! error of its own. An unknown element type counts 4 bytes (float, what
//! vision models compute in).
//!
//! The check is conservative in one direction only: what it cannot size it
//! leaves alone (a shape computed from the input at run time), so a model
//! that passes may still exhaust memory when it runs; the board runs jobs in
//! a worker process under a memory limit for that.

use std::collections::HashMap;
use std::fmt;

use crate::proto::tensor_proto::DataType;
use crate::proto::tensor_shape_proto::dimension::Value as DimValue;
use crate::proto::type_proto::Value as TypeValue;
use crate::proto::{AttributeProto, GraphProto, ModelProto, NodeProto, TensorProto, ValueInfoProto};

/// Most values of one tensor the check reads or computes: shape tensors,
/// `Range` bounds and `Resize` scales hold a handful.
const MAX_VALUES: u64 = 1024;

/// Bytes of an element of an unknown type (see the module documentation).
const UNKNOWN_ELEMENT_BYTES: u64 = 4;

/// Values the check keeps in all (so that a model of many small constants
/// cannot make the check itself take much memory); past it, values are
/// unknown.
const MAX_KEPT_VALUES: usize = 1 << 20;

/// Highest rank whose shape the check keeps (a higher one is unknown).
const MAX_RANK: usize = 64;

/// Where a tensor comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    Input,
    Initializer,
    /// An output of a node (`op`, node name).
    Node {
        op: String,
        node: String,
    },
}

/// A tensor of the model, as error messages name it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorId {
    pub name: String,
    pub origin: Origin,
}

impl fmt::Display for TensorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.origin {
            Origin::Input => write!(f, "input '{}'", self.name),
            Origin::Initializer => write!(f, "initializer '{}'", self.name),
            Origin::Node { op, node } if node.is_empty() => write!(f, "tensor '{}' (an unnamed {op} node)", self.name),
            Origin::Node { op, node } => write!(f, "tensor '{}' ({op} '{node}')", self.name),
        }
    }
}

/// A tensor whose size the model fixes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SizedTensor {
    pub id: TensorId,
    pub dims: Vec<u64>,
    /// ONNX element type (`DataType`), 0 when unknown.
    pub elem_type: i32,
    pub elements: u64,
    pub bytes: u64,
    /// Counted in the total: an input, a weight, a constant or the output of
    /// a generating operator (not an ordinary intermediate).
    pub in_total: bool,
}

/// What a model declares.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Footprint {
    /// Every sized tensor, in graph order (inputs, initializers, nodes).
    pub tensors: Vec<SizedTensor>,
    /// Bytes of the tensors counted in the total.
    pub total_bytes: u64,
}

impl Footprint {
    /// The largest sized tensor.
    pub fn largest(&self) -> Option<&SizedTensor> {
        largest(self.tensors.iter())
    }
}

/// Why a model does not fit its memory budget.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BudgetError {
    /// One tensor is larger than the budget.
    #[error(
        "{} would hold {} = {}, more than the {} memory budget",
        .tensor.id,
        amount(.tensor.elements, .tensor.elem_type),
        human_bytes(.tensor.bytes),
        human_bytes(*.budget)
    )]
    TooLarge { tensor: Box<SizedTensor>, budget: u64 },
    /// The tensors counted in the total are larger than the budget together.
    #[error(
        "the model's inputs, weights and generated tensors would take {} together ({tensors} tensors; the largest: \
         {} with {} = {}), more than the {} memory budget",
        human_bytes(*.total),
        .largest.id,
        amount(.largest.elements, .largest.elem_type),
        human_bytes(.largest.bytes),
        human_bytes(*.budget)
    )]
    TotalTooLarge { total: u64, tensors: usize, largest: Box<SizedTensor>, budget: u64 },
    /// A tensor's element count or byte size does not fit in a `u64`.
    #[error("{id} would hold {} {}: the size overflows u64 (more than 2^64 {})", dims_text(.dims), unit(*.elem_type), if *.elements_fit { "bytes" } else { "elements" })]
    Overflow { id: TensorId, dims: Vec<u128>, elem_type: i32, elements_fit: bool },
    /// The tensors counted in the total take more than 2^64 bytes together.
    #[error("the model's inputs, weights and generated tensors take more than 2^64 bytes together (u64 overflow)")]
    TotalOverflow,
    /// A node the runtime cannot run sensibly (a `Range` with a zero delta).
    #[error("{id}: {problem}")]
    Invalid { id: TensorId, problem: String },
}

/// Sizes every tensor `model` fixes for `batch` samples per run, and
/// refuses it when one tensor, or the total, exceeds `budget` bytes.
pub fn check(model: &ModelProto, batch: u64, budget: u64) -> Result<Footprint, BudgetError> {
    let footprint = walk(model, batch, Some(budget))?;
    if footprint.total_bytes > budget {
        let counted = footprint.tensors.iter().filter(|t| t.in_total);
        if let Some(largest) = largest(counted.clone()).cloned() {
            return Err(BudgetError::TotalTooLarge {
                total: footprint.total_bytes,
                tensors: counted.count(),
                largest: Box::new(largest),
                budget,
            });
        }
    }
    Ok(footprint)
}

/// Sizes every tensor `model` fixes for `batch` samples per run, with no
/// budget (errors: overflows and invalid nodes only).
pub fn footprint(model: &ModelProto, batch: u64) -> Result<Footprint, BudgetError> {
    walk(model, batch, None)
}

/// The first of the largest tensors.
fn largest<'a>(tensors: impl Iterator<Item = &'a SizedTensor>) -> Option<&'a SizedTensor> {
    tensors.fold(None, |best: Option<&SizedTensor>, t| match best {
        Some(b) if b.bytes >= t.bytes => Some(b),
        _ => Some(t),
    })
}

fn walk(model: &ModelProto, batch: u64, budget: Option<u64>) -> Result<Footprint, BudgetError> {
    let opset = model
        .opset_import
        .iter()
        .find(|o| o.domain().is_empty() || o.domain() == "ai.onnx")
        .map_or(crate::MAX_OPSET, |o| o.version());
    let mut w = Walker {
        opset,
        batch: batch.max(1),
        budget,
        known: HashMap::new(),
        scopes: Vec::new(),
        values_left: MAX_KEPT_VALUES,
        out: Footprint::default(),
    };
    if let Some(g) = &model.graph {
        w.graph(g, true)?;
    }
    Ok(w.out)
}

/// The product of `dims` (0 if any dimension is 0, whatever the others),
/// `None` when it overflows `u64`.
pub fn element_count(dims: &[u64]) -> Option<u64> {
    if dims.contains(&0) {
        return Some(0);
    }
    dims.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d))
}

/// Bytes of one element of ONNX type `elem_type` (4 when unknown; 24, a
/// Rust `String`, for strings; sub-byte types count a whole byte).
pub fn element_bytes(elem_type: i32) -> u64 {
    match DataType::try_from(elem_type) {
        Ok(DataType::Uint8 | DataType::Int8 | DataType::Bool) => 1,
        Ok(DataType::Uint16 | DataType::Int16 | DataType::Float16 | DataType::Bfloat16) => 2,
        Ok(DataType::Float | DataType::Int32 | DataType::Uint32) => 4,
        Ok(DataType::Int64 | DataType::Uint64 | DataType::Double | DataType::Complex64) => 8,
        Ok(DataType::Complex128) => 16,
        Ok(DataType::String) => 24,
        Ok(DataType::Undefined) | Err(_) => UNKNOWN_ELEMENT_BYTES,
        // The 8-, 4- and 2-bit types.
        Ok(_) => 1,
    }
}

/// What the elements of ONNX type `elem_type` are called: "floats",
/// "int64 values", ...
fn unit(elem_type: i32) -> String {
    match DataType::try_from(elem_type) {
        Ok(DataType::Float) => "floats".into(),
        Ok(DataType::Double) => "doubles".into(),
        Ok(DataType::Bool) => "booleans".into(),
        Ok(DataType::String) => "strings".into(),
        Ok(DataType::Undefined) | Err(_) => "values (of an unknown type, 4 bytes assumed)".into(),
        Ok(t) => format!("{} values", t.as_str_name().to_ascii_lowercase()),
    }
}

/// `2^40 floats`, `10^12 int64 values`, `12 floats`.
fn amount(elements: u64, elem_type: i32) -> String {
    format!("{} {}", count_text(u128::from(elements)), unit(elem_type))
}

/// A count as a person reads it: powers of two and of ten from 1024 and
/// 1000 up as `2^k` and `10^k`, anything else in digits.
pub fn count_text(n: u128) -> String {
    if n >= 1024 && n.is_power_of_two() {
        return format!("2^{}", n.trailing_zeros());
    }
    if n >= 1000 {
        let mut k = 0;
        let mut m = n;
        while m.is_multiple_of(10) {
            m /= 10;
            k += 1;
        }
        if m == 1 {
            return format!("10^{k}");
        }
    }
    n.to_string()
}

fn dims_text(dims: &[u128]) -> String {
    if dims.is_empty() {
        return "1 (a scalar)".into();
    }
    dims.iter().map(|&d| count_text(d)).collect::<Vec<_>>().join(" x ")
}

/// Bytes in binary units with at most one decimal: `4 TiB`, `1.2 GiB`,
/// `300 bytes`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} bytes");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    let text = format!("{value:.1}");
    let text = text.strip_suffix(".0").unwrap_or(&text);
    format!("{text} {}", UNITS[unit])
}

/// Small tensor values the check computes with.
#[derive(Clone, Debug, PartialEq)]
enum Values {
    Int(Vec<i64>),
    Float(Vec<f64>),
}

impl Values {
    fn len(&self) -> usize {
        match self {
            Values::Int(v) => v.len(),
            Values::Float(v) => v.len(),
        }
    }

    fn ints(&self) -> Option<Vec<i64>> {
        match self {
            Values::Int(v) => Some(v.clone()),
            Values::Float(_) => None,
        }
    }

    /// The one value of a scalar (or one-element) tensor, as f64.
    fn scalar_f64(&self) -> Option<f64> {
        match self {
            Values::Int(v) if v.len() == 1 => v.first().map(|&x| x as f64),
            Values::Float(v) if v.len() == 1 => v.first().copied(),
            _ => None,
        }
    }

    fn floats(&self) -> Vec<f64> {
        match self {
            Values::Int(v) => v.iter().map(|&x| x as f64).collect(),
            Values::Float(v) => v.clone(),
        }
    }

    /// Converted to an ONNX type: integers truncate floats (saturating).
    fn cast(&self, elem_type: i32) -> Values {
        if is_float(elem_type) {
            Values::Float(self.floats())
        } else {
            match self {
                Values::Int(v) => Values::Int(v.clone()),
                Values::Float(v) => Values::Int(v.iter().map(|&x| x as i64).collect()),
            }
        }
    }

    /// Values at `indices` (negative from the end), `None` if out of range.
    fn gather(&self, indices: &[i64]) -> Option<Values> {
        let n = i64::try_from(self.len()).ok()?;
        let pick = |i: i64| -> Option<usize> {
            let j = if i < 0 { i + n } else { i };
            (0..n).contains(&j).then_some(j as usize)
        };
        Some(match self {
            Values::Int(v) => {
                Values::Int(indices.iter().map(|&i| pick(i).and_then(|j| v.get(j).copied())).collect::<Option<_>>()?)
            }
            Values::Float(v) => {
                Values::Float(indices.iter().map(|&i| pick(i).and_then(|j| v.get(j).copied())).collect::<Option<_>>()?)
            }
        })
    }
}

fn is_float(elem_type: i32) -> bool {
    matches!(
        DataType::try_from(elem_type),
        Ok(DataType::Float | DataType::Double | DataType::Float16 | DataType::Bfloat16)
    )
}

/// What the check knows about one tensor.
#[derive(Clone, Debug, Default)]
struct Info {
    /// ONNX element type, 0 when unknown.
    elem_type: i32,
    dims: Option<Vec<u64>>,
    /// Only for small tensors (at most [`MAX_VALUES`]).
    values: Option<Values>,
}

impl Info {
    fn with_dims(elem_type: i32, dims: Vec<u64>) -> Info {
        Info { elem_type, dims: Some(dims), values: None }
    }

    fn typed(elem_type: i32) -> Info {
        Info { elem_type, dims: None, values: None }
    }
}

const INT64: i32 = DataType::Int64 as i32;
const FLOAT: i32 = DataType::Float as i32;
const BOOL: i32 = DataType::Bool as i32;

/// Operators whose outputs are counted in the total: they make new data
/// of a size their inputs or attributes choose.
const GENERATORS: &[&str] = &[
    "ConstantOfShape",
    "Expand",
    "Range",
    "Tile",
    "Resize",
    "Upsample",
    "Pad",
    "OneHot",
    "RandomNormal",
    "RandomUniform",
    "EyeLike",
    "Constant",
];

/// Element-wise operators of one input: the output has its shape.
const UNARY: &[&str] = &[
    "Identity",
    "Relu",
    "Sigmoid",
    "Tanh",
    "Neg",
    "Abs",
    "Exp",
    "Log",
    "Sqrt",
    "Reciprocal",
    "Floor",
    "Ceil",
    "Round",
    "Sign",
    "Erf",
    "Softmax",
    "LogSoftmax",
    "HardSigmoid",
    "HardSwish",
    "LeakyRelu",
    "Elu",
    "Selu",
    "Celu",
    "Gelu",
    "Clip",
    "Sin",
    "Cos",
    "Tan",
    "Softplus",
    "Softsign",
    "Mish",
    "Dropout",
    "LayerNormalization",
    "BatchNormalization",
    "InstanceNormalization",
    "LpNormalization",
    "LRN",
    "ThresholdedRelu",
    "Shrink",
    "QuantizeLinear",
    "DequantizeLinear",
];

/// Element-wise operators of one input with a boolean output.
const UNARY_BOOL: &[&str] = &["Not", "IsNaN", "IsInf"];

/// Broadcasting operators whose output has the type of the first input.
const BROADCAST: &[&str] =
    &["Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Mod", "PRelu", "BitShift", "Sum", "Mean"];

/// Broadcasting operators with a boolean output.
const BROADCAST_BOOL: &[&str] = &["And", "Or", "Xor", "Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual"];

struct Walker {
    opset: i64,
    batch: u64,
    budget: Option<u64>,
    known: HashMap<String, Info>,
    /// Per subgraph being walked: what its names shadowed, to restore
    /// when it ends (no copy of `known` per subgraph).
    scopes: Vec<Vec<(String, Option<Info>)>>,
    /// Of [`MAX_KEPT_VALUES`].
    values_left: usize,
    out: Footprint,
}

fn attr<'a>(node: &'a NodeProto, name: &str) -> Option<&'a AttributeProto> {
    node.attribute.iter().find(|a| a.name() == name)
}

fn attr_i(node: &NodeProto, name: &str) -> Option<i64> {
    attr(node, name).and_then(|a| a.i)
}

fn attr_ints(node: &NodeProto, name: &str) -> Option<Vec<i64>> {
    attr(node, name).map(|a| a.ints.clone())
}

/// `axis` (negative from the end) in a rank, `None` when outside.
fn norm_axis(axis: i64, rank: usize) -> Option<usize> {
    let r = i64::try_from(rank).ok()?;
    let a = if axis < 0 { axis + r } else { axis };
    (0..r).contains(&a).then_some(a as usize)
}

/// Non-negative `i64`s as dims; `None` if one is negative.
fn as_dims(values: &[i64]) -> Option<Vec<u64>> {
    values.iter().map(|&v| u64::try_from(v).ok()).collect()
}

/// Numpy-style broadcasting of shapes; `None` when they do not broadcast.
fn broadcast(shapes: &[&[u64]]) -> Option<Vec<u64>> {
    let rank = shapes.iter().map(|s| s.len()).max()?;
    let mut out = vec![1u64; rank];
    for s in shapes {
        let offset = rank - s.len();
        for (i, &d) in s.iter().enumerate() {
            let o = &mut out[offset + i];
            if *o == 1 {
                *o = d;
            } else if d != 1 && d != *o {
                return None;
            }
        }
    }
    Some(out)
}

/// The values of a tensor held in the model (initializer or attribute),
/// when it is small and in a type the check computes with.
fn tensor_values(t: &TensorProto, count: u64) -> Option<Values> {
    if count > MAX_VALUES {
        return None;
    }
    let n = usize::try_from(count).ok()?;
    let raw = t.raw_data.as_deref();
    let chunks = |w: usize| -> Option<std::slice::ChunksExact<'_, u8>> {
        let raw = raw?;
        (raw.len() == n * w).then(|| raw.chunks_exact(w))
    };
    let values = match DataType::try_from(t.data_type()).ok()? {
        DataType::Float => match chunks(4) {
            Some(c) => Values::Float(c.map(|b| f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]]))).collect()),
            None => Values::Float(t.float_data.iter().map(|&x| f64::from(x)).collect()),
        },
        DataType::Double => match chunks(8) {
            Some(c) => Values::Float(c.map(|b| f64::from_le_bytes(b.try_into().unwrap_or([0; 8]))).collect()),
            None => Values::Float(t.double_data.clone()),
        },
        DataType::Int64 => match chunks(8) {
            Some(c) => Values::Int(c.map(|b| i64::from_le_bytes(b.try_into().unwrap_or([0; 8]))).collect()),
            None => Values::Int(t.int64_data.clone()),
        },
        DataType::Int32 => match chunks(4) {
            Some(c) => Values::Int(c.map(|b| i64::from(i32::from_le_bytes([b[0], b[1], b[2], b[3]]))).collect()),
            None => Values::Int(t.int32_data.iter().map(|&x| i64::from(x)).collect()),
        },
        DataType::Uint64 => match chunks(8) {
            Some(c) => Values::Int(
                c.map(|b| i64::try_from(u64::from_le_bytes(b.try_into().unwrap_or([0; 8]))).ok())
                    .collect::<Option<_>>()?,
            ),
            None => Values::Int(t.uint64_data.iter().map(|&x| i64::try_from(x).ok()).collect::<Option<_>>()?),
        },
        _ => return None,
    };
    (values.len() == n).then_some(values)
}

impl Walker {
    fn info(&self, name: &str) -> Info {
        if name.is_empty() {
            return Info::default();
        }
        self.known.get(name).cloned().unwrap_or_default()
    }

    fn input(&self, node: &NodeProto, i: usize) -> Info {
        node.input.get(i).map(|n| self.info(n)).unwrap_or_default()
    }

    /// Values of input `i`, if known.
    fn values(&self, node: &NodeProto, i: usize) -> Option<Values> {
        self.input(node, i).values
    }

    /// Records a tensor of `dims`, refusing it when it alone exceeds the
    /// budget or its size overflows.
    fn size(&mut self, id: TensorId, dims: &[u64], elem_type: i32, in_total: bool) -> Result<(), BudgetError> {
        let overflow = |elements_fit| BudgetError::Overflow {
            id: id.clone(),
            dims: dims.iter().map(|&d| u128::from(d)).collect(),
            elem_type,
            elements_fit,
        };
        let elements = element_count(dims).ok_or_else(|| overflow(false))?;
        let bytes = elements.checked_mul(element_bytes(elem_type)).ok_or_else(|| overflow(true))?;
        let tensor = SizedTensor { id: id.clone(), dims: dims.to_vec(), elem_type, elements, bytes, in_total };
        if let Some(budget) = self.budget {
            if bytes > budget {
                return Err(BudgetError::TooLarge { tensor: Box::new(tensor), budget });
            }
        }
        if in_total {
            self.out.total_bytes = self.out.total_bytes.checked_add(bytes).ok_or(BudgetError::TotalOverflow)?;
        }
        self.out.tensors.push(tensor);
        Ok(())
    }

    /// A tensor stored in the model (initializer or `Constant` attribute).
    fn stored(&mut self, t: &TensorProto, id: TensorId) -> Result<Info, BudgetError> {
        let Some(dims) = as_dims(&t.dims) else {
            // Negative dims: the runtime refuses the tensor itself.
            return Ok(Info::typed(t.data_type()));
        };
        self.size(id, &dims, t.data_type(), true)?;
        let values = element_count(&dims).and_then(|n| tensor_values(t, n));
        Ok(Info { elem_type: t.data_type(), dims: Some(dims), values })
    }

    fn graph(&mut self, g: &GraphProto, main: bool) -> Result<(), BudgetError> {
        for t in &g.initializer {
            let id = TensorId { name: t.name().to_string(), origin: Origin::Initializer };
            let info = self.stored(t, id)?;
            self.remember(t.name(), info);
        }
        for s in &g.sparse_initializer {
            let Some(values) = &s.values else { continue };
            let id = TensorId { name: values.name().to_string(), origin: Origin::Initializer };
            let info = match as_dims(&s.dims) {
                Some(dims) => {
                    self.size(id, &dims, values.data_type(), true)?;
                    Info::with_dims(values.data_type(), dims)
                }
                None => Info::typed(values.data_type()),
            };
            self.remember(values.name(), info);
        }
        let initializers: std::collections::HashSet<&str> = g.initializer.iter().map(|t| t.name()).collect();
        for vi in &g.input {
            if initializers.contains(vi.name()) {
                continue;
            }
            // A subgraph's inputs are bound by its parent node (loop
            // counters, carried state): sized there, if anywhere.
            let info = if main { self.graph_input(vi)? } else { Info::default() };
            self.remember(vi.name(), info);
        }
        for node in &g.node {
            self.node(node)?;
        }
        Ok(())
    }

    /// A graph input: its declared type and shape, a free first axis being
    /// the batch; another free axis leaves the shape unknown.
    fn graph_input(&mut self, vi: &ValueInfoProto) -> Result<Info, BudgetError> {
        let Some(TypeValue::TensorType(t)) = vi.r#type.as_ref().and_then(|t| t.value.as_ref()) else {
            return Ok(Info::default());
        };
        let elem_type = t.elem_type();
        let Some(shape) = &t.shape else { return Ok(Info::typed(elem_type)) };
        let mut dims = Vec::with_capacity(shape.dim.len());
        for (axis, d) in shape.dim.iter().enumerate() {
            match &d.value {
                Some(DimValue::DimValue(v)) if *v > 0 => dims.push(*v as u64),
                _ if axis == 0 => dims.push(self.batch),
                _ => return Ok(Info::typed(elem_type)),
            }
        }
        self.size(TensorId { name: vi.name().to_string(), origin: Origin::Input }, &dims, elem_type, true)?;
        Ok(Info::with_dims(elem_type, dims))
    }

    fn node(&mut self, node: &NodeProto) -> Result<(), BudgetError> {
        let op = node.op_type();
        let standard = node.domain().is_empty() || node.domain() == "ai.onnx";
        let outputs = if standard { self.outputs(node)? } else { Vec::new() };
        // Subgraphs (If branches, Loop and Scan bodies) see the names of this
        // scope; their own names do not leak out.
        let mut subgraphs: Vec<&GraphProto> = Vec::new();
        for a in &node.attribute {
            subgraphs.extend(a.g.iter());
            subgraphs.extend(a.graphs.iter());
        }
        if !subgraphs.is_empty() {
            for g in subgraphs {
                self.scopes.push(Vec::new());
                let walked = self.graph(g, false);
                for (name, shadowed) in self.scopes.pop().unwrap_or_default().into_iter().rev() {
                    match shadowed {
                        Some(info) => self.known.insert(name, info),
                        None => self.known.remove(&name),
                    };
                }
                walked?;
            }
        }
        let first = node.input.first().map(|n| self.info(n)).unwrap_or_default();
        for (k, name) in node.output.iter().enumerate() {
            if name.is_empty() {
                continue;
            }
            let info = match outputs.get(k) {
                Some(info) => info.clone(),
                // Unknown shape; most operators keep the type of their first input.
                None if k == 0 && standard => Info::typed(first.elem_type),
                None => Info::default(),
            };
            if let Some(dims) = &info.dims {
                let id = TensorId {
                    name: name.clone(),
                    origin: Origin::Node { op: op.to_string(), node: node.name().to_string() },
                };
                self.size(id, dims, info.elem_type, GENERATORS.contains(&op))?;
            }
            self.remember(name, info);
        }
        Ok(())
    }

    /// Records what is known of `name` (in the current subgraph's scope),
    /// dropping a shape of too high a rank and values past the check's own
    /// allowance.
    fn remember(&mut self, name: &str, mut info: Info) {
        if info.dims.as_ref().is_some_and(|d| d.len() > MAX_RANK) {
            info.dims = None;
        }
        if let Some(v) = &info.values {
            match self.values_left.checked_sub(v.len()) {
                Some(left) => self.values_left = left,
                None => info.values = None,
            }
        }
        let shadowed = self.known.insert(name.to_string(), info);
        if let Some(scope) = self.scopes.last_mut() {
            scope.push((name.to_string(), shadowed));
        }
    }

    /// What is known about a standard node's outputs (fewer entries than
    /// outputs: the rest are unknown).
    fn outputs(&self, node: &NodeProto) -> Result<Vec<Info>, BudgetError> {
        let op = node.op_type();
        let x = self.input(node, 0);
        let one = |info: Info| Ok(vec![info]);
        if UNARY.contains(&op) {
            return one(Info { values: None, ..x });
        }
        if UNARY_BOOL.contains(&op) {
            return one(Info { elem_type: BOOL, dims: x.dims, values: None });
        }
        if BROADCAST.contains(&op) || BROADCAST_BOOL.contains(&op) || op == "Where" {
            let infos: Vec<Info> = (0..node.input.len()).map(|i| self.input(node, i)).collect();
            let shapes: Option<Vec<&[u64]>> = infos.iter().map(|i| i.dims.as_deref()).collect();
            let dims = shapes.and_then(|s| broadcast(&s));
            let elem_type = if BROADCAST_BOOL.contains(&op) {
                BOOL
            } else if op == "Where" {
                infos.get(1).map_or(0, |i| i.elem_type)
            } else {
                x.elem_type
            };
            let values = match (infos.first(), infos.get(1)) {
                (Some(a), Some(b)) if infos.len() == 2 => arithmetic(op, a, b),
                _ => None,
            };
            return one(Info { elem_type, dims, values });
        }
        match op {
            "Constant" => self.constant(node).map(|i| vec![i]),
            "Cast" => {
                let to = attr_i(node, "to").and_then(|t| i32::try_from(t).ok()).unwrap_or(0);
                one(Info { elem_type: to, dims: x.dims, values: x.values.map(|v| v.cast(to)) })
            }
            "CastLike" => {
                let to = self.input(node, 1).elem_type;
                one(Info { elem_type: to, dims: x.dims, values: x.values.map(|v| v.cast(to)) })
            }
            "Shape" => {
                let Some(dims) = x.dims else { return one(Info::typed(INT64)) };
                let rank = i64::try_from(dims.len()).unwrap_or(i64::MAX);
                let clamp = |v: i64| (if v < 0 { v + rank } else { v }).clamp(0, rank) as usize;
                let start = clamp(attr_i(node, "start").unwrap_or(0));
                let end = clamp(attr_i(node, "end").unwrap_or(rank));
                let picked: Vec<u64> = dims.get(start..end.max(start)).unwrap_or_default().to_vec();
                let values: Option<Vec<i64>> = picked.iter().map(|&d| i64::try_from(d).ok()).collect();
                one(Info { elem_type: INT64, dims: Some(vec![picked.len() as u64]), values: values.map(Values::Int) })
            }
            "Size" => {
                let n = x.dims.as_deref().and_then(element_count).and_then(|n| i64::try_from(n).ok());
                one(Info { elem_type: INT64, dims: Some(Vec::new()), values: n.map(|n| Values::Int(vec![n])) })
            }
            "Unsqueeze" | "Squeeze" => {
                let axes = if self.opset >= 13 {
                    self.values(node, 1).and_then(|v| v.ints())
                } else {
                    attr_ints(node, "axes")
                };
                let dims = x.dims.as_deref().and_then(|d| reshape_axes(op, d, axes.as_deref()));
                one(Info { elem_type: x.elem_type, dims, values: x.values })
            }
            "Reshape" => {
                let shape = self.values(node, 1).and_then(|v| v.ints());
                let allow_zero = attr_i(node, "allowzero").unwrap_or(0) != 0;
                let dims = shape.and_then(|s| reshape(x.dims.as_deref(), &s, allow_zero));
                one(Info { elem_type: x.elem_type, dims, values: x.values })
            }
            "Flatten" => {
                let dims = x.dims.as_deref().and_then(|d| {
                    let axis = attr_i(node, "axis").unwrap_or(1);
                    let r = i64::try_from(d.len()).ok()?;
                    let a = if axis < 0 { axis + r } else { axis };
                    let a = usize::try_from(a).ok().filter(|&a| a <= d.len())?;
                    Some(vec![element_count(&d[..a])?, element_count(&d[a..])?])
                });
                one(Info { elem_type: x.elem_type, dims, values: None })
            }
            "Transpose" => {
                let dims = x.dims.as_deref().and_then(|d| {
                    let perm = attr_ints(node, "perm")
                        .unwrap_or_else(|| (0..d.len()).rev().map(|i| i as i64).collect::<Vec<_>>());
                    (perm.len() == d.len())
                        .then(|| perm.iter().map(|&p| norm_axis(p, d.len()).map(|a| d[a])).collect::<Option<Vec<_>>>())
                        .flatten()
                });
                one(Info { elem_type: x.elem_type, dims, values: None })
            }
            "Concat" => {
                let infos: Vec<Info> = (0..node.input.len()).map(|i| self.input(node, i)).collect();
                let axis = attr_i(node, "axis").unwrap_or(0);
                let dims = concat_dims(&infos, axis);
                let values = (infos.len() <= MAX_VALUES as usize)
                    .then(|| concat_values(&infos))
                    .flatten()
                    .filter(|v| v.len() as u64 <= MAX_VALUES);
                one(Info { elem_type: x.elem_type, dims, values })
            }
            "Gather" => {
                let indices = self.input(node, 1);
                let axis = attr_i(node, "axis").unwrap_or(0);
                let dims = match (&x.dims, &indices.dims) {
                    (Some(d), Some(i)) => norm_axis(axis, d.len()).map(|a| [&d[..a], &i[..], &d[a + 1..]].concat()),
                    _ => None,
                };
                let values = match (&x.values, indices.values.as_ref().and_then(Values::ints)) {
                    (Some(v), Some(ix)) if x.dims.as_ref().is_some_and(|d| d.len() == 1) => v.gather(&ix),
                    _ => None,
                };
                one(Info { elem_type: x.elem_type, dims, values })
            }
            "Slice" => one(Info { elem_type: x.elem_type, dims: None, values: self.slice_values(node, &x) }),
            "MatMul" => {
                let b = self.input(node, 1);
                let dims = match (&x.dims, &b.dims) {
                    (Some(a), Some(b)) => matmul_dims(a, b),
                    _ => None,
                };
                one(Info { elem_type: x.elem_type, dims, values: None })
            }
            "Gemm" => {
                let b = self.input(node, 1);
                let dims = match (x.dims.as_deref(), b.dims.as_deref()) {
                    (Some(&[m0, m1]), Some(&[n0, n1])) => {
                        let m = if attr_i(node, "transA").unwrap_or(0) != 0 { m1 } else { m0 };
                        let n = if attr_i(node, "transB").unwrap_or(0) != 0 { n0 } else { n1 };
                        Some(vec![m, n])
                    }
                    _ => None,
                };
                one(Info { elem_type: x.elem_type, dims, values: None })
            }
            "ConstantOfShape" => self.constant_of_shape(node).map(|i| vec![i]),
            "Expand" => {
                let target = self.values(node, 1).and_then(|v| v.ints()).and_then(|t| as_dims(&t));
                let dims = target.and_then(|t| match &x.dims {
                    Some(d) => broadcast(&[d, &t]),
                    // The input's shape unknown: at least the target's.
                    None => Some(t),
                });
                one(Info { elem_type: x.elem_type, dims, values: None })
            }
            "Range" => self.range(node).map(|i| vec![i]),
            "Tile" => {
                let repeats = self.values(node, 1).and_then(|v| v.ints());
                let dims = match (&x.dims, repeats) {
                    (Some(d), Some(r)) if r.len() == d.len() => match as_dims(&r) {
                        Some(r) => Some(self.scaled(node, d, &r)?),
                        None => None,
                    },
                    _ => None,
                };
                one(Info { elem_type: x.elem_type, dims, values: None })
            }
            "Resize" | "Upsample" => {
                let dims = self.resize(node, x.dims.as_deref())?;
                one(Info { elem_type: x.elem_type, dims, values: None })
            }
            "Pad" => {
                let pads = if self.opset >= 11 {
                    self.values(node, 1).and_then(|v| v.ints())
                } else {
                    attr_ints(node, "pads").or_else(|| attr_ints(node, "paddings"))
                };
                let axes = (self.opset >= 18).then(|| self.values(node, 3).and_then(|v| v.ints())).flatten();
                let dims = match (&x.dims, pads) {
                    (Some(d), Some(p)) => pad_dims(d, &p, axes.as_deref()),
                    _ => None,
                };
                one(Info { elem_type: x.elem_type, dims, values: None })
            }
            "OneHot" => {
                let depth = self.values(node, 1).and_then(|v| v.scalar_f64());
                let values_type = self.input(node, 2).elem_type;
                let dims = match (&x.dims, depth) {
                    (Some(d), Some(depth)) if depth >= 0.0 && depth < u64::MAX as f64 => {
                        let axis = attr_i(node, "axis").unwrap_or(-1);
                        let rank = d.len() + 1;
                        norm_axis(axis, rank).map(|a| [&d[..a], &[depth as u64], &d[a..]].concat())
                    }
                    _ => None,
                };
                one(Info { elem_type: values_type, dims, values: None })
            }
            "RandomNormal" | "RandomUniform" => {
                let elem_type = attr_i(node, "dtype").and_then(|t| i32::try_from(t).ok()).unwrap_or(FLOAT);
                let dims = attr_ints(node, "shape").and_then(|s| as_dims(&s));
                one(Info { elem_type, dims, values: None })
            }
            "EyeLike" => {
                let elem_type = attr_i(node, "dtype").and_then(|t| i32::try_from(t).ok()).unwrap_or(x.elem_type);
                one(Info { elem_type, dims: x.dims, values: None })
            }
            "ArgMax" | "ArgMin" | "NonZero" => one(Info::typed(INT64)),
            "TopK" => Ok(vec![Info::typed(x.elem_type), Info::typed(INT64)]),
            _ => Ok(Vec::new()),
        }
    }

    /// A `Constant` node's tensor.
    fn constant(&self, node: &NodeProto) -> Result<Info, BudgetError> {
        for a in &node.attribute {
            let info = match a.name() {
                "value" => match &a.t {
                    Some(t) => {
                        let dims = as_dims(&t.dims);
                        let values = dims.as_deref().and_then(element_count).and_then(|n| tensor_values(t, n));
                        Info { elem_type: t.data_type(), dims, values }
                    }
                    None => continue,
                },
                "sparse_value" => match &a.sparse_tensor {
                    Some(s) => Info {
                        elem_type: s.values.as_ref().map_or(0, |v| v.data_type()),
                        dims: as_dims(&s.dims),
                        values: None,
                    },
                    None => continue,
                },
                "value_float" => Info {
                    elem_type: FLOAT,
                    dims: Some(Vec::new()),
                    values: a.f.map(|f| Values::Float(vec![f64::from(f)])),
                },
                "value_floats" => Info {
                    elem_type: FLOAT,
                    dims: Some(vec![a.floats.len() as u64]),
                    values: (a.floats.len() as u64 <= MAX_VALUES)
                        .then(|| Values::Float(a.floats.iter().map(|&f| f64::from(f)).collect())),
                },
                "value_int" => {
                    Info { elem_type: INT64, dims: Some(Vec::new()), values: a.i.map(|i| Values::Int(vec![i])) }
                }
                "value_ints" => Info {
                    elem_type: INT64,
                    dims: Some(vec![a.ints.len() as u64]),
                    values: (a.ints.len() as u64 <= MAX_VALUES).then(|| Values::Int(a.ints.clone())),
                },
                _ => continue,
            };
            return Ok(info);
        }
        Ok(Info::default())
    }

    fn constant_of_shape(&self, node: &NodeProto) -> Result<Info, BudgetError> {
        let value = attr(node, "value").and_then(|a| a.t.as_ref());
        let elem_type = value.map_or(FLOAT, |t| t.data_type());
        let Some(dims) = self.values(node, 0).and_then(|v| v.ints()).and_then(|s| as_dims(&s)) else {
            return Ok(Info::typed(elem_type));
        };
        let fill = value.and_then(|t| tensor_values(t, 1));
        let values = match (element_count(&dims), fill) {
            (Some(n), Some(Values::Int(v))) if n <= MAX_VALUES => v.first().map(|&x| Values::Int(vec![x; n as usize])),
            (Some(n), Some(Values::Float(v))) if n <= MAX_VALUES => {
                v.first().map(|&x| Values::Float(vec![x; n as usize]))
            }
            (Some(n), None) if n <= MAX_VALUES && value.is_none() => Some(Values::Float(vec![0.0; n as usize])),
            _ => None,
        };
        Ok(Info { elem_type, dims: Some(dims), values })
    }

    fn id(&self, node: &NodeProto, output: usize) -> TensorId {
        TensorId {
            name: node.output.get(output).cloned().unwrap_or_default(),
            origin: Origin::Node { op: node.op_type().to_string(), node: node.name().to_string() },
        }
    }

    /// `Range(start, limit, delta)`: `max(ceil((limit - start) / delta), 0)`
    /// elements.
    fn range(&self, node: &NodeProto) -> Result<Info, BudgetError> {
        let start = self.input(node, 0);
        let elem_type = start.elem_type;
        let bounds = (start.values, self.values(node, 1), self.values(node, 2));
        let (Some(s), Some(l), Some(d)) = bounds else { return Ok(Info::typed(elem_type)) };
        let invalid = |problem: &str| BudgetError::Invalid { id: self.id(node, 0), problem: problem.into() };
        let n: u128 = match (&s, &l, &d) {
            (Values::Int(s), Values::Int(l), Values::Int(d)) if s.len() == 1 && l.len() == 1 && d.len() == 1 => {
                let (s, l, d) = (i128::from(s[0]), i128::from(l[0]), i128::from(d[0]));
                if d == 0 {
                    return Err(invalid("Range with a zero delta never ends"));
                }
                let span = l - s;
                // ceil(span / d) for either sign of d.
                let q = span / d;
                let n = if span % d != 0 && (span > 0) == (d > 0) { q + 1 } else { q };
                u128::try_from(n.max(0)).unwrap_or(0)
            }
            _ => {
                let (Some(s), Some(l), Some(d)) = (s.scalar_f64(), l.scalar_f64(), d.scalar_f64()) else {
                    return Ok(Info::typed(elem_type));
                };
                if d == 0.0 {
                    return Err(invalid("Range with a zero delta never ends"));
                }
                let n = ((l - s) / d).ceil();
                if !n.is_finite() {
                    return Err(invalid("Range with a length that is not a finite number"));
                }
                // Saturating: anything past u128 is an overflow anyway.
                n.max(0.0) as u128
            }
        };
        let Ok(n) = u64::try_from(n) else {
            return Err(BudgetError::Overflow { id: self.id(node, 0), dims: vec![n], elem_type, elements_fit: false });
        };
        let values = (n <= MAX_VALUES).then(|| range_values(&s, &d, n)).flatten();
        Ok(Info { elem_type, dims: Some(vec![n]), values })
    }

    /// `dims[i] * factors[i]`, an overflow being an error naming the node.
    fn scaled(&self, node: &NodeProto, dims: &[u64], factors: &[u64]) -> Result<Vec<u64>, BudgetError> {
        let wide: Vec<u128> = dims.iter().zip(factors).map(|(&d, &f)| u128::from(d) * u128::from(f)).collect();
        wide.iter().map(|&d| u64::try_from(d).ok()).collect::<Option<Vec<u64>>>().ok_or_else(|| BudgetError::Overflow {
            id: self.id(node, 0),
            dims: wide.clone(),
            elem_type: self.input(node, 0).elem_type,
            elements_fit: false,
        })
    }

    /// The output shape of `Resize` / `Upsample`: the `sizes`, else
    /// `floor(dim * scale)`.
    fn resize(&self, node: &NodeProto, input: Option<&[u64]>) -> Result<Option<Vec<u64>>, BudgetError> {
        let resize = node.op_type() == "Resize";
        let policy = attr(node, "keep_aspect_ratio_policy").map(|a| a.s().to_vec());
        if policy.is_some_and(|p| p != b"stretch") {
            // not_larger / not_smaller rescale the sizes: left to the runtime.
            return Ok(None);
        }
        let axes = attr_ints(node, "axes");
        let (scales, sizes) = if resize && self.opset >= 11 {
            (self.values(node, 2), self.values(node, 3))
        } else if resize || self.opset >= 9 {
            (self.values(node, 1), None)
        } else {
            (attr(node, "scales").map(|a| Values::Float(a.floats.iter().map(|&f| f64::from(f)).collect())), None)
        };
        let Some(rank) = input.map(<[u64]>::len).or(axes.as_ref().map(Vec::len)).or(sizes.as_ref().map(Values::len))
        else {
            return Ok(None);
        };
        // Which axes the scales or sizes apply to.
        let targets: Vec<usize> = match &axes {
            Some(a) => match a.iter().map(|&x| norm_axis(x, rank)).collect::<Option<Vec<_>>>() {
                Some(t) => t,
                None => return Ok(None),
            },
            None => (0..rank).collect(),
        };
        if let Some(sizes) = sizes.filter(|s| s.len() > 0).and_then(|s| s.ints()).and_then(|s| as_dims(&s)) {
            if sizes.len() != targets.len() {
                return Ok(None);
            }
            let mut out = match input {
                Some(d) => d.to_vec(),
                None if axes.is_none() => vec![0; rank],
                None => return Ok(None),
            };
            for (&a, &s) in targets.iter().zip(&sizes) {
                out[a] = s;
            }
            return Ok(Some(out));
        }
        let (Some(input), Some(scales)) = (input, scales) else { return Ok(None) };
        let scales = scales.floats();
        if scales.len() != targets.len() || scales.iter().any(|s| !s.is_finite() || *s < 0.0) {
            return Ok(None);
        }
        let mut out: Vec<u128> = input.iter().map(|&d| u128::from(d)).collect();
        for (&a, &s) in targets.iter().zip(&scales) {
            // Saturating: past u128 is an overflow anyway.
            out[a] = (input[a] as f64 * s).floor() as u128;
        }
        match out.iter().map(|&d| u64::try_from(d).ok()).collect::<Option<Vec<u64>>>() {
            Some(dims) => Ok(Some(dims)),
            None => Err(BudgetError::Overflow {
                id: self.id(node, 0),
                dims: out,
                elem_type: self.input(node, 0).elem_type,
                elements_fit: false,
            }),
        }
    }

    /// `Slice` of a small 1-D tensor of known values along axis 0, step 1.
    fn slice_values(&self, node: &NodeProto, x: &Info) -> Option<Values> {
        let values = x.values.as_ref()?;
        if x.dims.as_ref().map(Vec::len) != Some(1) {
            return None;
        }
        let (starts, ends, axes, steps) = if self.opset >= 10 {
            (
                self.values(node, 1)?.ints()?,
                self.values(node, 2)?.ints()?,
                self.values(node, 3).and_then(|v| v.ints()),
                self.values(node, 4).and_then(|v| v.ints()),
            )
        } else {
            (attr_ints(node, "starts")?, attr_ints(node, "ends")?, attr_ints(node, "axes"), None)
        };
        let single = |v: &[i64]| v.len() == 1;
        if !single(&starts) || !single(&ends) {
            return None;
        }
        if axes.as_ref().is_some_and(|a| !(single(a) && matches!(a[0], 0 | -1))) {
            return None;
        }
        if steps.as_ref().is_some_and(|s| s.as_slice() != [1]) {
            return None;
        }
        let n = i64::try_from(values.len()).ok()?;
        let clamp = |v: i64| (if v < 0 { v.saturating_add(n) } else { v }).clamp(0, n);
        let (start, end) = (clamp(starts[0]), clamp(ends[0]));
        let picked: Vec<i64> = (start..end.max(start)).collect();
        values.gather(&picked)
    }
}

/// `a op b` for small integer or float values (same length, or one side a
/// single value); `None` on an overflow, a division by zero or anything
/// else.
fn arithmetic(op: &str, a: &Info, b: &Info) -> Option<Values> {
    let (va, vb) = (a.values.as_ref()?, b.values.as_ref()?);
    let n = va.len().max(vb.len());
    if !(va.len() == n || va.len() == 1) || !(vb.len() == n || vb.len() == 1) || n as u64 > MAX_VALUES {
        return None;
    }
    let at = |len: usize, i: usize| if len == 1 { 0 } else { i };
    match (va, vb) {
        (Values::Int(x), Values::Int(y)) => {
            let f = |p: i64, q: i64| match op {
                "Add" => p.checked_add(q),
                "Sub" => p.checked_sub(q),
                "Mul" => p.checked_mul(q),
                "Div" => p.checked_div(q),
                _ => None,
            };
            (0..n).map(|i| f(x[at(x.len(), i)], y[at(y.len(), i)])).collect::<Option<Vec<_>>>().map(Values::Int)
        }
        _ => {
            let (x, y) = (va.floats(), vb.floats());
            let f = |p: f64, q: f64| match op {
                "Add" => Some(p + q),
                "Sub" => Some(p - q),
                "Mul" => Some(p * q),
                "Div" => Some(p / q),
                _ => None,
            };
            let v: Vec<f64> = (0..n).map(|i| f(x[at(x.len(), i)], y[at(y.len(), i)])).collect::<Option<_>>()?;
            // Mixed types only when the model itself mixes them: keep the
            // first input's kind.
            Some(if matches!(va, Values::Int(_)) { Values::Float(v).cast(INT64) } else { Values::Float(v) })
        }
    }
}

fn range_values(start: &Values, delta: &Values, n: u64) -> Option<Values> {
    Some(match (start, delta) {
        (Values::Int(s), Values::Int(d)) => {
            let (s, d) = (*s.first()?, *d.first()?);
            Values::Int((0..n as i64).map(|i| d.checked_mul(i).and_then(|x| x.checked_add(s))).collect::<Option<_>>()?)
        }
        _ => {
            let (s, d) = (start.scalar_f64()?, delta.scalar_f64()?);
            Values::Float((0..n).map(|i| s + d * i as f64).collect())
        }
    })
}

/// `Unsqueeze` / `Squeeze` of `dims` along `axes`.
fn reshape_axes(op: &str, dims: &[u64], axes: Option<&[i64]>) -> Option<Vec<u64>> {
    if op == "Unsqueeze" {
        let axes = axes?;
        let rank = dims.len() + axes.len();
        let mut ones: Vec<usize> = axes.iter().map(|&a| norm_axis(a, rank)).collect::<Option<_>>()?;
        ones.sort_unstable();
        let mut rest = dims.iter();
        (0..rank).map(|i| if ones.binary_search(&i).is_ok() { Some(1) } else { rest.next().copied() }).collect()
    } else {
        match axes {
            None => Some(dims.iter().copied().filter(|&d| d != 1).collect()),
            Some(axes) => {
                let drop: Vec<usize> = axes.iter().map(|&a| norm_axis(a, dims.len())).collect::<Option<_>>()?;
                Some(dims.iter().enumerate().filter(|(i, _)| !drop.contains(i)).map(|(_, &d)| d).collect())
            }
        }
    }
}

/// `Reshape` to `shape` (0 copies the input's dimension unless `allow_zero`,
/// -1 takes the rest); `None` when it cannot be worked out.
fn reshape(input: Option<&[u64]>, shape: &[i64], allow_zero: bool) -> Option<Vec<u64>> {
    let mut out = Vec::with_capacity(shape.len());
    let mut infer = None;
    for (i, &s) in shape.iter().enumerate() {
        match s {
            -1 if infer.is_none() => {
                infer = Some(i);
                out.push(1);
            }
            0 if !allow_zero => out.push(*input?.get(i)?),
            s => out.push(u64::try_from(s).ok()?),
        }
    }
    if let Some(i) = infer {
        let total = element_count(input?)?;
        let rest = element_count(&out)?;
        if rest == 0 || total % rest != 0 {
            return None;
        }
        out[i] = total / rest;
    }
    if let Some(input) = input {
        // A reshape that changes the element count fails in the runtime.
        if element_count(input)? != element_count(&out)? {
            return None;
        }
    }
    Some(out)
}

fn concat_dims(infos: &[Info], axis: i64) -> Option<Vec<u64>> {
    let first = infos.first()?.dims.clone()?;
    let a = norm_axis(axis, first.len())?;
    let mut out = first;
    out[a] = 0;
    for info in infos {
        let d = info.dims.as_ref()?;
        if d.len() != out.len() {
            return None;
        }
        out[a] = out[a].checked_add(d[a])?;
    }
    Some(out)
}

fn concat_values(infos: &[Info]) -> Option<Values> {
    let mut ints = Vec::new();
    let mut floats = Vec::new();
    let mut any_float = false;
    for info in infos {
        if info.dims.as_ref().is_none_or(|d| d.len() > 1) {
            return None;
        }
        match info.values.as_ref()? {
            Values::Int(v) => {
                ints.extend(v);
                floats.extend(v.iter().map(|&x| x as f64));
            }
            Values::Float(v) => {
                any_float = true;
                floats.extend(v);
            }
        }
    }
    Some(if any_float { Values::Float(floats) } else { Values::Int(ints) })
}

fn matmul_dims(a: &[u64], b: &[u64]) -> Option<Vec<u64>> {
    let (a1, b1) = (a.len() == 1, b.len() == 1);
    let a: Vec<u64> = if a1 { [&[1], a].concat() } else { a.to_vec() };
    let b: Vec<u64> = if b1 { [b, &[1]].concat() } else { b.to_vec() };
    let (&m, &k) = (a.get(a.len().checked_sub(2)?)?, a.last()?);
    let (&k2, &n) = (b.get(b.len().checked_sub(2)?)?, b.last()?);
    if k != k2 {
        return None;
    }
    let mut out = broadcast(&[&a[..a.len() - 2], &b[..b.len() - 2]])?;
    if !a1 {
        out.push(m);
    }
    if !b1 {
        out.push(n);
    }
    Some(out)
}

/// `Pad`: each padded axis grows by its begin and end pads (negative pads
/// crop).
fn pad_dims(dims: &[u64], pads: &[i64], axes: Option<&[i64]>) -> Option<Vec<u64>> {
    let targets: Vec<usize> = match axes {
        Some(a) => a.iter().map(|&x| norm_axis(x, dims.len())).collect::<Option<_>>()?,
        None => (0..dims.len()).collect(),
    };
    if pads.len() != 2 * targets.len() {
        return None;
    }
    let mut out = dims.to_vec();
    for (k, &a) in targets.iter().enumerate() {
        let grown = i128::from(dims[a]) + i128::from(pads[k]) + i128::from(pads[k + targets.len()]);
        out[a] = u64::try_from(grown).ok()?;
    }
    Some(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::build::{attr_int, f32_tensor, f32_value_info, i64_tensor, node, Dim};
    use crate::proto::{attribute_proto::AttributeType, OperatorSetIdProto};

    fn model(graph: GraphProto) -> ModelProto {
        ModelProto {
            ir_version: Some(8),
            opset_import: vec![OperatorSetIdProto { domain: Some(String::new()), version: Some(17) }],
            graph: Some(graph),
            ..Default::default()
        }
    }

    fn tensor_attr(name: &str, t: TensorProto) -> AttributeProto {
        AttributeProto {
            name: Some(name.into()),
            r#type: Some(AttributeType::Tensor as i32),
            t: Some(t),
            ..Default::default()
        }
    }

    /// `y = ConstantOfShape(shape)` with the shape an initializer.
    fn constant_of_shape(shape: &[i64]) -> ModelProto {
        model(GraphProto {
            node: vec![node("ConstantOfShape", "n1", &["shape"], &["y"])],
            initializer: vec![i64_tensor("shape", &[shape.len()], shape)],
            input: vec![f32_value_info("x", &[Dim::Fixed(1)])],
            output: vec![f32_value_info("y", &[])],
            ..Default::default()
        })
    }

    const GIB: u64 = 1 << 30;

    #[test]
    fn counts_and_bytes_are_exact_and_overflow_is_caught() {
        assert_eq!(element_count(&[]), Some(1));
        assert_eq!(element_count(&[3, 4, 5]), Some(60));
        assert_eq!(element_count(&[1 << 32, 1 << 31]), Some(1 << 63));
        assert_eq!(element_count(&[1 << 32, 1 << 32]), None, "2^64 does not fit");
        assert_eq!(element_count(&[u64::MAX, 1]), Some(u64::MAX));
        assert_eq!(element_count(&[1 << 40, 1 << 40, 0]), Some(0), "a zero dimension wins over an overflow");
        assert_eq!(element_bytes(DataType::Float as i32), 4);
        assert_eq!(element_bytes(DataType::Int64 as i32), 8);
        assert_eq!(element_bytes(DataType::Bool as i32), 1);
        assert_eq!(element_bytes(0), 4);
        assert_eq!(count_text(1 << 40), "2^40");
        assert_eq!(count_text(1_000_000_000_000), "10^12");
        assert_eq!(count_text(1000), "10^3");
        assert_eq!(count_text(12), "12");
        assert_eq!(count_text(1_500), "1500");
        assert_eq!(human_bytes(300), "300 bytes");
        assert_eq!(human_bytes(4 << 40), "4 TiB");
        assert_eq!(human_bytes(1_288_490_189), "1.2 GiB");
        assert_eq!(human_bytes(512 << 20), "512 MiB");
        assert_eq!(human_bytes(u64::MAX), "16 EiB");
    }

    #[test]
    fn constant_of_shape_bombs_are_refused_with_names_and_sizes() {
        let budget = 1_288_490_189; // 1.2 GiB
        let e = check(&constant_of_shape(&[1 << 40]), 1, budget).unwrap_err();
        assert_eq!(
            e.to_string(),
            "tensor 'y' (ConstantOfShape 'n1') would hold 2^40 floats = 4 TiB, more than the 1.2 GiB memory budget"
        );
        match e {
            BudgetError::TooLarge { tensor, .. } => {
                assert_eq!((tensor.elements, tensor.bytes), (1 << 40, 4 << 40));
                assert_eq!(tensor.dims, [1 << 40]);
            }
            other => panic!("{other:?}"),
        }
        // Exactly the budget passes; one element more does not.
        let f = check(&constant_of_shape(&[256, 1024]), 1, GIB).unwrap();
        let y = f.tensors.iter().find(|t| t.id.name == "y").unwrap();
        assert_eq!((y.elements, y.bytes, y.in_total), (1 << 18, 1 << 20, true));
        // With the input (4 bytes) and the shape (8 bytes), the total is
        // 1 GiB + 12 bytes.
        assert!(check(&constant_of_shape(&[1 << 28]), 1, GIB + 12).is_ok(), "2^28 floats = 1 GiB fits exactly");
        assert!(check(&constant_of_shape(&[1 << 28]), 1, GIB + 11).is_err());
        assert!(check(&constant_of_shape(&[(1 << 28) + 1]), 1, GIB + 12).is_err());
        // A product past u64.
        let e = check(&constant_of_shape(&[1 << 32, 1 << 32, 1 << 32]), 1, GIB).unwrap_err();
        assert!(matches!(e, BudgetError::Overflow { elements_fit: false, .. }), "{e:?}");
        assert_eq!(
            e.to_string(),
            "tensor 'y' (ConstantOfShape 'n1') would hold 2^32 x 2^32 x 2^32 floats: the size overflows u64 (more \
             than 2^64 elements)"
        );
        // Elements fit, bytes do not: 2^62 floats are 2^64 bytes.
        let e = check(&constant_of_shape(&[1 << 62]), 1, GIB).unwrap_err();
        assert!(matches!(e, BudgetError::Overflow { elements_fit: true, .. }), "{e:?}");
        assert!(e.to_string().ends_with("(more than 2^64 bytes)"), "{e}");
        // A negative dim is the runtime's to refuse.
        assert!(check(&constant_of_shape(&[-1]), 1, GIB).is_ok());
    }

    #[test]
    fn inputs_use_the_batch_and_initializers_count() {
        let g = GraphProto {
            node: vec![node("MatMul", "mm", &["x", "W"], &["y"])],
            initializer: vec![f32_tensor("W", &[4, 3], &[0.0; 12])],
            input: vec![f32_value_info("x", &[Dim::Named("batch".into()), Dim::Fixed(4)])],
            output: vec![f32_value_info("y", &[])],
            ..Default::default()
        };
        let f = footprint(&model(g.clone()), 8).unwrap();
        let by_name = |n: &str| f.tensors.iter().find(|t| t.id.name == n).unwrap().clone();
        assert_eq!(by_name("x").dims, [8, 4]);
        assert_eq!(by_name("W").bytes, 48);
        assert_eq!(by_name("y").dims, [8, 3], "MatMul sized from known shapes");
        assert!(!by_name("y").in_total, "an ordinary intermediate is not summed");
        assert_eq!(f.total_bytes, 8 * 4 * 4 + 48);
        // 2^36 input elements.
        let mut g = g;
        g.input = vec![f32_value_info("x", &[Dim::Fixed(1 << 12), Dim::Fixed(1 << 12), Dim::Fixed(1 << 12)])];
        let e = check(&model(g), 1, GIB).unwrap_err();
        assert_eq!(e.to_string(), "input 'x' would hold 2^36 floats = 256 GiB, more than the 1 GiB memory budget");
    }

    #[test]
    fn the_total_counts_resident_and_generated_tensors() {
        // Two 600 MiB ConstantOfShape outputs: each fits 1 GiB, not both.
        let g = GraphProto {
            node: vec![
                node("ConstantOfShape", "a", &["shape"], &["ya"]),
                node("ConstantOfShape", "b", &["shape"], &["yb"]),
                node("Add", "add", &["ya", "yb"], &["y"]),
            ],
            initializer: vec![i64_tensor("shape", &[1], &[600 << 18])],
            input: vec![f32_value_info("x", &[Dim::Fixed(1)])],
            output: vec![f32_value_info("y", &[])],
            ..Default::default()
        };
        let e = check(&model(g), 1, GIB).unwrap_err();
        assert!(matches!(e, BudgetError::TotalTooLarge { tensors: 4, .. }), "{e:?}");
        assert!(e.to_string().contains("would take 1.2 GiB together"), "{e}");
        assert!(e.to_string().contains("the largest: tensor 'ya' (ConstantOfShape 'a')"), "{e}");
    }

    #[test]
    fn expand_range_tile_resize_and_computed_shapes() {
        let budget = 512 << 20;
        // Expand of a scalar to 16 GiB ([2^16, 2^16] floats).
        let g = GraphProto {
            node: vec![node("Expand", "e", &["one", "shape"], &["y"])],
            initializer: vec![f32_tensor("one", &[], &[1.0]), i64_tensor("shape", &[2], &[1 << 16, 1 << 16])],
            input: vec![f32_value_info("x", &[Dim::Fixed(1)])],
            ..Default::default()
        };
        let e = check(&model(g), 1, budget).unwrap_err();
        assert_eq!(
            e.to_string(),
            "tensor 'y' (Expand 'e') would hold 2^32 floats = 16 GiB, more than the 512 MiB memory budget"
        );
        // Range of 10^12 int64 values; a zero delta.
        let range = |limit: i64, delta: i64| {
            model(GraphProto {
                node: vec![node("Range", "r", &["s", "l", "d"], &["y"])],
                initializer: vec![
                    i64_tensor("s", &[], &[0]),
                    i64_tensor("l", &[], &[limit]),
                    i64_tensor("d", &[], &[delta]),
                ],
                input: vec![f32_value_info("x", &[Dim::Fixed(1)])],
                ..Default::default()
            })
        };
        let e = check(&range(1_000_000_000_000, 1), 1, budget).unwrap_err();
        assert_eq!(
            e.to_string(),
            "tensor 'y' (Range 'r') would hold 10^12 int64 values = 7.3 TiB, more than the 512 MiB memory budget"
        );
        let e = check(&range(10, 0), 1, budget).unwrap_err();
        assert_eq!(e.to_string(), "tensor 'y' (Range 'r'): Range with a zero delta never ends");
        let f = footprint(&range(10, 3), 1).unwrap();
        assert_eq!(f.tensors.last().unwrap().dims, [4], "ceil(10 / 3)");
        let f = footprint(&range(-10, -3), 1).unwrap();
        assert_eq!(f.tensors.last().unwrap().dims, [4], "ceil(-10 / -3)");
        let f = footprint(&range(-10, 3), 1).unwrap();
        assert_eq!(f.tensors.last().unwrap().dims, [0], "an empty range");
        // Tile and Resize of an input, with a shape computed through Shape,
        // Gather, Mul, Unsqueeze and Concat.
        let g = GraphProto {
            node: vec![
                node("Shape", "s", &["x"], &["xs"]),
                node("Gather", "g", &["xs", "i1"], &["w"]),
                node("Mul", "m", &["w", "big"], &["w2"]),
                node("Unsqueeze", "u", &["w2", "axes"], &["w2v"]),
                node("Concat", "c", &["one", "w2v"], &["target"]),
                node("ConstantOfShape", "k", &["target"], &["z"]),
                node("Tile", "t", &["x", "reps"], &["tiled"]),
                node("Resize", "rs", &["x", "", "scales"], &["up"]),
            ],
            initializer: vec![
                i64_tensor("i1", &[], &[1]),
                i64_tensor("big", &[], &[1 << 20]),
                i64_tensor("axes", &[1], &[0]),
                i64_tensor("one", &[1], &[1]),
                i64_tensor("reps", &[2], &[1, 1 << 30]),
                f32_tensor("scales", &[2], &[1.0, 4096.0]),
            ],
            input: vec![f32_value_info("x", &[Dim::Named("N".into()), Dim::Fixed(64)])],
            ..Default::default()
        };
        let f = footprint(&model(g.clone()), 1).unwrap();
        let dims = |n: &str| f.tensors.iter().find(|t| t.id.name == n).unwrap().dims.clone();
        assert_eq!(dims("z"), [1, 64 << 20], "Shape -> Gather -> Mul -> Unsqueeze -> Concat -> ConstantOfShape");
        assert_eq!(dims("tiled"), [1, 64 << 30]);
        assert_eq!(dims("up"), [1, 64 * 4096]);
        let e = check(&model(g), 1, budget).unwrap_err();
        assert!(e.to_string().starts_with("tensor 'tiled' (Tile 't') would hold 2^36 floats = 256 GiB"), "{e}");
    }

    #[test]
    fn constant_nodes_and_a_shape_from_the_input_at_run_time() {
        let mut c = node("Constant", "c", &[], &["shape"]);
        c.attribute.push(tensor_attr("value", i64_tensor("", &[1], &[1 << 29])));
        let mut fill = node("ConstantOfShape", "n", &["shape"], &["y"]);
        fill.attribute.push(tensor_attr("value", f32_tensor("", &[1], &[1.0])));
        let g = GraphProto {
            node: vec![c, fill],
            input: vec![f32_value_info("x", &[Dim::Fixed(1)])],
            ..Default::default()
        };
        let e = check(&model(g), 1, GIB).unwrap_err();
        assert_eq!(
            e.to_string(),
            "tensor 'y' (ConstantOfShape 'n') would hold 2^29 floats = 2 GiB, more than the 1 GiB memory budget"
        );
        // value_int / value_ints attributes.
        let mut c = node("Constant", "c", &[], &["shape"]);
        c.attribute.push(AttributeProto {
            name: Some("value_ints".into()),
            r#type: Some(AttributeType::Ints as i32),
            ints: vec![1 << 20, 1 << 20],
            ..Default::default()
        });
        let g = GraphProto {
            node: vec![c, node("ConstantOfShape", "n", &["shape"], &["y"])],
            input: vec![f32_value_info("x", &[Dim::Fixed(1)])],
            ..Default::default()
        };
        assert!(matches!(check(&model(g), 1, GIB), Err(BudgetError::TooLarge { .. })));
        // A shape from the input's values is unknown until run time: passes.
        let mut cast = node("Cast", "to_int", &["x"], &["xi"]);
        cast.attribute.push(attr_int("to", 7));
        let g = GraphProto {
            node: vec![cast, node("ConstantOfShape", "n", &["xi"], &["y"])],
            input: vec![f32_value_info("x", &[Dim::Fixed(1)])],
            ..Default::default()
        };
        let f = check(&model(g), 1, GIB).unwrap();
        assert_eq!(f.tensors.len(), 2, "the input and its cast: {:?}", f.tensors);
    }

    #[test]
    fn subgraphs_see_the_outer_scope_and_do_not_leak_and_the_check_stays_small() {
        // An If whose branch computes a 2^40 ConstantOfShape from an outer
        // initializer; the branch's own "shape" does not leak out.
        let branch = GraphProto {
            node: vec![node("ConstantOfShape", "inner", &["shape"], &["z"])],
            output: vec![f32_value_info("z", &[])],
            ..Default::default()
        };
        let mut iff = node("If", "if", &["cond"], &["y"]);
        iff.attribute.push(AttributeProto {
            name: Some("then_branch".into()),
            r#type: Some(AttributeType::Graph as i32),
            g: Some(branch),
            ..Default::default()
        });
        let g = GraphProto {
            node: vec![iff],
            initializer: vec![i64_tensor("shape", &[1], &[1 << 40])],
            input: vec![f32_value_info("x", &[Dim::Fixed(1)])],
            ..Default::default()
        };
        let e = check(&model(g), 1, GIB).unwrap_err();
        assert!(e.to_string().starts_with("tensor 'z' (ConstantOfShape 'inner') would hold 2^40 floats"), "{e}");
        // Many copies of a 1024-value constant: the values kept stop at the
        // allowance, and what is past it is simply unknown.
        let mut nodes = Vec::new();
        for i in 0..2000 {
            nodes.push(node("Identity", &format!("id{i}"), &["big"], &[&format!("c{i}")]));
        }
        let g = GraphProto {
            node: nodes,
            initializer: vec![i64_tensor("big", &[1024], &[1; 1024])],
            input: vec![f32_value_info("x", &[Dim::Fixed(1)])],
            ..Default::default()
        };
        let f = footprint(&model(g), 1).unwrap();
        assert_eq!(f.tensors.len(), 2 + 2000, "every copy is still sized");
    }

    #[test]
    fn ordinary_models_pass_with_room_to_spare() {
        // A linear model: weights and input only.
        let g = GraphProto {
            node: vec![node("MatMul", "mm", &["x", "W"], &["xw"]), node("Add", "add", &["xw", "b"], &["y"])],
            initializer: vec![f32_tensor("W", &[4, 3], &[0.5; 12]), f32_tensor("b", &[3], &[0.0; 3])],
            input: vec![f32_value_info("x", &[Dim::Named("batch_size".into()), Dim::Fixed(4)])],
            output: vec![f32_value_info("y", &[Dim::Named("batch_size".into()), Dim::Fixed(3)])],
            ..Default::default()
        };
        let f = check(&model(g), 1, 1 << 20).unwrap();
        assert_eq!(f.total_bytes, 16 + 48 + 12);
        assert_eq!(f.largest().unwrap().id.name, "W");
        // Reshape with 0 and -1, Flatten, Transpose.
        let g = GraphProto {
            node: vec![
                node("Reshape", "r", &["x", "shape"], &["xr"]),
                node("Transpose", "t", &["xr"], &["xt"]),
                node("Flatten", "f", &["xt"], &["y"]),
            ],
            initializer: vec![i64_tensor("shape", &[3], &[0, -1, 4])],
            input: vec![f32_value_info("x", &[Dim::Fixed(2), Dim::Fixed(3), Dim::Fixed(8)])],
            ..Default::default()
        };
        let f = footprint(&model(g), 1).unwrap();
        let dims = |n: &str| f.tensors.iter().find(|t| t.id.name == n).unwrap().dims.clone();
        assert_eq!(dims("xr"), [2, 6, 4]);
        assert_eq!(dims("xt"), [4, 6, 2]);
        assert_eq!(dims("y"), [4, 12]);
    }
}
