//! Which execution providers an onnxruntime job registers, in which order
//! and with which options: from the request, else the board profile
//! (without the providers the library lacks), and the policy. Pure
//! functions of their inputs, so the options passed to ONNX Runtime are
//! tested without a GPU.

use std::path::{Path, PathBuf};

use rba_protocol::boards::OnnxRuntimeProfile;
use rba_protocol::{EpPolicy, ExecutionProvider, RuntimeRequest};

/// Where TensorRT keeps what it builds for one model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CachePaths {
    /// This model's engines.
    pub engines: PathBuf,
    /// Kernel timings, shared by every model.
    pub timing: PathBuf,
}

impl CachePaths {
    /// Under `root` (the store's `onnxruntime/tensorrt`): `engines/<model
    /// digest>` and `timing`.
    pub fn for_model(root: &Path, model_digest: &str) -> CachePaths {
        CachePaths { engines: root.join("engines").join(model_digest), timing: root.join("timing") }
    }
}

/// One provider to register, with its options.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedEp {
    pub ep: ExecutionProvider,
    pub options: Vec<(String, String)>,
}

/// What a session registers and how it runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EpPlan {
    /// In order of preference.
    pub eps: Vec<PlannedEp>,
    pub policy: EpPolicy,
    /// The session's intra-op threads.
    pub session_threads: u32,
    /// Session configuration entries (`session.intra_op.allow_spinning`).
    pub session_config: Vec<(String, String)>,
    /// Providers of the profile skipped because the library lacks them.
    pub notes: Vec<String>,
}

impl EpPlan {
    pub fn has(&self, ep: ExecutionProvider) -> bool {
        self.eps.iter().any(|p| p.ep == ep)
    }
}

fn flag(on: bool) -> String {
    if on { "1" } else { "0" }.to_string()
}

/// The options rba-device registers `ep` with.
pub fn options(
    ep: ExecutionProvider,
    profile: &OnnxRuntimeProfile,
    threads: u32,
    cache: &CachePaths,
) -> Vec<(String, String)> {
    let kv = |k: &str, v: String| (k.to_string(), v);
    match ep {
        ExecutionProvider::Cpu | ExecutionProvider::Cuda => Vec::new(),
        ExecutionProvider::Xnnpack => vec![kv("intra_op_num_threads", threads.max(1).to_string())],
        ExecutionProvider::TensorRt => {
            let t = &profile.tensorrt;
            let mut o = vec![kv("trt_fp16_enable", flag(t.fp16))];
            if t.engine_cache {
                o.push(kv("trt_engine_cache_enable", flag(true)));
                o.push(kv("trt_engine_cache_path", cache.engines.display().to_string()));
            }
            if t.timing_cache {
                o.push(kv("trt_timing_cache_enable", flag(true)));
                o.push(kv("trt_timing_cache_path", cache.timing.display().to_string()));
            }
            if let Some(bytes) = t.max_workspace_bytes {
                o.push(kv("trt_max_workspace_size", bytes.to_string()));
            }
            if let Some(level) = t.builder_optimization_level {
                o.push(kv("trt_builder_optimization_level", level.to_string()));
            }
            o
        }
    }
}

/// The plan for a job asking `request` on a board with `profile` whose
/// library offers `available` (ONNX Runtime's provider names), on
/// `threads` threads.
///
/// - The request's providers, in its order, when it names any; all of them
///   are registered (or fail, under `strict`).
/// - Else the profile's, without those the library does not offer (each
///   named in `notes`); else none (ONNX Runtime's CPU kernels).
/// - With XNNPACK, the session runs one intra-op thread without spinning
///   and XNNPACK gets the threads (ONNX Runtime's recommended set-up: the
///   two pools would compete for the cores).
pub fn plan(
    request: &RuntimeRequest,
    profile: &OnnxRuntimeProfile,
    available: &[String],
    threads: u32,
    cache: &CachePaths,
) -> EpPlan {
    let mut notes = Vec::new();
    let wanted: Vec<ExecutionProvider> = if request.eps.is_empty() {
        profile
            .execution_providers
            .iter()
            .copied()
            .filter(|ep| {
                let offered = *ep == ExecutionProvider::Cpu || available.iter().any(|a| a == ep.ort_name());
                if !offered {
                    notes.push(format!(
                        "the board profile's {ep} provider was skipped: the library does not offer {}",
                        ep.ort_name()
                    ));
                }
                offered
            })
            .collect()
    } else {
        request.eps.clone()
    };
    let mut eps: Vec<PlannedEp> = Vec::new();
    for ep in wanted {
        if !eps.iter().any(|p| p.ep == ep) {
            eps.push(PlannedEp { ep, options: options(ep, profile, threads, cache) });
        }
    }
    let xnnpack = eps.iter().any(|p| p.ep == ExecutionProvider::Xnnpack);
    let (session_threads, session_config) = if xnnpack {
        (1, vec![("session.intra_op.allow_spinning".to_string(), "0".to_string())])
    } else {
        (threads.max(1), Vec::new())
    };
    EpPlan { eps, policy: request.policy.unwrap_or(profile.policy), session_threads, session_config, notes }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use rba_protocol::boards::{find, TensorRtProfile};

    use super::*;

    fn cache() -> CachePaths {
        CachePaths::for_model(Path::new("/store/onnxruntime/tensorrt"), "0123456789abcdef")
    }

    fn names(plan: &EpPlan) -> Vec<ExecutionProvider> {
        plan.eps.iter().map(|p| p.ep).collect()
    }

    const ALL: [&str; 4] =
        ["TensorrtExecutionProvider", "CUDAExecutionProvider", "XnnpackExecutionProvider", "CPUExecutionProvider"];

    #[test]
    fn the_jetson_profile_gives_tensorrt_with_fp16_and_caches_in_the_store_then_cuda_then_cpu() {
        let jetson = find("jetson-orin-nano", &[]).unwrap().onnxruntime;
        let all: Vec<String> = ALL.map(String::from).to_vec();
        let p = plan(&RuntimeRequest::onnxruntime(vec![], None), &jetson, &all, 6, &cache());
        assert_eq!(names(&p), [ExecutionProvider::TensorRt, ExecutionProvider::Cuda, ExecutionProvider::Cpu]);
        assert_eq!(p.policy, EpPolicy::Fallback);
        assert_eq!((p.session_threads, p.session_config.len()), (6, 0));
        let kv = |k: &str, v: &str| (k.to_string(), v.to_string());
        assert_eq!(
            p.eps[0].options,
            [
                kv("trt_fp16_enable", "1"),
                kv("trt_engine_cache_enable", "1"),
                kv("trt_engine_cache_path", "/store/onnxruntime/tensorrt/engines/0123456789abcdef"),
                kv("trt_timing_cache_enable", "1"),
                kv("trt_timing_cache_path", "/store/onnxruntime/tensorrt/timing"),
                kv("trt_max_workspace_size", "1073741824"),
            ]
        );
        assert!(p.eps[1].options.is_empty() && p.eps[2].options.is_empty());
        assert!(p.notes.is_empty());
    }

    #[test]
    fn profile_providers_the_library_lacks_are_skipped_and_said() {
        let pi = find("raspberry-pi-5", &[]).unwrap().onnxruntime;
        // PyPI's aarch64 wheel: CPU only.
        let cpu_only = vec!["CPUExecutionProvider".to_string()];
        let p = plan(&RuntimeRequest::onnxruntime(vec![], None), &pi, &cpu_only, 4, &cache());
        assert_eq!(names(&p), [ExecutionProvider::Cpu]);
        assert_eq!(p.notes.len(), 1);
        assert!(p.notes[0].contains("xnnpack") && p.notes[0].contains("XnnpackExecutionProvider"), "{:?}", p.notes);
        assert_eq!(p.session_threads, 4);
        // A library with XNNPACK: XNNPACK gets the threads, the session one.
        let with = vec!["XnnpackExecutionProvider".to_string(), "CPUExecutionProvider".to_string()];
        let p = plan(&RuntimeRequest::onnxruntime(vec![], None), &pi, &with, 4, &cache());
        assert_eq!(names(&p), [ExecutionProvider::Xnnpack, ExecutionProvider::Cpu]);
        assert_eq!(p.eps[0].options, [("intra_op_num_threads".to_string(), "4".to_string())]);
        assert_eq!(p.session_threads, 1);
        assert_eq!(p.session_config, [("session.intra_op.allow_spinning".to_string(), "0".to_string())]);
    }

    #[test]
    fn a_request_names_its_providers_and_policy_whatever_the_library_offers() {
        let jetson = find("jetson-orin-nano", &[]).unwrap().onnxruntime;
        let cpu_only = vec!["CPUExecutionProvider".to_string()];
        let req = RuntimeRequest::onnxruntime(
            vec![ExecutionProvider::Cuda, ExecutionProvider::TensorRt, ExecutionProvider::Cuda],
            Some(EpPolicy::Strict),
        );
        let p = plan(&req, &jetson, &cpu_only, 2, &cache());
        assert_eq!(names(&p), [ExecutionProvider::Cuda, ExecutionProvider::TensorRt], "kept (to fail), deduplicated");
        assert_eq!(p.policy, EpPolicy::Strict);
        assert!(p.notes.is_empty());
        // No profile section: the CPU alone, fallback.
        let none = OnnxRuntimeProfile::default();
        let p = plan(&RuntimeRequest::onnxruntime(vec![], None), &none, &cpu_only, 2, &cache());
        assert!(p.eps.is_empty());
        assert_eq!(p.policy, EpPolicy::Fallback);
        // The profile's policy applies when the request names none.
        let strict = OnnxRuntimeProfile { policy: EpPolicy::Strict, ..OnnxRuntimeProfile::default() };
        assert_eq!(
            plan(&RuntimeRequest::onnxruntime(vec![], None), &strict, &[], 1, &cache()).policy,
            EpPolicy::Strict
        );
        let req = RuntimeRequest::onnxruntime(vec![], Some(EpPolicy::Fallback));
        assert_eq!(plan(&req, &strict, &[], 1, &cache()).policy, EpPolicy::Fallback);
    }

    #[test]
    fn tensorrt_options_follow_the_profile() {
        let quiet = OnnxRuntimeProfile {
            tensorrt: TensorRtProfile {
                fp16: false,
                engine_cache: false,
                timing_cache: false,
                max_workspace_bytes: None,
                builder_optimization_level: Some(5),
            },
            ..OnnxRuntimeProfile::default()
        };
        let o = options(ExecutionProvider::TensorRt, &quiet, 1, &cache());
        assert_eq!(
            o,
            [
                ("trt_fp16_enable".to_string(), "0".to_string()),
                ("trt_builder_optimization_level".to_string(), "5".to_string())
            ]
        );
        // Defaults: caches on, fp16 off.
        let o = options(ExecutionProvider::TensorRt, &OnnxRuntimeProfile::default(), 1, &cache());
        let keys: Vec<&str> = o.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "trt_fp16_enable",
                "trt_engine_cache_enable",
                "trt_engine_cache_path",
                "trt_timing_cache_enable",
                "trt_timing_cache_path"
            ]
        );
        assert_eq!(o[0].1, "0");
    }
}
