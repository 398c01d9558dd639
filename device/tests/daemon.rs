//! The real `rba-device` binary: TCP with a key, a serial link over a
//! pseudo-terminal pair, SIGTERM, SIGKILL during an upload and a restart,
//! and the command-line errors.

#![allow(clippy::unwrap_used)]

use std::ops::ControlFlow;
use std::time::Duration;

use rba_protocol::*;
use rba_testkit::daemon::{bench_req, fast_client_config, no_progress, store_files};
use rba_testkit::models::{mlp_model, small_linear};
use rba_testkit::process::DeviceProcess;
use rba_testkit::KEY;
use serialport::{SerialPort, TTYPort};

/// The binary cargo built for these tests.
const DEVICE: &str = env!("CARGO_BIN_EXE_rba-device");

fn tcp_client(addr: std::net::SocketAddr) -> Client<std::net::TcpStream> {
    let config = ClientConfig {
        request_timeout: Duration::from_secs(5),
        max_retries: 1,
        preferred_chunk: 4096,
        ..ClientConfig::tcp(rba_testkit::test_key())
    };
    Client::connect_tcp(addr, config).unwrap()
}

fn spawn_tcp(dir: &std::path::Path, extra: &[&str]) -> DeviceProcess {
    let d = dir.display().to_string();
    let mut args = vec!["serve", "--tcp", "127.0.0.1:0", "--dir", d.as_str()];
    args.extend_from_slice(extra);
    DeviceProcess::spawn(DEVICE, &args, &[("RBA_DEVICE_KEY", KEY)])
}

#[test]
fn sigterm_during_a_benchmark_shuts_down_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = spawn_tcp(dir.path(), &["--threads", "1"]);
    let addr = p.tcp_addr();
    let mut c = tcp_client(addr);
    assert_eq!(c.session().unwrap().device.board, "unprofiled");
    c.upload(ArtifactKind::Model, "lin", &small_linear(), |_| {}).unwrap();
    let mut req = bench_req("lin", 1);
    req.runs.min_time_ms = 60_000;
    let mut signalled = false;
    let started = std::time::Instant::now();
    let r = c.benchmark(&req, |prog| {
        if prog.phase == Phase::Measuring && !signalled {
            signalled = true;
            p.sigterm();
        }
        ControlFlow::Continue(())
    });
    assert!(signalled);
    // The job stops at its next check and says so (or the link closes first).
    match r {
        Err(ClientError::Remote(RemoteError::Cancelled)) | Err(ClientError::Disconnected) => {}
        other => panic!("{other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(30));
    let status = p.wait_exit(Duration::from_secs(10)).expect("the daemon did not exit after SIGTERM");
    assert!(status.success(), "{status:?}\n{}", p.stderr());
    assert!(p.wait_for("shut down", Duration::from_secs(1)).is_some(), "{}", p.stderr());
    // The store is intact.
    assert_eq!(std::fs::read(dir.path().join("models/lin")).unwrap(), small_linear());
}

#[test]
fn sigterm_while_idle_and_tcp_needs_a_key() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = spawn_tcp(dir.path(), &[]);
    let addr = p.tcp_addr();
    // A connected but silent host does not hold the daemon up.
    let c = tcp_client(addr);
    p.sigterm();
    assert!(p.wait_exit(Duration::from_secs(10)).unwrap().success(), "{}", p.stderr());
    drop(c);

    let d = dir.path().display().to_string();
    let mut p = DeviceProcess::spawn(DEVICE, &["serve", "--tcp", "127.0.0.1:0", "--dir", &d], &[]);
    let status = p.wait_exit(Duration::from_secs(10)).unwrap();
    assert_eq!(status.code(), Some(1));
    assert!(p.wait_for("TCP needs a pre-shared key", Duration::from_secs(2)).is_some(), "{}", p.stderr());
}

#[test]
fn sigkill_mid_upload_leaves_nothing_partial_and_the_upload_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let data: Vec<u8> = (0..200_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let mut p = spawn_tcp(dir.path(), &[]);
    let mut c = tcp_client(p.tcp_addr());
    let mut killed_at = None;
    let r = c.upload(ArtifactKind::Model, "net.onnx", &data, |prog| {
        if prog.acked >= 50_000 && killed_at.is_none() {
            killed_at = Some(prog.acked);
            p.child.kill().unwrap();
            p.child.wait().unwrap();
        }
    });
    assert!(r.unwrap_err().is_link_failure());
    let killed_at = killed_at.unwrap();
    // Nothing under the name; the staged bytes are there.
    assert!(store_files(dir.path(), "models").is_empty());
    let staged = std::fs::metadata(dir.path().join("staging/upload.part")).unwrap().len();
    assert!(staged >= killed_at && staged < data.len() as u64, "{staged}");

    let p2 = spawn_tcp(dir.path(), &[]);
    assert!(p2.wait_for("resumable upload of 'net.onnx'", Duration::from_secs(10)).is_some(), "{}", p2.stderr());
    let mut c = tcp_client(p2.tcp_addr());
    assert!(c.list(None).unwrap().is_empty(), "a partial model is visible");
    let mut resumed = None;
    let info = c
        .upload(ArtifactKind::Model, "net.onnx", &data, |prog| {
            resumed.get_or_insert(prog.resumed_from);
        })
        .unwrap();
    assert!(resumed.unwrap() >= killed_at, "{resumed:?} < {killed_at}");
    assert_eq!(info.size, data.len() as u64);
    assert_eq!(std::fs::read(dir.path().join("models/net.onnx")).unwrap(), data);
    assert!(store_files(dir.path(), "staging").is_empty());
}

#[test]
fn serial_link_over_a_pty_pair() {
    let (mut master, slave) = TTYPort::pair().expect("pseudo-terminals");
    let path = slave.name().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    let mut p = DeviceProcess::spawn(
        DEVICE,
        &["serve", "--serial", &path, "--baud", "115200", "--dir", &d, "--threads", "1"],
        &[],
    );
    assert!(p.wait_for("serving on", Duration::from_secs(20)).is_some(), "{}", p.stderr());
    drop(slave);
    master.set_timeout(Duration::from_millis(20)).unwrap();
    let link = master.try_clone_native().unwrap();
    let mut c = Client::connect(link, fast_client_config(None)).unwrap();
    assert!(!c.session().unwrap().authenticated);
    assert_eq!(c.session().unwrap().chunk_size, DEFAULT_SERIAL_CHUNK);
    let model = mlp_model(32, 2);
    c.upload(ArtifactKind::Model, "mlp", &model, |_| {}).unwrap();
    let r = c.benchmark(&bench_req("mlp", 10), no_progress).unwrap();
    assert_eq!(r.samples_ns.len(), 10);
    let first = c.session().unwrap().fingerprint();
    // The host vanishes without the line closing (a serial line never
    // does); a new host's handshake on the same line restarts the session.
    drop(c);
    let started = std::time::Instant::now();
    let link = master.try_clone_native().unwrap();
    let mut c = Client::connect(link, fast_client_config(None)).unwrap();
    assert!(started.elapsed() < Duration::from_secs(2), "the restart needed a resent handshake");
    assert_eq!(c.session().unwrap().fingerprint(), first, "the same device identity");
    let names: Vec<String> = c.list(None).unwrap().into_iter().map(|a| a.name).collect();
    assert_eq!(names, ["mlp"]);
    drop(c);
    // The identity is in the store, private.
    let identity = dir.path().join("identity.key");
    assert_eq!(rba_protocol::keys::read_identity(&identity).unwrap().fingerprint(), first);
    p.sigterm();
    assert!(p.wait_exit(Duration::from_secs(10)).unwrap().success(), "{}", p.stderr());
}

#[test]
fn command_line_errors_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    let boards = concat!(env!("CARGO_MANIFEST_DIR"), "/../boards");
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["serve".into(), "--board".into(), "no-such-board".into(), "--boards-dir".into(), boards.into()],
            "board profile 'no-such-board' not found",
        ),
        (
            vec!["serve".into(), "--serial".into(), "/dev/rba-no-such-port".into(), "--dir".into(), d.clone()],
            "serial port /dev/rba-no-such-port does not exist",
        ),
        (vec!["serve".into(), "--dir".into(), d.clone()], "no link"),
    ];
    for (args, needle) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut p = DeviceProcess::spawn(DEVICE, &args, &[]);
        let status = p.wait_exit(Duration::from_secs(10)).unwrap();
        assert_eq!(status.code(), Some(1), "{args:?}");
        assert!(p.wait_for(needle, Duration::from_secs(2)).is_some(), "{args:?}: {}", p.stderr());
    }
    // A port another process holds.
    let (_master, slave) = TTYPort::pair().unwrap();
    let path = slave.name().unwrap();
    drop(slave);
    let _held = rba_protocol::serial::open_serial(&path, 115_200).unwrap();
    let mut p = DeviceProcess::spawn(DEVICE, &["serve", "--serial", &path, "--dir", &d], &[]);
    assert_eq!(p.wait_exit(Duration::from_secs(10)).unwrap().code(), Some(1));
    assert!(p.wait_for("is busy", Duration::from_secs(2)).is_some(), "{}", p.stderr());
}

#[test]
fn board_profile_sets_name_threads_and_link_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    let boards = concat!(env!("CARGO_MANIFEST_DIR"), "/../boards");
    // The profile's link is TCP on 7878; the command line overrides it.
    let mut p = DeviceProcess::spawn(
        DEVICE,
        &["serve", "--board", "loopback", "--boards-dir", boards, "--tcp", "127.0.0.1:0", "--dir", &d],
        &[("RBA_DEVICE_KEY", KEY)],
    );
    let mut c = tcp_client(p.tcp_addr());
    assert_eq!(c.session().unwrap().device.board, "loopback");
    c.upload(ArtifactKind::Model, "lin", &small_linear(), |_| {}).unwrap();
    let r = c.benchmark(&bench_req("lin", 3), no_progress).unwrap();
    assert_eq!(r.threads, 2.min(rba_device::sensors::cores()), "loopback.toml sets 2 threads (at most the cores)");
    drop(c);
    p.sigterm();
    assert!(p.wait_exit(Duration::from_secs(10)).unwrap().success());
}

fn run_device(args: &[&str]) -> std::process::Output {
    std::process::Command::new(DEVICE).args(args).env_remove("RBA_DEVICE_KEY").output().unwrap()
}

#[cfg(unix)]
fn chmod(p: &std::path::Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[cfg(unix)]
#[test]
fn keygen_key_files_and_the_identity() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("board.key");
    let k = key.display().to_string();
    // keygen: 64 hex digits and a newline, mode 0600, never overwritten.
    assert!(run_device(&["keygen", "--out", &k]).status.success());
    let text = std::fs::read_to_string(&key).unwrap();
    assert!(text.len() == 65 && text[..64].bytes().all(|b| b.is_ascii_hexdigit()), "{text:?}");
    assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    let again = run_device(&["keygen", "--out", &k]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
    assert_eq!(std::fs::read_to_string(&key).unwrap(), text);

    // The daemon refuses keys that are not 32 bytes, and key files others can read.
    let store = dir.path().join("store");
    let s = store.display().to_string();
    let refused = |key_file: &std::path::Path, needles: &[&str]| {
        let kf = key_file.display().to_string();
        let mut p =
            DeviceProcess::spawn(DEVICE, &["serve", "--tcp", "127.0.0.1:0", "--dir", &s, "--key-file", &kf], &[]);
        assert_eq!(p.wait_exit(Duration::from_secs(10)).unwrap().code(), Some(1));
        for n in needles {
            assert!(p.wait_for(n, Duration::from_secs(2)).is_some(), "{n}: {}", p.stderr());
        }
    };
    let short = dir.path().join("short.key");
    std::fs::write(&short, "0123456789abcdef0123456789abcdef\n").unwrap();
    chmod(&short, 0o600);
    refused(&short, &["short.key", "exactly 64 hex digits", "rba-device keygen --out FILE"]);
    chmod(&key, 0o644);
    refused(&key, &[&format!("chmod 600 {k}")]);
    chmod(&key, 0o600);
    let mut p = DeviceProcess::spawn(DEVICE, &["serve", "--tcp", "127.0.0.1:0", "--dir", &s, "--key-file", &k], &[]);
    let addr = p.tcp_addr();
    let config = ClientConfig {
        request_timeout: Duration::from_secs(5),
        ..ClientConfig::tcp(PreSharedKey::from_hex(text.as_bytes()).unwrap())
    };
    let c = Client::connect_tcp(addr, config).unwrap();
    let proved = c.session().unwrap().fingerprint();
    drop(c);
    p.sigterm();
    assert!(p.wait_exit(Duration::from_secs(10)).unwrap().success());

    // `identity` prints the fingerprint hosts pin: the one the handshake proved.
    let out = run_device(&["identity", "--dir", &s]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), proved);
    let identity = store.join("identity.key");
    assert_eq!(std::fs::metadata(&identity).unwrap().permissions().mode() & 0o777, 0o600);
    // An identity others can read is refused, naming the file and the fix.
    chmod(&identity, 0o640);
    let mut p = DeviceProcess::spawn(DEVICE, &["serve", "--tcp", "127.0.0.1:0", "--dir", &s, "--key-file", &k], &[]);
    assert_eq!(p.wait_exit(Duration::from_secs(10)).unwrap().code(), Some(1));
    let needle = format!("chmod 600 {}", identity.display());
    assert!(p.wait_for(&needle, Duration::from_secs(2)).is_some(), "{}", p.stderr());
}
