//! The real `rba-device` binary as a child process: located (and built
//! once when needed), started with its stderr collected line by line (and
//! echoed for failing tests), watched, signalled, and always killed.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use rba_protocol::{Client, ClientConfig};

use crate::KEY;

/// The native `rba-device` binary of this build: `target/<profile>/rba-device`,
/// next to the test executable's `deps/`. `cargo test -p rba-tests` does not
/// build other packages' binaries, so it is (re)built once per test process.
/// The build covers the whole workspace and all targets, so cargo resolves
/// dependency features exactly as `cargo test --workspace` did and finds the
/// binary up to date (`-p rba-device` alone resolves fewer features and
/// rebuilt tract, ~6 minutes in CI). rba-device's own tests know the binary
/// cargo just built for them (`env!("CARGO_BIN_EXE_rba-device")`) and pass
/// that to [`DeviceProcess::spawn`] instead.
pub fn device_binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().unwrap();
        // target/<profile>/deps/<test>-<hash>
        let profile_dir = exe.parent().and_then(Path::parent).expect("test executable under target/<profile>/deps");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.current_dir(crate::workspace()).args(["build", "--quiet", "--workspace", "--all-targets"]);
        // `cargo test` describes the test's package in these; ring's build
        // script tracks some, so inheriting them would rebuild ring and
        // everything above it here, and again at the next plain build.
        for (name, _) in std::env::vars_os() {
            let n = name.to_string_lossy();
            if n.starts_with("CARGO_PKG_")
                || n.starts_with("CARGO_MANIFEST_")
                || n == "CARGO_CRATE_NAME"
                || n == "CARGO_PRIMARY_PACKAGE"
            {
                cmd.env_remove(&name);
            }
        }
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        if let Some(target_dir) = profile_dir.parent() {
            cmd.env("CARGO_TARGET_DIR", target_dir);
        }
        let started = Instant::now();
        let status = cmd.status().expect("cargo runs");
        assert!(status.success(), "cargo build --workspace --all-targets (for rba-device) failed");
        eprintln!("cargo build --workspace --all-targets (for rba-device): {:.1} s", started.elapsed().as_secs_f64());
        let bin = profile_dir.join("rba-device");
        assert!(bin.is_file(), "{} missing after the build", bin.display());
        bin
    })
    .clone()
}

/// The `rba` host binary of the same build (built with [`device_binary`]).
pub fn rba_binary() -> PathBuf {
    let bin = device_binary().with_file_name("rba");
    assert!(bin.is_file(), "{} missing after the build", bin.display());
    bin
}

/// `rba ARGS` with its own known-boards file and no key from the
/// environment, so a test never depends on the developer's settings.
pub fn rba_command(args: &[&str], known: &Path) -> Command {
    let mut cmd = Command::new(rba_binary());
    cmd.args(args).env("RBA_KNOWN_BOARDS", known).env_remove("RBA_KEY").stdin(Stdio::null());
    cmd
}

/// Runs an `rba` command, echoing its arguments, time and output (shown
/// when the test fails).
pub fn run_logged(mut cmd: Command, args: &[&str]) -> Output {
    let started = Instant::now();
    let out = cmd.output().expect("rba runs");
    eprintln!("$ rba {} ({:.1} s)\n{}", args.join(" "), started.elapsed().as_secs_f64(), output_text(&out));
    out
}

/// A process's stdout then its stderr.
pub fn output_text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// A running `rba-device` process (native, or the ARM build under
/// qemu-user), its stderr collected line by line. Dropping it kills the
/// process.
pub struct DeviceProcess {
    pub child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl DeviceProcess {
    /// `bin args...`: stdin and stdout detached, stderr piped, no
    /// `RBA_DEVICE_KEY` inherited from the test's environment.
    pub fn command(bin: impl AsRef<OsStr>, args: &[&str]) -> Command {
        let mut cmd = Command::new(bin);
        cmd.args(args).env_remove("RBA_DEVICE_KEY").stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        cmd
    }

    /// Starts `cmd` (its stderr must be piped).
    pub fn start(mut cmd: Command) -> DeviceProcess {
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
        DeviceProcess { child, lines }
    }

    /// `bin args...` with `env` added (see [`DeviceProcess::command`]).
    pub fn spawn(bin: impl AsRef<OsStr>, args: &[&str], env: &[(&str, &str)]) -> DeviceProcess {
        let mut cmd = DeviceProcess::command(bin, args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        DeviceProcess::start(cmd)
    }

    /// The native binary ([`device_binary`]) with `args`, storing in `dir`,
    /// one inference thread.
    fn native(args: &[&str], dir: &Path) -> Command {
        let mut cmd = DeviceProcess::command(device_binary(), args);
        cmd.arg("--dir").arg(dir).args(["--threads", "1"]);
        cmd
    }

    /// `rba-device serve --tcp 127.0.0.1:<random>` with [`KEY`], storing in `dir`.
    pub fn tcp(dir: &Path) -> DeviceProcess {
        DeviceProcess::tcp_with(dir, &[])
    }

    /// [`DeviceProcess::tcp`] with more arguments (e.g. `--handshake-timeout 2`).
    pub fn tcp_with(dir: &Path, args: &[&str]) -> DeviceProcess {
        let mut cmd = DeviceProcess::native(&["serve", "--tcp", "127.0.0.1:0"], dir);
        cmd.args(args).env("RBA_DEVICE_KEY", KEY);
        DeviceProcess::start(cmd)
    }

    /// `rba-device serve --serial <path>` (no key), storing in `dir`.
    pub fn serial(path: &str, dir: &Path) -> DeviceProcess {
        DeviceProcess::start(DeviceProcess::native(&["serve", "--serial", path, "--baud", "115200"], dir))
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
                // Connections that never became a session (refused, failed
                // authentication) are not counted: only authenticated hosts
                // start one.
                (count(&[": session started"]), count(&[": session ended", ": session failed"]))
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
        self.status_value(field) * 1024
    }

    /// The number in a field of `/proc/<pid>/status` (`Threads`, or a `kB` field).
    pub fn status_value(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let line = status.lines().find(|l| l.starts_with(&format!("{field}:"))).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    /// The daemon's threads now.
    pub fn threads(&self) -> u64 {
        self.status_value("Threads")
    }

    /// The stderr lines containing `needle`.
    pub fn count_lines(&self, needle: &str) -> usize {
        self.lines.lock().unwrap().iter().filter(|l| l.contains(needle)).count()
    }

    /// Still running (not exited, not a zombie)?
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// SIGTERM (a clean shutdown).
    pub fn sigterm(&self) {
        let status = Command::new("kill").args(["-TERM", &self.pid().to_string()]).status().unwrap();
        assert!(status.success());
    }

    /// Waits for the exit status; kills the process after `timeout` and
    /// returns `None`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
        None
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

impl Drop for DeviceProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.kill();
        }
    }
}

/// A device on the slave side of a fresh pseudo-terminal pair; returns it
/// with a client on the master side (no key: serial links need none).
pub fn serial_device(
    start: impl FnOnce(&str) -> DeviceProcess,
    config: ClientConfig,
) -> (DeviceProcess, Client<serialport::TTYPort>) {
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
