//! Which provider ran each node: ONNX Runtime says so only in its verbose
//! log and in its profile, a JSON array of trace events written when
//! profiling ends. rba-device profiles a session's first run only (into a
//! temporary file) and counts, per provider, the distinct nodes whose
//! `Node` events name it (`args.provider`; one node has a `_kernel_time`
//! event per run, and fence events without a provider).

use std::collections::{BTreeMap, BTreeSet};

use rba_protocol::ProviderNodes;
use serde::Deserialize;

#[derive(Deserialize)]
struct Event {
    #[serde(default)]
    cat: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    args: Args,
}

#[derive(Default, Deserialize)]
struct Args {
    #[serde(default)]
    provider: Option<String>,
}

/// Nodes per provider in an ONNX Runtime profile, most nodes first.
pub fn nodes_per_provider(json: &str) -> Result<Vec<ProviderNodes>, String> {
    let events: Vec<Event> =
        serde_json::from_str(json).map_err(|e| format!("cannot read onnxruntime's profile: {e}"))?;
    let mut per: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for e in events.into_iter().filter(|e| e.cat == "Node") {
        let Some(provider) = e.args.provider.filter(|p| !p.is_empty()) else { continue };
        let node = e.name.strip_suffix("_kernel_time").unwrap_or(&e.name).to_string();
        per.entry(provider).or_default().insert(node);
    }
    let mut out: Vec<ProviderNodes> = per
        .into_iter()
        .map(|(provider, nodes)| ProviderNodes { provider, nodes: u32::try_from(nodes.len()).unwrap_or(u32::MAX) })
        .collect();
    out.sort_by(|a, b| b.nodes.cmp(&a.nodes).then(a.provider.cmp(&b.provider)));
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn counts_distinct_nodes_per_provider() {
        // Trimmed from a real profile (ONNX Runtime 1.32, CPU) plus a
        // TensorRT kernel as TensorRT's fused subgraphs appear.
        let json = r#"[
{"cat":"Session","pid":1,"tid":1,"dur":99,"ts":1,"ph":"X","name":"model_loading_array","args":{}},
{"cat":"Session","pid":1,"tid":1,"dur":99,"ts":2,"ph":"X","name":"session_initialization","args":{}},
{"cat":"Node","pid":1,"tid":1,"dur":0,"ts":3,"ph":"X","name":"/fc/MatMul_fence_before","args":{"op_name":"MatMul"}},
{"cat":"Node","pid":1,"tid":1,"dur":5,"ts":4,"ph":"X","name":"/fc/MatMul_kernel_time","args":{"thread_scheduling_stats":"","output_size":"12","parameter_size":"48","activation_size":"16","output_type_shape":[{"float":[1,3]}],"input_type_shape":[{"float":[1,4]},{"float":[4,3]}],"provider":"CPUExecutionProvider","op_name":"MatMul"}},
{"cat":"Node","pid":1,"tid":1,"dur":0,"ts":5,"ph":"X","name":"/fc/MatMul_fence_after","args":{"op_name":"MatMul"}},
{"cat":"Node","pid":1,"tid":1,"dur":2,"ts":6,"ph":"X","name":"/fc/Add_kernel_time","args":{"provider":"CPUExecutionProvider","op_name":"Add"}},
{"cat":"Node","pid":1,"tid":1,"dur":2,"ts":7,"ph":"X","name":"/fc/Add_kernel_time","args":{"provider":"CPUExecutionProvider","op_name":"Add"}},
{"cat":"Node","pid":1,"tid":1,"dur":9,"ts":8,"ph":"X","name":"TensorrtExecutionProvider_TRTKernel_graph_main_123_0_0_kernel_time","args":{"provider":"TensorrtExecutionProvider","op_name":"TRTKernel_graph_main_123_0"}},
{"cat":"Session","pid":1,"tid":1,"dur":30,"ts":9,"ph":"X","name":"SequentialExecutor::Execute","args":{}}
]"#;
        let n = nodes_per_provider(json).unwrap();
        assert_eq!(
            n,
            [
                ProviderNodes { provider: "CPUExecutionProvider".into(), nodes: 2 },
                ProviderNodes { provider: "TensorrtExecutionProvider".into(), nodes: 1 },
            ]
        );
        assert_eq!(nodes_per_provider("[]").unwrap(), []);
        assert!(nodes_per_provider("{not json").unwrap_err().contains("profile"));
    }
}
