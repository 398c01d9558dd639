//! The `qemu-aarch64` board: the cross-built ARM daemon under qemu-user,
//! over a pseudo-terminal pair (a real ARM binary on an emulated board).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serialport::TTYPort;

use super::local::pty_pair;
use super::QEMU_BOARD;

const AARCH64: &str = "aarch64-unknown-linux-gnu";

pub(super) struct QemuBoard {
    child: Child,
    _device_end: TTYPort,
    _store: Option<tempfile::TempDir>,
}

impl Drop for QemuBoard {
    fn drop(&mut self) {
        // The emulated board holds nothing worth a clean shutdown (its
        // store is ours and staged data resumes anyway).
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn store_dir(store: &Option<PathBuf>) -> Result<(PathBuf, Option<tempfile::TempDir>), String> {
    match store {
        Some(dir) => Ok((dir.clone(), None)),
        None => {
            let t = tempfile::Builder::new()
                .prefix("rba-board-")
                .tempdir()
                .map_err(|e| format!("cannot create a temporary model store: {e}"))?;
            Ok((t.path().to_path_buf(), Some(t)))
        }
    }
}

/// The workspace this binary was built from: a development checkout keeps
/// its cross builds under `target/`.
fn workspace_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// The cross-built aarch64 daemon, newest build first.
pub fn qemu_binary() -> Option<PathBuf> {
    let mut roots = Vec::new();
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        roots.push(PathBuf::from(dir));
    }
    roots.push(PathBuf::from("target"));
    roots.push(workspace_dir().join("target"));
    let mut found: Vec<(std::time::SystemTime, PathBuf)> = Vec::new();
    for root in roots {
        // The device's qemu test builds into target/aarch64-qemu.
        for base in [root.clone(), root.join("aarch64-qemu")] {
            for profile in ["release", "debug"] {
                let p = base.join(AARCH64).join(profile).join("rba-device");
                if let Ok(modified) = std::fs::metadata(&p).and_then(|m| m.modified()) {
                    found.push((modified, p));
                }
            }
        }
    }
    found.sort();
    found.pop().map(|(_, p)| p)
}

fn on_path(cmd: &str) -> bool {
    Command::new(cmd).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok()
}

/// Why the emulated board cannot start here, if it cannot.
pub fn qemu_missing() -> Option<String> {
    if !on_path("qemu-aarch64") {
        return Some("qemu-aarch64 not found: install qemu-user (apt-get install -y qemu-user)".into());
    }
    if qemu_binary().is_none() {
        return Some(format!(
            "the aarch64 rba-device is not built: rustup target add {AARCH64} && apt-get install -y gcc-aarch64-linux-gnu && cargo build --release --target {AARCH64} -p rba-device"
        ));
    }
    None
}

pub(super) fn start_qemu(store: &Option<PathBuf>) -> Result<(TTYPort, QemuBoard), String> {
    if let Some(why) = qemu_missing() {
        return Err(why);
    }
    let bin = qemu_binary().ok_or("the aarch64 rba-device is not built")?;
    let (master, slave, path) = pty_pair()?;
    let (dir, temp) = store_dir(store)?;
    let mut child = Command::new("qemu-aarch64")
        .args(["-L", "/usr/aarch64-linux-gnu"])
        .arg(&bin)
        .args(["serve", "--serial", &path, "--board", QEMU_BOARD])
        .arg("--dir")
        .arg(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start qemu-aarch64: {e}"))?;
    // Wait for the daemon to hold the port; keep draining its log after.
    let (tx, rx) = mpsc::channel::<String>();
    if let Some(err) = child.stderr.take() {
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
    }
    let mut log = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains("serving on") => break,
            Ok(line) => log.push(line),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{} did not start under qemu: {}", bin.display(), log.join(" | ")));
            }
        }
    }
    Ok((master, QemuBoard { child, _device_end: slave, _store: temp }))
}
