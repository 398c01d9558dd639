//! Folded translators (METHOD.md, "Folding"; ReplaceMe-style): when the block before a
//! span ends in `h_s = r_s + m_s`, with `m_s = (a W2 + b2) [* gamma]` the
//! output of a linear layer (times an optional LayerScale), a map `T` fitted
//! on `m_s -> h_e - r_s` is multiplied into that layer (`W2 <- W2 diag(gamma) T`,
//! `b2 <- b2 diag(gamma) T`) and the span's blocks are dropped. The compacted
//! model gains no node and no parameter.

use std::collections::HashMap;

use crate::model::blocks::BlockMap;
use crate::onnx::build::{f32_tensor, f32_values};
use crate::onnx::proto::{GraphProto, TensorProto};

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FoldError {
    #[error("boundary {0}: folding needs a block before the span (it multiplies into that block's last layer)")]
    NoBlockBefore(usize),
    #[error("boundary {boundary} ('{tensor}'): folding needs the block to end in a residual Add of a linear layer, found {found}")]
    Pattern { boundary: usize, tensor: String, found: String },
    #[error("boundary {boundary}: '{name}' is shared with other nodes, so it cannot be rewritten in place")]
    Shared { boundary: usize, name: String },
    #[error("boundary {boundary}: '{name}' has an unsupported shape {dims:?} for folding (features {features})")]
    Shape { boundary: usize, name: String, dims: Vec<i64>, features: usize },
}

/// Where a map can be folded: the linear layer that ends the block producing
/// a boundary.
#[derive(Debug, Clone, PartialEq)]
pub struct FoldSite {
    pub boundary: usize,
    /// `m_s`: the branch tensor added to the residual (after any LayerScale).
    pub branch: String,
    /// `W2` (`[hidden, D]` initializer of the MatMul).
    pub weight: String,
    /// `b2`, when the layer has a bias.
    pub bias: Option<String>,
    /// LayerScale: the Mul node's output and its `gamma` initializer.
    pub scale: Option<(String, String)>,
}

fn producers(graph: &GraphProto) -> HashMap<&str, usize> {
    let mut map = HashMap::new();
    for (i, n) in graph.node.iter().enumerate() {
        for o in &n.output {
            map.insert(o.as_str(), i);
        }
    }
    map
}

/// How many node inputs (plus graph outputs) read each tensor.
fn readers(graph: &GraphProto) -> HashMap<&str, usize> {
    let mut map: HashMap<&str, usize> = HashMap::new();
    for name in
        graph.node.iter().flat_map(|n| n.input.iter()).map(String::as_str).chain(graph.output.iter().map(|o| o.name()))
    {
        *map.entry(name).or_default() += 1;
    }
    map
}

fn initializer<'g>(graph: &'g GraphProto, name: &str) -> Option<&'g TensorProto> {
    graph.initializer.iter().find(|t| t.name() == name)
}

/// Finds the fold site of the block that produces `boundary`.
pub fn fold_site(graph: &GraphProto, blocks: &BlockMap, boundary: usize) -> Result<FoldSite, FoldError> {
    if boundary == 0 || boundary >= blocks.boundaries.len() {
        return Err(FoldError::NoBlockBefore(boundary));
    }
    let tensor = &blocks.boundaries[boundary];
    let features = blocks.blocks[boundary - 1].features().unwrap_or(0);
    let producer = producers(graph);
    let reads = readers(graph);
    let op_of = |t: &str| producer.get(t).map(|&i| &graph.node[i]);
    let pattern = |found: String| FoldError::Pattern { boundary, tensor: tensor.clone(), found };
    let add = op_of(tensor).ok_or_else(|| pattern("a graph input".into()))?;
    if add.op_type() != "Add" || add.input.len() != 2 {
        return Err(pattern(format!("{} node '{}'", add.op_type(), add.name())));
    }
    let is_init = |t: &str| initializer(graph, t).is_some();
    // Each candidate branch input of the residual Add: peel an optional
    // LayerScale Mul, then a bias Add, then the MatMul with weights.
    let try_branch = |branch: &str| -> Option<FoldSite> {
        let mut t = branch.to_string();
        let mut scale = None;
        let mut node = op_of(&t)?;
        if node.op_type() == "Mul" && node.input.len() == 2 {
            let (g, x) = if is_init(&node.input[1]) { (1, 0) } else { (0, 1) };
            if !is_init(&node.input[g]) {
                return None;
            }
            scale = Some((t.clone(), node.input[g].clone()));
            t = node.input[x].clone();
            node = op_of(&t)?;
        }
        let mut bias = None;
        if node.op_type() == "Add" && node.input.len() == 2 {
            let (b, x) = if is_init(&node.input[1]) { (1, 0) } else { (0, 1) };
            if !is_init(&node.input[b]) {
                return None;
            }
            bias = Some(node.input[b].clone());
            t = node.input[x].clone();
            node = op_of(&t)?;
        }
        let weight = node.input.get(1).filter(|w| node.op_type() == "MatMul" && is_init(w))?;
        Some(FoldSite { boundary, branch: branch.to_string(), weight: weight.clone(), bias, scale })
    };
    let sites: Vec<FoldSite> = add.input.iter().filter_map(|i| try_branch(i)).collect();
    let site = match sites.as_slice() {
        [one] => one.clone(),
        [] => return Err(pattern("an Add of two branches, neither a linear layer with constant weights".into())),
        _ => return Err(pattern("an Add of two linear layers (no residual)".into())),
    };
    // Every tensor rewritten must feed only this chain.
    let mut rewritten = vec![site.weight.clone()];
    rewritten.extend(site.bias.clone());
    if let Some((out, gamma)) = &site.scale {
        rewritten.push(out.clone());
        rewritten.push(gamma.clone());
    }
    for name in rewritten {
        if reads.get(name.as_str()).copied().unwrap_or(0) > 1 {
            return Err(FoldError::Shared { boundary, name });
        }
    }
    let check_shape = |name: &str, ok: fn(&[i64], usize) -> bool| {
        let dims = initializer(graph, name).map(|t| t.dims.clone()).unwrap_or_default();
        if ok(&dims, features) {
            Ok(())
        } else {
            Err(FoldError::Shape { boundary, name: name.to_string(), dims, features })
        }
    };
    check_shape(&site.weight, |d, f| d.len() == 2 && d[1] as usize == f)?;
    let vector = |d: &[i64], f: usize| d.iter().product::<i64>() as usize == f && d.last() == Some(&(f as i64));
    if let Some(b) = &site.bias {
        check_shape(b, vector)?;
    }
    if let Some((_, gamma)) = &site.scale {
        check_shape(gamma, vector)?;
    }
    Ok(site)
}

/// Multiplies the `D x D` map `t` (row-major, row = input feature) into the
/// site's layer and removes its LayerScale Mul, so the branch computes
/// `m_s T`. Values that are not f32 are reported as a shape error.
pub fn fold_into(graph: &mut GraphProto, site: &FoldSite, t: &[f32]) -> Result<(), FoldError> {
    let read = |graph: &GraphProto, name: &str| {
        initializer(graph, name).and_then(f32_values).ok_or_else(|| FoldError::Shape {
            boundary: site.boundary,
            name: name.to_string(),
            dims: initializer(graph, name).map(|t| t.dims.clone()).unwrap_or_default(),
            features: 0,
        })
    };
    let gamma = site.scale.as_ref().map(|(_, g)| read(graph, g)).transpose()?;
    let d = (t.len() as f64).sqrt() as usize;
    // diag(gamma) T, in f64 for the products below.
    let scaled: Vec<f64> = (0..d * d).map(|k| t[k] as f64 * gamma.as_ref().map_or(1.0, |g| g[k / d] as f64)).collect();
    let times = |rows: &[f32]| -> Vec<f32> {
        let mut out = Vec::with_capacity(rows.len());
        for row in rows.chunks_exact(d) {
            for j in 0..d {
                out.push((0..d).map(|i| row[i] as f64 * scaled[i * d + j]).sum::<f64>() as f32);
            }
        }
        out
    };
    let mut updates = vec![(site.weight.clone(), times(&read(graph, &site.weight)?))];
    if let Some(b) = &site.bias {
        updates.push((b.clone(), times(&read(graph, b)?)));
    }
    for (name, values) in updates {
        if let Some(slot) = graph.initializer.iter_mut().find(|t| t.name() == name) {
            let dims: Vec<usize> = slot.dims.iter().map(|&v| v as usize).collect();
            *slot = f32_tensor(&name, &dims, &values);
        }
    }
    if let Some((scaled_out, _)) = &site.scale {
        // Bypass the LayerScale Mul: its readers take its input instead.
        let unscaled = graph
            .node
            .iter()
            .find(|n| n.output.contains(scaled_out))
            .and_then(|n| n.input.iter().find(|i| initializer(graph, i).is_none()).cloned());
        if let Some(unscaled) = unscaled {
            for n in graph.node.iter_mut() {
                for i in n.input.iter_mut().filter(|i| *i == scaled_out) {
                    *i = unscaled.clone();
                }
            }
        }
    }
    Ok(())
}
