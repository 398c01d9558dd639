//! The qemu-aarch64 board: `rba-device` cross-compiled for
//! aarch64-unknown-linux-gnu, run under qemu-user, linked to the host over a
//! pseudo-terminal pair, running a real benchmark and evaluation.
//!
//! Prerequisites, the cross build and the command line live in
//! `rba_testkit::qemu` (shared with the end-to-end tests in `tests/`): the
//! test runs whenever the aarch64 target, cross linker and qemu-user are
//! present, and otherwise skips with a message (or fails under
//! `RBA_REQUIRE_EXTERNAL=1`).
//! Timings under emulation mean nothing; results and errors do.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use rba_protocol::*;
use rba_testkit::daemon::{bench_req, no_progress};
use rba_testkit::models::{linear_bundle, mlp_model, small_linear, small_linear_eval, unknown_op_model};
use rba_testkit::process::DeviceProcess;
use rba_testkit::qemu::{self, say, serve_on_serial};
use serialport::{SerialPort, TTYPort};

#[test]
fn benchmark_and_evaluate_on_the_emulated_board() {
    if !qemu::available() {
        return;
    }
    let (mut master, slave) = TTYPort::pair().expect("pseudo-terminals");
    let path = slave.name().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut p = DeviceProcess::start(serve_on_serial(&path, dir.path()));
    assert!(p.wait_for("serving on", Duration::from_secs(60)).is_some(), "{}", p.stderr());
    drop(slave);
    master.set_timeout(Duration::from_millis(20)).unwrap();
    let config = ClientConfig {
        request_timeout: Duration::from_secs(15),
        job_idle_timeout: Duration::from_secs(120),
        max_retries: 2,
        ..ClientConfig::serial()
    };
    let mut c = Client::connect(master.try_clone_native().unwrap(), config).unwrap();
    let id = c.session().unwrap().device.clone();
    assert_eq!((id.arch.as_str(), id.board.as_str()), ("aarch64", "qemu-aarch64"));

    c.upload(ArtifactKind::Model, "lin", &small_linear(), |_| {}).unwrap();
    c.upload(ArtifactKind::Model, "mlp", &mlp_model(64, 3), |_| {}).unwrap();
    let r = c.benchmark(&bench_req("mlp", 10), no_progress).unwrap();
    assert_eq!(r.samples_ns.len(), 10);
    assert_eq!(r.threads, 1, "qemu-aarch64.toml sets 1 thread");
    assert_eq!(r.stats, LatencyStats::from_samples(&r.samples_ns).unwrap());
    say(&format!("mlp p50 {} us under emulation (meaningless as a timing)", r.stats.p50_ns / 1000));

    // Correctness: the same hand-computed figures as on the host.
    let samples = [[1.0, 0.0, 0.0, 0.0], [0.0, 2.0, 0.0, 1.0], [0.0, 0.0, 3.0, 0.0], [0.2, 0.1, 0.0, 0.0]];
    let exact: Vec<[f32; 3]> = samples.iter().map(|x| small_linear_eval(x)).collect();
    let b = linear_bundle(&samples, Some(vec![0, 1, 1, 0]), Some(exact));
    c.upload(ArtifactKind::EvalBundle, "b", &b, |_| {}).unwrap();
    let e = c
        .evaluate(&EvalRequest { model: "lin".into(), bundle: "b".into(), threads: None, runtime: None }, no_progress)
        .unwrap();
    assert_eq!((e.samples, e.top1_accuracy, e.top1_agreement), (4, Some(0.75), Some(1.0)));
    assert!(e.max_abs_diff.unwrap() < 1e-5, "{:?}", e.max_abs_diff);
    assert!((e.mean_cosine.unwrap() - 1.0).abs() < 1e-6);

    // A tract load error crosses the emulated link as a typed error.
    c.upload(ArtifactKind::Model, "weird", &unknown_op_model(), |_| {}).unwrap();
    match c.benchmark(&bench_req("weird", 1), no_progress) {
        Err(ClientError::Remote(RemoteError::Runtime(m))) => assert!(m.contains("TotallyMadeUpOp"), "{m}"),
        other => panic!("{other:?}"),
    }
    drop(c);
    p.sigterm();
    let status = p.wait_exit(Duration::from_secs(30)).expect("no exit after SIGTERM");
    assert!(status.success(), "{status:?}\n{}", p.stderr());
}

/// onnxruntime on the emulated board: PyPI's aarch64 library
/// (`tools/fetch-onnxruntime-aarch64`) loaded by the ARM daemon under
/// qemu-user (`-cpu cortex-a76`), benchmarking and evaluating the demo
/// ResNet end to end, agreeing with the host's tract outputs.
#[test]
fn onnxruntime_on_the_emulated_board() {
    if !qemu::available() {
        return;
    }
    let lib = rba_testkit::onnxruntime::aarch64_library();
    if !rba_testkit::external::require("onnxruntime on the emulated qemu-aarch64 board", lib.as_ref().err().cloned()) {
        return;
    }
    let lib = lib.unwrap();
    let (mut master, slave) = TTYPort::pair().expect("pseudo-terminals");
    let path = slave.name().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let lib_arg = lib.display().to_string();
    let cmd = qemu::serve_on_serial_with(&path, dir.path(), &["--ort-library", &lib_arg], Some("cortex-a76"));
    let mut p = DeviceProcess::start(cmd);
    assert!(p.wait_for("serving on", Duration::from_secs(60)).is_some(), "{}", p.stderr());
    drop(slave);
    master.set_timeout(Duration::from_millis(20)).unwrap();
    let config = ClientConfig {
        request_timeout: Duration::from_secs(30),
        job_idle_timeout: Duration::from_secs(300),
        max_retries: 2,
        ..ClientConfig::serial()
    };
    let mut c = Client::connect(master.try_clone_native().unwrap(), config).unwrap();
    let info = c.device_info().unwrap();
    let onnx = info.runtimes.iter().find(|r| r.runtime == RuntimeKind::OnnxRuntime).unwrap();
    assert_eq!(onnx.problem, None, "{onnx:?}\n{}", p.stderr());
    assert_eq!(onnx.version.as_deref(), Some(rba_testkit::onnxruntime::AARCH64_VERSION));
    assert!(onnx.providers.contains(&"CPUExecutionProvider".to_string()), "{onnx:?}");

    let resnet = rba_testkit::demo::DemoModel::Resnet;
    let set = rba_testkit::demo::model_eval_set(&resnet.load().unwrap(), 20);
    c.upload(ArtifactKind::Model, "resnet", resnet.bytes(), |_| {}).unwrap();
    c.upload(ArtifactKind::EvalBundle, "digits", &set.bundle, |_| {}).unwrap();
    let ort = Some(RuntimeRequest::onnxruntime(vec![], None));
    let r = c.benchmark(&BenchmarkRequest { runtime: ort.clone(), ..bench_req("resnet", 5) }, no_progress).unwrap();
    assert_eq!(r.samples_ns.len(), 5);
    assert_eq!(r.runtime.runtime, RuntimeKind::OnnxRuntime);
    assert_eq!(r.runtime.version, format!("onnxruntime {}", rba_testkit::onnxruntime::AARCH64_VERSION));
    let [cpu] = &r.runtime.nodes[..] else { panic!("{:?}", r.runtime.nodes) };
    assert_eq!(cpu.provider, "CPUExecutionProvider");
    say(&format!("resnet on onnxruntime under emulation: p50 {} us, {} nodes", r.stats.p50_ns / 1000, cpu.nodes));
    let req = EvalRequest { model: "resnet".into(), bundle: "digits".into(), threads: None, runtime: ort };
    let e = c.evaluate(&req, no_progress).unwrap();
    assert_eq!((e.samples, e.top1_agreement), (20, Some(1.0)));
    assert_eq!(e.top1_accuracy, Some(set.correct as f64 / 20.0));
    assert!(e.max_abs_diff.unwrap() < 1e-4, "{:?}", e.max_abs_diff);
    drop(c);
    p.sigterm();
    let status = p.wait_exit(Duration::from_secs(30)).expect("no exit after SIGTERM");
    assert!(status.success(), "{status:?}\n{}", p.stderr());
}
