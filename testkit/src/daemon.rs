//! In-process daemons (`rba_device::spawn_in_process` on memory links), the
//! quick client configuration the tests use with them, and small requests.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use rba_device::{spawn_in_process, InProcessBoard, InProcessLink, InProcessOptions};
use rba_protocol::mem::{duplex, MemLink};
use rba_protocol::*;

/// A client that gives up quickly (serial defaults otherwise), with `key`.
pub fn fast_client_config(key: Option<&str>) -> ClientConfig {
    ClientConfig {
        key: key.map(crate::psk),
        request_timeout: Duration::from_secs(3),
        job_idle_timeout: Duration::from_secs(30),
        max_retries: 2,
        ..ClientConfig::serial()
    }
}

/// The tests' in-process daemon: board "test", one inference thread, its
/// store in `dir` (uploads up to `quota`), a key when given.
pub fn test_options(dir: &Path, quota: u64, key: Option<&str>) -> InProcessOptions {
    InProcessOptions {
        store_dir: Some(dir.to_path_buf()),
        quota,
        board_name: "test".into(),
        threads: 1,
        key: key.map(crate::psk),
        ..InProcessOptions::default()
    }
}

/// A daemon serving every link sent to it, one session after another.
pub fn spawn_inproc(options: InProcessOptions) -> (mpsc::Sender<MemLink>, InProcessBoard) {
    let (tx, rx) = mpsc::channel::<MemLink>();
    (tx, spawn_in_process(options, InProcessLink::Memory(rx)).unwrap())
}

/// A fresh memory link to the daemon behind `dev`, and a handshake on it.
pub fn connect_inproc(dev: &mpsc::Sender<MemLink>, config: ClientConfig) -> Result<Client<MemLink>, ClientError> {
    let (mut host, board) = duplex();
    host.set_read_timeout(Some(Duration::from_millis(5)));
    dev.send(board).unwrap();
    Client::connect(host, config)
}

/// A progress callback that lets the job run.
pub fn no_progress(_: &Progress) -> ControlFlow<()> {
    ControlFlow::Continue(())
}

/// `runs` timed runs after 2 warm-up runs, synthetic inputs.
pub fn bench_req(model: &str, runs: u32) -> BenchmarkRequest {
    BenchmarkRequest {
        model: model.into(),
        threads: None,
        warmup: RunPolicy { count: 2, min_time_ms: 0 },
        runs: RunPolicy { count: runs, min_time_ms: 0 },
        input_bundle: None,
    }
}

/// The files in a subfolder (`models`, `staging`, ...) of a daemon's store,
/// sorted; empty when there is no such folder.
pub fn store_files(dir: &Path, sub: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> =
        std::fs::read_dir(dir.join(sub)).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    v.sort();
    v
}
