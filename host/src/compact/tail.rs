//! Tail-only verification (METHOD.md, "Selection"): the held-out images'
//! boundary activations are captured once, in the pass that computes the
//! reference outputs, and a candidate compacted model is measured by
//! running only its part after the earliest boundary it changes, fed with
//! the cached activation of that boundary.
//!
//! A *tail* is the compacted ONNX graph cut at a boundary
//! ([`rba_onnx::graph::tail_after`]): the boundary becomes the only input,
//! everything that neither depends on it nor is a constant computation is
//! pruned. Exports that read the original input after the cut (shape
//! computations such as `Shape(pixel_values)` feeding a `Reshape`) get
//! those tensors as initializers, with the values captured at the plan's
//! batch in the same pass; they depend on the input's shape only, which a
//! plan fixes. A tail that would need anything else cannot be built, and
//! that candidate is measured on the whole model instead (counted in
//! [`Verification::full_fallbacks`](super::verify::Verification)).

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::sync::Mutex;

use half::f16;
use half::slice::HalfFloatSliceExt;
use serde::{Deserialize, Serialize};
use tract_onnx::prelude::{DatumType, TValue};

use super::CompactError;
use crate::model::run::{nd, RunError, Runner};
use crate::model::Model;
use crate::onnx::build::{f32_value_info, Dim};
use crate::onnx::proto::tensor_proto::DataType;
use crate::onnx::proto::TensorProto;
use crate::onnx::OnnxModel;

/// How the held-out boundary activations are kept.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CacheOptions {
    /// Bytes the cached activations may take in memory; past it they are
    /// written to a temporary file and read back per batch.
    pub budget: u64,
    /// Store activations as f16 (half the bytes; the tails then start from
    /// rounded activations, see METHOD.md, "Selection").
    pub f16: bool,
}

impl Default for CacheOptions {
    fn default() -> Self {
        Self { budget: default_cache_budget(), f16: false }
    }
}

/// A quarter of the memory available now (`MemAvailable`), or 2 GiB where
/// that cannot be read.
pub fn default_cache_budget() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("MemAvailable:"))?.to_string();
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .map_or(2 << 30, |kib| kib * 1024 / 4)
}

/// What the cache holds, for reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CacheInfo {
    /// Boundaries whose activations are cached.
    pub boundaries: Vec<usize>,
    /// `f32` or `f16`.
    pub precision: String,
    /// Bytes of cached activations.
    pub bytes: u64,
    /// Whether they were written to a temporary file (past the budget).
    pub spilled: bool,
    /// The budget in force.
    pub budget: u64,
    /// Tensors from before a cut that tails read, captured as constants.
    pub constants: Vec<String>,
}

enum Store {
    F32(Vec<f32>),
    F16(Vec<f16>),
    /// In the spill file, from this byte offset, f16 or f32 values.
    File {
        offset: u64,
    },
}

struct Cached {
    name: String,
    /// Shape of one image's activation (no batch axis).
    shape: Vec<usize>,
    store: Store,
}

impl Cached {
    fn elements(&self) -> usize {
        self.shape.iter().product()
    }
}

/// The held-out images' boundary activations and the constants tails need.
pub struct BoundaryCache {
    /// Indexed by boundary; `None` where not cached.
    boundaries: Vec<Option<Cached>>,
    images: usize,
    f16: bool,
    file: Option<Mutex<std::fs::File>>,
    /// Values of tensors from before a cut that tails read (shape
    /// computations on the input), at the plan's batch.
    constants: HashMap<String, TensorProto>,
    /// The batch of the plan the constants were captured with; tails run at it.
    pub batch: usize,
    pub info: CacheInfo,
}

impl BoundaryCache {
    pub fn images(&self) -> usize {
        self.images
    }

    /// Whether boundary `b` is cached.
    pub fn has(&self, b: usize) -> bool {
        self.boundaries.get(b).is_some_and(Option::is_some)
    }

    /// The activations of images `start..start + count` at boundary `b`, as
    /// a `[count, ...]` array.
    fn read(&self, b: usize, start: usize, count: usize) -> Result<nd::ArrayD<f32>, String> {
        let c = self.boundaries.get(b).and_then(Option::as_ref).ok_or(format!("boundary {b} is not cached"))?;
        let e = c.elements();
        let range = start * e..(start + count) * e;
        let values: Vec<f32> = match &c.store {
            Store::F32(v) => v.get(range).ok_or("read past the cache")?.to_vec(),
            Store::F16(v) => {
                let h = v.get(range).ok_or("read past the cache")?;
                let mut out = vec![0f32; h.len()];
                h.convert_to_f32_slice(&mut out);
                out
            }
            Store::File { offset } => {
                let width = if self.f16 { 2 } else { 4 };
                let mut bytes = vec![0u8; count * e * width];
                let file = self.file.as_ref().ok_or("no spill file")?;
                let mut f = file.lock().map_err(|_| "spill file lock poisoned")?;
                f.seek(SeekFrom::Start(offset + (start * e * width) as u64)).map_err(|e| e.to_string())?;
                f.read_exact(&mut bytes).map_err(|e| format!("reading the spill file: {e}"))?;
                if self.f16 {
                    bytes.chunks_exact(2).map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32()).collect()
                } else {
                    bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
                }
            }
        };
        let mut shape = vec![count];
        shape.extend(&c.shape);
        nd::ArrayD::from_shape_vec(shape, values).map_err(|e| e.to_string())
    }

    /// Stores rows `start..start + rows.shape()[0]` of boundary slot `b`.
    fn write(&mut self, b: usize, start: usize, rows: &nd::ArrayD<f32>) -> Result<(), String> {
        let f16_mode = self.f16;
        let Some(c) = self.boundaries.get_mut(b).and_then(Option::as_mut) else { return Ok(()) };
        let e = c.elements();
        let flat: Vec<f32> = rows.iter().copied().collect();
        let at = start * e;
        let to_f16 = |flat: &[f32]| -> Result<Vec<f16>, String> {
            let mut h = vec![f16::ZERO; flat.len()];
            h.convert_from_f32_slice(flat);
            if h.iter().zip(flat).any(|(h, x)| h.is_infinite() && x.is_finite()) {
                return Err(format!(
                    "an activation of boundary {b} ('{}') exceeds the f16 range (65504); cache in f32",
                    c.name
                ));
            }
            Ok(h)
        };
        match &mut c.store {
            Store::F32(v) => v.get_mut(at..at + flat.len()).ok_or("write past the cache")?.copy_from_slice(&flat),
            Store::F16(v) => {
                let h = to_f16(&flat)?;
                v.get_mut(at..at + h.len()).ok_or("write past the cache")?.copy_from_slice(&h);
            }
            Store::File { offset } => {
                let width = if f16_mode { 2 } else { 4 };
                let bytes: Vec<u8> = if f16_mode {
                    to_f16(&flat)?.iter().flat_map(|h| h.to_le_bytes()).collect()
                } else {
                    flat.iter().flat_map(|x| x.to_le_bytes()).collect()
                };
                let file = self.file.as_ref().ok_or("no spill file")?;
                let mut f = file.lock().map_err(|_| "spill file lock poisoned")?;
                f.seek(SeekFrom::Start(*offset + (at * width) as u64)).map_err(|e| e.to_string())?;
                f.write_all(&bytes).map_err(|e| format!("writing the spill file: {e}"))?;
            }
        }
        Ok(())
    }
}

/// How a boundary is declared as a tail's input: its shape with a free batch.
fn boundary_input(name: &str, shape_at_batch_1: &[usize]) -> crate::onnx::proto::ValueInfoProto {
    let mut dims = vec![Dim::Named("batch".into())];
    dims.extend(shape_at_batch_1.iter().skip(1).map(|&d| Dim::Fixed(d)));
    f32_value_info(name, &dims)
}

/// Boundaries a tail can start from: `0..last` with a known shape whose
/// first axis is the batch.
fn cacheable(model: &Model) -> Vec<(usize, String, Vec<usize>)> {
    let b = &model.blocks.boundaries;
    (0..b.len().saturating_sub(1))
        .filter_map(|i| {
            let shape = model.shapes.get(&b[i])?;
            (shape.len() >= 2 && shape[0] == 1).then(|| (i, b[i].clone(), shape.clone()))
        })
        .collect()
}

/// Runs the original model once over `inputs` in batches of `batch`, with
/// every cacheable boundary and every tensor a tail reads from before its
/// cut as extra outputs. Returns the reference outputs (the first output,
/// `[images, K]`) and the cache.
pub fn capture(
    model: &Model,
    inputs: &nd::ArrayD<f32>,
    batch: usize,
    options: &CacheOptions,
) -> Result<(nd::Array2<f32>, BoundaryCache), CompactError> {
    let graph = model.onnx.graph();
    let chosen = cacheable(model);
    let mut needs: Vec<String> = Vec::new();
    for (_, name, shape) in &chosen {
        if let Ok(t) = rba_onnx::graph::tail_after(graph, name, boundary_input(name, shape)) {
            for n in t.needs {
                if !needs.contains(&n) {
                    needs.push(n);
                }
            }
        }
    }
    let names: Vec<String> = chosen.iter().map(|(_, n, _)| n.clone()).collect();
    let with_needs: Vec<String> = names.iter().chain(&needs).cloned().collect();
    let runner = match Runner::new(&model.onnx, batch, &with_needs) {
        Ok(r) => r,
        // A tensor tract does not name: tails that need it fall back.
        Err(RunError::UnknownTensor { .. }) if !needs.is_empty() => {
            needs.clear();
            Runner::new(&model.onnx, batch, &names)?
        }
        Err(e) => return Err(e.into()),
    };
    let own = runner.outputs.len() - names.len() - needs.len();
    let plan_batch = runner.input_shape[0];
    let images = inputs.shape()[0];
    let width = if options.f16 { 2u64 } else { 4 };
    let per_image: u64 = chosen.iter().map(|(_, _, s)| s.iter().skip(1).product::<usize>() as u64).sum();
    let bytes = per_image * images as u64 * width;
    let spilled = bytes > options.budget;
    let file = if spilled {
        let f = tempfile::tempfile().map_err(|e| CompactError::Cache(format!("cannot create a spill file: {e}")))?;
        f.set_len(bytes).map_err(|e| CompactError::Cache(format!("cannot size the spill file: {e}")))?;
        Some(Mutex::new(f))
    } else {
        None
    };
    let mut slots: Vec<Option<Cached>> = (0..model.blocks.boundaries.len()).map(|_| None).collect();
    let mut offset = 0u64;
    for (i, name, shape) in &chosen {
        let shape: Vec<usize> = shape[1..].to_vec();
        let n = shape.iter().product::<usize>() * images;
        let store = match (spilled, options.f16) {
            (true, _) => Store::File { offset },
            (false, false) => Store::F32(vec![0f32; n]),
            (false, true) => Store::F16(vec![f16::ZERO; n]),
        };
        offset += n as u64 * width;
        slots[*i] = Some(Cached { name: name.clone(), shape, store });
    }
    let mut cache = BoundaryCache {
        boundaries: slots,
        images,
        f16: options.f16,
        file,
        constants: HashMap::new(),
        batch: plan_batch,
        info: CacheInfo {
            boundaries: chosen.iter().map(|(i, _, _)| *i).collect(),
            precision: if options.f16 { "f16" } else { "f32" }.into(),
            bytes,
            spilled,
            budget: options.budget,
            constants: Vec::new(),
        },
    };
    let run_err = |reason: String| RunError::Run { path: model.onnx.path.display().to_string(), reason };
    let mut rows: Vec<f32> = Vec::new();
    let mut out_width = 0;
    for start in (0..images).step_by(plan_batch.max(1)) {
        let end = (start + plan_batch).min(images);
        let mut chunk = nd::ArrayD::zeros(runner.input_shape.clone());
        chunk
            .slice_axis_mut(nd::Axis(0), (0..end - start).into())
            .assign(&inputs.slice_axis(nd::Axis(0), (start..end).into()));
        let values = runner.run_values(chunk)?;
        let mut values = values.into_iter();
        let mut first = None;
        for k in 0..own {
            let v = values.next().ok_or_else(|| run_err("missing output".into()))?;
            if k == 0 {
                first = Some(rba_onnx::tract::to_f32_array(v).map_err(|e| run_err(format!("{e:#}")))?);
            }
        }
        let out = first.ok_or_else(|| run_err("the model has no output".into()))?;
        out_width = out.len() / plan_batch;
        rows.extend(out.iter().take((end - start) * out_width));
        for (i, _, shape) in &chosen {
            let v = values.next().ok_or_else(|| run_err("missing boundary output".into()))?;
            let a = rba_onnx::tract::to_f32_array(v).map_err(|e| run_err(format!("{e:#}")))?;
            // The batch must lead, with the shape inferred at batch 1 after it.
            if a.shape()[0] != plan_batch || a.shape()[1..] != shape[1..] {
                cache.boundaries[*i] = None;
                continue;
            }
            let valid = a.slice_axis(nd::Axis(0), (0..end - start).into()).to_owned();
            cache.write(*i, start, &valid).map_err(CompactError::Cache)?;
        }
        for name in &needs {
            let v = values.next().ok_or_else(|| run_err("missing constant output".into()))?;
            if start == 0 {
                if let Some(t) = tensor_proto(name, &v) {
                    cache.constants.insert(name.clone(), t);
                }
            }
        }
    }
    cache.info.boundaries.retain(|&i| cache.boundaries[i].is_some());
    let mut constants: Vec<String> = cache.constants.keys().cloned().collect();
    constants.sort();
    cache.info.constants = constants;
    let reference = nd::Array2::from_shape_vec((images, out_width), rows).map_err(|e| run_err(e.to_string()))?;
    Ok((reference, cache))
}

/// A computed tensor as an ONNX initializer (f32, f64, i64 or a concrete
/// shape dimension, i32, bool).
fn tensor_proto(name: &str, v: &TValue) -> Option<TensorProto> {
    let dims: Vec<i64> = v.shape().iter().map(|&d| d as i64).collect();
    // tract computes shapes as symbolic dimensions; concrete ones are int64.
    let cast;
    let v = if v.datum_type() == DatumType::TDim {
        cast = v.cast_to::<i64>().ok()?;
        &*cast
    } else {
        &**v
    };
    let (data_type, raw): (DataType, Vec<u8>) = match v.datum_type() {
        DatumType::F32 => {
            (DataType::Float, v.to_plain_array_view::<f32>().ok()?.iter().flat_map(|x| x.to_le_bytes()).collect())
        }
        DatumType::F64 => {
            (DataType::Double, v.to_plain_array_view::<f64>().ok()?.iter().flat_map(|x| x.to_le_bytes()).collect())
        }
        DatumType::I64 => {
            (DataType::Int64, v.to_plain_array_view::<i64>().ok()?.iter().flat_map(|x| x.to_le_bytes()).collect())
        }
        DatumType::I32 => {
            (DataType::Int32, v.to_plain_array_view::<i32>().ok()?.iter().flat_map(|x| x.to_le_bytes()).collect())
        }
        DatumType::Bool => (DataType::Bool, v.to_plain_array_view::<bool>().ok()?.iter().map(|&b| b as u8).collect()),
        _ => return None,
    };
    Some(TensorProto {
        name: Some(name.into()),
        dims,
        data_type: Some(data_type as i32),
        raw_data: Some(raw),
        ..Default::default()
    })
}

/// The part of `compacted` after boundary `b` (named as in the original
/// model), as a model whose input is that boundary. Fails, saying why, when
/// the boundary is not cached or the tail reads a tensor from before the
/// cut that was not captured.
pub fn tail_model(compacted: OnnxModel, b: usize, cache: &BoundaryCache) -> Result<OnnxModel, String> {
    let c = cache.boundaries.get(b).and_then(Option::as_ref).ok_or(format!("boundary {b} is not cached"))?;
    let mut shape = vec![1];
    shape.extend(&c.shape);
    let tail = rba_onnx::graph::tail_after(compacted.graph(), &c.name, boundary_input(&c.name, &shape))?;
    let mut graph = tail.graph;
    for n in &tail.needs {
        let t = cache
            .constants
            .get(n)
            .ok_or_else(|| format!("the part after boundary {b} reads '{n}' from before it, which was not captured"))?;
        graph.initializer.push(t.clone());
    }
    let OnnxModel { mut proto, path } = compacted;
    proto.graph = Some(graph);
    Ok(OnnxModel { proto, path: format!("{} (after boundary {b})", path.display()).into() })
}

/// Runs a tail over every cached image and returns its first output,
/// `[images, K]`.
pub fn run_tail(tail: &OnnxModel, b: usize, cache: &BoundaryCache) -> Result<nd::Array2<f32>, CompactError> {
    let runner = Runner::new(tail, cache.batch, &[])?;
    let plan_batch = runner.input_shape[0];
    let path = tail.path.display().to_string();
    let run_err = |reason: String| RunError::Run { path: path.clone(), reason };
    let mut rows: Vec<f32> = Vec::new();
    let mut width = 0;
    for start in (0..cache.images).step_by(plan_batch.max(1)) {
        let end = (start + plan_batch).min(cache.images);
        let cached = cache.read(b, start, end - start).map_err(CompactError::Cache)?;
        let mut chunk = nd::ArrayD::zeros(runner.input_shape.clone());
        if chunk.shape()[1..] != cached.shape()[1..] {
            return Err(run_err(format!("cached shape {:?} against input {:?}", cached.shape(), chunk.shape())).into());
        }
        chunk.slice_axis_mut(nd::Axis(0), (0..end - start).into()).assign(&cached);
        let out = runner.run(chunk)?.swap_remove(0);
        width = out.len() / plan_batch;
        rows.extend(out.iter().take((end - start) * width));
    }
    Ok(nd::Array2::from_shape_vec((cache.images, width), rows).map_err(|e| run_err(e.to_string()))?)
}
