//! End to end over real links to a real `rba-device` process: the demo ViT
//! and a compacted variant uploaded, listed, benchmarked, compared and
//! evaluated over a pseudo-terminal pair, over TCP with a key, and on the
//! emulated aarch64 board; the device's accuracy must be the host's.

#![allow(clippy::unwrap_used)]

use std::sync::OnceLock;
use std::time::Duration;

use rba_protocol::*;
use rba_testkit::conformance::{exercise, EMULATED, NATIVE};
use rba_testkit::demo::{demo, eval_set, EvalSet};
use rba_testkit::net::{connect_tcp, tcp_config};
use rba_testkit::process::{serial_device, DeviceProcess};
use rba_testkit::qemu;

/// The whole test split (497 digits).
fn full_set() -> &'static EvalSet {
    static SET: OnceLock<EvalSet> = OnceLock::new();
    SET.get_or_init(|| eval_set(497))
}

#[test]
fn over_tcp_with_a_key() {
    let dir = tempfile::tempdir().unwrap();
    let device = DeviceProcess::tcp(dir.path());
    let mut c = connect_tcp(device.tcp_addr(), &tcp_config()).unwrap();
    let session = c.session().unwrap().clone();
    assert!(session.authenticated, "mutual authentication on TCP");
    assert_eq!(session.chunk_size, DEFAULT_TCP_CHUNK);
    assert_eq!((session.device.board.as_str(), session.device.arch.as_str()), ("unprofiled", std::env::consts::ARCH));
    exercise(&mut c, full_set(), NATIVE);
    // What was uploaded is on the device's disk, byte for byte.
    assert_eq!(std::fs::read(dir.path().join("models/vit-slim.onnx")).unwrap(), demo().slim_bytes);
}

#[test]
fn over_a_pty_pair() {
    let dir = tempfile::tempdir().unwrap();
    let config = ClientConfig { request_timeout: Duration::from_secs(5), max_retries: 2, ..ClientConfig::serial() };
    let (_device, mut c) = serial_device(|path| DeviceProcess::serial(path, dir.path()), config);
    let session = c.session().unwrap().clone();
    assert!(!session.authenticated, "no key on a serial line");
    assert_eq!(session.chunk_size, DEFAULT_SERIAL_CHUNK);
    exercise(&mut c, full_set(), NATIVE);
}

/// The real ARM binary under qemu-user, over a pty. Skips (with a message)
/// where the aarch64 target, cross gcc or qemu-aarch64 is missing, or fails
/// then under `RBA_REQUIRE_EXTERNAL=1`; shares the one cross build with
/// `device/tests/qemu.rs`.
#[test]
fn on_the_emulated_aarch64_board() {
    if !qemu::available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = ClientConfig {
        request_timeout: Duration::from_secs(15),
        job_idle_timeout: Duration::from_secs(120),
        max_retries: 2,
        ..ClientConfig::serial()
    };
    let started = std::time::Instant::now();
    let (_device, mut c) = serial_device(|path| DeviceProcess::start(qemu::serve_on_serial(path, dir.path())), config);
    let id = c.session().unwrap().device.clone();
    assert_eq!((id.arch.as_str(), id.board.as_str()), ("aarch64", "qemu-aarch64"));
    // Emulated and unoptimised: uploads, list and the compacted model's
    // evaluation on a few digits (timings under emulation mean nothing).
    exercise(&mut c, &eval_set(8), EMULATED);
    qemu::say(&format!("end-to-end checks passed in {:.0} s", started.elapsed().as_secs_f64()));
}
