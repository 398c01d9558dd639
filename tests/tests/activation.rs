//! Deploying for production with the real binaries: `rba deploy --activate`
//! with gates checked on the board (a worse model is refused, the old one
//! stays active, the host names the failed condition and its measured
//! value), and `rba status` / `rba rollback` over every kind of link: TCP,
//! a pseudo-terminal, the in-process `local` board and the emulated
//! aarch64 board.

#![allow(clippy::unwrap_used)]

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use rba_host::compact::surgery::{replace_spans, Span, Translator};
use rba_host::demo::{Digits, Split};
use rba_host::model::run::{argmax_rows, predict};
use rba_host::model::Model;
use rba_protocol::*;
use rba_testkit::demo::demo;
use rba_testkit::process::{output_text, rba_command, run_logged, serial_device, DeviceProcess};
use rba_testkit::{qemu, sha256, write_key_file, KEY};

fn rba(args: &[&str], known: &Path) -> Output {
    run_logged(rba_command(args, known), args)
}

fn text(out: &Output) -> String {
    output_text(out)
}

/// Top-1 accuracy (%) of a model on the whole test split, on the host.
fn host_accuracy(model: &rba_host::onnx::OnnxModel) -> f64 {
    let digits = Digits::embedded().unwrap();
    let idx = digits.indices(Split::Test);
    let x = digits.batch(idx);
    let p = argmax_rows(&predict(model, &x, 16).unwrap());
    let correct = p.iter().zip(idx.iter()).filter(|(p, &i)| **p == digits.label(i)).count();
    100.0 * correct as f64 / idx.len() as f64
}

struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Scratch {
        let s = Scratch { dir: tempfile::tempdir().unwrap() };
        write_key_file(&s.key(), KEY);
        s
    }
    fn key(&self) -> PathBuf {
        self.dir.path().join("board.key")
    }
    fn known(&self) -> PathBuf {
        self.dir.path().join("known_boards")
    }
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

#[test]
fn a_failing_gate_keeps_the_old_model_and_names_the_measured_value() {
    let s = Scratch::new();
    let store = tempfile::tempdir().unwrap();
    let device = DeviceProcess::tcp(store.path());
    let addr = device.tcp_addr().to_string();
    let key = s.key().display().to_string();
    let link = ["--addr", addr.as_str(), "--key-file", key.as_str()];
    let active = store.path().join("apps/inspect/active.onnx");

    // The demo ViT, activated with its gates met.
    let mut args = vec!["deploy", "demo:vit", "--activate", "inspect", "--gate", "top1>=80,agreement>=99,p99<=5000ms"];
    args.extend(["--eval", "demo:test", "--reference", "demo:vit"]);
    args.extend(link);
    let out = rba(&args, &s.known());
    assert!(out.status.success(), "{}", text(&out));
    let t = text(&out);
    assert!(t.contains("pass top1 ") && t.contains("pass agreement 100.00% >= 99.00%"), "{t}");
    assert!(t.contains(&format!("{addr}: inspect now runs vit-digits (generation 1")), "{t}");
    assert_eq!(std::fs::read(&active).unwrap(), demo().vit_bytes);

    // A worse model: eight of the twelve transformer layers replaced by the identity.
    let m = Model::new(demo().vit.clone(), None).unwrap();
    let broken = replace_spans(&m.onnx, &m.blocks, &[(Span::new(2, 10), Translator::Identity)]).unwrap();
    let (good_acc, broken_acc) = (host_accuracy(&demo().vit), host_accuracy(&broken));
    eprintln!("host accuracy: ViT {good_acc:.2}%, broken {broken_acc:.2}%");
    assert!(broken_acc + 10.0 < good_acc, "{broken_acc} vs {good_acc}");
    let threshold = format!("{:.1}", (good_acc + broken_acc) / 2.0);
    let path = s.path("vit-broken.onnx");
    std::fs::write(&path, broken.to_bytes()).unwrap();
    let gate = format!("top1>={threshold},p99<=5000ms");
    let p = path.display().to_string();
    let mut args = vec!["deploy", p.as_str(), "--activate", "inspect", "--gate", gate.as_str(), "--eval", "demo:test"];
    args.extend(link);
    let out = rba(&args, &s.known());
    assert!(!out.status.success(), "a failed gate is a failed command");
    let t = text(&out);
    let want =
        format!("gate failed on board {addr}: top1 {broken_acc:.2}% < {:.2}%", threshold.parse::<f64>().unwrap());
    assert!(t.contains(&want), "expected {want:?} in:\n{t}");
    assert!(t.contains("pass p99 "), "the conditions that held are shown too:\n{t}");
    assert!(t.contains("inspect stays on vit-digits (generation 1"), "{t}");
    assert_eq!(std::fs::read(&active).unwrap(), demo().vit_bytes, "the old model stays active");

    // The board's record: the refusal with its evidence, the old model still active.
    let out = rba(&["status", "--app", "inspect", "--addr", &addr, "--key-file", &key], &s.known());
    assert!(out.status.success());
    let t = text(&out);
    assert!(t.contains("inspect: vit-digits, sha256 ") && t.contains("generation 1)"), "{t}");
    assert!(
        t.contains(&format!(
            "gate failed vit-broken sha256 {}...; top1 {broken_acc:.2}%",
            &hex(&sha256(&std::fs::read(&path).unwrap()))[..16]
        )),
        "{t}"
    );
    // Bad gates never reach a board.
    let out = rba(
        &["deploy", "demo:vit", "--activate", "inspect", "--gate", "top1>=97,latency<5", "--addr", &addr],
        &s.known(),
    );
    assert!(text(&out).contains("gate 2 'latency<5': unknown metric 'latency'"), "{}", text(&out));
    let out = rba(&["deploy", "demo:vit", "--activate", "inspect", "--gate", "top1>=97", "--addr", &addr], &s.known());
    assert!(text(&out).contains("need eval data: pass --eval DATA"), "{}", text(&out));
}

/// Activates A then B through `rba` on `link`, checks `rba status`, rolls
/// back with `rba rollback` and checks the bytes at the stable path.
fn status_and_rollback_with_rba(link: &[&str], store: &Path, s: &Scratch, models: [(&str, &[u8]); 2]) {
    let active = store.join("apps/cam/active.onnx");
    for (spec, _) in models {
        let mut args = vec!["deploy", spec, "--activate", "cam"];
        args.extend(link);
        let out = rba(&args, &s.known());
        assert!(out.status.success(), "{}", text(&out));
    }
    assert_eq!(std::fs::read(&active).unwrap(), models[1].1);
    let mut args = vec!["status", "--app", "cam"];
    args.extend(link);
    let out = rba(&args, &s.known());
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains(&format!("cam: {}", ModelName::of(models[1].0))) && t.contains("generation 2"), "{t}");
    assert!(t.contains(&format!("rollback restores {} (generation 1", ModelName::of(models[0].0))), "{t}");
    let mut args = vec!["rollback", "cam"];
    args.extend(link);
    let out = rba(&args, &s.known());
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains(&format!("rolled cam back from {} (generation 2", ModelName::of(models[1].0))), "{t}");
    assert_eq!(std::fs::read(&active).unwrap(), models[0].1, "byte for byte");
}

/// The device name `rba` gives a model argument.
struct ModelName;

impl ModelName {
    fn of(spec: &str) -> String {
        match spec {
            "demo:vit" => "vit-digits".into(),
            "demo:resnet" => "resnet-digits".into(),
            p => Path::new(p).file_stem().unwrap().to_string_lossy().into(),
        }
    }
}

#[test]
fn status_and_rollback_over_tcp_a_pty_the_local_and_the_emulated_board() {
    let s = Scratch::new();
    let slim = s.path("vit-slim.onnx");
    std::fs::write(&slim, &demo().slim_bytes).unwrap();
    let slim_spec = slim.display().to_string();
    let models = [("demo:vit", demo().vit_bytes.as_slice()), (slim_spec.as_str(), demo().slim_bytes.as_slice())];
    let key = s.key().display().to_string();

    // TCP, the real daemon.
    let store = tempfile::tempdir().unwrap();
    let device = DeviceProcess::tcp(store.path());
    let addr = device.tcp_addr().to_string();
    status_and_rollback_with_rba(&["--addr", &addr, "--key-file", &key], store.path(), &s, models);

    // The local board (the daemon in rba's own process, over a pty), on a
    // store that outlives each command.
    let store = tempfile::tempdir().unwrap();
    let st = store.path().display().to_string();
    status_and_rollback_with_rba(&["--board", "local", "--store", &st], store.path(), &s, models);

    // A pseudo-terminal to the real daemon, through the protocol client.
    let store = tempfile::tempdir().unwrap();
    let config = ClientConfig { request_timeout: Duration::from_secs(5), max_retries: 2, ..ClientConfig::serial() };
    let (_device, mut c) = serial_device(|path| DeviceProcess::serial(path, store.path()), config);
    let go = |_: &Progress| ControlFlow::Continue(());
    for (name, bytes) in [("a", demo().vit_bytes.as_slice()), ("b", demo().slim_bytes.as_slice())] {
        c.upload(ArtifactKind::Model, name, bytes, |_| {}).unwrap();
        let req = ActivateRequest {
            app: "cam".into(),
            model: name.into(),
            sha256: sha256(bytes),
            gates: Vec::new(),
            eval_bundle: None,
            threads: None,
            warmup: RunPolicy::default(),
            runs: RunPolicy::default(),
            runtime: None,
        };
        assert_eq!(c.activate(&req, go).unwrap().outcome, ActivationOutcome::Activated);
    }
    let st = c.app_status(Some("cam"), 10).unwrap();
    assert_eq!(st[0].active.as_ref().unwrap().model, "b");
    let r = c.rollback(&RollbackRequest { app: "cam".into(), from_generation: Some(2) }, go).unwrap();
    assert_eq!(r.outcome, ActivationOutcome::RolledBack);
    assert_eq!(std::fs::read(store.path().join("apps/cam/active.onnx")).unwrap(), demo().vit_bytes);

    // The emulated aarch64 board (skips where qemu or the cross tools are missing).
    if qemu::available() {
        qemu::arm_binary();
        let store = tempfile::tempdir().unwrap();
        let st = store.path().display().to_string();
        let small = s.path("small.onnx");
        std::fs::write(&small, rba_testkit::models::small_linear()).unwrap();
        let tiny = s.path("tiny.onnx");
        std::fs::write(&tiny, rba_testkit::models::mlp_model(8, 1)).unwrap();
        let (a, b) = (small.display().to_string(), tiny.display().to_string());
        let models = [(a.as_str(), std::fs::read(&small).unwrap()), (b.as_str(), std::fs::read(&tiny).unwrap())];
        let refs = [(models[0].0, models[0].1.as_slice()), (models[1].0, models[1].1.as_slice())];
        status_and_rollback_with_rba(&["--board", "qemu-aarch64", "--store", &st], store.path(), &s, refs);
        qemu::say("status and rollback passed on the emulated board");
    }
}
