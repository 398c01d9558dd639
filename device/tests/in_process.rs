//! The in-process entry as the host's `local` board uses it: a daemon
//! thread on the device end of a pseudo-terminal pair, its store in a
//! temporary directory that lives as long as the board's leftovers.

#![allow(clippy::unwrap_used)]

use rba_device::{spawn_in_process, InProcessError, InProcessLink, InProcessOptions};
use rba_protocol::serial::SerialError;
use rba_protocol::*;
use rba_testkit::daemon::{bench_req, connect_inproc, fast_client_config, no_progress, spawn_inproc, test_options};
use rba_testkit::models::small_linear;
use serialport::{SerialPort, TTYPort};

#[test]
fn local_board_over_a_pty_pair() {
    let (mut master, slave) = TTYPort::pair().expect("pseudo-terminals");
    let path = slave.name().unwrap();
    let options = InProcessOptions { threads: 1, ..InProcessOptions::default() };
    let board = spawn_in_process(options, InProcessLink::Serial { path, baud: 115_200 }).unwrap();
    assert!(board.is_running());
    master.set_timeout(std::time::Duration::from_millis(20)).unwrap();
    let mut c = Client::connect(master.try_clone_native().unwrap(), fast_client_config(None)).unwrap();
    let s = c.session().unwrap();
    assert_eq!((s.device.board.as_str(), s.authenticated, s.max_upload), ("local", false, 4 << 30));
    c.upload(ArtifactKind::Model, "lin", &small_linear(), |_| {}).unwrap();
    assert_eq!(c.benchmark(&bench_req("lin", 3), no_progress).unwrap().samples_ns.len(), 3);
    // Stopping ends the session the host still holds open.
    let finished = board.stop().unwrap();
    let root = finished.daemon.store().root().to_path_buf();
    assert_eq!(std::fs::read(root.join("models/lin")).unwrap(), small_linear());
    assert!(finished.sessions.is_empty(), "serial sessions are logged, not kept");
    drop(finished);
    assert!(!root.exists(), "the temporary store goes with the board");
    drop(slave);
}

#[test]
fn setup_errors_come_before_any_thread() {
    let e = spawn_in_process(
        InProcessOptions::default(),
        InProcessLink::Serial { path: "/dev/rba-no-such-port".into(), baud: 115_200 },
    )
    .map(|_| ())
    .unwrap_err();
    assert!(matches!(e, InProcessError::Serial(SerialError::NoSuchPort(_))), "{e}");
    let file = tempfile::NamedTempFile::new().unwrap();
    let options = InProcessOptions { store_dir: Some(file.path().to_path_buf()), ..InProcessOptions::default() };
    let (_tx, rx) = std::sync::mpsc::channel();
    let e = spawn_in_process(options, InProcessLink::Memory(rx)).map(|_| ()).unwrap_err();
    assert!(e.to_string().starts_with("cannot open the model store"), "{e}");
}

#[test]
fn dropping_the_board_stops_it_mid_session() {
    let dir = tempfile::tempdir().unwrap();
    let (dev, board) = spawn_inproc(test_options(dir.path(), 1 << 20, None));
    let mut c = connect_inproc(&dev, fast_client_config(None)).unwrap();
    c.ping(1).unwrap();
    let started = std::time::Instant::now();
    drop(board);
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    assert!(c.ping(2).is_err(), "the session ended with the board");
}
