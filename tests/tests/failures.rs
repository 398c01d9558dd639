//! Failures on real links to a real `rba-device` process: a TCP proxy that
//! corrupts, drops and stalls; SIGKILL mid-upload; clients without the key
//! or with a wrong one, a replayed handshake; hostile peers sending huge
//! frames, false lengths and garbage. (Deliberate attacks by a
//! man-in-the-middle are in `attacks.rs`.)

#![allow(clippy::unwrap_used)]

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use rba_protocol::client::upload_resumable;
use rba_protocol::secure::{self, ClientHandshakeError, ConnectError, Status};
use rba_protocol::*;
use rba_testkit::conformance::check_bench;
use rba_testkit::daemon::no_progress;
use rba_testkit::demo::demo;
use rba_testkit::net::{connect_tcp, frame_payload, split_units, tcp_config, Dir, Faults, Proxy, RawPeer, Unit};
use rba_testkit::process::DeviceProcess;
use rba_testkit::{sha256, test_key};

/// Client for a faulty link: small timeouts (a lost frame costs one), many
/// resends, 64 KiB chunks.
fn flaky_config(timeout_ms: u64) -> ClientConfig {
    ClientConfig {
        request_timeout: Duration::from_millis(timeout_ms),
        max_retries: 8,
        preferred_chunk: 64 * 1024,
        ..tcp_config()
    }
}

/// Uploads `data` as model `name` through `addr`, reconnecting and resuming
/// after link failures (at most `sessions`); returns the offsets each
/// attempt started from.
fn upload_through(
    addr: SocketAddr,
    config: &ClientConfig,
    name: &str,
    data: &[u8],
    sessions: u32,
) -> (ArtifactInfo, Vec<u64>) {
    let mut starts = Vec::new();
    let (_, info) = upload_resumable(
        || connect_tcp(addr, config),
        ArtifactKind::Model,
        name,
        data,
        sessions,
        // Each attempt reports its starting offset first.
        |p| {
            if p.acked == p.resumed_from {
                starts.push(p.resumed_from);
            }
        },
    )
    .unwrap();
    (info, starts)
}

/// The device lists `name` with the digest and size of `data`, and holds
/// exactly those bytes.
fn assert_stored(device_addr: SocketAddr, dir: &std::path::Path, name: &str, data: &[u8]) {
    let mut c = connect_tcp(device_addr, &tcp_config()).unwrap();
    let entry = c.list(Some(ArtifactKind::Model)).unwrap().into_iter().find(|a| a.name == name).unwrap();
    assert_eq!((entry.size, entry.sha256), (data.len() as u64, sha256(data)));
    assert!(std::fs::read(dir.join("models").join(name)).unwrap() == data, "stored bytes differ");
}

#[test]
fn corrupted_bytes_cost_sessions_never_the_stored_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let device = DeviceProcess::tcp(dir.path());
    let addr = device.tcp_addr();
    // Bursts of 1 KiB noise, about one per MB each way: a damaged record
    // cannot be told from a tampered one, so it ends its session; the next
    // session (fresh keys) resumes from what arrived intact.
    let faults = Faults { corrupt_rate: 0.001, corrupt_burst: 1024, ..Faults::default() };
    let proxy = Proxy::start(addr, faults);
    let data = &demo().vit_bytes;
    let (info, starts) = upload_through(proxy.addr, &flaky_config(1000), "vit.onnx", data, 30);
    assert_eq!((info.size, info.sha256), (data.len() as u64, sha256(data)));
    let (corrupted, sent) = (proxy.corrupted(), proxy.upstream_bytes());
    eprintln!("corrupted {corrupted} of {sent} bytes sent to the device; sessions started at {starts:?}");
    assert!(corrupted > 0);
    assert!(proxy.connections() >= 2, "no session was lost to a damaged record");
    assert!(starts.windows(2).all(|w| w[0] <= w[1]), "resumes never go back: {starts:?}");
    drop(proxy);
    device.wait_idle(Duration::from_secs(10));
    assert_stored(addr, dir.path(), "vit.onnx", data);
}

#[test]
fn a_hopeless_link_fails_cleanly_and_the_upload_resumes_later() {
    let dir = tempfile::tempdir().unwrap();
    let device = DeviceProcess::tcp(dir.path());
    let addr = device.tcp_addr();
    // After 1 MiB, 1% of the bytes independently: no 64 KiB chunk survives.
    let faults = Faults { corrupt_rate: 0.01, corrupt_burst: 1, corrupt_after: 1 << 20, ..Faults::default() };
    let proxy = Proxy::start(addr, faults);
    let data = &demo().vit_bytes;
    let config = ClientConfig { max_retries: 3, ..flaky_config(200) };
    let mut c = connect_tcp(proxy.addr, &config).unwrap();
    let mut acked = 0;
    let err = c.upload(ArtifactKind::Model, "vit.onnx", data, |p| acked = p.acked).unwrap_err();
    // Whichever end meets the first damaged record ends the session.
    assert!(err.ends_session(), "{err}");
    assert!(acked > 512 * 1024 && acked < data.len() as u64, "{acked}");
    drop(c);
    // Nothing half-received is visible; the staged bytes wait for a retry.
    device.wait_idle(Duration::from_secs(10));
    if err.integrity().is_none() {
        assert!(device.wait_for("failed authentication", Duration::from_secs(5)).is_some(), "{}", device.stderr());
    }
    let mut direct = connect_tcp(addr, &tcp_config()).unwrap();
    assert!(direct.list(None).unwrap().is_empty());
    drop(direct);
    device.wait_idle(Duration::from_secs(10));
    // The line clears: the same upload continues where it stopped.
    proxy.set_faults(Faults::default());
    let (info, starts) = upload_through(proxy.addr, &flaky_config(1000), "vit.onnx", data, 4);
    assert_eq!(info.sha256, sha256(data));
    assert!(starts[0] >= acked, "resumed from {starts:?}, {acked} were acknowledged");
    drop(proxy);
    device.wait_idle(Duration::from_secs(10));
    assert_stored(addr, dir.path(), "vit.onnx", data);
}

#[test]
fn a_connection_dropped_mid_upload_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let device = DeviceProcess::tcp(dir.path());
    let addr = device.tcp_addr();
    let drop_at = 2 << 20;
    let proxy = Proxy::start(addr, Faults { drop_at: Some(drop_at), ..Faults::default() });
    let data = &demo().vit_bytes;
    let (info, starts) = upload_through(proxy.addr, &flaky_config(2000), "vit.onnx", data, 4);
    assert_eq!(info.sha256, sha256(data));
    assert!(proxy.dropped());
    assert_eq!(proxy.connections(), 2, "one reconnection");
    assert_eq!(starts.len(), 2, "{starts:?}");
    assert_eq!(starts[0], 0);
    // Everything acknowledged before the cut (at least 2 MiB minus one chunk
    // in flight) was kept.
    assert!(starts[1] >= drop_at - 2 * 64 * 1024 && starts[1] < data.len() as u64, "{starts:?}");
    drop(proxy);
    device.wait_idle(Duration::from_secs(10));
    assert_stored(addr, dir.path(), "vit.onnx", data);
}

#[test]
fn a_stalled_link_delays_the_upload_but_it_completes() {
    let dir = tempfile::tempdir().unwrap();
    let device = DeviceProcess::tcp(dir.path());
    let addr = device.tcp_addr();
    let stall = Duration::from_millis(1500);
    let proxy = Proxy::start(addr, Faults { stall_at: Some((1 << 20, stall)), ..Faults::default() });
    let data = &demo().vit_bytes;
    let started = Instant::now();
    // Resends while stalled (timeout 400 ms, 8 resends): the session survives.
    let mut c = connect_tcp(proxy.addr, &flaky_config(400)).unwrap();
    let info = c.upload(ArtifactKind::Model, "vit.onnx", data, |_| {}).unwrap();
    assert_eq!(info.sha256, sha256(data));
    assert!(proxy.stalled() && started.elapsed() >= stall);
    assert_eq!(proxy.connections(), 1);
    assert!(proxy.upstream_bytes() > data.len() as u64 + 64 * 1024, "no chunk was resent during the stall");
    let listed = c.list(None).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!((listed[0].size, listed[0].sha256), (data.len() as u64, sha256(data)));
}

#[test]
fn sigkill_mid_upload_leaves_no_partial_model_and_a_fresh_upload_works() {
    let dir = tempfile::tempdir().unwrap();
    let mut device = DeviceProcess::tcp(dir.path());
    let demo = demo();
    let mut c = connect_tcp(device.tcp_addr(), &ClientConfig { preferred_chunk: 64 * 1024, ..tcp_config() }).unwrap();
    let mut killed_at = None;
    let err = c
        .upload(ArtifactKind::Model, "vit.onnx", &demo.vit_bytes, |p| {
            if p.acked >= 2 << 20 && killed_at.is_none() {
                killed_at = Some(p.acked);
                device.kill();
            }
        })
        .unwrap_err();
    assert!(err.is_link_failure(), "{err}");
    assert!(killed_at.is_some());
    drop(c);
    assert!(std::fs::read_dir(dir.path().join("models")).unwrap().next().is_none(), "a model file appeared");

    let device = DeviceProcess::tcp(dir.path());
    let addr = device.tcp_addr();
    let mut c = connect_tcp(addr, &tcp_config()).unwrap();
    assert!(c.list(None).unwrap().is_empty(), "a partial model is listed after the restart");
    let info = c.upload(ArtifactKind::Model, "vit-slim.onnx", &demo.slim_bytes, |_| {}).unwrap();
    assert_eq!(info.sha256, sha256(&demo.slim_bytes));
    let info = c.upload(ArtifactKind::Model, "vit.onnx", &demo.vit_bytes, |_| {}).unwrap();
    assert_eq!(info.sha256, sha256(&demo.vit_bytes));
    let names: Vec<String> = c.list(None).unwrap().into_iter().map(|a| a.name).collect();
    assert_eq!(names, ["vit-slim.onnx", "vit.onnx"]);
    // And it runs: the restarted device serves the models it received.
    let req = BenchmarkRequest {
        model: "vit.onnx".into(),
        threads: None,
        warmup: RunPolicy { count: 1, min_time_ms: 0 },
        runs: RunPolicy { count: 3, min_time_ms: 0 },
        input_bundle: None,
    };
    check_bench(&c.benchmark(&req, no_progress).unwrap(), "vit.onnx", 3, 1);
}

#[test]
fn clients_without_the_key_or_with_a_wrong_one_and_replayed_handshakes_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let device = DeviceProcess::tcp(dir.path());
    let addr = device.tcp_addr();

    // Without a key the client does not even try TCP.
    let keyless = ClientConfig { key: None, ..tcp_config() };
    assert!(matches!(connect_tcp(addr, &keyless), Err(ClientError::Remote(RemoteError::AuthRequired))));
    // On the wire, a keyless handshake is answered "key required".
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    match secure::connect(&mut s, None, Duration::from_secs(5), 1) {
        Err(ConnectError::Handshake(ClientHandshakeError::Refused(Status::KeyRequired))) => {}
        other => panic!("{:?}", other.map(|_| ())),
    }
    drop(s);
    device.wait_idle(Duration::from_secs(10));

    // Frames without the handshake (what a version-1 host or an attacker
    // without the key sends) get nothing: no answer, no device identity.
    let mut raw = RawPeer::connect(addr);
    raw.send(Request::List { kind: None });
    raw.send(Request::DeviceInfo);
    raw.send(Request::Ping { nonce: 1 });
    assert!(raw.read_raw(Duration::from_millis(500)).is_empty(), "answered before the handshake");
    // A version-1 Hello is told the version, in version-1 framing.
    // id 4, Message::Request, Request::Hello, protocol_version 1, "rba".
    let v1_hello = [4, 0, 0, 1, 3, b'r', b'b', b'a'];
    raw.write(&frame_payload(&v1_hello));
    assert_eq!(raw.read_raw(Duration::from_secs(2)), secure::legacy_version_mismatch(4, PROTOCOL_VERSION, 1));
    drop(raw);
    device.wait_idle(Duration::from_secs(10));

    // A wrong key: the device's handshake message does not authenticate;
    // the device, which never got a valid record, logs a failed authentication.
    let wrong = ClientConfig { key: Some(PreSharedKey::new([0x5A; 32])), ..tcp_config() };
    match connect_tcp(addr, &wrong) {
        Err(ClientError::AuthFailed) => {}
        other => panic!("{:?}", other.map(|_| ())),
    }
    device.wait_idle(Duration::from_secs(10));
    assert!(device.wait_for("authentication failed", Duration::from_secs(5)).is_some(), "{}", device.stderr());

    // A whole handshake replayed from a capture: the device answers with a
    // fresh ephemeral key, so the replayed records cannot decrypt; it
    // serves nothing and hangs up.
    let proxy = Proxy::start(addr, Faults::default());
    let mut c = connect_tcp(proxy.addr, &tcp_config()).unwrap();
    c.ping(1).unwrap();
    drop(c);
    device.wait_idle(Duration::from_secs(10));
    let captured = proxy.capture(0);
    assert_eq!(split_units(Dir::Up, &captured.up).len(), 2, "the handshake, then records");
    let mut replay = RawPeer::connect(addr);
    replay.write(&captured.up);
    let answer = replay.read_raw(Duration::from_secs(3));
    let units = split_units(Dir::Down, &answer);
    assert_eq!(units.len(), 1, "only the device's handshake message, no record");
    assert_eq!(units[0].0, Unit::Handshake);
    assert_ne!(units[0].1, split_units(Dir::Down, &captured.down)[0].1, "a fresh ephemeral key");
    assert!(replay.closed_within(Duration::from_secs(5)), "the device kept a replayed session open");
    drop(replay);
    device.wait_idle(Duration::from_secs(10));

    // The right key still works.
    let mut c = connect_tcp(addr, &tcp_config()).unwrap();
    assert!(c.session().unwrap().authenticated);
    c.ping(7).unwrap();
}

/// LEB128, as postcard writes integers.
fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// `Envelope { id, Request::UploadChunk { offset: 0, data } }` whose data
/// claims `claimed` bytes, followed by `filler` bytes (non-zero): a frame
/// with a valid CRC that lies about a length.
fn lying_chunk(id: u32, claimed: u64, filler: usize) -> Vec<u8> {
    let mut p = Vec::new();
    varint(u64::from(id), &mut p);
    p.extend_from_slice(&[0, 3, 0]); // Message::Request, Request::UploadChunk, offset 0
    varint(claimed, &mut p);
    p.extend(std::iter::repeat_n(0xA5, filler));
    frame_payload(&p)
}

/// A peer that completed the handshake with the key, then talks raw frames
/// inside the channel.
fn authenticated_raw_peer(addr: SocketAddr) -> RawPeer {
    let mut raw = RawPeer::secure(addr, &test_key());
    raw.hello();
    raw
}

/// Writes `bytes` to a raw peer's socket, tolerating the device hanging up.
fn write_tolerant(raw: &mut RawPeer, bytes: &[u8]) -> usize {
    use std::io::Write;
    let mut sent = 0;
    for chunk in bytes.chunks(64 * 1024) {
        if raw.stream.write_all(chunk).is_err() {
            break;
        }
        sent += chunk.len();
    }
    sent
}

#[test]
fn hostile_frames_and_garbage_neither_crash_nor_bloat_the_device() {
    let dir = tempfile::tempdir().unwrap();
    let mut device = DeviceProcess::tcp(dir.path());
    let addr = device.tcp_addr();
    let resnet = rba_host::demo::RESNET_ONNX;
    let bench = |min_time_ms| BenchmarkRequest {
        model: "resnet.onnx".into(),
        threads: None,
        warmup: RunPolicy { count: 1, min_time_ms: 0 },
        runs: RunPolicy { count: 1, min_time_ms },
        input_bundle: None,
    };
    {
        let mut c = connect_tcp(addr, &tcp_config()).unwrap();
        c.upload(ArtifactKind::Model, "resnet.onnx", resnet, |_| {}).unwrap();
        c.benchmark(&bench(0), no_progress).unwrap();
    }
    device.wait_idle(Duration::from_secs(10));
    // Peak RSS of a session that uploaded and ran the model.
    let baseline = device.status_bytes("VmHWM");
    let limit = baseline + (64 << 20);

    // Before the handshake: 16 MiB without a frame delimiter (a frame
    // "claiming" to be huge), a valid v1 frame lying about a length, then
    // random bytes: none of it is answered, and the device hangs up once
    // it has seen 64 KiB without a preamble.
    let mut raw = RawPeer::connect(addr);
    let mut junk = vec![0xFFu8; 16 << 20];
    junk.push(0);
    junk.extend(lying_chunk(77, 1 << 62, 100));
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    junk.extend((0..16 << 20).map(|_| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed as u8
    }));
    let sent = write_tolerant(&mut raw, &junk);
    assert!(sent < junk.len(), "the device read 32 MiB of garbage");
    assert!(raw.closed_within(Duration::from_secs(10)));
    drop(raw);
    device.wait_idle(Duration::from_secs(10));
    assert!(device.is_running());

    // Authenticated: false lengths get BadRequest; while a job runs, a flood
    // of maximal frames (128 MiB) must not pile up in the device's memory.
    let mut raw = authenticated_raw_peer(addr);
    for claimed in [1 << 62, u64::from(u32::MAX), 1 << 20] {
        let id = raw.take_id();
        raw.write(&lying_chunk(id, claimed, 16));
        match raw.response(id, Duration::from_secs(5)) {
            Some(Response::Error(RemoteError::BadRequest(_))) => {}
            other => panic!("claimed {claimed}: {other:?}"),
        }
    }
    let job = raw.send(Request::Benchmark(bench(1500)));
    let flood_frame = lying_chunk(9999, 1 << 40, (1 << 20) - 64);
    let flood_started = Instant::now();
    for _ in 0..128 {
        raw.write(&flood_frame);
    }
    eprintln!("flood written in {:?}", flood_started.elapsed());
    match raw.response(job, Duration::from_secs(60)) {
        Some(Response::Benchmark(_)) => {}
        other => panic!("{other:?}"),
    }
    let peak = device.status_bytes("VmHWM");
    eprintln!("peak RSS {} MiB, baseline {} MiB", peak >> 20, baseline >> 20);
    assert!(peak < limit, "peak RSS grew from {} to {} MiB", baseline >> 20, peak >> 20);
    drop(raw);
    device.wait_idle(Duration::from_secs(30));
    assert!(device.is_running());
    assert!(device.status_bytes("VmRSS") < limit);

    // And it still serves a proper host.
    let mut c = connect_tcp(addr, &tcp_config()).unwrap();
    c.ping(9).unwrap();
    let names: Vec<String> = c.list(None).unwrap().into_iter().map(|a| a.name).collect();
    assert_eq!(names, ["resnet.onnx"]);
    let r = c.benchmark(&bench(0), no_progress).unwrap();
    assert_eq!(r.samples_ns.len(), 1);
}
