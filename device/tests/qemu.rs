//! The qemu-aarch64 board: `rba-device` cross-compiled for
//! aarch64-unknown-linux-gnu, run under qemu-user, linked to the host over a
//! pseudo-terminal pair, running a real benchmark and evaluation.
//!
//! Needs the aarch64 Rust std (`rustup target add aarch64-unknown-linux-gnu`),
//! Debian's `gcc-aarch64-linux-gnu` and `qemu-user`; it skips with a message
//! when one is missing. The cross build of tract takes 10+ minutes on two
//! cores, so the test runs only when `RBA_QEMU_TEST=1` (`.ci/run` sets it
//! when the target could be installed). It builds into `target/aarch64-qemu`
//! so that it never waits on the lock of the `cargo test` running it.
//! Timings under emulation mean nothing; results and errors do.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use rba_protocol::*;
use serialport::{SerialPort, TTYPort};

const TARGET: &str = "aarch64-unknown-linux-gnu";

/// Printed past the test harness's capture, so CI logs show it.
fn say(msg: &str) {
    let _ = writeln!(std::io::stderr().lock(), "qemu-aarch64 board: {msg}");
}

fn on_path(cmd: &str) -> bool {
    Command::new("sh").args(["-c", &format!("command -v {cmd}")]).output().is_ok_and(|o| o.status.success())
}

fn aarch64_std_installed() -> bool {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let Ok(out) = Command::new(rustc).args(["--print", "sysroot"]).output() else { return false };
    let sysroot = String::from_utf8_lossy(&out.stdout).trim().to_string();
    Path::new(&sysroot).join("lib/rustlib").join(TARGET).join("lib").is_dir()
}

/// Why the test cannot run here, if it cannot.
fn missing_prerequisite() -> Option<String> {
    if std::env::var("RBA_QEMU_TEST").ok().as_deref() != Some("1") {
        return Some("skipped: set RBA_QEMU_TEST=1 to cross-build rba-device and run it under qemu (10+ min)".into());
    }
    if !aarch64_std_installed() {
        return Some(format!("skipped: the {TARGET} standard library is not installed (rustup target add {TARGET})"));
    }
    for (cmd, pkg) in [("aarch64-linux-gnu-gcc", "gcc-aarch64-linux-gnu"), ("qemu-aarch64", "qemu-user")] {
        if !on_path(cmd) {
            return Some(format!("skipped: {cmd} not found (apt-get install -y {pkg})"));
        }
    }
    None
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// Cross-builds the daemon; returns the binary.
fn build_arm_binary() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let target_dir = workspace().join("target/aarch64-qemu");
    say(&format!("cross-building rba-device for {TARGET} into {} ...", target_dir.display()));
    let started = std::time::Instant::now();
    let status = Command::new(cargo)
        .current_dir(workspace())
        .args(["build", "--target", TARGET, "-p", "rba-device", "--bin", "rba-device"])
        // Unoptimised dependencies build several times faster, and timings
        // under emulation mean nothing anyway; correctness is what is tested.
        .args(["--config", "profile.dev.package.\"*\".opt-level=0"])
        .env("CARGO_TARGET_DIR", &target_dir)
        .env_remove("RUSTFLAGS")
        .status()
        .unwrap();
    assert!(status.success(), "cross build failed");
    say(&format!("built in {:.0} s", started.elapsed().as_secs_f64()));
    target_dir.join(TARGET).join("debug/rba-device")
}

/// ELF `e_machine` of a file (0xB7: AArch64).
fn elf_machine(path: &Path) -> u16 {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[..4], b"\x7fELF");
    u16::from_le_bytes([bytes[18], bytes[19]])
}

#[test]
fn benchmark_and_evaluate_on_the_emulated_board() {
    if let Some(why) = missing_prerequisite() {
        say(&why);
        return;
    }
    let bin = build_arm_binary();
    assert_eq!(elf_machine(&bin), 0xB7, "not an AArch64 binary");

    let (mut master, slave) = TTYPort::pair().expect("pseudo-terminals");
    let path = slave.name().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let boards = workspace().join("boards");
    let mut cmd = Command::new("qemu-aarch64");
    cmd.args(["-L", "/usr/aarch64-linux-gnu"])
        .arg(&bin)
        .args(["serve", "--board", "qemu-aarch64", "--serial", &path, "--dir"])
        .arg(dir.path())
        .arg("--boards-dir")
        .arg(&boards)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let mut p = Proc::from_command(cmd);
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
    let e = c.evaluate(&EvalRequest { model: "lin".into(), bundle: "b".into(), threads: None }, no_progress).unwrap();
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
