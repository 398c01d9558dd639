//! An attacker on the LAN against a real `rba-device` on loopback: a
//! man-in-the-middle proxy that records, flips, replays, injects and
//! rewrites (PROTOCOL.md section 4, threat model), fake devices without the
//! key, and a board whose identity changed. Each attack ends the session
//! with an integrity or authentication error the host reports, and the
//! device's store shows that nothing was committed or deleted. Every loop
//! is bounded in count and time.

#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::Output;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rba_host::board::{BoardError, Device, ModelArtifact, Pinning, Target};
use rba_protocol::secure::{self, Identity, ServerHandshake};
use rba_protocol::*;
use rba_testkit::daemon::store_files;
use rba_testkit::net::{connect_tcp, tcp_config, At, Dir, Faults, Proxy, Script, Unit};
use rba_testkit::process::{device_binary, output_text, rba_binary, rba_command, run_logged, DeviceProcess};
use rba_testkit::{test_key, write_key_file, KEY};

const RESNET: &str = "resnet-digits";

/// The `rba` binary with a key file and its own known-boards file.
fn rba(args: &[&str], key_file: &Path, known: &Path) -> Output {
    let mut cmd = rba_command(args, known);
    cmd.arg("--key-file").arg(key_file);
    run_logged(cmd, args)
}

fn text(out: &Output) -> String {
    output_text(out)
}

/// A scratch directory with the test key in a 0600 key file.
struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Scratch {
        let dir = tempfile::tempdir().unwrap();
        write_key_file(&dir.path().join("key"), KEY);
        Scratch { dir }
    }
    fn key(&self) -> std::path::PathBuf {
        self.dir.path().join("key")
    }
    fn known(&self) -> std::path::PathBuf {
        self.dir.path().join("known_boards")
    }
}

/// A host as the library sees it, through `addr`, identities not pinned.
fn host(addr: SocketAddr) -> Result<Device, BoardError> {
    let target = Target::Tcp { addr: addr.to_string(), key: Some(test_key()), board: None };
    Device::connect_pinned(&target, &Pinning::Off)
}

fn models(dir: &Path) -> Vec<String> {
    store_files(dir, "models").iter().map(|p| p.file_name().unwrap().to_string_lossy().into()).collect()
}

/// A tampered session: the host reports integrity, the device logged it.
fn assert_tampered(err: &BoardError, device: &DeviceProcess) {
    let msg = err.to_string();
    assert!(msg.contains("was tampered with or corrupted") && msg.contains("nothing was committed"), "{msg}");
    match err {
        BoardError::Device { source, .. } => assert!(source.integrity().is_some(), "{source:?}"),
        other => panic!("{other:?}"),
    }
    assert!(device.wait_for("failed authentication", Duration::from_secs(5)).is_some(), "{}", device.stderr());
}

/// Every 32-byte window of `secret` that also appears in `haystack`.
fn shared_windows(secret: &[u8], haystack: &[u8]) -> usize {
    let windows: HashSet<&[u8]> = secret.windows(32).collect();
    haystack.windows(32).filter(|w| windows.contains(w)).count()
}

#[test]
fn a_recorded_deploy_shows_no_window_of_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let device = DeviceProcess::tcp(dir.path());
    let proxy = Proxy::start(device.tcp_addr(), Faults::default());
    let scratch = Scratch::new();
    let out = rba(&["deploy", "demo:resnet", "--addr", &proxy.addr.to_string()], &scratch.key(), &scratch.known());
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("pinned the identity of new board"), "{}", text(&out));
    let model = rba_host::demo::RESNET_ONNX;
    assert_eq!(std::fs::read(dir.path().join("models").join(RESNET)).unwrap(), model);
    let capture = proxy.capture(0);
    assert!(capture.up.len() > model.len(), "the upload went through the proxy");
    // The check finds the model in what the link would carry in clear.
    let chunk = Envelope {
        id: 3,
        msg: Message::Request(Request::UploadChunk(UploadChunk { offset: 0, data: Bytes(model[..65536].to_vec()) })),
    };
    assert!(shared_windows(model, &encode_frame(&chunk, DEFAULT_MAX_FRAME).unwrap()) > 1000);
    // On the wire: not one 32-byte window of the model, either way.
    assert_eq!(shared_windows(model, &capture.up), 0, "model bytes in clear on the wire");
    assert_eq!(shared_windows(model, &capture.down), 0);
}

/// Units seen so far, with where they were.
type Seen = Arc<Mutex<Vec<(At, Vec<u8>)>>>;

/// A script that stores connection 0's units and tampers with the others.
fn tamper_after_first(f: impl Fn(At, Vec<u8>, &[(At, Vec<u8>)]) -> Vec<Vec<u8>> + Send + Sync + 'static) -> Script {
    let first: Seen = Arc::default();
    Arc::new(move |at: At, unit: Vec<u8>| {
        if at.conn == 0 {
            first.lock().unwrap().push((at, unit.clone()));
            return vec![unit];
        }
        let seen = first.lock().unwrap().clone();
        f(at, unit, &seen)
    })
}

#[test]
fn a_flipped_byte_after_the_handshake_ends_the_session_and_commits_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let device = DeviceProcess::tcp(dir.path());
    let proxy = Proxy::start(device.tcp_addr(), Faults::default());
    // Every session: one bit flipped 200 kB into the host's records (in
    // the upload's chunks).
    proxy.set_script(Arc::new(|at: At, mut unit: Vec<u8>| {
        if let (Dir::Up, Unit::Data { offset, .. }) = (at.dir, at.unit) {
            let target = 200_000u64;
            if (offset..offset + unit.len() as u64).contains(&target) {
                unit[(target - offset) as usize] ^= 0x01;
            }
        }
        vec![unit]
    }));
    let mut d = host(proxy.addr).unwrap();
    let err = d.deploy(&ModelArtifact::from_spec("demo:resnet").unwrap()).unwrap_err();
    assert_tampered(&err, &device);
    device.wait_idle(Duration::from_secs(20));
    assert!(models(dir.path()).is_empty(), "something was committed");
}

#[test]
fn a_record_replayed_from_an_earlier_session_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let device = DeviceProcess::tcp(dir.path());
    let proxy = Proxy::start(device.tcp_addr(), Faults::default());
    // Session 0 deploys resnet; in later sessions the attacker replays its
    // second record (the host waits for each answer: one read, one record)
    // in place of theirs.
    let index = |u: Unit| match u {
        Unit::Data { index, .. } => Some(index),
        Unit::Handshake => None,
    };
    proxy.set_script(tamper_after_first(move |at, unit, first| {
        let replayed =
            first.iter().find(|(a, _)| a.dir == at.dir && index(a.unit) == index(at.unit)).map(|(_, u)| u.clone());
        match (at.dir, index(at.unit), replayed) {
            (Dir::Up, Some(1), Some(old)) => vec![old],
            _ => vec![unit],
        }
    }));
    {
        let mut d = host(proxy.addr).unwrap();
        d.deploy(&ModelArtifact::from_spec("demo:resnet").unwrap()).unwrap();
    }
    device.wait_idle(Duration::from_secs(10));
    let mut d = host(proxy.addr).unwrap();
    let err = d.deploy(&ModelArtifact::from_spec("demo:vit").unwrap()).unwrap_err();
    assert_tampered(&err, &device);
    device.wait_idle(Duration::from_secs(20));
    assert_eq!(models(dir.path()), [RESNET], "only the first session's model");
    // Anything staged arrived intact: a prefix of the host's model.
    let vit = &rba_testkit::demo::demo().vit_bytes;
    for f in store_files(dir.path(), "staging") {
        let staged = std::fs::read(&f).unwrap();
        assert!(staged.len() <= 64 || vit.starts_with(&staged), "{} holds other bytes", f.display());
    }
}

#[test]
fn injected_delete_frames_and_records_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let device = DeviceProcess::tcp(dir.path());
    let proxy = Proxy::start(device.tcp_addr(), Faults::default());
    // Without the session keys an attacker can only inject bytes: a
    // plaintext Delete frame (connection 1), a random record (connection 2),
    // before the host's second record.
    let delete =
        Envelope { id: 2, msg: Message::Request(Request::Delete { kind: ArtifactKind::Model, name: RESNET.into() }) };
    let delete = encode_frame(&delete, 4096).unwrap();
    proxy.set_script(tamper_after_first(move |at, unit, _| {
        if at.dir != Dir::Up || !matches!(at.unit, Unit::Data { index: 1, .. }) {
            return vec![unit];
        }
        let injected = if at.conn == 1 {
            delete.clone()
        } else {
            let mut r = vec![0, 64];
            let mut x = 0x9E37_79B9u32 ^ at.conn;
            r.extend((0..64).map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            }));
            r
        };
        vec![injected, unit]
    }));
    {
        let mut d = host(proxy.addr).unwrap();
        d.deploy(&ModelArtifact::from_spec("demo:resnet").unwrap()).unwrap();
    }
    for _ in 0..2 {
        device.wait_idle(Duration::from_secs(10));
        let mut d = host(proxy.addr).unwrap();
        let err = d.info().unwrap_err();
        assert_tampered(&err, &device);
    }
    device.wait_idle(Duration::from_secs(10));
    assert_eq!(models(dir.path()), [RESNET], "the model was deleted");
    // And the device serves the honest host afterwards.
    let mut c = connect_tcp(device.tcp_addr(), &tcp_config()).unwrap();
    assert_eq!(c.list(None).unwrap().len(), 1);
}

/// The plaintext records a `Client` with `config` writes for an upload of
/// `data` as `name`: Hello, UploadBegin, the chunks, UploadCommit (each
/// frame is one write, split into records of at most 65519 bytes).
fn predicted_records(config: &ClientConfig, name: &str, data: &[u8], chunk: u32) -> Vec<Vec<u8>> {
    let hello = Hello {
        protocol_version: PROTOCOL_VERSION,
        client: config.client_name.clone(),
        rba_version: RBA_VERSION.into(),
        capabilities: Capabilities::ALL,
        max_frame: config.max_frame as u32,
        preferred_chunk: config.preferred_chunk,
    };
    let sha = rba_testkit::sha256(data);
    let mut reqs = vec![
        Request::Hello(hello),
        Request::UploadBegin(UploadBegin {
            kind: ArtifactKind::Model,
            name: name.into(),
            size: data.len() as u64,
            sha256: sha,
        }),
    ];
    for (i, c) in data.chunks(chunk as usize).enumerate() {
        let offset = (i * chunk as usize) as u64;
        reqs.push(Request::UploadChunk(UploadChunk { offset, data: Bytes(c.to_vec()) }));
    }
    reqs.push(Request::UploadCommit(UploadCommit { kind: ArtifactKind::Model, name: name.into(), sha256: sha }));
    let mut records = Vec::new();
    for (i, req) in reqs.into_iter().enumerate() {
        let frame =
            encode_frame(&Envelope { id: i as u32 + 1, msg: Message::Request(req) }, DEFAULT_MAX_FRAME).unwrap();
        records.extend(frame.chunks(secure::MAX_RECORD_PAYLOAD).map(<[u8]>::to_vec));
    }
    records
}

#[test]
fn a_swapped_upload_with_rewritten_digests_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let device = DeviceProcess::tcp(dir.path());
    let proxy = Proxy::start(device.tcp_addr(), Faults::default());
    let real = rba_host::demo::RESNET_ONNX.to_vec();
    let chunk = 64 * 1024;
    let config = ClientConfig { preferred_chunk: chunk, max_retries: 0, ..tcp_config() };
    let plain = predicted_records(&config, "model.onnx", &real, chunk);
    // The attacker's model: different non-zero bytes where the real one has
    // non-zero bytes, so every frame keeps its length; its own digests.
    let mut evil_plain = None;
    for seed in 1..=64u8 {
        let mut evil = real.clone();
        for b in evil.iter_mut().step_by(97) {
            if *b != 0 {
                *b = (*b).wrapping_add(seed).max(1);
            }
        }
        let p = predicted_records(&config, "model.onnx", &evil, chunk);
        if p.iter().map(Vec::len).eq(plain.iter().map(Vec::len)) {
            evil_plain = Some(p);
            break;
        }
    }
    let evil_plain = evil_plain.expect("an attacker's model with frames of the same lengths");
    // Chacha20 is a stream cipher: XOR-ing (real ^ evil) into the ciphertext
    // would turn the real upload into the attacker's, digests and CRCs
    // included, if records were not authenticated.
    // Where each record's body is in the host's stream: an encrypted
    // length (18 bytes), then the body (plaintext + 16-byte tag).
    let mut mask = vec![0u8; plain.iter().map(|p| secure::HEADER_LEN + p.len() + secure::TAG_LEN).sum()];
    let mut at = 0;
    for (a, b) in plain.iter().zip(&evil_plain) {
        let body = at + secure::HEADER_LEN;
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            mask[body + i] = x ^ y;
        }
        at = body + a.len() + secure::TAG_LEN;
    }
    let flipped = Arc::new(Mutex::new(0usize));
    let count = flipped.clone();
    proxy.set_script(Arc::new(move |at: At, mut unit: Vec<u8>| {
        if let (Dir::Up, Unit::Data { offset, .. }) = (at.dir, at.unit) {
            for (i, c) in unit.iter_mut().enumerate() {
                if let Some(m) = mask.get(offset as usize + i).filter(|m| **m != 0) {
                    *c ^= m;
                    *count.lock().unwrap() += 1;
                }
            }
        }
        vec![unit]
    }));
    let mut c = connect_tcp(proxy.addr, &config).unwrap();
    let err = c.upload(ArtifactKind::Model, "model.onnx", &real, |_| {}).unwrap_err();
    assert!(*flipped.lock().unwrap() > 0, "the digests were rewritten");
    assert!(err.integrity().is_some(), "{err}");
    drop(c);
    device.wait_idle(Duration::from_secs(20));
    assert!(device.wait_for("failed authentication", Duration::from_secs(5)).is_some());
    assert!(models(dir.path()).is_empty(), "the attacker's model was stored");
}

/// A fake device on loopback answering each connection (at most `max`, for
/// at most 120 s) with `answer`.
fn fake_device(max: usize, answer: impl Fn(std::net::TcpStream) + Send + 'static) -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    let t = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut served = 0;
        while served < max && Instant::now() < deadline {
            match listener.accept() {
                Ok((s, _)) => {
                    served += 1;
                    s.set_nonblocking(false).unwrap();
                    s.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
                    answer(s);
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    });
    (addr, t)
}

fn check_refused(addr: SocketAddr, needle: &str) {
    let scratch = Scratch::new();
    let a = addr.to_string();
    let out = rba(&["devices", "--no-qemu", "--addr", &a], &scratch.key(), &scratch.known());
    let t = text(&out);
    let row = t.lines().find(|l| l.starts_with(&a)).unwrap_or_else(|| panic!("no row for {a}:\n{t}"));
    assert!(row.contains(needle), "{row}");
    assert!(!row.contains(" ok "), "{row}");
    for cmd in [&["deploy", "demo:resnet", "--addr", &a][..], &["bench", "demo:resnet", "--runs", "1", "--addr", &a]] {
        let out = rba(cmd, &scratch.key(), &scratch.known());
        assert!(!out.status.success());
        assert!(text(&out).contains(needle), "{}", text(&out));
    }
    assert!(
        !scratch.known().exists() || std::fs::read_to_string(scratch.known()).unwrap().is_empty(),
        "a fake was pinned"
    );
}

#[test]
fn a_fake_device_without_the_key_is_refused() {
    // Build the binaries first: the fakes below serve for a bounded time.
    rba_binary();
    // A Noise responder holding another key.
    let identity = Identity::generate().unwrap();
    let wrong = PreSharedKey::new([0x77; 32]);
    let (addr, fake) = fake_device(3, move |mut s| {
        let mut w = s.try_clone().unwrap();
        let _ = secure::accept(&mut s, &mut w, ServerHandshake::new(&identity, Some(&wrong)), &[]);
        std::thread::sleep(Duration::from_millis(200));
    });
    check_refused(addr, "authentication failed: the device rejected the key or is not the device you think");
    fake.join().unwrap();

    // A version-1 style responder: an unsigned Welcome to whatever comes.
    let (addr, fake) = fake_device(3, |mut s| {
        let mut buf = [0u8; 4096];
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            match s.read(&mut buf) {
                Ok(n) if n > 0 => break,
                _ => {}
            }
        }
        // id 1, Response, Welcome (v1 numbering), protocol 1, the rest.
        let welcome = [1, 1, 1, 1, 4, b'f', b'a', b'k', b'e'];
        let _ = s.write_all(&secure::legacy_frame(&welcome));
        std::thread::sleep(Duration::from_millis(200));
    });
    check_refused(addr, "without the secure handshake");
    fake.join().unwrap();
}

/// A free loopback port (bound and released).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn tcp_device_on(port: u16, dir: &Path) -> DeviceProcess {
    let d = dir.display().to_string();
    let addr = format!("127.0.0.1:{port}");
    let p = DeviceProcess::spawn(
        device_binary(),
        &["serve", "--tcp", &addr, "--dir", &d, "--threads", "1"],
        &[("RBA_DEVICE_KEY", KEY)],
    );
    p.tcp_addr();
    p
}

#[test]
fn a_board_whose_identity_changed_is_refused_until_forgotten() {
    let scratch = Scratch::new();
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let port = free_port();
    let target = format!("127.0.0.1:{port}");
    let devices =
        |scratch: &Scratch| rba(&["devices", "--no-qemu", "--addr", &target], &scratch.key(), &scratch.known());
    let mut first = tcp_device_on(port, a.path());
    let out = devices(&scratch);
    assert!(text(&out).contains(&format!("pinned the identity of new board {target}")), "{}", text(&out));
    let pinned = std::fs::read_to_string(scratch.known()).unwrap();
    let old_fp = pinned.split_whitespace().nth(1).unwrap().to_string();
    assert_eq!(pinned, format!("{target} {old_fp}\n"));
    assert!(text(&out).contains(&old_fp), "the fingerprint column");
    first.kill();

    // Same address, fresh store: a new identity (another board, or an impostor).
    let second = tcp_device_on(port, b.path());
    let out = devices(&scratch);
    let t = text(&out);
    let known = scratch.known().display().to_string();
    for needle in ["identity changed", &format!("{known}:1"), &old_fp, &format!("rba devices --forget {target}")] {
        assert!(t.contains(needle), "{needle}: {t}");
    }
    let out = rba(&["deploy", "demo:resnet", "--addr", &target], &scratch.key(), &scratch.known());
    assert!(!out.status.success() && text(&out).contains("identity changed"), "{}", text(&out));
    assert!(models(b.path()).is_empty());

    // The user accepts the replaced board.
    let out = rba(&["devices", "--forget", &target], &scratch.key(), &scratch.known());
    assert!(out.status.success() && text(&out).contains(&format!("forgot {target}")), "{}", text(&out));
    second.wait_idle(Duration::from_secs(10));
    let out = devices(&scratch);
    assert!(text(&out).contains("pinned the identity of new board"), "{}", text(&out));
    let new_fp = std::fs::read_to_string(scratch.known()).unwrap().split_whitespace().nth(1).unwrap().to_string();
    assert_ne!(new_fp, old_fp);
    let out = rba(&["deploy", "demo:resnet", "--addr", &target], &scratch.key(), &scratch.known());
    assert!(out.status.success(), "{}", text(&out));
}
