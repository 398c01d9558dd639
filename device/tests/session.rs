//! The daemon's handler behind the protocol's server core, driven by the
//! protocol's client, in-process (memory links and TCP loopback): real
//! tract runs, hand-computed accuracy figures, and every error the daemon
//! sends, provoked.

#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::ops::ControlFlow;
use std::time::Duration;

use rba_onnx::build::{node, Dim};
use rba_onnx::proto::GraphProto;
use rba_protocol::frame::FrameDecoder;
use rba_protocol::*;
use rba_testkit::daemon::{bench_req, connect_inproc, fast_client_config, no_progress, spawn_inproc, test_options};
use rba_testkit::models::{
    encode, linear_bundle, mlp_model, small_linear, small_linear_eval, unknown_op_model, value_info_typed,
};
use rba_testkit::net::frame_payload;
use rba_testkit::KEY;
use sha2::{Digest, Sha256};

type Device = (tempfile::TempDir, std::sync::mpsc::Sender<mem::MemLink>, rba_device::InProcessBoard);

fn setup(quota: u64) -> Device {
    let dir = tempfile::tempdir().unwrap();
    let (tx, join) = spawn_inproc(test_options(dir.path(), quota, None));
    (dir, tx, join)
}

fn remote(e: ClientError) -> RemoteError {
    match e {
        ClientError::Remote(r) => r,
        other => panic!("expected a remote error, got {other:?}"),
    }
}

#[test]
fn upload_benchmark_evaluate_compare() {
    let (dir, dev, join) = setup(1 << 30);
    let mut c = connect_inproc(&dev, fast_client_config(None)).unwrap();
    let s = c.session().unwrap().clone();
    assert_eq!(s.device.board, "test");
    assert_eq!(s.device.runtime, rba_device::runtime::RUNTIME);
    assert_eq!(s.max_upload, 1 << 30);

    let lin = small_linear();
    let info = c.upload(ArtifactKind::Model, "lin.onnx", &lin, |_| {}).unwrap();
    assert_eq!(info.sha256, <[u8; 32]>::from(Sha256::digest(&lin)));
    assert_eq!(std::fs::read(dir.path().join("models/lin.onnx")).unwrap(), lin);

    // Benchmark: counts as asked, raw samples, stats derived from them.
    let mut phases = Vec::new();
    let r = c
        .benchmark(&bench_req("lin.onnx", 25), |p| {
            phases.push(p.phase);
            ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(r.model, "lin.onnx");
    assert_eq!(r.samples_ns.len(), 25);
    assert_eq!(r.warmup_runs, 2);
    assert_eq!(r.threads, 1);
    assert_eq!(r.stats, LatencyStats::from_samples(&r.samples_ns).unwrap());
    assert!(r.load_time_ns > 0 && r.first_run_ns > 0);
    assert!(r.stats.min_ns > 0);
    assert!(r.peak_rss_bytes.unwrap() > 1 << 20);
    assert_eq!(phases.first(), Some(&Phase::Started));
    assert!(phases.contains(&Phase::Loading) && phases.contains(&Phase::Measuring), "{phases:?}");

    // Minimum time: at least 150 ms of runs even though 1 run was asked.
    let mut req = bench_req("lin.onnx", 1);
    req.runs.min_time_ms = 150;
    req.threads = Some(2);
    let r = c.benchmark(&req, no_progress).unwrap();
    assert_eq!(r.threads, 2.min(rba_device::sensors::cores()), "at most the cores");
    assert!(r.samples_ns.len() > 1, "{}", r.samples_ns.len());
    assert_eq!(r.stats.count, r.samples_ns.len() as u64);

    // Evaluation with hand-computed outputs: y = (x0+x3+0.5, x1+x3, x2+x3-0.5).
    let samples = [[1.0, 0.0, 0.0, 0.0], [0.0, 2.0, 0.0, 1.0], [0.0, 0.0, 3.0, 0.0], [0.2, 0.1, 0.0, 0.0]];
    // Argmaxes: 0, 1, 2, 0 (0.7 vs 0.1 vs -0.5). Labels: right, right, wrong, right.
    let labels = vec![0, 1, 1, 0];
    let exact: Vec<[f32; 3]> = samples.iter().map(|x| small_linear_eval(x)).collect();
    // Expected outputs off by 0.25 on sample 3's last value; its arg-max
    // stays 2, so agreement is full.
    let mut expected = exact.clone();
    expected[2][2] += 0.25;
    let b = linear_bundle(&samples, Some(labels), Some(expected.clone()));
    c.upload(ArtifactKind::EvalBundle, "digits", &b, |_| {}).unwrap();
    let e = c
        .evaluate(
            &EvalRequest { model: "lin.onnx".into(), bundle: "digits".into(), threads: None, runtime: None },
            no_progress,
        )
        .unwrap();
    assert_eq!(e.samples, 4);
    assert_eq!(e.top1_accuracy, Some(0.75));
    assert_eq!(e.top1_agreement, Some(1.0));
    assert!((e.max_abs_diff.unwrap() - 0.25).abs() < 1e-6, "{:?}", e.max_abs_diff);
    // Cosine of sample 3: y = (0.5, 0, 2.5), e = (0.5, 0, 2.75):
    // (0.25 + 6.875) / (sqrt(6.5) * sqrt(7.8125)) = 0.999_704
    let c3 = (0.25 + 6.875) / (6.5f64.sqrt() * 7.8125f64.sqrt());
    assert!((e.mean_cosine.unwrap() - (3.0 + c3) / 4.0).abs() < 1e-6, "{:?}", e.mean_cosine);
    // The first batch is the first run (reported apart), the other 3 warm.
    assert_eq!(e.latency.unwrap().count, 3);

    // Benchmark fed from the bundle's first sample.
    let mut req = bench_req("lin.onnx", 3);
    req.input_bundle = Some("digits".into());
    assert_eq!(c.benchmark(&req, no_progress).unwrap().samples_ns.len(), 3);

    // A/B: a big MLP against a small one, interleaved.
    c.upload(ArtifactKind::Model, "big", &mlp_model(256, 6), |_| {}).unwrap();
    c.upload(ArtifactKind::Model, "small", &mlp_model(16, 1), |_| {}).unwrap();
    let req = CompareRequest {
        model_a: "big".into(),
        model_b: "small".into(),
        threads: Some(1),
        warmup: RunPolicy { count: 3, min_time_ms: 0 },
        runs: RunPolicy { count: 30, min_time_ms: 0 },
        input_bundle: None,
        runtime_a: None,
        runtime_b: None,
    };
    let cmp = c.compare(&req, no_progress).unwrap();
    assert_eq!((cmp.a.model.as_str(), cmp.b.model.as_str()), ("big", "small"));
    assert_eq!((cmp.a.samples_ns.len(), cmp.b.samples_ns.len()), (30, 30));
    assert_eq!(cmp.ratio_of_medians, cmp.b.stats.p50_ns as f64 / cmp.a.stats.p50_ns as f64);
    assert!(cmp.ratio_of_medians < 0.5, "6 layers of 256 vs 1 of 16: {}", cmp.ratio_of_medians);

    // List, device info, delete.
    let names: Vec<String> = c.list(None).unwrap().into_iter().map(|a| a.name).collect();
    assert_eq!(names, ["big", "lin.onnx", "small", "digits"]);
    let info = c.device_info().unwrap();
    assert_eq!(info.artifacts, 4);
    assert!(info.free_storage_bytes.unwrap() < 1 << 30);
    c.delete(ArtifactKind::Model, "big").unwrap();
    assert_eq!(c.list(Some(ArtifactKind::Model)).unwrap().len(), 2);
    drop(c);
    drop(dev);
    let ends = join.join().unwrap().sessions;
    assert_eq!(ends, [SessionEnd::Closed]);
}

#[test]
fn bad_models_and_bundles_get_typed_errors_and_the_daemon_keeps_serving() {
    let (_dir, dev, join) = setup(1 << 30);
    let mut c = connect_inproc(&dev, fast_client_config(None)).unwrap();
    c.upload(ArtifactKind::Model, "garbage", b"this is not an onnx file at all", |_| {}).unwrap();
    c.upload(ArtifactKind::Model, "weird", &unknown_op_model(), |_| {}).unwrap();
    c.upload(ArtifactKind::Model, "lin", &small_linear(), |_| {}).unwrap();
    for bad in ["garbage", "weird"] {
        match remote(c.benchmark(&bench_req(bad, 3), no_progress).unwrap_err()) {
            RemoteError::Runtime(m) => {
                assert!(m.contains(&format!("model '{bad}'")) && m.contains("tract cannot load the model"), "{m}")
            }
            other => panic!("{other:?}"),
        }
    }
    // tract's own reason is passed on.
    match remote(c.benchmark(&bench_req("weird", 3), no_progress).unwrap_err()) {
        RemoteError::Runtime(m) => assert!(m.contains("TotallyMadeUpOp"), "{m}"),
        other => panic!("{other:?}"),
    }
    // An int64 input is outside what the device runs.
    let int_model = encode(GraphProto {
        name: Some("int".into()),
        node: vec![node("Identity", "Identity_y", &["x"], &["y"])],
        input: vec![value_info_typed("x", &[Dim::Fixed(1), Dim::Fixed(2)], 7)],
        output: vec![value_info_typed("y", &[Dim::Fixed(1), Dim::Fixed(2)], 7)],
        ..Default::default()
    });
    c.upload(ArtifactKind::Model, "int", &int_model, |_| {}).unwrap();
    assert!(
        matches!(remote(c.benchmark(&bench_req("int", 1), no_progress).unwrap_err()), RemoteError::Unsupported(m) if m.contains("element type 7"))
    );

    // A bundle with 5 features per sample for a model taking 4.
    let bad = EvalBundle {
        inputs: vec![TensorF32::from_f32(None, vec![2, 5], &[0.0; 10])],
        labels: Some(vec![0, 1]),
        expected: None,
    };
    c.upload(ArtifactKind::EvalBundle, "wide", &bad.encode().unwrap(), |_| {}).unwrap();
    let req = EvalRequest { model: "lin".into(), bundle: "wide".into(), threads: None, runtime: None };
    match remote(c.evaluate(&req, no_progress).unwrap_err()) {
        RemoteError::BadRequest(m) => assert!(m.contains("shape mismatch") && m.contains("[2, 5]"), "{m}"),
        other => panic!("{other:?}"),
    }
    let mut breq = bench_req("lin", 1);
    breq.input_bundle = Some("wide".into());
    assert!(
        matches!(remote(c.benchmark(&breq, no_progress).unwrap_err()), RemoteError::BadRequest(m) if m.contains("shape mismatch"))
    );
    // Expected outputs of the wrong width.
    let b = EvalBundle {
        inputs: vec![TensorF32::from_f32(None, vec![1, 4], &[0.0; 4])],
        labels: None,
        expected: Some(vec![TensorF32::from_f32(None, vec![1, 2], &[0.0; 2])]),
    };
    c.upload(ArtifactKind::EvalBundle, "narrow-expected", &b.encode().unwrap(), |_| {}).unwrap();
    let req = EvalRequest { model: "lin".into(), bundle: "narrow-expected".into(), threads: None, runtime: None };
    assert!(
        matches!(remote(c.evaluate(&req, no_progress).unwrap_err()), RemoteError::BadRequest(m) if m.contains("expected output 0"))
    );
    // Two input tensors for a one-input model.
    let b = EvalBundle {
        inputs: vec![
            TensorF32::from_f32(None, vec![1, 4], &[0.0; 4]),
            TensorF32::from_f32(None, vec![1, 4], &[0.0; 4]),
        ],
        labels: None,
        expected: None,
    };
    c.upload(ArtifactKind::EvalBundle, "two-inputs", &b.encode().unwrap(), |_| {}).unwrap();
    let req = EvalRequest { model: "lin".into(), bundle: "two-inputs".into(), threads: None, runtime: None };
    assert!(
        matches!(remote(c.evaluate(&req, no_progress).unwrap_err()), RemoteError::BadRequest(m) if m.contains("2 input tensor(s)"))
    );
    // Not a bundle at all.
    c.upload(ArtifactKind::EvalBundle, "junk", b"RBAX....", |_| {}).unwrap();
    let req = EvalRequest { model: "lin".into(), bundle: "junk".into(), threads: None, runtime: None };
    assert!(
        matches!(remote(c.evaluate(&req, no_progress).unwrap_err()), RemoteError::BadRequest(m) if m.contains("eval bundle 'junk'"))
    );

    // Unknown names, bad names, bad thread counts.
    assert_eq!(
        remote(c.benchmark(&bench_req("nope", 1), no_progress).unwrap_err()),
        RemoteError::NotFound("nope".into())
    );
    let req = EvalRequest { model: "lin".into(), bundle: "nope".into(), threads: None, runtime: None };
    assert_eq!(remote(c.evaluate(&req, no_progress).unwrap_err()), RemoteError::NotFound("nope".into()));
    let mut req = bench_req("lin", 1);
    req.input_bundle = Some("../etc".into());
    assert!(matches!(remote(c.benchmark(&req, no_progress).unwrap_err()), RemoteError::InvalidName(_)));
    let mut req = bench_req("lin", 1);
    req.threads = Some(0);
    assert!(
        matches!(remote(c.benchmark(&req, no_progress).unwrap_err()), RemoteError::BadRequest(m) if m.contains("threads"))
    );
    assert_eq!(remote(c.delete(ArtifactKind::Model, "nope").unwrap_err()), RemoteError::NotFound("nope".into()));

    // Still serving.
    let r = c.benchmark(&bench_req("lin", 2), no_progress).unwrap();
    assert_eq!(r.samples_ns.len(), 2);
    drop(c);
    drop(dev);
    join.join().unwrap();
}

#[test]
fn cancel_a_long_benchmark() {
    let (_dir, dev, join) = setup(1 << 30);
    let mut c = connect_inproc(&dev, fast_client_config(None)).unwrap();
    c.upload(ArtifactKind::Model, "lin", &small_linear(), |_| {}).unwrap();
    let mut req = bench_req("lin", 1);
    req.runs.min_time_ms = 60_000;
    let mut seen = 0;
    let started = std::time::Instant::now();
    let e = c
        .benchmark(&req, |p| {
            seen += 1;
            if p.phase == Phase::Measuring {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .unwrap_err();
    assert_eq!(remote(e), RemoteError::Cancelled);
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(seen >= 2);
    c.ping(5).unwrap();
    drop(c);
    drop(dev);
    join.join().unwrap();
}

#[test]
fn quota_names_and_corrupted_staging() {
    let (dir, dev, join) = setup(10_000);
    let mut c = connect_inproc(&dev, fast_client_config(None)).unwrap();
    // Larger than the whole quota: refused by the core.
    let big = vec![1u8; 20_000];
    assert_eq!(
        remote(c.upload(ArtifactKind::Model, "big", &big, |_| {}).unwrap_err()),
        RemoteError::TooLarge { size: 20_000, max: 10_000 }
    );
    // Fits alone, not next to what is there.
    c.upload(ArtifactKind::Model, "a", &[2u8; 7000], |_| {}).unwrap();
    assert_eq!(
        remote(c.upload(ArtifactKind::Model, "b", &[3u8; 5000], |_| {}).unwrap_err()),
        RemoteError::TooLarge { size: 5000, max: 3000 }
    );
    // Replacing "a" is fine: its bytes are freed.
    c.upload(ArtifactKind::Model, "a", &[4u8; 9000], |_| {}).unwrap();
    // Names that are paths never reach the disk (the client refuses them
    // too, so talk to the handler directly through the store).
    let mut store = rba_device::store::Store::open(dir.path().join("other"), 100).unwrap();
    for bad in ["../evil", "/etc/passwd", "a/b", ".hidden", "", "x".repeat(65).as_str()] {
        let b = UploadBegin { kind: ArtifactKind::Model, name: bad.into(), size: 1, sha256: [0; 32] };
        assert!(matches!(store.begin(&b), Err(rba_device::store::StoreError::InvalidName(_))), "{bad:?}");
    }
    assert!(matches!(c.upload(ArtifactKind::Model, "../evil", b"x", |_| {}), Err(ClientError::InvalidName(_))));

    // Staged bytes corrupted on disk before the commit: the digest check
    // catches it, nothing is published, the staging is gone.
    let data = vec![9u8; 800];
    drop(c);
    let mut raw = RawLink::connect(&dev);
    let sha: [u8; 32] = Sha256::digest(&data).into();
    let r = raw.call(Request::UploadBegin(UploadBegin {
        kind: ArtifactKind::Model,
        name: "c".into(),
        size: 800,
        sha256: sha,
    }));
    assert!(matches!(r, Response::UploadReady { resume_offset: 0, .. }), "{r:?}");
    let r = raw.call(Request::UploadChunk(UploadChunk { offset: 0, data: Bytes(data.clone()) }));
    assert_eq!(r, Response::ChunkAck { next_offset: 800 });
    let part = dir.path().join("staging/upload.part");
    let mut staged = std::fs::read(&part).unwrap();
    staged[100] ^= 0xff;
    std::fs::write(&part, staged).unwrap();
    let r = raw.call(Request::UploadCommit(UploadCommit { kind: ArtifactKind::Model, name: "c".into(), sha256: sha }));
    assert!(matches!(r, Response::Error(RemoteError::ShaMismatch { .. })), "{r:?}");
    assert!(!dir.path().join("models/c").exists());
    assert!(!part.exists());
    drop(raw);
    drop(dev);
    join.join().unwrap();
}

/// Speaks frames directly (inside the secure channel), to provoke what a
/// well-behaved client never sends.
struct RawLink {
    link: rba_protocol::secure::SecureStream<mem::MemLink>,
    decoder: FrameDecoder,
    next_id: u32,
}

impl RawLink {
    /// After the secure handshake (with `key`), before `Hello`.
    fn open_keyed(dev: &std::sync::mpsc::Sender<mem::MemLink>, key: Option<&PreSharedKey>) -> RawLink {
        let (mut host, board) = mem::duplex();
        host.set_read_timeout(Some(Duration::from_millis(20)));
        dev.send(board).unwrap();
        let channel = rba_protocol::secure::connect(&mut host, key, Duration::from_secs(5), 1).unwrap();
        RawLink { link: channel.stream(host), decoder: FrameDecoder::new(DEFAULT_MAX_FRAME), next_id: 0 }
    }

    fn open(dev: &std::sync::mpsc::Sender<mem::MemLink>) -> RawLink {
        RawLink::open_keyed(dev, None)
    }

    fn connect(dev: &std::sync::mpsc::Sender<mem::MemLink>) -> RawLink {
        let mut r = RawLink::open(dev);
        let w = r.call(Request::Hello(hello(PROTOCOL_VERSION)));
        assert!(matches!(w, Response::Welcome(_)), "{w:?}");
        r
    }

    fn send_raw(&mut self, payload_env: &Envelope) -> u32 {
        let frame = encode_frame(payload_env, DEFAULT_MAX_FRAME).unwrap();
        self.link.write_all(&frame).unwrap();
        payload_env.id
    }

    fn call(&mut self, req: Request) -> Response {
        self.next_id += 1;
        let id = self.send_raw(&Envelope { id: self.next_id, msg: Message::Request(req) });
        self.wait(id)
    }

    fn wait(&mut self, id: u32) -> Response {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut buf = [0u8; 65536];
        let mut got = None;
        while got.is_none() {
            assert!(std::time::Instant::now() < deadline, "no answer to {id}");
            match self.link.read(&mut buf) {
                Ok(0) => panic!("link closed"),
                Ok(n) => self.decoder.feed(&buf[..n], |r| {
                    if let Ok(Envelope { id: i, msg: Message::Response(resp) }) = r {
                        if i == id {
                            got = Some(resp);
                        }
                    }
                }),
                Err(_) => {}
            }
        }
        got.unwrap()
    }
}

fn hello(version: u16) -> Hello {
    Hello {
        protocol_version: version,
        client: "raw".into(),
        rba_version: "0".into(),
        capabilities: Capabilities::ALL,
        max_frame: DEFAULT_MAX_FRAME as u32,
        preferred_chunk: 1024,
    }
}

#[test]
fn every_session_error_provoked() {
    let dir = tempfile::tempdir().unwrap();
    let (dev, join) = spawn_inproc(test_options(dir.path(), 1 << 20, Some(KEY)));
    // Frames without the secure handshake, with a key configured: no answer.
    let (mut host, board) = mem::duplex();
    host.set_read_timeout(Some(Duration::from_millis(300)));
    dev.send(board).unwrap();
    host.write_all(&encode_frame(&Envelope { id: 1, msg: Message::Request(Request::DeviceInfo) }, 4096).unwrap())
        .unwrap();
    assert!(host.read(&mut [0u8; 16]).is_err(), "answered before the handshake");
    drop(host);
    // A wrong key: the handshake fails on the host's side.
    let (mut host, board) = mem::duplex();
    host.set_read_timeout(Some(Duration::from_millis(20)));
    dev.send(board).unwrap();
    let wrong = PreSharedKey::new([0xEE; 32]);
    assert!(rba_protocol::secure::connect(&mut host, Some(&wrong), Duration::from_secs(5), 1).is_err());
    drop(host);
    // The right key: inside the channel, Hello comes first and must match.
    let key = rba_testkit::test_key();
    let mut r = RawLink::open_keyed(&dev, Some(&key));
    assert_eq!(r.call(Request::DeviceInfo), Response::Error(RemoteError::HandshakeRequired));
    assert_eq!(
        r.call(Request::Hello(hello(9))),
        Response::Error(RemoteError::VersionMismatch { supported: PROTOCOL_VERSION, requested: 9 })
    );
    assert!(matches!(r.call(Request::Hello(hello(PROTOCOL_VERSION))), Response::Welcome(_)));
    drop(r);
    // Authenticated with the real client, then raw requests on a keyless daemon.
    let c = connect_inproc(&dev, fast_client_config(Some(KEY))).unwrap();
    assert!(c.session().unwrap().authenticated);
    drop(c);
    drop(dev);
    join.join().unwrap();

    let (_dir, dev, join) = setup(1 << 20);
    let mut r = RawLink::open(&dev);
    assert_eq!(r.call(Request::Ping { nonce: 1 }), Response::Error(RemoteError::HandshakeRequired));
    let w = r.call(Request::Hello(hello(PROTOCOL_VERSION)));
    let Response::Welcome(w) = w else { panic!("{w:?}") };
    let chunk = w.chunk_size;
    assert_eq!(
        r.call(Request::UploadChunk(UploadChunk { offset: 0, data: Bytes(vec![1]) })),
        Response::Error(RemoteError::NoUpload)
    );
    let data = vec![5u8; 3000];
    let sha: [u8; 32] = Sha256::digest(&data).into();
    let begin = UploadBegin { kind: ArtifactKind::Model, name: "m".into(), size: 3000, sha256: sha };
    assert!(matches!(r.call(Request::UploadBegin(begin.clone())), Response::UploadReady { resume_offset: 0, .. }));
    let too_big = vec![0u8; chunk as usize + 1];
    assert_eq!(
        r.call(Request::UploadChunk(UploadChunk { offset: 0, data: Bytes(too_big) })),
        Response::Error(RemoteError::ChunkTooLarge { max: chunk, got: chunk + 1 })
    );
    assert_eq!(
        r.call(Request::UploadChunk(UploadChunk { offset: 2990, data: Bytes(vec![0; 20]) })),
        Response::Error(RemoteError::ChunkBeyondSize { size: 3000, end: 3010 })
    );
    assert_eq!(
        r.call(Request::UploadChunk(UploadChunk { offset: 100, data: Bytes(vec![0; 10]) })),
        Response::Error(RemoteError::OffsetMismatch { expected: 0, got: 100 })
    );
    assert_eq!(
        r.call(Request::UploadChunk(UploadChunk { offset: 0, data: Bytes(data[..1000].to_vec()) })),
        Response::ChunkAck { next_offset: 1000 }
    );
    let commit = UploadCommit { kind: ArtifactKind::Model, name: "m".into(), sha256: sha };
    assert_eq!(
        r.call(Request::UploadCommit(commit.clone())),
        Response::Error(RemoteError::Incomplete { received: 1000, size: 3000 })
    );
    let wrong = UploadCommit { name: "other".into(), ..commit.clone() };
    assert!(matches!(r.call(Request::UploadCommit(wrong)), Response::Error(RemoteError::BadRequest(_))));
    assert_eq!(r.call(Request::UploadAbort), Response::Aborted);
    assert!(matches!(
        r.call(Request::UploadBegin(UploadBegin { name: "../m".into(), ..begin.clone() })),
        Response::Error(RemoteError::InvalidName(_))
    ));
    assert!(matches!(
        r.call(Request::Delete { kind: ArtifactKind::Model, name: "a/b".into() }),
        Response::Error(RemoteError::InvalidName(_))
    ));
    // A store whose staging directory was replaced by a file: Storage.
    let staging = _dir.path().join("staging");
    std::fs::remove_dir_all(&staging).unwrap();
    std::fs::write(&staging, b"not a directory").unwrap();
    let resp = r.call(Request::UploadBegin(begin));
    assert!(matches!(&resp, Response::Error(RemoteError::Storage(m)) if m.contains("staging")), "{resp:?}");
    std::fs::remove_file(&staging).unwrap();
    std::fs::create_dir(&staging).unwrap();
    // Undecodable payload after the handshake.
    // id 7, Message::Request, request variant 99 (none such).
    let payload = [7u8, 0x00, 0x63];
    r.link.write_all(&frame_payload(&payload)).unwrap();
    assert!(matches!(r.wait(7), Response::Error(RemoteError::BadRequest(_))));
    assert!(matches!(r.call(Request::Ping { nonce: 3 }), Response::Pong { nonce: 3 }));
    drop(r);
    drop(dev);
    join.join().unwrap();
}

#[test]
fn host_disconnecting_mid_request_leaves_the_daemon_serving() {
    let (_dir, dev, join) = setup(1 << 30);
    let mut c = connect_inproc(&dev, fast_client_config(None)).unwrap();
    c.upload(ArtifactKind::Model, "lin", &small_linear(), |_| {}).unwrap();
    // Start a long job, then vanish.
    let mut req = bench_req("lin", 1);
    req.runs.min_time_ms = 1500;
    drop(c);
    let mut raw = RawLink::connect(&dev);
    raw.send_raw(&Envelope { id: 50, msg: Message::Request(Request::Benchmark(req)) });
    std::thread::sleep(Duration::from_millis(200));
    drop(raw);
    // Mid-upload, too: the link breaks after two chunks.
    let (mut host, board) = mem::duplex();
    host.set_read_timeout(Some(Duration::from_millis(5)));
    let cut = host.try_clone().unwrap();
    dev.send(board).unwrap();
    let mut c = Client::connect(host, fast_client_config(None)).unwrap();
    let data: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
    let e = c
        .upload(ArtifactKind::Model, "half", &data, |p| {
            if p.acked >= 8192 {
                cut.close();
            }
        })
        .unwrap_err();
    assert!(e.is_link_failure(), "{e:?}");
    drop(c);
    // Nothing published; the next session resumes where the link broke.
    let mut c = connect_inproc(&dev, fast_client_config(None)).unwrap();
    assert_eq!(c.list(None).unwrap().len(), 1);
    let mut resumed = None;
    c.upload(ArtifactKind::Model, "half", &data, |p| {
        resumed.get_or_insert(p.resumed_from);
    })
    .unwrap();
    assert!(resumed.unwrap() >= 8192, "{resumed:?}");
    drop(c);
    // A new host is served, and sees only complete artifacts.
    let mut c = connect_inproc(&dev, fast_client_config(None)).unwrap();
    let names: Vec<String> = c.list(None).unwrap().into_iter().map(|a| a.name).collect();
    assert_eq!(names, ["half", "lin"]);
    assert_eq!(c.benchmark(&bench_req("lin", 2), no_progress).unwrap().samples_ns.len(), 2);
    drop(c);
    drop(dev);
    let ends = join.join().unwrap().sessions;
    assert!(ends.iter().all(|e| *e == SessionEnd::Closed), "{ends:?}");
}

#[test]
fn tcp_loopback_with_key_and_busy() {
    let dir = tempfile::tempdir().unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let board = rba_device::spawn_in_process(
        test_options(dir.path(), 1 << 30, Some(KEY)),
        rba_device::InProcessLink::Tcp(listener),
    )
    .unwrap();
    let tcp_config = |key: &str| ClientConfig {
        request_timeout: Duration::from_secs(3),
        max_retries: 1,
        ..ClientConfig::tcp(rba_testkit::psk(key))
    };
    let mut c = Client::connect_tcp(addr, tcp_config(KEY)).unwrap();
    assert!(c.session().unwrap().authenticated);
    c.upload(ArtifactKind::Model, "lin", &small_linear(), |_| {}).unwrap();
    assert_eq!(c.benchmark(&bench_req("lin", 5), no_progress).unwrap().samples_ns.len(), 5);
    // A second host while the first is connected: Busy.
    let e = Client::connect_tcp(addr, tcp_config(KEY)).map(|_| ()).unwrap_err();
    assert!(matches!(e, ClientError::Remote(RemoteError::Busy)), "{e:?}");
    drop(c);
    // Wrong key: AuthFailed; the next host still gets in.
    let wrong = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    // The dropped session may still be closing: Busy until it has.
    let mut e = ClientError::Remote(RemoteError::Busy);
    for _ in 0..50 {
        e = Client::connect_tcp(addr, tcp_config(wrong)).map(|_| ()).unwrap_err();
        if !matches!(e, ClientError::Remote(RemoteError::Busy)) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(matches!(e, ClientError::AuthFailed), "{e:?}");
    let mut ok = None;
    for _ in 0..50 {
        match Client::connect_tcp(addr, tcp_config(KEY)) {
            Ok(c) => {
                ok = Some(c);
                break;
            }
            // The previous session may still be closing.
            Err(ClientError::Remote(RemoteError::Busy)) => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => panic!("{e:?}"),
        }
    }
    let mut c = ok.unwrap();
    assert_eq!(c.list(None).unwrap().len(), 1);
    drop(c);
    board.stop().unwrap();
}
