//! Client and server cores talking over in-memory and TCP links.

#![allow(clippy::unwrap_used)] // tests may panic

use std::io::{Read, Write};
use std::ops::ControlFlow;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use rba_protocol::client::upload_resumable;
use rba_protocol::mem::{duplex, lossy_duplex, Faults, MemLink};
use rba_protocol::secure::{self, SecureStream};
use rba_protocol::testing::MemoryHandler;
use rba_protocol::*;
use sha2::{Digest, Sha256};

const KEY: PreSharedKey = PreSharedKey::new([0x42; 32]);

/// A device serving every link sent to it, one session after another,
/// with one handler (its store survives reconnects).
fn spawn_device(
    config: ServerConfig,
    handler: MemoryHandler,
) -> (mpsc::Sender<MemLink>, JoinHandle<(MemoryHandler, Vec<SessionEnd>)>) {
    let (tx, rx) = mpsc::channel::<MemLink>();
    let join = std::thread::spawn(move || {
        let mut handler = handler;
        let mut ends = Vec::new();
        for mut link in rx {
            link.set_read_timeout(Some(Duration::from_millis(50)));
            let reader = link.try_clone().unwrap();
            ends.push(serve(&mut handler, &config, reader, link).unwrap());
        }
        (handler, ends)
    });
    (tx, join)
}

fn client_config(key: Option<PreSharedKey>) -> ClientConfig {
    ClientConfig { key, request_timeout: Duration::from_millis(500), ..ClientConfig::serial() }
}

fn connect(dev: &mpsc::Sender<MemLink>, config: ClientConfig) -> Result<Client<MemLink>, ClientError> {
    let (mut host, board) = duplex();
    host.set_read_timeout(Some(Duration::from_millis(5)));
    dev.send(board).unwrap();
    Client::connect(host, config)
}

fn keyed_server() -> ServerConfig {
    ServerConfig { key: Some(KEY), identity: Some(Identity::generate().unwrap()), ..ServerConfig::default() }
}

fn model(n: usize, seed: u8) -> Vec<u8> {
    (0..n).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 8) as u8).collect()
}

#[test]
fn authenticated_session_covers_every_request() {
    let (dev, join) = spawn_device(keyed_server(), MemoryHandler::new());
    let mut c = connect(&dev, client_config(Some(KEY))).unwrap();
    let s = c.session().unwrap().clone();
    assert!(s.authenticated);
    assert_eq!(s.device.board, "memory");
    assert_eq!(s.chunk_size, DEFAULT_SERIAL_CHUNK);
    c.ping(77).unwrap();
    assert_eq!(c.device_info().unwrap().identity.board, "memory");

    let data = model(10_000, 1);
    let mut seen = Vec::new();
    let info = c.upload(ArtifactKind::Model, "net.onnx", &data, |p| seen.push(p.acked)).unwrap();
    assert_eq!(info.sha256, <[u8; 32]>::from(Sha256::digest(&data)));
    assert_eq!(seen, [0, 4096, 8192, 10_000]);
    // Zero-byte artifacts are legal.
    c.upload(ArtifactKind::Model, "empty", &[], |_| {}).unwrap();

    let bundle = EvalBundle {
        inputs: vec![TensorF32::from_f32(None, vec![2, 2], &[0.0, 1.0, 2.0, 3.0])],
        labels: Some(vec![1, 0]),
        expected: None,
    };
    c.upload(ArtifactKind::EvalBundle, "cal", &bundle.encode().unwrap(), |_| {}).unwrap();
    let models = c.list(Some(ArtifactKind::Model)).unwrap();
    assert_eq!(models.iter().map(|a| a.name.as_str()).collect::<Vec<_>>(), ["empty", "net.onnx"]);
    assert_eq!(c.list(None).unwrap().len(), 3);

    let req = BenchmarkRequest {
        model: "net.onnx".into(),
        threads: Some(2),
        warmup: RunPolicy { count: 1, min_time_ms: 0 },
        runs: RunPolicy { count: 5, min_time_ms: 0 },
        input_bundle: None,
        runtime: None,
    };
    let mut phases = Vec::new();
    let r = c
        .benchmark(&req, |p| {
            phases.push(p.phase);
            ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(r.samples_ns.len(), 5);
    assert_eq!(r.stats, LatencyStats::from_samples(&r.samples_ns).unwrap());
    assert_eq!(phases.first(), Some(&Phase::Started));
    assert_eq!(phases.iter().filter(|p| **p == Phase::Measuring).count(), 5);

    let e = c
        .evaluate(&EvalRequest { model: "net.onnx".into(), bundle: "cal".into(), threads: None, runtime: None }, |_| {
            ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!((e.samples, e.top1_accuracy, e.top1_agreement), (2, Some(1.0), None));

    let cmp = CompareRequest {
        model_a: "net.onnx".into(),
        model_b: "empty".into(),
        threads: None,
        warmup: RunPolicy::default(),
        runs: RunPolicy { count: 3, min_time_ms: 0 },
        input_bundle: None,
        runtime_a: None,
        runtime_b: None,
    };
    let cr = c.compare(&cmp, |_| ControlFlow::Continue(())).unwrap();
    assert!(cr.ratio_of_medians < 1.0, "the empty model is 'faster' in the fake handler");

    c.delete(ArtifactKind::Model, "empty").unwrap();
    assert!(matches!(c.delete(ArtifactKind::Model, "empty"), Err(ClientError::Remote(RemoteError::NotFound(_)))));
    let missing = BenchmarkRequest { model: "nope".into(), ..req };
    assert!(matches!(
        c.benchmark(&missing, |_| ControlFlow::Continue(())),
        Err(ClientError::Remote(RemoteError::NotFound(_)))
    ));
    drop(c);
    drop(dev);
    let (h, ends) = join.join().unwrap();
    assert_eq!(ends, [SessionEnd::Closed]);
    assert_eq!(h.get(ArtifactKind::Model, "net.onnx"), Some(&data[..]));
}

#[test]
fn wrong_key_missing_key_and_unauthenticated_requests() {
    let (dev, join) = spawn_device(keyed_server(), MemoryHandler::new());
    // A wrong key: the device's handshake message does not authenticate.
    let err = connect(&dev, client_config(Some(PreSharedKey::new([7; 32])))).err().unwrap();
    assert!(matches!(err, ClientError::AuthFailed), "{err}");
    // No key: the device answers that it requires one.
    let err = connect(&dev, client_config(None)).err().unwrap();
    assert!(matches!(err, ClientError::Remote(RemoteError::AuthRequired)), "{err}");

    // A raw peer that skips the handshake and sends (v1-style) frames gets
    // nothing at all: no device identity, no error oracle.
    let (mut host, board) = duplex();
    host.set_read_timeout(Some(Duration::from_millis(300)));
    dev.send(board).unwrap();
    for (id, req) in [(1, Request::DeviceInfo), (2, Request::List { kind: None }), (3, Request::Cancel { target: 1 })] {
        let frame = encode_frame(&Envelope { id, msg: Message::Request(req) }, DEFAULT_MAX_FRAME).unwrap();
        host.write_all(&frame).unwrap();
    }
    let mut buf = [0u8; 64];
    assert!(host.read(&mut buf).is_err(), "no answer before the handshake");
    drop(host);
    drop(dev);
    let (h, ends) = join.join().unwrap();
    assert_eq!(ends, [SessionEnd::AuthFailed, SessionEnd::Refused, SessionEnd::Closed]);
    assert!(h.artifacts.is_empty());
}

#[test]
fn keyless_serial_sessions_and_a_host_with_a_key_refuses_a_keyless_device() {
    let (dev, _join) = spawn_device(ServerConfig::default(), MemoryHandler::new());
    let c = connect(&dev, client_config(None)).unwrap();
    let s = c.session().unwrap();
    assert!(!s.authenticated, "Noise_NX: encrypted, the device key proved, no key");
    assert!(s.fingerprint().starts_with("SHA256:"));
    drop(c); // the device serves one session at a time
             // A host holding a key never accepts a device that cannot prove it.
    let err = connect(&dev, client_config(Some(KEY))).err().unwrap();
    assert!(matches!(err, ClientError::DeviceHasNoKey), "{err}");
}

#[test]
fn a_pinned_device_key_is_enforced() {
    let config = keyed_server();
    let pinned = config.identity.as_ref().unwrap().fingerprint();
    let (dev, _join) = spawn_device(config, MemoryHandler::new());
    let c = connect(&dev, ClientConfig { expected_device: Some(pinned.clone()), ..client_config(Some(KEY)) }).unwrap();
    assert_eq!(c.session().unwrap().fingerprint(), pinned);
    drop(c);
    let other = Identity::generate().unwrap().fingerprint();
    let err =
        connect(&dev, ClientConfig { expected_device: Some(other.clone()), ..client_config(Some(KEY)) }).err().unwrap();
    match err {
        ClientError::IdentityChanged { expected, got } => assert_eq!((expected, got), (other, pinned)),
        e => panic!("{e}"),
    }
}

/// A host that completed the secure handshake and then talks raw frames.
fn raw_session(dev: &mpsc::Sender<MemLink>, key: Option<&PreSharedKey>) -> SecureStream<MemLink> {
    let (mut host, board) = duplex();
    host.set_read_timeout(Some(Duration::from_secs(2)));
    dev.send(board).unwrap();
    let channel = secure::connect(&mut host, key, Duration::from_secs(2), 1).unwrap();
    channel.stream(host)
}

fn raw_call(link: &mut SecureStream<MemLink>, id: u32, req: Request) -> Envelope {
    let frame = encode_frame(&Envelope { id, msg: Message::Request(req) }, DEFAULT_MAX_FRAME).unwrap();
    raw_send(link, &frame)
}

fn raw_send(link: &mut SecureStream<MemLink>, frame: &[u8]) -> Envelope {
    link.write_all(frame).unwrap();
    let mut d = FrameDecoder::new(DEFAULT_MAX_FRAME);
    let mut buf = [0u8; 4096];
    loop {
        let n = link.read(&mut buf).unwrap();
        assert!(n > 0, "link closed");
        let mut got = None;
        d.feed(&buf[..n], |r| got = r.ok());
        if let Some(env) = got {
            return env;
        }
    }
}

fn hello(version: u16) -> Request {
    Request::Hello(Hello {
        protocol_version: version,
        client: "raw".into(),
        rba_version: "0".into(),
        capabilities: Capabilities::ALL,
        max_frame: DEFAULT_MAX_FRAME as u32,
        preferred_chunk: 1000,
    })
}

#[test]
fn version_mismatch_is_reported_even_for_unknown_hello_layouts() {
    let (dev, join) = spawn_device(keyed_server(), MemoryHandler::new());
    // A version-1 host (no preamble, a COBS Hello) is told in v1 framing.
    let (mut host, board) = duplex();
    host.set_read_timeout(Some(Duration::from_secs(2)));
    dev.send(board).unwrap();
    let v1_hello = postcard::to_allocvec(&(9u32, 0u32, 0u32, 1u16, "rba", "0.1.0")).unwrap();
    host.write_all(&secure::legacy_frame(&v1_hello)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while !got.ends_with(&[0]) {
        let n = host.read(&mut buf).unwrap();
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(got, secure::legacy_version_mismatch(9, PROTOCOL_VERSION, 1));
    drop(host);

    // Inside the channel: a Hello of another version, and one with a layout
    // this version cannot decode.
    let mut link = raw_session(&dev, Some(&KEY));
    let mismatch = |requested| {
        Message::Response(Response::Error(RemoteError::VersionMismatch { supported: PROTOCOL_VERSION, requested }))
    };
    assert_eq!(raw_call(&mut link, 1, hello(PROTOCOL_VERSION + 1)).msg, mismatch(PROTOCOL_VERSION + 1));
    let mut payload = postcard::to_allocvec(&Envelope { id: 2, msg: Message::Request(hello(9)) }).unwrap();
    payload.extend([1, 2, 3]);
    assert_eq!(raw_send(&mut link, &secure::legacy_frame(&payload)), Envelope { id: 2, msg: mismatch(9) });
    drop(link);
    drop(dev);
    let (_, ends) = join.join().unwrap();
    assert_eq!(ends, [SessionEnd::Refused, SessionEnd::Closed]);
}

#[test]
fn client_reports_version_mismatch_and_old_devices() {
    // A fake board from the future: its answer names the version it speaks.
    let (mut host, mut board) = duplex();
    host.set_read_timeout(Some(Duration::from_millis(5)));
    let fake = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        let n = board.read(&mut buf).unwrap();
        assert!(n >= secure::PREAMBLE_LEN);
        let mut answer = secure::answer(secure::Status::VersionMismatch, [0; secure::ECHO_LEN]);
        answer[5..7].copy_from_slice(&(PROTOCOL_VERSION + 1).to_be_bytes());
        board.write_all(&answer).unwrap();
        board
    });
    let err = Client::connect(host, client_config(None)).err().unwrap();
    let (future, ours) = (PROTOCOL_VERSION + 1, PROTOCOL_VERSION);
    assert!(
        matches!(err, ClientError::Remote(RemoteError::VersionMismatch { supported, requested }) if supported == future && requested == ours),
        "{err}"
    );
    fake.join().unwrap();
    // A device that does not answer the handshake at all (an rba-device
    // older than protocol 2 ignores the preamble).
    let (mut host, _board) = duplex();
    host.set_read_timeout(Some(Duration::from_millis(5)));
    let config = ClientConfig { request_timeout: Duration::from_millis(100), max_retries: 1, ..client_config(None) };
    let err = Client::connect(host, config).err().unwrap();
    assert!(matches!(err, ClientError::HandshakeTimeout { attempts: 2 }), "{err}");
}

#[test]
fn upload_violations_get_typed_errors() {
    let (dev, _join) = spawn_device(ServerConfig::default(), MemoryHandler::new());
    let mut host = raw_session(&dev, None);
    assert_eq!(
        raw_call(&mut host, 1, Request::List { kind: None }).msg,
        Message::Response(Response::Error(RemoteError::HandshakeRequired))
    );
    let Message::Response(Response::Welcome(w)) = raw_call(&mut host, 1, hello(PROTOCOL_VERSION)).msg else {
        panic!("no welcome")
    };
    assert_eq!(w.chunk_size, 1000);
    let err = |e| Message::Response(Response::Error(e));
    let chunk = |offset, n| Request::UploadChunk(UploadChunk { offset, data: Bytes(vec![7; n]) });
    assert_eq!(raw_call(&mut host, 2, chunk(0, 10)).msg, err(RemoteError::NoUpload));
    for bad in ["../etc/passwd", "a/b", ".hidden", "", "x y"] {
        let begin =
            Request::UploadBegin(UploadBegin { kind: ArtifactKind::Model, name: bad.into(), size: 1, sha256: [0; 32] });
        assert_eq!(raw_call(&mut host, 3, begin).msg, err(RemoteError::InvalidName(bad.into())));
    }
    let data = vec![7u8; 1500];
    let sha: [u8; 32] = Sha256::digest(&data).into();
    let begin =
        Request::UploadBegin(UploadBegin { kind: ArtifactKind::Model, name: "m".into(), size: 1500, sha256: sha });
    assert_eq!(
        raw_call(&mut host, 4, begin).msg,
        Message::Response(Response::UploadReady { resume_offset: 0, chunk_size: 1000 })
    );
    assert_eq!(raw_call(&mut host, 5, chunk(0, 1001)).msg, err(RemoteError::ChunkTooLarge { max: 1000, got: 1001 }));
    assert_eq!(
        raw_call(&mut host, 6, chunk(600, 1000)).msg,
        err(RemoteError::ChunkBeyondSize { size: 1500, end: 1600 })
    );
    assert_eq!(raw_call(&mut host, 7, chunk(10, 10)).msg, err(RemoteError::OffsetMismatch { expected: 0, got: 10 }));
    assert_eq!(raw_call(&mut host, 8, chunk(0, 1000)).msg, Message::Response(Response::ChunkAck { next_offset: 1000 }));
    // A duplicate is acknowledged without being stored twice.
    assert_eq!(raw_call(&mut host, 9, chunk(0, 1000)).msg, Message::Response(Response::ChunkAck { next_offset: 1000 }));
    let commit = |sha| Request::UploadCommit(UploadCommit { kind: ArtifactKind::Model, name: "m".into(), sha256: sha });
    assert_eq!(raw_call(&mut host, 10, commit(sha)).msg, err(RemoteError::Incomplete { received: 1000, size: 1500 }));
    // Overlapping re-cut chunk: only the tail is new.
    assert_eq!(
        raw_call(&mut host, 11, chunk(900, 600)).msg,
        Message::Response(Response::ChunkAck { next_offset: 1500 })
    );
    let Message::Response(Response::Committed(info)) = raw_call(&mut host, 12, commit(sha)).msg else {
        panic!("not committed")
    };
    assert_eq!(info.size, 1500);
    // A retried commit (lost answer) gets the same answer; anything else does not.
    assert_eq!(raw_call(&mut host, 13, commit(sha)).msg, Message::Response(Response::Committed(info)));
    assert_eq!(raw_call(&mut host, 14, commit([1; 32])).msg, err(RemoteError::NoUpload));
    let big =
        Request::UploadBegin(UploadBegin { kind: ArtifactKind::Model, name: "big".into(), size: 1 << 40, sha256: sha });
    assert!(matches!(
        raw_call(&mut host, 15, big).msg,
        Message::Response(Response::Error(RemoteError::TooLarge { .. }))
    ));
}

#[test]
fn corrupted_storage_is_never_committed() {
    let handler = MemoryHandler { corrupt_staged_at: Some(5), ..MemoryHandler::new() };
    let (dev, join) = spawn_device(ServerConfig::default(), handler);
    let mut c = connect(&dev, client_config(None)).unwrap();
    let data = model(9000, 2);
    let err = c.upload(ArtifactKind::Model, "m", &data, |_| {}).unwrap_err();
    assert!(matches!(err, ClientError::Remote(RemoteError::ShaMismatch { .. })), "{err}");
    assert!(c.list(None).unwrap().is_empty());
    drop(c);
    drop(dev);
    let (h, _) = join.join().unwrap();
    assert!(h.commits.is_empty() && h.staged.is_none());
}

#[test]
fn cancel_stops_a_running_benchmark() {
    let handler = MemoryHandler { run_delay: Duration::from_millis(5), ..MemoryHandler::new() };
    let (dev, _join) = spawn_device(ServerConfig::default(), handler);
    let mut c = connect(&dev, client_config(None)).unwrap();
    c.upload(ArtifactKind::Model, "m", b"onnx", |_| {}).unwrap();
    let req = BenchmarkRequest {
        model: "m".into(),
        threads: None,
        warmup: RunPolicy::default(),
        runs: RunPolicy { count: 10_000, min_time_ms: 0 },
        input_bundle: None,
        runtime: None,
    };
    let mut events = 0;
    let r = c.benchmark(&req, |p| {
        events += 1;
        if p.done >= 3 {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    });
    assert!(matches!(r, Err(ClientError::Remote(RemoteError::Cancelled))), "{r:?}");
    assert!(events < 100, "cancel took {events} events");
    // The session goes on.
    c.ping(1).unwrap();
    assert!(!c.cancel(c.last_request_id()).unwrap());
}

#[test]
fn upload_resumes_after_the_link_breaks() {
    let (dev, join) = spawn_device(ServerConfig::default(), MemoryHandler::new());
    let data = model(100_000, 3);
    let mut links = 0;
    let mut resumed = Vec::new();
    let (_, info) = upload_resumable(
        || {
            links += 1;
            // The first two links die after ~30 KB from the host.
            let cut = (links <= 2).then_some(30_000);
            let (mut host, board) = lossy_duplex(Some(Faults { cut_after: cut, ..Faults::default() }), None);
            host.set_read_timeout(Some(Duration::from_millis(5)));
            dev.send(board).unwrap();
            Client::connect(host, client_config(None))
        },
        ArtifactKind::Model,
        "resumed",
        &data,
        5,
        |p| {
            if p.acked == p.resumed_from {
                resumed.push(p.resumed_from);
            }
        },
    )
    .unwrap();
    assert_eq!(links, 3);
    assert_eq!(resumed.len(), 3);
    assert_eq!(resumed[0], 0);
    assert!(resumed[1] > 20_000 && resumed[2] > resumed[1], "resume offsets {resumed:?}");
    assert_eq!(info.sha256, <[u8; 32]>::from(Sha256::digest(&data)));
    drop(dev);
    let (h, _) = join.join().unwrap();
    assert_eq!(h.get(ArtifactKind::Model, "resumed"), Some(&data[..]));
    assert_eq!(h.commits.len(), 1);
}

fn lossy_upload(
    seed: u64,
    rate: f64,
    data: &[u8],
    sessions: u32,
) -> (Result<ArtifactInfo, ClientError>, MemoryHandler) {
    let (dev, join) = spawn_device(ServerConfig::default(), MemoryHandler::new());
    let faults = |s| Faults { seed: s, corrupt: rate, drop: rate, duplicate: rate, cut_after: None };
    let mut session = 0;
    let result = upload_resumable(
        || {
            session += 1;
            let (mut host, board) =
                lossy_duplex(Some(faults(seed * 100 + session)), Some(faults(seed * 100 + 50 + session)));
            host.set_read_timeout(Some(Duration::from_millis(2)));
            dev.send(board).unwrap();
            let config = ClientConfig {
                preferred_chunk: 1024,
                request_timeout: Duration::from_millis(40),
                max_retries: 6,
                ..ClientConfig::serial()
            };
            Client::connect(host, config)
        },
        ArtifactKind::Model,
        "lossy",
        data,
        sessions,
        |_| {},
    )
    .map(|(_, info)| info);
    drop(dev);
    let (h, _) = join.join().unwrap();
    (result, h)
}

#[test]
fn upload_over_a_corrupting_dropping_duplicating_link() {
    let data = model(48 * 1024, 4);
    let sha: [u8; 32] = Sha256::digest(&data).into();
    for seed in 1..=3 {
        // ~1 byte in 80000 damaged each way: a damaged record ends its
        // session (it cannot be told from tampering), the next session
        // resumes from what arrived intact.
        let (result, h) = lossy_upload(seed, 4e-6, &data, 10);
        let info = result.unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        assert_eq!(info.sha256, sha);
        assert_eq!(h.get(ArtifactKind::Model, "lossy"), Some(&data[..]));
        assert!(h.commits.iter().all(|c| c.sha256 == sha));
    }
}

#[test]
fn hopeless_link_fails_cleanly_after_bounded_retries() {
    let data = model(16 * 1024, 5);
    let started = std::time::Instant::now();
    // ~1 byte in 50 damaged: almost no record survives.
    let (result, h) = lossy_upload(9, 2e-2, &data, 3);
    let err = result.unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::RetriesExhausted { attempts: 3, .. } | ClientError::AuthFailed | ClientError::NotSecure(_)
        ),
        "{err}"
    );
    assert!(h.commits.is_empty(), "nothing may be committed");
    assert!(started.elapsed() < Duration::from_secs(20));
}

#[test]
fn tcp_session_with_key() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let mut h = MemoryHandler::new();
        let cfg = keyed_server();
        let mut ends = Vec::new();
        for _ in 0..2 {
            let (stream, _) = listener.accept().unwrap();
            ends.push(serve_tcp(&mut h, &cfg, stream).unwrap());
        }
        (h, ends)
    });
    let err = Client::connect_tcp(addr, ClientConfig::tcp(PreSharedKey::new([1; 32]))).err().unwrap();
    assert!(matches!(err, ClientError::AuthFailed), "{err}");
    let mut c = Client::connect_tcp(addr, ClientConfig::tcp(KEY)).unwrap();
    assert_eq!(c.session().unwrap().chunk_size, DEFAULT_TCP_CHUNK);
    let data = model(1_000_000, 6);
    c.upload(ArtifactKind::Model, "tcp", &data, |_| {}).unwrap();
    drop(c);
    let (h, ends) = server.join().unwrap();
    assert_eq!(ends, [SessionEnd::AuthFailed, SessionEnd::Closed]);
    assert_eq!(h.get(ArtifactKind::Model, "tcp"), Some(&data[..]));
}
