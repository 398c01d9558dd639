//! Loading our ONNX models into tract, the way both the host and the board
//! do it: concrete input shapes (a concrete batch runs faster than a
//! symbolic one and avoids "cannot unify Sym(batch) with Val(1)" on exports
//! that compute shapes), tract's own shape inference instead of the
//! exporter's hints, and the typed model when tract's optimizer fails.

use std::sync::Arc;

use prost::Message;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::internal::InferenceModel;

use crate::inputs::InputSpec;
use crate::proto::type_proto::Value;
use crate::proto::ModelProto;

pub use tract_onnx::prelude::tract_ndarray as nd;

/// A runnable tract plan.
pub type Plan = Arc<TypedRunnableModel>;

/// Parses `proto` with the given concrete inputs (matched to tract's inputs
/// by name). Exporters annotate intermediate tensors and outputs with the
/// symbolic batch ("batch_size"); with concrete inputs those hints cannot
/// unify, and tract infers every shape anyway, so they are dropped.
pub fn inference_model(proto: &ModelProto, inputs: &[InputSpec]) -> TractResult<InferenceModel> {
    let mut proto = proto.clone();
    if let Some(g) = proto.graph.as_mut() {
        g.value_info.clear();
        for o in g.output.iter_mut() {
            if let Some(Value::TensorType(t)) = o.r#type.as_mut().and_then(|t| t.value.as_mut()) {
                t.shape = None;
            }
        }
    }
    let bytes = proto.encode_to_vec();
    let mut model = tract_onnx::onnx().model_for_read(&mut bytes.as_slice())?;
    let names: Vec<String> = model.input_outlets()?.iter().map(|o| model.node(o.node).name.clone()).collect();
    for (ix, name) in names.iter().enumerate() {
        let spec = inputs
            .iter()
            .find(|s| &s.name == name)
            .ok_or_else(|| tract_onnx::tract_core::internal::format_err!("input '{name}' has no declaration"))?;
        model.set_input_fact(ix, f32::fact(&spec.shape).into())?;
    }
    Ok(model)
}

/// Types and optimizes the model into a plan; some exports trip tract's
/// optimizer, and then the typed model runs (`false`).
pub fn into_plan(model: InferenceModel) -> TractResult<(Plan, bool)> {
    let typed = model.into_typed()?;
    let (typed, optimized) = match typed.clone().into_optimized() {
        Ok(opt) => (opt, true),
        Err(_) => (typed, false),
    };
    Ok((typed.into_runnable()?, optimized))
}

/// An output of a run as an f32 array.
pub fn to_f32_array(value: TValue) -> TractResult<nd::ArrayD<f32>> {
    let v = value.cast_to::<f32>()?;
    Ok(v.to_plain_array_view::<f32>()?.to_owned())
}
