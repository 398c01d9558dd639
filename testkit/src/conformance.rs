//! The conformance routine: the same checks over every link to a device
//! (TCP, a pseudo-terminal, the emulated aarch64 board).

use std::io::{Read, Write};
use std::ops::ControlFlow;

use rba_protocol::*;

use crate::daemon::no_progress;
use crate::demo::{demo, EvalSet};
use crate::sha256;

/// Artifacts the device lists, as (kind, name, size, digest).
pub fn listed(c: &mut Client<impl Read + Write>) -> Vec<(ArtifactKind, String, u64, [u8; 32])> {
    c.list(None).unwrap().into_iter().map(|a| (a.kind, a.name, a.size, a.sha256)).collect()
}

/// Checks a benchmark result against its request and its own samples.
pub fn check_bench(r: &BenchmarkResult, model: &str, runs: u32, warmup: u32) {
    assert_eq!(r.model, model);
    assert_eq!(r.samples_ns.len(), runs as usize, "one sample per run");
    assert_eq!(r.warmup_runs, warmup);
    let s = &r.stats;
    assert_eq!(s.count, u64::from(runs));
    assert_eq!(*s, LatencyStats::from_samples(&r.samples_ns).unwrap(), "stats derive from the samples");
    assert!(s.min_ns > 0, "{s:?}");
    assert!(s.min_ns <= s.p50_ns && s.p50_ns <= s.p90_ns && s.p90_ns <= s.p95_ns, "{s:?}");
    assert!(s.p95_ns <= s.p99_ns && s.p99_ns <= s.max_ns, "{s:?}");
    assert!(r.load_time_ns > 0 && r.first_run_ns > 0, "{r:?}");
}

/// How much of [`exercise`] to run: all of it on native links. On an
/// emulated board (unoptimised tract under qemu-user) one ViT load takes
/// about a minute: there the compacted model alone is evaluated (its
/// agreement with the host's ViT outputs still involves both).
#[derive(Clone, Copy)]
pub struct Plan {
    pub runs: u32,
    pub warmup: u32,
    /// Benchmark each model and A/B compare them.
    pub timing: bool,
    /// Models to evaluate.
    pub evaluate: &'static [&'static str],
}

pub const NATIVE: Plan = Plan { runs: 20, warmup: 2, timing: true, evaluate: &["vit.onnx", "vit-slim.onnx"] };
pub const EMULATED: Plan = Plan { runs: 0, warmup: 0, timing: false, evaluate: &["vit-slim.onnx"] };

/// Uploads the demo ViT, its compacted variant and `set`'s bundle; lists,
/// benchmarks, compares and evaluates them; checks every answer against
/// the uploads and the host's own inference.
pub fn exercise(c: &mut Client<impl Read + Write>, set: &EvalSet, plan: Plan) {
    let Plan { runs, warmup, timing, evaluate } = plan;
    let demo = demo();
    let uploads: [(ArtifactKind, &str, &[u8]); 3] = [
        (ArtifactKind::Model, "vit.onnx", &demo.vit_bytes),
        (ArtifactKind::Model, "vit-slim.onnx", &demo.slim_bytes),
        (ArtifactKind::EvalBundle, "digits-test", &set.bundle),
    ];
    for (kind, name, data) in uploads {
        let info = c.upload(kind, name, data, |_| {}).unwrap();
        assert_eq!((info.size, info.sha256), (data.len() as u64, sha256(data)), "{name}");
    }
    let mut expected: Vec<_> = uploads.iter().map(|(k, n, d)| (*k, n.to_string(), d.len() as u64, sha256(d))).collect();
    expected.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    assert_eq!(listed(c), expected, "list: sorted by kind and name, with sizes and digests");

    let bench = |model: &str| BenchmarkRequest {
        model: model.into(),
        threads: None,
        warmup: RunPolicy { count: warmup, min_time_ms: 0 },
        runs: RunPolicy { count: runs, min_time_ms: 0 },
        input_bundle: Some("digits-test".into()),
        runtime: None,
    };
    for model in ["vit.onnx", "vit-slim.onnx"].into_iter().filter(|_| timing) {
        let mut phases = Vec::new();
        let r = c
            .benchmark(&bench(model), |p| {
                phases.push(p.phase);
                ControlFlow::Continue(())
            })
            .unwrap();
        check_bench(&r, model, runs, warmup);
        assert_eq!(r.threads, 1, "one inference thread (--threads 1, or the board profile)");
        assert_eq!(phases.first(), Some(&Phase::Started), "{phases:?}");
    }

    let req = CompareRequest {
        model_a: "vit.onnx".into(),
        model_b: "vit-slim.onnx".into(),
        threads: None,
        warmup: RunPolicy { count: warmup, min_time_ms: 0 },
        runs: RunPolicy { count: runs, min_time_ms: 0 },
        input_bundle: Some("digits-test".into()),
        runtime_a: None,
        runtime_b: None,
    };
    if timing {
        let cmp = c.compare(&req, no_progress).unwrap();
        check_bench(&cmp.a, "vit.onnx", runs, warmup);
        check_bench(&cmp.b, "vit-slim.onnx", runs, warmup);
        let ratio = cmp.b.stats.p50_ns as f64 / cmp.a.stats.p50_ns as f64;
        assert!((cmp.ratio_of_medians - ratio).abs() < 1e-9, "{} vs {ratio}", cmp.ratio_of_medians);
    }

    let n = set.samples as f64;
    let answers = [("vit.onnx", set.vit_correct, set.samples), ("vit-slim.onnx", set.slim_correct, set.slim_agree)];
    for (model, correct, agree) in answers.into_iter().filter(|(m, _, _)| evaluate.contains(m)) {
        let req = EvalRequest { model: model.into(), bundle: "digits-test".into(), threads: None, runtime: None };
        let e = c.evaluate(&req, no_progress).unwrap();
        assert_eq!(e.samples as usize, set.samples, "{model}");
        // The same count of correct answers as tract on the host.
        let acc = e.top1_accuracy.unwrap();
        assert_eq!((acc * n).round() as usize, correct, "{model}: device accuracy {acc}, host {correct}/{n}");
        assert_eq!(acc, correct as f64 / n, "{model}");
        assert_eq!(e.top1_agreement, Some(agree as f64 / n), "{model}: agreement with the host's ViT outputs");
        let diff = e.max_abs_diff.unwrap();
        let host_diff = if model == "vit.onnx" { 0.0 } else { set.slim_max_diff };
        assert!((diff - host_diff).abs() <= 1e-3, "{model}: max abs diff {diff}, host {host_diff}");
        let lat = e.latency.unwrap();
        // At batch 1 the first sample is the first run (reported apart).
        assert_eq!(lat.count as usize, set.samples - 1, "one warm latency per later sample at batch 1");
        assert!(lat.min_ns > 0 && lat.p50_ns <= lat.p99_ns && lat.p99_ns <= lat.max_ns, "{lat:?}");
    }
    c.ping(42).unwrap();
}
