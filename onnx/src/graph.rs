//! A read-only index over an ONNX graph: who produces and consumes each
//! tensor, a topological order, and which tensors carry activations (depend
//! on the model input) as opposed to constants and shape computations.

use std::collections::{HashMap, HashSet};

use super::proto::GraphProto;

/// Operators whose output describes a tensor's shape, not its values: data
/// flowing through them is shape bookkeeping, not activations.
const SHAPE_OPS: [&str; 2] = ["Shape", "Size"];

#[derive(Debug)]
pub struct GraphIndex {
    /// Tensor name -> index of the node producing it.
    pub producer: HashMap<String, usize>,
    /// Tensor name -> indices of the nodes reading it (in node order, each once).
    pub consumers: HashMap<String, Vec<usize>>,
    /// Names of initializers.
    pub initializers: HashSet<String>,
    /// Graph inputs that are real inputs (not initializers listed as inputs).
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    /// Node indices in a topological order.
    pub order: Vec<usize>,
    /// Tensors that depend on a graph input through value-carrying operators.
    pub activations: HashSet<String>,
    /// Activation tensors from which a graph output can be reached through
    /// activation edges (the live data path).
    pub live: HashSet<String>,
}

impl GraphIndex {
    /// Builds the index; fails with a description if the graph has a cycle
    /// or a node reads a tensor nobody defines.
    pub fn new(graph: &GraphProto) -> Result<Self, String> {
        let initializers: HashSet<String> = graph.initializer.iter().map(|t| t.name().to_string()).collect();
        let inputs: Vec<String> =
            graph.input.iter().map(|i| i.name().to_string()).filter(|n| !initializers.contains(n)).collect();
        let outputs: Vec<String> = graph.output.iter().map(|o| o.name().to_string()).collect();
        let mut producer = HashMap::new();
        let mut consumers: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, node) in graph.node.iter().enumerate() {
            for out in node.output.iter().filter(|o| !o.is_empty()) {
                if producer.insert(out.clone(), i).is_some() {
                    return Err(format!("tensor '{out}' is produced by more than one node"));
                }
            }
            let mut seen = HashSet::new();
            for inp in node.input.iter().filter(|s| !s.is_empty()) {
                if seen.insert(inp) {
                    consumers.entry(inp.clone()).or_default().push(i);
                }
            }
        }
        // Kahn's algorithm, preferring the file's order (which is already
        // topological for well-formed exports).
        let defined = |t: &String| initializers.contains(t) || inputs.contains(t) || producer.contains_key(t);
        let mut pending: Vec<usize> = Vec::with_capacity(graph.node.len());
        for node in graph.node.iter() {
            if let Some(t) = node.input.iter().find(|t| !t.is_empty() && !defined(t)) {
                return Err(format!(
                    "node '{}' ({}) reads tensor '{t}' which no node, input or initializer defines",
                    node.name(),
                    node.op_type()
                ));
            }
            let deps: HashSet<&String> = node.input.iter().filter(|t| producer.contains_key(*t)).collect();
            pending.push(deps.len());
        }
        let mut order = Vec::with_capacity(graph.node.len());
        let mut ready: std::collections::BTreeSet<usize> = (0..graph.node.len()).filter(|&i| pending[i] == 0).collect();
        while let Some(i) = ready.pop_first() {
            order.push(i);
            for out in graph.node[i].output.iter() {
                for &c in consumers.get(out).map(Vec::as_slice).unwrap_or(&[]) {
                    pending[c] -= 1;
                    if pending[c] == 0 {
                        ready.insert(c);
                    }
                }
            }
        }
        if order.len() != graph.node.len() {
            return Err("the graph has a cycle".into());
        }

        let mut activations: HashSet<String> = inputs.iter().cloned().collect();
        for &i in &order {
            let node = &graph.node[i];
            if SHAPE_OPS.contains(&node.op_type()) {
                continue;
            }
            if node.input.iter().any(|t| activations.contains(t)) {
                activations.extend(node.output.iter().filter(|o| !o.is_empty()).cloned());
            }
        }
        let mut live: HashSet<String> = outputs.iter().filter(|o| activations.contains(*o)).cloned().collect();
        for &i in order.iter().rev() {
            let node = &graph.node[i];
            if SHAPE_OPS.contains(&node.op_type()) || !node.output.iter().any(|o| live.contains(o)) {
                continue;
            }
            live.extend(node.input.iter().filter(|t| activations.contains(*t)).cloned());
        }
        Ok(Self { producer, consumers, initializers, inputs, outputs, order, activations, live })
    }

    /// Live activation inputs of a node, deduplicated, in input order.
    pub fn live_inputs<'g>(&self, graph: &'g GraphProto, node: usize) -> Vec<&'g str> {
        let mut seen = Vec::new();
        if SHAPE_OPS.contains(&graph.node[node].op_type()) {
            return seen;
        }
        for t in &graph.node[node].input {
            if self.live.contains(t) && !seen.contains(&t.as_str()) {
                seen.push(t.as_str());
            }
        }
        seen
    }

    /// Whether a node is on the live data path.
    pub fn is_live_node(&self, graph: &GraphProto, node: usize) -> bool {
        graph.node[node].output.iter().any(|o| self.live.contains(o)) && !self.live_inputs(graph, node).is_empty()
    }

    /// Tensors every path from the inputs to the outputs passes through, in
    /// data-flow order (the graph's cut points). Computed as the dominators of
    /// a virtual sink over the live activation graph.
    pub fn cut_tensors(&self, graph: &GraphProto) -> Vec<String> {
        // Live tensors in topological order; index 0 is a virtual source
        // feeding every input, the last a virtual sink fed by every output.
        let mut names: Vec<&str> = vec!["<source>"];
        names.extend(self.inputs.iter().filter(|t| self.live.contains(*t)).map(String::as_str));
        for &i in &self.order {
            if self.is_live_node(graph, i) {
                names.extend(graph.node[i].output.iter().filter(|o| self.live.contains(*o)).map(String::as_str));
            }
        }
        let position: HashMap<&str, usize> = names.iter().enumerate().map(|(i, n)| (*n, i)).collect();
        let sink = names.len();
        let mut preds: Vec<Vec<usize>> = vec![Vec::new(); sink + 1];
        for t in self.inputs.iter().filter(|t| self.live.contains(*t)) {
            preds[position[t.as_str()]].push(0);
        }
        for &i in &self.order {
            if !self.is_live_node(graph, i) {
                continue;
            }
            let ins: Vec<usize> = self.live_inputs(graph, i).iter().map(|t| position[t]).collect();
            for o in graph.node[i].output.iter().filter(|o| self.live.contains(*o)) {
                preds[position[o.as_str()]].extend(&ins);
            }
        }
        for o in self.outputs.iter().filter(|o| self.live.contains(*o)) {
            preds[sink].push(position[o.as_str()]);
        }
        // Immediate dominators on a DAG numbered topologically: intersect the
        // dominator chains of all predecessors.
        let mut idom: Vec<usize> = vec![0; sink + 1];
        for v in 1..=sink {
            let mut it = preds[v].iter().copied();
            let Some(mut d) = it.next() else { continue };
            for mut p in it {
                while d != p {
                    if d > p {
                        d = idom[d];
                    } else {
                        p = idom[p];
                    }
                }
            }
            idom[v] = d;
        }
        let mut cuts = Vec::new();
        let mut v = idom[sink];
        while v != 0 {
            cuts.push(names[v].to_string());
            v = idom[v];
        }
        cuts.reverse();
        cuts
    }

    /// Live nodes on the paths from tensor `from` to tensor `to` (both cut
    /// tensors, `from` before `to`), in topological order.
    pub fn nodes_between(&self, graph: &GraphProto, from: &str, to: &str) -> Vec<usize> {
        let mut inside: HashSet<usize> = HashSet::new();
        let mut stack: Vec<&str> = vec![to];
        let mut visited: HashSet<&str> = HashSet::new();
        while let Some(t) = stack.pop() {
            if t == from || !visited.insert(t) {
                continue;
            }
            let Some(&p) = self.producer.get(t) else {
                continue;
            };
            if self.is_live_node(graph, p) && inside.insert(p) {
                stack.extend(self.live_inputs(graph, p));
            }
        }
        self.order.iter().copied().filter(|i| inside.contains(i)).collect()
    }
}

/// Removes nodes none of whose outputs is read or is a graph output, then
/// initializers, initializer-inputs and value infos nobody refers to.
pub fn prune(graph: &mut GraphProto) {
    let outputs: HashSet<String> = graph.output.iter().map(|o| o.name().to_string()).collect();
    loop {
        let read: HashSet<&String> = graph.node.iter().flat_map(|n| n.input.iter()).collect();
        let keep: Vec<bool> = graph
            .node
            .iter()
            .map(|n| n.output.iter().any(|o| !o.is_empty() && (read.contains(o) || outputs.contains(o))))
            .collect();
        if keep.iter().all(|k| *k) {
            break;
        }
        let mut it = keep.iter();
        graph.node.retain(|_| *it.next().unwrap_or(&true));
    }
    let used: HashSet<String> =
        graph.node.iter().flat_map(|n| n.input.iter().cloned()).chain(outputs.iter().cloned()).collect();
    let before: HashSet<String> = graph.initializer.iter().map(|t| t.name().to_string()).collect();
    graph.initializer.retain(|t| used.contains(t.name()));
    // Old IRs list initializers among the inputs too: drop the removed ones.
    graph.input.retain(|i| !before.contains(i.name()) || used.contains(i.name()));
    let produced: HashSet<String> = graph.node.iter().flat_map(|n| n.output.iter().cloned()).collect();
    graph.value_info.retain(|v| produced.contains(v.name()));
}

/// The part of a graph after a cut tensor, as a graph of its own: `boundary`
/// becomes its only input (declared by `input`), the outputs stay, and
/// every node that neither depends on `boundary` nor is a constant
/// computation (one that reads no graph input at all) is dropped.
#[derive(Debug, Clone)]
pub struct Tail {
    pub graph: GraphProto,
    /// Tensors the tail still reads from before the cut (shape computations
    /// on the original input, say), in node order, each once. They must be
    /// supplied as initializers before the tail can run.
    pub needs: Vec<String>,
}

/// Cuts `graph` at the tensor `boundary` (see [`Tail`]). `input` declares
/// the boundary tensor as the tail's graph input; it must carry the
/// boundary's name. Fails when `boundary` is neither produced by a node nor
/// a graph input, or is not read on the way to an output.
pub fn tail_after(graph: &GraphProto, boundary: &str, input: super::proto::ValueInfoProto) -> Result<Tail, String> {
    if input.name() != boundary {
        return Err(format!("the tail's input is named '{}', not '{boundary}'", input.name()));
    }
    let initializers: HashSet<&str> = graph.initializer.iter().map(|t| t.name()).collect();
    let graph_inputs: HashSet<&str> =
        graph.input.iter().map(|i| i.name()).filter(|n| !initializers.contains(n)).collect();
    let produced = graph.node.iter().any(|n| n.output.iter().any(|o| o == boundary));
    if !produced && !graph_inputs.contains(boundary) {
        return Err(format!("tensor '{boundary}' is neither produced by a node nor a graph input"));
    }
    // Nodes are in topological order in our graphs (surgery keeps it so),
    // but do not rely on it: index them.
    let index = GraphIndex::new(graph)?;
    // Tensors that depend on a graph input through any node (shape ops
    // included), and those that depend on the boundary.
    let mut on_input: HashSet<&str> = graph_inputs.clone();
    let mut on_boundary: HashSet<&str> = HashSet::from([boundary]);
    for &i in &index.order {
        let node = &graph.node[i];
        let reads = |set: &HashSet<&str>| node.input.iter().any(|t| set.contains(t.as_str()));
        let (inp, bnd) = (reads(&on_input), reads(&on_boundary));
        for o in node.output.iter().filter(|o| !o.is_empty() && o.as_str() != boundary) {
            if inp {
                on_input.insert(o);
            }
            if bnd {
                on_boundary.insert(o);
            }
        }
    }
    // Keep what follows the boundary, and constant computations.
    let keep: Vec<bool> = graph
        .node
        .iter()
        .map(|n| {
            let outs: Vec<&str> = n.output.iter().map(String::as_str).filter(|o| !o.is_empty()).collect();
            !outs.contains(&boundary)
                && (n.input.iter().any(|t| on_boundary.contains(t.as_str()))
                    || outs.iter().all(|o| !on_input.contains(o)))
        })
        .collect();
    let mut tail = graph.clone();
    let mut it = keep.iter();
    tail.node.retain(|_| *it.next().unwrap_or(&false));
    tail.input = vec![input];
    prune(&mut tail);
    let defined: HashSet<&str> = tail
        .node
        .iter()
        .flat_map(|n| n.output.iter().map(String::as_str))
        .chain(tail.initializer.iter().map(|t| t.name()))
        .chain([boundary])
        .collect();
    let mut needs: Vec<String> = Vec::new();
    let read = tail.node.iter().flat_map(|n| n.input.iter()).chain(tail.output.iter().filter_map(|o| o.name.as_ref()));
    for t in read {
        if !t.is_empty() && !defined.contains(t.as_str()) && !needs.contains(t) {
            needs.push(t.clone());
        }
    }
    let leads_on = tail.node.iter().any(|n| n.input.iter().any(|t| t == boundary));
    if !leads_on && !tail.output.iter().any(|o| o.name() == boundary) {
        return Err(format!("tensor '{boundary}' does not lead to an output"));
    }
    Ok(Tail { graph: tail, needs })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::build::{f32_tensor, f32_value_info, node, Dim};

    /// x -> Relu -> Relu = b -> Reshape(b, Shape(x)) -> + k -> y, with k
    /// from a Constant node: the part after b reads Shape(x) from before it.
    fn graph() -> GraphProto {
        let dims = [Dim::Named("n".into()), Dim::Fixed(4)];
        let mut k = node("Constant", "k", &[], &["k"]);
        k.attribute.push(crate::proto::AttributeProto {
            name: Some("value".into()),
            r#type: Some(crate::proto::attribute_proto::AttributeType::Tensor as i32),
            t: Some(f32_tensor("kv", &[4], &[1.0, 2.0, 3.0, 4.0])),
            ..Default::default()
        });
        GraphProto {
            input: vec![f32_value_info("x", &dims)],
            output: vec![f32_value_info("y", &dims)],
            node: vec![
                node("Relu", "r1", &["x"], &["a"]),
                node("Relu", "r2", &["a"], &["b"]),
                node("Shape", "shape", &["x"], &["s"]),
                node("Reshape", "reshape", &["b", "s"], &["c"]),
                k,
                node("Add", "add", &["c", "k"], &["y"]),
            ],
            initializer: vec![f32_tensor("unused", &[2], &[0.0, 0.0])],
            ..Default::default()
        }
    }

    #[test]
    fn the_tail_keeps_what_follows_the_cut_and_constants_and_names_what_it_needs() {
        let g = graph();
        let input = f32_value_info("b", &[Dim::Named("n".into()), Dim::Fixed(4)]);
        let tail = tail_after(&g, "b", input.clone()).unwrap();
        let names: Vec<&str> = tail.graph.node.iter().map(|n| n.name()).collect();
        assert_eq!(names, ["reshape", "k", "add"]);
        assert_eq!(tail.needs, ["s"], "Shape(x) is computed before the cut");
        assert_eq!(tail.graph.input, [input]);
        assert!(tail.graph.initializer.is_empty(), "unused initializers are pruned");
        // At the input itself, the tail is the whole graph.
        let whole = tail_after(&g, "x", f32_value_info("x", &[Dim::Named("n".into()), Dim::Fixed(4)])).unwrap();
        assert_eq!(whole.graph.node.len(), 6);
        assert!(whole.needs.is_empty());
        assert!(tail_after(&g, "nope", f32_value_info("nope", &[])).is_err());
        assert!(tail_after(&g, "b", f32_value_info("other", &[])).is_err());
    }
}
