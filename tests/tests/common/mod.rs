//! Shared pieces of the end-to-end tests: the real `rba-device` process
//! (spawned, watched and always killed), TCP and pseudo-terminal links to
//! it, a fault-injecting TCP proxy, raw frame peers, the demo models and
//! eval bundles with the host's own answers, and one conformance routine
//! run over every link.

#![allow(dead_code, clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rba_host::compact::surgery::{replace_spans, Span, Translator};
use rba_host::demo::{DemoModel, Digits, Split};
use rba_host::model::run::{argmax_rows, predict};
use rba_host::model::Model;
use rba_host::onnx::OnnxModel;
use rba_protocol::*;
use sha2::{Digest, Sha256};

/// The emulated aarch64 board: prerequisites and the one cross build,
/// shared with `device/tests/qemu.rs`.
#[path = "../../../device/tests/common/qemu.rs"]
pub mod qemu;

/// Pre-shared key of every TCP device the tests start.
pub const KEY: &str = "rba-e2e-test-key-0123456789abcdef";

// ---------------------------------------------------------------------------
// The rba-device process

/// The `rba-device` binary of this build: `target/<profile>/rba-device`,
/// next to the test executable's `deps/`. `cargo test -p rba-tests` does not
/// build other packages' binaries, so it is (re)built once per test process.
/// The build covers the whole workspace and all targets, so cargo resolves
/// dependency features exactly as `cargo test --workspace` did and finds the
/// binary up to date (`-p rba-device` alone resolves fewer features and
/// rebuilt tract, ~6 minutes in CI).
pub fn device_binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().unwrap();
        // target/<profile>/deps/<test>-<hash>
        let profile_dir = exe.parent().and_then(Path::parent).expect("test executable under target/<profile>/deps");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.current_dir(qemu::workspace()).args(["build", "--quiet", "--workspace", "--all-targets"]);
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        if let Some(target_dir) = profile_dir.parent() {
            cmd.env("CARGO_TARGET_DIR", target_dir);
        }
        let started = Instant::now();
        let status = cmd.status().expect("cargo runs");
        assert!(status.success(), "cargo build -p rba-device failed");
        eprintln!("cargo build -p rba-device: {:.1} s", started.elapsed().as_secs_f64());
        let bin = profile_dir.join("rba-device");
        assert!(bin.is_file(), "{} missing after the build", bin.display());
        bin
    })
    .clone()
}

/// A running device daemon, its stderr collected line by line (and echoed
/// for failing tests). Dropping it kills the process.
pub struct Device {
    pub child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Device {
    /// Starts `cmd` (stderr must be piped).
    pub fn start(mut cmd: Command) -> Device {
        let mut child = cmd.spawn().expect("the daemon starts");
        let stderr = child.stderr.take().expect("stderr piped");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[device] {line}");
                sink.lock().unwrap().push(line);
            }
        });
        Device { child, lines }
    }

    fn command(args: &[&str], dir: &Path) -> Command {
        let mut cmd = Command::new(device_binary());
        cmd.args(args)
            .arg("--dir")
            .arg(dir)
            .args(["--threads", "1"])
            .env_remove("RBA_DEVICE_KEY")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        cmd
    }

    /// `rba-device serve --tcp 127.0.0.1:<random>` with [`KEY`], storing in `dir`.
    pub fn tcp(dir: &Path) -> Device {
        let mut cmd = Device::command(&["serve", "--tcp", "127.0.0.1:0"], dir);
        cmd.env("RBA_DEVICE_KEY", KEY);
        Device::start(cmd)
    }

    /// `rba-device serve --serial <path>` (no key), storing in `dir`.
    pub fn serial(path: &str, dir: &Path) -> Device {
        Device::start(Device::command(&["serve", "--serial", path, "--baud", "115200"], dir))
    }

    /// Waits for a stderr line containing `needle`; returns it.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self.lines.lock().unwrap().iter().find(|l| l.contains(needle)) {
                return Some(l.clone());
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The address it printed in "listening on ADDR" (its readiness signal).
    pub fn tcp_addr(&self) -> SocketAddr {
        let line = self
            .wait_for("listening on ", Duration::from_secs(30))
            .unwrap_or_else(|| panic!("the device did not listen:\n{}", self.stderr()));
        line.rsplit("listening on ").next().unwrap().trim().parse().unwrap()
    }

    /// Waits until every session the device started has ended (it serves
    /// one host at a time: the next connection is then served, not refused).
    pub fn wait_idle(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let (started, ended) = {
                let lines = self.lines.lock().unwrap();
                let count = |needles: &[&str]| lines.iter().filter(|l| needles.iter().any(|n| l.contains(n))).count();
                (
                    count(&[": session started"]),
                    count(&[": session ended", ": session failed", ": authentication failed"]),
                )
            };
            if started == ended {
                return;
            }
            assert!(Instant::now() < deadline, "a session did not end:\n{}", self.stderr());
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A `kB` field of `/proc/<pid>/status` (`VmRSS`, `VmHWM`), in bytes.
    pub fn status_bytes(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let line = status.lines().find(|l| l.starts_with(&format!("{field}:"))).unwrap();
        let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        kib * 1024
    }

    /// Still running (not exited, not a zombie)?
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// SIGKILL, and reap it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn stderr(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---------------------------------------------------------------------------
// Links and clients

/// A TCP client with the right key, patient enough for a loaded machine.
pub fn tcp_config() -> ClientConfig {
    ClientConfig {
        request_timeout: Duration::from_secs(5),
        job_idle_timeout: Duration::from_secs(60),
        max_retries: 2,
        ..ClientConfig::tcp(PreSharedKey::new(KEY.as_bytes()))
    }
}

/// Connects and handshakes. A device serves one host at a time and answers
/// `Busy` to a host that arrives while it still winds down the previous
/// session (e.g. right after a broken link): retried for a few seconds.
pub fn connect_tcp(addr: SocketAddr, config: &ClientConfig) -> Result<Client<TcpStream>, ClientError> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match Client::connect_tcp(addr, config.clone()) {
            Err(ClientError::Remote(RemoteError::Busy)) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50))
            }
            r => return r,
        }
    }
}

/// A device on the slave side of a fresh pseudo-terminal pair; returns it
/// with a client on the master side (no key: serial links need none).
pub fn serial_device(
    start: impl FnOnce(&str) -> Device,
    config: ClientConfig,
) -> (Device, Client<serialport::TTYPort>) {
    use serialport::SerialPort;
    let (mut master, slave) = serialport::TTYPort::pair().expect("pseudo-terminals");
    let path = slave.name().unwrap();
    let device = start(&path);
    assert!(
        device.wait_for("serving on", Duration::from_secs(60)).is_some(),
        "the device did not open {path}:\n{}",
        device.stderr()
    );
    // The device holds the slave open now.
    drop(slave);
    master.set_timeout(Duration::from_millis(20)).unwrap();
    let client = Client::connect(master, config).unwrap();
    (device, client)
}

/// A peer speaking raw frames, for what a well-behaved client never sends.
pub struct RawPeer {
    pub stream: TcpStream,
    decoder: FrameDecoder,
    next_id: u32,
}

impl RawPeer {
    pub fn connect(addr: SocketAddr) -> RawPeer {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        RawPeer { stream, decoder: FrameDecoder::new(DEFAULT_MAX_FRAME), next_id: 0 }
    }

    /// A request id not used before on this link.
    pub fn take_id(&mut self) -> u32 {
        self.next_id += 1;
        self.next_id
    }

    /// Sends a request; returns its id.
    pub fn send(&mut self, req: Request) -> u32 {
        let id = self.take_id();
        self.write(&encode_frame(&Envelope { id, msg: Message::Request(req) }, 4096).unwrap());
        id
    }

    /// Sends raw bytes.
    pub fn write(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// The next envelope; `None` if the link closed or `timeout` passed.
    pub fn recv(&mut self, timeout: Duration) -> Option<Envelope> {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 4096];
        let mut got = None;
        while got.is_none() && Instant::now() < deadline {
            match self.stream.read(&mut buf) {
                Ok(0) => return None,
                Ok(n) => self.decoder.feed(&buf[..n], |r| {
                    if let Ok(env) = r {
                        got.get_or_insert(env);
                    }
                }),
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(_) => return None,
            }
        }
        got
    }

    /// The final response to request `id` (skipping progress and others).
    pub fn response(&mut self, id: u32, timeout: Duration) -> Option<Response> {
        let deadline = Instant::now() + timeout;
        while let Some(env) = self.recv(deadline.saturating_duration_since(Instant::now())) {
            if let (true, Message::Response(r)) = (env.id == id, env.msg) {
                return Some(r);
            }
        }
        None
    }

    /// True if the device closes the connection within `timeout`.
    pub fn closed_within(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            match self.stream.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(_) => return true,
            }
        }
        false
    }
}

/// `COBS(payload || CRC32) 0x00`: a well-framed frame, whatever the payload.
pub fn frame_payload(payload: &[u8]) -> Vec<u8> {
    let mut body = payload.to_vec();
    body.extend_from_slice(&rba_protocol::frame::CRC32.checksum(payload).to_le_bytes());
    let mut out = vec![0u8; rba_protocol::frame::max_encoded_len(body.len())];
    let n = cobs_encode(&body, &mut out);
    out.truncate(n);
    out.push(0);
    out
}

/// Plain COBS encoding (the protocol's framing, written out here so that
/// the tests do not share the encoder they check).
fn cobs_encode(input: &[u8], out: &mut [u8]) -> usize {
    let (mut code_at, mut w, mut code) = (0usize, 1usize, 1u8);
    for &b in input {
        if b == 0 {
            out[code_at] = code;
            code_at = w;
            w += 1;
            code = 1;
        } else {
            out[w] = b;
            w += 1;
            code += 1;
            if code == 0xFF {
                out[code_at] = code;
                code_at = w;
                w += 1;
                code = 1;
            }
        }
    }
    out[code_at] = code;
    w
}

/// A `Hello` for raw peers.
pub fn hello() -> Hello {
    Hello {
        protocol_version: PROTOCOL_VERSION,
        client: "raw-peer".into(),
        rba_version: RBA_VERSION.into(),
        capabilities: Capabilities::ALL,
        max_frame: DEFAULT_MAX_FRAME as u32,
        preferred_chunk: DEFAULT_TCP_CHUNK,
        client_nonce: [7; 32],
    }
}

// ---------------------------------------------------------------------------
// A fault-injecting TCP proxy

/// What a [`Proxy`] does to the bytes it forwards; can change while it runs.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Fraction of the bytes corrupted (XOR with a random non-zero byte),
    /// in both directions; 0 for none. Bursts start at random, with gaps
    /// uniform in [0.5, 1.5] times the mean that gives this rate.
    pub corrupt_rate: f64,
    /// Corrupted bytes come in bursts of this many (1: independent bytes),
    /// like noise on a line.
    pub corrupt_burst: usize,
    /// Corruption starts once this many bytes went host -> device.
    pub corrupt_after: u64,
    /// Once, when this many bytes went host -> device in total: forward up to
    /// exactly that byte, then close both sides of the connection.
    pub drop_at: Option<u64>,
    /// Once, when this many bytes went host -> device: stop forwarding
    /// that way for this long.
    pub stall_at: Option<(u64, Duration)>,
}

#[derive(Default)]
struct ProxyState {
    faults: Mutex<Faults>,
    stop: AtomicBool,
    /// Host -> device bytes forwarded, over all connections.
    upstream: AtomicU64,
    corrupted: AtomicU64,
    connections: AtomicU32,
    dropped: AtomicBool,
    stalled: AtomicBool,
    streams: Mutex<Vec<TcpStream>>,
}

/// A TCP proxy (threads) between a host and a device.
pub struct Proxy {
    pub addr: SocketAddr,
    state: Arc<ProxyState>,
    acceptor: Option<JoinHandle<()>>,
}

impl Proxy {
    pub fn start(device: SocketAddr, faults: Faults) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let state = Arc::new(ProxyState { faults: Mutex::new(faults), ..ProxyState::default() });
        let st = state.clone();
        let acceptor = std::thread::spawn(move || {
            while !st.stop.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((host, _)) => {
                        let Ok(dev) = TcpStream::connect(device) else {
                            let _ = host.shutdown(Shutdown::Both);
                            continue;
                        };
                        let n = st.connections.fetch_add(1, Ordering::SeqCst);
                        host.set_nonblocking(false).unwrap();
                        for s in [&host, &dev] {
                            s.set_nodelay(true).unwrap();
                            st.streams.lock().unwrap().push(s.try_clone().unwrap());
                        }
                        let seed = 0x9E37_79B9_7F4A_7C15 ^ u64::from(n);
                        let (h2, d2) = (host.try_clone().unwrap(), dev.try_clone().unwrap());
                        let s1 = st.clone();
                        std::thread::spawn(move || pump(host, dev, true, &s1, seed));
                        let s2 = st.clone();
                        std::thread::spawn(move || pump(d2, h2, false, &s2, !seed));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5))
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Proxy { addr, state, acceptor: Some(acceptor) }
    }

    pub fn set_faults(&self, faults: Faults) {
        *self.state.faults.lock().unwrap() = faults;
    }

    /// Bytes corrupted so far.
    pub fn corrupted(&self) -> u64 {
        self.state.corrupted.load(Ordering::SeqCst)
    }

    /// Host -> device bytes forwarded so far.
    pub fn upstream_bytes(&self) -> u64 {
        self.state.upstream.load(Ordering::SeqCst)
    }

    pub fn connections(&self) -> u32 {
        self.state.connections.load(Ordering::SeqCst)
    }

    pub fn dropped(&self) -> bool {
        self.state.dropped.load(Ordering::SeqCst)
    }

    pub fn stalled(&self) -> bool {
        self.state.stalled.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        for s in self.state.streams.lock().unwrap().iter() {
            let _ = s.shutdown(Shutdown::Both);
        }
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
    }
}

/// SplitMix64: a small deterministic generator for the corruption.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Forwards `from` -> `to` until either side closes, applying the faults.
fn pump(mut from: TcpStream, mut to: TcpStream, upstream: bool, st: &ProxyState, seed: u64) {
    let mut rng = Rng(seed);
    // Clean bytes before the next burst, and corrupt bytes left in it.
    let mut gap_left: Option<u64> = None;
    let mut burst_left = 0usize;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let faults = st.faults.lock().unwrap().clone();
        let mut len = n;
        let mut close = false;
        let before = if upstream {
            st.upstream.fetch_add(n as u64, Ordering::SeqCst)
        } else {
            st.upstream.load(Ordering::SeqCst)
        };
        if upstream {
            let after = before + n as u64;
            if let Some((at, pause)) = faults.stall_at {
                if after >= at && !st.stalled.swap(true, Ordering::SeqCst) {
                    std::thread::sleep(pause);
                }
            }
            if let Some(at) = faults.drop_at {
                if after >= at && !st.dropped.swap(true, Ordering::SeqCst) {
                    len = at.saturating_sub(before).min(n as u64) as usize;
                    close = true;
                }
            }
        }
        if faults.corrupt_rate > 0.0 && before >= faults.corrupt_after {
            // Gaps uniform in [0.5, 1.5] x their mean: the rate holds even
            // over a few bursts.
            let burst = faults.corrupt_burst.max(1);
            let mean_gap = burst as f64 / faults.corrupt_rate - burst as f64;
            let draw_gap = |rng: &mut Rng| (mean_gap * (0.5 + rng.unit())) as u64;
            for b in &mut buf[..len] {
                let gap = gap_left.get_or_insert_with(|| draw_gap(&mut rng));
                if burst_left == 0 {
                    if *gap > 0 {
                        *gap -= 1;
                        continue;
                    }
                    burst_left = burst;
                    gap_left = Some(draw_gap(&mut rng));
                }
                burst_left -= 1;
                *b ^= (rng.next() % 255 + 1) as u8;
                st.corrupted.fetch_add(1, Ordering::Relaxed);
            }
        }
        if to.write_all(&buf[..len]).is_err() || close {
            break;
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

// ---------------------------------------------------------------------------
// Models, bundles and the host's answers

/// The demo ViT and a compacted variant: two transformer layers (11 and 12
/// of 12) replaced by the identity with the host's own surgery.
pub struct Demo {
    pub vit: OnnxModel,
    pub slim: OnnxModel,
    pub vit_bytes: Vec<u8>,
    pub slim_bytes: Vec<u8>,
}

pub fn demo() -> &'static Demo {
    static DEMO: OnceLock<Demo> = OnceLock::new();
    DEMO.get_or_init(|| {
        let vit = DemoModel::Vit.load().unwrap();
        let m = Model::new(vit.clone(), None).unwrap();
        assert_eq!(m.blocks.blocks.len(), 12);
        let slim = replace_spans(&m.onnx, &m.blocks, &[(Span::new(10, 12), Translator::Identity)]).unwrap();
        let slim_bytes = slim.to_bytes();
        Demo { vit_bytes: DemoModel::Vit.bytes().to_vec(), slim_bytes, vit, slim }
    })
}

/// The first `n` test digits as an eval bundle (labels, and the ViT's host
/// outputs as the expected outputs), with what the host computes for them.
pub struct EvalSet {
    pub bundle: Vec<u8>,
    pub samples: usize,
    /// Correct top-1 answers of the ViT and of the compacted model, on the host.
    pub vit_correct: usize,
    pub slim_correct: usize,
    /// Samples where the compacted model's top-1 equals the ViT's.
    pub slim_agree: usize,
    /// Largest |slim - vit| over all logits.
    pub slim_max_diff: f32,
}

pub fn eval_set(n: usize) -> EvalSet {
    let demo = demo();
    let digits = Digits::embedded().unwrap();
    let idx = &digits.indices(Split::Test)[..n];
    let x = digits.batch(idx);
    let labels: Vec<usize> = idx.iter().map(|&i| digits.label(i)).collect();
    // Batch 1, as the device runs an evaluation.
    let vit = predict(&demo.vit, &x, 1).unwrap();
    let slim = predict(&demo.slim, &x, 1).unwrap();
    let (pv, ps) = (argmax_rows(&vit), argmax_rows(&slim));
    let correct = |p: &[usize]| p.iter().zip(&labels).filter(|(a, b)| a == b).count();
    let slim_max_diff = vit.iter().zip(slim.iter()).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    let input_name = demo.vit.graph().input[0].name().to_string();
    let n64 = n as u64;
    let bundle = EvalBundle {
        inputs: vec![TensorF32::from_f32(Some(input_name), vec![n64, 1, 8, 8], x.as_slice().unwrap())],
        labels: Some(labels.iter().map(|&l| l as u32).collect()),
        expected: Some(vec![TensorF32::from_f32(None, vec![n64, vit.ncols() as u64], vit.as_slice().unwrap())]),
    };
    EvalSet {
        bundle: bundle.encode().unwrap(),
        samples: n,
        vit_correct: correct(&pv),
        slim_correct: correct(&ps),
        slim_agree: pv.iter().zip(&ps).filter(|(a, b)| a == b).count(),
        slim_max_diff,
    }
}

pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// Artifacts the device lists, as (kind, name, size, digest).
pub fn listed(c: &mut Client<impl Read + Write>) -> Vec<(ArtifactKind, String, u64, [u8; 32])> {
    c.list(None).unwrap().into_iter().map(|a| (a.kind, a.name, a.size, a.sha256)).collect()
}

pub fn no_progress(_: &Progress) -> ControlFlow<()> {
    ControlFlow::Continue(())
}

// ---------------------------------------------------------------------------
// The conformance routine: the same checks over every link

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
        let req = EvalRequest { model: model.into(), bundle: "digits-test".into(), threads: None };
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
        assert_eq!(lat.count as usize, set.samples, "one latency per sample at batch 1");
        assert!(lat.min_ns > 0 && lat.p50_ns <= lat.p99_ns && lat.p99_ns <= lat.max_ns, "{lat:?}");
    }
    c.ping(42).unwrap();
}
