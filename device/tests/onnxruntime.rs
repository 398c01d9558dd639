//! The onnxruntime runtime on the device, next to tract: a daemon whose
//! jobs run in real `rba-device worker` processes (each loads its own ONNX
//! Runtime library: one per process), fed the demo models.
//!
//! - tract and onnxruntime agree on the demo ViT and ResNet on the device:
//!   outputs within 1e-4 of the host's tract outputs, the same top-1 on
//!   every test digit, the same accuracy; a runtime comparison of one
//!   model measures both arms interleaved.
//! - `--ep cuda` with PyPI's CPU-only library: `strict` fails with ONNX
//!   Runtime's exact error, `fallback` reports that error and every node
//!   on the CPU.
//! - A missing library, a file that is no library and a too-old one each
//!   give their own error (these need no library).
//! - DeviceInfo lists tract and onnxruntime (version, library, providers).
//!
//! The library is python's `onnxruntime` package's (`capi/`); without it the
//! checks that load it skip with a message (fail under
//! `RBA_REQUIRE_EXTERNAL=1`).

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use rba_device::daemon::OrtConfig;
use rba_device::worker::Isolation;
use rba_device::InProcessOptions;
use rba_protocol::*;
use rba_testkit::daemon::{connect_inproc, fast_client_config, no_progress, spawn_inproc, test_options};
use rba_testkit::demo::{model_eval_set, DemoModel};
use rba_testkit::onnxruntime::require_library;

/// The binary cargo built for these tests: the daemon's workers.
const DEVICE: &str = env!("CARGO_BIN_EXE_rba-device");

/// A daemon with worker processes and onnxruntime from `library`.
fn options(dir: &Path, library: Option<PathBuf>) -> InProcessOptions {
    InProcessOptions {
        isolation: Isolation::Process { program: DEVICE.into() },
        onnxruntime: OrtConfig { library, ..OrtConfig::default() },
        ..test_options(dir, 64 << 20, None)
    }
}

fn client(dev: &std::sync::mpsc::Sender<rba_protocol::mem::MemLink>) -> Client<rba_protocol::mem::MemLink> {
    let config = ClientConfig {
        request_timeout: std::time::Duration::from_secs(20),
        job_idle_timeout: std::time::Duration::from_secs(120),
        ..fast_client_config(None)
    };
    connect_inproc(dev, config).unwrap()
}

fn ort(eps: &[ExecutionProvider], policy: Option<EpPolicy>) -> Option<RuntimeRequest> {
    Some(RuntimeRequest::onnxruntime(eps.to_vec(), policy))
}

fn bench(model: &str, runtime: Option<RuntimeRequest>, runs: u32) -> BenchmarkRequest {
    BenchmarkRequest {
        model: model.into(),
        threads: Some(1),
        warmup: RunPolicy { count: 1, min_time_ms: 0 },
        runs: RunPolicy { count: runs, min_time_ms: 0 },
        input_bundle: None,
        runtime,
    }
}

fn eval(model: &str, bundle: &str, runtime: Option<RuntimeRequest>) -> EvalRequest {
    EvalRequest { model: model.into(), bundle: bundle.into(), threads: Some(1), runtime }
}

fn remote(e: ClientError) -> RemoteError {
    match e {
        ClientError::Remote(r) => r,
        other => panic!("expected a remote error, got {other:?}"),
    }
}

/// "onnxruntime 1.32.0" from "libonnxruntime.so.1.32.0".
fn version_of(lib: &Path) -> String {
    let name = lib.file_name().unwrap().to_string_lossy().into_owned();
    format!("onnxruntime {}", name.trim_start_matches("libonnxruntime.so."))
}

#[test]
fn tract_and_onnxruntime_agree_on_the_demo_models_on_the_device() {
    let Some(lib) = require_library("tract and onnxruntime on the demo models") else { return };
    let dir = tempfile::tempdir().unwrap();
    let (dev, board) = spawn_inproc(options(dir.path(), Some(lib.clone())));
    let mut c = client(&dev);
    for (name, demo) in [("vit", DemoModel::Vit), ("resnet", DemoModel::Resnet)] {
        let model = demo.load().unwrap();
        let set = model_eval_set(&model, 100);
        c.upload(ArtifactKind::Model, name, demo.bytes(), |_| {}).unwrap();
        c.upload(ArtifactKind::EvalBundle, &format!("{name}-digits"), &set.bundle, |_| {}).unwrap();
        let bundle = format!("{name}-digits");
        let t = c.evaluate(&eval(name, &bundle, None), no_progress).unwrap();
        let o = c.evaluate(&eval(name, &bundle, ort(&[], None)), no_progress).unwrap();
        let host_accuracy = set.correct as f64 / set.samples as f64;
        for (r, runtime) in [(&t, RuntimeKind::Tract), (&o, RuntimeKind::OnnxRuntime)] {
            assert_eq!(r.runtime.runtime, runtime, "{name}");
            assert_eq!(r.samples, 100);
            // The expected outputs are the host's tract outputs: every
            // digit's top-1 is the host's, every logit within 1e-4.
            assert_eq!(r.top1_agreement, Some(1.0), "{name} {runtime}: top-1 differs from the host's on some digit");
            let diff = r.max_abs_diff.unwrap();
            assert!(diff < 1e-4, "{name} {runtime}: outputs differ from the host's by {diff}");
            assert_eq!(r.top1_accuracy, Some(host_accuracy), "{name} {runtime}");
            assert!(r.mean_cosine.unwrap() > 0.999_999, "{name} {runtime}: {:?}", r.mean_cosine);
            assert!(r.runtime.first_run_ns > 0 && r.runtime.session_ns > 0, "{name} {runtime}: {:?}", r.runtime);
            assert_eq!(r.latency.unwrap().count, 99, "the first batch is the first run, the other 99 are warm");
        }
        assert_eq!(t.runtime.version, rba_device::runtime::RUNTIME);
        assert_eq!(t.runtime.nodes.len(), 1);
        assert_eq!(t.runtime.nodes[0].provider, "tract");
        assert_eq!(o.runtime.version, version_of(&lib));
        assert_eq!(o.runtime.library.as_deref(), Some(std::fs::canonicalize(&lib).unwrap().to_str().unwrap()));
        assert_eq!((o.runtime.eps.len(), o.runtime.policy), (0, EpPolicy::Fallback), "no board profile: the CPU");
        let [cpu] = &o.runtime.nodes[..] else { panic!("{name}: {:?}", o.runtime.nodes) };
        assert_eq!(cpu.provider, "CPUExecutionProvider");
        assert!(cpu.nodes >= 5, "{name}: {cpu:?}");
        eprintln!("{name}: tract {} nodes, onnxruntime {} on the CPU", t.runtime.nodes[0].nodes, cpu.nodes);
    }
    // One model under both runtimes, interleaved: a comparison of runtimes.
    let req = CompareRequest {
        model_a: "vit".into(),
        model_b: "vit".into(),
        threads: Some(1),
        warmup: RunPolicy { count: 2, min_time_ms: 0 },
        runs: RunPolicy { count: 8, min_time_ms: 0 },
        input_bundle: Some("vit-digits".into()),
        runtime_a: None,
        runtime_b: ort(&[ExecutionProvider::Cpu], Some(EpPolicy::Strict)),
    };
    let cmp = c.compare(&req, no_progress).unwrap();
    assert_eq!((cmp.a.model.as_str(), cmp.b.model.as_str()), ("vit", "vit"));
    assert_eq!((cmp.a.runtime.runtime, cmp.b.runtime.runtime), (RuntimeKind::Tract, RuntimeKind::OnnxRuntime));
    assert_eq!((cmp.a.samples_ns.len(), cmp.b.samples_ns.len()), (8, 8));
    assert_eq!(cmp.b.first_run_ns, cmp.b.runtime.first_run_ns);
    assert_eq!(cmp.b.runtime.eps, [EpOutcome { ep: "cpu".into(), options: vec![], error: None }]);
    assert_eq!(cmp.b.runtime.label(), "onnxruntime [cpu]");
    let ratio = cmp.b.stats.p50_ns as f64 / cmp.a.stats.p50_ns as f64;
    assert!((cmp.ratio_of_medians - ratio).abs() < 1e-12);
    eprintln!("vit p50: tract {} us, onnxruntime {} us", cmp.a.stats.p50_ns / 1000, cmp.b.stats.p50_ns / 1000);
    // The board says what it has.
    let info = c.device_info().unwrap();
    let [tract, onnx] = &info.runtimes[..] else { panic!("{:?}", info.runtimes) };
    assert_eq!((tract.runtime, tract.problem.as_deref()), (RuntimeKind::Tract, None));
    assert_eq!(onnx.runtime, RuntimeKind::OnnxRuntime);
    assert_eq!(onnx.problem, None);
    assert_eq!(Some(format!("onnxruntime {}", onnx.version.as_deref().unwrap())), Some(version_of(&lib)));
    assert!(onnx.providers.contains(&"CPUExecutionProvider".to_string()), "{:?}", onnx.providers);
    assert!(!onnx.providers.contains(&"CUDAExecutionProvider".to_string()), "PyPI's library is CPU only");
    drop(c);
    drop(dev);
    board.join().unwrap();
}

#[test]
fn cuda_with_a_cpu_only_library_strict_fails_fallback_runs_on_the_cpu() {
    let Some(lib) = require_library("--ep cuda with a CPU-only library") else { return };
    let dir = tempfile::tempdir().unwrap();
    let (dev, board) = spawn_inproc(options(dir.path(), Some(lib)));
    let mut c = client(&dev);
    c.upload(ArtifactKind::Model, "resnet", DemoModel::Resnet.bytes(), |_| {}).unwrap();
    // fallback: ONNX Runtime's exact error, and every node on the CPU.
    let r = c.benchmark(&bench("resnet", ort(&[ExecutionProvider::Cuda], Some(EpPolicy::Fallback)), 3), no_progress);
    let r = r.unwrap();
    let [cuda] = &r.runtime.eps[..] else { panic!("{:?}", r.runtime.eps) };
    assert_eq!(cuda.ep, "cuda");
    let why = cuda.error.clone().expect("CUDA cannot register with PyPI's CPU-only library");
    assert!(!why.is_empty());
    eprintln!("onnxruntime says: {why}");
    let [cpu] = &r.runtime.nodes[..] else { panic!("{:?}", r.runtime.nodes) };
    assert_eq!(cpu.provider, "CPUExecutionProvider");
    // All of them: as many as a CPU-only session runs.
    let plain = c.benchmark(&bench("resnet", ort(&[], None), 1), no_progress).unwrap();
    assert_eq!(plain.runtime.nodes, r.runtime.nodes, "every node fell back to the CPU");
    assert_eq!(r.samples_ns.len(), 3);
    // strict: the job fails with that same error.
    let e = remote(
        c.benchmark(&bench("resnet", ort(&[ExecutionProvider::Cuda], Some(EpPolicy::Strict)), 3), no_progress)
            .unwrap_err(),
    );
    assert_eq!(
        e,
        RemoteError::Unsupported(format!(
            "model 'resnet': the cuda execution provider did not register (policy strict): {why}"
        ))
    );
    // strict with CPU nodes not asked for: XNNPACK is not in PyPI's library
    // either; asking for cpu alone under strict is fine.
    let ok = c.benchmark(&bench("resnet", ort(&[ExecutionProvider::Cpu], Some(EpPolicy::Strict)), 1), no_progress);
    assert_eq!(ok.unwrap().runtime.nodes, plain.runtime.nodes);
    // tract takes no providers.
    let bad = RuntimeRequest { runtime: RuntimeKind::Tract, eps: vec![ExecutionProvider::Cuda], policy: None };
    assert!(matches!(
        remote(c.benchmark(&bench("resnet", Some(bad), 1), no_progress).unwrap_err()),
        RemoteError::BadRequest(m) if m.contains("apply to onnxruntime")
    ));
    drop(c);
    drop(dev);
    board.join().unwrap();
}

#[test]
fn a_missing_library_a_non_library_and_a_too_old_one_each_say_so() {
    let dir = tempfile::tempdir().unwrap();
    let libs = tempfile::tempdir().unwrap();
    let junk = libs.path().join("junk");
    std::fs::create_dir_all(&junk).unwrap();
    std::fs::write(junk.join("libonnxruntime.so.1.20.0"), b"not an ELF file").unwrap();
    let old = libs.path().join("old");
    std::fs::create_dir_all(&old).unwrap();
    std::fs::write(old.join("libonnxruntime.so.1.16.3"), b"\x7fELF as old as 1.16").unwrap();
    let missing = libs.path().join("nowhere");
    type Check = Box<dyn Fn(&str) -> bool>;
    let cases: [(PathBuf, Check); 3] = [
        (
            missing.clone(),
            Box::new(move |m: &str| {
                m == format!(
                    "model 'lin': onnxruntime is not available on this board: --ort-library names {}, which holds no \
                     ONNX Runtime library (libonnxruntime.so*)",
                    missing.display()
                )
            }),
        ),
        (
            junk.clone(),
            Box::new(|m: &str| {
                m.starts_with("model 'lin': cannot load onnxruntime from ") && m.contains("libonnxruntime.so.1.20.0: ")
            }),
        ),
        (
            old.clone(),
            Box::new(|m: &str| {
                m.contains("onnxruntime 1.16.3")
                    && m.contains("is older than 1.17, the oldest this rba-device supports")
                    && m.contains("ONNX Runtime API 17")
            }),
        ),
    ];
    for (lib, check) in cases {
        let (dev, board) = spawn_inproc(options(dir.path(), Some(lib.clone())));
        let mut c = client(&dev);
        c.upload(ArtifactKind::Model, "lin", &rba_testkit::models::small_linear(), |_| {}).unwrap();
        let e = remote(c.benchmark(&bench("lin", ort(&[], None), 1), no_progress).unwrap_err());
        let RemoteError::Unsupported(m) = &e else { panic!("{}: {e:?}", lib.display()) };
        // The daemon prefixes the model only for errors from the job; the
        // library checks before the job say where they stopped.
        let m = if m.starts_with("model 'lin': ") { m.clone() } else { format!("model 'lin': {m}") };
        assert!(check(&m), "{}: {m}", lib.display());
        // tract runs on regardless.
        assert_eq!(c.benchmark(&bench("lin", None, 2), no_progress).unwrap().samples_ns.len(), 2);
        // DeviceInfo tells why onnxruntime is not there.
        let info = c.device_info().unwrap();
        let onnx = info.runtimes.iter().find(|r| r.runtime == RuntimeKind::OnnxRuntime).unwrap();
        let problem = onnx.problem.clone().unwrap_or_default();
        // The same words as the job's error.
        assert!(!problem.is_empty() && m.contains(&problem), "{}: {problem}\n{m}", lib.display());
        drop(c);
        drop(dev);
        board.join().unwrap();
    }
}

/// Gates run on the runtime the application uses: an activation asking
/// strictly for CUDA on a CPU-only library fails with ONNX Runtime's error
/// and activates nothing; on onnxruntime's CPU the gates hold and the
/// evaluation and benchmark behind them say onnxruntime ran them.
#[test]
fn gates_run_on_the_runtime_the_application_uses() {
    let Some(lib) = require_library("gates on onnxruntime") else { return };
    let dir = tempfile::tempdir().unwrap();
    let (dev, board) = spawn_inproc(options(dir.path(), Some(lib)));
    let mut c = client(&dev);
    let set = model_eval_set(&DemoModel::Resnet.load().unwrap(), 50);
    c.upload(ArtifactKind::Model, "resnet", DemoModel::Resnet.bytes(), |_| {}).unwrap();
    c.upload(ArtifactKind::EvalBundle, "digits", &set.bundle, |_| {}).unwrap();
    let go = |_: &Progress| std::ops::ControlFlow::Continue(());
    let req = ActivateRequest {
        app: "cam".into(),
        model: "resnet".into(),
        sha256: rba_testkit::sha256(DemoModel::Resnet.bytes()),
        gates: parse_gates("top1>=50,agreement>=99,p99<=60000ms").unwrap(),
        eval_bundle: Some("digits".into()),
        threads: Some(1),
        warmup: RunPolicy { count: 1, min_time_ms: 0 },
        runs: RunPolicy { count: 3, min_time_ms: 0 },
        runtime: ort(&[], None),
    };
    let strict_cuda =
        ActivateRequest { runtime: ort(&[ExecutionProvider::Cuda], Some(EpPolicy::Strict)), ..req.clone() };
    match remote(c.activate(&strict_cuda, go).unwrap_err()) {
        RemoteError::Unsupported(m) => assert!(m.contains("the cuda execution provider did not register"), "{m}"),
        other => panic!("{other:?}"),
    }
    // Nothing activated: the board knows no application of that name.
    assert_eq!(remote(c.app_status(Some("cam"), 10).unwrap_err()), RemoteError::NotFound("cam".into()));
    let r = c.activate(&req, go).unwrap();
    assert_eq!(r.outcome, ActivationOutcome::Activated, "{:?}", r.checks);
    assert!(r.checks.iter().all(|g| g.passed) && r.checks.len() == 3, "{:?}", r.checks);
    let (e, b) = (r.evaluation.unwrap(), r.benchmark.unwrap());
    assert_eq!((e.runtime.runtime, b.runtime.runtime), (RuntimeKind::OnnxRuntime, RuntimeKind::OnnxRuntime));
    assert_eq!(e.top1_agreement, Some(1.0));
    assert_eq!(b.samples_ns.len(), 3);
    drop(c);
    drop(dev);
    board.join().unwrap();
}
