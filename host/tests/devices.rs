//! Host-side device commands against real daemons: the in-process `local`
//! board (rba-device on a thread, over a pseudo-terminal pair) and a
//! daemon serving TCP on loopback with a pre-shared key. Few runs and small
//! subsets keep each test quick; correctness is what is checked.

#![allow(clippy::unwrap_used)]

use std::net::TcpListener;

use rba_device::store::Store;
use rba_device::{spawn_in_process, InProcessBoard, InProcessLink, InProcessOptions};
use rba_host::board::{
    build_eval_bundle, BenchOptions, BoardError, Device, LinkOptions, ModelArtifact, Pinning, Target,
};
use rba_host::compact::surgery::{replace_spans, Span, Translator};
use rba_host::data::PreprocessOptions;
use rba_host::demo::DemoModel;
use rba_host::model::run::{argmax_rows, predict};
use rba_host::model::Model;
use rba_host::onnx::OnnxModel;
use rba_protocol::{hex, ClientError, LatencyStats, RemoteError, RunPolicy};
use rba_testkit::psk;
use sha2::{Digest, Sha256};

const KEY: &str = "646576696365732d746573742d6b65792d303132333435363738392d2d2d2d2d";

fn local() -> Device {
    Device::connect(&Target::Local { store: None }).unwrap()
}

fn quick(runs: u32) -> BenchOptions {
    BenchOptions {
        warmup: RunPolicy { count: 2, min_time_ms: 0 },
        runs: RunPolicy { count: runs, min_time_ms: 0 },
        threads: Some(1),
        resamples: 500,
        ..BenchOptions::default()
    }
}

fn check_stats(s: &LatencyStats, samples: &[u64]) {
    assert_eq!(s.count as usize, samples.len());
    let order = [s.min_ns, s.p50_ns, s.p90_ns, s.p95_ns, s.p99_ns, s.max_ns];
    assert!(order.windows(2).all(|w| w[0] <= w[1]), "percentiles out of order: {order:?}");
    assert_eq!(*s, LatencyStats::from_samples(samples).unwrap(), "stats must derive from the raw samples");
    assert!(s.min_ns > 0);
}

/// The demo ViT with all but its first and last blocks replaced by an
/// identity: the same interface, a fraction of the work.
fn truncated_vit() -> OnnxModel {
    let model = Model::new(DemoModel::Vit.load().unwrap(), None).unwrap();
    let n = model.blocks.blocks.len();
    assert!(n >= 4, "the demo ViT has {n} blocks");
    replace_spans(&model.onnx, &model.blocks, &[(Span::new(1, n - 1), Translator::Identity)]).unwrap()
}

#[test]
fn deploy_twice_skips_the_second_upload() {
    let mut d = local();
    assert_eq!(d.identity().board, "local");
    assert!(d.identity().cores >= 1 && !d.identity().runtime.is_empty());
    let m = ModelArtifact::from_spec("demo:resnet").unwrap();
    assert_eq!(m.name, "resnet-digits");
    let first = d.deploy(&m).unwrap();
    let second = d.deploy(&m).unwrap();
    assert!(!first.skipped && second.skipped, "{first:?} {second:?}");
    assert_eq!(first.sha256, second.sha256);
    assert_eq!(first.sha256, hex(&Sha256::digest(&m.bytes)));
    assert_eq!(first.size, m.bytes.len() as u64);
    // Different bytes under the same name are uploaded again.
    let changed = ModelArtifact::new("resnet-digits", truncated_vit());
    assert!(!d.deploy(&changed).unwrap().skipped);
}

#[test]
fn deploy_resumes_an_interrupted_upload() {
    // A store holding the first half of the model, as a link that broke
    // mid-upload leaves it.
    let dir = tempfile::tempdir().unwrap();
    let m = ModelArtifact::from_spec("demo:resnet").unwrap();
    let half = m.bytes.len() / 2;
    {
        let mut store = Store::open(dir.path(), 1 << 30).unwrap();
        let begin = rba_protocol::UploadBegin {
            kind: rba_protocol::ArtifactKind::Model,
            name: m.name.clone(),
            size: m.bytes.len() as u64,
            sha256: Sha256::digest(&m.bytes).into(),
        };
        assert_eq!(store.begin(&begin).unwrap(), 0);
        store.write(0, &m.bytes[..half]).unwrap();
    }
    let mut d = Device::connect(&Target::Local { store: Some(dir.path().to_path_buf()) }).unwrap();
    let r = d.deploy(&m).unwrap();
    assert_eq!((r.skipped, r.resumed_from), (false, half as u64));
    assert_eq!(r.sha256, hex(&Sha256::digest(&m.bytes)));
    let stored = std::fs::read(dir.path().join("models").join(&m.name)).unwrap();
    assert!(stored == m.bytes, "the resumed upload must be byte-identical");
}

#[test]
fn bench_one_model() {
    let mut d = local();
    let m = ModelArtifact::from_spec("demo:resnet").unwrap();
    d.deploy(&m).unwrap();
    let report = d.bench(&[&m.name], &quick(7)).unwrap();
    assert_eq!(report.results.len(), 1);
    assert!(report.ab.is_none());
    let r = &report.results[0];
    assert_eq!((r.model.as_str(), r.samples_ns.len(), r.threads), ("resnet-digits", 7, 1));
    assert_eq!(r.warmup_runs, 2);
    check_stats(&r.stats, &r.samples_ns);
    assert!(r.load_time_ns > 0 && r.first_run_ns > 0);
    let text = rba_host::report::text::bench(&report);
    assert!(text.contains("resnet-digits") && text.contains("p99"), "{text}");
    // An unknown model is the device's typed error, naming the model.
    match d.bench(&["nope"], &quick(1)) {
        Err(BoardError::Device { source: ClientError::Remote(RemoteError::NotFound(m)), .. }) => {
            assert!(m.contains("nope"), "{m}")
        }
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("an unknown model was benchmarked"),
    }
}

#[test]
fn ab_compare_with_a_truncated_vit() {
    let mut d = local();
    let a = ModelArtifact::from_spec("demo:vit").unwrap();
    let b = ModelArtifact::new("vit-truncated", truncated_vit());
    d.deploy(&a).unwrap();
    d.deploy(&b).unwrap();
    let report = d.bench(&[&a.name, &b.name], &quick(12)).unwrap();
    let [ra, rb] = &report.results[..] else { panic!("two results expected") };
    assert_eq!((ra.model.as_str(), rb.model.as_str()), ("vit-digits", "vit-truncated"));
    for r in [ra, rb] {
        assert_eq!(r.samples_ns.len(), 12);
        check_stats(&r.stats, &r.samples_ns);
    }
    let ab = report.ab.as_ref().unwrap();
    let s = ab.speedup.unwrap();
    let point = ra.stats.p50_ns as f64 / rb.stats.p50_ns as f64;
    assert!((s.point - point).abs() < 1e-12, "{s:?} vs {point}");
    assert!((s.point * ab.ratio_of_medians - 1.0).abs() < 1e-9, "speedup is the inverse of p50 B/A");
    assert!(s.low <= s.point && s.point <= s.high, "the interval must bracket the ratio of medians: {s:?}");
    assert!(s.point > 1.0, "most of the ViT removed must be faster: {s:?}");
    assert!(rba_host::report::text::bench(&report).contains("interleaved"));
}

#[test]
fn on_device_accuracy_equals_host_accuracy() {
    let vit = DemoModel::Vit.load().unwrap();
    let set = build_eval_bundle(&vit, "demo:test", Some(60), &PreprocessOptions::default(), Some(&vit)).unwrap();
    assert_eq!(set.bundle.num_samples(), 60);
    let labels = set.labels.clone().unwrap();
    let host = argmax_rows(&predict(&vit, &set.inputs, 16).unwrap());
    let host_accuracy = host.iter().zip(&labels).filter(|(p, l)| p == l).count() as f64 / labels.len() as f64;
    assert!(host_accuracy > 0.8, "the demo ViT should classify digits: {host_accuracy}");

    let mut d = local();
    let m = ModelArtifact::new("vit", vit);
    d.deploy(&m).unwrap();
    let e = d.evaluate(&m.name, &set.bundle).unwrap();
    assert_eq!(e.samples, 60);
    let device_accuracy = e.top1_accuracy.unwrap();
    assert!((device_accuracy - host_accuracy).abs() < 1e-12, "device {device_accuracy} vs host {host_accuracy}");
    // Same model, same inputs: the outputs agree with the host's.
    assert_eq!(e.top1_agreement, Some(1.0));
    assert!(e.max_abs_diff.unwrap() < 1e-3, "{:?}", e.max_abs_diff);
    // The bundle is content-addressed: evaluating again does not re-upload it.
    let again = d.evaluate(&m.name, &set.bundle).unwrap();
    assert_eq!(again.top1_accuracy, e.top1_accuracy);
}

/// rba-device serving TCP on a loopback port with a key, in this process.
struct TcpDaemon {
    addr: String,
    _board: InProcessBoard,
}

impl TcpDaemon {
    fn start() -> TcpDaemon {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let options = InProcessOptions {
            board_name: "loopback".into(),
            threads: 1,
            quota: 1 << 30,
            key: Some(psk(KEY)),
            ..InProcessOptions::default()
        };
        let board = spawn_in_process(options, InProcessLink::Tcp(listener)).unwrap();
        TcpDaemon { addr, _board: board }
    }

    fn target(&self, key: Option<&str>) -> Target {
        Target::Tcp { addr: self.addr.clone(), key: key.map(psk), board: None }
    }
}

#[test]
fn tcp_deploy_bench_and_keys() {
    let daemon = TcpDaemon::start();
    let known = tempfile::tempdir().unwrap();
    let pinning = Pinning::File(known.path().join("known_boards"));
    let connect = |key| Device::connect_pinned(&daemon.target(key), &pinning);
    {
        let mut d = connect(Some(KEY)).unwrap();
        assert!(d.session().authenticated);
        let note = d.pin_note().unwrap();
        assert!(note.contains("pinned") && note.contains(&d.fingerprint()), "{note}");
        assert_eq!(d.identity().board, "loopback");
        let m = ModelArtifact::from_spec("demo:resnet").unwrap();
        let first = d.deploy(&m).unwrap();
        let second = d.deploy(&m).unwrap();
        assert!(!first.skipped && second.skipped);
        assert_eq!(first.sha256, second.sha256);
        let r = d.bench(&[&m.name], &quick(4)).unwrap();
        assert_eq!(r.results[0].samples_ns.len(), 4);
        check_stats(&r.results[0].stats, &r.results[0].samples_ns);
    }
    // The session above is closed; the daemon serves the next host.
    let wrong = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    let e = connect(Some(wrong)).err().unwrap();
    assert!(matches!(&e, BoardError::Device { source: ClientError::AuthFailed, .. }), "{e:?}");
    let msg = e.to_string();
    assert!(msg.contains(&daemon.addr) && msg.contains("authentication failed"), "{msg}");
    assert!(msg.contains("is not the device you think") && msg.contains("--key-file"), "{msg}");
    let msg = connect(None).err().unwrap().to_string();
    assert!(msg.contains("pre-shared key") && msg.contains("RBA_KEY"), "{msg}");
    // The daemon is still fine after both failures, and is the pinned one.
    let d = connect(Some(KEY)).unwrap();
    assert!(d.pin_note().is_none(), "already pinned");
}

#[test]
fn targets_from_arguments() {
    let args = |board: Option<&str>, port: Option<&str>, addr: Option<&str>| LinkOptions {
        board: board.map(str::to_string),
        port: port.map(str::to_string),
        addr: addr.map(str::to_string),
        ..LinkOptions::default()
    };
    let msg = Target::from_options(&args(Some("no-such-board"), None, None)).unwrap_err().to_string();
    assert!(msg.contains("no-such-board") && msg.contains("not found"), "{msg}");
    assert!(msg.contains("known boards: local, qemu-aarch64") && msg.contains("raspberry-pi-5"), "{msg}");
    let msg = Target::from_options(&args(None, None, None)).unwrap_err().to_string();
    assert!(msg.contains("--board") && msg.contains("--port") && msg.contains("--addr"), "{msg}");
    // A serial board needs the host's end of the link.
    let msg = Target::from_options(&args(Some("raspberry-pi-5"), None, None)).unwrap_err().to_string();
    assert!(msg.contains("raspberry-pi-5") && msg.contains("--port"), "{msg}");
    match Target::from_options(&args(Some("raspberry-pi-5"), Some("/dev/ttyACM0"), None)).unwrap() {
        Target::Serial { path, baud, board, .. } => {
            assert_eq!((path.as_str(), baud, board.as_deref()), ("/dev/ttyACM0", 921_600, Some("raspberry-pi-5")))
        }
        other => panic!("{other:?}"),
    }
    // A profile listening on all interfaces cannot be dialled as it is.
    let msg = Target::from_options(&args(Some("jetson-orin-nano"), None, None)).unwrap_err().to_string();
    assert!(msg.contains("--addr"), "{msg}");
    assert!(matches!(Target::from_options(&args(Some("local"), None, None)).unwrap(), Target::Local { .. }));
    // A missing serial port is named.
    let t = Target::from_options(&args(None, Some("/dev/does-not-exist-rba"), None)).unwrap();
    let msg = Device::connect(&t).err().unwrap().to_string();
    assert!(msg.contains("/dev/does-not-exist-rba") && msg.contains("does not exist"), "{msg}");
}

#[test]
fn cli_bench_with_eval_writes_json() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let store = dir.path().join("store");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rba"))
        .args(["bench", "demo:resnet", "--board", "local", "--runs", "5", "--warmup", "1"])
        .args(["--eval", "demo:test", "--eval-samples", "40", "--json"])
        .arg(&json)
        .arg("--store")
        .arg(&store)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("deployed resnet-digits") && stdout.contains("top-1 accuracy"), "{stdout}");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(v["benchmark"]["results"][0]["samples_ns"].as_array().unwrap().len(), 5);
    assert_eq!(v["evaluation"]["samples"], 40);
    let acc = v["evaluation"]["results"][0]["top1_accuracy"].as_f64().unwrap();
    assert!((0.5..=1.0).contains(&acc), "{acc}");
    // The store persists: deploying to it again skips the upload.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rba"))
        .args(["deploy", "demo:resnet", "--board", "local", "--store"])
        .arg(&store)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && stdout.contains("upload skipped"), "{stdout}");
}
