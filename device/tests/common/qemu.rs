//! The qemu-aarch64 board: `rba-device` cross-compiled for
//! aarch64-unknown-linux-gnu and run under qemu-user. Shared by
//! `device/tests/qemu.rs` and the end-to-end tests in `tests/` (which
//! include this file by path), so a CI run cross-builds once: the build
//! goes to one target directory, and the second caller finds it fresh.
//!
//! Needs the aarch64 Rust std (`rustup target add aarch64-unknown-linux-gnu`),
//! Debian's `gcc-aarch64-linux-gnu` and `qemu-user`; callers skip with a
//! message when one is missing. The cross build takes minutes on two cores,
//! so it runs only when `RBA_QEMU_TEST=1` (`.ci/run` sets it when the target
//! could be installed). It builds into `target/aarch64-qemu` so that it
//! never waits on the lock of the `cargo test` running it.

#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

pub const TARGET: &str = "aarch64-unknown-linux-gnu";

/// Printed past the test harness's capture, so CI logs show it.
pub fn say(msg: &str) {
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

/// Why the emulated board cannot run here, if it cannot.
pub fn missing_prerequisite() -> Option<String> {
    if std::env::var("RBA_QEMU_TEST").ok().as_deref() != Some("1") {
        return Some("skipped: set RBA_QEMU_TEST=1 to cross-build rba-device and run it under qemu (minutes)".into());
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

/// The workspace root (`device/` and `tests/` both sit one level below it).
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("a workspace member").to_path_buf()
}

/// Cross-builds the daemon (once per process; a no-op for cargo when an
/// earlier test binary already built it); returns the binary.
pub fn arm_binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
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
            .expect("cargo runs");
        assert!(status.success(), "cross build failed");
        say(&format!("built (or found up to date) in {:.0} s", started.elapsed().as_secs_f64()));
        let bin = target_dir.join(TARGET).join("debug/rba-device");
        assert_eq!(elf_machine(&bin), 0xB7, "{} is not an AArch64 binary", bin.display());
        bin
    })
    .clone()
}

/// ELF `e_machine` of a file (0xB7: AArch64).
pub fn elf_machine(path: &Path) -> u16 {
    let bytes = std::fs::read(path).expect("the binary is readable");
    assert_eq!(&bytes[..4], b"\x7fELF");
    u16::from_le_bytes([bytes[18], bytes[19]])
}

/// `rba-device serve` for the qemu-aarch64 board profile on a serial line,
/// storing under `dir`; stderr piped, the rest detached.
pub fn serve_on_serial(serial: &str, dir: &Path) -> Command {
    let mut cmd = Command::new("qemu-aarch64");
    cmd.args(["-L", "/usr/aarch64-linux-gnu"])
        .arg(arm_binary())
        .args(["serve", "--board", "qemu-aarch64", "--serial", serial, "--dir"])
        .arg(dir)
        .arg("--boards-dir")
        .arg(workspace().join("boards"))
        .env_remove("RBA_DEVICE_KEY")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}
