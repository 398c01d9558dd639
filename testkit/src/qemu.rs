//! The qemu-aarch64 board: `rba-device` cross-compiled for
//! aarch64-unknown-linux-gnu and run under qemu-user. Used by
//! `device/tests/qemu.rs` and the end-to-end tests in `tests/`; a test run
//! cross-builds once: the build goes to one target directory, and the
//! second caller finds it fresh.
//! `serve_on_serial_with` adds daemon arguments and picks qemu's CPU model.
//!
//! Needs the aarch64 Rust std (`rustup target add aarch64-unknown-linux-gnu`),
//! Debian's `gcc-aarch64-linux-gnu` and `qemu-user`. The tests run whenever
//! those are present ([`available`]); otherwise they skip with a message, or
//! fail under `RBA_REQUIRE_EXTERNAL=1` (see [`crate::external`]). The cross
//! build takes minutes on two cores the first time. It builds into
//! `target/aarch64-qemu` so that it never waits on the lock of the
//! `cargo test` running it (a folder of the test's own target directory,
//! so a `CARGO_TARGET_DIR` elsewhere is honoured).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use crate::external;

pub const TARGET: &str = "aarch64-unknown-linux-gnu";

/// Printed past the test harness's capture, so CI logs show it.
pub fn say(msg: &str) {
    let _ = writeln!(std::io::stderr().lock(), "qemu-aarch64 board: {msg}");
}

fn aarch64_std_installed() -> bool {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let Ok(out) = Command::new(rustc).args(["--print", "sysroot"]).output() else { return false };
    let sysroot = String::from_utf8_lossy(&out.stdout).trim().to_string();
    Path::new(&sysroot).join("lib/rustlib").join(TARGET).join("lib").is_dir()
}

/// What the emulated board lacks here (and how to install it), if anything.
pub fn missing_prerequisite() -> Option<String> {
    let mut missing = Vec::new();
    if !aarch64_std_installed() {
        missing.push(format!("the {TARGET} standard library is not installed (rustup target add {TARGET})"));
    }
    for (cmd, pkg) in [("aarch64-linux-gnu-gcc", "gcc-aarch64-linux-gnu"), ("qemu-aarch64", "qemu-user")] {
        if !external::on_path(cmd) {
            missing.push(format!("{cmd} not found (apt-get install -y {pkg})"));
        }
    }
    (!missing.is_empty()).then(|| missing.join("; "))
}

/// True when the emulated board can run here; otherwise skips with a
/// message or fails under `RBA_REQUIRE_EXTERNAL=1` ([`external::require`]).
#[track_caller]
pub fn available() -> bool {
    external::require("the emulated qemu-aarch64 board", missing_prerequisite())
}

/// Cross-builds the daemon (once per process; a no-op for cargo when an
/// earlier test binary already built it); returns the binary.
pub fn arm_binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let target_dir = crate::target_dir().join("aarch64-qemu");
        say(&format!("cross-building rba-device for {TARGET} into {} ...", target_dir.display()));
        let started = std::time::Instant::now();
        let status = Command::new(cargo)
            .current_dir(crate::workspace())
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
    serve_on_serial_with(serial, dir, &[], None)
}

/// [`serve_on_serial`] with `extra` daemon arguments, on qemu's `cpu`
/// model (`None`: qemu's default, `max`, which emulates SVE: ONNX Runtime
/// then picks SVE kernels that run many times slower emulated; use
/// `cortex-a76`, the Raspberry Pi 5's core).
pub fn serve_on_serial_with(serial: &str, dir: &Path, extra: &[&str], cpu: Option<&str>) -> Command {
    let mut cmd = Command::new("qemu-aarch64");
    if let Some(cpu) = cpu {
        cmd.args(["-cpu", cpu]);
    }
    cmd.args(["-L", "/usr/aarch64-linux-gnu"])
        .arg(arm_binary())
        .args(["serve", "--board", "qemu-aarch64", "--serial", serial, "--dir"])
        .arg(dir)
        .arg("--boards-dir")
        .arg(crate::workspace().join("boards"))
        .args(extra)
        .env_remove("RBA_DEVICE_KEY")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}
